//! Path MTU through the masquerade, inbound: a LAN host's reply bigger
//! than the MTU of the guest's port, with DF set, must come back to it as
//! ICMP "fragmentation needed" with that MTU (RFC 1191), as a router
//! (the kernel recipe: bridge + iptables masquerade, whose bridge takes
//! the smallest MTU of its ports) answers it; its PMTU cache then learns
//! the MTU and what fits reaches the guest. Issue 19's last point (a
//! guest at 1450 behind a VXLAN overlay is the same case).
//!
//! ```text
//!  guest (ns)                 host (ns)                          lan (ns)
//!  g0 192.168.2.2 mtu 1400 == vg0 mtu 1400  br0 192.168.2.1
//!                                           eth0 192.168.1.200 == lan0 192.168.1.1
//! ```
//!
//! The guest sends a UDP datagram to 192.168.1.1:6000 (the mapping); the
//! LAN answers on that flow with 1472 bytes of UDP (a 1500-byte packet)
//! with DF (`IP_PMTUDISC_DO`), reads its socket's error queue
//! (`IP_RECVERR`: the ICMP error's type, code, MTU and offender), its
//! `IP_MTU` and `ip route get`, then sends 1372 bytes (1400) that fit.
//! Veth guests (not UML): the datapath's part is the same for a tap, and
//! each test takes a few seconds. `_csum_full`: the LAN sends full
//! checksums (`tx off`), so XDP sees the reply (veth frames otherwise
//! carry CHECKSUM_PARTIAL, which XDP leaves to TC).
use std::{
    fs,
    path::PathBuf,
    process::Child,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use umlbr_tests::netns::Netns;

const GUEST_PY: &str = r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5000))
s.settimeout(0.5)
s.sendto(b"hello", ("192.168.1.1", 6000))
got = []
end = time.monotonic() + 7
while time.monotonic() < end:
    try:
        d, a = s.recvfrom(4096)
        got.append(len(d))
    except socket.timeout:
        pass
print("got", got, flush=True)
"#;

const LAN_PY: &str = r#"
import socket, struct, time
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_RECVERR, IP_MTU = 10, 2, 11, 14
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.168.1.1", 6000))
s.settimeout(15)
data, peer = s.recvfrom(2048)
print("from=%s:%d" % peer, flush=True)
s.connect(peer)
s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
s.send(b"x" * 1472)
err = "none"
end = time.monotonic() + 3
while time.monotonic() < end and err == "none":
    try:
        _, anc, _, _ = s.recvmsg(2048, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except (BlockingIOError, TimeoutError):
        time.sleep(0.05)
        continue
    for lvl, typ, d in anc:
        if lvl == socket.IPPROTO_IP and typ == IP_RECVERR:
            eno, origin, t, c, _, info, _ = struct.unpack("=IBBBBII", d[:16])
            err = "errno=%d origin=%d type=%d code=%d mtu=%d offender=%s" % (
                eno, origin, t, c, info, socket.inet_ntoa(d[20:24]))
print("err", err, flush=True)
print("mtu=%d" % s.getsockopt(socket.IPPROTO_IP, IP_MTU), flush=True)
s.send(b"y" * 1372)
time.sleep(0.5)
print("done", flush=True)
"#;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Umlbr,
    Kernel,
}

