//! Traffic policies driven by rollouts, end to end: weir in-process with its config file, demo
//! backends, and requests over real sockets. Header routes set and removed by steps, Flagger A/B
//! testing (`iterations` with `match`), and mirror routes judged on shadow traffic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method};
use weir_control::demo::backend::Backend;
use weir_control::engine::rollout::{Phase, RevisionOutcome};

use crate::admin;
use crate::body::TestBody;
use crate::client::{self, Http1};
use crate::weir::{fill, Weir, HEADER};

const HOST: &str = "shop.example.com";

fn backends() -> (Backend, Backend) {
    (
        Backend::bind("v1").expect("bind v1"),
        Backend::bind("v2").expect("bind v2"),
    )
}

/// Service `shop` (stable `v1`, canary `v2`) with `strategy` (YAML under `strategy:`, indented by
/// 6 spaces) and top-level `extra` YAML (templates).
fn shop(v1: &Backend, v2: &Backend, strategy: &str, extra: &str) -> String {
    let template = format!(
        r#"{HEADER}services:
  - name: shop
    match: {{hosts: ["{HOST}"]}}
    stable: {{version: v1, upstreams: ["${{v1}}"]}}
    canary: {{version: v2, upstreams: ["${{v2}}"]}}
    strategy:
{strategy}
{extra}"#
    );
    fill(&template, &[("v1", v1.addr()), ("v2", v2.addr())])
}

