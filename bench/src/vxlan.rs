//! The vxlan group: guests on two hosts over VXLAN (issue 19), umlbr
//! against the kernel bridge with the same VXLAN device as a port, on the
//! same underlay.
//!
//! Two host namespaces joined by an underlay veth pair (MTU 1550: the
//! guests keep 1500), each with a bridge and `vx100` (VNI 100, the other
//! host as its all-zero FDB entry, learning on) as a port of it. Host 1
//! has the writer's tap; host 2 a veth to a "guest" namespace whose end
//! is read through a packet socket (the writer's frames cross both
//! bridges and the overlay: tap → XDP → TC → vx100 → underlay → vx100 →
//! TC → veth). The TCP row runs iperf3 between two guest namespaces, one
//! behind each host's bridge on a veth (TSO/GSO on, as guests with
//! offloads have them; umlbr attaches these veths `--tc-only`, as it
//! does a vnet-header tap). Kernel and umlbr only: the other contenders
//! have no overlay of their own.
use std::{path::Path, process::Stdio, time::Instant};

use anyhow::{Context, Result, bail};
use umlbr_tests::netns::Netns;

use crate::{
    Cfg, Progress, check_interrupted,
    report::{Check, Results, Row, higher, lower},
    tap::{TapMode, gen_mac, sink_mac, udp_frame},
    topo::Contender,
    traffic::{self, GenSpec, Job, SinkSpec},
};

const ROWS: &[Row] = &[
    higher(
        "vxlan_64",
        "VXLAN: 64 B UDP guest (tap, host 1) → guest (host 2) across the overlay, 1 flow",
        "kpps",
    )
    .goal(
        "≥ kernel bridge with the same VXLAN port",
        &[Check::RatioAtLeast(Contender::Kernel, 1.0)],
    ),
    lower(
        "vxlan_64_cpu",
        "VXLAN, 64 B: CPU per frame (writer + reader threads)",
        "µs",
    ),
    lower(
        "vxlan_64_sys",
        "VXLAN, 64 B: machine CPU per frame (/proc/stat: encapsulation and \
         decapsulation softirq included)",
        "µs",
    ),
    higher(
        "vxlan_tcp",
        "VXLAN: TCP guest (host 1) → guest (host 2), iperf3, 1 stream (veth guests, GSO)",
        "Gbit/s",
    ),
];

pub fn define_rows(cfg: &Cfg, res: &mut Results) {
    let _ = cfg;
    res.define_all("vxlan", ROWS, &[]);
}

/// Two hosts and their guests' namespaces; dropped in order (guests,
/// then hosts).
struct Overlay {
    g1: Netns,
    g2: Netns,
    h1: Netns,
    /// Only held: dropping it deletes host 2.
    _h2: Netns,
}

const BRIDGE: &str = "br0";
const VX: &str = "vx100";

impl Overlay {
    fn new(c: Contender, umlbr: &Path) -> Result<Overlay> {
        let h1 = Netns::without_ipv6("bench-vxh1")?;
        let h2 = Netns::without_ipv6("bench-vxh2")?;
        let g1 = Netns::without_ipv6("bench-vxg1")?;
        let g2 = Netns::without_ipv6("bench-vxg2")?;
        h1.sh(&format!(
            "ip link add u0 mtu 1550 type veth peer name u0 netns {} mtu 1550",
            h2.name
        ))?;
        for (i, h, g) in [(1, &h1, &g1), (2, &h2, &g2)] {
            let other = 3 - i;
            h.sh(&format!(
                "ip addr add 10.98.0.{i}/24 dev u0 && ip link set u0 up \
                 && ip link add {VX} type vxlan id 100 dstport 4789 local 10.98.0.{i} dev u0 \
                 && bridge fdb append 00:00:00:00:00:00 dev {VX} dst 10.98.0.{other} \
                 && ip link set {VX} up \
                 && ip link add gw type veth peer name eth0 netns {gns}",
                gns = g.name
            ))?;
            g.sh(&format!(
                "ip addr add 192.168.2.{}/24 dev eth0 && ip link set eth0 up",
                100 + i
            ))?;
            let mut ports = vec![VX, "gw"];
            if i == 1 {
                ports.push("tap0");
            }
            match c {
                Contender::Umlbr => {
                    run_umlbr(h, umlbr, &["up", BRIDGE])?;
                    if i == 1 {
                        run_umlbr(h, umlbr, &["tap", "add", "tap0"])?;
                    }
                    for p in ports {
                        // The guests' veths on TC alone, as a guest with
                        // offloads (a vnet-header tap) is: veth's native
                        // XDP would copy each GSO frame into an xdp_buff.
                        let mut args = vec!["attach", p, "--bridge", BRIDGE];
                        if p == "gw" {
                            args.push("--tc-only");
                        }
                        run_umlbr(h, umlbr, &args)?;
                    }
                }
                Contender::Kernel => {
                    let mut script = format!(
                        "ip link add {BRIDGE} type bridge stp_state 0 forward_delay 0 \
                         && ip link set {BRIDGE} up"
                    );
                    if i == 1 {
                        script.push_str(" && ip tuntap add dev tap0 mode tap");
                    }
                    for p in ports {
                        script.push_str(&format!(
                            " && ip link set {p} master {BRIDGE} && ip link set {p} up"
                        ));
                    }
                    h.sh(&script)?;
                }
                _ => bail!("the vxlan group runs for kernel and umlbr only"),
            }
        }
        Ok(Overlay {
            g1,
            g2,
            h1,
            _h2: h2,
        })
    }
}

