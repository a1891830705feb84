//! The admin listener: `/metrics` (Prometheus), `/healthz` (alive), `/readyz` (config loaded and
//! listeners bound), and the rollout API under `/api/v1` (JSON, camelCase; server-sent events at
//! `/api/v1/events`; the automatic certificates at `GET /api/v1/acme`; per-version series at
//! `GET /api/v1/services/{name}/series?window=15m` and observed shares at
//! `GET /api/v1/traffic?window=10s`), and the operator dashboard at `/` ([`super::dashboard`]). With `admin.tokenFile`,
//! every mutation needs `Authorization: Bearer TOKEN`.
//!
//! Who gets in:
//! - every request must name the admin API itself in `Host` (and in an absolute-form URI): its own
//!   `IP:PORT`, `localhost:PORT`, or a name in `admin.allowedHosts`; else 421 (DNS rebinding);
//!   a repeated or missing `Host` is 400;
//! - a mutation (any method but `GET`, `HEAD`, `OPTIONS`) that a browser marks as cross-origin
//!   (`Sec-Fetch-Site` other than `same-origin`/`none`, or an `Origin` that is not the admin's
//!   own) is refused with 403, token or not; clients that send neither header (the CLI, curl)
//!   are not browsers and pass;
//! - at most `admin.maxConnections` connections (more are answered 503 and closed), at most
//!   `admin.maxEventSubscribers` event streams (503), and `admin.headerReadTimeout` to send a
//!   request head or finish a TLS handshake; idle keep-alive connections close after it too.
//!
//! The token file is read off the control thread, and again only when its size, modification
//! time or inode change (or it changed too recently to trust the time stamp).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch, Semaphore};

use crate::engine::driver::{CommandError, Handle};
use crate::engine::rollout::Command;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Every metric weir exports.
    pub registry: Arc<Registry>,
    /// True once the config is loaded and the listeners are bound.
    pub ready: Arc<AtomicBool>,
    /// The driver: status, events, commands.
    pub driver: Handle,
    /// The bearer token file (`admin.tokenFile`), re-read when it changes so it can be rotated.
    pub token: Option<PathBuf>,
    /// `admin.allowedHosts`: `Host` values accepted besides the admin's own address.
    pub allowed_hosts: Vec<String>,
    /// `admin.maxEventSubscribers`.
    pub max_event_subscribers: usize,
    /// Automatic certificates: `GET /api/v1/acme`.
    pub acme: crate::acme::Acme,
    /// The dashboard's per-version series: `GET /api/v1/services/{name}/series`.
    pub series: crate::series::Series,
}

/// How the admin listener accepts connections.
#[derive(Clone)]
pub struct ServeOptions {
    /// `admin.maxConnections`: more are answered 503 and closed.
    pub max_connections: usize,
    /// `admin.headerReadTimeout`: for a request head, an idle keep-alive connection, a TLS handshake.
    pub header_read_timeout: Duration,
    /// `admin.tls`: serve HTTPS (HTTP/1.1 only).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

type Body = BoxBody<Bytes, Infallible>;

/// How many connections over the limit may be answered 503 at once; beyond that they are just
/// closed.
const MAX_REFUSALS: usize = 64;

/// How long a refused connection may take to send its request and read the 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest request head (and read buffer) an admin connection may use.
const MAX_BUF_SIZE: usize = 64 * 1024;

/// Everything a connection task shares.
struct Shared {
    state: AdminState,
    token: Option<Arc<TokenFile>>,
    subscribers: Arc<Semaphore>,
}

/// Where a request came in.
#[derive(Clone, Copy)]
struct Conn {
    /// The connection's local address (the admin address the client reached).
    local: SocketAddr,
    tls: bool,
}

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Arc::new(Shared {
        token: state
            .token
            .clone()
            .map(|path| Arc::new(TokenFile::new(path))),
        subscribers: Arc::new(Semaphore::new(state.max_event_subscribers.max(1))),
        state,
    });
    let connections = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let tls = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let timeout = options.header_read_timeout;
    // Dropped when this function returns or is cancelled: every open connection (keep-alive
    // requests, event streams) then ends too, so a stopped admin API does not go on answering.
    let (_open, open) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, say: do not spin; the limit frees some soon.
                tracing::warn!(%error, "admin listener cannot accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let conn = Conn {
            local,
            tls: tls.is_some(),
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over the limit: answer 503 if few are being refused, else just close.
            let Ok(refusal) = refusals.clone().try_acquire_owned() else {
                continue;
            };
            let limit = options.max_connections;
            let tls = tls.clone();
            tokio::spawn(async move {
                let refuse = async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                refuse_connection(stream, limit).await;
                            }
                        }
                        None => refuse_connection(stream, limit).await,
                    }
                };
                let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refuse).await;
                drop(refusal);
            });
            continue;
        };
        let shared = shared.clone();
        let tls = tls.clone();
        let mut open = open.clone();
        tokio::spawn(async move {
            let connection = async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(Ok(stream)) =
                            tokio::time::timeout(timeout, acceptor.accept(stream)).await
                        {
                            serve_connection(stream, shared, conn, timeout).await;
                        }
                    }
                    None => serve_connection(stream, shared, conn, timeout).await,
                }
            };
            tokio::select! {
                () = connection => {}
                _ = open.changed() => {}
            }
            drop(permit);
        });
    }
}

