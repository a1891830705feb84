//! Per-version request statistics: lock-free atomics on the hot path, cumulative snapshots for readers.
//!
//! Every (service, version) pair owns one [`VersionStats`]. The route table holds an `Arc` to it in each
//! arm, resolved when the table is built, so recording a request is a handful of relaxed atomic adds with
//! no map lookup. Readers (the Prometheus exporter, the control loop) take cumulative [`Snapshot`]s;
//! [`Window`] keeps a ring of them so the control loop can ask for "the last 30 seconds".

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Upper bounds of the latency histogram buckets, in seconds (1 ms to 10 s; `+Inf` is implicit).
pub const LATENCY_BUCKETS: [f64; 24] = [
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
];

/// The same bounds in microseconds, for the hot path (integer compares only).
const LATENCY_BUCKETS_MICROS: [u64; 24] = [
    1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 50_000, 75_000, 100_000,
    150_000, 200_000, 300_000, 500_000, 750_000, 1_000_000, 1_500_000, 2_000_000, 3_000_000,
    5_000_000, 7_500_000, 10_000_000,
];

/// Number of histogram slots: one per bound plus `+Inf`.
pub const N_BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

/// Status codes are recorded in a dense array indexed by `status - 100`.
const N_STATUS: usize = 500;

/// Why a request to an upstream failed (the `kind` label of `weir_upstream_errors_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    /// The TCP connection was refused or failed.
    Connect,
    /// The TCP connection did not complete in `connectTimeout`.
    ConnectTimeout,
    /// No response head within `responseTimeout`.
    Timeout,
    /// The connection broke or the upstream sent an invalid response before the head was complete.
    Protocol,
    /// The response body broke after the head was forwarded.
    Body,
}

impl UpstreamErrorKind {
    /// All kinds, in label order.
    pub const ALL: [UpstreamErrorKind; 5] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::ConnectTimeout,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Protocol,
        UpstreamErrorKind::Body,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::ConnectTimeout => "connect_timeout",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::Body => "body",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A request that failed because of its client, never charged to the version (the `kind` label of
/// `weir_client_errors_total`). Such a request is not in `http_requests_total` nor in any
/// [`Snapshot`], so analysis never sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientErrorKind {
    /// The client did not deliver the next part of its body within `requestBodyTimeout` (408).
    BodyTimeout,
    /// The client went away before its response head was sent (499-style), or mid-body.
    Disconnect,
    /// The body is larger than `maxRequestBodySize` (413).
    BodyTooLarge,
    /// The client's body was malformed (e.g. invalid chunked framing) (400).
    BadRequest,
}

impl ClientErrorKind {
    /// All kinds, in label order.
    pub const ALL: [ClientErrorKind; 4] = [
        ClientErrorKind::BodyTimeout,
        ClientErrorKind::Disconnect,
        ClientErrorKind::BodyTooLarge,
        ClientErrorKind::BadRequest,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientErrorKind::BodyTimeout => "body_timeout",
            ClientErrorKind::Disconnect => "disconnect",
            ClientErrorKind::BodyTooLarge => "body_too_large",
            ClientErrorKind::BadRequest => "bad_request",
        }
    }
}

/// (service, version).
type VersionKey = (Arc<str>, Arc<str>);

/// Why a mirror copy was not sent (the `reason` label of `weir_mirror_dropped_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MirrorDropReason {
    /// The worker's mirror queue was full (the canary is slower than the load).
    QueueFull,
    /// The request body is longer than the mirror body limit.
    BodyTooLarge,
    /// The request body's length is not known up front (chunked, or HTTP/2 without
    /// `content-length`).
    BodyUnknownLength,
    /// The client's body ended early or broke, so there is no complete copy.
    BodyIncomplete,
}

