//! End to end: port forwards (`umlbr forward add`) with User Mode Linux
//! guests. A server in guest g0 (192.168.2.10) answers TCP and UDP on
//! port 7000 with the address it saw; `forward add br0 tcp 8080
//! 192.168.2.10:7000` and `udp 8053 192.168.2.10:7000`. Then:
//!
//! * a LAN host (10.99.0.2) reaches the server through the uplink's
//!   address 10.99.0.1 on 8080 and 8053, and the server sees the LAN
//!   host's own address; the datapath mapped both flows (the forwards'
//!   hits);
//! * guest g1 (192.168.2.11) reaches it through 10.99.0.1 too (hairpin,
//!   the host's dnat and masquerade: the server sees the bridge's address
//!   192.168.2.1);
//! * a forwarded flow whose first packet the kernel takes (the host does
//!   not know the guest's MAC yet) works too;
//! * the LAN reaches nothing on a port not forwarded.
//!
//! Two uplinks: a tap (`fwd_tap_uplink`: XDP translates; the LAN host is
//! a UML guest on the tap's other side) and a veth (`fwd_veth_uplink`: TC
//! translates; the LAN host is a namespace).
//!
//! Needs root, /usr/bin/linux.uml, python3; umlbr from `cargo build -p
//! umlbr` (or $UMLBR_BIN).
use std::{fs, os::unix::fs::PermissionsExt, path::PathBuf, time::Duration};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use umlbr_tests::{
    netns::Netns,
    uml::{Guest, GuestSpec, Transport},
};

const PY: &str = "/usr/bin/python3";
const NAT_IP: &str = "10.99.0.1";
const LAN_IP: &str = "10.99.0.2";
const GW: &str = "192.168.2.1";

const FWD_PY: &str = r#"#!/usr/bin/python3
# serve PORT LOG: answer TCP and UDP on PORT with "ok <peer address>",
# logging "<proto> <peer address>" lines to LOG.
# tcp|udp HOST PORT: send "hi", print the answer (UDP: only one from
# HOST:PORT).
import socket, sys, threading
def log(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")
if sys.argv[1] == "serve":
    port, path = int(sys.argv[2]), sys.argv[3]
    def tcp():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(16)
        while True:
            c, a = s.accept()
            c.settimeout(5)
            try:
                c.recv(100)
                log(path, "tcp " + a[0])
                c.sendall(b"ok " + a[0].encode())
            finally:
                c.close()
    threading.Thread(target=tcp, daemon=True).start()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", port))
    print("listening", flush=True)
    while True:
        d, a = u.recvfrom(100)
        log(path, "udp " + a[0])
        u.sendto(b"ok " + a[0].encode(), a)
else:
    proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"hi")
        print(s.recv(100).decode())
    else:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(3)
        for _ in range(3):
            u.sendto(b"hi", (host, port))
            try:
                d, a = u.recvfrom(100)
            except socket.timeout:
                continue
            # The answer must come from the address and port asked.
            if a != (host, port):
                sys.exit("answer from %s:%d" % a)
            print(d.decode())
            break
        else:
            sys.exit("no answer")
"#;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Uplink {
    Tap,
    Veth,
}

