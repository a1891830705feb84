//! Active health probes (`healthCheck`), spoken the way the version speaks to its upstreams:
//! HTTP/1.1 for `http1`, HTTP/2 with prior knowledge for `h2c`, HTTP/2 over TLS (the version's
//! trust and server name, ALPN `h2`) for `h2`. The control plane runs them; they never touch the
//! request path's pools.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use weir_config::UpstreamProtocol;

use crate::routes::UpstreamRoute;

/// One `GET path` to `upstream` over a new connection with `Host: host`, within `timeout`
/// (connect, handshakes and the response head); the status it answered, or why it did not.
pub async fn probe(
    upstream: &UpstreamRoute,
    protocol: UpstreamProtocol,
    path: &str,
    host: &str,
    timeout: Duration,
) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let exchange = async {
        let stream = super::dial(upstream.addr, timeout)
            .await
            .map_err(|(_, message)| message)?;
        match (protocol, &upstream.tls) {
            (UpstreamProtocol::Http1, _) => http1(stream, path, host).await,
            (UpstreamProtocol::H2c, _) | (UpstreamProtocol::H2, None) => {
                http2(stream, "http", path, host).await
            }
            (UpstreamProtocol::H2, Some(tls)) => {
                let stream = tls
                    .handshake(stream, upstream.addr, deadline, timeout)
                    .await
                    .map_err(|(_, message)| message)?;
                http2(stream, "https", path, host).await
            }
        }
    };
    tokio::time::timeout_at(deadline, exchange)
        .await
        .map_err(|_| format!("no response within {timeout:?}"))?
}

fn request(uri: &str, host: &str, close: bool) -> Result<http::Request<Empty<Bytes>>, String> {
    let mut builder = http::Request::get(uri)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "weir-health-check");
    if close {
        builder = builder.header(http::header::CONNECTION, "close");
    }
    builder
        .body(Empty::new())
        .map_err(|e| format!("request: {e}"))
}

async fn http1<S>(stream: S, path: &str, host: &str) -> Result<u16, String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let request = request(path, host, true)?;
    let mut conn = std::pin::pin!(conn);
    let mut response = std::pin::pin!(sender.send_request(request));
    let response = tokio::select! {
        biased;
        response = &mut response => response,
        // The connection ended (`Connection: close`): the response, if any, is delivered.
        _ = &mut conn => response.await,
    };
    response
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("exchange: {e}"))
}

async fn http2<S>(stream: S, scheme: &str, path: &str, host: &str) -> Result<u16, String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let request = request(&format!("{scheme}://{host}{path}"), host, false)?;
    let mut conn = std::pin::pin!(conn);
    let mut response = std::pin::pin!(sender.send_request(request));
    let response = tokio::select! {
        biased;
        response = &mut response => response,
        ended = &mut conn => match ended {
            Ok(()) => return Err("the upstream closed the HTTP/2 connection".into()),
            Err(e) => return Err(format!("HTTP/2 connection: {e}")),
        },
    };
    // Dropping the connection future closes it: one probe, one connection.
    response
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("exchange: {e}"))
}
