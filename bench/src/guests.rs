//! The guests group: real User Mode Linux guests on each contender's
//! bridge.
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{
    Cfg, Progress, check_interrupted,
    report::{Check, Goal, Results, RowDef},
    topo::{Contender, Topo},
    traffic,
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
    for (tr, goal_rate, goal_cpu) in [
        ("legacy", None, None),
        (
            "vector",
            Some(Goal {
                text: "not slower: ≥ 1.0× kernel",
                checks: vec![Check::RatioAtLeast(Kernel, 1.0)],
            }),
            Some(Goal {
                text: "less host CPU than kernel: < 1.0×",
                checks: vec![Check::RatioAtMost(Kernel, 0.999)],
            }),
        ),
    ] {
        let what = if tr == "legacy" {
            "legacy tuntap, one frame per read/write"
        } else {
            "vector transport, IFF_VNET_HDR with GSO"
        };
        res.define(row(
            &format!("guest_tcp_{tr}"),
            "guests",
            &format!("UML guest→guest TCP (iperf3), {what}"),
            "Gbit/s",
            true,
            goal_rate,
        ));
        res.define(row(
            &format!("guest_cpu_{tr}"),
            "guests",
            &format!("UML guest→guest TCP, {tr}: host CPU per GB (guests included)"),
            "CPU-s/GB",
            false,
            goal_cpu,
        ));
    }
}

/// Two real User Mode Linux guests on the contender's bridge, iperf3 from
/// one to the other: once with the legacy tuntap transport, once with the
/// vector transport (GSO), each pair on taps of its own. Host CPU is the
/// whole machine's busy time while iperf3 runs (the guests are host
/// processes, and they account for most of it).
pub fn run(cfg: &Cfg, p: &Progress, res: &mut Results) -> Result<()> {
    use umlbr_tests::uml::{Guest, GuestSpec, Transport};
    let c = p.contender;
    if c == Contender::Ceiling {
        return Ok(());
    }
    let topo = Topo::new(c, 4, &[], &cfg.umlbr)?;
    for (tr, taps, name) in [
        (Transport::Legacy, [0, 1], "legacy"),
        (Transport::Vector, [2, 3], "vector"),
    ] {
        check_interrupted()?;
        let specs: Vec<GuestSpec> = taps
            .iter()
            .map(|&t| {
                GuestSpec::new(
                    &format!("bench{t}"),
                    tr,
                    &topo.taps[t],
                    &format!("02:b3:00:00:00:{:02x}", t + 2),
                    &format!("192.168.2.{}/24", t + 2),
                )
            })
            .collect();
        let t0 = Instant::now();
        let mut gs = Guest::boot_all(&topo.ns.name, &specs)
            .with_context(|| format!("booting two {name} guests"))?;
        let boot_s = t0.elapsed().as_secs_f64();
        let r = iperf(&gs[0], &gs[1], cfg.iperf_secs);
        for g in &mut gs {
            g.halt();
        }
        let (gbps, bytes, cpu_s) = r.with_context(|| format!("iperf3 between {name} guests"))?;
        let cpu_per_gb = cpu_s / (bytes / 1e9);
        p.say(
            &format!("UML {name} guests, iperf3 TCP"),
            &format!("{gbps:.2} Gbit/s, {cpu_per_gb:.2} host CPU-s/GB (boot {boot_s:.1} s)"),
        );
        res.add(&format!("guest_tcp_{name}"), c, gbps);
        res.add(&format!("guest_cpu_{name}"), c, cpu_per_gb);
    }
    Ok(())
}

/// iperf3 from `client` to `server` for `secs`: the receiver's Gbit/s and
/// bytes, and the machine's busy CPU seconds meanwhile.
fn iperf(
    client: &umlbr_tests::uml::Guest,
    server: &umlbr_tests::uml::Guest,
    secs: u32,
) -> Result<(f64, f64, f64)> {
    let srv = server.spawn("exec iperf3 -s -1 --forceflush")?;
    srv.wait_output("Server listening", Duration::from_secs(20))?;
    let busy0 = traffic::proc_stat_busy()?;
    let (rc, out) = client.run_timeout(
        &format!("iperf3 -c {} -t {secs} -f g", server.ip),
        Duration::from_secs(secs as u64 + 40),
    )?;
    let busy = traffic::proc_stat_busy()? - busy0;
    let _ = srv.wait(Duration::from_secs(10));
    if rc != 0 {
        bail!("iperf3 exited {rc}: {out}");
    }
    // "[  5]   0.00-3.00   sec  1.85 GBytes  5.29 Gbits/sec   receiver"
    let line = out
        .lines()
        .find(|l| l.contains("receiver"))
        .with_context(|| format!("no receiver line in iperf3's output: {out}"))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let before = |unit: &str| -> Option<f64> {
        let i = w.iter().position(|x| *x == unit)?;
        w.get(i.checked_sub(1)?)?.parse().ok()
    };
    let gbps = before("Gbits/sec").context("no Gbits/sec in iperf3's receiver line")?;
    // iperf3's transfer units are powers of 1024, whatever -f says.
    let bytes = [
        ("GBytes", 1u64 << 30),
        ("MBytes", 1 << 20),
        ("KBytes", 1 << 10),
        ("Bytes", 1),
    ]
    .iter()
    .find_map(|&(u, m)| before(u).map(|v| v * m as f64))
    .context("no transfer in iperf3's receiver line")?;
    Ok((gbps, bytes, busy))
}
