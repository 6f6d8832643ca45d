//! End to end: real User Mode Linux guests (tests/src/uml.rs) on umlbr,
//! and the same scenario on the kernel's bridge as the oracle that the
//! test itself is right. Each scenario is written once against [`Topo`]
//! and run twice: `<scenario>_umlbr` and `<scenario>_kernel`.
//!
//! Every topology lives in a fresh network namespace (192.168.2.0/24, the
//! host is 192.168.2.1 on br0), every wait is bounded, and guards clean up
//! on failure too: guests are killed, then the namespace is deleted with
//! every process left in it.
//!
//! Needs root, /usr/bin/linux.uml, iperf3, tcpdump and busybox; umlbr from
//! `cargo build -p umlbr` (or $UMLBR_BIN). Run:
//!   cargo test -p umlbr-tests --test e2e_switch -- --test-threads=1 --nocapture
//! (--nocapture shows the iperf3 numbers.)
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use umlbr_tests::{
    netns::Netns,
    uml::{self, Guest, GuestSpec, Ping, Transport, iperf3_json, ping_counts},
};

const HOST_IP: &str = "192.168.2.1";
const BRIDGE: &str = "br0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Umlbr,
    Kernel,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Umlbr => "umlbr",
            Kind::Kernel => "kernel bridge",
        }
    }
}

/// A switch in a fresh namespace, with guests on its taps. Fields drop in
/// order: guests first, then the namespace.
struct Topo {
    guests: Vec<Guest>,
    kind: Kind,
    ns: Netns,
}

/// Guest `i`: tap`i`, MAC 02:00:00:00:00:(i+2), 192.168.2.(i+2)/24.
fn spec(i: usize, transport: Transport) -> GuestSpec {
    GuestSpec::new(
        &format!("g{i}"),
        transport,
        &format!("tap{i}"),
        &format!("02:00:00:00:00:{:02x}", i + 2),
        &format!("192.168.2.{}/24", i + 2),
    )
    .gateway(HOST_IP)
}

impl Topo {
    /// A namespace with br0 up, 192.168.2.1/24 on it; `aging` in seconds.
    fn new(tag: &str, kind: Kind, aging: Option<u64>) -> Result<Topo> {
        // No IPv6 autoconfiguration noise from the host side.
        let ns = Netns::without_ipv6(tag)?;
        match kind {
            Kind::Umlbr => {
                let aging = aging.map(|a| a.to_string());
                let mut args = vec!["up", BRIDGE, "--address", "192.168.2.1/24"];
                if let Some(a) = &aging {
                    args.extend(["--aging", a]);
                }
                ns.umlbr_ok(&args)?;
            }
            Kind::Kernel => {
                // ageing_time is in centiseconds.
                let ageing = aging
                    .map(|a| format!("ageing_time {}", a * 100))
                    .unwrap_or_default();
                ns.sh(&format!(
                    "ip link add {BRIDGE} type bridge stp_state 0 mcast_snooping 0 {ageing} && \
                     ip addr add 192.168.2.1/24 dev {BRIDGE} && ip link set {BRIDGE} up"
                ))?;
            }
        }
        Ok(Topo {
            guests: Vec::new(),
            kind,
            ns,
        })
    }

    /// A new tap, attached to the bridge and up.
    fn add_tap(&self, tap: &str) -> Result<()> {
        self.create_tap(tap, None)?;
        self.attach(tap)
    }

    fn create_tap(&self, tap: &str, user: Option<&str>) -> Result<()> {
        match self.kind {
            Kind::Umlbr => {
                let mut args = vec!["tap", "add", tap];
                if let Some(u) = user {
                    args.extend(["--user", u]);
                }
                self.ns.umlbr_ok(&args)?;
            }
            Kind::Kernel => {
                let user = user.map(|u| format!(" user {u}")).unwrap_or_default();
                self.ns.sh(&format!("ip tuntap add {tap} mode tap{user}"))?;
            }
        }
        Ok(())
    }

