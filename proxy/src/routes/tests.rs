//! Building tables: weights, sequences carried across swaps, stats handles.

use std::collections::BTreeMap;
use std::path::Path;

use http::{HeaderMap, Method};
use weir_config::{
    AffinityKey, HeaderRoute, MirrorRoute, RequestMatch, SessionAffinity, StringMatch, Weight,
};

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
    let headers = HeaderMap::new();
    for _ in 0..3 {
        first.service("shop").unwrap().pick(&head(&headers));
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

static GET: Method = Method::GET;

fn head(headers: &HeaderMap) -> RequestHead<'_> {
    RequestHead {
        method: &GET,
        path: "/",
        headers,
        listener: "public",
        tls: false,
        preview_host: false,
    }
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, http::HeaderValue::from_static(value));
    }
    map
}

fn header_route(name: &str, value: StringMatch) -> HeaderRoute {
    HeaderRoute {
        name: "r".into(),
        any_of: vec![vec![RequestMatch::Header {
            name: name.into(),
            value,
        }]],
    }
}

fn with_policy(model: &weir_config::Model, policy: Policy, stats: &Stats) -> RouteTable {
    let policies = BTreeMap::from([("shop".to_string(), policy)]);
    RouteTable::build(
        model,
        &policies,
        &BTreeMap::new(),
        stats,
        &RouteTable::empty(),
    )
    .expect("builds")
}

fn sequence(table: &RouteTable) -> u64 {
    match &table.service("shop").unwrap().split {
        Split::Weighted { sequence, .. } => sequence.load(std::sync::atomic::Ordering::Relaxed),
        _ => panic!("weighted split expected"),
    }
}

#[test]
fn header_routes_match_exact_prefix_and_anchored_regex() {
    let stats = Stats::new();
    let policy = Policy {
        weight: Weight::from_basis_points(5000).unwrap(),
        header_routes: vec![
            header_route("x-exact", StringMatch::Exact("yes".into())),
            header_route("x-prefix", StringMatch::Prefix("be".into())),
            header_route("x-re", StringMatch::Regex("v[0-9]+".into())),
        ],
        ..Policy::default()
    };
    let table = with_policy(&model(), policy, &stats);
    let shop = table.service("shop").unwrap();
    let cases: &[(&[(&str, &str)], bool)] = &[
        (&[("x-exact", "yes")], true),
        (&[("x-exact", "yes!")], false),
        (&[("x-exact", "no"), ("x-exact", "yes")], true),
        (&[("x-prefix", "beta")], true),
        (&[("x-prefix", "alpha")], false),
        (&[("x-re", "v12")], true),
        (&[("x-re", "xv12")], false),
        (&[("x-re", "v12x")], false),
        (&[("X-EXACT", "yes")], true),
    ];
    for (pairs, routed) in cases {
        let h = headers(pairs);
        let d = shop.pick(&head(&h));
        assert_eq!(d.by == DecidedBy::HeaderRoute, *routed, "{pairs:?}");
        if *routed {
            assert!(d.canary);
        }
    }
}

#[test]
fn cookies_are_parsed_across_lines_and_entries_are_and_ed() {
    let stats = Stats::new();
    let route = HeaderRoute {
        name: "beta".into(),
        any_of: vec![
            vec![
                RequestMatch::Cookie {
                    name: "beta".into(),
                    value: StringMatch::Exact("yes".into()),
                },
                RequestMatch::Method(StringMatch::Exact("GET".into())),
            ],
            vec![RequestMatch::Header {
                name: "cookie".into(),
                value: StringMatch::Regex("^(.*?;)?(flag=on)(;.*)?$".into()),
            }],
        ],
    };
    let policy = Policy {
        weight: Weight::from_basis_points(5000).unwrap(),
        header_routes: vec![route],
        ..Policy::default()
    };
    let table = with_policy(&model(), policy, &stats);
    let shop = table.service("shop").unwrap();
    let cases: &[(&[(&str, &str)], bool)] = &[
        (&[("cookie", "beta=yes")], true),
        (&[("cookie", "a=1; beta=yes; c=3")], true),
        (&[("cookie", "a=1;beta=yes")], true),
        (&[("cookie", "a=1"), ("cookie", "beta=yes")], true),
        (&[("cookie", "beta=\"yes\"")], true),
        (&[("cookie", "xbeta=yes")], false),
        (&[("cookie", "beta=yesno")], false),
        (&[("cookie", "beta")], false),
        (&[("cookie", "a=1;flag=on")], true),
        (&[], false),
    ];
    for (pairs, routed) in cases {
        let h = headers(pairs);
        assert_eq!(
            shop.pick(&head(&h)).by == DecidedBy::HeaderRoute,
            *routed,
            "{pairs:?}"
        );
    }
}

