//! Table-driven BPF_PROG_TEST_RUN tests of umlbr's uplink datapath
//! (scenario C: the host's NIC is a port, guests are bridged onto its LAN).
//!
//! Each test makes a network namespace and moves its own thread into it.
//! In it: taps g1, g2 (guest ports), hp (the bridge's host port) and up0,
//! the uplink (a tap, so that what is sent out of it can be read back; MAC
//! `UP_MAC`, 192.168.1.200/24). The maps are filled as `umlbr up --uplink
//! up0` leaves them: `Config.uplink`/`uplink_mac`, `CFG_F_TC_FLOOD`, a
//! static `FDB_F_LOCAL` entry for the uplink's MAC, up0 in the flood list
//! (and in the devmap unless the case models a veth uplink, which
//! userspace leaves out of it).
//!
//! Checked for every case: the return code, the output bytes (always the
//! input: the switch never rewrites), the skb mark the TC program leaves
//! (the local mark on what it hands to the uplink's own stack), the copies
//! each tap transmits and the copies that enter up0's own stack (an
//! AF_PACKET socket on up0 sees what `bpf_clone_redirect(.., BPF_F_INGRESS)`
//! injects), the FDB, and every port's counters.
//!
//! Live tests then attach the programs to the devices and show the host
//! talking with a guest through the uplink without a frame reaching the
//! wire.
//!
//! Needs root.
use std::time::Duration;

use anyhow::{Result, ensure};
use aya::programs::TcAttachType;
use umlbr_common::{
    CFG_F_TC_FLOOD, Config, FDB_F_LOCAL, FDB_F_STATIC, FdbEntry, FdbKey, PORT_F_NO_XDP_TX,
    PORT_KIND_OTHER, PORT_KIND_UPLINK, PortStats, names,
};
use umlbr_tests::{
    bpf::{
        AGING_NS, Ctx, Errs, LAN_MAC, Sniffer, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TableCase,
        UP_IP, UP_MAC, XDP_DROP, XDP_PASS, XDP_REDIRECT, count_rx,
    },
    netns::{Netns, ifindex},
    wire::{BROADCAST, Frame, Mac, fmt_mac, mac},
};

mod umlbr_lib;
use umlbr_lib::monotonic_coarse_ns as now_coarse;

// ---------------------------------------------------------------------------
// Constants.

/// The skb mark umlbr's TC program puts on frames it hands to the uplink's
/// own stack (umlbr-ebpf/src/main.rs, LOCAL_MARK: "umlb").
const LOCAL_MARK: u32 = 0x756d_6c62;

// ---------------------------------------------------------------------------
// Stations.

// UP_MAC, UP_IP: up0's (umlbr_tests::bpf).
/// Guests behind g1 and g2.
const G1: Mac = [0x02, 0, 0, 0, 0x02, 0x11];
const G2: Mac = [0x02, 0, 0, 0, 0x02, 0x12];
/// A host on the LAN, behind the uplink.
const L: Mac = LAN_MAC;
/// The bridge's host interface, behind the host port.
const H: Mac = [0x02, 0, 0, 0, 0x03, 0x01];
/// Nobody's.
const X: Mac = [0x02, 0, 0, 0, 0x09, 0x99];

const G1_IP: [u8; 4] = [192, 168, 1, 10];

// ---------------------------------------------------------------------------
// The bench.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dev {
    Guest1,
    Guest2,
    Host,
    Up,
}

const DEVS: [Dev; 4] = [Dev::Guest1, Dev::Guest2, Dev::Host, Dev::Up];
const TAP_NAMES: [&str; 4] = ["g1", "g2", "hp", "up0"];

fn idx(d: Dev) -> usize {
    DEVS.iter().position(|x| *x == d).unwrap()
}

/// The taps, and an AF_PACKET socket on up0 that sees what enters its
/// stack.
struct Bench {
    ctx: Ctx,
}

impl Bench {
    fn new(tag: &str) -> Result<Self> {
        let ns = Netns::without_ipv6(&format!("upl-{tag}"))?;
        let mut ctx = Ctx::new(
            ns,
            &TAP_NAMES,
            &format!(
                "ip link set up0 address {} && ip addr add 192.168.1.200/24 dev up0 \
                 && ip link set hp address {} \
                 && for t in g1 g2 hp up0; do ip link set $t up || exit 1; done",
                fmt_mac(&UP_MAC),
                fmt_mac(&H)
            ),
            umlbr_lib::load_object,
        )?;
        ctx.sniffer = Some(Sniffer::new(ifindex("up0")?)?);
        let mut b = Bench { ctx };
        b.reset(true, true)?;
        Ok(b)
    }

