//! PromQL from Argo templates and Flagger `MetricTemplate`s → weir's own metric names, where the
//! mapping is exact.
//!
//! weir exports `http_requests_total{service,version,status}` and the histogram
//! `http_request_duration_seconds{service,version}` (seconds). A selector of Istio's
//! `istio_requests_total` or ingress-nginx's `nginx_ingress_controller_requests` (and their
//! duration histograms in seconds) is rewritten when every label it matches on has a weir
//! equivalent: the status code, the service, the workload (→ the canary's or stable's version),
//! and labels weir has no use for (namespace, reporter, controller), which are dropped. Anything
//! else (other labels, millisecond histograms, Envoy/Linkerd series, grouping by a mesh label)
//! leaves the whole query as it was, and the caller lists it.
//!
//! The scanner copies the query byte for byte except the selectors it rewrites: string literals,
//! numbers, durations and functions pass through untouched.

/// What became of a query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Only weir's metric names; `all_versions` when a selector has no `version` matcher (it
    /// judges stable and canary together).
    Weir { all_versions: bool },
    /// Mesh/ingress metrics rewritten to weir's (the names that were replaced).
    Rewritten { from: Vec<String> },
    /// Left as written, with the reason.
    LeftAsIs(String),
}

/// A rewritten query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rewrite {
    pub(crate) query: String,
    pub(crate) outcome: Outcome,
}

/// weir's own series (the histogram's three).
const WEIR_METRICS: [&str; 4] = [
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    "http_request_duration_seconds_sum",
    "http_request_duration_seconds_count",
];

/// Names of series of other meshes and proxies with no exact weir equivalent (prefixes).
const FOREIGN_PREFIXES: [&str; 9] = [
    "istio_",
    "nginx_ingress_controller_",
    "envoy_",
    "response_total",
    "request_total",
    "response_latency_ms",
    "nginxplus_",
    "linkerd_",
    "traefik_",
];

/// How a source series maps to weir's.
struct Mapping {
    target: &'static str,
    family: Family,
}

#[derive(Clone, Copy, PartialEq)]
enum Family {
    Istio,
    Nginx,
}

fn mapping(name: &str) -> Option<Mapping> {
    let (target, family) = match name {
        "istio_requests_total" => ("http_requests_total", Family::Istio),
        "istio_request_duration_seconds_bucket" => {
            ("http_request_duration_seconds_bucket", Family::Istio)
        }
        "istio_request_duration_seconds_sum" => {
            ("http_request_duration_seconds_sum", Family::Istio)
        }
        "istio_request_duration_seconds_count" => {
            ("http_request_duration_seconds_count", Family::Istio)
        }
        "nginx_ingress_controller_requests" => ("http_requests_total", Family::Nginx),
        "nginx_ingress_controller_request_duration_seconds_bucket" => {
            ("http_request_duration_seconds_bucket", Family::Nginx)
        }
        "nginx_ingress_controller_request_duration_seconds_sum" => {
            ("http_request_duration_seconds_sum", Family::Nginx)
        }
        "nginx_ingress_controller_request_duration_seconds_count" => {
            ("http_request_duration_seconds_count", Family::Nginx)
        }
        _ => return None,
    };
    Some(Mapping { target, family })
}

/// Which Kubernetes names stand for what, to map label values.
#[derive(Default, Clone, Debug)]
pub(crate) struct Names {
    /// Names of the whole service (the rollout, its stable/root Service, its Ingress).
    pub(crate) service: Vec<String>,
    /// Names of the canary alone (Argo `canaryService`, Flagger's `NAME-canary`).
    pub(crate) canary: Vec<String>,
    /// Names of the stable alone (Flagger's `NAME-primary`).
    pub(crate) stable: Vec<String>,
    /// Template arguments every rollout fills with its canary Service's name: a selector of
    /// weir's series on `service="{{args.X}}"` then selects the canary version alone.
    pub(crate) canary_args: Vec<String>,
}

/// What a label value selects.
enum Selects {
    Service,
    Canary,
    Stable,
}

