//! Building tables: weights, sequences carried across swaps, stats handles.

use std::collections::BTreeMap;
use std::path::Path;

use weir_config::Weight;

use super::*;
use crate::stats::Stats;

const MODEL: &str = r#"
listeners: [{ name: public, address: "127.0.0.1:0" }]
services:
  - name: shop
    match: { hosts: ["shop.example.com"] }
    stable: { version: v1, upstreams: ["127.0.0.1:9001", "127.0.0.1:9002"] }
    canary: { version: v2, upstreams: ["127.0.0.1:9101"], weight: 10 }
  - name: rest
    stable: { version: v1, upstreams: ["127.0.0.1:9201"] }
"#;

fn model() -> weir_config::Model {
    weir_config::parse(MODEL, Path::new("/")).expect("valid test config")
}

fn build(weights: &[(&str, u16)], stats: &Stats, previous: &RouteTable) -> RouteTable {
    let weights: BTreeMap<String, Policy> = weights
        .iter()
        .map(|(s, bp)| {
            (
                s.to_string(),
                Weight::from_basis_points(*bp).unwrap().into(),
            )
        })
        .collect();
    RouteTable::build(&model(), &weights, &BTreeMap::new(), stats, previous).expect("builds")
}

#[test]
fn file_weights_apply_unless_overridden() {
    let stats = Stats::new();
    let table = build(&[], &stats, &RouteTable::empty());
    assert_eq!(
        table
            .service("shop")
            .unwrap()
            .canary_weight()
            .basis_points(),
        1000
    );
    assert_eq!(table.service("rest").unwrap().canary_weight(), Weight::ZERO);
    let table = build(&[("shop", 2500), ("rest", 5000)], &stats, &table);
    assert_eq!(
        table
            .service("shop")
            .unwrap()
            .canary_weight()
            .basis_points(),
        2500
    );
    assert_eq!(
        table.service("rest").unwrap().canary_weight(),
        Weight::ZERO,
        "no canary, no weight"
    );
}

#[test]
fn routing_and_stats_handles_are_resolved_at_build_time() {
    let stats = Stats::new();
    let table = build(&[], &stats, &RouteTable::empty());
    assert_eq!(
        table.route("SHOP.example.com", "/cart").unwrap().name(),
        "shop"
    );
    assert_eq!(table.route("other", "/").unwrap().name(), "rest");
    let shop = table.service("shop").unwrap();
    assert!(Arc::ptr_eq(
        shop.stable().stats(),
        &stats.handle("shop", "v1")
    ));
    assert_eq!(shop.stable().upstream_addrs().count(), 2);
}

#[test]
fn split_sequences_survive_swaps_and_versions_gone_lose_their_stats() {
    let stats = Stats::new();
    let first = build(&[("shop", 5000)], &stats, &RouteTable::empty());
    for _ in 0..3 {
        first.service("shop").unwrap().pick();
    }
    let second = build(&[("shop", 5000)], &stats, &first);
    match (
        &first.service("shop").unwrap().split,
        &second.service("shop").unwrap().split,
    ) {
        (Split::Weighted { sequence: a, .. }, Split::Weighted { sequence: b, .. }) => {
            assert!(Arc::ptr_eq(a, b), "one sequence per service across tables")
        }
        other => panic!("expected weighted splits, got {other:?}"),
    }
    stats.handle("shop", "v0");
    let _ = build(&[], &stats, &second);
    assert!(
        stats.get("shop", "v0").is_none(),
        "unconfigured versions are dropped"
    );
    assert!(stats.get("shop", "v2").is_some());
}
