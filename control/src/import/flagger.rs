//! Flagger: `Canary` → a service with its analysis, webhooks and alerts; `MetricTemplate` → one
//! analysis template per check that uses it (the check's threshold becomes its condition);
//! `AlertProvider` → `notifications`.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use super::argo;
use super::emit::{self, ServiceSpec};
use super::metrics::Names;
use super::{map, put, s, seconds, Cx, Manifest, Node, Options, Out, Sorted};

/// Why Kubernetes-only fields are dropped.
const K8S: &str = "Kubernetes-only (deployments, autoscalers, Services, meshes); weir routes to the upstreams itself";
/// Flagger's analysis interval when none is written.
const DEFAULT_INTERVAL: &str = "1m";
/// The highest load-test rate weir accepts (`LoadTest::MAX_RATE`).
const MAX_RATE: u64 = weir_config::LoadTest::MAX_RATE as u64;
/// hey's default number of workers (`-c`).
const HEY_DEFAULT_WORKERS: u64 = 50;
/// The rate written when a load-test command sets none.
const DEFAULT_RATE: u64 = 10;

/// The weir event kinds a Flagger alert severity subscribes to.
fn events_for(severity: &str) -> Vec<&'static str> {
    match severity {
        "error" => vec!["Aborted"],
        "warn" => vec!["Aborted", "AnalysisFailed", "Paused"],
        _ => vec![
            "Promoted",
            "Aborted",
            "Paused",
            "AnalysisFailed",
            "StepCompleted",
        ],
    }
}

/// Ranks severities: the most verbose wins when canaries differ.
fn verbosity(severity: &str) -> u8 {
    match severity {
        "error" => 0,
        "warn" => 1,
        _ => 2,
    }
}

/// Every `AlertProvider` → a notifier named like it; `on` from the most verbose severity the
/// canaries' alerts ask of it.
pub(super) fn alert_providers(cx: &mut Cx, sorted: &Sorted<'_>, out: &mut Out) {
    // Severities asked of each provider.
    let mut severities: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &sorted.canaries {
        let spec = c.value.get("spec");
        let analysis = spec
            .and_then(|s| s.get("analysis"))
            .or_else(|| spec.and_then(|s| s.get("canaryAnalysis")));
        let alerts = analysis
            .and_then(|a| a.get("alerts"))
            .and_then(Value::as_sequence);
        for alert in alerts.into_iter().flatten() {
            if let Some(provider) = alert
                .get("providerRef")
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
            {
                let severity = alert
                    .get("severity")
                    .and_then(Value::as_str)
                    .unwrap_or("info");
                severities
                    .entry(provider.to_string())
                    .or_default()
                    .push(severity.to_string());
            }
        }
    }
    for p in &sorted.alert_providers {
        let id = p.id();
        let root = Node::new(cx, Some(p.value), format!("{id}:"));
        root.get("apiVersion");
        root.get("kind");
        root.get("metadata");
        root.drop_key(cx, "status", "runtime state");
        let spec = root.child(cx, "spec");
        let flagger_type = spec.text("type").unwrap_or_else(|| "slack".to_string());
        let kind = match flagger_type.as_str() {
            "slack" | "msteams" | "discord" => flagger_type.clone(),
            "rocket" => {
                cx.note(format!(
                    "{}: rocket written as kind slack (Rocket.Chat takes Slack's message format)",
                    spec.at("type")
                ));
                "slack".to_string()
            }
            other => {
                cx.note(format!(
                    "{}: {other} has no weir kind: written as generic (a JSON POST); check the receiver accepts it",
                    spec.at("type")
                ));
                "generic".to_string()
            }
        };
        let name = p.name.clone();
        let mut n = map([("name", s(name.as_str())), ("kind", s(kind))]);
        match (spec.text("address"), spec.get("secretRef")) {
            (_, Some(secret)) => {
                let secret = secret
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("secret");
                let file = format!("secrets/{secret}-address");
                cx.note(format!(
                    "{}: the URL is in the Kubernetes secret \"{secret}\" (key address): put it in {file} next to the config (urlFile)",
                    spec.at("secretRef")
                ));
                put(&mut n, "urlFile", s(file));
            }
            (Some(address), None) => {
                cx.note(format!(
                    "{}: the webhook URL is written in the config (url); a secret is better kept in a file (urlFile)",
                    spec.at("address")
                ));
                put(&mut n, "url", s(address));
            }
            (None, None) => {
                let file = format!("secrets/{name}-url");
                cx.note(format!(
                    "{}: no address: urlFile {file} is a placeholder",
                    spec.path()
                ));
                put(&mut n, "urlFile", s(file));
            }
        }
        spec.get("address");
        let asked = severities.get(&name).cloned().unwrap_or_default();
        let severity = asked
            .iter()
            .max_by_key(|s| verbosity(s))
            .cloned()
            .unwrap_or_else(|| "info".to_string());
        if asked.iter().any(|s| *s != severity) {
            cx.note(format!(
                "{id}: canaries ask it for severities {}: weir has one event list per notifier; written for {severity}",
                asked.join(", ")
            ));
        }
        put(
            &mut n,
            "on",
            Value::Sequence(events_for(&severity).into_iter().map(s).collect()),
        );
        for key in ["channel", "username"] {
            spec.drop_key(
                cx,
                key,
                "weir posts to the webhook URL, whose channel and name the receiver decides",
            );
        }
        spec.drop_key(cx, "proxy", "weir does not post through a proxy");
        spec.drop_key(cx, "certSecretRef", "weir verifies with the system's roots");
        spec.finish(cx);
        root.finish(cx);
        out.notifier_names.insert(name);
        out.notifications.push(n);
    }
}

