//! Table-driven BPF_PROG_TEST_RUN tests of umlbr's in-kernel masquerade
//! (scenario D): guest flows translated on their way out of the uplink,
//! replies and ICMP errors translated back, and everything the datapath
//! leaves to the kernel.
//!
//! Each test makes a network namespace and moves its own thread into it
//! (network namespaces are per thread; the test run's ingress ifindex, the
//! devmap, `bpf_fib_lookup` and `bpf_sk_lookup_*` all work in the caller's
//! namespace). In it:
//!
//! - taps g1, g2, g3: guest ports; tap hp: the bridge's host port (the
//!   switch side, `Config.host_port`), a tap so that live tests can read
//!   what reaches it;
//! - veth br0 (MAC `GW_MAC`, 192.168.2.1/24): the bridge's host interface,
//!   the `host_ifindex` route lookups start from;
//! - tap up0 (MAC `UP_MAC`, 192.168.1.200/24, MTU 9000): the masquerade
//!   uplink, default route via 192.168.1.1 (static neighbour `NH_MAC`),
//!   198.51.100.0/24 via 192.168.1.2 (no neighbour: NO_NEIGH), a /32 with
//!   a locked MTU of 1000, an unreachable /32; a LAN host 192.168.1.50 with
//!   a static neighbour entry;
//! - veth d1 (10.77.0.1/16): a route that does not leave via the uplink;
//! - forwarding on.
//!
//! The object is loaded with `umlbr::object::load()` and its maps
//! are filled by hand as `umlbr up --masquerade` would. Every expected
//! output frame is built from the input by setting the translated fields
//! and recomputing every checksum from scratch (`wire::fix_checksums`,
//! RFC 1071), never with the datapath's incremental arithmetic; outputs are
//! also checked with `wire::verify_checksums`.
//!
//! Needs root.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, TcpListener, UdpSocket},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, PerCpuValues},
    programs::TcAttachType,
};
use umlbr_common::{
    Config, FDB_F_STATIC, FdbEntry, FdbKey, NAT_F_XDP_TX, NAT_HOP_NS, NAT_ICMP_SECS, NAT_S_FIN_IN,
    NAT_S_FIN_OUT, NAT_S_REPLIED, NAT_S_RST, NAT_S_SYN_OUT, NAT_T_ACK, NAT_T_SEQ,
    NAT_TCP_CLOSING_SECS, NAT_TCP_ESTABLISHED_SECS, NAT_TCP_TRANSITORY_SECS, NAT_UDP_SECS,
    NAT_UDP_STREAM_SECS, NAT_WSCALE_MAX, NatConfig, NatIn, NatKey, NatOut, NatQuota, NatStats,
    PORT_KIND_OTHER, PortStats, names,
};
use umlbr_tests::{
    bpf::{
        AGING_NS, Ctx, Errs, LAN_MAC, SEC, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TableCase,
        UP_IP, UP_MAC, XDP_PASS, XDP_REDIRECT, sum_counters,
    },
    netns::{Netns, ifindex},
    wire::{
        Frame, Mac, TcpHeader, fix_checksums, fmt_mac, icmp_type, ipproto, tcp_flags,
        verify_checksums,
    },
};

mod umlbr_lib;
use umlbr_lib::monotonic_coarse_ns as now_coarse;

// ---------------------------------------------------------------------------
// Addresses.

/// br0's MAC: the guests' gateway, `NatConfig.gw_mac`.
const GW_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x01];
/// The default gateway 192.168.1.1 (static neighbour).
const NH_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x01];
/// What answers the ARP for 192.168.1.2 in the NO_NEIGH live test.
const NH2_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x02];

// UP_MAC (up0's: the source of everything that leaves translated) and
// LAN_MAC (a host on the uplink's LAN, 192.168.1.50, static neighbour):
// umlbr_tests::bpf.
/// The masquerade address: up0's.
const NAT_IP: [u8; 4] = UP_IP;
const GW_IP: [u8; 4] = [192, 168, 2, 1];
const LAN_HOST: [u8; 4] = [192, 168, 1, 50];
/// Remote hosts behind the default route.
const R1: [u8; 4] = [203, 0, 113, 5];
const R2: [u8; 4] = [203, 0, 113, 6];
/// Behind 192.168.1.2, which has no neighbour entry.
const NN: [u8; 4] = [198, 51, 100, 7];
/// Behind d1, not the uplink.
const OTHER_NET: [u8; 4] = [10, 77, 0, 5];
/// An unreachable route.
const UNREACH: [u8; 4] = [203, 0, 113, 99];
/// A route with a locked MTU of 1000.
const SMALL_MTU: [u8; 4] = [203, 0, 113, 77];
/// A router that sends ICMP errors.
const ROUTER: [u8; 4] = [198, 18, 0, 1];

const PORT_LO: u16 = 61000;
const PORT_HI: u16 = 61999;
/// Ports of pre-made mappings.
const P: u16 = 61234;
const P2: u16 = 61300;
const P3: u16 = 61400;

fn gip(g: usize) -> [u8; 4] {
    [192, 168, 2, 10 + g as u8]
}

fn gmac(g: usize) -> Mac {
    [0x02, 0, 0, 0, 0x02, 0x10 + g as u8]
}

fn be32(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

fn ip4(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

/// The neighbour MAC a translated packet to `remote` must carry.
fn next_hop_mac(remote: [u8; 4]) -> Mac {
    if remote == LAN_HOST { LAN_MAC } else { NH_MAC }
}

/// `NatOut.hop` for a next hop `dmac` out of up0.
fn hop_bytes(dmac: Mac) -> [u8; 12] {
    let mut h = [0; 12];
    h[..6].copy_from_slice(&dmac);
    h[6..].copy_from_slice(&UP_MAC);
    h
}

// ---------------------------------------------------------------------------
// The test bench.

/// A device of the bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dev {
    /// Guest port g1..g3.
    G(usize),
    /// The host port hp.
    Host,
    /// The masquerade uplink up0.
    Up,
}

const TAP_NAMES: [&str; 5] = ["g1", "g2", "g3", "hp", "up0"];
const NR_GUESTS: usize = 3;

fn tap_of(d: Dev) -> usize {
    match d {
        Dev::G(i) => i,
        Dev::Host => 3,
        Dev::Up => 4,
    }
}

struct Bench {
    ctx: Ctx,
    br0: u32,
}

/// The default masquerade settings of the bench.
fn nat_config(up0: u32, br0: u32) -> NatConfig {
    NatConfig {
        nat_ifindex: up0,
        nat_addr: be32(NAT_IP),
        host_ifindex: br0,
        subnet: be32([192, 168, 2, 0]),
        mask: be32([255, 255, 255, 0]),
        port_lo: PORT_LO,
        port_hi: PORT_HI,
        gw_mac: GW_MAC,
        flags: NAT_F_XDP_TX,
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

impl Bench {
    fn new(tag: &str) -> Result<Self> {
        let ns = Netns::without_ipv6(&format!("nat-{tag}"))?;
        ns.sh(&format!(
            "ip link add br0 type veth peer name br0p && ip link set br0 address {gw} \
             && ip addr add 192.168.2.1/24 dev br0 && ip link set br0p up && ip link set br0 up \
             && ip link add d1 type veth peer name d1p && ip addr add 10.77.0.1/16 dev d1 \
             && ip link set d1p up && ip link set d1 up",
            gw = fmt_mac(&GW_MAC)
        ))?;
        let setup = format!(
            "ip link set up0 address {up} mtu 9000 && ip link set up0 up \
             && ip addr add 192.168.1.200/24 dev up0 \
             && ip neigh replace 192.168.1.1 lladdr {nh} dev up0 nud permanent \
             && ip neigh replace 192.168.1.50 lladdr {lan} dev up0 nud permanent \
             && ip route add default via 192.168.1.1 dev up0 \
             && ip route add 198.51.100.0/24 via 192.168.1.2 dev up0 \
             && ip route add 203.0.113.77/32 via 192.168.1.1 dev up0 mtu lock 1000 \
             && ip route add unreachable 203.0.113.99/32 \
             && for t in g1 g2 g3 hp; do ip link set $t up || exit 1; done \
             && sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.forwarding=1 \
                net.ipv4.conf.br0.forwarding=1",
            up = fmt_mac(&UP_MAC),
            nh = fmt_mac(&NH_MAC),
            lan = fmt_mac(&LAN_MAC),
        );
        let ctx = Ctx::new(ns, &TAP_NAMES, &setup, umlbr_lib::load_object)?;
        let br0 = ifindex("br0")?;
        let mut b = Bench { ctx, br0 };
        b.reset(&|_| {})?;
        Ok(b)
    }

    fn ifindex(&self, d: Dev) -> u32 {
        self.ctx.taps.ifindex[tap_of(d)]
    }

    fn nat_cfg(&self) -> NatConfig {
        nat_config(self.ifindex(Dev::Up), self.br0)
    }

    /// The state `umlbr up --address 192.168.2.1/24 --masquerade up0`
    /// leaves, with g1..g3 attached and their guests' MACs learned: every
    /// port in the devmap (up0 in the NAT's, NAT_F_XDP_TX), flood list and
    /// stats;
    /// the gateway's MAC on the host port; empty NAT tables, zero counters;
    /// `tweak` applied to the NAT settings. Taps drained.
    fn reset(&mut self, tweak: &dyn Fn(&mut NatConfig)) -> Result<()> {
        let ports: Vec<u32> = self.ctx.taps.ifindex[..4].to_vec();
        let host = self.ifindex(Dev::Host);
        let up = self.ifindex(Dev::Up);
        let mut cfg = self.nat_cfg();
        tweak(&mut cfg);
        self.ctx.set_ports(&ports, None)?;
        // The uplink is never a flood target: it is in a devmap of its own.
        let _ = self.ctx.devmap_remove(names::PORTS, up);
        if cfg.flags & NAT_F_XDP_TX != 0 {
            self.ctx.devmap_insert(names::NAT_TX, up)?;
        } else {
            let _ = self.ctx.devmap_remove(names::NAT_TX, up);
        }
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
        for (g, &port) in ports.iter().enumerate().take(NR_GUESTS) {
            self.ctx.fdb_insert(gmac(g), port, 0, now)?;
        }
        self.set_nat_cfg(cfg)?;
        self.ctx.clear::<NatKey, NatOut>(names::NAT_OUT)?;
        self.ctx.clear::<NatKey, NatIn>(names::NAT_IN)?;
        self.ctx.clear::<u32, NatQuota>(names::NAT_QUOTA)?;
        let n = self.ctx.nr_cpus;
        let mut st: PerCpuArray<&mut MapData, NatStats> = self.ctx.map(names::NAT_STATS)?;
        st.set(0, PerCpuValues::try_from(vec![NatStats::default(); n])?, 0)?;
        self.ctx.quiet();
        Ok(())
    }

    fn set_nat_cfg(&mut self, cfg: NatConfig) -> Result<()> {
        self.ctx.set_array(names::NAT_CONFIG, cfg)
    }

    fn forget_guest(&mut self, g: usize) -> Result<()> {
        let mut fdb: HashMap<&mut MapData, FdbKey, FdbEntry> = self.ctx.map(names::FDB)?;
        fdb.remove(&FdbKey::new(gmac(g)))?;
        Ok(())
    }

    /// Insert a mapping's entries as the datapath would have made them,
    /// last used `m.idle_ns` ago.
    fn put_mapping(&mut self, m: &Mapping, now: u64) -> Result<()> {
        if m.out {
            let out = NatOut {
                addr: be32(NAT_IP),
                port: m.nat_port.to_be(),
                _pad: 0,
                hop: m.hop.map(|(d, _)| hop_bytes(d)).unwrap_or_default(),
                _pad2: 0,
                hop_ns: m.hop.map(|(_, age)| now.wrapping_sub(age)).unwrap_or(0),
                seq_next: m.track.seq_next,
                ack: m.track.ack,
                win: m.track.win,
                track: m.track.flags,
                owner: self.ifindex(guest(m.owner.unwrap_or(m.flow.guest))),
            };
            self.ctx.insert(names::NAT_OUT, m.flow.out_key(), out)?;
        }
        if m.inn {
            let k = m.flow.in_key(m.nat_port);
            self.ctx.insert(names::NAT_IN, k, m.nat_in(now))?;
        }
        Ok(())
    }

    fn nat_out(&mut self) -> Result<BTreeMap<KeyOrd, NatOut>> {
        let v = self.ctx.entries::<NatKey, NatOut>(names::NAT_OUT)?;
        Ok(v.into_iter().map(|(k, v)| (KeyOrd(k), v)).collect())
    }

    fn nat_in(&mut self) -> Result<BTreeMap<KeyOrd, NatIn>> {
        let v = self.ctx.entries::<NatKey, NatIn>(names::NAT_IN)?;
        Ok(v.into_iter().map(|(k, v)| (KeyOrd(k), v)).collect())
    }

    /// The NAT counters, summed over the CPUs.
    fn nat_stats(&mut self) -> Result<NatStats> {
        let m: PerCpuArray<&mut MapData, NatStats> = self.ctx.map(names::NAT_STATS)?;
        Ok(sum_counters(&m.get(&0, 0)?))
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

    /// Run umlbr_xdp on a frame written into a tap: XDP_REDIRECT really
    /// transmits.
    fn run_xdp_live(&mut self, ingress: u32, frame: &[u8]) -> Result<()> {
        self.ctx.run_xdp_live(ingress, frame)
    }

    fn attach_tc(&mut self, devs: &[&str]) -> Result<()> {
        self.ctx
            .attach_tc(names::TC_PROG, devs, TcAttachType::Ingress)
    }

    /// Everything the taps transmit: waits until each tap i has `want[i]`
    /// frames (up to `wait`), then 20 ms more for extras.
    fn collect(&mut self, want: &[usize], wait: Duration) -> Vec<Vec<Vec<u8>>> {
        self.ctx.collect(want, wait, |_| true)
    }
}

/// NatKey with an order, for sorted dumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KeyOrd(NatKey);

impl KeyOrd {
    fn tuple(&self) -> (u8, u32, u32, u16, u16) {
        let k = self.0;
        (
            k.proto,
            k.local_addr,
            k.remote_addr,
            k.local_port,
            k.remote_port,
        )
    }
}

impl PartialOrd for KeyOrd {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for KeyOrd {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.tuple().cmp(&o.tuple())
    }
}

fn fmt_key(k: &NatKey) -> String {
    let p = match k.proto {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        _ => "?",
    };
    format!(
        "{p} {}:{} <-> {}:{}",
        Ipv4Addr::from(k.local_addr.to_ne_bytes()),
        u16::from_be(k.local_port),
        Ipv4Addr::from(k.remote_addr.to_ne_bytes()),
        u16::from_be(k.remote_port)
    )
}

// ---------------------------------------------------------------------------
// Flows, mappings and frames.

/// A guest flow: protocol, guest index and port (ICMP: echo id), remote
/// address and port (ICMP: 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Flow {
    proto: u8,
    guest: usize,
    gport: u16,
    remote: [u8; 4],
    rport: u16,
}

fn udp(guest: usize, gport: u16, remote: [u8; 4], rport: u16) -> Flow {
    Flow {
        proto: ipproto::UDP,
        guest,
        gport,
        remote,
        rport,
    }
}

fn tcp(guest: usize, gport: u16, remote: [u8; 4], rport: u16) -> Flow {
    Flow {
        proto: ipproto::TCP,
        guest,
        gport,
        remote,
        rport,
    }
}

fn icmp(guest: usize, id: u16, remote: [u8; 4]) -> Flow {
    Flow {
        proto: ipproto::ICMP,
        guest,
        gport: id,
        remote,
        rport: 0,
    }
}

impl Flow {
    fn out_key(&self) -> NatKey {
        NatKey {
            proto: self.proto,
            _pad: 0,
            _pad2: 0,
            local_addr: be32(gip(self.guest)),
            remote_addr: be32(self.remote),
            local_port: self.gport.to_be(),
            remote_port: self.rport.to_be(),
        }
    }

    fn in_key(&self, nat_port: u16) -> NatKey {
        NatKey {
            proto: self.proto,
            _pad: 0,
            _pad2: 0,
            local_addr: be32(NAT_IP),
            remote_addr: be32(self.remote),
            local_port: nat_port.to_be(),
            remote_port: self.rport.to_be(),
        }
    }

    /// The guest's packet (to the gateway's MAC). TCP: `flags`; ICMP: an
    /// echo request with sequence 1.
    fn out_frame(&self, flags: u8, data: &[u8]) -> Vec<u8> {
        let f = Frame::new(GW_MAC, gmac(self.guest));
        let (g, r) = (gip(self.guest), self.remote);
        match self.proto {
            ipproto::UDP => f.udp(g, self.gport, r, self.rport, data),
            ipproto::TCP => f.tcp(g, r, &TcpHeader::new(self.gport, self.rport, flags), data),
            _ => f.icmp_echo(g, r, false, self.gport, 1, data),
        }
        .build()
    }

    /// The remote's answer to the mapping at `nat_port`, as it arrives on
    /// the uplink (from the gateway's MAC to up0's). ICMP: an echo reply.
    fn reply_frame(&self, nat_port: u16, flags: u8, data: &[u8]) -> Vec<u8> {
        let f = Frame::new(UP_MAC, next_hop_mac(self.remote));
        let r = self.remote;
        match self.proto {
            ipproto::UDP => f.udp(r, self.rport, NAT_IP, nat_port, data),
            ipproto::TCP => f.tcp(
                r,
                NAT_IP,
                &TcpHeader::new(self.rport, nat_port, flags).seq(5000),
                data,
            ),
            _ => f.icmp_echo(r, NAT_IP, true, nat_port, 1, data),
        }
        .build()
    }

    /// A TCP segment from the remote to the mapping at `nat_port` with
    /// this sequence and acknowledgment number.
    fn reply_seg(&self, nat_port: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
        Frame::new(UP_MAC, next_hop_mac(self.remote))
            .tcp(
                self.remote,
                NAT_IP,
                &TcpHeader::new(self.rport, nat_port, flags)
                    .seq(seq)
                    .ack(ack),
                b"",
            )
            .build()
    }

    /// The packet as it left translated (its IPv4 header and transport
    /// header), as an ICMP error about it quotes it: the first `len` bytes.
    fn quoted(&self, nat_port: u16, len: usize) -> Vec<u8> {
        self.quoted_from(NAT_IP, nat_port, len)
    }

    /// The same packet as sent from `src:sport` (for ICMP, echo id
    /// `sport`), quoted the same way.
    fn quoted_from(&self, src: [u8; 4], sport: u16, len: usize) -> Vec<u8> {
        let f = Frame::new(NH_MAC, UP_MAC);
        let r = self.remote;
        let frame = match self.proto {
            ipproto::UDP => f.udp(src, sport, r, self.rport, b"quoted datagram"),
            ipproto::TCP => f.tcp(
                src,
                r,
                &TcpHeader::new(sport, self.rport, tcp_flags::SYN),
                b"",
            ),
            _ => f.icmp_echo(src, r, false, sport, 1, b"quoted ping"),
        }
        .build();
        let mut ip = frame[14..].to_vec();
        ip[8] -= 1;
        fix_ip_header(&mut ip);
        ip.truncate(len);
        ip
    }
}

fn fix_ip_header(ip: &mut [u8]) {
    umlbr_tests::wire::fix_ipv4_header_checksum(ip);
}

/// An ICMP error from `from` to the masquerade address quoting `quoted`.
fn icmp_error_frame(from: [u8; 4], ty: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    Frame::new(UP_MAC, NH_MAC)
        .icmp_error(from, NAT_IP, ty, code, rest, quoted)
        .build()
}

/// A mapping present before the run.
#[derive(Clone, Copy, Debug)]
struct Mapping {
    flow: Flow,
    nat_port: u16,
    state: u16,
    idle_ns: u64,
    /// Its NAT_OUT entry exists.
    out: bool,
    /// Its NAT_IN entry exists.
    inn: bool,
    /// A next hop cached in its NAT_OUT entry: dst MAC, looked up this
    /// long ago.
    hop: Option<(Mac, u64)>,
    /// What its NAT_OUT entry knows of the guest's TCP.
    track: Track,
    /// The guest whose port made it, if not the flow's.
    owner: Option<usize>,
}

/// `NatOut`'s TCP tracking fields.
#[derive(Clone, Copy, Debug, Default)]
struct Track {
    seq_next: u32,
    ack: u32,
    win: u16,
    flags: u16,
}

/// The guest's SYN had sequence number 1000 (`TcpHeader::new`); once the
/// remote answered, the guest acknowledged the remote's 5000
/// (`Flow::reply_frame`) with a window of 64240.
const GUEST_SEQ_NEXT: u32 = 1001;
const GUEST_ACK: u32 = 5000;
const GUEST_WIN: u16 = 64240;
/// The guest's receive window as umlbr bounds it: its window field at the
/// largest scale.
const GUEST_WND: u32 = (GUEST_WIN as u32 + 1) << NAT_WSCALE_MAX;

fn mapping(flow: Flow, nat_port: u16, state: u16, idle_ns: u64) -> Mapping {
    Mapping {
        flow,
        nat_port,
        state,
        idle_ns,
        out: true,
        inn: true,
        hop: None,
        track: default_track(flow.proto, state),
        owner: None,
    }
}

/// What the datapath would know of a TCP mapping in `state`: the guest's
/// SYN, and once replied to, its acknowledgment of the remote's data.
fn default_track(proto: u8, state: u16) -> Track {
    match proto {
        ipproto::TCP if state & NAT_S_REPLIED != 0 => Track {
            seq_next: GUEST_SEQ_NEXT,
            ack: GUEST_ACK,
            win: GUEST_WIN,
            flags: NAT_T_SEQ | NAT_T_ACK,
        },
        ipproto::TCP => Track {
            seq_next: GUEST_SEQ_NEXT,
            flags: NAT_T_SEQ,
            ..Track::default()
        },
        _ => Track::default(),
    }
}

/// NAT_OUT entry `b` after the guest's TCP packet `frame` found it: the
/// guest's next sequence number (payload, SYN and FIN count) until it has
/// acknowledged something, its acknowledgment and window (if ACK is set)
/// kept; a SYN without ACK starts afresh, forgetting the acknowledgment.
fn tracked(b: &NatOut, frame: &[u8]) -> NatOut {
    let mut w = *b;
    if frame.len() < L4 + 20 || frame[IP + 9] != ipproto::TCP {
        return w;
    }
    let t = &frame[L4..];
    let be32 = |o: usize| u32::from_be_bytes([t[o], t[o + 1], t[o + 2], t[o + 3]]);
    let (seq, ack, flags) = (be32(4), be32(8), t[13]);
    let win = u16::from_be_bytes([t[14], t[15]]);
    let hlen = (t[12] >> 4) as u32 * 4;
    let tot = u16::from_be_bytes([frame[IP + 2], frame[IP + 3]]) as u32;
    let ctl = (flags & tcp_flags::SYN != 0) as u32 + (flags & tcp_flags::FIN != 0) as u32;
    let new_syn = flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    if b.track & NAT_T_ACK == 0 || new_syn {
        w.seq_next = seq.wrapping_add(tot - 20 - hlen).wrapping_add(ctl);
    }
    if flags & tcp_flags::ACK != 0 {
        w.ack = ack;
        w.win = win;
        w.track |= NAT_T_SEQ | NAT_T_ACK;
    } else if flags & tcp_flags::SYN != 0 {
        w.track = NAT_T_SEQ;
    } else {
        w.track |= NAT_T_SEQ;
    }
    w
}

impl Mapping {
    fn with_hop(mut self, dmac: Mac, age_ns: u64) -> Self {
        self.hop = Some((dmac, age_ns));
        self
    }

    /// The cached next hop, if young enough to be used. (Fresh ones in
    /// the tables are 0.25 s old: a stall of 0.75 s before the run would
    /// make them stale.)
    fn fresh_hop(&self) -> Option<Mac> {
        self.hop
            .filter(|&(_, age)| age < NAT_HOP_NS)
            .map(|(mac, _)| mac)
    }

    fn nat_in(&self, now: u64) -> NatIn {
        NatIn {
            addr: be32(gip(self.flow.guest)),
            port: self.flow.gport.to_be(),
            state: self.state,
            mac: gmac(self.flow.guest),
            _pad: [0; 2],
            last_seen_ns: now.wrapping_sub(self.idle_ns),
            created_ns: now.wrapping_sub(self.idle_ns + SEC),
        }
    }
}

// ---------------------------------------------------------------------------
// Expected outputs, built from the input and re-checksummed from scratch.

const IP: usize = 14;
const L4: usize = IP + 20;

/// The guest's packet as it must leave: MACs from the neighbour (unless the
/// neighbour is unresolved), source = the masquerade address and port (ICMP:
/// echo id), TTL - 1.
fn snat_expect(input: &[u8], nat_port: u16, macs: Option<(Mac, Mac)>) -> Vec<u8> {
    let mut f = input.to_vec();
    if let Some((d, s)) = macs {
        f[0..6].copy_from_slice(&d);
        f[6..12].copy_from_slice(&s);
    }
    f[IP + 8] -= 1;
    f[IP + 12..IP + 16].copy_from_slice(&NAT_IP);
    let at = if f[IP + 9] == ipproto::ICMP {
        L4 + 4
    } else {
        L4
    };
    f[at..at + 2].copy_from_slice(&nat_port.to_be_bytes());
    fix_checksums(&mut f);
    f
}

/// A reply as it must reach the guest: to the guest's MAC from the
/// gateway's, destination = the guest's address and port, TTL - 1.
fn dnat_expect(input: &[u8], flow: &Flow) -> Vec<u8> {
    let mut f = input.to_vec();
    f[0..6].copy_from_slice(&gmac(flow.guest));
    f[6..12].copy_from_slice(&GW_MAC);
    f[IP + 8] -= 1;
    f[IP + 16..IP + 20].copy_from_slice(&gip(flow.guest));
    let at = if f[IP + 9] == ipproto::ICMP {
        L4 + 4
    } else {
        L4 + 2
    };
    f[at..at + 2].copy_from_slice(&flow.gport.to_be_bytes());
    fix_checksums(&mut f);
    f
}

/// Offset of the quoted transport checksum in an ICMP error frame, if the
/// quote reaches it.
fn quoted_l4_csum(f: &[u8]) -> Option<usize> {
    let inner = L4 + 8;
    let il4 = inner + 20;
    let at = match *f.get(inner + 9)? {
        ipproto::UDP => il4 + 6,
        ipproto::TCP => il4 + 16,
        ipproto::ICMP => il4 + 2,
        _ => return None,
    };
    (at + 2 <= f.len()).then_some(at)
}

/// An ICMP error as it must reach the guest: outer destination and the
/// quoted source (address and port / echo id) are the guest's, TTL - 1,
/// MACs as for a reply; outer IP, ICMP and quoted IP checksums recomputed.
/// The quoted transport checksum, where the quote holds it, is the one of
/// the packet as the guest sent it (as Linux's NAT restores it): taken from
/// that packet, built anew from the guest's address and port.
fn icmp_err_expect(input: &[u8], flow: &Flow) -> Vec<u8> {
    let mut f = input.to_vec();
    f[0..6].copy_from_slice(&gmac(flow.guest));
    f[6..12].copy_from_slice(&GW_MAC);
    f[IP + 8] -= 1;
    f[IP + 16..IP + 20].copy_from_slice(&gip(flow.guest));
    let inner = L4 + 8;
    f[inner + 12..inner + 16].copy_from_slice(&gip(flow.guest));
    let il4 = inner + 20;
    let at = if f[inner + 9] == ipproto::ICMP {
        il4 + 4
    } else {
        il4
    };
    f[at..at + 2].copy_from_slice(&flow.gport.to_be_bytes());
    if let Some(c) = quoted_l4_csum(&f) {
        let quote_at = L4 + 8;
        let sent = flow.quoted_from(gip(flow.guest), flow.gport, f.len() - quote_at);
        f[c..c + 2].copy_from_slice(&sent[c - quote_at..c - quote_at + 2]);
    }
    fix_checksums(&mut f);
    f
}

/// Modify the IPv4 packet of `frame` with `edit`, then recompute its
/// checksums so that only the edit differs.
fn edit_ip(frame: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut ip = frame[IP..].to_vec();
    edit(&mut ip);
    let mut f = frame[..IP].to_vec();
    f.extend_from_slice(&ip);
    fix_checksums(&mut f);
    f
}

/// Insert 4 bytes of IP options (NOP, NOP, NOP, EOL).
fn with_ip_options(frame: &[u8]) -> Vec<u8> {
    edit_ip(frame, |ip| {
        ip.splice(20..20, [1, 1, 1, 0]);
        ip[0] = 0x46;
        let tot = u16::from_be_bytes([ip[2], ip[3]]) + 4;
        ip[2..4].copy_from_slice(&tot.to_be_bytes());
    })
}

fn set_frag(frame: &[u8], frag: u16) -> Vec<u8> {
    edit_ip(frame, |ip| ip[6..8].copy_from_slice(&frag.to_be_bytes()))
}

fn set_ttl(frame: &[u8], ttl: u8) -> Vec<u8> {
    edit_ip(frame, |ip| ip[8] = ttl)
}

// ---------------------------------------------------------------------------
// The table.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    Xdp,
    Tc,
}

/// What the program does with the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Translated for the flow and sent out of the uplink: XDP_REDIRECT /
    /// TC_ACT_REDIRECT, MACs from the FIB.
    Snat(Flow),
    /// TC only: translated, sent with bpf_redirect_neigh (TC_ACT_REDIRECT),
    /// MACs left for the kernel to fill in.
    SnatNeigh(Flow),
    /// A reply for pre-made mapping `i`, translated and redirected to its
    /// guest's port.
    Dnat(usize),
    /// A reply for pre-made mapping `i` whose guest MAC is not in the FDB:
    /// TC translates it, clones it to every port but the host port and
    /// drops the original. (XDP leaves it untouched to TC: a devmap
    /// broadcast cannot leave out the host port.)
    DnatFlood(usize),
    /// An ICMP error about pre-made mapping `i`, translated and redirected
    /// to its guest's port.
    IcmpErr(usize),
    /// Not translated: switched to the host port as any frame to the
    /// gateway (XDP_REDIRECT / TC_ACT_REDIRECT), bytes unchanged.
    Switched,
    /// TC only: too big for its guest's port (MTU `.0`) with DF: turned
    /// into ICMP "fragmentation needed" for its sender, redirected out of
    /// the uplink.
    FragNeeded(u16),
    /// Too big for its guest's port without DF: dropped (XDP_DROP /
    /// TC_ACT_SHOT), bytes unchanged.
    TooBig,
    /// XDP_PASS / TC_ACT_OK, bytes unchanged (to the host's stack, or from
    /// XDP to TC).
    Pass,
    /// The kernel refuses the input (EINVAL): BPF_PROG_TEST_RUN builds an
    /// skb for TC and rejects an IPv4 EtherType with less than a 20-byte
    /// header behind it, so the TC program never sees such a frame from a
    /// test run. Nothing may change.
    Refused,
    /// Not run for this program.
    Skip,
}

/// The counters a run adds (`out`/`in_` are out_xdp/in_xdp or
/// out_tc/in_tc, by program).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cnt {
    out: u64,
    in_: u64,
    icmp_errors: u64,
    in_miss: u64,
    allocs: u64,
    alloc_fail: u64,
    slow_path: u64,
    expired: u64,
    bad_source: u64,
    out_of_window: u64,
    foreign: u64,
    quota: u64,
    frag_needed: u64,
    too_big: u64,
}

