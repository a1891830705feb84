//! What weir applied of its config file, for `GET /api/v1/config` and `weir status`: the config
//! generation (bumped by every config applied), the SHA-256 of the file's bytes, and the last
//! refusal. Written by the driver (applied or refused at publish) and by the loader (a file that
//! does not load), read by the admin API. Never on the request path.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use crate::api::v1::{ConfigStatus, RefusedConfig};
use crate::reload::{Loaded, Loader};

/// The shared report (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct ConfigReport {
    inner: Arc<Mutex<ConfigStatus>>,
}

/// SHA-256 of `bytes` in lowercase hex, as `sha256sum` prints it.
pub fn digest(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

// === impl ConfigReport ===

impl ConfigReport {
    /// A report for the config at `path`, whose state lives in `state_dir`.
    pub fn new(path: &Path, state_dir: Option<&Path>) -> ConfigReport {
        let status = ConfigStatus {
            path: path.display().to_string(),
            state_dir: state_dir.map(|dir| dir.display().to_string()),
            state_dir_origin: state_dir
                .map(|dir| crate::state_dir::origin(dir, path).describe().to_string()),
            ..ConfigStatus::default()
        };
        ConfigReport {
            inner: Arc::new(Mutex::new(status)),
        }
    }

    /// Names the config file (and where its state folder comes from, which depends on it).
    pub fn set_path(&self, path: &Path) {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        self.update(|status| {
            status.path = absolute.display().to_string();
            status.state_dir_origin = status.state_dir.as_deref().map(|dir| {
                crate::state_dir::origin(Path::new(dir), path)
                    .describe()
                    .to_string()
            });
        });
    }

    fn update<T>(&self, change: impl FnOnce(&mut ConfigStatus) -> T) -> T {
        let mut status = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut status)
    }

    /// A config with file digest `digest` was applied: the next generation, which it returns.
    /// A refusal of an older content is forgotten.
    pub fn applied(&self, digest: String, now_ms: u64) -> u64 {
        self.update(|status| {
            status.generation += 1;
            status.digest = digest;
            status.applied_at_ms = now_ms;
            status.last_error = None;
            status.generation
        })
    }

    /// A config file content was refused with `problems`.
    pub fn refused(&self, digest: String, problems: Vec<String>, now_ms: u64) {
        self.update(|status| {
            status.last_error = Some(RefusedConfig {
                digest,
                problems,
                at_ms: now_ms,
            })
        });
    }

    /// The current generation (0 before the first config applied).
    pub fn generation(&self) -> u64 {
        self.update(|status| status.generation)
    }

    /// A copy of the report.
    pub fn snapshot(&self) -> ConfigStatus {
        self.update(|status| status.clone())
    }

    /// Wraps `inner` so a file that does not load is reported as refused (with its digest).
    pub fn loader(&self, inner: Loader) -> Loader {
        let report = self.clone();
        Arc::new(move |path: &Path| {
            let result = inner(path);
            if let Err(error) = &result {
                let bytes = std::fs::read(path).unwrap_or_default();
                report.refused(digest(&bytes), error.problems(), wall_clock_ms());
            }
            result
        })
    }
}

/// The digest of the config file bytes `loaded` was read from.
pub fn loaded_digest(loaded: &Loaded) -> String {
    digest(loaded.config_bytes())
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(
            digest(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn applied_bumps_the_generation_and_clears_a_refusal() {
        let report = ConfigReport::new(Path::new("/etc/weir/weir.yaml"), None);
        assert_eq!(report.applied("a".into(), 1), 1);
        report.refused("b".into(), vec!["services[0]: bad".into()], 2);
        assert_eq!(
            report.snapshot().last_error.map(|e| e.digest),
            Some("b".into())
        );
        assert_eq!(report.applied("c".into(), 3), 2);
        let status = report.snapshot();
        assert_eq!((status.generation, status.digest.as_str()), (2, "c"));
        assert!(status.last_error.is_none());
    }
}
