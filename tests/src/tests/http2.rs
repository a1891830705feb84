//! HTTP/2 with prior knowledge (h2c) end to end: clients speak HTTP/2 to weir, weir speaks HTTP/1.1
//! to upstreams.

use bytes::Bytes;
use weir_config::Weight;

use super::shop;
use crate::client::{self, fetch_h2, Http1, Http2};
use crate::proxy::{self, Proxy};
use crate::upstream::Server;

/// Headers that must never cross the proxy in a response.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "x-private",
];

#[tokio::test]
async fn h2c_prior_knowledge_reaches_an_http11_upstream() {
    let echo = Server::builder("v1").echo_request().spawn();
    let model = proxy::model(
        r#"
services:
  - name: shop
    match: {hosts: ["*.example.com"]}
    stable: {version: v1, upstreams: ["${echo}"]}
"#,
        &[("echo", echo.addr())],
    );
    let proxy = Proxy::start(model);

    let client = Http2::connect(proxy.addr()).await;
    let reply = client
        .fetch(client::get_url("http://Shop.Example.com:8080/cart?item=7"))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.served_by(), "v1");
    let seen = reply.json();
    assert_eq!(seen["version"], "HTTP/1.1", "weir speaks HTTP/1.1 upstream");
    assert_eq!(seen["uri"], "/cart?item=7", "origin form upstream");
    assert_eq!(
        reply.echoed_header("host"),
        ["Shop.Example.com:8080"],
        ":authority becomes Host"
    );
    assert_eq!(
        reply.echoed_header("x-forwarded-host"),
        ["Shop.Example.com:8080"]
    );
    assert_eq!(reply.echoed_header("x-forwarded-proto"), ["http"]);

    // `:authority` routes like Host: no match is a 404.
    let reply = client.fetch(client::get_url("http://other.org/")).await;
    assert_eq!((reply.status.as_u16(), reply.text()), (404, "no route\n"));

    proxy.shutdown().await;
    echo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_on_one_connection_are_all_answered() {
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let proxy = Proxy::builder(shop(&v1, &v2))
        .weight("shop", Weight::from_percent(50.0).unwrap())
        .start();

    let client = Http2::connect(proxy.addr()).await;
    let streams: Vec<_> = (0..100)
        .map(|_| {
            let sender = client.sender();
            tokio::spawn(fetch_h2(
                sender,
                client::get_url("http://shop.example.com/"),
            ))
        })
        .collect();
    let mut canary = 0;
    for stream in streams {
        let reply = stream.await.expect("the stream task");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), reply.served_by());
        canary += usize::from(reply.text() == "v2");
    }
    assert_eq!(canary, 50, "the split is exact whatever the concurrency");
    assert_eq!(v1.requests() + v2.requests(), 100);
    assert_eq!(
        proxy.version_stats("shop", "v1").snapshot().requests
            + proxy.version_stats("shop", "v2").snapshot().requests,
        100
    );

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn responses_carry_no_hop_by_hop_headers() {
    let upstream = Server::builder("v1")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("x-kept", "yes")
        .chunked_body(vec![
            Bytes::from_static(b"chunk-1,"),
            Bytes::from_static(b"chunk-2"),
        ])
        .spawn();
    let model = proxy::model(
        r#"
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${up}"]}
"#,
        &[("up", upstream.addr())],
    );
    let proxy = Proxy::start(model);

    // Control: the upstream does send them.
    let mut direct = Http1::connect(upstream.addr()).await;
    let reply = direct.get("shop.example.com", "/").await;
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "x-private",
    ] {
        assert!(reply.header(name).is_some(), "the upstream sends {name}");
    }

    let h2 = Http2::connect(proxy.addr()).await;
    let reply = h2.fetch(client::get_url("http://shop.example.com/")).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "chunk-1,chunk-2")
    );
    assert_eq!(reply.header("x-kept"), Some("yes"));
    for name in HOP_BY_HOP {
        assert!(
            reply.header(name).is_none(),
            "HTTP/2 response has {name}: {:?}",
            reply.headers
        );
    }

    let mut h1 = Http1::connect(proxy.addr()).await;
    let reply = h1.get("shop.example.com", "/").await;
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "chunk-1,chunk-2")
    );
    assert_eq!(reply.header("x-kept"), Some("yes"));
    for name in ["connection", "keep-alive", "proxy-connection", "x-private"] {
        assert!(
            reply.header(name).is_none(),
            "HTTP/1.1 response has {name}: {:?}",
            reply.headers
        );
    }

    proxy.shutdown().await;
    upstream.shutdown().await;
}
