//! `cargo xtask fuzz [--secs N] [--seed S]`: a longer pass of the datapath
//! fuzz test (tests/fuzz.rs) than the suite's 16 s; `--write-corpus`
//! rewrites its seed corpus (tests/fuzz/corpus/) from the frame builders.
use anyhow::Result;

use crate::{
    test,
    util::{self, header},
};

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    /// How long the pass runs, in seconds (UMLBR_FUZZ_SECS), all
    /// programs and benches together.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub secs: u64,
    /// The PRNG seed (UMLBR_FUZZ_SEED), decimal or 0x-hex: a failed pass
    /// prints its own, to replay it. Default: from the clock.
    #[arg(long, value_parser = parse_seed)]
    pub seed: Option<u64>,
    /// Write the seed corpus (tests/fuzz/corpus/) anew from the builders in
    /// tests/fuzz.rs and stop (no root needed).
    #[arg(long)]
    pub write_corpus: bool,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("not a number (decimal or 0x-hex): {e}"))
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    if args.write_corpus {
        header("fuzz: writing tests/fuzz/corpus/ from the builders");
        return util::run(
            util::cargo()
                .env("UMLBR_FUZZ_WRITE_CORPUS", "1")
                .args(["test", "-p", "umlbr-tests", "--test", "fuzz"])
                .args(["corpus_is_current", "--", "--exact"]),
        );
    }
    let bin = test::root_and_umlbr(
        "fuzz",
        "it creates a network namespace, taps and BPF programs",
        false,
    )?;
    header(format!("fuzz: {} s of the datapath fuzz pass", args.secs));
    let mut c = util::cargo();
    c.env("UMLBR_BIN", &bin)
        .env("UMLBR_FUZZ_SECS", args.secs.to_string())
        .args(["test", "-p", "umlbr-tests", "--test", "fuzz"])
        .args(["--", "--test-threads=1", "--nocapture"]);
    if let Some(s) = args.seed {
        c.env("UMLBR_FUZZ_SEED", format!("{s:#x}"));
    }
    util::run(&mut c)
}
