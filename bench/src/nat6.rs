//! The nat group's IPv6 rows (issue 18): a guest's 64 B UDP to the LAN
//! through the IPv6 masquerade, umlbr (BPF) against the kernel recipe
//! (Linux bridge, forwarding and an nftables `ip6` masquerade rule).
//! Built on the IPv4 NAT topology (`Topo::nat`, tap uplink), with IPv6
//! turned on in it: fd00:2::1/64 on the bridge, 2001:db8:99::1/64 on
//! up0, the LAN host 2001:db8:99::2 behind it (a static neighbour: the
//! reader on up0 plays it).
use std::net::Ipv6Addr;

use anyhow::{Context, Result};

use crate::{
    Cfg, Progress, describe,
    nat::translated_note,
    report::{Check, Results, Row, higher, lower},
    tap::{self, TapMode, gen_mac},
    topo::{self, BRIDGE, Contender, Topo, Uplink},
    traffic::{self, GenSpec, Job, SinkSpec},
};

const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x10);
const LAN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 2);

const ROWS: &[Row] = &[
    higher(
        "nat6_64",
        "NAT IPv6: 64 B UDP guest→LAN, 1 flow, tap uplink (XDP-capable, like a NIC)",
        "kpps",
    )
    .goal(
        "≥ 3× kernel (nftables ip6 masquerade)",
        &[Check::RatioAtLeast(Contender::Kernel, 3.0)],
    ),
    lower(
        "nat6_64_cpu",
        "NAT IPv6, tap uplink: CPU per datagram (guest writer + LAN reader threads)",
        "µs",
    ),
];

pub fn define_rows(res: &mut Results) {
    res.define_all("nat", ROWS, &[]);
}

/// IPv6 in the NAT topology: addresses, forwarding, the LAN host's
/// neighbour entry; the kernel recipe's ip6 masquerade, or umlbr's
/// masquerade attached again (it reads the bridge's IPv6 prefix when it
/// is attached, and `up` takes one `--address` so far).
pub fn setup(topo: &Topo) -> Result<()> {
    topo.ns
        .sh(&format!(
            "set -e
             sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0 \
                net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
             for d in {BRIDGE} up0 tap0; do sysctl -qw net.ipv6.conf.$d.disable_ipv6=0; done
             sysctl -qw net.ipv6.conf.all.forwarding=1
             ip -6 addr add fd00:2::1/64 dev {BRIDGE} nodad
             ip -6 addr add 2001:db8:99::1/64 dev up0 nodad
             ip -6 neigh replace {LAN6} lladdr {} dev up0 nud permanent",
            umlbr_tests::wire::fmt_mac(&topo::NAT_LAN_MAC)
        ))
        .context("IPv6 in the NAT topology")?;
    match topo.contender {
        Contender::Kernel | Contender::KernelTuned => topo
            .ns
            .sh("set -e
                 nft add table ip6 nat6
                 nft add chain ip6 nat6 post '{ type nat hook postrouting priority 100; }'
                 nft add rule ip6 nat6 post ip6 saddr fd00:2::/64 oifname up0 masquerade")
            .map(|_| ())
            .context("the kernel's ip6 masquerade"),
        _ => {
            topo.umlbr_out(&["detach", "up0"])?;
            topo.umlbr_out(&[
                "attach",
                "up0",
                "--bridge",
                BRIDGE,
                "--masquerade",
                "--nat-max-per-guest",
                "0",
            ])?;
            Ok(())
        }
    }
}

/// The guest's 64 B datagram to the LAN host's port 9.
fn frame(gw: umlbr_tests::wire::Mac) -> Vec<u8> {
    let ip = umlbr_tests::wire::v6::udp(GUEST6, 10_000, LAN6, tap::UDP_SINK_PORT, &[0, 1]);
    umlbr_tests::wire::Frame::new(gw, gen_mac(0))
        .ethertype(umlbr_tests::wire::ethertype::IPV6)
        .payload(&ip)
        .build()
}

/// The umlbr contenders' IPv6 NAT counters.
fn counters(topo: &Topo) -> Result<serde_json::Value> {
    if !topo.contender.is_umlbr() {
        return Ok(serde_json::Value::Null);
    }
    let (out, _) = topo.umlbr_out(&["stats", BRIDGE, "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing umlbr stats")?;
    Ok(v["nat"]["counters6"].clone())
}

pub fn run(cfg: &Cfg, p: &Progress, res: &mut Results) -> Result<()> {
    let c = p.contender;
    if matches!(c, Contender::Ceiling | Contender::Redirect) {
        return Ok(());
    }
    let topo = Topo::nat(c, 1, Uplink::Tap, &cfg.umlbr)?;
    setup(&topo)?;
    let gw = topo.gw_mac.context("no gateway MAC")?;
    let job = Job {
        netns: topo.ns.name.clone(),
        gens: vec![GenSpec {
            tap: topo.taps[0].clone(),
            frame: frame(gw),
            mode: TapMode::default(),
            cpu: cfg.cpus.map(|_| 0),
            // As the IPv4 row's: the gateway's answer teaches the switch
            // where its MAC is.
            hello: Some(
                umlbr_tests::wire::Frame::new(tap::BROADCAST, gen_mac(0))
                    .arp_request(topo::NAT_GUEST, topo::NAT_GW_IP)
                    .pad_min()
                    .build(),
            ),
            packet_ns: None,
            random_src: false,
        }],
        sinks: vec![SinkSpec {
            tap: "up0".into(),
            mac: topo::NAT_LAN_MAC,
            vnet_hdr: false,
            cpu: cfg.cpus.map(|n| 1 % n),
            udp: None,
            packet_ns: None,
        }],
        warmup: cfg.warmup,
        window: cfg.window,
        probe: true,
    };
    let n0 = counters(&topo)?;
    let what = "NAT IPv6 64 B UDP guest→LAN (tap uplink)";
    let o = traffic::run(&job).context(what)?;
    p.say(what, &describe(&topo, &o));
    res.add("nat6_64", c, o.delivered_pps() / 1e3);
    res.add("nat6_64_cpu", c, o.thread_us_per_frame());
    if c.is_umlbr() {
        let n1 = counters(&topo)?;
        res.note("nat6_64", translated_note(c.as_str(), "", &n0, &n1, false));
    }
    Ok(())
}