#[test]
fn rule_decided_requests_do_not_advance_the_split() {
    let stats = Stats::new();
    let policy = Policy {
        weight: Weight::from_basis_points(5000).unwrap(),
        header_routes: vec![header_route("x-beta", StringMatch::Exact("1".into()))],
        ..Policy::default()
    };
    let table = with_policy(&model(), policy, &stats);
    let shop = table.service("shop").unwrap();
    let beta = headers(&[("x-beta", "1")]);
    let plain = HeaderMap::new();
    for _ in 0..100 {
        assert!(shop.pick(&head(&beta)).canary);
    }
    assert_eq!(sequence(&table), 0);
    let canary = (0..100).filter(|_| shop.pick(&head(&plain)).canary).count();
    assert_eq!(canary, 50, "the split stays exact");
    assert_eq!(sequence(&table), 100);
}

#[test]
fn rules_are_evaluated_header_routes_then_preview_then_sticky_then_split() {
    let mut model = model();
    let shop = &mut model.services[0];
    shop.session_affinity = Some(SessionAffinity {
        key: AffinityKey::Header("x-user".into()),
        max_age: std::time::Duration::from_secs(60),
    });
    shop.strategy = Some(weir_config::Strategy {
        webhooks: Vec::new(),
        kind: weir_config::StrategyKind::BlueGreen(weir_config::BlueGreen {
            preview: weir_config::Preview {
                hosts: vec![],
                listener: Some("preview".into()),
                headers: vec![RequestMatch::Header {
                    name: "x-preview".into(),
                    value: StringMatch::Exact("1".into()),
                }],
            },
            auto_promotion_enabled: true,
            auto_promotion_after: None,
            pre_promotion_analysis: None,
            post_promotion_analysis: None,
            scale_down_delay: std::time::Duration::from_secs(30),
        }),
        progress_deadline: std::time::Duration::from_secs(600),
    });
    let stats = Stats::new();
    // Weight 0: nothing reaches the canary by the split or by stickiness.
    let policy = Policy {
        weight: Weight::ZERO,
        header_routes: vec![header_route("x-beta", StringMatch::Exact("1".into()))],
        preview: false,
        ..Policy::default()
    };
    let table = with_policy(&model, policy.clone(), &stats);
    let shop = table.service("shop").unwrap();
    let both = headers(&[("x-beta", "1"), ("x-preview", "1"), ("x-user", "u")]);
    let d = shop.pick(&head(&both));
    assert_eq!((d.by, d.canary), (DecidedBy::HeaderRoute, true));
    let preview = headers(&[("x-preview", "1"), ("x-user", "u")]);
    let d = shop.pick(&head(&preview));
    assert_eq!((d.by, d.canary), (DecidedBy::Preview, false), "preview off");
    let user = headers(&[("x-user", "u")]);
    let d = shop.pick(&head(&user));
    assert_eq!((d.by, d.canary), (DecidedBy::Sticky, false));
    let d = shop.pick(&head(&HeaderMap::new()));
    assert_eq!((d.by, d.canary), (DecidedBy::Split, false));

    let table = with_policy(
        &model,
        Policy {
            preview: true,
            ..policy
        },
        &stats,
    );
    let shop = table.service("shop").unwrap();
    let d = shop.pick(&head(&preview));
    assert_eq!((d.by, d.canary), (DecidedBy::Preview, true), "preview on");
    let plain = HeaderMap::new();
    let mut on_listener = head(&plain);
    on_listener.listener = "preview";
    assert!(shop.pick(&on_listener).canary);
    let mut by_host = head(&plain);
    by_host.preview_host = true;
    assert!(shop.pick(&by_host).canary);
    assert!(!shop.pick(&head(&plain)).canary);
    assert_eq!(
        shop.rule_counts(),
        RuleCounts {
            header: 1,
            mirror: 0,
            preview: 1,
            affinity: 1
        }
    );
}

