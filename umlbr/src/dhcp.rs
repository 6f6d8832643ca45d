//! DHCP, DNS and router advertisements on a bridge's subnet
//! (`up --dhcp`): one dnsmasq per bridge, as libvirt and Incus run, bound
//! to the bridge's host interface alone.
//!
//! - DHCPv4 on the subnet of one IPv4 address of the bridge (a range of
//!   the subnet's free addresses unless `--dhcp-range` says which), with
//!   the bridge's address as router and DNS server; DNS forwarded to the
//!   resolvers of `/etc/resolv.conf` (under `ip netns exec NS`, the
//!   namespace's `/etc/netns/NS/resolv.conf`); static leases from a hosts
//!   file, re-read on SIGHUP.
//! - Router advertisements for every IPv6 prefix on the interface
//!   (`constructor:NAME`, so prefixes added later are advertised too):
//!   SLAAC, and the DNS server (RDNSS) and stateless DHCPv6. The
//!   interface itself then takes no router advertisement (`accept_ra`
//!   0): it is the guests' router, not theirs to route.
//!
//! Files, named by the network namespace as the lock is
//! (`net<INODE>-<NAME>`, see `lock.rs`):
//!
//! | file | what | removed |
//! |---|---|---|
//! | `/run/umlbr/net<INODE>-<NAME>.dnsmasq.conf` | dnsmasq's whole configuration; written before dnsmasq starts, so that `down` finds a dnsmasq whatever killed `up` | by `down`, after dnsmasq is stopped |
//! | `/run/umlbr/net<INODE>-<NAME>.dnsmasq.pid` | dnsmasq's pid (dnsmasq writes it) | by `down` |
//! | `/var/lib/umlbr/net<INODE>-<NAME>.leases` | dnsmasq's lease file | never: leases outlive dnsmasq and the bridge |
//! | `/var/lib/umlbr/net<INODE>-<NAME>.hosts` | static leases (`lease add`), `MAC,ADDR[,HOST]` a line | never (`lease del`) |
//!
//! A dnsmasq is umlbr's if its command line is exactly
//! `--conf-file=<that conf>`: `stop` finds it by its pid file and, for a
//! dnsmasq started by an `up` killed before the pid file was written, by
//! its command line in /proc. `ensure` (run by `umlbr watch` and by
//! `lease add`/`del`) starts it again if it died.
use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    bridge::Bridge,
    error::{Error, Result},
    link::{Net, fmt_mac},
    lock,
};

/// Where the lease and static-lease files live: they outlive a bridge.
pub const STATE_DIR: &str = "/var/lib/umlbr";

/// How long a DHCPv4 lease lasts.
pub const LEASE_SECS: u32 = 3600;

/// How long `stop` waits for dnsmasq to exit after SIGTERM, before SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// `up --dhcp`'s options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DhcpOptions {
    /// `--dhcp-range LO-HI`; the subnet's free addresses if None.
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
}

/// The files of a bridge's DHCP service.
#[derive(Clone, Debug, Serialize)]
pub struct Paths {
    pub conf: PathBuf,
    pub pid: PathBuf,
    pub leases: PathBuf,
    pub hosts: PathBuf,
}

/// The files of bridge `bridge`'s DHCP service in this namespace.
pub fn paths(bridge: &str) -> Result<Paths> {
    let lock = lock::path(bridge)?;
    // "net<INODE>-<NAME>.lock" without ".lock" (NAME may hold dots).
    let name = lock
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".lock").unwrap_or(&name);
    let run = Path::new(lock::DIR);
    let var = Path::new(STATE_DIR);
    Ok(Paths {
        conf: run.join(format!("{stem}.dnsmasq.conf")),
        pid: run.join(format!("{stem}.dnsmasq.pid")),
        leases: var.join(format!("{stem}.leases")),
        hosts: var.join(format!("{stem}.hosts")),
    })
}

