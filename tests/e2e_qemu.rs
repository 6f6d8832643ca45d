//! End to end with a QEMU guest: a Debian kernel under TCG with a
//! virtio-net NIC on a umlbr tap with vnet headers (tests/src/qemu.rs),
//! on one bridge with a User Mode Linux guest (tests/src/uml.rs) and the
//! host port. The QEMU guest pings both, the UML guest pings it, and 8 MiB
//! of TCP from the QEMU guest to the host cross the bridge as GSO
//! super-frames through the TC program (what the README promises for
//! QEMU guests: `tap add --vnet-hdr` gives TC only).
//!
//! Skips, saying so, only when qemu-system-x86_64 is missing (`cargo xtask
//! setup` installs it). The first run fetches Debian's 6.12 kernel package
//! into target/vm/ (`apt-get download`; $UMLBR_QEMU_KERNEL picks another).
//! Bounded: ~25 s, under 4 min at worst; the guards kill QEMU and the UML guest and
//! delete the namespace on failure too. Root. Run:
//!   cargo test -p umlbr-tests --test e2e_qemu -- --test-threads=1 --nocapture
use std::{
    io::Read,
    net::TcpListener,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use umlbr_tests::{
    netns::{self, Netns},
    qemu::{QemuGuest, QemuSpec},
    uml::{self, Guest, GuestSpec, Ping, Transport},
    vm,
};

const HOST_IP: &str = "192.168.2.1";
const UML_IP: &str = "192.168.2.3";
const QEMU_IP: &str = "192.168.2.4";
const QTAP: &str = "qtap0";
const BYTES: usize = 8 << 20;

/// A port's counters from `umlbr stats br0 --json`.
fn port_stats(ns: &Netns, port: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(&ns.umlbr_ok(&["stats", "br0", "--json"])?)?;
    v["ports"]
        .as_array()
        .context("stats --json: no ports")?
        .iter()
        .find(|p| p["name"] == port)
        .map(|p| p["stats"].clone())
        .with_context(|| format!("stats --json: no port {port}"))
}

fn delta(before: &Value, after: &Value, field: &str) -> u64 {
    after[field].as_u64().unwrap_or(0) - before[field].as_u64().unwrap_or(0)
}

/// Accept one connection on HOST_IP:port inside the namespace within
/// `timeout`, read `want` bytes (or to EOF) and close: the bytes read.
fn receive(ns: &str, port: u16, want: usize, timeout: Duration) -> Result<usize> {
    netns::run_in(ns, || {
        let l = TcpListener::bind((HOST_IP, port)).context("binding the host's listener")?;
        l.set_nonblocking(true)?;
        let start = Instant::now();
        let mut s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ensure!(
                        start.elapsed() < timeout,
                        "no connection from the QEMU guest in {timeout:?}"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e).context("accept"),
            }
        };
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0;
        while n < want {
            match s.read(&mut buf)? {
                0 => break,
                k => n += k,
            }
            ensure!(
                start.elapsed() < timeout,
                "transfer not done in {timeout:?}"
            );
        }
        Ok(n)
    })
}

#[test]
fn qemu_virtio_net_guest() -> Result<()> {
    if !vm::qemu_available() {
        eprintln!(
            "SKIPPED qemu_virtio_net_guest: {} is not installed (`cargo xtask setup` \
             installs qemu-system-x86)",
            vm::QEMU
        );
        return Ok(());
    }
    let t0 = Instant::now();
    let ns = Netns::without_ipv6("vmqemu")?;
    ns.umlbr_ok(&["up", "br0", "--address", &format!("{HOST_IP}/24")])?;
    ns.umlbr_ok(&["tap", "add", QTAP, "--vnet-hdr"])?;
    ns.umlbr_ok(&["attach", QTAP])?;
    ns.umlbr_ok(&["tap", "add", "tap1"])?;
    ns.umlbr_ok(&["attach", "tap1"])?;

    let uml = Guest::boot(
        &ns.name,
        &GuestSpec::new(
            "u1",
            Transport::Legacy,
            "tap1",
            "02:00:00:00:00:03",
            &format!("{UML_IP}/24"),
        )
        .gateway(HOST_IP),
    )?;
    let mut q = QemuGuest::boot(
        &ns.name,
        &QemuSpec::new("q1", QTAP, "52:54:00:00:00:04", &format!("{QEMU_IP}/24")).gateway(HOST_IP),
    )?;
    let ping = Duration::from_secs(20);
    let r = (|| -> Result<()> {
        let out = q.run_ok(&format!("ping -c 3 -W 5 {UML_IP}"), ping)?;
        println!("qemu -> uml: {}", uml::ping_summary(&out));
        let out = q.run_ok(&format!("ping -c 3 -W 5 {HOST_IP}"), ping)?;
        println!("qemu -> host: {}", uml::ping_summary(&out));
        println!(
            "uml -> qemu: {}",
            uml::ping_ok(&uml, Ping::Busybox, QEMU_IP, 3)?
        );

        // 8 MiB of TCP from the guest to the host: the guest's TSO hands
        // the tap GSO super-frames, which only TC can switch.
        let before = port_stats(&ns, QTAP)?;
        let name = ns.name.clone();
        let rx = std::thread::spawn(move || receive(&name, 5001, BYTES, Duration::from_secs(45)));
        std::thread::sleep(Duration::from_millis(300));
        let sent = Instant::now();
        let n = q.spawn(&format!(
            "dd if=/dev/zero bs=65536 count={} 2>/dev/null | nc {HOST_IP} 5001",
            BYTES / 65536
        ))?;
        let got = rx
            .join()
            .map_err(|_| anyhow::anyhow!("listener panicked"))??;
        let took = sent.elapsed();
        let (rc, out) = q.wait(n, Duration::from_secs(20))?;
        ensure!(
            got == BYTES,
            "the host got {got} of {BYTES} bytes (nc exited {rc}: {out})"
        );
        let after = port_stats(&ns, QTAP)?;
        let (pkts, bytes, tc) = (
            delta(&before, &after, "rx_packets"),
            delta(&before, &after, "rx_bytes"),
            delta(&before, &after, "tc"),
        );
        let avg = bytes / pkts.max(1);
        println!(
            "8 MiB qemu -> host in {:.2} s ({:.0} Mbit/s): {QTAP} rx {pkts} frames, {bytes} bytes \
             (avg {avg} B), TC {tc}",
            took.as_secs_f64(),
            BYTES as f64 * 8.0 / took.as_secs_f64() / 1e6
        );
        ensure!(
            tc >= pkts.saturating_sub(2) && tc > 0,
            "{QTAP}'s frames should all be switched by TC (a vnet-header tap): \
             {tc} of {pkts} were"
        );
        ensure!(
            avg > 1518,
            "no GSO super-frames: {QTAP} received {pkts} frames of {avg} bytes on average"
        );
        Ok(())
    })();
    if let Err(e) = r {
        bail!(
            "{e:#}\n--- QEMU console ---\n{}\n--- UML console ---\n{}",
            q.console_tail(30),
            uml.console_tail(20)
        );
    }
    q.halt();
    let took = t0.elapsed();
    println!("e2e_qemu: {:.1} s", took.as_secs_f64());
    ensure!(
        took < Duration::from_secs(180),
        "took {took:?}, over 3 minutes"
    );
    Ok(())
}
