//! Masquerade: the uplink whose address guest flows leave with, the NAT
//! table, and the kernel slow path beside the BPF one.
use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
};

use aya::programs::ProgramInfo;
use serde::Serialize;
pub use umlbr_common::DEFAULT_NAT_MAX_PER_GUEST;
use umlbr_common::{
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, NAT_F_ROUTE_MTU, NAT_F_V6, NAT_F_XDP_TX, NAT_ICMP_SECS,
    NAT_S_FIN_IN, NAT_S_FIN_OUT, NAT_S_REPLIED, NAT_S_RST, NAT_S_SYN_OUT, NAT_TCP_CLOSING_SECS,
    NAT_TCP_ESTABLISHED_SECS, NAT_TCP_TRANSITORY_SECS, NAT_UDP_SECS, NAT_UDP_STREAM_SECS,
    NatConfig, NatKey, NatStats, names, nat_tcp_closed,
};

pub mod v6;

use crate::{
    bridge::Bridge,
    error::{Error, Result},
    link::{Link, Net},
    object::{self, Hook, Programs, Tc, map_err, sum},
    port, sys,
};

/// `ip_forward` was off before umlbr turned it on (restored on detach).
const NAT_F_FWD_WAS_OFF: u16 = 0x100;
/// The kernel slow path (the nftables table, `ip_forward`) may be on for
/// this bridge: recorded before either is changed, cleared after both are
/// undone, so that `down` after a kill at any point finds them. Alone
/// (`nat_ifindex` still 0) it is a record only: the datapath masquerades
/// only with an uplink.
const NAT_F_SLOW_PATH: u16 = 0x200;
/// umlbr made the uplink's clsact qdisc (TC on a kernel without tcx):
/// recorded with `nat_ifindex`, before the hook; `release` deletes it.
const NAT_F_OWN_CLSACT: u16 = 0x400;
/// The flags that say what to undo.
const NAT_F_RECORD: u16 = NAT_F_FWD_WAS_OFF | NAT_F_SLOW_PATH;

/// Options of `--masquerade`.
#[derive(Clone, Debug, Default)]
pub struct NatOptions {
    /// Source ports to allocate, inclusive; default: above (or below) the
    /// host's ip_local_port_range.
    pub ports: Option<(u16, u16)>,
    /// Idle timeouts in seconds, in the order given (the last one of a
    /// kind counts).
    pub timeouts: Vec<(NatTimeout, u64)>,
    /// Most live mappings one port's guests may hold (0: no limit);
    /// default DEFAULT_NAT_MAX_PER_GUEST.
    pub max_per_guest: Option<u32>,
}

/// The idle timeouts of mappings, as `--nat-timeout KEY=SECONDS` names
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatTimeout {
    TcpEstablished,
    TcpTransitory,
    TcpClosing,
    Udp,
    UdpStream,
    Icmp,
}

impl NatTimeout {
    pub const ALL: [NatTimeout; 6] = [
        NatTimeout::TcpEstablished,
        NatTimeout::TcpTransitory,
        NatTimeout::TcpClosing,
        NatTimeout::Udp,
        NatTimeout::UdpStream,
        NatTimeout::Icmp,
    ];

    pub fn key(self) -> &'static str {
        match self {
            NatTimeout::TcpEstablished => "tcp_established",
            NatTimeout::TcpTransitory => "tcp_transitory",
            NatTimeout::TcpClosing => "tcp_closing",
            NatTimeout::Udp => "udp",
            NatTimeout::UdpStream => "udp_stream",
            NatTimeout::Icmp => "icmp",
        }
    }

    /// Conntrack's default.
    pub fn default_secs(self) -> u64 {
        match self {
            NatTimeout::TcpEstablished => NAT_TCP_ESTABLISHED_SECS,
            NatTimeout::TcpTransitory => NAT_TCP_TRANSITORY_SECS,
            NatTimeout::TcpClosing => NAT_TCP_CLOSING_SECS,
            NatTimeout::Udp => NAT_UDP_SECS,
            NatTimeout::UdpStream => NAT_UDP_STREAM_SECS,
            NatTimeout::Icmp => NAT_ICMP_SECS,
        }
    }

    fn field(self, c: &mut NatConfig) -> &mut u64 {
        match self {
            NatTimeout::TcpEstablished => &mut c.tcp_established_ns,
            NatTimeout::TcpTransitory => &mut c.tcp_transitory_ns,
            NatTimeout::TcpClosing => &mut c.tcp_closing_ns,
            NatTimeout::Udp => &mut c.udp_ns,
            NatTimeout::UdpStream => &mut c.udp_stream_ns,
            NatTimeout::Icmp => &mut c.icmp_ns,
        }
    }

    /// Set every timeout of `c`: the defaults, then `given` in order.
    pub fn apply(c: &mut NatConfig, given: &[(NatTimeout, u64)]) {
        let defaults = NatTimeout::ALL.map(|t| (t, t.default_secs()));
        for (t, secs) in defaults.iter().chain(given) {
            *t.field(c) = secs.saturating_mul(1_000_000_000);
        }
    }
}