/// Classifies a label value: `{{service}}` (Flagger's target/name after substitution) and the
/// known names; `{{args.X}}` selects whatever the argument names, taken as the service.
fn classify(value: &str, names: &Names, workload: bool) -> Option<Selects> {
    let v = value.trim();
    if v == "{{service}}" {
        // Flagger's `{{ target }}` is the canary workload; as a service name it is the service.
        return Some(if workload {
            Selects::Canary
        } else {
            Selects::Service
        });
    }
    if v == "{{service}}-primary" || names.stable.iter().any(|n| n == v) {
        return Some(Selects::Stable);
    }
    if v == "{{service}}-canary" || names.canary.iter().any(|n| n == v) {
        return Some(Selects::Canary);
    }
    if names.service.iter().any(|n| n == v) || v.starts_with("{{service}}.") {
        return Some(if workload {
            Selects::Canary
        } else {
            Selects::Service
        });
    }
    if !workload && v.starts_with("{{args.") && v.ends_with("}}") && !v[2..].contains("{{") {
        return Some(Selects::Service);
    }
    None
}

/// One label matcher.
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// Rewrites `query` (see the module doc), then pins selectors of weir's series on a canary
/// argument to the canary version.
pub(crate) fn rewrite_query(query: &str, names: &Names) -> Rewrite {
    let mut r = rewrite_names(query, names);
    if !names.canary_args.is_empty() && !matches!(r.outcome, Outcome::LeftAsIs(_)) {
        if let Ok(pinned) = pin_canary(&r.query, &names.canary_args) {
            if pinned != r.query {
                r.query = pinned;
                r.outcome = match r.outcome {
                    Outcome::Weir { .. } => Outcome::Weir {
                        all_versions: selects_all_versions(&r.query),
                    },
                    other => other,
                };
            }
        }
    }
    r
}

/// Adds `version="{{canary.version}}"` to selectors of weir's series that match
/// `service="{{args.X}}"` for a canary argument X and have no `version` matcher.
fn pin_canary(query: &str, canary_args: &[String]) -> Result<String, String> {
    scan(query, &mut |name, matchers| {
        if !WEIR_METRICS.contains(&name) || matchers.iter().any(|m| m.label == "version") {
            return Ok(None);
        }
        let on_canary_arg = matchers.iter().any(|m| {
            m.label == "service"
                && m.op == "="
                && canary_args
                    .iter()
                    .any(|a| m.value.trim() == format!("{{{{args.{a}}}}}"))
        });
        if !on_canary_arg {
            return Ok(None);
        }
        let mut parts: Vec<String> = matchers
            .iter()
            .map(|m| format!("{}{}{}", m.label, m.op, quote(&m.value)))
            .collect();
        parts.push("version=\"{{canary.version}}\"".to_string());
        Ok(Some(format!("{name}{{{}}}", parts.join(","))))
    })
}

fn rewrite_names(query: &str, names: &Names) -> Rewrite {
    match rewrite(query, names) {
        Ok((text, from)) => {
            if from.is_empty() {
                let found = metric_names(query);
                let all_versions = !found.is_empty() && selects_all_versions(query);
                Rewrite {
                    query: query.to_string(),
                    outcome: Outcome::Weir { all_versions },
                }
            } else {
                Rewrite {
                    query: text,
                    outcome: Outcome::Rewritten { from },
                }
            }
        }
        Err(reason) => Rewrite {
            query: query.to_string(),
            outcome: Outcome::LeftAsIs(reason),
        },
    }
}

/// Whether one of weir's series is selected without a `version` matcher.
pub(crate) fn selects_all_versions(query: &str) -> bool {
    let mut all = false;
    let _ = scan(query, &mut |name, matchers| {
        if WEIR_METRICS.contains(&name) && !matchers.iter().any(|m| m.label == "version") {
            all = true;
        }
        Ok(None)
    });
    all
}

/// The metric names a query selects.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let _ = scan(query, &mut |name, _| {
        names.push(name.to_string());
        Ok(None)
    });
    names
}

type OnSelector<'a> = dyn FnMut(&str, &[Matcher]) -> Result<Option<String>, String> + 'a;

