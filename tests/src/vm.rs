//! Debian kernels under QEMU TCG: fetched with `apt-get download` into a
//! cache, booted from their uncompressed vmlinux (PVH entry), with a small
//! busybox initramfs made here. `cargo xtask vm-test` (a kernel matrix,
//! the host's root as the guest's) and the QEMU guest of tests/e2e_qemu.rs
//! (busybox only) both build on this.
//!
//! The cache (`target/vm/`, or `$UMLBR_VM_CACHE`):
//!
//! ```text
//! debs/linux-image-RELEASE-unsigned_*.deb   what apt-get download fetched
//! RELEASE/root/                             dpkg-deb -x of it, plus depmod's modules.dep
//! RELEASE/vmlinux                           the uncompressed kernel (PVH boot)
//! RELEASE/ready                             written last: the rest is complete
//! ```
//!
//! `/dev/kvm` on this project's machines cannot run stock kernels, so
//! every boot is TCG (`-accel tcg -cpu max`): a kernel reaches /init in
//! ~2.4 s from the vmlinux, ~6 s from the bzImage.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{Read, Write},
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

/// The QEMU binary (Debian's qemu-system-x86).
pub const QEMU: &str = "qemu-system-x86_64";

/// The statically linked busybox of Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

/// Whether QEMU is installed (`cargo xtask setup` installs it).
pub fn qemu_available() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The kernel cache: `$UMLBR_VM_CACHE`, else the workspace's target/vm.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("UMLBR_VM_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("vm")
}

/// The Debian package of a kernel release (`6.1.0-57-amd64`).
pub fn package(release: &str) -> String {
    format!("linux-image-{release}-unsigned")
}

/// Every number in `s`, in order: `6.12.118+deb12` -> [6, 12, 118, 12].
fn numbers(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether `release` belongs to `series` (`6.1` or `6.12`): Debian names
/// 6.1's releases `6.1.0-ABI-amd64` and 6.12's `6.12.N+deb12-amd64`.
fn in_series(release: &str, series: &str) -> bool {
    release
        .strip_prefix(series)
        .is_some_and(|rest| rest.starts_with('.'))
        && release.ends_with("-amd64")
        && !release.contains("cloud")
        && !release.contains("-rt-")
}

/// The newest release of a kernel series that apt knows: `6.1` ->
/// `6.1.0-57-amd64`. A full release is returned as it is. Without apt's
/// lists, the newest one in the cache.
pub fn resolve(spec: &str) -> Result<String> {
    if spec.ends_with("-amd64") {
        return Ok(spec.to_string());
    }
    ensure!(
        !spec.is_empty() && spec.chars().all(|c| c.is_ascii_digit() || c == '.'),
        "kernel {spec:?}: give a series (6.1, 6.12) or a Debian release (6.1.0-57-amd64)"
    );
    let known = || -> Vec<String> {
        let out = Command::new("apt-cache")
            .args(["pkgnames", &format!("linux-image-{spec}.")])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
            .filter_map(|p| p.strip_prefix("linux-image-")?.strip_suffix("-unsigned"))
            .filter(|r| in_series(r, spec))
            .map(str::to_string)
            .collect()
    };
    let mut releases = known();
    if releases.is_empty() && apt_update().is_ok() {
        releases = known();
    }
    if releases.is_empty() {
        // Offline, or no `apt-get update` yet: what the cache has.
        releases = std::fs::read_dir(cache_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("ready").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|r| in_series(r, spec))
            .collect();
    }
    releases.sort_by_key(|r| numbers(r));
    releases.pop().with_context(|| {
        format!(
            "apt knows no linux-image-{spec}.*-amd64-unsigned package (run `apt-get update`; \
             6.1 and 6.12 are in Debian 12's archive)"
        )
    })
}

/// A Debian kernel, fetched and unpacked.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` in the guest, e.g. `6.12.118+deb12-amd64`.
    pub release: String,
    /// The unpacked package: `boot/`, `lib/modules/RELEASE/`.
    pub root: PathBuf,
    /// What QEMU boots: the vmlinux, or the bzImage if extraction failed.
    pub image: PathBuf,
}

