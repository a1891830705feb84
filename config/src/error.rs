//! Errors returned by [`crate::parse`] and [`crate::load`].

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The text is not valid YAML.
    #[error("invalid YAML: {message}")]
    Parse {
        /// What is wrong, with the line and column.
        message: String,
    },
    /// The YAML is well-formed but describes an invalid configuration; every problem found is listed.
    #[error("{}", DisplayLines(.0))]
    Invalid(Vec<ValidationError>),
}

impl ConfigError {
    /// One human-readable line per problem (a single line for [`ConfigError::Read`] and [`ConfigError::Parse`]).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// One problem in a configuration, located by its field path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct ValidationError {
    /// Where: a field path such as `services[0].canary.weight`.
    pub at: String,
    /// What is wrong, such as `must be between 0 and 100, got 101`.
    pub problem: String,
}

impl ValidationError {
    /// A problem at a field path.
    pub fn new(at: impl Into<String>, problem: impl Into<String>) -> Self {
        ValidationError {
            at: at.into(),
            problem: problem.into(),
        }
    }
}

/// Displays validation errors one per line.
struct DisplayLines<'a>(&'a [ValidationError]);

impl fmt::Display for DisplayLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}
