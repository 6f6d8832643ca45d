//! BPF_PROG_TEST_RUN tests of the XDP → TC handoff for a VXLAN port
//! (issue 19): XDP cannot redirect into a VXLAN device (it has no
//! ndo_xdp_xmit), so the port is kept out of the devmap and XDP passes
//! what must reach it (unicast to a MAC learned behind it, floods while
//! one is attached: `CFG_F_TC_FLOOD | CFG_F_VXLAN`) to the TC program on
//! the same port, which redirects or clones it there. There is no mark or
//! metadata: TC decides again from the same FDB (what XDP learned is
//! already there), and XDP counts nothing of a frame it passes.
//!
//! The bench, in a namespace of its own (`umlbrt-vxprog-*`): taps p1 and
//! p2 (guests' ports) and a real VXLAN device vx0 (VNI 100, one remote
//! VTEP, learning off), as `umlbr attach` leaves them: p1 and p2 in the
//! devmap, vx0 not; all three in the flood list and stats. What vx0 sends
//! is read from an AF_PACKET socket on it (its outgoing frames, before the
//! encapsulation).
//!
//! Needs root.
use std::{
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use aya::programs::TcAttachType;
use umlbr_common::{
    CFG_F_TC_FLOOD, CFG_F_VLAN, CFG_F_VXLAN, Config, FdbEntry, FdbKey, PORT_F_NO_XDP_TX,
    PORT_KIND_OTHER, PORT_KIND_VXLAN, PortStats, PortVlan, names,
};
use umlbr_tests::{
    bpf::{AGING_NS, Ctx, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_PASS},
    netns::{Netns, ifindex, packet_socket},
    wire::{BROADCAST, Frame, mac},
};

mod umlbr_lib;
use umlbr_lib::monotonic_coarse_ns as now_coarse;

const TAPS: [&str; 2] = ["p1", "p2"];

struct Bench {
    ctx: Ctx,
    vx0: u32,
    /// vx0's outgoing frames.
    out: OwnedFd,
}

/// A guest behind p1, one behind p2, one on another host (behind vx0).
fn g1() -> [u8; 6] {
    mac("02:00:00:00:00:01")
}
fn g2() -> [u8; 6] {
    mac("02:00:00:00:00:02")
}
fn remote() -> [u8; 6] {
    mac("02:00:00:00:00:99")
}

impl Bench {
    fn new() -> Result<Bench> {
        let ns = Netns::without_ipv6("vxprog")?;
        let ctx = Ctx::new(
            ns,
            &TAPS,
            "ip link add vx0 type vxlan id 100 dstport 4789 local 10.98.0.1 nolearning \
             && bridge fdb append 00:00:00:00:00:00 dev vx0 dst 10.98.0.2 \
             && ip link set vx0 up && ip link set p1 up && ip link set p2 up",
            umlbr_lib::load_object,
        )?;
        let vx0 = ifindex("vx0")?;
        let out = packet_socket(vx0, libc::ETH_P_ALL)?;
        let mut b = Bench { ctx, vx0, out };
        let (p1, p2) = (b.p(0), b.p(1));
        // As `attach` leaves them: the taps in the devmap, vx0 not.
        b.ctx.set_ports(&[p1, p2], None)?;
        b.ctx.set_ports(&[p1, p2, vx0], Some(vx0))?;
        b.ctx.set_config(Config {
            aging_ns: AGING_NS,
            nr_ports: 3,
            flags: CFG_F_TC_FLOOD | CFG_F_VXLAN,
            ..Default::default()
        })?;
        b.reset()?;
        Ok(b)
    }

    fn p(&self, i: usize) -> u32 {
        self.ctx.taps.ifindex[i]
    }

    /// Zero counters, the three guests' MACs learned, nothing queued.
    fn reset(&mut self) -> Result<()> {
        for i in 0..2 {
            let p = self.p(i);
            self.ctx.set_port_stats(
                p,
                PortStats {
                    kind: PORT_KIND_OTHER,
                    ..Default::default()
                },
            )?;
        }
        self.ctx.set_port_stats(
            self.vx0,
            PortStats {
                kind: PORT_KIND_VXLAN,
                flags: PORT_F_NO_XDP_TX,
                ..Default::default()
            },
        )?;
        self.ctx.clear::<FdbKey, FdbEntry>(names::FDB)?;
        let now = now_coarse();
        let (p1, p2, vx0) = (self.p(0), self.p(1), self.vx0);
        self.ctx.fdb_insert(g1(), p1, 0, now)?;
        self.ctx.fdb_insert(g2(), p2, 0, now)?;
        self.ctx.fdb_insert(remote(), vx0, 0, now)?;
        self.ctx.quiet();
        let _ = self.sent(Duration::ZERO);
        Ok(())
    }

    /// The frames vx0 sent (to be encapsulated), waiting up to `wait` for
    /// the first.
    fn sent(&self, wait: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut v = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: all-zero sockaddr_ll is valid.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: valid buffers.
            let n = unsafe {
                libc::recvfrom(
                    self.out.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut sa as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n >= 0 {
                if sa.sll_pkttype == libc::PACKET_OUTGOING {
                    v.push(buf[..n as usize].to_vec());
                }
                continue;
            }
            if !v.is_empty() || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn stats(&mut self, port: u32) -> Result<PortStats> {
        Ok(self.ctx.port_stats(&[port])?[0])
    }
}

fn udp(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    Frame::new(dst, src)
        .udp(
            [10, 50, 0, 1],
            4000,
            [10, 50, 0, 2],
            5000,
            b"over the overlay",
        )
        .build()
}

/// The handoff, one program at a time: XDP passes a unicast for the MAC
/// behind vx0 and a broadcast untouched and uncounted; TC redirects the
/// unicast (to vx0: the live test shows where) and clones the broadcast
/// to p2 and vx0. From vx0 (TC only), a unicast for p2's guest is
/// redirected and its source learned behind vx0, a broadcast cloned to
/// both taps and never back into vx0.
#[test]
fn xdp_hands_frames_for_a_vxlan_port_to_tc() -> Result<()> {
    let mut b = Bench::new()?;
    let (p1, vx0) = (b.p(0), b.vx0);
    let uni = udp(remote(), g1());
    let (ret, out) = b.ctx.run_xdp(p1, 0, &uni)?;
    ensure!(ret == XDP_PASS && out == uni, "XDP, unicast to vx0: {ret}");
    let bcast = udp(BROADCAST, g1());
    let (ret, out) = b.ctx.run_xdp(p1, 0, &bcast)?;
    ensure!(ret == XDP_PASS && out == bcast, "XDP, broadcast: {ret}");
    let s = b.stats(p1)?;
    ensure!(
        s.rx_packets == 0 && s.forwarded == 0 && s.flooded == 0 && s.dropped == 0,
        "XDP counted what it passed: {s:?}"
    );

    let (ret, _, _) = b.ctx.run_tc(names::TC_PROG, 0, p1, p1, &uni)?;
    ensure!(ret == TC_ACT_REDIRECT, "TC, unicast to vx0: {ret}");
    let (ret, _, _) = b.ctx.run_tc(names::TC_PROG, 0, p1, p1, &bcast)?;
    ensure!(
        ret == TC_ACT_SHOT,
        "TC, broadcast (cloned, original dropped): {ret}"
    );
    let got = b.ctx.collect(&[0, 1], Duration::from_secs(2), |_| true);
    let to_vx = b.sent(Duration::from_secs(2));
    ensure!(
        got[0].is_empty() && got[1] == vec![bcast.clone()] && to_vx == vec![bcast.clone()],
        "broadcast from p1: {} on p1, {} on p2, {} to vx0",
        got[0].len(),
        got[1].len(),
        to_vx.len()
    );
    let s = b.stats(p1)?;
    ensure!(
        s.rx_packets == 2 && s.tc == 2 && s.forwarded == 1 && s.flooded == 1,
        "p1's counters after TC: {s:?}"
    );

    // From the overlay: a guest of another host, new to this bridge.
    let far = mac("02:00:00:00:00:77");
    let (ret, _, _) = b.ctx.run_tc(names::TC_PROG, 0, vx0, vx0, &udp(g2(), far))?;
    ensure!(ret == TC_ACT_REDIRECT, "TC from vx0, unicast to p2: {ret}");
    let learned = b
        .ctx
        .fdb()?
        .into_iter()
        .find(|(m, _)| *m == far)
        .map(|(_, e)| e.ifindex);
    ensure!(learned == Some(vx0), "far guest learned on {learned:?}");
    let from_far = udp(BROADCAST, far);
    let (ret, _, _) = b.ctx.run_tc(names::TC_PROG, 0, vx0, vx0, &from_far)?;
    ensure!(ret == TC_ACT_SHOT, "TC from vx0, broadcast: {ret}");
    let got = b.ctx.collect(&[1, 1], Duration::from_secs(2), |_| true);
    let back = b.sent(Duration::from_millis(200));
    ensure!(
        got[0] == vec![from_far.clone()] && got[1] == vec![from_far.clone()] && back.is_empty(),
        "broadcast from vx0: {} on p1, {} on p2, {} back into vx0",
        got[0].len(),
        got[1].len(),
        back.len()
    );
    let s = b.stats(vx0)?;
    ensure!(
        s.rx_packets == 2 && s.tc == 2 && s.forwarded == 1 && s.flooded == 1 && s.learned == 1,
        "vx0's counters: {s:?}"
    );
    Ok(())
}

/// Live: with umlbr_xdp (driver mode) and umlbr_tc on p1, a frame its
/// guest writes for the MAC behind vx0 leaves through vx0, switched by TC
/// (counted `tc`, not `xdp_native`), and reaches no tap; a frame for p2's
/// guest stays in XDP.
#[test]
fn live_unicast_for_a_vxlan_port_leaves_through_it() -> Result<()> {
    let mut b = Bench::new()?;
    let p1 = b.p(0);
    b.ctx
        .attach_tc(names::TC_PROG, &["p1"], TcAttachType::Ingress)?;
    let uni = udp(remote(), g1());
    b.ctx.run_xdp_live(p1, &uni)?;
    let to_vx = b.sent(Duration::from_secs(2));
    let got = b.ctx.collect(&[0, 0], Duration::from_millis(200), |_| true);
    ensure!(
        to_vx == vec![uni.clone()] && got.iter().all(Vec::is_empty),
        "unicast to the remote guest: {} out of vx0, {} on p1, {} on p2",
        to_vx.len(),
        got[0].len(),
        got[1].len()
    );
    let s = b.stats(p1)?;
    ensure!(
        s.rx_packets == 1 && s.tc == 1 && s.forwarded == 1 && s.xdp_native + s.xdp_generic == 0,
        "p1's counters: {s:?}"
    );
    let local = udp(g2(), g1());
    b.ctx.run_xdp_live(p1, &local)?;
    let got = b.ctx.collect(&[0, 1], Duration::from_secs(2), |_| true);
    ensure!(
        got[1] == vec![local] && b.sent(Duration::from_millis(200)).is_empty(),
        "unicast to p2: {} on p2",
        got[1].len()
    );
    let s = b.stats(p1)?;
    ensure!(
        s.xdp_native + s.xdp_generic == 1 && s.tc == 1,
        "p1's counters: {s:?}"
    );
    Ok(())
}

/// VLAN to VNI, one program at a time: vx0 (VNI 100) an access port of
/// VLAN 100 with p1, p2 an access port of VLAN 200 (`attach vx0 --vlan
/// 100`; a bridge with `CFG_F_VLAN` too), the remote guest learned in
/// VLAN 100 behind vx0. XDP passes p1's unicast for it untouched (vx0 is
/// out of the devmap) and TC sends it into vx0 untagged; the same MAC
/// from p2 is unknown in VLAN 200 and its flood reaches no port (nothing
/// into vx0). From vx0, a broadcast reaches p1 alone, untagged; a frame
/// tagged inside the overlay (VLAN 200) is dropped, counted vlan.
#[test]
fn vxlan_access_port_keeps_its_vlan() -> Result<()> {
    let mut b = Bench::new()?;
    let (p1, p2, vx0) = (b.p(0), b.p(1), b.vx0);
    let access = |pvid| PortVlan {
        pvid,
        ..Default::default()
    };
    b.ctx.set_config(Config {
        aging_ns: AGING_NS,
        nr_ports: 3,
        flags: CFG_F_TC_FLOOD | CFG_F_VXLAN | CFG_F_VLAN,
        ..Default::default()
    })?;
    for (port, pvid) in [(p1, 100), (p2, 200), (vx0, 100)] {
        b.ctx.insert(names::VLAN, port, access(pvid))?;
    }
    b.ctx.clear::<FdbKey, FdbEntry>(names::FDB)?;
    let e = FdbEntry {
        ifindex: vx0,
        flags: 0,
        updated_ns: now_coarse(),
    };
    b.ctx
        .insert(names::FDB, FdbKey::in_vlan(remote(), 100), e)?;

    let uni = udp(remote(), g1());
    let (ret, out) = b.ctx.run_xdp(p1, 0, &uni)?;
    ensure!(ret == XDP_PASS && out == uni, "XDP, p1 to vx0: {ret}");
    let (ret, out, _) = b.ctx.run_tc(names::TC_PROG, 0, p1, p1, &uni)?;
    ensure!(
        ret == TC_ACT_REDIRECT && out == uni,
        "TC, p1 to vx0: {ret}, the frame changed: {}",
        out != uni
    );

    let other = udp(remote(), g2());
    let (ret, _, _) = b.ctx.run_tc(names::TC_PROG, 0, p2, p2, &other)?;
    ensure!(ret == TC_ACT_SHOT, "TC, p2 (VLAN 200) to the MAC: {ret}");
    let got = b.ctx.collect(&[0, 0], Duration::from_millis(300), |_| true);
    let to_vx = b.sent(Duration::from_millis(500));
    ensure!(
        to_vx.is_empty() && got.iter().all(Vec::is_empty),
        "VLAN 200's frame for VLAN 100's MAC: {} into vx0, {} on p1",
        to_vx.len(),
        got[0].len()
    );

    let far = mac("02:00:00:00:00:77");
    let bcast = udp(BROADCAST, far);
    let (ret, _, _) = b.ctx.run_tc(names::TC_PROG, 0, vx0, vx0, &bcast)?;
    ensure!(ret == TC_ACT_SHOT, "TC from vx0, broadcast: {ret}");
    let got = b.ctx.collect(&[1, 0], Duration::from_secs(2), |_| true);
    ensure!(
        got[0] == vec![bcast.clone()] && got[1].is_empty(),
        "vx0's broadcast: {} on p1 (VLAN 100), {} on p2 (VLAN 200)",
        got[0].len(),
        got[1].len()
    );
    let tagged = Frame::new(BROADCAST, far)
        .vlan(200, 0)
        .udp([10, 50, 0, 1], 4000, [10, 50, 0, 2], 5000, b"tenant b?")
        .build();
    let (ret, _, _) = b.ctx.run_tc(names::TC_PROG, 0, vx0, vx0, &tagged)?;
    ensure!(ret == TC_ACT_SHOT, "TC from vx0, tagged 200: {ret}");
    let got = b.ctx.collect(&[0, 0], Duration::from_millis(300), |_| true);
    let s = b.stats(vx0)?;
    ensure!(
        got.iter().all(Vec::is_empty) && s.vlan == 1,
        "vx0's frame tagged 200: {} on p1, {} on p2, vx0's counters {s:?}",
        got[0].len(),
        got[1].len()
    );
    Ok(())
}
