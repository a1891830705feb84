//! The access log (`weir run --access-log`): one line per request, written when its response
//! has been sent (or abandoned), in the `combined` format (Apache's, with weir's fields appended)
//! or as one JSON object per line.
//!
//! Workers never write: each line is formatted on the worker and handed to a bounded queue
//! ([`AccessLog::QUEUE`] lines); one `weir-access-log` thread writes them (to stdout unless the
//! log was made with [`AccessLog::channel`]). A full queue drops the line and counts it
//! (reported by the writer as a warning), so a slow log reader never stalls a request. With the
//! log off, nothing of this runs: no line is built and no body is wrapped.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use tokio::time::Instant;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    /// Apache's combined format followed by weir's fields as `key="value"` pairs.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

/// Where access lines go: a bounded queue to a writer thread.
#[derive(Clone, Debug)]
pub struct AccessLog {
    format: AccessLogFormat,
    sender: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Lines waiting for the writer at most; more are dropped (and counted).
    pub const QUEUE: usize = 16 * 1024;

    /// A log written to stdout by a `weir-access-log` thread (it ends once every clone of the log
    /// is dropped).
    pub fn stdout(format: AccessLogFormat) -> std::io::Result<AccessLog> {
        let (sender, lines) = mpsc::sync_channel::<String>(Self::QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || write_lines(&lines, &counted, std::io::stdout().lock()))?;
        Ok(AccessLog {
            format,
            sender,
            dropped,
        })
    }

