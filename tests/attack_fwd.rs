//! Attacks from the LAN on a masquerading bridge with a port forward
//! (SECURITY.md), against umlbr and, as the oracle, against the recipe
//! (Linux bridge, nftables masquerade and a dnat rule for the forward).
//! The LAN is this thread writing frames into the uplink tap up0 (which,
//! like a real NIC, takes XDP); the guests are taps tap0 (192.168.2.10,
//! the forward's target) and tap1 (192.168.2.11), read for what reaches
//! them.
use std::{io::Write, net::Ipv4Addr, time::Duration};

use anyhow::{Result, ensure};
use umlbr_tests::{
    netns::{InNetns, Netns, drain, open_tap},
    wire::{BROADCAST, Frame, Mac, TcpHeader, mac, tcp_flags},
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Umlbr,
    Kernel,
}

const GUEST_A: &str = "02:00:00:00:00:10";
const GUEST_B: &str = "02:00:00:00:00:11";
const UPLINK_MAC: &str = "02:00:00:00:01:01";
const LAN_PEER_MAC: &str = "02:00:00:00:99:02";
const NAT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const A: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 10);
const B: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 11);

/// The masquerade out of up0 (10.99.0.1/24; the LAN peer 10.99.0.2), the
/// guests on tap0 and tap1, their MACs known to the host (static
/// neighbours) and to the switch (each sends a gratuitous ARP), and the
/// forward tcp 8080 -> 192.168.2.10:80.
fn lab(ns: &Netns, kind: Kind) -> Result<()> {
    ns.sh(&format!(
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 && \
         ip link set up0 address {UPLINK_MAC} && ip addr add 10.99.0.1/24 dev up0 && \
         ip link set up0 up && ip link set tap0 up && ip link set tap1 up && \
         ip neigh replace 10.99.0.2 lladdr {LAN_PEER_MAC} dev up0 nud permanent"
    ))?;
    match kind {
        Kind::Umlbr => {
            ns.umlbr_ok(&[
                "up",
                "br0",
                "--address",
                "192.168.2.1/24",
                "--masquerade",
                "up0",
            ])?;
            ns.umlbr_ok(&["attach", "tap0", "--bridge", "br0"])?;
            ns.umlbr_ok(&["attach", "tap1", "--bridge", "br0"])?;
            ns.umlbr_ok(&["forward", "add", "br0", "tcp", "8080", "192.168.2.10:80"])?;
        }
        Kind::Kernel => {
            ns.sh(
                "ip link add br0 type bridge stp_state 0 forward_delay 0 && \
                 ip addr add 192.168.2.1/24 dev br0 && ip link set br0 up && \
                 ip link set tap0 master br0 && ip link set tap1 master br0 && \
                 sysctl -qw net.ipv4.ip_forward=1 && \
                 nft add table ip t && \
                 nft add chain ip t post '{ type nat hook postrouting priority 100; }' && \
                 nft add rule ip t post ip saddr 192.168.2.0/24 oifname up0 masquerade && \
                 nft add chain ip t pre '{ type nat hook prerouting priority -100; }' && \
                 nft add rule ip t pre ip daddr 10.99.0.1 tcp dport 8080 dnat to 192.168.2.10:80",
            )?;
        }
    }
    ns.sh(&format!(
        "ip neigh replace 192.168.2.10 lladdr {GUEST_A} dev br0 nud permanent && \
         ip neigh replace 192.168.2.11 lladdr {GUEST_B} dev br0 nud permanent"
    ))?;
    Ok(())
}

/// A LAN peer's packet to `dst:dport` from port `sport`, to the uplink's
/// MAC (the host routes it, as a router on the LAN path would).
fn from_lan(udp: bool, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let f = Frame::new(mac(UPLINK_MAC), mac(LAN_PEER_MAC));
    if udp {
        f.udp(PEER, sport, dst, dport, b"probe")
    } else {
        f.tcp(
            PEER,
            dst,
            &TcpHeader::new(sport, dport, tcp_flags::SYN),
            b"",
        )
    }
    .build()
}

/// The frames among `frames` from the LAN peer's port `sport`: (their
/// destination address and port).
fn arrived(frames: &[Vec<u8>], sport: u16) -> Vec<(Ipv4Addr, u16)> {
    frames
        .iter()
        .filter(|f| {
            f.len() >= 38
                && f[12..14] == [0x08, 0x00]
                && f[26..30] == PEER.octets()
                && u16::from_be_bytes([f[34], f[35]]) == sport
        })
        .map(|f| {
            (
                Ipv4Addr::new(f[30], f[31], f[32], f[33]),
                u16::from_be_bytes([f[36], f[37]]),
            )
        })
        .collect()
}