/// The IPv4 subnet DHCP serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    /// The bridge's address: router and DNS server.
    pub router: Ipv4Addr,
    pub prefix: u8,
    pub lo: Ipv4Addr,
    pub hi: Ipv4Addr,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn in_subnet(a: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    u32::from(a) & mask(prefix) == u32::from(net) & mask(prefix)
}

/// Parse `LO-HI`, two IPv4 addresses, LO <= HI.
pub fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let bad = || Error::BadDhcpRange(s.into());
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: Ipv4Addr = lo.trim().parse().map_err(|_| bad())?;
    let hi: Ipv4Addr = hi.trim().parse().map_err(|_| bad())?;
    if u32::from(lo) > u32::from(hi) {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// A host name dnsmasq hands out and serves: a DNS label, and not a
/// word dnsmasq would read as a lease time in a hosts file.
pub fn parse_hostname(s: &str) -> Result<String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.bytes().all(|b| b.is_ascii_digit())
        && !["infinite", "ignore"].contains(&s.to_ascii_lowercase().as_str());
    if ok {
        Ok(s.into())
    } else {
        Err(Error::BadHostname(s.into()))
    }
}

/// The IPv4 subnet and range DHCP serves on a bridge with addresses
/// `addrs`: the subnet that holds `range`, or else the first IPv4
/// address's, all of whose free addresses on the larger side of the
/// bridge's are the range. None if the bridge has only IPv6 (router
/// advertisements only).
pub fn plan(
    bridge: &str,
    addrs: &[(IpAddr, u8)],
    range: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Result<Option<Subnet>> {
    let bad = |message: String| Error::DhcpConfig {
        bridge: bridge.into(),
        message,
    };
    let v4: Vec<(Ipv4Addr, u8)> = addrs
        .iter()
        .filter_map(|(a, p)| match a {
            IpAddr::V4(v) => Some((*v, *p)),
            IpAddr::V6(_) => None,
        })
        .collect();
    let has_v6 = addrs.iter().any(|(a, _)| a.is_ipv6());
    if v4.is_empty() && !has_v6 {
        return Err(bad(
            "needs an address on the bridge (give `--address`)".into()
        ));
    }
    let Some((lo, hi)) = range else {
        let Some(&(router, prefix)) = v4.first() else {
            return Ok(None);
        };
        if prefix > 30 {
            return Err(bad(format!(
                "{router}/{prefix} leaves no addresses to hand out (give a shorter prefix)"
            )));
        }
        let net = u32::from(router) & mask(prefix);
        let (first, last) = (net + 1, (net | !mask(prefix)) - 1);
        let r = u32::from(router);
        // The larger run of free addresses beside the bridge's own.
        let (lo, hi) = if r <= first {
            (first + 1, last)
        } else if r >= last {
            (first, last - 1)
        } else if last - r >= r - first {
            (r + 1, last)
        } else {
            (first, r - 1)
        };
        return Ok(Some(Subnet {
            router,
            prefix,
            lo: lo.into(),
            hi: hi.into(),
        }));
    };
    let Some(&(router, prefix)) = v4
        .iter()
        .find(|(a, p)| in_subnet(lo, *a, *p) && in_subnet(hi, *a, *p))
    else {
        let have: Vec<String> = v4.iter().map(|(a, p)| format!("{a}/{p}")).collect();
        return Err(bad(format!(
            "range {lo}-{hi} is not within the subnet of one of the bridge's IPv4 addresses ({})",
            if have.is_empty() {
                "none".into()
            } else {
                have.join(", ")
            }
        )));
    };
    let net = u32::from(router) & mask(prefix);
    let bcast = net | !mask(prefix);
    if prefix <= 30 && (u32::from(lo) == net || u32::from(hi) == bcast) {
        return Err(bad(format!(
            "range {lo}-{hi} holds the network or broadcast address of {router}/{prefix}"
        )));
    }
    if (u32::from(lo)..=u32::from(hi)).contains(&u32::from(router)) {
        return Err(bad(format!(
            "range {lo}-{hi} holds the bridge's own address {router}"
        )));
    }
    Ok(Some(Subnet {
        router,
        prefix,
        lo,
        hi,
    }))
}

/// dnsmasq's configuration for bridge `bridge`.
fn conf_text(bridge: &str, p: &Paths, subnet: Option<Subnet>) -> String {
    let mut c = format!(
        "# umlbr: DHCP, DNS and router advertisements of bridge {bridge} (`umlbr up --dhcp`).\n\
         # umlbr writes this file and `umlbr down {bridge}` deletes it; do not edit.\n\
         interface={bridge}\n\
         except-interface=lo\n\
         bind-dynamic\n\
         no-hosts\n\
         resolv-file=/etc/resolv.conf\n\
         pid-file={}\n\
         dhcp-leasefile={}\n\
         dhcp-hostsfile={}\n\
         dhcp-authoritative\n",
        p.pid.display(),
        p.leases.display(),
        p.hosts.display()
    );
    // Debian's dnsmasq user, as its own service and libvirt's use; else
    // dnsmasq's default (nobody).
    if nix::unistd::User::from_name("dnsmasq")
        .ok()
        .flatten()
        .is_some()
    {
        c.push_str("user=dnsmasq\n");
    }
    if let Some(s) = subnet {
        let m = Ipv4Addr::from(mask(s.prefix));
        c.push_str(&format!(
            "dhcp-range={},{},{m},{LEASE_SECS}\n\
             dhcp-option=option:router,{}\n\
             dhcp-option=option:dns-server,{}\n",
            s.lo, s.hi, s.router, s.router
        ));
    }
    // Every IPv6 prefix of the interface, now or later: SLAAC, with the
    // DNS server in the advertisement (RDNSS) and stateless DHCPv6.
    c.push_str(&format!(
        "enable-ra\ndhcp-range=::,constructor:{bridge},ra-stateless,64,{LEASE_SECS}\n"
    ));
    c
}

fn file_err(bridge: &str, path: &Path, what: &'static str) -> impl Fn(std::io::Error) -> Error {
    let (bridge, path) = (bridge.to_string(), path.to_path_buf());
    move |err| Error::DhcpFile {
        bridge: bridge.clone(),
        path: path.clone(),
        what,
        err,
    }
}

/// Write `text` to `path` whole (a temporary file renamed over it),
/// with `mode`.
fn write_whole(bridge: &str, path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let e = file_err(bridge, &tmp, "writing");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(&e)?;
    f.write_all(text.as_bytes()).map_err(&e)?;
    f.sync_all().map_err(&e)?;
    // The umask may have narrowed it: dnsmasq reads the hosts file again
    // after it has dropped root.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(&e)?;
    std::fs::rename(&tmp, path).map_err(file_err(bridge, path, "writing"))
}

fn make_dirs(bridge: &str) -> Result<()> {
    for (dir, mode) in [(lock::DIR, 0o700), (STATE_DIR, 0o755)] {
        match std::fs::DirBuilder::new().mode(mode).create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(file_err(bridge, Path::new(dir), "creating")(e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The dnsmasq binary: the one on PATH, else Debian's.
fn dnsmasq_bin() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("dnsmasq"))
            .find(|f| f.is_file())
    });
    found.unwrap_or_else(|| PathBuf::from("/usr/sbin/dnsmasq"))
}

/// The command line that marks umlbr's dnsmasq of a bridge.
fn conf_arg(p: &Paths) -> String {
    format!("--conf-file={}", p.conf.display())
}

/// Whether process `pid` is a dnsmasq started with `arg` alone.
fn is_ours(pid: i32, arg: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    args.len() == 2 && args[0].ends_with(b"dnsmasq") && args[1] == arg.as_bytes()
}

/// The pid of the bridge's dnsmasq, from its pid file, if it runs.
fn alive(p: &Paths) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(&p.pid).ok()?.trim().parse().ok()?;
    (pid > 0 && is_ours(pid, &conf_arg(p))).then_some(pid)
}

