//! DHCP, DNS and router advertisements on a bridge's subnet (`umlbr up
//! --dhcp`, issue 18), and IPv6 switched between guests, with User Mode
//! Linux guests that configure nothing but a stock client inside: busybox
//! `udhcpc` for IPv4, the kernel's SLAAC for IPv6.
//!
//! The guests share the host's root (hostfs): a guest must never write a
//! host file. udhcpc runs with a script of the test's own (`-s`) that
//! writes only into the guest's private directory, and the guest's
//! /etc/resolv.conf is a bind mount (in the UML kernel, not the host's)
//! of a file in that directory.
//!
//! The "LAN" DNS server is a dnsmasq in a namespace of its own that
//! answers `name.lan`; the bridge's namespace resolves through it by
//! `/etc/netns/NS/resolv.conf` (made and removed by the test), which
//! `ip netns exec` mounts over /etc/resolv.conf for umlbr and so for the
//! bridge's dnsmasq.
//!
//! Needs root, /usr/bin/linux.uml, busybox, dnsmasq, tcpdump, iperf3.
//!   cargo test -p umlbr-tests --test dhcp -- --test-threads=1 --nocapture
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use umlbr_tests::{
    netns::Netns,
    uml::{Guest, GuestSpec, Transport},
};

const BR: &str = "br0";
const LAN_DNS: &str = "10.9.0.2";
const NAME_LAN_ADDR: &str = "10.9.0.77";

/// Files a test made outside its namespaces, deleted on drop: the
/// bridge's lease and static-lease files (kept by `down` on purpose),
/// /etc/netns/NS.
#[derive(Default)]
struct Files(Vec<PathBuf>);

impl Drop for Files {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn show(ns: &Netns) -> Result<Value> {
    let out = ns.umlbr_ok(&["show", BR, "--json"])?;
    serde_json::from_str(&out).context("show --json")
}

/// The bridge's dnsmasq pid, and its lease and hosts files (push them
/// to a `Files` with `state_files`).
fn dhcp_state(ns: &Netns) -> Result<(Option<i64>, PathBuf, PathBuf)> {
    let v = show(ns)?;
    let d = &v["dhcp"];
    ensure!(d.is_object(), "show --json has no dhcp: {v}");
    let path = |k: &str| -> Result<PathBuf> {
        Ok(PathBuf::from(
            d[k].as_str().with_context(|| format!("no {k} in {d}"))?,
        ))
    };
    Ok((d["pid"].as_i64(), path("lease_file")?, path("hosts_file")?))
}

/// Every file of the bridge's DHCP service: the lease and hosts files
/// `show` names, and the conf and pid file beside the lock (left by a
/// test that fails before `down`).
fn state_files(lease_file: &Path) -> Vec<PathBuf> {
    let stem = lease_file
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".leases").to_string())
        .unwrap_or_default();
    vec![
        lease_file.to_path_buf(),
        lease_file.with_extension("hosts"),
        PathBuf::from(format!("/run/umlbr/{stem}.dnsmasq.conf")),
        PathBuf::from(format!("/run/umlbr/{stem}.dnsmasq.pid")),
    ]
}

fn leases(ns: &Netns) -> Result<Vec<Value>> {
    let out = ns.umlbr_ok(&["leases", BR, "--json"])?;
    let v: Value = serde_json::from_str(&out).context("leases --json")?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if t0.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A LAN namespace with a DNS server answering name.lan, reached from
/// `host` over a veth pair, and `host`'s /etc/netns resolv.conf naming
/// it (pushed to `files`).
fn lan_dns(host: &Netns, files: &mut Files) -> Result<Netns> {
    let lan = Netns::new("dhcl")?;
    host.sh(&format!(
        "ip link add dl0 type veth peer name dl1 netns {} && \
         ip addr add 10.9.0.1/24 dev dl0 && ip link set dl0 up",
        lan.name
    ))?;
    lan.sh(&format!(
        "ip addr add {LAN_DNS}/24 dev dl1 && ip link set dl1 up"
    ))?;
    let log = std::env::temp_dir().join(format!("{}-dnsmasq.log", lan.name));
    files.0.push(log.clone());
    // In the foreground, no pid file, no config but the flags: killed
    // with the namespace.
    lan.spawn_logged(
        &[
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--pid-file",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address",
            LAN_DNS,
            "--except-interface=lo",
            &format!("--host-record=name.lan,{NAME_LAN_ADDR}"),
        ],
        &log,
    )?;
    let dir = PathBuf::from(format!("/etc/netns/{}", host.name));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    files.0.push(dir.clone());
    std::fs::write(dir.join("resolv.conf"), format!("nameserver {LAN_DNS}\n"))?;
    wait_until(
        "the LAN's DNS server answers",
        Duration::from_secs(10),
        || {
            let out = host.sh_output(&format!("busybox nslookup name.lan {LAN_DNS}"))?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .contains(NAME_LAN_ADDR)
                .then_some(()))
        },
    )?;
    Ok(lan)
}

