//! `weir demo`: README's first command — a canary rollout with analysis and an automatic
//! rollback, all on this machine, with no setup and no arguments.
//!
//! It starts three demo backends (v1, v2, v3; see `weir_control::demo::backend`), writes a config into a
//! temporary folder, starts weir in-process and sends 200 requests a second through it.
//!
//! - Act 1 rolls out a healthy v2 over v1: weight 20 → pause → analysis → 50 → pause → 100, with a
//!   latency and error-rate analysis in the background; v2 is promoted.
//! - Act 2 rewrites the config (stable v2, canary v3) while v3 fails every other request: the
//!   background error-rate analysis fails within about a second and weir rolls back on its own.
//!
//! It prints every rollout event and, every second, the canary weight, the step, the traffic split
//! the generator saw in the last second and the latest analysis values; then a summary. It exits 0
//! when the story happened as told and 1 otherwise (v2 not promoted, v3 not rolled back, or not
//! within [`DEADLINE`]), so it doubles as a smoke test. `--keep` keeps everything running
//! afterwards, to try the CLI against, until Ctrl-C.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::time::{Instant, MissedTickBehavior};
use weir_control::api::v1::{Details, ServiceStatus};
use weir_control::app::{self, RunOptions, Running};
use weir_control::demo::backend::Backend;
use weir_control::demo::traffic::{Traffic, TrafficSnapshot, NO_VERSION};
use weir_control::engine::analysis::Verdict;
use weir_control::engine::driver::Handle;
use weir_control::engine::rollout::run::{AnalysisRun, RunKind, RunPhase};
use weir_control::engine::rollout::{Event, Phase};

/// The demo's service.
const SERVICE: &str = "demo";
/// The `Host` the traffic sends (the service matches any).
const HOST: &str = "demo.local";
/// Requests per second through weir.
const RATE: u32 = 200;
/// Keep-alive connections the traffic uses.
const CONNECTIONS: usize = 8;
/// The whole story must be over by then.
const DEADLINE: Duration = Duration::from_secs(120);
/// How long each act keeps showing the traffic once it reached its end.
const LINGER: Duration = Duration::from_secs(4);
/// How often the status line prints.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// The fraction of requests v3 fails in act 2.
const V3_ERROR_RATE: f64 = 0.5;
/// Width of the weight bar.
const BAR: usize = 20;
/// Exit status after Ctrl-C.
const EXIT_INTERRUPTED: u8 = 130;

/// Runs the demo on its own runtime; `keep` keeps everything running afterwards until Ctrl-C.
pub fn run(keep: bool) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the demo runtime")?;
    let result = runtime.block_on(demo(keep));
    // Everything was shut down already; never wait long for a straggler.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// The three demo backends.
struct Backends {
    v1: Backend,
    v2: Backend,
    v3: Backend,
}

/// How the story ended.
struct Report {
    /// When act 1 began and when v2 was promoted.
    act1: (Instant, Instant),
    /// When act 2 began and when the canary weight was back at 0.
    act2: (Instant, Instant),
}

