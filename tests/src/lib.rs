//! Test support for umlbr: network namespaces that clean up after
//! themselves, UML guests, frame builders, and the harness of the
//! BPF_PROG_TEST_RUN tables.
pub mod bpf;
pub mod events;
pub mod netns;
pub mod qemu;
pub mod uml;
pub mod vm;
pub mod wire;

use std::{path::PathBuf, process::ExitCode};

/// A tool's exit: success, or `<tool>: error: <the error and its causes>`
/// on stderr and failure (xtask, the bench).
pub fn exit(tool: &str, r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{tool}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The umlbr binary under test: $UMLBR_BIN, else the workspace's
/// target/{debug,release}/umlbr (`cargo xtask test` builds it first).
pub fn umlbr_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("UMLBR_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("umlbr");
        if p.exists() {
            return p;
        }
    }
    panic!("no umlbr binary: run `cargo build -p umlbr` or set UMLBR_BIN");
}

/// One `#[test]` per contender of a scenario:
/// `per_contender!(learning, learning_umlbr: Kind::Umlbr, learning_kernel: Kind::Kernel)`
/// makes `fn learning_umlbr()` run `learning(Kind::Umlbr)`, and so on.
#[macro_export]
macro_rules! per_contender {
    ($scenario:ident, $($name:ident: $arg:expr),+ $(,)?) => {
        $(
            #[test]
            fn $name() -> anyhow::Result<()> {
                $scenario($arg)
            }
        )+
    };
}