/// udhcpc's script: configures the interface from the lease, and writes
/// the resolver and what it got into `$R` (the guest's own directory)
/// alone.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    : > "$R/resolv.conf"
    for d in $dns; do echo "nameserver $d" >> "$R/resolv.conf"; done
    echo "ip=$ip router=$router dns=$dns" > "$R/lease"
    ;;
esac
exit 0
"#;

/// Prepare `g` for udhcpc: its result dir, the script, and its
/// /etc/resolv.conf bind-mounted (inside the guest) from the dir.
fn dhcp_client(g: &Guest) -> Result<PathBuf> {
    let r = g.dir().join("tmp/dhcp");
    std::fs::create_dir_all(&r)?;
    let script = r.join("udhcpc.sh");
    std::fs::write(&script, UDHCPC_SCRIPT)?;
    std::fs::write(r.join("resolv.conf"), "")?;
    let r_s = r.display().to_string();
    // The mount is the UML kernel's: the host's file is untouched, and
    // the guest's resolver reads what udhcpc's script wrote.
    g.run_ok(&format!(
        "chmod 755 {r_s}/udhcpc.sh && mount --bind {r_s}/resolv.conf /etc/resolv.conf && \
         grep -q ' /etc/resolv.conf ' /proc/mounts"
    ))
    .with_context(|| format!("guest {}: bind-mounting resolv.conf", g.name))?;
    Ok(r)
}

/// Run udhcpc in `g` once (until it has a lease, at most ~10 s), sending
/// host name `hostname`; what the script recorded.
fn udhcpc(g: &Guest, r: &Path, hostname: &str) -> Result<String> {
    let r_s = r.display().to_string();
    let _ = std::fs::remove_file(r.join("lease"));
    let (rc, out) = g.run_timeout(
        &format!(
            "R={r_s} busybox udhcpc -i {} -s {r_s}/udhcpc.sh -q -n -t 10 -T 1 -x hostname:{hostname}",
            g.iface
        ),
        Duration::from_secs(30),
    )?;
    ensure!(rc == 0, "guest {}: udhcpc exited {rc}:\n{out}", g.name);
    std::fs::read_to_string(r.join("lease"))
        .with_context(|| format!("guest {}: udhcpc wrote no lease:\n{out}", g.name))
}

fn field<'a>(lease: &'a str, k: &str) -> &'a str {
    lease
        .split_whitespace()
        .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
        .unwrap_or("")
}

fn ipv4(s: &str) -> Result<std::net::Ipv4Addr> {
    s.parse()
        .with_context(|| format!("{s:?} is no IPv4 address"))
}

fn row<'a>(rows: &'a [Value], mac: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["mac"] == mac)
}

