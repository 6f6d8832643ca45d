//! Protocol constants and packet header layouts, in one place.
//!
//! network-types gives the layouts: the lengths and field offsets of its
//! `EthHdr`, `VlanHdr`, `Ipv4Hdr`, `Ipv6Hdr`, `UdpHdr` and `Icmpv4Hdr`
//! name what the datapath reads and rewrites, and its `EtherType` values
//! the protocols. `Ipv4Hdr` and `Icmpv4Hdr` are all byte arrays (alignment
//! 1), so a checked packet pointer cast to one of them is a sound view at
//! any address ([`view`], [`Ip4`]); reads stay byte-wise loads, what
//! `read_unaligned` lowers to on BPF.
//!
//! Where it does not serve, the views are our own:
//! - TCP and UDP ports: [`Ports`], the first word they share.
//! - TCP: network-types' `TcpHdr` keeps the data offset and the flags in a
//!   bitfield read one bit per call; the NAT tests the flags byte whole
//!   (SYN without ACK) and needs the data offset once, so [`TCP_FLAGS`]
//!   and [`TCP_DOFF`] are plain byte offsets.
//! - Ethernet: `EthHdr` has a `u16` field, so it is 2-aligned and a
//!   reference to it at an odd packet address would be undefined; the MACs
//!   are read as the `[u8; 6]` arrays they are ([`macs`]).

use core::mem::{align_of, offset_of};

use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv6Hdr,
    vlan::VlanHdr,
};
pub use network_types::{icmp::Icmpv4Hdr, ip::Ipv4Hdr, udp::UdpHdr};
pub use umlbr_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_HLEN: usize = EthHdr::LEN;
pub const ETH_SRC: usize = offset_of!(EthHdr, src_addr);
/// An 802.1Q tag: the frame's EtherType moves behind it.
pub const VLAN_HLEN: usize = VlanHdr::LEN;
/// The EtherType field, and IPv4/IPv6/802.1Q as read from the packet into
/// a little-endian `u16` (network-types' `EtherType` values).
pub const ETH_TYPE: usize = offset_of!(EthHdr, ether_type);
pub const ETH_P_IP: u16 = EtherType::Ipv4 as u16;
pub const ETH_P_IPV6: u16 = EtherType::Ipv6 as u16;
pub const ETH_P_8021Q: u16 = EtherType::Ieee8021q as u16;

/// An IPv4 header without options, the only kind the NAT translates.
pub const IP_HLEN: usize = Ipv4Hdr::LEN;
pub const IP_VIHL_PLAIN: u8 = 0x45;
pub const IP_TOT_LEN: usize = offset_of!(Ipv4Hdr, tot_len);
pub const IP_FRAG: usize = offset_of!(Ipv4Hdr, frags);
/// The TTL and the protocol, as one 16-bit word for the checksum update.
pub const IP_TTL: usize = offset_of!(Ipv4Hdr, ttl);
pub const IP_PROTO: usize = offset_of!(Ipv4Hdr, proto);
pub const IP_CHECK: usize = offset_of!(Ipv4Hdr, check);
pub const IP_SADDR: usize = offset_of!(Ipv4Hdr, src_addr);
pub const IP_DADDR: usize = offset_of!(Ipv4Hdr, dst_addr);
/// More-fragments flag and fragment offset, host order: set in fragments.
pub const IP_FRAG_MASK: u16 = 0x3fff;
/// Don't Fragment, in the IPv4 flags and fragment offset (host order).
pub const IP_DF: u16 = 0x4000;

pub const IPV6_HLEN: usize = Ipv6Hdr::LEN;
pub const IPV6_PLEN: usize = offset_of!(Ipv6Hdr, payload_len);
pub const IPV6_NEXT: usize = offset_of!(Ipv6Hdr, next_hdr);
pub const IPV6_SADDR: usize = offset_of!(Ipv6Hdr, src_addr);