const NONE: Cnt = Cnt {
    out: 0,
    in_: 0,
    icmp_errors: 0,
    in_miss: 0,
    allocs: 0,
    alloc_fail: 0,
    slow_path: 0,
    expired: 0,
    bad_source: 0,
    out_of_window: 0,
    foreign: 0,
    quota: 0,
    frag_needed: 0,
    too_big: 0,
};
const ALLOC: Cnt = Cnt {
    out: 1,
    allocs: 1,
    ..NONE
};
const REUSE: Cnt = Cnt { out: 1, ..NONE };
const SLOW: Cnt = Cnt {
    slow_path: 1,
    ..NONE
};
const BAD_SRC: Cnt = Cnt {
    bad_source: 1,
    ..NONE
};
const IN: Cnt = Cnt { in_: 1, ..NONE };
const ICMP_ERR: Cnt = Cnt {
    in_: 1,
    icmp_errors: 1,
    ..NONE
};
const MISS: Cnt = Cnt { in_miss: 1, ..NONE };
/// A guest's packet of another port's live mapping: not translated.
const FOREIGN: Cnt = Cnt { foreign: 1, ..NONE };
/// An RST or FIN from the LAN outside the guest's window: translated and
/// passed on, counted, the mapping left alone.
const OUT_OF_WINDOW: Cnt = Cnt {
    in_: 1,
    out_of_window: 1,
    ..NONE
};
const FAIL: Cnt = Cnt {
    alloc_fail: 1,
    slow_path: 1,
    ..NONE
};

impl Cnt {
    fn stats(&self, prog: Prog) -> NatStats {
        let (ox, ot, ix, it) = match prog {
            Prog::Xdp => (self.out, 0, self.in_, 0),
            Prog::Tc => (0, self.out, 0, self.in_),
        };
        NatStats {
            out_xdp: ox,
            out_tc: ot,
            in_xdp: ix,
            in_tc: it,
            icmp_errors: self.icmp_errors,
            in_miss: self.in_miss,
            allocs: self.allocs,
            alloc_fail: self.alloc_fail,
            slow_path: self.slow_path,
            expired: self.expired,
            bad_source: self.bad_source,
            out_of_window: self.out_of_window,
            foreign: self.foreign,
            quota: self.quota,
            frag_needed: self.frag_needed,
            too_big: self.too_big,
        }
    }
}

/// Which outside port a new mapping may get.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PortRule {
    /// Any in [port_lo, port_hi].
    InRange,
    Is(u16),
    /// In range, and none of these.
    Not(Vec<u16>),
}

/// The NAT tables after the run. Pre-made mappings not named are expected
/// unchanged; the tables must hold exactly what is listed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Post {
    /// Pre-made mapping `i` with this state, its time refreshed if it was
    /// idle over a second, otherwise unchanged.
    Touched(usize, u16),
    /// Pre-made mapping `i` gone from both tables.
    Gone(usize),
    /// A new mapping for the flow, in this state, made during the run.
    New(Flow, u16, PortRule),
}

#[derive(Clone, Debug)]
struct Expect {
    fate: Fate,
    cnt: Cnt,
    post: Vec<Post>,
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    ingress: Dev,
    frame: Vec<u8>,
    pre: Vec<Mapping>,
    /// NAT settings for this case.
    tweak: fn(&mut NatConfig),
    /// Guests whose MAC is not in the FDB.
    forget: Vec<usize>,
    xdp: Expect,
    tc: Expect,
}

fn no_tweak(_: &mut NatConfig) {}

impl Case {
    fn expect(&self, prog: Prog) -> &Expect {
        match prog {
            Prog::Xdp => &self.xdp,
            Prog::Tc => &self.tc,
        }
    }
    fn new(name: impl Into<String>, ingress: Dev, frame: Vec<u8>) -> Self {
        let e = Expect {
            fate: Fate::Skip,
            cnt: NONE,
            post: vec![],
        };
        Case {
            name: name.into(),
            ingress,
            frame,
            pre: vec![],
            tweak: no_tweak,
            forget: vec![],
            xdp: e.clone(),
            tc: e,
        }
    }
    fn pre(mut self, m: &[Mapping]) -> Self {
        self.pre = m.to_vec();
        self
    }
    fn tweak(mut self, t: fn(&mut NatConfig)) -> Self {
        self.tweak = t;
        self
    }
    fn forget(mut self, g: usize) -> Self {
        self.forget.push(g);
        self
    }
    /// The same outcome for XDP and TC.
    fn both(mut self, fate: Fate, cnt: Cnt, post: &[Post]) -> Self {
        let e = Expect {
            fate,
            cnt,
            post: post.to_vec(),
        };
        self.xdp = e.clone();
        self.tc = e;
        self
    }
    fn xdp(mut self, fate: Fate, cnt: Cnt, post: &[Post]) -> Self {
        self.xdp = Expect {
            fate,
            cnt,
            post: post.to_vec(),
        };
        self
    }
    fn tc(mut self, fate: Fate, cnt: Cnt, post: &[Post]) -> Self {
        self.tc = Expect {
            fate,
            cnt,
            post: post.to_vec(),
        };
        self
    }
    /// A guest's packet for a new flow: translated by both programs with a
    /// fresh mapping in `state`.
    fn fresh(self, flow: Flow, state: u16) -> Self {
        self.both(
            Fate::Snat(flow),
            ALLOC,
            &[Post::New(flow, state, PortRule::InRange)],
        )
    }
    /// Not translated by either program: switched to the host port, NAT
    /// tables unchanged.
    fn switched(self, cnt: Cnt) -> Self {
        self.both(Fate::Switched, cnt, &[])
    }
    /// Left to the host by both programs, tables unchanged.
    fn pass(self, cnt: Cnt) -> Self {
        self.both(Fate::Pass, cnt, &[])
    }
}

fn guest(g: usize) -> Dev {
    Dev::G(g)
}

const UP: Dev = Dev::Up;

/// The flows, mappings and frames the table's sections share.
struct Shared {
    u1: Flow,
    t1: Flow,
    i1: Flow,
    u_lan: Flow,
    u_nn: Flow,
    u_small: Flow,
    u1_g2: Flow,
    u1_r2: Flow,
    u_zero: Flow,
    syn: u8,
    ack: u8,
    m_u1: Mapping,
    m_t1: Mapping,
    m_i1: Mapping,
    udp_zero_frame: Vec<u8>,
    reply_zero: Vec<u8>,
}

