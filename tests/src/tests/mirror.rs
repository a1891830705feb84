//! Traffic mirroring over real sockets: an exact share of the matching requests is copied to the
//! canary; copies never change the client's response, its latency or the primary metrics; copies
//! that cannot be sent are counted.

use std::time::Duration;

use http::{Method, StatusCode};
use weir_config::{MirrorRoute, RequestMatch, StringMatch, Weight};
use weir_proxy::routes::Policy;
use weir_proxy::stats::{MirrorDropReason, TrafficKind};
use weir_proxy::MirrorLimits;

use super::shop;
use crate::body::{pattern, TestBody};
use crate::client::{self, Http1};
use crate::proxy::Proxy;
use crate::upstream::Server;

/// Mirrors `percent`% of GETs under `/api` (Argo's `setMirrorRoute` example), weight 0.
fn mirror_policy(percent: f64, method: &str) -> Policy {
    Policy {
        weight: Weight::ZERO,
        mirror_routes: vec![MirrorRoute {
            name: "shadow".into(),
            percentage: Weight::from_percent(percent).expect("a valid percentage"),
            any_of: vec![vec![
                RequestMatch::Method(StringMatch::Exact(method.into())),
                RequestMatch::Path(StringMatch::Prefix("/api".into())),
            ]],
        }],
        ..Policy::default()
    }
}

/// Mirrored exchanges the canary answered (or failed) so far.
fn mirrored(proxy: &Proxy) -> u64 {
    proxy
        .stats()
        .get_of(TrafficKind::Mirror, "shop", "v2")
        .map_or(0, |s| s.snapshot().requests)
}

fn dropped(proxy: &Proxy, reason: MirrorDropReason) -> u64 {
    proxy.stats().mirror_drops("shop").count(reason)
}

/// Waits (up to 10 s) until `done` holds.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn half_of_the_matching_requests_are_copied_to_the_canary() {
    const N: usize = 301;
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let proxy = Proxy::builder(shop(&v1, &v2))
        .policy("shop", mirror_policy(50.0, "GET"))
        .start();
    let mut client = Http1::connect(proxy.addr()).await;
    for _ in 0..N {
        let reply = client.get("shop.example.com", "/api/items").await;
        assert_eq!((reply.status, reply.served_by()), (StatusCode::OK, "v1"));
        // Not matching: another method, another path.
        let post = client
            .fetch(client::request(
                Method::POST,
                "shop.example.com",
                "/api/items",
                TestBody::full("x"),
            ))
            .await;
        assert_eq!(post.served_by(), "v1");
        let other = client.get("shop.example.com", "/static").await;
        assert_eq!(other.served_by(), "v1");
    }
    // Drain: every copy sent has been answered and counted.
    wait_for("the mirror to drain", || {
        let m = mirrored(&proxy);
        m as f64 >= N as f64 / 2.0 - 1.0 && v2.requests() as u64 == m
    })
    .await;
    let copies = v2.requests();
    assert!(
        (copies as f64 - N as f64 / 2.0).abs() <= 1.0,
        "{copies} copies of {N} matching requests at 50%"
    );
    assert_eq!(v1.requests(), 3 * N);
    assert_eq!(
        proxy.version_stats("shop", "v2").snapshot().requests,
        0,
        "copies never move the primary stats"
    );
    assert_eq!(
        proxy.version_stats("shop", "v1").snapshot().requests,
        3 * N as u64
    );
    let text = crate::metrics::encode(proxy.stats(), &proxy.routes());
    assert_eq!(
        crate::metrics::sample(
            &text,
            r#"weir_mirror_requests_total{service="shop",version="v2",status="200"}"#
        ),
        Some(copies as f64),
        "{text}"
    );
    assert_eq!(
        crate::metrics::sample(&text, r#"weir_route_rules{service="shop",kind="mirror"}"#),
        Some(1.0)
    );
    assert!(crate::metrics::sample(
        &text,
        r#"http_requests_total{service="shop",version="v2",status="200"}"#
    )
    .is_none());

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

/// The median and the 99th percentile of `n` sequential request latencies through `proxy`,
/// every response checked.
async fn latency(proxy: &Proxy, n: usize) -> Latency {
    let mut client = Http1::connect(proxy.addr()).await;
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let start = tokio::time::Instant::now();
        let reply = client.get("shop.example.com", "/api/x").await;
        latencies.push(start.elapsed());
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "v1"));
    }
    latencies.sort();
    Latency {
        p50: latencies[n / 2],
        p99: latencies[(n * 99 / 100).min(n - 1)],
    }
}

/// Two quantiles of a run's latencies.
#[derive(Clone, Copy, Debug)]
struct Latency {
    p50: Duration,
    p99: Duration,
}

impl Latency {
    const WORST: Latency = Latency {
        p50: Duration::MAX,
        p99: Duration::MAX,
    };

    /// Each quantile's best of `self` and `other`.
    fn best(self, other: Latency) -> Latency {
        Latency {
            p50: self.p50.min(other.p50),
            p99: self.p99.min(other.p99),
        }
    }
}

