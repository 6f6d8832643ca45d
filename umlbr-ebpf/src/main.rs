//! umlbr's datapath: one XDP program and one TC program per bridge, the
//! same on every port, switching frames between the ports through the
//! bridge's maps. XDP handles what fits its fast path; the TC program
//! handles what XDP passes (GSO and jumbo frames) with the same FDB.
#![no_std]
#![no_main]

mod fdb;
mod switch;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action},
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    macros::{classifier, map, xdp},
    maps::{Array, DevMapHash, LruHashMap, PerCpuHashMap},
    programs::{TcContext, XdpContext},
};
use umlbr_common::{
    Config, FDB_SIZE, FdbEntry, FdbKey, MAX_PORTS, MAX_XDP_FRAME, PORT_KIND_TAP, PortStats,
};

use crate::switch::Verdict;

/// MAC -> port. LRU so that a full table (MAC churn, a flooding guest)
/// evicts the least recently used, usually aged, entries instead of
/// refusing to learn.
#[map(name = "UMLBR_FDB")]
static FDB: LruHashMap<FdbKey, FdbEntry> = LruHashMap::with_max_entries(FDB_SIZE, 0);

/// Every port of the bridge, keyed by ifindex: unicast and broadcast
/// redirect target for XDP.
#[map(name = "UMLBR_PORTS")]
static PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_PORTS, 0);

/// The same ports as a dense list, for TC flooding (there is no broadcast
/// redirect for skbs).
#[map(name = "UMLBR_PORT_LIST")]
static PORT_LIST: Array<u32> = Array::with_max_entries(MAX_PORTS, 0);

#[map(name = "UMLBR_STATS")]
static STATS: PerCpuHashMap<u32, PortStats> = PerCpuHashMap::with_max_entries(MAX_PORTS, 0);

#[map(name = "UMLBR_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;

// BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS
const FLOOD_FLAGS: u64 = 8 | 16;

#[xdp]
pub fn umlbr_xdp(ctx: XdpContext) -> u32 {
    try_xdp(&ctx)
}

#[inline(always)]
fn try_xdp(ctx: &XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let len = end - data;
    // Too big for a devmap redirect in generic mode: the TC program takes it.
    if len > MAX_XDP_FRAME {
        return xdp_action::XDP_PASS;
    }
    let ingress = ctx.ingress_ifindex() as u32;
    let Some(stats) = STATS.get_ptr_mut(ingress) else {
        // Not (or no longer) a port of this bridge.
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU value of a map entry, only this CPU writes it.
    let stats = unsafe { &mut *stats };
    stats.rx_packets += 1;
    stats.rx_bytes += len as u64;
    if stats.kind == PORT_KIND_TAP && xdp_is_generic(ctx) {
        stats.xdp_generic += 1;
    } else {
        stats.xdp_native += 1;
    }
    // The headroom probe invalidated the packet pointers: read them again.
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN > end {
        stats.dropped += 1;
        return xdp_action::XDP_DROP;
    }
    // SAFETY: bounds checked above.
    let (dst, src) = unsafe { (&*(data as *const [u8; 6]), &*((data + 6) as *const [u8; 6])) };
    match switch::decide(&FDB, &CONFIG, *dst, *src, ingress, stats) {
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Unicast(port) => match PORTS.redirect(port, 0) {
            Ok(action) => action,
            // Stale entry for a port that just left: flood instead.
            Err(_) => flood_xdp(),
        },
        Verdict::Flood => flood_xdp(),
    }
}

#[inline(always)]
fn flood_xdp() -> u32 {
    PORTS
        .redirect(0, FLOOD_FLAGS)
        .unwrap_or(xdp_action::XDP_DROP)
}

/// tun's native path leaves TUN_RX_PAD + XDP_PACKET_HEADROOM (320 bytes)
/// of headroom; generic XDP on an skb that tun allocated has about
/// XDP_PACKET_HEADROOM (256). Moving the head by 272 (which also needs
/// room for the 40-byte xdp_frame) succeeds only on the native path.
/// Frames above MAX_XDP_FRAME never get here, so GSO skbs built with the
/// native padding are not miscounted.
#[inline(always)]
fn xdp_is_generic(ctx: &XdpContext) -> bool {
    const PROBE: i32 = 272;
    // SAFETY: the helper only moves the data pointer; we move it back.
    unsafe {
        if bpf_xdp_adjust_head(ctx.ctx, -PROBE) == 0 {
            bpf_xdp_adjust_head(ctx.ctx, PROBE);
            return false;
        }
    }
    true
}

#[classifier]
pub fn umlbr_tc(ctx: TcContext) -> i32 {
    try_tc(&ctx)
}

#[inline(always)]
fn try_tc(ctx: &TcContext) -> i32 {
    let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let Some(stats) = STATS.get_ptr_mut(ingress) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: per-CPU value of a map entry, only this CPU writes it.
    let stats = unsafe { &mut *stats };
    stats.rx_packets += 1;
    stats.rx_bytes += ctx.len() as u64;
    stats.tc += 1;
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN > end {
        stats.dropped += 1;
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: bounds checked above.
    let (dst, src) = unsafe { (&*(data as *const [u8; 6]), &*((data + 6) as *const [u8; 6])) };
    match switch::decide(&FDB, &CONFIG, *dst, *src, ingress, stats) {
        Verdict::Drop => TC_ACT_SHOT as i32,
        Verdict::Unicast(port) => {
            // SAFETY: plain helper call.
            let ret = unsafe { bpf_redirect(port, 0) };
            if ret == TC_ACT_REDIRECT as i64 {
                TC_ACT_REDIRECT as i32
            } else {
                TC_ACT_SHOT as i32
            }
        }
        Verdict::Flood => flood_tc(ctx, ingress),
    }
}

/// Clone the frame to every other port, then drop the original.
#[inline(always)]
fn flood_tc(ctx: &TcContext, ingress: u32) -> i32 {
    let nr = CONFIG.get(0).map(|c| c.nr_ports).unwrap_or(0);
    let mut i = 0;
    while i < MAX_PORTS {
        if i >= nr {
            break;
        }
        if let Some(&port) = PORT_LIST.get(i)
            && port != 0
            && port != ingress
        {
            let _ = ctx.clone_redirect(port, 0);
        }
        i += 1;
    }
    TC_ACT_SHOT as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