/// Parse `LO-HI`.
pub fn parse_port_range(s: &str) -> Result<(u16, u16)> {
    let bad = || Error::BadPortRange(s.into());
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = a.trim().parse().map_err(|_| bad())?;
    let hi: u16 = b.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// Parse `KEY=SECONDS`.
pub fn parse_timeout(s: &str) -> Result<(NatTimeout, u64)> {
    let bad = || Error::BadTimeout(s.into());
    let (k, v) = s.split_once('=').ok_or_else(bad)?;
    let key = NatTimeout::ALL
        .into_iter()
        .find(|t| t.key() == k)
        .ok_or_else(bad)?;
    match v.parse() {
        Ok(secs) if secs > 0 => Ok((key, secs)),
        _ => Err(bad()),
    }
}

/// The host's ephemeral port range.
pub(crate) fn local_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A NAT port range that stays clear of the host's own ephemeral ports.
pub fn choose_ports(requested: Option<(u16, u16)>, host: (u16, u16)) -> Result<(u16, u16)> {
    let overlaps = |(lo, hi): (u16, u16)| lo <= host.1 && hi >= host.0;
    match requested {
        Some((lo, hi)) if overlaps((lo, hi)) => Err(Error::NatPortsOverlap {
            lo,
            hi,
            host_lo: host.0,
            host_hi: host.1,
        }),
        Some(r) => Ok(r),
        None if host.1 <= 65535 - 1024 => Ok((host.1 + 1, 65535)),
        None if host.0 >= 2048 => Ok((1024, host.0 - 1)),
        None => Err(Error::NoRoomForNatPorts(host.0, host.1)),
    }
}

/// The nftables table of `bridge`'s slow path. Interface names may hold
/// characters nft identifiers may not: each byte but a letter or digit is
/// written `_` and two hex digits, so that no two names share a table
/// (`br-0`, `br_0` and `br.0` are `umlbr_br_2d0`, `umlbr_br_5f0`,
/// `umlbr_br_2e0`).
pub fn nft_table(bridge: &str) -> String {
    let mut t = String::from("umlbr_");
    for b in bridge.bytes() {
        if b.is_ascii_alphanumeric() {
            t.push(b as char);
        } else {
            t.push_str(&format!("_{b:02x}"));
        }
    }
    t
}

/// Whether `ip_forward` is off now.
fn forwarding_off() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .map(|s| s.trim() == "0")
        .unwrap_or(true)
}

