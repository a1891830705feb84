//! `listeners[].tls.acme`: read in [`acme`]; the default domains, `stateDir` and the challenge's
//! needs are checked once the services are known ([`finish`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::walk::{self, each, Cx, Obj};
use crate::model::{Acme, AcmeChallenge, AcmeRetry, HostPattern, Listener, Service};

/// Reads `tls.acme`. `domains` stays empty when not written: [`finish`] fills in the default.
pub(super) fn acme(cx: &mut Cx, value: &Value, at: &str, base_dir: &Path) -> Option<Acme> {
    let o = Obj::open(
        cx,
        value,
        at,
        &[
            "directory",
            "email",
            "domains",
            "challenge",
            "caFile",
            "renewBefore",
            "retry",
        ],
    )?;
    let directory = o.req(cx, "directory", directory);
    let email = o.opt(cx, "email", |cx, v, at| {
        let email = walk::nonempty_string(cx, v, at)?;
        let email = email.trim().strip_prefix("mailto:").unwrap_or(email.trim());
        let valid = email.split_once('@').is_some_and(|(user, host)| {
            !user.is_empty() && !host.is_empty() && !email.contains([' ', ',', '<', '>'])
        });
        if !valid {
            cx.err(at, format!("expected an e-mail address, got \"{email}\""));
            return None;
        }
        Some(email.to_string())
    });
    let domains = o.or(cx, "domains", Vec::new(), domains);
    let challenge = o.or(
        cx,
        "challenge",
        AcmeChallenge::TlsAlpn01,
        |cx, v, at| match walk::string(cx, v, at)?.as_str() {
            "tls-alpn-01" => Some(AcmeChallenge::TlsAlpn01),
            "http-01" => Some(AcmeChallenge::Http01),
            other => {
                cx.err(
                    at,
                    format!("expected \"tls-alpn-01\" or \"http-01\", got \"{other}\""),
                );
                None
            }
        },
    );
    let ca_file = o.opt(cx, "caFile", |cx, v, at| {
        walk::existing_file(cx, v, at, base_dir)
    });
    let renew_before = o.or(
        cx,
        "renewBefore",
        Acme::DEFAULT_RENEW_BEFORE,
        |cx, v, at| {
            let d = days_or_duration(cx, v, at)?;
            if d.is_zero() {
                cx.err(at, "must be greater than zero");
                return None;
            }
            Some(d)
        },
    );
    let retry = o.or(cx, "retry", AcmeRetry::default(), retry);
    Some(Acme {
        directory: directory?,
        email: email?,
        domains: domains?,
        challenge: challenge?,
        ca_file: ca_file?,
        renew_before: renew_before?,
        retry: retry?,
    })
}

fn directory(cx: &mut Cx, value: &Value, at: &str) -> Option<String> {
    let url = walk::nonempty_string(cx, value, at)?;
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") {
        cx.err(
            at,
            format!("must be an https:// URL (the account's requests would travel in clear), got \"{url}\""),
        );
        return None;
    }
    let host = lower
        .strip_prefix("https://")
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
    match host {
        Some(host) if !host.is_empty() && !url.contains(char::is_whitespace) => {
            Some(url.to_string())
        }
        _ => {
            cx.err(
                at,
                format!("expected an https:// URL like https://acme-v02.api.letsencrypt.org/directory, got \"{url}\""),
            );
            None
        }
    }
}

