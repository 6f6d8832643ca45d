//! Guest → uplink, IPv6: parse the guest's packet, decide its mapping and
//! next hop, rewrite it as the uplink's (`crate::nat::out`'s steps).

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::bpf_fib_lookup as fib_lookup,
};
use umlbr_common::{NAT_F_XDP_TX, Nat6Config, NatConfig};

use super::{
    A6, ICMP6_ECHO_REQUEST, IP6_DST, IP6_HLEN, IP6_HOP, IP6_NEXT, IP6_OFF, IP6_PLEN, IP6_SRC,
    IPPROTO_ICMPV6, L4_OFF, PULL6, config6, count6, dec_hop, in_prefixes, is_zero, local_scope,
    scratch, set_addr6,
    table::{self, Flow6},
};
use crate::{
    csum::fold,
    hdr::*,
    mem::{Hop, zero_words},
    nat::{
        Out, Packed,
        quota::{sweep, sweep_due},
        set_port,
        table::{MAP_FOREIGN, MAP_FOUND, MAP_FOUND_HOP, MAP_FULL, MAP_QUOTA},
    },
    pkt::{Pkt, Sum, ld},
};

const AF_INET6: u8 = 10;

/// What `parse` found besides the flow (which it writes into the
/// scratch).
struct Outgoing {
    port_off: usize,
    hop: u8,
}

struct Mapped {
    port: u16,
    neigh: bool,
}

#[inline(always)]
pub fn translate<P: Pkt>(pkt: &P, cfg: &NatConfig, guest_mac: [u8; 6]) -> Out {
    let Some(c6) = config6() else {
        return Out::NotNat;
    };
    let Some(s) = scratch() else {
        return Out::NotNat;
    };
    pkt.linearize(PULL6);
    let parsed = parse_sub::<P>(pkt.as_ptr(), cfg, &guest_mac);
    if parsed.tag() != PARSED {
        return Out::unpack(parsed);
    }
    // SAFETY: this CPU's scratch, the flow `parse_sub` wrote; only the
    // flow is referenced from here (the table writes the keys beside it).
    let f = unsafe { &*core::ptr::addr_of!((*s).flow) };
    let mut hop = MaybeUninit::<Hop>::uninit();
    let m = match decide(pkt, cfg, c6, f, hop.as_mut_ptr()) {
        Ok(m) => m,
        Err(verdict) => return verdict,
    };
    rewrite::<P>(
        pkt.as_ptr(),
        parsed.val(),
        m.port as u64 | (m.neigh as u64) << 16,
        hop.as_ptr(),
    );
    if P::XDP {
        count6(|s| s.out_xdp += 1);
    } else {
        count6(|s| s.out_tc += 1);
    }
    if m.neigh {
        Out::RedirectNeigh(cfg.nat_ifindex)
    } else {
        Out::Redirect(cfg.nat_ifindex)
    }
}

/// Whether a guest's packet to `daddr` is the masquerade's: not between
/// guests, not for the uplink's address, and routable at all.
#[inline(always)]
fn leaves(c6: &Nat6Config, daddr: &A6) -> bool {
    !local_scope(daddr) && !in_prefixes(c6, daddr) && *daddr != c6.addr
}

/// A guest packet the kernel's path takes (and its ip6 table masquerades
/// or drops), counted.
#[inline(always)]
fn slow() -> Out {
    count6(|s| s.slow_path += 1);
    Out::NotNat
}

/// `parse_sub`'s tag for a parsed flow (its value: the port's offset, and
/// the hop limit above it); any other tag is the verdict.
const PARSED: u16 = 0xffff;

/// `parse` as a BPF function of its own: its locals leave the stack
/// before `decide`'s call chain takes it. The flow goes to the scratch.
#[inline(never)]
fn parse_sub<P: Pkt>(ctx: *mut c_void, cfg: &NatConfig, mac: &[u8; 6]) -> Packed {
    // SAFETY: the caller's own context.
    let pkt = unsafe { P::from_raw(ctx) };
    let (Some(c6), Some(s)) = (config6(), scratch()) else {
        return Out::NotNat.pack();
    };
    // SAFETY: this CPU's scratch.
    let f = unsafe { &mut *core::ptr::addr_of_mut!((*s).flow) };
    match parse(&pkt, cfg, c6, *mac, f) {
        Ok(g) => Packed::pack(PARSED, g.port_off as u64 | (g.hop as u64) << 16),
        Err(verdict) => verdict.pack(),
    }
}