/// The kernel slow path: forwarding on, and a masquerade rule for the
/// guest subnet, for what BPF does not translate (fragments, other
/// protocols, TCP flows that began before the masquerade); guests' packets
/// from other sources are not forwarded (BPF hands them here,
/// untranslated). With a quota (`max_per_guest` > 0), a guest address
/// with that many connections in conntrack gets no new one (nft `ct
/// count`): the kernel sees the bridge's host interface, not the guest's
/// port, so here the quota is per source address.
/// New connections from the uplink to the bridge are dropped unless a
/// port forward's dnat made them (`forward.rs` adds those rules). Only once
/// `NAT_F_SLOW_PATH` (and `NAT_F_FWD_WAS_OFF`) are recorded in the
/// bridge's NAT config.
fn slow_path_on(
    bridge: &str,
    subnet: Ipv4Addr,
    prefix: u8,
    uplink: &str,
    max_per_guest: u32,
    plan6: &v6::Plan6,
) -> Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| Error::io("turning on /proc/sys/net/ipv4/ip_forward", e))?;
    let t = nft_table(bridge);
    let (quota_set, quota_rule) = if max_per_guest > 0 {
        (
            " set guest_flows {\n  type ipv4_addr; size 65535; flags dynamic;\n }\n".to_string(),
            format!(
                "  iifname \"{bridge}\" ct state new add @guest_flows {{ ip saddr ct count over {max_per_guest} }} counter drop\n"
            ),
        )
    } else {
        (String::new(), String::new())
    };
    // The LAN reaches guests only through port forwards (dnat'ed) and as
    // the answers to their own flows: a connection routed through the host
    // straight to a guest's address is dropped, as libvirt's NAT network
    // rejects it.
    let inbound_rule = format!(
        "  iifname \"{uplink}\" oifname \"{bridge}\" ct status dnat accept\n  \
         iifname \"{uplink}\" oifname \"{bridge}\" ct state new counter drop\n"
    );
    // Declared, deleted and made again in one transaction: whole, also
    // over the table of an attach that was killed half-way.
    let rules = format!(
        "table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n{quota_set} chain postrouting {{\n  type nat hook postrouting priority srcnat; policy accept;\n  ip saddr {subnet}/{prefix} oifname \"{uplink}\" masquerade\n }}\n \
         chain forward {{\n  type filter hook forward priority filter; policy accept;\n  iifname \"{bridge}\" ip saddr != {subnet}/{prefix} counter drop\n{quota_rule}{inbound_rule} }}\n}}\n{}",
        // IPv6 in the same transaction: never forwarded untranslated.
        v6::table(&t, bridge, uplink, plan6, max_per_guest)
    );
    nft(&rules).map_err(|e| Error::io(format!("adding nftables table {t}"), e))
}

/// Whether bridge `b`'s masquerade is on or recorded as begun.
fn masquerades(b: &Bridge) -> bool {
    b.maps
        .nat_config()
        .is_ok_and(|c| c.nat_ifindex != 0 || c.flags & NAT_F_SLOW_PATH != 0)
}

/// Undo `slow_path_on`: the table goes (if it is there); forwarding goes
/// off again if this masquerade turned it on, unless another bridge still
/// masquerades, which then inherits that duty. Each step may be repeated:
/// a `down` killed here is run again.
async fn slow_path_off(net: &Net, bridge: &str, restore_fwd_off: bool) {
    let _ = nft(&format!("delete table ip {}\n", nft_table(bridge)));
    let _ = nft(&v6::delete(&nft_table(bridge)));
    if !restore_fwd_off {
        return;
    }
    for mut b in Bridge::list(net).await.unwrap_or_default() {
        if b.name == bridge || !masquerades(&b) {
            continue;
        }
        if let Ok(mut c) = b.maps.nat_config() {
            c.flags |= NAT_F_FWD_WAS_OFF;
            let _ = b.maps.set_nat_config(c);
            return;
        }
    }
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "0");
}

