//! A client for weir's admin API: `GET`/`POST` with an optional bearer token, the Prometheus
//! exposition, and the server-sent event stream of `/api/v1/events`.

use std::net::SocketAddr;
use std::time::Duration;

use http::{header, HeaderValue, Method};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::client::{self, Http1, Reply};
use crate::TestBody;

/// `GET path` on the admin API.
pub async fn get(admin: SocketAddr, path: &str) -> Reply {
    let mut client = Http1::connect(admin).await;
    client.get(&admin.to_string(), path).await
}

/// `POST path` on the admin API, with `Authorization: Bearer TOKEN` when `token` is given.
pub async fn post(admin: SocketAddr, path: &str, token: Option<&str>) -> Reply {
    let mut request = client::request(Method::POST, &admin.to_string(), path, TestBody::empty());
    if let Some(token) = token {
        request.headers_mut().insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("a valid header"),
        );
    }
    let mut client = Http1::connect(admin).await;
    client.fetch(request).await
}

/// `POST /api/v1/services/SERVICE/ACTION` without a token; panics unless it answers 200.
pub async fn command(admin: SocketAddr, service: &str, action: &str) -> serde_json::Value {
    let reply = post(admin, &format!("/api/v1/services/{service}/{action}"), None).await;
    assert_eq!(
        reply.status,
        200,
        "{action} {service}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

/// `GET /api/v1/services/SERVICE` as JSON; panics unless it answers 200.
pub async fn service(admin: SocketAddr, service: &str) -> serde_json::Value {
    let reply = get(admin, &format!("/api/v1/services/{service}")).await;
    assert_eq!(reply.status, 200, "GET {service}: {}", reply.text());
    reply.json()
}

/// The text of `GET /metrics`.
pub async fn metrics(admin: SocketAddr) -> String {
    let reply = get(admin, "/metrics").await;
    assert_eq!(reply.status, 200, "GET /metrics");
    reply.text().to_string()
}

/// The value of one sample of `GET /metrics` (see [`crate::metrics::sample`]).
pub async fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    crate::metrics::sample(&metrics(admin).await, series)
}

/// One server-sent event.
#[derive(Clone, Debug)]
pub struct Sse {
    /// The `event:` field.
    pub event: String,
    /// The `data:` field, parsed as JSON.
    pub data: serde_json::Value,
}

/// An open `GET /api/v1/events` stream.
pub struct Events {
    _client: Http1,
    body: Incoming,
    buffer: String,
}

impl Events {
    /// Opens the stream and waits for its opening comment, so that every event from now on is
    /// delivered.
    pub async fn open(admin: SocketAddr) -> Events {
        let mut client = Http1::connect(admin).await;
        let response = client
            .send(client::get(&admin.to_string(), "/api/v1/events"))
            .await
            .expect("an answer to GET /api/v1/events");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let mut events = Events {
            _client: client,
            body: response.into_body(),
            buffer: String::new(),
        };
        let first = events.block(Duration::from_secs(5)).await;
        assert!(
            first.as_deref().is_some_and(|b| b.starts_with(':')),
            "the stream opens with a comment, got {first:?}"
        );
        events
    }

    /// The next block (up to a blank line), or `None` if none comes within `timeout`.
    async fn block(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block = self.buffer[..end].to_string();
                self.buffer.drain(..end + 2);
                return Some(block);
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()?
                .expect("the event stream stays open")
                .expect("the event stream does not fail");
            if let Ok(data) = frame.into_data() {
                self.buffer
                    .push_str(std::str::from_utf8(&data).expect("UTF-8 events"));
            }
        }
    }

    /// The next event (comments skipped), or `None` if none comes within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let block = self.block(left).await?;
            let mut event = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    event = Some(value.to_string());
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(value).expect("JSON event data"));
                }
            }
            match (event, data) {
                (Some(event), Some(data)) => return Some(Sse { event, data }),
                (None, None) => continue,
                other => panic!("an event needs both event: and data:, got {other:?} in {block:?}"),
            }
        }
    }
}
