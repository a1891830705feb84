//! Traffic policies: request matches (`setHeaderRoute`, `setMirrorRoute`, Flagger `match`), string
//! matches with anchored regexes, header and cookie names, `sessionAffinity`, and the blue-green
//! `preview`.

use std::time::Duration;

use serde_yaml_ng::Value;

use super::walk::{self, all, each, Cx, Obj};
use crate::model::{
    AffinityKey, AnyOf, HeaderRoute, MirrorRoute, Preview, RequestMatch, SessionAffinity,
    StringMatch, Weight,
};

/// Largest compiled size of a match regex; a pattern that needs more is rejected.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The three kinds of string match.
const STRING_MATCH_KINDS: [&str; 3] = ["exact", "prefix", "regex"];
/// Keys of an Argo-style header route entry.
const ARGO_MATCH_KEYS: [&str; 4] = ["headerName", "headerValue", "cookieName", "cookieValue"];
/// Default cookie lifetime of `sessionAffinity`.
const DEFAULT_AFFINITY_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// `{exact|prefix|regex: VALUE}`: exactly one kind; a regex must compile, anchored, within
/// [`REGEX_SIZE_LIMIT`].
pub(crate) fn string_match(cx: &mut Cx, value: &Value, at: &str) -> Option<StringMatch> {
    let o = Obj::open(cx, value, at, &STRING_MATCH_KINDS)?;
    let present: Vec<&str> = STRING_MATCH_KINDS
        .into_iter()
        .filter(|k| o.has(k))
        .collect();
    let kind = match present.as_slice() {
        [kind] => *kind,
        [] => {
            cx.err(at, "needs exactly one of exact, prefix or regex");
            return None;
        }
        several => {
            cx.err(
                at,
                format!(
                    "needs exactly one of exact, prefix or regex, got {}",
                    several.join(" and ")
                ),
            );
            return None;
        }
    };
    let text = o.req(cx, kind, walk::text)?;
    match kind {
        "exact" => Some(StringMatch::Exact(text)),
        "prefix" => Some(StringMatch::Prefix(text)),
        _ => {
            check_regex(cx, &o.at(kind), &text)?;
            Some(StringMatch::Regex(text))
        }
    }
}

/// Compiles `pattern` as written (for an error that points into it) and anchored as the data
/// plane uses it (`^(?:RE)$`), both within [`REGEX_SIZE_LIMIT`].
fn check_regex(cx: &mut Cx, at: &str, pattern: &str) -> Option<()> {
    let build = |p: &str| {
        regex::RegexBuilder::new(p)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
    };
    let result = build(pattern).and_then(|_| build(&format!("^(?:{pattern})$")));
    match result {
        Ok(_) => Some(()),
        Err(e) => {
            let reason = match &e {
                regex::Error::CompiledTooBig(limit) => {
                    format!("the compiled pattern is larger than the limit of {limit} bytes")
                }
                other => one_line(&other.to_string()),
            };
            cx.err(at, format!("invalid regex \"{pattern}\": {reason}"));
            None
        }
    }
}

