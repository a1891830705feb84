//! The request-smuggling corpus (`tests/corpus/smuggling/`) and a harness that replays it against
//! a front proxy (weir, or nginx for the comparison) over raw TCP, with a [`Recorder`] upstream
//! that notes every request that reaches it.
//!
//! - [`corpus`] loads weir's raw cases (`weir-cases.yaml`) and the labelled cases of AWS's
//!   `http-desync-guardian` (`http-desync-guardian/*.yaml`, built into raw requests here).
//! - [`replay`] sends each case on its own connection from its own loopback source address
//!   (`127.1.x.y`), so the upstream attributes what it received by the last `X-Forwarded-For`
//!   element, and classifies it as [`Outcome`]: refused, forwarded clean (normalised), forwarded
//!   ambiguous, or neither (the proxy waited).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What a case is expected to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    /// Ambiguous: must be refused or forwarded only in a normalised form (weir's own `refuse`
    /// cases must be refused outright; see [`Case::must_refuse`]).
    Ambiguous,
    /// Well-formed: should be forwarded.
    Benign,
}

/// One raw request of the corpus.
#[derive(Clone, Debug)]
pub struct Case {
    /// `file: name`.
    pub name: String,
    /// The bytes the client sends.
    pub raw: Vec<u8>,
    /// The label.
    pub label: Label,
    /// weir's own `expect: refuse` cases: a refusal is required, normalising is not enough.
    pub must_refuse: bool,
    /// Well-formed requests pipelined ahead of the ambiguous one (served normally before it is
    /// refused).
    pub forwarded_before: usize,
}

/// The folder of the corpus.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/smuggling")
}

/// Every case: weir's raw cases, then http-desync-guardian's.
pub fn corpus() -> Vec<Case> {
    let dir = corpus_dir();
    let mut cases = own_cases(&dir.join("weir-cases.yaml"));
    let guardian = dir.join("http-desync-guardian");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&guardian)
        .unwrap_or_else(|e| panic!("read {}: {e}", guardian.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        cases.extend(guardian_cases(&file));
    }
    cases
}

