//! The masquerade's IPv6 (issue 18): the uplink's global IPv6 address
//! guests' IPv6 leaves with, the guests' IPv6 prefixes (the bridge's own
//! addresses), and the kernel path's `ip6` nftables table beside the
//! IPv4 one. Guest IPv6 is never forwarded untranslated: from the
//! guests' prefixes it is masqueraded behind the uplink's address; from
//! any other source, or when the uplink has no global IPv6 address, it
//! is dropped (counted in the table's `forward` chain).
use std::net::{IpAddr, Ipv6Addr};

use umlbr_common::{
    IPPROTO_TCP, IPPROTO_UDP, NAT6_PREFIXES, Nat6Config, Nat6Key, Nat6Stats, NatConfig, names,
};

use super::{NatRow, credit, state_name};
use crate::{
    bridge::Bridge,
    error::Result,
    link::{Link, Net},
    object::{map_err, sum},
};

/// ICMPv6: echo mappings use the identifier as their port.
const IPPROTO_ICMPV6: u8 = 58;

/// What `attach --masquerade` found for IPv6.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan6 {
    /// The uplink's first global (not link-local) IPv6 address, if any.
    pub uplink_addr: Option<Ipv6Addr>,
    /// The bridge's IPv6 prefixes (network address, length): the guests'.
    pub prefixes: Vec<(Ipv6Addr, u8)>,
}

/// Whether `a` is an address a router forwards from: not link-local
/// (fe80::/10), loopback, multicast or unspecified.
fn routable(a: &Ipv6Addr) -> bool {
    !(a.is_loopback()
        || a.is_multicast()
        || a.is_unspecified()
        || a.segments()[0] & 0xffc0 == 0xfe80)
}

/// The network of `a`/`len`.
fn network(a: Ipv6Addr, len: u8) -> Ipv6Addr {
    let mask = u128::MAX
        .checked_shl(128 - len.min(128) as u32)
        .unwrap_or(0);
    Ipv6Addr::from(u128::from(a) & mask)
}

/// Read the uplink's address and the bridge's prefixes (host interface
/// `host`, uplink `link`), as `nat::plan` reads their IPv4 ones.
pub async fn plan(net: &Net, host: u32, link: &Link) -> Result<Plan6> {
    let v6 = |v: Vec<(IpAddr, u8)>| -> Vec<(Ipv6Addr, u8)> {
        v.into_iter()
            .filter_map(|(a, p)| match a {
                IpAddr::V6(a) if routable(&a) => Some((a, p)),
                _ => None,
            })
            .collect()
    };
    let uplink_addr = v6(net.ip_addrs(link.index).await?).first().map(|(a, _)| *a);
    let mut prefixes: Vec<(Ipv6Addr, u8)> = v6(net.ip_addrs(host).await?)
        .into_iter()
        .map(|(a, p)| (network(a, p), p))
        .collect();
    prefixes.sort();
    prefixes.dedup();
    Ok(Plan6 {
        uplink_addr,
        prefixes,
    })
}

/// The `ip6` table of the kernel path, `t` (the IPv4 table's name), as an
/// nft script that replaces it whole (for the same transaction as the
/// IPv4 one): guests' IPv6 from their prefixes out of `uplink`
/// masqueraded; from other sources, or out of an uplink without a global
/// IPv6 address, dropped and counted. With a quota, as for IPv4 per source
/// address.
pub fn table(t: &str, bridge: &str, uplink: &str, p: &Plan6, max_per_guest: u32) -> String {
    let set = p
        .prefixes
        .iter()
        .map(|(a, l)| format!("{a}/{l}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (masq, bad_source) = if set.is_empty() {
        // No guest prefix: no guest IPv6 is forwarded at all.
        (
            String::new(),
            format!("  iifname \"{bridge}\" counter drop\n"),
        )
    } else {
        (
            format!("  ip6 saddr {{ {set} }} oifname \"{uplink}\" masquerade\n"),
            format!("  iifname \"{bridge}\" ip6 saddr != {{ {set} }} counter drop\n"),
        )
    };
    let no_addr = if p.uplink_addr.is_none() {
        format!("  iifname \"{bridge}\" oifname \"{uplink}\" counter drop\n")
    } else {
        String::new()
    };
    let (quota_set, quota_rule) = if max_per_guest > 0 {
        (
            " set guest_flows {\n  type ipv6_addr; size 65535; flags dynamic;\n }\n".to_string(),
            format!(
                "  iifname \"{bridge}\" ct state new add @guest_flows {{ ip6 saddr ct count over {max_per_guest} }} counter drop\n"
            ),
        )
    } else {
        (String::new(), String::new())
    };
    format!(
        "table ip6 {t}\ndelete table ip6 {t}\ntable ip6 {t} {{\n{quota_set} chain postrouting {{\n  type nat hook postrouting priority srcnat; policy accept;\n{masq} }}\n \
         chain forward {{\n  type filter hook forward priority filter; policy accept;\n{bad_source}{no_addr}{quota_rule} }}\n}}\n"
    )
}

/// Make the bridge's host interface an IPv6 router: the datapath's route
/// lookup (`bpf_fib_lookup`) forwards IPv6 only from an interface with
/// `forwarding` on. Only the bridge's own interface: turning on
/// `net.ipv6.conf.all.forwarding` would stop the host taking router
/// advertisements on its other interfaces (the uplink's SLAAC address
/// among them). The kernel's own forwarding of what BPF does not
/// translate needs `all.forwarding`, which is the administrator's to set.
/// A host without IPv6 has nothing to turn on.
pub fn forwarding_on(bridge: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{bridge}/forwarding");
    match std::fs::write(&path, "1") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(|e| crate::error::Error::io(format!("turning on {path}"), e)),
    }
}