/// A scratch directory every guest sees (their / is the host's).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let d = std::env::temp_dir().join(format!("umlbr-fwd-{}", std::process::id()));
        fs::create_dir_all(&d)?;
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777))?;
        let py = d.join("fwd.py");
        fs::write(&py, FWD_PY)?;
        fs::set_permissions(&py, fs::Permissions::from_mode(0o755))?;
        Ok(Scratch(d))
    }

    fn py(&self) -> String {
        self.0.join("fwd.py").display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The LAN host: a UML guest on the uplink tap, or a namespace on the
/// veth's other end.
enum Lan {
    Guest(Guest),
    Ns(Netns),
}

impl Lan {
    /// The client (`fwd.py PROTO HOST PORT`): (exit status, output).
    fn client(&self, py: &str, proto: &str, port: u16) -> Result<(i32, String)> {
        let cmd = format!("{PY} {py} {proto} {NAT_IP} {port}");
        match self {
            Lan::Guest(g) => g.run(&cmd),
            Lan::Ns(ns) => {
                let out = ns.cmd("sh").args(["-c", &cmd]).output()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                Ok((out.status.code().unwrap_or(-1), text))
            }
        }
    }
}

fn answer(who: &str, proto: &str, port: u16, (rc, out): (i32, String), saw: &str) -> Result<()> {
    ensure!(
        rc == 0 && out.lines().any(|l| l.trim() == format!("ok {saw}")),
        "{who} -> {NAT_IP}:{port}/{proto}: the server must answer having seen {saw} \
         (exit {rc}):\n{out}"
    );
    Ok(())
}

fn fwd(uplink: Uplink) -> Result<()> {
    let scratch = Scratch::new()?;
    let py = scratch.py();
    let host = Netns::without_ipv6(&format!("fwe2e-{uplink:?}"))?;
    let up = match uplink {
        Uplink::Tap => "up0",
        Uplink::Veth => "eth0",
    };
    let mut lan_ns = None;
    match uplink {
        Uplink::Tap => {
            host.sh(&format!(
                "set -e; ip tuntap add up0 mode tap; ip addr add {NAT_IP}/24 dev up0; \
                 ip link set up0 up"
            ))?;
        }
        Uplink::Veth => {
            let lan = Netns::without_ipv6("fwe2e-lan")?;
            host.sh(&format!(
                "set -e; ip link add eth0 type veth peer name lan0 netns {}; \
                 ip addr add {NAT_IP}/24 dev eth0; ip link set eth0 up",
                lan.name
            ))?;
            lan.sh(&format!(
                "set -e; ip addr add {LAN_IP}/24 dev lan0; ip link set lan0 up"
            ))?;
            lan_ns = Some(lan);
        }
    };
    host.umlbr_ok(&[
        "up",
        "br0",
        "--address",
        &format!("{GW}/24"),
        "--masquerade",
        up,
    ])?;
    host.sh("set -e; for t in tap0 tap1; do ip tuntap add $t mode tap; ip link set $t up; done")?;
    host.umlbr_ok(&["attach", "tap0", "--bridge", "br0"])?;
    host.umlbr_ok(&["attach", "tap1", "--bridge", "br0"])?;
    host.umlbr_ok(&["forward", "add", "br0", "tcp", "8080", "192.168.2.10:7000"])?;
    host.umlbr_ok(&["forward", "add", "br0", "udp", "8053", "192.168.2.10:7000"])?;
    let mut specs = vec![
        GuestSpec::new(
            "fw0",
            Transport::Legacy,
            "tap0",
            "02:00:00:00:02:10",
            "192.168.2.10/24",
        )
        .gateway(GW),
        GuestSpec::new(
            "fw1",
            Transport::Vector,
            "tap1",
            "02:00:00:00:02:11",
            "192.168.2.11/24",
        )
        .gateway(GW),
    ];
    if uplink == Uplink::Tap {
        specs.push(GuestSpec::new(
            "fwlan",
            Transport::Legacy,
            "up0",
            "02:00:00:00:99:02",
            &format!("{LAN_IP}/24"),
        ));
    }
    let mut guests = Guest::boot_all(&host.name, &specs)?;
    let lan = match lan_ns.take() {
        Some(ns) => Lan::Ns(ns),
        None => Lan::Guest(guests.pop().context("the LAN guest")?),
    };
    let (g0, g1) = (&guests[0], &guests[1]);
    // The server's guest says hello to its gateway: the host and the
    // switch learn its MAC, so the first packet of a forwarded flow is
    // translated in BPF rather than left to the kernel's dnat.
    g0.run_ok(&format!("ping -c 1 -W 2 {GW}"))?;
    let log = g0.dir().join("peers");
    let srv = g0.spawn(&format!("exec {PY} {py} serve 7000 {}", log.display()))?;
    srv.wait_output("listening", Duration::from_secs(20))?;

    // From the LAN: the server sees the LAN host's own address.
    let label = format!("{uplink:?} uplink: LAN");
    answer(&label, "tcp", 8080, lan.client(&py, "tcp", 8080)?, LAN_IP)?;
    answer(&label, "udp", 8053, lan.client(&py, "udp", 8053)?, LAN_IP)?;
    let v: Value = serde_json::from_str(&host.umlbr_ok(&["forward", "show", "br0", "--json"])?)?;
    for row in v.as_array().context("forward show")? {
        ensure!(
            row["hits"].as_u64() == Some(1),
            "{uplink:?}: the datapath must have mapped one flow per forward: {v}"
        );
    }
    let st: Value = serde_json::from_str(&host.umlbr_ok(&["stats", "br0", "--json"])?)?;
    let c = &st["nat"]["counters"];
    let (xdp, tc) = (c["in_xdp"].as_u64(), c["in_tc"].as_u64());
    println!("{uplink:?}: forwards {v}\n  NAT counters {c}");
    match uplink {
        Uplink::Tap => ensure!(
            xdp.unwrap_or(0) > 0,
            "tap uplink: XDP translated nothing: {c}"
        ),
        Uplink::Veth => ensure!(
            tc.unwrap_or(0) > 0,
            "veth uplink: TC translated nothing: {c}"
        ),
    }
    // The host forgets the server's MAC: the next new flow's first packet
    // takes the kernel's path (the nftables dnat), and the server's
    // replies must reach that conntrack entry untranslated by BPF (the
    // forward's target is not masqueraded on its own): the LAN host still
    // gets its answer from the forward.
    host.sh("ip neigh flush dev br0")?;
    let slow0 = c["slow_path"].as_u64().unwrap_or(0);
    answer(
        &format!("{label} (kernel's path)"),
        "udp",
        8053,
        lan.client(&py, "udp", 8053)?,
        LAN_IP,
    )?;
    let st: Value = serde_json::from_str(&host.umlbr_ok(&["stats", "br0", "--json"])?)?;
    let slow1 = st["nat"]["counters"]["slow_path"].as_u64().unwrap_or(0);
    ensure!(
        slow1 > slow0,
        "{uplink:?}: the flow after the neighbour flush must have taken the kernel's path: {}",
        st["nat"]["counters"]
    );
    // A port not forwarded reaches nothing.
    let (rc, out) = lan.client(&py, "tcp", 8081)?;
    ensure!(
        rc != 0,
        "{label} -> 8081 (not forwarded) got an answer:\n{out}"
    );

    // Hairpin: g1 through the uplink's address; the server sees the
    // bridge's address.
    let hp = format!("{uplink:?} uplink: hairpin from {}", g1.name);
    answer(
        &hp,
        "tcp",
        8080,
        g1.run(&format!("{PY} {py} tcp {NAT_IP} 8080"))?,
        GW,
    )?;
    answer(
        &hp,
        "udp",
        8053,
        g1.run(&format!("{PY} {py} udp {NAT_IP} 8053"))?,
        GW,
    )?;
    let peers = fs::read_to_string(&log).unwrap_or_default();
    println!("{uplink:?}: the server saw:\n{peers}");
    srv.stop()?;
    drop(lan);
    drop(guests);
    host.umlbr_ok(&["down", "br0"])?;
    Ok(())
}

#[test]
fn fwd_tap_uplink() -> Result<()> {
    fwd(Uplink::Tap)
}

#[test]
fn fwd_veth_uplink() -> Result<()> {
    fwd(Uplink::Veth)
}
