//! The mirror stage: a copy of a request goes to the canary, its response is read and discarded.
//!
//! - The client's response never waits for the copy: copies go through a bounded per-worker queue
//!   to a per-worker sender task that runs at most [`MirrorLimits::concurrency`] exchanges at once;
//!   when the queue is full the copy is dropped and counted (`queue_full`).
//! - Request bodies are mirrored only when their length is known up front and at most
//!   [`MirrorLimits::max_body`] bytes (64 KiB by default): their frames are copied into one buffer
//!   of that exact length as they stream to the primary, and the copy is queued when the body is
//!   complete. The copy's head is copied too. Nothing queued shares memory with hyper's read
//!   buffers, so a queued copy holds exactly its own bytes (never a whole connection buffer), and
//!   a full queue holds at most about `queue × (max_body + head)` bytes per worker.
//!   Longer bodies, bodies of unknown length, and bodies that never complete are not mirrored
//!   (counted as `body_too_large`, `body_unknown_length`, `body_incomplete`).
//! - The canary's response is read frame by frame and discarded, never buffered; past
//!   [`MAX_RESPONSE_DISCARD`] bytes (1 MiB) the connection is closed instead of read on. Only a
//!   connection whose response ended cleanly goes back to the (mirror's own) pool.
//! - A copy carries the primary request's head as sent upstream (same method, path, `Host` and
//!   `X-Forwarded-*` headers). The service's `responseTimeout` bounds the whole mirrored exchange
//!   (head and discarded body), so a slow canary holds a concurrency slot at most that long.
//! - Mirrored exchanges are counted in their own stats (`weir_mirror_requests_total`,
//!   `weir_mirror_request_duration_seconds`), never in the primary series.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use weir_config::UpstreamOptions;

use crate::body::RequestBody;
use crate::routes::{ArmRoute, MirrorStatsHandles, ServiceRoute};
use crate::stats::{MirrorDropReason, UpstreamErrorKind};
use crate::upstream::Pool;

/// The longest mirrored response body read (and discarded) so that its connection can be reused;
/// a longer one is cut by closing the connection, so a streaming or huge canary response holds
/// neither memory nor a concurrency slot for the whole response timeout.
pub(crate) const MAX_RESPONSE_DISCARD: u64 = 1024 * 1024;

/// The most of a mirrored body's announced length reserved before its bytes arrive.
const PREALLOCATE: u64 = 256 * 1024;

/// Bounds of the mirror path, per worker thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorLimits {
    /// Copies waiting to be sent; a copy that finds the queue full is dropped (default 1024).
    pub queue: usize,
    /// Mirrored exchanges in flight at once (default 64).
    pub concurrency: usize,
    /// Longest request body mirrored, in bytes (default 64 KiB).
    pub max_body: u64,
}

impl Default for MirrorLimits {
    fn default() -> Self {
        MirrorLimits {
            queue: 1024,
            concurrency: 64,
            max_body: 64 * 1024,
        }
    }
}

/// One worker's mirror queue.
pub(crate) struct Mirror {
    tx: mpsc::Sender<Job>,
    max_body: u64,
}

/// A copy ready to send.
struct Job {
    request: Request<Full<Bytes>>,
    addr: SocketAddr,
    /// How the canary's upstreams are spoken to (`protocol`).
    protocol: weir_config::UpstreamProtocol,
    /// TLS to the upstream (`protocol: h2`).
    tls: Option<Arc<crate::upstream::tls::UpstreamTls>>,
    options: UpstreamOptions,
    stats: MirrorStatsHandles,
}

/// A copy waiting for its body: what [`RequestBody`] fills as the primary body streams.
#[derive(Debug)]
pub(crate) struct Tee {
    head: Option<http::request::Parts>,
    /// The body so far, in a buffer of the announced length.
    body: BytesMut,
    max_body: u64,
    addr: SocketAddr,
    /// How the canary's upstreams are spoken to (`protocol`).
    protocol: weir_config::UpstreamProtocol,
    /// TLS to the upstream (`protocol: h2`).
    tls: Option<Arc<crate::upstream::tls::UpstreamTls>>,
    options: UpstreamOptions,
    stats: MirrorStatsHandles,
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("addr", &self.addr).finish()
    }
}

// === impl Mirror ===

impl Mirror {
    /// The queue and its sender task (on the current `LocalSet`); the task ends when the queue's
    /// last sender is dropped.
    pub(crate) fn spawn(limits: &MirrorLimits) -> Mirror {
        // Both bounds are clamped to what tokio's semaphores accept, so no setting can panic.
        let bound = |n: usize| n.clamp(1, Semaphore::MAX_PERMITS);
        let (tx, rx) = mpsc::channel(bound(limits.queue));
        let concurrency = Arc::new(Semaphore::new(bound(limits.concurrency)));
        tokio::task::spawn_local(run(rx, concurrency));
        Mirror {
            tx,
            max_body: limits.max_body,
        }
    }
}

