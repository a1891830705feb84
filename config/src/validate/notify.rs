//! `notifications[]` ([`notifiers`]) and `services[].notifications` ([`service_notifications`],
//! whose names are checked against the notifiers by [`finish`] once both are read).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::policy::header_name;
use super::walk::{self, all, each, Cx, Obj};
use crate::model::{Notifier, NotifierKind, NotifierTarget, NotifyOn};

/// `notifications`: a list of notifiers with unique names.
pub(super) fn notifiers(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    base_dir: &Path,
) -> Option<Vec<Notifier>> {
    let items = walk::list(cx, value, at)?;
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let parsed = each(cx, items, at, |cx, item, at, i| {
        let notifier = notifier(cx, item, at, base_dir)?;
        if let Some(first) = names.get(&notifier.name) {
            cx.err(
                &walk::field_path(at, "name"),
                format!(
                    "duplicate notifier name \"{}\" (also notifications[{first}])",
                    notifier.name
                ),
            );
            return None;
        }
        names.insert(notifier.name.clone(), i);
        Some(notifier)
    });
    all(parsed)
}

fn notifier(cx: &mut Cx, value: &Value, at: &str, base_dir: &Path) -> Option<Notifier> {
    let o = Obj::open(
        cx,
        value,
        at,
        &[
            "name",
            "kind",
            "url",
            "urlFile",
            "on",
            "headers",
            "channel",
            "username",
            "timeout",
            "retries",
            "retryBackoff",
            "queueSize",
        ],
    )?;
    let name = o.req(cx, "name", notifier_name);
    let kind = o.req(cx, "kind", kind);
    let target = match (o.get("url"), o.get("urlFile")) {
        (Some(_), Some(_)) => {
            cx.err(
                &o.at("urlFile"),
                "give either url or urlFile, not both (urlFile keeps the secret URL out of the config)",
            );
            None
        }
        (Some(v), None) => url(cx, v, &o.at("url")).map(NotifierTarget::Url),
        (None, Some(v)) => {
            walk::path_value(cx, v, &o.at("urlFile"), base_dir).map(NotifierTarget::File)
        }
        (None, None) => {
            cx.err(
                o.path(),
                "missing url or urlFile: where the messages are posted",
            );
            None
        }
    };
    let on = o.or(cx, "on", NotifyOn::DEFAULT.to_vec(), on);
    let only_for = |cx: &mut Cx, key: &str, kinds: &[NotifierKind]| {
        if let (true, Some(kind)) = (o.has(key), kind) {
            if !kinds.contains(&kind) {
                let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                cx.err(
                    &o.at(key),
                    format!(
                        "only for kind {} (this notifier is {})",
                        names.join(" or "),
                        kind.as_str()
                    ),
                );
            }
        }
    };
    only_for(cx, "headers", &[NotifierKind::Generic]);
    only_for(cx, "channel", &[NotifierKind::Slack]);
    only_for(
        cx,
        "username",
        &[NotifierKind::Slack, NotifierKind::Discord],
    );
    let headers = o.or(cx, "headers", Vec::new(), headers);
    let channel = o.opt(cx, "channel", single_line);
    let username = o.opt(cx, "username", single_line);
    let timeout = o.or(cx, "timeout", Notifier::DEFAULT_TIMEOUT, |cx, v, at| {
        at_most(cx, v, at, Notifier::MAX_TIMEOUT)
    });
    let retries = o.or(cx, "retries", Notifier::DEFAULT_RETRIES, |cx, v, at| {
        let n = walk::uint32(cx, v, at)?;
        if n > Notifier::MAX_RETRIES {
            cx.err(
                at,
                format!("must be at most {}, got {n}", Notifier::MAX_RETRIES),
            );
            return None;
        }
        Some(n)
    });
    let retry_backoff = o.or(
        cx,
        "retryBackoff",
        Notifier::DEFAULT_RETRY_BACKOFF,
        |cx, v, at| at_most(cx, v, at, Notifier::MAX_BACKOFF),
    );
    let queue_size = o.or(
        cx,
        "queueSize",
        Notifier::DEFAULT_QUEUE_SIZE,
        |cx, v, at| {
            let n = walk::uint(cx, v, at)?;
            match usize::try_from(n) {
                Ok(n) if (1..=Notifier::MAX_QUEUE_SIZE).contains(&n) => Some(n),
                _ => {
                    cx.err(
                        at,
                        format!(
                            "must be between 1 and {}, got {n}",
                            Notifier::MAX_QUEUE_SIZE
                        ),
                    );
                    None
                }
            }
        },
    );
    Some(Notifier {
        name: name?,
        kind: kind?,
        target: target?,
        on: on?,
        headers: headers?,
        channel: channel?,
        username: username?,
        timeout: timeout?,
        retries: retries?,
        retry_backoff: retry_backoff?,
        queue_size: queue_size?,
    })
}

/// A notifier name: `[A-Za-z0-9._-]+` (it is a metric label).
fn notifier_name(cx: &mut Cx, value: &Value, at: &str) -> Option<String> {
    let name = walk::nonempty_string(cx, value, at)?;
    if name.len() > 64 {
        cx.err(at, format!("at most 64 characters, got {}", name.len()));
        return None;
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        cx.err(
            at,
            format!(
                "invalid character {bad:?} in \"{name}\": use letters, digits, '.', '_' and '-'"
            ),
        );
        return None;
    }
    Some(name)
}

