//! weir's configuration file: the YAML schema, validation that reports every problem with its field path, and
//! loading.
//!
//! Modules:
//! - [`model`]: the validated configuration types other crates consume (re-exported at the crate root).
//! - `error`: [`ConfigError`] and [`ValidationError`].
//! - `duration`: [`parse_duration`] for `500ms`, `10s`, `2m`, `1h`, `1m30s`.
//! - [`schema`]: the JSON Schema of the file and the field reference generated from it.
//! - `validate`: walks the YAML document, collects every problem, and builds the [`Model`].
//!
//! ```no_run
//! let model = weir_config::load(std::path::Path::new("weir.yaml"))?;
//! println!("{} services", model.services.len());
//! # Ok::<(), weir_config::ConfigError>(())
//! ```

#![warn(missing_docs)]

mod duration;
mod error;
pub mod model;
pub mod schema;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use duration::parse_duration;
pub use error::{ConfigError, ValidationError};
pub use model::*;

/// Parses YAML text into a validated [`Model`]; relative paths resolve against `base_dir`.
///
/// Returns [`ConfigError::Parse`] for YAML syntax errors and [`ConfigError::Invalid`] listing every problem
/// found otherwise (unknown fields, wrong types, missing fields, invalid values, conflicts).
pub fn parse(text: &str, base_dir: &Path) -> Result<Model, ConfigError> {
    let mut value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            message: e.to_string(),
        })?;
    value.apply_merge().map_err(|e| ConfigError::Parse {
        message: e.to_string(),
    })?;
    validate::validate(&value, base_dir).map_err(ConfigError::Invalid)
}

/// Reads and parses a config file; relative paths resolve against the file's folder.
pub fn load(path: &Path) -> Result<Model, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    parse(&text, base_dir)
}
