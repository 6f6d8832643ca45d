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

/// The hooks of `hooks`' set, without their programs.
fn where_(s: &BTreeSet<(String, &'static str, u32)>) -> Vec<(String, &'static str)> {
    s.iter().map(|(i, h, _)| (i.clone(), *h)).collect()
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

/// A masquerading bridge br0 in `ns` (entered): tap0 and tap1 (TC only)
/// its ports, up0 the uplink to 10.99.0.2; a static FDB entry on tap1,
/// tap1's guest learned, three UDP flows of guest 0 mapped.
struct Bench {
    tap0: std::fs::File,
    tap1: std::fs::File,
    up0: std::fs::File,
    gw: Mac,
    /// The flows' outside ports, for source ports 40000..40003.
    ports: Vec<u16>,
}

fn masquerade_with_flows(ns: &Netns, hook: &str) -> Result<Bench> {
    let mut b = Bench {
        tap0: open_tap("tap0")?,
        tap1: open_tap("tap1")?,
        up0: open_tap("up0")?,
        gw: [0; 6],
        ports: Vec::new(),
    };
    ns.sh(&format!(
        "ip link set up0 address {UPLINK_MAC} && ip addr add 10.99.0.1/24 dev up0 && \
         ip link set up0 up && ip link set tap0 up && ip link set tap1 up && \
         ip neigh replace 10.99.0.2 lladdr {LAN_PEER_MAC} dev up0 nud permanent && \
         ip route add default via 10.99.0.2"
    ))?;
    ok(
        ns,
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
    ok(ns, hook, &["attach", "tap0"])?;
    ok(ns, hook, &["attach", "tap1", "--tc-only"])?;
    ok(
        ns,
        hook,
        &["fdb", "add", "02:00:00:00:00:99", "tap1", "--static"],
    )?;
    b.gw = mac(ns.sh("cat /sys/class/net/br0/address")?.trim());
    // Learned entries, and NAT mappings: three flows of guest 0.
    drain(&mut b.up0, Duration::from_millis(200));
    for sport in 40000..40003 {
        let marker = format!("before {sport}");
        b.tap0
            .write_all(&guest_udp(b.gw, 0, sport, marker.as_bytes()))?;
        let got = left_translated(
            &drain(&mut b.up0, Duration::from_millis(200)),
            marker.as_bytes(),
        );
        b.ports
            .push(got.with_context(|| format!("flow {sport} did not leave translated"))?);
    }
    b.tap1.write_all(
        &Frame::new([0xff; 6], [0x02, 0, 0, 0, 0, 0x21])
            .arp_request(
                Ipv4Addr::new(192, 168, 2, 21),
                Ipv4Addr::new(192, 168, 2, 1),
            )
            .pad_min()
            .build(),
    )?;
    std::thread::sleep(Duration::from_millis(100));
    Ok(b)
}

/// The flows of `masquerade_with_flows` go on with their outside ports.
fn flows_go_on(b: &mut Bench, tag: &str) -> Result<()> {
    for (sport, port) in (40000..40003).zip(b.ports.clone()) {
        let marker = format!("{tag} {sport}");
        b.tap0
            .write_all(&guest_udp(b.gw, 0, sport, marker.as_bytes()))?;
        let got = left_translated(
            &drain(&mut b.up0, Duration::from_millis(200)),
            marker.as_bytes(),
        );
        ensure!(
            got == Some(port),
            "flow {sport}: outside port {got:?} {tag}, {port} before"
        );
    }
    Ok(())
}

fn keeps_maps_and_flows(hook: &str) -> Result<()> {
    let ns = Netns::without_ipv6(&format!("ug-keep-{hook}"))?;
    let _in = InNetns::enter(&ns)?;
    let mut bench = masquerade_with_flows(&ns, hook)?;

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
    flows_go_on(&mut bench, "after")?;
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

/// The map `name` of the programs on br0's switch port (this thread's
/// namespace), by id.
fn bridge_map(ns: &Netns, name: &str) -> Result<aya::maps::MapData> {
    let ids = hooks(ns)?
        .into_iter()
        .filter(|h| h.0 == "br0-sw")
        .map(|h| h.2);
    let (_, id) = map_ids(ids)?
        .into_iter()
        .find(|(n, _)| n == name)
        .with_context(|| format!("no map {name} on br0-sw"))?;
    Ok(aya::maps::MapData::from_id(id)?)
}

fn config_of(ns: &Netns) -> Result<aya::maps::Array<aya::maps::MapData, umlbr_common::Config>> {
    let m = aya::maps::Map::Array(bridge_map(ns, umlbr_common::names::CONFIG)?);
    Ok(m.try_into()?)
}

/// The FDB as the kernel holds it: MAC -> (port, flags).
fn fdb_raw(ns: &Netns) -> Result<std::collections::BTreeMap<[u8; 6], (u32, u32)>> {
    let m = aya::maps::Map::HashMap(bridge_map(ns, umlbr_common::names::FDB)?);
    let fdb: aya::maps::HashMap<_, umlbr_common::FdbKey, umlbr_common::FdbEntry> = m.try_into()?;
    Ok(fdb
        .iter()
        .filter_map(|e| e.ok())
        .map(|(k, v)| (k.mac, (v.ifindex, v.flags)))
        .collect())
}

fn show_layout(ns: &Netns, hook: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(&ok(ns, hook, &["show", "br0", "--json"])?)?;
    Ok(v["layout_version"].clone())
}

/// A bit no FDB flag uses: what the fabricated version 2 below adds.
const MARK: u32 = 0x100;

fn mark_fdb(_key: &mut [u8], value: &mut [u8]) {
    // FdbEntry.flags, bytes 4..8.
    let f = u32::from_ne_bytes(value[4..8].try_into().unwrap()) | MARK;
    value[4..8].copy_from_slice(&f.to_ne_bytes());
}

/// A running bridge whose maps' layout version is older than the
/// upgrading umlbr's, with the same sizes (what the kernel's layouts
/// cannot tell apart): a fabricated version 2 whose step rewrites every
/// FDB entry (sets a flag bit no flag uses), run through the library's
/// real upgrade over the running kernel maps. The FDB entries survive,
/// rewritten, in a new map; the configuration is copied with them,
/// holding version 2; every other map (NAT mappings among them) is the
/// same map; the flows keep their outside ports. Before that, a bridge
/// without a stored version (0) is read as version 1, and an upgrade
/// stores 1. After it, this umlbr (version 1) refuses the newer bridge,
/// and a version whose step refuses a map is refused, naming versions and
/// maps; neither changes a hook.
#[test]
fn a_version_step_migrates_a_running_bridge() -> Result<()> {
    use umlbr_common::names;
    let hook = "tcx";
    let ns = Netns::without_ipv6("upg-ver")?;
    let _in = InNetns::enter(&ns)?;
    let res = (|| -> Result<()> {
        let mut bench = masquerade_with_flows(&ns, hook)?;
        ensure!(show_layout(&ns, hook)? == 1, "up stores version 1");

        // A bridge from before the version was stored.
        let mut cfg = config_of(&ns)?;
        let mut c = cfg.get(&0, 0)?;
        c.layout = 0;
        cfg.set(0, c, 0)?;
        ensure!(show_layout(&ns, hook)? == 0);
        let text = ok(&ns, hook, &["show", "br0"])?;
        ensure!(text.contains("layout v1 (not stored)"), "{text}");
        let before = hooks(&ns)?;
        let plan: Value =
            serde_json::from_str(&ok(&ns, hook, &["upgrade", "br0", "--dry-run", "--json"])?)?;
        eprintln!("{plan:#}");
        let p = &plan[0];
        ensure!(
            p["layout_stored"] == 0 && p["layout_from"] == 1 && p["layout_to"] == 1,
            "{plan}"
        );
        ensure!(
            p["maps_migrated"].as_array().is_some_and(Vec::is_empty),
            "{plan}"
        );
        ensure!(
            p["maps_reused"].as_array().is_some_and(|m| m.len() >= 10),
            "{plan}"
        );
        ensure!(hooks(&ns)? == before, "--dry-run changed a hook");
        let text = ok(&ns, hook, &["upgrade", "br0", "--dry-run"])?;
        eprintln!("{text}");
        ensure!(text.contains("map layout version 1 (not stored"), "{text}");
        ok(&ns, hook, &["upgrade", "br0"])?;
        ensure!(show_layout(&ns, hook)? == 1, "upgrade stores the version");

        // Version 2: the same sizes, FDB entries that mean something else.
        let before = hooks(&ns)?;
        let maps = map_ids(before.iter().map(|h| h.2))?;
        let fdb = fdb_raw(&ns)?;
        ensure!(fdb.len() >= 3, "FDB before: {fdb:?}");
        ensure!(fdb.values().all(|(_, f)| f & MARK == 0), "{fdb:?}");
        let (_, nat) = tables(&ns, hook)?;
        const STEP2: umlbr_lib::Step = umlbr_lib::Step {
            to: 2,
            what: "test: FDB entries marked",
            maps: &[(names::FDB, umlbr_lib::Change::Rewrite(mark_fdb))],
        };
        let two = umlbr_lib::Versions {
            current: 2,
            history: &[STEP2],
        };
        let done = umlbr_lib::upgrade_with("br0", &two, &|_, _| {})?;
        eprintln!("{done:?}");
        ensure!((done.layout_from, done.layout_to) == (1, 2), "{done:?}");
        let migrated: BTreeSet<(String, usize)> = done.maps_migrated.iter().cloned().collect();
        ensure!(
            migrated
                == BTreeSet::from([
                    (names::FDB.to_string(), fdb.len()),
                    (names::CONFIG.to_string(), 1)
                ]),
            "{done:?}"
        );
        let after = hooks(&ns)?;
        let maps_after = map_ids(after.iter().map(|h| h.2))?;
        // New FDB and configuration maps; every other one the same map.
        let other = |m: &BTreeSet<(String, u32)>, fresh: bool| -> BTreeSet<(String, u32)> {
            m.iter()
                .filter(|(n, _)| (n == names::FDB || n == names::CONFIG) == fresh)
                .cloned()
                .collect()
        };
        ensure!(
            other(&maps, false) == other(&maps_after, false),
            "maps before {maps:?}, after {maps_after:?}"
        );
        ensure!(
            other(&maps, true).is_disjoint(&other(&maps_after, true)),
            "FDB and config not new: before {maps:?}, after {maps_after:?}"
        );
        let fdb_after = fdb_raw(&ns)?;
        let want: std::collections::BTreeMap<_, _> =
            fdb.iter().map(|(m, (i, f))| (*m, (*i, f | MARK))).collect();
        ensure!(
            fdb_after == want,
            "FDB after the rewrite {fdb_after:?}, want {want:?}"
        );
        ensure!(show_layout(&ns, hook)? == 2, "the copy holds version 2");
        let text = ok(&ns, hook, &["show", "br0"])?;
        ensure!(text.contains("layout v2"), "{text}");
        let (_, nat_after) = tables(&ns, hook)?;
        ensure!(nat == nat_after, "NAT before {nat}, after {nat_after}");
        flows_go_on(&mut bench, "after the migration")?;

        // This umlbr (version 1) refuses the newer bridge, changing nothing.
        let before = hooks(&ns)?;
        for args in [&["upgrade", "br0"][..], &["upgrade", "br0", "--dry-run"]] {
            let out = umlbr(&ns, hook, args)?;
            let err = String::from_utf8_lossy(&out.stderr);
            eprintln!("{args:?}: {err}");
            ensure!(!out.status.success(), "{args:?} succeeded");
            ensure!(
                err.contains("layout version 2, this umlbr's are version 1")
                    && err.contains("newer")
                    && err.contains("`umlbr down br0`"),
                "{args:?}: {err}"
            );
        }
        ensure!(hooks(&ns)? == before, "a refused upgrade changed a hook");
        // A version whose step cannot carry a map: refused, by name.
        let three = umlbr_lib::Versions {
            current: 3,
            history: &[
                STEP2,
                umlbr_lib::Step {
                    to: 3,
                    what: "test: NAT keys changed",
                    maps: &[(
                        names::NAT_OUT,
                        umlbr_lib::Change::Refuse("old mappings cannot be keyed anew"),
                    )],
                },
            ],
        };
        let e = umlbr_lib::upgrade_with("br0", &three, &|_, _| {})
            .err()
            .context("a refused step was upgraded")?;
        let e = format!("{e:#}");
        eprintln!("{e}");
        ensure!(
            e.contains("layout version 2, this umlbr's are version 3")
                && e.contains("UMLBR_NAT_OUT: version 3 (test: NAT keys changed): old mappings"),
            "{e}"
        );
        ensure!(hooks(&ns)? == before, "a refused upgrade changed a hook");
        ensure!(show_layout(&ns, hook)? == 2);
        Ok(())
    })();
    let _ = umlbr(&ns, hook, &["down", "br0"]);
    res
}

/// The race the expected-program replaces guard against: another program
/// put on a port's hook (XDP, then tcx) after the upgrade read it and
/// before it replaced it, injected there through the library's hook. The
/// replace fails naming the interface and hook; the other program stays
/// there; every hook the upgrade had replaced before is back on its old
/// program, the rest untouched (nothing half-upgraded); the flows go on;
/// `umlbr upgrade` run again completes, leaving the other program alone
/// (a umlbr program of another load, on maps of its own: not the
/// bridge's).
#[test]
fn a_raced_replace_fails_and_rolls_back() -> Result<()> {
    let hook = "tcx";
    let ns = Netns::without_ipv6("upg-race")?;
    let _in = InNetns::enter(&ns)?;
    let res = (|| -> Result<()> {
        let mut bench = masquerade_with_flows(&ns, hook)?;
        // Ports first (tap0, tap1), the masquerade's uplink, the switch
        // port last: up0's XDP and tap1's TC have hooks replaced before.
        let mut foreign = BTreeSet::new();
        for (iface, at) in [("up0", "XDP"), ("tap1", "TC")] {
            let racer = umlbr_lib::load_object()?;
            let prog = |n: &str| -> Result<aya::programs::ProgramFd> {
                Ok(racer.program(n).context("no program")?.fd()?.try_clone()?)
            };
            let racer_id = |n: &str| -> Result<u32> {
                Ok(racer.program(n).context("no program")?.info()?.id())
            };
            let before = hooks(&ns)?;
            let maps = map_ids(before.iter().map(|h| h.2))?;
            let raced = std::cell::RefCell::new(Vec::<String>::new());
            let race = |i: &str, h: &'static str| {
                if i != iface || h != at {
                    return;
                }
                let r = if h == "XDP" {
                    prog("umlbr_xdp").and_then(|fd| {
                        // Its own runtime, on a thread of its own (this one
                        // runs the upgrade's); the thread is in this
                        // namespace too.
                        std::thread::scope(|s| {
                            s.spawn(|| umlbr_lib::replace_xdp(i, &fd)).join().unwrap()
                        })
                    })
                } else {
                    (|| {
                        let tc = umlbr_lib::Tc::Ingress;
                        let (hooked, cur) = tc.umlbr_hooked(i).context("no TC program")?;
                        tc.replace(ifindex(i)?, i, &prog("umlbr_tc")?, &cur, hooked)?;
                        Ok(())
                    })()
                };
                raced
                    .borrow_mut()
                    .push(format!("{i} {h}: {:?}", r.map_err(|e| format!("{e:#}"))));
            };
            let e = umlbr_lib::upgrade_with("br0", &umlbr_lib::VERSIONS, &race)
                .err()
                .with_context(|| format!("{iface} {at}: raced, the upgrade succeeded"))?;
            let e = format!("{e:#}");
            eprintln!("{iface} {at}: {e}\nraced: {:?}", raced.borrow());
            ensure!(
                raced.borrow().len() == 1 && raced.borrow()[0].ends_with("Ok(())"),
                "the race: {:?}",
                raced.borrow()
            );
            ensure!(
                e.contains(&format!("stopped at {iface} ({at})")) && e.contains("put back"),
                "{e}"
            );
            let after = hooks(&ns)?;
            let theirs = if at == "XDP" { "xdp" } else { "tc ingress" };
            foreign.insert((iface.to_string(), theirs));
            let want: BTreeSet<(String, &'static str, u32)> = before
                .iter()
                .map(|(i, h, id)| {
                    if i == iface && *h == theirs {
                        let n = if at == "XDP" { "umlbr_xdp" } else { "umlbr_tc" };
                        (i.clone(), *h, racer_id(n).unwrap_or(0))
                    } else {
                        (i.clone(), *h, *id)
                    }
                })
                .collect();
            ensure!(
                after == want,
                "{iface} {at}: hooks after the race {after:?}, want {want:?}"
            );
            let others = |s: &BTreeSet<(String, &'static str, u32)>| -> Vec<u32> {
                s.iter()
                    .filter(|(i, h, _)| !(i == iface && *h == theirs))
                    .map(|h| h.2)
                    .collect()
            };
            ensure!(
                map_ids(others(&after))? == maps,
                "{iface} {at}: maps changed"
            );
            flows_go_on(&mut bench, &format!("after the {iface} race"))?;
            // Run again: completes; the other programs stay.
            ok(&ns, hook, &["upgrade", "br0"])?;
            let done = hooks(&ns)?;
            let others_kept = done.iter().all(|(i, h, id)| {
                let was = after
                    .iter()
                    .any(|(a, b, old)| a == i && b == h && old == id);
                was == foreign.contains(&(i.clone(), *h))
            });
            ensure!(
                others_kept && where_(&done) == where_(&after),
                "{iface} {at}: after the re-run {done:?}, before {after:?}"
            );
            flows_go_on(&mut bench, &format!("after the {iface} re-run"))?;
        }
        Ok(())
    })();
    let _ = umlbr(&ns, hook, &["down", "br0"]);
    res
}
