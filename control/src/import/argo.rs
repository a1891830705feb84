//! Argo Rollouts: `Rollout` → a service with its strategy; `AnalysisTemplate` and
//! `ClusterAnalysisTemplate` → `analysisTemplates`.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use super::emit::{self, ServiceSpec};
use super::metrics::{self, Names, Outcome};
use super::{image_tag, map, put, s, seconds, Cx, Manifest, Node, Options, Out, Sorted};

/// Why Kubernetes-only fields are dropped.
const K8S: &str = "Kubernetes-only (pods, replicas, Services); weir routes to the upstreams itself";

/// Every Argo template, in input order, renamed where a name is taken. Stores the names used in
/// `out` for the rollouts' references.
pub(super) fn templates(cx: &mut Cx, sorted: &Sorted<'_>, out: &mut Out, options: &Options) {
    let canary_args = canary_args(sorted);
    for t in &sorted.analysis_templates {
        let names = Names {
            canary_args: canary_args.get(&t.name).cloned().unwrap_or_default(),
            ..Names::default()
        };
        template(cx, t, out, options, &names);
    }
}

/// Template name → the arguments every reference to it fills with the referring rollout's
/// canary Service (`canaryService`), and nothing else.
fn canary_args(sorted: &Sorted<'_>) -> BTreeMap<String, Vec<String>> {
    // (template, argument) → whether every value seen is a canary Service.
    let mut seen: BTreeMap<(String, String), bool> = BTreeMap::new();
    for r in &sorted.rollouts {
        let canary = r
            .value
            .get("spec")
            .and_then(|s| s.get("strategy"))
            .and_then(|s| s.get("canary"));
        let canary_service = canary
            .and_then(|c| c.get("canaryService"))
            .and_then(Value::as_str);
        let mut refs: Vec<&Value> = Vec::new();
        if let Some(a) = canary.and_then(|c| c.get("analysis")) {
            refs.push(a);
        }
        for step in canary
            .and_then(|c| c.get("steps"))
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if let Some(a) = step.get("analysis") {
                refs.push(a);
            }
        }
        for a in refs {
            let templates: Vec<&str> = a
                .get("templates")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .filter_map(|t| t.get("templateName").and_then(Value::as_str))
                .collect();
            for arg in a
                .get("args")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let Some(name) = arg.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let value = arg.get("value").and_then(Value::as_str);
                let is_canary = match (value, canary_service) {
                    (Some(v), Some(c)) => v.split('.').next() == Some(c),
                    _ => false,
                };
                for t in &templates {
                    let entry = seen
                        .entry(((*t).to_string(), name.to_string()))
                        .or_insert(true);
                    *entry &= is_canary;
                }
            }
        }
    }
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((template, arg), canary) in seen {
        if canary {
            out.entry(template).or_default().push(arg);
        }
    }
    out
}

/// Key of an Argo template for references: (cluster scoped, name).
pub(super) fn template_key(cluster: bool, name: &str) -> String {
    format!("{}/{name}", if cluster { "cluster" } else { "namespaced" })
}

fn template(cx: &mut Cx, t: &Manifest<'_>, out: &mut Out, options: &Options, names: &Names) {
    let id = t.id();
    let root = Node::new(cx, Some(t.value), format!("{id}:"));
    root.get("apiVersion");
    root.get("kind");
    root.get("metadata");
    metadata_namespace(cx, t);
    root.drop_key(cx, "status", "runtime state");
    let spec = root.child(cx, "spec");
    let name = out.free_template_name(&t.name);
    if name != t.name {
        cx.note(format!(
            "{id}: the name is taken (an AnalysisTemplate and a ClusterAnalysisTemplate?): written as analysisTemplates \"{name}\""
        ));
    }
    let mut args = Vec::new();
    for (i, item) in spec.list(cx, "args").iter().enumerate() {
        let a = Node::new(cx, Some(item), format!("{}[{i}]", spec.at("args")));
        let Some(arg_name) = a.text("name") else {
            cx.note(format!("{}: an argument without a name: dropped", a.path()));
            continue;
        };
        let mut arg = map([("name", s(arg_name.as_str()))]);
        if let Some(value) = a.text("value") {
            put(&mut arg, "value", s(value));
        }
        if let Some(from) = a.get("valueFrom") {
            value_from(cx, &a.at("valueFrom"), from, &mut arg);
        }
        a.finish(cx);
        args.push(arg);
    }
    let mut metrics_out = Vec::new();
    for (i, item) in spec.list(cx, "metrics").iter().enumerate() {
        let at = format!("{}[{i}]", spec.at("metrics"));
        if let Some(metric) = metric(cx, item, at, options, names) {
            metrics_out.push(metric);
        }
    }
    spec.drop_key(
        cx,
        "dryRun",
        "weir has dryRun per metric: set metrics[].dryRun",
    );
    spec.drop_key(
        cx,
        "measurementRetention",
        "weir keeps a fixed number of measurements",
    );
    spec.finish(cx);
    root.finish(cx);
    if metrics_out.is_empty() {
        cx.note(format!(
            "{id}: no metric could be carried over: the template is left out (references to it fail weir validate)"
        ));
        return;
    }
    let mut template = map([("name", s(name.as_str()))]);
    if !args.is_empty() {
        put(&mut template, "args", Value::Sequence(args));
    }
    put(&mut template, "metrics", Value::Sequence(metrics_out));
    out.template_names.insert(name.clone());
    out.argo_templates.insert(
        template_key(t.kind == "ClusterAnalysisTemplate", &t.name),
        name,
    );
    out.templates.push(template);
}

