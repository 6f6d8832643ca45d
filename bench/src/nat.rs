//! The nat group: guests behind the masquerade, umlbr against iptables
//! MASQUERADE on a Linux bridge.
use std::{path::Path, process::Stdio, time::Instant};

use anyhow::{Context, Result, bail};

use crate::{
    Cfg, Progress, check_interrupted, describe,
    report::{Check, Results, Row, higher, lower},
    tap::{self, TapMode, gen_mac},
    topo::{self, Contender, Topo, Uplink},
    traffic::{self, GenSpec, Job, Outcome, SinkSpec},
};

/// Flows of the NAT table rows.
const TABLE_FLOWS: u32 = 100_000;
/// Destination ports the fill spreads its flows over (20000..20000+N):
/// the inbound key holds the remote port, so each remote port has the
/// whole port range to itself. umlbr's default range is what lies above
/// the host's ip_local_port_range: 61000-65535 here, 4 536 ports; with
/// 100 remote ports a flow's 16 random probes meet at most 22% taken
/// ports (1 000 flows each), so they always find one.
const TABLE_DPORTS: u32 = 100;

/// Per uplink `{id}`, described as `{up}`.
const PER_UPLINK: &[Row] = &[
    higher("{id}", "NAT: 64 B UDP guest→LAN, 1 flow, {up}", "kpps").goal(
        "≥ 3× kernel (iptables MASQUERADE)",
        &[Check::RatioAtLeast(Contender::Kernel, 3.0)],
    ),
    lower(
        "{id}_cpu",
        "NAT, {up}: CPU per datagram (guest writer + LAN reader threads)",
        "µs",
    ),
    lower(
        "{id}_sys",
        "NAT, {up}: machine CPU per datagram (/proc/stat, other load included)",
        "µs",
    ),
    lower(
        "{id}_prog",
        "NAT, {up}: run time of the XDP program on the guest's tap, per datagram \
         (kernel.bpf_stats, in a window of its own)",
        "ns",
    ),
];
const UPLINKS: [(&str, &str); 2] = [
    ("nat_64", "tap uplink (XDP-capable, like a NIC)"),
    ("nat_64_veth", "veth uplink to a LAN namespace"),
];

/// With `{n}` live flows, through `{up}`.
const TABLE: &[Row] = &[
    higher(
        "nat_table_pps",
        "NAT: 64 B UDP guest→LAN, 1 flow, {up}, with {n} live flows in the table",
        "kpps",
    ),
    higher(
        "nat_table_ratio",
        "NAT, {up}: 64 B 1 flow with {n} live flows vs a nearly empty table",
        "×",
    )
    .goal(
        "lookup cost unchanged: umlbr ≥ 0.9",
        &[Check::UmlbrAtLeast(0.9)],
    ),
    lower(
        "nat_table_cost",
        "NAT, {up}: guest writer's CPU per datagram sent (write() and translation) with \
         {n} live flows vs a nearly empty table",
        "×",
    ),
    higher(
        "nat_table_flows",
        "live flows in the NAT table after {n} new guest flows \
         (`umlbr nat show` rows / nf_conntrack_count)",
        "flows",
    ),
    higher(
        "nat_table_fill",
        "new NAT flows set up per second, {n} from the guest's tap (one datagram each)",
        "kflows/s",
    ),
    lower(
        "nat_table_setup_cpu",
        "CPU per new NAT flow: the guest writer's write() of each of the {n} new flows' \
         datagram (switching, translation, setting up the mapping / conntrack entry)",
        "µs",
    )
    .goal(
        "connection setup CPU ≤ 0.5× kernel (conntrack)",
        &[Check::RatioAtMost(Contender::Kernel, 0.5)],
    ),
    lower(
        "nat_table_show",
        "list {n} NAT flows (`umlbr nat show --json` / `conntrack -L`, wall time)",
        "s",
    ),
];

pub fn define_rows(cfg: &Cfg, res: &mut Results) {
    let _ = cfg;
    for (id, up) in UPLINKS {
        res.define_all("nat", PER_UPLINK, &[("id", id), ("up", up)]);
    }
    let n = crate::fmt_count(TABLE_FLOWS);
    res.define_all("nat", TABLE, &[("n", &n), ("up", "tap uplink")]);
    crate::fwd::define_rows(res);
    crate::nat6::define_rows(res);
}