/// One `Canary`.
pub(super) fn canary(
    cx: &mut Cx,
    sorted: &Sorted<'_>,
    c: &Manifest<'_>,
    out: &mut Out,
    options: &Options,
) {
    let id = c.id();
    let namespace = c
        .value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .map(String::from);
    let root = Node::new(cx, Some(c.value), format!("{id}:"));
    root.get("apiVersion");
    root.get("kind");
    root.get("metadata");
    if let Some(ns) = &namespace {
        cx.note(format!(
            "{id}: metadata.namespace \"{ns}\" dropped: weir has no namespaces ({{{{ namespace }}}} in templates is written as \"{ns}\")"
        ));
    }
    root.drop_key(cx, "status", "runtime state");
    let spec = root.child(cx, "spec");
    for key in [
        "targetRef",
        "autoscalerRef",
        "upstreamRef",
        "routeRef",
        "revertOnDeletion",
    ] {
        spec.drop_key(cx, key, K8S);
    }
    let mut hosts: Vec<String> = Vec::new();
    if let Some(ingress) = spec
        .get("ingressRef")
        .and_then(|i| i.get("name"))
        .and_then(Value::as_str)
    {
        if let Some(found) = sorted.ingress_hosts.get(ingress) {
            hosts.extend(found.iter().cloned());
        }
        cx.note(format!(
            "{}: dropped: {K8S}{}",
            spec.at("ingressRef"),
            if hosts.is_empty() {
                String::new()
            } else {
                " (its hosts are the service's)".to_string()
            }
        ));
    }
    let mut names = Names {
        service: vec![c.name.clone()],
        canary: vec![format!("{}-canary", c.name)],
        stable: vec![format!("{}-primary", c.name)],
        canary_args: Vec::new(),
    };
    let service = spec.child(cx, "service");
    if let Some(name) = service.text("name") {
        names.canary.push(format!("{name}-canary"));
        names.stable.push(format!("{name}-primary"));
        names.service.push(name);
    }
    for h in service.list(cx, "hosts") {
        if let Some(h) = h.as_str() {
            hosts.push(h.to_string());
        }
    }
    for key in service.map_keys() {
        if key != "name" && key != "hosts" {
            service.drop_key(cx, &key, K8S);
        }
    }
    service.finish(cx);
    spec.drop_key(
        cx,
        "skipAnalysis",
        "weir always runs the analysis; `weir promote --full` skips it for one rollout",
    );
    spec.drop_key(
        cx,
        "suspend",
        "a weir rollout starts when the config's canary changes; `weir pause` holds one",
    );
    let deadline = spec.get("progressDeadlineSeconds").and_then(seconds);
    let key = if spec.has("analysis") {
        "analysis"
    } else {
        "canaryAnalysis"
    };
    if key == "canaryAnalysis" && spec.has("canaryAnalysis") {
        cx.note(format!(
            "{}: Flagger's older name, written as analysis",
            spec.at("canaryAnalysis")
        ));
    }
    let analysis = spec.child(cx, key);
    let ctx = Ctx {
        canary: c.name.clone(),
        namespace: namespace.unwrap_or_else(|| "default".to_string()),
        names,
    };
    let (analysis_out, webhooks, notifications, affinity) =
        flagger_analysis(cx, sorted, &analysis, &ctx, out, options);
    analysis.finish(cx);
    spec.finish(cx);
    root.finish(cx);
    let mut canary = map([]);
    if let Some(d) = deadline {
        put(&mut canary, "progressDeadline", d);
    }
    put(&mut canary, "analysis", analysis_out);
    if !webhooks.is_empty() {
        put(&mut canary, "webhooks", Value::Sequence(webhooks));
    }
    hosts.retain(|h| h != "*");
    emit::service(
        cx,
        ServiceSpec {
            name: c.name.clone(),
            origin: id,
            hosts,
            canary_version: None,
            strategy: map([("canary", canary)]),
            notifications,
            session_affinity: affinity,
        },
        options,
        out,
    );
}

