//! The Datadog provider: a scalar metrics query, as Argo Rollouts' Datadog provider sends it.
//!
//! v2 `POST {address}/api/v2/query/scalar`, v1 `GET {address}/api/v1/query`, both with the
//! `DD-API-KEY` and `DD-APPLICATION-KEY` headers read from their files at every query (a file
//! that cannot be read is an error measurement naming it, and nothing is sent).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use weir_config::{DatadogApiVersion, DatadogProvider};

use super::super::{substitute, Measured, Outcome, Vars};
use super::{http, json_number, snippet, without_query};

/// Runs the provider's query over the `interval` ending now.
///
/// `result` is, as in Argo: for v2 the value of the answer's first number column (the formula's,
/// when there is one), a number for an ungrouped query and an array of numbers for a grouped one
/// (`by {tag}`), nulls (no data for a group) skipped; for v1 the last non-null point of the first
/// series. No column, no point or only nulls is `[]` (see [`crate::engine::analysis::judge`]:
/// `default()`/`len()` decide, other conditions are inconclusive). An unreadable key file, an
/// HTTP error status (401/403 named as an authentication failure), an `errors` field, an
/// unreachable address, a timeout or a body of the wrong shape is an error.
pub async fn datadog(p: &DatadogProvider, vars: &Vars) -> Outcome {
    let address = substitute(&p.address, vars);
    let base = address.trim_end_matches('/');
    let shown = without_query(base);
    let keys = match (key(&p.api_key_file).await, key(&p.app_key_file).await) {
        (Ok(api), Ok(app)) => (api, app),
        (Err(why), _) | (_, Err(why)) => return Outcome::Error(format!("datadog: {why}")),
    };
    let to_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| u64::try_from(now.as_millis()).unwrap_or(u64::MAX));
    let interval_ms = u64::try_from(p.interval.as_millis()).unwrap_or(u64::MAX);
    let from_ms = to_ms.saturating_sub(interval_ms);
    let mut headers = vec![
        ("accept".to_string(), "application/json".to_string()),
        ("dd-api-key".to_string(), keys.0),
        ("dd-application-key".to_string(), keys.1),
    ];
    let queries: Vec<(String, String)> = p
        .queries
        .iter()
        .map(|(name, query)| (name.clone(), substitute(query, vars)))
        .collect();
    let formula = p.formula.as_deref().map(|f| substitute(f, vars));
    let (method, url, body) = match p.api_version {
        DatadogApiVersion::V2 => {
            headers.push(("content-type".to_string(), "application/json".to_string()));
            let body = v2_request(p, &queries, formula.as_deref(), from_ms, to_ms);
            ("POST", format!("{base}/api/v2/query/scalar"), Some(body))
        }
        DatadogApiVersion::V1 => {
            let query = queries.first().map_or("", |(_, q)| q.as_str());
            let encoded: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("from", &(from_ms / 1000).to_string())
                .append_pair("to", &(to_ms / 1000).to_string())
                .append_pair("query", query)
                .finish();
            ("GET", format!("{base}/api/v1/query?{encoded}"), None)
        }
    };
    let response = match http::fetch(method, &url, &headers, body, p.timeout).await {
        Ok(response) => response,
        Err(error) => return Outcome::Error(format!("datadog at {shown}: {error}")),
    };
    let status = response.status;
    if status == ::http::StatusCode::UNAUTHORIZED || status == ::http::StatusCode::FORBIDDEN {
        return Outcome::Error(format!(
            "datadog at {shown} refused the keys (HTTP {status}): {}",
            snippet(&response.body)
        ));
    }
    if !status.is_success() {
        return Outcome::Error(format!(
            "datadog at {shown} answered HTTP {status}: {}",
            snippet(&response.body)
        ));
    }
    let reply = match serde_json::from_slice::<Value>(&response.body) {
        Ok(reply) => reply,
        Err(error) => {
            return Outcome::Error(format!(
                "datadog at {shown} answered with an invalid body ({error}): {}",
                snippet(&response.body)
            ))
        }
    };
    let names: Vec<&str> = p.queries.iter().map(|(name, _)| name.as_str()).collect();
    let parsed = match p.api_version {
        DatadogApiVersion::V2 => v2_result(&reply, formula.is_some().then_some(&names[..])),
        DatadogApiVersion::V1 => v1_result(&reply),
    };
    match parsed {
        Ok(value) => Outcome::Value(Measured::value(value)),
        Err(why) => Outcome::Error(format!("datadog at {shown}: {why}")),
    }
}

