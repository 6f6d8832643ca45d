//! Ports: attaching an interface to a bridge and detaching it, and
//! removing the ports whose interface vanished.
use std::{
    collections::HashSet,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
};

use aya::{maps::PerCpuValues, programs::ProgramInfo};
use umlbr_common::{
    CFG_F_TC_FLOOD, CFG_F_VXLAN, DEFAULT_FLOOD_LIMIT, DEFAULT_MAX_LEARNED,
    DEFAULT_MAX_LEARNED_UPLINK, FDB_F_STATIC, FdbKey, MAX_PORTS, PORT_F_IP_LOCKED, PORT_F_ISOLATED,
    PORT_F_LOCKED, PORT_F_NO_XDP_TX, PORT_F_WAS_PROMISC, PORT_IP_V4, PORT_IP_V6, PORT_KIND_HOST,
    PORT_KIND_OTHER, PORT_KIND_TAP, PORT_KIND_UPLINK, PORT_KIND_VXLAN, PortIpKey, PortLearn,
    PortStats, names,
};

use crate::{
    attach::AttachOptions,
    bridge::Bridge,
    error::{Error, Result},
    expect, fdb,
    link::{
        Link, Net, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE, XDP_FLAGS_UPDATE_IF_NOEXIST, XdpMode,
        fmt_mac,
    },
    object::{self, Hook, Maps, Programs, Tc, fd_of, map_err, prog_fd},
};

/// A port flag of userspace's own, kept in its stats slot with the
/// others (the datapath never reads it): umlbr made the port's clsact
/// qdisc (TC on a kernel without tcx), so `detach` and `down` delete it.
/// Recorded before the qdisc is made.
pub const PORT_F_OWN_CLSACT: u32 = 1 << 16;
/// A port flag of userspace's own, as `PORT_F_OWN_CLSACT`: a config file
/// created the port's tap (`[port.tap]`), so `apply` deletes the tap when
/// the file no longer names the port. Taps made otherwise are never
/// deleted by `apply`: a guest may hold them.
pub const PORT_F_OWN_TAP: u32 = 1 << 17;

/// The UMLBR_PORT_IP key binding `addr` to port `ifindex`.
pub fn port_ip_key(ifindex: u32, addr: IpAddr) -> PortIpKey {
    let mut key = PortIpKey {
        ifindex,
        ..Default::default()
    };
    match addr {
        IpAddr::V4(a) => {
            key.family = PORT_IP_V4;
            key.addr[..4].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            key.family = PORT_IP_V6;
            key.addr = a.octets();
        }
    }
    key
}

/// The address of a UMLBR_PORT_IP key.
pub fn port_ip_addr(key: &PortIpKey) -> IpAddr {
    if key.family == PORT_IP_V4 {
        let a: [u8; 4] = key.addr[..4].try_into().unwrap_or_default();
        IpAddr::from(a)
    } else {
        IpAddr::from(key.addr)
    }
}

/// The addresses bound to port `ifindex`, in map order.
pub fn bound_ips(maps: &Maps, ifindex: u32) -> Vec<IpAddr> {
    maps.port_ip
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| k.ifindex == ifindex)
        .map(|k| port_ip_addr(&k))
        .collect()
}

/// The MACs bound to port `ifindex`: its static FDB entries.
pub fn bound_macs(maps: &Maps, ifindex: u32) -> Vec<[u8; 6]> {
    let mut macs: Vec<[u8; 6]> = maps
        .fdb
        .iter()
        .filter_map(|e| e.ok())
        .filter(|(_, v)| v.ifindex == ifindex && v.flags & FDB_F_STATIC != 0)
        .map(|(k, _)| k.mac)
        .collect();
    // One entry in each of the port's VLANs.
    macs.sort_unstable();
    macs.dedup();
    macs
}

