//! End to end over VXLAN (issue 19): User Mode Linux guests on three
//! "hosts" (network namespaces), each with its own bridge per tenant and a
//! kernel VXLAN device per tenant VNI as that bridge's port, the hosts'
//! underlay a veth each into a "switch" namespace whose kernel bridge is
//! the underlay's L2. Remote VTEPs are all-zero entries of each VXLAN
//! device's own FDB (`bridge fdb append 00:00:00:00:00:00 ... dst`), as
//! FRR's zebra writes them for EVPN; host 3's devices run with the
//! kernel's learning off (`nolearning`), the others with it on.
//!
//! Each scenario runs on umlbr and, as the oracle that the test itself is
//! right, on the kernel bridge with the same VXLAN devices as its ports:
//! `<scenario>_umlbr` and `<scenario>_kernel`. The VLAN-mapped scenarios
//! (`*_vlan_umlbr`: one bridge per host, a VLAN per VNI) have no kernel
//! oracle: this kernel's bridge has no VLAN filtering. Their namespaces
//! are `umlbrt-vni*`.
//!
//! Namespaces are `umlbrt-vx*`; guards kill the guests and delete the
//! namespaces on failure too. Needs root, /usr/bin/linux.uml, iperf3,
//! tcpdump, busybox. Run:
//!   cargo test -p umlbr-tests --test e2e_vxlan -- --test-threads=1 --nocapture
use std::{
    fs,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use umlbr_tests::{
    netns::Netns,
    uml::{Guest, GuestSpec, Ping, Transport, iperf3_json, ping_counts, ping_ok},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Umlbr,
    Kernel,
}

/// A tenant: its VNI, and the bridge and VXLAN device it has on every host.
#[derive(Clone, Copy)]
struct Tenant {
    name: &'static str,
    vni: u32,
}

const A: Tenant = Tenant {
    name: "a",
    vni: 100,
};
const B: Tenant = Tenant {
    name: "b",
    vni: 200,
};

impl Tenant {
    fn bridge(self) -> String {
        format!("br{}", self.name)
    }
    fn vxlan(self) -> String {
        format!("vx{}", self.vni)
    }
}

/// Guests first, then the hosts, then the underlay's switch (drop order).
struct World {
    guests: Vec<Guest>,
    hosts: Vec<Netns>,
    _sw: Netns,
    kind: Kind,
    /// One umlbr bridge per host (`VLAN_BRIDGE`), every tenant a VLAN of
    /// it whose id is the tenant's VNI: its VXLAN device and its guests
    /// are access ports of that VLAN. Otherwise a bridge per tenant.
    vlan_mapped: bool,
}

/// The one bridge of a host in a VLAN-mapped world.
const VLAN_BRIDGE: &str = "br0";

/// The underlay address of host `h` (1-based).
fn vtep(h: usize) -> String {
    format!("10.99.0.{h}")
}

impl World {
    /// `nhosts` hosts joined by an underlay of veths with MTU
    /// `underlay_mtu`, each with a bridge and a VXLAN device (MTU: the
    /// underlay's less 50, the kernel's default with `dev`) for every one
    /// of `tenants`.
    fn new(kind: Kind, nhosts: usize, underlay_mtu: u32, tenants: &[Tenant]) -> Result<World> {
        World::with_gateway(kind, nhosts, underlay_mtu, tenants, None)
    }

    /// `new`, and host 1's bridge of the first tenant with address `gw`
    /// (the guests' gateway), if given.
    fn with_gateway(
        kind: Kind,
        nhosts: usize,
        underlay_mtu: u32,
        tenants: &[Tenant],
        gw: Option<&str>,
    ) -> Result<World> {
        World::build(kind, nhosts, underlay_mtu, tenants, (gw, false))
    }

    /// `new` on umlbr with one bridge per host and each tenant's VNI
    /// mapped to the VLAN of the same id (`attach vxVNI --vlan VNI`), the
    /// EVPN model of a VLAN-aware bridge.
    fn vlan_mapped(nhosts: usize, underlay_mtu: u32, tenants: &[Tenant]) -> Result<World> {
        World::build(Kind::Umlbr, nhosts, underlay_mtu, tenants, (None, true))
    }

    fn build(
        kind: Kind,
        nhosts: usize,
        underlay_mtu: u32,
        tenants: &[Tenant],
        (gw, vlan_mapped): (Option<&str>, bool),
    ) -> Result<World> {
        // Namespaces of the VLAN-mapped worlds apart by name (`umlbrt-vni*`).
        let tag = if vlan_mapped { "vni" } else { "vx" };
        let sw = Netns::without_ipv6(&format!("{tag}sw"))?;
        sw.sh(&format!(
            "ip link add ul type bridge && ip link set ul mtu {underlay_mtu} && ip link set ul up"
        ))?;
        let mut hosts = Vec::new();
        for h in 1..=nhosts {
            let ns = Netns::without_ipv6(&format!("{tag}h{h}"))?;
            if vlan_mapped {
                ns.umlbr_ok(&["up", VLAN_BRIDGE])?;
            }
            sw.sh(&format!(
                "ip link add p{h} mtu {underlay_mtu} type veth peer name u0 netns {} mtu {underlay_mtu} \
                 && ip link set p{h} master ul && ip link set p{h} up",
                ns.name
            ))?;
            ns.sh(&format!(
                "ip addr add {}/24 dev u0 && ip link set u0 up",
                vtep(h)
            ))?;
            // Host 3 without the kernel's learning: remote MACs then live
            // only in the bridge's FDB, unicast to them is replicated by
            // the device to every remote VTEP.
            let learning = if h == 3 { " nolearning" } else { "" };
            for t in tenants {
                let vx = t.vxlan();
                ns.sh(&format!(
                    "ip link add {vx} type vxlan id {} dstport 4789 local {} dev u0{learning}",
                    t.vni,
                    vtep(h)
                ))?;
                for r in (1..=nhosts).filter(|&r| r != h) {
                    ns.sh(&format!(
                        "bridge fdb append 00:00:00:00:00:00 dev {vx} dst {}",
                        vtep(r)
                    ))?;
                }
                ns.sh(&format!("ip link set {vx} up"))?;
                let br = t.bridge();
                let addr = gw.filter(|_| h == 1 && t.vni == tenants[0].vni);
                match kind {
                    Kind::Umlbr if vlan_mapped => {
                        let vid = t.vni.to_string();
                        ns.umlbr_ok(&["attach", &vx, "--bridge", VLAN_BRIDGE, "--vlan", &vid])?;
                    }
                    Kind::Umlbr => {
                        let mut args = vec!["up", br.as_str()];
                        if let Some(a) = addr {
                            args.extend(["--address", a]);
                        }
                        ns.umlbr_ok(&args)?;
                        ns.umlbr_ok(&["attach", &vx, "--bridge", &br])?;
                    }
                    Kind::Kernel => {
                        ns.sh(&format!(
                            "ip link add {br} type bridge stp_state 0 mcast_snooping 0 && \
                             ip link set {vx} master {br} && ip link set {br} up"
                        ))?;
                        if let Some(a) = addr {
                            ns.sh(&format!("ip addr add {a} dev {br}"))?;
                        }
                    }
                }
            }
            hosts.push(ns);
        }
        Ok(World {
            guests: Vec::new(),
            hosts,
            _sw: sw,
            kind,
            vlan_mapped,
        })
    }

    fn host(&self, h: usize) -> &Netns {
        &self.hosts[h - 1]
    }

    /// Start tenant `t`'s guest on host `h` (its tap `t<tenant><h>`,
    /// 10.50.0.`n`/24 with `n` = h for tenant a, 10 + h for b: one subnet,
    /// so only the overlay keeps them apart).
    fn start_guest(&mut self, t: Tenant, h: usize) -> Result<()> {
        self.start_guest_via(t, h, None)
    }

    /// `start_guest`, with a default route via `gw`.
    fn start_guest_via(&mut self, t: Tenant, h: usize, gw: Option<&str>) -> Result<()> {
        let tap = format!("t{}{h}", t.name);
        let n = if t.vni == A.vni { h } else { 10 + h };
        let ns = &self.hosts[h - 1];
        let br = t.bridge();
        match self.kind {
            Kind::Umlbr if self.vlan_mapped => {
                ns.umlbr_ok(&["tap", "add", &tap])?;
                let vid = t.vni.to_string();
                ns.umlbr_ok(&["attach", &tap, "--bridge", VLAN_BRIDGE, "--vlan", &vid])?;
            }
            Kind::Umlbr => {
                ns.umlbr_ok(&["tap", "add", &tap])?;
                ns.umlbr_ok(&["attach", &tap, "--bridge", &br])?;
            }
            Kind::Kernel => {
                ns.sh(&format!(
                    "ip tuntap add {tap} mode tap && ip link set {tap} master {br} && ip link set {tap} up"
                ))?;
            }
        }
        let spec = GuestSpec::new(
            &format!("{}{h}", t.name),
            Transport::Legacy,
            &tap,
            &format!("02:00:00:00:{:02x}:{h:02x}", t.vni / 100),
            &format!("10.50.0.{n}/24"),
        );
        let spec = match gw {
            Some(gw) => spec.gateway(gw),
            None => spec,
        };
        self.guests.push(Guest::start(&ns.name, &spec)?);
        Ok(())
    }

    fn ready(&mut self) -> Result<()> {
        for g in &mut self.guests {
            g.wait_ready(umlbr_tests::uml::BOOT_TIMEOUT)?;
        }
        Ok(())
    }

    fn guest(&self, name: &str) -> &Guest {
        self.guests
            .iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("no guest {name}"))
    }

    /// Set every guest's MTU.
    fn guest_mtu(&self, mtu: u32) -> Result<()> {
        for g in &self.guests {
            g.run_ok(&format!("ip link set {} mtu {mtu}", g.iface))?;
        }
        Ok(())
    }

    /// Guest `from` sends one ARP request (a broadcast) for `target`;
    /// returns how many copies each guest's tap transmitted to its guest,
    /// by guest name (the sender's own tap too: 0 expected).
    fn broadcast_counts(&self, from: &str, target: &str) -> Result<Vec<(String, usize)>> {
        let hex: String = target
            .split('.')
            .map(|o| format!("{:02x}", o.parse::<u8>().unwrap_or(0)))
            .collect();
        let mut caps = Vec::new();
        for g in &self.guests {
            caps.push(Capture::start(
                self.ns_of(g),
                &g.tap,
                &format!("arp and arp[24:4] = 0x{hex}"),
            )?);
        }
        let g = self.guest(from);
        // arping exits 1 when nobody answers, as nobody does.
        let _ = g.run(&format!("busybox arping -c 1 -w 1 -I {} {target}", g.iface))?;
        std::thread::sleep(Duration::from_millis(800));
        let mut out = Vec::new();
        for (g, c) in self.guests.iter().zip(caps) {
            out.push((g.name.clone(), c.finish()?));
        }
        Ok(out)
    }

    fn ns_of(&self, g: &Guest) -> &Netns {
        self.hosts
            .iter()
            .find(|h| h.name == g.netns)
            .expect("a guest's host")
    }
}

