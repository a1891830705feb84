//! Blue-green end to end: weir in-process, a preview reachable by host, header and listener, the
//! switch as one route-table publish, analysis before and after it, and the instant way back.

use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;
use weir_control::demo::backend::Backend;
use weir_control::demo::traffic::Traffic;
use weir_control::engine::rollout::{Phase, RevisionOutcome};

use crate::admin;
use crate::client::{self, Http1};
use crate::weir::{fill, Weir};

const HOST: &str = "orders.example.com";
const PREVIEW_HOST: &str = "preview.orders.example.com";

fn backends() -> (Backend, Backend) {
    (
        Backend::bind("v1").expect("bind v1"),
        Backend::bind("v2").expect("bind v2"),
    )
}

/// Two listeners (`public` first, `preview` second), service `orders` (blue `v1`, green `v2`) with
/// the blue-green settings `settings` (YAML under `blueGreen:`, indented by 8 spaces), and `extra`
/// top-level YAML.
fn orders(v1: &Backend, v2: &Backend, settings: &str, extra: &str) -> String {
    let template = format!(
        r#"listeners:
  - name: public
    address: 127.0.0.1:0
  - name: preview
    address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
services:
  - name: orders
    match: {{hosts: ["{HOST}"]}}
    stable: {{version: v1, upstreams: ["${{v1}}"]}}
    canary: {{version: v2, upstreams: ["${{v2}}"]}}
    strategy:
      blueGreen:
        preview:
          hosts: ["{PREVIEW_HOST}"]
          listener: preview
          headers: [{{headerName: x-preview, headerValue: {{exact: "1"}}}}]
{settings}
{extra}"#
    );
    fill(&template, &[("v1", v1.addr()), ("v2", v2.addr())])
}

/// Who answers `n` requests for `host` with `headers` on one connection to `addr`: (v1, v2).
async fn served(
    addr: SocketAddr,
    host: &str,
    headers: &[(&'static str, &'static str)],
    n: usize,
) -> (usize, usize) {
    let mut client = Http1::connect(addr).await;
    let (mut blue, mut green) = (0, 0);
    for _ in 0..n {
        let mut request = client::get(host, "/");
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, HeaderValue::from_static(value));
        }
        let reply = client.fetch(request).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        match reply.served_by() {
            "v1" => blue += 1,
            "v2" => green += 1,
            other => panic!("answered by {other:?}"),
        }
    }
    (blue, green)
}

