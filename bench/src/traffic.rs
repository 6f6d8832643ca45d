//! Traffic: writer ("generator") and reader ("sink") threads on taps, one
//! thread per tap like a guest's transport, with per-thread and system
//! CPU accounting over a fixed window.
use std::{
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use umlbr_tests::wire::Mac;

use crate::tap::{self, Tap, TapMode, VNET_HDR_LEN, wire_frame};

/// A writer: `tap` sends `frame` (a whole Ethernet frame) over and over.
#[derive(Clone, Debug)]
pub struct GenSpec {
    pub tap: String,
    pub frame: Vec<u8>,
    pub mode: TapMode,
    /// Run on this CPU only.
    pub cpu: Option<usize>,
    /// A frame to write once before anything else (e.g. an ARP request
    /// for the gateway, as a guest would send first).
    pub hello: Option<Vec<u8>>,
    /// Not a tap: a packet socket on interface `tap` in this namespace.
    pub packet_ns: Option<String>,
    /// Write every frame from a new random source MAC (unicast, locally
    /// administered): a guest flooding the switch's FDB.
    pub random_src: bool,
}

/// A reader on `tap`, the station `mac`.
#[derive(Clone, Debug)]
pub struct SinkSpec {
    pub tap: String,
    pub mac: Mac,
    /// Open with IFF_VNET_HDR (each frame read has a header in front).
    pub vnet_hdr: bool,
    /// Run on this CPU only.
    pub cpu: Option<usize>,
    /// Not a tap but a UDP socket on this port, in `netns` (a "LAN" host
    /// behind the masquerade): counts datagrams.
    pub udp: Option<(String, u16)>,
    /// Not a tap: a packet socket on interface `tap` in this namespace.
    pub packet_ns: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Job {
    pub netns: String,
    pub gens: Vec<GenSpec>,
    pub sinks: Vec<SinkSpec>,
    /// Traffic before the measured window (learning, queues filling).
    pub warmup: Duration,
    pub window: Duration,
    /// Wait until every sink got a frame before measuring (false where
    /// nothing is forwarded, e.g. the XDP-drop ceiling).
    pub probe: bool,
}

/// What one window measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub secs: f64,
    /// Frames written by all generators.
    pub sent: u64,
    pub send_errors: u64,
    /// Frames written by each generator.
    pub gen_sent: Vec<u64>,
    /// Our frames read by each sink.
    pub received: Vec<u64>,
    /// Frames of a flood (UDP to [`tap::FLOOD_UDP_PORT`]) read by each
    /// sink: not counted in `received`.
    pub received_flood: Vec<u64>,
    /// Their L4 payload bytes (TCP or UDP data; a GSO frame counts all
    /// of its segments), per sink.
    pub received_bytes: Vec<u64>,
    /// Frames read with a GSO virtio_net_hdr (gso_type set), all sinks:
    /// super-frames the kernel delivered whole to a vnet_hdr reader.
    pub received_gso: u64,
    /// CPU time of the generator threads, and of the sink threads.
    pub gen_cpu_s: f64,
    pub sink_cpu_s: f64,
    /// CPU time of each generator thread.
    pub gen_cpu_each: Vec<f64>,
    /// Busy CPU time of the whole machine (all cores, /proc/stat), which
    /// includes softirq work off our threads and other processes' load.
    pub sys_busy_s: f64,
}

impl Outcome {
    pub fn delivered(&self) -> u64 {
        self.received.iter().sum()
    }
    pub fn delivered_pps(&self) -> f64 {
        self.delivered() as f64 / self.secs
    }
    pub fn sent_pps(&self) -> f64 {
        self.sent as f64 / self.secs
    }
    /// Thread CPU (writers + readers) per delivered frame, µs.
    pub fn thread_us_per_frame(&self) -> f64 {
        per_frame(self.gen_cpu_s + self.sink_cpu_s, self.delivered())
    }
    pub fn sys_us_per_frame(&self) -> f64 {
        per_frame(self.sys_busy_s, self.delivered())
    }
    pub fn delivered_bytes(&self) -> u64 {
        self.received_bytes.iter().sum()
    }
}

fn per_frame(cpu_s: f64, frames: u64) -> f64 {
    if frames == 0 {
        f64::NAN
    } else {
        cpu_s * 1e6 / frames as f64
    }
}

const PH_SETUP: u8 = 0;
const PH_PROBE: u8 = 1;
const PH_RUN: u8 = 2;
const PH_STOP: u8 = 3;

/// A counter on its own cache line.
#[repr(align(128))]
#[derive(Default)]
struct Counter {
    frames: AtomicU64,
    errors: AtomicU64,
    /// Sinks: payload bytes, and frames with a GSO vnet header.
    bytes: AtomicU64,
    gso: AtomicU64,
    /// Sinks: frames of a flood (see [`tap::is_flood_frame`]).
    flood: AtomicU64,
}

struct Shared {
    phase: AtomicU8,
    /// A thread could not open its tap.
    failed: AtomicBool,
    gens: Vec<Counter>,
    sinks: Vec<Counter>,
}

/// How [`run_with`] treats a job's frames.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOpts {
    /// The generators' frames are written as they are: with IFF_VNET_HDR
    /// they already carry their own virtio_net_hdr (e.g. a GSO one, see
    /// `tap::gso_tcp_frame`) instead of a zero one put in front.
    pub raw_frames: bool,
    /// Readers with IFF_VNET_HDR announce checksum and TSO offloads
    /// (TUNSETOFFLOAD CSUM|TSO4|TSO6) like a virtio guest's transport:
    /// they may then get GSO frames whole.
    pub sink_offload: bool,
}

