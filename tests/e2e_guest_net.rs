//! The judge of issue 18, end to end: a User Mode Linux guest that
//! configures nothing but busybox `udhcpc` (IPv4) and the kernel's SLAAC
//! (IPv6) inside, behind
//! `umlbr up br0 --address 192.168.2.1/24 --address fd00:2::1/64
//! --masquerade UPLINK --dhcp`:
//!
//! * gets a lease in the bridge's range, with the bridge as router and
//!   DNS server, and an address in fd00:2::/64 with a default route from
//!   the router advertisements;
//! * resolves `name.lan` (A and AAAA), a name only the LAN's DNS server
//!   knows, through the bridge's dnsmasq (the lease's DNS option), which
//!   forwards to the host's resolver (`/etc/netns/NS/resolv.conf`, made
//!   by the test, naming the LAN's server);
//! * reaches the LAN over IPv4 and IPv6 (ping, TCP, UDP) through the
//!   masquerade, and the LAN's servers see only the uplink's addresses
//!   (the LAN has no route back to the guests' subnets);
//! * is reached from the LAN through `umlbr forward add br0 tcp 8080
//!   LEASED:80`, and its server sees the LAN client's own address.
//!
//! Two uplinks: a tap (XDP translates; the LAN is a UML guest on the
//! tap's other side, running the LAN's dnsmasq and servers) and a veth
//! (TC translates; the LAN is a namespace).
//!
//! The guests share the host's root (hostfs): a guest writes no host file
//! but its own directory and the test's scratch directory. udhcpc runs
//! with a script of the test's own (`-s`) that writes the resolver into
//! the guest's directory, bind-mounted (in the UML kernel) over the
//! guest's /etc/resolv.conf.
//!
//! Needs root, /usr/bin/linux.uml, busybox, dnsmasq, python3, iputils
//! ping.
//!   cargo test -p umlbr-tests --test e2e_guest_net -- --test-threads=1 --nocapture
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use umlbr_tests::{
    netns::Netns,
    uml::{Guest, GuestSpec, Ping, Transport, ping_ok},
};

const PY: &str = "/usr/bin/python3";
const BR: &str = "br0";
const GW4: &str = "192.168.2.1";
const UP4: &str = "10.99.0.1";
const UP6: &str = "2001:db8:99::1";
const LAN4: &str = "10.99.0.2";
const LAN6: &str = "2001:db8:99::2";
/// What the LAN's DNS server answers for name.lan.
const NAME4: &str = "10.99.0.77";
const NAME6: &str = "2001:db8:99::77";
/// The LAN's servers' port (TCP and UDP, IPv4 and IPv6).
const PORT: u16 = 5007;
const GUEST_MAC: &str = "02:00:00:00:18:10";

