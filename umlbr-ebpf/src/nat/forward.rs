//! Port forwards (`umlbr forward add`): a new TCP or UDP flow from the
//! LAN to the uplink's address on a forwarded port becomes a mapping like
//! a guest's own flow, with the forward's guest at its inside end. The
//! first packet makes both entries (NAT_IN by the outside end, NAT_OUT by
//! the guest's), charged to the guest's port; from then on the flow is an
//! ordinary mapping: its packets from the LAN find NAT_IN, the guest's
//! replies find NAT_OUT, with the masquerade's timeouts, TCP tracking,
//! owner check and sweep.
//!
//! Only a packet to the uplink's address that misses NAT_IN looks here,
//! and only when the bridge has forwards (`NAT_F_FWD`). What cannot be
//! mapped here (a TCP segment that is not a first SYN, a guest whose MAC
//! the host or the FDB does not know yet, a full table) goes to the
//! kernel, whose nftables table has the same forward as a dnat rule.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    mem::MaybeUninit,
};

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::bpf_fib_lookup as fib_lookup,
    macros::map,
    maps::HashMap,
};
use umlbr_common::{
    FWD_K_PORT, FWD_K_TARGET, FwdKey, FwdVal, NAT_FWD_SIZE, NatConfig, NatIn, NatKey,
};

use super::{
    NAT_IN, NAT_OUT, NAT_SCRATCH, count,
    inbound::Guest,
    quota::{charge, credit, retire_out},
};
use crate::{
    hdr::{IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_SYN},
    mem::zero_words,
};

/// Forwards by protocol and the uplink's port.
#[map(name = "UMLBR_NAT_FWD")]
static NAT_FWD: HashMap<FwdKey, FwdVal> = HashMap::with_max_entries(NAT_FWD_SIZE, 0);

/// `open` results: not a forward's (or left to the kernel's path); a
/// mapping made (the guest written); a new flow over the guest port's
/// quota (dropped).
pub const FWD_NONE: u16 = 0;
pub const FWD_OPEN: u16 = 1;
pub const FWD_DROP: u16 = 2;

const AF_INET: u8 = 2;

/// Map a new flow from the LAN whose NAT_IN key `key` (the uplink's end
/// local, the LAN's remote) has no live entry, if its port is forwarded:
/// FWD_OPEN with the guest in `g`, FWD_DROP, or FWD_NONE. (Its steps are
/// BPF functions of their own: inlined, their frames took umlbr_xdp ->
/// inbound_sub -> open past the 512-byte stack.)
#[inline(never)]
pub fn open(ctx: *mut c_void, cfg: &NatConfig, key: &NatKey, tcp_flags: u8, g: *mut Guest) -> u16 {
    let proto = key.proto;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return FWD_NONE;
    }
    let fkey = FwdKey {
        proto,
        kind: FWD_K_PORT,
        port: key.local_port,
        addr: 0,
    };
    let Some(fw) = NAT_FWD.get_ptr_mut(fkey) else {
        return FWD_NONE;
    };
    // As for a guest's flow: a TCP mapping only from a first SYN; a flow
    // that began on the kernel's path stays there.
    if proto == IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        count(|s| s.slow_path += 1);
        return FWD_NONE;
    }
    // SAFETY: pointer into the map value, read once.
    let (addr, port) = unsafe { ((*fw).addr, (*fw).port) };
    let mac = guest_mac(ctx, cfg, key, addr);
    let owner = if mac == u64::MAX { 0 } else { owner_of(mac) };
    if owner == 0 {
        count(|s| s.slow_path += 1);
        return FWD_NONE;
    }
    // Over the quota: counted by the caller, which may sweep and retry.
    if !charge(owner, cfg.max_per_guest) {
        return FWD_DROP;
    }
    let b = mac.to_le_bytes();
    // SAFETY: the caller's Guest.
    unsafe {
        (*g).addr = addr;
        (*g).port = port;
        (*g).mac = [b[0], b[1], b[2], b[3], b[4], b[5]];
    }
    // One call deep each, not nested: on kernels that round each frame to
    // 32 bytes (6.1), a third level passed the 512-byte stack.
    retire_stale(key);
    if !insert_in(key, g) {
        credit(owner);
        count(|s| s.slow_path += 1);
        return FWD_NONE;
    }
    // SAFETY: the caller's Guest, written above.
    let (addr, port) = unsafe { ((*g).addr, (*g).port) };
    if !insert_out(cfg, key, addr, port, owner) {
        let _ = NAT_IN.remove(*key);
        credit(owner);
        count(|s| s.slow_path += 1);
        return FWD_NONE;
    }
    // SAFETY: pointer into the map value; an atomic add (one BPF_XADD).
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut (*fw).hits, 1);
    }
    count(|s| s.allocs += 1);
    FWD_OPEN
}

