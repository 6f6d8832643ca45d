//! The masquerade's IPv6 (issue 18): the uplink's global IPv6 address
//! guests' IPv6 leaves with, the guests' IPv6 prefixes (the bridge's own
//! addresses), and the kernel path's `ip6` nftables table beside the
//! IPv4 one. Guest IPv6 is never forwarded untranslated: from the
//! guests' prefixes it is masqueraded behind the uplink's address; from
//! any other source, or when the uplink has no global IPv6 address, it
//! is dropped (counted in the table's `forward` chain).
use std::net::{IpAddr, Ipv6Addr};

use crate::{
    error::Result,
    link::{Link, Net},
};

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

/// The nft script that deletes the `ip6` table `t` (if it is there).
pub fn delete(t: &str) -> String {
    format!("table ip6 {t}\ndelete table ip6 {t}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

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