impl MirrorDropReason {
    /// All reasons, in label order.
    pub const ALL: [MirrorDropReason; 4] = [
        MirrorDropReason::QueueFull,
        MirrorDropReason::BodyTooLarge,
        MirrorDropReason::BodyUnknownLength,
        MirrorDropReason::BodyIncomplete,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorDropReason::QueueFull => "queue_full",
            MirrorDropReason::BodyTooLarge => "body_too_large",
            MirrorDropReason::BodyUnknownLength => "body_unknown_length",
            MirrorDropReason::BodyIncomplete => "body_incomplete",
        }
    }
}

/// Mirror copies of one service that were not sent, by reason.
#[derive(Debug)]
pub struct MirrorDrops {
    service: Arc<str>,
    counts: [AtomicU64; MirrorDropReason::ALL.len()],
}

impl MirrorDrops {
    /// The service label.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Counts one dropped copy.
    #[inline]
    pub fn record(&self, reason: MirrorDropReason) {
        self.counts[reason as usize].fetch_add(1, Relaxed);
    }

    /// Copies dropped for `reason` so far.
    pub fn count(&self, reason: MirrorDropReason) -> u64 {
        self.counts[reason as usize].load(Relaxed)
    }
}

/// Which traffic a stats handle counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrafficKind {
    /// Requests served to clients.
    Primary,
    /// Mirrored copies (their responses are discarded).
    Mirror,
}

#[derive(Debug, Default)]
struct Registry {
    primary: HashMap<VersionKey, Arc<VersionStats>>,
    mirror: HashMap<VersionKey, Arc<VersionStats>>,
    drops: HashMap<Arc<str>, Arc<MirrorDrops>>,
}

impl Registry {
    fn map(&self, traffic: TrafficKind) -> &HashMap<VersionKey, Arc<VersionStats>> {
        match traffic {
            TrafficKind::Primary => &self.primary,
            TrafficKind::Mirror => &self.mirror,
        }
    }

    fn map_mut(&mut self, traffic: TrafficKind) -> &mut HashMap<VersionKey, Arc<VersionStats>> {
        match traffic {
            TrafficKind::Primary => &mut self.primary,
            TrafficKind::Mirror => &mut self.mirror,
        }
    }
}

/// Counters of one (service, version) pair. Cheap to update from any thread.
pub struct VersionStats {
    service: Arc<str>,
    version: Arc<str>,
    by_status: Box<[AtomicU64]>,
    other_status: AtomicU64,
    buckets: [AtomicU64; N_BUCKETS],
    latency_sum_micros: AtomicU64,
    upstream_errors: [AtomicU64; UpstreamErrorKind::ALL.len()],
    client_errors: [AtomicU64; ClientErrorKind::ALL.len()],
    /// Upstream connections this version dialled that are still open (primary traffic).
    upstream_connections: AtomicU64,
    /// gRPC outcomes by `grpc-status` slot ([`crate::grpc::LABELS`]).
    grpc: [AtomicU64; crate::grpc::SLOTS],
}

impl std::fmt::Debug for VersionStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionStats")
            .field("service", &self.service)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A cumulative (or, after [`Snapshot::since`], windowed) view of one version's counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Responses sent, by any status.
    pub requests: u64,
    /// Responses with a 5xx status (including weir's own 502/504 for this version).
    pub errors_5xx: u64,
    /// Non-cumulative latency histogram: `buckets[i]` counts requests in `(LATENCY_BUCKETS[i-1], LATENCY_BUCKETS[i]]`.
    pub buckets: [u64; N_BUCKETS],
    /// Sum of latencies in seconds.
    pub latency_sum_seconds: f64,
    /// gRPC calls whose `grpc-status` was read (any code).
    pub grpc_responses: u64,
    /// gRPC calls that failed on the server's side ([`crate::grpc`]); errors of the version like
    /// `5xx` responses, though their HTTP status was `200`.
    pub grpc_errors: u64,
}

// === impl VersionStats ===

