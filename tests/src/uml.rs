//! Real User Mode Linux guests on TUN/TAP, for the end-to-end tests and the
//! demo.
//!
//! A guest is Debian's `/usr/bin/linux.uml` booted on the host's own root
//! through hostfs, inside a network namespace (`ip netns exec NS
//! linux.uml ...`, so that it finds its tap there), with an init script of
//! ours. Each guest has a private directory on the host (under $TMPDIR),
//! seen at the same path inside the guest, through which it talks to us:
//!
//! * `init.sh`: the guest's init. It mounts the guest's own /proc, /sys and
//!   a tmpfs on /run, configures lo and the network interface (address,
//!   default route), writes `ready`, then polls `cmd/` for `N.sh` files
//!   (N = 0, 1, 2...) and runs each with `sh` in the background, writing
//!   `N.out` (stdout and stderr), `N.pid` and, when it ends, `N.rc`. A file
//!   `halt` powers the guest off.
//! * `console.log`: the UML kernel's console (boot log and errors).
//! * `tmp/`: the guest commands' $TMPDIR, $HOME and working directory, so
//!   that they write nothing outside the guest's directory.
//! * the umid directory of UML (`uml_dir=`), with its pid file and
//!   mconsole socket, instead of ~/.uml.
//!
//! Two network transports: [`Transport::Legacy`] (`eth0=tuntap,TAP,MAC`: a
//! plain tap, one frame per read/write, the interface is `eth0`) and
//! [`Transport::Vector`] (`vec0:transport=tap,ifname=TAP,mac=MAC,gro=1`:
//! the tap is opened with IFF_VNET_HDR and TSO/checksum offloads, so the
//! guest sends and takes GSO super-frames and partial checksums; the
//! interface is `vec0`). `gro=1` is needed: without it UML still turns TSO
//! on for the tap but cannot take the GSO frames the host then hands it,
//! and TCP between two vector guests stalls (on the kernel bridge too).
//! A tap keeps the offloads a vector guest set on it: use a fresh tap for a
//! guest of the other transport.
//!
//! Every command available on the host runs in the guest (the guest's / is
//! the host's /): `ip`, `iperf3`, `tcpdump`, `ping` (iputils, which
//! `cargo xtask setup` installs), busybox's `udhcpc` and `traceroute`...
//!
//! # The xstate workaround
//!
//! UML 6.1 (Debian 12) restores a guest process's FPU registers with
//! `ptrace(PTRACE_SETREGSET, NT_X86_XSTATE)` and a buffer of the size of
//! an AVX (not AVX-512) XSAVE area; the host kernel rejects any size but its
//! own (EFAULT), so on an AVX-512 host every guest panics at once in init
//! ("ptrace set fp regs failed, errno = 14"). We start linux.uml under a
//! seccomp filter that fails NT_X86_XSTATE get/set requests with EIO: UML
//! then uses PTRACE_GETFPREGS/SETFPREGS (x87 and SSE state only). That is
//! exact for SSE code, but the upper halves of the AVX registers are lost
//! on every page fault of a guest process (UML's fault stub runs a signal
//! handler, which resets the vector state), so the guest's glibc is told by
//! GLIBC_TUNABLES not to use AVX, AVX2 or AVX-512 string functions. Debian
//! binaries are built for baseline x86-64; with both, guests run ip,
//! iperf3, tcpdump, busybox... correctly on AVX-512 and older hosts alike.
//!
//! Guests are killed when dropped (and, unless [`GuestSpec::keep`], when
//! the thread that started them exits: start them from the thread that
//! owns them). Every wait is bounded.
use std::{
    fs,
    io::Write,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Debian's User Mode Linux kernel (package user-mode-linux).
pub const LINUX_UML: &str = "/usr/bin/linux.uml";
/// How long a guest may take to boot and configure its network.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound for [`Guest::run`].
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Keeps the guest's glibc off AVX (see the module doc).
pub const GLIBC_TUNABLES: &str = "glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,\
-AVX512DQ,-AVX512CD,-FMA,-AVX_Fast_Unaligned_Load";

/// Set (e.g. from a SIGINT handler) to make every wait of this module
/// give up at once with an error, so that guards run their cleanup.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

static SEQ: AtomicU32 = AtomicU32::new(0);

const POLL: Duration = Duration::from_millis(50);

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// How a guest's network interface talks to its tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `eth0=tuntap,TAP,MAC`: a plain tap, no offloads; `eth0` in the guest.
    Legacy,
    /// `vec0:transport=tap,...,gro=1`: IFF_VNET_HDR with TSO and checksum
    /// offloads (GSO frames both ways); `vec0` in the guest.
    Vector,
}

