//! rustls server configs built from PEM material: SNI picks among certificates, the first is the
//! default, TLS 1.2 and 1.3 only, ALPN `h2` then `http/1.1`. A listener with ACME also offers
//! `acme-tls/1`, and a ClientHello offering only that gets the tls-alpn-01 challenge certificate
//! for its SNI from the [`ChallengeStore`].

use std::fmt;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::acme::ChallengeStore;

/// One certificate chain and key in PEM, as read from the files the config names.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificatePem {
    /// Where it came from (for error messages), e.g. the certificate file path.
    pub origin: String,
    /// PEM certificate chain, leaf first.
    pub cert_chain: Vec<u8>,
    /// PEM private key.
    pub private_key: Vec<u8>,
}

impl fmt::Debug for CertificatePem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("CertificatePem")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No certificate in a PEM file.
    #[error("{origin}: no certificate found in PEM")]
    NoCertificate {
        /// The certificate's origin.
        origin: String,
    },
    /// The PEM could not be parsed.
    #[error("{origin}: invalid PEM: {message}")]
    Pem {
        /// The certificate's origin.
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// The key does not fit the certificate, or rustls rejected it.
    #[error("{origin}: {source}")]
    Rustls {
        /// The certificate's origin.
        origin: String,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// No certificates at all.
    #[error("no certificates configured")]
    Empty,
}

/// Picks a certificate by SNI: an exact DNS name, then a wildcard name, then the default (first).
#[derive(Debug)]
struct SniResolver {
    /// `(lower-case DNS name from the certificate, key)`; wildcard names are kept as `*.example.com`.
    names: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
    /// The tls-alpn-01 challenges, on a listener with ACME.
    acme: Option<ChallengeStore>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(acme) = &self.acme {
            if crate::acme::is_challenge_hello(hello.alpn()) {
                // Only the challenge certificate: no SNI or no challenge fails the handshake.
                let sni = hello.server_name()?.to_ascii_lowercase();
                return acme.tls_alpn_cert(&sni);
            }
        }
        let Some(sni) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let sni = sni.to_ascii_lowercase();
        if let Some((_, key)) = self.names.iter().find(|(name, _)| *name == sni) {
            return Some(key.clone());
        }
        // `*.example.com` covers exactly one label, as in RFC 6125.
        if let Some((_, parent)) = sni.split_once('.') {
            let wildcard = format!("*.{parent}");
            if let Some((_, key)) = self.names.iter().find(|(name, _)| *name == wildcard) {
                return Some(key.clone());
            }
        }
        Some(self.default.clone())
    }
}

/// Builds a server config for `certificates` (first = default).
pub fn server_config(
    certificates: &[CertificatePem],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_with(certificates, None)
}

/// [`server_config`], answering tls-alpn-01 challenges from `acme` when given.
pub fn server_config_with(
    certificates: &[CertificatePem],
    acme: Option<&ChallengeStore>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut names = Vec::new();
    let mut default = None;
    for pem in certificates {
        let key = certified_key(pem, &provider)?;
        let leaf = key.cert.first().ok_or_else(|| TlsError::NoCertificate {
            origin: pem.origin.clone(),
        })?;
        let parsed = webpki::EndEntityCert::try_from(leaf).map_err(|e| TlsError::Pem {
            origin: pem.origin.clone(),
            message: format!("unparsable certificate: {e}"),
        })?;
        for name in parsed.valid_dns_names() {
            names.push((name.to_ascii_lowercase(), key.clone()));
        }
        default.get_or_insert_with(|| key.clone());
    }
    let default = default.ok_or(TlsError::Empty)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rustls {
            origin: "protocol versions".into(),
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            names,
            default,
            acme: acme.cloned(),
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme.is_some() {
        // Last: a client offering h2 or http/1.1 never gets it.
        config
            .alpn_protocols
            .push(crate::acme::ACME_TLS_ALPN.to_vec());
    }
    Ok(Arc::new(config))
}

fn certified_key(
    pem: &CertificatePem,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem.cert_chain)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            origin: pem.origin.clone(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            origin: pem.origin.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.private_key).map_err(|e| TlsError::Pem {
        origin: pem.origin.clone(),
        message: format!("private key: {e}"),
    })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Rustls {
        origin: pem.origin.clone(),
        source,
    })?;
    Ok(Arc::new(key))
}
