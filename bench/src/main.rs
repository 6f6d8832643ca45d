//! `umlbr-bench`: umlbr against the Linux bridge, side by side, on taps
//! driven like a guest's tap transport. Run by `cargo xtask bench
//! [--quick]` (as root); writes bench/results/latest.{json,md} and one SVG
//! per group of rows.
//!
//! Every topology lives in a network namespace of its own
//! (`umlbrt-bench-<pid>-<n>`), made for one contender and one group of
//! rows and deleted right after, also on error. The contenders take turns
//! (interleaved repetitions, the order rotating every repetition), so slow
//! drifts of the machine's load hit them all alike.
mod fwd;
mod gso;
mod guests;
mod hostile;
mod nat;
mod nat6;
mod report;
mod tap;
mod topo;
mod traffic;
mod vxlan;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;

use crate::{
    report::{Check, Results, Row, higher, lower},
    tap::{BROADCAST, TapMode, gen_mac, sink_mac, udp_frame},
    topo::{Contender, Topo},
    traffic::{GenSpec, Job, Outcome, SinkSpec},
};

#[derive(Parser, Debug)]
#[command(
    name = "umlbr-bench",
    about = "umlbr against the kernel bridge, side by side (run as root; `cargo xtask bench`)"
)]
struct Args {
    /// Short run: 0.8 s windows, 3 repetitions, fewer rows; within 5 minutes.
    #[arg(long)]
    quick: bool,
    /// The umlbr binary (default: $UMLBR_BIN, else target/{debug,release}/umlbr).
    #[arg(long, value_name = "PATH")]
    umlbr: Option<PathBuf>,
    /// Where to write latest.json, latest.md and the SVGs.
    #[arg(long, value_name = "DIR", default_value = "bench/results")]
    out: PathBuf,
    /// Repetitions of every measurement (default 3 with --quick, else 5).
    #[arg(long)]
    reps: Option<usize>,
    /// Seconds of each measured window (default 0.8 with --quick, else 3).
    #[arg(long)]
    secs: Option<f64>,
    /// Only these groups: tap-to-tap, flooding, hostile, scale, fdb, uplink,
    /// nat, gso, guests, vxlan (comma-separated; guests, real UML guests with
    /// iperf3, run by default only without --quick; hostile, a victim flow
    /// while another tap floods, runs for kernel and umlbr only).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these contenders: kernel, kernel-tuned, umlbr, umlbr-tc,
    /// redirect, ceiling.
    #[arg(long, value_delimiter = ',')]
    contenders: Vec<String>,
    /// Let the scheduler place the threads (default: the writer of flow i
    /// on CPU i, readers on the next CPU, so that a writer and its reader
    /// never share a core by chance).
    #[arg(long)]
    no_pin: bool,
}

#[derive(Clone)]
struct Cfg {
    quick: bool,
    reps: usize,
    window: Duration,
    warmup: Duration,
    groups: Vec<&'static str>,
    contenders: Vec<Contender>,
    /// Sizes of the 1-flow tap→tap rows besides 64 B.
    sizes: Vec<usize>,
    flood_ports: Vec<usize>,
    scale_taps: Vec<usize>,
    fdb_macs: u32,
    /// Round trips of the latency rows.
    round_trips: usize,
    /// Length of each iperf3 run between guests.
    iperf_secs: u32,
    /// Stop starting repetitions when the next would end after this.
    budget: Option<Duration>,
    umlbr: PathBuf,
    /// CPUs to spread the threads over; None: no pinning.
    cpus: Option<usize>,
}

