//! Masquerade in the datapath: guest flows leaving through the uplink get
//! the uplink's address and a port of ours; replies, and ICMP errors about
//! them, are translated back. XDP does it for what it can finish itself;
//! the TC program does the rest (CHECKSUM_PARTIAL and GSO skbs, next hops
//! whose neighbour entry is not resolved yet, uplinks without XDP tx).
//! What neither translates goes to the kernel's own forwarding and the
//! nftables masquerade rule umlbr installs beside it.
//!
//! Addresses and ports are kept as read from the packet (network byte
//! order) and checksums are updated incrementally (RFC 1624), which is
//! byte-order agnostic as long as old and new values are read alike.

use core::ffi::c_void;

use crate::hdr::*;
use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_l3_csum_replace, bpf_l4_csum_replace, bpf_sk_lookup_tcp,
        bpf_sk_lookup_udp, bpf_sk_release,
    },
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use umlbr_common::{
    NAT_F_ROUTE_MTU, NAT_F_XDP_TX, NAT_HOP_NS, NAT_MTU_ROUTES, NAT_S_FIN_IN, NAT_S_FIN_OUT,
    NAT_S_REPLIED, NAT_S_RST, NAT_S_SYN_OUT, NAT_SIZE, NAT_TRIES, NatConfig, NatIn, NatKey, NatOut,
    NatStats, nat_tcp_closed,
};

#[map(name = "UMLBR_NAT_OUT")]
static NAT_OUT: LruHashMap<NatKey, NatOut> = LruHashMap::with_max_entries(NAT_SIZE, 0);

#[map(name = "UMLBR_NAT_IN")]
static NAT_IN: LruHashMap<NatKey, NatIn> = LruHashMap::with_max_entries(NAT_SIZE, 0);

#[map(name = "UMLBR_NAT_CFG")]
static NAT_CONFIG: Array<NatConfig> = Array::with_max_entries(1, 0);

#[map(name = "UMLBR_NAT_STAT")]
static NAT_STATS: PerCpuArray<NatStats> = PerCpuArray::with_max_entries(1, 0);

/// MTUs of the routes out of the uplink that have one, by destination
/// prefix (address in network byte order).
#[map(name = "UMLBR_NAT_MTU")]
static NAT_MTU: LpmTrie<u32, u32> = LpmTrie::with_max_entries(NAT_MTU_ROUTES, 0);

const IP_OFF: usize = ETH_HLEN;
const L4_OFF: usize = ETH_HLEN + IP_HLEN;
const IP_CSUM: usize = IP_OFF + IP_CHECK;
const AF_INET: u8 = 2;

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

/// Packet access common to XDP and TC: direct reads and writes, and
/// checksum fixes (by hand in XDP; by the kernel's helpers in TC, which
/// also know CHECKSUM_PARTIAL).
pub trait Pkt {
    fn data(&self) -> usize;
    fn end(&self) -> usize;
    fn raw_ctx(&self) -> *mut c_void;
    /// The segment size of a GSO packet, 0 otherwise.
    fn gso_size(&self) -> u32;
    /// Fix the 16-bit checksum at `off` of kind `sum` for a `size`-byte
    /// field (2 or 4) going from `old` to `new`.
    fn csum(&self, off: usize, sum: Sum, old: u32, new: u32, size: u8);
}

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
    #[inline(always)]
    fn of(proto: u8, pseudo: bool) -> Sum {
        match (proto == IPPROTO_UDP, pseudo) {
            (true, true) => Sum::UdpPseudo,
            (true, false) => Sum::Udp,
            (false, true) => Sum::L4Pseudo,
            (false, false) => Sum::L4,
        }
    }
}

use crate::csum::fold;

/// RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m').
#[inline(always)]
pub fn csum16_replace(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

#[inline(always)]
pub fn csum_replace(check: u16, old: u32, new: u32, size: u8) -> u16 {
    let c = csum16_replace(check, old as u16, new as u16);
    if size == 4 {
        csum16_replace(c, (old >> 16) as u16, (new >> 16) as u16)
    } else {
        c
    }
}

#[inline(always)]
fn at<T>(data: usize, end: usize, off: usize) -> Option<*mut T> {
    if data + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((data + off) as *mut T)
}

impl Pkt for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn raw_ctx(&self) -> *mut c_void {
        self.ctx as *mut c_void
    }
    #[inline(always)]
    fn gso_size(&self) -> u32 {
        0
    }
    #[inline(always)]
    fn csum(&self, off: usize, sum: Sum, old: u32, new: u32, size: u8) {
        let udp = sum == Sum::Udp || sum == Sum::UdpPseudo;
        let Some(p) = at::<u16>(Pkt::data(self), Pkt::end(self), off) else {
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
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn raw_ctx(&self) -> *mut c_void {
        self.skb.skb as *mut c_void
    }
    #[inline(always)]
    fn gso_size(&self) -> u32 {
        // SAFETY: reading a field of the context.
        unsafe { (*self.skb.skb).gso_size }
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

/// Load at `data + off`; the caller has checked the bounds against the
/// same `data`.
#[inline(always)]
unsafe fn ld<T: Copy>(data: usize, off: usize) -> T {
    // SAFETY: per the contract above.
    unsafe { core::ptr::read_unaligned((data + off) as *const T) }
}

#[inline(always)]
fn rd<T: Copy>(pkt: &impl Pkt, off: usize) -> Option<T> {
    let p = at::<T>(pkt.data(), pkt.end(), off)?;
    // SAFETY: bounds checked by `at`.
    Some(unsafe { core::ptr::read_unaligned(p) })
}

#[inline(always)]
fn wr<T: Copy>(pkt: &impl Pkt, off: usize, v: T) {
    if let Some(p) = at::<T>(pkt.data(), pkt.end(), off) {
        // SAFETY: bounds checked by `at`.
        unsafe { core::ptr::write_unaligned(p, v) }
    }
}

/// Offset of the checksum of a TCP, UDP or ICMP header at L4_OFF.
#[inline(always)]
fn l4_csum_off(proto: u8) -> usize {
    L4_OFF + l4_check(proto)
}

/// Decrement the TTL as a router does (the caller checked it is > 1).
#[inline(always)]
fn dec_ttl(pkt: &impl Pkt, ttl_word: u16) {
    wr::<u16>(pkt, IP_OFF + IP_TTL, ttl_word.wrapping_sub(1));
    pkt.csum(
        IP_CSUM,
        Sum::L3,
        ttl_word as u32,
        ttl_word.wrapping_sub(1) as u32,
        2,
    );
}

/// Where the NAT step sends a packet.
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
}

// BPF-to-BPF calls return one register: verdicts travel as u64.
const OUT_NOT_NAT: u64 = 0;
const OUT_TO_TC: u64 = 1;
const OUT_REDIRECT: u64 = 2 << 32;
const OUT_NEIGH: u64 = 3 << 32;

impl Out {
    #[inline(always)]
    fn decode(v: u64) -> Out {
        match v >> 32 {
            2 => Out::Redirect(v as u32),
            3 => Out::RedirectNeigh(v as u32),
            _ if v == OUT_TO_TC => Out::ToTc,
            _ => Out::NotNat,
        }
    }
}

/// A guest's IPv4 packet to the gateway's MAC for outside the subnet,
/// while the uplink takes no XDP frames: TC's to translate (or to hand to
/// the kernel).
#[inline(always)]
pub fn for_tc_uplink(data: usize, end: usize, cfg: &NatConfig) -> bool {
    if cfg.flags & NAT_F_XDP_TX != 0 || data + IP_OFF + IP_HLEN > end {
        return false;
    }
    // SAFETY: 34 bytes checked above.
    let (dst, ethtype, daddr) = unsafe {
        (
            ld::<[u8; 6]>(data, 0),
            ld::<u16>(data, ETH_TYPE),
            ld::<u32>(data, IP_OFF + IP_DADDR),
        )
    };
    dst == cfg.gw_mac
        && ethtype == ETH_P_IP
        && daddr & cfg.mask != cfg.subnet
        && daddr != cfg.nat_addr
}

/// Translate a guest packet addressed to the gateway's MAC (XDP).
#[inline(always)]
pub fn out_xdp(ctx: &XdpContext, cfg: &NatConfig, guest_mac: &[u8; 6]) -> Out {
    Out::decode(out_xdp_sub(ctx.ctx as *mut c_void, cfg, guest_mac))
}

/// Translate a guest packet addressed to the gateway's MAC (TC).
#[inline(always)]
pub fn out_tc(ctx: &TcContext, cfg: &NatConfig, guest_mac: &[u8; 6]) -> Out {
    Out::decode(out_tc_sub(ctx.skb.skb as *mut c_void, cfg, guest_mac))
}

// Separate BPF functions keep each one's stack within the 512-byte limit.
#[inline(never)]
fn out_xdp_sub(ctx: *mut c_void, cfg: &NatConfig, guest_mac: &[u8; 6]) -> u64 {
    let ctx = XdpContext::new(ctx as *mut aya_ebpf::bindings::xdp_md);
    out(&ctx, cfg, *guest_mac, true)
}

#[inline(never)]
fn out_tc_sub(ctx: *mut c_void, cfg: &NatConfig, guest_mac: &[u8; 6]) -> u64 {
    let ctx = TcContext::new(ctx as *mut aya_ebpf::bindings::__sk_buff);
    out(&ctx, cfg, *guest_mac, false)
}

/// Translate a guest packet addressed to the gateway's MAC, if it leaves
/// through the masquerade uplink.
#[inline(always)]
fn out(pkt: &impl Pkt, cfg: &NatConfig, guest_mac: [u8; 6], xdp: bool) -> u64 {
    // See `inbound` on why reads are checked once and then plain.
    let (data, end) = (pkt.data(), pkt.end());
    if data + L4_OFF + UDP_HLEN > end {
        return OUT_NOT_NAT;
    }
    // SAFETY: 42 bytes checked above.
    let (ethtype, vihl, frag, ttl, proto, saddr, daddr, tot, ports) = unsafe {
        (
            ld::<u16>(data, ETH_TYPE),
            ld::<u8>(data, IP_OFF + IP_VIHL),
            ld::<u16>(data, IP_OFF + IP_FRAG),
            ld::<u8>(data, IP_OFF + IP_TTL),
            ld::<u8>(data, IP_OFF + IP_PROTO),
            ld::<u32>(data, IP_OFF + IP_SADDR),
            ld::<u32>(data, IP_OFF + IP_DADDR),
            ld::<u16>(data, IP_OFF + IP_TOT_LEN),
            ld::<u32>(data, L4_OFF + L4_PORTS),
        )
    };
    if ethtype != ETH_P_IP {
        return OUT_NOT_NAT;
    }
    // Inside the guest subnet or to the host itself: plain switching.
    if daddr & cfg.mask == cfg.subnet || daddr == cfg.nat_addr {
        return OUT_NOT_NAT;
    }
    // An uplink that takes no XDP frames (a veth): the TC program does all
    // of it, so XDP spares its route and MTU lookups (measured: the NAT
    // veth rows of bench/).
    if xdp && cfg.flags & NAT_F_XDP_TX == 0 {
        return OUT_TO_TC;
    }
    // IP options, fragments and expiring TTLs are the kernel's business.
    if vihl != IP_VIHL_PLAIN || u16::from_be(frag) & IP_FRAG_MASK != 0 || ttl <= 1 {
        count(|s| s.slow_path += 1);
        return OUT_NOT_NAT;
    }
    let mut req = Flow {
        proto,
        tcp_flags: 0,
        sport: ports as u16,
        dport: (ports >> 16) as u16,
        tot_len: u16::from_be(tot),
        saddr,
        daddr,
        mac: guest_mac,
    };
    let mut l4_hlen = 8u32;
    let port_off = if proto == IPPROTO_TCP {
        if data + L4_OFF + TCP_HLEN > end {
            return OUT_NOT_NAT;
        }
        // SAFETY: checked just above.
        let (doff, flags) = unsafe {
            (
                ld::<u8>(data, L4_OFF + TCP_DOFF),
                ld::<u8>(data, L4_OFF + TCP_FLAGS),
            )
        };
        req.tcp_flags = flags;
        l4_hlen = ((doff >> 4) as u32) * 4;
        L4_OFF
    } else if proto == IPPROTO_UDP {
        L4_OFF
    } else if proto == IPPROTO_ICMP && ports as u8 == ICMP_ECHO {
        // SAFETY: 42 bytes checked above.
        req.sport = unsafe { ld::<u16>(data, L4_OFF + ICMP_ECHO_ID) };
        req.dport = 0;
        L4_OFF + ICMP_ECHO_ID
    } else {
        count(|s| s.slow_path += 1);
        return OUT_NOT_NAT;
    };
    // A CHECKSUM_PARTIAL packet (a vnet-header guest's offload) holds only
    // the pseudo-header sum, which XDP cannot finish: TC's. Checked here,
    // on headers already parsed, instead of by csum::looks_partial before
    // the switch (measured: its own parse and call cost ~40 ns a packet).
    if xdp && proto != IPPROTO_ICMP && req.tot_len >= 20 {
        // SAFETY: the checksum field is within the bytes checked above
        // (42 for UDP, 54 for TCP).
        let check = unsafe { ld::<u16>(data, l4_csum_off(proto)) };
        let (s, d) = (u32::from_be(saddr), u32::from_be(daddr));
        let pseudo = fold(
            (s >> 16)
                + (s & 0xffff)
                + (d >> 16)
                + (d & 0xffff)
                + proto as u32
                + (req.tot_len - 20) as u32,
        );
        if u16::from_be(check) == pseudo {
            return OUT_TO_TC;
        }
    }
    // A GSO packet leaves as segments of gso_size behind the same headers:
    // those must fit, not the super-packet.
    let gso = pkt.gso_size();
    if gso != 0 {
        req.tot_len = (20 + l4_hlen + gso).min(req.tot_len as u32) as u16;
    }
    // Too big for the uplink or a route's MTU: the kernel's path answers
    // "fragmentation needed" (or fragments) as a router does.
    let mut mtu = cfg.mtu;
    if cfg.flags & NAT_F_ROUTE_MTU != 0
        && let Some(m) = NAT_MTU.get(Key::new(32, daddr))
    {
        mtu = mtu.min(*m);
    }
    if mtu != 0 && req.tot_len as u32 > mtu {
        count(|s| s.slow_path += 1);
        return OUT_NOT_NAT;
    }
    // An established flow with a fresh cached next hop skips the route
    // lookup, the costliest step (bench/: NAT rows).
    let now = crate::fdb::now();
    // The next hop's dst and src MAC. Left uninitialised: both ways below
    // write it before it is read, and zeroing it costs a call to the BPF
    // backend's byte-wise memset on every packet.
    let mut macs = core::mem::MaybeUninit::<Hop>::uninit();
    let found = mapping_find(cfg, &req, now, macs.as_mut_ptr());
    let (nat_port, neigh) = if found & FOUND_HOP != 0 {
        (found & 0xffff, false)
    } else {
        let r = route(pkt.raw_ctx(), cfg, &req, macs.as_mut_ptr());
        let (ret, oif) = ((r >> 32) as u32, r as u32);
        let neigh = if ret == BPF_FIB_LKUP_RET_SUCCESS && oif == cfg.nat_ifindex {
            false
        } else if ret == BPF_FIB_LKUP_RET_NO_NEIGH && oif == cfg.nat_ifindex {
            true
        } else {
            // Not routed via the uplink (or needs fragmenting): the kernel.
            count(|s| s.slow_path += 1);
            return OUT_NOT_NAT;
        };
        if xdp && neigh {
            return OUT_TO_TC;
        }
        // An unresolved neighbour is not cached: TC's redirect_neigh
        // resolves it, and the next packet looks again.
        // A new mapping is stored with its hop (one insert, no second
        // lookup); an existing one gets the fresh hop stored.
        let hop = if neigh {
            core::ptr::null()
        } else {
            macs.as_ptr()
        };
        let port = if found != 0 {
            if !neigh {
                store_hop(&req, hop, now);
            }
            found
        } else {
            mapping_new(pkt.raw_ctx(), cfg, &req, hop, now)
        };
        (port, neigh)
    };
    if nat_port == NO_MAPPING {
        count(|s| s.slow_path += 1);
        return OUT_NOT_NAT;
    }
    if nat_port == 0 {
        count(|s| s.slow_path += 1);
        // One line at the 1st, 2nd, 4th, 8th... failure on this CPU:
        // visible in `umlbr log`, without flooding the log ring. (Called
        // from here, not from mapping_new, to keep the call chain's stack
        // within 512 bytes.)
        if let Some(st) = stats()
            && st.alloc_fail != 0
            && st.alloc_fail & (st.alloc_fail - 1) == 0
        {
            log_no_port(cfg, &req, st.alloc_fail);
        }
        return OUT_NOT_NAT;
    }
    let (nat_port, sport) = (nat_port as u16, req.sport);
    let csum_off = l4_csum_off(proto);
    let Some(ttl_word) = rd::<u16>(pkt, IP_OFF + IP_TTL) else {
        return OUT_NOT_NAT;
    };
    // Each write re-derives its pointer: TC's checksum helpers move the
    // packet, so none is kept across them.
    wr::<u32>(pkt, IP_OFF + IP_SADDR, cfg.nat_addr);
    pkt.csum(IP_CSUM, Sum::L3, saddr, cfg.nat_addr, 4);
    if proto != IPPROTO_ICMP {
        pkt.csum(csum_off, Sum::of(proto, true), saddr, cfg.nat_addr, 4);
    }
    wr::<u16>(pkt, port_off, nat_port);
    pkt.csum(
        csum_off,
        Sum::of(proto, false),
        sport as u32,
        nat_port as u32,
        2,
    );
    dec_ttl(pkt, ttl_word);
    if !neigh {
        // SAFETY: written by mapping_find (FOUND_HOP) or route (resolved).
        wr::<Hop>(pkt, 0, unsafe { macs.assume_init() });
    }
    if xdp {
        count(|s| s.out_xdp += 1);
    } else {
        count(|s| s.out_tc += 1);
    }
    if neigh {
        OUT_NEIGH | cfg.nat_ifindex as u64
    } else {
        OUT_REDIRECT | cfg.nat_ifindex as u64
    }
}

/// Route lookup for a guest flow entering the host through the bridge's
/// interface: result << 32 | output ifindex (all ones on a helper error);
/// `macs` gets dst and src MACs.
#[inline(never)]
fn route(ctx: *mut c_void, cfg: &NatConfig, f: &Flow, macs: *mut Hop) -> u64 {
    let mut fib = core::mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    let p = fib.as_mut_ptr();
    // SAFETY: `p` is our own stack slot: zeroed word by word, then the
    // fields that are not zero set; the helper gets it whole.
    let ret = unsafe {
        zero_words(p);
        (*p).family = AF_INET;
        (*p).l4_protocol = f.proto;
        (*p).sport = if f.proto == IPPROTO_ICMP { 0 } else { f.sport };
        (*p).dport = f.dport;
        (*p).__bindgen_anon_1.tot_len = f.tot_len;
        (*p).ifindex = cfg.host_ifindex;
        (*p).__bindgen_anon_3.ipv6_src[0] = f.saddr;
        (*p).__bindgen_anon_4.ipv6_dst[0] = f.daddr;
        fib_lookup(ctx, p, core::mem::size_of::<bpf_fib_lookup>() as i32, 0)
    };
    // SAFETY: the caller's Hop, written whatever the result.
    unsafe {
        let m = macs.cast::<[u8; 6]>();
        m.write((*p).dmac);
        m.add(1).write((*p).smac);
    }
    if ret < 0 {
        return u64::MAX;
    }
    // SAFETY: initialised above, and the helper only writes it.
    (ret as u64) << 32 | unsafe { (*p).ifindex } as u64
}

#[inline(always)]
fn tcp_state_out(flags: u8) -> u16 {
    let mut s = 0;
    if flags & TCP_SYN != 0 {
        s |= NAT_S_SYN_OUT;
    }
    if flags & TCP_FIN != 0 {
        s |= NAT_S_FIN_OUT;
    }
    if flags & TCP_RST != 0 {
        s |= NAT_S_RST;
    }
    s
}

#[inline(always)]
fn tcp_state_in(flags: u8) -> u16 {
    let mut s = NAT_S_REPLIED;
    if flags & TCP_FIN != 0 {
        s |= NAT_S_FIN_IN;
    }
    if flags & TCP_RST != 0 {
        s |= NAT_S_RST;
    }
    s
}

/// The shortest time a mapping of `proto` may stay idle, whatever its state.
#[inline(always)]
fn min_timeout_ns(cfg: &NatConfig, proto: u8) -> u64 {
    match proto {
        IPPROTO_TCP => cfg
            .tcp_closing_ns
            .min(cfg.tcp_transitory_ns)
            .min(cfg.tcp_established_ns),
        IPPROTO_UDP => cfg.udp_ns.min(cfg.udp_stream_ns),
        _ => cfg.icmp_ns,
    }
}

#[inline(always)]
fn live(cfg: &NatConfig, proto: u8, e: &NatIn, now: u64) -> bool {
    now.wrapping_sub(e.last_seen_ns) <= cfg.timeout_ns(proto, e.state)
}

/// Refresh a mapping: state bits at once, the time at most once a second
/// per flow (a busy flow should not dirty the entry on every packet).
#[inline(always)]
fn touch(e: &mut NatIn, now: u64, state: u16) {
    if state & NAT_S_SYN_OUT != 0 && nat_tcp_closed(e.state) {
        // A new SYN on a reset or closed mapping starts it afresh.
        e.state = NAT_S_SYN_OUT;
        e.last_seen_ns = now;
        return;
    }
    if e.state | state != e.state {
        e.state |= state;
    }
    if now.wrapping_sub(e.last_seen_ns) > 1_000_000_000 {
        e.last_seen_ns = now;
    }
}

/// Whether a host socket would take a reply from `raddr:rport` to
/// `laddr:lport`: such a port is not ours to hand out.
#[inline(always)]
fn host_socket(
    ctx: *mut c_void,
    proto: u8,
    raddr: u32,
    rport: u16,
    laddr: u32,
    lport: u16,
) -> bool {
    if proto == IPPROTO_ICMP {
        return false;
    }
    let mut t = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: raddr,
                daddr: laddr,
                sport: rport,
                dport: lport,
            },
        },
    };
    let size = 12u32;
    // SAFETY: valid ctx and tuple; the socket is released at once.
    unsafe {
        let sk = if proto == IPPROTO_TCP {
            bpf_sk_lookup_tcp(ctx, &mut t, size, u64::MAX, 0)
        } else {
            bpf_sk_lookup_udp(ctx, &mut t, size, u64::MAX, 0)
        };
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk as *mut c_void);
    }
    true
}

