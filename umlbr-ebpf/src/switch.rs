//! The forwarding decision, shared by the XDP and TC programs.

use umlbr_common::{
    Config, EV_IP_LOCKED, EV_ISOLATED, EV_LOCKED, EV_SPOOFED, NatConfig, PORT_F_IP_LOCKED,
    PORT_F_ISOLATED, PORT_F_LOCKED, PortStats,
};

use core::ffi::c_void;

use crate::{events, fdb, pkt::Pkt, portsec};

pub enum Verdict {
    Drop,
    Unicast(u32),
    Flood,
    /// Deliver up the stack of this port's own interface (the uplink's
    /// host address): pass it there instead of sending it out.
    Local(u32),
}

impl Verdict {
    /// As one register, for a call that returns it (see `unpack`).
    #[inline(always)]
    pub fn pack(self) -> u64 {
        match self {
            Verdict::Drop => 0,
            Verdict::Flood => 1,
            Verdict::Unicast(p) => 2 << 32 | p as u64,
            Verdict::Local(p) => 3 << 32 | p as u64,
        }
    }

    #[inline(always)]
    pub fn unpack(v: u64) -> Self {
        match v >> 32 {
            2 => Verdict::Unicast(v as u32),
            3 => Verdict::Local(v as u32),
            _ if v == 1 => Verdict::Flood,
            _ => Verdict::Drop,
        }
    }
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

/// The masquerade's settings if the frame is for the gateway (its MAC),
/// the masquerade's way out: its port is the host port, a static FDB
/// entry, so `decide` needs no lookup for it.
#[inline(always)]
pub fn for_gateway<'a>(
    cfg: &Config,
    ncfg: Option<&'a NatConfig>,
    dst: &[u8; 6],
) -> Option<&'a NatConfig> {
    ncfg.filter(|n| cfg.host_port != 0 && *dst == n.gw_mac)
}

/// Learn the source (or, from a locked port, check it) and decide where
/// the frame of `ctx` in VLAN `vid` (0 in a bridge without VLANs) goes;
/// `to_gw`: the frame is for the gateway (see `for_gateway`). Counts `learned`, `moved`,
/// `learn_limited` and every reason of `dropped`: `invalid`, `spoofed`,
/// `locked`, `ip_locked`, `isolated`, `hairpin`; the
/// caller counts the rest, `dropped` included, once it knows which
/// program finishes the frame. Floods from an isolated port are the
/// caller's to restrict.
#[inline(always)]
pub fn decide<C: Pkt>(
    ctx: &C,
    cfg: &Config,
    (to_gw, vid): (bool, u16),
    (dst, src): ([u8; 6], [u8; 6]),
    ingress: u32,
    stats: &mut PortStats,
) -> Verdict {
    // A multicast or all-zero source is invalid (the kernel bridge drops it
    // too) and must never be learned.
    if is_multicast(&src) || src == [0; 6] || !to_gw && is_link_local(&dst) {
        return invalid(stats);
    }
    // Port security: the only cost for other ports is this flag test.
    let locked = stats.flags & PORT_F_LOCKED != 0;
    if locked && !locked_allows::<C>(ctx.as_ptr(), src, vid, stats) {
        return Verdict::Drop;
    }
    let now = fdb::now();
    let aging_ns = fdb::aging_ns(cfg);
    if !locked && !fdb::learn((src, vid), ingress, now, aging_ns, stats) {
        stats.spoofed += 1;
        events::port(EV_SPOOFED, ingress, &src, 0);
        return Verdict::Drop;
    }
    if to_gw {
        return unicast(cfg.host_port, ingress, stats);
    }
    if is_multicast(&dst) {
        return Verdict::Flood;
    }
    match fdb::lookup(dst, vid, now, aging_ns) {
        Some((port, true)) => Verdict::Local(port),
        Some((port, false)) if port != ingress && isolated_pair(stats, port) => {
            stats.isolated += 1;
            events::port(EV_ISOLATED, ingress, &src, port);
            Verdict::Drop
        }
        Some((port, false)) => unicast(port, ingress, stats),
        None => Verdict::Flood,
    }
}

/// A locked port learns nothing: its source MAC must be bound to it,
/// and, locked to addresses too, its frame allowed by them. Counts
/// `locked` and `ip_locked`. Out of line, on the raw context: locked
/// ports are rare, and the callers' frames (umlbr_tc's is at the edge of
/// the 512-byte stack shared with the NAT's deepest calls) keep nothing
/// of it.
#[inline(never)]
fn locked_allows<C: Pkt>(raw: *mut c_void, src: [u8; 6], vid: u16, stats: &mut PortStats) -> bool {
    // SAFETY: `raw` is this program's context.
    let ctx = unsafe { C::from_raw(raw) };
    let ingress = ctx.ingress();
    if !portsec::mac_bound(src, vid, ingress) {
        stats.locked += 1;
        events::port(EV_LOCKED, ingress, &src, 0);
        return false;
    }
    if stats.flags & PORT_F_IP_LOCKED == 0 {
        return true;
    }
    // The headers checked must be linear (TC).
    ctx.linearize(portsec::PULL);
    let (data, end) = ctx.bounds();
    if !portsec::ip_allowed(data, end, ingress, &src) {
        stats.ip_locked += 1;
        events::port(EV_IP_LOCKED, ingress, &src, 0);
        return false;
    }
    true
}

/// The ingress port (its `stats`) and `port` are both isolated. The
/// target's flags are looked up only for an isolated ingress.
#[inline(always)]
fn isolated_pair(stats: &PortStats, port: u32) -> bool {
    stats.flags & PORT_F_ISOLATED != 0 && crate::port_isolated(port)
}

/// To `port`, unless that is where the frame came from.
#[inline(always)]
fn unicast(port: u32, ingress: u32, stats: &mut PortStats) -> Verdict {
    if port == ingress {
        hairpin(stats)
    } else {
        Verdict::Unicast(port)
    }
}

/// Not a frame a bridge forwards: counted as `invalid`. Out of line, as
/// `hairpin`: a count inlined on these rare paths costs umlbr_tc stack,
/// which it shares with the NAT's deepest calls (512 bytes in all).
#[inline(never)]
pub fn invalid(stats: &mut PortStats) -> Verdict {
    stats.invalid += 1;
    Verdict::Drop
}

/// Unicast for the port it came from: counted as `hairpin`.
#[inline(never)]
fn hairpin(stats: &mut PortStats) -> Verdict {
    stats.hairpin += 1;
    Verdict::Drop
}
