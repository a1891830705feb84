//! Edge hardening of client connections (issue #7): timeouts that close silent, stalled and idle
//! connections, the per-listener connection limit, header limits, HTTP/2 flood caps (written as
//! raw frames: the `h2` crate cannot send malicious sequences), upgrade tunnels (idle timeout,
//! drain, allowlist). Each test prints its figure on stderr (`--nocapture` to see them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_proxy::ListenerSettings;

use crate::client::{self, Http1, Http2};
use crate::proxy::{self, Proxy};
use crate::upstream::Server;

const WEB: &str = r#"
services:
  - name: web
    stable: {version: v1, upstreams: ["${up}"]}
"#;

fn settings(edit: impl FnOnce(&mut ListenerSettings)) -> ListenerSettings {
    let mut settings = ListenerSettings::default();
    edit(&mut settings);
    settings
}

fn web(upstream: &Server, settings: ListenerSettings) -> Proxy {
    Proxy::builder(proxy::model(WEB, &[("up", upstream.addr())]))
        .listener_settings("public", settings)
        .start()
}

/// Reads until the peer closes (or resets); returns what was read. Panics after `limit`.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection was not closed within {limit:?}"
    );
    out
}

/// The status code of the first response in `bytes`.
fn status_of(bytes: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(bytes);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

/// Sends `request` on a fresh connection and reads until weir closes it.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_to_close(&mut stream, Duration::from_secs(10)).await
}

// === Silent and idle connections ===

/// Set (to weir's address) in the child process that holds the client ends of the silent
/// connections, so each process needs only one descriptor per connection.
const SILENT_ADDR_ENV: &str = "WEIR_TEST_SILENT_CLIENTS_ADDR";
/// Where the child process writes its result line.
const SILENT_OUT_ENV: &str = "WEIR_TEST_SILENT_CLIENTS_OUT";
const SILENT_N: usize = 10_000;

/// Raises `RLIMIT_NOFILE` to `wanted`; `false` (with a message) when the hard limit is too low.
fn enough_descriptors(wanted: u64) -> bool {
    let soft = rlimit::increase_nofile_limit(wanted).unwrap_or(0);
    if soft < wanted {
        eprintln!(
            "SKIPPED: {SILENT_N} silent connections need {wanted} file descriptors per process; RLIMIT_NOFILE allows {soft}"
        );
        return false;
    }
    true
}

/// Ignored in the parallel suite: 10,000 connections opened at once on a 2-core machine already
/// busy with every other test overflow the kernel's accept queue, and a connection the kernel
/// dropped before weir could accept it looks silent forever to its client. `.ci/run` runs it on
/// its own right after the suite (`--ignored --exact`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run alone by .ci/run: 10,000 connections at once need a machine not busy with other tests"]
async fn ten_thousand_silent_connections_are_closed_by_the_first_byte_timeout() {
    let wanted = (SILENT_N + 1_000) as u64;
    if !enough_descriptors(wanted) {
        return;
    }
    let upstream = Server::spawn("v1");
    let first_byte = Duration::from_millis(1500);
    let proxy = Proxy::builder(proxy::model(WEB, &[("up", upstream.addr())]))
        .listener_settings(
            "public",
            settings(|s| {
                s.timeouts.first_byte = first_byte;
                s.limits.max_connections = 2 * SILENT_N;
            }),
        )
        .workers(2)
        .start();
    let addr = proxy.addr();

    // The clients run in a child process (this test binary, running only the helper below).
    let exe = std::env::current_exe().expect("the test binary");
    let out_dir = tempfile::tempdir().expect("a temporary folder");
    let out = out_dir.path().join("result");
    let out_path = out.clone();
    let child = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args([
                "tests::edge_conn::child_process_silent_clients",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SILENT_ADDR_ENV, addr.to_string())
            .env(SILENT_OUT_ENV, &out_path)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run the client process")
    })
    .await
    .unwrap();
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(child.status.success(), "client process failed: {stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SILENT-CLIENTS "))
        .unwrap_or_else(|| panic!("no result line from the client process: {stdout}"));
    if line.starts_with("skipped") {
        eprintln!("SKIPPED: the client process could not raise RLIMIT_NOFILE");
        proxy.shutdown().await;
        upstream.shutdown().await;
        return;
    }
    let mut fields = line.split_whitespace();
    let closed: usize = fields.next().unwrap().parse().unwrap();
    let secs: f64 = fields.next().unwrap().parse().unwrap();
    let longest: f64 = fields.next().unwrap().parse().unwrap();
    // A connection the kernel completed but dropped from a full accept queue never reaches weir
    // and looks silent forever to its client: weir cannot close what it never accepted. So the
    // checks are that weir closed, by the timeout, every connection it accepted (its counter
    // equals what the clients saw closed, and none is left open), and that such kernel drops stay
    // rare.
    let never_accepted = SILENT_N - closed;
    assert!(
        never_accepted <= SILENT_N / 100,
        "{never_accepted} of {SILENT_N} connections were never closed"
    );
    assert!(
        longest < 10.0,
        "closed near the timeout, not much later: {longest}s"
    );
    assert_eventually!(proxy.connections().open("public") == 0);
    let counted = proxy.connections().timed_out("public", "first_byte");
    assert_eq!(
        counted, closed as u64,
        "every connection weir accepted was closed by the first-byte timeout"
    );
    // A client that speaks is still served.
    let reply = Http1::connect(addr).await.get("any", "/").await;
    assert_eq!(reply.status, 200);
    eprintln!(
        "FIGURE: {closed} of {SILENT_N} silent connections closed by the first-byte timeout ({first_byte:?}) \
         in {secs:.2}s from the first connect (the longest any lived: {longest:.2}s; {never_accepted} never reached weir: kernel accept-queue drops); weir_connections_timed_out_total{{reason=\"first_byte\"}} = {counted}"
    );
    proxy.shutdown().await;
    upstream.shutdown().await;
}