const GROUPS: [&str; 10] = [
    "tap-to-tap",
    "flooding",
    "hostile",
    "scale",
    "fdb",
    "uplink",
    "nat",
    "gso",
    "guests",
    "vxlan",
];

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
    // Makes the UML guests' waits give up too.
    umlbr_tests::uml::INTERRUPTED.store(true, Ordering::Relaxed);
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() -> ExitCode {
    umlbr_tests::exit("bench", run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: the bench creates network namespaces, taps and BPF programs");
    }
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
    let cfg = config(&args)?;
    topo::clean_stale();
    let mut res = Results::default();
    define_rows(&cfg, &mut res);
    let load_before = loadavg();
    let t0 = Instant::now();
    let mut rep_times = Vec::new();
    let mut reps_done = 0;
    for rep in 0..cfg.reps {
        if let (Some(budget), Some(&last)) = (cfg.budget, rep_times.iter().max())
            && t0.elapsed() + last > budget
        {
            let msg = format!(
                "stopped after {rep} of {} repetitions to stay within {} s",
                cfg.reps,
                budget.as_secs()
            );
            eprintln!("bench: {msg}");
            res.errors.push(msg);
            break;
        }
        let r0 = Instant::now();
        // Rotate the order every repetition.
        let n = cfg.contenders.len();
        for k in 0..n {
            let c = cfg.contenders[(k + rep) % n];
            for &g in &cfg.groups {
                // The redirect floor forwards fixed pairs (or floods
                // from tap0): the rows of these groups only.
                if c == Contender::Redirect
                    && !matches!(
                        g,
                        "tap-to-tap" | "flooding" | "uplink" | "nat" | "gso" | "guests"
                    )
                {
                    continue;
                }
                check_interrupted()?;
                let p = Progress {
                    t0,
                    rep,
                    reps: cfg.reps,
                    contender: c,
                };
                let r = match g {
                    "tap-to-tap" => tap_to_tap(&cfg, &p, &mut res),
                    "flooding" => flooding(&cfg, &p, &mut res),
                    "hostile" => hostile::run(&cfg, &p, &mut res),
                    "scale" => scale(&cfg, &p, &mut res),
                    "fdb" => fdb(&cfg, &p, &mut res),
                    "uplink" => uplink(&cfg, &p, &mut res),
                    "nat" => nat::run(&cfg, &p, &mut res),
                    "gso" => gso::run(&cfg, &p, &mut res),
                    "guests" => guests::run(&cfg, &p, &mut res),
                    "vxlan" => vxlan::run(&cfg, &p, &mut res),
                    _ => Ok(()),
                };
                if let Err(e) = r {
                    check_interrupted()?;
                    let msg = format!("rep {} {} {g}: {e:#}", rep + 1, c.as_str());
                    eprintln!("bench: ERROR {msg}");
                    res.errors.push(msg);
                }
            }
        }
        reps_done = rep + 1;
        rep_times.push(r0.elapsed());
    }
    let machine = machine_info(&cfg, reps_done, &load_before, t0.elapsed());
    report::write_all(&args.out, &res, machine.clone())?;
    eprintln!(
        "bench: done in {:.0} s; wrote {}/latest.json, latest.md and the SVGs",
        t0.elapsed().as_secs_f64(),
        args.out.display()
    );
    print!("{}", res.to_markdown(&machine));
    Ok(())
}

fn config(args: &Args) -> Result<Cfg> {
    let umlbr = match &args.umlbr {
        Some(p) => p.clone(),
        None => umlbr_tests::umlbr_bin(),
    };
    if !umlbr.exists() {
        bail!("no umlbr binary at {}", umlbr.display());
    }
    let groups: Vec<&'static str> = if args.only.is_empty() {
        GROUPS
            .iter()
            .copied()
            .filter(|&g| !(args.quick && g == "guests"))
            .collect()
    } else {
        let mut g = Vec::new();
        for o in &args.only {
            match GROUPS.iter().find(|&&x| x == o) {
                Some(&x) => g.push(x),
                None => bail!("unknown group {o} (groups: {})", GROUPS.join(", ")),
            }
        }
        g
    };
    let contenders = if args.contenders.is_empty() {
        Contender::ALL.to_vec()
    } else {
        let mut v = Vec::new();
        for o in &args.contenders {
            match Contender::ALL.iter().find(|c| c.as_str() == o) {
                Some(&c) => v.push(c),
                None => bail!("unknown contender {o}"),
            }
        }
        v
    };
    let q = args.quick;
    Ok(Cfg {
        quick: q,
        reps: args.reps.unwrap_or(if q { 3 } else { 5 }).max(1),
        window: Duration::from_secs_f64(args.secs.unwrap_or(if q { 0.8 } else { 3.0 })),
        warmup: Duration::from_millis(if q { 150 } else { 500 }),
        groups,
        contenders,
        sizes: if q { vec![1500] } else { vec![512, 1500] },
        flood_ports: if q { vec![2, 8] } else { vec![2, 8, 32] },
        scale_taps: if q { vec![16] } else { vec![16, 64] },
        fdb_macs: 100_000,
        round_trips: if q { 2000 } else { 10_000 },
        iperf_secs: if q { 3 } else { 5 },
        budget: q.then(|| Duration::from_secs(285)),
        umlbr,
        cpus: (!args.no_pin).then(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
    })
}

use Check::{RatioAtLeast, RatioAtMost, UmlbrAtLeast, UmlbrAtMost};
use Contender::{Kernel, KernelTuned};

