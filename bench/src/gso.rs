//! The gso group: the tap generator acting like a virtio or vector guest
//! with TSO: IFF_VNET_HDR and ~64 KB TCP super-frames (gso_type TCPV4,
//! NEEDS_CSUM), tap0 → tap1.
//!
//! tun builds such a frame as an skb (too big for its native XDP path,
//! `tun_can_build_skb`); on a tap with umlbr's XDP program, generic XDP
//! would copy each super-frame before the program passes it on to TC. So
//! umlbr attaches both taps TC only, as the README advises for guests
//! with vnet headers (`tap add --vnet-hdr`, `attach --tc-only`): here the
//! umlbr and umlbr-tc contenders are the same set-up. The redirect floor
//! is a tcx `bpf_redirect` from tap0 to tap1, the same hook.
use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};

use crate::{
    Cfg, Progress, check_interrupted,
    report::{Check, Goal, Results, Row, goal, higher, lower},
    tap::{self, TapMode, gen_mac, sink_mac},
    topo::{Contender, Topo},
    traffic::{self, GenSpec, Job, Outcome, RunOpts, SinkSpec},
};

/// The segment size a guest with a 1500 B MTU and no TCP options uses,
/// and segments per super-frame: 44 × 1448 = 63 712 B of payload, a
/// 63 766 B frame.
const MSS: u16 = 1448;
const SEGS: usize = 44;

/// Per reader `{id}`, described as `{reader}`; frames of `{frame}` bytes,
/// gso_size `{mss}`.
const PER_READER: &[Row] = &[
    higher(
        "{id}",
        "TCP GSO super-frames tap→tap (IFF_VNET_HDR, {frame} B frames, gso_size {mss}), \
         {reader}: TCP payload delivered",
        "Gbit/s",
    ),
    lower(
        "{id}_cpu",
        "TCP GSO tap→tap, {reader}: CPU per GB delivered (writer + reader threads)",
        "CPU-s/GB",
    ),
    lower(
        "{id}_wcpu",
        "TCP GSO tap→tap, {reader}: writer CPU per super-frame written (write() and \
         switching: where generic XDP's copy would show)",
        "µs",
    ),
    lower(
        "{id}_sys",
        "TCP GSO tap→tap, {reader}: machine CPU per GB delivered (/proc/stat, other load \
         included)",
        "CPU-s/GB",
    ),
];

/// Each reader, and the goal of its first row.
const READERS: [(&str, &str, Option<Goal>); 2] = [
    (
        "gso_tcp",
        "reader with TSO offloads, like a virtio guest",
        Some(goal(
            "not slower: ≥ 1.0× kernel",
            &[Check::RatioAtLeast(Contender::Kernel, 1.0)],
        )),
    ),
    ("gso_tcp_seg", "reader without offloads", None),
];

pub fn define_rows(cfg: &Cfg, res: &mut Results) {
    let _ = cfg;
    let frame = crate::fmt_count((14 + 20 + 20 + MSS as usize * SEGS) as u32);
    let mss = MSS.to_string();
    for (id, reader, goal) in READERS {
        let mut rows = PER_READER.to_vec();
        rows[0].goal = goal;
        let vars = [
            ("id", id),
            ("reader", reader),
            ("frame", &frame),
            ("mss", &mss),
        ];
        res.define_all("gso", &rows, &vars);
    }
}

/// One writer on tap0 sends the same TCP super-frame (with its
/// virtio_net_hdr) to the station on tap1 over and over; a reader with
/// IFF_VNET_HDR on tap1 counts the TCP payload bytes that arrive, whole
/// super-frames or segments. Twice: the reader announcing checksum and
/// TSO offloads (TUNSETOFFLOAD, as a virtio guest's transport does: tap1
/// then takes GSO frames whole), and a reader without (the stack
/// segments the super-frames before tap1, in the writer's softirq).
pub fn run(cfg: &Cfg, p: &Progress, res: &mut Results) -> Result<()> {
    let c = p.contender;
    if c != Contender::Ceiling {
        // The segmenting reader first: TUNSETOFFLOAD stays on the tap.
        for (row, offload) in [("gso_tcp_seg", false), ("gso_tcp", true)] {
            check_interrupted()?;
            // A fresh topology each: the offloads stay with the device.
            // The floor redirects in tcx, the hook umlbr switches these on.
            let topo = if c == Contender::Redirect {
                Topo::tc_redirect(2, &cfg.umlbr)?
            } else {
                Topo::new(c, 2, &[], &cfg.umlbr)?
            };
            for t in &topo.taps {
                topo.for_vnet_guest(t)?;
            }
            gso_row(cfg, p, res, &topo, row, offload)?;
        }
    }
    Ok(())
}

