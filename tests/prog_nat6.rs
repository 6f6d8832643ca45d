//! Table-driven BPF_PROG_TEST_RUN tests of the IPv6 masquerade (issue 18):
//! guests' TCP, UDP and ICMPv6 echo translated on their way out of the
//! uplink, replies and ICMPv6 errors (packet too big, destination
//! unreachable, time exceeded, with their quotes) translated back, what is
//! left to the kernel (extension headers, bad lengths, expiring hop
//! limits, other sources) untouched, and guest IPv6 dropped when the
//! uplink has no global IPv6 address. Each case runs on XDP and on TC.
//!
//! The bench, in a namespace of its own: taps g1, g2 (guests), hp (the
//! bridge's host port), up0 (the uplink, 2001:db8:1::200/64, default route
//! via 2001:db8:1::1 with a static neighbour); veth br0 (the bridge's host
//! interface, fd00:2::1/64); IPv6 forwarding on. The maps are filled as
//! `umlbr up --masquerade` fills them. Expected frames are built from
//! scratch with `wire::v6` (checksums by RFC 1071 over the whole packet),
//! never with the datapath's incremental arithmetic.
//!
//! Needs root.
use std::net::Ipv6Addr;

use anyhow::{Context, Result, ensure};
use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use umlbr_common::{
    Config, FDB_F_STATIC, FdbEntry, FdbKey, NAT_F_V6, NAT_F_XDP_TX, NAT_ICMP_SECS, NAT_S_RST,
    NAT_S_SYN_OUT, NAT_TCP_CLOSING_SECS, NAT_TCP_ESTABLISHED_SECS, NAT_TCP_TRANSITORY_SECS,
    NAT_UDP_SECS, NAT_UDP_STREAM_SECS, Nat6Config, Nat6In, Nat6Key, Nat6Stats, NatConfig, NatOut,
    NatQuota, NatStats, PORT_KIND_OTHER, PortStats, names,
};
use umlbr_tests::{
    bpf::{
        AGING_NS, Ctx, SEC, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, UP_MAC, XDP_DROP, XDP_PASS,
        XDP_REDIRECT, sum_counters,
    },
    netns::{Netns, ifindex},
    wire::{Frame, Mac, ethertype, fmt_mac, v6},
};

mod umlbr_lib;
use umlbr_lib::monotonic_coarse_ns as now_coarse;

const GW_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x01];
const NH_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x01];
const NAT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x200);
const REMOTE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 5);
const ROUTER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 1);
const G1: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x10);
const G2: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x11);
/// Outside the guest prefix: a guest claiming it is not masqueraded.
const FOREIGN: Ipv6Addr = Ipv6Addr::new(0xfd00, 99, 0, 0, 0, 0, 0, 1);
const PORT_LO: u16 = 62000;
const PORT_HI: u16 = 62999;

const TAP_NAMES: [&str; 4] = ["g1", "g2", "hp", "up0"];

fn gmac(g: usize) -> Mac {
    [0x02, 0, 0, 0, 0x02, 0x10 + g as u8]
}