impl VersionStats {
    fn new(service: Arc<str>, version: Arc<str>) -> Self {
        VersionStats {
            service,
            version,
            by_status: (0..N_STATUS).map(|_| AtomicU64::new(0)).collect(),
            other_status: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_micros: AtomicU64::new(0),
            upstream_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            client_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            upstream_connections: AtomicU64::new(0),
            grpc: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The service label.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The version label.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The service label, shared (interned) by everything that names this service.
    pub(crate) fn service_label(&self) -> &Arc<str> {
        &self.service
    }

    /// The version label, shared (interned) by everything that names this version.
    pub(crate) fn version_label(&self) -> &Arc<str> {
        &self.version
    }

    /// Records one response: its status and the time to its head.
    #[inline]
    pub fn record(&self, status: u16, latency: Duration) {
        match (status as usize).checked_sub(100) {
            Some(idx) if idx < N_STATUS => self.by_status[idx].fetch_add(1, Relaxed),
            _ => self.other_status.fetch_add(1, Relaxed),
        };
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_MICROS.partition_point(|&bound| bound < micros);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.latency_sum_micros.fetch_add(micros, Relaxed);
    }

    /// Records an upstream failure (the response status is recorded separately with [`Self::record`]).
    #[inline]
    pub fn record_upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind.index()].fetch_add(1, Relaxed);
    }

    /// Records a gRPC outcome (a slot of [`crate::grpc::LABELS`]).
    #[inline]
    pub(crate) fn record_grpc(&self, slot: usize) {
        if let Some(counter) = self.grpc.get(slot) {
            counter.fetch_add(1, Relaxed);
        }
    }

    /// gRPC outcomes so far, by slot of [`crate::grpc::LABELS`].
    pub fn grpc_counts(&self) -> [u64; crate::grpc::SLOTS] {
        std::array::from_fn(|slot| self.grpc[slot].load(Relaxed))
    }

    /// Records a request that failed because of its client (never in the status counts).
    #[inline]
    pub fn record_client_error(&self, kind: ClientErrorKind) {
        self.client_errors[kind as usize].fetch_add(1, Relaxed);
    }

    /// Client-caused failures of one kind so far.
    pub fn client_errors(&self, kind: ClientErrorKind) -> u64 {
        self.client_errors[kind as usize].load(Relaxed)
    }

    /// Upstream connections dialled for this version that are still open.
    pub fn upstream_connections(&self) -> u64 {
        self.upstream_connections.load(Relaxed)
    }

    pub(crate) fn connection_opened(&self) {
        self.upstream_connections.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        // Never below zero, whatever the order of events.
        let _ = self
            .upstream_connections
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    /// Upstream failures of one kind so far.
    pub fn upstream_errors(&self, kind: UpstreamErrorKind) -> u64 {
        self.upstream_errors[kind.index()].load(Relaxed)
    }

    /// Counts by status code, non-zero entries only, ascending.
    pub fn status_counts(&self) -> Vec<(u16, u64)> {
        let mut out: Vec<(u16, u64)> = self
            .by_status
            .iter()
            .enumerate()
            .filter_map(|(idx, count)| {
                let count = count.load(Relaxed);
                (count > 0).then_some((idx as u16 + 100, count))
            })
            .collect();
        let other = self.other_status.load(Relaxed);
        if other > 0 {
            // Statuses outside 100..=599 cannot come out of hyper; keep the count honest anyway.
            out.push((0, other));
        }
        out
    }

    /// A cumulative snapshot.
    pub fn snapshot(&self) -> Snapshot {
        let mut requests = self.other_status.load(Relaxed);
        let mut errors_5xx = 0;
        for (idx, count) in self.by_status.iter().enumerate() {
            let count = count.load(Relaxed);
            requests += count;
            if (400..500).contains(&idx) {
                errors_5xx += count;
            }
        }
        let (mut grpc_responses, mut grpc_errors) = (0, 0);
        for (slot, count) in self.grpc.iter().enumerate() {
            let count = count.load(Relaxed);
            grpc_responses += count;
            if crate::grpc::is_server_error(slot) {
                grpc_errors += count;
            }
        }
        Snapshot {
            requests,
            errors_5xx,
            buckets: std::array::from_fn(|idx| self.buckets[idx].load(Relaxed)),
            latency_sum_seconds: self.latency_sum_micros.load(Relaxed) as f64 / 1e6,
            grpc_responses,
            grpc_errors,
        }
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// What happened between `earlier` and `self` (both cumulative).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            errors_5xx: self.errors_5xx.saturating_sub(earlier.errors_5xx),
            buckets: std::array::from_fn(|idx| {
                self.buckets[idx].saturating_sub(earlier.buckets[idx])
            }),
            latency_sum_seconds: (self.latency_sum_seconds - earlier.latency_sum_seconds).max(0.0),
            grpc_responses: self.grpc_responses.saturating_sub(earlier.grpc_responses),
            grpc_errors: self.grpc_errors.saturating_sub(earlier.grpc_errors),
        }
    }