/// The rewrite proper: `Err(reason)` leaves the query as is.
fn rewrite(query: &str, names: &Names) -> Result<(String, Vec<String>), String> {
    let mut from: Vec<String> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    let mut foreign_labels: Vec<&'static str> = Vec::new();
    let text = scan(query, &mut |name, matchers| {
        if WEIR_METRICS.contains(&name) {
            return Ok(None);
        }
        let Some(m) = mapping(name) else {
            if FOREIGN_PREFIXES.iter().any(|p| name.starts_with(p)) {
                return Err(if name.contains("_milliseconds") || name.contains("_ms_") {
                    format!("{name} is in milliseconds; weir's histogram http_request_duration_seconds is in seconds (rewrite by hand, thresholds / 1000)")
                } else {
                    format!("{name} has no exact weir equivalent")
                });
            }
            unknown.push(name.to_string());
            return Ok(None);
        };
        let mut out: Vec<String> = Vec::new();
        for matcher in matchers {
            let written = match (m.family, matcher.label.as_str()) {
                (Family::Istio, "response_code") | (Family::Nginx, "status") => {
                    Some(format!("status{}{}", matcher.op, quote(&matcher.value)))
                }
                (Family::Istio, "reporter")
                | (
                    Family::Istio,
                    "destination_workload_namespace"
                    | "destination_service_namespace"
                    | "namespace",
                )
                | (
                    Family::Nginx,
                    "namespace"
                    | "exported_namespace"
                    | "controller_namespace"
                    | "controller_class"
                    | "controller_pod",
                ) => None,
                (Family::Istio, "destination_workload")
                | (
                    Family::Istio,
                    "destination_service_name" | "destination_service" | "destination_app",
                )
                | (Family::Nginx, "ingress" | "service" | "exported_service") => {
                    if matcher.op != "=" {
                        return Err(format!(
                            "{name}: label {} {} cannot be mapped to weir's service/version exactly",
                            matcher.label, matcher.op
                        ));
                    }
                    let workload = matcher.label == "destination_workload"
                        || (m.family == Family::Nginx && matcher.label != "ingress");
                    match classify(&matcher.value, names, workload) {
                        Some(Selects::Service) => Some("service=\"{{service}}\"".to_string())
                            .map(|s| {
                                if matcher.value.starts_with("{{args.") {
                                    format!("service={}", quote(&matcher.value))
                                } else {
                                    s
                                }
                            }),
                        Some(Selects::Canary) => Some(
                            "service=\"{{service}}\",version=\"{{canary.version}}\"".to_string(),
                        ),
                        Some(Selects::Stable) => Some(
                            "service=\"{{service}}\",version=\"{{stable.version}}\"".to_string(),
                        ),
                        None => {
                            return Err(format!(
                                "{name}: {}=\"{}\" names nothing weir knows (not the rollout's service, canary or stable)",
                                matcher.label, matcher.value
                            ))
                        }
                    }
                }
                (_, "le") => Some(format!("le{}{}", matcher.op, quote(&matcher.value))),
                (_, label) => return Err(format!("{name}: label {label} has no weir equivalent")),
            };
            if let Some(w) = written {
                for part in split_matchers(&w) {
                    if !out.contains(&part) {
                        out.push(part);
                    }
                }
            }
        }
        // Two different values for one label (service= twice) is not exact.
        let mut labels: Vec<&str> = out
            .iter()
            .filter_map(|m| m.split(['=', '!']).next())
            .collect();
        labels.sort_unstable();
        if labels
            .windows(2)
            .any(|w| w[0] == w[1] && w[0] != "status" && w[0] != "le")
        {
            return Err(format!("{name}: its labels select the service twice"));
        }
        if !from.iter().any(|f| f == name) {
            from.push(name.to_string());
        }
        foreign_labels.extend(match m.family {
            Family::Istio => ISTIO_LABELS.as_slice(),
            Family::Nginx => NGINX_LABELS.as_slice(),
        });
        Ok(Some(format!("{}{{{}}}", m.target, out.join(","))))
    })?;
    if !from.is_empty() {
        if let Some(name) = unknown.first() {
            return Err(format!(
                "it also uses {name}, which is not a weir series (mixed sources)"
            ));
        }
        // `by (response_code)` and the like would still name the mesh's labels.
        if let Some(label) = grouping_labels(query)
            .into_iter()
            .find(|l| foreign_labels.contains(&l.as_str()))
        {
            return Err(format!(
                "it groups or joins by {label}, a label weir does not have"
            ));
        }
    } else if let Some(name) = unknown.first() {
        return Err(format!(
            "{name} is not a weir series: the Prometheus it queries must still scrape it"
        ));
    }
    Ok((text, from))
}