/// `domains`: exact DNS names, lower-cased, none repeated, at most [`Acme::MAX_DOMAINS`].
fn domains(cx: &mut Cx, value: &Value, at: &str) -> Option<Vec<String>> {
    let items = walk::nonempty_list(cx, value, at)?;
    if items.len() > Acme::MAX_DOMAINS {
        cx.err(
            at,
            format!(
                "at most {} names fit in one certificate, got {}",
                Acme::MAX_DOMAINS,
                items.len()
            ),
        );
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let parsed = each(cx, items, at, |cx, item, at, _| {
        let written = walk::nonempty_string(cx, item, at)?;
        if written.parse::<std::net::IpAddr>().is_ok() {
            cx.err(
                at,
                format!("\"{written}\" is an IP address: ACME certificates here name DNS hosts"),
            );
            return None;
        }
        match HostPattern::parse(&written) {
            Ok(HostPattern::Exact(name)) => {
                if !name.contains('.') {
                    cx.err(
                        at,
                        format!("\"{name}\" is not a fully qualified name (a CA only certifies names with a dot)"),
                    );
                    return None;
                }
                if seen.contains(&name) {
                    cx.err(at, format!("duplicate domain \"{name}\""));
                    return None;
                }
                seen.push(name.clone());
                Some(name)
            }
            Ok(_) => {
                cx.err(
                    at,
                    format!("\"{written}\": wildcard names can only be proven with dns-01, which weir does not do; list the exact names (http-01 and tls-alpn-01 prove one host each)"),
                );
                None
            }
            Err(reason) => {
                cx.err(at, format!("invalid domain \"{written}\": {reason}"));
                None
            }
        }
    });
    walk::all(parsed)
}

/// A duration, with `d` (days) also accepted as a leading part: `30d`, `1d12h`, `720h`.
fn days_or_duration(cx: &mut Cx, value: &Value, at: &str) -> Option<Duration> {
    if let Value::String(s) = value {
        if let Some((days, rest)) = s.split_once('d') {
            if !days.is_empty() && days.bytes().all(|b| b.is_ascii_digit()) {
                let days: Option<u64> = days.parse().ok();
                let rest = if rest.is_empty() {
                    Some(Duration::ZERO)
                } else {
                    match crate::duration::parse_duration(rest) {
                        Ok(d) => Some(d),
                        Err(reason) => {
                            cx.err(at, format!("invalid duration \"{s}\": {reason}"));
                            return None;
                        }
                    }
                };
                let total = days
                    .and_then(|d| d.checked_mul(86_400))
                    .map(Duration::from_secs)
                    .zip(rest)
                    .and_then(|(d, r)| d.checked_add(r));
                return match total {
                    // Kept well inside what timers and `SystemTime` arithmetic accept.
                    Some(d) if d <= MAX_RENEW_BEFORE => Some(d),
                    _ => {
                        cx.err(at, format!("invalid duration \"{s}\": at most 3650d"));
                        None
                    }
                };
            }
        }
    }
    let d = walk::duration(cx, value, at)?;
    if d > MAX_RENEW_BEFORE {
        cx.err(at, "at most 3650d");
        return None;
    }
    Some(d)
}

/// The longest accepted `renewBefore` (ten years).
const MAX_RENEW_BEFORE: Duration = Duration::from_secs(3650 * 86_400);
/// The longest accepted `retry.max` (one day).
const MAX_RETRY: Duration = Duration::from_secs(86_400);

fn retry(cx: &mut Cx, value: &Value, at: &str) -> Option<AcmeRetry> {
    let o = Obj::open(cx, value, at, &["initial", "max"])?;
    let bounded = |cx: &mut Cx, v: &Value, at: &str| {
        let d = walk::duration(cx, v, at)?;
        if d < AcmeRetry::MIN_INITIAL || d > MAX_RETRY {
            cx.err(at, "must be between 100ms and 24h");
            return None;
        }
        Some(d)
    };
    let initial = o.or(cx, "initial", AcmeRetry::DEFAULT_INITIAL, bounded);
    let max = o.opt(cx, "max", bounded);
    let (initial, max) = (initial?, max?);
    let max = max.unwrap_or(AcmeRetry::DEFAULT_MAX.max(initial));
    if max < initial {
        cx.err(
            &o.at("max"),
            format!("must be at least retry.initial ({initial:?})"),
        );
        return None;
    }
    Some(AcmeRetry { initial, max })
}

/// Once services are known: fills in default domains (the services' exact hosts), and checks
/// that http-01 has a plain listener to answer on, and that no domain is ordered by two
/// listeners (their challenges would collide). No `stateDir` is needed: weir always has a state
/// folder (`$STATE_DIRECTORY`, or next to the config file).
pub(super) fn finish(cx: &mut Cx, listeners: &mut [Listener], services: &[Service]) {
    let has_plain = listeners.iter().any(|l| l.tls.is_none());
    let mut owners: BTreeMap<String, usize> = BTreeMap::new();
    for (i, listener) in listeners.iter_mut().enumerate() {
        let Some(acme) = listener.tls.as_mut().and_then(|tls| tls.acme.as_mut()) else {
            continue;
        };
        let at = format!("listeners[{i}].tls.acme");
        if acme.challenge == AcmeChallenge::Http01 && !has_plain {
            cx.err(
                &format!("{at}.challenge"),
                "http-01 is answered on a plain (non-TLS) listener, and there is none: add one (the CA connects to port 80) or use tls-alpn-01",
            );
        }
        if acme.domains.is_empty() {
            for service in services {
                for host in &service.matcher.hosts {
                    if let HostPattern::Exact(name) = host {
                        if name.contains('.')
                            && name.parse::<std::net::IpAddr>().is_err()
                            && !acme.domains.contains(name)
                        {
                            acme.domains.push(name.clone());
                        }
                    }
                }
            }
            if acme.domains.is_empty() {
                cx.err(
                    &format!("{at}.domains"),
                    "no service has an exact host name to certify (wildcard hosts cannot be proven with http-01 or tls-alpn-01): list the names in domains",
                );
            } else if acme.domains.len() > Acme::MAX_DOMAINS {
                cx.err(
                    &format!("{at}.domains"),
                    format!(
                        "the services name {} exact hosts, more than the {} that fit in one certificate: list the names in domains",
                        acme.domains.len(),
                        Acme::MAX_DOMAINS
                    ),
                );
            }
        }
        for domain in &acme.domains {
            if let Some(first) = owners.get(domain) {
                cx.err(
                    &format!("{at}.domains"),
                    format!("\"{domain}\" is also ordered by listeners[{first}].tls.acme: one listener per domain"),
                );
            } else {
                owners.insert(domain.clone(), i);
            }
        }
    }
}
