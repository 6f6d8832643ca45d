//! Network interfaces over rtnetlink (and tun's flags in sysfs), and the
//! addresses umlbr is given: MACs and CIDRs.
use std::{fmt::Display, net::IpAddr, os::fd::RawFd};

use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp, XdpAttached,
};
use rtnetlink::{Handle, LinkGetRequest, LinkUnspec, LinkVeth};

use crate::error::{Error, Result};

pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1;
pub const XDP_FLAGS_SKB_MODE: u32 = 2;
pub const XDP_FLAGS_DRV_MODE: u32 = 4;
/// Replace the program given as IFLA_XDP_EXPECTED_FD, and only it.
pub const XDP_FLAGS_REPLACE: u32 = 16;

/// How an XDP program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    None,
    Driver,
    Generic,
    Other,
}

impl XdpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::None => "none",
            XdpMode::Driver => "driver",
            XdpMode::Generic => "generic",
            XdpMode::Other => "other",
        }
    }

    pub fn flag(self) -> u32 {
        match self {
            XdpMode::Generic => XDP_FLAGS_SKB_MODE,
            _ => XDP_FLAGS_DRV_MODE,
        }
    }
}

/// What umlbr needs to know of one interface.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    /// For a veth: the peer's ifindex (IFLA_LINK).
    pub peer: Option<u32>,
    pub up: bool,
    pub promisc: bool,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub xdp_mode: XdpMode,
    pub xdp_prog: Option<u32>,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            peer: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            promisc: msg.header.flags.contains(LinkFlags::Promisc),
            mtu: 0,
            mac: None,
            xdp_mode: XdpMode::None,
            xdp_prog: None,
            tx_packets: 0,
            tx_bytes: 0,
            rx_packets: 0,
            rx_bytes: 0,
        };
        for attr in &msg.attributes {
            link.read(attr);
        }
        link
    }

    fn read(&mut self, attr: &LinkAttribute) {
        match attr {
            LinkAttribute::IfName(n) => self.name = n.clone(),
            LinkAttribute::Link(p) => self.peer = Some(*p),
            LinkAttribute::Mtu(m) => self.mtu = *m,
            LinkAttribute::Address(a) => self.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        self.kind = Some(match k {
                            InfoKind::Other(s) => s.clone(),
                            k => k.to_string(),
                        });
                    }
                }
            }
            LinkAttribute::Xdp(xdp) => xdp.iter().for_each(|x| self.read_xdp(x)),
            LinkAttribute::Stats64(s) => {
                self.tx_packets = s.tx_packets;
                self.tx_bytes = s.tx_bytes;
                self.rx_packets = s.rx_packets;
                self.rx_bytes = s.rx_bytes;
            }
            _ => {}
        }
    }

    fn read_xdp(&mut self, x: &LinkXdp) {
        match x {
            LinkXdp::Attached(a) => {
                self.xdp_mode = match a {
                    XdpAttached::None => XdpMode::None,
                    XdpAttached::Driver => XdpMode::Driver,
                    XdpAttached::SocketBuffer => XdpMode::Generic,
                    _ => XdpMode::Other,
                }
            }
            LinkXdp::ProgId(id) if *id != 0 => self.xdp_prog = Some(*id),
            _ => {}
        }
    }

    pub fn is_tun(&self) -> bool {
        self.kind.as_deref() == Some("tun")
    }

    /// Whether a tap was last set up with vnet headers (UML's vector
    /// transport, QEMU virtio-net, Firecracker): tun keeps the flags of the
    /// last TUNSETIFF, also after the guest closes it.
    pub fn has_vnet_hdr(&self) -> bool {
        self.is_tun()
            && std::fs::read_to_string(format!("/sys/class/net/{}/tun_flags", self.name))
                .ok()
                .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
                .is_some_and(|f| f & libc::IFF_VNET_HDR as u32 != 0)
    }
}

/// A netlink connection in the current network namespace.
pub struct Net {
    handle: Handle,
}

/// Validate an interface name the way the kernel does (dev_valid_name).
pub fn check_ifname(name: &str) -> Result<()> {
    if name.len() > 15 {
        return Err(Error::NameTooLong(name.into()));
    }
    if name.is_empty()
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(Error::BadName(name.into()));
    }
    Ok(())
}