/// Waits until `traffic` has had `n` more responses than `since` (polls its counters).
async fn wait_responses(traffic: &Traffic, since: u64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while traffic.snapshot().responses() < since + n {
        assert!(Instant::now() < deadline, "traffic stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn preview_addr(weir: &Weir) -> SocketAddr {
    let listeners = weir.running().listener_addrs();
    listeners
        .iter()
        .find(|(name, _)| name == "preview")
        .expect("the preview listener")
        .1
}

fn last_outcome(weir: &Weir) -> RevisionOutcome {
    weir.status("orders")
        .details
        .expect("details")
        .history
        .last()
        .expect("a revision")
        .outcome
}

/// Before promotion the preview answers by host, header and listener while production gets blue
/// only; `weir promote` switches everything at once; under constant load nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_is_reachable_before_a_manual_switch_that_loses_nothing() {
    let (v1, v2) = backends();
    let weir = Weir::start(&orders(&v1, &v2, "        autoPromotionEnabled: false", "")).await;
    let waiting = weir
        .wait_until(
            "orders",
            Duration::from_secs(5),
            "waiting for promotion",
            |s| s.phase == Phase::Paused,
        )
        .await;
    assert_eq!(waiting.canary_weight, 0.0, "{}", waiting.message);
    let public = weir.addr();
    assert_eq!(
        served(public, HOST, &[], 30).await,
        (30, 0),
        "production: blue"
    );
    assert_eq!(
        served(public, PREVIEW_HOST, &[], 30).await,
        (0, 30),
        "preview host"
    );
    assert_eq!(
        served(public, HOST, &[("x-preview", "1")], 30).await,
        (0, 30),
        "preview header"
    );
    assert_eq!(
        served(public, HOST, &[("x-preview", "0")], 10).await,
        (10, 0)
    );
    assert_eq!(
        served(preview_addr(&weir), HOST, &[], 30).await,
        (0, 30),
        "preview listener"
    );

    let traffic = Traffic::spawn(public, HOST, 300, 4);
    wait_responses(&traffic, 0, 50).await;
    let before = traffic.snapshot();
    assert_eq!(before.responses_from("v2"), 0);
    admin::command(weir.admin(), "orders", "promote").await;
    let done = weir
        .wait_until("orders", Duration::from_secs(5), "the switch", |s| {
            s.phase == Phase::Healthy
        })
        .await;
    assert_eq!(done.canary_weight, 100.0);
    assert_eq!(done.stable_version, "v2");
    let mid = traffic.snapshot();
    wait_responses(&traffic, mid.responses(), 50).await;
    let after = traffic.stop().await;
    assert_eq!(after.failures, 0, "no request lost across the switch");
    assert!(after.since(&mid).responses_from("v2") > 0);
    // Only requests already routed when the switch was published (at most the 4 in flight) may
    // still be answered by blue after it.
    assert!(
        after.since(&mid).responses_from("v1") <= 4,
        "one switch: blue gets nothing after"
    );
    assert_eq!(served(public, HOST, &[], 20).await, (0, 20));
    weir.shutdown().await;
}

/// `autoPromotionSeconds`: the switch happens by itself that long after the preview came up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_promotion_switches_after_auto_promotion_seconds() {
    let (v1, v2) = backends();
    let started = Instant::now();
    let weir = Weir::start(&orders(&v1, &v2, "        autoPromotionSeconds: 1", "")).await;
    weir.wait_until("orders", Duration::from_secs(5), "the preview", |s| {
        s.revision == 1
    })
    .await;
    assert_eq!(served(weir.addr(), HOST, &[], 10).await, (10, 0));
    let done = weir
        .wait_until("orders", Duration::from_secs(10), "the switch", |s| {
            s.canary_weight == 100.0
        })
        .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(950),
        "switched after {took:?}"
    );
    assert_eq!(done.stable_version, "v2", "{}", done.message);
    assert_eq!(served(weir.addr(), HOST, &[], 10).await, (0, 10));
    weir.shutdown().await;
}

const GREEN_IS_V2: &str = r#"analysisTemplates:
  - name: smoke
    args: [{name: url}, {name: host}]
    metrics:
      - name: preview-answers
        interval: 200ms
        count: 2
        successCondition: result == "v2"
        provider:
          web:
            url: "{{args.url}}/"
            headers: [{key: Host, value: "{{args.host}}"}]
            jsonPath: "$.version"
  - name: success
    metrics:
      - name: success-rate
        initialDelay: 1s
        interval: 300ms
        count: 4
        successCondition: result >= 0.95
        provider: {builtin: {metric: success-rate, window: 2s, minRequests: 5}}
"#;

/// A smoke test against `{{preview.url}}` passes (it really reaches green), then auto-promotion
/// switches; a post-promotion analysis on real traffic passes and the rollout is Healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_before_and_after_the_switch_passes_for_a_healthy_green() {
    let (v1, v2) = backends();
    let settings = r#"        prePromotionAnalysis:
          templates: [{templateName: smoke}]
          args:
            - {name: url, value: "{{preview.url}}"}
            - {name: host, value: "{{preview.host}}"}
        postPromotionAnalysis:
          templates: [{templateName: success}]
        scaleDownDelay: 1s"#;
    let weir = Weir::start(&orders(&v1, &v2, settings, GREEN_IS_V2)).await;
    let traffic = Traffic::spawn(weir.addr(), HOST, 200, 4);
    let done = weir
        .wait_until("orders", Duration::from_secs(20), "the end", |s| {
            s.phase == Phase::Healthy || s.phase == Phase::Degraded
        })
        .await;
    let served = traffic.stop().await;
    assert_eq!(done.phase, Phase::Healthy, "{}", done.message);
    assert_eq!(done.stable_version, "v2");
    assert_eq!(served.failures, 0);
    assert_eq!(last_outcome(&weir), RevisionOutcome::Promoted);
    weir.shutdown().await;
}

