//! A bounded BPF_PROG_TEST_RUN fuzz pass of umlbr's datapath (umlbr_xdp,
//! umlbr_tc on every port's ingress, umlbr_tc_out on the uplink's egress),
//! without and with a masquerade, judged by an oracle written here from
//! the RFCs, not from the datapath's code.
//!
//! Frames: the seed corpus in tests/fuzz/corpus/ (one frame per file, hex;
//! the file name's prefix is the port it enters: g1-, g2-, g3-, hp-, up-),
//! mutated at random and at known header offsets: truncated and extended
//! frames (0..=1600 bytes), IHL 0..15, total length against the frame's,
//! fragments, 0..3 VLAN tags (0x8100/0x88a8), TCP data offset and flags,
//! ICMP errors quoting a packet cut at every length, IPv6 extension
//! headers, wrong checksums, Ethernet trailers.
//!
//! The oracle, per frame (`judge`):
//! - checksums: every IPv4 header, TCP, UDP and ICMP checksum of the
//!   output, and those of the packet an ICMP error quotes (where the quote
//!   holds the field), keeps the input's one's complement residual: valid
//!   stays valid, and an invalid one stays exactly as invalid (incremental
//!   updates, RFC 1624, carry an error through; it is neither fixed nor
//!   made worse). A UDP checksum of 0 (none) stays 0. No byte outside the
//!   MACs and the IPv4 packet (its total length) changes; without a
//!   masquerade no byte changes at all. A rewritten packet is never passed
//!   to the kernel.
//! - actions: XDP only DROP, PASS, REDIRECT; TC only OK, SHOT, REDIRECT. An
//!   untranslated REDIRECT only for a destination that is multicast,
//!   unknown, or in the FDB on another port (not isolated from an isolated
//!   ingress), never for a frame whose source is invalid or a static entry
//!   of another port. A translated packet carries the mapping's address and
//!   port (out) or the guest's (in).
//! - maps: the FDB gains or moves only the frame's source MAC, to the
//!   ingress port, never a static entry, a multicast or zero source;
//!   UMLBR_LEARN's counts equal the learned entries per port, within their
//!   limit; the NAT maps gain a mapping only for a well-formed (RFC 791,
//!   793, 768, 792 lengths; conntrack's tcp_error/udp_error checks) guest
//!   TCP/UDP/ICMP echo packet to the gateway's MAC from the subnet to a
//!   destination behind the uplink, and change a mapping only for a
//!   well-formed packet of its flow (a reply: not an ICMP error); nothing
//!   is removed.
//! - counters: only the ingress port's move, each by at most one; a frame
//!   is counted received once (by XDP unless XDP passes it, else by TC);
//!   `learned`/`moved` as the FDB changed; `spoofed`, `isolated`, `storm`
//!   only with `dropped`, and `dropped` only with a drop. The masquerade's:
//!   a translation once, by the program that made it; `allocs` per new
//!   mapping.
//! - where frames go: TC's clones (floods, the uplink egress's copies to
//!   the guests) really leave the taps in a test run; and a bounded live
//!   sample writes frames into the taps with umlbr_xdp attached. Whatever
//!   comes out of a port must be one it may get: not the ingress, not
//!   isolated from an isolated ingress, the FDB's port of a known
//!   destination, never the host port from the uplink's egress; nothing
//!   untranslated, and nothing from the guests' subnet, out of the
//!   masquerade uplink.
//!
//! Benches: a switch with an uplink flooding in XDP, the same flooding in
//! TC, a masquerade whose uplink takes XDP frames, one whose uplink does
//! not (TC translates). g2 and g3 are isolated; every port has a learning
//! limit (reached within a batch); four mappings are made at each reset.
//!
//! Budget: `UMLBR_FUZZ_SECS` (default 16) in all; the seed is printed and
//! `UMLBR_FUZZ_SEED` replays it. Failing inputs are written to
//! target/fuzz-failures/ and shown in hex. `cargo xtask fuzz --secs N`
//! runs longer passes; `cargo xtask fuzz --write-corpus` rewrites the
//! corpus from the builders below (`corpus_is_current` checks it).
//!
//! Needs root (except `corpus_is_current`).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use umlbr_common::{
    CFG_F_TC_FLOOD, Config, FDB_F_LOCAL, FDB_F_STATIC, FdbEntry, FdbKey, NAT_F_XDP_TX,
    NAT_ICMP_SECS, NAT_S_REPLIED, NAT_S_SYN_OUT, NAT_T_ACK, NAT_T_SEQ, NAT_TCP_CLOSING_SECS,
    NAT_TCP_ESTABLISHED_SECS, NAT_TCP_TRANSITORY_SECS, NAT_UDP_SECS, NAT_UDP_STREAM_SECS,
    NatConfig, NatIn, NatKey, NatOut, NatStats, PORT_F_ISOLATED, PORT_KIND_OTHER, PortLearn,
    PortStats, names,
};
use umlbr_tests::{
    bpf::{
        AGING_NS, Ctx, Errno, LAN_MAC, SEC, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, UP_IP, UP_MAC,
        XDP_DROP, XDP_PASS, XDP_REDIRECT,
    },
    netns::Netns,
    wire::{
        BROADCAST, Frame, Mac, TcpHeader, checksum_with, fix_checksums, fmt_mac, icmp_type,
        ipproto, ipv4_packet, tcp_flags, tcp_segment, udp_datagram,
    },
};

mod umlbr_lib;
use umlbr_lib::monotonic_coarse_ns as now_coarse;

// ---------------------------------------------------------------------------
// The bench's addresses (as tests/prog_nat.rs's).

const GW_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x01];
const NH_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x01];
const NAT_IP: [u8; 4] = UP_IP;
const GW_IP: [u8; 4] = [192, 168, 2, 1];
const LAN_HOST: [u8; 4] = [192, 168, 1, 50];
const R1: [u8; 4] = [203, 0, 113, 5];
const NN: [u8; 4] = [198, 51, 100, 7];
const OTHER_NET: [u8; 4] = [10, 77, 0, 5];
const UNREACH: [u8; 4] = [203, 0, 113, 99];
const SMALL_MTU: [u8; 4] = [203, 0, 113, 77];
const ROUTER: [u8; 4] = [198, 18, 0, 1];
const PORT_LO: u16 = 61000;
const PORT_HI: u16 = 61999;
/// Outside ports of the mappings every reset makes.
const P_UDP: u16 = 61001;
const P_TCP: u16 = 61002;
const P_ICMP: u16 = 61003;
const P_LAN: u16 = 61004;
/// Most MACs a port learns in the bench: reached within a batch.
const MAX_LEARNED: u32 = 12;
/// Frames between resets of the maps: keeps the snapshots small and every
/// mapping far from its timeouts.
const BATCH: usize = 48;

fn gip(g: usize) -> [u8; 4] {
    [192, 168, 2, 10 + g as u8]
}

fn gmac(g: usize) -> Mac {
    [0x02, 0, 0, 0, 0x02, 0x10 + g as u8]
}