    fn ifindex(&self, d: Dev) -> u32 {
        self.ctx.taps.ifindex[idx(d)]
    }

    /// As `umlbr up br0 --uplink up0` and `attach g1 g2` leave it (with hp
    /// as the host port): the uplink configured (`with_uplink`), in the
    /// devmap unless it models a veth (`uplink_xdp_tx`); empty FDB but for
    /// the uplink's static local MAC; zero counters; quiet taps.
    fn reset(&mut self, with_uplink: bool, uplink_xdp_tx: bool) -> Result<()> {
        let ports = self.ctx.taps.ifindex.clone();
        let (host, up) = (self.ifindex(Dev::Host), self.ifindex(Dev::Up));
        self.ctx.set_ports(&ports, (!uplink_xdp_tx).then_some(up))?;
        self.ctx.set_config(Config {
            aging_ns: AGING_NS,
            nr_ports: ports.len() as u32,
            host_port: host,
            uplink: if with_uplink { up } else { 0 },
            flags: if with_uplink { CFG_F_TC_FLOOD } else { 0 },
            uplink_mac: if with_uplink { UP_MAC } else { [0; 6] },
            layout: 0,
        })?;
        for &i in &ports {
            let s = PortStats {
                kind: if i == up {
                    PORT_KIND_UPLINK
                } else {
                    PORT_KIND_OTHER
                },
                flags: if i == up && !uplink_xdp_tx {
                    PORT_F_NO_XDP_TX
                } else {
                    0
                },
                ..Default::default()
            };
            self.ctx.set_port_stats(i, s)?;
        }
        self.ctx.clear::<FdbKey, FdbEntry>(names::FDB)?;
        if with_uplink {
            let flags = FDB_F_STATIC | FDB_F_LOCAL;
            self.ctx.fdb_insert(UP_MAC, up, flags, now_coarse())?;
        }
        self.ctx.quiet();
        Ok(())
    }

    fn fdb_insert(&mut self, mac: Mac, d: Dev, flags: u32, age_ns: u64) -> Result<()> {
        let i = self.ifindex(d);
        self.ctx
            .fdb_insert(mac, i, flags, now_coarse().wrapping_sub(age_ns))
    }

    fn stats(&mut self) -> Result<Vec<PortStats>> {
        let ports = self.ctx.taps.ifindex.clone();
        self.ctx.port_stats(&ports)
    }

    /// Run `prog` on `frame`: (return code, output bytes, mark after).
    fn run(
        &self,
        prog: Prog,
        ingress: u32,
        mark: u32,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>, u32)> {
        Ok(match prog {
            Prog::Xdp => {
                let (ret, out) = self.ctx.run_xdp(ingress, 0, frame)?;
                (ret, out, 0)
            }
            // Egress: no ingress device.
            Prog::TcOut => self
                .ctx
                .run_tc(names::TC_OUT_PROG, mark, 0, ingress, frame)?,
            Prog::Tc => self
                .ctx
                .run_tc(names::TC_PROG, mark, ingress, ingress, frame)?,
        })
    }

    /// What each tap transmitted and what entered up0's stack: waits for
    /// `want` (taps g1 g2 hp up0, then up0's stack) up to a second, then
    /// 20 ms more for extras.
    fn collect(&mut self, want: &[usize; 5]) -> Vec<Vec<Vec<u8>>> {
        self.ctx.collect(want, Duration::from_secs(1), |_| true)
    }
}

// ---------------------------------------------------------------------------
// The table.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    /// umlbr_xdp on the ingress port.
    Xdp,
    /// umlbr_tc on the ingress port's tcx ingress.
    Tc,
    /// umlbr_tc_out on the uplink's tcx egress.
    TcOut,
}

/// How the ingress port's counters move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Count {
    /// Not at all.
    #[default]
    Nothing,
    /// Received and finished by this program, not sent anywhere.
    Rx,
    Forwarded,
    Flooded,
    /// Dropped: the source is another port's static MAC.
    Spoofed,
}

