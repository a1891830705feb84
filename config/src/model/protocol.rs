//! How weir speaks to a version's upstreams (`stable.protocol`, `canary.protocol`).

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
}

impl UpstreamProtocol {
    /// The name as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
        }
    }

    /// Whether the upstream speaks HTTP/2.
    pub fn is_http2(self) -> bool {
        !matches!(self, UpstreamProtocol::Http1)
    }
}
