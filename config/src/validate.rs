//! Walks the YAML document, checks everything, and builds the [`Model`]. Every problem is collected with its
//! field path; nothing stops at the first error.
//!
//! - [`walk`]: the error collector, the mapping view and the scalar readers.
//! - [`strategy`]: `services[].strategy` (steps, background analysis, Flagger-style progression and
//!   iterations, blue-green).
//! - [`policy`]: traffic policies (header, cookie and mirror matches, session affinity, preview).
//! - [`template`]: `analysisTemplates[]` and template references.

mod acme;
mod compression;
mod datadog;
mod dns;
mod edge;
mod health;
mod ingress;
mod notify;
mod policy;
mod protocol;
mod ratelimit;
mod strategy;
mod template;
mod walk;
mod webhook;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use serde_yaml_ng::Value;

use crate::error::ValidationError;
use crate::model::{
    Admin, Canary, CertificateFiles, HostPattern, Listener, Match, Model, Service, Tls,
    TrustedProxies, Upstream, UpstreamOptions, UpstreamProtocol, Version,
};
use template::Known;
use walk::{all, each, Cx, Obj};

/// The admin address used when `admin.address` is not given.
const DEFAULT_ADMIN_ADDRESS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3100);

/// Validates a parsed YAML document; relative paths resolve against `base_dir`.
pub(crate) fn validate(root: &Value, base_dir: &Path) -> Result<Model, Vec<ValidationError>> {
    let mut cx = Cx::default();
    let model = model(&mut cx, root, base_dir);
    match model {
        Some(model) if cx.errors.is_empty() => Ok(model),
        _ => {
            if cx.errors.is_empty() {
                cx.err(
                    "(config)",
                    "internal error: the configuration is incomplete but no problem was recorded",
                );
            }
            Err(cx.errors)
        }
    }
}

fn model(cx: &mut Cx, root: &Value, base_dir: &Path) -> Option<Model> {
    let Some(o) = Obj::open(
        cx,
        root,
        "",
        &[
            "listeners",
            "admin",
            "stateDir",
            "services",
            "analysisTemplates",
            "limits",
            "upstreamDns",
            "notifications",
        ],
    ) else {
        // `Obj::open` recorded "expected a mapping" at an empty path; give it a readable location.
        if let Some(last) = cx.errors.last_mut() {
            last.at = "(top level)".to_string();
        }
        return None;
    };

    // Templates are walked first so references can be checked, but their problems are reported last, in
    // file order.
    let mut known = Known::new();
    let templates = o.or(cx, "analysisTemplates", Vec::new(), |cx, v, at| {
        template::templates(cx, v, at, &mut known, base_dir)
    });
    let template_errors = std::mem::take(&mut cx.errors);

    let mut listeners = o.req(cx, "listeners", |cx, v, at| listeners(cx, v, at, base_dir));
    let default_admin = Admin::with_address(DEFAULT_ADMIN_ADDRESS);
    let admin = o.or(cx, "admin", default_admin, |cx, v, at| {
        admin(cx, v, at, base_dir)
    });
    if let (Some(listeners), Some(admin)) = (&listeners, &admin) {
        for (i, listener) in listeners.iter().enumerate() {
            if listener.address == admin.address && admin.address.port() != 0 {
                cx.err(
                    "admin.address",
                    format!(
                        "{} is also the address of listener \"{}\" (listeners[{i}])",
                        admin.address, listener.name
                    ),
                );
            }
        }
    }
    let limits = o.or(cx, "limits", Default::default(), edge::global_limits);
    let upstream_dns = o.or(cx, "upstreamDns", Default::default(), dns::upstream_dns);
    let notifications = o.or(cx, "notifications", Vec::new(), |cx, v, at| {
        notify::notifiers(cx, v, at, base_dir)
    });
    let state_dir = o.opt(cx, "stateDir", |cx, v, at| {
        walk::path_value(cx, v, at, base_dir)
    });
    let listener_names: Option<Vec<String>> = listeners
        .as_ref()
        .map(|listeners| listeners.iter().map(|l| l.name.clone()).collect());
    let services = o.req(cx, "services", |cx, v, at| {
        services(cx, v, at, &known, listener_names.as_deref(), base_dir)
    });
    if let (Some(listeners), Some(services)) = (&mut listeners, &services) {
        acme::finish(cx, listeners, services);
    }
    notify::finish(cx, notifications.as_deref(), o.get("services"));
    cx.errors.extend(template_errors);

    Some(Model {
        listeners: listeners?,
        admin: admin?,
        state_dir: state_dir?,
        services: services?,
        analysis_templates: templates?,
        limits: limits?,
        upstream_dns: upstream_dns?,
        notifications: notifications?,
    })
}