#[derive(Clone, Debug)]
struct Expect {
    ret: u32,
    /// Copies transmitted by g1, g2, hp, up0, and entering up0's stack.
    copies: [usize; 5],
    /// The skb mark afterwards (TC).
    mark: u32,
    count: Count,
    /// The frame's source is learned on the ingress port.
    learns: bool,
}

/// An FDB entry before the run: MAC, port, flags, age.
#[derive(Clone, Copy, Debug)]
struct Pre(Mac, Dev, u32, u64);

#[derive(Clone, Debug)]
struct Case {
    name: &'static str,
    ingress: Dev,
    frame: Vec<u8>,
    mark: u32,
    fdb: Vec<Pre>,
    /// The source MAC is learned on the ingress port (by the programs
    /// whose expectations are set after `learns()`).
    learns: bool,
    /// FDB entries gone afterwards (aged out and removed by the lookup).
    removed: Vec<Mac>,
    uplink_xdp_tx: bool,
    with_uplink: bool,
    xdp: Option<Expect>,
    tc: Option<Expect>,
    tc_out: Option<Expect>,
}

impl Case {
    fn new(name: &'static str, ingress: Dev, frame: Vec<u8>) -> Self {
        Case {
            name,
            ingress,
            frame,
            mark: 0,
            fdb: vec![],
            learns: false,
            removed: vec![],
            uplink_xdp_tx: true,
            with_uplink: true,
            xdp: None,
            tc: None,
            tc_out: None,
        }
    }
    fn fdb(mut self, pre: &[Pre]) -> Self {
        self.fdb = pre.to_vec();
        self
    }
    fn learns(mut self) -> Self {
        self.learns = true;
        self
    }
    fn xdp(mut self, ret: u32, count: Count) -> Self {
        self.xdp = Some(Expect {
            ret,
            copies: [0; 5],
            mark: 0,
            count,
            learns: self.learns,
        });
        self
    }
    /// XDP passes the frame before switching it: nothing learned.
    fn xdp_untouched(mut self) -> Self {
        self.xdp = Some(Expect {
            ret: XDP_PASS,
            copies: [0; 5],
            mark: 0,
            count: Count::Nothing,
            learns: false,
        });
        self
    }
    fn tc(mut self, ret: u32, copies: [usize; 5], mark: u32, count: Count) -> Self {
        self.tc = Some(Expect {
            ret,
            copies,
            mark,
            count,
            learns: self.learns,
        });
        self
    }
    fn tc_out(mut self, ret: u32, copies: [usize; 5]) -> Self {
        self.tc_out = Some(Expect {
            ret,
            copies,
            mark: 0,
            count: Count::Nothing,
            learns: false,
        });
        self
    }
}

fn learned(m: Mac, d: Dev) -> Pre {
    Pre(m, d, 0, 0)
}

fn pattern(dst: Mac, src: Mac) -> Vec<u8> {
    Frame::new(dst, src).pattern(46).build()
}

impl TableCase<Prog> for Case {
    fn name(&self) -> &str {
        self.name
    }
    fn runs_on(&self, prog: Prog) -> bool {
        match prog {
            Prog::Xdp => self.xdp.is_some(),
            Prog::Tc => self.tc.is_some(),
            Prog::TcOut => self.tc_out.is_some(),
        }
    }
}

/// A guest's ping to the host's address on the uplink.
fn ping_host() -> Vec<u8> {
    Frame::new(UP_MAC, G1)
        .icmp_echo(G1_IP, UP_IP, false, 1, 1, b"to the host")
        .build()
}

fn table() -> Vec<Case> {
    [
        guests_and_the_uplinks_stack(),
        floods(),
        known_unicast(),
        handed_up_by_tc(),
        uplink_egress(),
    ]
    .concat()
}