/// Refuse what `attach --lock` cannot do: a lock without MACs, MACs or
/// addresses without a lock, a locked uplink, a MAC that is not unicast.
fn check_lock(iface: &str, opts: &AttachOptions) -> Result<()> {
    if !opts.lock {
        if !opts.macs.is_empty() || !opts.ips.is_empty() {
            return Err(Error::BindWithoutLock {
                iface: iface.into(),
            });
        }
        return Ok(());
    }
    if opts.uplink {
        return Err(Error::LockedUplink {
            iface: iface.into(),
        });
    }
    if opts.macs.is_empty() {
        return Err(Error::LockWithoutMac {
            iface: iface.into(),
        });
    }
    if let Some(m) = opts.macs.iter().find(|m| m[0] & 1 != 0 || **m == [0; 6]) {
        return Err(Error::MulticastMac(fmt_mac(m)));
    }
    Ok(())
}

/// Bind `macs` and `ips` to port `link` (under the bridge's lock, before
/// the port is hooked): each MAC becomes a static FDB entry of the port,
/// each address an entry of UMLBR_PORT_IP. A MAC that is a static entry
/// of another port (the host's, an uplink's, another locked guest's) or
/// an address bound to another port is refused: no guest can be given
/// another's identity.
async fn bind(net: &Net, br: &mut Bridge, link: &Link, opts: &AttachOptions) -> Result<()> {
    for mac in &opts.macs {
        if let Ok(e) = br.maps.fdb.get(&FdbKey::new(*mac), 0)
            && e.flags & FDB_F_STATIC != 0
            && e.ifindex != link.index
        {
            let owner = if br.is_own(e.ifindex) {
                format!("the host port {}", br.name)
            } else {
                net.name_of(e.ifindex).await?
            };
            return Err(Error::MacTaken {
                iface: link.name.clone(),
                mac: fmt_mac(mac),
                owner,
                bridge: br.name.clone(),
            });
        }
    }
    let taken: Vec<PortIpKey> = br.maps.port_ip.keys().filter_map(|k| k.ok()).collect();
    for &addr in &opts.ips {
        if let Some(k) = taken
            .iter()
            .find(|k| k.ifindex != link.index && port_ip_key(k.ifindex, addr) == **k)
        {
            return Err(Error::IpTaken {
                iface: link.name.clone(),
                addr: addr.to_string(),
                owner: net.name_of(k.ifindex).await?,
                bridge: br.name.clone(),
            });
        }
    }
    for mac in &opts.macs {
        fdb::put(&mut br.maps, *mac, link.index, fdb::Entry::Static)?;
    }
    for &addr in &opts.ips {
        br.maps
            .port_ip
            .insert(port_ip_key(link.index, addr), 0, 0)
            .map_err(map_err(names::PORT_IP))?;
    }
    Ok(())
}

/// Forget the addresses bound to port `ifindex`.
fn unbind_ips(maps: &mut Maps, ifindex: u32) {
    let mine: Vec<PortIpKey> = maps
        .port_ip
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| k.ifindex == ifindex)
        .collect();
    for k in mine {
        let _ = maps.port_ip.remove(&k);
    }
}

/// The flood limit a port of `kind` gets unless told otherwise: a guest's
/// port `DEFAULT_FLOOD_LIMIT`, the host port and an uplink none (the host
/// is trusted; an uplink's broadcasts are its LAN's, a limit there would
/// cut the guests off from its ARP and DHCP in a storm on the LAN).
pub fn default_flood_limit(kind: u32) -> u32 {
    // A VXLAN port's floods are other hosts' guests', each limited there.
    if kind == PORT_KIND_UPLINK || kind == PORT_KIND_HOST || kind == PORT_KIND_VXLAN {
        0
    } else {
        DEFAULT_FLOOD_LIMIT
    }
}

/// Change port `ifindex`'s learning limit and flood limit in place (as
/// `register` sets them), keeping its count of learned MACs and its
/// counters: what `apply` does when only these differ. Under the
/// bridge's lock.
pub fn set_limits(maps: &mut Maps, ifindex: u32, max_learned: u32, flood_limit: u32) -> Result<()> {
    let mut b = maps.learn.get(&ifindex, 0).map_err(map_err(names::LEARN))?;
    let (flood_pps, flood_gap_ns) = flood_budget(flood_limit);
    b.max = max_learned;
    b.flood_pps = flood_pps;
    b.flood_gap_ns = flood_gap_ns;
    maps.learn
        .insert(ifindex, b, 0)
        .map_err(map_err(names::LEARN))
}

