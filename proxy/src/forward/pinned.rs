//! Requests weir sends itself, pinned to one version of a service: the built-in load test's
//! traffic (`webhooks[].loadTest`, issue #9). A pinned request takes the client's forward path
//! ([`super::upstream::forward`]) from the arm on: the service's `rewrite` and `headers` rules, the
//! version's upstreams with their health and outlier state, retries within the version, its
//! timeouts, and the version's stats (so the builtin analysis judges it and the Prometheus
//! series count it). Only the choice of the arm differs: the version is named, not picked by the
//! rules, so the split's sequence and the sticky and header rules are not touched, and nothing is
//! mirrored. Rate limits (`rateLimit`) are client limits and do not apply: the load is weir's own,
//! bounded by its `rate`.
//!
//! **A client can never pin a version.** The pin travels outside the request: hyper has no way to
//! make a request body of its type ([`Incoming`]) outside a connection, so each pinned request is
//! written over an in-memory connection ([`tokio::io::duplex`]: no socket, no listener) to hyper's
//! HTTP/1.1 server, whose one-connection service knows the service and version it serves. No
//! header, path or listener leads there; the listeners' request path ([`super::handle`]) is
//! unchanged and has no branch for it.
//!
//! Where it runs: one thread (`weir-pinned`) with its own current-thread runtime and
//! [`Worker`] (route cache, keep-alive pool), like a data-plane worker; [`Pinned`] is its `Send`
//! handle. Each request:
//! - loads the current table once; a service or version not in it any more (the canary went
//!   away) means the request is not sent ([`PinnedOutcome::Skipped`]);
//! - is sent with the service's first exact host as `Host` (the service's name when it has none,
//!   i.e. only `*.suffix` or `*` patterns), unless its headers name one; a new `X-Request-Id`
//!   (one sent in its headers is replaced, like an untrusted client's); `X-Forwarded-For:
//!   127.0.0.1` and `X-Forwarded-Proto: http`;
//! - has `timeout` of its own: the upstream must start answering within the smaller of it and the
//!   service's `responseTimeout` (else a 504 charged to the version, as for a client's request),
//!   and the whole exchange, body included, must end within it; the response body is read and
//!   dropped frame by frame, never buffered;
//! - is cancelled when its caller stops waiting (counted then, like a client gone before its
//!   answer, as a client error of the version, never against it).
//!
//! At most [`MAX_IN_FLIGHT`] pinned requests run at once; beyond it a request is not sent
//! (skipped).

use std::cell::Cell;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{path, request_id, upstream, ConnInfo, MirrorLimits, Worker};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::routes::{ArmRoute, RouteTable, Routes, ServiceRoute};

/// Pinned requests in flight at once, over all callers; beyond it a request is skipped.
pub const MAX_IN_FLIGHT: usize = 4096;

/// Requests queued for the pinned thread (the caller waits for room).
const QUEUE: usize = 256;

/// The in-memory connection's buffer per direction.
const DUPLEX_BUFFER: usize = 64 * 1024;

/// How long past a request's `timeout` its head is still awaited: the data plane answers 504 at
/// `timeout` itself, so this only bounds a response that could not even be written back.
const GRACE: Duration = Duration::from_secs(1);

/// The listener name pinned requests carry (no listener of the file can have it: names in the
/// file are checked, this one has a space).
const LISTENER: &str = "weir pinned";

/// The `Send` handle of the thread that serves pinned requests; cheap to clone. The thread ends
/// once every handle is dropped (its requests in flight are cancelled then).
#[derive(Clone, Debug)]
pub struct Pinned {
    tx: mpsc::Sender<Job>,
}

/// One request of weir's own, for one version of one service.
#[derive(Clone, Debug)]
pub struct PinnedRequest {
    /// The service (by name).
    pub service: String,
    /// The version the request is pinned to (the canary's, or the stable's).
    pub version: String,
    /// The method.
    pub method: Method,
    /// The path and query.
    pub path: PathAndQuery,
    /// Headers sent (before weir's own `Host` default, `X-Request-Id` and forwarded headers).
    pub headers: HeaderMap,
    /// The most the whole exchange may take (see the module documentation).
    pub timeout: Duration,
}

