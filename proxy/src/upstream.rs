//! Upstream connections: one keep-alive pool per worker thread, so checkout and checkin are a
//! `RefCell` borrow, never a lock.
//!
//! A request takes the most recently used idle connection to its upstream (or dials a new one),
//! sends with `try_send_request` so that a pooled connection the upstream has just closed gives the
//! request back for another try, and leases the connection to the response body, which returns it
//! when the body ends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_config::{UpstreamOptions, UpstreamProtocol};

use crate::stats::{UpstreamErrorKind, VersionStats};

mod h2;
pub mod probe;
pub(crate) mod tls;

/// A worker's idle upstream connections, by address, for request bodies of type `B` (the
/// client's streamed body for primary requests, a complete copy for mirrored ones).
pub(crate) struct Pool<B> {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle<B>>, BuildHasherDefault<AddrHasher>>>,
    builder: http1::Builder,
    /// HTTP/2 upstreams (`protocol: h2c`, `h2`): one multiplexed connection per address.
    h2: h2::H2Pool<B>,
}

/// A cheap hash for upstream addresses (looked up twice per request): the keys come from the
/// config, not from clients, so SipHash's flooding resistance buys nothing here.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // FxHash's step.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        // Spread the high bits, which the multiply mixes best, into the low ones hashbrown uses.
        self.0 ^ (self.0 >> 29)
    }
}

struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

/// A connection lent to one exchange; [`Lease::release`] returns it to its pool.
pub(crate) struct Lease<B> {
    pool: Rc<Pool<B>>,
    addr: SocketAddr,
    /// `None` for an HTTP/2 stream: its connection stays shared, nothing to return.
    sender: Option<http1::SendRequest<B>>,
    max_idle: usize,
}

/// A failed exchange, before any response head arrived.
#[derive(Debug)]
pub(crate) struct SendError<B> {
    pub(crate) kind: UpstreamErrorKind,
    pub(crate) message: String,
    /// The request, when it was never written, so another upstream may take it.
    pub(crate) request: Option<Request<B>>,
}

// === impl Pool ===

