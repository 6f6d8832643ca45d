//! The NAT table: finding, refreshing and creating mappings. Each new
//! mapping has one entry per direction (NAT_OUT by the guest's end,
//! NAT_IN by the outside one).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    },
    helpers::{bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
};
use umlbr_common::{
    EV_NAT_EXPIRED, NAT_HOP_NS, NAT_S_FIN_IN, NAT_S_FIN_OUT, NAT_S_REPLIED, NAT_S_RST,
    NAT_S_SYN_OUT, NAT_T_ACK, NAT_T_SEQ, NAT_TRIES, NAT_WSCALE_MAX, NatConfig, NatIn, NatKey,
    NatOut, nat_tcp_closed,
};

use super::{
    NAT_IN, NAT_OUT, NAT_SCRATCH, Packed, count,
    quota::{charge, credit, retire_out},
};
use crate::{
    hdr::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    mem::{Hop, copy_hop, zero_words},
};

#[inline(always)]
pub fn tcp_state_out(flags: u8) -> u16 {
    let mut s = 0;
    if flags & TCP_SYN != 0 {
        s |= NAT_S_SYN_OUT;
    }
    if flags & TCP_FIN != 0 {
        s |= NAT_S_FIN_OUT;
    }
    if flags & TCP_RST != 0 {
        s |= NAT_S_RST;
    }
    s
}

#[inline(always)]
pub fn tcp_state_in(flags: u8) -> u16 {
    let mut s = NAT_S_REPLIED;
    if flags & TCP_FIN != 0 {
        s |= NAT_S_FIN_IN;
    }
    if flags & TCP_RST != 0 {
        s |= NAT_S_RST;
    }
    s
}

/// The shortest time a mapping of `proto` may stay idle, whatever its state.
#[inline(always)]
pub fn min_timeout_ns(cfg: &NatConfig, proto: u8) -> u64 {
    match proto {
        IPPROTO_TCP => cfg
            .tcp_closing_ns
            .min(cfg.tcp_transitory_ns)
            .min(cfg.tcp_established_ns),
        IPPROTO_UDP => cfg.udp_ns.min(cfg.udp_stream_ns),
        _ => cfg.icmp_ns,
    }
}

#[inline(always)]
pub fn live(cfg: &NatConfig, proto: u8, e: &NatIn, now: u64) -> bool {
    now.wrapping_sub(e.last_seen_ns) <= cfg.timeout_ns(proto, e.state)
}

/// Refresh a mapping: state bits at once, the time at most once a second
/// per flow (a busy flow should not dirty the entry on every packet).
#[inline(always)]
pub fn touch(e: &mut NatIn, now: u64, state: u16) {
    if state & NAT_S_SYN_OUT != 0 && nat_tcp_closed(e.state) {
        // A new SYN on a reset or closed mapping starts it afresh.
        e.state = NAT_S_SYN_OUT;
        e.last_seen_ns = now;
        return;
    }
    if e.state | state != e.state {
        e.state |= state;
    }
    if now.wrapping_sub(e.last_seen_ns) > 1_000_000_000 {
        e.last_seen_ns = now;
    }
}

/// Whether a host socket would take a reply from the flow's remote end to
/// `laddr:lport`: such a port is not ours to hand out. (A BPF function of
/// its own: its 36-byte tuple in mapping_new's frame left the call chain
/// no room under the 512-byte stack for the quota and sweep.)
#[inline(never)]
fn host_socket(ctx: *mut c_void, f: &Flow, laddr: u32, lport: u16) -> bool {
    let (proto, raddr, rport) = (f.proto, f.daddr, f.dport);
    if proto == IPPROTO_ICMP {
        return false;
    }
    let mut t = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: raddr,
                daddr: laddr,
                sport: rport,
                dport: lport,
            },
        },
    };
    let size = 12u32;
    // SAFETY: valid ctx and tuple; the socket is released at once.
    unsafe {
        let sk = if proto == IPPROTO_TCP {
            bpf_sk_lookup_tcp(ctx, &mut t, size, u64::MAX, 0)
        } else {
            bpf_sk_lookup_udp(ctx, &mut t, size, u64::MAX, 0)
        };
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk as *mut c_void);
    }
    true
}