/// Not a test on its own: the client side of
/// [`ten_thousand_silent_connections_are_closed_by_the_first_byte_timeout`], run in a child
/// process. Does nothing unless [`SILENT_ADDR_ENV`] is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_silent_clients() {
    let Ok(addr) = std::env::var(SILENT_ADDR_ENV) else {
        return;
    };
    let addr: SocketAddr = addr.parse().expect("an address");
    let out = std::env::var(SILENT_OUT_ENV).expect("where to write the result");
    if !enough_descriptors((SILENT_N + 1_000) as u64) {
        std::fs::write(&out, "SILENT-CLIENTS skipped\n").expect("write the result");
        return;
    }
    let start = Instant::now();
    let connecting = Arc::new(tokio::sync::Semaphore::new(128));
    let mut clients = Vec::with_capacity(SILENT_N);
    for _ in 0..SILENT_N {
        let connecting = connecting.clone();
        clients.push(tokio::spawn(async move {
            let permit = connecting.acquire_owned().await.unwrap();
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let connected = Instant::now();
            drop(permit);
            let mut buf = [0u8; 1];
            // Nothing sent: weir must close it (EOF or reset).
            // Far past the timeout: a connection still open by then never reached weir.
            let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await;
            (matches!(read, Ok(Ok(0)) | Ok(Err(_))), connected.elapsed())
        }));
    }
    let mut closed = 0;
    let mut longest = Duration::ZERO;
    for client in clients {
        let (was_closed, lived) = client.await.unwrap();
        if was_closed {
            closed += 1;
            longest = longest.max(lived);
        }
    }
    let line = format!(
        "SILENT-CLIENTS {closed} {:.3} {:.3}\n",
        start.elapsed().as_secs_f64(),
        longest.as_secs_f64()
    );
    std::fs::write(&out, line).expect("write the result");
}

