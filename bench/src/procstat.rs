//! CPU time of a process tree from `/proc/PID/stat` (utime + stime, in clock ticks).

use std::fs;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Clock ticks per second (`getconf CLK_TCK`), the unit of utime and stime.
pub fn clock_ticks() -> Result<u64> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("cannot run getconf CLK_TCK")?;
    if !out.status.success() {
        bail!("getconf CLK_TCK failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let ticks: u64 = text
        .trim()
        .parse()
        .with_context(|| format!("getconf CLK_TCK printed {text:?}"))?;
    if ticks == 0 {
        bail!("getconf CLK_TCK printed 0");
    }
    Ok(ticks)
}

/// The fields of `/proc/PID/stat` the harness needs.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    ppid: u32,
    /// utime + stime of all the process's threads, in clock ticks.
    ticks: u64,
}

fn read_stat(pid: u32) -> Result<Stat> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_stat(&text).with_context(|| format!("cannot parse {path}: {text:?}"))
}

fn parse_stat(text: &str) -> Result<Stat> {
    // The command name (field 2) is in parentheses and may contain spaces and parentheses: split after the last ')'.
    let (_, rest) = text
        .rsplit_once(')')
        .context("no ')' after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): ppid is field 4, utime field 14, stime field 15.
    let field = |n: usize| -> Result<u64> {
        let value = fields.get(n - 3).with_context(|| format!("no field {n}"))?;
        value
            .parse()
            .with_context(|| format!("field {n} is {value:?}"))
    };
    Ok(Stat {
        ppid: u32::try_from(field(4)?).context("ppid out of range")?,
        ticks: field(14)? + field(15)?,
    })
}

/// `root` and all its descendants (an nginx master and its workers; weir and HAProxy are one process).
pub fn tree(root: u32) -> Result<Vec<u32>> {
    let mut parents = Vec::new();
    for entry in fs::read_dir("/proc").context("cannot list /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes may exit while we scan; skip what cannot be read.
        if let Ok(stat) = read_stat(pid) {
            parents.push((pid, stat.ppid));
        }
    }
    let mut found = vec![root];
    let mut at = 0;
    while at < found.len() {
        let parent = found[at];
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        at += 1;
    }
    Ok(found)
}

/// Total utime + stime of `pids`, in clock ticks. Fails if one of them is gone.
pub fn cpu_ticks(pids: &[u32]) -> Result<u64> {
    pids.iter()
        .map(|pid| Ok(read_stat(*pid)?.ticks))
        .sum::<Result<u64>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line =
            "1234 (nginx: worker (x) ) S 1200 1200 1200 0 -1 4194624 150 0 0 0 37 12 0 0 20 0 1 0 \
                    5 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(
            parse_stat(line).unwrap(),
            Stat {
                ppid: 1200,
                ticks: 49
            }
        );
        assert!(parse_stat("1234 (x) S").is_err());
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(tree(me).unwrap().starts_with(&[me]));
        cpu_ticks(&[me]).unwrap();
    }
}
