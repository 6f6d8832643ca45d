//! Uplink → guest, IPv6: parse a reply (or an ICMPv6 error quoting a
//! translated packet), decide whose mapping it is, rewrite it for the
//! guest (`crate::nat::inbound`'s steps).

use umlbr_common::{NAT_S_REPLIED, Nat6Config, Nat6Key, NatConfig};

use super::{
    A6, ICMP6_DST_UNREACH, ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST, ICMP6_PACKET_TOO_BIG,
    ICMP6_TIME_EXCEEDED, IP6_DST, IP6_HLEN, IP6_HOP, IP6_NEXT, IP6_OFF, IP6_PLEN, IPPROTO_ICMPV6,
    L4_OFF, NAT6_IN, NAT6_OUT, PULL6, Q_IP, Q_L4, config6, count6, dec_hop, set_addr6,
};
use crate::{
    csum::csum_replace,
    hdr::*,
    nat::{
        In, set_port,
        table::{live, tcp_state_in, touch, window_ok},
    },
    pkt::{Pkt, Sum, ld},
};

/// Where an ICMPv6 error's quoted source address sits.
const Q_SRC: usize = Q_IP + 8;

struct Reply {
    key: Nat6Key,
    port_off: usize,
    icmp_err: bool,
    tcp_flags: u8,
    seq: u32,
    ack: u32,
    hop: u8,
    /// Where the packet ends (after the Ethernet header): an error's quote
    /// is rewritten only before it.
    end: u32,
}

struct Guest {
    addr: A6,
    port: u16,
    mac: [u8; 6],
}

#[inline(always)]
pub fn translate<P: Pkt>(pkt: &P, cfg: &NatConfig) -> In {
    let Some(c6) = config6() else {
        return In::Host;
    };
    pkt.linearize(PULL6);
    let Some(r) = parse(pkt, c6) else {
        return In::Host;
    };
    let Some(g) = decide::<P>(cfg, &r) else {
        return In::Host;
    };
    if !rewrite(pkt, cfg, c6, &r, &g) {
        return In::Host;
    }
    if P::XDP {
        count6(|s| s.in_xdp += 1);
    } else {
        count6(|s| s.in_tc += 1);
    }
    In::Guest(g.mac)
}