fn be32(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

/// Taps: three guests, the host port, the uplink.
const TAPS: [&str; 5] = ["fzg1", "fzg2", "fzg3", "fzhp", "fzup0"];
const HP: usize = 3;
const UP: usize = 4;
/// g2 and g3 are isolated.
fn isolated(tap: usize) -> bool {
    tap == 1 || tap == 2
}

// ---------------------------------------------------------------------------
// A deterministic PRNG (SplitMix64): no dependency, replayable by seed.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

// ---------------------------------------------------------------------------
// The seed corpus, built with the wire builders.

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

/// An IPv6 packet (next header `next`, hop limit 255) with `payload`.
fn ipv6_packet(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 255]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

/// An ICMPv6 message with its checksum (RFC 4443, pseudo-header of RFC 8200).
fn icmpv6(src: [u8; 16], dst: [u8; 16], ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    m.extend_from_slice(body);
    let mut sum = 0u32;
    for c in src.chunks(2).chain(dst.chunks(2)) {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    sum += m.len() as u32 + 58;
    let c = checksum_with(sum, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn ll6(mac: Mac) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8..11].copy_from_slice(&[mac[0] ^ 2, mac[1], mac[2]]);
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13..16].copy_from_slice(&mac[3..6]);
    a
}

/// The packet as it left translated, as an ICMP error quotes it: the
/// first `len` bytes.
fn quoted(proto: u8, sport: u16, remote: [u8; 4], rport: u16, len: usize) -> Vec<u8> {
    let (src, dst) = (Ipv4Addr::from(NAT_IP), Ipv4Addr::from(remote));
    let l4 = match proto {
        ipproto::TCP => tcp_segment(
            src,
            dst,
            &TcpHeader::new(sport, rport, tcp_flags::ACK | tcp_flags::PSH),
            b"data",
        ),
        ipproto::UDP => udp_datagram(src, sport, dst, rport, b"query"),
        _ => umlbr_tests::wire::icmp_echo(false, sport, 1, b"ping"),
    };
    let mut p = ipv4_packet(src, dst, proto, 63, &l4);
    p.truncate(len);
    p
}

/// Every seed: (file name, frame).
fn seeds() -> Vec<(String, Vec<u8>)> {
    let g = |i: usize| Frame::new(GW_MAC, gmac(i));
    let (g0, g1) = (gip(0), gip(1));
    let syn = TcpHeader::new(41000, 80, tcp_flags::SYN).options(&[2, 4, 5, 0xb4]);
    let ack = TcpHeader::new(40000, 80, tcp_flags::ACK | tcp_flags::PSH)
        .seq(1001)
        .ack(5001);
    let up = || Frame::new(UP_MAC, NH_MAC);
    let mut v: Vec<(&str, Vec<u8>)> = vec![
        (
            "g1-arp-request",
            Frame::new(BROADCAST, gmac(0))
                .arp_request(g0, GW_IP)
                .pad_min()
                .build(),
        ),
        (
            "g1-arp-reply",
            Frame::new(gmac(1), gmac(0))
                .arp_reply(g0, g1)
                .pad_min()
                .build(),
        ),
        (
            "g1-udp-to-g2",
            Frame::new(gmac(1), gmac(0))
                .udp(g0, 7, g1, 7, b"hello")
                .pad_min()
                .build(),
        ),
        (
            "g1-udp-out-new",
            g(0).udp(g0, 5555, R1, 53, b"query").pad_min().build(),
        ),
        (
            "g1-udp-out-mapped",
            g(0).udp(g0, 5000, R1, 53, b"query").pad_min().build(),
        ),
        ("g1-tcp-syn-out", g(0).tcp(g0, R1, &syn, b"").build()),
        (
            "g1-tcp-ack-mapped",
            g(0).tcp(g0, R1, &ack, b"GET /").build(),
        ),
        (
            "g1-tcp-fin-mapped",
            g(0).tcp(
                g0,
                R1,
                &TcpHeader::new(40000, 80, tcp_flags::FIN | tcp_flags::ACK)
                    .seq(1001)
                    .ack(5001),
                b"",
            )
            .pad_min()
            .build(),
        ),
        (
            "g1-tcp-rst-mapped",
            g(0).tcp(
                g0,
                R1,
                &TcpHeader::new(40000, 80, tcp_flags::RST).seq(1001),
                b"",
            )
            .pad_min()
            .build(),
        ),
        (
            "g1-tcp-doff15",
            g(0).tcp(
                g0,
                R1,
                &TcpHeader::new(41001, 443, tcp_flags::SYN).options(&[1; 40]),
                b"",
            )
            .build(),
        ),
        (
            "g1-tcp-syn-to-lan",
            g(0).tcp(
                g0,
                LAN_HOST,
                &TcpHeader::new(41002, 22, tcp_flags::SYN),
                b"",
            )
            .pad_min()
            .build(),
        ),
        (
            "g1-tcp-syn-no-neigh",
            g(0).tcp(g0, NN, &TcpHeader::new(41003, 80, tcp_flags::SYN), b"")
                .pad_min()
                .build(),
        ),
        (
            "g2-icmp-echo-mapped",
            g(1).icmp_echo(g1, R1, false, 0x1234, 1, b"ping")
                .pad_min()
                .build(),
        ),
        (
            "g1-icmp-echo-new",
            g(0).icmp_echo(g0, R1, false, 77, 1, b"ping")
                .pad_min()
                .build(),
        ),
        ("g1-udp-ip-options", {
            let mut f = g(0).udp(g0, 5001, R1, 53, b"opts").build();
            // IHL 6: one word of NOP options, before the UDP header.
            f[14] = 0x46;
            f.splice(34..34, [1, 1, 1, 0]);
            let tot = (f.len() - 14) as u16;
            f[16..18].copy_from_slice(&tot.to_be_bytes());
            fix_checksums(&mut f);
            f
        }),
        ("g1-udp-frag-first", {
            let mut f = g(0).udp(g0, 5002, R1, 53, &[7; 64]).build();
            f[20] = 0x20; // MF
            fix_checksums(&mut f);
            f
        }),
        ("g1-udp-frag-later", {
            let mut f = g(0).udp(g0, 5002, R1, 53, &[7; 64]).build();
            f[20..22].copy_from_slice(&185u16.to_be_bytes());
            fix_checksums(&mut f);
            f
        }),
        (
            "g1-udp-ttl1",
            g(0).ipv4(
                g0,
                R1,
                ipproto::UDP,
                1,
                &udp_datagram(g0.into(), 5003, R1.into(), 53, b"ttl"),
            )
            .pad_min()
            .build(),
        ),
        (
            "g1-udp-no-checksum",
            g(0).udp_no_checksum(g0, 5004, R1, 53, b"nosum")
                .pad_min()
                .build(),
        ),
        (
            "g1-udp-partial",
            g(0).udp_partial(g0, 5005, R1, 53, b"partial")
                .pad_min()
                .build(),
        ),
        (
            "g1-tcp-partial-syn",
            g(0).tcp_partial(g0, R1, &TcpHeader::new(41004, 80, tcp_flags::SYN), b"")
                .pad_min()
                .build(),
        ),
        (
            "g1-vlan-udp-out",
            g(0).vlan(10, 0)
                .udp(g0, 5006, R1, 53, b"tagged")
                .pad_min()
                .build(),
        ),
        (
            "g1-qinq-udp-out",
            g(0).tag(0x88a8, 100, 0)
                .vlan(10, 0)
                .udp(g0, 5007, R1, 53, b"qinq")
                .build(),
        ),
        ("g1-ipv6-ndp-ns", {
            let src = ll6(gmac(0));
            let target = ll6(GW_MAC);
            let mut dst = [0u8; 16];
            dst[..2].copy_from_slice(&[0xff, 0x02]);
            dst[11..16].copy_from_slice(&[1, 0xff, target[13], target[14], target[15]]);
            let mut body = vec![0; 4];
            body.extend_from_slice(&target);
            body.extend_from_slice(&[1, 1]);
            body.extend_from_slice(&gmac(0));
            let m = icmpv6(src, dst, 135, &body);
            Frame::new(
                [0x33, 0x33, 0xff, target[13], target[14], target[15]],
                gmac(0),
            )
            .ethertype(0x86dd)
            .payload(&ipv6_packet(src, dst, 58, &m))
            .build()
        }),
        ("g1-ipv6-hbh-udp", {
            let (src, dst) = (ll6(gmac(0)), ll6(GW_MAC));
            // Hop-by-hop options (8 bytes: next UDP, padding), then UDP
            // without a valid checksum (a fuzz seed, not a conformance one).
            let mut p = vec![17, 0, 1, 4, 0, 0, 0, 0];
            p.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 12, 0, 0, b'v', b'6', b'!', b'!']);
            g(0).ethertype(0x86dd)
                .payload(&ipv6_packet(src, dst, 0, &p))
                .build()
        }),
        (
            "g1-udp-other-net",
            g(0).udp(g0, 5008, OTHER_NET, 53, b"d1").pad_min().build(),
        ),
        (
            "g1-udp-unreachable",
            g(0).udp(g0, 5009, UNREACH, 53, b"unr").pad_min().build(),
        ),
        (
            "g1-udp-small-mtu",
            g(0).udp(g0, 5010, SMALL_MTU, 53, &[0x5a; 1100]).build(),
        ),
        (
            "g1-udp-bad-source",
            g(0).udp([10, 9, 9, 9], 5011, R1, 53, b"spoof")
                .pad_min()
                .build(),
        ),
        (
            "g1-gre-out",
            g(0).ipv4(g0, R1, ipproto::GRE, 64, &[0, 0, 0x08, 0, 0x45, 0])
                .pad_min()
                .build(),
        ),
        (
            "g1-icmp-unreach-from-guest",
            g(0).icmp_error(
                g0,
                R1,
                icmp_type::DEST_UNREACH,
                3,
                [0; 4],
                &ipv4_packet(
                    R1.into(),
                    g0.into(),
                    ipproto::UDP,
                    60,
                    &udp_datagram(R1.into(), 53, g0.into(), 5000, b"x"),
                ),
            )
            .build(),
        ),
        (
            "g1-spoof-gw-source",
            Frame::new(gmac(1), GW_MAC)
                .udp(g0, 1, g1, 1, b"spoof")
                .pad_min()
                .build(),
        ),
        (
            "g1-stp",
            Frame::new([0x01, 0x80, 0xc2, 0, 0, 0], gmac(0))
                .ethertype(0x0026)
                .pattern(39)
                .pad_min()
                .build(),
        ),
        (
            "g1-udp-out-1514",
            g(0).udp(g0, 5012, R1, 53, &[0xa5; 1472]).build(),
        ),
        (
            "g3-udp-to-g2",
            Frame::new(gmac(1), gmac(2))
                .udp(gip(2), 9, g1, 9, b"iso")
                .pad_min()
                .build(),
        ),
        (
            "g3-broadcast",
            Frame::new(BROADCAST, gmac(2))
                .arp_request(gip(2), GW_IP)
                .pad_min()
                .build(),
        ),
        (
            "g3-udp-out",
            g(2).udp(gip(2), 6000, LAN_HOST, 7000, b"lan")
                .pad_min()
                .build(),
        ),
        (
            "hp-arp-reply",
            Frame::new(gmac(0), GW_MAC)
                .arp_reply(GW_IP, g0)
                .pad_min()
                .build(),
        ),
        (
            "hp-udp-to-g1",
            Frame::new(gmac(0), GW_MAC)
                .udp(GW_IP, 53, g0, 5000, b"dns")
                .pad_min()
                .build(),
        ),
        (
            "up-udp-reply",
            up().udp(R1, 53, NAT_IP, P_UDP, b"answer").pad_min().build(),
        ),
        (
            "up-tcp-synack",
            up().tcp(
                R1,
                NAT_IP,
                &TcpHeader::new(80, P_TCP, tcp_flags::SYN | tcp_flags::ACK)
                    .seq(5000)
                    .ack(1001),
                b"",
            )
            .pad_min()
            .build(),
        ),
        (
            "up-tcp-rst-in-window",
            up().tcp(
                R1,
                NAT_IP,
                &TcpHeader::new(80, P_TCP, tcp_flags::RST).seq(5001),
                b"",
            )
            .pad_min()
            .build(),
        ),
        (
            "up-tcp-rst-blind",
            up().tcp(
                R1,
                NAT_IP,
                &TcpHeader::new(80, P_TCP, tcp_flags::RST).seq(0x8000_0000),
                b"",
            )
            .pad_min()
            .build(),
        ),
        (
            "up-tcp-data",
            up().tcp(
                R1,
                NAT_IP,
                &TcpHeader::new(80, P_TCP, tcp_flags::ACK | tcp_flags::PSH)
                    .seq(5001)
                    .ack(1001),
                b"HTTP/1.1 200 OK",
            )
            .build(),
        ),
        (
            "up-icmp-echo-reply",
            up().icmp_echo(R1, NAT_IP, true, P_ICMP, 1, b"ping")
                .pad_min()
                .build(),
        ),
        (
            "up-udp-reply-lan",
            Frame::new(UP_MAC, LAN_MAC)
                .udp(LAN_HOST, 7000, NAT_IP, P_LAN, b"lan")
                .pad_min()
                .build(),
        ),
        (
            "up-icmp-unreach-udp",
            up().icmp_error(
                ROUTER,
                NAT_IP,
                icmp_type::DEST_UNREACH,
                3,
                [0; 4],
                &quoted(ipproto::UDP, P_UDP, R1, 53, 64),
            )
            .build(),
        ),
        (
            "up-icmp-frag-needed-tcp",
            up().icmp_error(
                ROUTER,
                NAT_IP,
                icmp_type::DEST_UNREACH,
                4,
                [0, 0, 5, 0xdc],
                &quoted(ipproto::TCP, P_TCP, R1, 80, 64),
            )
            .build(),
        ),
        (
            "up-icmp-time-exceeded-tcp-28",
            up().icmp_error(
                ROUTER,
                NAT_IP,
                icmp_type::TIME_EXCEEDED,
                0,
                [0; 4],
                &quoted(ipproto::TCP, P_TCP, R1, 80, 28),
            )
            .build(),
        ),
        (
            "up-icmp-time-exceeded-echo",
            up().icmp_error(
                ROUTER,
                NAT_IP,
                icmp_type::TIME_EXCEEDED,
                0,
                [0; 4],
                &quoted(ipproto::ICMP, P_ICMP, R1, 0, 32),
            )
            .build(),
        ),
        ("up-icmp-time-exceeded-echo-quote-tot25", {
            // The quoted echo's total length (25) ends inside its
            // identifier: a NAT rewrites the identifier all the same.
            let mut q = quoted(ipproto::ICMP, P_ICMP, R1, 0, 32);
            put16(&mut q, 2, 25);
            q[10..12].copy_from_slice(&[0, 0]);
            let c = checksum_with(0, &q[..20]);
            q[10..12].copy_from_slice(&c.to_be_bytes());
            up().icmp_error(ROUTER, NAT_IP, icmp_type::TIME_EXCEEDED, 0, [0; 4], &q)
                .build()
        }),
        (
            "up-icmp-param-problem-udp",
            up().icmp_error(
                ROUTER,
                NAT_IP,
                icmp_type::PARAMETER_PROBLEM,
                0,
                [20, 0, 0, 0],
                &quoted(ipproto::UDP, P_UDP, R1, 53, 28),
            )
            .build(),
        ),
        (
            "up-icmp-unreach-udp-short",
            up().icmp_error(
                ROUTER,
                NAT_IP,
                icmp_type::DEST_UNREACH,
                1,
                [0; 4],
                &quoted(ipproto::UDP, P_UDP, R1, 53, 24),
            )
            .pad_min()
            .build(),
        ),
        (
            "up-arp-request",
            Frame::new(BROADCAST, LAN_MAC)
                .arp_request(LAN_HOST, NAT_IP)
                .pad_min()
                .build(),
        ),
        (
            "up-udp-miss",
            up().udp(R1, 53, NAT_IP, 9999, b"miss").pad_min().build(),
        ),
        (
            "up-udp-to-g1",
            Frame::new(gmac(0), LAN_MAC)
                .udp(LAN_HOST, 7, g0, 7, b"bridged")
                .pad_min()
                .build(),
        ),
        (
            "up-tcp-to-uplink-mac",
            Frame::new(UP_MAC, LAN_MAC)
                .tcp(
                    LAN_HOST,
                    NAT_IP,
                    &TcpHeader::new(50000, 22, tcp_flags::SYN),
                    b"",
                )
                .pad_min()
                .build(),
        ),
        (
            "up-host-frame-to-g1",
            Frame::new(gmac(0), UP_MAC)
                .udp(NAT_IP, 53, g0, 5000, b"from the host")
                .pad_min()
                .build(),
        ),
        (
            "up-host-broadcast",
            Frame::new(BROADCAST, UP_MAC)
                .arp_request(NAT_IP, LAN_HOST)
                .pad_min()
                .build(),
        ),
        // Reproducers of what the fuzz pass found (malformed lengths the
        // masquerade translated): run unmutated in every pass.
        ("g1-repro-tcp-doff4", {
            let mut f = g(0)
                .tcp(g0, R1, &TcpHeader::new(41005, 80, tcp_flags::SYN), b"")
                .pad_min()
                .build();
            f[14 + 20 + 12] = 0x40;
            fix_checksums(&mut f);
            f
        }),
        ("g1-repro-tcp-total-past-frame", {
            let mut f = g(0).tcp(g0, R1, &syn, b"").build();
            put16(&mut f, 16, 64);
            fix_checksums(&mut f);
            f
        }),
        ("g1-repro-udp-total-20", {
            let mut f = g(0).udp(g0, 5013, R1, 53, b"q").pad_min().build();
            put16(&mut f, 16, 20);
            fix_checksums(&mut f);
            f
        }),
        ("g1-repro-udp-length-past-packet", {
            let mut f = g(0).udp(g0, 5014, R1, 53, b"q").pad_min().build();
            put16(&mut f, 14 + 20 + 4, 72);
            fix_checksums(&mut f);
            f
        }),
        (
            "g1-repro-udp-to-multicast",
            g(0).udp(g0, 5015, [224, 0, 0, 1], 53, b"mc")
                .pad_min()
                .build(),
        ),
        (
            "g1-repro-tcp-syn-to-broadcast",
            g(0).tcp(
                g0,
                [255; 4],
                &TcpHeader::new(41006, 80, tcp_flags::SYN),
                b"",
            )
            .pad_min()
            .build(),
        ),
        (
            "g1-repro-icmp-echo-to-zeronet",
            g(0).icmp_echo(g0, [0, 0, 113, 5], false, 78, 1, b"zero")
                .pad_min()
                .build(),
        ),
        ("up-repro-tcp-total-20", {
            let mut f = up()
                .tcp(
                    R1,
                    NAT_IP,
                    &TcpHeader::new(80, P_TCP, tcp_flags::ACK)
                        .seq(5001)
                        .ack(1001),
                    b"",
                )
                .pad_min()
                .build();
            put16(&mut f, 16, 20);
            fix_checksums(&mut f);
            f
        }),
        ("up-repro-icmp-quote-in-trailer", {
            // The quote holds 8 bytes of TCP; 20 bytes of Ethernet trailer
            // follow the packet, where the quoted TCP checksum would be.
            let mut f = up()
                .icmp_error(
                    ROUTER,
                    NAT_IP,
                    icmp_type::TIME_EXCEEDED,
                    0,
                    [0; 4],
                    &quoted(ipproto::TCP, P_TCP, R1, 80, 28),
                )
                .build();
            f.extend_from_slice(&[0x5a; 20]);
            f
        }),
    ];
    v.sort_by(|a, b| a.0.cmp(b.0));
    v.into_iter()
        .map(|(n, f)| (format!("{n}.hex"), f))
        .collect()
}

