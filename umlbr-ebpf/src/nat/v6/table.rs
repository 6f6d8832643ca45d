//! IPv6 mappings: NAT6_OUT by the guest's end, NAT6_IN by the outside one
//! (the uplink's IPv6 address, which `Nat6Config` holds: NatOut's `addr`
//! is unused here). Found, refreshed and made as IPv4's
//! ([`crate::nat::table`], whose timeouts, TCP tracking and port probes
//! these call), charged to the same per-port quota.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::{bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
};
use umlbr_common::{
    NAT_HOP_NS, NAT_T_SEQ, NAT_TRIES, Nat6Config, Nat6In, Nat6Key, NatConfig, NatIn,
};

use super::{A6, IPPROTO_ICMPV6, NAT6_IN, NAT6_OUT, count6, scratch};
use crate::{
    hdr::{IPPROTO_TCP, TCP_ACK, TCP_SYN},
    mem::{Hop, copy_hop, zero_words},
    nat::{
        NAT_SCRATCH, Packed, count,
        quota::{charge, credit},
        table::{
            E2BIG, MAP_FOREIGN, MAP_FOUND, MAP_FOUND_HOP, MAP_FULL, MAP_NONE, MAP_QUOTA,
            MAP_REFUSED, live, min_timeout_ns, mix, probe, tcp_state_out, touch, track_seen,
        },
    },
};

/// A guest's IPv6 flow looking for its mapping (`crate::nat::table::Flow`
/// with 16-byte addresses).
#[repr(C)]
pub struct Flow6 {
    pub proto: u8,
    pub tcp_flags: u8,
    pub sport: u16,
    pub dport: u16,
    /// The whole packet's length (header and payload, host order), for
    /// the MTU.
    pub tot_len: u16,
    pub saddr: A6,
    pub daddr: A6,
    pub mac: [u8; 6],
    /// TCP (host byte order): window, next sequence number, ACK.
    pub win: u16,
    pub seq_next: u32,
    pub ack: u32,
}

/// The flow's outbound key, built in the scratch's `okey`.
#[inline(always)]
fn out_key(f: &Flow6) -> Option<&'static Nat6Key> {
    let p = scratch()?;
    // SAFETY: this CPU's scratch; `okey` is no part of the flow `f` may
    // point into.
    unsafe {
        let k = core::ptr::addr_of_mut!((*p).okey);
        k.write(Nat6Key::new(f.proto, f.saddr, f.sport, f.daddr, f.dport));
        Some(&*k)
    }
}

/// The flow's inbound key for outside port `port`, in the scratch's
/// `ikey`.
#[inline(always)]
fn in_key(c6: &Nat6Config, f: &Flow6, port: u16) -> Option<&'static Nat6Key> {
    let p = scratch()?;
    // SAFETY: as `out_key`.
    unsafe {
        let k = core::ptr::addr_of_mut!((*p).ikey);
        k.write(Nat6Key::new(f.proto, c6.addr, port, f.daddr, f.dport));
        Some(&*k)
    }
}

#[inline(always)]
fn flow_state(f: &Flow6) -> u16 {
    if f.proto == IPPROTO_TCP {
        tcp_state_out(f.tcp_flags)
    } else {
        0
    }
}

/// The flow's live mapping, refreshed: as `table::mapping_find`.
#[inline(never)]
pub fn find(cfg: &NatConfig, f: &Flow6, now: u64, macs: *mut Hop, ingress: u32) -> Packed {
    let Some(c6) = super::config6() else {
        return Packed::pack(MAP_NONE, 0);
    };
    let Some(okey) = out_key(f) else {
        return Packed::pack(MAP_NONE, 0);
    };
    let Some(op) = NAT6_OUT.get_ptr_mut(okey) else {
        return Packed::pack(MAP_NONE, 0);
    };
    // SAFETY: pointer into the map value; the fields are read once each.
    let (port, hop_ns, owner) = unsafe { ((*op).port, (*op).hop_ns, (*op).owner) };
    let foreign = owner != ingress;
    if !foreign && f.proto == IPPROTO_TCP {
        // SAFETY: pointer into the map value.
        track_seen(unsafe { &mut *op }, f.tcp_flags, f.seq_next, f.ack, f.win);
    }
    let state = flow_state(f);
    let hop_fresh = hop_ns != 0 && now.wrapping_sub(hop_ns) <= NAT_HOP_NS;
    if !foreign && hop_fresh && state == 0 && min_timeout_ns(cfg, f.proto) > 4 * NAT_HOP_NS {
        // SAFETY: the caller's Hop; `hop` is word aligned in the value.
        unsafe { copy_hop(macs, (*op).hop.as_ptr().cast()) };
        return Packed::pack(MAP_FOUND_HOP, port as u64);
    }
    let Some(ikey) = in_key(c6, f, port) else {
        return Packed::pack(MAP_NONE, 0);
    };
    if let Some(i) = NAT6_IN.get_ptr_mut(ikey) {
        // SAFETY: pointer into the map value.
        let i = unsafe { &mut *i };
        let ours = i.addr == f.saddr && i.st.port == f.sport;
        if ours && live(cfg, f.proto, &i.st, now) {
            if foreign {
                return Packed::pack(MAP_FOREIGN, 0);
            }
            touch(&mut i.st, now, state);
            if hop_fresh {
                // SAFETY: as above.
                unsafe { copy_hop(macs, (*op).hop.as_ptr().cast()) };
                return Packed::pack(MAP_FOUND_HOP, port as u64);
            }
            return Packed::pack(MAP_FOUND, port as u64);
        }
        if ours {
            let _ = NAT6_IN.remove(ikey);
        }
    }
    if NAT6_OUT.remove(okey).is_ok() {
        credit(owner);
    }
    count(|s| s.expired += 1);
    Packed::pack(MAP_NONE, 0)
}

