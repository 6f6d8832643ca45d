//! `cargo xtask vm-test`: umlbr's functional checks inside Debian's own
//! kernels, booted under QEMU TCG, and a table of kernel × check.
//!
//! Each kernel (umlbr_tests::vm fetches and caches it) boots a busybox
//! initramfs that loads virtio/9p/overlay, mounts the host's root
//! read-only over 9p under a tmpfs overlay, bind-mounts the guest
//! kernel's own modules onto /lib/modules/RELEASE, mounts a writable
//! per-run share at /vm-results and switches root into the overlay. The
//! suite (vm-suite.sh, next to this file) then runs the umlbr binary just
//! built on the host (the same path inside, through the 9p root) and
//! writes one `vm-check NAME PASS|FAIL|SKIP why` line per check; its exit
//! code goes to the share and the guest powers off.
use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use umlbr_tests::vm::{self, Kernel, Qemu};

use crate::util::{self, header, say};

/// The checks of vm-suite.sh, in the order it runs them.
pub const CHECKS: &[(&str, &str)] = &[
    ("up", "`umlbr up` with an address: programs load and attach"),
    ("xdp", "60-byte frames between two taps both ways (XDP)"),
    ("tc", "3000-byte frames between two taps both ways (TC)"),
    (
        "learn",
        "MACs learned on the right ports (`fdb show`), unknown unicast flooded to every other port",
    ),
    (
        "host",
        "a veth guest in a namespace pings the bridge's address",
    ),
    (
        "uplink",
        "`attach --uplink`: a guest reaches a LAN namespace through the uplink",
    ),
    (
        "masq",
        "`up --masquerade`: a guest pings and connects over TCP to a LAN host, seen from the uplink's address",
    ),
    ("nat", "`nat show` lists the guest's mappings"),
    (
        "down",
        "`down` leaves no link, XDP/TC program, nftables table or ip_forward change",
    ),
];

/// Each check's verdict (PASS, FAIL, SKIP) and why, by name.
type Verdicts = BTreeMap<String, (String, String)>;

/// One kernel's column of the table.
struct Column {
    kernel: String,
    verdicts: Verdicts,
    took: Duration,
}

/// A check and the one whose state it uses.
const DEPENDS: &[(&str, &str)] = &[
    ("xdp", "up"),
    ("tc", "up"),
    ("learn", "up"),
    ("host", "up"),
    ("uplink", "up"),
    ("nat", "masq"),
];

const SUITE: &str = include_str!("vm-suite.sh");

/// Modules the initramfs loads to reach the 9p root (the rest are
/// loaded inside from the bind-mounted /lib/modules).
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// The kernels by default: Debian 12's stock series and its newest.
const DEFAULT_KERNELS: &[&str] = &["6.1", "6.12"];

/// A guest's whole run: boot, every check, power-off.
const RUN_TIMEOUT: Duration = Duration::from_secs(420);

