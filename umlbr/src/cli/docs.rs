//! `umlbr completions` and `umlbr man`: generated from the grammar in
//! `cli/mod.rs`, so that they never disagree with `--help`.
use std::path::Path;

use anyhow::{Context, Result};
use clap::{Command, CommandFactory};

use super::Cli;

/// Print the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "umlbr", &mut std::io::stdout());
    Ok(())
}

/// umlbr's pages are in section 8 (system administration): every command
/// but `completions` and `man` needs root.
const SECTION: &str = "8";

/// The page of `cmd`, titled by its display name (umlbr-tap-add once
/// the grammar is built).
fn man_of(cmd: Command) -> clap_mangen::Man {
    let title = page_name(&cmd);
    clap_mangen::Man::new(cmd)
        .title(title)
        .section(SECTION)
        .manual("umlbr")
        .source(format!("umlbr {}", env!("CARGO_PKG_VERSION")))
}

/// umlbr, umlbr-attach, umlbr-tap-add: the display name clap gives a
/// command once the grammar is built.
fn page_name(cmd: &Command) -> String {
    cmd.get_display_name().unwrap_or(cmd.get_name()).to_string()
}

/// `man` without `dir`: umlbr.8 on stdout. With `dir`: umlbr.8 and one
/// page per command, umlbr-COMMAND.8 (umlbr-tap-add.8 for a command's
/// own commands), as git's pages are.
pub fn man(dir: Option<&Path>) -> Result<()> {
    let mut cmd = Cli::command();
    cmd.build();
    let Some(dir) = dir else {
        return man_of(cmd)
            .render(&mut std::io::stdout().lock())
            .context("writing the man page");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    write_pages(dir, &cmd, &mut written)?;
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}

fn write_pages(dir: &Path, cmd: &Command, written: &mut Vec<std::path::PathBuf>) -> Result<()> {
    let man = man_of(cmd.clone());
    let path = dir.join(format!("{}.{SECTION}", page_name(cmd)));
    let mut buf = Vec::new();
    man.render(&mut buf)?;
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_pages(dir, sub, written)?;
    }
    Ok(())
}
