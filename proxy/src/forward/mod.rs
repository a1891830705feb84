//! The request path, in stages, each in its own module:
//!
//! 1. route (here): load the table once, match host and path to a service;
//! 2. policy (`ServiceRoute::pick`): header/cookie routes → blue-green preview → sticky
//!    assignment → the exact weighted split;
//! 3. [`mirror`]: copy the request to the canary when a mirror route takes it;
//! 4. [`upstream`]: send to the arm's upstreams, stream the response back;
//! 5. record: the arm's stats (in [`upstream`]);
//! 6. respond (here): [`compress`] the response when the service asks for it and the client
//!    accepts it, and count it for the [`access`] log; both wrap the body ([`layered`]) only when
//!    on, so a service without compression and a weir without `--access-log` pay a branch each.
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
use http::{Request, Response, Version};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::body::{BodyState, ProxyBody, RequestBody};
use crate::error::ProxyError;
use crate::routes::matcher::strip_port;
use crate::routes::{RequestHead, RouteTable, ServiceRoute};

use self::access::AccessLine;
use self::layered::Layered;
use crate::upstream::Pool;

pub(crate) mod access;
pub(crate) mod compress;
mod hpack;
pub(crate) mod layered;
pub(crate) mod mirror;
mod path;
pub(crate) mod pinned;
pub(crate) mod request_id;
mod upstream;

pub use self::access::{AccessLog, AccessLogFormat};
pub use self::mirror::MirrorLimits;
pub use self::pinned::{Pinned, PinnedOutcome, PinnedRequest};

