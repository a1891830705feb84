//! Upstream failures become 502/504 answers counted under the failing version only; connect
//! failures move on to the version's next upstream.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::time::Instant;
use weir_config::Weight;
use weir_proxy::stats::UpstreamErrorKind;

use crate::client::{self, Http1, Http2};
use crate::proxy::{self, Proxy};
use crate::upstream::{Failure, Server, MID_RESPONSE_SENT};
use crate::Refused;

/// `shop` with a healthy stable `v1` and a canary `v2` at `canary`, split 50/50, with a 200 ms
/// response timeout.
fn half_split(v1: &Server, canary: SocketAddr) -> Proxy {
    let model = proxy::model(
        r#"
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${v1}"]}
    canary: {version: v2, upstreams: ["${v2}"], weight: 50}
    upstream: {responseTimeout: 200ms, connectTimeout: 1s}
"#,
        &[("v1", v1.addr()), ("v2", canary)],
    );
    Proxy::builder(model)
        .weight("shop", Weight::from_percent(50.0).unwrap())
        .start()
}

/// Sends `n` requests; the 50/50 split alternates v1, v2, v1, ... so half of them fail. Checks
/// every answer and that the failures are counted under `v2` as `kind` only.
async fn half_fail(proxy: &Proxy, n: usize, status: u16, body: &str, kind: UpstreamErrorKind) {
    let mut client = Http1::connect(proxy.addr()).await;
    for i in 0..n {
        let reply = client.get("shop.example.com", "/").await;
        if i % 2 == 0 {
            assert_eq!(
                (reply.status.as_u16(), reply.text()),
                (200, "v1"),
                "request {i}"
            );
        } else {
            assert_eq!(
                (reply.status.as_u16(), reply.text()),
                (status, body),
                "request {i}"
            );
            assert_eq!(reply.served_by(), "", "an answer of weir's own");
        }
    }
    let failed = (n / 2) as u64;
    let v1 = proxy.version_stats("shop", "v1");
    let v2 = proxy.version_stats("shop", "v2");
    assert_eq!(v1.snapshot().requests, n as u64 - failed);
    assert_eq!(
        v1.snapshot().errors_5xx,
        0,
        "the stable version is unaffected"
    );
    assert_eq!(v2.snapshot().requests, failed);
    assert_eq!(v2.snapshot().errors_5xx, failed);
    assert_eq!(v2.status_counts(), vec![(status, failed)]);
    for other in UpstreamErrorKind::ALL {
        assert_eq!(v1.upstream_errors(other), 0, "v1 {other:?}");
        let expected = if other == kind { failed } else { 0 };
        assert_eq!(v2.upstream_errors(other), expected, "v2 {other:?}");
    }
}

#[tokio::test]
async fn a_refused_upstream_is_a_502() {
    let v1 = Server::spawn("v1");
    let dead = Refused::new();
    let proxy = half_split(&v1, dead.addr());
    half_fail(
        &proxy,
        10,
        502,
        "upstream unavailable\n",
        UpstreamErrorKind::Connect,
    )
    .await;
    proxy.shutdown().await;
    v1.shutdown().await;
}

