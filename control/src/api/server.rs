//! The admin listener: `/metrics` (Prometheus), `/healthz` (alive), `/readyz` (config loaded and
//! listeners bound), and the rollout API under `/api/v1` (JSON, camelCase; server-sent events at
//! `/api/v1/events`). With `admin.tokenFile`, every mutation needs `Authorization: Bearer TOKEN`.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

use crate::engine::driver::{CommandError, Handle};
use crate::engine::rollout::Command;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Every metric weir exports.
    pub registry: Arc<Registry>,
    /// True once the config is loaded and the listeners are bound.
    pub ready: Arc<AtomicBool>,
    /// The driver: status, events, commands.
    pub driver: Handle,
    /// The bearer token file (`admin.tokenFile`), read on every mutation so it can be rotated.
    pub token: Option<PathBuf>,
}

type Body = BoxBody<Bytes, Infallible>;

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: impl Future<Output = ()>) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(state: &AdminState, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().trim_end_matches('/').to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (request.method(), segments.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
                Ok(()) => text_response(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "cannot encode metrics\n".into(),
                ),
            }
        }
        (&Method::GET, ["healthz"]) => text_response(StatusCode::OK, TEXT, "ok\n".into()),
        (&Method::GET, ["readyz"]) => {
            if state.ready.load(Ordering::Acquire) {
                text_response(StatusCode::OK, TEXT, "ready\n".into())
            } else {
                text_response(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".into())
            }
        }
        (&Method::GET, ["api", "v1", "services"]) => {
            json(StatusCode::OK, &state.driver.status().summaries())
        }
        (&Method::GET, ["api", "v1", "services", name]) => {
            match state.driver.status().service(name) {
                Some(service) => json(StatusCode::OK, service),
                None => error(StatusCode::NOT_FOUND, &format!("no service named {name:?}")),
            }
        }
        (&Method::GET, ["api", "v1", "services", name, "history"]) => {
            match state.driver.status().service(name) {
                Some(service) => {
                    let history = service
                        .details
                        .as_ref()
                        .map(|d| d.history.clone())
                        .unwrap_or_default();
                    json(
                        StatusCode::OK,
                        &serde_json::json!({ "name": name, "revisions": history }),
                    )
                }
                None => error(StatusCode::NOT_FOUND, &format!("no service named {name:?}")),
            }
        }
        (&Method::POST, ["api", "v1", "services", name, verb]) => {
            if let Some(response) = unauthorized(state, &request) {
                return response;
            }
            let full = query
                .split('&')
                .any(|kv| kv == "full=true" || kv == "full=1" || kv == "full");
            let Some(command) = Command::from_verb(verb, full) else {
                return error(StatusCode::NOT_FOUND, &format!("unknown action {verb:?}"));
            };
            match state.driver.command(name, command).await {
                Ok(()) => match state.driver.status().service(name) {
                    Some(service) => json(StatusCode::OK, service),
                    None => json(StatusCode::OK, &serde_json::json!({ "name": name })),
                },
                Err(CommandError::UnknownService(_)) => {
                    error(StatusCode::NOT_FOUND, &format!("no service named {name:?}"))
                }
                Err(CommandError::Closed) => {
                    error(StatusCode::SERVICE_UNAVAILABLE, "weir is shutting down")
                }
                Err(refused) => error(StatusCode::CONFLICT, &refused.to_string()),
            }
        }
        (&Method::GET, ["api", "v1", "events"]) => events(state),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The 401 (or 503) to send when a token is configured and the request does not carry it.
fn unauthorized(state: &AdminState, request: &Request<Incoming>) -> Option<Response<Body>> {
    let Some(path) = &state.token else {
        return None;
    };
    let expected = match std::fs::read_to_string(path) {
        Ok(token) => token.trim().to_string(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the admin token file");
            return Some(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the admin token file cannot be read",
            ));
        }
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given)
            if !expected.is_empty() && constant_time_eq(given.as_bytes(), expected.as_bytes()) =>
        {
            None
        }
        _ => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "this action needs Authorization: Bearer <token>",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Some(response)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /api/v1/events`: one server-sent event per transition, with a comment every 15 s to keep
/// proxies from closing an idle stream.
fn events(state: &AdminState) -> Response<Body> {
    let mut events = state.driver.subscribe();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b": weir events\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut heartbeat = tokio::time::interval(Duration::from_secs(15));
        loop {
            let chunk = tokio::select! {
                _ = heartbeat.tick() => Bytes::from_static(b": keep-alive\n\n"),
                event = events.recv() => match event {
                    Ok(event) => {
                        let data = serde_json::to_string(&event).unwrap_or_else(|_| "{}".into());
                        Bytes::from(format!("event: {}\ndata: {data}\n\n", event.kind))
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => Bytes::from(format!(": {n} events dropped (slow reader)\n\n")),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(SseBody { rx }.boxed());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_string(value) {
        Ok(body) => text_response(status, "application/json", body),
        Err(e) => text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            format!("cannot encode: {e}\n"),
        ),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}
