//! `analysisTemplates[]`, their providers, and checks of references to them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::walk::{self, all, each, Cx, Obj};
use crate::model::{
    AnalysisTemplate, Arm, BasicAuth, BuiltinMetric, BuiltinProvider, ExecProvider,
    LatencyQuantile, Metric, PrometheusProvider, Provider, Traffic, WebProvider,
};

/// What references need to know about a template.
#[derive(Debug)]
pub(crate) struct KnownTemplate {
    /// Declared arguments and their defaults; `None` when `args` itself was invalid (skip argument checks).
    pub(crate) args: Option<BTreeMap<String, Option<String>>>,
}

/// Templates by name, including ones with problems elsewhere (so references to them are not reported too).
pub(crate) type Known = BTreeMap<String, KnownTemplate>;

/// The builtin metric names, for error messages.
const BUILTIN_METRICS: &[&str] = &[
    "success-rate",
    "error-rate",
    "request-rate",
    "latency-p50",
    "latency-p90",
    "latency-p95",
    "latency-p99",
];

/// `analysisTemplates`: a list; fills `known` with every template that has a valid name.
pub(crate) fn templates(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    known: &mut Known,
    base_dir: &Path,
) -> Option<Vec<AnalysisTemplate>> {
    let items = walk::list(cx, value, at)?;
    let mut first_index: BTreeMap<String, usize> = BTreeMap::new();
    let parsed = each(cx, items, at, |cx, item, at, i| {
        let o = Obj::open(cx, item, at, &["name", "args", "metrics"])?;
        let name = o.req(cx, "name", walk::nonempty_string);
        let args = o.or(cx, "args", BTreeMap::new(), declared_args);
        if let Some(name) = &name {
            if let Some(first) = first_index.get(name) {
                cx.err(
                    &o.at("name"),
                    format!("duplicate analysis template name \"{name}\" (also analysisTemplates[{first}])"),
                );
            } else {
                first_index.insert(name.clone(), i);
                known.insert(name.clone(), KnownTemplate { args: args.clone() });
            }
        }
        let metrics = o.req(cx, "metrics", |cx, v, at| {
            metrics(cx, v, at, args.as_ref(), base_dir)
        });
        Some(AnalysisTemplate {
            name: name?,
            args: args?,
            metrics: metrics?,
        })
    });
    all(parsed)
}

/// A template's `args: [{name, value?}]`.
fn declared_args(cx: &mut Cx, value: &Value, at: &str) -> Option<BTreeMap<String, Option<String>>> {
    let items = walk::list(cx, value, at)?;
    let mut args = BTreeMap::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let at = walk::index_path(at, i);
        let Some(o) = Obj::open(cx, item, &at, &["name", "value"]) else {
            ok = false;
            continue;
        };
        let name = o.req(cx, "name", walk::nonempty_string);
        let default = o.opt(cx, "value", walk::text);
        match (name, default) {
            (Some(name), Some(default)) => {
                if let std::collections::btree_map::Entry::Vacant(entry) = args.entry(name.clone())
                {
                    entry.insert(default);
                } else {
                    cx.err(&o.at("name"), format!("duplicate argument \"{name}\""));
                    ok = false;
                }
            }
            _ => ok = false,
        }
    }
    ok.then_some(args)
}

fn metrics(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    args: Option<&BTreeMap<String, Option<String>>>,
    base_dir: &Path,
) -> Option<Vec<Metric>> {
    let items = walk::nonempty_list(cx, value, at)?;
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let parsed = each(cx, items, at, |cx, item, at, i| {
        let metric = metric(cx, item, at, args, base_dir);
        if let Some(metric) = &metric {
            if let Some(first) = names.get(&metric.name) {
                cx.err(
                    &walk::field_path(at, "name"),
                    format!(
                        "duplicate metric name \"{}\" (also metrics[{first}])",
                        metric.name
                    ),
                );
                return None;
            }
            names.insert(metric.name.clone(), i);
        }
        metric
    });
    all(parsed)
}

