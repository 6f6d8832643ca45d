//! What `show` and `stats` print about a bridge: its ports with the
//! datapath's per-CPU counters summed and the kernel's own interface
//! counters beside them, and its masquerade.
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use umlbr_common::{
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Nat6Stats, NatKey, NatStats, PORT_F_ISOLATED,
    PORT_F_LOCKED, PORT_KIND_HOST, PORT_KIND_TAP, PORT_KIND_UPLINK, PORT_KIND_VXLAN, PortStats,
};

use crate::{
    bridge::Bridge,
    dhcp::{self, DhcpView},
    error::Result,
    forward,
    link::{Link, Net, XdpMode, fmt_mac},
    nat,
    object::{Tc, sum},
    port,
};

/// A port's counters: the datapath's, and what the interface sent.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PortCounters {
    #[serde(flatten)]
    pub datapath: PortStats,
    /// From the interface (IFLA_STATS64): what the port sent out.
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PortView {
    pub name: String,
    pub ifindex: u32,
    pub kind: &'static str,
    pub xdp: XdpMode,
    pub tc: &'static str,
    pub up: bool,
    /// Learned MACs behind the port now, as the datapath counts them.
    pub learned_macs: u32,
    /// Most MACs the port may learn (`attach --max-learned`; 0: no limit).
    pub max_learned: u32,
    /// Reaches no other isolated port (`attach --isolated`).
    pub isolated: bool,
    /// Storm control: most floods a second the port may send
    /// (`attach --flood-limit`; 0: no limit).
    pub flood_limit: u32,
    /// Port security (`attach --lock`): only `macs` (its static FDB
    /// entries) and, if any, `ips` may send; nothing is learned.
    pub locked: bool,
    pub macs: Vec<String>,
    pub ips: Vec<String>,
    /// Live masquerade mappings the port's guests hold: the use of its
    /// quota (`--nat-max-per-guest`); 0 without a masquerade.
    pub nat_mappings: u32,
    pub stats: PortCounters,
    /// The port's VLANs (`attach --vlan/--trunk/--pvid`, `umlbr vlan`):
    /// its untagged VLAN (0: the default VLAN) and the tagged ones.
    pub vlans: crate::vlan::Vlans,
}

/// The masquerade of a bridge: where, and what it did.
#[derive(Clone, Debug, Serialize)]
pub struct NatView {
    pub uplink: String,
    pub address: String,
    pub ports: String,
    /// Ports in `ports`: the range each protocol's mappings share.
    pub port_range_size: u32,
    pub mappings: usize,
    /// Ports of the range live mappings use, by protocol ("tcp", "udp",
    /// "icmp"): a port serves one mapping per remote end.
    pub ports_in_use: BTreeMap<&'static str, usize>,
    /// Most live mappings one port's guests may hold (0: no limit).
    pub max_per_guest: u32,
    pub counters: NatStats,
    /// Port forwards (`forward add`), with their hits and live flows.
    pub forwards: Vec<forward::ForwardRow>,
    /// IPv6: the uplink's address guests' IPv6 leaves with (none: their
    /// IPv6 to the uplink is dropped), its live mappings, its counters.
    pub address6: Option<String>,
    pub mappings6: usize,
    pub counters6: Nat6Stats,
}

#[derive(Clone, Debug, Serialize)]
pub struct BridgeView {
    pub name: String,
    pub host_interface: String,
    pub switch_port: String,
    pub aging_secs: u64,
    pub fdb_entries: usize,
    pub ports: Vec<PortView>,
    pub nat: Option<NatView>,
    /// The layout version of the bridge's maps (`umlbr upgrade`), as
    /// stored; 0: made before versions were stored (version 1's maps).
    pub layout_version: u16,
    /// The host interface's addresses (not IPv6 link-local), CIDR.
    pub addresses: Vec<String>,
    /// DHCP, DNS and router advertisements (`up --dhcp`).
    pub dhcp: Option<DhcpView>,
}

fn kind_name(k: u32) -> &'static str {
    match k {
        PORT_KIND_TAP => "tap",
        PORT_KIND_HOST => "host",
        PORT_KIND_UPLINK => "uplink",
        PORT_KIND_VXLAN => "vxlan",
        _ => "other",
    }
}