/// Every process that is the bridge's dnsmasq, by its command line.
fn find_all(p: &Paths) -> Vec<i32> {
    let arg = conf_arg(p);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| is_ours(pid, &arg))
        .collect()
}

/// Start dnsmasq from the conf: it daemonizes once it serves (bound,
/// files open), or exits with why on stderr.
fn spawn(bridge: &str, p: &Paths) -> Result<i32> {
    let out = Command::new(dnsmasq_bin())
        .arg(conf_arg(p))
        .stdin(Stdio::null())
        .output()
        .map_err(|err| Error::DhcpSpawn {
            bridge: bridge.into(),
            err,
        })?;
    let failed = |why: String| Error::DhcpStart {
        bridge: bridge.into(),
        status: out.status.to_string(),
        stderr: why,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(failed(stderr));
    }
    // The daemon writes its pid file before its parent exits; allow for
    // a slow machine anyway.
    let t0 = Instant::now();
    loop {
        if let Some(pid) = alive(p) {
            return Ok(pid);
        }
        if t0.elapsed() > Duration::from_secs(3) {
            return Err(failed(format!(
                "no dnsmasq runs with {} (it exited at once?)",
                p.pid.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start bridge `bridge`'s DHCP service for its addresses `addrs`: the
/// conf written first (it is the record `down` follows), then dnsmasq.
/// Under the bridge's lock.
pub fn start(bridge: &str, addrs: &[(IpAddr, u8)], opts: &DhcpOptions) -> Result<i32> {
    let subnet = plan(bridge, addrs, opts.range)?;
    let p = paths(bridge)?;
    make_dirs(bridge)?;
    // dnsmasq wants its hosts file to exist.
    if !p.hosts.exists() {
        write_whole(bridge, &p.hosts, "", 0o644)?;
    }
    refuse_router_advertisements(bridge)?;
    // A dnsmasq of an earlier conf (a restart with another range).
    stop_processes(&p);
    lock::write_private(&p.conf, &conf_text(bridge, &p, subnet))
        .map_err(|(path, e)| file_err(bridge, &path, "writing")(e))?;
    spawn(bridge, &p)
}

/// The bridge is the guests' router: its host interface takes no router
/// advertisement from them (a guest's would give the host a default
/// route through the guest, and an address in its prefix). The sysctl
/// goes with the interface. A kernel without IPv6 has none to set.
fn refuse_router_advertisements(bridge: &str) -> Result<()> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{bridge}/accept_ra"));
    match std::fs::write(&path, "0") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(file_err(bridge, &path, "writing")(e))
        }
        _ => Ok(()),
    }
}

/// SIGTERM, then SIGKILL after `STOP_WAIT`, to every dnsmasq of `p`.
fn stop_processes(p: &Paths) -> bool {
    let mut pids = find_all(p);
    pids.extend(alive(p));
    pids.sort_unstable();
    pids.dedup();
    if pids.is_empty() {
        return false;
    }
    for &pid in &pids {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let t0 = Instant::now();
    let mut killed = false;
    // Until each has closed its sockets (a dnsmasq started next binds the
    // same ports): its command line is empty already before that.
    while pids.iter().any(|&pid| !exited(pid)) {
        if t0.elapsed() > STOP_WAIT && !killed {
            for &pid in pids.iter().filter(|&&pid| !exited(pid)) {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            killed = true;
        }
        if t0.elapsed() > STOP_WAIT * 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Whether process `pid` has exited (gone, or a zombie: its files are
/// closed).
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, r)| r.trim_start().chars().next())
            .is_none_or(|c| c == 'Z' || c == 'X'),
    }
}

/// Stop bridge `bridge`'s DHCP service, if it has one, and forget its
/// conf (leases and static leases stay). Under the bridge's lock.
/// Whether there was one.
pub fn stop(bridge: &str) -> Result<bool> {
    let p = paths(bridge)?;
    let had = p.conf.exists();
    let killed = stop_processes(&p);
    for f in [&p.pid, &p.conf] {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(file_err(bridge, f, "deleting")(e));
            }
            _ => {}
        }
    }
    Ok(had || killed)
}

/// What the bridge's DHCP service is, read from its conf.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DhcpView {
    /// The DHCPv4 range, `LO-HI` (None: router advertisements only).
    pub range: Option<String>,
    /// The router and DNS server handed out.
    pub router: Option<Ipv4Addr>,
    /// dnsmasq's pid; None if it is not running (`umlbr watch` restarts it).
    pub pid: Option<i32>,
    pub lease_file: PathBuf,
    pub hosts_file: PathBuf,
}

/// Bridge `bridge`'s DHCP service, if `up --dhcp` (or `apply`) gave it one.
pub fn read(bridge: &str) -> Result<Option<DhcpView>> {
    let p = paths(bridge)?;
    let text = match std::fs::read_to_string(&p.conf) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_err(bridge, &p.conf, "reading")(e)),
    };
    let mut range = None;
    let mut router = None;
    for l in text.lines() {
        if let Some(v) = l.strip_prefix("dhcp-range=") {
            let f: Vec<&str> = v.split(',').collect();
            if let [lo, hi, ..] = f[..]
                && lo.parse::<Ipv4Addr>().is_ok()
            {
                range = Some(format!("{lo}-{hi}"));
            }
        }
        if let Some(v) = l.strip_prefix("dhcp-option=option:router,") {
            router = v.trim().parse().ok();
        }
    }
    Ok(Some(DhcpView {
        range,
        router,
        pid: alive(&p),
        lease_file: p.leases,
        hosts_file: p.hosts,
    }))
}

