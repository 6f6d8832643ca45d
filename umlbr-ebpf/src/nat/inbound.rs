//! Uplink → guest: parse a reply (or an ICMP error quoting a translated
//! packet), decide whose mapping it is, rewrite it for the guest.

use core::{ffi::c_void, mem::MaybeUninit};

use umlbr_common::{CFG_F_VXLAN, NAT_F_FWD, NAT_S_REPLIED, NatConfig, NatIn, NatKey};

use super::{
    IP_OFF, In, L4_OFF, NAT_IN, count, dec_ttl,
    forward::{FWD_DROP, FWD_OPEN, open},
    pmtu,
    quota::{sweep, sweep_due},
    set_ip_addr, set_port,
    table::{in_window, live, tcp_state_in, touch},
    whole,
};
use crate::{
    csum::csum_replace,
    hdr::*,
    pkt::{Pkt, Sum, ld},
};

/// Where an ICMP error quotes the offending packet's headers.
const IN_IP: usize = L4_OFF + ICMP_HLEN;
const IN_L4: usize = IN_IP + IP_HLEN;

/// A packet from the uplink that may belong to a mapping, as parsed.
struct Reply {
    /// The mapping's NAT_IN key.
    key: NatKey,
    /// Where the outside port (or echo identifier) to replace sits.
    port_off: usize,
    /// An ICMP error about a packet of the mapping: the quoted headers are
    /// translated too, and the mapping's state is left alone.
    icmp_err: bool,
    tcp_flags: u8,
    /// TCP sequence and acknowledgment numbers (host byte order).
    seq: u32,
    ack: u32,
    /// Where the IPv4 packet ends (its total length after the Ethernet
    /// header): an ICMP error's quote is rewritten only before it.
    end: u32,
    /// DF is set: too big for the guest's port, the sender gets
    /// "fragmentation needed" (`pmtu`).
    df: bool,
}

/// The guest end of the mapping.
pub struct Guest {
    pub addr: u32,
    pub port: u16,
    pub mac: [u8; 6],
}

/// Translate a reply (or an ICMP error about a mapping) arriving on the
/// masquerade uplink.
#[inline(always)]
pub fn translate<P: Pkt>(pkt: &P, cfg: &NatConfig) -> In {
    let Some(r) = parse(pkt, cfg) else {
        return In::Host;
    };
    let g = match decide(pkt, cfg, &r) {
        Ok(g) => g,
        Err(verdict) => return verdict,
    };
    // Path MTU, as a router: the packet must fit the guest's port. Checked
    // before the rewrite, so that an error quotes it as its sender sent it;
    // XDP checked it in `decide`, where the port was at hand.
    if !P::XDP && !r.icmp_err {
        let mtu = pmtu::too_big(pkt, 0, &g.mac, r.end - IP_OFF as u32);
        if mtu != 0 {
            return pmtu::answer(pkt, cfg, r.df, mtu);
        }
    }
    if !rewrite(pkt, cfg, &r, &g) {
        return In::Host;
    }
    if P::XDP {
        count(|s| s.in_xdp += 1);
    } else {
        count(|s| s.in_tc += 1);
    }
    In::Guest(g.mac)
}

/// The mapping the packet would belong to. One bounds check per shape,
/// then plain loads from the same `data`: branchy Option reads let the
/// compiler correlate paths the verifier cannot follow.
#[inline(always)]
fn parse(pkt: &impl Pkt, cfg: &NatConfig) -> Option<Reply> {
    let (data, end) = pkt.bounds();
    if data + L4_OFF + UDP_HLEN > end {
        return None;
    }
    // SAFETY: 42 bytes checked above.
    let (ethtype, h) = unsafe { (ld::<u16>(data, ETH_TYPE), Ip4::at(data, IP_OFF)) };
    if ethtype != ETH_P_IP || ne32(h.ip.dst_addr) != cfg.nat_addr || !ip_plain(h.ip) {
        return None;
    }
    let (proto, saddr) = (h.ip.proto, ne32(h.ip.src_addr));
    // Lengths that do not hold together (`whole`) are the kernel's.
    let (tot, len) = (u16::from_be_bytes(h.ip.tot_len) as u32, pkt.len());
    let (mut tcp_flags, mut seq, mut ack) = (0, 0, 0);
    if proto == IPPROTO_TCP {
        if data + L4_OFF + TCP_HLEN > end {
            return None;
        }
        // SAFETY: checked just above.
        let doff = unsafe {
            tcp_flags = ld::<u8>(data, L4_OFF + TCP_FLAGS);
            seq = u32::from_be(ld::<u32>(data, L4_OFF + TCP_SEQ));
            ack = u32::from_be(ld::<u32>(data, L4_OFF + TCP_ACK_SEQ));
            ld::<u8>(data, L4_OFF + TCP_DOFF)
        };
        if !whole(IPPROTO_TCP, tot, len, ((doff >> 4) as u32) * 4, 0) {
            return None;
        }
    } else if proto == IPPROTO_ICMP {
        return parse_icmp((data, end, len), cfg, &h, tot);
    } else if proto != IPPROTO_UDP {
        return None;
    } else {
        // SAFETY: within the 42 bytes checked above.
        let ulen = u16::from_be(unsafe { ld::<u16>(data, L4_OFF + UDP_LEN) });
        if !whole(IPPROTO_UDP, tot, len, 0, ulen as u32) {
            return None;
        }
    }
    let (sport, dport) = (ne16(h.ports.src), ne16(h.ports.dst));
    Some(Reply {
        key: NatKey::new(proto, cfg.nat_addr, dport, saddr, sport),
        port_off: L4_OFF + L4_DPORT,
        icmp_err: false,
        tcp_flags,
        seq,
        ack,
        end: IP_OFF as u32 + tot,
        df: u16::from_be_bytes(h.ip.frags) & IP_DF != 0,
    })
}