/// Guest → LAN through the masquerade, once with a tap as the uplink
/// (like a NIC: umlbr may send XDP frames to it) and once with a veth to a
/// LAN namespace (umlbr keeps a veth uplink on TC).
pub fn run(cfg: &Cfg, p: &Progress, res: &mut Results) -> Result<()> {
    if p.contender == Contender::Ceiling {
        return Ok(());
    }
    // The 100 000-flow table: kernel and umlbr only in --quick, like the
    // FDB rows.
    let table = (!cfg.quick || matches!(p.contender, Contender::Kernel | Contender::Umlbr))
        && p.contender != Contender::Redirect;
    nat_row(cfg, p, res, Uplink::Tap, "nat_64", table)?;
    check_interrupted()?;
    nat_row(cfg, p, res, Uplink::Veth, "nat_64_veth", false)?;
    check_interrupted()?;
    crate::fwd::run(cfg, p, res)?;
    check_interrupted()?;
    crate::nat6::run(cfg, p, res)
}

/// A writer on tap0 (192.168.2.10; it first asks for the gateway's MAC,
/// as a guest would) sends 64 B UDP datagrams to 10.99.0.2:9 through the
/// gateway br0. Counted where they leave: a reader on the uplink tap, or
/// a UDP socket in the LAN namespace (recvmmsg, 64 at a time).
///
/// With `table`, then fill the NAT table with [`TABLE_FLOWS`] more flows
/// and measure again (see [`nat_table`]).
fn nat_row(
    cfg: &Cfg,
    p: &Progress,
    res: &mut Results,
    uplink: Uplink,
    row: &str,
    table: bool,
) -> Result<()> {
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
            random_src: false,
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
    note_paths(res, &topo, row, &n0)?;
    if let Some(ns) = xdp_run_ns(&topo, &job)? {
        res.add(&format!("{row}_prog"), c, ns);
    }
    if table {
        check_interrupted()?;
        nat_table(cfg, p, res, &topo, &job, &o)?;
    }
    Ok(())
}

/// Note which path translated the frames since the counters `n0`.
fn note_paths(res: &mut Results, topo: &Topo, row: &str, n0: &serde_json::Value) -> Result<()> {
    let c = topo.contender;
    if c.is_umlbr() {
        let n1 = topo.nat_counters()?;
        if std::env::var_os("BENCH_DEBUG").is_some() {
            eprintln!("bench: NAT counters before {n0} after {n1}");
            eprintln!("{}", topo.umlbr_out(&["stats", topo::BRIDGE])?.0);
        }
        res.note(row, translated_note(c.as_str(), "", n0, &n1, false));
    }
    Ok(())
}

/// "<contender>: <what>translated by XDP x% / TC y%", then the slow path
/// and (with `fails`) failed port allocations if any, from the NAT
/// counters before (`n0`) and after (`n1`) a row.
pub fn translated_note(
    contender: &str,
    what: &str,
    n0: &serde_json::Value,
    n1: &serde_json::Value,
    fails: bool,
) -> String {
    let d = |k: &str| {
        n1[k]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(n0[k].as_u64().unwrap_or(0))
    };
    let (x, t, slow, fail) = (d("out_xdp"), d("out_tc"), d("slow_path"), d("alloc_fail"));
    let total = (x + t).max(1) as f64;
    let mut note = format!(
        "{contender}: {what}translated by XDP {:.1}% / TC {:.1}%",
        100.0 * x as f64 / total,
        100.0 * t as f64 / total,
    );
    if slow > 0 {
        note += &format!(", slow path {slow}");
    }
    if fails && fail > 0 {
        note += &format!(", failed port allocations {fail}");
    }
    note
}

