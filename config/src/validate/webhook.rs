//! `strategy.canary.webhooks`: Flagger's webhook entries, and the built-in `loadTest` of a
//! `type: rollout` hook.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_yaml_ng::Value;

use super::walk::{self, all, each, Cx, Obj};
use crate::model::{LoadTest, Webhook, WebhookKind, WebhookTarget};

/// Keys of one webhook entry.
const WEBHOOK_KEYS: [&str; 7] = [
    "name", "type", "url", "loadTest", "timeout", "interval", "metadata",
];
/// Keys of `loadTest`.
const LOAD_TEST_KEYS: [&str; 5] = ["rate", "path", "method", "headers", "timeout"];

/// `webhooks`: a list of entries with unique names. `default_interval` is the analysis
/// interval of a Flagger form, if any.
pub(super) fn webhooks(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    default_interval: Option<Duration>,
) -> Option<Vec<Webhook>> {
    let items = walk::list(cx, value, at)?;
    let mut names = BTreeSet::new();
    let parsed = each(cx, items, at, |cx, item, at, _| {
        let hook = webhook(cx, item, at, default_interval)?;
        if !names.insert(hook.name.clone()) {
            cx.err(
                &walk::field_path(at, "name"),
                format!("duplicate webhook name \"{}\"", hook.name),
            );
            return None;
        }
        Some(hook)
    });
    all(parsed)
}

fn webhook(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    default_interval: Option<Duration>,
) -> Option<Webhook> {
    let o = Obj::open(cx, value, at, &WEBHOOK_KEYS)?;
    let name = o.req(cx, "name", walk::nonempty_string);
    let kind = o.or(cx, "type", WebhookKind::Rollout, |cx, v, at| {
        let text = walk::string(cx, v, at)?;
        WebhookKind::parse(&text).or_else(|| {
            let kinds: Vec<&str> = WebhookKind::ALL.iter().map(|k| k.as_str()).collect();
            cx.err(
                at,
                format!(
                    "unknown webhook type \"{text}\", expected one of: {}",
                    kinds.join(", ")
                ),
            );
            None
        })
    });
    let url = o.opt(cx, "url", url);
    let load = o.opt(cx, "loadTest", load_test);
    let target = match (url?, load?, kind) {
        (Some(_), Some(_), _) => {
            cx.err(at, "give either url or loadTest, not both");
            None
        }
        (Some(url), None, _) => Some(WebhookTarget::Url(url)),
        (None, Some(load), Some(WebhookKind::Rollout)) => Some(WebhookTarget::LoadTest(load)),
        (None, Some(_), Some(_)) => {
            cx.err(&o.at("loadTest"), "loadTest is only for type: rollout");
            None
        }
        (None, Some(_), None) => None,
        (None, None, _) => {
            cx.err(
                &o.at("url"),
                "missing required field (or loadTest, for type: rollout)",
            );
            None
        }
    };
    let timeout = o.or(cx, "timeout", Webhook::DEFAULT_TIMEOUT, |cx, v, at| {
        let timeout = walk::positive_duration(cx, v, at)?;
        if timeout > Webhook::MAX_TIMEOUT {
            cx.err(at, "must be at most 10m");
            return None;
        }
        Some(timeout)
    });
    let interval = o.or(
        cx,
        "interval",
        default_interval.unwrap_or(Webhook::DEFAULT_INTERVAL),
        |cx, v, at| {
            let interval = walk::duration(cx, v, at)?;
            if interval < Webhook::MIN_INTERVAL {
                cx.err(at, "must be at least 100ms");
                return None;
            }
            Some(interval)
        },
    );
    let metadata = o.or(cx, "metadata", BTreeMap::new(), metadata);
    Some(Webhook {
        name: name?,
        kind: kind?,
        target: target?,
        timeout: timeout?,
        interval: interval?.max(Webhook::MIN_INTERVAL),
        metadata: metadata?,
    })
}

/// An `http://` or `https://` URL with a host and no whitespace or control characters.
fn url(cx: &mut Cx, value: &Value, at: &str) -> Option<String> {
    let url = walk::string(cx, value, at)?;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let host_ok = rest.is_some_and(|rest| {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        !authority.is_empty() && !authority.starts_with(':')
    });
    if !host_ok {
        cx.err(
            at,
            format!("must be an http:// or https:// URL with a host, got \"{url}\""),
        );
        return None;
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        cx.err(at, "must not contain spaces or control characters");
        return None;
    }
    Some(url)
}