impl Transport {
    /// The interface's name inside the guest.
    pub fn iface(self) -> &'static str {
        match self {
            Transport::Legacy => "eth0",
            Transport::Vector => "vec0",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Legacy => "legacy",
            Transport::Vector => "vector",
        }
    }

    fn kernel_arg(self, tap: &str, mac: &str) -> String {
        match self {
            Transport::Legacy => format!("eth0=tuntap,{tap},{mac}"),
            Transport::Vector => format!("vec0:transport=tap,ifname={tap},mac={mac},gro=1"),
        }
    }
}

/// What to boot: see [`Guest::boot`].
#[derive(Clone, Debug)]
pub struct GuestSpec {
    /// A short name, for messages and the umid.
    pub name: String,
    pub transport: Transport,
    /// The tap (in the namespace) the guest opens.
    pub tap: String,
    /// The guest interface's MAC, e.g. `02:00:00:00:00:02`.
    pub mac: String,
    /// The guest's address, e.g. `192.168.2.2/24`.
    pub ip_cidr: String,
    /// Default route.
    pub gateway: Option<String>,
    /// Run linux.uml as this host user: it can then open the tap only if
    /// the tap is the user's (or the user's group's). Since the machine's
    /// /dev/net/tun is often root-only (mode 0600), the guest gets a node
    /// of its own that anyone may open, bind-mounted over /dev/net/tun in
    /// the private mount namespace `ip netns exec` makes: the tap's owner
    /// check (TUNSETIFF) alone decides, as on a host where /dev/net/tun is
    /// 0666 or the user is in its group.
    pub user: Option<String>,
    /// Leave the guest running when the [`Guest`] is dropped or the process
    /// exits (the demo's --keep).
    pub keep: bool,
    /// Guest memory in MiB.
    pub mem_mb: u32,
    /// Load the guest kernel's ipv6 module (and crc-ccitt, which it
    /// needs) in init and leave IPv6 on; otherwise the guest has none.
    pub ipv6: bool,
}

impl GuestSpec {
    pub fn new(name: &str, transport: Transport, tap: &str, mac: &str, ip_cidr: &str) -> Self {
        GuestSpec {
            name: name.into(),
            transport,
            tap: tap.into(),
            mac: mac.into(),
            ip_cidr: ip_cidr.into(),
            gateway: None,
            user: None,
            keep: false,
            mem_mb: 160,
            ipv6: false,
        }
    }

    /// A guest whose init gives its interface no address (it is up, and
    /// gets one from DHCP or SLAAC in the test): `ip` is empty.
    pub fn unaddressed(name: &str, transport: Transport, tap: &str, mac: &str) -> Self {
        GuestSpec::new(name, transport, tap, mac, "")
    }

    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = on;
        self
    }

    pub fn gateway(mut self, gw: &str) -> Self {
        self.gateway = Some(gw.into());
        self
    }

    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }

    pub fn keep(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }
}

