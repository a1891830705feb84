//! Bounded property test (proptest): every config that validates builds a route table without
//! panicking — odd host patterns, path prefixes, `maxIdlePerUpstream: 0`, extreme durations and
//! weights, header/mirror routes with odd regexes, sticky sessions, blue-green previews — and any
//! request routed through it (rules, split, mirror, upstream choice) does not panic either and
//! lands on one of its service's configured versions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use weir_config::{Step, Weight};

use super::super::{Policy, RequestHead, RouteTable};
use crate::stats::Stats;

const HOSTS: &[&str] = &[
    "*",
    "a.example",
    "*.example",
    "*.a.example",
    "A.EXAMPLE",
    "xn--bcher-kva.example",
    "a.b.c.d.e.f.example",
    "localhost",
    "1.2.3.4",
    "*.com",
    "a-b_c.example",
];
const PATHS: &[&str] = &["/", "/api", "/api/", "/a/b/c", "/%20", "/x//y"];
const REGEXES: &[&str] = &[
    "yes",
    ".*",
    "",
    "a|b",
    "(?i)BeTa",
    "[0-9]{1,3}",
    "\\\\d+",
    "^x$",
    "(a+)+",
    "é",
];
const DURATIONS: &[&str] = &["1ms", "1s", "30s", "87600h", "1h1m1s"];
const MAX_IDLE: &[&str] = &["0", "1", "64", "1000000"];
const WEIGHTS: &[&str] = &["0", "0.01", "1", "33.33", "50", "99.99", "100"];

#[derive(Clone, Debug)]
struct Svc {
    hosts: Vec<usize>,
    path: usize,
    canary: bool,
    weight: usize,
    max_idle: usize,
    timeout: usize,
    affinity: u8,
    strategy: u8,
    regex: usize,
    percentage: u8,
    preview_host: usize,
}

fn svc() -> impl Strategy<Value = Svc> {
    (
        proptest::collection::vec(0..HOSTS.len(), 1..3),
        0..PATHS.len(),
        any::<bool>(),
        0..WEIGHTS.len(),
        0..MAX_IDLE.len(),
        0..DURATIONS.len(),
        0..3u8,
        0..3u8,
        0..REGEXES.len(),
        0..=100u8,
        0..HOSTS.len(),
    )
        .prop_map(
            |(
                hosts,
                path,
                canary,
                weight,
                max_idle,
                timeout,
                affinity,
                strategy,
                regex,
                percentage,
                preview_host,
            )| Svc {
                hosts,
                path,
                canary,
                weight,
                max_idle,
                timeout,
                affinity,
                strategy,
                regex,
                percentage,
                preview_host,
            },
        )
}

fn yaml(services: &[Svc]) -> String {
    let mut text = String::from(
        "listeners:\n  - {name: public, address: \"127.0.0.1:0\"}\n  - {name: preview, address: \"127.0.0.1:0\"}\nservices:\n",
    );
    for (n, s) in services.iter().enumerate() {
        let hosts: Vec<String> = s.hosts.iter().map(|h| format!("{:?}", HOSTS[*h])).collect();
        text.push_str(&format!(
            "  - name: s{n}\n    match: {{hosts: [{}], pathPrefix: {:?}}}\n    stable: {{version: v1, upstreams: [\"127.0.0.1:{}\", \"127.0.0.1:1\"]}}\n",
            hosts.join(", "),
            PATHS[s.path],
            1000 + n
        ));
        if s.canary || s.strategy > 0 {
            let weight = if s.strategy == 0 {
                format!(", weight: {}", WEIGHTS[s.weight])
            } else {
                String::new()
            };
            text.push_str(&format!(
                "    canary: {{version: v2, upstreams: [\"127.0.0.1:{}\"]{weight}}}\n",
                2000 + n
            ));
        }
        text.push_str(&format!(
            "    upstream: {{maxIdlePerUpstream: {}, responseTimeout: {}, connectTimeout: {}, idleTimeout: {}}}\n",
            MAX_IDLE[s.max_idle], DURATIONS[s.timeout], DURATIONS[s.timeout], DURATIONS[s.timeout]
        ));
        match s.affinity {
            1 => text.push_str(&format!(
                "    sessionAffinity: {{cookieName: c{n}, maxAge: {}}}\n",
                DURATIONS[s.timeout]
            )),
            2 => text.push_str("    sessionAffinity: {header: x-user-id}\n"),
            _ => {}
        }
        let regex = REGEXES[s.regex];
        match s.strategy {
            1 => text.push_str(&format!(
                "    strategy:\n      canary:\n        steps:\n          - setHeaderRoute:\n              name: beta\n              match:\n                - headerName: x-beta\n                  headerValue: {{regex: \"{regex}\"}}\n                - cookieName: team\n                  cookieValue: {{exact: \"{regex}\"}}\n          - setMirrorRoute:\n              name: shadow\n              percentage: {}\n              match:\n                - method: {{exact: GET}}\n                  path: {{prefix: /api}}\n                - headers: {{x-m: {{prefix: \"{regex}\"}}}}\n          - setWeight: {}\n          - pause: {{}}\n",
                s.percentage, WEIGHTS[s.weight]
            )),
            2 => text.push_str(&format!(
                "    strategy:\n      blueGreen:\n        preview:\n          hosts: [{:?}]\n          listener: preview\n          headers:\n            - headerName: x-preview\n              headerValue: {{regex: \"{regex}\"}}\n",
                format!("p{n}.{}", HOSTS[s.preview_host].trim_start_matches("*.").replace('*', "any"))
            )),
            _ => {}
        }
    }
    text
}

