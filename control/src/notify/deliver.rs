//! One message to one endpoint: the body posted within the notifier's timeout, retried with a
//! doubling backoff (or the endpoint's `Retry-After`, capped) while the endpoint cannot be
//! reached, times out, or answers 429 or 5xx; any other answer outside 2xx fails at once.
//!
//! The URL is never logged (webhook URLs are secrets): a failure names the notifier, the
//! service, the event and the reason.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use weir_config::{Notifier, NotifierTarget};

use crate::engine::analysis::provider::http::chain;

use super::message::{self, Item};
use super::{Counters, Outcome};

/// The `User-Agent` of every notification.
const USER_AGENT: &str = concat!("weir/", env!("CARGO_PKG_VERSION"));
/// The most of an answer's body read (kept for the log when the answer is a failure).
const ANSWER_LIMIT: usize = 16 * 1024;
/// The most of an answer's body quoted in the log.
const ANSWER_QUOTED: usize = 200;
/// The largest `urlFile` read.
const URL_FILE_LIMIT: u64 = 8 * 1024;
/// How long an idle connection to an endpoint is kept for the next message.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// The notifiers' HTTP client (hyper-util over rustls with the system's roots), shared by every
/// notifier of one weir.
#[derive(Clone)]
pub(crate) struct Client {
    client: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Why https cannot work, if the root certificates could not be loaded.
    tls_error: Option<Arc<str>>,
}

impl Client {
    pub(crate) fn new() -> Client {
        // http keeps working without roots; https deliveries fail with the reason.
        let (connector, tls_error) = crate::engine::analysis::provider::http::connector(true);
        let tls_error = tls_error.map(Arc::from);
        let client = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(2)
            .build(connector);
        Client { client, tls_error }
    }
}

/// Why one attempt failed, and whether it is worth another.
#[derive(Debug)]
struct Failure {
    reason: String,
    retry: bool,
    /// The endpoint's `Retry-After`, when it gave one.
    retry_after: Option<Duration>,
}

impl Failure {
    fn fatal(reason: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            retry: false,
            retry_after: None,
        }
    }

    fn transient(reason: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            retry: true,
            retry_after: None,
        }
    }
}

/// Delivers `item` with `notifier`'s settings, counting every attempt's outcome.
pub(crate) async fn deliver(
    client: &Client,
    notifier: &Notifier,
    item: &Item,
    counters: &Counters,
) {
    let body = Bytes::from(message::body(notifier, item).to_string());
    let mut backoff = notifier.retry_backoff;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let failure = match attempt_once(client, notifier, body.clone()).await {
            Ok(()) => {
                counters.inc(&notifier.name, Outcome::Delivered);
                tracing::debug!(target: "weir::notify", notifier = %notifier.name, service = %item.event.service, event = %item.on, attempt, "notification delivered");
                return;
            }
            Err(failure) => failure,
        };
        if !failure.retry || attempt > notifier.retries {
            counters.inc(&notifier.name, Outcome::Failed);
            tracing::warn!(target: "weir::notify", notifier = %notifier.name, service = %item.event.service, event = %item.on, attempts = attempt, reason = %failure.reason, "notification not delivered");
            return;
        }
        let wait = failure
            .retry_after
            .map_or(backoff, |after| after.min(Notifier::MAX_RETRY_AFTER));
        counters.inc(&notifier.name, Outcome::Retried);
        tracing::info!(target: "weir::notify", notifier = %notifier.name, service = %item.event.service, event = %item.on, attempt, reason = %failure.reason, retry_in = ?wait, "notification attempt failed; retrying");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Notifier::MAX_BACKOFF);
    }
}

/// One POST of `body`.
async fn attempt_once(client: &Client, notifier: &Notifier, body: Bytes) -> Result<(), Failure> {
    let url = match &notifier.target {
        NotifierTarget::Url(url) => url.clone(),
        NotifierTarget::File(path) => read_url_file(path).await.map_err(Failure::fatal)?,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|_| Failure::fatal("the URL does not parse"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            if let Some(why) = &client.tls_error {
                return Err(Failure::fatal(format!("https is unavailable: {why}")));
            }
        }
        _ => return Err(Failure::fatal("the URL is not http:// or https://")),
    }
    if uri.host().is_none() {
        return Err(Failure::fatal("the URL has no host"));
    }
    let mut request = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, USER_AGENT);
    for (name, value) in &notifier.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Full::new(body))
        .map_err(|error| Failure::fatal(format!("invalid request: {error}")))?;
    let exchange = async {
        let response = client.client.request(request).await.map_err(|error| {
            let reason = match error.source() {
                Some(source) if error.is_connect() => format!("cannot connect: {}", chain(source)),
                _ => chain(&error),
            };
            Failure::transient(reason)
        })?;
        let (parts, body) = response.into_parts();
        let answer = Limited::new(body, ANSWER_LIMIT)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        Ok::<_, Failure>((parts, answer))
    };
    let (parts, answer) = tokio::time::timeout(notifier.timeout, exchange)
        .await
        .map_err(|_| {
            Failure::transient(format!(
                "no answer within {}",
                crate::engine::analysis::show_duration(notifier.timeout)
            ))
        })??;
    let status = parts.status;
    if status.is_success() {
        return Ok(());
    }
    let quoted = String::from_utf8_lossy(&answer);
    let quoted: String = message::truncate(quoted.trim(), ANSWER_QUOTED)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let reason = if quoted.is_empty() {
        format!("answered {status}")
    } else {
        format!("answered {status}: {quoted}")
    };
    if status == http::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Err(Failure {
            reason,
            retry: true,
            retry_after: parts
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after),
        })
    } else {
        Err(Failure::fatal(reason))
    }
}

/// `urlFile`'s URL: the file's first non-empty line, trimmed.
async fn read_url_file(path: &std::path::Path) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let shown = path.display();
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|error| format!("cannot read urlFile {shown}: {error}"))?;
    let mut text = String::new();
    file.take(URL_FILE_LIMIT)
        .read_to_string(&mut text)
        .await
        .map_err(|error| format!("cannot read urlFile {shown}: {error}"))?;
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("urlFile {shown} is empty"))
}

/// A `Retry-After` value: seconds, or an HTTP date (the time until then).
pub(crate) fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}
