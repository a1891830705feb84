//! Persistence of rollout state in `stateDir`: one JSON file per service, written atomically
//! (temp file, fsync, rename, fsync of the folder) so that a crash at any moment leaves either the
//! old or the new state, never a torn one.

use std::fs;
use std::io::Write;
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
        let rollout = parse(&bytes).map_err(|message| StateError::Corrupted {
            path: path.clone(),
            message,
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
            rollout,
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

/// Reads a state file of the current format or of format 1.
pub(crate) fn parse(bytes: &[u8]) -> Result<Rollout, String> {
    let envelope: AnyEnvelope = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let rollout = match envelope.format {
        FORMAT => envelope.rollout,
        1 => upgrade_v1(envelope.rollout)?,
        other => return Err(format!("unknown format {other}")),
    };
    serde_json::from_value(rollout).map_err(|e| e.to_string())
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
    fn unknown_formats_are_corrupted() {
        let error = parse(br#"{"format": 9, "rollout": {}}"#).expect_err("refused");
        assert!(error.contains("unknown format 9"), "{error}");
    }
}
