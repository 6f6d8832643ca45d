//! `cargo xtask demo`: three User Mode Linux guests on a umlbr bridge in a
//! network namespace "host", pinging each other and the host.
//!
//! main.rs runs `cargo xtask setup` (if anything is missing) and builds
//! umlbr before calling [`run`]; the binary is `umlbr_tests::umlbr_bin()`
//! ($UMLBR_BIN is set to it).
//!
//! The recipe it plays, in a namespace "host" (so nothing touches the
//! machine's own network):
//!
//! ```text
//! umlbr up br0 --address 192.168.2.1/24
//! umlbr tap add tap0; umlbr attach tap0        (and tap1)
//! umlbr tap add tap2 --vnet-hdr; umlbr attach tap2   (TC only: for GSO)
//! linux.uml ... eth0=tuntap,tap0,MAC            guest uml1 192.168.2.2 (legacy tap)
//! linux.uml ... eth0=tuntap,tap1,MAC            guest uml2 192.168.2.3 (legacy tap)
//! linux.uml ... vec0:transport=tap,ifname=tap2  guest uml3 192.168.2.4 (vector tap: GSO)
//! ```
//!
//! then pings (guest to guest, guest to host, host to guest), a short
//! iperf3 between two guests, `umlbr show`, `umlbr fdb show`, `umlbr
//! stats`, and tears it all down: guests, bridge, taps, namespace. Also on
//! error and on Ctrl-C; with --keep everything is left running instead.
use std::{
    process::{Command, Output, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use umlbr_tests::{
    uml::{self, Guest, GuestSpec, Transport, ping_seqs, ping_summary},
    umlbr_bin,
};

use crate::util::{header, say};

const NS: &str = "host";
const BRIDGE: &str = "br0";
const HOST_IP: &str = "192.168.2.1";

/// The namespace "host": deleted, with every process in it, on drop.
struct HostNs {
    keep: bool,
}

impl HostNs {
    fn create() -> Result<HostNs> {
        let list = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .context("running ip netns list")?;
        let exists = String::from_utf8_lossy(&list.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some(NS));
        if exists {
            bail!(
                "a network namespace \"{NS}\" already exists (a demo run with --keep?); \
                 remove it with `cargo xtask clean-netns {NS}` (or `ip netns del {NS}`) and retry"
            );
        }
        let st = Command::new("ip")
            .args(["netns", "add", NS])
            .status()
            .context("running ip netns add")?;
        if !st.success() {
            bail!("ip netns add {NS} failed");
        }
        Ok(HostNs { keep: false })
    }

    fn pids(&self) -> Vec<i32> {
        umlbr_tests::netns::pids(NS)
    }
}

impl Drop for HostNs {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: plain kill(2) of a process in our namespace.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
        say(format!("network namespace {NS} deleted"));
    }
}

/// `sh -c script` in the namespace; its output whatever the status.
fn ns_output(script: &str) -> Result<Output> {
    Command::new("ip")
        .args(["netns", "exec", NS, "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{script}` in netns {NS}"))
}

fn ns_sh(script: &str) -> Result<String> {
    let out = ns_output(script)?;
    if !out.status.success() {
        bail!(
            "`{script}` failed in netns {NS} ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `umlbr ARGS` in the namespace, printed as it runs; its stdout.
fn umlbr(args: &[&str]) -> Result<String> {
    say(format!("$ umlbr {}", args.join(" ")));
    let out = Command::new("ip")
        .args(["netns", "exec", NS])
        .arg(umlbr_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running umlbr {args:?}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    for l in err.lines() {
        say(format!("  {l}"));
    }
    if !out.status.success() {
        bail!("umlbr {} failed ({})", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

extern "C" fn on_signal(_sig: libc::c_int) {
    uml::INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C and SIGTERM make every wait give up, so that the guards clean up.
fn catch_signals() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

fn check_interrupted() -> Result<()> {
    if uml::INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Run the demo; with `keep`, leave the topology running at the end.
pub fn run(keep: bool) -> Result<()> {
    let t0 = Instant::now();
    catch_signals();
    for tool in [uml::LINUX_UML, "/usr/bin/iperf3", "/bin/busybox"] {
        if !std::path::Path::new(tool).exists() {
            bail!("{tool} is missing: run `cargo xtask setup`");
        }
    }

    header(format!("network namespace \"{NS}\": the demo's host"));
    let mut ns = HostNs::create()?;
    say(format!("created (ip netns add {NS})"));
    // The guests' world: no IPv6 autoconfiguration chatter on the bridge.
    ns_sh(
        "ip link set lo up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
           net.ipv6.conf.default.disable_ipv6=1",
    )?;

    header("bridge br0 and three taps");
    umlbr(&["up", BRIDGE, "--address", "192.168.2.1/24"])?;
    let taps = ["tap0", "tap1", "tap2"];
    for tap in taps {
        // tap2 is for the vector guest (vnet headers, GSO): made with
        // --vnet-hdr, it gets TC only, as the README advises.
        if tap == "tap2" {
            umlbr(&["tap", "add", tap, "--vnet-hdr"])?;
        } else {
            umlbr(&["tap", "add", tap])?;
        }
        umlbr(&["attach", tap])?;
    }

    header("three User Mode Linux guests");
    let specs = [
        (
            "uml1",
            Transport::Legacy,
            "tap0",
            "02:00:00:00:00:02",
            "192.168.2.2/24",
        ),
        (
            "uml2",
            Transport::Legacy,
            "tap1",
            "02:00:00:00:00:03",
            "192.168.2.3/24",
        ),
        (
            "uml3",
            Transport::Vector,
            "tap2",
            "02:00:00:00:00:04",
            "192.168.2.4/24",
        ),
    ]
    .map(|(name, tr, tap, mac, ip)| {
        GuestSpec::new(name, tr, tap, mac, ip)
            .gateway(HOST_IP)
            .keep(keep)
    });
    for s in &specs {
        say(format!(
            "booting {} on {} ({} transport, {}, MAC {})",
            s.name,
            s.tap,
            s.transport.as_str(),
            s.ip_cidr,
            s.mac
        ));
    }
    let boot0 = Instant::now();
    let mut guests = Guest::boot_all(NS, &specs)?;
    say(format!(
        "all three up in {:.1} s (linux.uml, hostfs root, init {})",
        boot0.elapsed().as_secs_f64(),
        guests[0].dir().join("init.sh").display()
    ));

    header("pings: guest to guest, guest to host");
    let mut failures = Vec::new();
    for a in &guests {
        let targets: Vec<(&str, &str)> = guests
            .iter()
            .filter(|b| b.name != a.name)
            .map(|b| (b.name.as_str(), b.ip.as_str()))
            .chain([("host", HOST_IP)])
            .collect();
        for (name, ip) in targets {
            let (_, out) = a.run(&format!("busybox ping {PING} {ip}"))?;
            report_ping(&format!("{} -> {name} ({ip})", a.name), &out, &mut failures);
        }
    }
    header("pings: host to guests");
    for g in &guests {
        let out = ns_output(&format!("busybox ping {PING} {}", g.ip))?;
        let out = String::from_utf8_lossy(&out.stdout);
        report_ping(
            &format!("host -> {} ({})", g.name, g.ip),
            &out,
            &mut failures,
        );
    }
    check_interrupted()?;

    header("iperf3: TCP from uml1 to uml3 for 3 seconds");
    match iperf(&guests[0], &guests[2], 3) {
        Ok(line) => println!("{line}"),
        Err(e) => failures.push(format!("iperf3 uml1 -> uml3: {e:#}")),
    }

    header("umlbr show");
    print!("{}", umlbr(&["show"])?);
    header("umlbr fdb show");
    print!("{}", umlbr(&["fdb", "show"])?);
    header("umlbr stats");
    print!("{}", umlbr(&["stats"])?);

    if keep {
        ns.keep = true;
        for g in guests.drain(..) {
            say(format!(
                "guest {} ({}): linux.uml pid {}, files in {}",
                g.name,
                g.ip,
                g.pid().unwrap_or(0),
                g.dir().display()
            ));
            g.leak();
        }
        header("left running (--keep)");
        say(format!(
            "try: ip netns exec {NS} {} show; ip netns exec {NS} busybox ping 192.168.2.3",
            umlbr_bin().display()
        ));
        say(format!(
            "remove it all with: cargo xtask clean-netns {NS}  (kills the guests, deletes the namespace)"
        ));
    } else {
        header("teardown");
        for mut g in guests.drain(..) {
            g.halt();
            say(format!("guest {} stopped", g.name));
        }
        umlbr(&["down", BRIDGE])?;
        for tap in taps {
            umlbr(&["tap", "del", tap])?;
        }
        let left = ns_sh("ip -o link show")?;
        if left.lines().any(|l| !l.contains(": lo:")) {
            failures.push(format!("interfaces left after teardown:\n{left}"));
        }
        drop(ns);
    }
    say(format!("demo done in {:.1} s", t0.elapsed().as_secs_f64()));
    if !failures.is_empty() {
        bail!("the demo saw failures:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// Four pings; the first three must be answered (busybox waits only about
/// a second for the reply to its last one, which a guest briefly starved
/// on a loaded machine may miss).
const PING: &str = "-c 4 -i 0.2 -W 3";

fn report_ping(what: &str, out: &str, failures: &mut Vec<String>) {
    let summary = ping_summary(out).replace('\n', "  ");
    println!("{what:<28} {summary}");
    let seqs = ping_seqs(out);
    if !(0..3).all(|s| seqs.contains(&s)) {
        failures.push(format!("{what}: {}", out.trim()));
    }
}

/// iperf3 from `client` to `server`: the receiver's summary line.
fn iperf(client: &Guest, server: &Guest, secs: u32) -> Result<String> {
    let (rc, out) = client.iperf3_to(server, secs, "-f g")?;
    if rc != 0 {
        bail!("iperf3 exited {rc}: {out}");
    }
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("sender") || l.contains("receiver"))
        .collect();
    Ok(format!(
        "{} ({}) -> {} ({}):\n{}",
        client.name,
        client.transport.as_str(),
        server.name,
        server.transport.as_str(),
        lines.join("\n")
    ))
}
