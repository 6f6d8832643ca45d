//! `cargo xtask demo`: three User Mode Linux guests on a umlbr bridge in a
//! network namespace "host", pinging each other and the host.
//!
//! main.rs runs `cargo xtask setup` (if anything is missing) and builds
//! umlbr before calling [`run`]; the binary is `umlbr_tests::umlbr_bin()`
//! ($UMLBR_BIN is set to it).

/// Run the demo; with `keep`, leave the topology running at the end.
pub fn run(keep: bool) -> anyhow::Result<()> {
    let _ = keep;
    anyhow::bail!("demo not implemented yet")
}
