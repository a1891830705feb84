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