/// What a canary's templates are written against.
struct Ctx {
    canary: String,
    namespace: String,
    names: Names,
}

type AnalysisParts = (Value, Vec<Value>, Vec<String>, Option<Value>);

/// `analysis`: the progression/iterations, its checks, webhooks, alerts, session affinity.
fn flagger_analysis(
    cx: &mut Cx,
    sorted: &Sorted<'_>,
    a: &Node<'_>,
    ctx: &Ctx,
    out: &mut Out,
    options: &Options,
) -> AnalysisParts {
    let mut result = map([]);
    let interval = match a.text("interval") {
        Some(i) => i,
        None => {
            cx.note(format!(
                "{}: none: Flagger's default {DEFAULT_INTERVAL} written",
                a.at("interval")
            ));
            DEFAULT_INTERVAL.to_string()
        }
    };
    put(&mut result, "interval", s(interval.as_str()));
    match a.get("threshold") {
        Some(t) => put(&mut result, "threshold", t.clone()),
        None => {
            cx.note(format!(
                "{}: none: Flagger's default 1 written",
                a.at("threshold")
            ));
            put(&mut result, "threshold", Value::from(1));
        }
    }
    let iterations = a.get("iterations");
    if let Some(n) = iterations {
        put(&mut result, "iterations", n.clone());
        for key in ["match", "mirror", "mirrorWeight"] {
            if let Some(v) = a.get(key) {
                put(&mut result, key, v.clone());
            }
        }
        for key in ["stepWeight", "stepWeights", "maxWeight"] {
            a.drop_key(cx, key, "not used with iterations (Flagger ignores it too)");
        }
    } else {
        if let Some(v) = a.get("stepWeights") {
            put(&mut result, "stepWeights", v.clone());
        } else if let Some(v) = a.get("stepWeight") {
            put(&mut result, "stepWeight", v.clone());
            if a.get("maxWeight").is_none() {
                cx.note(format!(
                    "{}: none: Flagger's default 100 written",
                    a.at("maxWeight")
                ));
                put(&mut result, "maxWeight", Value::from(100));
            }
        } else {
            cx.note(format!(
                "{}: neither stepWeight, stepWeights nor iterations: weir validate asks for one",
                a.path()
            ));
        }
        if let Some(v) = a.get("maxWeight") {
            put(&mut result, "maxWeight", v.clone());
        }
        for key in ["match", "mirror", "mirrorWeight"] {
            a.drop_key(
                cx,
                key,
                "only used with iterations (A/B testing) in weir; a weighted canary gets its share of all requests",
            );
        }
    }
    a.drop_key(
        cx,
        "stepWeightPromotion",
        "weir switches all traffic to the new version at once when it promotes",
    );
    for key in ["primaryReadyThreshold", "canaryReadyThreshold"] {
        a.drop_key(cx, key, K8S);
    }
    let mut checks = Vec::new();
    for (i, item) in a.list(cx, "metrics").iter().enumerate() {
        let at = format!("{}[{i}]", a.at("metrics"));
        if let Some(check) = check(cx, sorted, item, at, ctx, out, options) {
            checks.push(check);
        }
    }
    put(&mut result, "metrics", Value::Sequence(checks));
    let mut webhooks = Vec::new();
    for (i, item) in a.list(cx, "webhooks").iter().enumerate() {
        let at = format!("{}[{i}]", a.at("webhooks"));
        if let Some(hook) = webhook(cx, item, at) {
            webhooks.push(hook);
        }
    }
    let mut notifications = Vec::new();
    for (i, item) in a.list(cx, "alerts").iter().enumerate() {
        let n = Node::new(cx, Some(item), format!("{}[{i}]", a.at("alerts")));
        n.get("name");
        n.get("severity");
        let provider = n.child(cx, "providerRef");
        if let Some(name) = provider.text("name") {
            if !out.notifier_names.contains(&name) {
                cx.note(format!(
                    "{}: AlertProvider \"{name}\" is not in the input: add it to the files imported (weir validate reports it missing)",
                    provider.path()
                ));
            }
            if !notifications.contains(&name) {
                notifications.push(name);
            }
        }
        provider.drop_key(cx, "namespace", "weir has no namespaces");
        provider.finish(cx);
        n.finish(cx);
    }
    let affinity = a.get("sessionAffinity").map(|v| {
        let mut m = map([]);
        if let Some(name) = v.get("cookieName").and_then(Value::as_str) {
            put(&mut m, "cookieName", s(name));
        }
        if let Some(age) = v.get("maxAge").and_then(seconds) {
            put(&mut m, "maxAge", age);
        }
        m
    });
    (result, webhooks, notifications, affinity)
}

