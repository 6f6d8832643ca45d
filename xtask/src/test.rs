//! `cargo xtask build` and `cargo xtask test`.
use std::{
    io::{Read, Write},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    clean, setup,
    util::{self, header, say, show},
};

/// Options of `cargo xtask test` (and `ci`).
#[derive(clap::Args, Debug, Default)]
pub struct TestArgs {
    /// Run only the tests whose name contains FILTER (passed to the test
    /// harness, like `cargo test FILTER`).
    pub filter: Option<String>,
    /// Skip `cargo fmt --check` and `cargo clippy`.
    #[arg(long)]
    pub no_lint: bool,
    /// Skip the prerequisite check (`cargo xtask setup`).
    #[arg(long)]
    pub no_setup: bool,
    /// After the tests, run `cargo xtask vm-test` on every kernel of its
    /// matrix (Debian's 6.1 and 6.12 under QEMU, ~2-4 minutes each)
    /// instead of 6.1 alone.
    #[arg(long)]
    pub vm: bool,
    /// Skip the vm-test of Debian 12's stock kernel (6.1, without tcx:
    /// the clsact fallback) that runs after the tests unless a FILTER is
    /// given (~2-3 minutes).
    #[arg(long, conflicts_with = "vm")]
    pub no_vm: bool,
    /// More arguments for the test harness, after `--` (e.g. `--nocapture`,
    /// `--exact`, `--ignored`).
    #[arg(last = true, value_name = "HARNESS_ARGS")]
    pub harness_args: Vec<String>,
}

/// For a command that needs root (`what`, because `why`) and umlbr: root
/// checked, prerequisites ensured, umlbr built; the binary's path.
pub fn root_and_umlbr(what: &str, why: &str, release: bool) -> Result<PathBuf> {
    util::require_root(what, why)?;
    crate::setup::ensure()?;
    build_umlbr(release)
}

/// `cargo build -p umlbr` (builds the eBPF object through umlbr/build.rs);
/// returns the path of the umlbr binary.
pub fn build_umlbr(release: bool) -> Result<PathBuf> {
    header("build: cargo build -p umlbr");
    let mut c = util::cargo();
    c.args(["build", "-p", "umlbr"]);
    if release {
        c.arg("--release");
    }
    util::run(&mut c)?;
    let bin = util::target_dir()?
        .join(if release { "release" } else { "debug" })
        .join("umlbr");
    if !bin.exists() {
        bail!("the build succeeded but {} does not exist", bin.display());
    }
    say(format!("umlbr binary: {}", bin.display()));
    Ok(bin)
}

/// `cargo xtask build`.
pub fn build(release: bool) -> Result<()> {
    setup::ensure()?;
    build_umlbr(release)?;
    Ok(())
}

struct Step {
    name: &'static str,
    outcome: String,
    ok: bool,
    took: Duration,
}

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    filtered: u64,
    binaries: u64,
    failures: Vec<String>,
}

impl Tally {
    fn line(&mut self, line: &str) {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("test result: ") {
            self.binaries += 1;
            for part in rest.split(';') {
                // "ok. 3 passed", " 0 failed", " 2 filtered out", ...
                let words: Vec<&str> = part.split_whitespace().collect();
                let Some(i) = words.iter().position(|w| w.parse::<u64>().is_ok()) else {
                    continue;
                };
                let n: u64 = words[i].parse().unwrap_or(0);
                match words.get(i + 1).copied() {
                    Some("passed") => self.passed += n,
                    Some("failed") => self.failed += n,
                    Some("ignored") => self.ignored += n,
                    Some("filtered") => self.filtered += n,
                    _ => {}
                }
            }
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            self.failures.push(name.to_string());
        }
    }
}

