//! Checksums: incremental updates (RFC 1624), and recognising
//! CHECKSUM_PARTIAL frames in XDP.
//!
//! A guest with a vnet header (UML vector transport, virtio-net) and the
//! host's own stack hand over TCP/UDP frames whose checksum field holds
//! only the pseudo-header sum, with the offset to finish it in metadata
//! that an xdp_buff does not carry. Redirected as an XDP frame such a
//! packet arrives with a wrong checksum. XDP therefore passes them to the
//! TC program, where the skb keeps its checksum state.

use crate::{
    hdr::{
        ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ETH_TYPE, IP_DADDR, IP_FRAG, IP_FRAG_MASK,
        IP_HLEN, IP_PROTO, IP_SADDR, IP_TOT_LEN, IPPROTO_TCP, IPPROTO_UDP, IPV6_HLEN, IPV6_NEXT,
        IPV6_PLEN, IPV6_SADDR, VLAN_HLEN, l4_check,
    },
    pkt::ld,
};

#[inline(always)]
fn raw16(p: usize) -> u16 {
    // SAFETY: callers bounds-check p + 2 against data_end first.
    unsafe { core::ptr::read_unaligned(p as *const u16) }
}

#[inline(always)]
fn be16(p: usize) -> u16 {
    u16::from_be(raw16(p))
}

/// Fold a 32-bit one's complement sum to 16 bits.
#[inline(always)]
pub fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m').
#[inline(always)]
pub fn csum16_replace(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

/// `check` updated for a `size`-byte field (2 or 4) going from `old` to
/// `new`.
#[inline(always)]
pub fn csum_replace(check: u16, old: u32, new: u32, size: u8) -> u16 {
    let c = csum16_replace(check, old as u16, new as u16);
    if size == 4 {
        csum16_replace(c, (old >> 16) as u16, (new >> 16) as u16)
    } else {
        c
    }
}

/// The pseudo-header sum of an IPv4 packet: what a CHECKSUM_PARTIAL
/// packet's transport checksum field holds. Addresses as read from the
/// packet, the rest in host order.
#[inline(always)]
pub fn pseudo4(saddr: u32, daddr: u32, proto: u8, l4len: u32) -> u16 {
    let (s, d) = (u32::from_be(saddr), u32::from_be(daddr));
    fold((s >> 16) + (s & 0xffff) + (d >> 16) + (d & 0xffff) + proto as u32 + l4len)
}

/// Whether the frame's TCP/UDP checksum equals its bare pseudo-header sum,
/// the mark of CHECKSUM_PARTIAL. A complete checksum matches by chance
/// once in 65536; such a frame merely takes the TC path too.
// A BPF function of its own: inlined it pushes the NAT call chain past
// the 512-byte stack limit.
#[inline(never)]
pub fn looks_partial(data: usize, end: usize) -> bool {
    if data + ETH_HLEN > end {
        return false;
    }
    let mut off = data + ETH_TYPE;
    let mut proto = raw16(off);
    if proto == ETH_P_8021Q {
        if data + ETH_HLEN + VLAN_HLEN > end {
            return false;
        }
        off += VLAN_HLEN;
        proto = raw16(off);
    }
    // The network header follows the (last) EtherType.
    let l3 = off + 2;
    if proto == ETH_P_IP {
        if l3 + IP_HLEN > end {
            return false;
        }
        // SAFETY: bounds checked above.
        let vihl = unsafe { *(l3 as *const u8) };
        let ihl = ((vihl & 0x0f) as usize) * 4;
        let frag = be16(l3 + IP_FRAG);
        // Fragments carry no (whole) L4 header.
        if ihl < IP_HLEN || frag & IP_FRAG_MASK != 0 {
            return false;
        }
        // SAFETY: bounds checked above.
        let l4proto = unsafe { *((l3 + IP_PROTO) as *const u8) };
        let total = be16(l3 + IP_TOT_LEN) as usize;
        if total < ihl {
            return false;
        }
        let l4len = (total - ihl) as u32;
        // SAFETY: bounds checked above.
        let (saddr, daddr) = unsafe { (ld::<u32>(l3, IP_SADDR), ld::<u32>(l3, IP_DADDR)) };
        let l4 = l3 + (ihl & 0x3c);
        check_field(l4, end, l4proto, pseudo4(saddr, daddr, l4proto, l4len))
    } else if proto == ETH_P_IPV6 {
        if l3 + IPV6_HLEN > end {
            return false;
        }
        // SAFETY: bounds checked above.
        let l4proto = unsafe { *((l3 + IPV6_NEXT) as *const u8) };
        let l4len = be16(l3 + IPV6_PLEN) as u32;
        let mut sum: u32 = 0;
        let mut i = 0;
        while i < 16 {
            sum += be16(l3 + IPV6_SADDR + i * 2) as u32;
            i += 1;
        }
        sum += l4proto as u32 + l4len;
        check_field(l3 + IPV6_HLEN, end, l4proto, fold(sum))
    } else {
        false
    }
}

#[inline(always)]
fn check_field(l4: usize, end: usize, l4proto: u8, pseudo: u16) -> bool {
    if l4proto != IPPROTO_TCP && l4proto != IPPROTO_UDP {
        return false;
    }
    let at = l4 + l4_check(l4proto);
    if at + 2 > end {
        return false;
    }
    be16(at) == pseudo
}
