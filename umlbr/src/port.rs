//! Ports: attaching an interface to a bridge and detaching it.
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::PerCpuValues;
use umlbr_common::{
    CFG_F_TC_FLOOD, FDB_F_LOCAL, FDB_F_STATIC, FdbEntry, FdbKey, MAX_PORTS, PORT_F_NO_XDP_TX,
    PORT_F_WAS_PROMISC, PORT_KIND_OTHER, PORT_KIND_TAP, PORT_KIND_UPLINK, PortStats, names,
};

use crate::{
    bridge::{Bridge, Maps, Programs, prog_fd},
    error::{Error, Result},
    link::{
        Link, Net, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE, XDP_FLAGS_UPDATE_IF_NOEXIST, XdpMode,
    },
    sys,
};

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { map, err: source }
}

/// Add `link` to the bridge's maps: flood list, stats slot, and the devmap
/// unless it cannot take XDP frames.
pub fn register(maps: &mut Maps, link: &Link, kind: u32, flags: u32) -> Result<()> {
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
        flags,
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
    if flags & PORT_F_NO_XDP_TX == 0 {
        maps.ports
            .insert(link.index, link.index, None, 0)
            .map_err(|e| Error::Load(format!("adding {} to the devmap: {e}", link.name)))?;
    }
    Ok(())
}