fn check_name(s: &str) -> Result<String, String> {
    if CHECKS.iter().any(|(n, _)| *n == s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "no check {s:?}; the checks are: {}",
            CHECKS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// Options of `cargo xtask vm-test`.
#[derive(clap::Args, Debug, Default)]
pub struct VmTestArgs {
    /// A kernel to boot: a series (6.1, 6.12: the newest of it apt knows)
    /// or a Debian release (6.1.0-57-amd64); repeat for more. Default:
    /// 6.1 and 6.12.
    #[arg(long = "kernel", value_name = "VERSION")]
    pub kernels: Vec<String>,
    /// Run only this check (repeatable); the checks it builds on run
    /// too (`up` for xdp, tc, learn, host and uplink; `masq` for nat). Default: all. Checks: up, xdp,
    /// tc, learn, host, uplink, masq, nat, down.
    #[arg(long = "check", value_name = "NAME", value_parser = check_name)]
    pub checks: Vec<String>,
}

/// `cargo xtask vm-test`.
pub fn run(args: &VmTestArgs) -> Result<()> {
    let bin = crate::test::root_and_umlbr(
        "vm-test",
        "the guests' kernels are fetched with apt-get and QEMU gets the host's root",
        false,
    )?;
    matrix(&bin, args)
}

/// Boot every kernel of `args`, run the checks with umlbr binary `bin`,
/// print the table; fails if any check failed.
pub fn matrix(bin: &Path, args: &VmTestArgs) -> Result<()> {
    if !vm::qemu_available() {
        bail!(
            "{} is not installed: `cargo xtask setup` installs qemu-system-x86",
            vm::QEMU
        );
    }
    let specs: Vec<String> = if args.kernels.is_empty() {
        DEFAULT_KERNELS.iter().map(|s| s.to_string()).collect()
    } else {
        args.kernels.clone()
    };
    let checks: Vec<&str> = if args.checks.is_empty() {
        CHECKS.iter().map(|(n, _)| *n).collect()
    } else {
        CHECKS
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| args.checks.iter().any(|c| c == n))
            .collect()
    };
    // What the guest runs (and the table shows): the checks asked for
    // and those they build on.
    let needed: Vec<&str> = DEPENDS
        .iter()
        .filter(|(c, _)| checks.contains(c))
        .map(|(_, n)| *n)
        .collect();
    let run: Vec<&str> = CHECKS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| checks.contains(n) || needed.contains(n))
        .collect();
    let mut columns: Vec<Column> = Vec::new();
    for spec in &specs {
        let t = Instant::now();
        header(format!("vm-test: kernel {spec}"));
        let (name, results) = match boot_and_check(spec, bin, &run) {
            Ok(r) => r,
            Err(e) => {
                util::warn(format!("kernel {spec}: {e:#}"));
                let why = format!("{e:#}").lines().next().unwrap_or("").to_string();
                let r = checks
                    .iter()
                    .map(|c| (c.to_string(), ("FAIL".to_string(), why.clone())))
                    .collect();
                (spec.clone(), r)
            }
        };
        columns.push(Column {
            kernel: name,
            verdicts: results,
            took: t.elapsed(),
        });
    }
    let (table, failed) = table(&run, &columns);
    println!("{table}");
    if failed {
        bail!("vm-test: some checks failed (see the table)");
    }
    Ok(())
}