/// tcpdump on one interface, counting the frames it transmits (on a tap:
/// to its guest) that a filter matches.
struct Capture {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Capture {
    fn start(ns: &Netns, iface: &str, filter: &str) -> Result<Capture> {
        let dir = std::env::temp_dir();
        let tag = format!("{}-{iface}-{}", ns.name, std::process::id());
        let out = dir.join(format!("umlbr-vxcap-{tag}.out"));
        let err = dir.join(format!("umlbr-vxcap-{tag}.err"));
        let child = ns
            .cmd("tcpdump")
            .args([
                "-l",
                "-n",
                "--immediate-mode",
                "-Q",
                "out",
                "-i",
                iface,
                filter,
            ])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out)?)
            .stderr(fs::File::create(&err)?)
            .spawn()
            .context("starting tcpdump")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(&err)
            .unwrap_or_default()
            .contains("listening on")
        {
            if Instant::now() > deadline {
                bail!("tcpdump on {iface} in {} did not start", ns.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Capture { child, out, err })
    }

    fn finish(mut self) -> Result<usize> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let s = fs::read_to_string(&self.out)?;
        let _ = fs::remove_file(&self.out);
        let _ = fs::remove_file(&self.err);
        Ok(s.lines().filter(|l| !l.trim().is_empty()).count())
    }
}

