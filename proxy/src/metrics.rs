//! Prometheus export of the data plane's stats, encoded at scrape time from the atomics in
//! [`crate::stats`] and the current route table. Nothing here runs on the request path.
//!
//! Names follow the queries Argo Rollouts analysis templates use, so they run unchanged:
//! `http_requests_total{service,version,status}`, `http_request_duration_seconds{service,version}`,
//! plus `weir_canary_weight{service}` and `weir_upstream_errors_total{service,version,kind}`.
//! Requests their client broke (stalled or oversized bodies, disconnects) are counted apart, in
//! `weir_client_errors_total{service,version,kind}`, never in `http_requests_total`; open
//! upstream connections in `weir_upstream_connections{service,version}`.
//!
//! Traffic policies: `weir_route_rules{service,kind}` (rules in force in the current table, kind ∈
//! header, mirror, preview, affinity), and the mirror's own series, which never move the primary
//! ones: `weir_mirror_requests_total{service,version,status}`,
//! `weir_mirror_request_duration_seconds{service,version}` and
//! `weir_mirror_dropped_total{service,reason}`.
//!
//! Upstream health inside a version: `weir_upstream_healthy{service,version,upstream}` (1 when the
//! upstream may get traffic: not ejected and not failed by its health check),
//! `weir_upstream_ejections_total{service,version,upstream}` and
//! `weir_upstream_fail_open_total{service,version}` (requests sent while no upstream of the
//! version was available). `upstream` is the address, bounded by the config.
//!
//! Rate limits: `weir_rate_limited_total{service}` (requests refused with 429, never counted
//! against a version).
//! gRPC: `weir_grpc_responses_total{service,version,grpc_status}` (`grpc_status` is the code, 0 to
//! 16, or `other`; see [`crate::grpc`] for which codes count as errors of the version).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::routes::health::UpstreamHealth;
use crate::routes::Routes;
use crate::stats::{
    ClientErrorKind, MirrorDropReason, Stats, TrafficKind, UpstreamErrorKind, VersionStats,
    LATENCY_BUCKETS, N_BUCKETS,
};

/// Encodes the data plane's metrics on every scrape.
#[derive(Debug)]
pub struct DataPlaneCollector {
    stats: Stats,
    routes: Routes,
}

/// Registers the data plane's metrics in `registry` (at its top level: the names are fixed by the
/// analysis queries users already have).
pub fn register(registry: &mut Registry, stats: Stats, routes: Routes) {
    registry.register_collector(Box::new(DataPlaneCollector { stats, routes }));
}

impl Collector for DataPlaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let all = self.stats.all();

        encode_exchanges(
            &mut encoder,
            &all,
            "http_requests",
            "Responses sent to clients, by service, version and status code",
            "http_request_duration",
            "Time from receiving a request to sending the response head, by service and version",
        )?;
        let mirrored = self.stats.all_of(TrafficKind::Mirror);
        encode_exchanges(
            &mut encoder,
            &mirrored,
            "weir_mirror_requests",
            "Mirrored copies answered (responses discarded), by service, version and status code",
            "weir_mirror_request_duration",
            "Time from sending a mirrored copy to its response head, by service and version",
        )?;
        let mut dropped = encoder.encode_descriptor(
            "weir_mirror_dropped",
            "Mirror copies not sent, by service and reason",
            None,
            MetricType::Counter,
        )?;
        for drops in self.stats.all_mirror_drops() {
            for reason in MirrorDropReason::ALL {
                let labels = [("service", drops.service()), ("reason", reason.as_str())];
                ConstCounter::new(drops.count(reason)).encode(dropped.encode_family(&labels)?)?;
            }
        }

        let mut errors = encoder.encode_descriptor(
            "weir_upstream_errors",
            "Failed upstream exchanges, by service, version and kind",
            None,
            MetricType::Counter,
        )?;
        for version in &all {
            for kind in UpstreamErrorKind::ALL {
                let count = version.upstream_errors(kind);
                if count == 0 {
                    continue;
                }
                let labels = [
                    ("service", version.service()),
                    ("version", version.version()),
                    ("kind", kind.as_str()),
                ];
                ConstCounter::new(count).encode(errors.encode_family(&labels)?)?;
            }
        }

        let mut client = encoder.encode_descriptor(
            "weir_client_errors",
            "Requests that failed because of their client (never counted against the version), by service, version and kind",
            None,
            MetricType::Counter,
        )?;
        for version in &all {
            for kind in ClientErrorKind::ALL {
                let count = version.client_errors(kind);
                if count == 0 {
                    continue;
                }
                let labels = [
                    ("service", version.service()),
                    ("version", version.version()),
                    ("kind", kind.as_str()),
                ];
                ConstCounter::new(count).encode(client.encode_family(&labels)?)?;
            }
        }
        let mut grpc = encoder.encode_descriptor(
            "weir_grpc_responses",
            "gRPC calls answered through HTTP/2 upstreams, by service, version and grpc-status code (0-16, other)",
            None,
            MetricType::Counter,
        )?;
        for version in &all {
            for (slot, count) in version.grpc_counts().into_iter().enumerate() {
                if count == 0 {
                    continue;
                }
                let labels = [
                    ("service", version.service()),
                    ("version", version.version()),
                    ("grpc_status", crate::grpc::LABELS[slot]),
                ];
                ConstCounter::new(count).encode(grpc.encode_family(&labels)?)?;
            }
        }
        let mut connections = encoder.encode_descriptor(
            "weir_upstream_connections",
            "Open upstream connections, by service and version",
            None,
            MetricType::Gauge,
        )?;
        for version in &all {
            let labels = [
                ("service", version.service()),
                ("version", version.version()),
            ];
            ConstGauge::new(i64::try_from(version.upstream_connections()).unwrap_or(i64::MAX))
                .encode(connections.encode_family(&labels)?)?;
        }

        let table = self.routes.current();
        let mut weight = encoder.encode_descriptor(
            "weir_canary_weight",
            "Percent of a service's requests sent to its canary",
            None,
            MetricType::Gauge,
        )?;
        for service in table.services() {
            let labels = [("service", service.name())];
            ConstGauge::new(service.canary_weight().percent())
                .encode(weight.encode_family(&labels)?)?;
        }
        let mut rules = encoder.encode_descriptor(
            "weir_route_rules",
            "Traffic-policy rules in force in the current route table, by service and kind",
            None,
            MetricType::Gauge,
        )?;
        for service in table.services() {
            let counts = service.rule_counts();
            for (kind, count) in [
                ("header", counts.header),
                ("mirror", counts.mirror),
                ("preview", counts.preview),
                ("affinity", counts.affinity),
            ] {
                let labels = [("service", service.name()), ("kind", kind)];
                ConstGauge::new(count as i64).encode(rules.encode_family(&labels)?)?;
            }
        }
        encode_health(&mut encoder, &table)?;
        crate::ratelimit::encode(&mut encoder, &table)?;
        let mut generation = encoder.encode_descriptor(
            "weir_route_table_generation",
            "Number of route tables published since start",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(table.generation() as i64)
            .encode(generation.encode_family(&[("table", "routes")])?)?;
        Ok(())
    }
}