async fn demo(keep: bool) -> anyhow::Result<ExitCode> {
    let style = Style::detect();
    let dir = tempfile::Builder::new()
        .prefix("weir-demo-")
        .tempdir()
        .context("creating a temporary folder for the demo config")?;
    let config_path = dir.path().join("weir.yaml");
    let backends = Backends {
        v1: Backend::bind("v1").context("starting backend v1")?,
        v2: Backend::bind("v2").context("starting backend v2")?,
        v3: Backend::bind("v3").context("starting backend v3")?,
    };
    let header = backends_comment(&backends);
    write_config(
        &config_path,
        &config_yaml(
            &header,
            ("v1", backends.v1.addr()),
            ("v2", backends.v2.addr()),
        ),
    )?;
    let running = app::start(RunOptions {
        config_path: config_path.clone(),
        workers: 1,
        drain_timeout: Duration::from_secs(5),
        access_log: false,
        access_log_format: Default::default(),
        poll_interval: Duration::from_millis(500),
    })
    .await
    .context("starting weir")?;
    let Some(&(_, proxy)) = running.listener_addrs().first() else {
        running.shutdown().await;
        bail!("weir started without a listener");
    };
    let traffic = Traffic::spawn(proxy, HOST, RATE, CONNECTIONS);
    let mut show = Show::new(style, running.driver().clone(), traffic);
    show.intro(&backends, proxy, running.admin_addr(), &config_path);

    let story = {
        let interrupted = tokio::signal::ctrl_c();
        tokio::select! {
            report = show.acts(&backends, &config_path, &running, proxy) => report.map(Some),
            () = tokio::time::sleep(DEADLINE) => Err(anyhow!(
                "the demo did not finish within {}s — weir's rollout seems stuck",
                DEADLINE.as_secs()
            )),
            _ = interrupted => Ok(None),
        }
    };
    let code = match story {
        Ok(Some(report)) => {
            show.summary(&report);
            if keep {
                show.keep_running(&backends, proxy, running.admin_addr(), &config_path)
                    .await;
            }
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!("\ninterrupted: shutting down");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(error) => {
            show.failure(&error);
            ExitCode::FAILURE
        }
    };

    // Traffic first, so weir drains nothing; every step bounded so the demo cannot hang here.
    let Show { traffic, .. } = show;
    let _ = tokio::time::timeout(Duration::from_secs(5), traffic.stop()).await;
    if tokio::time::timeout(Duration::from_secs(10), running.shutdown())
        .await
        .is_err()
    {
        eprintln!("warning: weir did not shut down within 10s");
    }
    for backend in [backends.v1, backends.v2, backends.v3] {
        backend.shutdown().await;
    }
    if let Err(error) = dir.close() {
        eprintln!("warning: cannot remove the demo folder: {error}");
    }
    Ok(code)
}

/// What the acts wait for.
#[derive(Clone, Copy, Debug)]
enum Goal<'a> {
    /// This canary version promoted to stable.
    Promoted(&'a str),
    /// This canary version rolled back: phase Degraded, canary weight 0.
    RolledBack(&'a str),
}

impl Goal<'_> {
    /// Whether `service` reached the goal for `revision`; an error when it cannot any more.
    fn reached(self, revision: u64, service: &ServiceStatus) -> anyhow::Result<bool> {
        if service.revision < revision {
            return Ok(false);
        }
        if service.revision > revision {
            bail!(
                "weir started revision {} while revision {revision} was expected",
                service.revision
            );
        }
        let message = &service.message;
        match (self, service.phase) {
            (Goal::Promoted(version), Phase::Healthy) => Ok(service.stable_version == version),
            (Goal::Promoted(version), Phase::Degraded) => {
                bail!("{version} was rolled back although it is healthy: {message}")
            }
            (Goal::RolledBack(_), Phase::Degraded) => Ok(service.canary_weight == 0.0),
            (Goal::RolledBack(version), Phase::Healthy) => {
                bail!("{version} was promoted although it fails every other request: {message}")
            }
            (_, Phase::Paused) => bail!("the rollout paused instead of going on: {message}"),
            (_, Phase::Progressing) => Ok(false),
        }
    }
}

/// The demo's terminal output and the state it needs: the driver, the traffic, what was printed.
struct Show {
    style: Style,
    driver: Handle,
    traffic: Traffic,
    /// When the demo started, on tokio's clock and on the wall clock (events carry the latter).
    started: Instant,
    started_ms: u64,
    /// The traffic counts at the previous status line.
    last_traffic: TrafficSnapshot,
    /// The last event printed.
    last_event: Option<Event>,
}

impl Show {
    fn new(style: Style, driver: Handle, traffic: Traffic) -> Show {
        Show {
            style,
            driver,
            traffic,
            started: Instant::now(),
            started_ms: wall_clock_ms(),
            last_traffic: TrafficSnapshot::default(),
            last_event: None,
        }
    }

    fn intro(&self, backends: &Backends, proxy: SocketAddr, admin: SocketAddr, config: &Path) {
        let s = &self.style;
        println!(
            "{} — a canary rollout with automatic analysis, then an automatic rollback\n",
            s.bold("weir demo")
        );
        println!(
            "  backends  v1 {} · v2 {} · v3 {}  (demo servers that answer with their version)",
            backends.v1.addr(),
            backends.v2.addr(),
            backends.v3.addr()
        );
        println!("  weir      proxy http://{proxy} · admin http://{admin}");
        println!("  config    {}", config.display());
        println!(
            "  traffic   {RATE} requests/s through weir over {CONNECTIONS} keep-alive connections"
        );
        let status = self.driver.status();
        if let Some(details) = status.service(SERVICE).and_then(|s| s.details.as_ref()) {
            let steps: Vec<&str> = details
                .steps
                .iter()
                .map(|s| s.description.as_str())
                .collect();
            println!("  steps     {}", steps.join(" → "));
        }
        println!("            + background analysis from step 2: latency p99 ≤ 500ms and error rate < 5%, every 1s");
    }

    async fn acts(
        &mut self,
        backends: &Backends,
        config_path: &Path,
        running: &Running,
        proxy: SocketAddr,
    ) -> anyhow::Result<Report> {
        self.heading("Act 1 · v1 → v2: a healthy canary, promoted step by step");
        let act1_start = Instant::now();
        let promoted = self.follow(1, Goal::Promoted("v2")).await?;
        self.note(&format!(
            "v2 promoted in {:.1}s: it now serves 100% as the stable version",
            (promoted - act1_start).as_secs_f64()
        ));
        self.linger(LINGER).await?;

        self.heading("Act 2 · v2 → v3: a canary that fails every other request");
        backends.v3.set_error_rate(V3_ERROR_RATE);
        self.note(&format!(
            "v3 now answers 500 to every other request (POST http://{}/__demo/errors?rate={V3_ERROR_RATE})",
            backends.v3.addr()
        ));
        let header = format!(
            "{}\n# weir: proxy http://{proxy} · admin http://{}",
            backends_comment(backends),
            running.admin_addr()
        );
        write_config(
            config_path,
            &config_yaml(
                &header,
                ("v2", backends.v2.addr()),
                ("v3", backends.v3.addr()),
            ),
        )?;
        // The watcher picks the change up; ask for a reload too rather than wait for it.
        running.reload();
        self.note("config rewritten: stable v2, canary v3");
        let act2_start = Instant::now();
        let rolled_back = self.follow(2, Goal::RolledBack("v3")).await?;
        let status = self.driver.status();
        if let Some(service) = status.service(SERVICE) {
            println!(
                "{} {}",
                self.style.red(&self.style.bold("rolled back:")),
                service.message
            );
        }
        self.linger(LINGER).await?;
        Ok(Report {
            act1: (act1_start, promoted),
            act2: (act2_start, rolled_back),
        })
    }

    /// Prints events and status lines until the service reaches `goal` in `revision`.
    async fn follow(&mut self, revision: u64, goal: Goal<'_>) -> anyhow::Result<Instant> {
        let mut changes = self.driver.watch_status();
        let mut ticks = tokio::time::interval_at(Instant::now() + STATUS_EVERY, STATUS_EVERY);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            changes.borrow_and_update();
            self.print_events();
            let status = self.driver.status();
            if let Some(service) = status.service(SERVICE) {
                if goal.reached(revision, service)? {
                    return Ok(Instant::now());
                }
            }
            tokio::select! {
                changed = changes.changed() => changed.context("weir's driver stopped")?,
                _ = ticks.tick() => self.print_status_line(),
            }
        }
    }

    /// Keeps printing events and status lines for `duration`.
    async fn linger(&mut self, duration: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + duration;
        let mut changes = self.driver.watch_status();
        let mut ticks = tokio::time::interval_at(Instant::now() + STATUS_EVERY, STATUS_EVERY);
        loop {
            changes.borrow_and_update();
            self.print_events();
            tokio::select! {
                changed = changes.changed() => changed.context("weir's driver stopped")?,
                _ = ticks.tick() => self.print_status_line(),
                () = tokio::time::sleep_until(until) => return Ok(()),
            }
        }
    }

    /// Prints the service's events not printed yet. They come from the status, which keeps the
    /// recent ones in order: unlike a broadcast subscription, it also has those emitted before
    /// the demo could subscribe (revision 1 starts while weir starts).
    fn print_events(&mut self) {
        let status = self.driver.status();
        let Some(details) = status.service(SERVICE).and_then(|s| s.details.as_ref()) else {
            return;
        };
        let events = &details.events;
        let first_new = match &self.last_event {
            Some(last) => events.iter().rposition(|e| e == last).map_or(0, |i| i + 1),
            None => 0,
        };
        for event in &events[first_new..] {
            self.print_event(event);
        }
        if let Some(last) = events.last() {
            self.last_event = Some(last.clone());
        }
    }

    fn print_event(&self, event: &Event) {
        let s = &self.style;
        let at = event.at_ms.saturating_sub(self.started_ms) as f64 / 1000.0;
        let kind = format!("{:<15}", event.kind);
        let kind = match event.kind.as_str() {
            "Advance" | "AnalysisPassed" | "Promoted" | "Resumed" => s.green(&kind),
            "Halt" | "Rollback" | "Aborted" | "MeasurementError" | "Undo" => s.red(&kind),
            "Paused" | "Inconclusive" | "Superseded" | "StateUnreadable" => s.yellow(&kind),
            _ => s.cyan(&kind),
        };
        println!("{} {kind} {}", s.dim(&format!("{at:>6.1}s")), event.message);
    }

    fn print_status_line(&mut self) {
        let s = &self.style;
        let now = self.traffic.snapshot();
        let second = now.since(&self.last_traffic);
        self.last_traffic = now;
        let status = self.driver.status();
        let Some(service) = status.service(SERVICE) else {
            return;
        };
        let at = self.started.elapsed().as_secs_f64();
        let weight = service.canary_weight;
        let filled = ((weight / 100.0) * BAR as f64)
            .round()
            .clamp(0.0, BAR as f64) as usize;
        let bar = format!(
            "{}{}",
            s.green(&"█".repeat(filled)),
            s.dim(&"░".repeat(BAR - filled))
        );
        let canary = service.canary_version.as_deref().unwrap_or("-");
        let where_ = match service.phase {
            Phase::Progressing | Phase::Paused => {
                let step = service.step_index.min(service.step_count.saturating_sub(1));
                let description = service
                    .details
                    .as_ref()
                    .and_then(|d| d.steps.get(step))
                    .map_or("", |d| d.description.as_str());
                format!("step {}/{} {description}", step + 1, service.step_count)
            }
            Phase::Healthy => format!("{} stable", service.stable_version),
            Phase::Degraded => format!("{canary} rolled back"),
        };
        // Runs a promotion or rollback ended stay `Running` in the status: show only live ones.
        let analysis = match service.phase {
            Phase::Progressing | Phase::Paused => service
                .details
                .as_ref()
                .map(analysis_line)
                .unwrap_or_default(),
            Phase::Healthy | Phase::Degraded => String::new(),
        };
        let mut line = format!(
            "{} {bar} {weight:>3.0}% {canary:<3} {where_:<32} {}",
            s.dim(&format!("{at:>6.1}s")),
            split_line(&second, s),
        );
        if !analysis.is_empty() {
            line.push_str("  ");
            line.push_str(&s.dim(&analysis));
        }
        println!("{line}");
    }

    fn heading(&self, title: &str) {
        println!("\n{}", self.style.bold(title));
    }

    fn note(&self, text: &str) {
        let at = self.started.elapsed().as_secs_f64();
        println!(
            "{} {} {text}",
            self.style.dim(&format!("{at:>6.1}s")),
            self.style.bold("»")
        );
    }

    fn summary(&self, report: &Report) {
        let s = &self.style;
        let status = self.driver.status();
        let traffic = self.traffic.snapshot();
        println!(
            "\n{} ({:.1}s)",
            s.bold("Summary"),
            self.started.elapsed().as_secs_f64()
        );
        if let Some(details) = status.service(SERVICE).and_then(|s| s.details.as_ref()) {
            for revision in &details.history {
                let took = revision
                    .ended_at_ms
                    .map(|end| {
                        format!(
                            " after {:.1}s",
                            end.saturating_sub(revision.started_at_ms) as f64 / 1000.0
                        )
                    })
                    .unwrap_or_default();
                println!(
                    "  revision {}  {} → {}  {:?}{took}",
                    revision.revision, revision.from_version, revision.version, revision.outcome
                );
            }
            if let Some(last) = details.history.last() {
                if !last.message.is_empty() && last.revision == 2 {
                    println!("    reason: {}", last.message);
                }
            }
        }
        let (act1_start, promoted) = report.act1;
        let (act2_start, rolled_back) = report.act2;
        println!(
            "  act 1: v2 promoted {:.1}s after its rollout began",
            (promoted - act1_start).as_secs_f64()
        );
        let v3 = traffic.versions.get("v3").copied().unwrap_or_default();
        match v3.first_error_at {
            Some(first_error) => {
                let last_answer = v3
                    .last_at
                    .map(|last| {
                        format!(
                            "; v3's last answer came {:.1}s after its first error",
                            last.saturating_duration_since(first_error).as_secs_f64()
                        )
                    })
                    .unwrap_or_default();
                println!(
                    "  act 2: v3's first 500 → canary weight 0 in {:.1}s{last_answer}",
                    rolled_back
                        .saturating_duration_since(first_error)
                        .as_secs_f64()
                );
            }
            None => println!(
                "  act 2: v3 rolled back {:.1}s after its rollout began",
                (rolled_back - act2_start).as_secs_f64()
            ),
        }
        let mut versions = Vec::new();
        for (version, counts) in &traffic.versions {
            let errors = if counts.server_errors > 0 {
                format!(" ({} × 5xx)", counts.server_errors)
            } else {
                String::new()
            };
            versions.push(format!("{version} {}{errors}", counts.responses));
        }
        println!(
            "  traffic: {} answers — {} · {} without an answer",
            traffic.responses(),
            versions.join(" · "),
            traffic.failures
        );
        if let Some(service) = status.service(SERVICE) {
            println!(
                "  now: {} serves {:.0}%, phase {:?}",
                service.stable_version,
                100.0 - service.canary_weight,
                service.phase
            );
        }
    }

    fn failure(&self, error: &anyhow::Error) {
        let s = &self.style;
        println!("\n{} {error:#}", s.red(&s.bold("demo failed:")));
        let status = self.driver.status();
        if let Some(service) = status.service(SERVICE) {
            println!(
                "  {SERVICE}: revision {}, phase {:?}, step {}/{}, canary weight {}%: {}",
                service.revision,
                service.phase,
                (service.step_index + 1).min(service.step_count),
                service.step_count,
                service.canary_weight,
                service.message
            );
        }
        let traffic = self.traffic.snapshot();
        println!(
            "  traffic: {} sent, {} answers, {} without an answer",
            traffic.sent,
            traffic.responses(),
            traffic.failures
        );
    }

    async fn keep_running(
        &mut self,
        backends: &Backends,
        proxy: SocketAddr,
        admin: SocketAddr,
        config: &Path,
    ) {
        let s = &self.style;
        let weir = weir_command();
        let admin = format!("http://{admin}");
        let v3 = backends.v3.addr();
        println!(
            "\n{} (traffic goes on; Ctrl-C stops everything and deletes {}):",
            s.bold("Everything keeps running"),
            config
                .parent()
                .map_or_else(|| config.display().to_string(), |p| p.display().to_string())
        );
        println!("  watch the rollout   {weir} --admin {admin} get {SERVICE} --watch");
        println!("  its revisions       {weir} --admin {admin} history {SERVICE}");
        println!("  ask weir yourself   curl -s http://{proxy}/");
        println!("  heal v3             curl -X POST 'http://{v3}/__demo/errors?rate=0'");
        println!("  then roll it again  {weir} --admin {admin} retry {SERVICE}");
        println!(
            "  or slow it down     curl -X POST 'http://{v3}/__demo/latency?ms=800'  (p99 > 500ms: rolled back)"
        );
        println!(
            "  a new rollout       edit {} (e.g. canary version v1, upstream {}) and save",
            config.display(),
            backends.v1.addr()
        );
        println!(
            "  backends            v1 {} · v2 {} · v3 {v3}\n",
            backends.v1.addr(),
            backends.v2.addr()
        );
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        let mut changes = self.driver.watch_status();
        loop {
            changes.borrow_and_update();
            self.print_events();
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = &mut interrupted => {
                    println!("\nCtrl-C: shutting down");
                    return;
                }
            }
        }
    }
}

