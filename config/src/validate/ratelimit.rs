//! `services[].rateLimit`.

use serde_yaml_ng::Value;

use super::policy::header_name;
use super::walk::{self, Cx, Obj};
use crate::model::{RateLimit, RateLimitKey};

pub(super) fn rate_limit(cx: &mut Cx, value: &Value, at: &str) -> Option<RateLimit> {
    let o = Obj::open(
        cx,
        value,
        at,
        &["requestsPerSecond", "burst", "key", "maxKeys"],
    )?;
    let rate = o.req(cx, "requestsPerSecond", |cx, v, at| {
        let rate = walk::number(cx, v, at)?;
        if !(RateLimit::MIN_RATE..=RateLimit::MAX_RATE).contains(&rate) {
            cx.err(
                at,
                format!(
                    "must be between {} and {}, got {rate}",
                    RateLimit::MIN_RATE,
                    RateLimit::MAX_RATE
                ),
            );
            return None;
        }
        Some(rate)
    });
    let burst = o.opt(cx, "burst", |cx, v, at| {
        let burst = walk::positive_u32(cx, v, at)?;
        if f64::from(burst) > RateLimit::MAX_RATE {
            cx.err(
                at,
                format!("must be at most {}, got {burst}", RateLimit::MAX_RATE),
            );
            return None;
        }
        Some(burst)
    });
    let key = o.or(cx, "key", RateLimitKey::ClientIp, key);
    let max_keys = o.or(cx, "maxKeys", RateLimit::DEFAULT_MAX_KEYS, |cx, v, at| {
        let n = walk::uint(cx, v, at)?;
        match usize::try_from(n) {
            Ok(n) if (1..=RateLimit::MAX_MAX_KEYS).contains(&n) => Some(n),
            _ => {
                cx.err(
                    at,
                    format!("must be between 1 and {}, got {n}", RateLimit::MAX_MAX_KEYS),
                );
                None
            }
        }
    });
    let rate = rate?;
    Some(RateLimit {
        requests_per_second: rate,
        burst: burst?.unwrap_or_else(|| RateLimit::default_burst(rate)),
        key: key?,
        max_keys: max_keys?,
    })
}

/// `clientIp`, `global` or `{header: NAME}`.
fn key(cx: &mut Cx, value: &Value, at: &str) -> Option<RateLimitKey> {
    match value {
        Value::String(s) if s == "clientIp" => Some(RateLimitKey::ClientIp),
        Value::String(s) if s == "global" => Some(RateLimitKey::Global),
        Value::Mapping(_) => {
            let o = Obj::open(cx, value, at, &["header"])?;
            o.req(cx, "header", header_name).map(RateLimitKey::Header)
        }
        _ => {
            cx.err(at, "expected \"clientIp\", \"global\" or {header: NAME}");
            None
        }
    }
}
