//! A small client for weir's admin API: JSON over HTTP/1.1 (plain, or TLS trusting `--ca-file` or
//! the system's roots) with hyper-util's pooled client, a bearer token read once from
//! `--token-file`, and errors that say what to do.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use weir_control::api::v1::ServiceStatus;
use weir_control::engine::rollout::Revision;

/// How long one call may take (for the event stream: until the response headers arrive).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No connection, or no answer in time.
    #[error("cannot reach weir's admin API at {url}: {reason}; is weir running? use --admin")]
    Unreachable {
        /// The admin API's base URL.
        url: String,
        /// The innermost cause (`Connection refused (os error 111)`).
        reason: String,
    },
    /// weir answered with an error status (`{"error": "…"}`).
    #[error("{message}")]
    Refused {
        /// 401, 404, 409, 503, …
        status: StatusCode,
        /// The error weir gave, with a hint where one helps.
        message: String,
    },
    /// weir answered something this CLI cannot read (another program on the port?).
    #[error("unexpected answer from {url}: {reason}")]
    Invalid {
        /// The URL called.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// `GET /api/v1/services/{name}/history`.
#[derive(Debug, serde::Deserialize)]
pub struct History {
    /// The service.
    pub name: String,
    /// Revisions, oldest first.
    pub revisions: Vec<Revision>,
}

/// A connection to weir's admin API.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

// === impl Api ===

impl Api {
    /// A client for the admin API at `admin` (`http://host:port` or `https://host:port`; a bare
    /// `host:port` is http), sending the token in `token_file` (trimmed) as
    /// `Authorization: Bearer`, and trusting the CA certificates in `ca_file` (PEM) for https, or
    /// the system's roots without it.
    pub fn new(
        admin: &str,
        token_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Api> {
        let base = normalize_base(admin)?;
        let token = match token_file {
            Some(path) => {
                let token = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the token file {}", path.display()))?;
                let token = token.trim().to_string();
                if token.is_empty() {
                    bail!("the token file {} is empty", path.display());
                }
                Some(token)
            }
            None => None,
        };
        let https = base.starts_with("https://");
        if ca_file.is_some() && !https {
            bail!("--ca-file is for an https:// admin API; --admin is {base}");
        }
        let client = Client::builder(TokioExecutor::new()).build(connector(https, ca_file)?);
        Ok(Api {
            base,
            token,
            client,
        })
    }

    /// The base URL, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /api/v1/services`: every service's summary.
    pub async fn services(&self) -> Result<Vec<ServiceStatus>, ApiError> {
        self.json(Method::GET, "/api/v1/services").await
    }

    /// `GET /api/v1/config`: the config generation and digest weir applied.
    pub async fn config(&self) -> Result<weir_control::api::v1::ConfigStatus, ApiError> {
        self.json(Method::GET, "/api/v1/config").await
    }

    /// `GET /api/v1/services/{name}`: one service, with details.
    pub async fn service(&self, name: &str) -> Result<ServiceStatus, ApiError> {
        self.json(Method::GET, &format!("/api/v1/services/{}", encode(name)))
            .await
    }

    /// `GET /api/v1/services/{name}/history`.
    pub async fn history(&self, name: &str) -> Result<History, ApiError> {
        self.json(
            Method::GET,
            &format!("/api/v1/services/{}/history", encode(name)),
        )
        .await
    }

    /// `POST /api/v1/services/{name}/{verb}`: an operator command; weir answers with the new status.
    pub async fn command(
        &self,
        name: &str,
        verb: &str,
        full: bool,
    ) -> Result<ServiceStatus, ApiError> {
        let query = if full { "?full=true" } else { "" };
        self.json(
            Method::POST,
            &format!("/api/v1/services/{}/{verb}{query}", encode(name)),
        )
        .await
    }

    /// `GET /api/v1/events`: the server-sent event stream's body.
    pub async fn events(&self) -> Result<Incoming, ApiError> {
        let path = "/api/v1/events";
        let response = self.send(Method::GET, path).await?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = read_body(&self.url(path), response.into_body()).await?;
            return Err(self.refused(status, &body));
        }
        Ok(response.into_body())
    }

    async fn json<T: DeserializeOwned>(&self, method: Method, path: &str) -> Result<T, ApiError> {
        let url = self.url(path);
        let response = self.send(method, path).await?;
        let status = response.status();
        let body = tokio::time::timeout(REQUEST_TIMEOUT, read_body(&url, response.into_body()))
            .await
            .map_err(|_| self.timed_out())??;
        if !status.is_success() {
            return Err(self.refused(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ApiError::Invalid {
            url,
            reason: format!("not the JSON weir sends: {e}"),
        })
    }

    async fn send(&self, method: Method, path: &str) -> Result<http::Response<Incoming>, ApiError> {
        let url = self.url(path);
        let uri: Uri = url.parse().map_err(|e| ApiError::Invalid {
            url: url.clone(),
            reason: format!("not a valid URL: {e}"),
        })?;
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header(
                header::USER_AGENT,
                concat!("weir/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| ApiError::Invalid {
                url: url.clone(),
                reason: format!("cannot build the request: {e}"),
            })?;
        match tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request)).await {
            Err(_) => Err(self.timed_out()),
            Ok(Err(error)) => {
                let mut reason = innermost(&error);
                if self.base.starts_with("https://") && reason.contains("certificate") {
                    reason.push_str(
                        " (pass --ca-file with the CA that signed the admin.tls certificate)",
                    );
                }
                Err(ApiError::Unreachable {
                    url: self.base.clone(),
                    reason,
                })
            }
            Ok(Ok(response)) => Ok(response),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn timed_out(&self) -> ApiError {
        ApiError::Unreachable {
            url: self.base.clone(),
            reason: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
        }
    }

    fn refused(&self, status: StatusCode, body: &[u8]) -> ApiError {
        let mut message = error_message(status, body);
        if status == StatusCode::UNAUTHORIZED && self.token.is_none() {
            message.push_str(" (pass --token-file FILE or set WEIR_TOKEN_FILE)");
        } else if status == StatusCode::UNAUTHORIZED {
            message.push_str(" (the token in --token-file was not accepted)");
        }
        ApiError::Refused { status, message }
    }
}

/// An http-or-https connector; for https, trusting `ca_file` or the system's roots.
fn connector(https: bool, ca_file: Option<&Path>) -> anyhow::Result<HttpsConnector<HttpConnector>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the ring provider supports rustls' default protocol versions")?;
    let config = match ca_file {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::CertificateDer;
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA file {}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert
                    .with_context(|| format!("the CA file {} is not valid PEM", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("a certificate in {}", path.display()))?;
            }
            if roots.is_empty() {
                bail!("the CA file {} holds no certificate", path.display());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None if https => builder
            .with_native_roots()
            .context("loading the system's root certificates (or pass --ca-file)")?
            .with_no_client_auth(),
        None => builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// `http://127.0.0.1:3100/` → `http://127.0.0.1:3100`; `127.0.0.1:3100` → `http://127.0.0.1:3100`.
fn normalize_base(admin: &str) -> anyhow::Result<String> {
    let admin = admin.trim().trim_end_matches('/');
    if admin.is_empty() {
        bail!("--admin is empty; give weir's admin API as http://HOST:PORT");
    }
    let base = if admin.contains("://") {
        admin.to_string()
    } else {
        format!("http://{admin}")
    };
    if !base.starts_with("http://") && !base.starts_with("https://") {
        bail!("--admin {admin}: give weir's admin API as http://HOST:PORT or https://HOST:PORT");
    }
    let uri: Uri = base
        .parse()
        .with_context(|| format!("--admin {admin} is not a valid URL"))?;
    if uri.host().is_none() {
        bail!("--admin {admin} names no host; give it as http://HOST:PORT");
    }
    Ok(base)
}

/// Percent-encodes a path segment (service names are plain, but be safe).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

async fn read_body(url: &str, body: Incoming) -> Result<Bytes, ApiError> {
    body.collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| ApiError::Invalid {
            url: url.to_string(),
            reason: format!("the response broke off: {e}"),
        })
}

/// The `error` field of weir's JSON error, else the body's text, else the status.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        return parsed.error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        format!("weir answered {status}")
    } else {
        format!("weir answered {status}: {text}")
    }
}

/// The last error in the source chain: `Connection refused (os error 111)` rather than
/// `client error (Connect)`.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalized() {
        assert_eq!(
            normalize_base("http://127.0.0.1:3100/").unwrap(),
            "http://127.0.0.1:3100"
        );
        assert_eq!(
            normalize_base("localhost:3100").unwrap(),
            "http://localhost:3100"
        );
        assert_eq!(
            normalize_base("https://weir:3100/").unwrap(),
            "https://weir:3100"
        );
        assert!(normalize_base("ftp://weir:3100").is_err());
        assert!(normalize_base("").is_err());
    }

    #[test]
    fn error_bodies_give_their_message() {
        let body = br#"{"error":"checkout has no rollout in progress (phase Healthy)"}"#;
        assert_eq!(
            error_message(StatusCode::CONFLICT, body),
            "checkout has no rollout in progress (phase Healthy)"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b""),
            "weir answered 502 Bad Gateway"
        );
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, b"nope\n"),
            "weir answered 404 Not Found: nope"
        );
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("checkout-v2.api"), "checkout-v2.api");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
