//! Memory protection (issue #7): new connections are shed while the process is over
//! `limits.maxMemory` (established ones keep being served, accepting resumes under the limit), and
//! an HTTP/2 client that never reads its responses makes weir buffer at most
//! `http2MaxSendBufferSize` per stream. Each test prints its figure on stderr (`--nocapture`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use weir_proxy::ListenerSettings;

use crate::client::Http1;
use crate::proxy::{self, Proxy};
use crate::upstream::Server;
use crate::weir::{fill, Weir};

fn config(max_memory: &str, upstream: SocketAddr) -> String {
    fill(
        &format!(
            "listeners:\n  - name: public\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n\
             limits: {{maxMemory: {max_memory}}}\n\
             services:\n  - name: web\n    stable: {{version: v1, upstreams: [\"${{up}}\"]}}\n"
        ),
        &[("up", upstream)],
    )
}

/// Whether a fresh connection is closed without an answer (shed) rather than served.
async fn shed(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return true;
    };
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: any\r\n\r\n")
        .await
        .is_err()
    {
        return true;
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("neither answered nor closed within 5 s"),
    }
}

/// Sets `limits.maxMemory` by rewriting the config and reloading; waits until it is applied.
async fn set_max_memory(weir: &Weir, max_memory: &str, upstream: SocketAddr) {
    let generation = weir.generation();
    // The file watcher (or the 200 ms poll) picks it up once.
    weir.write_atomic(&config(max_memory, upstream));
    weir.wait_generation_after(generation, Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn over_max_memory_new_connections_are_shed_and_established_ones_served() {
    let upstream = Server::spawn("v1");
    let weir = Weir::start(&config("off", upstream.addr())).await;
    let addr = weir.addr();
    let admin = weir.admin();
    let mut established = Http1::connect(addr).await;
    assert_eq!(established.get("any", "/").await.status, 200);
    assert!(!shed(addr).await, "accepting with maxMemory off");

    // A limit far below this process's RSS: the sampler flags it within one interval.
    let start = Instant::now();
    set_max_memory(&weir, "1MiB", upstream.addr()).await;
    crate::assert_eventually!(shed(addr).await);
    let flagged_in = start.elapsed();
    const NEW: usize = 50;
    for _ in 0..NEW {
        assert!(shed(addr).await, "a new connection over maxMemory is shed");
    }
    let mut served = 0;
    for _ in 0..20 {
        let reply = established.get("any", "/").await;
        assert_eq!(reply.status, 200, "the established client is still served");
        served += 1;
    }
    let series = r#"weir_connections_shed_total{listener="public",reason="memory"}"#;
    let counted = crate::admin::metric(admin, series).await.unwrap_or(0.0);
    assert!(counted >= NEW as f64, "{series} = {counted}");
    let connections = r#"weir_connections_shed_total{listener="public",reason="connections"}"#;
    assert_eq!(crate::admin::metric(admin, connections).await, Some(0.0));
    let resident = crate::admin::metric(admin, "weir_memory_resident_bytes")
        .await
        .unwrap_or(0.0);
    assert!(resident > 1_048_576.0, "RSS is exported: {resident}");
    assert_eq!(
        crate::admin::metric(admin, "weir_memory_limit_bytes").await,
        Some(1_048_576.0)
    );

    // Raised by a reload: accepted again.
    let start = Instant::now();
    set_max_memory(&weir, "1TiB", upstream.addr()).await;
    crate::assert_eventually!(!shed(addr).await);
    let resumed_in = start.elapsed();
    assert_eq!(Http1::connect(addr).await.get("any", "/").await.status, 200);
    eprintln!(
        "FIGURE: maxMemory 1MiB (RSS {:.0} MiB): new connections shed {flagged_in:?} after the config file was rewritten, \
         {NEW}/{NEW} further ones shed ({series} = {counted}), {served}/20 requests of the established \
         keep-alive client served; maxMemory 1TiB: accepting again {resumed_in:?} after the rewrite",
        resident / 1_048_576.0
    );
    drop(established);
    weir.shutdown().await;
    upstream.shutdown().await;
}

// === HTTP/2 send buffers ===

/// Set in the child process that runs one proxy and measures its own memory: the
/// `http2MaxSendBufferSize` to use.
const H2_CAP_ENV: &str = "WEIR_TEST_H2_SEND_BUFFER";
/// Where the child writes its result line.
const H2_OUT_ENV: &str = "WEIR_TEST_H2_SEND_BUFFER_OUT";
const H2_CONNECTIONS: usize = 1;
const H2_STREAMS: u32 = 100;

/// An upstream answering every request with an endless chunked body (16 KiB chunks as fast as
/// its socket takes them); counts the bytes it managed to write.
async fn endless_upstream(written: Arc<AtomicU64>) -> SocketAddr {
    let socket = TcpSocket::new_v4().expect("a socket");
    // Small kernel buffers on the upstream side, so what it writes shows what weir holds.
    let _ = socket.set_send_buffer_size(16 * 1024);
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind");
    let listener: TcpListener = socket.listen(1024).expect("listen");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let written = written.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                if stream.write_all(response).await.is_err() {
                    return;
                }
                let mut chunk = b"4000\r\n".to_vec();
                chunk.extend(std::iter::repeat_n(b'x', 16 * 1024));
                chunk.extend_from_slice(b"\r\n");
                while stream.write_all(&chunk).await.is_ok() {
                    written.fetch_add(16 * 1024, Ordering::Relaxed);
                }
            });
        }
    });
    addr
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small").to_be_bytes();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HTTP/2 client that opens [`H2_STREAMS`] `GET` streams with the largest flow-control windows
/// and then never reads a byte (a tiny receive buffer, never drained).
async fn never_reading_client(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    let _ = socket.set_recv_buffer_size(4096);
    let mut stream = socket.connect(addr).await.expect("connect");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 2^31-1 for every stream; the connection window too.
    let mut settings = vec![0, 4];
    settings.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    out.extend(frame(4, 0, 0, &settings));
    out.extend(frame(8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes()));
    for i in 0..H2_STREAMS {
        // GET http://any/: static-table indices, `:authority` a literal without indexing.
        let block = [0x82, 0x86, 0x84, 0x01, 3, b'a', b'n', b'y'];
        out.extend(frame(1, 0x1 | 0x4, 1 + 2 * i, &block));
    }
    stream.write_all(&out).await.expect("send the requests");
    stream
}

