//! Ports: attaching an interface to a bridge and detaching it.
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::PerCpuValues;
use umlbr_common::{FdbKey, MAX_PORTS, PORT_KIND_OTHER, PORT_KIND_TAP, PortStats, names};

use crate::{
    bridge::{Bridge, Maps, Programs, prog_fd},
    error::{Error, Result},
    link::{
        Link, Net, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE, XDP_FLAGS_UPDATE_IF_NOEXIST, XdpMode,
    },
    sys,
};

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { map, source }
}

/// Add `link` to the bridge's maps: devmap, flood list, stats slot.
pub fn register(maps: &mut Maps, link: &Link, kind: u32) -> Result<()> {
    let mut c = maps.config()?;
    if c.nr_ports >= MAX_PORTS {
        return Err(Error::TooManyPorts {
            bridge: String::new(),
            max: MAX_PORTS,
        });
    }
    let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::io("counting CPUs", e))?;
    let zero = PortStats {
        kind,
        ..Default::default()
    };
    let values = PerCpuValues::try_from(vec![zero; nr_cpus])
        .map_err(|e| Error::io("building per-CPU stats", e))?;
    maps.stats
        .insert(link.index, values, 0)
        .map_err(map_err(names::PORT_STATS))?;
    maps.port_list
        .set(c.nr_ports, link.index, 0)
        .map_err(map_err(names::PORT_LIST))?;
    c.nr_ports += 1;
    maps.set_config(c)?;
    maps.ports
        .insert(link.index, link.index, None, 0)
        .map_err(|e| Error::Load(format!("adding {} to the devmap: {e}", link.name)))?;
    Ok(())
}

/// Remove `ifindex` from the bridge's maps and forget the MACs behind it.
pub fn unregister(maps: &mut Maps, ifindex: u32) -> Result<()> {
    let _ = maps.ports.remove(ifindex);
    let mut c = maps.config()?;
    let list: Vec<u32> = (0..c.nr_ports)
        .filter_map(|i| maps.port_list.get(&i, 0).ok())
        .filter(|&p| p != ifindex)
        .collect();
    for (i, p) in list.iter().enumerate() {
        maps.port_list
            .set(i as u32, *p, 0)
            .map_err(map_err(names::PORT_LIST))?;
    }
    for i in list.len() as u32..c.nr_ports {
        let _ = maps.port_list.set(i, 0, 0);
    }
    c.nr_ports = list.len() as u32;
    maps.set_config(c)?;
    let _ = maps.stats.remove(&ifindex);
    let stale: Vec<FdbKey> = maps
        .fdb
        .iter()
        .filter_map(|e| e.ok())
        .filter(|(_, v)| v.ifindex == ifindex)
        .map(|(k, _)| k)
        .collect();
    for k in stale {
        let _ = maps.fdb.remove(&k);
    }
    Ok(())
}

/// Detach umlbr's XDP and TC programs from `link`.
pub async fn unhook(net: &Net, link: &Link, xdp_id: u32, tc_id: Option<u32>) -> Result<()> {
    if link.xdp_prog == Some(xdp_id) {
        net.set_xdp(link.index, &link.name, None, link.xdp_mode.flag())
            .await?;
    }
    if let Some(tc_id) = tc_id
        && sys::tcx_query(link.index, sys::BPF_TCX_INGRESS)
            .unwrap_or_default()
            .contains(&tc_id)
    {
        let fd = prog_fd(tc_id)?;
        sys::tcx_detach(link.index, fd.as_fd(), sys::BPF_TCX_INGRESS)
            .map_err(|e| Error::io(format!("detaching TC from {}", link.name), e))?;
    }
    Ok(())
}

/// How a port was attached.
#[derive(Debug)]
pub struct Attached {
    pub iface: String,
    pub bridge: String,
    pub xdp: XdpMode,
}

