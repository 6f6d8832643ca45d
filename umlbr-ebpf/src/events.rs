//! Events for `umlbr monitor`: what an operator cares about (a MAC
//! learned, moved or aged out, a frame dropped by a port's security
//! settings or storm control, a NAT mapping made, expired or refused),
//! written into a ring buffer from the rare paths only, never for a
//! forwarded frame.
//!
//! Cheap when nobody listens: every emitter first reads the listener's
//! lease (UMLBR_EV_CTL, an array the verifier inlines into a pointer) and
//! stops at one compare when it has run out. The monitor renews it every
//! second for three: a monitor killed without a word stops costing
//! within three seconds. Rate-limited: one GCRA bucket per kind
//! (UMLBR_EV_RATE, shared by the CPUs, as storm control's) lets
//! EV_BURST events through at once and EV_RATE_PER_SEC after; the rest,
//! and events the full ring refuses, are counted as suppressed, which
//! the monitor reports.
//!
//! The emitters are BPF functions of their own taking scalars and
//! pointers, so that the callers' frames (umlbr_tc's is at the edge of
//! the 512-byte stack) hold nothing of them; the record is built in the
//! ring buffer's memory, not on the stack.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    macros::map,
    maps::{Array, RingBuf, ring_buf::RingBufEntry},
};
use umlbr_common::{
    EV_BURST, EV_GAP_NS, EV_KINDS, EV_NAT_EXPIRED, EV_RING_BYTES, EvBucket, EvCtl, Event, NatIn,
    NatKey,
};

use crate::{mem::zero_words, nat::table::Flow};

#[map(name = "UMLBR_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EV_RING_BYTES, 0);

#[map(name = "UMLBR_EV_CTL")]
static EV_CTL: Array<EvCtl> = Array::with_max_entries(1, 0);

#[map(name = "UMLBR_EV_RATE")]
static EV_RATE: Array<EvBucket> = Array::with_max_entries(EV_KINDS, 0);

/// A zeroed record of `kind`, stamped, if a monitor listens and the
/// kind's bucket lets it through; counted as suppressed if not.
#[inline(always)]
fn reserve(kind: u16) -> Option<(RingBufEntry<Event>, *mut Event)> {
    let now = crate::fdb::now();
    // Nobody listens: the whole cost of an event.
    if now >= EV_CTL.get(0)?.until_ns {
        return None;
    }
    let b = EV_RATE.get_ptr_mut(kind as u32)?;
    // SAFETY: pointer into an array value that lives as long as the map.
    let b = unsafe { &mut *b };
    let mut tat = b.tat_ns;
    if tat < now {
        b.tat_ns = now;
        tat = now;
    }
    // Checked, then added, as storm control: racing CPUs pass at most one
    // event each beyond the limit.
    if tat - now > (EV_BURST - 1) * EV_GAP_NS {
        atomic_add64(&mut b.suppressed, 1);
        return None;
    }
    atomic_add64(&mut b.tat_ns, EV_GAP_NS);
    let Some(mut e) = EVENTS.reserve::<Event>(0) else {
        // The ring is full: the monitor is behind.
        atomic_add64(&mut b.suppressed, 1);
        return None;
    };
    let p = e.as_mut_ptr();
    // SAFETY: the reserved record, 48 bytes, 8-byte aligned.
    unsafe {
        zero_words(p);
        (*p).ts_ns = now;
        (*p).kind = kind;
    }
    Some((e, p))
}

#[inline(always)]
fn atomic_add64(v: &mut u64, n: u64) {
    // As fdb.rs: with its result unused, one BPF_XADD.
    // SAFETY: `v` is a valid, aligned u64.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(v, n) };
}

/// An event of a port: `kind` on port `port` about `mac`, with `other`
/// (the port a MAC moved from, an isolated frame's target).
#[inline(never)]
pub fn port(kind: u16, port: u32, mac: &[u8; 6], other: u32) {
    let Some((e, p)) = reserve(kind) else {
        return;
    };
    // SAFETY: the record `reserve` made.
    unsafe {
        (*p).ifindex = port;
        (*p).mac = *mac;
        (*p).other = other;
    }
    e.submit(0);
}

/// A NAT event about a guest's flow `f` from `port`: mapped to outside
/// `nat_port` (network byte order; 0 for a refusal) of `nat_addr`.
#[inline(never)]
pub fn nat(kind: u16, port: u32, f: &Flow, nat_addr: u32, nat_port: u32) {
    let Some((e, p)) = reserve(kind) else {
        return;
    };
    // SAFETY: the record `reserve` made.
    unsafe {
        (*p).ifindex = port;
        (*p).proto = f.proto;
        (*p).mac = f.mac;
        (*p).saddr = f.saddr;
        (*p).sport = f.sport;
        (*p).daddr = f.daddr;
        (*p).dport = f.dport;
        (*p).nat_addr = nat_addr;
        (*p).nat_port = nat_port as u16;
    }
    e.submit(0);
}

/// A mapping of `owner`'s guest expired and removed: its inbound key
/// `ikey` (the outside end and the remote) and value `i` (the guest's end).
#[inline(never)]
pub fn nat_expired(owner: u32, ikey: &NatKey, i: &NatIn) {
    let Some((e, p)) = reserve(EV_NAT_EXPIRED) else {
        return;
    };
    // SAFETY: the record `reserve` made.
    unsafe {
        (*p).ifindex = owner;
        (*p).proto = ikey.proto;
        (*p).mac = i.mac;
        (*p).saddr = i.addr;
        (*p).sport = i.port;
        (*p).daddr = ikey.remote_addr;
        (*p).dport = ikey.remote_port;
        (*p).nat_addr = ikey.local_addr;
        (*p).nat_port = ikey.local_port;
    }
    e.submit(0);
}