/// A LAN host reaches a guest only through a forward, and only the
/// forward's target: SYNs to the uplink's address on ports not forwarded
/// (and UDP to a TCP forward) reach no guest; SYNs routed through the host
/// straight to the guests' addresses (the LAN host adding a route to the
/// guest subnet via the host) reach no guest either, on umlbr. The recipe
/// lets those through (its forward chain accepts everything): the oracle
/// shows the attack works there.
fn lan_reaches_only_the_forward(kind: Kind) -> Result<()> {
    let ns = Netns::new("fwatk")?;
    let _in = InNetns::enter(&ns)?;
    let mut tap0 = open_tap("tap0")?;
    let mut tap1 = open_tap("tap1")?;
    let mut up0 = open_tap("up0")?;
    lab(&ns, kind)?;
    for (tap, m, ip) in [(&mut tap0, GUEST_A, A), (&mut tap1, GUEST_B, B)] {
        let g: Mac = mac(m);
        tap.write_all(
            &Frame::new(BROADCAST, g)
                .arp_request(ip, ip)
                .pad_min()
                .build(),
        )?;
    }
    std::thread::sleep(Duration::from_millis(200));
    drain(&mut tap0, Duration::from_millis(100));
    drain(&mut tap1, Duration::from_millis(100));
    drain(&mut up0, Duration::from_millis(100));
    // (what, udp, destination, port, reaches on umlbr, reaches on the recipe)
    let probes: [(&str, bool, Ipv4Addr, u16, bool, bool); 7] = [
        ("the forward", false, NAT_IP, 8080, true, true),
        ("a port not forwarded", false, NAT_IP, 8081, false, false),
        (
            "the target's port on the uplink",
            false,
            NAT_IP,
            80,
            false,
            false,
        ),
        ("udp to a tcp forward", true, NAT_IP, 8080, false, false),
        (
            "the target, routed, another port",
            false,
            A,
            22,
            false,
            true,
        ),
        ("the target, routed, its port", false, A, 80, false, true),
        ("another guest, routed", false, B, 80, false, true),
    ];
    let mut wrong = Vec::new();
    for (i, (what, udp, dst, port, umlbr, recipe)) in probes.into_iter().enumerate() {
        let sport = 41000 + i as u16;
        up0.write_all(&from_lan(udp, sport, dst, port))?;
        std::thread::sleep(Duration::from_millis(150));
        let a = arrived(&drain(&mut tap0, Duration::from_millis(100)), sport);
        let b = arrived(&drain(&mut tap1, Duration::from_millis(50)), sport);
        let should = if kind == Kind::Umlbr { umlbr } else { recipe };
        let reached = !a.is_empty() || !b.is_empty();
        eprintln!("{kind:?}: {what} ({}:{port}): tap0 {a:?} tap1 {b:?}", dst);
        if reached != should {
            wrong.push(format!(
                "{what} ({dst}:{port}): {} (tap0 {a:?}, tap1 {b:?})",
                if reached {
                    "reached a guest"
                } else {
                    "reached no guest"
                }
            ));
        }
        // The forward reaches its target alone, with the client's own
        // address (checked by `arrived`) and the target's port.
        if should && i == 0 && (a != [(A, 80)] || !b.is_empty()) {
            wrong.push(format!("the forward: tap0 {a:?}, tap1 {b:?}"));
        }
    }
    ensure!(wrong.is_empty(), "{kind:?}: {}", wrong.join("; "));
    if kind == Kind::Umlbr {
        // The forward's SYN was mapped in BPF (a hit), nothing else was.
        let v: serde_json::Value =
            serde_json::from_str(&ns.umlbr_ok(&["forward", "show", "br0", "--json"])?)?;
        ensure!(
            v[0]["hits"].as_u64() == Some(1) && v[0]["flows"].as_u64() == Some(1),
            "forward show: {v}"
        );
    }
    Ok(())
}

#[test]
fn lan_reaches_only_the_forward_umlbr() -> Result<()> {
    lan_reaches_only_the_forward(Kind::Umlbr)
}

#[test]
fn lan_reaches_only_the_forward_kernel() -> Result<()> {
    lan_reaches_only_the_forward(Kind::Kernel)
}
