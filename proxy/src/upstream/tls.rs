//! `protocol: h2` upstreams: HTTP/2 over TLS, ALPN `h2` only, the upstream's certificate verified
//! against the version's `tls.caFile` or, without one, the Mozilla roots built into weir
//! (`webpki-roots`: the data plane never reads files, and the same trust holds on every host and
//! in images with no system store).
//!
//! One `rustls::ClientConfig` per distinct CA file content, built when the route table is built
//! (never per request) and carried over to the next table while the content is unchanged; one
//! [`UpstreamTls`] (config + server name) per distinct (CA, server name), carried over the same
//! way, so a weight change or an unrelated reload keeps the worker's connections (the HTTP/2 pool
//! keys its connections by address and [`UpstreamTls`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use weir_config::{Upstream, UpstreamHost};

use crate::routes::RouteTable;
use crate::stats::UpstreamErrorKind;

/// Why a version's upstream TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    /// The CA file holds no certificate.
    #[error("{origin}: no certificate found in PEM")]
    NoCertificate {
        /// The file.
        origin: String,
    },
    /// The CA file is not valid PEM.
    #[error("{origin}: invalid PEM: {source}")]
    Pem {
        /// The file.
        origin: String,
        /// What the PEM reader said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate of the CA file cannot be a trust anchor.
    #[error("{origin}: certificate {index} cannot be trusted as a CA: {source}")]
    Anchor {
        /// The file.
        origin: String,
        /// Its position in the file (0-based).
        index: usize,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The configured `caFile` was not loaded by the control plane (a caller that built a table
    /// from a model it did not load).
    #[error("{origin}: the CA file's contents were not loaded")]
    NotLoaded {
        /// The file.
        origin: String,
    },
    /// The server name (`serverName`, or the upstream's host) is not a valid TLS server name.
    #[error("server name {name:?}: {reason}")]
    ServerName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the client configuration.
    #[error("TLS client config: {0}")]
    Rustls(#[source] rustls::Error),
}

/// Checks a CA file's PEM as the data plane will use it; returns how many certificates it holds.
/// The control plane calls it when it loads a config, so a bad file is a load error with its path.
pub fn check_upstream_ca(pem: &[u8], origin: &str) -> Result<usize, UpstreamTlsError> {
    Ok(roots(Some(pem), origin)?.len())
}

/// The roots a version trusts: every certificate of `pem`, or the built-in web roots.
fn roots(pem: Option<&[u8]>, origin: &str) -> Result<RootCertStore, UpstreamTlsError> {
    let Some(pem) = pem else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|source| UpstreamTlsError::Pem {
            origin: origin.to_string(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(UpstreamTlsError::NoCertificate {
            origin: origin.to_string(),
        });
    }
    let mut store = RootCertStore::empty();
    for (index, der) in certificates.into_iter().enumerate() {
        store.add(der).map_err(|source| UpstreamTlsError::Anchor {
            origin: origin.to_string(),
            index,
            source,
        })?;
    }
    Ok(store)
}

/// A client config trusting `pem` (or the built-in roots), ring only, TLS 1.3 and 1.2, ALPN `h2`
/// only.
fn client_config(pem: Option<&[u8]>, origin: &str) -> Result<Arc<ClientConfig>, UpstreamTlsError> {
    let roots = roots(pem, origin)?;
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(UpstreamTlsError::Rustls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// How the connections to one upstream of an `h2` version are secured: the client config (its
/// trust) and the server name sent in SNI and verified.
pub(crate) struct UpstreamTls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    /// The CA PEM the config trusts (`None`: the built-in roots), to reuse it in the next table.
    ca: Ca,
    /// The server name as a string, for reuse and messages.
    name: Box<str>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.name)
            .field("ca_file", &self.ca.is_some())
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// The TLS handshake over `stream` (dialled to `addr`), finished by `deadline` (what is left of
    /// the connect timeout), and ALPN must have chosen `h2`. A certificate the version does not
    /// trust, or one not valid for the server name, is a connect error whose message says why.
    pub(crate) async fn handshake(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        deadline: Instant,
        connect_timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, (UpstreamErrorKind, String)> {
        let connector = TlsConnector::from(Arc::clone(&self.config));
        let name = &self.name;
        let handshake = connector.connect(self.server_name.clone(), stream);
        let tls = match tokio::time::timeout_at(deadline, handshake).await {
            Err(_) => {
                return Err((
                    UpstreamErrorKind::ConnectTimeout,
                    format!(
                        "TLS handshake with {addr} (server name {name}) not done within the \
                         connect timeout ({connect_timeout:?})"
                    ),
                ))
            }
            Ok(Err(error)) => {
                let alpn_refused = error
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>())
                    .is_some_and(|e| {
                        matches!(
                            e,
                            rustls::Error::AlertReceived(
                                rustls::AlertDescription::NoApplicationProtocol
                            )
                        )
                    });
                if alpn_refused {
                    return Err((
                        UpstreamErrorKind::Protocol,
                        format!(
                            "upstream {addr} (server name {name}) refused ALPN h2: it does not \
                             speak HTTP/2 over TLS (protocol: h2)"
                        ),
                    ));
                }
                return Err((
                    UpstreamErrorKind::Connect,
                    format!("TLS handshake with {addr} (server name {name}): {error}"),
                ));
            }
            Ok(Ok(tls)) => tls,
        };
        match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") => Ok(tls),
            other => Err((
                UpstreamErrorKind::Protocol,
                format!(
                    "upstream {addr} (server name {name}) did not negotiate HTTP/2 over TLS: ALPN \
                     offered h2, it chose {}",
                    other.map_or_else(
                        || "none".to_string(),
                        |p| format!("{:?}", String::from_utf8_lossy(p))
                    )
                ),
            )),
        }
    }
}

/// The CA PEM a config trusts (`None`: the built-in roots), compared by content.
type Ca = Option<Arc<[u8]>>;

/// What makes two upstreams' TLS the same: the CA and the server name.
type Same = (Ca, Box<str>);

/// The TLS settings of one table build: client configs by CA content and [`UpstreamTls`] by
/// (CA content, server name), seeded with the previous table's so unchanged ones are reused.
#[derive(Default)]
pub(crate) struct TlsReuse {
    configs: RefCell<HashMap<Ca, Arc<ClientConfig>>>,
    upstreams: RefCell<HashMap<Same, Arc<UpstreamTls>>>,
}

impl TlsReuse {
    /// Seeded with what `previous` uses.
    pub(crate) fn of(previous: &RouteTable) -> TlsReuse {
        let reuse = TlsReuse::default();
        {
            let mut configs = reuse.configs.borrow_mut();
            let mut upstreams = reuse.upstreams.borrow_mut();
            let all = previous
                .services()
                .iter()
                .flat_map(|s| s.arms())
                .flat_map(|a| a.upstreams.iter())
                .filter_map(|u| u.tls.as_ref());
            for tls in all {
                configs
                    .entry(tls.ca.clone())
                    .or_insert_with(|| Arc::clone(&tls.config));
                upstreams
                    .entry((tls.ca.clone(), tls.name.clone()))
                    .or_insert_with(|| Arc::clone(tls));
            }
        }
        reuse
    }

    /// The TLS of `upstream` in a version with `settings` (`None`: not an `h2` version).
    pub(crate) fn upstream(
        &self,
        settings: Option<&weir_config::UpstreamTls>,
        upstream: &Upstream,
    ) -> Result<Option<Arc<UpstreamTls>>, UpstreamTlsError> {
        let Some(settings) = settings else {
            return Ok(None);
        };
        let ca = match (&settings.ca_file, &settings.ca_pem) {
            (None, _) => None,
            (Some(_), Some(pem)) => Some(Arc::clone(pem)),
            (Some(file), None) => {
                return Err(UpstreamTlsError::NotLoaded {
                    origin: file.display().to_string(),
                })
            }
        };
        let name: Box<str> = match (&settings.server_name, &upstream.host) {
            (Some(name), _) => name.as_str().into(),
            (None, UpstreamHost::Name(host)) => host.as_str().into(),
            (None, UpstreamHost::Ip(ip)) => ip.to_string().into(),
        };
        let key = (ca, name);
        if let Some(tls) = self.upstreams.borrow().get(&key) {
            return Ok(Some(Arc::clone(tls)));
        }
        let (ca, name) = key;
        let server_name = ServerName::try_from(&*name)
            .map_err(|e| UpstreamTlsError::ServerName {
                name: name.to_string(),
                reason: e.to_string(),
            })?
            .to_owned();
        let config = self.configs.borrow().get(&ca).cloned();
        let config = match config {
            Some(config) => config,
            None => {
                let origin = settings
                    .ca_file
                    .as_ref()
                    .map_or_else(|| "built-in roots".to_string(), |f| f.display().to_string());
                let config = client_config(ca.as_deref(), &origin)?;
                self.configs
                    .borrow_mut()
                    .insert(ca.clone(), Arc::clone(&config));
                config
            }
        };
        let tls = Arc::new(UpstreamTls {
            config,
            server_name,
            ca: ca.clone(),
            name: name.clone(),
        });
        self.upstreams
            .borrow_mut()
            .insert((ca, name), Arc::clone(&tls));
        Ok(Some(tls))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::time::Instant;
    use weir_config::{Upstream, UpstreamHost};

    use super::{check_upstream_ca, TlsReuse, UpstreamTlsError};
    use crate::stats::UpstreamErrorKind;

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed");
        Ca { cert, key }
    }

    /// A TLS server on `127.0.0.1:0` presenting a leaf of `ca` for `name`, offering `alpn`; it
    /// accepts connections until the test ends.
    async fn server(ca: &Ca, name: &str, alpn: &[&[u8]]) -> SocketAddr {
        let params = CertificateParams::new(vec![name.to_string()]).expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("signed");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::try_from(key.serialize_der()).expect("a key"),
        )
        .expect("a server config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        // Hold the connection open until the client goes.
                        let _ = tokio::io::AsyncReadExt::read(&mut { tls }, &mut [0; 1]).await;
                    }
                });
            }
        });
        addr
    }

    fn upstream(addr: SocketAddr) -> Upstream {
        Upstream {
            name: addr.to_string(),
            host: UpstreamHost::Ip(addr.ip()),
            port: addr.port(),
            addrs: vec![addr],
        }
    }

    async fn handshake(
        addr: SocketAddr,
        ca_pem: Option<&str>,
        server_name: Option<&str>,
    ) -> Result<(), (UpstreamErrorKind, String)> {
        let settings = weir_config::UpstreamTls {
            ca_file: ca_pem.map(|_| "/etc/weir/upstream-ca.pem".into()),
            ca_pem: ca_pem.map(|p| Arc::from(p.as_bytes())),
            server_name: server_name.map(Into::into),
        };
        let tls = TlsReuse::default()
            .upstream(Some(&settings), &upstream(addr))
            .expect("usable settings")
            .expect("TLS for an h2 version");
        let timeout = Duration::from_secs(5);
        let stream = crate::upstream::dial(addr, timeout).await?;
        tls.handshake(stream, addr, Instant::now() + timeout, timeout)
            .await
            .map(drop)
    }

    #[tokio::test]
    async fn handshake_failures_say_why_and_are_connect_or_protocol_errors() {
        let ca = ca();
        let pem = ca.cert.pem();
        let good = server(&ca, "api.internal", &[b"h2"]).await;
        handshake(good, Some(&pem), Some("api.internal"))
            .await
            .expect("a verified h2 connection");

        let cases = [
            (
                handshake(good, Some(&pem), Some("other.internal")).await,
                UpstreamErrorKind::Connect,
                "not valid for name",
            ),
            (
                // The built-in web roots do not know the test CA.
                handshake(good, None, Some("api.internal")).await,
                UpstreamErrorKind::Connect,
                "UnknownIssuer",
            ),
            (
                handshake(
                    server(&ca, "api.internal", &[b"http/1.1"]).await,
                    Some(&pem),
                    Some("api.internal"),
                )
                .await,
                UpstreamErrorKind::Protocol,
                "refused ALPN h2",
            ),
            (
                handshake(
                    server(&ca, "api.internal", &[]).await,
                    Some(&pem),
                    Some("api.internal"),
                )
                .await,
                UpstreamErrorKind::Protocol,
                "it chose none",
            ),
        ];
        for (result, kind, why) in cases {
            let (got, message) = result.expect_err("a refused handshake");
            assert_eq!(got, kind, "{message}");
            assert!(message.contains(why), "{message}");
            assert!(
                message.contains("127.0.0.1:"),
                "names the upstream: {message}"
            );
        }
    }

    #[test]
    fn configs_are_shared_per_ca_and_carried_by_content() {
        let reuse = TlsReuse::default();
        let pem = ca().cert.pem();
        let settings = |name: Option<&str>| weir_config::UpstreamTls {
            ca_file: Some("/ca.pem".into()),
            ca_pem: Some(Arc::from(pem.as_bytes())),
            server_name: name.map(Into::into),
        };
        let a = upstream("127.0.0.1:1".parse().expect("an address"));
        let b = upstream("127.0.0.1:2".parse().expect("an address"));
        let one = reuse.upstream(Some(&settings(Some("x.internal"))), &a);
        let two = reuse.upstream(Some(&settings(Some("x.internal"))), &b);
        let (one, two) = (one.unwrap().unwrap(), two.unwrap().unwrap());
        assert!(Arc::ptr_eq(&one, &two), "same CA and name: one UpstreamTls");
        let by_ip = reuse.upstream(Some(&settings(None)), &a).unwrap().unwrap();
        assert!(
            Arc::ptr_eq(&one.config, &by_ip.config),
            "one client config per CA"
        );
        assert_eq!(&*by_ip.name, "127.0.0.1");
        assert!(reuse.upstream(None, &a).unwrap().is_none());

        let not_loaded = weir_config::UpstreamTls {
            ca_pem: None,
            ..settings(None)
        };
        assert!(matches!(
            reuse.upstream(Some(&not_loaded), &a),
            Err(UpstreamTlsError::NotLoaded { .. })
        ));
        assert!(matches!(
            check_upstream_ca(b"garbage", "x"),
            Err(UpstreamTlsError::NoCertificate { .. })
        ));
        assert!(matches!(
            check_upstream_ca(
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "x"
            ),
            Err(UpstreamTlsError::Anchor { .. } | UpstreamTlsError::Pem { .. })
        ));
        assert_eq!(check_upstream_ca(pem.as_bytes(), "x").expect("a CA"), 1);
    }
}