/// `serve PORT LOG`: TCP and UDP on PORT, IPv4 and IPv6 (IPv6 only if the
/// kernel has it), answering "ok <peer>" and logging "<proto> <peer>"
/// lines to LOG; LOG.ready once listening. `tcp|udp HOST PORT N`: N
/// exchanges, each answered; prints the last answer.
const LAB_PY: &str = r#"
import os, socket, sys, threading
def note(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")
def serve(port, log):
    fams = [socket.AF_INET] + ([socket.AF_INET6] if socket.has_ipv6 and os.path.exists("/proc/net/if_inet6") else [])
    for fam in fams:
        any_ = "0.0.0.0" if fam == socket.AF_INET else "::"
        t = socket.socket(fam, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        t.bind((any_, port)); t.listen(16)
        u = socket.socket(fam, socket.SOCK_DGRAM)
        if fam == socket.AF_INET6:
            u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        u.bind((any_, port))
        def tcp(t=t):
            while True:
                c, a = t.accept()
                c.settimeout(5)
                try:
                    c.recv(100)
                    note(log, "tcp " + a[0])
                    c.sendall(b"ok " + a[0].encode())
                except OSError:
                    pass
                finally:
                    c.close()
        def udp(u=u):
            while True:
                d, a = u.recvfrom(100)
                note(log, "udp " + a[0])
                u.sendto(b"ok " + a[0].encode(), a)
        threading.Thread(target=tcp, daemon=True).start()
        threading.Thread(target=udp, daemon=True).start()
    note(log + ".ready", "listening")
    threading.Event().wait()
def client(proto, host, port, n):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    r = b""
    for i in range(n):
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=10)
            s.sendall(b"hi")
            r = s.recv(100)
            s.close()
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.settimeout(2)
            r = b""
            for _ in range(5):
                s.sendto(b"hi", (host, port))
                try:
                    d, a = s.recvfrom(100)
                except socket.timeout:
                    continue
                if a[0] == host and a[1] == port:
                    r = d
                    break
            s.close()
        assert r.startswith(b"ok"), (proto, i, r)
    print(r.decode())
if sys.argv[1] == "serve":
    serve(int(sys.argv[2]), sys.argv[3])
else:
    client(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
"#;

/// udhcpc's script: configures the interface's IPv4 (its IPv6, from
/// SLAAC, is left alone) from the lease, and writes the resolver and what
/// it got into `$R` (the guest's own directory) alone.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    : > "$R/resolv.conf"
    for d in $dns; do echo "nameserver $d" >> "$R/resolv.conf"; done
    echo "ip=$ip router=$router dns=$dns" > "$R/lease"
    ;;
esac
exit 0
"#;

/// Files and processes the test made outside its namespaces and guests,
/// removed (killed) on drop, on failure too: the bridge's DHCP files
/// (leases are kept by `down` on purpose), /etc/netns/NS, the scratch
/// directory, the LAN namespace's servers.
#[derive(Default)]
struct Cleanup {
    paths: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in &self.paths {
            if p.is_dir() {
                let _ = fs::remove_dir_all(p);
            } else {
                let _ = fs::remove_file(p);
            }
        }
    }
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

/// Every file of the bridge's DHCP service, from the lease file `show
/// --json` names: the leases and static leases in /var/lib/umlbr, and the
/// conf and pid file in /run/umlbr (left by a test that fails before
/// `down`).
fn dhcp_files(lease_file: &Path) -> Vec<PathBuf> {
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

/// The LAN: a UML guest on the uplink tap, or a namespace behind the
/// uplink veth.
enum Lan {
    Guest(Guest),
    Ns(Netns),
}

impl Lan {
    /// Run `sh -c cmd` on the LAN host: (exit status, output).
    fn run(&self, cmd: &str) -> Result<(i32, String)> {
        match self {
            Lan::Guest(g) => g.run_timeout(cmd, Duration::from_secs(40)),
            Lan::Ns(ns) => {
                let out = ns.sh_output(&format!("timeout 40 {cmd}"))?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                Ok((out.status.code().unwrap_or(-1), text))
            }
        }
    }

    /// Start `argv` in the background on the LAN host, its output to
    /// `log`; a namespace's process is killed by `clean` (a guest's with
    /// the guest).
    fn start(&self, argv: &[&str], log: &Path, clean: &mut Cleanup) -> Result<()> {
        match self {
            Lan::Guest(g) => {
                g.spawn(&format!("exec {} > {} 2>&1", argv.join(" "), log.display()))?;
            }
            Lan::Ns(ns) => clean.children.push(ns.spawn_logged(argv, log)?),
        }
        Ok(())
    }
}

/// Prepare `g` for udhcpc: its result directory, the script, and its
/// /etc/resolv.conf bind-mounted (inside the guest) from the directory.
fn dhcp_client(g: &Guest) -> Result<PathBuf> {
    let r = g.dir().join("tmp/dhcp");
    fs::create_dir_all(&r)?;
    fs::write(r.join("udhcpc.sh"), UDHCPC_SCRIPT)?;
    fs::write(r.join("resolv.conf"), "")?;
    let r_s = r.display().to_string();
    // The UML kernel's mount: the host's file is untouched.
    g.run_ok(&format!(
        "chmod 755 {r_s}/udhcpc.sh && mount --bind {r_s}/resolv.conf /etc/resolv.conf && \
         grep -q ' /etc/resolv.conf ' /proc/mounts"
    ))
    .with_context(|| format!("guest {}: bind-mounting resolv.conf", g.name))?;
    Ok(r)
}

fn field<'a>(lease: &'a str, k: &str) -> &'a str {
    lease
        .split_whitespace()
        .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
        .unwrap_or("")
}

/// The address SLAAC makes from `mac` in the /64 `prefix` (modified
/// EUI-64), as `ip` prints it.
fn eui64(prefix: &str, mac: &str) -> Result<String> {
    let p: std::net::Ipv6Addr = prefix.parse()?;
    let b = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<Vec<u8>, _>>()?;
    ensure!(b.len() == 6, "bad MAC {mac}");
    let mut o = p.octets();
    o[8..].copy_from_slice(&[b[0] ^ 2, b[1], b[2], 0xff, 0xfe, b[3], b[4], b[5]]);
    Ok(std::net::Ipv6Addr::from(o).to_string())
}

/// "LO-HI" as two IPv4 addresses.
fn range(r: &str) -> Result<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
    let (lo, hi) = r.split_once('-').with_context(|| format!("range {r}"))?;
    Ok((lo.parse()?, hi.parse()?))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Uplink {
    /// A tap (XDP-capable, as a NIC); the LAN is a UML guest on it.
    Tap,
    /// A veth to the LAN's namespace.
    Veth,
}

fn guest_net(uplink: Uplink) -> Result<()> {
    let t0 = Instant::now();
    let mut clean = Cleanup::default();
    let tag = match uplink {
        Uplink::Tap => "gn-tap",
        Uplink::Veth => "gn-veth",
    };
    let scratch = std::env::temp_dir().join(format!("umlbr-{tag}-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    clean.paths.push(scratch.clone());
    fs::set_permissions(&scratch, fs::Permissions::from_mode(0o777))?;
    let py = scratch.join("lab.py");
    fs::write(&py, LAB_PY)?;
    let py = py.display().to_string();
    let lan_log = scratch.join("lan.log").display().to_string();
    let fwd_log = scratch.join("fwd.log").display().to_string();

    let host = Netns::new(tag)?;
    let up = match uplink {
        Uplink::Tap => "up0",
        Uplink::Veth => "eth0",
    };
    let mut lan_ns = None;
    match uplink {
        Uplink::Tap => host.sh("ip tuntap add up0 mode tap").map(drop)?,
        Uplink::Veth => {
            let lan = Netns::new(&format!("{tag}-lan"))?;
            host.sh(&format!(
                "ip link add eth0 type veth peer name lan0 netns {}",
                lan.name
            ))?;
            lan.sh(&format!(
                "ip addr add {LAN4}/24 dev lan0 && ip -6 addr add {LAN6}/64 dev lan0 nodad && \
                 ip link set lan0 up"
            ))?;
            lan_ns = Some(lan);
        }
    }
    host.sh(&format!(
        "ip addr add {UP4}/24 dev {up} && ip -6 addr add {UP6}/64 dev {up} nodad && \
         ip link set {up} up"
    ))?;
    // The host's resolver is the LAN's DNS server; `ip netns exec` (so
    // umlbr, so the bridge's dnsmasq) sees this file as /etc/resolv.conf.
    let etc = PathBuf::from(format!("/etc/netns/{}", host.name));
    fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
    clean.paths.push(etc.clone());
    fs::write(etc.join("resolv.conf"), format!("nameserver {LAN4}\n"))?;

    host.umlbr_ok(&[
        "up",
        BR,
        "--address",
        &format!("{GW4}/24"),
        "--address",
        "fd00:2::1/64",
        "--masquerade",
        up,
        "--dhcp",
    ])?;
    let show: Value = serde_json::from_str(&host.umlbr_ok(&["show", BR, "--json"])?)?;
    let dhcp = &show["dhcp"];
    let lease_file = dhcp["lease_file"]
        .as_str()
        .with_context(|| format!("show --json names no lease file: {show}"))?;
    clean.paths.extend(dhcp_files(Path::new(lease_file)));
    let (lo, hi) = range(dhcp["range"].as_str().context("no dhcp range")?)?;
    host.umlbr_ok(&["tap", "add", "tap0"])?;
    host.umlbr_ok(&["attach", "tap0"])?;

    // The guest: its interface up, IPv6 loaded (accept_ra and autoconf
    // as the kernel leaves them), no address, no route.
    let mut specs =
        vec![GuestSpec::unaddressed("gng", Transport::Legacy, "tap0", GUEST_MAC).ipv6(true)];
    if uplink == Uplink::Tap {
        specs.push(
            GuestSpec::new(
                "gnlan",
                Transport::Legacy,
                "up0",
                "02:00:00:00:18:99",
                &format!("{LAN4}/24"),
            )
            .ipv6(true),
        );
    }
    let mut guests = Guest::boot_all(&host.name, &specs)?;
    let lan = match lan_ns.take() {
        Some(ns) => Lan::Ns(ns),
        None => {
            let g = guests.pop().context("the LAN guest")?;
            g.run_ok(&format!("ip -6 addr add {LAN6}/64 dev {} nodad", g.iface))?;
            Lan::Guest(g)
        }
    };
    let g = &guests[0];

    // The LAN's DNS server (name.lan, A and AAAA) and servers.
    let dns_log = scratch.join("lan-dnsmasq.log");
    lan.start(
        &[
            "dnsmasq",
            "--keep-in-foreground",
            "--log-facility=-",
            "--conf-file=/dev/null",
            "--pid-file",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={LAN4}"),
            "--except-interface=lo",
            &format!("--address=/name.lan/{NAME4}"),
            &format!("--address=/name.lan/{NAME6}"),
        ],
        &dns_log,
        &mut clean,
    )?;
    lan.start(
        &[PY, &py, "serve", &PORT.to_string(), &lan_log],
        &scratch.join("lan-server.out"),
        &mut clean,
    )?;
    wait_until(
        "the LAN's DNS server answers the host",
        Duration::from_secs(20),
        || {
            let out = host.sh_output(&format!("busybox nslookup name.lan {LAN4}"))?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .contains(NAME4)
                .then_some(()))
        },
    )
    .with_context(|| fs::read_to_string(&dns_log).unwrap_or_default())?;
    wait_until("the LAN's servers listen", Duration::from_secs(20), || {
        Ok(Path::new(&format!("{lan_log}.ready"))
            .exists()
            .then_some(()))
    })?;

    // IPv4: udhcpc alone.
    let r = dhcp_client(g)?;
    let r_s = r.display().to_string();
    let (rc, out) = g.run_timeout(
        &format!(
            "R={r_s} busybox udhcpc -i {} -s {r_s}/udhcpc.sh -q -n -t 10 -T 1",
            g.iface
        ),
        Duration::from_secs(30),
    )?;
    ensure!(rc == 0, "[{uplink:?}] udhcpc exited {rc}:\n{out}");
    let lease = fs::read_to_string(r.join("lease"))
        .with_context(|| format!("[{uplink:?}] udhcpc wrote no lease:\n{out}"))?;
    println!("[{uplink:?}] lease: {lease}");
    let a4: std::net::Ipv4Addr = field(&lease, "ip")
        .parse()
        .with_context(|| format!("lease {lease}"))?;
    ensure!(
        (lo..=hi).contains(&a4),
        "[{uplink:?}] leased {a4}, outside the range {lo}-{hi}"
    );
    ensure!(
        field(&lease, "router") == GW4 && field(&lease, "dns") == GW4,
        "[{uplink:?}] the lease's router and DNS server must be the bridge: {lease}"
    );

    // IPv6: SLAAC from the bridge's router advertisements, and a default
    // route from them.
    let a6 = eui64("fd00:2::", GUEST_MAC)?;
    let route6 = wait_until(
        "a SLAAC address in fd00:2::/64 and an IPv6 default route",
        Duration::from_secs(30),
        || {
            let addr = g.run_ok(&format!("ip -6 -o addr show dev {} scope global", g.iface))?;
            let route = g.run_ok("ip -6 route show default")?;
            Ok((addr.contains(&a6) && route.contains("via fe80:")).then_some(route))
        },
    )
    .with_context(|| {
        let a = g.run(&format!(
            "ip -6 addr show dev {}; ip -6 route; sysctl net.ipv6.conf.{}.accept_ra",
            g.iface, g.iface
        ));
        format!("[{uplink:?}] the guest's IPv6: {a:?}")
    })?;
    println!("[{uplink:?}] SLAAC {a6}, {}", route6.trim());

    // DNS: a name only the LAN's server knows, through the bridge's.
    for (ty, want) in [("a", NAME4), ("aaaa", NAME6)] {
        let out = g.run_ok(&format!("busybox nslookup -type={ty} name.lan"))?;
        ensure!(
            out.contains(want) && out.contains(GW4),
            "[{uplink:?}] name.lan ({ty}) from the guest, by the bridge's DNS {GW4}: {out}"
        );
    }

    // The LAN over IPv4 and IPv6, through the masquerade.
    for ip in [LAN4, LAN6] {
        println!(
            "[{uplink:?}] ping {ip}: {}",
            ping_ok(g, Ping::Iputils, ip, 3)?
        );
    }
    for ip in [LAN4, LAN6] {
        for proto in ["tcp", "udp"] {
            let (rc, out) = g.run_timeout(
                &format!("{PY} {py} {proto} {ip} {PORT} 3"),
                Duration::from_secs(60),
            )?;
            ensure!(
                rc == 0,
                "[{uplink:?}] {proto} from the guest to {ip}: {out}"
            );
        }
    }
    let peers = fs::read_to_string(&lan_log).unwrap_or_default();
    println!("[{uplink:?}] the LAN's servers saw:\n{peers}");
    for (proto, from) in [("tcp", UP4), ("udp", UP4), ("tcp", UP6), ("udp", UP6)] {
        let n = peers
            .lines()
            .filter(|l| *l == format!("{proto} {from}"))
            .count();
        ensure!(
            n >= 3,
            "[{uplink:?}] the LAN's {proto} server must have seen {from} 3 times: {peers}"
        );
    }
    ensure!(
        peers
            .lines()
            .all(|l| l.ends_with(&format!(" {UP4}")) || l.ends_with(&format!(" {UP6}"))),
        "[{uplink:?}] the LAN must see only the uplink's addresses {UP4} and {UP6}: {peers}"
    );

    // From the LAN through a port forward to the leased address.
    let a4s = a4.to_string();
    host.umlbr_ok(&["forward", "add", BR, "tcp", "8080", &format!("{a4s}:80")])?;
    let srv = g.spawn(&format!("exec {PY} {py} serve 80 {fwd_log}"))?;
    wait_until(
        "the guest's server listens",
        Duration::from_secs(20),
        || {
            Ok(Path::new(&format!("{fwd_log}.ready"))
                .exists()
                .then_some(()))
        },
    )
    .with_context(|| srv.output())?;
    let (rc, out) = lan.run(&format!("{PY} {py} tcp {UP4} 8080 2"))?;
    ensure!(
        rc == 0 && out.lines().any(|l| l.trim() == format!("ok {LAN4}")),
        "[{uplink:?}] the LAN -> {UP4}:8080 must reach the guest's server, which sees {LAN4} \
         (exit {rc}): {out}"
    );
    let seen = fs::read_to_string(&fwd_log).unwrap_or_default();
    ensure!(
        seen.lines().filter(|l| *l == format!("tcp {LAN4}")).count() == 2
            && seen.lines().all(|l| l == format!("tcp {LAN4}")),
        "[{uplink:?}] the guest's server must see the LAN client {LAN4}: {seen}"
    );
    let fwd: Value = serde_json::from_str(&host.umlbr_ok(&["forward", "show", BR, "--json"])?)?;
    let st: Value = serde_json::from_str(&host.umlbr_ok(&["stats", BR, "--json"])?)?;
    println!(
        "[{uplink:?}] forwards {fwd}\n  NAT {}\n  NAT6 {}",
        st["nat"]["counters"], st["nat"]["counters6"]
    );
    // BPF translated, both families and the forward (the kernel's path
    // would have passed the checks above too).
    let n = |c: &Value, k: &str| c[k].as_u64().unwrap_or(0);
    for fam in ["counters", "counters6"] {
        let c = &st["nat"][fam];
        ensure!(
            n(c, "allocs") > 0
                && n(c, "out_xdp") + n(c, "out_tc") > 0
                && n(c, "in_xdp") + n(c, "in_tc") > 0,
            "[{uplink:?}] the datapath did not translate ({fam}): {c}"
        );
        if uplink == Uplink::Tap {
            ensure!(
                n(c, "in_xdp") > 0,
                "[{uplink:?}] no reply took XDP ({fam}): {c}"
            );
        }
    }
    ensure!(
        fwd.as_array()
            .is_some_and(|rows| rows.len() == 1 && n(&rows[0], "hits") > 0),
        "[{uplink:?}] the datapath mapped no flow of the forward: {fwd}"
    );
    let _ = srv.stop();
    drop(lan);
    drop(guests);
    host.umlbr_ok(&["down", BR])?;
    println!("[{uplink:?}] took {:?}", t0.elapsed());
    Ok(())
}

#[test]
fn guest_net_tap_uplink() -> Result<()> {
    guest_net(Uplink::Tap)
}

#[test]
fn guest_net_veth_uplink() -> Result<()> {
    guest_net(Uplink::Veth)
}