/// A guest flow looking for its mapping.
#[repr(C)]
struct Flow {
    proto: u8,
    tcp_flags: u8,
    sport: u16,
    dport: u16,
    /// IPv4 total length (host order), for the route's MTU check.
    tot_len: u16,
    saddr: u32,
    daddr: u32,
    mac: [u8; 6],
}

/// `mapping_new`: the flow is not to be mapped (the kernel's path).
const NO_MAPPING: u32 = 1 << 16;
/// `mapping_find`: the mapping's cached next hop is fresh (in `macs`).
const FOUND_HOP: u32 = 1 << 17;

#[inline(always)]
fn out_key(f: &Flow) -> NatKey {
    NatKey::new(f.proto, f.saddr, f.sport, f.daddr, f.dport)
}

#[inline(always)]
fn flow_state(f: &Flow) -> u16 {
    if f.proto == IPPROTO_TCP {
        tcp_state_out(f.tcp_flags)
    } else {
        0
    }
}

/// The outside port (network byte order) of the flow's live mapping,
/// refreshed, with FOUND_HOP and the next hop in `macs` if the cached
/// one is fresh; 0 if the flow has no live mapping (an expired one is
/// removed).
#[inline(never)]
fn mapping_find(cfg: &NatConfig, f: &Flow, now: u64, macs: *mut Hop) -> u32 {
    let okey = out_key(f);
    let Some(op) = NAT_OUT.get_ptr(okey) else {
        return 0;
    };
    // SAFETY: pointer into the map value; the fields are read once each.
    let (port, hop_ns, addr) = unsafe { ((*op).port, (*op).hop_ns, (*op).addr) };
    let state = flow_state(f);
    let hop_fresh = hop_ns != 0 && now.wrapping_sub(hop_ns) <= NAT_HOP_NS;
    // A fresh hop means that this check ran in full (inbound entry found
    // live, and refreshed) under NAT_HOP_NS ago, so the mapping's time
    // lags by at most twice that: skip the inbound lookup when no timeout
    // is near that short and the packet changes no state. (Replies
    // refresh it on their own.)
    if hop_fresh && state == 0 && min_timeout_ns(cfg, f.proto) > 4 * NAT_HOP_NS {
        // SAFETY: the caller's Hop; `hop` is word aligned in the value.
        unsafe { copy_hop(macs, (*op).hop.as_ptr().cast()) };
        return port as u32 | FOUND_HOP;
    }
    let ikey = NatKey::new(f.proto, addr, port, f.daddr, f.dport);
    if let Some(i) = NAT_IN.get_ptr_mut(ikey) {
        // SAFETY: pointer into the map value.
        let i = unsafe { &mut *i };
        if i.addr == f.saddr && i.port == f.sport && live(cfg, f.proto, i, now) {
            touch(i, now, state);
            if hop_fresh {
                // SAFETY: as above.
                unsafe { copy_hop(macs, (*op).hop.as_ptr().cast()) };
                return port as u32 | FOUND_HOP;
            }
            return port as u32;
        }
        if i.addr == f.saddr && i.port == f.sport {
            let _ = NAT_IN.remove(ikey);
        }
    }
    let _ = NAT_OUT.remove(okey);
    count(|s| s.expired += 1);
    0
}