/// Run one job: open every tap in its own thread, prime learning, probe,
/// then measure a window.
pub fn run(job: &Job) -> Result<Outcome> {
    run_with(job, RunOpts::default())
}

/// [`run`], with options.
pub fn run_with(job: &Job, opts: RunOpts) -> Result<Outcome> {
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(PH_SETUP),
        failed: AtomicBool::new(false),
        gens: job.gens.iter().map(|_| Counter::default()).collect(),
        sinks: job.sinks.iter().map(|_| Counter::default()).collect(),
    });
    let n = job.gens.len() + job.sinks.len();
    let ready = Arc::new(Barrier::new(n + 1));
    let mut handles: Vec<JoinHandle<Result<()>>> = Vec::new();
    for (i, s) in job.sinks.iter().enumerate() {
        let (sh, ready, s, ns) = (shared.clone(), ready.clone(), s.clone(), job.netns.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("sink{i}"))
                .spawn(move || sink(&ns, &s, i, &sh, &ready, opts))
                .context("spawning a sink thread")?,
        );
    }
    for (i, g) in job.gens.iter().enumerate() {
        let (sh, ready, g, ns) = (shared.clone(), ready.clone(), g.clone(), job.netns.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("gen{i}"))
                .spawn(move || generator(&ns, &g, i, &sh, &ready, opts))
                .context("spawning a generator thread")?,
        );
    }
    let result = measure(job, &shared, &ready, &handles);
    shared.phase.store(PH_STOP, Ordering::SeqCst);
    let mut errors = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(_) => errors.push("a traffic thread panicked".into()),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    result
}