fn to_hex(f: &[u8]) -> String {
    let mut s = String::new();
    for line in f.chunks(32) {
        for b in line {
            s += &format!("{b:02x}");
        }
        s.push('\n');
    }
    s
}

fn from_hex(s: &str) -> Result<Vec<u8>> {
    let h: String = s
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    if !h.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).context("not hex"))
        .collect()
}

/// A seed: its frame and the tap it enters.
struct Seed {
    name: String,
    frame: Vec<u8>,
    tap: usize,
}

fn tap_of_name(name: &str) -> Option<usize> {
    let p = name.split('-').next()?;
    Some(match p {
        "g1" => 0,
        "g2" => 1,
        "g3" => 2,
        "hp" => HP,
        "up" => UP,
        _ => return None,
    })
}

fn load_corpus(dir: &Path) -> Result<Vec<Seed>> {
    let mut v = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for p in names {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".hex") {
            continue;
        }
        let tap = tap_of_name(&name).with_context(|| {
            format!("{}: name must start with g1-/g2-/g3-/hp-/up-", p.display())
        })?;
        let text = std::fs::read_to_string(&p)?;
        let frame = from_hex(&text).with_context(|| format!("{}", p.display()))?;
        v.push(Seed { name, frame, tap });
    }
    if v.is_empty() {
        bail!("no seeds in {}", dir.display());
    }
    Ok(v)
}

/// The corpus on disk is what the builders make (written anew when
/// UMLBR_FUZZ_WRITE_CORPUS is set: `cargo xtask fuzz --write-corpus`).
/// Files that are not the builders' are kept and only checked to parse.
#[test]
fn corpus_is_current() -> Result<()> {
    let dir = corpus_dir();
    let write = std::env::var_os("UMLBR_FUZZ_WRITE_CORPUS").is_some();
    if write {
        std::fs::create_dir_all(&dir)?;
    }
    let mut stale = Vec::new();
    for (name, frame) in seeds() {
        let p = dir.join(&name);
        let want = to_hex(&frame);
        if write {
            std::fs::write(&p, &want).with_context(|| format!("writing {}", p.display()))?;
        } else if std::fs::read_to_string(&p).ok().as_deref() != Some(want.as_str()) {
            stale.push(name);
        }
    }
    if !stale.is_empty() {
        bail!(
            "the corpus differs from the builders for {stale:?}: run `cargo xtask fuzz --write-corpus`"
        );
    }
    let all = load_corpus(&dir)?;
    assert!(all.len() >= seeds().len());
    Ok(())
}

// ---------------------------------------------------------------------------
// Mutations.

/// Offset of the EtherType after any tags, and the IPv4 header's offset if
/// the frame carries IPv4 behind it.
fn l3(f: &[u8]) -> (usize, Option<usize>) {
    let mut off = 12;
    loop {
        if f.len() < off + 2 {
            return (off, None);
        }
        let et = u16::from_be_bytes([f[off], f[off + 1]]);
        if et == 0x8100 || et == 0x88a8 {
            off += 4;
            continue;
        }
        return (
            off,
            (et == 0x0800 && f.len() >= off + 2 + 20).then_some(off + 2),
        );
    }
}

fn interesting_ip(rng: &mut Rng) -> [u8; 4] {
    let v = [
        NAT_IP,
        GW_IP,
        gip(0),
        gip(1),
        gip(2),
        R1,
        NN,
        LAN_HOST,
        OTHER_NET,
        UNREACH,
        SMALL_MTU,
        [0, 0, 0, 0],
        [255, 255, 255, 255],
        [224, 0, 0, 1],
        [192, 168, 1, 255],
        [127, 0, 0, 1],
    ];
    if rng.chance(15) {
        [rng.byte(), rng.byte(), rng.byte(), rng.byte()]
    } else {
        *rng.pick(&v)
    }
}

fn interesting_mac(rng: &mut Rng) -> Mac {
    let v = [
        GW_MAC,
        gmac(0),
        gmac(1),
        gmac(2),
        UP_MAC,
        NH_MAC,
        LAN_MAC,
        BROADCAST,
        [0; 6],
        [0x01, 0x80, 0xc2, 0, 0, 0x0e],
        [0x33, 0x33, 0, 0, 0, 1],
        [0x01, 0, 0x5e, 0, 0, 1],
    ];
    if rng.chance(15) {
        let mut m = [0u8; 6];
        m.iter_mut().for_each(|b| *b = rng.byte());
        m
    } else {
        *rng.pick(&v)
    }
}

fn interesting_port(rng: &mut Rng) -> u16 {
    let v = [
        0, 53, 80, 5000, 40000, P_UDP, P_TCP, P_ICMP, P_LAN, 0x1234, 7000, 65535,
    ];
    if rng.chance(20) {
        rng.next() as u16
    } else {
        *rng.pick(&v)
    }
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    if at + 2 <= f.len() {
        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

fn get16(f: &[u8], at: usize) -> Option<u16> {
    f.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// One mutation of `f`. `other` is another seed, for splicing.
fn mutate_once(rng: &mut Rng, f: &mut Vec<u8>, other: &[u8]) {
    let (_, ip) = l3(f);
    let ihl = ip.map(|o| (f[o] & 0x0f) as usize * 4).unwrap_or(20).max(20);
    let l4 = ip.map(|o| o + ihl);
    match rng.below(24) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                if !f.is_empty() {
                    let i = rng.below(f.len());
                    f[i] ^= 1 << rng.below(8);
                }
            }
        }
        1 => {
            if !f.is_empty() {
                let i = rng.below(f.len());
                f[i] = *rng.pick(&[0, 0xff, 0x7f, 0x80, 1, 0x45, 0x40]);
            }
        }
        2 => {
            let n = rng.below(f.len() + 1);
            f.truncate(n);
        }
        3 => {
            let n = rng.below(1601usize.saturating_sub(f.len()) + 1);
            let tail = if rng.chance(50) {
                vec![0; n]
            } else {
                rng.bytes(n)
            };
            f.extend_from_slice(&tail);
        }
        4 if rng.chance(30) => {
            let n = rng.below(1601);
            *f = rng.bytes(n);
        }
        5 => {
            if let Some(o) = ip {
                f[o] = (f[o] & 0xf0) | rng.below(16) as u8;
                if rng.chance(20) {
                    f[o] = (rng.below(16) as u8) << 4 | (f[o] & 0x0f);
                }
            }
        }
        6 => {
            if let Some(o) = ip {
                let avail = f.len() - o;
                let r = rng.below(1600);
                let v = *rng.pick(&[
                    0,
                    19,
                    20,
                    ihl,
                    ihl + 4,
                    ihl + 8,
                    avail,
                    avail.saturating_sub(1),
                    avail + 1,
                    avail.saturating_sub(4),
                    avail + 40,
                    0xffff,
                    r,
                ]);
                put16(f, o + 2, v as u16);
            }
        }
        7 => {
            if let Some(o) = ip {
                let v = match rng.below(4) {
                    0 => 0x2000,
                    1 => rng.below(0x2000) as u16,
                    2 => 0x2000 | rng.below(0x2000) as u16,
                    _ => 0x4000,
                };
                put16(f, o + 6, v);
            }
        }
        8 => {
            if let Some(o) = ip {
                f[o + 8] = *rng.pick(&[0, 1, 2, 64, 255]);
            }
        }
        9 => {
            if let Some(o) = ip {
                f[o + 9] = if rng.chance(80) {
                    *rng.pick(&[1, 6, 17, 47, 58, 0])
                } else {
                    rng.byte()
                };
            }
        }
        10 => {
            if let Some(o) = ip {
                let at = o + if rng.chance(50) { 12 } else { 16 };
                f[at..at + 4].copy_from_slice(&interesting_ip(rng));
            }
        }
        11 => {
            if f.len() >= 12 {
                let at = if rng.chance(50) { 0 } else { 6 };
                f[at..at + 6].copy_from_slice(&interesting_mac(rng));
            }
        }
        12 => {
            // A stack of 0..3 tags in place of the frame's own.
            let (et, _) = l3(f);
            if f.len() >= et {
                let mut n = f[..12].to_vec();
                for _ in 0..rng.below(4) {
                    let tpid: u16 = *rng.pick(&[0x8100, 0x88a8]);
                    n.extend_from_slice(&tpid.to_be_bytes());
                    n.extend_from_slice(&(rng.next() as u16 & 0x0fff).to_be_bytes());
                }
                n.extend_from_slice(&f[et..]);
                *f = n;
            }
        }
        13 => {
            if let (Some(o), Some(l)) = (ip, l4)
                && f[o + 9] == 6
                && l + 13 <= f.len()
            {
                f[l + 12] = (rng.below(16) as u8) << 4 | (f[l + 12] & 0x0f);
            }
        }
        14 => {
            if let (Some(o), Some(l)) = (ip, l4)
                && f[o + 9] == 6
                && l + 14 <= f.len()
            {
                f[l + 13] = if rng.chance(50) {
                    rng.byte()
                } else {
                    *rng.pick(&[0x02, 0x12, 0x10, 0x04, 0x14, 0x01, 0x11, 0x03, 0x06, 0])
                };
            }
        }
        15 => {
            if let Some(l) = l4 {
                let at = l + if rng.chance(50) { 0 } else { 2 };
                let p = interesting_port(rng);
                put16(f, at, p);
            }
        }
        16 => {
            if let (Some(o), Some(l)) = (ip, l4)
                && f[o + 9] == 1
                && l + 2 <= f.len()
            {
                f[l] = if rng.chance(85) {
                    *rng.pick(&[0, 3, 4, 5, 8, 11, 12, 13])
                } else {
                    rng.byte()
                };
                f[l + 1] = rng.below(16) as u8;
            }
        }
        17 | 18 => {
            // An ICMP error (or any ICMP) cut at every length of its quote:
            // one of them at random, the total length following (or not).
            if let (Some(o), Some(l)) = (ip, l4)
                && f[o + 9] == 1
                && l + 8 <= f.len()
            {
                let n = l + 8 + rng.below(f.len() - l - 8 + 1);
                f.truncate(n);
                if rng.chance(80) {
                    put16(f, o + 2, (n - o) as u16);
                }
            }
        }
        19 => {
            // The quoted packet's own header.
            if let (Some(o), Some(l)) = (ip, l4)
                && f[o + 9] == 1
                && l + 28 <= f.len()
            {
                let q = l + 8;
                match rng.below(5) {
                    0 => f[q] = 0x40 | rng.below(16) as u8,
                    1 => f[q + 9] = *rng.pick(&[1, 6, 17, 47, 0]),
                    2 => f[q + 12..q + 16].copy_from_slice(&interesting_ip(rng)),
                    3 => put16(f, q + 2, rng.below(1600) as u16),
                    _ => put16(f, q + 6, 0x2000),
                }
                // The quoted IP header checksum, fixed or not.
                if rng.chance(70) && q + 20 <= f.len() {
                    let qihl = ((f[q] & 0x0f) as usize * 4).max(20);
                    if q + qihl <= f.len() {
                        f[q + 10..q + 12].copy_from_slice(&[0, 0]);
                        let c = checksum_with(0, &f[q..q + qihl]);
                        f[q + 10..q + 12].copy_from_slice(&c.to_be_bytes());
                    }
                }
            }
        }
        20 => {
            if let (Some(o), Some(l)) = (ip, l4)
                && f[o + 9] == 17
            {
                let avail = f.len().saturating_sub(l);
                let v = *rng.pick(&[0, 7, 8, avail, avail + 1, avail.saturating_sub(1), 0xffff]);
                put16(f, l + 4, v as u16);
            }
        }
        21 => {
            // An IPv6 extension header in front of the payload.
            let (et, _) = l3(f);
            if get16(f, et) == Some(0x86dd) && f.len() >= et + 2 + 40 {
                let v6 = et + 2;
                let next = f[v6 + 6];
                let kind = *rng.pick(&[0u8, 43, 44, 60]);
                let words = rng.below(3);
                let mut h = vec![next, words as u8];
                h.extend(rng.bytes(6 + 8 * words));
                if kind == 44 {
                    h[1] = 0;
                    h.truncate(8);
                }
                f[v6 + 6] = kind;
                let at = v6 + 40;
                f.splice(at..at, h);
                let plen = (f.len() - v6 - 40) as u16;
                put16(f, v6 + 4, plen);
            }
        }
        22 => {
            // An Ethernet trailer: bytes after the IP packet.
            let n = 1 + rng.below(40);
            let tail = if rng.chance(50) {
                vec![0; n]
            } else {
                rng.bytes(n)
            };
            f.extend_from_slice(&tail);
        }
        _ => {
            if !other.is_empty() && !f.is_empty() {
                let a = rng.below(other.len());
                let n = rng.below(other.len() - a + 1).min(64);
                let at = rng.below(f.len());
                let end = (at + n).min(f.len());
                f[at..end].copy_from_slice(&other[a..a + (end - at)]);
            }
        }
    }
    f.truncate(1600);
}

