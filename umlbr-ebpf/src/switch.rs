//! The forwarding decision, shared by the XDP and TC programs.

use aya_ebpf::maps::LruHashMap;
use umlbr_common::{Config, DEFAULT_AGING_SECS, FdbEntry, FdbKey, PortStats};

use crate::fdb;

pub enum Verdict {
    Drop,
    Unicast(u32),
    Flood,
    /// Deliver up the stack of this port's own interface (the uplink's
    /// host address): pass it there instead of sending it out.
    Local(u32),
}

#[inline(always)]
pub fn is_multicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// 01:80:c2:00:00:0X: STP, pause, LACP, 802.1X, LLDP. An 802.1D bridge
/// never forwards these.
#[inline(always)]
fn is_link_local(mac: &[u8; 6]) -> bool {
    mac[0] == 0x01
        && mac[1] == 0x80
        && mac[2] == 0xc2
        && mac[3] == 0
        && mac[4] == 0
        && mac[5] & 0xf0 == 0
}

/// Learn the source and decide where the frame goes. Counts `learned`,
/// `moved` and the reasons for `dropped`; the caller counts the rest once
/// it knows which program finishes the frame.
#[inline(always)]
pub fn decide(
    fdb_map: &LruHashMap<FdbKey, FdbEntry>,
    cfg: &Config,
    dst: [u8; 6],
    src: [u8; 6],
    ingress: u32,
    stats: &mut PortStats,
) -> Verdict {
    // A multicast or all-zero source is invalid (the kernel bridge drops it
    // too) and must never be learned.
    if is_multicast(&src) || src == [0; 6] || is_link_local(&dst) {
        return Verdict::Drop;
    }
    let now = fdb::now();
    fdb::learn(fdb_map, src, ingress, now, stats);
    if is_multicast(&dst) {
        return Verdict::Flood;
    }
    let aging_ns = if cfg.aging_ns != 0 {
        cfg.aging_ns
    } else {
        DEFAULT_AGING_SECS * 1_000_000_000
    };
    match fdb::lookup(fdb_map, dst, now, aging_ns) {
        Some((port, true)) => Verdict::Local(port),
        Some((port, false)) if port == ingress => Verdict::Drop,
        Some((port, false)) => Verdict::Unicast(port),
        None => Verdict::Flood,
    }
}

/// `decide` for a frame whose destination port the caller already knows
/// (the gateway's MAC, a static entry on the host port): learn the source
/// and spare the lookup.
#[inline(always)]
pub fn decide_known(
    fdb_map: &LruHashMap<FdbKey, FdbEntry>,
    src: [u8; 6],
    ingress: u32,
    port: u32,
    stats: &mut PortStats,
) -> Verdict {
    if is_multicast(&src) || src == [0; 6] {
        return Verdict::Drop;
    }
    fdb::learn(fdb_map, src, ingress, fdb::now(), stats);
    if port == ingress {
        Verdict::Drop
    } else {
        Verdict::Unicast(port)
    }
}
