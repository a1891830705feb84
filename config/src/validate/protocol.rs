//! `protocol` and `tls` of a `stable` or `canary` version.

use std::net::IpAddr;
use std::path::Path;

use serde_yaml_ng::Value;

use super::walk::{self, Cx, Obj};
use crate::model::{UpstreamProtocol, UpstreamTls};

/// `http1` (default), `h2c` or `h2`.
pub(super) fn protocol(cx: &mut Cx, value: &Value, at: &str) -> Option<UpstreamProtocol> {
    let name = walk::string(cx, value, at)?;
    match name.as_str() {
        "http1" => Some(UpstreamProtocol::Http1),
        "h2c" => Some(UpstreamProtocol::H2c),
        "h2" => Some(UpstreamProtocol::H2),
        other => {
            cx.err(
                at,
                format!("must be one of \"http1\", \"h2c\" or \"h2\", got \"{other}\""),
            );
            None
        }
    }
}

/// The version's `tls` (at `at`, `None` when absent) for `protocol`: `h2` always gets one (the
/// defaults when absent); any other protocol refuses it, since only `h2` speaks TLS upstream.
pub(super) fn version_tls(
    cx: &mut Cx,
    value: Option<&Value>,
    at: &str,
    protocol: Option<UpstreamProtocol>,
    base_dir: &Path,
) -> Option<Option<UpstreamTls>> {
    let tls = match value {
        Some(value) => tls(cx, value, at, base_dir)?,
        None => UpstreamTls::default(),
    };
    match protocol {
        Some(UpstreamProtocol::H2) => Some(Some(tls)),
        Some(other) if value.is_some() => {
            cx.err(
                at,
                format!(
                    "only protocol \"h2\" speaks TLS to upstreams, this version's protocol is \"{}\"",
                    other.as_str()
                ),
            );
            None
        }
        _ => Some(None),
    }
}

/// `tls: {caFile, serverName}`.
fn tls(cx: &mut Cx, value: &Value, at: &str, base_dir: &Path) -> Option<UpstreamTls> {
    let o = Obj::open(cx, value, at, &["caFile", "serverName"])?;
    let ca_file = o.opt(cx, "caFile", |cx, v, at| {
        walk::existing_file(cx, v, at, base_dir)
    });
    let server_name = o.opt(cx, "serverName", server_name);
    Some(UpstreamTls {
        ca_file: ca_file?,
        ca_pem: None,
        server_name: server_name?,
    })
}

/// A TLS server name: a DNS name (letters, digits, `-`, `_`, dots between non-empty labels) or an
/// IP literal (IPv6 without brackets).
fn server_name(cx: &mut Cx, value: &Value, at: &str) -> Option<String> {
    let name = walk::nonempty_string(cx, value, at)?;
    if name.parse::<IpAddr>().is_ok() {
        return Some(name);
    }
    let bad = |cx: &mut Cx, why: &str| {
        cx.err(
            at,
            format!("\"{name}\" is not a DNS name or an IP address: {why}"),
        );
    };
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        bad(cx, &format!("invalid character {c:?}"));
        return None;
    }
    let trimmed = name.strip_suffix('.').unwrap_or(&name);
    if trimmed.len() > 253 || trimmed.split('.').any(|l| l.len() > 63) {
        bad(cx, "too long");
        return None;
    }
    if trimmed.split('.').any(|l| l.is_empty()) {
        bad(cx, "empty label");
        return None;
    }
    if trimmed
        .split('.')
        .any(|l| l.starts_with('-') || l.ends_with('-'))
    {
        bad(cx, "a label starts or ends with '-'");
        return None;
    }
    if trimmed
        .rsplit('.')
        .next()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        bad(cx, "its last label is all digits");
        return None;
    }
    Some(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::model::UpstreamProtocol;

    const YAML: &str = r#"
listeners: [{name: public, address: "127.0.0.1:8080"}]
services:
  - name: api
    stable: {version: v1, upstreams: ["127.0.0.1:9001"]}
    canary: {version: v2, upstreams: ["127.0.0.1:9002"], protocol: PROTOCOL}
"#;

    #[test]
    fn protocol_is_per_version_and_defaults_to_http1() {
        let model = crate::parse(&YAML.replace("PROTOCOL", "h2c"), Path::new("/tmp"))
            .expect("a valid config");
        let service = &model.services[0];
        assert_eq!(service.stable.protocol, UpstreamProtocol::Http1);
        let canary = service.canary.as_ref().expect("a canary");
        assert_eq!(canary.version.protocol, UpstreamProtocol::H2c);
        assert!(canary.version.protocol.is_http2());
    }

    #[test]
    fn an_unknown_protocol_is_reported_with_its_path() {
        for bad in ["h3", "\"\"", "1", "[h2c]"] {
            let error = crate::parse(&YAML.replace("PROTOCOL", bad), Path::new("/tmp"))
                .expect_err("an invalid config");
            let problems = error.problems();
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with("services[0].canary.protocol: ")),
                "{bad}: {problems:?}"
            );
        }
    }
}