/// The NAT table with [`TABLE_FLOWS`] live flows: after the nearly empty
/// table's measurement `pre` (of `job`, one flow), the guest's tap sends
/// one datagram of each of 100 000 new flows (192.168.2.10, source ports
/// 1024..2023, to 10.99.0.2 ports 20000..20099) as fast as the tap takes
/// them; then how many flows the table holds and how long listing them
/// takes, and the same one-flow rate again.
fn nat_table(
    cfg: &Cfg,
    p: &Progress,
    res: &mut Results,
    topo: &Topo,
    job: &Job,
    pre: &Outcome,
) -> Result<()> {
    let c = p.contender;
    let gw = topo.gw_mac.context("no gateway MAC")?;
    // conntrack's limit is the whole machine's (the table is per
    // namespace, the maximum is not): make room if it is too small.
    let _ct_max = match c {
        Contender::Kernel | Contender::KernelTuned => {
            Some(CtMax::at_least(TABLE_FLOWS as u64 * 5 / 4 + 10_000)?)
        }
        _ => None,
    };
    let frames: Vec<Vec<u8>> = (0..TABLE_FLOWS)
        .map(|i| {
            tap::udp_frame_ports(
                gw,
                gen_mac(0),
                topo::NAT_GUEST,
                topo::NAT_LAN_HOST,
                (1024 + i / TABLE_DPORTS) as u16,
                (20_000 + i % TABLE_DPORTS) as u16,
                64,
            )
        })
        .collect();
    // Where up0 is a tap, hold it open so that its carrier is up (as in
    // the measurements, where its reader plays the wire).
    let hold: Vec<String> = if topo.lan.is_none() {
        vec!["up0".into()]
    } else {
        Vec::new()
    };
    let n0 = topo.nat_counters()?;
    let (took, fill_cpu_s) = traffic::fill_frames(&topo.ns.name, &topo.taps[0], frames, &hold)
        .context("filling the NAT table")?;
    if std::env::var_os("BENCH_DEBUG").is_some() {
        eprintln!(
            "{}",
            topo.ns.sh("ip -s link show tap0; ip -s link show up0; \
                 head -3 /proc/net/stat/nf_conntrack || true")?
        );
    }
    let (flows, show_s) = table_size(topo)?;
    let n = crate::fmt_count(TABLE_FLOWS);
    p.say(
        &format!("NAT table fill with {n} flows"),
        &format!(
            "written in {:.2} s ({:.0} kflows/s); {flows} live flows{}",
            took.as_secs_f64(),
            TABLE_FLOWS as f64 / took.as_secs_f64() / 1e3,
            match show_s {
                Some(s) => format!(", listed in {s:.2} s"),
                None => ", not listed (no conntrack tool)".into(),
            }
        ),
    );
    res.add("nat_table_flows", c, flows as f64);
    // The fill's flows and the measured one.
    if flows < TABLE_FLOWS as u64 + 1 {
        res.note(
            "nat_table_flows",
            format!(
                "{}: {} of the {n} new flows were not in the table after the fill",
                c.as_str(),
                TABLE_FLOWS as u64 + 1 - flows
            ),
        );
    }
    res.add(
        "nat_table_fill",
        c,
        TABLE_FLOWS as f64 / took.as_secs_f64() / 1e3,
    );
    // The writer does all of a new flow's work in its write(): tun hands
    // the frame to XDP, or to the bridge and netfilter, in its context.
    res.add(
        "nat_table_setup_cpu",
        c,
        fill_cpu_s * 1e6 / TABLE_FLOWS as f64,
    );
    match show_s {
        Some(s) => res.add("nat_table_show", c, s),
        None => res.note(
            "nat_table_show",
            format!(
                "{}: conntrack(8) is not installed, so no listing time",
                c.as_str()
            ),
        ),
    }
    if c.is_umlbr() {
        let n1 = topo.nat_counters()?;
        let d = |k: &str| {
            n1[k]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(n0[k].as_u64().unwrap_or(0))
        };
        if d("alloc_fail") > 0 || d("slow_path") > 0 {
            res.note(
                "nat_table_flows",
                format!(
                    "{}: the fill found no free port {} times, left {} to the slow path",
                    c.as_str(),
                    d("alloc_fail"),
                    d("slow_path")
                ),
            );
        }
    }
    check_interrupted()?;
    let n0 = topo.nat_counters()?;
    let what = format!("NAT 64 B UDP, {n} flows in the table");
    let post = traffic::run(job).context(what.clone())?;
    p.say(&what, &describe(topo, &post));
    res.add("nat_table_pps", c, post.delivered_pps() / 1e3);
    if pre.delivered_pps() > 0.0 {
        res.add(
            "nat_table_ratio",
            c,
            post.delivered_pps() / pre.delivered_pps(),
        );
    }
    // Where the lookups happen (the writer's write()), unaffected by how
    // much CPU the reader gets.
    if pre.sent > 0 && post.sent > 0 && pre.gen_cpu_s > 0.0 {
        res.add(
            "nat_table_cost",
            c,
            (post.gen_cpu_s / post.sent as f64) / (pre.gen_cpu_s / pre.sent as f64),
        );
    }
    note_paths(res, topo, "nat_table_pps", &n0)?;
    let _ = cfg;
    Ok(())
}

