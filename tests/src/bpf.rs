//! The harness of the BPF_PROG_TEST_RUN tables (prog_switch, prog_uplink,
//! prog_nat): a namespace with taps that this thread enters, the loaded
//! object and its maps, running a program on a frame, reading what the
//! taps (and an AF_PACKET sniffer) transmit, and running a table of cases.
//!
//! It knows nothing of the umlbr library: the tests load the object
//! (`umlbr::object::load`) and hand it over.
use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, Pod,
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuHashMap, PerCpuValues},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode,
    },
};
use umlbr_common::{Config, FdbEntry, FdbKey, PortStats, names};

use crate::{
    netns::{InNetns, Netns, ifindex, open_tap, packet_socket},
    wire::Mac,
};

// ---------------------------------------------------------------------------
// Kernel constants and context layouts (include/uapi/linux/bpf.h).

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const SEC: u64 = 1_000_000_000;

// The uplink (tap up0) of the uplink and NAT benches, and a host on its LAN.
pub const UP_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0xc8];
pub const UP_IP: [u8; 4] = [192, 168, 1, 200];
pub const LAN_MAC: Mac = [0x02, 0, 0, 0, 0x01, 0x32];
/// The FDB aging time the tables configure.
pub const AGING_NS: u64 = 60 * SEC;

