//! End-to-end tests of the data plane and the control plane, one module per area (the control
//! plane's: `reload`, `rollout`, `policies_rollout`, `admin`, `prometheus`, `examples`). Every socket is on `127.0.0.1:0`;
//! every test shuts down what it started.

mod access_log;
mod acme;
mod admin;
mod admin_security;
mod blue_green;
mod compression;
mod config_edges;
mod dashboard;
mod datadog;
mod dns;
mod doc_links;
mod edge_conn;
mod edge_memory;
mod edge_request;
mod examples;
mod exec;
mod faults;
mod forwarding;
mod grpc;
mod health;
mod hot_swap;
mod http2;
mod import;
mod ingress_rewrite;
mod loadtest;
mod metrics;
mod mirror;
mod notifications;
mod policies;
mod policies_rollout;
mod prometheus;
mod ratelimit;
mod reload;
mod rollout;
mod routing;
mod shutdown;
mod smuggling;
mod split;
mod tls;
mod upgrade;
mod upstream_errors;
mod webhooks;

use weir_config::Model;

use crate::proxy;
use crate::upstream::Server;

/// Service `shop` on `shop.example.com`: stable `v1` at `${v1}`, canary `v2` at `${v2}` (weight 0
/// unless the test sets one).
const SHOP: &str = r#"
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${v1}"]}
    canary: {version: v2, upstreams: ["${v2}"]}
"#;

/// [`SHOP`] with these two upstreams.
fn shop(v1: &Server, v2: &Server) -> Model {
    proxy::model(SHOP, &[("v1", v1.addr()), ("v2", v2.addr())])
}

/// Asserts that `count` of `len` requests is within 1 of `len · percent / 100`.
#[track_caller]
fn assert_share(count: usize, len: usize, percent: f64, what: &str) {
    let expected = len as f64 * percent / 100.0;
    assert!(
        (count as f64 - expected).abs() <= 1.0,
        "{what}: canary got {count} of {len} at {percent}%, expected {expected} ± 1"
    );
}

/// A small deterministic xorshift generator, so "random" test inputs are the same on every run.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