/// A running UML guest. Dropping it powers it off (or kills it) and
/// removes its directory.
pub struct Guest {
    pub name: String,
    pub transport: Transport,
    pub tap: String,
    pub mac: String,
    /// The address without prefix length.
    pub ip: String,
    /// The interface name inside the guest (`eth0` or `vec0`).
    pub iface: &'static str,
    pub netns: String,
    dir: PathBuf,
    child: Option<Child>,
    next: AtomicU32,
    keep: bool,
    ready: bool,
}

impl Guest {
    /// Boot a guest in network namespace `netns` and wait (at most
    /// [`BOOT_TIMEOUT`]) until its init has configured the network.
    pub fn boot(netns: &str, spec: &GuestSpec) -> Result<Guest> {
        let mut g = Guest::start(netns, spec)?;
        g.wait_ready(BOOT_TIMEOUT)?;
        Ok(g)
    }

    /// Boot several guests at once (faster than one after the other).
    pub fn boot_all(netns: &str, specs: &[GuestSpec]) -> Result<Vec<Guest>> {
        let mut guests = Vec::new();
        for s in specs {
            guests.push(Guest::start(netns, s)?);
        }
        for g in &mut guests {
            g.wait_ready(BOOT_TIMEOUT)?;
        }
        Ok(guests)
    }

