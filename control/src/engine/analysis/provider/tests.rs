//! Tests of the providers: builtin stats on a paused clock, Prometheus and web against tiny
//! in-test HTTP servers on 127.0.0.1.

use crate::engine::analysis::Vars;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use weir_config::{
    Arm, BuiltinMetric, BuiltinProvider, LatencyQuantile, PrometheusProvider, WebProvider,
};
use weir_proxy::stats::Window;
use weir_proxy::Stats;

use super::{builtin, prometheus, web};
use crate::engine::analysis::{Measured, Outcome};

// === builtin ===

fn provider(metric: BuiltinMetric, window: u64, min_requests: u64) -> BuiltinProvider {
    BuiltinProvider {
        metric,
        window: Duration::from_secs(window),
        arm: Arm::Canary,
        min_requests,
        traffic: weir_config::Traffic::Primary,
    }
}

/// The number in an outcome, with its requests and window.
fn number(outcome: &Outcome) -> (f64, Option<u64>, Option<Duration>) {
    match outcome {
        Outcome::Value(Measured {
            value,
            requests,
            window,
            ..
        }) => (
            value
                .as_f64()
                .unwrap_or_else(|| panic!("not a number: {value}")),
            *requests,
            *window,
        ),
        other => panic!("expected a value, got {other:?}"),
    }
}

fn assert_close(actual: f64, expected: f64) {
    assert!((actual - expected).abs() < 1e-9, "{actual} != {expected}");
}

#[tokio::test(start_paused = true)]
async fn builtin_measures_the_window() {
    let stats = Stats::new();
    let canary = stats.handle("svc", "v2");
    // Before the window starts: not counted.
    for _ in 0..50 {
        canary.record(503, Duration::from_secs(2));
    }
    let mut window = Window::new(stats.clone(), Duration::from_secs(120));
    let t0 = Instant::now();
    window.sample(t0);
    for _ in 0..90 {
        canary.record(200, Duration::from_millis(15));
    }
    for _ in 0..10 {
        canary.record(503, Duration::from_millis(400));
    }
    let now = t0 + Duration::from_secs(30);
    let measure = |metric| builtin(&provider(metric, 30, 20), &window, "svc", "v2", now);

    let thirty = Some(Duration::from_secs(30));
    let (success, requests, covered) = number(&measure(BuiltinMetric::SuccessRate));
    assert_close(success, 0.9);
    assert_eq!((requests, covered), (Some(100), thirty));
    assert_close(number(&measure(BuiltinMetric::ErrorRate)).0, 0.1);
    assert_close(number(&measure(BuiltinMetric::RequestRate)).0, 100.0 / 30.0);
    // 90 requests in (10ms, 15ms], 10 in (300ms, 500ms]: Prometheus-style interpolation.
    let p99 = BuiltinMetric::LatencyQuantile(LatencyQuantile::P99);
    assert_close(number(&measure(p99)).0, 0.3 + 0.2 * 0.9);
    let p50 = BuiltinMetric::LatencyQuantile(LatencyQuantile::P50);
    assert_close(number(&measure(p50)).0, 0.01 + 0.005 * (50.0 / 90.0));
}

#[tokio::test(start_paused = true)]
async fn builtin_uses_the_covered_part_of_a_young_window() {
    let stats = Stats::new();
    let canary = stats.handle("svc", "v2");
    let mut window = Window::new(stats.clone(), Duration::from_secs(120));
    let t0 = Instant::now();
    window.sample(t0);
    for _ in 0..60 {
        canary.record(200, Duration::from_millis(5));
    }
    // A 60s window only 20s old: measured over 20s.
    let now = t0 + Duration::from_secs(20);
    let outcome = builtin(
        &provider(BuiltinMetric::RequestRate, 60, 20),
        &window,
        "svc",
        "v2",
        now,
    );
    let (rate, requests, covered) = number(&outcome);
    assert_close(rate, 3.0);
    assert_eq!(
        (requests, covered),
        (Some(60), Some(Duration::from_secs(20)))
    );
}