/// Live flows in the contender's NAT table, and the wall time of listing
/// them (None: the kernel's, with no conntrack tool to list them).
fn table_size(topo: &Topo) -> Result<(u64, Option<f64>)> {
    if topo.contender.is_umlbr() {
        let (out, s) = topo.umlbr_out(&["nat", "show", topo::BRIDGE, "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("parsing umlbr nat show")?;
        let n = v
            .as_array()
            .context("umlbr nat show --json: not an array")?
            .len();
        return Ok((n as u64, Some(s)));
    }
    let count = topo
        .ns
        .sh("cat /proc/sys/net/netfilter/nf_conntrack_count")?;
    let count: u64 = count
        .trim()
        .parse()
        .with_context(|| format!("nf_conntrack_count: {count:?}"))?;
    if !has_conntrack_tool() {
        return Ok((count, None));
    }
    let t0 = Instant::now();
    let out = topo
        .ns
        .cmd("conntrack")
        .arg("-L")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("running conntrack -L")?;
    let s = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("conntrack -L failed ({})", out.status);
    }
    Ok((count, Some(s)))
}

fn has_conntrack_tool() -> bool {
    [
        "/usr/sbin/conntrack",
        "/sbin/conntrack",
        "/usr/bin/conntrack",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
}

/// net.netfilter.nf_conntrack_max raised for a while (it is global),
/// restored on drop.
struct CtMax {
    old: Option<u64>,
}

const CT_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

impl CtMax {
    fn at_least(want: u64) -> Result<CtMax> {
        let s = std::fs::read_to_string(CT_MAX).with_context(|| format!("reading {CT_MAX}"))?;
        let old: u64 = s
            .trim()
            .parse()
            .with_context(|| format!("{CT_MAX}: {s:?}"))?;
        if old >= want {
            return Ok(CtMax { old: None });
        }
        std::fs::write(CT_MAX, want.to_string()).with_context(|| format!("writing {CT_MAX}"))?;
        eprintln!("bench: raised nf_conntrack_max from {old} to {want} for the NAT table rows");
        Ok(CtMax { old: Some(old) })
    }
}

impl Drop for CtMax {
    fn drop(&mut self) {
        if let Some(old) = self.old
            && let Err(e) = std::fs::write(CT_MAX, old.to_string())
        {
            eprintln!("bench: could not restore nf_conntrack_max to {old}: {e}");
        }
    }
}

/// What the XDP program on the guest's tap costs per datagram (none
/// there: None): `job` again in a short window of its own with
/// kernel.bpf_stats_enabled on, its run time over its runs. Unlike the
/// rate, it does not move with the other load on the machine.
fn xdp_run_ns(topo: &Topo, job: &Job) -> Result<Option<f64>> {
    let Some(id) = topo::xdp_prog_id(&topo.ns, &topo.taps[0])? else {
        return Ok(None);
    };
    let short = Job {
        warmup: std::time::Duration::from_millis(50),
        window: std::time::Duration::from_millis(300),
        ..job.clone()
    };
    let stats = topo::BpfStats::enable()?;
    let (t0, n0) = topo::prog_run_stats(id)?;
    traffic::run(&short).context("the XDP run-time window")?;
    let (t1, n1) = topo::prog_run_stats(id)?;
    drop(stats);
    if n1 <= n0 {
        bail!("the XDP program on {} did not run", topo.taps[0]);
    }
    Ok(Some((t1 - t0) as f64 / (n1 - n0) as f64))
}
