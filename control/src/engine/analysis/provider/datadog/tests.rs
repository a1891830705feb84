//! Contract tests of the Datadog provider: the request against a stand-in on 127.0.0.1 that
//! records it, and the answers in the shapes the real API gives (copied from Argo Rollouts'
//! tests and Datadog's API reference).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use weir_config::{DatadogAggregator, DatadogApiVersion, DatadogProvider};

use super::{datadog, v1_result, v2_result};
use crate::engine::analysis::condition::Condition;
use crate::engine::analysis::{judge, Measured, Outcome, Vars, Verdict};

/// A request the stand-in received.
#[derive(Debug)]
struct Seen {
    method: String,
    uri: hyper::Uri,
    headers: hyper::HeaderMap,
    body: String,
}

/// Answers `reply` (status, body) to every request on 127.0.0.1 until the test ends, sending
/// each request on the returned channel.
async fn stand_in(reply: (u16, String)) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (reply, seen_tx) = (Arc::clone(&reply), seen_tx.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    let (reply, seen_tx) = (Arc::clone(&reply), seen_tx.clone());
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let _ = seen_tx.send(Seen {
                            method: parts.method.to_string(),
                            uri: parts.uri,
                            headers: parts.headers,
                            body: String::from_utf8_lossy(&body).into_owned(),
                        });
                        let response = hyper::Response::builder()
                            .status(reply.0)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(reply.1.clone())))
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
    (addr, seen_rx)
}

const API_KEY: &str = "0123456789abcdef0123456789abcdef";
const APP_KEY: &str = "0123456789abcdef0123456789abcdef01234567";

/// The seed's provider against `addr`, its key files in `dir`.
fn provider(addr: SocketAddr, dir: &Path) -> DatadogProvider {
    std::fs::write(dir.join("api"), format!("{API_KEY}\n")).expect("write");
    std::fs::write(dir.join("app"), APP_KEY).expect("write");
    DatadogProvider {
        api_version: DatadogApiVersion::V2,
        queries: vec![
            (
                "a".into(),
                "sum:trace.http.request.errors{service:{{service}},version:{{canary.version}}}.as_count()".into(),
            ),
            (
                "b".into(),
                "sum:trace.http.request.hits{service:{{service}},version:{{canary.version}}}.as_count()".into(),
            ),
        ],
        formula: Some("(moving_rollup(a, 60, 'sum') / moving_rollup(b, 60, 'sum')) * 100".into()),
        interval: Duration::from_secs(300),
        aggregator: DatadogAggregator::Last,
        address: format!("http://{addr}/"),
        api_key_file: dir.join("api"),
        app_key_file: dir.join("app"),
        timeout: Duration::from_secs(5),
    }
}

fn vars() -> Vars {
    Vars {
        service: "checkout".into(),
        stable_version: "v1".into(),
        canary_version: "v2".into(),
        ..Vars::default()
    }
}

fn now_ms() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(now.as_millis()).expect("fits")
}

#[tokio::test]
async fn v2_sends_argos_scalar_request_and_the_formula_decides() {
    let dir = tempfile::tempdir().expect("temp dir");
    let answer = json!({"data": {"type": "scalar_response", "attributes": {"columns": [
        {"name": "a", "type": "number", "values": [3.0]},
        {"name": "formula", "type": "number", "values": [0.42], "meta": {"unit": null}}
    ]}}});
    let (addr, mut seen) = stand_in((200, answer.to_string())).await;
    let p = provider(addr, dir.path());
    let before = now_ms();
    let outcome = datadog(&p, &vars()).await;
    let after = now_ms();
    assert_eq!(outcome, Outcome::Value(Measured::value(json!(0.42))));
    let request = seen.recv().await.expect("a request");
    assert_eq!(request.method, "POST");
    assert_eq!(request.uri.path(), "/api/v2/query/scalar");
    assert_eq!(request.headers["dd-api-key"], API_KEY);
    assert_eq!(request.headers["dd-application-key"], APP_KEY);
    assert_eq!(request.headers["content-type"], "application/json");
    let body: Value = serde_json::from_str(&request.body).expect("a JSON body");
    assert_eq!(body["data"]["type"], "scalar_request");
    let attributes = &body["data"]["attributes"];
    let (from, to) = (
        attributes["from"].as_u64().expect("from in ms"),
        attributes["to"].as_u64().expect("to in ms"),
    );
    assert!(before <= to && to <= after, "{before} <= {to} <= {after}");
    assert_eq!(to - from, 300_000, "the interval, in milliseconds");
    assert_eq!(
        attributes["formulas"],
        json!([{"formula": "(moving_rollup(a, 60, 'sum') / moving_rollup(b, 60, 'sum')) * 100"}])
    );
    assert_eq!(
        attributes["queries"],
        json!([
            {"aggregator": "last", "data_source": "metrics", "name": "a",
             "query": "sum:trace.http.request.errors{service:checkout,version:v2}.as_count()"},
            {"aggregator": "last", "data_source": "metrics", "name": "b",
             "query": "sum:trace.http.request.hits{service:checkout,version:v2}.as_count()"},
        ])
    );
    // The seed's condition judges the formula's value: passes at 0.42%, fails at 1.7%.
    let condition = Condition::compile("default(result, 0) < 1").expect("compiles");
    assert_eq!(
        judge(Some(&condition), None, &outcome).0,
        Verdict::Successful
    );
    let failing = Outcome::Value(Measured::value(
        v2_result(
            &json!({"data": {"attributes": {"columns": [{"name": "formula", "type": "number", "values": [1.7]}]}}}),
            Some(&["a", "b"]),
        )
        .expect("a value"),
    ));
    assert_eq!(judge(Some(&condition), None, &failing).0, Verdict::Failed);
    eprintln!("datadog v2: POST {} with {} queries and the formula; 0.42 passes, 1.7 fails `default(result, 0) < 1`", request.uri.path(), 2);
}