fn shared() -> Shared {
    let u1 = udp(0, 40000, R1, 53);
    let t1 = tcp(0, 40001, R1, 80);
    let i1 = icmp(0, 0x1234, R1);
    let u_lan = udp(0, 40003, LAN_HOST, 53);
    let u_nn = udp(0, 40004, NN, 53);
    let u_small = udp(0, 40005, SMALL_MTU, 9);
    let u1_g2 = udp(1, 40000, R1, 53);
    let u1_r2 = udp(0, 40000, R2, 53);
    let u_zero = udp(1, 40006, R2, 69);
    let syn = tcp_flags::SYN;
    let ack = tcp_flags::ACK;
    let udp_zero_frame = Frame::new(GW_MAC, gmac(1))
        .udp_no_checksum(gip(1), 40006, R2, 69, b"no checksum")
        .build();
    let m_u1 = mapping(u1, P, 0, 5 * SEC);
    let m_t1 = mapping(t1, P2, NAT_S_SYN_OUT, 2 * SEC);
    let m_i1 = mapping(i1, P3, 0, 2 * SEC);
    let reply_zero = Frame::new(UP_MAC, NH_MAC)
        .udp_no_checksum(R1, 53, NAT_IP, P, b"answer, no checksum")
        .build();
    Shared {
        u1,
        t1,
        i1,
        u_lan,
        u_nn,
        u_small,
        u1_g2,
        u1_r2,
        u_zero,
        syn,
        ack,
        m_u1,
        m_t1,
        m_i1,
        udp_zero_frame,
        reply_zero,
    }
}

impl TableCase<Prog> for Case {
    fn name(&self) -> &str {
        &self.name
    }
    fn runs_on(&self, prog: Prog) -> bool {
        self.expect(prog).fate != Fate::Skip
    }
}

fn table() -> Vec<Case> {
    let s = shared();
    [
        outbound_new(&s),
        outbound_existing(&s),
        port_allocation(&s),
        outbound_not_translated(&s),
        outbound_malformed(&s),
        inbound_replies(&s),
        inbound_hosts_own(&s),
        inbound_malformed(&s),
        icmp_errors(&s),
        path_mtu(&s),
    ]
    .concat()
}

/// Outbound: new flows.
fn outbound_new(s: &Shared) -> Vec<Case> {
    use Fate::*;
    use Post::*;
    let Shared {
        u1,
        t1,
        i1,
        u_lan,
        u_nn,
        u_small,
        u_zero,
        syn,
        ack,
        ref udp_zero_frame,
        ..
    } = *s;
    vec![
        Case::new("UDP from a guest: new mapping, translated", guest(0), u1.out_frame(0, b"query"))
            .fresh(u1, 0),
        Case::new(
            "UDP with an odd-length payload: translated",
            guest(0),
            u1.out_frame(0, b"odd"),
        )
        .fresh(u1, 0),
        Case::new(
            "UDP without a checksum (0): translated, the checksum stays 0",
            guest(1),
            udp_zero_frame.clone(),
        )
        .fresh(u_zero, 0),
        Case::new("TCP SYN: new mapping in syn_sent", guest(0), t1.out_frame(syn, b""))
            .fresh(t1, NAT_S_SYN_OUT),
        Case::new(
            "TCP SYN with options: translated",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .tcp(
                    gip(0),
                    R1,
                    &TcpHeader::new(40001, 80, syn).options(&[2, 4, 5, 0xb4, 1, 3, 3, 7]),
                    b"",
                )
                .build(),
        )
        .fresh(t1, NAT_S_SYN_OUT),
        // A TCP flow is mapped only from its first SYN: one that began on
        // the kernel's path stays there.
        // Bigger than the uplink's MTU (or a route's): the kernel's path,
        // which answers "fragmentation needed" as a router does.
        Case::new(
            "UDP of 1100 bytes with an uplink MTU of 1000: not mapped, the kernel's",
            guest(0),
            u1.out_frame(0, &[7u8; 1072]),
        )
        .tweak(|c| c.mtu = 1000)
        .switched(SLOW),
        Case::new(
            "UDP of 1000 bytes with an uplink MTU of 1000: translated",
            guest(0),
            u1.out_frame(0, &[7u8; 972]),
        )
        .tweak(|c| c.mtu = 1000)
        .fresh(u1, 0),
        Case::new(
            "TCP ACK with data and no mapping: not mapped, the kernel's",
            guest(0),
            t1.out_frame(ack | tcp_flags::PSH, b"GET / HTTP/1.0\r\n\r\n"),
        )
        .switched(SLOW),
        Case::new(
            "TCP SYN-ACK from a guest with no mapping: not mapped, the kernel's",
            guest(0),
            t1.out_frame(syn | ack, b""),
        )
        .switched(SLOW),
        Case::new(
            "TCP RST with no mapping: not mapped, the kernel's",
            guest(0),
            t1.out_frame(tcp_flags::RST, b""),
        )
        .switched(SLOW),
        Case::new(
            "TCP FIN with no mapping: not mapped, the kernel's",
            guest(0),
            t1.out_frame(tcp_flags::FIN | ack, b""),
        )
        .switched(SLOW),
        Case::new(
            "TCP SYN with FIN set: mapped (only SYN without ACK counts)",
            guest(0),
            t1.out_frame(syn | tcp_flags::FIN, b""),
        )
        .fresh(t1, NAT_S_SYN_OUT | NAT_S_FIN_OUT),
        Case::new(
            "ICMP echo request: new mapping, echo id translated",
            guest(0),
            i1.out_frame(0, b"ping payload"),
        )
        .fresh(i1, 0),
        Case::new(
            "UDP to a host on the uplink's LAN: its own MAC as next hop",
            guest(0),
            u_lan.out_frame(0, b"lan"),
        )
        .fresh(u_lan, 0),
        Case::new(
            "UDP from guest 3 with TTL 2: translated, leaves with TTL 1",
            guest(2),
            set_ttl(&udp(2, 5000, R1, 53).out_frame(0, b"ttl2"), 2),
        )
        .fresh(udp(2, 5000, R1, 53), 0),
        Case::new(
            "1514-byte UDP frame (IP 1500): translated by XDP",
            guest(0),
            u1.out_frame(0, &[0x5a; 1500 - 28]),
        )
        .fresh(u1, 0),
        Case::new(
            "2000-byte UDP frame, jumbo uplink: XDP passes it (over 1518), TC translates it",
            guest(0),
            u1.out_frame(0, &[0x5b; 2000 - 42]),
        )
        .tweak(|c| c.mtu = 9000)
        .xdp(Pass, NONE, &[])
        .tc(Snat(u1), ALLOC, &[New(u1, 0, PortRule::InRange)]),
        Case::new(
            "UDP of 1000 bytes on a route with MTU 1000: translated",
            guest(0),
            u_small.out_frame(0, &[1; 1000 - 28]),
        )
        .fresh(u_small, 0),
        Case::new(
            "UDP of 1001 bytes on a route with MTU 1000: FRAG_NEEDED, the kernel's",
            guest(0),
            u_small.out_frame(0, &[1; 1001 - 28]),
        )
        .switched(SLOW),
        Case::new(
            "next hop without a neighbour entry: XDP passes to TC, TC translates and redirect_neigh",
            guest(0),
            u_nn.out_frame(0, b"nn"),
        )
        .xdp(Pass, NONE, &[])
        .tc(SnatNeigh(u_nn), ALLOC, &[New(u_nn, 0, PortRule::InRange)]),
        Case::new(
            "uplink without XDP tx (not in the devmap): XDP passes, TC translates",
            guest(0),
            u1.out_frame(0, b"veth uplink"),
        )
        .tweak(|c| c.flags &= !NAT_F_XDP_TX)
        .xdp(Pass, NONE, &[])
        .tc(Snat(u1), ALLOC, &[New(u1, 0, PortRule::InRange)]),
        Case::new(
            "CHECKSUM_PARTIAL-looking UDP from a guest: XDP leaves it to TC",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .udp_partial(gip(0), 40000, R1, 53, b"offloaded")
                .build(),
        )
        .xdp(Pass, NONE, &[]),
        Case::new(
            "CHECKSUM_PARTIAL-looking TCP SYN from a guest: XDP leaves it to TC",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .tcp_partial(gip(0), R1, &TcpHeader::new(40001, 80, tcp_flags::SYN), b"")
                .build(),
        )
        .xdp(Pass, NONE, &[]),
        Case::new(
            "CHECKSUM_PARTIAL-looking UDP of a mapping with a fresh next hop: XDP leaves it to TC, untranslated",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .udp_partial(gip(0), 40000, R1, 53, b"offloaded")
                .build(),
        )
        .pre(&[mapping(u1, P, NAT_S_REPLIED, SEC / 2).with_hop(NH2_MAC, SEC / 4)])
        .xdp(Pass, NONE, &[]),
        Case::new(
            "CHECKSUM_PARTIAL-looking UDP to the gateway's own address: not NAT, and XDP leaves it to TC",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .udp_partial(gip(0), 40000, GW_IP, 53, b"offloaded")
                .build(),
        )
        .xdp(Pass, NONE, &[]),
    ]
}

/// Outbound: existing mappings.
fn outbound_existing(s: &Shared) -> Vec<Case> {
    use Fate::*;
    use Post::*;
    let Shared {
        u1,
        t1,
        i1,
        u1_g2,
        u1_r2,
        syn,
        ack,
        ..
    } = *s;
    vec![
        Case::new(
            "UDP of a live mapping (idle 5 s): reused, time refreshed",
            guest(0),
            u1.out_frame(0, b"again"),
        )
        .pre(&[mapping(u1, P, 0, 5 * SEC)])
        .both(Snat(u1), REUSE, &[Touched(0, 0)]),
        Case::new(
            "UDP of a live mapping idle 0.2 s: reused, time not rewritten",
            guest(0),
            u1.out_frame(0, b"again"),
        )
        .pre(&[mapping(u1, P, NAT_S_REPLIED, SEC / 5)])
        .both(Snat(u1), REUSE, &[Touched(0, NAT_S_REPLIED)]),
        Case::new(
            "TCP ACK of an established mapping: reused, state kept",
            guest(0),
            t1.out_frame(ack, b"data"),
        )
        .pre(&[mapping(t1, P2, NAT_S_SYN_OUT | NAT_S_REPLIED, 3 * SEC)])
        .both(Snat(t1), REUSE, &[Touched(0, NAT_S_SYN_OUT | NAT_S_REPLIED)]),
        Case::new(
            "ICMP echo of a live mapping: reused",
            guest(0),
            i1.out_frame(0, b"ping 2"),
        )
        .pre(&[mapping(i1, P3, NAT_S_REPLIED, 2 * SEC)])
        .both(Snat(i1), REUSE, &[Touched(0, NAT_S_REPLIED)]),
        // The next-hop cache: a fresh one is used as is (no route lookup:
        // the frame leaves for the cached MAC, not the FIB's); a stale one
        // is looked up again and replaced.
        // A fresh hop also spares the inbound lookup (the check that
        // cached it refreshed the mapping): idle as long as the hop's age.
        Case::new(
            "UDP of a mapping with a next hop cached 0.25 s ago: sent to the cached MAC, inbound entry untouched",
            guest(0),
            u1.out_frame(0, b"cached"),
        )
        .pre(&[mapping(u1, P, NAT_S_REPLIED, SEC / 2).with_hop(NH2_MAC, SEC / 4)])
        .both(Snat(u1), REUSE, &[Touched(0, NAT_S_REPLIED)]),
        Case::new(
            "a fresh next hop and no inbound entry (evicted): still translated, for at most NAT_HOP_NS",
            guest(0),
            u1.out_frame(0, b"evicted"),
        )
        .pre(&[Mapping {
            inn: false,
            ..mapping(u1, P, NAT_S_REPLIED, SEC / 2).with_hop(NH2_MAC, SEC / 4)
        }])
        .both(Snat(u1), REUSE, &[]),
        Case::new(
            "TCP FIN of a mapping with a fresh next hop: the inbound state still follows",
            guest(0),
            t1.out_frame(tcp_flags::FIN | ack, b""),
        )
        .pre(&[
            mapping(t1, P2, NAT_S_SYN_OUT | NAT_S_REPLIED, SEC / 2).with_hop(NH2_MAC, SEC / 4),
        ])
        .both(
            Snat(t1),
            REUSE,
            &[Touched(0, NAT_S_SYN_OUT | NAT_S_REPLIED | NAT_S_FIN_OUT)],
        ),
        Case::new(
            "a fresh next hop under a 3 s UDP timeout: the inbound entry is still checked and refreshed",
            guest(0),
            u1.out_frame(0, b"short timeout"),
        )
        .tweak(|c| {
            c.udp_ns = 3 * SEC;
            c.udp_stream_ns = 3 * SEC;
        })
        .pre(&[mapping(u1, P, NAT_S_REPLIED, 2 * SEC).with_hop(NH2_MAC, SEC / 4)])
        .both(Snat(u1), REUSE, &[Touched(0, NAT_S_REPLIED)]),
        Case::new(
            "UDP of a mapping with a next hop cached 1.5 s ago: looked up again, cache refreshed",
            guest(0),
            u1.out_frame(0, b"stale"),
        )
        .pre(&[mapping(u1, P, NAT_S_REPLIED, 2 * SEC).with_hop(NH2_MAC, 3 * SEC / 2)])
        .both(Snat(u1), REUSE, &[Touched(0, NAT_S_REPLIED)]),
        Case::new(
            "a flow routed elsewhere since its next hop was cached 0.25 s ago: still sent to it",
            guest(0),
            udp(0, 1000, OTHER_NET, 53).out_frame(0, b"moved"),
        )
        .pre(&[mapping(udp(0, 1000, OTHER_NET, 53), P, NAT_S_REPLIED, SEC / 2)
            .with_hop(NH_MAC, SEC / 4)])
        .both(
            Snat(udp(0, 1000, OTHER_NET, 53)),
            REUSE,
            &[Touched(0, NAT_S_REPLIED)],
        ),
        // (Idle 0.2 s: finding the mapping refreshes it, and rewrites the
        // time of one idle over a second, which "unchanged" would flag.)
        Case::new(
            "a flow routed elsewhere, its cached next hop 1.5 s old: the kernel's path",
            guest(0),
            udp(0, 1000, OTHER_NET, 53).out_frame(0, b"moved"),
        )
        .pre(&[mapping(udp(0, 1000, OTHER_NET, 53), P, NAT_S_REPLIED, SEC / 5)
            .with_hop(NH_MAC, 3 * SEC / 2)])
        .switched(SLOW),
        Case::new(
            "same guest port and remote from another guest: a different mapping",
            guest(1),
            u1_g2.out_frame(0, b"g2"),
        )
        .pre(&[mapping(u1, P, 0, 0)])
        .both(
            Snat(u1_g2),
            ALLOC,
            &[New(u1_g2, 0, PortRule::Not(vec![P]))],
        ),
        // A mapping belongs to the port that made it (SECURITY.md): a guest
        // sending with another guest's address and ports neither uses nor
        // changes its live mapping; an expired one it replaces as anyone.
        Case::new(
            "UDP from another port with guest 1's address and ports: not translated, guest 1's mapping unchanged (foreign)",
            guest(1),
            u1.out_frame(0, b"spoofed"),
        )
        .pre(&[mapping(u1, P, NAT_S_REPLIED, 2 * SEC)])
        .switched(FOREIGN),
        Case::new(
            "the same with a fresh next hop cached: not translated either (foreign)",
            guest(1),
            u1.out_frame(0, b"spoofed"),
        )
        .pre(&[mapping(u1, P, NAT_S_REPLIED, SEC / 2).with_hop(NH2_MAC, SEC / 4)])
        .switched(FOREIGN),
        Case::new(
            "TCP RST from another port on guest 1's established flow: not translated, the mapping stays established (foreign)",
            guest(1),
            t1.out_frame(tcp_flags::RST | ack, b""),
        )
        .pre(&[mapping(t1, P2, NAT_S_SYN_OUT | NAT_S_REPLIED, 2 * SEC)])
        .switched(FOREIGN),
        Case::new(
            "TCP SYN from another port on guest 1's reset flow: not restarted (foreign)",
            guest(1),
            t1.out_frame(syn, b""),
        )
        .pre(&[mapping(t1, P2, NAT_S_SYN_OUT | NAT_S_REPLIED | NAT_S_RST, 2 * SEC)])
        .switched(FOREIGN),
        Case::new(
            "UDP from another port on guest 1's expired mapping: retired, a new mapping owned by the sender",
            guest(1),
            u1.out_frame(0, b"late"),
        )
        .pre(&[mapping(u1, P, 0, (NAT_UDP_SECS + 1) * SEC)])
        .both(
            Snat(u1),
            Cnt {
                expired: 1,
                ..ALLOC
            },
            &[Gone(0), New(u1, 0, PortRule::InRange)],
        ),
        Case::new(
            "same guest flow to another remote: its own mapping",
            guest(0),
            u1_r2.out_frame(0, b"r2"),
        )
        .pre(&[mapping(u1, P, 0, 0)])
        .both(Snat(u1_r2), ALLOC, &[New(u1_r2, 0, PortRule::InRange)]),
        Case::new(
            "own mapping past the UDP timeout: not used, replaced by a new one",
            guest(0),
            u1.out_frame(0, b"late"),
        )
        .pre(&[mapping(u1, P, 0, (NAT_UDP_SECS + 1) * SEC)])
        .both(
            Snat(u1),
            Cnt {
                expired: 1,
                ..ALLOC
            },
            &[Gone(0), New(u1, 0, PortRule::InRange)],
        ),
        Case::new(
            "TCP ACK of an expired mapping: retired (expired), not mapped again, the kernel's",
            guest(0),
            t1.out_frame(ack, b"late data"),
        )
        .pre(&[mapping(
            t1,
            P2,
            NAT_S_SYN_OUT | NAT_S_REPLIED | NAT_S_FIN_OUT | NAT_S_FIN_IN,
            (NAT_TCP_CLOSING_SECS + 1) * SEC,
        )])
        .both(
            Switched,
            Cnt {
                expired: 1,
                ..SLOW
            },
            &[Gone(0)],
        ),
        Case::new(
            "TCP SYN of an expired mapping: replaced by a new one",
            guest(0),
            t1.out_frame(syn, b""),
        )
        .pre(&[mapping(
            t1,
            P2,
            NAT_S_SYN_OUT | NAT_S_REPLIED | NAT_S_RST,
            (NAT_TCP_CLOSING_SECS + 1) * SEC,
        )])
        .both(
            Snat(t1),
            Cnt {
                expired: 1,
                ..ALLOC
            },
            &[Gone(0), New(t1, NAT_S_SYN_OUT, PortRule::InRange)],
        ),
        Case::new(
            "own NAT_OUT entry without its NAT_IN entry: replaced",
            guest(0),
            u1.out_frame(0, b"half"),
        )
        .pre(&[Mapping {
            inn: false,
            ..mapping(u1, P, 0, 0)
        }])
        .both(
            Snat(u1),
            Cnt {
                expired: 1,
                ..ALLOC
            },
            &[Gone(0), New(u1, 0, PortRule::InRange)],
        ),
    ]
}