/// How a pinned request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinnedOutcome {
    /// Answered with this status (by the version, or by weir for it: 502, 504), its body read to
    /// the end within the timeout.
    Answered(StatusCode),
    /// Not complete within its timeout (the head, or the body).
    TimedOut,
    /// The response broke off (its body failed), or the pinned thread is gone.
    Failed,
    /// Not sent: the service or the version is not in the current table, the path climbs above
    /// the root (`/../x`), or [`MAX_IN_FLIGHT`] requests were already in flight.
    Skipped,
}

struct Job {
    request: PinnedRequest,
    reply: oneshot::Sender<PinnedOutcome>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("service", &self.request.service)
            .field("version", &self.request.version)
            .finish_non_exhaustive()
    }
}

// === impl Pinned ===

impl Pinned {
    /// Starts the `weir-pinned` thread serving pinned requests from `routes`' current table.
    pub fn spawn(routes: &Routes) -> io::Result<Pinned> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let routes = routes.clone();
        std::thread::Builder::new()
            .name("weir-pinned".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, run(routes, rx));
            })?;
        Ok(Pinned { tx })
    }

    /// Sends `request` and waits for its outcome. Dropping the future cancels the request.
    pub async fn send(&self, request: PinnedRequest) -> PinnedOutcome {
        let (reply, outcome) = oneshot::channel();
        if self.tx.send(Job { request, reply }).await.is_err() {
            return PinnedOutcome::Failed;
        }
        outcome.await.unwrap_or(PinnedOutcome::Failed)
    }
}

/// The `Host` weir's own requests to `service` carry: its first exact host, else its name (or
/// `localhost` if the name is no valid header value). Compiled when the table is built.
pub(crate) fn host_of(service: &weir_config::Service) -> HeaderValue {
    service
        .matcher
        .hosts
        .iter()
        .find_map(|host| match host {
            weir_config::HostPattern::Exact(name) => HeaderValue::from_str(name).ok(),
            _ => None,
        })
        .or_else(|| HeaderValue::from_str(&service.name).ok())
        .unwrap_or_else(|| HeaderValue::from_static("localhost"))
}

/// The pinned thread's loop: one local task per request, until every handle is dropped.
async fn run(routes: Routes, mut rx: mpsc::Receiver<Job>) {
    let worker = Worker::new(&routes, None, &MirrorLimits::default());
    let conn = Rc::new(ConnInfo::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        Rc::from(LISTENER),
        false,
    ));
    let in_flight = Rc::new(Cell::new(0usize));
    while let Some(Job { request, mut reply }) = rx.recv().await {
        if reply.is_closed() {
            continue;
        }
        if in_flight.get() >= MAX_IN_FLIGHT {
            let _ = reply.send(PinnedOutcome::Skipped);
            continue;
        }
        let slot = Slot::take(&in_flight);
        let (worker, conn) = (worker.clone(), conn.clone());
        tokio::task::spawn_local(async move {
            let _slot = slot;
            tokio::select! {
                outcome = exchange(worker, conn, request) => {
                    let _ = reply.send(outcome);
                }
                () = reply.closed() => {}
            }
        });
    }
}

/// One request in the in-flight count, until dropped.
struct Slot(Rc<Cell<usize>>);