/// A guest flow looking for its mapping.
#[repr(C)]
pub struct Flow {
    pub proto: u8,
    pub tcp_flags: u8,
    pub sport: u16,
    pub dport: u16,
    /// IPv4 total length (host order), for the route's MTU check.
    pub tot_len: u16,
    pub saddr: u32,
    pub daddr: u32,
    pub mac: [u8; 6],
    /// TCP (host byte order): the window field, the next sequence number
    /// after this segment, the acknowledgment.
    pub win: u16,
    pub seq_next: u32,
    pub ack: u32,
}

/// `mapping_find` and `mapping_new` results: [`Packed`] tags, with the
/// outside port (network byte order) as the value. No live mapping
/// (find), or no free port (new):
pub const MAP_NONE: u16 = 0;
pub const MAP_FOUND: u16 = 1;
/// Found, and its cached next hop is fresh (written to the caller's Hop).
pub const MAP_FOUND_HOP: u16 = 2;
/// `mapping_new`: the flow is not to be mapped (the kernel's path).
pub const MAP_REFUSED: u16 = 3;
/// `mapping_find`: the flow's live mapping belongs to another port.
pub const MAP_FOREIGN: u16 = 4;
/// `mapping_new`: the port's guests hold their quota of mappings.
pub const MAP_QUOTA: u16 = 5;
/// `mapping_new`: the table is full (nothing counted yet).
pub const MAP_FULL: u16 = 6;

/// The key of the flow's mapping whose own end is `local_addr:local_port`:
/// the guest's in NAT_OUT, the outside one in NAT_IN.
#[inline(always)]
fn key(f: &Flow, local_addr: u32, local_port: u16) -> NatKey {
    NatKey::new(f.proto, local_addr, local_port, f.daddr, f.dport)
}

#[inline(always)]
fn out_key(f: &Flow) -> NatKey {
    key(f, f.saddr, f.sport)
}

#[inline(always)]
fn in_key(cfg: &NatConfig, f: &Flow, port: u16) -> NatKey {
    key(f, cfg.nat_addr, port)
}

#[inline(always)]
fn flow_state(f: &Flow) -> u16 {
    if f.proto == IPPROTO_TCP {
        tcp_state_out(f.tcp_flags)
    } else {
        0
    }
}

/// The flow's live mapping, refreshed: MAP_FOUND, or MAP_FOUND_HOP with
/// the next hop in `macs` if the cached one is fresh; MAP_NONE if the flow
/// has no live mapping (an expired one is removed).
#[inline(never)]
pub fn mapping_find(cfg: &NatConfig, f: &Flow, now: u64, macs: *mut Hop, ingress: u32) -> Packed {
    let okey = out_key(f);
    let Some(op) = NAT_OUT.get_ptr_mut(okey) else {
        return Packed::pack(MAP_NONE, 0);
    };
    // SAFETY: pointer into the map value; the fields are read once each.
    let (port, hop_ns, addr, owner) =
        unsafe { ((*op).port, (*op).hop_ns, (*op).addr, (*op).owner) };
    // Another port's guest sending with this one's address and ports: it
    // must neither use the mapping nor change it (once the mapping is no
    // longer live, it is retired below like any expired one).
    let foreign = owner != ingress;
    if !foreign && f.proto == IPPROTO_TCP {
        // SAFETY: pointer into the map value.
        track(unsafe { &mut *op }, f);
    }
    let state = flow_state(f);
    let hop_fresh = hop_ns != 0 && now.wrapping_sub(hop_ns) <= NAT_HOP_NS;
    // A fresh hop means that this check ran in full (inbound entry found
    // live, and refreshed) under NAT_HOP_NS ago, so the mapping's time
    // lags by at most twice that: skip the inbound lookup when no timeout
    // is near that short and the packet changes no state. (Replies
    // refresh it on their own.)
    if !foreign && hop_fresh && state == 0 && min_timeout_ns(cfg, f.proto) > 4 * NAT_HOP_NS {
        // SAFETY: the caller's Hop; `hop` is word aligned in the value.
        unsafe { copy_hop(macs, (*op).hop.as_ptr().cast()) };
        return Packed::pack(MAP_FOUND_HOP, port as u64);
    }
    let ikey = key(f, addr, port);
    if let Some(i) = NAT_IN.get_ptr_mut(ikey) {
        // SAFETY: pointer into the map value.
        let i = unsafe { &mut *i };
        if i.addr == f.saddr && i.port == f.sport && live(cfg, f.proto, i, now) {
            if foreign {
                return Packed::pack(MAP_FOREIGN, 0);
            }
            touch(i, now, state);
            if hop_fresh {
                // SAFETY: as above.
                unsafe { copy_hop(macs, (*op).hop.as_ptr().cast()) };
                return Packed::pack(MAP_FOUND_HOP, port as u64);
            }
            return Packed::pack(MAP_FOUND, port as u64);
        }
        if i.addr == f.saddr && i.port == f.sport {
            let _ = NAT_IN.remove(ikey);
        }
    }
    // Only the CPU whose removal succeeds gives the mapping back.
    if NAT_OUT.remove(okey).is_ok() {
        credit(owner);
        crate::events::nat(EV_NAT_EXPIRED, owner, f, addr, port as u32);
    }
    count(|s| s.expired += 1);
    Packed::pack(MAP_NONE, 0)
}