/// `v1 160 · v2 40 · v3 20 (10 × 5xx)` for the last second.
fn split_line(second: &TrafficSnapshot, s: &Style) -> String {
    let mut parts = Vec::new();
    for (version, counts) in &second.versions {
        if counts.responses == 0 {
            continue;
        }
        let mut part = format!("{version} {:>3}", counts.responses);
        if counts.server_errors > 0 {
            part.push_str(&s.red(&format!(" ({}×5xx)", counts.server_errors)));
        }
        if version == NO_VERSION {
            part = format!("weir-only {}", counts.responses);
        }
        parts.push(part);
    }
    if second.failures > 0 {
        parts.push(s.red(&format!("{} unanswered", second.failures)));
    }
    if parts.is_empty() {
        return "no answers".into();
    }
    parts.join(" · ")
}

/// The latest value of every metric of the running analyses: `success-rate 100.0% ✓ · p99 1.2ms ✓`.
fn analysis_line(details: &Details) -> String {
    let mut parts = Vec::new();
    for run in details
        .analysis_runs
        .iter()
        .filter(|r| r.phase == RunPhase::Running)
    {
        parts.extend(run_values(run));
    }
    parts.join(" · ")
}

fn run_values(run: &AnalysisRun) -> Vec<String> {
    let background = matches!(run.kind, RunKind::Background);
    run.metrics
        .iter()
        .map(|metric| {
            let name = if background {
                format!("{} (bg)", metric.name)
            } else {
                metric.name.clone()
            };
            let Some(last) = metric.measurements.last() else {
                return format!("{name} …");
            };
            let value = match last.value.as_ref().and_then(serde_json::Value::as_f64) {
                Some(value) => show_metric(&metric.name, value),
                None => "no data".into(),
            };
            let verdict = match last.verdict {
                Verdict::Successful => "✓",
                Verdict::Failed => "✗",
                Verdict::Inconclusive => "?",
                Verdict::Error => "!",
            };
            format!("{name} {value} {verdict}")
        })
        .collect()
}