#[cfg(test)]
mod tls_tests {
    use std::path::Path;

    use crate::model::{UpstreamProtocol, UpstreamTls};

    fn parse(canary: &str, dir: &Path) -> Result<crate::Model, crate::ConfigError> {
        let yaml = format!(
            r#"
listeners: [{{name: public, address: "127.0.0.1:8080"}}]
services:
  - name: api
    stable: {{version: v1, upstreams: ["127.0.0.1:9001"]}}
    canary: {{version: v2, upstreams: ["127.0.0.1:9002"], {canary}}}
"#
        );
        crate::parse(&yaml, dir)
    }

    fn problems(canary: &str, dir: &Path) -> Vec<String> {
        parse(canary, dir)
            .expect_err("an invalid config")
            .problems()
    }

    #[test]
    fn h2_gets_tls_defaults_and_reads_ca_file_and_server_name() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let model = parse("protocol: h2", dir.path()).expect("valid");
        let canary = &model.services[0].canary.as_ref().expect("canary").version;
        assert_eq!(canary.protocol, UpstreamProtocol::H2);
        assert!(canary.protocol.is_http2());
        assert_eq!(canary.tls, Some(UpstreamTls::default()));
        assert_eq!(model.services[0].stable.tls, None);

        std::fs::write(dir.path().join("ca.pem"), "not read here").expect("write");
        let model = parse(
            "protocol: h2, tls: {caFile: ca.pem, serverName: API.Internal}",
            dir.path(),
        )
        .expect("valid");
        let tls = model.services[0]
            .canary
            .as_ref()
            .expect("canary")
            .version
            .tls
            .clone();
        let tls = tls.expect("tls");
        assert_eq!(
            tls.ca_file.as_deref(),
            Some(dir.path().join("ca.pem").as_path())
        );
        assert_eq!(tls.ca_pem, None, "the config crate never reads it");
        assert_eq!(tls.server_name.as_deref(), Some("api.internal"));
        let model = parse("protocol: h2, tls: {serverName: \"::1\"}", dir.path()).expect("valid");
        let tls = model.services[0]
            .canary
            .as_ref()
            .expect("canary")
            .version
            .tls
            .clone();
        assert_eq!(tls.expect("tls").server_name.as_deref(), Some("::1"));
    }

    #[test]
    fn tls_problems_are_reported_with_their_paths() {
        let dir = tempfile::tempdir().expect("a temp dir");
        for (canary, at) in [
            ("protocol: h2c, tls: {}", "services[0].canary.tls: "),
            ("tls: {serverName: a.b}", "services[0].canary.tls: "),
            (
                "protocol: h2, tls: {caFile: missing.pem}",
                "services[0].canary.tls.caFile: ",
            ),
            (
                "protocol: h2, tls: {serverName: \"a b\"}",
                "services[0].canary.tls.serverName: ",
            ),
            (
                "protocol: h2, tls: {serverName: \"a..b\"}",
                "services[0].canary.tls.serverName: ",
            ),
            (
                "protocol: h2, tls: {serverName: \"1.2.3\"}",
                "services[0].canary.tls.serverName: ",
            ),
            (
                "protocol: h2, tls: {serverName: \"\"}",
                "services[0].canary.tls.serverName: ",
            ),
            (
                "protocol: h2, tls: {verify: false}",
                "services[0].canary.tls.verify: ",
            ),
            ("protocol: h2, tls: yes", "services[0].canary.tls: "),
        ] {
            let problems = problems(canary, dir.path());
            assert!(
                problems.iter().any(|p| p.starts_with(at)),
                "{canary}: {problems:?}"
            );
        }
    }
}
