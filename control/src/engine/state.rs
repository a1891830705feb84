//! Persistence of rollout state in `stateDir`: one JSON file per service, written atomically
//! (temp file, fsync, rename, fsync of the folder) so that a crash at any moment leaves either the
//! old or the new state, never a torn one.
//!
//! Files are created with mode 0600 (the folder 0700) and never through a symbolic link: the
//! temporary file is created exclusively with `O_NOFOLLOW`, a state file or a `services` folder
//! that is a link is refused. A save is two steps, [`Encoded::prepare`] (write and fsync the
//! temporary file: where a full disk or a permission problem shows) and [`Prepared::commit`]
//! (rename, fsync the folder), so that the driver can refuse to publish a widening it could not
//! write, and still keep a widening off the disk until it is served.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::engine::rollout::Rollout;

/// Format version written into every file: 2 holds the strategy's state as one tagged object
/// (`rollout.strategy`); 1 (weir 0.1) held flat optional fields and is still read.
const FORMAT: u32 = 2;

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
    /// The file was written by a newer weir, in a format this one does not know. It is left
    /// untouched (neither quarantined nor overwritten).
    #[error("{path}: written by a newer weir (state format {format}; this weir reads formats 1 to {FORMAT}): run the newer weir, or move the file aside to start this service's rollout over")]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// Its format.
        format: u32,
    },
    /// The file or the `services` folder is a symbolic link: refused, so that state is never
    /// read or written somewhere else.
    #[error("{path}: is a symbolic link; state files and the services folder must be plain files and folders")]
    Symlink {
        /// The link.
        path: PathBuf,
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

#[derive(serde::Serialize)]
struct Envelope<'a> {
    format: u32,
    rollout: &'a Rollout,
}

/// A file of any known format.
#[derive(serde::Deserialize)]
struct AnyEnvelope {
    format: u32,
    rollout: serde_json::Value,
}

/// Why [`parse`] refused a file.
#[derive(Debug)]
pub(crate) enum ParseError {
    /// A format newer than [`FORMAT`].
    Newer(u32),
    /// Not valid state.
    Invalid(String),
}

/// The state folder.
#[derive(Clone, Debug)]
pub struct Store {
    dir: Option<PathBuf>,
}

/// A rollout serialized for its file, ready to be written (off the control loop).
#[derive(Debug)]
pub struct Encoded {
    path: PathBuf,
    bytes: Vec<u8>,
}

/// A written and synced temporary file, not yet renamed over the state file.
#[derive(Debug)]
pub struct Prepared {
    tmp: PathBuf,
    path: PathBuf,
}

// === impl Store ===

impl Store {
    /// A store in `dir`, created if missing; `None` keeps state in memory only.
    pub fn open(dir: Option<&Path>) -> Result<Store, StateError> {
        if let Some(dir) = dir {
            let services = dir.join("services");
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&services)
                .map_err(|source| StateError::Io {
                    path: services.clone(),
                    source,
                })?;
            let meta = fs::symlink_metadata(&services).map_err(|source| StateError::Io {
                path: services.clone(),
                source,
            })?;
            if meta.file_type().is_symlink() {
                return Err(StateError::Symlink { path: services });
            }
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
        let mut bytes = Vec::new();
        let read = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nofollow())
            .open(&path)
            .and_then(|mut file| file.read_to_end(&mut bytes));
        match read {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(_) if is_symlink(&path) => return Err(StateError::Symlink { path }),
            Err(source) => return Err(StateError::Io { path, source }),
        }
        let rollout = parse(&bytes).map_err(|error| match error {
            ParseError::Newer(format) => StateError::NewerFormat {
                path: path.clone(),
                format,
            },
            ParseError::Invalid(message) => StateError::Corrupted {
                path: path.clone(),
                message,
            },
        })?;
        if rollout.service != service {
            return Err(StateError::Corrupted {
                path,
                message: format!("names service {:?}", rollout.service),
            });
        }
        Ok(Some(rollout))
    }

    /// Moves an unreadable file aside (`NAME.json.corrupt`) so that it is kept for inspection and
    /// the next save does not overwrite it.
    pub fn quarantine(&self, service: &str) -> Option<PathBuf> {
        let path = self.path(service)?;
        let aside = path.with_extension("json.corrupt");
        fs::rename(&path, &aside).ok().map(|_| aside)
    }

    /// Saves `rollout` atomically (blocking: fsync).
    pub fn save(&self, rollout: &Rollout) -> Result<(), StateError> {
        match self.encode(rollout)? {
            Some(encoded) => encoded.prepare()?.commit(),
            None => Ok(()),
        }
    }

    /// Serializes `rollout` for [`Encoded::prepare`]; `None` when state is kept in memory only.
    pub fn encode(&self, rollout: &Rollout) -> Result<Option<Encoded>, StateError> {
        let Some(path) = self.path(&rollout.service) else {
            return Ok(None);
        };
        let bytes = serde_json::to_vec_pretty(&Envelope {
            format: FORMAT,
            rollout,
        })
        .map_err(|e| StateError::Corrupted {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Some(Encoded { path, bytes }))
    }
}

