//! The HTTP client of the Prometheus and web providers: one request, its whole (bounded) body,
//! within a timeout.
//!
//! One client is shared by the process: hyper-util's legacy client over a rustls connector (the
//! `ring` provider, the system's root certificates). Connections are not pooled — measurements are
//! seconds apart, and a pooled connection would outlive the runtime that made it in tests.

use std::error::Error as StdError;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::engine::analysis::show_duration;

/// The largest response body read.
const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The `User-Agent` sent unless the provider sets one.
const USER_AGENT: &str = concat!("weir/", env!("CARGO_PKG_VERSION"));

/// The shared client, built on first use.
static CLIENT: LazyLock<Shared> = LazyLock::new(|| Shared::new(true));

/// The client for `insecureSkipVerify` (any server certificate accepted), built on first use.
static INSECURE: LazyLock<Shared> = LazyLock::new(|| Shared::new(false));

/// A response, read whole.
#[derive(Debug)]
pub(crate) struct Response {
    /// The status code.
    pub status: http::StatusCode,
    /// The body.
    pub body: Bytes,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// The URL does not parse, or is not `http://` or `https://` with a host.
    #[error("invalid URL: {0}")]
    Url(String),
    /// The method or a header is invalid.
    #[error("invalid request: {0}")]
    Request(String),
    /// https was asked for but no root certificates could be loaded.
    #[error("https is unavailable: {0}")]
    Tls(String),
    /// Connecting or exchanging failed (refused, reset, TLS handshake, protocol error).
    #[error("{0}")]
    Send(String),
    /// No complete response within the timeout.
    #[error("no response within {0}")]
    Timeout(String),
    /// The body broke or was too large.
    #[error("reading the response body: {0}")]
    Body(String),
}

/// The process' client.
struct Shared {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Why https cannot work, if the root certificates could not be loaded.
    tls_error: Option<String>,
}

// === impl Shared ===

impl Shared {
    /// A client that verifies server certificates against the system's roots, or (`verify`
    /// false) accepts any.
    fn new(verify: bool) -> Shared {
        let (connector, tls_error) = connector(verify);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Shared { client, tls_error }
    }
}

/// An http-or-https connector over rustls (ring) for weir's outgoing calls (providers, webhooks,
/// notifications): server certificates verified against the system's roots, or (`verify` false)
/// any accepted. When the roots cannot be loaded, http keeps working and the reason is returned
/// for every https call to fail with.
pub(crate) fn connector(verify: bool) -> (HttpsConnector<HttpConnector>, Option<String>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = || {
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports rustls' default protocol versions")
    };
    let roots = if verify {
        builder().with_native_roots()
    } else {
        Ok(builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(Arc::clone(&provider)))))
    };
    let (tls, tls_error) = match roots {
        Ok(config) => (config.with_no_client_auth(), None),
        Err(error) => {
            let empty = builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            (empty, Some(format!("no root certificates: {error}")))
        }
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    (connector, tls_error)
}

/// `insecureSkipVerify`: accepts any server certificate (signatures are still checked, so the
/// handshake is a real one; only the certificate's trust and name are not).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sends one request and reads the whole response within `timeout`.
pub(crate) async fn fetch(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<String>,
    timeout: Duration,
) -> Result<Response, FetchError> {
    fetch_with(&CLIENT, method, url, headers, body, timeout).await
}

/// [`fetch`] accepting any server certificate (`insecureSkipVerify`).
pub(super) async fn fetch_insecure(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<String>,
    timeout: Duration,
) -> Result<Response, FetchError> {
    fetch_with(&INSECURE, method, url, headers, body, timeout).await
}

async fn fetch_with(
    shared: &Shared,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<String>,
    timeout: Duration,
) -> Result<Response, FetchError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|error: http::uri::InvalidUri| FetchError::Url(format!("{url:?}: {error}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            if let Some(why) = &shared.tls_error {
                return Err(FetchError::Tls(why.clone()));
            }
        }
        _ => {
            return Err(FetchError::Url(format!(
                "{url:?} is not an http:// or https:// URL"
            )))
        }
    }
    if uri.host().is_none() {
        return Err(FetchError::Url(format!("{url:?} has no host")));
    }
    let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| FetchError::Request(format!("invalid method {method:?}")))?;
    let mut request = http::Request::builder().method(method).uri(uri);
    let mut has_user_agent = false;
    for (name, value) in headers {
        has_user_agent |= name.eq_ignore_ascii_case("user-agent");
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| FetchError::Request(format!("invalid header name {name:?}")))?;
        let value = http::HeaderValue::from_str(value)
            .map_err(|_| FetchError::Request(format!("invalid value for header {name}")))?;
        request = request.header(name, value);
    }
    if !has_user_agent {
        request = request.header(http::header::USER_AGENT, USER_AGENT);
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|error| FetchError::Request(error.to_string()))?;
    let exchange = async {
        let response =
            shared
                .client
                .request(request)
                .await
                .map_err(|error| match error.source() {
                    // "client error (Connect)" says less than its source.
                    Some(source) if error.is_connect() => {
                        FetchError::Send(format!("cannot connect: {}", chain(source)))
                    }
                    _ => FetchError::Send(chain(&error)),
                })?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, BODY_LIMIT)
            .collect()
            .await
            .map_err(|error| FetchError::Body(chain(error.as_ref())))?
            .to_bytes();
        Ok(Response {
            status: parts.status,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| FetchError::Timeout(show_duration(timeout)))?
}

/// An error and its sources, `: `-separated, without repeats.
pub(crate) fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        let text = next.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = next.source();
    }
    out
}
