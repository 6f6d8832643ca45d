//! Masquerade in the datapath: guest flows leaving through the uplink get
//! the uplink's address and a port of ours; replies, and ICMP errors about
//! them, are translated back. XDP does it for what it can finish itself;
//! the TC program does the rest (CHECKSUM_PARTIAL and GSO skbs, next hops
//! whose neighbour entry is not resolved yet, uplinks without XDP tx).
//! What neither translates goes to the kernel's own forwarding and the
//! nftables masquerade rule umlbr installs beside it.
//!
//! Each direction is parse → decide → rewrite ([`out`], [`inbound`]):
//! parse reads the headers with one bounds check per shape, decide looks
//! the mapping up in [`table`], rewrite changes addresses, ports,
//! checksums and MACs. The steps are inlined into one BPF function per
//! direction and program type (`out_sub`, `inbound_sub`), which keeps each
//! one's stack within the 512-byte limit.
//!
//! Addresses and ports are kept as read from the packet (network byte
//! order) and checksums are updated incrementally (RFC 1624), which is
//! byte-order agnostic as long as old and new values are read alike.

mod forward;
mod inbound;
mod out;
mod pmtu;
mod quota;
pub(crate) mod table;
mod v6;

use core::ffi::c_void;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use umlbr_common::{
    NAT_F_V6, NAT_F_XDP_TX, NAT_MTU_ROUTES, NAT_QUOTA_ENTRIES, NAT_SIZE, NatConfig, NatIn, NatKey,
    NatOut, NatQuota, NatStats,
};

use crate::{
    hdr::{
        ETH_HLEN, ETH_P_IP, ETH_TYPE, IP_CHECK, IP_HLEN, IP_TTL, IPPROTO_TCP, IPPROTO_UDP, Ipv4Hdr,
        ne32, view,
    },
    pkt::{Pkt, Sum, ld},
};

// Plain hashes, not LRU: a new mapping never evicts a live one; expired
// ones are removed explicitly, and each port holds at most its quota
// ([`quota`]).
#[map(name = "UMLBR_NAT_OUT")]
static NAT_OUT: HashMap<NatKey, NatOut> = HashMap::with_max_entries(NAT_SIZE, 0);

#[map(name = "UMLBR_NAT_IN")]
static NAT_IN: HashMap<NatKey, NatIn> = HashMap::with_max_entries(NAT_SIZE, 0);

/// Port ifindex -> its live mappings (key 0: the sweep clock).
#[map(name = "UMLBR_NAT_QUOTA")]
static NAT_QUOTA: HashMap<u32, NatQuota> = HashMap::with_max_entries(NAT_QUOTA_ENTRIES, 0);

/// Where a new NAT_OUT value is built (table::insert_out): one per CPU.
#[map(name = "UMLBR_NAT_SCR")]
static NAT_SCRATCH: PerCpuArray<NatOut> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "UMLBR_NAT_CFG")]
static NAT_CONFIG: Array<NatConfig> = Array::with_max_entries(1, 0);

#[map(name = "UMLBR_NAT_STAT")]
static NAT_STATS: PerCpuArray<NatStats> = PerCpuArray::with_max_entries(1, 0);

/// MTUs of the routes out of the uplink that have one, by destination
/// prefix (address in network byte order).
#[map(name = "UMLBR_NAT_MTU")]
static NAT_MTU: LpmTrie<u32, u32> = LpmTrie::with_max_entries(NAT_MTU_ROUTES, 0);

/// The NAT translates IPv4 without options: its headers sit here.
const IP_OFF: usize = ETH_HLEN;
const L4_OFF: usize = IP_OFF + IP_HLEN;

#[inline(always)]
pub fn config() -> Option<&'static NatConfig> {
    NAT_CONFIG.get(0).filter(|c| c.nat_ifindex != 0)
}

#[inline(always)]
fn stats() -> Option<&'static mut NatStats> {
    // SAFETY: per-CPU slot, only this CPU writes it.
    NAT_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Count `f` on the NAT counters.
#[inline(always)]
fn count(f: impl FnOnce(&mut NatStats)) {
    if let Some(s) = stats() {
        f(s)
    }
}

/// What the NAT's BPF functions return. A BPF-to-BPF call returns one
/// register, so every result is a tag in the low 16 bits and a value of
/// up to 48 bits (an ifindex, a port, a MAC) above it.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Packed(u64);

