//! The ACME challenge store: what the control plane's ACME client publishes for the CA to check,
//! and the two places the data plane answers from it.
//!
//! - `http-01`: `GET /.well-known/acme-challenge/<token>` on a plain listener, whose `Host` is the
//!   domain the token was issued for, is answered with the key authorization (`text/plain`)
//!   before the listener's redirect; an unknown token is a 404 and nothing goes upstream.
//! - `tls-alpn-01` (RFC 8737): a ClientHello whose ALPN offers only `acme-tls/1` gets the
//!   challenge certificate for its SNI ([`crate::tls`]'s resolver), and the connection is closed
//!   after the handshake (no HTTP is served on it).
//!
//! The store is read only on those paths, never on the normal request path: a table carries it
//! only when some listener uses ACME, and a request looks at it only when its path starts with
//! the challenge prefix. The locks are held for a map lookup and a clone.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use rustls::sign::CertifiedKey;

use crate::body::ProxyBody;
use crate::tls::{CertificatePem, TlsError};

/// The ALPN protocol of tls-alpn-01 challenge handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path prefix of http-01 challenges.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The longest token kept (RFC 8555 tokens are 43 base64url characters; this bounds what a CA
/// could make us store).
const MAX_TOKEN: usize = 256;

/// One pending http-01 challenge.
#[derive(Clone)]
struct HttpChallenge {
    /// The domain (lower case) the token was issued for: only a request for that host gets it.
    domain: String,
    /// `token.thumbprint`.
    key_authorization: Bytes,
}

/// The challenges currently published; shared by the control plane (writer) and every worker
/// (reader). Cheap to clone; two handles are equal when they share one store.
#[derive(Clone, Default)]
pub struct ChallengeStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    http: RwLock<HashMap<String, HttpChallenge>>,
    tls_alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl PartialEq for ChallengeStore {
    fn eq(&self, other: &ChallengeStore) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for ChallengeStore {}

impl fmt::Debug for ChallengeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChallengeStore").finish_non_exhaustive()
    }
}

impl ChallengeStore {
    /// An empty store.
    pub fn new() -> ChallengeStore {
        ChallengeStore::default()
    }

    /// Publishes an http-01 answer: `token` for requests to `domain`. A token longer than 256
    /// bytes or with characters outside base64url is not published (`false`).
    pub fn set_http(&self, token: &str, domain: &str, key_authorization: &str) -> bool {
        let valid = !token.is_empty()
            && token.len() <= MAX_TOKEN
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            let challenge = HttpChallenge {
                domain: domain.to_ascii_lowercase(),
                key_authorization: Bytes::copy_from_slice(key_authorization.as_bytes()),
            };
            self.inner
                .http
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(token.to_string(), challenge);
        }
        valid
    }

    /// Withdraws an http-01 answer.
    pub fn remove_http(&self, token: &str) {
        self.inner
            .http
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }

    /// Publishes a tls-alpn-01 challenge certificate (with its acmeIdentifier extension) for
    /// `domain`.
    pub fn set_tls_alpn(&self, domain: &str, pem: &CertificatePem) -> Result<(), TlsError> {
        let key = challenge_key(pem)?;
        self.inner
            .tls_alpn
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(domain.to_ascii_lowercase(), key);
        Ok(())
    }

    /// Withdraws the tls-alpn-01 certificate of `domain`.
    pub fn remove_tls_alpn(&self, domain: &str) {
        self.inner
            .tls_alpn
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&domain.to_ascii_lowercase());
    }

    /// How many challenges are published (both kinds).
    pub fn len(&self) -> usize {
        let http = self
            .inner
            .http
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let tls = self
            .inner
            .tls_alpn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        http + tls
    }

    /// Whether nothing is published.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The challenge certificate for `sni` (lower-cased by the caller).
    pub(crate) fn tls_alpn_cert(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        self.inner
            .tls_alpn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sni)
            .cloned()
    }

    /// The answer to an http-01 request: `None` unless the path starts with [`HTTP01_PREFIX`];
    /// then the key authorization for a known token requested for its domain, else a 404.
    pub(crate) fn answer_http01<B>(&self, request: &Request<B>) -> Option<Response<ProxyBody>> {
        let token = request.uri().path().strip_prefix(HTTP01_PREFIX)?;
        let host = request
            .uri()
            .host()
            .or_else(|| {
                request
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .map(crate::routes::matcher::strip_port);
        Some(self.http_response(host, token))
    }

    fn http_response(&self, host: Option<&str>, token: &str) -> Response<ProxyBody> {
        let found = self
            .inner
            .http
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .filter(|c| host.is_some_and(|h| h.eq_ignore_ascii_case(&c.domain)))
            .map(|c| c.key_authorization.clone());
        match found {
            Some(body) => {
                let mut response = Response::new(ProxyBody::full(body));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                response
            }
            None => {
                let mut response = Response::new(ProxyBody::empty());
                *response.status_mut() = StatusCode::NOT_FOUND;
                response
            }
        }
    }
}

/// Whether a ClientHello's ALPN list is exactly `acme-tls/1` (RFC 8737 §3: the CA offers only it).
pub(crate) fn is_challenge_hello(alpn: Option<impl Iterator<Item = impl AsRef<[u8]>>>) -> bool {
    let Some(mut offered) = alpn else {
        return false;
    };
    matches!(offered.next(), Some(first) if first.as_ref() == ACME_TLS_ALPN)
        && offered.next().is_none()
}

/// A challenge certificate and its key. Not [`crate::tls`]'s loader: rustls's consistency check
/// parses the certificate with webpki, which refuses the critical acmeIdentifier extension.
fn challenge_key(pem: &CertificatePem) -> Result<Arc<CertifiedKey>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pem_error = |message: String| TlsError::Pem {
        origin: pem.origin.clone(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem.cert_chain)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            origin: pem.origin.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.private_key)
        .map_err(|e| pem_error(format!("private key: {e}")))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|source| {
        TlsError::Rustls {
            origin: pem.origin.clone(),
            source,
        }
    })?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}
