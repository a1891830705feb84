//! gRPC through weir to `protocol: h2` upstreams: HTTP/2 over TLS with ALPN `h2`, the upstream's
//! certificate verified against the version's `tls.caFile` and `serverName` (or the upstream's own
//! host). The tonic echo service of the h2c tests, served over rustls with certificates from a
//! throw-away rcgen CA; weir started from a config file (so the CA file is read by the control
//! plane as in production).

#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{ProstCodec, Streaming};
use tonic::transport::server::Connected;
use tonic::Code;

use super::{client, unary, Call, Echo, Reply, CHAT};
use crate::admin;
use crate::weir::{fill, Options, Weir, HEADER};

/// A throw-away CA (its own, so a test can make an expired leaf).
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `names` (DNS names or IP literals); expired when `expired`.
    fn leaf(&self, names: &[&str], expired: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// A TLS stream tonic can serve (it wants `Connected`).
struct Tls(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl Connected for Tls {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for Tls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A tonic echo server over TLS on `127.0.0.1:0`, presenting `leaf`, offering `alpn`.
struct TlsServer {
    addr: SocketAddr,
    echo: Echo,
    /// Completed TLS handshakes (connections weir made).
    handshakes: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl TlsServer {
    async fn start(version: &'static str, leaf: &(String, String), alpn: &[&[u8]]) -> TlsServer {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(leaf.0.as_bytes())
            .collect::<Result<_, _>>()
            .expect("the leaf PEM");
        let key = PrivateKeyDer::from_pem_slice(leaf.1.as_bytes()).expect("the key PEM");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a server config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let handshakes = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel::<std::io::Result<Tls>>(16);
        let counted = handshakes.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, tx, counted) = (acceptor.clone(), tx.clone(), counted.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        counted.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(Ok(Tls(tls))).await;
                    }
                });
            }
        });
        let echo = Echo {
            version,
            flaky: Arc::default(),
            broken: Arc::default(),
            probes: Arc::default(),
            calls: Arc::default(),
        };
        let (stop, stopped) = oneshot::channel();
        let service = echo.clone();
        let serve = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(ReceiverStream::new(rx), async {
                    let _ = stopped.await;
                })
                .await;
        });
        TlsServer {
            addr,
            echo,
            handshakes,
            stop: Some(stop),
            tasks: vec![accept, serve],
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Starts weir on `yaml` in a folder that holds `files` (name, contents) first.
async fn weir_with(yaml: &str, files: &[(&str, &str)]) -> Weir {
    let dir = tempfile::tempdir().expect("a temporary folder");
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).expect("write a file");
    }
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, yaml).expect("write the config");
    Weir::start_at(dir, path, Options::default()).await
}

fn series(service: &str, version: &str, kind: &str) -> String {
    format!(
        r#"weir_upstream_errors_total{{service="{service}",version="{version}",kind="{kind}"}}"#
    )
}