/// Sends `n` requests with `headers` on one connection; returns how many `v2` answered.
async fn count_canary(addr: SocketAddr, n: usize, headers: &[(&str, &str)]) -> usize {
    let mut client = Http1::connect(addr).await;
    let mut canary = 0;
    for _ in 0..n {
        let mut request = client::get(HOST, "/");
        for (name, value) in headers {
            request.headers_mut().append(
                http::header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let reply = client.fetch(request).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        match reply.served_by() {
            "v2" => canary += 1,
            "v1" => {}
            other => panic!("answered by {other:?}"),
        }
    }
    canary
}

/// A paced request loop with fixed headers, counting who answered; stops when dropped.
struct Loop {
    stop: Arc<AtomicBool>,
    canary: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Loop {
    fn spawn(
        addr: SocketAddr,
        every: Duration,
        headers: Vec<(&'static str, &'static str)>,
    ) -> Loop {
        let stop = Arc::new(AtomicBool::new(false));
        let canary = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, canary, total) = (stop.clone(), canary.clone(), total.clone());
            async move {
                let mut client = Http1::connect(addr).await;
                let mut tick = tokio::time::interval(every);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let mut request = client::get(HOST, "/");
                    for (name, value) in &headers {
                        request
                            .headers_mut()
                            .append(*name, HeaderValue::from_static(value));
                    }
                    let reply = client.fetch(request).await;
                    total.fetch_add(1, Ordering::Relaxed);
                    if reply.served_by() == "v2" {
                        canary.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Loop {
            stop,
            canary,
            total,
            task,
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.canary.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        (
            self.canary.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

/// setHeaderRoute at weight 0: every request with the header reaches the canary, none without;
/// a later step removes the route; promotion ends with no route in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_route_step_sends_matching_requests_to_the_canary_until_removed() {
    let (v1, v2) = backends();
    let strategy = r#"      canary:
        steps:
          - setHeaderRoute:
              name: beta
              match:
                - headerName: x-beta
                  headerValue: {exact: "yes"}
          - pause: {}
          - setHeaderRoute: {name: beta}
          - pause: {}"#;
    let weir = Weir::start(&shop(&v1, &v2, strategy, "")).await;
    weir.wait_until("shop", Duration::from_secs(5), "the first pause", |s| {
        s.phase == Phase::Paused && s.step_index == 1
    })
    .await;
    assert_eq!(weir.status("shop").canary_weight, 0.0);
    // The rule and where the rollout stands are visible to Prometheus and the API.
    let metrics = admin::metrics(weir.admin()).await;
    assert!(
        metrics.contains("weir_route_rules{service=\"shop\",kind=\"header\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "weir_rollout_info{service=\"shop\",strategy=\"steps\",phase=\"Paused\",strategy_phase=\"\"} 1"
        ),
        "{metrics}"
    );
    let api = admin::service(weir.admin(), "shop").await;
    assert_eq!(api["rules"]["headerRoutes"][0]["name"], "beta", "{api}");
    assert_eq!(
        count_canary(weir.addr(), 40, &[("x-beta", "yes")]).await,
        40
    );
    assert_eq!(count_canary(weir.addr(), 40, &[]).await, 0);
    assert_eq!(count_canary(weir.addr(), 20, &[("x-beta", "no")]).await, 0);
    assert_eq!(count_canary(weir.addr(), 20, &[("x-beta", "YES")]).await, 0);

    admin::command(weir.admin(), "shop", "promote").await;
    weir.wait_until("shop", Duration::from_secs(5), "the second pause", |s| {
        s.phase == Phase::Paused && s.step_index == 3
    })
    .await;
    assert_eq!(
        count_canary(weir.addr(), 40, &[("x-beta", "yes")]).await,
        0,
        "the route was removed by the third step"
    );
    let api = admin::service(weir.admin(), "shop").await;
    assert_eq!(api["rules"]["headerRoutes"], serde_json::json!([]), "{api}");

    admin::command(weir.admin(), "shop", "promote").await;
    let done = weir
        .wait_until("shop", Duration::from_secs(5), "promotion", |s| {
            s.phase == Phase::Healthy
        })
        .await;
    assert_eq!(done.stable_version, "v2");
    assert_eq!(count_canary(weir.addr(), 20, &[]).await, 20);
    weir.shutdown().await;
}

/// A header route is gone after an abort, and prefix, regex and cookie conditions are ANDed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_routes_match_prefix_regex_and_cookies_and_end_with_an_abort() {
    let (v1, v2) = backends();
    let strategy = r#"      canary:
        steps:
          - setWeight: 0
          - setHeaderRoute:
              name: insiders
              match:
                - headerName: x-user
                  headerValue: {prefix: "staff-"}
                - cookieName: tier
                  cookieValue: {regex: "gold|platinum"}
          - pause: {}"#;
    let weir = Weir::start(&shop(&v1, &v2, strategy, "")).await;
    weir.wait_until("shop", Duration::from_secs(5), "the pause", |s| {
        s.phase == Phase::Paused
    })
    .await;
    let both = [("x-user", "staff-ann"), ("cookie", "a=1; tier=gold; b=2")];
    assert_eq!(count_canary(weir.addr(), 20, &both).await, 20);
    let platinum = [("x-user", "staff-bob"), ("cookie", "tier=platinum")];
    assert_eq!(count_canary(weir.addr(), 20, &platinum).await, 20);
    // Each condition alone, a regex that must match the whole value, a prefix elsewhere.
    for headers in [
        &[("x-user", "staff-ann")][..],
        &[("cookie", "tier=gold")][..],
        &[("x-user", "staff-ann"), ("cookie", "tier=golden")][..],
        &[("x-user", "ann-staff-"), ("cookie", "tier=gold")][..],
        &[("x-user", "staff-ann"), ("cookie", "xtier=gold")][..],
    ] {
        assert_eq!(
            count_canary(weir.addr(), 10, headers).await,
            0,
            "{headers:?}"
        );
    }

    admin::command(weir.admin(), "shop", "abort").await;
    let aborted = weir
        .wait_until("shop", Duration::from_secs(5), "the abort", |s| {
            s.phase == Phase::Degraded
        })
        .await;
    assert_eq!(aborted.canary_weight, 0.0);
    assert_eq!(
        count_canary(weir.addr(), 20, &both).await,
        0,
        "the route ends with the rollout"
    );
    weir.shutdown().await;
}

const AB_TEST: &str = r#"      canary:
        analysis:
          interval: 400ms
          threshold: 2
          iterations: 3
          match:
            - headers:
                x-canary: {exact: "insider"}
          metrics:
            - name: request-success-rate
              thresholdRange: {min: 99}
              interval: 2s"#;

/// Flagger A/B testing: requests with the header go to the canary for 3 passing checks, then it
/// is promoted; requests without it never reach the canary meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_testing_promotes_after_the_iterations_and_never_sends_others_to_the_canary() {
    let (v1, v2) = backends();
    let weir = Weir::start(&shop(&v1, &v2, AB_TEST, "")).await;
    let insiders = Loop::spawn(
        weir.addr(),
        Duration::from_millis(10),
        vec![("x-canary", "insider")],
    );
    let others = Loop::spawn(weir.addr(), Duration::from_millis(10), vec![]);
    // Half way (an iteration passed, not yet promoted): nobody without the header got v2.
    weir.wait_until(
        "shop",
        Duration::from_secs(20),
        "a passing iteration",
        |s| {
            s.details
                .as_ref()
                .is_some_and(|d| d.events.iter().any(|e| e.kind == "Advance"))
        },
    )
    .await;
    let (others_canary, others_total) = others.counts();
    let still = weir.status("shop");
    // Read after the counts: the counts were taken before any promotion (two iterations of
    // 400 ms remain after the first).
    assert_eq!(still.phase, Phase::Progressing, "{}", still.message);
    assert!(others_total > 0);
    assert_eq!(others_canary, 0, "no request without the header reached v2");
    assert_eq!(still.canary_weight, 0.0, "A/B testing never sets a weight");
    let done = weir
        .wait_until(
            "shop",
            Duration::from_secs(20),
            "the end of the A/B test",
            |s| s.phase == Phase::Healthy || s.phase == Phase::Degraded,
        )
        .await;
    others.stop().await;
    let (insiders_canary, insiders_total) = insiders.stop().await;
    assert_eq!(done.phase, Phase::Healthy, "{}", done.message);
    assert_eq!(done.stable_version, "v2");
    let details = done.details.as_ref().expect("details");
    assert_eq!(
        details.history.last().expect("a revision").outcome,
        RevisionOutcome::Promoted
    );
    let advances = details
        .events
        .iter()
        .filter(|e| e.kind == "Advance")
        .count();
    assert!(
        advances >= 2,
        "one event per passing iteration: {:?}",
        details.events
    );
    assert!(insiders_canary > 0 && insiders_total > 0);
    weir.shutdown().await;
}

/// Flagger A/B testing with a failing canary: failed checks reach the threshold and it rolls back;
/// requests without the header never reached the canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_testing_rolls_back_a_failing_canary() {
    let (v1, v2) = backends();
    v2.set_error_rate(0.5);
    let weir = Weir::start(&shop(&v1, &v2, AB_TEST, "")).await;
    let insiders = Loop::spawn(
        weir.addr(),
        Duration::from_millis(10),
        vec![("x-canary", "insider")],
    );
    let others = Loop::spawn(weir.addr(), Duration::from_millis(10), vec![]);
    let done = weir
        .wait_until(
            "shop",
            Duration::from_secs(20),
            "the end of the A/B test",
            |s| s.phase == Phase::Healthy || s.phase == Phase::Degraded,
        )
        .await;
    let (others_canary, others_total) = others.stop().await;
    let (insiders_canary, _) = insiders.stop().await;
    assert_eq!(done.phase, Phase::Degraded, "{}", done.message);
    assert_eq!(done.stable_version, "v1");
    assert_eq!(done.canary_weight, 0.0);
    assert!(insiders_canary > 0, "the insiders reached the canary");
    assert!(others_total > 0);
    assert_eq!(others_canary, 0, "no request without the header reached v2");
    assert_eq!(
        count_canary(weir.addr(), 20, &[("x-canary", "insider")]).await,
        0,
        "the A/B route ends with the rollback"
    );
    weir.shutdown().await;
}

/// setMirrorRoute at 50% of GETs at weight 0: the canary gets a copy of half the GETs and none of
/// the POSTs; the clients only ever see stable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_route_step_copies_half_the_matching_requests_to_the_canary() {
    let (v1, v2) = backends();
    let strategy = r#"      canary:
        steps:
          - setMirrorRoute:
              name: shadow
              percentage: 50
              match:
                - method: {exact: GET}
          - pause: {}"#;
    let weir = Weir::start(&shop(&v1, &v2, strategy, "")).await;
    weir.wait_until("shop", Duration::from_secs(5), "the pause", |s| {
        s.phase == Phase::Paused
    })
    .await;
    assert_eq!(
        count_canary(weir.addr(), 100, &[]).await,
        0,
        "clients see stable only"
    );
    let mut client = Http1::connect(weir.addr()).await;
    for _ in 0..20 {
        let request = client::request(Method::POST, HOST, "/", TestBody::full("x"));
        let reply = client.fetch(request).await;
        assert_eq!(reply.served_by(), "v1");
    }
    // Copies are sent off the request path: wait for them to arrive.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while v2.stats().requests < 49 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mirrored = v2.stats().requests;
    assert!(
        (49..=51).contains(&mirrored),
        "{mirrored} copies of 100 GETs at 50%"
    );
    assert_eq!(v1.stats().requests, 120);
    weir.shutdown().await;
}

/// A canary judged on shadow traffic before it serves a single user: a mirror route and an
/// analysis with `traffic: mirror` roll back a canary that fails only on its copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_on_mirrored_traffic_is_rolled_back_before_serving_anyone() {
    let (v1, v2) = backends();
    v2.set_error_rate(1.0);
    let strategy = r#"      canary:
        steps:
          - setMirrorRoute:
              name: shadow
              match:
                - path: {prefix: /}
          - pause: {duration: 2s}
          - analysis: {templates: [{templateName: shadow-errors}]}
          - setWeight: 50"#;
    let templates = r#"analysisTemplates:
  - name: shadow-errors
    metrics:
      - name: shadow-success
        interval: 300ms
        count: 3
        successCondition: result >= 0.95
        provider: {builtin: {metric: success-rate, traffic: mirror, window: 2s, minRequests: 5}}
"#;
    let weir = Weir::start(&shop(&v1, &v2, strategy, templates)).await;
    let users = Loop::spawn(weir.addr(), Duration::from_millis(10), vec![]);
    let done = weir
        .wait_until("shop", Duration::from_secs(15), "a verdict", |s| {
            s.phase == Phase::Degraded || s.canary_weight > 0.0
        })
        .await;
    let (canary, total) = users.stop().await;
    assert_eq!(done.phase, Phase::Degraded, "{}", done.message);
    assert!(total > 0);
    assert_eq!(canary, 0, "no user was served by the canary");
    assert!(v2.stats().errors > 0, "the canary failed on copies");
    // The primary series never saw a 5xx: the mirror's failures are in their own series.
    let metrics = admin::metrics(weir.admin()).await;
    assert!(
        !metrics.lines().any(|l| l.starts_with("http_requests_total")
            && l.contains("version=\"v2\"")
            && l.contains("status=\"500\"")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weir_mirror_requests_total") && l.contains("status=\"500\"")),
        "{metrics}"
    );
    // Every series the Grafana dashboard queries is a family weir exports.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dashboards/weir.json"),
    )
    .expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("http_") || word.starts_with("weir_") {
                    queried.push(word.to_string());
                }
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    for series in queried {
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| series.strip_suffix(suffix))
            .unwrap_or(&series);
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {series}, which weir does not export"
        );
    }
    weir.shutdown().await;
}