/// An echo reply, or an error quoting a packet that left as
/// nat_addr:port. `data` has the 42 bytes of `h`, checked by the caller;
/// the frame is `len` bytes, the packet `tot`.
#[inline(always)]
fn parse_icmp(
    (data, end, len): (usize, usize, u32),
    cfg: &NatConfig,
    h: &Ip4,
    tot: u32,
) -> Option<Reply> {
    let (ty, saddr) = (h.icmp.type_, ne32(h.ip.src_addr));
    if !whole(IPPROTO_ICMP, tot, len, 0, 0) {
        return None;
    }
    if ty == ICMP_ECHOREPLY {
        return Some(Reply {
            key: NatKey::new(IPPROTO_ICMP, cfg.nat_addr, h.echo_id(), saddr, 0),
            port_off: L4_OFF + ICMP_ECHO_ID,
            icmp_err: false,
            tcp_flags: 0,
            seq: 0,
            ack: 0,
            end: IP_OFF as u32 + tot,
            df: u16::from_be_bytes(h.ip.frags) & IP_DF != 0,
        });
    }
    if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED && ty != ICMP_PARAMETERPROB {
        return None;
    }
    // The quoted IPv4 header and 8 bytes of its transport, in the frame
    // and in the packet.
    if data + IN_L4 + UDP_HLEN > end || IP_OFF as u32 + tot < (IN_L4 + UDP_HLEN) as u32 {
        return None;
    }
    // SAFETY: checked just above.
    let q = unsafe { Ip4::at(data, IN_IP) };
    if q.ip.vihl != IP_VIHL_PLAIN || ne32(q.ip.src_addr) != cfg.nat_addr {
        return None;
    }
    let (local_port, remote_port, port_off) = match q.ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => (ne16(q.ports.src), ne16(q.ports.dst), IN_L4 + L4_SPORT),
        IPPROTO_ICMP => (q.echo_id(), 0, IN_L4 + ICMP_ECHO_ID),
        _ => return None,
    };
    let (local, remote) = (cfg.nat_addr, ne32(q.ip.dst_addr));
    Some(Reply {
        key: NatKey::new(q.ip.proto, local, local_port, remote, remote_port),
        port_off,
        icmp_err: true,
        tcp_flags: 0,
        seq: 0,
        ack: 0,
        end: IP_OFF as u32 + tot,
        df: false,
    })
}