/// The `regex` crate's multi-line syntax error as one line (its last line says what is wrong).
fn one_line(message: &str) -> String {
    let last = message
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .unwrap_or(message);
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

/// Whether `name` is an HTTP token (RFC 9110 `tchar`s; also RFC 6265 cookie names).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// An HTTP header name, lower-cased.
pub(crate) fn header_name(cx: &mut Cx, value: &Value, at: &str) -> Option<String> {
    let name = walk::string(cx, value, at)?;
    header_name_text(cx, &name, at)
}

fn header_name_text(cx: &mut Cx, name: &str, at: &str) -> Option<String> {
    if !is_token(name) {
        cx.err(
            at,
            format!("invalid header name \"{name}\": use letters, digits and !#$%&'*+-.^_`|~"),
        );
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// A cookie name (an RFC 6265 token), as written.
pub(crate) fn cookie_name(cx: &mut Cx, value: &Value, at: &str) -> Option<String> {
    let name = walk::string(cx, value, at)?;
    if !is_token(&name) {
        cx.err(
            at,
            format!("invalid cookie name \"{name}\": use letters, digits and !#$%&'*+-.^_`|~"),
        );
        return None;
    }
    Some(name)
}

/// `headers: {NAME: {exact|prefix|regex}}`: one condition per header.
fn header_map(cx: &mut Cx, value: &Value, at: &str) -> Option<Vec<RequestMatch>> {
    let Value::Mapping(map) = value else {
        cx.err(
            at,
            "expected a mapping of header names to {exact|prefix|regex: VALUE}",
        );
        return None;
    };
    if map.is_empty() {
        cx.err(at, "must not be empty");
        return None;
    }
    let mut ok = true;
    let mut matches = Vec::new();
    for (key, value) in map {
        let Some(name) = key.as_str() else {
            cx.err(at, "header names must be strings");
            ok = false;
            continue;
        };
        let path = walk::field_path(at, name);
        let name = header_name_text(cx, name, &path);
        let value = string_match(cx, value, &path);
        match (name, value) {
            (Some(name), Some(value)) => matches.push(RequestMatch::Header { name, value }),
            _ => ok = false,
        }
    }
    ok.then_some(matches)
}

/// A header-route `match` list (`setHeaderRoute.match`, Flagger `analysis.match`), in either
/// form: Argo entries (`headerName`/`headerValue`, `cookieName`/`cookieValue`) are ANDed into one
/// entry; Flagger entries (`headers: {...}`) are one entry each. An empty list is an empty
/// [`AnyOf`].
pub(crate) fn route_match(cx: &mut Cx, value: &Value, at: &str) -> Option<AnyOf> {
    let items = walk::list(cx, value, at)?;
    let flagger = |item: &Value| item.as_mapping().is_some_and(|m| m.contains_key("headers"));
    let flagger_count = items.iter().filter(|item| flagger(item)).count();
    if flagger_count > 0 && flagger_count < items.len() {
        cx.err(
            at,
            "mixes Argo entries (headerName, cookieName) and Flagger entries (headers): use one form per list",
        );
        return None;
    }
    if flagger_count > 0 {
        let parsed = each(cx, items, at, |cx, item, at, _| {
            let o = Obj::open(cx, item, at, &["headers"])?;
            o.req(cx, "headers", header_map)
        });
        return all(parsed);
    }
    let parsed = each(cx, items, at, |cx, item, at, _| argo_entry(cx, item, at));
    let conditions = all(parsed)?;
    Some(if conditions.is_empty() {
        Vec::new()
    } else {
        vec![conditions]
    })
}

/// One Argo `setHeaderRoute` entry: `headerName` + `headerValue`, or `cookieName` + `cookieValue`.
fn argo_entry(cx: &mut Cx, value: &Value, at: &str) -> Option<RequestMatch> {
    let o = Obj::open(cx, value, at, &ARGO_MATCH_KEYS)?;
    let (name_key, value_key, others) = match (o.has("headerName"), o.has("cookieName")) {
        (true, true) => {
            cx.err(at, "use either headerName or cookieName, not both");
            return None;
        }
        (true, false) => ("headerName", "headerValue", ["cookieName", "cookieValue"]),
        (false, true) => ("cookieName", "cookieValue", ["headerName", "headerValue"]),
        (false, false) => {
            cx.err(
                at,
                "needs headerName with headerValue, or cookieName with cookieValue",
            );
            return None;
        }
    };
    for other in others.iter().filter(|k| o.has(k)) {
        cx.err(&o.at(other), format!("not allowed with {name_key}"));
    }
    let name = if name_key == "headerName" {
        o.req(cx, name_key, header_name)
    } else {
        o.req(cx, name_key, cookie_name)
    };
    let value = o.req(cx, value_key, string_match);
    if others.iter().any(|k| o.has(k)) {
        return None;
    }
    let (name, value) = (name?, value?);
    Some(if name_key == "headerName" {
        RequestMatch::Header { name, value }
    } else {
        RequestMatch::Cookie { name, value }
    })
}

/// A `setMirrorRoute` `match` list: each entry's `method`, `path` and `headers` are one AND-entry;
/// entries are ORed. An empty list is an empty [`AnyOf`].
fn mirror_match(cx: &mut Cx, value: &Value, at: &str) -> Option<AnyOf> {
    let items = walk::list(cx, value, at)?;
    let parsed = each(cx, items, at, |cx, item, at, _| {
        let o = Obj::open(cx, item, at, &["method", "path", "headers"])?;
        if !["method", "path", "headers"]
            .iter()
            .any(|k| o.get(k).is_some())
        {
            cx.err(at, "needs at least one of method, path or headers");
            return None;
        }
        let method = o.opt(cx, "method", string_match);
        let path = o.opt(cx, "path", string_match);
        let headers = o.or(cx, "headers", Vec::new(), header_map);
        let mut conditions = Vec::new();
        conditions.extend(method?.map(RequestMatch::Method));
        conditions.extend(path?.map(RequestMatch::Path));
        conditions.extend(headers?);
        Some(conditions)
    });
    all(parsed)
}

/// `setHeaderRoute: {name, match}`; no `match` (or an empty one) removes the route.
pub(crate) fn header_route(cx: &mut Cx, value: &Value, at: &str) -> Option<HeaderRoute> {
    let o = Obj::open(cx, value, at, &["name", "match"])?;
    let name = o.req(cx, "name", walk::nonempty_string);
    let any_of = o.or(cx, "match", Vec::new(), route_match);
    Some(HeaderRoute {
        name: name?,
        any_of: any_of?,
    })
}

/// `setMirrorRoute: {name, percentage, match}`; no `match` (or an empty one) removes the route.
pub(crate) fn mirror_route(cx: &mut Cx, value: &Value, at: &str) -> Option<MirrorRoute> {
    let o = Obj::open(cx, value, at, &["name", "percentage", "match"])?;
    let name = o.req(cx, "name", walk::nonempty_string);
    let any_of = o.or(cx, "match", Vec::new(), mirror_match);
    let percentage = o.or(cx, "percentage", Weight::FULL, one_to_hundred);
    if o.get("percentage").is_some() && any_of.as_ref().is_some_and(Vec::is_empty) {
        cx.err(
            &o.at("percentage"),
            "only allowed with match (without match the step removes the route)",
        );
        return None;
    }
    Some(MirrorRoute {
        name: name?,
        percentage: percentage?,
        any_of: any_of?,
    })
}

/// A percentage from 1 to 100 with at most two decimals (`percentage`, `mirrorWeight`).
pub(crate) fn one_to_hundred(cx: &mut Cx, value: &Value, at: &str) -> Option<Weight> {
    if let Value::Number(n) = value {
        if !n.as_f64().is_some_and(|p| (1.0..=100.0).contains(&p)) {
            cx.err(at, format!("must be between 1 and 100, got {n}"));
            return None;
        }
    }
    walk::weight(cx, value, at)
}

/// `services[].sessionAffinity`: `cookieName` or `header`, and `maxAge`.
pub(crate) fn session_affinity(cx: &mut Cx, value: &Value, at: &str) -> Option<SessionAffinity> {
    let o = Obj::open(cx, value, at, &["cookieName", "header", "maxAge"])?;
    let key = match (o.has("cookieName"), o.has("header")) {
        (true, true) => {
            cx.err(at, "use either cookieName or header, not both");
            None
        }
        (false, false) => {
            cx.err(at, "needs cookieName or header");
            None
        }
        (true, false) => o
            .req(cx, "cookieName", cookie_name)
            .map(AffinityKey::Cookie),
        (false, true) => o.req(cx, "header", header_name).map(AffinityKey::Header),
    };
    let max_age = o.or(
        cx,
        "maxAge",
        DEFAULT_AFFINITY_MAX_AGE,
        walk::positive_duration,
    );
    Some(SessionAffinity {
        key: key?,
        max_age: max_age?,
    })
}

/// `strategy.blueGreen.preview`: `hosts`, `listener` (one of `listeners`, when known) and
/// `headers`; at least one of them.
pub(crate) fn preview(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    listeners: Option<&[String]>,
) -> Option<Preview> {
    let o = Obj::open(cx, value, at, &["hosts", "listener", "headers"])?;
    if !["hosts", "listener", "headers"]
        .iter()
        .any(|k| o.get(k).is_some())
    {
        cx.err(at, "needs at least one of hosts, listener or headers");
        return None;
    }
    let hosts = o.or(cx, "hosts", Vec::new(), super::host_patterns);
    let listener = o.opt(cx, "listener", |cx, v, at| {
        let name = walk::nonempty_string(cx, v, at)?;
        if let Some(names) = listeners {
            if !names.contains(&name) {
                cx.err(
                    at,
                    format!("unknown listener \"{name}\", defined: {}", names.join(", ")),
                );
                return None;
            }
        }
        Some(name)
    });
    let headers = o.or(cx, "headers", Vec::new(), |cx, v, at| {
        let items = walk::nonempty_list(cx, v, at)?;
        all(each(cx, items, at, |cx, item, at, _| {
            argo_entry(cx, item, at)
        }))
    });
    Some(Preview {
        hosts: hosts?,
        listener: listener?,
        headers: headers?,
    })
}