/// Starts mirroring `request` to `canary`: returns the primary request, whose body also fills the
/// copy. Called after the request head was prepared for upstream.
pub(crate) fn tee(
    mirror: &Mirror,
    service: &ServiceRoute,
    canary: &ArmRoute,
    request: Request<Incoming>,
) -> Request<RequestBody> {
    let Some(stats) = service.mirror_stats.clone() else {
        return request.map(RequestBody::plain);
    };
    let (parts, body) = request.into_parts();
    let len = if body.is_end_stream() {
        0
    } else {
        let reason = match body.size_hint().exact() {
            Some(len) if len <= mirror.max_body => Ok(len),
            Some(_) => Err(MirrorDropReason::BodyTooLarge),
            None => Err(MirrorDropReason::BodyUnknownLength),
        };
        match reason {
            Ok(len) => len,
            Err(reason) => {
                stats.drops.record(reason);
                return Request::from_parts(parts, RequestBody::plain(body));
            }
        }
    };
    let head = copy_head(&parts);
    let upstream = &canary.upstreams[canary.next_index()];
    let tee = Box::new(Tee {
        head: Some(head),
        // Reserved up front only up to a bound: the length is the client's claim, and `max_body`
        // may be set very high; the buffer grows (to at most `max_body`) as the bytes really come.
        body: BytesMut::with_capacity(usize::try_from(len.min(PREALLOCATE)).unwrap_or(0)),
        max_body: mirror.max_body,
        addr: upstream.addr,
        tls: upstream.tls.clone(),
        protocol: canary.protocol,
        options: service.options.clone(),
        stats,
        tx: mirror.tx.clone(),
    });
    Request::from_parts(parts, RequestBody::teed(body, tee))
}

/// The head of the copy. Header values are copied, not shared: hyper parses them as slices of the
/// connection's read buffer, which a queued copy would otherwise keep alive whole.
fn copy_head(parts: &http::request::Parts) -> http::request::Parts {
    let mut copy = Request::new(());
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.version_mut() = parts.version;
    let headers = copy.headers_mut();
    headers.reserve(parts.headers.len());
    for (name, value) in &parts.headers {
        let mut owned =
            http::HeaderValue::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes()))
                .unwrap_or_else(|_| value.clone());
        owned.set_sensitive(value.is_sensitive());
        headers.append(name.clone(), owned);
    }
    copy.into_parts().0
}

// === impl Tee ===

impl Tee {
    /// Keeps a data frame; false when the body outgrew the limit (the copy is abandoned).
    pub(crate) fn push(&mut self, data: &Bytes) -> bool {
        if (self.body.len() + data.len()) as u64 > self.max_body {
            if self.head.take().is_some() {
                self.stats.drops.record(MirrorDropReason::BodyTooLarge);
            }
            self.body = BytesMut::new();
            return false;
        }
        self.body.extend_from_slice(data);
        true
    }

    /// The body is complete: queue the copy, or drop it when the queue is full.
    pub(crate) fn complete(mut self: Box<Self>) {
        let Some(head) = self.head.take() else { return };
        let body = std::mem::take(&mut self.body).freeze();
        let job = Job {
            request: Request::from_parts(head, Full::new(body)),
            addr: self.addr,
            tls: self.tls.clone(),
            protocol: self.protocol,
            options: self.options.clone(),
            stats: self.stats.clone(),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(job) {
            self.stats.drops.record(MirrorDropReason::QueueFull);
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        if self.head.is_some() {
            self.stats.drops.record(MirrorDropReason::BodyIncomplete);
        }
    }
}

// === the sender task ===

async fn run(mut rx: mpsc::Receiver<Job>, limit: Arc<Semaphore>) {
    let pool: Rc<Pool<Full<Bytes>>> = Pool::new();
    while let Some(job) = rx.recv().await {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let pool = pool.clone();
        crate::tasks::spawn_local(async move {
            exchange(&pool, job).await;
            drop(permit);
        });
    }
}

/// Reads a mirrored response's body frame by frame and drops each frame: true when it ended
/// cleanly within [`MAX_RESPONSE_DISCARD`] bytes (the connection can be reused), false when it broke
/// or ran longer (the caller drops it, closing the connection, rather than read on).
async fn discard(mut body: Incoming) -> bool {
    let mut read = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return false };
        if let Some(data) = frame.data_ref() {
            read += data.len() as u64;
            if read > MAX_RESPONSE_DISCARD {
                return false;
            }
        }
    }
    true
}

