//! End-to-end tests of the data plane, one module per area. Every socket is on `127.0.0.1:0`;
//! every test shuts down what it started.

mod forwarding;
mod hot_swap;
mod http2;
mod metrics;
mod routing;
mod shutdown;
mod split;
mod tls;
mod upgrade;
mod upstream_errors;

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