fn load(path: &Path) -> Vec<serde_yaml_ng::Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// YAML text to bytes: characters up to U+00FF are one byte each (so `\xff` is the byte 0xFF),
/// others are UTF-8.
fn bytes_of(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match u8::try_from(u32::from(c)) {
            Ok(b) => out.push(b),
            Err(_) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

fn text_of(value: &serde_yaml_ng::Value) -> String {
    match value {
        serde_yaml_ng::Value::String(s) => s.clone(),
        serde_yaml_ng::Value::Number(n) => n.to_string(),
        serde_yaml_ng::Value::Bool(b) => b.to_string(),
        serde_yaml_ng::Value::Null => String::new(),
        other => panic!("unexpected YAML value {other:?}"),
    }
}

fn own_cases(path: &Path) -> Vec<Case> {
    load(path)
        .iter()
        .map(|case| {
            let name = text_of(&case["name"]);
            let expect = text_of(&case["expect"]);
            Case {
                name: format!("weir: {name}"),
                raw: bytes_of(&text_of(&case["raw"])),
                label: if expect == "refuse" {
                    Label::Ambiguous
                } else {
                    Label::Benign
                },
                must_refuse: expect == "refuse",
                forwarded_before: case["forwarded_before"].as_u64().unwrap_or(0) as usize,
            }
        })
        .collect()
}

/// http-desync-guardian describes requests by parts; the raw request is
/// `method SP uri SP version CRLF` (no ` version` when it is empty, HTTP/0.9), each header as
/// `name: value` (`name:value` when the value starts with whitespace, so the case's own OWS is
/// what is sent), `Host: corpus.test` when the case has no header named `host` (so routing does
/// not refuse it first), CRLF, and a body the framing headers ask for (`0 CRLF CRLF` when any
/// `Transfer-Encoding` mentions chunked, else the bytes of a lone plain `Content-Length` up to
/// 1000) so a proxy never waits for one.
fn guardian_cases(path: &Path) -> Vec<Case> {
    let file = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    load(path)
        .iter()
        .map(|case| {
            let tier = text_of(&case["expected"]["tier"]);
            let version = text_of(&case["version"]);
            let mut raw = bytes_of(&text_of(&case["method"]));
            raw.push(b' ');
            raw.extend(bytes_of(&text_of(&case["uri"])));
            if !version.is_empty() {
                raw.push(b' ');
                raw.extend(bytes_of(&version));
            }
            raw.extend_from_slice(b"\r\n");
            let mut has_host = false;
            let mut chunked = false;
            let mut lengths = Vec::new();
            if let Some(headers) = case["headers"].as_sequence() {
                for header in headers {
                    let name = bytes_of(&text_of(&header["name"]));
                    let value = bytes_of(&text_of(&header["value"]));
                    let lower = name.to_ascii_lowercase();
                    has_host |= lower == b"host";
                    if lower.trim_ascii() == b"transfer-encoding" {
                        chunked |= value
                            .to_ascii_lowercase()
                            .windows(7)
                            .any(|w| w == b"chunked");
                    }
                    if lower == b"content-length" {
                        lengths.push(value.trim_ascii().to_vec());
                    }
                    raw.extend_from_slice(&name);
                    if !value.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                        raw.extend_from_slice(b": ");
                    } else {
                        raw.push(b':');
                    }
                    raw.extend_from_slice(&value);
                    raw.extend_from_slice(b"\r\n");
                }
            }
            if !has_host {
                raw.extend_from_slice(b"Host: corpus.test\r\n");
            }
            raw.extend_from_slice(b"\r\n");
            if chunked {
                raw.extend_from_slice(b"0\r\n\r\n");
            } else if let [length] = lengths.as_slice() {
                let n = std::str::from_utf8(length)
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                    .filter(|n| *n <= 1000)
                    .unwrap_or(0);
                raw.resize(raw.len() + n, b'x');
            }
            Case {
                name: format!("{file}: {}", text_of(&case["name"])),
                raw,
                label: if tier == "Ambiguous" || tier == "Severe" {
                    Label::Ambiguous
                } else {
                    Label::Benign
                },
                must_refuse: false,
                forwarded_before: 0,
            }
        })
        .collect()
}

/// A request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request's headers.
    pub headers: HeaderMap,
    /// Whether its body arrived whole.
    pub body_complete: bool,
}

impl Received {
    /// Why this forwarded request is still ambiguous, if it is: more than one or a non-numeric
    /// `Content-Length`, any `Transfer-Encoding` but `chunked` or together with a length, more than
    /// one `Host`, a framing header spelt with `_`.
    pub fn ambiguity(&self) -> Option<&'static str> {
        let h = &self.headers;
        let lengths: Vec<_> = h.get_all(http::header::CONTENT_LENGTH).iter().collect();
        let codings: Vec<_> = h.get_all(http::header::TRANSFER_ENCODING).iter().collect();
        if lengths.len() > 1 {
            return Some("several Content-Length");
        }
        if lengths
            .iter()
            .any(|v| v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit))
        {
            return Some("bad Content-Length");
        }
        if codings.len() > 1 || codings.iter().any(|v| v.as_bytes() != b"chunked") {
            return Some("bad Transfer-Encoding");
        }
        if !lengths.is_empty() && !codings.is_empty() {
            return Some("Content-Length with Transfer-Encoding");
        }
        if h.get_all(http::header::HOST).iter().count() > 1 {
            return Some("several Host");
        }
        if h.contains_key("content_length") || h.contains_key("transfer_encoding") {
            return Some("framing header spelt with _");
        }
        None
    }
}

