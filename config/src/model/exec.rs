//! `provider.exec`: a command run on weir's host, judged on its exit status (issue #9).

use std::time::Duration;

/// `provider.exec`: runs `command` with `args` (no shell: each arg is one argv entry) within
/// `timeout`; exit 0 is a success, any other exit a failure, a timeout or a command that cannot be
/// started an error. The last non-empty line of stdout is the measurement's value (a JSON number
/// when it parses as one, else a string). The VM counterpart of Argo Rollouts' Job provider, for
/// smoke tests before traffic moves.
///
/// `{{service}}`, `{{stable.version}}`, `{{canary.version}}` and `{{args.NAME}}` are substituted
/// in `command`, every arg and every env value.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecProvider {
    /// `command` (required): an absolute path (`/usr/local/bin/smoke`) or a bare name looked up
    /// on weir's `PATH` (`curl`); a relative path with a `/` is refused.
    pub command: String,
    /// `args` (default none): argv after the command.
    pub args: Vec<String>,
    /// `timeout` (default [`ExecProvider::DEFAULT_TIMEOUT`], at most
    /// [`ExecProvider::MAX_TIMEOUT`]): past it the command (and its process group) is killed and
    /// the measurement is an error.
    pub timeout: Duration,
    /// `env` (default none): variables added to weir's own environment, which the command inherits.
    pub env: Vec<(String, String)>,
}

impl ExecProvider {
    /// `timeout` when not written: 30s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// The longest `timeout` accepted: 10m.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
}
