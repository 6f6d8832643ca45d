//! QEMU guests with a virtio-net NIC on a tap, for the end-to-end tests:
//! a Debian kernel (tests/src/vm.rs fetches and caches it) under TCG with
//! a busybox initramfs, nothing else. Like the UML guests of uml.rs, a
//! guest talks to the test through a private directory on the host, here
//! shared over 9p (mount tag `xchg`, at /x in the guest):
//!
//! * the guest's init configures lo and eth0 (address, default route),
//!   writes `ready`, then polls `cmd/` for `N.sh` (N = 0, 1, 2...) and runs
//!   each with busybox sh in the background, writing `N.out` (stdout and
//!   stderr) and, when it ends, `N.rc`. A file `halt` powers it off.
//! * `console.log`: the serial console (kernel messages, init's errors);
//!   `console.qemu`: QEMU's own messages.
//!
//! The NIC: `-netdev tap,ifname=TAP,script=no,downscript=no,vnet_hdr=on
//! -device virtio-net-pci`, so the guest sends GSO super-frames and
//! partial checksums through the tap's vnet headers, as QEMU guests do by
//! default. The guest has busybox's applets only (ping, nc, dd, ip...).
//!
//! QEMU runs inside the test's network namespace (`ip netns exec`), so
//! the namespace's guard kills it too; the guest kills it on drop. Every
//! wait is bounded.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::vm::{self, Kernel, Qemu};