async fn serve_connection<I>(io: I, shared: Arc<Shared>, conn: Conn, timeout: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, conn, request).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_BUF_SIZE)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Answers every request on a connection over `admin.maxConnections` with 503, then closes it.
async fn refuse_connection<I>(io: I, limit: usize)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |_request: Request<Incoming>| async move {
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("too many admin connections (admin.maxConnections is {limit}); try again"),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        Ok::<_, Infallible>(response)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_TIMEOUT)
        .max_buf_size(MAX_BUF_SIZE)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn handle(shared: &Shared, conn: Conn, request: Request<Incoming>) -> Response<Body> {
    let state = &shared.state;
    let host = match checked_host(&state.allowed_hosts, conn, &request) {
        Ok(host) => host,
        Err(refused) => return refused,
    };
    if let Some(refused) = cross_origin(conn, &host, &request) {
        return refused;
    }
    let path = request.uri().path().trim_end_matches('/').to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if request.method() == Method::GET {
        if let Some(page) = super::dashboard::asset(&path, request.headers()) {
            return page.map(BodyExt::boxed);
        }
    }
    match (request.method(), segments.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
                Ok(()) => text_response(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "cannot encode metrics\n".into(),
                ),
            }
        }
        (&Method::GET, ["healthz"]) => text_response(StatusCode::OK, TEXT, "ok\n".into()),
        (&Method::GET, ["readyz"]) => {
            if state.ready.load(Ordering::Acquire) {
                text_response(StatusCode::OK, TEXT, "ready\n".into())
            } else {
                text_response(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".into())
            }
        }
        (&Method::GET, ["api", "v1", "acme"]) => json(StatusCode::OK, &state.acme.status()),
        (&Method::GET, ["api", "v1", "config"]) => {
            json(StatusCode::OK, &state.driver.config_report().snapshot())
        }
        (&Method::GET, ["api", "v1", "services"]) => {
            json(StatusCode::OK, &state.driver.status().summaries())
        }
        (&Method::GET, ["api", "v1", "services", name]) => {
            match state.driver.status().service(name) {
                Some(service) => json(StatusCode::OK, service),
                None => error(StatusCode::NOT_FOUND, &format!("no service named {name:?}")),
            }
        }
        (&Method::GET, ["api", "v1", "services", name, "history"]) => {
            match state.driver.status().service(name) {
                Some(service) => {
                    let history = service
                        .details
                        .as_ref()
                        .map(|d| d.history.clone())
                        .unwrap_or_default();
                    json(
                        StatusCode::OK,
                        &serde_json::json!({ "name": name, "revisions": history }),
                    )
                }
                None => error(StatusCode::NOT_FOUND, &format!("no service named {name:?}")),
            }
        }
        (&Method::GET, ["api", "v1", "services", name, "series"]) => series(state, name, &query),
        (&Method::GET, ["api", "v1", "traffic"]) => traffic(state, &query),
        (&Method::POST, ["api", "v1", "services", name, verb]) => {
            if let Some(response) = unauthorized(shared, &request).await {
                return response;
            }
            let full = query
                .split('&')
                .any(|kv| kv == "full=true" || kv == "full=1" || kv == "full");
            let Some(command) = Command::from_verb(verb, full) else {
                return error(StatusCode::NOT_FOUND, &format!("unknown action {verb:?}"));
            };
            match state.driver.command(name, command).await {
                Ok(()) => match state.driver.status().service(name) {
                    Some(service) => json(StatusCode::OK, service),
                    None => json(StatusCode::OK, &serde_json::json!({ "name": name })),
                },
                Err(CommandError::UnknownService(_)) => {
                    error(StatusCode::NOT_FOUND, &format!("no service named {name:?}"))
                }
                Err(CommandError::Closed) => {
                    error(StatusCode::SERVICE_UNAVAILABLE, "weir is shutting down")
                }
                Err(refused) => error(StatusCode::CONFLICT, &refused.to_string()),
            }
        }
        (&Method::GET, ["api", "v1", "events"]) => events(shared),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The `window` query parameter (`15m`), else `default`; `Err` with the 400 if it is not a duration.
#[allow(clippy::result_large_err)]
fn window_param(query: &str, default: Duration) -> Result<Duration, Response<Body>> {
    match query.split('&').find_map(|kv| kv.strip_prefix("window=")) {
        None => Ok(default),
        Some(text) => crate::series::parse_window(text).ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                &format!("window must be a duration like 15m or 90s, got {text:?}"),
            )
        }),
    }
}

