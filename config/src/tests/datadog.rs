//! `provider.datadog` (issue #9).

use std::time::Duration;

use crate::*;

/// A file with one template whose first metric uses `provider` (indented under `datadog:`),
/// parsed in a folder holding the key files `api` and `app`.
fn parse_provider(provider: &str) -> (tempfile::TempDir, Result<Model, ConfigError>) {
    let dir = tempfile::tempdir().expect("a temp dir");
    for name in ["api", "app"] {
        std::fs::write(dir.path().join(name), "key\n").expect("write a key file");
    }
    let yaml = format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:8080\" }}]
services: [{{ name: s, stable: {{ version: v1, upstreams: [\"127.0.0.1:9001\"] }} }}]
analysisTemplates:
  - name: t
    args: [{{ name: env, value: prod }}]
    metrics:
      - name: errors
        successCondition: default(result, 0) < 1
        provider:
          datadog:
{provider}"
    );
    let parsed = parse(&yaml, dir.path());
    (dir, parsed)
}

fn provider(model: &Model) -> &DatadogProvider {
    match &model.analysis_templates[0].metrics[0].provider {
        Provider::Datadog(p) => p,
        other => panic!("a datadog provider, got {other:?}"),
    }
}

const KEYS: &str = "            apiKeyFile: api\n            appKeyFile: app\n";

#[test]
fn the_seeds_form_and_the_defaults() {
    let (dir, parsed) = parse_provider(&format!(
        "            apiVersion: v2
            interval: 5m
            queries:
              a: sum:trace.http.request.errors{{service:{{{{service}}}},version:{{{{canary.version}}}}}}.as_count()
              b: sum:trace.http.request.hits{{service:{{{{service}}}},env:{{{{args.env}}}}}}.as_count()
            formula: \"(moving_rollup(a, 60, 'sum') / moving_rollup(b, 60, 'sum')) * 100\"
{KEYS}"
    ));
    let model = parsed.expect("valid");
    assert_eq!(
        provider(&model),
        &DatadogProvider {
            api_version: DatadogApiVersion::V2,
            queries: vec![
                (
                    "a".into(),
                    "sum:trace.http.request.errors{service:{{service}},version:{{canary.version}}}.as_count()".into()
                ),
                (
                    "b".into(),
                    "sum:trace.http.request.hits{service:{{service}},env:{{args.env}}}.as_count()".into()
                ),
            ],
            formula: Some("(moving_rollup(a, 60, 'sum') / moving_rollup(b, 60, 'sum')) * 100".into()),
            interval: Duration::from_secs(300),
            aggregator: DatadogAggregator::Last,
            address: DatadogProvider::DEFAULT_ADDRESS.into(),
            api_key_file: dir.path().join("api"),
            app_key_file: dir.path().join("app"),
            timeout: DatadogProvider::DEFAULT_TIMEOUT,
        }
    );
    // One `query` is the query named `query`; v1 and the other options.
    let (_dir, parsed) = parse_provider(&format!(
        "            apiVersion: v1
            query: avg:kubernetes.cpu.user.total{{*}}
            interval: 10m
            address: http://127.0.0.1:9999/
            timeout: 3s
{KEYS}"
    ));
    let model = parsed.expect("valid");
    let p = provider(&model);
    assert_eq!(p.api_version, DatadogApiVersion::V1);
    assert_eq!(
        p.queries,
        [(
            "query".to_string(),
            "avg:kubernetes.cpu.user.total{*}".to_string()
        )]
    );
    assert_eq!(p.interval, Duration::from_secs(600));
    assert_eq!(p.address, "http://127.0.0.1:9999/");
    assert_eq!(p.timeout, Duration::from_secs(3));
    let (_dir, parsed) = parse_provider(&format!(
        "            query: avg:latency{{*}}\n            aggregator: percentile\n{KEYS}"
    ));
    let model = parsed.expect("valid");
    assert_eq!(provider(&model).aggregator, DatadogAggregator::Percentile);
    assert_eq!(provider(&model).api_version, DatadogApiVersion::V2);
    eprintln!("datadog config: the seed's v2 form, v1 and the defaults parse");
}

#[test]
fn problems_are_reported_with_their_path() {
    let at = "analysisTemplates[0].metrics[0].provider.datadog";
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            KEYS.to_string(),
            vec![format!("{at}: needs query or queries")],
        ),
        (
            format!("            query: a\n            queries: {{ b: x }}\n{KEYS}"),
            vec![format!("{at}.queries: give query or queries, not both")],
        ),
        (
            format!("            query: a\n            formula: a * 2\n{KEYS}"),
            vec![format!("{at}.formula: needs queries (named, for the formula to combine)")],
        ),
        (
            format!("            queries: {{ a: x, b: y }}\n{KEYS}"),
            vec![format!(
                "{at}.queries: several queries need a formula to combine them into one value"
            )],
        ),
        (
            format!("            queries: {{ a: x, b: y }}\n            formula: a / c * 100\n{KEYS}"),
            vec![format!("{at}.formula: \"c\" is not a query name (queries: a, b)")],
        ),
        (
            format!("            queries: {{ 1a: x }}\n{KEYS}"),
            vec![format!("{at}.queries.1a: invalid query name \"1a\"…")],
        ),
        (
            format!("            queries: {{}}\n{KEYS}"),
            vec![format!("{at}.queries: expected a non-empty mapping…")],
        ),
        (
            format!("            apiVersion: v1\n            queries: {{ a: x }}\n            formula: a\n            aggregator: sum\n{KEYS}"),
            vec![
                format!("{at}.queries: apiVersion v1 takes one query, without queries: use apiVersion v2"),
                format!("{at}.formula: apiVersion v1 takes one query, without formula…"),
                format!("{at}.aggregator: apiVersion v1 takes one query, without aggregator…"),
            ],
        ),
        (
            format!("            apiVersion: v3\n            query: x\n            aggregator: median\n            address: ftp://dd\n            timeout: 6m\n            interval: 0s\n{KEYS}"),
            vec![
                format!("{at}.apiVersion: expected \"v1\" or \"v2\", got \"v3\""),
                format!("{at}.aggregator: unknown aggregator \"median\", expected one of: avg, min, max, sum, last, percentile, mean, l2norm, area"),
                format!("{at}.address: must be an http:// or https:// URL, got \"ftp://dd\""),
                format!("{at}.timeout: must be at most 5m"),
                format!("{at}.interval: …"),
            ],
        ),
        (
            "            apiVersion: v1\n            aggregator: sum\n            apiKeyFile: api\n            appKeyFile: app\n".to_string(),
            vec![format!("{at}: needs query"), format!("{at}.aggregator: apiVersion v1…")],
        ),
        (
            "            query: x\n".to_string(),
            vec![
                format!("{at}.apiKeyFile: missing required field"),
                format!("{at}.appKeyFile: missing required field"),
            ],
        ),
        (
            "            query: x\n            apiKeyFile: nope\n            appKeyFile: app\n".to_string(),
            vec![format!("{at}.apiKeyFile: file \"…")],
        ),
        (
            format!("            query: \"errors{{{{args.nope}}}}\"\n            apiKey: k\n{KEYS}"),
            vec![
                format!("{at}.query: \"{{{{args.nope}}}}\" uses argument \"nope\"…"),
                format!("{at}.apiKey: unknown field \"apiKey\"…"),
            ],
        ),
    ];
    for (provider, expected) in cases {
        let (_dir, parsed) = parse_provider(&provider);
        let problems = parsed.expect_err(&provider).problems();
        for want in &expected {
            let found = match want.strip_suffix('…') {
                Some(prefix) => problems.iter().any(|line| line.starts_with(prefix)),
                None => problems.contains(want),
            };
            assert!(
                found,
                "{want:?} not in {problems:#?}\n--- provider ---\n{provider}"
            );
        }
    }
    eprintln!("datadog config: 13 invalid forms reported with their field paths");
}