/// Each guest of `counts` got `want(name)` copies.
fn check_counts(
    what: &str,
    counts: &[(String, usize)],
    want: impl Fn(&str) -> usize,
) -> Result<()> {
    println!("{what}: {counts:?}");
    for (name, n) in counts {
        ensure!(
            *n == want(name),
            "{what}: guest {name}'s tap transmitted {n} copies, expected {}: {counts:?}",
            want(name)
        );
    }
    Ok(())
}

/// TCP from `client` to `server` for 2 s (iperf3): at least 1 MB
/// received.
fn tcp_1mb(client: &Guest, server: &Guest) -> Result<()> {
    let what = format!("{} -> {}", client.name, server.name);
    let (rc, out) = client.iperf3_to(server, 2, "-J")?;
    let r = iperf3_json(rc, &out, &what)?;
    ensure!(
        r.bytes >= f64::from(1 << 20),
        "iperf3 {what}: {} bytes received",
        r.bytes
    );
    println!(
        "tcp {what}: {:.0} bytes, {:.0} Mbit/s",
        r.bytes,
        r.bps / 1e6
    );
    Ok(())
}

/// Pings of `size` bytes of payload with DF set: every one answered.
fn ping_df(g: &Guest, ip: &str, size: u32) -> Result<()> {
    let (_, out) = g.run(&format!("ping -c 2 -i 0.2 -w 8 -M do -s {size} {ip}"))?;
    let (tx, rx) = ping_counts(&out).with_context(|| format!("ping output: {out}"))?;
    ensure!(
        tx >= 2 && rx >= 2,
        "{} -> {ip}: {size}-byte pings with DF: {rx} of {tx} answered\n{out}",
        g.name
    );
    Ok(())
}

