//! The guests group: real User Mode Linux guests on each contender's
//! bridge, and one behind each contender's masquerade.
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddrV4, TcpListener},
    os::fd::AsRawFd,
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use umlbr_tests::uml::{Guest, GuestSpec, Transport};

use crate::{
    Cfg, Progress, check_interrupted,
    report::{Check, Goal, Results, Row, goal, higher, lower},
    topo::{self, Contender, Topo, Uplink},
    traffic,
};

/// The guests' python (the host's: guests run host binaries; not a
/// pyenv shim from root's PATH).
const PY: &str = "/usr/bin/python3";
/// Pings per latency measurement, one every 10 ms.
const PINGS: u32 = 300;
/// TCP request/response: at most this many round trips, and this long.
const RR_MAX: u32 = 20_000;
const RR_SECS: f64 = 2.0;
/// Connection rate: this long, at most this many connections, spread
/// over `CONN_PORTS` server ports. umlbr has 4536 source ports per
/// destination address and port by default, a closed mapping keeps its
/// port for tcp_closing = 10 s, and a new flow tries 16 random ports: keep
/// each destination's range well under half full, so that every
/// connection gets a port of umlbr's (the fast path).
const CONN_SECS: f64 = 3.0;
const CONN_MAX: u32 = 12_000;
const CONN_PORTS: u16 = 8;
/// The TCP server in the LAN namespace for the connection rate: ports
/// CONN_PORT..CONN_PORT + CONN_PORTS.
const CONN_PORT: u16 = 7100;
/// The guest-to-guest request/response server's port.
const RR_PORT: u16 = 7002;

use Contender::Kernel;

/// Per transport `{tr}`, described as `{what}`.
const TCP: &[Row] = &[
    higher(
        "guest_tcp_{tr}",
        "UML guest→guest TCP (iperf3), {what}",
        "Gbit/s",
    ),
    lower(
        "guest_cpu_{tr}",
        "UML guest→guest TCP, {tr}: host CPU per GB (guests included)",
        "CPU-s/GB",
    ),
];
/// The goals of the vector transport's TCP rows.
const VECTOR_TCP_GOALS: [Goal; 2] = [
    goal(
        "not slower: ≥ 1.0× kernel",
        &[Check::RatioAtLeast(Kernel, 1.0)],
    ),
    goal(
        "less host CPU than kernel: < 1.0×",
        &[Check::RatioAtMost(Kernel, 0.999)],
    ),
];

/// Per transport `{tr}`, `{pings}` pings.
const RTT: &[Row] = &[
    lower(
        "guest_ping_p50_{tr}",
        "UML guest→guest ping RTT p50, {tr} ({pings} pings, 10 ms apart)",
        "µs",
    ),
    lower(
        "guest_ping_p99_{tr}",
        "UML guest→guest ping RTT p99, {tr}",
        "µs",
    ),
    lower(
        "guest_rr_p50_{tr}",
        "UML guest→guest TCP 1-byte request/response RTT p50, {tr} (TCP_NODELAY)",
        "µs",
    ),
    lower(
        "guest_rr_p99_{tr}",
        "UML guest→guest TCP 1-byte request/response RTT p99, {tr}",
        "µs",
    ),
];
/// The goal of the legacy transport's ping p50.
const LEGACY_PING_GOAL: Goal = goal("p50 ≤ 0.8× kernel", &[Check::RatioAtMost(Kernel, 0.8)]);