/// `metadata.namespace`: weir has none.
fn metadata_namespace(cx: &mut Cx, m: &Manifest<'_>) {
    if let Some(ns) = m
        .value
        .get("metadata")
        .and_then(|md| md.get("namespace"))
        .and_then(Value::as_str)
    {
        cx.note(format!(
            "{}: metadata.namespace \"{ns}\" dropped: weir has no namespaces (names must be unique in the config)",
            m.id()
        ));
    }
}

/// `args[].valueFrom`: secrets and field references have no weir equivalent.
fn value_from(cx: &mut Cx, at: &str, from: &Value, arg: &mut Value) {
    if let Some(secret) = from.get("secretKeyRef") {
        let name = secret
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("secret");
        let key = secret.get("key").and_then(Value::as_str).unwrap_or("key");
        let path = format!("secrets/{name}/{key}");
        cx.note(format!(
            "{at}: secretKeyRef {name}/{key}: weir reads no Kubernetes secrets; the value is the placeholder \"{path}\": put the secret in a file and use a provider's *File setting (bearerTokenFile, basicAuth.passwordFile, apiKeyFile) instead of an argument"
        ));
        put(arg, "value", s(path));
    } else if from.get("podTemplateHashValue").is_some() {
        cx.note(format!(
            "{at}: podTemplateHashValue has no weir equivalent: use {{{{canary.version}}}} or {{{{stable.version}}}} in the template's query instead of this argument"
        ));
    } else {
        cx.note(format!(
            "{at}: dropped: weir has no Kubernetes field references; give the argument a value"
        ));
    }
}

/// One metric of a template.
pub(super) fn metric(
    cx: &mut Cx,
    value: &Value,
    at: String,
    options: &Options,
    names: &Names,
) -> Option<Value> {
    let m = Node::new(cx, Some(value), at);
    let Some(name) = m.text("name") else {
        cx.note(format!("{}: a metric without a name: dropped", m.path()));
        return None;
    };
    let mut out = map([("name", s(name.as_str()))]);
    for key in ["interval", "initialDelay"] {
        if let Some(v) = m.text(key) {
            put(&mut out, key, s(v));
        }
    }
    for key in [
        "count",
        "failureLimit",
        "inconclusiveLimit",
        "consecutiveErrorLimit",
    ] {
        let Some(v) = m.get(key) else { continue };
        match v
            .as_u64()
            .or_else(|| v.as_str().and_then(|t| t.trim().parse().ok()))
        {
            Some(n) => put(&mut out, key, Value::from(n)),
            None => cx.note(format!(
                "{}: dropped: weir needs a number here, got {}",
                m.at(key),
                super::scalar_text(v).unwrap_or_else(|| "a non-scalar".to_string())
            )),
        }
    }
    for key in ["successCondition", "failureCondition"] {
        if let Some(text) = m.text(key) {
            let text = match metrics::condition(&text) {
                Some(cel) => {
                    cx.note(format!(
                        "{}: expr's and/or/not written as CEL's &&/||/!: {cel}",
                        m.at(key)
                    ));
                    cel
                }
                None => text,
            };
            put(&mut out, key, s(text));
        }
    }
    let provider = m.child(cx, "provider");
    let converted = provider_of(cx, &provider, options, names);
    provider.finish(cx);
    m.finish(cx);
    // An exec metric without a condition is judged on its exit status.
    put(&mut out, "provider", converted?);
    Some(out)
}

