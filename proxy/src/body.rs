//! The response body weir sends to clients: either a small body of its own, or the upstream's body
//! streamed frame by frame, which hands its connection back to the worker's pool once it has ended.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::forward::mirror::Tee;
use crate::stats::{ClientErrorKind, UpstreamErrorKind, VersionStats};
use crate::upstream::Lease;

/// The error type of request bodies sent upstream.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a request body stands, shared by the body (which hyper's upstream connection task
/// polls) and the request path that waits for the response. It tells whose turn it is, so that a
/// slow client is never mistaken for a slow upstream, and whether the body was completely sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// weir is waiting on the upstream (connecting, or writing what the client sent) since then.
    Upstream(Instant),
    /// weir is waiting on the client for more body since then.
    Client(Instant),
    /// The whole body was handed to the upstream connection then.
    Done(Instant),
    /// The client broke the body; already counted as a client error.
    Failed(ClientErrorKind),
}

/// The shared [`Phase`] of one request body.
#[derive(Debug)]
pub(crate) struct BodyState {
    phase: Cell<Phase>,
}

impl BodyState {
    pub(crate) fn new(now: Instant, complete: bool) -> Rc<BodyState> {
        let state = Rc::new(BodyState {
            phase: Cell::new(Phase::Done(now)),
        });
        state.restart(now, complete);
        state
    }

    /// Makes a state that nothing else holds new again (see `ConnInfo::body_state`).
    pub(crate) fn restart(&self, now: Instant, complete: bool) {
        self.phase.set(if complete {
            Phase::Done(now)
        } else {
            Phase::Upstream(now)
        });
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// Whether the whole body went to the upstream.
    pub(crate) fn done(&self) -> bool {
        matches!(self.phase.get(), Phase::Done(_))
    }

    /// The client error that broke the body, if any.
    pub(crate) fn failed(&self) -> Option<ClientErrorKind> {
        match self.phase.get() {
            Phase::Failed(kind) => Some(kind),
            _ => None,
        }
    }
}

/// A client-side body failure, as the upstream connection sees it.
#[derive(Debug, thiserror::Error)]
#[error("request body from the client failed: {}", .0.as_str())]
pub(crate) struct ClientBodyError(pub(crate) ClientErrorKind);

/// The client-facing limits of a request body: the wait for each piece and the total size. A
/// failure is recorded once, as a client error of the version, and ends the body with an error.
pub(crate) struct BodyGuard {
    state: Rc<BodyState>,
    stats: Arc<VersionStats>,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    limit: Option<u64>,
    seen: u64,
}

impl std::fmt::Debug for BodyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyGuard")
            .field("phase", &self.state.phase())
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl BodyGuard {
    pub(crate) fn new(
        state: Rc<BodyState>,
        stats: Arc<VersionStats>,
        timeout: Duration,
        limit: Option<u64>,
    ) -> Box<BodyGuard> {
        Box::new(BodyGuard {
            state,
            stats,
            timeout,
            sleep: None,
            limit,
            seen: 0,
        })
    }

    fn fail(&mut self, kind: ClientErrorKind) -> BoxError {
        if self.state.failed().is_none() {
            self.state.phase.set(Phase::Failed(kind));
            self.stats.record_client_error(kind);
        }
        Box::new(ClientBodyError(kind))
    }

    /// Applies the limits to what the client's body gave; `end` is whether it has ended.
    fn check(
        &mut self,
        polled: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>,
        end: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(kind) = self.state.failed() {
            return Poll::Ready(Some(Err(Box::new(ClientBodyError(kind)))));
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.seen = self.seen.saturating_add(data.len() as u64);
                    if self.limit.is_some_and(|limit| self.seen > limit) {
                        return Poll::Ready(Some(Err(self.fail(ClientErrorKind::BodyTooLarge))));
                    }
                }
                let now = Instant::now();
                self.state.phase.set(if end {
                    Phase::Done(now)
                } else {
                    Phase::Upstream(now)
                });
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.state.phase.set(Phase::Done(Instant::now()));
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                // The client's side of the body broke: a malformed body, or the client went away.
                let kind = if error.is_parse() || error.is_parse_status() {
                    ClientErrorKind::BadRequest
                } else {
                    ClientErrorKind::Disconnect
                };
                tracing::debug!(%error, "client request body failed");
                Poll::Ready(Some(Err(self.fail(kind))))
            }
            Poll::Pending => {
                let now = Instant::now();
                if !matches!(self.state.phase(), Phase::Client(_)) {
                    self.state.phase.set(Phase::Client(now));
                    let deadline = now + self.timeout;
                    match &mut self.sleep {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let expired = self
                    .sleep
                    .as_mut()
                    .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Some(Err(self.fail(ClientErrorKind::BodyTimeout))))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

/// The request body sent upstream: the client's body, streamed; when the request is mirrored,
/// its frames are also kept (by reference count, never copied) for the mirror's copy, which is
/// queued once the body is complete. The primary never waits for the copy.
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Incoming,
    tee: Option<Box<Tee>>,
    guard: Option<Box<BodyGuard>>,
}

impl RequestBody {
    /// The client's body, not mirrored.
    pub(crate) fn plain(inner: Incoming) -> Self {
        RequestBody {
            inner,
            tee: None,
            guard: None,
        }
    }

    /// The client's body, its frames also collected into `tee`.
    pub(crate) fn teed(inner: Incoming, tee: Box<Tee>) -> Self {
        let mut body = RequestBody {
            inner,
            tee: Some(tee),
            guard: None,
        };
        body.complete_if_done();
        body
    }

    /// The same body, under the client-facing limits of `guard`.
    pub(crate) fn guarded(mut self, guard: Box<BodyGuard>) -> Self {
        self.guard = Some(guard);
        self
    }

    #[inline]
    fn complete_if_done(&mut self) {
        // The tee first: a body that is not mirrored pays one branch, not a call into hyper.
        if self.tee.is_some() && self.inner.is_end_stream() {
            if let Some(tee) = self.tee.take() {
                tee.complete();
            }
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let polled = match &mut this.guard {
            Some(guard) => guard.check(polled, this.inner.is_end_stream(), cx),
            None => polled.map(|frame| frame.map(|result| result.map_err(BoxError::from))),
        };
        if let Some(tee) = &mut this.tee {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        if !tee.push(data) {
                            this.tee = None;
                        }
                    }
                    this.complete_if_done();
                }
                Poll::Ready(None) => {
                    if let Some(tee) = this.tee.take() {
                        tee.complete();
                    }
                }
                // A broken body: no complete copy (the tee counts it when dropped).
                Poll::Ready(Some(Err(_))) => this.tee = None,
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // hyper may stop polling once `is_end_stream` says so: the copy is complete then.
        self.complete_if_done();
    }
}

/// A response body.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream {
        inner: Incoming,
        /// The upstream connection, returned to the pool when the body has ended.
        lease: Option<Lease<RequestBody>>,
        stats: Arc<VersionStats>,
        /// The request body's state: the connection is reused only if it was completely sent,
        /// and a response body broken by the client's failure is not the upstream's fault.
        request: Option<Rc<BodyState>>,
        /// A gRPC response whose `grpc-status` is still to come in its trailers.
        grpc: bool,
    },
    /// Compressed and/or counted for the access log (`forward::layered`).
    Layered(Box<crate::forward::layered::Layered>),
}

// === impl ProxyBody ===

impl ProxyBody {
    /// A complete body.
    pub fn full(bytes: Bytes) -> Self {
        ProxyBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody {
            kind: Kind::Full(None),
        }
    }