/// Cache a route lookup's next hop in the flow's mapping.
#[inline(never)]
pub fn store_hop(f: &Flow6, macs: *const Hop, now: u64) {
    if let Some(k) = out_key(f)
        && let Some(o) = NAT6_OUT.get_ptr_mut(k)
    {
        // SAFETY: as `table::store_hop`.
        unsafe {
            let o = &mut *o;
            copy_hop(o.hop.as_mut_ptr().cast(), macs);
            o.hop_ns = now;
        }
    }
}

/// Whether a host socket would take a reply from the flow's remote end to
/// `laddr:lport`: such a port is not ours to hand out.
#[inline(never)]
fn host_socket(ctx: *mut c_void, f: &Flow6, laddr: &A6, lport: u16) -> bool {
    if f.proto == IPPROTO_ICMPV6 {
        return false;
    }
    let mut t = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv6: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                saddr: f.daddr,
                daddr: *laddr,
                sport: f.dport,
                dport: lport,
            },
        },
    };
    let size = 36u32;
    // SAFETY: valid ctx and tuple; the socket is released at once.
    unsafe {
        let sk = if f.proto == IPPROTO_TCP {
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

/// A new mapping for a flow that has none: as `table::mapping_new`
/// (MAP_FOUND with the port, MAP_NONE, MAP_REFUSED, MAP_QUOTA, MAP_FULL).
#[inline(never)]
pub fn new(ctx: *mut c_void, cfg: &NatConfig, f: &Flow6, hop: *const Hop, ingress: u32) -> Packed {
    let Some(c6) = super::config6() else {
        return Packed::pack(MAP_REFUSED, 0);
    };
    // A TCP flow gets a mapping only from its first SYN (as IPv4).
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
    let h = mix(f.saddr[2]
        ^ f.saddr[3]
        ^ f.daddr[2].rotate_left(7)
        ^ f.daddr[3].rotate_left(13)
        ^ ((f.sport as u32) << 16 | f.dport as u32));
    let mut i = 0u32;
    let mut claimed = None;
    let mut full = false;
    while i < NAT_TRIES {
        let cand = probe(cfg, h, i, range);
        i += 1;
        if host_socket(ctx, f, &c6.addr, cand) {
            continue;
        }
        let r = insert_in(c6, f, cand);
        if r == E2BIG {
            full = true;
            break;
        }
        if r == 0 || port_free(cfg, c6, f, cand) && insert_in(c6, f, cand) == 0 {
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
    if !insert_out(c6, f, cand, hop, ingress) {
        credit(ingress);
        count(|s| s.alloc_fail += 1);
        return Packed::pack(MAP_NONE, 0);
    }
    count6(|s| s.allocs += 1);
    count(|s| s.allocs += 1);
    Packed::pack(MAP_FOUND, cand as u64)
}

/// Whether outside port `cand` is free of live mappings for the flow's
/// remote end; an expired mapping on it is retired.
#[inline(never)]
fn port_free(cfg: &NatConfig, c6: &Nat6Config, f: &Flow6, cand: u16) -> bool {
    let now = crate::fdb::now();
    let Some(ikey) = in_key(c6, f, cand) else {
        return false;
    };
    let Some(e) = NAT6_IN.get_ptr(ikey) else {
        return true;
    };
    // SAFETY: pointer into the map value, read in place.
    let e = unsafe { &*e };
    if live(cfg, f.proto, &e.st, now) {
        return false;
    }
    // The stale mapping's outbound key, in the scratch's `okey` (the flow
    // has no outbound entry yet).
    if let Some(p) = scratch() {
        // SAFETY: as `out_key`.
        let k = unsafe {
            let k = core::ptr::addr_of_mut!((*p).okey);
            k.write(Nat6Key::new(f.proto, e.addr, e.st.port, f.daddr, f.dport));
            &*k
        };
        retire(k, cand);
    }
    let _ = NAT6_IN.remove(ikey);
    count(|s| s.expired += 1);
    true
}

/// Remove the outbound entry `okey` if it is still the one of outside
/// port `port` (and give its quota back).
#[inline(always)]
pub fn retire(okey: &Nat6Key, port: u16) {
    let Some(o) = NAT6_OUT.get_ptr(okey) else {
        return;
    };
    // SAFETY: pointer into the map value.
    let (p, owner) = unsafe { ((*o).port, (*o).owner) };
    if p == port && NAT6_OUT.remove(okey).is_ok() {
        credit(owner);
    }
}

/// Claim outside port `cand` with the flow's inbound entry: 0, or the
/// error (-EEXIST: taken; E2BIG: the table is full).
#[inline(never)]
fn insert_in(c6: &Nat6Config, f: &Flow6, cand: u16) -> i64 {
    let now = crate::fdb::now();
    let fresh = Nat6In {
        addr: f.saddr,
        st: NatIn {
            addr: 0,
            port: f.sport,
            state: flow_state(f),
            mac: f.mac,
            _pad: [0; 2],
            last_seen_ns: now,
            created_ns: now,
        },
    };
    let Some(k) = in_key(c6, f, cand) else {
        return E2BIG;
    };
    match NAT6_IN.insert(k, &fresh, 1) {
        Ok(()) => 0,
        Err(e) => e as i64,
    }
}

/// The flow's outbound entry for outside port `cand`; on failure the
/// inbound entry is taken back.
#[inline(never)]
fn insert_out(c6: &Nat6Config, f: &Flow6, cand: u16, hop: *const Hop, owner: u32) -> bool {
    let now = crate::fdb::now();
    let (Some(p), Some(okey)) = (NAT_SCRATCH.get_ptr_mut(0), out_key(f)) else {
        if let Some(k) = in_key(c6, f, cand) {
            let _ = NAT6_IN.remove(k);
        }
        return false;
    };
    // SAFETY: this CPU's slot, as in `table::insert_out`.
    let o = unsafe {
        zero_words(p);
        (*p).port = cand;
        (*p).owner = owner;
        if f.proto == IPPROTO_TCP {
            (*p).seq_next = f.seq_next;
            (*p).track = NAT_T_SEQ;
        }
        if !hop.is_null() {
            copy_hop((*p).hop.as_mut_ptr().cast(), hop);
            (*p).hop_ns = now;
        }
        &*p
    };
    if NAT6_OUT.insert(okey, o, 0).is_ok() {
        return true;
    }
    if let Some(k) = in_key(c6, f, cand) {
        let _ = NAT6_IN.remove(k);
    }
    false
}

/// The sweep's context (as `quota::sweep`'s).
#[repr(C)]
struct Sweep {
    now: u64,
}

/// Remove the expired IPv6 mappings, giving their quota back: part of
/// `quota::sweep`.
#[inline(never)]
pub fn sweep(now: u64) {
    let mut ctx = Sweep { now };
    // SAFETY: the map and a callback of the helper's signature.
    unsafe {
        aya_ebpf::helpers::bpf_for_each_map_elem(
            &NAT6_IN as *const _ as *mut c_void,
            sweep_one as *mut c_void,
            &mut ctx as *mut Sweep as *mut c_void,
            0,
        );
    }
}

extern "C" fn sweep_one(
    map: *mut c_void,
    key: *const Nat6Key,
    e: *const Nat6In,
    ctx: *const Sweep,
) -> i64 {
    let Some(cfg) = crate::nat::config() else {
        return 1;
    };
    // SAFETY: the helper's key, value and our context, read in place.
    let (k, e, now) = unsafe { (&*key, &*e, (*ctx).now) };
    if live(cfg, k.proto, &e.st, now) {
        return 0;
    }
    let okey = Nat6Key::new(k.proto, e.addr, e.st.port, k.remote_addr, k.remote_port);
    retire(&okey, k.local_port);
    // SAFETY: deleting the element the helper gave us.
    if unsafe { aya_ebpf::helpers::bpf_map_delete_elem(map, key as *const c_void) } == 0 {
        count(|s| s.expired += 1);
    }
    0
}