/// The nft script that deletes the `ip6` table `t` (if it is there).
pub fn delete(t: &str) -> String {
    format!("table ip6 {t}\ndelete table ip6 {t}\n")
}

/// An address in the datapath's form: four words as in the packet.
fn words(a: Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

fn addr(w: [u32; 4]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, x) in w.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&x.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// The datapath's IPv6 settings for `p`: the uplink's address (zero:
/// none) and the first NAT6_PREFIXES guest prefixes (more are the
/// kernel's path: its ip6 table masquerades them all).
pub fn config(p: &Plan6) -> Nat6Config {
    let mut c = Nat6Config {
        addr: p.uplink_addr.map(words).unwrap_or_default(),
        ..Default::default()
    };
    for (i, (a, len)) in p.prefixes.iter().take(NAT6_PREFIXES).enumerate() {
        let mask = u128::MAX.checked_shl(128 - *len as u32).unwrap_or(0);
        c.prefix[i] = words(*a);
        c.mask[i] = words(Ipv6Addr::from(mask));
        c.nr_prefixes += 1;
    }
    c
}

fn proto_name(p: u8) -> &'static str {
    match p {
        IPPROTO_ICMPV6 => "icmp6",
        p => super::proto_name(p),
    }
}

fn sock(a: [u32; 4], port_be: u16, proto: u8) -> String {
    if proto == IPPROTO_ICMPV6 {
        format!("{} id {}", addr(a), u16::from_be(port_be))
    } else {
        format!("[{}]:{}", addr(a), u16::from_be(port_be))
    }
}

/// Live IPv6 mappings of `br` (`nat::show`'s IPv6 half): expired ones are
/// removed on the way, their ports' quotas credited, and so are outbound
/// entries left without their inbound one.
pub fn show(br: &mut Bridge, cfg: &NatConfig, now: u64) -> Result<Vec<NatRow>> {
    let c6 = br.maps.nat6_config()?;
    let entries: Vec<_> = br.maps.nat6_in.iter().filter_map(|e| e.ok()).collect();
    let mut rows = Vec::new();
    let mut live = std::collections::HashSet::new();
    for (k, v) in entries {
        let idle = now.saturating_sub(v.st.last_seen_ns);
        let timeout = cfg.timeout_ns(proto_of(k.proto), v.st.state);
        let out = Nat6Key::new(k.proto, v.addr, v.st.port, k.remote_addr, k.remote_port);
        if idle > timeout {
            retire(br, &out, k.local_port);
            let _ = br.maps.nat6_in.remove(&k);
            continue;
        }
        live.insert(out);
        rows.push(NatRow {
            bridge: br.name.clone(),
            protocol: proto_name(k.proto),
            inside: sock(v.addr, v.st.port, k.proto),
            outside: sock(k.local_addr, k.local_port, k.proto),
            remote: if k.proto == IPPROTO_ICMPV6 {
                addr(k.remote_addr).to_string()
            } else {
                sock(k.remote_addr, k.remote_port, k.proto)
            },
            state: state_name(k.proto, v.st.state),
            age: idle as f64 / 1e9,
            expires_in: (timeout - idle) as f64 / 1e9,
        });
    }
    let outs: Vec<_> = br.maps.nat6_out.iter().filter_map(|e| e.ok()).collect();
    for (k, o) in outs {
        let in_key = Nat6Key::new(k.proto, c6.addr, o.port, k.remote_addr, k.remote_port);
        if !live.contains(&k) && br.maps.nat6_in.get(&in_key, 0).is_err() {
            retire(br, &k, o.port);
        }
    }
    Ok(rows)
}

