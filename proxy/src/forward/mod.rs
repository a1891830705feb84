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

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::body::{BodyState, ProxyBody, RequestBody};
use crate::error::ProxyError;
use crate::routes::matcher::strip_port;
use crate::routes::{RequestHead, RouteTable, ServiceRoute};
use crate::upstream::Pool;

pub(crate) mod mirror;
pub(crate) mod request_id;
mod upstream;

pub use self::mirror::MirrorLimits;

/// State shared by every connection of one worker thread.
pub(crate) struct Worker {
    routes: RefCell<Cache<Arc<ArcSwap<RouteTable>>, Arc<RouteTable>>>,
    pool: Rc<Pool<RequestBody>>,
    mirror: mirror::Mirror,
    access_log: bool,
    /// Response timers of finished requests, for the next ones ([`Worker::timer`]).
    timers: RefCell<Vec<Pin<Box<Sleep>>>>,
}

/// Timers kept for reuse per worker (about the requests a worker has in flight at once).
const SPARE_TIMERS: usize = 256;

/// A timer lent by [`Worker::timer`]; goes back to the worker when dropped.
pub(crate) struct Timer<'w> {
    worker: &'w Worker,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Timer<'_> {
    /// Sets the timer to fire at `deadline`.
    pub(crate) fn reset(&mut self, deadline: Instant) {
        if let Some(sleep) = &mut self.sleep {
            sleep.as_mut().reset(deadline);
        }
    }

    /// Resolves when the deadline has passed.
    pub(crate) async fn sleep(&mut self) {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            let mut timers = self.worker.timers.borrow_mut();
            if timers.len() < SPARE_TIMERS {
                timers.push(sleep);
            }
        }
    }
}

/// Per-connection facts added to every request.
pub(crate) struct ConnInfo {
    /// The peer's address.
    peer: IpAddr,
    /// Whether the peer is one of the listener's `trustedProxies` (looked up on the connection's
    /// first request, in the table current then).
    trusted: Cell<Option<bool>>,
    /// The client's IP, preformatted for `X-Forwarded-For`.
    client_ip: HeaderValue,
    /// The client's node for `Forwarded: for=` (RFC 7239: IPv6 quoted and bracketed).
    forwarded_for: String,
    /// The `Forwarded` element of the connection's latest request, by the host it names (a
    /// keep-alive client names the same host every time).
    forwarded: RefCell<Option<(Option<HeaderValue>, Option<HeaderValue>)>>,
    /// The latest `Host` value found valid on this connection.
    valid_host: RefCell<Option<HeaderValue>>,
    /// The body state of the connection's latest request, reused once nothing else holds it.
    body_state: RefCell<Option<Rc<BodyState>>>,
    /// `http` or `https`.
    proto: HeaderValue,
    /// The name of the listener the connection came in on.
    listener: Rc<str>,
    /// Whether that listener terminates TLS.
    tls: bool,
    /// Where requests refused for their `Host` are counted (`weir_requests_refused_total`).
    refusals: Option<Arc<crate::limits::ListenerConns>>,
}

// === impl Worker ===