/// Storm control's budget of a port limited to `pps` floods a second.
fn flood_budget(pps: u32) -> (u32, u32) {
    if pps == 0 {
        (0, 0)
    } else {
        // At least 1: a limit above 1e9/s is no limit worth a zero.
        (pps, (1_000_000_000 / pps).max(1))
    }
}

/// The learning limit a port of `kind` gets unless told otherwise: an
/// uplink has a LAN behind it, a VXLAN port the guests of other hosts,
/// every other port one guest (or the host).
pub fn default_max_learned(kind: u32) -> u32 {
    if kind == PORT_KIND_UPLINK || kind == PORT_KIND_VXLAN {
        DEFAULT_MAX_LEARNED_UPLINK
    } else {
        DEFAULT_MAX_LEARNED
    }
}

/// Add `link` to the bridge's maps: flood list, stats slot, learning
/// budget of `max_learned` MACs and flood limit of `flood_limit` floods a
/// second, and the devmap unless it cannot take XDP frames (and, unless
/// it is isolated, the isolated ports' flood set).
pub fn register(
    maps: &mut Maps,
    link: &Link,
    (kind, flags): (u32, u32),
    (max_learned, flood_limit): (u32, u32),
) -> Result<()> {
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
    let (flood_pps, flood_gap_ns) = flood_budget(flood_limit);
    let budget = PortLearn {
        max: max_learned,
        flood_pps,
        flood_gap_ns,
        ..Default::default()
    };
    maps.learn
        .insert(link.index, budget, 0)
        .map_err(map_err(names::LEARN))?;
    maps.port_list
        .set(c.nr_ports, link.index, 0)
        .map_err(map_err(names::PORT_LIST))?;
    c.nr_ports += 1;
    if kind == PORT_KIND_VXLAN {
        // XDP cannot send to it: floods go through TC, which clones them
        // to it too.
        c.flags |= CFG_F_TC_FLOOD | CFG_F_VXLAN;
    }
    maps.set_config(c)?;
    if flags & PORT_F_NO_XDP_TX == 0 {
        maps.add_to_devmap(link.index, &link.name)?;
        if flags & PORT_F_ISOLATED == 0 {
            maps.add_to_flood_isolated(link.index, &link.name)?;
        }
    }
    Ok(())
}

/// Kind and flags of port `ifindex`, as stored at attach time.
pub fn kind_and_flags(maps: &Maps, ifindex: u32) -> Option<(u32, u32)> {
    let v = maps.stats.get(&ifindex, 0).ok()?;
    v.iter().next().map(|s| (s.kind, s.flags))
}

/// Remove `ifindex` from the bridge's maps and forget the MACs behind it
/// (static ones too) and the addresses bound to it.
pub fn unregister(maps: &mut Maps, ifindex: u32) -> Result<()> {
    unlist(maps, ifindex)?;
    let _ = maps.stats.remove(&ifindex);
    Ok(())
}

/// `unregister` but the port's stats slot, which keeps its kind and flags
/// (whether it was promiscuous): the record `detach` (and `down`, if
/// `detach` is killed) undoes the port's hooks and promiscuity from,
/// removed last.
fn unlist(maps: &mut Maps, ifindex: u32) -> Result<()> {
    let _ = maps.ports.remove(ifindex);
    let _ = maps.flood_isolated.remove(ifindex);
    let mut c = maps.config()?;
    let list: Vec<u32> = maps
        .port_list()?
        .into_iter()
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
    }
    // Floods stay in TC while an uplink or a VXLAN port is left.
    let vxlan_left = list
        .iter()
        .any(|&p| kind_and_flags(maps, p).is_some_and(|(k, _)| k == PORT_KIND_VXLAN));
    if !vxlan_left {
        c.flags &= !CFG_F_VXLAN;
        if c.uplink == 0 {
            c.flags &= !CFG_F_TC_FLOOD;
        }
    }
    maps.set_config(c)?;
    // Its bound MACs (static entries) go with its learned ones.
    fdb::forget_port(maps, ifindex);
    crate::vlan::forget(maps, ifindex)?;
    unbind_ips(maps, ifindex);
    let _ = maps.learn.remove(&ifindex);
    // Its mappings stay until they expire; crediting them then finds no
    // entry. A port attached later starts from zero.
    let _ = maps.nat_quota.remove(&ifindex);
    Ok(())
}

