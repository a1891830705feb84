//! The upstream stage: turn the client's request into an upstream request, send it over the
//! worker's pool (trying the arm's other upstreams when a connection cannot be made), tunnel
//! upgrades, and record the outcome in the arm's stats.

use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{mirror, ConnInfo, Worker};
use crate::body::{BodyGuard, BodyState, Phase, ProxyBody, RequestBody};
use crate::error::ProxyError;
use crate::limits::TunnelScope;
use crate::routes::{ArmRoute, ServiceRoute};
use crate::stats::{ClientErrorKind, UpstreamErrorKind, VersionStats};
use crate::upstream::SendError;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Sends the request to `arm` (a copy to `mirror_to` as well, when given) and records the outcome;
/// `upgrade` is [`is_upgrade`] of the request.
///
/// A request its client broke (a body over `maxRequestBodySize`, not delivered within
/// `requestBodyTimeout`, malformed, or a client gone before its answer) is counted in the arm's
/// client errors and never in its statuses, so it can neither roll a canary back nor stop a
/// promotion.
///
/// `response_timeout` is the service's `responseTimeout` for a client's request (a request of
/// weir's own, [`super::pinned`], may have a shorter one).
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    worker: &Rc<Worker>,
    conn: &ConnInfo,
    service: &ServiceRoute,
    arm: &ArmRoute,
    mirror_to: Option<&ArmRoute>,
    upgrade: bool,
    mut request: Request<Incoming>,
    start: Instant,
    response_timeout: Duration,
) -> Response<ProxyBody> {
    // HTTP/2 upstreams keep `te: trailers` (gRPC servers require it); one branch for HTTP/1 arms.
    let te_trailers = arm.protocol.is_http2() && crate::grpc::wants_trailers(request.headers());
    prepare_request(&mut request, conn, upgrade);
    // `rewrite` and `headers.request` (issue #8), on the request as the upstream will see it.
    if let Some(ingress) = &service.ingress {
        ingress.on_request(&mut request, !std::ptr::eq(arm, &service.stable));
    }
    if te_trailers {
        crate::grpc::keep_trailers(request.headers_mut());
    }
    if arm.protocol.is_http2() {
        super::hpack::never_index_request_id(request.headers_mut());
    }
    let outcome = if upgrade {
        // Boxed: a rare path whose future would otherwise enlarge every request's.
        Box::pin(forward_upgrade(worker, service, arm, request)).await
    } else {
        let options = &service.options;
        // A declared length over the limit is refused before anything reaches the upstream.
        let declared = request.body().size_hint().lower();
        if options
            .max_request_body_size
            .is_some_and(|max| declared > max)
        {
            arm.stats.record_client_error(ClientErrorKind::BodyTooLarge);
            Err(ProxyError::Client(ClientErrorKind::BodyTooLarge))
        } else {
            let complete = request.body().is_end_stream();
            let state = conn.body_state(start, complete);
            // A request without a body has nothing to guard (and allocates no guard).
            let guard = (!complete).then(|| {
                BodyGuard::new(
                    state.clone(),
                    arm.stats.clone(),
                    options.request_body_timeout,
                    options.max_request_body_size,
                )
            });
            let mut request = match mirror_to {
                Some(canary) => mirror::tee(&worker.mirror, service, canary, request),
                None => request.map(RequestBody::plain),
            };
            if let Some(guard) = guard {
                request = request.map(|body| body.guarded(guard));
            }
            let waiting = Waiting {
                stats: &arm.stats,
                state: &state,
                answered: false,
            };
            let sent = send(worker, service, arm, request, &state, response_timeout).await;
            waiting.answered();
            sent
        }
    };
    match outcome {
        Ok(response) => {
            arm.stats
                .record(response.status().as_u16(), start.elapsed());
            response
        }
        Err(ProxyError::Client(kind)) => {
            // Already counted where it was found: never in the arm's statuses.
            tracing::debug!(
                service = service.name(),
                version = arm.version(),
                kind = kind.as_str(),
                "client error"
            );
            ProxyError::Client(kind).to_response()
        }
        Err(error) => {
            let status = error.status();
            arm.stats.record(status.as_u16(), start.elapsed());
            tracing::debug!(service = service.name(), version = arm.version(), %error, "upstream failed");
            error.to_response()
        }
    }
}