#[tokio::test]
async fn a_stalled_tls_handshake_and_a_silent_tls_session_are_closed() {
    let ca = crate::certs::TestCa::new();
    let leaf = ca.leaf(&["secure.example.com"]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    leaf.write(dir.path(), "secure");
    let upstream = Server::spawn("v1");
    let model = proxy::model_in(
        dir.path(),
        &format!(
            "listeners:\n  - name: secure\n    address: 127.0.0.1:0\n    tls:\n      certificates: [{{certFile: secure.crt, keyFile: secure.key}}]\n{WEB}"
        ),
        &[("up", upstream.addr())],
    );
    let timeout = Duration::from_millis(300);
    let proxy = Proxy::builder(model)
        .tls("secure", crate::certs::material(&[&leaf]))
        .listener_settings(
            "secure",
            settings(|s| {
                s.timeouts.tls_handshake = timeout;
                s.timeouts.first_byte = timeout;
            }),
        )
        .start();
    let addr = proxy.addr();

    // No ClientHello at all.
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let reply = read_to_close(&mut stream, Duration::from_secs(10)).await;
    let handshake_closed = start.elapsed();
    assert!(reply.is_empty());
    assert!(handshake_closed >= timeout);
    // Counted just after the socket is dropped.
    assert_eventually!(proxy.connections().timed_out("secure", "tls_handshake") == 1);

    // A finished handshake, then silence.
    let config = client::tls_config_any_server(&[b"http/1.1"]);
    let mut tls = client::tls_connect(addr, config, "secure.example.com").await;
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    let session_closed = start.elapsed();
    assert_eq!(proxy.connections().timed_out("secure", "first_byte"), 1);
    eprintln!("FIGURE: TLS: no ClientHello → closed after {handshake_closed:?} (tlsHandshake {timeout:?}); silent TLS session → closed after {session_closed:?} (firstByte {timeout:?})");
    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_stalled_request_head_gets_408_and_is_closed() {
    let upstream = Server::spawn("v1");
    let header_read = Duration::from_millis(300);
    let proxy = web(
        &upstream,
        settings(|s| s.timeouts.header_read = header_read),
    );

    let start = Instant::now();
    let reply = raw_exchange(proxy.addr(), b"GET / HTTP/1.1\r\nHost: any\r\nX-Slow: lor").await;
    let elapsed = start.elapsed();
    assert_eq!(status_of(&reply), 408);
    assert!(
        elapsed >= header_read,
        "not before the timeout: {elapsed:?}"
    );
    assert_eq!(upstream.requests(), 0, "nothing reached the upstream");
    assert_eq!(proxy.connections().timed_out("public", "header_read"), 1);

    // A slow but steady client still has only `headerRead` for the whole head.
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let start = Instant::now();
    for byte in b"GET / HTTP/1.1\r\nHost: any\r\nX-Drip: 0123456789012345678901234567890123456789" {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = read_to_close(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(status_of(&reply), 408);
    eprintln!(
        "FIGURE: a stalled head answered 408 after {elapsed:?} (headerRead {header_read:?}); \
         a 1-byte/20ms drip answered 408 after {:?}",
        start.elapsed()
    );
    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let upstream = Server::spawn("v1");
    let idle = Duration::from_millis(300);
    let proxy = web(&upstream, settings(|s| s.timeouts.idle = idle));

    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut last = Instant::now();
    // Two requests on one connection, each well within the idle time of the previous.
    for _ in 0..2 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: any\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert_eq!(status_of(&buf[..n]), 200);
        last = Instant::now();
        tokio::time::sleep(idle / 3).await;
    }
    let rest = read_to_close(&mut stream, Duration::from_secs(10)).await;
    let closed_after = last.elapsed();
    assert!(rest.is_empty(), "no answer to an idle connection");
    assert!(closed_after >= idle, "{closed_after:?}");
    assert_eq!(upstream.requests(), 2);
    assert_eq!(proxy.connections().timed_out("public", "idle"), 1);
    eprintln!("FIGURE: idle keep-alive connection closed {closed_after:?} after its last response (idle {idle:?})");
    proxy.shutdown().await;
    upstream.shutdown().await;
}

// === Limits ===

#[tokio::test]
async fn the_connection_limit_sheds_the_excess_while_established_clients_are_served() {
    const MAX: usize = 20;
    const EXCESS: usize = 100;
    let upstream = Server::spawn("v1");
    let proxy = web(&upstream, settings(|s| s.limits.max_connections = MAX));

    let mut established = Vec::new();
    for _ in 0..MAX {
        let mut client = Http1::connect(proxy.addr()).await;
        assert_eq!(client.get("any", "/").await.status, 200);
        established.push(client);
    }
    assert_eq!(proxy.connections().open("public"), MAX);

    let start = Instant::now();
    for _ in 0..EXCESS {
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        let _ = stream
            .write_all(b"GET / HTTP/1.1\r\nHost: any\r\n\r\n")
            .await;
        let reply = read_to_close(&mut stream, Duration::from_secs(5)).await;
        assert!(reply.is_empty(), "a shed connection gets no answer");
    }
    let shed_in = start.elapsed();
    assert_eq!(proxy.connections().shed("public"), EXCESS as u64);

    let mut served = 0;
    for client in &mut established {
        for _ in 0..5 {
            served += usize::from(client.get("any", "/").await.status == 200);
        }
    }
    assert_eq!(served, MAX * 5);
    // Freed slots are usable again.
    drop(established);
    assert_eventually!(proxy.connections().open("public") == 0);
    assert_eq!(
        Http1::connect(proxy.addr())
            .await
            .get("any", "/")
            .await
            .status,
        200
    );
    eprintln!(
        "FIGURE: maxConnections {MAX}: {EXCESS}/{EXCESS} excess connections shed in {shed_in:?}, \
         {served}/{} requests of the {MAX} established clients served",
        MAX * 5
    );
    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn the_global_connection_limit_counts_every_listener() {
    let upstream = Server::spawn("v1");
    let proxy = Proxy::builder(proxy::model(
        &format!("listeners:\n  - {{name: a, address: 127.0.0.1:0}}\n  - {{name: b, address: 127.0.0.1:0}}\n{WEB}"),
        &[("up", upstream.addr())],
    ))
    .max_connections(3)
    .start();
    let mut established = Vec::new();
    for listener in ["a", "a", "b"] {
        let mut client = Http1::connect(proxy.listener_addr(listener)).await;
        assert_eq!(client.get("any", "/").await.status, 200);
        established.push(client);
    }
    for listener in ["a", "b"] {
        let mut stream = TcpStream::connect(proxy.listener_addr(listener))
            .await
            .unwrap();
        let _ = stream
            .write_all(b"GET / HTTP/1.1\r\nHost: any\r\n\r\n")
            .await;
        let reply = read_to_close(&mut stream, Duration::from_secs(5)).await;
        assert!(reply.is_empty(), "shed on {listener}");
    }
    let connections = proxy.connections();
    assert_eq!((connections.shed("a"), connections.shed("b")), (1, 1));
    assert_eq!(connections.open_total(), 3);
    for client in &mut established {
        assert_eq!(client.get("any", "/").await.status, 200);
    }
    eprintln!("FIGURE: global maxConnections 3 over two listeners: 3 served, the 4th and 5th shed (one per listener)");
    drop(established);
    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let upstream = Server::spawn("v1");
    let proxy = web(
        &upstream,
        settings(|s| {
            s.limits.max_header_bytes = 16 * 1024;
            s.limits.max_headers = 20;
        }),
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: any\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let reply = raw_exchange(proxy.addr(), big.as_bytes()).await;
    assert_eq!(status_of(&reply), 431);

    let mut many = String::from("GET / HTTP/1.1\r\nHost: any\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let reply = raw_exchange(proxy.addr(), many.as_bytes()).await;
    assert_eq!(status_of(&reply), 431);

    // Within the limits, served.
    let mut fine = String::from("GET / HTTP/1.1\r\nHost: any\r\nConnection: close\r\n");
    for i in 0..15 {
        fine.push_str(&format!("X-H{i}: {}\r\n", "v".repeat(500)));
    }
    fine.push_str("\r\n");
    let reply = raw_exchange(proxy.addr(), fine.as_bytes()).await;
    assert_eq!(status_of(&reply), 200);
    assert_eq!(
        upstream.requests(),
        1,
        "refused heads never reach the upstream"
    );
    eprintln!("FIGURE: 20 KiB header (limit 16 KiB) → 431; 32 header fields (limit 20) → 431; 17 fields / 7.5 KiB → 200");
    proxy.shutdown().await;
    upstream.shutdown().await;
}

// === HTTP/2 ===

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK for `GET http://any/` (static-table indices, `:authority` as a literal without indexing).
fn get_block() -> Vec<u8> {
    vec![0x82, 0x86, 0x84, 0x01, 3, b'a', b'n', b'y']
}

/// Frames read from weir until it closes: (type, flags, payload).
async fn read_frames(
    stream: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
) -> Vec<(u8, u8, Vec<u8>)> {
    let mut frames = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        loop {
            let mut head = [0u8; 9];
            if stream.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            if stream.read_exact(&mut payload).await.is_err() {
                return;
            }
            frames.push((head[3], head[4], payload));
        }
    })
    .await;
    frames
}

/// The error code of the GOAWAY in `frames`, if any.
fn goaway_code(frames: &[(u8, u8, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .find(|(kind, _, _)| *kind == GOAWAY)
        .map(|(_, _, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
}

#[tokio::test]
async fn an_http2_connection_that_opens_no_stream_is_closed_with_goaway() {
    let upstream = Server::spawn("v1");
    let http2_idle = Duration::from_millis(300);
    let proxy = web(&upstream, settings(|s| s.timeouts.http2_idle = http2_idle));

    let start = Instant::now();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.write_all(PREFACE).await.unwrap();
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let frames = read_frames(&mut stream, Duration::from_secs(10)).await;
    let elapsed = start.elapsed();
    let reasons: Vec<(&str, u64)> = ["first_byte", "idle", "http2_idle", "header_read"]
        .iter()
        .map(|r| (*r, proxy.connections().timed_out("public", r)))
        .collect();
    assert_eq!(
        goaway_code(&frames),
        Some(0),
        "GOAWAY(NO_ERROR): {frames:?} {reasons:?} {elapsed:?}"
    );
    assert!(elapsed >= http2_idle, "{elapsed:?}");
    assert_eq!(proxy.connections().timed_out("public", "http2_idle"), 1);

    // A connection that serves a stream and then idles is closed the same way.
    let client = Http2::connect(proxy.addr()).await;
    assert_eq!(client.fetch(client::get("any", "/")).await.status, 200);
    assert_eventually!(client.sender().is_closed());
    eprintln!("FIGURE: h2 connection with no stream after its preface closed with GOAWAY after {elapsed:?} (http2Idle {http2_idle:?})");
    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn an_http2_client_that_ignores_pings_is_closed() {
    let upstream = Server::spawn("v1");
    let interval = Duration::from_millis(200);
    let proxy = web(
        &upstream,
        settings(|s| {
            s.timeouts.http2_keep_alive_interval = interval;
            s.timeouts.http2_keep_alive_timeout = interval;
            s.timeouts.http2_idle = Duration::from_secs(30);
        }),
    );
    let start = Instant::now();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.write_all(PREFACE).await.unwrap();
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let frames = read_frames(&mut stream, Duration::from_secs(10)).await;
    let elapsed = start.elapsed();
    let pings = frames
        .iter()
        .filter(|(kind, flags, _)| *kind == PING && flags & 1 == 0)
        .count();
    assert!(pings >= 1, "weir pinged: {frames:?}");
    assert!(
        elapsed < Duration::from_secs(5),
        "closed for the missing PING ack: {elapsed:?}"
    );
    eprintln!("FIGURE: h2 client that never acks PING closed after {elapsed:?} (interval {interval:?} + timeout {interval:?}), {pings} PING sent");
    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn an_http2_rapid_reset_flood_is_capped() {
    const STREAMS: u32 = 20_000;
    let upstream = Server::spawn("v1");
    let proxy = web(&upstream, ListenerSettings::default());

    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let mut sent = 0u32;
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        if write.write_all(&out).await.is_err() {
            return sent;
        }
        let cancel = 8u32.to_be_bytes();
        for batch in 0..STREAMS / 100 {
            let mut out = Vec::new();
            for i in 0..100 {
                let id = 1 + 2 * (batch * 100 + i);
                out.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &get_block()));
                out.extend(frame(RST_STREAM, 0, id, &cancel));
            }
            if write.write_all(&out).await.is_err() {
                break;
            }
            sent += 100;
        }
        sent
    });
    let frames = read_frames(&mut read, Duration::from_secs(20)).await;
    let closed_after = start.elapsed();
    let sent = writer.await.unwrap();
    let code = goaway_code(&frames);
    // ENHANCE_YOUR_CALM (0xb) from the pending-reset cap.
    assert_eq!(
        code,
        Some(0xb),
        "GOAWAY(ENHANCE_YOUR_CALM): {:?}",
        frames.iter().map(|f| f.0).collect::<Vec<_>>()
    );
    let reached = upstream.requests();
    assert!(
        sent < STREAMS,
        "the connection was closed before the flood ended ({sent} sent)"
    );
    // Still healthy.
    let client = Http2::connect(proxy.addr()).await;
    assert_eq!(client.fetch(client::get("any", "/")).await.status, 200);
    eprintln!(
        "FIGURE: rapid reset: GOAWAY(ENHANCE_YOUR_CALM) after {closed_after:?}; {sent} of {STREAMS} HEADERS+RST_STREAM pairs written before the close, {reached} reached the upstream; a new client is served"
    );
    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn an_http2_continuation_flood_is_capped() {
    const LIMIT: usize = 16 * 1024 * 1024;
    let upstream = Server::spawn("v1");
    let proxy = web(&upstream, ListenerSettings::default());

    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out.extend(frame(HEADERS, END_STREAM, 1, &get_block()));
        if write.write_all(&out).await.is_err() {
            return 0;
        }
        // Literal header fields without indexing, new name: 100 bytes each, ~8 KiB per frame,
        // never END_HEADERS.
        let mut field = vec![0x00, 7];
        field.extend_from_slice(b"x-flood");
        field.push(90);
        field.extend(std::iter::repeat_n(b'a', 90));
        let payload: Vec<u8> = field
            .iter()
            .copied()
            .cycle()
            .take(field.len() * 80)
            .collect();
        let continuation = frame(CONTINUATION, 0, 1, &payload);
        let mut sent = 0usize;
        while sent < LIMIT {
            if write.write_all(&continuation).await.is_err() {
                break;
            }
            sent += continuation.len();
        }
        sent
    });
    let frames = read_frames(&mut read, Duration::from_secs(20)).await;
    let closed_after = start.elapsed();
    let sent = writer.await.unwrap();
    assert!(
        goaway_code(&frames).is_some() || frames.is_empty() || sent < LIMIT,
        "closed"
    );
    assert!(
        sent < LIMIT,
        "closed before {LIMIT} bytes of CONTINUATION ({sent} sent)"
    );
    assert_eq!(upstream.requests(), 0);
    let client = Http2::connect(proxy.addr()).await;
    assert_eq!(client.fetch(client::get("any", "/")).await.status, 200);
    eprintln!(
        "FIGURE: CONTINUATION flood: connection closed (GOAWAY code {:?}) after {closed_after:?}, {} KiB of CONTINUATION accepted by the socket before the close (weir's header list cap 32 KiB; kernel buffers hold the rest); a new client is served",
        goaway_code(&frames),
        sent / 1024
    );
    let _ = DATA;
    proxy.shutdown().await;
    upstream.shutdown().await;
}

// === Upgrades ===

fn upgrade_request(protocol: &'static str) -> http::Request<crate::TestBody> {
    let mut request = client::get("any", "/socket");
    let headers = request.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(protocol));
    headers.insert("sec-websocket-version", HeaderValue::from_static("13"));
    headers.insert(
        "sec-websocket-key",
        HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
    );
    request
}

async fn open_tunnel(addr: SocketAddr) -> TokioIo<hyper::upgrade::Upgraded> {
    let mut client = Http1::connect(addr).await;
    let response = client
        .send(upgrade_request("websocket"))
        .await
        .expect("a response");
    assert_eq!(response.status(), 101);
    TokioIo::new(hyper::upgrade::on(response).await.expect("upgraded"))
}

async fn echo(tunnel: &mut TokioIo<hyper::upgrade::Upgraded>, message: &[u8]) {
    tunnel.write_all(message).await.unwrap();
    let mut echoed = vec![0; message.len()];
    tunnel.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, message);
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    let upstream = Server::builder("v1").upgrades().spawn();
    let tunnel_idle = Duration::from_millis(300);
    let proxy = web(
        &upstream,
        settings(|s| s.timeouts.tunnel_idle = tunnel_idle),
    );

    let mut tunnel = open_tunnel(proxy.addr()).await;
    // Traffic keeps it open past the idle time.
    let mut last = Instant::now();
    for _ in 0..4 {
        echo(&mut tunnel, b"ping").await;
        last = Instant::now();
        tokio::time::sleep(tunnel_idle / 3).await;
    }
    assert_eq!(
        proxy.connections().open("public"),
        1,
        "the tunnel counts as a connection"
    );
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), tunnel.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    let closed_after = last.elapsed();
    assert!(closed_after >= tunnel_idle);
    assert_eq!(proxy.connections().timed_out("public", "tunnel_idle"), 1);
    assert_eventually!(proxy.connections().open("public") == 0);
    eprintln!("FIGURE: tunnel kept open by traffic for {:?}, closed {closed_after:?} after its last byte (tunnelIdle {tunnel_idle:?})", tunnel_idle * 4 / 3);
    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_tunnel_is_drained_then_closed_at_shutdown() {
    let upstream = Server::builder("v1").upgrades().spawn();
    let drain = Duration::from_millis(800);
    let proxy = Proxy::builder(proxy::model(WEB, &[("up", upstream.addr())]))
        .drain_timeout(drain)
        .start();
    let addr = proxy.addr();
    let mut tunnel = open_tunnel(addr).await;
    echo(&mut tunnel, b"before").await;

    let start = Instant::now();
    let stopping = tokio::spawn(proxy.shutdown());
    // New connections are no longer accepted…
    assert_eventually!(client::tcp_refused(addr).await);
    // …but the tunnel still works while draining.
    echo(&mut tunnel, b"during the drain").await;
    assert!(!stopping.is_finished(), "shutdown waits for the tunnel");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), tunnel.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    let closed_after = start.elapsed();
    stopping.await.unwrap();
    assert!(closed_after >= drain, "{closed_after:?}");
    eprintln!("FIGURE: a tunnel kept serving during the drain and was closed {closed_after:?} after shutdown began (drain timeout {drain:?})");
    upstream.shutdown().await;
}

#[tokio::test]
async fn an_h2c_upgrade_is_never_tunnelled() {
    let upstream = Server::builder("v1").upgrades().echo_request().spawn();
    let proxy = web(&upstream, ListenerSettings::default());

    let mut client = Http1::connect(proxy.addr()).await;
    let mut request = client::get("any", "/h2c");
    let headers = request.headers_mut();
    headers.insert(
        header::CONNECTION,
        HeaderValue::from_static("Upgrade, HTTP2-Settings"),
    );
    headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
    headers.insert(
        "http2-settings",
        HeaderValue::from_static("AAMAAABkAAQAAP__"),
    );
    let reply = client.fetch(request).await;
    assert_eq!(reply.status, 200, "answered as a plain request");
    assert!(
        reply.echoed_header("upgrade").is_empty(),
        "no Upgrade sent upstream"
    );
    assert!(reply.echoed_header("http2-settings").is_empty());
    // The connection still speaks HTTP/1.1 and is routed.
    assert_eq!(client.get("any", "/after").await.status, 200);

    // `websocket, h2c` offers a forbidden protocol too: not tunnelled either.
    let mut request = upgrade_request("websocket");
    request
        .headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("websocket, h2c"));
    assert_eq!(client.fetch(request).await.status, 200);
    eprintln!("FIGURE: Upgrade: h2c and Upgrade: websocket, h2c → forwarded as plain requests (200, no Upgrade upstream), the connection stays HTTP/1.1");
    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_service_tunnels_only_the_upgrades_it_allows() {
    let upstream = Server::builder("v1").upgrades().echo_request().spawn();
    let proxy = Proxy::start(proxy::model(
        r#"
services:
  - name: web
    stable: {version: v1, upstreams: ["${up}"]}
    upgrades: []
"#,
        &[("up", upstream.addr())],
    ));
    let mut client = Http1::connect(proxy.addr()).await;
    let reply = client.fetch(upgrade_request("websocket")).await;
    assert_eq!(reply.status, 200);
    assert!(reply.echoed_header("upgrade").is_empty());
    eprintln!("FIGURE: upgrades: [] → a WebSocket upgrade is forwarded as a plain request (200)");
    proxy.shutdown().await;
    upstream.shutdown().await;
}

// === The whole of weir ===

#[tokio::test]
async fn the_config_limits_apply_and_are_exported() {
    let upstream = Server::spawn("v1");
    let yaml = crate::weir::fill(
        &format!(
            "listeners:\n  - name: public\n    address: 127.0.0.1:0\n    limits: {{maxConnections: 1}}\n    timeouts: {{headerRead: 200ms}}\nadmin:\n  address: 127.0.0.1:0\n{WEB}"
        ),
        &[("up", upstream.addr())],
    );
    let weir = crate::weir::Weir::start(&yaml).await;
    let mut client = Http1::connect(weir.addr()).await;
    assert_eq!(client.get("any", "/").await.status, 200);
    let mut stream = TcpStream::connect(weir.addr()).await.unwrap();
    assert!(read_to_close(&mut stream, Duration::from_secs(5))
        .await
        .is_empty());
    let admin = weir.admin();
    let shed = r#"weir_connections_shed_total{listener="public",reason="connections"}"#;
    let open = r#"weir_connections_open{listener="public"}"#;
    assert_eq!(crate::admin::metric(admin, shed).await, Some(1.0));
    assert_eq!(crate::admin::metric(admin, open).await, Some(1.0));
    drop(client);
    assert_eventually!(crate::admin::metric(admin, open).await == Some(0.0));
    let reply = raw_exchange(weir.addr(), b"GET / HTTP/1.1\r\nHost: any\r\n").await;
    assert_eq!(status_of(&reply), 408);
    let timed_out = r#"weir_connections_timed_out_total{listener="public",reason="header_read"}"#;
    assert_eventually!(crate::admin::metric(admin, timed_out).await == Some(1.0));
    eprintln!("FIGURE: from the config file: maxConnections 1 sheds the 2nd connection, headerRead 200ms answers 408; {shed} = 1, {timed_out} = 1");
    weir.shutdown().await;
    upstream.shutdown().await;
}

// === Listener settings on reload ===

/// A config with one `public` listener carrying `listener` (indented under it) and the `web`
/// service on `upstream`.
fn reloadable(listener: &str, upstream: SocketAddr) -> String {
    crate::weir::fill(
        &format!(
            "listeners:\n  - name: public\n    address: 127.0.0.1:0\n{listener}admin:\n  address: 127.0.0.1:0\n{WEB}"
        ),
        &[("up", upstream)],
    )
}

/// Rewrites `weir`'s config; waits until a new table is served (not necessarily this one's: the
/// poll and the file watcher may both apply the previous rewrite, so check effects eventually).
async fn reload_with(weir: &crate::weir::Weir, text: &str) {
    let generation = weir.generation();
    // The file watcher (or the 200 ms poll) picks it up once; a forced reload besides could
    // apply it twice, and a later wait could see the second.
    weir.write_atomic(text);
    weir.wait_generation_after(generation, Duration::from_secs(10))
        .await;
}

/// Whether a request forging `X-Forwarded-For`, on a fresh connection, is served with the forged
/// value kept (the peer trusted) — `false` when the connection is shed or the value replaced.
async fn served_and_trusted(addr: SocketAddr) -> bool {
    let reply = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: any\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: close\r\n\r\n",
    )
    .await;
    String::from_utf8_lossy(&reply).contains("203.0.113.7, 127.0.0.1")
}

#[tokio::test]
async fn listener_timeouts_limits_and_trust_apply_to_new_connections_on_reload() {
    let upstream = Server::builder("v1").echo_request().spawn();
    let weir = crate::weir::Weir::start(&reloadable(
        "    limits: {maxConnections: 1}\n",
        upstream.addr(),
    ))
    .await;
    let addr = weir.addr();
    let admin = weir.admin();
    let mut established = Http1::connect(addr).await;
    assert_eq!(established.get("any", "/").await.status, 200);
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert!(
        read_to_close(&mut second, Duration::from_secs(5))
            .await
            .is_empty(),
        "maxConnections 1 sheds the second connection"
    );

    let short = Duration::from_millis(300);
    reload_with(
        &weir,
        &reloadable(
            "    limits: {maxConnections: 3}\n    timeouts: {firstByte: 300ms, idle: 300ms}\n    trustedProxies: [127.0.0.1/32]\n",
            upstream.addr(),
        ),
    )
    .await;
    // maxConnections 3 (a second connection is served) and trustedProxies apply to new
    // connections. (Eventually: the harness's poll and file watcher may both apply a rewrite, so
    // the generation can move before this one is in.)
    assert_eventually!(served_and_trusted(addr).await);
    // firstByte 300ms: a new silent connection is closed by it.
    let start = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(read_to_close(&mut silent, Duration::from_secs(5))
        .await
        .is_empty());
    let silent_closed = start.elapsed();
    assert!(silent_closed >= short && silent_closed < Duration::from_secs(5));
    assert_eventually!(weir_metric(admin, "first_byte").await >= 1.0);
    // idle 300ms: a new keep-alive connection is closed after its request.
    let mut idle = Http1::connect(addr).await;
    assert_eq!(idle.get("any", "/").await.status, 200);
    let start = Instant::now();
    assert_eventually!(idle.is_closed());
    let idle_closed = start.elapsed();
    // The connection accepted before the reload keeps its settings (idle 60s).
    tokio::time::sleep(2 * short).await;
    assert!(
        !established.is_closed(),
        "the old connection keeps its idle timeout"
    );
    assert_eq!(established.get("any", "/").await.status, 200);
    let pending = r#"weir_listener_restart_pending{listener="public"}"#;
    assert_eq!(crate::admin::metric(admin, pending).await, Some(0.0));
    eprintln!(
        "FIGURE: reload of listener settings: maxConnections 1→3 (a 2nd and 3rd connection served), \
         trustedProxies applied to the next connection, firstByte 300ms closed a new silent connection \
         in {silent_closed:?}, idle 300ms closed a new keep-alive one {idle_closed:?} after its answer; the \
         connection from before the reload was still served after {:?} idle",
        2 * short
    );
    drop(established);
    weir.shutdown().await;
    upstream.shutdown().await;
}

/// `weir_connections_timed_out_total{listener="public",reason}`.
async fn weir_metric(admin: SocketAddr, reason: &str) -> f64 {
    let series =
        format!(r#"weir_connections_timed_out_total{{listener="public",reason="{reason}"}}"#);
    crate::admin::metric(admin, &series).await.unwrap_or(0.0)
}

#[tokio::test]
async fn listener_changes_that_need_a_restart_are_reported() {
    let upstream = Server::spawn("v1");
    let original = reloadable("", upstream.addr());
    let weir = crate::weir::Weir::start(&original).await;
    let addr = weir.addr();
    let admin = weir.admin();
    // Another address for `public`, and a new listener: both wait for a restart.
    let moved = crate::weir::fill(
        &format!(
            "listeners:\n  - name: public\n    address: 127.0.0.2:0\n  - name: extra\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n{WEB}"
        ),
        &[("up", upstream.addr())],
    );
    reload_with(&weir, &moved).await;
    let pending =
        |listener: &str| format!(r#"weir_listener_restart_pending{{listener="{listener}"}}"#);
    // The generation moves as the table is published, just before the settings are applied.
    assert_eventually!(crate::admin::metric(admin, &pending("public")).await == Some(1.0));
    assert_eventually!(crate::admin::metric(admin, &pending("extra")).await == Some(1.0));
    // The bound listener keeps serving meanwhile; routes of the reload apply.
    assert_eq!(Http1::connect(addr).await.get("any", "/").await.status, 200);
    // Back to what is served: nothing pending.
    reload_with(&weir, &original).await;
    assert_eventually!(crate::admin::metric(admin, &pending("public")).await == Some(0.0));
    assert_eventually!(crate::admin::metric(admin, &pending("extra")).await == Some(0.0));
    eprintln!("FIGURE: a reload moving a listener and adding one: weir_listener_restart_pending = 1 for both (and a warning each), the bound listener served on; reverted: 0");
    weir.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_certificate_rewritten_on_disk_serves_new_handshakes_after_reload() {
    let ca = crate::certs::TestCa::new();
    let first = ca.leaf(&["secure.example.com"]);
    let second = ca.leaf(&["secure.example.com"]);
    let upstream = Server::spawn("v1");
    let dir = tempfile::tempdir().expect("a temporary directory");
    first.write(dir.path(), "secure");
    let path = dir.path().join("weir.yaml");
    let text = crate::weir::fill(
        &format!(
            "listeners:\n  - name: secure\n    address: 127.0.0.1:0\n    tls:\n      certificates: [{{certFile: secure.crt, keyFile: secure.key}}]\nadmin:\n  address: 127.0.0.1:0\n{WEB}"
        ),
        &[("up", upstream.addr())],
    );
    std::fs::write(&path, &text).expect("write the config");
    let weir = crate::weir::Weir::start_at(dir, path, crate::weir::Options::default()).await;
    let config = client::tls_config(&[ca.der()], &[b"http/1.1"], rustls::ALL_VERSIONS);
    let old = client::tls_connect(weir.addr(), config.clone(), "secure.example.com").await;
    assert_eq!(client::peer_leaf(&old), first.der);

    second.write(weir.dir(), "secure");
    // Picked up by the file watcher (certificate folders are watched) or the poll.
    assert_eventually!(
        client::peer_leaf(
            &client::tls_connect(weir.addr(), config.clone(), "secure.example.com").await
        ) == second.der
    );
    // The session from before keeps working.
    let mut old = Http1::handshake(old).await;
    assert_eq!(old.get("secure.example.com", "/").await.status, 200);
    eprintln!("FIGURE: certificate files rewritten + reload: the next handshake got the new certificate, the session from before was still served");
    weir.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn refused_requests_are_counted_by_listener_and_reason_never_by_version() {
    let upstream = Server::spawn("v1");
    let weir = crate::weir::Weir::start(&reloadable("", upstream.addr())).await;
    let addr = weir.addr();
    let admin = weir.admin();
    let cases: [(&str, &[u8]); 7] = [
        (
            "content_length_with_transfer_encoding",
            b"POST / HTTP/1.1\r\nHost: any\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "bad_transfer_encoding",
            b"POST / HTTP/1.1\r\nHost: any\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
        ),
        ("bare_lf", b"GET / HTTP/1.1\nHost: any\r\n\r\n"),
        (
            "bad_chunk_size",
            b"POST / HTTP/1.1\r\nHost: any\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "duplicate_host",
            b"GET / HTTP/1.1\r\nHost: any\r\nHost: other\r\n\r\n",
        ),
        (
            "bad_host",
            b"GET http://one.example/ HTTP/1.1\r\nHost: two.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "bad_path",
            b"GET /a/../%2e%2e/etc/passwd HTTP/1.1\r\nHost: any\r\nConnection: close\r\n\r\n",
        ),
    ];
    for (reason, raw) in cases {
        let reply = raw_exchange(addr, raw).await;
        assert_eq!(status_of(&reply), 400, "{reason}");
    }
    // A head over maxHeaderBytes (32 KiB): hyper answers 431.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: any\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    assert_eq!(status_of(&raw_exchange(addr, huge.as_bytes()).await), 431);
    // Counted as hyper's connection ends, which may be just after the client saw it close.
    let too_large = r#"weir_requests_refused_total{listener="public",reason="header_too_large"}"#;
    assert_eventually!(crate::admin::metric(admin, too_large).await == Some(1.0));
    let metrics = crate::admin::metrics(admin).await;
    for (reason, _) in cases {
        let series =
            format!(r#"weir_requests_refused_total{{listener="public",reason="{reason}"}}"#);
        assert_eq!(
            crate::metrics::sample(&metrics, &series),
            Some(1.0),
            "{series}"
        );
    }
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("weir_requests_refused_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        refused,
        (cases.len() + 1) as f64,
        "each counted once, under its own reason"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("http_requests_total{") && l.contains("status=\"4")),
        "never against a version"
    );
    assert_eq!(upstream.requests(), 0, "nothing reached the upstream");
    eprintln!(
        "FIGURE: {} refused requests, each counted once in weir_requests_refused_total{{listener,reason}} ({}, header_too_large), 0 in http_requests_total, 0 reached the upstream",
        cases.len() + 1,
        cases.map(|(r, _)| r).join(", ")
    );
    weir.shutdown().await;
    upstream.shutdown().await;
}