impl Worker {
    /// A worker's state; starts its mirror sender, so call it inside the worker's `LocalSet`.
    pub(crate) fn new(
        routes: &crate::routes::Routes,
        access_log: bool,
        mirror: &MirrorLimits,
    ) -> Rc<Worker> {
        let worker = Rc::new(Worker {
            routes: RefCell::new(routes.cache()),
            pool: Pool::new(),
            mirror: mirror::Mirror::spawn(mirror),
            access_log,
            timers: RefCell::new(Vec::new()),
        });
        // The cache keeps the table this worker loaded last until its next request: an idle
        // worker would hold a replaced table (and its config) for good. Look again every second.
        let weak = Rc::downgrade(&worker);
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(worker) = weak.upgrade() else {
                    return;
                };
                drop(worker.table());
            }
        });
        worker
    }

    /// A timer set for `deadline`. A finished request's timer is reused: it is still in the
    /// runtime's timer wheel, and moving it to a later deadline is one atomic exchange, where a
    /// new timer is inserted into the wheel and removed again (each under the driver's lock).
    /// A spare timer that fires before it is reused wakes its last request's connection once,
    /// for nothing.
    pub(crate) fn timer(&self, deadline: Instant) -> Timer<'_> {
        let spare = self.timers.borrow_mut().pop();
        let sleep = match spare {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Timer {
            worker: self,
            sleep: Some(sleep),
        }
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
        let forwarded_for = match client {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        ConnInfo {
            peer: client,
            trusted: Cell::new(None),
            client_ip,
            forwarded_for,
            forwarded: RefCell::new(None),
            valid_host: RefCell::new(None),
            body_state: RefCell::new(None),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            listener,
            tls,
            refusals: None,
        }
    }

    /// Counts this connection's refused requests in its listener's series.
    pub(crate) fn counted(mut self, conns: Arc<crate::limits::ListenerConns>) -> ConnInfo {
        self.refusals = Some(conns);
        self
    }

    /// Whether `host` is a valid `Host` value: an authority without userinfo (which has no place
    /// in Host, RFC 9110 §7.2). The connection's latest valid value is remembered, so a
    /// keep-alive client naming the same host every time has it parsed once.
    fn valid_host(&self, host: &HeaderValue) -> bool {
        if self.valid_host.borrow().as_ref() == Some(host) {
            return true;
        }
        let valid = http::uri::Authority::try_from(host.as_bytes())
            .is_ok_and(|authority| !authority.as_str().contains('@'));
        if valid {
            *self.valid_host.borrow_mut() = Some(host.clone());
        }
        valid
    }

    /// A fresh [`BodyState`] for a request: the previous request's, when its exchange is over
    /// (nothing but this connection holds it), so a keep-alive connection allocates none.
    pub(crate) fn body_state(&self, now: Instant, complete: bool) -> Rc<BodyState> {
        let mut slot = self.body_state.borrow_mut();
        if let Some(state) = slot.as_ref().filter(|state| Rc::strong_count(state) == 1) {
            state.restart(now, complete);
            return state.clone();
        }
        let state = BodyState::new(now, complete);
        *slot = Some(state.clone());
        state
    }

    /// weir's `Forwarded` element for a request to `host` (`None` when it is not a valid value).
    fn forwarded(&self, host: Option<&HeaderValue>) -> Option<HeaderValue> {
        let mut cached = self.forwarded.borrow_mut();
        if let Some((cached_host, element)) = &*cached {
            if cached_host.as_ref() == host {
                return element.clone();
            }
        }
        let element = upstream::forwarded_element(self, host);
        *cached = Some((host.cloned(), element.clone()));
        element
    }

    /// Whether the peer's forwarded headers are trusted (appended to rather than replaced).
    fn trusted(&self, table: &RouteTable) -> bool {
        match self.trusted.get() {
            Some(trusted) => trusted,
            None => {
                let trusted = table.trusts(&self.listener, self.peer);
                self.trusted.set(Some(trusted));
                trusted
            }
        }
    }
}

