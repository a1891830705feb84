//! Unit tests: the event mapping, the bodies and their limits, the queue, `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use weir_config::{Notifier, NotifierKind, NotifierTarget, NotifyOn};

use super::deliver::retry_after;
use super::message::{body, title, trigger, truncate, Item};
use super::Queue;
use crate::engine::rollout::{Event, Phase};

fn event(kind: &str, phase: Phase, message: &str) -> Event {
    Event {
        at_ms: 1_764_512_345_678,
        service: "checkout".into(),
        revision: 3,
        kind: kind.into(),
        message: message.into(),
        weight: 20.0,
        phase,
        stable_version: "v1".into(),
        canary_version: Some("v2".into()),
        step: 1,
    }
}

fn notifier(kind: NotifierKind) -> Notifier {
    Notifier {
        name: "team".into(),
        kind,
        target: NotifierTarget::Url("http://127.0.0.1:9/".into()),
        on: NotifyOn::ALL.to_vec(),
        headers: Vec::new(),
        channel: None,
        username: None,
        timeout: Notifier::DEFAULT_TIMEOUT,
        retries: 0,
        retry_backoff: Duration::from_millis(1),
        queue_size: 10,
    }
}

fn item(event: Event) -> Item {
    let on = trigger(&event).expect("a notified event");
    Item {
        event: Arc::new(event),
        on,
        config_file: std::path::Path::new("/etc/weir/weir.yaml").into(),
    }
}

#[test]
fn events_map_to_their_on_value() {
    let cases = [
        ("Started", Phase::Progressing, Some(NotifyOn::Started)),
        ("Retry", Phase::Progressing, Some(NotifyOn::Started)),
        ("Advance", Phase::Progressing, Some(NotifyOn::StepCompleted)),
        (
            "AnalysisPassed",
            Phase::Progressing,
            Some(NotifyOn::StepCompleted),
        ),
        (
            "Promoted step",
            Phase::Progressing,
            Some(NotifyOn::StepCompleted),
        ),
        (
            "Switched",
            Phase::Progressing,
            Some(NotifyOn::StepCompleted),
        ),
        ("Paused", Phase::Paused, Some(NotifyOn::Paused)),
        ("Resumed", Phase::Progressing, Some(NotifyOn::Resumed)),
        ("Halt", Phase::Progressing, Some(NotifyOn::AnalysisFailed)),
        (
            "Inconclusive",
            Phase::Progressing,
            Some(NotifyOn::AnalysisInconclusive),
        ),
        (
            "MeasurementError",
            Phase::Progressing,
            Some(NotifyOn::MeasurementError),
        ),
        ("Rollback", Phase::Degraded, Some(NotifyOn::Aborted)),
        ("Rollback", Phase::Progressing, Some(NotifyOn::RolledBack)),
        ("Undo", Phase::Healthy, Some(NotifyOn::RolledBack)),
        ("Superseded", Phase::Progressing, Some(NotifyOn::Superseded)),
        ("Promoted", Phase::Healthy, Some(NotifyOn::Promoted)),
        ("HeaderRoute", Phase::Progressing, None),
        ("StateNotSaved", Phase::Progressing, None),
    ];
    for (kind, phase, want) in cases {
        assert_eq!(
            trigger(&event(kind, phase, "x")),
            want,
            "{kind} in {phase:?}"
        );
    }
}