/// The mapping the packet would belong to: one bounds check per shape,
/// then plain loads.
#[inline(always)]
fn parse(pkt: &impl Pkt, c6: &Nat6Config) -> Option<Reply> {
    let (data, end) = pkt.bounds();
    if data + L4_OFF + UDP_HLEN > end {
        return None;
    }
    // SAFETY: 62 bytes checked above.
    let (next, hop, plen, saddr, daddr) = unsafe {
        (
            ld::<u8>(data, IP6_NEXT),
            ld::<u8>(data, IP6_HOP),
            u16::from_be(ld::<u16>(data, IP6_PLEN)),
            ld::<A6>(data, IP6_OFF + 8),
            ld::<A6>(data, IP6_DST),
        )
    };
    if daddr != c6.addr || hop <= 1 {
        return None;
    }
    let pend = (IP6_OFF + IP6_HLEN) as u32 + plen as u32;
    if plen < 8 || pend > pkt.len() {
        return None;
    }
    // SAFETY: within the 62 bytes checked above.
    let (sport, dport) = unsafe {
        (
            ld::<u16>(data, L4_OFF + L4_SPORT),
            ld::<u16>(data, L4_OFF + L4_DPORT),
        )
    };
    let mut r = Reply {
        key: Nat6Key::new(next, c6.addr, dport, saddr, sport),
        port_off: L4_OFF + L4_DPORT,
        icmp_err: false,
        tcp_flags: 0,
        seq: 0,
        ack: 0,
        hop,
        end: pend,
    };
    if next == IPPROTO_TCP {
        if data + L4_OFF + TCP_HLEN > end {
            return None;
        }
        // SAFETY: checked just above.
        let doff = unsafe {
            r.tcp_flags = ld::<u8>(data, L4_OFF + TCP_FLAGS);
            r.seq = u32::from_be(ld::<u32>(data, L4_OFF + TCP_SEQ));
            r.ack = u32::from_be(ld::<u32>(data, L4_OFF + TCP_ACK_SEQ));
            ld::<u8>(data, L4_OFF + TCP_DOFF)
        };
        let hlen = ((doff >> 4) as u32) * 4;
        if hlen < 20 || hlen > plen as u32 {
            return None;
        }
        return Some(r);
    }
    if next == IPPROTO_UDP {
        // SAFETY: within the 62 bytes checked above.
        let (ulen, check) = unsafe {
            (
                u16::from_be(ld::<u16>(data, L4_OFF + UDP_LEN)),
                ld::<u16>(data, L4_OFF + UDP_CHECK),
            )
        };
        if ulen < 8 || ulen > plen || check == 0 {
            return None;
        }
        return Some(r);
    }
    if next != IPPROTO_ICMPV6 {
        return None;
    }
    // SAFETY: within the 62 bytes checked above.
    let (ty, id) = unsafe { (ld::<u8>(data, L4_OFF), ld::<u16>(data, L4_OFF + 4)) };
    if ty == ICMP6_ECHO_REPLY {
        r.key = Nat6Key::new(IPPROTO_ICMPV6, c6.addr, id, saddr, 0);
        r.port_off = L4_OFF + 4;
        return Some(r);
    }
    if ty != ICMP6_DST_UNREACH && ty != ICMP6_PACKET_TOO_BIG && ty != ICMP6_TIME_EXCEEDED {
        return None;
    }
    // The quoted IPv6 header and 8 bytes of its transport, in the frame
    // and in the packet.
    if data + Q_L4 + 8 > end || pend < (Q_L4 + 8) as u32 {
        return None;
    }
    // SAFETY: checked just above.
    let (qnext, qsrc, qdst, qsport, qdport, qty, qid) = unsafe {
        (
            ld::<u8>(data, Q_IP + 6),
            ld::<A6>(data, Q_SRC),
            ld::<A6>(data, Q_IP + 24),
            ld::<u16>(data, Q_L4 + L4_SPORT),
            ld::<u16>(data, Q_L4 + L4_DPORT),
            ld::<u8>(data, Q_L4),
            ld::<u16>(data, Q_L4 + 4),
        )
    };
    if qsrc != c6.addr {
        return None;
    }
    (r.key, r.port_off) = match qnext {
        IPPROTO_TCP | IPPROTO_UDP => (
            Nat6Key::new(qnext, c6.addr, qsport, qdst, qdport),
            Q_L4 + L4_SPORT,
        ),
        IPPROTO_ICMPV6 if qty == ICMP6_ECHO_REQUEST => (
            Nat6Key::new(IPPROTO_ICMPV6, c6.addr, qid, qdst, 0),
            Q_L4 + 4,
        ),
        _ => return None,
    };
    r.icmp_err = true;
    Some(r)
}

/// The guest of the reply's live mapping, refreshed by it (unless it is
/// an ICMPv6 error); as `crate::nat::inbound::decide`.
#[inline(always)]
fn decide<P: Pkt>(cfg: &NatConfig, r: &Reply) -> Option<Guest> {
    let now = crate::fdb::now();
    let Some(e) = NAT6_IN.get_ptr_mut(&r.key) else {
        count6(|s| s.in_miss += 1);
        return None;
    };
    // SAFETY: pointer into the map value.
    let e = unsafe { &mut *e };
    if !live(cfg, r.key.proto, &e.st, now) {
        count6(|s| s.in_miss += 1);
        return None;
    }
    // As IPv4's: a guest XDP cannot send to (behind a VXLAN port, or aged
    // out of the FDB) is TC's.
    if P::XDP && !crate::nat::inbound::xdp_reaches(e.st.mac, now) {
        return None;
    }
    if !r.icmp_err && !trusted(r, &e.addr, e.st.port) {
        crate::nat::count(|s| s.out_of_window += 1);
    } else if !r.icmp_err {
        let st = if r.key.proto == IPPROTO_TCP {
            tcp_state_in(r.tcp_flags)
        } else {
            NAT_S_REPLIED
        };
        touch(&mut e.st, now, st);
    }
    Some(Guest {
        addr: e.addr,
        port: e.st.port,
        mac: e.st.mac,
    })
}