/// The tap-to-tap rows (before the ones per frame size).
const TAP_TO_TAP: &[Row] = &[
    higher("p64_1", "64 B tap→tap, 1 flow", "kpps").goal(
        "≥ 3× kernel and ≥ 2× kernel-tuned",
        &[RatioAtLeast(Kernel, 3.0), RatioAtLeast(KernelTuned, 2.0)],
    ),
    lower(
        "p64_1_cpu",
        "64 B, 1 flow: CPU per frame (writer + reader threads)",
        "µs",
    )
    .goal("≤ 1/3 of kernel", &[RatioAtMost(Kernel, 1.0 / 3.0)]),
    lower(
        "p64_1_prog",
        "64 B, 1 flow: run time of the XDP program on the writer's tap, per frame (kernel.bpf_stats, in a window of its own)",
        "ns",
    ),
    // umlbr alone (the kernel bridge here has no VLAN filtering); the
    // redirect floor's value is its untagged p64_1, of the same run.
    higher(
        "p64_1_vlan",
        "64 B tap→tap, 1 flow, access port (VLAN 10) → trunk: one 802.1Q tag pushed in XDP per frame (floor: untagged bare redirect)",
        "kpps",
    ),
    lower(
        "p64_1_sys",
        "64 B, 1 flow: machine CPU per frame (/proc/stat, other load included)",
        "µs",
    ),
    higher(
        "p64_2",
        "64 B tap→tap, 2 flows (2 writers, 2 readers, 2 cores)",
        "kpps",
    )
    .goal("≥ 3× kernel", &[RatioAtLeast(Kernel, 3.0)]),
    lower("p64_2_cpu", "64 B, 2 flows: CPU per frame (threads)", "µs"),
    lower(
        "p64_2_wcpu",
        "64 B, 2 flows: writer CPU per frame sent (write() + switching)",
        "µs",
    ),
];

/// Per frame size `{s}`.
const PER_SIZE: &[Row] = &[
    higher("p{s}_1", "{s} B tap→tap, 1 flow", "kpps"),
    lower("p{s}_1_cpu", "{s} B, 1 flow: CPU per frame (threads)", "µs"),
];

/// Tap-to-tap rows of a full run only.
const FULL_ONLY: &[Row] = &[
    higher(
        "p64_1_blk",
        "64 B, 1 flow, blocking writer (generic XDP on the tap)",
        "kpps",
    ),
    higher(
        "p64_1_vnet",
        "64 B, 1 flow, IFF_VNET_HDR writer and reader",
        "kpps",
    ),
];

const LATENCY: &[Row] = &[
    lower(
        "lat_p50",
        "64 B round trip tap↔tap (echoed by the other tap's reader), p50",
        "µs",
    )
    .goal("p50 ≤ 0.8× kernel", &[RatioAtMost(Kernel, 0.8)]),
    lower("lat_p99", "64 B round trip tap↔tap, p99", "µs"),
];

/// A flood to `{k}` ports; the goal is set for 8 ports.
const FLOOD: Row = higher(
    "flood_{k}",
    "64 B broadcast from 1 writer to {k} ports, per port",
    "kpps",
);
const FLOOD_GOAL_PORTS: usize = 8;
const FLOOD_GOAL: Row = FLOOD.goal("≥ 1.5× kernel", &[RatioAtLeast(Kernel, 1.5)]);

/// `{n}` taps, `{flows}` flows.
const SCALE: &[Row] = &[
    higher("scale_{n}", "64 B, {n} taps, {flows} flows, total", "kpps"),
    higher(
        "scale_{n}_ratio",
        "{n} taps ({flows} flows) vs 4 taps (2 flows): total rate",
        "×",
    ),
    lower(
        "scale_{n}_cost",
        "{n} taps vs 4 taps: writer CPU per frame sent (the switching cost), ratio",
        "×",
    )
    .goal("flat: umlbr ≤ 1.1", &[UmlbrAtMost(1.1)]),
];

/// With `{m}` MACs.
const FDB: &[Row] = &[
    higher(
        "fdb_pps",
        "64 B, 1 flow, {m} learned MACs in the FDB",
        "kpps",
    ),
    higher(
        "fdb_entries",
        "entries in the FDB after frames from {m} new source MACs",
        "MACs",
    ),
    higher(
        "fdb_ratio",
        "64 B, 1 flow: {m} MACs vs a nearly empty FDB",
        "×",
    )
    .goal("lookup cost unchanged: umlbr ≥ 0.9", &[UmlbrAtLeast(0.9)]),
];

/// Per direction `{id}`, described as `{what}`.
const UPLINK: &[Row] = &[
    higher("{id}", "{what}", "kpps").goal("≥ 3× kernel", &[RatioAtLeast(Kernel, 3.0)]),
    lower(
        "{id}_cpu",
        "{what}: CPU per frame (writer + reader threads)",
        "µs",
    ),
];
const UPLINK_DIRECTIONS: [(&str, &str); 2] = [
    (
        "uplink_out",
        "64 B guest→LAN through a veth uplink (bridged)",
    ),
    (
        "uplink_in",
        "64 B LAN→guest through a veth uplink (bridged)",
    ),
];