impl Kernel {
    /// `lib/modules/RELEASE` of the unpacked package.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }

    /// The kernel's own package, fetched and unpacked into the cache if it
    /// is not there yet (`spec`: a series or a release, see [`resolve`]).
    pub fn get(spec: &str) -> Result<Kernel> {
        let release = resolve(spec)?;
        let cache = cache_dir();
        std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
        // Absolute: the guest of vm-test finds the modules at this path
        // under the host's root.
        let cache = std::fs::canonicalize(&cache)?;
        // Two runs at once (vm-test and a test) unpack one at a time.
        let _lock = Flock::exclusive(&cache.join(".lock"))?;
        let dir = cache.join(&release);
        let root = dir.join("root");
        let vmlinux = dir.join("vmlinux");
        let bzimage = root.join("boot").join(format!("vmlinuz-{release}"));
        if !dir.join("ready").exists() {
            let deb = download(&cache.join("debs"), &package(&release))?;
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing the partial {}", dir.display()))?;
            }
            std::fs::create_dir_all(&root)?;
            run_quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
            // The package has no modules.dep (its postinst runs depmod).
            run_quiet(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
            match extract_vmlinux(&bzimage) {
                Ok(elf) => std::fs::write(&vmlinux, elf)
                    .with_context(|| format!("writing {}", vmlinux.display()))?,
                Err(e) => eprintln!(
                    "vm: no vmlinux from {} ({e:#}); booting the bzImage (slower)",
                    bzimage.display()
                ),
            }
            std::fs::write(dir.join("ready"), &release)?;
        }
        let image = if vmlinux.exists() { vmlinux } else { bzimage };
        Ok(Kernel {
            release,
            root,
            image,
        })
    }

    /// The module files that loading `names` takes, dependencies first;
    /// modules built into the kernel are left out. Fails on a name the
    /// kernel has neither as a module nor built in.
    pub fn modules(&self, names: &[&str]) -> Result<Vec<PathBuf>> {
        let dir = self.modules_dir();
        let dep = std::fs::read_to_string(dir.join("modules.dep"))
            .with_context(|| format!("reading {}/modules.dep", dir.display()))?;
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
        // name -> (path, its dependencies' paths)
        let mut table: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(str::to_string).collect();
            table.insert(module_name(path), (path.to_string(), deps));
        }
        let by_path: BTreeMap<&str, &Vec<String>> =
            table.values().map(|(p, d)| (p.as_str(), d)).collect();
        let mut order: Vec<String> = Vec::new();
        fn visit(p: &str, by_path: &BTreeMap<&str, &Vec<String>>, order: &mut Vec<String>) {
            if order.iter().any(|o| o == p) {
                return;
            }
            // modules.dep lists every dependency, its own included; the
            // last one loads first.
            if let Some(deps) = by_path.get(p) {
                for d in deps.iter().rev() {
                    visit(d, by_path, order);
                }
            }
            order.push(p.to_string());
        }
        for n in names {
            let n = n.replace('-', "_");
            match table.get(&n) {
                Some((p, _)) => visit(p, &by_path, &mut order),
                None if builtin.contains(&n) => {}
                None => bail!(
                    "kernel {} has no module {n} (neither in {}/modules.dep nor built in)",
                    self.release,
                    dir.display()
                ),
            }
        }
        Ok(order.into_iter().map(|p| dir.join(p)).collect())
    }
}

/// `kernel/fs/9p/9p.ko.xz` -> `9p`; `-` and `_` are one.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// The .deb of `pkg` in `dir`, downloaded with `apt-get download` unless
/// it is there.
fn download(dir: &Path, pkg: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
            })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    eprintln!("vm: apt-get download {pkg} (into {})", dir.display());
    let get = || {
        run_quiet(
            Command::new("apt-get")
                .current_dir(dir)
                // apt's sandbox user cannot write into root's target/.
                .args(["-o", "APT::Sandbox::User=root", "download", pkg]),
        )
    };
    // Stale lists name a superseded .deb that the mirror no longer has.
    if get().is_err() {
        apt_update()?;
        get().with_context(|| format!("downloading {pkg}"))?;
    }
    find().with_context(|| format!("apt-get download {pkg} left no .deb in {}", dir.display()))
}

