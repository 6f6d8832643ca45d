//! The config file: `umlbr up --config FILE`, `umlbr apply FILE`,
//! `umlbr config NAME`, and the examples/ files.
//!
//! Every test runs the umlbr binary (`cargo build -p umlbr` first, or set
//! UMLBR_BIN) in fresh network namespaces of its own (tag `cf`). Needs
//! root.
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use umlbr_tests::netns::Netns;

/// Write `text` to a file of the test's own, named after `ns`.
fn write(ns: &Netns, name: &str, text: &str) -> Result<PathBuf> {
    let p = std::env::temp_dir().join(format!("{}-{name}", ns.name));
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(ns: &Netns, args: &[&str]) -> Result<String> {
    ns.umlbr_ok(args)
}

fn json(ns: &Netns, args: &[&str]) -> Result<Value> {
    let out = ok(ns, args)?;
    serde_json::from_str(&out).with_context(|| format!("umlbr {args:?}: not JSON: {out:?}"))
}

/// The bridge as `show --json` has it, without counters; its static FDB
/// entries; the interfaces by name.
fn state(ns: &Netns) -> Result<(Value, Value, String)> {
    let mut show = json(ns, &["show", "--json"])?;
    for b in show.as_array_mut().context("show: not an array")? {
        let b = b.as_object_mut().context("bridge")?;
        b.remove("fdb_entries");
        for p in b["ports"].as_array_mut().context("ports")? {
            let p = p.as_object_mut().context("port")?;
            p.remove("stats");
            p.remove("learned_macs");
        }
    }
    let mut fdb = json(ns, &["fdb", "show", "--json"])?;
    fdb.as_array_mut()
        .context("fdb: not an array")?
        .retain(|r| r["static"] == Value::Bool(true));
    let links = ns.sh("ip -o link show | cut -d: -f2 | cut -d@ -f1 | sort")?;
    Ok((show, fdb, links))
}

/// Port `name` of the only bridge, from `show --json`.
fn port(ns: &Netns, name: &str) -> Result<Value> {
    let show = json(ns, &["show", "--json"])?;
    show[0]["ports"]
        .as_array()
        .context("ports")?
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .with_context(|| format!("no port {name} in {show}"))
}

fn port_names(ns: &Netns) -> Result<Vec<String>> {
    let show = json(ns, &["show", "--json"])?;
    let mut v: Vec<String> = show[0]["ports"]
        .as_array()
        .context("ports")?
        .iter()
        .filter(|p| p["kind"] != "host")
        .map(|p| p["name"].as_str().unwrap_or("").to_string())
        .collect();
    v.sort();
    Ok(v)
}

/// The FDB as (mac, port, static) triples.
fn fdb(ns: &Netns) -> Result<Vec<(String, String, bool)>> {
    let rows = json(ns, &["fdb", "show", "--json"])?;
    Ok(rows
        .as_array()
        .context("fdb")?
        .iter()
        .map(|r| {
            (
                r["mac"].as_str().unwrap_or("").to_string(),
                r["port"].as_str().unwrap_or("").to_string(),
                r["static"] == Value::Bool(true),
            )
        })
        .collect())
}

/// `umlbr config br0` applied again: the plan is empty and nothing
/// changes. Returns the printed config.
fn round_trip(ns: &Netns, tag: &str) -> Result<String> {
    let printed = ok(ns, &["config", "br0"])?;
    let f = write(ns, tag, &printed)?;
    let plan = ok(ns, &["apply", "--dry-run", s(&f)])?;
    ensure!(
        plan.is_empty(),
        "apply --dry-run of `config br0` plans changes:\n{plan}\nconfig:\n{printed}"
    );
    let before = state(ns)?;
    ok(ns, &["apply", s(&f)])?;
    ensure!(
        state(ns)? == before,
        "apply of `config br0` changed the bridge"
    );
    let again = ok(ns, &["config", "br0"])?;
    ensure!(again == printed, "config printed\n{printed}\nthen\n{again}");
    Ok(printed)
}

/// A one-line error naming every needle, exit status `code`.
fn fails(ns: &Netns, args: &[&str], code: i32, needles: &[&str]) -> Result<String> {
    let out = ns.umlbr(args)?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.code() == Some(code),
        "umlbr {args:?}: exit {} (expected {code}), stderr {err:?}",
        out.status
    );
    ensure!(out.stdout.is_empty(), "umlbr {args:?}: printed on stdout");
    ensure!(
        err.starts_with("umlbr: error: ") && err.matches('\n').count() == 1,
        "umlbr {args:?}: not one error line: {err:?}"
    );
    for n in needles {
        ensure!(
            err.contains(n),
            "umlbr {args:?}: {err:?} does not name {n:?}"
        );
    }
    Ok(err)
}