/// Guests of two tenants on three hosts, underlay MTU 1500 and guests at
/// MTU 1450: pings and 1 MB of TCP across hosts, full-size DF pings,
/// every broadcast once on every remote tap of its tenant and never on
/// the other tenant's, and host 3 leaving breaks nothing between 1 and 2.
fn three_hosts(kind: Kind) -> Result<()> {
    let t0 = Instant::now();
    let mut w = World::new(kind, 3, 1500, &[A, B])?;
    for h in 1..=3 {
        w.start_guest(A, h)?;
    }
    for h in 1..=2 {
        w.start_guest(B, h)?;
    }
    w.ready()?;
    println!("{kind:?}: 3 hosts, 5 guests up in {:?}", t0.elapsed());
    // The overlay costs 50 bytes: guests at 1450 over a 1500 underlay.
    w.guest_mtu(1450)?;
    for (from, to) in [
        ("a1", "10.50.0.2"),
        ("a1", "10.50.0.3"),
        ("a2", "10.50.0.3"),
    ] {
        println!(
            "{from} -> {to}: {}",
            ping_ok(w.guest(from), Ping::Iputils, to, 3)?
        );
    }
    println!(
        "b1 -> b2: {}",
        ping_ok(w.guest("b1"), Ping::Iputils, "10.50.0.12", 3)?
    );
    // The largest packet the guests' MTU allows, DF set, both ways through
    // the device with learning off (host 3).
    ping_df(w.guest("a1"), "10.50.0.3", 1450 - 28)?;
    ping_df(w.guest("a3"), "10.50.0.2", 1450 - 28)?;
    tcp_1mb(w.guest("a1"), w.guest("a3"))?;
    tcp_1mb(w.guest("a3"), w.guest("a2"))?;
    tcp_1mb(w.guest("b2"), w.guest("b1"))?;

    // A broadcast reaches each remote host's guest of its tenant once,
    // and no guest of the other tenant.
    let c = w.broadcast_counts("a1", "10.50.0.77")?;
    check_counts("a1's broadcast", &c, |g| {
        usize::from(g == "a2" || g == "a3")
    })?;
    let c = w.broadcast_counts("a3", "10.50.0.78")?;
    check_counts("a3's broadcast", &c, |g| {
        usize::from(g == "a1" || g == "a2")
    })?;
    let c = w.broadcast_counts("b2", "10.50.0.79")?;
    check_counts("b2's broadcast", &c, |g| usize::from(g == "b1"))?;
    // One subnet, two tenants: b2's address is not reachable from a1.
    let (_, out) = w.guest("a1").run("ping -c 2 -i 0.2 -w 2 10.50.0.12")?;
    let rx = ping_counts(&out).map(|c| c.1).unwrap_or(0);
    ensure!(rx == 0, "a1 reached tenant b's b2:\n{out}");

    // Host 3 leaves: its VXLAN devices go. Hosts 1 and 2 still replicate
    // to it (their FDBs still name it); nothing between them breaks.
    for t in [A, B] {
        w.host(3).sh(&format!("ip link del {}", t.vxlan()))?;
    }
    println!(
        "a1 -> a2 after host 3 left: {}",
        ping_ok(w.guest("a1"), Ping::Iputils, "10.50.0.2", 3)?
    );
    tcp_1mb(w.guest("a2"), w.guest("a1"))?;
    let c = w.broadcast_counts("a2", "10.50.0.80")?;
    check_counts("a2's broadcast after host 3 left", &c, |g| {
        usize::from(g == "a1")
    })?;
    if kind == Kind::Umlbr {
        // The vanished port is pruned by the next command that changes the
        // bridge; show still works meanwhile.
        w.host(3).umlbr_ok(&["show", "bra"])?;
        let s = w.host(1).umlbr_ok(&["show", "bra", "--json"])?;
        let v: Value = serde_json::from_str(&s)?;
        let kinds: Vec<&str> = v["ports"]
            .as_array()
            .context("ports")?
            .iter()
            .filter(|p| p["name"] == "vx100")
            .filter_map(|p| p["kind"].as_str())
            .collect();
        ensure!(kinds == ["vxlan"], "host 1's vx100 in show: {kinds:?}\n{s}");
    }
    println!("{kind:?}: done in {:?}", t0.elapsed());
    Ok(())
}

