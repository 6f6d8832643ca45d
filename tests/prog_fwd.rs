//! BPF_PROG_TEST_RUN tests of port forwards (`umlbr forward add`) in the
//! masquerade's datapath, on the bench of tests/prog_nat.rs (made here
//! again, smaller): taps g1..g3 (guests 192.168.2.11..13, MACs learned),
//! hp (the host port), up0 (the masquerade uplink 192.168.1.200, the LAN
//! host 192.168.1.50 a static neighbour), veth br0 (the bridge's host
//! interface, 192.168.2.1/24, with the guests g1 and g2 as static
//! neighbours; g3 has none).
//!
//! Forwards: tcp 8080 -> g1:80, udp 5353 -> g2:53, tcp 2222 -> g3:22.
//! Each case runs on umlbr_xdp and on umlbr_tc (the uplink's or a
//! guest's ingress) from an empty NAT table. Expected frames are built
//! from the input by setting the translated fields and recomputing every
//! checksum from scratch (`wire::fix_checksums`).
//!
//! Needs root.
use anyhow::{Context, Result, bail, ensure};
use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use umlbr_common::{
    Config, FDB_F_STATIC, FWD_K_PORT, FWD_K_TARGET, FdbEntry, FdbKey, FwdKey, FwdVal, NAT_F_FWD,
    NAT_F_XDP_TX, NAT_ICMP_SECS, NAT_TCP_CLOSING_SECS, NAT_TCP_ESTABLISHED_SECS,
    NAT_TCP_TRANSITORY_SECS, NAT_UDP_SECS, NAT_UDP_STREAM_SECS, NatConfig, NatIn, NatKey, NatOut,
    NatQuota, NatStats, PORT_KIND_OTHER, PortStats, names,
};
use umlbr_tests::{
    bpf::{
        AGING_NS, Ctx, LAN_MAC, SEC, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, UP_IP, UP_MAC,
        XDP_DROP, XDP_PASS, XDP_REDIRECT, sum_counters,
    },
    netns::{Netns, ifindex},
    wire::{Frame, Mac, TcpHeader, fix_checksums, fmt_mac, ipproto, tcp_flags, verify_checksums},
};

mod umlbr_lib;
use umlbr_lib::monotonic_coarse_ns as now_coarse;

const GW_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x01];
const NH_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x01];
const NAT_IP: [u8; 4] = UP_IP;
const LAN_HOST: [u8; 4] = [192, 168, 1, 50];
const R1: [u8; 4] = [203, 0, 113, 5];
const PORT_LO: u16 = 61000;
const PORT_HI: u16 = 61999;
/// The LAN client's port.
const CPORT: u16 = 40000;

fn gip(g: usize) -> [u8; 4] {
    [192, 168, 2, 11 + g as u8]
}

fn gmac(g: usize) -> Mac {
    [0x02, 0, 0, 0, 0x02, 0x11 + g as u8]
}

