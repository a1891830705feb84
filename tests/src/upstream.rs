//! Test upstreams: HTTP/1.1 servers on `127.0.0.1:0` that name their version in every answer
//! (`x-version: v1` and body `v1`), count requests, and can be slow, fail, echo the request, stream
//! a large body, or accept `Upgrade`s and echo bytes.
//!
//! ```text
//! let v1 = upstream::Server::builder("v1").spawn();
//! let slow = upstream::Server::builder("v2").delay(Duration::from_millis(500)).spawn();
//! let broken = upstream::Server::builder("v2").fail(Failure::ResetBeforeResponse).spawn();
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use crate::body::{fnv1a, TestBody};

/// How a failing upstream fails. Each connection serves one request and then fails it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Reads the request head, then closes the connection (FIN) without answering.
    CloseBeforeResponse,
    /// Reads the request head, then resets the connection (RST, zero linger) without answering.
    ResetBeforeResponse,
    /// Reads the request head, answers `200` announcing `Content-Length: 65536`, sends
    /// [`MID_RESPONSE_SENT`] bytes of it, then closes the connection.
    CloseMidResponse,
}

/// How many body bytes [`Failure::CloseMidResponse`] sends before closing.
pub const MID_RESPONSE_SENT: usize = 1000;

/// What a healthy upstream answers with.
#[derive(Clone, Debug)]
enum Answer {
    /// Body = the version label.
    Version,
    /// These chunks, `Transfer-Encoding: chunked`.
    Chunks(Vec<Bytes>),
    /// A JSON description of the request (see [`Builder::echo_request`]).
    EchoRequest,
    /// A chunked body that never ends (see [`Builder::endless_body`]).
    Endless,
}

/// Configures an upstream before [`Builder::spawn`].
#[derive(Clone, Debug)]
pub struct Builder {
    version: String,
    delay: Duration,
    failure: Option<Failure>,
    answer: Answer,
    headers: Vec<(HeaderName, HeaderValue)>,
    upgrades: bool,
    status: StatusCode,
}

impl Builder {
    /// Waits this long after receiving a request head before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Fails every request this way instead of answering.
    pub fn fail(mut self, failure: Failure) -> Self {
        self.failure = Some(failure);
        self
    }

    /// Answers with a JSON object describing the request it received, after reading its whole body:
    /// `{"method", "uri", "version", "headers": [[name, value], ...], "body_len", "body_fnv1a"}`
    /// (header names lower-case, in received order, repeated names kept).
    pub fn echo_request(mut self) -> Self {
        self.answer = Answer::EchoRequest;
        self
    }

    /// Answers with these chunks (no `Content-Length`, so HTTP/1.1 chunked encoding).
    pub fn chunked_body(mut self, chunks: Vec<Bytes>) -> Self {
        self.answer = Answer::Chunks(chunks);
        self
    }

    /// Answers with a chunked body that never ends (16 KiB chunks as fast as the peer reads them),
    /// until the peer closes the connection.
    pub fn endless_body(mut self) -> Self {
        self.answer = Answer::Endless;
        self
    }

    /// Answers every request with this status (default 200).
    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Adds a header to every response (e.g. hop-by-hop ones the proxy must strip).
    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
        self
    }

    /// Accepts `Connection: upgrade` requests with `101 Switching Protocols` and then echoes every
    /// byte it receives on the upgraded connection. Without this, upgrade requests get a normal
    /// answer (the upstream refuses the upgrade).
    pub fn upgrades(mut self) -> Self {
        self.upgrades = true;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving on the current tokio runtime.
    pub fn spawn(self) -> Server {
        self.serve(crate::bind_ephemeral())
    }

    /// Binds `addr` (e.g. `127.0.0.2` and the port of another server, so that one host name
    /// with one port stands for both); `None` if it cannot be bound.
    pub fn spawn_at(self, addr: SocketAddr) -> Option<Server> {
        let listener = std::net::TcpListener::bind(addr).ok()?;
        Some(self.serve(listener))
    }

    fn serve(self, std_listener: std::net::TcpListener) -> Server {
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("register listener");
        let state = Arc::new(State::default());
        let config = Arc::new(self);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            listener,
            config.clone(),
            state.clone(),
            stop_rx,
        ));
        Server {
            addr,
            version: config.version.clone(),
            state,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }
}

