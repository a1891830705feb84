//! The weighted split is exact over real traffic: N sequential requests put the canary within 1 of
//! N·w, over the whole run and over any sub-run; versions spread their requests over their upstreams.

use weir_config::Weight;

use super::{assert_share, shop};
use crate::client::Http1;
use crate::proxy::{self, Proxy};
use crate::upstream::Server;

/// Sends `n` sequential requests through a proxy serving `shop` with the canary at `percent`, and
/// checks the split over the whole run, over requests 137..537, at the upstreams and in the stats.
async fn exact_split(percent: f64, n: usize) {
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let weight = Weight::from_percent(percent).expect("a valid weight");
    let proxy = Proxy::builder(shop(&v1, &v2))
        .weight("shop", weight)
        .start();

    let mut client = Http1::connect(proxy.addr()).await;
    let mut canary = Vec::with_capacity(n);
    for _ in 0..n {
        let reply = client.get("shop.example.com", "/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.text(),
            reply.served_by(),
            "body and header name the same version"
        );
        canary.push(reply.served_by() == "v2");
    }

    let total = canary.iter().filter(|&&c| c).count();
    let window = canary[137..537].iter().filter(|&&c| c).count();
    match percent {
        0.0 => assert_eq!(total, 0, "weight 0 never reaches the canary"),
        100.0 => assert_eq!(total, n, "weight 100 sends everything to the canary"),
        _ => {
            assert_share(total, n, percent, "whole run");
            assert_share(window, 400, percent, "requests 137..537");
        }
    }
    assert_eq!(
        v2.requests(),
        total,
        "the canary upstream saw what the client saw"
    );
    assert_eq!(v1.requests(), n - total);
    let stable = proxy.version_stats("shop", "v1").snapshot();
    let canary_stats = proxy.version_stats("shop", "v2").snapshot();
    assert_eq!(stable.requests, (n - total) as u64);
    assert_eq!(canary_stats.requests, total as u64);
    assert_eq!(stable.errors_5xx + canary_stats.errors_5xx, 0);

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn weight_0_sends_nothing_to_the_canary() {
    exact_split(0.0, 1000).await;
}

#[tokio::test]
async fn weight_half_a_percent_is_exact_over_2000() {
    exact_split(0.5, 2000).await;
}

#[tokio::test]
async fn weight_1_is_exact() {
    exact_split(1.0, 1000).await;
}

#[tokio::test]
async fn weight_10_is_exact() {
    exact_split(10.0, 1000).await;
}

#[tokio::test]
async fn weight_50_is_exact() {
    exact_split(50.0, 1000).await;
}

#[tokio::test]
async fn weight_100_sends_everything_to_the_canary() {
    exact_split(100.0, 1000).await;
}

#[tokio::test]
async fn a_versions_requests_spread_over_its_upstreams() {
    let a = Server::spawn("v1-a");
    let b = Server::spawn("v1-b");
    let c = Server::spawn("v2");
    let model = proxy::model(
        r#"
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${a}", "${b}"]}
    canary: {version: v2, upstreams: ["${c}"], weight: 20}
"#,
        &[("a", a.addr()), ("b", b.addr()), ("c", c.addr())],
    );
    let proxy = Proxy::start(model);

    let mut client = Http1::connect(proxy.addr()).await;
    for _ in 0..500 {
        assert_eq!(client.get("shop.example.com", "/").await.status, 200);
    }
    assert_eq!(c.requests(), 100, "the file weight 20 applies");
    assert_eq!(a.requests() + b.requests(), 400);
    assert!(
        a.requests().abs_diff(b.requests()) <= 1,
        "round robin: {} vs {}",
        a.requests(),
        b.requests()
    );
    assert_eq!(proxy.version_stats("shop", "v1").snapshot().requests, 400);

    proxy.shutdown().await;
    for upstream in [a, b, c] {
        upstream.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_split_is_exact_across_workers_and_concurrent_clients() {
    const CLIENTS: usize = 4;
    const EACH: usize = 250;
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let proxy = Proxy::builder(shop(&v1, &v2))
        .weight("shop", Weight::from_percent(10.0).unwrap())
        .workers(2)
        .start();

    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = proxy.addr();
            tokio::spawn(async move {
                let mut client = Http1::connect(addr).await;
                let mut canary = 0;
                for _ in 0..EACH {
                    let reply = client.get("shop.example.com", "/").await;
                    assert_eq!(reply.status, 200);
                    canary += usize::from(reply.served_by() == "v2");
                }
                canary
            })
        })
        .collect();
    let mut canary = 0;
    for client in clients {
        canary += client.await.expect("a client task");
    }
    // Every request takes one number of the service's shared sequence, whichever worker serves it.
    assert_eq!(canary, CLIENTS * EACH / 10);
    assert_eq!(v2.requests(), canary);

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}
