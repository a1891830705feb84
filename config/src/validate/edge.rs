//! `listeners[].timeouts`, `listeners[].limits` and `services[].upgrades`.

use std::time::Duration;

use serde_yaml_ng::Value;

use super::walk::{self, each, Cx, Obj};
use crate::model::{
    GlobalLimits, ListenerLimits, ListenerTimeouts, MemoryLimit, UpgradeProtocol, MIN_HEADER_BYTES,
};

/// The longest accepted connection timeout: longer ones protect nothing, and the timers that
/// run them must never overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A timeout between 1 ms and 24 h.
fn timeout(cx: &mut Cx, value: &Value, at: &str) -> Option<Duration> {
    let d = walk::positive_duration(cx, value, at)?;
    if d > MAX_TIMEOUT {
        cx.err(at, "must be at most 24h");
        return None;
    }
    Some(d)
}

/// An integer in `min..=max`.
fn bounded(cx: &mut Cx, value: &Value, at: &str, min: u64, max: u64) -> Option<u64> {
    let n = walk::uint(cx, value, at)?;
    if n < min || n > max {
        cx.err(at, format!("must be between {min} and {max}, got {n}"));
        return None;
    }
    Some(n)
}

pub(super) fn timeouts(cx: &mut Cx, value: &Value, at: &str) -> Option<ListenerTimeouts> {
    let o = Obj::open(
        cx,
        value,
        at,
        &[
            "firstByte",
            "tlsHandshake",
            "headerRead",
            "idle",
            "http2Idle",
            "http2KeepAliveInterval",
            "http2KeepAliveTimeout",
            "tunnelIdle",
        ],
    )?;
    let d = ListenerTimeouts::default();
    let first_byte = o.or(cx, "firstByte", d.first_byte, timeout);
    let tls_handshake = o.or(cx, "tlsHandshake", d.tls_handshake, timeout);
    let header_read = o.or(cx, "headerRead", d.header_read, timeout);
    let idle = o.or(cx, "idle", d.idle, timeout);
    let http2_idle = o.or(cx, "http2Idle", d.http2_idle, timeout);
    let http2_keep_alive_interval = o.or(
        cx,
        "http2KeepAliveInterval",
        d.http2_keep_alive_interval,
        timeout,
    );
    let http2_keep_alive_timeout = o.or(
        cx,
        "http2KeepAliveTimeout",
        d.http2_keep_alive_timeout,
        timeout,
    );
    let tunnel_idle = o.or(cx, "tunnelIdle", d.tunnel_idle, timeout);
    Some(ListenerTimeouts {
        first_byte: first_byte?,
        tls_handshake: tls_handshake?,
        header_read: header_read?,
        idle: idle?,
        http2_idle: http2_idle?,
        http2_keep_alive_interval: http2_keep_alive_interval?,
        http2_keep_alive_timeout: http2_keep_alive_timeout?,
        tunnel_idle: tunnel_idle?,
    })
}

pub(super) fn limits(cx: &mut Cx, value: &Value, at: &str) -> Option<ListenerLimits> {
    let o = Obj::open(
        cx,
        value,
        at,
        &[
            "maxConnections",
            "maxHeaderBytes",
            "maxHeaders",
            "http2MaxConcurrentStreams",
            "http2InitialStreamWindow",
            "http2InitialConnectionWindow",
            "http2MaxFrameSize",
            "http2MaxPendingResets",
            "http2MaxLocalErrorResets",
            "http2MaxSendBufferSize",
        ],
    )?;
    let d = ListenerLimits::default();
    // usize fields are read as u64 and bounded well below usize::MAX on every target.
    let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let as_u32 = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let max_connections = o.or(cx, "maxConnections", d.max_connections, |cx, v, at| {
        bounded(cx, v, at, 1, 10_000_000).map(as_usize)
    });
    let max_header_bytes = o.or(cx, "maxHeaderBytes", d.max_header_bytes, |cx, v, at| {
        bounded(cx, v, at, u64::from(MIN_HEADER_BYTES), 16 * 1024 * 1024).map(as_u32)
    });
    let max_headers = o.or(cx, "maxHeaders", d.max_headers, |cx, v, at| {
        bounded(cx, v, at, 1, 10_000).map(as_usize)
    });
    let http2_max_concurrent_streams = o.or(
        cx,
        "http2MaxConcurrentStreams",
        d.http2_max_concurrent_streams,
        |cx, v, at| bounded(cx, v, at, 1, 10_000).map(as_u32),
    );
    // RFC 9113: windows at most 2^31-1, frame size 2^14..2^24-1.
    let window_max = (1u64 << 31) - 1;
    let http2_initial_stream_window = o.or(
        cx,
        "http2InitialStreamWindow",
        d.http2_initial_stream_window,
        |cx, v, at| bounded(cx, v, at, 65_535, window_max).map(as_u32),
    );
    let http2_initial_connection_window = o.or(
        cx,
        "http2InitialConnectionWindow",
        d.http2_initial_connection_window,
        |cx, v, at| bounded(cx, v, at, 65_535, window_max).map(as_u32),
    );
    let http2_max_frame_size = o.or(
        cx,
        "http2MaxFrameSize",
        d.http2_max_frame_size,
        |cx, v, at| bounded(cx, v, at, 1 << 14, (1 << 24) - 1).map(as_u32),
    );
    let http2_max_pending_resets = o.or(
        cx,
        "http2MaxPendingResets",
        d.http2_max_pending_resets,
        |cx, v, at| bounded(cx, v, at, 1, 100_000).map(as_usize),
    );
    let http2_max_local_error_resets = o.or(
        cx,
        "http2MaxLocalErrorResets",
        d.http2_max_local_error_resets,
        |cx, v, at| bounded(cx, v, at, 1, 100_000).map(as_usize),
    );
    let http2_max_send_buffer_size = o.or(
        cx,
        "http2MaxSendBufferSize",
        d.http2_max_send_buffer_size,
        |cx, v, at| {
            let n = size(cx, v, at)?;
            if !(1024..=16 * 1024 * 1024).contains(&n) {
                cx.err(at, format!("must be between 1KiB and 16MiB, got {n} bytes"));
                return None;
            }
            Some(as_u32(n))
        },
    );
    Some(ListenerLimits {
        max_connections: max_connections?,
        max_header_bytes: max_header_bytes?,
        max_headers: max_headers?,
        http2_max_concurrent_streams: http2_max_concurrent_streams?,
        http2_initial_stream_window: http2_initial_stream_window?,
        http2_initial_connection_window: http2_initial_connection_window?,
        http2_max_frame_size: http2_max_frame_size?,
        http2_max_pending_resets: http2_max_pending_resets?,
        http2_max_local_error_resets: http2_max_local_error_resets?,
        http2_max_send_buffer_size: http2_max_send_buffer_size?,
    })
}

