//! Memory-pressure shedding (`limits.maxMemory`), as Envoy's overload manager stops accepting
//! connections at a heap threshold.
//!
//! A sampler thread (`weir-memory`, off the control thread and the accept path) reads the
//! process's resident memory (`VmRSS` of `/proc/self/status`) every [`INTERVAL`] and sets the data
//! plane's [`MemoryPressure`] flag while it is above the limit; every accept loop checks that flag
//! and sheds new connections (`weir_connections_shed_total{reason="memory"}`) while established
//! ones keep being served. The flag clears once RSS falls below [`RESUME`] of the limit
//! (hysteresis, so accepting does not flap at the edge). Each episode is logged once (a warning as
//! it begins, a line when it ends).
//!
//! `maxMemory: auto` (the default) is 95% of the memory limit of the process's cgroup (v2
//! `memory.max`, the lowest along its path; else v1 `memory.limit_in_bytes`), or no limit when
//! none is set. The cgroup files are read by the sampler thread, at start and on every reload.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use weir_config::MemoryLimit;
use weir_proxy::limits::MemoryPressure;

/// How often resident memory is sampled.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// Accepting resumes below this share of the limit.
pub const RESUME: f64 = 0.9;

/// The share of a cgroup's memory limit that `maxMemory: auto` sheds at.
pub const AUTO_SHARE: f64 = 0.95;

/// cgroup v1 reports "no limit" as a huge number (the largest page-aligned `i64`): anything this
/// large is no limit.
const V1_UNLIMITED: u64 = 1 << 60;

/// The sampler: runs until dropped.
#[derive(Debug)]
pub struct MemoryGuard {
    limits: mpsc::Sender<MemoryLimit>,
    gauges: Gauges,
}

/// `weir_memory_resident_bytes` and `weir_memory_limit_bytes`.
#[derive(Clone, Debug, Default)]
struct Gauges {
    resident: Gauge<u64, AtomicU64>,
    limit: Gauge<u64, AtomicU64>,
}

impl MemoryGuard {
    /// Starts sampling with `limit`; sets `pressure` while over it.
    pub fn start(pressure: MemoryPressure, limit: MemoryLimit) -> std::io::Result<MemoryGuard> {
        let (limits, rx) = mpsc::channel();
        let gauges = Gauges::default();
        let sampler = Sampler {
            pressure,
            gauges: gauges.clone(),
            limit: None,
            over: false,
            cgroup: Cgroup::system(),
        };
        let _ = limits.send(limit);
        std::thread::Builder::new()
            .name("weir-memory".into())
            .spawn(move || sampler.run(&rx))?;
        Ok(MemoryGuard { limits, gauges })
    }

    /// Applies a new `limits.maxMemory` (resolved and checked at once on the sampler thread).
    pub fn set_limit(&self, limit: MemoryLimit) {
        let _ = self.limits.send(limit);
    }

    /// A handle for [`MemoryGuard::set_limit`] from another thread.
    pub fn limit_sender(&self) -> mpsc::Sender<MemoryLimit> {
        self.limits.clone()
    }

    /// Registers `weir_memory_resident_bytes` (sampled RSS) and `weir_memory_limit_bytes` (the
    /// limit in force, 0 when off).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weir_memory_resident_bytes",
            "Resident memory of weir, sampled every 250 ms",
            self.gauges.resident.clone(),
        );
        registry.register(
            "weir_memory_limit_bytes",
            "Resident memory above which new connections are shed (limits.maxMemory; 0: no limit)",
            self.gauges.limit.clone(),
        );
    }
}

struct Sampler {
    pressure: MemoryPressure,
    gauges: Gauges,
    /// The threshold in bytes, `None` when off.
    limit: Option<u64>,
    over: bool,
    cgroup: Cgroup,
}

impl Sampler {
    fn run(mut self, limits: &mpsc::Receiver<MemoryLimit>) {
        loop {
            match limits.recv_timeout(INTERVAL) {
                Ok(limit) => {
                    self.limit = self.resolve(limit);
                    self.gauges.limit.set(self.limit.unwrap_or(0));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.pressure.set(false);
                    return;
                }
            }
            let resident = resident_bytes();
            if let Some(resident) = resident {
                self.gauges.resident.set(resident);
            }
            self.check(resident);
        }
    }

