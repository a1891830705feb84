//! The dashboard's time series: per (service, version), a bounded ring of what happened in each
//! [`INTERVAL`] over the last [`RETENTION`] — request rate, success rate, p50/p99 latency — taken
//! from weir's own in-process stats (no Prometheus needed).
//!
//! One sampler task reads the data plane's cumulative counters (the same atomics `/metrics`
//! encodes) every [`INTERVAL`]; nothing is added to the request path. Memory is bounded: at most
//! [`POINTS`] points of a few numbers per version the route table knows, and a version the stats
//! registry dropped is dropped here at the next sample. `GET /api/v1/services/{name}/series`
//! answers from it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use weir_proxy::stats::{Snapshot, Stats};

/// How often the counters are sampled: the width of one point.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// How far back the series go (the dashboard's charts show the last 15 minutes).
pub const RETENTION: Duration = Duration::from_secs(15 * 60);

/// Points kept per version: [`RETENTION`] / [`INTERVAL`].
pub const POINTS: usize = (RETENTION.as_secs() / INTERVAL.as_secs()) as usize;

/// What one version did during one interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// The end of the interval (ms since the Unix epoch).
    pub at_ms: u64,
    /// Responses sent during the interval.
    pub requests: u64,
    /// Requests per second over the interval.
    pub rate: f64,
    /// Fraction of responses that were not errors of the version (5xx, server-side gRPC
    /// failures); `null` without requests.
    pub success_rate: Option<f64>,
    /// Median latency in seconds; `null` without requests.
    pub p50: Option<f64>,
    /// 99th percentile latency in seconds; `null` without requests.
    pub p99: Option<f64>,
}

/// One version's series.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionSeries {
    /// The version's name.
    pub version: String,
    /// Oldest first.
    pub points: Vec<Point>,
}

/// `GET /api/v1/services/{name}/series?window=15m`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSeries {
    /// The service.
    pub name: String,
    /// The window asked for, in seconds (at most [`RETENTION`]).
    pub window_seconds: u64,
    /// The width of one point, in seconds.
    pub interval_seconds: u64,
    /// Every version with traffic counters, by name.
    pub versions: Vec<VersionSeries>,
}

#[derive(Default)]
struct Ring {
    last: Option<Snapshot>,
    points: VecDeque<Point>,
}

/// The rings, shared by the sampler and the admin handlers. Cloning shares them.
#[derive(Clone, Default)]
pub struct Series {
    rings: Arc<Mutex<BTreeMap<(String, String), Ring>>>,
}

impl Series {
    /// Starts the sampler task on the current runtime; it ends when every clone of the returned
    /// `Series` is dropped.
    pub fn spawn(stats: Stats) -> Series {
        let series = Series::default();
        let weak = Arc::downgrade(&series.rings);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let Some(rings) = weak.upgrade() else { return };
                let now = tokio::time::Instant::now();
                let elapsed = now.duration_since(last);
                last = now;
                Series { rings }.sample(&stats, now_ms(), elapsed);
            }
        });
        series
    }

    /// Takes one sample of every version's counters: `elapsed` since the previous one.
    pub fn sample(&self, stats: &Stats, at_ms: u64, elapsed: Duration) {
        let handles = stats.all();
        let mut rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        rings.retain(|(service, version), _| {
            handles
                .iter()
                .any(|h| h.service() == service && h.version() == version)
        });
        let seconds = elapsed.as_secs_f64().max(0.001);
        for handle in handles {
            let snapshot = handle.snapshot();
            let ring = rings
                .entry((handle.service().to_string(), handle.version().to_string()))
                .or_default();
            if let Some(previous) = &ring.last {
                let delta = snapshot.since(previous);
                if ring.points.len() >= POINTS {
                    ring.points.pop_front();
                }
                ring.points.push_back(Point {
                    at_ms,
                    requests: delta.requests,
                    rate: delta.requests as f64 / seconds,
                    success_rate: delta.success_rate(),
                    p50: delta.latency_quantile(0.5),
                    p99: delta.latency_quantile(0.99),
                });
            }
            ring.last = Some(snapshot);
        }
    }

    /// `service`'s series over the last `window` (capped at [`RETENTION`]), as of `now_ms`.
    pub fn service(&self, service: &str, window: Duration, now_ms: u64) -> ServiceSeries {
        let window = window.min(RETENTION);
        let since = now_ms.saturating_sub(window.as_millis() as u64);
        let rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        let versions = rings
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|((_, version), ring)| VersionSeries {
                version: version.clone(),
                points: ring
                    .points
                    .iter()
                    .filter(|p| p.at_ms > since)
                    .cloned()
                    .collect(),
            })
            .collect();
        ServiceSeries {
            name: service.to_string(),
            window_seconds: window.as_secs(),
            interval_seconds: INTERVAL.as_secs(),
            versions,
        }
    }

    /// Each version's share of `service`'s requests over (about) the last `window`, in percent;
    /// empty when none were served.
    pub fn observed_share(&self, service: &str, window: Duration, now_ms: u64) -> Vec<Share> {
        let since = now_ms.saturating_sub(window.as_millis() as u64);
        let rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        let counts: Vec<(String, u64)> = rings
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|((_, version), ring)| {
                let requests = ring
                    .points
                    .iter()
                    .rev()
                    .take_while(|p| p.at_ms > since)
                    .map(|p| p.requests)
                    .sum();
                (version.clone(), requests)
            })
            .collect();
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return Vec::new();
        }
        counts
            .into_iter()
            .map(|(version, requests)| Share {
                percent: requests as f64 * 100.0 / total as f64,
                version,
                requests,
            })
            .collect()
    }
}

