//! Boot integration: `umlbr watch` (ports whose interface vanishes are
//! detached at once, expected ones that come back are attached again
//! with their options, an uplink going down and up is survived, SIGTERM
//! ends it), the systemd unit (`systemd-analyze verify`, and its commands
//! run in a namespace) and the ifupdown hook (run as ifupdown runs it).
//!
//! Needs root. Namespaces are `umlbrt-wb-*`.
use std::{
    fs::File,
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use umlbr_tests::{
    netns::{InNetns, Netns, drain, open_tap},
    umlbr_bin,
    wire::{BROADCAST, Frame, Mac, mac},
};

const G0: &str = "02:00:00:00:00:10";
const G1: &str = "02:00:00:00:00:11";

/// A `umlbr watch` running in a namespace, killed if the test fails.
struct Watch {
    child: Child,
    log: PathBuf,
}

impl Watch {
    fn start(ns: &Netns, args: &[&str]) -> Result<Watch> {
        let log = std::env::temp_dir().join(format!("{}-watch.log", ns.name));
        let bin = umlbr_bin();
        let mut argv = vec![bin.to_str().unwrap(), "watch"];
        argv.extend(args);
        let child = ns.spawn_logged(&argv, &log)?;
        let w = Watch { child, log };
        w.wait_for("watching", Duration::from_secs(10))?;
        Ok(w)
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log says `needle`.
    fn wait_for(&self, needle: &str, max: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < max {
            if self.text().contains(needle) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("watch never said {needle:?}; its log:\n{}", self.text())
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, and its exit status within `max`.
    fn terminate(&mut self, max: Duration) -> Result<std::process::ExitStatus> {
        // `ip netns exec` execs umlbr: the child's pid is umlbr's.
        // SAFETY: kill(2) of our own child.
        if unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) } != 0 {
            bail!("kill: {}", std::io::Error::last_os_error());
        }
        self.wait(max)
    }

    fn wait(&mut self, max: Duration) -> Result<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < max {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!(
            "watch still running after {max:?}; its log:\n{}",
            self.text()
        )
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Port `port` of `bridge` as `show --json` reports it, without counters
/// and its ifindex (which a re-created interface changes); None if it is
/// no port.
fn port(ns: &Netns, bridge: &str, port: &str) -> Result<Option<Value>> {
    let v: Value = serde_json::from_str(&ns.umlbr_ok(&["show", bridge, "--json"])?)?;
    let ports = v["ports"].as_array().context("show --json: no ports")?;
    Ok(ports
        .iter()
        .find(|p| p["name"].as_str() == Some(port))
        .map(|p| {
            let mut p = p.clone();
            let o = p.as_object_mut().unwrap();
            for k in ["stats", "ifindex", "learned_macs"] {
                o.remove(k);
            }
            p
        }))
}

/// Poll `port` until `want(port)`; the time it took.
fn until(
    ns: &Netns,
    bridge: &str,
    name: &str,
    max: Duration,
    want: impl Fn(&Option<Value>) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let p = port(ns, bridge, name)?;
        if want(&p) {
            return Ok(start.elapsed());
        }
        ensure!(
            start.elapsed() < max,
            "{name} of {bridge} after {max:?}: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The FDB rows of `bridge` for `mac`.
fn fdb_rows(ns: &Netns, bridge: &str, m: &str) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_str(&ns.umlbr_ok(&["fdb", "show", bridge, "--json"])?)?;
    Ok(v.as_array()
        .context("fdb show --json: not an array")?
        .iter()
        .filter(|r| r["mac"].as_str() == Some(m))
        .cloned()
        .collect())
}

fn arp_from(src: Mac, spa: u8) -> Vec<u8> {
    Frame::new(BROADCAST, src)
        .arp_request(Ipv4Addr::new(10, 0, 0, spa), Ipv4Addr::new(10, 0, 0, 99))
        .pad_min()
        .build()
}

/// A broadcast from `from` (source `src`) reaches `to`.
fn switches(from: &mut File, src: Mac, spa: u8, to: &mut File) -> Result<bool> {
    drain(to, Duration::from_millis(50));
    from.write_all(&arp_from(src, spa))?;
    let got = drain(to, Duration::from_millis(200));
    Ok(got
        .iter()
        .any(|f| f.len() >= 42 && f[6..12] == src && f[28..32] == [10, 0, 0, spa]))
}

/// A guest's non-persistent tap goes with the guest: the port is detached
/// within 500 ms with nothing but `watch` running (`show` and `fdb show`
/// read without pruning); made again with the same name it is attached
/// again with the same options, and frames switch. A port detached by
/// hand is not attached again.
#[test]
fn watch_detaches_a_vanished_tap_and_attaches_it_again() -> Result<()> {
    let ns = Netns::without_ipv6("wb-watch")?;
    let _in = InNetns::enter(&ns)?;
    let mut tap0 = open_tap("tap0")?;
    let mut tap1 = open_tap("tap1")?;
    let tap2 = open_tap("tap2")?;
    ns.umlbr_ok(&["up", "br0"])?;
    let opts0 = [
        "--isolated",
        "--flood-limit",
        "50",
        "--max-learned",
        "7",
        "--lock",
        "--mac",
        G0,
        "--ip",
        "10.0.0.1",
    ];
    let mut a = vec!["attach", "tap0", "--bridge", "br0"];
    a.extend(opts0);
    ns.umlbr_ok(&a)?;
    ns.umlbr_ok(&["attach", "tap1", "--bridge", "br0", "--flood-limit", "0"])?;
    ns.umlbr_ok(&["attach", "tap2", "--bridge", "br0"])?;
    let before = port(&ns, "br0", "tap0")?.context("tap0 is no port")?;
    // What watch attaches again from: root's alone.
    let ino = ns.sh("stat -L -c %i /proc/self/ns/net")?;
    let file = format!("/run/umlbr/net{}-br0.ports", ino.trim());
    let modes = ns.sh(&format!("stat -c %a /run/umlbr {file}"))?;
    ensure!(
        modes.split_whitespace().collect::<Vec<_>>() == ["700", "600"],
        "modes of /run/umlbr and {file}: {modes:?}"
    );
    let text = std::fs::read_to_string(&file)?;
    ensure!(
        text.lines()
            .any(|l| l.starts_with("tap0 ") && l.contains("--lock")),
        "{file}: {text}"
    );
    let mut watch = Watch::start(&ns, &["br0"])?;

    ensure!(
        switches(&mut tap0, mac(G0), 1, &mut tap1)?,
        "tap0 -> tap1 before"
    );
    ensure!(
        switches(&mut tap1, mac(G1), 2, &mut tap0)?,
        "tap1 -> tap0 before"
    );
    ensure!(!fdb_rows(&ns, "br0", G1)?.is_empty(), "G1 not learned");

    // The guest goes, its tap with it.
    drop(tap0);
    let took = until(&ns, "br0", "tap0", Duration::from_secs(3), |p| p.is_none())?;
    println!("tap0 deleted: detached after {took:?}");
    ensure!(
        took < Duration::from_millis(500),
        "detached only after {took:?}"
    );
    ensure!(
        fdb_rows(&ns, "br0", G0)?.is_empty(),
        "tap0's static entry {G0} outlived it: {:?}",
        fdb_rows(&ns, "br0", G0)?
    );
    watch.wait_for("tap0 vanished: detached", Duration::from_secs(1))?;

    // The guest restarts: the same tap name, a new interface.
    let mut tap0 = open_tap("tap0")?;
    let took = until(&ns, "br0", "tap0", Duration::from_secs(3), |p| p.is_some())?;
    println!("tap0 made again: attached after {took:?}");
    let after = port(&ns, "br0", "tap0")?.context("tap0 is no port")?;
    ensure!(
        after == before,
        "tap0's options changed:\n before {before}\n after  {after}"
    );
    watch.wait_for("tap0 is back: attached again", Duration::from_secs(1))?;
    ensure!(
        switches(&mut tap0, mac(G0), 1, &mut tap1)?,
        "tap0 -> tap1 after"
    );
    ensure!(
        switches(&mut tap1, mac(G1), 2, &mut tap0)?,
        "tap1 -> tap0 after"
    );
    // Still locked: another source MAC does not pass.
    ensure!(
        !switches(&mut tap0, mac("02:00:00:00:00:66"), 1, &mut tap1)?,
        "tap0 is no longer locked"
    );

    // Detached by hand, then gone and back: not attached again.
    ns.umlbr_ok(&["detach", "tap2"])?;
    drop(tap2);
    std::thread::sleep(Duration::from_millis(100));
    let _tap2 = open_tap("tap2")?;
    std::thread::sleep(Duration::from_millis(2500));
    ensure!(
        port(&ns, "br0", "tap2")?.is_none(),
        "tap2, detached by hand, was attached again"
    );
    ensure!(watch.running(), "watch died:\n{}", watch.text());

    // `down` ends a watch of that bridge.
    ns.umlbr_ok(&["down", "br0"])?;
    let st = watch.wait(Duration::from_secs(5))?;
    ensure!(st.success(), "watch after down: {st}\n{}", watch.text());
    watch.wait_for("bridge removed", Duration::from_secs(1))?;
    ensure!(!Path::new(&file).exists(), "down left {file}");
    Ok(())
}

/// The uplink going down and up changes nothing and does not end watch;
/// an uplink deleted and made again is attached again as the uplink;
/// SIGTERM ends watch at once with status 0.
#[test]
fn watch_survives_the_uplink_going_down_and_up() -> Result<()> {
    let ns = Netns::without_ipv6("wb-uplink")?;
    let _in = InNetns::enter(&ns)?;
    let up0 = open_tap("up0")?;
    let mut tap0 = open_tap("tap0")?;
    ns.umlbr_ok(&["up", "br0", "--uplink", "up0"])?;
    ns.umlbr_ok(&["attach", "tap0", "--bridge", "br0"])?;
    let before = port(&ns, "br0", "up0")?.context("up0 is no port")?;
    // Without NAME: every bridge.
    let mut watch = Watch::start(&ns, &[])?;
    for _ in 0..3 {
        ns.sh("ip link set up0 down")?;
        std::thread::sleep(Duration::from_millis(200));
        ns.sh("ip link set up0 up")?;
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(watch.running(), "watch died:\n{}", watch.text());
    ensure!(
        port(&ns, "br0", "up0")?.as_ref() == Some(&before),
        "up0 changed: {:?}",
        port(&ns, "br0", "up0")?
    );

    drop(up0);
    until(&ns, "br0", "up0", Duration::from_secs(3), |p| p.is_none())?;
    let mut up0 = open_tap("up0")?;
    until(&ns, "br0", "up0", Duration::from_secs(3), |p| p.is_some())?;
    let after = port(&ns, "br0", "up0")?.context("up0 is no port")?;
    ensure!(after == before, "up0 before {before}, after {after}");
    ensure!(
        switches(&mut tap0, mac(G0), 1, &mut up0)?,
        "tap0 -> up0 after the uplink came back"
    );

    let start = Instant::now();
    let st = watch.terminate(Duration::from_secs(3))?;
    println!("SIGTERM: watch ended after {:?}", start.elapsed());
    ensure!(st.success(), "watch after SIGTERM: {st}\n{}", watch.text());
    ensure!(
        port(&ns, "br0", "tap0")?.is_some(),
        "watch's end took the bridge's ports"
    );
    ns.umlbr_ok(&["down", "br0"])?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The systemd unit.

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unit_path() -> PathBuf {
    repo().join("contrib/systemd/umlbr@.service")
}

/// `systemd-analyze verify` finds nothing wrong with the unit (installed
/// as umlbr@br0.service, with /usr/sbin/umlbr pointing at the binary
/// under test so that the executables it names exist).
#[test]
fn systemd_unit_verifies() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("umlbr-wb-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let text = std::fs::read_to_string(unit_path())?;
    // The unit names /usr/sbin/umlbr: point it at the binary under test.
    let bin = umlbr_bin();
    let text = text.replace("/usr/sbin/umlbr", bin.to_str().unwrap());
    let unit = dir.join("umlbr@.service");
    std::fs::write(&unit, text)?;
    std::os::unix::fs::symlink(&unit, dir.join("umlbr@br0.service"))?;
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("umlbr@br0.service"))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .context("running systemd-analyze (package systemd)")?;
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    println!("systemd-analyze verify: {}\n{err}", out.status);
    // Lines about the host's other units are not the unit's business.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("umlbr")).collect();
    ensure!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{err}",
        out.status
    );
    Ok(())
}

/// The unit's Exec lines, `%i` replaced by `inst`, each split into words
/// (its leading `-`/`+` prefixes kept out).
fn exec_lines(key: &str, inst: &str) -> Result<Vec<Vec<String>>> {
    let text = std::fs::read_to_string(unit_path())?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|l| {
            l.trim_start_matches(['-', '+', '@', ':', '!'])
                .replace("%i", inst)
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .collect())
}

/// The unit's commands, run as systemd would in a namespace: ExecStartPre
/// makes the bridge and its ports from /etc/umlbr/%i.toml (here a file
/// of the test's), ExecStart watches it
/// (a tap that vanishes is detached), ExecStop removes it and watch ends.
#[test]
fn systemd_unit_commands_run_end_to_end() -> Result<()> {
    let pre = exec_lines("ExecStartPre", "wbr0")?;
    let start = exec_lines("ExecStart", "wbr0")?;
    let stop = exec_lines("ExecStop", "wbr0")?;
    ensure!(
        pre.len() == 1 && start.len() == 1 && stop.len() == 1,
        "the unit has {} ExecStartPre, {} ExecStart, {} ExecStop lines",
        pre.len(),
        start.len(),
        stop.len()
    );
    ensure!(
        pre[0][1..4] == ["up", "wbr0", "--config"] && pre[0][4] == "/etc/umlbr/wbr0.toml",
        "ExecStartPre: {:?}",
        pre[0]
    );
    ensure!(
        start[0][1..] == ["watch", "wbr0"],
        "ExecStart: {:?}",
        start[0]
    );
    ensure!(stop[0][1..] == ["down", "wbr0"], "ExecStop: {:?}", stop[0]);

    let ns = Netns::without_ipv6("wb-unit")?;
    let _in = InNetns::enter(&ns)?;
    let mut tap0 = open_tap("tap0")?;
    let mut tap1 = open_tap("tap1")?;
    let dir = std::env::temp_dir().join(format!("umlbr-wb-etc-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("wbr0.toml");
    std::fs::write(
        &cfg,
        "name = \"wbr0\"\naddresses = [\"10.0.0.254/24\"]\n\n\
         [[port]]\nname = \"tap0\"\n\n[[port]]\nname = \"tap1\"\n",
    )?;
    let mut up_args = pre[0][1..].to_vec();
    up_args[3] = cfg.to_string_lossy().into_owned();
    let up: Vec<&str> = up_args.iter().map(String::as_str).collect();
    ns.umlbr_ok(&up)?;
    let _ = std::fs::remove_dir_all(&dir);
    for t in ["tap0", "tap1"] {
        ensure!(
            port(&ns, "wbr0", t)?.is_some(),
            "the unit's `{}` did not attach {t}",
            up_args.join(" ")
        );
    }
    let start_args: Vec<&str> = start[0][2..].iter().map(String::as_str).collect();
    let mut watch = Watch::start(&ns, &start_args)?;
    ensure!(switches(&mut tap0, mac(G0), 1, &mut tap1)?, "tap0 -> tap1");
    drop(tap0);
    until(&ns, "wbr0", "tap0", Duration::from_secs(2), |p| p.is_none())?;
    let _tap0 = open_tap("tap0")?;
    until(&ns, "wbr0", "tap0", Duration::from_secs(3), |p| p.is_some())?;
    let stop_args: Vec<&str> = stop[0][1..].iter().map(String::as_str).collect();
    ns.umlbr_ok(&stop_args)?;
    let st = watch.wait(Duration::from_secs(5))?;
    ensure!(st.success(), "watch after ExecStop: {st}\n{}", watch.text());
    ensure!(
        ns.umlbr_ok(&["show", "--json"])?.trim() == "[]",
        "a bridge is left"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The ifupdown hook.

fn hook_path() -> PathBuf {
    repo().join("contrib/ifupdown/umlbr")
}

/// Run the hook as ifupdown runs it for stanza `opts` of interface
/// `iface` (run-parts, with IFACE, MODE, PHASE and IF_* set).
fn run_hook(ns: &Netns, iface: &str, mode: &str, phase: &str, opts: &[(&str, &str)]) -> Result<()> {
    let out = hook_output(ns, iface, mode, phase, opts)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "hook {mode}/{phase}: {}\n{err}",
        out.status
    );
    Ok(())
}

fn hook_output(
    ns: &Netns,
    iface: &str,
    mode: &str,
    phase: &str,
    opts: &[(&str, &str)],
) -> Result<std::process::Output> {
    let mut c = ns.cmd(hook_path().to_str().unwrap());
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("UMLBR", umlbr_bin())
        .env("IFACE", iface)
        .env("LOGICAL", iface)
        .env("ADDRFAM", "inet")
        .env("METHOD", "static")
        .env("MODE", mode)
        .env("PHASE", phase)
        .env("VERBOSITY", "1");
    for (k, v) in opts {
        c.env(format!("IF_{}", k.to_uppercase()), v);
    }
    let out = c.output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("hook {mode}/{phase}: {}\n{err}", out.status);
    Ok(out)
}

/// The seed's section D as an interfaces stanza:
///
///   iface br0 inet static
///       address 192.168.2.1/24
///       umlbr_ports wtap0 wtap1
///       umlbr_tap_user nobody
///       umlbr_masquerade up0
///
/// run through the hook phase by phase as ifupdown does (ifupdown's own
/// part, the address, done as it does it): the taps are made, owned by
/// the user, and attached; frames switch between them and a guest's UDP
/// leaves up0 masqueraded; ifdown removes the bridge, the masquerade and
/// the taps.
#[test]
fn ifupdown_hook_runs_a_stanza_end_to_end() -> Result<()> {
    let ns = Netns::without_ipv6("wb-ifup")?;
    let _in = InNetns::enter(&ns)?;
    let mut up0 = open_tap("up0")?;
    ns.sh("ip addr add 10.99.0.1/24 dev up0 && ip link set up0 up && \
         ip neigh replace 10.99.0.2 lladdr 02:00:00:00:99:02 dev up0 nud permanent && \
         ip route add default via 10.99.0.2")?;
    let stanza = [
        ("address", "192.168.2.1/24"),
        ("umlbr_ports", "wtap0 wtap1"),
        ("umlbr_tap_user", "nobody"),
        ("umlbr_masquerade", "up0"),
    ];
    // ifup br0: pre-up, then ifupdown's inet static, then post-up.
    run_hook(&ns, "br0", "start", "pre-up", &stanza)?;
    ns.sh("ip addr add 192.168.2.1/24 dev br0 && ip link set br0 up")?;
    run_hook(&ns, "br0", "start", "post-up", &stanza)?;

    for t in ["wtap0", "wtap1"] {
        ensure!(port(&ns, "br0", t)?.is_some(), "{t} is no port of br0");
        let owner = ns.sh(&format!("cat /sys/class/net/{t}/owner"))?;
        ensure!(
            owner.trim() == "65534",
            "{t} owned by {owner:?}, not nobody"
        );
    }
    let v: Value = serde_json::from_str(&ns.umlbr_ok(&["show", "br0", "--json"])?)?;
    ensure!(v["nat"]["uplink"] == "up0", "no masquerade: {v}");

    let mut g0 = open_tap("wtap0")?;
    let mut g1 = open_tap("wtap1")?;
    ns.sh("ip link set wtap0 up && ip link set wtap1 up")?;
    ensure!(switches(&mut g0, mac(G0), 1, &mut g1)?, "wtap0 -> wtap1");
    let gw = mac(ns.sh("cat /sys/class/net/br0/address")?.trim());
    drain(&mut up0, Duration::from_millis(50));
    let f = Frame::new(gw, mac(G0))
        .udp(
            Ipv4Addr::new(192, 168, 2, 10),
            4000,
            Ipv4Addr::new(10, 99, 0, 2),
            53,
            b"umlbr-wb-hook",
        )
        .pad_min()
        .build();
    g0.write_all(&f)?;
    let out = drain(&mut up0, Duration::from_millis(300));
    let masq = out.iter().any(|f| {
        f.len() > 34
            && f[12..14] == [0x08, 0x00]
            && f[26..30] == [10, 99, 0, 1]
            && f.windows(13).any(|w| w == b"umlbr-wb-hook")
    });
    ensure!(masq, "no masqueraded UDP out of up0: {} frames", out.len());
    drop((g0, g1));

    // ifdown br0: ifupdown takes the address and the link down, then
    // post-down.
    run_hook(&ns, "br0", "stop", "pre-down", &stanza)?;
    ns.sh("ip addr flush dev br0 && ip link set br0 down")?;
    run_hook(&ns, "br0", "stop", "post-down", &stanza)?;
    ensure!(
        ns.umlbr_ok(&["show", "--json"])?.trim() == "[]",
        "a bridge is left"
    );
    let links = ns.sh("ip -o link show")?;
    for gone in ["br0", "wtap0", "wtap1"] {
        ensure!(
            !links.contains(&format!(" {gone}:")) && !links.contains(&format!(" {gone}@")),
            "{gone} is left: {links}"
        );
    }
    let nft = ns.sh("nft list tables")?;
    ensure!(nft.trim().is_empty(), "nftables left: {nft}");
    // A stanza without umlbr_* options is not the hook's.
    run_hook(
        &ns,
        "eth9",
        "start",
        "pre-up",
        &[("address", "10.0.0.1/24")],
    )?;

    // A pre-up failing half-way (an attach) fails ifup and leaves
    // nothing: ifupdown runs no post-down then.
    let bad = [
        ("umlbr_ports", "wtap0 wtap1"),
        ("umlbr_port_options", "--max-learned lots"),
    ];
    let out = hook_output(&ns, "br0", "start", "pre-up", &bad)?;
    ensure!(
        !out.status.success(),
        "a pre-up with a bad port option succeeded"
    );
    let links = ns.sh("ip -o link show")?;
    for gone in ["br0", "wtap0", "wtap1"] {
        ensure!(
            !links.contains(&format!(" {gone}:")) && !links.contains(&format!(" {gone}@")),
            "a failed pre-up left {gone}: {links}"
        );
    }
    Ok(())
}

/// The same stanza through ifupdown itself (`ifup`/`ifdown -i FILE
/// --state-dir DIR` in a namespace). Rather than install the hook in the
/// host's /etc/network/if-*.d, the stanza runs it from its own pre-up,
/// up and post-down lines, which ifupdown runs with the same environment
/// (IFACE, MODE, PHASE, IF_*) as the hook directories.
#[test]
fn ifup_and_ifdown_run_the_hook() -> Result<()> {
    let ifup = Path::new("/sbin/ifup");
    ensure!(
        ifup.exists(),
        "no /sbin/ifup: `cargo xtask setup` installs ifupdown"
    );
    let ns = Netns::without_ipv6("wb-ifupdown")?;
    let _in = InNetns::enter(&ns)?;
    let mut up0 = open_tap("up0")?;
    ns.sh("ip addr add 10.99.0.1/24 dev up0 && ip link set up0 up && \
         ip neigh replace 10.99.0.2 lladdr 02:00:00:00:99:02 dev up0 nud permanent && \
         ip route add default via 10.99.0.2")?;
    let dir = std::env::temp_dir().join(format!("umlbr-wb-ifupdown-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("state"))?;
    let hook = format!("UMLBR={} {}", umlbr_bin().display(), hook_path().display());
    let file = dir.join("interfaces");
    std::fs::write(
        &file,
        format!(
            "iface br0 inet static\n\
             \taddress 192.168.2.1/24\n\
             \tumlbr_ports wtap0 wtap1\n\
             \tumlbr_masquerade up0\n\
             \tpre-up {hook}\n\
             \tup {hook}\n\
             \tpost-down {hook}\n"
        ),
    )?;
    let ifupdown = |cmd: &str| -> Result<()> {
        let out = ns.sh_output(&format!(
            "{cmd} -v -i {} --state-dir {} br0",
            file.display(),
            dir.join("state").display()
        ))?;
        println!(
            "{cmd}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(out.status.success(), "{cmd} br0 failed");
        Ok(())
    };
    let result = (|| -> Result<()> {
        ifupdown("ifup")?;
        ensure!(port(&ns, "br0", "wtap0")?.is_some(), "wtap0 is no port");
        let v: Value = serde_json::from_str(&ns.umlbr_ok(&["show", "br0", "--json"])?)?;
        ensure!(v["nat"]["uplink"] == "up0", "no masquerade: {v}");
        let addr = ns.sh("ip -o -4 addr show dev br0")?;
        ensure!(addr.contains("192.168.2.1/24"), "br0: {addr}");
        let mut g0 = open_tap("wtap0")?;
        let mut g1 = open_tap("wtap1")?;
        ns.sh("ip link set wtap0 up && ip link set wtap1 up")?;
        ensure!(switches(&mut g0, mac(G0), 1, &mut g1)?, "wtap0 -> wtap1");
        drain(&mut up0, Duration::from_millis(50));
        drop((g0, g1));
        ifupdown("ifdown")?;
        ensure!(
            ns.umlbr_ok(&["show", "--json"])?.trim() == "[]",
            "a bridge is left"
        );
        let links = ns.sh("ip -o link show")?;
        ensure!(
            !links.contains(" wtap0:") && !links.contains(" br0@"),
            "left: {links}"
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
