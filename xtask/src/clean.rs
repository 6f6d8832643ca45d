//! `cargo xtask clean-netns`: remove what a crashed test or demo left
//! behind: network namespaces (with every process in them) and stray User
//! Mode Linux guests.
//!
//! Tests name their namespaces `umlbrt-<tag>-<pid>-<n>` (umlbr-tests'
//! `Netns`), <pid> being the test process: a namespace whose process is
//! gone is stale, one whose process runs belongs to a test still running
//! (maybe another developer's) and is left alone unless `--all`.
use std::{path::Path, process::Command};

use anyhow::Result;

use crate::util::{probe, say, warn};

/// Prefix of the test namespaces.
pub const TEST_PREFIX: &str = "umlbrt-";

/// Names of the network namespaces `ip netns` knows.
pub fn list_netns() -> Vec<String> {
    probe(Command::new("ip").args(["netns", "list"]))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The pid in `umlbrt-<tag>-<pid>-<n>` (the tag may contain dashes).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TEST_PREFIX)?;
    let mut it = rest.rsplit('-');
    it.next()?.parse::<u32>().ok()?;
    let pid = it.next()?.parse().ok()?;
    it.next()?; // the tag
    Some(pid)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Test namespaces whose test process is gone.
pub fn stale_test_netns() -> Vec<String> {
    list_netns()
        .into_iter()
        .filter(|n| owner_pid(n).is_some_and(|p| !alive(p)))
        .collect()
}

fn kill(pid: i32, what: &str) {
    // SAFETY: kill(2) with a pid read from the kernel; no memory involved.
    let r = unsafe { libc::kill(pid, libc::SIGKILL) };
    if r == 0 {
        say(format!("killed {what} {pid}"));
    }
}

/// Kill every process in namespace `name`, then delete it.
pub fn delete_netns(name: &str) {
    let pids = probe(Command::new("ip").args(["netns", "pids", name])).unwrap_or_default();
    for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        kill(pid, &format!("process in {name}:"));
    }
    let ok = Command::new("ip")
        .args(["netns", "del", name])
        .stdin(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        say(format!("deleted netns {name}"));
    } else {
        warn(format!("could not delete netns {name}"));
    }
}

/// Pids of every running User Mode Linux kernel (and its helpers).
fn uml_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            exe.file_name().is_some_and(|f| f == "linux.uml")
                || exe.to_string_lossy().starts_with("/usr/bin/linux.uml")
                || comm.trim() == "linux.uml"
        })
        .collect()
}

/// `cargo xtask clean-netns`: stale test namespaces, or with `all` every
/// test namespace and every UML guest, plus the namespaces in `extra`.
pub fn run(all: bool, extra: &[String]) -> Result<()> {
    crate::util::require_root("clean-netns", "it deletes network namespaces")?;
    let existing = list_netns();
    let mut targets: Vec<String> = existing
        .iter()
        .filter(|n| match owner_pid(n) {
            Some(pid) => all || !alive(pid),
            None => all && n.starts_with(TEST_PREFIX),
        })
        .cloned()
        .collect();
    for e in extra {
        if existing.contains(e) {
            targets.push(e.clone());
        } else {
            warn(format!("no network namespace named {e}"));
        }
    }
    let live = existing
        .iter()
        .filter(|n| owner_pid(n).is_some_and(alive) && !targets.contains(n))
        .count();
    for n in &targets {
        delete_netns(n);
    }
    if all {
        for pid in uml_pids() {
            kill(pid, "stray linux.uml");
        }
    }
    say(format!(
        "clean-netns: removed {} namespace(s){}",
        targets.len(),
        if live > 0 {
            format!("; left {live} of running tests alone (--all removes them too)")
        } else {
            String::new()
        }
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pids() {
        assert_eq!(owner_pid("umlbrt-fdb-1234-0"), Some(1234));
        assert_eq!(owner_pid("umlbrt-two-words-99-12"), Some(99));
        assert_eq!(owner_pid("umlbrt-1234-0"), None);
        assert_eq!(owner_pid("host"), None);
        assert_eq!(owner_pid("umlbrt-x-y-0"), None);
    }
}
