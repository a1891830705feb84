//! `listeners[].redirect`, `services[].rewrite` and `services[].headers` (issue #8).

use serde_yaml_ng::Value;

use super::walk::{self, each, Cx, Obj};
use crate::model::{
    HeaderOps, HeaderRules, HeaderTemplate, Redirect, RedirectScheme, Rewrite, TemplatePart,
};

/// Headers a rule may not touch: hop-by-hop ones (RFC 9110 §7.6.1), the message's framing and
/// host, and the request id weir keeps consistent between upstream and client.
const RESERVED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "host",
    "content-length",
    "x-request-id",
];

/// The longest header value a rule may write (before placeholders are filled in).
const MAX_VALUE_LEN: usize = 4096;

/// `listeners[].redirect`; `tls` tells the listener's own scheme and `port` its port, so a
/// redirect to itself (a loop) is refused.
pub(super) fn redirect(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    tls: bool,
    listener_port: Option<u16>,
) -> Option<Redirect> {
    let o = Obj::open(cx, value, at, &["scheme", "host", "port", "code"])?;
    let scheme = o.opt(cx, "scheme", |cx, v, at| {
        let text = walk::string(cx, v, at)?;
        match text.to_ascii_lowercase().as_str() {
            "http" => Some(RedirectScheme::Http),
            "https" => Some(RedirectScheme::Https),
            _ => {
                cx.err(at, format!("must be http or https, got \"{text}\""));
                None
            }
        }
    });
    let host = o.opt(cx, "host", |cx, v, at| {
        let text = walk::nonempty_string(cx, v, at)?.to_ascii_lowercase();
        if let Err(reason) = check_host_name(&text) {
            cx.err(at, format!("\"{text}\" is not a host name: {reason}"));
            return None;
        }
        Some(text)
    });
    let port = o.opt(cx, "port", |cx, v, at| {
        let n = walk::uint(cx, v, at)?;
        match u16::try_from(n) {
            Ok(port) if port > 0 => Some(port),
            _ => {
                cx.err(at, format!("must be a port between 1 and 65535, got {n}"));
                None
            }
        }
    });
    let code = o.or(cx, "code", Redirect::DEFAULT_CODE, |cx, v, at| {
        let n = walk::uint(cx, v, at)?;
        match n {
            301 | 302 | 307 | 308 => Some(n as u16),
            _ => {
                cx.err(at, format!("must be 301, 302, 307 or 308, got {n}"));
                None
            }
        }
    });
    let redirect = Redirect {
        scheme: scheme?,
        host: host?,
        port: port?,
        code: code?,
    };
    let own = if tls {
        RedirectScheme::Https
    } else {
        RedirectScheme::Http
    };
    let same_scheme = redirect.scheme.is_none_or(|s| s == own);
    let same_port = match (redirect.port, listener_port) {
        (None, _) => same_scheme,
        (Some(to), Some(own_port)) => same_scheme && to == own_port,
        (Some(_), None) => false,
    };
    if redirect.host.is_none() && same_scheme && same_port {
        cx.err(
            at,
            "redirects every request to itself (a loop): set a different scheme, host or port",
        );
        return None;
    }
    Some(redirect)
}

/// A DNS name or an IP address (IPv6 in brackets), without a port.
fn check_host_name(host: &str) -> Result<(), String> {
    if let Some(inside) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inside
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("\"{inside}\" is not an IPv6 address"));
    }
    if host.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    if let Some(bad) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!("'{bad}' is not allowed (set the port with `port`)"));
    }
    if host.split('.').any(str::is_empty) {
        return Err("an empty label".into());
    }
    Ok(())
}

/// `services[].rewrite`.
pub(super) fn rewrite(cx: &mut Cx, value: &Value, at: &str) -> Option<Rewrite> {
    let o = Obj::open(cx, value, at, &["pathPrefix", "host"])?;
    let path_prefix = o.opt(cx, "pathPrefix", |cx, v, at| {
        let prefix = walk::string(cx, v, at)?;
        if !prefix.starts_with('/') {
            cx.err(at, format!("must start with \"/\", got \"{prefix}\""));
            return None;
        }
        if prefix.contains("//") {
            cx.err(at, format!("must not contain \"//\", got \"{prefix}\""));
            return None;
        }
        // What `http::uri::PathAndQuery` accepts in a path, without `?` and `#`.
        if let Some(bad) = prefix
            .bytes()
            .find(|b| !(b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(b)))
        {
            cx.err(
                at,
                format!(
                    "{:?} is not allowed in a path (percent-encode it)",
                    char::from(bad)
                ),
            );
            return None;
        }
        Some(prefix)
    });
    let host = o.opt(cx, "host", |cx, v, at| {
        let text = walk::nonempty_string(cx, v, at)?.to_ascii_lowercase();
        let (name, port) = match text.rsplit_once(':') {
            Some((name, port)) if !text.ends_with(']') => (name, Some(port)),
            _ => (text.as_str(), None),
        };
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
        match check_host_name(name) {
            Ok(()) if port_ok => Some(text),
            Ok(()) => {
                cx.err(at, format!("\"{text}\" has an invalid port"));
                None
            }
            Err(reason) => {
                cx.err(at, format!("\"{text}\" is not a host name: {reason}"));
                None
            }
        }
    });
    let rewrite = Rewrite {
        path_prefix: path_prefix?,
        host: host?,
    };
    if rewrite.path_prefix.is_none() && rewrite.host.is_none() {
        cx.err(at, "rewrites nothing: set pathPrefix and/or host");
        return None;
    }
    Some(rewrite)
}

