//! weir's end-to-end tests: real sockets on `127.0.0.1:0`, a real data plane on its own worker threads,
//! test upstreams and clients on the test's tokio runtime.
//!
//! This library is the harness; the tests themselves live in `src/tests/` (compiled only under
//! `cargo test`).
//!
//! - [`bind_ephemeral`], [`Refused`]: sockets and addresses for one test.
//! - [`upstream`]: configurable upstream servers ([`upstream::Server`]) that name their version.
//! - [`proxy`]: [`proxy::Proxy`] builds a route table from a [`weir_config::Model`] and runs
//!   [`weir_proxy::spawn`] on pre-bound listeners; [`proxy::model`] parses YAML with addresses
//!   substituted.
//! - [`faulty`]: raw-TCP upstreams that hang, reset, drip, answer garbage or answer early.
//! - [`client`]: HTTP/1.1, HTTP/2 (prior knowledge) and TLS clients, and [`client::Reply`].
//! - [`body::TestBody`]: a body of known chunks, for requests and for upstream responses.
//! - [`certs`]: a throw-away CA and leaf certificates (rcgen).
//! - [`metrics`]: encodes the data plane's Prometheus metrics and reads samples back.
//! - [`weir`]: the whole of weir in-process ([`weir::Weir`]: `weir_control::app::start` on a config
//!   file in a temporary folder), with helpers to rewrite the file and wait for rollout states.
//! - [`pebble`]: the `pebble` ACME test server and its mock DNS, for the ACME tests.
//! - [`admin`]: a client for weir's admin API (commands, `/metrics`, the event stream).
//! - [`smuggling`]: the request-smuggling corpus, a recording upstream and the replay harness.
//! - [`assert_eventually!`]: polls a condition until a deadline instead of sleeping.

use std::net::{SocketAddr, TcpListener};

pub mod admin;
pub mod body;
pub mod certs;
pub mod client;
pub mod faulty;
pub mod metrics;
pub mod pebble;
pub mod proxy;
pub mod smuggling;
pub mod upstream;
pub mod weir;

pub use body::TestBody;
pub use client::Reply;
pub use proxy::Proxy;

/// Binds a listener on `127.0.0.1` with a port chosen by the OS.
pub fn bind_ephemeral() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// A port that refuses connections: bound (so the OS hands it to no one else while this lives)
/// but never listening. Keep it alive for as long as the test needs the address refused.
#[derive(Debug)]
pub struct Refused {
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl Refused {
    /// Binds `127.0.0.1:0` without listening.
    pub fn new() -> Refused {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("bind 127.0.0.1:0");
        let addr = socket.local_addr().expect("local addr");
        Refused {
            _socket: socket,
            addr,
        }
    }

    /// The refused address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Default for Refused {
    fn default() -> Self {
        Refused::new()
    }
}

/// How long [`assert_eventually!`] polls by default.
pub const EVENTUALLY: std::time::Duration = std::time::Duration::from_secs(10);

/// Polls `$cond` (an expression that may contain `.await`) every few milliseconds until it is true,
/// and panics if it is still false after [`EVENTUALLY`] (or the given `timeout = ...`).
///
/// ```text
/// assert_eventually!(upstream.requests() == 1);
/// assert_eventually!(timeout = Duration::from_secs(2), tcp_refused(addr).await, "listener still open");
/// ```
#[macro_export]
macro_rules! assert_eventually {
    (timeout = $timeout:expr, $cond:expr $(,)?) => {
        $crate::assert_eventually!(timeout = $timeout, $cond, "condition never held: {}", stringify!($cond))
    };
    (timeout = $timeout:expr, $cond:expr, $($msg:tt)+) => {{
        let deadline = ::tokio::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            if ::tokio::time::Instant::now() >= deadline {
                panic!("after {:?}: {}", $timeout, format_args!($($msg)+));
            }
            ::tokio::time::sleep(::std::time::Duration::from_millis(5)).await;
        }
    }};
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!(timeout = $crate::EVENTUALLY, $cond)
    };
    ($cond:expr, $($msg:tt)+) => {
        $crate::assert_eventually!(timeout = $crate::EVENTUALLY, $cond, $($msg)+)
    };
}

#[cfg(test)]
mod tests;
