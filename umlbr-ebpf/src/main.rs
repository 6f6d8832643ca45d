//! umlbr's datapath: one XDP program and one TC program per bridge, the
//! same on every port, switching frames between the ports through the
//! bridge's maps. XDP handles what fits its fast path; the TC program
//! handles what XDP passes (GSO, jumbo and CHECKSUM_PARTIAL frames, frames
//! for the uplink's own stack, floods when some port needs an skb) with
//! the same FDB. A third program on the uplink's egress sends the host's
//! own frames for guests straight to their ports.
#![no_std]
#![no_main]
// atomic_xadd: core has no atomic types for bpfel-unknown-none.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod csum;
mod events;
mod fdb;
mod hdr;
mod mem;
mod nat;
mod pkt;
mod portsec;
mod switch;
mod vlan;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action},
    helpers::{bpf_loop, bpf_redirect, bpf_redirect_neigh, bpf_xdp_adjust_head},
    macros::{classifier, map, xdp},
    maps::{Array, DevMapHash, PerCpuHashMap},
    programs::{TcContext, XdpContext},
};
use umlbr_common::{
    CFG_F_TC_FLOOD, CFG_F_VLAN, Config, MAX_PORTS, MAX_XDP_FRAME, NatConfig, PORT_F_ISOLATED,
    PORT_KIND_TAP, PortStats,
};

use core::ffi::c_void;

use crate::{
    hdr::{ETH_HLEN, ICMP_HLEN, IP_HLEN, UDP_HLEN},
    switch::{Verdict, is_multicast},
    vlan::Out,
};

/// The ports that take XDP frames, keyed by ifindex: unicast and broadcast
/// redirect target for XDP.
#[map(name = "UMLBR_PORTS")]
static PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_PORTS, 0);

/// The masquerade uplink alone, the NAT's XDP redirect target. It is kept
/// out of PORTS, so that no flood ever leaves through it untranslated.
#[map(name = "UMLBR_NAT_TX")]
static NAT_TX: DevMapHash = DevMapHash::with_max_entries(1, 0);

/// The ports of PORTS that are not isolated: the broadcast set of an
/// isolated port's XDP floods, which must reach no other isolated port.
#[map(name = "UMLBR_FLOOD_ISO")]
static FLOOD_ISOLATED: DevMapHash = DevMapHash::with_max_entries(MAX_PORTS, 0);

/// Every port as a dense list, for TC flooding (there is no broadcast
/// redirect for skbs).
#[map(name = "UMLBR_PORT_LIST")]
static PORT_LIST: Array<u32> = Array::with_max_entries(MAX_PORTS, 0);

#[map(name = "UMLBR_STATS")]
static STATS: PerCpuHashMap<u32, PortStats> = PerCpuHashMap::with_max_entries(MAX_PORTS, 0);

#[map(name = "UMLBR_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

// BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS
const FLOOD_FLAGS: u64 = 8 | 16;
const BPF_F_INGRESS: u64 = 1;
/// skb mark of frames the TC program hands to the uplink's own stack, so
/// that its ingress hook lets them up instead of switching them again.
const LOCAL_MARK: u32 = 0x756d_6c62;

static NO_CONFIG: Config = Config {
    aging_ns: 0,
    nr_ports: 0,
    host_port: 0,
    uplink: 0,
    flags: 0,
    uplink_mac: [0; 6],
    layout: 0,
};

#[inline(always)]
fn config() -> &'static Config {
    CONFIG.get(0).unwrap_or(&NO_CONFIG)
}

/// The counters of port `ifindex`, if it is (still) a port of this bridge.
#[inline(always)]
fn port_stats(ifindex: u32) -> Option<&'static mut PortStats> {
    // SAFETY: per-CPU value of a map entry, only this CPU writes it.
    STATS.get_ptr_mut(ifindex).map(|p| unsafe { &mut *p })
}

/// Whether port `ifindex` takes XDP frames (it is in the devmap).
#[inline(always)]
fn in_devmap(ifindex: u32) -> bool {
    PORTS.get(ifindex).is_some()
}

