//! Rollouts end to end: weir in-process with its builtin analysis judging real traffic to demo
//! backends, and operators driving it through the admin API. Durations are short (intervals of
//! 200 ms–1 s) so every test takes a few seconds.

use std::net::SocketAddr;
use std::time::Duration;

use weir_control::api::v1::ServiceStatus;
use weir_control::demo::backend::Backend;
use weir_control::demo::traffic::Traffic;
use weir_control::engine::rollout::{Phase, RevisionOutcome};

use super::assert_share;
use crate::admin;
use crate::client::Http1;
use crate::weir::{fill, Weir, HEADER};

const HOST: &str = "shop.example.com";

/// Service `shop` (stable `v1`, canary `v2`) with this strategy (the YAML under `canary:`, indented
/// by 8 spaces) and these analysis templates (a top-level `analysisTemplates:` block, or "").
fn shop(v1: &Backend, v2: &Backend, strategy: &str, templates: &str) -> String {
    let template = format!(
        r#"{HEADER}services:
  - name: shop
    match: {{hosts: ["{HOST}"]}}
    stable: {{version: v1, upstreams: ["${{v1}}"]}}
    canary: {{version: v2, upstreams: ["${{v2}}"]}}
    strategy:
      canary:
{strategy}
{templates}"#
    );
    fill(&template, &[("v1", v1.addr()), ("v2", v2.addr())])
}

fn backends() -> (Backend, Backend) {
    (
        Backend::bind("v1").expect("bind v1"),
        Backend::bind("v2").expect("bind v2"),
    )
}

/// Sends `n` requests one after the other on one connection; returns how many `v2` answered
/// (every answer must be a 200 from `v1` or `v2`).
async fn count_canary(addr: SocketAddr, n: usize) -> usize {
    let mut client = Http1::connect(addr).await;
    let mut canary = 0;
    for _ in 0..n {
        let reply = client.get(HOST, "/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        match reply.served_by() {
            "v2" => canary += 1,
            "v1" => {}
            other => panic!("answered by {other:?}"),
        }
    }
    canary
}

fn event_kinds(status: &ServiceStatus) -> Vec<(String, f64)> {
    status
        .details
        .as_ref()
        .expect("details")
        .events
        .iter()
        .map(|e| (e.kind.clone(), e.weight))
        .collect()
}

fn last_outcome(status: &ServiceStatus) -> RevisionOutcome {
    status
        .details
        .as_ref()
        .expect("details")
        .history
        .last()
        .expect("a revision in the history")
        .outcome
}

const SUCCESS_RATE: &str = r#"analysisTemplates:
  - name: success-rate
    metrics:
      - name: success-rate
        interval: 300ms
        count: 3
        successCondition: result >= 0.95
        provider: {builtin: {metric: success-rate, window: 2s, minRequests: 5}}
"#;