fn metric(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    args: Option<&BTreeMap<String, Option<String>>>,
    base_dir: &Path,
) -> Option<Metric> {
    let o = Obj::open(
        cx,
        value,
        at,
        &[
            "name",
            "interval",
            "count",
            "initialDelay",
            "successCondition",
            "failureCondition",
            "failureLimit",
            "inconclusiveLimit",
            "consecutiveErrorLimit",
            "dryRun",
            "provider",
        ],
    )?;
    let name = o.req(cx, "name", walk::nonempty_string);
    let interval = o.or(
        cx,
        "interval",
        Duration::from_secs(10),
        walk::positive_duration,
    );
    let count = o.opt(cx, "count", walk::positive_u32);
    let initial_delay = o.or(cx, "initialDelay", Duration::ZERO, walk::duration);
    let success_condition = o.opt(cx, "successCondition", walk::nonempty_string);
    let failure_condition = o.opt(cx, "failureCondition", walk::nonempty_string);
    // An exec metric is judged on its exit status when it has no condition.
    let exec = o
        .get("provider")
        .and_then(|p| p.as_mapping())
        .is_some_and(|p| p.contains_key("exec"));
    if o.get("successCondition").is_none() && o.get("failureCondition").is_none() && !exec {
        cx.err(at, "needs successCondition or failureCondition");
    }
    let failure_limit = o.or(cx, "failureLimit", 0, walk::uint32);
    let inconclusive_limit = o.or(cx, "inconclusiveLimit", 0, walk::uint32);
    let consecutive_error_limit = o.or(cx, "consecutiveErrorLimit", 4, walk::uint32);
    let dry_run = o.or(cx, "dryRun", false, walk::boolean);
    let provider = o.req(cx, "provider", |cx, v, at| {
        provider(cx, v, at, args, base_dir)
    });
    for (key, condition) in [
        ("successCondition", &success_condition),
        ("failureCondition", &failure_condition),
    ] {
        if let Some(Some(text)) = condition {
            check_placeholders(cx, &o.at(key), text, args);
        }
    }
    Some(Metric {
        name: name?,
        interval: interval?,
        count: count?,
        initial_delay: initial_delay?,
        success_condition: success_condition?,
        failure_condition: failure_condition?,
        failure_limit: failure_limit?,
        inconclusive_limit: inconclusive_limit?,
        consecutive_error_limit: consecutive_error_limit?,
        dry_run: dry_run?,
        provider: provider?,
    })
}

fn provider(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    args: Option<&BTreeMap<String, Option<String>>>,
    base_dir: &Path,
) -> Option<Provider> {
    const KINDS: [&str; 5] = ["builtin", "prometheus", "web", "exec", "datadog"];
    let o = Obj::open(cx, value, at, &KINDS)?;
    let present: Vec<&str> = KINDS.into_iter().filter(|k| o.has(k)).collect();
    match present.as_slice() {
        [] => {
            cx.err(
                at,
                "needs exactly one of builtin, prometheus, web, exec or datadog",
            );
            None
        }
        [kind] => {
            let at = o.at(kind);
            let value = o.raw(kind).unwrap_or(&Value::Null);
            match *kind {
                "builtin" => builtin(cx, value, &at).map(Provider::Builtin),
                "prometheus" => {
                    prometheus(cx, value, &at, args, base_dir).map(Provider::Prometheus)
                }
                "exec" => exec(cx, value, &at, args).map(Provider::Exec),
                "datadog" => {
                    super::datadog::datadog(cx, value, &at, args, base_dir).map(Provider::Datadog)
                }
                _ => web(cx, value, &at, args).map(Provider::Web),
            }
        }
        several => {
            cx.err(
                at,
                format!(
                    "needs exactly one of builtin, prometheus, web, exec or datadog, got {}",
                    several.join(" and ")
                ),
            );
            None
        }
    }
}

fn builtin(cx: &mut Cx, value: &Value, at: &str) -> Option<BuiltinProvider> {
    let o = Obj::open(
        cx,
        value,
        at,
        &["metric", "window", "version", "minRequests", "traffic"],
    )?;
    let metric = o.req(cx, "metric", |cx, v, at| {
        let name = walk::string(cx, v, at)?;
        let metric = match name.as_str() {
            "success-rate" => BuiltinMetric::SuccessRate,
            "error-rate" => BuiltinMetric::ErrorRate,
            "request-rate" => BuiltinMetric::RequestRate,
            "latency-p50" => BuiltinMetric::LatencyQuantile(LatencyQuantile::P50),
            "latency-p90" => BuiltinMetric::LatencyQuantile(LatencyQuantile::P90),
            "latency-p95" => BuiltinMetric::LatencyQuantile(LatencyQuantile::P95),
            "latency-p99" => BuiltinMetric::LatencyQuantile(LatencyQuantile::P99),
            _ => {
                cx.err(
                    at,
                    format!(
                        "unknown builtin metric \"{name}\", expected one of: {}",
                        BUILTIN_METRICS.join(", ")
                    ),
                );
                return None;
            }
        };
        Some(metric)
    });
    let window = o.or(
        cx,
        "window",
        Duration::from_secs(30),
        walk::positive_duration,
    );
    let arm = o.or(
        cx,
        "version",
        Arm::Canary,
        |cx, v, at| match walk::string(cx, v, at)?.as_str() {
            "canary" => Some(Arm::Canary),
            "stable" => Some(Arm::Stable),
            other => {
                cx.err(
                    at,
                    format!("expected \"canary\" or \"stable\", got \"{other}\""),
                );
                None
            }
        },
    );
    let min_requests = o.or(cx, "minRequests", 20, walk::uint);
    let traffic = o.or(
        cx,
        "traffic",
        Traffic::Primary,
        |cx, v, at| match walk::string(cx, v, at)?.as_str() {
            "primary" => Some(Traffic::Primary),
            "mirror" => Some(Traffic::Mirror),
            other => {
                cx.err(
                    at,
                    format!("expected \"primary\" or \"mirror\", got \"{other}\""),
                );
                None
            }
        },
    );
    Some(BuiltinProvider {
        metric: metric?,
        window: window?,
        arm: arm?,
        min_requests: min_requests?,
        traffic: traffic?,
    })
}

