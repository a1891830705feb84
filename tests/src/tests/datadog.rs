//! The datadog provider in a rollout, against a stand-in for Datadog's API on 127.0.0.1 that
//! checks each request as the real API would (path, method, key headers, the v2 scalar body: its
//! type, `from` < `to` spanning the interval, the queries' names, data source and aggregator,
//! the formula naming only those queries) and answers in the real API's shape: 403 for wrong
//! keys, 400 `{"errors": [...]}` for a malformed request, else a scalar response whose formula
//! column is the canary's error percentage. The formula's value decides: `v2` (0.4%) is promoted,
//! `bad` (7.5%) is rolled back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use weir_control::demo::backend::Backend;
use weir_control::engine::rollout::Phase;

use crate::weir::{Weir, HEADER};

const API_KEY: &str = "dd-api-key-0123456789abcdef";
const APP_KEY: &str = "dd-app-key-0123456789abcdef0123";

/// The stand-in: what it received and refused.
#[derive(Default)]
struct Seen {
    /// Well-formed queries answered, by the canary version they asked about.
    answered: Mutex<Vec<String>>,
    /// Requests refused, with why.
    refused: Mutex<Vec<String>>,
    total: AtomicUsize,
}

/// Checks a request as Datadog's `POST /api/v2/query/scalar` does; the version its queries
/// select, or why it is refused (status, reason).
fn check(
    method: &http::Method,
    path: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<String, (u16, String)> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("dd-api-key") != Some(API_KEY) || header("dd-application-key") != Some(APP_KEY) {
        return Err((403, "Forbidden".into()));
    }
    if method != http::Method::POST || path != "/api/v2/query/scalar" {
        return Err((404, format!("no route for {method} {path}")));
    }
    if header("content-type") != Some("application/json") {
        return Err((415, "Unsupported Media Type".into()));
    }
    let bad = |why: &str| Err((400, why.to_string()));
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return bad("invalid JSON");
    };
    let data = &body["data"];
    if data["type"] != "scalar_request" {
        return bad("data.type must be scalar_request");
    }
    let attributes = &data["attributes"];
    let (Some(from), Some(to)) = (attributes["from"].as_u64(), attributes["to"].as_u64()) else {
        return bad("from and to must be integers (ms)");
    };
    let now = u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits");
    if from >= to || to - from != 120_000 || to > now + 1_000 || now - to > 60_000 {
        return bad(&format!(
            "from {from} to {to} is not the last 2m (now {now})"
        ));
    }
    let Some(queries) = attributes["queries"].as_array().filter(|q| !q.is_empty()) else {
        return bad("queries must be a non-empty list");
    };
    let mut names = Vec::new();
    let mut version = None;
    for query in queries {
        let (Some(name), Some(text)) = (query["name"].as_str(), query["query"].as_str()) else {
            return bad("each query needs a name and a query");
        };
        if query["data_source"] != "metrics" || query["aggregator"] != "sum" {
            return bad("data_source must be metrics, aggregator sum (as configured)");
        }
        // The built-in variables were substituted: `version:v2`, never `{{canary.version}}`.
        if text.contains("{{") || !text.contains("service:checkout") {
            return bad(&format!("unsubstituted query {text}"));
        }
        version = text
            .split("version:")
            .nth(1)
            .map(|rest| rest.split(['}', ',']).next().unwrap_or("").to_string());
        names.push(name.to_string());
    }
    let formulas = attributes["formulas"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let [formula] = formulas.as_slice() else {
        return bad("one formula expected");
    };
    let formula = formula["formula"].as_str().unwrap_or("");
    for word in formula.split(|c: char| !c.is_ascii_alphanumeric() && c != '_') {
        if word.starts_with(|c: char| c.is_ascii_alphabetic()) && !names.iter().any(|n| n == word) {
            return bad(&format!("formula names {word}, not a query"));
        }
    }
    version.ok_or((400, "no version in the queries".into()))
}

