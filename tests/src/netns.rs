//! Network namespaces owned by a test: created with a unique name, and
//! deleted (with every process still running in them) on drop, also when
//! the test panics. Also the one place that enters a namespace (`enter`,
//! `InNetns`, `Netns::run_in`), looks up an ifindex, and finds and deletes
//! the namespaces a crashed run left (`stale`, `delete`): tests, the bench
//! and xtask all use these.
use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Prefix of the namespaces `Netns::new` makes: `umlbrt-<tag>-<pid>-<n>`.
pub const PREFIX: &str = "umlbrt-";

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace `umlbrt-<tag>-<pid>-<n>` with `lo` up.
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!(
            "{PREFIX}{tag}-{}-{}",
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

    /// A new namespace as `new`, without IPv6 (no autoconfiguration
    /// traffic that would teach a bridge MACs while a test compares
    /// states).
    pub fn without_ipv6(tag: &str) -> Result<Self> {
        let ns = Netns::new(tag)?;
        ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")?;
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

    /// Start `argv` inside, stdin from /dev/null, stdout and stderr to
    /// the file `log` (created anew).
    pub fn spawn_logged(&self, argv: &[&str], log: &Path) -> Result<Child> {
        let f =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        self.cmd(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {argv:?} in {}", self.name))
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
        pids(&self.name)
    }

    /// Run `f` on a thread inside the namespace (network namespaces are
    /// per thread; the thread ends with `f`).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        run_in(&self.name, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for _ in 0..50 {
            if kill_all(&self.name).is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Move this thread into the namespace `name` (namespaces are per
/// thread), for good: a thread that must come back holds an `InNetns`.
pub fn enter(name: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{name}");
    let target = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: plain setns(2) on a valid fd; it affects only this thread.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Run `f` on a scoped thread inside the namespace `name`.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(name)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
    })
}

/// This thread in another network namespace until dropped (namespaces
/// are per thread, so a test can run BPF_PROG_TEST_RUN or open taps
/// inside one without touching the rest of the process).
pub struct InNetns {
    orig: std::os::fd::OwnedFd,
}

impl InNetns {
    pub fn enter(ns: &Netns) -> Result<Self> {
        let orig: std::os::fd::OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
            .context("opening this thread's netns")?
            .into();
        enter(&ns.name)?;
        Ok(InNetns { orig })
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: plain setns(2) back to the namespace the thread came from.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

// ---------------------------------------------------------------------------
// Namespaces left behind: `cargo xtask clean-netns`, `cargo xtask test`
// and the bench delete them.

/// The words `ip netns <args>` prints (none if it fails).
fn ip_netns(args: &[&str]) -> Vec<String> {
    Command::new("ip")
        .arg("netns")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .flat_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Names of the network namespaces `ip netns` knows.
pub fn list() -> Vec<String> {
    ip_netns(&["list"])
}

/// Pids of the processes running in namespace `name`.
pub fn pids(name: &str) -> Vec<i32> {
    ip_netns(&["pids", name])
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILL every process in namespace `name`; the pids it signalled.
pub fn kill_all(name: &str) -> Vec<i32> {
    pids(name)
        .into_iter()
        // SAFETY: plain kill(2) with a pid read from the kernel.
        .filter(|&p| unsafe { libc::kill(p, libc::SIGKILL) } == 0)
        .collect()
}

/// Kill every process in namespace `name`, then delete it: the pids
/// killed, and whether `ip netns del` succeeded.
pub fn delete(name: &str) -> (Vec<i32>, bool) {
    let killed = kill_all(name);
    let ok = Command::new("ip")
        .args(["netns", "del", name])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (killed, ok)
}

/// The pid in `umlbrt-<tag>-<pid>-<n>` (the tag may contain dashes).
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut it = rest.rsplit('-');
    it.next()?.parse::<u32>().ok()?;
    let pid = it.next()?.parse().ok()?;
    it.next()?; // the tag
    Some(pid)
}

/// Whether process `pid` runs.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Namespaces `umlbrt-<tag>-<pid>-<n>` whose process is gone.
pub fn stale() -> Vec<String> {
    list()
        .into_iter()
        .filter(|n| owner_pid(n).is_some_and(|p| !alive(p)))
        .collect()
}

/// Every frame waiting in a (non-blocking) tap's queue, until it stays
/// empty for `quiet`.
pub fn drain(tap: &mut std::fs::File, quiet: std::time::Duration) -> Vec<Vec<u8>> {
    use std::io::Read;
    let mut frames = Vec::new();
    let mut buf = [0u8; 2048];
    let mut last = std::time::Instant::now();
    while last.elapsed() < quiet {
        match tap.read(&mut buf) {
            Ok(n) => {
                frames.push(buf[..n].to_vec());
                last = std::time::Instant::now();
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
    frames
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

/// A non-blocking raw packet socket (AF_PACKET, SOCK_RAW) for
/// `protocol` (ETH_P_*) bound to device `ifindex` in the current thread's
/// namespace.
pub fn packet_socket(ifindex: u32, protocol: i32) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let proto = (protocol as u16).to_be();
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            proto as i32,
        )
    };
    anyhow::ensure!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero sockaddr_ll is valid.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto;
    sa.sll_ifindex = ifindex as i32;
    // SAFETY: valid fd and address.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    anyhow::ensure!(
        r == 0,
        "binding AF_PACKET to ifindex {ifindex}: {}",
        std::io::Error::last_os_error()
    );
    Ok(fd)
}

/// The ifindex of `name` in the current thread's namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    anyhow::ensure!(
        i != 0,
        "no interface {name}: {}",
        std::io::Error::last_os_error()
    );
    Ok(i)
}

/// The ids of the XDP programs on a link, from its object in
/// `ip -j -d link` (every "id" under "xdp").
pub fn xdp_prog_ids(link: &serde_json::Value) -> Vec<u64> {
    fn walk(v: &serde_json::Value, out: &mut Vec<u64>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    if k == "id" {
                        out.extend(x.as_u64());
                    } else {
                        walk(x, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut ids = Vec::new();
    walk(&link["xdp"], &mut ids);
    ids
}

#[cfg(test)]
mod tests {
    use super::{owner_pid, xdp_prog_ids};

    #[test]
    fn owner_pids() {
        assert_eq!(owner_pid("umlbrt-fdb-1234-0"), Some(1234));
        assert_eq!(owner_pid("umlbrt-two-words-99-12"), Some(99));
        assert_eq!(owner_pid("umlbrt-bench-77-3"), Some(77));
        assert_eq!(owner_pid("umlbrt-1234-0"), None);
        assert_eq!(owner_pid("host"), None);
        assert_eq!(owner_pid("umlbrt-x-y-0"), None);
    }

    #[test]
    fn xdp_prog_ids_are_every_id_under_xdp() {
        let link = serde_json::json!({
            "ifindex": 3,
            "xdp": {"mode": 1, "prog": {"id": 7}, "attached": [{"prog": {"id": 9}}]},
            "id": 1
        });
        let mut ids = xdp_prog_ids(&link);
        ids.sort_unstable();
        assert_eq!(ids, vec![7, 9]);
        assert!(xdp_prog_ids(&serde_json::json!({"ifindex": 3})).is_empty());
    }
}