fn prometheus(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    args: Option<&BTreeMap<String, Option<String>>>,
    base_dir: &Path,
) -> Option<PrometheusProvider> {
    let o = Obj::open(
        cx,
        value,
        at,
        &[
            "address",
            "query",
            "timeout",
            "headers",
            "bearerTokenFile",
            "basicAuth",
            "insecureSkipVerify",
        ],
    )?;
    let address = o.req(cx, "address", |cx, v, at| http_url(cx, v, at, args));
    let query = o.req(cx, "query", |cx, v, at| {
        let query = walk::nonempty_string(cx, v, at)?;
        check_placeholders(cx, at, &query, args);
        Some(query)
    });
    let timeout = o.or(
        cx,
        "timeout",
        Duration::from_secs(10),
        walk::positive_duration,
    );
    let headers = o.or(cx, "headers", Vec::new(), |cx, v, at| {
        request_headers(cx, v, at, args)
    });
    let bearer_token_file = o.opt(cx, "bearerTokenFile", |cx, v, at| {
        walk::existing_file(cx, v, at, base_dir)
    });
    let basic_auth = o.opt(cx, "basicAuth", |cx, v, at| {
        let o = Obj::open(cx, v, at, &["username", "passwordFile"])?;
        let username = o.req(cx, "username", |cx, v, at| {
            let name = walk::nonempty_string(cx, v, at)?;
            if name.contains(':') || name.chars().any(char::is_control) {
                cx.err(at, "must not contain ':' or control characters");
                return None;
            }
            Some(name)
        });
        let password_file = o.req(cx, "passwordFile", |cx, v, at| {
            walk::existing_file(cx, v, at, base_dir)
        });
        Some(BasicAuth {
            username: username?,
            password_file: password_file?,
        })
    });
    if let (Some(Some(_)), Some(Some(_))) = (&bearer_token_file, &basic_auth) {
        cx.err(
            &o.at("basicAuth"),
            "give one of bearerTokenFile or basicAuth, not both",
        );
    }
    let authorization_header = headers.as_ref().is_some_and(|h: &Vec<(String, String)>| {
        h.iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    });
    if authorization_header
        && matches!(
            (&bearer_token_file, &basic_auth),
            (Some(Some(_)), _) | (_, Some(Some(_)))
        )
    {
        cx.err(
            &o.at("headers"),
            "an Authorization header conflicts with bearerTokenFile/basicAuth",
        );
    }
    let insecure_skip_verify = o.or(cx, "insecureSkipVerify", false, walk::boolean);
    Some(PrometheusProvider {
        address: address?,
        query: query?,
        timeout: timeout?,
        headers: headers?,
        bearer_token_file: bearer_token_file?,
        basic_auth: basic_auth?,
        insecure_skip_verify: insecure_skip_verify?,
    })
}