impl Packed {
    #[inline(always)]
    pub const fn pack(tag: u16, val: u64) -> Packed {
        Packed(val << 16 | tag as u64)
    }
    #[inline(always)]
    pub const fn tag(self) -> u16 {
        self.0 as u16
    }
    #[inline(always)]
    pub const fn val(self) -> u64 {
        self.0 >> 16
    }
}

/// Where the NAT step sends a guest's packet.
pub enum Out {
    /// Not ours to translate: switch it as usual (to the host).
    NotNat,
    /// XDP cannot finish it: pass it to the TC program.
    ToTc,
    /// Translated; send out of `ifindex` (MACs already set).
    Redirect(u32),
    /// Translated; the next hop's MAC is unknown: let the kernel resolve
    /// it (TC only).
    RedirectNeigh(u32),
    /// A new flow over its port's NAT quota: dropped (counted as `quota`
    /// here, and as the port's `nat_quota` by the caller).
    Drop,
    /// Guest IPv6 the kernel would route out of an uplink without a
    /// global IPv6 address: dropped (counted as the IPv6 NAT's `no_addr`
    /// here; not as the port's `dropped`, the sum of the port's reasons).
    DropNoAddr,
}

impl Out {
    #[inline(always)]
    fn pack(self) -> Packed {
        match self {
            Out::NotNat => Packed::pack(0, 0),
            Out::ToTc => Packed::pack(1, 0),
            Out::Redirect(ifx) => Packed::pack(2, ifx as u64),
            Out::RedirectNeigh(ifx) => Packed::pack(3, ifx as u64),
            Out::Drop => Packed::pack(4, 0),
            Out::DropNoAddr => Packed::pack(5, 0),
        }
    }
    #[inline(always)]
    fn unpack(p: Packed) -> Out {
        match p.tag() {
            1 => Out::ToTc,
            2 => Out::Redirect(p.val() as u32),
            3 => Out::RedirectNeigh(p.val() as u32),
            4 => Out::Drop,
            5 => Out::DropNoAddr,
            _ => Out::NotNat,
        }
    }
}

/// Where a packet from the masquerade uplink goes.
pub enum In {
    /// Not a reply to a mapping: the host's own.
    Host,
    /// Translated for the guest with this MAC (MACs set).
    Guest([u8; 6]),
    /// A new flow to a port forward over its guest port's NAT quota, or
    /// a reply too big for its guest's port without DF: dropped (counted
    /// as `quota`, `too_big`).
    Drop,
    /// Turned into ICMP "fragmentation needed" for its sender (TC only):
    /// send it back out of the uplink (`pmtu`).
    Bounce,
}

