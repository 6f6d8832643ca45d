//! Bridges: creation, discovery and removal.
//!
//! A bridge named NAME is a veth pair: NAME is the host's station on the
//! switch (it gets `--address`), its peer (the switch port, NAME-sw) is the
//! first port. umlbr keeps no state of its own: the XDP and TC programs are
//! attached to the ports through netlink and tcx (owned by the devices, not
//! by a process or a bpffs pin) and the maps hang off the programs. Every
//! command finds a bridge again from NAME in the current network namespace,
//! so `ip netns exec` works and two namespaces may each have a br0.
use std::{
    collections::HashMap as StdHashMap,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, Map, MapData, PerCpuHashMap},
    programs::{ProgramFd, SchedClassifier, Xdp, loaded_programs},
};
use umlbr_common::{
    Config, DEFAULT_AGING_SECS, FdbEntry, FdbKey, NatConfig, NatIn, NatKey, NatOut, NatStats,
    PORT_KIND_HOST, PortStats, names,
};

use crate::{
    error::{Error, Result},
    link::{Link, Net, XDP_FLAGS_DRV_MODE, XDP_FLAGS_UPDATE_IF_NOEXIST, check_ifname},
    port, sys,
};

/// The compiled eBPF object, built by build.rs.
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/umlbr.bpf.o"));

/// Options of `umlbr up`.
#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    pub address: Option<(IpAddr, u8)>,
    pub aging_secs: Option<u64>,
    /// The host's NIC to make the uplink port (scenario C).
    pub uplink: Option<String>,
    /// The uplink to masquerade guest traffic through (scenario D).
    pub masquerade: Option<(String, crate::nat::NatOptions)>,
}

/// Handles on a bridge's maps, opened by id from its XDP program.
pub struct Maps {
    pub fdb: HashMap<MapData, FdbKey, FdbEntry>,
    pub ports: DevMapHash<MapData>,
    pub port_list: Array<MapData, u32>,
    pub stats: PerCpuHashMap<MapData, u32, PortStats>,
    pub config: Array<MapData, Config>,
    pub nat_out: HashMap<MapData, NatKey, NatOut>,
    pub nat_in: HashMap<MapData, NatKey, NatIn>,
    pub nat_config: Array<MapData, NatConfig>,
    pub nat_stats: aya::maps::PerCpuArray<MapData, NatStats>,
    pub nat_mtu: aya::maps::LpmTrie<MapData, u32, u32>,
}

/// One bridge, found in the current network namespace.
pub struct Bridge {
    pub name: String,
    /// The host's interface (NAME).
    pub host: Link,
    /// The switch-side end of the host's veth pair.
    pub switch_port: Link,
    pub xdp_prog_id: u32,
    pub maps: Maps,
}

/// Names of loaded BPF programs by id, read once per command.
pub struct Programs(StdHashMap<u32, String>);

impl Programs {
    pub fn read() -> Self {
        Programs(
            loaded_programs()
                .filter_map(|p| p.ok())
                .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
                .collect(),
        )
    }

    pub fn is_umlbr_xdp(&self, id: u32) -> bool {
        self.0.get(&id).is_some_and(|n| n == names::XDP_PROG)
    }

    pub fn is_umlbr_tc(&self, id: u32) -> bool {
        self.0.get(&id).is_some_and(|n| n == names::TC_PROG)
    }

    pub fn is_umlbr_tc_out(&self, id: u32) -> bool {
        self.0.get(&id).is_some_and(|n| n == names::TC_OUT_PROG)
    }
}

/// An owned fd of a loaded program, by id.
pub fn prog_fd(id: u32) -> Result<ProgramFd> {
    loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == id)
        .ok_or_else(|| Error::Load(format!("program id {id} is gone")))?
        .fd()
        .map_err(|e| Error::Load(format!("opening program id {id}: {e}")))
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { map, err: source }
}

