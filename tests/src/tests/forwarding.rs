//! What the upstream sees of a request (forwarding headers, no hop-by-hop headers), and large bodies
//! streaming through in both directions.

use http::{HeaderValue, Method};

use crate::body::{fnv1a, pattern, split};
use crate::client::{self, Http1, Http2};
use crate::proxy::{self, Proxy};
use crate::upstream::Server;
use crate::TestBody;

fn one_upstream(upstream: &Server) -> Proxy {
    Proxy::start(proxy::model(
        r#"
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${up}"]}
"#,
        &[("up", upstream.addr())],
    ))
}

/// A request carrying a previous `X-Forwarded-For`, hop-by-hop headers, and a custom one.
fn request_with_hop_by_hop_headers() -> http::Request<TestBody> {
    let mut request = client::get("Shop.Example.com:8080", "/path?q=1");
    let headers = request.headers_mut();
    for (name, value) in [
        ("x-forwarded-for", "203.0.113.7"),
        ("connection", "x-foo"),
        ("x-foo", "must not pass"),
        ("keep-alive", "timeout=300"),
        ("te", "trailers"),
        ("proxy-connection", "keep-alive"),
        ("proxy-authorization", "Basic c2VjcmV0"),
        ("x-custom", "passes"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    request
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "x-foo",
    "keep-alive",
    "te",
    "proxy-connection",
    "proxy-authorization",
];

#[tokio::test]
async fn the_upstream_sees_forwarding_headers_and_no_hop_by_hop_ones() {
    let echo = Server::builder("v1").echo_request().spawn();
    // The client (127.0.0.1) is a trusted proxy here, so its forwarded headers are appended to;
    // untrusted peers are covered in `edge_request`.
    let mut model = proxy::model(
        r#"
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${up}"]}
"#,
        &[("up", echo.addr())],
    );
    model.listeners[0].trusted_proxies =
        weir_config::TrustedProxies(vec!["127.0.0.0/8".parse().expect("a CIDR")]);
    let proxy = Proxy::start(model);

    // Control: sent straight to the upstream, every header arrives.
    let mut direct = Http1::connect(echo.addr()).await;
    let reply = direct.fetch(request_with_hop_by_hop_headers()).await;
    for name in HOP_BY_HOP {
        assert!(
            !reply.echoed_header(name).is_empty(),
            "the client sends {name}"
        );
    }

    let mut client = Http1::connect(proxy.addr()).await;
    let reply = client.fetch(request_with_hop_by_hop_headers()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.echoed_header("x-forwarded-for"),
        ["203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(reply.echoed_header("x-forwarded-proto"), ["http"]);
    assert_eq!(
        reply.echoed_header("x-forwarded-host"),
        ["Shop.Example.com:8080"]
    );
    assert_eq!(
        reply.echoed_header("host"),
        ["Shop.Example.com:8080"],
        "Host is kept as sent"
    );
    assert_eq!(reply.echoed_header("x-custom"), ["passes"]);
    assert_eq!(reply.json()["uri"], "/path?q=1");
    for name in HOP_BY_HOP {
        assert!(
            reply.echoed_header(name).is_empty(),
            "the upstream saw {name}: {}",
            reply.text()
        );
    }

    // Without a previous value, X-Forwarded-For is just the client.
    let reply = client.get("shop.example.com", "/").await;
    assert_eq!(reply.echoed_header("x-forwarded-for"), ["127.0.0.1"]);

    // A list split over several header lines is one list (RFC 9110 §5.3): all of it is kept.
    let mut request = client::get("shop.example.com", "/");
    request
        .headers_mut()
        .append("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
    request.headers_mut().append(
        "x-forwarded-for",
        HeaderValue::from_static("198.51.100.2, 10.0.0.1"),
    );
    let reply = client.fetch(request).await;
    assert_eq!(
        reply.echoed_header("x-forwarded-for"),
        ["203.0.113.7, 198.51.100.2, 10.0.0.1, 127.0.0.1"]
    );

    proxy.shutdown().await;
    echo.shutdown().await;
}

#[tokio::test]
async fn head_and_bodiless_answers_keep_both_connections_reusable() {
    let upstream = Server::spawn("v1");
    let proxy = one_upstream(&upstream);
    let mut client = Http1::connect(proxy.addr()).await;
    for _ in 0..3 {
        let reply = client
            .fetch(client::request(
                Method::HEAD,
                "shop.example.com",
                "/",
                TestBody::empty(),
            ))
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-length"),
            Some("2"),
            "HEAD keeps the GET length"
        );
        assert!(reply.body.is_empty());
        let reply = client.get("shop.example.com", "/").await;
        assert_eq!((reply.status.as_u16(), reply.text()), (200, "v1"));
    }
    assert_eq!(upstream.requests(), 6);
    assert_eq!(
        upstream.connections(),
        1,
        "the upstream connection was reused after HEAD"
    );
    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn an_upstream_closing_every_connection_is_not_a_failure() {
    // `Connection: close` makes the upstream close after each answer, so the proxy's pooled
    // connection is always stale by the next request.
    let upstream = Server::builder("v1").header("connection", "close").spawn();
    let proxy = one_upstream(&upstream);
    let mut client = Http1::connect(proxy.addr()).await;
    for i in 0..50 {
        let reply = client.get("shop.example.com", "/").await;
        assert_eq!(
            (reply.status.as_u16(), reply.text()),
            (200, "v1"),
            "request {i}"
        );
        assert_eq!(reply.header("connection"), None);
    }
    assert!(
        !client.is_closed(),
        "the client's connection is not the upstream's to close"
    );
    assert_eq!(upstream.requests(), 50);
    assert_eq!(upstream.connections(), 50);
    assert_eq!(proxy.version_stats("shop", "v1").snapshot().errors_5xx, 0);
    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_large_request_body_reaches_the_upstream_intact() {
    const LEN: usize = 8 << 20;
    let echo = Server::builder("v1").echo_request().spawn();
    let proxy = one_upstream(&echo);
    let payload = pattern(LEN);
    let expected_fnv = format!("{:016x}", fnv1a(&payload));

    // Chunked over HTTP/1.1.
    let mut h1 = Http1::connect(proxy.addr()).await;
    let body = TestBody::chunked(split(&payload, 64 << 10));
    let reply = h1
        .fetch(client::request(
            Method::POST,
            "shop.example.com",
            "/upload",
            body,
        ))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body_len"], LEN);
    assert_eq!(reply.json()["body_fnv1a"], expected_fnv.as_str());

    // With a Content-Length over HTTP/1.1.
    let body = TestBody::full(payload.clone());
    let reply = h1
        .fetch(client::request(
            Method::PUT,
            "shop.example.com",
            "/upload",
            body,
        ))
        .await;
    assert_eq!(reply.json()["body_len"], LEN);
    assert_eq!(reply.json()["body_fnv1a"], expected_fnv.as_str());

    // Over HTTP/2, in DATA frames.
    let h2 = Http2::connect(proxy.addr()).await;
    let mut request = client::get_url("http://shop.example.com/upload");
    *request.method_mut() = Method::POST;
    *request.body_mut() = TestBody::chunked(split(&payload, 100_000));
    let reply = h2.fetch(request).await;
    assert_eq!(reply.json()["body_len"], LEN);
    assert_eq!(reply.json()["body_fnv1a"], expected_fnv.as_str());

    proxy.shutdown().await;
    echo.shutdown().await;
}

#[tokio::test]
async fn a_large_chunked_response_streams_back_intact() {
    const LEN: usize = 8 << 20;
    let payload = pattern(LEN);
    let upstream = Server::builder("v1")
        .chunked_body(split(&payload, 32 << 10))
        .spawn();
    let proxy = one_upstream(&upstream);

    let mut h1 = Http1::connect(proxy.addr()).await;
    for _ in 0..2 {
        let reply = h1.get("shop.example.com", "/download").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body.len(), LEN);
        assert!(reply.body == payload, "the body arrived intact");
    }

    let h2 = Http2::connect(proxy.addr()).await;
    let reply = h2
        .fetch(client::get_url("http://shop.example.com/download"))
        .await;
    assert_eq!(reply.body.len(), LEN);
    assert!(reply.body == payload, "the body arrived intact over HTTP/2");

    // The upstream connection went back to the pool after each complete body.
    assert_eq!(upstream.requests(), 3);
    assert_eq!(
        upstream.connections(),
        1,
        "one keep-alive upstream connection served all three"
    );

    proxy.shutdown().await;
    upstream.shutdown().await;
}