/// Whether port `ifindex` is isolated. Only frames from an isolated port
/// ask (one more lookup for them, none for the others).
#[inline(always)]
fn port_isolated(ifindex: u32) -> bool {
    // SAFETY: read of a per-CPU map value's flags, written by userspace
    // at attach time only.
    STATS
        .get_ptr(ifindex)
        .is_some_and(|p| unsafe { (*p).flags } & PORT_F_ISOLATED != 0)
}

#[xdp]
pub fn umlbr_xdp(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    // Too big for a devmap redirect in generic mode: the TC program takes it.
    if len > MAX_XDP_FRAME {
        return xdp_action::XDP_PASS;
    }
    let ingress = ctx.ingress_ifindex() as u32;
    let ncfg = nat::config();
    if let Some(n) = ncfg
        && ingress == n.nat_ifindex
    {
        return xdp_nat_in(&ctx, n);
    }
    // Guest traffic to masquerade out of an uplink that takes no XDP
    // frames (a veth): TC does all of it, learning included, so XDP hands
    // it over before any work of its own.
    if let Some(n) = ncfg
        && nat::for_tc_uplink(ctx.data(), ctx.data_end(), n)
    {
        return xdp_action::XDP_PASS;
    }
    // A bridge with VLANs switches out of line; only the masquerade's
    // frames (the default VLAN's, untagged) continue here.
    if config().flags & CFG_F_VLAN != 0 {
        // Here, not in xdp_vlan: its frame (248 bytes) would stack on
        // xdp_vlan's. CHECKSUM_PARTIAL frames, the masquerade's too, go
        // to TC.
        if csum::looks_partial(ctx.data(), ctx.data_end()) {
            return xdp_action::XDP_PASS;
        }
        let action = xdp_vlan(&ctx, ingress, len);
        if action != VLAN_CONTINUE {
            return action;
        }
    }
    let Some(stats) = port_stats(ingress) else {
        return xdp_action::XDP_PASS;
    };
    let generic = stats.kind == PORT_KIND_TAP && xdp_is_generic(&ctx);
    let action = xdp_switch(&ctx, ncfg, ingress, stats);
    // What XDP passes is counted by the TC program that finishes it.
    if action != xdp_action::XDP_PASS {
        count_xdp(stats, len, generic);
    }
    action
}

/// Switch a frame from a port in XDP: learn, decide, redirect.
#[inline(always)]
fn xdp_switch(
    ctx: &XdpContext,
    ncfg: Option<&NatConfig>,
    ingress: u32,
    stats: &mut PortStats,
) -> u32 {
    // The headroom probe invalidated the packet pointers: read them again.
    let (data, end) = (ctx.data(), ctx.data_end());
    let Some((dst, src)) = hdr::macs(data, end) else {
        stats.dropped += 1;
        stats.invalid += 1;
        return xdp_action::XDP_DROP;
    };
    let cfg = config();
    let gw = switch::for_gateway(cfg, ncfg, &dst);
    // What the masquerade translates it checks for CHECKSUM_PARTIAL itself
    // (nat::out); everything else here.
    if gw.is_none() && csum::looks_partial(data, end) {
        return xdp_action::XDP_PASS;
    }
    match switch::decide(ctx, cfg, (gw.is_some(), 0), (dst, src), ingress, stats) {
        Verdict::Drop => {
            stats.dropped += 1;
            xdp_action::XDP_DROP
        }
        Verdict::Unicast(port) if port == cfg.host_port && gw.is_some() => {
            xdp_nat_out(ctx, gw, &src, port, stats)
        }
        Verdict::Unicast(port) => redirect_xdp(port, stats),
        Verdict::Flood if cfg.flags & CFG_F_TC_FLOOD == 0 => {
            if !fdb::flood_allowed(ingress) {
                return storm(stats, (ingress, &src), xdp_action::XDP_DROP);
            }
            stats.flooded += 1;
            // An isolated port floods to the ports that are not.
            let sent = if stats.flags & PORT_F_ISOLATED != 0 {
                FLOOD_ISOLATED.redirect(0, FLOOD_FLAGS)
            } else {
                PORTS.redirect(0, FLOOD_FLAGS)
            };
            sent.unwrap_or(xdp_action::XDP_DROP)
        }
        Verdict::Flood | Verdict::Local(_) => xdp_action::XDP_PASS,
    }
}