/// The port behind guest MAC `mac` (low 48 bits): a learned entry, not
/// the host's own MAC; 0 if unknown.
#[inline(never)]
fn owner_of(mac: u64) -> u32 {
    let b = mac.to_le_bytes();
    let mac = [b[0], b[1], b[2], b[3], b[4], b[5]];
    crate::fdb::learned_port(
        mac,
        crate::fdb::now(),
        crate::fdb::aging_ns(crate::config()),
    )
}

/// The flow's inbound entry, to guest `g`; false if it cannot be made
/// (a racing CPU's, a full table).
#[inline(never)]
fn insert_in(key: &NatKey, g: *const Guest) -> bool {
    let now = crate::fdb::now();
    // Built in this CPU's scratch slot (a NatOut's room holds a NatIn),
    // not on the stack: 32 bytes here took the call chain past 512.
    let Some(p) = NAT_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, written and inserted before anything else
    // runs here; NatIn (32 bytes, 8-aligned) fits the NatOut value (48).
    let fresh = unsafe {
        let p = p.cast::<NatIn>();
        zero_words(p);
        (*p).addr = (*g).addr;
        (*p).port = (*g).port;
        (*p).mac = (*g).mac;
        (*p).last_seen_ns = now;
        (*p).created_ns = now;
        &*p
    };
    // BPF_NOEXIST: a racing CPU's mapping of the same flow wins.
    NAT_IN.insert(*key, fresh, 1).is_ok()
}

/// An expired mapping on `key` (the caller found none live): retired, as
/// port_free does.
#[inline(never)]
fn retire_stale(key: &NatKey) {
    if let Some(e) = NAT_IN.get_ptr(*key) {
        // SAFETY: pointer into the map value, read once.
        let (ea, ep) = unsafe { ((*e).addr, (*e).port) };
        let stale = NatKey::new(key.proto, ea, ep, key.remote_addr, key.remote_port);
        retire_out(&stale, key);
        let _ = NAT_IN.remove(*key);
        count(|s| s.expired += 1);
    }
}

/// The flow's outbound entry, by the guest's end: the uplink's address and
/// the forwarded port outside, `owner` the guest's port. BPF_NOEXIST: a
/// mapping the guest made itself from the same port to the same remote
/// end is left alone (and this flow to the kernel's path).
#[inline(never)]
fn insert_out(cfg: &NatConfig, key: &NatKey, gaddr: u32, gport: u16, owner: u32) -> bool {
    // Built in this CPU's scratch slot, as table::insert_out does.
    let Some(p) = NAT_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, written and inserted before anything else
    // runs here. No next hop yet: the guest's first reply looks it up.
    let o = unsafe {
        zero_words(p);
        (*p).addr = cfg.nat_addr;
        (*p).port = key.local_port;
        (*p).owner = owner;
        &*p
    };
    let okey = NatKey::new(key.proto, gaddr, gport, key.remote_addr, key.remote_port);
    NAT_OUT.insert(okey, o, 1).is_ok()
}

/// The MAC of guest `gaddr` as the host's neighbour table knows it behind
/// the bridge's host interface (a route lookup from the uplink, as the
/// kernel would forward the packet), as the low 48 bits; u64::MAX if the
/// route does not lead there or the neighbour is unknown (the kernel's
/// path resolves it).
#[inline(never)]
fn guest_mac(ctx: *mut c_void, cfg: &NatConfig, key: &NatKey, gaddr: u32) -> u64 {
    let mut fib = MaybeUninit::<bpf_fib_lookup>::uninit();
    let p = fib.as_mut_ptr();
    // SAFETY: `p` is our own stack slot: zeroed word by word, then the
    // fields that are not zero set; the helper gets it whole.
    let ret = unsafe {
        zero_words(p);
        (*p).family = AF_INET;
        (*p).l4_protocol = key.proto;
        (*p).sport = key.remote_port;
        (*p).dport = key.local_port;
        (*p).ifindex = cfg.nat_ifindex;
        (*p).__bindgen_anon_3.ipv6_src[0] = key.remote_addr;
        (*p).__bindgen_anon_4.ipv6_dst[0] = gaddr;
        fib_lookup(ctx, p, core::mem::size_of::<bpf_fib_lookup>() as i32, 0)
    };
    // SAFETY: initialised above, and the helper only writes it.
    let (ifindex, d) = unsafe { ((*p).ifindex, (*p).dmac) };
    if ret != BPF_FIB_LKUP_RET_SUCCESS as i64 || ifindex != cfg.host_ifindex {
        return u64::MAX;
    }
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], 0, 0])
}

/// Whether `addr:port` (network byte order) is a forward's target for
/// `proto`: a new flow from there is not mapped by the masquerade. A
/// forwarded flow the kernel took (its first packet came before the host
/// knew the guest's MAC) has its conntrack entry there, and the guest's
/// replies must reach it untranslated, not leave on a new mapping.
#[inline(never)]
pub fn is_target(proto: u8, addr: u32, port: u16) -> bool {
    let k = FwdKey {
        proto,
        kind: FWD_K_TARGET,
        port,
        addr,
    };
    NAT_FWD.get_ptr(k).is_some()
}