/// The provider; `None` drops the metric (noted).
fn provider_of(cx: &mut Cx, p: &Node<'_>, options: &Options, names: &Names) -> Option<Value> {
    if p.has("prometheus") {
        let q = p.child(cx, "prometheus");
        let r = prometheus(cx, &q, options, names);
        q.finish(cx);
        return r.map(|v| map([("prometheus", v)]));
    }
    if p.has("web") {
        let w = p.child(cx, "web");
        let r = web(cx, &w);
        w.finish(cx);
        return r.map(|v| map([("web", v)]));
    }
    if p.has("datadog") {
        let d = p.child(cx, "datadog");
        let r = datadog(cx, &d);
        d.finish(cx);
        return Some(map([("datadog", r)]));
    }
    if p.has("job") {
        let j = p.child(cx, "job");
        let r = job(cx, &j);
        j.finish(cx);
        return r.map(|v| map([("exec", v)]));
    }
    let kinds: Vec<String> = p
        .map_keys()
        .into_iter()
        .filter(|k| p.get(k).is_some())
        .collect();
    cx.note(format!(
        "{}: provider {} has no weir equivalent (weir has builtin, prometheus, web, datadog, exec): the metric is dropped",
        p.path(),
        if kinds.is_empty() {
            "(none)".to_string()
        } else {
            kinds.join(", ")
        }
    ));
    None
}

impl Node<'_> {
    /// The keys of this mapping, as text.
    pub(crate) fn map_keys(&self) -> Vec<String> {
        self.map
            .map(|m| m.keys().filter_map(super::scalar_text).collect())
            .unwrap_or_default()
    }
}

/// `provider.prometheus`.
pub(super) fn prometheus(
    cx: &mut Cx,
    q: &Node<'_>,
    options: &Options,
    names: &Names,
) -> Option<Value> {
    let address = match (&options.prometheus, q.text("address")) {
        (Some(given), written) => {
            if let Some(written) = written {
                cx.note(format!(
                    "{}: \"{written}\" replaced by --prometheus {given}",
                    q.at("address")
                ));
            }
            given.clone()
        }
        (None, Some(written)) => written,
        (None, None) => {
            cx.note(format!(
                "{}: no address: http://127.0.0.1:9090 written (use --prometheus URL)",
                q.at("address")
            ));
            "http://127.0.0.1:9090".to_string()
        }
    };
    let Some(query) = q.text("query") else {
        cx.note(format!("{}: no query: the metric is dropped", q.path()));
        return None;
    };
    let query = convert_query(cx, &q.at("query"), &query, names);
    let mut out = map([("address", s(address)), ("query", s(query))]);
    if let Some(t) = q.get("timeout") {
        if let Some(d) = seconds(t) {
            put(&mut out, "timeout", d);
        }
    }
    if let Some(headers) = q.get("headers") {
        put(&mut out, "headers", headers.clone());
    }
    if let Some(insecure) = q.get("insecure") {
        put(&mut out, "insecureSkipVerify", insecure.clone());
    }
    q.drop_key(
        cx,
        "authentication",
        "weir's Prometheus provider takes bearerTokenFile, basicAuth or headers (no SigV4/OAuth2)",
    );
    Some(out)
}

/// Rewrites a query to weir's metric names and notes what happened.
pub(super) fn convert_query(cx: &mut Cx, at: &str, query: &str, names: &Names) -> String {
    let rewrite = metrics::rewrite_query(query, names);
    match &rewrite.outcome {
        Outcome::Weir { all_versions: true } => cx.note(format!(
            "{at}: selects every version (stable and canary together): add version=\"{{{{canary.version}}}}\" to judge the canary alone"
        )),
        Outcome::Weir { .. } if rewrite.query != query => cx.note(format!(
            "{at}: pinned to the canary: version=\"{{{{canary.version}}}}\" added where it selects service=\"{{{{args.{}}}}}\", which every rollout sets to its canary Service",
            names.canary_args.join("|args.")
        )),
        Outcome::Weir { .. } => {}
        Outcome::Rewritten { from } => cx.note(format!(
            "{at}: {} rewritten to weir's metric names{}",
            from.join(", "),
            if metrics::selects_all_versions(&rewrite.query) {
                "; it selects every version (stable and canary together): add version=\"{{canary.version}}\" to judge the canary alone"
            } else {
                ""
            }
        )),
        Outcome::LeftAsIs(reason) => {
            cx.note(format!("{at}: query left as is: {reason}"));
        }
    }
    rewrite.query
}

