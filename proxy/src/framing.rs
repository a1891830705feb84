//! HTTP/1 framing checks: refuse what nginx refuses, before anything reaches an upstream.
//!
//! hyper's HTTP/1 parser (httparse + hyper's framing rules) is lenient where a front proxy should
//! not be: it accepts bare-LF line endings, `Content-Length` together with `Transfer-Encoding`
//! (dropping the length), any `Transfer-Encoding` whose *last* coding is `chunked`
//! (`identity, chunked`, `chunked, chunked`), duplicate identical `Content-Length`s, and it finds
//! bad chunk framing (bare LF in an extension, an oversized size) only while the body is being
//! streamed, after the head went upstream. weir re-frames every request it forwards, so none of
//! this desyncs an upstream, but each is a request another hop may read differently, and nginx
//! refuses them.
//!
//! [`Inspect`] wraps a client connection's read side and runs [`Scanner`], a byte-level state
//! machine that follows the HTTP/1 message framing of the connection (heads, `Content-Length` and
//! chunked bodies, trailers) without copying or buffering anything: heads are scanned once, fixed
//! bodies and chunk data are skipped in O(1) per read. When a message breaks a rule, the byte where
//! that was found (or, for a body error, the end of that message's head when it is still in the
//! same read) is replaced by a NUL and the stream ends there. hyper then fails to parse the head,
//! answers `400 Bad Request` itself (after any earlier pipelined responses) and closes the
//! connection; the request never reaches a service, so nothing is sent upstream. A chunked-body
//! error that arrives in a later read than its head ends the body with an error instead (the
//! upstream sees a truncated body, never the bad bytes).
//!
//! The scanner stops (passes everything through) on the HTTP/2 preface and after a request that
//! may open a tunnel (an HTTP/1.1 `Upgrade`, `CONNECT`): what follows may not be HTTP/1. The read
//! side cannot tell whether the upstream accepted the tunnel, so requests pipelined after such a
//! request on the same connection are left to hyper's own parser (weir still re-frames them, so
//! they cannot desync an upstream).
//!
//! Cost: one pass over each head, nothing per body byte; no allocation, no copy. A request or
//! header line that arrived whole is taken at once (`memchr` for its LF, table lookups over the
//! method and name, eight value bytes per step) and leaves the scanner exactly as the byte-by-byte
//! path would; that path handles lines split across reads and finds every refusal.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A line ends in LF without CR.
    BareLf,
    /// A CR not followed by LF.
    BareCr,
    /// The request line is not `method SP target SP HTTP/1.x` with a token method and no
    /// control characters or extra whitespace.
    BadRequestLine,
    /// A header line starting with whitespace (obsolete line folding).
    ObsFold,
    /// A header name that is not a token, is empty, has whitespace before the colon, or no colon.
    BadHeaderName,
    /// A control character (NUL, CR, …) inside a header value.
    BadHeaderValue,
    /// `Content_Length`/`Transfer_Encoding`: a framing header spelt so that some hops (CGI, WSGI)
    /// read it as the real one.
    LookalikeFramingHeader,
    /// A `Content-Length` that is not a plain decimal number (sign, list, spaces inside, overflow).
    BadContentLength,
    /// More than one `Content-Length` field.
    DuplicateContentLength,
    /// A `Transfer-Encoding` other than exactly `chunked`.
    BadTransferEncoding,
    /// More than one `Transfer-Encoding` field.
    DuplicateTransferEncoding,
    /// Both `Content-Length` and `Transfer-Encoding`.
    ContentLengthWithTransferEncoding,
    /// `Transfer-Encoding` in an HTTP/1.0 request.
    TransferEncodingInHttp10,
    /// More than one `Host` field.
    DuplicateHost,
    /// A chunk size that is not hexadecimal digits (optionally followed by whitespace and `;`).
    BadChunkSize,
    /// A chunk size above 2^63 - 1.
    ChunkSizeOverflow,
    /// A control character in a chunk extension.
    BadChunkExtension,
    /// Chunk data not followed by CRLF.
    BadChunkEnd,
}

impl Refusal {
    /// Every refusal, in a fixed order (the metric's reason set).
    pub const ALL: [Refusal; 18] = [
        Refusal::BareLf,
        Refusal::BareCr,
        Refusal::BadRequestLine,
        Refusal::ObsFold,
        Refusal::BadHeaderName,
        Refusal::BadHeaderValue,
        Refusal::LookalikeFramingHeader,
        Refusal::BadContentLength,
        Refusal::DuplicateContentLength,
        Refusal::BadTransferEncoding,
        Refusal::DuplicateTransferEncoding,
        Refusal::ContentLengthWithTransferEncoding,
        Refusal::TransferEncodingInHttp10,
        Refusal::DuplicateHost,
        Refusal::BadChunkSize,
        Refusal::ChunkSizeOverflow,
        Refusal::BadChunkExtension,
        Refusal::BadChunkEnd,
    ];

