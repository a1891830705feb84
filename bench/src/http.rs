//! Blocking HTTP for readiness checks, admin calls and nginx `stub_status` (ureq, a fresh
//! connection per call), a TCP connect probe, and free-port picking.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

/// A response: status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// `GET path` on a fresh connection; each step (connect, send, head, body) times out after
/// `timeout`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response> {
    request(addr, "GET", path, timeout)
}

/// `method path` on a fresh connection (no body), its response read to the end; each step times
/// out after `timeout`. Any status is a response (the caller judges it).
pub fn request(addr: SocketAddr, method: &str, path: &str, timeout: Duration) -> Result<Response> {
    // No idle connections kept: every call (a latency probe in `weir-bench reload`) pays for
    // its connection, as a fresh client would.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        // Per step, not `timeout_global`: a global timeout makes ureq resolve the address on a
        // new thread per call (≈20× the latency of a call; see bench/README.md).
        .timeout_connect(Some(timeout))
        .timeout_send_request(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_recv_body(Some(timeout))
        .http_status_as_error(false)
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .user_agent("weir-bench")
        // Small buffers (the default is 128 KiB each, allocated per agent): a call's latency
        // tripled with them in a debug build; weir's, nginx's and HAProxy's heads fit in 4 KiB.
        .input_buffer_size(4 * 1024)
        .output_buffer_size(4 * 1024)
        .build()
        .into();
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(())
        .with_context(|| format!("bad request {method} {path}"))?;
    let mut response = agent
        .run(request)
        .with_context(|| format!("{method} {path} to {addr} failed"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("cannot read the response to {method} {path} from {addr}"))?;
    Ok(Response { status, body })
}

/// Whether something accepts TCP connections on `addr`.
pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// `n` distinct free TCP ports on 127.0.0.1: bound to port 0 together, read back, released.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0"))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr().context("cannot read a bound port")?.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{Read, Write};

    /// A server answering each connection with the next of `responses` (raw bytes), after
    /// reading the request head.
    fn serve(responses: Vec<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for response in responses {
                let (mut socket, _) = listener.accept().unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = socket.write_all(response);
            }
        });
        addr
    }

    #[test]
    fn plain_and_chunked_responses_of_any_status() {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nstable\n",
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ncana\r\n3\r\nry\n\r\n0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        ]);
        let plain = get(addr, "/", Duration::from_secs(5)).unwrap();
        assert_eq!((plain.status, plain.body.as_str()), (200, "stable\n"));
        let chunked = get(addr, "/", Duration::from_secs(5)).unwrap();
        assert_eq!((chunked.status, chunked.body.as_str()), (503, "canary\n"));
        let posted = request(
            addr,
            "POST",
            "/api/v1/services/x/pause",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!((posted.status, posted.body.as_str()), (404, ""));
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let started = tokio::time::Instant::now();
        assert!(get(addr, "/", Duration::from_millis(300)).is_err());
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "{took:?}");
        eprintln!(
            "bench http: a server that never answers fails the call after {took:?} (timeout 300ms)"
        );
        drop(listener);
    }

    /// The reload benchmark's probe, timed: `cargo test -p weir-bench --release -- --ignored
    /// --nocapture call_latency` (see bench/README.md for both clients' figures).
    #[test]
    #[ignore = "a measurement"]
    fn call_latency() {
        const CALLS: usize = 2_000;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for socket in listener.incoming() {
                let Ok(mut socket) = socket else { continue };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                );
            }
        });
        let mut took: Vec<Duration> = (0..CALLS)
            .map(|_| {
                let at = tokio::time::Instant::now();
                let response = get(addr, "/healthz", Duration::from_secs(5)).unwrap();
                assert_eq!(response.status, 200);
                at.elapsed()
            })
            .collect();
        took.sort_unstable();
        eprintln!(
            "bench http: {CALLS} GETs on fresh connections: median {:?}, p99 {:?}",
            took[CALLS / 2],
            took[CALLS * 99 / 100]
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(4).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
    }
}