/// Rates as percentages, latencies in milliseconds, anything else as is.
fn show_metric(name: &str, value: f64) -> String {
    if name.contains("rate") {
        format!("{:.1}%", value * 100.0)
    } else if name.contains("latency") || name.starts_with('p') {
        format!("{:.1}ms", value * 1000.0)
    } else {
        format!("{value:.3}")
    }
}

/// `# backends: v1 127.0.0.1:…, v2 …, v3 …`.
fn backends_comment(backends: &Backends) -> String {
    format!(
        "# backends: v1 {} · v2 {} · v3 {}",
        backends.v1.addr(),
        backends.v2.addr(),
        backends.v3.addr()
    )
}

/// The demo config: `stable` and `canary` as (version, address).
fn config_yaml(header: &str, stable: (&str, SocketAddr), canary: (&str, SocketAddr)) -> String {
    let (stable_version, stable_addr) = stable;
    let (canary_version, canary_addr) = canary;
    format!(
        r#"# Written by `weir demo`. Edit and save: weir applies the change at once.
{header}
listeners:
  - name: public
    address: 127.0.0.1:0        # 0: a free port, chosen at start
admin:
  address: 127.0.0.1:0
stateDir: ./state
services:
  - name: {SERVICE}
    match:
      hosts: ["*"]
    stable:
      version: {stable_version}
      upstreams: ["{stable_addr}"]
    canary:
      version: {canary_version}
      upstreams: ["{canary_addr}"]
    strategy:
      canary:
        steps:
          - setWeight: 20
          - pause: {{ duration: 5s }}
          - analysis:
              templates:
                - templateName: success-rate
          - setWeight: 50
          - pause: {{ duration: 5s }}
          - setWeight: 100
        analysis:                 # background analysis, from step 2 to the end
          templates:
            - templateName: latency
          startingStep: 1
analysisTemplates:
  - name: success-rate
    metrics:
      - name: success-rate
        interval: 1s
        count: 3
        failureLimit: 0
        successCondition: result >= 0.95
        provider:
          builtin:
            metric: success-rate
            window: 5s
            minRequests: 10
  - name: latency
    metrics:
      - name: p99
        interval: 1s
        initialDelay: 2s          # let the canary see some traffic first
        inconclusiveLimit: 3
        successCondition: result <= 0.5
        provider:
          builtin:
            metric: latency-p99
            window: 5s
            minRequests: 10
      - name: error-rate
        interval: 1s
        initialDelay: 1s
        inconclusiveLimit: 3
        successCondition: result < 0.05
        provider:
          builtin:
            metric: error-rate
            window: 5s
            minRequests: 10
"#
    )
}

