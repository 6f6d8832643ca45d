//! What umlbr tells an operator's tools: `umlbr metrics` checked by
//! Prometheus' own `promtool check metrics` on a bridge with traffic,
//! drops and a masquerade; `metrics --listen` scraped with curl while
//! counters move; `stats --watch --json` rates; shell completions and
//! man pages (bash -n, groff warnings).
//!
//! Root for all but `completions_and_man_pages`; needs promtool (Debian's
//! prometheus package, `cargo xtask setup`), curl and groff.
use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use umlbr_tests::{
    netns::{InNetns, Netns, open_tap},
    umlbr_bin,
    wire::{Frame, Mac, mac},
};

const GUEST: &str = "02:00:00:00:00:10";
const UPLINK_MAC: &str = "02:00:00:00:01:01";
const LAN_PEER_MAC: &str = "02:00:00:00:99:02";
/// A source MAC no bridge forwards from (multicast): dropped as invalid.
const MULTICAST_SRC: Mac = [0x03, 0, 0, 0, 0, 0x10];

/// Guests behind a masquerade out of up0, as tests/attack.rs's lab: tap0
/// is the guest's port, up0 (a tap too) the uplink, the LAN's router
/// 10.99.0.2 resolved statically.
/// Fields drop in order: the taps, then this thread back home, then the
/// namespace.
struct Lab {
    tap0: File,
    _up0: File,
    gw: Mac,
    _in: InNetns,
    ns: Netns,
}

impl Lab {
    fn new(tag: &str) -> Result<Lab> {
        let ns = Netns::without_ipv6(tag)?;
        let _in = InNetns::enter(&ns)?;
        let tap0 = open_tap("tap0")?;
        let _up0 = open_tap("up0")?;
        ns.sh(&format!(
            "ip link set up0 address {UPLINK_MAC} && ip addr add 10.99.0.1/24 dev up0 && \
             ip link set up0 up && ip link set tap0 up && \
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
        ns.umlbr_ok(&["attach", "tap0", "--bridge", "br0"])?;
        let gw = mac(ns.sh("cat /sys/class/net/br0/address")?.trim());
        Ok(Lab {
            tap0,
            _up0,
            gw,
            _in,
            ns,
        })
    }

    /// `n` datagrams from the guest to 10.99.0.2:5000 (masqueraded).
    fn send_out(&mut self, n: usize) -> Result<()> {
        let f = Frame::new(self.gw, mac(GUEST))
            .udp(
                Ipv4Addr::new(192, 168, 2, 10),
                4000,
                Ipv4Addr::new(10, 99, 0, 2),
                5000,
                b"metrics",
            )
            .pad_min()
            .build();
        for _ in 0..n {
            self.tap0.write_all(&f)?;
        }
        Ok(())
    }

    /// `n` frames from a multicast source MAC (dropped: invalid) and one
    /// from the host's own MAC (dropped: spoofed).
    fn send_drops(&mut self, n: usize) -> Result<()> {
        let bad = |src: Mac| {
            Frame::new(self.gw, src)
                .udp(
                    Ipv4Addr::new(192, 168, 2, 10),
                    4000,
                    Ipv4Addr::new(192, 168, 2, 1),
                    5000,
                    b"bad",
                )
                .pad_min()
                .build()
        };
        for _ in 0..n {
            self.tap0.write_all(&bad(MULTICAST_SRC))?;
        }
        self.tap0.write_all(&bad(self.gw))?;
        Ok(())
    }
}

/// The samples of a text exposition: `name{labels}` as written, to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn sample(s: &BTreeMap<String, f64>, key: &str) -> Result<f64> {
    s.get(key)
        .copied()
        .with_context(|| format!("no sample {key}; have:\n{:#?}", s.keys()))
}

/// `promtool check metrics` on `text`: it must exit 0 and say nothing.
fn promtool(text: &str) -> Result<()> {
    let mut c = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian's prometheus package: `cargo xtask setup`)")?;
    c.stdin.take().unwrap().write_all(text.as_bytes())?;
    let out = c.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}): {said}\non:\n{text}",
        out.status
    );
    Ok(())
}

