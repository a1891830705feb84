//! Metric providers: where a measurement's value comes from.
//!
//! - [`builtin`]: weir's own per-version stats over a sliding [`Window`].
//! - [`prometheus`]: a PromQL instant query.
//! - [`web`]: an HTTP request, judged on its status code or on a value in its JSON body.
//! - [`exec`]: a command, judged on its exit status (and its output's last line).
//! - [`datadog`]: a Datadog metrics query (v2 scalar query with a formula, or v1).
//!
//! Every provider answers with an [`Outcome`]: a value to judge, no data (inconclusive), or an error.

use serde::Deserialize;
use tokio::time::Instant;
use weir_config::{BuiltinMetric, BuiltinProvider, PrometheusProvider, Traffic, WebProvider};
use weir_proxy::stats::{TrafficKind, Window};

use super::json_path::JsonPath;
use super::{show_duration, substitute, Measured, Outcome, Vars};

mod datadog;
mod exec;
pub(crate) mod http;

pub use datadog::datadog;
pub use exec::exec;

/// weir's own stats for (`service`, `version`) over the provider's window ending `now`:
/// `success-rate` / `error-rate` as fractions (0..=1) of non-5xx / 5xx responses, `request-rate`
/// in requests per second over the covered window, `latency-pNN` in seconds.
///
/// With `traffic: mirror` the same measures are taken over the mirrored copies the version
/// answered (responses discarded), so a canary can be judged on shadow traffic alone.
///
/// A window not yet fully covered by samples is measured over the part that is; with no covered
/// time at all, or fewer than `minRequests` requests, the outcome is [`Outcome::NoData`].
pub fn builtin(
    p: &BuiltinProvider,
    window: &Window,
    service: &str,
    version: &str,
    now: Instant,
) -> Outcome {
    let traffic = match p.traffic {
        Traffic::Primary => TrafficKind::Primary,
        Traffic::Mirror => TrafficKind::Mirror,
    };
    let (snapshot, covered) = window.over_traffic(traffic, service, version, p.window, now);
    if covered.is_zero() {
        return Outcome::NoData(format!("no stats for {service} version {version} yet"));
    }
    let span = show_duration(covered);
    if snapshot.requests < p.min_requests {
        return Outcome::NoData(format!(
            "{} requests in {span}, fewer than minRequests {}",
            snapshot.requests, p.min_requests
        ));
    }
    let value = match p.metric {
        BuiltinMetric::SuccessRate => snapshot.success_rate(),
        BuiltinMetric::ErrorRate => snapshot.error_rate(),
        BuiltinMetric::RequestRate => Some(snapshot.requests as f64 / covered.as_secs_f64()),
        BuiltinMetric::LatencyQuantile(q) => snapshot.latency_quantile(q.fraction()),
    };
    match value.and_then(serde_json::Number::from_f64) {
        Some(number) => Outcome::Value(Measured {
            value: serde_json::Value::Number(number),
            requests: Some(snapshot.requests),
            window: Some(covered),
            failed: None,
        }),
        None => Outcome::NoData(format!("no requests in {span}")),
    }
}

/// Runs the instant query `GET {address}/api/v1/query?query=...` (the query after argument
/// substitution) within the provider's timeout.
///
/// A vector gives an array of its sample values (NaN samples dropped: all NaN, as for a rate of
/// 0/0, is no data; ±Inf becomes ±`f64::MAX`, JSON having no infinity), an empty vector is `[]`
/// (as in Argo: `default()`/`len()` conditions decide, others are inconclusive), a scalar gives a
/// number. A query error, an HTTP error status, an unreachable server, a
/// timeout or an unparsable body is an error; so are range vectors and strings.
pub async fn prometheus(p: &PrometheusProvider, args: &Vars) -> Outcome {
    let query = substitute(&p.query, args);
    let base = p.address.trim_end_matches('/');
    let encoded: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
    let url = format!("{base}/api/v1/query?query={encoded}");
    let headers = match prometheus_headers(p, args).await {
        Ok(headers) => headers,
        Err(why) => return Outcome::Error(format!("prometheus at {base}: {why}")),
    };
    let sent = if p.insecure_skip_verify {
        http::fetch_insecure("GET", &url, &headers, None, p.timeout).await
    } else {
        http::fetch("GET", &url, &headers, None, p.timeout).await
    };
    match sent {
        Ok(response) => prometheus_reply(response.status, &response.body),
        Err(error) => Outcome::Error(format!("prometheus at {base}: {error}")),
    }
}

