//! Test clients: one HTTP/1.1 or HTTP/2 (prior knowledge) connection each, over TCP or TLS, built
//! on `hyper::client::conn` so a test controls exactly which connection a request uses.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

use crate::body::TestBody;

/// A response read to its end.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The HTTP version the response came with.
    pub version: http::Version,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// Reads `response` to its end; panics if the body fails.
    pub async fn read(response: Response<Incoming>) -> Reply {
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .expect("the response body is complete")
            .to_bytes();
        Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        }
    }

    /// The body as UTF-8.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }

    /// A header as a string, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("an ASCII header"))
    }

    /// The `x-version` header the test upstreams send ("" if absent).
    pub fn served_by(&self) -> &str {
        self.header("x-version").unwrap_or("")
    }

    /// The body as JSON (from [`crate::upstream::Builder::echo_request`] upstreams).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Every value of request header `name` an echo upstream received, in order.
    pub fn echoed_header(&self, name: &str) -> Vec<String> {
        self.json()["headers"]
            .as_array()
            .expect("a headers array")
            .iter()
            .filter(|pair| pair[0] == name)
            .map(|pair| pair[1].as_str().expect("a string").to_string())
            .collect()
    }
}

/// `method path` in origin form with a `Host` header (HTTP/1.1).
pub fn request(method: Method, host: &str, path: &str, body: TestBody) -> Request<TestBody> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .body(body)
        .expect("valid request");
    request.headers_mut().insert(
        header::HOST,
        HeaderValue::from_str(host).expect("valid host"),
    );
    request
}

/// `GET path` with `Host: host` (HTTP/1.1).
pub fn get(host: &str, path: &str) -> Request<TestBody> {
    request(Method::GET, host, path, TestBody::empty())
}

/// `GET url` with an absolute URL and no `Host` header (for HTTP/2, where scheme and authority
/// become `:scheme` and `:authority`).
pub fn get_url(url: &str) -> Request<TestBody> {
    Request::builder()
        .uri(url)
        .body(TestBody::empty())
        .expect("valid request")
}

/// Whether a TCP connection to `addr` is refused right now.
pub async fn tcp_refused(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_err()
}

/// One HTTP/1.1 connection (with upgrade support).
#[derive(Debug)]
pub struct Http1 {
    sender: http1::SendRequest<TestBody>,
    conn: JoinHandle<()>,
}

impl Http1 {
    /// Connects to `addr` over TCP.
    pub async fn connect(addr: SocketAddr) -> Http1 {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        stream.set_nodelay(true).expect("nodelay");
        Http1::handshake(stream).await
    }

    /// Speaks HTTP/1.1 over `io` (e.g. a TLS stream).
    pub async fn handshake<I>(io: I) -> Http1
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .expect("HTTP/1.1 handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Http1 { sender, conn }
    }

    /// Sends `request` once the connection is ready.
    pub async fn send(&mut self, request: Request<TestBody>) -> hyper::Result<Response<Incoming>> {
        self.sender.ready().await?;
        self.sender.send_request(request).await
    }

    /// Sends `request` and reads the whole response; panics on a connection error.
    pub async fn fetch(&mut self, request: Request<TestBody>) -> Reply {
        let response = self.send(request).await.expect("a response");
        Reply::read(response).await
    }

    /// `GET path` with `Host: host`, read to the end.
    pub async fn get(&mut self, host: &str, path: &str) -> Reply {
        self.fetch(get(host, path)).await
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

impl Drop for Http1 {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// One HTTP/2 connection; requests may be sent concurrently through [`Http2::sender`].
#[derive(Debug)]
pub struct Http2 {
    sender: http2::SendRequest<TestBody>,
    conn: JoinHandle<()>,
}

impl Http2 {
    /// Connects to `addr` over TCP with prior knowledge (h2c).
    pub async fn connect(addr: SocketAddr) -> Http2 {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        stream.set_nodelay(true).expect("nodelay");
        Http2::handshake(stream).await
    }

    /// Speaks HTTP/2 over `io` (e.g. a TLS stream that negotiated `h2`).
    pub async fn handshake<I>(io: I) -> Http2
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Http2 { sender, conn }
    }

    /// A handle for sending requests on this connection (cheap to clone).
    pub fn sender(&self) -> http2::SendRequest<TestBody> {
        self.sender.clone()
    }

    /// Sends `request` and reads the whole response; panics on a connection error.
    pub async fn fetch(&self, request: Request<TestBody>) -> Reply {
        fetch_h2(self.sender(), request).await
    }
}

/// Sends `request` on `sender` and reads the whole response; panics on a connection error.
pub async fn fetch_h2(
    mut sender: http2::SendRequest<TestBody>,
    request: Request<TestBody>,
) -> Reply {
    sender
        .ready()
        .await
        .expect("the HTTP/2 connection is ready");
    let response = sender.send_request(request).await.expect("a response");
    Reply::read(response).await
}

impl Drop for Http2 {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// A TLS client config trusting only `roots`, offering `alpn` and `versions`.
pub fn tls_config(
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("a valid root certificate");
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("supported protocol versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS client config that accepts any server certificate (still checking handshake signatures),
/// to see which certificate the server picks for a name none of them covers.
pub fn tls_config_any_server(alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects to `addr` and completes a TLS handshake for `server_name` (an IP address sends no
/// SNI); panics if the handshake fails.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> TlsStream<TcpStream> {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    stream.set_nodelay(true).expect("nodelay");
    let name = ServerName::try_from(server_name.to_string()).expect("a valid server name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake for {server_name}: {e}"))
}

/// The leaf certificate the server presented.
pub fn peer_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server sent a certificate")
        .clone()
        .into_owned()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