/// A failing pre-promotion analysis aborts with nothing switched: production never saw green.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_promotion_analysis_aborts_with_nothing_switched() {
    let (v1, v2) = backends();
    // Green answers 500 to everything; the analysis judges the preview's traffic.
    v2.set_error_rate(1.0);
    let settings = r#"        prePromotionAnalysis:
          templates: [{templateName: success}]"#;
    let weir = Weir::start(&orders(&v1, &v2, settings, GREEN_IS_V2)).await;
    // Preview traffic is what the analysis judges.
    let preview = Traffic::spawn(preview_addr(&weir), HOST, 200, 2);
    let production = Traffic::spawn(weir.addr(), HOST, 200, 2);
    let done = weir
        .wait_until("orders", Duration::from_secs(15), "a verdict", |s| {
            s.phase == Phase::Degraded || s.canary_weight > 0.0
        })
        .await;
    drop(preview);
    let production = production.stop().await;
    assert_eq!(done.phase, Phase::Degraded, "{}", done.message);
    assert_eq!(done.canary_weight, 0.0);
    assert_eq!(
        production.responses_from("v2"),
        0,
        "production never reached green"
    );
    assert_eq!(production.failures, 0);
    assert_eq!(last_outcome(&weir), RevisionOutcome::Aborted);
    // The preview is down after the abort: the preview listener reaches blue.
    assert_eq!(served(preview_addr(&weir), HOST, &[], 10).await, (10, 0));
    weir.shutdown().await;
}

/// A failing post-promotion analysis switches back at once: blue serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_post_promotion_analysis_switches_back() {
    let (v1, v2) = backends();
    let settings = r#"        postPromotionAnalysis:
          templates: [{templateName: success}]
        scaleDownDelay: 30s"#;
    let weir = Weir::start(&orders(&v1, &v2, settings, GREEN_IS_V2)).await;
    let traffic = Traffic::spawn(weir.addr(), HOST, 200, 4);
    weir.wait_until("orders", Duration::from_secs(10), "the switch", |s| {
        s.canary_weight == 100.0
    })
    .await;
    v2.set_error_rate(0.5);
    let done = weir
        .wait_until("orders", Duration::from_secs(15), "the switch back", |s| {
            s.phase == Phase::Degraded
        })
        .await;
    drop(traffic);
    assert_eq!(done.canary_weight, 0.0, "{}", done.message);
    assert_eq!(done.stable_version, "v1");
    assert_eq!(served(weir.addr(), HOST, &[], 20).await, (20, 0));
    weir.shutdown().await;
}

/// `weir undo` inside `scaleDownDelay` switches back instantly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_within_the_scale_down_delay_switches_back() {
    let (v1, v2) = backends();
    let weir = Weir::start(&orders(&v1, &v2, "        scaleDownDelay: 1m", "")).await;
    weir.wait_until("orders", Duration::from_secs(10), "the switch", |s| {
        s.phase == Phase::Healthy && s.canary_weight == 100.0
    })
    .await;
    assert_eq!(served(weir.addr(), HOST, &[], 10).await, (0, 10));
    let reply = admin::command(weir.admin(), "orders", "undo").await;
    let back = weir
        .wait_until("orders", Duration::from_secs(5), "the switch back", |s| {
            s.canary_weight == 0.0
        })
        .await;
    assert_eq!(back.stable_version, "v1", "{reply}");
    assert_eq!(served(weir.addr(), HOST, &[], 20).await, (20, 0));
    assert_eq!(last_outcome(&weir), RevisionOutcome::Undone);
    weir.shutdown().await;
}