    fn resolve(&self, limit: MemoryLimit) -> Option<u64> {
        match limit {
            MemoryLimit::Off => None,
            MemoryLimit::Bytes(n) => Some(n),
            MemoryLimit::Auto => {
                let cgroup = self.cgroup.limit()?;
                // Precision is irrelevant at this scale.
                #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
                let share = (cgroup as f64 * AUTO_SHARE) as u64;
                tracing::debug!(cgroup, share, "maxMemory: auto from the cgroup limit");
                Some(share)
            }
        }
    }

    /// Sets or clears the flag for a sample (`None`: RSS unknown, the flag clears).
    fn check(&mut self, resident: Option<u64>) {
        let over = match (self.limit, resident) {
            (Some(limit), Some(resident)) => next_state(self.over, resident, limit),
            _ => false,
        };
        if over != self.over {
            if over {
                tracing::warn!(
                    resident,
                    limit = self.limit,
                    "memory over limits.maxMemory: shedding new connections"
                );
            } else {
                tracing::info!(
                    resident,
                    limit = self.limit,
                    "memory back under limits.maxMemory: accepting connections again"
                );
            }
            self.over = over;
            self.pressure.set(over);
        }
    }
}

/// Whether the process is over its limit after a sample: over above `limit`; once over, until
/// below [`RESUME`] of it.
pub fn next_state(over: bool, resident: u64, limit: u64) -> bool {
    if resident > limit {
        return true;
    }
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    let resume = (limit as f64 * RESUME) as u64;
    over && resident >= resume
}

/// The process's resident memory in bytes (`VmRSS` of `/proc/self/status`), if known.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

/// `VmRSS:   1234 kB` → bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => n.checked_mul(1024),
        Some(_) => None,
    }
}

/// Where the process's cgroup is described: `/proc/self/cgroup` and the cgroup mount.
#[derive(Clone, Debug)]
pub struct Cgroup {
    /// `/proc/self/cgroup`.
    pub membership: PathBuf,
    /// The cgroup file system (`/sys/fs/cgroup`).
    pub root: PathBuf,
}

impl Cgroup {
    /// This process on this system.
    pub fn system() -> Cgroup {
        Cgroup {
            membership: PathBuf::from("/proc/self/cgroup"),
            root: PathBuf::from("/sys/fs/cgroup"),
        }
    }

    /// The memory limit of the process's cgroup in bytes: the lowest `memory.max` from its
    /// cgroup up to the root (v2), else the lowest `memory.limit_in_bytes` of the memory
    /// controller's hierarchy (v1); `None` when no limit is set or nothing can be read.
    pub fn limit(&self) -> Option<u64> {
        let membership = std::fs::read_to_string(&self.membership).ok()?;
        let (v2, v1) = parse_membership(&membership);
        if let Some(path) = v2 {
            if self.root.join("cgroup.controllers").exists() {
                return lowest(&self.root, &path, "memory.max");
            }
        }
        if let Some(path) = v1 {
            return lowest(&self.root.join("memory"), &path, "memory.limit_in_bytes");
        }
        None
    }
}