/// If the bridge has a DHCP service whose dnsmasq is not running, start
/// it again (from its conf: same range, same lease file). The caller
/// holds the bridge's lock. The new pid if it did.
pub fn ensure_locked(bridge: &str) -> Result<Option<i32>> {
    let p = paths(bridge)?;
    if !p.conf.exists() || alive(&p).is_some() {
        return Ok(None);
    }
    // One the pid file lost (an `up` killed before dnsmasq wrote it).
    if !find_all(&p).is_empty() {
        return Ok(None);
    }
    spawn(bridge, &p).map(Some)
}

/// `ensure_locked` for `umlbr watch`: looks without the lock (a file
/// and a pid), takes it only to restart.
pub fn ensure(bridge: &str) -> Result<Option<i32>> {
    let p = paths(bridge)?;
    if !p.conf.exists() || alive(&p).is_some() {
        return Ok(None);
    }
    let _lock = lock::take(bridge)?;
    ensure_locked(bridge)
}

/// A static lease: MAC -> address (and host name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaticLease {
    pub mac: [u8; 6],
    pub addr: Ipv4Addr,
    pub hostname: Option<String>,
}

/// The bridge's static leases, from its hosts file.
pub fn static_leases(bridge: &str) -> Result<Vec<StaticLease>> {
    let p = paths(bridge)?;
    let text = match std::fs::read_to_string(&p.hosts) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file_err(bridge, &p.hosts, "reading")(e)),
    };
    let mut out = Vec::new();
    for l in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = l.split(',').collect();
        let (Some(mac), Some(addr)) = (
            f.first().and_then(|m| crate::link::parse_mac(m).ok()),
            f.get(1).and_then(|a| a.parse().ok()),
        ) else {
            continue;
        };
        out.push(StaticLease {
            mac,
            addr,
            hostname: f.get(2).map(|h| h.to_string()),
        });
    }
    Ok(out)
}