const ISTIO_LABELS: [&str; 8] = [
    "response_code",
    "reporter",
    "destination_workload",
    "destination_workload_namespace",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "source_workload",
];
const NGINX_LABELS: [&str; 6] = [
    "ingress",
    "exported_namespace",
    "controller_namespace",
    "controller_class",
    "controller_pod",
    "exported_service",
];

fn split_matchers(text: &str) -> Vec<String> {
    // Only the fixed texts above contain a comma between matchers (never inside a value
    // of theirs); user values are quoted by `quote` and passed whole.
    if text.starts_with("service=\"{{service}}\",version=") {
        let (a, b) = text.split_at("service=\"{{service}}\"".len());
        return vec![a.to_string(), b.trim_start_matches(',').to_string()];
    }
    vec![text.to_string()]
}

/// A PromQL double-quoted string.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The label names inside `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`,
/// `group_left (...)`, `group_right (...)`.
fn grouping_labels(query: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let bytes = query.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(bytes, i);
            continue;
        }
        if is_ident_start(c) {
            let start = i;
            while i < bytes.len() && is_ident(bytes[i]) {
                i += 1;
            }
            let word = &query[start..i];
            if matches!(
                word,
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                let mut j = i;
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                if j < bytes.len() && bytes[j] == b'(' {
                    if let Some(end) = query[j..].find(')') {
                        labels.extend(
                            query[j + 1..j + end]
                                .split(',')
                                .map(|l| l.trim().to_string())
                                .filter(|l| !l.is_empty()),
                        );
                    }
                }
            }
            continue;
        }
        i += 1;
    }
    labels
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// The index after the string literal starting at `start`.
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == b'\\' && quote != b'`' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

/// PromQL keywords and function-like words that are not metric names.
/// (Aggregations too: `sum by (le) (...)` puts a word that is no metric before `by`.)
const KEYWORDS: [&str; 28] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
];

/// Walks the query; calls `on_selector(name, matchers)` for each metric selector. `Ok(Some)`
/// replaces the selector (name and braces), `Ok(None)` keeps it, `Err` stops.
fn scan(query: &str, on_selector: &mut OnSelector<'_>) -> Result<String, String> {
    let bytes = query.as_bytes();
    let mut out = String::with_capacity(query.len() + 32);
    let mut i = 0;
    // Inside `by (...)` and the like, words are labels, not metrics.
    let mut in_grouping = false;
    let mut after_grouping_word = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            let end = skip_string(bytes, i);
            out.push_str(&query[i..end]);
            i = end;
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            // A number or a duration (5m, 1e3, 0x1f).
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            out.push_str(&query[start..i]);
            continue;
        }
        if c == b'[' {
            // A range or subquery: copied up to its bracket.
            let end = query[i..].find(']').map_or(bytes.len(), |e| i + e + 1);
            out.push_str(&query[i..end]);
            i = end;
            continue;
        }
        if c == b'(' && after_grouping_word {
            in_grouping = true;
            after_grouping_word = false;
            out.push('(');
            i += 1;
            continue;
        }
        if c == b')' && in_grouping {
            in_grouping = false;
            out.push(')');
            i += 1;
            continue;
        }
        if c == b'{' {
            // A selector with no name: `{__name__="..."}`.
            let (end, matchers) = parse_matchers(query, i)?;
            if let Some(m) = matchers.iter().find(|m| m.label == "__name__") {
                return Err(format!(
                    "a selector by __name__ ({}) cannot be mapped",
                    m.value
                ));
            }
            out.push_str(&query[i..end]);
            i = end;
            continue;
        }
        if is_ident_start(c) {
            let start = i;
            while i < bytes.len() && is_ident(bytes[i]) {
                i += 1;
            }
            let word = &query[start..i];
            let mut j = i;
            while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                j += 1;
            }
            let next = bytes.get(j).copied();
            if matches!(
                word,
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                after_grouping_word = true;
                out.push_str(word);
                continue;
            }
            if in_grouping || next == Some(b'(') || KEYWORDS.contains(&word) {
                out.push_str(word);
                continue;
            }
            // A metric name, with or without matchers.
            let (end, matchers) = if next == Some(b'{') {
                parse_matchers(query, j)?
            } else {
                (i, Vec::new())
            };
            match on_selector(word, &matchers)? {
                Some(replacement) => out.push_str(&replacement),
                None => out.push_str(&query[start..end]),
            }
            i = end;
            continue;
        }
        out.push(c as char);
        if !c.is_ascii() {
            // Copy a multi-byte character whole.
            let ch_len = query[i..].chars().next().map_or(1, char::len_utf8);
            out.pop();
            out.push_str(&query[i..i + ch_len]);
            i += ch_len;
            continue;
        }
        i += 1;
    }
    Ok(out)
}