    /// Start linux.uml; [`Guest::wait_ready`] waits for the boot.
    pub fn start(netns: &str, spec: &GuestSpec) -> Result<Guest> {
        check_interrupted()?;
        if !Path::new(LINUX_UML).exists() {
            bail!("{LINUX_UML} is missing: install Debian's user-mode-linux (cargo xtask setup)");
        }
        let (ip, _) = match spec.ip_cidr.as_str() {
            "" => ("", ""),
            c => c
                .split_once('/')
                .with_context(|| format!("guest address {c} has no /prefix"))?,
        };
        let umid = format!(
            "{}-{}-{}",
            spec.name,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("umlbr-uml-{umid}"));
        if dir.exists() {
            fs::remove_dir_all(&dir).ok();
        }
        for d in [dir.clone(), dir.join("cmd"), dir.join("tmp")] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755))?;
        }
        let mut guest = Guest {
            name: spec.name.clone(),
            transport: spec.transport,
            tap: spec.tap.clone(),
            mac: spec.mac.clone(),
            ip: ip.to_string(),
            iface: spec.transport.iface(),
            netns: netns.to_string(),
            dir: dir.clone(),
            child: None,
            next: AtomicU32::new(0),
            keep: spec.keep,
            ready: false,
        };
        let init = dir.join("init.sh");
        fs::write(&init, init_script(spec, &dir))?;
        fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
        if spec.user.is_some() {
            make_tun_node(&dir.join("tun"))?;
        }
        if let Some(user) = &spec.user {
            let out = Command::new("chown")
                .args(["-R", user])
                .arg(&dir)
                .output()
                .context("running chown")?;
            if !out.status.success() {
                bail!(
                    "chown -R {user} {}: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let console = fs::File::create(dir.join("console.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]);
        if let Some(user) = &spec.user {
            // setpriv --regid wants a group: the user's primary group.
            let gid = Command::new("id")
                .args(["-g", user])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .with_context(|| format!("no such user {user}"))?;
            cmd.args(["sh", "-c", r#"mount --bind "$0" /dev/net/tun && exec "$@""#])
                .arg(dir.join("tun"));
            cmd.args([
                "setpriv",
                "--reuid",
                user,
                "--regid",
                &gid,
                "--clear-groups",
            ]);
        }
        cmd.arg(LINUX_UML)
            .arg(format!("umid={umid}"))
            .arg(format!("uml_dir={}", dir.display()))
            .arg(format!("mem={}M", spec.mem_mb))
            .args(["root=/dev/root", "rootfstype=hostfs", "rootflags=/", "rw"])
            .arg(format!("init={}", init.display()))
            .arg(format!("GLIBC_TUNABLES={GLIBC_TUNABLES}"))
            .arg(spec.transport.kernel_arg(&spec.tap, &spec.mac))
            .args(["con=null", "con0=null,fd:1"])
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .process_group(0);
        let filter = xstate_filter();
        let die_with_parent = !spec.keep;
        // SAFETY: only async-signal-safe calls (prctl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                install_filter(&filter)
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {LINUX_UML} for guest {}", spec.name))?;
        guest.child = Some(child);
        Ok(guest)
    }

    /// Wait until the guest's init has written `ready` (network configured).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            if self.dir.join("ready").exists() {
                self.ready = true;
                return Ok(());
            }
            if let Ok(why) = fs::read_to_string(self.dir.join("failed")) {
                bail!(
                    "guest {}: init failed: {}\n{}",
                    self.name,
                    why.trim(),
                    self.console_tail(30)
                );
            }
            if let Some(child) = self.child.as_mut()
                && let Some(st) = child.try_wait()?
            {
                bail!(
                    "guest {}: linux.uml exited during boot ({st})\n{}",
                    self.name,
                    self.console_tail(30)
                );
            }
            if t0.elapsed() > timeout {
                bail!(
                    "guest {}: not ready after {timeout:?}\n{}",
                    self.name,
                    self.console_tail(30)
                );
            }
            check_interrupted()?;
            std::thread::sleep(POLL);
        }
    }

    /// The guest's private directory on the host (and in the guest).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pid of the linux.uml process (also its process group).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The last `n` lines of the guest's console.
    pub fn console_tail(&self, n: usize) -> String {
        let s = fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!(
            "--- console of guest {} ({}) ---\n{}",
            self.name,
            self.dir.join("console.log").display(),
            lines[from..].join("\n")
        )
    }

    /// Start `script` (sh) in the guest in the background.
    pub fn spawn(&self, script: &str) -> Result<Bg<'_>> {
        check_interrupted()?;
        if let Some(err) = self.dead() {
            bail!("guest {}: {err}", self.name);
        }
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let cmd = self.dir.join("cmd");
        let body = format!("echo $$ > {}/{n}.pid\n{script}\n", cmd.display());
        let tmp = cmd.join(format!("{n}.sh.tmp"));
        fs::File::create(&tmp)?.write_all(body.as_bytes())?;
        fs::rename(&tmp, cmd.join(format!("{n}.sh")))?;
        Ok(Bg { guest: self, n })
    }

    /// Run `script` in the guest; (exit status, stdout+stderr). Bounded by
    /// [`RUN_TIMEOUT`].
    pub fn run(&self, script: &str) -> Result<(i32, String)> {
        self.run_timeout(script, RUN_TIMEOUT)
    }

    pub fn run_timeout(&self, script: &str, timeout: Duration) -> Result<(i32, String)> {
        self.spawn(script)?.wait(timeout)
    }

    /// A one-shot iperf3 server (`iperf3 -s -1`) in the guest, listening.
    pub fn iperf3_server(&self) -> Result<Bg<'_>> {
        let srv = self.spawn("exec iperf3 -s -1 --forceflush")?;
        srv.wait_output("Server listening", Duration::from_secs(20))?;
        Ok(srv)
    }

    /// `iperf3 -c <server's address> -t <secs> <args>` from this guest
    /// against a one-shot server in `server`: (exit status, output).
    pub fn iperf3_to(&self, server: &Guest, secs: u32, args: &str) -> Result<(i32, String)> {
        let srv = server.iperf3_server()?;
        let r = self.run_timeout(
            &format!("iperf3 -c {} -t {secs} {args}", server.ip),
            Duration::from_secs(secs as u64 + 40),
        );
        let _ = srv.wait(Duration::from_secs(10));
        r
    }

    /// Run `script` in the guest; its output if it exits 0.
    pub fn run_ok(&self, script: &str) -> Result<String> {
        let (rc, out) = self.run(script)?;
        if rc != 0 {
            bail!("guest {}: `{script}` exited {rc}: {out}", self.name);
        }
        Ok(out)
    }

    /// Why the guest is not running any more, if it is not.
    fn dead(&self) -> Option<String> {
        let child = self.child.as_ref()?;
        // try_wait needs &mut; a kill(pid, 0) probe does not reap.
        // SAFETY: plain kill(2) with signal 0.
        let alive = unsafe { libc::kill(child.id() as i32, 0) } == 0;
        let zombie = fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .map(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
                    .unwrap_or(false)
            })
            .unwrap_or(true);
        if !alive || zombie {
            Some(format!("linux.uml is gone\n{}", self.console_tail(20)))
        } else {
            None
        }
    }

    /// Power the guest off (at most ~3 s, then SIGKILL) and reap it.
    pub fn halt(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = fs::write(self.dir.join("halt"), b"");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(POLL);
        }
        // Whatever is left of it: UML's helper and address-space processes
        // share its process group.
        // SAFETY: plain kill(2) of our child's process group.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Leave the guest running after this handle is gone (demo --keep).
    pub fn leak(mut self) {
        self.keep = true;
        if let Some(c) = self.child.take() {
            std::mem::forget(c);
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        self.halt();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A command running in a guest, started by [`Guest::spawn`].
pub struct Bg<'a> {
    guest: &'a Guest,
    n: u32,
}

impl Bg<'_> {
    fn path(&self, ext: &str) -> PathBuf {
        self.guest.dir.join("cmd").join(format!("{}.{ext}", self.n))
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        fs::read_to_string(self.path("out")).unwrap_or_default()
    }

    /// Its exit status, once it has ended.
    pub fn status(&self) -> Option<i32> {
        let s = fs::read_to_string(self.path("rc")).ok()?;
        Some(s.trim().parse().unwrap_or(-1))
    }

    /// Wait for it to end: (exit status, output).
    pub fn wait(&self, timeout: Duration) -> Result<(i32, String)> {
        let t0 = Instant::now();
        let mut i = 0u64;
        loop {
            i += 1;
            if let Some(rc) = self.status() {
                return Ok((rc, self.output()));
            }
            if t0.elapsed() > timeout {
                let _ = self.signal("KILL");
                bail!(
                    "guest {}: command {} did not end within {timeout:?}; output so far:\n{}",
                    self.guest.name,
                    self.n,
                    self.output()
                );
            }
            if i.is_multiple_of(20)
                && let Some(err) = self.guest.dead()
            {
                bail!("guest {}: {err}", self.guest.name);
            }
            check_interrupted()?;
            std::thread::sleep(POLL);
        }
    }

    /// Wait until its output contains `needle` (e.g. a server's "listening").
    pub fn wait_output(&self, needle: &str, timeout: Duration) -> Result<String> {
        let t0 = Instant::now();
        loop {
            let out = self.output();
            if out.contains(needle) {
                return Ok(out);
            }
            if let Some(rc) = self.status() {
                bail!(
                    "guest {}: command {} ended ({rc}) before printing {needle:?}:\n{out}",
                    self.guest.name,
                    self.n
                );
            }
            if t0.elapsed() > timeout {
                bail!(
                    "guest {}: command {} did not print {needle:?} within {timeout:?}:\n{out}",
                    self.guest.name,
                    self.n
                );
            }
            check_interrupted()?;
            std::thread::sleep(POLL);
        }
    }

    /// Send signal `sig` (e.g. "INT", "KILL") to the command's processes.
    pub fn signal(&self, sig: &str) -> Result<()> {
        let pid = fs::read_to_string(self.path("pid")).unwrap_or_default();
        let pid = pid.trim();
        if pid.is_empty() || self.status().is_some() {
            return Ok(());
        }
        self.guest.run_timeout(
            &format!("pkill -{sig} -P {pid}; kill -{sig} {pid} 2>/dev/null; true"),
            Duration::from_secs(20),
        )?;
        Ok(())
    }

    /// Stop it (SIGINT, then SIGKILL) and return its output.
    pub fn stop(&self) -> Result<String> {
        self.signal("INT")?;
        match self.wait(Duration::from_secs(5)) {
            Ok((_, out)) => Ok(out),
            Err(_) => {
                self.signal("KILL")?;
                Ok(self.wait(Duration::from_secs(5))?.1)
            }
        }
    }
}