    fn attach(&self, tap: &str) -> Result<()> {
        match self.kind {
            Kind::Umlbr => {
                self.ns.umlbr_ok(&["attach", tap])?;
            }
            Kind::Kernel => {
                self.ns.sh(&format!(
                    "ip link set {tap} master {BRIDGE} && ip link set {tap} up"
                ))?;
            }
        }
        Ok(())
    }

    fn detach(&self, tap: &str) -> Result<()> {
        match self.kind {
            Kind::Umlbr => {
                self.ns.umlbr_ok(&["detach", tap])?;
            }
            Kind::Kernel => {
                self.ns.sh(&format!("ip link set {tap} nomaster"))?;
            }
        }
        Ok(())
    }

    fn del_tap(&self, tap: &str) -> Result<()> {
        match self.kind {
            Kind::Umlbr => {
                self.ns.umlbr_ok(&["tap", "del", tap])?;
            }
            Kind::Kernel => {
                self.ns.sh(&format!("ip tuntap del {tap} mode tap"))?;
            }
        }
        Ok(())
    }

    fn down(&self) -> Result<()> {
        match self.kind {
            Kind::Umlbr => {
                self.ns.umlbr_ok(&["down", BRIDGE])?;
            }
            Kind::Kernel => {
                self.ns.sh(&format!("ip link del {BRIDGE}"))?;
            }
        }
        Ok(())
    }

    /// The port a learned (not static/permanent) FDB entry puts `mac` on.
    fn fdb_port(&self, mac: &str) -> Result<Option<String>> {
        let mac = mac.to_ascii_lowercase();
        match self.kind {
            Kind::Umlbr => {
                let out = self.ns.umlbr_ok(&["fdb", "show", BRIDGE, "--json"])?;
                let rows: Value = serde_json::from_str(&out)
                    .with_context(|| format!("fdb show --json: {out}"))?;
                for r in rows.as_array().context("fdb show --json: not an array")? {
                    if r["mac"].as_str().map(str::to_ascii_lowercase).as_deref() == Some(&mac)
                        && r["static"] != Value::Bool(true)
                    {
                        return Ok(r["port"].as_str().map(String::from));
                    }
                }
                Ok(None)
            }
            Kind::Kernel => {
                let out = self.ns.sh(&format!("bridge -j fdb show br {BRIDGE}"))?;
                let rows: Value = serde_json::from_str(&out)
                    .with_context(|| format!("bridge -j fdb show: {out}"))?;
                for r in rows.as_array().context("bridge fdb: not an array")? {
                    if r["mac"].as_str() == Some(&mac)
                        && r["state"].as_str() != Some("permanent")
                        && r["ifname"].as_str() != Some(BRIDGE)
                    {
                        return Ok(r["ifname"].as_str().map(String::from));
                    }
                }
                Ok(None)
            }
        }
    }