/// The namespaces, and a scratch directory for the logs (removed on
/// drop; the namespaces remove themselves).
struct Lab {
    guest: Netns,
    host: Netns,
    lan: Netns,
    dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn new(kind: Kind, csum_full: bool) -> Result<Lab> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("umlbrt-pm-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let lab = Lab {
            guest: Netns::without_ipv6("pm-guest")?,
            host: Netns::without_ipv6("pm-host")?,
            lan: Netns::without_ipv6("pm-lan")?,
            dir,
        };
        let (guest, lan) = (&lab.guest.name, &lab.lan.name);
        lab.host.sh(&format!(
            "set -e
             ip link add eth0 type veth peer name lan0 netns {lan}
             ip addr add 192.168.1.200/24 dev eth0
             ip link set eth0 up
             ip route add default via 192.168.1.1
             ip link add vg0 mtu 1400 type veth peer name g0 mtu 1400 netns {guest}
             ip link set vg0 up"
        ))?;
        lab.lan.sh("set -e
             ip addr add 192.168.1.1/24 dev lan0
             ip link set lan0 up")?;
        if csum_full {
            lab.lan.sh("ethtool -K lan0 tx off >/dev/null")?;
        }
        // GRO gives the veth NAPI, without which the frames XDP redirects
        // into the port never reach the guest (on once the link is up).
        lab.guest.sh("set -e
             ip addr add 192.168.2.2/24 dev g0
             ip link set g0 up
             ethtool -K g0 gro on >/dev/null
             ip route add default via 192.168.2.1")?;
        match kind {
            Kind::Umlbr => {
                lab.host.umlbr_ok(&[
                    "up",
                    "br0",
                    "--address",
                    "192.168.2.1/24",
                    "--masquerade",
                    "eth0",
                ])?;
                lab.host.umlbr_ok(&["attach", "vg0"])?;
            }
            Kind::Kernel => {
                lab.host.sh("set -e
                     ip link add br0 type bridge stp_state 0 mcast_snooping 0
                     ip link set vg0 master br0
                     ip addr add 192.168.2.1/24 dev br0
                     ip link set br0 up
                     sysctl -qw net.ipv4.ip_forward=1
                     iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE")?;
            }
        }
        // The guest's first packet must not wait for ARP through a bridge
        // that has not learned it yet.
        lab.guest.sh("ping -c 1 -W 2 192.168.2.1 >/dev/null")?;
        Ok(lab)
    }

    fn spawn(&self, ns: &Netns, name: &str, script: &str) -> Result<(Child, PathBuf)> {
        let log = self.dir.join(name);
        Ok((ns.spawn_logged(&["python3", "-c", script], &log)?, log))
    }
}

/// Wait for `child` (at most `secs`), then its log.
fn finish((mut child, log): (Child, PathBuf), secs: u64) -> Result<String> {
    let end = Instant::now() + Duration::from_secs(secs);
    while child.try_wait()?.is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))
}

fn run(kind: Kind, csum_full: bool) -> Result<()> {
    let lab = Lab::new(kind, csum_full)?;
    let lan = lab.spawn(&lab.lan, "lan.log", LAN_PY)?;
    std::thread::sleep(Duration::from_millis(300));
    let guest = lab.spawn(&lab.guest, "guest.log", GUEST_PY)?;
    let lan_out = finish(lan, 20)?;
    let guest_out = finish(guest, 12)?;
    let route = lab.lan.sh("ip route get 192.168.1.200")?;
    let stats = match kind {
        Kind::Umlbr => lab.host.umlbr_ok(&["stats", "br0"])?,
        Kind::Kernel => String::new(),
    };
    eprintln!("lan:\n{lan_out}\nguest:\n{guest_out}\nroute: {route}\n{stats}");
    let want = "err errno=90 origin=2 type=3 code=4 mtu=1400 offender=192.168.1.200";
    if !lan_out.contains(want) {
        bail!("the LAN host got no \"fragmentation needed\" with mtu 1400:\n{lan_out}");
    }
    if !lan_out.contains("mtu=1400") || !route.contains("mtu 1400") {
        bail!("the LAN host did not learn the path MTU 1400:\n{lan_out}\n{route}");
    }
    // The 1500-byte datagram never reaches the guest; what fits does.
    if !guest_out.contains("got [1372]") {
        bail!("the guest should get the 1372-byte datagram alone:\n{guest_out}");
    }
    if kind == Kind::Umlbr {
        let json: serde_json::Value =
            serde_json::from_str(&lab.host.umlbr_ok(&["stats", "br0", "--json"])?)?;
        let nat = find_key(&json, "frag_needed").context("no frag_needed in stats --json")?;
        if nat.as_u64() != Some(1) {
            bail!("stats --json: frag_needed {nat}, want 1");
        }
    }
    Ok(())
}

/// The first value of `key` anywhere in `v`.
fn find_key<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .or_else(|| m.values().find_map(|x| find_key(x, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

#[test]
fn pmtu_frag_needed_umlbr() -> Result<()> {
    run(Kind::Umlbr, false)
}

#[test]
fn pmtu_frag_needed_csum_full_umlbr() -> Result<()> {
    run(Kind::Umlbr, true)
}

#[test]
fn pmtu_frag_needed_kernel() -> Result<()> {
    run(Kind::Kernel, false)
}