/// Make `iface` a port of `bridge` (or of the only bridge).
pub async fn attach(net: &Net, iface: &str, bridge: Option<&str>) -> Result<Attached> {
    let link = net.require(iface).await?;
    let progs = Programs::read();
    let all = Bridge::list(net).await?;
    if let Some(b) = all
        .iter()
        .find(|b| b.host.index == link.index || b.switch_port.index == link.index)
    {
        return Err(Error::HostPort(format!("{iface} (bridge {})", b.name)));
    }
    if let Some(b) = all
        .iter()
        .find(|b| b.port_ifindexes().contains(&link.index))
    {
        return Err(Error::AlreadyAttached {
            iface: iface.into(),
            bridge: b.name.clone(),
        });
    }
    if let Some(id) = link.xdp_prog {
        if progs.is_umlbr_xdp(id) {
            return Err(Error::OrphanPort {
                iface: iface.into(),
            });
        }
        return Err(Error::ForeignXdp {
            iface: iface.into(),
            prog_id: id,
        });
    }
    drop(all);
    let mut br = Bridge::open_or_only(net, bridge).await?;
    let tc_id = br
        .tc_prog_id(&progs)
        .ok_or_else(|| Error::Load(format!("bridge {} has no TC program", br.name)))?;
    let kind = if link.is_tun() {
        PORT_KIND_TAP
    } else {
        PORT_KIND_OTHER
    };
    register(&mut br.maps, &link, kind).map_err(|e| match e {
        Error::TooManyPorts { max, .. } => Error::TooManyPorts {
            bridge: br.name.clone(),
            max,
        },
        e => e,
    })?;
    let res = async {
        let xdp_fd = prog_fd(br.xdp_prog_id)?;
        let raw = xdp_fd.as_fd().as_raw_fd();
        let flags = XDP_FLAGS_UPDATE_IF_NOEXIST;
        // Driver mode where the device has it (tap, veth, most NICs);
        // generic XDP on an skb otherwise.
        if net
            .set_xdp(link.index, iface, Some(raw), flags | XDP_FLAGS_DRV_MODE)
            .await
            .is_err()
        {
            net.set_xdp(link.index, iface, Some(raw), flags | XDP_FLAGS_SKB_MODE)
                .await?;
        }
        let tc_fd = prog_fd(tc_id)?;
        sys::tcx_attach(link.index, tc_fd.as_fd(), sys::BPF_TCX_INGRESS)
            .map_err(|e| Error::io(format!("attaching TC to {iface}"), e))?;
        net.set_up(link.index, iface).await?;
        Ok::<(), Error>(())
    }
    .await;
    if let Err(e) = res {
        if let Ok(Some(now)) = net.link_by_index(link.index).await {
            let _ = unhook(net, &now, br.xdp_prog_id, Some(tc_id)).await;
        }
        let _ = unregister(&mut br.maps, link.index);
        return Err(e);
    }
    let now = net.require(iface).await?;
    Ok(Attached {
        iface: iface.into(),
        bridge: br.name.clone(),
        xdp: now.xdp_mode,
    })
}

/// Remove `iface` from its bridge. Returns the bridge's name.
pub async fn detach(net: &Net, iface: &str) -> Result<String> {
    let link = net.require(iface).await?;
    let progs = Programs::read();
    let all = Bridge::list(net).await?;
    if let Some(b) = all
        .iter()
        .find(|b| b.host.index == link.index || b.switch_port.index == link.index)
    {
        return Err(Error::HostPort(format!("{iface} (bridge {})", b.name)));
    }
    match all
        .into_iter()
        .find(|b| b.port_ifindexes().contains(&link.index))
    {
        Some(mut br) => {
            let tc_id = br.tc_prog_id(&progs);
            // Out of the maps first so nothing is redirected to it meanwhile.
            unregister(&mut br.maps, link.index)?;
            unhook(net, &link, br.xdp_prog_id, tc_id).await?;
            Ok(br.name)
        }
        None => match link.xdp_prog {
            // A port of a bridge that was deleted behind umlbr's back.
            Some(id) if progs.is_umlbr_xdp(id) => {
                let tc = sys::tcx_query(link.index, sys::BPF_TCX_INGRESS)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|&i| progs.is_umlbr_tc(i));
                unhook(net, &link, id, tc).await?;
                Ok(String::from("(removed bridge)"))
            }
            _ => Err(Error::NotAttached(iface.into())),
        },
    }
}