/// The v2 path (`0::PATH`) and the v1 memory controller's path (`N:…memory…:PATH`) of a
/// `/proc/self/cgroup`.
pub fn parse_membership(text: &str) -> (Option<String>, Option<String>) {
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

/// A limit file's value: `None` for `max`, v1's "unlimited", or anything unreadable.
pub fn parse_limit(text: &str) -> Option<u64> {
    let n: u64 = text.trim().parse().ok()?;
    (n < V1_UNLIMITED).then_some(n)
}

/// The lowest limit in `file` from `mount/path` up to `mount` (a namespaced cgroup's path may not
/// exist under the mount: then only the levels that do count, the mount's own included).
fn lowest(mount: &Path, path: &str, file: &str) -> Option<u64> {
    let mut dir = mount.to_path_buf();
    let mut levels = vec![dir.clone()];
    for part in path
        .split('/')
        .filter(|p| !p.is_empty() && *p != "." && *p != "..")
    {
        dir.push(part);
        levels.push(dir.clone());
    }
    levels
        .iter()
        .filter_map(|level| std::fs::read_to_string(level.join(file)).ok())
        .filter_map(|text| parse_limit(&text))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    fn cgroup(dir: &Path, membership: &str) -> Cgroup {
        write(dir, "proc/cgroup", membership);
        Cgroup {
            membership: dir.join("proc/cgroup"),
            root: dir.join("fs"),
        }
    }

    #[test]
    fn v2_lowest_memory_max_along_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cg = cgroup(dir.path(), "0::/system.slice/weir.service\n");
        write(dir.path(), "fs/cgroup.controllers", "cpu memory\n");
        write(dir.path(), "fs/system.slice/memory.max", "1073741824\n");
        write(
            dir.path(),
            "fs/system.slice/weir.service/memory.max",
            "max\n",
        );
        assert_eq!(cg.limit(), Some(1 << 30));
        write(
            dir.path(),
            "fs/system.slice/weir.service/memory.max",
            "536870912\n",
        );
        assert_eq!(cg.limit(), Some(512 << 20));
    }

    #[test]
    fn v2_in_a_namespace_and_without_a_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A container: its cgroup is the mount's root, which has a memory.max of its own.
        let cg = cgroup(dir.path(), "0::/\n");
        write(dir.path(), "fs/cgroup.controllers", "memory\n");
        assert_eq!(cg.limit(), None, "no memory.max anywhere");
        write(dir.path(), "fs/memory.max", "max\n");
        assert_eq!(cg.limit(), None, "max is no limit");
        write(dir.path(), "fs/memory.max", "268435456\n");
        assert_eq!(cg.limit(), Some(256 << 20));
    }

    #[test]
    fn v1_memory_controller_and_unlimited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cg = cgroup(
            dir.path(),
            "12:pids:/docker/abc\n4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n1:name=systemd:/docker/abc\n",
        );
        write(
            dir.path(),
            "fs/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        assert_eq!(cg.limit(), None, "v1 unlimited");
        write(
            dir.path(),
            "fs/memory/docker/abc/memory.limit_in_bytes",
            "104857600\n",
        );
        assert_eq!(cg.limit(), Some(100 << 20));
    }

    #[test]
    fn hybrid_prefers_v2_only_when_it_is_mounted_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        // systemd's hybrid layout: an empty v2 line, the memory controller on v1.
        let cg = cgroup(
            dir.path(),
            "5:memory:/user.slice\n0::/user.slice/session-1.scope\n",
        );
        write(
            dir.path(),
            "fs/memory/user.slice/memory.limit_in_bytes",
            "2147483648\n",
        );
        assert_eq!(cg.limit(), Some(2 << 30));
    }

    #[test]
    fn nothing_readable_is_no_limit() {
        let cg = Cgroup {
            membership: PathBuf::from("/nonexistent/cgroup"),
            root: PathBuf::from("/nonexistent"),
        };
        assert_eq!(cg.limit(), None);
        assert_eq!(parse_membership("garbage\n\n::\n"), (None, None));
        assert_eq!(parse_limit("-1"), None);
        assert_eq!(parse_limit(""), None);
    }

    #[test]
    fn resident_memory_and_hysteresis() {
        assert_eq!(
            parse_vm_rss("Name:\tweir\nVmRSS:\t   20480 kB\nVmData: 1 kB\n"),
            Some(20 << 20)
        );
        assert_eq!(parse_vm_rss("VmRSS: lots\n"), None);
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(
            resident_bytes().is_some_and(|n| n > 0),
            "this process has an RSS"
        );
        let limit = 1000;
        assert!(!next_state(false, 1000, limit));
        assert!(next_state(false, 1001, limit));
        assert!(next_state(true, 950, limit), "stays over above 90%");
        assert!(!next_state(true, 899, limit), "resumes below 90%");
        assert!(!next_state(false, 950, limit));
    }
}
