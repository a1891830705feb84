//! `provider.datadog` of an analysis template metric (issue #9).

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml_ng::Value;

use super::template::{check_placeholders, http_url};
use super::walk::{self, Cx, Obj};
use crate::model::{DatadogAggregator, DatadogApiVersion, DatadogProvider};

/// `provider.datadog`: `query` xor `queries` (v1: `query` only), `formula` only with `queries` and
/// naming only them, several queries only with a formula, `aggregator` only with v2, both key
/// files required.
pub(super) fn datadog(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    args: Option<&BTreeMap<String, Option<String>>>,
    base_dir: &Path,
) -> Option<DatadogProvider> {
    let o = Obj::open(
        cx,
        value,
        at,
        &[
            "apiVersion",
            "query",
            "queries",
            "formula",
            "interval",
            "aggregator",
            "address",
            "apiKeyFile",
            "appKeyFile",
            "timeout",
        ],
    )?;
    let api_version = o.or(
        cx,
        "apiVersion",
        DatadogApiVersion::V2,
        |cx, v, at| match walk::string(cx, v, at)?.as_str() {
            "v1" => Some(DatadogApiVersion::V1),
            "v2" => Some(DatadogApiVersion::V2),
            other => {
                cx.err(at, format!("expected \"v1\" or \"v2\", got \"{other}\""));
                None
            }
        },
    );
    let query = o.opt(cx, "query", |cx, v, at| {
        let query = walk::nonempty_string(cx, v, at)?;
        check_placeholders(cx, at, &query, args);
        Some(query)
    });
    let queries = o.opt(cx, "queries", |cx, v, at| queries(cx, v, at, args));
    let formula = o.opt(cx, "formula", |cx, v, at| {
        let formula = walk::nonempty_string(cx, v, at)?;
        check_placeholders(cx, at, &formula, args);
        Some(formula)
    });
    let interval = o.or(
        cx,
        "interval",
        DatadogProvider::DEFAULT_INTERVAL,
        walk::positive_duration,
    );
    let aggregator = o.or(cx, "aggregator", DatadogAggregator::Last, |cx, v, at| {
        let name = walk::string(cx, v, at)?;
        let found = DatadogAggregator::ALL
            .into_iter()
            .find(|a| a.as_str() == name);
        if found.is_none() {
            let names: Vec<&str> = DatadogAggregator::ALL.iter().map(|a| a.as_str()).collect();
            cx.err(
                at,
                format!(
                    "unknown aggregator \"{name}\", expected one of: {}",
                    names.join(", ")
                ),
            );
        }
        found
    });
    let address = o.or(
        cx,
        "address",
        DatadogProvider::DEFAULT_ADDRESS.to_string(),
        |cx, v, at| http_url(cx, v, at, args),
    );
    let api_key_file = o.req(cx, "apiKeyFile", |cx, v, at| {
        walk::existing_file(cx, v, at, base_dir)
    });
    let app_key_file = o.req(cx, "appKeyFile", |cx, v, at| {
        walk::existing_file(cx, v, at, base_dir)
    });
    let timeout = o.or(
        cx,
        "timeout",
        DatadogProvider::DEFAULT_TIMEOUT,
        |cx, v, at| {
            let timeout = walk::positive_duration(cx, v, at)?;
            if timeout > DatadogProvider::MAX_TIMEOUT {
                cx.err(at, "must be at most 5m");
                return None;
            }
            Some(timeout)
        },
    );

    // How the query fields go together, checked on what was written (even where invalid, so
    // each mistake is reported once, where it is).
    let v1 = api_version == Some(DatadogApiVersion::V1);
    let (has_query, has_queries, has_formula) =
        (o.has("query"), o.has("queries"), o.has("formula"));
    let mut combined = true;
    if has_query && has_queries {
        cx.err(&o.at("queries"), "give query or queries, not both");
        combined = false;
    } else if !has_query && !has_queries {
        let need = if v1 { "query" } else { "query or queries" };
        cx.err(o.path(), format!("needs {need}"));
        combined = false;
    }
    if v1 {
        for key in ["queries", "formula", "aggregator"] {
            if o.has(key) {
                cx.err(
                    &o.at(key),
                    format!("apiVersion v1 takes one query, without {key}: use apiVersion v2"),
                );
                combined = false;
            }
        }
    }
    if has_formula && !has_queries && !v1 {
        cx.err(
            &o.at("formula"),
            "needs queries (named, for the formula to combine)",
        );
        combined = false;
    }
    let written_queries: Vec<(String, String)> = match (&query, &queries) {
        (Some(Some(query)), _) => vec![("query".to_string(), query.clone())],
        (_, Some(Some(queries))) => queries.clone(),
        _ => Vec::new(),
    };
    if let (Some(Some(_)), Some(None)) = (&queries, &formula) {
        if written_queries.len() > 1 {
            cx.err(
                &o.at("queries"),
                "several queries need a formula to combine them into one value",
            );
            combined = false;
        }
    }
    if let (Some(Some(formula)), Some(Some(queries))) = (&formula, &queries) {
        for name in formula_names(formula) {
            if !queries.iter().any(|(query, _)| *query == name) {
                let names: Vec<&str> = queries.iter().map(|(n, _)| n.as_str()).collect();
                cx.err(
                    &o.at("formula"),
                    format!(
                        "\"{name}\" is not a query name (queries: {})",
                        names.join(", ")
                    ),
                );
                combined = false;
            }
        }
    }
    // An invalid query or queries was reported where it is.
    if !combined || query.is_none() || queries.is_none() {
        return None;
    }
    Some(DatadogProvider {
        api_version: api_version?,
        queries: written_queries,
        formula: formula?,
        interval: interval?,
        aggregator: aggregator?,
        address: address?,
        api_key_file: api_key_file?,
        app_key_file: app_key_file?,
        timeout: timeout?,
    })
}