/// Unary calls and a bidirectional stream through weir to a TLS (`h2`) upstream verified with
/// `caFile` and `serverName`; trailers and `grpc-status` delivered and counted; every call of the
/// worker shares one TLS connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_bidi_streaming_reach_an_h2_upstream_over_tls() {
    let ca = Ca::new("weir upstream test CA");
    let v1 = TlsServer::start("v1", &ca.leaf(&["api.internal"], false), &[b"h2"]).await;
    let yaml = fill(
        &format!(
            r#"{HEADER}services:
  - name: shop
    stable: {{version: v1, upstreams: ["${{v1}}"], protocol: h2, tls: {{caFile: ca.pem, serverName: api.internal}}}}
"#
        ),
        &[("v1", v1.addr)],
    );
    let weir = weir_with(&yaml, &[("ca.pem", &ca.pem())]).await;
    let mut grpc = client(weir.addr()).await;

    const N: usize = 200;
    let started = tokio::time::Instant::now();
    for i in 0..N {
        let reply = unary(&mut grpc, &format!("call {i}"), Code::Ok)
            .await
            .expect("a unary call");
        assert_eq!(
            (reply.text, reply.version.as_str()),
            (format!("call {i}"), "v1")
        );
    }
    let unary_took = started.elapsed();
    let status = unary(&mut grpc, "bad", Code::NotFound)
        .await
        .expect_err("an error");
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "as asked")
    );
    assert_eq!(
        status.metadata().get("x-trailer").map(|v| v.to_str().ok()),
        Some(Some("kept"))
    );
    let status = unary(&mut grpc, "bad", Code::Unavailable)
        .await
        .expect_err("an error");
    assert_eq!(status.code(), Code::Unavailable);

    // Bidirectional streaming in lock step, ending with a status in the trailers.
    let (tx, rx) = mpsc::channel(1);
    grpc.ready().await.expect("ready");
    let mut replies: Streaming<Reply> = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(CHAT),
            ProstCodec::default(),
        )
        .await
        .expect("the stream opens")
        .into_inner();
    const M: usize = 100;
    let started = tokio::time::Instant::now();
    for i in 0..M {
        tx.send(Call {
            text: format!("message {i}"),
            code: 0,
        })
        .await
        .expect("send");
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("the reply comes before the next call")
            .expect("a reply")
            .expect("not the end");
        assert_eq!(reply.text, format!("message {i}"));
    }
    let stream_took = started.elapsed();
    tx.send(Call {
        text: "end".into(),
        code: Code::PermissionDenied as i32,
    })
    .await
    .expect("send");
    let end = replies.message().await.expect_err("the stream's status");
    assert_eq!(end.code(), Code::PermissionDenied);
    assert_eq!(
        end.metadata().get("x-trailer").map(|v| v.to_str().ok()),
        Some(Some("kept"))
    );
    drop(tx);

    let metric = |code: u32| {
        let admin = weir.admin();
        async move {
            admin::metric(
                admin,
                &format!(
                    r#"weir_grpc_responses_total{{service="shop",version="v1",grpc_status="{code}"}}"#
                ),
            )
            .await
        }
    };
    assert_eq!(metric(0).await, Some(N as f64));
    assert_eq!(metric(5).await, Some(1.0));
    assert_eq!(metric(7).await, Some(1.0));
    assert_eq!(metric(14).await, Some(1.0), "UNAVAILABLE counted");
    assert_eq!(
        v1.handshakes.load(Ordering::Relaxed),
        1,
        "one TLS connection per upstream per worker"
    );
    assert_eq!(
        v1.echo.calls.load(Ordering::Relaxed),
        N as u64 + 2 + M as u64 + 1
    );
    eprintln!(
        "h2 over TLS (caFile + serverName): {N} unary calls in {unary_took:?} ({:.0}/s, {} \
         build, one client in sequence), {M} bidi messages in lock step in {stream_took:?}, {} \
         TLS handshake(s) to the upstream",
        N as f64 / unary_took.as_secs_f64(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        v1.handshakes.load(Ordering::Relaxed),
    );
    drop(grpc);
    weir.shutdown().await;
    v1.stop().await;
}