/// Parses `{label op "value", ...}` starting at `open`; returns the index after `}`.
fn parse_matchers(query: &str, open: usize) -> Result<(usize, Vec<Matcher>), String> {
    let bytes = query.as_bytes();
    let mut i = open + 1;
    let mut matchers = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        match bytes.get(i) {
            None => return Err("a selector's { is never closed".to_string()),
            Some(b'}') => return Ok((i + 1, matchers)),
            Some(b',') => {
                i += 1;
                continue;
            }
            Some(_) => {}
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        if i == start {
            return Err(format!("cannot read the label matchers at byte {start}"));
        }
        let label = query[start..i].to_string();
        skip_ws(&mut i);
        let op = if query[i..].starts_with("=~") {
            "=~"
        } else if query[i..].starts_with("!~") {
            "!~"
        } else if query[i..].starts_with("!=") {
            "!="
        } else if query[i..].starts_with('=') {
            "="
        } else {
            return Err(format!("cannot read the matcher of label {label}"));
        };
        i += op.len();
        skip_ws(&mut i);
        let Some(&q) = bytes.get(i) else {
            return Err(format!("label {label} has no value"));
        };
        if q != b'"' && q != b'\'' && q != b'`' {
            return Err(format!("label {label}'s value is not a string"));
        }
        let end = skip_string(bytes, i);
        if end <= i + 1 || bytes[end - 1] != q {
            return Err(format!("label {label}'s value is never closed"));
        }
        let raw = &query[i + 1..end - 1];
        let value = if q == b'`' {
            raw.to_string()
        } else {
            unescape(raw)
        };
        matchers.push(Matcher {
            label,
            op: op.to_string(),
            value,
        });
        i = end;
    }
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Argo's conditions are written in expr (`and`, `or`, `not`); weir's are CEL (`&&`, `||`,
/// `!`). Rewrites those words outside string literals; returns `None` when nothing changed.
pub(crate) fn condition(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            let end = skip_string(bytes, i);
            out.push_str(&text[i..end]);
            i = end;
            continue;
        }
        if is_ident_start(c) {
            let start = i;
            while i < bytes.len() && is_ident(bytes[i]) {
                i += 1;
            }
            let word = &text[start..i];
            let replacement = match word {
                "and" => Some("&&"),
                "or" => Some("||"),
                "not" => Some("!"),
                _ => None,
            };
            match replacement {
                Some(r) => {
                    changed = true;
                    out.push_str(r);
                }
                None => out.push_str(word),
            }
            continue;
        }
        let ch_len = text[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&text[i..i + ch_len]);
        i += ch_len;
    }
    changed.then_some(out)
}
