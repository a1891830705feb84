//! Traffic policies over real sockets, with route tables built directly from a `Model` and
//! `Policy` values: header and cookie routes, the blue-green preview (host, header, listener) and
//! sticky versions (cookie and header-hash forms, `Secure` on TLS listeners).

use std::collections::HashMap;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::Method;
use weir_config::{
    AffinityKey, BlueGreen, HeaderRoute, HostPattern, Preview, RequestMatch, SessionAffinity,
    Strategy, StrategyKind, StringMatch, Weight,
};
use weir_proxy::routes::Policy;

use super::shop;
use crate::body::TestBody;
use crate::certs::{material, TestCa};
use crate::client::{self, tls_config, tls_connect, Http1};
use crate::proxy::{self, Proxy};
use crate::upstream::Server;

fn weight(percent: f64) -> Weight {
    Weight::from_percent(percent).expect("a valid weight")
}

fn header(name: &str, value: StringMatch) -> RequestMatch {
    RequestMatch::Header {
        name: name.into(),
        value,
    }
}

/// A GET to shop with these extra headers.
fn get_with(headers: &[(&str, &str)]) -> http::Request<TestBody> {
    let mut request = client::get("shop.example.com", "/");
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            HeaderValue::from_str(value).expect("a header value"),
        );
    }
    request
}