#[test]
fn without_a_canary_every_rule_match_goes_to_stable() {
    let stats = Stats::new();
    let policies = BTreeMap::from([(
        "rest".to_string(),
        Policy {
            weight: Weight::FULL,
            header_routes: vec![header_route("x-beta", StringMatch::Exact("1".into()))],
            ..Policy::default()
        },
    )]);
    let table = RouteTable::build(
        &model(),
        &policies,
        &BTreeMap::new(),
        &stats,
        &RouteTable::empty(),
    )
    .unwrap();
    let rest = table.service("rest").unwrap();
    let beta = headers(&[("x-beta", "1")]);
    let d = rest.pick(&head(&beta));
    assert!(!d.canary);
    assert_eq!(d.arm.version(), "v1");
}

#[test]
fn sticky_buckets_only_move_from_stable_to_canary_as_the_weight_rises() {
    let weights = [0u16, 1, 100, 1000, 2000, 5000, 9999, 10_000];
    for bucket in 0..rules::BUCKETS {
        let mut was_canary = false;
        for bp in weights {
            let canary = rules::sticky_canary(bucket, Weight::from_basis_points(bp).unwrap());
            assert!(
                canary || !was_canary,
                "bucket {bucket} left the canary at {bp}"
            );
            was_canary = canary;
        }
        assert!(!rules::sticky_canary(bucket, Weight::ZERO));
        assert!(rules::sticky_canary(bucket, Weight::FULL));
    }
}

#[test]
fn sticky_cookie_is_issued_once_and_then_honoured() {
    let mut model = model();
    model.services[0].session_affinity = Some(SessionAffinity {
        key: AffinityKey::Cookie("weir-shop".into()),
        max_age: std::time::Duration::from_secs(3600),
    });
    let stats = Stats::new();
    let table = with_policy(
        &model,
        Weight::from_basis_points(2000).unwrap().into(),
        &stats,
    );
    let shop = table.service("shop").unwrap();
    let none = HeaderMap::new();
    let d = shop.pick(&head(&none));
    assert_eq!(d.by, DecidedBy::Sticky);
    let cookie = d.set_cookie.expect("a new client gets a cookie");
    let cookie = cookie.to_str().unwrap();
    assert!(
        cookie.ends_with("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"),
        "{cookie}"
    );
    let mut tls = head(&none);
    tls.tls = true;
    let secure = shop.pick(&tls).set_cookie.unwrap();
    assert!(secure.to_str().unwrap().ends_with("; Secure"));
    for (value, canary) in [
        ("weir-shop=0", true),
        ("weir-shop=1999", true),
        ("weir-shop=2000", false),
    ] {
        let h = headers(&[("cookie", value)]);
        let d = shop.pick(&head(&h));
        assert!(d.set_cookie.is_none(), "{value}");
        assert_eq!(d.canary, canary, "{value}");
    }
    for invalid in [
        "weir-shop=10000",
        "weir-shop=-1",
        "weir-shop=x",
        "weir-shop=",
    ] {
        let h = headers(&[("cookie", invalid)]);
        assert!(
            shop.pick(&head(&h)).set_cookie.is_some(),
            "{invalid} is replaced"
        );
    }
    assert_eq!(sequence(&table), 0, "sticky requests never reach the split");
}

