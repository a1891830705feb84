//! Bounded property tests (proptest): parsing and validating never panics, whatever the input —
//! arbitrary text, YAML-ish token soup, and the example configs mutated line by line. Every case
//! ends in `Ok(model)` or a `ConfigError`; a panic (overflowing durations or weights, an index
//! out of range, a regex that blows up) fails the test. Bounded so the whole file runs in a few
//! seconds in a debug build; `PROPTEST_CASES` raises the count for a longer local run.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Every example config, and the test data, as mutation seeds.
const SEEDS: &[&str] = &[
    include_str!("../../deploy/examples/basic.yaml"),
    include_str!("../../deploy/examples/canary-rollout.yaml"),
    include_str!("../../deploy/examples/fast-rollback.yaml"),
    include_str!("../../deploy/examples/header-route.yaml"),
    include_str!("../../deploy/examples/mirror.yaml"),
    include_str!("../../deploy/examples/blue-green.yaml"),
    include_str!("../../deploy/examples/sticky.yaml"),
    include_str!("../../deploy/examples/ab-test.yaml"),
    include_str!("../../deploy/examples/prometheus-analysis.yaml"),
    include_str!("../../deploy/examples/tls.yaml"),
    include_str!("../testdata/rollout.yaml"),
];

/// Values at and past the edges of what fields accept.
const EDGES: &[&str] = &[
    "0",
    "-1",
    "1",
    "100",
    "101",
    "99.99",
    "0.001",
    "4294967296",
    "18446744073709551616",
    "1e309",
    "-0",
    ".nan",
    ".inf",
    "-.inf",
    "~",
    "null",
    "''",
    "[]",
    "{}",
    "[[]]",
    "{a: {b: {c: []}}}",
    "0s",
    "0ms",
    "1ns",
    "1ms",
    "999999999999h",
    "18446744073709551615s",
    "584942417355y",
    "1h1h",
    "1m30s",
    "*",
    "*.",
    "**",
    "*.*.example.com",
    ".example.com",
    "a..b",
    "EXAMPLE.COM",
    "xn--bcher-kva.example",
    "-",
    "/",
    "//",
    "/api/../x",
    "\"(\"",
    "\"(?i)a\"",
    "\"a{1000}{1000}\"",
    "\"\\\\\"",
    "127.0.0.1:0",
    "127.0.0.1:65536",
    "[::1]:80",
    "localhost:1",
    "true",
    "yes",
    "\"{{args.x}}\"",
    "\"{{preview.url}}\"",
    "result >= 0.99 &&",
    "result[0] / 0",
    "&anchor x",
    "*anchor",
    "!!binary aGk=",
    "|\n  multi",
];

/// Keys that occur in configs, for inserted lines.
const KEYS: &[&str] = &[
    "weight",
    "setWeight",
    "pause",
    "duration",
    "hosts",
    "pathPrefix",
    "upstreams",
    "version",
    "maxIdlePerUpstream",
    "connectTimeout",
    "responseTimeout",
    "idleTimeout",
    "stepWeight",
    "maxWeight",
    "interval",
    "threshold",
    "count",
    "failureLimit",
    "successCondition",
    "window",
    "percentage",
    "headerName",
    "cookieName",
    "maxAge",
    "scaleDownDelay",
    "autoPromotionSeconds",
    "stateDir",
    "tokenFile",
    "<<",
];