#[tokio::test(start_paused = true)]
async fn builtin_without_enough_requests_is_no_data() {
    let stats = Stats::new();
    let canary = stats.handle("svc", "v2");
    let mut window = Window::new(stats.clone(), Duration::from_secs(120));
    let t0 = Instant::now();
    window.sample(t0);
    for _ in 0..12 {
        canary.record(200, Duration::from_millis(5));
    }
    let now = t0 + Duration::from_secs(30);
    let outcome = builtin(
        &provider(BuiltinMetric::SuccessRate, 30, 20),
        &window,
        "svc",
        "v2",
        now,
    );
    assert_eq!(
        outcome,
        Outcome::NoData("12 requests in 30s, fewer than minRequests 20".to_string())
    );
    // With minRequests 0 a rate is still a number, a ratio of nothing is not.
    stats.handle("svc", "v3");
    window.sample(now);
    let later = now + Duration::from_secs(30);
    let rate = builtin(
        &provider(BuiltinMetric::RequestRate, 30, 0),
        &window,
        "svc",
        "v3",
        later,
    );
    assert_eq!(number(&rate).0, 0.0);
    let ratio = builtin(
        &provider(BuiltinMetric::SuccessRate, 30, 0),
        &window,
        "svc",
        "v3",
        later,
    );
    assert_eq!(ratio, Outcome::NoData("no requests in 30s".to_string()));
}

#[tokio::test(start_paused = true)]
async fn builtin_without_samples_is_no_data() {
    let stats = Stats::new();
    stats
        .handle("svc", "v2")
        .record(200, Duration::from_millis(5));
    let window = Window::new(stats.clone(), Duration::from_secs(120));
    let now = Instant::now();
    for version in ["v2", "never-seen"] {
        let outcome = builtin(
            &provider(BuiltinMetric::SuccessRate, 30, 0),
            &window,
            "svc",
            version,
            now,
        );
        assert!(
            matches!(outcome, Outcome::NoData(_)),
            "{version}: {outcome:?}"
        );
    }
}

// === test servers ===

/// A request as a test server saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    uri: hyper::Uri,
    headers: hyper::HeaderMap,
    body: String,
}

/// What a test server answers: a status and a body, or nothing ever.
type Reply = Option<(u16, String)>;

/// Serves `reply` on 127.0.0.1 (an OS-chosen port) until the test ends; every request is sent
/// on the returned channel.
async fn serve(reply: Reply) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
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
                        let Some((status, body)) = reply.as_ref().clone() else {
                            return std::future::pending().await;
                        };
                        let response = hyper::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
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

/// An address nothing listens on.
async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local addr")
}

fn args() -> Vars {
    Vars {
        args: [("service".to_string(), "shop".to_string())].into(),
        service: "shop".into(),
        stable_version: "v1".into(),
        canary_version: "v2".into(),
    }
}

fn expect_error(outcome: &Outcome, needle: &str) {
    match outcome {
        Outcome::Error(message) => {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}")
        }
        other => panic!("expected an error containing {needle:?}, got {other:?}"),
    }
}

// === prometheus ===

fn prom(addr: SocketAddr, timeout: Duration) -> PrometheusProvider {
    PrometheusProvider {
        address: format!("http://{addr}/"),
        query: "sum(rate(http_requests_total{service=\"{{args.service}}\",code!~\"5..\"}[1m])) / sum(rate(http_requests_total{service=\"{{ args.service }}\"}[1m]))".to_string(),
        timeout,
        headers: Vec::new(),
        bearer_token_file: None,
        basic_auth: None,
        insecure_skip_verify: false,
    }
}

async fn prom_reply(status: u16, body: &str) -> Outcome {
    let (addr, _seen) = serve(Some((status, body.to_string()))).await;
    prometheus(&prom(addr, Duration::from_secs(5)), &args()).await
}