/// What one proxy with `cap` holds for never-reading clients: (RSS growth, upstream bytes
/// written), measured in a child process so nothing else runs in it.
async fn measure_in_child(cap: u32) -> (u64, u64) {
    let exe = std::env::current_exe().expect("the test binary");
    let out_dir = tempfile::tempdir().expect("a temporary folder");
    let out = out_dir.path().join("result");
    let out_path = out.clone();
    let child = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args([
                "tests::edge_memory::child_process_h2_send_buffer",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(H2_CAP_ENV, cap.to_string())
            .env(H2_OUT_ENV, &out_path)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run the child process")
    })
    .await
    .expect("the child process ran");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(child.status.success(), "child process failed: {text}");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("H2-SEND-BUFFER "))
        .unwrap_or_else(|| panic!("no result line from the child process: {text}"));
    let mut fields = line
        .split_whitespace()
        .map(|f| f.parse::<u64>().expect("a number"));
    let rss = fields.next().expect("RSS growth");
    let written = fields.next().expect("bytes written");
    (rss, written)
}

#[tokio::test]
async fn clients_that_never_read_http2_responses_get_at_most_the_send_buffer_per_stream() {
    let capped = 32 * 1024;
    let hyper_default = 400 * 1024;
    let (rss, written) = measure_in_child(capped).await;
    let (rss_default, written_default) = measure_in_child(hyper_default).await;
    let streams = H2_CONNECTIONS as u64 * u64::from(H2_STREAMS);
    eprintln!(
        "FIGURE: {streams} HTTP/2 streams of clients that never read, endless upstream bodies: \
         http2MaxSendBufferSize 32 KiB (default) → weir RSS +{:.1} MiB ({} KiB per stream), upstreams \
         wrote {:.1} MiB; hyper's 400 KiB → RSS +{:.1} MiB ({} KiB per stream), upstreams wrote {:.1} MiB",
        rss as f64 / 1_048_576.0,
        rss / streams / 1024,
        written as f64 / 1_048_576.0,
        rss_default as f64 / 1_048_576.0,
        rss_default / streams / 1024,
        written_default as f64 / 1_048_576.0,
    );
    // Per stream: the cap, plus the upstream connection's read buffer (up to 256 KiB, which holds
    // the chunk the stream is sending) and the stream's own state; hyper's 400 KiB default adds
    // its difference on top.
    assert!(
        rss / streams < 320 * 1024,
        "{} KiB per stream with a 32 KiB cap",
        rss / streams / 1024
    );
    assert!(
        rss * 2 < rss_default,
        "the cap bounds what weir holds: {rss} vs {rss_default} bytes"
    );
}

/// Not a test on its own: the measuring side of
/// [`clients_that_never_read_http2_responses_get_at_most_the_send_buffer_per_stream`], run in a
/// child process. Does nothing unless [`H2_CAP_ENV`] is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_h2_send_buffer() {
    let Ok(cap) = std::env::var(H2_CAP_ENV) else {
        return;
    };
    let cap: u32 = cap.parse().expect("a size");
    let out = std::env::var(H2_OUT_ENV).expect("where to write the result");
    let written = Arc::new(AtomicU64::new(0));
    let upstream = endless_upstream(written.clone()).await;
    let proxy = Proxy::builder(proxy::model(
        "services:\n  - name: web\n    stable: {version: v1, upstreams: [\"${up}\"]}\n",
        &[("up", upstream)],
    ))
    .listener_settings("public", {
        let mut settings = ListenerSettings::default();
        settings.limits.http2_max_send_buffer_size = cap;
        settings
    })
    .start();
    let before = resident_bytes();
    let mut clients = Vec::new();
    for _ in 0..H2_CONNECTIONS {
        clients.push(never_reading_client(proxy.addr()).await);
    }
    // Until the upstreams are blocked: nothing more written for 1 s (at most 20 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = u64::MAX;
    let mut stable_since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = written.load(Ordering::Relaxed);
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_secs(1) && now > 0 {
            break;
        }
    }
    let grown = resident_bytes().saturating_sub(before);
    std::fs::write(
        &out,
        format!(
            "H2-SEND-BUFFER {grown} {}\n",
            written.load(Ordering::Relaxed)
        ),
    )
    .expect("write the result");
    drop(clients);
    proxy.shutdown().await;
}

/// This process's resident memory in bytes.
fn resident_bytes() -> u64 {
    weir_control::memory::resident_bytes().expect("VmRSS in /proc/self/status")
}