/// `GET /api/v1/services/{name}/series?window=15m`: the dashboard's per-version charts.
fn series(state: &AdminState, name: &str, query: &str) -> Response<Body> {
    if state.driver.status().service(name).is_none() {
        return error(StatusCode::NOT_FOUND, &format!("no service named {name:?}"));
    }
    match window_param(query, crate::series::RETENTION) {
        Ok(window) => json(
            StatusCode::OK,
            &state.series.service(name, window, unix_ms()),
        ),
        Err(refused) => refused,
    }
}

/// `GET /api/v1/traffic?window=10s`: each service's share of requests per version over the
/// window (the share actually observed, beside the weight set).
fn traffic(state: &AdminState, query: &str) -> Response<Body> {
    let window = match window_param(query, Duration::from_secs(10)) {
        Ok(window) => window.min(crate::series::RETENTION),
        Err(refused) => return refused,
    };
    let now = unix_ms();
    let services: serde_json::Map<String, serde_json::Value> = state
        .driver
        .status()
        .services
        .iter()
        .map(|s| {
            let shares = state.series.observed_share(&s.name, window, now);
            (
                s.name.clone(),
                serde_json::to_value(shares).unwrap_or_default(),
            )
        })
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({ "windowSeconds": window.as_secs(), "services": services }),
    )
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The host the request names (lower case), or the response refusing it: 400 for a missing or
/// repeated `Host`, 421 for a host that is not this admin API.
#[allow(clippy::result_large_err)]
fn checked_host(
    allowed: &[String],
    conn: Conn,
    request: &Request<Incoming>,
) -> Result<String, Response<Body>> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(error(StatusCode::BAD_REQUEST, "repeated Host header"));
    }
    let header = match header.map(HeaderValue::to_str) {
        Some(Ok(host)) => Some(host.trim().to_ascii_lowercase()),
        Some(Err(_)) => return Err(error(StatusCode::BAD_REQUEST, "invalid Host header")),
        None => None,
    };
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase());
    let host = match (header, authority) {
        (None, None) => return Err(error(StatusCode::BAD_REQUEST, "a Host header is required")),
        (Some(host), None) | (None, Some(host)) => host,
        (Some(host), Some(authority)) => {
            if !host_allowed(allowed, conn, &authority) {
                return Err(misdirected(&authority));
            }
            host
        }
    };
    if !host_allowed(allowed, conn, &host) {
        return Err(misdirected(&host));
    }
    Ok(host)
}

fn misdirected(host: &str) -> Response<Body> {
    let shown: String = host.chars().take(100).collect();
    tracing::debug!(host = %shown, "admin request refused: Host is not the admin API (admin.allowedHosts)");
    error(
        StatusCode::MISDIRECTED_REQUEST,
        &format!(
            "this is weir's admin API; Host {shown:?} is not its address nor in admin.allowedHosts"
        ),
    )
}

