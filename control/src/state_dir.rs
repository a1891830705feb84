//! Where weir keeps its state (rollouts, ACME account and certificates): always on disk, so a
//! restart never rolls an aborted canary out again and never restarts a promoted one.
//!
//! In order: `stateDir` from the config; else `$STATE_DIRECTORY` (set by systemd's
//! `StateDirectory=`; the first path when it lists several, separated by `:`); else
//! `<config folder>/<config file stem>.state/` next to the config file (`/etc/weir/weir.yaml` →
//! `/etc/weir/weir.state/`). The store creates the folder 0700 when weir starts.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use weir_config::Model;

/// The environment variable systemd sets for `StateDirectory=`.
pub const STATE_DIRECTORY: &str = "STATE_DIRECTORY";

/// Where the effective state folder comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `stateDir` in the config.
    Config,
    /// `$STATE_DIRECTORY` (systemd `StateDirectory=`).
    Systemd,
    /// The folder next to the config file.
    NextToConfig,
}

// === impl Origin ===

impl Origin {
    /// How the API and the log name it: `stateDir`, `$STATE_DIRECTORY`, `next to the config file`.
    pub fn describe(self) -> &'static str {
        match self {
            Origin::Config => "stateDir",
            Origin::Systemd => "$STATE_DIRECTORY",
            Origin::NextToConfig => "next to the config file",
        }
    }
}

/// The state folder when the config names none: the first absolute path of `state_directory`
/// (`$STATE_DIRECTORY`), else `<folder of config_path>/<stem of config_path>.state`, absolute
/// where the current folder is known.
pub fn default_dir(config_path: &Path, state_directory: Option<&OsStr>) -> (PathBuf, Origin) {
    if let Some(first) = state_directory
        .and_then(OsStr::to_str)
        .and_then(|list| list.split(':').next())
        .map(Path::new)
        .filter(|p| p.is_absolute())
    {
        return (first.to_path_buf(), Origin::Systemd);
    }
    let path = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    let stem = path
        .file_stem()
        .map_or_else(|| "weir".into(), |s| s.to_string_lossy().into_owned());
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    (folder.join(format!("{stem}.state")), Origin::NextToConfig)
}

/// Gives `model` its effective state folder when the config names none (called by every load,
/// so reloads see the same folder): `$STATE_DIRECTORY`, else next to `config_path`.
pub fn fill(model: &mut Model, config_path: &Path) {
    if model.state_dir.is_none() {
        let env = std::env::var_os(STATE_DIRECTORY);
        model.state_dir = Some(default_dir(config_path, env.as_deref()).0);
    }
}

/// Where `state_dir` (a model's, after [`fill`]) comes from, for the log and the API.
pub fn origin(state_dir: &Path, config_path: &Path) -> Origin {
    let env = std::env::var_os(STATE_DIRECTORY);
    let (default, origin) = default_dir(config_path, env.as_deref());
    if default == state_dir {
        origin
    } else {
        Origin::Config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_first_then_next_to_the_config_file() {
        let config = Path::new("/etc/weir/weir.yaml");
        assert_eq!(
            default_dir(config, Some(OsStr::new("/var/lib/weir:/var/lib/other"))),
            (PathBuf::from("/var/lib/weir"), Origin::Systemd)
        );
        for env in [None, Some(OsStr::new("")), Some(OsStr::new("relative/dir"))] {
            assert_eq!(
                default_dir(config, env),
                (PathBuf::from("/etc/weir/weir.state"), Origin::NextToConfig)
            );
        }
        let (relative, _) = default_dir(Path::new("prod.yml"), None);
        assert!(relative.is_absolute(), "{relative:?}");
        assert!(relative.ends_with("prod.state"), "{relative:?}");
    }
}