/// With `{pings}` pings.
const NAT: &[Row] = &[
    higher(
        "guest_nat_tcp",
        "NAT: UML guest (vector)→LAN TCP (iperf3), through the masquerade",
        "Gbit/s",
    )
    .goal(
        "TCP not slower: ≥ 1.0× kernel",
        &[Check::RatioAtLeast(Kernel, 1.0)],
    ),
    lower(
        "guest_nat_cpu",
        "NAT: UML guest (vector)→LAN TCP: host CPU per GB (guest included)",
        "CPU-s/GB",
    ),
    higher(
        "guest_nat_conn_rate",
        "NAT: UML guest→LAN short TCP connections (connect, 1-byte echo, close), one after another",
        "conn/s",
    ),
    lower(
        "guest_nat_conn_cpu",
        "NAT: machine CPU per short TCP connection (guest, LAN server and switch included)",
        "CPU-µs/conn",
    )
    .goal(
        "≤ 0.5× kernel (conntrack)",
        &[Check::RatioAtMost(Kernel, 0.5)],
    ),
    lower(
        "guest_nat_ping_p50",
        "NAT: UML guest→LAN ping RTT p50 ({pings} pings, 10 ms apart)",
        "µs",
    ),
    lower(
        "guest_nat_ping_p99",
        "NAT: UML guest→LAN ping RTT p99",
        "µs",
    ),
];

pub fn define_rows(cfg: &Cfg, res: &mut Results) {
    let _ = cfg;
    for (tr, what) in [
        ("legacy", "legacy tuntap, one frame per read/write"),
        ("vector", "vector transport, IFF_VNET_HDR with GSO"),
    ] {
        let mut rows = TCP.to_vec();
        if tr == "vector" {
            rows[0].goal = Some(VECTOR_TCP_GOALS[0]);
            rows[1].goal = Some(VECTOR_TCP_GOALS[1]);
        }
        res.define_all("guests", &rows, &[("tr", tr), ("what", what)]);
    }
    let pings = PINGS.to_string();
    for tr in ["legacy", "vector"] {
        let mut rows = RTT.to_vec();
        if tr == "legacy" {
            rows[0].goal = Some(LEGACY_PING_GOAL);
        }
        res.define_all("guests", &rows, &[("tr", tr), ("pings", &pings)]);
    }
    res.define_all("guests", NAT, &[("pings", &pings)]);
}

/// Guest pairs on the contender's bridge (legacy, then vector), then one
/// vector guest behind its masquerade. A failed measurement costs its
/// rows only: the others still run, and the errors are returned together.
pub fn run(cfg: &Cfg, p: &Progress, res: &mut Results) -> Result<()> {
    // Switches, and the redirect floor (no ceiling: guests need a way to
    // each other and to the LAN).
    let switch = matches!(
        p.contender,
        Contender::Kernel | Contender::KernelTuned | Contender::Umlbr | Contender::UmlbrTc
    );
    if !switch && p.contender != Contender::Redirect {
        return Ok(());
    }
    let mut errs: Vec<String> = Vec::new();
    if let Err(e) = pairs(cfg, p, res, &mut errs) {
        errs.push(format!("{e:#}"));
    }
    check_interrupted()?;
    if let Err(e) = nat(cfg, p, res, &mut errs) {
        errs.push(format!("{e:#}"));
    }
    if !errs.is_empty() {
        bail!("{}", errs.join("; "));
    }
    Ok(())
}

/// Run one measurement; its error goes to `errs` (unless interrupted).
fn measure(errs: &mut Vec<String>, what: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    if let Err(e) = f() {
        check_interrupted()?;
        eprintln!("bench: guests: {what} failed: {e:#}");
        errs.push(format!("{what}: {e:#}"));
    }
    check_interrupted()
}