#[tokio::test]
async fn header_routes_send_matching_requests_to_the_canary_at_weight_0() {
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let routes = vec![
        HeaderRoute {
            name: "exact".into(),
            any_of: vec![vec![header("x-beta", StringMatch::Exact("yes".into()))]],
        },
        HeaderRoute {
            name: "prefix-and-regex".into(),
            any_of: vec![vec![
                header("x-team", StringMatch::Prefix("qa-".into())),
                header("x-build", StringMatch::Regex("[0-9]{3}".into())),
            ]],
        },
        HeaderRoute {
            name: "cookie".into(),
            any_of: vec![vec![RequestMatch::Cookie {
                name: "beta".into(),
                value: StringMatch::Exact("on".into()),
            }]],
        },
    ];
    let policy = Policy {
        weight: Weight::ZERO,
        header_routes: routes,
        ..Policy::default()
    };
    let proxy = Proxy::builder(shop(&v1, &v2))
        .policy("shop", policy)
        .start();
    let mut client = Http1::connect(proxy.addr()).await;
    let canary: &[&[(&str, &str)]] = &[
        &[("x-beta", "yes")],
        &[("x-team", "qa-eu"), ("x-build", "123")],
        &[("cookie", "a=1; beta=on")],
        &[("cookie", "a=1"), ("cookie", "beta=on")],
    ];
    let stable: &[&[(&str, &str)]] = &[
        &[],
        &[("x-beta", "no")],
        &[("x-team", "qa-eu"), ("x-build", "1234")],
        &[("x-team", "dev"), ("x-build", "123")],
        &[("cookie", "beta=off; xbeta=on")],
    ];
    for _ in 0..10 {
        for headers in canary {
            let reply = client.fetch(get_with(headers)).await;
            assert_eq!(reply.served_by(), "v2", "{headers:?}");
        }
        for headers in stable {
            let reply = client.fetch(get_with(headers)).await;
            assert_eq!(reply.served_by(), "v1", "{headers:?}");
        }
    }
    let routed = (10 * canary.len()) as u64;
    assert_eq!(
        proxy.version_stats("shop", "v2").snapshot().requests,
        routed,
        "header-routed requests are counted under the canary's version"
    );

    // The policy drops the routes (a later step, promotion or abort): nothing reaches the canary.
    proxy.set_policy("shop", Policy::from(Weight::ZERO));
    for headers in canary {
        let reply = client.fetch(get_with(headers)).await;
        assert_eq!(
            reply.served_by(),
            "v1",
            "{headers:?} after the route is gone"
        );
    }
    assert_eq!(v2.requests(), routed as usize);

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

/// `shop` with a blue-green strategy: preview host `preview.shop.example.com`, listener `preview`,
/// header `x-preview: 1`.
fn blue_green(v1: &Server, v2: &Server) -> weir_config::Model {
    let mut model = proxy::model(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
  - name: preview
    address: 127.0.0.1:0
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${v1}"]}
    canary: {version: v2, upstreams: ["${v2}"]}
"#,
        &[("v1", v1.addr()), ("v2", v2.addr())],
    );
    model.services[0].strategy = Some(Strategy {
        webhooks: Vec::new(),
        kind: StrategyKind::BlueGreen(BlueGreen {
            preview: Preview {
                hosts: vec![HostPattern::Exact("preview.shop.example.com".into())],
                listener: Some("preview".into()),
                headers: vec![header("x-preview", StringMatch::Exact("1".into()))],
            },
            auto_promotion_enabled: false,
            auto_promotion_after: None,
            pre_promotion_analysis: None,
            post_promotion_analysis: None,
            scale_down_delay: Duration::from_secs(30),
        }),
        progress_deadline: Duration::from_secs(600),
    });
    model
}

#[tokio::test]
async fn the_preview_is_reached_by_host_header_and_listener_only_while_it_is_up() {
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let proxy = Proxy::builder(blue_green(&v1, &v2))
        .policy(
            "shop",
            Policy {
                preview: true,
                ..Policy::default()
            },
        )
        .start();
    let mut public = Http1::connect(proxy.listener_addr("public")).await;
    let mut preview_listener = Http1::connect(proxy.listener_addr("preview")).await;

    for up in [true, false] {
        let expect = if up { "v2" } else { "v1" };
        let by_host = public.get("preview.shop.example.com", "/").await;
        assert_eq!(
            by_host.served_by(),
            expect,
            "preview host, preview up: {up}"
        );
        let by_header = public.fetch(get_with(&[("x-preview", "1")])).await;
        assert_eq!(by_header.served_by(), expect, "preview header, up: {up}");
        let by_listener = preview_listener.get("shop.example.com", "/").await;
        assert_eq!(
            by_listener.served_by(),
            expect,
            "preview listener, up: {up}"
        );
        for _ in 0..20 {
            let production = public.get("shop.example.com", "/").await;
            assert_eq!(production.served_by(), "v1", "production stays on stable");
        }
        let wrong = public.fetch(get_with(&[("x-preview", "2")])).await;
        assert_eq!(wrong.served_by(), "v1");
        // Preview off: like Argo's preview service with no new version, it reaches stable.
        proxy.set_policy("shop", Policy::default());
    }

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn the_host_that_routed_a_request_is_the_host_the_upstream_sees() {
    // An absolute-form target routes by its authority (RFC 9112 §3.2.2), so that authority must
    // also be the `Host` sent upstream: a client cannot reach the preview by the target while the
    // new version sees the production host in `Host`, nor the reverse. Userinfo is not forwarded.
    let v1 = Server::builder("v1").echo_request().spawn();
    let v2 = Server::builder("v2").echo_request().spawn();
    let proxy = Proxy::builder(blue_green(&v1, &v2))
        .policy(
            "shop",
            Policy {
                preview: true,
                ..Policy::default()
            },
        )
        .start();
    let mut public = Http1::connect(proxy.listener_addr("public")).await;
    // A Host that names another host than the target is refused (400) before routing.
    for (target, host) in [
        ("http://preview.shop.example.com/x", "shop.example.com"),
        ("http://shop.example.com:8080/x", "preview.shop.example.com"),
        (
            "http://user:secret@preview.shop.example.com/x",
            "shop.example.com",
        ),
    ] {
        let mut request = client::get_url(target);
        request
            .headers_mut()
            .insert(header::HOST, HeaderValue::from_str(host).expect("a host"));
        let mut fresh = Http1::connect(proxy.listener_addr("public")).await;
        let reply = fresh.fetch(request).await;
        assert_eq!(reply.status, 400, "{target} with Host: {host}");
    }
    for (target, host, version, seen) in [
        (
            "http://preview.shop.example.com/x",
            "Preview.Shop.Example.com:80",
            "v2",
            "preview.shop.example.com",
        ),
        (
            "http://shop.example.com:8080/x",
            "shop.example.com:8080",
            "v1",
            "shop.example.com:8080",
        ),
        (
            "http://user:secret@preview.shop.example.com/x",
            "preview.shop.example.com",
            "v2",
            "preview.shop.example.com",
        ),
    ] {
        let mut request = client::get_url(target);
        request
            .headers_mut()
            .insert(header::HOST, HeaderValue::from_str(host).expect("a host"));
        let reply = public.fetch(request).await;
        assert_eq!(reply.served_by(), version, "{target} with Host: {host}");
        assert_eq!(reply.echoed_header("host"), [seen], "{target}");
        assert_eq!(reply.echoed_header("x-forwarded-host"), [seen], "{target}");
        assert_eq!(reply.json()["uri"], "/x");
    }

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

fn with_affinity(mut model: weir_config::Model, key: AffinityKey) -> weir_config::Model {
    model.services[0].session_affinity = Some(SessionAffinity {
        key,
        max_age: Duration::from_secs(3600),
    });
    model
}

/// The `weir-shop=N` pair of a `Set-Cookie` value.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .expect("a cookie pair")
        .to_string()
}

#[tokio::test]
async fn sticky_clients_keep_their_version_and_only_move_to_the_canary_as_the_weight_rises() {
    const CLIENTS: usize = 200;
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let model = with_affinity(shop(&v1, &v2), AffinityKey::Cookie("weir-shop".into()));
    let proxy = Proxy::builder(model).weight("shop", weight(20.0)).start();
    let mut client = Http1::connect(proxy.addr()).await;

    // 200 cookie-less clients: each gets a cookie on its first response and keeps its version.
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let first = client.get("shop.example.com", "/").await;
        let set_cookie = first
            .header("set-cookie")
            .expect("a new client gets a cookie");
        assert!(
            set_cookie.ends_with("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"),
            "{set_cookie}"
        );
        let cookie = cookie_pair(set_cookie);
        let version = first.served_by().to_string();
        for _ in 0..19 {
            let reply = client.fetch(get_with(&[("cookie", &cookie)])).await;
            assert_eq!(reply.served_by(), version, "{cookie} keeps its version");
            assert!(
                reply.header("set-cookie").is_none(),
                "the cookie is set only once"
            );
        }
        clients.push((cookie, version));
    }
    // Binomial(200, 0.2): mean 40, standard deviation √(200·0.2·0.8) ≈ 5.66. Four standard
    // deviations (±22) fail a correct proxy about once in 15 000 runs.
    let on_canary = clients.iter().filter(|(_, v)| v == "v2").count();
    assert!(
        (18..=62).contains(&on_canary),
        "{on_canary} of {CLIENTS} clients on the canary at 20%"
    );

    // Raising the weight moves no client from canary to stable.
    proxy.set_weight("shop", weight(50.0));
    let mut at_50 = 0;
    for (cookie, version) in &clients {
        let reply = client.fetch(get_with(&[("cookie", cookie)])).await;
        if version == "v2" {
            assert_eq!(reply.served_by(), "v2", "{cookie} stays on the canary");
        }
        at_50 += usize::from(reply.served_by() == "v2");
    }
    assert!(at_50 >= on_canary);

    // Weight 0 (a rollback): everyone is on stable.
    proxy.set_weight("shop", Weight::ZERO);
    for (cookie, _) in &clients {
        let reply = client.fetch(get_with(&[("cookie", cookie)])).await;
        assert_eq!(reply.served_by(), "v1", "{cookie} after rollback");
    }

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn the_header_hash_form_keeps_each_user_on_one_version() {
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let model = with_affinity(shop(&v1, &v2), AffinityKey::Header("x-user".into()));
    let proxy = Proxy::builder(model).weight("shop", weight(30.0)).start();
    let mut client = Http1::connect(proxy.addr()).await;
    let mut seen: HashMap<String, String> = HashMap::new();
    for round in 0..5 {
        for user in 0..100 {
            let user = format!("user-{user}");
            let reply = client.fetch(get_with(&[("x-user", &user)])).await;
            assert!(reply.header("set-cookie").is_none());
            let version = reply.served_by().to_string();
            // The bucket is FNV-1a 64 of the value mod 10 000, the same in every weir process.
            let bucket = weir_proxy::routes::rules::fnv1a64(user.as_bytes()) % 10_000;
            let expected = if bucket < 3000 { "v2" } else { "v1" };
            assert_eq!(version, expected, "{user}");
            if round > 0 {
                assert_eq!(seen[&user], version, "{user} keeps its version");
            }
            seen.insert(user, version);
        }
    }
    // Requests without the header fall through to the exact split.
    let mut canary = 0;
    for _ in 0..100 {
        canary += usize::from(client.get("shop.example.com", "/").await.served_by() == "v2");
    }
    assert_eq!(canary, 30);

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn the_affinity_cookie_is_secure_on_tls_listeners() {
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let ca = TestCa::new();
    let leaf = ca.leaf(&["shop.example.com"]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    leaf.write(dir.path(), "shop");
    let model = proxy::model_in(
        dir.path(),
        r#"
listeners:
  - name: secure
    address: 127.0.0.1:0
    tls:
      certificates:
        - {certFile: shop.crt, keyFile: shop.key}
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${v1}"]}
    canary: {version: v2, upstreams: ["${v2}"]}
"#,
        &[("v1", v1.addr()), ("v2", v2.addr())],
    );
    let model = with_affinity(model, AffinityKey::Cookie("weir-shop".into()));
    let proxy = Proxy::builder(model)
        .weight("shop", weight(50.0))
        .tls("secure", material(&[&leaf]))
        .start();
    let config = tls_config(&[ca.der()], &[b"http/1.1"], &[&rustls::version::TLS13]);
    let stream = tls_connect(proxy.addr(), config, "shop.example.com").await;
    let mut client = Http1::handshake(stream).await;
    let reply = client
        .fetch(client::request(
            Method::GET,
            "shop.example.com",
            "/",
            TestBody::empty(),
        ))
        .await;
    let set_cookie = reply.headers[header::SET_COOKIE]
        .to_str()
        .expect("ASCII")
        .to_string();
    assert!(
        set_cookie.ends_with("; HttpOnly; SameSite=Lax; Secure"),
        "{set_cookie}"
    );

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}
