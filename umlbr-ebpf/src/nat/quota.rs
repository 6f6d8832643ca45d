//! Each port's share of the NAT table. The NAT maps are plain hashes: a
//! mapping is never evicted to make room for another, so a guest opening
//! flows as fast as it can cannot push the other guests' flows out, as it
//! could out of an LRU map. Instead each port's guests may hold at most
//! `NatConfig.max_per_guest` live mappings: charged when one is made,
//! credited when its outbound entry is removed. Expired mappings are
//! removed when their keys are next used, or by a sweep of the table that
//! a guest at its quota, or a full table, may start once in
//! NAT_SWEEP_INTERVAL_NS (5 s).
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::helpers::{bpf_for_each_map_elem, bpf_map_delete_elem};
use umlbr_common::{NAT_SWEEP_INTERVAL_NS, NatIn, NatKey, NatQuota};

use super::{NAT_IN, NAT_OUT, NAT_QUOTA, config, count, table::live};

/// The port's quota entry, made on its first mapping.
#[inline(always)]
fn entry(port: u32) -> Option<&'static mut NatQuota> {
    if let Some(q) = NAT_QUOTA.get_ptr_mut(port) {
        // SAFETY: pointer into a map value that lives as long as the map.
        return Some(unsafe { &mut *q });
    }
    // BPF_NOEXIST: a racing CPU may have made it; either is right.
    let _ = NAT_QUOTA.insert(port, NatQuota::default(), 1);
    // SAFETY: as above.
    NAT_QUOTA.get_ptr_mut(port).map(|q| unsafe { &mut *q })
}

/// Take one mapping of `port`'s quota of `max` (0: no limit); false at
/// the quota (the caller may sweep and try again). A port whose entry
/// cannot be made (the map full of ports) is not limited, as a port
/// without a learning budget is not: the map has room for every port a
/// bridge can have, and `detach` removes a port's entry.
#[inline(never)]
pub fn charge(port: u32, max: u32) -> bool {
    let Some(q) = entry(port) else {
        return true;
    };
    if max != 0 && q.count >= max {
        return false;
    }
    // Checked, then added: CPUs racing here can overshoot the quota by at
    // most one mapping each.
    atomic_add(&mut q.count, 1);
    true
}

/// Give back one mapping of `port`'s quota. (A function of its own: its
/// key's stack slot inlined into mapping_new took the call chain past the
/// 512-byte stack.)
#[inline(never)]
pub fn credit(port: u32) {
    credit_inline(port)
}

/// `credit` in the caller's frame: for `retire_out`, whose callers
/// (`port_free`, the sweep) are at the end of the deepest call chain,
/// where one more frame costs 32 bytes of stack on kernels that round
/// each frame to 32 (6.1: umlbr_xdp -> out_sub -> mapping_new ->
/// port_free -> credit was 544 bytes there, 512 where frames round to 16).
#[inline(always)]
fn credit_inline(port: u32) {
    if let Some(q) = NAT_QUOTA.get_ptr_mut(port) {
        // SAFETY: as in `entry`.
        let q = unsafe { &mut *q };
        if q.count > 0 {
            atomic_add(&mut q.count, u32::MAX);
        }
    }
}

#[inline(always)]
fn atomic_add(v: &mut u32, n: u32) {
    // As fdb.rs: with its result unused, one BPF_XADD.
    // SAFETY: `v` is a valid, aligned u32.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(v, n) };
}

/// Whether a sweep may run now (at most one in NAT_SWEEP_INTERVAL_NS for
/// the whole table, whichever guest or CPU asks); if so, the clock is moved on.
#[inline(always)]
pub fn sweep_due(now: u64) -> bool {
    let Some(clock) = entry(0) else {
        return false;
    };
    if now.wrapping_sub(clock.swept_ns) < NAT_SWEEP_INTERVAL_NS {
        return false;
    }
    clock.swept_ns = now;
    true
}

/// Remove the flow's outbound entry `okey` if it is still the mapping
/// whose inbound key is `ikey` (a flow mapped again since has another
/// outside port), crediting its owner. Returns the owner (0: not
/// removed here).
#[inline(always)]
pub fn retire_out(okey: &NatKey, ikey: &NatKey) -> u32 {
    let Some(o) = NAT_OUT.get_ptr(*okey) else {
        return 0;
    };
    // SAFETY: pointer into the map value, read once.
    let (addr, port, owner) = unsafe { ((*o).addr, (*o).port, (*o).owner) };
    if addr != ikey.local_addr || port != ikey.local_port {
        return 0;
    }
    // Only the CPU whose removal succeeds gives the mapping back.
    if NAT_OUT.remove(*okey).is_ok() {
        credit_inline(owner);
        return owner;
    }
    0
}

#[repr(C)]
struct Sweep {
    now: u64,
}

/// Remove every expired mapping, both directions, crediting its owner.
#[inline(never)]
pub fn sweep(now: u64) {
    let mut ctx = Sweep { now };
    // SAFETY: the helper walks NAT_IN and calls `sweep_one` for each
    // element with the map, the key, the value and `ctx`.
    unsafe {
        bpf_for_each_map_elem(
            &NAT_IN as *const _ as *mut c_void,
            sweep_one as *mut c_void,
            &mut ctx as *mut Sweep as *mut c_void,
            0,
        );
    }
    // The IPv6 mappings hold the same quota.
    super::v6::sweep(now);
}

extern "C" fn sweep_one(
    map: *mut c_void,
    key: *const NatKey,
    value: *const NatIn,
    ctx: *const Sweep,
) -> i64 {
    let Some(cfg) = config() else {
        return 1;
    };
    // SAFETY: the helper passes valid pointers to the element and `ctx`.
    let (k, e, now) = unsafe { (*key, *value, (*ctx).now) };
    if live(cfg, k.proto, &e, now) {
        return 0;
    }
    let okey = NatKey::new(k.proto, e.addr, e.port, k.remote_addr, k.remote_port);
    // One event per mapping: from the CPU that removed its outbound
    // entry, read from the element before it is deleted (the pointers,
    // not the copies: passing those took this frame from 56 to 112 bytes
    // of the 512-byte stack).
    let owner = retire_out(&okey, &k);
    if owner != 0 {
        // SAFETY: the element, not yet deleted.
        crate::events::nat_expired(owner, unsafe { &*key }, unsafe { &*value });
    }
    // SAFETY: deleting the element being visited is allowed.
    if unsafe { bpf_map_delete_elem(map, key as *const c_void) } == 0 {
        count(|s| s.expired += 1);
    }
    0
}