/// Kind and flags of port `ifindex`, as stored at attach time.
pub fn kind_and_flags(maps: &Maps, ifindex: u32) -> Option<(u32, u32)> {
    let v = maps.stats.get(&ifindex, 0).ok()?;
    v.iter().next().map(|s| (s.kind, s.flags))
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
    if c.uplink == ifindex {
        c.uplink = 0;
        c.uplink_mac = [0; 6];
        c.flags &= !CFG_F_TC_FLOOD;
    }
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

/// Detach every umlbr program from `link` (XDP, tcx ingress and egress).
pub async fn unhook(net: &Net, link: &Link, progs: &Programs) -> Result<()> {
    if link.xdp_prog.is_some_and(|id| progs.is_umlbr_xdp(id)) {
        net.set_xdp(link.index, &link.name, None, link.xdp_mode.flag())
            .await?;
    }
    for (hook, what) in [
        (sys::BPF_TCX_INGRESS, "TC"),
        (sys::BPF_TCX_EGRESS, "TC egress"),
    ] {
        for id in sys::tcx_query(link.index, hook).unwrap_or_default() {
            if progs.is_umlbr_tc(id) || progs.is_umlbr_tc_out(id) {
                let fd = prog_fd(id)?;
                sys::tcx_detach(link.index, fd.as_fd(), hook)
                    .map_err(|e| Error::io(format!("detaching {what} from {}", link.name), e))?;
            }
        }
    }
    Ok(())
}

/// An uplink leaves promiscuous mode unless it was promiscuous before.
pub async fn restore_promisc(net: &Net, link: &Link, kind_flags: Option<(u32, u32)>) -> Result<()> {
    if let Some((PORT_KIND_UPLINK, flags)) = kind_flags
        && flags & PORT_F_WAS_PROMISC == 0
    {
        net.set_promisc(link.index, &link.name, false).await?;
    }
    Ok(())
}

/// Refuse an interface that is a bridge's own, a port already (of any
/// bridge, or a masquerade uplink), or has an XDP program of its own.
pub async fn check_free(net: &Net, link: &Link, progs: &Programs) -> Result<()> {
    let iface = link.name.as_str();
    for b in Bridge::list(net).await? {
        if b.host.index == link.index || b.switch_port.index == link.index {
            return Err(Error::HostPort(format!("{iface} (bridge {})", b.name)));
        }
        if b.port_ifindexes().contains(&link.index) {
            return Err(Error::AlreadyAttached {
                iface: iface.into(),
                bridge: b.name.clone(),
            });
        }
        if b.maps.nat_config()?.nat_ifindex == link.index {
            return Err(Error::AlreadyAttached {
                iface: iface.into(),
                bridge: format!("{} (as its masquerade uplink)", b.name),
            });
        }
    }
    match link.xdp_prog {
        Some(id) if progs.is_umlbr_xdp(id) => Err(Error::OrphanPort {
            iface: iface.into(),
        }),
        Some(id) => Err(Error::ForeignXdp {
            iface: iface.into(),
            prog_id: id,
        }),
        None => Ok(()),
    }
}

/// Attach the bridge's XDP program (driver mode where the device has it,
/// generic XDP on an skb otherwise; none when `xdp_id` is None) and its TC
/// program to `link`.
pub async fn hook(net: &Net, link: &Link, xdp_id: Option<u32>, tc_id: u32) -> Result<()> {
    let iface = link.name.as_str();
    if let Some(xdp_id) = xdp_id {
        let xdp_fd = prog_fd(xdp_id)?;
        let raw = xdp_fd.as_fd().as_raw_fd();
        let f = XDP_FLAGS_UPDATE_IF_NOEXIST;
        if net
            .set_xdp(link.index, iface, Some(raw), f | XDP_FLAGS_DRV_MODE)
            .await
            .is_err()
        {
            net.set_xdp(link.index, iface, Some(raw), f | XDP_FLAGS_SKB_MODE)
                .await?;
        }
    }
    let tc_fd = prog_fd(tc_id)?;
    sys::tcx_attach(link.index, tc_fd.as_fd(), sys::BPF_TCX_INGRESS)
        .map_err(|e| Error::io(format!("attaching TC to {iface}"), e))
}

/// How a port was attached.
#[derive(Debug)]
pub struct Attached {
    pub iface: String,
    pub bridge: String,
    pub xdp: XdpMode,
    pub uplink: bool,
    /// Why the port got no XDP program although it could take one.
    pub no_xdp_reason: Option<&'static str>,
}

/// IFF_VNET_HDR in include/uapi/linux/if_tun.h.
const IFF_VNET_HDR: u32 = 0x4000;

/// Whether a tap was last set up with vnet headers (UML's vector
/// transport, QEMU virtio-net, Firecracker): tun keeps the flags of the
/// last TUNSETIFF, also after the guest closes it.
fn tap_has_vnet_hdr(iface: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/tun_flags"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & IFF_VNET_HDR != 0)
}

/// Make `iface` a port of `bridge` (or of the only bridge). An uplink is
/// the host's NIC: it stays the host's interface (its addresses and routes
/// are untouched), becomes promiscuous, and frames for its own MAC keep
/// going up its stack.
pub async fn attach(
    net: &Net,
    iface: &str,
    bridge: Option<&str>,
    uplink: bool,
    tc_only: bool,
) -> Result<Attached> {
    let link = net.require(iface).await?;
    let progs = Programs::read();
    check_free(net, &link, &progs).await?;
    let mut br = Bridge::open_or_only(net, bridge).await?;
    let tc_id = br
        .tc_prog_id(&progs)
        .ok_or_else(|| Error::Load(format!("bridge {} has no TC program", br.name)))?;
    let tc_out_id = br.tc_out_prog_id(&progs);
    let cfg = br.maps.config()?;
    if uplink && cfg.uplink != 0 {
        let cur = net
            .link_by_index(cfg.uplink)
            .await?
            .map(|l| l.name)
            .unwrap_or_else(|| format!("if{}", cfg.uplink));
        return Err(Error::UplinkExists {
            bridge: br.name.clone(),
            uplink: cur,
        });
    }
    let (kind, mut flags) = if uplink {
        // A veth's peer gets XDP frames only if it runs NAPI, which umlbr
        // cannot see from here (it is on the LAN side): send it skbs.
        let no_xdp_tx = if link.kind.as_deref() == Some("veth") {
            PORT_F_NO_XDP_TX
        } else {
            0
        };
        (PORT_KIND_UPLINK, no_xdp_tx)
    } else if link.is_tun() {
        (PORT_KIND_TAP, 0)
    } else {
        (PORT_KIND_OTHER, 0)
    };
    if uplink && link.promisc {
        flags |= PORT_F_WAS_PROMISC;
    }
    // A tap with XDP sends GSO super-frames through generic XDP, which
    // copies each (64 KB) before the program can hand it to TC: slower
    // than TC alone for guests that write them.
    let no_xdp_reason = (kind == PORT_KIND_TAP && !tc_only && tap_has_vnet_hdr(iface))
        .then_some("the tap uses vnet headers (GSO frames would take generic XDP)");
    register(&mut br.maps, &link, kind, flags).map_err(|e| match e {
        Error::TooManyPorts { max, .. } => Error::TooManyPorts {
            bridge: br.name.clone(),
            max,
        },
        e => e,
    })?;
    let res = async {
        if uplink {
            let mac = link.mac.ok_or_else(|| Error::NotEthernet(iface.into()))?;
            // The host's own MAC lives behind the uplink, for its stack.
            br.maps
                .fdb
                .insert(
                    FdbKey::new(mac),
                    FdbEntry {
                        ifindex: link.index,
                        flags: FDB_F_STATIC | FDB_F_LOCAL,
                        updated_ns: sys::monotonic_coarse_ns(),
                    },
                    0,
                )
                .map_err(map_err(names::FDB))?;
            let mut c = br.maps.config()?;
            c.uplink = link.index;
            c.uplink_mac = mac;
            c.flags |= CFG_F_TC_FLOOD;
            br.maps.set_config(c)?;
            net.set_promisc(link.index, iface, true).await?;
        }
        // A veth uplink's frames arrive as skbs from its LAN-side peer:
        // veth's XDP would first copy each into an xdp_buff (measured:
        // slower than TC alone, bench/ uplink rows), so TC switches them.
        let xdp = (flags & PORT_F_NO_XDP_TX == 0 && !tc_only && no_xdp_reason.is_none())
            .then_some(br.xdp_prog_id);
        hook(net, &link, xdp, tc_id).await?;
        if uplink {
            let id = tc_out_id
                .ok_or_else(|| Error::Load(format!("bridge {} has no egress program", br.name)))?;
            let fd = prog_fd(id)?;
            sys::tcx_attach(link.index, fd.as_fd(), sys::BPF_TCX_EGRESS)
                .map_err(|e| Error::io(format!("attaching TC egress to {iface}"), e))?;
        }
        net.set_up(link.index, iface).await?;
        Ok::<(), Error>(())
    }
    .await;
    if let Err(e) = res {
        if let Ok(Some(now)) = net.link_by_index(link.index).await {
            let _ = unhook(net, &now, &progs).await;
        }
        let _ = unregister(&mut br.maps, link.index);
        if uplink && !link.promisc {
            let _ = net.set_promisc(link.index, iface, false).await;
        }
        return Err(e);
    }
    let now = net.require(iface).await?;
    Ok(Attached {
        iface: iface.into(),
        bridge: br.name.clone(),
        xdp: now.xdp_mode,
        uplink,
        no_xdp_reason,
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
            let kf = kind_and_flags(&br.maps, link.index);
            // Out of the maps first so nothing is redirected to it meanwhile.
            unregister(&mut br.maps, link.index)?;
            unhook(net, &link, &progs).await?;
            restore_promisc(net, &link, kf).await?;
            Ok(br.name)
        }
        None => match link.xdp_prog {
            // A port of a bridge that was deleted behind umlbr's back.
            Some(id) if progs.is_umlbr_xdp(id) => {
                unhook(net, &link, &progs).await?;
                Ok(String::from("(removed bridge)"))
            }
            _ => Err(Error::NotAttached(iface.into())),
        },
    }
}
