//! Finding the external programs and describing the machine and software versions a run used.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Paths of the programs the harness runs.
#[derive(Clone, Debug)]
pub struct Tools {
    pub nginx: PathBuf,
    pub haproxy: Option<PathBuf>,
    pub wrk: PathBuf,
    pub taskset: PathBuf,
    pub strace: Option<PathBuf>,
    pub weir: Option<PathBuf>,
    /// valgrind, callgrind_control and h2load, for `weir-bench callgrind`.
    pub callgrind: Option<CallgrindTools>,
}

/// The programs of `weir-bench callgrind`.
#[derive(Clone, Debug)]
pub struct CallgrindTools {
    pub valgrind: PathBuf,
    pub callgrind_control: PathBuf,
    pub h2load: PathBuf,
}

impl Tools {
    /// Finds the programs; `needs_*` say which are required for this run.
    pub fn find(
        weir: Option<PathBuf>,
        needs_haproxy: bool,
        needs_strace: bool,
        needs_callgrind: bool,
    ) -> Result<Tools> {
        let apt = |program: &str, package: &str| {
            find_program(program).with_context(|| {
                format!(
                    "{program} not found in PATH or /usr/sbin: install the Debian package {package} \
                     (bench/run does this with apt-get)"
                )
            })
        };
        let weir = match weir {
            Some(path) if path.is_file() => Some(path),
            Some(path) => bail!(
                "the weir binary {} does not exist: build it with `cargo build --release -p weir-control` \
                 (bench/run does), point --weir (or WEIR_BIN) at it, or leave weir out with \
                 --only nginx,haproxy",
                path.display()
            ),
            None => None,
        };
        Ok(Tools {
            nginx: apt("nginx", "nginx-light")?,
            haproxy: if needs_haproxy {
                Some(apt("haproxy", "haproxy")?)
            } else {
                None
            },
            wrk: apt("wrk", "wrk")?,
            taskset: apt("taskset", "util-linux")?,
            strace: if needs_strace {
                Some(apt("strace", "strace")?)
            } else {
                None
            },
            weir,
            callgrind: if needs_callgrind {
                Some(CallgrindTools {
                    valgrind: apt("valgrind", "valgrind")?,
                    callgrind_control: apt("callgrind_control", "valgrind")?,
                    h2load: apt("h2load", "nghttp2-client")?,
                })
            } else {
                None
            },
        })
    }
}

/// Looks `program` up in `PATH`, then in the sbin directories a non-root `PATH` often lacks.
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The machine and software a run used, printed above the results and stored in the JSON.
#[derive(Clone, Debug)]
pub struct Environment {
    pub date: String,
    pub cpus: String,
    pub cpu_model: String,
    pub kernel: String,
    pub nginx: String,
    pub haproxy: String,
    pub wrk: String,
    pub weir: String,
    pub clock_ticks: u64,
}

impl Environment {
    pub fn collect(tools: &Tools, clock_ticks: u64) -> Environment {
        let Machine {
            date,
            cpus,
            cpu_model,
            kernel,
        } = Machine::collect();
        // `nginx -v` prints "nginx version: nginx/1.22.1" on stderr.
        let nginx = first_line(&tools.nginx, &["-v"])
            .map(|l| l.trim_start_matches("nginx version: ").to_string());
        // "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/"
        let haproxy = tools.haproxy.as_ref().and_then(|haproxy| {
            first_line(haproxy, &["-v"]).map(|l| {
                l.split_whitespace()
                    .nth(2)
                    .map_or_else(|| l.clone(), str::to_string)
            })
        });
        // "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer" (and exit status 1)
        let wrk = first_line(&tools.wrk, &["-v"]).map(|l| match l.split_once(" Copyright") {
            Some((version, _)) => version.to_string(),
            None => l,
        });
        let weir = tools
            .weir
            .as_ref()
            .map(|weir| format!("{} ({})", git_revision(), weir.display()));
        let or_unknown = |v: Option<String>| v.unwrap_or_else(|| "unknown".to_string());
        Environment {
            date,
            cpus,
            cpu_model,
            kernel,
            nginx: or_unknown(nginx),
            haproxy: haproxy.unwrap_or_else(|| "not used".to_string()),
            wrk: or_unknown(wrk),
            weir: weir.unwrap_or_else(|| "not used".to_string()),
            clock_ticks,
        }
    }

    /// `(label, value)` pairs in print order.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("date", self.date.clone()),
            ("cpus", format!("{} × {}", self.cpus, self.cpu_model)),
            ("kernel", self.kernel.clone()),
            ("weir", self.weir.clone()),
            ("nginx", self.nginx.clone()),
            ("HAProxy", self.haproxy.clone()),
            ("wrk", self.wrk.clone()),
            ("CLK_TCK", self.clock_ticks.to_string()),
        ]
    }

    pub fn to_json(&self) -> Value {
        json!({
            "date": self.date,
            "cpus": self.cpus,
            "cpu_model": self.cpu_model,
            "kernel": self.kernel,
            "weir": self.weir,
            "nginx": self.nginx,
            "haproxy": self.haproxy,
            "wrk": self.wrk,
            "clock_ticks": self.clock_ticks,
        })
    }
}

/// The machine a run used and when: the part of [`Environment`] that needs no external tools.
#[derive(Clone, Debug)]
pub struct Machine {
    pub date: String,
    pub cpus: String,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn collect() -> Machine {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|r| format!("Linux {}", r.trim()))
            .unwrap_or_else(|_| "unknown".to_string());
        let date = success_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .unwrap_or_else(|| "unknown".to_string());
        Machine {
            date,
            cpus,
            cpu_model,
            kernel,
        }
    }
}

/// weir's git revision (`git describe --always --dirty` of the workspace this harness was built
/// from; `-dirty` with uncommitted changes).
pub fn git_revision() -> String {
    success_line(
        "git",
        &[
            "-C",
            workspace_dir(),
            "describe",
            "--always",
            "--dirty",
            "--abbrev=12",
        ],
    )
    .unwrap_or_else(|| "unknown git revision".to_string())
}

/// The workspace root this harness was built from (for the weir git revision).
fn workspace_dir() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/..")
}

/// The first line `program args` prints on stdout, if it succeeds.
fn success_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_string())
}

/// The first non-empty line `program args` prints on stdout or stderr, whatever its exit status.
pub fn first_line(program: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}