/// setWeight 20 → pause 1s → analysis (3 measurements 300 ms apart) → setWeight 60 → promoted:
/// Healthy at 100% with the canary as stable, and the canary serves everything afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_walks_every_step_and_is_promoted() {
    let (v1, v2) = backends();
    let strategy = r#"        steps:
          - setWeight: 20
          - pause: {duration: 1s}
          - analysis: {templates: [{templateName: success-rate}]}
          - setWeight: 60"#;
    let weir = Weir::start(&shop(&v1, &v2, strategy, SUCCESS_RATE)).await;
    let traffic = Traffic::spawn(weir.addr(), HOST, 200, 4);

    let at_20 = weir
        .wait_until("shop", Duration::from_secs(5), "weight 20", |s| {
            s.canary_weight == 20.0
        })
        .await;
    assert_eq!(at_20.phase, Phase::Progressing);
    let done = weir
        .wait_until("shop", Duration::from_secs(15), "promotion", |s| {
            s.phase != Phase::Progressing
        })
        .await;
    assert_eq!(done.phase, Phase::Healthy, "{}", done.message);
    assert_eq!(done.canary_weight, 100.0);
    assert_eq!(done.stable_version, "v2");
    assert_eq!(done.revision, 1);
    assert_eq!(last_outcome(&done), RevisionOutcome::Promoted);

    // Every step left its event, in order, with the weight it set.
    let kinds = event_kinds(&done);
    let wanted = [
        ("Started", 0.0),
        ("Advance", 20.0),
        ("AnalysisPassed", 20.0),
        ("Advance", 60.0),
        ("Promoted", 100.0),
    ];
    let seen: Vec<(String, f64)> = kinds
        .into_iter()
        .filter(|(kind, _)| wanted.iter().any(|(w, _)| w == kind))
        .collect();
    let wanted: Vec<(String, f64)> = wanted.iter().map(|(k, w)| (k.to_string(), *w)).collect();
    assert_eq!(seen, wanted);

    // The inline analysis measured three times, every time successfully, on real traffic.
    let details = done.details.as_ref().expect("details");
    let run = details
        .analysis_runs
        .iter()
        .find(|r| {
            matches!(
                r.kind,
                weir_control::engine::rollout::run::RunKind::Inline { step: 2 }
            )
        })
        .expect("the analysis step's run");
    let metric = &run.metrics[0];
    assert_eq!((metric.count, metric.successful), (3, 3), "{metric:?}");
    assert!(
        metric
            .measurements
            .iter()
            .all(|m| m.message.contains("requests")),
        "{:?}",
        metric.measurements
    );

    let served = traffic.stop().await;
    assert_eq!(served.failures, 0);
    assert!(served.responses_from("v2") > 0);
    assert_eq!(
        count_canary(weir.addr(), 50).await,
        50,
        "v2 serves everything"
    );
    weir.shutdown().await;
}

const ERRORS: &str = r#"analysisTemplates:
  - name: errors
    metrics:
      - name: error-rate
        interval: 1s
        failureLimit: 0
        inconclusiveLimit: 100
        successCondition: result < 0.05
        provider: {builtin: {metric: error-rate, window: 5s, minRequests: 10}}
"#;

/// Checks that an abort message names the metric, the measured value, the condition, the window
/// and the number of requests: `error-rate failed 1 time(s) (failureLimit 0): 0.0714 >= 0.05 over
/// 4.9s (487 requests)`.
#[track_caller]
fn assert_explains_error_rate(message: &str) {
    assert!(
        message.contains("error-rate failed 1 time(s) (failureLimit 0): "),
        "{message}"
    );
    let (before, after) = message
        .split_once(" >= 0.05 over ")
        .unwrap_or_else(|| panic!("no condition and window in {message:?}"));
    let value: f64 = before
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no measured value in {message:?}"));
    assert!((0.05..=0.5).contains(&value), "{value} in {message:?}");
    let (window, after) = after
        .split_once(" (")
        .unwrap_or_else(|| panic!("no request count in {message:?}"));
    let seconds: f64 = window
        .strip_suffix('s')
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no window in {message:?}"));
    assert!(seconds > 0.0 && seconds <= 5.5, "{message}");
    let requests: u64 = after
        .split_once(" requests)")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in {message:?}"));
    assert!(requests >= 10, "{message}");
}

