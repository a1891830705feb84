//! Every way a request can fail in the data plane, and the one place that turns a failure into a
//! response.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;
use crate::stats::{ClientErrorKind, UpstreamErrorKind};

/// A request that weir answered itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No service matches the Host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// The request names no host (HTTP/1.1 without `Host`, HTTP/2 without `:authority`), names
    /// it twice (a repeated `Host`), or names two (a `Host` that differs from the authority of
    /// the request target or `:authority`).
    #[error("missing, repeated, invalid or conflicting Host")]
    BadHost,
    /// A request path whose dot segments climb above the root (`/../x`).
    #[error("request path climbs above the root")]
    BadPath,
    /// The client broke its own request (a stalled, oversized or malformed body, or it went
    /// away): counted as a client error, never against the version.
    #[error("client error: {}", .0.as_str())]
    Client(ClientErrorKind),
    /// The upstream failed before a response head arrived.
    #[error("upstream {kind:?} failure: {message}")]
    Upstream {
        /// What failed.
        kind: UpstreamErrorKind,
        /// Detail for the log.
        message: String,
    },
}

// === impl ProxyError ===

impl ProxyError {
    /// The status sent to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadHost | ProxyError::BadPath => StatusCode::BAD_REQUEST,
            ProxyError::Client(kind) => match kind {
                ClientErrorKind::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
                ClientErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                ClientErrorKind::BadRequest | ClientErrorKind::Disconnect => {
                    StatusCode::BAD_REQUEST
                }
            },
            ProxyError::Upstream { kind, .. } => match kind {
                UpstreamErrorKind::ConnectTimeout | UpstreamErrorKind::Timeout => {
                    StatusCode::GATEWAY_TIMEOUT
                }
                UpstreamErrorKind::Connect
                | UpstreamErrorKind::Protocol
                | UpstreamErrorKind::Body => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// The response weir sends: the status and a short plain-text body.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let body: &'static str = match self {
            ProxyError::NoRoute => "no route\n",
            ProxyError::BadHost => "missing or invalid host\n",
            ProxyError::BadPath => "invalid path\n",
            ProxyError::Client(ClientErrorKind::BodyTimeout) => "request body timed out\n",
            ProxyError::Client(ClientErrorKind::BodyTooLarge) => "request body too large\n",
            ProxyError::Client(_) => "bad request\n",
            ProxyError::Upstream { kind, .. } => match kind {
                UpstreamErrorKind::ConnectTimeout | UpstreamErrorKind::Timeout => {
                    "upstream timed out\n"
                }
                _ => "upstream unavailable\n",
            },
        };
        let mut response = Response::new(ProxyBody::full(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(self, ProxyError::Client(_)) {
            // Whatever is left of the client's body is not read: the connection cannot carry
            // another request (HTTP/2 drops this header and resets the stream instead).
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