/// A character device node for /dev/net/tun (10:200) that anyone may open.
fn make_tun_node(path: &Path) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: mknod(2) with a valid C string.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(10, 200)) };
    if r != 0 {
        bail!(
            "mknod {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))?;
    Ok(())
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn init_script(spec: &GuestSpec, dir: &Path) -> String {
    let d = sh_quote(&dir.display().to_string());
    let ifc = spec.transport.iface();
    let gw = match &spec.gateway {
        Some(gw) => format!(
            "ip route add default via {} || fail \"default route via {}\"\n",
            sh_quote(gw),
            gw
        ),
        None => String::new(),
    };
    format!(
        r#"#!/bin/sh
# init of the UML guest {name}, written by umlbr-tests (tests/src/uml.rs)
D={d}
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$D/tmp" TMPDIR="$D/tmp"
export GLIBC_TUNABLES={tunables}
fail() {{
    echo "$*" > "$D/failed.tmp"; mv "$D/failed.tmp" "$D/failed"
    exec busybox poweroff -f
}}
# Until these are mounted, /proc and /sys are the host's (through hostfs):
# never write there before.
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t tmpfs -o mode=755 tmpfs /run || fail "mount /run"
[ -d /sys/class/net/{ifc} ] || fail "no {ifc}: $(ls /sys/class/net)"
{v6}ip link set lo up || fail "lo up"
ip link set {ifc} address {mac} || fail "mac {mac}"
{addr}ip link set {ifc} up || fail "{ifc} up"
{gw}ip -o addr show dev {ifc} > "$D/ready.tmp" && mv "$D/ready.tmp" "$D/ready"
n=0
while :; do
    if [ -e "$D/cmd/$n.sh" ]; then
        ( cd "$D/tmp"; sh "$D/cmd/$n.sh" < /dev/null > "$D/cmd/$n.out" 2>&1
          echo $? > "$D/cmd/$n.rc.tmp"; mv "$D/cmd/$n.rc.tmp" "$D/cmd/$n.rc" ) &
        n=$((n+1))
    elif [ -e "$D/halt" ]; then
        exec busybox poweroff -f
    else
        sleep 0.05
    fi
done
"#,
        name = spec.name,
        tunables = sh_quote(GLIBC_TUNABLES),
        mac = sh_quote(&spec.mac),
        addr = match spec.ip_cidr.as_str() {
            "" => String::new(),
            c => format!(
                "ip addr add {} dev {ifc} || fail \"address {c}\"\n",
                sh_quote(c)
            ),
        },
        v6 = if spec.ipv6 {
            // Debian's UML kernel has IPv6 as a module; the host's root has
            // no /lib/modules for it, so by path.
            "M=/usr/lib/uml/modules/$(uname -r)/kernel\n\
             insmod $M/lib/crc-ccitt.ko 2>/dev/null\n\
             insmod $M/net/ipv6/ipv6.ko || fail \"insmod ipv6\"\n"
        } else {
            "for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 \
             /proc/sys/net/ipv6/conf/default/disable_ipv6; do\n    \
             [ -e $f ] && echo 1 > $f\ndone\n"
        },
    )
}

// Classic BPF for the seccomp filter.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const NR_PTRACE: u32 = 101;
const PTRACE_GETREGSET: u32 = 0x4204;
const PTRACE_SETREGSET: u32 = 0x4205;
const NT_X86_XSTATE: u32 = 0x202;
// struct seccomp_data: nr @0, arch @4, args[i] @16 + 8 i.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0: u32 = 16;
const OFF_ARG2: u32 = 32;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: BPF_JEQ_K,
        jt,
        jf,
        k,
    }
}