/// `provider.web`.
fn web(cx: &mut Cx, w: &Node<'_>) -> Option<Value> {
    let Some(url) = w.text("url") else {
        cx.note(format!(
            "{}: no url (urlFrom is not supported): the metric is dropped",
            w.path()
        ));
        w.get("urlFrom");
        return None;
    };
    let mut out = map([("url", s(url))]);
    if let Some(method) = w.text("method") {
        put(&mut out, "method", s(method));
    }
    if let Some(headers) = w.get("headers") {
        put(&mut out, "headers", headers.clone());
    }
    if let Some(body) = w.text("body") {
        put(&mut out, "body", s(body));
    } else if let Some(json) = w.get("jsonBody") {
        match serde_json::to_string(json) {
            Ok(text) => put(&mut out, "body", s(text)),
            Err(_) => cx.note(format!("{}: dropped: not JSON", w.at("jsonBody"))),
        }
    }
    if let Some(t) = w.get("timeoutSeconds") {
        put(&mut out, "timeoutSeconds", t.clone());
    }
    if let Some(p) = w.text("jsonPath") {
        put(&mut out, "jsonPath", s(p));
    }
    w.drop_key(
        cx,
        "insecure",
        "weir always verifies certificates of web metrics",
    );
    Some(out)
}

/// `provider.datadog`: same keys; the keys come from files instead of a Kubernetes secret.
fn datadog(cx: &mut Cx, d: &Node<'_>) -> Value {
    let mut out = map([]);
    for key in ["apiVersion", "interval", "query", "formula", "aggregator"] {
        if let Some(v) = d.text(key) {
            put(&mut out, key, s(v));
        }
    }
    if let Some(q) = d.get("queries") {
        put(&mut out, "queries", q.clone());
    }
    put(&mut out, "apiKeyFile", s("secrets/datadog-api-key"));
    put(&mut out, "appKeyFile", s("secrets/datadog-app-key"));
    cx.note(format!(
        "{}: Argo reads the Datadog keys from the secret \"datadog\": put them in secrets/datadog-api-key and secrets/datadog-app-key next to the config (apiKeyFile, appKeyFile), and set address if not the public API",
        d.path()
    ));
    out
}

