//! The HTTP client instant-acme talks to the CA with: hyper-util's pooled client over
//! hyper-rustls on ring, trusting `caFile` (or the system's roots), with a timeout per request
//! and a cap on response bodies, so a CA that hangs or floods cannot hold the ACME task.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Limited;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// How long one request to the CA may take (connect, send, whole response).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to the CA may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response body read from the CA (a certificate chain is a few KB).
const MAX_BODY: usize = 1024 * 1024;

/// The client (cheap to clone).
#[derive(Clone)]
pub struct AcmeHttp {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
}

impl AcmeHttp {
    /// A client trusting the PEM certificates of `ca_file`, or the system's trust store. Blocking
    /// (reads files).
    pub fn new(ca_file: Option<&Path>) -> Result<AcmeHttp, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match ca_file {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("caFile {}: {e}", path.display()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("caFile {}: {e}", path.display()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!("caFile {}: no usable certificate", path.display()));
                }
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                builder.with_tls_config(config)
            }
            None => builder
                .with_provider_and_native_roots(provider)
                .map_err(|e| format!("system trust store: {e}"))?,
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = builder.https_only().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(AcmeHttp { client })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        request: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = self.client.request(request);
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, sent).await {
                Ok(Ok(response)) => Ok(BytesResponse::from(
                    response.map(|body| Limited::new(body, MAX_BODY)),
                )),
                Ok(Err(error)) => Err(instant_acme::Error::Other(Box::new(error))),
                Err(_) => Err(instant_acme::Error::Str(
                    "the ACME server did not answer within 30s",
                )),
            }
        })
    }
}
