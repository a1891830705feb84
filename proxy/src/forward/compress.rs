//! Response compression (`services[].compression`): the codings negotiated from the client's
//! `Accept-Encoding` (q-values, `*`, `q=0` exclusions, weir's order breaking ties), the rules
//! that leave a response alone, and the streaming encoders.
//!
//! The encoders are the maintained synchronous streaming ones (`flate2`, `brotli`, `zstd`), fed
//! one body frame at a time and writing into a buffer that is handed on as the next frame: no
//! `AsyncRead` bridge, an explicit flush whenever the upstream has nothing more ready (so a
//! streamed response is never held back behind the compressor), and memory bounded by the
//! encoder's window (capped at 256 KiB) plus one frame's output.

use std::io::Write;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use weir_config::{Compression, CompressionAlgorithm, CompressionLevel};

/// The window of every encoder (2^18 = 256 KiB): bounds each compressed response's memory.
const WINDOW_LOG: u32 = 18;

/// A service's compression settings, compiled when the table is built.
#[derive(Debug)]
pub(crate) struct Policy {
    algorithms: Box<[CompressionAlgorithm]>,
    min_size: u64,
    /// Exact media types and `type/` prefixes (from `type/*`), lowercase.
    types: Box<[Box<str>]>,
    level: CompressionLevel,
}

impl Policy {
    pub(crate) fn new(config: &Compression) -> Policy {
        Policy {
            algorithms: config.algorithms.clone().into(),
            min_size: config.min_size,
            types: config
                .content_types
                .iter()
                .map(|t| t.strip_suffix('*').unwrap_or(t).into())
                .collect(),
            level: config.level,
        }
    }

    /// What the request allows: `None` when nothing can be compressed (a `HEAD` request or an
    /// upgrade); otherwise the coding the client accepts best (`None` inside when it accepts none,
    /// the response may still need `Vary`).
    pub(crate) fn for_request(
        &self,
        method: &Method,
        headers: &HeaderMap,
        upgrade: bool,
    ) -> Option<Option<CompressionAlgorithm>> {
        if upgrade || method == Method::HEAD {
            return None;
        }
        Some(negotiate(&self.algorithms, headers))
    }

    /// Whether this response may be compressed at all (it then varies on `Accept-Encoding`).
    pub(crate) fn eligible(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if status.is_informational()
            || matches!(
                status,
                StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
            )
            || headers.contains_key(header::CONTENT_ENCODING)
            || headers.contains_key(header::CONTENT_RANGE)
        {
            return false;
        }
        if headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        {
            return false;
        }
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if length.is_some_and(|len| len < self.min_size.max(1)) {
            return false;
        }
        let Some(media) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim())
        else {
            return false;
        };
        self.types.iter().any(|t| {
            if t.ends_with('/') {
                media.len() > t.len()
                    && media.as_bytes()[..t.len()].eq_ignore_ascii_case(t.as_bytes())
            } else {
                media.eq_ignore_ascii_case(t)
            }
        })
    }

    /// Rewrites the head of a response about to be compressed with `algorithm`.
    pub(crate) fn compress_head(headers: &mut HeaderMap, algorithm: CompressionAlgorithm) {
        headers.remove(header::CONTENT_LENGTH);
        // Ranges of the compressed stream are not served (nginx's gzip does the same).
        headers.remove(header::ACCEPT_RANGES);
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(algorithm.token()),
        );
        // RFC 9110 §8.8.3: the compressed bytes differ, so a strong validator becomes weak.
        if let Some(etag) = headers.get_mut(header::ETAG) {
            if !etag.as_bytes().starts_with(b"W/") {
                let mut weak = Vec::with_capacity(etag.len() + 2);
                weak.extend_from_slice(b"W/");
                weak.extend_from_slice(etag.as_bytes());
                if let Ok(value) = HeaderValue::from_bytes(&weak) {
                    *etag = value;
                }
            }
        }
    }

    /// The encoder for `algorithm` at this service's level.
    pub(crate) fn encoder(&self, algorithm: CompressionAlgorithm) -> Option<Encoder> {
        Encoder::new(algorithm, self.level)
    }
}

/// Adds `Accept-Encoding` to `Vary` unless it (or `*`) is already there.
pub(crate) fn add_vary(headers: &mut HeaderMap) {
    let present = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.eq_ignore_ascii_case("accept-encoding")
        });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// The coding of `offered` (weir's preference order) the client prefers: the highest q-value
