//! IPv6 through the masquerade end to end (issue 18): a UML guest with a
//! static IPv6 address behind `umlbr up --masquerade` reaches a LAN host by
//! ping6, TCP and UDP, and the LAN host sees only the uplink's address.
//! Two uplinks: a tap (XDP-capable, as a NIC; the LAN host is a second UML
//! guest on it; the host's IPv6 forwarding on) and a veth (the LAN host a
//! namespace behind it; the host's IPv6 forwarding off). The
//! bridge's IPv6 address is added by hand (`up` takes one `--address`).
//! The datapath's own counters show that BPF, not the kernel's path,
//! translated.
//!
//! Needs root, /usr/bin/linux.uml, /usr/bin/python3, iputils ping.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use umlbr_tests::{
    netns::Netns,
    uml::{Guest, GuestSpec, Ping, Transport, ping_ok},
};

const PY: &str = "/usr/bin/python3";
const GUEST6: &str = "fd00:2::10";
const UPLINK6: &str = "2001:db8:99::1";
const LAN6: &str = "2001:db8:99::2";
const PORT: u16 = 5006;

/// IPv6 servers (TCP and UDP on PORT, logging each peer's address) and
/// clients for the guest and the LAN host.
const LAB6_PY: &str = r#"
import socket, sys, threading
def serve(port, log):
    t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("::", port)); t.listen(16)
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.bind(("::", port))
    def note(what):
        with open(log, "a") as f:
            f.write(what + "\n")
    def tcp():
        while True:
            c, a = t.accept()
            d = c.recv(100)
            note("tcp " + a[0])
            c.sendall(b"ok " + d)
            c.close()
    threading.Thread(target=tcp, daemon=True).start()
    print("listening", flush=True)
    while True:
        d, a = u.recvfrom(100)
        note("udp " + a[0])
        u.sendto(b"ok " + d, a)
def client(proto, ip, port, n):
    for i in range(n):
        if proto == "tcp":
            s = socket.create_connection((ip, port), timeout=10)
            s.sendall(b"hi")
            r = s.recv(100)
            s.close()
        else:
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.settimeout(2)
            r = b""
            for _ in range(5):
                s.sendto(b"hi", (ip, port))
                try:
                    r = s.recvfrom(100)[0]
                    break
                except socket.timeout:
                    pass
        assert r.startswith(b"ok"), (proto, i, r)
    print("done", proto, n)
if sys.argv[1] == "serve":
    serve(int(sys.argv[2]), sys.argv[3])
else:
    client(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
"#;

/// Load IPv6 into a UML guest (its kernel has it as a module) and give
/// `iface` the address `addr` (no DAD), with `gw` as default route if
/// given.
fn guest_ipv6(g: &Guest, addr: &str, gw: Option<&str>) -> Result<()> {
    let m = "/usr/lib/uml/modules/$(uname -r)/kernel";
    let route = gw
        .map(|gw| format!(" && ip -6 route add default via {gw}"))
        .unwrap_or_default();
    g.run_ok(&format!(
        "insmod {m}/lib/crc-ccitt.ko; insmod {m}/net/ipv6/ipv6.ko; \
         sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.{i}.accept_dad=0 && \
         ip -6 addr add {addr} dev {i} nodad{route}",
        i = g.iface
    ))?;
    Ok(())
}

/// A directory for the script and the server's log, removed at the end.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Uplink {
    /// A tap, the LAN host a UML guest on it.
    Tap,
    /// A veth to the LAN host's namespace.
    Veth,
}

