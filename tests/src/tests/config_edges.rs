//! Configs at the edges of what validation accepts still serve: nothing a valid file says may
//! panic the data plane.

use weir_config::Weight;

use crate::client::Http1;
use crate::proxy::{self, Proxy};
use crate::upstream::Server;

/// `maxIdlePerUpstream: 0` turns keep-alive pooling off: every response is answered and every
/// upstream connection is closed instead of pooled (it used to panic on every response).
#[tokio::test]
async fn max_idle_per_upstream_zero_serves_without_pooling() {
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let model = proxy::model(
        r#"
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${v1}"]}
    canary: {version: v2, upstreams: ["${v2}"], weight: 50}
    upstream: {maxIdlePerUpstream: 0}
"#,
        &[("v1", v1.addr()), ("v2", v2.addr())],
    );
    let proxy = Proxy::builder(model)
        .weight("shop", Weight::from_percent(50.0).expect("weight"))
        .start();
    let mut client = Http1::connect(proxy.addr()).await;
    let n = 20;
    for i in 0..n {
        let reply = client.get("shop.example.com", "/").await;
        assert_eq!(reply.status.as_u16(), 200, "request {i}");
    }
    let served = proxy.version_stats("shop", "v1").snapshot().requests
        + proxy.version_stats("shop", "v2").snapshot().requests;
    eprintln!(
        "maxIdlePerUpstream: 0: {served}/{n} requests answered 200 over one client connection"
    );
    assert_eq!(served, n);
    proxy.shutdown().await;
}
