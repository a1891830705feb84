//! Upstream addresses (`HOST:PORT`, checked but never resolved here) and `upstreamDns`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_yaml_ng::Value;

use super::walk::{self, Cx, Obj};
use crate::model::{AddressFamily, Upstream, UpstreamDns, UpstreamHost};

/// The shortest accepted `refreshRate`: shorter would hammer the resolver.
const MIN_REFRESH_RATE: Duration = Duration::from_millis(100);
/// The longest accepted `refreshRate`.
const MAX_REFRESH_RATE: Duration = Duration::from_secs(24 * 3600);
/// The largest accepted `maxAddresses`.
const MAX_ADDRESSES: u64 = 256;

/// An upstream `HOST:PORT`: a literal address (its one endpoint) or a host name (resolved later by
/// the control plane, so validation works offline).
pub(super) fn upstream(cx: &mut Cx, value: &Value, at: &str) -> Option<Upstream> {
    let written = walk::string(cx, value, at)?;
    match parse_upstream(&written) {
        Ok((host, port)) => {
            let addrs = match &host {
                UpstreamHost::Ip(ip) => vec![SocketAddr::new(*ip, port)],
                UpstreamHost::Name(_) => Vec::new(),
            };
            Some(Upstream {
                name: written,
                host,
                port,
                addrs,
            })
        }
        Err(reason) => {
            cx.err(
                at,
                format!("invalid upstream address \"{written}\": {reason}"),
            );
            None
        }
    }
}

fn parse_upstream(written: &str) -> Result<(UpstreamHost, u16), String> {
    if let Ok(addr) = written.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err("port must not be 0".to_string());
        }
        return Ok((UpstreamHost::Ip(addr.ip()), addr.port()));
    }
    let Some((host, port)) = written.rsplit_once(':') else {
        return Err("expected HOST:PORT".to_string());
    };
    if host.is_empty() {
        return Err("missing host (expected HOST:PORT)".to_string());
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("invalid port \"{port}\" (expected HOST:PORT)"))?;
    if port == 0 {
        return Err("port must not be 0".to_string());
    }
    if host.contains(':') {
        return Err("IPv6 addresses must be in brackets, like [::1]:8080".to_string());
    }
    if let Some(bad) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!("invalid character {bad:?} in host \"{host}\""));
    }
    if host.len() > 253 || host.split('.').any(|label| label.len() > 63) {
        return Err(format!(
            "host \"{host}\" is not a valid DNS name (too long)"
        ));
    }
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    if trimmed.is_empty() || trimmed.split('.').any(str::is_empty) {
        return Err(format!("host \"{host}\" has an empty label"));
    }
    // `1.2.3` or `010.1.1.1` would be read as an address by some resolvers: refuse digits-only names
    // that are not a valid IPv4 address, so what is resolved is what was meant.
    if host
        .split('.')
        .all(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return match host.parse::<IpAddr>() {
            Ok(ip) => Ok((UpstreamHost::Ip(ip), port)),
            Err(_) => Err(format!(
                "\"{host}\" is neither an IPv4 address nor a host name"
            )),
        };
    }
    Ok((UpstreamHost::Name(host.to_ascii_lowercase()), port))
}

/// `upstreamDns: {refreshRate, maxAddresses, family}`.
pub(super) fn upstream_dns(cx: &mut Cx, value: &Value, at: &str) -> Option<UpstreamDns> {
    let o = Obj::open(cx, value, at, &["refreshRate", "maxAddresses", "family"])?;
    let d = UpstreamDns::default();
    let refresh_rate = o.or(cx, "refreshRate", d.refresh_rate, |cx, v, at| {
        let rate = walk::duration(cx, v, at)?;
        if !(MIN_REFRESH_RATE..=MAX_REFRESH_RATE).contains(&rate) {
            cx.err(at, "must be between 100ms and 24h");
            return None;
        }
        Some(rate)
    });
    let max_addresses = o.or(cx, "maxAddresses", d.max_addresses, |cx, v, at| {
        let n = walk::uint(cx, v, at)?;
        if !(1..=MAX_ADDRESSES).contains(&n) {
            cx.err(
                at,
                format!("must be between 1 and {MAX_ADDRESSES}, got {n}"),
            );
            return None;
        }
        usize::try_from(n).ok()
    });
    let family = o.or(cx, "family", d.family, |cx, v, at| {
        let written = walk::string(cx, v, at)?;
        match written.as_str() {
            "auto" => Some(AddressFamily::Auto),
            "ipv4" => Some(AddressFamily::Ipv4),
            "ipv6" => Some(AddressFamily::Ipv6),
            "any" => Some(AddressFamily::Any),
            _ => {
                cx.err(
                    at,
                    format!("unknown family \"{written}\": expected auto, ipv4, ipv6 or any"),
                );
                None
            }
        }
    });
    Some(UpstreamDns {
        refresh_rate: refresh_rate?,
        max_addresses: max_addresses?,
        family: family?,
    })
}