// ---------------------------------------------------------------------------------------------
// Listeners and admin.
// ---------------------------------------------------------------------------------------------

fn listeners(cx: &mut Cx, value: &Value, at: &str, base_dir: &Path) -> Option<Vec<Listener>> {
    let items = walk::nonempty_list(cx, value, at)?;
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut addresses: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    let parsed = each(cx, items, at, |cx, item, at, i| {
        let o = Obj::open(
            cx,
            item,
            at,
            &[
                "name",
                "address",
                "tls",
                "trustedProxies",
                "timeouts",
                "limits",
                "redirect",
            ],
        )?;
        let name = o.req(cx, "name", walk::nonempty_string);
        if let Some(name) = &name {
            if let Some(first) = names.get(name) {
                cx.err(
                    &o.at("name"),
                    format!("duplicate listener name \"{name}\" (also listeners[{first}])"),
                );
            } else {
                names.insert(name.clone(), i);
            }
        }
        let address = o.req(cx, "address", socket_addr);
        if let Some(address) = address.filter(|a| a.port() != 0) {
            if let Some(first) = addresses.get(&address) {
                cx.err(
                    &o.at("address"),
                    format!("address {address} is already used by listeners[{first}]"),
                );
            } else {
                addresses.insert(address, i);
            }
        }
        let tls = o.opt(cx, "tls", |cx, v, at| tls(cx, v, at, base_dir));
        let trusted_proxies = o.or(
            cx,
            "trustedProxies",
            TrustedProxies::default(),
            trusted_proxies,
        );
        let timeouts = o.or(cx, "timeouts", Default::default(), edge::timeouts);
        let limits = o.or(cx, "limits", Default::default(), edge::limits);
        let redirect = o.opt(cx, "redirect", |cx, v, at| {
            let port = address.map(|a| a.port()).filter(|p| *p != 0);
            ingress::redirect(cx, v, at, o.has("tls"), port)
        });
        Some(Listener {
            name: name?,
            address: address?,
            tls: tls?,
            trusted_proxies: trusted_proxies?,
            timeouts: timeouts?,
            limits: limits?,
            redirect: redirect?,
        })
    });
    all(parsed)
}

/// `trustedProxies`: a list of CIDR blocks or bare addresses.
fn trusted_proxies(cx: &mut Cx, value: &Value, at: &str) -> Option<TrustedProxies> {
    let items = walk::list(cx, value, at)?;
    let parsed = each(cx, items, at, |cx, item, at, _| {
        let text = walk::nonempty_string(cx, item, at)?;
        let text = text.trim();
        if let Ok(net) = text.parse::<ipnet::IpNet>() {
            // `10.1.2.3/8` means `10.0.0.0/8`.
            return Some(net.trunc());
        }
        match text.parse::<IpAddr>() {
            Ok(ip) => Some(ipnet::IpNet::from(ip)),
            Err(_) => {
                cx.err(
                    at,
                    format!(
                        "expected a CIDR block like 10.0.0.0/8 or an IP address, got \"{text}\""
                    ),
                );
                None
            }
        }
    });
    all(parsed).map(TrustedProxies)
}

fn tls(cx: &mut Cx, value: &Value, at: &str, base_dir: &Path) -> Option<Tls> {
    let o = Obj::open(cx, value, at, &["certificates", "acme"])?;
    let acme = o.opt(cx, "acme", |cx, v, at| acme::acme(cx, v, at, base_dir));
    let read_certificates = |cx: &mut Cx, v: &Value, at: &str| {
        let items = walk::nonempty_list(cx, v, at)?;
        let parsed = each(cx, items, at, |cx, item, at, _| {
            let o = Obj::open(cx, item, at, &["certFile", "keyFile"])?;
            let cert_file = o.req(cx, "certFile", |cx, v, at| {
                walk::existing_file(cx, v, at, base_dir)
            });
            let key_file = o.req(cx, "keyFile", |cx, v, at| {
                walk::existing_file(cx, v, at, base_dir)
            });
            Some(CertificateFiles {
                cert_file: cert_file?,
                key_file: key_file?,
            })
        });
        all(parsed)
    };
    // With `acme`, `certificates` is optional (they serve other names).
    let certificates = if o.has("acme") {
        o.or(cx, "certificates", Vec::new(), read_certificates)
    } else {
        o.req(cx, "certificates", read_certificates)
    };
    Some(Tls {
        certificates: certificates?,
        acme: acme?,
    })
}