/// How long a guest may take to boot under TCG and configure eth0.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The kernel a QEMU guest boots: `$UMLBR_QEMU_KERNEL` (a series or a
/// Debian release), else the newest 6.12.
pub fn kernel_spec() -> String {
    std::env::var("UMLBR_QEMU_KERNEL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "6.12".into())
}

/// The modules a guest loads: its NIC and the 9p share.
const MODULES: &[&str] = &["virtio_pci", "virtio_net", "9pnet_virtio", "9p"];

static SEQ: AtomicU32 = AtomicU32::new(0);

/// What to boot.
#[derive(Clone, Debug)]
pub struct QemuSpec {
    pub name: String,
    /// The tap (in the namespace) that QEMU opens with vnet headers.
    pub tap: String,
    pub mac: String,
    /// eth0's address, e.g. `192.168.2.4/24`.
    pub ip_cidr: String,
    pub gateway: Option<String>,
}

impl QemuSpec {
    pub fn new(name: &str, tap: &str, mac: &str, ip_cidr: &str) -> Self {
        QemuSpec {
            name: name.into(),
            tap: tap.into(),
            mac: mac.into(),
            ip_cidr: ip_cidr.into(),
            gateway: None,
        }
    }

    pub fn gateway(mut self, gw: &str) -> Self {
        self.gateway = Some(gw.into());
        self
    }
}

/// A running QEMU guest; killed on drop.
pub struct QemuGuest {
    pub spec: QemuSpec,
    qemu: Qemu,
    dir: PathBuf,
    next: u32,
}

impl QemuGuest {
    /// Boot a guest in network namespace `netns` and wait until its eth0
    /// is configured.
    pub fn boot(netns: &str, spec: &QemuSpec) -> Result<QemuGuest> {
        let kernel = Kernel::get(&kernel_spec())?;
        let dir = std::env::temp_dir().join(format!(
            "umlbr-qemu-{}-{}-{}",
            spec.name,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(dir.join("cmd"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let initrd = dir.join("initrd.cpio");
        vm::initramfs(&kernel, MODULES, &init_script(spec), &initrd)?;
        let console = dir.join("console.log");
        let mut cmd = vm::qemu_command(Some(netns), &kernel, &initrd, "", &console, 512);
        cmd.arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no,vnet_hdr=on",
                spec.tap
            ))
            // No option ROM: the kernel is booted directly, not over PXE.
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,netdev=n0,mac={},romfile=",
                spec.mac
            ))
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=xchg,security_model=none",
                dir.display()
            ));
        let qemu = Qemu::spawn(cmd, &console)?;
        let mut g = QemuGuest {
            spec: spec.clone(),
            qemu,
            dir,
            next: 0,
        };
        let start = Instant::now();
        while !g.dir.join("ready").exists() {
            if let Some(st) = g.qemu.exited() {
                bail!(
                    "QEMU guest {} exited ({st}) while booting:\n{}",
                    spec.name,
                    g.qemu.tail(40)
                );
            }
            if start.elapsed() > BOOT_TIMEOUT {
                bail!(
                    "QEMU guest {} not ready after {BOOT_TIMEOUT:?}:\n{}",
                    spec.name,
                    g.qemu.tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "qemu guest {} ({}) ready in {:.1} s",
            spec.name,
            kernel.release,
            start.elapsed().as_secs_f64()
        );
        Ok(g)
    }

    /// The guest's private directory on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last `n` lines of the console.
    pub fn console_tail(&self, n: usize) -> String {
        self.qemu.tail(n)
    }

    /// Start `script` in the guest (busybox sh); its number for
    /// [`QemuGuest::wait`].
    pub fn spawn(&mut self, script: &str) -> Result<u32> {
        let n = self.next;
        self.next += 1;
        let tmp = self.dir.join(format!("cmd/.{n}.sh"));
        fs::write(&tmp, script)?;
        // Renamed into place: the guest never sees half a script.
        fs::rename(&tmp, self.dir.join(format!("cmd/{n}.sh")))?;
        Ok(n)
    }

    /// Wait for command `n` to end, at most `timeout`: (exit code, output).
    pub fn wait(&mut self, n: u32, timeout: Duration) -> Result<(i32, String)> {
        let rc = self.dir.join(format!("cmd/{n}.rc"));
        let start = Instant::now();
        loop {
            if let Ok(s) = fs::read_to_string(&rc)
                && let Ok(code) = s.trim().parse::<i32>()
            {
                return Ok((code, self.output(n)));
            }
            if let Some(st) = self.qemu.exited() {
                bail!(
                    "QEMU guest {} exited ({st}) during command {n}:\n{}",
                    self.spec.name,
                    self.qemu.tail(30)
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "command {n} in QEMU guest {} still running after {timeout:?}; output so far:\n{}",
                    self.spec.name,
                    self.output(n)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Command `n`'s output so far.
    pub fn output(&self, n: u32) -> String {
        fs::read_to_string(self.dir.join(format!("cmd/{n}.out"))).unwrap_or_default()
    }

    /// Run `script` and wait for it: (exit code, output).
    pub fn run_timeout(&mut self, script: &str, timeout: Duration) -> Result<(i32, String)> {
        let n = self.spawn(script)?;
        self.wait(n, timeout)
    }

    /// Run `script`; its output if it exits 0.
    pub fn run_ok(&mut self, script: &str, timeout: Duration) -> Result<String> {
        let (rc, out) = self.run_timeout(script, timeout)?;
        if rc != 0 {
            bail!(
                "in QEMU guest {}: `{script}` exited {rc}:\n{out}",
                self.spec.name
            );
        }
        Ok(out)
    }

    /// Power the guest off (a few seconds at most), then kill QEMU.
    pub fn halt(&mut self) {
        let _ = fs::write(self.dir.join("halt"), "");
        self.qemu.wait_exit(Duration::from_secs(5));
    }
}

impl Drop for QemuGuest {
    fn drop(&mut self) {
        self.qemu.kill();
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn init_script(spec: &QemuSpec) -> String {
    let gw = spec
        .gateway
        .as_ref()
        .map(|g| format!("ip route add default via {g}"))
        .unwrap_or_default();
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /tmp
. /modules/load
mkdir -p /x
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 xchg /x || {{ echo "qemu-init: no 9p share"; poweroff -f; }}
ip link set lo up
ip link set eth0 up
ip addr add {ip} dev eth0
{gw}
echo ready > /x/ready
echo "qemu-init: ready"
cd /tmp
n=0
while [ ! -e /x/halt ]; do
  if [ -e /x/cmd/$n.sh ]; then
    ( sh /x/cmd/$n.sh > /x/cmd/$n.out 2>&1; echo $? > /x/cmd/$n.rc ) &
    n=$((n + 1))
  else
    sleep 0.1
  fi
done
poweroff -f
"#,
        ip = spec.ip_cidr,
    )
}