/// ptrace(PTRACE_{GET,SET}REGSET, pid, NT_X86_XSTATE, ...) fails with EIO;
/// everything else is allowed (see the module doc).
fn xstate_filter() -> Vec<libc::sock_filter> {
    let allow = stmt(BPF_RET_K, SECCOMP_RET_ALLOW);
    vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jeq(AUDIT_ARCH_X86_64, 1, 0),
        allow,
        stmt(BPF_LD_W_ABS, OFF_NR),
        jeq(NR_PTRACE, 1, 0),
        allow,
        stmt(BPF_LD_W_ABS, OFF_ARG0),
        jeq(PTRACE_GETREGSET, 2, 0),
        jeq(PTRACE_SETREGSET, 1, 0),
        allow,
        stmt(BPF_LD_W_ABS, OFF_ARG2),
        jeq(NT_X86_XSTATE, 1, 0),
        allow,
        stmt(BPF_RET_K, libc::SECCOMP_RET_ERRNO | libc::EIO as u32),
    ]
}

/// Between fork and exec: only prctl.
fn install_filter(filter: &[libc::sock_filter]) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with a valid sock_fprog that outlives the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Parse busybox/iputils ping's summary: (transmitted, received).
pub fn ping_counts(out: &str) -> Option<(u32, u32)> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    Some((*nums.first()?, *nums.get(1)?))
}