    /// `layered`'s body (compression, access log).
    pub(crate) fn layered(layered: crate::forward::layered::Layered) -> Self {
        ProxyBody {
            kind: Kind::Layered(Box::new(layered)),
        }
    }

    /// The upstream's body; `lease` goes back to its pool when the body ends cleanly.
    pub(crate) fn upstream(
        inner: Incoming,
        lease: Option<Lease<RequestBody>>,
        stats: Arc<VersionStats>,
        request: Option<Rc<BodyState>>,
    ) -> Self {
        let mut body = ProxyBody {
            kind: Kind::Upstream {
                inner,
                lease,
                stats,
                request,
                grpc: false,
            },
        };
        body.release_if_done();
        body
    }

    /// Reads the gRPC outcome from the trailers as they pass ([`crate::grpc`]).
    pub(crate) fn watch_grpc(&mut self) {
        if let Kind::Upstream { grpc, .. } = &mut self.kind {
            *grpc = true;
        }
    }

    /// Returns the connection to its pool as soon as the upstream body is complete (HEAD, 204, 304
    /// and `Content-Length: 0` responses are complete from the start).
    fn release_if_done(&mut self) {
        if let Kind::Upstream {
            inner,
            lease,
            request,
            ..
        } = &mut self.kind
        {
            if inner.is_end_stream() {
                release(lease, request.as_deref());
            }
        }
    }
}

/// Returns the connection to its pool only if the request body was completely sent as well: an
/// upstream that answered early (401, 413) may still be reading it, and the next request must not
/// queue behind it. Otherwise the connection is dropped (closed once hyper is done with it).
fn release(lease: &mut Option<Lease<RequestBody>>, request: Option<&BodyState>) {
    if let Some(lease) = lease.take() {
        if request.is_none_or(BodyState::done) {
            lease.release();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Layered(layered) => layered.poll_frame(cx),
            Kind::Upstream {
                inner,
                lease,
                stats,
                request,
                grpc,
            } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                if *grpc {
                    match &polled {
                        Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                            *grpc = false;
                            crate::grpc::on_trailers(frame.trailers_ref(), stats);
                        }
                        Poll::Ready(None) => {
                            *grpc = false;
                            crate::grpc::on_trailers(None, stats);
                        }
                        // A broken body is counted as one (`Body`), not as a gRPC outcome.
                        Poll::Ready(Some(Err(_))) => *grpc = false,
                        _ => {}
                    }
                }
                match &polled {
                    Poll::Ready(None) => release(lease, request.as_deref()),
                    Poll::Ready(Some(Err(_))) => {
                        // The body broke mid-way: the connection is gone, and the client's
                        // connection will be aborted by hyper so it cannot mistake a truncated body
                        // for a complete one. When the client's own body failed first, that was
                        // counted as a client error: not the upstream's fault.
                        lease.take();
                        if request.as_ref().and_then(|r| r.failed()).is_none() {
                            stats.record_upstream_error(UpstreamErrorKind::Body);
                        }
                    }
                    Poll::Ready(Some(Ok(_))) => this.release_if_done(),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream { inner, .. } => inner.is_end_stream(),
            Kind::Layered(layered) => layered.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream { inner, .. } => inner.size_hint(),
            Kind::Layered(layered) => layered.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper may stop polling once `is_end_stream` says so; the connection is still reusable then.
        self.release_if_done();
    }
}