/// Replace the bridge's static leases with `leases`, and have a running
/// dnsmasq read them again (SIGHUP). Under the bridge's lock.
pub fn set_static_leases(bridge: &str, leases: &[StaticLease]) -> Result<()> {
    let p = paths(bridge)?;
    make_dirs(bridge)?;
    let mut text =
        String::from("# umlbr: static DHCP leases (`umlbr lease add`), MAC,ADDR[,HOST]\n");
    for l in leases {
        text.push_str(&format!("{},{}", fmt_mac(&l.mac), l.addr));
        if let Some(h) = &l.hostname {
            text.push_str(&format!(",{h}"));
        }
        text.push('\n');
    }
    write_whole(bridge, &p.hosts, &text, 0o644)?;
    if let Some(pid) = alive(&p) {
        // SAFETY: plain kill(2) of our dnsmasq.
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }
    Ok(())
}

/// Check a static lease against the bridge's addresses and other
/// static leases `others` (the lease's MAC excluded).
pub fn check_static(
    bridge: &str,
    addrs: &[(IpAddr, u8)],
    lease: &StaticLease,
    others: &[StaticLease],
) -> Result<()> {
    let bad = |message: String| Error::DhcpConfig {
        bridge: bridge.into(),
        message,
    };
    let a = lease.addr;
    if lease.mac[0] & 1 != 0 || lease.mac == [0; 6] {
        return Err(bad(format!("{} is not a unicast MAC", fmt_mac(&lease.mac))));
    }
    let Some((own, prefix)) = addrs.iter().find_map(|(b, p)| match b {
        IpAddr::V4(v) if in_subnet(a, *v, *p) => Some((*v, *p)),
        _ => None,
    }) else {
        return Err(bad(format!(
            "{a} is in no subnet of the bridge's IPv4 addresses"
        )));
    };
    let net = u32::from(own) & mask(prefix);
    if a == own || (prefix <= 30 && (u32::from(a) == net || u32::from(a) == net | !mask(prefix))) {
        return Err(bad(format!(
            "{a} is the bridge's own, network or broadcast address"
        )));
    }
    if let Some(o) = others.iter().find(|o| o.addr == a && o.mac != lease.mac) {
        return Err(bad(format!(
            "{a} is the static lease of {} already",
            fmt_mac(&o.mac)
        )));
    }
    Ok(())
}