impl In {
    #[inline(always)]
    fn pack(self) -> Packed {
        match self {
            In::Host => Packed::pack(0, 0),
            In::Drop => Packed::pack(2, 0),
            In::Bounce => Packed::pack(3, 0),
            In::Guest(m) => Packed::pack(
                1,
                u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]),
            ),
        }
    }
    #[inline(always)]
    fn unpack(p: Packed) -> In {
        match p.tag() {
            0 => return In::Host,
            2 => return In::Drop,
            3 => return In::Bounce,
            _ => {}
        }
        let b = p.val().to_le_bytes();
        In::Guest([b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

/// Whether a guest's packet to `daddr` leaves the subnet (and is not for
/// the host itself): the masquerade's to translate.
#[inline(always)]
fn leaves(cfg: &NatConfig, daddr: u32) -> bool {
    daddr & cfg.mask != cfg.subnet && daddr != cfg.nat_addr
}

/// Whether an IPv4 packet's lengths hold together, as the kernel's
/// ip_rcv and conntrack's tcp_error/udp_error require (RFC 791, 793,
/// 768): its total length `tot` covers the header and 8 bytes of
/// transport header and lies within the frame's `len` bytes; a TCP data
/// offset (`tcp_hlen`, in bytes) of at least 20, a UDP length (`udp_len`)
/// of at least 8, within the packet. What fails is not translated: the
/// kernel's path drops it, and the masquerade must not write ports and
/// checksums beyond the packet (into an Ethernet trailer) nor map it.
#[inline(always)]
fn whole(proto: u8, tot: u32, len: u32, tcp_hlen: u32, udp_len: u32) -> bool {
    if tot < (IP_HLEN + 8) as u32 || IP_OFF as u32 + tot > len {
        return false;
    }
    let l4 = tot - IP_HLEN as u32;
    match proto {
        IPPROTO_TCP => tcp_hlen >= 20 && tcp_hlen <= l4,
        IPPROTO_UDP => udp_len >= 8 && udp_len <= l4,
        _ => true,
    }
}

/// Whether a router forwards to `daddr` (network byte order) at all: not
/// "this network" (0/8), loopback, multicast (no multicast routing here)
/// or the limited broadcast, which the kernel's ip_route_input drops as
/// martian or delivers locally.
#[inline(always)]
fn forwardable(daddr: u32) -> bool {
    let first = daddr.to_ne_bytes()[0];
    first != 0 && first != 127 && first & 0xf0 != 0xe0 && daddr != u32::MAX
}

/// A guest's IPv4 packet to the gateway's MAC for outside the subnet,
/// while the uplink takes no XDP frames: TC's to translate (or to hand to
/// the kernel).
#[inline(always)]
pub fn for_tc_uplink(data: usize, end: usize, cfg: &NatConfig) -> bool {
    if cfg.flags & NAT_F_XDP_TX != 0 || data + L4_OFF > end {
        return false;
    }
    // SAFETY: 34 bytes checked above.
    let (dst, ethtype, ip) = unsafe {
        (
            ld::<[u8; 6]>(data, 0),
            ld::<u16>(data, ETH_TYPE),
            view::<Ipv4Hdr>(data, IP_OFF),
        )
    };
    dst == cfg.gw_mac && ethtype == ETH_P_IP && leaves(cfg, ne32(ip.dst_addr))
}

/// Translate a guest packet addressed to the gateway's MAC, if it leaves
/// through the masquerade uplink.
#[inline(always)]
pub fn out<P: Pkt>(ctx: &P, cfg: &NatConfig, guest_mac: &[u8; 6]) -> Out {
    // IPv6 only on bridges that masquerade it: nothing more for the rest.
    if cfg.flags & NAT_F_V6 != 0 && v6::is_ipv6(ctx) {
        return Out::unpack(v6::out_sub::<P>(ctx.as_ptr(), cfg, guest_mac));
    }
    Out::unpack(out_sub::<P>(ctx.as_ptr(), cfg, guest_mac))
}

/// Translate a reply (or an ICMP error about a mapping) arriving on the
/// masquerade uplink.
#[inline(always)]
pub fn inbound<P: Pkt>(ctx: &P, cfg: &NatConfig) -> In {
    if cfg.flags & NAT_F_V6 != 0 && v6::is_ipv6(ctx) {
        return In::unpack(v6::inbound_sub::<P>(ctx.as_ptr(), cfg));
    }
    In::unpack(inbound_sub::<P>(ctx.as_ptr(), cfg))
}

// Separate BPF functions keep each one's stack within the 512-byte limit.
#[inline(never)]
fn out_sub<P: Pkt>(ctx: *mut c_void, cfg: &NatConfig, guest_mac: &[u8; 6]) -> Packed {
    // SAFETY: the caller's own context.
    out::translate(&unsafe { P::from_raw(ctx) }, cfg, *guest_mac).pack()
}

#[inline(never)]
fn inbound_sub<P: Pkt>(ctx: *mut c_void, cfg: &NatConfig) -> Packed {
    // SAFETY: the caller's own context.
    inbound::translate(&unsafe { P::from_raw(ctx) }, cfg).pack()
}

/// Replace the IPv4 address at `off` (source or destination) and fix the
/// header checksum.
#[inline(always)]
fn set_ip_addr(pkt: &impl Pkt, off: usize, old: u32, new: u32) {
    pkt.wr::<u32>(off, new);
    pkt.csum(IP_OFF + IP_CHECK, Sum::L3, old, new, 4);
}

/// Replace the port (or echo identifier) at `off`, fixing the checksum of
/// `proto` at `csum_off`.
#[inline(always)]
fn set_port(pkt: &impl Pkt, off: usize, csum_off: usize, proto: u8, old: u16, new: u16) {
    pkt.wr::<u16>(off, new);
    pkt.csum(csum_off, Sum::of(proto, false), old as u32, new as u32, 2);
}

/// Decrement the TTL as a router does (the caller checked it is > 1):
/// `ttl_word` is the TTL and protocol as one word.
#[inline(always)]
fn dec_ttl(pkt: &impl Pkt, ttl_word: u16) {
    let new = ttl_word.wrapping_sub(1);
    pkt.wr::<u16>(IP_OFF + IP_TTL, new);
    pkt.csum(IP_OFF + IP_CHECK, Sum::L3, ttl_word as u32, new as u32, 2);
}