/// Port allocation.
fn port_allocation(s: &Shared) -> Vec<Case> {
    use Fate::*;
    use Post::*;
    let Shared { u1, u1_g2, .. } = *s;
    vec![
        Case::new(
            "1-port range taken by another guest's live mapping to the same remote: alloc_fail, the kernel's",
            guest(0),
            u1.out_frame(0, b"x"),
        )
        .pre(&[mapping(u1_g2, P, 0, 0)])
        .tweak(|c| (c.port_lo, c.port_hi) = (P, P))
        .switched(FAIL),
        Case::new(
            "1-port range taken for another remote only: the port is reused",
            guest(0),
            u1.out_frame(0, b"x"),
        )
        .pre(&[mapping(udp(1, 40000, R2, 53), P, 0, 0)])
        .tweak(|c| (c.port_lo, c.port_hi) = (P, P))
        .both(Snat(u1), ALLOC, &[New(u1, 0, PortRule::Is(P))]),
        Case::new(
            "1-port range taken by a TCP mapping: free for UDP",
            guest(0),
            u1.out_frame(0, b"x"),
        )
        .pre(&[mapping(tcp(1, 40000, R1, 53), P, NAT_S_SYN_OUT, 0)])
        .tweak(|c| (c.port_lo, c.port_hi) = (P, P))
        .both(Snat(u1), ALLOC, &[New(u1, 0, PortRule::Is(P))]),
        Case::new(
            "2-port range, low port taken: the high one",
            guest(0),
            u1.out_frame(0, b"x"),
        )
        .pre(&[mapping(u1_g2, P, 0, 0)])
        .tweak(|c| (c.port_lo, c.port_hi) = (P, P + 1))
        .both(Snat(u1), ALLOC, &[New(u1, 0, PortRule::Is(P + 1))]),
        Case::new(
            "2-port range, high port taken: the low one",
            guest(0),
            u1.out_frame(0, b"x"),
        )
        .pre(&[mapping(u1_g2, P + 1, 0, 0)])
        .tweak(|c| (c.port_lo, c.port_hi) = (P, P + 1))
        .both(Snat(u1), ALLOC, &[New(u1, 0, PortRule::Is(P))]),
        Case::new(
            "3-port range, two taken: the third",
            guest(0),
            u1.out_frame(0, b"x"),
        )
        .pre(&[
            mapping(u1_g2, P, 0, 0),
            mapping(udp(2, 40000, R1, 53), P + 2, 0, 0),
        ])
        .tweak(|c| (c.port_lo, c.port_hi) = (P, P + 2))
        .both(Snat(u1), ALLOC, &[New(u1, 0, PortRule::Is(P + 1))]),
        Case::new(
            "2-port range, both taken (exhausted for this remote): alloc_fail, the kernel's",
            guest(0),
            u1.out_frame(0, b"x"),
        )
        .pre(&[
            mapping(u1_g2, P, 0, 0),
            mapping(udp(2, 40000, R1, 53), P + 1, 0, 0),
        ])
        .tweak(|c| (c.port_lo, c.port_hi) = (P, P + 1))
        .switched(FAIL),
        Case::new(
            "1-port range held by an expired mapping: reclaimed (both its entries), expired counted",
            guest(0),
            u1.out_frame(0, b"x"),
        )
        .pre(&[mapping(u1_g2, P, 0, (NAT_UDP_SECS + 5) * SEC)])
        .tweak(|c| (c.port_lo, c.port_hi) = (P, P))
        .both(
            Snat(u1),
            Cnt {
                expired: 1,
                ..ALLOC
            },
            &[Gone(0), New(u1, 0, PortRule::Is(P))],
        ),
        Case::new(
            "1-port range held by a replied UDP mapping idle 100 s (udp_stream 120 s): still live",
            guest(0),
            u1.out_frame(0, b"x"),
        )
        .pre(&[mapping(u1_g2, P, NAT_S_REPLIED, 100 * SEC)])
        .tweak(|c| (c.port_lo, c.port_hi) = (P, P))
        .switched(FAIL),
        Case::new(
            "port_hi below port_lo: alloc_fail",
            guest(0),
            u1.out_frame(0, b"x"),
        )
        .tweak(|c| (c.port_lo, c.port_hi) = (P + 1, P))
        .switched(FAIL),
    ]
}

/// Outbound: not translated.
fn outbound_not_translated(s: &Shared) -> Vec<Case> {
    let Shared { u1, t1, syn, .. } = *s;
    vec![
        Case::new(
            "UDP to another guest in the subnet (via the gateway's MAC): switched, not counted",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .udp(gip(0), 1000, gip(1), 2000, b"local")
                .build(),
        )
        .switched(NONE),
        Case::new(
            "ICMP echo to the gateway address: switched",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .icmp_echo(gip(0), GW_IP, false, 9, 1, b"gw")
                .build(),
        )
        .switched(NONE),
        Case::new(
            "UDP to the masquerade address itself: switched",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .udp(gip(0), 1000, NAT_IP, 53, b"host")
                .build(),
        )
        .switched(NONE),
        // XDP hands guest→LAN traffic for a veth uplink to TC up front;
        // traffic for the host itself stays XDP's to switch.
        Case::new(
            "ICMP echo to the gateway address, veth uplink: still switched by XDP",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .icmp_echo(gip(0), GW_IP, false, 9, 1, b"gw")
                .build(),
        )
        .tweak(|c| c.flags &= !NAT_F_XDP_TX)
        .switched(NONE),
        Case::new(
            "UDP to the masquerade address itself, veth uplink: still switched by XDP",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .udp(gip(0), 1000, NAT_IP, 53, b"host")
                .build(),
        )
        .tweak(|c| c.flags &= !NAT_F_XDP_TX)
        .switched(NONE),
        Case::new(
            "UDP from a source outside the guests' subnet: never masqueraded, to the kernel \
             (which drops it)",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .udp([10, 99, 0, 5], 1000, R1, 53, b"spoof")
                .build(),
        )
        .switched(BAD_SRC),
        Case::new(
            "TCP SYN from a source outside the guests' subnet: no mapping",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .tcp(
                    [172, 16, 0, 9],
                    R1,
                    &TcpHeader::new(1000, 80, tcp_flags::SYN),
                    b"",
                )
                .build(),
        )
        .switched(BAD_SRC),
        Case::new(
            "first fragment (MF): slow path",
            guest(0),
            set_frag(&u1.out_frame(0, b"frag"), 0x2000),
        )
        .switched(SLOW),
        Case::new(
            "later fragment (offset 185): slow path",
            guest(0),
            set_frag(&u1.out_frame(0, b"frag"), 185),
        )
        .switched(SLOW),
        Case::new(
            "IPv4 options: slow path",
            guest(0),
            with_ip_options(&u1.out_frame(0, b"opts")),
        )
        .switched(SLOW),
        Case::new(
            "TTL 1: slow path (the kernel sends time exceeded)",
            guest(0),
            set_ttl(&u1.out_frame(0, b"ttl1"), 1),
        )
        .switched(SLOW),
        Case::new(
            "TTL 0: slow path",
            guest(0),
            set_ttl(&t1.out_frame(syn, b""), 0),
        )
        .switched(SLOW),
        Case::new(
            "GRE: slow path",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .ipv4(
                    gip(0),
                    R1,
                    ipproto::GRE,
                    64,
                    &[0, 0, 0x08, 0x00, 0x45, 0, 0, 20],
                )
                .build(),
        )
        .switched(SLOW),
        Case::new(
            "ICMP port unreachable from a guest: slow path",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .icmp_error(gip(0), R1, 3, 3, [0; 4], &u1.quoted(P, 28))
                .build(),
        )
        .switched(SLOW),
        Case::new(
            "ICMP echo reply from a guest: slow path",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .icmp_echo(gip(0), R1, true, 77, 1, b"pong")
                .build(),
        )
        .switched(SLOW),
        Case::new(
            "UDP to a network routed via another device: slow path",
            guest(0),
            udp(0, 1000, OTHER_NET, 53).out_frame(0, b"other"),
        )
        .switched(SLOW),
        Case::new(
            "UDP to an unreachable route: slow path",
            guest(0),
            udp(0, 1000, UNREACH, 53).out_frame(0, b"unreach"),
        )
        .switched(SLOW),
        Case::new(
            "UDP to the uplink LAN's broadcast address: slow path",
            guest(0),
            udp(0, 1000, [192, 168, 1, 255], 53).out_frame(0, b"bcast"),
        )
        .switched(SLOW),
        Case::new(
            "ARP to the gateway's MAC: switched, not counted",
            guest(0),
            Frame::new(GW_MAC, gmac(0)).arp_reply(gip(0), GW_IP).build(),
        )
        .switched(NONE),
        Case::new(
            "IPv6 to the gateway's MAC: switched, not counted",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .ethertype(umlbr_tests::wire::ethertype::IPV6)
                .pattern(60)
                .build(),
        )
        .switched(NONE),
        Case::new(
            "802.1Q-tagged UDP to the gateway's MAC: switched, not counted",
            guest(0),
            Frame::new(GW_MAC, gmac(0))
                .vlan(5, 0)
                .udp(gip(0), 40000, R1, 53, b"tagged")
                .build(),
        )
        .switched(NONE),
        Case::new(
            "UDP to a public address but another guest's MAC: plain switching, no NAT",
            guest(0),
            Frame::new(gmac(1), gmac(0))
                .udp(gip(0), 40000, R1, 53, b"not via gw")
                .build(),
        )
        .switched(NONE),
    ]
}

/// Outbound: malformed.
fn outbound_malformed(s: &Shared) -> Vec<Case> {
    use Fate::*;
    let Shared { u1, t1, syn, .. } = *s;
    vec![
        Case::new(
            "IPv4 header cut at 10 bytes: switched, no crash (TC: refused by the test run)",
            guest(0),
            u1.out_frame(0, b"x")[..IP + 10].to_vec(),
        )
        .switched(NONE)
        .tc(Refused, NONE, &[]),
        Case::new(
            "IPv4 header and 4 bytes of UDP: switched",
            guest(0),
            u1.out_frame(0, b"x")[..L4 + 4].to_vec(),
        )
        .switched(NONE),
        Case::new(
            "TCP header cut at 12 bytes: switched",
            guest(0),
            t1.out_frame(syn, b"")[..L4 + 12].to_vec(),
        )
        .switched(NONE),
    ]
}

/// Inbound: replies.
fn inbound_replies(s: &Shared) -> Vec<Case> {
    use Fate::*;
    use Post::*;
    let Shared {
        u1,
        t1,
        i1,
        u_lan,
        syn,
        ack,
        m_u1,
        m_t1,
        m_i1,
        ref reply_zero,
        ..
    } = *s;
    vec![
        Case::new(
            "UDP reply: translated to the guest",
            UP,
            u1.reply_frame(P, 0, b"answer"),
        )
        .pre(&[m_u1])
        .both(Dnat(0), IN, &[Touched(0, NAT_S_REPLIED)]),
        Case::new(
            "UDP reply without a checksum: translated, stays 0",
            UP,
            reply_zero.clone(),
        )
        .pre(&[m_u1])
        .both(Dnat(0), IN, &[Touched(0, NAT_S_REPLIED)]),
        Case::new(
            "UDP reply to a mapping of guest 3: to guest 3's port",
            UP,
            udp(2, 7000, R2, 123).reply_frame(P2, 0, b"ntp"),
        )
        .pre(&[m_u1, mapping(udp(2, 7000, R2, 123), P2, 0, 5 * SEC)])
        .both(Dnat(1), IN, &[Touched(1, NAT_S_REPLIED)]),
        Case::new(
            "TCP SYN-ACK: translated, mapping established",
            UP,
            t1.reply_frame(P2, syn | ack, b""),
        )
        .pre(&[m_t1])
        .both(Dnat(0), IN, &[Touched(0, NAT_S_SYN_OUT | NAT_S_REPLIED)]),
        Case::new(
            "TCP FIN from the remote at the guest's acknowledgment: closing",
            UP,
            t1.reply_frame(P2, tcp_flags::FIN | ack, b""),
        )
        .pre(&[mapping(t1, P2, NAT_S_SYN_OUT | NAT_S_REPLIED, 2 * SEC)])
        .both(
            Dnat(0),
            IN,
            &[Touched(0, NAT_S_SYN_OUT | NAT_S_REPLIED | NAT_S_FIN_IN)],
        ),
        // RST and FIN from the LAN count only inside the guest's window
        // (SECURITY.md): a blind attacker's, with any other sequence number,
        // is passed to the guest (whose TCP judges it) but leaves the
        // mapping as it was, time included, and is counted. (These cases
        // replace one that had any RST reset the mapping.)
        Case::new(
            "TCP RST from the remote at the guest's acknowledgment: reset",
            UP,
            t1.reply_seg(P2, tcp_flags::RST, GUEST_ACK, 0),
        )
        .pre(&[mapping(t1, P2, NAT_S_SYN_OUT | NAT_S_REPLIED, 2 * SEC)])
        .both(
            Dnat(0),
            IN,
            &[Touched(0, NAT_S_SYN_OUT | NAT_S_REPLIED | NAT_S_RST)],
        ),
        Case::new(
            "TCP RST at the last byte of the guest's window: reset",
            UP,
            t1.reply_seg(P2, tcp_flags::RST | ack, GUEST_ACK + GUEST_WND - 1, 7),
        )
        .pre(&[mapping(t1, P2, NAT_S_SYN_OUT | NAT_S_REPLIED, 2 * SEC)])
        .both(
            Dnat(0),
            IN,
            &[Touched(0, NAT_S_SYN_OUT | NAT_S_REPLIED | NAT_S_RST)],
        ),
        Case::new(
            "TCP RST just past the guest's window: passed on, mapping unchanged (out_of_window)",
            UP,
            t1.reply_seg(P2, tcp_flags::RST, GUEST_ACK + GUEST_WND, 0),
        )
        .pre(&[mapping(t1, P2, NAT_S_SYN_OUT | NAT_S_REPLIED, 2 * SEC)])
        .both(Dnat(0), OUT_OF_WINDOW, &[]),
        Case::new(
            "TCP RST one byte before the guest's acknowledgment: passed on, mapping unchanged (out_of_window)",
            UP,
            t1.reply_seg(P2, tcp_flags::RST, GUEST_ACK - 1, 0),
        )
        .pre(&[mapping(t1, P2, NAT_S_SYN_OUT | NAT_S_REPLIED, 2 * SEC)])
        .both(Dnat(0), OUT_OF_WINDOW, &[]),
        Case::new(
            "blind TCP RST half the sequence space away: passed on, mapping unchanged (out_of_window)",
            UP,
            t1.reply_seg(P2, tcp_flags::RST | ack, GUEST_ACK.wrapping_add(1 << 31), 2000),
        )
        .pre(&[mapping(t1, P2, NAT_S_SYN_OUT | NAT_S_REPLIED, 2 * SEC)])
        .both(Dnat(0), OUT_OF_WINDOW, &[]),
        Case::new(
            "blind TCP FIN outside the guest's window: passed on, mapping unchanged (out_of_window)",
            UP,
            t1.reply_seg(P2, tcp_flags::FIN | ack, GUEST_ACK.wrapping_add(1 << 31), 2000),
        )
        .pre(&[mapping(t1, P2, NAT_S_SYN_OUT | NAT_S_REPLIED, 2 * SEC)])
        .both(Dnat(0), OUT_OF_WINDOW, &[]),
        Case::new(
            "TCP RST+ACK acknowledging the guest's SYN (syn_sent): reset",
            UP,
            t1.reply_seg(P2, tcp_flags::RST | ack, 0, GUEST_SEQ_NEXT),
        )
        .pre(&[m_t1])
        .both(
            Dnat(0),
            IN,
            &[Touched(0, NAT_S_SYN_OUT | NAT_S_REPLIED | NAT_S_RST)],
        ),
        Case::new(
            "TCP RST+ACK not acknowledging the guest's SYN (syn_sent): passed on, mapping unchanged (out_of_window)",
            UP,
            t1.reply_seg(P2, tcp_flags::RST | ack, 0, GUEST_SEQ_NEXT + 1),
        )
        .pre(&[m_t1])
        .both(Dnat(0), OUT_OF_WINDOW, &[]),
        Case::new(
            "TCP RST without ACK to a guest that acknowledged nothing (syn_sent): passed on, mapping unchanged (out_of_window)",
            UP,
            t1.reply_frame(P2, tcp_flags::RST, b""),
        )
        .pre(&[m_t1])
        .both(Dnat(0), OUT_OF_WINDOW, &[]),
        Case::new(
            "TCP RST to a mapping without its NAT_OUT entry: nothing to judge it by, passed on, unchanged (out_of_window)",
            UP,
            t1.reply_seg(P2, tcp_flags::RST, GUEST_ACK, 0),
        )
        .pre(&[Mapping {
            out: false,
            ..mapping(t1, P2, NAT_S_SYN_OUT | NAT_S_REPLIED, 2 * SEC)
        }])
        .both(Dnat(0), OUT_OF_WINDOW, &[]),
        Case::new(
            "ICMP echo reply: translated, echo id restored",
            UP,
            i1.reply_frame(P3, 0, b"ping payload"),
        )
        .pre(&[m_i1])
        .both(Dnat(0), IN, &[Touched(0, NAT_S_REPLIED)]),
        Case::new(
            "reply from a host on the uplink's LAN: translated",
            UP,
            u_lan.reply_frame(P, 0, b"lan answer"),
        )
        .pre(&[mapping(u_lan, P, 0, 5 * SEC)])
        .both(Dnat(0), IN, &[Touched(0, NAT_S_REPLIED)]),
        Case::new(
            "UDP reply within the timeout (idle 29 s): translated",
            UP,
            u1.reply_frame(P, 0, b"late answer"),
        )
        .pre(&[mapping(u1, P, 0, (NAT_UDP_SECS - 1) * SEC)])
        .both(Dnat(0), IN, &[Touched(0, NAT_S_REPLIED)]),
        Case::new(
            "UDP reply past the timeout (idle 31 s): not used, the host's (in_miss)",
            UP,
            u1.reply_frame(P, 0, b"too late"),
        )
        .pre(&[mapping(u1, P, 0, (NAT_UDP_SECS + 1) * SEC)])
        .pass(MISS),
        Case::new(
            "TCP reply to a closed mapping idle 11 s (closing timeout 10 s): not used",
            UP,
            t1.reply_frame(P2, ack, b""),
        )
        .pre(&[mapping(
            t1,
            P2,
            NAT_S_SYN_OUT | NAT_S_REPLIED | NAT_S_FIN_OUT | NAT_S_FIN_IN,
            (NAT_TCP_CLOSING_SECS + 1) * SEC,
        )])
        .pass(MISS),
        Case::new(
            "TCP reply to an established mapping idle 11 s: translated",
            UP,
            t1.reply_frame(P2, ack, b"data"),
        )
        .pre(&[mapping(
            t1,
            P2,
            NAT_S_SYN_OUT | NAT_S_REPLIED,
            (NAT_TCP_CLOSING_SECS + 1) * SEC,
        )])
        .both(Dnat(0), IN, &[Touched(0, NAT_S_SYN_OUT | NAT_S_REPLIED)]),
        Case::new(
            "reply whose guest MAC is not in the FDB: TC translates it and floods it to the guests, XDP leaves it to TC",
            UP,
            u1.reply_frame(P, 0, b"who?"),
        )
        .pre(&[m_u1])
        .forget(0)
        .xdp(Pass, NONE, &[])
        .tc(DnatFlood(0), IN, &[Touched(0, NAT_S_REPLIED)]),
    ]
}