#[derive(Debug, Default)]
struct Log {
    by_client: BTreeMap<IpAddr, Vec<Received>>,
    heads: usize,
    heads_by_client: BTreeMap<IpAddr, usize>,
    parse_errors: usize,
}

/// A recording HTTP/1.1 upstream: answers `200 ok` to everything after reading the body, and notes
/// each request under the client address its last `X-Forwarded-For` element names.
#[derive(Debug)]
pub struct Recorder {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Recorder {
    /// Binds `127.0.0.1:0` and serves on the current runtime.
    pub fn spawn() -> Recorder {
        let std_listener = crate::bind_ephemeral();
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("register");
        let log = Arc::new(Mutex::new(Log::default()));
        let (stop, mut stopped) = oneshot::channel();
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let stream = tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let log = task_log.clone();
                connections.spawn(async move {
                    let service_log = log.clone();
                    let service = service_fn(move |request: Request<Incoming>| {
                        let log = service_log.clone();
                        async move {
                            let client = request
                                .headers()
                                .get_all("x-forwarded-for")
                                .iter()
                                .filter_map(|v| v.to_str().ok())
                                .flat_map(|v| v.split(','))
                                .filter_map(|v| v.trim().parse::<IpAddr>().ok())
                                .next_back();
                            let headers = request.headers().clone();
                            let ip = client.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                            {
                                let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                                log.heads += 1;
                                *log.heads_by_client.entry(ip).or_default() += 1;
                            }
                            let body = tokio::time::timeout(
                                Duration::from_secs(2),
                                request.into_body().collect(),
                            )
                            .await;
                            let body_complete = matches!(body, Ok(Ok(_)));
                            let received = Received {
                                headers,
                                body_complete,
                            };
                            log.lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .by_client
                                .entry(ip)
                                .or_default()
                                .push(received);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let result = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(error) = result {
                        if error.is_parse() {
                            log.lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .parse_errors += 1;
                        }
                    }
                });
            }
        });
        Recorder {
            addr,
            log,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received from `client`.
    pub fn received_from(&self, client: IpAddr) -> Vec<Received> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_client
            .get(&client)
            .cloned()
            .unwrap_or_default()
    }

    /// Request heads received in total (counted on arrival, before the body).
    pub fn heads(&self) -> usize {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .heads
    }

    /// Requests from `client` whose head arrived but whose body has not ended yet.
    pub fn pending_from(&self, client: IpAddr) -> usize {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let heads = log.heads_by_client.get(&client).copied().unwrap_or(0);
        heads - log.by_client.get(&client).map_or(0, Vec::len)
    }

    /// Requests received in total (noted once their body ended or failed).
    pub fn received(&self) -> usize {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.by_client.values().map(Vec::len).sum()
    }

    /// Connections whose bytes the upstream could not parse as HTTP/1.
    pub fn parse_errors(&self) -> usize {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .parse_errors
    }

    /// Stops it and its connections.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What happened to one case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing reached the upstream; the client got this status (`None`: connection closed
    /// without an answer).
    Refused(Option<u16>),
    /// Reached the upstream in an unambiguous form.
    Normalised,
    /// Reached the upstream still ambiguous (why).
    ForwardedAmbiguous(&'static str),
    /// Nothing reached the upstream and the proxy neither answered nor closed in time.
    Waited,
}

/// What the client saw.
#[derive(Clone, Copy, Debug)]
struct Seen {
    status: Option<u16>,
    closed: bool,
}

/// The source address of case `i`.
fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// Sends one case from `from` and reads until the proxy closes, or until a response head arrived
/// and nothing more came for a short while, or the deadline.
async fn send(proxy: SocketAddr, from: Ipv4Addr, raw: &[u8]) -> Seen {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(from), 0))
        .expect("bind a loopback source address");
    let mut stream = socket.connect(proxy).await.expect("connect to the proxy");
    let _ = stream.write_all(raw).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut closed = false;
    loop {
        let has_head = got.windows(4).any(|w| w == b"\r\n\r\n");
        let wait = if has_head {
            Duration::from_millis(150)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    // The last response's status (pipelined cases get answers to their first requests first).
    // (Bodies in these exchanges are short and never contain a status line.)
    let last = (0..got.len())
        .rev()
        .find(|&i| got[i..].starts_with(b"HTTP/1."))
        .unwrap_or(0);
    let status = got[last..]
        .strip_prefix(b"HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse().ok());
    Seen { status, closed }
}

/// Replays every case against `proxy` (which forwards to `recorder`), `parallel` at a time, and
/// returns each case's outcome in corpus order.
pub async fn replay(
    proxy: SocketAddr,
    recorder: &Recorder,
    cases: &[Case],
    parallel: usize,
) -> Vec<Outcome> {
    assert!(cases.len() < 250 * 250, "too many cases for 127.1.x.y");
    let permits = Arc::new(Semaphore::new(parallel.max(1)));
    let mut set = JoinSet::new();
    for (i, case) in cases.iter().enumerate() {
        let permits = permits.clone();
        let raw = case.raw.clone();
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            (i, send(proxy, source(i), &raw).await)
        });
    }
    let mut seen = vec![None; cases.len()];
    while let Some(joined) = set.join_next().await {
        let (i, s) = joined.expect("a replay task");
        seen[i] = Some(s);
    }
    seen.into_iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.expect("every case replayed");
            let received = recorder.received_from(IpAddr::V4(source(i)));
            if let Some(why) = received.iter().find_map(Received::ambiguity) {
                Outcome::ForwardedAmbiguous(why)
            } else if received.len() > cases[i].forwarded_before {
                Outcome::Normalised
            } else if s.closed || s.status.is_some_and(|code| code >= 400) {
                Outcome::Refused(s.status)
            } else {
                Outcome::Waited
            }
        })
        .collect()
}