/// Two real User Mode Linux guests on the contender's bridge: iperf3 from
/// one to the other, ping and TCP request/response between them; once
/// with the legacy tuntap transport, once with the vector transport (GSO),
/// each pair on taps of its own and booted once for all three. Host CPU
/// is the whole machine's busy time while iperf3 runs (the guests are
/// host processes, and they account for most of it).
fn pairs(cfg: &Cfg, p: &Progress, res: &mut Results, errs: &mut Vec<String>) -> Result<()> {
    let c = p.contender;
    let topo = if c == Contender::Redirect {
        Topo::guest_redirect(&cfg.umlbr)?
    } else {
        Topo::new(c, 4, &[], &cfg.umlbr)?
    };
    for (tr, taps, name) in [
        (Transport::Legacy, [0, 1], "legacy"),
        (Transport::Vector, [2, 3], "vector"),
    ] {
        check_interrupted()?;
        if tr == Transport::Vector {
            for &t in &taps {
                topo.for_vnet_guest(&topo.taps[t])?;
            }
        }
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
        let mut gs = match Guest::boot_all(&topo.ns.name, &specs) {
            Ok(gs) => gs,
            Err(e) => {
                check_interrupted()?;
                errs.push(format!("booting two {name} guests: {e:#}"));
                continue;
            }
        };
        let boot_s = t0.elapsed().as_secs_f64();
        let r = pair_measurements(cfg, p, res, errs, &topo, (&gs, name, boot_s));
        for g in &mut gs {
            g.halt();
        }
        r?;
    }
    Ok(())
}

fn pair_measurements(
    cfg: &Cfg,
    p: &Progress,
    res: &mut Results,
    errs: &mut Vec<String>,
    topo: &Topo,
    (gs, name, boot_s): (&[Guest], &str, f64),
) -> Result<()> {
    let c = p.contender;
    let (a, b) = (&gs[0], &gs[1]);
    measure(errs, &format!("iperf3 between {name} guests"), || {
        let srv = b.iperf3_server()?;
        let paths0 = topo.paths()?;
        let r = iperf(a, &b.ip, cfg.iperf_secs);
        let _ = srv.wait(Duration::from_secs(10));
        let (gbps, bytes, cpu_s) = r?;
        paths_note(res, topo, &paths0, &format!("guest_tcp_{name}"));
        let cpu_per_gb = cpu_s / (bytes / 1e9);
        p.say(
            &format!("UML {name} guests, iperf3 TCP"),
            &format!("{gbps:.2} Gbit/s, {cpu_per_gb:.2} host CPU-s/GB (boot {boot_s:.1} s)"),
        );
        res.add(&format!("guest_tcp_{name}"), c, gbps);
        res.add(&format!("guest_cpu_{name}"), c, cpu_per_gb);
        Ok(())
    })?;
    measure(errs, &format!("ping between {name} guests"), || {
        let l = ping(a, &b.ip)?;
        p.say(&format!("UML {name} guests, ping"), &l.describe());
        res.add(&format!("guest_ping_p50_{name}"), c, l.p50);
        res.add(&format!("guest_ping_p99_{name}"), c, l.p99);
        Ok(())
    })?;
    measure(
        errs,
        &format!("TCP request/response between {name} guests"),
        || {
            let l = tcp_rr(a, b)?;
            p.say(
                &format!("UML {name} guests, TCP 1 B req/resp"),
                &l.describe(),
            );
            res.add(&format!("guest_rr_p50_{name}"), c, l.p50);
            res.add(&format!("guest_rr_p99_{name}"), c, l.p99);
            Ok(())
        },
    )
}

