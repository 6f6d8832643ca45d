//! Path MTU for the masquerade's replies, as a router does it: a reply
//! bigger than its guest port's MTU is not sent into a port that would
//! drop it. With DF set its sender gets ICMP "fragmentation needed"
//! (RFC 792, 1191) with that MTU, built from the packet itself in TC and
//! sent back out of the uplink; XDP hands such packets to TC untouched.
//! Without DF it is dropped: XDP and TC cannot fragment (the kernel's
//! forwarding would). Not rate-limited, as Linux does not limit
//! "fragmentation needed" either (icmpv4_mask_allow): each error is
//! smaller than the packet that caused it, and only a live mapping's
//! replies cause one.
//!
//! The port's MTU comes from `bpf_check_mtu` (5.12) on the egress
//! ifindex: no state to keep in step with `ip link set mtu`, and no map
//! lookup for packets that fit. Packets of at most 68 bytes (IPv4's
//! minimum MTU, an Ethernet device's least) skip even that.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_check_mtu_ret::BPF_MTU_CHK_RET_FRAG_NEEDED,
    helpers::{bpf_check_mtu, bpf_skb_change_tail},
    programs::TcContext,
};
use umlbr_common::NatConfig;

use super::{IP_OFF, In, L4_OFF, count};
use crate::{
    csum::fold,
    hdr::{ETH_HLEN, ETH_SRC, ICMP_CHECK, ICMP_HLEN, IP_CHECK, IP_HLEN, IP_SADDR},
    pkt::{Pkt, ld},
};

/// The least MTU an Ethernet device takes (ETH_MIN_MTU), IPv4's minimum.
const MIN_MTU: u32 = 68;
/// What the error quotes: the IPv4 header and the first 8 bytes behind
/// it, as the sender sent them (RFC 792's minimum; Linux quotes up to 576
/// bytes of the IPv4 datagram).
const QUOTE: usize = IP_HLEN + 8;
/// The error's frame: Ethernet, IPv4, ICMP, the quote.
const ERR_LEN: usize = ETH_HLEN + IP_HLEN + ICMP_HLEN + QUOTE;
const ERR_ICMP: usize = L4_OFF;
const ERR_QUOTE: usize = L4_OFF + ICMP_HLEN;

/// The MTU of the guest's port if a packet of `tot` bytes (its IPv4
/// total length) does not fit it, 0 if it does. `port` is the guest's
/// port if known (XDP looked it up), else 0: looked up by `mac`, only for
/// packets above the minimum MTU.
#[inline(always)]
pub fn too_big<P: Pkt>(pkt: &P, port: u32, mac: &[u8; 6], tot: u32) -> u32 {
    if tot <= MIN_MTU {
        return 0;
    }
    exceeds::<P>(pkt.as_ptr(), port, mac, tot)
}

/// `bpf_check_mtu` of a `tot`-byte IPv4 packet on `port` (0: the port of
/// `mac` in the FDB): the port's MTU if the packet exceeds it, else 0.
/// Out of line: the helper's MTU slot and the FDB key would grow
/// inbound_sub's frame, which the deepest XDP chain stacks on (at the
/// 512-byte limit where frames round to 32 bytes, as on 6.1).
#[inline(never)]
fn exceeds<P: Pkt>(ctx: *mut c_void, port: u32, mac: &[u8; 6], tot: u32) -> u32 {
    let port = if port != 0 {
        port
    } else {
        let cfg = crate::config();
        match crate::fdb::lookup(*mac, 0, crate::fdb::now(), crate::fdb::aging_ns(cfg)) {
            Some((port, false)) => port,
            // Flooded by TC (or dropped): no one port's MTU to check.
            _ => return 0,
        }
    };
    // The IPv4 length in, the port's MTU out. A GSO skb passes (its
    // segments are checked when they are made).
    let mut mtu = tot;
    // SAFETY: the helper reads our context and writes `mtu`.
    let ret = unsafe { bpf_check_mtu(ctx, port, &mut mtu, 0, 0) };
    if ret == BPF_MTU_CHK_RET_FRAG_NEEDED as i64 && mtu != 0 {
        mtu
    } else {
        0
    }
}

/// A reply too big for its guest's port (`mtu`): with DF (`df`), TC
/// turns it into "fragmentation needed" for its sender and sends that
/// back out of the uplink (XDP passes it to TC, untouched); without,
/// dropped.
#[inline(always)]
pub fn answer<P: Pkt>(pkt: &P, cfg: &NatConfig, df: bool, mtu: u32) -> In {
    if !df {
        count(|s| s.too_big += 1);
        return In::Drop;
    }
    if P::XDP {
        return In::Host;
    }
    if frag_needed(pkt.as_ptr(), cfg.nat_addr, mtu) == 0 {
        count(|s| s.too_big += 1);
        return In::Drop;
    }
    count(|s| s.frag_needed += 1);
    In::Bounce
}