fn admin(cx: &mut Cx, value: &Value, at: &str, base_dir: &Path) -> Option<Admin> {
    let o = Obj::open(
        cx,
        value,
        at,
        &[
            "address",
            "tokenFile",
            "allowedHosts",
            "tls",
            "maxConnections",
            "maxEventSubscribers",
            "headerReadTimeout",
        ],
    )?;
    let address = o.or(cx, "address", DEFAULT_ADMIN_ADDRESS, socket_addr);
    let token_file = o.opt(cx, "tokenFile", |cx, v, at| {
        walk::existing_file(cx, v, at, base_dir)
    });
    if let (Some(address), Some(None)) = (&address, &token_file) {
        if !address.ip().is_loopback() {
            cx.err(
                &o.at("tokenFile"),
                format!(
                    "required because admin.address {address} is not a loopback address: without a \
                     token anyone who can reach it can promote or abort rollouts; set \
                     admin.tokenFile (and admin.tls), or bind the admin API to 127.0.0.1"
                ),
            );
        }
    }
    let allowed_hosts = o.or(cx, "allowedHosts", Vec::new(), allowed_hosts);
    let tls = o.opt(cx, "tls", |cx, v, at| {
        let o = Obj::open(cx, v, at, &["certFile", "keyFile"])?;
        let cert_file = o.req(cx, "certFile", |cx, v, at| {
            walk::existing_file(cx, v, at, base_dir)
        });
        let key_file = o.req(cx, "keyFile", |cx, v, at| {
            walk::existing_file(cx, v, at, base_dir)
        });
        Some(CertificateFiles {
            cert_file: cert_file?,
            key_file: key_file?,
        })
    });
    let max_connections = o.or(
        cx,
        "maxConnections",
        Admin::DEFAULT_MAX_CONNECTIONS,
        |cx, v, at| walk::positive_u32(cx, v, at).map(|n| n as usize),
    );
    let max_event_subscribers = o.or(
        cx,
        "maxEventSubscribers",
        Admin::DEFAULT_MAX_EVENT_SUBSCRIBERS,
        |cx, v, at| walk::positive_u32(cx, v, at).map(|n| n as usize),
    );
    let header_read_timeout = o.or(
        cx,
        "headerReadTimeout",
        Admin::DEFAULT_HEADER_READ_TIMEOUT,
        walk::positive_duration,
    );
    Some(Admin {
        address: address?,
        token_file: token_file?,
        allowed_hosts: allowed_hosts?,
        tls: tls?,
        max_connections: max_connections?,
        max_event_subscribers: max_event_subscribers?,
        header_read_timeout: header_read_timeout?,
    })
}

/// `admin.allowedHosts`: host names (`name` or `name:port`, IPv6 in brackets), lower-cased.
fn allowed_hosts(cx: &mut Cx, value: &Value, at: &str) -> Option<Vec<String>> {
    let items = walk::list(cx, value, at)?;
    let parsed = each(cx, items, at, |cx, item, at, _| {
        let written = walk::nonempty_string(cx, item, at)?;
        let host = written.trim().to_ascii_lowercase();
        match check_host(&host) {
            Ok(()) => Some(host),
            Err(reason) => {
                cx.err(
                    at,
                    format!(
                        "\"{written}\" is not a host name: {reason} (expected NAME or NAME:PORT)"
                    ),
                );
                None
            }
        }
    });
    all(parsed)
}

/// `name`, `name:port`, `[v6]` or `[v6]:port`, as a `Host` header carries it.
fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| "an unclosed [".to_string())?;
        inside
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("\"{inside}\" is not an IPv6 address"))?;
        match after {
            "" => return Ok(()),
            _ => (
                "",
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("unexpected \"{after}\" after ]"))?,
            ),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, port),
            None => (host, ""),
        }
    };
    if !port.is_empty() && port.parse::<u16>().is_err() {
        return Err(format!("invalid port \"{port}\""));
    }
    if host.starts_with('[') {
        return Ok(());
    }
    if name.is_empty() {
        return Err("no name".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!("'{bad}' is not allowed in a host name"));
    }
    Ok(())
}

