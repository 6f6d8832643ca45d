//! Guest → uplink: parse the guest's packet, decide its mapping and next
//! hop, rewrite it as the uplink's.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::bpf_fib_lookup as fib_lookup,
    maps::lpm_trie::Key,
};
use umlbr_common::{
    EV_NAT_FULL, EV_NAT_NEW, EV_NAT_NO_PORT, EV_NAT_QUOTA, NAT_F_FWD, NAT_F_ROUTE_MTU,
    NAT_F_XDP_TX, NatConfig,
};

use super::{
    IP_OFF, L4_OFF, NAT_MTU, Out, Packed, count, dec_ttl,
    forward::is_target,
    forwardable, leaves,
    quota::{sweep, sweep_due},
    set_ip_addr, set_port, stats,
    table::{
        Flow, MAP_FOREIGN, MAP_FOUND, MAP_FOUND_HOP, MAP_FULL, MAP_NONE, MAP_QUOTA, log_no_port,
        mapping_find, mapping_new, store_hop,
    },
    whole,
};
use crate::{
    csum::pseudo4,
    hdr::*,
    mem::{Hop, zero_words},
    pkt::{Pkt, Sum, ld},
};

const AF_INET: u8 = 2;

/// A guest packet to translate, as parsed.
struct Outgoing {
    flow: Flow,
    /// Where the port (TCP, UDP) or echo identifier (ICMP) to replace sits.
    port_off: usize,
}

/// How it leaves: its outside port, and whether the next hop's MAC is
/// unknown (TC's redirect_neigh resolves it) or in the caller's Hop.
struct Mapped {
    port: u16,
    neigh: bool,
}

/// Translate a guest packet addressed to the gateway's MAC, if it leaves
/// through the masquerade uplink.
#[inline(always)]
pub fn translate<P: Pkt>(pkt: &P, cfg: &NatConfig, guest_mac: [u8; 6]) -> Out {
    let g = match parse(pkt, cfg, guest_mac) {
        Ok(g) => g,
        Err(verdict) => return verdict,
    };
    // The next hop's dst and src MAC. Left uninitialised: both ways of
    // `decide` write it before it is read, and zeroing it costs a call to
    // the BPF backend's byte-wise memset on every packet.
    let mut hop = MaybeUninit::<Hop>::uninit();
    let m = match decide(pkt, cfg, &g.flow, hop.as_mut_ptr()) {
        Ok(m) => m,
        Err(verdict) => return verdict,
    };
    if !rewrite(pkt, cfg, &g, &m, hop.as_ptr()) {
        return Out::NotNat;
    }
    if P::XDP {
        count(|s| s.out_xdp += 1);
    } else {
        count(|s| s.out_tc += 1);
    }
    if m.neigh {
        Out::RedirectNeigh(cfg.nat_ifindex)
    } else {
        Out::Redirect(cfg.nat_ifindex)
    }
}

/// The guest's flow, if the packet is one to translate here; else the
/// verdict. One bounds check per shape, then plain loads (see
/// `inbound::parse`).
#[inline(always)]
fn parse<P: Pkt>(pkt: &P, cfg: &NatConfig, mac: [u8; 6]) -> Result<Outgoing, Out> {
    let (data, end) = pkt.bounds();
    if data + L4_OFF + UDP_HLEN > end {
        return Err(Out::NotNat);
    }
    // SAFETY: 42 bytes checked above.
    let (ethtype, h) = unsafe { (ld::<u16>(data, ETH_TYPE), Ip4::at(data, IP_OFF)) };
    // Inside the guest subnet or to the host itself: plain switching.
    if ethtype != ETH_P_IP || !leaves(cfg, ne32(h.ip.dst_addr)) {
        return Err(Out::NotNat);
    }
    // An uplink that takes no XDP frames (a veth): the TC program does all
    // of it, so XDP spares its route and MTU lookups (measured: the NAT
    // veth rows of bench/).
    if P::XDP && cfg.flags & NAT_F_XDP_TX == 0 {
        return Err(Out::ToTc);
    }
    // IP options, fragments, expiring TTLs and destinations no router
    // forwards are the kernel's business.
    if !ip_plain(h.ip) || !forwardable(ne32(h.ip.dst_addr)) {
        count(|s| s.slow_path += 1);
        return Err(Out::NotNat);
    }
    let mut f = Flow {
        proto: h.ip.proto,
        tcp_flags: 0,
        sport: ne16(h.ports.src),
        dport: ne16(h.ports.dst),
        tot_len: u16::from_be_bytes(h.ip.tot_len),
        saddr: ne32(h.ip.src_addr),
        daddr: ne32(h.ip.dst_addr),
        mac,
        win: 0,
        seq_next: 0,
        ack: 0,
    };
    let (port_off, l4_hlen) = parse_l4((data, end, pkt.len()), &h, &mut f)?;
    // A CHECKSUM_PARTIAL packet (a vnet-header guest's offload) holds only
    // the pseudo-header sum, which XDP cannot finish: TC's.
    if P::XDP && partial(data, &f) {
        return Err(Out::ToTc);
    }
    // A GSO packet leaves as segments of gso_size behind the same headers:
    // those must fit, not the super-packet.
    let gso = pkt.gso_size();
    if gso != 0 {
        f.tot_len = (IP_HLEN as u32 + l4_hlen + gso).min(f.tot_len as u32) as u16;
    }
    Ok(Outgoing { flow: f, port_off })
}

