//! IPv6 through a masquerade bridge (issue 18): a guest's IPv6 must never
//! reach the LAN with its own (or any but the uplink's) source address,
//! whether the host forwards IPv6 or not. The guest is a test thread
//! writing raw frames into its tap; the LAN is a thread reading the
//! uplink tap (which, like a real NIC, takes XDP). The oracle is the
//! kernel recipe with an IPv6 masquerade rule (networkd's
//! `IPMasquerade=both`) and, as umlbr's table has for IPv4, a forward rule
//! that drops guests' packets from other sources (without it, the bare
//! recipe forwards a guest's spoofed LAN source untranslated).
use std::{
    io::Write,
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use umlbr_tests::{
    netns::{InNetns, Netns, drain, open_tap},
    wire::{Frame, Mac, ethertype, mac, v6},
};

const GUEST: &str = "02:00:00:00:00:10";
const UPLINK_MAC: &str = "02:00:00:00:01:01";
const LAN_PEER_MAC: &str = "02:00:00:00:99:02";
const UPLINK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 1);
const LAN_PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 2);
const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x10);
/// An address of the LAN's, which a guest may claim as its source.
const SPOOFED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 0x77);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Umlbr,
    Kernel,
}

/// The guest subnet 192.168.2.0/24 and fd00:2::/64 behind a masquerade
/// out of up0, with IPv6 forwarding on. With `uplink6`, up0 has the global
/// address 2001:db8:99::1/64; without, only its link-local one and a route
/// to 2001:db8:99::/64 through it (the kernel would still forward there).
/// The LAN peer's neighbour entries are static: nothing waits for ND.
fn lab(ns: &Netns, kind: Kind, uplink6: bool) -> Result<()> {
    let addr6 = if uplink6 {
        format!("ip -6 addr add {UPLINK6}/64 dev up0 nodad")
    } else {
        "ip -6 route add 2001:db8:99::/64 dev up0".to_string()
    };
    ns.sh(&format!(
        "sysctl -qw net.ipv6.conf.all.forwarding=1 net.ipv6.conf.default.accept_dad=0 && \
         ip link set up0 address {UPLINK_MAC} && ip addr add 10.99.0.1/24 dev up0 && \
         ip link set up0 up && ip link set tap0 up && {addr6} && \
         ip neigh replace 10.99.0.2 lladdr {LAN_PEER_MAC} dev up0 nud permanent && \
         ip -6 neigh replace {LAN_PEER6} lladdr {LAN_PEER_MAC} dev up0 nud permanent && \
         ip route add default via 10.99.0.2"
    ))?;
    match kind {
        Kind::Umlbr => {
            ns.umlbr_ok(&["up", "br0", "--address", "192.168.2.1/24"])?;
            ns.sh("ip -6 addr add fd00:2::1/64 dev br0 nodad")?;
            ns.umlbr_ok(&["attach", "up0", "--bridge", "br0", "--masquerade"])?;
            ns.umlbr_ok(&["attach", "tap0", "--bridge", "br0"])?;
        }
        Kind::Kernel => {
            ns.sh(
                "ip link add br0 type bridge stp_state 0 forward_delay 0 && \
                 ip addr add 192.168.2.1/24 dev br0 && ip -6 addr add fd00:2::1/64 dev br0 nodad && \
                 ip link set br0 up && ip link set tap0 master br0 && \
                 sysctl -qw net.ipv4.ip_forward=1 && \
                 nft add table inet t && \
                 nft add chain inet t post '{ type nat hook postrouting priority 100; }' && \
                 nft add rule inet t post ip saddr 192.168.2.0/24 oifname up0 masquerade && \
                 nft add rule inet t post ip6 saddr fd00:2::/64 oifname up0 masquerade && \
                 nft add chain inet t filt '{ type filter hook forward priority 0; }' && \
                 nft add rule inet t filt iifname br0 ip6 saddr != fd00:2::/64 drop",
            )?;
        }
    }
    // The bridge's host interface needs a moment to be up for IPv6.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

fn is_ipv6(f: &[u8]) -> bool {
    f.len() >= 54 && f[12..14] == [0x86, 0xdd]
}

/// The IPv6 frames on `frames` that carry `marker`, by source address.
fn sources(frames: &[Vec<u8>], marker: &[u8]) -> Vec<Ipv6Addr> {
    frames
        .iter()
        .filter(|f| is_ipv6(f) && f.windows(marker.len()).any(|w| w == marker))
        .map(|f| v6::addrs(&f[14..]).0)
        .collect()
}

/// A guest's IPv6 UDP, TCP SYN and echo request to the LAN peer, from its
/// own address and from a spoofed LAN one, 3 of each: what leaves up0
/// must come from the uplink's address (translated) or not at all. With
/// `uplink6`, the datagrams from the guest's own address must leave
/// translated (the test sees the uplink at all).
fn guest_ipv6_never_leaves_untranslated(kind: Kind, uplink6: bool) -> Result<()> {
    let ns = Netns::new(&format!("n6-leak{}", uplink6 as u8))?;
    let _in = InNetns::enter(&ns)?;
    let mut tap0 = open_tap("tap0")?;
    let mut up0 = open_tap("up0")?;
    lab(&ns, kind, uplink6)?;
    let guest = mac(GUEST);
    let gw_mac: Mac = mac(ns.sh("cat /sys/class/net/br0/address")?.trim());
    // The guest's neighbour entry on the gateway: replies need no ND.
    ns.sh(&format!(
        "ip -6 neigh replace {GUEST6} lladdr {GUEST} dev br0 nud permanent"
    ))?;
    drain(&mut up0, Duration::from_millis(200));

    let mut leaks = Vec::new();
    let mut translated = 0;
    for (who, src) in [("own", GUEST6), ("spoofed", SPOOFED6)] {
        let cases: [(&str, Vec<u8>); 3] = [
            (
                "udp",
                v6::udp(src, 4000, LAN_PEER6, 53, format!("udp6 {who}").as_bytes()),
            ),
            (
                "tcp",
                v6::tcp(
                    src,
                    4001,
                    LAN_PEER6,
                    80,
                    0x02,
                    1000,
                    0,
                    format!("tcp6 {who}").as_bytes(),
                ),
            ),
            ("echo", {
                let mut p = v6::echo(src, LAN_PEER6, false, 0x4242, 1);
                // The marker goes into the echo's data.
                p.truncate(p.len() - 5);
                p.extend_from_slice(format!("echo6 {who}").as_bytes());
                let l = (p.len() - 40) as u16;
                p[4..6].copy_from_slice(&l.to_be_bytes());
                let mut icmp = p[40..].to_vec();
                icmp[2..4].copy_from_slice(&[0, 0]);
                let s = v6::l4_checksum(src, LAN_PEER6, 58, &icmp);
                p[42..44].copy_from_slice(&s.to_be_bytes());
                p
            }),
        ];
        for (what, ip) in cases {
            let marker = format!("{what}6 {who}");
            let frame = Frame::new(gw_mac, guest)
                .ethertype(ethertype::IPV6)
                .payload(&ip)
                .build();
            for _ in 0..3 {
                tap0.write_all(&frame).context("writing to tap0")?;
            }
            let seen = drain(&mut up0, Duration::from_millis(300));
            let srcs = sources(&seen, marker.as_bytes());
            let bad: Vec<_> = srcs.iter().filter(|s| **s != UPLINK6).collect();
            if !bad.is_empty() {
                leaks.push(format!(
                    "{marker}: {} of 3 left with source {}",
                    bad.len(),
                    bad[0]
                ));
            }
            if who == "own" && what == "udp" {
                translated += srcs.iter().filter(|s| **s == UPLINK6).count();
            }
        }
    }
    ensure!(
        leaks.is_empty(),
        "{kind:?}: guest IPv6 left through the masquerade uplink untranslated: {}",
        leaks.join("; ")
    );
    if uplink6 {
        ensure!(
            translated == 3,
            "{kind:?}: {translated} of 3 guest datagrams left up0 translated (the reader sees nothing?)"
        );
    } else {
        ensure!(translated == 0, "{kind:?}: translated without an address?");
    }
    // umlbr's datapath translated the guest's own flows itself (or, with
    // no uplink address, dropped them) and left the spoofed ones to the
    // kernel's ip6 table, which dropped them: each counted.
    if kind == Kind::Umlbr {
        let v: serde_json::Value =
            serde_json::from_str(&ns.umlbr_ok(&["stats", "br0", "--json"])?)?;
        let c = &v["nat"]["counters6"];
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        ensure!(n("bad_source") == 9, "spoofed sources not counted: {c}");
        if uplink6 {
            ensure!(
                n("out_xdp") + n("out_tc") >= 3 && n("allocs") == 3 && n("no_addr") == 0,
                "the datapath did not translate udp, tcp and echo: {c}"
            );
        } else {
            ensure!(
                n("no_addr") == 9 && n("allocs") == 0,
                "the datapath did not drop the guest's IPv6 without an uplink address: {c}"
            );
        }
    }
    // IPv4 still masquerades as before.
    let routed = Frame::new(gw_mac, guest)
        .udp(
            Ipv4Addr::new(192, 168, 2, 10),
            4000,
            Ipv4Addr::new(10, 99, 0, 2),
            5000,
            b"routed4",
        )
        .build();
    tap0.write_all(&routed)?;
    let seen = drain(&mut up0, Duration::from_millis(300));
    ensure!(
        seen.iter()
            .any(|f| f.len() >= 34 && f[12..14] == [8, 0] && f[26..30] == [10, 99, 0, 1]),
        "{kind:?}: IPv4 did not leave translated"
    );
    Ok(())
}

#[test]
fn guest_ipv6_never_leaves_untranslated_umlbr() -> Result<()> {
    guest_ipv6_never_leaves_untranslated(Kind::Umlbr, true)
}

#[test]
fn guest_ipv6_never_leaves_untranslated_umlbr_no_uplink_address() -> Result<()> {
    guest_ipv6_never_leaves_untranslated(Kind::Umlbr, false)
}

#[test]
fn guest_ipv6_never_leaves_untranslated_kernel() -> Result<()> {
    guest_ipv6_never_leaves_untranslated(Kind::Kernel, true)
}