    /// Fraction of responses that were neither 5xx nor a server-side gRPC failure; `None`
    /// without requests.
    pub fn success_rate(&self) -> Option<f64> {
        self.error_rate().map(|rate| 1.0 - rate)
    }

    /// Fraction of 5xx responses and server-side gRPC failures ([`crate::grpc`]); `None` without
    /// requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| {
            // A gRPC failure is a 200 response: never more errors than responses.
            let errors = (self.errors_5xx + self.grpc_errors).min(self.requests);
            errors as f64 / self.requests as f64
        })
    }

    /// The `q` quantile (0..=1) of latency in seconds, interpolated within its bucket the way
    /// Prometheus' `histogram_quantile` does; `None` without requests.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (idx, &count) in self.buckets.iter().enumerate() {
            if count == 0 {
                continue;
            }
            if (seen + count) as f64 >= rank {
                let Some(&upper) = LATENCY_BUCKETS.get(idx) else {
                    // The +Inf bucket: like Prometheus, answer with the highest finite bound.
                    return Some(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1]);
                };
                let lower = if idx == 0 {
                    0.0
                } else {
                    LATENCY_BUCKETS[idx - 1]
                };
                let within = (rank - seen as f64) / count as f64;
                return Some(lower + (upper - lower) * within);
            }
            seen += count;
        }
        Some(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1])
    }
}

/// The registry of every version's stats (primary and mirrored traffic, and mirror drops).
/// Cloning shares it.
///
/// The maps behind the mutex are touched only when a route table is built and when readers
/// enumerate versions; the request path holds `Arc` handles and never sees them.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    inner: Arc<Mutex<Registry>>,
}

// === impl Stats ===

impl Stats {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `self` and `other` are the same registry (clones of one [`Stats`]).
    pub fn same_registry(&self, other: &Stats) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The handle for (service, version), created on first use.
    pub fn handle(&self, service: &str, version: &str) -> Arc<VersionStats> {
        self.handle_of(TrafficKind::Primary, service, version)
    }

    /// The handle counting mirrored exchanges with (service, version), created on first use.
    pub fn mirror_handle(&self, service: &str, version: &str) -> Arc<VersionStats> {
        self.handle_of(TrafficKind::Mirror, service, version)
    }

    fn handle_of(&self, traffic: TrafficKind, service: &str, version: &str) -> Arc<VersionStats> {
        let mut registry = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let key: (Arc<str>, Arc<str>) = (Arc::from(service), Arc::from(version));
        registry
            .map_mut(traffic)
            .entry(key.clone())
            .or_insert_with(|| Arc::new(VersionStats::new(key.0, key.1)))
            .clone()
    }

    /// The mirror drop counters of `service`, created on first use.
    pub fn mirror_drops(&self, service: &str) -> Arc<MirrorDrops> {
        let mut registry = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let service: Arc<str> = Arc::from(service);
        registry
            .drops
            .entry(service.clone())
            .or_insert_with(|| {
                Arc::new(MirrorDrops {
                    service,
                    counts: std::array::from_fn(|_| AtomicU64::new(0)),
                })
            })
            .clone()
    }

