//! Publishing a new route table changes what the next requests get, and never what a request in
//! flight gets.

use std::collections::BTreeMap;
use std::time::Duration;

use weir_config::Weight;

use super::{assert_share, shop};
use crate::client::Http1;
use crate::proxy::{self, Proxy};
use crate::upstream::Server;

async fn count_canary(client: &mut Http1, n: usize) -> usize {
    let mut canary = 0;
    for _ in 0..n {
        let reply = client.get("shop.example.com", "/").await;
        assert_eq!(reply.status, 200);
        canary += usize::from(reply.served_by() == "v2");
    }
    canary
}

#[tokio::test]
async fn a_new_weight_is_exact_from_the_next_request() {
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let proxy = Proxy::builder(shop(&v1, &v2))
        .weight("shop", Weight::from_percent(10.0).unwrap())
        .start();
    let mut client = Http1::connect(proxy.addr()).await;

    // An odd count so the swap lands mid-pattern.
    let before = count_canary(&mut client, 1003).await;
    assert_share(before, 1003, 10.0, "before the swap");

    let generation = proxy.set_weight("shop", Weight::from_percent(50.0).unwrap());
    assert_eq!(generation, 2);
    assert_eq!(
        proxy
            .routes()
            .current()
            .service("shop")
            .unwrap()
            .canary_weight(),
        Weight::from_percent(50.0).unwrap()
    );
    let after = count_canary(&mut client, 1000).await;
    assert_share(after, 1000, 50.0, "after the swap to 50");

    proxy.set_weight("shop", Weight::from_percent(1.0).unwrap());
    let last = count_canary(&mut client, 1000).await;
    assert_share(last, 1000, 1.0, "after the swap to 1");

    assert_eq!(v2.requests(), before + after + last);
    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_an_upstream_the_new_table_removed() {
    let old = Server::builder("old")
        .delay(Duration::from_millis(300))
        .spawn();
    let new = Server::spawn("new");
    let template = r#"
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${up}"]}
"#;
    let proxy = Proxy::start(proxy::model(template, &[("up", old.addr())]));

    let addr = proxy.addr();
    let in_flight = tokio::spawn(async move {
        let mut client = Http1::connect(addr).await;
        client.get("shop.example.com", "/").await
    });
    assert_eventually!(
        old.requests() == 1,
        "the slow request reached the old upstream"
    );

    let replaced = proxy::model(template, &[("up", new.addr())]);
    proxy.publish(&replaced, &BTreeMap::new(), &BTreeMap::new());

    // New requests go to the new upstream while the old one is still answering.
    let mut client = Http1::connect(proxy.addr()).await;
    let reply = client.get("shop.example.com", "/").await;
    assert_eq!((reply.status.as_u16(), reply.text()), (200, "new"));
    assert!(!in_flight.is_finished(), "the old upstream is still slow");

    let reply = in_flight.await.expect("the in-flight request task");
    assert_eq!((reply.status.as_u16(), reply.text()), (200, "old"));
    assert_eq!(old.requests(), 1);
    assert_eq!(proxy.version_stats("shop", "v1").snapshot().requests, 2);

    proxy.shutdown().await;
    old.shutdown().await;
    new.shutdown().await;
}

#[tokio::test]
async fn removing_the_canary_sends_everything_to_stable() {
    let v1 = Server::spawn("v1");
    let v2 = Server::spawn("v2");
    let proxy = Proxy::builder(shop(&v1, &v2))
        .weight("shop", Weight::from_percent(50.0).unwrap())
        .start();
    let mut client = Http1::connect(proxy.addr()).await;
    assert_eq!(count_canary(&mut client, 10).await, 5);

    let without_canary = proxy::model(
        r#"
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${v1}"]}
"#,
        &[("v1", v1.addr())],
    );
    let weights = BTreeMap::from([("shop".to_string(), Weight::from_percent(50.0).unwrap())]);
    proxy.publish(&without_canary, &weights, &BTreeMap::new());
    assert_eq!(count_canary(&mut client, 100).await, 0);
    assert!(
        proxy.stats().get("shop", "v2").is_none(),
        "stats of a version no longer configured are dropped"
    );

    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}