/// Run `cmd` and pass its stdout through as it comes, tallying the test
/// harness' result lines.
fn run_tallied(cmd: &mut Command, tally: &mut Tally) -> Result<bool> {
    eprintln!("+ {}", show(cmd));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{}`", show(cmd)))?;
    let mut out = child.stdout.take().context("no stdout pipe")?;
    let mut buf = [0u8; 8192];
    let mut line = Vec::new();
    let stdout = std::io::stdout();
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading cargo test's output"),
        };
        {
            let mut o = stdout.lock();
            let _ = o.write_all(&buf[..n]);
            let _ = o.flush();
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                tally.line(&String::from_utf8_lossy(&line));
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        tally.line(&String::from_utf8_lossy(&line));
    }
    Ok(child.wait()?.success())
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// `cargo xtask test` / `cargo xtask ci`: setup, lints, build, every test.
pub fn test(args: &TestArgs, ci: bool) -> Result<()> {
    let what = if ci { "ci" } else { "test" };
    util::require_root(
        what,
        "the tests create network namespaces and tap devices and load BPF programs",
    )?;
    let started = Instant::now();
    let mut steps: Vec<Step> = Vec::new();

    if ci {
        header("ci: versions");
        for c in [
            vec!["cargo", "--version"],
            vec!["rustc", "--version"],
            vec!["/usr/bin/rustc", "--version"],
            vec!["uname", "-r"],
        ] {
            if let Some(v) = util::probe(Command::new(c[0]).args(&c[1..])) {
                say(format!("{}: {}", c.join(" "), v.trim()));
            }
        }
    }

    if !args.no_setup {
        let (r, took) = timed(setup::ensure);
        let ok = r.is_ok();
        steps.push(Step {
            name: "setup",
            outcome: if ok { "ok".into() } else { "FAILED".into() },
            ok,
            took,
        });
        if let Err(e) = r {
            summary(&steps, None, started.elapsed());
            return Err(e.context("setup failed; nothing else ran"));
        }
    }

    let stale = umlbr_tests::netns::stale();
    if !stale.is_empty() {
        header(format!(
            "removing {} namespace(s) left by earlier test runs",
            stale.len()
        ));
        for n in &stale {
            clean::delete_netns(n);
        }
    }

    if !args.no_lint {
        header("lint: cargo fmt --all -- --check (and the eBPF crate's, its own workspace)");
        let (r, took) = timed(|| {
            util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))?;
            util::run(util::cargo().args([
                "fmt",
                "--manifest-path",
                "umlbr-ebpf/Cargo.toml",
                "--",
                "--check",
            ]))
        });
        steps.push(step(
            "fmt",
            r,
            took,
            "run `cargo fmt --all` (and `cargo fmt` in umlbr-ebpf/)",
        ));

        header("lint: cargo clippy --workspace --all-targets -- -D warnings");
        let (r, took) = timed(|| {
            util::run(util::cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        });
        steps.push(step("clippy", r, took, "see the warnings above"));
    }

    let (r, took) = timed(|| build_umlbr(false));
    let bin = match r {
        Ok(b) => {
            steps.push(Step {
                name: "build",
                outcome: "ok".into(),
                ok: true,
                took,
            });
            b
        }
        Err(e) => {
            steps.push(Step {
                name: "build",
                outcome: format!("FAILED: {e:#}"),
                ok: false,
                took,
            });
            summary(&steps, None, started.elapsed());
            bail!("building umlbr failed; the tests did not run");
        }
    };

    header("test: cargo test --workspace (one test at a time)");
    let mut c = util::cargo();
    c.env("UMLBR_BIN", &bin)
        .args(["test", "--workspace", "--no-fail-fast", "--"]);
    if let Some(f) = &args.filter {
        c.arg(f);
    }
    c.arg("--test-threads=1").args(&args.harness_args);
    let mut tally = Tally::default();
    let (r, took) = timed(|| run_tallied(&mut c, &mut tally));
    let ok = matches!(r, Ok(true)) && tally.failed == 0;
    let outcome = match &r {
        Err(e) => format!("FAILED: {e:#}"),
        Ok(_) => {
            let mut s = format!(
                "{} passed, {} failed, {} ignored",
                tally.passed, tally.failed, tally.ignored
            );
            if args.filter.is_some() {
                s += &format!(", {} filtered out", tally.filtered);
            }
            if ok {
                s.insert_str(0, "ok: ");
            } else {
                s.insert_str(0, "FAILED: ");
                if tally.failed == 0 {
                    s += " (cargo test failed: a build error or a crashed test binary, see above)";
                }
            }
            s
        }
    };
    steps.push(Step {
        name: "test",
        outcome,
        ok,
        took,
    });
    if args.vm {
        header("vm-test: the functional checks in Debian's kernels under QEMU");
        let (r, took) = timed(|| crate::vm::matrix(&bin, &crate::vm::VmTestArgs::default()));
        steps.push(step("vm-test", r, took, "see the table above"));
    } else if !args.no_vm && args.filter.is_none() {
        // The host's kernel has tcx; Debian 12's stock one does not: the
        // one run that proves the clsact fallback on a real old kernel.
        header("vm-test 6.1: the functional checks in Debian 12's stock kernel under QEMU");
        let only_61 = crate::vm::VmTestArgs {
            kernels: vec!["6.1".into()],
            ..Default::default()
        };
        let (r, took) = timed(|| crate::vm::matrix(&bin, &only_61));
        steps.push(step("vm-test 6.1", r, took, "see the table above"));
    }
    summary(&steps, Some(&tally), started.elapsed());

    let failed: Vec<&str> = steps.iter().filter(|s| !s.ok).map(|s| s.name).collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

fn step(name: &'static str, r: Result<()>, took: Duration, hint: &str) -> Step {
    match r {
        Ok(()) => Step {
            name,
            outcome: "ok".into(),
            ok: true,
            took,
        },
        Err(_) => Step {
            name,
            outcome: format!("FAILED ({hint})"),
            ok: false,
            took,
        },
    }
}

fn summary(steps: &[Step], tally: Option<&Tally>, total: Duration) {
    let mut s = String::from("\n==> summary\n");
    for st in steps {
        s += &format!(
            "  {:<7} {:>7.1}s  {}\n",
            st.name,
            st.took.as_secs_f64(),
            st.outcome
        );
    }
    if let Some(t) = tally {
        if !t.failures.is_empty() {
            s += "  failed tests:\n";
            for f in &t.failures {
                s += &format!("    {f}\n");
            }
            s += "  rerun one: cargo xtask test --no-lint NAME -- --exact --nocapture\n";
        }
        if t.binaries > 0 && t.passed + t.failed == 0 {
            s += "  note: no test ran (check the filter)\n";
        }
    }
    s += &format!("  total   {:>7.1}s\n", total.as_secs_f64());
    eprint!("{s}");
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_lines() {
        let mut t = Tally::default();
        t.line("test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 0.01s");
        t.line("test e2e::ping ... FAILED");
        t.line("test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.50s");
        assert_eq!((t.passed, t.failed, t.ignored, t.filtered), (4, 1, 1, 2));
        assert_eq!(t.failures, vec!["e2e::ping".to_string()]);
        assert_eq!(t.binaries, 2);
    }
}