/// The protocol whose timeouts an IPv6 mapping of `proto` has: ICMPv6
/// echo times out as ICMP's.
fn proto_of(proto: u8) -> u8 {
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => proto,
        _ => umlbr_common::IPPROTO_ICMP,
    }
}

/// Remove the outbound entry `out` if it still belongs to the mapping at
/// outside port `port`, crediting its owner.
fn retire(br: &mut Bridge, out: &Nat6Key, port: u16) {
    if let Ok(o) = br.maps.nat6_out.get(out, 0)
        && o.port == port
        && br.maps.nat6_out.remove(out).is_ok()
    {
        credit(br, o.owner);
    }
}

/// Every IPv6 mapping and setting gone (the masquerade's release).
pub fn flush(br: &mut Bridge) {
    let keys: Vec<Nat6Key> = br.maps.nat6_out.keys().filter_map(|k| k.ok()).collect();
    for k in keys {
        let _ = br.maps.nat6_out.remove(&k);
    }
    let keys: Vec<Nat6Key> = br.maps.nat6_in.keys().filter_map(|k| k.ok()).collect();
    for k in keys {
        let _ = br.maps.nat6_in.remove(&k);
    }
    let _ = br.maps.set_nat6_config(Nat6Config::default());
}

/// IPv6 NAT counters summed over CPUs.
pub fn counters(br: &Bridge) -> Result<Nat6Stats> {
    let v = br
        .maps
        .nat6_stats
        .get(&0, 0)
        .map_err(map_err(names::NAT6_STATS))?;
    Ok(sum(&v))
}

/// The uplink's IPv6 address the datapath masquerades behind, if any.
pub fn address(br: &Bridge) -> Result<Option<Ipv6Addr>> {
    let a = br.maps.nat6_config()?.addr;
    Ok((a != [0; 4]).then(|| addr(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_holds_address_and_prefixes_as_the_packet_has_them() {
        let p = Plan6 {
            uplink_addr: Some("2001:db8::1".parse().unwrap()),
            prefixes: vec![("fd00:2::".parse().unwrap(), 64)],
        };
        let c = config(&p);
        assert_eq!(addr(c.addr), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(c.nr_prefixes, 1);
        assert_eq!(c.addr[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(c.mask[0], [u32::MAX, u32::MAX, 0, 0]);
        assert_eq!(config(&Plan6::default()).addr, [0; 4]);
    }

    #[test]
    fn networks_and_routable_addresses() {
        assert_eq!(
            network("fd00:2::1".parse().unwrap(), 64),
            "fd00:2::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            network("fd00:2::1".parse().unwrap(), 0),
            Ipv6Addr::UNSPECIFIED
        );
        assert!(!routable(&"fe80::1".parse().unwrap()));
        assert!(!routable(&"ff02::1".parse().unwrap()));
        assert!(routable(&"2001:db8::1".parse().unwrap()));
        assert!(routable(&"fd00::1".parse().unwrap()));
    }

    #[test]
    fn table_drops_what_it_cannot_masquerade() {
        let p = Plan6 {
            uplink_addr: None,
            prefixes: vec![],
        };
        let s = table("umlbr_br0", "br0", "eth0", &p, 0);
        assert!(!s.contains("masquerade"), "{s}");
        assert!(s.contains("iifname \"br0\" counter drop"), "{s}");
        let p = Plan6 {
            uplink_addr: Some("2001:db8::1".parse().unwrap()),
            prefixes: vec![("fd00:2::".parse().unwrap(), 64)],
        };
        let s = table("umlbr_br0", "br0", "eth0", &p, 10);
        assert!(
            s.contains("ip6 saddr { fd00:2::/64 } oifname \"eth0\" masquerade"),
            "{s}"
        );
        assert!(
            s.contains("ip6 saddr != { fd00:2::/64 } counter drop"),
            "{s}"
        );
        assert!(!s.contains("oifname \"eth0\" counter drop"), "{s}");
        assert!(s.contains("ct count over 10"), "{s}");
    }
}
