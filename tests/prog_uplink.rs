//! Table-driven BPF_PROG_TEST_RUN tests of umlbr's uplink datapath
//! (scenario C: the host's NIC is a port, guests are bridged onto its LAN).
//!
//! Each test makes a network namespace and moves its own thread into it.
//! In it: taps g1, g2 (guest ports), hp (the bridge's host port) and up0,
//! the uplink (a tap, so that what is sent out of it can be read back; MAC
//! `UP_MAC`, 192.168.1.200/24). The maps are filled as `umlbr up --uplink
//! up0` leaves them: `Config.uplink`/`uplink_mac`, `CFG_F_TC_FLOOD`, a
//! static `FDB_F_LOCAL` entry for the uplink's MAC, up0 in the flood list
//! (and in the devmap unless the case models a veth uplink, which
//! userspace leaves out of it).
//!
//! Checked for every case: the return code, the output bytes (always the
//! input: the switch never rewrites), the skb mark the TC program leaves
//! (the local mark on what it hands to the uplink's own stack), the copies
//! each tap transmits and the copies that enter up0's own stack (an
//! AF_PACKET socket on up0 sees what `bpf_clone_redirect(.., BPF_F_INGRESS)`
//! injects), the FDB, and every port's counters.
//!
//! Live tests then attach the programs to the devices and show the host
//! talking with a guest through the uplink without a frame reaching the
//! wire.
//!
//! Needs root.
use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuHashMap, PerCpuValues},
    programs::{ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp},
};
use umlbr_common::{
    CFG_F_TC_FLOOD, Config, FDB_F_LOCAL, FDB_F_STATIC, FdbEntry, FdbKey, PORT_F_NO_XDP_TX,
    PORT_KIND_OTHER, PORT_KIND_UPLINK, PortStats, names,
};
use umlbr_tests::{
    netns::Netns,
    netns::{InNetns, ifindex, open_tap},
    wire::{BROADCAST, Frame, Mac, fmt_mac, mac},
};

// ---------------------------------------------------------------------------
// Kernel constants and context layouts.

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// The skb mark umlbr's TC program puts on frames it hands to the uplink's
/// own stack (umlbr-ebpf/src/main.rs, LOCAL_MARK: "umlb").
const LOCAL_MARK: u32 = 0x756d_6c62;