/// Counts a request whose client went away while weir waited for its answer (the future is
/// dropped before [`Waiting::answered`]) as a client error of the arm.
struct Waiting<'a> {
    stats: &'a VersionStats,
    state: &'a BodyState,
    answered: bool,
}

impl Waiting<'_> {
    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.answered && self.state.failed().is_none() {
            self.stats.record_client_error(ClientErrorKind::Disconnect);
        }
    }
}

/// How waiting for a response head ended without one.
enum Waited {
    /// The upstream had `responseTimeout` of its own time and did not answer.
    Timeout,
    /// The client broke its body (already counted).
    Client(ClientErrorKind),
}

/// Waits for `sending`, giving the upstream `timeout` of its own time: counted from the start, from
/// the last piece of body handed to it, or from the end of the body, but never while weir waits
/// on the client for more body (the body's own `requestBodyTimeout` governs that time).
async fn respond_in_time<F: Future>(
    worker: &Worker,
    sending: F,
    state: &BodyState,
    timeout: Duration,
) -> Result<F::Output, Waited> {
    let mut sending = pin!(sending);
    let mut timer = None;
    loop {
        let deadline = match state.phase() {
            Phase::Upstream(since) | Phase::Done(since) => since + timeout,
            // The client's turn: look again later (the body's timer ends a stalled body).
            Phase::Client(_) => Instant::now() + timeout,
            Phase::Failed(kind) => return Err(Waited::Client(kind)),
        };
        let sleep = match &mut timer {
            None => timer.insert(worker.timer(deadline)),
            Some(timer) => {
                timer.reset(deadline);
                timer
            }
        };
        tokio::select! {
            biased;
            out = &mut sending => return Ok(out),
            () = sleep.sleep() => match state.phase() {
                Phase::Upstream(since) | Phase::Done(since) if Instant::now() >= since + timeout => {
                    return Err(Waited::Timeout)
                }
                _ => {}
            },
        }
    }
}

/// Sends over the pool, trying the arm's other upstreams (the available ones first) when a
/// connection cannot be made, and tells outlier detection how each upstream did: a failure it
/// caused counts, a failure the client caused does not.
async fn send(
    worker: &Rc<Worker>,
    service: &ServiceRoute,
    arm: &ArmRoute,
    mut request: Request<RequestBody>,
    state: &Rc<BodyState>,
    response_timeout: Duration,
) -> Result<Response<ProxyBody>, ProxyError> {
    let options = &service.options;
    let first = arm.next_index();
    let (mut idx, mut attempt) = (first, 0);
    loop {
        let addr = arm.upstreams[idx].addr;
        let tls = arm.upstreams[idx].tls.as_ref();
        let sent = respond_in_time(
            worker,
            worker
                .pool
                .send_with(arm.protocol, tls, addr, options, request, Some(&arm.stats)),
            state,
            response_timeout,
        )
        .await;
        let error = match sent {
            Ok(Ok((mut response, lease))) => {
                let grpc = if arm.protocol.is_http2() {
                    crate::grpc::on_head(response.headers(), &arm.stats)
                } else {
                    crate::grpc::Head::default()
                };
                arm.record_outcome(idx, response.status().is_server_error() || grpc.failed);
                strip_hop_by_hop(response.headers_mut(), false);
                if worker.access_log.is_some() {
                    response
                        .extensions_mut()
                        .insert(super::access::UpstreamAddr(addr));
                }
                let (parts, body) = response.into_parts();
                let mut body =
                    ProxyBody::upstream(body, Some(lease), arm.stats.clone(), Some(state.clone()));
                if grpc.watch_trailers {
                    body.watch_grpc();
                }
                return Ok(Response::from_parts(parts, body));
            }
            Err(Waited::Client(kind)) => return Err(ProxyError::Client(kind)),
            Err(Waited::Timeout) => SendError {
                kind: UpstreamErrorKind::Timeout,
                message: format!("no response from {addr} within {response_timeout:?}"),
                request: None,
            },
            Ok(Err(error)) => match state.failed() {
                // The exchange broke because the client's body did: not the upstream's fault.
                Some(kind) => return Err(ProxyError::Client(kind)),
                None => error,
            },
        };
        arm.stats.record_upstream_error(error.kind);
        arm.record_outcome(idx, true);
        let retryable = matches!(
            error.kind,
            UpstreamErrorKind::Connect | UpstreamErrorKind::ConnectTimeout
        );
        // Retries stay within the arm: another version would hide a bad canary.
        let next = match error.request {
            Some(returned) if retryable => {
                arm.retry_index(first, &mut attempt).map(|i| (i, returned))
            }
            _ => None,
        };
        match next {
            Some((next, returned)) => {
                tracing::debug!(%addr, message = %error.message, "trying the next upstream");
                request = returned;
                idx = next;
            }
            None => {
                return Err(ProxyError::Upstream {
                    kind: error.kind,
                    message: error.message,
                })
            }
        }
    }
}