/// Writes `text` to `path` atomically (a temporary file renamed over it), so the watcher never
/// reads half a config.
fn write_config(path: &Path, text: &str) -> anyhow::Result<()> {
    let partial = path.with_extension("yaml.partial");
    std::fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// How to run this binary from a shell: `weir` when that is what `PATH` finds, else its path.
fn weir_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "weir".into();
    };
    let exe = exe.canonicalize().unwrap_or(exe);
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .filter_map(|dir| dir.join("weir").canonicalize().ok())
            .any(|found| found == exe)
    });
    if on_path {
        "weir".into()
    } else {
        shell_word(&exe)
    }
}

/// A path as one shell word (quoted when it needs to be).
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Milliseconds since the Unix epoch, as the driver stamps events.
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// ANSI styling, only when stdout is a terminal and `NO_COLOR` is unset.
#[derive(Clone, Copy, Debug)]
struct Style {
    ansi: bool,
}

impl Style {
    fn detect() -> Style {
        let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Style { ansi }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.ansi {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }

    fn red(&self, text: &str) -> String {
        self.paint("31", text)
    }

    fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }

    fn yellow(&self, text: &str) -> String {
        self.paint("33", text)
    }

    fn cyan(&self, text: &str) -> String {
        self.paint("36", text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_is_valid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let path = dir.path().join("weir.yaml");
        write_config(&path, &config_yaml("# test", ("v1", a), ("v2", b))).expect("write");
        let model = weir_config::load(&path).expect("the demo config validates");
        assert_eq!(model.services.len(), 1);
        assert_eq!(model.services[0].stable.version, "v1");
    }
}
