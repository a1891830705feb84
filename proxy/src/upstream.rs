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
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_config::UpstreamOptions;

use crate::stats::UpstreamErrorKind;

/// A worker's idle upstream connections, by address.
pub(crate) struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
    builder: http1::Builder,
}

struct Idle {
    sender: http1::SendRequest<Incoming>,
    since: Instant,
}

/// A connection lent to one exchange; [`Lease::release`] returns it to its pool.
pub(crate) struct Lease {
    pool: Rc<Pool>,
    addr: SocketAddr,
    sender: http1::SendRequest<Incoming>,
    max_idle: usize,
}

/// A failed exchange, before any response head arrived.
#[derive(Debug)]
pub(crate) struct SendError {
    pub(crate) kind: UpstreamErrorKind,
    pub(crate) message: String,
    /// The request, when it was never written, so another upstream may take it.
    pub(crate) request: Option<Request<Incoming>>,
}

// === impl Pool ===

impl Pool {
    pub(crate) fn new() -> Rc<Pool> {
        let mut builder = http1::Builder::new();
        builder.max_buf_size(256 * 1024);
        Rc::new(Pool {
            idle: RefCell::new(HashMap::new()),
            builder,
        })
    }

    /// Sends `request` to `addr` over a pooled or new connection.
    pub(crate) async fn send(
        self: &Rc<Self>,
        addr: SocketAddr,
        options: &UpstreamOptions,
        mut request: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        loop {
            let (mut sender, reused) = match self.checkout(addr, options.idle_timeout).await {
                Some(sender) => (sender, true),
                None => match self.connect(addr, options.connect_timeout, false).await {
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
                        sender,
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
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = match self.connect(addr, options.connect_timeout, true).await {
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
    ) -> Option<http1::SendRequest<Incoming>> {
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

    fn checkin(&self, addr: SocketAddr, sender: http1::SendRequest<Incoming>, max_idle: usize) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() >= max_idle {
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
    ) -> Result<http1::SendRequest<Incoming>, (UpstreamErrorKind, String)> {
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
        // Small request heads must not wait for Nagle.
        let _ = stream.set_nodelay(true);
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
            tokio::task::spawn_local(async move {
                let _ = connection.with_upgrades().await;
            });
        } else {
            tokio::task::spawn_local(async move {
                let _ = connection.await;
            });
        }
        Ok(sender)
    }
}

// === impl Lease ===

impl Lease {
    /// Returns the connection to its pool (dropped instead if it closed).
    pub(crate) fn release(self) {
        let Lease {
            pool,
            addr,
            sender,
            max_idle,
        } = self;
        pool.checkin(addr, sender, max_idle);
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease").field("addr", &self.addr).finish()
    }
}