/// The transport part of `parse`: where the flow's port sits and the
/// transport header's length; TCP's flags, ICMP's echo identifier into
/// `f`. `data` has the 42 bytes of `h`, checked by the caller; the frame
/// is `len` bytes long. A packet whose lengths do not hold together
/// (`whole`) is the kernel's.
#[inline(always)]
fn parse_l4(
    (data, end, len): (usize, usize, u32),
    h: &Ip4,
    f: &mut Flow,
) -> Result<(usize, u32), Out> {
    let tot = f.tot_len as u32;
    if f.proto == IPPROTO_TCP {
        if data + L4_OFF + TCP_HLEN > end {
            return Err(Out::NotNat);
        }
        // SAFETY: checked just above.
        let (doff, flags) = unsafe {
            (
                ld::<u8>(data, L4_OFF + TCP_DOFF),
                ld::<u8>(data, L4_OFF + TCP_FLAGS),
            )
        };
        // SAFETY: checked just above.
        let (seq, ack, win) = unsafe {
            (
                ld::<u32>(data, L4_OFF + TCP_SEQ),
                ld::<u32>(data, L4_OFF + TCP_ACK_SEQ),
                ld::<u16>(data, L4_OFF + TCP_WINDOW),
            )
        };
        let hlen = ((doff >> 4) as u32) * 4;
        if !whole(IPPROTO_TCP, tot, len, hlen, 0) {
            return Err(malformed());
        }
        // The guest's next sequence number: this segment's payload (of the
        // whole packet, GSO included), SYN and FIN each count one.
        let payload = (f.tot_len as u32).wrapping_sub(IP_HLEN as u32 + hlen);
        let ctl = (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
        f.tcp_flags = flags;
        f.seq_next = u32::from_be(seq).wrapping_add(payload).wrapping_add(ctl);
        f.ack = u32::from_be(ack);
        f.win = u16::from_be(win);
        Ok((L4_OFF + L4_SPORT, hlen))
    } else if f.proto == IPPROTO_UDP {
        // SAFETY: within the 42 bytes checked by the caller.
        let ulen = u16::from_be(unsafe { ld::<u16>(data, L4_OFF + UDP_LEN) });
        if !whole(IPPROTO_UDP, tot, len, 0, ulen as u32) {
            return Err(malformed());
        }
        Ok((L4_OFF + L4_SPORT, UDP_HLEN as u32))
    } else if f.proto == IPPROTO_ICMP && h.icmp.type_ == ICMP_ECHO {
        if !whole(IPPROTO_ICMP, tot, len, 0, 0) {
            return Err(malformed());
        }
        f.sport = h.echo_id();
        f.dport = 0;
        Ok((L4_OFF + ICMP_ECHO_ID, ICMP_HLEN as u32))
    } else {
        count(|s| s.slow_path += 1);
        Err(Out::NotNat)
    }
}

/// A guest packet whose lengths do not hold together: the kernel's path
/// (which drops it), counted with what it takes.
#[inline(always)]
fn malformed() -> Out {
    count(|s| s.slow_path += 1);
    Out::NotNat
}

/// Whether the flow's TCP/UDP checksum field holds the bare pseudo-header
/// sum, the mark of CHECKSUM_PARTIAL. Checked here, on headers already
/// parsed, instead of by csum::looks_partial before the switch (measured:
/// its own parse and call cost ~40 ns a packet). `data` has the transport
/// header, checked by `parse_l4`.
#[inline(always)]
fn partial(data: usize, f: &Flow) -> bool {
    if f.proto == IPPROTO_ICMP || (f.tot_len as usize) < IP_HLEN {
        return false;
    }
    // SAFETY: the checksum field is within the bytes checked (42 for UDP,
    // 54 for TCP).
    let check = unsafe { ld::<u16>(data, L4_OFF + l4_check(f.proto)) };
    let l4len = (f.tot_len as usize - IP_HLEN) as u32;
    u16::from_be(check) == pseudo4(f.saddr, f.daddr, f.proto, l4len)
}

/// The flow's mapping and next hop (into `hop`), found or made; else the
/// verdict (the kernel's path, or TC's).
#[inline(always)]
fn decide<P: Pkt>(pkt: &P, cfg: &NatConfig, f: &Flow, hop: *mut Hop) -> Result<Mapped, Out> {
    // A guest may masquerade only its subnet's addresses; the kernel's
    // path drops the rest (umlbr's nftables forward chain).
    if f.saddr & cfg.mask != cfg.subnet {
        count(|s| s.bad_source += 1);
        return Err(Out::NotNat);
    }
    if !fits_mtu(cfg, f) {
        count(|s| s.slow_path += 1);
        return Err(Out::NotNat);
    }
    // An established flow with a fresh cached next hop skips the route
    // lookup, the costliest step (bench/: NAT rows).
    let now = crate::fdb::now();
    // The port the packet came in on: a mapping belongs to the port that
    // made it. (Read from the context at each call, not kept in the Flow:
    // that kept out_sub's frame within the 512-byte stack.)
    let found = mapping_find(cfg, f, now, hop, pkt.ingress());
    if found.tag() == MAP_FOREIGN {
        count(|s| s.foreign += 1);
        return Err(Out::NotNat);
    }
    if found.tag() == MAP_FOUND_HOP {
        return Ok(Mapped {
            port: found.val() as u16,
            neigh: false,
        });
    }
    // A new flow from a port forward's target: the kernel's (see
    // forward::is_target). Only bridges with forwards ask.
    if found.tag() != MAP_FOUND
        && cfg.flags & NAT_F_FWD != 0
        && is_target(f.proto, f.saddr, f.sport)
    {
        count(|s| s.slow_path += 1);
        return Err(Out::NotNat);
    }
    let neigh = next_hop(pkt, cfg, f, hop)?;
    if P::XDP && neigh {
        return Err(Out::ToTc);
    }
    // An unresolved neighbour is not cached: TC's redirect_neigh resolves
    // it, and the next packet looks again. A new mapping is stored with
    // its hop (one insert, no second lookup); an existing one gets the
    // fresh hop stored.
    let hop: *const Hop = if neigh { core::ptr::null() } else { hop };
    let m = if found.tag() == MAP_FOUND {
        if !neigh {
            store_hop(f, hop, now);
        }
        found
    } else {
        let m = mapping_new(pkt.as_ptr(), cfg, f, hop, pkt.ingress());
        // At the quota, or the table full: sweep out the expired mappings
        // (at most once in NAT_SWEEP_INTERVAL_NS) and try once more.
        // (Swept from here, not from mapping_new: the sweep's frames took
        // that call chain past the 512-byte stack.)
        if (m.tag() == MAP_QUOTA || m.tag() == MAP_FULL) && sweep_due(now) {
            sweep(now);
            mapping_new(pkt.as_ptr(), cfg, f, hop, pkt.ingress())
        } else {
            m
        }
    };
    if found.tag() != MAP_FOUND {
        mapping_event(pkt.ingress(), f, cfg.nat_addr, m);
    }
    match m.tag() {
        MAP_FOUND => Ok(Mapped {
            port: m.val() as u16,
            neigh,
        }),
        MAP_NONE => {
            no_port(cfg, f);
            Err(Out::NotNat)
        }
        // Dropped, not left to the kernel: its masquerade would map the
        // flow anyway (as conntrack's `ct count` limit, which drops).
        MAP_QUOTA => {
            count(|s| s.quota += 1);
            Err(Out::Drop)
        }
        // The table is full of live mappings: the kernel's path, as when
        // no port is free.
        MAP_FULL => {
            count(|s| {
                s.alloc_fail += 1;
                s.slow_path += 1;
            });
            Err(Out::NotNat)
        }
        // MAP_REFUSED
        _ => {
            count(|s| s.slow_path += 1);
            Err(Out::NotNat)
        }
    }
}

/// The event of a new flow's mapping `m` (mapping_new's result): made,
/// or refused (quota, table full, no port). A TCP flow not starting with
/// a SYN (MAP_REFUSED) is none: the kernel's path as before.
#[inline(always)]
fn mapping_event(ingress: u32, f: &Flow, nat_addr: u32, m: Packed) {
    let kind = match m.tag() {
        MAP_FOUND => EV_NAT_NEW,
        MAP_NONE => EV_NAT_NO_PORT,
        MAP_QUOTA => EV_NAT_QUOTA,
        MAP_FULL => EV_NAT_FULL,
        _ => return,
    };
    crate::events::nat(kind, ingress, f, nat_addr, m.val() as u32);
}

/// Whether the packet fits the uplink and its route's MTU; bigger ones
/// take the kernel's path, which answers "fragmentation needed" (or
/// fragments) as a router does.
#[inline(always)]
fn fits_mtu(cfg: &NatConfig, f: &Flow) -> bool {
    let mut mtu = cfg.mtu;
    if cfg.flags & NAT_F_ROUTE_MTU != 0
        && let Some(m) = NAT_MTU.get(Key::new(32, f.daddr))
    {
        mtu = mtu.min(*m);
    }
    mtu == 0 || f.tot_len as u32 <= mtu
}

/// Route the flow: whether its next hop's MAC is still unresolved (else
/// it is in `hop`); `Err` when it does not leave through the uplink (or
/// needs fragmenting): the kernel's.
#[inline(always)]
fn next_hop(pkt: &impl Pkt, cfg: &NatConfig, f: &Flow, hop: *mut Hop) -> Result<bool, Out> {
    let r = route(pkt.as_ptr(), cfg, f, hop);
    let via_uplink = r.val() as u32 == cfg.nat_ifindex;
    match r.tag() as u32 {
        BPF_FIB_LKUP_RET_SUCCESS if via_uplink => Ok(false),
        BPF_FIB_LKUP_RET_NO_NEIGH if via_uplink => Ok(true),
        _ => {
            count(|s| s.slow_path += 1);
            Err(Out::NotNat)
        }
    }
}

/// No free port: the kernel's path. One line at the 1st, 2nd, 4th, 8th...
/// failure on this CPU: visible in `umlbr log`, without flooding the log
/// ring. (Called from here, not from mapping_new, to keep the call chain's
/// stack within 512 bytes.)
#[inline(always)]
fn no_port(cfg: &NatConfig, f: &Flow) {
    count(|s| s.slow_path += 1);
    if let Some(st) = stats()
        && st.alloc_fail != 0
        && st.alloc_fail & (st.alloc_fail - 1) == 0
    {
        log_no_port(cfg, f, st.alloc_fail);
    }
}

/// Rewrite the packet as the mapping's: source address and port with
/// their checksums, the TTL, and the next hop's MACs when known. Each
/// write re-derives its pointer: TC's checksum helpers move the packet.
#[inline(always)]
fn rewrite(pkt: &impl Pkt, cfg: &NatConfig, g: &Outgoing, m: &Mapped, hop: *const Hop) -> bool {
    let f = &g.flow;
    let Some(ttl_word) = pkt.rd::<u16>(IP_OFF + IP_TTL) else {
        return false;
    };
    let csum_off = L4_OFF + l4_check(f.proto);
    set_ip_addr(pkt, IP_OFF + IP_SADDR, f.saddr, cfg.nat_addr);
    if f.proto != IPPROTO_ICMP {
        pkt.csum(csum_off, Sum::of(f.proto, true), f.saddr, cfg.nat_addr, 4);
    }
    set_port(pkt, g.port_off, csum_off, f.proto, f.sport, m.port);
    dec_ttl(pkt, ttl_word);
    if !m.neigh {
        // SAFETY: written by mapping_find (MAP_FOUND_HOP) or route.
        pkt.wr::<Hop>(0, unsafe { *hop });
    }
    true
}

/// Route lookup for a guest flow entering the host through the bridge's
/// interface: the lookup's result as the tag (u16::MAX on a helper error)
/// and the output ifindex; `macs` gets dst and src MACs.
#[inline(never)]
fn route(ctx: *mut c_void, cfg: &NatConfig, f: &Flow, macs: *mut Hop) -> Packed {
    let mut fib = MaybeUninit::<bpf_fib_lookup>::uninit();
    let p = fib.as_mut_ptr();
    // SAFETY: `p` is our own stack slot: zeroed word by word, then the
    // fields that are not zero set; the helper gets it whole.
    let ret = unsafe {
        zero_words(p);
        (*p).family = AF_INET;
        (*p).l4_protocol = f.proto;
        (*p).sport = if f.proto == IPPROTO_ICMP { 0 } else { f.sport };
        (*p).dport = f.dport;
        (*p).__bindgen_anon_1.tot_len = f.tot_len;
        (*p).ifindex = cfg.host_ifindex;
        (*p).__bindgen_anon_3.ipv6_src[0] = f.saddr;
        (*p).__bindgen_anon_4.ipv6_dst[0] = f.daddr;
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