/// Keep what an RST or FIN from the LAN is judged by: the guest's next
/// sequence number until it acknowledges something (only `in_window`'s
/// SYN-SENT rule reads it), then its acknowledgment and window. Fields are
/// written only when they change, so a flow's packets dirty the entry only
/// when the guest acknowledges new data. A SYN (a new connection on the
/// mapping) forgets the old ACK.
#[inline(always)]
fn track(o: &mut NatOut, f: &Flow) {
    track_seen(o, f.tcp_flags, f.seq_next, f.ack, f.win)
}

/// `track` for a segment's flags, next sequence number, acknowledgment
/// and window (host byte order), whichever family it came in.
#[inline(always)]
pub fn track_seen(o: &mut NatOut, flags: u8, seq_next: u32, ack: u32, win: u16) {
    if (o.track & NAT_T_ACK == 0 || flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
        && o.seq_next != seq_next
    {
        o.seq_next = seq_next;
    }
    let mut t = NAT_T_SEQ;
    if flags & TCP_ACK != 0 {
        t |= NAT_T_ACK;
        if o.ack != ack {
            o.ack = ack;
        }
        if o.win != win {
            o.win = win;
        }
    } else if flags & TCP_SYN != 0 {
        o.track = NAT_T_SEQ;
    }
    if o.track | t != o.track {
        o.track |= t;
    }
}

/// Whether an RST or FIN from the LAN (`seq`, `ack` and `flags` as in the
/// segment, host byte order) may change the state of the TCP mapping whose
/// outbound key is `okey`: its sequence number lies in the guest's receive
/// window, from the guest's last acknowledgment for its window field
/// shifted by the largest scale (RFC 793's acceptability test, RFC 5961's
/// in spirit; the guest's own TCP makes the finer check). Before the guest
/// acknowledged anything, only an RST acknowledging its SYN counts (RFC 793
/// SYN-SENT). Without the outbound entry nothing can be judged: no.
#[inline(never)]
pub fn in_window(okey: &NatKey, seq: u32, ack: u32, flags: u8) -> bool {
    let Some(o) = NAT_OUT.get_ptr(*okey) else {
        return false;
    };
    // SAFETY: pointer into the map value, read in place.
    window_ok(unsafe { &*o }, seq, ack, flags)
}

/// `in_window`'s test on the mapping's outbound entry `o`.
#[inline(always)]
pub fn window_ok(o: &NatOut, seq: u32, ack: u32, flags: u8) -> bool {
    if o.track & NAT_T_ACK != 0 {
        let wnd = (o.win as u32 + 1) << NAT_WSCALE_MAX;
        return seq.wrapping_sub(o.ack) < wnd;
    }
    o.track & NAT_T_SEQ != 0
        && flags & (TCP_RST | TCP_ACK) == TCP_RST | TCP_ACK
        && ack == o.seq_next
}

/// Cache a route lookup's next hop in the flow's mapping.
#[inline(never)]
pub fn store_hop(f: &Flow, macs: *const Hop, now: u64) {
    if let Some(o) = NAT_OUT.get_ptr_mut(out_key(f)) {
        // SAFETY: pointer into the map value; a racing CPU stores the same.
        // `hop` sits at offset 8 of a map value, so it is word aligned;
        // `macs` is the caller's written Hop.
        unsafe {
            let o = &mut *o;
            copy_hop(o.hop.as_mut_ptr().cast(), macs);
            o.hop_ns = now;
        }
    }
}

/// A new mapping for a flow that has none: MAP_FOUND with its outside
/// port, MAP_NONE if no port is free, MAP_REFUSED if the flow must not
/// get one; MAP_QUOTA if its port's guests hold their quota, MAP_FULL if
/// the table is (the caller may sweep and try again). The mapping is
/// charged to `ingress` (the port it came from) before a port is looked
/// for, and given back if none is found.
#[inline(never)]
pub fn mapping_new(
    ctx: *mut c_void,
    cfg: &NatConfig,
    f: &Flow,
    hop: *const Hop,
    ingress: u32,
) -> Packed {
    // (The time is read here, not passed: the port of `ingress` took its
    // argument slot.)
    let now = crate::fdb::now();
    // A TCP flow gets a mapping only from its first SYN: a flow that began
    // on the kernel's path (before the masquerade was attached, or while
    // the port range was full) stays there instead of changing its source
    // port mid-stream.
    if f.proto == IPPROTO_TCP && f.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return Packed::pack(MAP_REFUSED, 0);
    }
    let range = (cfg.port_hi as u32).wrapping_sub(cfg.port_lo as u32) + 1;
    if cfg.port_hi < cfg.port_lo || range == 0 {
        count(|s| s.alloc_fail += 1);
        return Packed::pack(MAP_NONE, 0);
    }
    if !charge(ingress, cfg.max_per_guest) {
        return Packed::pack(MAP_QUOTA, 0);
    }
    let h = mix(f.saddr ^ f.daddr.rotate_left(7) ^ ((f.sport as u32) << 16 | f.dport as u32));
    let mut i = 0u32;
    let mut claimed = None;
    let mut full = false;
    while i < NAT_TRIES {
        let cand = probe(cfg, h, i, range);
        i += 1;
        if host_socket(ctx, f, cfg.nat_addr, cand) {
            continue;
        }
        // Claim first, look second: a free port (the usual case) costs
        // one walk of its bucket instead of a lookup and then an insert.
        let r = insert_in(cfg, f, cand, now);
        if r == E2BIG {
            full = true;
            break;
        }
        if r == 0 || port_free(cfg, f, cand, now) && insert_in(cfg, f, cand, now) == 0 {
            claimed = Some(cand);
            break;
        }
    }
    if full {
        credit(ingress);
        return Packed::pack(MAP_FULL, 0);
    }
    let Some(cand) = claimed else {
        credit(ingress);
        count(|s| s.alloc_fail += 1);
        return Packed::pack(MAP_NONE, 0);
    };
    if !insert_out(cfg, f, cand, hop, ingress) {
        credit(ingress);
        count(|s| s.alloc_fail += 1);
        return Packed::pack(MAP_NONE, 0);
    }
    count(|s| s.allocs += 1);
    Packed::pack(MAP_FOUND, cand as u64)
}

