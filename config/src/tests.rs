//! Table-driven tests of parsing and validation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::*;

const TLS_EXAMPLE: &str = include_str!("../testdata/tls.yaml");
const ROLLOUT_EXAMPLE: &str = include_str!("../testdata/rollout.yaml");
const MANY_PROBLEMS: &str = include_str!("../testdata/many-problems.yaml");

fn base() -> &'static Path {
    Path::new("/tmp/weir-config-tests")
}

/// Parses `yaml`, panicking with every problem when it is invalid.
fn ok(yaml: &str) -> Model {
    match parse(yaml, base()) {
        Ok(model) => model,
        Err(e) => panic!("expected a valid config, got:\n{e}\n--- yaml ---\n{yaml}"),
    }
}

/// The problems reported for `yaml`, panicking when it is valid.
fn problems(yaml: &str) -> Vec<String> {
    match parse(yaml, base()) {
        Ok(_) => panic!("expected problems, the config is valid:\n{yaml}"),
        Err(e) => e.problems(),
    }
}

/// Asserts that each expected line is reported: exactly, or as a prefix when it ends with `…`.
fn check(yaml: &str, expect: &[&str]) {
    let got = problems(yaml);
    for want in expect {
        let found = match want.strip_suffix('…') {
            Some(prefix) => got.iter().any(|line| line.starts_with(prefix)),
            None => got.iter().any(|line| line == want),
        };
        assert!(
            found,
            "expected problem {want:?} not reported; got:\n{}\n--- yaml ---\n{yaml}",
            got.join("\n")
        );
    }
}

/// A minimal valid file with `service` (indented as a list item under `services:`) as its only service.
fn with_service(service: &str) -> String {
    format!("listeners:\n  - name: public\n    address: 127.0.0.1:8080\nservices:\n{service}")
}