/// Serves one request. Never fails: every error becomes a response.
pub(crate) async fn handle(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    mut request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let table = worker.table();
    let trusted = conn.trusted(&table);
    // Hook for ACME http-01 (`/.well-known/acme-challenge/`): it must be answered here, BEFORE
    // the listener's redirect, so a plain listener that redirects to https can still prove a
    // domain.
    if let Some(redirect) = table.redirect(&conn.listener) {
        let response = match redirect.location(&request) {
            Some((code, location)) => {
                let mut response = Response::new(ProxyBody::empty());
                *response.status_mut() = code;
                response.headers_mut().insert(header::LOCATION, location);
                response
            }
            None => ProxyError::BadHost.to_response(),
        };
        if worker.access_log {
            AccessLine::of(&request).log(response.status(), "-", "-", "-", start);
        }
        return Ok(response);
    }
    let response = match route(&table, &conn, &request) {
        Err(error) => {
            if let (ProxyError::BadHost, Some(refusals)) = (&error, &conn.refusals) {
                refusals.refused(crate::limits::RefuseReason::BadHost);
            }
            if worker.access_log {
                AccessLine::of(&request).log(error.status(), "-", "-", "-", start);
            }
            error.to_response()
        }
        Ok((service, preview_host)) => {
            // `X-Request-Id`: the trusted peer's, or a new one; sent upstream and returned.
            let request_id = request_id::assign(request.headers_mut(), trusted);
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
            response.headers_mut().insert(
                crate::routes::rewrite::X_REQUEST_ID.clone(),
                request_id.clone(),
            );
            if let Some(ingress) = &service.ingress {
                ingress.on_response(&mut response, decision.canary, &request_id);
            }
            if let Some(line) = line {
                line.log(
                    response.status(),
                    service.name(),
                    decision.arm.version(),
                    request_id.to_str().unwrap_or("-"),
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
///
/// The request names one host or is refused (400): a repeated `Host`, a `Host` that is not a
/// valid authority, or a `Host` naming another host or port than the request target's authority
/// (absolute form, HTTP/2 `:authority`) would let a request routed to one service reach another
/// virtual host of the upstream.
fn route<'t>(
    table: &'t RouteTable,
    conn: &ConnInfo,
    request: &Request<Incoming>,
) -> Result<(&'t ServiceRoute, bool), ProxyError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadHost);
    }
    let host_header = match host_header {
        // An empty Host (allowed for a target without an authority, RFC 9112 §3.2) names no host.
        Some(value) if value.is_empty() && request.uri().authority().is_none() => None,
        Some(value) if conn.valid_host(value) => Some(value),
        Some(_) => return Err(ProxyError::BadHost),
        None => None,
    };
    let host = match request.uri().authority() {
        // HTTP/2 (`:authority`) and absolute-form HTTP/1 requests.
        Some(authority) => {
            if let Some(header) = host_header {
                let header = http::uri::Authority::try_from(header.as_bytes())
                    .map_err(|_| ProxyError::BadHost)?;
                if !same_authority(authority, &header, request.uri().scheme_str()) {
                    return Err(ProxyError::BadHost);
                }
            }
            authority.host()
        }
        None => match host_header {
            // Valid, so visible ASCII.
            Some(value) => strip_port(value.to_str().map_err(|_| ProxyError::BadHost)?),
            // HTTP/1.1 requires a Host line (it may be empty); HTTP/1.0 clients without one only
            // reach a `*` service.
            None if request.version() == Version::HTTP_11
                && !request.headers().contains_key(header::HOST) =>
            {
                return Err(ProxyError::BadHost)
            }
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

/// Whether the target's authority and the `Host` header name the same host (any case) and port
/// (a missing port is the scheme's default).
fn same_authority(
    authority: &http::uri::Authority,
    host: &http::uri::Authority,
    scheme: Option<&str>,
) -> bool {
    let default = match scheme {
        Some(s) if s.eq_ignore_ascii_case("https") => Some(443),
        Some(s) if s.eq_ignore_ascii_case("http") => Some(80),
        _ => None,
    };
    authority.host().eq_ignore_ascii_case(host.host())
        && authority.port_u16().or(default) == host.port_u16().or(default)
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

    fn log(
        &self,
        status: StatusCode,
        service: &str,
        version: &str,
        request_id: &str,
        start: Instant,
    ) {
        tracing::info!(
            target: "weir::access",
            method = %self.method,
            host = self.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("-"),
            uri = %self.uri,
            status = status.as_u16(),
            service,
            version,
            request_id,
            duration_ms = start.elapsed().as_secs_f64() * 1000.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(text: &str) -> http::uri::Authority {
        http::uri::Authority::try_from(text).unwrap()
    }

    #[test]
    fn host_and_authority_agree_on_host_any_case_and_port_with_defaults() {
        let same = |a: &str, h: &str, scheme| same_authority(&authority(a), &authority(h), scheme);
        assert!(same("shop.example.com", "Shop.Example.COM", Some("http")));
        assert!(same(
            "shop.example.com",
            "shop.example.com:80",
            Some("http")
        ));
        assert!(same(
            "shop.example.com:443",
            "shop.example.com",
            Some("https")
        ));
        assert!(same(
            "user@shop.example.com",
            "shop.example.com",
            Some("http")
        ));
        assert!(!same(
            "shop.example.com",
            "shop.example.com:443",
            Some("http")
        ));
        assert!(!same("shop.example.com", "other.example.com", Some("http")));
        assert!(!same("shop.example.com:8080", "shop.example.com", None));
        assert!(same("[::1]:8080", "[::1]:8080", None));
    }

    #[test]
    fn ipv6_clients_are_quoted_in_forwarded() {
        let conn = ConnInfo::new("2001:db8::1".parse().unwrap(), Rc::from("l"), false);
        assert_eq!(conn.forwarded_for, "\"[2001:db8::1]\"");
        assert_eq!(conn.client_ip, "2001:db8::1");
    }
}
