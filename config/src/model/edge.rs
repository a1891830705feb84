//! Edge protection of client-facing listeners (`listeners[].timeouts`, `listeners[].limits`,
//! top-level `limits`) and the upgrades a service tunnels (`services[].upgrades`).
//!
//! Every default protects the process on its own: a connection that sends nothing, stalls its
//! head, idles, or floods HTTP/2 frames is closed; defaults are no laxer than nginx's (60 s to read
//! a request head) and follow Envoy's edge-proxy recommendations for buffers and HTTP/2 windows.

use std::time::Duration;

/// `listeners[].timeouts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTimeouts {
    /// `firstByte` (default 10 s): a new connection (or a TLS session after its handshake) that
    /// sends no byte in this time is closed, before the protocol is even known.
    pub first_byte: Duration,
    /// `tlsHandshake` (default 10 s): time to complete a TLS handshake.
    pub tls_handshake: Duration,
    /// `headerRead` (default 30 s): time from the first byte of an HTTP/1 request head to its end;
    /// past it the client gets `408 Request Timeout` and the connection is closed.
    pub header_read: Duration,
    /// `idle` (default 60 s): an HTTP/1 keep-alive connection with no request in flight is
    /// closed after this long.
    pub idle: Duration,
    /// `http2Idle` (default 60 s): an HTTP/2 connection with no open stream (including one that
    /// never opens a stream after its preface) is closed with GOAWAY after this long.
    pub http2_idle: Duration,
    /// `http2KeepAliveInterval` (default 30 s): an HTTP/2 PING is sent when the connection has
    /// been silent this long.
    pub http2_keep_alive_interval: Duration,
    /// `http2KeepAliveTimeout` (default 20 s): a PING not acknowledged in this time closes the
    /// connection.
    pub http2_keep_alive_timeout: Duration,
    /// `tunnelIdle` (default 60 s, nginx's `proxy_read_timeout`): an upgraded connection
    /// (WebSocket) with no byte in either direction for this long is closed.
    pub tunnel_idle: Duration,
}

impl Default for ListenerTimeouts {
    fn default() -> Self {
        ListenerTimeouts {
            first_byte: Duration::from_secs(10),
            tls_handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            http2_idle: Duration::from_secs(60),
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(20),
            tunnel_idle: Duration::from_secs(60),
        }
    }
}

/// `listeners[].limits`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// `maxConnections` (default 10 000): open connections (upgraded tunnels included) across
    /// all workers; a connection beyond it is accepted and closed at once, and counted as shed.
    pub max_connections: usize,
    /// `maxHeaderBytes` (default 32 KiB, at least 8 KiB): the size of an HTTP/1 request head (the
    /// per-connection read buffer) and of an HTTP/2 header list; past it the answer is `431`.
    pub max_header_bytes: u32,
    /// `maxHeaders` (default 100): header fields in an HTTP/1 request head; past it, `431`.
    pub max_headers: usize,
    /// `http2MaxConcurrentStreams` (default 100).
    pub http2_max_concurrent_streams: u32,
    /// `http2InitialStreamWindow` (default 64 KiB).
    pub http2_initial_stream_window: u32,
    /// `http2InitialConnectionWindow` (default 1 MiB).
    pub http2_initial_connection_window: u32,
    /// `http2MaxFrameSize` (default 16 KiB, between 16 KiB and 16 MiB − 1).
    pub http2_max_frame_size: u32,
    /// `http2MaxPendingResets` (default 20): streams reset by the client before weir accepted
    /// them (the rapid-reset attack); past it the connection is closed with GOAWAY.
    pub http2_max_pending_resets: usize,
    /// `http2MaxLocalErrorResets` (default 256): streams weir had to reset for the client's
    /// protocol errors; past it the connection is closed with GOAWAY.
    pub http2_max_local_error_resets: usize,
    /// `http2MaxSendBufferSize` (default 32 KiB, Envoy's per-connection buffer limit; between
    /// 1 KiB and 16 MiB): response bytes weir buffers per HTTP/2 stream beyond what the client's
    /// flow-control window and socket take. A client that stops reading its responses makes weir
    /// hold at most this much (plus one upstream read) per open stream, not hyper's 400 KiB.
    /// HTTP/1 connections are bounded by `maxHeaderBytes` both ways (hyper's read and write
    /// buffers).
    pub http2_max_send_buffer_size: u32,
}

/// Top-level `limits`: bounds across every listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalLimits {
    /// `maxConnections` (default 50 000): open client connections across all listeners (upgraded
    /// tunnels included); a connection beyond it is accepted and closed at once, counted as shed
    /// on its listener. Keep it below the process's file-descriptor limit.
    pub max_connections: usize,
    /// `maxMemory` (default [`MemoryLimit::Auto`]): the process's resident memory above which new
    /// client connections are shed (accepted and closed at once, counted with
    /// `reason="memory"`) while established ones keep being served, as Envoy's overload
    /// manager stops accepting connections at a heap threshold.
    pub max_memory: MemoryLimit,
}

impl Default for GlobalLimits {
    fn default() -> Self {
        GlobalLimits {
            max_connections: 50_000,
            max_memory: MemoryLimit::Auto,
        }
    }
}

/// Top-level `limits.maxMemory`: when new connections are shed for memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryLimit {
    /// `auto` (the default): 95% of the memory limit of the process's cgroup (v2 `memory.max`,
    /// else v1 `memory.limit_in_bytes`) when one is set, else no limit. Read at start and on
    /// every reload.
    Auto,
    /// `off`: never shed for memory.
    Off,
    /// A size (`512MiB`, `2GB`, `1073741824`): resident memory (RSS) in bytes.
    Bytes(u64),
}

/// The smallest `maxHeaderBytes` (hyper's minimum read buffer).
pub const MIN_HEADER_BYTES: u32 = 8 * 1024;

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 10_000,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            http2_max_concurrent_streams: 100,
            http2_initial_stream_window: 64 * 1024,
            http2_initial_connection_window: 1024 * 1024,
            http2_max_frame_size: 16 * 1024,
            http2_max_pending_resets: 20,
            http2_max_local_error_resets: 256,
            http2_max_send_buffer_size: 32 * 1024,
        }
    }
}

/// A protocol a service lets clients switch to with HTTP/1.1 `Upgrade` (`services[].upgrades`,
/// default `[websocket]`). Matched case-insensitively against the `Upgrade` header's protocol
/// names (without version). `h2c` is never accepted: an `h2c` upgrade would take the rest of the
/// connection out of routing and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpgradeProtocol(pub String);

/// The default `services[].upgrades`.
pub fn default_upgrades() -> Vec<UpgradeProtocol> {
    vec![UpgradeProtocol("websocket".to_string())]
}