/// `metadata`: a mapping of names to scalars (taken as text).
fn metadata(cx: &mut Cx, value: &Value, at: &str) -> Option<BTreeMap<String, String>> {
    let Value::Mapping(map) = value else {
        cx.err(at, "expected a mapping of names to strings");
        return None;
    };
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (key, value) in map {
        let Some(name) = key.as_str() else {
            cx.err(at, "metadata names must be strings");
            ok = false;
            continue;
        };
        match walk::text(cx, value, &walk::field_path(at, name)) {
            Some(text) => {
                out.insert(name.to_string(), text);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// `loadTest`: `rate` 1..=[`LoadTest::MAX_RATE`], `path` from `/`, `method` a token, `headers`
/// a mapping of valid names to valid values, `timeout` positive and at most 10m.
fn load_test(cx: &mut Cx, value: &Value, at: &str) -> Option<LoadTest> {
    let o = Obj::open(cx, value, at, &LOAD_TEST_KEYS)?;
    let rate = o.req(cx, "rate", |cx, v, at| {
        let rate = walk::positive_u32(cx, v, at)?;
        if rate > LoadTest::MAX_RATE {
            cx.err(
                at,
                format!(
                    "must be at most {} requests per second, got {rate}",
                    LoadTest::MAX_RATE
                ),
            );
            return None;
        }
        Some(rate)
    });
    let path = o.or(cx, "path", "/".to_string(), |cx, v, at| {
        let path = walk::string(cx, v, at)?;
        if !path.starts_with('/') {
            cx.err(at, format!("must start with \"/\", got \"{path}\""));
            return None;
        }
        if path.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            cx.err(
                at,
                "must be visible ASCII without spaces (percent-encode the rest)",
            );
            return None;
        }
        if climbs_above_root(&path) {
            cx.err(at, format!("climbs above the root: \"{path}\""));
            return None;
        }
        Some(path)
    });
    let method = o.or(cx, "method", "GET".to_string(), |cx, v, at| {
        let method = walk::nonempty_string(cx, v, at)?;
        if !method.bytes().all(is_tchar) {
            cx.err(at, format!("\"{method}\" is not an HTTP method (a token)"));
            return None;
        }
        Some(method.to_ascii_uppercase())
    });
    let headers = o.or(cx, "headers", Vec::new(), |cx, v, at| {
        let Value::Mapping(map) = v else {
            cx.err(at, "expected a mapping of header names to values");
            return None;
        };
        let mut headers = Vec::new();
        let mut ok = true;
        for (key, value) in map {
            let Some(name) = key.as_str() else {
                cx.err(at, "header names must be strings");
                ok = false;
                continue;
            };
            let at = walk::field_path(at, name);
            if name.is_empty() || !name.bytes().all(is_tchar) {
                cx.err(&at, format!("invalid header name \"{name}\""));
                ok = false;
                continue;
            }
            let Some(value) = walk::text(cx, value, &at) else {
                ok = false;
                continue;
            };
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b >= 0x7f) {
                cx.err(
                    &at,
                    "a header value must be visible ASCII, spaces or tabs (no control characters)",
                );
                ok = false;
                continue;
            }
            headers.push((name.to_string(), value));
        }
        ok.then_some(headers)
    });
    let timeout = o.or(cx, "timeout", LoadTest::DEFAULT_TIMEOUT, |cx, v, at| {
        let timeout = walk::positive_duration(cx, v, at)?;
        if timeout > Webhook::MAX_TIMEOUT {
            cx.err(at, "must be at most 10m");
            return None;
        }
        Some(timeout)
    });
    Some(LoadTest {
        rate: rate?,
        path: path?,
        method: method?,
        headers: headers?,
        timeout: timeout?,
    })
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `path`'s dot segments (`..`, also spelled `%2e%2e`) lead above `/`: weir resolves them
/// before routing and refuses such a request, so a load test sending it could never be served.
fn climbs_above_root(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut depth = 0usize;
    for segment in path.split('/').skip(1) {
        match segment.to_ascii_lowercase().replace("%2e", ".").as_str() {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return true,
            },
            _ => depth += 1,
        }
    }
    false
}

#[cfg(test)]
mod climbs {
    #[test]
    fn dot_segments_above_the_root_are_found() {
        for path in ["/..", "/../x", "/a/../../b", "/%2e%2E/x", "/a/./../.."] {
            assert!(super::climbs_above_root(path), "{path}");
        }
        for path in ["/", "/a/..", "/a/b/../c", "/..a", "/a?x=/../..", "/health"] {
            assert!(!super::climbs_above_root(path), "{path}");
        }
    }
}