/// `lease add`: MAC always gets the lease's address (and host name),
/// replacing a static lease MAC had.
pub async fn lease_add(net: &Net, bridge: &str, lease: StaticLease) -> Result<()> {
    let _lock = lock::take(bridge)?;
    let br = Bridge::open(net, bridge).await?;
    let addrs = net.ip_addrs(br.host.index).await?;
    let mut all = static_leases(bridge)?;
    check_static(bridge, &addrs, &lease, &all)?;
    all.retain(|l| l.mac != lease.mac);
    all.push(lease);
    all.sort();
    set_static_leases(bridge, &all)?;
    // Cheap here: a dnsmasq that died is started again.
    ensure_locked(bridge)?;
    Ok(())
}

/// `lease del`: forget MAC's static lease.
pub async fn lease_del(net: &Net, bridge: &str, mac: [u8; 6]) -> Result<()> {
    let _lock = lock::take(bridge)?;
    Bridge::open(net, bridge).await?;
    let mut all = static_leases(bridge)?;
    let n = all.len();
    all.retain(|l| l.mac != mac);
    if all.len() == n {
        return Err(Error::DhcpConfig {
            bridge: bridge.into(),
            message: format!("{} has no static lease", fmt_mac(&mac)),
        });
    }
    set_static_leases(bridge, &all)?;
    ensure_locked(bridge)?;
    Ok(())
}

/// A lease, as `umlbr leases` prints it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LeaseRow {
    pub bridge: String,
    pub mac: String,
    pub address: String,
    pub hostname: Option<String>,
    /// Unix time the dynamic lease ends (0: never); None for a static
    /// lease no client holds now.
    pub expires: Option<u64>,
    /// A static lease (`lease add`).
    #[serde(rename = "static")]
    pub is_static: bool,
}

