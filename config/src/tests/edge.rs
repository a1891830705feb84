//! `listeners[].timeouts`, `listeners[].limits` and `services[].upgrades` (issue #7).

use std::time::Duration;

use super::{check, ok};
use crate::*;

const SERVICE: &str = "services:
  - name: web
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
";

fn with_listener(extra: &str) -> String {
    format!("listeners:\n  - name: public\n    address: 127.0.0.1:8080\n{extra}{SERVICE}")
}

#[test]
fn defaults_protect_the_process() {
    let model = ok(&with_listener(""));
    let listener = &model.listeners[0];
    assert_eq!(listener.timeouts, ListenerTimeouts::default());
    assert_eq!(listener.limits, ListenerLimits::default());
    // No laxer than nginx: 60 s to read a head; Envoy's edge figures for HTTP/2.
    assert!(listener.timeouts.first_byte <= Duration::from_secs(60));
    assert!(listener.timeouts.header_read <= Duration::from_secs(60));
    assert_eq!(listener.limits.http2_max_concurrent_streams, 100);
    assert_eq!(listener.limits.http2_initial_stream_window, 64 * 1024);
    assert_eq!(listener.limits.http2_initial_connection_window, 1024 * 1024);
    assert_eq!(model.services[0].upgrades, default_upgrades());
}

#[test]
fn every_key_is_read() {
    let model = ok(&with_listener(
        "    timeouts: { firstByte: 1s, tlsHandshake: 2s, headerRead: 3s, idle: 4s, http2Idle: 5s,
                http2KeepAliveInterval: 6s, http2KeepAliveTimeout: 7s, tunnelIdle: 8s }
    limits: { maxConnections: 9, maxHeaderBytes: 8192, maxHeaders: 11, http2MaxConcurrentStreams: 12,
              http2InitialStreamWindow: 65535, http2InitialConnectionWindow: 70000,
              http2MaxFrameSize: 16384, http2MaxPendingResets: 13, http2MaxLocalErrorResets: 14 }
",
    ));
    let t = &model.listeners[0].timeouts;
    let secs = |n| Duration::from_secs(n);
    assert_eq!(
        (
            t.first_byte,
            t.tls_handshake,
            t.header_read,
            t.idle,
            t.http2_idle
        ),
        (secs(1), secs(2), secs(3), secs(4), secs(5))
    );
    assert_eq!(
        (
            t.http2_keep_alive_interval,
            t.http2_keep_alive_timeout,
            t.tunnel_idle
        ),
        (secs(6), secs(7), secs(8))
    );
    let l = &model.listeners[0].limits;
    assert_eq!(
        (l.max_connections, l.max_header_bytes, l.max_headers),
        (9, 8192, 11)
    );
    assert_eq!(
        (
            l.http2_max_concurrent_streams,
            l.http2_initial_stream_window,
            l.http2_initial_connection_window,
            l.http2_max_frame_size,
            l.http2_max_pending_resets,
            l.http2_max_local_error_resets
        ),
        (12, 65535, 70000, 16384, 13, 14)
    );
    let model = ok(&format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:8080\n{SERVICE}    upgrades: [WebSocket, my-proto]\n"
    ));
    let names: Vec<&str> = model.services[0]
        .upgrades
        .iter()
        .map(|p| p.0.as_str())
        .collect();
    assert_eq!(names, ["websocket", "my-proto"]);
    let model = ok(&format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:8080\n{SERVICE}    upgrades: []\n"
    ));
    assert!(model.services[0].upgrades.is_empty());
}

#[test]
fn out_of_range_values_are_refused() {
    check(
        &with_listener(
            "    timeouts: { firstByte: 0s, idle: 25h, headerRead: soon, bogus: 1s }
    limits: { maxConnections: 0, maxHeaderBytes: 100, http2MaxFrameSize: 100,
              http2InitialStreamWindow: 4294967295, maxHeaders: -1 }
",
        ),
        &[
            "listeners[0].timeouts.firstByte: …",
            "listeners[0].timeouts.idle: must be at most 24h",
            "listeners[0].timeouts.headerRead: …",
            "listeners[0].timeouts.bogus: unknown field …",
            "listeners[0].limits.maxConnections: must be between 1 and …",
            "listeners[0].limits.maxHeaderBytes: must be between 8192 and …",
            "listeners[0].limits.http2MaxFrameSize: must be between 16384 and …",
            "listeners[0].limits.http2InitialStreamWindow: must be between 65535 and …",
            "listeners[0].limits.maxHeaders: must not be negative, got -1",
        ],
    );
    check(
        &format!(
            "listeners:\n  - name: public\n    address: 127.0.0.1:8080\n{SERVICE}    upgrades: [h2c, websocket, websocket, \"a b\"]\n"
        ),
        &[
            "services[0].upgrades[0]: h2c cannot be tunnelled…",
            "services[0].upgrades[2]: duplicate protocol \"websocket\"",
            "services[0].upgrades[3]: \"a b\" is not a protocol name…",
        ],
    );
}

#[test]
fn a_global_connection_limit() {
    assert_eq!(ok(&with_listener("")).limits, GlobalLimits::default());
    let model = ok(&format!(
        "limits: {{maxConnections: 123}}\n{}",
        with_listener("")
    ));
    assert_eq!(model.limits.max_connections, 123);
    check(
        &format!(
            "limits: {{maxConnections: 0, other: 1}}\n{}",
            with_listener("")
        ),
        &[
            "limits.maxConnections: must be between 1 and …",
            "limits.other: unknown field …",
        ],
    );
}

#[test]
fn memory_limit_and_send_buffer() {
    let model = ok(&with_listener(""));
    assert_eq!(model.limits.max_memory, MemoryLimit::Auto);
    assert_eq!(
        model.listeners[0].limits.http2_max_send_buffer_size,
        32 * 1024
    );
    for (written, expected) in [
        ("auto", MemoryLimit::Auto),
        ("\"off\"", MemoryLimit::Off),
        ("OFF", MemoryLimit::Off),
        ("1MiB", MemoryLimit::Bytes(1 << 20)),
        ("2 GB", MemoryLimit::Bytes(2_000_000_000)),
        ("512mib", MemoryLimit::Bytes(512 << 20)),
        ("1048576", MemoryLimit::Bytes(1 << 20)),
    ] {
        let model = ok(&format!(
            "limits: {{maxMemory: {written}}}\n{}",
            with_listener("")
        ));
        assert_eq!(model.limits.max_memory, expected, "{written}");
    }
    let model = ok(&with_listener(
        "    limits: { http2MaxSendBufferSize: 64KiB }\n",
    ));
    assert_eq!(
        model.listeners[0].limits.http2_max_send_buffer_size,
        64 * 1024
    );
    for (written, problem) in [
        (
            "1000",
            "limits.maxMemory: must be at least 1MiB (or auto, off), got 1000 bytes",
        ),
        (
            "12 parsecs",
            "limits.maxMemory: \"12 parsecs\" is not a size …",
        ),
        ("-5", "limits.maxMemory: must be a size in bytes …"),
        (
            "99999999999TiB",
            "limits.maxMemory: \"99999999999TiB\" is not a size …",
        ),
        ("[1]", "limits.maxMemory: must be a size in bytes …"),
    ] {
        check(
            &format!("limits: {{maxMemory: {written}}}\n{}", with_listener("")),
            &[problem],
        );
    }
    check(
        &with_listener("    limits: { http2MaxSendBufferSize: 100 }\n"),
        &["listeners[0].limits.http2MaxSendBufferSize: must be between 1KiB and 16MiB, got 100 bytes"],
    );
}