/// One version's share of a service's recent requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Share {
    /// The version.
    pub version: String,
    /// Requests it served in the window.
    pub requests: u64,
    /// Its share of the service's requests, in percent.
    pub percent: f64,
}

/// Parses a window like `15m`, `90s`, `1h` (the config's duration syntax); `None` if it is not one.
pub fn parse_window(text: &str) -> Option<Duration> {
    weir_config::parse_duration(text)
        .ok()
        .filter(|d| !d.is_zero())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_deltas_bounded_and_dropped_with_their_version() {
        let stats = Stats::new();
        let canary = stats.handle("web", "v2");
        let stable = stats.handle("web", "v1");
        let series = Series::default();
        series.sample(&stats, 1_000, INTERVAL);
        for _ in 0..30 {
            stable.record(200, Duration::from_millis(3));
        }
        for status in [200, 200, 200, 503, 200, 200, 200, 200, 200, 200] {
            canary.record(status, Duration::from_millis(40));
        }
        series.sample(&stats, 3_000, Duration::from_secs(2));
        let got = series.service("web", Duration::from_secs(900), 3_000);
        assert_eq!(got.versions.len(), 2);
        let v2 = &got
            .versions
            .iter()
            .find(|v| v.version == "v2")
            .unwrap()
            .points;
        assert_eq!(v2.len(), 1);
        assert_eq!(v2[0].requests, 10);
        assert!((v2[0].rate - 5.0).abs() < 1e-9);
        assert_eq!(v2[0].success_rate, Some(0.9));
        assert!(v2[0].p99.unwrap() > 0.02);
        let shares = series.observed_share("web", Duration::from_secs(10), 3_000);
        let v1 = shares.iter().find(|s| s.version == "v1").unwrap();
        assert!((v1.percent - 75.0).abs() < 1e-9);

        for k in 0..(POINTS as u64 + 20) {
            series.sample(&stats, 5_000 + k * 2_000, INTERVAL);
        }
        let got = series.service("web", Duration::from_secs(3600), u64::MAX / 2);
        assert_eq!(got.window_seconds, RETENTION.as_secs());
        let all = series.service("web", RETENTION, 5_000 + (POINTS as u64 + 20) * 2_000);
        assert!(all.versions.iter().all(|v| v.points.len() <= POINTS));

        stats.retain(|_, version| version == "v1");
        series.sample(&stats, 10_000_000, INTERVAL);
        let got = series.service("web", RETENTION, 10_000_000);
        assert_eq!(got.versions.len(), 1);
        assert!(series
            .observed_share("web", Duration::from_secs(10), 10_000_000)
            .is_empty());
    }

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_window("0s"), None);
        assert_eq!(parse_window("soon"), None);
    }
}