/// A listening address: `IP:PORT` or `localhost:PORT`.
fn socket_addr(cx: &mut Cx, value: &Value, at: &str) -> Option<SocketAddr> {
    let written = walk::string(cx, value, at)?;
    if let Ok(addr) = written.parse::<SocketAddr>() {
        return Some(addr);
    }
    let reason = match written.rsplit_once(':') {
        None => "missing :PORT (expected IP:PORT or localhost:PORT)".to_string(),
        Some((host, port)) => match port.parse::<u16>() {
            Err(_) => format!("invalid port \"{port}\" (expected IP:PORT or localhost:PORT)"),
            Ok(port) if host.eq_ignore_ascii_case("localhost") => {
                return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
            }
            Ok(_) => format!(
                "\"{host}\" is not an IP address (expected IP:PORT or localhost:PORT, IPv6 in brackets like [::1]:8080)"
            ),
        },
    };
    cx.err(
        at,
        format!("invalid socket address \"{written}\": {reason}"),
    );
    None
}

// ---------------------------------------------------------------------------------------------
// Services.
// ---------------------------------------------------------------------------------------------

/// Routes seen so far: (host, path prefix) → service name.
type Routes = BTreeMap<(HostPattern, String), String>;

fn services(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    known: &Known,
    listeners: Option<&[String]>,
    base_dir: &Path,
) -> Option<Vec<Service>> {
    let items = walk::nonempty_list(cx, value, at)?;
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut routes = Routes::new();
    let parsed = each(cx, items, at, |cx, item, at, i| {
        service(
            cx,
            item,
            at,
            i,
            &mut names,
            &mut routes,
            known,
            listeners,
            base_dir,
        )
    });
    preview_hosts_unambiguous(cx, &parsed, at);
    all(parsed)
}

