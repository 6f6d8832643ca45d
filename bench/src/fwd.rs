//! The nat group's port-forward row: the LAN sending to a forwarded port
//! of the uplink's address, received by the guest behind it. umlbr
//! (`forward add`) against the kernel (Linux bridge, nftables dnat and
//! iptables MASQUERADE).
use anyhow::{Context, Result};

use crate::{
    Cfg, Progress, describe,
    report::{Check, Results, Row, higher, lower},
    tap::{self, TapMode, sink_mac},
    topo::{self, BRIDGE, Contender, Topo, Uplink},
    traffic::{self, GenSpec, Job, SinkSpec},
};

/// The forwarded port of the uplink's address; the guest's port is the
/// sink's.
const FWD_PORT: u16 = 5001;
/// The uplink's address (up0's, see `Topo::nat`).
const NAT_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 99, 0, 1);

const ROWS: &[Row] = &[
    higher(
        "nat_fwd_64",
        "port forward: 64 B UDP LAN→guest, 1 flow, tap uplink (XDP-capable)",
        "kpps",
    )
    .goal(
        "≥ 3× kernel (nftables dnat)",
        &[Check::RatioAtLeast(Contender::Kernel, 3.0)],
    ),
    lower(
        "nat_fwd_64_cpu",
        "port forward, tap uplink: CPU per datagram (LAN writer + guest reader threads)",
        "µs",
    ),
];

pub fn define_rows(res: &mut Results) {
    res.define_all("nat", ROWS, &[]);
}

/// The contender's forward of udp FWD_PORT to the guest (192.168.2.10,
/// the sink's port), and the host's neighbour entry for the guest (the
/// sink never answers ARP).
fn forward(topo: &Topo) -> Result<()> {
    let guest = topo::NAT_GUEST;
    let mac = umlbr_tests::wire::fmt_mac(&sink_mac(0));
    topo.ns.sh(&format!(
        "ip neigh replace {guest} lladdr {mac} dev {BRIDGE} nud permanent"
    ))?;
    let to = format!("{guest}:{}", tap::UDP_SINK_PORT);
    if topo.contender.is_umlbr() {
        let port = FWD_PORT.to_string();
        topo.umlbr_out(&["forward", "add", BRIDGE, "udp", &port, &to])?;
    } else {
        topo.ns.sh(&format!(
            "set -e
             nft add table ip fwdnat
             nft add chain ip fwdnat pre '{{ type nat hook prerouting priority dstnat; }}'
             nft add rule ip fwdnat pre ip daddr {NAT_IP} udp dport {FWD_PORT} dnat to {to}"
        ))?;
    }
    Ok(())
}

/// A writer on the uplink tap up0 (the LAN host 10.99.0.2) sends 64 B
/// UDP datagrams to 10.99.0.1:FWD_PORT; a reader on tap0 (the guest)
/// counts them, translated to 192.168.2.10.
pub fn run(cfg: &Cfg, p: &Progress, res: &mut Results) -> Result<()> {
    let c = p.contender;
    if !matches!(c, Contender::Kernel | Contender::Umlbr) {
        return Ok(());
    }
    let topo = Topo::nat(c, 1, Uplink::Tap, &cfg.umlbr)?;
    forward(&topo).context("adding the port forward")?;
    let up_mac = topo.ns.sh("cat /sys/class/net/up0/address")?;
    let up_mac = umlbr_tests::wire::mac(up_mac.trim());
    let job = Job {
        netns: topo.ns.name.clone(),
        gens: vec![GenSpec {
            tap: "up0".into(),
            frame: tap::udp_frame_ports(
                up_mac,
                topo::NAT_LAN_MAC,
                topo::NAT_LAN_HOST,
                NAT_IP,
                10_000,
                FWD_PORT,
                64,
            ),
            mode: TapMode::default(),
            cpu: cfg.cpus.map(|_| 0),
            hello: None,
            packet_ns: None,
            random_src: false,
        }],
        sinks: vec![SinkSpec {
            tap: topo.taps[0].clone(),
            mac: sink_mac(0),
            vnet_hdr: false,
            cpu: cfg.cpus.map(|n| 1 % n),
            udp: None,
            packet_ns: None,
        }],
        warmup: cfg.warmup,
        window: cfg.window,
        probe: true,
    };
    let n0 = topo.nat_counters()?;
    let what = "port forward 64 B UDP LAN→guest (tap uplink)";
    let o = traffic::run(&job).context(what)?;
    p.say(what, &describe(&topo, &o));
    res.add("nat_fwd_64", c, o.delivered_pps() / 1e3);
    res.add("nat_fwd_64_cpu", c, o.thread_us_per_frame());
    if c.is_umlbr() {
        let n1 = topo.nat_counters()?;
        let d = |k: &str| {
            n1[k]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(n0[k].as_u64().unwrap_or(0))
        };
        let (x, t) = (d("in_xdp"), d("in_tc"));
        let total = (x + t).max(1) as f64;
        res.note(
            "nat_fwd_64",
            format!(
                "{}: translated by XDP {:.1}% / TC {:.1}%, new mappings {}, slow path {}",
                c.as_str(),
                100.0 * x as f64 / total,
                100.0 * t as f64 / total,
                d("allocs"),
                d("slow_path")
            ),
        );
    }
    Ok(())
}
