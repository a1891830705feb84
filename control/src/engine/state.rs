//! Persistence of rollout state in `stateDir`: one JSON file per service, written atomically
//! (temp file, fsync, rename, fsync of the folder) so that a crash at any moment leaves either the
//! old or the new state, never a torn one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::engine::rollout::Rollout;

/// Format version written into every file.
const FORMAT: u32 = 1;

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid state.
    #[error("{path}: corrupted state: {message}")]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope {
    format: u32,
    rollout: Rollout,
}

/// The state folder.
#[derive(Clone, Debug)]
pub struct Store {
    dir: Option<PathBuf>,
}

// === impl Store ===

impl Store {
    /// A store in `dir`, created if missing; `None` keeps state in memory only.
    pub fn open(dir: Option<&Path>) -> Result<Store, StateError> {
        if let Some(dir) = dir {
            let services = dir.join("services");
            fs::create_dir_all(&services).map_err(|source| StateError::Io {
                path: services.clone(),
                source,
            })?;
        }
        Ok(Store {
            dir: dir.map(Path::to_path_buf),
        })
    }

    /// Whether state survives a restart.
    pub fn is_persistent(&self) -> bool {
        self.dir.is_some()
    }

    fn path(&self, service: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|dir| dir.join("services").join(format!("{service}.json")))
    }

    /// The saved state of `service`: `Ok(None)` when there is none.
    pub fn load(&self, service: &str) -> Result<Option<Rollout>, StateError> {
        let Some(path) = self.path(service) else {
            return Ok(None);
        };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let envelope: Envelope =
            serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupted {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if envelope.format != FORMAT {
            return Err(StateError::Corrupted {
                path,
                message: format!("unknown format {}", envelope.format),
            });
        }
        if envelope.rollout.service != service {
            return Err(StateError::Corrupted {
                path,
                message: format!("names service {:?}", envelope.rollout.service),
            });
        }
        Ok(Some(envelope.rollout))
    }

    /// Moves an unreadable file aside (`NAME.json.corrupt`) so that it is kept for inspection and
    /// the next save does not overwrite it.
    pub fn quarantine(&self, service: &str) -> Option<PathBuf> {
        let path = self.path(service)?;
        let aside = path.with_extension("json.corrupt");
        fs::rename(&path, &aside).ok().map(|_| aside)
    }

    /// Saves `rollout` atomically.
    pub fn save(&self, rollout: &Rollout) -> Result<(), StateError> {
        let Some(path) = self.path(&rollout.service) else {
            return Ok(());
        };
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&Envelope {
            format: FORMAT,
            rollout: rollout.clone(),
        })
        .map_err(|e| StateError::Corrupted {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension("json.tmp");
        {
            let mut file = fs::File::create(&tmp).map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        fs::rename(&tmp, &path).map_err(io)?;
        if let Some(parent) = path.parent() {
            // The rename is durable only once the folder is synced.
            if let Ok(dir) = fs::File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}