    /// A short, stable name (log field, and the `reason` of `weir_requests_refused_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BareLf => "bare_lf",
            Refusal::BareCr => "bare_cr",
            Refusal::BadRequestLine => "bad_request_line",
            Refusal::ObsFold => "obs_fold",
            Refusal::BadHeaderName => "bad_header_name",
            Refusal::BadHeaderValue => "bad_header_value",
            Refusal::LookalikeFramingHeader => "lookalike_framing_header",
            Refusal::BadContentLength => "bad_content_length",
            Refusal::DuplicateContentLength => "duplicate_content_length",
            Refusal::BadTransferEncoding => "bad_transfer_encoding",
            Refusal::DuplicateTransferEncoding => "duplicate_transfer_encoding",
            Refusal::ContentLengthWithTransferEncoding => "content_length_with_transfer_encoding",
            Refusal::TransferEncodingInHttp10 => "transfer_encoding_in_http10",
            Refusal::DuplicateHost => "duplicate_host",
            Refusal::BadChunkSize => "bad_chunk_size",
            Refusal::ChunkSizeOverflow => "chunk_size_overflow",
            Refusal::BadChunkExtension => "bad_chunk_extension",
            Refusal::BadChunkEnd => "bad_chunk_end",
        }
    }
}

/// A refusal and where the stream must be cut (an index into the bytes last fed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Index of the first byte not to pass on.
    pub at: usize,
    /// Whether `at` is inside a request head hyper has not parsed yet (else inside a body).
    pub in_head: bool,
    /// Why.
    pub reason: Refusal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Between messages: a request line or empty lines.
    Idle,
    RequestLine,
    Header,
    FixedBody(u64),
    ChunkSize,
    /// After a chunk size: whitespace, then `;` (`true` once seen) and the extension.
    ChunkExt(bool),
    ChunkData(u64),
    ChunkDataEnd,
    Trailer,
    /// Not HTTP/1 framing any more (HTTP/2 preface, upgrade, CONNECT): pass everything.
    Tunnel,
    Refused,
}

/// Framing headers the scanner reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Named {
    Other,
    ContentLength,
    TransferEncoding,
    Host,
    Upgrade,
}

const NAME_CAP: usize = 24;
const VALUE_CAP: usize = 40;

/// The per-connection framing state machine. Small and fixed-size: nothing is buffered.
#[derive(Debug)]
pub struct Scanner {
    phase: Phase,
    /// The previous byte was a CR.
    cr: bool,
    /// Bytes in the current line (before its CR).
    col: usize,
    /// The next request line is the connection's first.
    first: bool,
    // Request line.
    part: u8,
    part_len: usize,
    method: [u8; 8],
    version: [u8; 8],
    // Header line.
    in_value: bool,
    name: [u8; NAME_CAP],
    name_len: usize,
    underscore: bool,
    named: Named,
    value: [u8; VALUE_CAP],
    value_len: usize,
    // Head facts.
    http10: bool,
    tunnel: bool,
    content_length: Option<u64>,
    chunked: bool,
    host: bool,
    // Chunk size.
    size: u64,
    digits: u32,
    /// Tests: no whole-line fast path (the reference the fast path is checked against).
    #[cfg(test)]
    bytewise: bool,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner::new()
    }
}

enum Step {
    Continue,
    HeadEnd,
}

impl Scanner {
    /// A scanner at the start of a connection.
    pub fn new() -> Scanner {
        Scanner {
            phase: Phase::Idle,
            cr: false,
            col: 0,
            first: true,
            part: 0,
            part_len: 0,
            method: [0; 8],
            version: [0; 8],
            in_value: false,
            name: [0; NAME_CAP],
            name_len: 0,
            underscore: false,
            named: Named::Other,
            value: [0; VALUE_CAP],
            value_len: 0,
            http10: false,
            tunnel: false,
            content_length: None,
            chunked: false,
            host: false,
            size: 0,
            digits: 0,
            #[cfg(test)]
            bytewise: false,
        }
    }

    #[inline(always)]
    fn bytewise(&self) -> bool {
        #[cfg(test)]
        return self.bytewise;
        #[cfg(not(test))]
        false
    }

    /// Whether the scanner passes everything through from now on.
    pub fn is_passing(&self) -> bool {
        self.phase == Phase::Tunnel
    }

    /// Whether a request was refused (the stream ends there).
    pub fn is_refused(&self) -> bool {
        self.phase == Phase::Refused
    }

