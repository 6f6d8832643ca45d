//! Creating a bridge (`up`) and removing it (`down`): the orchestration of
//! the object, ports, FDB and masquerade below.
use std::{
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{SchedClassifier, Xdp},
};
use umlbr_common::{Config, DEFAULT_AGING_SECS, LAYOUT_VERSION, PORT_KIND_HOST, names};

use crate::{
    bridge::{Bridge, switch_port_name},
    dhcp::{self, DhcpOptions},
    error::{Error, Result},
    expect, fdb,
    link::{Link, Net, XDP_FLAGS_DRV_MODE, XDP_FLAGS_UPDATE_IF_NOEXIST, check_ifname},
    lock,
    nat::{self, NatOptions},
    object::{self, Hook, Maps, Programs, Tc, map_err},
    port, record, sys, upgrade,
};

/// Options of `umlbr up`.
#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    /// The host interface's addresses, IPv4 and IPv6.
    pub addresses: Vec<(IpAddr, u8)>,
    pub aging_secs: Option<u64>,
    /// The host's NIC to make the uplink port (scenario C).
    pub uplink: Option<String>,
    /// The uplink to masquerade guest traffic through (scenario D).
    pub masquerade: Option<(String, NatOptions)>,
    /// DHCP, DNS and router advertisements on the subnet (`--dhcp`).
    pub dhcp: Option<DhcpOptions>,
}

/// What `up` can check before it loads the programs, which is most of
/// its time (the verifier's, about half a second): a mistaken name or
/// uplink fails at once, before anything is made.
async fn preflight(net: &Net, name: &str, opts: &UpOptions) -> Result<()> {
    check_ifname(name)?;
    for n in [name, switch_port_name(name).as_str()] {
        if net.link_by_name(n).await?.is_some() {
            return Err(Error::InterfaceExists(n.into()));
        }
    }
    let progs = Programs::read();
    let nat = opts.masquerade.as_ref();
    for iface in opts.uplink.iter().chain(nat.map(|(i, _)| i)) {
        let link = net.require(iface).await?;
        port::check_free(net, &link, &progs).await?;
    }
    if let Some((iface, nopts)) = nat {
        let link = net.require(iface).await?;
        if net.ipv4_addrs(link.index).await?.is_empty() {
            return Err(Error::NoAddress(iface.clone()));
        }
        if !opts.addresses.iter().any(|(a, _)| a.is_ipv4()) {
            return Err(Error::NoAddress(format!("{name} (give `up --address`)")));
        }
        nat::choose_ports(nopts.ports, nat::local_port_range())?;
    }
    if let Some(d) = &opts.dhcp {
        dhcp::plan(name, &opts.addresses, d.range)?;
    }
    Ok(())
}

/// Load the programs, with the aging time and the maps' layout version
/// (for a later `upgrade`) in their config.
fn load(aging_secs: u64) -> Result<Ebpf> {
    let mut ebpf = object::load()?;
    let map = ebpf.map_mut(names::CONFIG).ok_or_else(|| Error::NoMap {
        owner: "umlbr's eBPF object".into(),
        map: names::CONFIG,
    })?;
    let mut config: Array<&mut MapData, Config> = map.try_into().map_err(map_err(names::CONFIG))?;
    let c = Config {
        aging_ns: aging_secs.saturating_mul(1_000_000_000),
        layout: LAYOUT_VERSION,
        ..Default::default()
    };
    config.set(0, c, 0).map_err(map_err(names::CONFIG))?;
    Ok(ebpf)
}