/// The request headers of a Prometheus query: `headers` (placeholders filled), then
/// `Authorization` from `bearerTokenFile` or `basicAuth`, whose files are read now so a rotated
/// secret needs no reload. A file that cannot be read is an error naming it (never its content).
async fn prometheus_headers(
    p: &PrometheusProvider,
    args: &Vars,
) -> Result<Vec<(String, String)>, String> {
    let mut headers: Vec<(String, String)> = p
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), substitute(value, args)))
        .collect();
    let secret = |path: &std::path::Path| {
        let path = path.to_path_buf();
        async move {
            match tokio::fs::read_to_string(&path).await {
                Ok(text) => Ok(text.trim_end_matches(['\r', '\n']).to_string()),
                Err(error) => Err(format!("cannot read {}: {error}", path.display())),
            }
        }
    };
    if let Some(file) = &p.bearer_token_file {
        let token = secret(file).await?;
        headers.push(("authorization".into(), format!("Bearer {}", token.trim())));
    }
    if let Some(auth) = &p.basic_auth {
        use base64::Engine as _;
        let password = secret(&auth.password_file).await?;
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{password}", auth.username));
        headers.push(("authorization".into(), format!("Basic {encoded}")));
    }
    Ok(headers)
}

/// The body of a Prometheus API reply.
#[derive(Debug, Deserialize)]
struct Reply {
    status: String,
    data: Option<ReplyData>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

/// `data` of a query reply.
#[derive(Debug, Deserialize)]
struct ReplyData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

/// One element of an instant vector.
#[derive(Debug, Deserialize)]
struct VectorSample {
    value: (serde_json::Value, String),
}

/// Turns a Prometheus reply into an outcome.
fn prometheus_reply(status: ::http::StatusCode, body: &[u8]) -> Outcome {
    let reply = match serde_json::from_slice::<Reply>(body) {
        Ok(reply) => reply,
        Err(error) if status.is_success() => {
            return Outcome::Error(format!("prometheus answered with an invalid body: {error}"))
        }
        Err(_) => {
            return Outcome::Error(format!(
                "prometheus answered HTTP {status}: {}",
                snippet(body)
            ))
        }
    };
    if reply.status != "success" {
        return Outcome::Error(format!(
            "prometheus query failed ({}): {}",
            reply.error_type.as_deref().unwrap_or(&reply.status),
            reply.error.as_deref().unwrap_or("no error message")
        ));
    }
    if !status.is_success() {
        return Outcome::Error(format!(
            "prometheus answered HTTP {status}: {}",
            snippet(body)
        ));
    }
    let Some(data) = reply.data else {
        return Outcome::Error("prometheus answered success without data".to_string());
    };
    match data.result_type.as_str() {
        "vector" => {
            let samples = match serde_json::from_value::<Vec<VectorSample>>(data.result) {
                Ok(samples) => samples,
                Err(error) => {
                    return Outcome::Error(format!(
                        "prometheus answered an invalid vector: {error}"
                    ))
                }
            };
            if samples.is_empty() {
                // As in Argo: `result` is `[]`, and the conditions decide (see `judge`).
                return Outcome::Value(Measured::value(serde_json::Value::Array(Vec::new())));
            }
            let mut values = Vec::with_capacity(samples.len());
            for sample in &samples {
                match sample_value(&sample.value.1) {
                    Some(value) if value.is_nan() => {}
                    Some(value) => values.push(json_number(value)),
                    None => {
                        return Outcome::Error(format!(
                            "prometheus answered an invalid sample value {:?}",
                            sample.value.1
                        ))
                    }
                }
            }
            if values.is_empty() {
                return Outcome::NoData("query returned NaN (e.g. a ratio of 0/0)".to_string());
            }
            Outcome::Value(Measured::value(serde_json::Value::Array(values)))
        }
        "scalar" => {
            let sample = match serde_json::from_value::<(serde_json::Value, String)>(data.result) {
                Ok(sample) => sample,
                Err(error) => {
                    return Outcome::Error(format!(
                        "prometheus answered an invalid scalar: {error}"
                    ))
                }
            };
            match sample_value(&sample.1) {
                Some(value) if value.is_nan() => {
                    Outcome::NoData("query returned NaN (e.g. a ratio of 0/0)".to_string())
                }
                Some(value) => Outcome::Value(Measured::value(json_number(value))),
                None => Outcome::Error(format!(
                    "prometheus answered an invalid scalar value {:?}",
                    sample.1
                )),
            }
        }
        other => Outcome::Error(format!(
            "query returned a {other}; only instant vectors and scalars can be judged"
        )),
    }
}

/// A sample value as Prometheus writes it (`"0.5"`, `"NaN"`, `"+Inf"`, `"-Inf"`).
fn sample_value(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// A finite or infinite (not NaN) number as JSON, infinities clamped to the largest finite values.
fn json_number(value: f64) -> serde_json::Value {
    let value = value.clamp(f64::MIN, f64::MAX);
    serde_json::Number::from_f64(value).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// Sends the provider's HTTP request (URL, header values and body after argument substitution)
/// within its timeout.
///
/// Without `jsonPath` the result is the status code as a number, whatever it is (the condition
/// decides, e.g. `result == 200`). With `jsonPath` the result is what the path selects (see
/// [`JsonPath::find`]: the value of a singular path, the array of values of any other); a non-2xx
/// status, a body that is not JSON or a singular path that selects nothing is an error. An
/// unreachable server or a timeout is always an error.
pub async fn web(p: &WebProvider, args: &Vars) -> Outcome {
    let url = substitute(&p.url, args);
    let shown = without_query(&url);
    let path = match p.json_path.as_deref().map(JsonPath::parse).transpose() {
        Ok(path) => path,
        Err(error) => return Outcome::Error(error.to_string()),
    };
    let headers: Vec<(String, String)> = p
        .headers
        .iter()
        .map(|(name, value)| (substitute(name, args), substitute(value, args)))
        .collect();
    let body = p.body.as_deref().map(|body| substitute(body, args));
    let response = match http::fetch(&p.method, &url, &headers, body, p.timeout).await {
        Ok(response) => response,
        Err(error) => return Outcome::Error(format!("{} {shown}: {error}", p.method)),
    };
    let Some(path) = path else {
        return Outcome::Value(Measured::value(response.status.as_u16().into()));
    };
    if !response.status.is_success() {
        return Outcome::Error(format!(
            "{} {shown} answered HTTP {}: {}",
            p.method,
            response.status,
            snippet(&response.body)
        ));
    }
    let document = match serde_json::from_slice::<serde_json::Value>(&response.body) {
        Ok(document) => document,
        Err(error) => {
            return Outcome::Error(format!(
                "{} {shown}: the response body is not JSON ({error}): {}",
                p.method,
                snippet(&response.body)
            ))
        }
    };
    match path.find(&document) {
        Ok(value) => Outcome::Value(Measured::value(value)),
        Err(why) => Outcome::Error(format!("jsonPath `{path}`: {why}")),
    }
}

/// A URL for messages, without its query string (which may carry credentials).
fn without_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(before, _)| before)
}

/// The start of a body for messages, on one line.
fn snippet(body: &[u8]) -> String {
    const LIMIT: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    let mut line: String = text.chars().take(LIMIT).collect();
    line = line.replace(['\n', '\r'], " ");
    if text.chars().count() > LIMIT {
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests;