/// A frame of a VLAN the port (or the unicast's target) does not carry,
/// or a malformed tag: dropped with `action`, counted. Out of line: rare.
#[inline(never)]
fn vlan_drop<T>(stats: &mut PortStats, action: T) -> T {
    stats.dropped += 1;
    stats.vlan += 1;
    action
}

/// `xdp_switch_vlan`/`tc_switch_vlan`: not finished there, the frame
/// goes on through the common path (the masquerade's, in the default
/// VLAN).
const VLAN_CONTINUE: u32 = u32::MAX;

/// `umlbr_xdp` in a bridge with VLANs, from the port's counters on:
/// VLAN_CONTINUE (nothing counted) for the common path.
#[inline(never)]
fn xdp_vlan(ctx: &XdpContext, ingress: u32, len: usize) -> u32 {
    let Some(stats) = port_stats(ingress) else {
        return xdp_action::XDP_PASS;
    };
    let generic = stats.kind == PORT_KIND_TAP && xdp_is_generic(ctx);
    let action = xdp_switch_vlan(ctx, ingress, stats);
    if action != xdp_action::XDP_PASS && action != VLAN_CONTINUE {
        count_xdp(stats, len, generic);
    }
    action
}

/// Switch a frame from a port in XDP in a bridge with VLANs: classify,
/// learn and decide in its VLAN, tag or untag for the unicast's port.
/// Floods go to TC (XDP_PASS), which tags each port's copy; so do frames
/// XDP cannot tag. Frames for the masquerade's gateway in the default
/// VLAN, untagged, are left to the common path (VLAN_CONTINUE). Out of
/// line (in `xdp_vlan`): umlbr_xdp's frame is shared with the NAT's
/// deepest calls.
#[inline(always)]
fn xdp_switch_vlan(ctx: &XdpContext, ingress: u32, stats: &mut PortStats) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let Some((dst, src)) = hdr::macs(data, end) else {
        return VLAN_CONTINUE;
    };
    let cfg = config();
    let class = vlan::classify_xdp(data, end, ingress, cfg.host_port);
    if class == vlan::DROP {
        return vlan_drop(stats, xdp_action::XDP_DROP);
    }
    if class == vlan::HOST_VLAN
        && vlan::pvid(cfg.host_port) == 0
        && switch::for_gateway(cfg, nat::config(), &dst).is_some()
    {
        return VLAN_CONTINUE;
    }
    match switch::decide(
        ctx,
        cfg,
        (false, vlan::vid(class)),
        (dst, src),
        ingress,
        stats,
    ) {
        Verdict::Drop => {
            stats.dropped += 1;
            xdp_action::XDP_DROP
        }
        Verdict::Unicast(port) => match xdp_vlan_out(ctx, port, class) {
            VLAN_OUT_OK => redirect_xdp(port, stats),
            VLAN_OUT_NO => vlan_drop(stats, xdp_action::XDP_DROP),
            _ => xdp_action::XDP_PASS,
        },
        Verdict::Flood | Verdict::Local(_) => xdp_action::XDP_PASS,
    }
}

/// `xdp_vlan_out`: redirect, not a member, or let TC do it.
const VLAN_OUT_OK: u32 = 0;
const VLAN_OUT_NO: u32 = 1;
const VLAN_OUT_TC: u32 = 2;

/// Make an XDP frame of `class` what `port` sends (tagged or not) before
/// its redirect. TC does what XDP cannot (a frame too long to take a tag,
/// a port outside the devmap), from the frame as it came.
#[inline(always)]
fn xdp_vlan_out(ctx: &XdpContext, port: u32, class: u32) -> u32 {
    let out = vlan::egress(port, vlan::vid(class));
    let came = class & vlan::IN_MASK;
    let same = match out {
        Out::No => return VLAN_OUT_NO,
        Out::Untagged => came == vlan::IN_UNTAGGED,
        Out::Tagged => came == vlan::IN_TAGGED,
    };
    if same {
        return VLAN_OUT_OK;
    }
    if PORTS.get(port).is_none() || !vlan::xdp_retag(ctx, class, out) {
        return VLAN_OUT_TC;
    }
    VLAN_OUT_OK
}

/// A flood over the port's flood limit (storm control): dropped with
/// `action`, counted.