/// Forwards an HTTP/1.1 `Upgrade` request and, once the upstream answers 101, tunnels bytes both
/// ways. The client's connection is upgraded only after the upstream agreed.
async fn forward_upgrade(
    worker: &Rc<Worker>,
    service: &ServiceRoute,
    arm: &ArmRoute,
    mut request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let idx = arm.next_index();
    let addr = arm.upstreams[idx].addr;
    // The connection's tunnel settings and its place in the listener's count and the drain.
    let scope = request.extensions_mut().remove::<TunnelScope>();
    let client_upgrade = hyper::upgrade::on(&mut request);
    let options = &service.options;
    let sent = tokio::time::timeout(
        options.response_timeout,
        worker
            .pool
            .send_upgrade(addr, options, request.map(RequestBody::plain)),
    )
    .await;
    let mut response = match sent {
        Ok(Ok(response)) => {
            arm.record_outcome(idx, response.status().is_server_error());
            response
        }
        Ok(Err(error)) => {
            arm.stats.record_upstream_error(error.kind);
            arm.record_outcome(idx, true);
            return Err(ProxyError::Upstream {
                kind: error.kind,
                message: error.message,
            });
        }
        Err(_) => {
            arm.stats.record_upstream_error(UpstreamErrorKind::Timeout);
            arm.record_outcome(idx, true);
            return Err(ProxyError::Upstream {
                kind: UpstreamErrorKind::Timeout,
                message: format!("no response from {addr}"),
            });
        }
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        strip_hop_by_hop(response.headers_mut(), false);
        let (parts, body) = response.into_parts();
        return Ok(Response::from_parts(
            parts,
            ProxyBody::upstream(body, None, arm.stats.clone(), None),
        ));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    // Counted from now, so the tunnel takes over the connection's slot without a gap.
    let slot = scope.as_ref().map(TunnelScope::slot);
    crate::tasks::spawn_local(async move {
        let (client, upstream) = match tokio::join!(client_upgrade, upstream_upgrade) {
            (Ok(client), Ok(upstream)) => (client, upstream),
            (client, upstream) => {
                tracing::debug!(
                    client_ok = client.is_ok(),
                    upstream_ok = upstream.is_ok(),
                    "upgrade failed"
                );
                return;
            }
        };
        let client = hyper_util::rt::TokioIo::new(client);
        let upstream = hyper_util::rt::TokioIo::new(upstream);
        match (scope, slot) {
            (Some(scope), Some(slot)) => scope.run(slot, client, upstream).await,
            _ => {
                // Not reached through `server` (every connection carries its scope): still bounded.
                let scope = TunnelScope::detached();
                let slot = scope.slot();
                scope.run(slot, client, upstream).await;
            }
        }
    });
    strip_hop_by_hop(response.headers_mut(), true);
    let (parts, _) = response.into_parts();
    Ok(Response::from_parts(parts, ProxyBody::empty()))
}

/// `Connection: upgrade` with an `Upgrade` header on HTTP/1.1.
pub(super) fn is_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Turns a client request into an upstream request: origin-form URI, HTTP/1.1, a Host header, no
/// hop-by-hop headers, forwarded headers set.
///
/// When the request target carries an authority (HTTP/2 `:authority`, or an absolute-form HTTP/1
/// target), that authority is what the request was routed by, so it replaces any `Host` header the
/// client also sent (RFC 9112 §3.2.2, RFC 9113 §8.3.1; a `Host` that disagrees was refused while
/// routing): the upstream never sees a host other than the one that chose the service (or its
/// blue-green preview). Userinfo is never forwarded.
///
/// Forwarded headers (`X-Forwarded-For`, `-Proto`, `-Host`, RFC 7239 `Forwarded`): from a peer in
/// the listener's `trustedProxies` they are kept and weir's hop is appended to the `For` list and
/// to `Forwarded`; from any other peer whatever the client sent is dropped and replaced by what
/// weir saw, so a client cannot forge its address, scheme or host.
pub(super) fn prepare_request(request: &mut Request<Incoming>, conn: &ConnInfo, upgrade: bool) {
    let (original_host, from_authority) = match request.uri().authority() {
        Some(authority) => {
            let host_port = authority
                .as_str()
                .rsplit_once('@')
                .map_or(authority.as_str(), |(_, host_port)| host_port);
            (HeaderValue::from_str(host_port).ok(), true)
        }
        None => (request.headers().get(header::HOST).cloned(), false),
    };
    if request.uri().scheme().is_some() {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path);
    }
    *request.version_mut() = Version::HTTP_11;
    let trusted = conn.trusted.get().unwrap_or(false);
    let headers = request.headers_mut();
    let seen = Seen::of(headers);
    strip_seen(headers, upgrade, seen);
    if seen.forwarded && !trusted {
        headers.remove(&X_FORWARDED_FOR);
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
        headers.remove(header::FORWARDED);
    }
    // No forwarded header left (the common case): each is inserted without looking for one.
    let fresh = !seen.forwarded || !trusted;
    if let Some(host) = &original_host {
        if from_authority {
            headers.insert(header::HOST, host.clone());
        }
        if fresh || !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
    }
    if fresh || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), conn.proto.clone());
    }
    // RFC 7239: one element per hop.
    let element = conn.forwarded(original_host.as_ref());
    if fresh {
        headers.insert(X_FORWARDED_FOR.clone(), conn.client_ip.clone());
        if let Some(element) = element {
            headers.insert(header::FORWARDED, element);
        }
    } else {
        let forwarded_for = append_list(headers, &X_FORWARDED_FOR, conn.client_ip.as_bytes())
            .unwrap_or_else(|| conn.client_ip.clone());
        headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
        if let Some(element) = element {
            if let Some(forwarded) = append_list(headers, &header::FORWARDED, element.as_bytes()) {
                headers.insert(header::FORWARDED, forwarded);
            }
        }
    }
}