/// Reports every blue-green preview host that equals a host pattern of a service's `match.hosts`
/// or of an earlier service's preview: a request for it could not be routed unambiguously.
fn preview_hosts_unambiguous(cx: &mut Cx, services: &[Option<Service>], at: &str) {
    let services: Vec<(usize, &Service)> = services
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, s.as_ref()?)))
        .collect();
    for (i, service) in &services {
        let Some(blue_green) = service.strategy.as_ref().and_then(|s| s.blue_green()) else {
            continue;
        };
        for (j, host) in blue_green.preview.hosts.iter().enumerate() {
            let host_at = format!(
                "{}.strategy.blueGreen.preview.hosts[{j}]",
                walk::index_path(at, *i)
            );
            for (_, other) in &services {
                if other.matcher.hosts.contains(host) {
                    cx.err(
                        &host_at,
                        format!(
                            "host \"{host}\" is also in match.hosts of service \"{}\"",
                            other.name
                        ),
                    );
                }
            }
            for (_, other) in services.iter().take_while(|(k, _)| k < i) {
                let other_preview = other.strategy.as_ref().and_then(|s| s.blue_green());
                if other_preview.is_some_and(|b| b.preview.hosts.contains(host)) {
                    cx.err(
                        &host_at,
                        format!(
                            "host \"{host}\" is also a preview host of service \"{}\"",
                            other.name
                        ),
                    );
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn service(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    index: usize,
    names: &mut BTreeMap<String, usize>,
    routes: &mut Routes,
    known: &Known,
    listeners: Option<&[String]>,
    base_dir: &Path,
) -> Option<Service> {
    let o = Obj::open(
        cx,
        value,
        at,
        &[
            "name",
            "match",
            "stable",
            "canary",
            "upstream",
            "strategy",
            "sessionAffinity",
            "upgrades",
            "outlierDetection",
            "healthCheck",
            "compression",
            "rateLimit",
            "rewrite",
            "headers",
            "notifications",
        ],
    )?;
    let name = o.req(cx, "name", service_name);
    if let Some(name) = &name {
        if let Some(first) = names.get(name) {
            cx.err(
                &o.at("name"),
                format!("duplicate service name \"{name}\" (also services[{first}])"),
            );
        } else {
            names.insert(name.clone(), index);
        }
    }
    let default_match = Match {
        hosts: vec![HostPattern::Any],
        path_prefix: "/".to_string(),
    };
    let matcher = o.or(cx, "match", default_match, matcher);
    if let (Some(matcher), Some(name)) = (&matcher, &name) {
        for host in &matcher.hosts {
            let key = (host.clone(), matcher.path_prefix.clone());
            if let Some(owner) = routes.get(&key) {
                cx.err(
                    &o.at("match"),
                    format!(
                        "host \"{host}\" with pathPrefix \"{}\" is already routed by service \"{owner}\"",
                        matcher.path_prefix
                    ),
                );
            } else {
                routes.insert(key, name.clone());
            }
        }
    }
    let stable = o.req(cx, "stable", |cx, v, at| {
        let o = Obj::open(cx, v, at, &["version", "upstreams", "protocol", "tls"])?;
        version(cx, &o, base_dir)
    });
    let canary = o.opt(cx, "canary", |cx, v, at| canary(cx, v, at, base_dir));
    let stable_label = version_label(o.get("stable"));
    if let (Some(label), Some(canary_label)) = (&stable_label, version_label(o.get("canary"))) {
        if *label == canary_label {
            cx.err(
                &walk::field_path(&o.at("canary"), "version"),
                format!("must differ from stable.version, both are \"{label}\""),
            );
        }
    }
    let upstream = o.or(cx, "upstream", UpstreamOptions::default(), upstream_options);
    let strategy = o.opt(cx, "strategy", |cx, v, at| {
        strategy::strategy(cx, v, at, known, listeners)
    });
    let session_affinity = o.opt(cx, "sessionAffinity", policy::session_affinity);
    let upgrades = o.or(
        cx,
        "upgrades",
        crate::model::default_upgrades(),
        edge::upgrades,
    );
    let outlier_detection = o.or(
        cx,
        "outlierDetection",
        crate::model::OutlierDetection::default(),
        health::outlier_detection,
    );
    let health_check = o.opt(cx, "healthCheck", health::health_check);
    let compression = o.opt(cx, "compression", compression::compression);
    let rate_limit = o.opt(cx, "rateLimit", ratelimit::rate_limit);
    let rewrite = o.opt(cx, "rewrite", ingress::rewrite);
    let labels: Vec<String> = stable_label
        .iter()
        .cloned()
        .chain(version_label(o.get("canary")))
        .collect();
    let headers = o.or(cx, "headers", Default::default(), |cx, v, at| {
        ingress::headers(cx, v, at, &labels)
    });
    let notifications = o.or(
        cx,
        "notifications",
        Vec::new(),
        notify::service_notifications,
    );
    Some(Service {
        name: name?,
        matcher: matcher?,
        stable: stable?,
        canary: canary?,
        upstream: upstream?,
        strategy: strategy?,
        session_affinity: session_affinity?,
        upgrades: upgrades?,
        outlier_detection: outlier_detection?,
        health_check: health_check?,
        compression: compression?,
        rate_limit: rate_limit?,
        rewrite: rewrite?,
        headers: headers?,
        notifications: notifications?,
    })
}

/// A service name: `[A-Za-z0-9._-]+` (it is a metric label and a URL segment).
fn service_name(cx: &mut Cx, value: &Value, at: &str) -> Option<String> {
    let name = walk::string(cx, value, at)?;
    if name.is_empty() {
        cx.err(at, "must not be empty");
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

fn matcher(cx: &mut Cx, value: &Value, at: &str) -> Option<Match> {
    let o = Obj::open(cx, value, at, &["hosts", "pathPrefix"])?;
    let hosts = o.or(cx, "hosts", vec![HostPattern::Any], host_patterns);
    let path_prefix = o.or(cx, "pathPrefix", "/".to_string(), |cx, v, at| {
        let prefix = walk::string(cx, v, at)?;
        if !prefix.starts_with('/') {
            cx.err(at, format!("must start with \"/\", got \"{prefix}\""));
            return None;
        }
        Some(prefix)
    });
    Some(Match {
        hosts: hosts?,
        path_prefix: path_prefix?,
    })
}

/// `version` and `upstreams` of an opened `stable` or `canary` mapping.
fn version(cx: &mut Cx, o: &Obj<'_>, base_dir: &Path) -> Option<Version> {
    let version = o.req(cx, "version", walk::nonempty_text);
    let upstreams = o.req(cx, "upstreams", upstreams);
    let protocol = o.or(
        cx,
        "protocol",
        UpstreamProtocol::default(),
        protocol::protocol,
    );
    let tls = protocol::version_tls(cx, o.get("tls"), &o.at("tls"), protocol, base_dir);
    Some(Version {
        version: version?,
        upstreams: upstreams?,
        protocol: protocol?,
        tls: tls?,
    })
}

/// The version label of a `stable` or `canary` mapping, read without reporting anything.
fn version_label(value: Option<&Value>) -> Option<String> {
    match value?.get("version")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn canary(cx: &mut Cx, value: &Value, at: &str, base_dir: &Path) -> Option<Canary> {
    let o = Obj::open(
        cx,
        value,
        at,
        &["version", "upstreams", "weight", "protocol", "tls"],
    )?;
    let version = version(cx, &o, base_dir);
    let weight = o.opt(cx, "weight", walk::weight);
    Some(Canary {
        version: version?,
        weight: weight?,
    })
}

fn upstreams(cx: &mut Cx, value: &Value, at: &str) -> Option<Vec<Upstream>> {
    let items = walk::nonempty_list(cx, value, at)?;
    let mut seen: Vec<String> = Vec::new();
    let parsed = each(cx, items, at, |cx, item, at, _| {
        let upstream = dns::upstream(cx, item, at)?;
        if seen.contains(&upstream.name) {
            cx.err(at, format!("duplicate upstream \"{}\"", upstream.name));
            return None;
        }
        seen.push(upstream.name.clone());
        Some(upstream)
    });
    all(parsed)
}

fn upstream_options(cx: &mut Cx, value: &Value, at: &str) -> Option<UpstreamOptions> {
    let o = Obj::open(
        cx,
        value,
        at,
        &[
            "connectTimeout",
            "responseTimeout",
            "idleTimeout",
            "maxIdlePerUpstream",
            "maxRequestBodySize",
            "requestBodyTimeout",
        ],
    )?;
    let defaults = UpstreamOptions::default();
    let connect_timeout = o.or(
        cx,
        "connectTimeout",
        defaults.connect_timeout,
        walk::positive_duration,
    );
    let response_timeout = o.or(
        cx,
        "responseTimeout",
        defaults.response_timeout,
        walk::positive_duration,
    );
    let idle_timeout = o.or(
        cx,
        "idleTimeout",
        defaults.idle_timeout,
        walk::positive_duration,
    );
    let max_idle_per_upstream = o.or(
        cx,
        "maxIdlePerUpstream",
        defaults.max_idle_per_upstream,
        |cx, v, at| {
            let n = walk::uint(cx, v, at)?;
            match usize::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    cx.err(at, format!("too large: {n}"));
                    None
                }
            }
        },
    );
    let (max_request_body_size, request_body_timeout) = request_body_options(cx, &o, &defaults);
    Some(UpstreamOptions {
        connect_timeout: connect_timeout?,
        response_timeout: response_timeout?,
        idle_timeout: idle_timeout?,
        max_idle_per_upstream: max_idle_per_upstream?,
        max_request_body_size: max_request_body_size?,
        request_body_timeout: request_body_timeout?,
    })
}

/// A non-empty list of host patterns (`*`, `*.suffix`, exact), each valid and none repeated.
pub(crate) fn host_patterns(cx: &mut Cx, value: &Value, at: &str) -> Option<Vec<HostPattern>> {
    let items = walk::nonempty_list(cx, value, at)?;
    let mut seen: Vec<HostPattern> = Vec::new();
    let parsed = each(cx, items, at, |cx, item, at, _| {
        let written = walk::string(cx, item, at)?;
        match HostPattern::parse(&written) {
            Ok(pattern) if seen.contains(&pattern) => {
                cx.err(at, format!("duplicate host pattern \"{pattern}\""));
                None
            }
            Ok(pattern) => {
                seen.push(pattern.clone());
                Some(pattern)
            }
            Err(reason) => {
                cx.err(at, format!("invalid host pattern \"{written}\": {reason}"));
                None
            }
        }
    });
    all(parsed)
}

/// `maxRequestBodySize` (bytes, 0 or absent: no limit) and `requestBodyTimeout`.
#[allow(clippy::type_complexity)]
fn request_body_options(
    cx: &mut Cx,
    o: &Obj<'_>,
    defaults: &UpstreamOptions,
) -> (Option<Option<u64>>, Option<std::time::Duration>) {
    let max = o.or(cx, "maxRequestBodySize", None, |cx, v, at| {
        walk::uint(cx, v, at).map(|n| (n > 0).then_some(n))
    });
    let timeout = o.or(
        cx,
        "requestBodyTimeout",
        defaults.request_body_timeout,
        walk::positive_duration,
    );
    (max, timeout)
}
