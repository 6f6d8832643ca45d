//! IPv6 masquerade (issue 18): guests' IPv6 leaving through the uplink
//! gets the uplink's global IPv6 address and a port of ours, replies and
//! ICMPv6 errors about them are translated back; as IPv4 ([`super`]),
//! parse → decide → rewrite in each direction ([`out`], [`inbound`]),
//! with its own maps ([`table`]: 16-byte addresses in `Nat6Key`) and the
//! IPv4 code's port allocation, quota, timeouts and TCP tracking. Only
//! bridges with `NAT_F_V6` look here, and only at IPv6 frames.
//!
//! IPv6 has no header checksum: an address change is fixed in the
//! transport checksum, whose pseudo header covers it (ICMPv6's too).
//! What is not translated here goes to the kernel, whose `ip6` table
//! masquerades it or drops it (umlbr/src/nat6.rs): never untranslated.

mod inbound;
mod out;
mod table;

pub use table::sweep;

use core::ffi::c_void;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use umlbr_common::{
    NAT6_PREFIXES, NAT6_SIZE, Nat6Config, Nat6In, Nat6Key, Nat6Stats, NatConfig, NatOut,
};

use super::Packed;
use crate::{
    hdr::{ETH_HLEN, ETH_P_IPV6, ETH_TYPE},
    pkt::{Pkt, Sum, ld},
};

#[map(name = "UMLBR_NAT6_OUT")]
static NAT6_OUT: HashMap<Nat6Key, NatOut> = HashMap::with_max_entries(NAT6_SIZE, 0);

#[map(name = "UMLBR_NAT6_IN")]
static NAT6_IN: HashMap<Nat6Key, Nat6In> = HashMap::with_max_entries(NAT6_SIZE, 0);

#[map(name = "UMLBR_NAT6_CFG")]
static NAT6_CONFIG: Array<Nat6Config> = Array::with_max_entries(1, 0);

#[map(name = "UMLBR_NAT6_STAT")]
static NAT6_STATS: PerCpuArray<Nat6Stats> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room for the outbound path's flow and keys: 16-byte addresses
/// on the stack took the call chain past the 512-byte limit. Written and
/// read within one program run.
#[repr(C)]
pub struct Scratch6 {
    pub flow: table::Flow6,
    pub okey: Nat6Key,
    pub ikey: Nat6Key,
}

#[map(name = "UMLBR_NAT6_SCR")]
static NAT6_SCRATCH: PerCpuArray<Scratch6> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch.
#[inline(always)]
fn scratch() -> Option<*mut Scratch6> {
    NAT6_SCRATCH.get_ptr_mut(0)
}

/// An IPv6 address as four words read from the packet (network byte
/// order), as the maps keep it.
pub type A6 = [u32; 4];

pub const IPPROTO_ICMPV6: u8 = 58;
pub const ICMP6_DST_UNREACH: u8 = 1;
pub const ICMP6_PACKET_TOO_BIG: u8 = 2;
pub const ICMP6_TIME_EXCEEDED: u8 = 3;
pub const ICMP6_ECHO_REQUEST: u8 = 128;
pub const ICMP6_ECHO_REPLY: u8 = 129;

/// The IPv6 header (no extension headers: those are the kernel's) and
/// what follows it.
const IP6_OFF: usize = ETH_HLEN;
const IP6_HLEN: usize = 40;
const IP6_PLEN: usize = IP6_OFF + 4;
const IP6_NEXT: usize = IP6_OFF + 6;
const IP6_HOP: usize = IP6_OFF + 7;
const IP6_SRC: usize = IP6_OFF + 8;
const IP6_DST: usize = IP6_OFF + 24;
const L4_OFF: usize = IP6_OFF + IP6_HLEN;
/// An ICMPv6 error's quote: the offending packet's IPv6 header and 8
/// bytes of its transport header.
const Q_IP: usize = L4_OFF + 8;
const Q_L4: usize = Q_IP + IP6_HLEN;
/// What TC makes linear before parsing: the headers up to a quote's
/// ports and checksum.
const PULL6: u32 = (Q_L4 + 8) as u32;

#[inline(always)]
fn config6() -> Option<&'static Nat6Config> {
    NAT6_CONFIG.get(0)
}

/// Count `f` on the IPv6 NAT counters.
#[inline(always)]
fn count6(f: impl FnOnce(&mut Nat6Stats)) {
    if let Some(p) = NAT6_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        f(unsafe { &mut *p })
    }
}

/// Whether the frame is IPv6 (the caller checked the Ethernet header is
/// there, or it is not).
#[inline(always)]
pub fn is_ipv6(pkt: &impl Pkt) -> bool {
    let (data, end) = pkt.bounds();
    // SAFETY: checked against `end` first.
    data + ETH_HLEN <= end && unsafe { ld::<u16>(data, ETH_TYPE) } == ETH_P_IPV6
}

/// Translate a guest's IPv6 packet to the gateway's MAC (`super::out`'s
/// IPv6 half).
#[inline(never)]
pub fn out_sub<P: Pkt>(ctx: *mut c_void, cfg: &NatConfig, guest_mac: &[u8; 6]) -> Packed {
    // SAFETY: the caller's own context.
    out::translate(&unsafe { P::from_raw(ctx) }, cfg, *guest_mac).pack()
}

/// Translate an IPv6 reply or ICMPv6 error from the uplink
/// (`super::inbound`'s IPv6 half).
#[inline(never)]
pub fn inbound_sub<P: Pkt>(ctx: *mut c_void, cfg: &NatConfig) -> Packed {
    // SAFETY: the caller's own context.
    inbound::translate(&unsafe { P::from_raw(ctx) }, cfg).pack()
}

/// Whether `a` is in one of the guests' prefixes.
#[inline(always)]
fn in_prefixes(c: &Nat6Config, a: &A6) -> bool {
    let mut i = 0;
    while i < NAT6_PREFIXES {
        if i as u32 >= c.nr_prefixes {
            break;
        }
        let (p, m) = (&c.prefix[i], &c.mask[i]);
        if a[0] & m[0] == p[0] && a[1] & m[1] == p[1] && a[2] & m[2] == p[2] && a[3] & m[3] == p[3]
        {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether no router forwards to `a`: unspecified, loopback, link-local
/// (fe80::/10) or multicast (no multicast routing here): the host's.
#[inline(always)]
fn local_scope(a: &A6) -> bool {
    let b = a[0].to_ne_bytes();
    b[0] == 0xff
        || (b[0] == 0xfe && b[1] & 0xc0 == 0x80)
        || (a[0] == 0 && a[1] == 0 && a[2] == 0 && (a[3] == 0 || a[3] == 1u32.to_be()))
}

#[inline(always)]
fn is_zero(a: &A6) -> bool {
    a[0] | a[1] | a[2] | a[3] == 0
}

/// Replace the 16-byte address at `off` by `new`, fixing the checksum at
/// `csum_off` of kind `sum` (a pseudo-header one for the packet's own
/// addresses, a plain one for an ICMPv6 error's quote).
#[inline(always)]
fn set_addr6(pkt: &impl Pkt, off: usize, old: &A6, new: &A6, csum_off: usize, sum: Sum) {
    pkt.wr::<A6>(off, *new);
    let mut i = 0;
    while i < 4 {
        pkt.csum(csum_off, sum, old[i], new[i], 4);
        i += 1;
    }
}

/// Decrement the hop limit as a router does (the caller checked it is
/// > 1); IPv6 has no header checksum to fix.
#[inline(always)]
fn dec_hop(pkt: &impl Pkt, hop: u8) {
    pkt.wr::<u8>(IP6_HOP, hop - 1);
}
