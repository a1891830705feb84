//! A demo and test HTTP backend: answers every request `200` naming its version
//! (`x-version: v2`, body `{"version":"v2","color":"#2e86de"}`), except for a configurable,
//! exactly paced fraction that answers `500`, after a configurable added latency.
//!
//! Both knobs change while it runs, from code ([`Backend::set_error_rate`],
//! [`Backend::set_latency`]) or over HTTP on the same port, like the rollouts-demo slider:
//!
//! ```text
//! curl -X POST 'http://127.0.0.1:PORT/__demo/errors?rate=0.5'   # every other request answers 500
//! curl -X POST 'http://127.0.0.1:PORT/__demo/latency?ms=200'    # 200 ms more per request
//! curl 'http://127.0.0.1:PORT/__demo'                           # the knobs and the counters
//! ```
//!
//! Errors are paced, not random: with rate `r`, the `n`-th request after the rate was set fails
//! exactly when `floor(n·r)` goes up, so 0.5 fails every second request and 0.1 every tenth.
//! `/__demo` requests are neither counted nor failed.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::task::{JoinHandle, JoinSet};

/// The header naming the version that answered.
pub const VERSION_HEADER: HeaderName = HeaderName::from_static("x-version");

/// The path prefix of the control endpoints.
const CONTROL_PREFIX: &str = "/__demo";

/// One part per million: the error rate's resolution.
const MILLION: u64 = 1_000_000;

/// Colours handed out to versions, picked by a hash of the version label.
const PALETTE: [&str; 6] = [
    "#2e86de", "#10ac84", "#ee5253", "#ff9f43", "#8854d0", "#feca57",
];

/// A running backend. Dropping it stops it too (without waiting).
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

/// Requests and errors served so far (`/__demo` requests excluded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Requests answered or being answered.
    pub requests: u64,
    /// Requests answered `500` on purpose.
    pub errors: u64,
}

/// What the handlers share with the [`Backend`] handle.
struct Shared {
    version: String,
    color: &'static str,
    requests: AtomicU64,
    errors: AtomicU64,
    latency_us: AtomicU64,
    pacer: Mutex<Pacer>,
}

/// Decides which requests fail: `acc` gains `ppm` per request and a request fails each time it
/// reaches a million.
#[derive(Clone, Copy, Debug, Default)]
struct Pacer {
    ppm: u64,
    acc: u64,
}

// === impl Backend ===

impl Backend {
    /// Serves `version` on `listener` (HTTP/1.1, keep-alive) until [`Backend::shutdown`] or drop.
    /// Must be called within a tokio runtime.
    pub fn spawn(version: &str, listener: std::net::TcpListener) -> io::Result<Backend> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let shared = Arc::new(Shared {
            version: version.to_string(),
            color: color_of(version),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            pacer: Mutex::new(Pacer::default()),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Backend {
            addr,
            shared,
            task: Some(task),
        })
    }

    /// Serves `version` on a fresh `127.0.0.1` port. Must be called within a tokio runtime.
    pub fn bind(version: &str) -> io::Result<Backend> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        Backend::spawn(version, listener)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The version label it answers with.
    pub fn version(&self) -> &str {
        &self.shared.version
    }

    /// The colour in its answers (`#2e86de`).
    pub fn color(&self) -> &'static str {
        self.shared.color
    }

    /// Makes this fraction of the requests from now on answer `500`, evenly spaced: 0.5 fails
    /// every second request, starting with the second. Clamped to `0.0..=1.0`; NaN means 0.
    pub fn set_error_rate(&self, rate: f64) {
        self.shared.set_error_rate(rate);
    }

    /// The fraction of requests that answer `500`, to a millionth.
    pub fn error_rate(&self) -> f64 {
        self.shared.error_rate()
    }

    /// Adds this delay before every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.set_latency(latency);
    }

    /// The added delay.
    pub fn latency(&self) -> Duration {
        self.shared.latency()
    }

    /// Requests and errors so far.
    pub fn stats(&self) -> BackendStats {
        self.shared.stats()
    }

    /// Stops accepting and closes every connection (in-flight requests are cut off).
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("version", &self.shared.version)
            .field("addr", &self.addr)
            .field("error_rate", &self.error_rate())
            .field("latency", &self.latency())
            .field("stats", &self.stats())
            .finish()
    }
}