/// Port `ifindex` of `br`, which is `link` unless it is gone; `tc_id` is
/// the bridge's TC program.
fn port_view(br: &Bridge, ifindex: u32, link: Option<Link>, tc_id: Option<u32>) -> PortView {
    let datapath = br
        .maps
        .stats
        .get(&ifindex, 0)
        .map(|v| sum(&v))
        .unwrap_or_default();
    let budget = br.maps.learn.get(&ifindex, 0).unwrap_or_default();
    let nat_mappings = br
        .maps
        .nat_quota
        .get(&ifindex, 0)
        .map(|q| q.count)
        .unwrap_or_default();
    let locked = datapath.flags & PORT_F_LOCKED != 0;
    let (macs, ips) = if locked {
        let macs = port::bound_macs(&br.maps, ifindex);
        let ips = port::bound_ips(&br.maps, ifindex);
        (
            macs.iter().map(fmt_mac).collect(),
            ips.iter().map(|a| a.to_string()).collect(),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let mut view = PortView {
        name: format!("if{ifindex} (gone)"),
        ifindex,
        kind: kind_name(datapath.kind),
        xdp: XdpMode::None,
        tc: "none",
        up: false,
        learned_macs: budget.count,
        max_learned: budget.max,
        isolated: datapath.flags & PORT_F_ISOLATED != 0,
        flood_limit: budget.flood_pps,
        locked,
        macs,
        ips,
        nat_mappings,
        stats: PortCounters {
            datapath,
            ..Default::default()
        },
        vlans: crate::vlan::of(&br.maps, ifindex),
    };
    let Some(l) = link else {
        return view;
    };
    // Where the bridge's TC program sits on the port: tcx or clsact.
    let tc_on = tc_id.and_then(|id| {
        Tc::Ingress
            .attached(&l.name)
            .into_iter()
            .find(|(_, p)| p.id() == id)
            .map(|(hook, _)| hook.as_str())
    });
    view.xdp = l.xdp_mode;
    view.tc = tc_on.unwrap_or("none");
    view.up = l.up;
    view.stats.tx_packets = l.tx_packets;
    view.stats.tx_bytes = l.tx_bytes;
    view.name = l.name;
    view
}

/// The bridge's masquerade, if it has one.
async fn nat_view(net: &Net, br: &Bridge) -> Result<Option<NatView>> {
    let ncfg = br.maps.nat_config()?;
    if ncfg.nat_ifindex == 0 {
        return Ok(None);
    }
    let uplink = match net.link_by_index(ncfg.nat_ifindex).await? {
        Some(l) => l.name,
        None => format!("if{} (gone)", ncfg.nat_ifindex),
    };
    let keys: Vec<NatKey> = br.maps.nat_in.keys().filter_map(|k| k.ok()).collect();
    Ok(Some(NatView {
        uplink,
        address: std::net::Ipv4Addr::from(u32::from_be(ncfg.nat_addr)).to_string(),
        ports: format!("{}-{}", ncfg.port_lo, ncfg.port_hi),
        port_range_size: u32::from(ncfg.port_hi.saturating_sub(ncfg.port_lo)) + 1,
        mappings: keys.len(),
        ports_in_use: ports_in_use(&keys),
        max_per_guest: ncfg.max_per_guest,
        counters: nat::counters(br)?,
        forwards: forward::show(br)?,
        address6: nat::v6::address(br)?.map(|a| a.to_string()),
        mappings6: br.maps.nat6_in.keys().count(),
        counters6: nat::v6::counters(br)?,
    }))
}

/// Distinct outside ports of the mappings `in_keys` (NAT_IN's keys,
/// whose own end is the outside one), by protocol.
fn ports_in_use(in_keys: &[NatKey]) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for (proto, name) in [
        (IPPROTO_TCP, "tcp"),
        (IPPROTO_UDP, "udp"),
        (IPPROTO_ICMP, "icmp"),
    ] {
        let used: BTreeSet<u16> = in_keys
            .iter()
            .filter(|k| k.proto == proto)
            .map(|k| k.local_port)
            .collect();
        out.insert(name, used.len());
    }
    out
}

/// Everything `show` and `stats` print about one bridge.
pub async fn view(net: &Net, br: &Bridge) -> Result<BridgeView> {
    let tc_id = br.tc_prog(Tc::Ingress).map(|p| p.id());
    let mut ports = Vec::new();
    for ifindex in br.port_ifindexes() {
        let link = net.link_by_index(ifindex).await?;
        ports.push(port_view(br, ifindex, link, tc_id));
    }
    Ok(BridgeView {
        nat: nat_view(net, br).await?,
        name: br.name.clone(),
        host_interface: br.host.name.clone(),
        switch_port: br.switch_port.name.clone(),
        aging_secs: br.aging_secs()?,
        fdb_entries: br.maps.fdb.keys().count(),
        ports,
        layout_version: br.maps.config()?.layout,
        addresses: net
            .ip_addrs(br.host.index)
            .await?
            .into_iter()
            .filter(|(a, _)| !matches!(a, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
            .map(|(a, p)| format!("{a}/{p}"))
            .collect(),
        dhcp: dhcp::read(&br.name)?,
    })
}
