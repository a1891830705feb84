//! `services[].outlierDetection` and `services[].healthCheck`.

use std::time::Duration;

use serde_yaml_ng::Value;

use super::walk::{self, each, Cx, Obj};
use crate::model::{HealthCheck, OutlierDetection};

/// The longest accepted ejection, probe interval or probe timeout: the timers must never overflow.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A duration between 1 ms and 24 h.
fn bounded_duration(cx: &mut Cx, value: &Value, at: &str) -> Option<Duration> {
    let d = walk::positive_duration(cx, value, at)?;
    if d > MAX_DURATION {
        cx.err(at, "must be at most 24h");
        return None;
    }
    Some(d)
}

pub(super) fn outlier_detection(cx: &mut Cx, value: &Value, at: &str) -> Option<OutlierDetection> {
    let o = Obj::open(
        cx,
        value,
        at,
        &[
            "enabled",
            "consecutiveFailures",
            "baseEjectionTime",
            "maxEjectionTime",
            "maxEjectionPercent",
        ],
    )?;
    let d = OutlierDetection::default();
    let enabled = o.or(cx, "enabled", d.enabled, walk::boolean);
    let consecutive_failures = o.or(
        cx,
        "consecutiveFailures",
        d.consecutive_failures,
        walk::positive_u32,
    );
    let base = o.or(
        cx,
        "baseEjectionTime",
        d.base_ejection_time,
        bounded_duration,
    );
    let max = o.or(cx, "maxEjectionTime", d.max_ejection_time, bounded_duration);
    let percent = o.or(
        cx,
        "maxEjectionPercent",
        d.max_ejection_percent,
        |cx, v, at| {
            let n = walk::uint(cx, v, at)?;
            match u8::try_from(n) {
                Ok(n) if n <= 100 => Some(n),
                _ => {
                    cx.err(at, format!("must be between 0 and 100, got {n}"));
                    None
                }
            }
        },
    );
    if let (Some(base), Some(max)) = (base, max) {
        if max < base {
            cx.err(
                &o.at("maxEjectionTime"),
                format!("must be at least baseEjectionTime ({base:?}), got {max:?}"),
            );
            return None;
        }
    }
    Some(OutlierDetection {
        enabled: enabled?,
        consecutive_failures: consecutive_failures?,
        base_ejection_time: base?,
        max_ejection_time: max?,
        max_ejection_percent: percent?,
    })
}

pub(super) fn health_check(cx: &mut Cx, value: &Value, at: &str) -> Option<HealthCheck> {
    let o = Obj::open(
        cx,
        value,
        at,
        &[
            "path",
            "interval",
            "timeout",
            "healthyThreshold",
            "unhealthyThreshold",
            "expectedStatuses",
            "host",
        ],
    )?;
    let d = HealthCheck::with_path("/");
    let path = o.req(cx, "path", |cx, v, at| {
        let path = walk::string(cx, v, at)?;
        let visible = path.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
        if !path.starts_with('/') || !visible {
            cx.err(
                at,
                format!("must be a request path starting with \"/\", got \"{path}\""),
            );
            return None;
        }
        Some(path)
    });
    let interval = o.or(cx, "interval", d.interval, bounded_duration);
    let timeout = o.or(cx, "timeout", d.timeout, bounded_duration);
    let healthy = o.or(
        cx,
        "healthyThreshold",
        d.healthy_threshold,
        walk::positive_u32,
    );
    let unhealthy = o.or(
        cx,
        "unhealthyThreshold",
        d.unhealthy_threshold,
        walk::positive_u32,
    );
    let statuses = o.or(
        cx,
        "expectedStatuses",
        d.expected_statuses,
        expected_statuses,
    );
    let host = o.opt(cx, "host", |cx, v, at| {
        let host = walk::nonempty_string(cx, v, at)?;
        if host.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            cx.err(at, format!("invalid Host header value \"{host}\""));
            return None;
        }
        Some(host)
    });
    let (interval, timeout) = (interval?, timeout?);
    if timeout > interval {
        cx.err(
            &o.at("timeout"),
            format!("must be at most interval ({interval:?}), got {timeout:?}"),
        );
        return None;
    }
    Some(HealthCheck {
        path: path?,
        interval,
        timeout,
        healthy_threshold: healthy?,
        unhealthy_threshold: unhealthy?,
        expected_statuses: statuses?,
        host: host?,
    })
}

/// A non-empty list of status codes (`200`) or ranges (`"200-299"`), each within 100–599.
fn expected_statuses(cx: &mut Cx, value: &Value, at: &str) -> Option<Vec<(u16, u16)>> {
    let items = walk::nonempty_list(cx, value, at)?;
    let parsed = each(cx, items, at, |cx, item, at, _| {
        let range = match item {
            Value::Number(n) => n.as_u64().map(|n| (n, n)),
            Value::String(s) => match s.split_once('-') {
                Some((low, high)) => low.trim().parse().ok().zip(high.trim().parse().ok()),
                None => s.trim().parse().ok().map(|n| (n, n)),
            },
            _ => None,
        };
        match range {
            Some((low, high)) if (100..=599).contains(&low) && (low..=599).contains(&high) => {
                Some((low as u16, high as u16))
            }
            _ => {
                cx.err(
                    at,
                    "expected a status code (100-599) or a range like \"200-299\"",
                );
                None
            }
        }
    });
    walk::all(parsed)
}