/// Sends one copy, reads its response to the end, and records status and time to the head in the
/// mirror stats.
async fn exchange(pool: &Rc<Pool<Full<Bytes>>>, job: Job) {
    let Job {
        request,
        addr,
        tls,
        protocol,
        options,
        stats,
    } = job;
    let start = Instant::now();
    let deadline = start + options.response_timeout;
    let sent = tokio::time::timeout_at(
        deadline,
        pool.send_with(protocol, tls.as_ref(), addr, &options, request, None),
    )
    .await;
    let (status, kind) = match sent {
        Ok(Ok((response, lease))) => {
            let status = response.status();
            stats.exchanges.record(status.as_u16(), start.elapsed());
            // Read and discard the body (never buffered); the connection goes back to the pool
            // only when the body ended within the limits, otherwise it is closed.
            let drained = tokio::time::timeout_at(deadline, discard(response.into_body())).await;
            if let Ok(true) = drained {
                lease.release();
            }
            return;
        }
        Ok(Err(error)) => (
            match error.kind {
                UpstreamErrorKind::ConnectTimeout => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            },
            error.kind,
        ),
        Err(_elapsed) => (StatusCode::GATEWAY_TIMEOUT, UpstreamErrorKind::Timeout),
    };
    stats.exchanges.record_upstream_error(kind);
    stats.exchanges.record(status.as_u16(), start.elapsed());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    /// Whether `part` lies inside `whole`'s memory.
    fn inside(part: &[u8], whole: &[u8]) -> bool {
        let range = whole.as_ptr_range();
        !part.is_empty() && range.contains(&part.as_ptr())
    }

    #[test]
    fn a_queued_copy_shares_no_memory_with_the_connection_buffers() {
        // Stand-ins for hyper's read buffer: header values and body frames are slices of it.
        let buffer = Bytes::from(vec![b'a'; 64 * 1024]);
        let mut request = Request::new(());
        request.headers_mut().insert(
            "x-big",
            http::HeaderValue::from_maybe_shared(buffer.slice(0..1000)).expect("a header value"),
        );
        let (parts, ()) = request.into_parts();
        let head = copy_head(&parts);
        assert!(inside(parts.headers["x-big"].as_bytes(), &buffer));
        assert_eq!(head.headers["x-big"], parts.headers["x-big"]);
        assert!(!inside(head.headers["x-big"].as_bytes(), &buffer));

        let stats = Stats::new();
        let (tx, mut rx) = mpsc::channel(1);
        let mut tee = Box::new(Tee {
            head: Some(head),
            body: BytesMut::with_capacity(30),
            max_body: 30,
            addr: "127.0.0.1:1".parse().expect("an address"),
            protocol: weir_config::UpstreamProtocol::Http1,
            tls: None,
            options: UpstreamOptions::default(),
            stats: MirrorStatsHandles {
                exchanges: stats.mirror_handle("shop", "v2"),
                drops: stats.mirror_drops("shop"),
            },
            tx,
        });
        assert!(tee.push(&buffer.slice(100..110)));
        assert!(tee.push(&buffer.slice(200..220)));
        tee.complete();
        let job = rx.try_recv().expect("the copy is queued");
        let mut body = job.request.into_body();
        let frame = std::pin::Pin::new(&mut body)
            .poll_frame(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        let std::task::Poll::Ready(Some(Ok(frame))) = frame else {
            panic!("a full body is ready");
        };
        let data = frame.into_data().expect("a data frame");
        assert_eq!(&data[..], &[b'a'; 30][..]);
        assert!(!inside(&data, &buffer));
    }

    #[test]
    fn a_body_longer_than_announced_is_abandoned_and_counted_once() {
        let stats = Stats::new();
        let (tx, mut rx) = mpsc::channel(1);
        let drops = stats.mirror_drops("shop");
        let mut tee = Box::new(Tee {
            head: Some(copy_head(&Request::new(()).into_parts().0)),
            body: BytesMut::with_capacity(4),
            max_body: 4,
            addr: "127.0.0.1:1".parse().expect("an address"),
            protocol: weir_config::UpstreamProtocol::Http1,
            tls: None,
            options: UpstreamOptions::default(),
            stats: MirrorStatsHandles {
                exchanges: stats.mirror_handle("shop", "v2"),
                drops: drops.clone(),
            },
            tx,
        });
        assert!(tee.push(&Bytes::from_static(b"abc")));
        assert!(!tee.push(&Bytes::from_static(b"de")));
        tee.complete();
        assert!(rx.try_recv().is_err());
        assert_eq!(drops.count(MirrorDropReason::BodyTooLarge), 1);
        assert_eq!(drops.count(MirrorDropReason::BodyIncomplete), 0);
    }
}