/// One vector guest (tap0, 192.168.2.10, default route via 192.168.2.1)
/// behind the contender's masquerade, the LAN host 10.99.0.2 in a
/// namespace behind the veth uplink up0: iperf3 to the LAN (its server in
/// the LAN namespace), short TCP connections to a server of ours in the
/// LAN namespace, ping to the LAN host.
fn nat(cfg: &Cfg, p: &Progress, res: &mut Results, errs: &mut Vec<String>) -> Result<()> {
    let c = p.contender;
    let mut topo = Topo::nat(c, 1, Uplink::Veth, &cfg.umlbr)?;
    // The floor: no gateway and no translation, bpf_redirect both ways.
    if c == Contender::Redirect {
        topo.nat_floor_way_back()?;
    }
    let lan = topo.lan.as_ref().context("no LAN namespace")?;
    topo.for_vnet_guest(&topo.taps[0])?;
    let spec = GuestSpec::new(
        "benchnat",
        Transport::Vector,
        &topo.taps[0],
        "02:b3:00:00:01:0a",
        &format!("{}/24", topo::NAT_GUEST),
    )
    .gateway(topo::NAT_GW);
    let t0 = Instant::now();
    let mut gs = Guest::boot_all(&topo.ns.name, &[spec]).context("booting the NAT guest")?;
    let boot_s = t0.elapsed().as_secs_f64();
    let n0 = topo.nat_counters().unwrap_or_default();
    let g = &gs[0];
    let lan_ip = topo::NAT_LAN_HOST.to_string();
    let r = (|| -> Result<()> {
        // The first packets resolve the gateway (and, for the kernel, the
        // LAN host): not part of any measurement.
        let (_, out) = g.run_timeout(
            &format!("ping -n -c 3 -i 0.2 -W 3 {lan_ip}"),
            Duration::from_secs(20),
        )?;
        match umlbr_tests::uml::ping_counts(&out) {
            Some((_, r)) if r > 0 => {}
            _ => bail!("the NAT guest does not reach the LAN host {lan_ip}:\n{out}"),
        }
        measure(errs, "NAT guest→LAN iperf3", || {
            let log = g.dir().join("iperf3-lan.log");
            let srv = HostProc::start(
                lan,
                &["iperf3", "-s", "-1", "-B", &lan_ip, "--forceflush"],
                &log,
            )?;
            srv.wait_output("Server listening", Duration::from_secs(10))?;
            let paths0 = topo.paths()?;
            let (gbps, bytes, cpu_s) = iperf(g, &lan_ip, cfg.iperf_secs)?;
            paths_note(res, &topo, &paths0, "guest_nat_tcp");
            let cpu_per_gb = cpu_s / (bytes / 1e9);
            p.say(
                "UML guest→LAN via NAT, iperf3 TCP",
                &format!("{gbps:.2} Gbit/s, {cpu_per_gb:.2} host CPU-s/GB (boot {boot_s:.1} s)"),
            );
            res.add("guest_nat_tcp", c, gbps);
            res.add("guest_nat_cpu", c, cpu_per_gb);
            Ok(())
        })?;
        measure(errs, "NAT guest→LAN connection rate", || {
            let srv = ConnServer::start(&lan.name, topo::NAT_LAN_HOST, CONN_PORT, CONN_PORTS)?;
            let (ok, secs, busy) = conn_rate(g, &lan_ip, CONN_PORT)?;
            let served = srv.stop()?;
            let rate = ok as f64 / secs;
            let cpu_us = busy * 1e6 / ok as f64;
            p.say(
                "UML guest→LAN via NAT, TCP connections",
                &format!(
                    "{ok} in {secs:.2} s: {rate:.0} conn/s, {cpu_us:.0} machine CPU-µs/conn \
                     (server saw {served})"
                ),
            );
            res.add("guest_nat_conn_rate", c, rate);
            res.add("guest_nat_conn_cpu", c, cpu_us);
            Ok(())
        })?;
        measure(errs, "NAT guest→LAN ping", || {
            let l = ping(g, &lan_ip)?;
            p.say("UML guest→LAN via NAT, ping", &l.describe());
            res.add("guest_nat_ping_p50", c, l.p50);
            res.add("guest_nat_ping_p99", c, l.p99);
            Ok(())
        })
    })();
    if c.is_umlbr()
        && let Ok(n1) = topo.nat_counters()
    {
        let note = crate::nat::translated_note(c.as_str(), "guest→LAN packets ", &n0, &n1, true);
        res.note("guest_nat_tcp", note.clone());
        res.note("guest_nat_conn_rate", note);
    }
    for g in &mut gs {
        g.halt();
    }
    r
}

/// umlbr: which path switched the frames since `before` (a vector
/// guest's GSO frames take generic XDP on a tap with XDP), as a note.
fn paths_note(res: &mut Results, topo: &Topo, before: &topo::Paths, row: &str) {
    if !topo.contender.is_umlbr() {
        return;
    }
    if let Ok(now) = topo.paths() {
        res.note(
            row,
            format!(
                "{}: ports switched iperf3's frames by {}",
                topo.contender.as_str(),
                now.since(before).describe()
            ),
        );
    }
}