/// The control plane's decisions, as it could make them: the routes the steps name, any weight.
fn policies(model: &weir_config::Model, weight_bp: u16, preview: bool) -> BTreeMap<String, Policy> {
    model
        .services
        .iter()
        .map(|s| {
            let mut policy =
                Policy::from(Weight::from_basis_points(weight_bp).unwrap_or(Weight::FULL));
            for step in s.strategy.iter().flat_map(|st| st.steps()) {
                match step {
                    Step::SetHeaderRoute(route) => policy.header_routes.push(route.clone()),
                    Step::SetMirrorRoute(route) => policy.mirror_routes.push(route.clone()),
                    _ => {}
                }
            }
            policy.preview = preview;
            (s.name.clone(), policy)
        })
        .collect()
}

static TRIED: AtomicUsize = AtomicUsize::new(0);
static VALID: AtomicUsize = AtomicUsize::new(0);
static REQUESTS: AtomicUsize = AtomicUsize::new(0);

fn config() -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(200),
        failure_persistence: None,
        ..Config::default()
    }
}

#[test]
fn validated_configs_build_and_route_without_panic() {
    let strategy = (
        proptest::collection::vec(svc(), 1..5),
        prop_oneof![Just(0u16), Just(10_000u16), 0..=10_000u16],
        any::<bool>(),
        proptest::collection::vec(
            (0..HOSTS.len() + 2, 0..PATHS.len(), 0..6usize, any::<bool>()),
            1..40,
        ),
    );
    let mut runner = TestRunner::new(config());
    let result = runner.run(&strategy, |(services, weight_bp, preview, requests)| {
        TRIED.fetch_add(1, Ordering::Relaxed);
        let text = yaml(&services);
        let model = match weir_config::parse(&text, Path::new(".")) {
            Ok(model) => model,
            Err(error) => {
                if std::env::var_os("FUZZ_DEBUG").is_some() {
                    eprintln!("INVALID {:?}", error.problems());
                }
                return Ok(());
            }
        };
        VALID.fetch_add(1, Ordering::Relaxed);
        let stats = Stats::new();
        let tls = BTreeMap::new();
        let first = RouteTable::build(
            &model,
            &policies(&model, weight_bp, preview),
            &tls,
            &stats,
            &RouteTable::empty(),
        )
        .map_err(|e| {
            TestCaseError::fail(format!("a validated config does not build: {e}\n{text}"))
        })?;
        // Again over the first, as a reload or a weight change does (sequences carry over).
        let table = RouteTable::build(
            &model,
            &policies(&model, 10_000 - weight_bp, !preview),
            &tls,
            &stats,
            &first,
        )
        .map_err(|e| TestCaseError::fail(format!("a rebuild fails: {e}")))?;
        for (host, path, header, tls_listener) in requests {
            let host = match host {
                h if h < HOSTS.len() => HOSTS[h].replace('*', "x"),
                h if h == HOSTS.len() => "p0.a.example".to_string(),
                _ => String::new(),
            };
            let mut headers = HeaderMap::new();
            let (name, value) = [
                ("x-beta", "yes"),
                ("cookie", "team=yes; c0=1234; c1=99999999999"),
                ("x-user-id", "42"),
                ("x-preview", "BETA"),
                ("x-m", "é"),
                ("cookie", "c0=; c0=abc"),
            ][header];
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("x")),
            );
            let Some((service, preview_host)) = table.route_target(&host, PATHS[path]) else {
                continue;
            };
            let head = RequestHead {
                method: &Method::GET,
                path: PATHS[path],
                headers: &headers,
                listener: if tls_listener { "preview" } else { "public" },
                tls: tls_listener,
                preview_host,
            };
            let decision = service.pick(&head);
            prop_assert!(["v1", "v2"].contains(&decision.arm.version()));
            prop_assert!(decision.arm.next_index() < decision.arm.upstreams.len());
            if let Some(mirror) = service.mirror(&head, decision.canary) {
                prop_assert_eq!(mirror.version(), "v2");
            }
            REQUESTS.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    eprintln!(
        "route fuzz: {} configs generated, {} validated and built twice, {} requests routed, no panic",
        TRIED.load(Ordering::Relaxed),
        VALID.load(Ordering::Relaxed),
        REQUESTS.load(Ordering::Relaxed)
    );
}