/// A flood from `src` on port `ingress` over the port's flood limit
/// (storm control): dropped with `action`, counted.
#[inline(always)]
fn storm<T>(stats: &mut PortStats, (ingress, src): (u32, &[u8; 6]), action: T) -> T {
    stats.dropped += 1;
    stats.storm += 1;
    events::port(umlbr_common::EV_STORM, ingress, src, 0);
    action
}

/// Guest traffic to the gateway: masqueraded out of the uplink, or
/// switched to the host `port`.
#[inline(always)]
fn xdp_nat_out(
    ctx: &XdpContext,
    gw: Option<&NatConfig>,
    src: &[u8; 6],
    port: u32,
    stats: &mut PortStats,
) -> u32 {
    let Some(n) = gw else {
        return xdp_action::XDP_PASS;
    };
    match nat::out(ctx, n, src) {
        nat::Out::NotNat if csum::looks_partial(ctx.data(), ctx.data_end()) => xdp_action::XDP_PASS,
        nat::Out::NotNat => redirect_xdp(port, stats),
        nat::Out::Redirect(ifx) => redirect_via(&NAT_TX, ifx, stats),
        nat::Out::ToTc | nat::Out::RedirectNeigh(_) => xdp_action::XDP_PASS,
        nat::Out::Drop => {
            stats.dropped += 1;
            stats.nat_quota += 1;
            xdp_action::XDP_DROP
        }
        // Counted as the IPv6 NAT's `no_addr`, not as the port's: a port's
        // `dropped` is the sum of its own reasons.
        nat::Out::DropNoAddr => xdp_action::XDP_DROP,
    }
}

/// Redirect to a port through the devmap; ports outside it (no XDP tx)
/// fall back to TC (XDP_PASS).
#[inline(always)]
fn redirect_xdp(port: u32, stats: &mut PortStats) -> u32 {
    redirect_via(&PORTS, port, stats)
}

#[inline(always)]
fn redirect_via(devmap: &DevMapHash, port: u32, stats: &mut PortStats) -> u32 {
    match devmap.redirect(port, xdp_action::XDP_PASS as u64) {
        Ok(action) => {
            stats.forwarded += 1;
            action
        }
        Err(action) => action,
    }
}

/// A frame from the masquerade uplink: a reply for a guest, or the host's.
#[inline(always)]
fn xdp_nat_in(ctx: &XdpContext, ncfg: &NatConfig) -> u32 {
    // A veth uplink can carry CHECKSUM_PARTIAL from the LAN side; only the
    // skb keeps what is needed to finish such a checksum.
    if csum::looks_partial(ctx.data(), ctx.data_end()) {
        return xdp_action::XDP_PASS;
    }
    match nat::inbound(ctx, ncfg) {
        nat::In::Host => xdp_action::XDP_PASS,
        // TC's alone (XDP passes such packets).
        nat::In::Drop | nat::In::Bounce => xdp_action::XDP_DROP,
        // The masquerade's guests are in the default VLAN (with VLANs,
        // behind ports that send it untagged: only those learn in it).
        nat::In::Guest(mac) => match fdb::lookup(mac, 0, fdb::now(), fdb::aging_ns(config())) {
            Some((port, false)) => PORTS.redirect(port, 0).unwrap_or(xdp_action::XDP_DROP),
            // Checked by nat::inbound; only a racing removal gets here.
            // With VLANs, a broadcast would reach every VLAN: dropped.
            _ if config().flags & CFG_F_VLAN != 0 => xdp_action::XDP_DROP,
            _ => PORTS
                .redirect(0, FLOOD_FLAGS)
                .unwrap_or(xdp_action::XDP_DROP),
        },
    }
}