/// Remove from the bridge's maps every port whose interface no longer
/// exists in this network namespace: a tap deleted under its port, a
/// guest's non-persistent tap gone with the guest, an interface moved to
/// another namespace. Its flood-list slot, stats, devmap entry, learning
/// budget and FDB entries go, as with `detach`. Only under the bridge's
/// lock (`Bridge::lock`), which every command that changes the bridge
/// takes, so such a command cleans up after the vanished ports first.
/// Returns their ifindexes.
pub async fn prune(net: &Net, br: &mut Bridge) -> Result<Vec<u32>> {
    debug_assert!(br.is_locked(), "pruning bridge {} unlocked", br.name);
    let live: HashSet<u32> = net.links().await?.iter().map(|l| l.index).collect();
    // Also stats slots outside the flood list: left by a command killed
    // half-way through `register`.
    let mut known: Vec<u32> = br.port_ifindexes();
    known.extend(br.maps.stats.keys().filter_map(|k| k.ok()));
    known.sort_unstable();
    known.dedup();
    let gone: Vec<u32> = known
        .into_iter()
        .filter(|&i| !br.is_own(i) && !live.contains(&i))
        .collect();
    for &ifindex in &gone {
        unregister(&mut br.maps, ifindex)?;
    }
    Ok(gone)
}

/// `br` opened again under its lock, its vanished ports removed: how the
/// commands that change ports open a bridge.
pub async fn lock(net: &Net, br: Bridge) -> Result<Bridge> {
    let mut br = br.lock(net).await?;
    prune(net, &mut br).await?;
    Ok(br)
}

/// Detach every umlbr program from `link` (XDP, TC ingress and egress on
/// tcx or clsact; a clsact qdisc stays: `restore` removes umlbr's).
pub async fn unhook(net: &Net, link: &Link, progs: &Programs) -> Result<()> {
    if link.xdp_prog.is_some_and(|id| progs.is_umlbr_xdp(id)) {
        net.set_xdp(link.index, &link.name, None, link.xdp_mode.flag())
            .await?;
    }
    for hook in Tc::BOTH {
        hook.detach_umlbr(link.index, &link.name)?;
    }
    Ok(())
}

/// After `unhook`, what the port's record says umlbr changed: an uplink
/// leaves promiscuous mode unless it was promiscuous before, and the
/// clsact qdisc umlbr made goes.
pub async fn restore(net: &Net, link: &Link, kind_flags: Option<(u32, u32)>) -> Result<()> {
    if let Some((PORT_KIND_UPLINK, flags)) = kind_flags
        && flags & PORT_F_WAS_PROMISC == 0
    {
        net.set_promisc(link.index, &link.name, false).await?;
    }
    if let Some((_, flags)) = kind_flags
        && flags & PORT_F_OWN_CLSACT != 0
    {
        object::remove_own_clsact(link.index, &link.name)?;
    }
    Ok(())
}