fn xdp_md(data_end: u32, ingress_ifindex: u32) -> [u8; 24] {
    let mut c = [0u8; 24];
    c[4..8].copy_from_slice(&data_end.to_ne_bytes());
    c[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    c
}

/// struct __sk_buff: mark (offset 8), ingress_ifindex (36), ifindex (40).
fn sk_buff(mark: u32, ingress_ifindex: u32, ifindex: u32) -> [u8; 192] {
    let mut c = [0u8; 192];
    c[8..12].copy_from_slice(&mark.to_ne_bytes());
    c[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    c[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    c
}

const SEC: u64 = 1_000_000_000;
const AGING_NS: u64 = 60 * SEC;

// ---------------------------------------------------------------------------
// Stations.

const UP_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0xc8];
/// Guests behind g1 and g2.
const G1: Mac = [0x02, 0, 0, 0, 0x02, 0x11];
const G2: Mac = [0x02, 0, 0, 0, 0x02, 0x12];
/// A host on the LAN, behind the uplink.
const L: Mac = [0x02, 0, 0, 0, 0x01, 0x32];
/// The bridge's host interface, behind the host port.
const H: Mac = [0x02, 0, 0, 0, 0x03, 0x01];
/// Nobody's.
const X: Mac = [0x02, 0, 0, 0, 0x09, 0x99];

const UP_IP: [u8; 4] = [192, 168, 1, 200];
const G1_IP: [u8; 4] = [192, 168, 1, 10];

// ---------------------------------------------------------------------------
// The bench.

fn now_coarse() -> u64 {
    umlbr::sys::monotonic_coarse_ns()
}

/// An AF_PACKET socket on one device that reports the frames entering
/// its stack (not the ones it sends).
struct Sniffer(OwnedFd);

impl Sniffer {
    fn new(ifindex: u32) -> Result<Self> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto as i32,
            )
        };
        ensure!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero sockaddr_ll is valid.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = proto;
        sa.sll_ifindex = ifindex as i32;
        // SAFETY: valid fd and address.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(
            r == 0,
            "binding AF_PACKET: {}",
            std::io::Error::last_os_error()
        );
        Ok(Sniffer(fd))
    }

    /// Frames received so far (not PACKET_OUTGOING).
    fn incoming(&self) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: all-zero sockaddr_ll is valid.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: valid buffers.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut sa as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                return v;
            }
            if sa.sll_pkttype != libc::PACKET_OUTGOING {
                v.push(buf[..n as usize].to_vec());
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dev {
    Guest1,
    Guest2,
    Host,
    Up,
}

const DEVS: [Dev; 4] = [Dev::Guest1, Dev::Guest2, Dev::Host, Dev::Up];
const TAP_NAMES: [&str; 4] = ["g1", "g2", "hp", "up0"];

fn idx(d: Dev) -> usize {
    DEVS.iter().position(|x| *x == d).unwrap()
}

/// Field order is drop order.
struct Bench {
    ebpf: Ebpf,
    sniffer: Sniffer,
    taps: Vec<(u32, File)>,
    nr_cpus: usize,
    _in: InNetns,
    _ns: Netns,
}

impl Bench {
    fn new(tag: &str) -> Result<Self> {
        let ns = Netns::new(&format!("upl-{tag}"))?;
        ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")?;
        let inside = InNetns::enter(&ns)?;
        let mut taps = Vec::new();
        for name in TAP_NAMES {
            let f = open_tap(name)?;
            taps.push((ifindex(name)?, f));
        }
        ns.sh(&format!(
            "ip link set up0 address {} && ip addr add 192.168.1.200/24 dev up0 \
             && ip link set hp address {} \
             && for t in g1 g2 hp up0; do ip link set $t up || exit 1; done",
            fmt_mac(&UP_MAC),
            fmt_mac(&H)
        ))?;
        let sniffer = Sniffer::new(ifindex("up0")?)?;
        let ebpf = umlbr::object::load().context("load_object")?;
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut b = Bench {
            ebpf,
            sniffer,
            taps,
            nr_cpus,
            _in: inside,
            _ns: ns,
        };
        b.reset(true, true)?;
        Ok(b)
    }

    fn map<'a, T>(&'a mut self, name: &str) -> Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let m = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("no map {name}"))?;
        Ok(T::try_from(m)?)
    }

    fn ifindex(&self, d: Dev) -> u32 {
        self.taps[idx(d)].0
    }

    /// As `umlbr up br0 --uplink up0` and `attach g1 g2` leave it (with hp
    /// as the host port): the uplink configured (`with_uplink`), in the
    /// devmap unless it models a veth (`uplink_xdp_tx`); empty FDB but for
    /// the uplink's static local MAC; zero counters; quiet taps.
    fn reset(&mut self, with_uplink: bool, uplink_xdp_tx: bool) -> Result<()> {
        let ports: Vec<u32> = DEVS.iter().map(|&d| self.ifindex(d)).collect();
        let (host, up) = (self.ifindex(Dev::Host), self.ifindex(Dev::Up));
        {
            let mut devmap: DevMapHash<&mut MapData> = self.map(names::PORTS)?;
            for &i in &ports {
                if i == up && !uplink_xdp_tx {
                    let _ = devmap.remove(i);
                } else {
                    devmap.insert(i, i, None, 0)?;
                }
            }
        }
        let mut list: Array<&mut MapData, u32> = self.map(names::PORT_LIST)?;
        for (n, &i) in ports.iter().enumerate() {
            list.set(n as u32, i, 0)?;
        }
        let mut config: Array<&mut MapData, Config> = self.map(names::CONFIG)?;
        config.set(
            0,
            Config {
                aging_ns: AGING_NS,
                nr_ports: ports.len() as u32,
                host_port: host,
                uplink: if with_uplink { up } else { 0 },
                flags: if with_uplink { CFG_F_TC_FLOOD } else { 0 },
                uplink_mac: if with_uplink { UP_MAC } else { [0; 6] },
                _pad: [0; 2],
            },
            0,
        )?;
        let n = self.nr_cpus;
        let mut stats: PerCpuHashMap<&mut MapData, u32, PortStats> = self.map(names::PORT_STATS)?;
        for &i in &ports {
            let s = PortStats {
                kind: if i == up {
                    PORT_KIND_UPLINK
                } else {
                    PORT_KIND_OTHER
                },
                flags: if i == up && !uplink_xdp_tx {
                    PORT_F_NO_XDP_TX
                } else {
                    0
                },
                ..Default::default()
            };
            stats.insert(i, PerCpuValues::try_from(vec![s; n])?, 0)?;
        }
        let mut fdb: HashMap<&mut MapData, FdbKey, FdbEntry> = self.map(names::FDB)?;
        let keys: Vec<FdbKey> = fdb.keys().collect::<Result<_, _>>()?;
        for k in keys {
            fdb.remove(&k)?;
        }
        if with_uplink {
            fdb.insert(
                FdbKey::new(UP_MAC),
                FdbEntry {
                    ifindex: up,
                    flags: FDB_F_STATIC | FDB_F_LOCAL,
                    updated_ns: now_coarse(),
                },
                0,
            )?;
        }
        self.quiet();
        Ok(())
    }

    /// Drop whatever the taps and the sniffer hold.
    fn quiet(&mut self) {
        let mut buf = vec![0u8; 65536];
        for (_, f) in &mut self.taps {
            while f.read(&mut buf).is_ok() {}
        }
        let _ = self.sniffer.incoming();
    }

    fn fdb_insert(&mut self, mac: Mac, d: Dev, flags: u32, age_ns: u64) -> Result<()> {
        let i = self.ifindex(d);
        let mut fdb: HashMap<&mut MapData, FdbKey, FdbEntry> = self.map(names::FDB)?;
        fdb.insert(
            FdbKey::new(mac),
            FdbEntry {
                ifindex: i,
                flags,
                updated_ns: now_coarse() - age_ns,
            },
            0,
        )?;
        Ok(())
    }

    fn fdb(&mut self) -> Result<Vec<(Mac, FdbEntry)>> {
        let fdb: HashMap<&mut MapData, FdbKey, FdbEntry> = self.map(names::FDB)?;
        let mut v: Vec<(Mac, FdbEntry)> = fdb
            .iter()
            .map(|r| r.map(|(k, e)| (k.mac, e)))
            .collect::<Result<_, _>>()?;
        v.sort_by_key(|(m, _)| *m);
        Ok(v)
    }

    fn stats(&mut self) -> Result<Vec<PortStats>> {
        let ports: Vec<u32> = DEVS.iter().map(|&d| self.ifindex(d)).collect();
        let stats: PerCpuHashMap<&mut MapData, u32, PortStats> = self.map(names::PORT_STATS)?;
        let mut out = Vec::new();
        for i in ports {
            let mut t = PortStats::default();
            for (n, s) in stats.get(&i, 0)?.iter().enumerate() {
                if n == 0 {
                    (t.kind, t.flags) = (s.kind, s.flags);
                }
                t.rx_packets += s.rx_packets;
                t.rx_bytes += s.rx_bytes;
                t.forwarded += s.forwarded;
                t.flooded += s.flooded;
                t.dropped += s.dropped;
                t.learned += s.learned;
                t.moved += s.moved;
                t.xdp_native += s.xdp_native;
                t.xdp_generic += s.xdp_generic;
                t.tc += s.tc;
            }
            out.push(t);
        }
        Ok(out)
    }

    fn classifier(&self, name: &str) -> &SchedClassifier {
        self.ebpf
            .program(name)
            .expect("program")
            .try_into()
            .expect("a TC program")
    }

    /// Run `prog` on `frame`: (return code, output bytes, mark after).
    fn run(
        &self,
        prog: Prog,
        ingress: u32,
        mark: u32,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>, u32)> {
        let mut out = vec![0u8; frame.len() + 512];
        let mut ctx_out = [0u8; 192];
        let r = match prog {
            Prog::Xdp => {
                let ctx = xdp_md(frame.len() as u32, ingress);
                let xdp: &Xdp = self
                    .ebpf
                    .program(names::XDP_PROG)
                    .expect("umlbr_xdp")
                    .try_into()
                    .expect("XDP");
                xdp.test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    ..Default::default()
                })
            }
            Prog::Tc | Prog::TcOut => {
                let name = if prog == Prog::Tc {
                    names::TC_PROG
                } else {
                    names::TC_OUT_PROG
                };
                // Egress: no ingress device.
                let iif = if prog == Prog::Tc { ingress } else { 0 };
                let ctx = sk_buff(mark, iif, ingress);
                self.classifier(name).test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    ctx_out: Some(&mut ctx_out),
                    ..Default::default()
                })
            }
        }
        .map_err(|e| match e {
            ProgramError::SyscallError(s) => anyhow::anyhow!("test run failed: {}", s.io_error),
            e => anyhow::anyhow!("test run failed: {e}"),
        })?;
        out.truncate(r.data_size_out as usize);
        let mark = u32::from_ne_bytes(ctx_out[8..12].try_into()?);
        Ok((r.return_value, out, mark))
    }

    /// What each tap transmitted and what entered up0's stack: waits for
    /// `want` (taps g1 g2 hp up0, then up0's stack) up to a second, then
    /// 20 ms more for extras.
    fn collect(&mut self, want: &[usize; 5]) -> [Vec<Vec<u8>>; 5] {
        let mut got: [Vec<Vec<u8>>; 5] = Default::default();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut grace: Option<Instant> = None;
        loop {
            for (i, (_, f)) in self.taps.iter_mut().enumerate() {
                loop {
                    match f.read(&mut buf) {
                        Ok(n) => got[i].push(buf[..n].to_vec()),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("reading {}: {e}", TAP_NAMES[i]),
                    }
                }
            }
            got[4].extend(self.sniffer.incoming());
            let now = Instant::now();
            if grace.is_none() && got.iter().zip(want).all(|(g, w)| g.len() >= *w) {
                grace = Some(now + Duration::from_millis(20));
            }
            if grace.is_some_and(|g| now >= g) || now >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

// ---------------------------------------------------------------------------
// The table.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    /// umlbr_xdp on the ingress port.
    Xdp,
    /// umlbr_tc on the ingress port's tcx ingress.
    Tc,
    /// umlbr_tc_out on the uplink's tcx egress.
    TcOut,
}

/// How the ingress port's counters move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Count {
    /// Not at all.
    #[default]
    Nothing,
    /// Received and finished by this program, not sent anywhere.
    Rx,
    Forwarded,
    Flooded,
}

