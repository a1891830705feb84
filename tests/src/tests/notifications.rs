//! Notifications (issue #9): rollout events posted to local stand-ins for Slack, Teams, Discord
//! and a generic JSON endpoint. Body shapes, `on` filtering, `urlFile` and headers, retries on
//! 500/429 (counted), no retry on 400, a dead or hanging endpoint that never delays the rollout,
//! a full queue that drops its oldest message, and a reload that adds a notifier without losing
//! the queued messages of one that stays.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use weir_control::demo::backend::Backend;
use weir_control::engine::rollout::Phase;

use crate::admin;
use crate::weir::{Weir, HEADER};
use crate::Refused;

/// How a stand-in answers one request.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Status(u16),
    /// 429 or 503 with `Retry-After` (seconds).
    RetryAfter(u16, &'static str),
    /// Never answers.
    Hang,
}

/// One request a stand-in received.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: http::HeaderMap,
    body: Value,
}

/// A local webhook endpoint: records every request (on arrival), answers from its script (then
/// 200), and, while held, answers nothing until released.
struct Hook {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    count: watch::Receiver<usize>,
    release: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Hook {
    async fn start(script: &[Answer]) -> Hook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a stand-in");
        let addr = listener.local_addr().expect("its address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0usize);
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let (release, released) = watch::channel(true);
        let state = (
            received.clone(),
            Arc::new(count_tx),
            script.clone(),
            released,
        );
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the accept task stops them all.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (received, count, script, released) = state.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request: http::Request<Incoming>| {
                        let (received, count, script, mut released) = (
                            received.clone(),
                            count.clone(),
                            script.clone(),
                            released.clone(),
                        );
                        async move {
                            let (parts, body) = request.into_parts();
                            let bytes = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            received.lock().unwrap().push(Received {
                                path: parts.uri.path().to_string(),
                                headers: parts.headers,
                                body,
                            });
                            count.send_modify(|n| *n += 1);
                            let answer = script.lock().unwrap().pop_front();
                            let _ = released.wait_for(|r| *r).await;
                            let (status, retry_after) = match answer {
                                None => (200, None),
                                Some(Answer::Status(status)) => (status, None),
                                Some(Answer::RetryAfter(status, after)) => (status, Some(after)),
                                Some(Answer::Hang) => std::future::pending().await,
                            };
                            let mut response = http::Response::builder().status(status);
                            if let Some(after) = retry_after {
                                response = response.header("retry-after", after);
                            }
                            Ok::<_, Infallible>(
                                response
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .expect("a response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Hook {
            addr,
            received,
            count,
            release,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The `field` of every body received, in order.
    fn bodies_field(&self, pointer: &str) -> Vec<String> {
        self.received()
            .iter()
            .map(|r| match r.body.pointer(pointer) {
                Some(Value::String(s)) => s.clone(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// Waits until `n` requests arrived; panics after `timeout`.
    async fn wait_for(&self, n: usize, timeout: Duration) {
        let mut count = self.count.clone();
        let waited = tokio::time::timeout(timeout, count.wait_for(|c| *c >= n)).await;
        assert!(
            waited.is_ok(),
            "after {timeout:?}: {} of {n} requests arrived: {:?}",
            self.received().len(),
            self.bodies_field("")
        );
    }

    fn hold(&self) {
        self.release.send_replace(false);
    }

    fn unhold(&self) {
        self.release.send_replace(true);
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A service `checkout` rolling out v2 over two weights and a short pause, told to `notifiers`.
fn config(
    notifications: &str,
    notifiers: &str,
    v1: &Backend,
    v2: Option<&Backend>,
    steps: &str,
) -> String {
    let canary = v2.map_or(String::new(), |v2| {
        format!(
            "    canary: {{version: v2, upstreams: [\"{}\"]}}\n",
            v2.addr()
        )
    });
    format!(
        r#"{HEADER}notifications:
{notifications}services:
  - name: checkout
    stable: {{version: v1, upstreams: ["{}"]}}
{canary}    notifications: [{notifiers}]
    strategy:
      canary:
        steps:
{steps}"#,
        v1.addr()
    )
}

const QUICK_STEPS: &str =
    "          - setWeight: 20\n          - setWeight: 50\n          - pause: {duration: 100ms}\n";

async fn metric(weir: &Weir, notifier: &str, result: &str) -> f64 {
    admin::metric(
        weir.admin(),
        &format!("weir_notifications_total{{notifier=\"{notifier}\",result=\"{result}\"}}"),
    )
    .await
    .unwrap_or(-1.0)
}

async fn promoted(weir: &Weir) {
    let done = weir
        .wait_until("checkout", Duration::from_secs(10), "promotion", |s| {
            s.phase == Phase::Healthy && s.stable_version == "v2"
        })
        .await;
    assert_eq!(done.stable_version, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_gets_its_body_and_only_the_events_it_asked_for() {
    let started = Instant::now();
    let (slack, teams, discord, generic) = (
        Hook::start(&[]).await,
        Hook::start(&[]).await,
        Hook::start(&[]).await,
        Hook::start(&[]).await,
    );
    let v1 = Backend::bind("v1").expect("bind");
    let v2 = Backend::bind("v2").expect("bind");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let url_file = dir.path().join("generic-url");
    std::fs::write(&url_file, format!("{}\n", generic.url("/hooks/old"))).expect("write");
    let notifications = format!(
        r##"  - {{name: slack, kind: slack, url: "{}", channel: "#deploys", username: weir}}
  - {{name: teams, kind: msteams, url: "{}", on: [Started, Promoted]}}
  - {{name: discord, kind: discord, url: "{}", on: [StepCompleted]}}
  - name: pipeline
    kind: generic
    urlFile: {}
    headers: {{Authorization: "Bearer s3cret", X-Env: prod}}
    on: [Started, StepCompleted, Paused, Resumed, AnalysisFailed, Aborted, RolledBack, Promoted]
"##,
        slack.url("/services/T0/B0/webhook-secret"),
        teams.url("/webhookb2/abc"),
        discord.url("/api/webhooks/1/tok"),
        url_file.display()
    );
    let all = "slack, teams, discord, pipeline";
    // The canary is in the file from the start: the events of the first rollout, decided before
    // the driver runs, are notified too.
    let yaml = config(&notifications, all, &v1, Some(&v2), QUICK_STEPS);
    // The URL file is read at every delivery: rotate it before anything is sent.
    std::fs::write(&url_file, format!("{}\n", generic.url("/hooks/rotated"))).expect("write");
    let weir = Weir::start(&yaml).await;
    promoted(&weir).await;
    let rollout_time = started.elapsed();

    slack.wait_for(1, Duration::from_secs(5)).await;
    teams.wait_for(2, Duration::from_secs(5)).await;
    discord.wait_for(2, Duration::from_secs(5)).await;
    generic.wait_for(4, Duration::from_secs(5)).await;

    // Slack: default `on` (Aborted, Promoted): the promotion only.
    let got = slack.received();
    assert_eq!(got.len(), 1, "{:?}", slack.bodies_field(""));
    let body = &got[0].body;
    assert_eq!(got[0].path, "/services/T0/B0/webhook-secret");
    assert_eq!(got[0].headers["content-type"], "application/json");
    assert_eq!(body["text"], "checkout: v2 promoted to stable");
    assert_eq!(body["channel"], "#deploys");
    assert_eq!(body["username"], "weir");
    let attachment = &body["attachments"][0];
    assert_eq!(attachment["color"], "#2eb886");
    assert!(
        attachment["text"]
            .as_str()
            .unwrap()
            .contains("Promotion completed: checkout v2 is stable"),
        "{attachment}"
    );
    let fields: Vec<(String, String)> = attachment["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["title"].as_str().unwrap().into(),
                f["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    for want in [
        ("Service", "checkout"),
        ("Stable", "v2"),
        ("Canary", "v2"),
        ("Revision", "1"),
    ] {
        assert!(
            fields.contains(&(want.0.into(), want.1.into())),
            "{want:?} in {fields:?}"
        );
    }

    // Teams: a MessageCard per Started and Promoted.
    assert_eq!(
        teams.bodies_field("/title"),
        [
            "checkout: rollout of v2 started (stable v1)",
            "checkout: v2 promoted to stable"
        ]
    );
    let card = &teams.received()[0].body;
    assert_eq!(card["@type"], "MessageCard");
    assert!(card["sections"][0]["text"]
        .as_str()
        .unwrap()
        .contains("rolling out checkout v2"));
    assert!(card["sections"][0]["facts"].as_array().unwrap().len() >= 6);

    // Discord: the two weights, as embeds with their numbers.
    assert_eq!(
        discord.bodies_field("/embeds/0/description"),
        [
            "Advance checkout canary weight 20 (step 1/3)",
            "Advance checkout canary weight 50 (step 2/3)"
        ]
    );
    let embed = &discord.received()[1].body["embeds"][0];
    assert_eq!(
        discord.received()[1].body["content"],
        "checkout: v2 completed step 2 (canary weight 50%)"
    );
    assert!(
        embed["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{embed}"
    );

    // Generic: every event asked for, in order, with every field and its headers, at the URL
    // the file held when it was sent.
    assert_eq!(
        generic.bodies_field("/event"),
        ["Started", "StepCompleted", "StepCompleted", "Promoted"]
    );
    let first = &generic.received()[0];
    assert_eq!(first.path, "/hooks/rotated");
    assert_eq!(first.headers["authorization"], "Bearer s3cret");
    assert_eq!(first.headers["x-env"], "prod");
    let body = &generic.received()[1].body;
    assert_eq!(body["notifier"], "pipeline");
    assert_eq!(body["kind"], "Advance");
    assert_eq!(body["service"], "checkout");
    assert_eq!(body["stableVersion"], "v1");
    assert_eq!(body["canaryVersion"], "v2");
    assert_eq!(body["step"], 0);
    assert_eq!(body["weight"], 20.0);
    assert_eq!(body["phase"], "Progressing");
    assert_eq!(body["revision"], 1);
    assert!(
        body["atMs"].as_u64().is_some() && body["at"].is_string(),
        "{body}"
    );

    // An abort: Slack and the pipeline hear it; the pipeline gets what it needs to revert.
    let v3 = Backend::bind("v3").expect("bind");
    let yaml = config(
        &notifications,
        all,
        &v1,
        Some(&v3),
        "          - setWeight: 10\n          - pause: {}\n",
    )
    .replace("version: v2", "version: v3");
    weir.write_atomic(&yaml);
    weir.wait_until("checkout", Duration::from_secs(10), "the pause", |s| {
        s.canary_version.as_deref() == Some("v3") && s.phase == Phase::Paused
    })
    .await;
    admin::command(weir.admin(), "checkout", "abort").await;
    slack.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(
        slack.bodies_field("/text")[1],
        "checkout: v3 aborted, v1 serves 100%"
    );
    assert_eq!(slack.bodies_field("/attachments/0/color")[1], "#d50200");
    let is_abort = |r: &Received| r.body["event"] == "Aborted";
    crate::assert_eventually!(
        timeout = Duration::from_secs(5),
        generic.received().iter().any(is_abort),
        "the pipeline never heard of the abort"
    );
    let aborted = generic
        .received()
        .into_iter()
        .find(is_abort)
        .expect("an Aborted message")
        .body;
    let config_file = std::path::absolute(weir.config_path()).unwrap();
    assert_eq!(
        aborted["revert"]["configFile"],
        config_file.display().to_string()
    );
    assert_eq!(aborted["revert"]["abortedVersion"], "v3");
    assert_eq!(aborted["revert"]["stableVersion"], "v1");
    assert_eq!(aborted["revert"]["revision"], 2);
    assert!(
        aborted["message"]
            .as_str()
            .unwrap()
            .contains("aborted by operator"),
        "{aborted}"
    );
    assert!(
        generic
            .bodies_field("/event")
            .contains(&"Paused".to_string()),
        "{:?}",
        generic.bodies_field("/event")
    );
    crate::assert_eventually!(
        timeout = Duration::from_secs(5),
        metric(&weir, "pipeline", "delivered").await == generic.received().len() as f64,
        "pipeline deliveries not all counted"
    );
    assert_eq!(metric(&weir, "slack", "failed").await, 0.0);
    eprintln!(
        "4 notifier kinds: rollout promoted in {rollout_time:?}; slack {} (default on), teams {}, discord {}, generic {} messages, each with its body shape; abort carried revert info for {}",
        slack.received().len(),
        teams.received().len(),
        discord.received().len(),
        generic.received().len(),
        config_file.display()
    );
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_5xx_and_429_but_not_on_400_and_a_missing_url_file_fails() {
    let flaky = Hook::start(&[
        Answer::Status(500),
        Answer::RetryAfter(429, "0"),
        Answer::Status(200),
    ])
    .await;
    let refusing = Hook::start(&[Answer::Status(400)]).await;
    let v1 = Backend::bind("v1").expect("bind");
    let v2 = Backend::bind("v2").expect("bind");
    let notifications = format!(
        r#"  - {{name: flaky, kind: generic, url: "{}", retries: 3, retryBackoff: 50ms}}
  - {{name: refusing, kind: slack, url: "{}", retries: 3, retryBackoff: 50ms}}
  - {{name: nofile, kind: discord, urlFile: does-not-exist, retries: 3, retryBackoff: 50ms}}
"#,
        flaky.url("/"),
        refusing.url("/"),
    );
    let yaml = config(
        &notifications,
        "flaky, refusing, nofile",
        &v1,
        Some(&v2),
        QUICK_STEPS,
    );
    let started = Instant::now();
    let weir = Weir::start(&yaml).await;
    promoted(&weir).await;
    flaky.wait_for(3, Duration::from_secs(5)).await;
    refusing.wait_for(1, Duration::from_secs(5)).await;
    crate::assert_eventually!(
        timeout = Duration::from_secs(5),
        metric(&weir, "flaky", "delivered").await == 1.0
            && metric(&weir, "refusing", "failed").await == 1.0
            && metric(&weir, "nofile", "failed").await == 1.0,
        "deliveries not counted"
    );
    let delivered_in = started.elapsed();
    assert_eq!(flaky.received().len(), 3, "two failures then a success");
    assert!(flaky
        .received()
        .iter()
        .all(|r| r.body == flaky.received()[0].body));
    assert_eq!(metric(&weir, "flaky", "retried").await, 2.0);
    assert_eq!(metric(&weir, "flaky", "failed").await, 0.0);
    assert_eq!(refusing.received().len(), 1, "a 400 is not retried");
    assert_eq!(metric(&weir, "refusing", "retried").await, 0.0);
    assert_eq!(metric(&weir, "nofile", "retried").await, 0.0);
    assert_eq!(metric(&weir, "nofile", "delivered").await, 0.0);
    assert_eq!(metric(&weir, "flaky", "dropped").await, 0.0);
    eprintln!(
        "500, 429 (Retry-After: 0), 200: delivered on attempt 3 (retried 2); 400: 1 attempt, failed; missing urlFile: failed without retry; all counted within {delivered_in:?}"
    );
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_hanging_endpoint_never_delays_the_rollout() {
    let hanging = Hook::start(&[Answer::Hang; 8]).await;
    let refused = Refused::new();
    let v1 = Backend::bind("v1").expect("bind");
    let v2 = Backend::bind("v2").expect("bind");
    let all_events = "[Started, StepCompleted, Promoted]";
    let notifications = format!(
        r#"  - {{name: hanging, kind: generic, url: "{}", on: {all_events}, timeout: 30s, retries: 0, queueSize: 2}}
  - {{name: dead, kind: slack, url: "http://{}/x", on: {all_events}, retries: 2, retryBackoff: 20ms}}
"#,
        hanging.url("/"),
        refused.addr(),
    );
    let steps = "          - setWeight: 10\n          - setWeight: 20\n          - setWeight: 40\n          - setWeight: 80\n";
    let yaml = config(&notifications, "hanging, dead", &v1, Some(&v2), steps);
    let started = Instant::now();
    let weir = Weir::start(&yaml).await;
    promoted(&weir).await;
    let rollout_time = started.elapsed();
    // Started, four weights, Promoted: six messages each. The hanging endpoint holds one (30 s
    // timeout) and its queue of two keeps the newest: three or four are dropped (depending on
    // whether its worker took the first message before the others came).
    hanging.wait_for(1, Duration::from_secs(5)).await;
    crate::assert_eventually!(
        timeout = Duration::from_secs(5),
        [3.0, 4.0].contains(&metric(&weir, "hanging", "dropped").await)
            && metric(&weir, "dead", "failed").await == 6.0,
        "hanging dropped {} dead failed {}",
        metric(&weir, "hanging", "dropped").await,
        metric(&weir, "dead", "failed").await
    );
    assert!(
        rollout_time < Duration::from_secs(5),
        "the rollout waited on its notifiers: {rollout_time:?}"
    );
    assert_eq!(
        hanging.received().len(),
        1,
        "one attempt in flight, the rest queued"
    );
    assert_eq!(metric(&weir, "hanging", "delivered").await, 0.0);
    assert_eq!(metric(&weir, "dead", "retried").await, 12.0);
    eprintln!(
        "4 weights promoted in {rollout_time:?} while one endpoint hung (30 s timeout, {} of 6 messages dropped from a queue of 2) and one refused connections (6 failed after 12 retries)",
        metric(&weir, "hanging", "dropped").await
    );
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_notifier_and_keeps_the_queue_of_one_that_stays() {
    let kept = Hook::start(&[]).await;
    let added = Hook::start(&[]).await;
    let v1 = Backend::bind("v1").expect("bind");
    let v2 = Backend::bind("v2").expect("bind");
    let kept_notifier = format!(
        "  - {{name: kept, kind: generic, url: \"{}\", on: [Started, StepCompleted, Paused, Promoted]}}\n",
        kept.url("/")
    );
    // The kept endpoint holds its answers: messages wait in its queue.
    kept.hold();
    let paused_steps = "          - setWeight: 10\n          - setWeight: 30\n          - pause: {}\n          - setWeight: 60\n";
    let weir = Weir::start(&config(
        &kept_notifier,
        "kept",
        &v1,
        Some(&v2),
        paused_steps,
    ))
    .await;
    weir.wait_until("checkout", Duration::from_secs(10), "the pause", |s| {
        s.phase == Phase::Paused
    })
    .await;
    kept.wait_for(1, Duration::from_secs(5)).await;

    let both = format!(
        "{kept_notifier}  - {{name: added, kind: generic, url: \"{}\", on: [StepCompleted, Promoted]}}\n",
        added.url("/")
    );
    weir.write_atomic(&config(&both, "kept, added", &v1, Some(&v2), paused_steps));
    crate::assert_eventually!(
        timeout = Duration::from_secs(5),
        metric(&weir, "added", "delivered").await == 0.0,
        "the added notifier's series never appeared"
    );
    admin::command(weir.admin(), "checkout", "promote").await;
    promoted(&weir).await;
    kept.unhold();
    // Started, two weights, Paused; after the reload the operator's promotion of the pause, the
    // last weight and Promoted.
    kept.wait_for(7, Duration::from_secs(5)).await;
    added.wait_for(3, Duration::from_secs(5)).await;
    assert_eq!(
        kept.bodies_field("/event"),
        [
            "Started",
            "StepCompleted",
            "StepCompleted",
            "Paused",
            "StepCompleted",
            "StepCompleted",
            "Promoted"
        ]
    );
    assert_eq!(
        added.bodies_field("/kind"),
        ["Promoted step", "Advance", "Promoted"]
    );
    assert_eq!(
        added.bodies_field("/message")[1],
        "Advance checkout canary weight 60 (step 4/4)"
    );
    crate::assert_eventually!(
        timeout = Duration::from_secs(5),
        metric(&weir, "kept", "delivered").await == 7.0,
        "kept delivered {}",
        metric(&weir, "kept", "delivered").await
    );
    assert_eq!(metric(&weir, "kept", "dropped").await, 0.0);
    eprintln!("reload with 4 messages queued behind a held endpoint: all 7 delivered in order once it answered, the added notifier got the 3 events after the reload");
    weir.shutdown().await;
}

#[test]
fn config_problems_name_their_field() {
    let yaml = "listeners:\n  - {name: public, address: \"127.0.0.1:0\"}\nnotifications:\n  - {name: team, kind: slack, url: \"https://hooks.example/x\", on: [Promoted, Deployed]}\nservices:\n  - name: checkout\n    stable: {version: v1, upstreams: [\"127.0.0.1:9\"]}\n    notifications: [team, ops]\n";
    let problems = weir_config::parse(yaml, std::path::Path::new("/tmp"))
        .expect_err("invalid")
        .problems();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("notifications[0].on[1]: unknown event \"Deployed\"")),
        "{problems:?}"
    );
    let yaml = yaml.replace(", Deployed", "");
    let problems = weir_config::parse(&yaml, std::path::Path::new("/tmp"))
        .expect_err("invalid")
        .problems();
    assert_eq!(
        problems,
        ["services[0].notifications[1]: unknown notifier \"ops\": defined: team"]
    );
    eprintln!("config problems reported with their paths: {problems:?}");
}