/// A counter of exchanges by status and a latency histogram, for `versions`.
fn encode_exchanges(
    encoder: &mut DescriptorEncoder<'_>,
    versions: &[std::sync::Arc<VersionStats>],
    counter: &str,
    counter_help: &str,
    histogram: &str,
    histogram_help: &str,
) -> Result<(), std::fmt::Error> {
    let mut requests =
        encoder.encode_descriptor(counter, counter_help, None, MetricType::Counter)?;
    for version in versions {
        for (status, count) in version.status_counts() {
            let status = status.to_string();
            let labels = [
                ("service", version.service()),
                ("version", version.version()),
                ("status", status.as_str()),
            ];
            ConstCounter::new(count).encode(requests.encode_family(&labels)?)?;
        }
    }

    let mut duration = encoder.encode_descriptor(
        histogram,
        histogram_help,
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for version in versions {
        let snapshot = version.snapshot();
        let mut buckets = [(0.0, 0u64); N_BUCKETS];
        for (idx, slot) in buckets.iter_mut().enumerate() {
            let bound = LATENCY_BUCKETS.get(idx).copied().unwrap_or(f64::MAX);
            *slot = (bound, snapshot.buckets[idx]);
        }
        let count = snapshot.buckets.iter().sum();
        let labels = [
            ("service", version.service()),
            ("version", version.version()),
        ];
        duration
            .encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                snapshot.latency_sum_seconds,
                count,
                &buckets,
                None,
            )?;
    }
    Ok(())
}

/// The health series of every upstream in the current table.
fn encode_health(
    encoder: &mut DescriptorEncoder<'_>,
    table: &crate::RouteTable,
) -> Result<(), std::fmt::Error> {
    let now = tokio::time::Instant::now();
    let arms = || table.services().iter().flat_map(|s| s.arms());
    let upstreams: Vec<(String, &UpstreamHealth)> = arms()
        .flat_map(|arm| arm.upstreams())
        .map(|upstream| (upstream.addr().to_string(), &**upstream.health()))
        .collect();
    fn labels<'a>(
        (addr, health): &'a (String, &'a UpstreamHealth),
    ) -> [(&'static str, &'a str); 3] {
        [
            ("service", health.service()),
            ("version", health.version()),
            ("upstream", addr.as_str()),
        ]
    }
    let mut healthy = encoder.encode_descriptor(
        "weir_upstream_healthy",
        "1 when the upstream may get traffic (not ejected by outlier detection, not failed by its health check), by service, version and upstream address",
        None,
        MetricType::Gauge,
    )?;
    for entry in &upstreams {
        ConstGauge::new(i64::from(entry.1.is_available(now)))
            .encode(healthy.encode_family(&labels(entry))?)?;
    }
    let mut ejections = encoder.encode_descriptor(
        "weir_upstream_ejections",
        "Ejections by passive outlier detection, by service, version and upstream address",
        None,
        MetricType::Counter,
    )?;
    for entry in &upstreams {
        ConstCounter::new(entry.1.ejections()).encode(ejections.encode_family(&labels(entry))?)?;
    }
    let mut fail_open = encoder.encode_descriptor(
        "weir_upstream_fail_open",
        "Requests sent while every upstream of the version was ejected or unhealthy (fail open), by service and version",
        None,
        MetricType::Counter,
    )?;
    for service in table.services() {
        for arm in service.arms() {
            let labels = [("service", service.name()), ("version", arm.version())];
            ConstCounter::new(arm.health().fail_open_count())
                .encode(fail_open.encode_family(&labels)?)?;
        }
    }
    Ok(())
}