impl<B> Pool<B>
where
    B: Body<Data = Bytes> + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn new() -> Rc<Pool<B>> {
        let mut builder = http1::Builder::new();
        builder.max_buf_size(256 * 1024);
        Rc::new(Pool {
            idle: RefCell::new(HashMap::default()),
            builder,
            h2: h2::H2Pool::new(),
        })
    }

    /// Sends over HTTP/1.1 ([`Pool::send_counted`]) or HTTP/2, as the version's `protocol` says
    /// (over TLS with `tls`, which the table gives exactly the `h2` upstreams).
    pub(crate) async fn send_with(
        self: &Rc<Self>,
        protocol: UpstreamProtocol,
        tls: Option<&Arc<tls::UpstreamTls>>,
        addr: SocketAddr,
        options: &UpstreamOptions,
        request: Request<B>,
        counted: Option<&Arc<VersionStats>>,
    ) -> Result<(Response<Incoming>, Lease<B>), SendError<B>> {
        if protocol.is_http2() {
            let response = self
                .h2
                .send(addr, tls, options.connect_timeout, request, counted)
                .await?;
            let lease = Lease {
                pool: self.clone(),
                addr,
                sender: None,
                max_idle: 0,
            };
            Ok((response, lease))
        } else {
            self.send_counted(addr, options, request, counted).await
        }
    }

    /// Sends `request` to `addr` over a pooled or new HTTP/1.1 connection, counting a new
    /// connection in `counted`'s open upstream connections for as long as it lives.
    pub(crate) async fn send_counted(
        self: &Rc<Self>,
        addr: SocketAddr,
        options: &UpstreamOptions,
        mut request: Request<B>,
        counted: Option<&Arc<VersionStats>>,
    ) -> Result<(Response<Incoming>, Lease<B>), SendError<B>> {
        loop {
            let (mut sender, reused) = match self.checkout(addr, options.idle_timeout).await {
                Some(sender) => (sender, true),
                // Boxed: dialing (connect, its timer, the handshake) is the cold path, and its
                // future would otherwise make every request's future larger, which is moved on
                // each await.
                None => match Box::pin(self.connect(addr, options.connect_timeout, false, counted))
                    .await
                {
                    Ok(sender) => (sender, false),
                    Err((kind, message)) => {
                        return Err(SendError {
                            kind,
                            message,
                            request: Some(request),
                        })
                    }
                },
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lease = Lease {
                        pool: self.clone(),
                        addr,
                        sender: Some(sender),
                        max_idle: options.max_idle_per_upstream,
                    };
                    return Ok((response, lease));
                }
                Err(mut failed) => match failed.take_message() {
                    // A pooled connection closed under us before the request was written: the
                    // request is intact, so try again (with another idle connection or a new one).
                    Some(returned) if reused => request = returned,
                    returned => {
                        return Err(SendError {
                            kind: UpstreamErrorKind::Protocol,
                            message: failed.into_error().to_string(),
                            request: returned,
                        })
                    }
                },
            }
        }
    }

    /// Sends an `Upgrade` request over a fresh connection that supports upgrades; the connection
    /// leaves the pool for good.
    pub(crate) async fn send_upgrade(
        self: &Rc<Self>,
        addr: SocketAddr,
        options: &UpstreamOptions,
        request: Request<B>,
    ) -> Result<Response<Incoming>, SendError<B>> {
        let mut sender = match self
            .connect(addr, options.connect_timeout, true, None)
            .await
        {
            Ok(sender) => sender,
            Err((kind, message)) => {
                return Err(SendError {
                    kind,
                    message,
                    request: Some(request),
                })
            }
        };
        sender
            .try_send_request(request)
            .await
            .map_err(|mut failed| SendError {
                kind: UpstreamErrorKind::Protocol,
                request: failed.take_message(),
                message: failed.into_error().to_string(),
            })
    }

    /// The most recently used live idle connection to `addr`, waiting for it to finish its previous
    /// exchange if needed.
    async fn checkout(
        &self,
        addr: SocketAddr,
        idle_timeout: Duration,
    ) -> Option<http1::SendRequest<B>> {
        loop {
            let Idle { mut sender, since } = {
                let mut idle = self.idle.borrow_mut();
                idle.get_mut(&addr)?.pop()?
            };
            if sender.is_closed() || since.elapsed() > idle_timeout {
                continue;
            }
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn checkin(&self, addr: SocketAddr, sender: http1::SendRequest<B>, max_idle: usize) {
        // `maxIdlePerUpstream: 0` keeps no idle connection at all.
        if sender.is_closed() || max_idle == 0 {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        while list.len() >= max_idle && !list.is_empty() {
            // Drop the oldest: the newest are the warmest.
            list.remove(0);
        }
        list.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        upgrades: bool,
        counted: Option<&Arc<VersionStats>>,
    ) -> Result<http1::SendRequest<B>, (UpstreamErrorKind, String)> {
        let stream = dial(addr, connect_timeout).await?;
        let (sender, connection) =
            self.builder
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| {
                    (
                        UpstreamErrorKind::Protocol,
                        format!("handshake with {addr}: {e}"),
                    )
                })?;
        if upgrades {
            crate::tasks::spawn_local(async move {
                let _ = connection.with_upgrades().await;
            });
        } else {
            let open = counted.map(|stats| OpenConnection::new(stats.clone()));
            crate::tasks::spawn_local(async move {
                let _ = connection.await;
                drop(open);
            });
        }
        Ok(sender)
    }
}

/// A TCP connection to `addr` within `connect_timeout`, with Nagle off (small request heads and
/// gRPC frames must not wait); the error says which kind of failure it was, for the stats.
pub(crate) async fn dial(
    addr: SocketAddr,
    connect_timeout: Duration,
) -> Result<TcpStream, (UpstreamErrorKind, String)> {
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err((
                UpstreamErrorKind::ConnectTimeout,
                format!("connect to {addr} timed out after {connect_timeout:?}"),
            ))
        }
        Ok(Err(e)) => {
            return Err((
                UpstreamErrorKind::Connect,
                format!("connect to {addr}: {e}"),
            ))
        }
        Ok(Ok(stream)) => stream,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One open upstream connection in its version's gauge, for as long as its task lives (dropped
/// with the task, however it ends).
struct OpenConnection(Arc<VersionStats>);

impl OpenConnection {
    fn new(stats: Arc<VersionStats>) -> OpenConnection {
        stats.connection_opened();
        OpenConnection(stats)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

// === impl Lease ===

impl<B> Lease<B>
where
    B: Body<Data = Bytes> + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Returns the connection to its pool (dropped instead if it closed).
    pub(crate) fn release(self) {
        let Lease {
            pool,
            addr,
            sender,
            max_idle,
        } = self;
        if let Some(sender) = sender {
            pool.checkin(addr, sender, max_idle);
        }
    }
}

impl<B> fmt::Debug for Lease<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease").field("addr", &self.addr).finish()
    }
}