/// A guest gets a lease in the range with a default route via the bridge
/// (and reaches the LAN through the masquerade by it) and the bridge as
/// DNS server, which resolves a LAN name (forwarded to
/// the host's resolver) and the guests' own names; a static lease gives
/// its fixed address; `leases --json` lists both; the lease survives a
/// dnsmasq killed and restarted by `umlbr watch`, and `down`/`up`.
#[test]
fn dhcp_lease_route_dns_static_and_restart() -> Result<()> {
    let t0 = Instant::now();
    let mut files = Files::default();
    let ns = Netns::without_ipv6("dhc4")?;
    let _lan = lan_dns(&ns, &mut files)?;
    // Masqueraded out of dl0, the LAN's veth (which knows no route to
    // the guests' subnet: a reply reaches a guest only translated).
    let up = [
        "up",
        BR,
        "--address",
        "192.168.2.1/24",
        "--masquerade",
        "dl0",
        "--dhcp",
        "--dhcp-range",
        "192.168.2.100-192.168.2.150",
    ];
    ns.umlbr_ok(&up)?;
    let (pid, lease_file, hosts_file) = dhcp_state(&ns)?;
    files.0.extend(state_files(&lease_file));
    ensure!(pid.is_some(), "dnsmasq is not running after up");
    let (m1, m2) = ("02:00:00:00:00:02", "02:00:00:00:00:03");
    ns.umlbr_ok(&[
        "lease",
        "add",
        BR,
        m2,
        "192.168.2.50",
        "--hostname",
        "fixed",
    ])?;
    for t in ["tap0", "tap1"] {
        ns.umlbr_ok(&["tap", "add", t])?;
        ns.umlbr_ok(&["attach", t])?;
    }
    let guests = Guest::boot_all(
        &ns.name,
        &[
            GuestSpec::unaddressed("g1", Transport::Legacy, "tap0", m1),
            GuestSpec::unaddressed("g2", Transport::Legacy, "tap1", m2),
        ],
    )?;
    let (g1, g2) = (&guests[0], &guests[1]);
    let (r1, r2) = (dhcp_client(g1)?, dhcp_client(g2)?);

    let l1 = udhcpc(g1, &r1, "dyn1")?;
    println!("g1's lease: {l1}");
    let a1 = ipv4(field(&l1, "ip"))?;
    ensure!(
        (100..=150).contains(&a1.octets()[3]) && a1.octets()[..3] == [192, 168, 2],
        "g1 got {a1}, outside 192.168.2.100-150"
    );
    ensure!(field(&l1, "router") == "192.168.2.1", "router: {l1}");
    ensure!(field(&l1, "dns") == "192.168.2.1", "dns: {l1}");
    let route = g1.run_ok("ip route show default")?;
    ensure!(
        route.contains("via 192.168.2.1"),
        "g1's default route: {route}"
    );
    g1.run_ok("ping -c 2 -W 3 192.168.2.1")?;
    // The LAN, through the masquerade, by the route DHCP gave.
    g1.run_ok(&format!("ping -c 2 -W 3 {LAN_DNS}"))
        .context("g1 to the LAN through the masquerade")?;
    let l2 = udhcpc(g2, &r2, "ignored")?;
    ensure!(
        field(&l2, "ip") == "192.168.2.50",
        "g2's static lease: {l2}"
    );

    // DNS: a LAN name (forwarded to the host's resolver, the LAN's
    // dnsmasq), and the guests' names (from DHCP and the static lease).
    let out = g1.run_ok("busybox nslookup -type=a name.lan")?;
    ensure!(out.contains(NAME_LAN_ADDR), "name.lan from g1: {out}");
    let out = g1.run_ok("busybox nslookup -type=a fixed")?;
    ensure!(out.contains("192.168.2.50"), "fixed from g1: {out}");
    let out = g2.run_ok("busybox nslookup -type=a dyn1")?;
    ensure!(out.contains(&a1.to_string()), "dyn1 from g2: {out}");

    let rows = leases(&ns)?;
    println!("leases: {rows:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let r = row(&rows, m1).context("g1's lease not listed")?;
    ensure!(
        r["address"] == a1.to_string() && r["static"] == false,
        "{r}"
    );
    ensure!(r["hostname"] == "dyn1", "{r}");
    ensure!(r["expires"].as_u64().is_some_and(|e| e > now), "{r}");
    let r = row(&rows, m2).context("g2's lease not listed")?;
    ensure!(r["address"] == "192.168.2.50" && r["static"] == true, "{r}");
    ensure!(r["hostname"] == "fixed", "{r}");

    // dnsmasq dies; `umlbr watch` starts it again, with the leases.
    let old = pid.context("no pid")?;
    // SAFETY: plain kill(2) of the dnsmasq `show` names in our namespace.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let log = std::env::temp_dir().join(format!("{}-watch.log", ns.name));
    files.0.push(log.clone());
    let mut watch = ns.spawn_logged(
        &[umlbr_tests::umlbr_bin().to_str().unwrap(), "watch", BR],
        &log,
    )?;
    let new = wait_until("watch restarts dnsmasq", Duration::from_secs(15), || {
        Ok(dhcp_state(&ns)?.0.filter(|&p| p != old))
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let new = new?;
    let wlog = std::fs::read_to_string(&log).unwrap_or_default();
    ensure!(wlog.contains("started again"), "watch's output: {wlog}");
    println!("dnsmasq {old} killed; watch started {new}");
    let l1b = udhcpc(g1, &r1, "dyn1")?;
    ensure!(
        field(&l1b, "ip") == a1.to_string(),
        "after a restart g1 got {l1b}, not {a1}"
    );

    // down stops dnsmasq and keeps the leases; up serves them again.
    ns.umlbr_ok(&["down", BR])?;
    let left: Vec<String> = ns
        .pids()
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).ok())
        .filter(|c| c.contains("dnsmasq") && c.contains(".dnsmasq.conf"))
        .collect();
    ensure!(left.is_empty(), "dnsmasq left after down: {left:?}");
    ensure!(
        lease_file.exists() && hosts_file.exists(),
        "down deleted the leases"
    );
    ns.umlbr_ok(&up)?;
    for t in ["tap0", "tap1"] {
        ns.umlbr_ok(&["attach", t])?;
    }
    let rows = leases(&ns)?;
    ensure!(
        row(&rows, m1).is_some_and(|r| r["address"] == a1.to_string()),
        "g1's lease after down/up: {rows:?}"
    );
    ensure!(
        row(&rows, m2).is_some_and(|r| r["static"] == true),
        "static lease after down/up: {rows:?}"
    );
    let l1c = udhcpc(g1, &r1, "dyn1")?;
    ensure!(
        field(&l1c, "ip") == a1.to_string(),
        "after down/up g1 got {l1c}, not {a1}"
    );
    let out = g1.run_ok("busybox nslookup -type=a name.lan")?;
    ensure!(out.contains(NAME_LAN_ADDR), "name.lan after down/up: {out}");

    ns.umlbr_ok(&["lease", "del", BR, m2])?;
    ensure!(
        row(&leases(&ns)?, m2).is_none_or(|r| r["static"] == false),
        "lease del left the static lease"
    );
    drop(guests);
    ns.umlbr_ok(&["down", BR])?;
    println!("took {:?}", t0.elapsed());
    Ok(())
}

/// The address SLAAC makes from `mac` in the /64 `prefix` (modified
/// EUI-64), as `ip` prints it.
fn eui64(prefix: &str, mac: &str) -> String {
    let p: std::net::Ipv6Addr = prefix.parse().unwrap_or(std::net::Ipv6Addr::UNSPECIFIED);
    let b: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap_or(0))
        .collect();
    let mut o = p.octets();
    o[8..].copy_from_slice(&[b[0] ^ 2, b[1], b[2], 0xff, 0xfe, b[3], b[4], b[5]]);
    std::net::Ipv6Addr::from(o).to_string()
}