/// iperf3 from `client` to the server at `server_ip` (started already)
/// for `secs`: the receiver's Gbit/s and bytes, and the machine's busy CPU
/// seconds meanwhile.
fn iperf(client: &Guest, server_ip: &str, secs: u32) -> Result<(f64, f64, f64)> {
    let busy0 = traffic::proc_stat_busy()?;
    let (rc, out) = client.run_timeout(
        &format!("iperf3 -c {server_ip} -t {secs} -f g"),
        Duration::from_secs(secs as u64 + 40),
    )?;
    let busy = traffic::proc_stat_busy()? - busy0;
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
    if bytes <= 0.0 {
        bail!("iperf3 moved nothing: {out}");
    }
    Ok((gbps, bytes, busy))
}

/// Round-trip times, µs.
struct Latency {
    p50: f64,
    p99: f64,
    n: usize,
    sent: usize,
}

impl Latency {
    fn from_samples(mut v: Vec<f64>, sent: usize) -> Result<Latency> {
        if v.len() < sent.div_ceil(2) || v.is_empty() {
            bail!("only {} of {sent} round trips completed", v.len());
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Ok(Latency {
            p50: percentile(&v, 50.0),
            p99: percentile(&v, 99.0),
            n: v.len(),
            sent,
        })
    }

    fn describe(&self) -> String {
        format!(
            "p50 {:.0} µs, p99 {:.0} µs ({} of {})",
            self.p50, self.p99, self.n, self.sent
        )
    }
}

/// Nearest-rank percentile of sorted `v`.
fn percentile(v: &[f64], p: f64) -> f64 {
    let k = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[k.clamp(1, v.len()) - 1]
}

/// `PINGS` pings from `g` to `ip`, 10 ms apart: their RTTs from the
/// per-reply `time=` lines.
fn ping(g: &Guest, ip: &str) -> Result<Latency> {
    let (_, out) = g.run_timeout(
        &format!("ping -n -c {PINGS} -i 0.01 -W 2 {ip}"),
        Duration::from_secs(PINGS as u64 / 100 + 30),
    )?;
    let v: Vec<f64> = out
        .lines()
        .filter(|l| l.contains("bytes from") && !l.contains("DUP"))
        .filter_map(|l| {
            let rest = &l[l.find("time=")? + 5..];
            let mut it = rest.split_whitespace();
            let t: f64 = it.next()?.parse().ok()?;
            match it.next()? {
                "ms" => Some(t * 1e3),
                "s" => Some(t * 1e6),
                "us" | "µs" => Some(t),
                _ => None,
            }
        })
        .collect();
    Latency::from_samples(v, PINGS as usize)
        .with_context(|| format!("ping {ip} from guest {}:\n{}", g.name, tail(&out, 5)))
}

const BENCH_PY: &str = r#"#!/usr/bin/python3
# Written by umlbr-bench (bench/src/guests.rs); runs in UML guests.
import os, socket, sys, time

def nodelay(s):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

def rr_server(ip, port):
    # One connection: echo every byte back at once.
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, int(port)))
    s.listen(4)
    s.settimeout(60)
    print("listening", flush=True)
    c, _ = s.accept()
    nodelay(c)
    c.settimeout(20)
    while True:
        d = c.recv(1)
        if not d:
            break
        c.sendall(d)

def rr_client(ip, port, maxn, secs):
    # 1-byte request/response round trips, each timed in-process; after
    # 100 untimed ones. Prints the RTTs in µs.
    c = socket.create_connection((ip, int(port)), timeout=10)
    nodelay(c)
    for _ in range(100):
        c.sendall(b"x")
        if c.recv(1) != b"x":
            sys.exit("bad echo in warm-up")
    t = []
    end = time.monotonic() + float(secs)
    pc = time.perf_counter_ns
    for _ in range(int(maxn)):
        t0 = pc()
        c.sendall(b"x")
        if c.recv(1) != b"x":
            sys.exit("bad echo")
        t.append(pc() - t0)
        if time.monotonic() > end:
            break
    c.close()
    print("rtt_us " + " ".join("%.1f" % (x / 1e3) for x in t))