pub(crate) fn nft(script: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// The guests' subnet: the bridge's host address and prefix length.
async fn guest_subnet(net: &Net, br: &Bridge) -> Result<(Ipv4Addr, u8, u32)> {
    let (gw, prefix) = *net
        .ipv4_addrs(br.host.index)
        .await?
        .first()
        .ok_or_else(|| Error::NoAddress(format!("{} (give `up --address`)", br.name)))?;
    let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
    Ok((Ipv4Addr::from(u32::from(gw) & mask), prefix, mask))
}

/// The masquerade's settings for `br` through `link`, and the routes out
/// of `link` that carry an MTU.
async fn plan(
    net: &Net,
    br: &Bridge,
    link: &Link,
    opts: &NatOptions,
) -> Result<(NatConfig, u8, Vec<(Ipv4Addr, u8, u32)>)> {
    let (nat_addr, _) = *net
        .ipv4_addrs(link.index)
        .await?
        .first()
        .ok_or_else(|| Error::NoAddress(link.name.clone()))?;
    let (subnet, prefix, mask) = guest_subnet(net, br).await?;
    let (port_lo, port_hi) = choose_ports(opts.ports, local_port_range())?;
    let gw_mac = br
        .host
        .mac
        .ok_or_else(|| Error::NotEthernet(br.name.clone()))?;
    let route_mtus = net.route_mtus_via(link.index).await?;
    // As for a veth uplink port: TC alone is cheaper than veth's XDP.
    let xdp_tx = link.kind.as_deref() != Some("veth");
    let mut cfg = NatConfig {
        nat_ifindex: link.index,
        nat_addr: u32::from(nat_addr).to_be(),
        host_ifindex: br.host.index,
        subnet: u32::from(subnet).to_be(),
        mask: mask.to_be(),
        port_lo,
        port_hi,
        gw_mac,
        mtu: link.mtu,
        max_per_guest: opts.max_per_guest.unwrap_or(DEFAULT_NAT_MAX_PER_GUEST),
        ..Default::default()
    };
    if xdp_tx {
        cfg.flags |= NAT_F_XDP_TX;
    }
    if !route_mtus.is_empty() {
        cfg.flags |= NAT_F_ROUTE_MTU;
    }
    NatTimeout::apply(&mut cfg, &opts.timeouts);
    Ok((cfg, prefix, route_mtus))
}

/// The part of `attach` that `release` undoes.
async fn connect(
    net: &Net,
    br: &mut Bridge,
    link: &Link,
    tc: (&ProgramInfo, Hook),
    cfg: NatConfig,
    route_mtus: &[(Ipv4Addr, u8, u32)],
) -> Result<()> {
    let xdp_tx = cfg.flags & NAT_F_XDP_TX != 0;
    if xdp_tx {
        br.maps.add_nat_tx(link.index, &link.name)?;
    }
    for (dst, len, mtu) in route_mtus {
        let key = aya::maps::lpm_trie::Key::new(*len as u32, u32::from(*dst).to_be());
        br.maps
            .nat_mtu
            .insert(&key, *mtu, 0)
            .map_err(map_err(names::NAT_MTU))?;
    }
    br.maps.set_nat_config(cfg)?;
    port::hook(net, link, xdp_tx.then_some(br.xdp_prog_id), tc.0, tc.1).await
}

/// Masquerade the bridge's guests through `iface`. Returns the bridge's
/// name.
pub async fn attach(
    net: &Net,
    iface: &str,
    bridge: Option<&str>,
    opts: &NatOptions,
) -> Result<String> {
    let link = net.require(iface).await?;
    port::check_free(net, &link, &Programs::read()).await?;
    let br = Bridge::open_or_only(net, bridge).await?;
    let mut br = port::lock(net, br).await?;
    // Again under the lock: another command may have taken it meanwhile.
    let link = net.require(iface).await?;
    let progs = Programs::read();
    port::check_free(net, &link, &progs).await?;
    let old = br.maps.nat_config()?;
    if old.nat_ifindex != 0 {
        return Err(Error::UplinkExists {
            bridge: br.name.clone(),
            uplink: net.name_of(old.nat_ifindex).await?,
        });
    }
    let (mut cfg, prefix, route_mtus) = plan(net, &br, &link, opts).await?;
    let plan6 = v6::plan(net, br.host.index, &link).await?;
    let tc = br.require_tc_prog(Tc::Ingress)?;
    let subnet = Ipv4Addr::from(u32::from_be(cfg.subnet));
    // Record before changing: the slow path, and whether forwarding was
    // off (also if a killed attach recorded that before turning it on).
    let mut record = NAT_F_SLOW_PATH | (old.flags & NAT_F_FWD_WAS_OFF);
    if forwarding_off() {
        record |= NAT_F_FWD_WAS_OFF;
    }
    br.maps.set_nat_config(NatConfig {
        flags: record,
        ..Default::default()
    })?;
    cfg.flags |= record;
    let tc_hook = Hook::chosen()?;
    if object::makes_clsact(tc_hook, link.index, &link.name)? {
        cfg.flags |= NAT_F_OWN_CLSACT;
    }
    // The datapath's IPv6 settings before its flag: with it, guests' IPv6
    // is translated, or dropped without an uplink address.
    br.maps.set_nat6_config(v6::config(&plan6))?;
    v6::forwarding_on(&br.host.name)?;
    cfg.flags |= NAT_F_V6;
    let made = match slow_path_on(&br.name, subnet, prefix, iface, cfg.max_per_guest, &plan6) {
        Ok(()) => connect(net, &mut br, &link, (&tc, tc_hook), cfg, &route_mtus).await,
        Err(e) => Err(e),
    };
    if let Err(e) = made {
        release(net, &mut br, Some(&link), &progs).await;
        return Err(e);
    }
    Ok(br.name.clone())
}

/// Undo `attach` (through `link`, if it still exists): hooks, devmap
/// entry, table, slow path, and the config that records them last.
async fn release(net: &Net, br: &mut Bridge, link: Option<&Link>, progs: &Programs) {
    let cfg = br.maps.nat_config().unwrap_or_default();
    if let Some(link) = link {
        if let Ok(Some(now)) = net.link_by_index(link.index).await {
            let _ = port::unhook(net, &now, progs).await;
            if cfg.flags & NAT_F_OWN_CLSACT != 0 {
                let _ = object::remove_own_clsact(now.index, &now.name);
            }
        }
        let _ = br.maps.nat_tx.remove(link.index);
    }
    flush(br);
    if cfg.flags & NAT_F_SLOW_PATH != 0 {
        slow_path_off(net, &br.name, cfg.flags & NAT_F_FWD_WAS_OFF != 0).await;
    }
    let _ = br.maps.set_nat_config(NatConfig::default());
}

fn flush(br: &mut Bridge) {
    let keys: Vec<_> = br.maps.nat_mtu.keys().filter_map(|k| k.ok()).collect();
    for k in keys {
        let _ = br.maps.nat_mtu.remove(&k);
    }
    let keys: Vec<NatKey> = br.maps.nat_out.keys().filter_map(|k| k.ok()).collect();
    for k in keys {
        let _ = br.maps.nat_out.remove(&k);
    }
    let keys: Vec<NatKey> = br.maps.nat_in.keys().filter_map(|k| k.ok()).collect();
    for k in keys {
        let _ = br.maps.nat_in.remove(&k);
    }
    v6::flush(br);
    let keys: Vec<u32> = br.maps.nat_quota.keys().filter_map(|k| k.ok()).collect();
    for k in keys {
        let _ = br.maps.nat_quota.remove(&k);
    }
    // Port forwards go with the masquerade whose address they forward.
    if let Some(fwd) = br.maps.nat_fwd.as_mut() {
        let keys: Vec<_> = fwd.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            let _ = fwd.remove(&k);
        }
    }
}

