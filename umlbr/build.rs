//! Builds umlbr-ebpf for bpfel-unknown-none and embeds the object.
//!
//! The eBPF crate needs a rustc with a bpfel `core` (Debian's rustc-web
//! 1.96 with libstd-rust-web-dev-bpf) and bpf-linker built against its
//! LLVM 22; `cargo xtask setup` installs both. The host toolchain that runs
//! this script may be another one (rustup's), so it is never used here.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const SETUP_HINT: &str = "run `cargo xtask setup` (installs rustc-web, cargo-web, \
libstd-rust-web-dev-bpf, llvm-22-dev and `cargo install bpf-linker --version 0.13.0 \
--no-default-features --features llvm-22` with LLVM_PREFIX=/usr/lib/llvm-22)";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest.join("../umlbr-ebpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    for p in ["src", "Cargo.toml", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(p).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("../umlbr-common/src").display()
    );
    println!("cargo:rerun-if-env-changed=UMLBR_BPF_RUSTC");

    let rustc = env::var("UMLBR_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let home = env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cargo_bin = PathBuf::from(&home).join(".cargo/bin");
    let cargo = check_toolchain(&rustc, &cargo_bin);
    let target_dir = out_dir.join("ebpf-target");
    build_ebpf(&cargo, &rustc, &home, &ebpf_dir, &target_dir);
    let obj = target_dir.join("bpfel-unknown-none/release/umlbr");
    std::fs::copy(&obj, out_dir.join("umlbr.bpf.o"))
        .unwrap_or_else(|e| panic!("umlbr: no eBPF object at {}: {e}", obj.display()));
}

/// The eBPF toolchain's cargo, next to `rustc`; fails the build with a
/// hint when a part is missing.
fn check_toolchain(rustc: &str, cargo_bin: &Path) -> PathBuf {
    let cargo = PathBuf::from(rustc).with_file_name("cargo");
    let sysroot_core = PathBuf::from(rustc)
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("lib/rustlib/bpfel-unknown-none/lib"));
    let linker_ok = Command::new(cargo_bin.join("bpf-linker"))
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        || Command::new("bpf-linker").arg("--version").output().is_ok();
    let core_ok = sysroot_core.as_ref().is_some_and(|p| p.is_dir());
    if !PathBuf::from(rustc).exists() || !cargo.exists() || !core_ok || !linker_ok {
        panic!(
            "umlbr: the eBPF toolchain is missing (need {rustc}, {}, a bpfel core in {:?}, \
             and bpf-linker): {SETUP_HINT}",
            cargo.display(),
            sysroot_core
        );
    }
    cargo
}

/// `cargo build --release --target bpfel-unknown-none` in `ebpf_dir`.
fn build_ebpf(cargo: &Path, rustc: &str, home: &str, ebpf_dir: &Path, target_dir: &Path) {
    let cargo_bin = PathBuf::from(home).join(".cargo/bin");
    let path = format!(
        "{}:{}",
        cargo_bin.display(),
        env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(cargo);
    cmd.current_dir(ebpf_dir)
        .args(["build", "--release", "--target", "bpfel-unknown-none"])
        .arg("--target-dir")
        .arg(target_dir)
        .env("RUSTC", rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", path);
    // Nothing of the outer (host) build may leak into the eBPF build.
    for (k, _) in env::vars() {
        if k.starts_with("CARGO_")
            || k.starts_with("RUSTC_WRAPPER")
            || k == "RUSTFLAGS"
            || k == "RUSTDOC"
            || k == "RUSTC_WORKSPACE_WRAPPER"
        {
            cmd.env_remove(&k);
        }
    }
    cmd.env("CARGO_HOME", PathBuf::from(home).join(".cargo"));
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("umlbr: cannot run {}: {e}; {SETUP_HINT}", cargo.display()));
    if !status.success() {
        panic!("umlbr: building umlbr-ebpf failed ({status}); if a tool is missing, {SETUP_HINT}");
    }
}
