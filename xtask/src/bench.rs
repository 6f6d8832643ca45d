//! `cargo xtask bench [--quick]`: umlbr against the kernel bridge, side by
//! side. Sets up what is missing (like `demo`), builds umlbr and the bench
//! (crate `umlbr-bench`, bench/) in release, and runs the bench as root; it
//! writes bench/results/latest.json, latest.md and one SVG per group.
use std::process::Command;

use anyhow::{Result, bail};

use crate::{
    test,
    util::{self, header, say},
};

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug, Default)]
pub struct BenchArgs {
    /// Short run (0.8 s windows, 3 repetitions, fewer rows): within 5 minutes.
    #[arg(long)]
    pub quick: bool,
    /// More arguments for umlbr-bench, after `--` (e.g. `--only tap-to-tap`,
    /// `--contenders kernel,umlbr`, `--reps 7`, `--secs 2`; see
    /// `target/release/umlbr-bench --help`).
    #[arg(last = true, value_name = "BENCH_ARGS")]
    pub bench_args: Vec<String>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let umlbr = test::root_and_umlbr(
        "bench",
        "it creates network namespaces, taps and BPF programs",
        true,
    )?;
    header("build: cargo build --release -p umlbr-bench");
    util::run(util::cargo().args(["build", "--release", "-p", "umlbr-bench"]))?;
    let bench = util::target_dir()?.join("release").join("umlbr-bench");
    if !bench.exists() {
        bail!("the build succeeded but {} does not exist", bench.display());
    }
    let out = util::workspace_root().join("bench").join("results");
    header(format!(
        "bench{}: umlbr against the kernel bridge",
        if args.quick { " --quick" } else { "" }
    ));
    let mut c = Command::new(&bench);
    c.arg("--umlbr").arg(&umlbr);
    // A caller's own --out (after `--`) wins over bench/results.
    let own_out = args
        .bench_args
        .iter()
        .any(|a| a == "--out" || a.starts_with("--out="));
    if !own_out {
        c.arg("--out").arg(&out);
    }
    if args.quick {
        c.arg("--quick");
    }
    c.args(&args.bench_args);
    util::run(&mut c)?;
    if !own_out {
        say(format!("results: {}", out.join("latest.md").display()));
    }
    Ok(())
}