/// An IPv6 prefix on the bridge with `--dhcp`: umlbr's dnsmasq sends
/// router advertisements with the prefix (SLAAC) and the DNS server
/// (RDNSS); a guest with nothing configured gets an address in the
/// prefix and reaches the bridge's IPv6 address.
#[test]
fn slaac_from_router_advertisements() -> Result<()> {
    let t0 = Instant::now();
    let mut files = Files::default();
    let ns = Netns::new("dhc6")?;
    ns.umlbr_ok(&[
        "up",
        BR,
        "--address",
        "192.168.2.1/24",
        "--address",
        "fd00:2::1/64",
        "--dhcp",
    ])?;
    let (_, lease_file, _) = dhcp_state(&ns)?;
    files.0.extend(state_files(&lease_file));
    let v = show(&ns)?;
    ensure!(
        v["addresses"].to_string().contains("fd00:2::1/64"),
        "show: {}",
        v["addresses"]
    );
    ns.umlbr_ok(&["tap", "add", "tap0"])?;
    ns.umlbr_ok(&["attach", "tap0"])?;
    // One router advertisement, as it goes out of the bridge.
    let cap = std::env::temp_dir().join(format!("{}-ra.txt", ns.name));
    files.0.push(cap.clone());
    let mut tcpdump = ns.spawn_logged(
        &[
            "tcpdump",
            "-i",
            BR,
            "-n",
            "-vv",
            "-l",
            "-c",
            "1",
            "icmp6 and ip6[40] == 134",
        ],
        &cap,
    )?;
    let mac = "02:00:00:00:00:02";
    let g = Guest::boot(
        &ns.name,
        &GuestSpec::unaddressed("g6", Transport::Legacy, "tap0", mac).ipv6(true),
    )?;
    let want = eui64("fd00:2::", mac);
    let got = wait_until(
        "a SLAAC address in fd00:2::/64",
        Duration::from_secs(30),
        || {
            let out = g.run_ok(&format!("ip -6 -o addr show dev {} scope global", g.iface))?;
            Ok(out.contains(&want).then_some(out))
        },
    )?;
    println!("guest: {got}");
    g.run_ok("ping -6 -c 3 -W 3 fd00:2::1")?;
    let ra = wait_until("tcpdump saw an RA", Duration::from_secs(15), || {
        Ok(tcpdump
            .try_wait()?
            .map(|_| std::fs::read_to_string(&cap).unwrap_or_default()))
    });
    let _ = tcpdump.kill();
    let _ = tcpdump.wait();
    let ra = ra?;
    println!("{ra}");
    ensure!(
        ra.contains("prefix info") && ra.contains("fd00:2::/64"),
        "RA: {ra}"
    );
    ensure!(
        ra.contains("rdnss"),
        "no DNS server (RDNSS) in the RA: {ra}"
    );
    drop(g);
    ns.umlbr_ok(&["down", BR])?;
    println!("took {:?}", t0.elapsed());
    Ok(())
}