/// Every way an upstream's TLS can be wrong is a 502 counted as an upstream error of its version
/// (a certificate problem as `connect`, an upstream that does not speak h2 as `protocol`), never a
/// panic; and a literal IP upstream with no `serverName` is verified against its IP address SAN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_upstream_certificate_or_alpn_is_a_502_counted_against_the_version() {
    let ca = Ca::new("weir upstream test CA");
    let other = Ca::new("some other CA");
    let good = ca.leaf(&["api.internal"], false);
    let by_ip = TlsServer::start("v1", &ca.leaf(&["127.0.0.1"], false), &[b"h2"]).await;
    let named = TlsServer::start("v1", &good, &[b"h2"]).await;
    let unknown = TlsServer::start("v1", &other.leaf(&["api.internal"], false), &[b"h2"]).await;
    let expired = TlsServer::start("v1", &ca.leaf(&["api.internal"], true), &[b"h2"]).await;
    let http1_only = TlsServer::start("v1", &good, &[b"http/1.1"]).await;
    let no_alpn = TlsServer::start("v1", &good, &[]).await;
    let service = |name: &str, upstream: &str, tls: &str| {
        format!(
            "  - name: {name}\n    match: {{hosts: [{name}.example]}}\n    stable: {{version: v1, \
             upstreams: [\"${{{upstream}}}\"], protocol: h2, tls: {tls}}}\n"
        )
    };
    let with_ca = "{caFile: ca.pem, serverName: api.internal}";
    let yaml = fill(
        &format!(
            "{HEADER}services:\n{}{}{}{}{}{}{}",
            service("ip", "by_ip", "{caFile: ca.pem}"),
            service(
                "wrongname",
                "named",
                "{caFile: ca.pem, serverName: other.internal}"
            ),
            service("builtin", "named", "{serverName: api.internal}"),
            service("unknown", "unknown", with_ca),
            service("expired", "expired", with_ca),
            service("http1only", "http1_only", with_ca),
            service("noalpn", "no_alpn", with_ca),
        ),
        &[
            ("by_ip", by_ip.addr),
            ("named", named.addr),
            ("unknown", unknown.addr),
            ("expired", expired.addr),
            ("http1_only", http1_only.addr),
            ("no_alpn", no_alpn.addr),
        ],
    );
    let weir = weir_with(&yaml, &[("ca.pem", &ca.pem())]).await;
    let mut http = crate::client::Http1::connect(weir.addr()).await;

    let reply = http.get("ip.example", "/weir.test.Echo/hello").await;
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "hello from v1"),
        "an IP upstream is verified against its IP SAN"
    );
    // A WebSocket upgrade to an h2 version goes as a plain request over the TLS connection, never
    // as a cleartext HTTP/1.1 dial.
    let mut upgrade = crate::client::get("ip.example", "/weir.test.Echo/hello");
    upgrade.headers_mut().insert(
        http::header::CONNECTION,
        "upgrade".parse().expect("a value"),
    );
    upgrade
        .headers_mut()
        .insert(http::header::UPGRADE, "websocket".parse().expect("a value"));
    let reply = http.fetch(upgrade).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "hello from v1")
    );
    assert_eq!(by_ip.handshakes.load(Ordering::Relaxed), 1);

    let started = tokio::time::Instant::now();
    let cases = [
        ("wrongname", "connect"),
        ("builtin", "connect"),
        ("unknown", "connect"),
        ("expired", "connect"),
        ("http1only", "protocol"),
        ("noalpn", "protocol"),
    ];
    const TRIES: usize = 3;
    for (name, _) in cases {
        for _ in 0..TRIES {
            let reply = http.get(&format!("{name}.example"), "/").await;
            assert_eq!(reply.status, 502, "{name}: {}", reply.text());
        }
    }
    let took = started.elapsed();
    let text = admin::metrics(weir.admin()).await;
    for (name, kind) in cases {
        assert_eq!(
            crate::metrics::sample(&text, &series(name, "v1", kind)),
            Some(TRIES as f64),
            "{name}: {kind} errors\n{text}"
        );
    }
    // Still serving, and the refused servers never saw a request.
    let reply = http.get("ip.example", "/weir.test.Echo/hello").await;
    assert_eq!(reply.status, 200);
    for server in [&named, &unknown, &expired, &http1_only, &no_alpn] {
        assert_eq!(server.echo.calls.load(Ordering::Relaxed), 0);
    }
    assert_eq!(unknown.handshakes.load(Ordering::Relaxed), 0);
    eprintln!(
        "{} refused upstream TLS handshakes (wrong name, built-in roots vs a private CA, unknown \
         CA, expired, ALPN http/1.1 only, no ALPN) answered 502 and counted in {took:?}; an IP \
         upstream verified by its IP SAN",
        cases.len() * TRIES
    );
    drop(http);
    weir.shutdown().await;
    for server in [by_ip, named, unknown, expired, http1_only, no_alpn] {
        server.stop().await;
    }
}

