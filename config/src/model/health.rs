//! Upstream health inside a version (`services[].outlierDetection`, `services[].healthCheck`).
//!
//! Both act only inside a version: an ejected or unhealthy upstream gets no traffic while another
//! upstream of the same version can take it; traffic never moves to the other version.

use std::time::Duration;

/// `services[].outlierDetection`: passive outlier detection (Envoy's `outlier_detection`
/// semantics) on the traffic weir forwards.
///
/// An upstream that fails `consecutiveFailures` exchanges in a row (connection refused or timed
/// out, reset or broken before the response head, no head within `responseTimeout`, or a response
/// of status 500 and above) is ejected for `baseEjectionTime × 2^(ejections − 1)`, capped at
/// `maxEjectionTime`; `ejections` is how many times in a row it was ejected (reset once it served
/// successfully for a whole `baseEjectionTime` after coming back). A success resets the failure
/// count. Failures a client causes (a stalled, oversized or malformed body, a disconnect) never
/// count.
///
/// On by default, like nginx's passive `max_fails` (and unlike Envoy, whose operators turn it on
/// per cluster): weir already retries refused connections within the version, and ejection is
/// safe because the last available upstream of a version is never ejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    /// `enabled` (default true).
    pub enabled: bool,
    /// `consecutiveFailures` (default 5, Envoy's `consecutive_5xx`): failures in a row that
    /// eject an upstream.
    pub consecutive_failures: u32,
    /// `baseEjectionTime` (default 10s): the first ejection's length; each further ejection in a
    /// row doubles it.
    pub base_ejection_time: Duration,
    /// `maxEjectionTime` (default 300s, Envoy's): the longest ejection.
    pub max_ejection_time: Duration,
    /// `maxEjectionPercent` (default 50): at most this share of a version's upstreams is ejected
    /// at a time, rounded down but at least one when the version has two or more upstreams; the
    /// last available upstream of a version is never ejected whatever the value.
    pub max_ejection_percent: u8,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            enabled: true,
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// `services[].healthCheck`: active HTTP health checks of every upstream of every version, run by
/// the control plane on its own tasks. An upstream that fails `unhealthyThreshold` probes in a
/// row gets no traffic until it passes `healthyThreshold` probes in a row. Upstreams start
/// healthy. When every upstream of a version is unhealthy or ejected, traffic still goes to them
/// (fail open, like Envoy's panic threshold) and `weir_upstream_fail_open_total` counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// `path` (required): the request target of the `GET` probe, starting with `/`.
    pub path: String,
    /// `interval` (default 10s): time between two probes of one upstream.
    pub interval: Duration,
    /// `timeout` (default 2s, at most `interval`): a probe with no complete response head in this
    /// time fails.
    pub timeout: Duration,
    /// `healthyThreshold` (default 2, HAProxy's `rise`): probes in a row that bring an unhealthy
    /// upstream back.
    pub healthy_threshold: u32,
    /// `unhealthyThreshold` (default 3, HAProxy's `fall`): failed probes in a row that take an
    /// upstream out.
    pub unhealthy_threshold: u32,
    /// `expectedStatuses` (default 200–399): status codes or `"200-299"` ranges that pass.
    pub expected_statuses: Vec<(u16, u16)>,
    /// `host` (default: the upstream as written, `HOST:PORT`): the probe's `Host` header.
    pub host: Option<String>,
}

impl HealthCheck {
    /// The defaults of everything but `path`.
    pub fn with_path(path: impl Into<String>) -> HealthCheck {
        HealthCheck {
            path: path.into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            expected_statuses: vec![(200, 399)],
            host: None,
        }
    }

    /// Whether a probe answered with `status` passes.
    pub fn expects(&self, status: u16) -> bool {
        self.expected_statuses
            .iter()
            .any(|&(low, high)| (low..=high).contains(&status))
    }
}