    /// A log whose lines are received from the returned end (tests, embedding).
    pub fn channel(format: AccessLogFormat) -> (AccessLog, Receiver<String>) {
        let (sender, lines) = mpsc::sync_channel::<String>(Self::QUEUE);
        let log = AccessLog {
            format,
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (log, lines)
    }

    /// Lines dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, line: String) {
        match self.sender.try_send(line) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The writer thread: writes each line, flushing whenever the queue is empty.
fn write_lines(lines: &Receiver<String>, dropped: &AtomicU64, out: impl Write) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut reported = 0;
    while let Ok(line) = lines.recv() {
        let mut next = Some(line);
        while let Some(line) = next {
            if out.write_all(line.as_bytes()).is_err() {
                return;
            }
            next = lines.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
        let now = dropped.load(Ordering::Relaxed);
        if now > reported {
            tracing::warn!(
                dropped = now - reported,
                "access log lines dropped: the log's reader is too slow"
            );
            reported = now;
        }
    }
}

/// What the log says about a request, taken before the request moves upstream.
#[derive(Debug)]
pub(crate) struct AccessLine {
    method: Method,
    uri: Uri,
    version: Version,
    host: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    /// What a trusted peer says the client was (its `X-Forwarded-For`).
    forwarded_for: Option<HeaderValue>,
    peer: IpAddr,
    start: Instant,
    wall: SystemTime,
}

/// A request's line while its response is sent.
#[derive(Debug)]
pub(crate) struct Pending {
    log: AccessLog,
    line: AccessLine,
    status: StatusCode,
    service: Option<Arc<str>>,
    version: Option<Arc<str>>,
    upstream: Option<SocketAddr>,
    /// From the start until the response head was there.
    ttfb: Duration,
    /// Body bytes sent to the client (after compression).
    pub(crate) bytes: u64,
    /// Whether the body was sent completely.
    pub(crate) complete: bool,
    written: bool,
}

/// Which upstream answered, left on the response by the upstream stage while the log is on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UpstreamAddr(pub(crate) SocketAddr);

impl AccessLine {
    pub(crate) fn of<B>(request: &Request<B>, peer: IpAddr, trusted: bool, start: Instant) -> Self {
        let headers = request.headers();
        AccessLine {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            host: headers.get(header::HOST).cloned(),
            user_agent: headers.get(header::USER_AGENT).cloned(),
            referer: headers.get(header::REFERER).cloned(),
            request_id: headers.get(&X_REQUEST_ID).cloned(),
            forwarded_for: if trusted {
                headers.get(&X_FORWARDED_FOR).cloned()
            } else {
                None
            },
            peer,
            start,
            wall: SystemTime::now(),
        }
    }

    /// The line of a response whose head is ready now.
    pub(crate) fn pending(
        self,
        log: AccessLog,
        status: StatusCode,
        service: Option<Arc<str>>,
        version: Option<Arc<str>>,
        upstream: Option<SocketAddr>,
    ) -> Box<Pending> {
        let ttfb = self.start.elapsed();
        Box::new(Pending {
            log,
            line: self,
            status,
            service,
            version,
            upstream,
            ttfb,
            bytes: 0,
            complete: false,
            written: false,
        })
    }
}

impl Pending {
    /// Formats and queues the line (once).
    pub(crate) fn write(&mut self) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        let total = self.line.start.elapsed();
        let line = match self.log.format {
            AccessLogFormat::Combined => self.combined(total),
            AccessLogFormat::Json => self.json(total),
        };
        self.log.send(line);
    }

    fn combined(&self, total: Duration) -> String {
        let l = &self.line;
        let mut out = String::with_capacity(256);
        let time = civil(l.wall);
        let target = l.uri.path_and_query().map_or("/", |p| p.as_str());
        // `%h - - [%t] "%r" %>s %b "%{Referer}i" "%{User-agent}i"`
        out.push_str(&format!(
            "{} - - [{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000] \"",
            l.peer,
            time.day,
            MONTHS[usize::from(time.month - 1)],
            time.year,
            time.hour,
            time.minute,
            time.second
        ));
        quoted(&mut out, l.method.as_str().as_bytes());
        out.push(' ');
        quoted(&mut out, target.as_bytes());
        out.push(' ');
        out.push_str(protocol(l.version));
        out.push_str(&format!("\" {} ", self.status.as_u16()));
        if self.bytes == 0 {
            out.push('-');
        } else {
            out.push_str(&self.bytes.to_string());
        }
        for value in [&l.referer, &l.user_agent] {
            out.push_str(" \"");
            quoted(&mut out, value.as_ref().map_or(b"-", |v| v.as_bytes()));
            out.push('"');
        }
        let upstream = self.upstream.map(|a| a.to_string());
        let fields: [(&str, Option<&[u8]>); 7] = [
            ("host", l.host.as_ref().map(HeaderValue::as_bytes)),
            ("service", self.service.as_deref().map(str::as_bytes)),
            ("version", self.version.as_deref().map(str::as_bytes)),
            ("upstream", upstream.as_deref().map(str::as_bytes)),
            (
                "request_id",
                l.request_id.as_ref().map(HeaderValue::as_bytes),
            ),
            (
                "forwarded_for",
                l.forwarded_for.as_ref().map(HeaderValue::as_bytes),
            ),
            (
                "complete",
                Some(if self.complete { b"true" } else { b"false" }),
            ),
        ];
        for (name, value) in fields {
            out.push(' ');
            out.push_str(name);
            out.push_str("=\"");
            quoted(&mut out, value.unwrap_or(b"-"));
            out.push('"');
        }
        out.push_str(&format!(
            " duration_ms={:.3} upstream_ttfb_ms={:.3}\n",
            total.as_secs_f64() * 1000.0,
            self.ttfb.as_secs_f64() * 1000.0
        ));
        out
    }

    fn json(&self, total: Duration) -> String {
        let l = &self.line;
        let text = |v: &Option<HeaderValue>| {
            v.as_ref()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let time = civil(l.wall);
        let object = serde_json::json!({
            "time": format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                time.year, time.month, time.day, time.hour, time.minute, time.second, time.millis
            ),
            "client": l.peer.to_string(),
            "forwarded_for": text(&l.forwarded_for),
            "method": l.method.as_str(),
            "path": l.uri.path_and_query().map_or("/", |p| p.as_str()),
            "protocol": protocol(l.version),
            "host": text(&l.host),
            "status": self.status.as_u16(),
            "bytes_sent": self.bytes,
            "complete": self.complete,
            "service": self.service.as_deref(),
            "version": self.version.as_deref(),
            "upstream": self.upstream.map(|a| a.to_string()),
            "request_id": text(&l.request_id),
            "user_agent": text(&l.user_agent),
            "referer": text(&l.referer),
            "duration_ms": total.as_secs_f64() * 1000.0,
            "upstream_ttfb_ms": self.ttfb.as_secs_f64() * 1000.0,
        });
        let mut line = object.to_string();
        line.push('\n');
        line
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.write();
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Appends `bytes` for a double-quoted field as Apache does: `"` and `\` escaped with a
/// backslash, anything not visible ASCII or space as `\xHH`, so a line is always one line.
fn quoted(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b' '..=b'~' => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
}

/// A UTC time of day and date.
struct Civil {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    millis: u16,
}

/// UTC calendar fields of `time` (Howard Hinnant's `civil_from_days`).
fn civil(time: SystemTime) -> Civil {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        // In range by construction: 1..=12 and 1..=31.
        month: u8::try_from(month).unwrap_or(1),
        day: u8::try_from(day).unwrap_or(1),
        hour: (rem / 3600) as u8,
        minute: (rem / 60 % 60) as u8,
        second: (rem % 60) as u8,
        millis: since.subsec_millis() as u16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_instants() {
        let at = |secs: u64| civil(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        let c = at(0);
        assert_eq!((c.year, c.month, c.day, c.hour), (1970, 1, 1, 0));
        // 2000-02-29T12:34:56Z
        let c = at(951_827_696);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute, c.second),
            (2000, 2, 29, 12, 34, 56)
        );
        // 2026-11-30T00:00:00Z
        let c = at(1_796_000_000 - 1_796_000_000 % 86_400);
        assert_eq!((c.year, c.month), (2026, 11));
    }

    #[test]
    fn quoted_fields_stay_on_one_line() {
        let mut out = String::new();
        quoted(&mut out, b"a\"b\\c\nd\x7f\xff");
        assert_eq!(out, "a\\\"b\\\\c\\x0ad\\x7f\\xff");
    }
}