#[tokio::test]
async fn prometheus_vector_with_one_sample() {
    let body = r#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"service":"shop"},"value":[1700000000.123,"0.995"]}]}}"#;
    let (addr, mut seen) = serve(Some((200, body.to_string()))).await;
    let outcome = prometheus(&prom(addr, Duration::from_secs(5)), &args()).await;
    assert_eq!(outcome, Outcome::Value(Measured::value(json!([0.995]))));
    let request = seen.recv().await.expect("a request");
    assert_eq!(request.method, "GET");
    assert_eq!(request.uri.path(), "/api/v1/query");
    let query: Vec<(String, String)> =
        form_urlencoded::parse(request.uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    assert_eq!(
        query,
        [(
            "query".to_string(),
            "sum(rate(http_requests_total{service=\"shop\",code!~\"5..\"}[1m])) / sum(rate(http_requests_total{service=\"shop\"}[1m]))".to_string()
        )]
    );
}

#[tokio::test]
async fn prometheus_vectors_and_scalars() {
    let several = r#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"NaN"]},{"metric":{"a":"3"},"value":[1,"+Inf"]}]}}"#;
    assert_eq!(
        prom_reply(200, several).await,
        Outcome::Value(Measured::value(json!([1.0, f64::MAX])))
    );
    let scalar =
        r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"42"]}}"#;
    assert_eq!(
        prom_reply(200, scalar).await,
        Outcome::Value(Measured::value(json!(42.0)))
    );
}

#[tokio::test]
async fn prometheus_empty_is_an_empty_result_and_nan_is_no_data() {
    // As in Argo, an empty vector is `result == []` for the conditions.
    let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
    assert_eq!(
        prom_reply(200, empty).await,
        Outcome::Value(Measured::value(json!([])))
    );
    let nan = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
    assert!(matches!(prom_reply(200, nan).await, Outcome::NoData(_)));
    let nan_scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#;
    assert!(matches!(
        prom_reply(200, nan_scalar).await,
        Outcome::NoData(_)
    ));
}

#[tokio::test]
async fn prometheus_failures_are_errors() {
    let bad_query =
        r#"{"status":"error","errorType":"bad_data","error":"parse error at char 5: unexpected"}"#;
    expect_error(&prom_reply(400, bad_query).await, "bad_data");
    expect_error(&prom_reply(400, bad_query).await, "parse error at char 5");
    expect_error(&prom_reply(500, "internal trouble").await, "HTTP 500");
    expect_error(
        &prom_reply(500, "internal trouble").await,
        "internal trouble",
    );
    expect_error(&prom_reply(200, "{not json").await, "invalid body");
    expect_error(
        &prom_reply(200, r#"{"status":"success"}"#).await,
        "without data",
    );
    let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
    expect_error(&prom_reply(200, matrix).await, "matrix");
    let garbage = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"abc"]}]}}"#;
    expect_error(&prom_reply(200, garbage).await, "invalid sample value");
}

#[tokio::test]
async fn prometheus_slow_or_unreachable_is_an_error() {
    let (addr, mut seen) = serve(None).await;
    let outcome = prometheus(&prom(addr, Duration::from_millis(200)), &args()).await;
    expect_error(&outcome, "no response within");
    assert!(
        seen.recv().await.is_some(),
        "the request reached the server"
    );
    let outcome = prometheus(&prom(refused_addr().await, Duration::from_secs(5)), &args()).await;
    expect_error(&outcome, "prometheus at http://127.0.0.1:");
}

// === web ===

fn get(url: String, json_path: Option<&str>) -> WebProvider {
    WebProvider {
        url,
        method: "GET".to_string(),
        headers: Vec::new(),
        body: None,
        timeout: Duration::from_secs(5),
        json_path: json_path.map(str::to_string),
    }
}

async fn web_reply(status: u16, body: &str, json_path: Option<&str>) -> Outcome {
    let (addr, _seen) = serve(Some((status, body.to_string()))).await;
    web(&get(format!("http://{addr}/health"), json_path), &args()).await
}