#[test]
fn three_hosts_umlbr() -> Result<()> {
    three_hosts(Kind::Umlbr)
}

#[test]
fn three_hosts_kernel() -> Result<()> {
    three_hosts(Kind::Kernel)
}

/// VLAN to VNI: ONE umlbr bridge per host, tenant a's VXLAN device (VNI
/// 100) and guests access ports of VLAN 100, tenant b's (VNI 200) of VLAN
/// 200, both tenants in one IPv4 subnet; a on hosts 1 to 3, b on 1 and 3
/// (host 3's devices learn nothing). Pings and 1 MB of TCP across hosts
/// within a tenant; every broadcast once on each remote tap of its tenant
/// and on none of the other's, on the same host either; no guest reaches
/// the other tenant's addresses; remote MACs in the FDB in their VLAN,
/// behind their VNI's device. No kernel oracle: this kernel's bridge has
/// no VLAN filtering (`three_hosts_kernel` is the same scenario with a
/// bridge per tenant).
#[test]
fn three_hosts_vlan_umlbr() -> Result<()> {
    let t0 = Instant::now();
    let mut w = World::vlan_mapped(3, 1500, &[A, B])?;
    for h in 1..=3 {
        w.start_guest(A, h)?;
    }
    for h in [1, 3] {
        w.start_guest(B, h)?;
    }
    w.ready()?;
    println!("VLAN-mapped: 3 hosts, 5 guests up in {:?}", t0.elapsed());
    w.guest_mtu(1450)?;
    for (from, to) in [
        ("a1", "10.50.0.2"),
        ("a1", "10.50.0.3"),
        ("a2", "10.50.0.3"),
        ("b1", "10.50.0.13"),
    ] {
        println!(
            "{from} -> {to}: {}",
            ping_ok(w.guest(from), Ping::Iputils, to, 3)?
        );
    }
    ping_df(w.guest("a3"), "10.50.0.1", 1450 - 28)?;
    ping_df(w.guest("b3"), "10.50.0.11", 1450 - 28)?;
    tcp_1mb(w.guest("a1"), w.guest("a3"))?;
    tcp_1mb(w.guest("b3"), w.guest("b1"))?;

    let c = w.broadcast_counts("a1", "10.50.0.77")?;
    check_counts("a1's broadcast", &c, |g| {
        usize::from(g == "a2" || g == "a3")
    })?;
    let c = w.broadcast_counts("a3", "10.50.0.78")?;
    check_counts("a3's broadcast", &c, |g| {
        usize::from(g == "a1" || g == "a2")
    })?;
    let c = w.broadcast_counts("b1", "10.50.0.79")?;
    check_counts("b1's broadcast", &c, |g| usize::from(g == "b3"))?;
    let c = w.broadcast_counts("b3", "10.50.0.80")?;
    check_counts("b3's broadcast", &c, |g| usize::from(g == "b1"))?;
    // One subnet, two tenants: neither reaches the other's guests, on its
    // own host (b1 for a1) or across the overlay.
    for (from, to) in [
        ("a1", "10.50.0.11"),
        ("a1", "10.50.0.13"),
        ("b3", "10.50.0.3"),
    ] {
        let (_, out) = w.guest(from).run(&format!("ping -c 2 -i 0.2 -w 2 {to}"))?;
        let rx = ping_counts(&out).map(|c| c.1).unwrap_or(0);
        ensure!(rx == 0, "{from} reached the other tenant's {to}:\n{out}");
    }
    // Host 1 learned a2's MAC in VLAN 100 behind vx100, b3's in VLAN 200
    // behind vx200.
    let fdb = w
        .host(1)
        .umlbr_ok(&["fdb", "show", VLAN_BRIDGE, "--json"])?;
    let v: Value = serde_json::from_str(&fdb).with_context(|| format!("fdb show: {fdb}"))?;
    let entries = v
        .as_array()
        .or_else(|| v["entries"].as_array())
        .context("fdb entries")?;
    for (g, port, vlan) in [("a2", "vx100", 100), ("b3", "vx200", 200)] {
        let mac = w.guest(g).mac.clone();
        let found: Vec<&Value> = entries
            .iter()
            .filter(|e| e["mac"] == mac.as_str())
            .collect();
        ensure!(
            found.len() == 1 && found[0]["port"] == port && found[0]["vlan"] == vlan,
            "host 1's FDB for {g} ({mac}): {found:?}, expected one entry on {port} in VLAN {vlan}"
        );
    }
    println!("VLAN-mapped: done in {:?}", t0.elapsed());
    Ok(())
}

