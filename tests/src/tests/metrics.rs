//! The Prometheus export reflects the traffic that went through the proxy, per version.

use weir_config::Weight;

use crate::client::Http1;
use crate::metrics::{encode, sample};
use crate::proxy::{self, Proxy};
use crate::upstream::Server;
use crate::Refused;

#[tokio::test]
async fn traffic_shows_up_in_the_prometheus_export() {
    let v1 = Server::spawn("v1");
    let dead = Refused::new();
    let model = proxy::model(
        r#"
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${v1}"]}
    canary: {version: v2, upstreams: ["${v2}"]}
"#,
        &[("v1", v1.addr()), ("v2", dead.addr())],
    );
    let proxy = Proxy::builder(model)
        .weight("shop", Weight::from_percent(10.0).unwrap())
        .start();

    let mut client = Http1::connect(proxy.addr()).await;
    for _ in 0..100 {
        client.get("shop.example.com", "/").await;
    }
    let text = encode(proxy.stats(), &proxy.routes());
    let value = |series: &str| {
        sample(&text, series).unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
    };

    assert_eq!(
        value(r#"http_requests_total{service="shop",version="v1",status="200"}"#),
        90.0
    );
    assert_eq!(
        value(r#"http_requests_total{service="shop",version="v2",status="502"}"#),
        10.0
    );
    assert_eq!(
        sample(
            &text,
            r#"http_requests_total{service="shop",version="v2",status="200"}"#
        ),
        None
    );
    assert_eq!(
        value(r#"weir_upstream_errors_total{service="shop",version="v2",kind="connect"}"#),
        10.0
    );
    assert_eq!(
        sample(
            &text,
            r#"weir_upstream_errors_total{service="shop",version="v1",kind="connect"}"#
        ),
        None
    );

    let fastest =
        value(r#"http_request_duration_seconds_bucket{service="shop",version="v1",le="0.001"}"#);
    assert!((0.0..=90.0).contains(&fastest));
    assert_eq!(
        value(r#"http_request_duration_seconds_bucket{service="shop",version="v1",le="+Inf"}"#),
        90.0
    );
    assert_eq!(
        value(r#"http_request_duration_seconds_count{service="shop",version="v1"}"#),
        90.0
    );
    assert!(value(r#"http_request_duration_seconds_sum{service="shop",version="v1"}"#) > 0.0);
    // Buckets are cumulative.
    let mut previous = 0.0;
    for le in weir_proxy::stats::LATENCY_BUCKETS {
        let series = format!(
            r#"http_request_duration_seconds_bucket{{service="shop",version="v1",le="{le:?}"}}"#
        );
        let count = sample(&text, &series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert!(count >= previous, "{series}");
        previous = count;
    }

    assert_eq!(value(r#"weir_canary_weight{service="shop"}"#), 10.0);
    assert_eq!(value(r#"weir_route_table_generation{table="routes"}"#), 1.0);
    assert!(text.contains("# TYPE http_requests counter"), "{text}");
    assert!(
        text.contains("# TYPE http_request_duration_seconds histogram"),
        "{text}"
    );

    // A new weight shows up at the next scrape.
    proxy.set_weight("shop", Weight::from_percent(0.25).unwrap());
    let text = encode(proxy.stats(), &proxy.routes());
    assert_eq!(
        sample(&text, r#"weir_canary_weight{service="shop"}"#),
        Some(0.25)
    );
    assert_eq!(
        sample(&text, r#"weir_route_table_generation{table="routes"}"#),
        Some(2.0)
    );

    proxy.shutdown().await;
    v1.shutdown().await;
}
