//! Masquerade: the uplink whose address guest flows leave with, the NAT
//! table, and the kernel slow path beside the BPF one.
use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
};

use serde::Serialize;
use umlbr_common::{
    NAT_F_ROUTE_MTU, NAT_F_XDP_TX, NAT_ICMP_SECS, NAT_S_FIN_IN, NAT_S_FIN_OUT, NAT_S_REPLIED,
    NAT_S_RST, NAT_S_SYN_OUT, NAT_TCP_CLOSING_SECS, NAT_TCP_ESTABLISHED_SECS,
    NAT_TCP_TRANSITORY_SECS, NAT_UDP_SECS, NAT_UDP_STREAM_SECS, NatConfig, NatKey, NatStats,
};

use crate::{
    bridge::{Bridge, Programs},
    error::{Error, Result},
    link::{Link, Net},
    port, sys,
};

/// `ip_forward` was off before umlbr turned it on (restored on detach).
const NAT_F_FWD_WAS_OFF: u16 = 0x100;

/// Options of `--masquerade`.
#[derive(Clone, Debug, Default)]
pub struct NatOptions {
    /// Source ports to allocate, inclusive; default: above (or below) the
    /// host's ip_local_port_range.
    pub ports: Option<(u16, u16)>,
    /// `KEY=SECONDS` timeouts: tcp_established, tcp_transitory,
    /// tcp_closing, udp, udp_stream, icmp.
    pub timeouts: Vec<(String, u64)>,
}

/// Parse `LO-HI`.
pub fn parse_port_range(s: &str) -> Result<(u16, u16)> {
    let bad = || {
        Error::BadValue(format!(
            "port range {s:?} (expected LO-HI, e.g. 61000-65535)"
        ))
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = a.trim().parse().map_err(|_| bad())?;
    let hi: u16 = b.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// Parse `KEY=SECONDS`.
pub fn parse_timeout(s: &str) -> Result<(String, u64)> {
    let bad = || {
        Error::BadValue(format!(
            "timeout {s:?} (expected KEY=SECONDS, KEY one of tcp_established, \
             tcp_transitory, tcp_closing, udp, udp_stream, icmp)"
        ))
    };
    let (k, v) = s.split_once('=').ok_or_else(bad)?;
    let secs: u64 = v.parse().map_err(|_| bad())?;
    if secs == 0
        || ![
            "tcp_established",
            "tcp_transitory",
            "tcp_closing",
            "udp",
            "udp_stream",
            "icmp",
        ]
        .contains(&k)
    {
        return Err(bad());
    }
    Ok((k.to_string(), secs))
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
    if let Some(r) = requested {
        if overlaps(r) {
            return Err(Error::BadValue(format!(
                "NAT ports {}-{} overlap the host's ip_local_port_range {}-{}",
                r.0, r.1, host.0, host.1
            )));
        }
        return Ok(r);
    }
    if host.1 <= 65535 - 1024 {
        Ok((host.1 + 1, 65535))
    } else if host.0 >= 2048 {
        Ok((1024, host.0 - 1))
    } else {
        Err(Error::BadValue(format!(
            "the host's ip_local_port_range {}-{} leaves no room for NAT ports; give --nat-ports",
            host.0, host.1
        )))
    }
}

fn nft_table(bridge: &str) -> String {
    format!("umlbr_{}", bridge.replace(['-', '.'], "_"))
}

/// The kernel slow path: forwarding on, and a masquerade rule for the
/// guest subnet, for what BPF does not translate (fragments, other
/// protocols).
fn slow_path_on(bridge: &str, subnet: Ipv4Addr, prefix: u8, uplink: &str) -> Result<bool> {
    let was_off = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .map(|s| s.trim() == "0")
        .unwrap_or(true);
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| Error::io("turning on /proc/sys/net/ipv4/ip_forward", e))?;
    let t = nft_table(bridge);
    let rules = format!(
        "table ip {t} {{\n chain postrouting {{\n  type nat hook postrouting priority srcnat; policy accept;\n  ip saddr {subnet}/{prefix} oifname \"{uplink}\" masquerade\n }}\n}}\n"
    );
    nft(&rules).map_err(|e| Error::io(format!("adding nftables table {t}"), e))?;
    Ok(was_off)
}

fn slow_path_off(bridge: &str, restore_fwd_off: bool) {
    let _ = nft(&format!("delete table ip {}\n", nft_table(bridge)));
    if restore_fwd_off {
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "0");
    }
}