#[test]
fn header_hash_is_stable_and_a_missing_header_falls_through_to_the_split() {
    assert_eq!(rules::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(rules::fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    let mut model = model();
    model.services[0].session_affinity = Some(SessionAffinity {
        key: AffinityKey::Header("x-user".into()),
        max_age: std::time::Duration::from_secs(3600),
    });
    let stats = Stats::new();
    let table = with_policy(
        &model,
        Weight::from_basis_points(5000).unwrap().into(),
        &stats,
    );
    let shop = table.service("shop").unwrap();
    let user = headers(&[("x-user", "alice")]);
    let first = shop.pick(&head(&user)).canary;
    for _ in 0..10 {
        let d = shop.pick(&head(&user));
        assert_eq!((d.by, d.canary), (DecidedBy::Sticky, first));
        assert!(d.set_cookie.is_none());
    }
    let expected = (rules::fnv1a64(b"alice") % 10_000) < 5000;
    assert_eq!(first, expected);
    assert_eq!(shop.pick(&head(&HeaderMap::new())).by, DecidedBy::Split);
}

#[test]
fn mirror_routes_take_an_exact_share_of_matching_requests_and_survive_swaps() {
    let stats = Stats::new();
    let route = MirrorRoute {
        name: "shadow".into(),
        percentage: Weight::from_basis_points(5000).unwrap(),
        any_of: vec![vec![RequestMatch::Method(StringMatch::Exact("GET".into()))]],
    };
    let policy = Policy {
        weight: Weight::ZERO,
        mirror_routes: vec![route],
        ..Policy::default()
    };
    let first = with_policy(&model(), policy.clone(), &stats);
    let plain = HeaderMap::new();
    let shop = first.service("shop").unwrap();
    let copies = (0..7)
        .filter(|_| shop.mirror(&head(&plain), false).is_some())
        .count();
    assert!((3..=4).contains(&copies));
    assert!(
        shop.mirror(&head(&plain), true).is_none(),
        "canary requests are not mirrored"
    );
    let policies = BTreeMap::from([("shop".to_string(), policy)]);
    let second = RouteTable::build(&model(), &policies, &BTreeMap::new(), &stats, &first).unwrap();
    let shop = second.service("shop").unwrap();
    let copies2 = (0..93)
        .filter(|_| shop.mirror(&head(&plain), false).is_some())
        .count();
    assert_eq!(copies + copies2, 50, "one sequence across tables");
    let post = Method::POST;
    let mut posted = head(&plain);
    posted.method = &post;
    assert!(shop.mirror(&posted, false).is_none());
    assert_eq!(shop.rule_counts().mirror, 1);
}

/// A `Cookie` header value with arbitrary bytes (not necessarily UTF-8).
fn cookie_bytes(value: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.append(
        http::header::COOKIE,
        http::HeaderValue::from_bytes(value).expect("a header value"),
    );
    map
}

#[test]
fn hostile_affinity_cookies_are_treated_as_no_cookie_and_never_panic() {
    let mut model = model();
    model.services[0].session_affinity = Some(SessionAffinity {
        key: AffinityKey::Cookie("weir-shop".into()),
        max_age: std::time::Duration::from_secs(3600),
    });
    let stats = Stats::new();
    let table = with_policy(&model, Weight::from_percent(50.0).unwrap().into(), &stats);
    let shop = table.service("shop").unwrap();
    // Replaced: out of range, signed, huge, spaces inside, non-digits, non-UTF-8.
    let huge = format!("weir-shop={}", "9".repeat(100_000));
    for value in [
        b"weir-shop=10000".as_slice(),
        b"weir-shop=-0",
        b"weir-shop=+1",
        b"weir-shop=99999999999999999999999",
        huge.as_bytes(),
        b"weir-shop=1 2",
        b"weir-shop=0x10",
        b"weir-shop=\xff\xfe",
        b"weir-shop=\"12",
        b"weir-shop;a=1",
        b";;;=;=1;weir-shop",
        b"",
    ] {
        let h = cookie_bytes(value);
        let d = shop.pick(&head(&h));
        assert_eq!(d.by, DecidedBy::Sticky);
        assert!(
            d.set_cookie.is_some(),
            "{:?} is replaced",
            String::from_utf8_lossy(&value[..value.len().min(40)])
        );
    }
    // Honoured: leading zeros (the same bucket; a client can only pick its own version), quotes,
    // whitespace around the pair, and the first of duplicate cookies.
    for (value, canary) in [
        (b"weir-shop=0001".as_slice(), true),
        (b"weir-shop=\"4999\"", true),
        (b"a=1;   weir-shop=5000  ; b", false),
        (b"weir-shop=9999; weir-shop=0", false),
        (b"\xff=\xfe; weir-shop=0", true),
    ] {
        let h = cookie_bytes(value);
        let d = shop.pick(&head(&h));
        assert!(d.set_cookie.is_none(), "{value:?}");
        assert_eq!(d.canary, canary, "{value:?}");
    }
    // Many cookie lines (HTTP/2 sends one per cookie): found in the last one.
    let mut many = HeaderMap::new();
    for i in 0..1000 {
        many.append(
            http::header::COOKIE,
            http::HeaderValue::from_str(&format!("c{i}=v")).unwrap(),
        );
    }
    many.append(
        http::header::COOKIE,
        http::HeaderValue::from_static("weir-shop=42"),
    );
    let d = shop.pick(&head(&many));
    assert!(d.set_cookie.is_none() && d.canary);
}

#[test]
fn requests_decided_before_the_sticky_rule_get_no_cookie() {
    let mut model = model();
    model.services[0].session_affinity = Some(SessionAffinity {
        key: AffinityKey::Cookie("weir-shop".into()),
        max_age: std::time::Duration::from_secs(3600),
    });
    let stats = Stats::new();
    let policy = Policy {
        weight: Weight::from_percent(50.0).unwrap(),
        header_routes: vec![header_route("x-beta", StringMatch::Exact("yes".into()))],
        ..Policy::default()
    };
    let table = with_policy(&model, policy, &stats);
    let shop = table.service("shop").unwrap();
    let beta = headers(&[("x-beta", "yes")]);
    let d = shop.pick(&head(&beta));
    assert_eq!((d.by, d.canary), (DecidedBy::HeaderRoute, true));
    assert!(d.set_cookie.is_none());

    // Without a canary arm there is no bucket to use: no cookie either.
    model.services[0].canary = None;
    let table = with_policy(&model, Policy::default(), &stats);
    let d = table
        .service("shop")
        .unwrap()
        .pick(&head(&HeaderMap::new()));
    assert!(!d.canary && d.set_cookie.is_none());
}

#[test]
fn an_affinity_cookie_name_that_cannot_be_set_is_a_build_error() {
    for name in ["", "weir shop", "a=b", "a;b", "é"] {
        let mut model = model();
        model.services[0].session_affinity = Some(SessionAffinity {
            key: AffinityKey::Cookie(name.into()),
            max_age: std::time::Duration::from_secs(3600),
        });
        let built = RouteTable::build(
            &model,
            &BTreeMap::new(),
            &BTreeMap::new(),
            &Stats::new(),
            &RouteTable::empty(),
        );
        assert!(
            matches!(
                built,
                Err(BuildError::Rule {
                    source: RuleError::CookieName(_),
                    ..
                })
            ),
            "{name:?}"
        );
    }
}

#[test]
fn a_regex_cannot_escape_its_anchors_or_grow_without_bound() {
    for (pattern, ok) in [
        ("v[0-9]+", true),
        ("a)|(b", false),
        ("(a", false),
        ("[a-z]{1000}{1000}", false),
    ] {
        let policy = Policy {
            weight: Weight::ZERO,
            header_routes: vec![header_route("x-re", StringMatch::Regex(pattern.into()))],
            ..Policy::default()
        };
        let policies = BTreeMap::from([("shop".to_string(), policy)]);
        let built = RouteTable::build(
            &model(),
            &policies,
            &BTreeMap::new(),
            &Stats::new(),
            &RouteTable::empty(),
        );
        assert_eq!(built.is_ok(), ok, "{pattern}");
        if !ok {
            assert!(
                matches!(
                    built,
                    Err(BuildError::Rule {
                        source: RuleError::Regex { .. },
                        ..
                    })
                ),
                "{pattern}"
            );
        }
    }
}

#[test]
fn regex_matches_agree_on_every_worker_slot() {
    let matcher = rules::Matcher::compile(&StringMatch::Regex("v[0-9]+".into())).expect("compiles");
    std::thread::scope(|scope| {
        for slot in 0..rules::REGEX_COPIES + 2 {
            let matcher = &matcher;
            scope.spawn(move || {
                rules::set_worker_slot(slot);
                assert!(matcher.matches(b"v12"));
                assert!(!matcher.matches(b"xv12"));
                assert!(!matcher.matches(b"v12\xff"));
            });
        }
    });
}

#[test]
fn a_host_name_is_one_endpoint_per_address_and_never_none() {
    let text = r#"
listeners: [{ name: public, address: "127.0.0.1:0" }]
services:
  - name: api
    stable: { version: v1, upstreams: ["api.internal:8080", "127.0.0.1:8080"] }
"#;
    let mut model = weir_config::parse(text, Path::new("/")).expect("valid test config");
    let stats = Stats::new();
    let no_policies = BTreeMap::new();
    let unresolved = RouteTable::build(
        &model,
        &no_policies,
        &BTreeMap::new(),
        &stats,
        &RouteTable::empty(),
    );
    // The literal address alone serves the version.
    let table = unresolved.expect("a literal address is enough");
    let addrs: Vec<_> = table
        .service("api")
        .unwrap()
        .stable()
        .upstream_addrs()
        .collect();
    assert_eq!(addrs, vec!["127.0.0.1:8080".parse().unwrap()]);

    model.services[0].stable.upstreams[0].addrs = vec![
        "10.0.0.1:8080".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
        "10.0.0.2:8080".parse().unwrap(),
    ];
    let table = RouteTable::build(&model, &no_policies, &BTreeMap::new(), &stats, &table).unwrap();
    let addrs: Vec<String> = table
        .service("api")
        .unwrap()
        .stable()
        .upstream_addrs()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        addrs,
        ["10.0.0.1:8080", "127.0.0.1:8080", "10.0.0.2:8080"],
        "each address once"
    );

    model.services[0].stable.upstreams.truncate(1);
    model.services[0].stable.upstreams[0].addrs.clear();
    let error =
        RouteTable::build(&model, &no_policies, &BTreeMap::new(), &stats, &table).unwrap_err();
    assert!(matches!(error, BuildError::NoAddress { .. }), "{error}");
}

/// A rebuild over an equal config keeps every compiled route (the same `Arc`, so the same
/// arms, stats handles and counters) and the host and name indexes; a service whose config or
/// policy changed, and only it, is compiled again with what changed.
#[test]
fn unchanged_services_keep_their_routes_across_rebuilds() {
    let stats = Stats::new();
    let policies = |bp: u16| {
        BTreeMap::from([(
            "shop".to_string(),
            Policy::from(Weight::from_basis_points(bp).unwrap()),
        )])
    };
    let tls = BTreeMap::new();
    let first = RouteTable::build(
        &model(),
        &policies(1000),
        &tls,
        &stats,
        &RouteTable::empty(),
    )
    .expect("builds");
    // A reload: the file parsed again, nothing changed.
    let again = RouteTable::build(&model(), &policies(1000), &tls, &stats, &first).expect("builds");
    assert_eq!(again.shared_routes(&first), 2, "every route reused");
    assert!(Arc::ptr_eq(&again.hosts, &first.hosts), "host index reused");
    assert!(
        Arc::ptr_eq(&again.by_name, &first.by_name),
        "name index reused"
    );
    let shop = again.service("shop").unwrap();
    assert!(Arc::ptr_eq(
        shop.stable().stats(),
        &stats.handle("shop", "v1")
    ));
    assert!(again
        .route("shop.example.com", "/")
        .is_some_and(|s| std::ptr::eq(s, shop)));

    // One service's upstream moved: only it is compiled again, with the new address.
    let mut moved = model();
    moved.services[1].stable.upstreams[0].addrs = vec!["127.0.0.1:9999".parse().unwrap()];
    let third = RouteTable::build(&moved, &policies(1000), &tls, &stats, &again).expect("builds");
    assert_eq!(third.shared_routes(&again), 1);
    assert!(std::ptr::eq(
        third.service("shop").unwrap(),
        again.service("shop").unwrap()
    ));
    let rest = third.service("rest").unwrap();
    assert_eq!(
        rest.stable().upstream_addrs().collect::<Vec<_>>(),
        vec!["127.0.0.1:9999".parse().unwrap()]
    );
    assert!(
        Arc::ptr_eq(
            rest.stable().stats(),
            again.service("rest").unwrap().stable().stats()
        ),
        "a recompiled route keeps its version's stats"
    );
    assert!(Arc::ptr_eq(&third.hosts, &again.hosts), "no host moved");

    // A policy change recompiles that service only, and its split sequence carries over.
    let fourth = RouteTable::build(&moved, &policies(2500), &tls, &stats, &third).expect("builds");
    assert_eq!(fourth.shared_routes(&third), 1);
    assert_eq!(
        fourth
            .service("shop")
            .unwrap()
            .canary_weight()
            .basis_points(),
        2500
    );
    assert!(std::ptr::eq(
        fourth.service("rest").unwrap(),
        third.service("rest").unwrap()
    ));

    // A host change rebuilds the host index; routes whose config is equal are still reused.
    let mut rehosted = moved.clone();
    rehosted.services[0].matcher.hosts =
        vec![weir_config::HostPattern::Exact("new.example".into())];
    let fifth =
        RouteTable::build(&rehosted, &policies(2500), &tls, &stats, &fourth).expect("builds");
    assert!(!Arc::ptr_eq(&fifth.hosts, &fourth.hosts));
    assert_eq!(
        fifth.route("new.example", "/").map(|s| s.name()),
        Some("shop")
    );
    assert!(fifth
        .route("shop.example.com", "/")
        .is_none_or(|s| s.name() == "rest"));

    // Over another stats registry nothing is reused: its handles are that registry's.
    let other = Stats::new();
    let elsewhere =
        RouteTable::build(&rehosted, &policies(2500), &tls, &other, &fifth).expect("builds");
    assert_eq!(elsewhere.shared_routes(&fifth), 0);
    assert!(Arc::ptr_eq(
        elsewhere.service("shop").unwrap().stable().stats(),
        &other.handle("shop", "v1")
    ));
    eprintln!("rebuilds over equal configs: 2 of 2 routes reused; one upstream moved: 1 recompiled; one policy changed: 1 recompiled");
}
