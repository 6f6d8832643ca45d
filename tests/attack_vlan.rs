//! VLAN attacks by an untrusted guest (SECURITY.md, "VLANs"): a guest
//! writing tagged frames into its tap to reach a VLAN of the LAN it was
//! not given, and guests of two VLANs trying to reach each other. The
//! guests are test threads writing raw frames into their taps; the LAN is
//! a thread reading the uplink tap. No kernel oracle: this kernel has
//! neither bridge VLAN filtering nor 8021q.
use std::{fs::File, io::Write, net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use umlbr_tests::{
    netns::{InNetns, Netns, drain, open_tap},
    wire::{BROADCAST, Frame, Mac, mac},
};

const UPLINK_MAC: &str = "02:00:00:00:01:01";

/// Frames in `frames` that carry `marker`.
fn carrying(frames: &[Vec<u8>], marker: &[u8]) -> usize {
    frames
        .iter()
        .filter(|f| f.windows(marker.len()).any(|w| w == marker))
        .count()
}

/// Frames carrying `marker` whose first tag is 802.1Q VLAN `vid`.
fn tagged(frames: &[Vec<u8>], marker: &[u8], vid: u16) -> usize {
    frames
        .iter()
        .filter(|f| {
            f.len() >= 16
                && f[12..14] == [0x81, 0x00]
                && u16::from_be_bytes([f[14], f[15]]) & 0xfff == vid
                && f.windows(marker.len()).any(|w| w == marker)
        })
        .count()
}

fn port_stats(ns: &Netns, port: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(&ns.umlbr_ok(&["stats", "br0", "--json"])?)?;
    v["ports"]
        .as_array()
        .context("stats --json has no ports")?
        .iter()
        .find(|p| p["name"].as_str() == Some(port))
        .map(|p| p["stats"].clone())
        .with_context(|| format!("no port {port} in stats --json"))
}

fn udp(dst: Mac, src: Mac, marker: &[u8]) -> Frame {
    Frame::new(dst, src).udp(
        Ipv4Addr::new(10, 0, 0, 10),
        4000,
        Ipv4Addr::new(10, 0, 0, 1),
        5000,
        marker,
    )
}

/// A bridge br0 with an uplink up0 (a tap standing in for the host's NIC)
/// and guests tap0.., each attached with its own extra arguments.
fn lab(ns: &Netns, uplink_args: &[&str], guests: &[&[&str]]) -> Result<()> {
    ns.sh(&format!(
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 && \
         ip link set up0 address {UPLINK_MAC}"
    ))?;
    ns.umlbr_ok(&["up", "br0", "--uplink", "up0"])?;
    if !uplink_args.is_empty() {
        let mut a = vec!["vlan", "up0"];
        a.extend_from_slice(uplink_args);
        ns.umlbr_ok(&a)?;
    }
    for (i, extra) in guests.iter().enumerate() {
        let tap = format!("tap{i}");
        let mut a = vec!["attach", tap.as_str(), "--bridge", "br0"];
        a.extend_from_slice(extra);
        ns.umlbr_ok(&a)?;
    }
    ns.sh("for t in up0 tap0 tap1 tap2; do ip link set $t up 2>/dev/null; done; true")?;
    Ok(())
}

/// A guest on an access port of VLAN 10 writes a frame tagged VLAN 42
/// (and one double-tagged, 802.1ad outside): neither reaches the LAN, in
/// any form; both are counted as `vlan`. Its untagged frames leave the
/// uplink (a trunk of 10 and 42) tagged 10. Before VLAN-aware ports, the
/// guest's tag went onto the LAN as it wrote it.
#[test]
fn guest_cannot_tag_onto_the_lan() -> Result<()> {
    let ns = Netns::new("vl-atk-tag")?;
    let _in = InNetns::enter(&ns)?;
    let mut up0 = open_tap("up0")?;
    let mut tap0 = open_tap("tap0")?;
    lab(&ns, &["--trunk", "10,42"], &[&["--vlan", "10"]])?;
    std::thread::sleep(Duration::from_millis(100));
    drain(&mut up0, Duration::from_millis(100));
    let g = mac("02:00:00:00:00:0a");
    let hop = udp(BROADCAST, g, b"hop to vlan 42").vlan(42, 0).pad_min();
    let qinq = udp(BROADCAST, g, b"qinq to vlan 42")
        .tag(0x88a8, 42, 0)
        .vlan(42, 0)
        .pad_min();
    let mine = udp(BROADCAST, g, b"own vlan").pad_min();
    for _ in 0..10 {
        tap0.write_all(&hop.build())?;
        tap0.write_all(&qinq.build())?;
    }
    tap0.write_all(&mine.build())?;
    let lan = drain(&mut up0, Duration::from_millis(400));
    let leaked = (
        carrying(&lan, b"hop to vlan 42"),
        carrying(&lan, b"qinq to vlan 42"),
    );
    ensure!(
        leaked == (0, 0),
        "the LAN got {} of 10 frames the guest tagged VLAN 42 ({} tagged 42) and {} of 10 \
         double-tagged ones",
        leaked.0,
        tagged(&lan, b"hop to vlan 42", 42),
        leaked.1
    );
    ensure!(
        tagged(&lan, b"own vlan", 10) == 1,
        "the guest's own untagged frame did not leave the trunk tagged 10: {lan:02x?}"
    );
    let s = port_stats(&ns, "tap0")?;
    ensure!(
        s["vlan"].as_u64() == Some(20) && s["dropped"].as_u64() == Some(20),
        "tap0's counters: {s}"
    );
    Ok(())
}

/// Guests of VLAN 10 (tap0, the attacker; tap2, its neighbour) and VLAN
/// 20 (tap1, the target): the attacker's unicast to the target's MAC, its
/// broadcasts and its unknown unicast never reach the target; its own
/// VLAN's guest gets them, and the LAN gets them tagged 10. A MAC learned
/// in VLAN 20 is unknown in VLAN 10 (flooded there, not sent to the
/// target's port). With `tc_flood`, TC floods (the uplink's ports force
/// it); without an uplink carrying VLANs, the same.
fn two_vlans_are_kept_apart(uplink_trunk: bool) -> Result<()> {
    let ns = Netns::new("vl-atk-apart")?;
    let _in = InNetns::enter(&ns)?;
    let mut up0 = open_tap("up0")?;
    let mut taps: Vec<File> = ["tap0", "tap1", "tap2"]
        .iter()
        .map(|t| open_tap(t))
        .collect::<Result<_>>()?;
    let trunk: &[&str] = if uplink_trunk {
        &["--trunk", "10,20"]
    } else {
        &[]
    };
    lab(
        &ns,
        trunk,
        &[&["--vlan", "10"], &["--vlan", "20"], &["--vlan", "10"]],
    )?;
    let (a, b, c) = (
        mac("02:00:00:00:00:0a"),
        mac("02:00:00:00:00:0b"),
        mac("02:00:00:00:00:0c"),
    );
    // The target and the neighbour announce themselves.
    taps[1].write_all(&udp(BROADCAST, b, b"hello from b").pad_min().build())?;
    taps[2].write_all(&udp(BROADCAST, c, b"hello from c").pad_min().build())?;
    std::thread::sleep(Duration::from_millis(100));
    for t in taps.iter_mut().chain([&mut up0]) {
        drain(t, Duration::from_millis(100));
    }
    let fdb: Value = serde_json::from_str(&ns.umlbr_ok(&["fdb", "show", "br0", "--json"])?)?;
    let vlan_of = |m: &str| {
        fdb.as_array().and_then(|v| {
            v.iter()
                .find(|e| e["mac"].as_str() == Some(m))
                .and_then(|e| e["vlan"].as_u64())
        })
    };
    ensure!(
        vlan_of("02:00:00:00:00:0b") == Some(20) && vlan_of("02:00:00:00:00:0c") == Some(10),
        "fdb show: {fdb}"
    );
    let frames = [
        udp(b, a, b"cross unicast"),
        udp(BROADCAST, a, b"cross broadcast"),
        udp(mac("02:00:00:00:00:ee"), a, b"cross unknown"),
    ];
    for f in &frames {
        for _ in 0..10 {
            taps[0].write_all(&f.clone().pad_min().build())?;
        }
    }
    let at_target = drain(&mut taps[1], Duration::from_millis(400));
    let at_neighbour = drain(&mut taps[2], Duration::from_millis(100));
    let at_lan = drain(&mut up0, Duration::from_millis(100));
    let markers = ["cross unicast", "cross broadcast", "cross unknown"];
    let leaked = markers.map(|m| carrying(&at_target, m.as_bytes()));
    ensure!(
        leaked == [0, 0, 0],
        "the VLAN 20 guest got {leaked:?} of 10 (unicast to its MAC, broadcast, unknown \
         unicast) from a VLAN 10 guest"
    );
    // The target's MAC is unknown in VLAN 10: flooded there.
    let same = markers.map(|m| carrying(&at_neighbour, m.as_bytes()));
    ensure!(
        same == [10, 10, 10],
        "the VLAN 10 neighbour got {same:?} of 10"
    );
    let lan = markers.map(|m| tagged(&at_lan, m.as_bytes(), 10));
    let want = if uplink_trunk {
        [10, 10, 10]
    } else {
        [0, 0, 0]
    };
    ensure!(
        lan == want && carrying(&at_lan, b"cross") == want[0] * 3,
        "the LAN got {lan:?} of 10 tagged 10, {} in all",
        carrying(&at_lan, b"cross")
    );
    Ok(())
}

#[test]
fn two_vlans_are_kept_apart_trunk() -> Result<()> {
    two_vlans_are_kept_apart(true)
}

#[test]
fn two_vlans_are_kept_apart_no_trunk() -> Result<()> {
    two_vlans_are_kept_apart(false)
}
