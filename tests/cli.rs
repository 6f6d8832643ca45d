//! The umlbr command line: bad input gets a clear one-line error and a
//! non-zero exit, and leaves nothing half-made; read commands print only
//! JSON with --json.
//!
//! Every test runs the umlbr binary (`cargo build -p umlbr` first, or set
//! UMLBR_BIN) in a fresh network namespace of its own. A failing command is
//! checked by `fails()`: exit status non-zero, nothing on stdout, exactly
//! one line on stderr starting `umlbr: error:` and naming the culprit,
//! and the namespace unchanged: the same interfaces, the same XDP
//! programs on them, the same TC programs (tcx or clsact) on them, the
//! same bridges with the same ports and static FDB entries. In a
//! namespace without bridges, `ip -d link` must show no XDP program at
//! all.
//!
//! Needs root.
use std::{
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use umlbr_tests::{
    netns::{Netns, ifindex, xdp_prog_ids},
    umlbr_bin,
};

mod umlbr_lib;
// ---------------------------------------------------------------------------
// Helpers.

/// What a failed command must leave as it was.
#[derive(Debug, PartialEq)]
struct State {
    /// (name, kind, XDP program ids, TC ingress program ids), by name.
    links: Vec<(String, String, Vec<u64>, Vec<u32>)>,
    /// Bridges as `show --json` reports them, without counters.
    bridges: Value,
    /// Static FDB entries (learned ones come and go with traffic).
    static_fdb: Value,
}

fn state(ns: &Netns) -> Result<State> {
    let links: Value = serde_json::from_str(&ns.sh("ip -j -d link show")?)?;
    let mut v = Vec::new();
    let mut idx = Vec::new();
    for l in links.as_array().context("ip -j link: not an array")? {
        let name = l["ifname"].as_str().unwrap_or("").to_string();
        let kind = l["linkinfo"]["info_kind"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut ids = xdp_prog_ids(l);
        ids.sort_unstable();
        idx.push(l["ifindex"].as_u64().unwrap_or(0) as u32);
        v.push((name, kind, ids, Vec::new()));
    }
    let tcx = ns.run_in(|| {
        Ok(idx
            .iter()
            .map(|&i| {
                let mut t = umlbr_lib::tc_prog_ids(i, umlbr_lib::Tc::Ingress);
                t.sort_unstable();
                t
            })
            .collect::<Vec<_>>())
    })?;
    for (l, t) in v.iter_mut().zip(tcx) {
        l.3 = t;
    }
    v.sort();
    let mut bridges = json(ns, &["show", "--json"])?;
    for b in bridges
        .as_array_mut()
        .context("show --json: not an array")?
    {
        let b = b.as_object_mut().context("show --json: not an object")?;
        b.remove("fdb_entries");
        for p in b
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .context("show --json: no ports")?
        {
            p.as_object_mut().context("port")?.remove("stats");
        }
    }
    let mut fdb = json(ns, &["fdb", "show", "--json"])?;
    let rows = fdb
        .as_array_mut()
        .context("fdb show --json: not an array")?;
    rows.retain(|r| r["static"] == Value::Bool(true));
    Ok(State {
        links: v,
        bridges,
        static_fdb: fdb,
    })
}

/// Run umlbr and parse its stdout, which must be JSON and nothing else.
fn json(ns: &Netns, args: &[&str]) -> Result<Value> {
    let out = ns.umlbr(args)?;
    ensure!(
        out.status.success(),
        "umlbr {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "umlbr {args:?}: stdout is not JSON: {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn ok(ns: &Netns, args: &[&str]) -> Result<()> {
    ns.umlbr_ok(args).map(|_| ())
}

/// Check a one-line error: starts `umlbr: error:`, names every `needle`.
fn one_line_error(what: &str, out: &std::process::Output, needles: &[&str]) -> Result<String> {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        !out.status.success(),
        "{what}: succeeded ({}), stderr {stderr:?}",
        out.status
    );
    // 1: the command failed; 2: the command line itself was wrong.
    ensure!(
        matches!(out.status.code(), Some(1) | Some(2)),
        "{what}: exit status {} (expected 1 or 2), stderr {stderr:?}",
        out.status
    );
    ensure!(stdout.is_empty(), "{what}: printed on stdout: {stdout:?}");
    ensure!(
        stderr.ends_with('\n') && stderr.matches('\n').count() == 1,
        "{what}: stderr is not exactly one line: {stderr:?}"
    );
    ensure!(
        stderr.starts_with("umlbr: error: "),
        "{what}: stderr does not start with `umlbr: error: `: {stderr:?}"
    );
    for n in needles {
        ensure!(
            stderr.contains(n),
            "{what}: error does not name {n:?}: {stderr:?}"
        );
    }
    // Clear: no cause printed twice in a row ("X: Y: Y").
    let parts: Vec<&str> = stderr.trim_end().split(": ").collect();
    if let Some(w) = parts.windows(2).find(|w| w[0] == w[1]) {
        bail!("{what}: the error repeats {:?}: {stderr:?}", w[0]);
    }
    Ok(stderr)
}

/// Run umlbr `args` in `ns`, expect a clean failure naming `needles`, and
/// the namespace exactly as it was.
fn fails(ns: &Netns, args: &[&str], needles: &[&str]) -> Result<String> {
    let what = format!("umlbr {}", args.join(" "));
    let before = state(ns)?;
    let out = ns.umlbr(args)?;
    let after = state(ns)?;
    // Both checks run, so that a bad message does not hide a leftover.
    let msg = one_line_error(&what, &out, needles);
    let mut left = Vec::new();
    if before != after {
        left.push(format!(
            "{what}: left the namespace changed:\nbefore {before:#?}\nafter {after:#?}"
        ));
    }
    if before.bridges.as_array().is_some_and(|a| a.is_empty()) {
        let d = ns.sh("ip -d link")?;
        if d.contains("prog/xdp") {
            left.push(format!("{what}: XDP program left:\n{d}"));
        }
    }
    match (msg, left.is_empty()) {
        (Ok(m), true) => Ok(m),
        (Ok(_), false) => bail!("{}", left.join("\n")),
        (Err(e), true) => Err(e),
        (Err(e), false) => bail!("{e:#}\n{}", left.join("\n")),
    }
}

/// Run every check and report all failures together.
fn all(checks: Vec<(&str, Result<String>)>) -> Result<()> {
    let n = checks.len();
    let bad: Vec<String> = checks
        .into_iter()
        .filter_map(|(name, r)| r.err().map(|e| format!("  {name}: {e:#}")))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        bail!("{} of {n} checks failed:\n{}", bad.len(), bad.join("\n"))
    }
}

fn interfaces(ns: &Netns) -> Result<Vec<String>> {
    let links: Value = serde_json::from_str(&ns.sh("ip -j link show")?)?;
    let mut v: Vec<String> = links
        .as_array()
        .context("ip -j link")?
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(String::from))
        .collect();
    v.sort();
    Ok(v)
}

// ---------------------------------------------------------------------------
// Bad input.

#[test]
fn unknown_interface() -> Result<()> {
    let ns = Netns::without_ipv6("cli-noif")?;
    ok(&ns, &["up", "br0"])?;
    let q = "\"nosuch0\"";
    all(vec![
        (
            "attach",
            fails(&ns, &["attach", "nosuch0"], &[q, "does not exist"]),
        ),
        (
            "attach --bridge",
            fails(&ns, &["attach", "nosuch0", "--bridge", "br0"], &[q]),
        ),
        (
            "detach",
            fails(&ns, &["detach", "nosuch0"], &[q, "does not exist"]),
        ),
        (
            "fdb add",
            fails(&ns, &["fdb", "add", "02:00:00:00:00:01", "nosuch0"], &[q]),
        ),
        ("tap del", fails(&ns, &["tap", "del", "nosuch0"], &[q])),
    ])
}

#[test]
fn attach_twice() -> Result<()> {
    let ns = Netns::without_ipv6("cli-twice")?;
    ok(&ns, &["up", "br0"])?;
    ok(&ns, &["tap", "add", "tap0"])?;
    ok(&ns, &["attach", "tap0"])?;
    all(vec![
        (
            "again",
            fails(&ns, &["attach", "tap0"], &["tap0", "br0", "already"]),
        ),
        (
            "again --bridge",
            fails(
                &ns,
                &["attach", "tap0", "--bridge", "br0"],
                &["tap0", "br0"],
            ),
        ),
    ])
}

#[test]
fn attach_to_two_bridges() -> Result<()> {
    let ns = Netns::without_ipv6("cli-two")?;
    ok(&ns, &["up", "br0"])?;
    ok(&ns, &["up", "br1"])?;
    ok(&ns, &["tap", "add", "tap0"])?;
    ok(&ns, &["attach", "tap0", "--bridge", "br0"])?;
    fails(
        &ns,
        &["attach", "tap0", "--bridge", "br1"],
        &["tap0", "br0", "already"],
    )?;
    Ok(())
}

#[test]
fn attach_without_bridge_needs_exactly_one() -> Result<()> {
    let ns = Netns::without_ipv6("cli-which")?;
    ok(&ns, &["tap", "add", "tap0"])?;
    fails(&ns, &["attach", "tap0"], &["no bridge"])?;
    ok(&ns, &["up", "br0"])?;
    ok(&ns, &["up", "br1"])?;
    fails(&ns, &["attach", "tap0"], &["br0", "br1", "--bridge"])?;
    fails(
        &ns,
        &["fdb", "del", "02:00:00:00:00:01"],
        &["br0", "br1", "--bridge"],
    )?;
    Ok(())
}

#[test]
fn bridge_that_does_not_exist() -> Result<()> {
    let ns = Netns::without_ipv6("cli-nobr")?;
    // Another bridge exists, so the error cannot be "no bridge at all".
    ok(&ns, &["up", "br0"])?;
    ok(&ns, &["tap", "add", "tap0"])?;
    ns.sh("ip link add veth0 type veth peer name veth1")?;
    let q = ["\"nobr\"", "does not exist"];
    all(vec![
        ("down", fails(&ns, &["down", "nobr"], &q)),
        ("show", fails(&ns, &["show", "nobr"], &q)),
        ("show --json", fails(&ns, &["show", "nobr", "--json"], &q)),
        ("fdb show", fails(&ns, &["fdb", "show", "nobr"], &q)),
        ("stats", fails(&ns, &["stats", "nobr"], &q)),
        (
            "attach --bridge",
            fails(&ns, &["attach", "tap0", "--bridge", "nobr"], &q),
        ),
        (
            "fdb del --bridge",
            fails(
                &ns,
                &["fdb", "del", "02:00:00:00:00:01", "--bridge", "nobr"],
                &q,
            ),
        ),
        // An interface that exists but is not a bridge.
        (
            "down of a plain veth",
            fails(&ns, &["down", "veth0"], &["\"veth0\"", "does not exist"]),
        ),
        (
            "down of a tap",
            fails(&ns, &["down", "tap0"], &["\"tap0\"", "does not exist"]),
        ),
    ])
}

#[test]
fn up_of_an_existing_name() -> Result<()> {
    let ns = Netns::without_ipv6("cli-upex")?;
    ok(&ns, &["up", "br0"])?;
    ns.sh("ip link add veth0 type veth peer name veth1 && ip link add x-sw type veth peer name x-peer")?;
    all(vec![
        (
            "bridge again",
            fails(&ns, &["up", "br0"], &["\"br0\"", "already exists"]),
        ),
        (
            "a veth's name",
            fails(&ns, &["up", "veth0"], &["\"veth0\"", "already exists"]),
        ),
        (
            "the switch port's name is taken",
            fails(&ns, &["up", "x"], &["\"x-sw\"", "already exists"]),
        ),
        (
            "a bridge's switch port",
            fails(&ns, &["up", "br0-sw"], &["\"br0-sw\"", "already exists"]),
        ),
    ])
}

#[test]
fn invalid_up_options() -> Result<()> {
    let ns = Netns::without_ipv6("cli-cidr")?;
    let mut checks = Vec::new();
    for bad in [
        "192.168.2.1",
        "192.168.2.1/33",
        "garbage",
        "300.1.1.1/24",
        "192.168.2.1/",
        "/24",
        "fd00::1/129",
    ] {
        let q = format!("{bad:?}");
        checks.push((
            bad,
            fails(&ns, &["up", "br0", "--address", bad], &[&q, "CIDR"]),
        ));
    }
    checks.push((
        "--aging 0",
        fails(&ns, &["up", "br0", "--aging", "0"], &["--aging"]),
    ));
    for bad in ["0", "abc", "18446744073709551615"] {
        let out = ns.umlbr(&["up", "br0", "--aging", bad])?;
        ensure!(
            out.status.code() == Some(2),
            "--aging {bad}: usage errors exit 2, got {}",
            out.status
        );
    }
    all(checks)?;
    ensure!(interfaces(&ns)? == vec!["lo"], "{:?}", interfaces(&ns)?);
    Ok(())
}

/// `up --uplink/--masquerade` with an interface that cannot be one: a
/// clear error, and nothing made.
#[test]
fn up_with_an_unfit_uplink() -> Result<()> {
    let ns = Netns::without_ipv6("cli-upl")?;
    ns.sh(
        "ip link add d0 type veth peer name d0p && ip link add d1 type veth peer name d1p \
           && ip addr add 10.0.0.1/24 dev d1",
    )?;
    ok(
        &ns,
        &[
            "up",
            "br0",
            "--address",
            "192.168.5.1/24",
            "--masquerade",
            "d1",
        ],
    )?;
    ok(&ns, &["tap", "add", "tap0"])?;
    ok(&ns, &["attach", "tap0"])?;
    let up = |extra: &[&'static str]| {
        let mut a = vec!["up", "br1"];
        a.extend_from_slice(extra);
        a
    };
    all(vec![
        (
            "masquerade without an IPv4 address",
            fails(
                &ns,
                &up(&["--address", "192.168.6.1/24", "--masquerade", "d0"]),
                &["d0", "no IPv4 address"],
            ),
        ),
        (
            "another bridge's masquerade uplink",
            fails(
                &ns,
                &up(&["--address", "192.168.6.1/24", "--masquerade", "d1"]),
                &["d1", "br0", "masquerade uplink"],
            ),
        ),
        (
            "a port of another bridge",
            fails(&ns, &up(&["--uplink", "tap0"]), &["tap0", "br0", "already"]),
        ),
        (
            "another bridge's own interface",
            fails(&ns, &up(&["--uplink", "br0"]), &["br0", "host port"]),
        ),
        (
            "missing",
            fails(
                &ns,
                &up(&["--uplink", "nosuch0"]),
                &["\"nosuch0\"", "does not exist"],
            ),
        ),
    ])
}

/// `up` fails after it made the veth pair and attached the programs (the
/// kernel refuses the address): everything it made must go again.
#[test]
fn up_failing_half_way_leaves_nothing() -> Result<()> {
    let ns = Netns::without_ipv6("cli-half")?;
    all(vec![
        (
            "IPv6 address with IPv6 disabled",
            fails(
                &ns,
                &["up", "br0", "--address", "fd00::1/64"],
                &["fd00::1/64", "br0"],
            ),
        ),
        (
            "multicast IPv4 address",
            fails(
                &ns,
                &["up", "br0", "--address", "224.0.0.1/24"],
                &["224.0.0.1/24", "br0"],
            ),
        ),
    ])?;
    ensure!(interfaces(&ns)? == vec!["lo"], "{:?}", interfaces(&ns)?);
    Ok(())
}

#[test]
fn invalid_macs() -> Result<()> {
    let ns = Netns::without_ipv6("cli-mac")?;
    ok(&ns, &["up", "br0"])?;
    ok(&ns, &["tap", "add", "tap0"])?;
    ok(&ns, &["attach", "tap0"])?;
    ok(
        &ns,
        &["fdb", "add", "02:00:00:00:00:aa", "tap0", "--static"],
    )?;
    let mut checks = Vec::new();
    for bad in [
        "zz:00:00:00:00:01",
        "02:00:00:00:00",
        "02:00:00:00:00:01:02",
        "002:00:00:00:00:01",
        "02::00:00:00:01",
        "garbage",
    ] {
        let q = format!("{bad:?}");
        checks.push((
            "fdb add",
            fails(&ns, &["fdb", "add", bad, "tap0"], &[&q, "MAC"]),
        ));
        checks.push((
            "fdb add --static",
            fails(&ns, &["fdb", "add", bad, "tap0", "--static"], &[&q, "MAC"]),
        ));
        checks.push(("fdb del", fails(&ns, &["fdb", "del", bad], &[&q, "MAC"])));
    }
    for group in [
        "01:00:5e:00:00:01",
        "ff:ff:ff:ff:ff:ff",
        "33:33:00:00:00:01",
        "00:00:00:00:00:00",
    ] {
        checks.push((
            "fdb add group/zero MAC",
            fails(
                &ns,
                &["fdb", "add", group, "tap0", "--static"],
                &[group, "unicast"],
            ),
        ));
    }
    checks.push((
        "fdb del of an absent MAC",
        fails(
            &ns,
            &["fdb", "del", "02:00:00:00:00:bb"],
            &["02:00:00:00:00:bb", "br0"],
        ),
    ));
    checks.push((
        "fdb add on a non-port",
        fails(
            &ns,
            &["fdb", "add", "02:00:00:00:00:cc", "lo"],
            &["lo", "not a port"],
        ),
    ));
    all(checks)
}

#[test]
fn names_over_15_bytes() -> Result<()> {
    let ns = Netns::without_ipv6("cli-long")?;
    let long = "abcdefghijklmnop";
    let q = format!("{long:?}");
    all(vec![
        (
            "tap add",
            fails(&ns, &["tap", "add", long], &[&q, "15 bytes"]),
        ),
        ("up", fails(&ns, &["up", long], &[&q, "15 bytes"])),
        (
            "up, 15 bytes + -sw would not fit either",
            fails(&ns, &["up", "abcdefghijklmnopq"], &["15 bytes"]),
        ),
        ("attach", fails(&ns, &["attach", long], &[&q, "15 bytes"])),
    ])
}

#[test]
fn tap_add_of_an_existing_name() -> Result<()> {
    let ns = Netns::without_ipv6("cli-tapex")?;
    ok(&ns, &["tap", "add", "tap0"])?;
    ns.sh("ip link add veth0 type veth peer name veth1")?;
    all(vec![
        (
            "a tap",
            fails(
                &ns,
                &["tap", "add", "tap0"],
                &["\"tap0\"", "already exists"],
            ),
        ),
        (
            "a veth",
            fails(
                &ns,
                &["tap", "add", "veth0"],
                &["\"veth0\"", "already exists"],
            ),
        ),
        (
            "lo",
            fails(&ns, &["tap", "add", "lo"], &["\"lo\"", "already exists"]),
        ),
    ])
}

#[test]
fn tap_del_of_a_non_tap() -> Result<()> {
    let ns = Netns::without_ipv6("cli-tapdel")?;
    ok(&ns, &["up", "br0"])?;
    ns.sh("ip link add veth0 type veth peer name veth1")?;
    all(vec![
        (
            "veth",
            fails(
                &ns,
                &["tap", "del", "veth0"],
                &["veth0", "not a tap", "veth"],
            ),
        ),
        (
            "bridge host interface",
            fails(&ns, &["tap", "del", "br0"], &["br0", "not a tap"]),
        ),
        (
            "lo",
            fails(&ns, &["tap", "del", "lo"], &["lo", "not a tap"]),
        ),
    ])
}

#[test]
fn unknown_user_or_group() -> Result<()> {
    let ns = Netns::without_ipv6("cli-user")?;
    all(vec![
        (
            "--user",
            fails(
                &ns,
                &["tap", "add", "tap0", "--user", "no-such-user-umlbr"],
                &["\"no-such-user-umlbr\"", "user"],
            ),
        ),
        (
            "--group",
            fails(
                &ns,
                &["tap", "add", "tap0", "--group", "no-such-group-umlbr"],
                &["\"no-such-group-umlbr\"", "group"],
            ),
        ),
    ])
}

#[test]
fn detach_of_a_non_port() -> Result<()> {
    let ns = Netns::without_ipv6("cli-detach")?;
    ok(&ns, &["up", "br0"])?;
    ok(&ns, &["tap", "add", "tap0"])?;
    fails(&ns, &["detach", "tap0"], &["tap0", "not a port"])?;
    // Attached and detached again: a second detach is an error too.
    ok(&ns, &["attach", "tap0"])?;
    ok(&ns, &["detach", "tap0"])?;
    fails(&ns, &["detach", "tap0"], &["tap0", "not a port"])?;
    Ok(())
}

#[test]
fn the_bridges_own_interfaces_are_not_ports_to_attach() -> Result<()> {
    let ns = Netns::without_ipv6("cli-host")?;
    ok(&ns, &["up", "br0"])?;
    ok(&ns, &["up", "br1"])?;
    all(vec![
        (
            "attach host",
            fails(
                &ns,
                &["attach", "br0", "--bridge", "br0"],
                &["br0", "host port"],
            ),
        ),
        (
            "attach switch port",
            fails(
                &ns,
                &["attach", "br0-sw", "--bridge", "br0"],
                &["br0-sw", "host port"],
            ),
        ),
        (
            "attach to another bridge",
            fails(
                &ns,
                &["attach", "br0", "--bridge", "br1"],
                &["br0", "host port"],
            ),
        ),
        (
            "detach host",
            fails(&ns, &["detach", "br0"], &["br0", "host port"]),
        ),
        (
            "detach switch port",
            fails(&ns, &["detach", "br1-sw"], &["br1-sw", "host port"]),
        ),
    ])
}

fn bpf(cmd: u32, attr: &mut [u64; 18]) -> std::io::Result<OwnedFd> {
    // SAFETY: bpf(2) with a zero-padded attribute union of the kernel's size.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 144usize) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// Load `r0 = XDP_PASS; exit` as an XDP program called "foreign" and link
/// it to `ifname` in `ns`. The attachment lasts as long as the fds.
fn foreign_xdp(ns: &Netns, ifname: &str) -> Result<(OwnedFd, OwnedFd)> {
    ns.run_in(move || {
        let ifindex = ifindex(ifname)?;
        // mov64 r0, 2 (XDP_PASS); exit
        let insns: [u64; 2] = [
            u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]),
            u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        let license = c"GPL";
        let mut attr = [0u64; 18];
        {
            // SAFETY: viewing the u64 array as bytes.
            let b: &mut [u8; 144] = unsafe { &mut *(attr.as_mut_ptr() as *mut [u8; 144]) };
            b[0..4].copy_from_slice(&6u32.to_ne_bytes()); // BPF_PROG_TYPE_XDP
            b[4..8].copy_from_slice(&2u32.to_ne_bytes());
            b[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
            b[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
            b[48..55].copy_from_slice(b"foreign");
            b[68..72].copy_from_slice(&37u32.to_ne_bytes()); // BPF_XDP
        }
        let prog = bpf(5, &mut attr).context("BPF_PROG_LOAD")?;
        let mut attr = [0u64; 18];
        {
            // SAFETY: as above.
            let b: &mut [u8; 144] = unsafe { &mut *(attr.as_mut_ptr() as *mut [u8; 144]) };
            b[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
            b[4..8].copy_from_slice(&ifindex.to_ne_bytes());
            b[8..12].copy_from_slice(&37u32.to_ne_bytes()); // BPF_XDP
        }
        let link = bpf(28, &mut attr).context("BPF_LINK_CREATE")?;
        Ok((prog, link))
    })
}

#[test]
fn interface_with_a_foreign_xdp_program() -> Result<()> {
    let ns = Netns::without_ipv6("cli-foreign")?;
    ok(&ns, &["up", "br0"])?;
    ok(&ns, &["tap", "add", "tap0"])?;
    let _held = foreign_xdp(&ns, "tap0")?;
    ensure!(ns.sh("ip -d link show tap0")?.contains("prog/xdp"));
    fails(
        &ns,
        &["attach", "tap0"],
        &["tap0", "another XDP program", "will not replace"],
    )?;
    fails(&ns, &["detach", "tap0"], &["tap0", "not a port"])?;
    Ok(())
}

/// A port whose bridge was deleted behind umlbr's back (`ip link del`)
/// keeps umlbr's programs: attaching it elsewhere is refused with a hint,
/// and `detach` cleans it up.
#[test]
fn port_of_a_removed_bridge() -> Result<()> {
    let ns = Netns::without_ipv6("cli-orphan")?;
    ok(&ns, &["up", "br0"])?;
    ok(&ns, &["up", "br1"])?;
    ok(&ns, &["tap", "add", "tap0"])?;
    ok(&ns, &["attach", "tap0", "--bridge", "br0"])?;
    ns.sh("ip link del br0")?;
    fails(
        &ns,
        &["attach", "tap0", "--bridge", "br1"],
        &["tap0", "no longer exists", "umlbr detach tap0"],
    )?;
    ok(&ns, &["detach", "tap0"])?;
    ensure!(!ns.sh("ip -d link show tap0")?.contains("prog/xdp"));
    ok(&ns, &["attach", "tap0", "--bridge", "br1"])?;
    Ok(())
}

#[test]
fn needs_root_and_capabilities() -> Result<()> {
    let ns = Netns::without_ipv6("cli-priv")?;
    let bin = umlbr_bin();
    let bin = bin.to_str().context("binary path")?;
    let run = |pre: &[&str], args: &[&str]| -> Result<std::process::Output> {
        let mut c = ns.cmd("setpriv");
        c.args(pre).arg(bin).args(args);
        Ok(c.stdin(std::process::Stdio::null()).output()?)
    };
    let nobody = [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ];
    let mut checks = Vec::new();
    for args in [
        &["show"][..],
        &["up", "br0"],
        &["tap", "add", "tap0"],
        &["fdb", "show", "--json"],
    ] {
        let out = run(&nobody, args)?;
        checks.push((
            "nobody",
            one_line_error(
                &format!("nobody: umlbr {args:?}"),
                &out,
                &["needs root", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_BPF"],
            ),
        ));
    }
    // Root without one capability: the error names just that one.
    for (cap, name, other) in [
        ("bpf", "CAP_BPF", "CAP_NET_ADMIN"),
        ("net_admin", "CAP_NET_ADMIN", "CAP_BPF"),
        ("sys_admin", "CAP_SYS_ADMIN", "CAP_BPF"),
    ] {
        let drop_ = [
            format!("--inh-caps=-{cap}"),
            format!("--bounding-set=-{cap}"),
        ];
        let pre: Vec<&str> = drop_.iter().map(String::as_str).collect();
        let out = run(&pre, &["up", "br0"])?;
        let r = one_line_error(&format!("root without {name}"), &out, &["needs root", name])
            .and_then(|m| {
                ensure!(!m.contains(other), "names {other} too: {m:?}");
                Ok(m)
            });
        checks.push(("root minus a capability", r));
    }
    all(checks)?;
    ensure!(interfaces(&ns)? == vec!["lo"], "{:?}", interfaces(&ns)?);
    Ok(())
}

// ---------------------------------------------------------------------------
// The JSON contract and help.

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    k.sort_unstable();
    k
}

#[test]
fn json_output() -> Result<()> {
    let ns = Netns::without_ipv6("cli-json")?;
    // No bridge yet: empty arrays.
    for args in [
        &["show", "--json"][..],
        &["stats", "--json"],
        &["fdb", "show", "--json"],
    ] {
        let v = json(&ns, args)?;
        ensure!(v == Value::Array(vec![]), "{args:?}: {v}");
    }
    ok(
        &ns,
        &["up", "br0", "--address", "192.168.2.1/24", "--aging", "120"],
    )?;
    ok(&ns, &["tap", "add", "tap0"])?;
    ok(&ns, &["attach", "tap0"])?;
    ok(
        &ns,
        &["fdb", "add", "02:00:00:00:00:aa", "tap0", "--static"],
    )?;
    ok(&ns, &["fdb", "add", "02:00:00:00:00:bb", "tap0"])?;

    let all_ = json(&ns, &["show", "--json"])?;
    let arr = all_.as_array().context("show --json is not an array")?;
    ensure!(arr.len() == 1, "{all_}");
    let one = json(&ns, &["show", "br0", "--json"])?;
    ensure!(one.is_object(), "show br0 --json is not an object: {one}");
    ensure!(one["name"] == "br0" && one["aging_secs"] == 120, "{one}");
    ensure!(arr[0]["name"] == "br0");
    let ports = one["ports"].as_array().context("ports")?;
    let names: Vec<&str> = ports.iter().filter_map(|p| p["name"].as_str()).collect();
    ensure!(names.contains(&"tap0"), "{names:?}");
    let tap = ports.iter().find(|p| p["name"] == "tap0").unwrap();
    ensure!(
        tap["kind"] == "tap" && tap["tc"] == tc_hook().as_str() && tap["isolated"] == false,
        "{tap}"
    );
    // Storm control is on by default for a guest, off for the host port.
    ensure!(tap["flood_limit"] == 1000, "{tap}");
    let host = ports
        .iter()
        .find(|p| p["kind"] == "host")
        .context("host port")?;
    ensure!(host["flood_limit"] == 0, "{host}");
    ensure!(tap["xdp"] == "driver" || tap["xdp"] == "generic", "{tap}");

    let st = json(&ns, &["stats", "--json"])?;
    ensure!(st.as_array().is_some_and(|a| a.len() == 1), "{st}");
    let st1 = json(&ns, &["stats", "br0", "--json"])?;
    ensure!(st1.is_object(), "stats br0 --json: {st1}");
    for p in st1["ports"].as_array().context("stats ports")? {
        for k in [
            "rx_packets",
            "forwarded",
            "flooded",
            "dropped",
            "learned",
            "isolated",
            "storm",
        ] {
            ensure!(p["stats"][k].is_u64(), "stats.{k} in {p}");
        }
    }

    for args in [
        &["fdb", "show", "--json"][..],
        &["fdb", "show", "br0", "--json"],
    ] {
        let fdb = json(&ns, args)?;
        let rows = fdb.as_array().context("fdb show --json is not an array")?;
        for r in rows {
            ensure!(r.is_object(), "{r}");
            ensure!(r["mac"].is_string(), "mac in {r}");
            ensure!(r["port"].is_string(), "port in {r}");
            ensure!(r["static"].is_boolean(), "static in {r}");
            ensure!(r["age"].is_number(), "age in {r}");
            for k in ["mac", "port", "static", "age"] {
                ensure!(keys(r).contains(&k), "{k} in {r}");
            }
        }
        let find = |m: &str| rows.iter().find(|r| r["mac"] == m);
        let a = find("02:00:00:00:00:aa").context("static entry missing")?;
        ensure!(
            a["port"] == "tap0" && a["static"] == true && a["age"] == 0.0,
            "{a}"
        );
        let b = find("02:00:00:00:00:bb").context("learned entry missing")?;
        ensure!(b["port"] == "tap0" && b["static"] == false, "{b}");
        let age = b["age"].as_f64().unwrap();
        ensure!((0.0..120.0).contains(&age), "{b}");
    }
    Ok(())
}

#[test]
fn help() -> Result<()> {
    let run = |args: &[&str]| -> Result<String> {
        let out = Command::new(umlbr_bin()).args(args).output()?;
        ensure!(out.status.success(), "umlbr {args:?}: {}", out.status);
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let top = run(&["--help"])?;
    for c in [
        "up", "down", "tap", "attach", "detach", "show", "fdb", "stats",
    ] {
        ensure!(
            top.lines().any(|l| l.trim_start().starts_with(c)),
            "--help does not list {c}:\n{top}"
        );
    }
    let fdb = run(&["fdb", "--help"])?;
    for c in ["show", "add", "del"] {
        ensure!(
            fdb.lines().any(|l| l.trim_start().starts_with(c)),
            "fdb --help does not list {c}:\n{fdb}"
        );
    }
    let tap = run(&["tap", "--help"])?;
    for c in ["add", "del"] {
        ensure!(
            tap.lines().any(|l| l.trim_start().starts_with(c)),
            "tap --help does not list {c}:\n{tap}"
        );
    }
    Ok(())
}

/// `attach --tc-only`: the port gets the TC program and no XDP, and frames
/// still cross between it and an XDP port, both ways.
#[test]
fn attach_tc_only() -> Result<()> {
    use std::io::{ErrorKind, Read, Write};
    use umlbr_tests::netns::{InNetns, open_tap};
    let ns = Netns::without_ipv6("cli-tconly")?;
    // Taps held open by this thread (non-persistent: they go with the fds).
    let inside = InNetns::enter(&ns)?;
    let mut a = open_tap("tapa")?;
    let mut b = open_tap("tapb")?;
    drop(inside);
    ns.umlbr_ok(&["up", "br0"])?;
    ns.umlbr_ok(&["attach", "tapa", "--tc-only"])?;
    ns.umlbr_ok(&["attach", "tapb"])?;
    let show: Value = serde_json::from_str(&ns.umlbr_ok(&["show", "br0", "--json"])?)?;
    let port = |name: &str| -> Result<Value> {
        show["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
            .with_context(|| format!("{name} not in {show}"))
    };
    let (pa, pb) = (port("tapa")?, port("tapb")?);
    ensure!(
        pa["xdp"] == "none" && pa["tc"] == tc_hook().as_str(),
        "tapa: {pa}"
    );
    ensure!(
        pb["xdp"] == "driver" && pb["tc"] == tc_hook().as_str(),
        "tapb: {pb}"
    );
    let ma = [2, 0, 0, 0, 0, 0xa];
    let mb = [2, 0, 0, 0, 0, 0xb];
    let frame = |dst: [u8; 6], src: [u8; 6]| {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5]);
        f.extend_from_slice(&[0x5a; 50]);
        f
    };
    // Reads the next frame from `t` with source `src`, within 2 s.
    let recv = |t: &mut File, src: [u8; 6]| -> Result<Vec<u8>> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut buf = [0u8; 2048];
        loop {
            match t.read(&mut buf) {
                Ok(n) if buf[6..12] == src => return Ok(buf[..n].to_vec()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    ensure!(
                        std::time::Instant::now() < deadline,
                        "no frame from {src:?}"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => bail!("reading a tap: {e}"),
            }
        }
    };
    // b announces itself (flooded), then a (TC only) sends to b and back.
    b.write_all(&frame([0xff; 6], mb))?;
    let got = recv(&mut a, mb)?;
    ensure!(
        got == frame([0xff; 6], mb),
        "broadcast from b reached a changed"
    );
    a.write_all(&frame(mb, ma))?;
    ensure!(recv(&mut b, ma)? == frame(mb, ma), "a -> b");
    b.write_all(&frame(ma, mb))?;
    ensure!(recv(&mut a, mb)? == frame(ma, mb), "b -> a");
    let stats: Value = serde_json::from_str(&ns.umlbr_ok(&["stats", "br0", "--json"])?)?;
    let sa = stats["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "tapa").cloned())
        .context("tapa in stats")?;
    ensure!(
        sa["stats"]["tc"].as_u64() == Some(1) && sa["stats"]["xdp_native"].as_u64() == Some(0),
        "tapa's frame must be switched by TC: {sa}"
    );
    ns.umlbr_ok(&["down", "br0"])?;
    Ok(())
}

/// A tap already set up with vnet headers (as a vector UML guest, QEMU's
/// virtio-net or Firecracker leave it, or as `umlbr tap add --vnet-hdr`
/// makes it) gets TC only, and says why; a plain tap in the same bridge
/// gets XDP.
#[test]
fn attach_vnet_hdr_tap_gets_tc_only() -> Result<()> {
    let ns = Netns::without_ipv6("cli-vnethdr")?;
    ns.sh(
        "ip tuntap add dev tapv mode tap vnet_hdr && ip tuntap add dev tapp mode tap && \
         ip link set tapv up && ip link set tapp up",
    )?;
    ns.umlbr_ok(&["tap", "add", "tapu", "--vnet-hdr"])?;
    ns.sh("ip link set tapu up")?;
    ns.umlbr_ok(&["up", "br0"])?;
    let out = ns.umlbr(&["attach", "tapu"])?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stderr).contains("xdp none"),
        "a tap made by `tap add --vnet-hdr` must get TC only: {out:?}"
    );
    let out = ns.umlbr(&["attach", "tapv"])?;
    ensure!(out.status.success(), "attach tapv: {out:?}");
    let msg = String::from_utf8_lossy(&out.stderr);
    ensure!(
        msg.contains("xdp none") && msg.contains("vnet headers"),
        "attach of a vnet_hdr tap must say it got no XDP and why: {msg:?}"
    );
    ns.umlbr_ok(&["attach", "tapp"])?;
    let show: Value = serde_json::from_str(&ns.umlbr_ok(&["show", "br0", "--json"])?)?;
    let port = |name: &str| -> Result<Value> {
        show["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
            .with_context(|| format!("{name} not in {show}"))
    };
    let (pv, pp) = (port("tapv")?, port("tapp")?);
    ensure!(
        pv["xdp"] == "none" && pv["tc"] == tc_hook().as_str(),
        "tapv: {pv}"
    );
    ensure!(
        pp["xdp"] == "driver" && pp["tc"] == tc_hook().as_str(),
        "tapp: {pp}"
    );
    ns.umlbr_ok(&["down", "br0"])?;
    Ok(())
}

/// Usage errors (a value clap cannot parse, flags that do not go
/// together) exit 2 with one line, and change nothing; a command that
/// fails exits 1.
#[test]
fn usage_errors_exit_2() -> Result<()> {
    let ns = Netns::without_ipv6("cli-usage")?;
    let mut checks = Vec::new();
    for args in [
        &["up", "br0", "--address", "garbage"][..],
        &["up", "br0", "--address", "192.168.2.1/33"],
        &["up", "br0", "--aging", "0"],
        &["up", "br0", "--nat-ports", "61000-61999"],
        &["up", "br0", "--address", "fd00::1/64", "--masquerade", "lo"],
        &["fdb", "add", "zz:00:00:00:00:01", "tap0"],
        &["fdb", "del", "02:00:00:00:00"],
        &["attach", "tap0", "--uplink", "--masquerade"],
        &["attach", "tap0", "--tc-only", "--nat-timeout", "udp=5"],
        &["attach", "tap0", "--masquerade", "--nat-timeout", "bogus=5"],
        &["attach", "tap0", "--masquerade", "--nat-ports", "5-1"],
        &["attach", "tap0", "--isolated", "--uplink"],
        &["attach", "tap0", "--mac", "02:00:00:00:00:01"],
        &["attach", "tap0", "--ip", "10.0.0.2"],
        &["attach", "tap0", "--lock"],
        &["attach", "tap0", "--lock", "--ip", "10.0.0.2"],
        &[
            "attach",
            "tap0",
            "--lock",
            "--mac",
            "02:00:00:00:00:01",
            "--uplink",
        ],
        &[
            "attach",
            "tap0",
            "--lock",
            "--mac",
            "02:00:00:00:00:01",
            "--masquerade",
        ],
        &["attach", "tap0", "--lock", "--mac", "02:00:00:00:01"],
        &[
            "attach",
            "tap0",
            "--lock",
            "--mac",
            "02:00:00:00:00:01",
            "--ip",
            "10.0.0.300",
        ],
        &[
            "attach",
            "tap0",
            "--lock",
            "--mac",
            "02:00:00:00:00:01",
            "--ip",
            "10.0.0.2/24",
        ],
        &[
            "attach",
            "tap0",
            "--lock",
            "--mac",
            "02:00:00:00:00:01",
            "--ip",
            "fe80::zz",
        ],
    ] {
        let what = format!("umlbr {}", args.join(" "));
        let r = fails(&ns, args, &[]).and_then(|m| {
            let out = ns.umlbr(args)?;
            ensure!(out.status.code() == Some(2), "{what}: exit {}", out.status);
            Ok(m)
        });
        checks.push(("usage error", r));
    }
    let out = ns.umlbr(&["attach", "nosuch0"])?;
    ensure!(
        out.status.code() == Some(1),
        "a failed command exits 1: {out:?}"
    );
    all(checks)
}

/// While another process holds a bridge's lock, every command that
/// changes the bridge waits for it, then fails with one line naming the
/// bridge and the lock file, having changed nothing; read commands do not
/// wait. Once the lock is free, the same commands work.
#[test]
fn a_busy_bridge_fails_clearly() -> Result<()> {
    let ns = Netns::without_ipv6("cli-busy")?;
    ns.sh(
        "ip link add up0 type veth peer name lan0 && ip addr add 10.99.0.1/24 dev up0 && \
         ip link set up0 up && ip link set lan0 up",
    )?;
    ok(&ns, &["up", "br0", "--address", "192.168.2.1/24"])?;
    ok(&ns, &["tap", "add", "tap0"])?;
    ok(&ns, &["tap", "add", "tap1"])?;
    ok(&ns, &["attach", "tap1"])?;
    ok(&ns, &["fdb", "add", "02:00:00:00:00:07", "tap1"])?;
    let ino = ns.sh("stat -L -c %i /proc/self/ns/net")?;
    let lock = format!("/run/umlbr/net{}-br0.lock", ino.trim());
    let mut holder = ns
        .cmd("flock")
        .args(["-x", "-o", &lock, "-c", "echo held; exec sleep 60"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting flock")?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().context("flock's stdout")?),
        &mut line,
    )?;
    let busy = |args: &[&str]| -> Result<String> {
        let what = format!("umlbr {}", args.join(" "));
        let before = state(&ns)?;
        let started = std::time::Instant::now();
        let out = ns
            .cmd(umlbr_bin().to_str().unwrap())
            .args(args)
            .env("UMLBR_LOCK_WAIT", "0.5")
            .stdin(std::process::Stdio::null())
            .output()?;
        let waited = started.elapsed();
        let msg = one_line_error(&what, &out, &["bridge br0 is busy", &lock]);
        ensure!(state(&ns)? == before, "{what} changed the namespace");
        ensure!(
            waited >= std::time::Duration::from_millis(500),
            "{what} gave up after {waited:?}, before UMLBR_LOCK_WAIT"
        );
        msg
    };
    let checks = vec![
        ("attach", busy(&["attach", "tap0"])),
        ("detach", busy(&["detach", "tap1"])),
        ("tap del", busy(&["tap", "del", "tap1"])),
        (
            "fdb add",
            busy(&["fdb", "add", "02:00:00:00:00:08", "tap1"]),
        ),
        ("fdb del", busy(&["fdb", "del", "02:00:00:00:00:07"])),
        ("down", busy(&["down", "br0"])),
        ("up", busy(&["up", "br0"])),
        ("masquerade", busy(&["attach", "up0", "--masquerade"])),
    ];
    let _ = holder.kill();
    let _ = holder.wait();
    all(checks)?;
    ok(&ns, &["attach", "tap0"])?;
    ok(&ns, &["tap", "del", "tap1"])?;
    ok(&ns, &["attach", "up0", "--masquerade"])?;
    ok(&ns, &["detach", "up0"])?;
    ok(&ns, &["down", "br0"])?;
    ensure!(
        ns.sh(&format!("test -e {lock} || echo gone"))?.trim() == "gone",
        "down left {lock}"
    );
    Ok(())
}

/// The port named `name` in `show br0 --json`.
fn shown_port(ns: &Netns, name: &str) -> Result<Value> {
    let show = json(ns, &["show", "br0", "--json"])?;
    show["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
        .with_context(|| format!("{name} not in {show}"))
}

/// MACs of the static FDB entries on port `name`.
fn static_macs_of(ns: &Netns, name: &str) -> Result<Vec<String>> {
    let fdb = json(ns, &["fdb", "show", "br0", "--json"])?;
    Ok(fdb
        .as_array()
        .context("fdb show --json")?
        .iter()
        .filter(|r| r["port"] == name && r["static"] == true)
        .filter_map(|r| r["mac"].as_str().map(String::from))
        .collect())
}

/// `attach --lock --mac --ip`: `show` lists the settings (table and
/// JSON), the MACs become the port's static entries; a MAC or address
/// another port holds (the host's MAC, another locked guest's) is refused
/// with nothing changed; `detach`, `tap del` and a vanished tap leave no
/// bound MAC or address behind (the address can be bound again).
#[test]
fn attach_lock() -> Result<()> {
    const M0: &str = "02:00:00:00:00:a0";
    const M1: &str = "02:00:00:00:00:a1";
    let ns = Netns::without_ipv6("ps-cli-lock")?;
    ok(&ns, &["up", "br0"])?;
    for t in ["tap0", "tap1", "tap2"] {
        ok(&ns, &["tap", "add", t])?;
    }
    let lock0 = [
        "attach", "tap0", "--lock", "--mac", M0, "--mac", M1, "--ip", "10.0.0.2", "--ip", "fe80::2",
    ];
    let out = ns.umlbr(&lock0)?;
    let msg = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && msg.contains("locked to 2 MAC(s) and 2 address(es)"),
        "attach --lock: {out:?}"
    );
    let p = shown_port(&ns, "tap0")?;
    ensure!(
        p["locked"] == true
            && p["macs"] == serde_json::json!([M0, M1])
            && p["ips"].as_array().map(|a| a.len()) == Some(2)
            && p["ips"]
                .as_array()
                .is_some_and(|a| a.contains(&"10.0.0.2".into()) && a.contains(&"fe80::2".into())),
        "show --json: {p}"
    );
    let table = ns.umlbr_ok(&["show"])?;
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("tap0"))
        .context("tap0 not in show")?;
    ensure!(
        row.contains(&format!("locked mac={M0},{M1} ip=")) && row.contains("10.0.0.2"),
        "show: {row:?}"
    );
    ensure!(
        static_macs_of(&ns, "tap0")? == vec![M0.to_string(), M1.to_string()],
        "fdb show: {:?}",
        static_macs_of(&ns, "tap0")?
    );
    let host_mac = ns.sh("cat /sys/class/net/br0/address")?.trim().to_string();
    let st = json(&ns, &["stats", "br0", "--json"])?;
    for p in st["ports"].as_array().context("stats ports")? {
        for k in ["locked", "ip_locked"] {
            ensure!(p["stats"][k].is_u64(), "stats.{k} in {p}");
        }
    }
    ensure!(
        ns.umlbr_ok(&["stats"])?.contains("IP_LOCKED"),
        "stats table has no IP_LOCKED column"
    );
    all(vec![
        (
            "another locked guest's MAC",
            fails(
                &ns,
                &["attach", "tap1", "--lock", "--mac", M1],
                &["tap1", M1, "tap0"],
            ),
        ),
        (
            "the host port's MAC",
            fails(
                &ns,
                &["attach", "tap1", "--lock", "--mac", &host_mac],
                &["tap1", &host_mac],
            ),
        ),
        (
            "another locked guest's address",
            fails(
                &ns,
                &[
                    "attach",
                    "tap1",
                    "--lock",
                    "--mac",
                    "02:00:00:00:00:b1",
                    "--ip",
                    "fe80::2",
                ],
                &["tap1", "fe80::2", "tap0"],
            ),
        ),
        (
            "a multicast MAC",
            fails(
                &ns,
                &["attach", "tap1", "--lock", "--mac", "01:00:5e:00:00:01"],
                &["01:00:5e:00:00:01"],
            ),
        ),
    ])?;
    // detach: nothing of tap0's binding is left; its MAC and address can
    // be bound again, to another port.
    ok(&ns, &["detach", "tap0"])?;
    ensure!(
        static_macs_of(&ns, "tap0")?.is_empty(),
        "detach left tap0's MACs"
    );
    ok(
        &ns,
        &["attach", "tap1", "--lock", "--mac", M0, "--ip", "10.0.0.2"],
    )?;
    ensure!(static_macs_of(&ns, "tap1")? == vec![M0.to_string()]);
    // tap del of a locked port.
    ok(&ns, &["tap", "del", "tap1"])?;
    ensure!(
        !json(&ns, &["fdb", "show", "br0", "--json"])?
            .to_string()
            .contains(M0),
        "tap del left tap1's MAC"
    );
    ok(
        &ns,
        &["attach", "tap2", "--lock", "--mac", M0, "--ip", "10.0.0.2"],
    )?;
    // A locked tap that vanishes: the next command prunes its binding.
    ns.sh("ip link del tap2")?;
    ok(&ns, &["tap", "add", "tap3"])?;
    ok(
        &ns,
        &["attach", "tap3", "--lock", "--mac", M0, "--ip", "10.0.0.2"],
    )?;
    ensure!(static_macs_of(&ns, "tap3")? == vec![M0.to_string()]);
    ok(&ns, &["down", "br0"])?;
    Ok(())
}

/// A read command whose reader went away (`umlbr show --json | head -1`)
/// ends quietly, killed by SIGPIPE as other Unix tools are, instead of
/// panicking with "failed printing to stdout".
#[test]
fn read_commands_end_quietly_on_a_closed_pipe() -> Result<()> {
    use std::os::unix::process::ExitStatusExt;
    let ns = Netns::without_ipv6("cli-pipe")?;
    ok(&ns, &["up", "br0"])?;
    let mut errs = Vec::new();
    for args in [
        &["show"][..],
        &["show", "--json"],
        &["stats", "--json"],
        &["fdb", "show", "--json"],
    ] {
        let (r, w) = std::io::pipe()?;
        drop(r);
        let out = ns
            .cmd(umlbr_bin().to_str().context("umlbr path")?)
            .args(args)
            .stdout(w)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.signal() != Some(13) || !stderr.is_empty() {
            errs.push(format!(
                "umlbr {args:?} into a closed pipe: {}, stderr {stderr:?}",
                out.status
            ));
        }
    }
    ok(&ns, &["down", "br0"])?;
    ensure!(errs.is_empty(), "{}", errs.join("\n"));
    Ok(())
}

/// `--nat-max-per-guest N`: only with --masquerade (on `up` and `attach`),
/// a u32, not with --uplink or --isolated (usage errors, exit 2, nothing
/// changed); the value given, the default (8192) or no limit (0) is what
/// `show` and `stats` print, as text and as `nat.max_per_guest` in JSON,
/// and `stats` prints the `quota` counter.
#[test]
fn nat_max_per_guest() -> Result<()> {
    let ns = Netns::without_ipv6("nq-cli")?;
    ns.sh(
        "ip link add up0 type veth peer name up0p && ip addr add 10.99.0.1/24 dev up0 \
         && ip link set up0 up && ip link set up0p up \
         && ip link add up1 type veth peer name up1p && ip addr add 10.98.0.1/24 dev up1 \
         && ip link set up1 up && ip link set up1p up",
    )?;
    let mut checks = Vec::new();
    for args in [
        &[
            "up",
            "br0",
            "--address",
            "192.168.2.1/24",
            "--nat-max-per-guest",
            "5",
        ][..],
        &["up", "br0", "--uplink", "up0", "--nat-max-per-guest", "5"],
        &[
            "up",
            "br0",
            "--address",
            "192.168.2.1/24",
            "--masquerade",
            "up0",
            "--nat-max-per-guest",
            "-1",
        ],
        &[
            "up",
            "br0",
            "--address",
            "192.168.2.1/24",
            "--masquerade",
            "up0",
            "--nat-max-per-guest",
            "many",
        ],
        &[
            "up",
            "br0",
            "--address",
            "192.168.2.1/24",
            "--masquerade",
            "up0",
            "--nat-max-per-guest",
            "4294967296",
        ],
        &[
            "up",
            "br0",
            "--address",
            "192.168.2.1/24",
            "--masquerade",
            "up0",
            "--nat-max-per-guest",
        ],
        &["attach", "up0", "--nat-max-per-guest", "5"],
        &["attach", "up0", "--uplink", "--nat-max-per-guest", "5"],
        &["attach", "up0", "--isolated", "--nat-max-per-guest", "5"],
        &["attach", "up0", "--tc-only", "--nat-max-per-guest", "5"],
    ] {
        let what = format!("umlbr {}", args.join(" "));
        let r = fails(&ns, args, &[]).and_then(|m| {
            let out = ns.umlbr(args)?;
            ensure!(out.status.code() == Some(2), "{what}: exit {}", out.status);
            Ok(m)
        });
        checks.push(("usage error", r));
    }
    all(checks)?;

    let shown = |want: u64, text: &str| -> Result<()> {
        let v = json(&ns, &["show", "br0", "--json"])?;
        ensure!(
            v["nat"]["max_per_guest"] == want,
            "show --json: {}",
            v["nat"]
        );
        let v = json(&ns, &["stats", "br0", "--json"])?;
        ensure!(
            v["nat"]["max_per_guest"] == want,
            "stats --json: {}",
            v["nat"]
        );
        ensure!(
            v["nat"]["counters"]["quota"] == 0,
            "stats --json: {}",
            v["nat"]
        );
        let show = ns.umlbr_ok(&["show", "br0"])?;
        ensure!(show.contains(text), "show does not say {text:?}:\n{show}");
        let stats = ns.umlbr_ok(&["stats", "br0"])?;
        ensure!(
            stats.contains(text) && stats.contains("quota 0"),
            "stats does not say {text:?} and quota 0:\n{stats}"
        );
        Ok(())
    };
    let up = [
        "up",
        "br0",
        "--address",
        "192.168.2.1/24",
        "--masquerade",
        "up0",
    ];
    ok(&ns, &[&up[..], &["--nat-max-per-guest", "100"]].concat())?;
    shown(100, "at most 100 per guest")?;
    ok(&ns, &["down", "br0"])?;
    ok(&ns, &up)?;
    shown(8192, "at most 8192 per guest")?;
    // `attach --masquerade` takes it too, and 0 is no limit.
    ok(&ns, &["detach", "up0"])?;
    ok(
        &ns,
        &["attach", "up1", "--masquerade", "--nat-max-per-guest", "0"],
    )?;
    shown(0, "no limit per guest")?;
    ok(&ns, &["down", "br0"])?;
    Ok(())
}

/// The hook `show` must report for ports attached in this run: tcx, unless
/// the run forces clsact (`UMLBR_TC_HOOK=clsact`: the suite run again on
/// the fallback).
fn tc_hook() -> String {
    std::env::var("UMLBR_TC_HOOK").unwrap_or_else(|_| "tcx".into())
}

/// TC on clsact + cls_bpf (kernels without tcx; forced here with
/// UMLBR_TC_HOOK=clsact): `show` says so for every port (table and
/// JSON); frames cross through XDP and TC both ways; the qdiscs umlbr
/// made go with `detach` and `down`; a clsact qdisc that was there before,
/// with a filter of someone else's, survives attach, detach and down with
/// that filter, umlbr's filter running after it.
#[test]
fn clsact_hook() -> Result<()> {
    use std::io::{ErrorKind, Read, Write};
    use umlbr_tests::netns::{InNetns, open_tap};
    let ns = Netns::without_ipv6("cli-clsact")?;
    let run = |args: &[&str]| -> Result<String> {
        let out = ns
            .cmd(umlbr_tests::umlbr_bin().to_str().unwrap())
            .env("UMLBR_TC_HOOK", "clsact")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "umlbr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr))
    };
    let inside = InNetns::enter(&ns)?;
    let mut a = open_tap("tapa")?;
    let mut b = open_tap("tapb")?;
    let mut c = open_tap("tapc")?;
    drop(inside);
    // tapc's clsact qdisc is someone else's, with a filter that matches
    // no frame of this test (destination de:ad:be:ef:..), so
    // classification goes on to umlbr's; the uplink's egress likewise.
    ns.sh(
        "ip link add up0 type veth peer name lan0 && ip link set lan0 up && \
         tc qdisc add dev tapc clsact && \
         tc filter add dev tapc ingress prio 7 u32 match u32 0xdeadbeef 0xffffffff at 0 classid 1:1",
    )?;
    let foreign = || -> Result<String> { ns.sh("tc filter show dev tapc ingress") };
    ensure!(foreign()?.contains("pref 7 u32"), "{}", foreign()?);
    let said = run(&["up", "br0", "--uplink", "up0"])?;
    ensure!(said.contains("TC on clsact"), "up said: {said}");
    let said = run(&["attach", "tapa", "--tc-only"])?;
    ensure!(said.contains("tc clsact"), "attach said: {said}");
    run(&["attach", "tapb"])?;
    run(&["attach", "tapc", "--tc-only"])?;
    let show: Value = serde_json::from_str(&run(&["show", "br0", "--json"])?)?;
    let ports = show["ports"].as_array().context("ports")?;
    ensure!(ports.len() == 5, "{show}");
    for p in ports {
        ensure!(p["tc"] == "clsact", "every port on clsact: {p}");
    }
    let table = run(&["show", "br0"])?;
    ensure!(
        table.lines().filter(|l| l.contains(" clsact ")).count() == 5,
        "{table}"
    );
    let qdiscs = || ns.sh("tc qdisc show");
    let q = qdiscs()?;
    for dev in ["tapa", "tapb", "tapc", "up0", "br0-sw"] {
        ensure!(
            q.contains(&format!("qdisc clsact ffff: dev {dev} ")),
            "no clsact on {dev}: {q}"
        );
    }
    ensure!(
        ns.sh("tc filter show dev up0 egress")?
            .contains("umlbr_tc_out direct-action"),
        "uplink egress"
    );
    let f = foreign()?;
    ensure!(
        f.contains("pref 7 u32") && f.contains("umlbr_tc direct-action"),
        "{f}"
    );

    // Frames: b (XDP) and a, c (TC only), both ways.
    let frame = |dst: [u8; 6], src: [u8; 6]| {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5]);
        f.extend_from_slice(&[0x5a; 50]);
        f
    };
    let recv = |t: &mut File, src: [u8; 6]| -> Result<Vec<u8>> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut buf = [0u8; 2048];
        loop {
            match t.read(&mut buf) {
                Ok(n) if buf[6..12] == src => return Ok(buf[..n].to_vec()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    ensure!(
                        std::time::Instant::now() < deadline,
                        "no frame from {src:?}"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => bail!("reading a tap: {e}"),
            }
        }
    };
    let (ma, mb, mc) = (
        [2, 0, 0, 0, 0, 0xa],
        [2, 0, 0, 0, 0, 0xb],
        [2, 0, 0, 0, 0, 0xc],
    );
    b.write_all(&frame([0xff; 6], mb))?;
    ensure!(recv(&mut a, mb)? == frame([0xff; 6], mb), "flood b -> a");
    ensure!(recv(&mut c, mb)? == frame([0xff; 6], mb), "flood b -> c");
    a.write_all(&frame(mb, ma))?;
    ensure!(recv(&mut b, ma)? == frame(mb, ma), "a -> b (TC)");
    b.write_all(&frame(ma, mb))?;
    ensure!(recv(&mut a, mb)? == frame(ma, mb), "b -> a (XDP)");
    c.write_all(&frame(mb, mc))?;
    ensure!(
        recv(&mut b, mc)? == frame(mb, mc),
        "c -> b (TC, after the foreign filter)"
    );
    b.write_all(&frame(mc, mb))?;
    ensure!(recv(&mut c, mb)? == frame(mc, mb), "b -> c (XDP)");
    let stats: Value = serde_json::from_str(&run(&["stats", "br0", "--json"])?)?;
    let port = |name: &str| -> Result<Value> {
        stats["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
            .with_context(|| format!("{name} in stats"))
    };
    let (sa, sb, sc) = (port("tapa")?, port("tapb")?, port("tapc")?);
    ensure!(sa["stats"]["tc"].as_u64() == Some(1), "tapa by TC: {sa}");
    ensure!(sc["stats"]["tc"].as_u64() == Some(1), "tapc by TC: {sc}");
    // tapb's unicasts in XDP; its broadcast in TC (with an uplink, XDP
    // hands floods to TC, which clones them to the uplink too).
    ensure!(
        sb["stats"]["xdp_native"].as_u64() == Some(2) && sb["stats"]["tc"].as_u64() == Some(1),
        "tapb by XDP, its flood by TC: {sb}"
    );

    // detach: umlbr's qdisc goes, the foreign one stays with its filter.
    run(&["detach", "tapa"])?;
    run(&["detach", "tapc"])?;
    let q = qdiscs()?;
    ensure!(
        !q.contains("qdisc clsact ffff: dev tapa "),
        "tapa keeps a qdisc umlbr made: {q}"
    );
    ensure!(
        q.contains("qdisc clsact ffff: dev tapc "),
        "tapc's qdisc removed: {q}"
    );
    let f = foreign()?;
    ensure!(f.contains("pref 7 u32") && !f.contains("umlbr"), "{f}");
    // Attached again (the foreign filter still first on tapc), for down.
    run(&["attach", "tapa"])?;
    run(&["attach", "tapc"])?;
    run(&["down", "br0"])?;
    let q = qdiscs()?;
    ensure!(
        q.lines().filter(|l| l.contains("clsact")).count() == 1
            && q.contains("qdisc clsact ffff: dev tapc "),
        "down leaves only the foreign qdisc: {q}"
    );
    let f = foreign()?;
    ensure!(f.contains("pref 7 u32") && !f.contains("umlbr"), "{f}");
    for dev in ["tapa", "tapb", "tapc", "up0"] {
        for side in ["ingress", "egress"] {
            let t = ns.sh(&format!("tc filter show dev {dev} {side}"))?;
            ensure!(!t.contains("bpf"), "{dev} {side}: {t}");
        }
    }
    Ok(())
}