/// `provider.job` → `exec` with the first container's command, when it has one.
fn job(cx: &mut Cx, j: &Node<'_>) -> Option<Value> {
    let container = j
        .get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("spec"))
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_sequence)
        .and_then(|c| c.first());
    j.get("metadata");
    let words = |key: &str| -> Vec<String> {
        container
            .and_then(|c| c.get(key))
            .and_then(Value::as_sequence)
            .map(|items| items.iter().filter_map(super::scalar_text).collect())
            .unwrap_or_default()
    };
    let mut argv = words("command");
    argv.extend(words("args"));
    let image = container
        .and_then(|c| c.get("image"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    if argv.is_empty() {
        cx.note(format!(
            "{}: a Kubernetes Job (image {image}) with no command: the metric is dropped; write an exec metric that runs the same check on this host",
            j.path()
        ));
        return None;
    }
    cx.note(format!(
        "{}: the Job's command runs as an exec metric on weir's host (the image {image} is not used): check the program is installed there; exit 0 passes",
        j.path()
    ));
    let command = argv.remove(0);
    let mut out = map([("command", s(command))]);
    if !argv.is_empty() {
        put(
            &mut out,
            "args",
            Value::Sequence(argv.into_iter().map(Value::String).collect()),
        );
    }
    Some(out)
}

/// Kubernetes names that stand for the rollout's service, canary and stable.
struct RolloutNames {
    names: Names,
    /// The blue-green preview Service: URLs to it become `{{preview.url}}`.
    preview: Option<String>,
}

/// One `Rollout`.
pub(super) fn rollout(
    cx: &mut Cx,
    sorted: &Sorted<'_>,
    r: &Manifest<'_>,
    out: &mut Out,
    options: &Options,
) {
    let id = r.id();
    let root = Node::new(cx, Some(r.value), format!("{id}:"));
    root.get("apiVersion");
    root.get("kind");
    root.get("metadata");
    metadata_namespace(cx, r);
    root.drop_key(cx, "status", "runtime state");
    let spec = root.child(cx, "spec");
    for key in [
        "replicas",
        "selector",
        "workloadRef",
        "minReadySeconds",
        "revisionHistoryLimit",
        "restartAt",
        "rollbackWindow",
        "analysis",
    ] {
        spec.drop_key(cx, key, K8S);
    }
    let canary_version = image_tag(spec.get("template"));
    if spec.has("template") || spec.map_keys().iter().any(|k| k == "template") {
        cx.note(format!(
            "{}: dropped: {K8S} (its image tag, if any, is the canary version)",
            spec.at("template")
        ));
    }
    spec.drop_key(
        cx,
        "paused",
        "a weir rollout starts when the config's canary changes; `weir pause` holds one",
    );
    spec.drop_key(
        cx,
        "progressDeadlineAbort",
        "weir aborts a rollout that passes progressDeadline",
    );
    let deadline = spec.get("progressDeadlineSeconds").and_then(seconds);
    let strategy = spec.child(cx, "strategy");
    let mut hosts = Vec::new();
    let strategy_value = if strategy.has("canary") {
        let c = strategy.child(cx, "canary");
        let v = canary(cx, sorted, &c, r, out, deadline, &mut hosts);
        c.finish(cx);
        Some(v)
    } else if strategy.has("blueGreen") {
        let b = strategy.child(cx, "blueGreen");
        let v = blue_green(cx, &b, r, out, deadline);
        b.finish(cx);
        Some(v)
    } else {
        None
    };
    strategy.finish(cx);
    spec.finish(cx);
    root.finish(cx);
    let Some(strategy_value) = strategy_value else {
        cx.note(format!(
            "{id}: spec.strategy has neither canary nor blueGreen: the Rollout is left out"
        ));
        return;
    };
    let notifications = subscriptions(cx, r, out);
    emit::service(
        cx,
        ServiceSpec {
            name: r.name.clone(),
            origin: id,
            hosts,
            canary_version,
            strategy: strategy_value,
            notifications,
            session_affinity: None,
        },
        options,
        out,
    );
}

/// `strategy.canary`.
fn canary(
    cx: &mut Cx,
    sorted: &Sorted<'_>,
    c: &Node<'_>,
    r: &Manifest<'_>,
    out: &mut Out,
    deadline: Option<Value>,
    hosts: &mut Vec<String>,
) -> Value {
    let mut names = RolloutNames {
        names: Names {
            service: vec![r.name.clone()],
            ..Names::default()
        },
        preview: None,
    };
    if let Some(n) = c.text("canaryService") {
        names.names.canary.push(n);
    }
    if let Some(n) = c.text("stableService") {
        names.names.service.push(n);
    }
    c.drop_key(cx, "canaryService", K8S);
    c.drop_key(cx, "stableService", K8S);
    if let Some(tr) = c.get("trafficRouting") {
        let mut ingresses: Vec<String> = Vec::new();
        if let Some(nginx) = tr.get("nginx") {
            if let Some(i) = nginx.get("stableIngress").and_then(Value::as_str) {
                ingresses.push(i.to_string());
            }
            if let Some(list) = nginx.get("stableIngresses").and_then(Value::as_sequence) {
                ingresses.extend(list.iter().filter_map(Value::as_str).map(String::from));
            }
        }
        for ingress in &ingresses {
            names.names.service.push(ingress.clone());
            if let Some(found) = sorted.ingress_hosts.get(ingress) {
                hosts.extend(found.iter().cloned());
            }
        }
        cx.note(format!(
            "{}: dropped: weir splits traffic itself{}",
            c.at("trafficRouting"),
            if hosts.is_empty() {
                String::new()
            } else {
                format!(" (hosts taken from the Ingress: {})", hosts.join(", "))
            }
        ));
    }
    c.get("trafficRouting");
    for key in [
        "maxSurge",
        "maxUnavailable",
        "scaleDownDelaySeconds",
        "scaleDownDelayRevisionLimit",
        "abortScaleDownDelaySeconds",
        "antiAffinity",
        "canaryMetadata",
        "stableMetadata",
        "dynamicStableScale",
        "pingPong",
        "minPodsPerReplicaSet",
        "replicaProgressThreshold",
    ] {
        c.drop_key(cx, key, K8S);
    }
    let mut out_canary = map([]);
    if let Some(d) = deadline {
        put(&mut out_canary, "progressDeadline", d);
    }
    let mut steps = Vec::new();
    for (i, item) in c.list(cx, "steps").iter().enumerate() {
        let at = format!("{}[{i}]", c.at("steps"));
        if let Some(step) = step(cx, item, at, out, &names) {
            steps.push(step);
        }
    }
    if !steps.is_empty() {
        put(&mut out_canary, "steps", Value::Sequence(steps));
    }
    if c.has("analysis") {
        let a = c.child(cx, "analysis");
        let mut bg = analysis_ref(cx, &a, out, &names);
        if let Some(n) = a.get("startingStep") {
            put(&mut bg, "startingStep", n.clone());
        }
        a.drop_key(cx, "dryRun", "set dryRun on the template's metrics");
        a.drop_key(
            cx,
            "measurementRetention",
            "weir keeps a fixed number of measurements",
        );
        a.finish(cx);
        put(&mut out_canary, "analysis", bg);
    }
    if !c.has("steps") {
        cx.note(format!(
            "{}: no steps: Argo promotes at once; weir needs at least one step (weir validate says so): add e.g. - setWeight: 100",
            c.path()
        ));
    }
    map([("canary", out_canary)])
}

/// One step.
fn step(
    cx: &mut Cx,
    value: &Value,
    at: String,
    out: &mut Out,
    names: &RolloutNames,
) -> Option<Value> {
    let st = Node::new(cx, Some(value), at);
    let result = if let Some(w) = st.get("setWeight") {
        Some(map([("setWeight", w.clone())]))
    } else if st.has("pause") || st.map_keys().iter().any(|k| k == "pause") {
        let p = st.child(cx, "pause");
        let mut pause = map([]);
        if let Some(d) = p.get("duration") {
            put(&mut pause, "duration", d.clone());
        }
        p.finish(cx);
        Some(map([("pause", pause)]))
    } else if st.has("analysis") {
        let a = st.child(cx, "analysis");
        let r = analysis_ref(cx, &a, out, names);
        a.drop_key(cx, "dryRun", "set dryRun on the template's metrics");
        a.drop_key(
            cx,
            "measurementRetention",
            "weir keeps a fixed number of measurements",
        );
        a.finish(cx);
        Some(map([("analysis", r)]))
    } else if let Some(v) = st.get("setHeaderRoute") {
        Some(map([("setHeaderRoute", v.clone())]))
    } else {
        st.get("setMirrorRoute")
            .map(|v| map([("setMirrorRoute", v.clone())]))
    };
    st.drop_key(
        cx,
        "setCanaryScale",
        "weir has no replicas: the step is left out",
    );
    st.drop_key(
        cx,
        "experiment",
        "weir has no experiments (extra ReplicaSets): the step is left out; an analysis step can judge the canary",
    );
    st.drop_key(cx, "plugin", "step plugins have no weir equivalent");
    st.finish(cx);
    result
}

/// `analysis`/`prePromotionAnalysis`-style reference: `{templates, args}`.
fn analysis_ref(cx: &mut Cx, a: &Node<'_>, out: &Out, names: &RolloutNames) -> Value {
    let mut templates = Vec::new();
    for (i, item) in a.list(cx, "templates").iter().enumerate() {
        let t = Node::new(cx, Some(item), format!("{}[{i}]", a.at("templates")));
        let cluster = t
            .get("clusterScope")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if let Some(name) = t.text("templateName") {
            let key = template_key(cluster, &name);
            let written = match out.argo_templates.get(&key) {
                Some(w) => w.clone(),
                None => {
                    cx.note(format!(
                        "{}: template \"{name}\" is not in the input: add its {}AnalysisTemplate to the files imported (weir validate reports it missing)",
                        t.path(),
                        if cluster { "Cluster" } else { "" }
                    ));
                    name
                }
            };
            templates.push(map([("templateName", s(written))]));
        }
        t.finish(cx);
    }
    let mut r = map([("templates", Value::Sequence(templates))]);
    let mut args = Vec::new();
    for (i, item) in a.list(cx, "args").iter().enumerate() {
        let n = Node::new(cx, Some(item), format!("{}[{i}]", a.at("args")));
        let Some(name) = n.text("name") else {
            n.finish(cx);
            continue;
        };
        let mut arg = map([("name", s(name.as_str()))]);
        if let Some(value) = n.text("value") {
            put(
                &mut arg,
                "value",
                s(arg_value(cx, &n.at("value"), &value, names)),
            );
        }
        if let Some(from) = n.get("valueFrom") {
            value_from(cx, &n.at("valueFrom"), from, &mut arg);
        }
        n.finish(cx);
        if arg.get("value").is_some() {
            args.push(arg);
        }
    }
    if !args.is_empty() {
        put(&mut r, "args", Value::Sequence(args));
    }
    r
}

/// An argument's value: a Kubernetes Service of the rollout → weir's service name; a URL of the
/// blue-green preview Service → `{{preview.url}}`.
fn arg_value(cx: &mut Cx, at: &str, value: &str, names: &RolloutNames) -> String {
    let service = names.names.service.first().cloned().unwrap_or_default();
    let bare = |v: &str| v.split('.').next().unwrap_or(v).to_string();
    if let Some(preview) = &names.preview {
        for scheme in ["http://", "https://"] {
            if let Some(rest) = value.strip_prefix(scheme) {
                let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let host_name = host.split(':').next().unwrap_or(host);
                if bare(host_name) == *preview {
                    let new = format!("{{{{preview.url}}}}{path}");
                    cx.note(format!(
                        "{at}: \"{value}\" is the preview Service: written as \"{new}\" (weir's preview address)"
                    ));
                    return new;
                }
            }
        }
    }
    let b = bare(value);
    if names.names.canary.contains(&b) {
        cx.note(format!(
            "{at}: \"{value}\" is the canary Service: written as the weir service \"{service}\"; weir's metrics tell the canary by version=\"{{{{canary.version}}}}\", which the template's selectors on it get (see its notes)"
        ));
        return service;
    }
    if names.names.service.contains(&b) && b != value {
        cx.note(format!(
            "{at}: \"{value}\" is the rollout's Service: written as the weir service \"{service}\""
        ));
        return service;
    }
    if names.names.service.contains(&b) && b != service {
        cx.note(format!(
            "{at}: \"{value}\" is the rollout's Service or Ingress: written as the weir service \"{service}\""
        ));
        return service;
    }
    value.to_string()
}

/// `strategy.blueGreen`.
fn blue_green(
    cx: &mut Cx,
    b: &Node<'_>,
    r: &Manifest<'_>,
    out: &mut Out,
    deadline: Option<Value>,
) -> Value {
    let mut names = RolloutNames {
        names: Names {
            service: vec![r.name.clone()],
            ..Names::default()
        },
        preview: b.text("previewService"),
    };
    if let Some(active) = b.text("activeService") {
        names.names.service.push(active);
    }
    b.drop_key(cx, "activeService", K8S);
    if let Some(preview) = b.text("previewService") {
        cx.note(format!(
            "{}: \"{preview}\" dropped: weir serves the preview itself: preview.headers is x-weir-preview: true; add hosts or a listener as you need",
            b.at("previewService")
        ));
    } else {
        cx.note(format!(
            "{}: weir needs a preview: preview.headers is x-weir-preview: true; add hosts or a listener as you need",
            b.path()
        ));
    }
    for key in [
        "previewReplicaCount",
        "scaleDownDelayRevisionLimit",
        "abortScaleDownDelaySeconds",
        "antiAffinity",
        "previewMetadata",
        "activeMetadata",
        "maxUnavailable",
    ] {
        b.drop_key(cx, key, K8S);
    }
    let mut bg = map([(
        "preview",
        map([(
            "headers",
            Value::Sequence(vec![map([
                ("headerName", s("x-weir-preview")),
                ("headerValue", map([("exact", s("true"))])),
            ])]),
        )]),
    )]);
    if let Some(v) = b.get("autoPromotionEnabled") {
        put(&mut bg, "autoPromotionEnabled", v.clone());
    }
    if let Some(v) = b.get("autoPromotionSeconds") {
        put(&mut bg, "autoPromotionSeconds", v.clone());
    }
    for key in ["prePromotionAnalysis", "postPromotionAnalysis"] {
        if b.has(key) {
            let a = b.child(cx, key);
            let r = analysis_ref(cx, &a, out, &names);
            a.drop_key(cx, "dryRun", "set dryRun on the template's metrics");
            a.drop_key(
                cx,
                "measurementRetention",
                "weir keeps a fixed number of measurements",
            );
            a.finish(cx);
            put(&mut bg, key, r);
        }
    }
    if let Some(v) = b.get("scaleDownDelaySeconds") {
        cx.note(format!(
            "{}: kept: weir keeps the old version routable this long after the switch (for undo and post-promotion failures)",
            b.at("scaleDownDelaySeconds")
        ));
        put(&mut bg, "scaleDownDelaySeconds", v.clone());
    }
    if let Some(d) = deadline {
        put(&mut bg, "progressDeadline", d);
    }
    map([("blueGreen", bg)])
}

/// Argo template references by (scope, name) → the name written.
pub(super) type ArgoTemplates = BTreeMap<String, String>;

/// Argo notification triggers → weir event kinds (the ones with an exact counterpart).
fn trigger_event(trigger: &str) -> Option<&'static str> {
    Some(match trigger {
        "on-rollout-completed" => "Promoted",
        "on-rollout-step-completed" => "StepCompleted",
        "on-rollout-aborted" => "Aborted",
        "on-rollout-paused" => "Paused",
        "on-analysis-run-failed" => "AnalysisFailed",
        _ => return None,
    })
}