#[test]
fn every_kind_carries_the_numbers() {
    let line = "Rolling back checkout: error-rate 0.31 > 0.05 over 30s (412 requests)";
    let aborted = item(event("Rollback", Phase::Degraded, line));
    assert_eq!(title(&aborted), "checkout: v2 aborted, v1 serves 100%");

    let slack = body(&notifier(NotifierKind::Slack), &aborted);
    assert_eq!(slack["text"], "checkout: v2 aborted, v1 serves 100%");
    assert_eq!(slack["attachments"][0]["color"], "#d50200");
    // Slack renders `&gt;` as `>`.
    assert_eq!(slack["attachments"][0]["text"], line.replace('>', "&gt;"));
    let fields = slack["attachments"][0]["fields"].as_array().unwrap();
    let field = |name: &str| {
        fields
            .iter()
            .find(|f| f["title"] == name)
            .map(|f| f["value"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(field("Stable"), "v1");
    assert_eq!(field("Canary"), "v2");
    assert_eq!(field("Step"), "2");
    assert_eq!(field("Weight"), "20%");
    assert_eq!(field("Revision"), "3");

    let teams = body(&notifier(NotifierKind::MsTeams), &aborted);
    assert_eq!(teams["@type"], "MessageCard");
    assert_eq!(teams["themeColor"], "d50200");
    assert_eq!(teams["sections"][0]["text"], line);
    assert_eq!(teams["sections"][0]["facts"][0]["name"], "Service");

    let discord = body(&notifier(NotifierKind::Discord), &aborted);
    assert_eq!(discord["embeds"][0]["description"], line);
    assert_eq!(discord["embeds"][0]["color"], 0xd5_02_00);
    assert_eq!(
        discord["embeds"][0]["timestamp"],
        "2025-11-30T14:19:05.678Z"
    );

    let generic = body(&notifier(NotifierKind::Generic), &aborted);
    assert_eq!(generic["event"], "Aborted");
    assert_eq!(generic["kind"], "Rollback");
    assert_eq!(generic["message"], line);
    assert_eq!(generic["revert"]["configFile"], "/etc/weir/weir.yaml");
    assert_eq!(generic["revert"]["abortedVersion"], "v2");
    assert_eq!(generic["revert"]["stableVersion"], "v1");
    assert_eq!(generic["revert"]["revision"], 3);
    let promoted = body(
        &notifier(NotifierKind::Generic),
        &item(event("Promoted", Phase::Healthy, "done")),
    );
    assert!(promoted.get("revert").is_none(), "{promoted}");
}

#[test]
fn slack_text_cannot_mention_or_link() {
    let sneaky = item(event(
        "Halt",
        Phase::Progressing,
        "value <!channel> & <http://x|y>",
    ));
    let slack = body(&notifier(NotifierKind::Slack), &sneaky);
    assert_eq!(
        slack["attachments"][0]["text"],
        "value &lt;!channel&gt; &amp; &lt;http://x|y&gt;"
    );
    let discord = body(&notifier(NotifierKind::Discord), &sneaky);
    assert_eq!(discord["allowed_mentions"]["parse"], serde_json::json!([]));
}

#[test]
fn long_messages_stay_within_each_service_s_limits() {
    let long = "é".repeat(50_000);
    let big = item(event("Halt", Phase::Progressing, &long));
    let chars = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
    let slack = body(&notifier(NotifierKind::Slack), &big);
    assert_eq!(chars(&slack["attachments"][0]["text"]), 3_000);
    assert!(slack["attachments"][0]["text"]
        .as_str()
        .unwrap()
        .ends_with('…'));
    let discord = body(&notifier(NotifierKind::Discord), &big);
    let embed = &discord["embeds"][0];
    assert!(chars(&discord["content"]) <= 2_000);
    assert!(chars(&embed["title"]) <= 256);
    assert!(chars(&embed["description"]) <= 4_096);
    let embed_total: usize = chars(&embed["title"])
        + chars(&embed["description"])
        + embed["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| chars(&f["name"]) + chars(&f["value"]))
            .sum::<usize>()
        + chars(&embed["footer"]["text"]);
    assert!(embed_total <= 6_000, "{embed_total}");
    let teams = body(&notifier(NotifierKind::MsTeams), &big);
    assert!(teams.to_string().len() < 28 * 1024);
    let generic = body(&notifier(NotifierKind::Generic), &big);
    assert_eq!(chars(&generic["message"]), 16_000);
    assert_eq!(truncate("abc", 3), "abc");
    assert_eq!(truncate("abcd", 3), "ab…");
}

#[tokio::test]
async fn a_full_queue_drops_its_oldest_messages() {
    let queue = Queue::new();
    let started = item(event("Started", Phase::Progressing, "first"));
    let mut dropped = 0;
    for i in 0..5 {
        let mut next = started.clone();
        next.event = Arc::new(event("Advance", Phase::Progressing, &format!("m{i}")));
        dropped += queue.push(next, 3);
    }
    assert_eq!(dropped, 2);
    assert_eq!(queue.pop().await.event.message, "m2");
    assert_eq!(queue.pop().await.event.message, "m3");
    assert_eq!(queue.pop().await.event.message, "m4");
    assert_eq!(queue.len(), 0);
}

#[test]
fn retry_after_in_seconds_or_as_a_date() {
    assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
    assert_eq!(
        retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO)
    );
    let soon = std::time::SystemTime::now() + Duration::from_secs(120);
    let got = retry_after(&httpdate::fmt_http_date(soon)).unwrap();
    assert!(
        got > Duration::from_secs(100) && got <= Duration::from_secs(120),
        "{got:?}"
    );
    assert_eq!(retry_after("soon"), None);
}

#[tokio::test]
async fn a_reader_that_fell_behind_counts_what_it_missed() {
    let yaml = "listeners:\n  - {name: public, address: \"127.0.0.1:0\"}\nnotifications:\n  - {name: n, kind: generic, url: \"http://127.0.0.1:9/\", on: [Promoted], retries: 0}\nservices:\n  - name: checkout\n    stable: {version: v1, upstreams: [\"127.0.0.1:9\"]}\n    notifications: [n]\n";
    let model = weir_config::parse(yaml, std::path::Path::new("/tmp")).expect("valid");
    let notify = super::Notify::new(&model, std::path::Path::new("/tmp/weir.yaml"));
    let (events, receiver) = tokio::sync::broadcast::channel(2);
    for _ in 0..5 {
        events
            .send(event("Promoted", Phase::Healthy, "done"))
            .expect("a receiver");
    }
    let task = tokio::spawn(notify.run(receiver));
    let count = |outcome| {
        notify
            .counters
            .0
            .get_or_create(&super::Counters::labels("n", outcome))
            .get()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while count(super::Outcome::Failed) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(count(super::Outcome::Dropped), 3, "3 of 5 events missed");
    assert_eq!(count(super::Outcome::Delivered), 0);
    drop(events);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the dispatcher ends with the stream")
        .expect("no panic");
}