    /// The handle for (service, version), if it was ever created.
    pub fn get(&self, service: &str, version: &str) -> Option<Arc<VersionStats>> {
        self.get_of(TrafficKind::Primary, service, version)
    }

    /// The handle of `traffic` for (service, version), if it was ever created.
    pub fn get_of(
        &self,
        traffic: TrafficKind,
        service: &str,
        version: &str,
    ) -> Option<Arc<VersionStats>> {
        let registry = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        registry
            .map(traffic)
            .get(&(Arc::from(service), Arc::from(version)))
            .cloned()
    }

    /// Drops every handle (primary and mirror) for which `keep` is false (versions no longer
    /// configured), and the drop counters of services left with no version.
    pub fn retain(&self, mut keep: impl FnMut(&str, &str) -> bool) {
        let mut registry = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        registry
            .primary
            .retain(|(service, version), _| keep(service, version));
        registry
            .mirror
            .retain(|(service, version), _| keep(service, version));
        let Registry { primary, drops, .. } = &mut *registry;
        let services: std::collections::HashSet<&Arc<str>> =
            primary.keys().map(|(service, _)| service).collect();
        drops.retain(|service, _| services.contains(service));
    }

    /// Every handle, sorted by (service, version) for stable output.
    pub fn all(&self) -> Vec<Arc<VersionStats>> {
        self.all_of(TrafficKind::Primary)
    }

    /// Every handle of `traffic`, in no particular order.
    fn unsorted_of(&self, traffic: TrafficKind) -> Vec<Arc<VersionStats>> {
        let registry = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        registry.map(traffic).values().cloned().collect()
    }

    /// Every handle of `traffic`, sorted by (service, version).
    pub fn all_of(&self, traffic: TrafficKind) -> Vec<Arc<VersionStats>> {
        let registry = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = registry.map(traffic).values().cloned().collect();
        all.sort_by(|a, b| (&a.service, &a.version).cmp(&(&b.service, &b.version)));
        all
    }

    /// Every service's mirror drop counters, sorted by service.
    pub fn all_mirror_drops(&self) -> Vec<Arc<MirrorDrops>> {
        let registry = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = registry.drops.values().cloned().collect();
        all.sort_by(|a, b| a.service.cmp(&b.service));
        all
    }
}

/// Which counters a series follows.
type SeriesKey = (TrafficKind, VersionKey);

/// The history of one version's counters: the snapshots that differ from the one before, oldest
/// first, each with the sample time it was taken at.
#[derive(Debug, Default)]
struct Series {
    changes: VecDeque<(Instant, Snapshot)>,
    /// The last sample that saw the version configured.
    seen: Option<Instant>,
}

/// A ring of cumulative snapshots of every version, taken by [`Window::sample`] (the control loop
/// calls it about once a second), answering questions about sliding windows.
///
/// Memory: a sample stores a snapshot only for the versions whose counters changed since the
/// previous one, so idle versions cost one snapshot each however long the retention, and a
/// version that is no longer configured is forgotten at the next sample. (Storing every version
/// in every sample cost about 10 MB a second with 10,000 services, up to gigabytes over the
/// retention.)
#[derive(Debug)]
pub struct Window {
    stats: Stats,
    retention: Duration,
    /// When each sample was taken, oldest first.
    times: VecDeque<Instant>,
    series: HashMap<SeriesKey, Series>,
}

// === impl Window ===

impl Window {
    /// A window over `stats` keeping samples for `retention`.
    pub fn new(stats: Stats, retention: Duration) -> Self {
        Window {
            stats,
            retention,
            times: VecDeque::new(),
            series: HashMap::new(),
        }
    }

