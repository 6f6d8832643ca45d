//! VLAN-aware ports in umlbr's XDP and TC programs: BPF_PROG_TEST_RUN
//! tables (action, output bytes, FDB keys, counters) and live frames
//! through taps (XDP tagging on a redirect, TC floods tagging each
//! port's copy, the kernel's own untagging before TC).
//!
//! The bench: three taps, p1 an access port of VLAN 10, p2 a trunk of
//! VLANs 10 and 20 (untagged: the default VLAN 0), p3 an access port of
//! VLAN 20, in a bridge with `CFG_F_VLAN` (as `attach --vlan`/`--trunk`
//! leave it). Needs root.
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use aya::programs::TcAttachType;
use umlbr_common::{
    CFG_F_VLAN, Config, FdbEntry, FdbKey, MAX_XDP_FRAME, PORT_KIND_OTHER, PortStats, PortVlan,
    names,
};
use umlbr_tests::{
    bpf::{AGING_NS, Ctx, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_REDIRECT},
    netns::Netns,
    wire::{BROADCAST, Frame, Mac, ethertype},
};

mod umlbr_lib;
use umlbr_lib::monotonic_coarse_ns as now_coarse;

const PORT_NAMES: [&str; 3] = ["p1", "p2", "p3"];
const A: Mac = [0x02, 0, 0, 0, 0, 0x0a];
const B: Mac = [0x02, 0, 0, 0, 0, 0x0b];
const C: Mac = [0x02, 0, 0, 0, 0, 0x0c];
const D: Mac = [0x02, 0, 0, 0, 0, 0x0d];

struct Bench {
    ctx: Ctx,
}

fn vlans(pvid: u16, tagged: &[u16]) -> PortVlan {
    let mut v = PortVlan {
        pvid,
        nr_tagged: tagged.len() as u32,
        ..Default::default()
    };
    for &t in tagged {
        v.tagged[t as usize >> 6] |= 1 << (t & 63);
    }
    v
}

impl Bench {
    fn new(tag: &str) -> Result<Self> {
        let ns = Netns::without_ipv6(tag)?;
        let ctx = Ctx::new(
            ns,
            &PORT_NAMES,
            "for t in p1 p2 p3; do ip link set $t up || exit 1; done",
            umlbr_lib::load_object,
        )?;
        let mut b = Bench { ctx };
        b.reset(true)?;
        Ok(b)
    }

    fn idx(&self, i: usize) -> u32 {
        self.ctx.taps.ifindex[i]
    }

    /// The ports, their VLANs, `CFG_F_VLAN` if `vlan_aware`, an empty FDB
    /// but for B (VLAN 10, behind p2) and C (VLAN 20, behind p3), zero
    /// counters, empty taps.
    fn reset(&mut self, vlan_aware: bool) -> Result<()> {
        let idx = self.ctx.taps.ifindex.clone();
        self.ctx.set_ports(&idx, None)?;
        self.ctx.set_config(Config {
            aging_ns: AGING_NS,
            nr_ports: 3,
            flags: if vlan_aware { CFG_F_VLAN } else { 0 },
            ..Default::default()
        })?;
        self.ctx.clear::<u32, PortVlan>(names::VLAN)?;
        for (i, v) in [vlans(10, &[]), vlans(0, &[10, 20]), vlans(20, &[])]
            .into_iter()
            .enumerate()
        {
            self.ctx.insert(names::VLAN, idx[i], v)?;
        }
        self.ctx.clear::<FdbKey, FdbEntry>(names::FDB)?;
        let now = now_coarse();
        self.fdb_put(B, 10, 1, now)?;
        self.fdb_put(C, 20, 2, now)?;
        for &i in &idx {
            let zero = PortStats {
                kind: PORT_KIND_OTHER,
                ..Default::default()
            };
            self.ctx.set_port_stats(i, zero)?;
        }
        self.ctx.quiet();
        Ok(())
    }