    /// Follows `bytes`, the next bytes of the connection.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), Refused> {
        let mut i = 0;
        // Index of the last byte of the latest head completed in these bytes (not yet parsed by
        // hyper, so a body error of that message can still cut the stream before its head ends).
        let mut head_end = None;
        while i < bytes.len() {
            match self.phase {
                Phase::Tunnel | Phase::Refused => return Ok(()),
                Phase::FixedBody(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.phase = if left == take {
                        Phase::Idle
                    } else {
                        Phase::FixedBody(left - take)
                    };
                    continue;
                }
                Phase::ChunkData(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.phase = if left == take {
                        Phase::ChunkDataEnd
                    } else {
                        Phase::ChunkData(left - take)
                    };
                    continue;
                }
                // Fast paths over the bulk of a head: values of headers the scanner does not
                // read, and the request target (no state but the column to keep).
                Phase::Header | Phase::Trailer
                    if self.in_value && self.named == Named::Other && !self.cr =>
                {
                    let run = run_of(&bytes[i..], is_value_byte);
                    if run > 0 {
                        i += run;
                        self.col += run;
                        continue;
                    }
                }
                // Whole lines at once: a request line or a header line that starts and ends
                // (CRLF) in these bytes and is well formed in the common way. Anything else (a
                // line split across reads, a byte the line may not hold, an empty line, an
                // obsolete fold) takes the byte-by-byte path below, which finds the refusal and
                // where it is; both leave the scanner in the same state.
                Phase::Idle | Phase::Header if self.col == 0 && !self.cr && !self.bytewise() => {
                    let line = if self.phase == Phase::Idle {
                        self.request_line_fast(&bytes[i..])
                    } else {
                        self.header_line_fast(&bytes[i..])
                    };
                    match line {
                        Some(Ok(len)) => {
                            i += len;
                            continue;
                        }
                        Some(Err((at, reason))) => {
                            // A framing header's value (found at the line's LF, as below).
                            self.phase = Phase::Refused;
                            return Err(Refused {
                                at: i + at,
                                in_head: true,
                                reason,
                            });
                        }
                        None => {}
                    }
                }
                Phase::RequestLine if self.part == 1 && !self.cr => {
                    let run = run_of(&bytes[i..], is_target_byte);
                    if run > 0 {
                        i += run;
                        self.col += run;
                        self.part_len += run;
                        continue;
                    }
                }
                _ => {}
            }
            match self.byte(bytes[i]) {
                Ok(Step::Continue) => {}
                Ok(Step::HeadEnd) => head_end = Some(i),
                Err(reason) => {
                    let in_body = matches!(
                        self.phase,
                        Phase::ChunkSize
                            | Phase::ChunkExt(_)
                            | Phase::ChunkDataEnd
                            | Phase::Trailer
                    );
                    let (at, in_head) = match head_end {
                        Some(end) if in_body => (end, true),
                        _ => (i, !in_body),
                    };
                    self.phase = Phase::Refused;
                    return Err(Refused {
                        at,
                        in_head,
                        reason,
                    });
                }
            }
            i += 1;
        }
        Ok(())
    }

    fn byte(&mut self, b: u8) -> Result<Step, Refusal> {
        if self.cr {
            if b != b'\n' {
                return Err(Refusal::BareCr);
            }
            self.cr = false;
            return self.line_end();
        }
        match b {
            b'\r' => {
                self.cr = true;
                return Ok(Step::Continue);
            }
            b'\n' => return Err(Refusal::BareLf),
            _ => {}
        }
        match self.phase {
            Phase::Idle => {
                self.phase = Phase::RequestLine;
                self.part = 0;
                self.part_len = 0;
                self.method = [0; 8];
                self.request_line_byte(b)?;
            }
            Phase::RequestLine => self.request_line_byte(b)?,
            Phase::Header | Phase::Trailer => self.header_byte(b)?,
            Phase::ChunkSize => self.chunk_size_byte(b)?,
            Phase::ChunkExt(semicolon) => match b {
                b' ' | b'\t' if !semicolon => {}
                b';' if !semicolon => self.phase = Phase::ChunkExt(true),
                _ if !semicolon => return Err(Refusal::BadChunkSize),
                b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                _ => return Err(Refusal::BadChunkExtension),
            },
            Phase::ChunkDataEnd => return Err(Refusal::BadChunkEnd),
            Phase::FixedBody(_) | Phase::ChunkData(_) | Phase::Tunnel | Phase::Refused => {}
        }
        self.col += 1;
        Ok(Step::Continue)
    }

    /// The request line at the start of `bytes`, when all of it is there and it is the usual
    /// `method SP target SP HTTP/1.x CRLF`: its length. `None` leaves it to the byte path (which
    /// also handles the HTTP/2 preface and every refusal).
    #[inline]
    fn request_line_fast(&mut self, bytes: &[u8]) -> Option<Result<usize, (usize, Refusal)>> {
        let lf = memchr::memchr(b'\n', bytes)?;
        let line = bytes[..lf].strip_suffix(b"\r")?;
        let method_len = run_of(line, is_tchar);
        let rest = line.get(method_len..)?.strip_prefix(b" ")?;
        let target_len = run_of(rest, is_target_byte);
        let version = rest.get(target_len..)?.strip_prefix(b" ")?;
        if method_len == 0 || target_len == 0 || !matches!(version, b"HTTP/1.1" | b"HTTP/1.0") {
            return None;
        }
        let mut method = [0; 8];
        let stored = method_len.min(method.len());
        method[..stored].copy_from_slice(&line[..stored]);
        self.method = method;
        self.version.copy_from_slice(version);
        self.part = 2;
        self.part_len = version.len();
        // Sets the phase to `Header` (the version is one it accepts).
        Some(
            self.request_line_end()
                .map(|()| lf + 1)
                .map_err(|r| (lf, r)),
        )
    }

    /// A header line at the start of `bytes` (phase `Header`, at a line start), when all of it is
    /// there and it is `token ":" value CRLF` with only value bytes in the value: its length, or
    /// the refusal a framing header's value earns (at the line's LF). `None` leaves the line to
    /// the byte path.
    #[inline]
    fn header_line_fast(&mut self, bytes: &[u8]) -> Option<Result<usize, (usize, Refusal)>> {
        let lf = memchr::memchr(b'\n', bytes)?;
        let line = bytes[..lf].strip_suffix(b"\r")?;
        let name_len = run_of(line, is_tchar);
        let value = line.get(name_len..)?.strip_prefix(b":")?;
        if name_len == 0 || !all_value_bytes(value) {
            return None;
        }
        let name = &line[..name_len];
        let named = match name_len {
            4 => named(name, b"host", Named::Host),
            7 => named(name, b"upgrade", Named::Upgrade),
            14 => named(name, b"content-length", Named::ContentLength),
            17 => named(name, b"transfer-encoding", Named::TransferEncoding),
            _ => Named::Other,
        };
        if named != Named::Other {
            if matches!(named, Named::ContentLength | Named::TransferEncoding)
                && name.contains(&b'_')
            {
                // `Content_Length`: the byte path refuses it where the colon is.
                return None;
            }
            self.named = named;
            let stored = value.len().min(VALUE_CAP);
            self.value[..stored].copy_from_slice(&value[..stored]);
            self.value_len = value.len();
            if let Err(reason) = self.header_line_end(true) {
                return Some(Err((lf, reason)));
            }
        }
        Some(Ok(lf + 1))
    }

    fn request_line_byte(&mut self, b: u8) -> Result<(), Refusal> {
        match (self.part, b) {
            (0 | 1, b' ') => {
                if self.part_len == 0 {
                    return Err(Refusal::BadRequestLine);
                }
                self.part += 1;
                self.part_len = 0;
                return Ok(());
            }
            (0, _) if is_tchar(b) => {
                if let Some(slot) = self.method.get_mut(self.part_len) {
                    *slot = b;
                }
            }
            (1, _) if is_target_byte(b) => {}
            (2, _) if self.part_len < self.version.len() => self.version[self.part_len] = b,
            _ => return Err(Refusal::BadRequestLine),
        }
        self.part_len += 1;
        Ok(())
    }

    fn header_byte(&mut self, b: u8) -> Result<(), Refusal> {
        if self.col == 0 {
            if b == b' ' || b == b'\t' {
                return Err(Refusal::ObsFold);
            }
            self.in_value = false;
            self.name_len = 0;
            self.underscore = false;
            self.value_len = 0;
        }
        if self.in_value {
            if !is_value_byte(b) {
                return Err(Refusal::BadHeaderValue);
            }
            if self.named != Named::Other {
                if let Some(slot) = self.value.get_mut(self.value_len) {
                    *slot = b;
                }
                self.value_len += 1;
            }
        } else if b == b':' {
            if self.name_len == 0 {
                return Err(Refusal::BadHeaderName);
            }
            self.in_value = true;
            self.named = if self.phase == Phase::Trailer || self.name_len > NAME_CAP {
                Named::Other
            } else {
                match &self.name[..self.name_len] {
                    b"content-length" => Named::ContentLength,
                    b"transfer-encoding" => Named::TransferEncoding,
                    b"host" => Named::Host,
                    b"upgrade" => Named::Upgrade,
                    _ => Named::Other,
                }
            };
            if self.underscore
                && matches!(self.named, Named::ContentLength | Named::TransferEncoding)
            {
                return Err(Refusal::LookalikeFramingHeader);
            }
        } else if is_tchar(b) {
            let lower = match b {
                b'_' => {
                    self.underscore = true;
                    b'-'
                }
                _ => b.to_ascii_lowercase(),
            };
            if let Some(slot) = self.name.get_mut(self.name_len) {
                *slot = lower;
            }
            self.name_len += 1;
        } else {
            return Err(Refusal::BadHeaderName);
        }
        Ok(())
    }

    fn chunk_size_byte(&mut self, b: u8) -> Result<(), Refusal> {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            b' ' | b'\t' | b';' if self.digits > 0 => {
                self.phase = Phase::ChunkExt(b == b';');
                return Ok(());
            }
            _ => return Err(Refusal::BadChunkSize),
        };
        self.size = self
            .size
            .checked_mul(16)
            .and_then(|size| size.checked_add(u64::from(digit)))
            .filter(|size| *size <= i64::MAX as u64)
            .ok_or(Refusal::ChunkSizeOverflow)?;
        self.digits += 1;
        Ok(())
    }

    /// A CRLF ended the current line.
    fn line_end(&mut self) -> Result<Step, Refusal> {
        let empty = self.col == 0;
        self.col = 0;
        // The next line starts with a name (the fast path over values relies on it).
        let in_value = std::mem::take(&mut self.in_value);
        match self.phase {
            // Empty lines before a request line are allowed (RFC 9112 §2.2).
            Phase::Idle => {}
            Phase::RequestLine => self.request_line_end()?,
            Phase::Header if empty => return self.head_end(),
            Phase::Header => self.header_line_end(in_value)?,
            Phase::Trailer if empty => self.phase = Phase::Idle,
            Phase::Trailer => {
                if !in_value {
                    return Err(Refusal::BadHeaderName);
                }
            }
            Phase::ChunkSize | Phase::ChunkExt(_) => {
                if self.digits == 0 {
                    return Err(Refusal::BadChunkSize);
                }
                self.phase = if self.size == 0 {
                    Phase::Trailer
                } else {
                    Phase::ChunkData(self.size)
                };
            }
            Phase::ChunkDataEnd => self.start_chunk(),
            Phase::FixedBody(_) | Phase::ChunkData(_) | Phase::Tunnel | Phase::Refused => {}
        }
        Ok(Step::Continue)
    }

    fn request_line_end(&mut self) -> Result<(), Refusal> {
        if self.part != 2 || self.part_len != 8 {
            return Err(Refusal::BadRequestLine);
        }
        let method = &self.method[..self.method.len().min(self.part_len_method())];
        match &self.version {
            b"HTTP/1.1" => self.http10 = false,
            b"HTTP/1.0" => self.http10 = true,
            // The HTTP/2 preface (`PRI * HTTP/2.0`): hyper's protocol detection takes it.
            b"HTTP/2.0" if self.first && method == b"PRI" => {
                self.phase = Phase::Tunnel;
                return Ok(());
            }
            _ => return Err(Refusal::BadRequestLine),
        }
        self.first = false;
        self.tunnel = method == b"CONNECT";
        self.content_length = None;
        self.chunked = false;
        self.host = false;
        self.in_value = false;
        self.phase = Phase::Header;
        Ok(())
    }

    /// Length of the method (stored in `method`, zero-padded; methods longer than 8 bytes never
    /// match a name the scanner looks for).
    fn part_len_method(&self) -> usize {
        self.method.iter().position(|&b| b == 0).unwrap_or(8)
    }

    fn header_line_end(&mut self, in_value: bool) -> Result<(), Refusal> {
        if !in_value {
            return Err(Refusal::BadHeaderName);
        }
        // Only spaces are trimmed from framing headers: a tab around `chunked` or a length is
        // valid OWS, but a classic obfuscation some hops do not trim, and no real client sends it.
        let value = trim_spaces(&self.value[..self.value_len.min(VALUE_CAP)]);
        let complete = self.value_len <= VALUE_CAP;
        match self.named {
            Named::Other => {}
            Named::ContentLength => {
                if self.content_length.is_some() {
                    return Err(Refusal::DuplicateContentLength);
                }
                let length = complete
                    .then(|| parse_decimal(value))
                    .flatten()
                    .ok_or(Refusal::BadContentLength)?;
                if self.chunked {
                    return Err(Refusal::ContentLengthWithTransferEncoding);
                }
                self.content_length = Some(length);
            }
            Named::TransferEncoding => {
                if self.chunked {
                    return Err(Refusal::DuplicateTransferEncoding);
                }
                if !(complete && value.eq_ignore_ascii_case(b"chunked")) {
                    return Err(Refusal::BadTransferEncoding);
                }
                if self.http10 {
                    return Err(Refusal::TransferEncodingInHttp10);
                }
                if self.content_length.is_some() {
                    return Err(Refusal::ContentLengthWithTransferEncoding);
                }
                self.chunked = true;
            }
            Named::Host => {
                if self.host {
                    return Err(Refusal::DuplicateHost);
                }
                self.host = true;
            }
            // hyper upgrades only HTTP/1.1 requests.
            Named::Upgrade => self.tunnel |= !self.http10,
        }
        Ok(())
    }

    fn head_end(&mut self) -> Result<Step, Refusal> {
        self.phase = if self.tunnel {
            Phase::Tunnel
        } else if self.chunked {
            self.start_chunk();
            Phase::ChunkSize
        } else {
            match self.content_length {
                Some(length) if length > 0 => Phase::FixedBody(length),
                _ => Phase::Idle,
            }
        };
        Ok(Step::HeadEnd)
    }

    fn start_chunk(&mut self) {
        self.phase = Phase::ChunkSize;
        self.size = 0;
        self.digits = 0;
    }
}