impl Net {
    /// Open a connection; must run inside a tokio runtime.
    pub fn new() -> Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("opening a netlink socket", e))?;
        tokio::spawn(conn);
        Ok(Net { handle })
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let mut stream = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| Error::netlink("listing interfaces", e))?
        {
            out.push(Link::from_message(&msg));
        }
        Ok(out)
    }

    /// The one interface a get request asks for; None if there is none.
    async fn one_link(&self, get: LinkGetRequest, what: impl Display) -> Result<Option<Link>> {
        match get.execute().try_next().await {
            Ok(msg) => Ok(msg.map(|m| Link::from_message(&m))),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(Error::netlink(format!("reading interface {what}"), e)),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let get = self.handle.link().get().match_index(index);
        self.one_link(get, index).await
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        check_ifname(name)?;
        let get = self.handle.link().get().match_name(name.to_string());
        self.one_link(get, name).await
    }

    /// Change an interface; `what` says what, for the error.
    async fn set(&self, msg: LinkMessage, what: String) -> Result<()> {
        let res = self.handle.link().set(msg).execute().await;
        res.map_err(|e| Error::netlink(what, e))
    }

    /// The name of interface `ifindex`, or `if<ifindex>` if it is gone.
    pub async fn name_of(&self, ifindex: u32) -> Result<String> {
        Ok(self
            .link_by_index(ifindex)
            .await?
            .map(|l| l.name)
            .unwrap_or_else(|| format!("if{ifindex}")))
    }

    /// The interface, or a "does not exist" error naming it.
    pub async fn require(&self, name: &str) -> Result<Link> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| Error::NoSuchInterface(name.into()))
    }

    pub async fn add_veth(&self, name: &str, peer: &str) -> Result<()> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("creating veth pair {name}/{peer}"), e))
    }

    pub async fn del_link(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("deleting {name}"), e))
    }

    pub async fn set_up(&self, index: u32, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set(msg, format!("setting {name} up")).await
    }

    pub async fn set_promisc(&self, index: u32, name: &str, on: bool) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).promiscuous(on).build();
        self.set(msg, format!("setting promiscuous mode on {name}"))
            .await
    }

    pub async fn add_address(
        &self,
        index: u32,
        name: &str,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<()> {
        self.handle
            .address()
            .add(index, addr, prefix)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("adding {addr}/{prefix} to {name}"), e))
    }

    /// IPv4 addresses (with prefix length) of interface `index`.
    pub async fn ipv4_addrs(&self, index: u32) -> Result<Vec<(std::net::Ipv4Addr, u8)>> {
        Ok(self
            .ip_addrs(index)
            .await?
            .into_iter()
            .filter_map(|(a, p)| match a {
                IpAddr::V4(v4) => Some((v4, p)),
                IpAddr::V6(_) => None,
            })
            .collect())
    }

    /// Addresses (with prefix length) of interface `index`, IPv4 and
    /// IPv6: each its local address (a point-to-point link's peer is
    /// not its own).
    pub async fn ip_addrs(&self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        use netlink_packet_route::address::AddressAttribute;
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| Error::netlink(format!("listing addresses of interface {index}"), e))?
        {
            if msg.header.index != index {
                continue;
            }
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(a) => Some(*a),
                _ => None,
            });
            let addr = local.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(a) => Some(*a),
                    _ => None,
                })
            });
            if let Some(a) = addr {
                out.push((a, msg.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// IPv4 routes out of `ifindex` that carry an MTU: (destination,
    /// prefix length, MTU).
    pub async fn route_mtus_via(&self, ifindex: u32) -> Result<Vec<(std::net::Ipv4Addr, u8, u32)>> {
        use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMetric};
        let msg = rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build();
        let mut stream = self.handle.route().get(msg).execute();
        let mut out = Vec::new();
        while let Some(r) = stream
            .try_next()
            .await
            .map_err(|e| Error::netlink("listing routes", e))?
        {
            let mut oif = None;
            let mut dst = std::net::Ipv4Addr::UNSPECIFIED;
            let mut mtu = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                    RouteAttribute::Metrics(ms) => {
                        for m in ms {
                            if let RouteMetric::Mtu(v) = m
                                && *v > 0
                            {
                                mtu = Some(*v);
                            }
                        }
                    }
                    _ => {}
                }
            }
            if let (Some(i), Some(m)) = (oif, mtu)
                && i == ifindex
            {
                out.push((dst, r.header.destination_prefix_length, m));
            }
        }
        Ok(out)
    }

    /// Attach (`Some(fd)`) or detach (`None`) the XDP program of `index`
    /// through netlink: such an attachment belongs to the device, so it
    /// stays when umlbr exits.
    pub async fn set_xdp(
        &self,
        index: u32,
        name: &str,
        fd: Option<RawFd>,
        flags: u32,
    ) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::Xdp(vec![
                LinkXdp::Fd(fd.unwrap_or(-1)),
                LinkXdp::Flags(flags),
            ]))
            .build();
        let what = if fd.is_some() {
            "attaching XDP to"
        } else {
            "detaching XDP from"
        };
        self.set(msg, format!("{what} {name}")).await
    }

    /// Replace XDP program `expected` on `index` (named `name`) with `new`,
    /// in the mode of `mode_flag`, in one step (`umlbr upgrade`): the
    /// kernel refuses (EEXIST) if another program sits there by then.
    pub async fn replace_xdp(
        &self,
        index: u32,
        name: &str,
        new: RawFd,
        expected: RawFd,
        mode_flag: u32,
    ) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::Xdp(vec![
                LinkXdp::Fd(new),
                LinkXdp::ExpectedFd(expected as u32),
                LinkXdp::Flags(mode_flag | XDP_FLAGS_REPLACE),
            ]))
            .build();
        self.set(msg, format!("replacing the XDP program of {name}"))
            .await
    }

    /// The static (not permanent, not learned) entries of the kernel
    /// bridge FDB on port `ifindex` (`bridge fdb show dev IFACE` lines
    /// that say `master BR static`): their MACs.
    pub async fn kernel_fdb_static(&self, ifindex: u32) -> Result<Vec<[u8; 6]>> {
        use netlink_packet_route::{
            AddressFamily,
            neighbour::{NeighbourAttribute, NeighbourState},
        };
        let mut stream = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        let mut out = Vec::new();
        while let Some(n) = stream
            .try_next()
            .await
            .map_err(|e| Error::netlink("listing the kernel bridge FDB", e))?
        {
            let master = n
                .attributes
                .iter()
                .any(|a| matches!(a, NeighbourAttribute::Controller(_)));
            if n.header.ifindex != ifindex || n.header.state != NeighbourState::Noarp || !master {
                continue;
            }
            for a in &n.attributes {
                if let NeighbourAttribute::LinkLayerAddress(m) = a
                    && let Ok(mac) = <[u8; 6]>::try_from(m.as_slice())
                {
                    out.push(mac);
                }
            }
        }
        Ok(out)
    }

    /// `bridge fdb replace MAC dev IFACE master static`: a static entry
    /// (NUD_NOARP: never ages, and not "permanent", which FRR's zebra
    /// ignores) in the FDB of the kernel bridge `ifindex` is a port of.
    pub async fn kernel_fdb_put(&self, ifindex: u32, name: &str, mac: [u8; 6]) -> Result<()> {
        use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourState};
        self.handle
            .neighbours()
            .add_bridge(ifindex, &mac)
            .flags(NeighbourFlags::Controller)
            .state(NeighbourState::Noarp)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                Error::netlink(
                    format!(
                        "adding {} to the kernel bridge FDB on {name}",
                        fmt_mac(&mac)
                    ),
                    e,
                )
            })
    }

    /// Remove MAC's entry on port `ifindex` from its kernel bridge's FDB.
    pub async fn kernel_fdb_del(&self, ifindex: u32, name: &str, mac: [u8; 6]) -> Result<()> {
        use netlink_packet_route::{
            AddressFamily,
            neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourMessage},
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = ifindex;
        msg.header.flags = NeighbourFlags::Controller;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.handle
            .neighbours()
            .del(msg)
            .execute()
            .await
            .map_err(|e| {
                Error::netlink(
                    format!(
                        "removing {} from the kernel bridge FDB on {name}",
                        fmt_mac(&mac)
                    ),
                    e,
                )
            })
    }
}