/// `apt-get update`, at most once per process: apt's lists may be absent
/// (a fresh machine) or stale (a kernel superseded since).
fn apt_update() -> Result<()> {
    static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if !*done {
        *done = true;
        eprintln!("vm: apt-get update");
        run_quiet(Command::new("apt-get").args(["-o", "Dpkg::Use-Pty=0", "update"]))?;
    }
    Ok(())
}

fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The uncompressed ELF kernel inside a bzImage, as the kernel's
/// scripts/extract-vmlinux finds it: the first compressed stream (xz or
/// zstd, Debian's) that decompresses to an ELF file.
pub fn extract_vmlinux(bzimage: &Path) -> Result<Vec<u8>> {
    let img = std::fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let formats: [(&[u8], &str); 2] = [
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
    ];
    for (magic, tool) in formats {
        for pos in img
            .windows(magic.len())
            .enumerate()
            .filter(|(_, w)| *w == magic)
            .map(|(i, _)| i)
        {
            // The stream is followed by the rest of the image, so the tool
            // complains of trailing garbage: what it wrote is the answer.
            let mut child = match Command::new(tool)
                .args(["-dc", "-q"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(c) => c,
                Err(e) => bail!("cannot run {tool} (setup installs it): {e}"),
            };
            let mut stdin = child.stdin.take().context("no stdin")?;
            let data = img[pos..].to_vec();
            let writer = std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            });
            let mut out = Vec::new();
            child
                .stdout
                .take()
                .context("no stdout")?
                .read_to_end(&mut out)?;
            let _ = child.wait();
            let _ = writer.join();
            if out.starts_with(b"\x7fELF") {
                return Ok(out);
            }
        }
    }
    bail!("no xz or zstd stream holding an ELF kernel")
}

