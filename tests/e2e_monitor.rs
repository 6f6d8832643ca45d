//! `umlbr monitor` end to end: a bridge with real taps and a masquerade
//! in a namespace of its own, `umlbr monitor --json` running as a child
//! process, guests' frames written into the taps. The stream must show
//! the learn, the move, the NAT mapping, the locked port's drop and the
//! storm drops (at most a burst of them, the rest reported as
//! suppressed, events and suppressed adding up to the storm counter of
//! `umlbr stats`); SIGINT ends it with status 0 and gives the lease back,
//! a reader leaving ends the text stream, and SIGKILL leaves a lease that
//! runs out within EV_LEASE_NS.
//!
//! Root.
use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    process::{Child, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use aya::maps::{Array, Map, MapData};
use serde_json::Value;
use umlbr_common::{EV_BURST, EV_LEASE_NS, EvCtl, names};
use umlbr_tests::{
    netns::{InNetns, Netns, open_tap, xdp_prog_ids},
    umlbr_bin,
    wire::{BROADCAST, Frame, Mac, mac},
};

mod umlbr_lib;
use umlbr_lib::monotonic_coarse_ns as now_coarse;

const G: &str = "02:00:00:00:00:10";
const H: &str = "02:00:00:00:00:11";
const BOUND: &str = "02:00:00:00:00:30";
const NOT_BOUND: &str = "02:00:00:00:00:31";
const UPLINK_MAC: &str = "02:00:00:00:01:01";
const LAN_PEER_MAC: &str = "02:00:00:00:99:02";

/// tap0 (a guest), tap1 (flood limit 1/s), tap2 (locked to BOUND), up0
/// (the masquerade's uplink, a tap too). Fields drop in order: the taps,
/// then this thread back home, then the namespace.
struct Lab {
    taps: [File; 3],
    _up0: File,
    gw: Mac,
    _in: InNetns,
    ns: Netns,
}

impl Lab {
    fn new(tag: &str) -> Result<Lab> {
        let ns = Netns::without_ipv6(tag)?;
        let _in = InNetns::enter(&ns)?;
        let taps = [open_tap("tap0")?, open_tap("tap1")?, open_tap("tap2")?];
        let _up0 = open_tap("up0")?;
        ns.sh(&format!(
            "ip link set up0 address {UPLINK_MAC} && ip addr add 10.99.0.1/24 dev up0 && \
             ip link set up0 up && for t in tap0 tap1 tap2; do ip link set $t up || exit 1; done && \
             ip neigh replace 10.99.0.2 lladdr {LAN_PEER_MAC} dev up0 nud permanent && \
             ip route add default via 10.99.0.2"
        ))?;
        ns.umlbr_ok(&[
            "up",
            "br0",
            "--address",
            "192.168.2.1/24",
            "--masquerade",
            "up0",
        ])?;
        ns.umlbr_ok(&["attach", "tap0"])?;
        ns.umlbr_ok(&["attach", "tap1", "--flood-limit", "1"])?;
        ns.umlbr_ok(&["attach", "tap2", "--lock", "--mac", BOUND])?;
        let gw = mac(ns.sh("cat /sys/class/net/br0/address")?.trim());
        Ok(Lab {
            taps,
            _up0,
            gw,
            _in,
            ns,
        })
    }

    fn write(&mut self, tap: usize, frame: &[u8], n: usize) -> Result<()> {
        for _ in 0..n {
            self.taps[tap].write_all(frame)?;
        }
        Ok(())
    }

    /// A datagram from guest `src` to 10.99.0.2:5000 (masqueraded).
    fn udp_out(&self, src: &str) -> Vec<u8> {
        Frame::new(self.gw, mac(src))
            .udp(
                Ipv4Addr::new(192, 168, 2, 10),
                4000,
                Ipv4Addr::new(10, 99, 0, 2),
                5000,
                b"monitor",
            )
            .pad_min()
            .build()
    }

    fn broadcast(src: &str) -> Vec<u8> {
        Frame::new(BROADCAST, mac(src)).pad_min().build()
    }

    /// The listener's lease in br0's UMLBR_EV_CTL (found from the XDP
    /// program on its switch port).
    fn lease(&self) -> Result<u64> {
        let link: Value = serde_json::from_str(&self.ns.sh("ip -j -d link show br0-sw")?)?;
        let prog = *xdp_prog_ids(&link[0]).first().context("no XDP program")? as u32;
        let info = aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .find(|p| p.id() == prog)
            .context("the XDP program's info")?;
        for id in info.map_ids()?.unwrap_or_default() {
            let data = MapData::from_id(id)?;
            if data.info()?.name_as_str() == Some(names::EV_CTL) {
                let a: Array<MapData, EvCtl> = Array::try_from(Map::Array(data))?;
                return Ok(a.get(&0, 0)?.until_ns);
            }
        }
        bail!("no {} map", names::EV_CTL)
    }
}

/// `umlbr ARGS` inside `ns`, and its stdout and stderr lines as they come.
fn spawn(ns: &Netns, args: &[&str]) -> Result<(Child, Receiver<String>, Receiver<String>)> {
    let mut c = ns
        .cmd(umlbr_bin().to_str().unwrap())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting umlbr")?;
    let lines = |r: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines().map_while(|l| l.ok()) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        rx
    };
    let out = lines(Box::new(c.stdout.take().context("stdout")?));
    let err = lines(Box::new(c.stderr.take().context("stderr")?));
    Ok((c, out, err))
}