/// `services[].upgrades`: protocol names (`websocket`, …), lower-cased, unique; `h2c` is refused.
pub(super) fn upgrades(cx: &mut Cx, value: &Value, at: &str) -> Option<Vec<UpgradeProtocol>> {
    let items = walk::list(cx, value, at)?;
    let mut seen = Vec::new();
    let parsed = each(cx, items, at, |cx, item, at, _| {
        let name = walk::nonempty_string(cx, item, at)?.to_ascii_lowercase();
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            cx.err(
                at,
                format!("\"{name}\" is not a protocol name (a token such as websocket)"),
            );
            return None;
        }
        if name == "h2c" {
            cx.err(
                at,
                "h2c cannot be tunnelled: clients use HTTP/2 directly (prior knowledge or TLS ALPN)",
            );
            return None;
        }
        if seen.contains(&name) {
            cx.err(at, format!("duplicate protocol \"{name}\""));
            return None;
        }
        seen.push(name.clone());
        Some(UpgradeProtocol(name))
    });
    walk::all(parsed)
}

/// Top-level `limits`.
pub(super) fn global_limits(cx: &mut Cx, value: &Value, at: &str) -> Option<GlobalLimits> {
    let o = Obj::open(cx, value, at, &["maxConnections", "maxMemory"])?;
    let d = GlobalLimits::default();
    let max_connections = o.or(cx, "maxConnections", d.max_connections, |cx, v, at| {
        bounded(cx, v, at, 1, 10_000_000).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    });
    let max_memory = o.or(cx, "maxMemory", d.max_memory, memory_limit);
    Some(GlobalLimits {
        max_connections: max_connections?,
        max_memory: max_memory?,
    })
}

/// `limits.maxMemory`: `auto`, `off`, or a size of at least 1 MiB.
fn memory_limit(cx: &mut Cx, value: &Value, at: &str) -> Option<MemoryLimit> {
    match value.as_str().map(str::trim) {
        Some(word) if word.eq_ignore_ascii_case("auto") => return Some(MemoryLimit::Auto),
        Some(word) if word.eq_ignore_ascii_case("off") => return Some(MemoryLimit::Off),
        _ => {}
    }
    let n = size(cx, value, at)?;
    if n < 1024 * 1024 {
        cx.err(
            at,
            format!("must be at least 1MiB (or auto, off), got {n} bytes"),
        );
        return None;
    }
    Some(MemoryLimit::Bytes(n))
}

/// A byte size: a plain integer, or a number followed by a unit: `B`, `K`/`KB`/`M`/`MB`/`G`/`GB`/
/// `T`/`TB` (powers of 1000) or `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024), case-insensitive, with
/// optional space between.
pub(super) fn size(cx: &mut Cx, value: &Value, at: &str) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let Some(text) = value.as_str() else {
        cx.err(at, "must be a size in bytes (1048576, 512KiB, 64MiB, 2GB)");
        return None;
    };
    match parse_size(text) {
        Some(n) => Some(n),
        None => {
            cx.err(
                at,
                format!("\"{text}\" is not a size (1048576, 512KiB, 64MiB, 2GB)"),
            );
            None
        }
    }
}

/// Parses `text` as [`size`] does.
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(multiplier)
}