/// Rounds of [`latency`] through the plain and the mirroring proxy, alternating, so that both
/// see the same machine; the best of each quantile. Load on a shared machine only ever adds
/// latency, so the best of several rounds is what the proxy itself costs.
async fn best_latencies(
    without: &Proxy,
    with: &Proxy,
    rounds: usize,
    n: usize,
) -> (Latency, Latency) {
    let (mut best_without, mut best_with) = (Latency::WORST, Latency::WORST);
    for _ in 0..rounds {
        best_without = best_without.best(latency(without, n).await);
        best_with = best_with.best(latency(with, n).await);
    }
    (best_without, best_with)
}

#[tokio::test]
async fn a_hanging_or_failing_canary_changes_neither_responses_nor_latency_nor_primary_metrics() {
    const ROUNDS: usize = 5;
    const N: usize = 100;
    let v1 = Server::spawn("v1");
    let baseline_canary = Server::spawn("v2");
    let baseline = Proxy::builder(shop(&v1, &baseline_canary)).start();

    for canary in [
        Server::builder("v2").delay(Duration::from_secs(30)).spawn(),
        Server::builder("v2")
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .spawn(),
    ] {
        let mut model = shop(&v1, &canary);
        model.services[0].upstream.response_timeout = Duration::from_millis(500);
        let proxy = Proxy::builder(model)
            .policy("shop", mirror_policy(100.0, "GET"))
            .start();
        let (without, with) = best_latencies(&baseline, &proxy, ROUNDS, N).await;
        eprintln!(
            "latency, best of {ROUNDS} rounds: p50 {:?} / p99 {:?} mirroring, p50 {:?} / p99 {:?} without",
            with.p50, with.p99, without.p50, without.p99
        );
        // Neither quantile may grow by more than 20% (the issue's bound), plus 2 ms of slack for
        // timer and scheduling granularity at sub-millisecond latencies.
        let slack = Duration::from_millis(2);
        assert!(
            with.p50 <= without.p50.mul_f64(1.2) + slack,
            "median with mirroring {:?}, without {:?}",
            with.p50,
            without.p50
        );
        assert!(
            with.p99 <= without.p99.mul_f64(1.2) + slack,
            "p99 with mirroring {:?}, without {:?}",
            with.p99,
            without.p99
        );
        let primary = proxy.version_stats("shop", "v1").snapshot();
        assert_eq!(
            (primary.requests, primary.errors_5xx),
            ((ROUNDS * N) as u64, 0)
        );
        assert_eq!(proxy.version_stats("shop", "v2").snapshot().requests, 0);
        wait_for("copies to reach the canary", || canary.requests() > 0).await;
        proxy.shutdown().await;
        canary.shutdown().await;
    }
    baseline.shutdown().await;
    v1.shutdown().await;
    baseline_canary.shutdown().await;
}