/// The guest of the reply's live mapping, refreshed by it (unless it is
/// an ICMP error). In XDP, a reply too big for the guest's port is
/// answered here (`pmtu`: passed to TC, or dropped). XDP cannot flood to the guests alone (a devmap
/// broadcast would reach the host port too): a reply for a guest whose
/// MAC aged out of the FDB is left, untouched, to TC, which translates
/// and floods it.
#[inline(always)]
fn decide<P: Pkt>(pkt: &P, cfg: &NatConfig, r: &Reply) -> Result<Guest, In> {
    let now = crate::fdb::now();
    let e = match NAT_IN.get_ptr_mut(r.key) {
        // SAFETY: pointer into the map value.
        Some(e) if live(cfg, r.key.proto, unsafe { &*e }, now) => e,
        _ if cfg.flags & NAT_F_FWD != 0 && !r.icmp_err => return forwarded(pkt, cfg, r),
        _ => {
            count(|s| s.in_miss += 1);
            return Err(In::Host);
        }
    };
    // SAFETY: pointer into the map value.
    let e = unsafe { &mut *e };
    if P::XDP {
        let pmtu = (r.end - IP_OFF as u32) | (r.df as u32) << 16 | (r.icmp_err as u32) << 17;
        match xdp_egress::<P>(pkt.as_ptr(), cfg, &e.mac, pmtu, now) {
            EGRESS_OK => {}
            EGRESS_DROP => return Err(In::Drop),
            _ => return Err(In::Host),
        }
    }
    if !r.icmp_err && !trusted(r, e) {
        // As conntrack marks it INVALID: passed on (the guest's TCP judges
        // it), but the mapping's state and time are left alone.
        count(|s| s.out_of_window += 1);
    } else if !r.icmp_err {
        let st = if r.key.proto == IPPROTO_TCP {
            tcp_state_in(r.tcp_flags)
        } else {
            NAT_S_REPLIED
        };
        touch(e, now, st);
    }
    Ok(Guest {
        addr: e.addr,
        port: e.port,
        mac: e.mac,
    })
}

/// Whether XDP can send a reply to the guest `mac`: its MAC is in the FDB
/// and, on a bridge with a VXLAN port, its port takes XDP frames (a guest
/// on another host is behind the VXLAN device, which XDP cannot send to:
/// TC translates the reply and redirects it there). Bridges without one
/// pay only the flag test of the config already loaded.
#[inline(always)]
pub(crate) fn xdp_reaches(mac: [u8; 6], now: u64) -> bool {
    xdp_port(mac, now) != 0
}

/// `xdp_egress`: XDP sends the reply; XDP drops it; TC's (XDP_PASS).
const EGRESS_OK: u32 = 0;
const EGRESS_DROP: u32 = 1;
const EGRESS_TC: u32 = 2;

/// Whether XDP sends a reply to the guest `mac` (`xdp_reaches`) and,
/// where it does, the path MTU check on its port (`pmtu`): `pmtu` packs
/// the packet's IPv4 length (bits 0-15), DF (16) and "an ICMP error, not
/// checked" (17). Out of line: inlined, its FDB lookup's values spilled
/// into inbound_sub's frame, on which the deepest XDP chain stacks.
#[inline(never)]
fn xdp_egress<P: Pkt>(
    ctx: *mut c_void,
    cfg: &NatConfig,
    mac: &[u8; 6],
    pmtu: u32,
    now: u64,
) -> u32 {
    let port = xdp_port(*mac, now);
    if port == 0 {
        return EGRESS_TC;
    }
    if pmtu & 1 << 17 != 0 {
        return EGRESS_OK;
    }
    // SAFETY: the caller's own context.
    let pkt = unsafe { P::from_raw(ctx) };
    let mtu = pmtu::too_big(&pkt, port, mac, pmtu & 0xffff);
    if mtu == 0 {
        return EGRESS_OK;
    }
    match pmtu::answer(&pkt, cfg, pmtu & 1 << 16 != 0, mtu) {
        In::Drop => EGRESS_DROP,
        _ => EGRESS_TC,
    }
}

/// `xdp_reaches`, with the port it reaches (0: none).
#[inline(always)]
pub(crate) fn xdp_port(mac: [u8; 6], now: u64) -> u32 {
    let cfg = crate::config();
    match crate::fdb::lookup(mac, 0, now, crate::fdb::aging_ns(cfg)) {
        Some((port, false)) if cfg.flags & CFG_F_VXLAN == 0 || crate::in_devmap(port) => port,
        _ => 0,
    }
}

/// A packet with no live mapping on a bridge with port forwards: a new
/// flow to a forwarded port gets its mapping (`forward::open`); anything
/// else is the host's, as without forwards.
#[inline(always)]
fn forwarded<P: Pkt>(pkt: &P, cfg: &NatConfig, r: &Reply) -> Result<Guest, In> {
    let mut g = MaybeUninit::<Guest>::uninit();
    let mut opened = open(pkt.as_ptr(), cfg, &r.key, r.tcp_flags, g.as_mut_ptr());
    // At the guest port's quota: sweep out the expired mappings (at most
    // once in NAT_SWEEP_INTERVAL_NS) and try once more, as out.rs does.
    if opened == FWD_DROP {
        let now = crate::fdb::now();
        if sweep_due(now) {
            sweep(now);
            opened = open(pkt.as_ptr(), cfg, &r.key, r.tcp_flags, g.as_mut_ptr());
        }
    }
    match opened {
        // SAFETY: written by `open` when it returns FWD_OPEN.
        FWD_OPEN => Ok(unsafe { g.assume_init() }),
        FWD_DROP => {
            count(|s| s.quota += 1);
            Err(In::Drop)
        }
        _ => {
            count(|s| s.in_miss += 1);
            Err(In::Host)
        }
    }
}