#[tokio::test]
async fn v1_sends_a_query_string_with_seconds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let answer = json!({"status": "ok", "series": [{"pointlist": [[1599076435000.0, 0.5], [1599076445000.0, 0.25], [1599076455000.0, null]]}]});
    let (addr, mut seen) = stand_in((200, answer.to_string())).await;
    let mut p = provider(addr, dir.path());
    p.api_version = DatadogApiVersion::V1;
    p.queries = vec![("query".into(), "avg:errors{service:{{service}}}".into())];
    p.formula = None;
    p.interval = Duration::from_secs(600);
    assert_eq!(
        datadog(&p, &vars()).await,
        Outcome::Value(Measured::value(json!(0.25)))
    );
    let request = seen.recv().await.expect("a request");
    assert_eq!(request.method, "GET");
    assert_eq!(request.uri.path(), "/api/v1/query");
    assert_eq!(request.headers["dd-api-key"], API_KEY);
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(request.uri.query().expect("a query").as_bytes())
            .into_owned()
            .collect();
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .expect(key)
    };
    assert_eq!(get("query"), "avg:errors{service:checkout}");
    let (from, to): (u64, u64) = (
        get("from").parse().expect("n"),
        get("to").parse().expect("n"),
    );
    assert_eq!(to - from, 600);
    eprintln!("datadog v1: GET /api/v1/query from={from} to={to} (600s): last point 0.25");
}