/// A flow's hash, from the bits of its addresses and ports.
#[inline(always)]
pub fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h
}

/// Probe `i` of a flow hashed `h`: an outside port (network byte order)
/// in the range of `range` ports. A fresh hash of (flow, i), so no range
/// size makes the probes repeat a few ports.
#[inline(always)]
pub fn probe(cfg: &NatConfig, h: u32, i: u32, range: u32) -> u16 {
    let mut p = h ^ i.wrapping_mul(0x9e37_79b9);
    p ^= p >> 16;
    p = p.wrapping_mul(0x85eb_ca6b);
    p ^= p >> 13;
    ((cfg.port_lo as u32 + p % range) as u16).to_be()
}

/// Whether outside port `cand` (network byte order) is free of live
/// mappings for the flow's remote end; an expired mapping on it is
/// retired.
// mapping_new's steps are BPF functions of their own: inlined into its
// loop, their spills took the call chain past the 512-byte stack limit.
#[inline(never)]
fn port_free(cfg: &NatConfig, f: &Flow, cand: u16, now: u64) -> bool {
    let ikey = in_key(cfg, f, cand);
    let Some(e) = NAT_IN.get_ptr(ikey) else {
        return true;
    };
    // SAFETY: pointer into the map value, read in place.
    let e = unsafe { &*e };
    if live(cfg, f.proto, e, now) {
        return false;
    }
    let stale = key(f, e.addr, e.port);
    // No event here (`umlbr monitor` misses this expiry): port_free ends
    // the deepest call chain, at the 512-byte stack on kernels that round
    // frames to 32 bytes, and an emitter's frame does not fit under it.
    retire_out(&stale, &ikey);
    let _ = NAT_IN.remove(ikey);
    count(|s| s.expired += 1);
    true
}