/// Whether the packet may change its mapping's state: anything but a TCP
/// RST or FIN, and those only inside the guest's window (`in_window`).
#[inline(always)]
fn trusted(r: &Reply, e: &NatIn) -> bool {
    if r.key.proto != IPPROTO_TCP || r.tcp_flags & (TCP_RST | TCP_FIN) == 0 {
        return true;
    }
    let okey = NatKey::new(
        IPPROTO_TCP,
        e.addr,
        e.port,
        r.key.remote_addr,
        r.key.remote_port,
    );
    in_window(&okey, r.seq, r.ack, r.tcp_flags)
}

/// Rewrite the packet for the guest: destination address and port with
/// their checksums (the quoted headers too in an ICMP error), the TTL,
/// the MACs.
#[inline(always)]
fn rewrite(pkt: &impl Pkt, cfg: &NatConfig, r: &Reply, g: &Guest) -> bool {
    let Some(ttl_word) = pkt.rd::<u16>(IP_OFF + IP_TTL) else {
        return false;
    };
    let Some(old_port) = pkt.rd::<u16>(r.port_off) else {
        return false;
    };
    // ICMP errors: the checksum to fix is the ICMP one, which has no
    // pseudo header.
    let proto = if r.icmp_err {
        IPPROTO_ICMP
    } else {
        r.key.proto
    };
    let csum_off = L4_OFF + l4_check(proto);
    set_ip_addr(pkt, IP_OFF + IP_DADDR, cfg.nat_addr, g.addr);
    if r.icmp_err {
        if !rewrite_quote(pkt, (r.key.proto, r.end), cfg.nat_addr, old_port, g) {
            return false;
        }
    } else if proto != IPPROTO_ICMP {
        pkt.csum(csum_off, Sum::of(proto, true), cfg.nat_addr, g.addr, 4);
    }
    set_port(pkt, r.port_off, csum_off, proto, old_port, g.port);
    dec_ttl(pkt, ttl_word);
    pkt.wr::<[u8; 6]>(0, g.mac);
    pkt.wr::<[u8; 6]>(ETH_SRC, cfg.gw_mac);
    true
}

/// An ICMP error's quote of a packet that left as `addr`:`old_port`: its
/// source becomes the guest's, with the quoted IP checksum, the quoted
/// transport checksum where the quote holds it (as Linux's NAT does: it
/// covers the source of UDP and TCP, and the port), and the ICMP checksum
/// over all of it. The port itself is the caller's. The quoted transport
/// checksum only if it lies before the packet's `end`: the bytes after it
/// (an Ethernet trailer) are no part of the ICMP checksum.
#[inline(always)]
fn rewrite_quote(
    pkt: &impl Pkt,
    (proto, end): (u8, u32),
    addr: u32,
    old_port: u16,
    g: &Guest,
) -> bool {
    const ICMP_SUM: usize = L4_OFF + ICMP_CHECK;
    let Some(old_ipsum) = pkt.rd::<u16>(IN_IP + IP_CHECK) else {
        return false;
    };
    let new_ipsum = csum_replace(old_ipsum, addr, g.addr, 4);
    pkt.wr::<u32>(IN_IP + IP_SADDR, g.addr);
    pkt.wr::<u16>(IN_IP + IP_CHECK, new_ipsum);
    pkt.csum(ICMP_SUM, Sum::L4, addr, g.addr, 4);
    pkt.csum(ICMP_SUM, Sum::L4, old_ipsum as u32, new_ipsum as u32, 2);
    let l4sum_off = IN_L4 + l4_check(proto);
    if l4sum_off as u32 + 2 <= end
        && let Some(old) = pkt.rd::<u16>(l4sum_off)
        && !(proto == IPPROTO_UDP && old == 0)
    {
        let mut new = if proto == IPPROTO_UDP || proto == IPPROTO_TCP {
            csum_replace(old, addr, g.addr, 4)
        } else {
            old
        };
        new = csum_replace(new, old_port as u32, g.port as u32, 2);
        if proto == IPPROTO_UDP && new == 0 {
            new = 0xffff;
        }
        pkt.wr::<u16>(l4sum_off, new);
        pkt.csum(ICMP_SUM, Sum::L4, old as u32, new as u32, 2);
    }
    count(|s| s.icmp_errors += 1);
    true
}