/// Attach the programs to the switch port `sw` and open the maps from
/// them: the programs belong to the device from then on.
async fn hook_switch_port(net: &Net, ebpf: &Ebpf, sw: &Link) -> Result<Maps> {
    let xdp: &Xdp = object::program(ebpf, names::XDP_PROG, "XDP")?;
    let tc: &SchedClassifier = object::program(ebpf, names::TC_PROG, "TC")?;
    let tc_out: &SchedClassifier = object::program(ebpf, names::TC_OUT_PROG, "TC egress")?;
    let fd_err = |name: &'static str| move |e| Error::program(format!("opening program {name}"), e);
    let xdp_fd = xdp.fd().map_err(fd_err(names::XDP_PROG))?;
    // Attach XDP first so the maps can be found by id from it.
    let flags = XDP_FLAGS_DRV_MODE | XDP_FLAGS_UPDATE_IF_NOEXIST;
    let raw = xdp_fd.as_fd().as_raw_fd();
    net.set_xdp(sw.index, &sw.name, Some(raw), flags).await?;
    let not_hooked = |what| Error::NotHooked {
        what,
        iface: sw.name.clone(),
    };
    let xdp_id = net.require(&sw.name).await?.xdp_prog;
    let xdp_id = xdp_id.ok_or_else(|| not_hooked("XDP"))?;
    // The uplink-egress program must outlive this process even before an
    // uplink exists: the switch port's egress holds it. It only acts on
    // frames from the uplink's MAC, which never pass there, so it costs a
    // map read per frame the TC path sends up.
    // On clsact, the qdisc made here goes with the veth pair, which
    // `down` (or the record, `record.rs`) deletes: no record of it needed.
    let tc_hook = Hook::chosen()?;
    let mut ids = vec![xdp_id];
    for (hook, prog, name) in [
        (Tc::Ingress, tc, names::TC_PROG),
        (Tc::Egress, tc_out, names::TC_OUT_PROG),
    ] {
        hook.attach(
            sw.index,
            &sw.name,
            prog.fd().map_err(fd_err(name))?,
            tc_hook,
        )?;
        let found = hook
            .umlbr_prog(&sw.name)
            .ok_or_else(|| not_hooked(hook.what()))?;
        ids.push(found.id());
    }
    Maps::open(&ids)
}

/// Make the switch port the bridge's first port, the host's MAC a static
/// entry, and both ends of the veth pair up.
async fn set_up_host(
    net: &Net,
    maps: &mut Maps,
    host: &Link,
    sw: &Link,
    opts: &UpOptions,
) -> Result<()> {
    port::register(
        maps,
        sw,
        (PORT_KIND_HOST, 0),
        (
            port::default_max_learned(PORT_KIND_HOST),
            port::default_flood_limit(PORT_KIND_HOST),
        ),
    )?;
    let mut c = maps.config()?;
    c.host_port = sw.index;
    maps.set_config(c)?;
    // The host's own MAC is a permanent entry, as a Linux bridge's own
    // address is: frames for the gateway are never flooded, whether or not
    // the host has spoken lately.
    if let Some(mac) = host.mac {
        fdb::put(maps, mac, sw.index, fdb::Entry::Static)?;
    }
    // XDP frames redirected into the switch port reach the host only if
    // the host side runs NAPI, which GRO turns on.
    sys::set_gro(&host.name, true)
        .map_err(|e| Error::io(format!("turning GRO on for {}", host.name), e))?;
    for &(addr, prefix) in &opts.addresses {
        net.add_address(host.index, &host.name, addr, prefix)
            .await?;
    }
    net.set_up(sw.index, &sw.name).await?;
    net.set_up(host.index, &host.name).await
}

/// Everything `up` does once the veth pair exists.
async fn build(net: &Net, name: &str, ebpf: &Ebpf, opts: &UpOptions) -> Result<()> {
    let host = net.require(name).await?;
    let sw = net.require(&switch_port_name(name)).await?;
    let mut maps = hook_switch_port(net, ebpf, &sw).await?;
    set_up_host(net, &mut maps, &host, &sw, opts).await?;
    if let Some(uplink) = &opts.uplink {
        let opts = crate::attach::AttachOptions {
            uplink: true,
            ..Default::default()
        };
        port::attach(net, uplink, Some(name), opts).await?;
    }
    if let Some((iface, nopts)) = &opts.masquerade {
        nat::attach(net, iface, Some(name), nopts).await?;
    }
    // Last: a failure before leaves no dnsmasq; one after it started is
    // undone by `down`, which finds it by its conf (written first).
    if let Some(d) = &opts.dhcp {
        dhcp::start(name, &opts.addresses, d)?;
    }
    Ok(())
}

