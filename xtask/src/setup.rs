//! `cargo xtask setup`: everything umlbr needs on Debian 12, installed
//! only where missing.
//!
//! * Debian's rustc-web 1.96 (/usr/bin/rustc and /usr/bin/cargo, LLVM 22)
//!   with a prebuilt `core` for bpfel-unknown-none: umlbr/build.rs builds
//!   the eBPF programs with it. rustup's stable toolchain (no rust-src)
//!   builds everything else.
//! * bpf-linker 0.13.0 built against Debian's LLVM 22 (its default,
//!   LLVM 23, would not read rustc 1.96's bitcode).
//! * The tools the tests and the demo drive: User Mode Linux, iproute2,
//!   iperf3, nftables, dnsmasq, busybox...
//! * The kernel side: /dev/net/tun and BTF.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::util::{self, cargo_home, probe, run, say, warn};

/// Debian packages of the eBPF toolchain (rustc-web and friends come from
/// bookworm-security).
pub const TOOLCHAIN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
];

/// The rustc-web packages, reinstalled together when /usr/bin/rustc is
/// too old or has no bpfel core.
const RUSTC_WEB_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "libstd-rust-web-dev-bpf",
];

/// Debian packages of the tools tests and the demo use.
pub const TOOL_PACKAGES: &[&str] = &[
    "user-mode-linux",
    "iperf3",
    "iputils-ping",
    "iproute2",
    "nftables",
    "iptables",
    // conntrack -L: the bench times listing the kernel's NAT table.
    "conntrack",
    "dnsmasq-base",
    "busybox-static",
    "ethtool",
    "tcpdump",
    // tests/kill.rs kills commands before each system call that changes
    // something (strace -e inject=...:signal=KILL).
    "strace",
    "linux-perf",
    "bridge-utils",
    "python3",
    "util-linux",
    "procps",
    "kmod",
    // cargo xtask vm-test and tests/e2e_qemu.rs: Debian's kernels under
    // QEMU TCG; xz and zstd unpack their vmlinux and modules, kmod's
    // depmod indexes the modules (umlbr_tests::vm).
    "qemu-system-x86",
    "xz-utils",
    "zstd",
    // tests/metrics.rs checks `umlbr metrics` with `promtool check metrics`,
    // scrapes `metrics --listen` with curl and renders the man pages with
    // groff and man.
    "prometheus",
    "curl",
    "groff-base",
    "man-db",
    // tests/boot.rs: `systemd-analyze verify` on contrib/systemd's unit,
    // and ifup/ifdown running contrib/ifupdown's hook.
    "systemd",
    "ifupdown",
];

/// The rustc umlbr/build.rs compiles the eBPF crate with.
const BPF_RUSTC: &str = "/usr/bin/rustc";
const BPF_CARGO: &str = "/usr/bin/cargo";
const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
const MIN_BPF_RUSTC: (u32, u32) = (1, 96);

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

/// Oldest kernel umlbr is tested on (Debian 12's stock 6.1; `umlbr up`
/// itself probes the features rather than the version).
const MIN_KERNEL: (u32, u32) = (6, 1);
/// The first kernel with tcx hooks; older ones get TC through clsact.
const TCX_KERNEL: (u32, u32) = (6, 6);

/// What is missing; empty when the machine is ready.
#[derive(Debug, Default)]
pub struct Missing {
    /// Debian packages to install (or upgrade).
    pub packages: BTreeSet<String>,
    /// Why some packages are listed although dpkg has them.
    pub notes: Vec<String>,
    /// bpf-linker is absent, another version, or built for another LLVM.
    pub bpf_linker: Option<String>,
    /// rustup components that `cargo fmt` / `cargo clippy` need.
    pub components: Vec<&'static str>,
    /// /dev/net/tun is absent.
    pub tun: bool,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
            && self.bpf_linker.is_none()
            && self.components.is_empty()
            && !self.tun
    }
}

/// Packages of `names` that dpkg does not list as installed.
fn missing_packages(names: &[&str]) -> BTreeSet<String> {
    // dpkg-query exits 1 when some package is unknown but still prints
    // the known ones, so its status is not the answer.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package}\t${Status}\n"])
        .args(names)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let installed: BTreeSet<String> = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(_, st)| st.trim() == "install ok installed")
            .map(|(p, _)| p.split(':').next().unwrap_or(p).to_string())
            .collect(),
        Err(_) => BTreeSet::new(),
    };
    names
        .iter()
        .filter(|n| !installed.contains(**n))
        .map(|n| n.to_string())
        .collect()
}