fn kind(cx: &mut Cx, value: &Value, at: &str) -> Option<NotifierKind> {
    let written = walk::string(cx, value, at)?;
    match NotifierKind::ALL
        .into_iter()
        .find(|k| k.as_str() == written)
    {
        Some(kind) => Some(kind),
        None => {
            let names: Vec<&str> = NotifierKind::ALL.iter().map(|k| k.as_str()).collect();
            cx.err(
                at,
                format!(
                    "unknown kind \"{written}\", expected one of: {}",
                    names.join(", ")
                ),
            );
            None
        }
    }
}

/// An `http://` or `https://` URL with a host. The URL itself is never repeated in a problem:
/// webhook URLs are secrets.
fn url(cx: &mut Cx, value: &Value, at: &str) -> Option<String> {
    let url = walk::nonempty_string(cx, value, at)?;
    let url = url.trim().to_string();
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let Some(rest) = rest else {
        cx.err(at, "expected an http:// or https:// URL");
        return None;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        cx.err(at, "the URL has no host");
        return None;
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        cx.err(at, "the URL contains spaces or control characters");
        return None;
    }
    Some(url)
}

/// `on`: a non-empty list of event names, duplicates ignored.
fn on(cx: &mut Cx, value: &Value, at: &str) -> Option<Vec<NotifyOn>> {
    let items = walk::nonempty_list(cx, value, at)?;
    let parsed = each(cx, items, at, |cx, item, at, _| {
        let written = walk::string(cx, item, at)?;
        match NotifyOn::parse(&written) {
            Some(on) => Some(on),
            None => {
                let names: Vec<&str> = NotifyOn::ALL.iter().map(|o| o.as_str()).collect();
                cx.err(
                    at,
                    format!(
                        "unknown event \"{written}\", expected one of: {}",
                        names.join(", ")
                    ),
                );
                None
            }
        }
    });
    let mut on = all(parsed)?;
    on.sort();
    on.dedup();
    Some(on)
}

/// `headers: {Name: value}`: valid names, values without control characters.
fn headers(cx: &mut Cx, value: &Value, at: &str) -> Option<Vec<(String, String)>> {
    let Value::Mapping(map) = value else {
        cx.err(at, "expected a mapping of header names to values");
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (key, value) in map {
        let Some(written) = key.as_str() else {
            cx.err(at, "header names must be strings");
            ok = false;
            continue;
        };
        let item_at = walk::field_path(at, written);
        let name = header_name(cx, key, &item_at);
        let text = walk::text(cx, value, &item_at);
        match (name, text) {
            (Some(_), Some(text)) if text.chars().any(|c| c.is_control() && c != '\t') => {
                cx.err(
                    &item_at,
                    "header values must not contain control characters",
                );
                ok = false;
            }
            (Some(_), Some(text)) => out.push((written.to_string(), text)),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

/// A non-empty string without control characters.
fn single_line(cx: &mut Cx, value: &Value, at: &str) -> Option<String> {
    let text = walk::nonempty_string(cx, value, at)?;
    if text.chars().any(char::is_control) {
        cx.err(at, "must not contain control characters");
        return None;
    }
    Some(text)
}

/// A duration greater than zero and at most `max`.
fn at_most(cx: &mut Cx, value: &Value, at: &str, max: Duration) -> Option<Duration> {
    let d = walk::positive_duration(cx, value, at)?;
    if d > max {
        cx.err(
            at,
            format!(
                "must be at most {}s, got {}s",
                max.as_secs(),
                d.as_secs_f64()
            ),
        );
        return None;
    }
    Some(d)
}

/// `services[].notifications`: notifier names, each once (checked against the notifiers by
/// [`finish`]).
pub(super) fn service_notifications(cx: &mut Cx, value: &Value, at: &str) -> Option<Vec<String>> {
    let items = walk::list(cx, value, at)?;
    let mut seen: Vec<String> = Vec::new();
    let parsed = each(cx, items, at, |cx, item, at, _| {
        let name = walk::nonempty_string(cx, item, at)?;
        if seen.contains(&name) {
            cx.err(at, format!("\"{name}\" is listed twice"));
            return None;
        }
        seen.push(name.clone());
        Some(name)
    });
    all(parsed)
}

/// Reports every `services[].notifications` name that no notifier has. Reads the services as
/// written, so the names are checked even when a service has other problems. `notifiers` is
/// `None` when `notifications` itself was invalid (its problems are reported already).
pub(super) fn finish(cx: &mut Cx, notifiers: Option<&[Notifier]>, services: Option<&Value>) {
    let (Some(notifiers), Some(Value::Sequence(services))) = (notifiers, services) else {
        return;
    };
    for (i, service) in services.iter().enumerate() {
        let Some(Value::Sequence(names)) = service.get("notifications") else {
            continue;
        };
        for (j, name) in names.iter().enumerate() {
            let Some(name) = name.as_str() else {
                continue;
            };
            if !notifiers.iter().any(|n| n.name == name) {
                let known: Vec<&str> = notifiers.iter().map(|n| n.name.as_str()).collect();
                let hint = if known.is_empty() {
                    "no notifiers are defined (top-level notifications)".to_string()
                } else {
                    format!("defined: {}", known.join(", "))
                };
                cx.err(
                    &format!("services[{i}].notifications[{j}]"),
                    format!("unknown notifier \"{name}\": {hint}"),
                );
            }
        }
    }
}