/// Cache a route lookup's next hop in the flow's mapping.
#[inline(never)]
fn store_hop(f: &Flow, macs: *const Hop, now: u64) {
    if let Some(o) = NAT_OUT.get_ptr_mut(out_key(f)) {
        // SAFETY: pointer into the map value; a racing CPU stores the same.
        // `hop` sits at offset 8 of a map value, so it is word aligned;
        // `macs` is the caller's written Hop.
        unsafe {
            let o = &mut *o;
            copy_hop(o.hop.as_mut_ptr().cast(), macs);
            o.hop_ns = now;
        }
    }
}

/// Zero `*p` by volatile word stores: LLVM merges plain zero stores into
/// a memset, which the BPF backend emits as a call to a byte-wise loop.
///
/// # Safety
/// `p` must be valid for writes and 4-byte aligned, `T` a multiple of 4
/// bytes of plain integers.
#[inline(always)]
unsafe fn zero_words<T>(p: *mut T) {
    let w = p.cast::<u32>();
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 4 {
        // SAFETY: per the contract above.
        unsafe { w.add(i).write_volatile(0) };
        i += 1;
    }
}

/// A next hop's dst and src MAC as words: copying a `[u8; 12]` costs a
/// call to the BPF backend's byte-wise memmove (seen in perf on every
/// NAT packet), three word moves do not.
type Hop = [u32; 3];