    fn fdb_put(&mut self, m: Mac, vid: u16, port: usize, now: u64) -> Result<()> {
        let e = FdbEntry {
            ifindex: self.idx(port),
            flags: 0,
            updated_ns: now,
        };
        self.ctx.insert(names::FDB, FdbKey::in_vlan(m, vid), e)
    }

    /// FDB keys (VLAN, MAC) -> port index.
    fn fdb(&mut self) -> Result<Vec<(u16, Mac, usize)>> {
        let idx = self.ctx.taps.ifindex.clone();
        let mut v: Vec<(u16, Mac, usize)> = self
            .ctx
            .entries::<FdbKey, FdbEntry>(names::FDB)?
            .into_iter()
            .map(|(k, e)| {
                let p = idx.iter().position(|&i| i == e.ifindex).unwrap_or(99);
                (k.vlan, k.mac, p)
            })
            .collect();
        v.sort();
        Ok(v)
    }

    fn stats(&mut self, port: usize) -> Result<PortStats> {
        let i = self.idx(port);
        Ok(self.ctx.port_stats(&[i])?[0])
    }
}

fn untagged(dst: Mac, src: Mac) -> Frame {
    Frame::new(dst, src).pattern(60)
}

fn tagged(dst: Mac, src: Mac, vid: u16, pcp: u8) -> Frame {
    Frame::new(dst, src).vlan(vid, pcp).pattern(60)
}

/// What a case expects.
#[derive(Debug)]
enum Want {
    /// XDP_REDIRECT / TC_ACT_REDIRECT with these output bytes, counted as
    /// forwarded.
    Forward(Vec<u8>),
    /// XDP_PASS: left to TC (floods, frames XDP cannot tag), the output
    /// unchanged; nothing counted.
    ToTc,
    /// XDP_DROP / TC_ACT_SHOT, counted as `vlan` (and `dropped`).
    DropVlan,
}

struct Case {
    name: &'static str,
    from: usize,
    frame: Vec<u8>,
    want: Want,
    /// An FDB key the run must have learned: (VLAN, MAC, port).
    learns: Option<(u16, Mac, usize)>,
}

fn case(name: &'static str, from: usize, f: Frame, want: Want) -> Case {
    Case {
        name,
        from,
        frame: f.build(),
        want,
        learns: None,
    }
}

/// XDP: tags pushed, removed and rewritten in the frame itself.
fn xdp_cases() -> Vec<Case> {
    let big = Frame::new(B, A).pattern(MAX_XDP_FRAME - 14 - 2);
    vec![
        Case {
            learns: Some((10, A, 0)),
            ..case(
                "access -> trunk: tag 10 pushed",
                0,
                untagged(B, A),
                Want::Forward(tagged(B, A, 10, 0).build()),
            )
        },
        case(
            "trunk -> access: tag 20 removed",
            1,
            tagged(C, D, 20, 0),
            Want::Forward(untagged(C, D).build()),
        ),
        case(
            "priority tag on an access port: VLAN 10, priority kept",
            0,
            tagged(B, A, 0, 5),
            Want::Forward(tagged(B, A, 10, 5).build()),
        ),
        case(
            "priority tag to an access port: removed",
            1,
            tagged(C, D, 20, 3),
            Want::Forward(untagged(C, D).build()),
        ),
        case(
            "access port, tag 42",
            0,
            tagged(B, A, 42, 0),
            Want::DropVlan,
        ),
        case(
            "access port, tagged with its own VLAN",
            0,
            tagged(B, A, 10, 0),
            Want::DropVlan,
        ),
        case(
            "trunk, a VLAN it does not carry",
            1,
            tagged(C, D, 30, 0),
            Want::DropVlan,
        ),
        case(
            "802.1ad service tag",
            0,
            Frame::new(B, A)
                .tag(ethertype::QINQ, 10, 0)
                .vlan(10, 0)
                .pattern(60),
            Want::DropVlan,
        ),
        case(
            "truncated tag",
            0,
            Frame::new(B, A).ethertype(ethertype::VLAN).payload(&[0]),
            Want::DropVlan,
        ),
        Case {
            learns: Some((20, D, 2)),
            ..case(
                "B is unknown in VLAN 20: flooded (by TC)",
                2,
                untagged(B, D),
                Want::ToTc,
            )
        },
        case(
            "broadcast: flooded by TC",
            0,
            untagged(BROADCAST, A),
            Want::ToTc,
        ),
        case(
            "too long to take a tag in XDP: TC tags it",
            0,
            big,
            Want::ToTc,
        ),
    ]
}