/// weir's own RFC 7239 element for a request from `conn` to `host`: the host is quoted (it may
/// carry a port), and left out when it could not be quoted safely.
pub(super) fn forwarded_element(
    conn: &ConnInfo,
    host: Option<&HeaderValue>,
) -> Option<HeaderValue> {
    let mut element = BytesMut::with_capacity(64);
    element.put_slice(b"for=");
    element.put_slice(conn.forwarded_for.as_bytes());
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        if !host.contains(['"', '\\']) {
            element.put_slice(b";host=\"");
            element.put_slice(host.as_bytes());
            element.put_slice(b"\"");
        }
    }
    element.put_slice(b";proto=");
    element.put_slice(if conn.tls { b"https" } else { b"http" });
    HeaderValue::from_maybe_shared(element.freeze()).ok()
}

/// What one pass over a message's header names found.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    /// `Connection`.
    connection: bool,
    /// A header that is hop-by-hop by definition, whatever `Connection` lists: `TE`, `Trailer`,
    /// `Upgrade`, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Proxy-Authorization`.
    fixed: bool,
    /// `X-Forwarded-For`, `-Proto`, `-Host` or `Forwarded`.
    forwarded: bool,
}

impl Seen {
    fn of(headers: &HeaderMap) -> Seen {
        let mut seen = Seen::default();
        for name in headers.keys() {
            // By length first: most names are none of these, and fail at one comparison.
            let name = name.as_str();
            match name.len() {
                2 => seen.fixed |= name == "te",
                7 => seen.fixed |= name == "trailer" || name == "upgrade",
                9 => seen.forwarded |= name == "forwarded",
                10 => {
                    seen.connection |= name == "connection";
                    seen.fixed |= name == "keep-alive";
                }
                15 => seen.forwarded |= name == "x-forwarded-for",
                16 => {
                    seen.fixed |= name == "proxy-connection";
                    seen.forwarded |= name == "x-forwarded-host";
                }
                17 => {
                    seen.fixed |= name == "transfer-encoding";
                    seen.forwarded |= name == "x-forwarded-proto";
                }
                19 => seen.fixed |= name == "proxy-authorization",
                _ => {}
            }
        }
        seen
    }
}