/// IPv6 between guests on an IPv6-only bridge: neighbour discovery,
/// link-local and global pings, a TCP transfer, and the host.
#[test]
fn ipv6_between_guests() -> Result<()> {
    let t0 = Instant::now();
    let ns = Netns::new("dhc6s")?;
    ns.umlbr_ok(&["up", BR, "--address", "fd00:3::1/64"])?;
    for t in ["tap0", "tap1"] {
        ns.umlbr_ok(&["tap", "add", t])?;
        ns.umlbr_ok(&["attach", t])?;
    }
    let (m1, m2) = ("02:00:00:00:00:02", "02:00:00:00:00:03");
    let guests = Guest::boot_all(
        &ns.name,
        &[
            GuestSpec::new("g1", Transport::Legacy, "tap0", m1, "fd00:3::2/64").ipv6(true),
            GuestSpec::new("g2", Transport::Legacy, "tap1", m2, "fd00:3::3/64").ipv6(true),
        ],
    )?;
    let (g1, g2) = (&guests[0], &guests[1]);
    // Duplicate address detection first (neighbour solicitations too).
    for g in [g1, g2] {
        wait_until("DAD done", Duration::from_secs(20), || {
            let out = g.run_ok(&format!("ip -6 -o addr show dev {} tentative", g.iface))?;
            let ll = g.run_ok(&format!("ip -6 -o addr show dev {} scope link", g.iface))?;
            Ok((out.trim().is_empty() && ll.contains("fe80::")).then_some(()))
        })?;
    }
    let ll2 = eui64("fe80::", m2);
    let out = g2.run_ok(&format!("ip -6 -o addr show dev {} scope link", g2.iface))?;
    ensure!(out.contains(&ll2), "g2's link-local is not {ll2}: {out}");
    g1.run_ok(&format!("ping -6 -c 3 -W 3 {ll2}%{}", g1.iface))?;
    g1.run_ok("ping -6 -c 3 -W 3 fd00:3::3")?;
    g2.run_ok("ping -6 -c 3 -W 3 fd00:3::1")?;
    let neigh = g1.run_ok(&format!("ip -6 neigh show dev {}", g1.iface))?;
    ensure!(
        neigh.contains("fd00:3::3") && neigh.contains(m2),
        "g1 did not resolve g2 by neighbour discovery: {neigh}"
    );
    let (rc, out) = g1.iperf3_to(g2, 2, "-6")?;
    ensure!(rc == 0, "iperf3 over IPv6: {out}");
    println!(
        "{}",
        out.lines().rev().take(4).collect::<Vec<_>>().join("\n")
    );
    let fdb = ns.umlbr_ok(&["fdb", "show", BR])?;
    ensure!(fdb.contains(m1) && fdb.contains(m2), "fdb: {fdb}");
    drop(guests);
    ns.umlbr_ok(&["down", BR])?;
    println!("took {:?}", t0.elapsed());
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// `umlbr up --dhcp`.
    Umlbr,
    /// The recipe it replaces: a Linux bridge and a dnsmasq started by
    /// hand on the bridge's address (`dnsmasq -a 192.168.2.1
    /// --bind-interfaces`).
    Kernel,
}

/// Attack: a LAN host uses the bridge's DNS server (an open resolver on
/// the LAN: amplification, the host's resolvers and the guests' names
/// for anyone). It sends queries to the host's LAN address and, routed
/// through the host, to the bridge's own address, which the host
/// accepts on its LAN interface (weak host model). A guest on the
/// bridge must get answers (the control). Returns whether the LAN got
/// an answer.
fn lan_asks_the_bridges_dns(kind: Kind) -> Result<bool> {
    let mut files = Files::default();
    let ns = Netns::without_ipv6("dhcatk")?;
    let lan = Netns::without_ipv6("dhcatkl")?;
    let guest = Netns::without_ipv6("dhcatkg")?;
    ns.sh(&format!(
        "ip link add dl0 type veth peer name dl1 netns {} && \
         ip addr add 10.9.0.1/24 dev dl0 && ip link set dl0 up",
        lan.name
    ))?;
    lan.sh("ip addr add 10.9.0.2/24 dev dl1 && ip link set dl1 up && \
            ip route add 192.168.2.0/24 via 10.9.0.1")?;
    // The host's resolver: a name only it knows.
    let dir = PathBuf::from(format!("/etc/netns/{}", ns.name));
    std::fs::create_dir_all(&dir)?;
    files.0.push(dir.clone());
    let log = std::env::temp_dir().join(format!("{}-dnsmasq.log", ns.name));
    files.0.push(log.clone());
    match kind {
        Kind::Umlbr => {
            ns.umlbr_ok(&["up", BR, "--address", "192.168.2.1/24", "--dhcp"])?;
            let (_, l, _) = dhcp_state(&ns)?;
            files.0.extend(state_files(&l));
        }
        Kind::Kernel => {
            ns.sh(&format!(
                "ip link add {BR} type bridge && ip addr add 192.168.2.1/24 dev {BR} && \
                 ip link set {BR} up"
            ))?;
            ns.spawn_logged(
                &[
                    "dnsmasq",
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--pid-file",
                    "--no-hosts",
                    "--listen-address=192.168.2.1",
                    "--bind-interfaces",
                    "--except-interface=lo",
                    "--host-record=guests.only,192.168.2.77",
                ],
                &log,
            )?;
        }
    }
    ns.sh(&format!(
        "ip link add gv0 type veth peer name gv1 netns {} && ip link set gv0 up",
        guest.name
    ))?;
    match kind {
        Kind::Umlbr => {
            ns.umlbr_ok(&["attach", "gv0"])?;
            // A name the bridge's dnsmasq serves: a static lease's.
            ns.umlbr_ok(&[
                "lease",
                "add",
                BR,
                "02:00:00:00:00:77",
                "192.168.2.77",
                "--hostname",
                "guests-only",
            ])?;
        }
        Kind::Kernel => ns.sh(&format!("ip link set gv0 master {BR}")).map(drop)?,
    }
    // GRO gives the veth NAPI, without which the frames XDP redirects
    // into the port never reach the guest (turned on once the link is up:
    // before, the kernel does not enable NAPI).
    guest.sh(
        "ip link set gv1 address 02:00:00:00:00:77 && ip addr add 192.168.2.9/24 dev gv1 && \
         ip link set gv1 up && ethtool -K gv1 gro on",
    )?;
    if kind == Kind::Umlbr {
        // dnsmasq serves a static lease's name once the lease is held
        // (the client's script does nothing: the address is set above).
        guest.sh("busybox udhcpc -i gv1 -n -q -t 10 -T 1 -s /bin/true -x hostname:guests-only")?;
    }
    let name = match kind {
        Kind::Umlbr => "guests-only",
        Kind::Kernel => "guests.only",
    };
    let ask = |who: &Netns, server: &str| -> Result<bool> {
        let out = who.sh_output(&format!(
            "timeout 10 busybox nslookup -type=a -timeout=2 -retry=1 {name} {server}"
        ))?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("192.168.2.77"))
    };
    // The control: the guest is answered (once dnsmasq listens).
    wait_until("the guest gets an answer", Duration::from_secs(15), || {
        Ok(ask(&guest, "192.168.2.1")?.then_some(()))
    })
    .with_context(|| {
        let o = guest.sh_output(
            "ping -c 1 -W 2 192.168.2.1; busybox nslookup -type=a guests-only 192.168.2.1",
        );
        let l = ns.umlbr(&["leases"]);
        format!("{o:?}\n{l:?}")
    })?;
    let mut answered = false;
    for server in ["192.168.2.1", "10.9.0.1"] {
        let a = ask(&lan, server)?;
        println!(
            "{kind:?}: the LAN asks {server}: {}",
            if a { "ANSWERED" } else { "no answer" }
        );
        answered |= a;
    }
    if kind == Kind::Umlbr {
        ns.umlbr_ok(&["down", BR])?;
    }
    Ok(answered)
}

