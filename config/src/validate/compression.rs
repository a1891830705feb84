//! `services[].compression`.

use serde_yaml_ng::Value;

use super::walk::{self, each, Cx, Obj};
use crate::model::{Compression, CompressionAlgorithm, CompressionLevel};

pub(super) fn compression(cx: &mut Cx, value: &Value, at: &str) -> Option<Compression> {
    let o = Obj::open(
        cx,
        value,
        at,
        &["algorithms", "minSize", "contentTypes", "level"],
    )?;
    let d = Compression::default();
    let algorithms = o.or(cx, "algorithms", d.algorithms, algorithms);
    let min_size = o.or(cx, "minSize", d.min_size, walk::uint);
    let content_types = o.or(cx, "contentTypes", d.content_types, content_types);
    let level = o.or(cx, "level", d.level, |cx, v, at| {
        match walk::string(cx, v, at)?.as_str() {
            "fast" => Some(CompressionLevel::Fast),
            "default" => Some(CompressionLevel::Default),
            "best" => Some(CompressionLevel::Best),
            other => {
                cx.err(
                    at,
                    format!("expected fast, default or best, got \"{other}\""),
                );
                None
            }
        }
    });
    Some(Compression {
        algorithms: algorithms?,
        min_size: min_size?,
        content_types: content_types?,
        level: level?,
    })
}

fn algorithms(cx: &mut Cx, value: &Value, at: &str) -> Option<Vec<CompressionAlgorithm>> {
    let items = walk::nonempty_list(cx, value, at)?;
    let parsed = each(cx, items, at, |cx, item, at, _| {
        match walk::string(cx, item, at)?.as_str() {
            "gzip" => Some(CompressionAlgorithm::Gzip),
            "br" => Some(CompressionAlgorithm::Brotli),
            "zstd" => Some(CompressionAlgorithm::Zstd),
            other => {
                cx.err(at, format!("expected gzip, br or zstd, got \"{other}\""));
                None
            }
        }
    });
    let list = walk::all(parsed)?;
    for (i, algorithm) in list.iter().enumerate() {
        if list[..i].contains(algorithm) {
            cx.err(
                &walk::index_path(at, i),
                format!("\"{}\" is listed twice", algorithm.token()),
            );
            return None;
        }
    }
    Some(list)
}

/// `type/subtype` or `type/*`, each a token (RFC 9110 §5.6.2), stored lowercase.
fn content_types(cx: &mut Cx, value: &Value, at: &str) -> Option<Vec<String>> {
    let items = walk::nonempty_list(cx, value, at)?;
    let parsed = each(cx, items, at, |cx, item, at, _| {
        let text = walk::string(cx, item, at)?.trim().to_ascii_lowercase();
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        match text.split_once('/') {
            Some((kind, sub)) if token(kind) && kind != "*" && token(sub) => Some(text),
            _ => {
                cx.err(
                    at,
                    format!("expected a media type like text/html or text/*, got \"{text}\""),
                );
                None
            }
        }
    });
    walk::all(parsed)
}
