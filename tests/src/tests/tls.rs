//! TLS termination: SNI picks the certificate (the first is the default), ALPN picks HTTP/2 or
//! HTTP/1.1, TLS 1.2 and 1.3 both work, and a published table replaces certificates for new
//! handshakes.

use std::collections::BTreeMap;

use rustls::pki_types::CertificateDer;
use rustls::ProtocolVersion;
use tempfile::TempDir;

use crate::certs::{material, Leaf, TestCa};
use crate::client::{
    self, peer_leaf, tls_config, tls_config_any_server, tls_connect, Http1, Http2,
};
use crate::proxy::{self, Proxy};
use crate::upstream::Server;

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

struct Setup {
    ca: TestCa,
    shop: Leaf,
    api: Leaf,
    _dir: TempDir,
    model: weir_config::Model,
    upstream: Server,
}

/// A plain listener `public` and a TLS listener `secure` with the certificates
/// `shop.example.com` (default) and `*.api.example.com`, routing both names to an echo upstream.
fn setup() -> Setup {
    let ca = TestCa::new();
    let shop = ca.leaf(&["shop.example.com"]);
    let api = ca.leaf(&["*.api.example.com"]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    shop.write(dir.path(), "shop");
    api.write(dir.path(), "api");
    let upstream = Server::builder("v1").echo_request().spawn();
    let model = proxy::model_in(
        dir.path(),
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
  - name: secure
    address: 127.0.0.1:0
    tls:
      certificates:
        - {certFile: shop.crt, keyFile: shop.key}
        - {certFile: api.crt, keyFile: api.key}
services:
  - name: shop
    match: {hosts: ["shop.example.com", "*.api.example.com"]}
    stable: {version: v1, upstreams: ["${up}"]}
"#,
        &[("up", upstream.addr())],
    );
    Setup {
        ca,
        shop,
        api,
        _dir: dir,
        model,
        upstream,
    }
}

impl Setup {
    fn start(&self) -> Proxy {
        Proxy::builder(self.model.clone())
            .tls("secure", material(&[&self.shop, &self.api]))
            .start()
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        vec![self.ca.der()]
    }
}

#[tokio::test]
async fn sni_picks_the_certificate_and_unknown_names_get_the_default() {
    let setup = setup();
    let proxy = setup.start();
    let secure = proxy.listener_addr("secure");
    let verified = tls_config(&setup.roots(), &[b"http/1.1"], BOTH);

    for (name, expected) in [
        ("shop.example.com", &setup.shop.der),
        ("SHOP.example.com", &setup.shop.der),
        ("x.api.example.com", &setup.api.der),
        ("eu-west.api.example.com", &setup.api.der),
    ] {
        let stream = tls_connect(secure, verified.clone(), name).await;
        assert!(peer_leaf(&stream) == *expected, "certificate for {name}");
        let mut client = Http1::handshake(stream).await;
        let reply = client.get(name, "/").await;
        assert_eq!(reply.status, 200, "{name}");
        assert_eq!(reply.echoed_header("x-forwarded-proto"), ["https"]);
    }

    let any = tls_config_any_server(&[]);
    for name in [
        "unknown.example.org",
        "api.example.com",
        "a.b.api.example.com",
        "127.0.0.1",
    ] {
        let stream = tls_connect(secure, any.clone(), name).await;
        assert!(
            peer_leaf(&stream) == setup.shop.der,
            "{name} gets the default certificate"
        );
    }

    // The plain listener stays plain.
    let mut plain = Http1::connect(proxy.listener_addr("public")).await;
    let reply = plain.get("shop.example.com", "/").await;
    assert_eq!(reply.echoed_header("x-forwarded-proto"), ["http"]);

    proxy.shutdown().await;
    setup.upstream.shutdown().await;
}

#[tokio::test]
async fn alpn_negotiates_h2_or_http11() {
    let setup = setup();
    let proxy = setup.start();
    let secure = proxy.listener_addr("secure");

    let stream = tls_connect(
        secure,
        tls_config(&setup.roots(), &[b"h2", b"http/1.1"], BOTH),
        "shop.example.com",
    )
    .await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let h2 = Http2::handshake(stream).await;
    let reply = h2
        .fetch(client::get_url("https://shop.example.com/secure"))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.echoed_header("x-forwarded-proto"), ["https"]);
    assert_eq!(reply.echoed_header("host"), ["shop.example.com"]);

    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let stream = tls_connect(
            secure,
            tls_config(&setup.roots(), alpn, BOTH),
            "shop.example.com",
        )
        .await;
        let expected = alpn.first().copied();
        assert_eq!(stream.get_ref().1.alpn_protocol(), expected);
        let mut h1 = Http1::handshake(stream).await;
        let reply = h1.get("shop.example.com", "/secure").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.version, http::Version::HTTP_11);
        assert_eq!(reply.echoed_header("x-forwarded-proto"), ["https"]);
    }

    proxy.shutdown().await;
    setup.upstream.shutdown().await;
}

#[tokio::test]
async fn tls12_and_tls13_both_negotiate() {
    let setup = setup();
    let proxy = setup.start();
    let secure = proxy.listener_addr("secure");

    for (version, expected) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        for name in ["shop.example.com", "x.api.example.com"] {
            let config = tls_config(&setup.roots(), &[b"h2"], &[version]);
            let stream = tls_connect(secure, config, name).await;
            assert_eq!(
                stream.get_ref().1.protocol_version(),
                Some(expected),
                "{name}"
            );
            let h2 = Http2::handshake(stream).await;
            let reply = h2.fetch(client::get_url(&format!("https://{name}/"))).await;
            assert_eq!(reply.status, 200, "{name} over {expected:?}");
        }
    }

    proxy.shutdown().await;
    setup.upstream.shutdown().await;
}

#[tokio::test]
async fn a_published_certificate_serves_new_handshakes() {
    let setup = setup();
    let proxy = setup.start();
    let secure = proxy.listener_addr("secure");
    let config = tls_config(&setup.roots(), &[b"http/1.1"], BOTH);

    let before = tls_connect(secure, config.clone(), "shop.example.com").await;
    assert!(peer_leaf(&before) == setup.shop.der);
    let mut old_connection = Http1::handshake(before).await;
    assert_eq!(
        old_connection.get("shop.example.com", "/").await.status,
        200
    );

    let renewed = setup.ca.leaf(&["shop.example.com"]);
    let tls = BTreeMap::from([("secure".to_string(), material(&[&renewed, &setup.api]))]);
    proxy.publish(&setup.model, &BTreeMap::new(), &tls);

    let after = tls_connect(secure, config.clone(), "shop.example.com").await;
    assert!(
        peer_leaf(&after) == renewed.der,
        "new handshakes get the renewed certificate"
    );
    let mut client = Http1::handshake(after).await;
    assert_eq!(client.get("shop.example.com", "/").await.status, 200);
    let api = tls_connect(secure, config, "x.api.example.com").await;
    assert!(
        peer_leaf(&api) == setup.api.der,
        "the other certificate is unchanged"
    );

    // A connection made before the swap keeps working.
    assert_eq!(
        old_connection.get("shop.example.com", "/").await.status,
        200
    );

    proxy.shutdown().await;
    setup.upstream.shutdown().await;
}
