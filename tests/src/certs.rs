//! A throw-away certificate authority and leaf certificates for TLS tests (rcgen, ECDSA P-256).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;
use weir_proxy::routes::TlsMaterial;
use weir_proxy::tls::CertificatePem;

/// A self-signed CA that issues [`Leaf`]s.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA with a fresh key.
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "weir test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa { cert, key }
    }

    /// The CA certificate, to put in a client's root store.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The CA certificate in PEM (for a `caFile`).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf certificate for `names` (DNS names, `*.` wildcards allowed), signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the leaf");
        Leaf {
            names,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// A leaf certificate and its key.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The DNS names it covers.
    pub names: Vec<String>,
    /// PEM certificate (leaf only; clients trust the CA directly).
    pub cert_pem: String,
    /// PEM PKCS#8 private key.
    pub key_pem: String,
    /// DER certificate, to compare with what a client was presented.
    pub der: CertificateDer<'static>,
}

impl Leaf {
    /// The PEM material the data plane takes.
    pub fn pem(&self) -> CertificatePem {
        CertificatePem {
            origin: format!("test certificate for {}", self.names.join(", ")),
            cert_chain: self.cert_pem.clone().into_bytes(),
            private_key: self.key_pem.clone().into_bytes(),
        }
    }

    /// Writes `<stem>.crt` and `<stem>.key` into `dir` (for configs that name certificate files).
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write the certificate");
        std::fs::write(&key, &self.key_pem).expect("write the key");
        (cert, key)
    }
}

/// A TLS listener's material: `leaves` in SNI-default order (the first is the default).
pub fn material(leaves: &[&Leaf]) -> TlsMaterial {
    TlsMaterial {
        certificates: leaves.iter().map(|l| l.pem()).collect(),
        acme: None,
    }
}