/// Guests and the uplink's own stack.
fn guests_and_the_uplinks_stack() -> Vec<Case> {
    use Count::*;
    use Dev::*;
    vec![
        Case::new("guest -> the uplink's MAC: XDP passes, TC hands it to up0's stack, marked", Guest1, ping_host())
            .learns()
            .xdp(XDP_PASS, Nothing)
            .tc(TC_ACT_REDIRECT, [0; 5], LOCAL_MARK, Forwarded),
        Case::new("the host port -> the uplink's MAC: to up0's stack, marked", Host, pattern(UP_MAC, H))
            .learns()
            .xdp(XDP_PASS, Nothing)
            .tc(TC_ACT_REDIRECT, [0; 5], LOCAL_MARK, Forwarded),
        Case::new(
            "CHECKSUM_PARTIAL UDP from a guest to the uplink's MAC: XDP leaves it to TC untouched, TC hands it up",
            Guest1,
            Frame::new(UP_MAC, G1)
                .udp_partial(G1_IP, 5000, UP_IP, 53, b"offloaded")
                .build(),
        )
        .xdp_untouched()
        .learns()
        .tc(TC_ACT_REDIRECT, [0; 5], LOCAL_MARK, Forwarded),
        Case::new("LAN -> the uplink's MAC: XDP passes, TC lets it up (TC_ACT_OK)", Up, pattern(UP_MAC, L))
            .learns()
            .xdp(XDP_PASS, Nothing)
            .tc(TC_ACT_OK, [0; 5], 0, Rx),
    ]
}

/// Floods.
fn floods() -> Vec<Case> {
    use Count::*;
    use Dev::*;
    vec![
        Case::new(
            "broadcast from a guest: TC clones to the other ports and up0's stack (marked), drops the original",
            Guest1,
            pattern(BROADCAST, G1),
        )
        .learns()
        .xdp(XDP_PASS, Nothing)
        .tc(TC_ACT_SHOT, [0, 1, 1, 1, 1], LOCAL_MARK, Flooded),
        Case::new(
            "IPv4 multicast from a guest: as a broadcast",
            Guest2,
            pattern(mac("01:00:5e:00:00:fb"), G2),
        )
        .learns()
        .xdp(XDP_PASS, Nothing)
        .tc(TC_ACT_SHOT, [1, 0, 1, 1, 1], LOCAL_MARK, Flooded),
        Case::new(
            "unknown unicast from a guest: to the other ports and the wire, not up0's stack",
            Guest1,
            pattern(X, G1),
        )
        .learns()
        .xdp(XDP_PASS, Nothing)
        .tc(TC_ACT_SHOT, [0, 1, 1, 1, 0], 0, Flooded),
        Case::new(
            "broadcast from the uplink: clones to the guests and the host port, the original goes up (TC_ACT_OK)",
            Up,
            pattern(BROADCAST, L),
        )
        .learns()
        .xdp(XDP_PASS, Nothing)
        .tc(TC_ACT_OK, [1, 1, 1, 0, 0], 0, Flooded),
        Case::new(
            "unknown unicast from the uplink: clones to the other ports, dropped",
            Up,
            pattern(X, L),
        )
        .learns()
        .xdp(XDP_PASS, Nothing)
        .tc(TC_ACT_SHOT, [1, 1, 1, 0, 0], 0, Flooded),
        Case {
            removed: vec![G1],
            ..Case::new(
                "from the uplink to a guest whose entry aged: flooded, the entry removed",
                Up,
                pattern(G1, L),
            )
            .fdb(&[Pre(G1, Guest1, 0, 2 * AGING_NS), learned(L, Up)])
            .xdp(XDP_PASS, Nothing)
            .tc(TC_ACT_SHOT, [1, 1, 1, 0, 0], 0, Flooded)
        },
        Case::new(
            "a guest claiming the uplink's MAC: the static entry stays; dropped as spoofed",
            Guest1,
            pattern(BROADCAST, UP_MAC),
        )
        .xdp(XDP_DROP, Spoofed)
        .tc(TC_ACT_SHOT, [0, 0, 0, 0, 0], 0, Spoofed),
    ]
}

/// Known unicast across the uplink.
fn known_unicast() -> Vec<Case> {
    use Count::*;
    use Dev::*;
    vec![
        Case::new(
            "from the uplink to a known guest: forwarded",
            Up,
            pattern(G1, L),
        )
        .fdb(&[learned(G1, Guest1)])
        .learns()
        .xdp(XDP_REDIRECT, Forwarded)
        .tc(TC_ACT_REDIRECT, [0; 5], 0, Forwarded),
        Case::new(
            "from a guest to a LAN host behind the uplink: forwarded",
            Guest2,
            pattern(L, G2),
        )
        .fdb(&[learned(L, Up)])
        .learns()
        .xdp(XDP_REDIRECT, Forwarded)
        .tc(TC_ACT_REDIRECT, [0; 5], 0, Forwarded),
        Case {
            uplink_xdp_tx: false,
            ..Case::new(
                "to a LAN host, uplink outside the devmap (veth): XDP passes, TC forwards",
                Guest2,
                pattern(L, G2),
            )
            .fdb(&[learned(L, Up)])
            .learns()
            .xdp(XDP_PASS, Nothing)
            .tc(TC_ACT_REDIRECT, [0; 5], 0, Forwarded)
        },
        Case {
            uplink_xdp_tx: false,
            ..Case::new(
                "broadcast from a guest, uplink outside the devmap: TC floods as usual",
                Guest1,
                pattern(BROADCAST, G1),
            )
            .learns()
            .xdp(XDP_PASS, Nothing)
            .tc(TC_ACT_SHOT, [0, 1, 1, 1, 1], LOCAL_MARK, Flooded)
        },
    ]
}

