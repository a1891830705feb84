//! The request path at the edge: clients that stall, oversize or abandon their bodies are answered
//! (408, 413) and counted as client errors, never against the version; a pooled upstream
//! connection is reused only after both bodies completed; one Host per request; forwarded headers
//! are trusted only from `trustedProxies`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_control::demo::traffic::Traffic;
use weir_control::engine::rollout::Phase;
use weir_proxy::stats::{ClientErrorKind, UpstreamErrorKind};

use crate::client::{self, Http1, Http2};
use crate::faulty::{self, Script};
use crate::proxy::{self, Proxy};
use crate::upstream::Server;
use crate::weir::{fill, Weir, HEADER};
use crate::TestBody;

const HOST: &str = "shop.example.com";

/// Service `shop` with stable `v1` only, at `up`.
fn one(up: SocketAddr) -> weir_config::Model {
    proxy::model(
        r#"
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${up}"]}
"#,
        &[("up", up)],
    )
}

/// Writes `head` (and `body`), then keeps the connection open without sending more; returns the
/// first line weir answers with (empty if it closed without answering) and the connection.
async fn stall(addr: SocketAddr, head: String, body: &[u8]) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body).await.expect("write body");
    let line = status_line(&mut stream).await;
    (line, stream)
}

/// Reads until the end of the first line (or EOF).
async fn status_line(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&seen);
    text.lines().next().unwrap_or("").to_string()
}

fn post_head(len: usize) -> String {
    format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len}\r\n\r\n")
}

#[tokio::test]
async fn stalled_bodies_get_408_as_client_errors_while_other_clients_are_served() {
    const STALLED: usize = 50;
    let v1 = Server::builder("v1").echo_request().spawn();
    let mut model = one(v1.addr());
    // The upstream's own timeout is shorter than the client's: waiting on a client must never
    // be charged as an upstream timeout.
    model.services[0].upstream.request_body_timeout = Duration::from_millis(1500);
    model.services[0].upstream.response_timeout = Duration::from_secs(1);
    let proxy = Proxy::builder(model).workers(2).start();

    let start = Instant::now();
    let stalled: Vec<_> = (0..STALLED)
        .map(|_| tokio::spawn(stall(proxy.addr(), post_head(1000), b"only ten b")))
        .collect();
    // Meanwhile, other clients are served as usual.
    let mut client = Http1::connect(proxy.addr()).await;
    let mut served = 0u64;
    while stalled.iter().any(|t| !t.is_finished()) {
        let reply = client
            .fetch(client::request(
                Method::POST,
                HOST,
                "/",
                TestBody::full(Bytes::from_static(b"a complete body")),
            ))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        served += 1;
    }
    for task in stalled {
        let (line, _stream) = task.await.expect("the stalled client");
        assert!(line.starts_with("HTTP/1.1 408"), "answered {line:?}");
    }
    let took = start.elapsed();

    let stats = proxy.version_stats("shop", "v1");
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.errors_5xx, 0, "no 5xx charged to v1");
    assert_eq!(snapshot.requests, served, "only the served requests count");
    assert_eq!(
        stats.client_errors(ClientErrorKind::BodyTimeout),
        STALLED as u64
    );
    for kind in UpstreamErrorKind::ALL {
        assert_eq!(stats.upstream_errors(kind), 0, "{kind:?}");
    }
    let metrics = crate::metrics::encode(proxy.stats(), &proxy.routes());
    assert_eq!(
        crate::metrics::sample(
            &metrics,
            r#"weir_client_errors_total{service="shop",version="v1",kind="body_timeout"}"#
        ),
        Some(STALLED as f64)
    );
    eprintln!(
        "{STALLED} stalled bodies: {STALLED}×408 in {took:?} (requestBodyTimeout 1.5s, responseTimeout 1s), \
         {served} other requests served, 0 5xx, 0 upstream errors"
    );
    proxy.shutdown().await;
    v1.shutdown().await;
}

