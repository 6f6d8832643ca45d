//! End to end: VLAN-aware ports with real User Mode Linux guests. Two
//! guests are access ports of VLAN 10, one of VLAN 20 (in the same IP
//! subnet, so only the VLANs keep them apart), and one guest is a trunk
//! of both that tags with its own kernel (UML's 8021q module, loaded in
//! the guest from /usr/lib/uml/modules). No kernel bridge oracle: this
//! host's kernel has neither bridge VLAN filtering nor 8021q.
//!
//! Needs root, /usr/bin/linux.uml with its modules, iperf3 and busybox.
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use umlbr_tests::{
    netns::Netns,
    uml::{self, Guest, GuestSpec, Ping, Transport, iperf3_json, ping_counts},
};

const BRIDGE: &str = "br0";

fn spec(i: usize, ip: &str) -> GuestSpec {
    GuestSpec::new(
        &format!("g{i}"),
        Transport::Legacy,
        &format!("tap{i}"),
        &format!("02:00:00:00:00:{:02x}", i + 2),
        ip,
    )
}

/// Pings from `from` to `ip` that were answered (busybox ping, `count`).
fn answered(from: &Guest, ip: &str, count: u32) -> Result<u32> {
    let (_, out) = from.run_timeout(
        &Ping::Busybox.command(count, ip),
        Duration::from_secs(count as u64 + 10),
    )?;
    Ok(ping_counts(&out).map_or(0, |(_, rx)| rx))
}

/// The FDB's VLANs of `mac`, sorted.
fn vlans_of(fdb: &Value, mac: &str) -> Vec<u64> {
    let mut v: Vec<u64> = fdb
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["mac"].as_str() == Some(mac))
                .filter_map(|e| e["vlan"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

#[test]
fn two_vlans_and_a_trunk() -> Result<()> {
    let ns = Netns::without_ipv6("vl-e2e")?;
    ns.umlbr_ok(&["up", BRIDGE])?;
    let ports: [&[&str]; 4] = [
        &["--vlan", "10"],
        &["--vlan", "10"],
        &["--vlan", "20"],
        &["--trunk", "10,20"],
    ];
    for (i, extra) in ports.iter().enumerate() {
        let tap = format!("tap{i}");
        ns.umlbr_ok(&["tap", "add", &tap])?;
        let mut a = vec!["attach", tap.as_str(), "--bridge", BRIDGE];
        a.extend_from_slice(extra);
        ns.umlbr_ok(&a)?;
        ns.sh(&format!("ip link set {tap} up"))?;
    }
    // g2 (VLAN 20) is in VLAN 10's subnet too: only the VLANs separate it.
    // g3's untagged eth0 is in the default VLAN, which no other guest has.
    let specs = [
        spec(0, "10.10.0.2/24"),
        spec(1, "10.10.0.3/24"),
        spec(2, "10.10.0.4/24"),
        spec(3, "10.99.0.5/24"),
    ];
    let guests = Guest::boot_all(&ns.name, &specs)?;
    let g = &guests;
    g[2].run_ok("ip addr add 10.20.0.4/24 dev eth0")?;
    // The trunk guest tags with its own kernel.
    g[3].run_ok(
        "M=/usr/lib/uml/modules/$(uname -r)/kernel/net; \
         for m in llc/llc 802/stp 802/garp 802/mrp 8021q/8021q; do \
           insmod $M/$m.ko 2>/dev/null || grep -q ^${m##*/} /proc/modules || exit 1; done; \
         ip link add link eth0 name eth0.10 type vlan id 10 && \
         ip link add link eth0 name eth0.20 type vlan id 20 && \
         ip addr add 10.10.0.5/24 dev eth0.10 && ip addr add 10.20.0.5/24 dev eth0.20 && \
         ip link set eth0.10 up && ip link set eth0.20 up",
    )
    .context("the trunk guest's VLAN interfaces (UML's 8021q module)")?;

    // Within VLAN 10, untagged both ways.
    let s = uml::ping_ok(&g[0], Ping::Busybox, "10.10.0.3", 3)?;
    println!("g0 -> g1 (VLAN 10): {s}");
    // Across VLANs: nothing, though the subnet is the same (the ARP
    // request, a broadcast, never reaches VLAN 20).
    let across = answered(&g[0], "10.10.0.4", 3)?;
    ensure!(
        across == 0,
        "g0 (VLAN 10) reached g2 (VLAN 20): {across} of 3"
    );
    let back = answered(&g[2], "10.10.0.2", 3)?;
    ensure!(back == 0, "g2 (VLAN 20) reached g0 (VLAN 10): {back} of 3");
    // The trunk carries both, tagged: to g0 in VLAN 10, to g2 in VLAN 20.
    let s = uml::ping_ok(&g[3], Ping::Busybox, "10.10.0.2", 3)?;
    println!("g3.10 -> g0 (VLAN 10): {s}");
    let s = uml::ping_ok(&g[3], Ping::Busybox, "10.20.0.4", 3)?;
    println!("g3.20 -> g2 (VLAN 20): {s}");
    // The trunk's VLAN 10 interface and g2's VLAN 10 subnet address: no.
    let wrong = answered(&g[3], "10.10.0.4", 2)?;
    ensure!(wrong == 0, "g3 reached g2 through VLAN 10: {wrong} of 2");
    // TCP between an access port and the trunk: a tag pushed on every
    // frame one way, removed the other.
    let _server = g[3].iperf3_server()?;
    std::thread::sleep(Duration::from_millis(300));
    let (rc, out) = g[0].run_timeout("iperf3 -c 10.10.0.5 -t 2 -J", Duration::from_secs(20))?;
    let r = iperf3_json(rc, &out, "g0 -> g3 (VLAN 10)")?;
    println!(
        "iperf3 g0 (access 10) -> g3 (trunk): {:.2} Gbit/s, {} retransmits",
        r.bps / 1e9,
        r.retransmits
    );
    ensure!(r.bytes > 1e6, "iperf3 moved only {} bytes", r.bytes);

    let fdb: Value = serde_json::from_str(&ns.umlbr_ok(&["fdb", "show", BRIDGE, "--json"])?)?;
    let (g0, g2, g3) = (
        "02:00:00:00:00:02",
        "02:00:00:00:00:04",
        "02:00:00:00:00:05",
    );
    ensure!(
        vlans_of(&fdb, g0) == [10] && vlans_of(&fdb, g2) == [20] && vlans_of(&fdb, g3) == [10, 20],
        "fdb show: {fdb}"
    );
    let show: Value = serde_json::from_str(&ns.umlbr_ok(&["show", BRIDGE, "--json"])?)?;
    let port = |n: &str| {
        show["ports"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"].as_str() == Some(n)).cloned())
            .unwrap_or_default()
    };
    ensure!(
        port("tap0")["vlans"]["pvid"] == 10
            && port("tap3")["vlans"]["tagged"] == serde_json::json!([10, 20]),
        "show --json: {show}"
    );
    println!("{}", ns.umlbr_ok(&["show", BRIDGE])?);
    println!("{}", ns.umlbr_ok(&["fdb", "show", BRIDGE])?);
    Ok(())
}
