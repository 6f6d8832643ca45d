//! `cargo xtask clean-netns`: remove what a crashed test or demo left
//! behind: network namespaces (with every process in them) and stray User
//! Mode Linux guests.
//!
//! Tests name their namespaces `umlbrt-<tag>-<pid>-<n>` (umlbr-tests'
//! `Netns`), <pid> being the test process: a namespace whose process is
//! gone is stale, one whose process runs belongs to a test still running
//! (maybe another developer's) and is left alone unless `--all`.
use anyhow::Result;
use umlbr_tests::netns::{self, PREFIX, alive, list, owner_pid};

use crate::util::{say, warn};

fn kill(pid: i32, what: &str) {
    // SAFETY: kill(2) with a pid read from the kernel; no memory involved.
    let r = unsafe { libc::kill(pid, libc::SIGKILL) };
    if r == 0 {
        say(format!("killed {what} {pid}"));
    }
}

/// Kill every process in namespace `name`, then delete it.
pub fn delete_netns(name: &str) {
    let (killed, ok) = netns::delete(name);
    for pid in killed {
        say(format!("killed process in {name}: {pid}"));
    }
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
    let existing = list();
    let mut targets: Vec<String> = existing
        .iter()
        .filter(|n| match owner_pid(n) {
            Some(pid) => all || !alive(pid),
            None => all && n.starts_with(PREFIX),
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