#[inline(always)]
fn count_xdp(stats: &mut PortStats, len: usize, generic: bool) {
    stats.rx_packets += 1;
    stats.rx_bytes += len as u64;
    if generic {
        stats.xdp_generic += 1;
    } else {
        stats.xdp_native += 1;
    }
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
    // SAFETY: reading fields of the context.
    let (ingress, mark) = unsafe { ((*ctx.skb.skb).ingress_ifindex, (*ctx.skb.skb).mark) };
    if mark == LOCAL_MARK {
        // Handed up by ourselves: already switched and counted.
        ctx.set_mark(0);
        return TC_ACT_OK as i32;
    }
    let ncfg = nat::config();
    if let Some(n) = ncfg
        && ingress == n.nat_ifindex
    {
        return tc_nat_in(&ctx, n);
    }
    // As in XDP.
    if config().flags & CFG_F_VLAN != 0 {
        let action = tc_vlan(&ctx, ingress);
        if action != VLAN_CONTINUE as i32 {
            return action;
        }
    }
    let Some(stats) = port_stats(ingress) else {
        return TC_ACT_OK as i32;
    };
    stats.rx_packets += 1;
    stats.rx_bytes += ctx.len() as u64;
    stats.tc += 1;
    tc_switch(&ctx, ncfg, ingress, stats)
}

/// Switch a frame from a port in TC: learn, decide, redirect or clone.
#[inline(always)]
fn tc_switch(
    ctx: &TcContext,
    ncfg: Option<&NatConfig>,
    ingress: u32,
    stats: &mut PortStats,
) -> i32 {
    let Some((dst, src)) = hdr::macs(ctx.data(), ctx.data_end()) else {
        stats.dropped += 1;
        stats.invalid += 1;
        return TC_ACT_SHOT as i32;
    };
    let cfg = config();
    // As in XDP: the gateway's MAC needs no lookup.
    let gw = switch::for_gateway(cfg, ncfg, &dst);
    match Verdict::unpack(decide_tc(ctx, gw.is_some(), &(dst, src), ingress, stats)) {
        Verdict::Drop => {
            stats.dropped += 1;
            TC_ACT_SHOT as i32
        }
        Verdict::Unicast(port) if port == cfg.host_port && gw.is_some() => {
            tc_nat_out(ctx, gw, &src, port, stats)
        }
        Verdict::Unicast(port) => {
            stats.forwarded += 1;
            redirect(port, 0)
        }
        Verdict::Local(port) if port == ingress => TC_ACT_OK as i32,
        Verdict::Local(port) => {
            stats.forwarded += 1;
            ctx.set_mark(LOCAL_MARK);
            redirect(port, BPF_F_INGRESS)
        }
        Verdict::Flood => {
            if !fdb::flood_allowed(ingress) {
                return storm(stats, (ingress, &src), TC_ACT_SHOT as i32);
            }
            stats.flooded += 1;
            let isolated = stats.flags & PORT_F_ISOLATED != 0;
            flood_tc(ctx, cfg, (ingress, isolated), is_multicast(&dst))
        }
    }
}

/// `switch::decide` for TC, out of line: its locals then leave the stack
/// before the masquerade's deepest calls (nat::out) take it, which
/// umlbr_tc's frame shares with them (512 bytes in all). TC is the slow
/// path; XDP keeps decide inline.
#[inline(never)]
fn decide_tc(
    ctx: &TcContext,
    to_gw: bool,
    macs: &([u8; 6], [u8; 6]),
    ingress: u32,
    stats: &mut PortStats,
) -> u64 {
    // Packed: a returned enum would take a sixth argument slot (BPF has
    // five).
    switch::decide(ctx, config(), (to_gw, 0), *macs, ingress, stats).pack()
}

/// `umlbr_tc` in a bridge with VLANs, from the port's counters on:
/// VLAN_CONTINUE (nothing counted) for the common path.
#[inline(never)]
fn tc_vlan(ctx: &TcContext, ingress: u32) -> i32 {
    let Some(stats) = port_stats(ingress) else {
        return TC_ACT_OK as i32;
    };
    let action = tc_switch_vlan(ctx, ingress, stats);
    if action != VLAN_CONTINUE as i32 {
        stats.rx_packets += 1;
        stats.rx_bytes += ctx.len() as u64;
        stats.tc += 1;
    }
    action
}