impl Slot {
    fn take(count: &Rc<Cell<usize>>) -> Slot {
        count.set(count.get() + 1);
        Slot(count.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// What the one-connection service serves.
struct Target {
    service: String,
    version: String,
    timeout: Duration,
    /// Set when the request was not sent.
    skipped: Cell<bool>,
}

/// Writes `request` over an in-memory connection to the pinned service and reads the answer.
async fn exchange(worker: Rc<Worker>, conn: Rc<ConnInfo>, request: PinnedRequest) -> PinnedOutcome {
    let start = Instant::now();
    // A timeout too large for the clock is as good as none.
    let deadline = start
        .checked_add(request.timeout)
        .unwrap_or_else(|| start + Duration::from_secs(365 * 24 * 3600));
    let target = Rc::new(Target {
        service: request.service,
        version: request.version,
        timeout: request.timeout,
        skipped: Cell::new(false),
    });
    let (client_io, server_io) = tokio::io::duplex(DUPLEX_BUFFER);
    let served = target.clone();
    let service =
        service_fn(move |incoming| serve(worker.clone(), conn.clone(), served.clone(), incoming));
    let mut server = hyper::server::conn::http1::Builder::new();
    // The head is already written in full: no timer needed.
    server.header_read_timeout(None);
    let server = server.serve_connection(TokioIo::new(server_io), service);
    let Ok((mut sender, client)) =
        hyper::client::conn::http1::handshake(TokioIo::new(client_io)).await
    else {
        return PinnedOutcome::Failed;
    };
    let mut outgoing = Request::new(Empty::<Bytes>::new());
    *outgoing.method_mut() = request.method;
    *outgoing.uri_mut() = Uri::from(request.path);
    *outgoing.headers_mut() = request.headers;
    let asked = async {
        let head = tokio::time::timeout_at(deadline + GRACE, sender.send_request(outgoing)).await;
        let response = match head {
            Err(_) => return PinnedOutcome::TimedOut,
            Ok(Err(_)) => return PinnedOutcome::Failed,
            Ok(Ok(response)) => response,
        };
        if target.skipped.get() {
            return PinnedOutcome::Skipped;
        }
        let status = response.status();
        match tokio::time::timeout_at(deadline, discard(response.into_body())).await {
            Err(_) => PinnedOutcome::TimedOut,
            Ok(false) => PinnedOutcome::Failed,
            Ok(true) => PinnedOutcome::Answered(status),
        }
    };
    // Both ends of the connection are driven here, so dropping this future cancels everything.
    let drive = async {
        let _ = tokio::join!(server, client);
        std::future::pending::<()>().await;
    };
    tokio::select! {
        outcome = asked => outcome,
        () = drive => PinnedOutcome::Failed,
    }
}

/// Reads a body to its end, dropping each frame; false if it broke.
async fn discard(mut body: Incoming) -> bool {
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return false;
        }
    }
    true
}

/// The service and arm `target` names in `table`: the canary arm first, then the stable one.
fn pinned<'t>(table: &'t RouteTable, target: &Target) -> Option<(&'t ServiceRoute, &'t ArmRoute)> {
    let service = table.service(&target.service)?;
    let arm = service.arms().find(|arm| arm.version() == target.version)?;
    Some((service, arm))
}

/// Serves the in-memory connection's one request: the client's forward path, from the arm on.
async fn serve(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    target: Rc<Target>,
    mut request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    // One table load per request, like a client's.
    let table = worker.table();
    let Some((service, arm)) = pinned(&table, &target) else {
        target.skipped.set(true);
        return Ok(ProxyError::NoRoute.to_response());
    };
    // Dot segments are resolved as for a client, so the upstream sees the same path it would; a
    // path that climbs above the root is not sent.
    let resolved = match path::resolve(request.uri().path()) {
        Ok(None) => Some(()),
        Ok(Some(resolved)) => {
            path::with_path(request.uri(), &resolved).map(|uri| *request.uri_mut() = uri)
        }
        Err(path::ClimbsAboveRoot) => None,
    };
    if resolved.is_none() {
        target.skipped.set(true);
        return Ok(ProxyError::BadPath.to_response());
    }
    let headers = request.headers_mut();
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, service.pinned_host.clone());
    }
    // Untrusted: weir makes the id, as for a client that is not a trusted proxy.
    request_id::assign(headers, false);
    let response_timeout = service.options.response_timeout.min(target.timeout);
    Ok(upstream::forward(
        &worker,
        &conn,
        service,
        arm,
        None,
        false,
        request,
        start,
        response_timeout,
    )
    .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(hosts: &str) -> weir_config::Service {
        let text = format!(
            "listeners: [{{name: public, address: 127.0.0.1:0}}]\nservices:\n  - name: shop\n    match: {{hosts: {hosts}}}\n    stable: {{version: v1, upstreams: [\"127.0.0.1:1\"]}}\n"
        );
        let model = weir_config::parse(&text, std::path::Path::new(".")).expect("a valid config");
        model.services.into_iter().next().expect("one service")
    }

    #[test]
    fn the_host_is_the_first_exact_one_else_the_service_name() {
        assert_eq!(
            host_of(&service(
                r#"["*.example.com", "shop.example.com", "b.example.com"]"#
            )),
            "shop.example.com"
        );
        assert_eq!(host_of(&service(r#"["*.example.com", "*"]"#)), "shop");
    }
}