/// Whether the packet may change its mapping's state: anything but a TCP
/// RST or FIN, and those only inside the guest's window.
#[inline(always)]
fn trusted(r: &Reply, addr: &A6, port: u16) -> bool {
    if r.key.proto != IPPROTO_TCP || r.tcp_flags & (TCP_RST | TCP_FIN) == 0 {
        return true;
    }
    let okey = Nat6Key::new(
        IPPROTO_TCP,
        *addr,
        port,
        r.key.remote_addr,
        r.key.remote_port,
    );
    match NAT6_OUT.get_ptr(&okey) {
        // SAFETY: pointer into the map value, read in place.
        Some(o) => window_ok(unsafe { &*o }, r.seq, r.ack, r.tcp_flags),
        None => false,
    }
}

/// Rewrite the packet for the guest: destination address and port with
/// the transport checksum (the quote too in an ICMPv6 error), the hop
/// limit, the MACs.
#[inline(always)]
fn rewrite(pkt: &impl Pkt, cfg: &NatConfig, c6: &Nat6Config, r: &Reply, g: &Guest) -> bool {
    let Some(old_port) = pkt.rd::<u16>(r.port_off) else {
        return false;
    };
    let proto = if r.icmp_err {
        IPPROTO_ICMPV6
    } else {
        r.key.proto
    };
    let csum_off = L4_OFF + l4_check(proto);
    set_addr6(
        pkt,
        IP6_DST,
        &c6.addr,
        &g.addr,
        csum_off,
        Sum::of(proto, true),
    );
    if r.icmp_err && !rewrite_quote(pkt, (r.key.proto, r.end), &c6.addr, old_port, g) {
        return false;
    }
    set_port(pkt, r.port_off, csum_off, proto, old_port, g.port);
    dec_hop(pkt, r.hop);
    pkt.wr::<[u8; 6]>(0, g.mac);
    pkt.wr::<[u8; 6]>(ETH_SRC, cfg.gw_mac);
    true
}

/// An ICMPv6 error's quote of a packet that left as `addr`:`old_port`:
/// its source becomes the guest's, with the quoted transport checksum
/// (whose pseudo header covers that source, and which covers the port)
/// where the quote holds it, and the ICMPv6 checksum over all of it. The
/// port itself is the caller's.
#[inline(always)]
fn rewrite_quote(
    pkt: &impl Pkt,
    (proto, end): (u8, u32),
    addr: &A6,
    old_port: u16,
    g: &Guest,
) -> bool {
    const ICMP_SUM: usize = L4_OFF + ICMP_CHECK;
    set_addr6(pkt, Q_SRC, addr, &g.addr, ICMP_SUM, Sum::L4);
    let l4sum_off = Q_L4 + l4_check(proto);
    if l4sum_off as u32 + 2 <= end
        && let Some(old) = pkt.rd::<u16>(l4sum_off)
        && !(proto == IPPROTO_UDP && old == 0)
    {
        let mut new = old;
        let mut i = 0;
        while i < 4 {
            new = csum_replace(new, addr[i], g.addr[i], 4);
            i += 1;
        }
        new = csum_replace(new, old_port as u32, g.port as u32, 2);
        if proto == IPPROTO_UDP && new == 0 {
            new = 0xffff;
        }
        pkt.wr::<u16>(l4sum_off, new);
        pkt.csum(ICMP_SUM, Sum::L4, old as u32, new as u32, 2);
    }
    count6(|s| s.icmp_errors += 1);
    true
}