/// A frame for the fuzz pass: a seed mutated 1..4 times, checksums fixed
/// (mostly) or broken (sometimes).
fn mutate(rng: &mut Rng, seeds: &[Seed]) -> (Vec<u8>, usize, String) {
    let s = rng.pick(seeds);
    let mut f = s.frame.clone();
    let other = &rng.pick(seeds).frame.clone();
    let n = if rng.chance(10) { 0 } else { 1 + rng.below(4) };
    for _ in 0..n {
        mutate_once(rng, &mut f, other);
    }
    if rng.chance(65) {
        fix_checksums(&mut f);
    }
    if rng.chance(8)
        && let (_, Some(o)) = l3(&f)
    {
        let at = *rng.pick(&[o + 10, o + 20 + 2, o + 20 + 6, o + 20 + 16, o + 28 + 10]);
        if at < f.len() {
            f[at] ^= 1 << rng.below(8);
        }
    }
    let tap = if rng.chance(85) {
        s.tap
    } else {
        rng.below(TAPS.len())
    };
    (f, tap, s.name.clone())
}

// ---------------------------------------------------------------------------
// The bench.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A plain switch with an uplink (fzup0), no masquerade.
    Switch,
    /// The same, flooding in TC (`CFG_F_TC_FLOOD`, as with a veth uplink).
    SwitchTcFlood,
    /// Masquerade out of fzup0, which takes XDP frames.
    Nat,
    /// Masquerade out of fzup0 as if it took no XDP frames (a veth): TC
    /// translates.
    NatVeth,
}

impl Mode {
    fn nat(self) -> bool {
        matches!(self, Mode::Nat | Mode::NatVeth)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    Xdp,
    Tc,
    TcOut,
}

struct Bench {
    ctx: Ctx,
    br0: u32,
    mode: Mode,
}

type Key = (u8, u32, u32, u16, u16);

fn key_of(k: &NatKey) -> Key {
    (
        k.proto,
        k.local_addr,
        k.remote_addr,
        k.local_port,
        k.remote_port,
    )
}

fn nkey(proto: u8, local: u32, lport: u16, remote: u32, rport: u16) -> Key {
    (proto, local, remote, lport, rport)
}

fn fmt_key(k: &Key) -> String {
    format!(
        "proto {} {}:{} <-> {}:{}",
        k.0,
        Ipv4Addr::from(k.1.to_ne_bytes()),
        u16::from_be(k.3),
        Ipv4Addr::from(k.2.to_ne_bytes()),
        u16::from_be(k.4)
    )
}

/// What the oracle compares before and after a frame.
#[derive(Clone)]
struct State {
    fdb: BTreeMap<Mac, FdbEntry>,
    learn: BTreeMap<u32, PortLearn>,
    nat_out: BTreeMap<Key, NatOut>,
    nat_in: BTreeMap<Key, NatIn>,
    stats: Vec<PortStats>,
    nat_stats: NatStats,
}

impl Bench {
    fn new() -> Result<Self> {
        let ns = Netns::without_ipv6("fz")?;
        ns.sh(&format!(
            "ip link add fzbr0 type veth peer name fzbr0p && ip link set fzbr0 address {gw} \
             && ip addr add 192.168.2.1/24 dev fzbr0 && ip link set fzbr0p up \
             && ip link set fzbr0 up \
             && ip link add fzd1 type veth peer name fzd1p && ip addr add 10.77.0.1/16 dev fzd1 \
             && ip link set fzd1p up && ip link set fzd1 up",
            gw = fmt_mac(&GW_MAC)
        ))?;
        let setup = format!(
            "ip link set fzup0 address {up} mtu 9000 && ip link set fzup0 up \
             && ip addr add 192.168.1.200/24 dev fzup0 \
             && ip neigh replace 192.168.1.1 lladdr {nh} dev fzup0 nud permanent \
             && ip neigh replace 192.168.1.50 lladdr {lan} dev fzup0 nud permanent \
             && ip route add default via 192.168.1.1 dev fzup0 \
             && ip route add 198.51.100.0/24 via 192.168.1.2 dev fzup0 \
             && ip route add 203.0.113.77/32 via 192.168.1.1 dev fzup0 mtu lock 1000 \
             && ip route add unreachable 203.0.113.99/32 \
             && for t in fzg1 fzg2 fzg3 fzhp; do ip link set $t up || exit 1; done \
             && sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.forwarding=1",
            up = fmt_mac(&UP_MAC),
            nh = fmt_mac(&NH_MAC),
            lan = fmt_mac(&LAN_MAC),
        );
        let ctx = Ctx::new(ns, &TAPS, &setup, umlbr_lib::load_object)?;
        let br0 = umlbr_tests::netns::ifindex("fzbr0")?;
        Ok(Bench {
            ctx,
            br0,
            mode: Mode::Switch,
        })
    }

    fn ix(&self, tap: usize) -> u32 {
        self.ctx.taps.ifindex[tap]
    }

    /// The maps as `umlbr up` (`--masquerade fzup0` in the NAT modes) and
    /// `attach` leave them, g2 and g3 isolated, the guests' MACs learned,
    /// a learning limit on every port; in the NAT modes four mappings.
    fn reset(&mut self, mode: Mode) -> Result<()> {
        self.mode = mode;
        let idx = self.ctx.taps.ifindex.clone();
        let (host, up) = (idx[HP], idx[UP]);
        let ports: Vec<u32> = if mode.nat() {
            idx[..4].to_vec()
        } else {
            idx.clone()
        };
        self.ctx.set_ports(&ports, None)?;
        for &i in &idx {
            let _ = self.ctx.devmap_remove(names::FLOOD_ISOLATED, i);
        }
        for (t, &i) in ports.iter().enumerate() {
            if !isolated(t) {
                self.ctx.devmap_insert(names::FLOOD_ISOLATED, i)?;
            }
        }
        if mode.nat() {
            let _ = self.ctx.devmap_remove(names::PORTS, up);
        }
        let _ = self.ctx.devmap_remove(names::NAT_TX, up);
        if mode == Mode::Nat {
            self.ctx.devmap_insert(names::NAT_TX, up)?;
        }
        self.ctx.set_config(Config {
            aging_ns: AGING_NS,
            nr_ports: ports.len() as u32,
            host_port: host,
            uplink: if mode.nat() { 0 } else { up },
            flags: if mode == Mode::SwitchTcFlood {
                CFG_F_TC_FLOOD
            } else {
                0
            },
            uplink_mac: if mode.nat() { [0; 6] } else { UP_MAC },
            layout: 0,
        })?;
        for (t, &i) in idx.iter().enumerate() {
            let s = PortStats {
                kind: PORT_KIND_OTHER,
                flags: if isolated(t) { PORT_F_ISOLATED } else { 0 },
                ..Default::default()
            };
            self.ctx.set_port_stats(i, s)?;
        }
        self.ctx.clear::<FdbKey, FdbEntry>(names::FDB)?;
        self.ctx.clear::<u32, PortLearn>(names::LEARN)?;
        let now = now_coarse();
        self.ctx.fdb_insert(GW_MAC, host, FDB_F_STATIC, now)?;
        let mut learned = vec![0u32; TAPS.len()];
        for g in 0..3 {
            self.ctx.fdb_insert(gmac(g), idx[g], 0, now)?;
            learned[g] += 1;
        }
        if !mode.nat() {
            self.ctx
                .fdb_insert(UP_MAC, up, FDB_F_STATIC | FDB_F_LOCAL, now)?;
            self.ctx.fdb_insert(LAN_MAC, up, 0, now)?;
            self.ctx.fdb_insert(NH_MAC, up, 0, now)?;
            learned[UP] += 2;
        }
        for (t, &i) in idx.iter().enumerate() {
            let b = PortLearn {
                count: learned[t],
                max: MAX_LEARNED,
                ..Default::default()
            };
            self.ctx.insert(names::LEARN, i, b)?;
        }
        let cfg = NatConfig {
            nat_ifindex: up,
            nat_addr: be32(NAT_IP),
            host_ifindex: self.br0,
            subnet: be32([192, 168, 2, 0]),
            mask: be32([255, 255, 255, 0]),
            port_lo: PORT_LO,
            port_hi: PORT_HI,
            gw_mac: GW_MAC,
            flags: if mode == Mode::Nat { NAT_F_XDP_TX } else { 0 },
            tcp_established_ns: NAT_TCP_ESTABLISHED_SECS * SEC,
            tcp_transitory_ns: NAT_TCP_TRANSITORY_SECS * SEC,
            tcp_closing_ns: NAT_TCP_CLOSING_SECS * SEC,
            udp_ns: NAT_UDP_SECS * SEC,
            udp_stream_ns: NAT_UDP_STREAM_SECS * SEC,
            icmp_ns: NAT_ICMP_SECS * SEC,
            mtu: 1500,
            // No quota: every well-formed flow gets its mapping.
            max_per_guest: 0,
        };
        self.ctx.set_array(
            names::NAT_CONFIG,
            if mode.nat() {
                cfg
            } else {
                NatConfig::default()
            },
        )?;
        self.ctx.clear::<NatKey, NatOut>(names::NAT_OUT)?;
        self.ctx.clear::<NatKey, NatIn>(names::NAT_IN)?;
        if mode.nat() {
            // (guest, proto, guest port, remote, remote port, outside port)
            let maps: [(usize, u8, u16, [u8; 4], u16, u16); 4] = [
                (0, ipproto::UDP, 5000, R1, 53, P_UDP),
                (0, ipproto::TCP, 40000, R1, 80, P_TCP),
                (1, ipproto::ICMP, 0x1234, R1, 0, P_ICMP),
                (2, ipproto::UDP, 6000, LAN_HOST, 7000, P_LAN),
            ];
            for (g, proto, gport, remote, rport, np) in maps {
                let tcp = proto == ipproto::TCP;
                let mut hop = [0u8; 12];
                hop[..6].copy_from_slice(if remote == LAN_HOST {
                    &LAN_MAC
                } else {
                    &NH_MAC
                });
                hop[6..].copy_from_slice(&UP_MAC);
                let out = NatOut {
                    addr: be32(NAT_IP),
                    port: np.to_be(),
                    hop,
                    hop_ns: if g == 0 { now } else { 0 },
                    seq_next: if tcp { 1001 } else { 0 },
                    ack: if tcp { 5001 } else { 0 },
                    win: if tcp { 64240 } else { 0 },
                    track: if tcp { NAT_T_SEQ | NAT_T_ACK } else { 0 },
                    owner: idx[g],
                    ..Default::default()
                };
                let ok = NatKey::new(
                    proto,
                    be32(gip(g)),
                    gport.to_be(),
                    be32(remote),
                    rport.to_be(),
                );
                self.ctx.insert(names::NAT_OUT, ok, out)?;
                let inn = NatIn {
                    addr: be32(gip(g)),
                    port: gport.to_be(),
                    state: if tcp {
                        NAT_S_SYN_OUT | NAT_S_REPLIED
                    } else {
                        NAT_S_REPLIED
                    },
                    mac: gmac(g),
                    _pad: [0; 2],
                    last_seen_ns: now,
                    created_ns: now,
                };
                let ik = NatKey::new(proto, be32(NAT_IP), np.to_be(), be32(remote), rport.to_be());
                self.ctx.insert(names::NAT_IN, ik, inn)?;
            }
        }
        let n = self.ctx.nr_cpus;
        let mut st: PerCpuArray<&mut MapData, NatStats> = self.ctx.map(names::NAT_STATS)?;
        st.set(0, PerCpuValues::try_from(vec![NatStats::default(); n])?, 0)?;
        self.ctx.quiet();
        Ok(())
    }

