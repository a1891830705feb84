//! `services[].rateLimit` (issue #8).

use super::{check, ok};
use crate::*;

fn service(extra: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:8080\nservices:\n  - name: web\n    stable: {{ version: v1, upstreams: [\"127.0.0.1:9001\"] }}\n{extra}"
    )
}

#[test]
fn defaults_and_keys() {
    assert_eq!(ok(&service("")).services[0].rate_limit, None);
    let model = ok(&service("    rateLimit: { requestsPerSecond: 2.5 }\n"));
    assert_eq!(
        model.services[0].rate_limit,
        Some(RateLimit {
            requests_per_second: 2.5,
            burst: 3,
            key: RateLimitKey::ClientIp,
            max_keys: RateLimit::DEFAULT_MAX_KEYS,
        })
    );
    let model = ok(&service(
        "    rateLimit: { requestsPerSecond: 100, burst: 200, key: { header: X-Api-Key }, maxKeys: 10 }\n",
    ));
    let limit = model.services[0].rate_limit.clone().unwrap();
    assert_eq!(limit.burst, 200);
    assert_eq!(limit.max_keys, 10);
    assert_eq!(limit.key, RateLimitKey::Header("x-api-key".into()));
    let model = ok(&service(
        "    rateLimit: { requestsPerSecond: 0.001, key: global }\n",
    ));
    let limit = model.services[0].rate_limit.clone().unwrap();
    assert_eq!((limit.burst, limit.key), (1, RateLimitKey::Global));
}

#[test]
fn problems_are_reported_with_their_path() {
    check(
        &service("    rateLimit: { burst: 0, key: everyone, maxKeys: 0, rate: 1 }\n"),
        &[
            "services[0].rateLimit.rate: unknown field \"rate\"…",
            "services[0].rateLimit.requestsPerSecond: missing required field",
            "services[0].rateLimit.burst: must be at least 1, got 0",
            "services[0].rateLimit.key: expected \"clientIp\", \"global\" or {header: NAME}",
            "services[0].rateLimit.maxKeys: must be between 1 and 10000000, got 0",
        ],
    );
    check(
        &service("    rateLimit: { requestsPerSecond: 0, burst: 2000000, key: { header: \"bad name\" } }\n"),
        &[
            "services[0].rateLimit.requestsPerSecond: must be between 0.001 and 1000000, got 0",
            "services[0].rateLimit.burst: must be at most 1000000, got 2000000",
            "services[0].rateLimit.key.header: invalid header name…",
        ],
    );
    check(
        &service("    rateLimit: { requestsPerSecond: .inf }\n"),
        &["services[0].rateLimit.requestsPerSecond: expected a finite number…"],
    );
}