/// Copy a next hop word by word. Both pointers must be 4-byte aligned.
#[inline(always)]
unsafe fn copy_hop(dst: *mut Hop, src: *const Hop) {
    let (d, s) = (dst.cast::<u32>(), src.cast::<u32>());
    // SAFETY: per the contract above; three words each.
    unsafe {
        d.write(s.read());
        d.add(1).write(s.add(1).read());
        d.add(2).write(s.add(2).read());
    }
}

/// A new mapping for a flow that has none: its outside port (network byte
/// order), 0 if no port is free, NO_MAPPING if the flow must not get one.
#[inline(never)]
fn mapping_new(ctx: *mut c_void, cfg: &NatConfig, f: &Flow, hop: *const Hop, now: u64) -> u32 {
    // A TCP flow gets a mapping only from its first SYN: a flow that began
    // on the kernel's path (before the masquerade was attached, or while
    // the port range was full) stays there instead of changing its source
    // port mid-stream.
    if f.proto == IPPROTO_TCP && f.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return NO_MAPPING;
    }
    let range = (cfg.port_hi as u32).wrapping_sub(cfg.port_lo as u32) + 1;
    if cfg.port_hi < cfg.port_lo || range == 0 {
        count(|s| s.alloc_fail += 1);
        return 0;
    }
    let mut h = f.saddr ^ f.daddr.rotate_left(7) ^ ((f.sport as u32) << 16 | f.dport as u32);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    let mut i = 0u32;
    let mut claimed = None;
    while i < NAT_TRIES {
        // Probe i: a fresh hash of (flow, i), so no range size makes the
        // probes repeat a few ports.
        let mut p = h ^ i.wrapping_mul(0x9e37_79b9);
        p ^= p >> 16;
        p = p.wrapping_mul(0x85eb_ca6b);
        p ^= p >> 13;
        let cand = (cfg.port_lo as u32 + p % range) as u16;
        let cand = cand.to_be();
        i += 1;
        if host_socket(ctx, f.proto, f.daddr, f.dport, cfg.nat_addr, cand) {
            continue;
        }
        // Claim first, look second: a free port (the usual case) costs
        // one walk of its bucket instead of a lookup and then an insert.
        if insert_in(cfg, f, cand, now)
            || port_free(cfg, f, cand, now) && insert_in(cfg, f, cand, now)
        {
            claimed = Some(cand);
            break;
        }
    }
    let Some(cand) = claimed else {
        count(|s| s.alloc_fail += 1);
        return 0;
    };
    if !insert_out(cfg, f, cand, hop, now) {
        count(|s| s.alloc_fail += 1);
        return 0;
    }
    count(|s| s.allocs += 1);
    cand as u32
}