/// A jumbo underlay (MTU 1550) under guests that keep MTU 1500: full-size
/// DF pings and 1 MB of TCP between two hosts.
fn jumbo_underlay(kind: Kind) -> Result<()> {
    let mut w = World::new(kind, 2, 1550, &[A])?;
    for h in 1..=2 {
        w.start_guest(A, h)?;
    }
    w.ready()?;
    let mtu = w.host(1).sh("cat /sys/class/net/vx100/mtu")?;
    ensure!(
        mtu.trim() == "1500",
        "vx100's MTU over a 1550 underlay: {mtu}"
    );
    ping_df(w.guest("a1"), "10.50.0.2", 1500 - 28)?;
    ping_df(w.guest("a2"), "10.50.0.1", 1500 - 28)?;
    tcp_1mb(w.guest("a1"), w.guest("a2"))?;
    Ok(())
}

#[test]
fn jumbo_underlay_umlbr() -> Result<()> {
    jumbo_underlay(Kind::Umlbr)
}

#[test]
fn jumbo_underlay_kernel() -> Result<()> {
    jumbo_underlay(Kind::Kernel)
}

/// The masquerade across the overlay: host 1 is the gateway (10.50.0.254)
/// of a guest on host 2 (MTU 1500 over a jumbo underlay) and masquerades
/// it onto a LAN whose MTU is 1400. The guest's small pings reach the LAN;
/// a 1500-byte ping with DF is answered by host 1 with "fragmentation
/// needed, MTU 1400" (the fast path leaves packets above the uplink's MTU
/// to the kernel), which comes back to the guest across the overlay, and
/// pings of 1400 bytes then pass.
fn masquerade_pmtu(kind: Kind) -> Result<()> {
    const GW: &str = "10.50.0.254";
    let mut w = World::with_gateway(kind, 2, 1550, &[A], Some("10.50.0.254/24"))?;
    let lan = Netns::without_ipv6("vxlan")?;
    let h1 = w.host(1);
    h1.sh(&format!(
        "ip link add lan0 mtu 1400 type veth peer name eth0 netns {} mtu 1400 \
         && ip addr add 192.0.2.1/24 dev lan0 && ip link set lan0 up",
        lan.name
    ))?;
    lan.sh("ip addr add 192.0.2.2/24 dev eth0 && ip link set eth0 up")?;
    match kind {
        Kind::Umlbr => {
            h1.umlbr_ok(&["attach", "lan0", "--masquerade"])?;
        }
        Kind::Kernel => {
            h1.sh("sysctl -qw net.ipv4.ip_forward=1 && \
                 iptables -t nat -A POSTROUTING -s 10.50.0.0/24 -o lan0 -j MASQUERADE")?;
        }
    }
    w.start_guest_via(A, 2, Some(GW))?;
    w.ready()?;
    let g = w.guest("a2");
    println!("a2 -> LAN: {}", ping_ok(g, Ping::Iputils, "192.0.2.2", 3)?);
    let (_, out) = g.run("ping -c 2 -i 0.3 -w 3 -M do -s 1472 192.0.2.2")?;
    println!("a2 -> LAN, 1500 bytes, DF:\n{out}");
    ensure!(
        out.contains("mtu = 1400") || out.contains("mtu=1400"),
        "a2 got no fragmentation-needed (MTU 1400) for a 1500-byte DF ping:\n{out}"
    );
    ping_df(g, "192.0.2.2", 1400 - 28)?;
    drop(lan);
    Ok(())
}