/// Serves the stand-in until the test ends.
async fn stand_in(seen: Arc<Seen>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        seen.total.fetch_add(1, Ordering::Relaxed);
                        let (status, answer) = match check(
                            &parts.method,
                            parts.uri.path(),
                            &parts.headers,
                            &body,
                        ) {
                            Ok(version) => {
                                let value = if version == "bad" { 7.5 } else { 0.4 };
                                seen.answered.lock().expect("lock").push(version);
                                (
                                    200,
                                    json!({"data": {"type": "scalar_response", "attributes": {"columns": [
                                            {"name": "a / b * 100", "type": "number", "values": [value],
                                             "meta": {"unit": null}}]}}}),
                                )
                            }
                            Err((status, why)) => {
                                seen.refused.lock().expect("lock").push(why.clone());
                                (status, json!({"errors": [why]}))
                            }
                        };
                        let response = hyper::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(answer.to_string())))
                            .expect("response");
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn config(
    stable: (&str, &Backend),
    canary: (&str, &Backend),
    datadog: SocketAddr,
    keys: &std::path::Path,
) -> String {
    format!(
        r#"{HEADER}services:
  - name: checkout
    match: {{hosts: ["*"]}}
    stable: {{version: {}, upstreams: ["{}"]}}
    canary: {{version: {}, upstreams: ["{}"]}}
    strategy:
      canary:
        steps:
          - setWeight: 20
          - analysis:
              templates: [{{templateName: error-rate}}]
          - setWeight: 100
analysisTemplates:
  - name: error-rate
    metrics:
      - name: errors
        successCondition: default(result, 0) < 1
        provider:
          datadog:
            address: http://{datadog}
            interval: 2m
            aggregator: sum
            queries:
              a: "sum:trace.http.request.errors{{service:{{{{service}}}},version:{{{{canary.version}}}}}}.as_count()"
              b: "sum:trace.http.request.hits{{service:{{{{service}}}},version:{{{{canary.version}}}}}}.as_count()"
            formula: "a / b * 100"
            apiKeyFile: {}
            appKeyFile: {}
"#,
        stable.0,
        stable.1.addr(),
        canary.0,
        canary.1.addr(),
        keys.join("api").display(),
        keys.join("app").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_formulas_value_promotes_or_rolls_back() {
    let keys = tempfile::tempdir().expect("a temporary folder");
    std::fs::write(keys.path().join("api"), format!("{API_KEY}\n")).expect("write");
    std::fs::write(keys.path().join("app"), APP_KEY).expect("write");
    let seen = Arc::new(Seen::default());
    let datadog = stand_in(Arc::clone(&seen)).await;
    let v1 = Backend::bind("v1").expect("bind");
    let v2 = Backend::bind("v2").expect("bind");
    let bad = Backend::bind("bad").expect("bind");

    // 1. 0.4% errors: promoted.
    let started = tokio::time::Instant::now();
    let weir = Weir::start(&config(("v1", &v1), ("v2", &v2), datadog, keys.path())).await;
    let done = weir
        .wait_until("checkout", Duration::from_secs(20), "promotion", |s| {
            s.phase != Phase::Progressing
        })
        .await;
    assert_eq!(done.phase, Phase::Healthy, "{}", done.message);
    assert_eq!(done.stable_version, "v2");
    let promoted_in = started.elapsed();

    // 2. 7.5% errors: rolled back to v2, the message giving the value and the condition.
    weir.write_atomic(&config(("v2", &v2), ("bad", &bad), datadog, keys.path()));
    let aborted = weir
        .wait_until("checkout", Duration::from_secs(20), "the rollback", |s| {
            s.canary_version.as_deref() == Some("bad") && s.phase != Phase::Progressing
        })
        .await;
    assert_eq!(aborted.phase, Phase::Degraded, "{}", aborted.message);
    assert_eq!(aborted.canary_weight, 0.0);
    assert_eq!(aborted.stable_version, "v2");
    assert!(aborted.message.contains("7.5"), "{}", aborted.message);

    let refused = seen.refused.lock().expect("lock").clone();
    assert!(refused.is_empty(), "the stand-in refused {refused:?}");
    let answered = seen.answered.lock().expect("lock").clone();
    assert_eq!(
        answered,
        ["v2", "bad"],
        "one query per analysis, for the canary"
    );
    eprintln!(
        "datadog stand-in: {} well-formed v2 queries, 0 refused; v2 (0.4%) promoted in {:.1}s, \
         bad (7.5%) rolled back: {}",
        seen.total.load(Ordering::Relaxed),
        promoted_in.as_secs_f64(),
        aborted.message
    );
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_in_refuses_what_datadog_would() {
    // The stand-in itself: wrong keys are 403, a malformed body 400, so the test above proves
    // weir's request is well formed.
    let headers = |api: &str| {
        let mut map = http::HeaderMap::new();
        map.insert("dd-api-key", api.parse().expect("value"));
        map.insert("dd-application-key", APP_KEY.parse().expect("value"));
        map.insert("content-type", "application/json".parse().expect("value"));
        map
    };
    let post = http::Method::POST;
    let path = "/api/v2/query/scalar";
    assert_eq!(
        check(&post, path, &headers("wrong"), b"{}").map_err(|e| e.0),
        Err(403)
    );
    assert_eq!(
        check(&post, path, &headers(API_KEY), b"{}").map_err(|e| e.0),
        Err(400)
    );
    let now = u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits");
    let body = |formula: &str| {
        json!({"data": {"type": "scalar_request", "attributes": {
            "from": now - 120_000, "to": now,
            "queries": [{"name": "a", "data_source": "metrics", "aggregator": "sum",
                         "query": "sum:x{service:checkout,version:v2}"}],
            "formulas": [{"formula": formula}]}}})
        .to_string()
    };
    assert_eq!(
        check(&post, path, &headers(API_KEY), body("a * 100").as_bytes()),
        Ok("v2".to_string())
    );
    assert_eq!(
        check(&post, path, &headers(API_KEY), body("a / c").as_bytes()).map_err(|e| e.0),
        Err(400)
    );
}