#[derive(Clone, Debug)]
enum Mutation {
    /// Replace the value of line `line` (after its first `: `) with an edge value.
    Value { line: usize, edge: usize },
    /// Delete line `line`.
    Delete { line: usize },
    /// Duplicate line `line`.
    Duplicate { line: usize },
    /// Indent line `line` by two more spaces, or two fewer.
    Indent { line: usize, deeper: bool },
    /// Insert `key: edge` after line `line`, at its indentation.
    Insert {
        line: usize,
        key: usize,
        edge: usize,
    },
    /// Cut the text at this fraction (per mille) of its length.
    Truncate { per_mille: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let line = 0..200usize;
    prop_oneof![
        4 => (line.clone(), 0..EDGES.len()).prop_map(|(line, edge)| Mutation::Value { line, edge }),
        1 => line.clone().prop_map(|line| Mutation::Delete { line }),
        1 => line.clone().prop_map(|line| Mutation::Duplicate { line }),
        1 => (line.clone(), any::<bool>()).prop_map(|(line, deeper)| Mutation::Indent { line, deeper }),
        2 => (line, 0..KEYS.len(), 0..EDGES.len())
            .prop_map(|(line, key, edge)| Mutation::Insert { line, key, edge }),
        1 => (0..1000usize).prop_map(|per_mille| Mutation::Truncate { per_mille }),
    ]
}

fn apply(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for mutation in mutations {
        if lines.is_empty() {
            break;
        }
        let at = |line: usize| line % lines.len();
        match *mutation {
            Mutation::Value { line, edge } => {
                let idx = at(line);
                if let Some((key, _)) = lines[idx].split_once(": ") {
                    lines[idx] = format!("{key}: {}", EDGES[edge]);
                }
            }
            Mutation::Delete { line } => {
                lines.remove(at(line));
            }
            Mutation::Duplicate { line } => {
                let idx = at(line);
                lines.insert(idx, lines[idx].clone());
            }
            Mutation::Indent { line, deeper } => {
                let idx = at(line);
                lines[idx] = if deeper {
                    format!("  {}", lines[idx])
                } else {
                    lines[idx]
                        .strip_prefix("  ")
                        .unwrap_or(&lines[idx])
                        .to_string()
                };
            }
            Mutation::Insert { line, key, edge } => {
                let idx = at(line);
                let indent: String = lines[idx]
                    .chars()
                    .take_while(|c| *c == ' ' || *c == '-')
                    .map(|_| ' ')
                    .collect();
                lines.insert(idx + 1, format!("{indent}{}: {}", KEYS[key], EDGES[edge]));
            }
            Mutation::Truncate { per_mille } => {
                let joined = lines.join("\n");
                let mut cut = joined.len() * per_mille / 1000;
                while !joined.is_char_boundary(cut) {
                    cut -= 1;
                }
                lines = joined[..cut].lines().map(str::to_string).collect();
            }
        }
    }
    lines.join("\n")
}

fn base_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

fn config(cases: u32) -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Parses, and checks what a model that validates promises.
fn check(text: &str) -> bool {
    match weir_config::parse(text, &base_dir()) {
        Ok(model) => {
            for service in &model.services {
                if let Some(canary) = &service.canary {
                    if let Some(weight) = canary.weight {
                        assert!(weight <= weir_config::Weight::FULL);
                    }
                }
                assert!(!service.stable.upstreams.is_empty());
            }
            true
        }
        Err(error) => {
            assert!(!error.problems().is_empty(), "an error names its problems");
            false
        }
    }
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn mutated_examples_never_panic(
        seed in 0..SEEDS.len(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        check(&apply(SEEDS[seed], &mutations));
    }
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        check(&text);
    }

    #[test]
    fn yaml_ish_text_never_panics(
        text in "([a-zA-Z]{1,8}|[ \n:,\\[\\]{}\"'&*!|>#-]|[0-9]{1,3}|  ){0,80}"
    ) {
        check(&text);
    }
}

/// The seeds themselves are valid (otherwise the mutations test little), and a huge step list
/// (10,000 steps) is handled.
#[test]
#[allow(clippy::disallowed_types)] // a wall-clock figure; weir-config has no tokio clock
fn seeds_validate_and_huge_lists_are_handled() {
    let mut valid = 0;
    for seed in SEEDS {
        valid += usize::from(check(seed));
    }
    assert!(
        valid >= SEEDS.len() - 1,
        "{valid} of {} seeds valid",
        SEEDS.len()
    );
    let mut text = String::from(
        "listeners: [{name: public, address: \"127.0.0.1:0\"}]\nservices:\n  - name: s\n    stable: {version: v1, upstreams: [\"127.0.0.1:1\"]}\n    canary: {version: v2, upstreams: [\"127.0.0.1:2\"]}\n    strategy:\n      canary:\n        steps:\n",
    );
    for n in 0..10_000 {
        text.push_str(&format!("          - setWeight: {}\n", n % 101));
    }
    let started = std::time::Instant::now();
    assert!(check(&text));
    eprintln!(
        "config fuzz: {valid}/{} seeds valid; a 10,000-step plan validates in {:.0} ms",
        SEEDS.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
}