/// Counts of a replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Cases sent.
    pub tried: usize,
    /// Refused (nothing upstream; 4xx/5xx or closed).
    pub refused: usize,
    /// Reached the upstream unambiguously.
    pub normalised: usize,
    /// Reached the upstream still ambiguous.
    pub forwarded_ambiguous: usize,
    /// Neither refused nor forwarded in time.
    pub waited: usize,
}

impl Tally {
    /// Counts `outcomes` of the cases `filter` keeps.
    pub fn of(cases: &[Case], outcomes: &[Outcome], filter: impl Fn(&Case) -> bool) -> Tally {
        let mut tally = Tally::default();
        for (case, outcome) in cases.iter().zip(outcomes) {
            if !filter(case) {
                continue;
            }
            tally.tried += 1;
            match outcome {
                Outcome::Refused(_) => tally.refused += 1,
                Outcome::Normalised => tally.normalised += 1,
                Outcome::ForwardedAmbiguous(_) => tally.forwarded_ambiguous += 1,
                Outcome::Waited => tally.waited += 1,
            }
        }
        tally
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tried {} / refused {} / normalised {} / forwarded ambiguous {} / waited {}",
            self.tried, self.refused, self.normalised, self.forwarded_ambiguous, self.waited
        )
    }
}

/// Prints the tallies of a replay (all, ambiguous, benign) under `who`, and every case that was
/// not refused while ambiguous or not forwarded while benign.
pub fn report(who: &str, cases: &[Case], outcomes: &[Outcome]) {
    let all = Tally::of(cases, outcomes, |_| true);
    let ambiguous = Tally::of(cases, outcomes, |c| c.label == Label::Ambiguous);
    let benign = Tally::of(cases, outcomes, |c| c.label == Label::Benign);
    eprintln!("{who}: all cases: {all}");
    eprintln!("{who}: ambiguous cases: {ambiguous}");
    eprintln!("{who}: benign cases: {benign}");
    for (case, outcome) in cases.iter().zip(outcomes) {
        let notable = match case.label {
            Label::Ambiguous => !matches!(outcome, Outcome::Refused(_)),
            Label::Benign => !matches!(outcome, Outcome::Normalised),
        };
        if notable {
            eprintln!("{who}:   {:?} {:<60} {outcome:?}", case.label, case.name);
        }
    }
}