#[test]
fn lan_cannot_use_the_bridges_dns_umlbr() -> Result<()> {
    ensure!(
        !lan_asks_the_bridges_dns(Kind::Umlbr)?,
        "umlbr's dnsmasq answered the LAN"
    );
    Ok(())
}

/// The oracle: the recipe by hand is an open resolver to the LAN, which
/// shows the attack works and the test sees it.
#[test]
fn lan_cannot_use_the_bridges_dns_kernel() -> Result<()> {
    ensure!(
        lan_asks_the_bridges_dns(Kind::Kernel)?,
        "the hand-made dnsmasq did not answer the LAN: the attack (or the test) is broken"
    );
    Ok(())
}

/// `config` prints the DHCP service and static leases, `apply` starts,
/// changes (a new range: dnsmasq started again) and stops it and adds and
/// removes leases; an `up` whose dnsmasq fails leaves nothing (no bridge,
/// no dnsmasq, no conf) and says why; `down` finds a dnsmasq whose pid
/// file is gone (an `up` killed before dnsmasq wrote it).
#[test]
fn config_apply_and_failures() -> Result<()> {
    let mut files = Files::default();
    let ns = Netns::new("dhccfg")?;
    ns.umlbr_ok(&["up", BR, "--address", "192.168.2.1/24", "--dhcp"])?;
    let (pid0, l, _) = dhcp_state(&ns)?;
    files.0.extend(state_files(&l));
    let conf = ns.umlbr_ok(&["config", BR])?;
    ensure!(
        conf.contains("[dhcp]") && conf.contains("range = \"192.168.2.2-192.168.2.254\""),
        "config: {conf}"
    );
    let file = std::env::temp_dir().join(format!("{}.toml", ns.name));
    files.0.push(file.clone());
    std::fs::write(
        &file,
        format!(
            "name = \"{BR}\"\naddress = [\"192.168.2.1/24\", \"fd00:2::1/64\"]\n\
             [dhcp]\nrange = \"192.168.2.10-192.168.2.20\"\n\
             [[lease]]\nmac = \"02:00:00:00:00:05\"\naddress = \"192.168.2.5\"\nhostname = \"five\"\n"
        ),
    )?;
    let f = file.to_str().unwrap();
    let out = ns.umlbr(&["apply", f])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "apply: {err}");
    ensure!(
        err.contains("add address fd00:2::1/64")
            && err.contains("serve DHCP (range 192.168.2.10-192.168.2.20)")
            && err.contains("static lease"),
        "apply said: {err}"
    );
    let v = show(&ns)?;
    ensure!(
        v["dhcp"]["range"] == "192.168.2.10-192.168.2.20",
        "{}",
        v["dhcp"]
    );
    ensure!(
        v["dhcp"]["pid"].as_i64().is_some_and(|p| Some(p) != pid0),
        "dnsmasq not started again: {} (was {pid0:?})",
        v["dhcp"]
    );
    let rows = leases(&ns)?;
    ensure!(
        row(&rows, "02:00:00:00:00:05").is_some_and(|r| r["hostname"] == "five"),
        "{rows:?}"
    );
    let out = ns.umlbr(&["apply", f])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("0 change(s)"), "apply again: {err}");
    // What `config` prints applies as no change.
    std::fs::write(&file, ns.umlbr_ok(&["config", BR])?)?;
    let err = String::from_utf8_lossy(&ns.umlbr(&["apply", f])?.stderr).into_owned();
    ensure!(
        err.contains("0 change(s)"),
        "apply of config's output: {err}"
    );
    std::fs::write(
        &file,
        format!("name = \"{BR}\"\naddresses = [\"192.168.2.1/24\", \"fd00:2::1/64\"]\n"),
    )?;
    let err = String::from_utf8_lossy(&ns.umlbr(&["apply", f])?.stderr).into_owned();
    ensure!(
        err.contains("stop DHCP") && err.contains("remove static lease"),
        "{err}"
    );
    ensure!(show(&ns)?["dhcp"].is_null(), "dhcp after removing [dhcp]");
    ensure!(
        dnsmasqs(&ns).is_empty(),
        "dnsmasq left: {:?}",
        dnsmasqs(&ns)
    );

    // A dnsmasq whose pid file is gone is still found by `down`.
    std::fs::write(
        &file,
        format!("name = \"{BR}\"\naddresses = [\"192.168.2.1/24\", \"fd00:2::1/64\"]\n[dhcp]\n"),
    )?;
    ns.umlbr_ok(&["apply", f])?;
    for p in std::fs::read_dir("/run/umlbr")? {
        let p = p?.path();
        let ino = std::fs::metadata(format!("/run/netns/{}", ns.name))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))?;
        if p.to_string_lossy()
            .ends_with(&format!("net{ino}-{BR}.dnsmasq.pid"))
        {
            std::fs::remove_file(&p)?;
        }
    }
    ensure!(dnsmasqs(&ns).len() == 1, "{:?}", dnsmasqs(&ns));
    ns.umlbr_ok(&["down", BR])?;
    ensure!(dnsmasqs(&ns).is_empty(), "down left {:?}", dnsmasqs(&ns));

    // dnsmasq cannot bind port 53: `up` fails, naming it, and undoes all.
    let log = std::env::temp_dir().join(format!("{}-blocker.log", ns.name));
    files.0.push(log.clone());
    ns.spawn_logged(
        &[
            "python3",
            "-c",
            "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('0.0.0.0',53))\nprint('bound',flush=True)\ntime.sleep(60)",
        ],
        &log,
    )?;
    wait_until("the blocker binds port 53", Duration::from_secs(10), || {
        Ok(std::fs::read_to_string(&log)?
            .contains("bound")
            .then_some(()))
    })?;
    let out = ns.umlbr(&["up", BR, "--address", "192.168.2.1/24", "--dhcp"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("up with port 53 taken: {err}");
    ensure!(!out.status.success(), "up succeeded with port 53 taken");
    ensure!(
        err.contains("bridge br0") && err.contains("dnsmasq failed to start"),
        "{err}"
    );
    ensure!(
        ns.sh_output(&format!("ip link show {BR}"))?.status.code() != Some(0),
        "br0 left after a failed up"
    );
    ensure!(
        dnsmasqs(&ns).is_empty(),
        "dnsmasq left: {:?}",
        dnsmasqs(&ns)
    );
    let run: Vec<String> = std::fs::read_dir("/run/umlbr")?
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".dnsmasq.conf") && n.contains(&format!("-{BR}.")))
        .filter(|n| {
            std::fs::metadata(format!("/run/netns/{}", ns.name))
                .map(|m| n.starts_with(&format!("net{}-", std::os::unix::fs::MetadataExt::ino(&m))))
                .unwrap_or(false)
        })
        .collect();
    ensure!(run.is_empty(), "conf left: {run:?}");

    // A conf left by a bridge of a namespace gone without `down` (whose
    // inode this one reuses) is no DHCP service of a new bridge.
    let stale = &state_files(&l)[2];
    std::fs::write(stale, "interface=br0\n")?;
    ns.umlbr_ok(&["up", BR, "--address", "192.168.2.1/24"])?;
    ensure!(
        show(&ns)?["dhcp"].is_null(),
        "a stale conf made a DHCP service"
    );
    ensure!(!stale.exists(), "up left the stale conf");
    ns.umlbr_ok(&["down", BR])?;

    // `up --config` with [dhcp] and a [[lease]].
    std::fs::write(
        &file,
        format!(
            "name = \"{BR}\"\naddresses = [\"192.168.3.1/24\"]\n[dhcp]\n\
             [[lease]]\nmac = \"02:00:00:00:00:06\"\naddress = \"192.168.3.6\"\n"
        ),
    )?;
    // The blocker holds 0.0.0.0:53: dnsmasq cannot serve DNS; let it go.
    for p in ns.pids() {
        if std::fs::read_to_string(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| c.contains("python3"))
        {
            // SAFETY: plain kill(2) of the blocker this test started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    wait_until("the blocker is gone", Duration::from_secs(5), || {
        Ok((!ns.sh("ss -lun")?.contains(":53 ")).then_some(()))
    })?;
    ns.umlbr_ok(&["up", "--config", f])?;
    let v = show(&ns)?;
    ensure!(
        v["dhcp"]["range"] == "192.168.3.2-192.168.3.254" && v["dhcp"]["pid"].is_i64(),
        "{}",
        v["dhcp"]
    );
    ensure!(
        row(&leases(&ns)?, "02:00:00:00:00:06").is_some_and(|r| r["address"] == "192.168.3.6"),
        "up --config's lease"
    );
    ns.umlbr_ok(&["down", BR])?;
    Ok(())
}