/// `metadata.annotations` `notifications.argoproj.io/subscribe.TRIGGER.SERVICE: RECIPIENTS` →
/// the notifier names the service uses (notifiers `argo-SERVICE`, built by [`notifiers`]).
fn subscriptions(cx: &mut Cx, r: &Manifest<'_>, out: &mut Out) -> Vec<String> {
    let id = r.id();
    let Some(annotations) = r
        .value
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_mapping)
    else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for (key, recipients) in annotations {
        let Some(key) = key.as_str() else { continue };
        let at = format!("{id}: metadata.annotations[{key}]");
        if key == "notifications.argoproj.io/subscriptions" {
            cx.note(format!(
                "{at}: dropped: write the subscriptions as notifications.argoproj.io/subscribe.TRIGGER.SERVICE annotations to import them, or as weir notifications"
            ));
            continue;
        }
        let Some(rest) = key.strip_prefix("notifications.argoproj.io/subscribe.") else {
            continue;
        };
        let Some((trigger, service)) = rest.rsplit_once('.') else {
            cx.note(format!("{at}: dropped: not TRIGGER.SERVICE"));
            continue;
        };
        let kind = match service {
            "slack" => "slack",
            "teams" => "msteams",
            "webhook" => "generic",
            other => {
                cx.note(format!(
                    "{at}: dropped: weir notifies slack, msteams, discord or a generic webhook, not {other}"
                ));
                continue;
            }
        };
        let Some(event) = trigger_event(trigger) else {
            cx.note(format!(
                "{at}: dropped: trigger {trigger} has no weir event (weir notifies on Promoted, Aborted, Paused, AnalysisFailed, StepCompleted)"
            ));
            continue;
        };
        let name = format!("argo-{service}");
        if let Some(r) = super::scalar_text(recipients) {
            cx.note(format!(
                "{at}: recipients \"{r}\" dropped: the webhook URL in notifier {name}'s urlFile decides where messages go"
            ));
        }
        let entry = out
            .argo_notifiers
            .entry(name.clone())
            .or_insert_with(|| (kind.to_string(), Vec::new()));
        if !entry.1.iter().any(|e| e == event) {
            entry.1.push(event.to_string());
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The notifiers Argo's annotations asked for.
pub(super) fn notifiers(cx: &mut Cx, out: &mut Out) {
    for (name, (kind, events)) in std::mem::take(&mut out.argo_notifiers) {
        let file = format!("secrets/{name}-url");
        cx.note(format!(
            "notifications: {name} ({kind}) from Argo's notification annotations: its webhook URL (Argo keeps service settings in argo-rollouts-notification-configmap) goes in {file}"
        ));
        out.notifier_names.insert(name.clone());
        out.notifications.push(map([
            ("name", s(name)),
            ("kind", s(kind)),
            ("urlFile", s(file)),
            (
                "on",
                Value::Sequence(events.into_iter().map(Value::String).collect()),
            ),
        ]));
    }
}
