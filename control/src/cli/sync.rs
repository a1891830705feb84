//! `weir status` waits until weir has applied the config file as it is now (its SHA-256 in
//! `GET /api/v1/config`), so a CI job that edits the file and runs `weir status` at once never
//! reads the outcome of the previous rollout.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;
use weir_control::config_report::digest;

use super::client::{Api, ApiError};

/// How often the config report is polled while waiting.
const POLL: Duration = Duration::from_millis(100);

/// Where weir is with the config file.
pub enum Synced {
    /// The file's content is applied, as this config generation.
    Generation(u64),
    /// No file to compare (none given, or weir's is not on this machine, or an older weir).
    Unknown,
    /// weir refused the file's content: the lines to print.
    Refused(String),
    /// The deadline passed first: the line to print.
    TimedOut(String),
}

/// Waits until weir reports the content of `config` (or, when `None`, of the file weir names
/// when it runs on this machine) applied or refused, or `deadline` passes.
pub async fn applied(
    api: &Api,
    config: Option<PathBuf>,
    deadline: Instant,
) -> anyhow::Result<Synced> {
    let path = match config {
        Some(path) => path,
        None => match local_config(api).await {
            Some(path) => path,
            None => return Ok(Synced::Unknown),
        },
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let want = digest(&bytes);
    let mut said_waiting = false;
    loop {
        let report = match api.config().await {
            Ok(report) => Some(report),
            // An older weir without the report: nothing to wait for.
            Err(ApiError::Refused { status, .. }) if status == http::StatusCode::NOT_FOUND => {
                return Ok(Synced::Unknown)
            }
            // weir restarting: keep trying until the deadline.
            Err(ApiError::Unreachable { .. }) if said_waiting => None,
            Err(error) => return Err(error.into()),
        };
        if let Some(report) = report {
            if report.digest == want {
                return Ok(Synced::Generation(report.generation));
            }
            if let Some(refused) = report.last_error.filter(|e| e.digest == want) {
                let mut lines = format!(
                    "weir refused {} (sha256 {}); it keeps serving config generation {}:\n",
                    path.display(),
                    short(&want),
                    report.generation
                );
                for problem in refused.problems {
                    lines.push_str(&format!("  {problem}\n"));
                }
                return Ok(Synced::Refused(lines));
            }
            if !said_waiting {
                eprintln!(
                    "waiting for weir to apply {} (sha256 {}; applied: {})",
                    path.display(),
                    short(&want),
                    short(&report.digest)
                );
                said_waiting = true;
            }
        }
        if Instant::now() + POLL > deadline {
            return Ok(Synced::TimedOut(format!(
                "timed out: weir has not applied {} (sha256 {}) yet\n",
                path.display(),
                short(&want)
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// The config file weir reports, when its admin API is on this machine's loopback and the file
/// is readable here.
async fn local_config(api: &Api) -> Option<PathBuf> {
    if !is_loopback(api.base()) {
        return None;
    }
    let report = api.config().await.ok()?;
    let path = PathBuf::from(report.path);
    (path.is_absolute() && Path::new(&path).is_file()).then_some(path)
}

/// Whether a base URL (`http://127.0.0.1:3100`) names a loopback host.
fn is_loopback(base: &str) -> bool {
    let Ok(uri) = base.parse::<http::Uri>() else {
        return false;
    };
    match uri.host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_admin_urls() {
        assert!(is_loopback("http://127.0.0.1:3100"));
        assert!(is_loopback("https://localhost:3100"));
        assert!(is_loopback("http://[::1]:3100"));
        assert!(!is_loopback("http://10.0.0.5:3100"));
        assert!(!is_loopback("http://weir.internal:3100"));
    }
}
