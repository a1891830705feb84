//! Graceful shutdown: requests in flight finish, new connections are refused, idle connections are
//! closed, and `wait` returns without running into the drain timeout.

use std::time::Duration;

use tokio::time::Instant;

use crate::client::{self, tcp_refused, Http1, Http2};
use crate::proxy::{self, Proxy};
use crate::upstream::Server;

fn slow_proxy(upstream: &Server) -> Proxy {
    Proxy::builder(proxy::model(
        r#"
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${up}"]}
"#,
        &[("up", upstream.addr())],
    ))
    .drain_timeout(Duration::from_secs(5))
    .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_request_completes_and_new_connections_are_refused() {
    let slow = Server::builder("v1")
        .delay(Duration::from_millis(500))
        .spawn();
    let proxy = slow_proxy(&slow);
    let addr = proxy.addr();

    let in_flight = tokio::spawn(async move {
        let mut client = Http1::connect(addr).await;
        let reply = client.get("shop.example.com", "/").await;
        (reply, client)
    });
    assert_eventually!(
        slow.requests() == 1,
        "the request reached the slow upstream"
    );

    let start = Instant::now();
    proxy.begin_shutdown();
    assert_eventually!(
        tcp_refused(addr).await,
        "new connections are refused after shutdown"
    );

    let (reply, client) = in_flight.await.expect("the in-flight request task");
    assert_eq!((reply.status.as_u16(), reply.text()), (200, "v1"));
    assert_eventually!(client.is_closed(), "the drained connection is closed");

    proxy.shutdown().await;
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "wait returned after the in-flight request, not at the 5 s drain timeout: {elapsed:?}"
    );
    slow.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_http2_stream_completes() {
    let slow = Server::builder("v1")
        .delay(Duration::from_millis(500))
        .spawn();
    let proxy = slow_proxy(&slow);

    let h2 = Http2::connect(proxy.addr()).await;
    let sender = h2.sender();
    let in_flight = tokio::spawn(client::fetch_h2(
        sender,
        client::get_url("http://shop.example.com/"),
    ));
    assert_eventually!(slow.requests() == 1, "the stream reached the slow upstream");

    let start = Instant::now();
    proxy.begin_shutdown();
    let reply = in_flight.await.expect("the in-flight stream task");
    assert_eq!((reply.status.as_u16(), reply.text()), (200, "v1"));

    // After GOAWAY the connection takes no new streams.
    let mut sender = h2.sender();
    assert_eventually!(
        match sender.ready().await {
            Err(_) => true,
            Ok(()) => sender
                .send_request(client::get_url("http://shop.example.com/"))
                .await
                .is_err(),
        },
        "the connection refuses new streams after shutdown"
    );

    proxy.shutdown().await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(slow.requests(), 1);
    slow.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_hold_up_shutdown() {
    let upstream = Server::spawn("v1");
    let proxy = slow_proxy(&upstream);
    let mut h1 = Http1::connect(proxy.addr()).await;
    assert_eq!(h1.get("shop.example.com", "/").await.status, 200);
    let h2 = Http2::connect(proxy.addr()).await;
    assert_eq!(
        h2.fetch(client::get_url("http://shop.example.com/"))
            .await
            .status,
        200
    );

    let start = Instant::now();
    proxy.shutdown().await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "idle connections were closed at once, not drained for {:?}",
        start.elapsed()
    );
    assert_eventually!(h1.is_closed(), "the idle HTTP/1.1 connection is closed");
    upstream.shutdown().await;
}

#[tokio::test]
async fn silent_connections_do_not_hold_up_shutdown() {
    let ca = crate::certs::TestCa::new();
    let leaf = ca.leaf(&["shop.example.com"]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    leaf.write(dir.path(), "shop");
    let upstream = Server::spawn("v1");
    let model = proxy::model_in(
        dir.path(),
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
  - name: secure
    address: 127.0.0.1:0
    tls:
      certificates: [{certFile: shop.crt, keyFile: shop.key}]
services:
  - name: shop
    match: {hosts: ["shop.example.com"]}
    stable: {version: v1, upstreams: ["${up}"]}
"#,
        &[("up", upstream.addr())],
    );
    let proxy = Proxy::builder(model)
        .tls("secure", crate::certs::material(&[&leaf]))
        .drain_timeout(Duration::from_secs(5))
        .start();

    // Connected, but no request and no TLS ClientHello.
    let plain = tokio::net::TcpStream::connect(proxy.listener_addr("public"))
        .await
        .unwrap();
    let tls = tokio::net::TcpStream::connect(proxy.listener_addr("secure"))
        .await
        .unwrap();
    // Make sure the worker has accepted both before shutting down.
    let mut h1 = Http1::connect(proxy.listener_addr("public")).await;
    assert_eq!(h1.get("shop.example.com", "/").await.status, 200);

    let start = Instant::now();
    proxy.shutdown().await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "connections without a request do not wait for the drain timeout: {:?}",
        start.elapsed()
    );
    drop((plain, tls));
    upstream.shutdown().await;
}
