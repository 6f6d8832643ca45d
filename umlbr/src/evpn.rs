//! EVPN: publishing the MACs a bridge learned on its local ports where
//! FRR's zebra reads local MACs, the FDB of a kernel bridge.
//!
//! zebra advertises a type-2 (MAC) route for a MAC it reads (netlink,
//! AF_BRIDGE) on a port of a kernel bridge whose VXLAN port carries the
//! VNI, unless the entry is "permanent" (it ignores those). umlbr's
//! guests are on umlbr's ports, not a kernel bridge's, so `publish` keeps
//! static entries (NUD_NOARP, never aging) for them on a port of the
//! operator's "anchor" kernel bridge: an interface umlbr manages the
//! static entries of (a veth end, nothing else on it), in the bridge
//! that also has the VNI's VXLAN device as a port. One anchor per VNI,
//! as zebra reads them; in a bridge with VLANs, where a VNI's device is
//! an access port of a VLAN, the anchor gets the MACs of that VLAN alone
//! (the FDB is keyed by VLAN and MAC): another VLAN's guest advertised in
//! the VNI would draw that tenant's frames for its MAC to this host. The
//! anchor forwards
//! nothing: umlbr's TC program takes every frame the VXLAN device
//! receives before the kernel bridge would, and umlbr sends into the
//! device itself.
use std::collections::BTreeSet;

use umlbr_common::{FDB_F_LOCAL, FDB_F_STATIC, PORT_KIND_VXLAN};

use crate::{
    bridge::Bridge,
    error::{Error, Result},
    link::Net,
    port, sys,
};

/// What `publish` changed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Published {
    pub bridge: String,
    /// The anchor bridge's port that carries the entries.
    pub port: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Entries already there and still wanted.
    pub kept: usize,
    /// The VLAN whose MACs were published (0: the default VLAN).
    pub vlan: u16,
}

/// The MACs of `br` an EVPN speaker should advertise as this host's in
/// VLAN `vlan` (0: the default VLAN, all of a bridge without VLANs): every
/// live entry of its FDB in that VLAN but those behind a VXLAN port (other hosts'
/// guests: theirs to advertise), an uplink's own MAC and the bridge's
/// host interface's (a kernel bridge's own MAC is a permanent entry, which
/// zebra leaves to `advertise-svi-ip`).
pub fn local_macs(br: &Bridge, vlan: u16) -> Result<BTreeSet<[u8; 6]>> {
    let aging = br.maps.config()?.aging_ns;
    let now = sys::monotonic_coarse_ns();
    let mut out = BTreeSet::new();
    for (k, e) in br.maps.fdb.iter().filter_map(|r| r.ok()) {
        if k.vlan != vlan {
            continue;
        }
        let remote = port::kind_and_flags(&br.maps, e.ifindex)
            .is_some_and(|(kind, _)| kind == PORT_KIND_VXLAN);
        let live = e.flags & FDB_F_STATIC != 0 || now.saturating_sub(e.updated_ns) < aging;
        let own = Some(k.mac) == br.host.mac;
        if !remote && !own && live && e.flags & FDB_F_LOCAL == 0 {
            out.insert(k.mac);
        }
    }
    Ok(out)
}

/// Make the static entries of kernel-bridge port `to` the local MACs of
/// `br` in VLAN `vlan` (`local_macs`): add the missing ones, remove the
/// others. `to` must
/// not be a port of `br` (or of any umlbr bridge) nor its host interface.
pub async fn publish(net: &Net, br: &Bridge, to: &str, vlan: u16) -> Result<Published> {
    let link = net.require(to).await?;
    let refuse = |why: &'static str| Error::PublishTarget {
        iface: to.into(),
        why,
    };
    if br.is_own(link.index) {
        return Err(refuse("it is the bridge's own interface"));
    }
    if br.has_port(link.index) {
        return Err(refuse("it is a port of the bridge"));
    }
    let want = local_macs(br, vlan)?;
    let have: BTreeSet<[u8; 6]> = net
        .kernel_fdb_static(link.index)
        .await?
        .into_iter()
        .collect();
    let mut p = Published {
        bridge: br.name.clone(),
        port: to.into(),
        kept: want.intersection(&have).count(),
        vlan,
        ..Default::default()
    };
    for mac in want.difference(&have) {
        net.kernel_fdb_put(link.index, to, *mac).await?;
        p.added.push(crate::link::fmt_mac(mac));
    }
    for mac in have.difference(&want) {
        net.kernel_fdb_del(link.index, to, *mac).await?;
        p.removed.push(crate::link::fmt_mac(mac));
    }
    Ok(p)
}