/// What TC handed up itself.
fn handed_up_by_tc() -> Vec<Case> {
    use Count::*;
    use Dev::*;
    vec![
        Case {
            mark: LOCAL_MARK,
            ..Case::new(
                "a frame with the local mark on up0's TC ingress: TC_ACT_OK, mark cleared, nothing counted or learned",
                Up,
                pattern(BROADCAST, G1),
            )
            .tc(TC_ACT_OK, [0; 5], 0, Nothing)
        },
        Case {
            mark: LOCAL_MARK,
            ..Case::new(
                "the local mark on unicast to the uplink's MAC: let up, mark cleared",
                Up,
                ping_host(),
            )
            .tc(TC_ACT_OK, [0; 5], 0, Nothing)
        },
        Case {
            mark: LOCAL_MARK + 1,
            ..Case::new(
                "another mark on up0's TC ingress: switched as usual (flooded), mark kept",
                Up,
                pattern(BROADCAST, L),
            )
            .learns()
            .tc(TC_ACT_OK, [1, 1, 1, 0, 0], LOCAL_MARK + 1, Flooded)
        },
    ]
}

/// The uplink's egress: the host's own frames.
fn uplink_egress() -> Vec<Case> {
    use Dev::*;
    vec![
        Case::new(
            "host -> a known guest (tc_out): to the guest's port",
            Up,
            pattern(G1, UP_MAC),
        )
        .fdb(&[learned(G1, Guest1)])
        .tc_out(TC_ACT_REDIRECT, [0; 5]),
        Case::new(
            "host -> a guest with a static entry (tc_out): to its port",
            Up,
            pattern(G2, UP_MAC),
        )
        .fdb(&[Pre(G2, Guest2, FDB_F_STATIC, 10 * AGING_NS)])
        .tc_out(TC_ACT_REDIRECT, [0; 5]),
        Case::new(
            "host -> the bridge's host interface (tc_out): to the host port",
            Up,
            pattern(H, UP_MAC),
        )
        .fdb(&[learned(H, Host)])
        .tc_out(TC_ACT_REDIRECT, [0; 5]),
        Case::new(
            "host broadcast (tc_out): clones to the guests, not the host port, and on to the wire",
            Up,
            Frame::new(BROADCAST, UP_MAC)
                .arp_request(UP_IP, G1_IP)
                .build(),
        )
        .tc_out(TC_ACT_OK, [1, 1, 0, 0, 0]),
        Case::new(
            "host multicast (tc_out): as a broadcast",
            Up,
            pattern(mac("01:00:5e:00:00:01"), UP_MAC),
        )
        .tc_out(TC_ACT_OK, [1, 1, 0, 0, 0]),
        Case::new(
            "host -> unknown MAC (tc_out): to the wire",
            Up,
            pattern(X, UP_MAC),
        )
        .tc_out(TC_ACT_OK, [0; 5]),
        Case::new(
            "host -> a LAN host (tc_out): to the wire",
            Up,
            pattern(L, UP_MAC),
        )
        .fdb(&[learned(L, Up)])
        .tc_out(TC_ACT_OK, [0; 5]),
        Case {
            removed: vec![G1],
            ..Case::new(
                "host -> a guest whose entry aged (tc_out): to the wire, entry removed",
                Up,
                pattern(G1, UP_MAC),
            )
            .fdb(&[Pre(G1, Guest1, 0, 2 * AGING_NS)])
            .tc_out(TC_ACT_OK, [0; 5])
        },
        Case::new(
            "host -> its own MAC (tc_out): to the wire",
            Up,
            pattern(UP_MAC, UP_MAC),
        )
        .tc_out(TC_ACT_OK, [0; 5]),
        Case::new(
            "a guest's frame bridged out of the uplink (tc_out): untouched",
            Up,
            pattern(L, G1),
        )
        .fdb(&[learned(G1, Guest1), learned(L, Up)])
        .tc_out(TC_ACT_OK, [0; 5]),
        Case::new(
            "a guest's broadcast going out of the uplink (tc_out): untouched, no clones",
            Up,
            pattern(BROADCAST, G1),
        )
        .fdb(&[learned(G1, Guest1)])
        .tc_out(TC_ACT_OK, [0; 5]),
        Case::new(
            "a LAN host's MAC as source (tc_out): untouched",
            Up,
            pattern(G1, L),
        )
        .fdb(&[learned(G1, Guest1)])
        .tc_out(TC_ACT_OK, [0; 5]),
        Case {
            with_uplink: false,
            ..Case::new(
                "no uplink configured (tc_out on a switch port's egress): untouched",
                Up,
                pattern(G1, UP_MAC),
            )
            .fdb(&[learned(G1, Guest1)])
            .tc_out(TC_ACT_OK, [0; 5])
        },
    ]
}