#[inline(always)]
fn in_key(cfg: &NatConfig, f: &Flow, port: u16) -> NatKey {
    NatKey::new(f.proto, cfg.nat_addr, port, f.daddr, f.dport)
}

/// Whether outside port `cand` (network byte order) is free of live
/// mappings for the flow's remote end; an expired mapping on it is
/// retired.
// mapping_new's steps are BPF functions of their own: inlined into its
// loop, their spills took the call chain past the 512-byte stack limit.
#[inline(never)]
fn port_free(cfg: &NatConfig, f: &Flow, cand: u16, now: u64) -> bool {
    let ikey = in_key(cfg, f, cand);
    let Some(e) = NAT_IN.get_ptr(ikey) else {
        return true;
    };
    // SAFETY: pointer into the map value, read in place.
    let e = unsafe { &*e };
    if live(cfg, f.proto, e, now) {
        return false;
    }
    let stale = NatKey::new(f.proto, e.addr, e.port, f.daddr, f.dport);
    let _ = NAT_OUT.remove(stale);
    let _ = NAT_IN.remove(ikey);
    count(|s| s.expired += 1);
    true
}

/// Claim outside port `cand` with the flow's inbound entry; false if a
/// racing CPU took it first.
#[inline(never)]
fn insert_in(cfg: &NatConfig, f: &Flow, cand: u16, now: u64) -> bool {
    let fresh = NatIn {
        addr: f.saddr,
        port: f.sport,
        state: flow_state(f),
        mac: f.mac,
        _pad: [0; 2],
        last_seen_ns: now,
        created_ns: now,
    };
    NAT_IN.insert(in_key(cfg, f, cand), fresh, 1).is_ok()
}

/// The flow's outbound entry for outside port `cand`; on failure the
/// inbound entry is taken back.
#[inline(never)]
fn insert_out(cfg: &NatConfig, f: &Flow, cand: u16, hop: *const Hop, now: u64) -> bool {
    // Zeroed by words: a `hop: [0; 12]` initialiser is a memset call on
    // every new flow.
    let mut o = core::mem::MaybeUninit::<NatOut>::uninit();
    // SAFETY: our own stack slot; NatOut is 32 bytes of integers. (Passed
    // by reference: a copy of it by value brings the memset back.)
    let o = unsafe {
        zero_words(o.as_mut_ptr());
        (*o.as_mut_ptr()).addr = cfg.nat_addr;
        (*o.as_mut_ptr()).port = cand;
        if !hop.is_null() {
            copy_hop((*o.as_mut_ptr()).hop.as_mut_ptr().cast(), hop);
            (*o.as_mut_ptr()).hop_ns = now;
        }
        &*o.as_ptr()
    };
    if NAT_OUT.insert(out_key(f), o, 0).is_ok() {
        return true;
    }
    let _ = NAT_IN.remove(in_key(cfg, f, cand));
    false
}