#[derive(Clone, Debug)]
struct Expect {
    ret: u32,
    /// Copies transmitted by g1, g2, hp, up0, and entering up0's stack.
    copies: [usize; 5],
    /// The skb mark afterwards (TC).
    mark: u32,
    count: Count,
    /// The frame's source is learned on the ingress port.
    learns: bool,
}

/// An FDB entry before the run: MAC, port, flags, age.
#[derive(Clone, Copy, Debug)]
struct Pre(Mac, Dev, u32, u64);

#[derive(Clone, Debug)]
struct Case {
    name: &'static str,
    ingress: Dev,
    frame: Vec<u8>,
    mark: u32,
    fdb: Vec<Pre>,
    /// The source MAC is learned on the ingress port (by the programs
    /// whose expectations are set after `learns()`).
    learns: bool,
    /// FDB entries gone afterwards (aged out and removed by the lookup).
    removed: Vec<Mac>,
    uplink_xdp_tx: bool,
    with_uplink: bool,
    xdp: Option<Expect>,
    tc: Option<Expect>,
    tc_out: Option<Expect>,
}

impl Case {
    fn new(name: &'static str, ingress: Dev, frame: Vec<u8>) -> Self {
        Case {
            name,
            ingress,
            frame,
            mark: 0,
            fdb: vec![],
            learns: false,
            removed: vec![],
            uplink_xdp_tx: true,
            with_uplink: true,
            xdp: None,
            tc: None,
            tc_out: None,
        }
    }
    fn fdb(mut self, pre: &[Pre]) -> Self {
        self.fdb = pre.to_vec();
        self
    }
    fn learns(mut self) -> Self {
        self.learns = true;
        self
    }
    fn xdp(mut self, ret: u32, count: Count) -> Self {
        self.xdp = Some(Expect {
            ret,
            copies: [0; 5],
            mark: 0,
            count,
            learns: self.learns,
        });
        self
    }
    /// XDP passes the frame before switching it: nothing learned.
    fn xdp_untouched(mut self) -> Self {
        self.xdp = Some(Expect {
            ret: XDP_PASS,
            copies: [0; 5],
            mark: 0,
            count: Count::Nothing,
            learns: false,
        });
        self
    }
    fn tc(mut self, ret: u32, copies: [usize; 5], mark: u32, count: Count) -> Self {
        self.tc = Some(Expect {
            ret,
            copies,
            mark,
            count,
            learns: self.learns,
        });
        self
    }
    fn tc_out(mut self, ret: u32, copies: [usize; 5]) -> Self {
        self.tc_out = Some(Expect {
            ret,
            copies,
            mark: 0,
            count: Count::Nothing,
            learns: false,
        });
        self
    }
}

