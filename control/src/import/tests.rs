//! Unit tests of the importer's pieces: the metric-name mapping, conditions, load-test commands,
//! notes with paths, and garbage input (clear errors, never a panic).

use proptest::prelude::*;
use serde_yaml_ng::Value;

use super::flagger::shell_words_for_test;
use super::metrics::{condition, rewrite_query, Names, Outcome};
use super::{import, parse_upstream_flag, ImportError, Input, Options, MAX_INPUT_BYTES};

fn names() -> Names {
    Names {
        service: vec!["podinfo".into()],
        canary: vec!["podinfo-canary".into()],
        stable: vec!["podinfo-primary".into()],
        canary_args: Vec::new(),
    }
}

fn run(text: &str) -> super::Imported {
    import(
        &[Input {
            name: "test.yaml".into(),
            text: text.into(),
        }],
        &Options::default(),
    )
    .unwrap_or_else(|e| panic!("import failed: {e}"))
}

fn parsed(yaml: &str) -> Value {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("output is not YAML: {e}\n{yaml}"))
}

#[test]
fn istio_success_rate_becomes_weirs_series_for_the_canary() {
    // Flagger's request-success-rate query for Istio, after its variables were substituted.
    let query = r#"sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="test",destination_workload="{{service}}",response_code!~"5.*"}[1m])) / sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="test",destination_workload="{{service}}"}[1m])) * 100"#;
    let r = rewrite_query(query, &names());
    assert_eq!(
        r.query,
        r#"sum(rate(http_requests_total{service="{{service}}",version="{{canary.version}}",status!~"5.*"}[1m])) / sum(rate(http_requests_total{service="{{service}}",version="{{canary.version}}"}[1m])) * 100"#
    );
    assert_eq!(
        r.outcome,
        Outcome::Rewritten {
            from: vec!["istio_requests_total".into()]
        }
    );
    eprintln!("istio query rewritten: {}", r.query);
}

#[test]
fn primary_workload_is_the_stable_version_and_histograms_keep_le() {
    let query = r#"histogram_quantile(0.99, sum(rate(istio_request_duration_seconds_bucket{destination_workload="podinfo-primary"}[30s])) by (le))"#;
    let r = rewrite_query(query, &names());
    assert_eq!(
        r.query,
        r#"histogram_quantile(0.99, sum(rate(http_request_duration_seconds_bucket{service="{{service}}",version="{{stable.version}}"}[30s])) by (le))"#
    );
}

#[test]
fn ingress_nginx_requests_map_ingress_to_service() {
    let query = r#"sum(rate(nginx_ingress_controller_requests{namespace="x",ingress="{{args.ingress}}",status!~"[4-5].*"}[60s]))"#;
    let r = rewrite_query(query, &names());
    assert_eq!(
        r.query,
        r#"sum(rate(http_requests_total{service="{{args.ingress}}",status!~"[4-5].*"}[60s]))"#
    );
}

#[test]
fn inexact_mappings_leave_the_query_as_is_with_a_reason() {
    let cases = [
        (
            r#"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{destination_workload="podinfo"}[1m])) by (le))"#,
            "milliseconds",
        ),
        (
            r#"sum(rate(istio_requests_total{source_workload="x"}[1m]))"#,
            "source_workload",
        ),
        (
            r#"sum by (response_code) (rate(istio_requests_total{destination_workload="podinfo"}[1m]))"#,
            "response_code",
        ),
        (
            r#"sum(rate(envoy_cluster_upstream_rq{envoy_response_code!~"5.*"}[1m]))"#,
            "envoy_cluster_upstream_rq",
        ),
        (
            r#"sum(rate(istio_requests_total{destination_workload="somebody-else"}[1m]))"#,
            "somebody-else",
        ),
        (
            r#"sum(rate(my_app_errors_total[1m]))"#,
            "my_app_errors_total",
        ),
        (
            r#"sum(rate(istio_requests_total{destination_workload=~"podinfo.*"}[1m]))"#,
            "=~",
        ),
    ];
    for (query, reason) in cases {
        let r = rewrite_query(query, &names());
        assert_eq!(r.query, query, "changed");
        match r.outcome {
            Outcome::LeftAsIs(why) => assert!(why.contains(reason), "{query}: {why}"),
            other => panic!("{query}: {other:?}"),
        }
    }
}

