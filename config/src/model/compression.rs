//! Response compression (`services[].compression`): off unless the key is present.

/// A content coding weir can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompressionAlgorithm {
    /// `gzip` (RFC 9110 §8.4.1.3); also accepted from clients as `x-gzip`.
    Gzip,
    /// `br`, Brotli (RFC 7932).
    Brotli,
    /// `zstd`, Zstandard (RFC 8878).
    Zstd,
}

impl CompressionAlgorithm {
    /// The coding's name in `Accept-Encoding` and `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            CompressionAlgorithm::Gzip => "gzip",
            CompressionAlgorithm::Brotli => "br",
            CompressionAlgorithm::Zstd => "zstd",
        }
    }
}

/// `compression.level`: how hard each encoder works. Levels are bounded so that no accepted value
/// costs unbounded memory per stream (see [`Compression`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CompressionLevel {
    /// `fast`: gzip 1, br 1, zstd 1.
    Fast,
    /// `default`: gzip 6, br 4, zstd 3.
    #[default]
    Default,
    /// `best`: gzip 9, br 9, zstd 12.
    Best,
}

/// `services[].compression`: compress responses for clients that accept it (`Accept-Encoding`).
///
/// Never compressed: a response that already has a `Content-Encoding`, one with `Cache-Control:
/// no-transform`, an answer to `HEAD`, 1xx/204/206/304 responses and any with `Content-Range`, a
/// body whose `Content-Length` is below `minSize`, a `Content-Type` not in `contentTypes`, and
/// upgraded connections and mirrored copies. Memory per compressed response is bounded: each
/// encoder uses a window of at most 256 KiB and its output is handed on frame by frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compression {
    /// `algorithms` (default `[zstd, br, gzip]`): the codings weir offers, in its order of
    /// preference; the client's q-values decide first, this order breaks ties.
    pub algorithms: Vec<CompressionAlgorithm>,
    /// `minSize` (default 1024 bytes): a response whose `Content-Length` is smaller is sent as it
    /// is (compressing it would save nothing); a streamed response of unknown length is
    /// compressed.
    pub min_size: u64,
    /// `contentTypes` (default [`Compression::DEFAULT_CONTENT_TYPES`]): media types compressed,
    /// lowercase, `type/subtype` or `type/*`; parameters (`; charset=…`) are ignored when
    /// matching. `text/event-stream` is not in the default list.
    pub content_types: Vec<String>,
    /// `level` (default `default`): `fast`, `default` or `best`.
    pub level: CompressionLevel,
}

impl Compression {
    /// The default `contentTypes`: text formats that compress well.
    pub const DEFAULT_CONTENT_TYPES: &'static [&'static str] = &[
        "text/html",
        "text/plain",
        "text/css",
        "text/javascript",
        "text/xml",
        "text/csv",
        "text/markdown",
        "application/javascript",
        "application/json",
        "application/xml",
        "application/xhtml+xml",
        "application/rss+xml",
        "application/atom+xml",
        "application/ld+json",
        "application/manifest+json",
        "application/wasm",
        "image/svg+xml",
    ];
    /// The default `minSize`.
    pub const DEFAULT_MIN_SIZE: u64 = 1024;
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            algorithms: vec![
                CompressionAlgorithm::Zstd,
                CompressionAlgorithm::Brotli,
                CompressionAlgorithm::Gzip,
            ],
            min_size: Compression::DEFAULT_MIN_SIZE,
            content_types: Compression::DEFAULT_CONTENT_TYPES
                .iter()
                .map(|t| (*t).to_string())
                .collect(),
            level: CompressionLevel::Default,
        }
    }
}
