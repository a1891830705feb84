//! The access log (`--access-log`, `--access-log-format json|combined`): one line per request with
//! the version that served it, written once the response has been sent.

use std::sync::mpsc::Receiver;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::StatusCode;
use weir_config::Weight;
use weir_proxy::{AccessLog, AccessLogFormat};

use crate::client::{self, Http1};
use crate::proxy::Proxy;
use crate::upstream::Server;

/// The next line, waiting for the writer.
fn next_line(lines: &Receiver<String>) -> String {
    lines
        .recv_timeout(Duration::from_secs(10))
        .expect("an access log line")
}

fn request(path: &str, id: Option<&str>) -> http::Request<crate::body::TestBody> {
    let mut request = client::get("shop.example.com", path);
    let headers = request.headers_mut();
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static("weir-test/1.0 \"quoted\""),
    );
    headers.insert(
        header::REFERER,
        HeaderValue::from_static("https://ref.example/"),
    );
    if let Some(id) = id {
        headers.insert("x-request-id", HeaderValue::from_str(id).unwrap());
    }
    request
}

#[tokio::test]
async fn json_lines_parse_and_name_the_version_that_served_each_request() {
    let (v1, v2) = (Server::spawn("v1"), Server::spawn("v2"));
    let (log, lines) = AccessLog::channel(AccessLogFormat::Json);
    let proxy = Proxy::builder(super::shop(&v1, &v2))
        .weight("shop", Weight::from_percent(50.0).expect("a weight"))
        .access_log(log)
        .start();
    let mut conn = Http1::connect(proxy.addr()).await;
    let began = tokio::time::Instant::now();
    let mut versions = [0; 2];
    for i in 0..20 {
        let id = format!("req-{i}");
        let reply = conn.fetch(request(&format!("/p/{i}?q=1"), Some(&id))).await;
        let served = reply.served_by().to_string();
        let line = next_line(&lines);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        assert_eq!(json["version"], served.as_str(), "{line}");
        assert_eq!(json["service"], "shop");
        assert_eq!(json["status"], 200);
        assert_eq!(json["bytes_sent"], reply.body.len() as u64);
        assert_eq!(json["complete"], true);
        // The client is not a trusted proxy: its own id is replaced by weir's, which the
        // response carries and the log names.
        let returned = reply.headers["x-request-id"].to_str().expect("an id");
        assert_ne!(returned, id.as_str());
        assert_eq!(json["request_id"], returned);
        assert_eq!(json["method"], "GET");
        assert_eq!(json["path"], format!("/p/{i}?q=1"));
        assert_eq!(json["protocol"], "HTTP/1.1");
        assert_eq!(json["user_agent"], "weir-test/1.0 \"quoted\"");
        assert_eq!(json["referer"], "https://ref.example/");
        assert_eq!(json["client"], "127.0.0.1");
        assert_eq!(json["forwarded_for"], serde_json::Value::Null);
        let upstream = if served == "v1" { v1.addr() } else { v2.addr() };
        assert_eq!(json["upstream"], upstream.to_string());
        let total = json["duration_ms"].as_f64().unwrap();
        let ttfb = json["upstream_ttfb_ms"].as_f64().unwrap();
        assert!(ttfb <= total && total >= 0.0, "{line}");
        assert!(json["time"].as_str().unwrap().ends_with('Z'));
        versions[usize::from(served == "v2")] += 1;
    }
    assert_eq!(
        versions,
        [10, 10],
        "the 50% split, each line naming its version"
    );
    // Weir's own answers are logged too, without a version.
    let reply = conn.fetch(client::get("other.example.com", "/")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let json: serde_json::Value = serde_json::from_str(&next_line(&lines)).unwrap();
    assert_eq!(json["status"], 404);
    assert_eq!(json["version"], serde_json::Value::Null);
    assert_eq!(json["request_id"], serde_json::Value::Null);
    eprintln!(
        "20 JSON access lines (10 v1, 10 v2) parsed, each naming the version and upstream that served it, in {:?}",
        began.elapsed()
    );
    drop(conn);
    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn combined_lines_match_the_apache_format_with_weir_fields() {
    let (v1, v2) = (Server::spawn("v1"), Server::spawn("v2"));
    let (log, lines) = AccessLog::channel(AccessLogFormat::Combined);
    let proxy = Proxy::builder(super::shop(&v1, &v2))
        .weight("shop", Weight::FULL)
        .access_log(log)
        .start();
    let mut conn = Http1::connect(proxy.addr()).await;
    let pattern = regex::Regex::new(concat!(
        r#"^127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000\] "#,
        r#""GET /a/b\?c=d HTTP/1\.1" 200 (\d+) "https://ref\.example/" "weir-test/1\.0 \\"quoted\\"" "#,
        r#"host="shop\.example\.com" service="shop" version="v2" upstream="127\.0\.0\.1:\d+" "#,
        r#"request_id="([0-9a-f]{32})" forwarded_for="-" complete="true" "#,
        r#"duration_ms=\d+\.\d{3} upstream_ttfb_ms=\d+\.\d{3}\n$"#,
    ))
    .unwrap();
    for id in [Some("abc-123"), None] {
        let reply = conn.fetch(request("/a/b?c=d", id)).await;
        assert_eq!(reply.served_by(), "v2");
        let line = next_line(&lines);
        let captures = pattern
            .captures(&line)
            .unwrap_or_else(|| panic!("not a combined line: {line}"));
        assert_eq!(captures[1].parse::<usize>().unwrap(), reply.body.len());
        // Generated by weir (the client is not a trusted proxy), returned and logged.
        assert_eq!(&captures[2], &reply.headers["x-request-id"]);
        assert_ne!(Some(&captures[2]), id);
        eprintln!("combined: {}", line.trim_end());
    }
    drop(conn);
    proxy.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

/// An upgraded connection is logged once with its 101, and the tunnel works with the log on
/// (compression on as well: it never touches a tunnel).
#[tokio::test]
async fn upgrades_are_logged_and_tunnel_with_the_log_and_compression_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Server::builder("v1").upgrades().spawn();
    let (log, lines) = AccessLog::channel(AccessLogFormat::Json);
    let model = crate::proxy::model(
        "services:\n  - name: chat\n    match: {hosts: [\"chat.example.com\"]}\n    \
         stable: {version: v1, upstreams: [\"${up}\"]}\n    compression: {contentTypes: [\"text/*\", \"application/*\"]}\n",
        &[("up", upstream.addr())],
    );
    let proxy = Proxy::builder(model).access_log(log).start();
    let mut client = Http1::connect(proxy.addr()).await;
    let mut request = client::get("chat.example.com", "/socket");
    let headers = request.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
    headers.insert("sec-websocket-version", HeaderValue::from_static("13"));
    headers.insert(
        "sec-websocket-key",
        HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
    );
    let response = client.send(request).await.expect("a response");
    assert_eq!(response.status(), 101);
    assert!(response.headers().get(header::CONTENT_ENCODING).is_none());
    let mut tunnel = hyper_util::rt::TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    tunnel.write_all(b"hello").await.unwrap();
    let mut echoed = [0; 5];
    tunnel.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"hello");
    let json: serde_json::Value = serde_json::from_str(&next_line(&lines)).unwrap();
    assert_eq!(json["status"], 101);
    assert_eq!(json["version"], "v1");
    eprintln!("upgrade with access log and compression on: 101 logged, tunnel echoed 5 bytes");
    drop(tunnel);
    drop(client);
    proxy.shutdown().await;
    upstream.shutdown().await;
}