/// Inbound: the host's own.
fn inbound_hosts_own(s: &Shared) -> Vec<Case> {
    use Fate::*;
    let Shared {
        u1,
        m_u1,
        m_t1,
        m_i1,
        ..
    } = *s;
    vec![
        Case::new(
            "UDP to the masquerade address with no mapping: the host's (in_miss), untouched",
            UP,
            u1.reply_frame(P, 0, b"stray"),
        )
        .pass(MISS),
        Case::new(
            "reply from another remote port: no mapping",
            UP,
            udp(0, 40000, R1, 54).reply_frame(P, 0, b"x"),
        )
        .pre(&[m_u1])
        .pass(MISS),
        Case::new(
            "reply from another remote address: no mapping",
            UP,
            udp(0, 40000, R2, 53).reply_frame(P, 0, b"x"),
        )
        .pre(&[m_u1])
        .pass(MISS),
        Case::new(
            "UDP reply to a TCP mapping's port: no mapping",
            UP,
            udp(0, 40001, R1, 80).reply_frame(P2, 0, b"x"),
        )
        .pre(&[m_t1])
        .pass(MISS),
        Case::new(
            "ICMP echo request to the masquerade address: the host's, not counted",
            UP,
            Frame::new(UP_MAC, NH_MAC)
                .icmp_echo(R1, NAT_IP, false, P3, 1, b"ping the host")
                .build(),
        )
        .pre(&[m_i1])
        .pass(NONE),
        Case::new(
            "UDP to another address on the uplink: not ours, not counted",
            UP,
            Frame::new(UP_MAC, NH_MAC)
                .udp(R1, 53, [192, 168, 1, 201], P, b"x")
                .build(),
        )
        .pre(&[m_u1])
        .pass(NONE),
        Case::new(
            "ARP on the uplink: the host's",
            UP,
            Frame::new([0xff; 6], NH_MAC)
                .arp_request([192, 168, 1, 1], NAT_IP)
                .build(),
        )
        .pass(NONE),
        Case::new(
            "reply with TTL 1: the host's",
            UP,
            set_ttl(&u1.reply_frame(P, 0, b"x"), 1),
        )
        .pre(&[m_u1])
        .pass(NONE),
        Case::new(
            "reply fragment: the host's",
            UP,
            set_frag(&u1.reply_frame(P, 0, b"x"), 0x2000),
        )
        .pre(&[m_u1])
        .pass(NONE),
        Case::new(
            "reply with IP options: the host's",
            UP,
            with_ip_options(&u1.reply_frame(P, 0, b"x")),
        )
        .pre(&[m_u1])
        .pass(NONE),
        Case::new(
            "CHECKSUM_PARTIAL-looking UDP reply: XDP leaves it to TC",
            UP,
            Frame::new(UP_MAC, NH_MAC)
                .udp_partial(R1, 53, NAT_IP, P, b"offloaded")
                .build(),
        )
        .pre(&[m_u1])
        .xdp(Pass, NONE, &[]),
    ]
}

/// Inbound: malformed.
fn inbound_malformed(s: &Shared) -> Vec<Case> {
    use Fate::*;
    let Shared {
        u1,
        t1,
        syn,
        ack,
        m_u1,
        m_t1,
        ..
    } = *s;
    vec![
        Case::new(
            "reply cut inside the IPv4 header: no crash, the host's (TC: refused by the test run)",
            UP,
            u1.reply_frame(P, 0, b"x")[..IP + 12].to_vec(),
        )
        .pre(&[m_u1])
        .pass(NONE)
        .tc(Refused, NONE, &[]),
        Case::new(
            "reply with 4 bytes of UDP: the host's",
            UP,
            u1.reply_frame(P, 0, b"x")[..L4 + 4].to_vec(),
        )
        .pre(&[m_u1])
        .pass(NONE),
        Case::new(
            "TCP reply cut at 12 bytes of header: the host's",
            UP,
            t1.reply_frame(P2, syn | ack, b"")[..L4 + 12].to_vec(),
        )
        .pre(&[m_t1])
        .pass(NONE),
    ]
}

/// Inbound: ICMP errors about mappings.
/// ICMP "fragmentation needed" for `input` (from the LAN, too big for a
/// guest's port of MTU `mtu`), as a router sends it: to the sender's MAC
/// and address from the uplink's, quoting the IPv4 header and 8 bytes as
/// sent (untranslated); TOS 0xc0 as Linux's errors, id 0 with DF (an
/// atomic datagram), TTL 64. Checksums from scratch.
fn frag_needed_expect(input: &[u8], mtu: u16) -> Vec<u8> {
    let mac = |o: usize| -> Mac { input[o..o + 6].try_into().unwrap() };
    let sender: [u8; 4] = input[26..30].try_into().unwrap();
    let [hi, lo] = mtu.to_be_bytes();
    let mut f = Frame::new(mac(6), mac(0))
        .icmp_error(
            NAT_IP,
            sender,
            icmp_type::DEST_UNREACH,
            4,
            [0, 0, hi, lo],
            &input[14..42],
        )
        .build();
    f[15] = 0xc0;
    f[18..20].copy_from_slice(&[0, 0]);
    fix_checksums(&mut f);
    f
}

/// Path MTU: replies bigger than their guest's port (a tap of MTU 1500;
/// the uplink's is 9000). XDP never sees them: frames above
/// MAX_XDP_FRAME go to TC (the XDP check is `pmtu_xdp_hands_over`).
fn path_mtu(s: &Shared) -> Vec<Case> {
    use Fate::*;
    use Post::*;
    let Shared { u1, t1, m_u1, .. } = *s;
    let big = vec![0x5a; 1600];
    let mut quoted_big = u1.quoted(P, 28);
    quoted_big.extend_from_slice(&big[..1500]);
    let frag_needed = Cnt {
        frag_needed: 1,
        ..NONE
    };
    let too_big = Cnt { too_big: 1, ..NONE };
    vec![
        Case::new(
            "UDP reply of 1628 bytes with DF to a port of MTU 1500: fragmentation needed (1500) back out of the uplink",
            UP,
            u1.reply_frame(P, 0, &big),
        )
        .pre(&[m_u1])
        .xdp(Pass, NONE, &[])
        .tc(FragNeeded(1500), frag_needed, &[Touched(0, NAT_S_REPLIED)]),
        Case::new(
            "TCP segment of 1640 bytes with DF to a port of MTU 1500: fragmentation needed (1500)",
            UP,
            t1.reply_frame(P2, tcp_flags::ACK, &big),
        )
        .pre(&[mapping(t1, P2, NAT_S_SYN_OUT | NAT_S_REPLIED, 2 * SEC)])
        .xdp(Pass, NONE, &[])
        .tc(
            FragNeeded(1500),
            frag_needed,
            &[Touched(0, NAT_S_SYN_OUT | NAT_S_REPLIED)],
        ),
        Case::new(
            "UDP reply of 1628 bytes without DF: dropped, counted (XDP and TC cannot fragment)",
            UP,
            set_frag(&u1.reply_frame(P, 0, &big), 0),
        )
        .pre(&[m_u1])
        .xdp(Pass, NONE, &[])
        .tc(TooBig, too_big, &[Touched(0, NAT_S_REPLIED)]),
        Case::new(
            "UDP reply of exactly 1500 bytes with DF: fits, translated",
            UP,
            u1.reply_frame(P, 0, &big[..1472]),
        )
        .pre(&[m_u1])
        .both(Dnat(0), IN, &[Touched(0, NAT_S_REPLIED)]),
        Case::new(
            "an ICMP error of 1556 bytes with DF about a mapping: translated (no error about an error)",
            UP,
            icmp_error_frame(R1, icmp_type::DEST_UNREACH, 3, [0; 4], &quoted_big),
        )
        .pre(&[m_u1])
        .xdp(Pass, NONE, &[])
        .tc(IcmpErr(0), ICMP_ERR, &[]),
    ]
}

fn icmp_errors(s: &Shared) -> Vec<Case> {
    use Fate::*;
    let Shared {
        u1,
        t1,
        i1,
        u1_g2,
        m_u1,
        m_t1,
        m_i1,
        ..
    } = *s;
    let err =
        |ty: u8, code: u8, rest: [u8; 4], q: Vec<u8>| icmp_error_frame(ROUTER, ty, code, rest, &q);
    vec![
        Case::new(
            "port unreachable (3/3) about a UDP mapping: translated",
            UP,
            icmp_error_frame(R1, icmp_type::DEST_UNREACH, 3, [0; 4], &u1.quoted(P, 28)),
        )
        .pre(&[m_u1])
        .both(IcmpErr(0), ICMP_ERR, &[]),
        Case::new(
            "port unreachable quoting the whole UDP datagram: translated",
            UP,
            icmp_error_frame(R1, icmp_type::DEST_UNREACH, 3, [0; 4], &u1.quoted(P, 1000)),
        )
        .pre(&[m_u1])
        .both(IcmpErr(0), ICMP_ERR, &[]),
        Case::new(
            "fragmentation needed (3/4, MTU 1400) about a TCP mapping: translated, MTU kept",
            UP,
            err(
                icmp_type::DEST_UNREACH,
                4,
                [0, 0, 0x05, 0x78],
                t1.quoted(P2, 28),
            ),
        )
        .pre(&[m_t1])
        .both(IcmpErr(0), ICMP_ERR, &[]),
        Case::new(
            "time exceeded (11/0) about a UDP mapping: translated",
            UP,
            err(icmp_type::TIME_EXCEEDED, 0, [0; 4], u1.quoted(P, 28)),
        )
        .pre(&[m_u1])
        .both(IcmpErr(0), ICMP_ERR, &[]),
        Case::new(
            "time exceeded (11/0) about a TCP mapping (full header quoted): translated",
            UP,
            err(icmp_type::TIME_EXCEEDED, 0, [0; 4], t1.quoted(P2, 40)),
        )
        .pre(&[m_t1])
        .both(IcmpErr(0), ICMP_ERR, &[]),
        Case::new(
            "host unreachable (3/1) about an ICMP echo: translated, quoted echo id restored",
            UP,
            err(icmp_type::DEST_UNREACH, 1, [0; 4], i1.quoted(P3, 28)),
        )
        .pre(&[m_i1])
        .both(IcmpErr(0), ICMP_ERR, &[]),
        Case::new(
            "time exceeded (11/0) about an ICMP echo: translated",
            UP,
            err(icmp_type::TIME_EXCEEDED, 0, [0; 4], i1.quoted(P3, 36)),
        )
        .pre(&[m_i1])
        .both(IcmpErr(0), ICMP_ERR, &[]),
        Case::new(
            "fragmentation needed (3/4, MTU 1280) about an ICMP echo: translated",
            UP,
            err(
                icmp_type::DEST_UNREACH,
                4,
                [0, 0, 0x05, 0x00],
                i1.quoted(P3, 28),
            ),
        )
        .pre(&[m_i1])
        .both(IcmpErr(0), ICMP_ERR, &[]),
        Case::new(
            "parameter problem (12/0) about a TCP mapping: translated",
            UP,
            err(
                icmp_type::PARAMETER_PROBLEM,
                0,
                [20, 0, 0, 0],
                t1.quoted(P2, 28),
            ),
        )
        .pre(&[m_t1])
        .both(IcmpErr(0), ICMP_ERR, &[]),
        Case::new(
            "ICMP error about a mapping of guest 2: to guest 2",
            UP,
            err(icmp_type::DEST_UNREACH, 3, [0; 4], u1_g2.quoted(P2, 28)),
        )
        .pre(&[m_u1, mapping(u1_g2, P2, 0, SEC)])
        .both(IcmpErr(1), ICMP_ERR, &[]),
        Case::new(
            "ICMP error about no mapping: the host's (in_miss)",
            UP,
            err(icmp_type::DEST_UNREACH, 3, [0; 4], u1.quoted(P + 1, 28)),
        )
        .pre(&[m_u1])
        .pass(MISS),
        Case::new(
            "ICMP error about an expired mapping: the host's (in_miss)",
            UP,
            err(icmp_type::DEST_UNREACH, 3, [0; 4], u1.quoted(P, 28)),
        )
        .pre(&[mapping(u1, P, 0, (NAT_UDP_SECS + 1) * SEC)])
        .pass(MISS),
        Case::new(
            "ICMP error quoting another source address: the host's, not counted",
            UP,
            err(icmp_type::DEST_UNREACH, 3, [0; 4], {
                let mut q = u1.quoted(P, 28);
                q[12..16].copy_from_slice(&[192, 168, 1, 201]);
                fix_ip_header(&mut q);
                q
            }),
        )
        .pre(&[m_u1])
        .pass(NONE),
        Case::new(
            "ICMP error with the quoted transport header cut at 4 bytes: no crash, the host's",
            UP,
            err(icmp_type::DEST_UNREACH, 3, [0; 4], u1.quoted(P, 24)),
        )
        .pre(&[m_u1])
        .pass(NONE),
        Case::new(
            "ICMP error quoting only 12 bytes of IPv4 header: the host's",
            UP,
            err(icmp_type::DEST_UNREACH, 3, [0; 4], u1.quoted(P, 12)),
        )
        .pre(&[m_u1])
        .pass(NONE),
        Case::new(
            "ICMP error whose quoted header has options: the host's",
            UP,
            err(icmp_type::DEST_UNREACH, 3, [0; 4], {
                let mut q = u1.quoted(P, 28);
                q.splice(20..20, [1, 1, 1, 0]);
                q[0] = 0x46;
                fix_ip_header(&mut q);
                q
            }),
        )
        .pre(&[m_u1])
        .pass(NONE),
        Case::new(
            "ICMP error quoting GRE: the host's",
            UP,
            err(icmp_type::DEST_UNREACH, 3, [0; 4], {
                let mut q = u1.quoted(P, 28);
                q[9] = ipproto::GRE;
                fix_ip_header(&mut q);
                q
            }),
        )
        .pre(&[m_u1])
        .pass(NONE),
        Case::new(
            "source quench (4) about a mapping: not an error umlbr translates",
            UP,
            err(4, 0, [0; 4], u1.quoted(P, 28)),
        )
        .pre(&[m_u1])
        .pass(NONE),
    ]
}

/// One case's run on one program: the case, what it expects of that
/// program, the NAT settings, the tables before and after, and when it
/// ran (every stamp it makes is in [t0, t1]).
struct Ran<'a> {
    c: &'a Case,
    e: &'a Expect,
    prog: Prog,
    cfg: NatConfig,
    out_before: BTreeMap<KeyOrd, NatOut>,
    in_before: BTreeMap<KeyOrd, NatIn>,
    out_after: BTreeMap<KeyOrd, NatOut>,
    in_after: BTreeMap<KeyOrd, NatIn>,
    t0: u64,
    t1: u64,
    /// The ifindex of the port the frame came in on.
    ingress: u32,
}

/// The keys the NAT tables must hold.
#[derive(Default)]
struct Want {
    out: Vec<KeyOrd>,
    inn: Vec<KeyOrd>,
}

