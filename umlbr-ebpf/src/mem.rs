//! Zeroing and copying without memset or memmove: the BPF backend lowers
//! LLVM's calls to them into calls to a byte-wise loop, per packet when on
//! the fast path.

/// Zero `*p` by volatile word stores: LLVM merges plain zero stores into
/// a memset.
///
/// # Safety
/// `p` must be valid for writes and 4-byte aligned, `T` a multiple of 4
/// bytes of plain integers.
#[inline(always)]
pub unsafe fn zero_words<T>(p: *mut T) {
    let w = p.cast::<u32>();
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 4 {
        // SAFETY: per the contract above.
        unsafe { w.add(i).write_volatile(0) };
        i += 1;
    }
}

/// A next hop's dst and src MAC as words: copying a `[u8; 12]` costs a
/// call to the byte-wise memmove (seen in perf on every NAT packet), three
/// word moves do not.
pub type Hop = [u32; 3];

/// Copy a next hop word by word.
///
/// # Safety
/// Both pointers must be valid and 4-byte aligned.
#[inline(always)]
pub unsafe fn copy_hop(dst: *mut Hop, src: *const Hop) {
    let (d, s) = (dst.cast::<u32>(), src.cast::<u32>());
    // SAFETY: per the contract above; three words each.
    unsafe {
        d.write(s.read());
        d.add(1).write(s.add(1).read());
        d.add(2).write(s.add(2).read());
    }
}