/// Switch a frame from a port in TC in a bridge with VLANs, as
/// `xdp_switch_vlan`: its VLAN from the skb's tag (the kernel took the
/// tag out of the packet before TC), the unicast's port tagging or
/// untagging the skb, floods to the ports of the VLAN.
#[inline(always)]
fn tc_switch_vlan(ctx: &TcContext, ingress: u32, stats: &mut PortStats) -> i32 {
    let Some((dst, src)) = hdr::macs(ctx.data(), ctx.data_end()) else {
        return VLAN_CONTINUE as i32;
    };
    let cfg = config();
    let class = vlan::classify_tc(ctx, ingress, cfg.host_port);
    if class == vlan::DROP {
        return vlan_drop(stats, TC_ACT_SHOT as i32);
    }
    if class == vlan::HOST_VLAN
        && vlan::pvid(cfg.host_port) == 0
        && switch::for_gateway(cfg, nat::config(), &dst).is_some()
    {
        return VLAN_CONTINUE as i32;
    }
    let vid = vlan::vid(class);
    match switch::decide(ctx, cfg, (false, vid), (dst, src), ingress, stats) {
        Verdict::Drop => {
            stats.dropped += 1;
            TC_ACT_SHOT as i32
        }
        Verdict::Local(port) if port == ingress => TC_ACT_OK as i32,
        Verdict::Unicast(port) | Verdict::Local(port) if !tc_vlan_to(ctx, port, vid) => {
            vlan_drop(stats, TC_ACT_SHOT as i32)
        }
        Verdict::Unicast(port) => {
            stats.forwarded += 1;
            redirect(port, 0)
        }
        Verdict::Local(port) => {
            stats.forwarded += 1;
            ctx.set_mark(LOCAL_MARK);
            redirect(port, BPF_F_INGRESS)
        }
        Verdict::Flood => {
            if !fdb::flood_allowed(ingress) {
                return storm(stats, (ingress, &src), TC_ACT_SHOT as i32);
            }
            stats.flooded += 1;
            let isolated = stats.flags & PORT_F_ISOLATED != 0;
            let flags = isolated as u32 | (is_multicast(&dst) as u32) << 1;
            flood_tc_vlan(ctx, ingress, vid, flags)
        }
    }
}

/// Tag or untag the skb as `port` sends VLAN `vid`; false if it does not
/// carry it.
#[inline(always)]
fn tc_vlan_to(ctx: &TcContext, port: u32, vid: u16) -> bool {
    let out = vlan::egress(port, vid);
    if out == Out::No {
        return false;
    }
    vlan::tc_retag(ctx, vid, out);
    true
}

/// A flood of VLAN `vid` (TC, in a bridge with VLANs): a copy to every
/// other port that carries the VLAN, tagged or not as each sends it (bit
/// 0 of `flags`: from an isolated port, not to isolated ones). A
/// broadcast or multicast (bit 1) also goes up the uplink's own stack if
/// the uplink sends the VLAN untagged.
#[inline(never)]
fn flood_tc_vlan(ctx: &TcContext, ingress: u32, vid: u16, flags: u32) -> i32 {
    let cfg = config();
    clone_to_vlan(ctx, cfg.nr_ports, (ingress, 0), flags & 1 != 0, vid);
    if flags & 2 != 0 && cfg.uplink != 0 && vlan::egress(cfg.uplink, vid) == Out::Untagged {
        vlan::tc_retag(ctx, vid, Out::Untagged);
        if ingress == cfg.uplink {
            return TC_ACT_OK as i32;
        }
        ctx.set_mark(LOCAL_MARK);
        let _ = ctx.clone_redirect(cfg.uplink, BPF_F_INGRESS);
    }
    TC_ACT_SHOT as i32
}

/// What `clone_one` needs of a VLAN flood: the skb, the ports left out,
/// the VLAN.
#[repr(C)]
struct VlanFlood {
    skb: *mut aya_ebpf::bindings::__sk_buff,
    except: u32,
    also_except: u32,
    vid: u32,
    isolated: u32,
}

/// As `clone_to_ports`, to the ports that carry VLAN `vid`, each copy
/// tagged or untagged as its port sends the VLAN. A `bpf_loop`: its
/// callback is verified once, where a bounded loop over 256 ports with a
/// tag change in each is verified per iteration and path (past the
/// verifier's million instructions).
#[inline(always)]
fn clone_to_vlan(
    ctx: &TcContext,
    nr: u32,
    (except, also_except): (u32, u32),
    isolated: bool,
    vid: u16,
) {
    let mut f = VlanFlood {
        skb: ctx.skb.skb,
        except,
        also_except,
        vid: vid as u32,
        isolated: isolated as u32,
    };
    // SAFETY: the helper calls `clone_one` with each index below `nr`
    // and `&mut f`, which outlives the call.
    unsafe {
        bpf_loop(
            nr.min(MAX_PORTS),
            clone_one as *mut c_void,
            &mut f as *mut VlanFlood as *mut c_void,
            0,
        );
    }
}