/// A reload that changes the trusted CA (the file's contents, or `caFile` itself) takes effect on
/// the next request: a new connection verified with the new settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_ca_takes_effect_for_new_connections() {
    let ca = Ca::new("weir upstream test CA");
    let other = Ca::new("some other CA");
    let v1 = TlsServer::start("v1", &ca.leaf(&["api.internal"], false), &[b"h2"]).await;
    let config = |file: &str| {
        fill(
            &format!(
                r#"{HEADER}services:
  - name: shop
    stable: {{version: v1, upstreams: ["${{v1}}"], protocol: h2, tls: {{caFile: {file}, serverName: api.internal}}}}
"#
            ),
            &[("v1", v1.addr)],
        )
    };
    // First the wrong CA in `ca.pem`.
    let weir = weir_with(
        &config("ca.pem"),
        &[("ca.pem", &other.pem()), ("other.pem", &other.pem())],
    )
    .await;
    let mut http = crate::client::Http1::connect(weir.addr()).await;
    assert_eq!(http.get("shop.example", "/").await.status, 502);

    // The right CA written into `ca.pem`: the file watcher reloads.
    let started = tokio::time::Instant::now();
    let generation = weir.generation();
    std::fs::write(weir.dir().join("ca.pem"), ca.pem()).expect("rewrite the CA file");
    weir.wait_generation_after(generation, Duration::from_secs(10))
        .await;
    let reply = http.get("shop.example", "/weir.test.Echo/hello").await;
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "hello from v1")
    );
    let rotated = started.elapsed();
    assert_eq!(v1.handshakes.load(Ordering::Relaxed), 1);

    // `caFile` pointed at the other CA: the live connection is not reused, the new one fails.
    let generation = weir.generation();
    weir.write_atomic(&config("other.pem"));
    weir.wait_generation_after(generation, Duration::from_secs(10))
        .await;
    assert_eq!(http.get("shop.example", "/").await.status, 502);
    // And back.
    let generation = weir.generation();
    weir.write_atomic(&config("ca.pem"));
    weir.wait_generation_after(generation, Duration::from_secs(10))
        .await;
    assert_eq!(http.get("shop.example", "/").await.status, 200);
    assert_eq!(v1.handshakes.load(Ordering::Relaxed), 2);

    // An unreadable or bad CA file is refused at reload; the last good config keeps serving.
    let generation = weir.generation();
    std::fs::write(weir.dir().join("bad.pem"), "not a certificate").expect("write");
    weir.write_atomic(&config("bad.pem"));
    let rejected = async {
        loop {
            let failures = admin::metric(
                weir.admin(),
                r#"weir_config_reloads_total{result="failure"}"#,
            )
            .await;
            if failures.is_some_and(|f| f >= 1.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), rejected)
        .await
        .expect("the bad CA file is rejected");
    assert_eq!(weir.generation(), generation);
    assert_eq!(http.get("shop.example", "/").await.status, 200);
    eprintln!(
        "upstream CA rotated in place: served over a new verified connection {rotated:?} after \
         the write; caFile switched away and back: 502 then 200, 2 TLS handshakes in all; a bad \
         CA file rejected at reload"
    );
    drop(http);
    weir.shutdown().await;
    v1.stop().await;
}

/// A mirrored copy goes to an `h2` canary over TLS (the mirror speaks the canary's protocol, with
/// its verified TLS settings). Built on the data plane alone, so the CA PEM is handed over in the
/// model as the control plane does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_copy_reaches_an_h2_canary_over_tls() {
    use weir_config::{MirrorRoute, RequestMatch, StringMatch, Weight};
    use weir_proxy::routes::Policy;
    use weir_proxy::stats::TrafficKind;

    let ca = Ca::new("weir upstream test CA");
    let v1 = crate::upstream::Server::spawn("v1");
    let v2 = TlsServer::start("v2", &ca.leaf(&["api.internal"], false), &[b"h2"]).await;
    let dir = tempfile::tempdir().expect("a temporary folder");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write the CA");
    let yaml = r#"
services:
  - name: shop
    stable: {version: v1, upstreams: ["${v1}"]}
    canary: {version: v2, upstreams: ["${v2}"], protocol: h2, tls: {caFile: ca.pem, serverName: api.internal}}
