//! Edge protection around client connections: per-listener connection limits (excess shed and
//! counted), the timeouts hyper has no knob for (first byte, HTTP/1 head with a `408`, keep-alive
//! idle, HTTP/2 idle), upgraded tunnels' idle timeout and their part in the drain, and the
//! Prometheus series of all of it.
//!
//! Series (`listener` is the config's listener name; values are bounded):
//! - `weir_connections_open{listener}`: open client connections, upgraded tunnels included;
//! - `weir_connections_shed_total{listener,reason}`: connections closed at once, `reason` ∈
//!   `connections` (the listener or the process was at `maxConnections`), `memory` (the process
//!   was over `limits.maxMemory`, see [`MemoryPressure`]);
//! - `weir_requests_refused_total{listener,reason}`: HTTP/1 requests refused with `400` before
//!   anything reached a service (the framing checks of [`crate::framing`], `reason` one of
//!   [`crate::framing::Refusal::as_str`], `bad_host` for a missing, repeated or mismatched
//!   `Host`, `header_too_large` for a head over the listener's header limits, answered `431`);
//!   never counted against a version;
//! - `weir_connections_timed_out_total{listener,reason}`: connections closed by a timeout,
//!   `reason` ∈ `first_byte`, `tls_handshake`, `header_read`, `idle`, `http2_idle`, `tunnel_idle`;
//! - `weir_tasks_alive`: tasks serving traffic (client and upstream connections, HTTP/2 streams,
//!   tunnels, mirrored requests), see [`ConnectionStats::tasks`].

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use weir_config::{ListenerLimits, ListenerTimeouts, UpgradeProtocol};

/// A listener's timeouts and limits (the config's `listeners[].timeouts` and `.limits`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Connection timeouts.
    pub timeouts: ListenerTimeouts,
    /// Connection and protocol limits.
    pub limits: ListenerLimits,
}

/// Why a connection was closed by weir before the client or upstream ended it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeoutReason {
    FirstByte,
    TlsHandshake,
    HeaderRead,
    Idle,
    Http2Idle,
    TunnelIdle,
}

impl TimeoutReason {
    const ALL: [TimeoutReason; 6] = [
        TimeoutReason::FirstByte,
        TimeoutReason::TlsHandshake,
        TimeoutReason::HeaderRead,
        TimeoutReason::Idle,
        TimeoutReason::Http2Idle,
        TimeoutReason::TunnelIdle,
    ];

    fn as_str(self) -> &'static str {
        match self {
            TimeoutReason::FirstByte => "first_byte",
            TimeoutReason::TlsHandshake => "tls_handshake",
            TimeoutReason::HeaderRead => "header_read",
            TimeoutReason::Idle => "idle",
            TimeoutReason::Http2Idle => "http2_idle",
            TimeoutReason::TunnelIdle => "tunnel_idle",
        }
    }
}

/// The connection counters of one listener, shared by every worker.
#[derive(Debug, Default)]
pub(crate) struct ListenerConns {
    /// Open connections of every listener (shared by all of them).
    total: Arc<AtomicUsize>,
    open: AtomicUsize,
    shed: AtomicU64,
    timed_out: [AtomicU64; 6],
    /// Connections shed while the process was over `limits.maxMemory`.
    shed_memory: AtomicU64,
    /// Requests refused, by [`RefuseReason::index`].
    refused: [AtomicU64; REFUSE_REASONS],
}

/// Why a request was refused before reaching a service (`weir_requests_refused_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefuseReason {
    /// The HTTP/1 framing checks.
    Framing(crate::framing::Refusal),
    /// A missing, repeated or mismatched `Host`.
    BadHost,
    /// An HTTP/1 head over `maxHeaderBytes` or with more than `maxHeaders` fields (hyper
    /// answers `431` and closes).
    HeaderTooLarge,
    /// A path whose dot segments climb above the root.
    BadPath,
}

/// The reasons after the framing ones, in index order.
const OTHER_REASONS: [&str; 3] = ["bad_host", "header_too_large", "bad_path"];
const REFUSE_REASONS: usize = crate::framing::Refusal::ALL.len() + OTHER_REASONS.len();