/// A running test upstream. Dropping it stops it (aborting its connections); [`Server::shutdown`]
/// does the same and waits.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    version: String,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct State {
    requests: AtomicUsize,
    connections: AtomicUsize,
    /// Tunnels of upgraded connections, which outlive their HTTP connection task.
    tunnels: Mutex<Vec<AbortHandle>>,
}

impl Server {
    /// A builder for an upstream answering as `version`.
    pub fn builder(version: &str) -> Builder {
        Builder {
            version: version.to_string(),
            delay: Duration::ZERO,
            failure: None,
            answer: Answer::Version,
            headers: Vec::new(),
            upgrades: false,
            status: StatusCode::OK,
        }
    }

    /// Starts a plain upstream answering as `version`.
    pub fn spawn(version: &str) -> Server {
        Server::builder(version).spawn()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The version label it answers with.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Request heads received so far (counted before any delay or failure).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Stops accepting, aborts every connection and tunnel, and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        self.stop_now();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for tunnel in self
            .state
            .tunnels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            tunnel.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_now();
        if let Some(task) = self.task.take() {
            // Aborting the accept loop drops its JoinSet, which aborts every connection.
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    config: Arc<Builder>,
    state: Arc<State>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                state.connections.fetch_add(1, Ordering::SeqCst);
                connections.spawn(serve(stream, config.clone(), state.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

async fn serve(stream: TcpStream, config: Arc<Builder>, state: Arc<State>) {
    if let Some(failure) = config.failure {
        fail(stream, failure, &config, &state).await;
        return;
    }
    let service = {
        let state = state.clone();
        service_fn(move |request| answer(config.clone(), state.clone(), request))
    };
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

async fn fail(mut stream: TcpStream, failure: Failure, config: &Builder, state: &State) {
    // Read the request head (the proxy sends no body in these tests).
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    if !config.delay.is_zero() {
        tokio::time::sleep(config.delay).await;
    }
    match failure {
        Failure::CloseBeforeResponse => {
            let _ = stream.shutdown().await;
        }
        Failure::ResetBeforeResponse => {
            let _ = stream.set_zero_linger();
        }
        Failure::CloseMidResponse => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 65536\r\nx-version: {}\r\n\r\n",
                config.version
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&[b'x'; MID_RESPONSE_SENT]).await;
            let _ = stream.flush().await;
            let _ = stream.shutdown().await;
        }
    }
    drop(stream);
}

async fn answer(
    config: Arc<Builder>,
    state: Arc<State>,
    mut request: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    if !config.delay.is_zero() {
        tokio::time::sleep(config.delay).await;
    }
    if config.upgrades && wants_upgrade(&request) {
        let protocol = request.headers()[header::UPGRADE].clone();
        let on_upgrade = hyper::upgrade::on(&mut request);
        let tunnel = tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut read, &mut write).await;
        });
        state
            .tunnels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tunnel.abort_handle());
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, protocol)
            .header("x-version", config.version.as_str())
            .body(TestBody::empty())
            .expect("valid response");
        return Ok(response);
    }
    let body = match &config.answer {
        Answer::Version => TestBody::full(config.version.clone()),
        Answer::Chunks(chunks) => TestBody::chunked(chunks.iter().cloned()),
        Answer::EchoRequest => TestBody::full(echo(request).await),
        Answer::Endless => TestBody::endless(Bytes::from(vec![b'x'; 16 * 1024])),
    };
    let mut response = Response::builder()
        .status(config.status)
        .header("x-version", config.version.as_str())
        .body(body)
        .expect("valid response");
    for (name, value) in &config.headers {
        response.headers_mut().append(name.clone(), value.clone());
    }
    Ok(response)
}

fn wants_upgrade<B>(request: &Request<B>) -> bool {
    request.headers().contains_key(header::UPGRADE)
        && request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

async fn echo(request: Request<Incoming>) -> String {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let headers: Vec<serde_json::Value> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            serde_json::json!([name.as_str(), String::from_utf8_lossy(value.as_bytes())])
        })
        .collect();
    serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
        "body_fnv1a": format!("{:016x}", fnv1a(&body)),
    })
    .to_string()
}