extern "C" fn clone_one(i: u32, f: *mut VlanFlood) -> i64 {
    // SAFETY: `f` is clone_to_vlan's, alive during the loop.
    let f = unsafe { &*f };
    let Some(&port) = PORT_LIST.get(i) else {
        return 1;
    };
    if port == 0
        || port == f.except
        || port == f.also_except
        || f.isolated != 0 && port_isolated(port)
    {
        return 0;
    }
    let vid = f.vid as u16;
    let out = vlan::egress(port, vid);
    if out != Out::No {
        // SAFETY: the skb of the program running the loop.
        let ctx = TcContext::new(f.skb);
        vlan::tc_retag(&ctx, vid, out);
        let _ = ctx.clone_redirect(port, 0);
    }
    0
}

/// Guest traffic to the gateway (TC): masqueraded out of the uplink, or
/// switched to the host `port`.
#[inline(always)]
fn tc_nat_out(
    ctx: &TcContext,
    gw: Option<&NatConfig>,
    src: &[u8; 6],
    port: u32,
    stats: &mut PortStats,
) -> i32 {
    let Some(n) = gw else {
        stats.forwarded += 1;
        return TC_ACT_OK as i32;
    };
    pull_headers(ctx);
    let out = nat::out(ctx, n, src);
    if let nat::Out::Drop = out {
        stats.dropped += 1;
        stats.nat_quota += 1;
        return TC_ACT_SHOT as i32;
    }
    // Counted as the IPv6 NAT's `no_addr` (see xdp_nat_out).
    if let nat::Out::DropNoAddr = out {
        return TC_ACT_SHOT as i32;
    }
    stats.forwarded += 1;
    match out {
        nat::Out::Drop | nat::Out::DropNoAddr => TC_ACT_SHOT as i32,
        nat::Out::NotNat | nat::Out::ToTc => redirect(port, 0),
        nat::Out::Redirect(ifx) => redirect(ifx, 0),
        // SAFETY: plain helper call; the kernel resolves the next hop from
        // the packet's destination.
        nat::Out::RedirectNeigh(ifx) => {
            tc_redirected(unsafe { bpf_redirect_neigh(ifx, core::ptr::null_mut(), 0, 0) })
        }
    }
}

/// Bytes of headers the NAT code reads: Ethernet, IPv4, ICMP, and the
/// inner IPv4 and 8 bytes of an ICMP error.
const NAT_PULL: u32 = (ETH_HLEN + IP_HLEN + ICMP_HLEN + IP_HLEN + UDP_HLEN) as u32;

/// Make the headers the NAT code reads linear for direct access, unless
/// they already are (the helper call costs on every packet). Writability
/// needs nothing: the verifier's prologue un-clones the skb of a program
/// that writes packet data.
#[inline(always)]
fn pull_headers(ctx: &TcContext) {
    let want = ctx.len().min(NAT_PULL) as usize;
    if ctx.data() + want > ctx.data_end() {
        let _ = ctx.pull_data(want as u32);
    }
}

/// A frame from the masquerade uplink (TC): a reply for a guest, or the
/// host's own.
#[inline(always)]
fn tc_nat_in(ctx: &TcContext, ncfg: &NatConfig) -> i32 {
    pull_headers(ctx);
    match nat::inbound(ctx, ncfg) {
        nat::In::Host => TC_ACT_OK as i32,
        nat::In::Drop => TC_ACT_SHOT as i32,
        // An ICMP error for the sender: out of the uplink it came in on.
        nat::In::Bounce => redirect(ncfg.nat_ifindex, 0),
        nat::In::Guest(mac) => {
            let cfg = config();
            // As in XDP: the default VLAN's guests.
            match fdb::lookup(mac, 0, fdb::now(), fdb::aging_ns(cfg)) {
                Some((port, false)) => redirect(port, 0),
                // As in XDP: not to every VLAN.
                _ if cfg.flags & CFG_F_VLAN != 0 => TC_ACT_SHOT as i32,
                _ => {
                    clone_to_ports(ctx, cfg.nr_ports, (cfg.host_port, 0), false);
                    TC_ACT_SHOT as i32
                }
            }
        }
    }
}