fn be32(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

/// (proto, outside port, guest, guest port)
const FORWARDS: [(u8, u16, usize, u16); 3] = [
    (ipproto::TCP, 8080, 0, 80),
    (ipproto::UDP, 5353, 1, 53),
    (ipproto::TCP, 2222, 2, 22),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    Xdp,
    Tc,
}

struct Bench {
    ctx: Ctx,
    br0: u32,
}

const TAPS: [&str; 5] = ["g1", "g2", "g3", "hp", "up0"];

impl Bench {
    fn new(tag: &str) -> Result<Self> {
        let ns = Netns::without_ipv6(&format!("fw{tag}"))?;
        ns.sh(&format!(
            "ip link add br0 type veth peer name br0p && ip link set br0 address {gw} \
             && ip addr add 192.168.2.1/24 dev br0 && ip link set br0p up && ip link set br0 up \
             && ip neigh replace 192.168.2.11 lladdr {g1} dev br0 nud permanent \
             && ip neigh replace 192.168.2.12 lladdr {g2} dev br0 nud permanent",
            gw = fmt_mac(&GW_MAC),
            g1 = fmt_mac(&gmac(0)),
            g2 = fmt_mac(&gmac(1)),
        ))?;
        let setup = format!(
            "ip link set up0 address {up} mtu 9000 && ip link set up0 up \
             && ip addr add 192.168.1.200/24 dev up0 \
             && ip neigh replace 192.168.1.1 lladdr {nh} dev up0 nud permanent \
             && ip neigh replace 192.168.1.50 lladdr {lan} dev up0 nud permanent \
             && ip route add default via 192.168.1.1 dev up0 \
             && for t in g1 g2 g3 hp; do ip link set $t up || exit 1; done \
             && sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.forwarding=1",
            up = fmt_mac(&UP_MAC),
            nh = fmt_mac(&NH_MAC),
            lan = fmt_mac(&LAN_MAC),
        );
        let ctx = Ctx::new(ns, &TAPS, &setup, umlbr_lib::load_object)?;
        let br0 = ifindex("br0")?;
        Ok(Bench { ctx, br0 })
    }

    fn port(&self, i: usize) -> u32 {
        self.ctx.taps.ifindex[i]
    }

    fn up(&self) -> u32 {
        self.port(4)
    }

    fn nat_cfg(&self) -> NatConfig {
        NatConfig {
            nat_ifindex: self.up(),
            nat_addr: be32(NAT_IP),
            host_ifindex: self.br0,
            subnet: be32([192, 168, 2, 0]),
            mask: be32([255, 255, 255, 0]),
            port_lo: PORT_LO,
            port_hi: PORT_HI,
            gw_mac: GW_MAC,
            flags: NAT_F_XDP_TX | NAT_F_FWD,
            tcp_established_ns: NAT_TCP_ESTABLISHED_SECS * SEC,
            tcp_transitory_ns: NAT_TCP_TRANSITORY_SECS * SEC,
            tcp_closing_ns: NAT_TCP_CLOSING_SECS * SEC,
            udp_ns: NAT_UDP_SECS * SEC,
            udp_stream_ns: NAT_UDP_STREAM_SECS * SEC,
            icmp_ns: NAT_ICMP_SECS * SEC,
            mtu: 1500,
            max_per_guest: 0,
        }
    }

    /// As `umlbr up --masquerade up0` and the three `forward add`s leave
    /// it, guests' MACs learned; `tweak` applied to the NAT settings.
    fn reset(&mut self, tweak: &dyn Fn(&mut NatConfig)) -> Result<()> {
        let ports: Vec<u32> = self.ctx.taps.ifindex[..4].to_vec();
        let host = self.port(3);
        let up = self.up();
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
            let zero = PortStats {
                kind: PORT_KIND_OTHER,
                ..Default::default()
            };
            self.ctx.set_port_stats(i, zero)?;
        }
        self.ctx.clear::<FdbKey, FdbEntry>(names::FDB)?;
        let now = now_coarse();
        self.ctx.fdb_insert(GW_MAC, host, FDB_F_STATIC, now)?;
        for (g, &port) in ports.iter().enumerate().take(3) {
            self.ctx.fdb_insert(gmac(g), port, 0, now)?;
        }
        let mut cfg = self.nat_cfg();
        tweak(&mut cfg);
        self.ctx.set_array(names::NAT_CONFIG, cfg)?;
        self.ctx.clear::<NatKey, NatOut>(names::NAT_OUT)?;
        self.ctx.clear::<NatKey, NatIn>(names::NAT_IN)?;
        self.ctx.clear::<u32, NatQuota>(names::NAT_QUOTA)?;
        self.ctx.clear::<FwdKey, FwdVal>(names::NAT_FWD)?;
        for (proto, port, g, gport) in FORWARDS {
            let k = FwdKey {
                proto,
                kind: FWD_K_PORT,
                port: port.to_be(),
                addr: 0,
            };
            let v = FwdVal {
                addr: be32(gip(g)),
                port: gport.to_be(),
                ..Default::default()
            };
            self.ctx.insert(names::NAT_FWD, k, v)?;
            let t = FwdKey {
                proto,
                kind: FWD_K_TARGET,
                port: gport.to_be(),
                addr: be32(gip(g)),
            };
            let tv = FwdVal {
                port: port.to_be(),
                ..Default::default()
            };
            self.ctx.insert(names::NAT_FWD, t, tv)?;
        }
        let n = self.ctx.nr_cpus;
        let mut st: PerCpuArray<&mut MapData, NatStats> = self.ctx.map(names::NAT_STATS)?;
        st.set(0, PerCpuValues::try_from(vec![NatStats::default(); n])?, 0)?;
        Ok(())
    }

    fn run(&self, prog: Prog, ingress: u32, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        Ok(match prog {
            Prog::Xdp => self.ctx.run_xdp(ingress, 0, frame)?,
            Prog::Tc => {
                let (ret, out, _) = self
                    .ctx
                    .run_tc(names::TC_PROG, 0, ingress, ingress, frame)?;
                (ret, out)
            }
        })
    }

    fn nat_in(&mut self) -> Result<Vec<(NatKey, NatIn)>> {
        self.ctx.entries::<NatKey, NatIn>(names::NAT_IN)
    }

    fn nat_out(&mut self) -> Result<Vec<(NatKey, NatOut)>> {
        self.ctx.entries::<NatKey, NatOut>(names::NAT_OUT)
    }

    fn stats(&mut self) -> Result<NatStats> {
        let m: PerCpuArray<&mut MapData, NatStats> = self.ctx.map(names::NAT_STATS)?;
        Ok(sum_counters(&m.get(&0, 0)?))
    }

    fn quota(&mut self, port: u32) -> Result<u32> {
        Ok(self
            .ctx
            .entries::<u32, NatQuota>(names::NAT_QUOTA)?
            .into_iter()
            .find(|(k, _)| *k == port)
            .map(|(_, q)| q.count)
            .unwrap_or(0))
    }

    fn hits(&mut self, proto: u8, port: u16) -> Result<u64> {
        Ok(self
            .ctx
            .entries::<FwdKey, FwdVal>(names::NAT_FWD)?
            .into_iter()
            .find(|(k, _)| k.kind == FWD_K_PORT && k.proto == proto && k.port == port.to_be())
            .map(|(_, v)| v.hits)
            .unwrap_or(0))
    }
}