/// With `{m}` MACs.
const CONTROL_PLANE: &[Row] = &[
    lower(
        "cp_up",
        "create a bridge (`umlbr up br0` / `ip link add br0 type bridge` + up, wall time)",
        "ms",
    ),
    lower(
        "cp_attach",
        "attach one tap (`umlbr attach` / `ip link set master`, wall time)",
        "ms",
    ),
    lower(
        "cp_fdb_show",
        "list {m} learned MACs (`umlbr fdb show --json` / `bridge fdb show`)",
        "s",
    ),
];

fn define_rows(cfg: &Cfg, res: &mut Results) {
    let g = "tap-to-tap";
    res.define_all(g, TAP_TO_TAP, &[]);
    for &s in &cfg.sizes {
        res.define_all(g, PER_SIZE, &[("s", &s.to_string())]);
    }
    if !cfg.quick {
        res.define_all(g, FULL_ONLY, &[]);
    }
    res.define_all("latency", LATENCY, &[]);
    for &k in &cfg.flood_ports {
        let row = if k == FLOOD_GOAL_PORTS {
            FLOOD_GOAL
        } else {
            FLOOD
        };
        res.define_all("flooding", &[row], &[("k", &k.to_string())]);
    }
    hostile::define_rows(cfg, res);
    for &n in &cfg.scale_taps {
        let (taps, flows) = (n.to_string(), (n / 2).to_string());
        res.define_all("scale", SCALE, &[("n", &taps), ("flows", &flows)]);
    }
    let m = fmt_count(cfg.fdb_macs);
    res.define_all("fdb", FDB, &[("m", &m)]);
    for (id, what) in UPLINK_DIRECTIONS {
        res.define_all("uplink", UPLINK, &[("id", id), ("what", what)]);
    }
    nat::define_rows(cfg, res);
    gso::define_rows(cfg, res);
    guests::define_rows(cfg, res);
    vxlan::define_rows(cfg, res);
    res.define_all("control-plane", CONTROL_PLANE, &[("m", &m)]);
}

fn fmt_count(n: u32) -> String {
    if n >= 1000 {
        format!("{} {:03}", n / 1000, n % 1000)
    } else {
        n.to_string()
    }
}

struct Progress {
    t0: Instant,
    rep: usize,
    reps: usize,
    contender: Contender,
}

impl Progress {
    fn say(&self, what: &str, result: &str) {
        let t = self.t0.elapsed().as_secs();
        eprintln!(
            "bench [{:>2}:{:02}] rep {}/{} {:<12} {:<34} {result}",
            t / 60,
            t % 60,
            self.rep + 1,
            self.reps,
            self.contender.as_str(),
            what
        );
    }
}

/// A flow: a writer on tap `from` sending to the station on tap `to`
/// (None: broadcast).
struct Flow {
    from: usize,
    to: Option<usize>,
}

fn run_flows(
    cfg: &Cfg,
    topo: &Topo,
    flows: &[Flow],
    sinks: &[usize],
    size: usize,
    mode: TapMode,
) -> Result<Outcome> {
    let ceiling = topo.contender == Contender::Ceiling;
    let job = Job {
        netns: topo.ns.name.clone(),
        gens: flows
            .iter()
            .enumerate()
            .map(|(i, f)| GenSpec {
                tap: topo.taps[f.from].clone(),
                frame: udp_frame(
                    f.to.map(sink_mac).unwrap_or(BROADCAST),
                    gen_mac(f.from),
                    size,
                    i as u16,
                ),
                mode,
                cpu: cfg.cpus.map(|n| i % n),
                hello: None,
                packet_ns: None,
                random_src: false,
            })
            .collect(),
        sinks: if ceiling {
            Vec::new()
        } else {
            sinks
                .iter()
                .enumerate()
                .map(|(j, &s)| SinkSpec {
                    tap: topo.taps[s].clone(),
                    mac: sink_mac(s),
                    vnet_hdr: mode.vnet_hdr,
                    cpu: cfg.cpus.map(|n| (j + 1) % n),
                    udp: None,
                    packet_ns: None,
                })
                .collect()
        },
        warmup: cfg.warmup,
        window: cfg.window,
        probe: !ceiling,
    };
    let out = traffic::run(&job)?;
    if !ceiling && out.delivered() == 0 {
        bail!("no frame was delivered in the window");
    }
    Ok(out)
}

/// The rate a row reports: frames delivered to the sinks, or for the
/// ceiling frames written (and dropped by XDP at the writer's tap).
fn rate_kpps(topo: &Topo, o: &Outcome) -> f64 {
    if topo.contender == Contender::Ceiling {
        o.sent_pps() / 1e3
    } else {
        o.delivered_pps() / 1e3
    }
}