/// wins (a coding not named gets `*`'s, or is not acceptable), ties go to weir's order, `q=0`
/// excludes. No `Accept-Encoding` at all means no compression (RFC 9110 §12.5.3 allows any coding,
/// but clients that decode send the header).
pub(crate) fn negotiate(
    offered: &[CompressionAlgorithm],
    headers: &HeaderMap,
) -> Option<CompressionAlgorithm> {
    // Per offered coding (at most 3): its explicit q in thousandths, and `*`'s.
    let mut explicit = [None::<u16>; 3];
    let mut star = None::<u16>;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for element in value.split(',') {
            let mut parts = element.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if coding.is_empty() {
                continue;
            }
            let mut q = Some(1000);
            for param in parts {
                if let Some((name, v)) = param.split_once('=') {
                    if name.trim().eq_ignore_ascii_case("q") {
                        q = parse_q(v.trim());
                    }
                }
            }
            // An element with a malformed q-value is ignored.
            let Some(q) = q else { continue };
            if coding == "*" {
                star = Some(star.map_or(q, |s: u16| s.max(q)));
                continue;
            }
            for (i, algorithm) in offered.iter().enumerate().take(3) {
                let name = algorithm.token();
                let same = coding.eq_ignore_ascii_case(name)
                    || (*algorithm == CompressionAlgorithm::Gzip
                        && coding.eq_ignore_ascii_case("x-gzip"));
                if same {
                    explicit[i] = Some(explicit[i].map_or(q, |e| e.max(q)));
                }
            }
        }
    }
    let mut best: Option<(CompressionAlgorithm, u16)> = None;
    for (i, algorithm) in offered.iter().enumerate().take(3) {
        let q = explicit[i].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((*algorithm, q));
        }
    }
    best.map(|(algorithm, _)| algorithm)
}

/// An RFC 9110 §12.4.2 qvalue in thousandths: `0`, `1`, `0.xxx`, `1.000`.
fn parse_q(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths = 0u16;
    for i in 0..3 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| u16::from(b - b'0'));
        thousandths = thousandths * 10 + digit;
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// A streaming encoder writing into its own buffer.
pub(crate) enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoder::Gzip(_) => "Encoder::Gzip",
            Encoder::Brotli(_) => "Encoder::Brotli",
            Encoder::Zstd(_) => "Encoder::Zstd",
        })
    }
}

