//! Commands killed half-way (issue 15): `up`, `attach`, `detach` and `down`
//! killed with SIGKILL at any point leave nothing that `umlbr down` (or a
//! second `detach`) cannot find and undo.
//!
//! Two ways to kill:
//! - `*_killed_at_random`: after a random delay (a seeded PRNG; the seed
//!   is printed, `UMLBR_KILL_SEED` replays it), spread over the command's
//!   measured run time, a quarter of them within its first 5 ms;
//! - `killed_before_each_change`: deterministically, under `strace`,
//!   just before each system call that changes something (a netlink
//!   RTM_NEW*/SET*/DEL*, a BPF map update or delete or program attach or
//!   detach, a write to a file, a rename or unlink), one run per such
//!   call. No hook in umlbr: strace injects the SIGKILL. (BPF calls are
//!   counted among all of the command's BPF calls, some of which walk the
//!   host's loaded programs: if another process loads or unloads one
//!   meanwhile, the kill lands a few calls off, still at a BPF call.)
//!
//! After each kill the namespace is checked: either the command's result
//! works (a frame from one tap reaches another) or `umlbr down` leaves
//! nothing: no veth but the test's uplink pair, no XDP or TC program (tcx
//! or clsact) on any interface, no clsact qdisc, no promiscuous
//! interface, no `umlbr_` nftables table, `ip_forward` as it was before `up`, no state file of the bridge in
//! /run/umlbr/.
//!
//! Needs root.
use std::{
    io::{Read, Write},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use umlbr_tests::{
    netns::{Netns, open_tap, xdp_prog_ids},
    umlbr_bin,
};

mod umlbr_lib;

const BR: &str = "br0";
const UP: &[&str] = &[
    "up",
    BR,
    "--address",
    "192.168.2.1/24",
    "--masquerade",
    "up0",
];

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Rng {
        let seed = std::env::var("UMLBR_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        eprintln!("{test}: seed {seed} (UMLBR_KILL_SEED={seed} replays it)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A delay in [0, max).
    fn below(&mut self, max: Duration) -> Duration {
        let ns = max.as_nanos().max(1) as u64;
        Duration::from_nanos(self.next() % ns)
    }
}

/// A namespace with two LANs (the veth pairs up0, 10.99.0.1/24, and
/// lan0; up1, 10.98.0.1/24, and lan1),
/// taps tap0..tap2 and upl (a tap standing in for a NIC to bridge onto
/// the LAN), all up, and `ip_forward` at `fwd`.
struct Lab {
    ns: Netns,
    fwd: u8,
    /// The bridges' files in /run/umlbr/ start with this.
    prefix: String,
}

impl Lab {
    fn new(fwd: u8) -> Result<Lab> {
        Lab::tagged(fwd, "jn-kill")
    }

    /// `new`, the namespace named with `tag`.
    fn tagged(fwd: u8, tag: &str) -> Result<Lab> {
        let ns = Netns::without_ipv6(tag)?;
        ns.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward={fwd} && \
             for i in 0 1; do ip link add up$i type veth peer name lan$i && \
             ip addr add 10.9$((9 - i)).0.1/24 dev up$i && ip link set up$i up && \
             ip link set lan$i up; done"
        ))?;
        for t in ["tap0", "tap1", "tap2", "upl"] {
            ns.umlbr_ok(&["tap", "add", t])?;
            ns.sh(&format!("ip link set {t} up"))?;
        }
        let ino = ns.sh("stat -L -c %i /proc/self/ns/net")?;
        let prefix = format!("/run/umlbr/net{}-", ino.trim());
        let lab = Lab { ns, fwd, prefix };
        // Records of a namespace that is gone whose inode this new one
        // reuses (umlbr ignores them: their netns cookie differs): not
        // ours to count.
        for f in lab.state_files()? {
            let _ = std::fs::remove_file(f);
        }
        Ok(lab)
    }

    fn umlbr(&self, args: &[&str]) -> Result<std::process::Output> {
        self.ns.umlbr(args)
    }

    fn ok(&self, args: &[&str]) -> Result<()> {
        self.ns.umlbr_ok(args).map(drop)
    }

    /// `umlbr ARGS`, started.
    fn start(&self, args: &[&str]) -> Result<Child> {
        self.ns
            .cmd(umlbr_bin().to_str().unwrap())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting umlbr")
    }

    /// How long `umlbr ARGS` takes (it must succeed).
    fn time(&self, args: &[&str]) -> Result<Duration> {
        let t = Instant::now();
        self.ok(args)?;
        Ok(t.elapsed())
    }

    /// Everything umlbr could have left in the namespace, for `ifaces`
    /// (None: all interfaces).
    fn leftovers(&self, ifaces: Option<&[&str]>) -> Result<Vec<String>> {
        let mut left = Vec::new();
        let links: Value = serde_json::from_str(&self.ns.sh("ip -j -d link show")?)?;
        let mut idx = Vec::new();
        for l in links.as_array().context("ip -j link: not an array")? {
            let name = l["ifname"].as_str().unwrap_or("").to_string();
            if ifaces.is_some_and(|i| !i.contains(&name.as_str())) {
                continue;
            }
            let kind = l["linkinfo"]["info_kind"].as_str().unwrap_or("");
            if kind == "veth" && !["up0", "lan0", "up1", "lan1"].contains(&name.as_str()) {
                left.push(format!("veth {name}"));
            }
            if !xdp_prog_ids(l).is_empty() {
                left.push(format!("XDP program on {name}"));
            }
            if l["promiscuity"].as_u64().unwrap_or(0) > 0 {
                left.push(format!("{name} promiscuous"));
            }
            idx.push((l["ifindex"].as_u64().unwrap_or(0) as u32, name));
        }
        let tcx = self.ns.run_in(|| {
            let mut found = Vec::new();
            for (i, name) in &idx {
                for (hook, what) in [
                    (umlbr_lib::Tc::Ingress, "ingress"),
                    (umlbr_lib::Tc::Egress, "egress"),
                ] {
                    if !umlbr_lib::tc_prog_ids(*i, hook).is_empty() {
                        found.push(format!("TC {what} program on {name}"));
                    }
                }
            }
            Ok(found)
        })?;
        left.extend(tcx);
        // The lab has no clsact qdisc of its own: one left is umlbr's
        // (UMLBR_TC_HOOK=clsact runs these tests on the fallback).
        for l in self.ns.sh("tc qdisc show")?.lines() {
            let dev = l.split(" dev ").nth(1).and_then(|r| r.split(' ').next());
            if l.starts_with("qdisc clsact")
                && dev.is_some_and(|d| ifaces.is_none_or(|i| i.contains(&d)))
            {
                left.push(format!("clsact qdisc on {}", dev.unwrap_or("?")));
            }
        }
        if ifaces.is_none() {
            let tables = self.ns.sh("nft list tables")?;
            for t in tables.lines().filter(|l| l.contains("umlbr_")) {
                left.push(format!("nftables {}", t.trim()));
            }
            let fwd = self.ns.sh("cat /proc/sys/net/ipv4/ip_forward")?;
            if fwd.trim() != self.fwd.to_string() {
                left.push(format!("ip_forward {} (was {})", fwd.trim(), self.fwd));
            }
            for f in self.state_files()? {
                left.push(format!("state file {f}"));
            }
        }
        Ok(left)
    }

    /// The bridges' files in /run/umlbr/ but their locks.
    fn state_files(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/run/umlbr")
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = e.path().display().to_string();
            if p.starts_with(&self.prefix) && !p.ends_with(".lock") {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Whether a broadcast written into tap `from` comes out of tap `to`
    /// within two seconds.
    fn forwards(&self, from: &str, to: &str) -> Result<bool> {
        let (from, to) = (from.to_string(), to.to_string());
        self.ns.run_in(move || {
            let mut a = open_tap(&from)?;
            let mut b = open_tap(&to)?;
            let mut buf = [0u8; 2048];
            while b.read(&mut buf).is_ok() {}
            let marker = format!("umlbr-kill-{from}-{to}");
            let mut f = vec![0xff; 6];
            // A source MAC of `from`'s own: one MAC seen on two ports would
            // move between them.
            let id = from
                .bytes()
                .fold(0u8, |h, b| h.wrapping_mul(31).wrapping_add(b));
            f.extend_from_slice(&[0x02, 0, 0, 0, 0x77, id]);
            f.extend_from_slice(&[0x88, 0xb5]);
            f.extend_from_slice(marker.as_bytes());
            f.resize(64, 0);
            // Written again every 100 ms: a tap just opened gets its
            // carrier at once but its qdisc only when linkwatch runs (up to
            // a second later), and TC's redirects into it are dropped
            // until then.
            let t = Instant::now();
            let mut sent = Duration::ZERO;
            a.write_all(&f)?;
            while t.elapsed() < Duration::from_secs(2) {
                if t.elapsed() >= sent + Duration::from_millis(100) {
                    sent = t.elapsed();
                    a.write_all(&f)?;
                }
                match b.read(&mut buf) {
                    Ok(n)
                        if buf[..n]
                            .windows(marker.len())
                            .any(|w| w == marker.as_bytes()) =>
                    {
                        return Ok(true);
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            Ok(false)
        })
    }

    /// The distinct programs on every hook (XDP, TC ingress and egress) of
    /// every interface.
    fn hooked_programs(&self) -> Result<std::collections::BTreeSet<u32>> {
        let links: Value = serde_json::from_str(&self.ns.sh("ip -j -d link show")?)?;
        let mut ids = std::collections::BTreeSet::new();
        let mut idx = Vec::new();
        for l in links.as_array().context("ip -j link: not an array")? {
            ids.extend(xdp_prog_ids(l).into_iter().map(|i| i as u32));
            idx.push(l["ifindex"].as_u64().unwrap_or(0) as u32);
        }
        let tc = self.ns.run_in(|| {
            Ok(idx
                .iter()
                .flat_map(|&i| {
                    [umlbr_lib::Tc::Ingress, umlbr_lib::Tc::Egress]
                        .into_iter()
                        .flat_map(move |h| umlbr_lib::tc_prog_ids(i, h))
                })
                .collect::<Vec<u32>>())
        })?;
        ids.extend(tc);
        Ok(ids)
    }

    /// Both ways between taps `a` and `b`.
    fn forwards_both(&self, a: &str, b: &str) -> Result<bool> {
        Ok(self.forwards(a, b)? && self.forwards(b, a)?)
    }
}

/// Run `umlbr ARGS` and SIGKILL it after `delay`; whether it had
/// finished by then.
fn kill_after(lab: &Lab, args: &[&str], delay: Duration) -> Result<bool> {
    let mut child = lab.start(args)?;
    std::thread::sleep(delay);
    let done = child.try_wait()?.is_some();
    let _ = child.kill();
    child.wait()?;
    Ok(done)
}

/// The stderr of `out`, on one line.
fn said(out: &std::process::Output) -> String {
    let s = String::from_utf8_lossy(&out.stderr)
        .trim()
        .replace('\n', " / ");
    if s.is_empty() { "(nothing)".into() } else { s }
}

/// Failures so far, for one report at the end (the lab is made anew
/// after each, so later kills start clean).
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, what: String, left: Vec<String>) -> bool {
        if left.is_empty() {
            return true;
        }
        eprintln!("FAIL {what}: left {}", left.join(", "));
        self.0.push(format!("{what}: left {}", left.join(", ")));
        false
    }

    fn fail(&mut self, what: String) {
        eprintln!("FAIL {what}");
        self.0.push(what);
    }

    fn done(self, kills: usize) -> Result<()> {
        if self.0.is_empty() {
            eprintln!("{kills} kills, nothing left behind");
            return Ok(());
        }
        bail!(
            "{} of {kills} kills left something behind:\n{}",
            self.0.len(),
            self.0.join("\n")
        )
    }
}

/// The i-th of n delays: a quarter within the first 5 ms, the rest over
/// 1.2 times the command's run time.
fn delay(rng: &mut Rng, i: usize, run: Duration) -> Duration {
    if i.is_multiple_of(4) {
        rng.below(Duration::from_millis(5))
    } else {
        rng.below(run.mul_f64(1.2))
    }
}

/// `down`, then nothing may be left; the lab again if something was.
fn down_leaves_nothing(lab: &mut Lab, what: String, f: &mut Findings) -> Result<()> {
    down_of_leaves_nothing(lab, BR, what, f)
}

/// `down BRIDGE`, then nothing may be left; the lab again if something
/// was.
fn down_of_leaves_nothing(
    lab: &mut Lab,
    bridge: &str,
    what: String,
    f: &mut Findings,
) -> Result<()> {
    let out = lab.umlbr(&["down", bridge])?;
    let left = lab.leftovers(None)?;
    if !f.check(format!("{what}; `down` said: {}", said(&out)), left) {
        *lab = Lab::new(lab.fwd)?;
    }
    Ok(())
}

#[test]
fn up_killed_at_random() -> Result<()> {
    let mut rng = Rng::seeded("up_killed_at_random");
    let mut f = Findings::default();
    let mut lab = Lab::new(0)?;
    let run = lab.time(UP)?;
    lab.ok(&["down", BR])?;
    ensure!(lab.leftovers(None)?.is_empty(), "up + down left something");
    eprintln!("up takes {run:?}");
    let n = 10;
    for i in 0..n {
        // The last two with ip_forward already on.
        let fwd = if i >= 8 { 1 } else { 0 };
        if lab.fwd != fwd {
            lab.fwd = fwd;
            lab.ns
                .sh(&format!("sysctl -qw net.ipv4.ip_forward={fwd}"))?;
        }
        let d = delay(&mut rng, i, run);
        let done = kill_after(&lab, UP, d)?;
        let what = format!("up killed after {d:?} (ip_forward {fwd}, finished: {done})");
        down_leaves_nothing(&mut lab, what, &mut f)?;
    }
    f.done(n)
}

/// Bridge up with tap0 and tap1 attached.
fn bridge_with_ports(lab: &Lab) -> Result<()> {
    lab.ok(&["up", BR, "--address", "192.168.2.1/24"])?;
    lab.ok(&["attach", "tap0"])?;
    lab.ok(&["attach", "tap1"])
}

/// After a killed `attach X` or `detach X`: `detach X` leaves X clean
/// (no program, not promiscuous), `attach X` then works (X forwards both
/// ways with tap0), and `detach X` again; or, every other time, `down`
/// leaves nothing and the bridge is made again.
fn after_kill(lab: &mut Lab, i: usize, x: &str, what: String, f: &mut Findings) -> Result<()> {
    if i % 2 == 1 {
        down_leaves_nothing(lab, what, f)?;
        return bridge_with_ports(lab);
    }
    let out = lab.umlbr(&["detach", x])?;
    let left = lab.leftovers(Some(&[x]))?;
    let what = format!("{what}; `detach {x}` said: {}", said(&out));
    if !f.check(what.clone(), left) {
        *lab = Lab::new(lab.fwd)?;
        return bridge_with_ports(lab);
    }
    let attach = attach_args(x);
    let out = lab.umlbr(&attach)?;
    if !out.status.success() {
        f.fail(format!("{what}; then `attach {x}` failed: {}", said(&out)));
    } else if !lab.forwards_both("tap0", x)? {
        f.fail(format!("{what}; then tap0 and {x} do not forward"));
    }
    lab.ok(&["detach", x]).ok();
    if !lab.forwards_both("tap0", "tap1")? {
        f.fail(format!("{what}; then tap0 and tap1 do not forward"));
        *lab = Lab::new(lab.fwd)?;
        return bridge_with_ports(lab);
    }
    Ok(())
}

fn attach_args(x: &str) -> Vec<&str> {
    if x == "upl" {
        vec!["attach", x, "--uplink"]
    } else {
        vec!["attach", x]
    }
}

/// tap2 or, every third kill, upl (an uplink: promiscuous while attached).
fn target(i: usize) -> &'static str {
    if i % 3 == 2 { "upl" } else { "tap2" }
}

#[test]
fn attach_killed_at_random() -> Result<()> {
    let mut rng = Rng::seeded("attach_killed_at_random");
    let mut f = Findings::default();
    let mut lab = Lab::new(0)?;
    bridge_with_ports(&lab)?;
    ensure!(lab.forwards_both("tap0", "tap1")?, "no forwarding at all");
    let run = lab.time(&attach_args("tap2"))?;
    lab.ok(&["detach", "tap2"])?;
    eprintln!("attach takes {run:?}");
    let n = 8;
    for i in 0..n {
        let x = target(i);
        let d = delay(&mut rng, i, run);
        let done = kill_after(&lab, &attach_args(x), d)?;
        let what = format!("attach {x} killed after {d:?} (finished: {done})");
        after_kill(&mut lab, i, x, what, &mut f)?;
    }
    f.done(n)
}

#[test]
fn detach_killed_at_random() -> Result<()> {
    let mut rng = Rng::seeded("detach_killed_at_random");
    let mut f = Findings::default();
    let mut lab = Lab::new(0)?;
    bridge_with_ports(&lab)?;
    lab.ok(&attach_args("tap2"))?;
    let run = lab.time(&["detach", "tap2"])?;
    eprintln!("detach takes {run:?}");
    let n = 8;
    for i in 0..n {
        let x = target(i);
        lab.ok(&attach_args(x))?;
        let d = delay(&mut rng, i, run);
        let done = kill_after(&lab, &["detach", x], d)?;
        let what = format!("detach {x} killed after {d:?} (finished: {done})");
        after_kill(&mut lab, i, x, what, &mut f)?;
    }
    f.done(n)
}

/// A bridge with everything: masquerade (nftables table, ip_forward),
/// an uplink, two guests.
fn full_bridge(lab: &Lab) -> Result<()> {
    lab.ok(UP)?;
    lab.ok(&attach_args("upl"))?;
    lab.ok(&["attach", "tap0"])?;
    lab.ok(&["attach", "tap1"])
}

#[test]
fn down_killed_at_random() -> Result<()> {
    let mut rng = Rng::seeded("down_killed_at_random");
    let mut f = Findings::default();
    let mut lab = Lab::new(0)?;
    full_bridge(&lab)?;
    let run = lab.time(&["down", BR])?;
    eprintln!("down takes {run:?}");
    let n = 7;
    for i in 0..n {
        let fwd = if i >= 5 { 1 } else { 0 };
        if lab.fwd != fwd {
            lab.fwd = fwd;
            lab.ns
                .sh(&format!("sysctl -qw net.ipv4.ip_forward={fwd}"))?;
        }
        full_bridge(&lab)?;
        let d = delay(&mut rng, i, run);
        let done = kill_after(&lab, &["down", BR], d)?;
        let what = format!("down killed after {d:?} (ip_forward {fwd}, finished: {done})");
        down_leaves_nothing(&mut lab, what, &mut f)?;
    }
    f.done(n)
}

// ---------------------------------------------------------------------------
// Deterministic: a kill before each change, under strace.

/// Whether the strace line `l` is a system call that changes something.
fn changes(l: &str) -> bool {
    if l.starts_with("sendto(") || l.starts_with("sendmsg(") {
        return ["RTM_NEW", "RTM_SET", "RTM_DEL"]
            .iter()
            .any(|t| l.contains(&format!("nlmsg_type={t}")));
    }
    if l.starts_with("bpf(") {
        return [
            "BPF_MAP_UPDATE_ELEM",
            "BPF_MAP_DELETE_ELEM",
            "BPF_PROG_ATTACH",
            "BPF_PROG_DETACH",
            "BPF_LINK_CREATE",
            "BPF_LINK_DETACH",
        ]
        .iter()
        .any(|c| l.starts_with(&format!("bpf({c},")));
    }
    if l.starts_with("write(") {
        return !l.starts_with("write(2,") && !l.starts_with("write(1,");
    }
    ["rename(", "renameat(", "renameat2(", "unlink(", "unlinkat("]
        .iter()
        .any(|p| l.starts_with(p))
}

const TRACED: &str = "sendto,sendmsg,bpf,write,rename,renameat,renameat2,unlink,unlinkat";

/// The changes `umlbr ARGS` makes, as (system call, its occurrence among
/// the calls of that name, 1-based, the line).
fn change_points(lab: &Lab, args: &[&str]) -> Result<Vec<(String, usize, String)>> {
    change_points_env(lab, args, &[])
}

/// `change_points` with `env` set for umlbr.
fn change_points_env(
    lab: &Lab,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<Vec<(String, usize, String)>> {
    let log = std::env::temp_dir().join(format!("umlbr-kill-{}.strace", std::process::id()));
    let out = lab
        .ns
        .cmd("strace")
        .args(["-qq", "-s", "64", "-e", &format!("trace={TRACED}"), "-o"])
        .arg(&log)
        .arg(umlbr_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .context("running strace")?;
    ensure!(
        out.status.success(),
        "umlbr {args:?} under strace: {}",
        said(&out)
    );
    let text = std::fs::read_to_string(&log)?;
    let _ = std::fs::remove_file(&log);
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut points = Vec::new();
    for l in text.lines() {
        let Some(name) = l.split('(').next().filter(|n| !n.starts_with("---")) else {
            continue;
        };
        if l.starts_with("+++") || l.starts_with("---") {
            continue;
        }
        let k = seen.entry(name.to_string()).or_default();
        *k += 1;
        if changes(l) {
            points.push((name.to_string(), *k, l.chars().take(100).collect()));
        }
    }
    Ok(points)
}

/// Run `umlbr ARGS` under strace, SIGKILLed at the `k`-th call of `call`.
fn kill_at(lab: &Lab, args: &[&str], call: &str, k: usize) -> Result<()> {
    kill_at_env(lab, args, call, k, &[])
}

/// `kill_at` with `env` set for umlbr.
fn kill_at_env(lab: &Lab, args: &[&str], call: &str, k: usize, env: &[(&str, &str)]) -> Result<()> {
    let out = lab
        .ns
        .cmd("strace")
        .args([
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            &format!("trace={call}"),
            "-e",
            &format!("inject={call}:signal=KILL:when={k}"),
        ])
        .arg(umlbr_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .context("running strace")?;
    let _ = out;
    Ok(())
}

/// At most `max` of `points`, evenly spread, the first and last kept.
fn spread<T: Clone>(points: &[T], max: usize) -> Vec<T> {
    if points.len() <= max {
        return points.to_vec();
    }
    (0..max)
        .map(|i| points[i * (points.len() - 1) / (max - 1)].clone())
        .collect()
}

#[test]
fn killed_before_each_change() -> Result<()> {
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        bail!("strace is needed (apt-get install strace)");
    }
    let mut f = Findings::default();
    let mut kills = 0;
    let mut lab = Lab::new(0)?;
    // up: then down must leave nothing.
    let points = change_points(&lab, UP)?;
    lab.ok(&["down", BR])?;
    eprintln!("up: {} changes", points.len());
    for (call, k, line) in spread(&points, 16) {
        kill_at(&lab, UP, &call, k)?;
        kills += 1;
        down_leaves_nothing(
            &mut lab,
            format!("up killed at {call} #{k}: {line}"),
            &mut f,
        )?;
    }
    // attach and detach of tap2 and of upl as an uplink.
    bridge_with_ports(&lab)?;
    for x in ["tap2", "upl"] {
        let attach = attach_args(x);
        let points = change_points(&lab, &attach)?;
        let detach_points = change_points(&lab, &["detach", x])?;
        eprintln!(
            "attach {x}: {} changes; detach {x}: {}",
            points.len(),
            detach_points.len()
        );
        for (i, (call, k, line)) in spread(&points, 8).into_iter().enumerate() {
            kill_at(&lab, &attach, &call, k)?;
            kills += 1;
            let what = format!("attach {x} killed at {call} #{k}: {line}");
            after_kill(&mut lab, i, x, what, &mut f)?;
        }
        for (i, (call, k, line)) in spread(&detach_points, 8).into_iter().enumerate() {
            lab.ok(&attach)?;
            kill_at(&lab, &["detach", x], &call, k)?;
            kills += 1;
            let what = format!("detach {x} killed at {call} #{k}: {line}");
            after_kill(&mut lab, i, x, what, &mut f)?;
        }
    }
    lab.ok(&["down", BR])?;
    // down of a bridge with everything.
    full_bridge(&lab)?;
    let points = change_points(&lab, &["down", BR])?;
    eprintln!("down: {} changes", points.len());
    for (call, k, line) in spread(&points, 10) {
        full_bridge(&lab)?;
        kill_at(&lab, &["down", BR], &call, k)?;
        kills += 1;
        down_leaves_nothing(
            &mut lab,
            format!("down killed at {call} #{k}: {line}"),
            &mut f,
        )?;
    }
    f.done(kills)
}

/// `upgrade` (issue 17) killed before each change: each kill leaves a
/// bridge that forwards (some hooks on the old programs, some on the new,
/// all on the same maps), and `upgrade` run again completes it: every
/// hook then holds a program of one object (three programs in all: XDP,
/// TC, TC egress), no pin directory is left, and the bridge forwards.
/// `down` leaves nothing at the end.
#[test]
fn upgrade_killed_before_each_change() -> Result<()> {
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        bail!("strace is needed (apt-get install strace)");
    }
    let mut f = Findings::default();
    let mut kills = 0;
    let mut lab = Lab::tagged(0, "ug-kill")?;
    full_bridge(&lab)?;
    let upgrade = ["upgrade", BR];
    let points = change_points(&lab, &upgrade)?;
    eprintln!("upgrade: {} changes", points.len());
    ensure!(!points.is_empty(), "upgrade changed nothing");
    for (call, k, line) in spread(&points, 12) {
        kill_at(&lab, &upgrade, &call, k)?;
        kills += 1;
        let what = format!("upgrade killed at {call} #{k}: {line}");
        if !lab.forwards_both("tap0", "tap1")? {
            f.fail(format!("{what}; then tap0 and tap1 do not forward"));
        }
        let out = lab.umlbr(&upgrade)?;
        if !out.status.success() {
            f.fail(format!("{what}; then `upgrade` failed: {}", said(&out)));
            continue;
        }
        let progs = lab.hooked_programs()?;
        if progs.len() != 3 {
            f.fail(format!(
                "{what}; after `upgrade` again the hooks hold programs {progs:?}"
            ));
        }
        // The upgrade's pin directory (the bridge's other files, such as
        // `watch`'s record of its ports, belong to it while it lives).
        let files: Vec<String> = lab
            .state_files()?
            .into_iter()
            .filter(|f| f.ends_with(".upgrade"))
            .collect();
        if !files.is_empty() {
            f.fail(format!("{what}; after `upgrade` again: left {files:?}"));
        }
        if !lab.forwards_both("tap0", "tap1")? {
            f.fail(format!(
                "{what}; after `upgrade` again tap0 and tap1 do not forward"
            ));
        }
    }
    down_leaves_nothing(&mut lab, "down after the upgrades".into(), &mut f)?;
    f.done(kills)
}

// ---------------------------------------------------------------------------
// Two masquerading bridges, and the messages of half-made things.

/// nftables tables of umlbr in the namespace.
fn umlbr_tables(lab: &Lab) -> Result<Vec<String>> {
    Ok(lab
        .ns
        .sh("nft list tables")?
        .lines()
        .filter(|l| l.contains("umlbr_"))
        .map(|l| l.trim().to_string())
        .collect())
}

const UP_2: &[&str] = &[
    "up",
    "br_0",
    "--address",
    "192.168.3.1/24",
    "--masquerade",
    "up1",
];

/// Two masquerading bridges: `up` of the second or `down` of either one
/// killed at random; then `down` of that one leaves the other
/// masquerading (its table there, `ip_forward` on), and `down` of the
/// other leaves nothing, `ip_forward` off as it was.
#[test]
fn two_masquerades_killed_at_random() -> Result<()> {
    let mut rng = Rng::seeded("two_masquerades_killed_at_random");
    let mut f = Findings::default();
    let mut lab = Lab::new(0)?;
    let up_1: Vec<&str> = UP
        .iter()
        .map(|a| if *a == BR { "br-0" } else { a })
        .collect();
    lab.ok(&up_1)?;
    let up_run = lab.time(UP_2)?;
    let down_run = lab.time(&["down", "br_0"])?;
    lab.ok(&["down", "br-0"])?;
    let n = 6;
    for i in 0..n {
        let (victim, other, args): (&str, &str, Vec<&str>) = match i % 3 {
            0 => ("br_0", "br-0", UP_2.to_vec()),
            1 => ("br-0", "br_0", vec!["down", "br-0"]),
            _ => ("br_0", "br-0", vec!["down", "br_0"]),
        };
        lab.ok(&up_1)?;
        if args[0] == "down" {
            lab.ok(UP_2)?;
        }
        let run = if args[0] == "up" { up_run } else { down_run };
        let d = delay(&mut rng, i, run);
        let done = kill_after(&lab, &args, d)?;
        let what = format!("`{}` killed after {d:?} (finished: {done})", args.join(" "));
        let out = lab.umlbr(&["down", victim])?;
        let what = format!("{what}; `down {victim}` said: {}", said(&out));
        let fwd = lab.ns.sh("cat /proc/sys/net/ipv4/ip_forward")?;
        let tables = umlbr_tables(&lab)?;
        // The other bridge's kernel path, whole: its ip and ip6 tables.
        let t = if other == "br-0" {
            "umlbr_br_2d0"
        } else {
            "umlbr_br_5f0"
        };
        let own = [format!("table ip {t}"), format!("table ip6 {t}")];
        if fwd.trim() != "1" || tables != own {
            f.fail(format!(
                "{what}; then {other} masquerades with ip_forward {} and tables {tables:?}",
                fwd.trim()
            ));
        }
        down_of_leaves_nothing(&mut lab, other, what, &mut f)?;
    }
    f.done(n)
}

/// The first change point of `args` whose strace line has `needle`.
fn point_with(lab: &Lab, args: &[&str], needle: &str) -> Result<(String, usize)> {
    point_with_env(lab, args, needle, &[])
}

/// `point_with` with `env` set for umlbr.
fn point_with_env(
    lab: &Lab,
    args: &[&str],
    needle: &str,
    env: &[(&str, &str)],
) -> Result<(String, usize)> {
    change_points_env(lab, args, env)?
        .into_iter()
        .find(|p| p.2.contains(needle))
        .map(|(c, k, _)| (c, k))
        .with_context(|| format!("umlbr {args:?} makes no change with {needle}"))
}

/// An `up` killed before it hooked the switch port: `up` again says the
/// bridge is half-made, naming its record and `down`, which removes it.
/// A stale record (of a namespace gone) deletes nothing.
/// An `up` killed while writing its record made nothing: `up` again
/// works. A `detach` of an uplink killed after unhooking it: `attach`
/// refuses it, naming `detach`, which restores it.
#[test]
fn half_made_things_are_named() -> Result<()> {
    let lab = Lab::new(0)?;
    // Killed before XDP on the switch port (a bare veth pair), and at the
    // netlink request after it, before its first TC program (XDP alone,
    // whose maps are not all there). Netlink calls are counted exactly;
    // BPF calls are not (see the top).
    for (needle, later) in [("RTM_SETLINK", 0), ("RTM_SETLINK", 1)] {
        let (call, k) = point_with(&lab, UP, needle)?;
        let k = k + later;
        lab.ok(&["down", BR])?;
        kill_at(&lab, UP, &call, k)?;
        let sw = lab.leftovers(Some(&["br0-sw"]))?;
        let xdp_alone =
            sw.iter().any(|l| l.starts_with("XDP")) && !sw.iter().any(|l| l.starts_with("TC "));
        ensure!(
            xdp_alone == (later == 1),
            "up killed at {call} #{k} left br0-sw with {sw:?}"
        );
        let out = lab.umlbr(UP)?;
        let msg = said(&out);
        let record = format!("{}{BR}.state", lab.prefix);
        ensure!(
            !out.status.success()
                && msg.starts_with("umlbr: error:")
                && msg.contains("bridge br0 is half-made")
                && msg.contains(&record)
                && msg.contains("umlbr down br0"),
            "up after an up killed at {call} #{k}: {msg}"
        );
        // Other commands are not hindered by it.
        lab.ns
            .umlbr_ok(&["show", "--json"])
            .context("show with a half-made bridge")?;
        let out = lab.umlbr(&["down", BR])?;
        ensure!(
            out.status.success(),
            "down of a half-made bridge: {}",
            said(&out)
        );
        let left = lab.leftovers(None)?;
        ensure!(left.is_empty(), "down of a half-made bridge left {left:?}");
    }

    // A record of another namespace (another cookie; the inode reused)
    // never deletes this one's interfaces.
    lab.ns
        .sh("ip link add br0 type veth peer name br0-sw")
        .context("a veth pair like a bridge's")?;
    std::fs::write(
        format!("{}{BR}.state", lab.prefix),
        "bridge=br0\nswitch_port=br0-sw\nnetns_cookie=18446744073709551614\n",
    )?;
    let out = lab.umlbr(&["down", BR])?;
    ensure!(
        !out.status.success() && said(&out).contains("does not exist"),
        "down with a stale record: {}",
        said(&out)
    );
    ensure!(
        lab.ns.sh("ip link show br0-sw").is_ok() && lab.state_files()?.is_empty(),
        "down with a stale record deleted the pair, or kept the record"
    );
    lab.ns.sh("ip link del br0")?;

    let (call, k) = point_with(&lab, UP, "began making")?;
    lab.ok(&["down", BR])?;
    kill_at(&lab, UP, &call, k)?;
    lab.ok(UP)?;
    lab.ok(&["down", BR])?;
    ensure!(
        lab.leftovers(None)?.is_empty(),
        "up, killed and again, then down"
    );

    bridge_with_ports(&lab)?;
    lab.ok(&attach_args("upl"))?;
    let (call, k) = point_with(&lab, &["detach", "upl"], "RTM_SETLINK")?;
    lab.ok(&attach_args("upl"))?;
    kill_at(&lab, &["detach", "upl"], &call, k)?;
    let out = lab.umlbr(&attach_args("upl"))?;
    let msg = said(&out);
    ensure!(
        !out.status.success() && msg.contains("br0") && msg.contains("umlbr detach upl"),
        "attach after a killed detach: {msg}"
    );
    lab.ok(&["detach", "upl"])?;
    let left = lab.leftovers(Some(&["upl"]))?;
    ensure!(
        left.is_empty(),
        "detach after a killed detach left {left:?}"
    );
    lab.ok(&attach_args("upl"))?;
    ensure!(
        lab.forwards_both("tap0", "upl")?,
        "upl attached again does not forward"
    );
    lab.ok(&["down", BR])?;
    ensure!(
        lab.leftovers(None)?.is_empty(),
        "the last down left something"
    );
    Ok(())
}

/// On the clsact fallback (kernels without tcx; forced here with
/// UMLBR_TC_HOOK=clsact): a command killed after it made a port's clsact
/// qdisc and before umlbr's filter on it (at the RTM_NEWTFILTER request)
/// leaves a qdisc that `detach` or `down` removes, since the port's
/// record says umlbr made it. The same for `up` on the switch port, whose
/// qdisc goes with the veth pair its record names.
#[test]
fn clsact_killed_between_qdisc_and_filter() -> Result<()> {
    const ENV: &[(&str, &str)] = &[("UMLBR_TC_HOOK", "clsact")];
    let lab = Lab::new(0)?;
    let clsact_on = |dev: &str| -> Result<bool> {
        Ok(lab
            .ns
            .sh(&format!("tc qdisc show dev {dev}"))?
            .contains("clsact"))
    };
    bridge_with_ports(&lab)?;
    let attach = ["attach", "tap2"];
    let (call, k) = point_with_env(&lab, &attach, "RTM_NEWTFILTER", ENV)?;
    lab.ok(&["detach", "tap2"])?;
    ensure!(!clsact_on("tap2")?, "detach left tap2's clsact qdisc");
    // Killed, then detach.
    kill_at_env(&lab, &attach, &call, k, ENV)?;
    ensure!(clsact_on("tap2")?, "the kill did not land after the qdisc");
    let out = lab.umlbr(&["detach", "tap2"])?;
    ensure!(out.status.success(), "detach: {}", said(&out));
    let left = lab.leftovers(Some(&["tap2"]))?;
    ensure!(left.is_empty(), "detach after the kill left {left:?}");
    ensure!(lab.forwards_both("tap0", "tap1")?, "tap0 and tap1 stopped");
    // Killed, then down.
    kill_at_env(&lab, &attach, &call, k, ENV)?;
    ensure!(clsact_on("tap2")?, "the kill did not land after the qdisc");
    lab.ok(&["down", BR])?;
    let left = lab.leftovers(None)?;
    ensure!(left.is_empty(), "down after the kill left {left:?}");
    // `up` killed at the switch port's first filter.
    let (call, k) = point_with_env(&lab, UP, "RTM_NEWTFILTER", ENV)?;
    lab.ok(&["down", BR])?;
    kill_at_env(&lab, UP, &call, k, ENV)?;
    ensure!(
        clsact_on("br0-sw")?,
        "the kill did not land after the qdisc"
    );
    lab.ok(&["down", BR])?;
    let left = lab.leftovers(None)?;
    ensure!(left.is_empty(), "down after the killed up left {left:?}");
    Ok(())
}

const UP_DHCP: &[&str] = &["up", BR, "--address", "10.97.0.1/24", "--dhcp"];

/// `up --dhcp` killed at random (dnsmasq is its last step: some kills
/// land after dnsmasq started, before its pid file or before `up` is
/// done), then `down`: no dnsmasq runs in the namespace, and nothing
/// else is left. The lease files (kept by `down` on purpose) are deleted
/// at the end.
#[test]
fn up_with_dhcp_killed_at_random() -> Result<()> {
    let mut rng = Rng::seeded("up_with_dhcp_killed_at_random");
    let mut f = Findings::default();
    let mut lab = Lab::tagged(0, "jn-killdhcp")?;
    let dnsmasqs = |lab: &Lab| -> Vec<String> {
        lab.ns
            .pids()
            .into_iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).ok())
            .filter(|c| c.contains("dnsmasq"))
            .map(|c| format!("process {}", c.replace('\0', " ")))
            .collect()
    };
    let run = lab.time(UP_DHCP)?;
    ensure!(!dnsmasqs(&lab).is_empty(), "up --dhcp started no dnsmasq");
    lab.ok(&["down", BR])?;
    ensure!(
        lab.leftovers(None)?.is_empty() && dnsmasqs(&lab).is_empty(),
        "up --dhcp + down left something"
    );
    eprintln!("up --dhcp takes {run:?}");
    let n = 10;
    let mut leases = Vec::new();
    // Kills of an unfinished `up` that had started dnsmasq.
    let mut with_dnsmasq = 0;
    for i in 0..n {
        // Half of them as soon as dnsmasq runs (before or after it wrote
        // its pid file), the others at random.
        let (d, done) = if i % 2 == 0 {
            kill_when_dnsmasq_runs(&lab, &mut rng)?
        } else {
            let d = delay(&mut rng, i, run);
            (d, kill_after(&lab, UP_DHCP, d)?)
        };
        let running = !dnsmasqs(&lab).is_empty();
        if running && !done {
            with_dnsmasq += 1;
        }
        let what =
            format!("up --dhcp killed after {d:?} (finished: {done}, dnsmasq running: {running})");
        let out = lab.umlbr(&["down", BR])?;
        let mut left = lab.leftovers(None)?;
        left.extend(dnsmasqs(&lab));
        let prefix = lab.prefix.replace("/run/umlbr/", "/var/lib/umlbr/");
        leases.extend([
            format!("{prefix}{BR}.leases"),
            format!("{prefix}{BR}.hosts"),
        ]);
        if !f.check(format!("{what}; `down` said: {}", said(&out)), left) {
            for p in lab.ns.pids() {
                // SAFETY: plain kill(2) of a process in the test's namespace.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            lab = Lab::tagged(0, "jn-killdhcp")?;
        }
    }
    for p in leases {
        let _ = std::fs::remove_file(p);
    }
    eprintln!("{with_dnsmasq} of {n} kills hit an `up` that had started dnsmasq");
    f.done(n)
}

/// Start `up --dhcp` and SIGKILL it once its dnsmasq runs (seen by its
/// command line, polled every 0-2 ms): (when, whether `up` had finished).
fn kill_when_dnsmasq_runs(lab: &Lab, rng: &mut Rng) -> Result<(Duration, bool)> {
    let conf = format!("--conf-file={}{BR}.dnsmasq.conf", lab.prefix);
    let t0 = Instant::now();
    let mut child = lab.start(UP_DHCP)?;
    let runs = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == conf.as_bytes()))
            })
    };
    while !runs() && child.try_wait()?.is_none() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(rng.below(Duration::from_millis(2)));
    }
    let done = child.try_wait()?.is_some();
    let _ = child.kill();
    child.wait()?;
    Ok((t0.elapsed(), done))
}