fn nft(script: &str) -> std::io::Result<()> {
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

/// Masquerade the bridge's guests through `iface`.
pub async fn attach(
    net: &Net,
    iface: &str,
    bridge: Option<&str>,
    opts: &NatOptions,
) -> Result<String> {
    let link = net.require(iface).await?;
    let progs = Programs::read();
    port::check_free(net, &link, &progs).await?;
    let mut br = Bridge::open_or_only(net, bridge).await?;
    let old = br.maps.nat_config()?;
    if old.nat_ifindex != 0 {
        return Err(Error::UplinkExists {
            bridge: br.name.clone(),
            uplink: net
                .link_by_index(old.nat_ifindex)
                .await?
                .map(|l| l.name)
                .unwrap_or_default(),
        });
    }
    let (nat_addr, _) = *net
        .ipv4_addrs(link.index)
        .await?
        .first()
        .ok_or_else(|| Error::NoAddress(iface.into()))?;
    let (gw, prefix) = *net
        .ipv4_addrs(br.host.index)
        .await?
        .first()
        .ok_or_else(|| Error::NoAddress(format!("{} (give `up --address`)", br.name)))?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    let subnet = Ipv4Addr::from(u32::from(gw) & mask);
    let (port_lo, port_hi) = choose_ports(opts.ports, local_port_range())?;
    let gw_mac = br
        .host
        .mac
        .ok_or_else(|| Error::NotEthernet(br.name.clone()))?;
    let secs = |k: &str, d: u64| {
        opts.timeouts
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| *v)
            .unwrap_or(d)
            * 1_000_000_000
    };
    let xdp_tx = link.kind.as_deref() != Some("veth");
    let mtu = link.mtu;
    let route_mtus = net.route_mtus_via(link.index).await?;
    let mut cfg = NatConfig {
        nat_ifindex: link.index,
        nat_addr: u32::from(nat_addr).to_be(),
        host_ifindex: br.host.index,
        subnet: (u32::from(subnet)).to_be(),
        mask: mask.to_be(),
        port_lo,
        port_hi,
        gw_mac,
        flags: if xdp_tx { NAT_F_XDP_TX } else { 0 }
            | if route_mtus.is_empty() {
                0
            } else {
                NAT_F_ROUTE_MTU
            },
        tcp_established_ns: secs("tcp_established", NAT_TCP_ESTABLISHED_SECS),
        tcp_transitory_ns: secs("tcp_transitory", NAT_TCP_TRANSITORY_SECS),
        tcp_closing_ns: secs("tcp_closing", NAT_TCP_CLOSING_SECS),
        udp_ns: secs("udp", NAT_UDP_SECS),
        udp_stream_ns: secs("udp_stream", NAT_UDP_STREAM_SECS),
        icmp_ns: secs("icmp", NAT_ICMP_SECS),
        mtu,
        _pad2: 0,
    };
    let tc_id = br
        .tc_prog_id(&progs)
        .ok_or_else(|| Error::Load(format!("bridge {} has no TC program", br.name)))?;
    let was_off = slow_path_on(&br.name, subnet, prefix, iface)?;
    if was_off {
        cfg.flags |= NAT_F_FWD_WAS_OFF;
    }
    let res = async {
        if xdp_tx {
            br.maps
                .ports
                .insert(link.index, link.index, None, 0)
                .map_err(|e| Error::Load(format!("adding {iface} to the devmap: {e}")))?;
        }
        for (dst, len, mtu) in &route_mtus {
            let key = aya::maps::lpm_trie::Key::new(*len as u32, u32::from(*dst).to_be());
            br.maps
                .nat_mtu
                .insert(&key, *mtu, 0)
                .map_err(|e| Error::Map {
                    map: umlbr_common::names::NAT_MTU,
                    err: e,
                })?;
        }
        br.maps.set_nat_config(cfg)?;
        // As for a veth uplink port: TC alone is cheaper than veth's XDP.
        let xdp = xdp_tx.then_some(br.xdp_prog_id);
        port::hook(net, &link, xdp, tc_id).await?;
        Ok::<(), Error>(())
    }
    .await;
    if let Err(e) = res {
        release(net, &mut br, &link, &progs).await;
        return Err(e);
    }
    Ok(br.name.clone())
}

