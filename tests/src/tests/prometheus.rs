//! The Prometheus provider against a real Prometheus scraping weir's `/metrics`: the Argo Rollouts
//! reference queries run unchanged on weir's metric names, a rollout judged by Prometheus is
//! promoted, and a Prometheus that goes away mid-analysis is a provider error that aborts only
//! after `consecutiveErrorLimit`.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`; `.ci/run` installs it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;
use weir_config::PrometheusProvider;
use weir_control::demo::backend::Backend;
use weir_control::demo::traffic::Traffic;
use weir_control::engine::analysis::provider::prometheus;
use weir_control::engine::analysis::{Outcome, Vars, Verdict};
use weir_control::engine::rollout::run::RunKind;
use weir_control::engine::rollout::Phase;

use crate::client::{self, Http1};
use crate::weir::{describe, Weir, HEADER};

const HOST: &str = "checkout.example.com";

/// A Prometheus server on a free port, killed on drop.
struct Prometheus {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

/// The `prometheus` binary on `PATH` (or `/usr/bin`); panics with what to install when missing.
fn prometheus_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the prometheus binary is not installed: these tests run a real Prometheus. \
                 Install the Debian package `prometheus` (apt-get install prometheus) or run .ci/run"
            )
        })
}

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/metrics` every second, and waits until it is ready.
    async fn start(target: SocketAddr) -> Prometheus {
        let binary = prometheus_binary();
        let dir = tempfile::tempdir().expect("a temporary folder");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: weir\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        // Prometheus cannot report a port it picked itself: take a free one and let it go. Another
        // process could grab it in between; then Prometheus fails to start and the test says so.
        let addr = crate::bind_ephemeral().local_addr().expect("a free port");
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("create the log");
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("a log handle"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut prometheus = Prometheus {
            child: Some(child),
            addr,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if prometheus.get("/-/ready").await == Some(200) {
                return prometheus;
            }
            if let Some(child) = prometheus.child.as_mut() {
                if let Ok(Some(exit)) = child.try_wait() {
                    panic!(
                        "prometheus exited with {exit} before it was ready:\n{}",
                        prometheus.log_text()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after 30 s:\n{}",
                prometheus.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The status of `GET path`, or `None` if nothing answers.
    async fn get(&self, path: &str) -> Option<u16> {
        let stream = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let mut client = Http1::handshake(stream).await;
        let response = client.send(client::get("127.0.0.1", path)).await.ok()?;
        Some(response.status().as_u16())
    }

    fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and wait for the process to be gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The reference queries, for service `X`.
fn success_rate_query(service: &str) -> String {
    format!(
        r#"sum(rate(http_requests_total{{service="{service}",status=~"2.."}}[1m])) / sum(rate(http_requests_total{{service="{service}"}}[1m])) * 100"#
    )
}

fn server_errors_query(service: &str) -> String {
    format!(
        r#"sum(rate(http_requests_total{{service="{service}",status=~"5.."}}[1m])) / sum(rate(http_requests_total{{service="{service}"}}[1m])) * 100"#
    )
}

/// The reference success-rate query restricted to the canary, with weir's built-in variables.
fn canary_success_rate_query() -> String {
    r#"sum(rate(http_requests_total{service="{{service}}",version="{{canary.version}}",status!~"5.."}[1m])) / sum(rate(http_requests_total{service="{{service}}",version="{{canary.version}}"}[1m])) * 100"#.to_string()
}

fn p99_query(service: &str) -> String {
    format!(
        r#"histogram_quantile(0.99, sum(rate(http_request_duration_seconds_bucket{{service="{service}"}}[1m])) by (le))"#
    )
}

/// Runs `query` through weir's provider until it gives a value (Prometheus needs two scrapes for
/// `rate()`); returns the first element.
async fn measure(server: &Prometheus, query: &str) -> f64 {
    let provider = PrometheusProvider {
        address: server.address(),
        query: query.to_string(),
        timeout: Duration::from_secs(2),
        headers: Vec::new(),
        bearer_token_file: None,
        basic_auth: None,
        insecure_skip_verify: false,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let outcome = prometheus(&provider, &Vars::default()).await;
        match &outcome {
            // No series yet (`[]`, as in Argo): Prometheus has not scraped it twice.
            Outcome::Value(measured)
                if measured.value.as_array().is_some_and(Vec::is_empty)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Outcome::Value(measured) => {
                return measured.value[0]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{query}: not a number: {outcome:?}"))
            }
            Outcome::Error(error) => panic!("{query}: {error}"),
            Outcome::NoData(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Outcome::NoData(why) => panic!("{query}: still no data after 20 s: {why}"),
        }
    }
}

/// The analysis templates of the rollouts below: the reference success-rate query, once measured
/// three times (`prom-success`), once measured until the rollout ends with
/// `consecutiveErrorLimit: 3` (`prom-watch`).
fn templates(prometheus: &str) -> String {
    // The canary alone, as the seeds' queries select it: `{{service}}` and `{{canary.version}}`
    // are filled in by weir for each rollout.
    let query = canary_success_rate_query();
    format!(
        r#"analysisTemplates:
  - name: prom-success
    args: [{{name: service}}]
    metrics:
      - name: success-rate
        interval: 300ms
        count: 3
        # The canary's series is new: rate() needs two scrapes (1 s apart) of it.
        initialDelay: 3s
        successCondition: result[0] >= 95
        provider:
          prometheus:
            address: {prometheus}
            query: '{query}'
            timeout: 1s
  - name: prom-watch
    args: [{{name: service}}]
    metrics:
      - name: success-rate
        interval: 300ms
        count: 1000
        initialDelay: 3s
        consecutiveErrorLimit: 3
        successCondition: result[0] >= 95
        provider:
          prometheus:
            address: {prometheus}
            query: '{query}'
            timeout: 1s
"#
    )
}

fn checkout(stable: (&str, &Backend), canary: Option<(&str, &Backend)>, rest: &str) -> String {
    let canary = match canary {
        Some((version, backend)) => format!(
            "    canary: {{version: {version}, upstreams: [\"{}\"]}}\n",
            backend.addr()
        ),
        None => String::new(),
    };
    format!(
        "{HEADER}services:\n  - name: checkout\n    match: {{hosts: [\"*\"]}}\n    stable: {{version: {}, upstreams: [\"{}\"]}}\n{canary}{rest}",
        stable.0,
        stable.1.addr()
    )
}

fn steps(template: &str) -> String {
    format!(
        r#"    strategy:
      canary:
        steps:
          - setWeight: 50
          - analysis:
              templates: [{{templateName: {template}}}]
              args: [{{name: service, value: checkout}}]
          - setWeight: 80
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_analysis_against_a_real_prometheus() {
    let v1 = Backend::bind("v1").expect("bind");
    let v2 = Backend::bind("v2").expect("bind");
    let v3 = Backend::bind("v3").expect("bind");
    let weir = Weir::start(&checkout(("v1", &v1), None, "")).await;

    // A few 500s before Prometheus starts: the 5xx series exists, with a rate of 0.
    v1.set_error_rate(1.0);
    let mut client = Http1::connect(weir.addr()).await;
    for _ in 0..5 {
        assert_eq!(client.get(HOST, "/").await.status, 500);
    }
    v1.set_error_rate(0.0);
    let traffic = Traffic::spawn(weir.addr(), HOST, 100, 2);
    let mut prom = Prometheus::start(weir.admin()).await;

    // 1. The reference queries, unchanged, on weir's metrics.
    let success = measure(&prom, &success_rate_query("checkout")).await;
    assert!(
        (99.0..=100.0 + 1e-9).contains(&success),
        "success rate {success}"
    );
    let errors = measure(&prom, &server_errors_query("checkout")).await;
    assert!((0.0..1.0).contains(&errors), "5xx rate {errors}");
    let p99 = measure(&prom, &p99_query("checkout")).await;
    assert!(p99 > 0.0 && p99 < 0.5, "p99 {p99} s");

    // 2. A rollout judged by Prometheus is promoted. Stable fails half its requests meanwhile:
    // a query over both versions would be below 95%, the canary's own query is not.
    v1.set_error_rate(0.5);
    let rest = format!("{}{}", steps("prom-success"), templates(&prom.address()));
    weir.write_atomic(&checkout(("v1", &v1), Some(("v2", &v2)), &rest));
    let done = weir
        .wait_until("checkout", Duration::from_secs(20), "promotion", |s| {
            s.canary_version.as_deref() == Some("v2") && s.phase != Phase::Progressing
        })
        .await;
    assert_eq!(done.phase, Phase::Healthy, "{}", done.message);
    v1.set_error_rate(0.0);
    assert_eq!(
        (done.canary_weight, done.stable_version.as_str()),
        (100.0, "v2")
    );
    let details = done.details.as_ref().expect("details");
    let run = details
        .analysis_runs
        .iter()
        .find(|r| matches!(r.kind, RunKind::Inline { .. }))
        .expect("the analysis step's run");
    let metric = &run.metrics[0];
    assert_eq!((metric.count, metric.successful), (3, 3), "{metric:?}");
    for measurement in &metric.measurements {
        let value = measurement.value.as_ref().expect("a value")[0]
            .as_f64()
            .expect("a number");
        assert!(value >= 95.0, "{measurement:?}");
    }

    // 3. Prometheus goes away mid-analysis: error measurements, no abort before
    // consecutiveErrorLimit (3), then an abort that says it is a provider error.
    let rest = format!("{}{}", steps("prom-watch"), templates(&prom.address()));
    weir.write_atomic(&checkout(("v2", &v2), Some(("v3", &v3)), &rest));
    let measuring = weir
        .wait_until(
            "checkout",
            Duration::from_secs(20),
            "a good measurement of v3",
            |s| {
                s.canary_version.as_deref() == Some("v3")
                    && s.details.as_ref().is_some_and(|d| {
                        d.analysis_runs.iter().any(|r| {
                            r.phase == weir_control::engine::rollout::run::RunPhase::Running
                                && r.metrics[0].successful >= 1
                        })
                    })
            },
        )
        .await;
    let revision = measuring.revision;
    let run_id = measuring
        .details
        .as_ref()
        .and_then(|d| {
            d.analysis_runs
                .iter()
                .find(|r| r.phase == weir_control::engine::rollout::run::RunPhase::Running)
        })
        .expect("the running analysis")
        .id;
    prom.kill();

    let mut statuses = weir.running().driver().watch_status();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen_errors = Vec::new();
    let aborted = loop {
        let status = statuses
            .borrow_and_update()
            .service("checkout")
            .cloned()
            .expect("checkout");
        assert_eq!(status.revision, revision);
        let run = status
            .details
            .as_ref()
            .and_then(|d| d.analysis_runs.iter().find(|r| r.id == run_id).cloned())
            .expect("the analysis run");
        let metric = &run.metrics[0];
        let errors = metric.consecutive_errors;
        match status.phase {
            Phase::Progressing => {
                assert!(
                    errors <= 3,
                    "{errors} consecutive errors and still running: {}",
                    describe(Some(&status))
                );
                if errors > 0 && seen_errors.last() != Some(&errors) {
                    seen_errors.push(errors);
                }
            }
            Phase::Degraded => {
                assert_eq!(errors, 4, "aborted after the 4th error: {}", status.message);
                break status;
            }
            other => panic!("unexpected phase {other:?}: {}", status.message),
        }
        tokio::time::timeout_at(deadline, statuses.changed())
            .await
            .unwrap_or_else(|_| {
                panic!("no abort within 15 s; consecutive errors seen {seen_errors:?}")
            })
            .expect("the driver runs");
    };
    assert!(
        !seen_errors.is_empty(),
        "the rollout was seen running with error measurements"
    );
    let run = aborted
        .details
        .as_ref()
        .expect("details")
        .analysis_runs
        .iter()
        .find(|r| r.id == run_id)
        .expect("the analysis run")
        .clone();
    let errors: Vec<_> = run.metrics[0]
        .measurements
        .iter()
        .filter(|m| m.verdict == Verdict::Error)
        .collect();
    assert_eq!(errors.len(), 4, "{:?}", run.metrics[0].measurements);
    for error in errors {
        assert!(
            error
                .message
                .contains(&format!("prometheus at {}", prom.address())),
            "{}",
            error.message
        );
    }
    assert_eq!(aborted.canary_weight, 0.0);
    assert_eq!(aborted.stable_version, "v2");
    for needle in [
        "success-rate could not be measured 4 time(s) in a row (consecutiveErrorLimit 3)",
        "a provider error, not an SLO breach",
    ] {
        assert!(
            aborted.message.contains(needle),
            "{needle:?} in {}",
            aborted.message
        );
    }
    eprintln!(
        "consecutive errors seen while running: {seen_errors:?}; {}",
        aborted.message
    );
    drop(traffic);
    weir.shutdown().await;
}