    fn state(&mut self) -> Result<State> {
        let fdb = self.ctx.fdb()?.into_iter().collect();
        let learn = self
            .ctx
            .entries::<u32, PortLearn>(names::LEARN)?
            .into_iter()
            .collect();
        let nat_out = self
            .ctx
            .entries::<NatKey, NatOut>(names::NAT_OUT)?
            .into_iter()
            .map(|(k, v)| (key_of(&k), v))
            .collect();
        let nat_in = self
            .ctx
            .entries::<NatKey, NatIn>(names::NAT_IN)?
            .into_iter()
            .map(|(k, v)| (key_of(&k), v))
            .collect();
        let idx = self.ctx.taps.ifindex.clone();
        let stats = self.ctx.port_stats(&idx)?;
        let m: PerCpuArray<&mut MapData, NatStats> = self.ctx.map(names::NAT_STATS)?;
        let nat_stats = umlbr_tests::bpf::sum_counters(&m.get(&0, 0)?);
        Ok(State {
            fdb,
            learn,
            nat_out,
            nat_in,
            stats,
            nat_stats,
        })
    }

    fn run(&self, prog: Prog, tap: usize, frame: &[u8]) -> Result<(u32, Vec<u8>), Errno> {
        let i = self.ix(tap);
        match prog {
            Prog::Xdp => self.ctx.run_xdp(i, 0, frame),
            Prog::Tc => self
                .ctx
                .run_tc(names::TC_PROG, 0, i, i, frame)
                .map(|(r, o, _)| (r, o)),
            Prog::TcOut => self
                .ctx
                .run_tc(names::TC_OUT_PROG, 0, 0, i, frame)
                .map(|(r, o, _)| (r, o)),
        }
    }
}

// ---------------------------------------------------------------------------
// The oracle: RFC 1071 sums, RFC 791/793/768/792 layouts.

/// The unfolded one's complement sum of `data` as 16-bit big-endian words.
fn sum16(data: &[u8]) -> u64 {
    let mut s = 0u64;
    let mut c = data.chunks_exact(2);
    for w in &mut c {
        s += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    if let [b] = c.remainder() {
        s += (*b as u64) << 8;
    }
    s
}

/// The folded sum, with the one's complement zeros (0 and 0xffff) as one.
fn residual(s: u64) -> u16 {
    let mut s = s;
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    if s == 0 { 0xffff } else { s as u16 }
}

fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    sum16(src) + sum16(dst) + proto as u64 + (len as u64 & 0xffff)
}

/// A checksummed region of a frame: (what, start, end, checksum field
/// offset, pseudo-header address offsets and protocol and length).
struct Region {
    what: &'static str,
    start: usize,
    end: usize,
    field: usize,
    pseudo: Option<(usize, usize, u8, usize)>,
    udp: bool,
}

/// The checksummed regions of an IPv4 frame as the input's headers lay
/// them out: IP header, transport (not of a fragment), and an ICMP error's
/// quoted IP header and transport (where the quote holds the field).
fn regions(f: &[u8]) -> Vec<Region> {
    let mut v = Vec::new();
    let (_, Some(o)) = l3(f) else { return v };
    if f[o] >> 4 != 4 {
        return v;
    }
    let ihl = (f[o] & 0x0f) as usize * 4;
    if ihl < 20 || o + ihl > f.len() {
        return v;
    }
    v.push(Region {
        what: "IPv4 header",
        start: o,
        end: o + ihl,
        field: o + 10,
        pseudo: None,
        udp: false,
    });
    let tot = get16(f, o + 2).unwrap() as usize;
    let frag = get16(f, o + 6).unwrap() & 0x3fff != 0;
    if tot < ihl || frag {
        return v;
    }
    let (l4, end) = (o + ihl, (o + tot).min(f.len()));
    let proto = f[o + 9];
    let l4len = tot - ihl;
    let field = |off: usize| (l4 + off + 2 <= end).then_some(l4 + off);
    match proto {
        6 | 17 => {
            if let Some(at) = field(if proto == 6 { 16 } else { 6 }) {
                v.push(Region {
                    what: if proto == 6 { "TCP" } else { "UDP" },
                    start: l4,
                    end,
                    field: at,
                    pseudo: Some((o + 12, o + 16, proto, l4len)),
                    udp: proto == 17,
                });
            }
        }
        1 => {
            if let Some(at) = field(2) {
                v.push(Region {
                    what: "ICMP",
                    start: l4,
                    end,
                    field: at,
                    pseudo: None,
                    udp: false,
                });
            }
            let q = l4 + 8;
            if matches!(f[l4], 3 | 4 | 5 | 11 | 12) && q + 20 <= end && f[q] >> 4 == 4 {
                let qihl = (f[q] & 0x0f) as usize * 4;
                if qihl >= 20 && q + qihl <= end {
                    v.push(Region {
                        what: "quoted IPv4 header",
                        start: q,
                        end: q + qihl,
                        field: q + 10,
                        pseudo: None,
                        udp: false,
                    });
                    let qtot = get16(f, q + 2).unwrap() as usize;
                    let qfrag = get16(f, q + 6).unwrap() & 0x3fff != 0;
                    if qtot >= qihl && !qfrag {
                        let ql4 = q + qihl;
                        let qend = (q + qtot).min(end);
                        let qp = f[q + 9];
                        let off = match qp {
                            6 => Some(16),
                            17 => Some(6),
                            1 => Some(2),
                            _ => None,
                        };
                        // Judged where the quoted packet (its own total
                        // length) holds the checksum and the ports or echo
                        // identifier a NAT rewrites (Linux's as umlbr's):
                        // outside it the checksum does not cover them.
                        if let Some(off) = off
                            && ql4 + (off + 2).max(8) <= qend
                        {
                            v.push(Region {
                                what: "quoted transport",
                                start: ql4,
                                end: qend,
                                field: ql4 + off,
                                pseudo: (qp != 1).then_some((q + 12, q + 16, qp, qtot - qihl)),
                                udp: qp == 17,
                            });
                        }
                    }
                }
            }
        }
        _ => {}
    }
    v
}

fn region_residual(f: &[u8], r: &Region) -> u16 {
    let mut s = sum16(&f[r.start..r.end]);
    if let Some((sa, da, p, len)) = r.pseudo {
        s += pseudo(&f[sa..sa + 4], &f[da..da + 4], p, len);
    }
    residual(s)
}

/// The checksum and byte-change part of the oracle.
fn judge_bytes(mode: Mode, input: &[u8], out: &[u8], errs: &mut Vec<String>) {
    if out.len() != input.len() {
        errs.push(format!(
            "output is {} bytes, input {}",
            out.len(),
            input.len()
        ));
        return;
    }
    if out == input {
        return;
    }
    if !mode.nat() {
        errs.push("the packet changed without a masquerade".into());
    }
    // Which bytes may change: the MACs, and the IPv4 packet (untagged: the
    // masquerade translates nothing else) up to its total length.
    let ip_end = match l3(input) {
        (12, Some(o)) => {
            let tot = get16(input, o + 2).unwrap() as usize;
            (o + tot).min(input.len())
        }
        _ => 12,
    };
    for (i, (a, b)) in input.iter().zip(out).enumerate() {
        if a != b && ((12..14).contains(&i) || i >= ip_end.max(14)) {
            errs.push(format!(
                "byte {i} changed ({a:#04x} -> {b:#04x}) outside the MACs and the IPv4 packet (ends at {ip_end})"
            ));
            break;
        }
    }
    for r in regions(input) {
        let (a, b) = (region_residual(input, &r), region_residual(out, &r));
        let (fa, fb) = (get16(input, r.field), get16(out, r.field));
        if r.udp && fa == Some(0) {
            if fb != Some(0) {
                errs.push(format!(
                    "{} checksum 0 (none) became {:#06x}",
                    r.what,
                    fb.unwrap_or(0)
                ));
            }
            continue;
        }
        if a != b {
            errs.push(format!(
                "{} checksum {:#06x} -> {:#06x}: residual {:#06x} -> {:#06x} ({})",
                r.what,
                fa.unwrap_or(0),
                fb.unwrap_or(0),
                a,
                b,
                if a == 0xffff {
                    "a valid checksum made invalid"
                } else {
                    "an invalid checksum changed by the rewrite"
                }
            ));
        }
    }
}

/// An IPv4 packet's fields as an RFC reader sees them, and whether it is
/// well formed: version 4, IHL >= 5 within the frame, total length at
/// least the headers and at most the frame, transport header whole (TCP
/// data offset >= 5 and within the packet, UDP length within [8, the
/// packet's], ICMP >= 8 bytes) — conntrack's tcp_error/udp_error checks.
#[derive(Debug)]
struct Ip {
    o: usize,
    ihl: usize,
    ttl: u8,
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    frag: bool,
    sport: u16,
    dport: u16,
    /// ICMP type (else 0), TCP flags (else 0).
    icmp: u8,
    flags: u8,
    wf: bool,
}

fn ip_of(f: &[u8]) -> Option<Ip> {
    let (et, Some(o)) = l3(f) else { return None };
    if et != 12 || f[o] >> 4 != 4 {
        return None;
    }
    let ihl = (f[o] & 0x0f) as usize * 4;
    let tot = get16(f, o + 2)? as usize;
    let l4 = o + ihl.max(20);
    let proto = f[o + 9];
    let mut ip = Ip {
        o,
        ihl,
        ttl: f[o + 8],
        proto,
        src: f[o + 12..o + 16].try_into().unwrap(),
        dst: f[o + 16..o + 20].try_into().unwrap(),
        frag: get16(f, o + 6)? & 0x3fff != 0,
        sport: get16(f, l4).unwrap_or(0),
        dport: get16(f, l4 + 2).unwrap_or(0),
        icmp: 0,
        flags: 0,
        wf: false,
    };
    if proto == 1 {
        ip.icmp = *f.get(l4).unwrap_or(&0);
        // Echo: the identifier is the flow's port.
        ip.sport = get16(f, l4 + 4).unwrap_or(0);
        ip.dport = 0;
    }
    if proto == 6 {
        ip.flags = *f.get(l4 + 13).unwrap_or(&0);
    }
    let l4len = tot.wrapping_sub(ihl);
    ip.wf = ihl >= 20
        && o + ihl <= f.len()
        && tot >= ihl
        && o + tot <= f.len()
        && match proto {
            6 => {
                let doff = (*f.get(l4 + 12).unwrap_or(&0) >> 4) as usize * 4;
                l4len >= 20 && doff >= 20 && doff <= l4len
            }
            17 => {
                let ulen = get16(f, l4 + 4).unwrap_or(0) as usize;
                l4len >= 8 && (8..=l4len).contains(&ulen)
            }
            1 => l4len >= 8,
            _ => true,
        };
    Some(ip)
}

fn in_subnet(a: [u8; 4]) -> bool {
    a[..3] == [192, 168, 2]
}

/// A destination the bench routes out of the uplink, and one the kernel
/// forwards at all (ip_route_input_slow: not "this network" 0/8, not
/// loopback, not the limited broadcast; multicast only with a multicast
/// router, which the bench has not).
fn via_uplink(a: [u8; 4]) -> bool {
    !(in_subnet(a)
        || a == NAT_IP
        || a[..2] == [10, 77]
        || a == UNREACH
        || a[0] == 0
        || a[0] == 127
        || (224..240).contains(&a[0])
        || a == [255; 4]
        || a == [192, 168, 1, 255])
}

fn is_mcast(m: &[u8]) -> bool {
    m[0] & 1 != 0
}

struct Run<'a> {
    mode: Mode,
    prog: Prog,
    tap: usize,
    ifx: &'a [u32],
    input: &'a [u8],
    ret: u32,
    out: &'a [u8],
}