/// `services[].headers`; `versions` are the service's version labels, which `{{version}}` puts in
/// a header value.
pub(super) fn headers(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    versions: &[String],
) -> Option<HeaderRules> {
    let o = Obj::open(cx, value, at, &["request", "response"])?;
    let ops = |cx: &mut Cx, v: &Value, at: &str| header_ops(cx, v, at, versions);
    let request = o.or(cx, "request", HeaderOps::default(), ops);
    let response = o.or(cx, "response", HeaderOps::default(), ops);
    Some(HeaderRules {
        request: request?,
        response: response?,
    })
}

fn header_ops(cx: &mut Cx, value: &Value, at: &str, versions: &[String]) -> Option<HeaderOps> {
    let o = Obj::open(cx, value, at, &["set", "add", "remove"])?;
    let mut named: Vec<String> = Vec::new();
    let pairs = |cx: &mut Cx, v: &Value, at: &str, named: &mut Vec<String>| {
        let Value::Mapping(map) = v else {
            cx.err(at, "expected a mapping of header names to values");
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (key, value) in map {
            let Some(key) = key.as_str() else {
                cx.err(at, "header names must be strings");
                ok = false;
                continue;
            };
            let here = walk::field_path(at, key);
            let name = header_name(cx, key, &here);
            let template = match value {
                Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                    let text = match value {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => String::new(),
                    };
                    template(cx, &text, &here, versions)
                }
                _ => {
                    cx.err(&here, "expected a header value (a string)");
                    None
                }
            };
            match (name, template) {
                (Some(name), Some(template)) => {
                    if named.contains(&name) {
                        cx.err(&here, format!("header \"{name}\" has more than one rule"));
                        ok = false;
                    } else {
                        named.push(name.clone());
                        out.push((name, template));
                    }
                }
                _ => ok = false,
            }
        }
        ok.then_some(out)
    };
    let remove = o.or(cx, "remove", Vec::new(), |cx, v, at| {
        let items = walk::list(cx, v, at)?;
        let parsed = each(cx, items, at, |cx, item, at, _| {
            let text = walk::nonempty_string(cx, item, at)?;
            header_name(cx, &text, at)
        });
        walk::all(parsed)
    });
    if let Some(remove) = &remove {
        named.extend(remove.iter().cloned());
    }
    let set = o.or(cx, "set", Vec::new(), |cx, v, at| {
        pairs(cx, v, at, &mut named)
    });
    let add = o.or(cx, "add", Vec::new(), |cx, v, at| {
        pairs(cx, v, at, &mut named)
    });
    Some(HeaderOps {
        set: set?,
        add: add?,
        remove: remove?,
    })
}

/// A header name a rule may use: a token, lower-cased, not [`RESERVED`].
fn header_name(cx: &mut Cx, written: &str, at: &str) -> Option<String> {
    let name = written.to_ascii_lowercase();
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        cx.err(at, format!("\"{written}\" is not a header name"));
        return None;
    }
    if RESERVED.contains(&name.as_str()) {
        cx.err(
            at,
            format!("\"{name}\" cannot be changed by a rule: weir manages it (hop-by-hop, framing, host or request id)"),
        );
        return None;
    }
    Some(name)
}

/// A header value with `{{version}}`, `{{service}}` and `{{request.id}}` placeholders.
fn template(cx: &mut Cx, text: &str, at: &str, versions: &[String]) -> Option<HeaderTemplate> {
    if text.len() > MAX_VALUE_LEN {
        cx.err(at, format!("longer than {MAX_VALUE_LEN} bytes"));
        return None;
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(matches!(c, ' ' | '\t') || c.is_ascii_graphic()))
    {
        cx.err(
            at,
            format!("{bad:?} is not allowed in a header value (visible ASCII, spaces and tabs)"),
        );
        return None;
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(TemplatePart::Literal(rest[..open].to_string()));
        }
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            cx.err(at, "an unclosed \"{{\"");
            return None;
        };
        let part = match after[..close].trim() {
            "version" => TemplatePart::Version,
            "service" => TemplatePart::Service,
            "request.id" => TemplatePart::RequestId,
            other => {
                cx.err(
                    at,
                    format!(
                        "unknown placeholder \"{{{{{other}}}}}\" (use {{{{version}}}}, {{{{service}}}} or {{{{request.id}}}})"
                    ),
                );
                return None;
            }
        };
        parts.push(part);
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest.to_string()));
    }
    if parts.contains(&TemplatePart::Version) {
        if let Some(bad) = versions
            .iter()
            .find(|v| !v.chars().all(|c| c == ' ' || c.is_ascii_graphic()))
        {
            cx.err(
                at,
                format!("{{{{version}}}} would write version \"{bad}\", which is not a valid header value"),
            );
            return None;
        }
    }
    Some(HeaderTemplate(parts))
}