def conn(ip, port, nports, secs, maxn, go):
    # Short connections one after another (connect, 1-byte echo, close:
    # we close first) for secs or maxn connections, once the file go
    # exists; to ports port..port+nports-1 in turn.
    port, nports, secs, maxn = int(port), int(nports), float(secs), int(maxn)
    print("ready", flush=True)
    t0 = time.monotonic()
    while not os.path.exists(go):
        if time.monotonic() - t0 > 30:
            sys.exit("no go")
        time.sleep(0.002)
    ok = fail = 0
    err = ""
    t0 = time.monotonic()
    end = t0 + secs
    while ok + fail < maxn and time.monotonic() < end:
        try:
            with socket.create_connection((ip, port + (ok + fail) % nports), timeout=3) as s:
                s.sendall(b"x")
                if s.recv(1) == b"x":
                    ok += 1
                else:
                    fail += 1
                    err = "bad echo"
        except OSError as e:
            fail += 1
            err = str(e)
    secs = time.monotonic() - t0
    print("done ok=%d fail=%d secs=%.4f err=%s" % (ok, fail, secs, err), flush=True)

globals()[sys.argv[1]](*sys.argv[2:])
"#;

/// Write the python script into the guest's directory (which the guest
/// sees at the same path); its path.
fn bench_py(g: &Guest) -> Result<String> {
    let path = g.dir().join("bench.py");
    fs::write(&path, BENCH_PY).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.display().to_string())
}

/// TCP 1-byte request/response from `a` to a server in `b`, TCP_NODELAY,
/// each round trip timed in the client.
fn tcp_rr(a: &Guest, b: &Guest) -> Result<Latency> {
    let (pa, pb) = (bench_py(a)?, bench_py(b)?);
    let srv = b.spawn(&format!("exec {PY} {pb} rr_server {} {RR_PORT}", b.ip))?;
    srv.wait_output("listening", Duration::from_secs(30))?;
    let r = a.run_timeout(
        &format!("{PY} {pa} rr_client {} {RR_PORT} {RR_MAX} {RR_SECS}", b.ip),
        Duration::from_secs(RR_SECS as u64 + 40),
    );
    let _ = srv.wait(Duration::from_secs(10));
    let (rc, out) = r?;
    if rc != 0 {
        bail!("the request/response client exited {rc}: {}", tail(&out, 5));
    }
    let v: Vec<f64> = out
        .lines()
        .find_map(|l| l.strip_prefix("rtt_us "))
        .with_context(|| format!("no rtt_us line: {}", tail(&out, 5)))?
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let n = v.len();
    Latency::from_samples(v, n)
}

