//! Automatic certificates (`listeners[].tls.acme`) end to end against pebble, with real challenge
//! validation: tls-alpn-01 and http-01 issuance (the latter on a plain listener that redirects
//! everything else), state files (0600) reused on restart without a new order, renewal (new
//! serial, an old keep-alive connection unharmed) and failures (the current certificate keeps
//! serving; status, metric, back-off). Each test skips loudly when pebble is not installed.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;
use tempfile::TempDir;
use tokio::time::Instant;

use crate::admin;
use crate::client::{peer_leaf, tls_config_any_server, tls_connect, Http1};
use crate::pebble::{self, Pebble};
use crate::upstream::Server;
use crate::weir::{Options, Weir};

const DOMAIN: &str = "shop.weir.test";

/// A config with a TLS listener on pebble's `tlsPort` using ACME, and (for http-01) a plain
/// listener on pebble's `httpPort` that redirects to https.
fn config(
    pebble_dir: &str,
    ca_file: &Path,
    tls_port: u16,
    http_port: Option<u16>,
    extra_acme: &str,
    state: &Path,
    upstream: SocketAddr,
) -> String {
    let plain = match http_port {
        Some(port) => format!(
            "  - name: public\n    address: 127.0.0.1:{port}\n    redirect: {{scheme: https, code: 308}}\n"
        ),
        None => String::new(),
    };
    format!(
        r#"listeners:
{plain}  - name: public-tls
    address: 127.0.0.1:{tls_port}
    tls:
      acme:
        directory: {pebble_dir}
        email: ops@weir.test
        caFile: {ca}
{extra_acme}admin:
  address: 127.0.0.1:0
stateDir: {state}
services:
  - name: shop
    match: {{hosts: ["{DOMAIN}", "*.wild.weir.test"]}}
    stable: {{version: v1, upstreams: ["{upstream}"]}}
"#,
        ca = ca_file.display(),
        state = state.display(),
    )
}