/// Give back one mapping of `port`'s quota, as the datapath's `credit`
/// does. Not atomic with the datapath's own updates: a racing new mapping
/// can leave the count off by one, never by more.
pub(crate) fn credit(br: &mut Bridge, port: u32) {
    if let Ok(mut q) = br.maps.nat_quota.get(&port, 0)
        && q.count > 0
    {
        q.count -= 1;
        let _ = br.maps.nat_quota.insert(port, q, 2);
    }
}

/// Remove a mapping's outbound entry `out` if it still belongs to the
/// mapping at outside port `in_key` (a flow mapped again since has
/// another), crediting its owner.
fn retire_out(br: &mut Bridge, out: &NatKey, in_key: &NatKey) {
    if let Ok(o) = br.maps.nat_out.get(out, 0)
        && o.addr == in_key.local_addr
        && o.port == in_key.local_port
        && br.maps.nat_out.remove(out).is_ok()
    {
        credit(br, o.owner);
    }
}

/// Stop masquerading through whatever uplink `br` uses; its name if any.
pub async fn detach_from(net: &Net, br: &mut Bridge) -> Result<Option<String>> {
    let cfg = br.maps.nat_config()?;
    if cfg.nat_ifindex == 0 && cfg.flags & NAT_F_RECORD == 0 {
        return Ok(None);
    }
    let progs = Programs::read();
    let link = match cfg.nat_ifindex {
        0 => None,
        i => net.link_by_index(i).await?,
    };
    release(net, br, link.as_ref(), &progs).await;
    Ok(link.map(|l| l.name))
}