#[inline(always)]
fn redirect(port: u32, flags: u64) -> i32 {
    // SAFETY: plain helper call.
    tc_redirected(unsafe { bpf_redirect(port, flags) })
}

/// The TC verdict for a redirect helper's result.
#[inline(always)]
fn tc_redirected(ret: i64) -> i32 {
    if ret == TC_ACT_REDIRECT as i64 {
        TC_ACT_REDIRECT as i32
    } else {
        TC_ACT_SHOT as i32
    }
}

/// Clone the frame to every port but the two of `except`, and, if
/// `isolated` (the frame comes from an isolated port), but the isolated
/// ones.
#[inline(always)]
fn clone_to_ports(ctx: &TcContext, nr: u32, (except, also_except): (u32, u32), isolated: bool) {
    let mut i = 0;
    while i < MAX_PORTS {
        if i >= nr {
            break;
        }
        if let Some(&port) = PORT_LIST.get(i)
            && port != 0
            && port != except
            && port != also_except
            && !(isolated && port_isolated(port))
        {
            let _ = ctx.clone_redirect(port, 0);
        }
        i += 1;
    }
}

/// Clone the frame to every other port (to every port not isolated, from
/// an isolated `ingress`). Broadcast and multicast also go up the uplink's
/// own stack (the host's ARP, DHCP, ...), whichever side they come from.
#[inline(always)]
fn flood_tc(ctx: &TcContext, cfg: &Config, (ingress, isolated): (u32, bool), group: bool) -> i32 {
    clone_to_ports(ctx, cfg.nr_ports, (ingress, 0), isolated);
    if group && cfg.uplink != 0 {
        if ingress == cfg.uplink {
            return TC_ACT_OK as i32;
        }
        // The clone takes the mark; the original is dropped below.
        ctx.set_mark(LOCAL_MARK);
        let _ = ctx.clone_redirect(cfg.uplink, BPF_F_INGRESS);
    }
    TC_ACT_SHOT as i32
}

/// tcx egress of the uplink: the host's own frames (source = the uplink's
/// MAC) for a guest go straight to the guest's port instead of the wire;
/// its broadcasts go to the guests as well as the wire.
#[classifier]
pub fn umlbr_tc_out(ctx: TcContext) -> i32 {
    let Some((dst, src)) = hdr::macs(ctx.data(), ctx.data_end()) else {
        return TC_ACT_OK as i32;
    };
    let cfg = config();
    if cfg.uplink == 0 || src != cfg.uplink_mac {
        return TC_ACT_OK as i32;
    }
    if cfg.flags & CFG_F_VLAN != 0 {
        return tc_out_vlan(&ctx, dst);
    }
    if is_multicast(&dst) {
        clone_to_ports(&ctx, cfg.nr_ports, (cfg.uplink, cfg.host_port), false);
        return TC_ACT_OK as i32;
    }
    match fdb::lookup(dst, 0, fdb::now(), fdb::aging_ns(cfg)) {
        Some((port, false)) if port != cfg.uplink => redirect(port, 0),
        _ => TC_ACT_OK as i32,
    }
}

/// `umlbr_tc_out` in a bridge with VLANs: the host's frames are in the
/// uplink's pvid, and leave the wire as they came (untagged).
#[inline(never)]
fn tc_out_vlan(ctx: &TcContext, dst: [u8; 6]) -> i32 {
    let cfg = config();
    let vid = vlan::pvid(cfg.uplink);
    if is_multicast(&dst) {
        clone_to_vlan(ctx, cfg.nr_ports, (cfg.uplink, cfg.host_port), false, vid);
        vlan::tc_retag(ctx, vid, Out::Untagged);
        return TC_ACT_OK as i32;
    }
    match fdb::lookup(dst, vid, fdb::now(), fdb::aging_ns(cfg)) {
        Some((port, false)) if port != cfg.uplink && tc_vlan_to(ctx, port, vid) => {
            redirect(port, 0)
        }
        _ => TC_ACT_OK as i32,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