#[test]
fn xdp_table() -> Result<()> {
    let mut b = Bench::new("vl-xdp")?;
    let mut errs = Vec::new();
    for c in xdp_cases() {
        b.reset(true)?;
        let (action, out) = b
            .ctx
            .run_xdp(b.idx(c.from), 0, &c.frame)
            .with_context(|| c.name)?;
        let s = b.stats(c.from)?;
        let ok = match &c.want {
            Want::Forward(f) => action == XDP_REDIRECT && out == *f && s.forwarded == 1,
            Want::ToTc => action == XDP_PASS && out == c.frame && s.rx_packets == 0,
            Want::DropVlan => action == XDP_DROP && s.vlan == 1 && s.dropped == 1,
        };
        let fdb = b.fdb()?;
        let learned = c.learns.is_none_or(|k| fdb.contains(&k));
        if !ok || !learned {
            errs.push(format!(
                "{}: action {action}, out {:02x?}, {s:?}, FDB {fdb:?}; wanted {:?}, learning {:?}",
                c.name, out, c.want, c.learns
            ));
        }
    }
    ensure!(errs.is_empty(), "{}", errs.join("\n"));
    Ok(())
}

/// TC: a test run's skb keeps its tag in the packet (nothing untagged
/// it); the helpers pop it from there, so a removed tag shows in the
/// output. A pushed tag is out of band (the live tests show it on the
/// wire).
#[test]
fn tc_table() -> Result<()> {
    let mut b = Bench::new("vl-tc")?;
    let cases = [
        case(
            "trunk -> access: tag removed",
            1,
            tagged(C, D, 20, 0),
            Want::Forward(untagged(C, D).build()),
        ),
        case(
            "access -> trunk: tag pushed out of band",
            0,
            untagged(B, A),
            Want::Forward(untagged(B, A).build()),
        ),
        case(
            "access port, tag 42",
            0,
            tagged(B, A, 42, 0),
            Want::DropVlan,
        ),
        case("trunk, VLAN 30", 1, tagged(C, D, 30, 0), Want::DropVlan),
        case(
            "802.1ad service tag",
            1,
            Frame::new(C, D).tag(ethertype::QINQ, 20, 0).pattern(60),
            Want::DropVlan,
        ),
    ];
    let mut errs = Vec::new();
    for c in cases {
        b.reset(true)?;
        let i = b.idx(c.from);
        let (action, out, _) = b
            .ctx
            .run_tc(names::TC_PROG, 0, i, i, &c.frame)
            .with_context(|| c.name)?;
        let s = b.stats(c.from)?;
        let ok = match &c.want {
            Want::Forward(f) => action == TC_ACT_REDIRECT && out == *f && s.forwarded == 1,
            Want::ToTc => false,
            Want::DropVlan => action == TC_ACT_SHOT && s.vlan == 1 && s.dropped == 1,
        };
        if !ok {
            errs.push(format!(
                "{}: action {action}, out {:02x?}, {s:?}; wanted {:?}",
                c.name, out, c.want
            ));
        }
    }
    ensure!(errs.is_empty(), "{}", errs.join("\n"));
    Ok(())
}

/// A bridge without VLANs (no `CFG_F_VLAN`) is VLAN-unaware as before:
/// a tagged frame is switched with its tag as payload, learned in the
/// default VLAN.
#[test]
fn without_vlans_tags_are_payload() -> Result<()> {
    let mut b = Bench::new("vl-none")?;
    b.reset(false)?;
    let f = tagged(BROADCAST, A, 42, 0).build();
    let (action, out) = b.ctx.run_xdp(b.idx(0), 0, &f)?;
    let fdb = b.fdb()?;
    ensure!(
        action == XDP_REDIRECT && out == f && fdb.contains(&(0, A, 0)),
        "action {action}, FDB {fdb:?}"
    );
    let s = b.stats(0)?;
    ensure!(s.flooded == 1 && s.vlan == 0, "{s:?}");
    Ok(())
}