"#;
    let mut model = crate::proxy::model_in(dir.path(), yaml, &[("v1", v1.addr()), ("v2", v2.addr)]);
    let canary = model.services[0].canary.as_mut().expect("a canary");
    canary.version.tls.as_mut().expect("h2 has tls").ca_pem = Some(ca.pem().into_bytes().into());
    let policy = Policy {
        weight: Weight::ZERO,
        mirror_routes: vec![MirrorRoute {
            name: "shadow".into(),
            percentage: Weight::from_percent(100.0).expect("a valid percentage"),
            any_of: vec![vec![RequestMatch::Method(StringMatch::Exact("GET".into()))]],
        }],
        ..Policy::default()
    };
    let proxy = crate::proxy::Proxy::builder(model)
        .policy("shop", policy)
        .start();
    let mut http1 = crate::client::Http1::connect(proxy.addr()).await;
    let reply = http1
        .get("shop.example.com", "/weir.test.Echo/mirror")
        .await;
    assert_eq!((reply.status.as_u16(), reply.served_by()), (200, "v1"));
    let started = tokio::time::Instant::now();
    let counts = loop {
        let counts = proxy
            .stats()
            .get_of(TrafficKind::Mirror, "shop", "v2")
            .map(|s| s.status_counts())
            .unwrap_or_default();
        if !counts.is_empty() || started.elapsed() > Duration::from_secs(10) {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(counts, [(200, 1)], "the h2 canary answered the copy");
    assert_eq!(v2.handshakes.load(Ordering::Relaxed), 1);
    eprintln!(
        "mirrored copy to the h2 (TLS) canary answered {counts:?}, counted {:?} after the primary's reply",
        started.elapsed()
    );
    proxy.shutdown().await;
    v2.stop().await;
}

/// Active health checks to an `h2` version go over TLS with the version's trust and server name:
/// a trusted upstream stays in; one whose certificate names another host fails its probes and is
/// taken out, so calls go to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_probe_an_h2_version_over_tls() {
    let ca = Ca::new("weir upstream test CA");
    let good = TlsServer::start("good", &ca.leaf(&["api.internal"], false), &[b"h2"]).await;
    let wrong = TlsServer::start("wrong", &ca.leaf(&["other.internal"], false), &[b"h2"]).await;
    let yaml = fill(
        &format!(
            r#"{HEADER}services:
  - name: shop
    stable: {{version: v1, upstreams: ["${{good}}", "${{wrong}}"], protocol: h2, tls: {{caFile: ca.pem, serverName: api.internal}}}}
    outlierDetection: {{ consecutiveFailures: 1000 }}
    healthCheck: {{ path: /weir.test.Echo/health, interval: 200ms, timeout: 200ms, unhealthyThreshold: 2, healthyThreshold: 1 }}
"#
        ),
        &[("good", good.addr), ("wrong", wrong.addr)],
    );
    let weir = weir_with(&yaml, &[("ca.pem", &ca.pem())]).await;
    let admin = weir.admin();
    let healthy = |addr: SocketAddr| {
        format!("weir_upstream_healthy{{service=\"shop\",version=\"v1\",upstream=\"{addr}\"}}")
    };
    crate::assert_eventually!(good.echo.probes.load(Ordering::Relaxed) >= 3);
    crate::assert_eventually!(crate::admin::metric(admin, &healthy(wrong.addr)).await == Some(0.0));
    // A probe slowed past its timeout by a loaded machine may flip it for one interval; it is
    // back at the next pass (`healthyThreshold: 1`).
    crate::assert_eventually!(crate::admin::metric(admin, &healthy(good.addr)).await == Some(1.0));
    assert_eq!(
        wrong.echo.probes.load(Ordering::Relaxed),
        0,
        "no probe got past the handshake"
    );
    let mut grpc = client(weir.addr()).await;
    for _ in 0..20 {
        let reply = unary(&mut grpc, "hi", Code::Ok).await.expect("served");
        assert_eq!(reply.version, "good");
    }
    eprintln!(
        "figure: h2 upstreams probed over TLS: the trusted one answered {} probes and stayed in, the one with a certificate for another name was out and got 0 of 20 calls",
        good.echo.probes.load(Ordering::Relaxed)
    );
    weir.shutdown().await;
    good.stop().await;
    wrong.stop().await;
}