fn pass(prog: Prog) -> u32 {
    match prog {
        Prog::Xdp => XDP_PASS,
        Prog::Tc => TC_ACT_OK,
    }
}

fn redirect(prog: Prog) -> u32 {
    match prog {
        Prog::Xdp => XDP_REDIRECT,
        Prog::Tc => TC_ACT_REDIRECT,
    }
}

fn drop_(prog: Prog) -> u32 {
    match prog {
        Prog::Xdp => XDP_DROP,
        Prog::Tc => TC_ACT_SHOT,
    }
}

/// A LAN client's packet to the uplink's address on `port`.
fn lan_pkt(proto: u8, port: u16, flags: u8) -> Vec<u8> {
    let f = Frame::new(UP_MAC, LAN_MAC);
    match proto {
        ipproto::UDP => f.udp(LAN_HOST, CPORT, NAT_IP, port, b"query"),
        _ => f.tcp(
            LAN_HOST,
            NAT_IP,
            &TcpHeader::new(CPORT, port, flags).seq(7000),
            b"",
        ),
    }
    .build()
}

/// A guest's packet from `gport` to `remote:rport` (to the gateway).
fn guest_pkt(proto: u8, g: usize, gport: u16, remote: [u8; 4], rport: u16, flags: u8) -> Vec<u8> {
    let f = Frame::new(GW_MAC, gmac(g));
    match proto {
        ipproto::UDP => f.udp(gip(g), gport, remote, rport, b"answer"),
        _ => f.tcp(
            gip(g),
            remote,
            &TcpHeader::new(gport, rport, flags).seq(9000).ack(7001),
            b"",
        ),
    }
    .build()
}

/// `f` with new MACs, destination (or source) address and port, TTL one
/// less, checksums made from scratch.
fn translated(f: &[u8], macs: (Mac, Mac), dst: bool, addr: [u8; 4], port: u16) -> Vec<u8> {
    let mut o = f.to_vec();
    o[0..6].copy_from_slice(&macs.0);
    o[6..12].copy_from_slice(&macs.1);
    o[22] -= 1;
    let (a, p) = if dst { (30, 36) } else { (26, 34) };
    o[a..a + 4].copy_from_slice(&addr);
    o[p..p + 2].copy_from_slice(&port.to_be_bytes());
    fix_checksums(&mut o);
    o
}