/// State shared by every connection of one worker thread.
pub(crate) struct Worker {
    routes: RefCell<Cache<Arc<ArcSwap<RouteTable>>, Arc<RouteTable>>>,
    pool: Rc<Pool<RequestBody>>,
    mirror: mirror::Mirror,
    /// The access log, when on (`--access-log`).
    access_log: Option<AccessLog>,
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
        access_log: Option<AccessLog>,
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
    // ACME http-01 (`crate::acme`), before the listener's redirect, so a plain listener that
    // redirects to https can still prove a domain. Only plain listeners of a table with ACME.
    if let Some(acme) = table.acme.as_ref().filter(|_| !conn.tls) {
        if let Some(response) = acme.answer_http01(&request) {
            return Ok(logged(
                &worker, &conn, trusted, start, &request, response, None,
            ));
        }
    }
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
        return Ok(logged(
            &worker, &conn, trusted, start, &request, response, None,
        ));
    }
    // Dot segments are resolved before routing, so the router and the upstream agree on the path.
    let routed = match path::resolve(request.uri().path()) {
        Ok(None) => route(&table, &conn, &request),
        Ok(Some(resolved)) => match path::with_path(request.uri(), &resolved) {
            Some(uri) => {
                *request.uri_mut() = uri;
                route(&table, &conn, &request)
            }
            None => Err(ProxyError::BadPath),
        },
        Err(path::ClimbsAboveRoot) => Err(ProxyError::BadPath),
    };
    let response = match routed {
        Err(error) => {
            let refused = match error {
                ProxyError::BadHost => Some(crate::limits::RefuseReason::BadHost),
                ProxyError::BadPath => Some(crate::limits::RefuseReason::BadPath),
                _ => None,
            };
            if let (Some(reason), Some(refusals)) = (refused, &conn.refusals) {
                refusals.refused(reason);
            }
            logged(
                &worker,
                &conn,
                trusted,
                start,
                &request,
                error.to_response(),
                None,
            )
        }
        Ok((service, preview_host)) => 'served: {
            // `X-Request-Id`: the trusted peer's, or a new one; sent upstream, returned, logged.
            let request_id = request_id::assign(request.headers_mut(), trusted);
            // Unique per request: kept out of the HPACK tables on both sides (`hpack`).
            let request_id = hpack::never_indexed(request_id);
            // Rate limits are decided before any version is picked: a refusal is never charged
            // to a version and does not advance the split.
            if let Some(limiter) = &service.rate_limit {
                let trusts = |ip| table.trusts(&conn.listener, ip);
                if let Err(limited) =
                    limiter.check_request(start, conn.peer, trusted, trusts, request.headers())
                {
                    let mut response = limited.to_response();
                    response
                        .headers_mut()
                        .insert(crate::routes::rewrite::X_REQUEST_ID.clone(), request_id);
                    // Logged with its service and no version: no version was picked.
                    let service = Some(Arc::clone(&service.name));
                    break 'served logged(
                        &worker, &conn, trusted, start, &request, response, service,
                    );
                }
            }
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
            // upgrade request is forwarded as a plain one, without its upgrade headers. An HTTP/2
            // version (`h2c`, `h2`) has no HTTP/1.1 to upgrade: never a cleartext HTTP/1.1 dial
            // to it (for `h2` that would send the head unencrypted to a TLS port).
            let upgrade = upstream::is_upgrade(request.version(), request.headers())
                && crate::limits::upgrade_allowed(&service.upgrades, request.headers())
                && !decision.arm.protocol.is_http2();
            // Upgrades are never mirrored (a tunnel cannot be copied), and do not take a turn of
            // the mirror routes' percentages either, so those stay exact over the copyable requests.
            let mirror_to = if upgrade {
                None
            } else {
                service.mirror(&head, decision.canary)
            };
            // Only taken when the access log is on: the request moves upstream.
            let line = worker
                .access_log
                .as_ref()
                .map(|_| AccessLine::of(&request, conn.peer, trusted, start));
            // What the client accepts, when the service compresses (never an upgrade or HEAD).
            let accept = service.compression.as_deref().and_then(|policy| {
                policy.for_request(request.method(), request.headers(), upgrade)
            });
            let mut response = upstream::forward(
                &worker,
                &conn,
                service,
                decision.arm,
                mirror_to,
                upgrade,
                request,
                start,
                service.options.response_timeout,
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
            let encoder = match (service.compression.as_deref(), accept) {
                (Some(policy), Some(choice)) => compress_response(policy, choice, &mut response),
                _ => None,
            };
            let pending = match (&worker.access_log, line) {
                (Some(log), Some(line)) => {
                    let upstream = response
                        .extensions()
                        .get::<access::UpstreamAddr>()
                        .map(|a| a.0);
                    Some(line.pending(
                        log.clone(),
                        response.status(),
                        Some(service.name.clone()),
                        Some(decision.arm.version.clone()),
                        upstream,
                    ))
                }
                _ => None,
            };
            if encoder.is_some() || pending.is_some() {
                let (parts, body) = response.into_parts();
                let body = ProxyBody::layered(Layered::new(body, encoder, pending));
                response = Response::from_parts(parts, body);
            }
            response
        }
    };
    Ok(response)
}

/// `response`, answered by weir itself (no version picked), with its access-log line when the log
/// is on.
fn logged(
    worker: &Worker,
    conn: &ConnInfo,
    trusted: bool,
    start: Instant,
    request: &Request<Incoming>,
    response: Response<ProxyBody>,
    service: Option<Arc<str>>,
) -> Response<ProxyBody> {
    let Some(log) = &worker.access_log else {
        return response;
    };
    let line = AccessLine::of(request, conn.peer, trusted, start);
    let pending = line.pending(log.clone(), response.status(), service, None, None);
    let (parts, body) = response.into_parts();
    let body = ProxyBody::layered(Layered::new(body, None, Some(pending)));
    Response::from_parts(parts, body)
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

/// Decides whether `response` is compressed (`choice`: what the client accepts best) and
/// rewrites its head if so; a response that could be compressed varies on `Accept-Encoding`
/// whatever the client accepted.
fn compress_response(
    policy: &compress::Policy,
    choice: Option<weir_config::CompressionAlgorithm>,
    response: &mut Response<ProxyBody>,
) -> Option<compress::Encoder> {
    use http_body::Body as _;
    if response.body().is_end_stream() || !policy.eligible(response.status(), response.headers()) {
        return None;
    }
    compress::add_vary(response.headers_mut());
    let algorithm = choice?;
    let encoder = policy.encoder(algorithm)?;
    compress::Policy::compress_head(response.headers_mut(), algorithm);
    Some(encoder)
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