fn cpu_us(topo: &Topo, o: &Outcome) -> f64 {
    if topo.contender == Contender::Ceiling {
        if o.sent == 0 {
            f64::NAN
        } else {
            o.gen_cpu_s * 1e6 / o.sent as f64
        }
    } else {
        o.thread_us_per_frame()
    }
}

fn describe(topo: &Topo, o: &Outcome) -> String {
    let per = |cpu: f64, n: u64| {
        if n == 0 {
            "–".to_string()
        } else {
            format!("{:.2}", cpu * 1e6 / n as f64)
        }
    };
    let mut s = format!(
        "{:>7.1} kpps {:>5.2} µs/frame (writer {} µs/sent, reader {} µs/read; machine {}) sent {:.0} kpps",
        rate_kpps(topo, o),
        cpu_us(topo, o),
        per(o.gen_cpu_s, o.sent),
        per(o.sink_cpu_s, o.delivered()),
        if topo.contender == Contender::Ceiling {
            per(o.sys_busy_s, o.sent)
        } else {
            per(o.sys_busy_s, o.delivered())
        },
        o.sent_pps() / 1e3
    );
    if o.send_errors > 0 {
        s.push_str(&format!(" write errors {}", o.send_errors));
    }
    s
}

/// What the XDP program on the writer's tap costs per frame: one more
/// short window of `flows` with kernel.bpf_stats_enabled on (never during
/// the rate rows), its run time over its runs.
fn xdp_run_ns(cfg: &Cfg, topo: &Topo, flows: &[Flow]) -> Result<f64> {
    let id = topo::xdp_prog_id(&topo.ns, &topo.taps[flows[0].from])?
        .context("no XDP program on the writer's tap")?;
    let short = Cfg {
        window: Duration::from_millis(300),
        warmup: Duration::from_millis(50),
        ..cfg.clone()
    };
    let sinks: Vec<usize> = flows.iter().filter_map(|f| f.to).collect();
    let stats = topo::BpfStats::enable()?;
    let (t0, n0) = topo::prog_run_stats(id)?;
    run_flows(&short, topo, flows, &sinks, 64, TapMode::default())?;
    let (t1, n1) = topo::prog_run_stats(id)?;
    drop(stats);
    if n1 <= n0 {
        bail!(
            "the XDP program on {} did not run",
            topo.taps[flows[0].from]
        );
    }
    Ok((t1 - t0) as f64 / (n1 - n0) as f64)
}

/// Measure and note which path umlbr took for it.
fn measured(
    topo: &Topo,
    p: &Progress,
    res: &mut Results,
    row: &str,
    what: &str,
    f: impl FnOnce() -> Result<Outcome>,
) -> Result<Outcome> {
    let before = topo.paths()?;
    let o = f().with_context(|| what.to_string())?;
    p.say(what, &describe(topo, &o));
    if topo.contender.is_umlbr() {
        let d = topo.paths()?.since(&before);
        res.note(
            row,
            format!("{} switched by {}", topo.contender.as_str(), d.describe()),
        );
    }
    Ok(o)
}