/// `rustc X.Y.Z ...` -> (X, Y).
fn rustc_version(s: &str) -> Option<(u32, u32)> {
    let v = s.split_whitespace().nth(1)?;
    let mut it = v.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Why /usr/bin/rustc cannot build the eBPF crate, if it cannot.
fn bpf_rustc_problem() -> Option<String> {
    let Some(v) = probe(Command::new(BPF_RUSTC).arg("--version")) else {
        return Some(format!("{BPF_RUSTC} does not run"));
    };
    match rustc_version(&v) {
        Some(ver) if ver >= MIN_BPF_RUSTC => {}
        _ => {
            return Some(format!(
                "{BPF_RUSTC} is `{}`, need {}.{} or newer (rustc-web from bookworm-security)",
                v.trim(),
                MIN_BPF_RUSTC.0,
                MIN_BPF_RUSTC.1
            ));
        }
    }
    if !Path::new(BPF_CARGO).exists() {
        return Some(format!("{BPF_CARGO} is missing"));
    }
    let has_core = std::fs::read_dir(BPF_CORE_DIR)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
        })
        .unwrap_or(false);
    if !has_core {
        return Some(format!("no prebuilt bpfel core in {BPF_CORE_DIR}"));
    }
    None
}

fn bpf_linker_path() -> PathBuf {
    cargo_home().join("bin/bpf-linker")
}

/// Why the installed bpf-linker will not do, if it will not.
fn bpf_linker_problem() -> Option<String> {
    let path = bpf_linker_path();
    let Some(v) = probe(Command::new(&path).arg("--version")) else {
        return Some(format!("{} is not installed", path.display()));
    };
    if !v.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
        return Some(format!(
            "{} is `{}`, need {BPF_LINKER_VERSION}",
            path.display(),
            v.trim()
        ));
    }
    // cargo install records the features it built with; a bpf-linker
    // built without llvm-22 links against another LLVM.
    let crates = cargo_home().join(".crates2.json");
    if let Ok(text) = std::fs::read_to_string(&crates)
        && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(installs) = json["installs"].as_object()
    {
        let key = format!("bpf-linker {BPF_LINKER_VERSION} ");
        if let Some((_, info)) = installs.iter().find(|(k, _)| k.starts_with(&key)) {
            let has = info["features"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == BPF_LINKER_LLVM_FEATURE));
            if !has {
                return Some(format!(
                    "bpf-linker {BPF_LINKER_VERSION} was not built with feature \
                     {BPF_LINKER_LLVM_FEATURE} (it would use another LLVM)"
                ));
            }
        }
    }
    None
}

fn missing_components() -> Vec<&'static str> {
    let mut v = Vec::new();
    if probe(util::cargo().args(["fmt", "--version"])).is_none() {
        v.push("rustfmt");
    }
    if probe(util::cargo().args(["clippy", "--version"])).is_none() {
        v.push("clippy");
    }
    v
}

/// Look at the machine; installs nothing.
pub fn check() -> Missing {
    let mut m = Missing::default();
    let all: Vec<&str> = TOOLCHAIN_PACKAGES
        .iter()
        .chain(TOOL_PACKAGES)
        .copied()
        .collect();
    m.packages = missing_packages(&all);
    if m.packages
        .is_disjoint(&RUSTC_WEB_PACKAGES.iter().map(|s| s.to_string()).collect())
        && let Some(why) = bpf_rustc_problem()
    {
        m.notes.push(why);
        m.packages
            .extend(RUSTC_WEB_PACKAGES.iter().map(|s| s.to_string()));
    }
    m.bpf_linker = bpf_linker_problem();
    m.components = missing_components();
    m.tun = !Path::new("/dev/net/tun").exists();
    m
}

/// For build/test/demo: a quick look, and the full setup only if
/// something is missing.
pub fn ensure() -> Result<()> {
    let m = check();
    if m.is_empty() {
        say("prerequisites present (`cargo xtask setup` checks them in detail)");
        return Ok(());
    }
    say("some prerequisites are missing; running `cargo xtask setup`");
    setup(false)
}

