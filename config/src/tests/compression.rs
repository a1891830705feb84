//! `services[].compression` (issue #8).

use super::{check, ok};
use crate::*;

fn service(extra: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:8080\nservices:\n  - name: web\n    stable: {{ version: v1, upstreams: [\"127.0.0.1:9001\"] }}\n{extra}"
    )
}

#[test]
fn off_by_default_and_defaults_when_present() {
    assert_eq!(ok(&service("")).services[0].compression, None);
    let model = ok(&service("    compression: {}\n"));
    let c = model.services[0].compression.clone().unwrap();
    assert_eq!(c, Compression::default());
    assert_eq!(
        c.algorithms,
        [
            CompressionAlgorithm::Zstd,
            CompressionAlgorithm::Brotli,
            CompressionAlgorithm::Gzip
        ]
    );
    assert_eq!(c.min_size, 1024);
    assert!(c.content_types.iter().any(|t| t == "application/json"));
    assert!(!c.content_types.iter().any(|t| t == "text/event-stream"));
    assert_eq!(c.level, CompressionLevel::Default);
}

#[test]
fn every_key_is_read() {
    let model = ok(&service(
        "    compression: { algorithms: [gzip, br], minSize: 0, contentTypes: [\"Text/*\", application/json], level: best }\n",
    ));
    let c = model.services[0].compression.clone().unwrap();
    assert_eq!(
        c.algorithms,
        [CompressionAlgorithm::Gzip, CompressionAlgorithm::Brotli]
    );
    assert_eq!(c.min_size, 0);
    assert_eq!(c.content_types, ["text/*", "application/json"]);
    assert_eq!(c.level, CompressionLevel::Best);
}

#[test]
fn bad_values_are_reported_with_their_paths() {
    check(
        &service(
            "    compression: { algorithms: [gzip, deflate, gzip], minSize: -1, contentTypes: [html, \"*/*\"], level: 11, extra: 1 }\n",
        ),
        &[
            "services[0].compression.algorithms[1]: expected gzip, br or zstd, got \"deflate\"",
            "services[0].compression.minSize: …",
            "services[0].compression.contentTypes[0]: expected a media type like text/html or text/*, got \"html\"",
            "services[0].compression.contentTypes[1]: expected a media type like text/html or text/*, got \"*/*\"",
            "services[0].compression.level: …",
            "services[0].compression.extra: …",
        ],
    );
    check(
        &service("    compression: { algorithms: [zstd, zstd] }\n"),
        &["services[0].compression.algorithms[1]: \"zstd\" is listed twice"],
    );
    check(
        &service("    compression: { algorithms: [], contentTypes: [] }\n"),
        &[
            "services[0].compression.algorithms: …",
            "services[0].compression.contentTypes: …",
        ],
    );
}