/// Wait (at most 5 s) for the monitor's "monitoring bridge br0": its
/// lease is set from then on.
fn ready(err: &Receiver<String>) -> Result<()> {
    let l = err
        .recv_timeout(Duration::from_secs(5))
        .context("umlbr monitor said nothing on stderr")?;
    ensure!(l == "monitoring bridge br0", "stderr: {l}");
    Ok(())
}

/// Send `sig` to `c` and wait (at most 5 s) for it to exit 0.
fn stop(mut c: Child, sig: i32) -> Result<()> {
    // `ip netns exec` execs umlbr: the pid is umlbr's.
    // SAFETY: plain kill(2).
    unsafe { libc::kill(c.id() as i32, sig) };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if let Some(st) = c.try_wait()? {
            ensure!(st.success(), "umlbr monitor exited {st} on signal {sig}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    bail!("umlbr monitor did not exit within 5 s of signal {sig}")
}

/// Whether JSON event `e` is `event` on `port` about `mac`.
fn is(e: &Value, event: &str, port: &str, mac: &str) -> bool {
    e["event"] == event && e["port"] == port && e["mac"] == mac
}

#[test]
fn monitor_streams_events() -> Result<()> {
    let mut lab = Lab::new("mon-e2e")?;
    // NAME left out: the namespace has one bridge.
    let (child, out, err) = spawn(&lab.ns, &["monitor", "--json"])?;
    ready(&err)?;

    lab.write(0, &lab.udp_out(G), 1)?;
    lab.write(1, &Lab::broadcast(G), 1)?;
    lab.write(2, &Lab::broadcast(NOT_BOUND), 1)?;
    // tap1's burst is FLOOD_BURST (200) floods: 250 more are storm drops,
    // over the events' burst.
    lab.write(1, &Lab::broadcast(H), 450)?;

    let mut got: Vec<Value> = Vec::new();
    let storm_of = |got: &[Value]| {
        let events = got.iter().filter(|e| e["event"] == "storm").count() as u64;
        let supp: u64 = got
            .iter()
            .filter(|e| e["event"] == "suppressed" && e["kind"] == "storm")
            .map(|e| e["count"].as_u64().unwrap_or(0))
            .sum();
        (events, supp)
    };
    let stats_storm = || -> Result<u64> {
        let v: Value = serde_json::from_str(&lab.ns.umlbr_ok(&["stats", "br0", "--json"])?)?;
        v["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "tap1"))
            .and_then(|p| p.pointer("/stats/storm"))
            .and_then(Value::as_u64)
            .with_context(|| format!("no storm counter of tap1 in `stats --json`: {v}"))
    };
    let want_storm = stats_storm()?;
    ensure!(
        want_storm >= 200,
        "tap1 dropped {want_storm} floods as storm"
    );
    let t = Instant::now();
    loop {
        while let Ok(l) = out.recv_timeout(Duration::from_millis(100)) {
            got.push(serde_json::from_str(&l).with_context(|| format!("not JSON: {l}"))?);
        }
        let (events, supp) = storm_of(&got);
        if events + supp >= want_storm || t.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let show = || {
        got.iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (event, port, m) in [
        ("learned", "tap0", G),
        ("moved", "tap1", G),
        ("learned", "tap1", H),
        ("locked", "tap2", NOT_BOUND),
        ("storm", "tap1", H),
    ] {
        ensure!(
            got.iter().any(|e| is(e, event, port, m)),
            "no {event} event of {port} {m} in:\n{}",
            show()
        );
    }
    let moved = got.iter().find(|e| is(e, "moved", "tap1", G)).unwrap();
    ensure!(moved["other_port"] == "tap0", "moved: {moved}");
    let nat = got
        .iter()
        .find(|e| e["event"] == "nat_new")
        .with_context(|| format!("no nat_new in:\n{}", show()))?;
    ensure!(
        nat["port"] == "tap0"
            && nat["mac"] == G
            && nat["proto"] == "udp"
            && nat["guest"] == "192.168.2.10:4000"
            && nat["remote"] == "10.99.0.2:5000"
            && nat["outside"]
                .as_str()
                .is_some_and(|o| o.starts_with("10.99.0.1:")),
        "nat_new: {nat}"
    );
    // Every line has an RFC 3339 UTC time.
    for e in &got {
        let t = e["time"].as_str().unwrap_or("");
        ensure!(
            t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "time {t:?} in {e}"
        );
    }
    let (events, supp) = storm_of(&got);
    println!("{want_storm} storm drops: {events} events, {supp} reported suppressed");
    ensure!(
        events <= EV_BURST + 10 && supp > 0 && events + supp == want_storm,
        "{want_storm} storm drops: {events} events and {supp} suppressed in:\n{}",
        show()
    );

    // SIGINT: status 0, the lease given back at once.
    ensure!(lab.lease()? > now_coarse(), "no lease while monitoring");
    stop(child, libc::SIGINT)?;
    ensure!(lab.lease()? == 0, "lease {} after SIGINT", lab.lease()?);
    Ok(())
}

/// Text lines name the port and carry the time; a reader that leaves
/// (`head -n 1`) ends the monitor (EPIPE) with status 0. A monitor killed
/// with SIGKILL leaves a lease that runs out within EV_LEASE_NS, after
/// which the datapath writes nothing (tests/prog_switch.rs shows that).
/// A monitor whose bridge is removed ends.
#[test]
fn monitor_text_pipe_and_kill() -> Result<()> {
    let mut lab = Lab::new("mon-e2e-text")?;
    let bin = umlbr_bin();
    let mut c = lab
        .ns
        .cmd("bash")
        .args([
            "-c",
            &format!(
                "set -o pipefail; {} monitor br0 2>/dev/null | head -n 1",
                bin.display()
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    // Until the monitor listens, frames teach nothing to the stream:
    // send a new source every 100 ms until the pipeline ends.
    let t = Instant::now();
    let mut n = 0u8;
    let status = loop {
        if let Some(st) = c.try_wait()? {
            break st;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(15),
            "the pipeline did not end"
        );
        n = n.wrapping_add(1);
        let src = format!("02:00:00:00:01:{n:02x}");
        lab.write(0, &Lab::broadcast(&src), 1)?;
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut line = String::new();
    std::io::Read::read_to_string(&mut c.stdout.take().unwrap(), &mut line)?;
    ensure!(
        status.success(),
        "monitor | head: {status}, printed {line:?}"
    );
    let words: Vec<&str> = line.split_whitespace().collect();
    ensure!(
        words.len() == 4
            && words[0].ends_with('Z')
            && words[1] == "learned"
            && words[2] == "tap0"
            && words[3].starts_with("02:00:00:00:01:"),
        "line {line:?}"
    );

    // SIGKILL: the lease stays, and runs out.
    let (child, _out, err) = spawn(&lab.ns, &["monitor", "br0"])?;
    ready(&err)?;
    let mut child = child;
    child.kill()?;
    child.wait()?;
    let killed_at = now_coarse();
    let lease = lab.lease()?;
    ensure!(
        lease > killed_at && lease <= killed_at + EV_LEASE_NS + 50_000_000,
        "lease {lease} at {killed_at} after SIGKILL"
    );
    std::thread::sleep(Duration::from_nanos(lease - killed_at));
    ensure!(now_coarse() >= lab.lease()?, "the lease has not run out");

    // The bridge removed under a running monitor: it ends, status 0.
    let (mut child, _out, err) = spawn(&lab.ns, &["monitor", "br0"])?;
    ready(&err)?;
    lab.ns.umlbr_ok(&["down", "br0"])?;
    let t = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if t.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            bail!("umlbr monitor still runs 5 s after `down`");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = err.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    ensure!(
        st.success() && said == "bridge br0 is gone",
        "after `down`: {st}, stderr {said:?}"
    );
    Ok(())
}