fn learned(m: Mac, d: Dev) -> Pre {
    Pre(m, d, 0, 0)
}

fn pattern(dst: Mac, src: Mac) -> Vec<u8> {
    Frame::new(dst, src).pattern(46).build()
}

fn table() -> Vec<Case> {
    use Count::*;
    use Dev::*;
    let ping_host = Frame::new(UP_MAC, G1)
        .icmp_echo(G1_IP, UP_IP, false, 1, 1, b"to the host")
        .build();
    vec![
        // Guests and the uplink's own stack.
        Case::new("guest -> the uplink's MAC: XDP passes, TC hands it to up0's stack, marked", Guest1, ping_host.clone())
            .learns()
            .xdp(XDP_PASS, Nothing)
            .tc(TC_ACT_REDIRECT, [0; 5], LOCAL_MARK, Forwarded),
        Case::new("the host port -> the uplink's MAC: to up0's stack, marked", Host, pattern(UP_MAC, H))
            .learns()
            .xdp(XDP_PASS, Nothing)
            .tc(TC_ACT_REDIRECT, [0; 5], LOCAL_MARK, Forwarded),
        Case::new(
            "CHECKSUM_PARTIAL UDP from a guest to the uplink's MAC: XDP leaves it to TC untouched, TC hands it up",
            Guest1,
            Frame::new(UP_MAC, G1)
                .udp_partial(G1_IP, 5000, UP_IP, 53, b"offloaded")
                .build(),
        )
        .xdp_untouched()
        .learns()
        .tc(TC_ACT_REDIRECT, [0; 5], LOCAL_MARK, Forwarded),
        Case::new("LAN -> the uplink's MAC: XDP passes, TC lets it up (TC_ACT_OK)", Up, pattern(UP_MAC, L))
            .learns()
            .xdp(XDP_PASS, Nothing)
            .tc(TC_ACT_OK, [0; 5], 0, Rx),
        // Floods.
        Case::new(
            "broadcast from a guest: TC clones to the other ports and up0's stack (marked), drops the original",
            Guest1,
            pattern(BROADCAST, G1),
        )
        .learns()
        .xdp(XDP_PASS, Nothing)
        .tc(TC_ACT_SHOT, [0, 1, 1, 1, 1], LOCAL_MARK, Flooded),
        Case::new(
            "IPv4 multicast from a guest: as a broadcast",
            Guest2,
            pattern(mac("01:00:5e:00:00:fb"), G2),
        )
        .learns()
        .xdp(XDP_PASS, Nothing)
        .tc(TC_ACT_SHOT, [1, 0, 1, 1, 1], LOCAL_MARK, Flooded),
        Case::new(
            "unknown unicast from a guest: to the other ports and the wire, not up0's stack",
            Guest1,
            pattern(X, G1),
        )
        .learns()
        .xdp(XDP_PASS, Nothing)
        .tc(TC_ACT_SHOT, [0, 1, 1, 1, 0], 0, Flooded),
        Case::new(
            "broadcast from the uplink: clones to the guests and the host port, the original goes up (TC_ACT_OK)",
            Up,
            pattern(BROADCAST, L),
        )
        .learns()
        .xdp(XDP_PASS, Nothing)
        .tc(TC_ACT_OK, [1, 1, 1, 0, 0], 0, Flooded),
        Case::new(
            "unknown unicast from the uplink: clones to the other ports, dropped",
            Up,
            pattern(X, L),
        )
        .learns()
        .xdp(XDP_PASS, Nothing)
        .tc(TC_ACT_SHOT, [1, 1, 1, 0, 0], 0, Flooded),
        Case {
            removed: vec![G1],
            ..Case::new(
                "from the uplink to a guest whose entry aged: flooded, the entry removed",
                Up,
                pattern(G1, L),
            )
            .fdb(&[Pre(G1, Guest1, 0, 2 * AGING_NS), learned(L, Up)])
            .xdp(XDP_PASS, Nothing)
            .tc(TC_ACT_SHOT, [1, 1, 1, 0, 0], 0, Flooded)
        },
        Case::new(
            "a guest claiming the uplink's MAC: the static entry stays; its broadcast floods",
            Guest1,
            pattern(BROADCAST, UP_MAC),
        )
        .xdp(XDP_PASS, Nothing)
        .tc(TC_ACT_SHOT, [0, 1, 1, 1, 1], LOCAL_MARK, Flooded),
        // Known unicast across the uplink.
        Case::new("from the uplink to a known guest: forwarded", Up, pattern(G1, L))
            .fdb(&[learned(G1, Guest1)])
            .learns()
            .xdp(XDP_REDIRECT, Forwarded)
            .tc(TC_ACT_REDIRECT, [0; 5], 0, Forwarded),
        Case::new("from a guest to a LAN host behind the uplink: forwarded", Guest2, pattern(L, G2))
            .fdb(&[learned(L, Up)])
            .learns()
            .xdp(XDP_REDIRECT, Forwarded)
            .tc(TC_ACT_REDIRECT, [0; 5], 0, Forwarded),
        Case {
            uplink_xdp_tx: false,
            ..Case::new(
                "to a LAN host, uplink outside the devmap (veth): XDP passes, TC forwards",
                Guest2,
                pattern(L, G2),
            )
            .fdb(&[learned(L, Up)])
            .learns()
            .xdp(XDP_PASS, Nothing)
            .tc(TC_ACT_REDIRECT, [0; 5], 0, Forwarded)
        },
        Case {
            uplink_xdp_tx: false,
            ..Case::new(
                "broadcast from a guest, uplink outside the devmap: TC floods as usual",
                Guest1,
                pattern(BROADCAST, G1),
            )
            .learns()
            .xdp(XDP_PASS, Nothing)
            .tc(TC_ACT_SHOT, [0, 1, 1, 1, 1], LOCAL_MARK, Flooded)
        },
        // What TC handed up itself.
        Case {
            mark: LOCAL_MARK,
            ..Case::new(
                "a frame with the local mark on up0's TC ingress: TC_ACT_OK, mark cleared, nothing counted or learned",
                Up,
                pattern(BROADCAST, G1),
            )
            .tc(TC_ACT_OK, [0; 5], 0, Nothing)
        },
        Case {
            mark: LOCAL_MARK,
            ..Case::new(
                "the local mark on unicast to the uplink's MAC: let up, mark cleared",
                Up,
                ping_host.clone(),
            )
            .tc(TC_ACT_OK, [0; 5], 0, Nothing)
        },
        Case {
            mark: LOCAL_MARK + 1,
            ..Case::new(
                "another mark on up0's TC ingress: switched as usual (flooded), mark kept",
                Up,
                pattern(BROADCAST, L),
            )
            .learns()
            .tc(TC_ACT_OK, [1, 1, 1, 0, 0], LOCAL_MARK + 1, Flooded)
        },
        // The uplink's egress: the host's own frames.
        Case::new("host -> a known guest (tc_out): to the guest's port", Up, pattern(G1, UP_MAC))
            .fdb(&[learned(G1, Guest1)])
            .tc_out(TC_ACT_REDIRECT, [0; 5]),
        Case::new("host -> a guest with a static entry (tc_out): to its port", Up, pattern(G2, UP_MAC))
            .fdb(&[Pre(G2, Guest2, FDB_F_STATIC, 10 * AGING_NS)])
            .tc_out(TC_ACT_REDIRECT, [0; 5]),
        Case::new("host -> the bridge's host interface (tc_out): to the host port", Up, pattern(H, UP_MAC))
            .fdb(&[learned(H, Host)])
            .tc_out(TC_ACT_REDIRECT, [0; 5]),
        Case::new(
            "host broadcast (tc_out): clones to the guests, not the host port, and on to the wire",
            Up,
            Frame::new(BROADCAST, UP_MAC)
                .arp_request(UP_IP, G1_IP)
                .build(),
        )
        .tc_out(TC_ACT_OK, [1, 1, 0, 0, 0]),
        Case::new(
            "host multicast (tc_out): as a broadcast",
            Up,
            pattern(mac("01:00:5e:00:00:01"), UP_MAC),
        )
        .tc_out(TC_ACT_OK, [1, 1, 0, 0, 0]),
        Case::new("host -> unknown MAC (tc_out): to the wire", Up, pattern(X, UP_MAC))
            .tc_out(TC_ACT_OK, [0; 5]),
        Case::new("host -> a LAN host (tc_out): to the wire", Up, pattern(L, UP_MAC))
            .fdb(&[learned(L, Up)])
            .tc_out(TC_ACT_OK, [0; 5]),
        Case {
            removed: vec![G1],
            ..Case::new(
                "host -> a guest whose entry aged (tc_out): to the wire, entry removed",
                Up,
                pattern(G1, UP_MAC),
            )
            .fdb(&[Pre(G1, Guest1, 0, 2 * AGING_NS)])
            .tc_out(TC_ACT_OK, [0; 5])
        },
        Case::new("host -> its own MAC (tc_out): to the wire", Up, pattern(UP_MAC, UP_MAC))
            .tc_out(TC_ACT_OK, [0; 5]),
        Case::new(
            "a guest's frame bridged out of the uplink (tc_out): untouched",
            Up,
            pattern(L, G1),
        )
        .fdb(&[learned(G1, Guest1), learned(L, Up)])
        .tc_out(TC_ACT_OK, [0; 5]),
        Case::new(
            "a guest's broadcast going out of the uplink (tc_out): untouched, no clones",
            Up,
            pattern(BROADCAST, G1),
        )
        .fdb(&[learned(G1, Guest1)])
        .tc_out(TC_ACT_OK, [0; 5]),
        Case::new(
            "a LAN host's MAC as source (tc_out): untouched",
            Up,
            pattern(G1, L),
        )
        .fdb(&[learned(G1, Guest1)])
        .tc_out(TC_ACT_OK, [0; 5]),
        Case {
            with_uplink: false,
            ..Case::new(
                "no uplink configured (tc_out on a switch port's egress): untouched",
                Up,
                pattern(G1, UP_MAC),
            )
            .fdb(&[learned(G1, Guest1)])
            .tc_out(TC_ACT_OK, [0; 5])
        },
    ]
}