/// An address as the maps hold it (four words as in the packet).
fn words(a: Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

fn eth(dst: Mac, src: Mac, ip: &[u8]) -> Vec<u8> {
    Frame::new(dst, src)
        .ethertype(ethertype::IPV6)
        .payload(ip)
        .build()
}

/// `ip` with its hop limit set to `hop` (no checksum covers it).
fn with_hop(ip: &[u8], hop: u8) -> Vec<u8> {
    let mut p = ip.to_vec();
    p[7] = hop;
    p
}

/// `ip` rebuilt with new addresses and (TCP/UDP source or destination,
/// or echo identifier) port, every checksum recomputed from scratch.
fn rebuilt(ip: &[u8], src: Ipv6Addr, dst: Ipv6Addr, port_at: usize, port: u16) -> Vec<u8> {
    let next = ip[6];
    let mut l4 = ip[40..].to_vec();
    l4[port_at..port_at + 2].copy_from_slice(&port.to_be_bytes());
    with_hop(&v6::packet(src, dst, next, ip[7], &l4), ip[7])
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Prog {
    Xdp,
    Tc,
}

struct Bench {
    ctx: Ctx,
    br0: u32,
}

impl Bench {
    fn new() -> Result<Self> {
        let ns = Netns::new("n6-prog")?;
        ns.sh(&format!(
            "sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0 \
             && ip link add br0 type veth peer name br0p && ip link set br0 address {gw} \
             && ip -6 addr add fd00:2::1/64 dev br0 nodad && ip link set br0p up && ip link set br0 up",
            gw = fmt_mac(&GW_MAC)
        ))?;
        let setup = format!(
            "ip link set up0 address {up} mtu 9000 && ip link set up0 up \
             && ip -6 addr add 2001:db8:1::200/64 dev up0 nodad \
             && ip -6 neigh replace 2001:db8:1::1 lladdr {nh} dev up0 nud permanent \
             && ip -6 route add default via 2001:db8:1::1 dev up0 \
             && ip -6 route add unreachable 2001:db8:99::/48 \
             && for t in g1 g2 hp; do ip link set $t up || exit 1; done \
             && sysctl -qw net.ipv6.conf.all.forwarding=1",
            up = fmt_mac(&UP_MAC),
            nh = fmt_mac(&NH_MAC),
        );
        let ctx = Ctx::new(ns, &TAP_NAMES, &setup, umlbr_lib::load_object)?;
        let br0 = ifindex("br0")?;
        let mut b = Bench { ctx, br0 };
        b.reset(true)?;
        Ok(b)
    }

    fn ifx(&self, i: usize) -> u32 {
        self.ctx.taps.ifindex[i]
    }

    /// `umlbr up --masquerade up0`'s state with g1, g2 attached and their
    /// MACs learned; `addr`: whether up0 has its IPv6 address in the
    /// datapath's config. Empty tables, zero counters.
    fn reset(&mut self, addr: bool) -> Result<()> {
        self.reset_quota(addr, 0)
    }

    /// `reset`, with a per-port quota of `max_per_guest` mappings.
    fn reset_quota(&mut self, addr: bool, max_per_guest: u32) -> Result<()> {
        let ports: Vec<u32> = self.ctx.taps.ifindex[..3].to_vec();
        let (host, up) = (self.ifx(2), self.ifx(3));
        self.ctx.set_ports(&ports, None)?;
        let _ = self.ctx.devmap_remove(names::PORTS, up);
        self.ctx.devmap_insert(names::NAT_TX, up)?;
        self.ctx.set_config(Config {
            aging_ns: AGING_NS,
            nr_ports: ports.len() as u32,
            host_port: host,
            ..Default::default()
        })?;
        for &i in &ports {
            self.ctx.set_port_stats(
                i,
                PortStats {
                    kind: PORT_KIND_OTHER,
                    ..Default::default()
                },
            )?;
        }
        self.ctx.clear::<FdbKey, FdbEntry>(names::FDB)?;
        let now = now_coarse();
        self.ctx.fdb_insert(GW_MAC, host, FDB_F_STATIC, now)?;
        for (g, &port) in ports.iter().enumerate().take(2) {
            self.ctx.fdb_insert(gmac(g), port, 0, now)?;
        }
        self.ctx.set_array(
            names::NAT_CONFIG,
            NatConfig {
                nat_ifindex: up,
                nat_addr: u32::from_ne_bytes([192, 168, 1, 200]),
                host_ifindex: self.br0,
                subnet: u32::from_ne_bytes([192, 168, 2, 0]),
                mask: u32::from_ne_bytes([255, 255, 255, 0]),
                port_lo: PORT_LO,
                port_hi: PORT_HI,
                gw_mac: GW_MAC,
                flags: NAT_F_XDP_TX | NAT_F_V6,
                tcp_established_ns: NAT_TCP_ESTABLISHED_SECS * SEC,
                tcp_transitory_ns: NAT_TCP_TRANSITORY_SECS * SEC,
                tcp_closing_ns: NAT_TCP_CLOSING_SECS * SEC,
                udp_ns: NAT_UDP_SECS * SEC,
                udp_stream_ns: NAT_UDP_STREAM_SECS * SEC,
                icmp_ns: NAT_ICMP_SECS * SEC,
                mtu: 1500,
                max_per_guest,
            },
        )?;
        let mut c6 = Nat6Config {
            nr_prefixes: 1,
            ..Default::default()
        };
        if addr {
            c6.addr = words(NAT6);
        }
        c6.prefix[0] = words("fd00:2::".parse()?);
        c6.mask[0] = [u32::MAX, u32::MAX, 0, 0];
        self.ctx.set_array(names::NAT6_CONFIG, c6)?;
        self.ctx.clear::<Nat6Key, NatOut>(names::NAT6_OUT)?;
        self.ctx.clear::<Nat6Key, Nat6In>(names::NAT6_IN)?;
        self.ctx.clear::<u32, NatQuota>(names::NAT_QUOTA)?;
        let n = self.ctx.nr_cpus;
        let mut st: PerCpuArray<&mut MapData, Nat6Stats> = self.ctx.map(names::NAT6_STATS)?;
        st.set(0, PerCpuValues::try_from(vec![Nat6Stats::default(); n])?, 0)?;
        let mut st: PerCpuArray<&mut MapData, NatStats> = self.ctx.map(names::NAT_STATS)?;
        st.set(0, PerCpuValues::try_from(vec![NatStats::default(); n])?, 0)?;
        Ok(())
    }

    /// The shared (IPv4 and IPv6) NAT counters.
    fn stats4(&mut self) -> Result<NatStats> {
        let m: PerCpuArray<&mut MapData, NatStats> = self.ctx.map(names::NAT_STATS)?;
        Ok(sum_counters(&m.get(&0, 0)?))
    }

    /// The state of the mapping whose guest end is `guest`:`port`.
    fn state(&mut self, proto: u8, guest: Ipv6Addr, port: u16) -> Result<u16> {
        let ins = self.ctx.entries::<Nat6Key, Nat6In>(names::NAT6_IN)?;
        ins.iter()
            .find(|(k, v)| k.proto == proto && v.addr == words(guest) && v.st.port == port.to_be())
            .map(|(_, v)| v.st.state)
            .context("no such mapping")
    }

    fn stats(&mut self) -> Result<Nat6Stats> {
        let m: PerCpuArray<&mut MapData, Nat6Stats> = self.ctx.map(names::NAT6_STATS)?;
        Ok(sum_counters(&m.get(&0, 0)?))
    }

    /// Run `prog` on `frame` arriving on tap `i`: (verdict, output).
    fn run(&self, prog: Prog, i: usize, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let ingress = self.ifx(i);
        Ok(match prog {
            Prog::Xdp => self.ctx.run_xdp(ingress, 0, frame)?,
            Prog::Tc => {
                let (r, out, _) = self
                    .ctx
                    .run_tc(names::TC_PROG, 0, ingress, ingress, frame)?;
                (r, out)
            }
        })
    }

    /// The outside port of the mapping whose guest end is `guest`:`port`
    /// (network order in the map; host order here).
    fn outside_port(&mut self, proto: u8, guest: Ipv6Addr, port: u16) -> Result<u16> {
        let ins = self.ctx.entries::<Nat6Key, Nat6In>(names::NAT6_IN)?;
        ins.iter()
            .find(|(k, v)| k.proto == proto && v.addr == words(guest) && v.st.port == port.to_be())
            .map(|(k, _)| u16::from_be(k.local_port))
            .with_context(|| format!("no mapping for {guest}:{port} ({} in NAT6_IN)", ins.len()))
    }
}

fn redirected(prog: Prog) -> u32 {
    match prog {
        Prog::Xdp => XDP_REDIRECT,
        Prog::Tc => TC_ACT_REDIRECT,
    }
}

/// A guest's packet of each protocol: (name, protocol, guest port, the
/// packet, the offset of its port in the transport header as it leaves,
/// that of the reply's port as it comes back).
fn flows() -> Vec<(&'static str, u8, u16, Vec<u8>, usize)> {
    vec![
        ("udp", 17, 4000, v6::udp(G1, 4000, REMOTE, 53, b"query"), 0),
        (
            "tcp syn",
            6,
            4001,
            v6::tcp(G1, 4001, REMOTE, 80, 0x02, 1000, 0, b""),
            0,
        ),
        (
            "echo",
            58,
            0x4242,
            v6::echo(G1, REMOTE, false, 0x4242, 1),
            4,
        ),
    ]
}

/// The remote's answer to `out` (as it left: from NAT6, port `port`).
fn answer(proto: u8, out: &[u8], port: u16) -> Vec<u8> {
    let l4 = &out[40..];
    let rport = u16::from_be_bytes([l4[2], l4[3]]);
    match proto {
        17 => v6::udp(REMOTE, rport, NAT6, port, b"answer"),
        6 => v6::tcp(REMOTE, rport, NAT6, port, 0x12, 5000, 1001, b""),
        _ => v6::echo(REMOTE, NAT6, true, port, 1),
    }
}

/// Out, back, and ICMPv6 errors about it, for each protocol, on `prog`.
fn round_trips(b: &mut Bench, prog: Prog) -> Result<()> {
    b.reset(true)?;
    for (what, proto, gport, ip, port_at) in flows() {
        let frame = eth(GW_MAC, gmac(0), &ip);
        let (r, out) = b.run(prog, 0, &frame)?;
        ensure!(r == redirected(prog), "{what} out: verdict {r}");
        let port = b.outside_port(proto, G1, gport)?;
        ensure!((PORT_LO..=PORT_HI).contains(&port), "{what}: port {port}");
        let left = with_hop(&rebuilt(&ip, NAT6, REMOTE, port_at, port), 63);
        ensure!(
            out == eth(NH_MAC, UP_MAC, &left),
            "{what} out: got {out:02x?}\n want {:02x?}",
            eth(NH_MAC, UP_MAC, &left)
        );
        ensure!(v6::checksum_ok(&out[14..]), "{what} out: bad checksum");

        // The answer comes back to the guest.
        let ans = answer(proto, &left, port);
        let (r, back) = b.run(prog, 3, &eth(UP_MAC, NH_MAC, &ans))?;
        ensure!(r == redirected(prog), "{what} back: verdict {r}");
        let dport_at = if proto == 58 { 4 } else { 2 };
        let want = with_hop(&rebuilt(&ans, REMOTE, G1, dport_at, gport), 63);
        ensure!(
            back == eth(gmac(0), GW_MAC, &want),
            "{what} back: got {back:02x?}\n want {:02x?}",
            eth(gmac(0), GW_MAC, &want)
        );
        ensure!(v6::checksum_ok(&back[14..]), "{what} back: bad checksum");

        // ICMPv6 errors from a router about the packet as it left: the
        // guest gets them about its own packet.
        for (ty, rest) in [
            (v6::PACKET_TOO_BIG, 1280u32),
            (v6::DST_UNREACH, 0),
            (v6::TIME_EXCEEDED, 0),
        ] {
            let err = v6::icmp_error(ROUTER, NAT6, ty, rest, &left);
            let (r, got) = b.run(prog, 3, &eth(UP_MAC, NH_MAC, &err))?;
            ensure!(r == redirected(prog), "{what} icmp6 {ty}: verdict {r}");
            let quote = with_hop(&ip, 63);
            let want = with_hop(&v6::icmp_error(ROUTER, G1, ty, rest, &quote), 63);
            ensure!(
                got == eth(gmac(0), GW_MAC, &want),
                "{what} icmp6 {ty}: got {got:02x?}\n want {:02x?}",
                eth(gmac(0), GW_MAC, &want)
            );
            ensure!(
                v6::checksum_ok(&got[14..]),
                "{what} icmp6 {ty}: bad checksum"
            );
            ensure!(
                v6::checksum_ok(&got[14 + 48..]),
                "{what} icmp6 {ty}: bad quoted checksum"
            );
        }
        // A truncated error (its quote cut before the ports) is the host's.
        let err = v6::icmp_error(ROUTER, NAT6, v6::DST_UNREACH, 0, &left[..40]);
        let frame = eth(UP_MAC, NH_MAC, &err);
        let (r, got) = b.run(prog, 3, &frame)?;
        ensure!(
            r == passed(prog) && got == frame,
            "{what}: truncated icmp6 error: verdict {r}"
        );
    }
    let s = b.stats()?;
    ensure!(
        // In: 3 answers and 9 errors.
        s.allocs == 3
            && s.icmp_errors == 9
            && s.out_xdp + s.out_tc == 3
            && s.in_xdp + s.in_tc == 12,
        "counters: {s:?}"
    );
    Ok(())
}

fn passed(prog: Prog) -> u32 {
    match prog {
        Prog::Xdp => XDP_PASS,
        Prog::Tc => TC_ACT_OK,
    }
}

/// Guest packets the datapath must not translate: switched to the host
/// unchanged (its kernel path masquerades or drops them), each counted.
fn left_to_the_kernel(b: &mut Bench, prog: Prog) -> Result<()> {
    b.reset(true)?;
    let udp = v6::udp(G1, 4000, REMOTE, 53, b"query");
    let mut zero_sum = udp.clone();
    zero_sum[46..48].copy_from_slice(&[0, 0]);
    let mut long = udp.clone();
    long[4..6].copy_from_slice(&200u16.to_be_bytes());
    let mut ext = udp.clone();
    ext[6] = 0; // a hop-by-hop options header
    let mut bad_ulen = udp.clone();
    bad_ulen[44..46].copy_from_slice(&4u16.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("hop limit 1", with_hop(&udp, 1), "slow_path"),
        ("payload beyond the frame", long, "slow_path"),
        ("extension header", ext, "slow_path"),
        ("udp length below 8", bad_ulen, "slow_path"),
        ("udp without checksum", zero_sum, "slow_path"),
        (
            "icmp6 other than echo",
            v6::icmp_error(G1, REMOTE, v6::DST_UNREACH, 0, &udp),
            "slow_path",
        ),
        (
            "source outside the prefixes",
            v6::udp(FOREIGN, 4000, REMOTE, 53, b"spoof"),
            "bad_source",
        ),
        ("between guests", v6::udp(G1, 4000, G2, 53, b"local"), ""),
        (
            "no route via the uplink",
            v6::udp(G1, 4000, "2001:db8:99::1".parse()?, 53, b"x"),
            "slow_path",
        ),
    ];
    for (what, ip, counter) in cases {
        let before = b.stats()?;
        let frame = eth(GW_MAC, gmac(0), &ip);
        let (r, out) = b.run(prog, 0, &frame)?;
        ensure!(out == frame, "{what}: changed: {out:02x?}");
        ensure!(
            r == redirected(prog) || r == passed(prog),
            "{what}: verdict {r}"
        );
        let after = b.stats()?;
        let grew = |f: fn(&Nat6Stats) -> u64| f(&after) > f(&before);
        let ok = match counter {
            "slow_path" => grew(|s| s.slow_path),
            "bad_source" => grew(|s| s.bad_source),
            _ => after == before,
        };
        ensure!(ok, "{what}: counters {before:?} -> {after:?}");
    }
    ensure!(
        b.ctx.entries::<Nat6Key, Nat6In>(names::NAT6_IN)?.is_empty(),
        "a mapping was made"
    );
    // From the uplink: packets for no mapping are the host's, unchanged.
    for (what, ip) in [
        ("udp to no mapping", v6::udp(REMOTE, 53, NAT6, 62500, b"x")),
        (
            "echo reply to no mapping",
            v6::echo(REMOTE, NAT6, true, 7, 1),
        ),
        (
            "truncated",
            v6::udp(REMOTE, 53, NAT6, 62500, b"x")[..44].to_vec(),
        ),
    ] {
        let frame = eth(UP_MAC, NH_MAC, &ip);
        let (r, out) = b.run(prog, 3, &frame)?;
        ensure!(
            r == passed(prog) && out == frame,
            "{what}: verdict {r}, changed {}",
            out != frame
        );
    }
    Ok(())
}

/// The IPv4 table's TCP checks and per-port quota hold for IPv6: a blind
/// RST from the LAN is passed on but leaves the mapping's state alone
/// (counted as `out_of_window`), the RST acknowledging the guest's SYN
/// resets it; with a quota of 2 mappings the guest's third new flow is
/// dropped (counted as `quota`, and as the port's `nat_quota`).
fn window_and_quota(b: &mut Bench, prog: Prog) -> Result<()> {
    b.reset_quota(true, 2)?;
    let syn = v6::tcp(G1, 4001, REMOTE, 80, 0x02, 1000, 0, b"");
    let (r, _) = b.run(prog, 0, &eth(GW_MAC, gmac(0), &syn))?;
    ensure!(r == redirected(prog), "syn: verdict {r}");
    let port = b.outside_port(6, G1, 4001)?;
    ensure!(b.state(6, G1, 4001)? == NAT_S_SYN_OUT, "after the SYN");
    let blind = v6::tcp(REMOTE, 80, NAT6, port, 0x14, 5000, 77, b"");
    let (r, _) = b.run(prog, 3, &eth(UP_MAC, NH_MAC, &blind))?;
    ensure!(r == redirected(prog), "blind rst: verdict {r}");
    ensure!(
        b.state(6, G1, 4001)? == NAT_S_SYN_OUT && b.stats4()?.out_of_window == 1,
        "a blind RST changed the mapping: state {}, {:?}",
        b.state(6, G1, 4001)?,
        b.stats4()?
    );
    let rst = v6::tcp(REMOTE, 80, NAT6, port, 0x14, 5000, 1001, b"");
    let (r, _) = b.run(prog, 3, &eth(UP_MAC, NH_MAC, &rst))?;
    ensure!(r == redirected(prog), "rst: verdict {r}");
    ensure!(
        b.state(6, G1, 4001)? & NAT_S_RST != 0,
        "the RST acknowledging the SYN did not reset the mapping"
    );
    let udp = |sport| eth(GW_MAC, gmac(0), &v6::udp(G1, sport, REMOTE, 53, b"q"));
    let (r, _) = b.run(prog, 0, &udp(5000))?;
    ensure!(r == redirected(prog), "second flow: verdict {r}");
    let (r, _) = b.run(prog, 0, &udp(5001))?;
    let dropped = match prog {
        Prog::Xdp => XDP_DROP,
        Prog::Tc => TC_ACT_SHOT,
    };
    ensure!(r == dropped, "third flow over the quota: verdict {r}");
    let st = b.ctx.port_stats(&[b.ifx(0)])?;
    ensure!(
        b.stats4()?.quota == 1 && st[0].nat_quota == 1,
        "quota counters: {:?} {:?}",
        b.stats4()?,
        st[0]
    );
    Ok(())
}

/// Without an IPv6 address on the uplink, a guest's IPv6 routed there is
/// dropped and counted; to a guest it is switched as ever.
fn no_uplink_address(b: &mut Bench, prog: Prog) -> Result<()> {
    b.reset(false)?;
    let frame = eth(GW_MAC, gmac(0), &v6::udp(G1, 4000, REMOTE, 53, b"q"));
    let (r, _) = b.run(prog, 0, &frame)?;
    let dropped = match prog {
        Prog::Xdp => XDP_DROP,
        Prog::Tc => TC_ACT_SHOT,
    };
    ensure!(r == dropped, "verdict {r}");
    let s = b.stats()?;
    ensure!(s.no_addr == 1 && s.allocs == 0, "counters {s:?}");
    // Counted as the NAT's, not the port's (whose `dropped` is the sum of
    // its own reasons).
    let st = b.ctx.port_stats(&[b.ifx(0)])?;
    ensure!(st[0].dropped == 0, "port counters {:?}", st[0]);
    let frame = eth(GW_MAC, gmac(0), &v6::udp(G1, 4000, G2, 53, b"q"));
    let (r, out) = b.run(prog, 0, &frame)?;
    ensure!(r == redirected(prog) && out == frame, "between guests: {r}");
    Ok(())
}

/// Every packet of the round trips cut at every length, once with its
/// payload length as it was (lying) and once set to what is left (with
/// the checksum of what is left): the datapath either leaves the frame
/// as it came or translates it whole, its transport checksum valid (and
/// for a guest's packet, from the uplink's address; for the LAN's, to
/// the guest), never half-rewritten or beyond the packet. Runs on a
/// table holding the round trips' mappings.
fn truncated_everywhere(b: &mut Bench, prog: Prog) -> Result<()> {
    round_trips(b, prog)?;
    let mut packets: Vec<(usize, Vec<u8>)> = Vec::new();
    for (_, proto, gport, ip, port_at) in flows() {
        let port = b.outside_port(proto, G1, gport)?;
        let left = with_hop(&rebuilt(&ip, NAT6, REMOTE, port_at, port), 63);
        packets.push((3, answer(proto, &left, port)));
        packets.push((
            3,
            v6::icmp_error(ROUTER, NAT6, v6::PACKET_TOO_BIG, 1280, &left),
        ));
        packets.push((0, ip));
    }
    let (mut cases, mut refused) = (0, Vec::new());
    for (dev, ip) in &packets {
        for cut in 0..ip.len() {
            let lying = ip[..cut].to_vec();
            let mut honest = lying.clone();
            if honest.len() >= 40 {
                let plen = (honest.len() - 40) as u16;
                honest[4..6].copy_from_slice(&plen.to_be_bytes());
                let next = honest[6];
                let c = v6::check_off(next);
                if honest.len() >= 40 + c + 2 {
                    let (s, d) = v6::addrs(&honest);
                    honest[40 + c..40 + c + 2].copy_from_slice(&[0, 0]);
                    let sum = v6::l4_checksum(s, d, next, &honest[40..]);
                    honest[40 + c..40 + c + 2].copy_from_slice(&sum.to_be_bytes());
                }
            }
            for p in [&lying, &honest] {
                cases += 1;
                let (dst, src) = if *dev == 0 {
                    (GW_MAC, gmac(0))
                } else {
                    (UP_MAC, NH_MAC)
                };
                let frame = eth(dst, src, p);
                let out = match b.run(prog, *dev, &frame) {
                    Ok((_, out)) => out,
                    // BPF_PROG_TEST_RUN refuses some runt skbs itself.
                    Err(e) if prog == Prog::Tc && p.len() < 40 => {
                        refused.push(format!("{}: {e}", p.len()));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if out == frame {
                    continue;
                }
                ensure!(
                    out.len() == frame.len() && out.len() >= 54,
                    "cut at {cut}: output of {} bytes from {}",
                    out.len(),
                    frame.len()
                );
                let (s, d) = v6::addrs(&out[14..]);
                let whole = if *dev == 0 { s == NAT6 } else { d == G1 };
                ensure!(
                    whole
                        && (p.len() < 40
                            || !v6::checksum_ok(&frame[14..])
                            || v6::checksum_ok(&out[14..])),
                    "cut at {cut} ({} bytes, dev {dev}): rewritten badly: {out:02x?}",
                    p.len()
                );
            }
        }
    }
    eprintln!(
        "[{prog:?}] {cases} truncated packets ({} runts refused by the test run)",
        refused.len()
    );
    Ok(())
}

#[test]
fn ipv6_masquerade_table() -> Result<()> {
    let mut b = Bench::new()?;
    let mut failed = Vec::new();
    for prog in [Prog::Xdp, Prog::Tc] {
        for (name, f) in [
            (
                "round trips",
                round_trips as fn(&mut Bench, Prog) -> Result<()>,
            ),
            ("left to the kernel", left_to_the_kernel),
            ("no uplink address", no_uplink_address),
            ("window and quota", window_and_quota),
            ("truncated everywhere", truncated_everywhere),
        ] {
            if let Err(e) = f(&mut b, prog) {
                failed.push(format!("[{prog:?}] {name}: {e:#}"));
            }
        }
    }
    ensure!(failed.is_empty(), "{}", failed.join("\n"));
    Ok(())
}