/// `GET /api/v1/acme`'s entry for `public-tls`.
async fn acme_status(weir: &Weir) -> serde_json::Value {
    let reply = admin::get(weir.admin(), "/api/v1/acme").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["listeners"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["listener"] == "public-tls").cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// Waits until the listener's status has a certificate with a serial other than `not`.
async fn wait_for_certificate(
    weir: &Weir,
    pebble: Option<&Pebble>,
    not: Option<&str>,
    timeout: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let status = acme_status(weir).await;
        let serial = status["certificate"]["serial"].as_str();
        if status["state"] == "valid" && serial.is_some() && serial != not {
            return status;
        }
        if Instant::now() >= deadline {
            panic!(
                "no certificate after {timeout:?}: {status}\n{}",
                pebble.map(Pebble::logs).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The serial (hex, as the status shows it) of the certificate `stream`'s server presented.
fn serial(leaf: &CertificateDer<'_>) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).expect("a certificate");
    cert.raw_serial_as_string()
}

/// A TLS connection to weir for [`DOMAIN`] trusting only pebble's root, speaking HTTP/1.1.
async fn https(addr: SocketAddr, config: Arc<ClientConfig>) -> (Http1, String) {
    let stream = tls_connect(addr, config, DOMAIN).await;
    let serial = serial(&peer_leaf(&stream));
    (Http1::handshake(stream).await, serial)
}

/// [`https`], once new connections get the certificate with `serial` (the reload that installs
/// an issued certificate follows its order by a few milliseconds).
async fn https_serving(addr: SocketAddr, config: Arc<ClientConfig>, serial: &str) -> Http1 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (client, served) = https(addr, config.clone()).await;
        if served == serial {
            return client;
        }
        assert!(
            Instant::now() < deadline,
            "new connections never got {serial} (still {served})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn tls_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_a_certificate_that_a_restart_reuses() {
    if pebble::skip() {
        return;
    }
    let pebble = Pebble::start(Default::default()).await;
    let upstream = Server::spawn("v1");
    let state = TempDir::new().expect("a state folder");
    let yaml = config(
        &pebble.directory,
        &pebble.ca_file,
        pebble.tls_port,
        None,
        "        challenge: tls-alpn-01\n",
        state.path(),
        upstream.addr(),
    );
    let started = Instant::now();
    let weir = Weir::start(&yaml).await;
    // Until the first certificate, the listener serves a self-signed placeholder.
    let status = wait_for_certificate(&weir, Some(&pebble), None, Duration::from_secs(30)).await;
    let first = started.elapsed();
    let issued = status["certificate"]["serial"]
        .as_str()
        .expect("serial")
        .to_string();
    eprintln!("tls-alpn-01: first certificate issued by pebble and served in {first:?}");

    // A client trusting only pebble's root gets the issued certificate and the upstream's answer.
    let trust = pebble.client_config().await;
    let mut client = https_serving(tls_addr(pebble.tls_port), trust.clone(), &issued).await;
    let reply = client.get(DOMAIN, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.served_by(), "v1");

    // State files: 0600, in <stateDir>/acme/<listener>/.
    let dir = weir_control::acme::listener_dir(state.path(), "public-tls");
    for file in ["account.json", "cert.pem", "key.pem"] {
        let mode = std::fs::metadata(dir.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file} is {mode:o}");
    }
    let metrics = admin::metrics(weir.admin()).await;
    let expiry = crate::metrics::sample(
        &metrics,
        r#"weir_acme_certificate_expiry_seconds{listener="public-tls"}"#,
    )
    .expect("the expiry gauge");
    assert_eq!(
        expiry as u64,
        status["certificate"]["notAfter"]
            .as_u64()
            .expect("notAfter")
    );
    assert_eq!(
        crate::metrics::sample(
            &metrics,
            r#"weir_acme_orders_total{listener="public-tls",result="success"}"#
        ),
        Some(1.0)
    );
    drop(client);
    weir.shutdown().await;

    // A restart with the stored certificate serves it at once and orders nothing.
    let restarted = Instant::now();
    let weir = Weir::start(&yaml).await;
    let (mut client, served) = https(tls_addr(pebble.tls_port), trust).await;
    assert_eq!(
        served, issued,
        "the stored certificate is served after a restart"
    );
    assert_eq!(client.get(DOMAIN, "/").await.status, 200);
    let status = acme_status(&weir).await;
    assert_eq!(status["certificate"]["serial"], issued.as_str(), "{status}");
    assert_eq!(status["state"], "valid", "{status}");
    assert_eq!(
        admin::metric(
            weir.admin(),
            r#"weir_acme_orders_total{listener="public-tls",result="success"}"#
        )
        .await,
        Some(0.0),
        "no new order after a restart"
    );
    eprintln!(
        "restart: stored certificate served {:?} after start, 0 new orders",
        restarted.elapsed()
    );
    drop(client);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_is_answered_before_the_listeners_redirect() {
    if pebble::skip() {
        return;
    }
    let pebble = Pebble::start(Default::default()).await;
    let upstream = Server::spawn("v1");
    let state = TempDir::new().expect("a state folder");
    let yaml = config(
        &pebble.directory,
        &pebble.ca_file,
        pebble.tls_port,
        Some(pebble.http_port),
        "        challenge: http-01\n",
        state.path(),
        upstream.addr(),
    );
    let started = Instant::now();
    let weir = Weir::start(&yaml).await;
    let status = wait_for_certificate(&weir, Some(&pebble), None, Duration::from_secs(30)).await;
    eprintln!(
        "http-01 (plain listener redirecting to https): first certificate in {:?}",
        started.elapsed()
    );
    assert_eq!(status["challenge"], "http-01");

    // The plain listener still redirects everything else, and an unknown token is a 404 that
    // never reaches the upstream.
    let plain = tls_addr(pebble.http_port);
    let mut client = Http1::connect(plain).await;
    let reply = client.get(DOMAIN, "/cart").await;
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.header("location"),
        Some(format!("https://{DOMAIN}/cart").as_str())
    );
    let before = upstream.requests();
    let reply = client
        .get(DOMAIN, "/.well-known/acme-challenge/unknown-token")
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        upstream.requests(),
        before,
        "challenge paths never go upstream"
    );

    let trust = pebble.client_config().await;
    let serial = status["certificate"]["serial"].as_str().expect("serial");
    let mut client = https_serving(tls_addr(pebble.tls_port), trust, serial).await;
    assert_eq!(client.get(DOMAIN, "/").await.status, 200);
    drop(client);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_swaps_the_certificate_without_dropping_a_connection() {
    if pebble::skip() {
        return;
    }
    // 15 s certificates and renewBefore longer than that: "always due", so weir renews a third
    // of the way in (5 s), never in a loop.
    let pebble = Pebble::start(pebble::Options {
        validity_secs: Some(15),
        ..Default::default()
    })
    .await;
    let upstream = Server::spawn("v1");
    let state = TempDir::new().expect("a state folder");
    let yaml = config(
        &pebble.directory,
        &pebble.ca_file,
        pebble.tls_port,
        None,
        "        renewBefore: 1d\n",
        state.path(),
        upstream.addr(),
    );
    let weir = Weir::start_with(&yaml, Options::default()).await;
    let status = wait_for_certificate(&weir, Some(&pebble), None, Duration::from_secs(30)).await;
    let first = status["certificate"]["serial"]
        .as_str()
        .expect("serial")
        .to_string();
    let trust = pebble.client_config().await;
    let mut old = https_serving(tls_addr(pebble.tls_port), trust.clone(), &first).await;
    assert_eq!(old.get(DOMAIN, "/").await.status, 200);

    let waiting = Instant::now();
    let status =
        wait_for_certificate(&weir, Some(&pebble), Some(&first), Duration::from_secs(30)).await;
    let renewed = status["certificate"]["serial"]
        .as_str()
        .expect("serial")
        .to_string();
    let renewal = waiting.elapsed();
    // New connections get the new certificate.
    let mut client = https_serving(tls_addr(pebble.tls_port), trust.clone(), &renewed).await;
    assert_eq!(client.get(DOMAIN, "/").await.status, 200);
    drop(client);
    // The connection opened before the renewal still works.
    assert!(!old.is_closed());
    let reply = old.get(DOMAIN, "/again").await;
    assert_eq!(
        reply.status, 200,
        "the keep-alive connection survives the swap"
    );

    // Always due, yet not a loop: within 3 s at most one more order (a third of 15 s).
    let orders = |text: &str| {
        crate::metrics::sample(
            text,
            r#"weir_acme_orders_total{listener="public-tls",result="success"}"#,
        )
        .unwrap_or(0.0)
    };
    let before = orders(&admin::metrics(weir.admin()).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = orders(&admin::metrics(weir.admin()).await);
    assert!(after - before <= 1.0, "{before} → {after} orders in 3 s");
    eprintln!(
        "renewal: serial {first} → {renewed} {renewal:?} after the first certificate was served; old keep-alive connection still answered; {} orders in 3 s afterwards",
        after - before
    );
    drop(old);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_renewal_keeps_the_current_certificate_and_backs_off() {
    if pebble::skip() {
        return;
    }
    // 15 s certificates, due for renewal after 5 s; the CA is gone by then.
    let pebble = Pebble::start(pebble::Options {
        validity_secs: Some(15),
        ..Default::default()
    })
    .await;
    let upstream = Server::spawn("v1");
    let state = TempDir::new().expect("a state folder");
    let yaml = config(
        &pebble.directory,
        &pebble.ca_file,
        pebble.tls_port,
        None,
        "        renewBefore: 1d\n        retry: {initial: 100ms, max: 400ms}\n",
        state.path(),
        upstream.addr(),
    );
    let weir = Weir::start(&yaml).await;
    let status = wait_for_certificate(&weir, Some(&pebble), None, Duration::from_secs(30)).await;
    let issued = status["certificate"]["serial"]
        .as_str()
        .expect("serial")
        .to_string();
    let trust = pebble.client_config().await;
    let tls_port = pebble.tls_port;
    drop(https_serving(tls_addr(tls_port), trust.clone(), &issued).await);
    drop(pebble);
    let stopped = Instant::now();

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = acme_status(&weir).await;
        if status["consecutiveFailures"].as_u64().unwrap_or(0) >= 3 {
            break status;
        }
        assert!(Instant::now() < deadline, "no failures recorded: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let three_failures = stopped.elapsed();
    assert_eq!(status["state"], "failing", "{status}");
    assert!(
        status["lastError"].as_str().is_some_and(|e| !e.is_empty()),
        "{status}"
    );
    assert_eq!(status["certificate"]["serial"], issued.as_str(), "{status}");
    let failures = |text: &str| {
        crate::metrics::sample(
            text,
            r#"weir_acme_orders_total{listener="public-tls",result="failure"}"#,
        )
        .expect("the failure counter")
    };
    let counted = failures(&admin::metrics(weir.admin()).await);
    assert!(counted >= 3.0, "{counted}");
    // The issued certificate keeps serving, to clients that trust only pebble's root.
    let (mut client, served) = https(tls_addr(tls_port), trust).await;
    assert_eq!(served, issued, "the current certificate keeps serving");
    assert_eq!(client.get(DOMAIN, "/").await.status, 200);
    // Back-off: 100, 200, 400, 400 ms…: a few more in a second, not a tight loop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = failures(&admin::metrics(weir.admin()).await);
    assert!(
        later - counted <= 4.0,
        "{counted} → {later} failures in 1 s"
    );
    eprintln!(
        "failing renewal: 3 failed orders {three_failures:?} after the CA stopped (due at 5 s, back-off 100 ms doubling to 400 ms), {} more in the next 1 s; the issued certificate kept serving",
        later - counted
    );
    drop(client);
    weir.shutdown().await;
}

/// Needs no pebble: the CA is unreachable from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_the_listener_serves_a_placeholder() {
    let upstream = Server::spawn("v1");
    let state = TempDir::new().expect("a state folder");
    let ca = crate::certs::TestCa::new();
    let ca_file = state.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write a CA file");
    let dead = crate::Refused::new();
    let yaml = config(
        &format!("https://{}/dir", dead.addr()),
        &ca_file,
        0,
        None,
        "        retry: {initial: 100ms, max: 200ms}\n",
        state.path(),
        upstream.addr(),
    );
    let weir = Weir::start(&yaml).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = acme_status(&weir).await;
        if status["consecutiveFailures"].as_u64().unwrap_or(0) >= 2 {
            break status;
        }
        assert!(Instant::now() < deadline, "no failures recorded: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["state"], "failing", "{status}");
    assert!(status["certificate"].is_null(), "{status}");
    assert_eq!(
        admin::metric(
            weir.admin(),
            r#"weir_acme_certificate_expiry_seconds{listener="public-tls"}"#
        )
        .await,
        Some(0.0)
    );
    let stream = tls_connect(weir.addr(), tls_config_any_server(&[b"http/1.1"]), DOMAIN).await;
    let leaf = peer_leaf(&stream);
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).expect("a certificate");
    assert!(
        cert.subject().to_string().contains("placeholder"),
        "{}",
        cert.subject()
    );
    let mut client = Http1::handshake(stream).await;
    assert_eq!(client.get(DOMAIN, "/").await.status, 200);
    eprintln!(
        "no certificate yet: placeholder served, {} failed orders so far (CA unreachable)",
        status["consecutiveFailures"]
    );
    drop(client);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_the_ca_refuses_is_reported_and_retried() {
    if pebble::skip() {
        return;
    }
    let pebble = Pebble::start(pebble::Options {
        blocklist: vec![DOMAIN.to_string()],
        ..Default::default()
    })
    .await;
    let upstream = Server::spawn("v1");
    let state = TempDir::new().expect("a state folder");
    let yaml = config(
        &pebble.directory,
        &pebble.ca_file,
        pebble.tls_port,
        None,
        "        retry: {initial: 200ms, max: 1s}\n",
        state.path(),
        upstream.addr(),
    );
    let started = Instant::now();
    let weir = Weir::start(&yaml).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = acme_status(&weir).await;
        if status["consecutiveFailures"].as_u64().unwrap_or(0) >= 2 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "no failures recorded: {status}\n{}",
            pebble.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = status["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("rejectedIdentifier") || error.contains(DOMAIN),
        "the CA's reason is shown: {status}"
    );
    assert!(status["certificate"].is_null(), "{status}");
    // Still serving (the placeholder) meanwhile.
    let stream = tls_connect(weir.addr(), tls_config_any_server(&[b"http/1.1"]), DOMAIN).await;
    let mut client = Http1::handshake(stream).await;
    assert_eq!(client.get(DOMAIN, "/").await.status, 200);
    eprintln!(
        "refused domain: 2 failed orders in {:?}, reason shown: {error}",
        started.elapsed()
    );
    drop(client);
    weir.shutdown().await;
}

/// The data plane's side alone (no pebble, no control plane): the challenge store answers
/// tls-alpn-01 handshakes and http-01 requests, and nothing else changes.
#[tokio::test]
async fn the_challenge_store_answers_only_challenges() {
    use crate::certs::{material, TestCa};
    use crate::proxy::{self, Proxy};
    use weir_proxy::acme::ChallengeStore;

    let ca = TestCa::new();
    let leaf = ca.leaf(&[DOMAIN]);
    let upstream = Server::spawn("v1");
    let dir = TempDir::new().expect("a folder");
    leaf.write(dir.path(), "shop");
    let model = proxy::model_in(
        dir.path(),
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
    redirect: {scheme: https}
  - name: secure
    address: 127.0.0.1:0
    tls:
      certificates: [{certFile: shop.crt, keyFile: shop.key}]
services:
  - name: shop
    match: {hosts: ["shop.weir.test"]}
    stable: {version: v1, upstreams: ["${up}"]}
"#,
        &[("up", upstream.addr())],
    );
    let store = ChallengeStore::new();
    let mut tls = material(&[&leaf]);
    tls.acme = Some(store.clone());
    let proxy = Proxy::builder(model).tls("secure", tls).start();
    let secure = proxy.listener_addr("secure");

    // tls-alpn-01: a challenge certificate with the acmeIdentifier extension.
    let mut params = rcgen::CertificateParams::new(vec![DOMAIN.to_string()]).expect("params");
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&[7u8; 32])];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    store
        .set_tls_alpn(
            DOMAIN,
            &weir_proxy::tls::CertificatePem {
                origin: "challenge".into(),
                cert_chain: cert.pem().into_bytes(),
                private_key: key.serialize_pem().into_bytes(),
            },
        )
        .expect("a usable challenge certificate");
    let acme_only = no_verification(&[b"acme-tls/1"]);
    let mut stream = tls_connect(secure, acme_only.clone(), DOMAIN).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"acme-tls/1"[..]));
    assert!(
        peer_leaf(&stream) == *cert.der(),
        "the challenge certificate"
    );
    // No HTTP on a validation connection: the server closes it.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream
        .write_all(b"GET / HTTP/1.1\r\nhost: shop.weir.test\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed without an answer: {read:?} {buf:?}"
    );
    // Another name has no challenge: the handshake fails.
    let other = tokio::net::TcpStream::connect(secure)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("other.weir.test").expect("name");
    assert!(tokio_rustls::TlsConnector::from(acme_only)
        .connect(name, other)
        .await
        .is_err());
    // A normal client (h2, http/1.1) gets the listener's certificate.
    let normal = tls_connect(secure, tls_config_any_server(&[b"h2", b"http/1.1"]), DOMAIN).await;
    assert!(peer_leaf(&normal) == leaf.der);
    drop(normal);
    store.remove_tls_alpn(DOMAIN);
    assert!(store.is_empty());

    // http-01: answered on the plain listener before its redirect, for its domain only.
    let token = "tok-EN_123";
    assert!(store.set_http(token, DOMAIN, "tok-EN_123.thumbprint"));
    assert!(
        !store.set_http("bad/token", DOMAIN, "x"),
        "tokens are base64url"
    );
    let mut plain = Http1::connect(proxy.listener_addr("public")).await;
    let path = format!("/.well-known/acme-challenge/{token}");
    let reply = plain.get(&format!("{DOMAIN}:80"), &path).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "tok-EN_123.thumbprint");
    assert_eq!(reply.header("content-type"), Some("text/plain"));
    for (host, path) in [
        ("other.weir.test", path.as_str()),
        (DOMAIN, "/.well-known/acme-challenge/unknown"),
        (DOMAIN, "/.well-known/acme-challenge/"),
        (DOMAIN, "/.well-known/acme-challenge/tok-EN_123/../x"),
    ] {
        assert_eq!(plain.get(host, path).await.status, 404, "{host}{path}");
    }
    // Everything else is redirected as before; nothing reached the upstream.
    assert_eq!(plain.get(DOMAIN, "/.well-known/other").await.status, 308);
    assert_eq!(upstream.requests(), 0);
    // On the TLS listener the path is routed as usual.
    let stream = tls_connect(secure, tls_config_any_server(&[b"http/1.1"]), DOMAIN).await;
    let mut client = Http1::handshake(stream).await;
    assert_eq!(client.get(DOMAIN, &path).await.status, 200);
    assert_eq!(upstream.requests(), 1);
    eprintln!(
        "challenge store: acme-tls/1 handshake answered with the challenge certificate then closed, unknown SNI refused; http-01 answered for its host only (4 lookalikes 404), 0 challenge requests upstream"
    );
    drop(client);
    drop(plain);
    proxy.shutdown().await;
}

/// A client config that checks nothing about the server's certificate (a tls-alpn-01 challenge
/// certificate carries a critical extension webpki refuses to parse).
fn no_verification(alpn: &[&[u8]]) -> Arc<ClientConfig> {
    #[derive(Debug)]
    struct Blind;
    impl rustls::client::danger::ServerCertVerifier for Blind {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Blind))
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