/// The list header `name` (all its lines, in order: one list, RFC 9110 §5.3) with `item` appended,
/// as one value.
fn append_list(headers: &HeaderMap, name: &HeaderName, item: &[u8]) -> Option<HeaderValue> {
    let previous = headers.get_all(name);
    let len: usize = previous.iter().map(|v| v.len() + 2).sum();
    let mut joined = BytesMut::with_capacity(len + item.len());
    for value in previous {
        joined.put_slice(value.as_bytes());
        joined.put_slice(b", ");
    }
    joined.put_slice(item);
    HeaderValue::from_maybe_shared(joined.freeze()).ok()
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the `Connection` header lists.
/// An upgrade keeps `Connection: upgrade` and `Upgrade`.
///
/// One pass over the names decides what to do, so a message without hop-by-hop headers costs no
/// hash lookups, and `Connection: keep-alive` costs one.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let seen = Seen::of(headers);
    strip_seen(headers, upgrade, seen);
}

/// [`strip_hop_by_hop`] with the names already looked at.
fn strip_seen(headers: &mut HeaderMap, upgrade: bool, seen: Seen) {
    if seen.connection {
        // Tokens naming other headers; `Vec::new` does not allocate until one is found.
        let mut listed = Vec::new();
        // One lookup to read and remove the field.
        if let header::Entry::Occupied(connection) = headers.entry(header::CONNECTION) {
            for value in connection.iter() {
                let Ok(value) = value.to_str() else { continue };
                for token in value.split(',').map(str::trim) {
                    let ignored = ["", "upgrade", "keep-alive", "close"]
                        .iter()
                        .any(|t| token.eq_ignore_ascii_case(t));
                    if !ignored {
                        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                            listed.push(name);
                        }
                    }
                }
            }
            drop(connection.remove_entry_mult());
        }
        for name in listed {
            headers.remove(name);
        }
    }
    if seen.fixed {
        headers.remove(&KEEP_ALIVE);
        headers.remove(&PROXY_CONNECTION);
        headers.remove(header::TE);
        headers.remove(header::TRAILER);
        headers.remove(header::TRANSFER_ENCODING);
        headers.remove(header::PROXY_AUTHORIZATION);
        if !upgrade {
            headers.remove(header::UPGRADE);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_lists_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers, false);
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn one_pass_finds_every_hop_by_hop_and_forwarded_name() {
        let fixed = [
            "te",
            "trailer",
            "upgrade",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "proxy-authorization",
        ];
        let forwarded = [
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
        ];
        let seen = |name: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-other", HeaderValue::from_static("1"));
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
            let seen = Seen::of(&headers);
            (seen.connection, seen.fixed, seen.forwarded)
        };
        assert_eq!(seen("connection"), (true, false, false));
        for name in fixed {
            assert_eq!(seen(name), (false, true, false), "{name}");
        }
        for name in forwarded {
            assert_eq!(seen(name), (false, false, true), "{name}");
        }
        for name in [
            "host",
            "x-forwarded-fo",
            "keep-alives",
            "content-length",
            "tf",
        ] {
            assert_eq!(seen(name), (false, false, false), "{name}");
        }
    }

    #[test]
    fn upgrades_keep_their_upgrade_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(Version::HTTP_11, &headers));
        assert!(!is_upgrade(Version::HTTP_10, &headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers[header::CONNECTION], "upgrade");
        assert_eq!(headers[header::UPGRADE], "websocket");
    }
}