/// The frame's source MAC may be learned on its ingress port.
fn learnable(r: &Run, before: &State) -> bool {
    if r.input.len() < 14 || r.prog == Prog::TcOut || r.mode.nat() && r.tap == UP {
        return false;
    }
    let src: Mac = r.input[6..12].try_into().unwrap();
    !is_mcast(&src)
        && src != [0; 6]
        && before
            .fdb
            .get(&src)
            .is_none_or(|e| e.flags & FDB_F_STATIC == 0)
}

/// The guest flow the frame is (its NAT_OUT key), if it is one that may
/// make or use a mapping: well formed, from a guest port to the gateway's
/// MAC with a valid source, from the subnet to a destination behind the
/// uplink.
fn guest_flow(r: &Run, before: &State) -> Option<(Key, Ip)> {
    if !r.mode.nat() || r.tap > 2 || r.prog == Prog::TcOut || r.input.len() < 14 {
        return None;
    }
    let src: Mac = r.input[6..12].try_into().unwrap();
    if r.input[..6] != GW_MAC
        || !learnable(r, before)
            && before
                .fdb
                .get(&src)
                .is_none_or(|e| e.ifindex != r.ifx[r.tap])
    {
        return None;
    }
    let ip = ip_of(r.input)?;
    let proto_ok = matches!(ip.proto, 6 | 17) || ip.proto == 1 && ip.icmp == 8;
    if !ip.wf || !proto_ok || ip.frag || ip.ttl <= 1 || !in_subnet(ip.src) || !via_uplink(ip.dst) {
        return None;
    }
    let k = nkey(
        ip.proto,
        be32(ip.src),
        ip.sport.to_be(),
        be32(ip.dst),
        ip.dport.to_be(),
    );
    Some((k, ip))
}

/// The mapping a frame from the uplink may belong to (its NAT_IN key), if
/// it is a well-formed reply to the masquerade address (not an ICMP error).
fn reply_key(r: &Run) -> Option<Key> {
    if !r.mode.nat() || r.tap != UP || r.prog == Prog::TcOut {
        return None;
    }
    let ip = ip_of(r.input)?;
    let proto_ok = matches!(ip.proto, 6 | 17) || ip.proto == 1 && ip.icmp == 0;
    if !ip.wf || !proto_ok || ip.frag || ip.dst != NAT_IP {
        return None;
    }
    // A reply's local end is our port; ICMP echo replies carry it as the id.
    let (lport, rport) = if ip.proto == 1 {
        (ip.sport, 0)
    } else {
        (ip.dport, ip.sport)
    };
    Some(nkey(
        ip.proto,
        be32(NAT_IP),
        lport.to_be(),
        be32(ip.src),
        rport.to_be(),
    ))
}

fn judge(r: &Run, before: &State, after: &State) -> Vec<String> {
    let mut errs = Vec::new();
    let ingress = r.ifx[r.tap];
    // Actions.
    let (pass, drop, redir) = match r.prog {
        Prog::Xdp => (XDP_PASS, XDP_DROP, XDP_REDIRECT),
        _ => (TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT),
    };
    if ![pass, drop, redir].contains(&r.ret) {
        errs.push(format!("{:?} returned {}", r.prog, r.ret));
    }
    judge_bytes(r.mode, r.input, r.out, &mut errs);
    let rewritten = r.out != r.input;
    if rewritten && r.ret == pass {
        errs.push("a rewritten packet was passed to the kernel".into());
    }
    let port_of = |m: &[u8]| -> Option<u32> {
        let m: Mac = m.try_into().ok()?;
        after.fdb.get(&m).map(|e| e.ifindex)
    };
    let is_iso = |ifx: u32| r.ifx.iter().position(|&i| i == ifx).is_some_and(isolated);
    if r.ret == redir && !rewritten && r.input.len() >= 14 {
        let dst = &r.input[..6];
        if r.prog == Prog::TcOut {
            let p = port_of(dst);
            if r.input[6..12] != UP_MAC || p.is_none() || p == Some(ingress) {
                errs.push(
                    "umlbr_tc_out redirected a frame that is not the host's to a known guest"
                        .into(),
                );
            }
        } else if r.mode.nat() && r.tap == UP {
            errs.push("an untranslated frame from the masquerade uplink was redirected".into());
        } else {
            let src: Mac = r.input[6..12].try_into().unwrap();
            if is_mcast(&src) || src == [0; 6] {
                errs.push(format!(
                    "redirected a frame from the invalid source {}",
                    fmt_mac(&src)
                ));
            }
            if let Some(e) = before.fdb.get(&src)
                && e.flags & FDB_F_STATIC != 0
                && e.ifindex != ingress
            {
                errs.push(format!(
                    "redirected a frame whose source {} is static on ifindex {}",
                    fmt_mac(&src),
                    e.ifindex
                ));
            }
            if !is_mcast(dst)
                && let Some(p) = port_of(dst)
            {
                if p == ingress {
                    errs.push(format!(
                        "redirected to {} behind its own ingress",
                        fmt_mac(&dst.try_into().unwrap())
                    ));
                }
                if is_iso(p) && isolated(r.tap) {
                    errs.push("redirected from an isolated port to an isolated port".into());
                }
            }
        }
    }
    // Translation: to the mapping's outside end, or back to its guest.
    if rewritten && r.mode.nat() {
        judge_translation(r, before, after, &mut errs);
    }
    judge_fdb(r, before, after, &mut errs);
    if r.mode.nat() {
        judge_nat(r, before, after, &mut errs);
        judge_nat_stats(r, before, after, &mut errs);
    }
    judge_stats(r, before, after, &mut errs);
    errs
}

fn judge_translation(r: &Run, before: &State, after: &State, errs: &mut Vec<String>) {
    let Some(o) = ip_of(r.out) else {
        errs.push("rewrote a frame that is not IPv4".into());
        return;
    };
    let i = ip_of(r.input).unwrap();
    if o.ttl != i.ttl.wrapping_sub(1) {
        errs.push(format!("TTL {} -> {}", i.ttl, o.ttl));
    }
    if r.tap != UP {
        let Some((k, _)) = guest_flow(r, before) else {
            errs.push(
                "translated a frame that is not a well-formed guest packet to the gateway".into(),
            );
            return;
        };
        let m = after.nat_out.get(&k);
        let ok = m.is_some_and(|m| {
            m.owner == r.ifx[r.tap]
                && o.src == NAT_IP
                && o.sport.to_be() == m.port
                && o.dst == i.dst
        });
        if !ok {
            errs.push(format!(
                "translated out as {}:{} -> {}, not as the mapping {:?} of {}",
                Ipv4Addr::from(o.src),
                o.sport,
                Ipv4Addr::from(o.dst),
                m.map(|m| (
                    Ipv4Addr::from(m.addr.to_ne_bytes()),
                    u16::from_be(m.port),
                    m.owner
                )),
                fmt_key(&k)
            ));
        }
    } else {
        // A reply, or an ICMP error quoting a packet that left as ours.
        let (k, q) = if i.proto == 1 && matches!(i.icmp, 3 | 11 | 12) {
            let q = i.o + i.ihl + 8;
            let qi = &r.input[q..];
            let qo = &r.out[q..];
            let qihl = (qi[0] & 0x0f) as usize * 4;
            let qproto = qi[9];
            let (sp, dp) = if qproto == 1 {
                (get16(qi, qihl + 4).unwrap_or(0), 0)
            } else {
                (
                    get16(qi, qihl).unwrap_or(0),
                    get16(qi, qihl + 2).unwrap_or(0),
                )
            };
            let k = nkey(
                qproto,
                be32(qi[12..16].try_into().unwrap()),
                sp.to_be(),
                be32(qi[16..20].try_into().unwrap()),
                dp.to_be(),
            );
            let qsport = if qproto == 1 {
                get16(qo, qihl + 4)
            } else {
                get16(qo, qihl)
            };
            (
                k,
                Some((be32(qo[12..16].try_into().unwrap()), qsport.unwrap_or(0))),
            )
        } else {
            let Some(k) = reply_key(r) else {
                errs.push("translated a frame from the uplink that is not a well-formed reply or ICMP error".into());
                return;
            };
            (k, None)
        };
        let Some(m) = before.nat_in.get(&k) else {
            errs.push(format!("translated in with no mapping {}", fmt_key(&k)));
            return;
        };
        let dport = if o.proto == 1 { o.sport } else { o.dport };
        let mut ok = be32(o.dst) == m.addr && r.out[..6] == m.mac && r.out[6..12] == GW_MAC;
        if let Some((qsrc, qsport)) = q {
            ok &= qsrc == m.addr && qsport.to_be() == m.port;
        } else {
            ok &= dport.to_be() == m.port;
        }
        if !ok {
            errs.push(format!(
                "translated in to {}:{} ({}), not to the mapping's guest {}:{} ({})",
                Ipv4Addr::from(o.dst),
                dport,
                fmt_mac(&r.out[..6].try_into().unwrap()),
                Ipv4Addr::from(m.addr.to_ne_bytes()),
                u16::from_be(m.port),
                fmt_mac(&m.mac)
            ));
        }
    }
    let _ = after;
}

fn judge_fdb(r: &Run, before: &State, after: &State, errs: &mut Vec<String>) {
    let ingress = r.ifx[r.tap];
    let src: Option<Mac> = r.input.get(6..12).map(|s| s.try_into().unwrap());
    let keys: BTreeSet<&Mac> = before.fdb.keys().chain(after.fdb.keys()).collect();
    for k in keys {
        let (b, a) = (before.fdb.get(k), after.fdb.get(k));
        if b == a {
            continue;
        }
        let why = match (b, a) {
            (Some(_), None) => Some("removed"),
            _ if Some(*k) != src => Some("changed, not the frame's source"),
            _ if !learnable(r, before) => Some("learned from a frame that may teach nothing"),
            (_, Some(e)) if e.ifindex != ingress || e.flags != 0 => {
                Some("not a learned entry of the ingress")
            }
            _ => None,
        };
        if let Some(why) = why {
            errs.push(format!("FDB {}: {b:?} -> {a:?}: {why}", fmt_mac(k)));
        }
    }
    // UMLBR_LEARN: each port's count is its learned entries, within its limit.
    for (p, l) in &after.learn {
        let n = after
            .fdb
            .values()
            .filter(|e| e.ifindex == *p && e.flags & FDB_F_STATIC == 0)
            .count() as u32;
        if l.count != n || l.count > l.max {
            errs.push(format!(
                "UMLBR_LEARN of ifindex {p}: count {} for {n} learned entries (max {})",
                l.count, l.max
            ));
        }
        if let Some(b) = before.learn.get(p)
            && (b.max != l.max
                || b.flood_tat_ns != l.flood_tat_ns
                || b.swept_ns != l.swept_ns && *p != ingress)
        {
            errs.push(format!("UMLBR_LEARN of ifindex {p}: {b:?} -> {l:?}"));
        }
    }
}

fn judge_nat(r: &Run, before: &State, after: &State, errs: &mut Vec<String>) {
    let ingress = r.ifx[r.tap];
    let flow = guest_flow(r, before);
    let flow_ok = flow.is_some() && r.prog != Prog::TcOut;
    let okey = flow.as_ref().map(|(k, _)| *k);
    // The mapping the guest flow has (before or after), if its own.
    let mapped_in = okey.and_then(|k| {
        after
            .nat_out
            .get(&k)
            .or(before.nat_out.get(&k))
            .filter(|m| m.owner == ingress)
            .map(|m| nkey(k.0, m.addr, m.port, k.2, k.4))
    });
    let rkey = reply_key(r);
    let keys: BTreeSet<&Key> = before.nat_out.keys().chain(after.nat_out.keys()).collect();
    for k in keys {
        let (b, a) = (before.nat_out.get(k), after.nat_out.get(k));
        if b == a {
            continue;
        }
        let why = match (b, a) {
            (_, None) => Some("removed"),
            _ if !flow_ok || Some(*k) != okey => {
                Some("changed by a frame that is not a well-formed packet of its flow")
            }
            (None, Some(n)) => {
                let p = u16::from_be(n.port);
                (n.owner != ingress || n.addr != be32(NAT_IP) || !(PORT_LO..=PORT_HI).contains(&p))
                    .then_some("not a mapping of the ingress port in the range")
            }
            (Some(o), Some(n)) => {
                (o.owner != n.owner || o.addr != n.addr || o.port != n.port || o.owner != ingress)
                    .then_some("its owner, address or port changed, or another port's")
            }
        };
        if let Some(why) = why {
            errs.push(format!("NAT_OUT {}: {b:?} -> {a:?}: {why}", fmt_key(k)));
        }
    }
    let keys: BTreeSet<&Key> = before.nat_in.keys().chain(after.nat_in.keys()).collect();
    for k in keys {
        let (b, a) = (before.nat_in.get(k), after.nat_in.get(k));
        if b == a {
            continue;
        }
        let ours = flow_ok && Some(*k) == mapped_in || Some(*k) == rkey;
        let why = match (b, a) {
            (_, None) => Some("removed"),
            _ if !ours => Some("changed by a frame that is not a well-formed packet of its flow"),
            (None, Some(n)) => {
                let ip = flow.as_ref().map(|(_, ip)| ip);
                let ok = ip.is_some_and(|ip| {
                    n.addr == be32(ip.src) && n.port == ip.sport.to_be() && n.mac == r.input[6..12]
                }) && Some(*k) == mapped_in;
                (!ok).then_some("not the guest flow's")
            }
            (Some(o), Some(n)) => (o.addr != n.addr
                || o.port != n.port
                || o.mac != n.mac
                || o.created_ns != n.created_ns)
                .then_some("its guest changed"),
        };
        if let Some(why) = why {
            errs.push(format!("NAT_IN {}: {b:?} -> {a:?}: {why}", fmt_key(k)));
        }
    }
}