/// Source and destination port: the first word of TCP and UDP alike
/// (network-types has a type per protocol, not for what they share).
#[repr(C)]
pub struct Ports {
    pub src: [u8; 2],
    pub dst: [u8; 2],
}
pub const L4_SPORT: usize = offset_of!(Ports, src);
pub const L4_DPORT: usize = offset_of!(Ports, dst);
pub const UDP_CHECK: usize = offset_of!(UdpHdr, check);
pub const UDP_LEN: usize = offset_of!(UdpHdr, len);
pub const UDP_HLEN: usize = UdpHdr::LEN;
pub const TCP_HLEN: usize = 20;
/// Sequence and acknowledgment numbers, window field (big endian).
pub const TCP_SEQ: usize = 4;
pub const TCP_ACK_SEQ: usize = 8;
pub const TCP_WINDOW: usize = 14;
pub const TCP_DOFF: usize = 12;
pub const TCP_FLAGS: usize = 13;
pub const TCP_CHECK: usize = 16;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_HLEN: usize = Icmpv4Hdr::LEN;
pub const ICMP_CHECK: usize = offset_of!(Icmpv4Hdr, check);
/// An echo's identifier: the first half of the header's `data`.
pub const ICMP_ECHO_ID: usize = offset_of!(Icmpv4Hdr, data);
// network-types' Icmpv4Type has no Time Exceeded: the types are ours.
pub const ICMP_ECHOREPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETERPROB: u8 = 12;

const _: () =
    assert!(align_of::<Ipv4Hdr>() == 1 && align_of::<Ports>() == 1 && align_of::<Icmpv4Hdr>() == 1);

/// A view of the network-types header `T` at `data + off`.
///
/// # Safety
/// The caller has checked `data + off + size_of::<T>()` against the
/// packet's end; `T` is one of the byte-array headers asserted above.
#[inline(always)]
pub unsafe fn view<'a, T>(data: usize, off: usize) -> &'a T {
    // SAFETY: per the contract above.
    unsafe { &*((data + off) as *const T) }
}

/// An IPv4 header without options and the transport header behind it, as
/// views: ports (TCP, UDP) or ICMP, whichever the protocol says.
pub struct Ip4<'a> {
    pub ip: &'a Ipv4Hdr,
    pub ports: &'a Ports,
    pub icmp: &'a Icmpv4Hdr,
}

impl Ip4<'_> {
    /// The headers at `data + off`.
    ///
    /// # Safety
    /// The caller has checked `data + off + IP_HLEN + 8` against the
    /// packet's end.
    #[inline(always)]
    pub unsafe fn at(data: usize, off: usize) -> Self {
        // SAFETY: per the contract above.
        unsafe {
            Ip4 {
                ip: view(data, off),
                ports: view(data, off + IP_HLEN),
                icmp: view(data, off + IP_HLEN),
            }
        }
    }

    /// An ICMP echo's identifier (the first half of the header's data).
    #[inline(always)]
    pub fn echo_id(&self) -> u16 {
        ne16([self.icmp.data[0], self.icmp.data[1]])
    }
}

/// A 16- or 32-bit field as read from the packet (network byte order),
/// as the NAT keeps addresses and ports.
#[inline(always)]
pub const fn ne16(b: [u8; 2]) -> u16 {
    u16::from_ne_bytes(b)
}
#[inline(always)]
pub const fn ne32(b: [u8; 4]) -> u32 {
    u32::from_ne_bytes(b)
}

/// Whether the NAT translates an IPv4 header itself: no options, not a
/// fragment, and a TTL that survives the hop.
#[inline(always)]
pub fn ip_plain(ip: &Ipv4Hdr) -> bool {
    ip.vihl == IP_VIHL_PLAIN && u16::from_be_bytes(ip.frags) & IP_FRAG_MASK == 0 && ip.ttl > 1
}

/// Offset of the checksum in a TCP, UDP or ICMP header.
#[inline(always)]
pub const fn l4_check(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => TCP_CHECK,
        IPPROTO_UDP => UDP_CHECK,
        _ => ICMP_CHECK,
    }
}

/// Destination and source MAC of the frame at `data`, if it has an
/// Ethernet header before `end`.
#[inline(always)]
pub fn macs(data: usize, end: usize) -> Option<([u8; 6], [u8; 6])> {
    if data + ETH_HLEN > end {
        return None;
    }
    // SAFETY: bounds checked above; byte arrays, any alignment.
    unsafe {
        Some((
            *(data as *const [u8; 6]),
            *((data + ETH_SRC) as *const [u8; 6]),
        ))
    }
}