/// Undo `attach`: hooks, devmap entry, config, table, slow path.
async fn release(net: &Net, br: &mut Bridge, link: &Link, progs: &Programs) {
    let cfg = br.maps.nat_config().unwrap_or_default();
    if let Ok(Some(now)) = net.link_by_index(link.index).await {
        let _ = port::unhook(net, &now, progs).await;
    }
    let _ = br.maps.ports.remove(link.index);
    let _ = br.maps.set_nat_config(NatConfig::default());
    flush(br);
    slow_path_off(&br.name, cfg.flags & NAT_F_FWD_WAS_OFF != 0);
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
}

/// Stop masquerading through whatever uplink `br` uses; its name if any.
pub async fn detach_from(net: &Net, br: &mut Bridge) -> Result<Option<String>> {
    let cfg = br.maps.nat_config()?;
    if cfg.nat_ifindex == 0 {
        return Ok(None);
    }
    let progs = Programs::read();
    let link = net.link_by_index(cfg.nat_ifindex).await?;
    match link {
        Some(l) => {
            release(net, br, &l, &progs).await;
            Ok(Some(l.name))
        }
        None => {
            let _ = br.maps.set_nat_config(NatConfig::default());
            flush(br);
            slow_path_off(&br.name, cfg.flags & NAT_F_FWD_WAS_OFF != 0);
            Ok(None)
        }
    }
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

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        _ => "other",
    }
}

/// Human name of a mapping's state.
pub fn state_name(proto: u8, s: u16) -> String {
    if proto != 6 {
        return if s & NAT_S_REPLIED != 0 {
            "replied"
        } else {
            "new"
        }
        .into();
    }
    if s & NAT_S_RST != 0 {
        "reset"
    } else if s & (NAT_S_FIN_OUT | NAT_S_FIN_IN) == NAT_S_FIN_OUT | NAT_S_FIN_IN {
        "closed"
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
    if proto == 1 {
        format!("{a} id {}", u16::from_be(port_be))
    } else {
        format!("{a}:{}", u16::from_be(port_be))
    }
}

/// Live mappings of `br`; expired ones are removed on the way.
pub fn show(br: &mut Bridge) -> Result<Vec<NatRow>> {
    let cfg = br.maps.nat_config()?;
    let now = sys::monotonic_coarse_ns();
    let entries: Vec<_> = br.maps.nat_in.iter().filter_map(|e| e.ok()).collect();
    let mut rows = Vec::new();
    for (k, v) in entries {
        let idle = now.saturating_sub(v.last_seen_ns);
        let timeout = cfg.timeout_ns(k.proto, v.state);
        if idle > timeout {
            let out = NatKey {
                proto: k.proto,
                _pad: 0,
                _pad2: 0,
                local_addr: v.addr,
                remote_addr: k.remote_addr,
                local_port: v.port,
                remote_port: k.remote_port,
            };
            let _ = br.maps.nat_out.remove(&out);
            let _ = br.maps.nat_in.remove(&k);
            continue;
        }
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
    rows.sort_by(|a, b| a.inside.cmp(&b.inside).then(a.remote.cmp(&b.remote)));
    Ok(rows)
}

/// NAT counters summed over CPUs.
pub fn counters(br: &Bridge) -> Result<NatStats> {
    let v = br.maps.nat_stats.get(&0, 0).map_err(|source| Error::Map {
        map: umlbr_common::names::NAT_STATS,
        err: source,
    })?;
    let mut t = NatStats::default();
    for s in v.iter() {
        t.out_xdp += s.out_xdp;
        t.out_tc += s.out_tc;
        t.in_xdp += s.in_xdp;
        t.in_tc += s.in_tc;
        t.icmp_errors += s.icmp_errors;
        t.in_miss += s.in_miss;
        t.allocs += s.allocs;
        t.alloc_fail += s.alloc_fail;
        t.slow_path += s.slow_path;
        t.expired += s.expired;
    }
    Ok(t)
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
    }

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("udp=5").unwrap(), ("udp".into(), 5));
        assert!(parse_timeout("udp=0").is_err());
        assert!(parse_timeout("bogus=5").is_err());
        assert!(parse_timeout("udp").is_err());
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