/// Splits `host[:port]` / `[v6][:port]` into the name (brackets kept off, one trailing dot
/// dropped) and the port. `None` if it cannot be a host.
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (inside, port)
    } else {
        match host.rsplit_once(':') {
            Some((name, _)) if name.contains(':') => return None,
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port = match port {
        Some(port) => Some(port.parse::<u16>().ok()?),
        None => None,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty()).then_some((name, port))
}

/// Whether `host` (lower case) names this admin API: its own IP and port, `localhost` and its
/// port, or an `admin.allowedHosts` entry (`name` any port, `name:port` that port).
fn host_allowed(allowed: &[String], conn: Conn, host: &str) -> bool {
    let Some((name, port)) = split_host(host) else {
        return false;
    };
    let default_port = if conn.tls { 443 } else { 80 };
    let port = port.unwrap_or(default_port);
    if port == conn.local.port() {
        if name == "localhost" {
            return true;
        }
        if let Ok(ip) = name.parse::<std::net::IpAddr>() {
            if ip.to_canonical() == conn.local.ip().to_canonical() {
                return true;
            }
        }
    }
    allowed.iter().any(|entry| match split_host(entry) {
        Some((allowed_name, None)) => allowed_name == name,
        Some((allowed_name, Some(allowed_port))) => allowed_name == name && allowed_port == port,
        None => false,
    })
}

/// The 403 for a mutation a browser sent from another origin (or another site of the same
/// domain), whether or not a token is configured.
fn cross_origin(conn: Conn, host: &str, request: &Request<Incoming>) -> Option<Response<Body>> {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return None;
    }
    let refuse = |why: &str| {
        Some(error(
            StatusCode::FORBIDDEN,
            &format!("cross-origin requests cannot change weir: {why}"),
        ))
    };
    let headers = request.headers();
    let mut sites = headers.get_all("sec-fetch-site").iter();
    if let Some(site) = sites.next() {
        if sites.next().is_some() {
            return refuse("repeated Sec-Fetch-Site");
        }
        let site = site.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if site != "same-origin" && site != "none" {
            return refuse(&format!("Sec-Fetch-Site is {site:?}"));
        }
        return None;
    }
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin = origins.next()?;
    if origins.next().is_some() {
        return refuse("repeated Origin");
    }
    let origin = origin.to_str().unwrap_or("").trim().to_ascii_lowercase();
    if same_origin(conn, host, &origin) {
        None
    } else {
        let shown: String = origin.chars().take(100).collect();
        refuse(&format!("Origin {shown:?} is not this admin API"))
    }
}

/// Whether `origin` (`scheme://host[:port]`, lower case) is the admin's own origin, `host` being
/// the (already allowed) `Host` of the request.
fn same_origin(conn: Conn, host: &str, origin: &str) -> bool {
    let scheme = if conn.tls { "https" } else { "http" };
    let default_port = if conn.tls { 443 } else { 80 };
    let Ok(uri) = origin.parse::<Uri>() else {
        return false;
    };
    if uri.scheme_str() != Some(scheme) || uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return false;
    }
    let (Some(origin_host), Some(own)) = (
        uri.authority().and_then(|a| split_host(a.as_str())),
        split_host(host),
    ) else {
        return false;
    };
    origin_host.0 == own.0 && origin_host.1.unwrap_or(default_port) == own.1.unwrap_or(default_port)
}

/// The 401 (or 503) to send when a token is configured and the request does not carry it.
async fn unauthorized(shared: &Shared, request: &Request<Incoming>) -> Option<Response<Body>> {
    let file = shared.token.as_ref()?;
    let expected = match file.current().await {
        Ok(token) => token,
        Err(e) => {
            tracing::error!(path = %file.path.display(), error = %e, "cannot read the admin token file");
            return Some(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the admin token file cannot be read",
            ));
        }
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given)
            if !expected.is_empty() && constant_time_eq(given.as_bytes(), expected.as_bytes()) =>
        {
            None
        }
        _ => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "this action needs Authorization: Bearer <token>",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Some(response)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token file, read again only when it changed.
struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<CachedToken>>,
}

struct CachedToken {
    stamp: Stamp,
    /// When the file was read: a file modified less than [`RACY`] before it may change again
    /// without a visible change of its time stamp, so it is read again.
    read_at: SystemTime,
    token: Arc<str>,
}

/// What tells a changed file: size, modification and change times, inode and device.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    ctime: (i64, i64),
    inode: (u64, u64),
}

/// See [`CachedToken::read_at`].
const RACY: Duration = Duration::from_secs(2);

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
            inode: (metadata.dev(), metadata.ino()),
        }
    }
}

impl TokenFile {
    fn new(path: PathBuf) -> TokenFile {
        TokenFile {
            path,
            cached: Mutex::new(None),
        }
    }

    /// The token (trimmed), from the cache if the file did not change; file I/O runs on the
    /// blocking pool, never on the control thread.
    async fn current(self: &Arc<Self>) -> Result<Arc<str>, String> {
        let file = Arc::clone(self);
        tokio::task::spawn_blocking(move || file.read())
            .await
            .map_err(|e| format!("the token reader failed: {e}"))?
    }