/// Accepts connections until aborted; aborting drops the set, which aborts every connection.
async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::debug!(%error, "demo backend: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(shared.handle(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// === impl Shared ===

impl Shared {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if path == CONTROL_PREFIX || path.starts_with("/__demo/") {
            return self.control(request.method(), path, request.uri().query());
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        // Decided on arrival, so the pattern follows the arrival order even with latency.
        let fail = self.next_fails();
        let latency = self.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if fail {
            self.errors.fetch_add(1, Ordering::Relaxed);
            let body = format!(
                "{{\"version\":\"{}\",\"error\":\"injected failure\"}}\n",
                json_escape(&self.version)
            );
            self.response(StatusCode::INTERNAL_SERVER_ERROR, body)
        } else {
            let body = format!(
                "{{\"version\":\"{}\",\"color\":\"{}\"}}\n",
                json_escape(&self.version),
                self.color
            );
            self.response(StatusCode::OK, body)
        }
    }

    /// `POST /__demo/errors?rate=R`, `POST /__demo/latency?ms=N`, `GET /__demo`.
    fn control(&self, method: &Method, path: &str, query: Option<&str>) -> Response<Full<Bytes>> {
        let param = |name: &str| {
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.into_owned())
        };
        match (method, path) {
            (&Method::GET, "/__demo" | "/__demo/") => self.state_response(),
            (&Method::POST, "/__demo/errors") => {
                match param("rate").and_then(|v| v.parse::<f64>().ok()) {
                    Some(rate) if (0.0..=1.0).contains(&rate) => {
                        self.set_error_rate(rate);
                        tracing::info!(version = %self.version, rate, "demo backend: error rate set");
                        self.state_response()
                    }
                    _ => self.response(
                        StatusCode::BAD_REQUEST,
                        "expected ?rate=R with R between 0 and 1, e.g. /__demo/errors?rate=0.5\n"
                            .into(),
                    ),
                }
            }
            (&Method::POST, "/__demo/latency") => {
                match param("ms").and_then(|v| v.parse::<u64>().ok()) {
                    Some(ms) if ms <= 600_000 => {
                        self.set_latency(Duration::from_millis(ms));
                        tracing::info!(version = %self.version, ms, "demo backend: latency set");
                        self.state_response()
                    }
                    _ => self.response(
                        StatusCode::BAD_REQUEST,
                        "expected ?ms=N with N between 0 and 600000, e.g. /__demo/latency?ms=200\n"
                            .into(),
                    ),
                }
            }
            (_, "/__demo" | "/__demo/" | "/__demo/errors" | "/__demo/latency") => self.response(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET /__demo, POST /__demo/errors?rate=R, POST /__demo/latency?ms=N\n".into(),
            ),
            _ => self.response(
                StatusCode::NOT_FOUND,
                "GET /__demo, POST /__demo/errors?rate=R, POST /__demo/latency?ms=N\n".into(),
            ),
        }
    }

    fn state_response(&self) -> Response<Full<Bytes>> {
        let stats = self.stats();
        let body = format!(
            "{{\"version\":\"{}\",\"errorRate\":{},\"latencyMs\":{},\"requests\":{},\"errors\":{}}}\n",
            json_escape(&self.version),
            self.error_rate(),
            self.latency().as_millis(),
            stats.requests,
            stats.errors
        );
        self.response(StatusCode::OK, body)
    }

    fn response(&self, status: StatusCode, body: String) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        if let Ok(version) = HeaderValue::from_str(&self.version) {
            headers.insert(VERSION_HEADER, version);
        }
        let content_type =
            if status == StatusCode::OK || status == StatusCode::INTERNAL_SERVER_ERROR {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }

    fn pacer(&self) -> std::sync::MutexGuard<'_, Pacer> {
        self.pacer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_fails(&self) -> bool {
        let mut pacer = self.pacer();
        pacer.acc += pacer.ppm;
        if pacer.acc >= MILLION {
            pacer.acc -= MILLION;
            true
        } else {
            false
        }
    }

    fn set_error_rate(&self, rate: f64) {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        // In range by the clamp: the cast cannot truncate.
        let ppm = (rate * MILLION as f64).round() as u64;
        *self.pacer() = Pacer { ppm, acc: 0 };
    }

    fn error_rate(&self) -> f64 {
        self.pacer().ppm as f64 / MILLION as f64
    }

    fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.store(us, Ordering::Relaxed);
    }

    fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }

    fn stats(&self) -> BackendStats {
        BackendStats {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// A stable colour for a version label.
fn color_of(version: &str) -> &'static str {
    let hash = version
        .bytes()
        .fold(0usize, |hash, byte| hash.wrapping_add(usize::from(byte)));
    PALETTE[hash % PALETTE.len()]
}

/// Escapes `"` and `\` and control characters for a JSON string.
fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Empty};
    use tokio::net::TcpStream;

    use super::*;

    /// One keep-alive connection to `addr`.
    async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        sender
    }

    async fn send(
        sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        method: Method,
        path: &str,
    ) -> (StatusCode, Option<String>, String) {
        sender.ready().await.expect("ready");
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "backend")
            .body(Empty::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let status = response.status();
        let version = response
            .headers()
            .get(VERSION_HEADER)
            .map(|v| v.to_str().expect("ascii").to_string());
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            version,
            String::from_utf8(body.to_vec()).expect("utf-8"),
        )
    }

    #[tokio::test]
    async fn answers_with_its_version() {
        let backend = Backend::bind("v2").expect("bind");
        let mut sender = connect(backend.addr()).await;
        let (status, version, body) = send(&mut sender, Method::GET, "/anything").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(version.as_deref(), Some("v2"));
        assert_eq!(body, "{\"version\":\"v2\",\"color\":\"#2e86de\"}\n");
        assert_eq!(
            backend.stats(),
            BackendStats {
                requests: 1,
                errors: 0
            }
        );
        backend.shutdown().await;
    }

    #[tokio::test]
    async fn error_rate_is_exact() {
        let backend = Backend::bind("v3").expect("bind");
        let mut sender = connect(backend.addr()).await;
        backend.set_error_rate(0.5);
        let mut statuses = Vec::new();
        for _ in 0..10 {
            statuses.push(send(&mut sender, Method::GET, "/").await.0.as_u16());
        }
        assert_eq!(statuses, [200, 500, 200, 500, 200, 500, 200, 500, 200, 500]);
        assert_eq!(
            backend.stats(),
            BackendStats {
                requests: 10,
                errors: 5
            }
        );

        backend.set_error_rate(0.1);
        let mut failed = Vec::new();
        for n in 1..=30 {
            if send(&mut sender, Method::GET, "/").await.0 == StatusCode::INTERNAL_SERVER_ERROR {
                failed.push(n);
            }
        }
        assert_eq!(failed, [10, 20, 30], "0.1 fails every tenth request");

        backend.set_error_rate(1.0);
        assert_eq!(
            send(&mut sender, Method::GET, "/").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        backend.set_error_rate(0.0);
        assert_eq!(send(&mut sender, Method::GET, "/").await.0, StatusCode::OK);
        backend.set_error_rate(f64::NAN);
        assert_eq!(backend.error_rate(), 0.0);
        backend.set_error_rate(7.0);
        assert_eq!(backend.error_rate(), 1.0);
    }

    #[tokio::test]
    async fn http_knobs_change_errors_and_latency() {
        let backend = Backend::bind("v1").expect("bind");
        let mut sender = connect(backend.addr()).await;

        let (status, _, body) = send(&mut sender, Method::POST, "/__demo/errors?rate=0.5").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("\"errorRate\":0.5"), "{body}");
        assert_eq!(backend.error_rate(), 0.5);

        let (status, _, body) = send(&mut sender, Method::POST, "/__demo/latency?ms=150").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(backend.latency(), Duration::from_millis(150));

        let started = tokio::time::Instant::now();
        assert_eq!(send(&mut sender, Method::GET, "/").await.0, StatusCode::OK);
        assert_eq!(
            send(&mut sender, Method::GET, "/").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "latency applies to every answer"
        );

        for bad in [
            "/__demo/errors?rate=2",
            "/__demo/errors",
            "/__demo/latency?ms=x",
        ] {
            let (status, _, _) = send(&mut sender, Method::POST, bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        }
        let (status, _, _) = send(&mut sender, Method::GET, "/__demo/errors?rate=0").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

        let (status, _, body) = send(&mut sender, Method::GET, "/__demo").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            "{\"version\":\"v1\",\"errorRate\":0.5,\"latencyMs\":150,\"requests\":2,\"errors\":1}\n",
            "control requests are not counted"
        );
        backend.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_closes_the_port() {
        let backend = Backend::bind("v1").expect("bind");
        let addr = backend.addr();
        let mut sender = connect(addr).await;
        assert_eq!(send(&mut sender, Method::GET, "/").await.0, StatusCode::OK);
        backend.shutdown().await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "nothing listens any more"
        );
        sender
            .ready()
            .await
            .expect_err("the open connection was closed");
    }
}
