//! Attacks by an untrusted guest (SECURITY.md), each run against umlbr and,
//! as the oracle, against the recipe umlbr replaces (Linux bridge, nftables
//! masquerade). The guests are test threads writing raw frames into their
//! taps, as a hostile guest kernel could; the LAN is a thread reading the
//! uplink tap, which, like a real NIC, takes XDP.
use std::{
    fs::File,
    io::{Read, Write},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use umlbr_tests::{
    bpf::Sniffer,
    netns::{InNetns, Netns, drain, open_tap},
    wire::{BROADCAST, Frame, Mac, ethertype, mac},
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Umlbr,
    Kernel,
}

const GUEST: &str = "02:00:00:00:00:10";
const UPLINK_MAC: &str = "02:00:00:00:01:01";
const LAN_PEER_MAC: &str = "02:00:00:00:99:02";

/// Each `(i, mac)` sends a broadcast ARP request from tap `i`, so that the
/// switch learns the MAC there (sender address 10.0.0.(i+1)).
fn announce(taps: &mut [File], who: &[(usize, Mac)]) -> Result<()> {
    for &(i, m) in who {
        let f = Frame::new(BROADCAST, m)
            .arp_request(
                Ipv4Addr::new(10, 0, 0, 1 + i as u8),
                Ipv4Addr::new(10, 0, 0, 9),
            )
            .pad_min()
            .build();
        taps[i].write_all(&f)?;
    }
    Ok(())
}

fn src_mac(f: &[u8]) -> Mac {
    f[6..12].try_into().unwrap()
}

/// The guest's subnet behind a masquerade out of up0, a tap standing in for
/// the host's NIC (10.99.0.1/24, the LAN's router 10.99.0.2 resolved
/// statically so that nothing waits for ARP).
fn masquerade_lab(ns: &Netns, kind: Kind) -> Result<()> {
    ns.sh(&format!(
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 && \
         ip link set up0 address {UPLINK_MAC} && ip addr add 10.99.0.1/24 dev up0 && \
         ip link set up0 up && ip link set tap0 up && \
         ip neigh replace 10.99.0.2 lladdr {LAN_PEER_MAC} dev up0 nud permanent && \
         ip route add default via 10.99.0.2"
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
        }
        Kind::Kernel => {
            ns.sh(
                "ip link add br0 type bridge stp_state 0 forward_delay 0 && \
                 ip addr add 192.168.2.1/24 dev br0 && ip link set br0 up && \
                 ip link set tap0 master br0 && sysctl -qw net.ipv4.ip_forward=1 && \
                 nft add table ip t && \
                 nft add chain ip t post '{ type nat hook postrouting priority 100; }' && \
                 nft add rule ip t post ip saddr 192.168.2.0/24 oifname up0 masquerade",
            )?;
        }
    }
    Ok(())
}

/// Scenario D: what a guest floods (broadcast ARP with any sender address,
/// DHCP, router advertisements, unknown unicast) must never leave through
/// the masquerade uplink untranslated; only routed, translated packets do.
fn guest_floods_stay_off_the_lan(kind: Kind) -> Result<()> {
    let ns = Netns::new("atk-flood")?;
    let _in = InNetns::enter(&ns)?;
    let mut tap0 = open_tap("tap0")?;
    let mut up0 = open_tap("up0")?;
    masquerade_lab(&ns, kind)?;
    let guest = mac(GUEST);
    let gw_mac: Mac = mac(ns.sh("cat /sys/class/net/br0/address")?.trim());
    drain(&mut up0, Duration::from_millis(300));

    let attacks: Vec<(&str, Vec<u8>)> = vec![
        (
            "broadcast ARP with a LAN sender address",
            Frame::new(BROADCAST, guest)
                .arp_request(Ipv4Addr::new(10, 99, 0, 77), Ipv4Addr::new(10, 99, 0, 2))
                .pad_min()
                .build(),
        ),
        (
            "DHCP discover",
            Frame::new(BROADCAST, guest)
                .udp(
                    Ipv4Addr::UNSPECIFIED,
                    68,
                    Ipv4Addr::BROADCAST,
                    67,
                    &[1u8; 240],
                )
                .build(),
        ),
        (
            "IPv6 router advertisement",
            Frame::new(mac("33:33:00:00:00:01"), guest)
                .ethertype(ethertype::IPV6)
                .payload(&router_advertisement())
                .build(),
        ),
        (
            "unknown unicast",
            Frame::new(mac(LAN_PEER_MAC), guest)
                .udp(
                    Ipv4Addr::new(192, 168, 2, 10),
                    4000,
                    Ipv4Addr::new(10, 99, 0, 2),
                    5000,
                    b"leak",
                )
                .pad_min()
                .build(),
        ),
    ];
    let mut leaks = Vec::new();
    for (what, frame) in &attacks {
        for _ in 0..10 {
            tap0.write_all(frame).context("writing to tap0")?;
        }
        let seen = drain(&mut up0, Duration::from_millis(300));
        let n = seen.iter().filter(|f| src_mac(f) == guest).count();
        if n > 0 {
            leaks.push(format!("{what}: {n} of 10"));
        }
    }

    // The oracle that up0's reader sees what the bridge sends there: a
    // routed datagram leaves translated, from the uplink's MAC and address.
    let routed = Frame::new(gw_mac, guest)
        .udp(
            Ipv4Addr::new(192, 168, 2, 10),
            4000,
            Ipv4Addr::new(10, 99, 0, 2),
            5000,
            b"routed",
        )
        .pad_min()
        .build();
    let mut translated = 0;
    for _ in 0..3 {
        tap0.write_all(&routed)?;
        let seen = drain(&mut up0, Duration::from_millis(300));
        translated += seen
            .iter()
            .filter(|f| {
                src_mac(f) == mac(UPLINK_MAC)
                    && f.len() >= 34
                    && f[12..14] == [0x08, 0x00]
                    && f[26..30] == [10, 99, 0, 1]
            })
            .count();
    }
    ensure!(
        translated == 3,
        "{kind:?}: {translated} of 3 routed datagrams left up0 translated (the reader sees nothing?)"
    );
    ensure!(
        leaks.is_empty(),
        "{kind:?}: guest frames left through the masquerade uplink untranslated: {}",
        leaks.join("; ")
    );
    Ok(())
}

/// An ICMPv6 router advertisement from a link-local address, all-nodes.
fn router_advertisement() -> Vec<u8> {
    let src = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
    let dst = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    // type 134, code 0, checksum, hop limit 64, flags, lifetime 1800 s,
    // reachable, retrans: enough for a router to act on.
    let mut icmp = vec![134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut sum: u32 = 0;
    for c in src.chunks(2).chain(dst.chunks(2)) {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    sum += icmp.len() as u32 + 58;
    for c in icmp.chunks(2) {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    icmp[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[58, 255]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(&icmp);
    ip
}

#[test]
fn guest_floods_stay_off_the_lan_umlbr() -> Result<()> {
    guest_floods_stay_off_the_lan(Kind::Umlbr)
}

#[test]
fn guest_floods_stay_off_the_lan_kernel() -> Result<()> {
    guest_floods_stay_off_the_lan(Kind::Kernel)
}

/// Three guests: the victim (tap0), the attacker (tap1) and a peer (tap2)
/// that talks to the victim.
fn three_ports(ns: &Netns, kind: Kind) -> Result<()> {
    ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")?;
    match kind {
        Kind::Umlbr => {
            ns.umlbr_ok(&["up", "br0"])?;
            for t in ["tap0", "tap1", "tap2"] {
                ns.umlbr_ok(&["attach", t, "--bridge", "br0"])?;
            }
        }
        Kind::Kernel => {
            // As large a table as umlbr's, so only the policy differs.
            ns.sh(
                "ip link add br0 type bridge stp_state 0 forward_delay 0 && \
                 ip link set br0 up && for t in tap0 tap1 tap2; do \
                 ip link set $t master br0; done",
            )?;
        }
    }
    ns.sh("for t in tap0 tap1 tap2; do ip link set $t up; done")?;
    Ok(())
}

fn fdb_has(ns: &Netns, kind: Kind, mac: &str) -> Result<bool> {
    Ok(match kind {
        Kind::Umlbr => {
            let v: Value = serde_json::from_str(&ns.umlbr_ok(&["fdb", "show", "br0", "--json"])?)?;
            v.as_array()
                .context("fdb show --json is not an array")?
                .iter()
                .any(|e| e["mac"].as_str() == Some(mac))
        }
        Kind::Kernel => ns
            .sh_output(&format!("bridge fdb get {mac} br br0"))?
            .status
            .success(),
    })
}

/// A guest sending from a million random source MACs must not push the
/// other guests (or the host's static entry) out of the table: unicast for
/// them would then be flooded, to the attacker too.
fn mac_flood_keeps_the_others(kind: Kind) -> Result<()> {
    let ns = Netns::new("atk-macs")?;
    let _in = InNetns::enter(&ns)?;
    let mut taps: Vec<File> = ["tap0", "tap1", "tap2"]
        .iter()
        .map(|t| open_tap(t))
        .collect::<Result<_>>()?;
    three_ports(&ns, kind)?;
    let (victim, attacker, peer) = (
        mac("02:00:00:00:00:0a"),
        mac("02:00:00:00:00:0b"),
        mac("02:00:00:00:00:0c"),
    );
    // Everyone announces itself.
    for (i, m) in [victim, attacker, peer].into_iter().enumerate() {
        let f = Frame::new(BROADCAST, m)
            .arp_request(
                Ipv4Addr::new(10, 0, 0, 1 + i as u8),
                Ipv4Addr::new(10, 0, 0, 9),
            )
            .pad_min()
            .build();
        taps[i].write_all(&f)?;
    }
    std::thread::sleep(Duration::from_millis(100));
    for t in taps.iter_mut() {
        drain(t, Duration::from_millis(100));
    }
    ensure!(
        fdb_has(&ns, kind, "02:00:00:00:00:0a")?,
        "{kind:?}: the victim was not learned"
    );

    // The flood: each frame from a new random (unicast, locally
    // administered) MAC to the attacker's own MAC, so the switch learns the
    // source and drops the frame instead of flooding it.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut frame = Frame::new(attacker, attacker).pad_min().build();
    // From every CPU in turn: an LRU table keeps per-CPU lists, and a
    // flood from one CPU alone would leave entries another CPU inserted
    // to chance.
    let started = Instant::now();
    let mut sent = 0u32;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for cpu in 0..cpus {
        pin_to_cpu(cpu)?;
        let quota = 1_000_000 / cpus as u32 * (cpu as u32 + 1);
        while sent < quota && started.elapsed() < Duration::from_secs(60) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let b = state.to_be_bytes();
            frame[6..12].copy_from_slice(&[0x02 | (b[0] & 0xfc), b[1], b[2], b[3], b[4], b[5]]);
            if taps[1].write(&frame).is_ok() {
                sent += 1;
            }
        }
    }
    unpin()?;
    println!("{kind:?}: {sent} source MACs in {:?}", started.elapsed());
    std::thread::sleep(Duration::from_millis(200));
    for t in taps.iter_mut() {
        drain(t, Duration::from_millis(200));
    }

    // The peer now sends 20 frames to the victim.
    let to_victim = Frame::new(victim, peer).pattern(64).build();
    for _ in 0..20 {
        taps[2].write_all(&to_victim)?;
    }
    let at_attacker = drain(&mut taps[1], Duration::from_millis(300))
        .iter()
        .filter(|f| f[..6] == victim)
        .count();
    let at_victim = drain(&mut taps[0], Duration::from_millis(100))
        .iter()
        .filter(|f| f[..6] == victim && src_mac(f) == peer)
        .count();
    let victim_kept = fdb_has(&ns, kind, "02:00:00:00:00:0a")?;
    let host_mac = ns.sh("cat /sys/class/net/br0/address")?;
    ensure!(
        fdb_has(&ns, kind, host_mac.trim())?,
        "{kind:?}: the host port's static entry {} is gone",
        host_mac.trim()
    );
    // A guest that comes up after the flood is still learned, so frames
    // for it are not flooded either.
    let newcomer = mac("02:00:00:00:00:0d");
    taps[2].write_all(&Frame::new(victim, newcomer).pattern(64).build())?;
    drain(&mut taps[0], Duration::from_millis(100));
    for _ in 0..20 {
        taps[0].write_all(&Frame::new(newcomer, victim).pattern(64).build())?;
    }
    let newcomer_at_attacker = drain(&mut taps[1], Duration::from_millis(300))
        .iter()
        .filter(|f| f[..6] == newcomer)
        .count();
    ensure!(
        newcomer_at_attacker == 0,
        "{kind:?}: after the flood a new guest was not learned: {newcomer_at_attacker} of 20 \
         frames for it reached the attacker"
    );
    ensure!(
        at_victim == 20,
        "{kind:?}: the victim got {at_victim} of 20 frames"
    );
    ensure!(
        at_attacker == 0 && victim_kept,
        "{kind:?}: after {sent} spoofed source MACs the victim's entry is {} and \
         {at_attacker} of 20 frames for it reached the attacker",
        if victim_kept { "kept" } else { "gone" }
    );
    Ok(())
}

fn set_affinity(cpus: impl IntoIterator<Item = usize>) -> Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET and
    // sched_setaffinity(0, ...) act on this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        ensure!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    set_affinity([cpu])
}

fn unpin() -> Result<()> {
    set_affinity(0..std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[test]
fn mac_flood_keeps_the_others_umlbr() -> Result<()> {
    mac_flood_keeps_the_others(Kind::Umlbr)
}

#[test]
fn mac_flood_keeps_the_others_kernel() -> Result<()> {
    mac_flood_keeps_the_others(Kind::Kernel)
}

fn port_json(ns: &Netns, port: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(&ns.umlbr_ok(&["stats", "br0", "--json"])?)?;
    v["ports"]
        .as_array()
        .context("stats --json has no ports")?
        .iter()
        .find(|p| p["name"].as_str() == Some(port))
        .cloned()
        .with_context(|| format!("no port {port} in stats --json"))
}

/// Write one frame from each of `n` new source MACs (02:5a:00:00:HH:LL
/// plus `base`) into `tap`, to `dst`.
fn from_new_macs(tap: &mut File, dst: Mac, base: u16, n: u16) -> Result<()> {
    for i in 0..n {
        let [hi, lo] = (base + i).to_be_bytes();
        let f = Frame::new(dst, [0x02, 0x5a, 0, 0, hi, lo])
            .pad_min()
            .build();
        tap.write_all(&f)?;
    }
    Ok(())
}

/// A port learns at most its limit (256 for a guest by default,
/// `--max-learned` otherwise), counts the rest, and learns again once its
/// entries have aged out.
#[test]
fn learning_limit_and_sweep() -> Result<()> {
    let ns = Netns::new("atk-limit")?;
    let _in = InNetns::enter(&ns)?;
    let mut tap0 = open_tap("tap0")?;
    let mut tap1 = open_tap("tap1")?;
    let _tap2 = open_tap("tap2")?;
    ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")?;
    ns.umlbr_ok(&["up", "br0", "--aging", "1"])?;
    ns.umlbr_ok(&["attach", "tap0", "--bridge", "br0"])?;
    ns.umlbr_ok(&["attach", "tap1", "--bridge", "br0", "--max-learned", "10"])?;
    ns.umlbr_ok(&["attach", "tap2", "--bridge", "br0"])?;
    ns.sh("for t in tap0 tap1 tap2; do ip link set $t up; done")?;
    let dst = mac("02:00:00:00:00:99");

    from_new_macs(&mut tap0, dst, 0, 300)?;
    from_new_macs(&mut tap1, dst, 1000, 20)?;
    std::thread::sleep(Duration::from_millis(100));
    for (port, learned, limited, max) in [("tap0", 256, 44, 256), ("tap1", 10, 10, 10)] {
        let p = port_json(&ns, port)?;
        let got = (
            p["stats"]["learned"].as_u64(),
            p["stats"]["learn_limited"].as_u64(),
            p["learned_macs"].as_u64(),
            p["max_learned"].as_u64(),
        );
        ensure!(
            got == (Some(learned), Some(limited), Some(learned), Some(max)),
            "{port}: (learned, learn_limited, learned_macs, max_learned) = {got:?}, \
             expected ({learned}, {limited}, {learned}, {max})"
        );
    }

    // Aging is 1 s and a port at its limit may sweep once a second: after
    // 2.5 s the next new source is learned again.
    std::thread::sleep(Duration::from_millis(2500));
    from_new_macs(&mut tap0, dst, 5000, 1)?;
    std::thread::sleep(Duration::from_millis(100));
    ensure!(
        fdb_has(&ns, Kind::Umlbr, "02:5a:00:00:13:88")?,
        "after its entries aged out, tap0 did not learn a new MAC"
    );
    let p = port_json(&ns, "tap0")?;
    ensure!(
        p["stats"]["learned"].as_u64() == Some(257) && p["learned_macs"].as_u64() == Some(1),
        "after the sweep: {p}"
    );
    Ok(())
}

/// Frames in `frames` that are ARP requests from sender address `spa`.
fn arp_from(frames: &[Vec<u8>], spa: [u8; 4]) -> usize {
    frames
        .iter()
        .filter(|f| f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[28..32] == spa)
        .count()
}

/// No guest sends with the host port's MAC, nor with the uplink's: the
/// frames are dropped and counted as spoofed, so neither the other guests
/// nor the LAN see the host's MAC come from a guest. (The kernel bridge
/// forwards them: this is stricter than the recipe.)
#[test]
fn guest_cannot_send_as_the_host() -> Result<()> {
    let ns = Netns::new("atk-spoof")?;
    let _in = InNetns::enter(&ns)?;
    let mut tap0 = open_tap("tap0")?;
    let mut tap1 = open_tap("tap1")?;
    let mut up0 = open_tap("up0")?;
    ns.sh(&format!(
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 && \
         ip link set up0 address {UPLINK_MAC} && ip link set up0 up"
    ))?;
    ns.umlbr_ok(&["up", "br0", "--uplink", "up0"])?;
    for t in ["tap0", "tap1"] {
        ns.umlbr_ok(&["attach", t, "--bridge", "br0"])?;
        ns.sh(&format!("ip link set {t} up"))?;
    }
    let host_mac = mac(ns.sh("cat /sys/class/net/br0/address")?.trim());
    drain(&mut tap1, Duration::from_millis(200));
    drain(&mut up0, Duration::from_millis(200));
    let spa = [10, 66, 6, 6];
    for src in [host_mac, mac(UPLINK_MAC)] {
        let f = Frame::new(BROADCAST, src)
            .arp_request(Ipv4Addr::from(spa), Ipv4Addr::new(10, 66, 6, 1))
            .pad_min()
            .build();
        for _ in 0..10 {
            tap0.write_all(&f)?;
        }
    }
    let at_guest = arp_from(&drain(&mut tap1, Duration::from_millis(300)), spa);
    let at_lan = arp_from(&drain(&mut up0, Duration::from_millis(100)), spa);
    let p = port_json(&ns, "tap0")?;
    ensure!(
        at_guest == 0 && at_lan == 0,
        "frames from tap0 with the host's or the uplink's MAC reached the other guest \
         ({at_guest} of 20) and the LAN ({at_lan} of 20)"
    );
    ensure!(
        p["stats"]["spoofed"].as_u64() == Some(20) && p["stats"]["dropped"].as_u64() >= Some(20),
        "tap0's counters: {}",
        p["stats"]
    );
    Ok(())
}

/// A guest may masquerade only its subnet's addresses: a datagram from
/// any other source leaves neither translated nor untranslated, and is
/// counted. (The recipe forwards it untranslated unless rp_filter is
/// strict: this is stricter too.)
#[test]
fn guest_cannot_masquerade_other_sources() -> Result<()> {
    let ns = Netns::new("atk-src")?;
    let _in = InNetns::enter(&ns)?;
    let mut tap0 = open_tap("tap0")?;
    let mut up0 = open_tap("up0")?;
    masquerade_lab(&ns, Kind::Umlbr)?;
    let guest = mac(GUEST);
    let gw_mac: Mac = mac(ns.sh("cat /sys/class/net/br0/address")?.trim());
    drain(&mut up0, Duration::from_millis(300));
    let datagram = |src: Ipv4Addr, data: &[u8]| {
        Frame::new(gw_mac, guest)
            .udp(src, 4000, Ipv4Addr::new(10, 99, 0, 2), 5000, data)
            .pad_min()
            .build()
    };
    let has = |frames: &[Vec<u8>], data: &[u8]| {
        frames
            .iter()
            .filter(|f| f.windows(data.len()).any(|w| w == data))
            .count()
    };
    for src in [Ipv4Addr::new(10, 99, 0, 5), Ipv4Addr::new(172, 16, 0, 9)] {
        for _ in 0..5 {
            tap0.write_all(&datagram(src, b"foreign source"))?;
        }
    }
    let leaked = has(
        &drain(&mut up0, Duration::from_millis(400)),
        b"foreign source",
    );
    // The same datagram from the guest's own subnet does leave.
    for _ in 0..3 {
        tap0.write_all(&datagram(Ipv4Addr::new(192, 168, 2, 10), b"own source"))?;
    }
    let own = has(&drain(&mut up0, Duration::from_millis(400)), b"own source");
    let v: Value = serde_json::from_str(&ns.umlbr_ok(&["stats", "br0", "--json"])?)?;
    ensure!(
        own == 3,
        "{own} of 3 datagrams from the guest's subnet left"
    );
    ensure!(
        leaked == 0,
        "{leaked} of 10 datagrams from foreign sources left through the uplink"
    );
    ensure!(
        v["nat"]["counters"]["bad_source"].as_u64() == Some(10),
        "NAT counters: {}",
        v["nat"]["counters"]
    );
    Ok(())
}

/// The state of the guest's TCP flow to 10.99.0.2:80 as the masquerade
/// keeps it: umlbr's `nat show`, or conntrack's.
fn flow_state(ns: &Netns, kind: Kind) -> Result<String> {
    match kind {
        Kind::Umlbr => {
            let v: Value = serde_json::from_str(&ns.umlbr_ok(&["nat", "show", "br0", "--json"])?)?;
            let rows = v.as_array().context("nat show --json: not an array")?;
            let row = rows
                .iter()
                .find(|r| r["protocol"] == "tcp" && r["remote"] == "10.99.0.2:80")
                .with_context(|| format!("no mapping of the flow in {v}"))?;
            Ok(row["state"].as_str().unwrap_or("?").to_string())
        }
        Kind::Kernel => {
            let out = ns.sh("conntrack -L -p tcp --dport 80 2>/dev/null")?;
            let line = out
                .lines()
                .find(|l| l.contains("dst=10.99.0.2"))
                .with_context(|| format!("no conntrack entry of the flow: {out:?}"))?;
            // "tcp 6 431999 ESTABLISHED src=...": the state is the 4th field.
            let state = line.split_whitespace().nth(3).unwrap_or("?");
            Ok(match state {
                "ESTABLISHED" => "established",
                "CLOSE" => "reset",
                s => s,
            }
            .to_string())
        }
    }
}

/// A host on the LAN that is not the guest's peer (or the peer with a
/// stale sequence number) cannot end a guest's masqueraded TCP flow by
/// guessing its ports alone: an RST or FIN from the LAN whose sequence
/// number is outside the guest's receive window leaves the mapping
/// established (umlbr counts it as `out_of_window`; conntrack marks it
/// INVALID). An RST at the guest's acknowledgment still resets it, which
/// shows the test sees a change of state.
fn blind_reset_from_the_lan(kind: Kind) -> Result<()> {
    use umlbr_tests::wire::{TcpHeader, tcp_flags::*};
    let ns = Netns::new("atk-rst")?;
    let _in = InNetns::enter(&ns)?;
    let mut tap0 = open_tap("tap0")?;
    let mut up0 = open_tap("up0")?;
    masquerade_lab(&ns, kind)?;
    let guest = mac(GUEST);
    let gw_mac: Mac = mac(ns.sh("cat /sys/class/net/br0/address")?.trim());
    let (gip, peer, nat_ip) = (
        Ipv4Addr::new(192, 168, 2, 10),
        Ipv4Addr::new(10, 99, 0, 2),
        Ipv4Addr::new(10, 99, 0, 1),
    );
    drain(&mut up0, Duration::from_millis(300));
    let from_guest = |flags: u8, seq: u32, ack: u32| {
        Frame::new(gw_mac, guest)
            .tcp(
                gip,
                peer,
                &TcpHeader::new(40000, 80, flags).seq(seq).ack(ack),
                b"",
            )
            .build()
    };
    // The guest opens the flow; its SYN leaves translated, from port P.
    tap0.write_all(&from_guest(SYN, 1000, 0))?;
    let seen = drain(&mut up0, Duration::from_millis(300));
    let syn = seen
        .iter()
        .find(|f| f.len() >= 54 && f[23] == 6 && f[26..30] == nat_ip.octets())
        .with_context(|| format!("{kind:?}: the guest's SYN did not leave translated"))?;
    let port = u16::from_be_bytes([syn[34], syn[35]]);
    let from_peer = |flags: u8, seq: u32, ack: u32| {
        Frame::new(mac(UPLINK_MAC), mac(LAN_PEER_MAC))
            .tcp(
                peer,
                nat_ip,
                &TcpHeader::new(80, port, flags).seq(seq).ack(ack),
                b"",
            )
            .build()
    };
    up0.write_all(&from_peer(SYN | ACK, 5000, 1001))?;
    std::thread::sleep(Duration::from_millis(100));
    tap0.write_all(&from_guest(ACK, 1001, 5001))?;
    drain(&mut up0, Duration::from_millis(200));
    drain(&mut tap0, Duration::from_millis(100));
    let before = flow_state(&ns, kind)?;
    ensure!(
        before == "established",
        "{kind:?}: flow {before} after the handshake"
    );
    // The attack: RST and FIN half the sequence space away from the guest's
    // acknowledgment (5001), then just behind it.
    let mut changed = Vec::new();
    for (what, flags, seq) in [
        ("RST", RST, 5001u32.wrapping_add(1 << 31)),
        ("RST+ACK", RST | ACK, 5001u32.wrapping_add(1 << 31)),
        ("FIN+ACK", FIN | ACK, 5001u32.wrapping_add(1 << 31)),
        ("RST one byte behind", RST, 5000),
    ] {
        up0.write_all(&from_peer(flags, seq, 1001))?;
        std::thread::sleep(Duration::from_millis(100));
        let now = flow_state(&ns, kind)?;
        if now != "established" {
            changed.push(format!("{what} (seq {seq}): {now}"));
            break;
        }
    }
    ensure!(
        changed.is_empty(),
        "{kind:?}: a blind RST/FIN from the LAN changed the guest's flow: {}",
        changed.join("; ")
    );
    if kind == Kind::Umlbr {
        let v: Value = serde_json::from_str(&ns.umlbr_ok(&["stats", "br0", "--json"])?)?;
        ensure!(
            v["nat"]["counters"]["out_of_window"].as_u64() == Some(4),
            "NAT counters: {}",
            v["nat"]["counters"]
        );
    }
    // The peer's own RST, at the guest's acknowledgment, does reset it.
    up0.write_all(&from_peer(RST, 5001, 0))?;
    std::thread::sleep(Duration::from_millis(100));
    let after = flow_state(&ns, kind)?;
    ensure!(
        after == "reset",
        "{kind:?}: flow {after} after an RST in the window"
    );
    Ok(())
}

#[test]
fn blind_reset_from_the_lan_umlbr() -> Result<()> {
    blind_reset_from_the_lan(Kind::Umlbr)
}

#[test]
fn blind_reset_from_the_lan_kernel() -> Result<()> {
    blind_reset_from_the_lan(Kind::Kernel)
}

/// A guest cannot join another guest's masqueraded flow by sending with
/// its address and ports: the victim (tap0) opens a TCP connection, the
/// attacker (tap1) sends an RST and data on the same 5-tuple. Nothing of
/// the attacker's leaves translated on the victim's port, the mapping stays
/// established, and umlbr counts the packets as `foreign`. (No oracle:
/// conntrack does not bind a flow to a bridge port, so the recipe lets the
/// attacker's in-window RST close the victim's flow.)
#[test]
fn guest_cannot_join_another_guests_flow() -> Result<()> {
    use umlbr_tests::wire::{TcpHeader, tcp_flags::*};
    let ns = Netns::new("atk-join")?;
    let _in = InNetns::enter(&ns)?;
    let mut tap0 = open_tap("tap0")?;
    let mut tap1 = open_tap("tap1")?;
    let mut up0 = open_tap("up0")?;
    masquerade_lab(&ns, Kind::Umlbr)?;
    ns.sh("ip link set tap1 up")?;
    ns.umlbr_ok(&["attach", "tap1", "--bridge", "br0"])?;
    let (victim, attacker) = (mac(GUEST), mac("02:00:00:00:00:66"));
    let gw_mac: Mac = mac(ns.sh("cat /sys/class/net/br0/address")?.trim());
    let (gip, peer, nat_ip) = (
        Ipv4Addr::new(192, 168, 2, 10),
        Ipv4Addr::new(10, 99, 0, 2),
        Ipv4Addr::new(10, 99, 0, 1),
    );
    drain(&mut up0, Duration::from_millis(300));
    let guest_seg = |from: Mac, flags: u8, seq: u32, ack: u32, data: &[u8]| {
        Frame::new(gw_mac, from)
            .tcp(
                gip,
                peer,
                &TcpHeader::new(40000, 80, flags).seq(seq).ack(ack),
                data,
            )
            .build()
    };
    tap0.write_all(&guest_seg(victim, SYN, 1000, 0, b""))?;
    let seen = drain(&mut up0, Duration::from_millis(300));
    let syn = seen
        .iter()
        .find(|f| f.len() >= 54 && f[23] == 6 && f[26..30] == nat_ip.octets())
        .context("the victim's SYN did not leave translated")?;
    let port = u16::from_be_bytes([syn[34], syn[35]]);
    up0.write_all(
        &Frame::new(mac(UPLINK_MAC), mac(LAN_PEER_MAC))
            .tcp(
                peer,
                nat_ip,
                &TcpHeader::new(80, port, SYN | ACK).seq(5000).ack(1001),
                b"",
            )
            .build(),
    )?;
    std::thread::sleep(Duration::from_millis(100));
    tap0.write_all(&guest_seg(victim, ACK, 1001, 5001, b""))?;
    drain(&mut up0, Duration::from_millis(200));
    ensure!(
        flow_state(&ns, Kind::Umlbr)? == "established",
        "the victim's flow is not established after the handshake"
    );
    // The attack, from the other port: data and an in-window RST on the
    // victim's 5-tuple.
    tap1.write_all(&guest_seg(attacker, ACK | PSH, 1001, 5001, b"injected"))?;
    tap1.write_all(&guest_seg(attacker, RST | ACK, 1001, 5001, b""))?;
    let leaked = drain(&mut up0, Duration::from_millis(400))
        .iter()
        .filter(|f| {
            f.len() >= 54
                && f[23] == 6
                && f[26..30] == nat_ip.octets()
                && f[34..36] == port.to_be_bytes()
        })
        .count();
    let state = flow_state(&ns, Kind::Umlbr)?;
    let v: Value = serde_json::from_str(&ns.umlbr_ok(&["stats", "br0", "--json"])?)?;
    ensure!(
        leaked == 0 && state == "established",
        "the attacker's segments: {leaked} left as the victim's mapping, which is now {state}"
    );
    ensure!(
        v["nat"]["counters"]["foreign"].as_u64() == Some(2),
        "NAT counters: {}",
        v["nat"]["counters"]
    );
    // The victim's own data still leaves on its mapping.
    tap0.write_all(&guest_seg(victim, ACK | PSH, 1001, 5001, b"own"))?;
    let own = drain(&mut up0, Duration::from_millis(300))
        .iter()
        .filter(|f| {
            f.len() >= 54 && f[26..30] == nat_ip.octets() && f[34..36] == port.to_be_bytes()
        })
        .count();
    ensure!(
        own == 1,
        "{own} of the victim's 1 segment left on its mapping"
    );
    Ok(())
}

/// Two masquerading bridges whose names would make the same nftables
/// name (br-0, br_0) keep their own slow paths, and come down in any
/// order: forwarding stays on while one masquerades, and is off again
/// (as found) once neither does.
#[test]
fn two_masquerades_come_down_in_any_order() -> Result<()> {
    for first in ["br-0", "br_0"] {
        let ns = Netns::new("atk-two")?;
        ns.sh("sysctl -qw net.ipv4.ip_forward=0 && \
             for i in 0 1; do ip link add up$i type veth peer name lan$i && \
             ip addr add 10.9$i.0.1/24 dev up$i && ip link set up$i up && \
             ip link set lan$i up; done")?;
        ns.umlbr_ok(&[
            "up",
            "br-0",
            "--address",
            "192.168.2.1/24",
            "--masquerade",
            "up0",
        ])?;
        ns.umlbr_ok(&[
            "up",
            "br_0",
            "--address",
            "192.168.3.1/24",
            "--masquerade",
            "up1",
        ])?;
        let other = if first == "br-0" { "br_0" } else { "br-0" };
        let other_rule = if first == "br-0" {
            "ip saddr 192.168.3.0/24 oifname \"up1\" masquerade"
        } else {
            "ip saddr 192.168.2.0/24 oifname \"up0\" masquerade"
        };
        ns.umlbr_ok(&["down", first])?;
        let fwd = ns.sh("cat /proc/sys/net/ipv4/ip_forward")?;
        let rules = ns.sh("nft list ruleset")?;
        ensure!(
            fwd.trim() == "1" && rules.contains(other_rule),
            "after `down {first}`, {other} still masquerades, but ip_forward is {} and \
             its rule is {}:\n{rules}",
            fwd.trim(),
            if rules.contains(other_rule) {
                "there"
            } else {
                "gone"
            }
        );
        ns.umlbr_ok(&["down", other])?;
        let fwd = ns.sh("cat /proc/sys/net/ipv4/ip_forward")?;
        let rules = ns.sh("nft list ruleset")?;
        ensure!(
            fwd.trim() == "0" && !rules.contains("umlbr_"),
            "after both are down: ip_forward {} and\n{rules}",
            fwd.trim()
        );
    }
    Ok(())
}

/// Frames in `frames` that carry `marker`.
fn carrying(frames: &[Vec<u8>], marker: &[u8]) -> usize {
    frames
        .iter()
        .filter(|f| f.windows(marker.len()).any(|w| w == marker))
        .count()
}

/// Two isolated guests (tap0, the attacker, and tap1, its target), a
/// guest that is not isolated (tap2), the host port and, with `uplink`,
/// an uplink (up0, a tap standing in for the host's NIC; it makes umlbr
/// flood in TC rather than XDP). The attacker's unicast to the other
/// isolated guest, its broadcasts and its unknown unicast never reach
/// that guest; they reach the host, the uplink and the open guest, and
/// that guest reaches the isolated ones.
fn isolated_guests_cannot_reach_each_other(kind: Kind, uplink: bool) -> Result<()> {
    let ns = Netns::new("atk-iso")?;
    let _in = InNetns::enter(&ns)?;
    let mut taps: Vec<File> = ["tap0", "tap1", "tap2"]
        .iter()
        .map(|t| open_tap(t))
        .collect::<Result<_>>()?;
    let mut up0 = if uplink { Some(open_tap("up0")?) } else { None };
    ns.sh(&format!(
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 && \
         ip link set up0 address {UPLINK_MAC} 2>/dev/null; true"
    ))?;
    match kind {
        Kind::Umlbr => {
            if uplink {
                ns.umlbr_ok(&["up", "br0", "--uplink", "up0"])?;
            } else {
                ns.umlbr_ok(&["up", "br0"])?;
            }
            ns.umlbr_ok(&["attach", "tap0", "--bridge", "br0", "--isolated"])?;
            ns.umlbr_ok(&["attach", "tap1", "--bridge", "br0", "--isolated"])?;
            ns.umlbr_ok(&["attach", "tap2", "--bridge", "br0"])?;
        }
        Kind::Kernel => {
            ns.sh(
                "ip link add br0 type bridge stp_state 0 forward_delay 0 && \
                 ip link set br0 up && for t in tap0 tap1 tap2; do \
                 ip link set $t master br0; done && \
                 ip link set dev tap0 type bridge_slave isolated on && \
                 ip link set dev tap1 type bridge_slave isolated on",
            )?;
            if uplink {
                ns.sh("ip link set up0 master br0")?;
            }
        }
    }
    ns.sh("for t in tap0 tap1 tap2 up0; do ip link set $t up 2>/dev/null; done; true")?;
    let host = Sniffer::new(umlbr_tests::netns::ifindex("br0")?)?;
    let (a, b, c) = (
        mac("02:00:00:00:00:0a"),
        mac("02:00:00:00:00:0b"),
        mac("02:00:00:00:00:0c"),
    );
    // The other guests announce themselves, so that the switch knows them.
    announce(&mut taps, &[(1, b), (2, c)])?;
    std::thread::sleep(Duration::from_millis(100));
    for t in taps.iter_mut().chain(up0.iter_mut()) {
        drain(t, Duration::from_millis(100));
    }
    let _ = host.incoming();
    ensure!(
        kind == Kind::Kernel || fdb_has(&ns, kind, "02:00:00:00:00:0b")?,
        "{kind:?}: the target was not learned"
    );

    let udp = |dst: Mac, src: Mac, to: Ipv4Addr, marker: &[u8]| {
        Frame::new(dst, src)
            .udp(Ipv4Addr::new(10, 0, 0, 10), 4000, to, 5000, marker)
            .pad_min()
            .build()
    };
    let target = Ipv4Addr::new(10, 0, 0, 1);
    let frames = [
        (0, udp(b, a, target, b"isolated unicast")),
        (
            0,
            udp(BROADCAST, a, Ipv4Addr::BROADCAST, b"isolated broadcast"),
        ),
        (
            0,
            udp(mac("02:00:00:00:00:ee"), a, target, b"isolated unknown"),
        ),
        (0, udp(c, a, target, b"isolated to open")),
        (2, udp(b, c, target, b"open to isolated")),
    ];
    for (from, f) in &frames {
        for _ in 0..10 {
            taps[*from].write_all(f)?;
        }
    }
    let at_target = drain(&mut taps[1], Duration::from_millis(400));
    let at_open = drain(&mut taps[2], Duration::from_millis(100));
    let at_lan = match up0.as_mut() {
        Some(t) => drain(t, Duration::from_millis(100)),
        None => Vec::new(),
    };
    let at_host = host.incoming();
    let n = |frames: &[Vec<u8>], m: &[u8]| carrying(frames, m);
    let leaked = ["isolated unicast", "isolated broadcast", "isolated unknown"]
        .map(|m| n(&at_target, m.as_bytes()));
    ensure!(
        leaked == [0, 0, 0],
        "{kind:?}: the isolated target got {} of 10 unicast, {} of 10 broadcast and {} of 10 \
         unknown unicast frames from the other isolated guest",
        leaked[0],
        leaked[1],
        leaked[2]
    );
    let open = ["isolated broadcast", "isolated unknown", "isolated to open"]
        .map(|m| n(&at_open, m.as_bytes()));
    ensure!(
        open == [10, 10, 10] && n(&at_target, b"open to isolated") == 10,
        "{kind:?}: the open guest got {open:?} of 10 (broadcast, unknown unicast, unicast) \
         from the isolated one, which got {} of 10 from it",
        n(&at_target, b"open to isolated")
    );
    ensure!(
        n(&at_host, b"isolated broadcast") == 10,
        "{kind:?}: the host got {} of 10 broadcasts from an isolated guest",
        n(&at_host, b"isolated broadcast")
    );
    if uplink {
        let lan = ["isolated broadcast", "isolated unknown"].map(|m| n(&at_lan, m.as_bytes()));
        ensure!(
            lan == [10, 10],
            "{kind:?}: the uplink got {lan:?} of 10 (broadcast, unknown unicast) from an \
             isolated guest"
        );
    }
    if kind == Kind::Umlbr {
        let p = port_json(&ns, "tap0")?;
        // Without an uplink XDP switches all of it (its floods through
        // the devmap of ports that are not isolated); with one, TC floods.
        let tc = p["stats"]["tc"].as_u64();
        ensure!(
            p["stats"]["isolated"].as_u64() == Some(10)
                && p["stats"]["dropped"].as_u64() == Some(10)
                && (if uplink {
                    tc >= Some(20)
                } else {
                    tc == Some(0)
                }),
            "tap0's counters: {}",
            p["stats"]
        );
        let shown: Value = serde_json::from_str(&ns.umlbr_ok(&["show", "br0", "--json"])?)?;
        let flags: Vec<(String, bool)> = shown["ports"]
            .as_array()
            .context("show --json has no ports")?
            .iter()
            .map(|p| {
                let name = p["name"].as_str().unwrap_or("").to_string();
                (name, p["isolated"].as_bool() == Some(true))
            })
            .filter(|(name, _)| name.starts_with("tap"))
            .collect();
        let want = [("tap0", true), ("tap1", true), ("tap2", false)]
            .map(|(t, i)| (t.to_string(), i))
            .to_vec();
        ensure!(flags == want, "show --json: isolated {flags:?}");
    }
    Ok(())
}

#[test]
fn isolated_guests_cannot_reach_each_other_umlbr() -> Result<()> {
    isolated_guests_cannot_reach_each_other(Kind::Umlbr, false)
}

#[test]
fn isolated_guests_cannot_reach_each_other_umlbr_uplink() -> Result<()> {
    isolated_guests_cannot_reach_each_other(Kind::Umlbr, true)
}

#[test]
fn isolated_guests_cannot_reach_each_other_kernel() -> Result<()> {
    isolated_guests_cannot_reach_each_other(Kind::Kernel, true)
}

// ---------------------------------------------------------------------------
// Commands: concurrent changes to one bridge, and ports whose interface
// vanished (issue 15, "no stale or half-made state").

/// The bridge's ports as `show --json` lists them: (name, kind,
/// max_learned), the host's switch port left out.
fn listed_ports(ns: &Netns, bridge: &str) -> Result<Vec<(String, String, u64)>> {
    let out = ns.umlbr_ok(&["show", bridge, "--json"])?;
    let v: Value = serde_json::from_str(&out).context("show --json")?;
    let mut ports: Vec<(String, String, u64)> = v["ports"]
        .as_array()
        .context("show --json: no ports")?
        .iter()
        .filter(|p| p["kind"] != "host")
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["kind"].as_str().unwrap_or("").to_string(),
                p["max_learned"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    ports.sort();
    Ok(ports)
}

/// Start `umlbr args` for each of `argvs` at once; every one must succeed.
fn all_at_once(ns: &Netns, argvs: &[Vec<String>]) -> Result<()> {
    let bin = umlbr_tests::umlbr_bin();
    let children = argvs
        .iter()
        .map(|a| {
            ns.cmd(bin.to_str().unwrap())
                .args(a)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .with_context(|| format!("starting umlbr {a:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut failed = Vec::new();
    for (a, c) in argvs.iter().zip(children) {
        let out = c.wait_with_output()?;
        if !out.status.success() {
            failed.push(format!(
                "umlbr {}: {}",
                a.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    ensure!(failed.is_empty(), "failed:\n{}", failed.join("\n"));
    Ok(())
}

/// A broadcast from the first and from the last of `taps` reaches every
/// other one.
fn floods_reach_all(ns: &Netns, taps: &[&String]) -> Result<()> {
    let _in = InNetns::enter(ns)?;
    let mut files: Vec<File> = taps.iter().map(|t| open_tap(t)).collect::<Result<_>>()?;
    for f in files.iter_mut() {
        drain(f, Duration::from_millis(20));
    }
    for from in [0, taps.len() - 1] {
        let src = mac(&format!("02:00:00:00:77:{from:02x}"));
        let f = Frame::new(BROADCAST, src)
            .arp_request(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 9))
            .pad_min()
            .build();
        files[from].write_all(&f)?;
        let mut missed = Vec::new();
        for (i, f) in files.iter_mut().enumerate() {
            if i != from
                && !drain(f, Duration::from_millis(100))
                    .iter()
                    .any(|g| src_mac(g) == src)
            {
                missed.push(taps[i].as_str());
            }
        }
        ensure!(
            missed.is_empty(),
            "a broadcast from {} did not reach {missed:?}",
            taps[from]
        );
    }
    Ok(())
}

/// Sixteen guests attached at the same moment all become ports: no
/// command's read-modify-write of the port list and port count overwrites
/// another's (each port in the flood list, with its stats slot and its
/// learning budget), and a broadcast from one reaches all the others.
/// Then half of them detached while the other half is attached again:
/// the list holds exactly the right ones, which switch frames. Three
/// rounds.
#[test]
fn concurrent_attaches_lose_no_port() -> Result<()> {
    const N: usize = 16;
    let ns = Netns::without_ipv6("atk-race")?;
    ns.umlbr_ok(&["up", "br0"])?;
    let taps: Vec<String> = (0..N).map(|i| format!("tap{i}")).collect();
    for t in &taps {
        ns.umlbr_ok(&["tap", "add", t])?;
    }
    let attach =
        |t: &String| -> Vec<String> { ["attach", t, "--bridge", "br0"].map(String::from).to_vec() };
    let expect = |names: &[&String]| -> Vec<(String, String, u64)> {
        let mut v: Vec<_> = names
            .iter()
            .map(|n| (n.to_string(), "tap".to_string(), 256))
            .collect();
        v.sort();
        v
    };
    // The race is a matter of timing: three rounds.
    for round in 0..3 {
        all_at_once(&ns, &taps.iter().map(attach).collect::<Vec<_>>())?;
        let got = listed_ports(&ns, "br0")?;
        let want = expect(&taps.iter().collect::<Vec<_>>());
        ensure!(
            got == want,
            "round {round}: after {N} concurrent attaches, br0 lists {} ports:\n\
             {got:?}\nwant {want:?}",
            got.len()
        );
        floods_reach_all(&ns, &taps.iter().collect::<Vec<_>>())?;
        // Detach the even ones while the odd ones go and come back.
        let (even, odd): (Vec<&String>, Vec<&String>) = taps
            .iter()
            .partition(|t| t[3..].parse::<usize>().unwrap() % 2 == 0);
        for t in &odd {
            ns.umlbr_ok(&["detach", t])?;
        }
        let mut argvs: Vec<Vec<String>> = even
            .iter()
            .map(|t| ["detach", t.as_str()].map(String::from).to_vec())
            .collect();
        argvs.extend(odd.iter().map(|t| attach(t)));
        all_at_once(&ns, &argvs)?;
        let got = listed_ports(&ns, "br0")?;
        let want = expect(&odd);
        ensure!(
            got == want,
            "round {round}: after concurrent detaches and attaches, br0 lists\n\
             {got:?}\nwant {want:?}"
        );
        floods_reach_all(&ns, &odd)?;
        for t in &odd {
            ns.umlbr_ok(&["detach", t])?;
        }
    }
    Ok(())
}

/// A guest restarted 300 times, each time on a fresh tap that is deleted
/// under its port (`ip link del`, as a non-persistent tap goes with its
/// guest): every attach succeeds although more ports than MAX_PORTS (256)
/// have come and gone, and `show` lists only the live port.
#[test]
fn vanished_ports_are_cleaned_up() -> Result<()> {
    let ns = Netns::without_ipv6("atk-gone")?;
    ns.umlbr_ok(&["up", "br0"])?;
    ns.umlbr_ok(&["tap", "add", "keep"])?;
    ns.umlbr_ok(&["attach", "keep"])?;
    for i in 0..300 {
        let t = format!("g{i}");
        ns.umlbr_ok(&["tap", "add", &t])?;
        ns.umlbr_ok(&["attach", &t])
            .with_context(|| format!("attach number {i}"))?;
        let got = listed_ports(&ns, "br0")?;
        let names: Vec<&str> = got.iter().map(|p| p.0.as_str()).collect();
        ensure!(
            names == [t.as_str(), "keep"],
            "after attach number {i}, br0 lists {names:?}"
        );
        ns.sh(&format!("ip link del {t}"))?;
    }
    // The last vanished port goes with the next change, e.g. a detach.
    ns.umlbr_ok(&["detach", "keep"])?;
    let got = listed_ports(&ns, "br0")?;
    ensure!(got.is_empty(), "after detaching keep, br0 lists {got:?}");
    let fdb = ns.umlbr_ok(&["fdb", "show", "--json"])?;
    let rows: Value = serde_json::from_str(&fdb)?;
    let foreign: Vec<&Value> = rows
        .as_array()
        .context("fdb show --json")?
        .iter()
        .filter(|r| r["port"] != "br0")
        .collect();
    ensure!(foreign.is_empty(), "FDB entries of gone ports: {foreign:?}");
    Ok(())
}

/// A guest's broadcast storm: tap0 writes 200 000 broadcasts as fast as
/// it can while tap1 sends 300 unicast frames to tap2 (learned). tap2
/// gets every one of tap1's frames, and of the storm at most the default
/// flood limit (1000 a second) over the storm's length plus the burst
/// (200); tap0's `storm` counter counts the rest. With `uplink` (up0, a
/// tap standing in for the host's NIC) umlbr floods in TC rather than
/// XDP. The kernel bridge has no per-port broadcast limit (the recipe
/// would need tc police on each tap): no oracle.
fn broadcast_storm_is_limited(uplink: bool) -> Result<()> {
    const STORM: u64 = 200_000;
    const UNICAST: usize = 300;
    let ns = Netns::new("atk-storm")?;
    let _in = InNetns::enter(&ns)?;
    let mut taps: Vec<File> = ["tap0", "tap1", "tap2"]
        .iter()
        .map(|t| open_tap(t))
        .collect::<Result<_>>()?;
    // The LAN is not read: its queue overflows, as a slow wire would.
    let _up0 = if uplink { Some(open_tap("up0")?) } else { None };
    ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")?;
    if uplink {
        ns.sh(&format!(
            "ip link set up0 address {UPLINK_MAC} && ip link set up0 up"
        ))?;
        ns.umlbr_ok(&["up", "br0", "--uplink", "up0"])?;
    } else {
        ns.umlbr_ok(&["up", "br0"])?;
    }
    for t in ["tap0", "tap1", "tap2"] {
        ns.umlbr_ok(&["attach", t, "--bridge", "br0"])?;
    }
    ns.sh("for t in tap0 tap1 tap2; do ip link set $t up; done")?;
    let (a, b, c) = (
        mac("02:00:00:00:00:0a"),
        mac("02:00:00:00:00:0b"),
        mac("02:00:00:00:00:0c"),
    );
    announce(&mut taps, &[(1, b), (2, c)])?;
    std::thread::sleep(Duration::from_millis(100));
    for t in taps.iter_mut() {
        drain(t, Duration::from_millis(100));
    }
    ensure!(
        fdb_has(&ns, Kind::Umlbr, "02:00:00:00:00:0c")?,
        "tap2 was not learned"
    );

    let udp = |dst: Mac, src: Mac, marker: &[u8]| {
        Frame::new(dst, src)
            .udp(
                Ipv4Addr::new(10, 0, 0, 10),
                4000,
                Ipv4Addr::BROADCAST,
                5000,
                marker,
            )
            .pad_min()
            .build()
    };
    let storm = udp(BROADCAST, a, b"storm broadcast");
    let unicast = udp(c, b, b"unicast to c");
    let mut attacker = taps.remove(0);
    let mut sender = taps.remove(0);
    let mut victim = taps.remove(0);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // tap2, the victim guest, reads all the time (its queue holds 1000).
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut storm, mut unicast) = (0u64, 0usize);
            let mut buf = [0u8; 2048];
            let mut quiet_since = None;
            loop {
                match victim.read(&mut buf) {
                    Ok(n) => {
                        quiet_since = None;
                        let f = &buf[..n];
                        storm += carrying(&[f.to_vec()], b"storm broadcast") as u64;
                        unicast += carrying(&[f.to_vec()], b"unicast to c");
                    }
                    Err(_) => {
                        if done.load(std::sync::atomic::Ordering::Relaxed) {
                            let q = *quiet_since.get_or_insert_with(Instant::now);
                            if q.elapsed() > Duration::from_millis(300) {
                                // The tap lives on with its file.
                                return (storm, unicast, victim);
                            }
                        }
                        std::thread::yield_now();
                    }
                }
            }
        })
    };
    let start = Instant::now();
    let storm_thread = std::thread::spawn(move || -> Result<(Duration, File)> {
        let start = Instant::now();
        for _ in 0..STORM {
            attacker.write_all(&storm)?;
        }
        Ok((start.elapsed(), attacker))
    });
    // tap1's frames, spread over the storm.
    for _ in 0..UNICAST {
        sender.write_all(&unicast)?;
        std::thread::sleep(Duration::from_micros(500));
    }
    let (storm_took, _attacker) = storm_thread.join().expect("storm thread")?;
    let elapsed = start.elapsed().max(storm_took);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (storm_at_c, unicast_at_c, _victim) = reader.join().expect("reader thread");

    // The limit over the storm's length, the burst, and a little slack
    // for CPUs racing on the bucket and the coarse clock's ticks.
    let allowed = (1000.0 * elapsed.as_secs_f64()) as u64 + 200 + 50;
    let p = port_json(&ns, "tap0")?;
    let s = &p["stats"];
    eprintln!(
        "storm of {STORM} in {:.2} s: tap2 got {unicast_at_c}/{UNICAST} unicast, \
         {storm_at_c} broadcasts (allowed {allowed}); tap0 flooded {} storm {}",
        elapsed.as_secs_f64(),
        s["flooded"],
        s["storm"]
    );
    let (flooded, storm_dropped, dropped) = (
        s["flooded"].as_u64().unwrap_or(0),
        s["storm"].as_u64().unwrap_or(0),
        s["dropped"].as_u64().unwrap_or(0),
    );
    ensure!(
        unicast_at_c == UNICAST && storm_at_c <= allowed,
        "during a {STORM}-broadcast storm from tap0 ({:.2} s), tap2 got {unicast_at_c} of \
         {UNICAST} unicast frames from tap1 and {storm_at_c} broadcasts (at most {allowed} \
         allowed); tap0: {s}",
        elapsed.as_secs_f64()
    );
    ensure!(
        flooded + storm_dropped == STORM
            && flooded <= allowed
            && dropped >= storm_dropped
            && storm_dropped >= STORM - allowed,
        "tap0's counters after {STORM} broadcasts (at most {allowed} flooded): {s}"
    );
    let tc = s["tc"].as_u64().unwrap_or(0);
    ensure!(
        if uplink { tc == STORM } else { tc == 0 },
        "the storm went through {tc} TC runs (uplink: {uplink})"
    );
    let shown: Value = serde_json::from_str(&ns.umlbr_ok(&["show", "br0", "--json"])?)?;
    let limits: Vec<(String, u64)> = shown["ports"]
        .as_array()
        .context("show --json has no ports")?
        .iter()
        .map(|p| {
            let name = p["name"].as_str().unwrap_or("").to_string();
            (name, p["flood_limit"].as_u64().unwrap_or(u64::MAX))
        })
        .filter(|(name, _)| name.starts_with("tap") || name == "up0")
        .collect();
    let mut want: Vec<(String, u64)> = ["tap0", "tap1", "tap2"]
        .map(|t| (t.to_string(), 1000))
        .to_vec();
    if uplink {
        want.push(("up0".to_string(), 0));
    }
    ensure!(limits == want, "show --json: flood_limit {limits:?}");
    Ok(())
}

#[test]
fn broadcast_storm_is_limited_xdp() -> Result<()> {
    broadcast_storm_is_limited(false)
}

#[test]
fn broadcast_storm_is_limited_tc() -> Result<()> {
    broadcast_storm_is_limited(true)
}

// Port security (`attach --lock --mac --ip`): the victim guest A on tap0,
// the attacker B on tap1, a peer C on tap2.
const A_MAC: &str = "02:00:00:00:00:a1";
const B_MAC: &str = "02:00:00:00:00:b2";
const C_MAC: &str = "02:00:00:00:00:c3";

/// A bridge br0 (host 10.0.0.1/24 and fd00::1/64) with tap0..tap2, A and
/// B attached with `lock`'s extra arguments for tap0 and tap1 (none: open
/// ports, the attack's baseline); for the kernel bridge, `lock` makes
/// tap0 and tap1 `locked on` with A's and B's MACs static entries.
fn port_security_lab(ns: &Netns, kind: Kind, lock: Option<[&[&str]; 2]>) -> Result<()> {
    // IPv6 on the host's side of the bridge only: the taps stay quiet.
    ns.sh("sysctl -qw net.ipv6.conf.default.disable_ipv6=1 && \
         for t in tap0 tap1 tap2; do sysctl -qw net.ipv6.conf.$t.disable_ipv6=1; done")?;
    match kind {
        Kind::Umlbr => {
            ns.umlbr_ok(&["up", "br0"])?;
            for (i, t) in ["tap0", "tap1", "tap2"].iter().enumerate() {
                let mut args = vec!["attach", t, "--bridge", "br0"];
                if let Some(extra) = lock.filter(|_| i < 2) {
                    args.extend_from_slice(extra[i]);
                }
                ns.umlbr_ok(&args)?;
            }
        }
        Kind::Kernel => {
            ns.sh(
                "ip link add br0 type bridge stp_state 0 forward_delay 0 && \
                 for t in tap0 tap1 tap2; do ip link set $t master br0; done",
            )?;
            if lock.is_some() {
                ns.sh(&format!(
                    "bridge fdb add {A_MAC} dev tap0 master static && \
                     bridge fdb add {B_MAC} dev tap1 master static && \
                     ip link set dev tap0 type bridge_slave learning off locked on && \
                     ip link set dev tap1 type bridge_slave learning off locked on"
                ))?;
            }
        }
    }
    ns.sh("sysctl -qw net.ipv6.conf.br0.disable_ipv6=0 && \
         ip addr add 10.0.0.1/24 dev br0 && ip addr add fd00::1/64 dev br0 nodad && \
         ip link set br0 up && for t in tap0 tap1 tap2; do ip link set $t up; done")?;
    Ok(())
}

/// MAC takeover: B sends with A's MAC, so that the switch sends it the
/// unicast meant for A. With both locked to their own MACs, B's frames are
/// dropped (counted as `locked`), B gets nothing and A still gets its
/// traffic. The kernel bridge's `locked on` with static entries is the
/// oracle.
fn mac_takeover(kind: Kind) -> Result<()> {
    let ns = Netns::new("ps-takeover")?;
    let _in = InNetns::enter(&ns)?;
    let mut taps: Vec<File> = ["tap0", "tap1", "tap2"]
        .iter()
        .map(|t| open_tap(t))
        .collect::<Result<_>>()?;
    port_security_lab(
        &ns,
        kind,
        Some([&["--lock", "--mac", A_MAC], &["--lock", "--mac", B_MAC]]),
    )?;
    let (a, b, c) = (mac(A_MAC), mac(B_MAC), mac(C_MAC));
    announce(&mut taps, &[(0, a), (1, b), (2, c)])?;
    std::thread::sleep(Duration::from_millis(100));
    for t in taps.iter_mut() {
        drain(t, Duration::from_millis(100));
    }
    // B claims A's MAC, ten times, as a guest taking over would.
    let takeover = Frame::new(BROADCAST, a)
        .udp(
            Ipv4Addr::new(10, 0, 0, 11),
            4000,
            Ipv4Addr::BROADCAST,
            9,
            b"takeover",
        )
        .pad_min()
        .build();
    for _ in 0..10 {
        taps[1].write_all(&takeover)?;
    }
    std::thread::sleep(Duration::from_millis(100));
    let for_a = Frame::new(a, c)
        .udp(
            Ipv4Addr::new(10, 0, 0, 12),
            4000,
            Ipv4Addr::new(10, 0, 0, 10),
            5000,
            b"meant for A",
        )
        .pad_min()
        .build();
    for _ in 0..10 {
        taps[2].write_all(&for_a)?;
    }
    let at_b = carrying(
        &drain(&mut taps[1], Duration::from_millis(400)),
        b"meant for A",
    );
    let at_a = carrying(
        &drain(&mut taps[0], Duration::from_millis(100)),
        b"meant for A",
    );
    ensure!(
        at_b == 0 && at_a == 10,
        "{kind:?}: after B sent with A's MAC, B got {at_b} and A {at_a} of 10 unicast frames for A"
    );
    if kind == Kind::Umlbr {
        let p = port_json(&ns, "tap1")?;
        ensure!(
            p["stats"]["locked"].as_u64() == Some(10) && p["stats"]["dropped"].as_u64() == Some(10),
            "tap1's counters: {}",
            p["stats"]
        );
    }
    Ok(())
}

#[test]
fn mac_takeover_umlbr() -> Result<()> {
    mac_takeover(Kind::Umlbr)
}

#[test]
fn mac_takeover_kernel() -> Result<()> {
    mac_takeover(Kind::Kernel)
}

/// The MAC the host's neighbour table has for `addr` on br0, if any.
fn neighbour(ns: &Netns, addr: &str) -> Result<Option<String>> {
    let out = ns.sh(&format!("ip neigh show {addr} dev br0"))?;
    Ok(out
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_string))
}

/// ARP poisoning: B, with its own MAC, sends ARP claiming A's address to
/// the host, whose neighbour table then sends A's traffic to B. With B
/// locked to its MAC and address (`--ip`), the ARP is dropped (counted as
/// `ip_locked`) and the host keeps A's MAC; A, locked to its own, still
/// makes itself known. No oracle: the kernel bridge checks no addresses
/// (the recipe would need ebtables or nftables bridge rules).
/// With `tc_only`, B's port is switched by the TC program alone (as a
/// guest with vnet headers gets), so the check is proved there too.
fn arp_poisoning(tc_only: bool) -> Result<()> {
    let ns = Netns::new("ps-arp")?;
    let _in = InNetns::enter(&ns)?;
    let mut taps: Vec<File> = ["tap0", "tap1", "tap2"]
        .iter()
        .map(|t| open_tap(t))
        .collect::<Result<_>>()?;
    let b_args: &[&str] = if tc_only {
        &["--lock", "--mac", B_MAC, "--ip", "10.0.0.11", "--tc-only"]
    } else {
        &["--lock", "--mac", B_MAC, "--ip", "10.0.0.11"]
    };
    port_security_lab(
        &ns,
        Kind::Umlbr,
        Some([&["--lock", "--mac", A_MAC, "--ip", "10.0.0.10"], b_args]),
    )?;
    let (a, b) = (mac(A_MAC), mac(B_MAC));
    let host = Ipv4Addr::new(10, 0, 0, 1);
    let ask = |src: Mac, spa: Ipv4Addr| {
        Frame::new(BROADCAST, src)
            .arp_request(spa, host)
            .pad_min()
            .build()
    };
    taps[0].write_all(&ask(a, Ipv4Addr::new(10, 0, 0, 10)))?;
    std::thread::sleep(Duration::from_millis(200));
    let before = neighbour(&ns, "10.0.0.10")?;
    ensure!(
        before.as_deref() == Some(A_MAC),
        "the host did not learn A's MAC from A's ARP: {before:?}"
    );
    // Past the neighbour table's locktime (1 s), then B's claims.
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..5 {
        taps[1].write_all(&ask(b, Ipv4Addr::new(10, 0, 0, 10)))?;
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = neighbour(&ns, "10.0.0.10")?;
    ensure!(
        after.as_deref() == Some(A_MAC),
        "after B's ARP claiming 10.0.0.10, the host sends A's traffic to {after:?} (A is {A_MAC})"
    );
    let p = port_json(&ns, "tap1")?;
    ensure!(
        p["stats"]["ip_locked"].as_u64() == Some(5)
            && (!tc_only || p["stats"]["tc"].as_u64() == Some(5)),
        "tap1's counters: {}",
        p["stats"]
    );
    Ok(())
}

#[test]
fn arp_poisoning_umlbr() -> Result<()> {
    arp_poisoning(false)
}

#[test]
fn arp_poisoning_umlbr_tc() -> Result<()> {
    arp_poisoning(true)
}

/// The IPv6 form: B sends an unsolicited neighbour advertisement (override)
/// for A's address with its own MAC. With B locked to its MAC and address,
/// the NA is dropped and the host keeps A's MAC; A, locked to its own,
/// still resolves the host. No oracle, as for ARP.
#[test]
fn ndp_poisoning_umlbr() -> Result<()> {
    use std::net::Ipv6Addr;
    use umlbr_tests::wire::{
        ethertype, icmp6_type, icmpv6_packet, ipv6_multicast_mac, ndp_message,
    };
    let ns = Netns::new("ps-ndp")?;
    let _in = InNetns::enter(&ns)?;
    let mut taps: Vec<File> = ["tap0", "tap1", "tap2"]
        .iter()
        .map(|t| open_tap(t))
        .collect::<Result<_>>()?;
    port_security_lab(
        &ns,
        Kind::Umlbr,
        Some([
            &["--lock", "--mac", A_MAC, "--ip", "fd00::10"],
            &["--lock", "--mac", B_MAC, "--ip", "fd00::11"],
        ]),
    )?;
    let (a, b) = (mac(A_MAC), mac(B_MAC));
    let host: Ipv6Addr = "fd00::1".parse()?;
    let a_ip: Ipv6Addr = "fd00::10".parse()?;
    let b_ip: Ipv6Addr = "fd00::11".parse()?;
    let snm: Ipv6Addr = "ff02::1:ff00:1".parse()?;
    let ns_msg = ndp_message(icmp6_type::NEIGHBOR_SOLICIT, 0, host, Some(a));
    let solicit = Frame::new(ipv6_multicast_mac(snm), a)
        .ethertype(ethertype::IPV6)
        .payload(&icmpv6_packet(a_ip, snm, &ns_msg))
        .build();
    taps[0].write_all(&solicit)?;
    std::thread::sleep(Duration::from_millis(200));
    let before = neighbour(&ns, "fd00::10")?;
    ensure!(
        before.as_deref() == Some(A_MAC),
        "the host did not learn A's MAC from A's NS: {before:?}"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let all_nodes: Ipv6Addr = "ff02::1".parse()?;
    let na = ndp_message(icmp6_type::NEIGHBOR_ADVERT, 0x20, a_ip, Some(b));
    let advert = Frame::new(ipv6_multicast_mac(all_nodes), b)
        .ethertype(ethertype::IPV6)
        .payload(&icmpv6_packet(b_ip, all_nodes, &na))
        .build();
    for _ in 0..5 {
        taps[1].write_all(&advert)?;
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = neighbour(&ns, "fd00::10")?;
    ensure!(
        after.as_deref() == Some(A_MAC),
        "after B's NA for fd00::10, the host sends A's traffic to {after:?} (A is {A_MAC})"
    );
    let p = port_json(&ns, "tap1")?;
    ensure!(
        p["stats"]["ip_locked"].as_u64() == Some(5),
        "tap1's counters: {}",
        p["stats"]
    );
    Ok(())
}

/// Most NAT mappings umlbr's table holds (umlbr_common::NAT_SIZE), and by
/// chance the kernel's default nf_conntrack_max.
const NAT_TABLE: u32 = 262_144;

/// Masqueraded UDP from guest `g` (tap g, MAC 02:00:00:00:00:1g, address
/// 192.168.2.(10+g)) to the LAN peer 10.99.0.2.
fn nat_guest_udp(gw_mac: Mac, g: u8, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    Frame::new(gw_mac, [0x02, 0, 0, 0, 0, 0x10 + g])
        .udp(
            Ipv4Addr::new(192, 168, 2, 10 + g),
            sport,
            Ipv4Addr::new(10, 99, 0, 2),
            dport,
            data,
        )
        .build()
}

/// The outside port of the first frame on `frames` that left the uplink
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

/// Guest `g`'s UDP flow from `sport` to 10.99.0.2:53 leaves translated,
/// and the peer's answer to it comes back to the guest translated: its
/// outside port.
fn udp_round_trip(
    up0: &mut File,
    taps: &mut [File],
    gw_mac: Mac,
    g: u8,
    sport: u16,
    what: &str,
) -> Result<u16> {
    let marker = format!("{what} from guest {g}");
    taps[g as usize].write_all(&nat_guest_udp(gw_mac, g, sport, 53, marker.as_bytes()))?;
    let seen = drain(up0, Duration::from_millis(300));
    let port = left_translated(&seen, marker.as_bytes())
        .with_context(|| format!("{what}: guest {g}'s datagram did not leave translated"))?;
    answer_reaches(up0, taps, g, sport, port, what)?;
    Ok(port)
}

/// The peer answers outside port `port`: the answer must reach guest `g`
/// at `sport`.
fn answer_reaches(
    up0: &mut File,
    taps: &mut [File],
    g: u8,
    sport: u16,
    port: u16,
    what: &str,
) -> Result<()> {
    let marker = format!("{what}: answer to guest {g}");
    up0.write_all(
        &Frame::new(mac(UPLINK_MAC), mac(LAN_PEER_MAC))
            .udp(
                Ipv4Addr::new(10, 99, 0, 2),
                53,
                Ipv4Addr::new(10, 99, 0, 1),
                port,
                marker.as_bytes(),
            )
            .build(),
    )?;
    let got = drain(&mut taps[g as usize], Duration::from_millis(300))
        .iter()
        .filter(|f| {
            f.len() >= 42
                && f[30..34] == [192, 168, 2, 10 + g]
                && f[36..38] == sport.to_be_bytes()
                && f.windows(marker.len()).any(|w| w == marker.as_bytes())
        })
        .count();
    ensure!(
        got == 1,
        "{what}: the peer's answer to outside port {port} did not reach guest {g} \
         (its mapping is gone)"
    );
    Ok(())
}

/// A guest cannot take the other guests' NAT mappings away, or fill the
/// table: guest 0 has a masqueraded UDP flow that the peer answers; guest 1
/// opens twice as many new flows as the table holds, two packets each
/// (from every CPU in turn, as the MAC flood does); guest 0's flow must still
/// translate both ways, and guest 2 must still open a new one. umlbr stops
/// guest 1 at its quota (`--nat-max-per-guest`, default) and counts the
/// rest as `quota`. The oracle: conntrack, whose full table early-drops
/// only entries not yet assured (guest 0's is assured: answered, and
/// still active after 2 s).
fn nat_flood_keeps_the_others(kind: Kind) -> Result<()> {
    let ns = Netns::new("nq-flood")?;
    let _in = InNetns::enter(&ns)?;
    let mut taps: Vec<File> = ["tap0", "tap1", "tap2"]
        .iter()
        .map(|t| open_tap(t))
        .collect::<Result<_>>()?;
    let mut up0 = open_tap("up0")?;
    masquerade_lab(&ns, kind)?;
    match kind {
        Kind::Umlbr => {
            for t in ["tap1", "tap2"] {
                ns.umlbr_ok(&["attach", t, "--bridge", "br0"])?;
            }
        }
        Kind::Kernel => {
            // The guests never answer ARP: the host knows them statically
            // (umlbr's datapath takes a reply's MAC from the mapping).
            ns.sh("for t in tap1 tap2; do ip link set $t master br0; done && \
                 for g in 0 1 2; do ip neigh replace 192.168.2.1$g \
                 lladdr 02:00:00:00:00:1$g dev br0 nud permanent || exit 1; done")?;
        }
    }
    ns.sh("for t in tap1 tap2; do ip link set $t up; done")?;
    let gw_mac: Mac = mac(ns.sh("cat /sys/class/net/br0/address")?.trim());
    announce(
        &mut taps,
        &[
            (0, [2, 0, 0, 0, 0, 0x10]),
            (1, [2, 0, 0, 0, 0, 0x11]),
            (2, [2, 0, 0, 0, 0, 0x12]),
        ],
    )?;
    std::thread::sleep(Duration::from_millis(100));
    drain(&mut up0, Duration::from_millis(200));
    for t in taps.iter_mut() {
        drain(t, Duration::from_millis(50));
    }
    // Guest 0's flow: answered, then still active after 2 s (what makes a
    // UDP conntrack entry assured).
    let port = udp_round_trip(&mut up0, &mut taps, gw_mac, 0, 40000, "before")?;
    std::thread::sleep(Duration::from_millis(2100));
    let again = udp_round_trip(&mut up0, &mut taps, gw_mac, 0, 40000, "2 s on")?;
    ensure!(
        again == port,
        "{kind:?}: guest 0's flow moved from {port} to {again}"
    );

    // The flood: guest 1's new flows, each to its own (source port,
    // destination port) pair, at most 2000 per destination port so that
    // the outside ports (61000-65535) suffice.
    let n = 2 * NAT_TABLE;
    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut sent = 0u32;
    for cpu in 0..cpus {
        pin_to_cpu(cpu)?;
        let share = n / cpus as u32 * (cpu as u32 + 1);
        while sent < share && started.elapsed() < Duration::from_secs(60) {
            let sport = 1024 + (sent % 2000) as u16;
            let dport = 1000 + (sent / 2000) as u16;
            let frame = nat_guest_udp(gw_mac, 1, sport, dport, b"flood");
            // Twice: the second packet looks the flow's mapping up, which
            // an LRU table counts as recent use, as guest 0's.
            if taps[1].write(&frame).is_ok() && taps[1].write(&frame).is_ok() {
                sent += 1;
            }
            if sent.is_multiple_of(4096) {
                // Keep the uplink's queue from holding up the writer.
                while up0.read(&mut [0u8; 2048]).is_ok() {}
            }
        }
    }
    unpin()?;
    println!(
        "{kind:?}: {sent} new flows from guest 1 in {:?}",
        started.elapsed()
    );
    ensure!(
        sent >= NAT_TABLE,
        "{kind:?}: only {sent} flood frames written in 60 s"
    );
    drain(&mut up0, Duration::from_millis(300));
    for t in taps.iter_mut() {
        drain(t, Duration::from_millis(50));
    }

    // Guest 0's flow still translates both ways, on its own port: the
    // answer first (an evicted inbound entry would lose it).
    answer_reaches(
        &mut up0,
        &mut taps,
        0,
        40000,
        port,
        &format!("{kind:?}: after the flood"),
    )?;
    let after = udp_round_trip(&mut up0, &mut taps, gw_mac, 0, 40000, "after the flood")?;
    ensure!(
        after == port,
        "{kind:?}: guest 0's flow left on port {after} after the flood, not {port}"
    );
    // Guest 2 can still open a new flow.
    udp_round_trip(&mut up0, &mut taps, gw_mac, 2, 41000, "a newcomer")?;

    if kind == Kind::Umlbr {
        let v: Value = serde_json::from_str(&ns.umlbr_ok(&["stats", "br0", "--json"])?)?;
        let nat = &v["nat"];
        let max = nat["max_per_guest"]
            .as_u64()
            .with_context(|| format!("stats --json: no nat.max_per_guest in {nat}"))?;
        ensure!(max > 0 && max < NAT_TABLE as u64 / 4, "default quota {max}");
        let c = &nat["counters"];
        // Guest 0: one flow; guest 1: its quota; guest 2: one flow.
        ensure!(
            c["allocs"].as_u64() == Some(max + 2)
                && c["quota"].as_u64() == Some(2 * (sent as u64 - max)),
            "{sent} flows from guest 1 with a quota of {max}: NAT counters {c}"
        );
        ensure!(
            nat["mappings"].as_u64() == Some(max + 2),
            "mappings after the flood: {nat}"
        );
    }
    Ok(())
}

#[test]
fn nat_flood_keeps_the_others_umlbr() -> Result<()> {
    nat_flood_keeps_the_others(Kind::Umlbr)
}

#[test]
fn nat_flood_keeps_the_others_kernel() -> Result<()> {
    nat_flood_keeps_the_others(Kind::Kernel)
}

/// The quota holds on the kernel's path too: a guest's TCP segments
/// without SYN get no mapping from umlbr (a flow begun elsewhere stays on
/// the kernel's path), and conntrack picks them up mid-stream and
/// masquerades them. With `--nat-max-per-guest 50`, 200 such flows from
/// one guest address leave at most 50 times translated; the nftables
/// forward chain drops the rest (`ct count over 50` per source address).
#[test]
fn kernel_path_keeps_the_quota() -> Result<()> {
    use umlbr_tests::wire::{TcpHeader, tcp_flags::*};
    let ns = Netns::new("nq-slow")?;
    let _in = InNetns::enter(&ns)?;
    let mut tap0 = open_tap("tap0")?;
    let mut up0 = open_tap("up0")?;
    ns.sh(&format!(
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 && \
         ip link set up0 address {UPLINK_MAC} && ip addr add 10.99.0.1/24 dev up0 && \
         ip link set up0 up && ip link set tap0 up && \
         ip neigh replace 10.99.0.2 lladdr {LAN_PEER_MAC} dev up0 nud permanent && \
         ip route add default via 10.99.0.2"
    ))?;
    ns.umlbr_ok(&[
        "up",
        "br0",
        "--address",
        "192.168.2.1/24",
        "--masquerade",
        "up0",
        "--nat-max-per-guest",
        "50",
    ])?;
    ns.umlbr_ok(&["attach", "tap0", "--bridge", "br0"])?;
    let guest = mac(GUEST);
    announce(std::slice::from_mut(&mut tap0), &[(0, guest)])?;
    let gw_mac: Mac = mac(ns.sh("cat /sys/class/net/br0/address")?.trim());
    drain(&mut up0, Duration::from_millis(200));
    for i in 0..200u16 {
        let f = Frame::new(gw_mac, guest)
            .tcp(
                Ipv4Addr::new(192, 168, 2, 10),
                Ipv4Addr::new(10, 99, 0, 2),
                &TcpHeader::new(20000 + i, 80, ACK).seq(1000).ack(1),
                b"mid-stream",
            )
            .build();
        tap0.write_all(&f)?;
    }
    let left = drain(&mut up0, Duration::from_millis(500))
        .iter()
        .filter(|f| f.len() >= 54 && f[23] == 6 && f[26..30] == [10, 99, 0, 1])
        .count();
    let v: Value = serde_json::from_str(&ns.umlbr_ok(&["stats", "br0", "--json"])?)?;
    ensure!(
        left == 50,
        "{left} of 200 mid-stream flows left translated by the kernel's path (quota 50); \
         NAT counters {}",
        v["nat"]["counters"]
    );
    Ok(())
}

/// The quota is given back when userspace removes expired mappings too:
/// with `--nat-max-per-guest 3` and a UDP timeout of 1 s, a guest's fourth
/// flow is dropped; once its three have expired, `nat show` removes them
/// (and lists none), and the guest's next new flow is mapped without the
/// datapath having swept anything (`expired` stays 0).
#[test]
fn nat_show_gives_the_quota_back() -> Result<()> {
    let ns = Netns::new("nq-gc")?;
    let _in = InNetns::enter(&ns)?;
    let mut taps = vec![open_tap("tap0")?];
    let mut up0 = open_tap("up0")?;
    ns.sh(&format!(
        "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 && \
         ip link set up0 address {UPLINK_MAC} && ip addr add 10.99.0.1/24 dev up0 && \
         ip link set up0 up && ip link set tap0 up && \
         ip neigh replace 10.99.0.2 lladdr {LAN_PEER_MAC} dev up0 nud permanent && \
         ip route add default via 10.99.0.2"
    ))?;
    ns.umlbr_ok(&[
        "up",
        "br0",
        "--address",
        "192.168.2.1/24",
        "--masquerade",
        "up0",
        "--nat-max-per-guest",
        "3",
        "--nat-timeout",
        "udp=1",
    ])?;
    ns.umlbr_ok(&["attach", "tap0", "--bridge", "br0"])?;
    announce(&mut taps, &[(0, [2, 0, 0, 0, 0, 0x10])])?;
    let gw_mac: Mac = mac(ns.sh("cat /sys/class/net/br0/address")?.trim());
    drain(&mut up0, Duration::from_millis(200));
    let send = |taps: &mut Vec<File>, up0: &mut File, sport: u16| -> Result<bool> {
        let marker = format!("flow {sport}");
        taps[0].write_all(&nat_guest_udp(gw_mac, 0, sport, 53, marker.as_bytes()))?;
        Ok(left_translated(&drain(up0, Duration::from_millis(200)), marker.as_bytes()).is_some())
    };
    let mut sent = Vec::new();
    for sport in 45000..45004 {
        sent.push(send(&mut taps, &mut up0, sport)?);
    }
    ensure!(
        sent == [true, true, true, false],
        "quota 3: which of 4 new flows left translated: {sent:?}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    let rows: Value = serde_json::from_str(&ns.umlbr_ok(&["nat", "show", "br0", "--json"])?)?;
    ensure!(
        rows.as_array().is_some_and(|r| r.is_empty()),
        "expired mappings listed: {rows}"
    );
    ensure!(
        send(&mut taps, &mut up0, 45010)?,
        "no new flow after nat show removed the expired ones"
    );
    let v: Value = serde_json::from_str(&ns.umlbr_ok(&["stats", "br0", "--json"])?)?;
    let c = &v["nat"]["counters"];
    ensure!(
        c["allocs"] == 4 && c["quota"] == 1 && c["expired"] == 0 && v["nat"]["mappings"] == 1,
        "NAT after nat show: {}",
        v["nat"]
    );
    Ok(())
}
