//! How weir speaks to a version's upstreams (`stable.protocol`, `canary.protocol`, and `tls` for
//! `protocol: h2`).

use std::path::PathBuf;
use std::sync::Arc;

/// The protocol weir uses to a version's upstreams (`protocol`, per version, so a canary can move
/// a service to HTTP/2 while stable stays on HTTP/1.1).
///
/// Default [`UpstreamProtocol::Http1`]: every upstream speaks it, and its keep-alive pool is the
/// one whose limits (`upstream.maxIdlePerUpstream`, `idleTimeout`) are documented.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// `http1`: HTTP/1.1 over a per-worker keep-alive pool (the default).
    #[default]
    Http1,
    /// `h2c`: HTTP/2 over cleartext with prior knowledge (gRPC servers without TLS). One
    /// multiplexed connection per upstream per worker; requests from HTTP/2 clients stay HTTP/2
    /// end to end (trailers, streaming both ways, `te: trailers`).
    H2c,
    /// `h2`: HTTP/2 over TLS, ALPN `h2` only (gRPC servers with TLS), multiplexed like `h2c`. The
    /// upstream's certificate is verified ([`UpstreamTls`], the version's `tls`; by default
    /// against the built-in web roots and the upstream's own host name).
    H2,
}

impl UpstreamProtocol {
    /// The name as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::H2 => "h2",
        }
    }

    /// Whether the upstream speaks HTTP/2.
    pub fn is_http2(self) -> bool {
        !matches!(self, UpstreamProtocol::Http1)
    }
}

/// How a `protocol: h2` version's upstreams are verified (`tls`, per version; only with `h2`).
///
/// Defaults (no `tls`, or an empty one): the upstream's certificate must chain to the Mozilla root
/// set built into weir (`webpki-roots`) and be valid for the upstream's host as written (its DNS
/// name, or for a literal IP upstream an IP address SAN). Certificates are always verified; there is
/// no switch to turn verification off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// `caFile`: PEM certificates trusted for the upstreams' certificates *instead of* the built-in
    /// roots (a private CA). Relative paths resolve against the config file's folder.
    pub ca_file: Option<PathBuf>,
    /// The contents of `ca_file`. The config crate never reads it: the control plane does when it
    /// loads the config (like listener certificates) and fills this in; `None` until then.
    pub ca_pem: Option<Arc<[u8]>>,
    /// `serverName`: the name sent in SNI and checked against the certificate, for every upstream
    /// of the version (a DNS name or an IP literal). Default: each upstream's own host.
    pub server_name: Option<String>,
}