/// struct xdp_md: data, data_end, data_meta, ingress_ifindex,
/// rx_queue_index, egress_ifindex.
pub fn xdp_md(data: u32, data_end: u32, ingress_ifindex: u32) -> [u8; 24] {
    let mut c = [0u8; 24];
    c[0..4].copy_from_slice(&data.to_ne_bytes());
    c[4..8].copy_from_slice(&data_end.to_ne_bytes());
    c[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    c
}

/// struct __sk_buff (192 bytes) with mark (offset 8), ingress_ifindex
/// (36) and ifindex (40) set; the test run rejects most other fields.
pub fn sk_buff(mark: u32, ingress_ifindex: u32, ifindex: u32) -> [u8; 192] {
    let mut c = [0u8; 192];
    c[8..12].copy_from_slice(&mark.to_ne_bytes());
    c[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    c[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    c
}

/// The sum over the CPUs of a per-CPU value whose fields are u64
/// counters (a PortStats' kind and flags, two u32 in one word, come out
/// meaningless).
pub fn sum_counters<T: Pod + Default>(per_cpu: &[T]) -> T {
    const W: usize = std::mem::size_of::<u64>();
    assert!(std::mem::size_of::<T>().is_multiple_of(W) && std::mem::align_of::<T>() >= W);
    let n = std::mem::size_of::<T>() / W;
    let mut t = T::default();
    // SAFETY: T is plain old data, a whole number of aligned u64 words.
    let sum = unsafe { std::slice::from_raw_parts_mut(&mut t as *mut T as *mut u64, n) };
    for v in per_cpu {
        // SAFETY: as above.
        let words = unsafe { std::slice::from_raw_parts(v as *const T as *const u64, n) };
        for (s, w) in sum.iter_mut().zip(words) {
            *s = s.wrapping_add(*w);
        }
    }
    t
}

/// What a port counts for a frame of `len` bytes it received and a
/// program finished there: by XDP (native) or by TC.
pub fn count_rx(s: &mut PortStats, len: usize, xdp: bool) {
    s.rx_packets += 1;
    s.rx_bytes += len as u64;
    *(if xdp { &mut s.xdp_native } else { &mut s.tc }) += 1;
}

/// A failed test run's errno; shows as "test run failed: <error>".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = std::io::Error::from_raw_os_error(self.0);
        write!(f, "test run failed: {e}")
    }
}

impl std::error::Error for Errno {}

fn errno(e: ProgramError) -> Errno {
    match e {
        ProgramError::SyscallError(s) => Errno(s.io_error.raw_os_error().unwrap_or(-1)),
        e => panic!("test run failed: {e}"),
    }
}

// ---------------------------------------------------------------------------
// The context: namespace, taps, object.

/// Field order is drop order: programs and links go first, then the taps
/// and the sniffer, then the thread leaves the namespace, which is then
/// deleted.
pub struct Ctx {
    pub ebpf: Ebpf,
    pub taps: Taps,
    pub sniffer: Option<Sniffer>,
    pub nr_cpus: usize,
    /// Taps `run_xdp_live` attached umlbr_xdp to.
    live_xdp: Vec<u32>,
    _in: InNetns,
    pub ns: Netns,
}

impl Ctx {
    /// Move this thread into `ns` (made and prepared by the caller), open
    /// the taps `names` there, run `setup` (sh) in it, and load the
    /// object with `load`.
    pub fn new(
        ns: Netns,
        names: &[&'static str],
        setup: &str,
        load: impl FnOnce() -> Result<Ebpf>,
    ) -> Result<Self> {
        let inside = InNetns::enter(&ns)?;
        let taps = Taps::open(names)?;
        ns.sh(setup)?;
        let ebpf = load()?;
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        Ok(Ctx {
            ebpf,
            taps,
            sniffer: None,
            nr_cpus,
            live_xdp: Vec::new(),
            _in: inside,
            ns,
        })
    }

    /// The map `name` as a `T` (`HashMap<&mut MapData, K, V>`, ...).
    pub fn map<'a, T>(&'a mut self, name: &str) -> Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let m = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("no map {name}"))?;
        Ok(T::try_from(m)?)
    }

    /// Put `ifindexes` in the devmap (and take `out` out of it), and make
    /// `ifindexes` the flood list.
    pub fn set_ports(&mut self, ifindexes: &[u32], out: Option<u32>) -> Result<()> {
        {
            let mut devmap: DevMapHash<&mut MapData> = self.map(names::PORTS)?;
            for &i in ifindexes {
                if Some(i) == out {
                    let _ = devmap.remove(i);
                } else {
                    devmap.insert(i, i, None, 0)?;
                }
            }
        }
        let mut list: Array<&mut MapData, u32> = self.map(names::PORT_LIST)?;
        for (n, &i) in ifindexes.iter().enumerate() {
            list.set(n as u32, i, 0)?;
        }
        Ok(())
    }

    /// Put `ifindex` in the devmap `map` (names::PORTS, the ports; or
    /// names::NAT_TX, the masquerade uplink).
    pub fn devmap_insert(&mut self, map: &str, ifindex: u32) -> Result<()> {
        let mut devmap: DevMapHash<&mut MapData> = self.map(map)?;
        devmap.insert(ifindex, ifindex, None, 0)?;
        Ok(())
    }

    pub fn devmap_remove(&mut self, map: &str, ifindex: u32) -> Result<()> {
        let mut devmap: DevMapHash<&mut MapData> = self.map(map)?;
        devmap.remove(ifindex)?;
        Ok(())
    }

    pub fn set_config(&mut self, cfg: Config) -> Result<()> {
        let mut config: Array<&mut MapData, Config> = self.map(names::CONFIG)?;
        config.set(0, cfg, 0)?;
        Ok(())
    }

    pub fn config(&mut self) -> Result<Config> {
        let config: Array<&mut MapData, Config> = self.map(names::CONFIG)?;
        Ok(config.get(&0, 0)?)
    }

    /// Set element 0 of the array `name`.
    pub fn set_array<V: Pod>(&mut self, name: &str, v: V) -> Result<()> {
        let mut a: Array<&mut MapData, V> = self.map(name)?;
        a.set(0, v, 0)?;
        Ok(())
    }

    /// Remove every entry of the hash map `name`.
    pub fn clear<K: Pod, V: Pod>(&mut self, name: &str) -> Result<()> {
        let mut m: HashMap<&mut MapData, K, V> = self.map(name)?;
        let keys: Vec<K> = m.keys().collect::<Result<_, _>>()?;
        for k in keys {
            m.remove(&k)?;
        }
        Ok(())
    }

    /// Every entry of the hash map `name`.
    pub fn entries<K: Pod, V: Pod>(&mut self, name: &str) -> Result<Vec<(K, V)>> {
        let m: HashMap<&mut MapData, K, V> = self.map(name)?;
        Ok(m.iter().collect::<Result<_, _>>()?)
    }

    pub fn insert<K: Pod, V: Pod>(&mut self, name: &str, k: K, v: V) -> Result<()> {
        let mut m: HashMap<&mut MapData, K, V> = self.map(name)?;
        m.insert(k, v, 0)?;
        Ok(())
    }

    pub fn fdb_insert(
        &mut self,
        mac: Mac,
        ifindex: u32,
        flags: u32,
        updated_ns: u64,
    ) -> Result<()> {
        let e = FdbEntry {
            ifindex,
            flags,
            updated_ns,
        };
        self.insert(names::FDB, FdbKey::new(mac), e)
    }

    /// The FDB, sorted by MAC.
    pub fn fdb(&mut self) -> Result<Vec<(Mac, FdbEntry)>> {
        let mut v: Vec<(Mac, FdbEntry)> = self
            .entries::<FdbKey, FdbEntry>(names::FDB)?
            .into_iter()
            .map(|(k, e)| (k.mac, e))
            .collect();
        v.sort_by_key(|(m, _)| *m);
        Ok(v)
    }

    /// Port `ifindex`'s counters: `s` on every CPU.
    pub fn set_port_stats(&mut self, ifindex: u32, s: PortStats) -> Result<()> {
        let n = self.nr_cpus;
        let mut stats: PerCpuHashMap<&mut MapData, u32, PortStats> = self.map(names::PORT_STATS)?;
        stats.insert(ifindex, PerCpuValues::try_from(vec![s; n])?, 0)?;
        Ok(())
    }

    /// The counters of each port in `ifindexes`, summed over the CPUs
    /// (kind and flags as CPU 0 has them).
    pub fn port_stats(&mut self, ifindexes: &[u32]) -> Result<Vec<PortStats>> {
        let stats: PerCpuHashMap<&mut MapData, u32, PortStats> = self.map(names::PORT_STATS)?;
        let mut out = Vec::new();
        for i in ifindexes {
            let v = stats.get(i, 0)?;
            out.push(PortStats {
                kind: v[0].kind,
                flags: v[0].flags,
                ..sum_counters(&v)
            });
        }
        Ok(out)
    }

    /// Every tap's counters against `want` (one per tap, in order).
    pub fn check_port_stats(&mut self, want: &[PortStats], errs: &mut Errs) -> Result<()> {
        let idx = self.taps.ifindex.clone();
        let got = self.port_stats(&idx)?;
        for ((g, w), name) in got.iter().zip(want).zip(&self.taps.names) {
            if g != w {
                errs.push(format!("counters of {name}: got {g:?}, expected {w:?}"));
            }
        }
        Ok(())
    }

    pub fn xdp(&self) -> &Xdp {
        self.ebpf
            .program(names::XDP_PROG)
            .expect("umlbr_xdp")
            .try_into()
            .expect("an XDP program")
    }

    pub fn classifier(&self, name: &str) -> &SchedClassifier {
        self.ebpf
            .program(name)
            .expect("a program")
            .try_into()
            .expect("a TC program")
    }

    /// Run umlbr_xdp on `meta` bytes of metadata followed by `frame`.
    /// Returns the action and the output (metadata and frame).
    pub fn run_xdp(
        &self,
        ingress: u32,
        meta: usize,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>), Errno> {
        let mut data = vec![0xa5u8; meta];
        data.extend_from_slice(frame);
        let ctx = xdp_md(meta as u32, data.len() as u32, ingress);
        let mut out = vec![0u8; data.len() + 512];
        let r = self
            .xdp()
            .test_run(TestRunOptions {
                data_in: Some(&data),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .map_err(errno)?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// Run umlbr_xdp on `frame` for real: attach it to the tap `ingress`
    /// (native mode, once) and write the frame into that tap as its guest
    /// would, so that XDP_REDIRECT really transmits. (BPF_PROG_TEST_RUN's
    /// live-frames mode would do the same without a tap, but some kernels
    /// refuse it with EPERM.)
    pub fn run_xdp_live(&mut self, ingress: u32, frame: &[u8]) -> Result<()> {
        let i = self
            .taps
            .ifindex
            .iter()
            .position(|&x| x == ingress)
            .with_context(|| format!("ifindex {ingress} is none of the taps"))?;
        if !self.live_xdp.contains(&ingress) {
            let xdp: &mut Xdp = self
                .ebpf
                .program_mut(names::XDP_PROG)
                .context("umlbr_xdp")?
                .try_into()?;
            xdp.attach_to_if_index(ingress, XdpMode::Driver)
                .with_context(|| format!("attaching XDP to {}", self.taps.names[i]))?;
            self.live_xdp.push(ingress);
        }
        self.taps.write(i, frame)
    }

    /// Run the TC program `prog` on `frame` with the skb's mark, ingress
    /// device (0 on egress) and device: (action, output, mark afterwards).
    pub fn run_tc(
        &self,
        prog: &str,
        mark: u32,
        ingress: u32,
        ifindex: u32,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>, u32), Errno> {
        let ctx = sk_buff(mark, ingress, ifindex);
        let mut ctx_out = [0u8; 192];
        let mut out = vec![0u8; frame.len() + 512];
        let r = self
            .classifier(prog)
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ctx_out: Some(&mut ctx_out),
                ..Default::default()
            })
            .map_err(errno)?;
        out.truncate(r.data_size_out as usize);
        let mark = u32::from_ne_bytes(ctx_out[8..12].try_into().expect("4 bytes"));
        Ok((r.return_value, out, mark))
    }

    /// Attach the TC program `prog` to `devs` at `at`: tcx where the
    /// kernel has it, as umlbr does; a cls_bpf filter on a clsact qdisc
    /// with `UMLBR_TC_HOOK=clsact` (umlbr's fallback for kernels without
    /// tcx), or where the kernel has no tcx.
    pub fn attach_tc(&mut self, prog: &str, devs: &[&str], at: TcAttachType) -> Result<()> {
        use aya::programs::tc::{NlOptions, TcAttachOptions, qdisc_add_clsact};
        let clsact = std::env::var("UMLBR_TC_HOOK").is_ok_and(|h| h == "clsact");
        let p: &mut SchedClassifier = self
            .ebpf
            .program_mut(prog)
            .with_context(|| format!("no program {prog}"))?
            .try_into()?;
        for d in devs {
            if clsact {
                // Already there for a second program on the same device.
                let _ = qdisc_add_clsact(d);
                let opts = TcAttachOptions::Netlink(NlOptions::default());
                p.attach_with_options(d, at, opts)
            } else {
                p.attach(d, at)
            }
            .with_context(|| format!("attaching {prog} to {d}"))?;
        }
        Ok(())
    }

    /// Drop whatever the taps and the sniffer hold.
    pub fn quiet(&mut self) {
        self.taps.drain();
        if let Some(s) = &self.sniffer {
            let _ = s.incoming();
        }
    }

    /// What each tap transmitted (and, after them, what entered the
    /// sniffer's device): waits until column i has `want[i]` frames for
    /// which `counts` holds (up to `wait`), then 20 ms more for extras.
    pub fn collect(
        &mut self,
        want: &[usize],
        wait: Duration,
        counts: impl Fn(&[u8]) -> bool,
    ) -> Vec<Vec<Vec<u8>>> {
        let cols = self.taps.files.len() + usize::from(self.sniffer.is_some());
        let mut got: Vec<Vec<Vec<u8>>> = vec![Vec::new(); cols];
        let deadline = Instant::now() + wait;
        let mut grace: Option<Instant> = None;
        loop {
            let mut any = self.taps.read_into(&mut got);
            if let Some(s) = &self.sniffer {
                let frames = s.incoming();
                any |= !frames.is_empty();
                got[cols - 1].extend(frames);
            }
            let now = Instant::now();
            let done = got
                .iter()
                .zip(want)
                .all(|(g, w)| g.iter().filter(|f| counts(f)).count() >= *w);
            if done && grace.is_none() {
                grace = Some(now + Duration::from_millis(20));
            }
            if grace.is_some_and(|g| now >= g) || now >= deadline {
                return got;
            }
            if !any {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Taps and the sniffer.

/// Non-blocking taps, their fds held: what the kernel transmits on one
/// can be read back from it.
pub struct Taps {
    pub names: Vec<&'static str>,
    pub ifindex: Vec<u32>,
    pub files: Vec<File>,
}

impl Taps {
    /// Open taps `names` in this thread's namespace.
    pub fn open(names: &[&'static str]) -> Result<Self> {
        let mut t = Taps {
            names: names.to_vec(),
            ifindex: Vec::new(),
            files: Vec::new(),
        };
        for name in names {
            t.files.push(open_tap(name)?);
            t.ifindex.push(ifindex(name)?);
        }
        Ok(t)
    }

    /// Write `frame` into tap `i`, as a guest would.
    pub fn write(&mut self, i: usize, frame: &[u8]) -> Result<()> {
        let name = self.names[i];
        self.files[i]
            .write_all(frame)
            .with_context(|| format!("writing into {name}"))
    }

    /// Read and discard everything queued on every tap.
    pub fn drain(&mut self) {
        let mut buf = vec![0u8; 65536];
        for f in &mut self.files {
            while f.read(&mut buf).is_ok() {}
        }
    }

    /// Append what each tap has queued to `got[i]`; whether any had.
    fn read_into(&mut self, got: &mut [Vec<Vec<u8>>]) -> bool {
        let mut buf = vec![0u8; 65536];
        let mut any = false;
        for (i, f) in self.files.iter_mut().enumerate() {
            loop {
                match f.read(&mut buf) {
                    Ok(n) => {
                        any = true;
                        got[i].push(buf[..n].to_vec());
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("reading {}: {e}", self.names[i]),
                }
            }
        }
        any
    }
}

/// An AF_PACKET socket on one device that reports the frames entering
/// its stack (not the ones it sends).
pub struct Sniffer(OwnedFd);

impl Sniffer {
    pub fn new(ifindex: u32) -> Result<Self> {
        Ok(Sniffer(packet_socket(ifindex, libc::ETH_P_ALL)?))
    }

    /// Frames received so far (not PACKET_OUTGOING).
    pub fn incoming(&self) -> Vec<Vec<u8>> {
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

// ---------------------------------------------------------------------------
// Cases.

/// The mismatches one case found.
#[derive(Default)]
pub struct Errs(Vec<String>);

impl Errs {
    pub fn push(&mut self, e: impl Into<String>) {
        self.0.push(e.into());
    }

    /// Ok if nothing was pushed, else every mismatch.
    pub fn done(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            bail!("{}", self.0.join("\n    "))
        }
    }
}

/// A case of a table.
pub trait TableCase<P> {
    fn name(&self) -> &str;
    /// Whether the case has an expectation for `prog` (else it is not run).
    fn runs_on(&self, _prog: P) -> bool {
        true
    }
}

/// Run `check` on every case that has an expectation for `prog` and
/// report every failure, with the number of cases run.
pub fn run_table<P: Copy + std::fmt::Debug, C: TableCase<P>>(
    prog: P,
    cases: &[C],
    mut check: impl FnMut(&C) -> Result<()>,
) -> Result<()> {
    let mut failed = Vec::new();
    let mut ran = 0;
    for c in cases.iter().filter(|c| c.runs_on(prog)) {
        ran += 1;
        if let Err(e) = check(c) {
            failed.push(format!("  [{prog:?}] {}:\n    {e:#}", c.name()));
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

/// One `#[test]` per program, each running that program's table on a
/// bench of its own: `table_tests!(Bench, Prog, xdp_table: "xdp" Xdp)`
/// makes `fn xdp_table()` run every case of `table()` for `Prog::Xdp`
/// through `Bench::new("xdp")?.check(case, Prog::Xdp)`.
#[macro_export]
macro_rules! table_tests {
    ($bench:ident, $prog:ident, $($name:ident: $tag:literal $p:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() -> anyhow::Result<()> {
                let mut b = $bench::new($tag)?;
                $crate::bpf::run_table($prog::$p, &table(), |c| b.check(c, $prog::$p))
            }
        )+
    };
}

#[cfg(test)]
mod tests {
    use umlbr_common::{NatStats, PortStats};

    use super::sum_counters;

    #[test]
    fn counters_are_summed_field_by_field() {
        let a = NatStats {
            out_xdp: 1,
            expired: 5,
            ..Default::default()
        };
        let b = NatStats {
            out_xdp: 2,
            in_miss: 3,
            ..Default::default()
        };
        let t = sum_counters(&[a, b]);
        assert_eq!((t.out_xdp, t.in_miss, t.expired, t.allocs), (3, 3, 5, 0));
        let p = PortStats {
            rx_bytes: 60,
            tc: 1,
            ..Default::default()
        };
        let t = sum_counters(&[p, p, p]);
        assert_eq!((t.rx_bytes, t.tc, t.rx_packets), (180, 3, 0));
    }
}