fn gso_row(
    cfg: &Cfg,
    p: &Progress,
    res: &mut Results,
    topo: &Topo,
    row: &str,
    offload: bool,
) -> Result<()> {
    let c = p.contender;
    let vnet = TapMode {
        nonblocking: true,
        vnet_hdr: true,
    };
    let ip = |h| Ipv4Addr::new(192, 168, 2, h);
    let frame = tap::gso_tcp_frame(sink_mac(1), gen_mac(0), ip(10), ip(11), MSS, SEGS);
    let frame_payload = MSS as u64 * SEGS as u64;
    let job = Job {
        netns: topo.ns.name.clone(),
        gens: vec![GenSpec {
            tap: topo.taps[0].clone(),
            frame,
            mode: vnet,
            cpu: cfg.cpus.map(|_| 0),
            hello: None,
            packet_ns: None,
            random_src: false,
        }],
        sinks: vec![SinkSpec {
            tap: topo.taps[1].clone(),
            mac: sink_mac(1),
            vnet_hdr: true,
            cpu: cfg.cpus.map(|n| 1 % n),
            udp: None,
            packet_ns: None,
        }],
        warmup: cfg.warmup,
        window: cfg.window,
        probe: true,
    };
    let what = if offload {
        "TCP GSO tap→tap, TSO reader"
    } else {
        "TCP GSO tap→tap, plain reader"
    };
    let before = topo.paths()?;
    let o = traffic::run_with(
        &job,
        RunOpts {
            raw_frames: true,
            sink_offload: offload,
        },
    )
    .context(what)?;
    let paths = topo.paths()?.since(&before);
    check(&o).context(what)?;
    let bytes = o.delivered_bytes();
    let gb = bytes as f64 / 1e9;
    let gbps = bytes as f64 * 8.0 / o.secs / 1e9;
    let written = o.sent * frame_payload;
    let got = o.delivered();
    let per_frame = bytes as f64 / got.max(1) as f64;
    p.say(
        what,
        &format!(
            "{gbps:>6.2} Gbit/s {:.2} CPU-s/GB (writer {:.2}, reader {:.2}; machine {:.2}) \
             written {:.2} Gbit/s ({} super-frames, {:.1} µs writer CPU each, {} write \
             errors); read {got} frames of {per_frame:.0} B payload on average, {} with a GSO \
             header",
            (o.gen_cpu_s + o.sink_cpu_s) / gb,
            o.gen_cpu_s / gb,
            o.sink_cpu_s / gb,
            o.sys_busy_s / gb,
            written as f64 * 8.0 / o.secs / 1e9,
            o.sent,
            o.gen_cpu_s * 1e6 / o.sent as f64,
            o.send_errors,
            o.received_gso,
        ),
    );
    res.add(row, c, gbps);
    res.add(&format!("{row}_cpu"), c, (o.gen_cpu_s + o.sink_cpu_s) / gb);
    res.add(&format!("{row}_sys"), c, o.sys_busy_s / gb);
    res.add(&format!("{row}_wcpu"), c, o.gen_cpu_s * 1e6 / o.sent as f64);
    // What the reader got: whole super-frames (the tap took them as GSO
    // frames) or segments (the stack segmented them on the way).
    let arrived = if o.received_gso * 100 >= got * 99 {
        format!("whole GSO super-frames ({frame_payload} B payload each)")
    } else if o.received_gso * 100 <= got {
        format!("segments (~{:.0} B payload each)", per_frame.round())
    } else {
        format!(
            "a mix: {:.0}% GSO super-frames",
            100.0 * o.received_gso as f64 / got as f64
        )
    };
    res.note(row, format!("{}: the reader got {arrived}", c.as_str()));
    if c.is_umlbr() {
        res.note(
            row,
            format!("{} switched by {}", c.as_str(), paths.describe()),
        );
    }
    if o.send_errors > 0 {
        res.note(
            row,
            format!("{}: some writes of super-frames failed", c.as_str()),
        );
    }
    Ok(())
}

/// Writes that fail, or frames that never arrive, must not pass for a
/// slow switch.
fn check(o: &Outcome) -> Result<()> {
    if o.sent == 0 {
        bail!(
            "no super-frame was written in the window ({} write errors)",
            o.send_errors
        );
    }
    if o.send_errors > o.sent {
        bail!(
            "most writes failed: {} errors, {} frames written",
            o.send_errors,
            o.sent
        );
    }
    if o.delivered_bytes() == 0 {
        bail!(
            "{} super-frames written, nothing delivered to the reader",
            o.sent
        );
    }
    Ok(())
}