/// One check of `analysis.metrics`: a builtin, or a `MetricTemplate` written as a template of
/// its own.
fn check(
    cx: &mut Cx,
    sorted: &Sorted<'_>,
    value: &Value,
    at: String,
    ctx: &Ctx,
    out: &mut Out,
    options: &Options,
) -> Option<Value> {
    let m = Node::new(cx, Some(value), at);
    let Some(name) = m.text("name") else {
        cx.note(format!("{}: a check without a name: dropped", m.path()));
        return None;
    };
    let interval = m.text("interval");
    let range = m.get("thresholdRange");
    let legacy = m.get("threshold").filter(|v| v.is_number());
    let (min, max) = (
        range.and_then(|r| r.get("min")).filter(|v| v.is_number()),
        range.and_then(|r| r.get("max")).filter(|v| v.is_number()),
    );
    let builtin = match name.as_str() {
        "request-success-rate" | "request-duration" => Some(name.clone()),
        "istio_requests_total" | "envoy_cluster_upstream_rq" => {
            cx.note(format!(
                "{}: Flagger's older name for request-success-rate: written as weir's builtin check",
                m.at("name")
            ));
            Some("request-success-rate".to_string())
        }
        "istio_request_duration_seconds_bucket" | "envoy_cluster_upstream_rq_time_bucket" => {
            cx.note(format!(
                "{}: Flagger's older name for request-duration (p99, milliseconds): written as weir's builtin check",
                m.at("name")
            ));
            Some("request-duration".to_string())
        }
        _ => None,
    };
    let template_ref = m.get("templateRef");
    let inline_query = m.text("query");
    if let Some(builtin) = builtin.filter(|_| template_ref.is_none() && inline_query.is_none()) {
        let mut range_out = map([]);
        match (min, max, legacy) {
            (None, None, Some(t)) => {
                let key = if builtin == "request-success-rate" {
                    "min"
                } else {
                    "max"
                };
                cx.note(format!(
                    "{}: written as thresholdRange.{key}",
                    m.at("threshold")
                ));
                put(&mut range_out, key, t.clone());
            }
            _ => {
                if let Some(v) = min {
                    put(&mut range_out, "min", v.clone());
                }
                if let Some(v) = max {
                    put(&mut range_out, "max", v.clone());
                }
            }
        }
        let mut c = map([("name", s(builtin.as_str())), ("thresholdRange", range_out)]);
        if let Some(i) = interval {
            put(&mut c, "interval", s(i));
        }
        m.finish(cx);
        return Some(c);
    }
    // A MetricTemplate (or an old inline query): a template for this check.
    let window = interval
        .clone()
        .unwrap_or_else(|| DEFAULT_INTERVAL.to_string());
    let mut variables: Vec<String> = Vec::new();
    let provider = if let Some(tref) = template_ref {
        let t = Node::new(cx, Some(tref), m.at("templateRef"));
        let tname = t.text("name").unwrap_or_default();
        t.drop_key(cx, "namespace", "weir has no namespaces");
        t.finish(cx);
        let Some(template) = sorted.metric_templates.get(&tname) else {
            cx.note(format!(
                "{}: MetricTemplate \"{tname}\" is not in the input: the check is dropped; import its manifest too",
                m.at("templateRef")
            ));
            m.finish(cx);
            return None;
        };
        metric_template(cx, template, ctx, &window, &mut variables, options)?
    } else if let Some(query) = inline_query {
        let query = substitute(cx, &m.at("query"), &query, ctx, &window, &mut variables);
        let q = Value::Mapping(
            [(s("query"), s(query))]
                .into_iter()
                .collect::<serde_yaml_ng::Mapping>(),
        );
        let qn = Node::new(cx, Some(&q), m.path().to_string());
        let p = argo::prometheus(cx, &qn, options, &ctx.names)?;
        (map([("prometheus", p)]), "result[0]")
    } else {
        cx.note(format!(
            "{}: \"{name}\" is neither a builtin check nor a templateRef: dropped",
            m.path()
        ));
        m.finish(cx);
        return None;
    };
    let (provider, result) = provider;
    let number = |v: &Value| super::scalar_text(v).unwrap_or_default();
    let condition = match (min.map(number), max.map(number)) {
        (Some(lo), Some(hi)) => format!("{result} >= {lo} && {result} <= {hi}"),
        (Some(lo), None) => format!("{result} >= {lo}"),
        (None, Some(hi)) => format!("{result} <= {hi}"),
        (None, None) => {
            cx.note(format!(
                "{}: no thresholdRange: the check passes whenever the query answers",
                m.path()
            ));
            "true".to_string()
        }
    };
    let template_name = out.free_template_name(&format!("{}-{name}", ctx.canary));
    let mut template = map([("name", s(template_name.as_str()))]);
    let declared: Vec<Value> = variables
        .iter()
        .map(|v| map([("name", s(v.as_str()))]))
        .collect();
    if !declared.is_empty() {
        put(&mut template, "args", Value::Sequence(declared));
    }
    put(
        &mut template,
        "metrics",
        Value::Sequence(vec![map([
            ("name", s(name.as_str())),
            ("successCondition", s(condition)),
            ("provider", provider),
        ])]),
    );
    out.template_names.insert(template_name.clone());
    out.templates.push(template);
    let mut c = map([
        ("name", s(name.as_str())),
        ("templateRef", map([("name", s(template_name))])),
    ]);
    if let Some(vars) = m.get("templateVariables") {
        put(&mut c, "templateVariables", vars.clone());
    }
    if let Some(i) = interval {
        put(&mut c, "interval", s(i));
    }
    m.get("thresholdRange");
    m.finish(cx);
    Some(c)
}