/// umlbr's dnsmasqs running in `ns` (by their command line).
fn dnsmasqs(ns: &Netns) -> Vec<i32> {
    ns.pids()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("dnsmasq") && c.contains(".dnsmasq.conf"))
        })
        .collect()
}

/// Attack: a guest sends router advertisements (here a dnsmasq of its
/// own with `--enable-ra`) to make the host route IPv6 through it or
/// take an address in its prefix. With `--dhcp` the bridge is the
/// guests' router: its host interface must take none of them. Returns
/// what the host took: its addresses in the guest's prefix and its
/// default routes on the bridge.
fn guest_advertises_a_router(kind: Kind) -> Result<String> {
    let mut files = Files::default();
    let ns = Netns::new("dhcra")?;
    let guest = Netns::new("dhcrag")?;
    match kind {
        Kind::Umlbr => {
            ns.umlbr_ok(&["up", BR, "--address", "fd00:2::1/64", "--dhcp"])?;
            let (_, l, _) = dhcp_state(&ns)?;
            files.0.extend(state_files(&l));
        }
        Kind::Kernel => {
            ns.sh(&format!(
                "ip link add {BR} type bridge && ip addr add fd00:2::1/64 dev {BR} && \
                 ip link set {BR} up"
            ))?;
        }
    }
    ns.sh(&format!(
        "ip link add gv0 type veth peer name gv1 netns {} && ip link set gv0 up",
        guest.name
    ))?;
    match kind {
        Kind::Umlbr => ns.umlbr_ok(&["attach", "gv0"]).map(drop)?,
        Kind::Kernel => ns.sh(&format!("ip link set gv0 master {BR}")).map(drop)?,
    }
    guest.sh("ip addr add fd00:66::1/64 dev gv1 && ip link set gv1 up && ethtool -K gv1 gro on")?;
    let log = std::env::temp_dir().join(format!("{}-rogue.log", guest.name));
    files.0.push(log.clone());
    guest.spawn_logged(
        &[
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--pid-file",
            "--no-hosts",
            "--no-resolv",
            "--port=0",
            "--interface=gv1",
            "--bind-dynamic",
            "--enable-ra",
            "--dhcp-range=::,constructor:gv1,ra-only",
            "--ra-param=gv1,high,0,1800",
        ],
        &log,
    )?;
    // dnsmasq advertises at once and then every few seconds; give the
    // host time to take one.
    std::thread::sleep(Duration::from_secs(8));
    let took = ns.sh(&format!(
        "ip -6 addr show dev {BR} | grep 'fd00:66:' ; ip -6 route show default dev {BR}; true"
    ))?;
    println!("{kind:?}: the host took: {took:?}");
    let sent = std::fs::read_to_string(&log).unwrap_or_default();
    ensure!(!sent.contains("failed"), "the rogue dnsmasq: {sent}");
    if kind == Kind::Umlbr {
        ns.umlbr_ok(&["down", BR])?;
    }
    Ok(took.trim().to_string())
}

#[test]
fn guest_cannot_be_the_hosts_router_umlbr() -> Result<()> {
    let took = guest_advertises_a_router(Kind::Umlbr)?;
    ensure!(took.is_empty(), "the host took a guest's RA: {took}");
    Ok(())
}

/// The oracle: a Linux bridge with an address (accept_ra as the kernel
/// leaves it) takes the guest's RA, which shows the attack works.
#[test]
fn guest_cannot_be_the_hosts_router_kernel() -> Result<()> {
    let took = guest_advertises_a_router(Kind::Kernel)?;
    ensure!(
        !took.is_empty(),
        "the Linux bridge took no RA: the attack (or the test) is broken"
    );
    Ok(())
}