/// Stop masquerading through `link`, under the lock of the bridge that
/// masquerades through it. Returns that bridge's name, or None if no
/// bridge masquerades through `link`.
pub async fn detach(net: &Net, link: &Link) -> Result<Option<String>> {
    let Some(br) = bridge_of_uplink(net, link.index).await? else {
        return Ok(None);
    };
    let mut br = br.lock(net).await?;
    // Read again under the lock: another command may have detached it.
    if br.maps.nat_config()?.nat_ifindex != link.index {
        return Ok(None);
    }
    detach_from(net, &mut br).await?;
    Ok(Some(br.name))
}

/// The bridge that masquerades through `ifindex`, if any.
pub async fn bridge_of_uplink(net: &Net, ifindex: u32) -> Result<Option<Bridge>> {
    for b in Bridge::list(net).await? {
        if b.maps.nat_config()?.nat_ifindex == ifindex {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

/// One live mapping as `nat show` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct NatRow {
    pub bridge: String,
    pub protocol: &'static str,
    pub inside: String,
    pub outside: String,
    pub remote: String,
    pub state: String,
    /// Seconds since the last packet either way.
    pub age: f64,
    /// Seconds until it expires if idle.
    pub expires_in: f64,
}

pub(crate) fn proto_name(p: u8) -> &'static str {
    match p {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}

/// Human name of a mapping's state.
pub fn state_name(proto: u8, s: u16) -> String {
    if proto != IPPROTO_TCP {
        return if s & NAT_S_REPLIED != 0 {
            "replied"
        } else {
            "new"
        }
        .into();
    }
    if nat_tcp_closed(s) {
        if s & NAT_S_RST != 0 {
            "reset"
        } else {
            "closed"
        }
    } else if s & (NAT_S_FIN_OUT | NAT_S_FIN_IN) != 0 {
        "closing"
    } else if s & NAT_S_REPLIED != 0 {
        "established"
    } else if s & NAT_S_SYN_OUT != 0 {
        "syn_sent"
    } else {
        "new"
    }
    .into()
}

fn sock(addr_be: u32, port_be: u16, proto: u8) -> String {
    let a = Ipv4Addr::from(u32::from_be(addr_be));
    if proto == IPPROTO_ICMP {
        format!("{a} id {}", u16::from_be(port_be))
    } else {
        format!("{a}:{}", u16::from_be(port_be))
    }
}

/// Live mappings of `br`; expired ones are removed on the way (their
/// ports' quotas credited), and so are outbound entries left without
/// their inbound one: the table never evicts, so nothing else would.
pub fn show(br: &mut Bridge) -> Result<Vec<NatRow>> {
    let cfg = br.maps.nat_config()?;
    let now = sys::monotonic_coarse_ns();
    let entries: Vec<_> = br.maps.nat_in.iter().filter_map(|e| e.ok()).collect();
    let mut rows = Vec::new();
    let mut live_outs = std::collections::HashSet::new();
    for (k, v) in entries {
        let idle = now.saturating_sub(v.last_seen_ns);
        let timeout = cfg.timeout_ns(k.proto, v.state);
        let out = NatKey::new(k.proto, v.addr, v.port, k.remote_addr, k.remote_port);
        if idle > timeout {
            retire_out(br, &out, &k);
            let _ = br.maps.nat_in.remove(&k);
            continue;
        }
        live_outs.insert((
            out.proto,
            out.local_addr,
            out.local_port,
            out.remote_addr,
            out.remote_port,
        ));
        rows.push(NatRow {
            bridge: br.name.clone(),
            protocol: proto_name(k.proto),
            inside: sock(v.addr, v.port, k.proto),
            outside: sock(k.local_addr, k.local_port, k.proto),
            remote: if k.proto == 1 {
                Ipv4Addr::from(u32::from_be(k.remote_addr)).to_string()
            } else {
                sock(k.remote_addr, k.remote_port, k.proto)
            },
            state: state_name(k.proto, v.state),
            age: idle as f64 / 1e9,
            expires_in: (timeout - idle) as f64 / 1e9,
        });
    }
    // An outbound entry whose inbound one is gone (its removal raced
    // ours, or the datapath's) and that the datapath has not met since.
    // New mappings get their inbound entry first, so none of these is
    // being made.
    let outs: Vec<_> = br.maps.nat_out.iter().filter_map(|e| e.ok()).collect();
    for (k, o) in outs {
        let t = (
            k.proto,
            k.local_addr,
            k.local_port,
            k.remote_addr,
            k.remote_port,
        );
        let in_key = NatKey::new(k.proto, o.addr, o.port, k.remote_addr, k.remote_port);
        if !live_outs.contains(&t) && br.maps.nat_in.get(&in_key, 0).is_err() {
            retire_out(br, &k, &in_key);
        }
    }
    rows.extend(v6::show(br, &cfg, now)?);
    rows.sort_by(|a, b| a.inside.cmp(&b.inside).then(a.remote.cmp(&b.remote)));
    Ok(rows)
}

/// NAT counters summed over CPUs.
pub fn counters(br: &Bridge) -> Result<NatStats> {
    let v = br
        .maps
        .nat_stats
        .get(&0, 0)
        .map_err(map_err(names::NAT_STATS))?;
    Ok(sum(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_avoid_the_hosts() {
        assert_eq!(choose_ports(None, (32768, 60999)).unwrap(), (61000, 65535));
        assert_eq!(choose_ports(None, (32768, 65000)).unwrap(), (1024, 32767));
        assert!(choose_ports(None, (1024, 65535)).is_err());
        assert!(choose_ports(Some((40000, 50000)), (32768, 60999)).is_err());
        assert_eq!(
            choose_ports(Some((20000, 30000)), (32768, 60999)).unwrap(),
            (20000, 30000)
        );
        assert!(parse_port_range("10-5").is_err());
        assert!(parse_port_range("0-5").is_err());
        assert_eq!(parse_port_range("61000-65535").unwrap(), (61000, 65535));
        for bad in ["", "61000", "61000-", "-5", "1-65536", "a-b", "1:5"] {
            assert!(
                matches!(parse_port_range(bad), Err(Error::BadPortRange(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("udp=5").unwrap(), (NatTimeout::Udp, 5));
        assert_eq!(
            parse_timeout("tcp_closing=1").unwrap(),
            (NatTimeout::TcpClosing, 1)
        );
        for bad in [
            "udp=0", "bogus=5", "udp", "udp=", "=5", "udp=-1", "UDP=5", "udp=x",
        ] {
            assert!(
                matches!(parse_timeout(bad), Err(Error::BadTimeout(_))),
                "{bad}"
            );
        }
        for t in NatTimeout::ALL {
            let s = format!("{}=7", t.key());
            assert_eq!(parse_timeout(&s).unwrap(), (t, 7));
        }
    }

    #[test]
    fn timeouts_apply_defaults_then_the_last_given() {
        let mut c = NatConfig::default();
        NatTimeout::apply(
            &mut c,
            &[
                (NatTimeout::Udp, 5),
                (NatTimeout::Icmp, 1),
                (NatTimeout::Udp, 6),
            ],
        );
        let s = 1_000_000_000;
        assert_eq!(c.udp_ns, 6 * s);
        assert_eq!(c.icmp_ns, s);
        assert_eq!(c.tcp_established_ns, NAT_TCP_ESTABLISHED_SECS * s);
        assert_eq!(c.tcp_transitory_ns, NAT_TCP_TRANSITORY_SECS * s);
        assert_eq!(c.tcp_closing_ns, NAT_TCP_CLOSING_SECS * s);
        assert_eq!(c.udp_stream_ns, NAT_UDP_STREAM_SECS * s);
    }

    #[test]
    fn state_names() {
        assert_eq!(state_name(6, NAT_S_SYN_OUT), "syn_sent");
        assert_eq!(state_name(6, NAT_S_SYN_OUT | NAT_S_REPLIED), "established");
        assert_eq!(state_name(6, NAT_S_REPLIED | NAT_S_FIN_OUT), "closing");
        assert_eq!(
            state_name(6, NAT_S_REPLIED | NAT_S_FIN_OUT | NAT_S_FIN_IN),
            "closed"
        );
        assert_eq!(state_name(6, NAT_S_RST), "reset");
        assert_eq!(state_name(17, NAT_S_REPLIED), "replied");
    }
}
