//! Issue #8: listener redirects, path and host rewrites, header rules with `{{version}}`, and
//! `X-Request-Id`, end to end over real sockets.

use tokio::time::Instant;

use http::HeaderValue;
use weir_config::Weight;

use crate::client::{self, Http1, Http2};
use crate::proxy::{self, Proxy};
use crate::upstream::Server;

#[tokio::test]
async fn a_redirecting_listener_answers_308_with_path_and_query_and_the_other_is_unaffected() {
    let up = Server::builder("v1").echo_request().spawn();
    let model = proxy::model(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
  - name: plain
    address: 127.0.0.1:0
    redirect: {scheme: https, port: 443}
  - name: moved
    address: 127.0.0.1:0
    redirect: {host: www.example.com, port: 8443, code: 301}
services:
  - name: shop
    stable: {version: v1, upstreams: ["${up}"]}
"#,
        &[("up", up.addr())],
    );
    let proxy = Proxy::start(model);
    let started = Instant::now();
    let mut plain = Http1::connect(proxy.listener_addr("plain")).await;
    let cases = [
        ("shop.example.com", "/", "https://shop.example.com/"),
        (
            "Shop.Example.com:8080",
            "/a/b%2Fc?x=1&y=%20",
            "https://shop.example.com/a/b%2Fc?x=1&y=%20",
        ),
        ("[::1]:80", "/v6", "https://[::1]/v6"),
    ];
    for (host, path, location) in cases {
        let reply = plain.get(host, path).await;
        assert_eq!(reply.status, 308, "{host}{path}");
        assert_eq!(reply.header("location"), Some(location));
        assert!(reply.body.is_empty());
    }
    // A POST keeps its method and body on a 308: weir never reads it or reaches an upstream.
    let reply = plain
        .fetch(client::request(
            http::Method::POST,
            "shop.example.com",
            "/form",
            crate::TestBody::full("data"),
        ))
        .await;
    assert_eq!(reply.status, 308);
    // No host to redirect to: 400.
    let mut no_host = client::get("x", "/");
    no_host.headers_mut().remove(http::header::HOST);
    *no_host.version_mut() = http::Version::HTTP_10;
    assert_eq!(plain.fetch(no_host).await.status, 400);

    let mut moved = Http1::connect(proxy.listener_addr("moved")).await;
    let reply = moved.get("shop.example.com:1234", "/p?q").await;
    assert_eq!(reply.status, 301);
    assert_eq!(
        reply.header("location"),
        Some("http://www.example.com:8443/p?q")
    );

    // HTTP/2 (`:authority`) too.
    let h2 = Http2::connect(proxy.listener_addr("plain")).await;
    let reply = h2
        .fetch(client::get_url("http://shop.example.com:80/h2?z=9"))
        .await;
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.header("location"),
        Some("https://shop.example.com/h2?z=9")
    );

    let mut public = Http1::connect(proxy.listener_addr("public")).await;
    let reply = public.get("shop.example.com", "/a?b").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["uri"], "/a?b");
    assert_eq!(up.requests(), 1, "redirects never reach the upstream");
    eprintln!(
        "figure: 7 redirect answers (HTTP/1.1, HTTP/2, 301/308, IPv6 host, a POST, no host -> 400) + 1 proxied request in {:?}",
        started.elapsed()
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn rewrites_replace_the_matched_prefix_keep_the_query_and_never_double_a_slash() {
    let up = Server::builder("v1").echo_request().spawn();
    let model = proxy::model(
        r#"
services:
  - name: api
    match: {hosts: ["shop.example.com"], pathPrefix: /api/}
    rewrite: {pathPrefix: /}
    stable: {version: v1, upstreams: ["${up}"]}
  - name: legacy
    match: {hosts: ["shop.example.com"], pathPrefix: /old}
    rewrite: {pathPrefix: /new/, host: internal.example:8080}
    stable: {version: v1, upstreams: ["${up}"]}
  - name: root
    match: {hosts: ["root.example.com"]}
    rewrite: {pathPrefix: /v2}
    stable: {version: v1, upstreams: ["${up}"]}
"#,
        &[("up", up.addr())],
    );
    let proxy = Proxy::start(model);
    let mut client = Http1::connect(proxy.addr()).await;
    let cases = [
        ("shop.example.com", "/api/v1/x", "/v1/x"),
        ("shop.example.com", "/api/v1/x?q=1&r=%2F", "/v1/x?q=1&r=%2F"),
        ("shop.example.com", "/api/", "/"),
        ("shop.example.com", "/api/?only=query", "/?only=query"),
        ("shop.example.com", "/api/a%20b/%2e%2e", "/"),
        ("shop.example.com", "/api/a%20b/c%2Fd", "/a%20b/c%2Fd"),
        ("shop.example.com", "/old", "/new/"),
        ("shop.example.com", "/old/page?p", "/new/page?p"),
        ("root.example.com", "/", "/v2"),
        ("root.example.com", "/x/y?z", "/v2/x/y?z"),
    ];
    let started = Instant::now();
    for (host, path, upstream_path) in cases {
        let reply = client.get(host, path).await;
        assert_eq!(reply.status, 200, "{host}{path}");
        assert_eq!(reply.json()["uri"], upstream_path, "{host}{path}");
    }
    let reply = client.get("shop.example.com", "/old/h").await;
    assert_eq!(reply.echoed_header("host"), ["internal.example:8080"]);
    assert_eq!(
        reply.echoed_header("x-forwarded-host"),
        ["shop.example.com"],
        "the client's host stays in X-Forwarded-Host"
    );
    // Over HTTP/2 the rewrite applies the same way.
    let h2 = Http2::connect(proxy.addr()).await;
    let reply = h2
        .fetch(client::get_url("http://shop.example.com/api/h2?x"))
        .await;
    assert_eq!(reply.json()["uri"], "/h2?x");
    eprintln!(
        "figure: {} rewrite cases (trailing slash or not, root, query, prefix-only path, host) in {:?}",
        cases.len() + 2,
        started.elapsed()
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn dot_segments_are_resolved_before_routing_and_a_path_above_the_root_is_refused() {
    let public = Server::builder("public").echo_request().spawn();
    let admin = Server::builder("admin").echo_request().spawn();
    let model = proxy::model(
        r#"
services:
  - name: public
    match: {hosts: ["shop.example.com"], pathPrefix: /public/}
    rewrite: {pathPrefix: /}
    stable: {version: public, upstreams: ["${public}"]}
  - name: admin
    match: {hosts: ["shop.example.com"], pathPrefix: /admin/}
    stable: {version: admin, upstreams: ["${admin}"]}
"#,
        &[("public", public.addr()), ("admin", admin.addr())],
    );
    let proxy = Proxy::start(model);
    let mut client = Http1::connect(proxy.addr()).await;
    // (path sent, the version that must serve it, the path its upstream must see)
    let cases = [
        ("/public/x/../y?q=/../z", "public", "/y?q=/../z"),
        ("/public/./a/%2e/b", "public", "/a/b"),
        ("/public/../admin/secret", "admin", "/admin/secret"),
        ("/public/%2e%2e/admin/secret", "admin", "/admin/secret"),
        ("/public/.%2E/admin/", "admin", "/admin/"),
        ("/admin/../public/p", "public", "/p"),
        ("/public/app.js", "public", "/app.js"),
        ("/public/..%2Fadmin", "public", "/..%2Fadmin"),
    ];
    for (path, version, upstream_path) in cases {
        let reply = client.get("shop.example.com", path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("x-version"), Some(version), "{path}");
        assert_eq!(reply.json()["uri"], upstream_path, "{path}");
    }
    let before = (public.requests(), admin.requests());
    for path in ["/..", "/../admin/x", "/public/../../admin/x", "/%2e%2e/x"] {
        let reply = client.get("shop.example.com", path).await;
        assert_eq!(reply.status, 400, "{path}");
    }
    // The same over HTTP/2.
    let h2 = Http2::connect(proxy.addr()).await;
    let reply = h2
        .fetch(client::get_url(
            "http://shop.example.com/public/%2e%2e/admin/h2",
        ))
        .await;
    assert_eq!(reply.header("x-version"), Some("admin"));
    assert_eq!(reply.json()["uri"], "/admin/h2");
    let reply = h2
        .fetch(client::get_url("http://shop.example.com/public/../../x"))
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        (public.requests(), admin.requests()),
        (before.0, before.1 + 1),
        "no refused path reached an upstream"
    );
    eprintln!(
        "figure: {} dot-segment paths routed on their resolved form (including %2e spellings), 5 paths above the root answered 400 without reaching an upstream",
        cases.len() + 1
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn header_rules_set_add_and_remove_both_ways_and_name_the_version_that_served() {
    let v1 = Server::builder("v1")
        .echo_request()
        .header("server", "upstream/1.0")
        .header("x-powered-by", "php")
        .spawn();
    let v2 = Server::builder("v2")
        .echo_request()
        .header("server", "upstream/2.0")
        .header("x-powered-by", "php")
        .spawn();
    let model = proxy::model(
        r#"
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${v1}"]}
    canary: {version: v2, upstreams: ["${v2}"]}
    headers:
      request:
        set: {x-env: prod, x-served-by: "{{service}}@{{version}}"}
        add: {x-tag: "req-{{request.id}}"}
        remove: [x-debug]
      response:
        set: {strict-transport-security: "max-age=31536000", x-version-served: "{{version}}", x-powered-by: weir}
        add: {x-trace: "{{service}}/{{version}}/{{request.id}}"}
        remove: [server]
"#,
        &[("v1", v1.addr()), ("v2", v2.addr())],
    );
    let proxy = Proxy::builder(model)
        .weight("shop", Weight::from_percent(50.0).expect("a weight"))
        .start();
    let mut client = Http1::connect(proxy.addr()).await;
    let mut served = std::collections::BTreeMap::new();
    let started = Instant::now();
    let n = 40;
    for _ in 0..n {
        let mut request = client::get("shop.example.com", "/");
        let headers = request.headers_mut();
        headers.insert("x-debug", HeaderValue::from_static("1"));
        headers.insert("x-env", HeaderValue::from_static("dev"));
        headers.insert("x-tag", HeaderValue::from_static("client"));
        let reply = client.fetch(request).await;
        assert_eq!(reply.status, 200);
        let version = reply.served_by().to_string();
        let id = reply.header("x-request-id").expect("an id").to_string();
        // Upstream side.
        assert_eq!(reply.echoed_header("x-env"), ["prod"]);
        assert_eq!(
            reply.echoed_header("x-served-by"),
            [format!("shop@{version}")]
        );
        assert_eq!(
            reply.echoed_header("x-tag"),
            ["client".to_string(), format!("req-{id}")]
        );
        assert!(reply.echoed_header("x-debug").is_empty());
        assert_eq!(
            reply.echoed_header("x-request-id"),
            std::slice::from_ref(&id)
        );
        // Client side.
        assert_eq!(reply.header("x-version-served"), Some(version.as_str()));
        assert_eq!(
            reply.header("strict-transport-security"),
            Some("max-age=31536000")
        );
        assert_eq!(reply.header("x-powered-by"), Some("weir"));
        assert_eq!(
            reply.header("x-trace"),
            Some(format!("shop/{version}/{id}").as_str())
        );
        assert_eq!(reply.header("server"), None);
        *served.entry(version).or_insert(0) += 1;
    }
    assert_eq!(served.get("v1"), Some(&(n / 2)), "{served:?}");
    assert_eq!(served.get("v2"), Some(&(n / 2)), "{served:?}");
    eprintln!(
        "figure: {n} requests at 50%: {served:?}, every one's rules named its version, in {:?}",
        started.elapsed()
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_kept_from_trusted_peers_replaced_from_others_and_always_returned() {
    let up = Server::builder("v1").echo_request().spawn();
    let config = r#"
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${up}"]}
"#;
    let untrusted = Proxy::start(proxy::model(config, &[("up", up.addr())]));
    let mut trusting_model = proxy::model(config, &[("up", up.addr())]);
    trusting_model.listeners[0].trusted_proxies =
        weir_config::TrustedProxies(vec!["127.0.0.0/8".parse().expect("a CIDR")]);
    let trusting = Proxy::start(trusting_model);

    let with_id = |id: &str| {
        let mut request = client::get("shop.example.com", "/");
        request
            .headers_mut()
            .insert("x-request-id", HeaderValue::from_str(id).expect("a value"));
        request
    };
    let started = Instant::now();

    // Trusted: a sane id is kept, upstream and back.
    let mut client = Http1::connect(trusting.addr()).await;
    let reply = client.fetch(with_id("edge-42.abc")).await;
    assert_eq!(reply.echoed_header("x-request-id"), ["edge-42.abc"]);
    assert_eq!(reply.header("x-request-id"), Some("edge-42.abc"));
    // Trusted but not sane (too long, a space): replaced.
    for bad in ["x".repeat(129), "two words".to_string()] {
        let reply = client.fetch(with_id(&bad)).await;
        let id = reply.header("x-request-id").expect("an id").to_string();
        assert_ne!(id, bad);
        assert_eq!(reply.echoed_header("x-request-id"), [id]);
    }

    // Untrusted: replaced by a generated one.
    let mut client = Http1::connect(untrusted.addr()).await;
    let reply = client.fetch(with_id("forged")).await;
    let id = reply.header("x-request-id").expect("an id").to_string();
    assert_ne!(id, "forged");
    assert_eq!(
        reply.echoed_header("x-request-id"),
        std::slice::from_ref(&id)
    );

    // None sent: generated (32 hex digits), unique, returned, also over HTTP/2.
    let mut ids = std::collections::HashSet::new();
    ids.insert(id);
    for _ in 0..50 {
        let reply = client.get("shop.example.com", "/").await;
        let id = reply.header("x-request-id").expect("an id").to_string();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            reply.echoed_header("x-request-id"),
            std::slice::from_ref(&id)
        );
        assert!(ids.insert(id), "ids are unique");
    }
    let h2 = Http2::connect(untrusted.addr()).await;
    let reply = h2.fetch(client::get_url("http://shop.example.com/")).await;
    assert!(ids.insert(reply.header("x-request-id").expect("an id").to_string()));
    eprintln!(
        "figure: {} unique generated ids, trusted ids kept, forged and insane ones replaced, in {:?}",
        ids.len(),
        started.elapsed()
    );
    untrusted.shutdown().await;
    trusting.shutdown().await;
}
