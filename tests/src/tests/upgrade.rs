//! HTTP/1.1 `Upgrade` (WebSocket-style): once the upstream agrees with a 101, bytes flow both ways
//! through weir; if it answers anything else, the client gets that answer and no tunnel.

use http::{header, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::body::pattern;
use crate::client::{self, Http1};
use crate::proxy::{self, Proxy};
use crate::upstream::Server;

fn upgrade_request() -> http::Request<crate::TestBody> {
    let mut request = client::get("chat.example.com", "/socket");
    let headers = request.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert("sec-websocket-version", HeaderValue::from_static("13"));
    headers.insert(
        "sec-websocket-key",
        HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
    );
    request
}

fn chat(upstream: &Server) -> Proxy {
    Proxy::start(proxy::model(
        r#"
services:
  - name: chat
    match: {hosts: ["chat.example.com"]}
    stable: {version: v1, upstreams: ["${up}"]}
"#,
        &[("up", upstream.addr())],
    ))
}

#[tokio::test]
async fn an_accepted_upgrade_tunnels_bytes_both_ways() {
    let upstream = Server::builder("v1").upgrades().spawn();
    let proxy = chat(&upstream);

    let mut client = Http1::connect(proxy.addr()).await;
    let response = client.send(upgrade_request()).await.expect("a response");
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()[header::UPGRADE], "websocket");
    assert!(response.headers()[header::CONNECTION]
        .to_str()
        .unwrap()
        .eq_ignore_ascii_case("upgrade"));
    let upgraded = hyper::upgrade::on(response)
        .await
        .expect("the client side upgrades");
    let mut tunnel = TokioIo::new(upgraded);

    for message in [&b"hello"[..], b"ping", b"\x00\x01binary\xff"] {
        tunnel.write_all(message).await.unwrap();
        let mut echoed = vec![0; message.len()];
        tunnel.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message);
    }

    // A payload larger than any socket buffer, written while reading the echo.
    let big = pattern(1 << 20);
    let (mut read, mut write) = tokio::io::split(tunnel);
    let writer = {
        let big = big.clone();
        tokio::spawn(async move {
            write.write_all(&big).await.unwrap();
            write
        })
    };
    let mut echoed = vec![0; big.len()];
    read.read_exact(&mut echoed).await.unwrap();
    assert!(echoed == big, "1 MiB echoed intact");
    let write = writer.await.unwrap();

    // Closing our side closes the upstream's, which closes the tunnel back to us.
    let mut tunnel = read.unsplit(write);
    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tunnel.read_to_end(&mut rest),
    )
    .await
    .expect("the tunnel closes")
    .unwrap_or(0);
    assert_eq!(n, 0);

    assert_eq!(upstream.requests(), 1);
    assert_eq!(
        proxy.version_stats("chat", "v1").status_counts(),
        vec![(101, 1)]
    );

    proxy.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_refused_upgrade_is_a_plain_answer_without_a_tunnel() {
    let upstream = Server::spawn("v1");
    let proxy = chat(&upstream);

    let mut client = Http1::connect(proxy.addr()).await;
    let response = client.send(upgrade_request()).await.expect("a response");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get(header::UPGRADE).is_none());
    let reply = client::Reply::read(response).await;
    assert_eq!(reply.text(), "v1");

    // No tunnel: the same connection still speaks HTTP.
    let reply = client.get("chat.example.com", "/after").await;
    assert_eq!((reply.status.as_u16(), reply.text()), (200, "v1"));
    assert_eq!(upstream.requests(), 2);

    proxy.shutdown().await;
    upstream.shutdown().await;
}