#[test]
fn metrics_pass_promtool_and_match_stats() -> Result<()> {
    let mut lab = Lab::new("mt-prom")?;
    // A port whose name needs escaping in a label value.
    let odd = r#"mt"q\1"#;
    lab.ns.sh(&format!(
        "ip link add '{odd}' type veth peer name mtq1p && ip link set '{odd}' up && \
         ip link set mtq1p up"
    ))?;
    lab.ns.umlbr_ok(&["attach", odd, "--bridge", "br0"])?;
    lab.send_out(5)?;
    lab.send_drops(3)?;
    std::thread::sleep(Duration::from_millis(300));

    let text = lab.ns.umlbr_ok(&["metrics", "br0"])?;
    promtool(&text)?;
    let all = lab.ns.umlbr_ok(&["metrics"])?;
    promtool(&all)?;
    let s = samples(&text);
    let port = |m: &str, extra: &str| format!(r#"{m}{{bridge="br0",port="tap0"{extra}}}"#);
    let drop = |r: &str| port("umlbr_port_dropped_total", &format!(r#",reason="{r}""#));
    ensure!(sample(&s, &drop("invalid"))? == 3.0, "invalid drops");
    ensure!(sample(&s, &drop("spoofed"))? == 1.0, "spoofed drops");
    ensure!(sample(&s, &drop("other"))? == 0.0, "drops of no reason");
    ensure!(sample(&s, &port("umlbr_port_rx_packets_total", ""))? >= 9.0);
    ensure!(sample(&s, &port("umlbr_port_nat_mappings", ""))? == 1.0);
    ensure!(sample(&s, r#"umlbr_nat_allocs_total{bridge="br0"}"#)? == 1.0);
    ensure!(sample(&s, r#"umlbr_nat_mappings{bridge="br0"}"#)? == 1.0);
    ensure!(sample(&s, r#"umlbr_nat_ports_in_use{bridge="br0",proto="udp"}"#)? == 1.0);
    ensure!(sample(&s, r#"umlbr_nat_ports_in_use{bridge="br0",proto="tcp"}"#)? == 0.0);
    ensure!(
        sample(
            &s,
            r#"umlbr_nat_translated_total{bridge="br0",direction="out",path="xdp"}"#
        )? + sample(
            &s,
            r#"umlbr_nat_translated_total{bridge="br0",direction="out",path="tc"}"#
        )? == 5.0
    );
    // The escaped name: backslash and quote.
    ensure!(
        s.contains_key(r#"umlbr_port_up{bridge="br0",port="mt\"q\\1"}"#),
        "the odd port's name is not escaped as the format wants:\n{text}"
    );

    // The same numbers as `stats --json`, every drop reason included.
    let v: Value = serde_json::from_str(&lab.ns.umlbr_ok(&["stats", "br0", "--json"])?)?;
    let nat = &v["nat"];
    let range = nat["ports"].as_str().context("nat.ports")?;
    let (lo, hi) = range.split_once('-').context("nat.ports")?;
    let size = hi.parse::<f64>()? - lo.parse::<f64>()? + 1.0;
    ensure!(sample(&s, r#"umlbr_nat_port_range_size{bridge="br0"}"#)? == size);
    for p in v["ports"].as_array().context("ports")? {
        let name = p["name"].as_str().context("name")?;
        let esc = name.replace('\\', "\\\\").replace('"', "\\\"");
        let st = &p["stats"];
        let mut reasons = 0.0;
        for (k, n) in st.as_object().context("stats")? {
            let key =
                format!(r#"umlbr_port_dropped_total{{bridge="br0",port="{esc}",reason="{k}"}}"#);
            if let Some(m) = s.get(&key) {
                ensure!(Some(*m) == n.as_f64(), "{key}: {m} vs stats {n}");
                reasons += m;
            }
        }
        let other = sample(
            &s,
            &format!(r#"umlbr_port_dropped_total{{bridge="br0",port="{esc}",reason="other"}}"#),
        )?;
        ensure!(
            Some(reasons + other) == st["dropped"].as_f64(),
            "{name}: drop reasons {reasons} + other {other} vs dropped {}",
            st["dropped"]
        );
        let rx = format!(r#"umlbr_port_rx_packets_total{{bridge="br0",port="{esc}"}}"#);
        ensure!(sample(&s, &rx)? <= st["rx_packets"].as_f64().unwrap_or(0.0));
    }
    ensure!(
        sample(&s, r#"umlbr_bridge_fdb_entries{bridge="br0"}"#)? >= 1.0
            && sample(&s, r#"umlbr_bridge_fdb_capacity_entries{bridge="br0"}"#)? > 1000.0
    );

    // A bridge that does not exist: an error, not an empty exposition.
    let out = lab.ns.umlbr(&["metrics", "nosuch"])?;
    ensure!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
    Ok(())
}

/// `umlbr ARGS` started inside `ns`, stdout and stderr piped.
fn spawn(ns: &Netns, args: &[&str]) -> Result<Child> {
    ns.cmd(umlbr_bin().to_str().unwrap())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting umlbr")
}

/// Send `sig` to `c` and wait (at most 5 s) for it to exit 0.
fn stop(mut c: Child, sig: i32) -> Result<()> {
    // `ip netns exec` execs umlbr: the pid is umlbr's.
    unsafe { libc::kill(c.id() as i32, sig) };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if let Some(st) = c.try_wait()? {
            ensure!(st.success(), "umlbr exited {st} on signal {sig}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    bail!("umlbr did not exit within 5 s of signal {sig}")
}

/// `curl -X METHOD BASE+PATH` inside `ns`: the body, and "STATUS
/// CONTENT-TYPE".
fn scrape(ns: &Netns, base: &str, path: &str, method: &str) -> Result<(String, String)> {
    let out = ns.sh(&format!(
        "curl -sS -m 5 -X {method} -o /dev/stdout -w '\\n%{{http_code}} %{{content_type}}' {base}{path}"
    ))?;
    let (body, status) = out.rsplit_once('\n').context("curl output")?;
    Ok((body.to_string(), status.to_string()))
}

#[test]
fn metrics_endpoint_serves_fresh_counters() -> Result<()> {
    let mut lab = Lab::new("mt-http")?;
    lab.send_out(2)?;
    let mut srv = spawn(&lab.ns, &["metrics", "br0", "--listen", "127.0.0.1:0"])?;
    let mut line = String::new();
    BufReader::new(srv.stderr.take().unwrap()).read_line(&mut line)?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .with_context(|| format!("no URL in {line:?}"))?
        .to_string();
    let base = url.trim_end_matches("/metrics").to_string();
    let r = (|| -> Result<()> {
        // An idle connection (a scraper between scrapes) blocks nobody.
        let port: u16 = base.rsplit(':').next().unwrap().parse()?;
        let _idle = lab
            .ns
            .run_in(|| Ok(std::net::TcpStream::connect(("127.0.0.1", port))?))?;
        let (first, status) = scrape(&lab.ns, &base, "/metrics", "GET")?;
        ensure!(
            status.starts_with("200 text/plain; version=0.0.4"),
            "{status}"
        );
        promtool(&first)?;
        let rx = r#"umlbr_port_rx_packets_total{bridge="br0",port="tap0"}"#;
        let out = r#"umlbr_nat_translated_total{bridge="br0",direction="out",path="xdp"}"#;
        let before = samples(&first);
        lab.send_out(7)?;
        std::thread::sleep(Duration::from_millis(300));
        let (second, _) = scrape(&lab.ns, &base, "/metrics", "GET")?;
        let after = samples(&second);
        ensure!(
            sample(&after, rx)? - sample(&before, rx)? == 7.0,
            "rx_packets moved from {} to {}",
            sample(&before, rx)?,
            sample(&after, rx)?
        );
        ensure!(sample(&after, out)? - sample(&before, out)? == 7.0);
        let (_, status) = scrape(&lab.ns, &base, "/", "GET")?;
        ensure!(status.starts_with("404"), "GET /: {status}");
        let (_, status) = scrape(&lab.ns, &base, "/metricsx", "GET")?;
        ensure!(status.starts_with("404"), "GET /metricsx: {status}");
        let (_, status) = scrape(&lab.ns, &base, "/metrics", "POST")?;
        ensure!(status.starts_with("405"), "POST /metrics: {status}");
        // The bridge gone: 500 naming it; made again: served again.
        lab.ns.umlbr_ok(&["down", "br0"])?;
        let (body, status) = scrape(&lab.ns, &base, "/metrics", "GET")?;
        ensure!(
            status.starts_with("500") && body.contains("br0"),
            "{status}: {body}"
        );
        lab.ns
            .umlbr_ok(&["up", "br0", "--address", "192.168.2.1/24"])?;
        let (body, status) = scrape(&lab.ns, &base, "/metrics", "GET")?;
        ensure!(status.starts_with("200"), "{status}: {body}");
        ensure!(body.contains(r#"umlbr_bridge_info{bridge="br0""#), "{body}");
        Ok(())
    })();
    let s = stop(srv, libc::SIGTERM);
    r?;
    s?;
    // SIGINT ends it too.
    let srv = spawn(&lab.ns, &["metrics", "--listen", "127.0.0.1:0"])?;
    std::thread::sleep(Duration::from_millis(500));
    stop(srv, libc::SIGINT)?;
    // A port taken: an error that names the address.
    let busy = lab
        .ns
        .run_in(|| Ok(std::net::TcpListener::bind("127.0.0.1:0")?))?;
    let addr = busy.local_addr()?.to_string();
    let out = lab.ns.umlbr(&["metrics", "--listen", &addr])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && err.contains(&addr) && out.stdout.is_empty(),
        "metrics --listen {addr} (taken): {out:?}"
    );
    Ok(())
}

#[test]
fn stats_watch_prints_rates() -> Result<()> {
    let mut lab = Lab::new("mt-watch")?;
    let mut w = spawn(
        &lab.ns,
        &["stats", "br0", "--watch", "--json", "--interval", "1"],
    )?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = w.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let r = (|| -> Result<()> {
        let mut lines = Vec::new();
        let t = Instant::now();
        // Traffic through the first three intervals: 50 datagrams and 10
        // invalid frames a second.
        while lines.len() < 3 && t.elapsed() < Duration::from_secs(10) {
            lab.send_out(5)?;
            lab.send_drops(1)?;
            std::thread::sleep(Duration::from_millis(100));
            while let Ok(l) = rx.try_recv() {
                lines.push(l);
            }
        }
        ensure!(lines.len() >= 3, "{} lines in 10 s: {lines:?}", lines.len());
        let mut seen = 0;
        for l in &lines {
            let v: Value = serde_json::from_str(l).with_context(|| format!("not JSON: {l}"))?;
            let i = v["interval"].as_f64().context("interval")?;
            ensure!((0.9..2.0).contains(&i), "interval {i}");
            ensure!(v["time"].as_f64().is_some_and(|t| t > 1.6e9), "{v}");
            let b = &v["bridges"][0];
            ensure!(b["name"] == "br0", "{v}");
            let tap = b["ports"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["name"] == "tap0"))
                .with_context(|| format!("no tap0 in {v}"))?;
            let rx = tap["rx_pps"].as_f64().context("rx_pps")?;
            let drops = tap["dropped_per_sec"].as_f64().context("dropped_per_sec")?;
            // Frames of at least 60 bytes (with slack for rounding: both
            // are divided by the same measured interval).
            let bytes = tap["rx_bytes_per_sec"]
                .as_f64()
                .context("rx_bytes_per_sec")?;
            ensure!(bytes >= rx * 59.9, "{bytes} B/s for {rx} frames/s: {l}");
            // Each full interval saw ~60 frames and ~20 drops (one
            // invalid, one spoofed each tenth of a second).
            if rx > 20.0 && drops > 5.0 {
                seen += 1;
            }
        }
        ensure!(seen >= 2, "rates did not follow the traffic: {lines:#?}");
        Ok(())
    })();
    let s = stop(w, libc::SIGINT);
    r?;
    s?;
    // As a table, on a pipe: a block per interval, no terminal codes.
    let mut w = spawn(&lab.ns, &["stats", "--watch"])?;
    let stdout = w.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
            .take(6)
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(2500));
    stop(w, libc::SIGTERM)?;
    let lines = reader.join().unwrap();
    let text = lines.join("\n");
    ensure!(
        lines.first().is_some_and(|l| l.starts_with("every "))
            && text.contains("RX_PPS")
            && text.contains("DROPS/s")
            && lines.iter().any(|l| l.trim_start().starts_with("tap0 "))
            && !text.contains('\x1b'),
        "stats --watch on a pipe:\n{text}"
    );
    // Without --watch, --interval is a usage error.
    let out = lab.ns.umlbr(&["stats", "--interval", "2"])?;
    ensure!(out.status.code() == Some(2), "{out:?}");
    Ok(())
}

#[test]
fn completions_and_man_pages() -> Result<()> {
    let bin = umlbr_bin();
    let run = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(&bin).args(args).output()?;
        ensure!(
            out.status.success(),
            "umlbr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let bash = run(&["completions", "bash"])?;
    for sub in [
        "up",
        "down",
        "attach",
        "detach",
        "stats",
        "metrics",
        "completions",
        "man",
        "--watch",
        "--listen",
    ] {
        ensure!(bash.contains(sub), "bash completions lack {sub}");
    }
    let dir = std::env::temp_dir().join(format!("umlbr-mt-docs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let r = (|| -> Result<()> {
        let script = dir.join("umlbr.bash");
        std::fs::write(&script, &bash)?;
        let st = std::process::Command::new("bash")
            .arg("-n")
            .arg(&script)
            .status()?;
        ensure!(st.success(), "bash -n on the completions: {st}");
        // Loaded into bash, it completes `umlbr met` to metrics.
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                ". {}; COMP_WORDS=(umlbr met); COMP_CWORD=1; COMP_LINE='umlbr met'; \
                 COMP_POINT=9; _umlbr umlbr met umlbr; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                script.display()
            ))
            .output()?;
        let got = String::from_utf8_lossy(&out.stdout);
        ensure!(
            got.lines().any(|l| l == "metrics"),
            "bash completes `umlbr met` to {got:?} ({})",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(run(&["completions", "zsh"])?.starts_with("#compdef umlbr"));
        ensure!(run(&["completions", "fish"])?.contains("complete -c umlbr"));

        let groff_clean = |page: &std::path::Path| -> Result<()> {
            let out = std::process::Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(page)
                .output()
                .context("running groff")?;
            ensure!(
                out.status.success() && out.stderr.is_empty(),
                "groff on {}: {}",
                page.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        let man = run(&["man"])?;
        ensure!(
            man.contains(".TH umlbr 8"),
            "{}",
            &man[..300.min(man.len())]
        );
        let page = dir.join("umlbr.8");
        std::fs::write(&page, &man)?;
        groff_clean(&page)?;
        // man -l renders it, and it names the commands.
        let out = std::process::Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .context("running man")?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && text.contains("metrics") && text.contains("completions"),
            "man -l: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pages = dir.join("pages");
        let listed = run(&["man", "--dir", pages.to_str().unwrap()])?;
        for name in [
            "umlbr.8",
            "umlbr-metrics.8",
            "umlbr-stats.8",
            "umlbr-tap-add.8",
        ] {
            let p = pages.join(name);
            ensure!(p.exists(), "{name} not written; listed:\n{listed}");
            groff_clean(&p)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}
