//! Network namespaces owned by a test: created with a unique name, and
//! deleted (with every process still running in them) on drop, also when
//! the test panics.
use std::{
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace `umlbrt-<tag>-<pid>-<n>` with `lo` up.
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!(
            "umlbrt-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .context("running ip netns add")?;
        if !st.success() {
            bail!("ip netns add {name} failed");
        }
        let ns = Netns { name };
        ns.sh("ip link set lo up")?;
        Ok(ns)
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Run `sh -c script` inside; Ok(stdout) if it exits 0.
    pub fn sh(&self, script: &str) -> Result<String> {
        let out = self.sh_output(script)?;
        if !out.status.success() {
            bail!(
                "in netns {}: `{script}` failed ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Run `sh -c script` inside and return its output whatever the status.
    pub fn sh_output(&self, script: &str) -> Result<Output> {
        self.cmd("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running `{script}` in netns {}", self.name))
    }

    /// Run the umlbr binary inside with `args`.
    pub fn umlbr(&self, args: &[&str]) -> Result<Output> {
        self.cmd(crate::umlbr_bin().to_str().unwrap())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running umlbr {args:?} in netns {}", self.name))
    }

    /// Run umlbr inside; Ok(stdout) if it exits 0.
    pub fn umlbr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.umlbr(args)?;
        if !out.status.success() {
            bail!(
                "umlbr {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Pids of processes running in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