/// A key from its file, without the trailing newline; an empty file is an error too.
async fn key(path: &std::path::Path) -> Result<String, String> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => Err(format!("the key file {} is empty", path.display())),
        Err(error) => Err(format!(
            "cannot read the key file {}: {error}",
            path.display()
        )),
    }
}

/// The body of a v2 scalar query, as Argo sends it.
fn v2_request(
    p: &DatadogProvider,
    queries: &[(String, String)],
    formula: Option<&str>,
    from_ms: u64,
    to_ms: u64,
) -> String {
    let queries: Vec<Value> = queries
        .iter()
        .map(|(name, query)| {
            json!({
                "aggregator": p.aggregator.as_str(),
                "data_source": "metrics",
                "name": name,
                "query": query,
            })
        })
        .collect();
    let formulas: Vec<Value> = formula
        .map(|f| json!({ "formula": f }))
        .into_iter()
        .collect();
    json!({
        "data": {
            "type": "scalar_request",
            "attributes": {
                "from": from_ms,
                "to": to_ms,
                "queries": queries,
                "formulas": formulas,
            }
        }
    })
    .to_string()
}

/// The `result` of a v2 scalar answer: `{"data": {"attributes": {"columns": [{"name", "type",
/// "values"}]}}}`. With a formula (`query_names` given), a number column not named after a query
/// is preferred, in case the answer lists the queries' columns too.
fn v2_result(reply: &Value, query_names: Option<&[&str]>) -> Result<Value, String> {
    for errors in [&reply["errors"], &reply["data"]["errors"]] {
        let message = match errors {
            Value::String(text) if !text.is_empty() => text.clone(),
            Value::Array(items) if !items.is_empty() => items
                .iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join("; "),
            _ => continue,
        };
        return Err(format!("the query failed: {message}"));
    }
    let columns = match &reply["data"]["attributes"]["columns"] {
        Value::Array(columns) => columns,
        Value::Null => return Ok(Value::Array(Vec::new())),
        _ => return Err("the answer's data.attributes.columns is not a list".to_string()),
    };
    let kind = |column: &Value| column["type"].as_str().unwrap_or("").to_string();
    let numbers: Vec<&Value> = columns
        .iter()
        .filter(|c| matches!(kind(c).as_str(), "" | "number"))
        .collect();
    let grouped = columns.iter().any(|c| kind(c) == "group");
    let chosen = query_names
        .and_then(|names| {
            numbers
                .iter()
                .find(|c| !c["name"].as_str().is_some_and(|n| names.contains(&n)))
        })
        .or_else(|| numbers.first());
    let Some(column) = chosen else {
        return Ok(Value::Array(Vec::new()));
    };
    let name = column["name"].as_str().unwrap_or("?");
    let Value::Array(values) = &column["values"] else {
        return Err(format!("column {name:?} has no list of values"));
    };
    let mut numbers = Vec::with_capacity(values.len());
    for value in values {
        match value {
            Value::Null => {}
            Value::Number(n) => numbers.push(json_number(n.as_f64().unwrap_or(f64::NAN))),
            other => return Err(format!("column {name:?} holds {other}, not a number")),
        }
    }
    if grouped {
        return Ok(Value::Array(numbers));
    }
    Ok(numbers
        .into_iter()
        .next()
        .unwrap_or_else(|| Value::Array(Vec::new())))
}

/// The `result` of a v1 answer: the last non-null point of the first series
/// (`{"status": "ok", "series": [{"pointlist": [[ms, value], ...]}]}`).
fn v1_result(reply: &Value) -> Result<Value, String> {
    if reply["status"].as_str() == Some("error") || reply["error"].is_string() {
        let message = reply["error"].as_str().unwrap_or("no error message");
        return Err(format!("the query failed: {message}"));
    }
    let Some(first) = reply["series"].as_array().and_then(|series| series.first()) else {
        return Ok(Value::Array(Vec::new()));
    };
    let Some(points) = first["pointlist"].as_array() else {
        return Err("the first series has no pointlist".to_string());
    };
    for point in points.iter().rev() {
        match point.get(1) {
            Some(Value::Number(n)) => return Ok(json_number(n.as_f64().unwrap_or(f64::NAN))),
            Some(Value::Null) => {}
            _ => return Err(format!("invalid point {point}")),
        }
    }
    Ok(Value::Array(Vec::new()))
}

#[cfg(test)]
mod tests;
