//! Port forwards: connections from the LAN to the masquerade uplink's
//! address on a port reach a guest's address and port (`umlbr forward
//! add`), as Incus network forwards and libvirt port forwards do.
//!
//! The datapath maps a forwarded flow from its first packet like a
//! guest's own flow (`UMLBR_NAT_FWD`, see umlbr-ebpf/src/nat/forward.rs).
//! The kernel's path gets the same forward as an nftables dnat rule in the
//! bridge's table (chain `fwd_pre`), for what BPF leaves to it, and for
//! guests that reach a forward through the uplink's address (hairpin):
//! those packets go to the host, which translates both addresses (dnat to
//! the target, masquerade behind the bridge's address, chain `fwd_post`)
//! so that the target's replies come back through the host.
use std::{fmt, net::Ipv4Addr, str::FromStr};

use serde::{Deserialize, Serialize};
use umlbr_common::{
    FWD_K_PORT, FWD_K_TARGET, FwdKey, FwdVal, IPPROTO_TCP, IPPROTO_UDP, NAT_F_FWD, NatKey, names,
};

use crate::{
    bridge::Bridge,
    error::{Error, Result},
    link::Net,
    nat::{nft, nft_table},
    object::map_err,
};

/// The protocols a forward may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }

    fn from_number(n: u8) -> Option<Proto> {
        match n {
            IPPROTO_TCP => Some(Proto::Tcp),
            IPPROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = Error;
    fn from_str(s: &str) -> Result<Proto> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(Error::BadForward(format!(
                "{s:?}: protocol must be tcp or udp"
            ))),
        }
    }
}

/// One forward: `proto` `port` of the uplink's address to `to_addr:to_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Forward {
    pub proto: Proto,
    pub port: u16,
    pub to_addr: Ipv4Addr,
    pub to_port: u16,
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {}:{}",
            self.proto, self.port, self.to_addr, self.to_port
        )
    }
}

/// Parse a port, 1-65535.
pub fn parse_port(s: &str) -> Result<u16> {
    match s.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Error::BadForward(format!("{s:?}: a port is 1-65535"))),
    }
}