fn web(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    args: Option<&BTreeMap<String, Option<String>>>,
) -> Option<WebProvider> {
    let o = Obj::open(
        cx,
        value,
        at,
        &[
            "url",
            "method",
            "headers",
            "body",
            "timeoutSeconds",
            "jsonPath",
        ],
    )?;
    let url = o.req(cx, "url", |cx, v, at| http_url(cx, v, at, args));
    let method = o.or(cx, "method", "GET".to_string(), |cx, v, at| {
        let method = walk::string(cx, v, at)?.to_ascii_uppercase();
        if ["GET", "POST", "PUT", "HEAD"].contains(&method.as_str()) {
            Some(method)
        } else {
            cx.err(
                at,
                format!("expected one of GET, POST, PUT, HEAD, got \"{method}\""),
            );
            None
        }
    });
    let headers = o.or(cx, "headers", Vec::new(), |cx, v, at| {
        request_headers(cx, v, at, args)
    });
    let body = o.opt(cx, "body", |cx, v, at| {
        let body = walk::string(cx, v, at)?;
        check_placeholders(cx, at, &body, args);
        Some(body)
    });
    let timeout = o.or(cx, "timeoutSeconds", 10, walk::positive_u32);
    let json_path = o.opt(cx, "jsonPath", |cx, v, at| {
        let path = walk::string(cx, v, at)?;
        // `{$.data.ok}` is Argo's (Kubernetes') form; the path itself is compiled at load.
        if path.starts_with(['$', '{']) {
            Some(path)
        } else {
            cx.err(
                at,
                format!("must start with \"$\" or \"{{\", got \"{path}\""),
            );
            None
        }
    });
    Some(WebProvider {
        url: url?,
        method: method?,
        headers: headers?,
        body: body?,
        timeout: Duration::from_secs(u64::from(timeout?)),
        json_path: json_path?,
    })
}

/// `provider.exec`: `command` absolute or a bare name (placeholders allowed, checked once
/// substituted at run time), `args` a list of strings, `timeout` at most 10m, `env` a mapping of
/// names to strings.
fn exec(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    args: Option<&BTreeMap<String, Option<String>>>,
) -> Option<ExecProvider> {
    let o = Obj::open(cx, value, at, &["command", "args", "timeout", "env"])?;
    let command = o.req(cx, "command", |cx, v, at| {
        let command = walk::nonempty_string(cx, v, at)?;
        check_placeholders(cx, at, &command, args);
        if command.contains('\0') {
            cx.err(at, "must not contain a NUL byte");
            return None;
        }
        if !command.starts_with('/') && !command.starts_with("{{") && command.contains('/') {
            cx.err(
                at,
                format!(
                    "\"{command}\" is a relative path: write an absolute path or a bare name looked up on PATH"
                ),
            );
            return None;
        }
        Some(command)
    });
    let argv = o.or(cx, "args", Vec::new(), |cx, v, at| {
        let items = walk::list(cx, v, at)?;
        let parsed = each(cx, items, at, |cx, item, at, _| {
            let arg = walk::text(cx, item, at)?;
            check_placeholders(cx, at, &arg, args);
            if arg.contains('\0') {
                cx.err(at, "must not contain a NUL byte");
                return None;
            }
            Some(arg)
        });
        all(parsed)
    });
    let timeout = o.or(cx, "timeout", ExecProvider::DEFAULT_TIMEOUT, |cx, v, at| {
        let timeout = walk::positive_duration(cx, v, at)?;
        if timeout > ExecProvider::MAX_TIMEOUT {
            cx.err(at, "must be at most 10m");
            return None;
        }
        Some(timeout)
    });
    let env = o.or(cx, "env", Vec::new(), |cx, v, at| {
        let Some(map) = v.as_mapping() else {
            cx.err(at, "expected a mapping of variable names to strings");
            return None;
        };
        let mut env = Vec::with_capacity(map.len());
        let mut ok = true;
        for (key, value) in map {
            let Some(name) = key.as_str() else {
                cx.err(at, "variable names must be strings");
                ok = false;
                continue;
            };
            let at = walk::field_path(at, name);
            if name.is_empty() || name.contains(['=', '\0']) {
                cx.err(
                    &at,
                    "a variable name must be non-empty, without \"=\" or NUL",
                );
                ok = false;
                continue;
            }
            let Some(value) = walk::text(cx, value, &at) else {
                ok = false;
                continue;
            };
            check_placeholders(cx, &at, &value, args);
            if value.contains('\0') {
                cx.err(&at, "must not contain a NUL byte");
                ok = false;
                continue;
            }
            env.push((name.to_string(), value));
        }
        ok.then_some(env)
    });
    Some(ExecProvider {
        command: command?,
        args: argv?,
        timeout: timeout?,
        env: env?,
    })
}

