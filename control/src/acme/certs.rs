//! Certificates made or read by the ACME client: the placeholder served until the first
//! certificate is issued, tls-alpn-01 challenge certificates (RFC 8737), and the facts read from
//! a stored certificate (serial, validity, names).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use weir_proxy::tls::CertificatePem;

/// What a certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, hex with colons.
    pub serial: String,
    /// `notBefore`.
    pub not_before: SystemTime,
    /// `notAfter`.
    pub not_after: SystemTime,
    /// DNS names (subjectAltName), lower-cased.
    pub names: Vec<String>,
}

impl CertInfo {
    /// Reads the leaf (first certificate) of a PEM chain.
    pub fn of_pem(chain: &[u8]) -> Result<CertInfo, String> {
        let leaf = CertificateDer::pem_slice_iter(chain)
            .next()
            .ok_or("no certificate in PEM")?
            .map_err(|e| format!("invalid PEM: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| format!("unparsable certificate: {e}"))?;
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
            } else {
                UNIX_EPOCH
            }
        };
        let validity = cert.validity();
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        Ok(CertInfo {
            serial: cert.raw_serial_as_string(),
            not_before: time(validity.not_before),
            not_after: time(validity.not_after),
            names,
        })
    }

    /// Whether the certificate names every one of `domains`.
    pub fn covers(&self, domains: &[String]) -> bool {
        domains.iter().all(|d| self.names.iter().any(|n| n == d))
    }

    /// When it should be renewed: `renew_before` ahead of `notAfter`, but not before a third of
    /// its lifetime has passed nor sooner than `min_gap` after `notBefore`.
    pub fn renew_at(&self, renew_before: Duration, min_gap: Duration) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        let wanted = self
            .not_after
            .checked_sub(renew_before)
            .unwrap_or(UNIX_EPOCH);
        let floor = self.not_before + (lifetime / 3).max(min_gap);
        wanted.max(floor)
    }
}

/// A self-signed certificate for `domains`, served until the CA issues the real one (clients
/// see an untrusted certificate rather than a refused connection, and the CA can reach the
/// listener for tls-alpn-01).
pub fn placeholder(domains: &[String]) -> Result<CertificatePem, rcgen::Error> {
    let mut params = CertificateParams::new(domains.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "weir ACME placeholder");
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertificatePem {
        origin: "ACME placeholder (self-signed, until the first certificate)".into(),
        cert_chain: cert.pem().into_bytes(),
        private_key: key.serialize_pem().into_bytes(),
    })
}

/// The tls-alpn-01 certificate for `domain`: self-signed, naming only `domain`, with the
/// critical acmeIdentifier extension holding SHA-256 of the key authorization (RFC 8737 §3).
pub fn tls_alpn(
    domain: &str,
    key_authorization_digest: &[u8],
) -> Result<CertificatePem, rcgen::Error> {
    let mut params = CertificateParams::new(vec![domain.to_string()])?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(
        key_authorization_digest,
    )];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertificatePem {
        origin: format!("tls-alpn-01 challenge for {domain}"),
        cert_chain: cert.pem().into_bytes(),
        private_key: key.serialize_pem().into_bytes(),
    })
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_time_respects_renew_before_and_the_floors() {
        let not_before = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let info = CertInfo {
            serial: "01".into(),
            not_before,
            not_after: not_before + Duration::from_secs(90 * 86_400),
            names: vec!["a.example".into()],
        };
        let day = Duration::from_secs(86_400);
        assert_eq!(
            info.renew_at(30 * day, Duration::from_secs(5)),
            not_before + 60 * day
        );
        // Longer than the lifetime: a third of the way in, not immediately.
        assert_eq!(
            info.renew_at(365 * day, Duration::from_secs(5)),
            not_before + 30 * day
        );
        let short = CertInfo {
            not_after: not_before + Duration::from_secs(6),
            ..info.clone()
        };
        assert_eq!(
            short.renew_at(day, Duration::from_secs(5)),
            not_before + Duration::from_secs(5)
        );
        assert!(info.covers(&["a.example".into()]));
        assert!(!info.covers(&["a.example".into(), "b.example".into()]));
    }

    #[test]
    fn placeholder_and_challenge_certificates_parse() {
        let domains = vec!["shop.example.com".to_string()];
        let pem = placeholder(&domains).expect("placeholder");
        let info = CertInfo::of_pem(&pem.cert_chain).expect("parse");
        assert!(info.covers(&domains));
        let challenge = tls_alpn("shop.example.com", &[7u8; 32]).expect("challenge");
        let info = CertInfo::of_pem(&challenge.cert_chain).expect("parse");
        assert_eq!(info.names, domains);
        weir_proxy::tls::server_config(&[pem]).expect("usable");
    }
}
