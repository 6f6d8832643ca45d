//! Packet access common to XDP and TC: direct reads and writes, and
//! checksum fixes (by hand in XDP; by the kernel's helpers in TC, which
//! also know CHECKSUM_PARTIAL).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_l3_csum_replace, bpf_l4_csum_replace},
    programs::{TcContext, XdpContext},
};

use crate::{csum::csum_replace, hdr::IPPROTO_UDP};

/// Which checksum a field change touches.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sum {
    /// The IPv4 header checksum.
    L3,
    /// A TCP/ICMP checksum, for a field in the packet.
    L4,
    /// A TCP checksum, for a field of the pseudo header (an address).
    L4Pseudo,
    /// A UDP checksum: zero means none and stays zero.
    Udp,
    UdpPseudo,
}

impl Sum {
    /// The transport checksum of `proto` for a field change, of the
    /// pseudo header (an address) or not (a port).
    #[inline(always)]
    pub fn of(proto: u8, pseudo: bool) -> Sum {
        match (proto == IPPROTO_UDP, pseudo) {
            (true, true) => Sum::UdpPseudo,
            (true, false) => Sum::Udp,
            (false, true) => Sum::L4Pseudo,
            (false, false) => Sum::L4,
        }
    }
}

/// A program's context as packet access. The NAT's BPF functions take
/// the raw context pointer (one register) and rebuild it with `from_raw`.
pub trait Pkt: EbpfContext {
    /// XDP (checksums by hand, no skb) or TC.
    const XDP: bool;
    /// # Safety
    /// `ctx` must be this program type's context.
    unsafe fn from_raw(ctx: *mut c_void) -> Self;
    /// The packet's `data` and `data_end`.
    fn bounds(&self) -> (usize, usize);
    /// The ifindex of the port it came in on.
    fn ingress(&self) -> u32;
    /// The frame's length, Ethernet header included (an skb's paged
    /// data too).
    fn len(&self) -> u32;
    /// The segment size of a GSO packet, 0 otherwise.
    #[inline(always)]
    fn gso_size(&self) -> u32 {
        0
    }
    /// Make the first `want` bytes (or the whole packet, if shorter)
    /// readable directly; XDP's always are. Moves the packet: bounds are
    /// read again after.
    #[inline(always)]
    fn linearize(&self, _want: u32) {}
    /// Fix the 16-bit checksum at `off` of kind `sum` for a `size`-byte
    /// field (2 or 4) going from `old` to `new`.
    fn csum(&self, off: usize, sum: Sum, old: u32, new: u32, size: u8);

    /// `T` at `off`, bounds checked on its own.
    #[inline(always)]
    fn rd<T: Copy>(&self, off: usize) -> Option<T> {
        let (data, end) = self.bounds();
        let p = at::<T>(data, end, off)?;
        // SAFETY: bounds checked by `at`.
        Some(unsafe { core::ptr::read_unaligned(p) })
    }

    /// Write `v` at `off`, bounds checked on its own: each write derives
    /// its pointer afresh, since TC's checksum helpers move the packet.
    #[inline(always)]
    fn wr<T: Copy>(&self, off: usize, v: T) {
        let (data, end) = self.bounds();
        if let Some(p) = at::<T>(data, end, off) {
            // SAFETY: bounds checked by `at`.
            unsafe { core::ptr::write_unaligned(p, v) }
        }
    }
}

#[inline(always)]
fn at<T>(data: usize, end: usize, off: usize) -> Option<*mut T> {
    if data + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((data + off) as *mut T)
}

/// Load at `data + off`; the caller has checked the bounds against the
/// same `data`.
#[inline(always)]
pub unsafe fn ld<T: Copy>(data: usize, off: usize) -> T {
    // SAFETY: per the contract above.
    unsafe { core::ptr::read_unaligned((data + off) as *const T) }
}

/// `from_raw` and `bounds`, the same but for the type: the contexts have
/// `new`, `data` and `data_end` as inherent methods, not from a trait.
macro_rules! ctx_access {
    ($ctx:ident) => {
        #[inline(always)]
        unsafe fn from_raw(ctx: *mut c_void) -> Self {
            $ctx::new(ctx.cast())
        }
        #[inline(always)]
        fn bounds(&self) -> (usize, usize) {
            (self.data(), self.data_end())
        }
    };
}

impl Pkt for XdpContext {
    const XDP: bool = true;
    ctx_access!(XdpContext);
    #[inline(always)]
    fn ingress(&self) -> u32 {
        self.ingress_ifindex() as u32
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }
    #[inline(always)]
    fn csum(&self, off: usize, sum: Sum, old: u32, new: u32, size: u8) {
        let udp = sum == Sum::Udp || sum == Sum::UdpPseudo;
        let (data, end) = self.bounds();
        let Some(p) = at::<u16>(data, end, off) else {
            return;
        };
        // SAFETY: bounds checked by `at`.
        unsafe {
            let check = core::ptr::read_unaligned(p);
            if udp && check == 0 {
                return;
            }
            let mut c = csum_replace(check, old, new, size);
            if udp && c == 0 {
                c = 0xffff;
            }
            core::ptr::write_unaligned(p, c);
        }
    }
}

impl Pkt for TcContext {
    const XDP: bool = false;
    ctx_access!(TcContext);
    #[inline(always)]
    fn ingress(&self) -> u32 {
        // SAFETY: reading a field of the context.
        unsafe { (*self.skb.skb).ingress_ifindex }
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
    #[inline(always)]
    fn gso_size(&self) -> u32 {
        // SAFETY: reading a field of the context.
        unsafe { (*self.skb.skb).gso_size }
    }
    #[inline(always)]
    fn linearize(&self, want: u32) {
        let want = self.len().min(want);
        if self.data() + want as usize > self.data_end() {
            let _ = self.pull_data(want);
        }
    }
    #[inline(always)]
    fn csum(&self, off: usize, sum: Sum, old: u32, new: u32, size: u8) {
        let flags = size as u64
            | match sum {
                Sum::L3 | Sum::L4 => 0,
                Sum::L4Pseudo => BPF_F_PSEUDO_HDR as u64,
                Sum::Udp => BPF_F_MARK_MANGLED_0 as u64,
                Sum::UdpPseudo => (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64,
            };
        // SAFETY: helper calls on our own skb.
        unsafe {
            if sum == Sum::L3 {
                bpf_l3_csum_replace(self.skb.skb, off as u32, old as u64, new as u64, flags);
            } else {
                bpf_l4_csum_replace(self.skb.skb, off as u32, old as u64, new as u64, flags);
            }
        }
    }
}