/// The kernel × check table and its notes; whether any check failed.
fn table(checks: &[&str], columns: &[Column]) -> (String, bool) {
    let width = columns
        .iter()
        .map(|c| c.kernel.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut s = format!("\n{:<8}", "CHECK");
    for c in columns {
        s += &format!("  {:<width$}", c.kernel);
    }
    s.push('\n');
    let mut failed = false;
    for c in checks {
        s += &format!("{c:<8}");
        for col in columns {
            let v = col.verdicts.get(*c).map(|v| v.0.as_str()).unwrap_or("FAIL");
            failed |= v == "FAIL";
            s += &format!("  {v:<width$}");
        }
        s.push('\n');
    }
    s += &format!("{:<8}", "time");
    for c in columns {
        s += &format!("  {:<width$}", format!("{:.0}s", c.took.as_secs_f64()));
    }
    s.push('\n');
    for col in columns {
        let k = &col.kernel;
        for c in checks {
            match col.verdicts.get(*c) {
                Some((v, why)) if v != "PASS" => s += &format!("{k} {c}: {v}: {why}\n"),
                None => s += &format!("{k} {c}: FAIL: the guest printed no result for it\n"),
                _ => {}
            }
        }
    }
    (s, failed)
}

/// Boot one kernel, run the checks, and read their results: (release,
/// check -> (verdict, why)).
fn boot_and_check(spec: &str, bin: &Path, checks: &[&str]) -> Result<(String, Verdicts)> {
    let kernel = Kernel::get(spec)?;
    say(format!(
        "kernel {} ({})",
        kernel.release,
        kernel.image.display()
    ));
    let runs = vm::cache_dir().join("runs");
    remove_old_runs(&runs);
    let dir = runs.join(format!("{}-{}", kernel.release, std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let results = dir.join("results");
    std::fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    let initrd = dir.join("initrd.cpio");
    vm::initramfs(&kernel, BOOT_MODULES, &init_script(&kernel)?, &initrd)?;
    std::fs::write(results.join("suite.sh"), SUITE)?;
    std::fs::write(
        results.join("env"),
        format!("UMLBR={}\nCHECKS='{}'\n", bin.display(), checks.join(" ")),
    )?;
    let console = dir.join("console.log");
    let mut cmd = vm::qemu_command(None, &kernel, &initrd, "", &console, 1024);
    cmd.arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=results,security_model=none",
            results.display()
        ));
    say(format!(
        "booting under TCG; console: {}; results: {}",
        console.display(),
        results.display()
    ));
    let mut q = Qemu::spawn(cmd, &console)?;
    if q.wait_exit(RUN_TIMEOUT).is_none() {
        say(format!(
            "the guest did not finish in {RUN_TIMEOUT:?}; killed it"
        ));
    }
    let log = std::fs::read_to_string(results.join("log")).unwrap_or_default();
    let rc = std::fs::read_to_string(results.join("rc")).ok();
    if log.is_empty() {
        bail!(
            "the guest ran no check (rc file: {}); console {}:\n{}",
            rc.as_deref().map(str::trim).unwrap_or("none"),
            console.display(),
            q.tail(30)
        );
    }
    let mut r = BTreeMap::new();
    for line in log.lines() {
        eprintln!("  | {line}");
        if let Some(rest) = line.strip_prefix("vm-check ") {
            let mut it = rest.splitn(3, ' ');
            if let (Some(name), Some(v)) = (it.next(), it.next()) {
                r.insert(
                    name.to_string(),
                    (v.to_string(), it.next().unwrap_or("").to_string()),
                );
            }
        }
    }
    if rc.is_none() {
        let why = "the guest stopped before the suite finished (see the console log)";
        for c in checks {
            r.entry(c.to_string())
                .or_insert(("FAIL".into(), why.into()));
        }
    }
    Ok((kernel.release, r))
}

/// Remove the run directories (`RELEASE-PID`) of vm-tests that are over,
/// keeping the last one's of each kernel to look at.
fn remove_old_runs(runs: &Path) {
    let Ok(dir) = std::fs::read_dir(runs) else {
        return;
    };
    let mut by_kernel: BTreeMap<String, Vec<(std::time::SystemTime, std::path::PathBuf)>> =
        BTreeMap::new();
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((release, pid)) = name.rsplit_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || umlbr_tests::netns::alive(pid) {
            continue;
        }
        let t = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        by_kernel
            .entry(release.to_string())
            .or_default()
            .push((t, e.path()));
    }
    for mut v in by_kernel.into_values() {
        v.sort();
        v.pop();
        for (_, p) in v {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// The initramfs' /init: modules, the 9p root under a tmpfs overlay, the
/// kernel's modules and the results share in it, then switch_root into it
/// with a second stage (in the overlay's tmpfs) as PID 1, so that the
/// kernel's module requests (nftables expressions) see the new root.
fn init_script(kernel: &Kernel) -> Result<String> {
    let modules = kernel.modules_dir();
    let modules = modules
        .to_str()
        .context("the module directory's path is not UTF-8")?;
    let release = &kernel.release;
    Ok(format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
die() {{ echo "vm-init: $*"; sleep 1; poweroff -f; }}
. /modules/load
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /lower || die "no 9p root"
mount -t tmpfs -o size=512m tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || die "no overlay"
mkdir -p /newroot/lib/modules/{release} /newroot/vm-results
mount --bind /lower{modules} /newroot/lib/modules/{release} || die "no modules"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /newroot/vm-results || die "no results share"
cat > /newroot/vm-stage2 <<'EOF'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
ip link set lo up
echo "vm-stage2: $(uname -r) up $(cut -d' ' -f1 /proc/uptime)s"
cd /vm-results
{{ sh /vm-results/suite.sh; echo $? > /vm-results/rc; }} 2>&1 | tee /vm-results/log
sync
echo "vm-stage2: done"
/bin/busybox poweroff -f
/bin/busybox reboot -f
EOF
umount /proc /sys /dev
exec switch_root /newroot /bin/sh /vm-stage2
"#
    ))
}
