//! `cargo xtask`: set up a Debian 12 machine for umlbr, build it, run the
//! demo and the tests. Run `cargo xtask help`.
mod bench;
mod clean;
mod demo;
mod fuzz;
mod install;
mod setup;
mod test;
mod util;
mod vm;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

const LONG_ABOUT: &str = "\
umlbr's task runner: everything from a fresh Debian 12 machine to a run of
every test, in one command each.

  cargo xtask demo    three UML guests on a umlbr bridge, pinging each other
  cargo xtask test    fmt, clippy, build, and every test (as root)

Both install what is missing first (`cargo xtask setup`), so on a fresh
Debian 12 with rustup's stable toolchain they are the only commands to type.

Two toolchains are involved: rustup's stable builds umlbr and these tools;
Debian's rustc-web 1.96 (/usr/bin/rustc, LLVM 22, with a prebuilt bpfel
core) and bpf-linker 0.13.0 built against LLVM 22 build the eBPF programs,
which umlbr/build.rs compiles and embeds.";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "umlbr's task runner: setup, build, demo, test",
    long_about = LONG_ABOUT
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every prerequisite on Debian 12: only what is missing.
    ///
    /// Checks, and installs where missing: the Debian packages of the eBPF
    /// toolchain (rustc-web, cargo-web, rust-web-src,
    /// libstd-rust-web-dev-bpf, llvm-22-dev, libpolly-22-dev, libzstd-dev)
    /// and of the test tools (user-mode-linux, iperf3, iproute2, nftables,
    /// iptables, dnsmasq-base, busybox-static, ethtool, tcpdump, linux-perf,
    /// bridge-utils, python3, util-linux, procps, kmod, qemu-system-x86,
    /// xz-utils, zstd, prometheus for promtool, curl, groff-base,
    /// man-db), with one
    /// `apt-get update` first; bpf-linker 0.13.0 built against LLVM 22
    /// (`cargo install`, a few minutes); rustup's rustfmt and clippy;
    /// /dev/net/tun (modprobe tun). Warns when the kernel has no BTF or is
    /// older than 6.6. Installing needs root; running it again does nothing.
    Setup {
        /// Only report what is missing (exit 1 if anything is); install nothing.
        #[arg(long)]
        check: bool,
    },
    /// Build umlbr (and its eBPF programs) after a quick prerequisite check.
    ///
    /// Runs `cargo build -p umlbr`; umlbr/build.rs compiles umlbr-ebpf with
    /// /usr/bin/cargo for bpfel-unknown-none and embeds the object. The
    /// binary is target/debug/umlbr (target/release/umlbr with --release).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Run every check and test: setup, fmt, clippy, build, cargo test (root)
    ///
    /// In order: prerequisites (installed if missing), removal of network
    /// namespaces left by crashed earlier runs, `cargo fmt --all -- --check`,
    /// `cargo clippy --workspace --all-targets -- -D warnings`,
    /// `cargo build -p umlbr`, then `cargo test --workspace --no-fail-fast
    /// -- --test-threads=1` with UMLBR_BIN set to the binary just built.
    /// Prints a summary; exits non-zero if anything failed.
    ///
    /// Examples:
    ///   cargo xtask test                     everything
    ///   cargo xtask test --no-lint fdb       tests with "fdb" in their name
    ///   cargo xtask test NAME -- --exact --nocapture
    #[command(verbatim_doc_comment)]
    Test(test::TestArgs),
    /// A longer fuzz pass of the datapath (tests/fuzz.rs) than the suite's (root).
    ///
    /// Builds umlbr, then runs the fuzz test for --secs seconds
    /// (UMLBR_FUZZ_SECS): seeded mutations of the corpus in
    /// tests/fuzz/corpus/ through umlbr_xdp, umlbr_tc and umlbr_tc_out,
    /// without and with a masquerade, judged by the test's oracle
    /// (checksums, redirects, map changes, counters). It prints the seed
    /// and its rate; failing inputs go to target/fuzz-failures/ and are
    /// shown in hex.
    ///
    /// Examples:
    ///   cargo xtask fuzz                      120 s, a seed from the clock
    ///   cargo xtask fuzz --secs 600 --seed 0x2a
    ///   cargo xtask fuzz --write-corpus       after changing the seeds' builders
    #[command(verbatim_doc_comment)]
    Fuzz(fuzz::FuzzArgs),
    /// What CI runs (`bash .ci/run`): `test` with the tool versions printed first.
    Ci(test::TestArgs),
    /// Three UML guests on a umlbr bridge in a namespace "host" (root).
    ///
    /// Sets up and builds first, then boots three User Mode Linux guests
    /// on one bridge, pings between the guests and the host, and prints
    /// `umlbr fdb show` and `umlbr stats`. Tears everything down at the end
    /// unless --keep.
    Demo {
        /// Leave the namespace, bridge and guests running at the end.
        #[arg(long)]
        keep: bool,
    },
    /// umlbr against the kernel bridge, side by side (root).
    ///
    /// Sets up and builds umlbr and the bench (bench/, crate umlbr-bench)
    /// in release, then measures every contender (kernel, kernel-tuned,
    /// umlbr, umlbr-tc, ceiling) on the same topologies, in network
    /// namespaces of their own, with interleaved repetitions. Writes
    /// bench/results/latest.json, latest.md and one SVG per group of rows.
    Bench(bench::BenchArgs),
    /// umlbr's functional checks inside Debian's kernels under QEMU (root).
    ///
    /// For each kernel (default: the newest 6.1, Debian 12's stock, and the
    /// newest 6.12 that apt knows), fetches its package with `apt-get
    /// download` into target/vm/ (once), boots it under QEMU TCG with the
    /// host's root read-only over 9p, runs the checks inside with the umlbr
    /// just built, and prints a table of kernel × check (PASS, FAIL, SKIP,
    /// with the reason of each FAIL and SKIP). Exits 1 if any check failed.
    /// About 2-4 minutes a kernel.
    ///
    /// Examples:
    ///   cargo xtask vm-test                          6.1 and 6.12, every check
    ///   cargo xtask vm-test --kernel 6.12 --check xdp --check tc
    ///   cargo xtask vm-test --kernel 6.1.0-57-amd64
    #[command(verbatim_doc_comment)]
    VmTest(vm::VmTestArgs),
    /// Delete network namespaces (and their processes) left by crashed runs.
    ///
    /// By default removes the test namespaces `umlbrt-<tag>-<pid>-<n>` whose
    /// test process <pid> is gone; namespaces of tests still running are
    /// left alone. NAMES are more namespaces to delete (e.g. a kept demo's).
    CleanNetns {
        /// Also remove test namespaces of running tests, and kill every
        /// linux.uml process on the machine.
        #[arg(long)]
        all: bool,
        /// More namespaces to delete, with every process in them.
        names: Vec<String>,
    },
    /// Install umlbr where Debian looks for it (root, unless --destdir).
    ///
    /// Builds the release binary (unless --binary) and installs it as
    /// PREFIX/sbin/umlbr; its bash, zsh and fish completions under
    /// PREFIX/share/{bash-completion/completions, zsh/vendor-completions,
    /// fish/vendor_completions.d}; its man pages (umlbr.8 and one per
    /// command) in PREFIX/share/man/man8; and, when the repository has
    /// them, contrib/systemd/umlbr@.service as
    /// PREFIX/lib/systemd/system/umlbr@.service and contrib/ifupdown/umlbr
    /// as PREFIX/lib/umlbr/ifupdown.sh, linked from
    /// /etc/network/{if-pre-up.d, if-up.d, if-post-down.d}/umlbr. The
    /// unit and the hook are rewritten to name the installed binary.
    ///
    /// Examples:
    ///   cargo xtask install                          under /usr/local
    ///   cargo xtask install --prefix /usr --destdir target/pkg
    #[command(verbatim_doc_comment)]
    Install(install::InstallArgs),
}

fn main() -> ExitCode {
    util::fix_path();
    umlbr_tests::exit("xtask", run(Cli::parse()))
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Setup { check } => setup::setup(check),
        Cmd::Build { release } => test::build(release),
        Cmd::Test(args) => test::test(&args, false),
        Cmd::Ci(args) => test::test(&args, true),
        Cmd::Demo { keep } => {
            let bin = test::root_and_umlbr(
                "demo",
                "it creates a network namespace, taps and BPF programs",
                false,
            )?;
            // SAFETY: no other thread exists yet.
            unsafe { std::env::set_var("UMLBR_BIN", &bin) };
            demo::run(keep)
        }
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Fuzz(args) => fuzz::run(&args),
        Cmd::VmTest(args) => vm::run(&args),
        Cmd::CleanNetns { all, names } => clean::run(all, &names),
        Cmd::Install(args) => install::run(&args),
    }
}