impl Bench {
    fn check(&mut self, c: &Case, prog: Prog) -> Result<()> {
        let Some(e) = (match prog {
            Prog::Xdp => &c.xdp,
            Prog::Tc => &c.tc,
            Prog::TcOut => &c.tc_out,
        }) else {
            return Ok(());
        };
        self.reset(c.with_uplink, c.uplink_xdp_tx)?;
        for p in &c.fdb {
            self.fdb_insert(p.0, p.1, p.2, p.3)?;
        }
        let fdb_before = self.fdb()?;
        let stats_before = self.stats()?;
        let ingress = self.ifindex(c.ingress);
        let t0 = now_coarse();
        let (ret, out, mark) = self.run(prog, ingress, c.mark, &c.frame)?;
        let t1 = now_coarse();
        let mut errs = Vec::new();
        if ret != e.ret {
            errs.push(format!("returned {ret}, expected {}", e.ret));
        }
        if out != c.frame {
            errs.push("output bytes changed".to_string());
        }
        if prog != Prog::Xdp && mark != e.mark {
            errs.push(format!("mark {mark:#x} afterwards, expected {:#x}", e.mark));
        }
        let got = self.collect(&e.copies);
        let counts: Vec<usize> = got.iter().map(Vec::len).collect();
        let right = got.iter().flatten().all(|f| *f == c.frame);
        if counts != e.copies || !right {
            errs.push(format!(
                "copies on g1 g2 hp up0 up0-stack: {counts:?}, expected {:?}{}",
                e.copies,
                if right {
                    ""
                } else {
                    " (some differ from the input)"
                }
            ));
        }
        // The FDB: the source learned (TC and XDP), the rest as before
        // except entries removed as aged.
        let after = self.fdb()?;
        let src: Mac = c.frame[6..12].try_into()?;
        let mut want: Vec<(Mac, FdbEntry)> = fdb_before
            .iter()
            .filter(|(m, _)| !c.removed.contains(m))
            .copied()
            .collect();
        let learns = e.learns;
        if learns {
            want.retain(|(m, _)| *m != src);
            want.push((
                src,
                FdbEntry {
                    ifindex: ingress,
                    flags: 0,
                    updated_ns: 0,
                },
            ));
            want.sort_by_key(|(m, _)| *m);
        }
        let fdb_ok = after.len() == want.len()
            && after.iter().zip(&want).all(|((am, ae), (wm, we))| {
                am == wm
                    && if learns && *am == src {
                        ae.ifindex == we.ifindex
                            && ae.flags == 0
                            && ae.updated_ns >= t0
                            && ae.updated_ns <= t1
                    } else {
                        ae == we
                    }
            });
        if !fdb_ok {
            errs.push(format!(
                "FDB {:?}, expected {:?}",
                after
                    .iter()
                    .map(|(m, e)| (fmt_mac(m), e.ifindex, e.flags))
                    .collect::<Vec<_>>(),
                want.iter()
                    .map(|(m, e)| (fmt_mac(m), e.ifindex, e.flags))
                    .collect::<Vec<_>>()
            ));
        }
        // Counters: only the ingress port's move.
        let mut want = stats_before.clone();
        let i = idx(c.ingress);
        let s = &mut want[i];
        if learns {
            s.learned += 1;
        }
        if e.count != Count::Nothing {
            s.rx_packets += 1;
            s.rx_bytes += c.frame.len() as u64;
            match prog {
                Prog::Xdp => s.xdp_native += 1,
                _ => s.tc += 1,
            }
            match e.count {
                Count::Forwarded => s.forwarded += 1,
                Count::Flooded => s.flooded += 1,
                _ => {}
            }
        }
        let got = self.stats()?;
        for (n, (g, w)) in got.iter().zip(&want).enumerate() {
            if g != w {
                errs.push(format!(
                    "counters of {}: {g:?}, expected {w:?}",
                    TAP_NAMES[n]
                ));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            bail!("{}", errs.join("\n    "))
        }
    }

    fn run_table(&mut self, prog: Prog) -> Result<()> {
        let cases = table();
        let mut failed = Vec::new();
        let mut ran = 0;
        for c in &cases {
            let has = match prog {
                Prog::Xdp => c.xdp.is_some(),
                Prog::Tc => c.tc.is_some(),
                Prog::TcOut => c.tc_out.is_some(),
            };
            if !has {
                continue;
            }
            ran += 1;
            if let Err(e) = self.check(c, prog) {
                failed.push(format!("  [{prog:?}] {}:\n    {e:#}", c.name));
            }
        }
        eprintln!("{prog:?}: {ran} cases, {} passed", ran - failed.len());
        if !failed.is_empty() {
            bail!(
                "{} of {ran} {prog:?} cases failed:\n{}",
                failed.len(),
                failed.join("\n")
            );
        }
        Ok(())
    }
}

#[test]
fn xdp_table() -> Result<()> {
    Bench::new("xdp")?.run_table(Prog::Xdp)
}

#[test]
fn tc_table() -> Result<()> {
    Bench::new("tc")?.run_table(Prog::Tc)
}

#[test]
fn tc_out_table() -> Result<()> {
    Bench::new("tcout")?.run_table(Prog::TcOut)
}

// ---------------------------------------------------------------------------
// Live: the programs attached, the host's stack answering.

impl Bench {
    fn attach(&mut self, prog: &str, devs: &[&str], at: TcAttachType) -> Result<()> {
        let p: &mut SchedClassifier = self.ebpf.program_mut(prog).context("program")?.try_into()?;
        for d in devs {
            p.attach(d, at)
                .with_context(|| format!("attaching {prog} to {d}"))?;
        }
        Ok(())
    }
}

/// A guest's ARP request for the host's uplink address, flooded by TC,
/// reaches the host's stack once through the marked clone (up0's own TC
/// program lets it up without counting or flooding it again), goes out to
/// the wire once, and the host's answer comes back to the guest through
/// umlbr_tc_out without touching the wire. A ping to the host then goes
/// up through the local redirect and its reply comes back the same way.
#[test]
fn live_guest_talks_to_the_host_through_the_uplink() -> Result<()> {
    let mut b = Bench::new("live")?;
    b.attach(names::TC_PROG, &["g1", "g2", "up0"], TcAttachType::Ingress)?;
    b.attach(names::TC_OUT_PROG, &["up0"], TcAttachType::Egress)?;
    let up_before = b.stats()?[idx(Dev::Up)];

    let arp = Frame::new(BROADCAST, G1).arp_request(G1_IP, UP_IP).build();
    b.taps[idx(Dev::Guest1)]
        .1
        .write_all(&arp)
        .context("into g1")?;
    let got = b.collect(&[1, 1, 1, 1, 1]);
    let counts: Vec<usize> = got.iter().map(Vec::len).collect();
    let reply = got[idx(Dev::Guest1)].first();
    let is_arp_reply = reply.is_some_and(|r| {
        r.len() >= 42
            && r[0..6] == G1
            && r[6..12] == UP_MAC
            && r[12..14] == [0x08, 0x06]
            && r[20..22] == [0, 2]
            && r[28..32] == UP_IP
    });
    ensure!(
        counts == vec![1, 1, 1, 1, 1]
            && is_arp_reply
            && got[1][0] == arp
            && got[2][0] == arp
            && got[3][0] == arp
            && got[4][0] == arp,
        "ARP: frames on g1 g2 hp up0 up0-stack {counts:?}, expected [1, 1, 1, 1, 1] \
         (the host's ARP reply on g1: {is_arp_reply}; the request once on the wire and once up the stack)"
    );

    let ping = Frame::new(UP_MAC, G1)
        .icmp_echo(G1_IP, UP_IP, false, 0x77, 1, b"hello host")
        .build();
    b.taps[idx(Dev::Guest1)]
        .1
        .write_all(&ping)
        .context("into g1")?;
    let got = b.collect(&[1, 0, 0, 0, 1]);
    let counts: Vec<usize> = got.iter().map(Vec::len).collect();
    let pong = got[idx(Dev::Guest1)].first();
    let is_pong = pong.is_some_and(|r| {
        r.len() >= 42
            && r[0..6] == G1
            && r[6..12] == UP_MAC
            && r[14 + 12..14 + 16] == UP_IP
            && r[14 + 16..14 + 20] == G1_IP
            && r[14 + 20] == 0
    });
    ensure!(
        counts == vec![1, 0, 0, 0, 1] && is_pong && got[4][0] == ping,
        "ping: frames on g1 g2 hp up0 up0-stack {counts:?}, expected [1, 0, 0, 0, 1] (echo reply on g1: {is_pong})"
    );
    // What the host's stack got through the mark was not switched again.
    let up_after = b.stats()?[idx(Dev::Up)];
    ensure!(
        up_after == up_before,
        "up0's counters moved: {up_before:?} -> {up_after:?}"
    );
    let g1 = b.stats()?[idx(Dev::Guest1)];
    ensure!(
        g1.tc == 2 && g1.flooded == 1 && g1.forwarded == 1,
        "g1's counters: {g1:?}"
    );
    Ok(())
}
