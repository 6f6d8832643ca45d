//! Recognising CHECKSUM_PARTIAL frames in XDP.
//!
//! A guest with a vnet header (UML vector transport, virtio-net) and the
//! host's own stack hand over TCP/UDP frames whose checksum field holds
//! only the pseudo-header sum, with the offset to finish it in metadata
//! that an xdp_buff does not carry. Redirected as an XDP frame such a
//! packet arrives with a wrong checksum. XDP therefore passes them to the
//! TC program, where the skb keeps its checksum state.

use crate::hdr::{
    ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ETH_TYPE, IPPROTO_TCP, IPPROTO_UDP, l4_check,
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
        if data + ETH_HLEN + 4 > end {
            return false;
        }
        off += 4;
        proto = raw16(off);
    }
    let l3 = off + 2;
    if proto == ETH_P_IP {
        if l3 + 20 > end {
            return false;
        }
        // SAFETY: bounds checked above.
        let vihl = unsafe { *(l3 as *const u8) };
        let ihl = ((vihl & 0x0f) as usize) * 4;
        let frag = be16(l3 + 6);
        // Fragments carry no (whole) L4 header.
        if ihl < 20 || frag & 0x3fff != 0 {
            return false;
        }
        // SAFETY: bounds checked above.
        let l4proto = unsafe { *((l3 + 9) as *const u8) };
        let total = be16(l3 + 2) as usize;
        if total < ihl {
            return false;
        }
        let l4len = (total - ihl) as u32;
        let mut sum: u32 = be16(l3 + 12) as u32
            + be16(l3 + 14) as u32
            + be16(l3 + 16) as u32
            + be16(l3 + 18) as u32;
        sum += l4proto as u32 + l4len;
        let l4 = l3 + (ihl & 0x3c);
        check_field(l4, end, l4proto, fold(sum))
    } else if proto == ETH_P_IPV6 {
        if l3 + 40 > end {
            return false;
        }
        // SAFETY: bounds checked above.
        let l4proto = unsafe { *((l3 + 6) as *const u8) };
        let l4len = be16(l3 + 4) as u32;
        let mut sum: u32 = 0;
        let mut i = 0;
        while i < 16 {
            sum += be16(l3 + 8 + i * 2) as u32;
            i += 1;
        }
        sum += l4proto as u32 + l4len;
        check_field(l3 + 40, end, l4proto, fold(sum))
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