/// A `MetricTemplate`'s provider for one check: `(provider, how the condition reads the value)`.
fn metric_template(
    cx: &mut Cx,
    t: &Manifest<'_>,
    ctx: &Ctx,
    window: &str,
    variables: &mut Vec<String>,
    options: &Options,
) -> Option<(Value, &'static str)> {
    let id = t.id();
    let root = Node::new(cx, Some(t.value), format!("{id}:"));
    root.get("apiVersion");
    root.get("kind");
    root.get("metadata");
    let spec = root.child(cx, "spec");
    let provider = spec.child(cx, "provider");
    let query = spec.text("query").unwrap_or_default();
    let query = substitute(cx, &spec.at("query"), &query, ctx, window, variables);
    let kind = provider
        .text("type")
        .unwrap_or_else(|| "prometheus".to_string());
    let result = match kind.as_str() {
        "prometheus" => {
            let mut q = serde_yaml_ng::Mapping::new();
            q.insert(s("query"), s(query));
            if let Some(a) = provider.text("address") {
                q.insert(s("address"), s(a));
            }
            let q = Value::Mapping(q);
            let qn = Node::new(cx, Some(&q), spec.path().to_string());
            let mut p = argo::prometheus(cx, &qn, options, &ctx.names)?;
            qn.get("address");
            if let Some(v) = provider.get("insecureSkipVerify") {
                put(&mut p, "insecureSkipVerify", v.clone());
            }
            if let Some(secret) = provider
                .get("secretRef")
                .and_then(|r| r.get("name"))
                .and_then(Value::as_str)
            {
                let file = format!("secrets/{secret}-token");
                cx.note(format!(
                    "{}: the secret \"{secret}\" holds Prometheus credentials: written as bearerTokenFile {file} (put the token there, or use basicAuth {{username, passwordFile}} for a username and password)",
                    provider.at("secretRef")
                ));
                put(&mut p, "bearerTokenFile", s(file));
            }
            Some((map([("prometheus", p)]), "result[0]"))
        }
        "datadog" => {
            let mut d = map([("query", s(query)), ("interval", s(window))]);
            if let Some(a) = provider.text("address") {
                put(&mut d, "address", s(a));
            }
            put(&mut d, "apiKeyFile", s("secrets/datadog-api-key"));
            put(&mut d, "appKeyFile", s("secrets/datadog-app-key"));
            cx.note(format!(
                "{}: the Datadog keys (secret {}): put them in secrets/datadog-api-key and secrets/datadog-app-key next to the config",
                provider.path(),
                provider
                    .get("secretRef")
                    .and_then(|r| r.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            ));
            Some((map([("datadog", d)]), "result"))
        }
        other => {
            cx.note(format!(
                "{}: provider {other} has no weir equivalent (prometheus, datadog): the check is dropped",
                provider.at("type")
            ));
            None
        }
    };
    provider.get("secretRef");
    provider.get("address");
    provider.drop_key(cx, "region", "no weir equivalent");
    provider.finish(cx);
    spec.finish(cx);
    root.finish(cx);
    result
}

/// Flagger's template variables → weir's: `{{ target }}`, `{{ name }}`, `{{ service }}`,
/// `{{ ingress }}` → `{{service}}`; `{{ namespace }}` → the canary's namespace; `{{ interval }}` →
/// the check's interval; `{{ variables.X }}` → `{{args.X}}` (declared on the template).
fn substitute(
    cx: &mut Cx,
    at: &str,
    text: &str,
    ctx: &Ctx,
    window: &str,
    variables: &mut Vec<String>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            break;
        };
        out.push_str(&rest[..open]);
        let inner = after[..close].trim();
        match inner {
            "target" | "name" | "service" | "ingress" => out.push_str("{{service}}"),
            "namespace" => out.push_str(&ctx.namespace),
            "interval" => out.push_str(window),
            _ => {
                if let Some(var) = inner.strip_prefix("variables.") {
                    if !variables.iter().any(|v| v == var) {
                        variables.push(var.to_string());
                    }
                    out.push_str(&format!("{{{{args.{var}}}}}"));
                } else {
                    cx.note(format!(
                        "{at}: {{{{ {inner} }}}} has no weir equivalent: left as is"
                    ));
                    out.push_str(&rest[open..open + 2 + close + 2]);
                }
            }
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

/// One webhook: the same kinds as Flagger; a flagger-loadtester `hey` command becomes weir's
/// own `loadTest`.
fn webhook(cx: &mut Cx, value: &Value, at: String) -> Option<Value> {
    let w = Node::new(cx, Some(value), at);
    let name = w.text("name").unwrap_or_else(|| "webhook".to_string());
    let kind = w.text("type").unwrap_or_else(|| "rollout".to_string());
    let cmd = w
        .get("metadata")
        .and_then(|m| m.get("cmd"))
        .and_then(Value::as_str)
        .map(String::from);
    let mut hook = map([("name", s(name.as_str())), ("type", s(kind.as_str()))]);
    w.drop_key(
        cx,
        "muteAlert",
        "weir's notifications subscribe by event kind",
    );
    w.drop_key(cx, "retries", "a weir gate is asked again every interval");
    if let (Some(cmd), "rollout") = (&cmd, kind.as_str()) {
        if let Some(load) = load_test(cx, &w.at("metadata.cmd"), cmd) {
            w.get("url");
            w.get("timeout");
            w.get("metadata");
            cx.note(format!(
                "{}: the flagger-loadtester call is weir's built-in load test (loadTest): weir sends the traffic to the canary itself",
                w.path()
            ));
            put(&mut hook, "loadTest", load);
            w.finish(cx);
            return Some(hook);
        }
    }
    let Some(url) = w.text("url") else {
        cx.note(format!("{}: no url: the webhook is dropped", w.path()));
        w.finish(cx);
        return None;
    };
    if cmd.is_some() {
        cx.note(format!(
            "{}: a flagger-loadtester command weir cannot run itself: the hook still calls {url}, which must be reachable from weir",
            w.path()
        ));
    }
    put(&mut hook, "url", s(url));
    if let Some(t) = w.text("timeout") {
        put(&mut hook, "timeout", s(t));
    }
    if let Some(m) = w.get("metadata") {
        put(&mut hook, "metadata", m.clone());
    }
    w.finish(cx);
    Some(hook)
}

/// `hey -z 1m -q 10 -c 2 [-m M] [-H 'K: V'] URL` → `{rate, path, method, headers}`; `None`
/// (with a note) for other commands.
fn load_test(cx: &mut Cx, at: &str, cmd: &str) -> Option<Value> {
    let words = shell_words(cmd);
    if words.first().map(String::as_str) != Some("hey") {
        return None;
    }
    let mut qps: Option<u64> = None;
    let mut workers = HEY_DEFAULT_WORKERS;
    let mut method: Option<String> = None;
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut url: Option<String> = None;
    let mut ignored: Vec<String> = Vec::new();
    let mut i = 1;
    while i < words.len() {
        let w = words[i].as_str();
        let next = words.get(i + 1).cloned();
        match w {
            "-q" => {
                qps = next
                    .as_deref()
                    .and_then(|n| n.parse::<f64>().ok())
                    .map(|f| f.ceil() as u64);
                i += 2;
            }
            "-c" => {
                workers = next
                    .as_deref()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(HEY_DEFAULT_WORKERS);
                i += 2;
            }
            "-m" => {
                method = next.map(|m| m.to_ascii_uppercase());
                i += 2;
            }
            "-H" => {
                if let Some((k, v)) = next.as_deref().and_then(|h| h.split_once(':')) {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
                i += 2;
            }
            "-z" | "-n" | "-t" => {
                ignored.push(format!("{w} {}", next.unwrap_or_default()));
                i += 2;
            }
            "-d" | "-D" | "-T" | "-a" | "-x" | "-host" | "-o" | "-A" | "-cpus" => {
                cx.note(format!(
                    "{at}: hey {w} has no loadTest equivalent: the command is kept as a webhook instead"
                ));
                return None;
            }
            other if other.starts_with('-') => {
                ignored.push(other.to_string());
                i += 1;
            }
            other => {
                url = Some(other.to_string());
                i += 1;
            }
        }
    }
    let url = url?;
    let after_scheme = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let path = after_scheme
        .find('/')
        .map_or("/".to_string(), |p| after_scheme[p..].to_string());
    let rate = match qps {
        Some(q) => q.saturating_mul(workers).max(1),
        None => {
            cx.note(format!(
                "{at}: hey without -q sends as fast as it can; weir's load test needs a rate: {DEFAULT_RATE}/s written"
            ));
            DEFAULT_RATE
        }
    };
    let rate = if rate > MAX_RATE {
        cx.note(format!(
            "{at}: {rate} requests/s is above weir's load-test limit: {MAX_RATE} written"
        ));
        MAX_RATE
    } else {
        rate
    };
    cx.note(format!(
        "{at}: \"{cmd}\" → loadTest rate {rate}/s (-q × -c), path {path}; the target {url} is not used: the requests go through weir to the canary{}",
        if ignored.is_empty() {
            String::new()
        } else {
            format!("; {} ignored (weir loads for as long as the analysis runs)", ignored.join(", "))
        }
    ));
    let mut load = map([("rate", Value::from(rate)), ("path", s(path))]);
    if let Some(m) = method {
        put(&mut load, "method", s(m));
    }
    if !headers.is_empty() {
        let mut h = serde_yaml_ng::Mapping::new();
        for (k, v) in headers {
            h.insert(s(k), s(v));
        }
        put(&mut load, "headers", Value::Mapping(h));
    }
    Some(load)
}

/// Splits a command line like a POSIX shell would for simple cases (quotes, backslashes).
fn shell_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    current.push(n);
                }
            }
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    current.push(n);
                    in_word = true;
                }
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(current);
    }
    words
}

#[cfg(test)]
pub(super) fn shell_words_for_test(text: &str) -> Vec<String> {
    shell_words(text)
}