impl Bench {
    fn check(&mut self, c: &Case, prog: Prog) -> Result<()> {
        let Some(e) = (match prog {
            Prog::Xdp => &c.xdp,
            Prog::Tc => &c.tc,
            Prog::TcOut => &c.tc_out,
        }) else {
            return Ok(());
        };
        self.reset(c.with_uplink, c.uplink_xdp_tx)?;
        for p in &c.fdb {
            self.fdb_insert(p.0, p.1, p.2, p.3)?;
        }
        let fdb_before = self.ctx.fdb()?;
        let stats_before = self.stats()?;
        let ingress = self.ifindex(c.ingress);
        let t0 = now_coarse();
        let (ret, out, mark) = self.run(prog, ingress, c.mark, &c.frame)?;
        let t1 = now_coarse();
        let mut errs = Errs::default();
        if ret != e.ret {
            errs.push(format!("returned {ret}, expected {}", e.ret));
        }
        if out != c.frame {
            errs.push("output bytes changed");
        }
        if prog != Prog::Xdp && mark != e.mark {
            errs.push(format!("mark {mark:#x} afterwards, expected {:#x}", e.mark));
        }
        let got = self.collect(&e.copies);
        let counts: Vec<usize> = got.iter().map(Vec::len).collect();
        let right = got.iter().flatten().all(|f| *f == c.frame);
        if counts != e.copies || !right {
            errs.push(format!(
                "copies on g1 g2 hp up0 up0-stack: {counts:?}, expected {:?}{}",
                e.copies,
                if right {
                    ""
                } else {
                    " (some differ from the input)"
                }
            ));
        }
        // The FDB: the source learned (TC and XDP), the rest as before
        // except entries removed as aged.
        let after = self.ctx.fdb()?;
        let src: Mac = c.frame[6..12].try_into()?;
        let mut want: Vec<(Mac, FdbEntry)> = fdb_before
            .iter()
            .filter(|(m, _)| !c.removed.contains(m))
            .copied()
            .collect();
        let learns = e.learns;
        if learns {
            want.retain(|(m, _)| *m != src);
            want.push((
                src,
                FdbEntry {
                    ifindex: ingress,
                    flags: 0,
                    updated_ns: 0,
                },
            ));
            want.sort_by_key(|(m, _)| *m);
        }
        let fdb_ok = after.len() == want.len()
            && after.iter().zip(&want).all(|((am, ae), (wm, we))| {
                am == wm
                    && if learns && *am == src {
                        ae.ifindex == we.ifindex
                            && ae.flags == 0
                            && ae.updated_ns >= t0
                            && ae.updated_ns <= t1
                    } else {
                        ae == we
                    }
            });
        if !fdb_ok {
            errs.push(format!(
                "FDB {:?}, expected {:?}",
                after
                    .iter()
                    .map(|(m, e)| (fmt_mac(m), e.ifindex, e.flags))
                    .collect::<Vec<_>>(),
                want.iter()
                    .map(|(m, e)| (fmt_mac(m), e.ifindex, e.flags))
                    .collect::<Vec<_>>()
            ));
        }
        // Counters: only the ingress port's move.
        let mut want = stats_before.clone();
        let i = idx(c.ingress);
        let s = &mut want[i];
        if learns {
            s.learned += 1;
        }
        if e.count != Count::Nothing {
            count_rx(s, c.frame.len(), prog == Prog::Xdp);
            match e.count {
                Count::Forwarded => s.forwarded += 1,
                Count::Flooded => s.flooded += 1,
                Count::Spoofed => {
                    s.dropped += 1;
                    s.spoofed += 1;
                }
                _ => {}
            }
        }
        self.ctx.check_port_stats(&want, &mut errs)?;
        errs.done()
    }
}

