//! `protocol` of a `stable` or `canary` version.

use serde_yaml_ng::Value;

use super::walk::{self, Cx};
use crate::model::UpstreamProtocol;

/// `http1` (default) or `h2c`.
pub(super) fn protocol(cx: &mut Cx, value: &Value, at: &str) -> Option<UpstreamProtocol> {
    let name = walk::string(cx, value, at)?;
    match name.as_str() {
        "http1" => Some(UpstreamProtocol::Http1),
        "h2c" => Some(UpstreamProtocol::H2c),
        other => {
            cx.err(
                at,
                format!("must be one of \"http1\" or \"h2c\", got \"{other}\""),
            );
            None
        }
    }
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