fn tap_to_tap(cfg: &Cfg, p: &Progress, res: &mut Results) -> Result<()> {
    let c = p.contender;
    // tap0 -> tap1 and tap2 -> tap3.
    let topo = Topo::new(c, 4, &[0, 2], &cfg.umlbr)?;
    if matches!(c, Contender::Kernel | Contender::Umlbr) {
        let ms = 1e3 * topo.attach_s.iter().sum::<f64>() / topo.attach_s.len() as f64;
        res.add("cp_attach", c, ms);
        res.add("cp_up", c, topo.up_s * 1e3);
    }
    let one = [Flow {
        from: 0,
        to: Some(1),
    }];
    let two = [
        Flow {
            from: 0,
            to: Some(1),
        },
        Flow {
            from: 2,
            to: Some(3),
        },
    ];
    let nb = TapMode::default();
    let o = measured(&topo, p, res, "p64_1", "64 B, 1 flow", || {
        run_flows(cfg, &topo, &one, &[1], 64, nb)
    })?;
    res.add("p64_1", c, rate_kpps(&topo, &o));
    res.add("p64_1_cpu", c, cpu_us(&topo, &o));
    if c != Contender::Ceiling {
        res.add("p64_1_sys", c, o.sys_us_per_frame());
    }
    if matches!(
        c,
        Contender::Umlbr | Contender::Redirect | Contender::Ceiling
    ) {
        check_interrupted()?;
        let ns = xdp_run_ns(cfg, &topo, &one)?;
        p.say("64 B, 1 flow: XDP program", &format!("{ns:.0} ns per run"));
        res.add("p64_1_prog", c, ns);
    }
    if c == Contender::Umlbr {
        check_interrupted()?;
        vlan_row(cfg, &topo, p, res, &one)?;
    } else if c == Contender::Redirect
        && let Some(v) = res.samples.get(&("p64_1".to_string(), c)).cloned()
    {
        for x in v {
            res.add("p64_1_vlan", c, x);
        }
    }
    check_interrupted()?;
    let o = measured(&topo, p, res, "p64_2", "64 B, 2 flows", || {
        run_flows(cfg, &topo, &two, &[1, 3], 64, nb)
    })?;
    res.add("p64_2", c, rate_kpps(&topo, &o));
    res.add("p64_2_cpu", c, cpu_us(&topo, &o));
    if o.sent > 0 {
        res.add("p64_2_wcpu", c, o.gen_cpu_s * 1e6 / o.sent as f64);
    }
    for &s in &cfg.sizes {
        check_interrupted()?;
        let row = format!("p{s}_1");
        let o = measured(&topo, p, res, &row, &format!("{s} B, 1 flow"), || {
            run_flows(cfg, &topo, &one, &[1], s, nb)
        })?;
        res.add(&row, c, rate_kpps(&topo, &o));
        res.add(&format!("{row}_cpu"), c, cpu_us(&topo, &o));
    }
    if c != Contender::Ceiling {
        check_interrupted()?;
        let rtts = traffic::ping_pong(&traffic::PingPong {
            netns: topo.ns.name.clone(),
            a_tap: topo.taps[0].clone(),
            b_tap: topo.taps[1].clone(),
            a_mac: gen_mac(0),
            b_mac: sink_mac(1),
            len: 64,
            count: cfg.round_trips,
            a_cpu: cfg.cpus.map(|_| 0),
            b_cpu: cfg.cpus.map(|n| 1 % n),
        })
        .context("round trips")?;
        let (p50, p99) = (
            traffic::quantile(&rtts, 0.5),
            traffic::quantile(&rtts, 0.99),
        );
        p.say(
            "64 B round trip tap0↔tap1",
            &format!(
                "p50 {p50:.1} µs  p99 {p99:.1} µs  ({} round trips)",
                rtts.len()
            ),
        );
        res.add("lat_p50", c, p50);
        res.add("lat_p99", c, p99);
    }
    if !cfg.quick {
        check_interrupted()?;
        let blk = TapMode {
            nonblocking: false,
            vnet_hdr: false,
        };
        let o = measured(
            &topo,
            p,
            res,
            "p64_1_blk",
            "64 B, 1 flow, blocking writer",
            || run_flows(cfg, &topo, &one, &[1], 64, blk),
        )?;
        res.add("p64_1_blk", c, rate_kpps(&topo, &o));
        check_interrupted()?;
        let vnet = TapMode {
            nonblocking: true,
            vnet_hdr: true,
        };
        let o = measured(
            &topo,
            p,
            res,
            "p64_1_vnet",
            "64 B, 1 flow, IFF_VNET_HDR",
            || run_flows(cfg, &topo, &one, &[1], 64, vnet),
        )?;
        res.add("p64_1_vnet", c, rate_kpps(&topo, &o));
    }
    Ok(())
}

/// The 64 B row with tap0 an access port of VLAN 10 and tap1 a trunk
/// of it, the sink's MAC a static entry there: umlbr_xdp pushes a tag
/// on every frame before its redirect. The ports go back to no VLANs
/// after (the bridge VLAN-unaware again for the rows that follow). A
/// umlbr without VLANs (a base build) has no row.
fn vlan_row(cfg: &Cfg, topo: &Topo, p: &Progress, res: &mut Results, one: &[Flow]) -> Result<()> {
    let (t0, t1) = (topo.taps[0].as_str(), topo.taps[1].as_str());
    if topo.umlbr_out(&["vlan", t0, "--vlan", "10"]).is_err() {
        p.say(
            "64 B, 1 flow, VLAN tag pushed",
            "skipped: this umlbr has no VLANs",
        );
        return Ok(());
    }
    let sink = umlbr_tests::wire::fmt_mac(&sink_mac(1));
    topo.umlbr_out(&["vlan", t1, "--trunk", "10"])?;
    topo.umlbr_out(&["fdb", "add", &sink, t1, "--vlan", "10", "--static"])?;
    let o = measured(
        topo,
        p,
        res,
        "p64_1_vlan",
        "64 B, 1 flow, VLAN tag pushed",
        || run_flows(cfg, topo, one, &[1], 64, TapMode::default()),
    );
    let _ = topo.umlbr_out(&["fdb", "del", &sink, "--bridge", crate::topo::BRIDGE]);
    let _ = topo.umlbr_out(&["vlan", t0, "--none"]);
    let _ = topo.umlbr_out(&["vlan", t1, "--none"]);
    res.add("p64_1_vlan", Contender::Umlbr, rate_kpps(topo, &o?));
    Ok(())
}

