//! `services[].outlierDetection` and `services[].healthCheck` (issue #7).

use std::time::Duration;

use super::{check, ok};
use crate::*;

fn service(extra: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:8080\nservices:\n  - name: web\n    stable: {{ version: v1, upstreams: [\"127.0.0.1:9001\"] }}\n{extra}"
    )
}

#[test]
fn defaults() {
    let model = ok(&service(""));
    let s = &model.services[0];
    assert_eq!(s.outlier_detection, OutlierDetection::default());
    assert!(s.outlier_detection.enabled);
    assert_eq!(s.outlier_detection.consecutive_failures, 5);
    assert_eq!(
        s.outlier_detection.base_ejection_time,
        Duration::from_secs(10)
    );
    assert_eq!(
        s.outlier_detection.max_ejection_time,
        Duration::from_secs(300)
    );
    assert_eq!(s.outlier_detection.max_ejection_percent, 50);
    assert_eq!(s.health_check, None);
    let model = ok(&service("    healthCheck: { path: /healthz }\n"));
    let hc = model.services[0].health_check.clone().unwrap();
    assert_eq!(hc, HealthCheck::with_path("/healthz"));
    assert!(hc.expects(200) && hc.expects(302) && !hc.expects(404) && !hc.expects(503));
}

#[test]
fn every_key_is_read() {
    let model = ok(&service(
        "    outlierDetection: { enabled: false, consecutiveFailures: 3, baseEjectionTime: 1s, maxEjectionTime: 4s, maxEjectionPercent: 100 }
    healthCheck: { path: \"/ready?deep=1\", interval: 500ms, timeout: 200ms, healthyThreshold: 1, unhealthyThreshold: 4,
                   expectedStatuses: [204, \"200-299\", \"418\"], host: health.internal }
",
    ));
    let s = &model.services[0];
    assert_eq!(
        s.outlier_detection,
        OutlierDetection {
            enabled: false,
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(1),
            max_ejection_time: Duration::from_secs(4),
            max_ejection_percent: 100,
        }
    );
    assert_eq!(
        s.health_check,
        Some(HealthCheck {
            path: "/ready?deep=1".into(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(200),
            healthy_threshold: 1,
            unhealthy_threshold: 4,
            expected_statuses: vec![(204, 204), (200, 299), (418, 418)],
            host: Some("health.internal".into()),
        })
    );
}

#[test]
fn bad_values_are_reported_with_paths() {
    check(
        &service(
            "    outlierDetection: { consecutiveFailures: 0, baseEjectionTime: 0s, maxEjectionPercent: 101, maxEjectionTime: 25h }
    healthCheck: { interval: 1s, timeout: 0s, expectedStatuses: [99, \"300-200\", x], host: \"a b\", unhealthyThreshold: -1 }
",
        ),
        &[
            "services[0].outlierDetection.consecutiveFailures: must be at least 1, got 0",
            "services[0].outlierDetection.baseEjectionTime: must be greater than zero",
            "services[0].outlierDetection.maxEjectionPercent: must be between 0 and 100, got 101",
            "services[0].outlierDetection.maxEjectionTime: must be at most 24h",
            "services[0].healthCheck.path: missing required field",
            "services[0].healthCheck.timeout: must be greater than zero",
            "services[0].healthCheck.expectedStatuses[0]: expected a status code…",
            "services[0].healthCheck.expectedStatuses[1]: expected a status code…",
            "services[0].healthCheck.expectedStatuses[2]: expected a status code…",
            "services[0].healthCheck.host: invalid Host header value \"a b\"",
            "services[0].healthCheck.unhealthyThreshold: …",
        ],
    );
    check(
        &service("    healthCheck: { path: health, interval: 1s, timeout: 2s }\n    outlierDetection: { baseEjectionTime: 10s, maxEjectionTime: 5s }\n"),
        &[
            "services[0].healthCheck.path: must be a request path starting with \"/\", got \"health\"",
            "services[0].healthCheck.timeout: must be at most interval…",
            "services[0].outlierDetection.maxEjectionTime: must be at least baseEjectionTime…",
        ],
    );
    check(
        &service("    healthCheck: { path: /x, intervall: 1s }\n"),
        &["services[0].healthCheck.intervall: unknown field…"],
    );
}
