//! The nat group: guests behind the masquerade, umlbr against iptables
//! MASQUERADE on a Linux bridge.
use anyhow::{Context, Result};

use crate::{
    Cfg, Progress, check_interrupted, describe,
    report::{Check, Goal, Results, RowDef},
    tap::{self, TapMode, gen_mac},
    topo::{self, Contender, Topo, Uplink},
    traffic::{self, GenSpec, Job, SinkSpec},
};

pub fn define_rows(cfg: &Cfg, res: &mut Results) {
    let _ = cfg;
    let row = |id: &str, group, name: &str, unit, hib, goal| RowDef {
        id: id.into(),
        group,
        name: name.into(),
        unit,
        higher_is_better: hib,
        goal,
    };
    use Contender::Kernel;
    for (id, up) in [
        ("nat_64", "tap uplink (XDP-capable, like a NIC)"),
        ("nat_64_veth", "veth uplink to a LAN namespace"),
    ] {
        res.define(row(
            id,
            "nat",
            &format!("NAT: 64 B UDP guest→LAN, 1 flow, {up}"),
            "kpps",
            true,
            Some(Goal {
                text: "≥ 3× kernel (iptables MASQUERADE)",
                checks: vec![Check::RatioAtLeast(Kernel, 3.0)],
            }),
        ));
        res.define(row(
            &format!("{id}_cpu"),
            "nat",
            &format!("NAT, {up}: CPU per datagram (guest writer + LAN reader threads)"),
            "µs",
            false,
            None,
        ));
        res.define(row(
            &format!("{id}_sys"),
            "nat",
            &format!("NAT, {up}: machine CPU per datagram (/proc/stat, other load included)"),
            "µs",
            false,
            None,
        ));
    }
}

/// Guest → LAN through the masquerade, once with a tap as the uplink
/// (like a NIC: umlbr may send XDP frames to it) and once with a veth to a
/// LAN namespace (umlbr keeps a veth uplink on TC).
pub fn run(cfg: &Cfg, p: &Progress, res: &mut Results) -> Result<()> {
    if p.contender == Contender::Ceiling {
        return Ok(());
    }
    nat_row(cfg, p, res, Uplink::Tap, "nat_64")?;
    check_interrupted()?;
    nat_row(cfg, p, res, Uplink::Veth, "nat_64_veth")
}

/// A writer on tap0 (192.168.2.10; it first asks for the gateway's MAC,
/// as a guest would) sends 64 B UDP datagrams to 10.99.0.2:9 through the
/// gateway br0. Counted where they leave: a reader on the uplink tap, or
/// a UDP socket in the LAN namespace (recvmmsg, 64 at a time).
fn nat_row(cfg: &Cfg, p: &Progress, res: &mut Results, uplink: Uplink, row: &str) -> Result<()> {
    let c = p.contender;
    let topo = Topo::nat(c, 1, uplink, &cfg.umlbr)?;
    let gw = topo.gw_mac.context("no gateway MAC")?;
    let sink = match &topo.lan {
        Some(lan) => SinkSpec {
            tap: String::new(),
            mac: [0; 6],
            vnet_hdr: false,
            cpu: cfg.cpus.map(|n| 1 % n),
            udp: Some((lan.name.clone(), tap::UDP_SINK_PORT)),
            packet_ns: None,
        },
        None => SinkSpec {
            tap: "up0".into(),
            mac: topo::NAT_LAN_MAC,
            vnet_hdr: false,
            cpu: cfg.cpus.map(|n| 1 % n),
            udp: None,
            packet_ns: None,
        },
    };
    let job = Job {
        netns: topo.ns.name.clone(),
        gens: vec![GenSpec {
            tap: topo.taps[0].clone(),
            frame: tap::udp_frame_ip(
                gw,
                gen_mac(0),
                topo::NAT_GUEST,
                topo::NAT_LAN_HOST,
                10_000,
                64,
            ),
            mode: TapMode::default(),
            cpu: cfg.cpus.map(|_| 0),
            // Who has the gateway's address? The reply (from br0) is what
            // teaches the switch where the gateway's MAC is.
            hello: Some(
                umlbr_tests::wire::Frame::new(tap::BROADCAST, gen_mac(0))
                    .arp_request(topo::NAT_GUEST, topo::NAT_GW_IP)
                    .pad_min()
                    .build(),
            ),
            packet_ns: None,
        }],
        sinks: vec![sink],
        warmup: cfg.warmup,
        window: cfg.window,
        probe: true,
    };
    let n0 = topo.nat_counters()?;
    let what = match uplink {
        Uplink::Tap => "NAT 64 B UDP guest→LAN (tap uplink)",
        Uplink::Veth => "NAT 64 B UDP guest→LAN (veth uplink)",
    };
    let o = traffic::run(&job).context(what)?;
    p.say(what, &describe(&topo, &o));
    res.add(row, c, o.delivered_pps() / 1e3);
    res.add(&format!("{row}_cpu"), c, o.thread_us_per_frame());
    res.add(&format!("{row}_sys"), c, o.sys_us_per_frame());
    if c.is_umlbr() {
        let n1 = topo.nat_counters()?;
        if std::env::var_os("BENCH_DEBUG").is_some() {
            eprintln!("bench: NAT counters before {n0} after {n1}");
            eprintln!("{}", topo.umlbr_out(&["stats", topo::BRIDGE])?.0);
        }
        let d = |k: &str| {
            n1[k]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(n0[k].as_u64().unwrap_or(0))
        };
        let (x, t, slow) = (d("out_xdp"), d("out_tc"), d("slow_path"));
        let total = (x + t).max(1) as f64;
        res.note(
            row,
            format!(
                "{}: translated by XDP {:.1}% / TC {:.1}%{}",
                c.as_str(),
                100.0 * x as f64 / total,
                100.0 * t as f64 / total,
                if slow > 0 {
                    format!(", slow path {slow}")
                } else {
                    String::new()
                }
            ),
        );
    }
    Ok(())
}