#[tokio::test]
async fn a_slow_upstream_is_a_504_after_the_response_timeout() {
    let v1 = Server::spawn("v1");
    let v2 = Server::builder("v2").delay(Duration::from_secs(5)).spawn();
    let proxy = half_split(&v1, v2.addr());

    let start = Instant::now();
    half_fail(
        &proxy,
        4,
        504,
        "upstream timed out\n",
        UpstreamErrorKind::Timeout,
    )
    .await;
    let elapsed = start.elapsed();
    // Two timeouts of 200 ms each, not the upstream's 5 s.
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(v2.requests(), 2, "the slow upstream did get the requests");

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn an_upstream_closing_before_responding_is_a_502() {
    let v1 = Server::spawn("v1");
    let v2 = Server::builder("v2")
        .fail(Failure::CloseBeforeResponse)
        .spawn();
    let proxy = half_split(&v1, v2.addr());
    half_fail(
        &proxy,
        6,
        502,
        "upstream unavailable\n",
        UpstreamErrorKind::Protocol,
    )
    .await;
    assert_eq!(v2.requests(), 3, "requests already sent are not retried");
    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn an_upstream_resetting_before_responding_is_a_502() {
    let v1 = Server::spawn("v1");
    let v2 = Server::builder("v2")
        .fail(Failure::ResetBeforeResponse)
        .spawn();
    let proxy = half_split(&v1, v2.addr());
    half_fail(
        &proxy,
        6,
        502,
        "upstream unavailable\n",
        UpstreamErrorKind::Protocol,
    )
    .await;
    assert_eq!(v2.requests(), 3, "requests already sent are not retried");
    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn an_upstream_breaking_mid_body_aborts_the_client_response() {
    let v1 = Server::spawn("v1");
    let v2 = Server::builder("v2")
        .fail(Failure::CloseMidResponse)
        .spawn();
    let proxy = Proxy::builder(proxy::model(
        super::SHOP,
        &[("v1", v1.addr()), ("v2", v2.addr())],
    ))
    .weight("shop", Weight::FULL)
    .start();

    let mut client = Http1::connect(proxy.addr()).await;
    let response = client
        .send(client::get("shop.example.com", "/"))
        .await
        .expect("the head was forwarded");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], "65536");
    let mut body = response.into_body();
    let mut received = 0;
    let error = loop {
        match body.frame().await {
            Some(Ok(frame)) => received += frame.data_ref().map_or(0, |d| d.len()),
            Some(Err(error)) => break error,
            None => panic!("a truncated body must not look complete ({received} bytes)"),
        }
    };
    assert!(received <= MID_RESPONSE_SENT, "{received} bytes, {error}");
    assert!(
        client.is_closed()
            || client
                .send(client::get("shop.example.com", "/"))
                .await
                .is_err()
    );

    // Over HTTP/2 the stream is reset instead.
    let h2 = Http2::connect(proxy.addr()).await;
    let mut sender = h2.sender();
    sender
        .ready()
        .await
        .expect("the HTTP/2 connection is ready");
    let response = sender
        .send_request(client::get_url("http://shop.example.com/"))
        .await
        .expect("the head was forwarded");
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await;
    assert!(
        collected.is_err(),
        "a truncated HTTP/2 body must not look complete"
    );

    let v2_stats = proxy.version_stats("shop", "v2");
    assert_eq!(v2_stats.snapshot().requests, 2, "each head counts as a 200");
    assert_eq!(v2_stats.upstream_errors(UpstreamErrorKind::Body), 2);
    assert_eq!(proxy.version_stats("shop", "v1").snapshot().requests, 0);

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn a_refused_upstream_is_skipped_for_the_next_of_the_same_version() {
    let live = Server::spawn("v1");
    let dead = Refused::new();
    let model = proxy::model(
        r#"
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${dead}", "${live}"]}
"#,
        &[("dead", dead.addr()), ("live", live.addr())],
    );
    let proxy = Proxy::start(model);

    let mut client = Http1::connect(proxy.addr()).await;
    for i in 0..10 {
        let reply = client.get("shop.example.com", "/").await;
        assert_eq!(
            (reply.status.as_u16(), reply.text()),
            (200, "v1"),
            "request {i}"
        );
    }
    assert_eq!(live.requests(), 10);
    let stats = proxy.version_stats("shop", "v1");
    assert_eq!(stats.snapshot().requests, 10);
    assert_eq!(stats.snapshot().errors_5xx, 0);
    assert_eq!(
        stats.upstream_errors(UpstreamErrorKind::Connect),
        5,
        "round robin tried the refused upstream first every other request"
    );

    proxy.shutdown().await;
    live.shutdown().await;
}