/// The masquerade's counters: a translation counted once, by the program
/// that made it; an allocation per new mapping; nothing else more than
/// once.
fn judge_nat_stats(r: &Run, before: &State, after: &State, errs: &mut Vec<String>) {
    let (b, a) = (&before.nat_stats, &after.nat_stats);
    let d = |x: u64, y: u64| x.wrapping_sub(y);
    let rewritten = r.out != r.input;
    let (out_n, in_n) = (
        (d(a.out_xdp, b.out_xdp), d(a.out_tc, b.out_tc)),
        (d(a.in_xdp, b.in_xdp), d(a.in_tc, b.in_tc)),
    );
    let by = |n: bool| match (n, r.prog) {
        (false, _) => (0, 0),
        (true, Prog::Xdp) => (1, 0),
        (true, _) => (0, 1),
    };
    let want_out = by(rewritten && r.tap != UP);
    let want_in = by(rewritten && r.tap == UP);
    if out_n != want_out || in_n != want_in {
        errs.push(format!(
            "NAT counters: out (xdp, tc) +{out_n:?}, in +{in_n:?}; expected +{want_out:?}, +{want_in:?}"
        ));
    }
    let new = after
        .nat_out
        .keys()
        .filter(|k| !before.nat_out.contains_key(k))
        .count() as u64;
    if d(a.allocs, b.allocs) != new {
        errs.push(format!(
            "NAT counters: allocs +{} for {new} new mappings",
            d(a.allocs, b.allocs)
        ));
    }
    let icmp = d(a.icmp_errors, b.icmp_errors);
    if icmp > (rewritten && r.tap == UP) as u64 {
        errs.push(format!("NAT counters: icmp_errors +{icmp}"));
    }
    for (n, v) in [
        ("in_miss", d(a.in_miss, b.in_miss)),
        ("alloc_fail", d(a.alloc_fail, b.alloc_fail)),
        ("slow_path", d(a.slow_path, b.slow_path)),
        ("bad_source", d(a.bad_source, b.bad_source)),
        ("out_of_window", d(a.out_of_window, b.out_of_window)),
        ("foreign", d(a.foreign, b.foreign)),
        ("frag_needed", d(a.frag_needed, b.frag_needed)),
        ("too_big", d(a.too_big, b.too_big)),
    ] {
        if v > 1 {
            errs.push(format!("NAT counters: {n} +{v}"));
        }
    }
}