/// Background analysis every second with failureLimit 0: from the first 500 the canary serves to
/// weight 0 takes less than two analysis intervals, and both the status and the rollback event
/// say why, with the numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_within_two_analysis_intervals() {
    let (v1, v2) = backends();
    let strategy = r#"        steps:
          - setWeight: 50
          - pause: {duration: 1m}
        analysis:
          templates: [{templateName: errors}]
          startingStep: 0"#;
    let weir = Weir::start(&shop(&v1, &v2, strategy, ERRORS)).await;
    let traffic = Traffic::spawn(weir.addr(), HOST, 200, 4);

    // Healthy for a while first: the window holds good traffic when the errors start.
    weir.wait_until(
        "shop",
        Duration::from_secs(10),
        "two good measurements",
        |s| {
            s.details.as_ref().is_some_and(|d| {
                d.analysis_runs
                    .iter()
                    .any(|r| r.metrics.iter().any(|m| m.successful >= 2))
            })
        },
    )
    .await;
    let mut statuses = weir.running().driver().watch_status();
    statuses.borrow_and_update();
    v2.set_error_rate(0.5);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let rolled_back_at = loop {
        let weight = statuses
            .borrow_and_update()
            .service("shop")
            .map(|s| s.canary_weight);
        if weight == Some(0.0) {
            break tokio::time::Instant::now();
        }
        tokio::time::timeout_at(deadline, statuses.changed())
            .await
            .expect("rolled back within 10 s")
            .expect("the driver runs");
    };
    let first_error = traffic.snapshot().versions["v2"]
        .first_error_at
        .expect("the canary served a 500");
    let took = rolled_back_at.duration_since(first_error);
    let interval = Duration::from_secs(1);
    assert!(
        took < 2 * interval + Duration::from_millis(250),
        "rolled back {took:?} after the first 500 (analysis interval {interval:?})"
    );

    let status = weir.status("shop");
    assert_eq!(status.phase, Phase::Degraded, "{}", status.message);
    assert_eq!(status.stable_version, "v1");
    assert_explains_error_rate(&status.message);
    let details = status.details.as_ref().expect("details");
    let rollback = details
        .events
        .iter()
        .rev()
        .find(|e| e.kind == "Rollback")
        .expect("a Rollback event");
    assert!(rollback.message.starts_with("Rolling back shop: "));
    assert_explains_error_rate(&rollback.message);
    assert_eq!(rollback.weight, 0.0);
    assert_eq!(last_outcome(&status), RevisionOutcome::Aborted);

    drop(traffic);
    assert_eq!(
        count_canary(weir.addr(), 20).await,
        0,
        "stable serves everything"
    );
    eprintln!(
        "rolled back {took:?} after the first 500: {}",
        status.message
    );
    weir.shutdown().await;
}

/// Background analysis keeps judging while the rollout waits at an indefinite pause: a canary
/// that starts failing there is rolled back, not left serving until someone promotes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_analysis_rolls_back_during_an_indefinite_pause() {
    let (v1, v2) = backends();
    let strategy = r#"        steps:
          - setWeight: 50
          - pause: {}
        analysis:
          templates: [{templateName: errors}]
          startingStep: 0"#;
    let weir = Weir::start(&shop(&v1, &v2, strategy, ERRORS)).await;
    let traffic = Traffic::spawn(weir.addr(), HOST, 200, 4);
    weir.wait_until("shop", Duration::from_secs(5), "the pause", |s| {
        s.phase == Phase::Paused && s.canary_weight == 50.0
    })
    .await;
    v2.set_error_rate(0.5);
    let status = weir
        .wait_until("shop", Duration::from_secs(10), "a rollback", |s| {
            s.phase == Phase::Degraded
        })
        .await;
    assert_eq!(status.canary_weight, 0.0);
    assert_explains_error_rate(&status.message);
    drop(traffic);
    weir.shutdown().await;
}

/// `pause: {}` waits for promote; each promote leaves one pause, and the last one promotes.
#[tokio::test]
async fn an_indefinite_pause_waits_for_promote() {
    let (v1, v2) = backends();
    let strategy = r#"        steps:
          - setWeight: 30
          - pause: {}
          - setWeight: 70
          - pause: {}"#;
    let weir = Weir::start(&shop(&v1, &v2, strategy, "")).await;
    let admin = weir.admin();
    let paused = weir
        .wait_until("shop", Duration::from_secs(5), "the first pause", |s| {
            s.phase == Phase::Paused
        })
        .await;
    assert_eq!((paused.step_index, paused.canary_weight), (1, 30.0));
    let details = paused.details.as_ref().expect("details");
    assert_eq!(details.pause_reason.as_deref(), Some("Step"));
    assert!(
        paused.message.contains("until promoted"),
        "{}",
        paused.message
    );
    assert_share(
        count_canary(weir.addr(), 100).await,
        100,
        30.0,
        "paused at 30",
    );

    let answer = admin::command(admin, "shop", "promote").await;
    assert_eq!(answer["phase"], "Paused", "{answer}");
    assert_eq!(answer["stepIndex"], 3, "{answer}");
    assert_eq!(answer["canaryWeight"], 70.0, "{answer}");
    assert_share(
        count_canary(weir.addr(), 100).await,
        100,
        70.0,
        "paused at 70",
    );

    let answer = admin::command(admin, "shop", "promote").await;
    assert_eq!(answer["phase"], "Healthy", "{answer}");
    assert_eq!(answer["canaryWeight"], 100.0, "{answer}");
    assert_eq!(answer["stableVersion"], "v2", "{answer}");
    assert_eq!(count_canary(weir.addr(), 20).await, 20);
    weir.shutdown().await;
}

