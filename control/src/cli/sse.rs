//! Following `/api/v1/events`: the `sse-stream` crate decodes the server-sent events, behind a
//! bound on the bytes of one event (an admin API, or whatever answers on its port, cannot make
//! the CLI buffer without limit), and a task wakes the `--watch` loop whenever weir reports a
//! change, reconnecting when the stream breaks (after the server's `retry:`, within bounds).

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyDataStream;
use sse_stream::{Sse, SseByteStream};
use tokio::sync::Notify;
use weir_control::engine::rollout::Event;

use super::client::{Api, ApiError};

/// The most bytes one event may take on the wire, from the end of the previous event to the
/// blank line that ends it, comments and line ends included: weir's events are a few hundred
/// bytes; a stream that goes past this is not weir's and is dropped (and reconnected).
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// How long to wait before reconnecting while the server has not said (`retry:`).
const RECONNECT: Duration = Duration::from_secs(1);
/// The shortest reconnection delay a server's `retry:` may set (no reconnection storm).
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// The longest reconnection delay a server's `retry:` may set (the watch loop polls meanwhile).
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Why the event stream was dropped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection broke.
    #[error("the event stream broke: {0}")]
    Body(#[source] Box<dyn StdError + Send + Sync>),
    /// An event went past [`MAX_EVENT_BYTES`] (or the bound a test gives).
    #[error("an event longer than {limit} bytes: not weir's event stream")]
    TooLong {
        /// The bound.
        limit: usize,
    },
}

/// Decodes a stream of chunks into events (comment-only blocks such as `: keep-alive` are
/// skipped); ends with an error once one event takes more than `limit` bytes.
pub fn decode<S, E>(chunks: S, limit: usize) -> impl Stream<Item = Result<Sse, sse_stream::Error>>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut bound = EventBound::new(limit);
    SseByteStream::new(chunks.map(move |chunk| {
        let chunk = chunk.map_err(|e| ReadError::Body(e.into()))?;
        bound.feed(&chunk)?;
        Ok::<_, ReadError>(chunk)
    }))
}

/// Subscribes to weir's events: [`decode`] over the response body, bounded by
/// [`MAX_EVENT_BYTES`].
pub async fn subscribe(
    api: &Api,
) -> Result<impl Stream<Item = Result<Sse, sse_stream::Error>>, ApiError> {
    let body = api.events().await?;
    Ok(decode(BodyDataStream::new(body), MAX_EVENT_BYTES))
}

/// Follows the event stream until the task is dropped, waking `changed` on every event about
/// `service` (every event when `None`). Reconnects when the stream breaks, after a second or the
/// server's `retry:` (kept within 100 ms..30 s), or after 30 s when an event went past the bound;
/// the watch loop polls meanwhile.
pub async fn follow(api: Api, service: Option<String>, changed: Arc<Notify>) {
    let mut reconnect = RECONNECT;
    loop {
        if let Ok(events) = subscribe(&api).await {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => {
                        if is_too_long(&error) {
                            // Not weir's stream: the dropped connection may linger in the
                            // client (hyper does not close it); come back rarely.
                            reconnect = RECONNECT_MAX;
                        }
                        break;
                    }
                };
                if let Some(retry) = event.retry {
                    reconnect = reconnect_delay(retry);
                }
                if relevant(&event, service.as_deref()) {
                    changed.notify_one();
                }
            }
            // The stream ended: weir restarted or went away; tell the loop to look.
            changed.notify_one();
        }
        tokio::time::sleep(reconnect).await;
    }
}

/// Whether the stream ended because an event went past the bound.
fn is_too_long(error: &sse_stream::Error) -> bool {
    matches!(error, sse_stream::Error::Body(source)
        if matches!(source.downcast_ref::<ReadError>(), Some(ReadError::TooLong { .. })))
}

/// A server's `retry:` (milliseconds), within [`RECONNECT_MIN`]..=[`RECONNECT_MAX`].
fn reconnect_delay(retry_ms: u64) -> Duration {
    Duration::from_millis(retry_ms).clamp(RECONNECT_MIN, RECONNECT_MAX)
}

/// Whether an event may concern `service`: its data is an [`Event`] about it, or not an `Event`
/// at all (the loop then looks).
fn relevant(event: &Sse, service: Option<&str>) -> bool {
    let Some(name) = service else {
        return true;
    };
    let data = event.data.as_deref().unwrap_or_default();
    serde_json::from_str::<Event>(data).map_or(true, |event| event.service == name)
}

/// Counts the bytes of the event being received: every byte since the blank line that ended
/// the previous one (a line end right after a line end, whether LF, CR or CRLF, split across
/// chunks or not). The decoder buffers at most that much for one event.
#[derive(Debug)]
struct EventBound {
    limit: usize,
    pending: usize,
    /// The current line has bytes (so the next line end ends a line, not an event).
    in_line: bool,
    /// The last chunk ended with CR: an LF opening the next chunk belongs to it.
    after_cr: bool,
}

// === impl EventBound ===

impl EventBound {
    fn new(limit: usize) -> EventBound {
        EventBound {
            limit,
            pending: 0,
            in_line: false,
            after_cr: false,
        }
    }

    fn feed(&mut self, mut chunk: &[u8]) -> Result<(), ReadError> {
        if chunk.is_empty() {
            return Ok(());
        }
        if std::mem::take(&mut self.after_cr) {
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                self.count(1)?;
                chunk = rest;
            }
        }
        while !chunk.is_empty() {
            let Some(end) = memchr::memchr2(b'\r', b'\n', chunk) else {
                self.count(chunk.len())?;
                self.in_line = true;
                break;
            };
            let mut next = end + 1;
            if chunk[end] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if end > 0 || self.in_line {
                self.count(next)?;
                self.in_line = false;
            } else {
                // A blank line: the event (or the comments) before it is complete.
                self.pending = 0;
            }
            chunk = &chunk[next..];
        }
        Ok(())
    }

    fn count(&mut self, bytes: usize) -> Result<(), ReadError> {
        self.pending = self.pending.saturating_add(bytes);
        if self.pending > self.limit {
            return Err(ReadError::TooLong { limit: self.limit });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