fn judge_stats(r: &Run, before: &State, after: &State, errs: &mut Vec<String>) {
    let d = |a: u64, b: u64| a.wrapping_sub(b);
    let silent = r.prog == Prog::TcOut || r.mode.nat() && r.tap == UP;
    for (t, (b, a)) in before.stats.iter().zip(&after.stats).enumerate() {
        if t != r.tap || silent {
            if b != a {
                errs.push(format!("counters of {} moved: {b:?} -> {a:?}", TAPS[t]));
            }
            continue;
        }
        let rx = match r.prog {
            Prog::Xdp => (r.ret != XDP_PASS) as u64,
            _ => 1,
        };
        let one = |name: &str, v: u64, errs: &mut Vec<String>| {
            if v > 1 {
                errs.push(format!("{name} of {} moved by {v}", TAPS[t]));
            }
        };
        if d(a.rx_packets, b.rx_packets) != rx
            || d(a.rx_bytes, b.rx_bytes) != rx * r.input.len() as u64
        {
            errs.push(format!(
                "{} counted {} received ({} bytes) for a {}-byte frame, expected {rx} ({:?} returned {})",
                TAPS[t],
                d(a.rx_packets, b.rx_packets),
                d(a.rx_bytes, b.rx_bytes),
                r.input.len(),
                r.prog,
                r.ret
            ));
        }
        let path = d(a.xdp_native, b.xdp_native) + d(a.xdp_generic, b.xdp_generic);
        let tc = d(a.tc, b.tc);
        if (path, tc) != if r.prog == Prog::Xdp { (rx, 0) } else { (0, 1) } {
            errs.push(format!("{}: xdp {path}, tc {tc} for one frame", TAPS[t]));
        }
        let dropped = d(a.dropped, b.dropped);
        for (n, v) in [
            ("forwarded", d(a.forwarded, b.forwarded)),
            ("flooded", d(a.flooded, b.flooded)),
            ("dropped", dropped),
            ("learned", d(a.learned, b.learned)),
            ("moved", d(a.moved, b.moved)),
            ("learn_limited", d(a.learn_limited, b.learn_limited)),
            ("spoofed", d(a.spoofed, b.spoofed)),
            ("isolated", d(a.isolated, b.isolated)),
            ("storm", d(a.storm, b.storm)),
        ] {
            one(n, v, errs);
        }
        // Every drop is counted under exactly one reason.
        let reasons = [
            ("invalid", d(a.invalid, b.invalid)),
            ("hairpin", d(a.hairpin, b.hairpin)),
            ("spoofed", d(a.spoofed, b.spoofed)),
            ("locked", d(a.locked, b.locked)),
            ("ip_locked", d(a.ip_locked, b.ip_locked)),
            ("isolated", d(a.isolated, b.isolated)),
            ("storm", d(a.storm, b.storm)),
            ("nat_quota", d(a.nat_quota, b.nat_quota)),
        ];
        if reasons.iter().map(|(_, v)| v).sum::<u64>() != dropped {
            errs.push(format!(
                "{}: dropped +{dropped}, but its reasons {reasons:?}",
                TAPS[t]
            ));
        }
        let drop = if r.prog == Prog::Xdp {
            XDP_DROP
        } else {
            TC_ACT_SHOT
        };
        if dropped != 0 && r.ret != drop {
            errs.push(format!(
                "{} counted a drop, but the program returned {}",
                TAPS[t], r.ret
            ));
        }
        let src: Option<Mac> = r.input.get(6..12).map(|s| s.try_into().unwrap());
        let (fb, fa) = match src {
            Some(s) => (before.fdb.get(&s), after.fdb.get(&s)),
            None => (None, None),
        };
        let gained = fb.is_none() && fa.is_some();
        let moved = matches!((fb, fa), (Some(x), Some(y)) if x.ifindex != y.ifindex);
        if (d(a.learned, b.learned) == 1) != gained || (d(a.moved, b.moved) == 1) != moved {
            errs.push(format!(
                "{}: learned +{}, moved +{}, but the FDB entry of the source went {fb:?} -> {fa:?}",
                TAPS[t],
                d(a.learned, b.learned),
                d(a.moved, b.moved)
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// The pass.

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    Some(if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16).unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
    } else {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
    })
}

fn failures_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("fuzz-failures")
}

/// A failure: where its input was written and what the oracle said.
struct Failure {
    text: String,
}

struct Tally {
    frames: u64,
    by_prog: BTreeMap<String, u64>,
    actions: BTreeMap<String, u64>,
    rewritten: u64,
    new_mappings: u64,
    learned: u64,
    einval: u64,
    /// Frames that left a tap in the live sample.
    live_out: u64,
    /// Clones that left a tap in the TC test runs.
    tc_out: u64,
    failures: Vec<Failure>,
}

fn record_failure(
    tally: &mut Tally,
    seed: u64,
    what: &str,
    input: &[u8],
    out: Option<&[u8]>,
    errs: &[String],
) {
    let n = tally.failures.len();
    let dir = failures_dir();
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(format!("{seed:016x}-{n}.hex"));
    let mut text = format!("# {what}\n");
    for e in errs {
        text += &format!("# {e}\n");
    }
    text += &to_hex(input);
    let _ = std::fs::write(&p, &text);
    let mut msg = format!(
        "{what}\n    {}\n    input ({} bytes, {}):\n{}",
        errs.join("\n    "),
        input.len(),
        p.display(),
        to_hex(input)
    );
    if let Some(o) = out
        && o != input
    {
        msg += &format!("    output:\n{}", to_hex(o));
    }
    tally.failures.push(Failure { text: msg });
}

/// Whether BPF_PROG_TEST_RUN refuses `frame` (EINVAL) before any program
/// runs: shorter than an Ethernet header; for an skb, shorter than the
/// IPv4 or IPv6 header its EtherType announces.
fn refused(prog: Prog, frame: &[u8]) -> bool {
    let l3 = match get16(frame, 12) {
        Some(0x0800) if prog != Prog::Xdp => 20,
        Some(0x86dd) if prog != Prog::Xdp => 40,
        _ => 0,
    };
    frame.len() < 14 + l3
}

/// The order of the benches' batches in the mutation phase: the NAT
/// benches, where the rewriting is, get most. By count, not by time, so
/// that a seed replays the same frames on the same benches.
const SCHEDULE: [Mode; 8] = [
    Mode::Nat,
    Mode::Switch,
    Mode::NatVeth,
    Mode::Nat,
    Mode::SwitchTcFlood,
    Mode::Nat,
    Mode::Switch,
    Mode::NatVeth,
];

/// Run frames through the programs with BPF_PROG_TEST_RUN until `until`,
/// judging each: first every seed as it is (the reproducers among them)
/// on every bench, through XDP and TC (and the uplink's egress for the
/// uplink's), each on a fresh state; then batches of mutations, the
/// benches in turn (`SCHEDULE`), the maps reset before each batch.
fn pass_test_run(
    b: &mut Bench,
    rng: &mut Rng,
    seeds: &[Seed],
    until: Instant,
    seed: u64,
    tally: &mut Tally,
) -> Result<()> {
    let ifx = b.ctx.taps.ifindex.clone();
    let mut replay: Vec<(Mode, Vec<u8>, usize, String, Prog)> = Vec::new();
    for mode in [Mode::Switch, Mode::SwitchTcFlood, Mode::Nat, Mode::NatVeth] {
        for s in seeds {
            let mut progs = vec![Prog::Xdp, Prog::Tc];
            if s.tap == UP {
                progs.push(Prog::TcOut);
            }
            for p in progs {
                replay.push((mode, s.frame.clone(), s.tap, s.name.clone(), p));
            }
        }
    }
    for (mode, frame, tap, from, prog) in replay {
        b.reset(mode)?;
        let mut before = b.state()?;
        let job = Job {
            mode,
            prog,
            tap,
            frame,
            from,
        };
        run_one(b, &ifx, job, &mut before, seed, tally)?;
    }
    let mut k = 0;
    while Instant::now() < until && tally.failures.len() < 20 {
        let mode = SCHEDULE[k % SCHEDULE.len()];
        k += 1;
        b.reset(mode)?;
        let mut before = b.state()?;
        for _ in 0..BATCH {
            if Instant::now() >= until || tally.failures.len() >= 20 {
                break;
            }
            let (mut frame, tap, from) = mutate(rng, seeds);
            let prog = if tap == UP {
                *rng.pick(&[Prog::Xdp, Prog::Xdp, Prog::Tc, Prog::TcOut])
            } else if rng.chance(65) {
                Prog::Xdp
            } else {
                Prog::Tc
            };
            if prog == Prog::TcOut && frame.len() >= 12 && rng.chance(60) {
                frame[6..12].copy_from_slice(&UP_MAC);
            }
            let job = Job {
                mode,
                prog,
                tap,
                frame,
                from,
            };
            run_one(b, &ifx, job, &mut before, seed, tally)?;
        }
    }
    b.ctx.quiet();
    Ok(())
}

/// One frame for `run_one`.
struct Job {
    mode: Mode,
    prog: Prog,
    tap: usize,
    frame: Vec<u8>,
    /// The seed it was made from.
    from: String,
}

/// Run one frame and judge it; `before` is the state before it, and
/// becomes the one after it (a fresh one after a failure).
fn run_one(
    b: &mut Bench,
    ifx: &[u32],
    job: Job,
    before: &mut State,
    seed: u64,
    tally: &mut Tally,
) -> Result<()> {
    let Job {
        mode,
        prog,
        tap,
        frame,
        from,
    } = job;
    let what = format!("{mode:?} {prog:?} from {} (seed {from})", TAPS[tap]);
    // TC's clones (floods, the uplink's egress) really leave the taps.
    if prog != Prog::Xdp {
        b.ctx.quiet();
    }
    let (ret, out) = match b.run(prog, tap, &frame) {
        Ok(r) => r,
        // The test run itself refuses frames shorter than an
        // Ethernet header, and (TC) than the network header their
        // EtherType announces.
        Err(Errno(libc::EINVAL)) if refused(prog, &frame) => {
            tally.einval += 1;
            return Ok(());
        }
        Err(e) => {
            record_failure(tally, seed, &what, &frame, None, &[format!("{e}")]);
            return Ok(());
        }
    };
    let after = b.state()?;
    tally.frames += 1;
    *tally
        .by_prog
        .entry(format!("{mode:?} {prog:?}"))
        .or_default() += 1;
    *tally.actions.entry(format!("{prog:?} {ret}")).or_default() += 1;
    tally.rewritten += (out != frame) as u64;
    tally.new_mappings += after.nat_out.len().saturating_sub(before.nat_out.len()) as u64;
    tally.learned += after.fdb.len().saturating_sub(before.fdb.len()) as u64;
    let run = Run {
        mode,
        prog,
        tap,
        ifx,
        input: &frame,
        ret,
        out: &out,
    };
    let mut errs = judge(&run, before, &after);
    if prog != Prog::Xdp && frame.len() >= 14 {
        let got = b.ctx.collect(&[0; 5], Duration::ZERO, |_| true);
        tally.tc_out += got.iter().map(|g| g.len() as u64).sum::<u64>();
        errs.extend(judge_out(
            mode,
            prog,
            tap,
            &frame,
            &got,
            (before, &after),
            ifx,
        ));
    }
    if !errs.is_empty() {
        record_failure(tally, seed, &what, &frame, Some(&out), &errs);
        // Start the next frame from a known state.
        b.reset(mode)?;
        *before = b.state()?;
        return Ok(());
    }
    *before = after;
    Ok(())
}

/// A live sample: umlbr_xdp attached to every tap, frames written into
/// them; what leaves each tap judged (see the module's doc).
fn pass_live(
    b: &mut Bench,
    rng: &mut Rng,
    seeds: &[Seed],
    mode: Mode,
    (count, until): (usize, Instant),
    seed: u64,
    tally: &mut Tally,
) -> Result<u64> {
    let ifx = b.ctx.taps.ifindex.clone();
    b.reset(mode)?;
    let mut frames = 0u64;
    for n in 0..count {
        if Instant::now() >= until || tally.failures.len() >= 20 {
            break;
        }
        if n > 0 && n.is_multiple_of(BATCH) {
            b.reset(mode)?;
        }
        let (frame, tap, from) = mutate(rng, seeds);
        if frame.len() < 14 {
            continue;
        }
        let before = b.state()?;
        b.ctx.quiet();
        b.ctx.run_xdp_live(ifx[tap], &frame)?;
        frames += 1;
        std::thread::sleep(Duration::from_millis(1));
        let got = b.ctx.collect(&[0; 5], Duration::ZERO, |_| true);
        let after = b.state()?;
        tally.live_out += got.iter().map(|g| g.len() as u64).sum::<u64>();
        let errs = judge_out(mode, Prog::Xdp, tap, &frame, &got, (&before, &after), &ifx);
        if !errs.is_empty() {
            let what = format!("{mode:?} live XDP from {} (seed {from})", TAPS[tap]);
            record_failure(tally, seed, &what, &frame, None, &errs);
        }
    }
    b.ctx.quiet();
    Ok(frames)
}

/// What left the taps after `frame` entered tap `tap` (`prog` ran on it):
/// each copy of it must be one its port may get (see the module's doc).
fn judge_out(
    mode: Mode,
    prog: Prog,
    tap: usize,
    frame: &[u8],
    got: &[Vec<Vec<u8>>],
    (before, after): (&State, &State),
    ifx: &[u32],
) -> Vec<String> {
    let mut errs = Vec::new();
    let dst: Mac = frame[..6].try_into().unwrap();
    for (p, frames_out) in got.iter().enumerate().take(TAPS.len()) {
        let copies = frames_out.iter().filter(|f| f.as_slice() == frame).count();
        if copies > 1 {
            errs.push(format!("{copies} copies out of {}", TAPS[p]));
        }
        for f in frames_out {
            // What a guest sends leaves the masquerade uplink only
            // translated: never from the guests' subnet, never as it
            // was sent. (What enters from the uplink may come back out
            // of it: the host routes the LAN's packets.)
            if mode.nat()
                && p == UP
                && tap != UP
                && (f.as_slice() == frame || ip_of(f).is_some_and(|ip| in_subnet(ip.src)))
            {
                errs.push(format!(
                    "an untranslated guest frame left the masquerade uplink: {}",
                    to_hex(f).replace('\n', "")
                ));
            }
            if f.as_slice() != frame {
                // A guest's translated packet (same length) leaves only
                // by the uplink (where its mapping says is judged on the
                // test-run pass); other frames are the taps' own stacks.
                if mode.nat() && tap != UP && p != UP && f.len() == frame.len() {
                    errs.push(format!(
                        "a rewritten guest frame left {}: {}",
                        TAPS[p],
                        to_hex(f).replace('\n', "")
                    ));
                }
                continue;
            }
            if p == tap {
                errs.push(format!("the frame left by its ingress {}", TAPS[p]));
            }
            // The host's own frames go to the guests, not back up.
            if prog == Prog::TcOut && p == HP {
                errs.push("umlbr_tc_out sent the host's frame to the host port".into());
            }
            if isolated(p) && isolated(tap) {
                errs.push(format!(
                    "from isolated {} to isolated {}",
                    TAPS[tap], TAPS[p]
                ));
            }
            if !is_mcast(&dst)
                && let Some(e) = after.fdb.get(&dst).or(before.fdb.get(&dst))
                && e.ifindex != ifx[p]
            {
                errs.push(format!(
                    "unicast for {} (FDB: ifindex {}) left {}",
                    fmt_mac(&dst),
                    e.ifindex,
                    TAPS[p]
                ));
            }
        }
    }
    errs
}

#[test]
fn fuzz_datapath() -> Result<()> {
    let secs = env_u64("UMLBR_FUZZ_SECS").unwrap_or(16).max(1);
    let seed = env_u64("UMLBR_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!(
        "fuzz: {secs} s, seed {seed:#x} (replay: UMLBR_FUZZ_SEED={seed:#x} UMLBR_FUZZ_SECS={secs})"
    );
    let seeds = load_corpus(&corpus_dir())?;
    let mut rng = Rng(seed);
    let mut b = Bench::new()?;
    let mut tally = Tally {
        frames: 0,
        by_prog: BTreeMap::new(),
        actions: BTreeMap::new(),
        rewritten: 0,
        new_mappings: 0,
        learned: 0,
        einval: 0,
        live_out: 0,
        tc_out: 0,
        failures: Vec::new(),
    };
    let started = Instant::now();
    let budget = Duration::from_secs(secs);
    // 80% of the time to the test runs (NAT modes twice the switch's),
    // the rest to the live sample.
    pass_test_run(
        &mut b,
        &mut rng,
        &seeds,
        started + budget.mul_f64(0.8),
        seed,
        &mut tally,
    )?;
    let test_run_time = started.elapsed();
    let test_run_frames = tally.frames;
    let mut live = 0;
    let live_start = Instant::now();
    // A generator of its own: the live sample replays whatever number of
    // test runs came before it.
    let mut rng = Rng(seed ^ 0x6c69_7665);
    for (m, s) in [(Mode::Switch, 0.5), (Mode::Nat, 1.0)] {
        let until = started + budget.mul_f64(0.8 + 0.2 * s);
        live += pass_live(
            &mut b,
            &mut rng,
            &seeds,
            m,
            (400 * secs as usize / 16, until),
            seed,
            &mut tally,
        )?;
    }
    let live_time = live_start.elapsed();
    eprintln!(
        "fuzz: {} test runs in {:.1} s ({:.0}/s; {} TC clones out of the taps), {} live frames in {:.1} s ({} frames out of the taps); {} rewritten, {} new mappings, {} MACs learned, {} too short for a test run",
        test_run_frames,
        test_run_time.as_secs_f64(),
        test_run_frames as f64 / test_run_time.as_secs_f64(),
        tally.tc_out,
        live,
        live_time.as_secs_f64(),
        tally.live_out,
        tally.rewritten,
        tally.new_mappings,
        tally.learned,
        tally.einval
    );
    eprintln!("fuzz: by program {:?}", tally.by_prog);
    eprintln!("fuzz: actions {:?}", tally.actions);
    if !tally.failures.is_empty() {
        bail!(
            "{} failing input(s) (seed {seed:#x}; written to {}):\n{}",
            tally.failures.len(),
            failures_dir().display(),
            tally
                .failures
                .iter()
                .map(|f| f.text.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The oracle's own tests: it must see what it is for.

#[test]
fn oracle_sees_broken_checksums_and_stray_bytes() {
    let f = Frame::new(GW_MAC, gmac(0))
        .udp(gip(0), 5000, R1, 53, b"query")
        .pad_min()
        .build();
    // A correct translation by the book keeps every residual.
    let mut t = f.clone();
    t[26..30].copy_from_slice(&NAT_IP);
    put16(&mut t, 34, P_UDP);
    t[22] -= 1;
    fix_checksums(&mut t);
    let mut errs = Vec::new();
    judge_bytes(Mode::Nat, &f, &t, &mut errs);
    assert!(errs.is_empty(), "{errs:?}");
    // The address changed without its checksums.
    let mut bad = f.clone();
    bad[26..30].copy_from_slice(&NAT_IP);
    let mut errs = Vec::new();
    judge_bytes(Mode::Nat, &f, &bad, &mut errs);
    assert!(
        errs.iter().any(|e| e.starts_with("IPv4 header")),
        "{errs:?}"
    );
    assert!(errs.iter().any(|e| e.starts_with("UDP")), "{errs:?}");
    // An invalid input checksum fixed by a rewrite is a change too.
    let mut inv = f.clone();
    inv[40] ^= 0x10;
    let mut errs = Vec::new();
    judge_bytes(Mode::Nat, &inv, &t, &mut errs);
    assert!(
        errs.iter().any(|e| e.contains("invalid checksum changed")),
        "{errs:?}"
    );
    // A byte of the Ethernet trailer.
    let mut pad = f.clone();
    let last = pad.len() - 1;
    pad[last] = 1;
    let mut errs = Vec::new();
    judge_bytes(Mode::Nat, &f, &pad, &mut errs);
    assert!(errs.iter().any(|e| e.contains("outside")), "{errs:?}");
    // And without a masquerade, any change.
    let mut errs = Vec::new();
    judge_bytes(Mode::Switch, &f, &t, &mut errs);
    assert!(!errs.is_empty());
}

#[test]
fn oracle_well_formedness() {
    let f = Frame::new(GW_MAC, gmac(0))
        .tcp(gip(0), R1, &TcpHeader::new(1, 2, tcp_flags::SYN), b"")
        .build();
    assert!(ip_of(&f).unwrap().wf);
    let mut short = f.clone();
    put16(&mut short, 16, 200);
    assert!(!ip_of(&short).unwrap().wf, "total length past the frame");
    let mut doff = f.clone();
    doff[14 + 20 + 12] = 0x40;
    assert!(!ip_of(&doff).unwrap().wf, "data offset 4");
    let u = Frame::new(GW_MAC, gmac(0))
        .udp(gip(0), 1, R1, 2, b"abc")
        .build();
    assert!(ip_of(&u).unwrap().wf);
    let mut ulen = u.clone();
    put16(&mut ulen, 14 + 20 + 4, 100);
    assert!(!ip_of(&ulen).unwrap().wf, "UDP length past the packet");
}