impl Maps {
    /// Open the maps the XDP and TC programs of a bridge use.
    fn from_progs(prog_ids: &[u32]) -> Result<Self> {
        let prog_id = prog_ids[0];
        let mut ids = Vec::new();
        for info in loaded_programs().filter_map(|p| p.ok()) {
            if prog_ids.contains(&info.id()) {
                ids.extend(
                    info.map_ids()
                        .map_err(|e| {
                            Error::Load(format!("reading map ids of program {}: {e}", info.id()))
                        })?
                        .unwrap_or_default(),
                );
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let mut found: StdHashMap<String, MapData> = StdHashMap::new();
        for id in ids {
            let data = MapData::from_id(id).map_err(map_err("(by id)"))?;
            let name = data
                .info()
                .map_err(map_err("(by id)"))?
                .name_as_str()
                .unwrap_or("")
                .to_string();
            found.insert(name, data);
        }
        let mut take = |name: &'static str| -> Result<Map> {
            let data = found
                .remove(name)
                .ok_or_else(|| Error::Load(format!("program {prog_id} has no map {name}")))?;
            Map::from_map_data(data).map_err(map_err(name))
        };
        Ok(Maps {
            fdb: take(names::FDB)?.try_into().map_err(map_err(names::FDB))?,
            ports: take(names::PORTS)?
                .try_into()
                .map_err(map_err(names::PORTS))?,
            port_list: take(names::PORT_LIST)?
                .try_into()
                .map_err(map_err(names::PORT_LIST))?,
            stats: take(names::PORT_STATS)?
                .try_into()
                .map_err(map_err(names::PORT_STATS))?,
            config: take(names::CONFIG)?
                .try_into()
                .map_err(map_err(names::CONFIG))?,
            nat_out: take(names::NAT_OUT)?
                .try_into()
                .map_err(map_err(names::NAT_OUT))?,
            nat_in: take(names::NAT_IN)?
                .try_into()
                .map_err(map_err(names::NAT_IN))?,
            nat_config: take(names::NAT_CONFIG)?
                .try_into()
                .map_err(map_err(names::NAT_CONFIG))?,
            nat_stats: take(names::NAT_STATS)?
                .try_into()
                .map_err(map_err(names::NAT_STATS))?,
            nat_mtu: take(names::NAT_MTU)?
                .try_into()
                .map_err(map_err(names::NAT_MTU))?,
        })
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(map_err(names::CONFIG))
    }

    pub fn set_config(&mut self, c: Config) -> Result<()> {
        self.config.set(0, c, 0).map_err(map_err(names::CONFIG))
    }

    pub fn nat_config(&self) -> Result<NatConfig> {
        self.nat_config
            .get(&0, 0)
            .map_err(map_err(names::NAT_CONFIG))
    }

    pub fn set_nat_config(&mut self, c: NatConfig) -> Result<()> {
        self.nat_config
            .set(0, c, 0)
            .map_err(map_err(names::NAT_CONFIG))
    }
}

/// The umlbr TC program on the tcx ingress hook of `ifindex`.
pub fn tc_prog_on(ifindex: u32, progs: &Programs) -> Option<u32> {
    sys::tcx_query(ifindex, sys::BPF_TCX_INGRESS)
        .ok()?
        .into_iter()
        .find(|&id| progs.is_umlbr_tc(id))
}

/// The umlbr uplink-egress program on the tcx egress hook of `ifindex`.
pub fn tc_out_prog_on(ifindex: u32, progs: &Programs) -> Option<u32> {
    sys::tcx_query(ifindex, sys::BPF_TCX_EGRESS)
        .ok()?
        .into_iter()
        .find(|&id| progs.is_umlbr_tc_out(id))
}

/// Name of the switch-side end of bridge `name`'s host veth pair.
pub fn switch_port_name(name: &str) -> String {
    if name.len() + 3 <= 15 {
        format!("{name}-sw")
    } else {
        // Keep it unique and within IFNAMSIZ for long bridge names.
        let h = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        format!("umlbr-{:08x}", h as u32)
    }
}

impl Bridge {
    /// Every bridge in this network namespace.
    pub async fn list(net: &Net) -> Result<Vec<Bridge>> {
        let links = net.links().await?;
        let progs = Programs::read();
        let by_index: StdHashMap<u32, &Link> = links.iter().map(|l| (l.index, l)).collect();
        let mut out = Vec::new();
        for l in &links {
            if l.kind.as_deref() != Some("veth") {
                continue;
            }
            let Some(peer) = l.peer.and_then(|p| by_index.get(&p)) else {
                continue;
            };
            if let Some(id) = peer.xdp_prog
                && progs.is_umlbr_xdp(id)
                && peer.peer == Some(l.index)
                && !l.xdp_prog.is_some_and(|i| progs.is_umlbr_xdp(i))
            {
                let tc = tc_prog_on(peer.index, &progs);
                let tc_out = tc_out_prog_on(peer.index, &progs);
                let ids: Vec<u32> = std::iter::once(id).chain(tc).chain(tc_out).collect();
                out.push(Bridge {
                    name: l.name.clone(),
                    host: l.clone(),
                    switch_port: (*peer).clone(),
                    xdp_prog_id: id,
                    maps: Maps::from_progs(&ids)?,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The bridge called `name`.
    pub async fn open(net: &Net, name: &str) -> Result<Bridge> {
        check_ifname(name)?;
        Bridge::list(net)
            .await?
            .into_iter()
            .find(|b| b.name == name)
            .ok_or_else(|| Error::NoSuchBridge(name.into()))
    }

    /// The bridge called `name`, or the only bridge when `name` is None.
    pub async fn open_or_only(net: &Net, name: Option<&str>) -> Result<Bridge> {
        if let Some(name) = name {
            return Bridge::open(net, name).await;
        }
        let mut all = Bridge::list(net).await?;
        match all.len() {
            0 => Err(Error::NoBridge),
            1 => Ok(all.remove(0)),
            _ => Err(Error::AmbiguousBridge(
                all.iter()
                    .map(|b| b.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    /// The bridge whose port `ifindex` is, if any.
    pub async fn of_port(net: &Net, ifindex: u32) -> Result<Option<Bridge>> {
        Ok(Bridge::list(net)
            .await?
            .into_iter()
            .find(|b| b.port_ifindexes().contains(&ifindex)))
    }

    /// Ports of this bridge, the host's switch port first.
    pub fn port_ifindexes(&self) -> Vec<u32> {
        let nr = self.maps.config().map(|c| c.nr_ports).unwrap_or(0);
        let mut v: Vec<u32> = (0..nr)
            .filter_map(|i| self.maps.port_list.get(&i, 0).ok())
            .filter(|&p| p != 0)
            .collect();
        v.sort_by_key(|&i| (i != self.switch_port.index, i));
        v
    }

    pub fn aging_secs(&self) -> Result<u64> {
        Ok(self.maps.config()?.aging_ns / 1_000_000_000)
    }

    /// The bridge's TC program id, from the host's switch port.
    pub fn tc_prog_id(&self, progs: &Programs) -> Option<u32> {
        tc_prog_on(self.switch_port.index, progs)
    }

    /// The bridge's uplink-egress program id, from the host's switch port.
    pub fn tc_out_prog_id(&self, progs: &Programs) -> Option<u32> {
        tc_out_prog_on(self.switch_port.index, progs)
    }

    /// Create bridge `name`: load the programs, make the host's veth pair
    /// and attach the switch side as the first port.
    pub async fn up(net: &Net, name: &str, opts: &UpOptions) -> Result<()> {
        check_ifname(name)?;
        let sw = switch_port_name(name);
        for n in [name, sw.as_str()] {
            if net.link_by_name(n).await?.is_some() {
                return Err(Error::InterfaceExists(n.into()));
            }
        }
        Self::preflight(net, name, opts).await?;
        let aging = opts.aging_secs.unwrap_or(DEFAULT_AGING_SECS);
        let mut ebpf = load_object()?;
        {
            let mut config: Array<&mut MapData, Config> = ebpf
                .map_mut(names::CONFIG)
                .ok_or_else(|| Error::Load("no config map".into()))?
                .try_into()
                .map_err(map_err(names::CONFIG))?;
            config
                .set(
                    0,
                    Config {
                        aging_ns: aging.saturating_mul(1_000_000_000),
                        ..Default::default()
                    },
                    0,
                )
                .map_err(map_err(names::CONFIG))?;
        }
        net.add_veth(name, &sw).await?;
        // From here on, deleting the veth pair undoes everything.
        let res = async {
            let host = net.require(name).await?;
            let swl = net.require(&sw).await?;
            let xdp: &Xdp = ebpf
                .program(names::XDP_PROG)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| Error::Load("no XDP program".into()))?;
            let xdp_fd = xdp.fd().map_err(|e| Error::Load(e.to_string()))?;
            let tc: &SchedClassifier = ebpf
                .program(names::TC_PROG)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| Error::Load("no TC program".into()))?;
            let tc_fd = tc.fd().map_err(|e| Error::Load(e.to_string()))?;
            let tc_out: &SchedClassifier = ebpf
                .program(names::TC_OUT_PROG)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| Error::Load("no uplink egress program".into()))?;
            let tc_out_fd = tc_out.fd().map_err(|e| Error::Load(e.to_string()))?;
            // Attach XDP first so the maps can be found by id from it.
            net.set_xdp(
                swl.index,
                &sw,
                Some(xdp_fd.as_fd().as_raw_fd()),
                XDP_FLAGS_DRV_MODE | XDP_FLAGS_UPDATE_IF_NOEXIST,
            )
            .await?;
            let prog_id = net
                .require(&sw)
                .await?
                .xdp_prog
                .ok_or_else(|| Error::Load(format!("XDP did not attach to {sw}")))?;
            sys::tcx_attach(swl.index, tc_fd.as_fd(), sys::BPF_TCX_INGRESS)
                .map_err(|e| Error::io(format!("attaching TC to {sw}"), e))?;
            // The uplink-egress program must outlive this process even
            // before an uplink exists: the switch port's egress holds it. It
            // only acts on frames from the uplink's MAC, which never pass
            // there, so it costs a map read per frame the TC path sends up.
            sys::tcx_attach(swl.index, tc_out_fd.as_fd(), sys::BPF_TCX_EGRESS)
                .map_err(|e| Error::io(format!("attaching TC egress to {sw}"), e))?;
            let progs = Programs::read();
            let tc_id = tc_prog_on(swl.index, &progs)
                .ok_or_else(|| Error::Load(format!("TC did not attach to {sw}")))?;
            let tc_out_id = tc_out_prog_on(swl.index, &progs)
                .ok_or_else(|| Error::Load(format!("TC egress did not attach to {sw}")))?;
            let mut maps = Maps::from_progs(&[prog_id, tc_id, tc_out_id])?;
            port::register(&mut maps, &swl, PORT_KIND_HOST, 0)?;
            let mut c = maps.config()?;
            c.host_port = swl.index;
            maps.set_config(c)?;
            // The host's own MAC is a permanent entry, as a Linux bridge's
            // own address is: frames for the gateway are never flooded,
            // whether or not the host has spoken lately.
            if let Some(mac) = host.mac {
                maps.fdb
                    .insert(
                        FdbKey::new(mac),
                        FdbEntry {
                            ifindex: swl.index,
                            flags: umlbr_common::FDB_F_STATIC,
                            updated_ns: sys::monotonic_coarse_ns(),
                        },
                        0,
                    )
                    .map_err(map_err(names::FDB))?;
            }
            // XDP frames redirected into the switch port reach the host only
            // if the host side runs NAPI, which GRO turns on.
            sys::set_gro(name, true)
                .map_err(|e| Error::io(format!("turning GRO on for {name}"), e))?;
            if let Some((addr, prefix)) = opts.address {
                net.add_address(host.index, name, addr, prefix).await?;
            }
            net.set_up(swl.index, &sw).await?;
            net.set_up(host.index, name).await?;
            if let Some(uplink) = &opts.uplink {
                port::attach(net, uplink, Some(name), true, false).await?;
            }
            if let Some((iface, nopts)) = &opts.masquerade {
                crate::nat::attach(net, iface, Some(name), nopts).await?;
            }
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = res {
            if let Ok(Some(l)) = net.link_by_name(name).await {
                let _ = net.del_link(l.index, name).await;
            }
            return Err(e);
        }
        Ok(())
    }

    /// What `up` can check before it loads the programs, which is most of
    /// its time (the verifier's, about half a second): a mistaken uplink
    /// fails at once, before anything is made.
    async fn preflight(net: &Net, name: &str, opts: &UpOptions) -> Result<()> {
        let progs = Programs::read();
        let nat = opts.masquerade.as_ref();
        for iface in opts.uplink.iter().chain(nat.map(|(i, _)| i)) {
            let link = net.require(iface).await?;
            crate::port::check_free(net, &link, &progs).await?;
        }
        if let Some((iface, nopts)) = nat {
            let link = net.require(iface).await?;
            if net.ipv4_addrs(link.index).await?.is_empty() {
                return Err(Error::NoAddress(iface.clone()));
            }
            if !matches!(opts.address, Some((IpAddr::V4(_), _))) {
                return Err(Error::NoAddress(format!("{name} (give `up --address`)")));
            }
            crate::nat::choose_ports(nopts.ports, crate::nat::local_port_range())?;
        }
        Ok(())
    }

    /// Remove the bridge: detach every port, delete the veth pair. The
    /// programs and maps go with their last attachment.
    pub async fn down(mut self, net: &Net) -> Result<Vec<String>> {
        let mut detached = Vec::new();
        if let Some(n) = crate::nat::detach_from(net, &mut self).await? {
            detached.push(n);
        }
        let progs = Programs::read();
        for ifindex in self.port_ifindexes() {
            if ifindex == self.switch_port.index {
                continue;
            }
            if let Some(link) = net.link_by_index(ifindex).await? {
                let kf = port::kind_and_flags(&self.maps, ifindex);
                port::unhook(net, &link, &progs).await?;
                port::restore_promisc(net, &link, kf).await?;
                detached.push(link.name);
            }
        }
        net.del_link(self.host.index, &self.name).await?;
        Ok(detached)
    }
}

/// Load umlbr's programs into the kernel (not attached anywhere yet).
pub fn load_object() -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .load(BPF_OBJECT)
        .map_err(|e| Error::Load(format!("{e:#}")))?;
    for name in [names::XDP_PROG, names::TC_PROG, names::TC_OUT_PROG] {
        let prog = ebpf
            .program_mut(name)
            .ok_or_else(|| Error::Load(format!("no program {name} in the object")))?;
        let res = match prog {
            aya::programs::Program::Xdp(p) => p.load(),
            aya::programs::Program::SchedClassifier(p) => p.load(),
            _ => return Err(Error::Load(format!("{name} has an unexpected type"))),
        };
        res.map_err(|e| Error::Load(format!("{name}: {}", verifier_error(&e))))?;
    }
    Ok(ebpf)
}

/// The kernel's reason, with the verifier log cut to its last line unless
/// UMLBR_VERBOSE is set: errors stay one line.
fn verifier_error(e: &aya::programs::ProgramError) -> String {
    let full = e.to_string();
    let mut s = match full.split_once("Verifier output:") {
        Some((head, log)) if std::env::var_os("UMLBR_VERBOSE").is_none() => {
            let last = log
                .lines()
                .rev()
                .find(|l| {
                    let l = l.trim();
                    !l.is_empty()
                        && !l.starts_with("verification time")
                        && !l.starts_with("processed")
                        && !l.starts_with("stack depth")
                        && !l.starts_with(':')
                })
                .unwrap_or("")
                .trim();
            format!(
                "{}; verifier: {last} (UMLBR_VERBOSE=1 shows the whole log)",
                head.trim().trim_end_matches('.')
            )
        }
        _ => full,
    };
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