/// `promote?full=true` skips the remaining steps and the analysis; `undo` afterwards brings the
/// previous stable back at once.
#[tokio::test]
async fn promote_full_skips_everything_left_and_undo_brings_the_old_stable_back() {
    let (v1, v2) = backends();
    let strategy = r#"        steps:
          - setWeight: 10
          - pause: {}
          - analysis: {templates: [{templateName: slow}]}
          - setWeight: 50
          - pause: {}"#;
    let templates = r#"analysisTemplates:
  - name: slow
    metrics:
      - name: success-rate
        interval: 10s
        count: 100
        successCondition: result >= 0.95
        provider: {builtin: {metric: success-rate, window: 10s, minRequests: 1}}
"#;
    let weir = Weir::start(&shop(&v1, &v2, strategy, templates)).await;
    let admin = weir.admin();
    weir.wait_until("shop", Duration::from_secs(5), "the pause", |s| {
        s.phase == Phase::Paused
    })
    .await;

    let answer = admin::command(admin, "shop", "promote?full=true").await;
    assert_eq!(answer["phase"], "Healthy", "{answer}");
    assert_eq!(answer["canaryWeight"], 100.0, "{answer}");
    assert_eq!(answer["stableVersion"], "v2", "{answer}");
    let status = weir.status("shop");
    let details = status.details.as_ref().expect("details");
    assert!(
        details.analysis_runs.is_empty(),
        "no analysis ran: {:?}",
        details.analysis_runs
    );
    let kinds: Vec<String> = event_kinds(&status).into_iter().map(|(k, _)| k).collect();
    assert!(
        kinds.ends_with(&["PromoteFull".to_string(), "Promoted".to_string()]),
        "{kinds:?}"
    );
    assert_eq!(last_outcome(&status), RevisionOutcome::Promoted);
    assert_eq!(count_canary(weir.addr(), 20).await, 20);

    let answer = admin::command(admin, "shop", "undo").await;
    assert_eq!(answer["phase"], "Degraded", "{answer}");
    assert_eq!(answer["canaryWeight"], 0.0, "{answer}");
    assert_eq!(answer["stableVersion"], "v1", "{answer}");
    assert_eq!(last_outcome(&weir.status("shop")), RevisionOutcome::Undone);
    assert_eq!(
        count_canary(weir.addr(), 20).await,
        0,
        "v1 serves everything"
    );
    weir.shutdown().await;
}

/// `abort` sends everything back to stable (Degraded); `retry` starts the same revision again from
/// the first step, and it is promoted.
#[tokio::test]
async fn abort_then_retry_starts_over_and_promotes() {
    let (v1, v2) = backends();
    let strategy = r#"        steps:
          - setWeight: 25
          - pause: {duration: 1s}
          - setWeight: 50
          - pause: {duration: 300ms}"#;
    let weir = Weir::start(&shop(&v1, &v2, strategy, "")).await;
    let admin = weir.admin();
    weir.wait_until("shop", Duration::from_secs(5), "weight 25", |s| {
        s.canary_weight == 25.0
    })
    .await;

    let answer = admin::command(admin, "shop", "abort").await;
    assert_eq!(answer["phase"], "Degraded", "{answer}");
    assert_eq!(answer["canaryWeight"], 0.0, "{answer}");
    let message = answer["message"].as_str().expect("a message");
    assert!(message.contains("aborted by operator"), "{message}");
    assert_eq!(last_outcome(&weir.status("shop")), RevisionOutcome::Aborted);
    assert_eq!(count_canary(weir.addr(), 20).await, 0);

    // An aborted rollout never restarts by itself; retry restarts it from the first step.
    let answer = admin::command(admin, "shop", "retry").await;
    assert_eq!(answer["phase"], "Progressing", "{answer}");
    assert_eq!(answer["revision"], 1, "{answer}");
    assert_eq!(answer["stepIndex"], 1, "setWeight 25 ran again: {answer}");
    assert_eq!(answer["canaryWeight"], 25.0, "{answer}");
    let done = weir
        .wait_until("shop", Duration::from_secs(10), "promotion", |s| {
            s.phase != Phase::Progressing
        })
        .await;
    assert_eq!(done.phase, Phase::Healthy, "{}", done.message);
    assert_eq!((done.revision, done.canary_weight), (1, 100.0));
    assert_eq!(last_outcome(&done), RevisionOutcome::Promoted);
    let kinds: Vec<(String, f64)> = event_kinds(&done);
    let after_retry: Vec<&(String, f64)> = kinds
        .iter()
        .skip_while(|(k, _)| k != "Retry")
        .filter(|(k, _)| k == "Advance")
        .collect();
    assert_eq!(
        after_retry,
        [
            &("Advance".to_string(), 25.0),
            &("Advance".to_string(), 50.0)
        ],
        "{kinds:?}"
    );
    weir.shutdown().await;
}