impl Ran<'_> {
    /// The NAT tables: exactly the expected entries.
    fn tables(&self, errs: &mut Errs) {
        let Ran { c, e, .. } = *self;
        let mut want = Want::default();
        let mut named = vec![false; c.pre.len()];
        for p in &e.post {
            match p {
                Post::Touched(i, state) => {
                    named[*i] = true;
                    self.touched(&c.pre[*i], *state, &mut want, errs);
                }
                Post::Gone(i) => named[*i] = true,
                Post::New(flow, state, rule) => {
                    self.new_mapping(flow, *state, rule, &mut want, errs)
                }
            }
        }
        for (m, named) in c.pre.iter().zip(named) {
            if !named {
                self.unnamed(m, &mut want, errs);
            }
        }
        self.holds(want, errs);
    }

    /// Pre-made mapping `m`, named with `state`: its NAT_OUT entry kept
    /// (or given the FIB's next hop if it was looked up), its NAT_IN entry
    /// in `state`, its time refreshed if it was idle over a second.
    fn touched(&self, m: &Mapping, state: u16, want: &mut Want, errs: &mut Errs) {
        let Ran {
            c,
            e,
            t0,
            t1,
            ref out_before,
            ref in_before,
            ref out_after,
            ref in_after,
            ..
        } = *self;
        let (want_out, want_in) = (&mut want.out, &mut want.inn);
        let (ok, ik) = (KeyOrd(m.flow.out_key()), KeyOrd(m.flow.in_key(m.nat_port)));
        want_out.push(ok);
        want_in.push(ik);
        // A guest's TCP packet of the mapping: its NAT_OUT entry tracks it.
        let out_before = out_before.get(&ok).map(|b| {
            if c.ingress == UP {
                *b
            } else {
                tracked(b, &c.frame)
            }
        });
        // Sent with the FIB's next hop: now cached in NAT_OUT.
        let looked_up = matches!(e.fate, Fate::Snat(f) if f == m.flow) && m.fresh_hop().is_none();
        match (out_before.as_ref(), out_after.get(&ok)) {
            (Some(b), Some(a)) if looked_up => {
                let w = NatOut {
                    hop: hop_bytes(next_hop_mac(m.flow.remote)),
                    hop_ns: a.hop_ns,
                    ..*b
                };
                if *a != w || a.hop_ns < t0 || a.hop_ns > t1 {
                    errs.push(format!(
                        "NAT_OUT {}: {a:?}, expected {b:?} with next hop {} stamped in [{t0}, {t1}]",
                        fmt_key(&ok.0),
                        fmt_mac(&next_hop_mac(m.flow.remote))
                    ));
                }
            }
            (b, a) if a != b || a.is_none() => errs.push(format!(
                "NAT_OUT {} changed: {b:?} -> {a:?}",
                fmt_key(&ok.0)
            )),
            _ => {}
        }
        match (in_before.get(&ik), in_after.get(&ik)) {
            (Some(b), Some(a)) => {
                let mut w = *b;
                w.state = state;
                let refreshed = m.idle_ns > SEC + SEC / 2;
                let time_ok = if refreshed {
                    a.last_seen_ns >= t0 && a.last_seen_ns <= t1
                } else {
                    a.last_seen_ns == b.last_seen_ns
                };
                w.last_seen_ns = a.last_seen_ns;
                if *a != w || !time_ok {
                    errs.push(format!(
                        "NAT_IN {}: {a:?}, expected state {state:#x}, time {} (was {b:?})",
                        fmt_key(&ik.0),
                        if refreshed { "refreshed" } else { "kept" }
                    ));
                }
            }
            (b, a) => errs.push(format!(
                "NAT_IN {}: {b:?} -> {a:?}, expected kept",
                fmt_key(&ik.0)
            )),
        }
    }

    /// A new mapping for `flow` in `state`, its port by `rule`, made in the
    /// run.
    fn new_mapping(
        &self,
        flow: &Flow,
        state: u16,
        rule: &PortRule,
        want: &mut Want,
        errs: &mut Errs,
    ) {
        let Ran {
            e,
            ref cfg,
            t0,
            t1,
            ref out_after,
            ref in_after,
            ..
        } = *self;
        let (want_out, want_in) = (&mut want.out, &mut want.inn);
        let ok = KeyOrd(flow.out_key());
        want_out.push(ok);
        let Some(o) = out_after.get(&ok) else {
            errs.push(format!("no NAT_OUT entry for {}", fmt_key(&ok.0)));
            return;
        };
        let port = u16::from_be(o.port);
        let in_range = port >= cfg.port_lo && port <= cfg.port_hi;
        let rule_ok = match rule {
            PortRule::InRange => in_range,
            PortRule::Is(p) => port == *p,
            PortRule::Not(v) => in_range && !v.contains(&port),
        };
        // The next hop the packet left with is cached; an
        // unresolved one is not.
        let hop_ok = match e.fate {
            Fate::Snat(_) => {
                o.hop == hop_bytes(next_hop_mac(flow.remote)) && o.hop_ns >= t0 && o.hop_ns <= t1
            }
            _ => o.hop_ns == 0,
        };
        // A TCP mapping is made from the guest's SYN: its next sequence
        // number, no acknowledgment yet.
        let t = tracked(&NatOut::default(), &self.c.frame);
        if o.owner != self.ingress {
            errs.push(format!(
                "NAT_OUT {}: owner {}, expected {} (the port the packet came in on)",
                fmt_key(&ok.0),
                o.owner,
                self.ingress
            ));
        }
        if (o.seq_next, o.ack, o.win, o.track) != (t.seq_next, t.ack, t.win, t.track) {
            errs.push(format!(
                "NAT_OUT {}: tracking seq_next {} ack {} win {} flags {:#x}, expected {} {} {} {:#x}",
                fmt_key(&ok.0),
                o.seq_next,
                o.ack,
                o.win,
                o.track,
                t.seq_next,
                t.ack,
                t.win,
                t.track
            ));
        }
        if !hop_ok || o._pad2 != 0 {
            errs.push(format!(
                "NAT_OUT {}: next hop {:02x?} stamped {}, expected {} ({:?}) in [{t0}, {t1}]",
                fmt_key(&ok.0),
                o.hop,
                o.hop_ns,
                fmt_mac(&next_hop_mac(flow.remote)),
                e.fate
            ));
        }
        if o.addr != be32(NAT_IP) || o._pad != 0 || !rule_ok {
            errs.push(format!(
                "NAT_OUT {}: {}:{port}, expected {}:{rule:?} in {}-{}",
                fmt_key(&ok.0),
                Ipv4Addr::from(o.addr.to_ne_bytes()),
                ip4(NAT_IP),
                cfg.port_lo,
                cfg.port_hi
            ));
        }
        let ik = KeyOrd(flow.in_key(port));
        want_in.push(ik);
        match in_after.get(&ik) {
            Some(i) => {
                let stamped = |t: u64| t >= t0 && t <= t1;
                if i.addr != be32(gip(flow.guest))
                    || i.port != flow.gport.to_be()
                    || i.state != state
                    || i.mac != gmac(flow.guest)
                    || i._pad != [0; 2]
                    || !stamped(i.last_seen_ns)
                    || !stamped(i.created_ns)
                {
                    errs.push(format!(
                        "NAT_IN {}: {i:?}, expected guest {}:{} mac {} state {state:#x} stamped in [{t0}, {t1}]",
                        fmt_key(&ik.0),
                        ip4(gip(flow.guest)),
                        flow.gport,
                        fmt_mac(&gmac(flow.guest))
                    ));
                }
            }
            None => errs.push(format!("no NAT_IN entry {}", fmt_key(&ik.0))),
        }
    }

    /// Pre-made mapping `m`, not named: unchanged, entry for entry.
    fn unnamed(&self, m: &Mapping, want: &mut Want, errs: &mut Errs) {
        let Ran {
            ref out_before,
            ref in_before,
            ref out_after,
            ref in_after,
            ..
        } = *self;
        let (want_out, want_in) = (&mut want.out, &mut want.inn);
        // Unchanged, entry for entry.
        let (ok, ik) = (KeyOrd(m.flow.out_key()), KeyOrd(m.flow.in_key(m.nat_port)));
        if m.out {
            want_out.push(ok);
            if out_after.get(&ok) != out_before.get(&ok) {
                errs.push(format!("NAT_OUT {} changed", fmt_key(&ok.0)));
            }
        }
        if m.inn {
            want_in.push(ik);
            if in_after.get(&ik) != in_before.get(&ik) {
                errs.push(format!(
                    "NAT_IN {} changed: {:?} -> {:?}",
                    fmt_key(&ik.0),
                    in_before.get(&ik),
                    in_after.get(&ik)
                ));
            }
        }
    }

    /// The tables hold exactly `want`.
    fn holds(&self, want: Want, errs: &mut Errs) {
        let keys = |v: &[KeyOrd]| {
            v.iter()
                .map(|k| fmt_key(&k.0))
                .collect::<Vec<_>>()
                .join("; ")
        };
        for (table, got, mut want) in [
            (
                "NAT_OUT",
                self.out_after.keys().copied().collect::<Vec<_>>(),
                want.out,
            ),
            ("NAT_IN", self.in_after.keys().copied().collect(), want.inn),
        ] {
            want.sort();
            want.dedup();
            if got != want {
                errs.push(format!(
                    "{table} holds [{}], expected [{}]",
                    keys(&got),
                    keys(&want)
                ));
            }
        }
    }

    /// The return code and output bytes expected (None: no mapping to
    /// build them from).
    fn expected(&self) -> (u32, Option<Vec<u8>>) {
        let Ran {
            c,
            e,
            prog,
            ref out_after,
            ..
        } = *self;
        let port_of = |f: &Flow| {
            out_after
                .get(&KeyOrd(f.out_key()))
                .map(|o| u16::from_be(o.port))
        };
        let (want_ret, want_bytes) = match e.fate {
            Fate::Snat(f) => {
                // A mapping's fresh cached next hop, else the FIB's.
                let dmac = c
                    .pre
                    .iter()
                    .find(|m| m.flow == f)
                    .and_then(Mapping::fresh_hop)
                    .unwrap_or(next_hop_mac(f.remote));
                (
                    redirect(prog),
                    port_of(&f).map(|p| snat_expect(&c.frame, p, Some((dmac, UP_MAC)))),
                )
            }
            Fate::SnatNeigh(f) => (
                redirect(prog),
                port_of(&f).map(|p| snat_expect(&c.frame, p, None)),
            ),
            Fate::Dnat(i) => (redirect(prog), Some(dnat_expect(&c.frame, &c.pre[i].flow))),
            Fate::DnatFlood(i) => (
                match prog {
                    Prog::Xdp => XDP_REDIRECT,
                    Prog::Tc => TC_ACT_SHOT,
                },
                Some(dnat_expect(&c.frame, &c.pre[i].flow)),
            ),
            Fate::IcmpErr(i) => (
                redirect(prog),
                Some(icmp_err_expect(&c.frame, &c.pre[i].flow)),
            ),
            Fate::Switched => (redirect(prog), Some(c.frame.clone())),
            Fate::FragNeeded(mtu) => (redirect(prog), Some(frag_needed_expect(&c.frame, mtu))),
            Fate::TooBig => (
                match prog {
                    Prog::Xdp => umlbr_tests::bpf::XDP_DROP,
                    Prog::Tc => TC_ACT_SHOT,
                },
                Some(c.frame.clone()),
            ),
            Fate::Pass => (
                match prog {
                    Prog::Xdp => XDP_PASS,
                    Prog::Tc => TC_ACT_OK,
                },
                Some(c.frame.clone()),
            ),
            Fate::Refused => (0, None),
            Fate::Skip => unreachable!(),
        };
        (want_ret, want_bytes)
    }
}

impl Bench {
    /// Run one case on one program; Err describes every mismatch.
    fn check(&mut self, c: &Case, prog: Prog) -> Result<()> {
        let e = c.expect(prog);
        if e.fate == Fate::Skip {
            return Ok(());
        }
        self.reset(&c.tweak)?;
        let now = now_coarse();
        for m in &c.pre {
            self.put_mapping(m, now)?;
        }
        for &g in &c.forget {
            self.forget_guest(g)?;
        }
        let out_before = self.nat_out()?;
        let in_before = self.nat_in()?;
        let ingress = self.ifindex(c.ingress);
        let t0 = now_coarse();
        let res = self.run(prog, ingress, &c.frame);
        let t1 = now_coarse();
        let mut errs = Errs::default();
        let out_after = self.nat_out()?;
        let in_after = self.nat_in()?;
        let mut cfg = self.nat_cfg();
        (c.tweak)(&mut cfg);

        let ran = Ran {
            c,
            e,
            prog,
            cfg,
            out_before,
            in_before,
            out_after,
            in_after,
            t0,
            t1,
            ingress,
        };
        ran.tables(&mut errs);

        // Return code and output bytes.
        let (want_ret, want_bytes) = ran.expected();
        let translated = !matches!(e.fate, Fate::Switched | Fate::Pass | Fate::Refused);
        if translated && let Err(bad) = verify_checksums(&c.frame) {
            errs.push(format!("(test data) input checksums wrong: {bad}"));
        }
        let mut out_frame = None;
        match res {
            Err(err) if e.fate == Fate::Refused => {
                if !format!("{err:#}").contains("os error 22") {
                    errs.push(format!("{err:#}, expected EINVAL"));
                }
            }
            Err(err) => errs.push(format!("{err:#}")),
            Ok((ret, out)) if e.fate == Fate::Refused => {
                errs.push(format!(
                    "the kernel ran it (returned {ret}, {} bytes out): expected EINVAL; \
                     turn this row into a real expectation",
                    out.len()
                ));
            }
            Ok((ret, out)) => {
                if ret != want_ret {
                    errs.push(format!(
                        "returned {ret}, expected {want_ret} ({:?})",
                        e.fate
                    ));
                }
                match &want_bytes {
                    Some(w) if out != *w => errs.push(format!(
                        "output bytes differ from the expected ({} bytes in, {} out):\n      got  {}\n      want {}",
                        c.frame.len(),
                        out.len(),
                        diff_hex(&out, w).0,
                        diff_hex(&out, w).1
                    )),
                    None => errs.push("no mapping to build the expected frame from"),
                    _ => {}
                }
                if translated && let Err(bad) = verify_checksums(&out) {
                    errs.push(format!("output checksums wrong: {bad}"));
                }
                out_frame = Some(out);
            }
        }

        // What the taps transmitted: only TC floods send during a plain
        // test run.
        let mut want_copies = vec![0usize; TAP_NAMES.len()];
        if let (Fate::DnatFlood(_), Prog::Tc) = (e.fate, prog) {
            for w in want_copies.iter_mut().take(NR_GUESTS) {
                *w = 1;
            }
        }
        let got = self.collect(&want_copies, Duration::from_millis(500));
        for (i, frames) in got.iter().enumerate() {
            let good = frames
                .iter()
                .filter(|f| Some(*f) == want_bytes.as_ref() || Some(*f) == out_frame.as_ref())
                .count();
            if frames.len() != want_copies[i] || good != want_copies[i] {
                errs.push(format!(
                    "{} transmitted {} frames ({good} the expected), expected {}",
                    TAP_NAMES[i],
                    frames.len(),
                    want_copies[i]
                ));
            }
        }

        // Counters.
        let got = self.nat_stats()?;
        let want = e.cnt.stats(prog);
        if got != want {
            errs.push(format!("NAT counters {got:?}, expected {want:?}"));
        }
        errs.done()
    }
}

fn redirect(prog: Prog) -> u32 {
    match prog {
        Prog::Xdp => XDP_REDIRECT,
        Prog::Tc => TC_ACT_REDIRECT,
    }
}