/// Bridge `bridge`'s leases: those dnsmasq granted (its lease file) and
/// the static ones, each once.
pub fn leases(bridge: &str) -> Result<Vec<LeaseRow>> {
    let p = paths(bridge)?;
    let text = match std::fs::read_to_string(&p.leases) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(file_err(bridge, &p.leases, "reading")(e)),
    };
    let statics = static_leases(bridge)?;
    let mut out = Vec::new();
    // "EXPIRY MAC ADDR HOST CLIENT-ID"; the IPv6 part (after "duid") has
    // no MAC in its second field.
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let [exp, mac, addr, host, ..] = f[..] else {
            continue;
        };
        let (Ok(exp), Ok(mac), Ok(addr)) = (
            exp.parse::<u64>(),
            crate::link::parse_mac(mac),
            addr.parse::<Ipv4Addr>(),
        ) else {
            continue;
        };
        let st = statics.iter().any(|s| s.mac == mac && s.addr == addr);
        out.push(LeaseRow {
            bridge: bridge.into(),
            mac: fmt_mac(&mac),
            address: addr.to_string(),
            hostname: (host != "*").then(|| host.to_string()),
            expires: Some(exp),
            is_static: st,
        });
    }
    for s in &statics {
        let mac = fmt_mac(&s.mac);
        let addr = s.addr.to_string();
        if out.iter().any(|r| r.mac == mac && r.address == addr) {
            continue;
        }
        out.push(LeaseRow {
            bridge: bridge.into(),
            mac,
            address: addr,
            hostname: s.hostname.clone(),
            expires: None,
            is_static: true,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> (IpAddr, u8) {
        crate::link::parse_cidr(s).unwrap()
    }

    #[test]
    fn default_range_is_the_free_side() {
        let s = plan("b", &[v4("192.168.2.1/24")], None).unwrap().unwrap();
        assert_eq!(
            (s.lo, s.hi),
            (
                "192.168.2.2".parse().unwrap(),
                "192.168.2.254".parse().unwrap()
            )
        );
        let s = plan("b", &[v4("10.0.0.254/24")], None).unwrap().unwrap();
        assert_eq!(
            (s.lo, s.hi),
            ("10.0.0.1".parse().unwrap(), "10.0.0.253".parse().unwrap())
        );
        let s = plan("b", &[v4("10.0.0.1/30")], None).unwrap().unwrap();
        assert_eq!(
            (s.lo, s.hi),
            ("10.0.0.2".parse().unwrap(), "10.0.0.2".parse().unwrap())
        );
        assert!(plan("b", &[v4("10.0.0.1/31")], None).is_err());
        assert!(plan("b", &[], None).is_err());
        assert_eq!(plan("b", &[v4("fd00::1/64")], None).unwrap(), None);
    }

    #[test]
    fn a_given_range_must_fit() {
        let a = [v4("fd00::1/64"), v4("192.168.2.1/24")];
        let r = |s| plan("b", &a, Some(parse_range(s).unwrap()));
        assert!(r("192.168.2.100-192.168.2.199").is_ok());
        assert!(r("192.168.2.1-192.168.2.9").is_err());
        assert!(r("192.168.3.2-192.168.3.9").is_err());
        assert!(r("192.168.2.200-192.168.2.255").is_err());
        assert!(parse_range("192.168.2.9-192.168.2.2").is_err());
        assert!(parse_range("192.168.2.9").is_err());
    }

    #[test]
    fn host_names() {
        assert!(parse_hostname("guest-1").is_ok());
        for bad in ["", "-a", "a-", "a.b", "123", "infinite", "a b"] {
            assert!(parse_hostname(bad).is_err(), "{bad}");
        }
    }
}