/// Sequence numbers of the replies a ping printed (`seq=N`).
pub fn ping_seqs(out: &str) -> std::collections::BTreeSet<u32> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            let rest = &l[l.find("seq=")? + 4..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
        .collect()
}

/// A ping command whose every reply must come, and how it numbers its
/// requests (icmp_seq).
#[derive(Clone, Copy, Debug)]
pub enum Ping {
    /// iputils `ping`, requests 1..=count. With -c alone, once any reply
    /// came, ping waits only max(2 RTT, -i) for the last one (here 200
    /// ms), which a guest starved for a moment on a loaded 2-core machine
    /// misses: both "last reply lost" failures of CI so far were that.
    /// With -w ping waits for `count` replies until the deadline (sending
    /// more if one is lost); `lost` then requires the replies to pings
    /// 1..=count themselves.
    Iputils,
    /// `busybox ping`, requests 0..count: one more is sent, since busybox
    /// waits only about a second for the reply to its last ping (a guest
    /// briefly starved on a loaded machine can miss that); the replies to
    /// the first `count` are all waited for.
    Busybox,
}

impl Ping {
    /// The command line for `count` pings to `ip`.
    pub fn command(self, count: u32, ip: &str) -> String {
        match self {
            Ping::Iputils => format!("ping {}", self.args(count, ip)),
            Ping::Busybox => format!("busybox ping {}", self.args(count, ip)),
        }
    }

    /// Its options and `ip`.
    pub fn args(self, count: u32, ip: &str) -> String {
        match self {
            Ping::Iputils => format!("-c {count} -i 0.2 -w {} {ip}", count + 5),
            Ping::Busybox => format!("-c {} -i 0.2 -W 3 {ip}", count + 1),
        }
    }

    /// The pings of `command(count, ..)` that got no reply in `out`.
    pub fn lost(self, out: &str, count: u32) -> Vec<u32> {
        let seqs = ping_seqs(out);
        let first = match self {
            Ping::Iputils => 1,
            Ping::Busybox => 0,
        };
        (first..first + count)
            .filter(|s| !seqs.contains(s))
            .collect()
    }

    /// `out` (of `command(count, ip)`, run by `who`) with every reply:
    /// its summary line.
    pub fn all_answered(self, who: &str, ip: &str, count: u32, out: &str) -> Result<String> {
        let lost = self.lost(out, count);
        anyhow::ensure!(
            lost.is_empty(),
            "{who} -> {ip}: no reply to pings {lost:?} of {count}\n{out}"
        );
        Ok(ping_summary(out))
    }
}