/// `pause` holds a timed step past its end; `resume` continues. Commands that do not apply are
/// refused with 409, unknown services are 404.
#[tokio::test]
async fn pause_holds_the_step_and_resume_continues() {
    let (v1, v2) = backends();
    let strategy = r#"        steps:
          - setWeight: 20
          - pause: {duration: 500ms}
          - setWeight: 40"#;
    let weir = Weir::start(&shop(&v1, &v2, strategy, "")).await;
    let admin = weir.admin();
    weir.wait_until("shop", Duration::from_secs(5), "weight 20", |s| {
        s.canary_weight == 20.0
    })
    .await;

    let answer = admin::command(admin, "shop", "pause").await;
    assert_eq!(answer["phase"], "Paused", "{answer}");
    assert_eq!(answer["pauseReason"], "Operator", "{answer}");
    let refused = admin::post(admin, "/api/v1/services/shop/retry", None).await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    let unknown = admin::post(admin, "/api/v1/services/nope/promote", None).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());

    // Well past the step's 500 ms: the pause holds (nothing to wait for but time).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let held = weir.status("shop");
    assert_eq!(
        (held.phase, held.step_index, held.canary_weight),
        (Phase::Paused, 1, 20.0),
        "{}",
        held.message
    );

    let answer = admin::command(admin, "shop", "resume").await;
    assert_eq!(answer["phase"], "Progressing", "{answer}");
    let done = weir
        .wait_until("shop", Duration::from_secs(5), "promotion", |s| {
            s.phase == Phase::Healthy
        })
        .await;
    assert_eq!(done.canary_weight, 100.0);
    weir.shutdown().await;
}

/// Too few requests for `minRequests` is inconclusive: the rollout pauses (never Degraded), keeps
/// its weight, and says why.
#[tokio::test]
async fn too_little_traffic_pauses_the_rollout_as_inconclusive() {
    let (v1, v2) = backends();
    let strategy = r#"        steps:
          - setWeight: 10
          - pause: {duration: 1s}
          - analysis: {templates: [{templateName: busy}]}
          - setWeight: 50"#;
    let templates = r#"analysisTemplates:
  - name: busy
    metrics:
      - name: success-rate
        interval: 200ms
        count: 3
        successCondition: result >= 0.95
        provider: {builtin: {metric: success-rate, window: 5s, minRequests: 1000}}
"#;
    let weir = Weir::start(&shop(&v1, &v2, strategy, templates)).await;
    let traffic = Traffic::spawn(weir.addr(), HOST, 20, 1);
    let paused = weir
        .wait_until("shop", Duration::from_secs(10), "a pause", |s| {
            s.phase != Phase::Progressing
        })
        .await;
    assert_eq!(paused.phase, Phase::Paused, "{}", paused.message);
    assert_eq!(paused.canary_weight, 10.0, "the weight is kept");
    let details = paused.details.as_ref().expect("details");
    assert_eq!(details.pause_reason.as_deref(), Some("Inconclusive"));
    assert!(
        paused.message.contains("fewer than minRequests 1000"),
        "{}",
        paused.message
    );
    let served = traffic.stop().await;
    assert!(served.responses() > 0);
    assert_eq!(
        weir.status("shop").phase,
        Phase::Paused,
        "still paused, not Degraded"
    );
    weir.shutdown().await;
}
