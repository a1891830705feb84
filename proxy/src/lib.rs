//! weir's data plane: it serves the route table it is handed, and never reads files or decides
//! weights.
//!
//! # Layout
//! - [`routes`]: the immutable [`routes::RouteTable`] snapshot and its channel ([`routes::channel`]
//!   → one [`routes::Publisher`], many [`routes::Routes`]); compiled host/path matching, the
//!   per-request rules ([`routes::rules`]) and the exact weighted split.
//! - [`limits`]: connection limits and timeouts hyper has no knob for, tunnels' idle timeout,
//!   and their Prometheus series.
//! - [`server`]: worker threads, listeners, TLS termination, HTTP/1.1 + HTTP/2, graceful drain.
//! - `forward`: the request path in stages (route → policy → mirror → upstream → record).
//! - [`framing`]: HTTP/1 framing checks on the client's bytes (refuses ambiguous requests with 400
//!   before anything reaches an upstream).
//! - `upstream`: per-worker keep-alive pools to upstreams; HTTP/2 (`h2c`, and `h2` over TLS with
//!   [`check_upstream_ca`] for the control plane's load-time check of a `caFile`).
//! - [`stats`]: per-version atomic counters and latency histograms (primary and mirrored traffic,
//!   mirror drops), snapshots and sliding windows.
//! - [`metrics`]: Prometheus export of the stats.
//! - [`tls`]: rustls configs with SNI certificate selection.
//! - [`error`]: the failures weir answers itself, mapped to responses in one place.

pub mod acme;
mod body;
pub mod error;
mod forward;
pub mod framing;
pub mod grpc;
pub mod limits;
pub mod metrics;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod stats;
mod tasks;
pub mod tls;
mod upstream;

pub use body::ProxyBody;
pub use forward::{AccessLog, AccessLogFormat, MirrorLimits, Pinned, PinnedOutcome, PinnedRequest};
pub use limits::{ConnectionStats, ListenerSettings};
pub use routes::{channel, Publisher, RouteTable, Routes};
pub use server::{serve, spawn, Listener, ServeConfig, Server};
pub use stats::Stats;
pub use upstream::probe;
pub use upstream::tls::{check_upstream_ca, UpstreamTlsError};