#[tokio::test]
async fn failures_are_errors_and_a_missing_key_file_sends_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (addr, mut seen) = stand_in((403, r#"{"errors": ["Forbidden"]}"#.into())).await;
    let p = provider(addr, dir.path());
    let Outcome::Error(why) = datadog(&p, &vars()).await else {
        panic!("an error")
    };
    assert!(why.contains("refused the keys (HTTP 403"), "{why}");
    assert!(seen.recv().await.is_some());
    // A key file that cannot be read: an error naming it, no request.
    let mut missing = p.clone();
    missing.app_key_file = dir.path().join("nope");
    let Outcome::Error(why) = datadog(&missing, &vars()).await else {
        panic!("an error")
    };
    assert!(
        why.contains("cannot read the key file") && why.contains("nope"),
        "{why}"
    );
    assert!(!why.contains(API_KEY), "{why}");
    assert!(seen.try_recv().is_err(), "nothing sent");
    let (addr, _seen) = stand_in((400, r#"{"errors": ["Error parsing query"]}"#.into())).await;
    let Outcome::Error(why) = datadog(&provider(addr, dir.path()), &vars()).await else {
        panic!("an error")
    };
    assert!(
        why.contains("HTTP 400") && why.contains("Error parsing query"),
        "{why}"
    );
    eprintln!("datadog failures: 403, 400 and an unreadable key file (0 requests sent) are errors");
}

#[test]
fn v2_answers_as_argo_reads_them() {
    let names: Option<&[&str]> = None;
    let read = |body: &str| v2_result(&serde_json::from_str(body).expect("json"), names);
    // Ungrouped: the number.
    assert_eq!(
        read(r#"{"data": {"attributes": {"columns": [ {"values": [0.0006332881882246533]}]}}}"#),
        Ok(json!(0.0006332881882246533))
    );
    // No data: [] (the conditions decide).
    assert_eq!(
        read(r#"{"data": {"attributes": {"columns": [ {"values": []}]}}}"#),
        Ok(json!([]))
    );
    assert_eq!(
        read(r#"{"data": {"attributes": {"columns": []}}}"#),
        Ok(json!([]))
    );
    assert_eq!(
        read(
            r#"{"data": {"attributes": {"columns": [{"name": "q", "type": "number", "values": [null]}]}}}"#
        ),
        Ok(json!([]))
    );
    // Grouped: an array, even of one, nulls skipped.
    assert_eq!(
        read(
            r#"{"data": {"attributes": {"columns": [
            {"name": "resource_name", "type": "group", "values": [["GET /a"], ["GET /b"], ["GET /c"]]},
            {"name": "query1", "type": "number", "values": [0.01, null, 0.04]}]}}}"#
        ),
        Ok(json!([0.01, 0.04]))
    );
    assert_eq!(
        read(
            r#"{"data": {"attributes": {"columns": [
            {"name": "resource_name", "type": "group", "values": [["GET /a"]]},
            {"name": "query1", "type": "number", "values": [0.087]}]}}}"#
        ),
        Ok(json!([0.087]))
    );
    // Errors.
    for (body, needle) in [
        (
            r#"{"data": {"errors": "query exceeded the maximum allowed time range"}}"#,
            "the query failed: query exceeded",
        ),
        (
            r#"{"errors": ["Error parsing query: unexpected token"]}"#,
            "the query failed: Error parsing query",
        ),
        (
            r#"{"data": {"attributes": {"columns": [{"values": "invalid"}]}}}"#,
            "has no list of values",
        ),
        (
            r#"{"data": {"attributes": {"columns": [{"name": "query1", "type": "number", "values": [1, "oops"]}]}}}"#,
            "holds \"oops\", not a number",
        ),
        (r#"{"data": {"attributes": {"columns": 3}}}"#, "not a list"),
    ] {
        let error = read(body).expect_err(body);
        assert!(error.contains(needle), "{error}");
    }
    // With a formula, the formula's column, wherever it is.
    let body = json!({"data": {"attributes": {"columns": [
        {"name": "a", "type": "number", "values": [5]},
        {"name": "b", "type": "number", "values": [10]},
        {"name": "a / b", "type": "number", "values": [0.5]}]}}});
    assert_eq!(v2_result(&body, Some(&["a", "b"])), Ok(json!(0.5)));
    eprintln!("datadog v2: 12 answer shapes from Argo's tests and the API reference read as Argo reads them");
}

#[test]
fn v1_answers_as_argo_reads_them() {
    assert_eq!(
        v1_result(&json!({"status": "ok", "series": []})),
        Ok(json!([]))
    );
    assert_eq!(
        v1_result(&json!({"series": [{"pointlist": []}]})),
        Ok(json!([]))
    );
    assert_eq!(
        v1_result(
            &json!({"series": [{"pointlist": [[1.0, 0.1], [2.0, 0.3]]}, {"pointlist": [[1.0, 9]]}]})
        ),
        Ok(json!(0.3))
    );
    let error =
        v1_result(&json!({"status": "error", "error": "Rate limit"})).expect_err("an error");
    assert!(error.contains("Rate limit"), "{error}");
}

#[tokio::test]
async fn an_empty_answer_is_judged_like_an_empty_prometheus_vector() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (addr, _seen) = stand_in((
        200,
        r#"{"data": {"attributes": {"columns": [ {"values": []}]}}}"#.into(),
    ))
    .await;
    let outcome = datadog(&provider(addr, dir.path()), &vars()).await;
    assert_eq!(outcome, Outcome::Value(Measured::value(json!([]))));
    let with_default = Condition::compile("default(result, 0) < 0.05").expect("compiles");
    let bad_default = Condition::compile("default(result, 1) < 0.05").expect("compiles");
    let plain = Condition::compile("result < 0.05").expect("compiles");
    assert_eq!(
        judge(Some(&with_default), None, &outcome).0,
        Verdict::Successful
    );
    assert_eq!(judge(Some(&bad_default), None, &outcome).0, Verdict::Failed);
    let (verdict, why) = judge(Some(&plain), None, &outcome);
    assert_eq!(verdict, Verdict::Inconclusive);
    assert!(why.starts_with("the query returned nothing"), "{why}");
    eprintln!("datadog no data: [] → default(result, 0) passes, default(result, 1) fails, result < 0.05 inconclusive");
}