/// Create bridge `name`: load the programs, make the host's veth pair
/// and attach the switch side as the first port. All of it under the
/// bridge's lock: no other command finds the bridge half-made. Until the
/// bridge is whole, a record (`record.rs`) names the veth pair, so that
/// `down` finds it even if this process is killed before the pair
/// carries umlbr's programs.
pub async fn up(net: &Net, name: &str, opts: &UpOptions) -> Result<()> {
    check_ifname(name)?;
    let _lock = lock::take(name)?;
    if let Some(rec) = record::read(name)? {
        // An interrupted `up` that made nothing has nothing to undo.
        if net.link_by_name(name).await?.is_some() {
            return Err(Error::HalfMade {
                bridge: name.into(),
                path: rec.path,
            });
        }
        record::remove(&rec)?;
    }
    preflight(net, name, opts).await?;
    // A new bridge expects no ports: a file left by a bridge of a
    // namespace that went without `down` (whose inode this one reuses)
    // would have `watch` attach them.
    expect::remove(name)?;
    // Likewise a DHCP conf (and its dead dnsmasq's pid file): `watch`
    // would start it for this bridge.
    dhcp::stop(name)?;
    let ebpf = load(opts.aging_secs.unwrap_or(DEFAULT_AGING_SECS))?;
    let rec = record::write(name, &switch_port_name(name))?;
    if let Err(e) = net.add_veth(name, &switch_port_name(name)).await {
        record::remove(&rec)?;
        return Err(e);
    }
    // From here on, deleting the veth pair undoes everything.
    if let Err(e) = build(net, name, &ebpf, opts).await {
        // If undoing fails too, the record stays for `down`.
        let _ = undo(net, name).await;
        return Err(e);
    }
    // Whole: the bridge's interfaces and maps are its record now.
    record::remove(&rec)
}

/// Undo a failed `up`: as `down` if the bridge can be found (the
/// masquerade's slow path is recorded in its maps, which go with the
/// pair), else delete the pair; the record last.
async fn undo(net: &Net, name: &str) -> Result<()> {
    if let Ok(br) = Bridge::open_locked(net, name).await {
        return down(net, br).await.map(drop);
    }
    dhcp::stop(name)?;
    if let Some(l) = net.link_by_name(name).await? {
        net.del_link(l.index, name).await?;
    }
    record::remove_any(name)
}

/// Remove the bridge: detach every port, delete the veth pair. The
/// programs and maps go with their last attachment. Returns the
/// interfaces it detached.
pub async fn down(net: &Net, br: Bridge) -> Result<Vec<String>> {
    let mut br = br.lock(net).await?;
    // First: a dnsmasq must not outlive its bridge (its conf, the record
    // of it, goes only once it is stopped).
    dhcp::stop(&br.name)?;
    let mut detached = Vec::new();
    if let Some(n) = nat::detach_from(net, &mut br).await? {
        detached.push(n);
    }
    let progs = Programs::read();
    // Ports half-detached (out of the flood list, their stats slot kept
    // for their kind and flags) too.
    for ifindex in br.recorded_ports() {
        if ifindex == br.switch_port.index {
            continue;
        }
        if let Some(link) = net.link_by_index(ifindex).await? {
            let kf = port::kind_and_flags(&br.maps, ifindex);
            port::unhook(net, &link, &progs).await?;
            port::restore(net, &link, kf).await?;
            detached.push(link.name);
        }
    }
    // Before the pair: a `down` killed after it finds no bridge to
    // finish, and would leave the file.
    expect::remove(&br.name)?;
    net.del_link(br.host.index, &br.name).await?;
    record::remove_any(&br.name)?;
    // The pins of an upgrade killed half-way.
    upgrade::remove_pins(&br.name)?;
    br.unlink_lock();
    Ok(detached)
}

/// `down` of bridge `name`: the bridge found under its lock, or else the
/// veth pair that an interrupted `up` recorded (`record.rs`), with
/// nothing else to undo yet. Returns the interfaces it detached.
pub async fn down_named(net: &Net, name: &str) -> Result<Vec<String>> {
    check_ifname(name)?;
    let held = lock::take(name)?;
    let rec = record::read(name)?;
    let err = match Bridge::open_locked(net, name).await {
        Ok(br) => return down(net, br).await,
        Err(e) => e,
    };
    let Some(rec) = rec else {
        // A record killed while being written: nothing was made.
        if matches!(err, Error::NoSuchBridge(_)) {
            record::remove_any(name)?;
            expect::remove(name)?;
            dhcp::stop(name)?;
        }
        return Err(err);
    };
    if let Some(host) = net.link_by_name(name).await? {
        let peer = match host.peer {
            Some(p) => net.link_by_index(p).await?,
            None => None,
        };
        if host.kind.as_deref() != Some("veth") || peer.is_none_or(|p| p.name != rec.switch_port) {
            return Err(Error::NotRecorded {
                bridge: name.into(),
                iface: name.into(),
                switch_port: rec.switch_port,
                path: rec.path,
            });
        }
        net.del_link(host.index, name).await?;
    }
    dhcp::stop(name)?;
    record::remove(&rec)?;
    expect::remove(name)?;
    held.unlink();
    Ok(Vec::new())
}
