//! The response body weir sends to clients: either a small body of its own, or the upstream's body
//! streamed frame by frame, which hands its connection back to the worker's pool once it has ended.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::forward::mirror::Tee;
use crate::stats::{UpstreamErrorKind, VersionStats};
use crate::upstream::Lease;

/// The request body sent upstream: the client's body, streamed; when the request is mirrored,
/// its frames are also kept (by reference count, never copied) for the mirror's copy, which is
/// queued once the body is complete. The primary never waits for the copy.
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Incoming,
    tee: Option<Box<Tee>>,
}

impl RequestBody {
    /// The client's body, not mirrored.
    pub(crate) fn plain(inner: Incoming) -> Self {
        RequestBody { inner, tee: None }
    }

    /// The client's body, its frames also collected into `tee`.
    pub(crate) fn teed(inner: Incoming, tee: Box<Tee>) -> Self {
        let mut body = RequestBody {
            inner,
            tee: Some(tee),
        };
        body.complete_if_done();
        body
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
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
    },
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

    /// The upstream's body; `lease` goes back to its pool when the body ends cleanly.
    pub(crate) fn upstream(
        inner: Incoming,
        lease: Option<Lease<RequestBody>>,
        stats: Arc<VersionStats>,
    ) -> Self {
        let mut body = ProxyBody {
            kind: Kind::Upstream {
                inner,
                lease,
                stats,
            },
        };
        body.release_if_done();
        body
    }

    /// Returns the connection to its pool as soon as the upstream body is complete (HEAD, 204, 304
    /// and `Content-Length: 0` responses are complete from the start).
    fn release_if_done(&mut self) {
        if let Kind::Upstream { inner, lease, .. } = &mut self.kind {
            if inner.is_end_stream() {
                if let Some(lease) = lease.take() {
                    lease.release();
                }
            }
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
            Kind::Upstream {
                inner,
                lease,
                stats,
            } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => {
                        if let Some(lease) = lease.take() {
                            lease.release();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        // The upstream broke mid-body: the connection is gone, and the client's
                        // connection will be aborted by hyper so it cannot mistake a truncated body
                        // for a complete one.
                        lease.take();
                        stats.record_upstream_error(UpstreamErrorKind::Body);
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
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper may stop polling once `is_end_stream` says so; the connection is still reusable then.
        self.release_if_done();
    }
}