/// Frames on the wire: XDP's redirect with a tag pushed and one removed
/// (umlbr_xdp on the taps, frames written into them), and TC's floods, a
/// copy per port tagged as it sends the VLAN (umlbr_tc on the taps'
/// ingress; the kernel takes the tag of a frame written into a tap out
/// of the packet before TC, and tun writes it back into a copy read from
/// a tap).
#[test]
fn live_tagging() -> Result<()> {
    let mut b = Bench::new("vl-live")?;
    b.ctx
        .attach_tc(names::TC_PROG, &PORT_NAMES, TcAttachType::Ingress)?;
    let frames = |b: &mut Bench, expect: &[usize; 3], f: &dyn Fn(&[u8]) -> bool| {
        b.ctx
            .collect(expect, Duration::from_secs(1), f)
            .iter()
            .map(|fs| fs.iter().filter(|x| f(x)).cloned().collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    let marked = |m: &'static [u8]| move |f: &[u8]| f.windows(m.len()).any(|w| w == m);

    // XDP unicast: p1 (VLAN 10, untagged) -> B behind the trunk p2.
    let to_b = untagged(B, A).payload(b"xdp push").pad_min().build();
    b.ctx.run_xdp_live(b.idx(0), &to_b)?;
    let got = frames(&mut b, &[0, 1, 0], &marked(b"xdp push"));
    let want = Frame::new(B, A)
        .vlan(10, 0)
        .payload(b"xdp push")
        .pad_min()
        .build();
    ensure!(
        got[1].len() == 1
            && got[1][0][..want.len()] == want[..]
            && got[0].is_empty()
            && got[2].is_empty(),
        "XDP push: p1..p3 got {got:02x?}"
    );
    // XDP unicast: p2 tagged 20 -> C on p3 (untagged).
    b.reset(true)?;
    let to_c = Frame::new(C, D)
        .vlan(20, 0)
        .payload(b"xdp pop")
        .pad_min()
        .build();
    b.ctx.run_xdp_live(b.idx(1), &to_c)?;
    let got = frames(&mut b, &[0, 0, 1], &marked(b"xdp pop"));
    ensure!(
        got[2].len() == 1 && got[2][0][12..14] != [0x81, 0] && got[0].is_empty(),
        "XDP pop: p1..p3 got {got:02x?}"
    );
    // A broadcast from p1 (VLAN 10): XDP passes, TC floods to p2 tagged 10
    // and not to p3 (VLAN 20).
    b.reset(true)?;
    let bc = untagged(BROADCAST, A)
        .payload(b"flood ten")
        .pad_min()
        .build();
    b.ctx.run_xdp_live(b.idx(0), &bc)?;
    let got = frames(&mut b, &[0, 1, 0], &marked(b"flood ten"));
    ensure!(
        got[1].len() == 1
            && got[1][0][12..16] == [0x81, 0, 0, 10]
            && got[2].is_empty()
            && got[0].is_empty(),
        "flood of VLAN 10: p1..p3 got {got:02x?}"
    );
    // A broadcast tagged 20 from the trunk: p3 gets it untagged, p1 not.
    b.reset(true)?;
    let bc = Frame::new(BROADCAST, D)
        .vlan(20, 0)
        .payload(b"flood twenty")
        .pad_min()
        .build();
    b.ctx.taps.write(1, &bc)?;
    let got = frames(&mut b, &[0, 0, 1], &marked(b"flood twenty"));
    ensure!(
        got[2].len() == 1 && got[2][0][12..14] != [0x81, 0] && got[0].is_empty(),
        "flood of VLAN 20: p1..p3 got {got:02x?}"
    );
    let s = b.stats(1)?;
    ensure!(s.flooded == 1 && s.tc == 1, "p2: {s:?}");
    Ok(())
}