impl RefuseReason {
    fn index(self) -> usize {
        let framing = crate::framing::Refusal::ALL.len();
        match self {
            RefuseReason::Framing(refusal) => crate::framing::Refusal::ALL
                .iter()
                .position(|r| *r == refusal)
                .unwrap_or(0),
            RefuseReason::BadHost => framing,
            RefuseReason::HeaderTooLarge => framing + 1,
            RefuseReason::BadPath => framing + 2,
        }
    }

    fn name(index: usize) -> &'static str {
        let framing = crate::framing::Refusal::ALL.len();
        match crate::framing::Refusal::ALL.get(index) {
            Some(refusal) => refusal.as_str(),
            None => OTHER_REASONS
                .get(index - framing)
                .copied()
                .unwrap_or("other"),
        }
    }
}

impl ListenerConns {
    /// A slot for a new connection, or `None` (counted as shed) when `max` connections of this
    /// listener, or `global_max` of all listeners, are open.
    pub(crate) fn try_acquire(
        self: &Arc<Self>,
        worker: &Arc<WorkerConns>,
        max: usize,
        global_max: usize,
    ) -> Option<ConnSlot> {
        let below = |max: usize| move |open: usize| (open < max).then_some(open + 1);
        let admitted = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, below(global_max))
            .is_ok();
        if admitted
            && self
                .open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, below(max))
                .is_ok()
        {
            return Some(ConnSlot::new(self.clone(), worker.clone()));
        }
        if admitted {
            self.total.fetch_sub(1, Ordering::AcqRel);
        }
        self.shed.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Counts a connection shed because the process is over its memory limit.
    pub(crate) fn shed_for_memory(&self) {
        self.shed_memory.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused request.
    pub(crate) fn refused(&self, reason: RefuseReason) {
        self.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn timed_out(&self, reason: TimeoutReason) {
        let index = TimeoutReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.timed_out[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// The live connections of one worker, for its drain.
#[derive(Debug, Default)]
pub(crate) struct WorkerConns {
    active: AtomicUsize,
    idle: Notify,
}

impl WorkerConns {
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Resolves when no connection (or tunnel) of this worker is left.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One open connection (or upgraded tunnel): counted in its listener's gauge and its worker's
/// drain until dropped.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    listener: Arc<ListenerConns>,
    worker: Arc<WorkerConns>,
}

impl ConnSlot {
    /// Counts a connection without checking the limit: for a tunnel taking over from the
    /// connection it was upgraded from (that one already passed the limit).
    fn new(listener: Arc<ListenerConns>, worker: Arc<WorkerConns>) -> ConnSlot {
        worker.active.fetch_add(1, Ordering::AcqRel);
        ConnSlot { listener, worker }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.listener.open.fetch_sub(1, Ordering::AcqRel);
        self.listener.total.fetch_sub(1, Ordering::AcqRel);
        if self.worker.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.worker.idle.notify_waiters();
        }
    }
}

/// Every listener's connection counters; cheap to clone. Register it with [`register`].
#[derive(Clone, Debug, Default)]
pub struct ConnectionStats {
    listeners: Arc<Mutex<BTreeMap<String, Arc<ListenerConns>>>>,
    total: Arc<AtomicUsize>,
    /// Live tasks serving traffic (see `crate::tasks`).
    tasks: Arc<AtomicUsize>,
}

impl ConnectionStats {
    /// New, empty counters.
    pub fn new() -> ConnectionStats {
        ConnectionStats::default()
    }

    /// The counters of `listener` (created on first use).
    pub(crate) fn listener(&self, listener: &str) -> Arc<ListenerConns> {
        let mut listeners = self
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        listeners
            .entry(listener.to_string())
            .or_insert_with(|| {
                Arc::new(ListenerConns {
                    total: self.total.clone(),
                    ..ListenerConns::default()
                })
            })
            .clone()
    }

    /// Live tasks serving traffic now: client and upstream connections, HTTP/2 streams, tunnels
    /// and mirrored requests (`weir_tasks_alive`). Back at its idle level once traffic ends.
    pub fn tasks(&self) -> usize {
        self.tasks.load(Ordering::Relaxed)
    }

    /// The counter worker threads count their tasks in.
    pub(crate) fn task_counter(&self) -> Arc<AtomicUsize> {
        self.tasks.clone()
    }

    /// Open connections of every listener now.
    pub fn open_total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Open connections (tunnels included) of `listener` now.
    pub fn open(&self, listener: &str) -> usize {
        self.listener(listener).open.load(Ordering::Acquire)
    }

    /// Connections of `listener` shed so far, for any reason.
    pub fn shed(&self, listener: &str) -> u64 {
        let conns = self.listener(listener);
        conns.shed.load(Ordering::Relaxed) + conns.shed_memory.load(Ordering::Relaxed)
    }

    /// Connections of `listener` shed so far for `reason`: `connections` (a connection limit) or
    /// `memory` (over `limits.maxMemory`).
    pub fn shed_for(&self, listener: &str, reason: &str) -> u64 {
        let conns = self.listener(listener);
        match reason {
            "connections" => conns.shed.load(Ordering::Relaxed),
            "memory" => conns.shed_memory.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Requests of `listener` refused so far for `reason` (a [`crate::framing::Refusal`] name or
    /// `bad_host`).
    pub fn refused(&self, listener: &str, reason: &str) -> u64 {
        let conns = self.listener(listener);
        conns
            .refused
            .iter()
            .enumerate()
            .filter(|(index, _)| RefuseReason::name(*index) == reason)
            .map(|(_, n)| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Connections of `listener` closed by a timeout so far, by reason (`first_byte`,
    /// `tls_handshake`, `header_read`, `idle`, `http2_idle`, `tunnel_idle`).
    pub fn timed_out(&self, listener: &str, reason: &str) -> u64 {
        let conns = self.listener(listener);
        TimeoutReason::ALL
            .iter()
            .zip(&conns.timed_out)
            .filter(|(r, _)| r.as_str() == reason)
            .map(|(_, n)| n.load(Ordering::Relaxed))
            .sum()
    }
}

/// Registers the connection series of `stats` in `registry`.
pub fn register(registry: &mut Registry, stats: ConnectionStats) {
    registry.register_collector(Box::new(ConnectionCollector { stats }));
}

#[derive(Debug)]
struct ConnectionCollector {
    stats: ConnectionStats,
}

impl Collector for ConnectionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let listeners: Vec<(String, Arc<ListenerConns>)> = self
            .stats
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, conns)| (name.clone(), conns.clone()))
            .collect();
        let tasks = encoder.encode_descriptor(
            "weir_tasks_alive",
            "Tasks serving traffic: client and upstream connections, HTTP/2 streams, tunnels, mirrored requests",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(self.stats.tasks()).unwrap_or(i64::MAX)).encode(tasks)?;
        let mut open = encoder.encode_descriptor(
            "weir_connections_open",
            "Open client connections (upgraded tunnels included), by listener",
            None,
            MetricType::Gauge,
        )?;
        for (name, conns) in &listeners {
            let value = i64::try_from(conns.open.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
            ConstGauge::new(value).encode(open.encode_family(&[("listener", name.as_str())])?)?;
        }
        let mut shed = encoder.encode_descriptor(
            "weir_connections_shed",
            "Client connections closed at once, by listener and reason (connections: a connection \
             limit; memory: the process over limits.maxMemory)",
            None,
            MetricType::Counter,
        )?;
        for (name, conns) in &listeners {
            for (reason, count) in [("connections", &conns.shed), ("memory", &conns.shed_memory)] {
                let labels = [("listener", name.as_str()), ("reason", reason)];
                ConstCounter::new(count.load(Ordering::Relaxed))
                    .encode(shed.encode_family(&labels)?)?;
            }
        }
        let mut refused = encoder.encode_descriptor(
            "weir_requests_refused",
            "HTTP/1 requests refused with 400 before reaching a service (ambiguous framing, bad \
             Host), by listener and reason; never counted against a version",
            None,
            MetricType::Counter,
        )?;
        for (name, conns) in &listeners {
            for (index, count) in conns.refused.iter().enumerate() {
                let labels = [
                    ("listener", name.as_str()),
                    ("reason", RefuseReason::name(index)),
                ];
                ConstCounter::new(count.load(Ordering::Relaxed))
                    .encode(refused.encode_family(&labels)?)?;
            }
        }
        let mut timed_out = encoder.encode_descriptor(
            "weir_connections_timed_out",
            "Client connections closed by a timeout, by listener and reason",
            None,
            MetricType::Counter,
        )?;
        for (name, conns) in &listeners {
            for (reason, count) in TimeoutReason::ALL.iter().zip(&conns.timed_out) {
                let labels = [("listener", name.as_str()), ("reason", reason.as_str())];
                ConstCounter::new(count.load(Ordering::Relaxed))
                    .encode(timed_out.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

// === Memory pressure and live settings ===

/// Whether the process is over its memory limit (`limits.maxMemory`): set by a sampler outside the
/// data plane (it never reads files), read by every accept loop, which then sheds new connections
/// (`weir_connections_shed_total{reason="memory"}`) while established ones keep being served.
/// Cheap to clone; all clones share one flag.
#[derive(Clone, Debug, Default)]
pub struct MemoryPressure(Arc<AtomicBool>);

impl MemoryPressure {
    /// A flag that is not set.
    pub fn new() -> MemoryPressure {
        MemoryPressure::default()
    }

    /// Sets (`true`: shed new connections) or clears the flag.
    pub fn set(&self, over: bool) {
        self.0.store(over, Ordering::Release);
    }

    /// Whether new connections are shed now.
    pub fn is_over(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What every new connection is served with: each listener's settings and the process-wide
/// connection limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsSnapshot {
    /// Settings by listener name; a listener not named gets the defaults.
    pub listeners: std::collections::HashMap<String, ListenerSettings>,
    /// Open client connections across all listeners (top-level `limits.maxConnections`).
    pub max_connections: usize,
}

impl Default for SettingsSnapshot {
    /// Every listener with the default settings, the default global connection limit.
    fn default() -> Self {
        SettingsSnapshot {
            listeners: std::collections::HashMap::new(),
            max_connections: weir_config::GlobalLimits::default().max_connections,
        }
    }
}

/// The listener settings in force, replaceable while serving (a config reload): connections
/// accepted afterwards get the new timeouts and limits, open ones keep those they started with.
/// Cheap to clone; all clones share one value.
#[derive(Clone, Debug, Default)]
pub struct LiveSettings(Arc<LiveInner>);

#[derive(Debug, Default)]
struct LiveInner {
    current: arc_swap::ArcSwap<SettingsSnapshot>,
    /// Bumped on every change, so accept loops rebuild their per-listener state only then.
    version: AtomicU64,
}

impl LiveSettings {
    /// The default settings ([`SettingsSnapshot::default`]).
    pub fn new() -> LiveSettings {
        LiveSettings::default()
    }

    /// Replaces the settings for connections accepted from now on; `false` (nothing done) when
    /// they are unchanged.
    pub fn set(&self, settings: SettingsSnapshot) -> bool {
        if *self.0.current.load_full() == settings {
            return false;
        }
        self.0.current.store(Arc::new(settings));
        self.0.version.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// The settings in force.
    pub fn current(&self) -> Arc<SettingsSnapshot> {
        self.0.current.load_full()
    }

    /// Changes so far (0 before the first [`LiveSettings::set`]).
    pub fn version(&self) -> u64 {
        self.0.version.load(Ordering::Acquire)
    }
}

/// `t + d`, or a point decades away when that does not fit.
pub(crate) fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(t)
}

// === Per-connection activity ===

/// What a client connection is doing, seen from its bytes and its requests; drives the timeouts
/// hyper has no knob for. Shared with the stream, which hyper requires to be `Send`: plain atomics
/// on one thread, instants kept as milliseconds since `started`.
///
/// The request path only records what happened (a few relaxed stores and a clock read per
/// request); it never wakes the watchdog. The watchdog's one timer is never set later than one
/// `recheck` (the shortest of the header-read, idle and HTTP/2 idle timeouts) ahead, and every
/// deadline a change can bring is at least `recheck` after that change, so no deadline can fall
/// before the timer fires: when it fires, the watchdog reads the state and acts or sets it again.
#[derive(Debug)]
pub(crate) struct Activity {
    /// When serving began (after the TLS handshake).
    started: Instant,
    /// The connection's timeouts, in ms.
    first_byte: u64,
    header_read: u64,
    idle: u64,
    http2_idle: u64,
    /// The shortest of `header_read`, `idle` and `http2_idle` (at least 1 ms).
    recheck: u64,
    /// A byte has been read.
    read_any: AtomicBool,
    /// The first bytes were the HTTP/2 preface.
    http2: AtomicBool,
    /// Requests (HTTP/2 streams) whose response has not ended.
    in_flight: AtomicUsize,
    /// When the last request in flight ended (or serving began), ms since `started`.
    idle_since: AtomicU64,
    /// When the first byte of a request head arrived with no request in flight (HTTP/1), ms
    /// since `started`; [`NONE`] when no head is being read.
    head_started: AtomicU64,
    /// Set by the watchdog: answer 408 at the next read and end the stream.
    respond_408: AtomicBool,
}

const NONE: u64 = u64::MAX;

/// What the watchdog must do now.
pub(crate) enum Expired {
    /// Close without a word (nothing was asked yet, or the protocol has no way to say it).
    Close(TimeoutReason),
    /// HTTP/1 head not received in time: answer 408, then close.
    RequestTimeout,
    /// HTTP/2 with no stream open for too long: GOAWAY.
    GoAway,
}

/// `d` in whole ms (rounded up, so a timeout never fires early), capped far below overflow.
fn ms(d: Duration) -> u64 {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(NONE / 4).min(NONE / 4)
}

impl Activity {
    pub(crate) fn new(t: &ListenerTimeouts) -> Arc<Activity> {
        let (header_read, idle, http2_idle) = (ms(t.header_read), ms(t.idle), ms(t.http2_idle));
        Arc::new(Activity {
            started: Instant::now(),
            first_byte: ms(t.first_byte),
            header_read,
            idle,
            http2_idle,
            recheck: header_read.min(idle).min(http2_idle).max(1),
            read_any: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NONE),
            respond_408: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(NONE / 4)
    }

    fn at(&self, ms: u64) -> Instant {
        after(self.started, Duration::from_millis(ms))
    }

    fn on_read(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if !self.read_any.load(Ordering::Relaxed) {
            self.read_any.store(true, Ordering::Relaxed);
            let http2 = bytes.starts_with(b"PRI ");
            self.http2.store(http2, Ordering::Relaxed);
            if http2 {
                // HTTP/2 is idle (no stream open) from its preface on.
                self.idle_since.store(self.now_ms(), Ordering::Relaxed);
            }
        }
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == NONE
            && !self.http2.load(Ordering::Relaxed)
        {
            self.head_started.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// A request head was received: it is in flight until the returned guard drops (with its
    /// response body).
    pub(crate) fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(NONE, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The next deadline (ms since `started`); `None` while requests are in flight (their own
    /// timeouts apply).
    fn deadline(&self) -> Option<u64> {
        if !self.read_any.load(Ordering::Relaxed) {
            return Some(self.first_byte);
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let idle_since = self.idle_since.load(Ordering::Relaxed);
        if self.http2.load(Ordering::Relaxed) {
            return Some(idle_since.saturating_add(self.http2_idle));
        }
        Some(match self.head_started.load(Ordering::Relaxed) {
            NONE => idle_since.saturating_add(self.idle),
            head => head.saturating_add(self.header_read),
        })
    }

    /// What has expired at `now` (ms since `started`), if anything.
    fn expired(&self, now: u64) -> Option<Expired> {
        if self.deadline()? > now {
            return None;
        }
        Some(if !self.read_any.load(Ordering::Relaxed) {
            Expired::Close(TimeoutReason::FirstByte)
        } else if self.http2.load(Ordering::Relaxed) {
            Expired::GoAway
        } else if self.head_started.load(Ordering::Relaxed) != NONE {
            Expired::RequestTimeout
        } else {
            Expired::Close(TimeoutReason::Idle)
        })
    }

    /// When the watchdog must look next, from `now`: the deadline, but never more than `recheck`
    /// ahead (see [`Activity`]).
    fn next_check(&self, now: u64) -> Instant {
        let horizon = now.saturating_add(self.recheck);
        self.at(self
            .deadline()
            .map_or(horizon, |deadline| deadline.min(horizon)))
    }

    /// Waits until a timeout of this connection expires.
    pub(crate) async fn watch(&self) -> Expired {
        let timer = tokio::time::sleep_until(self.next_check(self.now_ms()));
        let mut timer = std::pin::pin!(timer);
        loop {
            timer.as_mut().await;
            let now = self.now_ms();
            if let Some(expired) = self.expired(now) {
                return expired;
            }
            timer.as_mut().reset(self.next_check(now));
        }
    }

    /// Asks the stream to answer `408` and end at hyper's next read (only while hyper waits for
    /// a request head, so nothing else is being written).
    pub(crate) fn respond_408(&self) {
        self.respond_408.store(true, Ordering::Relaxed);
    }
}

/// A request in flight on its connection; dropped with the response body (or the request).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle_since.store(self.0.now_ms(), Ordering::Relaxed);
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in flight until it ends.
    pub(crate) struct TrackedBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B> TrackedBody<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> TrackedBody<B> {
        TrackedBody {
            inner,
            in_flight: Some(in_flight),
        }
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.in_flight.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// A client stream that reports its reads to an [`Activity`] and can answer `408` on its own.
#[derive(Debug)]
pub(crate) struct ActivityIo<S> {
    inner: S,
    activity: Arc<Activity>,
    /// Bytes of the 408 response written so far.
    written_408: usize,
}

impl<S> ActivityIo<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> ActivityIo<S> {
        ActivityIo {
            inner,
            activity,
            written_408: 0,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ActivityIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.activity.respond_408.load(Ordering::Relaxed) {
            while this.written_408 < REQUEST_TIMEOUT.len() {
                let rest = &REQUEST_TIMEOUT[this.written_408..];
                match Pin::new(&mut this.inner).poll_write(cx, rest) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(n)) => this.written_408 += n,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // Flushed, then end of stream: hyper closes without answering anything itself.
            return match Pin::new(&mut this.inner).poll_flush(cx) {
                Poll::Ready(_) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
                Poll::Pending => Poll::Pending,
            };
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.activity.on_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ActivityIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === Upgrades ===

/// Whether a service lets a request with these headers switch protocols: every protocol its
/// `Upgrade` header offers must be allowed (names compared without version, case-insensitively);
/// `h2c` never is.
pub(crate) fn upgrade_allowed(allowed: &[UpgradeProtocol], headers: &HeaderMap) -> bool {
    let mut offered = headers
        .get_all(http::header::UPGRADE)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("\u{0}").split(','))
        .map(|token| token.trim())
        .filter(|token| !token.is_empty())
        .peekable();
    if offered.peek().is_none() {
        return false;
    }
    offered.all(|token| {
        let name = token.split('/').next().unwrap_or(token);
        !name.eq_ignore_ascii_case("h2c") && allowed.iter().any(|p| p.0.eq_ignore_ascii_case(name))
    })
}

/// What an upgraded tunnel needs from the connection it came from: its idle timeout and its place
/// in the listener's count and the worker's drain. Carried to the request handler as a request
/// extension.
#[derive(Clone, Debug)]
pub(crate) struct TunnelScope {
    pub(crate) idle: Duration,
    listener: Arc<ListenerConns>,
    worker: Arc<WorkerConns>,
}

impl TunnelScope {
    pub(crate) fn new(
        idle: Duration,
        listener: Arc<ListenerConns>,
        worker: Arc<WorkerConns>,
    ) -> TunnelScope {
        TunnelScope {
            idle,
            listener,
            worker,
        }
    }

    /// A scope counted nowhere, with the default tunnel idle timeout.
    pub(crate) fn detached() -> TunnelScope {
        TunnelScope::new(
            ListenerTimeouts::default().tunnel_idle,
            Arc::default(),
            Arc::default(),
        )
    }

    /// Counts the tunnel as a connection (the one it was upgraded from already passed the limit).
    pub(crate) fn slot(&self) -> ConnSlot {
        self.listener.open.fetch_add(1, Ordering::AcqRel);
        self.listener.total.fetch_add(1, Ordering::AcqRel);
        ConnSlot::new(self.listener.clone(), self.worker.clone())
    }

    /// Copies bytes both ways until either side closes or neither sends anything for `idle`;
    /// counted as a connection (`slot`, from [`TunnelScope::slot`]) until then.
    pub(crate) async fn run<A, B>(&self, _slot: ConnSlot, client: A, upstream: B)
    where
        A: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let last = Rc::new(Cell::new(Instant::now()));
        let mut client = Touching {
            inner: client,
            last: last.clone(),
        };
        let mut upstream = Touching {
            inner: upstream,
            last: last.clone(),
        };
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        let mut copy = std::pin::pin!(copy);
        loop {
            let deadline = after(last.get(), self.idle);
            tokio::select! {
                _ = copy.as_mut() => return,
                _ = tokio::time::sleep_until(deadline) => {
                    if after(last.get(), self.idle) <= Instant::now() {
                        self.listener.timed_out(TimeoutReason::TunnelIdle);
                        tracing::debug!(idle = ?self.idle, "tunnel idle; closing");
                        return;
                    }
                }
            }
        }
    }
}

/// A stream that records when it last read a byte.
struct Touching<S> {
    inner: S,
    last: Rc<Cell<Instant>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Touching<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last.set(Instant::now());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Touching<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn offered(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::UPGRADE, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn only_allowed_upgrades_are_tunnelled() {
        let websocket = weir_config::default_upgrades();
        assert!(upgrade_allowed(&websocket, &offered("websocket")));
        assert!(upgrade_allowed(&websocket, &offered("WebSocket")));
        assert!(!upgrade_allowed(&websocket, &offered("h2c")));
        assert!(!upgrade_allowed(&websocket, &offered("websocket, h2c")));
        assert!(!upgrade_allowed(&websocket, &offered("foo/1.0")));
        assert!(!upgrade_allowed(&websocket, &HeaderMap::new()));
        assert!(!upgrade_allowed(&[], &offered("websocket")));
        // Even an allowlist naming h2c (the config refuses it) never tunnels it.
        let h2c = [UpgradeProtocol("h2c".into())];
        assert!(!upgrade_allowed(&h2c, &offered("h2c")));
        let custom = [UpgradeProtocol("my-proto".into())];
        assert!(upgrade_allowed(&custom, &offered("my-proto/2")));
    }

    #[test]
    fn slots_count_connections_and_shed_beyond_the_limit() {
        let stats = ConnectionStats::new();
        let listener = stats.listener("public");
        let worker = Arc::new(WorkerConns::default());
        let a = listener.try_acquire(&worker, 2, 3).expect("first");
        let b = listener.try_acquire(&worker, 2, 3).expect("second");
        assert!(listener.try_acquire(&worker, 2, 3).is_none());
        assert_eq!((stats.open("public"), stats.shed("public")), (2, 1));
        // The global bound counts every listener.
        let other = stats.listener("other");
        let c = other.try_acquire(&worker, 2, 3).expect("third overall");
        assert!(other.try_acquire(&worker, 2, 3).is_none(), "global bound");
        assert_eq!((stats.open_total(), stats.shed("other")), (3, 1));
        drop(c);
        let scope = TunnelScope::new(Duration::from_secs(1), listener.clone(), worker.clone());
        let tunnel = scope.slot();
        assert_eq!((stats.open("public"), worker.active()), (3, 3));
        drop((a, b, tunnel));
        assert_eq!((stats.open("public"), worker.active()), (0, 0));
        assert_eq!(stats.open_total(), 0);
    }

    /// The watchdog is never woken by the request path: its timer alone must catch each
    /// deadline on time, however the state changed since it was set.
    #[tokio::test(start_paused = true)]
    async fn the_watchdog_catches_every_deadline_without_being_woken() {
        let timeouts = ListenerTimeouts {
            first_byte: Duration::from_secs(10),
            header_read: Duration::from_secs(3),
            idle: Duration::from_secs(7),
            http2_idle: Duration::from_secs(60),
            ..ListenerTimeouts::default()
        };
        let secs = |s: u64| Duration::from_secs(s);
        // A request in flight for 100 s, then idle: closed 7 s after it ended.
        let activity = Activity::new(&timeouts);
        let start = Instant::now();
        activity.on_read(b"GET / HTTP/1.1\r\n");
        let request = activity.request_started();
        let script = async {
            tokio::time::sleep(secs(100)).await;
            drop(request);
        };
        let (expired, ()) = tokio::join!(activity.watch(), script);
        assert!(matches!(expired, Expired::Close(TimeoutReason::Idle)));
        let idle = start.elapsed();
        assert!(
            idle >= secs(107) && idle < secs(107) + Duration::from_millis(5),
            "{idle:?}"
        );

        // Idle 1 s after a request, then a head that stalls: 408 3 s after its first byte, before
        // the idle deadline (8 s).
        let activity = Activity::new(&timeouts);
        let start = Instant::now();
        activity.on_read(b"GET / HTTP/1.1\r\n");
        let request = activity.request_started();
        let script = async {
            tokio::time::sleep(secs(1)).await;
            drop(request);
            tokio::time::sleep(secs(1)).await;
            activity.on_read(b"GET");
        };
        let (expired, ()) = tokio::join!(activity.watch(), script);
        assert!(matches!(expired, Expired::RequestTimeout));
        let head = start.elapsed();
        assert!(
            head >= secs(5) && head < secs(5) + Duration::from_millis(5),
            "{head:?}"
        );

        // Nothing sent: the first-byte timeout.
        let activity = Activity::new(&timeouts);
        let start = Instant::now();
        let expired = activity.watch().await;
        assert!(matches!(expired, Expired::Close(TimeoutReason::FirstByte)));
        assert!(
            start.elapsed() >= secs(10) && start.elapsed() < secs(10) + Duration::from_millis(5)
        );

        // HTTP/2 with no stream: GOAWAY 60 s after the preface.
        let activity = Activity::new(&timeouts);
        let start = Instant::now();
        tokio::time::sleep(secs(2)).await;
        activity.on_read(b"PRI * HTTP/2.0\r\n");
        let expired = activity.watch().await;
        assert!(matches!(expired, Expired::GoAway));
        let h2 = start.elapsed();
        assert!(
            h2 >= secs(62) && h2 < secs(62) + Duration::from_millis(5),
            "{h2:?}"
        );
        eprintln!("watchdog: idle close at {idle:?}, 408 at {head:?}, GOAWAY at {h2:?} (paused clock, no wake-ups from the request path)");
    }

    #[test]
    fn live_settings_change_only_when_they_differ() {
        let live = LiveSettings::new();
        assert_eq!(live.version(), 0);
        assert_eq!(live.current().max_connections, 50_000, "the default limit");
        let mut snapshot = SettingsSnapshot::default();
        assert!(!live.set(snapshot.clone()), "unchanged");
        snapshot.max_connections = 3;
        assert!(live.set(snapshot.clone()));
        assert_eq!((live.version(), live.current().max_connections), (1, 3));
        assert!(!live.set(snapshot));
        assert_eq!(live.version(), 1);
    }

    #[test]
    fn refusals_and_memory_sheds_are_counted_by_reason() {
        let stats = ConnectionStats::new();
        let conns = stats.listener("public");
        for refusal in crate::framing::Refusal::ALL {
            conns.refused(RefuseReason::Framing(refusal));
        }
        conns.refused(RefuseReason::BadHost);
        conns.refused(RefuseReason::BadHost);
        conns.refused(RefuseReason::HeaderTooLarge);
        assert_eq!(stats.refused("public", "header_too_large"), 1);
        for refusal in crate::framing::Refusal::ALL {
            assert_eq!(stats.refused("public", refusal.as_str()), 1, "{refusal:?}");
        }
        assert_eq!(stats.refused("public", "bad_host"), 2);
        assert_eq!(stats.refused("public", "nonsense"), 0);
        conns.shed_for_memory();
        assert_eq!(stats.shed_for("public", "memory"), 1);
        assert_eq!(stats.shed_for("public", "connections"), 0);
        assert_eq!(stats.shed("public"), 1);
        let pressure = MemoryPressure::new();
        let clone = pressure.clone();
        clone.set(true);
        assert!(pressure.is_over());
    }

    #[test]
    fn deadlines_never_overflow() {
        let now = Instant::now();
        assert!(after(now, Duration::MAX) > now);
    }
}