    /// Poll `fdb_port(mac)` until it equals `want` (at most `timeout`).
    fn wait_fdb(&self, mac: &str, want: Option<&str>, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let got = self.fdb_port(mac)?;
            if got.as_deref() == want {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                bail!(
                    "{}: FDB entry of {mac} is {got:?}, want {want:?} (waited {timeout:?})",
                    self.kind.as_str()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Create and attach the guests' taps, then boot them all.
    fn boot(&mut self, specs: &[GuestSpec]) -> Result<()> {
        for s in specs {
            self.add_tap(&s.tap)?;
        }
        self.guests.extend(Guest::boot_all(&self.ns.name, specs)?);
        Ok(())
    }

    /// `busybox ping` from the host side (in the namespace).
    fn host_ping(&self, args: &str) -> Result<String> {
        let out = self.ns.sh_output(&format!("busybox ping {args}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `umlbr stats br0 --json`: port name -> stats object.
    fn umlbr_stats(&self) -> Result<Vec<(String, Value)>> {
        let out = self.ns.umlbr_ok(&["stats", BRIDGE, "--json"])?;
        let v: Value = serde_json::from_str(&out)?;
        Ok(v["ports"]
            .as_array()
            .context("stats --json: no ports")?
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("").to_string(),
                    p["stats"].clone(),
                )
            })
            .collect())
    }
}

/// `count` pings (busybox) from guest `from` to `ip`; every one must be
/// answered.
fn ping_ok(from: &Guest, ip: &str, count: u32) -> Result<String> {
    uml::ping_ok(from, Ping::Busybox, ip, count)
}

/// TCP with iperf3 from `client` to `server` for `secs`; Gbit/s.
fn iperf(kind: Kind, client: &Guest, server: &Guest, secs: u32) -> Result<f64> {
    let (rc, out) = client.iperf3_to(server, secs, "-J")?;
    let what = format!("{} -> {}", client.name, server.name);
    let r = iperf3_json(rc, &out, &what)?;
    let (bytes, retrans) = (r.bytes, r.retransmits);
    let gbps = r.bps / 1e9;
    println!(
        "iperf3 [{}] {} ({}) -> {} ({}): {gbps:.2} Gbit/s, {:.0} MB in {secs} s, {retrans} retransmits",
        kind.as_str(),
        client.name,
        client.transport.as_str(),
        server.name,
        server.transport.as_str(),
        bytes / 1e6
    );
    ensure!(
        bytes > 1e6,
        "iperf3 {} -> {} moved only {bytes} bytes",
        client.name,
        server.name
    );
    Ok(gbps)
}

// ---------------------------------------------------------------------------
// Scenario 1: three guests (two legacy, one vector): ping every pair, the
// host both ways, and TCP between them.

fn three_guests(kind: Kind) -> Result<()> {
    let mut t = Topo::new("e2e3", kind, None)?;
    t.boot(&[
        spec(0, Transport::Legacy),
        spec(1, Transport::Legacy),
        spec(2, Transport::Vector),
    ])?;
    let g = &t.guests;
    for a in g {
        for b in g {
            if a.name != b.name {
                let s = ping_ok(a, &b.ip, 3)?;
                println!("[{}] {} -> {}: {s}", kind.as_str(), a.name, b.name);
            }
        }
        let s = ping_ok(a, HOST_IP, 3)?;
        println!("[{}] {} -> host: {s}", kind.as_str(), a.name);
        let out = t.host_ping(&Ping::Busybox.args(3, &a.ip))?;
        Ping::Busybox.all_answered(&format!("host to {}", a.name), &a.ip, 3, &out)?;
    }
    iperf(kind, &g[0], &g[1], 3)?;
    iperf(kind, &g[0], &g[2], 3)?;
    iperf(kind, &g[2], &g[0], 3)?;
    if kind == Kind::Umlbr {
        print_stats(&t)?;
    }
    Ok(())
}

fn print_stats(t: &Topo) -> Result<()> {
    for (name, s) in t.umlbr_stats()? {
        println!(
            "  {name:<8} rx {:>8} fwd {:>8} flood {:>5} drop {:>5} xdp_native {:>8} xdp_generic {:>8} tc {:>8}",
            s["rx_packets"],
            s["forwarded"],
            s["flooded"],
            s["dropped"],
            s["xdp_native"],
            s["xdp_generic"],
            s["tc"]
        );
    }
    Ok(())
}

umlbr_tests::per_contender!(
    three_guests,
    three_guests_umlbr: Kind::Umlbr,
    three_guests_kernel: Kind::Kernel,
);

// ---------------------------------------------------------------------------
// Scenario 2: TCP between two vector guests: GSO super-frames and partial
// checksums must cross intact (umlbr's TC path).

fn vector_tcp(kind: Kind) -> Result<()> {
    let mut t = Topo::new("e2evec", kind, None)?;
    t.boot(&[spec(0, Transport::Vector), spec(1, Transport::Vector)])?;
    let g = &t.guests;
    ping_ok(&g[0], &g[1].ip, 3)?;
    iperf(kind, &g[0], &g[1], 3)?;
    iperf(kind, &g[1], &g[0], 3)?;
    if kind == Kind::Umlbr {
        print_stats(&t)?;
        let stats = t.umlbr_stats()?;
        for tap in ["tap0", "tap1"] {
            let s = &stats
                .iter()
                .find(|(n, _)| n == tap)
                .with_context(|| format!("stats: no port {tap}"))?
                .1;
            let tc = s["tc"].as_u64().unwrap_or(0);
            ensure!(
                tc > 0,
                "{tap} (vector guest) switched no frame on the TC path: {s}"
            );
        }
    }
    Ok(())
}

umlbr_tests::per_contender!(
    vector_tcp,
    vector_tcp_umlbr: Kind::Umlbr,
    vector_tcp_kernel: Kind::Kernel,
);

// ---------------------------------------------------------------------------
// Scenario 3: learning, flooding and aging, checked as the kernel's
// forwarding selftests do (lib.sh learning_test / flood_test): a frame to
// an unknown MAC is flooded (seen on a third port); once the destination
// has sent a frame it is learned on its port and frames to it reach only
// that port; once the entry has aged out, frames to it are flooded again.
//
// A sends ICMP to addresses with static neighbour entries pointing at B's
// MAC: B drops them silently (not its address, no forwarding), so B only
// sends when told to. B's one frame goes to an unknown MAC (no reply, no
// ARP, nothing that would refresh its entry while it ages). tcpdump runs
// in B (the destination) and C (the third port).

const AGING: u64 = 4;

fn learning(kind: Kind) -> Result<()> {
    let mut t = Topo::new("e2elearn", kind, Some(AGING))?;
    t.boot(&[
        spec(0, Transport::Legacy),
        spec(1, Transport::Legacy),
        spec(2, Transport::Vector),
    ])?;
    let (a, b, c) = (&t.guests[0], &t.guests[1], &t.guests[2]);
    let mac_b = b.mac.clone();
    for (ip, mac) in [
        ("192.168.2.77", &mac_b),
        ("192.168.2.78", &mac_b),
        ("192.168.2.79", &mac_b),
    ] {
        a.run_ok(&format!(
            "ip neigh replace {ip} lladdr {mac} dev {} nud permanent",
            a.iface
        ))?;
    }
    b.run_ok(&format!(
        "ip neigh replace 192.168.2.200 lladdr 02:00:00:00:00:99 dev {} nud permanent",
        b.iface
    ))?;
    let filter = format!("ether dst {mac_b} and icmp");
    // Immediate mode: by default tcpdump gets frames a ring block at a
    // time (up to 1 s late), and an interrupt loses what it has not got.
    let dump = |iface: &str| format!("exec tcpdump --immediate-mode -n -l -i {iface} {filter}");
    let dump_b = b.spawn(&dump(b.iface))?;
    let dump_c = c.spawn(&dump(c.iface))?;
    dump_b.wait_output("listening on", Duration::from_secs(20))?;
    dump_c.wait_output("listening on", Duration::from_secs(20))?;

    // Unknown: B has sent nothing since it booted (or it aged out).
    t.wait_fdb(&mac_b, None, Duration::from_secs(2 * AGING + 2))?;
    // busybox ping's -W counts from the first echo: a guest stalled by
    // the host for most of it would stop before sending all three (no
    // reply ever comes). The phases without a time limit give it more.
    let (_, ping_unknown) = a.run("busybox ping -c 3 -i 0.2 -W 3 192.168.2.77")?;

    // Learned: B sends one frame (to an unknown MAC, which is flooded).
    let t_sent = Instant::now();
    let b_ping = b.spawn("busybox ping -c 1 -W 1 192.168.2.200")?;
    t.wait_fdb(&mac_b, Some("tap1"), Duration::from_secs(3))?;
    let (_, ping_learned) = a.run("busybox ping -c 3 -i 0.2 -W 1 192.168.2.78")?;
    let known_phase = t_sent.elapsed();
    ensure!(
        known_phase < Duration::from_secs(AGING),
        "the machine is too slow for this test: the learned phase took {known_phase:?} \
         (aging {AGING} s)"
    );
    b_ping.wait(Duration::from_secs(10))?;

    // Aged: B silent for longer than the aging time.
    std::thread::sleep(Duration::from_secs(AGING + 1).saturating_sub(t_sent.elapsed()));
    // umlbr drops aged entries from `fdb show` at once; the kernel's
    // garbage collector runs every aging interval.
    t.wait_fdb(&mac_b, None, Duration::from_secs(AGING + 2))?;
    let (_, ping_aged) = a.run("busybox ping -c 3 -i 0.2 -W 3 192.168.2.79")?;

    let count = |out: &str, ip: &str| {
        out.lines()
            .filter(|l| l.contains(&format!("> {ip}: ICMP echo request")))
            .count()
    };
    // A guest's tcpdump prints late when the host starves the guest: give
    // each the aged phase's 3 frames (bounded) before stopping it.
    let t_wait = Instant::now();
    while (count(&dump_b.output(), "192.168.2.79") < 3
        || count(&dump_c.output(), "192.168.2.79") < 3)
        && t_wait.elapsed() < Duration::from_secs(3)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let out_b = dump_b.stop()?;
    let out_c = dump_c.stop()?;
    let seen =
        |out: &str| ["192.168.2.77", "192.168.2.78", "192.168.2.79"].map(|ip| count(out, ip));
    let (sb, sc) = (seen(&out_b), seen(&out_c));
    println!(
        "[{}] frames to B's MAC seen on B (unknown, learned, aged): {sb:?}, on C: {sc:?}",
        kind.as_str()
    );
    // What A says it sent, for a failure's message.
    let sent = [&ping_unknown, &ping_learned, &ping_aged]
        .map(|o| o.lines().find(|l| l.contains("transmitted")).unwrap_or("?"));
    ensure!(
        sb == [3, 3, 3],
        "B must get every frame to its MAC, got {sb:?} (A's pings: {sent:?}):\n{out_b}"
    );
    ensure!(
        sc == [3, 0, 3],
        "C must see frames to B's MAC only while B is unknown (flooded), got \
         {sc:?} for (unknown, learned, aged) (A's pings: {sent:?}):\n{out_c}"
    );
    Ok(())
}

umlbr_tests::per_contender!(
    learning,
    learning_umlbr: Kind::Umlbr,
    learning_kernel: Kind::Kernel,
);

// ---------------------------------------------------------------------------
// Scenario 4: detach and reattach a port while another pair keeps talking.

fn detach_reattach(kind: Kind) -> Result<()> {
    let mut t = Topo::new("e2edet", kind, None)?;
    t.boot(&[
        spec(0, Transport::Legacy),
        spec(1, Transport::Vector),
        spec(2, Transport::Legacy),
    ])?;
    let (a, b, c) = (&t.guests[0], &t.guests[1], &t.guests[2]);
    ping_ok(a, &b.ip, 2)?;
    ping_ok(a, &c.ip, 2)?;
    let count = 40;
    let long = a.spawn(&Ping::Busybox.command(count, &b.ip))?;
    std::thread::sleep(Duration::from_secs(1));

    t.detach(&c.tap)?;
    if kind == Kind::Umlbr {
        let show = t.ns.umlbr_ok(&["show", BRIDGE, "--json"])?;
        let v: Value = serde_json::from_str(&show)?;
        let ports: Vec<&str> = v["ports"]
            .as_array()
            .context("show --json: no ports")?
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        ensure!(
            !ports.contains(&c.tap.as_str()),
            "{} still a port after detach: {ports:?}",
            c.tap
        );
    }
    let out = t.host_ping(&format!("-c 3 -i 0.2 -W 1 {}", c.ip))?;
    let (_, rx) = ping_counts(&out).with_context(|| format!("no ping summary: {out}"))?;
    ensure!(rx == 0, "C answered while detached:\n{out}");
    let (_, out) = a.run(&format!("busybox ping -c 3 -i 0.2 -W 1 {}", c.ip))?;
    let (_, rx) = ping_counts(&out).with_context(|| format!("no ping summary: {out}"))?;
    ensure!(rx == 0, "C answered A while detached:\n{out}");

    t.attach(&c.tap)?;
    let t0 = Instant::now();
    loop {
        let out = t.host_ping(&format!("-c 1 -W 1 {}", c.ip))?;
        if ping_counts(&out).is_some_and(|(_, rx)| rx == 1) {
            break;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "C unreachable from the host 10 s after reattach:\n{out}"
        );
    }
    ping_ok(a, &c.ip, 3)?;

    let (_, out) = long.wait(Duration::from_secs(30))?;
    let lost = Ping::Busybox.lost(&out, count);
    println!(
        "[{}] A -> B during C's detach/reattach: {} of {count} pings answered, lost {lost:?}",
        kind.as_str(),
        count as usize - lost.len()
    );
    ensure!(
        lost.is_empty(),
        "A -> B: no reply to pings {lost:?} of {count} while C was detached and \
         reattached:\n{out}"
    );
    Ok(())
}

umlbr_tests::per_contender!(
    detach_reattach,
    detach_reattach_umlbr: Kind::Umlbr,
    detach_reattach_kernel: Kind::Kernel,
);

// ---------------------------------------------------------------------------
// Scenario 5: taking the switch down leaves no program, interface or map
// behind; taps stay until deleted.

/// XDP program ids in `ip -d link` output.
fn xdp_ids(ip_d_link: &str) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let mut words = ip_d_link.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if w.starts_with("prog/xdp") && words.peek() == Some(&"id") {
            words.next();
            if let Some(id) = words.next().and_then(|s| s.parse().ok()) {
                ids.insert(id);
            }
        }
    }
    ids
}

/// Loaded programs sharing a map with one of `xdp`: the bridge's XDP and
/// TC programs. Returns (program ids, map ids).
fn bridge_objects(xdp: &BTreeSet<u32>) -> Result<(BTreeSet<u32>, BTreeSet<u32>)> {
    let progs: Vec<(u32, String, Vec<u32>)> = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .map(|p| {
            (
                p.id(),
                p.name_as_str().unwrap_or("").to_string(),
                p.map_ids().ok().flatten().unwrap_or_default(),
            )
        })
        .collect();
    let maps: BTreeSet<u32> = progs
        .iter()
        .filter(|(id, _, _)| xdp.contains(id))
        .flat_map(|(_, _, m)| m.iter().copied())
        .collect();
    let ids = progs
        .iter()
        .filter(|(_, name, m)| name.starts_with("umlbr_") && m.iter().any(|id| maps.contains(id)))
        .map(|(id, _, _)| *id)
        .collect();
    Ok((ids, maps))
}

fn down_cleans_up(kind: Kind) -> Result<()> {
    let mut t = Topo::new("e2edown", kind, None)?;
    t.boot(&[spec(0, Transport::Legacy), spec(1, Transport::Vector)])?;
    ping_ok(&t.guests[0], &t.guests[1].ip, 2)?;
    let before = t.ns.sh("ip -d link show")?;
    let xdp = xdp_ids(&before);
    let (progs, maps) = bridge_objects(&xdp)?;
    if kind == Kind::Umlbr {
        ensure!(
            xdp.len() == 1,
            "one XDP program on the ports, got {xdp:?}:\n{before}"
        );
        let names: Vec<String> = aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .filter(|p| progs.contains(&p.id()))
            .map(|p| p.name_as_str().unwrap_or("").to_string())
            .collect();
        ensure!(
            names.iter().any(|n| n == "umlbr_xdp") && names.iter().any(|n| n == "umlbr_tc"),
            "the bridge's programs: {names:?}"
        );
        ensure!(!maps.is_empty(), "the bridge's programs use no map");
    }
    // The guests go first: a tap with a guest on it would stay anyway.
    for mut g in t.guests.drain(..) {
        g.halt();
    }
    t.down()?;
    let after = t.ns.sh("ip -d link show")?;
    ensure!(
        !after.contains("prog/xdp") && !after.contains(BRIDGE),
        "after down, `ip -d link` still shows XDP or {BRIDGE}:\n{after}"
    );
    for tap in ["tap0", "tap1"] {
        ensure!(
            after.contains(&format!(": {tap}:")),
            "{tap} is gone after down:\n{after}"
        );
    }
    // Programs and maps are freed with their last reference (RCU: soon).
    let t0 = Instant::now();
    loop {
        let left: BTreeSet<u32> = aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .map(|p| p.id())
            .filter(|id| progs.contains(id))
            .collect();
        let maps_left: BTreeSet<u32> = aya::maps::loaded_maps()
            .filter_map(|m| m.ok())
            .map(|m| m.id())
            .filter(|id| maps.contains(id))
            .collect();
        if left.is_empty() && maps_left.is_empty() {
            break;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(5),
            "after down, programs {left:?} and maps {maps_left:?} are still loaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for tap in ["tap0", "tap1"] {
        t.del_tap(tap)?;
    }
    let last = t.ns.sh("ip -o link show")?;
    ensure!(
        last.lines().all(|l| l.contains(": lo:")),
        "after tap del, more than lo is left:\n{last}"
    );
    println!(
        "[{}] down: removed XDP {xdp:?}, programs {progs:?}, maps {maps:?}",
        kind.as_str()
    );
    Ok(())
}

umlbr_tests::per_contender!(
    down_cleans_up,
    down_cleans_up_umlbr: Kind::Umlbr,
    down_cleans_up_kernel: Kind::Kernel,
);

// ---------------------------------------------------------------------------
// Scenario 6: a tap made for a user can be opened by a guest running as
// that user (and one made for another user cannot).

fn tap_user(kind: Kind) -> Result<()> {
    let t = Topo::new("e2euser", kind, None)?;
    t.create_tap("tapu", Some("nobody"))?;
    let link = t.ns.sh("ip -d link show tapu")?;
    ensure!(
        link.contains("user nobody"),
        "tapu is not nobody's:\n{link}"
    );
    t.attach("tapu")?;
    let g = Guest::boot(
        &t.ns.name,
        &GuestSpec::new(
            "nobody",
            Transport::Legacy,
            "tapu",
            "02:00:00:00:00:20",
            "192.168.2.20/24",
        )
        .user("nobody"),
    )?;
    let uid = std::fs::read_to_string(format!("/proc/{}/status", g.pid().unwrap_or(0)))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or("")
        .to_string();
    ensure!(
        uid.split_whitespace().nth(1) == Some("65534"),
        "linux.uml does not run as nobody: {uid}"
    );
    ping_ok(&g, HOST_IP, 2)?;
    drop(g);

    // A tap of another user's (root's): the same guest cannot open it. (A
    // tap with no owner at all is anyone's who may open /dev/net/tun.)
    t.create_tap("tapr", Some("root"))?;
    t.attach("tapr")?;
    let res = Guest::boot(
        &t.ns.name,
        &GuestSpec::new(
            "nobody2",
            Transport::Legacy,
            "tapr",
            "02:00:00:00:00:21",
            "192.168.2.21/24",
        )
        .user("nobody"),
    );
    match res {
        Ok(_) => bail!("a guest running as nobody opened root's tap"),
        // The legacy driver opens the tap when eth0 goes up.
        Err(e) => ensure!(
            format!("{e:#}").contains("init failed: eth0 up"),
            "unexpected failure: {e:#}"
        ),
    }
    Ok(())
}

umlbr_tests::per_contender!(
    tap_user,
    tap_user_umlbr: Kind::Umlbr,
    tap_user_kernel: Kind::Kernel,
);