/// `count` pings from guest `g` to `ip` with `ping`, every one answered:
/// the summary line.
pub fn ping_ok(g: &Guest, ping: Ping, ip: &str, count: u32) -> Result<String> {
    let (_, out) = g.run(&ping.command(count, ip))?;
    ping.all_answered(&format!("guest {}", g.name), ip, count, &out)
}

/// The summary lines of a ping's output (for printing).
pub fn ping_summary(out: &str) -> String {
    out.lines()
        .filter(|l| {
            l.contains("packets transmitted") || l.contains("round-trip") || l.contains("rtt")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What an `iperf3 -J` client reports.
pub struct Iperf3 {
    /// Bytes the server received, and at what rate.
    pub bytes: f64,
    pub bps: f64,
    /// The sender's retransmits (-1 if not reported).
    pub retransmits: i64,
    /// Its "error" (null if none).
    pub error: serde_json::Value,
}

/// Parse the output `out` of an `iperf3 -J` client that exited `rc`;
/// an error names the test as `what` ("a -> b").
pub fn iperf3_json(rc: i32, out: &str, what: &str) -> Result<Iperf3> {
    let json = out.find('{').map(|i| &out[i..]).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(json)
        .with_context(|| format!("iperf3 -J output (exit {rc}): {out}"))?;
    anyhow::ensure!(rc == 0, "iperf3 {what} failed ({rc}): {}", v["error"]);
    Ok(Iperf3 {
        bytes: v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0),
        bps: v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0),
        retransmits: v["end"]["sum_sent"]["retransmits"].as_i64().unwrap_or(-1),
        error: v["error"].clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summary_parses() {
        let out = "PING 1.2.3.4 (1.2.3.4): 56 data bytes\n\n--- 1.2.3.4 ping statistics ---\n\
                   40 packets transmitted, 39 packets received, 2% packet loss\n\
                   round-trip min/avg/max = 0.2/0.3/0.5 ms\n";
        assert_eq!(ping_counts(out), Some((40, 39)));
        let out2 = "64 bytes from 1.2.3.4: seq=0 ttl=64 time=0.7 ms\n\
                    64 bytes from 1.2.3.4: seq=2 ttl=64 time=0.5 ms\n";
        assert_eq!(ping_seqs(out2).into_iter().collect::<Vec<_>>(), vec![0, 2]);
        assert!(ping_summary(out).starts_with("40 packets"));
    }

    #[test]
    fn pings_are_numbered_by_their_command() {
        let out = "64 bytes from 1.2.3.4: seq=0 ttl=64 time=0.7 ms\n\
                   64 bytes from 1.2.3.4: seq=2 ttl=64 time=0.5 ms\n";
        assert_eq!(Ping::Busybox.lost(out, 3), vec![1]);
        assert_eq!(Ping::Iputils.lost(out, 3), vec![1, 3]);
        assert!(Ping::Busybox.all_answered("g", "1.2.3.4", 3, out).is_err());
        assert_eq!(
            Ping::Iputils.command(2, "1.2.3.4"),
            "ping -c 2 -i 0.2 -w 7 1.2.3.4"
        );
        assert_eq!(
            Ping::Busybox.command(2, "1.2.3.4"),
            "busybox ping -c 3 -i 0.2 -W 3 1.2.3.4"
        );
    }

    #[test]
    fn init_script_quotes() {
        let spec = GuestSpec::new(
            "a",
            Transport::Vector,
            "tap0",
            "02:00:00:00:00:02",
            "10.0.0.2/24",
        )
        .gateway("10.0.0.1");
        let s = init_script(&spec, Path::new("/tmp/x y"));
        assert!(s.contains("D='/tmp/x y'"));
        assert!(s.contains("ip route add default via '10.0.0.1'"));
        assert!(s.contains("/sys/class/net/vec0"));
    }
}