/// Parse `ADDR:PORT` (IPv4).
pub fn parse_target(s: &str) -> Result<(Ipv4Addr, u16)> {
    let bad = || Error::BadForward(format!("{s:?}: expected GUEST_ADDR:GUEST_PORT (IPv4)"));
    let (a, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
    Ok((addr, parse_port(p)?))
}

fn port_key(proto: Proto, port: u16) -> FwdKey {
    FwdKey {
        proto: proto.number(),
        kind: FWD_K_PORT,
        port: port.to_be(),
        addr: 0,
    }
}

fn target_key(proto: Proto, addr: Ipv4Addr, port: u16) -> FwdKey {
    FwdKey {
        proto: proto.number(),
        kind: FWD_K_TARGET,
        port: port.to_be(),
        addr: u32::from(addr).to_be(),
    }
}

type FwdMap = aya::maps::HashMap<aya::maps::MapData, FwdKey, FwdVal>;

fn map_of(br: &mut Bridge) -> Result<&mut FwdMap> {
    let name = br.name.clone();
    br.maps
        .nat_fwd
        .as_mut()
        .ok_or(Error::NoForwardMap { bridge: name })
}

/// Every forward of `br`, with its hit counter, in order.
pub fn list(br: &Bridge) -> Vec<(Forward, u64)> {
    let Some(m) = br.maps.nat_fwd.as_ref() else {
        return Vec::new();
    };
    let mut v: Vec<(Forward, u64)> = m
        .iter()
        .filter_map(|e| e.ok())
        .filter(|(k, _)| k.kind == FWD_K_PORT)
        .filter_map(|(k, v)| {
            Some((
                Forward {
                    proto: Proto::from_number(k.proto)?,
                    port: u16::from_be(k.port),
                    to_addr: Ipv4Addr::from(u32::from_be(v.addr)),
                    to_port: u16::from_be(v.port),
                },
                v.hits,
            ))
        })
        .collect();
    v.sort();
    v
}

/// Check `f` against `br`'s masquerade: there is one, the target is a
/// guest address of the subnet (not its network, broadcast or the
/// bridge's own address), and the port is outside the masquerade's
/// port range (those ports are the allocator's: a forward there would
/// take the replies of guests' flows).
async fn check(net: &Net, br: &Bridge, f: &Forward) -> Result<()> {
    let cfg = br.maps.nat_config()?;
    let bridge = br.name.clone();
    if cfg.nat_ifindex == 0 {
        return Err(Error::ForwardNeedsMasquerade { bridge });
    }
    let mask = u32::from_be(cfg.mask);
    let subnet = u32::from_be(cfg.subnet);
    let a = u32::from(f.to_addr);
    let own: Vec<Ipv4Addr> = net
        .ipv4_addrs(br.host.index)
        .await?
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    if a & mask != subnet || a == subnet || a == subnet | !mask || own.contains(&f.to_addr) {
        let prefix = mask.count_ones();
        return Err(Error::ForwardOutsideSubnet {
            bridge,
            addr: f.to_addr,
            subnet: format!("{}/{prefix}", Ipv4Addr::from(subnet)),
        });
    }
    if (cfg.port_lo..=cfg.port_hi).contains(&f.port) {
        return Err(Error::ForwardInNatPorts {
            bridge,
            port: f.port,
            lo: cfg.port_lo,
            hi: cfg.port_hi,
        });
    }
    Ok(())
}

/// Add forward `f` to bridge `bridge` (the only one if None); returns the
/// bridge's name. Refused if the port is already forwarded.
pub async fn add(net: &Net, bridge: Option<&str>, f: Forward) -> Result<String> {
    let br = Bridge::open_or_only(net, bridge).await?;
    let mut br = br.lock(net).await?;
    check(net, &br, &f).await?;
    let name = br.name.clone();
    let m = map_of(&mut br)?;
    if let Ok(v) = m.get(&port_key(f.proto, f.port), 0) {
        return Err(Error::ForwardExists {
            bridge: name,
            proto: f.proto.to_string(),
            port: f.port,
            to: format!(
                "{}:{}",
                Ipv4Addr::from(u32::from_be(v.addr)),
                u16::from_be(v.port)
            ),
        });
    }
    let val = FwdVal {
        addr: u32::from(f.to_addr).to_be(),
        port: f.to_port.to_be(),
        _pad: 0,
        hits: 0,
    };
    let target = FwdVal {
        port: f.port.to_be(),
        ..Default::default()
    };
    // The target first: the datapath never maps a forward whose target
    // the masquerade could still map on its own.
    m.insert(target_key(f.proto, f.to_addr, f.to_port), target, 0)
        .map_err(map_err(names::NAT_FWD))?;
    // BPF_NOEXIST: checked above under the lock, so only a full map fails.
    m.insert(port_key(f.proto, f.port), val, 1)
        .map_err(map_err(names::NAT_FWD))?;
    if let Err(e) = sync(&mut br) {
        // Taken back: a forward is in the map only with its dnat rule.
        let m = map_of(&mut br)?;
        let _ = m.remove(&port_key(f.proto, f.port));
        let shared = list(&br)
            .iter()
            .any(|(o, _)| o.proto == f.proto && o.to_addr == f.to_addr && o.to_port == f.to_port);
        if !shared {
            let _ = map_of(&mut br)?.remove(&target_key(f.proto, f.to_addr, f.to_port));
        }
        return Err(e);
    }
    Ok(name)
}

/// Remove the forward of `proto` `port` from bridge `bridge`, and the
/// flows it mapped; returns the bridge's name.
pub async fn del(net: &Net, bridge: Option<&str>, proto: Proto, port: u16) -> Result<String> {
    let br = Bridge::open_or_only(net, bridge).await?;
    let mut br = br.lock(net).await?;
    let name = br.name.clone();
    let m = map_of(&mut br)?;
    let Ok(v) = m.get(&port_key(proto, port), 0) else {
        return Err(Error::NoSuchForward {
            bridge: name,
            proto: proto.to_string(),
            port,
        });
    };
    m.remove(&port_key(proto, port))
        .map_err(map_err(names::NAT_FWD))?;
    let (to_addr, to_port) = (Ipv4Addr::from(u32::from_be(v.addr)), u16::from_be(v.port));
    // Another forward to the same target keeps it marked.
    let shared = list(&br)
        .iter()
        .any(|(f, _)| f.proto == proto && f.to_addr == to_addr && f.to_port == to_port);
    if !shared {
        let _ = map_of(&mut br)?.remove(&target_key(proto, to_addr, to_port));
    }
    sync(&mut br)?;
    end_flows(&mut br, proto, port);
    Ok(name)
}

/// Remove the mappings the forward of `proto` `port` made: their inbound
/// entries (the uplink's port is the forward's: the masquerade's
/// allocator never hands it out) and outbound ones, crediting their
/// owners. What a LAN host sends on them afterwards is the host's.
fn end_flows(br: &mut Bridge, proto: Proto, port: u16) {
    let cfg = br.maps.nat_config().unwrap_or_default();
    let ins: Vec<_> = br
        .maps
        .nat_in
        .iter()
        .filter_map(|e| e.ok())
        .filter(|(k, _)| {
            k.proto == proto.number()
                && k.local_addr == cfg.nat_addr
                && k.local_port == port.to_be()
        })
        .collect();
    for (k, v) in ins {
        let out = NatKey::new(k.proto, v.addr, v.port, k.remote_addr, k.remote_port);
        if let Ok(o) = br.maps.nat_out.get(&out, 0)
            && o.port == k.local_port
            && br.maps.nat_out.remove(&out).is_ok()
            && let Ok(mut q) = br.maps.nat_quota.get(&o.owner, 0)
            && q.count > 0
        {
            q.count -= 1;
            let _ = br.maps.nat_quota.insert(o.owner, q, 2);
        }
        let _ = br.maps.nat_in.remove(&k);
    }
}

/// Make the kernel's side and the datapath's flag match the map: the
/// nftables chains `fwd_pre` (a dnat rule per forward) and `fwd_post`
/// (hairpin: guests' packets dnat'ed back onto the bridge leave behind
/// the bridge's address) in the bridge's table, made whole in one
/// transaction; `NAT_F_FWD` on while there are forwards.
pub fn sync(br: &mut Bridge) -> Result<()> {
    let mut cfg = br.maps.nat_config()?;
    let forwards = list(br);
    if cfg.nat_ifindex == 0 {
        return Ok(());
    }
    let t = nft_table(&br.name);
    let bridge = &br.name;
    let nat_addr = Ipv4Addr::from(u32::from_be(cfg.nat_addr));
    let subnet = Ipv4Addr::from(u32::from_be(cfg.subnet));
    let prefix = u32::from_be(cfg.mask).count_ones();
    let mut s = format!(
        "table ip {t} {{\n chain fwd_pre {{\n  type nat hook prerouting priority dstnat; policy accept;\n }}\n \
         chain fwd_post {{\n  type nat hook postrouting priority srcnat; policy accept;\n }}\n}}\n\
         flush chain ip {t} fwd_pre\nflush chain ip {t} fwd_post\n"
    );
    for (f, _) in &forwards {
        s.push_str(&format!(
            "add rule ip {t} fwd_pre ip daddr {nat_addr} {} dport {} dnat to {}:{}\n",
            f.proto, f.port, f.to_addr, f.to_port
        ));
    }
    if !forwards.is_empty() {
        s.push_str(&format!(
            "add rule ip {t} fwd_post oifname \"{bridge}\" ip saddr {subnet}/{prefix} ct status dnat masquerade\n"
        ));
    }
    nft(&s).map_err(|e| Error::io(format!("updating the forwards of nftables table {t}"), e))?;
    if forwards.is_empty() {
        cfg.flags &= !NAT_F_FWD;
    } else {
        cfg.flags |= NAT_F_FWD;
    }
    br.maps.set_nat_config(cfg)
}

/// One forward as `forward show` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct ForwardRow {
    pub bridge: String,
    pub protocol: Proto,
    /// The uplink's address and the forwarded port.
    pub outside: String,
    pub port: u16,
    /// The guest's address and port.
    pub inside: String,
    /// Flows the datapath mapped through it since it was added.
    pub hits: u64,
    /// Its live mappings now.
    pub flows: usize,
}

