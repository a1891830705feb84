//! The request path, in stages, each in its own module:
//!
//! 1. route (here): load the table once, match host and path to a service;
//! 2. policy (`ServiceRoute::pick`): header/cookie routes → blue-green preview → sticky
//!    assignment → the exact weighted split;
//! 3. [`mirror`]: copy the request to the canary when a mirror route takes it;
//! 4. [`upstream`]: send to the arm's upstreams, stream the response back;
//! 5. record: the arm's stats (in [`upstream`]) and the access log (here).
//!
//! The stages are plain async functions rather than tower services: each runs on a worker's
//! single-threaded runtime over `Rc` state, and a `Service` stack would add `poll_ready` plumbing
//! and, to name its futures, per-request boxing, for no reuse. Everything here runs on one worker:
//! the route cache, the upstream pool and the mirror queue are worker-local, so the only shared
//! writes per request are a few relaxed atomic adds (the split sequence, round robin, and the
//! version's counters).

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{ProxyBody, RequestBody};
use crate::error::ProxyError;
use crate::routes::matcher::strip_port;
use crate::routes::{RequestHead, RouteTable, ServiceRoute};
use crate::upstream::Pool;

pub(crate) mod mirror;
mod upstream;

pub use self::mirror::MirrorLimits;

/// State shared by every connection of one worker thread.
pub(crate) struct Worker {
    routes: RefCell<Cache<Arc<ArcSwap<RouteTable>>, Arc<RouteTable>>>,
    pool: Rc<Pool<RequestBody>>,
    mirror: mirror::Mirror,
    access_log: bool,
}

/// Per-connection facts added to every request.
pub(crate) struct ConnInfo {
    /// The client's IP, preformatted for `X-Forwarded-For`.
    client_ip: HeaderValue,
    /// `http` or `https`.
    proto: HeaderValue,
    /// The name of the listener the connection came in on.
    listener: Rc<str>,
    /// Whether that listener terminates TLS.
    tls: bool,
}

// === impl Worker ===

impl Worker {
    /// A worker's state; starts its mirror sender, so call it inside the worker's `LocalSet`.
    pub(crate) fn new(
        routes: &crate::routes::Routes,
        access_log: bool,
        mirror: &MirrorLimits,
    ) -> Rc<Worker> {
        Rc::new(Worker {
            routes: RefCell::new(routes.cache()),
            pool: Pool::new(),
            mirror: mirror::Mirror::spawn(mirror),
            access_log,
        })
    }

    /// The current table (one atomic read when unchanged).
    pub(crate) fn table(&self) -> Arc<RouteTable> {
        self.routes.borrow_mut().load().clone()
    }
}

// === impl ConnInfo ===

impl ConnInfo {
    pub(crate) fn new(client: IpAddr, listener: Rc<str>, tls: bool) -> ConnInfo {
        let client_ip = HeaderValue::from_str(&client.to_string())
            .expect("an IP address is always a valid header value");
        ConnInfo {
            client_ip,
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            listener,
            tls,
        }
    }
}

/// Serves one request. Never fails: every error becomes a response.
pub(crate) async fn handle(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let table = worker.table();
    let response = match route(&table, &request) {
        Err(error) => {
            if worker.access_log {
                AccessLine::of(&request).log(error.status(), "-", "-", start);
            }
            error.to_response()
        }
        Ok((service, preview_host)) => {
            let head = RequestHead {
                method: request.method(),
                path: request.uri().path(),
                headers: request.headers(),
                listener: &conn.listener,
                tls: conn.tls,
                preview_host,
            };
            let decision = service.pick(&head);
            // Only the protocols the service allows (`upgrades`) are tunnelled; any other
            // upgrade request is forwarded as a plain one, without its upgrade headers.
            let upgrade = upstream::is_upgrade(request.version(), request.headers())
                && crate::limits::upgrade_allowed(&service.upgrades, request.headers());
            // Upgrades are never mirrored (a tunnel cannot be copied), and do not take a turn of
            // the mirror routes' percentages either, so those stay exact over the copyable requests.
            let mirror_to = if upgrade {
                None
            } else {
                service.mirror(&head, decision.canary)
            };
            // Only taken when the access log is on: the request moves upstream.
            let line = worker.access_log.then(|| AccessLine::of(&request));
            let mut response = upstream::forward(
                &worker,
                &conn,
                service,
                decision.arm,
                mirror_to,
                upgrade,
                request,
                start,
            )
            .await;
            if let Some(cookie) = decision.set_cookie {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            if let Some(line) = line {
                line.log(
                    response.status(),
                    service.name(),
                    decision.arm.version(),
                    start,
                );
            }
            response
        }
    };
    Ok(response)
}

/// Finds the service for a request (and whether it came through a preview host), or why there is
/// none.
fn route<'t>(
    table: &'t RouteTable,
    request: &Request<Incoming>,
) -> Result<(&'t ServiceRoute, bool), ProxyError> {
    let host = match request.uri().authority() {
        // HTTP/2 (`:authority`) and absolute-form HTTP/1 requests.
        Some(authority) => authority.host(),
        None => match request.headers().get(header::HOST) {
            Some(value) => strip_port(value.to_str().map_err(|_| ProxyError::BadHost)?),
            // HTTP/1.1 requires Host; HTTP/1.0 clients only reach a `*` service.
            None if request.version() == Version::HTTP_11 => return Err(ProxyError::BadHost),
            None => "",
        },
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    table
        .route_target(host, request.uri().path())
        .ok_or(ProxyError::NoRoute)
}

/// What the access log says about a request, kept before the request moves upstream.
struct AccessLine {
    method: http::Method,
    host: Option<HeaderValue>,
    uri: Uri,
}

impl AccessLine {
    fn of(request: &Request<Incoming>) -> AccessLine {
        AccessLine {
            method: request.method().clone(),
            host: request.headers().get(header::HOST).cloned(),
            uri: request.uri().clone(),
        }
    }

    fn log(&self, status: StatusCode, service: &str, version: &str, start: Instant) {
        tracing::info!(
            target: "weir::access",
            method = %self.method,
            host = self.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("-"),
            uri = %self.uri,
            status = status.as_u16(),
            service,
            version,
            duration_ms = start.elapsed().as_secs_f64() * 1000.0,
        );
    }
}