/// `queries`: a non-empty mapping of names (identifiers, as a formula refers to them) to queries.
fn queries(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    args: Option<&BTreeMap<String, Option<String>>>,
) -> Option<Vec<(String, String)>> {
    let Some(map) = value.as_mapping().filter(|m| !m.is_empty()) else {
        cx.err(at, "expected a non-empty mapping of query names to queries");
        return None;
    };
    let mut queries = Vec::with_capacity(map.len());
    let mut ok = true;
    for (key, query) in map {
        let Some(name) = key.as_str() else {
            cx.err(at, "query names must be strings");
            ok = false;
            continue;
        };
        let at = walk::field_path(at, name);
        if !is_identifier(name) {
            cx.err(
                &at,
                format!("invalid query name \"{name}\": use letters, digits and '_', not starting with a digit"),
            );
            ok = false;
            continue;
        }
        let Some(query) = walk::nonempty_string(cx, query, &at) else {
            ok = false;
            continue;
        };
        check_placeholders(cx, &at, &query, args);
        queries.push((name.to_string(), query));
    }
    ok.then_some(queries)
}

/// Whether `name` is an identifier: a letter or `_`, then letters, digits or `_`.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The names a formula refers to: its identifiers that are not called (`moving_rollup(a, 60,
/// 'sum')` refers to `a`), outside quoted strings and placeholders, numbers skipped.
fn formula_names(formula: &str) -> Vec<String> {
    let mut names = Vec::new();
    let chars: Vec<char> = formula.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' && chars.get(i + 1) == Some(&'{') {
            // A placeholder: filled in at run time, so not a name here.
            while i < chars.len() && !(chars[i] == '}' && chars.get(i + 1) == Some(&'}')) {
                i += 1;
            }
            i += 2;
        } else if c == '\'' || c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number, exponent and suffix letters included (`1e3`).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            let called = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
            if !called && !names.contains(&name) {
                names.push(name);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::formula_names;

    #[test]
    fn formula_names_skip_functions_strings_numbers_and_placeholders() {
        assert_eq!(formula_names("a / b * 100"), ["a", "b"]);
        assert_eq!(
            formula_names("(moving_rollup(a, 60, 'sum') / moving_rollup(b, 60, 'sum')) * 100"),
            ["a", "b"]
        );
        assert_eq!(formula_names("query1 * 1e3 + .5"), ["query1"]);
        assert_eq!(formula_names("errors / {{args.total}}"), ["errors"]);
        assert!(formula_names("100").is_empty());
    }
}
