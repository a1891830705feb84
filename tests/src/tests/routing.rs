//! Host and path matching: the most specific host pattern wins (exact, then the longest `*.suffix`,
//! then `*`), then the longest path prefix; no match is a 404, no Host a 400.

use http::{header, Method, Request, Version};

use crate::client::{self, Http1};
use crate::proxy::{self, Proxy};
use crate::upstream::Server;
use crate::TestBody;

/// Each service's only upstream answers with the service's name.
const SERVICES: &[&str] = &[
    "exact",
    "exact-api",
    "exact-api-v2",
    "suffix",
    "long-suffix",
    "any",
    "versioned",
];

const ROUTES: &str = r#"
services:
  - name: exact
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${exact}"]}
  - name: exact-api
    match: {hosts: ["shop.example.com"], pathPrefix: /api}
    stable: {version: v1, upstreams: ["${exact-api}"]}
  - name: exact-api-v2
    match: {hosts: ["shop.example.com"], pathPrefix: /api/v2}
    stable: {version: v1, upstreams: ["${exact-api-v2}"]}
  - name: suffix
    match: {hosts: ["*.example.com"]}
    stable: {version: v1, upstreams: ["${suffix}"]}
  - name: long-suffix
    match: {hosts: ["*.eu.example.com"]}
    stable: {version: v1, upstreams: ["${long-suffix}"]}
  - name: any
    match: {hosts: ["*"], pathPrefix: /public}
    stable: {version: v1, upstreams: ["${any}"]}
  - name: versioned
    match: {hosts: ["api.example.com"], pathPrefix: /v1}
    stable: {version: v1, upstreams: ["${versioned}"]}
"#;

async fn routing_proxy() -> (Proxy, Vec<Server>) {
    let upstreams: Vec<Server> = SERVICES.iter().map(|s| Server::spawn(s)).collect();
    let vars: Vec<(&str, _)> = SERVICES
        .iter()
        .zip(&upstreams)
        .map(|(name, server)| (*name, server.addr()))
        .collect();
    (Proxy::start(proxy::model(ROUTES, &vars)), upstreams)
}

async fn stop(proxy: Proxy, upstreams: Vec<Server>) {
    proxy.shutdown().await;
    for upstream in upstreams {
        upstream.shutdown().await;
    }
}

#[tokio::test]
async fn the_most_specific_host_then_the_longest_prefix_wins() {
    let (proxy, upstreams) = routing_proxy().await;
    let mut client = Http1::connect(proxy.addr()).await;
    let cases = [
        ("shop.example.com", "/", "exact"),
        ("shop.example.com", "/cart", "exact"),
        ("shop.example.com", "/api", "exact-api"),
        ("shop.example.com", "/api/cart", "exact-api"),
        ("shop.example.com", "/api/v2/orders", "exact-api-v2"),
        // Exact beats every suffix, whatever the case and port.
        ("SHOP.Example.COM", "/api/cart", "exact-api"),
        ("shop.example.com:8080", "/api/v2", "exact-api-v2"),
        ("Shop.EXAMPLE.com:443", "/", "exact"),
        // Suffixes: the longest that matches wins; a suffix needs at least one more label.
        ("www.example.com", "/", "suffix"),
        // The host is chosen first: `*` has the longer matching prefix, the suffix still wins.
        ("www.example.com", "/public", "suffix"),
        ("a.b.example.com:80", "/x", "suffix"),
        ("x.eu.example.com", "/", "long-suffix"),
        ("X.EU.Example.Com:8443", "/deep/path", "long-suffix"),
        ("eu.example.com", "/", "suffix"),
        // `*` catches the rest, for its prefix.
        ("example.com", "/public", "any"),
        ("other.org", "/public/img.png", "any"),
        ("127.0.0.1:9999", "/public", "any"),
        // An exact host keeps its own prefixes.
        ("api.example.com", "/v1/users", "versioned"),
    ];
    for (host, path, service) in cases {
        let reply = client.get(host, path).await;
        assert_eq!(reply.status, 200, "{host}{path}");
        assert_eq!(reply.text(), service, "{host}{path}");
    }
    for (name, upstream) in SERVICES.iter().zip(&upstreams) {
        assert!(upstream.requests() > 0, "{name} was never routed to");
    }
    stop(proxy, upstreams).await;
}

#[tokio::test]
async fn nothing_matching_is_a_404_with_a_short_text_body() {
    let (proxy, upstreams) = routing_proxy().await;
    let mut client = Http1::connect(proxy.addr()).await;
    let cases = [
        // Only `*` matches the host, and not its prefix.
        ("other.org", "/private"),
        ("example.com", "/"),
        // A matched exact host does not fall back to a less specific pattern.
        ("api.example.com", "/v2/users"),
        ("api.example.com", "/"),
    ];
    for (host, path) in cases {
        let reply = client.get(host, path).await;
        assert_eq!(reply.status, 404, "{host}{path}");
        assert_eq!(reply.text(), "no route\n", "{host}{path}");
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }
    // The connection is still usable after a 404.
    assert_eq!(client.get("shop.example.com", "/").await.text(), "exact");
    let routed: usize = upstreams.iter().map(Server::requests).sum();
    assert_eq!(routed, 1, "no 404 reached an upstream");
    stop(proxy, upstreams).await;
}

#[tokio::test]
async fn http11_without_host_is_a_400() {
    let (proxy, upstreams) = routing_proxy().await;
    let mut client = Http1::connect(proxy.addr()).await;
    let request = Request::builder()
        .uri("/public")
        .body(TestBody::empty())
        .unwrap();
    assert!(!request.headers().contains_key(header::HOST));
    let reply = client.fetch(request).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.text(), "missing or invalid host\n");

    // An absolute-form request names its host in the target instead.
    let request = Request::builder()
        .method(Method::GET)
        .uri("http://shop.example.com/api")
        .version(Version::HTTP_11)
        .body(TestBody::empty())
        .unwrap();
    let reply = client.fetch(request).await;
    assert_eq!((reply.status.as_u16(), reply.text()), (200, "exact-api"));

    let reply = client.fetch(client::get("shop.example.com", "/")).await;
    assert_eq!(reply.text(), "exact");
    stop(proxy, upstreams).await;
}