/// Hex of both frames from the first differing byte (32 bytes).
fn diff_hex(a: &[u8], b: &[u8]) -> (String, String) {
    let first = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let show = |f: &[u8]| {
        let end = (first + 32).min(f.len());
        format!(
            "@{first}: {}",
            f[first.min(f.len())..end]
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    (show(a), show(b))
}

umlbr_tests::table_tests!(Bench, Prog, xdp_table: "xdp" Xdp, tc_table: "tc" Tc);

// ---------------------------------------------------------------------------
// Sequences: mappings over several packets.

impl Bench {
    /// The mapping of `flow`: its outside port and NAT_IN entry.
    fn mapping_of(&mut self, flow: &Flow) -> Result<Option<(u16, NatIn)>> {
        let out = self.nat_out()?;
        let Some(o) = out.get(&KeyOrd(flow.out_key())) else {
            return Ok(None);
        };
        let port = u16::from_be(o.port);
        let inm = self.nat_in()?;
        Ok(inm.get(&KeyOrd(flow.in_key(port))).map(|i| (port, *i)))
    }

    /// Run a frame that must be translated (redirected, checksums right).
    fn translate(&mut self, prog: Prog, dev: Dev, frame: &[u8]) -> Result<Vec<u8>> {
        let (ret, out) = self.run(prog, self.ifindex(dev), frame)?;
        ensure!(
            ret == redirect(prog),
            "{prog:?} returned {ret}, expected a redirect"
        );
        verify_checksums(&out).map_err(|e| anyhow::anyhow!("{prog:?}: {e}"))?;
        Ok(out)
    }
}

fn state_name(s: u16) -> String {
    umlbr_lib::state_name(6, s)
}

/// SYN out: syn_sent; SYN-ACK back: established; FIN one way: closing;
/// FIN both ways: closed (the short timeout). RST either way: reset.
/// Path MTU in XDP, which the table cannot show (its big frames exceed
/// MAX_XDP_FRAME and go to TC before the NAT): g1 at MTU 1000, a reply of
/// 1128 bytes. With DF, XDP hands it to TC untouched, and TC answers its
/// sender with "fragmentation needed" (1000); without DF, XDP drops it,
/// counted; a reply of 1000 bytes is translated in XDP.
#[test]
fn pmtu_xdp_hands_over() -> Result<()> {
    let mut b = Bench::new("pm-xdp")?;
    b.ctx.ns.sh("ip link set g1 mtu 1000")?;
    let s = shared();
    let up = b.ifindex(Dev::Up);
    let df = s.u1.reply_frame(P, 0, &[0x5a; 1100]);
    b.put_mapping(&s.m_u1, now_coarse())?;
    let (ret, out) = b.run(Prog::Xdp, up, &df)?;
    ensure!(
        ret == XDP_PASS && out == df,
        "XDP: returned {ret} (want XDP_PASS), bytes changed: {}",
        out != df
    );
    ensure!(
        b.nat_stats()? == NatStats::default(),
        "XDP counted {:?}",
        b.nat_stats()?
    );
    let (ret, out) = b.run(Prog::Tc, up, &df)?;
    let want = frag_needed_expect(&df, 1000);
    ensure!(
        ret == TC_ACT_REDIRECT && out == want,
        "TC: returned {ret} (want TC_ACT_REDIRECT), bytes:\n  got  {}\n  want {}",
        diff_hex(&out, &want).0,
        diff_hex(&out, &want).1
    );
    verify_checksums(&out).map_err(|e| anyhow::anyhow!("error's checksums: {e}"))?;
    ensure!(b.nat_stats()?.frag_needed == 1, "{:?}", b.nat_stats()?);
    let (ret, _) = b.run(Prog::Xdp, up, &set_frag(&df, 0))?;
    ensure!(ret == umlbr_tests::bpf::XDP_DROP, "XDP without DF: {ret}");
    ensure!(b.nat_stats()?.too_big == 1, "{:?}", b.nat_stats()?);
    let fits = s.u1.reply_frame(P, 0, &[0x5a; 972]);
    let (ret, out) = b.run(Prog::Xdp, up, &fits)?;
    ensure!(
        ret == XDP_REDIRECT && out == dnat_expect(&fits, &s.u1),
        "XDP, 1000 bytes: returned {ret}, translated: {}",
        out == dnat_expect(&fits, &s.u1)
    );
    Ok(())
}

#[test]
fn tcp_states_follow_the_flags() -> Result<()> {
    use tcp_flags::*;
    let mut b = Bench::new("tcp")?;
    let mut errs = Vec::new();
    for prog in [Prog::Xdp, Prog::Tc] {
        b.reset(&no_tweak)?;
        let cfg = b.nat_cfg();
        let f = tcp(0, 45000, R1, 443);
        let mut port = 0;
        let steps: [(Dev, u8, u16, &str, u64); 7] = [
            (
                guest(0),
                SYN,
                NAT_S_SYN_OUT,
                "syn_sent",
                cfg.tcp_transitory_ns,
            ),
            (
                UP,
                SYN | ACK,
                NAT_S_SYN_OUT | NAT_S_REPLIED,
                "established",
                cfg.tcp_established_ns,
            ),
            (
                guest(0),
                ACK,
                NAT_S_SYN_OUT | NAT_S_REPLIED,
                "established",
                cfg.tcp_established_ns,
            ),
            (
                guest(0),
                FIN | ACK,
                NAT_S_SYN_OUT | NAT_S_REPLIED | NAT_S_FIN_OUT,
                "closing",
                cfg.tcp_transitory_ns,
            ),
            (
                UP,
                ACK,
                NAT_S_SYN_OUT | NAT_S_REPLIED | NAT_S_FIN_OUT,
                "closing",
                cfg.tcp_transitory_ns,
            ),
            (
                UP,
                FIN | ACK,
                NAT_S_SYN_OUT | NAT_S_REPLIED | NAT_S_FIN_OUT | NAT_S_FIN_IN,
                "closed",
                cfg.tcp_closing_ns,
            ),
            (
                guest(0),
                ACK,
                NAT_S_SYN_OUT | NAT_S_REPLIED | NAT_S_FIN_OUT | NAT_S_FIN_IN,
                "closed",
                cfg.tcp_closing_ns,
            ),
        ];
        for (n, (dev, flags, state, name, timeout)) in steps.into_iter().enumerate() {
            let frame = if dev == UP {
                f.reply_frame(port, flags, b"")
            } else {
                f.out_frame(flags, b"")
            };
            if let Err(e) = b.translate(prog, dev, &frame) {
                errs.push(format!("[{prog:?}] step {n}: {e:#}"));
                break;
            }
            let Some((p, m)) = b.mapping_of(&f)? else {
                errs.push(format!("[{prog:?}] step {n}: no mapping"));
                break;
            };
            if n > 0 && p != port {
                errs.push(format!("[{prog:?}] step {n}: port moved {port} -> {p}"));
            }
            port = p;
            if m.state != state
                || state_name(m.state) != name
                || cfg.timeout_ns(6, m.state) != timeout
            {
                errs.push(format!(
                    "[{prog:?}] step {n}: state {:#x} ({}), expected {state:#x} ({name})",
                    m.state,
                    state_name(m.state)
                ));
            }
        }
        // RST from the remote, and from the guest.
        for (k, rst_from) in [UP, guest(0)].into_iter().enumerate() {
            let f = tcp(0, 46000 + k as u16, R2, 22);
            let mut seq: Vec<(Dev, u8)> = vec![(guest(0), SYN)];
            if rst_from == guest(0) {
                seq.push((UP, SYN | ACK));
            }
            seq.push((rst_from, RST | ACK));
            for (dev, flags) in seq {
                let port = b.mapping_of(&f)?.map_or(0, |(p, _)| p);
                // The remote's RST acknowledges the guest's SYN (the
                // guest has acknowledged nothing yet): in its window.
                let frame = if dev == UP && flags & RST != 0 {
                    f.reply_seg(port, flags, 0, GUEST_SEQ_NEXT)
                } else if dev == UP {
                    f.reply_frame(port, flags, b"")
                } else {
                    f.out_frame(flags, b"")
                };
                if let Err(e) = b.translate(prog, dev, &frame) {
                    errs.push(format!("[{prog:?}] RST from {rst_from:?}: {e:#}"));
                }
            }
            match b.mapping_of(&f)? {
                Some((_, m)) if m.state & NAT_S_RST != 0 && state_name(m.state) == "reset" => {
                    if cfg.timeout_ns(6, m.state) != cfg.tcp_closing_ns {
                        errs.push(format!(
                            "[{prog:?}] reset mapping not on the closing timeout"
                        ));
                    }
                }
                m => errs.push(format!(
                    "[{prog:?}] RST from {rst_from:?}: mapping {m:?}, expected reset"
                )),
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        bail!("{}", errs.join("\n"))
    }
}

/// "A new SYN on a closed mapping starts it afresh" (nat.rs, `touch`): a
/// guest that reopens the same 4-tuple after a reset, or after both FINs,
/// gets a mapping in syn_sent again, on the transitory timeout, and not one
/// stuck in reset/closed (10 s timeout) for the whole new connection.
#[test]
fn a_new_syn_restarts_a_reset_or_closed_mapping() -> Result<()> {
    use tcp_flags::*;
    let mut b = Bench::new("resyn")?;
    let mut errs = Vec::new();
    for prog in [Prog::Xdp, Prog::Tc] {
        for (what, ending) in [
            ("reset", vec![(UP, RST | ACK)]),
            ("closed", vec![(guest(0), FIN | ACK), (UP, FIN | ACK)]),
        ] {
            b.reset(&no_tweak)?;
            let f = tcp(0, 47000, R1, 80);
            let mut seq = vec![(guest(0), SYN), (UP, SYN | ACK)];
            seq.extend(ending);
            seq.push((guest(0), SYN));
            for (dev, flags) in seq {
                let port = b.mapping_of(&f)?.map_or(0, |(p, _)| p);
                // The remote's RST acknowledges the guest's SYN (the
                // guest has acknowledged nothing yet): in its window.
                let frame = if dev == UP && flags & RST != 0 {
                    f.reply_seg(port, flags, 0, GUEST_SEQ_NEXT)
                } else if dev == UP {
                    f.reply_frame(port, flags, b"")
                } else {
                    f.out_frame(flags, b"")
                };
                b.translate(prog, dev, &frame)
                    .with_context(|| format!("[{prog:?}] {what}"))?;
            }
            let (_, m) = b.mapping_of(&f)?.context("no mapping")?;
            if m.state != NAT_S_SYN_OUT {
                errs.push(format!(
                    "[{prog:?}] SYN after {what}: state {:#x} ({}), timeout {} s; expected {NAT_S_SYN_OUT:#x} (syn_sent, {} s)",
                    m.state,
                    state_name(m.state),
                    b.nat_cfg().timeout_ns(6, m.state) / SEC,
                    NAT_TCP_TRANSITORY_SECS
                ));
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        bail!("{}", errs.join("\n"))
    }
}

/// A port a host socket would take replies on is never handed out
/// (bpf_sk_lookup_udp/tcp): with a 1-port range the allocation fails and
/// the packet is left to the kernel; with two ports the other is used;
/// without the socket the port is used.
#[test]
fn ports_of_host_sockets_are_skipped() -> Result<()> {
    let mut b = Bench::new("sock")?;
    let mut errs = Vec::new();
    for prog in [Prog::Xdp, Prog::Tc] {
        for proto in [ipproto::UDP, ipproto::TCP] {
            let f = Flow {
                proto,
                guest: 0,
                gport: 40000,
                remote: R1,
                rport: 53,
            };
            let frame = f.out_frame(tcp_flags::SYN, b"x");
            for (what, bind, range, want) in [
                (
                    "socket on nat_addr:P, range P-P",
                    Some(NAT_IP),
                    (P, P),
                    None,
                ),
                ("socket on 0.0.0.0:P, range P-P", Some([0; 4]), (P, P), None),
                (
                    "socket on nat_addr:P, range P-P+1",
                    Some(NAT_IP),
                    (P, P + 1),
                    Some(P + 1),
                ),
                (
                    "socket on 127.0.0.1:P, range P-P",
                    Some([127, 0, 0, 1]),
                    (P, P),
                    Some(P),
                ),
                ("no socket, range P-P", None, (P, P), Some(P)),
            ] {
                let tag = format!(
                    "[{prog:?}] {} {what}",
                    if proto == 6 { "TCP" } else { "UDP" }
                );
                b.reset(&no_tweak)?;
                let mut cfg = b.nat_cfg();
                (cfg.port_lo, cfg.port_hi) = range;
                b.set_nat_cfg(cfg)?;
                // The sockets live in this thread's namespace.
                let sa = bind.map(|a| std::net::SocketAddrV4::new(ip4(a), P));
                let _udp = match (proto, sa) {
                    (ipproto::UDP, Some(sa)) => Some(UdpSocket::bind(sa).context("bind UDP")?),
                    _ => None,
                };
                let _tcp = match (proto, sa) {
                    (ipproto::TCP, Some(sa)) => Some(TcpListener::bind(sa).context("listen TCP")?),
                    _ => None,
                };
                let (ret, out) = b.run(prog, b.ifindex(guest(0)), &frame)?;
                let st = b.nat_stats()?;
                let m = b.mapping_of(&f)?;
                match want {
                    None => {
                        if ret != redirect(prog)
                            || out != frame
                            || m.is_some()
                            || st.alloc_fail != 1
                            || st.slow_path != 1
                            || st.allocs != 0
                        {
                            errs.push(format!(
                                "{tag}: ret {ret}, {} , mapping {m:?}, {st:?}; expected untranslated, alloc_fail 1, slow_path 1",
                                if out == frame { "unchanged" } else { "changed" }
                            ));
                        }
                    }
                    Some(p) => {
                        let got = m.map(|(p, _)| p);
                        if ret != redirect(prog) || got != Some(p) || st.allocs != 1 {
                            errs.push(format!(
                                "{tag}: ret {ret}, port {got:?}, {st:?}; expected port {p}"
                            ));
                        } else {
                            let want = snat_expect(&frame, p, Some((NH_MAC, UP_MAC)));
                            if out != want {
                                errs.push(format!("{tag}: output differs from the expected"));
                            }
                        }
                    }
                }
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        bail!("{}", errs.join("\n"))
    }
}

/// With one port of a large range taken, the allocation must find another
/// of the thousands free: up to NAT_TRIES probes. The probe stride is
/// 7919; a range whose size is a multiple of it must not make every probe
/// hit the same port. Ranges of 7918 ports (one short) and of 2 x 7919
/// ports (the probes alternate between two ports) are the controls.
#[test]
fn one_taken_port_never_exhausts_a_large_range() -> Result<()> {
    let mut b = Bench::new("stride")?;
    let mut errs = Vec::new();
    for prog in [Prog::Xdp, Prog::Tc] {
        for range in [
            (50000u16, 50000 + 7918),
            (50000, 50000 + 7917),
            (40000, 40000 + 2 * 7919 - 1),
        ] {
            let size = range.1 - range.0 + 1;
            b.reset(&no_tweak)?;
            let mut cfg = b.nat_cfg();
            (cfg.port_lo, cfg.port_hi) = range;
            b.set_nat_cfg(cfg)?;
            let f = udp(0, 40000, R1, 53);
            let frame = f.out_frame(0, b"x");
            // Where this flow lands in an empty table.
            b.translate(prog, guest(0), &frame)?;
            let (first, _) = b.mapping_of(&f)?.context("no first mapping")?;
            // Another guest's live mapping takes that port; the flow starts
            // again.
            b.reset(&no_tweak)?;
            b.set_nat_cfg(cfg)?;
            b.put_mapping(&mapping(udp(1, 40000, R1, 53), first, 0, 0), now_coarse())?;
            let (ret, _) = b.run(prog, b.ifindex(guest(0)), &frame)?;
            let st = b.nat_stats()?;
            let got = b.mapping_of(&f)?.map(|(p, _)| p);
            let ok = ret == redirect(prog)
                && got.is_some_and(|p| p != first && p >= range.0 && p <= range.1)
                && st.alloc_fail == 0;
            if !ok {
                errs.push(format!(
                    "[{prog:?}] range {}-{} ({size} ports), port {first} taken: ret {ret}, new port {got:?}, alloc_fail {}",
                    range.0, range.1, st.alloc_fail
                ));
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        bail!("{}", errs.join("\n"))
    }
}

/// One flow through both programs in turn, as XDP and TC share the maps:
/// what XDP mapped, TC reuses, and the other way round.
#[test]
fn xdp_and_tc_share_mappings() -> Result<()> {
    let mut b = Bench::new("share")?;
    for (first, second) in [(Prog::Xdp, Prog::Tc), (Prog::Tc, Prog::Xdp)] {
        b.reset(&no_tweak)?;
        let f = udp(0, 41000, R1, 53);
        let a = b.translate(first, guest(0), &f.out_frame(0, b"one"))?;
        let (p1, _) = b.mapping_of(&f)?.context("no mapping")?;
        let c = b.translate(second, guest(0), &f.out_frame(0, b"one"))?;
        let (p2, _) = b.mapping_of(&f)?.context("no mapping")?;
        ensure!(
            p1 == p2 && a == c,
            "{first:?} then {second:?}: port {p1} then {p2}"
        );
        let r = b.translate(second, UP, &f.reply_frame(p1, 0, b"answer"))?;
        ensure!(r == dnat_expect(&f.reply_frame(p1, 0, b"answer"), &f));
        let st = b.nat_stats()?;
        ensure!(
            st.allocs == 1 && st.out_xdp == 1 && st.out_tc == 1,
            "{st:?}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Live frames: where translated packets really go.

/// XDP, live: a guest's packet leaves by the uplink translated, the reply
/// reaches the guest's tap translated back, a packet left to the kernel
/// reaches the host port unchanged. Nothing goes anywhere else.
#[test]
fn live_xdp_translates_both_ways() -> Result<()> {
    let mut b = Bench::new("live-xdp")?;
    let f = udp(0, 42000, R1, 53);
    let out = f.out_frame(0, b"live query");
    b.run_xdp_live(b.ifindex(guest(0)), &out)
        .context("live run")?;
    let mut want = vec![0; 5];
    want[tap_of(UP)] = 1;
    let got = b.collect(&want, Duration::from_secs(3));
    let (port, _) = b.mapping_of(&f)?.context("no mapping")?;
    let expect = snat_expect(&out, port, Some((NH_MAC, UP_MAC)));
    ensure!(
        got.iter().map(Vec::len).collect::<Vec<_>>() == want && got[tap_of(UP)][0] == expect,
        "out: got {:?} frames, expected {want:?} (up0 frame right: {})",
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        got[tap_of(UP)].first() == Some(&expect)
    );

    let reply = f.reply_frame(port, 0, b"live answer");
    b.run_xdp_live(b.ifindex(UP), &reply).context("live run")?;
    let mut want = vec![0; 5];
    want[0] = 1;
    let got = b.collect(&want, Duration::from_secs(3));
    let expect = dnat_expect(&reply, &f);
    ensure!(
        got.iter().map(Vec::len).collect::<Vec<_>>() == want && got[0][0] == expect,
        "in: got {:?} frames, expected {want:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );

    let frag = set_frag(&out, 0x2000);
    b.run_xdp_live(b.ifindex(guest(0)), &frag)
        .context("live run")?;
    let mut want = vec![0; 5];
    want[tap_of(Dev::Host)] = 1;
    let got = b.collect(&want, Duration::from_secs(3));
    ensure!(
        got.iter().map(Vec::len).collect::<Vec<_>>() == want && got[tap_of(Dev::Host)][0] == frag,
        "slow path: got {:?} frames, expected {want:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
    Ok(())
}

/// XDP then TC, live: a reply whose guest MAC aged out of the FDB is
/// flooded to the guests only (XDP passes it to TC, which clones it to
/// every port but the host port). It must not go back out of the uplink it
/// came from (a frame for a private address on the LAN) nor to the host
/// port.
#[test]
fn live_xdp_reply_for_an_unknown_guest_mac_floods_to_guests_only() -> Result<()> {
    let mut b = Bench::new("live-flood")?;
    let f = udp(0, 42000, R1, 53);
    b.put_mapping(&mapping(f, P, 0, 0), now_coarse())?;
    b.forget_guest(0)?;
    let reply = f.reply_frame(P, 0, b"who has it?");
    let expect = dnat_expect(&reply, &f);
    // TC first, as the reference.
    let (ret, _) = b.run(Prog::Tc, b.ifindex(UP), &reply)?;
    ensure!(ret == TC_ACT_SHOT, "TC returned {ret}");
    let got = b.collect(&[1, 1, 1, 0, 0], Duration::from_secs(3));
    let tc_counts: Vec<usize> = got.iter().map(Vec::len).collect();
    ensure!(
        tc_counts == vec![1, 1, 1, 0, 0] && got[..3].iter().all(|v| v[0] == expect),
        "TC: frames on g1 g2 g3 hp up0: {tc_counts:?}"
    );
    b.put_mapping(&mapping(f, P, 0, 0), now_coarse())?;
    // As umlbr sets it up: TC on the uplink finishes what XDP passes.
    b.attach_tc(&["up0"])?;
    b.run_xdp_live(b.ifindex(UP), &reply).context("live run")?;
    let got = b.collect(&[1, 1, 1, 0, 0], Duration::from_secs(3));
    let counts: Vec<usize> = got.iter().map(Vec::len).collect();
    let right = got.iter().flatten().all(|x| *x == expect);
    ensure!(
        counts == vec![1, 1, 1, 0, 0] && right,
        "XDP: frames on g1 g2 g3 hp up0: {counts:?} (TC: {tc_counts:?}), all the translated reply: {right}"
    );
    Ok(())
}

/// TC, live, on the taps' tcx ingress: a frame written into a guest's tap
/// (as the guest sends it) leaves by the uplink translated; the reply
/// written into the uplink's tap (as the wire delivers it) reaches the
/// guest's tap translated back.
#[test]
fn live_tc_translates_both_ways() -> Result<()> {
    let mut b = Bench::new("live-tc")?;
    b.attach_tc(&["g1", "up0"])?;
    let f = udp(0, 43000, R1, 53);
    let out = f.out_frame(0, b"live tc query");
    b.ctx.taps.write(0, &out)?;
    let mut want = vec![0; 5];
    want[tap_of(UP)] = 1;
    let got = b.collect(&want, Duration::from_secs(3));
    let (port, _) = b.mapping_of(&f)?.context("no mapping")?;
    let expect = snat_expect(&out, port, Some((NH_MAC, UP_MAC)));
    ensure!(
        got.iter().map(Vec::len).collect::<Vec<_>>() == want && got[tap_of(UP)][0] == expect,
        "out: got {:?} frames, expected {want:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let reply = f.reply_frame(port, 0, b"live tc answer");
    b.ctx.taps.write(tap_of(UP), &reply)?;
    let mut want = vec![0; 5];
    want[0] = 1;
    let got = b.collect(&want, Duration::from_secs(3));
    ensure!(
        got.iter().map(Vec::len).collect::<Vec<_>>() == want
            && got[0][0] == dnat_expect(&reply, &f),
        "in: got {:?} frames, expected {want:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let st = b.nat_stats()?;
    ensure!(st.out_tc == 1 && st.in_tc == 1 && st.allocs == 1, "{st:?}");
    Ok(())
}

/// TC, live: a next hop with no neighbour entry. bpf_redirect_neigh makes
/// the kernel resolve it: an ARP request leaves by the uplink, and once
/// answered the translated packet follows with the resolved MACs.
#[test]
fn live_tc_redirect_neigh_resolves_the_next_hop() -> Result<()> {
    let mut b = Bench::new("live-neigh")?;
    b.attach_tc(&["g1"])?;
    let f = udp(0, 44000, NN, 53);
    let out = f.out_frame(0, b"via an unresolved next hop");
    b.ctx.taps.write(0, &out)?;
    let mut want = vec![0; 5];
    want[tap_of(UP)] = 1;
    let got = b.collect(&want, Duration::from_secs(2));
    let arp = got[tap_of(UP)]
        .iter()
        .find(|x| x.len() >= 42 && x[12..14] == [0x08, 0x06])
        .context(format!(
            "no ARP request on up0: frames {:?}",
            got.iter().map(Vec::len).collect::<Vec<_>>()
        ))?
        .clone();
    ensure!(
        arp[0..6] == [0xff; 6] && arp[6..12] == UP_MAC && arp[14 + 24..14 + 28] == [192, 168, 1, 2],
        "unexpected ARP {arp:02x?}"
    );
    let answer = Frame::new(UP_MAC, NH2_MAC)
        .arp_reply([192, 168, 1, 2], NAT_IP)
        .build();
    b.ctx
        .taps
        .write(tap_of(UP), &answer)
        .context("answering the ARP")?;
    let got = b.collect(&want, Duration::from_secs(2));
    let (port, _) = b.mapping_of(&f)?.context("no mapping")?;
    let expect = snat_expect(&out, port, Some((NH2_MAC, UP_MAC)));
    ensure!(
        got[tap_of(UP)].contains(&expect),
        "after the ARP reply: frames {:?}, translated packet with resolved MACs among them: false",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The per-guest quota and the table that never evicts (issue 15).

impl Bench {
    /// Live mappings charged to guest `g`'s port (UMLBR_NAT_QUOTA).
    fn quota_count(&mut self, g: usize) -> Result<u32> {
        let port = self.ifindex(guest(g));
        let m: HashMap<&mut MapData, u32, NatQuota> = self.ctx.map(names::NAT_QUOTA)?;
        Ok(m.get(&port, 0).map(|q| q.count).unwrap_or(0))
    }

    /// Set the datapath's sweep clock: `Some(t)`: last swept at `t`;
    /// `None`: never (a sweep is due).
    fn set_sweep_clock(&mut self, t: Option<u64>) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, NatQuota> = self.ctx.map(names::NAT_QUOTA)?;
        match t {
            Some(t) => m.insert(
                0,
                NatQuota {
                    swept_ns: t,
                    ..Default::default()
                },
                0,
            )?,
            None => {
                let _ = m.remove(&0);
            }
        }
        Ok(())
    }

    /// Make the flow's mapping idle for `idle_ns` (its cached next hop
    /// as old).
    fn age_mapping(&mut self, f: &Flow, idle_ns: u64) -> Result<()> {
        let (port, mut i) = self.mapping_of(f)?.context("no mapping to age")?;
        i.last_seen_ns = now_coarse() - idle_ns;
        self.ctx.insert(names::NAT_IN, f.in_key(port), i)?;
        let mut o = *self
            .nat_out()?
            .get(&KeyOrd(f.out_key()))
            .context("no outbound entry")?;
        o.hop_ns = i.last_seen_ns;
        self.ctx.insert(names::NAT_OUT, f.out_key(), o)
    }
}

fn dropped(prog: Prog) -> u32 {
    match prog {
        Prog::Xdp => umlbr_tests::bpf::XDP_DROP,
        Prog::Tc => umlbr_tests::bpf::TC_ACT_SHOT,
    }
}

/// `--nat-max-per-guest 3`: a guest's port gets three mappings, its
/// fourth new flow is dropped and counted as `quota` (no mapping, nothing
/// left to the kernel), while another guest still maps its flows. An
/// expired mapping replaced by its own flow keeps the count; one swept
/// out gives its place back (the sweep, due, runs when the guest is at
/// its quota, and the new flow is mapped); a sweep runs at most once in
/// 5 s (NAT_SWEEP_INTERVAL_NS). XDP and TC alike.
#[test]
fn quota_limits_each_guest_and_expiry_gives_back() -> Result<()> {
    let mut b = Bench::new("quota")?;
    let sec = 1_000_000_000u64;
    for prog in [Prog::Xdp, Prog::Tc] {
        b.reset(&|c| c.max_per_guest = 3)?;
        let flows: Vec<Flow> = (0..6).map(|i| udp(0, 43000 + i, R1, 53)).collect();
        for f in &flows[..3] {
            b.translate(prog, guest(0), &f.out_frame(0, b"q"))?;
        }
        ensure!(
            b.quota_count(0)? == 3,
            "[{prog:?}] count {}",
            b.quota_count(0)?
        );
        // A sweep just ran: the fourth is dropped without one.
        b.set_sweep_clock(Some(now_coarse()))?;
        let (ret, _) = b.run(prog, b.ifindex(guest(0)), &flows[3].out_frame(0, b"q"))?;
        let st = b.nat_stats()?;
        ensure!(
            ret == dropped(prog) && st.quota == 1 && st.allocs == 3 && st.slow_path == 0,
            "[{prog:?}] over the quota: ret {ret}, {st:?}"
        );
        ensure!(
            b.mapping_of(&flows[3])?.is_none(),
            "[{prog:?}] mapped over the quota"
        );
        // Another guest is not limited by guest 0's quota.
        let other = udp(1, 43000, R1, 53);
        b.translate(prog, guest(1), &other.out_frame(0, b"q"))?;
        ensure!(b.quota_count(1)? == 1 && b.quota_count(0)? == 3);

        // An expired mapping, used again by its own flow: replaced, the
        // count unchanged (credited on removal, charged anew).
        b.age_mapping(&flows[0], (NAT_UDP_SECS + 1) * sec)?;
        b.translate(prog, guest(0), &flows[0].out_frame(0, b"again"))?;
        let st = b.nat_stats()?;
        ensure!(
            b.quota_count(0)? == 3 && st.expired == 1 && st.allocs == 5,
            "[{prog:?}] after replacing an expired mapping: count {}, {st:?}",
            b.quota_count(0)?
        );

        // Flow 1 expires; at the quota, a due sweep removes it (both
        // directions) and the new flow gets its place.
        b.age_mapping(&flows[1], (NAT_UDP_SECS + 1) * sec)?;
        let (port1, _) = b.mapping_of(&flows[1])?.context("flow 1")?;
        b.set_sweep_clock(None)?;
        b.translate(prog, guest(0), &flows[3].out_frame(0, b"swept"))?;
        let st = b.nat_stats()?;
        let out = b.nat_out()?;
        let inn = b.nat_in()?;
        ensure!(
            !out.contains_key(&KeyOrd(flows[1].out_key()))
                && !inn.contains_key(&KeyOrd(flows[1].in_key(port1)))
                && b.mapping_of(&flows[3])?.is_some()
                && b.quota_count(0)? == 3
                && st.expired == 2
                && st.quota == 1,
            "[{prog:?}] after the sweep: count {}, {st:?}, {} out / {} in entries",
            b.quota_count(0)?,
            out.len(),
            inn.len()
        );

        // Flow 2 expires too, but the table was swept just now:
        // no sweep, the new flow is dropped, flow 2 stays until used.
        b.age_mapping(&flows[2], (NAT_UDP_SECS + 1) * sec)?;
        let (ret, _) = b.run(prog, b.ifindex(guest(0)), &flows[4].out_frame(0, b"q"))?;
        let st = b.nat_stats()?;
        ensure!(
            ret == dropped(prog) && st.quota == 2 && b.nat_in()?.len() == 4,
            "[{prog:?}] a second sweep within 5 s: ret {ret}, {st:?}"
        );
        // No limit (0): nothing dropped.
        b.reset(&|c| c.max_per_guest = 0)?;
        for f in &flows {
            b.translate(prog, guest(0), &f.out_frame(0, b"q"))?;
        }
        ensure!(b.quota_count(0)? == 6 && b.nat_stats()?.quota == 0);
    }
    Ok(())
}

/// A table full of live mappings evicts none of them: a new flow gets no
/// mapping (alloc_fail, the kernel's path) and a live one still
/// translates. Once a sweep is due, the expired mappings among them are
/// removed and the new flow is mapped. XDP and TC alike.
#[test]
fn a_full_table_evicts_no_live_mapping() -> Result<()> {
    let mut b = Bench::new("full")?;
    let sec = 1_000_000_000u64;
    let expired = 10u32;
    for prog in [Prog::Xdp, Prog::Tc] {
        b.reset(&no_tweak)?;
        let victim = udp(0, 44000, R1, 53);
        b.translate(prog, guest(0), &victim.out_frame(0, b"mine"))?;
        let (vport, _) = b.mapping_of(&victim)?.context("victim")?;
        // Guest 1's mappings fill both tables; the first `expired` of
        // them idle past the UDP timeout.
        let now = now_coarse();
        let owner = b.ifindex(guest(1));
        let fill = umlbr_common::NAT_SIZE - 1;
        {
            let mut outs: HashMap<&mut MapData, NatKey, NatOut> = b.ctx.map(names::NAT_OUT)?;
            for i in 0..fill {
                let f = udp(
                    1,
                    1024 + (i % 60000) as u16,
                    [10, 200, (i / 60000) as u8, 1],
                    53,
                );
                let o = NatOut {
                    addr: be32(NAT_IP),
                    port: f.gport.to_be(),
                    owner,
                    ..Default::default()
                };
                outs.insert(f.out_key(), o, 0)?;
            }
        }
        {
            let mut ins: HashMap<&mut MapData, NatKey, NatIn> = b.ctx.map(names::NAT_IN)?;
            for i in 0..fill {
                let f = udp(
                    1,
                    1024 + (i % 60000) as u16,
                    [10, 200, (i / 60000) as u8, 1],
                    53,
                );
                let idle = if i < expired {
                    (NAT_UDP_SECS + 1) * sec
                } else {
                    0
                };
                let m = mapping(f, f.gport, 0, idle);
                ins.insert(f.in_key(f.gport), m.nat_in(now), 0)?;
            }
        }
        b.set_sweep_clock(Some(now_coarse()))?;
        // `umlbr monitor` listens: the refusal is an event.
        umlbr_tests::events::reset(&mut b.ctx)?;
        umlbr_tests::events::listen(&mut b.ctx, umlbr_tests::events::FOREVER)?;
        let newcomer = udp(2, 44001, R1, 53);
        let (ret, _) = b.run(prog, b.ifindex(guest(2)), &newcomer.out_frame(0, b"new"))?;
        let ev = umlbr_tests::events::drain(&mut b.ctx)?;
        ensure!(
            ev.len() == 1
                && ev[0].kind == umlbr_common::EV_NAT_FULL
                && ev[0].ifindex == b.ifindex(guest(2))
                && ev[0].sport == newcomer.gport.to_be(),
            "[{prog:?}] full table: events {ev:?}"
        );
        let st = b.nat_stats()?;
        ensure!(
            ret == redirect(prog)
                && b.mapping_of(&newcomer)?.is_none()
                && st.alloc_fail == 1
                && st.slow_path == 1
                && b.quota_count(2)? == 0,
            "[{prog:?}] full table: ret {ret}, {st:?}"
        );
        let out = b.translate(prog, guest(0), &victim.out_frame(0, b"mine"))?;
        ensure!(
            out == snat_expect(&victim.out_frame(0, b"mine"), vport, Some((NH_MAC, UP_MAC))),
            "[{prog:?}] the live mapping no longer translates"
        );
        let r = b.translate(prog, UP, &victim.reply_frame(vport, 0, b"answer"))?;
        ensure!(r == dnat_expect(&victim.reply_frame(vport, 0, b"answer"), &victim));
        // A sweep falls due: the expired mappings go, the newcomer is mapped.
        b.set_sweep_clock(None)?;
        let t = std::time::Instant::now();
        b.translate(prog, guest(2), &newcomer.out_frame(0, b"new"))?;
        // What a sweep of a full table costs the packet that starts it.
        println!(
            "[{prog:?}] a sweep of {} mappings: {:?}",
            fill + 1,
            t.elapsed()
        );
        let ev = umlbr_tests::events::drain(&mut b.ctx)?;
        umlbr_tests::events::listen(&mut b.ctx, 0)?;
        let kinds = |k: u16| ev.iter().filter(|e| e.kind == k).count();
        ensure!(
            kinds(umlbr_common::EV_NAT_EXPIRED) == expired as usize
                && kinds(umlbr_common::EV_NAT_NEW) == 1
                && ev.len() == expired as usize + 1
                && ev
                    .iter()
                    .filter(|e| e.kind == umlbr_common::EV_NAT_EXPIRED)
                    .all(|e| e.ifindex == owner),
            "[{prog:?}] after the sweep: {} events: {:?}",
            ev.len(),
            ev.iter().map(|e| (e.kind, e.ifindex)).collect::<Vec<_>>()
        );
        let st = b.nat_stats()?;
        ensure!(
            b.mapping_of(&newcomer)?.is_some()
                && st.expired == expired as u64
                && b.nat_in()?.len() == (fill + 2 - expired) as usize
                && b.quota_count(2)? == 1,
            "[{prog:?}] after the sweep: {st:?}, {} mappings",
            b.nat_in()?.len()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Events (`umlbr monitor`): NAT mappings made, expired and refused.
// (A module of its own, for its imports.)

mod monitor_events {
    use umlbr_common::{
        EV_NAT_EXPIRED, EV_NAT_NEW, EV_NAT_NO_PORT, EV_NAT_QUOTA, Event, NAT_UDP_SECS,
    };
    use umlbr_tests::events::{self, FOREVER};

    use super::*;

    impl Bench {
        /// The event of `kind` about `f` (from guest `f.guest`'s port),
        /// mapped to outside port `nat_port` (0: none) of the masquerade
        /// address.
        fn nat_event(&self, kind: u16, f: &Flow, nat_port: u16) -> Event {
            Event {
                kind,
                proto: f.proto,
                ifindex: self.ifindex(guest(f.guest)),
                mac: gmac(f.guest),
                nat_addr: be32(NAT_IP),
                saddr: be32(gip(f.guest)),
                daddr: be32(f.remote),
                sport: f.gport.to_be(),
                dport: f.rport.to_be(),
                nat_port: nat_port.to_be(),
                ..Default::default()
            }
        }

        /// The events in the ring, their times checked and cleared.
        fn events(&mut self, t0: u64) -> Result<Vec<Event>> {
            let t1 = now_coarse();
            let got = events::drain(&mut self.ctx)?;
            for e in &got {
                ensure!(
                    e.ts_ns >= t0 && e.ts_ns <= t1,
                    "event {e:?} stamped outside [{t0}, {t1}]"
                );
            }
            Ok(got.into_iter().map(|e| Event { ts_ns: 0, ..e }).collect())
        }

        /// The flow's outside port.
        fn port_of(&mut self, f: &Flow) -> Result<u16> {
            Ok(self.mapping_of(f)?.context("no mapping")?.0)
        }
    }

    /// A new mapping writes `nat_new` (the guest's port and MAC, the
    /// flow, the outside address and port), its next packets nothing; a
    /// flow over its guest's quota `nat_quota`; an expired mapping found
    /// by its flow `nat_expired` and then `nat_new`; one swept out
    /// `nat_expired`; a flow finding no free port `nat_no_port`. Nothing
    /// without a lease, or with one run out. XDP and TC alike.
    #[test]
    fn nat_events() -> Result<()> {
        let mut b = Bench::new("mon-events")?;
        let sec = 1_000_000_000u64;
        let a = udp(0, 43000, R1, 53);
        let c = udp(0, 43001, R1, 53);
        for prog in [Prog::Xdp, Prog::Tc] {
            // Made, then used: one event.
            b.reset(&no_tweak)?;
            events::reset(&mut b.ctx)?;
            events::listen(&mut b.ctx, FOREVER)?;
            let t0 = now_coarse();
            b.translate(prog, guest(0), &a.out_frame(0, b"q"))?;
            b.translate(prog, guest(0), &a.out_frame(0, b"again"))?;
            let pa = b.port_of(&a)?;
            let got = b.events(t0)?;
            ensure!(
                got == [b.nat_event(EV_NAT_NEW, &a, pa)],
                "[{prog:?}] new mapping: {got:?}"
            );

            // Over the quota (no sweep due): refused.
            b.reset(&|c| c.max_per_guest = 1)?;
            b.set_sweep_clock(Some(now_coarse()))?;
            let t0 = now_coarse();
            b.translate(prog, guest(0), &a.out_frame(0, b"q"))?;
            let pa = b.port_of(&a)?;
            b.run(prog, b.ifindex(guest(0)), &c.out_frame(0, b"q"))?;
            let got = b.events(t0)?;
            ensure!(
                got == [
                    b.nat_event(EV_NAT_NEW, &a, pa),
                    b.nat_event(EV_NAT_QUOTA, &c, 0)
                ],
                "[{prog:?}] quota: {got:?}"
            );

            // Expired, found by its own flow: expired, then made anew.
            b.age_mapping(&a, (NAT_UDP_SECS + 1) * sec)?;
            let t0 = now_coarse();
            b.translate(prog, guest(0), &a.out_frame(0, b"later"))?;
            let pa2 = b.port_of(&a)?;
            let got = b.events(t0)?;
            ensure!(
                got == [
                    b.nat_event(EV_NAT_EXPIRED, &a, pa),
                    b.nat_event(EV_NAT_NEW, &a, pa2)
                ],
                "[{prog:?}] expired and found: {got:?}"
            );

            // Expired, swept out by a flow at the quota: expired, then
            // the new flow made.
            b.age_mapping(&a, (NAT_UDP_SECS + 1) * sec)?;
            b.set_sweep_clock(None)?;
            let t0 = now_coarse();
            b.translate(prog, guest(0), &c.out_frame(0, b"q"))?;
            let pc = b.port_of(&c)?;
            let got = b.events(t0)?;
            ensure!(
                got == [
                    b.nat_event(EV_NAT_EXPIRED, &a, pa2),
                    b.nat_event(EV_NAT_NEW, &c, pc)
                ],
                "[{prog:?}] swept: {got:?}"
            );

            // One outside port, taken by a live mapping to the same
            // remote end: no port for the next flow.
            b.reset(&|c| {
                c.port_lo = PORT_LO;
                c.port_hi = PORT_LO;
            })?;
            let t0 = now_coarse();
            b.translate(prog, guest(0), &a.out_frame(0, b"q"))?;
            b.run(prog, b.ifindex(guest(0)), &c.out_frame(0, b"q"))?;
            let got = b.events(t0)?;
            ensure!(
                got == [
                    b.nat_event(EV_NAT_NEW, &a, PORT_LO),
                    b.nat_event(EV_NAT_NO_PORT, &c, 0)
                ],
                "[{prog:?}] no port: {got:?}"
            );

            // No lease, and a lease run out: nothing.
            for until in [0, now_coarse() - sec] {
                b.reset(&|c| c.max_per_guest = 1)?;
                b.set_sweep_clock(Some(now_coarse()))?;
                events::listen(&mut b.ctx, until)?;
                b.translate(prog, guest(0), &a.out_frame(0, b"q"))?;
                b.run(prog, b.ifindex(guest(0)), &c.out_frame(0, b"q"))?;
                let got = b.events(0)?;
                ensure!(got.is_empty(), "[{prog:?}] lease {until}: {got:?}");
            }
            events::listen(&mut b.ctx, 0)?;
        }
        Ok(())
    }
}

/// A reply for a guest behind a port outside the devmap, on a bridge with
/// a VXLAN port (`CFG_F_VXLAN`; g3 stands for the VXLAN device here: a
/// port XDP cannot send to). XDP leaves it untranslated to TC (it cannot
/// send it there itself, and a translated frame passed up would no longer
/// match its mapping); TC on the uplink translates it and sends it to g3.
/// Without the handoff XDP translated it and its failed redirect dropped it.
#[test]
fn live_xdp_reply_for_a_guest_behind_a_vxlan_port_goes_to_tc() -> Result<()> {
    let mut b = Bench::new("vxlan")?;
    let g3 = b.ifindex(guest(2));
    b.ctx.devmap_remove(names::PORTS, g3)?;
    let mut cfg = b.ctx.config()?;
    cfg.flags |= umlbr_common::CFG_F_TC_FLOOD | umlbr_common::CFG_F_VXLAN;
    b.ctx.set_config(cfg)?;
    let f = udp(2, 42000, R1, 53);
    b.put_mapping(&mapping(f, P, 0, 0), now_coarse())?;
    let reply = f.reply_frame(P, 0, b"over the overlay");
    let (ret, out) = b.run(Prog::Xdp, b.ifindex(UP), &reply)?;
    ensure!(
        ret == XDP_PASS && out == reply,
        "XDP returned {ret} (expected XDP_PASS {XDP_PASS}), frame unchanged: {}",
        out == reply
    );
    ensure!(b.nat_stats()?.in_xdp == 0, "{:?}", b.nat_stats()?);
    // As umlbr sets it up: TC on the uplink finishes what XDP passes.
    b.attach_tc(&["up0"])?;
    b.run_xdp_live(b.ifindex(UP), &reply).context("live run")?;
    let got = b.collect(&[0, 0, 1, 0, 0], Duration::from_secs(3));
    let counts: Vec<usize> = got.iter().map(Vec::len).collect();
    let expect = dnat_expect(&reply, &f);
    ensure!(
        counts == vec![0, 0, 1, 0, 0] && got[2][0] == expect,
        "frames on g1 g2 g3 hp up0: {counts:?}, g3's the translated reply: {}",
        got[2].first() == Some(&expect)
    );
    let st = b.nat_stats()?;
    ensure!(st.in_xdp == 0 && st.in_tc == 1, "{st:?}");
    Ok(())
}