fn flooding(cfg: &Cfg, p: &Progress, res: &mut Results) -> Result<()> {
    let c = p.contender;
    if c == Contender::Ceiling {
        return Ok(());
    }
    for &k in &cfg.flood_ports {
        check_interrupted()?;
        let topo = Topo::flood(c, k + 1, &cfg.umlbr)?;
        let sinks: Vec<usize> = (1..=k).collect();
        let row = format!("flood_{k}");
        let o = measured(
            &topo,
            p,
            res,
            &row,
            &format!("broadcast to {k} ports"),
            || {
                run_flows(
                    cfg,
                    &topo,
                    &[Flow { from: 0, to: None }],
                    &sinks,
                    64,
                    TapMode::default(),
                )
            },
        )?;
        res.add(&row, c, o.delivered_pps() / 1e3 / k as f64);
    }
    Ok(())
}

fn scale(cfg: &Cfg, p: &Progress, res: &mut Results) -> Result<()> {
    let c = p.contender;
    if c == Contender::Ceiling {
        return Ok(());
    }
    for &n in &cfg.scale_taps {
        check_interrupted()?;
        let topo = Topo::new(c, n, &[], &cfg.umlbr)?;
        let flows: Vec<Flow> = (0..n / 2)
            .map(|i| Flow {
                from: 2 * i,
                to: Some(2 * i + 1),
            })
            .collect();
        let sinks: Vec<usize> = (0..n / 2).map(|i| 2 * i + 1).collect();
        let row = format!("scale_{n}");
        let o = measured(
            &topo,
            p,
            res,
            &row,
            &format!("{n} taps, {} flows", n / 2),
            || run_flows(cfg, &topo, &flows, &sinks, 64, TapMode::default()),
        )?;
        let total = o.delivered_pps() / 1e3;
        res.add(&row, c, total);
        // The switching cost proper: both switches do their work in the
        // writer's write(), so writer CPU per frame sent, against 4 taps.
        let wcpu = o.gen_cpu_s * 1e6 / o.sent.max(1) as f64;
        let base_w = res
            .samples
            .get(&("p64_2_wcpu".to_string(), c))
            .and_then(|v| v.get(p.rep).copied());
        if let Some(b) = base_w.filter(|b| *b > 0.0) {
            res.add(&format!("{row}_cost"), c, wcpu / b);
        }
        // Against this repetition's 2-flow rate on 4 taps.
        let base = res
            .samples
            .get(&("p64_2".to_string(), c))
            .and_then(|v| v.get(p.rep).copied());
        if let Some(b) = base.filter(|b| *b > 0.0) {
            res.add(&format!("{row}_ratio"), c, total / b);
        }
    }
    Ok(())
}

fn fdb(cfg: &Cfg, p: &Progress, res: &mut Results) -> Result<()> {
    let c = p.contender;
    let wanted = if cfg.quick {
        matches!(c, Contender::Kernel | Contender::Umlbr)
    } else {
        c != Contender::Ceiling
    };
    if !wanted {
        return Ok(());
    }
    let topo = Topo::new(c, 2, &[], &cfg.umlbr)?;
    // The fill stands for a LAN of stations behind tap0.
    topo.unlimited(&topo.taps[0])?;
    let one = [Flow {
        from: 0,
        to: Some(1),
    }];
    let nb = TapMode::default();
    let pre = measured(
        &topo,
        p,
        res,
        "fdb_ratio",
        "64 B, 1 flow, empty FDB",
        || run_flows(cfg, &topo, &one, &[1], 64, nb),
    )?;
    check_interrupted()?;
    let took = traffic::fill_fdb(&topo.ns.name, &topo.taps[0], sink_mac(1), cfg.fdb_macs)?;
    let (entries, show_s) = topo.fdb_show()?;
    p.say(
        &format!("FDB fill with {} MACs", fmt_count(cfg.fdb_macs)),
        &format!(
            "written in {:.2} s; {entries} entries listed in {show_s:.2} s",
            took.as_secs_f64()
        ),
    );
    res.add("fdb_entries", c, entries as f64);
    res.add("cp_fdb_show", c, show_s);
    check_interrupted()?;
    let post = measured(
        &topo,
        p,
        res,
        "fdb_pps",
        &format!("64 B, 1 flow, {} MACs", fmt_count(cfg.fdb_macs)),
        || run_flows(cfg, &topo, &one, &[1], 64, nb),
    )?;
    res.add("fdb_pps", c, post.delivered_pps() / 1e3);
    if pre.delivered_pps() > 0.0 {
        res.add("fdb_ratio", c, post.delivered_pps() / pre.delivered_pps());
    }
    Ok(())
}