/// A wrong file: one line naming the file, line, column and key, from
/// `apply` and from `up --config`, and nothing made.
#[test]
fn a_wrong_file_names_line_column_and_key() -> Result<()> {
    let ns = Netns::without_ipv6("cf-parse")?;
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "cidr",
            "name = \"br0\"\naddresses = [\"192.168.2.1/33\"]\n",
            &[":2:13: addresses:", "192.168.2.1/33"],
        ),
        (
            "unknown",
            "name = \"br0\"\n[[port]]\nname = \"tap0\"\nisolate = true\n",
            &[":4:1: port.isolate:", "unknown field `isolate`"],
        ),
        (
            "aging",
            "name = \"br0\"\naging = 0\n",
            &[":2:9: aging:", "0 is not in 1..=1000000"],
        ),
        (
            "mac",
            "name = \"br0\"\n[[port]]\nname = \"tap0\"\nlock = true\nmacs = [\"02:00:00:00:00\"]\n",
            &[":5:8: port.macs:", "02:00:00:00:00"],
        ),
        (
            "timeout",
            "name = \"br0\"\naddresses = [\"10.0.0.1/24\"]\n[masquerade]\nuplink = \"eth0\"\n\
             timeouts = { udp = 30, tcp_sometimes = 5 }\n",
            &[":5:", "masquerade.timeouts:", "tcp_sometimes=5"],
        ),
        ("syntax", "name = br0\n", &[":1:8: name:"]),
        (
            "missing",
            "addresses = []\n",
            &[":1:1:", "missing field `name`"],
        ),
        (
            "masquerade without an address",
            "name = \"br0\"\n[masquerade]\nuplink = \"eth0\"\n",
            &[": masquerade: needs an IPv4 address"],
        ),
        (
            "uplink and masquerade",
            "name = \"br0\"\naddresses = [\"10.0.0.1/24\"]\nuplink = \"eth1\"\n\
             [masquerade]\nuplink = \"eth0\"\n",
            &[": uplink: conflicts with [masquerade]"],
        ),
        (
            "lock without macs",
            "name = \"br0\"\n[[port]]\nname = \"tap0\"\nlock = true\n",
            &[": port[0].lock: needs `macs`"],
        ),
        (
            "a port twice",
            "name = \"br0\"\n[[port]]\nname = \"tap0\"\n[[port]]\nname = \"tap0\"\n",
            &[": port[1].name: tap0 is named twice"],
        ),
        (
            "fdb on no port",
            "name = \"br0\"\n[[fdb]]\nmac = \"02:00:00:00:00:01\"\nport = \"tap9\"\n",
            &[": fdb[0].port: tap9"],
        ),
    ];
    let mut bad = Vec::new();
    for (tag, text, needles) in cases {
        let f = write(&ns, &tag.replace(' ', "-"), text)?;
        let mut n = vec![s(&f)];
        n.extend_from_slice(needles);
        for args in [vec!["apply", s(&f)], vec!["up", "--config", s(&f)]] {
            if let Err(e) = fails(&ns, &args, 1, &n) {
                bad.push(format!("{tag}: {e:#}"));
            }
        }
        let links = ns.sh("ip -o link show | wc -l")?;
        if links.trim() != "1" {
            bad.push(format!("{tag}: left interfaces: {}", ns.sh("ip -o link")?));
        }
    }
    // --config and the flags it would contradict: a usage error.
    let f = write(&ns, "good", "name = \"br0\"\n")?;
    for args in [vec!["up", "--config", s(&f), "--aging", "5"]] {
        if let Err(e) = fails(&ns, &args, 2, &["--config"]) {
            bad.push(format!("{args:?}: {e:#}"));
        }
    }
    // A NAME next to --config (as umlbr@.service passes its instance)
    // must be the file's.
    if let Err(e) = fails(
        &ns,
        &["up", "br1", "--config", s(&f)],
        1,
        &["describes bridge br0", "not br1"],
    ) {
        bad.push(format!("up br1 --config (a br0 file): {e:#}"));
    }
    if let Err(e) = fails(&ns, &["apply", s(&f)], 1, &["bridge br0 is not up"]) {
        bad.push(format!("apply without a bridge: {e:#}"));
    }
    if !bad.is_empty() {
        bail!("{} failures:\n{}", bad.len(), bad.join("\n"));
    }
    Ok(())
}