/// An `http://` or `https://` URL (placeholders allowed). A URL that starts with a placeholder
/// (`{{args.url}}/health`, the argument set to `{{preview.url}}`) is checked once substituted.
pub(super) fn http_url(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    args: Option<&BTreeMap<String, Option<String>>>,
) -> Option<String> {
    let url = walk::string(cx, value, at)?;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .or_else(|| url.starts_with("{{").then_some(url.as_str()));
    match rest {
        Some(rest) if !rest.is_empty() => {
            check_placeholders(cx, at, &url, args);
            Some(url)
        }
        _ => {
            cx.err(
                at,
                format!("must be an http:// or https:// URL, got \"{url}\""),
            );
            None
        }
    }
}

/// Reports every `{{args.NAME}}` in `text` whose NAME is not declared (skipped when `args` is unknown).
/// `headers: [{key, value}]` of a request a provider sends; values may contain placeholders.
fn request_headers(
    cx: &mut Cx,
    v: &Value,
    at: &str,
    args: Option<&BTreeMap<String, Option<String>>>,
) -> Option<Vec<(String, String)>> {
    let items = walk::list(cx, v, at)?;
    let parsed = each(cx, items, at, |cx, item, at, _| {
        let o = Obj::open(cx, item, at, &["key", "value"])?;
        let key = o.req(cx, "key", |cx, v, at| {
            let key = walk::nonempty_string(cx, v, at)?;
            if key.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                Some(key)
            } else {
                cx.err(at, format!("invalid header name \"{key}\""));
                None
            }
        });
        let value = o.req(cx, "value", |cx, v, at| {
            let value = walk::text(cx, v, at)?;
            check_placeholders(cx, at, &value, args);
            Some(value)
        });
        Some((key?, value?))
    });
    all(parsed)
}

/// The variables weir fills in every query, URL, header and body besides `{{args.NAME}}`
/// (`{{preview.url}}` and `{{preview.host}}` are for argument values, see blue-green).
const BUILTIN_VARIABLES: [&str; 3] = ["service", "stable.version", "canary.version"];

pub(super) fn check_placeholders(
    cx: &mut Cx,
    at: &str,
    text: &str,
    args: Option<&BTreeMap<String, Option<String>>>,
) {
    let Some(args) = args else { return };
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let inner = after[..end].trim();
        if let Some(name) = inner.strip_prefix("args.") {
            if !args.contains_key(name) {
                cx.err(
                    at,
                    format!("\"{{{{{inner}}}}}\" uses argument \"{name}\", which the template does not declare in args"),
                );
            }
        } else if !BUILTIN_VARIABLES.contains(&inner) {
            cx.err(
                at,
                format!(
                    "unknown variable \"{{{{{inner}}}}}\": use {{{{args.NAME}}}}, {}",
                    BUILTIN_VARIABLES.map(|v| format!("{{{{{v}}}}}")).join(", ")
                ),
            );
        }
        rest = &after[end + 2..];
    }
}

/// Checks a reference to templates: each must exist; every argument a template declares without a default must
/// be supplied; every supplied argument must be declared by one of the templates.
///
/// `names` are `(template name, path)`, `supplied` are `(argument name, path)`; problems about missing arguments
/// are reported at `ref_at`.
pub(crate) fn check_reference(
    cx: &mut Cx,
    ref_at: &str,
    names: &[(String, String)],
    supplied: &[(String, String)],
    known: &Known,
) {
    let mut declared: Vec<(&str, &BTreeMap<String, Option<String>>)> = Vec::new();
    let mut args_known = true;
    for (name, at) in names {
        match known.get(name) {
            Some(KnownTemplate { args: Some(args) }) => declared.push((name, args)),
            Some(KnownTemplate { args: None }) => args_known = false,
            None => {
                args_known = false;
                let mut problem = format!("unknown analysis template \"{name}\"");
                if known.is_empty() {
                    problem.push_str(" (no analysisTemplates are defined)");
                } else {
                    let names: Vec<&str> = known.keys().map(String::as_str).collect();
                    problem.push_str(&format!(", defined: {}", names.join(", ")));
                }
                cx.err(at, problem);
            }
        }
    }
    if !args_known {
        return;
    }
    for (template, args) in &declared {
        for (arg, default) in args.iter() {
            if default.is_none() && !supplied.iter().any(|(name, _)| name == arg) {
                cx.err(
                    ref_at,
                    format!("missing argument \"{arg}\" required by template \"{template}\""),
                );
            }
        }
    }
    for (name, at) in supplied {
        if !declared.iter().any(|(_, args)| args.contains_key(name)) {
            let templates: Vec<String> = declared.iter().map(|(t, _)| format!("\"{t}\"")).collect();
            cx.err(
                at,
                format!(
                    "argument \"{name}\" is not declared by template {}",
                    templates.join(" or ")
                ),
            );
        }
    }
}