/// Refuse an interface that is a bridge's own, a port already (of any
/// bridge, or a masquerade uplink), or has an XDP program of its own.
pub async fn check_free(net: &Net, link: &Link, progs: &Programs) -> Result<()> {
    let iface = link.name.as_str();
    for b in Bridge::list(net).await? {
        let taken = |bridge: String| Error::AlreadyAttached {
            iface: iface.into(),
            bridge,
        };
        if b.is_own(link.index) {
            return Err(Error::HostPort(format!("{iface} (bridge {})", b.name)));
        }
        if b.has_port(link.index) {
            return Err(taken(b.name.clone()));
        }
        if b.has_record(link.index) {
            return Err(taken(format!(
                "{} (a `detach` was interrupted; run `umlbr detach {iface}`)",
                b.name
            )));
        }
        if b.maps.nat_config()?.nat_ifindex == link.index {
            return Err(taken(format!("{} (as its masquerade uplink)", b.name)));
        }
    }
    // umlbr's TC program (tcx or clsact) on a port of no bridge: as with
    // XDP, a port of a bridge deleted behind umlbr's back.
    let orphan_tc = || Tc::BOTH.into_iter().any(|h| h.umlbr_prog(iface).is_some());
    match link.xdp_prog {
        Some(id) if progs.is_umlbr_xdp(id) => Err(Error::OrphanPort {
            iface: iface.into(),
        }),
        None if orphan_tc() => Err(Error::OrphanPort {
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
/// program to `link`, on `hook` (a clsact qdisc it makes is recorded
/// before: `PORT_F_OWN_CLSACT`, `NAT_F_OWN_CLSACT`).
pub async fn hook(
    net: &Net,
    link: &Link,
    xdp_id: Option<u32>,
    tc: &ProgramInfo,
    hook: Hook,
) -> Result<()> {
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
    Tc::Ingress.attach(link.index, iface, &fd_of(tc)?, hook)
}

/// How a port was attached.
#[derive(Debug)]
pub struct Attached {
    pub iface: String,
    pub bridge: String,
    pub xdp: XdpMode,
    /// Where its TC programs sit.
    pub tc: Hook,
    pub uplink: bool,
    pub isolated: bool,
    /// Locked (`--lock`): bound MACs and addresses.
    pub locked: Option<(usize, usize)>,
    /// Why the port got no XDP program although it could take one.
    pub no_xdp_reason: Option<&'static str>,
}

/// Whether `link` is a kernel VXLAN device (rtnetlink's link kind).
pub fn is_vxlan(link: &Link) -> bool {
    link.kind.as_deref() == Some("vxlan")
}

/// What `attach` makes of `link`: its kind, its flags, and why it gets no
/// XDP program if it could take one.
fn role(link: &Link, uplink: bool, tc_only: bool) -> (u32, u32, Option<&'static str>) {
    if uplink {
        // A veth's peer gets XDP frames only if it runs NAPI, which umlbr
        // cannot see from here (it is on the LAN side): send it skbs.
        let mut flags = if link.kind.as_deref() == Some("veth") {
            PORT_F_NO_XDP_TX
        } else {
            0
        };
        if link.promisc {
            flags |= PORT_F_WAS_PROMISC;
        }
        return (PORT_KIND_UPLINK, flags, None);
    }
    if is_vxlan(link) {
        // No ndo_xdp_xmit: outside the devmap, and no XDP program either
        // (generic XDP would only cost its skb checks before TC).
        let reason =
            "a VXLAN device takes no XDP frames; TC sends to it and switches what it receives";
        return (PORT_KIND_VXLAN, PORT_F_NO_XDP_TX, Some(reason));
    }
    if !link.is_tun() {
        return (PORT_KIND_OTHER, 0, None);
    }
    // A tap with XDP sends GSO super-frames through generic XDP, which
    // copies each (64 KB) before the program can hand it to TC: slower
    // than TC alone for guests that write them.
    let reason = (!tc_only && link.has_vnet_hdr())
        .then_some("the tap uses vnet headers (GSO frames would take generic XDP)");
    (PORT_KIND_TAP, 0, reason)
}

/// Refuse a second uplink.
async fn check_no_uplink(net: &Net, br: &Bridge) -> Result<()> {
    let cfg = br.maps.config()?;
    if cfg.uplink == 0 {
        return Ok(());
    }
    Err(Error::UplinkExists {
        bridge: br.name.clone(),
        uplink: net.name_of(cfg.uplink).await?,
    })
}

/// Make `link` the bridge's uplink: its MAC a local entry, the datapath's
/// uplink, promiscuous.
async fn make_uplink(net: &Net, br: &mut Bridge, link: &Link) -> Result<()> {
    let mac = link
        .mac
        .ok_or_else(|| Error::NotEthernet(link.name.clone()))?;
    // The host's own MAC lives behind the uplink, for its stack.
    fdb::put(&mut br.maps, mac, link.index, fdb::Entry::Local)?;
    let mut c = br.maps.config()?;
    c.uplink = link.index;
    c.uplink_mac = mac;
    c.flags |= CFG_F_TC_FLOOD;
    br.maps.set_config(c)?;
    net.set_promisc(link.index, &link.name, true).await
}

/// The part of `attach` that `rollback` undoes.
async fn connect(
    net: &Net,
    br: &mut Bridge,
    link: &Link,
    tc: (&ProgramInfo, Hook),
    uplink: bool,
    xdp: bool,
) -> Result<()> {
    if uplink {
        make_uplink(net, br, link).await?;
    }
    hook(net, link, xdp.then_some(br.xdp_prog_id), tc.0, tc.1).await?;
    if uplink {
        let out = br.require_tc_prog(Tc::Egress)?;
        Tc::Egress.attach(link.index, &link.name, &fd_of(&out)?, tc.1)?;
    }
    net.set_up(link.index, &link.name).await
}

/// Undo a failed `attach`, as far as it got: as `detach` does, from the
/// port's record.
async fn rollback(net: &Net, br: &mut Bridge, link: &Link, progs: &Programs) {
    let kf = kind_and_flags(&br.maps, link.index);
    let _ = unlist(&mut br.maps, link.index);
    if let Ok(Some(now)) = net.link_by_index(link.index).await {
        let _ = unhook(net, &now, progs).await;
        let _ = restore(net, &now, kf).await;
    }
    let _ = br.maps.stats.remove(&link.index);
}

/// Make `iface` a port of `bridge` (or of the only bridge). An uplink is
/// the host's NIC: it stays the host's interface (its addresses and routes
/// are untouched), becomes promiscuous, and frames for its own MAC keep
/// going up its stack.
pub async fn attach(
    net: &Net,
    iface: &str,
    bridge: Option<&str>,
    opts: AttachOptions,
) -> Result<Attached> {
    let AttachOptions {
        uplink, tc_only, ..
    } = opts;
    check_lock(iface, &opts)?;
    let link = net.require(iface).await?;
    let progs = Programs::read();
    check_free(net, &link, &progs).await?;
    let br = Bridge::open_or_only(net, bridge).await?;
    let mut br = lock(net, br).await?;
    // Again under the lock: another command may have attached it meanwhile.
    let link = net.require(iface).await?;
    let progs = Programs::read();
    check_free(net, &link, &progs).await?;
    let tc = br.require_tc_prog(Tc::Ingress)?;
    if uplink {
        check_no_uplink(net, &br).await?;
    }
    let tc_hook = Hook::chosen()?;
    let (kind, mut flags, no_xdp_reason) = role(&link, uplink, tc_only);
    // Recorded in the port's stats slot before the qdisc is made.
    if object::makes_clsact(tc_hook, link.index, &link.name)? {
        flags |= PORT_F_OWN_CLSACT;
    }
    if opts.isolated && !uplink {
        flags |= PORT_F_ISOLATED;
    }
    if opts.own_tap {
        flags |= PORT_F_OWN_TAP;
    }
    if opts.lock {
        flags |= PORT_F_LOCKED;
        if !opts.ips.is_empty() {
            flags |= PORT_F_IP_LOCKED;
        }
    }
    let max_learned = opts.max_learned.unwrap_or(default_max_learned(kind));
    let flood_limit = opts.flood_limit.unwrap_or(default_flood_limit(kind));
    let limits = (max_learned, flood_limit);
    register(&mut br.maps, &link, (kind, flags), limits).map_err(|e| match e {
        Error::TooManyPorts { max, .. } => Error::TooManyPorts {
            bridge: br.name.clone(),
            max,
        },
        e => e,
    })?;
    // Bound before the port is hooked: a locked port's first frame is
    // already judged by them, in its VLANs.
    let vlans = opts.vlans.clone().unwrap_or_default();
    let bound = bind(net, &mut br, &link, &opts).await;
    if let Err(e) = bound.and_then(|()| crate::vlan::set(&mut br.maps, link.index, &vlans)) {
        rollback(net, &mut br, &link, &progs).await;
        return Err(e);
    }
    // A veth uplink's frames arrive as skbs from its LAN-side peer:
    // veth's XDP would first copy each into an xdp_buff (measured:
    // slower than TC alone, bench/ uplink rows), so TC switches them.
    let xdp = flags & PORT_F_NO_XDP_TX == 0 && !tc_only && no_xdp_reason.is_none();
    if let Err(e) = connect(net, &mut br, &link, (&tc, tc_hook), uplink, xdp).await {
        rollback(net, &mut br, &link, &progs).await;
        return Err(e);
    }
    // What `umlbr watch` attaches again if the interface comes back.
    if let Err(e) = expect::record(&br.name, iface, &opts) {
        rollback(net, &mut br, &link, &progs).await;
        return Err(e);
    }
    let now = net.require(iface).await?;
    Ok(Attached {
        iface: iface.into(),
        bridge: br.name.clone(),
        xdp: now.xdp_mode,
        tc: tc_hook,
        uplink,
        isolated: flags & PORT_F_ISOLATED != 0,
        locked: opts.lock.then_some((opts.macs.len(), opts.ips.len())),
        no_xdp_reason,
    })
}

/// Give port `iface` (a bridge's name: its host port) the VLANs `v`.
/// Returns the bridge's name.
pub async fn set_vlans(net: &Net, iface: &str, v: &crate::vlan::Vlans) -> Result<String> {
    let link = net.require(iface).await?;
    let found = Bridge::list(net).await?.into_iter().find_map(|b| {
        if b.host.index == link.index {
            let p = b.switch_port.index;
            Some((b, p))
        } else {
            b.has_port(link.index).then_some((b, link.index))
        }
    });
    let Some((br, port)) = found else {
        return Err(Error::NotAttached(iface.into()));
    };
    let mut br = lock(net, br).await?;
    // Read again under the lock: another command may have detached it.
    if !br.is_own(port) && !br.has_port(port) {
        return Err(Error::NotAttached(iface.into()));
    }
    crate::vlan::set(&mut br.maps, port, v)?;
    // What `umlbr watch` attaches again carries the new VLANs.
    if let Some((_, mut opts)) = expect::read(&br.name)?
        .into_iter()
        .find(|(i, _)| i == iface)
    {
        opts.vlans = (!v.is_default()).then(|| v.clone());
        expect::record(&br.name, iface, &opts)?;
    }
    Ok(br.name)
}

/// Remove `iface` from its bridge. Returns the bridge's name.
pub async fn detach(net: &Net, iface: &str) -> Result<String> {
    let link = net.require(iface).await?;
    let progs = Programs::read();
    let all = Bridge::list(net).await?;
    if let Some(b) = all.iter().find(|b| b.is_own(link.index)) {
        return Err(Error::HostPort(format!("{iface} (bridge {})", b.name)));
    }
    // A port, or one whose `detach` was killed after taking it out of the
    // flood list (its stats slot, with its kind and flags, is left).
    match all.into_iter().find(|b| b.has_record(link.index)) {
        Some(br) => {
            let mut br = lock(net, br).await?;
            // Read again under the lock: another command may have
            // detached it, or deleted it, meanwhile.
            let link = net.require(iface).await?;
            if !br.has_record(link.index) {
                return Err(Error::NotAttached(iface.into()));
            }
            let kf = kind_and_flags(&br.maps, link.index);
            // Out of the maps first so nothing is redirected to it
            // meanwhile; its record (the stats slot) last.
            unlist(&mut br.maps, link.index)?;
            unhook(net, &link, &progs).await?;
            restore(net, &link, kf).await?;
            let _ = br.maps.stats.remove(&link.index);
            // Detached on purpose: `umlbr watch` no longer expects it.
            expect::forget(&br.name, iface)?;
            Ok(br.name)
        }
        // A port of a bridge that was deleted behind umlbr's back (XDP,
        // or TC alone).
        None if link.xdp_prog.is_some_and(|id| progs.is_umlbr_xdp(id))
            || Tc::BOTH
                .into_iter()
                .any(|h| h.umlbr_prog(&link.name).is_some()) =>
        {
            unhook(net, &link, &progs).await?;
            Ok(String::from("(removed bridge)"))
        }
        None => Err(Error::NotAttached(iface.into())),
    }
}