// === impl Encoded ===

impl Encoded {
    /// The file's contents.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Writes and syncs the temporary file (mode 0600, created exclusively, never through a
    /// link); the state file is unchanged until [`Prepared::commit`]. Blocking.
    pub fn prepare(self) -> Result<Prepared, StateError> {
        let tmp = self.path.with_extension("json.tmp");
        let io = |source| StateError::Io {
            path: tmp.clone(),
            source,
        };
        // A temporary file left by a crash (or planted as a link) goes: the link itself, never
        // its target.
        match fs::remove_file(&tmp) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(io(error)),
            _ => {}
        }
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nofollow())
            .open(&tmp)
            .and_then(|mut file| {
                file.write_all(&self.bytes)?;
                file.sync_all()
            });
        if let Err(error) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io(error));
        }
        Ok(Prepared {
            tmp,
            path: self.path,
        })
    }
}

// === impl Prepared ===

impl Prepared {
    /// Renames the temporary file over the state file and syncs the folder. Blocking.
    pub fn commit(self) -> Result<(), StateError> {
        if let Err(source) = fs::rename(&self.tmp, &self.path) {
            let _ = fs::remove_file(&self.tmp);
            return Err(StateError::Io {
                path: self.path,
                source,
            });
        }
        if let Some(parent) = self.path.parent() {
            // The rename is durable only once the folder is synced.
            if let Ok(dir) = fs::File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }

    /// Gives up: removes the temporary file. Blocking.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

fn nofollow() -> i32 {
    // The flag's bits fit an `i32` (`O_NOFOLLOW` is 0o400000 on Linux).
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Reads a state file of the current format or of format 1.
pub(crate) fn parse(bytes: &[u8]) -> Result<Rollout, ParseError> {
    let invalid = |e: serde_json::Error| ParseError::Invalid(e.to_string());
    let envelope: AnyEnvelope = serde_json::from_slice(bytes).map_err(invalid)?;
    let rollout = match envelope.format {
        FORMAT => envelope.rollout,
        1 => upgrade_v1(envelope.rollout).map_err(ParseError::Invalid)?,
        newer if newer > FORMAT => return Err(ParseError::Newer(newer)),
        other => return Err(ParseError::Invalid(format!("unknown format {other}"))),
    };
    serde_json::from_value(rollout).map_err(invalid)
}

/// Maps a format-1 rollout (flat `stepIndex`, `stepStartedMs`, `weightBp`, `inlineRun`,
/// `backgroundRun`, `checkRuns`, `progress`) into the format-2 strategy state: a Flagger
/// progression when it ever scheduled checks (`progress.nextCheckMs` is set from its first step
/// on; Argo steps never set it), else Argo steps. A rollout before its first revision may be
/// either; the reconcile that follows every load gives it the config's strategy.
fn upgrade_v1(mut rollout: serde_json::Value) -> Result<serde_json::Value, String> {
    use serde_json::{json, Value};
    let fields = rollout
        .as_object_mut()
        .ok_or_else(|| "format 1: `rollout` is not an object".to_string())?;
    let mut take = |key: &str| fields.remove(key).unwrap_or(Value::Null);
    let step_index = take("stepIndex");
    let step_started_ms = take("stepStartedMs");
    let weight_bp = take("weightBp");
    let inline_run = take("inlineRun");
    let background_run = take("backgroundRun");
    let check_runs = match take("checkRuns") {
        Value::Null => json!([]),
        runs => runs,
    };
    let progress = take("progress");
    let next_check_ms = progress
        .get("nextCheckMs")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let progression = next_check_ms != 0 || check_runs.as_array().is_some_and(|r| !r.is_empty());
    let strategy = if progression {
        json!({
            "kind": "progression",
            "stepIndex": step_index,
            "stepStartedMs": step_started_ms,
            "weightBp": weight_bp,
            "checks": {
                "failedChecks": progress.get("failedChecks").cloned().unwrap_or(json!(0)),
                "nextCheckMs": next_check_ms,
                "pendingRuns": progress.get("pendingRuns").cloned().unwrap_or(json!([])),
                "pendingResults": progress.get("pendingResults").cloned().unwrap_or(json!([])),
                "runs": check_runs,
            },
        })
    } else {
        json!({
            "kind": "steps",
            "stepIndex": step_index,
            "stepStartedMs": step_started_ms,
            "weightBp": weight_bp,
            "inlineRun": inline_run,
            "backgroundRun": background_run,
        })
    };
    fields.insert("strategy".into(), strategy);
    Ok(rollout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rollout::{Phase, StrategyState};

    /// Written by weir 0.1 (format 1): Argo steps at an analysis step, with a background run.
    const V1_STEPS: &str = include_str!("state/format1-steps.json");
    /// Written by weir 0.1 (format 1): a Flagger progression with one failed check.
    const V1_PROGRESSION: &str = include_str!("state/format1-progression.json");

    #[test]
    fn format_1_steps_load_into_the_steps_state() {
        let rollout = parse(V1_STEPS.as_bytes()).expect("format 1 loads");
        assert_eq!(rollout.service, "checkout");
        assert_eq!(rollout.revision, 1);
        assert_eq!(rollout.phase, Phase::Progressing);
        assert_eq!(rollout.weight().percent(), 10.0);
        let StrategyState::Steps(steps) = &rollout.strategy else {
            panic!("steps expected: {:?}", rollout.strategy);
        };
        assert_eq!(steps.step_index, 2);
        assert_eq!(steps.step_started_ms, 1_010_100);
        assert!(steps.inline_run.is_some());
        assert!(steps.background_run.is_some());
        assert!(!rollout.events.is_empty());
    }

    #[test]
    fn format_1_progression_loads_into_the_progression_state() {
        let rollout = parse(V1_PROGRESSION.as_bytes()).expect("format 1 loads");
        assert_eq!(rollout.service, "search");
        let StrategyState::Progression(progression) = &rollout.strategy else {
            panic!("progression expected: {:?}", rollout.strategy);
        };
        assert_eq!(progression.weight_bp, 1000);
        assert_eq!(progression.checks.failed_checks, 1);
        assert_eq!(progression.checks.next_check_ms, 1_060_000);
        assert_eq!(rollout.strategy.failed_checks(), 1);
    }

    #[test]
    fn saved_state_loads_back_in_the_current_format() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(Some(dir.path())).expect("store");
        let rollout = parse(V1_PROGRESSION.as_bytes()).expect("format 1 loads");
        store.save(&rollout).expect("saved");
        let text = std::fs::read_to_string(dir.path().join("services/search.json")).expect("file");
        assert!(text.contains("\"format\": 2"), "{text}");
        let loaded = store.load("search").expect("loads").expect("present");
        assert_eq!(loaded.strategy, rollout.strategy);
        assert_eq!(loaded.history, rollout.history);
    }

    #[test]
    fn unknown_formats_are_corrupted_and_newer_ones_refused() {
        let error = parse(br#"{"format": 0, "rollout": {}}"#).expect_err("refused");
        assert!(
            matches!(&error, ParseError::Invalid(m) if m.contains("unknown format 0")),
            "{error:?}"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(Some(dir.path())).expect("store");
        let file = dir.path().join("services/shop.json");
        std::fs::write(&file, br#"{"format": 9, "rollout": {"anything": true}}"#).expect("write");
        let error = store.load("shop").expect_err("refused");
        assert!(
            matches!(error, StateError::NewerFormat { format: 9, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("newer weir"), "{error}");
    }

    #[test]
    fn files_are_private_and_links_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(Some(dir.path())).expect("store");
        let rollout = parse(V1_PROGRESSION.as_bytes()).expect("format 1 loads");
        store.save(&rollout).expect("saved");
        let file = dir.path().join("services/search.json");
        let mode = std::fs::metadata(&file).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");

        // A state file that is a link is refused on load, and a save replaces the link itself,
        // never writing to its target.
        let target = dir.path().join("elsewhere.json");
        std::fs::write(&target, "untouched").expect("write");
        std::fs::remove_file(&file).expect("remove");
        std::os::unix::fs::symlink(&target, &file).expect("symlink");
        let error = store.load("search").expect_err("refused");
        assert!(matches!(error, StateError::Symlink { .. }), "{error:?}");
        // A planted temporary-file link is not followed either.
        let tmp = dir.path().join("services/search.json.tmp");
        std::os::unix::fs::symlink(&target, &tmp).expect("symlink");
        store.save(&rollout).expect("saved");
        assert_eq!(
            std::fs::read_to_string(&target).expect("target"),
            "untouched"
        );
        assert!(!is_symlink(&file));

        // A services folder that is a link is refused.
        let linked = tempfile::tempdir().expect("temp dir");
        std::os::unix::fs::symlink(dir.path().join("services"), linked.path().join("services"))
            .expect("symlink");
        let error = Store::open(Some(linked.path())).expect_err("refused");
        assert!(matches!(error, StateError::Symlink { .. }), "{error:?}");
    }
}