#[tokio::test]
async fn web_without_json_path_is_the_status_code() {
    assert_eq!(
        web_reply(200, "", None).await,
        Outcome::Value(Measured::value(json!(200)))
    );
    // Even an error status: the condition decides.
    assert_eq!(
        web_reply(503, "down", None).await,
        Outcome::Value(Measured::value(json!(503)))
    );
}

#[tokio::test]
async fn web_json_path_finds_values() {
    let body = r#"{"status":"healthy","data":{"value":0.97,"checks":[{"ok":true}]}}"#;
    let found = |path: &'static str| async move { web_reply(200, body, Some(path)).await };
    assert_eq!(
        found("$.status").await,
        Outcome::Value(Measured::value(json!("healthy")))
    );
    assert_eq!(
        found("{$.data.value}").await,
        Outcome::Value(Measured::value(json!(0.97)))
    );
    assert_eq!(
        found("$.data.checks[0].ok").await,
        Outcome::Value(Measured::value(json!(true)))
    );
    assert_eq!(
        found("$['data']").await,
        Outcome::Value(Measured::value(
            json!({"value":0.97,"checks":[{"ok":true}]})
        ))
    );
}

#[tokio::test]
async fn web_json_path_failures_are_errors() {
    expect_error(
        &web_reply(200, r#"{"a":1}"#, Some("$.b")).await,
        "jsonPath `$.b`: it selects nothing",
    );
    expect_error(&web_reply(200, "<html>", Some("$.a")).await, "not JSON");
    expect_error(&web_reply(503, r#"{"a":1}"#, Some("$.a")).await, "HTTP 503");
    expect_error(
        &web_reply(200, r#"{"a":1}"#, Some("$.a[")).await,
        "invalid jsonPath",
    );
}

#[tokio::test]
async fn web_json_path_selecting_several_values_gives_an_array() {
    let body = r#"{"checks":[{"ok":true},{"ok":false}]}"#;
    assert_eq!(
        web_reply(200, body, Some("$.checks[*].ok")).await,
        Outcome::Value(Measured::value(json!([true, false])))
    );
    assert_eq!(
        web_reply(200, body, Some("{$.checks[?@.ok == true].ok}")).await,
        Outcome::Value(Measured::value(json!([true])))
    );
    eprintln!("web: $.checks[*].ok gives [true, false], a filter [true]");
}

#[tokio::test]
async fn web_sends_method_headers_and_body_with_arguments() {
    let (addr, mut seen) = serve(Some((200, r#"{"ok":"yes"}"#.to_string()))).await;
    let provider = WebProvider {
        url: format!("http://{addr}/check/{{{{args.service}}}}?token=secret"),
        method: "post".to_string(),
        headers: vec![
            (
                "Authorization".to_string(),
                "Bearer {{args.service}}-token".to_string(),
            ),
            ("Content-Type".to_string(), "application/json".to_string()),
        ],
        body: Some(r#"{"service":"{{args.service}}"}"#.to_string()),
        timeout: Duration::from_secs(5),
        json_path: Some("$.ok".to_string()),
    };
    assert_eq!(
        web(&provider, &args()).await,
        Outcome::Value(Measured::value(json!("yes")))
    );
    let request = seen.recv().await.expect("a request");
    assert_eq!(request.method, "POST");
    assert_eq!(request.uri.path(), "/check/shop");
    assert_eq!(request.uri.query(), Some("token=secret"));
    assert_eq!(request.headers["authorization"], "Bearer shop-token");
    assert_eq!(request.headers["content-type"], "application/json");
    assert!(request.headers["user-agent"]
        .to_str()
        .unwrap_or_default()
        .starts_with("weir/"));
    assert_eq!(request.body, r#"{"service":"shop"}"#);
}

#[tokio::test]
async fn web_slow_unreachable_or_invalid_is_an_error() {
    let (addr, _seen) = serve(None).await;
    let mut slow = get(format!("http://{addr}/"), None);
    slow.timeout = Duration::from_millis(200);
    expect_error(&web(&slow, &args()).await, "no response within");

    let refused = get(
        format!("http://{}/?token=secret", refused_addr().await),
        None,
    );
    let outcome = web(&refused, &args()).await;
    expect_error(&outcome, "GET http://127.0.0.1:");
    if let Outcome::Error(message) = &outcome {
        assert!(!message.contains("secret"), "{message}");
    }

    expect_error(
        &web(&get("ftp://example.invalid/x".to_string(), None), &args()).await,
        "not an http",
    );
    expect_error(
        &web(&get("not a url".to_string(), None), &args()).await,
        "invalid URL",
    );
    let mut bad_method = get(format!("http://{addr}/"), None);
    bad_method.method = "GE T".to_string();
    expect_error(&web(&bad_method, &args()).await, "invalid method");
}

#[tokio::test]
async fn web_https_fails_cleanly_against_a_plain_server() {
    // No TLS server here: whether roots loaded or not, the outcome is an error, not a hang or panic.
    let (addr, _seen) = serve(Some((200, String::new()))).await;
    let outcome = web(&get(format!("https://{addr}/"), None), &args()).await;
    assert!(matches!(outcome, Outcome::Error(_)), "{outcome:?}");
}

#[tokio::test]
async fn prometheus_sends_headers_and_reads_its_secrets_at_every_query() {
    let ok = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}"#;
    let (addr, mut seen) = serve(Some((200, ok.to_string()))).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").expect("write");
    let mut provider = prom(addr, Duration::from_secs(5));
    provider.headers = vec![
        (
            "X-Scope-OrgID".into(),
            "{{service}}-{{canary.version}}".into(),
        ),
        ("X-Plain".into(), "yes".into()),
    ];
    provider.bearer_token_file = Some(token.clone());
    assert_eq!(
        prometheus(&provider, &args()).await,
        Outcome::Value(Measured::value(json!(1.0)))
    );
    let request = seen.recv().await.expect("a request");
    assert_eq!(request.headers["x-scope-orgid"], "shop-v2");
    assert_eq!(request.headers["x-plain"], "yes");
    assert_eq!(request.headers["authorization"], "Bearer first-token");
    // A rotated token is used by the next query, no reload needed.
    std::fs::write(&token, "second-token").expect("write");
    prometheus(&provider, &args()).await;
    let request = seen.recv().await.expect("a request");
    assert_eq!(request.headers["authorization"], "Bearer second-token");

    // Basic authentication, the password from its file.
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret\n").expect("write");
    provider.bearer_token_file = None;
    provider.basic_auth = Some(weir_config::BasicAuth {
        username: "weir".into(),
        password_file: password.clone(),
    });
    prometheus(&provider, &args()).await;
    let request = seen.recv().await.expect("a request");
    // base64("weir:s3cret")
    assert_eq!(request.headers["authorization"], "Basic d2VpcjpzM2NyZXQ=");

    // A secret file that went away is an error naming the file, and nothing is sent.
    std::fs::remove_file(&password).expect("remove");
    let outcome = prometheus(&provider, &args()).await;
    expect_error(&outcome, "cannot read");
    expect_error(&outcome, "password");
    assert!(seen.try_recv().is_err(), "no query without its credentials");
}

#[tokio::test]
async fn insecure_skip_verify_accepts_a_self_signed_prometheus_and_only_then() {
    use tokio_rustls::rustls;
    // A self-signed HTTPS "Prometheus".
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = rcgen::CertificateParams::new(vec!["prometheus.internal".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("a certificate");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("a server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|_: hyper::Request<Incoming>| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        br#"{"status":"success","data":{"resultType":"scalar","result":[1,"7"]}}"#,
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let mut provider = prom(addr, Duration::from_secs(5));
    provider.address = format!("https://{addr}");
    let outcome = prometheus(&provider, &args()).await;
    assert!(
        matches!(&outcome, Outcome::Error(why) if why.contains("certificate")),
        "verified by default: {outcome:?}"
    );
    provider.insecure_skip_verify = true;
    assert_eq!(
        prometheus(&provider, &args()).await,
        Outcome::Value(Measured::value(json!(7.0)))
    );
    server.abort();
}
