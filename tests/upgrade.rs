//! `umlbr upgrade` (issue 17): a running bridge's programs are replaced
//! on every hook by the upgrading binary's, and its maps are kept.
//!
//! The "old" and the "new" umlbr are the same binary here: `upgrade`
//! loads its object anew, so the programs are new ones all the same (new
//! ids on every hook, the old ids gone from the kernel), while the maps
//! must stay the very same (the same ids, the same entries). On tcx and
//! on clsact (`UMLBR_TC_HOOK`).
//!
//! Needs root.
use std::{
    collections::BTreeSet,
    io::Write,
    net::Ipv4Addr,
    process::Output,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use umlbr_tests::{
    netns::{InNetns, Netns, drain, ifindex, open_tap, xdp_prog_ids},
    umlbr_bin,
    wire::{Frame, Mac, mac},
};

mod umlbr_lib;

const UPLINK_MAC: &str = "02:00:00:00:01:01";
const LAN_PEER_MAC: &str = "02:00:00:00:99:02";

/// Guest `g`'s UDP datagram from `sport` to 10.99.0.2:53 through the gateway.
fn guest_udp(gw: Mac, g: u8, sport: u16, data: &[u8]) -> Vec<u8> {
    Frame::new(gw, [0x02, 0, 0, 0, 0, 0x10 + g])
        .udp(
            Ipv4Addr::new(192, 168, 2, 10 + g),
            sport,
            Ipv4Addr::new(10, 99, 0, 2),
            53,
            data,
        )
        .build()
}

/// The outside port of the frame in `frames` that left the uplink
/// translated (from 10.99.0.1) carrying `marker`.
fn left_translated(frames: &[Vec<u8>], marker: &[u8]) -> Option<u16> {
    frames
        .iter()
        .find(|f| {
            f.len() >= 42
                && f[23] == 17
                && f[26..30] == [10, 99, 0, 1]
                && f.windows(marker.len()).any(|w| w == marker)
        })
        .map(|f| u16::from_be_bytes([f[34], f[35]]))
}

fn umlbr(ns: &Netns, hook: &str, args: &[&str]) -> Result<Output> {
    ns.cmd(umlbr_bin().to_str().context("UMLBR_BIN")?)
        .args(args)
        .env("UMLBR_TC_HOOK", hook)
        .output()
        .context("running umlbr")
}

fn ok(ns: &Netns, hook: &str, args: &[&str]) -> Result<String> {
    let out = umlbr(ns, hook, args)?;
    ensure!(
        out.status.success(),
        "umlbr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every program on every hook of the namespace: (interface, hook, id).
fn hooks(ns: &Netns) -> Result<BTreeSet<(String, &'static str, u32)>> {
    let links: Value = serde_json::from_str(&ns.sh("ip -j -d link show")?)?;
    let mut out = BTreeSet::new();
    let mut idx = Vec::new();
    for l in links.as_array().context("ip -j link: not an array")? {
        let name = l["ifname"].as_str().unwrap_or("").to_string();
        for id in xdp_prog_ids(l) {
            out.insert((name.clone(), "xdp", id as u32));
        }
        idx.push((l["ifindex"].as_u64().unwrap_or(0) as u32, name));
    }
    let tc = ns.run_in(|| {
        let mut found = Vec::new();
        for (i, name) in &idx {
            for (hook, what) in [
                (umlbr_lib::Tc::Ingress, "tc ingress"),
                (umlbr_lib::Tc::Egress, "tc egress"),
            ] {
                for id in umlbr_lib::tc_prog_ids(*i, hook) {
                    found.push((name.clone(), what, id));
                }
            }
        }
        Ok(found)
    })?;
    out.extend(tc);
    Ok(out)
}

/// The maps the programs `ids` use: (name, id). Without the data
/// sections' (`.rodata` and the like: the object's constants, each
/// object its own).
fn map_ids(ids: impl IntoIterator<Item = u32>) -> Result<BTreeSet<(String, u32)>> {
    let ids: BTreeSet<u32> = ids.into_iter().collect();
    let mut maps = BTreeSet::new();
    for p in aya::programs::loaded_programs().flatten() {
        if ids.contains(&p.id()) {
            for id in p.map_ids()?.unwrap_or_default() {
                let info = aya::maps::MapInfo::from_id(id)?;
                let name = info.name_as_str().unwrap_or("").to_string();
                if !name.starts_with('.') {
                    maps.insert((name, id));
                }
            }
        }
    }
    Ok(maps)
}

fn loaded(id: u32) -> bool {
    aya::programs::loaded_programs()
        .flatten()
        .any(|p| p.id() == id)
}

/// FDB and NAT tables, without what time changes (ages, timeouts).
fn tables(ns: &Netns, hook: &str) -> Result<(Value, Value)> {
    let mut fdb: Value = serde_json::from_str(&ok(ns, hook, &["fdb", "show", "--json"])?)?;
    let mut nat: Value = serde_json::from_str(&ok(ns, hook, &["nat", "show", "br0", "--json"])?)?;
    for rows in [&mut fdb, &mut nat] {
        for r in rows.as_array_mut().context("not an array")? {
            let r = r.as_object_mut().context("not an object")?;
            r.retain(|k, _| !k.contains("age") && !k.contains("expire") && !k.contains("idle"));
        }
    }
    Ok((fdb, nat))
}

fn keeps_maps_and_flows(hook: &str) -> Result<()> {
    let ns = Netns::without_ipv6(&format!("ug-keep-{hook}"))?;
    let _in = InNetns::enter(&ns)?;
    let mut tap0 = open_tap("tap0")?;
    let mut tap1 = open_tap("tap1")?;
    let mut up0 = open_tap("up0")?;
    ns.sh(&format!(
        "ip link set up0 address {UPLINK_MAC} && ip addr add 10.99.0.1/24 dev up0 && \
         ip link set up0 up && ip link set tap0 up && ip link set tap1 up && \
         ip neigh replace 10.99.0.2 lladdr {LAN_PEER_MAC} dev up0 nud permanent && \
         ip route add default via 10.99.0.2"
    ))?;
    ok(
        &ns,
        hook,
        &[
            "up",
            "br0",
            "--address",
            "192.168.2.1/24",
            "--masquerade",
            "up0",
        ],
    )?;
    ok(&ns, hook, &["attach", "tap0"])?;
    ok(&ns, hook, &["attach", "tap1", "--tc-only"])?;
    ok(
        &ns,
        hook,
        &["fdb", "add", "02:00:00:00:00:99", "tap1", "--static"],
    )?;
    let gw: Mac = mac(ns.sh("cat /sys/class/net/br0/address")?.trim());
    // Learned entries, and NAT mappings: three flows of guest 0.
    drain(&mut up0, Duration::from_millis(200));
    let mut ports = Vec::new();
    for sport in 40000..40003 {
        let marker = format!("before {sport}");
        tap0.write_all(&guest_udp(gw, 0, sport, marker.as_bytes()))?;
        let got = left_translated(
            &drain(&mut up0, Duration::from_millis(200)),
            marker.as_bytes(),
        );
        ports.push(got.with_context(|| format!("flow {sport} did not leave translated"))?);
    }
    tap1.write_all(
        &Frame::new([0xff; 6], [0x02, 0, 0, 0, 0, 0x21])
            .arp_request(
                Ipv4Addr::new(192, 168, 2, 21),
                Ipv4Addr::new(192, 168, 2, 1),
            )
            .pad_min()
            .build(),
    )?;
    std::thread::sleep(Duration::from_millis(100));

    let before = hooks(&ns)?;
    let (fdb, nat) = tables(&ns, hook)?;
    ensure!(
        fdb.as_array().is_some_and(|r| r.len() >= 3),
        "FDB before: {fdb}"
    );
    ensure!(
        nat.as_array().is_some_and(|r| r.len() == 3),
        "NAT before: {nat}"
    );
    let maps = map_ids(before.iter().map(|h| h.2))?;
    ensure!(maps.len() >= 10, "maps before: {maps:?}");

    let said = ok(&ns, hook, &["upgrade", "br0", "--json"])?;
    let report: Value = serde_json::from_str(&said)?;
    eprintln!("{said}");

    let after = hooks(&ns)?;
    // Every hook holds a new program; the same hooks as before.
    let where_ = |s: &BTreeSet<(String, &'static str, u32)>| {
        s.iter()
            .map(|(i, h, _)| (i.clone(), *h))
            .collect::<Vec<_>>()
    };
    ensure!(
        where_(&before) == where_(&after),
        "hooks before {before:?}, after {after:?}"
    );
    let old: BTreeSet<u32> = before.iter().map(|h| h.2).collect();
    let new: BTreeSet<u32> = after.iter().map(|h| h.2).collect();
    ensure!(
        old.is_disjoint(&new),
        "programs not replaced: before {before:?}, after {after:?}"
    );
    let replaced = report[0]["replaced"].as_array().map_or(0, Vec::len);
    ensure!(
        replaced == before.len(),
        "upgrade reports {replaced} replaced of {} hooks: {said}",
        before.len()
    );
    // Three programs, one of each, on every hook: XDP, TC, TC egress.
    ensure!(new.len() == 3, "new programs: {after:?}");
    // The old programs are gone from the kernel (freed once unhooked).
    let t = Instant::now();
    while old.iter().any(|&id| loaded(id)) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = old.iter().copied().filter(|&id| loaded(id)).collect();
    ensure!(left.is_empty(), "old programs still loaded: {left:?}");
    // The same maps, the same entries.
    let maps_after = map_ids(new.iter().copied())?;
    ensure!(
        maps == maps_after,
        "maps before {maps:?}, after {maps_after:?}"
    );
    let (fdb_after, nat_after) = tables(&ns, hook)?;
    ensure!(fdb == fdb_after, "FDB before {fdb}, after {fdb_after}");
    ensure!(nat == nat_after, "NAT before {nat}, after {nat_after}");
    // The flows go on with their mappings, through the new programs.
    for (sport, port) in (40000..40003).zip(&ports) {
        let marker = format!("after {sport}");
        tap0.write_all(&guest_udp(gw, 0, sport, marker.as_bytes()))?;
        let got = left_translated(
            &drain(&mut up0, Duration::from_millis(200)),
            marker.as_bytes(),
        );
        ensure!(
            got == Some(*port),
            "flow {sport}: outside port {got:?} after the upgrade, {port} before"
        );
    }
    // No pins or mount left behind.
    let ino = ns.sh("stat -L -c %i /proc/self/ns/net")?;
    let dir = format!("/run/umlbr/net{}-br0.upgrade", ino.trim());
    ensure!(
        std::fs::symlink_metadata(&dir).is_err(),
        "{dir} left behind"
    );
    ok(&ns, hook, &["down", "br0"])?;
    Ok(())
}

#[test]
fn upgrade_keeps_maps_and_flows_tcx() -> Result<()> {
    keeps_maps_and_flows("tcx")
}

#[test]
fn upgrade_keeps_maps_and_flows_clsact() -> Result<()> {
    keeps_maps_and_flows("clsact")
}

/// `upgrade` without a bridge, or of one that does not exist: a clear
/// error naming it.
#[test]
fn upgrade_of_no_bridge_says_so() -> Result<()> {
    let ns = Netns::new("ug-none")?;
    let out = umlbr(&ns, "tcx", &["upgrade", "nosuch"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("nosuch"),
        "upgrade nosuch: {err}"
    );
    let out = umlbr(&ns, "tcx", &["upgrade"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("no bridge"),
        "upgrade without bridges: {err}"
    );
    Ok(())
}

/// A TC replace names the program it replaces: once that program is no
/// longer on the hook (replaced by another), a replace naming it fails and
/// the hook keeps what it has. On tcx the kernel checks it (BPF_F_REPLACE,
/// the old program kept loaded here so that the request reaches the
/// kernel); on clsact umlbr finds the filter by the old program.
#[test]
fn a_replace_naming_a_replaced_program_fails() -> Result<()> {
    for hook in ["tcx", "clsact"] {
        let ns = Netns::without_ipv6(&format!("ug-stale-{hook}"))?;
        ok(&ns, hook, &["up", "br0"])?;
        let res = ns.run_in(|| {
            let sw = "br0-sw";
            let idx = ifindex(sw)?;
            let tc = umlbr_lib::Tc::Ingress;
            let (at, first) = tc.umlbr_hooked(sw).context("no TC program")?;
            let keep = first.fd()?;
            let a = umlbr_lib::load_object()?;
            let b = umlbr_lib::load_object()?;
            let fd = |e: &aya::Ebpf| -> Result<aya::programs::ProgramFd> {
                let p = e.program("umlbr_tc").context("no umlbr_tc")?;
                Ok(p.fd()?.try_clone()?)
            };
            tc.replace(idx, sw, &fd(&a)?, &first, at)?;
            let now = tc.umlbr_prog(sw).context("no TC program")?.id();
            ensure!(now != first.id(), "not replaced");
            let stale = tc.replace(idx, sw, &fd(&b)?, &first, at);
            ensure!(
                stale.is_err(),
                "{hook}: a replace naming a replaced program succeeded"
            );
            eprintln!("{hook}: {:#}", anyhow::Error::from(stale.unwrap_err()));
            let after = tc.umlbr_prog(sw).context("no TC program")?.id();
            ensure!(
                after == now,
                "{hook}: the hook changed to {after} (was {now})"
            );
            drop(keep);
            Ok(())
        });
        ok(&ns, hook, &["down", "br0"])?;
        res?;
    }
    Ok(())
}