const FIRST: &str = r#"
name = "br0"
addresses = ["192.168.7.1/24"]
aging = 120

[[port]]
name = "tap0"
[port.tap]
user = "nobody"

[[port]]
name = "tap1"
isolated = true
flood_limit = 50
[port.tap]

[[port]]
name = "tapx"
max_learned = 8

[[port]]
name = "v0"

[[fdb]]
mac = "02:00:00:00:00:aa"
port = "tap0"

[[fdb]]
mac = "02:00:00:00:00:bb"
port = "br0"
"#;

const SECOND: &str = r#"
name = "br0"
addresses = ["192.168.7.1/24"]
aging = 60

[[port]]
name = "tap0"
flood_limit = 20
[port.tap]
user = "nobody"

[[port]]
name = "v0"
isolated = true

[[port]]
name = "tap2"
tap = { vnet_hdr = true }

[[fdb]]
mac = "02:00:00:00:00:bb"
port = "br0"

[[fdb]]
mac = "02:00:00:00:00:cc"
port = "tap2"
"#;

/// `up --config` makes what the file says; `config` prints it back and
/// applying that changes nothing; `apply` of an edited file adds,
/// removes and changes ports and entries by the narrowest changes, and
/// leaves the rest (a learned entry, ifindexes) alone; what cannot
/// change in place is refused, naming the key.
#[test]
fn up_config_apply_and_round_trip() -> Result<()> {
    let ns = Netns::without_ipv6("cf-apply")?;
    ns.sh("ip link add v0 type veth peer name v0p && ip link set v0p up")?;
    ok(&ns, &["tap", "add", "tapx"])?;
    let first = write(&ns, "first.toml", FIRST)?;
    let out = ns.umlbr(&["up", "--config", s(&first)])?;
    ensure!(
        out.status.success(),
        "up --config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(port_names(&ns)? == ["tap0", "tap1", "tapx", "v0"]);
    let t1 = port(&ns, "tap1")?;
    ensure!(t1["isolated"] == true && t1["flood_limit"] == 50, "{t1}");
    ensure!(port(&ns, "tapx")?["max_learned"] == 8);
    ensure!(json(&ns, &["show", "br0", "--json"])?["aging_secs"] == 120);
    ensure!(ns.sh("cat /sys/class/net/tap0/owner")?.trim() == "65534");
    let statics: Vec<_> = fdb(&ns)?.into_iter().filter(|e| e.2).collect();
    for want in [("02:00:00:00:00:aa", "tap0"), ("02:00:00:00:00:bb", "br0")] {
        ensure!(
            statics.iter().any(|e| e.0 == want.0 && e.1 == want.1),
            "no static {want:?} in {statics:?}"
        );
    }
    let printed = round_trip(&ns, "rt1.toml")?;
    // The taps the config made carry [port.tap]; the one made by hand not.
    ensure!(printed.matches("[port.tap]").count() == 2, "{printed}");
    // A learned entry on an untouched port, and the ports' ifindexes.
    ok(&ns, &["fdb", "add", "02:00:00:00:00:01", "tap0"])?;
    let idx = |n: &str| -> Result<Value> { Ok(port(&ns, n)?["ifindex"].clone()) };
    let tap0_idx = idx("tap0")?;

    let second = write(&ns, "second.toml", SECOND)?;
    let before = state(&ns)?;
    let plan = ok(&ns, &["apply", "--dry-run", s(&second)])?;
    ensure!(state(&ns)? == before, "--dry-run changed the bridge");
    let want = [
        "set aging to 60 s",
        "detach tap1 and delete the tap",
        "detach tapx\n",
        "set tap0's max_learned to 256, flood_limit to 20",
        "re-attach v0 with new options",
        "create tap tap2",
        "attach tap2",
        "remove static FDB entry 02:00:00:00:00:aa",
        "add static FDB entry 02:00:00:00:00:cc -> tap2",
    ];
    for w in want {
        ensure!(plan.contains(w), "plan lacks {w:?}:\n{plan}");
    }
    ensure!(plan.lines().count() == want.len(), "plan:\n{plan}");
    ok(&ns, &["apply", s(&second)])?;
    ensure!(port_names(&ns)? == ["tap0", "tap2", "v0"]);
    ensure!(
        ns.sh_output("ip link show tap1")?.status.code() != Some(0),
        "tap1, made by the config, was not deleted"
    );
    ns.sh("ip link show tapx")
        .context("tapx, made by hand, was deleted")?;
    ensure!(port(&ns, "v0")?["isolated"] == true);
    ensure!(port(&ns, "tap0")?["flood_limit"] == 20);
    ensure!(idx("tap0")? == tap0_idx);
    let entries = fdb(&ns)?;
    ensure!(
        entries.contains(&("02:00:00:00:00:01".into(), "tap0".into(), false)),
        "tap0's learned entry is gone: {entries:?}"
    );
    ensure!(!entries.iter().any(|e| e.0 == "02:00:00:00:00:aa"));
    ensure!(entries.contains(&("02:00:00:00:00:cc".into(), "tap2".into(), true)));
    let flags = ns.sh("cat /sys/class/net/tap2/tun_flags")?;
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)?;
    ensure!(flags & 0x4000 != 0, "tap2 has no vnet headers: {flags:#x}");
    ensure!(json(&ns, &["show", "br0", "--json"])?["aging_secs"] == 60);
    round_trip(&ns, "rt2.toml")?;

    // What cannot change in place: refused, naming the key, nothing done.
    let before = state(&ns)?;
    let moved = write(
        &ns,
        "moved.toml",
        &SECOND.replace("192.168.7.1/24", "192.168.8.1/24"),
    )?;
    fails(
        &ns,
        &["apply", s(&moved)],
        1,
        &["addresses: cannot change in place", "192.168.7.1/24"],
    )?;
    ensure!(state(&ns)? == before, "a refused apply changed the bridge");
    ok(&ns, &["down", "br0"])?;
    // The config made tap0 and tap2; `down` detaches, the taps stay.
    ok(&ns, &["tap", "del", "tap0"])?;
    ok(&ns, &["tap", "del", "tap2"])?;
    ok(&ns, &["tap", "del", "tapx"])?;
    Ok(())
}

