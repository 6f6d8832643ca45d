//! Per-port counters: the datapath's per-CPU counters summed, with the
//! kernel's own interface counters beside them.
use serde::Serialize;
use umlbr_common::{PORT_KIND_HOST, PORT_KIND_TAP, PORT_KIND_UPLINK, PortStats, names};

use crate::{
    bridge::Bridge,
    error::{Error, Result},
    link::{Net, XdpMode},
};

#[derive(Clone, Debug, Default, Serialize)]
pub struct PortCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub forwarded: u64,
    pub flooded: u64,
    pub dropped: u64,
    pub learned: u64,
    pub moved: u64,
    pub xdp_native: u64,
    pub xdp_generic: u64,
    pub tc: u64,
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
    pub stats: PortCounters,
}

/// The masquerade of a bridge: where, and what it did.
#[derive(Clone, Debug, Serialize)]
pub struct NatView {
    pub uplink: String,
    pub address: String,
    pub ports: String,
    pub mappings: usize,
    pub counters: umlbr_common::NatStats,
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
}

fn kind_name(k: u32) -> &'static str {
    match k {
        PORT_KIND_TAP => "tap",
        PORT_KIND_HOST => "host",
        PORT_KIND_UPLINK => "uplink",
        _ => "other",
    }
}

/// Everything `show` and `stats` print about one bridge.
pub async fn view(net: &Net, br: &Bridge) -> Result<BridgeView> {
    let progs = crate::bridge::Programs::read();
    let tc_id = br.tc_prog_id(&progs);
    let mut ports = Vec::new();
    for ifindex in br.port_ifindexes() {
        let link = net.link_by_index(ifindex).await?;
        let per_cpu = br.maps.stats.get(&ifindex, 0).map_err(|source| Error::Map {
            map: names::PORT_STATS,
            err: source,
        });
        let mut c = PortCounters::default();
        let mut kind = 0;
        if let Ok(values) = per_cpu {
            for v in values.iter() {
                let v: &PortStats = v;
                kind = v.kind;
                c.rx_packets += v.rx_packets;
                c.rx_bytes += v.rx_bytes;
                c.forwarded += v.forwarded;
                c.flooded += v.flooded;
                c.dropped += v.dropped;
                c.learned += v.learned;
                c.moved += v.moved;
                c.xdp_native += v.xdp_native;
                c.xdp_generic += v.xdp_generic;
                c.tc += v.tc;
            }
        }
        let (name, xdp, tc, up) = match &link {
            Some(l) => {
                c.tx_packets = l.tx_packets;
                c.tx_bytes = l.tx_bytes;
                let tc_on = tc_id.is_some_and(|id| {
                    crate::sys::tcx_query(l.index, crate::sys::BPF_TCX_INGRESS)
                        .unwrap_or_default()
                        .contains(&id)
                });
                (
                    l.name.clone(),
                    l.xdp_mode,
                    if tc_on { "tcx" } else { "none" },
                    l.up,
                )
            }
            None => (format!("if{ifindex} (gone)"), XdpMode::None, "none", false),
        };
        ports.push(PortView {
            name,
            ifindex,
            kind: kind_name(kind),
            xdp,
            tc,
            up,
            stats: c,
        });
    }
    let ncfg = br.maps.nat_config()?;
    let nat = if ncfg.nat_ifindex != 0 {
        Some(NatView {
            uplink: net
                .link_by_index(ncfg.nat_ifindex)
                .await?
                .map(|l| l.name)
                .unwrap_or_else(|| format!("if{} (gone)", ncfg.nat_ifindex)),
            address: std::net::Ipv4Addr::from(u32::from_be(ncfg.nat_addr)).to_string(),
            ports: format!("{}-{}", ncfg.port_lo, ncfg.port_hi),
            mappings: br.maps.nat_in.keys().count(),
            counters: crate::nat::counters(br)?,
        })
    } else {
        None
    };
    Ok(BridgeView {
        nat,
        name: br.name.clone(),
        host_interface: br.host.name.clone(),
        switch_port: br.switch_port.name.clone(),
        aging_secs: br.aging_secs()?,
        fdb_entries: br.maps.fdb.keys().count(),
        ports,
    })
}