#[inline(always)]
fn parse<P: Pkt>(
    pkt: &P,
    cfg: &NatConfig,
    c6: &Nat6Config,
    mac: [u8; 6],
    f: &mut Flow6,
) -> Result<Outgoing, Out> {
    let (data, end) = pkt.bounds();
    if data + L4_OFF + UDP_HLEN > end {
        return Err(Out::NotNat);
    }
    // SAFETY: 62 bytes checked above.
    let (next, hop, plen, saddr, daddr, sport, dport) = unsafe {
        (
            ld::<u8>(data, IP6_NEXT),
            ld::<u8>(data, IP6_HOP),
            u16::from_be(ld::<u16>(data, IP6_PLEN)),
            ld::<A6>(data, IP6_SRC),
            ld::<A6>(data, IP6_DST),
            ld::<u16>(data, L4_OFF + L4_SPORT),
            ld::<u16>(data, L4_OFF + L4_DPORT),
        )
    };
    if !leaves(c6, &daddr) {
        return Err(Out::NotNat);
    }
    if P::XDP && cfg.flags & NAT_F_XDP_TX == 0 {
        return Err(Out::ToTc);
    }
    // Extension headers (fragments among them), expiring hop limits and
    // lengths beyond the frame are the kernel's.
    let len = pkt.len();
    if hop <= 1 || (plen as u32) < 8 || (IP6_OFF + IP6_HLEN) as u32 + plen as u32 > len {
        return Err(slow());
    }
    f.proto = next;
    f.tcp_flags = 0;
    f.sport = sport;
    f.dport = dport;
    f.tot_len = (IP6_HLEN as u16).wrapping_add(plen);
    f.saddr = saddr;
    f.daddr = daddr;
    f.mac = mac;
    f.win = 0;
    f.seq_next = 0;
    f.ack = 0;
    let (port_off, l4_hlen) = if next == IPPROTO_TCP {
        if data + L4_OFF + TCP_HLEN > end {
            return Err(Out::NotNat);
        }
        // SAFETY: checked just above.
        let (doff, flags, seq, ack, win) = unsafe {
            (
                ld::<u8>(data, L4_OFF + TCP_DOFF),
                ld::<u8>(data, L4_OFF + TCP_FLAGS),
                ld::<u32>(data, L4_OFF + TCP_SEQ),
                ld::<u32>(data, L4_OFF + TCP_ACK_SEQ),
                ld::<u16>(data, L4_OFF + TCP_WINDOW),
            )
        };
        let hlen = ((doff >> 4) as u32) * 4;
        if hlen < 20 || hlen > plen as u32 {
            return Err(slow());
        }
        let payload = (plen as u32).wrapping_sub(hlen);
        let ctl = (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
        f.tcp_flags = flags;
        f.seq_next = u32::from_be(seq).wrapping_add(payload).wrapping_add(ctl);
        f.ack = u32::from_be(ack);
        f.win = u16::from_be(win);
        (L4_OFF + L4_SPORT, hlen)
    } else if next == IPPROTO_UDP {
        // SAFETY: within the 62 bytes checked above.
        let (ulen, check) = unsafe {
            (
                u16::from_be(ld::<u16>(data, L4_OFF + UDP_LEN)),
                ld::<u16>(data, L4_OFF + UDP_CHECK),
            )
        };
        // A zero UDP checksum is invalid in IPv6 (RFC 8200 8.1).
        if ulen < 8 || ulen > plen || check == 0 {
            return Err(slow());
        }
        (L4_OFF + L4_SPORT, UDP_HLEN as u32)
    } else if next == IPPROTO_ICMPV6 {
        // SAFETY: within the 62 bytes checked above.
        let (ty, id) = unsafe { (ld::<u8>(data, L4_OFF), ld::<u16>(data, L4_OFF + 4)) };
        if ty != ICMP6_ECHO_REQUEST {
            return Err(slow());
        }
        f.sport = id;
        f.dport = 0;
        (L4_OFF + 4, 8)
    } else {
        return Err(slow());
    };
    if P::XDP && partial(data, end, f, plen) {
        return Err(Out::ToTc);
    }
    let gso = pkt.gso_size();
    if gso != 0 {
        f.tot_len = (IP6_HLEN as u32 + l4_hlen + gso).min(f.tot_len as u32) as u16;
    }
    Ok(Outgoing { port_off, hop })
}

/// Whether the TCP/UDP checksum holds the bare pseudo-header sum
/// (CHECKSUM_PARTIAL), which XDP cannot finish: TC's.
#[inline(always)]
fn partial(data: usize, end: usize, f: &Flow6, plen: u16) -> bool {
    if f.proto == IPPROTO_ICMPV6 {
        return false;
    }
    let off = L4_OFF + l4_check(f.proto);
    if data + off + 2 > end {
        return false;
    }
    // SAFETY: checked just above.
    let check = u16::from_be(unsafe { ld::<u16>(data, off) });
    let mut s = f.proto as u32 + plen as u32;
    let mut i = 0;
    while i < 4 {
        let (a, b) = (u32::from_be(f.saddr[i]), u32::from_be(f.daddr[i]));
        s += (a >> 16) + (a & 0xffff) + (b >> 16) + (b & 0xffff);
        i += 1;
    }
    check == fold(s)
}

#[inline(always)]
fn decide<P: Pkt>(
    pkt: &P,
    cfg: &NatConfig,
    c6: &Nat6Config,
    f: &Flow6,
    hop: *mut Hop,
) -> Result<Mapped, Out> {
    // Only the guests' own prefixes are masqueraded; the kernel's ip6
    // table drops other sources.
    if !in_prefixes(c6, &f.saddr) {
        count6(|s| s.bad_source += 1);
        return Err(Out::NotNat);
    }
    if is_zero(&c6.addr) {
        return Err(no_address(pkt, cfg, f, hop));
    }
    if cfg.mtu != 0 && f.tot_len as u32 > cfg.mtu {
        return Err(slow());
    }
    let now = crate::fdb::now();
    let found = table::find(cfg, f, now, hop, pkt.ingress());
    if found.tag() == MAP_FOREIGN {
        count6(|s| s.slow_path += 1);
        crate::nat::count(|s| s.foreign += 1);
        return Err(Out::NotNat);
    }
    if found.tag() == MAP_FOUND_HOP {
        return Ok(Mapped {
            port: found.val() as u16,
            neigh: false,
        });
    }
    let neigh = next_hop(pkt, cfg, f, hop)?;
    if P::XDP && neigh {
        return Err(Out::ToTc);
    }
    let hop: *const Hop = if neigh { core::ptr::null() } else { hop };
    let m = if found.tag() == MAP_FOUND {
        if !neigh {
            table::store_hop(f, hop, now);
        }
        found
    } else {
        let m = table::new(pkt.as_ptr(), cfg, f, hop, pkt.ingress());
        if (m.tag() == MAP_QUOTA || m.tag() == MAP_FULL) && sweep_due(now) {
            sweep(now);
            table::new(pkt.as_ptr(), cfg, f, hop, pkt.ingress())
        } else {
            m
        }
    };
    match m.tag() {
        MAP_FOUND => Ok(Mapped {
            port: m.val() as u16,
            neigh,
        }),
        // Dropped, as IPv4's: the kernel's masquerade would map it anyway.
        MAP_QUOTA => {
            crate::nat::count(|s| s.quota += 1);
            Err(Out::Drop)
        }
        MAP_FULL => {
            crate::nat::count(|s| s.alloc_fail += 1);
            Err(slow())
        }
        // MAP_NONE (no free port), MAP_REFUSED (a TCP flow not from its
        // SYN): the kernel's.
        _ => Err(slow()),
    }
}

/// The uplink has no global IPv6 address to masquerade behind: a guest's
/// packet the kernel would route out of the uplink is dropped (counted);
/// one for the host itself, or elsewhere, is the kernel's.
#[inline(always)]
fn no_address(pkt: &impl Pkt, cfg: &NatConfig, f: &Flow6, hop: *mut Hop) -> Out {
    match next_hop(pkt, cfg, f, hop) {
        Ok(_) => {
            count6(|s| s.no_addr += 1);
            Out::DropNoAddr
        }
        Err(v) => v,
    }
}

/// Route the flow: whether its next hop's MAC is unresolved (else it is
/// in `hop`); `Err` when it does not leave through the uplink.
#[inline(always)]
fn next_hop(pkt: &impl Pkt, cfg: &NatConfig, f: &Flow6, hop: *mut Hop) -> Result<bool, Out> {
    let r = route(pkt.as_ptr(), cfg, f, hop);
    let via_uplink = r.val() as u32 == cfg.nat_ifindex;
    match r.tag() as u32 {
        BPF_FIB_LKUP_RET_SUCCESS if via_uplink => Ok(false),
        BPF_FIB_LKUP_RET_NO_NEIGH if via_uplink => Ok(true),
        _ => Err(slow()),
    }
}

/// Rewrite the packet as the mapping's: source address and port with
/// the transport checksum, the hop limit, the next hop's MACs when known.
/// A BPF function of its own (as `parse_sub`), so its arguments come
/// packed: `parsed` as `parse_sub`'s value, `mapped` the outside port and
/// (bit 16) whether the next hop is unresolved.
#[inline(never)]
fn rewrite<P: Pkt>(ctx: *mut c_void, parsed: u64, mapped: u64, hop: *const Hop) {
    // SAFETY: the caller's own context.
    let pkt = &unsafe { P::from_raw(ctx) };
    let (Some(c6), Some(s)) = (config6(), scratch()) else {
        return;
    };
    // SAFETY: this CPU's scratch, the flow `parse_sub` wrote.
    let f = unsafe { &*core::ptr::addr_of!((*s).flow) };
    let g = Outgoing {
        port_off: parsed as u16 as usize,
        hop: (parsed >> 16) as u8,
    };
    let m = Mapped {
        port: mapped as u16,
        neigh: mapped >> 16 != 0,
    };
    let csum_off = L4_OFF + l4_check(f.proto);
    set_addr6(
        pkt,
        IP6_SRC,
        &f.saddr,
        &c6.addr,
        csum_off,
        Sum::of(f.proto, true),
    );
    set_port(pkt, g.port_off, csum_off, f.proto, f.sport, m.port);
    dec_hop(pkt, g.hop);
    if !m.neigh {
        // SAFETY: written by table::find (MAP_FOUND_HOP) or route.
        pkt.wr::<Hop>(0, unsafe { *hop });
    }
}

/// IPv6 route lookup for a guest flow entering through the bridge's
/// interface: as `crate::nat::out::route`.
#[inline(never)]
fn route(ctx: *mut c_void, cfg: &NatConfig, f: &Flow6, macs: *mut Hop) -> Packed {
    let mut fib = MaybeUninit::<bpf_fib_lookup>::uninit();
    let p = fib.as_mut_ptr();
    // SAFETY: our own stack slot, zeroed word by word, then filled.
    let ret = unsafe {
        zero_words(p);
        (*p).family = AF_INET6;
        (*p).l4_protocol = f.proto;
        (*p).sport = if f.proto == IPPROTO_ICMPV6 {
            0
        } else {
            f.sport
        };
        (*p).dport = f.dport;
        (*p).__bindgen_anon_1.tot_len = f.tot_len;
        (*p).ifindex = cfg.host_ifindex;
        (*p).__bindgen_anon_3.ipv6_src = f.saddr;
        (*p).__bindgen_anon_4.ipv6_dst = f.daddr;
        fib_lookup(ctx, p, core::mem::size_of::<bpf_fib_lookup>() as i32, 0)
    };
    // SAFETY: the caller's Hop, written whatever the result.
    unsafe {
        let m = macs.cast::<[u8; 6]>();
        m.write((*p).dmac);
        m.add(1).write((*p).smac);
    }
    if ret < 0 {
        return Packed::pack(u16::MAX, 0);
    }
    // SAFETY: initialised above, and the helper only writes it.
    Packed::pack(ret as u16, unsafe { (*p).ifindex } as u64)
}
