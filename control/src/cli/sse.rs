//! Following `/api/v1/events`: a server-sent-events parser and a task that wakes the `--watch`
//! loop whenever weir reports a change, reconnecting when the stream breaks.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::sync::Notify;
use weir_control::engine::rollout::Event;

use super::client::Api;

/// One server-sent event: its `data:` lines, joined with newlines (weir names the event's kind in
/// the `event:` field and again in the JSON, so the CLI reads only the data).
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    /// The data.
    pub data: String,
}

/// Splits a byte stream into events; comments (`: keep-alive`) are dropped.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: Vec<u8>,
}

// === impl Parser ===

impl Parser {
    /// Feeds a chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Message> {
        self.buffer
            .extend(chunk.iter().copied().filter(|&byte| byte != b'\r'));
        let mut messages = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|pair| pair == b"\n\n") {
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            if let Some(message) = parse_block(&String::from_utf8_lossy(&block)) {
                messages.push(message);
            }
        }
        messages
    }
}

fn parse_block(block: &str) -> Option<Message> {
    let mut fields = 0;
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        fields += 1;
        if field == "data" {
            data.push(value);
        }
    }
    (fields > 0).then(|| Message {
        data: data.join("\n"),
    })
}

/// Follows the event stream until the task is dropped, waking `changed` on every event about
/// `service` (every event when `None`). Reconnects after a second when the stream breaks; the
/// watch loop polls meanwhile.
pub async fn follow(api: Api, service: Option<String>, changed: Arc<Notify>) {
    loop {
        if let Ok(mut body) = api.events().await {
            let mut parser = Parser::default();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                for message in parser.push(&chunk) {
                    let relevant = match (&service, serde_json::from_str::<Event>(&message.data)) {
                        (None, _) => true,
                        (Some(name), Ok(event)) => &event.service == name,
                        (Some(_), Err(_)) => true,
                    };
                    if relevant {
                        changed.notify_one();
                    }
                }
            }
            // The stream ended: weir restarted or went away; tell the loop to look.
            changed.notify_one();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let mut parser = Parser::default();
        assert!(parser.push(b": weir events\n\n").is_empty());
        assert!(parser.push(b"event: Advance\ndata: {\"a\"").is_empty());
        let messages = parser.push(b":1}\n\nevent: Paused\r\ndata: x\r\n\r\n: keep-alive\n\n");
        assert_eq!(
            messages,
            vec![
                Message {
                    data: "{\"a\":1}".into()
                },
                Message { data: "x".into() },
            ]
        );
    }

    #[test]
    fn data_lines_are_joined() {
        let mut parser = Parser::default();
        let messages = parser.push(b"data: one\ndata:two\n\n");
        assert_eq!(
            messages,
            vec![Message {
                data: "one\ntwo".into()
            }]
        );
    }
}
