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

/// This thread in another network namespace until dropped (namespaces
/// are per thread, so a test can run BPF_PROG_TEST_RUN or open taps
/// inside one without touching the rest of the process).
pub struct InNetns {
    orig: std::os::fd::OwnedFd,
}

impl InNetns {
    pub fn enter(ns: &Netns) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let orig: std::os::fd::OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
            .context("opening this thread's netns")?
            .into();
        let target = std::fs::File::open(format!("/run/netns/{}", ns.name))
            .with_context(|| format!("opening netns {}", ns.name))?;
        // SAFETY: plain setns(2) on valid fds; it affects only this thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {}: {}", ns.name, std::io::Error::last_os_error());
        }
        Ok(InNetns { orig })
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// A non-blocking tap (IFF_TAP | IFF_NO_PI) in the current thread's
/// namespace; the device lives as long as the fd.
pub fn open_tap(name: &str) -> Result<std::fs::File> {
    use std::os::{fd::AsRawFd, unix::fs::OpenOptionsExt};
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    // SAFETY: all-zero ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: valid fd and ifreq.
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &ifr) } < 0 {
        bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    }
    Ok(f)
}

/// The ifindex of `name` in the current thread's namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    anyhow::ensure!(i != 0, "no interface {name}");
    Ok(i)
}
