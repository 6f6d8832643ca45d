//! Running commands, and saying what is being done.
use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use anyhow::{Context, Result, bail};

/// A line of progress on stderr.
pub fn say(msg: impl AsRef<str>) {
    eprintln!("xtask: {}", msg.as_ref());
}

/// A warning on stderr that stands out.
pub fn warn(msg: impl AsRef<str>) {
    eprintln!("xtask: WARNING: {}", msg.as_ref());
}

/// A section header on stderr.
pub fn header(msg: impl AsRef<str>) {
    eprintln!("\n==> {}", msg.as_ref());
}

/// How `cmd` reads as a shell line, with the variables it sets in front.
pub fn show(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())))
        .collect();
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=+./:,@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Run `cmd` with inherited stdout/stderr (stdin closed), echoing it
/// first; fail unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", show(cmd));
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run `{}`", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

/// Run `cmd` quietly and return its stdout if it exits 0, None if it
/// fails or cannot be started. For checks: a missing tool is an answer.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fail with a clear message unless root.
pub fn require_root(what: &str, why: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask {what}` must run as root: {why}.\n\
             Run it as root, e.g. `sudo -E env \"PATH=$PATH\" cargo xtask {what}`."
        );
    }
    Ok(())
}

/// $HOME, or root's.
pub fn home() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// $CARGO_HOME, or ~/.cargo (where rustup and `cargo install` put tools).
pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"))
}

/// Put ~/.cargo/bin first on PATH for everything this process runs, so
/// that `cargo` is rustup's and `cargo install`ed tools are found even if
/// the caller's PATH lacks it (a fresh shell before `. ~/.cargo/env`).
pub fn fix_path() {
    let bin = cargo_home().join("bin");
    let old = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&old).collect();
    if dirs.first() == Some(&bin) {
        return;
    }
    dirs.retain(|d| d != &bin);
    dirs.insert(0, bin);
    if let Ok(path) = std::env::join_paths(dirs) {
        // SAFETY: called first thing in main, before any thread exists.
        unsafe { std::env::set_var("PATH", path) };
    }
}

/// The workspace root (the directory holding Cargo.toml and xtask/).
pub fn workspace_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        dir.parent().unwrap_or(dir).to_path_buf()
    })
}

/// `cargo` with the workspace root as working directory.
pub fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root());
    c
}

/// The workspace's target directory, as cargo sees it (honours
/// CARGO_TARGET_DIR and build.target-dir).
pub fn target_dir() -> Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed ({})", out.status);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}