#[test]
fn weirs_own_series_are_kept_and_a_missing_version_is_flagged() {
    let all = r#"sum(rate(http_requests_total{service="checkout",status=~"5.."}[5m]))"#;
    let r = rewrite_query(all, &names());
    assert_eq!(r.query, all);
    assert_eq!(r.outcome, Outcome::Weir { all_versions: true });
    let canary =
        r#"sum(rate(http_requests_total{service="{{service}}",version="{{canary.version}}"}[5m]))"#;
    assert_eq!(
        rewrite_query(canary, &names()).outcome,
        Outcome::Weir {
            all_versions: false
        }
    );
}

#[test]
fn strings_and_functions_are_not_taken_for_metrics() {
    // A label value naming a mesh metric, label_replace's strings, offsets and durations.
    let query = r#"label_replace(sum(rate(http_requests_total{service="istio_requests_total"}[5m] offset 1m)), "x", "$1", "y", "(.*)") > 0.5e1"#;
    let r = rewrite_query(query, &names());
    assert_eq!(r.query, query);
}

#[test]
fn unterminated_strings_are_refused_not_sliced() {
    for query in [
        "istio_requests_total{response_code=\"5é",
        "istio_requests_total{response_code=\"é\\",
        "istio_requests_total{response_code='",
        "sum(\"é",
    ] {
        let r = rewrite_query(query, &names());
        assert_eq!(r.query, query);
    }
}

#[test]
fn expr_words_become_cel_operators_outside_strings() {
    assert_eq!(
        condition("result[0] > 1 and result[0] < 5 or not isNaN(result[0])").as_deref(),
        Some("result[0] > 1 && result[0] < 5 || ! isNaN(result[0])")
    );
    assert_eq!(condition(r#"result == "and or""#), None);
    assert_eq!(condition("result[0] >= 99"), None);
}

#[test]
fn shell_words_follow_quotes() {
    assert_eq!(
        shell_words_for_test(r#"hey -z 1m -H "X-A: b c" -q 10 'http://x/a b'"#),
        vec![
            "hey",
            "-z",
            "1m",
            "-H",
            "X-A: b c",
            "-q",
            "10",
            "http://x/a b"
        ]
    );
}

#[test]
fn upstream_flags_are_checked() {
    assert_eq!(
        parse_upstream_flag("shop=10.0.0.1:80, 10.0.0.2:80").expect("valid"),
        (
            "shop".to_string(),
            vec!["10.0.0.1:80".to_string(), "10.0.0.2:80".to_string()]
        )
    );
    for bad in ["shop", "=1.2.3.4:80", "shop=", "shop=,"] {
        assert!(parse_upstream_flag(bad).is_err(), "{bad}");
    }
}

const FLAGGER: &str = r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: podinfo, namespace: test}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  service: {port: 9898, hosts: [podinfo.example.com], retries: {attempts: 3}}
  analysis:
    interval: 1m
    threshold: 5
    stepWeights: [1, 10, 50]
    stepWeightPromotion: 100
    sessionAffinity: {cookieName: flagger-cookie, maxAge: 21600}
    metrics:
      - name: error-rate
        templateRef: {name: error-rate, namespace: istio-system}
        thresholdRange: {max: 1}
        interval: 1m
      - name: request-duration
        thresholdRange: {max: 500}
    webhooks:
      - name: gate
        type: confirm-promotion
        url: http://gate.example/approve
      - name: load
        url: http://flagger-loadtester.test/
        timeout: 5s
        metadata: {type: cmd, cmd: "hey -z 2m -q 5 -c 4 -m POST -H 'X-Canary: yes' http://podinfo-canary.test:9898/api/echo?x=1"}
      - name: acceptance
        type: pre-rollout
        url: http://flagger-loadtester.test/
        metadata: {type: bash, cmd: "curl -sd 'test' http://podinfo-canary:9898/token | grep token"}
    alerts:
      - name: on-call
        severity: error
        providerRef: {name: on-call, namespace: flagger}
      - name: team
        severity: info
        providerRef: {name: team}
  frobnicate: true
---
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata: {name: error-rate, namespace: istio-system}
spec:
  provider: {type: prometheus, address: "http://prometheus.istio-system:9090"}
  query: |
    100 - sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="{{ namespace }}",destination_workload="{{ target }}",response_code!~"5.*"}[{{ interval }}]))
    / sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="{{ namespace }}",destination_workload="{{ target }}"}[{{ interval }}])) * 100