/// A service using `strategy` (indented under `strategy:`), plus `templates` appended at top level.
fn with_strategy(strategy: &str, templates: &str) -> String {
    with_service(&format!(
        "  - name: svc
    stable: {{ version: v1, upstreams: [\"127.0.0.1:9001\"] }}
    canary: {{ version: v2, upstreams: [\"127.0.0.1:9002\"] }}
    strategy:
{strategy}
{templates}"
    ))
}

/// Writes dummy cert and key files and returns the TLS example pointing at them.
fn tls_example(dir: &Path) -> (String, PathBuf, PathBuf) {
    let cert = dir.join("shop.crt");
    let key = dir.join("shop.key");
    std::fs::write(&cert, "dummy cert").unwrap();
    std::fs::write(&key, "dummy key").unwrap();
    let yaml = TLS_EXAMPLE
        .replace("/etc/weir/shop.crt", cert.to_str().unwrap())
        .replace("/etc/weir/shop.key", key.to_str().unwrap());
    (yaml, cert, key)
}

const SIMPLE_TEMPLATE: &str = "analysisTemplates:
  - name: t
    args: [{ name: service }, { name: quantile, value: \"0.99\" }]
    metrics:
      - name: m
        successCondition: result > 0
        provider:
          prometheus:
            address: http://127.0.0.1:9090
            query: rate(x{service=\"{{args.service}}\"}[1m])
";

// ---------------------------------------------------------------------------------------------
// The two documented examples.
// ---------------------------------------------------------------------------------------------

#[test]
fn tls_example_parses() {
    let dir = tempfile::tempdir().unwrap();
    let (yaml, cert, key) = tls_example(dir.path());
    let model = ok(&yaml);

    assert_eq!(model.listeners.len(), 2);
    assert_eq!(model.listeners[0].name, "public");
    assert_eq!(
        model.listeners[0].address,
        "127.0.0.1:8080".parse().unwrap()
    );
    assert_eq!(model.listeners[0].tls, None);
    let tls = model.listeners[1].tls.as_ref().unwrap();
    assert_eq!(
        tls.certificates,
        vec![CertificateFiles {
            cert_file: cert,
            key_file: key
        }]
    );
    assert_eq!(model.admin.address, "127.0.0.1:3100".parse().unwrap());
    assert_eq!(model.admin.token_file, None);
    assert_eq!(model.state_dir, None);
    assert!(model.analysis_templates.is_empty());

    let checkout = &model.services[0];
    assert_eq!(checkout.name, "checkout");
    assert_eq!(
        checkout.matcher.hosts,
        vec![
            HostPattern::Exact("shop.example.com".into()),
            HostPattern::Suffix(".shop.example.com".into())
        ]
    );
    assert_eq!(checkout.matcher.path_prefix, "/");
    assert_eq!(checkout.stable.version, "v1");
    assert_eq!(
        checkout.stable.upstreams,
        vec![
            Upstream {
                name: "127.0.0.1:9001".into(),
                host: UpstreamHost::Ip("127.0.0.1".parse().unwrap()),
                port: 9001,
                addrs: vec!["127.0.0.1:9001".parse().unwrap()],
            },
            Upstream {
                name: "127.0.0.1:9002".into(),
                host: UpstreamHost::Ip("127.0.0.1".parse().unwrap()),
                port: 9002,
                addrs: vec!["127.0.0.1:9002".parse().unwrap()],
            },
        ]
    );
    let canary = checkout.canary.as_ref().unwrap();
    assert_eq!(canary.version.version, "v2");
    assert_eq!(canary.weight, Weight::from_basis_points(1000));
    assert_eq!(checkout.upstream, UpstreamOptions::default());
    assert_eq!(checkout.strategy, None);

    let catch_all = &model.services[1];
    assert_eq!(catch_all.matcher.hosts, vec![HostPattern::Any]);
    assert_eq!(catch_all.matcher.path_prefix, "/");
    assert_eq!(catch_all.canary, None);
}

#[test]
fn tls_example_without_cert_files_names_the_paths() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = TLS_EXAMPLE
        .replace(
            "/etc/weir/shop.crt",
            &dir.path().join("nope.crt").display().to_string(),
        )
        .replace("/etc/weir/shop.key", &dir.path().display().to_string());
    let got = problems(&yaml);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("listeners[1].tls.certificates[0].certFile: file \""));
    assert!(got[0].contains("nope.crt") && got[0].ends_with("does not exist"));
    assert!(got[1].starts_with("listeners[1].tls.certificates[0].keyFile: \""));
    assert!(got[1].ends_with("is not a regular file"));
}

#[test]
fn relative_cert_paths_resolve_against_base_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::write(dir.path().join("certs/a.crt"), "c").unwrap();
    std::fs::write(dir.path().join("certs/a.key"), "k").unwrap();
    let yaml = "listeners:
  - name: tls
    address: 127.0.0.1:8443
    tls:
      certificates:
        - certFile: certs/a.crt
          keyFile: ./certs/a.key
services:
  - name: s
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
";
    let model = parse(yaml, dir.path()).unwrap();
    let cert = &model.listeners[0].tls.as_ref().unwrap().certificates[0];
    assert_eq!(cert.cert_file, dir.path().join("certs/a.crt"));
    assert!(cert.key_file.ends_with("certs/a.key"));
    assert!(cert.key_file.is_absolute() && cert.key_file.is_file());

    // The same file through load(): relative to the file's folder.
    let file = dir.path().join("weir.yaml");
    std::fs::write(&file, yaml).unwrap();
    let loaded = load(&file).unwrap();
    assert_eq!(loaded.listeners[0].tls, model.listeners[0].tls);
}

#[test]
fn rollout_example_parses() {
    let model = ok(ROLLOUT_EXAMPLE);
    assert_eq!(model.state_dir, Some(base().join("weir-state")));
    assert_eq!(model.services.len(), 2);

    let checkout = &model.services[0];
    assert_eq!(checkout.matcher.hosts, vec![HostPattern::Any]);
    assert_eq!(checkout.canary.as_ref().unwrap().weight, None);
    let strategy = checkout.strategy.as_ref().unwrap();
    assert_eq!(
        strategy.steps(),
        vec![
            Step::SetWeight(Weight::from_basis_points(1000).unwrap()),
            Step::Pause(Some(Duration::from_secs(10))),
            Step::Analysis(AnalysisRef {
                templates: vec!["success-rate".into()],
                args: Default::default(),
            }),
            Step::SetWeight(Weight::from_basis_points(5000).unwrap()),
            Step::Pause(None),
            Step::SetWeight(Weight::FULL),
        ]
    );
    assert_eq!(
        strategy.background(),
        Some(&BackgroundAnalysis {
            analysis: AnalysisRef {
                templates: vec!["latency".into()],
                args: Default::default()
            },
            starting_step: 1,
        })
    );
    assert_eq!(strategy.progression(), None);
    assert_eq!(strategy.progress_deadline, Duration::from_secs(600));

    let search = &model.services[1];
    assert_eq!(search.stable.version, "2024.1");
    assert_eq!(search.canary.as_ref().unwrap().version.version, "2024.2");
    assert_eq!(
        search.matcher.hosts,
        vec![HostPattern::Exact("search.example.com".into())]
    );
    let strategy = search.strategy.as_ref().unwrap();
    assert!(strategy.steps().is_empty());
    assert_eq!(strategy.background(), None);
    let progression = strategy.progression().unwrap();
    assert_eq!(progression.interval, Duration::from_secs(30));
    assert_eq!(progression.threshold, 5);
    let weights: Vec<u16> = progression
        .step_weights
        .iter()
        .map(|w| w.basis_points() / 100)
        .collect();
    assert_eq!(weights, [10, 20, 30, 40, 50]);
    assert_eq!(
        progression.max_weight,
        Weight::from_basis_points(5000).unwrap()
    );
    assert_eq!(
        progression.checks,
        vec![
            Check {
                name: "request-success-rate".into(),
                kind: CheckKind::RequestSuccessRate,
                min: Some(99.0),
                max: None,
                window: Duration::from_secs(30),
            },
            Check {
                name: "request-duration".into(),
                kind: CheckKind::RequestDuration,
                min: None,
                max: Some(500.0),
                window: Duration::from_secs(30),
            },
        ]
    );

    assert_eq!(model.analysis_templates.len(), 2);
    let success = &model.analysis_templates[0];
    assert_eq!(success.name, "success-rate");
    assert!(success.args.is_empty());
    assert_eq!(
        success.metrics,
        vec![Metric {
            name: "success-rate".into(),
            interval: Duration::from_secs(5),
            count: Some(3),
            initial_delay: Duration::ZERO,
            success_condition: Some("result >= 0.99".into()),
            failure_condition: None,
            failure_limit: 1,
            inconclusive_limit: 0,
            consecutive_error_limit: 4,
            dry_run: false,
            provider: Provider::Builtin(BuiltinProvider {
                metric: BuiltinMetric::SuccessRate,
                window: Duration::from_secs(30),
                arm: Arm::Canary,
                min_requests: 50,
                traffic: crate::model::Traffic::Primary,
            }),
        }]
    );
    let latency = &model.analysis_templates[1].metrics[0];
    assert_eq!(latency.count, None);
    assert_eq!(latency.failure_limit, 2);
    assert_eq!(
        latency.provider,
        Provider::Builtin(BuiltinProvider {
            metric: BuiltinMetric::LatencyQuantile(LatencyQuantile::P99),
            window: Duration::from_secs(30),
            arm: Arm::Canary,
            min_requests: 20,
            traffic: crate::model::Traffic::Primary,
        })
    );
}

#[test]
fn load_reads_the_fixture_and_resolves_state_dir_next_to_it() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/rollout.yaml");
    let model = load(&path).unwrap();
    assert_eq!(
        model.state_dir,
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/weir-state"))
    );
}

#[test]
fn load_of_a_missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.yaml");
    let err = load(&path).unwrap_err();
    match &err {
        ConfigError::Read { path: p, source } => {
            assert_eq!(p, &path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Read, got {other:?}"),
    }
    let problems = err.problems();
    assert_eq!(problems.len(), 1);
    assert!(problems[0].contains("missing.yaml"), "{problems:?}");
}

// ---------------------------------------------------------------------------------------------
// Defaults and accepted forms.
// ---------------------------------------------------------------------------------------------

#[test]
fn defaults() {
    let model = ok(&with_service(
        "  - name: s\n    stable: { version: v1, upstreams: [\"localhost:9001\"] }\n",
    ));
    assert_eq!(model.admin.address, "127.0.0.1:3100".parse().unwrap());
    let s = &model.services[0];
    assert_eq!(s.matcher.hosts, vec![HostPattern::Any]);
    assert_eq!(s.matcher.path_prefix, "/");
    assert_eq!(s.stable.upstreams[0].name, "localhost:9001");
    // A host name is kept as written and resolved by the control plane, never here.
    assert_eq!(s.stable.upstreams[0].hostname(), Some("localhost"));
    assert_eq!(s.stable.upstreams[0].port, 9001);
    assert!(s.stable.upstreams[0].addrs.is_empty());
    assert_eq!(model.upstream_dns, UpstreamDns::default());
    assert_eq!(s.upstream, UpstreamOptions::default());
}

#[test]
fn accepted_forms() {
    // Weights with up to two decimals.
    for (written, bp) in [
        ("0.25", 25),
        ("0", 0),
        ("100", 10_000),
        ("33.33", 3333),
        ("7.5", 750),
    ] {
        let model = ok(&with_service(&format!(
            "  - name: s
    stable: {{ version: v1, upstreams: [\"127.0.0.1:9001\"] }}
    canary: {{ version: v2, upstreams: [\"127.0.0.1:9002\"], weight: {written} }}
"
        )));
        let weight = model.services[0].canary.as_ref().unwrap().weight;
        assert_eq!(weight, Weight::from_basis_points(bp), "{written}");
    }

    // Unquoted numeric versions, upper-case hosts, upstream options, admin, localhost listener.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "secret").unwrap();
    let yaml = "listeners:
  - name: a
    address: localhost:8080
  - name: b
    address: \"[::1]:8080\"
admin:
  address: 127.0.0.1:3200
  tokenFile: token
stateDir: /var/lib/weir
services:
  - name: api_v2.internal-1
    match:
      hosts: [API.Example.COM]
      pathPrefix: /api
    stable: { version: 2024.1, upstreams: [\"127.0.0.1:9001\", \"[::1]:9001\"] }
    canary: { version: 2024.2, upstreams: [\"127.0.0.1:9002\"] }
    upstream:
      connectTimeout: 500ms
      responseTimeout: 1m30s
      idleTimeout: 2m
      maxIdlePerUpstream: 0
";
    let model = parse(yaml, dir.path()).unwrap();
    assert_eq!(
        model.listeners[0].address,
        "127.0.0.1:8080".parse().unwrap()
    );
    assert_eq!(model.listeners[1].address, "[::1]:8080".parse().unwrap());
    assert_eq!(model.admin.address, "127.0.0.1:3200".parse().unwrap());
    assert_eq!(model.admin.token_file, Some(dir.path().join("token")));
    assert_eq!(model.state_dir, Some(PathBuf::from("/var/lib/weir")));
    let s = &model.services[0];
    assert_eq!(s.stable.version, "2024.1");
    assert_eq!(s.canary.as_ref().unwrap().version.version, "2024.2");
    assert_eq!(
        s.matcher.hosts,
        vec![HostPattern::Exact("api.example.com".into())]
    );
    assert_eq!(s.matcher.path_prefix, "/api");
    assert_eq!(
        s.upstream,
        UpstreamOptions {
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(90),
            idle_timeout: Duration::from_secs(120),
            max_idle_per_upstream: 0,
            ..UpstreamOptions::default()
        }
    );

    // Same host with a different prefix, or a different host with the same prefix: no overlap.
    ok(&with_service(
        "  - name: a
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
  - name: b
    match: { pathPrefix: /b }
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
  - name: c
    match: { hosts: [\"*.example.com\"] }
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
",
    ));

    // Listeners on port 0 (ephemeral) may repeat.
    ok("listeners:
  - { name: a, address: 127.0.0.1:0 }
  - { name: b, address: 127.0.0.1:0 }
admin: { address: 127.0.0.1:0 }
services:
  - name: s
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
");
}

#[test]
fn merge_keys_and_anchors() {
    let model = ok("listeners: [{ name: a, address: 127.0.0.1:8080 }]
services:
  - name: a
    stable: &v1
      version: v1
      upstreams: [\"127.0.0.1:9001\"]
  - name: b
    match: { hosts: [b.example.com] }
    stable:
      <<: *v1
      version: v1.1
");
    assert_eq!(model.services[1].stable.version, "v1.1");
    assert_eq!(
        model.services[1].stable.upstreams,
        model.services[0].stable.upstreams
    );
}

#[test]
fn weight_and_strategy_together_and_strategy_without_canary() {
    let model = ok(&with_service(
        "  - name: a
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
    canary: { version: v2, upstreams: [\"127.0.0.1:9002\"], weight: 5 }
    strategy: { canary: { steps: [{ setWeight: 20 }] } }
  - name: b
    match: { hosts: [b.example.com] }
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
    strategy: { canary: { steps: [{ setWeight: 20 }, { pause: }] } }
",
    ));
    assert_eq!(
        model.services[0].canary.as_ref().unwrap().weight,
        Weight::from_basis_points(500)
    );
    let b = model.services[1].strategy.as_ref().unwrap();
    assert_eq!(b.steps()[1], Step::Pause(None));
}

#[test]
fn flagger_forms() {
    let progression = |analysis: &str, templates: &str| -> Progression {
        let model = ok(&with_strategy(
            &format!("      canary:\n        progressDeadline: 1h\n        analysis:\n{analysis}"),
            templates,
        ));
        let canary = model.services[0].strategy.as_ref().unwrap();
        assert_eq!(canary.progress_deadline, Duration::from_secs(3600));
        canary.progression().cloned().unwrap()
    };
    let bp =
        |p: &Progression| -> Vec<u16> { p.step_weights.iter().map(|w| w.basis_points()).collect() };

    // stepWeight not dividing maxWeight: capped at maxWeight.
    let p = progression(
        "          interval: 5s
          threshold: 1
          stepWeight: 30
          maxWeight: 50
          metrics: [{ name: request-success-rate, thresholdRange: { min: 99 } }]
",
        "",
    );
    assert_eq!(bp(&p), [3000, 5000]);
    assert_eq!(p.max_weight, Weight::from_basis_points(5000).unwrap());
    assert_eq!(
        p.checks[0].window,
        Duration::from_secs(10),
        "window is at least 10s"
    );

    // stepWeights alone: max is the last.
    let p = progression(
        "          interval: 1m
          threshold: 2
          stepWeights: [1, 2.5, 10, 80]
          metrics:
            - name: request-duration
              interval: 2m
              thresholdRange: { min: 0, max: 250 }
",
        "",
    );
    assert_eq!(bp(&p), [100, 250, 1000, 8000]);
    assert_eq!(p.max_weight, Weight::from_basis_points(8000).unwrap());
    assert_eq!(p.checks[0].window, Duration::from_secs(120));
    assert_eq!(p.checks[0].min, Some(0.0));

    // stepWeights with a higher maxWeight: walks on to maxWeight.
    let p = progression(
        "          interval: 1m
          threshold: 2
          stepWeights: [5, 10]
          maxWeight: 50
          metrics:
            - name: custom
              templateRef: { name: t }
              templateVariables: { service: checkout }
",
        SIMPLE_TEMPLATE,
    );
    assert_eq!(bp(&p), [500, 1000, 5000]);
    assert_eq!(p.checks[0].window, Duration::from_secs(60));
    assert_eq!(
        p.checks[0].kind,
        CheckKind::Template(AnalysisRef {
            templates: vec!["t".into()],
            args: [("service".to_string(), "checkout".to_string())].into(),
        })
    );
}

#[test]
fn templates_and_providers() {
    let model = ok(&with_strategy(
        "      canary:
        steps:
          - analysis:
              templates: [{ templateName: t }, { templateName: web }]
              args: [{ name: service, value: checkout }, { name: quantile, value: 0.95 }]
",
        &format!(
            "{SIMPLE_TEMPLATE}  - name: web
    metrics:
      - name: status
        interval: 1m
        initialDelay: 30s
        failureCondition: result != 200
        inconclusiveLimit: 3
        consecutiveErrorLimit: 0
        dryRun: true
        provider:
          web:
            url: https://status.example.com/check
            method: post
            headers: [{{ key: X-Token, value: abc }}]
            body: '{{\"a\": 1}}'
            timeoutSeconds: 3
            jsonPath: $.status
      - name: stable-errors
        failureCondition: result > 0.01
        provider:
          builtin: {{ metric: error-rate, version: stable }}
"
        ),
    ));
    let step = &model.services[0].strategy.as_ref().unwrap().steps()[0];
    let Step::Analysis(r) = step else {
        panic!("{step:?}")
    };
    assert_eq!(r.args.get("quantile").map(String::as_str), Some("0.95"));

    let t = &model.analysis_templates[0];
    assert_eq!(t.args.get("service"), Some(&None));
    assert_eq!(t.args.get("quantile"), Some(&Some("0.99".to_string())));
    assert_eq!(t.metrics[0].interval, Duration::from_secs(10));
    assert_eq!(
        t.metrics[0].provider,
        Provider::Prometheus(PrometheusProvider {
            address: "http://127.0.0.1:9090".into(),
            query: "rate(x{service=\"{{args.service}}\"}[1m])".into(),
            timeout: Duration::from_secs(10),
            headers: Vec::new(),
            bearer_token_file: None,
            basic_auth: None,
            insecure_skip_verify: false,
        })
    );
    let web = &model.analysis_templates[1].metrics[0];
    assert_eq!(web.initial_delay, Duration::from_secs(30));
    assert_eq!(web.inconclusive_limit, 3);
    assert_eq!(web.consecutive_error_limit, 0);
    assert!(web.dry_run);
    assert_eq!(
        web.provider,
        Provider::Web(WebProvider {
            url: "https://status.example.com/check".into(),
            method: "POST".into(),
            headers: vec![("X-Token".into(), "abc".into())],
            body: Some("{\"a\": 1}".into()),
            timeout: Duration::from_secs(3),
            json_path: Some("$.status".into()),
        })
    );
    let builtin = &model.analysis_templates[1].metrics[1];
    assert_eq!(
        builtin.provider,
        Provider::Builtin(BuiltinProvider {
            metric: BuiltinMetric::ErrorRate,
            window: Duration::from_secs(30),
            arm: Arm::Stable,
            min_requests: 20,
            traffic: crate::model::Traffic::Primary,
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Problems, each with its path.
// ---------------------------------------------------------------------------------------------

#[test]
fn yaml_syntax_error_is_a_parse_error() {
    for yaml in [
        "listeners: [\n",
        "a: b\n  c: d\n",
        "services:\n  - name: a\n - name: b\n",
    ] {
        match parse(yaml, base()) {
            Err(ConfigError::Parse { message }) => {
                assert!(message.contains("line"), "{message}");
            }
            other => panic!("expected Parse for {yaml:?}, got {other:?}"),
        }
    }
}

#[test]
fn weights() {
    let canary = |w: &str| {
        with_service(&format!(
            "  - name: s
    stable: {{ version: v1, upstreams: [\"127.0.0.1:9001\"] }}
    canary: {{ version: v2, upstreams: [\"127.0.0.1:9002\"], weight: {w} }}
"
        ))
    };
    assert_eq!(
        problems(&canary("101")),
        ["services[0].canary.weight: must be between 0 and 100, got 101"]
    );
    check(
        &canary("0.125"),
        &["services[0].canary.weight: at most two decimals, got 0.125"],
    );
    check(
        &canary("-1"),
        &["services[0].canary.weight: must be between 0 and 100, got -1"],
    );
    check(
        &canary("ten"),
        &["services[0].canary.weight: expected a number…"],
    );
    check(
        &canary(".nan"),
        &["services[0].canary.weight: must be between 0 and 100, got .nan"],
    );
}

/// Invalid configurations: (yaml, expected problems).
#[test]
fn invalid_cases() {
    let stable = "stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }";
    let cases: Vec<(String, Vec<&str>)> = vec![
        // The document itself.
        ("- a\n- b\n".into(), vec!["(top level): expected a mapping, got a list"]),
        (
            "".into(),
            vec!["listeners: missing required field", "services: missing required field"],
        ),
        (
            "listeners: []\nservices: []\nextra: 1\n".to_string(),
            vec![
                "extra: unknown field \"extra\", expected one of: listeners, admin, stateDir, services, analysisTemplates, limits…",
                "listeners: must not be empty",
                "services: must not be empty",
            ],
        ),
        // Unknown fields, with a hint for snake_case.
        (
            with_service(&format!("  - name: s\n    {stable}\n    match: {{ path_prefix: /x }}\n")),
            vec!["services[0].match.path_prefix: unknown field \"path_prefix\" (did you mean \"pathPrefix\"?), expected one of: hosts, pathPrefix"],
        ),
        (
            with_service(&format!("  - name: s\n    {stable}\n    weight: 10\n")),
            vec!["services[0].weight: unknown field \"weight\"…"],
        ),
        // Listeners.
        (
            format!("listeners:\n  - name: a\n    address: foo\nservices:\n  - name: s\n    {stable}\n"),
            vec!["listeners[0].address: invalid socket address \"foo\": …"],
        ),
        (
            format!("listeners:\n  - name: a\n    address: example.com:80\n  - name: b\n    address: 8080\nservices:\n  - name: s\n    {stable}\n"),
            vec![
                "listeners[0].address: invalid socket address \"example.com:80\": …",
                "listeners[1].address: expected a string, got an integer",
            ],
        ),
        (
            format!("listeners:\n  - {{ name: a, address: 127.0.0.1:80 }}\n  - {{ name: a, address: 127.0.0.1:80 }}\n  - {{ address: 127.0.0.1:81 }}\nservices:\n  - name: s\n    {stable}\n"),
            vec![
                "listeners[1].name: duplicate listener name \"a\" (also listeners[0])",
                "listeners[1].address: address 127.0.0.1:80 is already used by listeners[0]",
                "listeners[2].name: missing required field",
            ],
        ),
        (
            format!("listeners:\n  - {{ name: a, address: 127.0.0.1:3100 }}\nservices:\n  - name: s\n    {stable}\n"),
            vec!["admin.address: 127.0.0.1:3100 is also the address of listener \"a\" (listeners[0])"],
        ),
        (
            format!("listeners:\n  - {{ name: a, address: 127.0.0.1:80, tls: {{ certificates: [] }} }}\n  - {{ name: b, address: 127.0.0.1:81, tls: {{}} }}\nservices:\n  - name: s\n    {stable}\n"),
            vec![
                "listeners[0].tls.certificates: must not be empty",
                "listeners[1].tls.certificates: missing required field",
            ],
        ),
        (
            format!("listeners:\n  - {{ name: a, address: 127.0.0.1:80 }}\nadmin: {{ tokenFile: /nonexistent/token }}\nservices:\n  - name: s\n    {stable}\n"),
            vec!["admin.tokenFile: file \"/nonexistent/token\" does not exist"],
        ),
        // Services: names, match, versions, upstreams.
        (
            with_service(&format!("  - name: a\n    {stable}\n  - name: a\n    match: {{ hosts: [x.com] }}\n    {stable}\n")),
            vec!["services[1].name: duplicate service name \"a\" (also services[0])"],
        ),
        (
            with_service(&format!("  - name: a b\n    {stable}\n  - name: \"\"\n    match: {{ hosts: [x.com] }}\n    {stable}\n")),
            vec![
                "services[0].name: invalid character ' ' in \"a b\": use letters, digits, '.', '_' and '-'",
                "services[1].name: must not be empty",
            ],
        ),
        (
            with_service("  - name: a\n    canary: { version: v2, upstreams: [\"127.0.0.1:9002\"] }\n"),
            vec!["services[0].stable: missing required field"],
        ),
        (
            with_service("  - name: a\n    stable: { upstreams: [] }\n"),
            vec![
                "services[0].stable.version: missing required field",
                "services[0].stable.upstreams: must not be empty",
            ],
        ),
        (
            with_service("  - name: a\n    stable: { version: v1, upstreams: [\"127.0.0.1:9001\", \"x\", \"127.0.0.1:99999\", \"127.0.0.1:9001\", \"bad host:80\", \"::1:80\"] }\n"),
            vec![
                "services[0].stable.upstreams[1]: invalid upstream address \"x\": expected HOST:PORT",
                "services[0].stable.upstreams[2]: invalid upstream address \"127.0.0.1:99999\": invalid port \"99999\" (expected HOST:PORT)",
                "services[0].stable.upstreams[3]: duplicate upstream \"127.0.0.1:9001\"",
                "services[0].stable.upstreams[4]: invalid upstream address \"bad host:80\": invalid character ' ' in host \"bad host\"",
                "services[0].stable.upstreams[5]: invalid upstream address \"::1:80\": …",
            ],
        ),
        (
            with_service(&format!("  - name: a\n    {stable}\n    canary: {{ version: v1, upstreams: \"127.0.0.1:9002\" }}\n")),
            vec![
                "services[0].canary.version: must differ from stable.version, both are \"v1\"",
                "services[0].canary.upstreams: expected a list, got a string",
            ],
        ),
        (
            with_service(&format!("  - name: a\n    {stable}\n    match: {{ hosts: [\"\", \"a.*.com\", \"x.com:80\", \"a b.com\", \"**\", \"X.com\", \"x.com\"], pathPrefix: api }}\n")),
            vec![
                "services[0].match.hosts[0]: invalid host pattern \"\": host pattern must not be empty",
                "services[0].match.hosts[1]: invalid host pattern \"a.*.com\": \"*\" is only allowed alone or as a leading \"*.\"",
                "services[0].match.hosts[2]: invalid host pattern \"x.com:80\": host patterns must not include a port",
                "services[0].match.hosts[3]: invalid host pattern \"a b.com\": invalid character ' ' in host name",
                "services[0].match.hosts[4]: invalid host pattern \"**\": …",
                "services[0].match.hosts[6]: duplicate host pattern \"x.com\"",
                "services[0].match.pathPrefix: must start with \"/\", got \"api\"",
            ],
        ),
        (
            with_service(&format!("  - name: a\n    {stable}\n  - name: b\n    match: {{ hosts: [\"*\", \"Shop.com\"] }}\n    {stable}\n  - name: c\n    match: {{ hosts: [shop.com], pathPrefix: / }}\n    {stable}\n")),
            vec![
                "services[1].match: host \"*\" with pathPrefix \"/\" is already routed by service \"a\"",
                "services[2].match: host \"shop.com\" with pathPrefix \"/\" is already routed by service \"b\"",
            ],
        ),
        (
            with_service(&format!("  - name: a\n    {stable}\n    upstream: {{ connectTimeout: 10 parsecs, responseTimeout: 30, idleTimeout: 0s, maxIdlePerUpstream: -1 }}\n")),
            vec![
                "services[0].upstream.connectTimeout: invalid duration \"10 parsecs\": …",
                "services[0].upstream.responseTimeout: expected a duration like \"10s\"…",
                "services[0].upstream.idleTimeout: must be greater than zero",
                "services[0].upstream.maxIdlePerUpstream: must not be negative, got -1",
            ],
        ),
        (
            with_service("  - name: 5\n    stable: [v1]\n    match: []\n"),
            vec![
                "services[0].name: expected a string, got an integer",
                "services[0].stable: expected a mapping, got a list",
                "services[0].match: expected a mapping, got a list",
            ],
        ),
    ];
    for (yaml, expect) in &cases {
        check(yaml, expect);
    }
}

#[test]
fn invalid_strategies() {
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            with_strategy("      canary: {}", ""),
            vec!["services[0].strategy.canary: needs steps, analysis.stepWeight or analysis.iterations"],
        ),
        (
            with_strategy("      blueGreen: {}\n      rainbow: {}", ""),
            vec![
                "services[0].strategy.rainbow: unknown field \"rainbow\", expected one of: canary, blueGreen",
                "services[0].strategy.blueGreen.preview: missing required field",
            ],
        ),
        (
            with_strategy("      {}", ""),
            vec!["services[0].strategy: needs canary or blueGreen"],
        ),
        (
            with_strategy(
                "      canary:
        progressDeadline: 0s
        steps:
          - {}
          - { setWeight: 10, pause: {} }
          - { setWeigth: 10 }
          - setWeight: 150
          - pause: { duration: ten }
          - pause: 10s
          - analysis: { templates: [{ templateName: nope }] }
          - analysis: { templates: [] }
",
                "",
            ),
            vec![
                "services[0].strategy.canary.progressDeadline: must be greater than zero",
                "services[0].strategy.canary.steps[0]: a step needs exactly one of setWeight, pause, analysis, setHeaderRoute or setMirrorRoute",
                "services[0].strategy.canary.steps[1]: a step needs exactly one of setWeight, pause, analysis, setHeaderRoute or setMirrorRoute, got setWeight and pause",
                "services[0].strategy.canary.steps[2].setWeigth: unknown field \"setWeigth\"…",
                "services[0].strategy.canary.steps[3].setWeight: must be between 0 and 100, got 150",
                "services[0].strategy.canary.steps[4].pause.duration: invalid duration \"ten\"…",
                "services[0].strategy.canary.steps[5].pause: expected a mapping, got a string",
                "services[0].strategy.canary.steps[6].analysis.templates[0].templateName: unknown analysis template \"nope\" (no analysisTemplates are defined)",
                "services[0].strategy.canary.steps[7].analysis.templates: must not be empty",
            ],
        ),
        // Template arguments.
        (
            with_strategy(
                "      canary:
        steps:
          - analysis:
              templates: [{ templateName: t }]
          - analysis:
              templates: [{ templateName: t }]
              args: [{ name: service, value: a }, { name: extra, value: b }, { name: service, value: c }]
        analysis:
          templates: [{ templateName: t }]
          args: [{ name: service, value: a }]
          startingStep: 2
",
                SIMPLE_TEMPLATE,
            ),
            vec![
                "services[0].strategy.canary.steps[0].analysis: missing argument \"service\" required by template \"t\"",
                "services[0].strategy.canary.steps[1].analysis.args[2].name: duplicate argument \"service\"",
                "services[0].strategy.canary.analysis.startingStep: must be less than the number of steps (2), got 2",
            ],
        ),
        (
            with_strategy(
                "      canary:
        steps:
          - analysis:
              templates: [{ templateName: t }]
              args: [{ name: service, value: a }, { name: extra, value: b }]
",
                SIMPLE_TEMPLATE,
            ),
            vec!["services[0].strategy.canary.steps[0].analysis.args[1].name: argument \"extra\" is not declared by template \"t\""],
        ),
        (
            with_strategy(
                "      canary:
        analysis:
          templates: [{ templateName: latency }]
",
                "",
            ),
            vec![
                "services[0].strategy.canary.analysis.templates[0].templateName: unknown analysis template \"latency\"…",
                "services[0].strategy.canary: needs steps, analysis.stepWeight or analysis.iterations",
            ],
        ),
        // Flagger form.
        (
            with_strategy(
                "      canary:
        steps: [{ setWeight: 10 }]
        analysis:
          templates: [{ templateName: t }]
          interval: 1m
          threshold: 0
          stepWeight: 20
          maxWeight: 10
          metrics:
            - name: request-success-rate
            - name: foo
            - name: request-duration
              thresholdRange: { min: 5, max: 1 }
            - name: request-duration
              thresholdRange: {}
",
                "",
            ),
            vec![
                "services[0].strategy.canary.analysis.templates: not allowed in Flagger-style analysis (interval, threshold, stepWeight, stepWeights, maxWeight, metrics, iterations, match, mirror, mirrorWeight)",
                "services[0].strategy.canary.analysis.threshold: must be at least 1, got 0",
                "services[0].strategy.canary.analysis.maxWeight: must be at least stepWeight (20), got 10",
                "services[0].strategy.canary.analysis.metrics[0].thresholdRange: missing required field (needs min or max)",
                "services[0].strategy.canary.analysis.metrics[1].name: unknown check \"foo\": use request-success-rate, request-duration or templateRef",
                "services[0].strategy.canary.analysis.metrics[2].thresholdRange: min (5) must not be greater than max (1)",
                "services[0].strategy.canary.analysis.metrics[3].thresholdRange: needs min or max",
                "services[0].strategy.canary.steps: steps and Flagger-style analysis (stepWeight) cannot be combined",
            ],
        ),
        (
            with_strategy(
                "      canary:
        analysis:
          threshold: 1
          stepWeight: 10
          metrics: []
",
                "",
            ),
            vec![
                "services[0].strategy.canary.analysis.interval: missing required field",
                "services[0].strategy.canary.analysis.maxWeight: missing required field (needed with stepWeight)",
                "services[0].strategy.canary.analysis.metrics: must not be empty",
            ],
        ),
        (
            with_strategy(
                "      canary:
        analysis:
          interval: 1m
          threshold: 1
          maxWeight: 50
          metrics: [{ name: request-success-rate, thresholdRange: { min: 99 } }]
",
                "",
            ),
            vec!["services[0].strategy.canary.analysis.stepWeight: missing required field…"],
        ),
        (
            with_strategy(
                "      canary:
        analysis:
          interval: 1m
          threshold: 1
          stepWeights: [0, 20, 20, 10, 60]
          maxWeight: 50
          metrics:
            - name: x
              templateRef: { name: missing }
            - name: y
              templateVariables: { a: b }
              thresholdRange: { min: 1 }
",
                "",
            ),
            vec![
                "services[0].strategy.canary.analysis.stepWeights[0]: must be greater than 0",
                "services[0].strategy.canary.analysis.stepWeights[2]: must be greater than the previous step weight (20), got 20",
                "services[0].strategy.canary.analysis.stepWeights[3]: must be greater than the previous step weight (20), got 10",
                "services[0].strategy.canary.analysis.stepWeights[4]: must not exceed maxWeight (50), got 60",
                "services[0].strategy.canary.analysis.metrics[0].templateRef.name: unknown analysis template \"missing\"…",
                "services[0].strategy.canary.analysis.metrics[1].templateVariables: only allowed together with templateRef",
                "services[0].strategy.canary.analysis.metrics[1].name: unknown check \"y\"…",
            ],
        ),
        (
            with_strategy(
                "      canary:
        analysis:
          interval: 1m
          threshold: 1
          stepWeight: 10
          stepWeights: [10]
          maxWeight: 20
          metrics:
            - name: x
              templateRef: { name: t }
",
                SIMPLE_TEMPLATE,
            ),
            vec![
                "services[0].strategy.canary.analysis.stepWeights: use either stepWeight or stepWeights, not both",
                "services[0].strategy.canary.analysis.metrics[0].templateRef: missing argument \"service\" required by template \"t\"",
            ],
        ),
    ];
    for (yaml, expect) in &cases {
        check(yaml, expect);
    }
}

#[test]
fn invalid_templates() {
    let templates = "analysisTemplates:
  - name: a
    args: [{ name: x }, { name: x }]
    metrics:
      - name: m
        provider: { builtin: { metric: latency-p42 } }
      - name: m
        successCondition: \"\"
        count: 0
        failureLimit: -1
        dryRun: yes
        provider: { builtin: { metric: success-rate }, web: { url: http://x } }
  - name: a
    metrics: []
  - metrics:
      - name: p
        successCondition: result > 1
        provider:
          prometheus: { address: 127.0.0.1:9090, query: \"{{args.nope}}\", timeout: 0s }
      - name: w
        successCondition: result > 1
        provider:
          web: { url: ftp://x, method: DELETE, timeoutSeconds: 0, jsonPath: status, headers: [{ key: \"a:b\", value: c }] }
      - name: nothing
        successCondition: result > 1
        provider: {}
      - name: version
        successCondition: result > 1
        provider: { builtin: { metric: request-rate, version: both, window: 30, minRequests: 1.5 } }
  - name: placeholders
    args: [{ name: known }]
    metrics:
      - name: p
        successCondition: result > {{ args.threshold }}
        provider:
          prometheus: { address: \"http://{{args.known}}:9090\", query: \"{{args.unknown}}{{canary.verison}}{{service}}{{ stable.version }}{{canary.version}}\" }
";
    let yaml = with_service(&format!(
        "  - name: s\n    stable: {{ version: v1, upstreams: [\"127.0.0.1:9001\"] }}\n{templates}"
    ));
    check(
        &yaml,
        &[
            "analysisTemplates[0].args[1].name: duplicate argument \"x\"",
            "analysisTemplates[0].metrics[0]: needs successCondition or failureCondition",
            "analysisTemplates[0].metrics[0].provider.builtin.metric: unknown builtin metric \"latency-p42\", expected one of: success-rate, error-rate, request-rate, latency-p50, latency-p90, latency-p95, latency-p99",
            "analysisTemplates[0].metrics[1].successCondition: must not be empty",
            "analysisTemplates[0].metrics[1].count: must be at least 1, got 0",
            "analysisTemplates[0].metrics[1].failureLimit: must not be negative, got -1",
            "analysisTemplates[0].metrics[1].dryRun: expected a boolean (true or false), got a string",
            "analysisTemplates[0].metrics[1].provider: needs exactly one of builtin, prometheus, web, exec or datadog, got builtin and web",
            "analysisTemplates[1].name: duplicate analysis template name \"a\" (also analysisTemplates[0])",
            "analysisTemplates[1].metrics: must not be empty",
            "analysisTemplates[2].name: missing required field",
            "analysisTemplates[2].metrics[0].provider.prometheus.address: must be an http:// or https:// URL, got \"127.0.0.1:9090\"",
            "analysisTemplates[2].metrics[0].provider.prometheus.query: \"{{args.nope}}\" uses argument \"nope\", which the template does not declare in args",
            "analysisTemplates[2].metrics[0].provider.prometheus.timeout: must be greater than zero",
            "analysisTemplates[2].metrics[1].provider.web.url: must be an http:// or https:// URL, got \"ftp://x\"",
            "analysisTemplates[2].metrics[1].provider.web.method: expected one of GET, POST, PUT, HEAD, got \"DELETE\"",
            "analysisTemplates[2].metrics[1].provider.web.timeoutSeconds: must be at least 1, got 0",
            "analysisTemplates[2].metrics[1].provider.web.jsonPath: must start with \"$\" or \"{\", got \"status\"",
            "analysisTemplates[2].metrics[1].provider.web.headers[0].key: invalid header name \"a:b\"",
            "analysisTemplates[2].metrics[2].provider: needs exactly one of builtin, prometheus, web, exec or datadog",
            "analysisTemplates[2].metrics[3].provider.builtin.version: expected \"canary\" or \"stable\", got \"both\"",
            "analysisTemplates[2].metrics[3].provider.builtin.window: expected a duration like \"10s\"…",
            "analysisTemplates[2].metrics[3].provider.builtin.minRequests: expected an integer, got 1.5",
            "analysisTemplates[3].metrics[0].successCondition: \"{{args.threshold}}\" uses argument \"threshold\"…",
            "analysisTemplates[3].metrics[0].provider.prometheus.query: \"{{args.unknown}}\" uses argument \"unknown\"…",
            "analysisTemplates[3].metrics[0].provider.prometheus.query: unknown variable \"{{canary.verison}}\": use {{args.NAME}}, {{service}}, {{stable.version}}, {{canary.version}}",
        ],
    );
    let got = problems(&yaml);
    assert!(
        !got.iter().any(|p| p.contains("args.known")),
        "declared placeholders are fine: {got:?}"
    );
    assert!(
        !got.iter()
            .any(|p| p.contains("{{service}}\"") || p.contains("version}}\":")),
        "built-in variables are fine: {got:?}"
    );
}

#[test]
fn several_problems_are_reported_at_once() {
    let err = parse(MANY_PROBLEMS, base()).unwrap_err();
    let ConfigError::Invalid(errors) = &err else {
        panic!("expected Invalid, got {err:?}")
    };
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "listeners[0].colour: unknown field \"colour\", expected one of: name, address, tls, trustedProxies, timeouts, limits, redirect",
            "services[0].canary.weight: must be between 0 and 100, got 101",
            "services[0].upstream.connectTimeout: invalid duration \"10 parsecs\": unexpected \" parsecs\" after 10 (use ms, s, m or h, like \"10s\" or \"1m30s\")",
            "services[1].name: duplicate service name \"checkout\" (also services[0])",
        ]
    );
    assert_eq!(err.problems(), lines);
    assert_eq!(err.to_string(), lines.join("\n"));
    assert_eq!(errors[1].at, "services[0].canary.weight");
    assert_eq!(errors[1].problem, "must be between 0 and 100, got 101");
}

#[test]
fn parse_error_problems_is_one_line() {
    let err = parse("a: [", base()).unwrap_err();
    assert_eq!(err.problems().len(), 1);
    assert!(err.problems()[0].starts_with("invalid YAML: "));
}

#[test]
fn durations() {
    for (text, want) in [
        ("500ms", Duration::from_millis(500)),
        ("10s", Duration::from_secs(10)),
        ("2m", Duration::from_secs(120)),
        ("1h", Duration::from_secs(3600)),
        ("1m30s", Duration::from_secs(90)),
        ("1h2m3s4ms", Duration::from_millis(3_723_004)),
        ("0s", Duration::ZERO),
        ("90s", Duration::from_secs(90)),
    ] {
        assert_eq!(parse_duration(text), Ok(want), "{text}");
    }
    for (text, reason) in [
        ("", "empty duration"),
        ("10", "missing unit after 10"),
        ("10 s", "unexpected \" s\" after 10"),
        ("10 parsecs", "unexpected \" parsecs\" after 10"),
        ("10parsecs", "unknown unit \"parsecs\""),
        ("1.5s", "unexpected \".5s\" after 1"),
        ("s", "expected a number at \"s\""),
        ("-1s", "expected a number at \"-1s\""),
        ("1s ", "expected a number at \" \""),
        ("10us", "unknown unit \"us\""),
        ("99999999999999999999s", "number too large"),
        ("9999999999999999h", "duration too large"),
        ("1é", "unexpected \"é\" after 1"),
    ] {
        let err = parse_duration(text).unwrap_err();
        assert!(err.contains(reason), "{text:?}: {err}");
    }
}

#[test]
fn host_patterns() {
    assert_eq!(HostPattern::parse("*"), Ok(HostPattern::Any));
    assert_eq!(
        HostPattern::parse("*.Example.com"),
        Ok(HostPattern::Suffix(".example.com".into()))
    );
    assert_eq!(
        HostPattern::parse("10.0.0.1"),
        Ok(HostPattern::Exact("10.0.0.1".into()))
    );
    for bad in [
        "", "*.", "*.*.a", "a.*", "a..b", ".a", "a:1", "ü.com", "*a.com",
    ] {
        assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
    }
    let suffix = HostPattern::Suffix(".example.com".into());
    assert!(suffix.matches("a.EXAMPLE.com"));
    assert!(!suffix.matches("example.com"));
    assert!(!suffix.matches("aexample.com"));
    assert!(HostPattern::Exact("a.com".into()).matches("A.com"));
    assert!(HostPattern::Any.matches(""));
    assert_eq!(suffix.to_string(), "*.example.com");
}

#[test]
fn never_panics_on_odd_input() {
    let inputs = [
        "~",
        "42",
        "\"text\"",
        "[]",
        "listeners: 5\nservices: {}\n",
        "listeners: [~, 1, [], {name: [x]}]\nservices: [~, 1]\n",
        "services:\n  - name: s\n    stable: { version: [1], upstreams: [{}] }\n    strategy: 7\n",
        "services:\n  - strategy: { canary: { steps: 5, analysis: 5 } }\n",
        "services:\n  - strategy: { canary: { steps: [5, ~, [1]], analysis: { metrics: 1, stepWeights: 5 } } }\n",
        "analysisTemplates: [{ args: 5, metrics: [{ provider: { web: { headers: 5 } } }] }]\n",
        "analysisTemplates: { a: 1 }\n",
        "? [a]\n: 1\n",
        "1: 2\n",
        "!tag x\n",
        "listeners: !tag [x]\n",
    ];
    for input in inputs {
        let _ = parse(input, base());
    }
    let mut deep = String::new();
    for _ in 0..10_000 {
        deep.push('[');
    }
    let _ = parse(&deep, base());
}

mod acme;
mod admin;
mod compression;
mod datadog;
mod dns;
mod edge;
mod exec;
mod health;
mod ingress;
mod notify;
mod policies;
mod ratelimit;
mod webhook;

#[test]
fn trusted_proxies_and_request_body_options() {
    let text = "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    trustedProxies: [10.1.2.3/8, \"::1\", 192.168.0.0/16]\nservices:\n  - name: a\n    match: { hosts: [\"*\"] }\n    stable: { version: v1, upstreams: [127.0.0.1:1] }\n    upstream: { maxRequestBodySize: 1024, requestBodyTimeout: 5s }\n";
    let model = crate::parse(text, std::path::Path::new("/")).unwrap();
    let trusted = &model.listeners[0].trusted_proxies;
    assert!(trusted.contains("10.200.0.1".parse().unwrap()));
    assert!(trusted.contains("::ffff:10.0.0.1".parse().unwrap()));
    assert!(trusted.contains("::1".parse().unwrap()));
    assert!(!trusted.contains("11.0.0.1".parse().unwrap()));
    assert_eq!(model.services[0].upstream.max_request_body_size, Some(1024));
    assert_eq!(
        model.services[0].upstream.request_body_timeout,
        Duration::from_secs(5)
    );
    let bad = text.replace("10.1.2.3/8", "10.0.0.0/33");
    let error = crate::parse(&bad, std::path::Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("listeners[0].trustedProxies[0]"), "{error}");
    let default = text.replace(
        "    trustedProxies: [10.1.2.3/8, \"::1\", 192.168.0.0/16]\n",
        "",
    );
    let model = crate::parse(&default, std::path::Path::new("/")).unwrap();
    assert!(model.listeners[0].trusted_proxies.is_empty());
    assert_eq!(model.services[0].upstream.max_request_body_size, Some(1024));
}

#[test]
fn argo_pause_seconds_and_flaggers_canary_analysis_are_accepted() {
    // `pause: {duration: 30}`: a plain number is seconds, as in Argo.
    let model = ok(&with_strategy(
        "      canary:
        steps:
          - setWeight: 10
          - pause: { duration: 30 }
          - pause: { duration: 1m }
          - pause: {}
",
        "",
    ));
    assert_eq!(
        model.services[0].strategy.as_ref().unwrap().steps()[1..],
        [
            Step::Pause(Some(Duration::from_secs(30))),
            Step::Pause(Some(Duration::from_secs(60))),
            Step::Pause(None),
        ]
    );
    check(
        &with_strategy(
            "      canary:
        steps: [{ pause: { duration: -3 } }, { pause: { duration: 1.5 } }]
",
            "",
        ),
        &[
            "services[0].strategy.canary.steps[0].pause.duration: …",
            "services[0].strategy.canary.steps[1].pause.duration: …",
        ],
    );

    // Flagger's older `canaryAnalysis` is `analysis`, errors reported under the key written.
    let flagger = |key: &str| {
        with_strategy(
            &format!(
                "      canary:
        {key}:
          interval: 5s
          threshold: 1
          stepWeight: 20
          maxWeight: 60
          metrics: [{{ name: request-success-rate, thresholdRange: {{ min: 99 }} }}]
"
            ),
            "",
        )
    };
    let old = ok(&flagger("canaryAnalysis"));
    let new = ok(&flagger("analysis"));
    assert_eq!(old.services[0].strategy, new.services[0].strategy);
    let p = old.services[0]
        .strategy
        .as_ref()
        .unwrap()
        .progression()
        .unwrap();
    assert_eq!(p.max_weight, Weight::from_basis_points(6000).unwrap());
    check(
        &flagger("canaryAnalysis").replace("threshold: 1", "threshold: 0"),
        &["services[0].strategy.canary.canaryAnalysis.threshold: …"],
    );
    check(
        &with_strategy(
            "      canary:
        analysis: { interval: 5s, threshold: 1, stepWeight: 20, metrics: [] }
        canaryAnalysis: { interval: 5s, threshold: 1, stepWeight: 20, metrics: [] }
",
            "",
        ),
        &["services[0].strategy.canary.canaryAnalysis: canaryAnalysis is Flagger's older name for analysis: give one of them"],
    );
}

#[test]
fn prometheus_headers_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t").unwrap();
    std::fs::write(dir.path().join("password"), "p").unwrap();
    let template = |provider: &str| {
        format!(
            "listeners: [{{ name: l, address: \"127.0.0.1:0\" }}]
services: [{{ name: s, stable: {{ version: v1, upstreams: [\"127.0.0.1:9001\"] }} }}]
analysisTemplates:
  - name: t
    metrics:
      - name: m
        successCondition: result[0] > 1
        provider:
          prometheus:
            address: https://prometheus.internal:9090
            query: up{{job=\"{{{{service}}}}\"}}
{provider}"
        )
    };
    let model = parse(
        &template(
            "            headers: [{ key: X-Scope-OrgID, value: \"team-{{service}}\" }]
            bearerTokenFile: token
            insecureSkipVerify: true
",
        ),
        dir.path(),
    )
    .unwrap();
    let Provider::Prometheus(p) = &model.analysis_templates[0].metrics[0].provider else {
        panic!("a prometheus provider");
    };
    assert_eq!(
        p.headers,
        [("X-Scope-OrgID".to_string(), "team-{{service}}".to_string())]
    );
    assert_eq!(p.bearer_token_file, Some(dir.path().join("token")));
    assert!(p.insecure_skip_verify);
    let model = parse(
        &template("            basicAuth: { username: weir, passwordFile: password }\n"),
        dir.path(),
    )
    .unwrap();
    let Provider::Prometheus(p) = &model.analysis_templates[0].metrics[0].provider else {
        panic!("a prometheus provider");
    };
    assert_eq!(
        p.basic_auth,
        Some(BasicAuth {
            username: "weir".into(),
            password_file: dir.path().join("password"),
        })
    );
    assert!(!p.insecure_skip_verify, "verified by default");

    let at = "analysisTemplates[0].metrics[0].provider.prometheus";
    let got = match parse(
        &template(
            "            headers: [{ key: Authorization, value: x }, { key: \"a b\", value: y }]
            bearerTokenFile: token
            basicAuth: { username: \"we:ir\", passwordFile: missing }
            insecureSkipVerify: sometimes
",
        ),
        dir.path(),
    ) {
        Ok(_) => panic!("expected problems"),
        Err(e) => e.problems(),
    };
    for want in [
        format!("{at}.headers[1].key: invalid header name \"a b\""),
        format!("{at}.basicAuth.username: must not contain ':' or control characters"),
        format!("{at}.basicAuth.passwordFile: "),
        format!("{at}.insecureSkipVerify: "),
    ] {
        assert!(
            got.iter().any(|p| p.starts_with(&want)),
            "{want} not in {got:#?}"
        );
    }
    let got = match parse(
        &template(
            "            headers: [{ key: authorization, value: x }]
            bearerTokenFile: token
            basicAuth: { username: weir, passwordFile: password }
",
        ),
        dir.path(),
    ) {
        Ok(_) => panic!("expected problems"),
        Err(e) => e.problems(),
    };
    for want in [
        format!("{at}.basicAuth: give one of bearerTokenFile or basicAuth, not both"),
        format!("{at}.headers: an Authorization header conflicts with bearerTokenFile/basicAuth"),
    ] {
        assert!(got.contains(&want), "{want} not in {got:#?}");
    }
}