/// How a raw HTTP/2 request ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum H2Answer {
    /// A response with this `:status` (statically indexed statuses only; others are `0`).
    Status(u16),
    /// `RST_STREAM` with this error code.
    Reset(u32),
    /// `GOAWAY` with this error code.
    GoAway(u32),
    /// The connection closed or nothing came in time.
    Nothing,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK string length (7-bit prefix integer, no Huffman).
fn hpack_len(out: &mut Vec<u8>, len: usize) {
    if len < 127 {
        out.push(len as u8);
    } else {
        out.push(127);
        let mut rest = len - 127;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }
}

/// Sends one HTTP/2 request (prior knowledge) from `from` with exactly these header fields
/// (pseudo-headers included, in order, each a literal without indexing, so nothing is
/// normalised on the way) and optional DATA, and returns how the stream ended.
pub async fn h2_raw(
    proxy: SocketAddr,
    from: Ipv4Addr,
    fields: &[(&[u8], &[u8])],
    data: Option<&[u8]>,
) -> H2Answer {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(from), 0))
        .expect("bind a loopback source address");
    let mut stream = socket.connect(proxy).await.expect("connect to the proxy");
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        hpack_len(&mut block, name.len());
        block.extend_from_slice(name);
        hpack_len(&mut block, value.len());
        block.extend_from_slice(value);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let end_stream = if data.is_none() { 0x1 } else { 0 };
    out.extend(frame(0x1, 0x4 | end_stream, 1, &block));
    if let Some(data) = data {
        out.extend(frame(0x0, 0x1, 1, data));
    }
    let _ = stream.write_all(&out).await;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 4096];
    loop {
        // Parse the frames received so far.
        let mut at = 0;
        while got.len() >= at + 9 {
            let len = (usize::from(got[at]) << 16)
                | (usize::from(got[at + 1]) << 8)
                | usize::from(got[at + 2]);
            if got.len() < at + 9 + len {
                break;
            }
            let (kind, flags) = (got[at + 3], got[at + 4]);
            let id = u32::from_be_bytes([got[at + 5], got[at + 6], got[at + 7], got[at + 8]])
                & 0x7fff_ffff;
            let payload = &got[at + 9..at + 9 + len];
            match kind {
                0x4 if flags & 0x1 == 0 => {
                    let _ = stream.write_all(&frame(0x4, 0x1, 0, &[])).await;
                }
                0x1 if id == 1 => {
                    // Skip padding and priority fields.
                    let mut block = payload;
                    if flags & 0x8 != 0 {
                        block = block.get(1..).unwrap_or_default();
                    }
                    if flags & 0x20 != 0 {
                        block = block.get(5..).unwrap_or_default();
                    }
                    let status = match block.first() {
                        Some(0x88) => 200,
                        Some(0x89) => 204,
                        Some(0x8a) => 206,
                        Some(0x8b) => 304,
                        Some(0x8c) => 400,
                        Some(0x8d) => 404,
                        Some(0x8e) => 500,
                        _ => 0,
                    };
                    return H2Answer::Status(status);
                }
                0x3 if id == 1 => {
                    return H2Answer::Reset(u32::from_be_bytes(
                        payload[..4].try_into().expect("4 bytes"),
                    ));
                }
                0x7 => {
                    return H2Answer::GoAway(u32::from_be_bytes(
                        payload[4..8].try_into().expect("4 bytes"),
                    ));
                }
                _ => {}
            }
            at += 9 + len;
        }
        got.drain(..at);
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return H2Answer::Nothing,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}