/// The TCP client and server of the flow test: the client sends a line
/// every 10 ms and reads it back, `n` times, on one connection.
const ECHO: &str = r#"
import socket, sys, time
if sys.argv[1] == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.77.0.2", 7777)); s.listen(1)
    print("listening", flush=True)
    c, _ = s.accept(); f = c.makefile("rwb")
    for line in f:
        f.write(line); f.flush()
else:
    n = int(sys.argv[2])
    c = socket.create_connection(("10.77.0.2", 7777), timeout=2); f = c.makefile("rwb")
    worst = 0.0
    for i in range(n):
        t = time.monotonic()
        f.write(b"%d\n" % i); f.flush()
        if f.readline() != b"%d\n" % i:
            sys.exit("bad echo at %d" % i)
        worst = max(worst, time.monotonic() - t)
        time.sleep(0.01)
    print("ok %d worst %.3f" % (n, worst), flush=True)
"#;

/// A TCP connection between two guests (namespaces behind veth ports)
/// keeps running, every message echoed, through an `apply` that adds a
/// port (a tap it creates) and an entry; the guests' ports keep their
/// counters and their learned MACs.
#[test]
fn a_flow_survives_apply() -> Result<()> {
    let ns = Netns::without_ipv6("cf-flow")?;
    let g1 = Netns::without_ipv6("cf-g1")?;
    let g2 = Netns::without_ipv6("cf-g2")?;
    for (i, g) in [(1, &g1), (2, &g2)] {
        ns.sh(&format!(
            "ip link add p{i} type veth peer name e{i} netns {}",
            g.name
        ))?;
        // GRO: the guest's end takes frames redirected by XDP.
        g.sh(&format!(
            "ip addr add 10.77.0.{i}/24 dev e{i} && ip link set e{i} up && \
             ethtool -K e{i} gro on"
        ))?;
    }
    let base = "name = \"br0\"\n[[port]]\nname = \"p1\"\n[[port]]\nname = \"p2\"\n";
    let f = write(&ns, "flow.toml", base)?;
    ok(&ns, &["up", "--config", s(&f)])?;
    let script = write(&ns, "echo.py", ECHO)?;
    let log = std::env::temp_dir().join(format!("{}-server.log", ns.name));
    let mut server = g2.spawn_logged(&["/usr/bin/python3", s(&script), "server"], &log)?;
    let r = (|| -> Result<()> {
        for _ in 0..50 {
            if std::fs::read_to_string(&log)?.contains("listening") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let client = g1
            .cmd("/usr/bin/python3")
            .args([s(&script), "client", "300"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(800));
        let p1 = port(&ns, "p1")?;
        let e1_tx = || -> Result<u64> {
            Ok(g1
                .sh("cat /sys/class/net/e1/statistics/tx_packets")?
                .trim()
                .parse()?)
        };
        let e1_before = e1_tx()?;
        let macs_before = fdb(&ns)?;
        let grown = base.to_string()
            + "[[port]]\nname = \"tap3\"\n[port.tap]\n\
               [[fdb]]\nmac = \"02:00:00:00:00:33\"\nport = \"tap3\"\n";
        let f2 = write(&ns, "flow2.toml", &grown)?;
        let applied = ns.umlbr(&["apply", s(&f2)])?;
        let out = client.wait_with_output()?;
        ensure!(
            applied.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&applied.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && stdout.starts_with("ok 300"),
            "the connection broke: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("flow through apply: {}", stdout.trim());
        // A lost segment would stall the echo for a retransmission
        // timeout (200 ms at least); a second of it is a broken path.
        let worst: f64 = stdout
            .split_whitespace()
            .nth(3)
            .and_then(|w| w.parse().ok())
            .context("no worst round trip")?;
        ensure!(worst < 1.0, "an echo took {worst} s through apply");
        ensure!(port_names(&ns)? == ["p1", "p2", "tap3"]);
        let after = port(&ns, "p1")?;
        ensure!(after["ifindex"] == p1["ifindex"]);
        // Every frame g1 sent since is on top of p1's count: a count
        // that restarted would fall short.
        let sent = e1_tx()? - e1_before;
        let rx = |v: &Value| v["stats"]["rx_packets"].as_u64().unwrap_or(0);
        ensure!(
            rx(&p1) > 0 && rx(&after) >= rx(&p1) + sent,
            "p1's counters restarted: {} then {} ({sent} frames sent since)",
            rx(&p1),
            rx(&after)
        );
        // Not one segment was lost: g1's TCP retransmitted none.
        let snmp = g1.sh("cat /proc/net/snmp")?;
        let tcp: Vec<Vec<&str>> = snmp
            .lines()
            .filter(|l| l.starts_with("Tcp:"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        ensure!(tcp.len() == 2, "no Tcp lines in {snmp}");
        let col = tcp[0]
            .iter()
            .position(|h| *h == "RetransSegs")
            .context("no RetransSegs")?;
        ensure!(
            tcp[1][col] == "0",
            "g1 retransmitted {} segments through apply",
            tcp[1][col]
        );
        let learned: Vec<_> = macs_before.iter().filter(|e| !e.2).collect();
        ensure!(
            learned.len() >= 2,
            "guests' MACs not learned: {macs_before:?}"
        );
        let now = fdb(&ns)?;
        for e in learned {
            ensure!(now.contains(e), "{e:?} lost: {now:?}");
        }
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    r?;
    ok(&ns, &["down", "br0"])?;
    Ok(())
}

/// examples/: both files parse, and work end to end with eth0 a veth to
/// a LAN namespace and giorgos the user nobody: the bridge is up as the
/// seed's section says, `config` round-trips, and changing the
/// masquerade is refused naming the key.
#[test]
fn the_examples_work() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (file, masq) in [("lan.toml", false), ("masquerade.toml", true)] {
        let text = std::fs::read_to_string(dir.join(file))?;
        let ns = Netns::without_ipv6("cf-ex")?;
        let lan = Netns::without_ipv6("cf-lan")?;
        ns.sh(&format!(
            "ip link add eth0 type veth peer name lan0 netns {} && \
             ip addr add 192.168.1.200/24 dev eth0 && ip link set eth0 up",
            lan.name
        ))?;
        lan.sh("ip addr add 192.168.1.1/24 dev lan0 && ip link set lan0 up")?;
        let f = write(&ns, file, &text.replace("giorgos", "nobody"))?;
        ok(&ns, &["up", "--config", s(&f)]).with_context(|| format!("examples/{file}"))?;
        let show = json(&ns, &["show", "br0", "--json"])?;
        ensure!(
            port_names(&ns)?
                == if masq {
                    vec!["tap0"]
                } else {
                    vec!["eth0", "tap0"]
                }
        );
        ensure!(ns.sh("cat /sys/class/net/tap0/owner")?.trim() == "65534");
        if masq {
            ensure!(show["nat"]["uplink"] == "eth0", "{show}");
            ensure!(show["nat"]["address"] == "192.168.1.200", "{show}");
            ensure!(
                ns.sh("ip -4 -o addr show dev br0")?
                    .contains("192.168.2.1/24")
            );
            let changed = write(
                &ns,
                "masq2.toml",
                &text.replace("giorgos", "nobody").replace(
                    "uplink = \"eth0\"",
                    "uplink = \"eth0\"\nports = \"2000-2999\"",
                ),
            )?;
            fails(
                &ns,
                &["apply", s(&changed)],
                1,
                &["masquerade.ports: cannot change in place"],
            )?;
        } else {
            ensure!(port(&ns, "eth0")?["kind"] == "uplink");
            ensure!(
                ns.sh("ip -4 -o addr show dev eth0")?
                    .contains("192.168.1.200/24")
            );
        }
        round_trip(&ns, &format!("rt-{file}"))?;
        ok(&ns, &["down", "br0"])?;
        ok(&ns, &["tap", "del", "tap0"])?;
    }
    Ok(())
}

/// An `up --config` that fails half-way (a port that does not exist,
/// after a tap it created) names the culprit and leaves nothing: no
/// bridge, no tap.
#[test]
fn a_failed_up_config_leaves_nothing() -> Result<()> {
    let ns = Netns::without_ipv6("cf-fail")?;
    let f = write(
        &ns,
        "fail.toml",
        "name = \"br0\"\naddresses = [\"192.168.7.1/24\"]\n\
         [[port]]\nname = \"tap0\"\n[port.tap]\n\
         [[port]]\nname = \"nosuch0\"\n",
    )?;
    fails(
        &ns,
        &["up", "--config", s(&f)],
        1,
        &["\"nosuch0\"", "does not exist"],
    )?;
    let links = ns.sh("ip -o link show | cut -d: -f2")?;
    ensure!(links.trim() == "lo", "left: {links}");
    ensure!(
        ns.umlbr_ok(&["show", "--json"])?.trim() == "[]",
        "a bridge is left"
    );
    Ok(())
}