fn masquerade6(uplink: Uplink) -> Result<()> {
    let tag = match uplink {
        Uplink::Tap => "n6-e2e-tap",
        Uplink::Veth => "n6-e2e-veth",
    };
    let dir = Dir(std::env::temp_dir().join(format!("{tag}-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let script = dir.0.join("lab6.py");
    std::fs::write(&script, LAB6_PY)?;
    let log = dir.0.join("peers.log");
    let (script, log) = (script.display().to_string(), log.display().to_string());

    let host = Netns::new(tag)?;
    let lan_ns = match uplink {
        Uplink::Veth => Some(Netns::new(&format!("{tag}-lan"))?),
        Uplink::Tap => None,
    };
    // With the host's IPv6 forwarding on (the tap uplink) and off (the
    // veth uplink: umlbr turns it on for the bridge's interface alone,
    // which BPF's route lookup needs).
    let fwd = (uplink == Uplink::Tap) as u8;
    host.sh(&format!(
        "sysctl -qw net.ipv6.conf.all.forwarding={fwd} net.ipv6.conf.default.accept_dad=0 && \
         ip tuntap add tap0 mode tap"
    ))?;
    match &lan_ns {
        Some(lan) => {
            host.sh(&format!(
                "ip link add up0 type veth peer name eth0 netns {} && \
                 ip addr add 10.99.0.1/24 dev up0 && ip -6 addr add {UPLINK6}/64 dev up0 nodad && \
                 ip link set up0 up",
                lan.name
            ))?;
            lan.sh(&format!(
                "ip addr add 10.99.0.2/24 dev eth0 && ip -6 addr add {LAN6}/64 dev eth0 nodad && \
                 ip link set eth0 up"
            ))?;
        }
        None => {
            host.sh(&format!(
                "ip tuntap add up0 mode tap && ip addr add 10.99.0.1/24 dev up0 && \
                 ip -6 addr add {UPLINK6}/64 dev up0 nodad && ip link set up0 up"
            ))?;
        }
    }
    host.umlbr_ok(&["up", "br0", "--address", "192.168.2.1/24"])?;
    host.sh("ip -6 addr add fd00:2::1/64 dev br0 nodad")?;
    host.umlbr_ok(&["attach", "up0", "--bridge", "br0", "--masquerade"])?;
    host.umlbr_ok(&["attach", "tap0", "--bridge", "br0"])?;

    let mut specs = vec![
        GuestSpec::new(
            "n6g",
            Transport::Vector,
            "tap0",
            "02:00:00:00:06:10",
            "192.168.2.10/24",
        )
        .gateway("192.168.2.1"),
    ];
    if uplink == Uplink::Tap {
        specs.push(GuestSpec::new(
            "n6lan",
            Transport::Legacy,
            "up0",
            "02:00:00:00:06:99",
            "10.99.0.2/24",
        ));
    }
    let guests = Guest::boot_all(&host.name, &specs)?;
    let g = &guests[0];
    guest_ipv6(g, &format!("{GUEST6}/64"), Some("fd00:2::1"))?;

    // The LAN host's servers.
    let server_cmd = format!("exec {PY} {script} serve {PORT} {log}");
    let _lan_server;
    let mut _lan_child = None;
    match &lan_ns {
        Some(lan) => {
            let mut c = lan
                .cmd("sh")
                .args(["-c", &server_cmd])
                .stdout(std::process::Stdio::null())
                .spawn()
                .context("starting the LAN server")?;
            std::thread::sleep(Duration::from_millis(500));
            ensure!(c.try_wait()?.is_none(), "the LAN server exited");
            _lan_child = Some(KillOnDrop(c));
        }
        None => {
            guest_ipv6(&guests[1], &format!("{LAN6}/64"), None)?;
            let s = guests[1].spawn(&server_cmd)?;
            s.wait_output("listening", Duration::from_secs(20))?;
            _lan_server = s;
        }
    }

    println!(
        "[{uplink:?}] guest -> LAN: {}",
        ping_ok(g, Ping::Iputils, LAN6, 3)?
    );
    for proto in ["tcp", "udp"] {
        let (rc, out) = g.run_timeout(
            &format!("{PY} {script} {proto} {LAN6} {PORT} 5"),
            Duration::from_secs(60),
        )?;
        ensure!(rc == 0, "[{uplink:?}] {proto} from the guest: {out}");
    }
    let peers = std::fs::read_to_string(&log).unwrap_or_default();
    let seen: Vec<&str> = peers.lines().collect();
    let (tcp, udp) = (
        seen.iter().filter(|l| l.starts_with("tcp ")).count(),
        seen.iter().filter(|l| l.starts_with("udp ")).count(),
    );
    ensure!(
        tcp == 5 && udp >= 5,
        "[{uplink:?}] the LAN server logged {tcp} TCP connections and {udp} datagrams: {peers}"
    );
    ensure!(
        seen.iter().all(|l| l.ends_with(&format!(" {UPLINK6}"))),
        "[{uplink:?}] the LAN server must see only {UPLINK6}: {peers}"
    );
    let v: Value = serde_json::from_str(&host.umlbr_ok(&["stats", "br0", "--json"])?)?;
    let c = &v["nat"]["counters6"];
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    println!("[{uplink:?}] IPv6 NAT counters: {c}");
    // Ping 3, TCP 5 connections, UDP 5 flows (one mapping per socket).
    ensure!(
        n("allocs") >= 11 && n("out_xdp") + n("out_tc") > 0 && n("in_xdp") + n("in_tc") > 0,
        "[{uplink:?}] the datapath did not translate: {c}"
    );
    if uplink == Uplink::Tap {
        ensure!(n("in_xdp") > 0, "[{uplink:?}] no reply took XDP: {c}");
    }
    let rows: Value = serde_json::from_str(&host.umlbr_ok(&["nat", "show", "--json"])?)?;
    let v6_rows = rows
        .as_array()
        .context("nat show --json")?
        .iter()
        .filter(|r| r["inside"].as_str().is_some_and(|s| s.contains(GUEST6)))
        .count();
    ensure!(v6_rows >= 11, "[{uplink:?}] nat show: {rows}");
    drop(guests);
    host.umlbr_ok(&["down", "br0"])?;
    Ok(())
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn masquerade6_tap_uplink() -> Result<()> {
    masquerade6(Uplink::Tap)
}

#[test]
fn masquerade6_veth_uplink() -> Result<()> {
    masquerade6(Uplink::Veth)
}