#[inline]
fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// [`is_tchar`] as a table (one load per byte in the loops over names and methods).
static TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = matches!(b as u8,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`'
            | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z');
        b += 1;
    }
    table
};

/// A byte allowed in a header value: HTAB, SP, VCHAR, obs-text.
#[inline]
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// A byte allowed in a request target: VCHAR and obs-text (no whitespace or controls).
#[inline]
fn is_target_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x7e | 0x80..=0xff)
}

/// `expected` (lowercase, `-` for a dash) when `name` spells it in any case, with `_` for `-`
/// (the byte path reads an underscore as a dash to catch look-alike framing headers).
#[inline]
fn named(name: &[u8], expected: &[u8], which: Named) -> Named {
    let same = name.len() == expected.len()
        && name.iter().zip(expected).all(|(&b, &e)| {
            let b = if b == b'_' {
                b'-'
            } else {
                b.to_ascii_lowercase()
            };
            b == e
        });
    if same {
        which
    } else {
        Named::Other
    }
}

/// Whether every byte of `value` is a header value byte ([`is_value_byte`]), eight at a time.
#[inline]
fn all_value_bytes(value: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut chunks = value.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // A byte below 0x20 (control) or equal to 0x7f (DEL) anywhere in the word: look closer
        // (HTAB is allowed). Bytes at or above 0x80 never trip either test.
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        let del = x ^ (ONES * 0x7f);
        let is_del = del.wrapping_sub(ONES) & !del & HIGHS;
        if (below_space | is_del) != 0 && !chunk.iter().all(|&b| is_value_byte(b)) {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| is_value_byte(b))
}

/// How many leading bytes of `bytes` satisfy `ok`.
#[inline]
fn run_of(bytes: &[u8], ok: impl Fn(u8) -> bool) -> usize {
    bytes.iter().position(|&b| !ok(b)).unwrap_or(bytes.len())
}

fn trim_spaces(mut value: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' '] = value {
        value = rest;
    }
    value
}

/// `1*DIGIT` as a u64 (at most 2^63 - 1, like nginx's `off_t`).
fn parse_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        acc.checked_mul(10)?
            .checked_add(u64::from(digit))
            .filter(|n| *n <= i64::MAX as u64)
    })
}

/// What replaces a refused head from the bad byte on: a NUL, which httparse rejects wherever it
/// falls in a head, followed by an end of head, because hyper only re-parses a partial head once
/// its end has arrived. hyper answers the requests before it, then `400 Bad Request`, and closes.
const CUT_HEAD: &[u8] = b"\0\r\n\r\n";
/// What replaces refused body bytes: a NUL, then the end of the stream, so the body can never
/// complete (no end of head or chunk terminator follows).
const CUT_BODY: &[u8] = b"\0";

pin_project_lite::pin_project! {
    /// A client connection whose read side runs a [`Scanner`]: a refused request is cut at the
    /// byte found bad (see [`CUT_HEAD`], [`CUT_BODY`]) and the stream ends there. Writes pass
    /// through untouched.
    pub(crate) struct Inspect<S> {
        #[pin]
        inner: S,
        scanner: Scanner,
        // The rest of the cut still to hand over.
        cut: &'static [u8],
        // Whether the cut is in a head (else in a body).
        head_cut: bool,
        // Where refusals are counted (`weir_requests_refused_total`).
        counter: Option<std::sync::Arc<crate::limits::ListenerConns>>,
    }
}

impl<S> Inspect<S> {
    pub(crate) fn new(inner: S) -> Inspect<S> {
        Inspect {
            inner,
            scanner: Scanner::new(),
            cut: &[],
            head_cut: false,
            counter: None,
        }
    }

    /// Counts refusals in the listener's `weir_requests_refused_total`.
    pub(crate) fn counted(mut self, conns: std::sync::Arc<crate::limits::ListenerConns>) -> Self {
        self.counter = Some(conns);
        self
    }
}

impl<S: AsyncRead> AsyncRead for Inspect<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.scanner.is_refused() {
            if !this.cut.is_empty() {
                let n = this.cut.len().min(buf.remaining());
                buf.put_slice(&this.cut[..n]);
                *this.cut = &this.cut[n..];
                return Poll::Ready(Ok(()));
            }
            if *this.head_cut {
                // No end of stream after a cut head: hyper would take it as the client leaving
                // and close without answering the requests pipelined before it (and the 400).
                // It holds a head it cannot parse, so it answers and closes without reading.
                return Poll::Pending;
            }
            // A cut body: the end of the stream, so the body fails.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(this.inner.poll_read(cx, buf))?;
        if this.scanner.is_passing() {
            return Poll::Ready(Ok(()));
        }
        if let Err(refused) = this.scanner.feed(&buf.filled()[before..]) {
            tracing::debug!(
                reason = refused.reason.as_str(),
                "refused an ambiguous HTTP/1 request"
            );
            if let Some(counter) = this.counter.as_ref() {
                counter.refused(crate::limits::RefuseReason::Framing(refused.reason));
            }
            let cut = if refused.in_head { CUT_HEAD } else { CUT_BODY };
            // The refused byte was filled, so at least one byte of the cut fits.
            buf.set_filled(before + refused.at);
            let n = cut.len().min(buf.remaining());
            buf.put_slice(&cut[..n]);
            *this.cut = &cut[n..];
            *this.head_cut = refused.in_head;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite> AsyncWrite for Inspect<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(raw: &[u8]) -> Result<(), Refusal> {
        Scanner::new().feed(raw).map_err(|r| r.reason)
    }

    /// Feeds `raw` one byte at a time: the verdict must not depend on how reads split the stream.
    fn scan_bytewise(raw: &[u8]) -> Result<(), Refusal> {
        let mut scanner = Scanner::new();
        for b in raw {
            scanner
                .feed(std::slice::from_ref(b))
                .map_err(|r| r.reason)?;
        }
        Ok(())
    }

    #[test]
    fn well_formed_requests_pass_in_any_split() {
        let cases: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\nGET /x?y=1 HTTP/1.0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: \x80\xff \t\r\nContent-Length: 000\r\n\r\n",
            b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\n\r\0",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04",
        ];
        for case in cases {
            assert_eq!(scan(case), Ok(()), "{}", String::from_utf8_lossy(case));
            assert_eq!(
                scan_bytewise(case),
                Ok(()),
                "{}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn ambiguous_requests_are_refused_in_any_split() {
        use Refusal::*;
        let cases: &[(&[u8], Refusal)] = &[
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", BareLf),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", BareLf),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\n", BareLf),
            (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", BareCr),
            (b"GET  / HTTP/1.1\r\n\r\n", BadRequestLine),
            (b"GET / HTTP/1.1 \r\n\r\n", BadRequestLine),
            (b"GET /\t HTTP/1.1\r\n\r\n", BadRequestLine),
            (b"GET / HTTP/1.2\r\n\r\n", BadRequestLine),
            (b"GET /\r\n\r\n", BadRequestLine),
            (b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", ObsFold),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", BadHeaderName),
            (b"GET / HTTP/1.1\r\n: a\r\n\r\n", BadHeaderName),
            (b"GET / HTTP/1.1\r\nHost\r\n\r\n", BadHeaderName),
            (b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", BadHeaderValue),
            (b"GET / HTTP/1.1\r\nX: a\x0bb\r\n\r\n", BadHeaderValue),
            (b"POST / HTTP/1.1\r\nContent_Length: 5\r\n\r\n", LookalikeFramingHeader),
            (b"POST / HTTP/1.1\r\nTransfer_Encoding: chunked\r\n\r\n", LookalikeFramingHeader),
            (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", DuplicateContentLength),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n\r\n", BadTransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", BadTransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n", BadTransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding:\tchunked\r\n\r\n", BadTransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\t\r\n\r\n", BadTransferEncoding),
            (b"POST / HTTP/1.1\r\nContent-Length:\t5\r\n\r\n", BadContentLength),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", DuplicateTransferEncoding),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", ContentLengthWithTransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", ContentLengthWithTransferEncoding),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", TransferEncodingInHttp10),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", DuplicateHost),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nx\r\n", BadChunkSize),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", BadChunkSize),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\n", BadChunkSize),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", ChunkSizeOverflow),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\n", BareLf),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;a\0\r\n", BadChunkExtension),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n", BadChunkEnd),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n", BareLf),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\nHost: a\r\n\r\n", BareLf),
        ];
        for (case, reason) in cases {
            let text = String::from_utf8_lossy(case);
            assert_eq!(scan(case), Err(*reason), "{text}");
            assert_eq!(scan_bytewise(case), Err(*reason), "{text}");
        }
    }

    #[test]
    fn a_body_error_cuts_at_the_end_of_its_head_when_the_head_is_in_the_same_read() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut raw = head.to_vec();
        raw.extend_from_slice(b"5;\nx\r\n");
        let refused = Scanner::new().feed(&raw).expect_err("refused");
        assert_eq!(refused.at, head.len() - 1, "cut at the head's final LF");
        assert!(refused.in_head);
        // In a later read, the body is cut where the error is.
        let mut scanner = Scanner::new();
        scanner.feed(head).expect("valid head");
        let refused = scanner.feed(b"5;\nx").expect_err("refused");
        assert_eq!((refused.at, refused.in_head), (2, false));
        // A head problem cuts where it was found.
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nX: \0\r\n\r\n";
        let refused = Scanner::new().feed(raw).expect_err("refused");
        assert_eq!(raw[refused.at], 0);
        assert!(refused.in_head);
    }

    #[test]
    fn bodies_are_skipped_not_scanned() {
        let mut raw = b"POST / HTTP/1.1\r\nContent-Length: 6\r\n\r\n\0\n\r\n\n\0".to_vec();
        raw.extend_from_slice(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\n\r\0\r\n0\r\n\r\n",
        );
        assert_eq!(scan(&raw), Ok(()));
        assert_eq!(scan_bytewise(&raw), Ok(()));
    }

    /// Mutated requests (bytes flipped, inserted, deleted; framing words spliced in), each fed
    /// whole and in random splits: no panic, and the verdict and the cut never depend on how the
    /// stream was split into reads.
    #[test]
    fn verdicts_do_not_depend_on_read_boundaries() {
        let seeds: &[&[u8]] = &[
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
            b"GET /x?y HTTP/1.1\r\nhost: a:1\r\nUser-Agent: h2load nghttp2/1.52.0\r\nX_Y: \x80\tz\r\nUpgrade: websocket\r\n\r\n",
            b"PUT / HTTP/1.0\r\nCONTENT-LENGTH:  2 \r\nAccept: */*\r\n\r\nokDELETE /z HTTP/1.1\r\nHost: b\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n",
            b"GET /chat HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x81\x00",
        ];
        let words: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"\r",
            b"\0",
            b" ",
            b"\t",
            b":",
            b";",
            b"chunked",
            b"Content-Length: 1\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Host: b\r\n",
            b"ffffffffffffffff",
            b"Content_Length: 1\r\n",
            b"content-length: 1, 1\r\n",
            b"Upgrade: x\r\n",
            b"HTTP/1.0",
            b"\x7f",
            b"\x80",
            b"0\r\n\r\n",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut refused = 0;
        for round in 0..20_000 {
            let mut raw = seeds[round % seeds.len()].to_vec();
            for _ in 0..1 + next(4) {
                let at = next(raw.len() + 1);
                match next(4) {
                    0 if at < raw.len() => raw[at] = next(256) as u8,
                    1 if at < raw.len() => {
                        raw.remove(at);
                    }
                    _ => {
                        let word = words[next(words.len())];
                        raw.splice(at..at, word.iter().copied());
                    }
                }
            }
            let mut fast = Scanner::new();
            let whole = fast.feed(&raw);
            // The whole-line fast path decides exactly as the byte path, and cuts at the same byte.
            let mut reference = Scanner::new();
            reference.bytewise = true;
            assert_eq!(
                whole,
                reference.feed(&raw),
                "{}",
                String::from_utf8_lossy(&raw)
            );
            assert_eq!(
                (fast.is_passing(), fast.phase),
                (reference.is_passing(), reference.phase)
            );
            let whole = whole.map_err(|r| r.reason);
            refused += usize::from(whole.is_err());
            let mut split = Scanner::new();
            let mut offset = 0;
            let mut verdict = Ok(());
            while offset < raw.len() {
                let end = (offset + 1 + next(16)).min(raw.len());
                if let Err(refused) = split.feed(&raw[offset..end]) {
                    verdict = Err(refused.reason);
                    break;
                }
                offset = end;
            }
            assert_eq!(whole, verdict, "{}", String::from_utf8_lossy(&raw));
        }
        eprintln!(
            "framing fuzz: 20000 mutated requests, {refused} refused, verdicts split-independent"
        );
    }

    /// The scanner's cost on a typical browser-sized head (run with `--ignored --nocapture`).
    #[test]
    #[ignore = "micro-benchmark"]
    fn scan_cost() {
        let head = b"GET /api/v1/items?page=2&sort=name HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nCookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\nConnection: keep-alive\r\n\r\n";
        let rounds = 200_000;
        let start = std::time::SystemTime::now();
        let mut scanner = Scanner::new();
        for _ in 0..rounds {
            scanner.feed(std::hint::black_box(head)).expect("valid");
        }
        let elapsed = start.elapsed().unwrap_or_default();
        eprintln!(
            "scanner: {} B head, {:.0} ns per head, {:.2} GB/s",
            head.len(),
            elapsed.as_nanos() as f64 / rounds as f64,
            (head.len() * rounds) as f64 / elapsed.as_secs_f64() / 1e9
        );
    }
}