    /// Takes a sample of every version now and forgets samples older than the retention.
    pub fn sample(&mut self, now: Instant) {
        for traffic in [TrafficKind::Primary, TrafficKind::Mirror] {
            // Unsorted: the order does not matter here (sorting 20,000 versions every second
            // was most of this function's cost with 10,000 services).
            for v in self.stats.unsorted_of(traffic) {
                let series = self
                    .series
                    .entry((traffic, (v.service.clone(), v.version.clone())))
                    .or_default();
                series.seen = Some(now);
                // Every recorded response adds one to one latency bucket: an unchanged bucket
                // total means nothing was recorded since the last change, and the 500 status
                // counters need not be read.
                // gRPC outcomes arrive after the head (in trailers): counted too.
                let recorded: u64 = v.buckets.iter().map(|b| b.load(Relaxed)).sum::<u64>()
                    + v.grpc.iter().map(|c| c.load(Relaxed)).sum::<u64>();
                if series.changes.back().is_some_and(|(_, s)| {
                    s.buckets.iter().sum::<u64>() + s.grpc_responses == recorded
                }) {
                    continue;
                }
                let snapshot = v.snapshot();
                if series.changes.back().map(|(_, s)| s) != Some(&snapshot) {
                    series.changes.push_back((now, snapshot));
                }
            }
        }
        // Versions no longer configured: their counters are gone, and so is their history.
        self.series.retain(|_, series| series.seen == Some(now));
        self.times.push_back(now);
        while let Some(at) = self.times.front() {
            if now.saturating_duration_since(*at) > self.retention + Duration::from_secs(1) {
                self.times.pop_front();
            } else {
                break;
            }
        }
        // Keep, per version, the value it had at the oldest sample and every change since.
        if let Some(&oldest) = self.times.front() {
            for series in self.series.values_mut() {
                while series.changes.get(1).is_some_and(|(at, _)| *at <= oldest) {
                    series.changes.pop_front();
                }
                if series.changes.len() * 4 < series.changes.capacity() {
                    series.changes.shrink_to_fit();
                }
            }
        }
        if self.series.len() * 4 < self.series.capacity() {
            self.series.shrink_to_fit();
        }
    }

    /// What (service, version) did over the last `window` (or since the oldest sample, if younger),
    /// with the actual length of the window covered. Reads live counters for the end of the window.
    pub fn over(
        &self,
        service: &str,
        version: &str,
        window: Duration,
        now: Instant,
    ) -> (Snapshot, Duration) {
        self.over_traffic(TrafficKind::Primary, service, version, window, now)
    }

    /// Like [`Window::over`], over the primary traffic or the mirrored copies of (service,
    /// version).
    pub fn over_traffic(
        &self,
        traffic: TrafficKind,
        service: &str,
        version: &str,
        window: Duration,
        now: Instant,
    ) -> (Snapshot, Duration) {
        let Some(current) = self
            .stats
            .get_of(traffic, service, version)
            .map(|v| v.snapshot())
        else {
            return (Snapshot::default(), Duration::ZERO);
        };
        let start = now.checked_sub(window).unwrap_or(now);
        let key = (
            traffic,
            (Arc::<str>::from(service), Arc::<str>::from(version)),
        );
        // The oldest sample not older than the window start; fall back to the oldest we have.
        let Some(&at) = self
            .times
            .iter()
            .find(|at| **at >= start)
            .or_else(|| self.times.front())
        else {
            return (Snapshot::default(), Duration::ZERO);
        };
        let series = self.series.get(&key);
        // The version's value at that sample: its last change taken at or before it.
        let known = series.and_then(|series| {
            let idx = series.changes.partition_point(|(taken, _)| *taken <= at);
            idx.checked_sub(1).and_then(|idx| series.changes.get(idx))
        });
        if let Some((_, earlier)) = known {
            return (current.since(earlier), now.saturating_duration_since(at));
        }
        // The version is younger than the window: every request it has served is in it, and the
        // window covers only its life (from the first sample that knew it, or the latest sample).
        let born = series
            .and_then(|series| series.changes.front().map(|(taken, _)| *taken))
            .or_else(|| self.times.back().copied())
            .map_or(now, |taken| taken);
        (current, now.saturating_duration_since(born))
    }
}

#[cfg(test)]
mod tests;
