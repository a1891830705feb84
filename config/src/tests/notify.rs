//! `notifications[]` and `services[].notifications` (issue #9).

use std::path::PathBuf;
use std::time::Duration;

use super::{check, ok};
use crate::*;

fn config(notifications: &str, service_extra: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:8080\n{notifications}services:\n  - name: web\n    stable: {{ version: v1, upstreams: [\"127.0.0.1:9001\"] }}\n{service_extra}"
    )
}

#[test]
fn defaults_and_every_field() {
    let model = ok(&config("", ""));
    assert!(model.notifications.is_empty());
    assert!(model.services[0].notifications.is_empty());

    let model = ok(&config(
        "notifications:\n  - {name: team, kind: slack, url: \"https://hooks.slack.com/services/T/B/X\"}\n  - name: pipeline\n    kind: generic\n    urlFile: secrets/hook-url\n    on: [Aborted, Started, Aborted, StepCompleted]\n    headers: {Authorization: \"Bearer abc\", X-Env: prod}\n    timeout: 2s\n    retries: 0\n    retryBackoff: 100ms\n    queueSize: 5\n",
        "    notifications: [team, pipeline]\n",
    ));
    let team = &model.notifications[0];
    assert_eq!(team.kind, NotifierKind::Slack);
    assert_eq!(
        team.target,
        NotifierTarget::Url("https://hooks.slack.com/services/T/B/X".into())
    );
    assert_eq!(team.on, vec![NotifyOn::Aborted, NotifyOn::Promoted]);
    assert_eq!(team.timeout, Notifier::DEFAULT_TIMEOUT);
    assert_eq!(team.retries, Notifier::DEFAULT_RETRIES);
    assert_eq!(team.retry_backoff, Notifier::DEFAULT_RETRY_BACKOFF);
    assert_eq!(team.queue_size, Notifier::DEFAULT_QUEUE_SIZE);
    let pipeline = &model.notifications[1];
    assert_eq!(
        pipeline.target,
        NotifierTarget::File(PathBuf::from("/tmp/weir-config-tests/secrets/hook-url"))
    );
    assert_eq!(
        pipeline.on,
        vec![
            NotifyOn::Started,
            NotifyOn::StepCompleted,
            NotifyOn::Aborted
        ]
    );
    assert_eq!(
        pipeline.headers,
        vec![
            ("Authorization".to_string(), "Bearer abc".to_string()),
            ("X-Env".to_string(), "prod".to_string())
        ]
    );
    assert_eq!(pipeline.timeout, Duration::from_secs(2));
    assert_eq!((pipeline.retries, pipeline.queue_size), (0, 5));
    assert_eq!(pipeline.retry_backoff, Duration::from_millis(100));
    assert_eq!(model.services[0].notifications, vec!["team", "pipeline"]);
}

#[test]
fn problems_are_reported_with_their_path() {
    check(
        &config(
            "notifications:\n  - {name: a, kind: pager, url: \"http://x\"}\n  - {name: a, kind: slack, url: \"ftp://secret\", on: [Promoted, Exploded]}\n  - {name: c, kind: discord}\n  - {name: d, kind: msteams, url: \"http://x\", urlFile: /f, headers: {A: b}, channel: \"#x\"}\n  - {name: \"bad name\", kind: generic, url: \"http:///path\", timeout: 2m, retries: 11, retryBackoff: 0s, queueSize: 0, on: []}\n",
            "    notifications: [a, missing, a]\n",
        ),
        &[
            "notifications[0].kind: unknown kind \"pager\", expected one of: slack, msteams, discord, generic",
            "notifications[1].url: expected an http:// or https:// URL",
            "notifications[1].on[1]: unknown event \"Exploded\", expected one of: Started, StepCompleted, Paused, Resumed, AnalysisFailed, AnalysisInconclusive, MeasurementError, Aborted, RolledBack, Superseded, Promoted",
            "notifications[2]: missing url or urlFile…",
            "notifications[3].urlFile: give either url or urlFile, not both…",
            "notifications[3].headers: only for kind generic (this notifier is msteams)",
            "notifications[3].channel: only for kind slack (this notifier is msteams)",
            "notifications[4].name: invalid character ' ' in \"bad name\"…",
            "notifications[4].url: the URL has no host",
            "notifications[4].timeout: must be at most 60s, got 120s",
            "notifications[4].retries: must be at most 10, got 11",
            "notifications[4].retryBackoff: must be greater than zero",
            "notifications[4].queueSize: must be between 1 and 10000, got 0",
            "notifications[4].on: must not be empty",
            "services[0].notifications[2]: \"a\" is listed twice",
        ],
    );
    // The secret URL is never echoed.
    let problems = super::problems(&config(
        "notifications:\n  - {name: a, kind: slack, url: \"ftp://secret\"}\n",
        "",
    ));
    assert!(
        problems.iter().all(|p| !p.contains("secret")),
        "{problems:?}"
    );
    check(
        &config(
            "notifications:\n  - {name: a, kind: generic, url: \"http://127.0.0.1:9/\"}\n  - {name: a, kind: generic, url: \"http://127.0.0.1:9/\"}\n",
            "",
        ),
        &["notifications[1].name: duplicate notifier name \"a\" (also notifications[0])"],
    );
    check(
        &config(
            "notifications:\n  - {name: team, kind: slack, url: \"http://127.0.0.1:9/\"}\n",
            "    notifications: [team, ops]\n",
        ),
        &["services[0].notifications[1]: unknown notifier \"ops\": defined: team"],
    );
    // Checked even when the service has other problems.
    check(
        &config(
            "notifications:\n  - {name: team, kind: slack, url: \"http://127.0.0.1:9/\"}\n",
            "    notifications: [ops]\n    upgrades: [telepathy]\n",
        ),
        &["services[0].notifications[0]: unknown notifier \"ops\": defined: team"],
    );
    check(
        &config("", "    notifications: [ops]\n"),
        &["services[0].notifications[0]: unknown notifier \"ops\": no notifiers are defined (top-level notifications)"],
    );
    check(
        &config(
            "notifications:\n  - {name: g, kind: generic, url: \"http://h/\", headers: {\"bad name\": x, X-Ok: \"a\\nb\"}}\n",
            "",
        ),
        &[
            "notifications[0].headers.bad name: invalid header name…",
            "notifications[0].headers.X-Ok: header values must not contain control characters",
        ],
    );
}