fn same(what: &str, got: &[u8], want: &[u8]) -> Result<()> {
    if got != want {
        bail!(
            "{what}: frame differs\n  got  {}\n  want {}",
            hex(got),
            hex(want)
        );
    }
    verify_checksums(got).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn key(proto: u8, la: [u8; 4], lp: u16, ra: [u8; 4], rp: u16) -> NatKey {
    NatKey::new(proto, be32(la), lp.to_be(), be32(ra), rp.to_be())
}

/// A new flow from the LAN to each forward: translated to its guest
/// (checksums right), a mapping made with the guest's port as owner and
/// charged to it, the forward's hit counted; the guest's reply is
/// translated back to the uplink's address and the forwarded port. (The
/// third forward's guest has no neighbour entry: see `kernel_path`.)
fn new_flows(b: &mut Bench, prog: Prog) -> Result<()> {
    for (proto, port, g, gport) in &FORWARDS[..2] {
        let (proto, port, g, gport) = (*proto, *port, *g, *gport);
        let what = format!("{prog:?} {proto} {port} -> g{}:{gport}", g + 1);
        b.reset(&|_| {})?;
        let syn = lan_pkt(proto, port, tcp_flags::SYN);
        let (ret, out) = b.run(prog, b.up(), &syn)?;
        ensure!(ret == redirect(prog), "{what}: action {ret}");
        let want = translated(&syn, (gmac(g), GW_MAC), true, gip(g), gport);
        same(&what, &out, &want)?;
        let ik = key(proto, NAT_IP, port, LAN_HOST, CPORT);
        let ins = b.nat_in()?;
        ensure!(ins.len() == 1, "{what}: NAT_IN {ins:?}");
        let (k, v) = ins[0];
        ensure!(k == ik, "{what}: NAT_IN key {k:?}");
        ensure!(
            v.addr == be32(gip(g)) && v.port == gport.to_be() && v.mac == gmac(g) && v.state == 0,
            "{what}: NAT_IN value {v:?}"
        );
        let outs = b.nat_out()?;
        ensure!(outs.len() == 1, "{what}: NAT_OUT {outs:?}");
        let (k, o) = outs[0];
        ensure!(
            k == key(proto, gip(g), gport, LAN_HOST, CPORT),
            "{what}: NAT_OUT key {k:?}"
        );
        ensure!(
            o.addr == be32(NAT_IP) && o.port == port.to_be() && o.owner == b.port(g),
            "{what}: NAT_OUT value {o:?}"
        );
        ensure!(b.quota(b.port(g))? == 1, "{what}: quota not charged");
        ensure!(b.hits(proto, port)? == 1, "{what}: hits");
        let st = b.stats()?;
        ensure!(st.allocs == 1 && st.in_miss == 0, "{what}: stats {st:?}");
        // The same packet again finds the mapping (no second one).
        let (ret, out2) = b.run(prog, b.up(), &syn)?;
        ensure!(ret == redirect(prog) && out2 == want, "{what}: again");
        ensure!(b.hits(proto, port)? == 1, "{what}: hits again");
        // The guest's reply.
        let reply = guest_pkt(
            proto,
            g,
            gport,
            LAN_HOST,
            CPORT,
            tcp_flags::SYN | tcp_flags::ACK,
        );
        let (ret, out) = b.run(prog, b.port(g), &reply)?;
        ensure!(ret == redirect(prog), "{what}: reply action {ret}");
        let want = translated(&reply, (LAN_MAC, UP_MAC), false, NAT_IP, port);
        same(&format!("{what} reply"), &out, &want)?;
        ensure!(b.nat_out()?.len() == 1, "{what}: reply made a mapping");
        let st = b.stats()?;
        ensure!(st.allocs == 1, "{what}: reply allocated: {st:?}");
    }
    Ok(())
}

/// What is not a forward's new flow is left as without forwards: passed
/// untouched, no mapping, counted as `in_miss` (the host's): a port not
/// forwarded, the flag off (no forwards); and, also counted as
/// `slow_path` (the kernel's dnat takes them), a TCP segment that is no
/// first SYN, a target the host has no neighbour entry for.
fn kernel_path(b: &mut Bench, prog: Prog) -> Result<()> {
    type Tweak<'a> = &'a dyn Fn(&mut NatConfig);
    let cases: [(&str, Vec<u8>, bool, Tweak); 6] = [
        (
            "port not forwarded",
            lan_pkt(ipproto::TCP, 8081, tcp_flags::SYN),
            true,
            &|_| {},
        ),
        (
            "udp port forwarded for tcp only",
            lan_pkt(ipproto::UDP, 8080, 0),
            true,
            &|_| {},
        ),
        (
            "ack without a mapping",
            lan_pkt(ipproto::TCP, 8080, tcp_flags::ACK),
            false,
            &|_| {},
        ),
        (
            "syn-ack without a mapping",
            lan_pkt(ipproto::TCP, 8080, tcp_flags::SYN | tcp_flags::ACK),
            false,
            &|_| {},
        ),
        (
            "target without a neighbour entry",
            lan_pkt(ipproto::TCP, 2222, tcp_flags::SYN),
            false,
            &|_| {},
        ),
        (
            "NAT_F_FWD off",
            lan_pkt(ipproto::TCP, 8080, tcp_flags::SYN),
            true,
            &|c| c.flags &= !NAT_F_FWD,
        ),
    ];
    for (name, frame, not_fwd, tweak) in cases {
        let what = format!("{prog:?} {name}");
        b.reset(tweak)?;
        let (ret, out) = b.run(prog, b.up(), &frame)?;
        ensure!(ret == pass(prog), "{what}: action {ret}");
        same(&what, &out, &frame)?;
        ensure!(
            b.nat_in()?.is_empty() && b.nat_out()?.is_empty(),
            "{what}: mapped"
        );
        let st = b.stats()?;
        ensure!(
            st.allocs == 0 && st.in_miss == 1 && (st.slow_path == 0) == not_fwd,
            "{what}: {st:?}"
        );
    }
    Ok(())
}

/// A new flow to a forward whose guest's port holds its quota is dropped,
/// counted as `quota`, nothing mapped or charged.
fn quota(b: &mut Bench, prog: Prog) -> Result<()> {
    let what = format!("{prog:?} quota");
    b.reset(&|c| c.max_per_guest = 1)?;
    let g1 = b.port(0);
    b.ctx.insert(
        names::NAT_QUOTA,
        g1,
        NatQuota {
            count: 1,
            ..Default::default()
        },
    )?;
    let syn = lan_pkt(ipproto::TCP, 8080, tcp_flags::SYN);
    let (ret, _) = b.run(prog, b.up(), &syn)?;
    ensure!(ret == drop_(prog), "{what}: action {ret}");
    ensure!(b.nat_in()?.is_empty(), "{what}: mapped");
    ensure!(b.quota(g1)? == 1, "{what}: charged");
    ensure!(b.stats()?.quota == 1, "{what}: not counted");
    // Under the quota it is mapped.
    b.reset(&|c| c.max_per_guest = 1)?;
    let (ret, _) = b.run(prog, b.up(), &syn)?;
    ensure!(ret == redirect(prog), "{what}: under quota {ret}");
    ensure!(b.quota(g1)? == 1, "{what}: not charged");
    // At the quota with an expired mapping (a guest's UDP flow idle for
    // 100 s): the datapath sweeps it out, credits it, and maps the new
    // flow.
    b.reset(&|c| c.max_per_guest = 1)?;
    let old = now_coarse().saturating_sub(100 * SEC);
    let ik = key(ipproto::UDP, NAT_IP, 61234, R1, 53);
    let ok = key(ipproto::UDP, gip(0), 5000, R1, 53);
    b.ctx.insert(
        names::NAT_IN,
        ik,
        NatIn {
            addr: be32(gip(0)),
            port: 5000u16.to_be(),
            mac: gmac(0),
            last_seen_ns: old,
            created_ns: old,
            ..Default::default()
        },
    )?;
    b.ctx.insert(
        names::NAT_OUT,
        ok,
        NatOut {
            addr: be32(NAT_IP),
            port: 61234u16.to_be(),
            owner: g1,
            ..Default::default()
        },
    )?;
    b.ctx.insert(
        names::NAT_QUOTA,
        g1,
        NatQuota {
            count: 1,
            ..Default::default()
        },
    )?;
    let (ret, _) = b.run(prog, b.up(), &syn)?;
    ensure!(ret == redirect(prog), "{what}: after the sweep {ret}");
    let ins = b.nat_in()?;
    ensure!(
        ins.len() == 1 && ins[0].0 == key(ipproto::TCP, NAT_IP, 8080, LAN_HOST, CPORT),
        "{what}: after the sweep {ins:?}"
    );
    ensure!(b.nat_out()?.len() == 1, "{what}: expired NAT_OUT left");
    ensure!(b.quota(g1)? == 1, "{what}: quota after the sweep");
    let st = b.stats()?;
    ensure!(st.expired == 1 && st.quota == 0, "{what}: {st:?}");
    Ok(())
}

/// A forward's target starting a new flow of its own from the forwarded
/// port is not masqueraded (the kernel's path: conntrack may hold a
/// forwarded flow BPF did not map); from another port it is.
fn target_flows(b: &mut Bench, prog: Prog) -> Result<()> {
    let what = format!("{prog:?} target");
    b.reset(&|_| {})?;
    let syn = guest_pkt(ipproto::TCP, 0, 80, R1, 443, tcp_flags::SYN);
    let (ret, out) = b.run(prog, b.port(0), &syn)?;
    ensure!(ret == redirect(prog), "{what}: action {ret}");
    same(&what, &out, &syn)?;
    ensure!(b.nat_out()?.is_empty(), "{what}: mapped");
    ensure!(b.stats()?.slow_path == 1, "{what}: slow_path");
    let syn = guest_pkt(ipproto::TCP, 0, 81, R1, 443, tcp_flags::SYN);
    let (ret, out) = b.run(prog, b.port(0), &syn)?;
    ensure!(ret == redirect(prog), "{what} other port: action {ret}");
    ensure!(out[26..30] == NAT_IP, "{what} other port: not masqueraded");
    ensure!(b.nat_out()?.len() == 1, "{what} other port: no mapping");
    Ok(())
}

/// Malformed packets to a forwarded port map nothing: a TCP header cut
/// short, a UDP length beyond the packet, a fragment.
fn malformed(b: &mut Bench, prog: Prog) -> Result<()> {
    let syn = lan_pkt(ipproto::TCP, 8080, tcp_flags::SYN);
    let mut short = syn.clone();
    short.truncate(14 + 20 + 16);
    short[16..18].copy_from_slice(&36u16.to_be_bytes());
    let mut udp = lan_pkt(ipproto::UDP, 5353, 0);
    udp[38..40].copy_from_slice(&200u16.to_be_bytes());
    let mut frag = syn.clone();
    frag[20] = 0x20; // more fragments
    for (name, mut f) in [("short tcp", short), ("long udp", udp), ("fragment", frag)] {
        let what = format!("{prog:?} {name}");
        fix_ip(&mut f);
        b.reset(&|_| {})?;
        let (ret, _) = b.run(prog, b.up(), &f)?;
        ensure!(ret == pass(prog), "{what}: action {ret}");
        ensure!(b.nat_in()?.is_empty(), "{what}: mapped");
    }
    Ok(())
}

/// The IPv4 header checksum of a frame edited by hand.
fn fix_ip(f: &mut [u8]) {
    f[24] = 0;
    f[25] = 0;
    let s = umlbr_tests::wire::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&s.to_be_bytes());
}

fn all(tag: &str, prog: Prog) -> Result<()> {
    let mut b = Bench::new(tag).context("bench")?;
    let mut failed = Vec::new();
    type Case = fn(&mut Bench, Prog) -> Result<()>;
    let cases: [(&str, Case); 5] = [
        ("new_flows", new_flows),
        ("kernel_path", kernel_path),
        ("quota", quota),
        ("target_flows", target_flows),
        ("malformed", malformed),
    ];
    for (name, f) in cases {
        if let Err(e) = f(&mut b, prog) {
            failed.push(format!("{name}: {e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

#[test]
fn forwards_xdp() -> Result<()> {
    all("x", Prog::Xdp)
}

#[test]
fn forwards_tc() -> Result<()> {
    all("t", Prog::Tc)
}