umlbr_tests::table_tests!(
    Bench,
    Prog,
    xdp_table: "xdp" Xdp,
    tc_table: "tc" Tc,
    tc_out_table: "tcout" TcOut,
);

// ---------------------------------------------------------------------------
// Live: the programs attached, the host's stack answering.

/// A guest's ARP request for the host's uplink address, flooded by TC,
/// reaches the host's stack once through the marked clone (up0's own TC
/// program lets it up without counting or flooding it again), goes out to
/// the wire once, and the host's answer comes back to the guest through
/// umlbr_tc_out without touching the wire. A ping to the host then goes
/// up through the local redirect and its reply comes back the same way.
#[test]
fn live_guest_talks_to_the_host_through_the_uplink() -> Result<()> {
    let mut b = Bench::new("live")?;
    b.ctx
        .attach_tc(names::TC_PROG, &["g1", "g2", "up0"], TcAttachType::Ingress)?;
    b.ctx
        .attach_tc(names::TC_OUT_PROG, &["up0"], TcAttachType::Egress)?;
    let up_before = b.stats()?[idx(Dev::Up)];

    let arp = Frame::new(BROADCAST, G1).arp_request(G1_IP, UP_IP).build();
    b.ctx.taps.write(idx(Dev::Guest1), &arp)?;
    let got = b.collect(&[1, 1, 1, 1, 1]);
    let counts: Vec<usize> = got.iter().map(Vec::len).collect();
    let reply = got[idx(Dev::Guest1)].first();
    let is_arp_reply = reply.is_some_and(|r| {
        r.len() >= 42
            && r[0..6] == G1
            && r[6..12] == UP_MAC
            && r[12..14] == [0x08, 0x06]
            && r[20..22] == [0, 2]
            && r[28..32] == UP_IP
    });
    ensure!(
        counts == vec![1, 1, 1, 1, 1]
            && is_arp_reply
            && got[1][0] == arp
            && got[2][0] == arp
            && got[3][0] == arp
            && got[4][0] == arp,
        "ARP: frames on g1 g2 hp up0 up0-stack {counts:?}, expected [1, 1, 1, 1, 1] \
         (the host's ARP reply on g1: {is_arp_reply}; the request once on the wire and once up the stack)"
    );

    let ping = Frame::new(UP_MAC, G1)
        .icmp_echo(G1_IP, UP_IP, false, 0x77, 1, b"hello host")
        .build();
    b.ctx.taps.write(idx(Dev::Guest1), &ping)?;
    let got = b.collect(&[1, 0, 0, 0, 1]);
    let counts: Vec<usize> = got.iter().map(Vec::len).collect();
    let pong = got[idx(Dev::Guest1)].first();
    let is_pong = pong.is_some_and(|r| {
        r.len() >= 42
            && r[0..6] == G1
            && r[6..12] == UP_MAC
            && r[14 + 12..14 + 16] == UP_IP
            && r[14 + 16..14 + 20] == G1_IP
            && r[14 + 20] == 0
    });
    ensure!(
        counts == vec![1, 0, 0, 0, 1] && is_pong && got[4][0] == ping,
        "ping: frames on g1 g2 hp up0 up0-stack {counts:?}, expected [1, 0, 0, 0, 1] (echo reply on g1: {is_pong})"
    );
    // What the host's stack got through the mark was not switched again.
    let up_after = b.stats()?[idx(Dev::Up)];
    ensure!(
        up_after == up_before,
        "up0's counters moved: {up_before:?} -> {up_after:?}"
    );
    let g1 = b.stats()?[idx(Dev::Guest1)];
    ensure!(
        g1.tc == 2 && g1.flooded == 1 && g1.forwarded == 1,
        "g1's counters: {g1:?}"
    );
    Ok(())
}