/// Guest ↔ LAN bridged through a veth uplink: a writer on tap0 sends to
/// the LAN station (a packet socket on lan0 in the LAN namespace), and the
/// LAN station's writer sends to the guest's tap.
fn uplink(cfg: &Cfg, p: &Progress, res: &mut Results) -> Result<()> {
    let c = p.contender;
    if c == Contender::Ceiling {
        return Ok(());
    }
    let topo = Topo::uplink(c, 1, &cfg.umlbr)?;
    let lan = topo.lan.as_ref().context("no LAN namespace")?.name.clone();
    let lan_mac = topo::NAT_LAN_MAC;
    let lan_gen_mac = gen_mac(0x100);
    let tap = |name: &str| -> (String, Option<String>) { (name.to_string(), None) };
    let lan_end = || -> (String, Option<String>) { ("lan0".to_string(), Some(lan.clone())) };
    for (row, what, (gtap, gns), gsrc, (stap, sns), smac) in [
        (
            "uplink_out",
            "64 B guest→LAN (veth uplink)",
            tap("tap0"),
            gen_mac(0),
            lan_end(),
            lan_mac,
        ),
        (
            "uplink_in",
            "64 B LAN→guest (veth uplink)",
            lan_end(),
            lan_gen_mac,
            tap("tap0"),
            sink_mac(0),
        ),
    ] {
        check_interrupted()?;
        let job = Job {
            netns: topo.ns.name.clone(),
            gens: vec![GenSpec {
                tap: gtap,
                frame: udp_frame(smac, gsrc, 64, 0),
                mode: TapMode::default(),
                cpu: cfg.cpus.map(|_| 0),
                hello: None,
                packet_ns: gns,
                random_src: false,
            }],
            sinks: vec![SinkSpec {
                tap: stap,
                mac: smac,
                vnet_hdr: false,
                cpu: cfg.cpus.map(|n| 1 % n),
                udp: None,
                packet_ns: sns,
            }],
            warmup: cfg.warmup,
            window: cfg.window,
            probe: true,
        };
        let o = measured(&topo, p, res, row, what, || traffic::run(&job))?;
        res.add(row, c, o.delivered_pps() / 1e3);
        res.add(&format!("{row}_cpu"), c, o.thread_us_per_frame());
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine_info(
    cfg: &Cfg,
    reps_done: usize,
    load_before: &str,
    took: Duration,
) -> serde_json::Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({
        "cores": cores,
        "cpu": cpu,
        "kernel": kernel,
        "date": date,
        "mode": if cfg.quick { "quick" } else { "full" },
        "repetitions": reps_done,
        "pinning": if cfg.cpus.is_some() {
            "writer of flow i on CPU i, reader of flow i on CPU i+1 (mod cores)"
        } else {
            "none"
        },
        "window_s": cfg.window.as_secs_f64(),
        "duration_s": took.as_secs(),
        "load_before": load_before,
        "load_after": loadavg(),
        "note": "Figures are relative: compare contenders within one run on one machine only. \
                 Frame sizes are as written to the tap (Ethernet header, no FCS). Writers use \
                 O_NONBLOCK (tun's native XDP path) unless a row says otherwise; the ceiling is \
                 a native XDP drop program on each writer's tap, so it is what the writers alone \
                 can do. redirect is the floor of any switch on the same hooks: a program that only \
                 calls bpf_redirect() to a fixed peer port (native XDP between taps; tcx between \
                 tap0 and a veth uplink, and between the taps of GSO super-frames and of vector \
                 guests) or broadcasts through a devmap (flooding rows), no switching work at \
                 all. umlbr-tc is umlbr with the XDP program removed from the taps \
                 (ip link set dev TAP xdp off): only its tcx program switches. A load average \
                 above the core count means other work shared the CPUs.",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of a quick and of a full run have every `{placeholder}`
    /// filled in.
    #[test]
    fn rows_are_filled_in() {
        for quick in [true, false] {
            let mut argv = vec!["umlbr-bench", "--umlbr", "/bin/true"];
            if quick {
                argv.push("--quick");
            }
            let cfg = config(&Args::parse_from(argv)).unwrap();
            let mut res = Results::default();
            define_rows(&cfg, &mut res);
            assert!(res.defs.len() > 50, "{} rows", res.defs.len());
            for d in &res.defs {
                assert!(!d.id.contains('{') && !d.name.contains('{'), "{d:?}");
            }
        }
    }
}