    fn read(&self) -> Result<Arc<str>, String> {
        let metadata = std::fs::metadata(&self.path).map_err(|e| e.to_string())?;
        let stamp = Stamp::of(&metadata);
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cached) = cached.as_ref() {
            let settled = stamp
                .modified
                .is_some_and(|modified| modified + RACY <= cached.read_at);
            if cached.stamp == stamp && settled {
                return Ok(cached.token.clone());
            }
        }
        let read_at = SystemTime::now();
        let text = std::fs::read_to_string(&self.path).map_err(|e| e.to_string())?;
        let token: Arc<str> = Arc::from(text.trim());
        *cached = Some(CachedToken {
            stamp,
            read_at,
            token: token.clone(),
        });
        Ok(token)
    }
}

/// `GET /api/v1/events`: one server-sent event per transition, with a comment every 15 s to keep
/// proxies from closing an idle stream.
fn events(shared: &Shared) -> Response<Body> {
    let Ok(permit) = shared.subscribers.clone().try_acquire_owned() else {
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "too many event streams (admin.maxEventSubscribers is {}); try again later",
                shared.state.max_event_subscribers
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    };
    let mut events = shared.state.driver.subscribe();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        // Held while the stream is open.
        let _permit = permit;
        if tx
            .send(Bytes::from_static(b": weir events\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut heartbeat = tokio::time::interval(Duration::from_secs(15));
        loop {
            let chunk = tokio::select! {
                _ = heartbeat.tick() => Bytes::from_static(b": keep-alive\n\n"),
                event = events.recv() => match event {
                    Ok(event) => {
                        let data = serde_json::to_string(&event).unwrap_or_else(|_| "{}".into());
                        Bytes::from(format!("event: {}\ndata: {data}\n\n", event.kind))
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => Bytes::from(format!(": {n} events dropped (slow reader)\n\n")),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(SseBody { rx }.boxed());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_string(value) {
        Ok(body) => text_response(status, "application/json", body),
        Err(e) => text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            format!("cannot encode: {e}\n"),
        ),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(local: &str, tls: bool) -> Conn {
        Conn {
            local: local.parse().unwrap(),
            tls,
        }
    }

    #[test]
    fn hosts_name_the_admin_address_localhost_or_an_allowed_name() {
        let allowed = vec!["weir.internal".to_string(), "ops.example:9000".to_string()];
        let c = conn("127.0.0.1:3100", false);
        for host in [
            "127.0.0.1:3100",
            "localhost:3100",
            "localhost.:3100",
            "weir.internal",
            "weir.internal:1234",
            "ops.example:9000",
        ] {
            assert!(host_allowed(&allowed, c, host), "{host}");
        }
        for host in [
            "127.0.0.1",
            "127.0.0.1:3101",
            "127.0.0.2:3100",
            "evil.example:3100",
            "localhost:80",
            "ops.example:9001",
            "ops.example",
            "user@127.0.0.1:3100",
            "[::1]:3100",
            "::1:3100",
            "",
            ":3100",
            "127.0.0.1:3100:3100",
            "127.0.0.1:99999",
        ] {
            assert!(!host_allowed(&allowed, c, host), "{host}");
        }
        // A dual-stack socket sees IPv4 clients as mapped addresses.
        let mapped = conn("[::ffff:10.0.0.5]:443", true);
        assert!(host_allowed(&[], mapped, "10.0.0.5"));
        assert!(host_allowed(&[], mapped, "10.0.0.5:443"));
        assert!(host_allowed(&[], conn("[::1]:3100", false), "[::1]:3100"));
        assert!(host_allowed(&[], conn("127.0.0.1:80", false), "localhost"));
    }

    #[test]
    fn origins_must_be_the_admin_itself() {
        let c = conn("127.0.0.1:3100", false);
        assert!(same_origin(c, "127.0.0.1:3100", "http://127.0.0.1:3100"));
        assert!(same_origin(c, "localhost:3100", "http://localhost:3100/"));
        for origin in [
            "null",
            "https://127.0.0.1:3100",
            "http://127.0.0.1",
            "http://localhost:3100",
            "http://127.0.0.1:3100/x",
            "http://evil.example",
            "",
        ] {
            assert!(!same_origin(c, "127.0.0.1:3100", origin), "{origin}");
        }
        let tls = conn("127.0.0.1:443", true);
        assert!(same_origin(
            tls,
            "weir.internal",
            "https://weir.internal:443"
        ));
        assert!(same_origin(
            tls,
            "weir.internal:443",
            "https://weir.internal"
        ));
    }
}