/// `cargo xtask setup`. With `check_only`, report and fail if anything
/// is missing, installing nothing.
pub fn setup(check_only: bool) -> Result<()> {
    util::header("setup: Debian 12 prerequisites");
    let m = check();
    kernel_report();
    report(&m);
    if m.is_empty() {
        say("setup: nothing to do, everything is installed");
        return Ok(());
    }
    if check_only {
        bail!("prerequisites are missing; `cargo xtask setup` installs them");
    }

    if !m.packages.is_empty() {
        install_packages(&m.packages)?;
        if let Some(why) = bpf_rustc_problem() {
            bail!(
                "after installing rustc-web: {why}.\nrustc-web 1.96 comes from \
                 bookworm-security: check that /etc/apt/sources.list(.d) has \
                 `deb http://deb.debian.org/debian-security bookworm-security main`"
            );
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        make_tun()?;
    }
    if !m.components.is_empty() {
        install_components(&m.components)?;
    }
    // After the packages: bpf-linker links against llvm-22-dev.
    if let Some(why) = bpf_linker_problem() {
        install_bpf_linker(&why)?;
    }

    let left = check();
    if !left.is_empty() {
        report(&left);
        bail!("setup finished but something is still missing (see above)");
    }
    say("setup: done, everything is installed");
    Ok(())
}

fn report(m: &Missing) {
    let all = TOOLCHAIN_PACKAGES.len() + TOOL_PACKAGES.len();
    if m.packages.is_empty() {
        say(format!("debian packages: all {all} installed"));
        if let Some(v) = probe(Command::new(BPF_RUSTC).arg("--version")) {
            say(format!("eBPF rustc: {BPF_RUSTC} is {}", v.trim()));
        }
    } else {
        for n in &m.notes {
            say(format!("eBPF rustc: {n}"));
        }
        say(format!(
            "debian packages: missing {}",
            m.packages.iter().cloned().collect::<Vec<_>>().join(" ")
        ));
    }
    match &m.bpf_linker {
        None => say(format!(
            "bpf-linker: {BPF_LINKER_VERSION} ({BPF_LINKER_LLVM_FEATURE}) at {}",
            bpf_linker_path().display()
        )),
        Some(why) => say(format!("bpf-linker: {why}")),
    }
    if m.components.is_empty() {
        say("rustup: rustfmt and clippy are installed");
    } else {
        say(format!("rustup: missing {}", m.components.join(", ")));
    }
    if m.tun {
        say("kernel: /dev/net/tun is missing");
    } else {
        say("kernel: /dev/net/tun present");
    }
}

/// Warn about kernel features setup cannot install.
fn kernel_report() {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        say("kernel: BTF present (/sys/kernel/btf/vmlinux)");
    } else {
        warn(
            "kernel: /sys/kernel/btf/vmlinux is missing: this kernel has no BTF \
             (CONFIG_DEBUG_INFO_BTF), and `umlbr up` will refuse to run. Boot a \
             kernel built with BTF (Debian's linux-image-amd64 has it).",
        );
    }
    let release = probe(Command::new("uname").arg("-r")).unwrap_or_default();
    let release = release.trim();
    let ver = {
        let mut it = release
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty());
        it.next()
            .and_then(|a| a.parse().ok())
            .zip(it.next().and_then(|b| b.parse().ok()))
    };
    match ver {
        Some(v) if v >= TCX_KERNEL => say(format!("kernel: {release} (TC through tcx)")),
        Some(v) if v >= MIN_KERNEL => say(format!(
            "kernel: {release} (no tcx: TC through a clsact qdisc and cls_bpf filters)"
        )),
        _ => warn(format!(
            "kernel: {release} is older than {}.{}, the oldest umlbr is tested on \
             (Debian 12's own); `umlbr up` names what it lacks",
            MIN_KERNEL.0, MIN_KERNEL.1
        )),
    }
}

fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

fn install_packages(pkgs: &BTreeSet<String>) -> Result<()> {
    util::require_root("setup", "it installs Debian packages with apt-get")?;
    say(format!(
        "installing {} Debian package(s); updating the package lists first",
        pkgs.len()
    ));
    run(apt_get().args(["update"]))?;
    run(apt_get()
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "-o",
            "Dpkg::Use-Pty=0",
        ])
        .args(pkgs))?;
    let still = missing_packages(&pkgs.iter().map(String::as_str).collect::<Vec<_>>());
    if !still.is_empty() {
        bail!(
            "apt-get install left packages missing: {}",
            still.into_iter().collect::<Vec<_>>().join(" ")
        );
    }
    Ok(())
}

fn make_tun() -> Result<()> {
    util::require_root("setup", "it loads the tun module")?;
    say("/dev/net/tun is missing: loading the tun module");
    if let Err(e) = run(Command::new("modprobe").arg("tun")) {
        warn(format!("{e:#}"));
    }
    if Path::new("/dev/net/tun").exists() {
        return Ok(());
    }
    // In a container the module may be loaded without the device node.
    if Path::new("/sys/class/misc/tun").exists() {
        say("the tun module is loaded but the device node is not: creating it");
        std::fs::create_dir_all("/dev/net").context("creating /dev/net")?;
        run(Command::new("mknod").args(["/dev/net/tun", "c", "10", "200"]))?;
        run(Command::new("chmod").args(["0666", "/dev/net/tun"]))?;
    }
    if !Path::new("/dev/net/tun").exists() {
        bail!(
            "/dev/net/tun is still missing: this kernel has no tun driver \
             (CONFIG_TUN), which every tap needs"
        );
    }
    Ok(())
}

fn install_components(components: &[&str]) -> Result<()> {
    if probe(Command::new("rustup").arg("--version")).is_none() {
        bail!(
            "cargo {} are missing and rustup is not installed; install rustup \
             (https://rustup.rs) with the stable toolchain",
            components.join(" and ")
        );
    }
    say(format!(
        "adding rustup component(s) {}",
        components.join(", ")
    ));
    run(Command::new("rustup")
        .args(["component", "add"])
        .args(components))
}

fn install_bpf_linker(why: &str) -> Result<()> {
    say(format!(
        "bpf-linker: {why}; building bpf-linker {BPF_LINKER_VERSION} against \
         LLVM 22 (takes a few minutes)"
    ));
    let mut c = Command::new("cargo");
    c.current_dir(util::home())
        .env("LLVM_PREFIX", LLVM_PREFIX)
        // llvm-sys (bpf-linker's LLVM bindings) looks here for llvm-config.
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            BPF_LINKER_LLVM_FEATURE,
        ]);
    if bpf_linker_path().exists() {
        c.arg("--force");
    }
    run(&mut c)
}