fn measure(
    job: &Job,
    shared: &Shared,
    ready: &Barrier,
    handles: &[JoinHandle<Result<()>>],
) -> Result<Outcome> {
    // A thread that failed to open its tap still reaches the barrier.
    ready.wait();
    if shared.failed.load(Ordering::SeqCst) {
        bail!("a traffic thread failed to open its tap");
    }
    shared.phase.store(PH_PROBE, Ordering::SeqCst);
    if job.probe {
        let t0 = Instant::now();
        while shared
            .sinks
            .iter()
            .any(|c| c.frames.load(Ordering::Relaxed) == 0)
        {
            if t0.elapsed() > Duration::from_secs(3) {
                let got: Vec<u64> = shared
                    .sinks
                    .iter()
                    .map(|c| c.frames.load(Ordering::Relaxed))
                    .collect();
                bail!("probe: not every sink got a frame within 3 s (per sink: {got:?})");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    shared.phase.store(PH_RUN, Ordering::SeqCst);
    std::thread::sleep(job.warmup);
    let clocks: Vec<libc::clockid_t> = handles.iter().map(thread_clock).collect::<Result<_>>()?;
    let snap = |shared: &Shared| {
        let c: Vec<f64> = clocks.iter().map(|&c| clock_s(c)).collect();
        let g: Vec<(u64, u64)> = shared
            .gens
            .iter()
            .map(|c| {
                (
                    c.frames.load(Ordering::Relaxed),
                    c.errors.load(Ordering::Relaxed),
                )
            })
            .collect();
        let s: Vec<(u64, u64, u64, u64)> = shared
            .sinks
            .iter()
            .map(|c| {
                (
                    c.frames.load(Ordering::Relaxed),
                    c.bytes.load(Ordering::Relaxed),
                    c.gso.load(Ordering::Relaxed),
                    c.flood.load(Ordering::Relaxed),
                )
            })
            .collect();
        (c, g, s)
    };
    let stat0 = proc_stat_busy()?;
    let t0 = Instant::now();
    let (c0, g0, s0) = snap(shared);
    std::thread::sleep(job.window);
    let (c1, g1, s1) = snap(shared);
    let secs = t0.elapsed().as_secs_f64();
    let stat1 = proc_stat_busy()?;
    let nsinks = job.sinks.len();
    // Handles are sinks first, then generators.
    let sink_cpu_s: f64 = (0..nsinks).map(|i| c1[i] - c0[i]).sum();
    let gen_cpu_s: f64 = (nsinks..clocks.len()).map(|i| c1[i] - c0[i]).sum();
    Ok(Outcome {
        secs,
        sent: g0.iter().zip(&g1).map(|(a, b)| b.0 - a.0).sum(),
        send_errors: g0.iter().zip(&g1).map(|(a, b)| b.1 - a.1).sum(),
        gen_sent: g0.iter().zip(&g1).map(|(a, b)| b.0 - a.0).collect(),
        received: s0.iter().zip(&s1).map(|(a, b)| b.0 - a.0).collect(),
        received_flood: s0.iter().zip(&s1).map(|(a, b)| b.3 - a.3).collect(),
        received_bytes: s0.iter().zip(&s1).map(|(a, b)| b.1 - a.1).collect(),
        received_gso: s0.iter().zip(&s1).map(|(a, b)| b.2 - a.2).sum(),
        gen_cpu_s,
        sink_cpu_s,
        gen_cpu_each: (nsinks..clocks.len()).map(|i| c1[i] - c0[i]).collect(),
        sys_busy_s: stat1 - stat0,
    })
}

fn thread_clock(h: &JoinHandle<Result<()>>) -> Result<libc::clockid_t> {
    use std::os::unix::thread::JoinHandleExt;
    let mut id: libc::clockid_t = 0;
    // SAFETY: the thread is alive (it runs until PH_STOP).
    let rc = unsafe { libc::pthread_getcpuclockid(h.as_pthread_t(), &mut id) };
    if rc != 0 {
        bail!("pthread_getcpuclockid: error {rc}");
    }
    Ok(id)
}

/// A CPU clock in seconds (CLOCK_THREAD_CPUTIME_ID of that thread).
fn clock_s(id: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a valid timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Busy time of all CPUs since boot (user, nice, system, irq, softirq,
/// steal), seconds.
pub fn proc_stat_busy() -> Result<f64> {
    let s = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = s.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        bail!("unexpected /proc/stat line: {line}");
    }
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(busy as f64 / hz)
}

/// Pin the calling thread to `cpu`.
fn pin(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else {
        return Ok(());
    };
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_setaffinity(0, ..)
    // applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning a thread to CPU {cpu}"));
        }
    }
    Ok(())
}

fn open_in(netns: &str, tap_name: &str, mode: TapMode) -> Result<Tap> {
    umlbr_tests::netns::enter(netns)?;
    Tap::open(tap_name, mode)
}

/// Open the tap (or, with `packet_ns`, a packet socket on that
/// interface in that namespace), then meet the others at the barrier
/// (also on failure, which is flagged for the main thread).
fn open_ready(
    netns: &str,
    tap_name: &str,
    mode: TapMode,
    packet_ns: Option<&str>,
    sh: &Shared,
    ready: &Barrier,
) -> Result<Tap> {
    let opened = match packet_ns {
        Some(ns) => umlbr_tests::netns::enter(ns).and_then(|()| Tap::packet(tap_name)),
        None => open_in(netns, tap_name, mode),
    };
    if opened.is_err() {
        sh.failed.store(true, Ordering::SeqCst);
    }
    ready.wait();
    opened
}

fn generator(
    netns: &str,
    g: &GenSpec,
    i: usize,
    sh: &Shared,
    ready: &Barrier,
    opts: RunOpts,
) -> Result<()> {
    if let Err(e) = pin(g.cpu) {
        eprintln!("bench: {e:#}");
    }
    let tap = open_ready(netns, &g.tap, g.mode, g.packet_ns.as_deref(), sh, ready)
        .with_context(|| format!("generator on {}", g.tap))?;
    let mut frame = if opts.raw_frames {
        g.frame.clone()
    } else {
        wire_frame(&g.frame, g.mode)
    };
    if let Some(h) = &g.hello {
        let _ = tap.write(&wire_frame(h, g.mode));
    }
    let c = &sh.gens[i];
    // Where the source MAC of `frame` starts (after any vnet header).
    let src_at = if g.mode.vnet_hdr { VNET_HDR_LEN + 6 } else { 6 };
    let mut rng = RandomMacs::new(i);
    // Probe: a frame every 10 ms until the run starts.
    loop {
        match sh.phase.load(Ordering::Relaxed) {
            PH_PROBE => {
                let _ = tap.write(&frame);
                std::thread::sleep(Duration::from_millis(10));
            }
            PH_SETUP => std::thread::sleep(Duration::from_millis(1)),
            _ => break,
        }
    }
    let (mut sent, mut errs) = (0u64, 0u64);
    loop {
        for _ in 0..64 {
            if g.random_src {
                frame[src_at..src_at + 6].copy_from_slice(&rng.next_mac());
            }
            // A short write is a failure too (nothing is, on a tap: it
            // takes whole frames or none).
            match tap.write(&frame) {
                Ok(n) if n == frame.len() => sent += 1,
                _ => errs += 1,
            }
        }
        c.frames.store(sent, Ordering::Relaxed);
        c.errors.store(errs, Ordering::Relaxed);
        if sh.phase.load(Ordering::Relaxed) != PH_RUN {
            break;
        }
    }
    Ok(())
}

fn sink(
    netns: &str,
    s: &SinkSpec,
    i: usize,
    sh: &Shared,
    ready: &Barrier,
    opts: RunOpts,
) -> Result<()> {
    if let Some((ns, port)) = &s.udp {
        if let Err(e) = pin(s.cpu) {
            eprintln!("bench: {e:#}");
        }
        let sock = umlbr_tests::netns::enter(ns).and_then(|()| UdpSink::bind(*port));
        if sock.is_err() {
            sh.failed.store(true, Ordering::SeqCst);
        }
        ready.wait();
        return sock
            .with_context(|| format!("UDP sink on port {port} in {ns}"))?
            .run(&sh.sinks[i], &sh.phase);
    }
    let mode = TapMode {
        nonblocking: true,
        vnet_hdr: s.vnet_hdr,
    };
    let skip = if s.vnet_hdr { VNET_HDR_LEN } else { 0 };
    if let Err(e) = pin(s.cpu) {
        eprintln!("bench: {e:#}");
    }
    let tap = open_ready(netns, &s.tap, mode, s.packet_ns.as_deref(), sh, ready)
        .with_context(|| format!("sink on {}", s.tap))?;
    if opts.sink_offload && s.vnet_hdr {
        tap.set_offload(tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6)
            .with_context(|| format!("sink on {}", s.tap))?;
    }
    // The station announces itself so that the switch learns its MAC.
    let hello = wire_frame(
        &umlbr_tests::wire::Frame::new(tap::BROADCAST, s.mac)
            .pad_min()
            .build(),
        mode,
    );
    let _ = tap.write(&hello);
    let mut last_hello = Instant::now();
    let mut buf = vec![0u8; 65536 + VNET_HDR_LEN];
    let c = &sh.sinks[i];
    let (mut n, mut bytes, mut gso, mut flood) = (0u64, 0u64, 0u64, 0u64);
    let mut batch = 0u32;
    let store = |n, bytes, gso, flood| {
        c.bytes.store(bytes, Ordering::Relaxed);
        c.gso.store(gso, Ordering::Relaxed);
        c.flood.store(flood, Ordering::Relaxed);
        c.frames.store(n, Ordering::Relaxed);
    };
    loop {
        match tap.read(&mut buf)? {
            Some(len) => {
                // A frame with an 802.1Q tag (the VLAN row's trunk): seen
                // from 4 bytes on, its fields after the MACs line up.
                let f = &buf[skip.min(len)..len];
                let f = if f.len() > 16 && f[12..14] == [0x81, 0] {
                    &f[4..]
                } else {
                    f
                };
                if len > skip && tap::is_bench_frame(f) {
                    n += 1;
                    bytes += tap::bench_payload(f);
                    // virtio_net_hdr.gso_type
                    if skip > 0 && buf[1] != 0 {
                        gso += 1;
                    }
                    batch += 1;
                } else if len > skip && tap::is_flood_frame(&buf[skip..len]) {
                    // Read (a guest has to) but not ours: counted apart.
                    flood += 1;
                    batch += 1;
                }
                if batch >= 32 {
                    store(n, bytes, gso, flood);
                    batch = 0;
                }
                continue;
            }
            None => {
                store(n, bytes, gso, flood);
                batch = 0;
            }
        }
        let phase = sh.phase.load(Ordering::Relaxed);
        if phase == PH_STOP {
            break;
        }
        if phase <= PH_PROBE && last_hello.elapsed() > Duration::from_millis(50) {
            let _ = tap.write(&hello);
            last_hello = Instant::now();
        }
        tap.wait_readable(Duration::from_millis(20));
    }
    Ok(())
}

/// Source MACs for a MAC flood: xorshift64*, seeded per generator, each
/// a unicast, locally administered MAC (what a guest may use).
struct RandomMacs(u64);

impl RandomMacs {
    fn new(seed: usize) -> RandomMacs {
        RandomMacs(0x9e37_79b9_7f4a_7c15 ^ ((seed as u64 + 1) << 32))
    }

    fn next_mac(&mut self) -> Mac {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let b = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_be_bytes();
        // Bit 0 of the first byte clear (unicast), bit 1 set (local).
        [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
    }
}

/// Send one frame from each of `count` source MACs (fill_mac(0..count))
/// to `dst` through `tap_name`: the switch learns them all.
pub fn fill_fdb(netns: &str, tap_name: &str, dst: Mac, count: u32) -> Result<Duration> {
    let (netns, tap_name) = (netns.to_string(), tap_name.to_string());
    std::thread::spawn(move || -> Result<Duration> {
        let tap = open_in(&netns, &tap_name, TapMode::default())?;
        let mut frame = tap::udp_frame(dst, tap::fill_mac(0), 64, 0);
        let t0 = Instant::now();
        for i in 0..count {
            frame[6..12].copy_from_slice(&tap::fill_mac(i));
            let mut tries = 0;
            while tap.write(&frame).is_err() {
                tries += 1;
                if tries > 1000 {
                    bail!("writing to {tap_name} keeps failing");
                }
                std::thread::yield_now();
            }
        }
        Ok(t0.elapsed())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the FDB fill thread panicked"))?
}

/// Write each of `frames` once through `tap_name` (non-blocking, as fast
/// as the tap takes them; a failed write is retried), e.g. one datagram
/// of each of 100 000 new flows to fill a NAT table. The taps in `hold`
/// are opened (not read) meanwhile, so that their carrier is up and the
/// frames switched to them are not refused before they reach the switch's
/// tables. Returns the wall time of the writes.
pub fn fill_frames(
    netns: &str,
    tap_name: &str,
    frames: Vec<Vec<u8>>,
    hold: &[String],
) -> Result<(Duration, f64)> {
    let (netns, tap_name, hold) = (netns.to_string(), tap_name.to_string(), hold.to_vec());
    std::thread::spawn(move || -> Result<(Duration, f64)> {
        let tap = open_in(&netns, &tap_name, TapMode::default())?;
        let _held: Vec<Tap> = hold
            .iter()
            .map(|h| Tap::open(h, TapMode::default()))
            .collect::<Result<_>>()?;
        let t0 = Instant::now();
        let cpu0 = clock_s(libc::CLOCK_THREAD_CPUTIME_ID);
        for f in &frames {
            let mut tries = 0;
            while tap.write(f).map(|n| n != f.len()).unwrap_or(true) {
                tries += 1;
                if tries > 1000 {
                    bail!("writing to {tap_name} keeps failing");
                }
                std::thread::yield_now();
            }
        }
        Ok((t0.elapsed(), clock_s(libc::CLOCK_THREAD_CPUTIME_ID) - cpu0))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the fill thread panicked"))?
}

/// A UDP socket that counts datagrams, reading up to 64 per recvmmsg().
struct UdpSink {
    fd: std::os::fd::OwnedFd,
}

impl UdpSink {
    fn bind(port: u16) -> Result<UdpSink> {
        let sock = std::net::UdpSocket::bind(("0.0.0.0", port))
            .with_context(|| format!("binding UDP port {port}"))?;
        sock.set_nonblocking(true)?;
        let fd: std::os::fd::OwnedFd = sock.into();
        // A bigger receive buffer than the default, so that bursts are not
        // lost while the reader is descheduled (same for every contender).
        let size: libc::c_int = 4 << 20;
        // SAFETY: setsockopt with a c_int value.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(UdpSink { fd })
    }

    fn run(&self, c: &Counter, phase: &AtomicU8) -> Result<()> {
        use std::os::fd::AsRawFd;
        const BATCH: usize = 64;
        let mut bufs = vec![[0u8; 2048]; BATCH];
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: zeroed mmsghdrs, each pointed at its own iovec below.
        let mut msgs: Vec<libc::mmsghdr> =
            (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let mut n = 0u64;
        loop {
            // SAFETY: recvmmsg into BATCH valid message headers.
            let got = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if got > 0 {
                n += got as u64;
                c.frames.store(n, Ordering::Relaxed);
                continue;
            }
            if phase.load(Ordering::Relaxed) == PH_STOP {
                return Ok(());
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll(2) on one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 20) };
        }
    }
}

/// Round trips between two taps: A writes a frame to B, B's reader sends
/// it straight back, A reads it; the time from A's write() to A's read()
/// is one round trip through the switch, both ways, with the readers'
/// wake-ups (both wait in poll() like an idle guest).
pub struct PingPong {
    pub netns: String,
    pub a_tap: String,
    pub b_tap: String,
    pub a_mac: Mac,
    pub b_mac: Mac,
    pub len: usize,
    pub count: usize,
    pub a_cpu: Option<usize>,
    pub b_cpu: Option<usize>,
}

/// Round-trip times in µs (lost frames are resent after 100 ms and not
/// counted).
pub fn ping_pong(pp: &PingPong) -> Result<Vec<f64>> {
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(2));
    let echo = {
        let (stop, ready) = (stop.clone(), ready.clone());
        let (ns, tap_name, mac, cpu) = (pp.netns.clone(), pp.b_tap.clone(), pp.b_mac, pp.b_cpu);
        std::thread::spawn(move || -> Result<()> {
            if let Err(e) = pin(cpu) {
                eprintln!("bench: {e:#}");
            }
            let tap = open_in(&ns, &tap_name, TapMode::default());
            ready.wait();
            let tap = tap?;
            let hello = umlbr_tests::wire::Frame::new(tap::BROADCAST, mac)
                .pad_min()
                .build();
            let _ = tap.write(&hello);
            let mut buf = vec![0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                match tap.read(&mut buf)? {
                    Some(n) if tap::is_bench_frame(&buf[..n]) => {
                        // Back to where it came from.
                        let (dst, src): ([u8; 6], [u8; 6]) = (
                            buf[6..12].try_into().unwrap(),
                            buf[0..6].try_into().unwrap(),
                        );
                        buf[0..6].copy_from_slice(&dst);
                        buf[6..12].copy_from_slice(&src);
                        let _ = tap.write(&buf[..n]);
                    }
                    Some(_) => {}
                    None => {
                        tap.wait_readable(Duration::from_millis(20));
                    }
                }
            }
            Ok(())
        })
    };
    let result = (|| -> Result<Vec<f64>> {
        let (ns, tap_name) = (pp.netns.clone(), pp.a_tap.clone());
        let (a_mac, b_mac, len, count, cpu) = (pp.a_mac, pp.b_mac, pp.len, pp.count, pp.a_cpu);
        let ready = ready.clone();
        std::thread::spawn(move || -> Result<Vec<f64>> {
            if let Err(e) = pin(cpu) {
                eprintln!("bench: {e:#}");
            }
            let tap = open_in(&ns, &tap_name, TapMode::default());
            ready.wait();
            let tap = tap?;
            let hello = umlbr_tests::wire::Frame::new(tap::BROADCAST, a_mac)
                .pad_min()
                .build();
            let _ = tap.write(&hello);
            std::thread::sleep(Duration::from_millis(50));
            let mut buf = vec![0u8; 2048];
            let mut rtts = Vec::with_capacity(count);
            let warmup = count / 10 + 10;
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut seq: u32 = 0;
            while rtts.len() < count {
                if Instant::now() > deadline {
                    bail!(
                        "ping-pong: only {} of {count} round trips in 20 s",
                        rtts.len()
                    );
                }
                seq += 1;
                let frame = tap::udp_frame_seq(b_mac, a_mac, len, seq);
                let t0 = Instant::now();
                let _ = tap.write(&frame);
                loop {
                    match tap.read(&mut buf)? {
                        Some(n)
                            if tap::is_bench_frame(&buf[..n])
                                && buf[..n].get(42..46) == Some(&seq.to_be_bytes()[..]) =>
                        {
                            let rtt = t0.elapsed().as_secs_f64() * 1e6;
                            if seq as usize > warmup {
                                rtts.push(rtt);
                            }
                            break;
                        }
                        Some(_) => {}
                        None => {
                            if t0.elapsed() > Duration::from_millis(100) {
                                break;
                            }
                            tap.wait_readable(Duration::from_millis(20));
                        }
                    }
                }
            }
            Ok(rtts)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the ping thread panicked"))?
    })();
    stop.store(true, Ordering::Relaxed);
    let echoed = echo
        .join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))?;
    let rtts = result?;
    echoed?;
    Ok(rtts)
}

/// The `q` quantile (0..=1) of `v`.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((s.len() - 1) as f64 * q).round() as usize;
    s[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A MAC flood's sources are unicast, locally administered and new.
    #[test]
    fn random_macs_are_unicast_local_and_differ() {
        let mut r = RandomMacs::new(1);
        let macs: Vec<Mac> = (0..10_000).map(|_| r.next_mac()).collect();
        assert!(macs.iter().all(|m| m[0] & 1 == 0 && m[0] & 2 == 2));
        let mut uniq = macs.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), macs.len());
        assert_ne!(RandomMacs::new(2).next_mac(), RandomMacs::new(1).next_mac());
    }
}