impl Encoder {
    fn new(algorithm: CompressionAlgorithm, level: CompressionLevel) -> Option<Encoder> {
        let (gzip, br, zstd) = match level {
            CompressionLevel::Fast => (1, 1, 1),
            CompressionLevel::Default => (6, 4, 3),
            CompressionLevel::Best => (9, 9, 12),
        };
        Some(match algorithm {
            CompressionAlgorithm::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(gzip),
            )),
            CompressionAlgorithm::Brotli => Encoder::Brotli(Box::new(
                brotli::CompressorWriter::new(Vec::new(), 4096, br, WINDOW_LOG),
            )),
            CompressionAlgorithm::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), zstd).ok()?;
                encoder.window_log(WINDOW_LOG).ok()?;
                encoder.include_checksum(false).ok()?;
                Encoder::Zstd(encoder)
            }
        })
    }

    /// Compresses `data` (the output may stay inside the encoder until a flush).
    pub(crate) fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Brotli(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    /// Pushes out everything written so far, so the client can decode it now.
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Brotli(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }

    /// Ends the stream (the format's end marker and checksum).
    pub(crate) fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Brotli(e) => Ok(e.into_inner()),
            Encoder::Zstd(e) => e.finish(),
        }
    }

    /// How many compressed bytes wait in the buffer.
    pub(crate) fn buffered(&self) -> usize {
        match self {
            Encoder::Gzip(e) => e.get_ref().len(),
            Encoder::Brotli(e) => e.get_ref().len(),
            Encoder::Zstd(e) => e.get_ref().len(),
        }
    }

    /// Takes the compressed bytes produced so far.
    pub(crate) fn take(&mut self) -> Bytes {
        let buffer = match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        };
        Bytes::from(std::mem::take(buffer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CompressionAlgorithm::{Brotli, Gzip, Zstd};

    fn pick(offered: &[CompressionAlgorithm], accept: &[&str]) -> Option<CompressionAlgorithm> {
        let mut headers = HeaderMap::new();
        for value in accept {
            headers.append(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(value).unwrap(),
            );
        }
        negotiate(offered, &headers)
    }

    #[test]
    fn negotiation_follows_q_values_then_weir_order() {
        let all = [Zstd, Brotli, Gzip];
        assert_eq!(pick(&all, &[]), None);
        assert_eq!(pick(&all, &["gzip, deflate, br, zstd"]), Some(Zstd));
        assert_eq!(pick(&[Gzip, Brotli, Zstd], &["gzip, br, zstd"]), Some(Gzip));
        assert_eq!(pick(&all, &["gzip;q=1.0, br;q=0.5"]), Some(Gzip));
        assert_eq!(pick(&all, &["gzip;q=0.2", "br;q=0.9"]), Some(Brotli));
        assert_eq!(pick(&all, &["identity"]), None);
        assert_eq!(pick(&all, &["*"]), Some(Zstd));
        assert_eq!(pick(&all, &["*;q=0.5, zstd;q=0"]), Some(Brotli));
        assert_eq!(pick(&all, &["zstd;q=0, br;q=0, *;q=0.1"]), Some(Gzip));
        assert_eq!(pick(&all, &["*;q=0, gzip"]), Some(Gzip));
        assert_eq!(pick(&all, &["GZIP;Q=0.5"]), Some(Gzip));
        assert_eq!(pick(&all, &["x-gzip"]), Some(Gzip));
        assert_eq!(pick(&all, &["gzip;q=2"]), None);
        assert_eq!(pick(&all, &["gzip;q=0.0001"]), None);
        assert_eq!(pick(&all, &["deflate, compress"]), None);
        assert_eq!(pick(&[Gzip], &["br, zstd"]), None);
    }

    #[test]
    fn head_requests_and_upgrades_are_never_compressed() {
        let policy = Policy::new(&Compression::default());
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(policy.for_request(&Method::HEAD, &headers, false), None);
        assert_eq!(policy.for_request(&Method::GET, &headers, true), None);
        assert_eq!(
            policy.for_request(&Method::GET, &headers, false),
            Some(Some(Gzip))
        );
        assert_eq!(
            policy.for_request(&Method::GET, &HeaderMap::new(), false),
            Some(None)
        );
    }

    #[test]
    fn vary_is_added_once() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::VARY,
            HeaderValue::from_static("Origin, Accept-Encoding"),
        );
        add_vary(&mut headers);
        assert_eq!(headers.get_all(header::VARY).iter().count(), 1);
        let mut headers = HeaderMap::new();
        headers.insert(header::VARY, HeaderValue::from_static("origin"));
        add_vary(&mut headers);
        assert_eq!(headers.get_all(header::VARY).iter().count(), 2);
    }

    #[test]
    fn q_values_parse_per_rfc() {
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.05"), Some(50));
        assert_eq!(parse_q("0"), Some(0));
        assert_eq!(parse_q("1.5"), None);
        assert_eq!(parse_q("-1"), None);
        assert_eq!(parse_q(""), None);
        assert_eq!(parse_q("0.x"), None);
    }

    #[test]
    fn a_flush_makes_everything_written_so_far_decodable() {
        let data: Vec<u8> = b"{\"id\": 1, \"name\": \"weir\"}\n"
            .iter()
            .copied()
            .cycle()
            .take(300_000)
            .collect();
        for algorithm in [Gzip, Brotli, Zstd] {
            for level in [
                CompressionLevel::Fast,
                CompressionLevel::Default,
                CompressionLevel::Best,
            ] {
                let mut encoder = Encoder::new(algorithm, level).unwrap();
                encoder.write(&data).unwrap();
                encoder.flush().unwrap();
                let flushed = encoder.take();
                // The stream is not finished: read until the decoder runs out of input.
                let mut reader: Box<dyn std::io::Read> = match algorithm {
                    Gzip => Box::new(flate2::read::GzDecoder::new(&flushed[..])),
                    Brotli => Box::new(brotli::Decompressor::new(&flushed[..], 4096)),
                    Zstd => Box::new(zstd::stream::read::Decoder::new(&flushed[..]).unwrap()),
                };
                let mut out = vec![0; data.len() + 1];
                let mut total = 0;
                while let Ok(n) = reader.read(&mut out[total..]) {
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
                assert_eq!(total, data.len(), "{algorithm:?} {level:?}");
                let mut rest = encoder.finish().unwrap();
                assert!(!rest.is_empty());
                rest.clear();
            }
        }
    }
}