#[inline(never)]
fn log_no_port(cfg: &NatConfig, f: &Flow, failures: u64) {
    aya_log_ebpf::warn!(
        &(),
        "NAT port range {}-{} exhausted: no port for proto {} {:i}:{} -> {:i}:{} ({} failures on this CPU so far)",
        cfg.port_lo,
        cfg.port_hi,
        f.proto,
        u32::from_be(f.saddr),
        u16::from_be(f.sport),
        u32::from_be(f.daddr),
        u16::from_be(f.dport),
        failures
    );
}

/// Where a packet from the masquerade uplink goes.
pub enum In {
    /// Not a reply to a mapping: the host's own.
    Host,
    /// Translated for the guest with this MAC (MACs set).
    Guest([u8; 6]),
}

const IN_GUEST: u64 = 1 << 48;

impl In {
    #[inline(always)]
    fn decode(v: u64) -> In {
        if v & IN_GUEST == 0 {
            return In::Host;
        }
        let b = v.to_le_bytes();
        In::Guest([b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

/// Translate a reply arriving on the masquerade uplink (XDP).
#[inline(always)]
pub fn inbound_xdp(ctx: &XdpContext, cfg: &NatConfig) -> In {
    In::decode(inbound_xdp_sub(ctx.ctx as *mut c_void, cfg))
}

/// Translate a reply arriving on the masquerade uplink (TC).
#[inline(always)]
pub fn inbound_tc(ctx: &TcContext, cfg: &NatConfig) -> In {
    In::decode(inbound_tc_sub(ctx.skb.skb as *mut c_void, cfg))
}

#[inline(never)]
fn inbound_xdp_sub(ctx: *mut c_void, cfg: &NatConfig) -> u64 {
    let ctx = XdpContext::new(ctx as *mut aya_ebpf::bindings::xdp_md);
    inbound(&ctx, cfg, true)
}

#[inline(never)]
fn inbound_tc_sub(ctx: *mut c_void, cfg: &NatConfig) -> u64 {
    let ctx = TcContext::new(ctx as *mut aya_ebpf::bindings::__sk_buff);
    inbound(&ctx, cfg, false)
}

/// Translate a reply (or an ICMP error about a mapping) arriving on the
/// masquerade uplink.
#[inline(always)]
fn inbound(pkt: &impl Pkt, cfg: &NatConfig, xdp: bool) -> u64 {
    // One bounds check per shape, then plain loads from the same `data`:
    // branchy Option reads let the compiler correlate paths the verifier
    // cannot follow.
    let (data, end) = (pkt.data(), pkt.end());
    if data + L4_OFF + UDP_HLEN > end {
        return 0;
    }
    // SAFETY: 42 bytes checked above.
    let (ethtype, vihl, frag, ttl, proto, saddr, daddr) = unsafe {
        (
            ld::<u16>(data, ETH_TYPE),
            ld::<u8>(data, IP_OFF + IP_VIHL),
            ld::<u16>(data, IP_OFF + IP_FRAG),
            ld::<u8>(data, IP_OFF + IP_TTL),
            ld::<u8>(data, IP_OFF + IP_PROTO),
            ld::<u32>(data, IP_OFF + IP_SADDR),
            ld::<u32>(data, IP_OFF + IP_DADDR),
        )
    };
    if ethtype != ETH_P_IP || daddr != cfg.nat_addr || vihl != IP_VIHL_PLAIN {
        return 0;
    }
    if u16::from_be(frag) & IP_FRAG_MASK != 0 || ttl <= 1 {
        return 0;
    }
    // The key of the mapping, and where the translated port sits.
    let mut key = NatKey::new(proto, cfg.nat_addr, 0, saddr, 0);
    let mut port_off = L4_OFF + ICMP_CHECK;
    let mut icmp_err = false;
    let mut tcp_flags = 0u8;
    if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
        // SAFETY: 42 bytes checked above.
        let ports = unsafe { ld::<u32>(data, L4_OFF + L4_PORTS) };
        key.remote_port = ports as u16;
        key.local_port = (ports >> 16) as u16;
        if proto == IPPROTO_TCP {
            if data + L4_OFF + TCP_HLEN > end {
                return 0;
            }
            // SAFETY: checked just above.
            tcp_flags = unsafe { ld::<u8>(data, L4_OFF + TCP_FLAGS) };
        }
    } else if proto == IPPROTO_ICMP {
        // SAFETY: 42 bytes checked above.
        let (ty, id) = unsafe {
            (
                ld::<u8>(data, L4_OFF),
                ld::<u16>(data, L4_OFF + ICMP_ECHO_ID),
            )
        };
        if ty == ICMP_ECHOREPLY {
            key.local_port = id;
            port_off = L4_OFF + ICMP_ECHO_ID;
        } else if ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED || ty == ICMP_PARAMETERPROB {
            // The offending packet's header: it left as nat_addr:port.
            const IN_IP: usize = L4_OFF + ICMP_HLEN;
            const IN_L4: usize = IN_IP + IP_HLEN;
            if data + IN_L4 + UDP_HLEN > end {
                return 0;
            }
            // SAFETY: checked just above.
            let (ivihl, iproto, isaddr, idaddr, iports, iid) = unsafe {
                (
                    ld::<u8>(data, IN_IP + IP_VIHL),
                    ld::<u8>(data, IN_IP + IP_PROTO),
                    ld::<u32>(data, IN_IP + IP_SADDR),
                    ld::<u32>(data, IN_IP + IP_DADDR),
                    ld::<u32>(data, IN_L4),
                    ld::<u16>(data, IN_L4 + ICMP_ECHO_ID),
                )
            };
            if ivihl != IP_VIHL_PLAIN || isaddr != cfg.nat_addr {
                return 0;
            }
            key.proto = iproto;
            key.remote_addr = idaddr;
            icmp_err = true;
            if iproto == IPPROTO_TCP || iproto == IPPROTO_UDP {
                key.local_port = iports as u16;
                key.remote_port = (iports >> 16) as u16;
                port_off = IN_L4;
            } else if iproto == IPPROTO_ICMP {
                key.local_port = iid;
                port_off = IN_L4 + ICMP_ECHO_ID;
            } else {
                return 0;
            }
        } else {
            return 0;
        }
    } else {
        return 0;
    }
    let now = crate::fdb::now();
    let Some(e) = NAT_IN.get_ptr_mut(key) else {
        count(|s| s.in_miss += 1);
        return 0;
    };
    // SAFETY: pointer into the map value.
    let e = unsafe { &mut *e };
    if !live(cfg, key.proto, e, now) {
        count(|s| s.in_miss += 1);
        return 0;
    }
    // XDP cannot flood to the guests alone (a devmap broadcast would reach
    // the host port too): a reply for a guest whose MAC aged out of the
    // FDB is left, untouched, to TC, which translates and floods it.
    if xdp
        && !matches!(
            crate::fdb::lookup(&crate::FDB, e.mac, now, crate::config().aging_ns),
            Some((_, false))
        )
    {
        return 0;
    }
    if !icmp_err {
        let st = if proto == IPPROTO_TCP {
            tcp_state_in(tcp_flags)
        } else {
            NAT_S_REPLIED
        };
        touch(e, now, st);
    }
    let (gaddr, gport, gmac) = (e.addr, e.port, e.mac);
    let Some(ttl_word) = rd::<u16>(pkt, IP_OFF + IP_TTL) else {
        return 0;
    };
    let Some(old_port) = rd::<u16>(pkt, port_off) else {
        return 0;
    };
    // ICMP errors: the checksum to fix is the ICMP one, which has no pseudo
    // header; the inner header's source (nat_addr, like the outer
    // destination) and its checksum change too.
    let (csum_off, sum_proto) = if icmp_err {
        (L4_OFF + ICMP_CHECK, IPPROTO_ICMP)
    } else {
        (l4_csum_off(proto), proto)
    };
    wr::<u32>(pkt, IP_OFF + IP_DADDR, gaddr);
    pkt.csum(IP_CSUM, Sum::L3, daddr, gaddr, 4);
    if icmp_err {
        const IN_IP: usize = L4_OFF + ICMP_HLEN;
        let Some(old_icsum) = rd::<u16>(pkt, IN_IP + IP_CHECK) else {
            return 0;
        };
        let new_icsum = csum_replace(old_icsum, daddr, gaddr, 4);
        wr::<u32>(pkt, IN_IP + IP_SADDR, gaddr);
        wr::<u16>(pkt, IN_IP + IP_CHECK, new_icsum);
        pkt.csum(csum_off, Sum::L4, daddr, gaddr, 4);
        pkt.csum(csum_off, Sum::L4, old_icsum as u32, new_icsum as u32, 2);
        // The quoted transport checksum too, as Linux's NAT does, where the
        // quote holds it: it covers the inner source (UDP, TCP) and port.
        let in_l4 = IN_IP + IP_HLEN;
        let l4sum_off = in_l4 + l4_check(key.proto);
        let pseudo = key.proto == IPPROTO_UDP || key.proto == IPPROTO_TCP;
        if let Some(old_l4) = rd::<u16>(pkt, l4sum_off)
            && !(key.proto == IPPROTO_UDP && old_l4 == 0)
        {
            let mut new_l4 = if pseudo {
                csum_replace(old_l4, daddr, gaddr, 4)
            } else {
                old_l4
            };
            new_l4 = csum_replace(new_l4, old_port as u32, gport as u32, 2);
            if key.proto == IPPROTO_UDP && new_l4 == 0 {
                new_l4 = 0xffff;
            }
            wr::<u16>(pkt, l4sum_off, new_l4);
            pkt.csum(csum_off, Sum::L4, old_l4 as u32, new_l4 as u32, 2);
        }
        count(|s| s.icmp_errors += 1);
    } else if proto != IPPROTO_ICMP {
        pkt.csum(csum_off, Sum::of(proto, true), daddr, gaddr, 4);
    }
    wr::<u16>(pkt, port_off, gport);
    pkt.csum(
        csum_off,
        Sum::of(sum_proto, false),
        old_port as u32,
        gport as u32,
        2,
    );
    dec_ttl(pkt, ttl_word);
    wr::<[u8; 6]>(pkt, 0, gmac);
    wr::<[u8; 6]>(pkt, 6, cfg.gw_mac);
    if xdp {
        count(|s| s.in_xdp += 1);
    } else {
        count(|s| s.in_tc += 1);
    }
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&gmac);
    u64::from_le_bytes(b) | IN_GUEST
}