/// The two 16-bit halves of a word as read, for the Internet checksum.
#[inline(always)]
fn halves(w: u32) -> u32 {
    (w & 0xffff) + (w >> 16)
}

/// Store `v` at `data + off`; the caller checked the bounds.
#[inline(always)]
unsafe fn st<T>(data: usize, off: usize, v: T) {
    // SAFETY: per the contract above.
    unsafe { core::ptr::write_unaligned((data + off) as *mut T, v) }
}

/// Rewrite the skb into the ICMP error "fragmentation needed, next-hop
/// MTU `mtu`" for its sender, from `addr` (the uplink's address, which
/// the packet was sent to): the quote copied first to where the error
/// carries it (behind the new headers; the packet is longer than the
/// error), the frame cut to the error's length, then the MACs swapped,
/// the headers written and both checksums computed whole. Nothing lives
/// across the helper call but its arguments: this function's frame stacks
/// on umlbr_tc's and inbound_sub's. 1 if done (0: the skb was too short
/// or would not shrink: to be dropped). TC only.
#[inline(never)]
fn frag_needed(ctx: *mut c_void, addr: u32, mtu: u32) -> u32 {
    // SAFETY: TC's own context (answer is called only for TC).
    let pkt = unsafe { TcContext::new(ctx.cast()) };
    let (data, end) = (pkt.data(), pkt.data_end());
    if data + ERR_LEN > end {
        return 0;
    }
    let mut i = 0;
    while i < QUOTE {
        // SAFETY: both within the ERR_LEN bytes checked above.
        unsafe { st(data, ERR_QUOTE + i, ld::<u32>(data, IP_OFF + i)) };
        i += 4;
    }
    // SAFETY: plain helper call on our skb; pointers are derived again.
    if unsafe { bpf_skb_change_tail(pkt.skb.skb, ERR_LEN as u32, 0) } != 0 {
        return 0;
    }
    let (data, end) = (pkt.data(), pkt.data_end());
    if data + ERR_LEN > end {
        return 0;
    }
    // SAFETY (every load and store below): within the ERR_LEN bytes
    // checked just above.
    unsafe {
        // Back to where it came from: the MACs swapped.
        let (d0, d1) = (ld::<u32>(data, 0), ld::<u16>(data, 4));
        let (s0, s1) = (ld::<u16>(data, ETH_SRC), ld::<u32>(data, ETH_SRC + 2));
        st(data, 0, s0);
        st(data, 2, s1);
        st(data, ETH_SRC, d0);
        st(data, ETH_SRC + 4, d1);
        // IPv4: 0x45, TOS 0xc0 (internetwork control, as Linux's
        // errors), total length, id 0 and DF (an atomic datagram: RFC
        // 6864), TTL 64, ICMP, from `addr` to the quote's source.
        let sender = ld::<u32>(data, ERR_QUOTE + IP_SADDR);
        let w0 = u32::from_ne_bytes([0x45, 0xc0, 0, (ERR_LEN - ETH_HLEN) as u8]);
        let w1 = u32::from_ne_bytes([0, 0, 0x40, 0]);
        let w2 = u32::from_ne_bytes([64, 1, 0, 0]);
        st(data, IP_OFF, w0);
        st(data, IP_OFF + 4, w1);
        st(data, IP_OFF + 8, w2);
        st(data, IP_OFF + 12, addr);
        st(data, IP_OFF + 16, sender);
        let ipsum = halves(w0) + halves(w1) + halves(w2) + halves(addr) + halves(sender);
        st(data, IP_OFF + IP_CHECK, !fold(ipsum));
        // ICMP: type 3 code 4, checksum, unused, next-hop MTU (RFC 1191),
        // over itself and the quote.
        let i0 = u32::from_ne_bytes([3, 4, 0, 0]);
        let i1 = u32::from_ne_bytes([0, 0, (mtu >> 8) as u8, mtu as u8]);
        st(data, ERR_ICMP, i0);
        st(data, ERR_ICMP + 4, i1);
        let mut sum = halves(i0) + halves(i1);
        let mut i = 0;
        while i < QUOTE {
            sum += halves(ld::<u32>(data, ERR_QUOTE + i));
            i += 4;
        }
        st(data, ERR_ICMP + ICMP_CHECK, !fold(sum));
    }
    1
}