#[tokio::test]
async fn a_client_gone_mid_body_or_before_its_answer_is_a_client_error() {
    let v1 = Server::builder("v1")
        .echo_request()
        .delay(Duration::from_millis(300))
        .spawn();
    let proxy = Proxy::builder(one(v1.addr())).workers(1).start();
    let stats = proxy.version_stats("shop", "v1");

    // Half a body, then gone.
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    stream
        .write_all(post_head(1000).as_bytes())
        .await
        .expect("write");
    stream.write_all(&[b'x'; 500]).await.expect("write");
    drop(stream);
    crate::assert_eventually!(stats.client_errors(ClientErrorKind::Disconnect) == 1);

    // A whole request, then gone before the (slow) answer.
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    crate::assert_eventually!(v1.requests() == 2);
    drop(stream);
    crate::assert_eventually!(stats.client_errors(ClientErrorKind::Disconnect) == 2);

    let snapshot = stats.snapshot();
    assert_eq!((snapshot.requests, snapshot.errors_5xx), (0, 0));
    for kind in UpstreamErrorKind::ALL {
        assert_eq!(stats.upstream_errors(kind), 0, "{kind:?}");
    }
    eprintln!("2 abandoned requests: 2 client errors (disconnect), 0 responses charged to v1");
    proxy.shutdown().await;
    v1.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_never_reach_the_upstream_whole() {
    let v1 = Server::builder("v1").echo_request().spawn();
    let mut model = one(v1.addr());
    model.services[0].upstream.max_request_body_size = Some(1000);
    let proxy = Proxy::builder(model).workers(1).start();
    let stats = proxy.version_stats("shop", "v1");

    // Declared too long: refused before anything is sent upstream.
    let mut client = Http1::connect(proxy.addr()).await;
    let reply = client
        .fetch(client::request(
            Method::POST,
            HOST,
            "/",
            TestBody::full(vec![b'x'; 2000]),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v1.requests(), 0, "nothing reached the upstream");

    // Chunked, growing past the limit: cut, 413.
    let mut client = Http1::connect(proxy.addr()).await;
    let chunks = (0..3).map(|_| Bytes::from(vec![b'y'; 600]));
    let reply = client
        .fetch(client::request(
            Method::POST,
            HOST,
            "/",
            TestBody::chunked(chunks),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Within the limit: served.
    let mut client = Http1::connect(proxy.addr()).await;
    let reply = client
        .fetch(client::request(
            Method::POST,
            HOST,
            "/",
            TestBody::full(vec![b'z'; 1000]),
        ))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body_len"], 1000);

    assert_eq!(stats.client_errors(ClientErrorKind::BodyTooLarge), 2);
    let snapshot = stats.snapshot();
    assert_eq!((snapshot.requests, snapshot.errors_5xx), (1, 0));
    eprintln!("maxRequestBodySize 1000: 2000-byte declared and 1800-byte chunked bodies → 413 (2 client errors), 1000 bytes served");
    proxy.shutdown().await;
    v1.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_answers_before_the_body_ends_does_not_hold_up_the_next_request() {
    let early = faulty::Upstream::spawn(Script::EarlyAnswer);
    let mut model = one(early.addr());
    model.services[0].upstream.response_timeout = Duration::from_secs(5);
    let proxy = Proxy::builder(model).workers(1).start();

    // A client sends part of a long body and stalls; the upstream answers 401 at once.
    let (line, _stalled) = stall(proxy.addr(), post_head(100_000), &[b'x'; 1000]).await;
    assert!(line.starts_with("HTTP/1.1 401"), "answered {line:?}");

    // The next request on the same worker gets a connection of its own, at once.
    let started = Instant::now();
    let mut client = Http1::connect(proxy.addr()).await;
    let reply = client.get(HOST, "/").await;
    let took = started.elapsed();
    assert_eq!(reply.status, 401);
    assert!(
        took < Duration::from_secs(1),
        "the next request took {took:?}"
    );
    assert_eq!(early.accepted(), 2, "the busy connection was not reused");
    eprintln!("an upstream answering 401 mid-body: the next request answered in {took:?} on a new connection");
    proxy.shutdown().await;
    early.shutdown().await;
}

#[tokio::test]
async fn max_idle_per_upstream_zero_serves_every_request_on_a_new_connection() {
    let v1 = Server::spawn("v1");
    let mut model = one(v1.addr());
    model.services[0].upstream.max_idle_per_upstream = 0;
    let proxy = Proxy::builder(model).workers(1).start();
    let mut client = Http1::connect(proxy.addr()).await;
    for _ in 0..20 {
        let reply = client.get(HOST, "/").await;
        assert_eq!((reply.status.as_u16(), reply.text()), (200, "v1"));
    }
    assert_eq!(v1.connections(), 20);
    eprintln!("maxIdlePerUpstream 0: 20 requests, 20 upstream connections, no panic");
    proxy.shutdown().await;
    v1.shutdown().await;
}

#[tokio::test]
async fn a_request_names_one_host() {
    let v1 = Server::builder("v1").echo_request().spawn();
    let proxy = Proxy::builder(one(v1.addr())).workers(1).start();
    let mut refused = 0;

    // A repeated Host.
    let (line, _) = stall(
        proxy.addr(),
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nHost: other.example.com\r\n\r\n"),
        b"",
    )
    .await;
    assert!(line.starts_with("HTTP/1.1 400"), "{line}");
    refused += 1;
    // An absolute-form target and a Host naming another host, or another port.
    for host in [
        "other.example.com",
        "shop.example.com:8443",
        "user@shop.example.com",
    ] {
        let (line, _) = stall(
            proxy.addr(),
            format!("GET http://{HOST}/ HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            b"",
        )
        .await;
        assert!(line.starts_with("HTTP/1.1 400"), "Host {host}: {line}");
        refused += 1;
    }
    // HTTP/2: `:authority` and a different Host.
    let h2 = Http2::connect(proxy.addr()).await;
    let mut request = client::get_url(&format!("http://{HOST}/"));
    request
        .headers_mut()
        .insert(header::HOST, HeaderValue::from_static("other.example.com"));
    assert_eq!(h2.fetch(request).await.status, 400);
    refused += 1;
    // The same host in both (any case, default port): served, with that host upstream.
    let mut request = client::get_url(&format!("http://{HOST}/"));
    request.headers_mut().insert(
        header::HOST,
        HeaderValue::from_static("Shop.Example.com:80"),
    );
    let reply = h2.fetch(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echoed_header("host"), [HOST]);

    assert_eq!(v1.requests(), 1, "no refused request reached the upstream");
    eprintln!("{refused} requests naming two hosts refused with 400, 0 forwarded");
    proxy.shutdown().await;
    v1.shutdown().await;
}

/// A request carrying forged forwarded headers.
fn forged() -> http::Request<TestBody> {
    let mut request = client::get(HOST, "/");
    for (name, value) in [
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "admin.example.com"),
        ("forwarded", "for=203.0.113.7;proto=https"),
    ] {
        request
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    request
}

#[tokio::test]
async fn forwarded_headers_are_replaced_from_untrusted_peers_and_appended_from_trusted_ones() {
    let v1 = Server::builder("v1").echo_request().spawn();

    // Untrusted (the default): whatever the client claimed is replaced by what weir saw.
    let proxy = Proxy::builder(one(v1.addr())).workers(1).start();
    let reply = Http1::connect(proxy.addr()).await.fetch(forged()).await;
    assert_eq!(reply.echoed_header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(reply.echoed_header("x-forwarded-proto"), ["http"]);
    assert_eq!(reply.echoed_header("x-forwarded-host"), [HOST]);
    assert_eq!(
        reply.echoed_header("forwarded"),
        [format!("for=127.0.0.1;host=\"{HOST}\";proto=http")]
    );
    proxy.shutdown().await;

    // A trusted proxy in front: its headers are kept and weir's hop appended.
    let mut model = one(v1.addr());
    model.listeners[0].trusted_proxies =
        weir_config::TrustedProxies(vec!["127.0.0.1/32".parse().expect("a CIDR")]);
    let proxy = Proxy::builder(model).workers(1).start();
    let reply = Http1::connect(proxy.addr()).await.fetch(forged()).await;
    assert_eq!(
        reply.echoed_header("x-forwarded-for"),
        ["203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(reply.echoed_header("x-forwarded-proto"), ["https"]);
    assert_eq!(
        reply.echoed_header("x-forwarded-host"),
        ["admin.example.com"]
    );
    assert_eq!(
        reply.echoed_header("forwarded"),
        [format!(
            "for=203.0.113.7;proto=https, for=127.0.0.1;host=\"{HOST}\";proto=http"
        )]
    );
    eprintln!("forged X-Forwarded-*/Forwarded: replaced from an untrusted peer, appended from a trusted one");
    proxy.shutdown().await;
    v1.shutdown().await;
}

/// 50 clients stall their bodies on the canary while a rollout with builtin success-rate analysis
/// judges it: the canary is promoted, its series has no 5xx, and the other clients see only 200s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_cannot_roll_back_a_healthy_canary() {
    const STALLED: usize = 50;
    // Upstreams that read the whole body before answering, so a stalled body makes them wait.
    let v1 = Server::builder("v1").echo_request().spawn();
    let v2 = Server::builder("v2").echo_request().spawn();
    let yaml = fill(
        &format!(
            r#"{HEADER}services:
  - name: shop
    match: {{hosts: ["{HOST}"]}}
    stable: {{version: v1, upstreams: ["${{v1}}"]}}
    canary: {{version: v2, upstreams: ["${{v2}}"]}}
    upstream: {{responseTimeout: 1s, requestBodyTimeout: 2s}}
    strategy:
      canary:
        steps:
          - setWeight: 50
          - pause: {{duration: 1s}}
          - analysis: {{templates: [{{templateName: success-rate}}]}}
analysisTemplates:
  - name: success-rate
    metrics:
      - name: success-rate
        interval: 500ms
        count: 6
        failureLimit: 0
        successCondition: result >= 0.99
        provider: {{builtin: {{metric: success-rate, window: 2s, minRequests: 5}}}}
"#
        ),
        &[("v1", v1.addr()), ("v2", v2.addr())],
    );
    let weir = Weir::start(&yaml).await;
    let traffic = Traffic::spawn(weir.addr(), HOST, 100, 2);
    weir.wait_until("shop", Duration::from_secs(5), "weight 50", |s| {
        s.canary_weight == 50.0
    })
    .await;

    // Stalled bodies, in waves, for the whole analysis: half of them reach the canary.
    let addr = weir.addr();
    let stallers = tokio::spawn(async move {
        let mut answered = Vec::new();
        for _ in 0..2 {
            let wave: Vec<_> = (0..STALLED / 2)
                .map(|_| tokio::spawn(stall(addr, post_head(1000), b"0123456789")))
                .collect();
            for task in wave {
                answered.push(task.await.expect("a staller").0);
            }
        }
        answered
    });
    let done = weir
        .wait_until("shop", Duration::from_secs(30), "the rollout ends", |s| {
            s.phase != Phase::Progressing
        })
        .await;
    let answered = stallers.await.expect("the stallers");
    assert_eq!(done.phase, Phase::Healthy, "{}", done.message);
    assert_eq!(done.stable_version, "v2", "promoted");
    assert_eq!(answered.len(), STALLED);
    assert!(
        answered.iter().all(|line| line.starts_with("HTTP/1.1 408")),
        "{answered:?}"
    );

    let metrics = crate::admin::metrics(weir.admin()).await;
    let five_xx: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("http_requests_total{") && l.contains("status=\"5"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(five_xx, 0.0, "no 5xx in any version's series");
    let client_errors: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("weir_client_errors_total{") && l.contains("body_timeout"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(client_errors, STALLED as f64);
    let on_canary = crate::metrics::sample(
        &metrics,
        r#"weir_client_errors_total{service="shop",version="v2",kind="body_timeout"}"#,
    )
    .unwrap_or(0.0);
    assert!(on_canary > 0.0, "some stalled requests were the canary's");
    let snapshot = traffic.snapshot();
    assert_eq!(
        (snapshot.failures, snapshot.server_errors()),
        (0, 0),
        "other clients unaffected: {:?}",
        snapshot.statuses
    );
    eprintln!(
        "{STALLED} stalled clients during analysis ({on_canary} on the canary): canary promoted, 0 5xx, {client_errors} client errors (body_timeout), other clients: {} responses, 0 errors",
        snapshot.responses()
    );
    drop(traffic);
    weir.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}