/// An exclusive flock(2), released on drop (when the file closes).
struct Flock(#[allow(dead_code)] File);

impl Flock {
    fn exclusive(path: &Path) -> Result<Flock> {
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        // SAFETY: a valid fd; flock has no memory effects.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(Flock(f))
    }
}

/// A newc cpio archive (what the kernel unpacks as an initramfs), built
/// in memory.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let name = name.trim_start_matches('/');
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name, 0o040755, (0, 0), &[]);
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(name, 0o100000 | mode, (0, 0), data);
        self
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
        self
    }

    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) -> &mut Self {
        self.entry(name, 0o020600, (major, minor), &[]);
        self
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

/// A module file's contents, decompressed (busybox insmod reads plain
/// .ko files only).
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let name = path.as_os_str().as_bytes();
    let tool = if name.ends_with(b".xz") {
        "xz"
    } else if name.ends_with(b".zst") {
        "zstd"
    } else {
        return std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {tool} (setup installs it)"))?;
    ensure!(
        out.status.success(),
        "{tool} -dc {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

/// A busybox initramfs: /bin/busybox with its applets, `modules` of
/// `kernel` (dependencies resolved) in /modules/ with /modules/order
/// listing them in load order, and `init` as /init. `init` starts with
/// `#!/bin/busybox sh`; `. /modules/load` loads the modules.
pub fn initramfs(kernel: &Kernel, modules: &[&str], init: &str, out: &Path) -> Result<()> {
    let mut c = Cpio::default();
    for d in ["bin", "sbin", "dev", "proc", "sys", "tmp", "mnt", "modules"] {
        c.dir(d);
    }
    c.char_dev("dev/console", 5, 1).char_dev("dev/null", 1, 3);
    let bb = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (Debian's busybox-static)"))?;
    c.file("bin/busybox", 0o755, &bb);
    c.symlink("bin/sh", "busybox");
    let mut load = String::from("for m in $(cat /modules/order); do\n");
    load += "  /bin/busybox insmod /modules/$m || echo \"vm: insmod $m failed\"\ndone\n";
    let mut order = String::new();
    for (i, p) in kernel.modules(modules)?.iter().enumerate() {
        let name = format!("{i:02}-{}.ko", module_name(&p.to_string_lossy()));
        c.file(&format!("modules/{name}"), 0o644, &module_bytes(p)?);
        order += &name;
        order.push('\n');
    }
    c.file("modules/order", 0o644, order.as_bytes());
    c.file("modules/load", 0o644, load.as_bytes());
    c.file("init", 0o755, init.as_bytes());
    std::fs::write(out, c.finish()).with_context(|| format!("writing {}", out.display()))
}

/// The QEMU command line for a TCG guest of `kernel` with `initrd`
/// (inside network namespace `netns`, if given, so that it finds its
/// tap there): 2 CPUs, `mem_mb` of memory, no display, the serial
/// console into `console_log`, and a panic or a reboot ends QEMU. Add
/// devices (`-virtfs`, `-netdev`...) to it.
pub fn qemu_command(
    netns: Option<&str>,
    kernel: &Kernel,
    initrd: &Path,
    append: &str,
    console_log: &Path,
    mem_mb: u32,
) -> Command {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nice"]);
            c
        }
        None => Command::new("nice"),
    };
    // Under TCG the guest's CPUs are host threads running flat out: others
    // building on the same machine keep their share.
    c.args(["-n", "10", QEMU])
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2"])
        .args(["-m", &mem_mb.to_string()])
        .args([
            "-nographic",
            "-monitor",
            "none",
            "-no-reboot",
            "-nodefaults",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console_log.display()))
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 loglevel=4 {append}"));
    c
}

/// A QEMU process, killed on drop.
pub struct Qemu {
    pub child: Child,
    pub console: PathBuf,
}

impl Qemu {
    /// Start `cmd` (from [`qemu_command`]); QEMU's own messages go to
    /// `console` + `.qemu`.
    pub fn spawn(mut cmd: Command, console: &Path) -> Result<Qemu> {
        let err = File::create(console.with_extension("qemu"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(err.try_clone()?)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {QEMU} (setup installs qemu-system-x86)"))?;
        Ok(Qemu {
            child,
            console: console.to_path_buf(),
        })
    }

    /// The console so far.
    pub fn console(&self) -> String {
        std::fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the console, and QEMU's own messages.
    pub fn tail(&self, n: usize) -> String {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        let mut s = lines[lines.len().saturating_sub(n)..].join("\n");
        let qemu = std::fs::read_to_string(self.console.with_extension("qemu")).unwrap_or_default();
        if !qemu.trim().is_empty() {
            s += &format!("\n[qemu] {}", qemu.trim());
        }
        s
    }

    /// Whether QEMU has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait until the console holds `needle` (Ok), QEMU exits or
    /// `timeout` passes (Err with the console's tail).
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            let text = self.console();
            if text.contains(needle) {
                return Ok(text);
            }
            if let Some(st) = self.exited() {
                bail!(
                    "QEMU exited ({st}) before {needle:?} on the console:\n{}",
                    self.tail(40)
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "no {needle:?} on the console after {timeout:?}:\n{}",
                    self.tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Wait for QEMU to exit, at most `timeout`; kill it then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.kill();
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_series() {
        assert_eq!(module_name("kernel/fs/9p/9p.ko.xz"), "9p");
        assert_eq!(module_name("kernel/net/9p/9pnet_virtio.ko"), "9pnet_virtio");
        assert!(in_series("6.1.0-57-amd64", "6.1"));
        assert!(!in_series("6.12.118+deb12-amd64", "6.1"));
        assert!(in_series("6.12.118+deb12-amd64", "6.12"));
        assert!(!in_series("6.12.118+deb12-cloud-amd64", "6.12"));
        assert!(numbers("6.1.0-57-amd64") > numbers("6.1.0-9-amd64"));
    }

    #[test]
    fn cpio_layout() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"x");
        let a = c.finish();
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