#[tokio::test]
async fn copies_are_dropped_and_counted_when_the_canary_is_slower_than_the_load() {
    let v1 = Server::spawn("v1");
    let v2 = Server::builder("v2").delay(Duration::from_secs(1)).spawn();
    let proxy = Proxy::builder(shop(&v1, &v2))
        .policy("shop", mirror_policy(100.0, "GET"))
        .mirror_limits(MirrorLimits {
            queue: 2,
            concurrency: 1,
            max_body: 64 * 1024,
        })
        .start();
    let mut client = Http1::connect(proxy.addr()).await;
    for _ in 0..20 {
        let reply = client.get("shop.example.com", "/api/x").await;
        assert_eq!(reply.served_by(), "v1");
    }
    let full = dropped(&proxy, MirrorDropReason::QueueFull);
    assert!(full >= 10, "{full} copies dropped for a full queue");
    let text = crate::metrics::encode(proxy.stats(), &proxy.routes());
    assert_eq!(
        crate::metrics::sample(
            &text,
            r#"weir_mirror_dropped_total{service="shop",reason="queue_full"}"#
        ),
        Some(full as f64)
    );

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn bodies_up_to_the_limit_are_mirrored_and_larger_ones_are_not() {
    let v1 = Server::builder("v1").echo_request().spawn();
    let v2 = Server::builder("v2").echo_request().spawn();
    let proxy = Proxy::builder(shop(&v1, &v2))
        .policy("shop", mirror_policy(100.0, "POST"))
        .mirror_limits(MirrorLimits {
            max_body: 1024,
            ..MirrorLimits::default()
        })
        .start();
    let mut client = Http1::connect(proxy.addr()).await;
    for (len, chunked) in [(1024, false), (10, true), (1025, false), (0, false)] {
        let body = pattern(len);
        let test_body = if chunked {
            TestBody::chunked([body.clone()])
        } else {
            TestBody::full(body.clone())
        };
        let reply = client
            .fetch(client::request(
                Method::POST,
                "shop.example.com",
                "/api/upload",
                test_body,
            ))
            .await;
        assert_eq!(
            reply.json()["body_len"],
            len,
            "the primary gets the whole body"
        );
    }
    wait_for("two copies", || mirrored(&proxy) == 2).await;
    assert_eq!(v2.requests(), 2, "1024 and 0 bytes are mirrored");
    assert_eq!(dropped(&proxy, MirrorDropReason::BodyTooLarge), 1);
    assert_eq!(dropped(&proxy, MirrorDropReason::BodyUnknownLength), 1);

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn a_streaming_canary_response_is_discarded_and_cut_not_buffered() {
    // The canary answers every copy with a body that never ends. The mirror reads and drops it
    // frame by frame and closes the connection after 1 MiB, so with one exchange at a time the
    // next copies are still sent (long before the 30 s response timeout), each on a new
    // connection (a half-read one never goes back to the pool).
    let v1 = Server::spawn("v1");
    let v2 = Server::builder("v2").endless_body().spawn();
    let mut model = shop(&v1, &v2);
    model.services[0].upstream.response_timeout = Duration::from_secs(30);
    let proxy = Proxy::builder(model)
        .policy("shop", mirror_policy(100.0, "GET"))
        .mirror_limits(MirrorLimits {
            concurrency: 1,
            ..MirrorLimits::default()
        })
        .start();
    let mut client = Http1::connect(proxy.addr()).await;
    for _ in 0..3 {
        let reply = client.get("shop.example.com", "/api/stream").await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "v1"));
    }
    wait_for("three copies, one after another, answered", || {
        v2.requests() == 3 && mirrored(&proxy) == 3
    })
    .await;
    assert_eq!(v2.connections(), 3);

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn upgrade_requests_are_not_mirrored_and_keep_the_percentage_exact() {
    // Matching `Upgrade` requests interleaved with plain ones: the tunnels are not copied, and
    // the 50% applies to the plain requests alone (an upgrade does not take a turn).
    const N: usize = 21;
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let proxy = Proxy::builder(shop(&v1, &v2))
        .policy("shop", mirror_policy(50.0, "GET"))
        .start();
    let mut client = Http1::connect(proxy.addr()).await;
    for _ in 0..N {
        let reply = client.get("shop.example.com", "/api/items").await;
        assert_eq!(reply.served_by(), "v1");
        // v1 refuses the upgrade with a plain answer; a fresh connection each time all the same.
        let mut upgrading = Http1::connect(proxy.addr()).await;
        let mut request = client::get("shop.example.com", "/api/socket");
        request
            .headers_mut()
            .insert(http::header::CONNECTION, "upgrade".parse().expect("valid"));
        request
            .headers_mut()
            .insert(http::header::UPGRADE, "websocket".parse().expect("valid"));
        let reply = upgrading.fetch(request).await;
        assert_eq!(reply.served_by(), "v1");
    }
    wait_for("the copies", || {
        let m = mirrored(&proxy) as usize;
        m >= N / 2 && v2.requests() == m
    })
    .await;
    let copies = v2.requests();
    assert!(
        (copies as f64 - N as f64 / 2.0).abs() <= 1.0,
        "{copies} copies of {N} plain matching requests at 50%"
    );

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn copies_in_flight_do_not_hold_up_shutdown() {
    // Copies wait on a canary that answers in a minute (the response timeout too): the proxy
    // still stops as soon as its client connections have drained; the copies are abandoned.
    let v1 = Server::spawn("v1");
    let v2 = Server::builder("v2").delay(Duration::from_secs(60)).spawn();
    let mut model = shop(&v1, &v2);
    model.services[0].upstream.response_timeout = Duration::from_secs(60);
    let proxy = Proxy::builder(model)
        .policy("shop", mirror_policy(100.0, "GET"))
        .drain_timeout(Duration::from_secs(30))
        .start();
    let mut client = Http1::connect(proxy.addr()).await;
    for _ in 0..5 {
        assert_eq!(client.get("shop.example.com", "/api/x").await.text(), "v1");
    }
    drop(client);
    wait_for("the copies to reach the canary", || v2.requests() == 5).await;
    let start = tokio::time::Instant::now();
    proxy.shutdown().await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        start.elapsed()
    );

    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn an_announced_length_is_a_claim_not_an_allocation() {
    // With no body limit, a client announcing a terabyte and sending three bytes costs three
    // bytes: the copy's buffer grows with what arrives. The proxy keeps serving.
    use tokio::io::AsyncWriteExt;
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let proxy = Proxy::builder(shop(&v1, &v2))
        .policy("shop", mirror_policy(100.0, "POST"))
        .mirror_limits(MirrorLimits {
            max_body: u64::MAX,
            ..MirrorLimits::default()
        })
        .start();
    let mut raw = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    raw.write_all(
        b"POST /api/upload HTTP/1.1\r\nhost: shop.example.com\r\ncontent-length: 1000000000000\r\n\r\nabc",
    )
    .await
    .expect("write");
    wait_for("the primary request", || v1.requests() == 1).await;
    drop(raw);
    wait_for("the abandoned copy to be counted", || {
        dropped(&proxy, MirrorDropReason::BodyIncomplete) == 1
    })
    .await;
    let mut client = Http1::connect(proxy.addr()).await;
    assert_eq!(client.get("shop.example.com", "/").await.text(), "v1");
    assert_eq!(v2.requests(), 0);

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}