/// Format a MAC as aa:bb:cc:dd:ee:ff.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse aa:bb:cc:dd:ee:ff (or with '-').
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(Error::BadMac(s.into()));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 2 {
            return Err(Error::BadMac(s.into()));
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| Error::BadMac(s.into()))?;
    }
    Ok(mac)
}

/// Parse an address with prefix, e.g. 192.168.2.1/24.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8)> {
    let (a, p) = s.split_once('/').ok_or_else(|| Error::BadCidr(s.into()))?;
    let addr: IpAddr = a.parse().map_err(|_| Error::BadCidr(s.into()))?;
    let prefix: u8 = p.parse().map_err(|_| Error::BadCidr(s.into()))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(Error::BadCidr(s.into()));
    }
    Ok((addr, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_reject_garbage() {
        assert_eq!(
            parse_mac("02:00:0a:0B:ff:01").unwrap(),
            [2, 0, 10, 11, 255, 1]
        );
        assert_eq!(fmt_mac(&[2, 0, 10, 11, 255, 1]), "02:00:0a:0b:ff:01");
        assert_eq!(parse_mac("02-00-00-00-00-01").unwrap(), [2, 0, 0, 0, 0, 1]);
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "zz:00:00:00:00:00",
            "002:00:00:00:00:01",
            "02::00:00:00:01",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("192.168.2.1/24").unwrap(),
            ("192.168.2.1".parse().unwrap(), 24)
        );
        assert!(parse_cidr("fd00::1/64").is_ok());
        for bad in [
            "192.168.2.1",
            "192.168.2.1/33",
            "300.1.1.1/24",
            "/24",
            "x/24",
            "fd00::1/129",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ifnames() {
        assert!(check_ifname("tap0").is_ok());
        assert!(check_ifname("abcdefghijklmno").is_ok());
        assert!(matches!(
            check_ifname("abcdefghijklmnop"),
            Err(Error::NameTooLong(_))
        ));
        for bad in ["", "a/b", "a b", "a:b", ".."] {
            assert!(matches!(check_ifname(bad), Err(Error::BadName(_))), "{bad}");
        }
    }
}