#[test]
fn masquerade_pmtu_umlbr() -> Result<()> {
    masquerade_pmtu(Kind::Umlbr)
}

#[test]
fn masquerade_pmtu_kernel() -> Result<()> {
    masquerade_pmtu(Kind::Kernel)
}

/// EVPN's local MACs (`umlbr publish`): host 1's VXLAN device is also a
/// port of an "anchor" kernel bridge (as FRR's zebra requires of a VNI's
/// device), with a veth end `lm100` as the port umlbr publishes on. The
/// anchor changes nothing of the switching (pings, one copy of each
/// broadcast); `publish` puts a1's MAC, not a2's (behind the VXLAN port),
/// on lm100 as a static (not permanent) entry, where zebra reads local
/// MACs; again changes nothing; after a1's port is detached, removes it.
#[test]
fn evpn_publish_umlbr() -> Result<()> {
    let mut w = World::new(Kind::Umlbr, 2, 1550, &[A])?;
    w.host(1).sh(
        "ip link add evpn100 type bridge && ip link set vx100 master evpn100 \
         && ip link add lm100 type veth peer name lm100p && ip link set lm100 master evpn100 \
         && ip link set lm100p up && ip link set lm100 up && ip link set evpn100 up",
    )?;
    for h in 1..=2 {
        w.start_guest(A, h)?;
    }
    w.ready()?;
    println!(
        "a1 -> a2: {}",
        ping_ok(w.guest("a1"), Ping::Iputils, "10.50.0.2", 3)?
    );
    let c = w.broadcast_counts("a2", "10.50.0.81")?;
    check_counts("a2's broadcast", &c, |g| usize::from(g == "a1"))?;
    let (a1, a2) = (w.guest("a1").mac.clone(), w.guest("a2").mac.clone());
    let h1 = w.host(1);
    let publish = || -> Result<Value> {
        let out = h1.umlbr_ok(&["publish", "bra", "--to", "lm100", "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("publish --json: {out}"))
    };
    let on_lm100 = || -> Result<Vec<(String, String)>> {
        let out = h1.sh("bridge -j fdb show br evpn100")?;
        let v: Value = serde_json::from_str(&out)?;
        Ok(v.as_array()
            .context("bridge -j fdb")?
            .iter()
            .filter(|e| e["ifname"] == "lm100" && e["master"] == "evpn100")
            .filter(|e| e["state"] != "permanent")
            .map(|e| {
                (
                    e["mac"].as_str().unwrap_or("").to_string(),
                    e["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect())
    };
    let p = publish()?;
    println!("publish: {p}");
    ensure!(p["added"] == serde_json::json!([a1]), "added: {p}");
    let fdb = on_lm100()?;
    ensure!(
        fdb == vec![(a1.clone(), "static".to_string())],
        "evpn100's entries on lm100: {fdb:?} (a1 {a1}, a2 {a2})"
    );
    let p = publish()?;
    ensure!(
        p["added"] == serde_json::json!([])
            && p["removed"] == serde_json::json!([])
            && p["kept"] == 1,
        "publish again: {p}"
    );
    // Publishing on one of umlbr's own ports is refused.
    let out = h1.umlbr(&["publish", "bra", "--to", "vx100"])?;
    ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("port of the bridge"),
        "publish --to vx100: {out:?}"
    );
    h1.umlbr_ok(&["detach", "ta1"])?;
    let p = publish()?;
    ensure!(p["removed"] == serde_json::json!([a1]), "after detach: {p}");
    ensure!(on_lm100()?.is_empty(), "left on lm100: {:?}", on_lm100()?);
    Ok(())
}

/// EVPN's local MACs in a VLAN-mapped world (one bridge, VNI 100 as VLAN
/// 100 and VNI 200 as VLAN 200): host 1 has an anchor kernel bridge per
/// VNI (`evpnVNI` with `vxVNI` and a veth end `lmVNI`), as zebra wants
/// one bridge per VNI. `publish br0 --to lm100 --vlan 100` puts tenant
/// a's local guest a1 there and nothing of tenant b's (b1, on the same
/// bridge): zebra would advertise b1 in VNI 100, and the other hosts'
/// VXLAN devices would send tenant a's frames for that MAC to this host.
/// Likewise lm200 gets b1 alone; without `--vlan`, the default VLAN's
/// (none here).
#[test]
fn evpn_publish_vlan_umlbr() -> Result<()> {
    let mut w = World::vlan_mapped(2, 1550, &[A, B])?;
    for t in [A, B] {
        let vni = t.vni;
        w.host(1).sh(&format!(
            "ip link add evpn{vni} type bridge && ip link set vx{vni} master evpn{vni} \
             && ip link add lm{vni} type veth peer name lm{vni}p \
             && ip link set lm{vni} master evpn{vni} \
             && ip link set lm{vni}p up && ip link set lm{vni} up && ip link set evpn{vni} up"
        ))?;
    }
    w.start_guest(A, 1)?;
    w.start_guest(B, 1)?;
    w.start_guest(A, 2)?;
    w.ready()?;
    // Both local guests and the remote one in the FDB.
    println!(
        "a1 -> a2: {}",
        ping_ok(w.guest("a1"), Ping::Iputils, "10.50.0.2", 3)?
    );
    let c = w.broadcast_counts("b1", "10.50.0.82")?;
    check_counts("b1's broadcast", &c, |_| 0)?;
    let (a1, b1) = (w.guest("a1").mac.clone(), w.guest("b1").mac.clone());
    let h1 = w.host(1);
    let publish = |to: &str, vlan: Option<&str>| -> Result<Value> {
        let mut args = vec!["publish", VLAN_BRIDGE, "--to", to, "--json"];
        if let Some(v) = vlan {
            args.extend(["--vlan", v]);
        }
        let out = h1.umlbr_ok(&args)?;
        serde_json::from_str(&out).with_context(|| format!("publish --json: {out}"))
    };
    let on = |port: &str| -> Result<Vec<String>> {
        let out = h1.sh(&format!("bridge -j fdb show brport {port}"))?;
        let v: Value = serde_json::from_str(&out)?;
        Ok(v.as_array()
            .context("bridge -j fdb")?
            .iter()
            .filter(|e| e["state"] == "static")
            .filter_map(|e| e["mac"].as_str().map(str::to_string))
            .collect())
    };
    let p = publish("lm100", Some("100"))?;
    println!("publish --to lm100 --vlan 100: {p}");
    ensure!(
        on("lm100")? == vec![a1.clone()],
        "lm100 (VNI 100) carries {:?}; expected a1 ({a1}) alone, not b1 ({b1}) of VLAN 200",
        on("lm100")?
    );
    let p = publish("lm200", Some("200"))?;
    println!("publish --to lm200 --vlan 200: {p}");
    ensure!(
        on("lm200")? == vec![b1.clone()],
        "lm200 (VNI 200) carries {:?}; expected b1 ({b1}) alone",
        on("lm200")?
    );
    ensure!(p["vlan"] == 200, "publish --json names its VLAN: {p}");
    // Without --vlan: the default VLAN, where no guest of this bridge is;
    // what was there goes.
    let p = publish("lm200", None)?;
    println!("publish --to lm200: {p}");
    ensure!(
        p["removed"] == serde_json::json!([b1]) && on("lm200")?.is_empty(),
        "publish without --vlan: {p}"
    );
    Ok(())
}