/// Short TCP connections from `g` to `ip`, ports `port`.. (`CONN_PORTS`
/// of them, in turn) for `CONN_SECS`: (the
/// connections that succeeded, the client's seconds, the machine's busy
/// CPU seconds meanwhile). Python's start-up is not in the window: the
/// client waits for a file of ours.
fn conn_rate(g: &Guest, ip: &str, port: u16) -> Result<(u64, f64, f64)> {
    let py = bench_py(g)?;
    let go = g.dir().join("conn.go");
    let _ = fs::remove_file(&go);
    let bg = g.spawn(&format!(
        "exec {PY} {py} conn {ip} {port} {CONN_PORTS} {CONN_SECS} {CONN_MAX} {}",
        go.display()
    ))?;
    bg.wait_output("ready", Duration::from_secs(30))?;
    let busy0 = traffic::proc_stat_busy()?;
    fs::write(&go, b"")?;
    let out = bg.wait_output("done", Duration::from_secs(CONN_SECS as u64 + 30))?;
    let busy = traffic::proc_stat_busy()? - busy0;
    let (rc, out2) = bg.wait(Duration::from_secs(10))?;
    let out = if out2.is_empty() { out } else { out2 };
    let kv = |k: &str| -> Option<&str> {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
    };
    let ok: u64 = kv("ok").and_then(|v| v.parse().ok()).context("no ok=")?;
    let fail: u64 = kv("fail")
        .and_then(|v| v.parse().ok())
        .context("no fail=")?;
    let secs: f64 = kv("secs")
        .and_then(|v| v.parse().ok())
        .context("no secs=")?;
    if rc != 0 || ok == 0 || fail > ok / 100 {
        bail!(
            "connections: exit {rc}, {ok} ok, {fail} failed: {}",
            tail(&out, 3)
        );
    }
    Ok((ok, secs, busy))
}

fn tail(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

/// A host process in a namespace (stdout and stderr to `log`), killed when
/// dropped.
struct HostProc {
    child: Child,
    log: std::path::PathBuf,
}

impl HostProc {
    fn start(ns: &umlbr_tests::netns::Netns, argv: &[&str], log: &std::path::Path) -> Result<Self> {
        let child = ns.spawn_logged(argv, log)?;
        Ok(HostProc {
            child,
            log: log.to_path_buf(),
        })
    }

    fn wait_output(&self, needle: &str, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let out = fs::read_to_string(&self.log).unwrap_or_default();
            if out.contains(needle) {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                bail!("no {needle:?} within {timeout:?}: {out}");
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HostProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP server in a thread of ours that sits in the LAN namespace: for
/// each connection, one after another, it echoes one byte and closes when
/// the client has. Cheaper than a python server, so that the switch's
/// share of the machine's CPU per connection shows.
struct ConnServer {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl ConnServer {
    /// Listening on `ip`, ports `port..port + nports`.
    fn start(netns: &str, ip: std::net::Ipv4Addr, port: u16, nports: u16) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel::<Result<()>>();
        let (st, sv, ns) = (stop.clone(), served.clone(), netns.to_string());
        let thread = std::thread::spawn(move || -> Result<()> {
            let ls = (|| -> Result<Vec<TcpListener>> {
                umlbr_tests::netns::enter(&ns)?;
                (port..port + nports)
                    .map(|p| {
                        let l = TcpListener::bind(SocketAddrV4::new(ip, p))
                            .with_context(|| format!("binding {ip}:{p} in {ns}"))?;
                        l.set_nonblocking(true)?;
                        Ok(l)
                    })
                    .collect()
            })();
            let ls = match ls {
                Ok(ls) => {
                    let _ = tx.send(Ok(()));
                    ls
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return Ok(());
                }
            };
            let mut pfds: Vec<libc::pollfd> = ls
                .iter()
                .map(|l| libc::pollfd {
                    fd: l.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let mut b = [0u8; 64];
            while !st.load(Ordering::Relaxed) {
                // SAFETY: poll(2) on valid pollfds of listeners we own.
                unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 100) };
                for l in &ls {
                    let Ok((mut s, _)) = l.accept() else {
                        continue;
                    };
                    s.set_nonblocking(false)?;
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(Duration::from_secs(3)))?;
                    if matches!(s.read(&mut b), Ok(n) if n > 0) && s.write_all(&b[..1]).is_ok() {
                        // Until the client closes.
                        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
                        sv.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(())
        });
        let mut srv = ConnServer {
            stop,
            served,
            thread: Some(thread),
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(srv),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                srv.halt();
                bail!("the connection server did not start")
            }
        }
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stop it; how many connections it served.
    fn stop(mut self) -> Result<u64> {
        self.halt();
        Ok(self.served.load(Ordering::Relaxed))
    }
}

impl Drop for ConnServer {
    fn drop(&mut self) {
        self.halt();
    }
}