---
apiVersion: flagger.app/v1beta1
kind: AlertProvider
metadata: {name: on-call, namespace: flagger}
spec: {type: msteams, secretRef: {name: msteams-url}}
---
apiVersion: flagger.app/v1beta1
kind: AlertProvider
metadata: {name: team}
spec: {type: slack, channel: general, address: "https://hooks.slack.com/services/X"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
"#;

#[test]
fn a_flagger_canary_with_template_webhooks_and_alerts() {
    let imported = run(FLAGGER);
    let out = parsed(&imported.yaml);
    let service = &out["services"][0];
    assert_eq!(service["match"]["hosts"][0], "podinfo.example.com");
    assert_eq!(service["sessionAffinity"]["maxAge"], "21600s");
    assert_eq!(service["notifications"][0], "on-call");
    assert_eq!(service["notifications"][1], "team");
    let analysis = &service["strategy"]["canary"]["analysis"];
    assert_eq!(analysis["stepWeights"][2], 50);
    assert_eq!(
        analysis["metrics"][0]["templateRef"]["name"],
        "podinfo-error-rate"
    );
    assert_eq!(analysis["metrics"][1]["name"], "request-duration");
    // The template: the MetricTemplate's query on weir's names, its threshold as the condition.
    let template = &out["analysisTemplates"][0];
    assert_eq!(template["name"], "podinfo-error-rate");
    let metric = &template["metrics"][0];
    assert_eq!(metric["successCondition"], "result[0] <= 1");
    let query = metric["provider"]["prometheus"]["query"]
        .as_str()
        .expect("a query");
    assert!(
        query.contains(r#"http_requests_total{service="{{service}}",version="{{canary.version}}",status!~"5.*"}[1m]"#),
        "{query}"
    );
    assert!(
        !query.contains("istio") && !query.contains("namespace"),
        "{query}"
    );
    // Webhooks: the gate as is, hey as a load test, the bash command kept as a hook.
    let hooks = &service["strategy"]["canary"]["webhooks"];
    assert_eq!(hooks[0]["type"], "confirm-promotion");
    assert_eq!(hooks[0]["url"], "http://gate.example/approve");
    assert_eq!(hooks[1]["type"], "rollout");
    assert_eq!(hooks[1]["loadTest"]["rate"], 20);
    assert_eq!(hooks[1]["loadTest"]["method"], "POST");
    assert_eq!(hooks[1]["loadTest"]["path"], "/api/echo?x=1");
    assert_eq!(hooks[1]["loadTest"]["headers"]["X-Canary"], "yes");
    assert!(hooks[1].get("url").is_none());
    assert_eq!(hooks[2]["type"], "pre-rollout");
    assert_eq!(hooks[2]["url"], "http://flagger-loadtester.test/");
    // Notifiers: kinds, secrets as files, severities as event lists.
    let n = &out["notifications"];
    assert_eq!(n[0]["name"], "on-call");
    assert_eq!(n[0]["kind"], "msteams");
    assert_eq!(n[0]["urlFile"], "secrets/msteams-url-address");
    assert_eq!(n[0]["on"], Value::Sequence(vec!["Aborted".into()]));
    assert_eq!(n[1]["url"], "https://hooks.slack.com/services/X");
    assert_eq!(n[1]["on"].as_sequence().map(Vec::len), Some(5));
    // Every field not carried over is listed with its path.
    let notes = imported.notes.join("\n");
    for wanted in [
        "Canary/podinfo: spec.frobnicate: not carried over",
        "Canary/podinfo: spec.service.retries: dropped",
        "Canary/podinfo: spec.analysis.stepWeightPromotion: dropped",
        "Canary/podinfo: spec.targetRef: dropped",
        "MetricTemplate/error-rate: spec.query: istio_requests_total rewritten",
        "AlertProvider/team: spec.channel: dropped",
        "ConfigMap/unrelated (v1) ignored",
        "spec.analysis.webhooks[2]: a flagger-loadtester command weir cannot run itself",
    ] {
        assert!(
            notes.contains(wanted),
            "missing note {wanted:?} in:\n{notes}"
        );
    }
    // The notes head the output as comments.
    assert!(imported.yaml.starts_with("# Written by `weir import`"));
    assert!(imported
        .yaml
        .contains("#   - Canary/podinfo: spec.frobnicate"));
    eprintln!(
        "flagger canary imported with {} notes",
        imported.notes.len()
    );
}

#[test]
fn names_and_values_are_quoted_by_the_serializer() {
    // Names and values that would break YAML text if spliced in.
    let text = r#"
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: "a: b # c\n- d"}
spec:
  strategy:
    canary:
      steps:
        - setHeaderRoute: {name: "x", match: [{headerName: "k", headerValue: {exact: "'\": {}[]"}}]}
        - setWeight: 10
"#;
    let imported = run(text);
    let out = parsed(&imported.yaml);
    assert_eq!(out["services"][0]["name"], "a: b # c\n- d");
    assert_eq!(
        out["services"][0]["strategy"]["canary"]["steps"][0]["setHeaderRoute"]["match"][0]
            ["headerValue"]["exact"],
        "'\": {}[]"
    );
    // Notes are single-line comments.
    for line in imported.yaml.lines().take_while(|l| l.starts_with('#')) {
        assert!(line.starts_with('#'));
    }
}

#[test]
fn garbage_input_gives_a_clear_error() {
    let input = |text: &str| {
        vec![Input {
            name: "in.yaml".into(),
            text: text.into(),
        }]
    };
    let options = Options::default();
    match import(&input("kind: [unclosed"), &options) {
        Err(ImportError::Yaml { file, document, .. }) => {
            assert_eq!((file.as_str(), document), ("in.yaml", 1));
        }
        other => panic!("{other:?}"),
    }
    match import(
        &input("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"),
        &options,
    ) {
        Err(error @ ImportError::NothingToImport { .. }) => {
            assert!(error.to_string().contains("Service/x"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    match import(&input(""), &options) {
        Err(ImportError::NothingToImport { .. }) => {}
        other => panic!("{other:?}"),
    }
    let big = "# padding\n".repeat(MAX_INPUT_BYTES / 10 + 1);
    let started = tokio::time::Instant::now();
    match import(&input(&big), &options) {
        Err(error @ ImportError::TooLarge { .. }) => {
            assert!(error.to_string().contains("in.yaml"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    eprintln!(
        "a {} MB input refused in {:?}",
        big.len() / 1_000_000,
        started.elapsed()
    );
    // A billion-laughs alias bomb is refused by the parser, not expanded.
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
    assert!(import(&input(bomb), &options).is_err());
}

#[test]
fn wrong_types_everywhere_never_panic() {
    let text = r#"
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: odd}
spec:
  progressDeadlineSeconds: "soon"
  template: 7
  strategy:
    canary:
      steps: "all of them"
      analysis: [1, 2]
      trafficRouting: 3
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: t}
spec:
  args: {not: a list}
  metrics:
    - 5
    - name: m
      count: "{{args.count}}"
      provider: {prometheus: {query: [1]}}
    - name: n
      provider: {newRelic: {query: x}}
---
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: c}
spec:
  analysis:
    metrics: [{name: 3}, {templateRef: {name: missing}}, {name: custom, templateRef: {name: missing}}]
    webhooks: [{type: rollout, metadata: {cmd: "hey -q x -c y"}}, 4]
    alerts: [{providerRef: 5}]
---
- a list document
---
42
"#;
    let imported = run(text);
    parsed(&imported.yaml);
    let notes = imported.notes.join("\n");
    for wanted in [
        "AnalysisTemplate/t: spec.metrics[2].provider: provider newRelic has no weir equivalent",
        "AnalysisTemplate/t: spec.metrics[1].count: dropped: weir needs a number",
        "Canary/c: spec.analysis.metrics[2].templateRef: MetricTemplate \"missing\" is not in the input",
        "test.yaml#4: ignored: not a Kubernetes manifest",
    ] {
        assert!(notes.contains(wanted), "missing note {wanted:?} in:\n{notes}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Arbitrary text, and arbitrary values in a Rollout's and a Canary's fields, never panic.
    #[test]
    fn arbitrary_input_never_panics(text in ".{0,300}", value in ".{0,40}") {
        let _ = import(&[Input { name: "x".into(), text }], &Options::default());
        let quoted = serde_yaml_ng::to_string(&value).unwrap_or_default();
        let quoted = quoted.trim_end();
        let rollout = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {{name: r}}\nspec:\n  strategy:\n    canary:\n      steps: [{{setWeight: {quoted}}}, {{pause: {{duration: {quoted}}}}}]\n---\napiVersion: flagger.app/v1beta1\nkind: Canary\nmetadata: {{name: c}}\nspec:\n  analysis:\n    interval: {quoted}\n    metrics: [{{name: {quoted}, thresholdRange: {{min: {quoted}}}}}]\n    webhooks: [{{name: w, metadata: {{cmd: {quoted}}}}}]\n"
        );
        let _ = import(&[Input { name: "y".into(), text: rollout }], &Options::default());
        let q = rewrite_query(&value, &Names::default());
        prop_assert!(!q.query.is_empty() || value.is_empty());
        let _ = condition(&value);
    }

    /// PromQL-like text (selectors, strings, escapes, non-ASCII) never panics the rewriter.
    #[test]
    fn promql_like_text_never_panics(
        query in r#"(istio_requests_total|nginx_ingress_controller_requests|sum|by|[a-z_{}=~!"'`(),\\\[\]0-9é ]){0,30}"#
    ) {
        let r = rewrite_query(&query, &names());
        if matches!(r.outcome, Outcome::LeftAsIs(_)) {
            prop_assert_eq!(r.query, query);
        }
    }
}

const ARGO: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata:
  name: checkout
  annotations:
    notifications.argoproj.io/subscribe.on-rollout-completed.slack: deploys
    notifications.argoproj.io/subscribe.on-rollout-aborted.slack: deploys
    notifications.argoproj.io/subscribe.on-analysis-run-failed.teams: oncall
    notifications.argoproj.io/subscribe.on-rollout-updated.slack: deploys
    notifications.argoproj.io/subscribe.on-rollout-completed.email: ops@example.com
spec:
  progressDeadlineSeconds: 600
  workloadRef: {apiVersion: apps/v1, kind: Deployment, name: checkout}
  strategy:
    canary:
      steps:
        - setCanaryScale: {replicas: 1}
        - setHeaderRoute:
            name: testers
            match: [{headerName: x-tester, headerValue: {exact: "1"}}]
        - setWeight: 5
        - experiment: {templates: [{name: baseline, specRef: stable}]}
        - analysis:
            templates: [{templateName: mesh, clusterScope: true}, {templateName: mesh}]
            args:
              - {name: svc, value: checkout.shop.svc.cluster.local}
              - {name: hash, valueFrom: {podTemplateHashValue: Latest}}
        - pause: {}
        - setWeight: 100
          bogus: 1
---
apiVersion: argoproj.io/v1alpha1
kind: ClusterAnalysisTemplate
metadata: {name: mesh}
spec:
  args: [{name: svc}, {name: hash, value: x}, {name: token, valueFrom: {secretKeyRef: {name: prom, key: token}}}]
  metrics:
    - name: success
      interval: 1m
      successCondition: result[0] >= 0.99 and result[0] <= 1
      provider:
        prometheus:
          address: http://prometheus:9090
          query: sum(rate(istio_requests_total{destination_service="{{args.svc}}",response_code!~"5.*"}[1m])) / sum(rate(istio_requests_total{destination_service="{{args.svc}}"}[1m]))
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: mesh}
spec:
  metrics:
    - name: p99
      successCondition: result[0] < 0.5
      provider: {prometheus: {address: http://prometheus:9090, query: "histogram_quantile(0.99, sum(rate(http_request_duration_seconds_bucket{service=\"{{service}}\",version=\"{{canary.version}}\"}[1m])) by (le))"}}
"#;

#[test]
fn an_argo_rollout_with_routes_experiments_cluster_templates_and_subscriptions() {
    let imported = run(ARGO);
    let out = parsed(&imported.yaml);
    let service = &out["services"][0];
    let canary = &service["strategy"]["canary"];
    assert_eq!(canary["progressDeadline"], "600s");
    let steps = canary["steps"].as_sequence().expect("steps");
    // setCanaryScale and experiment are left out; the rest keep their order.
    assert_eq!(steps.len(), 5, "{steps:?}");
    assert_eq!(steps[0]["setHeaderRoute"]["name"], "testers");
    assert_eq!(steps[1]["setWeight"], 5);
    // A ClusterAnalysisTemplate and an AnalysisTemplate of one name both survive.
    assert_eq!(steps[2]["analysis"]["templates"][0]["templateName"], "mesh");
    assert_eq!(
        steps[2]["analysis"]["templates"][1]["templateName"],
        "mesh-2"
    );
    assert_eq!(steps[2]["analysis"]["args"][0]["value"], "checkout");
    assert_eq!(
        steps[2]["analysis"]["args"].as_sequence().map(Vec::len),
        Some(1),
        "the podTemplateHashValue argument is left out"
    );
    let templates = &out["analysisTemplates"];
    let metric = &templates[0]["metrics"][0];
    assert_eq!(
        metric["successCondition"],
        "result[0] >= 0.99 && result[0] <= 1"
    );
    assert_eq!(
        metric["provider"]["prometheus"]["query"],
        r#"sum(rate(http_requests_total{service="{{args.svc}}",status!~"5.*"}[1m])) / sum(rate(http_requests_total{service="{{args.svc}}"}[1m]))"#
    );
    assert_eq!(templates[0]["args"][2]["value"], "secrets/prom/token");
    // Subscriptions: one notifier per Argo service, the triggers weir has.
    assert_eq!(service["notifications"][0], "argo-slack");
    assert_eq!(service["notifications"][1], "argo-teams");
    let n = &out["notifications"];
    assert_eq!(n[0]["name"], "argo-slack");
    assert_eq!(
        n[0]["on"],
        Value::Sequence(vec!["Promoted".into(), "Aborted".into()])
    );
    assert_eq!(n[1]["kind"], "msteams");
    assert_eq!(n[1]["on"], Value::Sequence(vec!["AnalysisFailed".into()]));
    let notes = imported.notes.join("\n");
    for wanted in [
        "Rollout/checkout: spec.strategy.canary.steps[0].setCanaryScale: dropped",
        "Rollout/checkout: spec.strategy.canary.steps[3].experiment: dropped",
        "Rollout/checkout: spec.strategy.canary.steps[6].bogus: not carried over",
        "Rollout/checkout: spec.workloadRef: dropped",
        "steps[4].analysis.args[1].valueFrom: podTemplateHashValue",
        "ClusterAnalysisTemplate/mesh: spec.args[2].valueFrom: secretKeyRef prom/token",
        "trigger on-rollout-updated has no weir event",
        "not email",
        "expr's and/or/not written as CEL's",
        "istio_requests_total rewritten",
    ] {
        assert!(
            notes.contains(wanted),
            "missing note {wanted:?} in:\n{notes}"
        );
    }
}

#[test]
fn a_template_argument_is_pinned_to_the_canary_only_when_every_rollout_gives_its_canary_service() {
    let template = r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: errors}
spec:
  args: [{name: svc}]
  metrics:
    - name: errors
      successCondition: result[0] < 1
      provider: {prometheus: {address: http://p:9090, query: 'sum(rate(http_requests_total{service="{{args.svc}}",status=~"5.."}[1m]))'}}
"#;
    let rollout = |name: &str, value: &str| {
        format!(
            "---\napiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {{name: {name}}}\nspec:\n  strategy:\n    canary:\n      canaryService: {name}-canary\n      steps:\n        - setWeight: 10\n        - analysis: {{templates: [{{templateName: errors}}], args: [{{name: svc, value: {value}}}]}}\n"
        )
    };
    let pinned = run(&format!(
        "{template}{}{}",
        rollout("a", "a-canary"),
        rollout("b", "b-canary.ns.svc.cluster.local")
    ));
    assert!(
        pinned
            .yaml
            .contains(r#"{service="{{args.svc}}",status=~"5..",version="{{canary.version}}"}"#),
        "{}",
        pinned.yaml
    );
    // One rollout passes its stable Service: the template judges what the argument names, as written.
    let mixed = run(&format!(
        "{template}{}{}",
        rollout("a", "a-canary"),
        rollout("b", "b")
    ));
    assert!(
        mixed
            .yaml
            .contains(r#"{service="{{args.svc}}",status=~"5.."}"#),
        "{}",
        mixed.yaml
    );
    assert!(mixed
        .notes
        .iter()
        .any(|n| n.contains("selects every version")));
}

#[test]
fn the_same_name_twice_gets_a_free_name() {
    let one = "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: shop, namespace: a}\nspec: {strategy: {canary: {steps: [{setWeight: 50}]}}}\n";
    let two = "apiVersion: flagger.app/v1beta1\nkind: Canary\nmetadata: {name: shop, namespace: b}\nspec: {analysis: {interval: 1m, threshold: 1, iterations: 3}}\n";
    let imported = run(&format!("{one}---\n{two}"));
    let out = parsed(&imported.yaml);
    assert_eq!(out["services"][0]["name"], "shop");
    assert_eq!(out["services"][1]["name"], "shop-2");
    assert!(imported
        .notes
        .iter()
        .any(|n| n.contains("written as \"shop-2\"")));
}