/// The kernel's -E2BIG: a hash map is full.
pub const E2BIG: i64 = -7;

/// Claim outside port `cand` with the flow's inbound entry: 0, or the
/// error (-EEXIST: taken, by a racing CPU or a mapping found by
/// `port_free`; E2BIG: the table is full).
#[inline(never)]
fn insert_in(cfg: &NatConfig, f: &Flow, cand: u16, now: u64) -> i64 {
    let fresh = NatIn {
        addr: f.saddr,
        port: f.sport,
        state: flow_state(f),
        mac: f.mac,
        _pad: [0; 2],
        last_seen_ns: now,
        created_ns: now,
    };
    match NAT_IN.insert(in_key(cfg, f, cand), fresh, 1) {
        Ok(()) => 0,
        Err(e) => e as i64,
    }
}

/// The flow's outbound entry for outside port `cand`; on failure the
/// inbound entry is taken back.
#[inline(never)]
fn insert_out(cfg: &NatConfig, f: &Flow, cand: u16, hop: *const Hop, owner: u32) -> bool {
    let now = crate::fdb::now();
    // Built in this CPU's scratch slot, not on the stack: 48 bytes there
    // took the call chain past the 512-byte limit.
    let Some(p) = NAT_SCRATCH.get_ptr_mut(0) else {
        let _ = NAT_IN.remove(in_key(cfg, f, cand));
        return false;
    };
    // SAFETY: this CPU's slot, written and inserted before anything else
    // runs here. Zeroed by words: a `hop: [0; 12]` initialiser is a memset
    // call on every new flow. (Passed by reference: a copy of it by value
    // brings the memset back.)
    let o = unsafe {
        zero_words(p);
        (*p).addr = cfg.nat_addr;
        (*p).port = cand;
        (*p).owner = owner;
        if f.proto == IPPROTO_TCP {
            // Mapped from a SYN: its sequence number, no ACK yet.
            (*p).seq_next = f.seq_next;
            (*p).track = NAT_T_SEQ;
        }
        if !hop.is_null() {
            copy_hop((*p).hop.as_mut_ptr().cast(), hop);
            (*p).hop_ns = now;
        }
        &*p
    };
    if NAT_OUT.insert(out_key(f), o, 0).is_ok() {
        return true;
    }
    let _ = NAT_IN.remove(in_key(cfg, f, cand));
    false
}

#[inline(never)]
pub fn log_no_port(cfg: &NatConfig, f: &Flow, failures: u64) {
    aya_log_ebpf::warn!(
        &(),
        "NAT port range {}-{} exhausted: no port for proto {} {:i}:{} -> {:i}:{} ({} failures on this CPU so far)",
        cfg.port_lo,
        cfg.port_hi,
        f.proto,
        u32::from_be(f.saddr),
        u16::from_be(f.sport),
        u32::from_be(f.daddr),
        u16::from_be(f.dport),
        failures
    );
}