fn run_umlbr(ns: &Netns, umlbr: &Path, args: &[&str]) -> Result<()> {
    let out = ns
        .cmd(umlbr.to_str().context("umlbr's path")?)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "umlbr {args:?} in {}: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub fn run(cfg: &Cfg, p: &Progress, res: &mut Results) -> Result<()> {
    let c = p.contender;
    if !matches!(c, Contender::Kernel | Contender::Umlbr) {
        return Ok(());
    }
    let o = Overlay::new(c, &cfg.umlbr)?;
    check_interrupted()?;
    // 64 B: tap0 on host 1 → the veth guest on host 2 (read from its end
    // in the guest's namespace).
    let dst = sink_mac(1);
    o.g2.sh(&format!(
        "ip link set eth0 address {}",
        umlbr_tests::wire::fmt_mac(&dst)
    ))?;
    let job = Job {
        netns: o.h1.name.clone(),
        gens: vec![GenSpec {
            tap: "tap0".into(),
            frame: udp_frame(dst, gen_mac(0), 64, 0),
            mode: TapMode::default(),
            cpu: cfg.cpus.map(|_| 0),
            hello: None,
            packet_ns: None,
            random_src: false,
        }],
        sinks: vec![SinkSpec {
            tap: "eth0".into(),
            mac: dst,
            vnet_hdr: false,
            cpu: cfg.cpus.map(|n| 1 % n),
            udp: None,
            packet_ns: Some(o.g2.name.clone()),
        }],
        warmup: cfg.warmup,
        window: cfg.window,
        probe: true,
    };
    let what = "64 B guest→guest across VXLAN";
    let out = traffic::run(&job).context(what)?;
    if out.delivered() == 0 {
        bail!("{what}: no frame was delivered in the window");
    }
    p.say(
        what,
        &format!(
            "{:>7.1} kpps {:>5.2} µs/frame",
            out.delivered_pps() / 1e3,
            out.thread_us_per_frame()
        ),
    );
    res.add("vxlan_64", c, out.delivered_pps() / 1e3);
    res.add("vxlan_64_cpu", c, out.thread_us_per_frame());
    res.add("vxlan_64_sys", c, out.sys_us_per_frame());
    check_interrupted()?;

    // TCP: iperf3 from g1 (host 1) to g2 (host 2).
    let log = std::env::temp_dir().join(format!("umlbr-bench-vxlan-{}.log", std::process::id()));
    let mut srv =
        o.g2.spawn_logged(&["iperf3", "-s", "-1", "--forceflush"], &log)?;
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("listening")
    {
        if t0.elapsed().as_secs() > 10 {
            let _ = srv.kill();
            bail!("iperf3 server in {} did not start", o.g2.name);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let secs = cfg.iperf_secs.to_string();
    let r =
        o.g1.cmd("iperf3")
            .args(["-c", "192.168.2.102", "-t", &secs, "-J"])
            .stdin(Stdio::null())
            .output();
    let _ = srv.kill();
    let _ = srv.wait();
    let _ = std::fs::remove_file(&log);
    let r = r.context("running iperf3")?;
    let v: serde_json::Value = serde_json::from_slice(&r.stdout)
        .with_context(|| format!("iperf3 -J: {}", String::from_utf8_lossy(&r.stdout)))?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no sum_received")?;
    p.say(
        "TCP guest→guest across VXLAN",
        &format!("{:.2} Gbit/s", bps / 1e9),
    );
    res.add("vxlan_tcp", c, bps / 1e9);
    drop(o);
    Ok(())
}