/// The forwards of `br` as rows, with their live mappings.
pub fn show(br: &Bridge) -> Result<Vec<ForwardRow>> {
    let cfg = br.maps.nat_config()?;
    let nat_addr = Ipv4Addr::from(u32::from_be(cfg.nat_addr));
    let now = crate::sys::monotonic_coarse_ns();
    let ins: Vec<(NatKey, umlbr_common::NatIn)> =
        br.maps.nat_in.iter().filter_map(|e| e.ok()).collect();
    Ok(list(br)
        .into_iter()
        .map(|(f, hits)| {
            let flows = ins
                .iter()
                .filter(|(k, v)| {
                    k.proto == f.proto.number()
                        && k.local_addr == cfg.nat_addr
                        && k.local_port == f.port.to_be()
                        && now.saturating_sub(v.last_seen_ns) <= cfg.timeout_ns(k.proto, v.state)
                })
                .count();
            ForwardRow {
                bridge: br.name.clone(),
                protocol: f.proto,
                outside: format!("{nat_addr}:{}", f.port),
                port: f.port,
                inside: format!("{}:{}", f.to_addr, f.to_port),
                hits,
                flows,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!("tcp".parse::<Proto>().unwrap(), Proto::Tcp);
        assert_eq!("udp".parse::<Proto>().unwrap(), Proto::Udp);
        for bad in ["TCP", "icmp", ""] {
            assert!(bad.parse::<Proto>().is_err(), "{bad}");
        }
        assert_eq!(
            parse_target("192.168.2.10:80").unwrap(),
            (Ipv4Addr::new(192, 168, 2, 10), 80)
        );
        for bad in [
            "192.168.2.10",
            "192.168.2.10:0",
            "x:80",
            "192.168.2.10:70000",
            "[::1]:80",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert!(parse_port("0").is_err());
        assert_eq!(parse_port("65535").unwrap(), 65535);
    }
}
