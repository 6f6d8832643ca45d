//! umlbr's eBPF object in the kernel: loading it, its programs (which one
//! sits on which hook of an interface) and its maps, opened again by id.
//!
//! Nothing is pinned and no process holds anything: the programs belong to
//! the devices they are attached to, and every command finds them, and the
//! maps they use, from the interfaces.
use std::{
    collections::HashMap as StdHashMap,
    ops::AddAssign,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, DevMapHash, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
        PerCpuValues,
    },
    programs::{Program, ProgramError, ProgramFd, ProgramInfo, SchedClassifier, TcAttachType},
};
use umlbr_common::{
    Config, FdbEntry, FdbKey, FwdKey, FwdVal, Nat6Config, Nat6In, Nat6Key, Nat6Stats, NatConfig,
    NatIn, NatKey, NatOut, NatQuota, NatStats, PortIpKey, PortLearn, PortStats, PortVlan, names,
};

use crate::{
    clsact,
    error::{Error, Result},
    sys,
};

/// The compiled eBPF object, built by build.rs.
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/umlbr.bpf.o"));

/// Load umlbr's programs into the kernel (not attached anywhere yet).
pub fn load() -> Result<Ebpf> {
    load_with(&mut EbpfLoader::new())
}

/// `load` with `loader`'s settings (`umlbr upgrade`: the running
/// bridge's maps, reused).
pub fn load_with(loader: &mut EbpfLoader) -> Result<Ebpf> {
    let mut ebpf = loader.load(BPF_OBJECT).map_err(Error::Object)?;
    for name in [names::XDP_PROG, names::TC_PROG, names::TC_OUT_PROG] {
        let res = match ebpf.program_mut(name) {
            Some(Program::Xdp(p)) => p.load(),
            Some(Program::SchedClassifier(p)) => p.load(),
            _ => {
                let kind = "XDP or TC";
                return Err(Error::NoProgram { name, kind });
            }
        };
        res.map_err(|e| load_error(name, e))?;
    }
    Ok(ebpf)
}

/// A program of the object loaded by [`load`], by name and type.
pub fn program<'a, T>(ebpf: &'a Ebpf, name: &'static str, kind: &'static str) -> Result<&'a T>
where
    &'a T: TryFrom<&'a Program>,
{
    ebpf.program(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(Error::NoProgram { name, kind })
}

/// The kernel's reason, with the verifier log cut to its last line unless
/// UMLBR_VERBOSE is set: errors stay one line.
fn load_error(name: &'static str, e: ProgramError) -> Error {
    let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = e
    else {
        return Error::program(format!("loading umlbr's eBPF program {name}"), e);
    };
    let log = verifier_log.to_string();
    let log = if std::env::var_os("UMLBR_VERBOSE").is_some() {
        log
    } else {
        let last = log
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| {
                !l.is_empty()
                    && !l.starts_with("verification time")
                    && !l.starts_with("processed")
                    && !l.starts_with("stack depth")
                    && !l.starts_with(':')
            })
            .unwrap_or("");
        format!("{last}; UMLBR_VERBOSE=1 shows the whole log")
    };
    Error::Verifier {
        name,
        log,
        err: io_error,
    }
}

/// Names of loaded BPF programs by id, read once per command.
pub struct Programs(StdHashMap<u32, String>);

impl Programs {
    pub fn read() -> Self {
        Programs(
            aya::programs::loaded_programs()
                .filter_map(|p| p.ok())
                .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
                .collect(),
        )
    }

    /// Whether program `id` is umlbr's XDP program.
    pub fn is_umlbr_xdp(&self, id: u32) -> bool {
        self.0.get(&id).is_some_and(|n| n == names::XDP_PROG)
    }
}

/// An owned fd of a loaded program, by id.
pub fn prog_fd(id: u32) -> Result<ProgramFd> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == id)
        .ok_or(Error::ProgramGone(id))?
        .fd()
        .map_err(|e| Error::program(format!("opening program id {id}"), e))
}

/// An owned fd of a program found on a hook.
pub fn fd_of(p: &ProgramInfo) -> Result<ProgramFd> {
    p.fd()
        .map_err(|e| Error::program(format!("opening program id {}", p.id()), e))
}

/// Where a port's TC programs sit: tcx (Linux 6.6 and later), or a
/// clsact qdisc's cls_bpf filters where the kernel has no tcx. Both
/// belong to the device; every command finds umlbr's programs on either.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Tcx,
    Clsact,
}

/// `UMLBR_TC_HOOK`: `tcx` or `clsact` forces the hook that `up` and
/// `attach` use (clsact on a kernel with tcx: the host tests cover the
/// fallback this way).
pub const TC_HOOK_ENV: &str = "UMLBR_TC_HOOK";

static CHOSEN: std::sync::OnceLock<std::result::Result<Hook, String>> = std::sync::OnceLock::new();

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Tcx => "tcx",
            Hook::Clsact => "clsact",
        }
    }

    /// The hook this command attaches TC programs with: `UMLBR_TC_HOOK`
    /// if set, else tcx where the kernel has it (probed once per
    /// command), clsact otherwise.
    pub fn chosen() -> Result<Hook> {
        CHOSEN
            .get_or_init(|| match std::env::var(TC_HOOK_ENV).as_deref() {
                Ok("tcx") => Ok(Hook::Tcx),
                Ok("clsact") => Ok(Hook::Clsact),
                Ok(other) => Err(format!("{TC_HOOK_ENV}={other:?}: expected tcx or clsact")),
                Err(_) => match sys::has_tcx() {
                    Ok(true) => Ok(Hook::Tcx),
                    Ok(false) => Ok(Hook::Clsact),
                    Err(e) => Err(format!("probing the kernel for tcx: {e}")),
                },
            })
            .clone()
            .map_err(Error::KernelFeature)
    }
}

/// A TC hook of an interface, and umlbr's program for it: the switch's
/// TC program on ingress, the uplink-egress program on egress; on tcx or
/// on the clsact qdisc (`Hook`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tc {
    Ingress,
    Egress,
}

impl Tc {
    pub const BOTH: [Tc; 2] = [Tc::Ingress, Tc::Egress];

    /// The name of umlbr's program on this hook.
    pub fn prog_name(self) -> &'static str {
        match self {
            Tc::Ingress => names::TC_PROG,
            Tc::Egress => names::TC_OUT_PROG,
        }
    }

    /// What error messages call it.
    pub fn what(self) -> &'static str {
        match self {
            Tc::Ingress => "TC",
            Tc::Egress => "TC egress",
        }
    }

    fn attach_type(self) -> u32 {
        match self {
            Tc::Ingress => sys::BPF_TCX_INGRESS,
            Tc::Egress => sys::BPF_TCX_EGRESS,
        }
    }

    /// The clsact qdisc's side of this hook.
    fn parent(self) -> u32 {
        match self {
            Tc::Ingress => clsact::PARENT_INGRESS,
            Tc::Egress => clsact::PARENT_EGRESS,
        }
    }

    fn aya(self) -> TcAttachType {
        match self {
            Tc::Ingress => TcAttachType::Ingress,
            Tc::Egress => TcAttachType::Egress,
        }
    }

    /// The programs on this hook of `iface`, each with where it sits:
    /// tcx's, then the clsact qdisc's bpf filters' (none if they cannot
    /// be read; a kernel without tcx has none there).
    pub fn attached(self, iface: &str) -> Vec<(Hook, ProgramInfo)> {
        let mut out: Vec<(Hook, ProgramInfo)> = SchedClassifier::query_tcx(iface, self.aya())
            .map(|(_, progs)| progs)
            .unwrap_or_default()
            .into_iter()
            .map(|p| (Hook::Tcx, p))
            .collect();
        let ids: Vec<u32> = ifindex_of(iface)
            .and_then(|i| clsact::filters(i, self.parent()).ok())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| f.prog_id)
            .collect();
        if !ids.is_empty() {
            out.extend(
                aya::programs::loaded_programs()
                    .filter_map(|p| p.ok())
                    .filter(|p| ids.contains(&p.id()))
                    .map(|p| (Hook::Clsact, p)),
            );
        }
        out
    }

    /// The programs on this hook of `iface`, tcx's and clsact's.
    pub fn programs(self, iface: &str) -> Vec<ProgramInfo> {
        self.attached(iface).into_iter().map(|(_, p)| p).collect()
    }

    /// umlbr's program on this hook of `iface`, and where it sits.
    pub fn umlbr_hooked(self, iface: &str) -> Option<(Hook, ProgramInfo)> {
        self.attached(iface)
            .into_iter()
            .find(|(_, p)| p.name_as_str() == Some(self.prog_name()))
    }

    /// umlbr's program on this hook of `iface`.
    pub fn umlbr_prog(self, iface: &str) -> Option<ProgramInfo> {
        self.umlbr_hooked(iface).map(|(_, p)| p)
    }

    /// Attach `prog` to this hook of `ifindex` (named `iface`), on tcx or
    /// as a filter on the clsact qdisc, which is made if the device has
    /// none: the caller records that before (`port::OWN_CLSACT`), unless
    /// the device is umlbr's own.
    pub fn attach(self, ifindex: u32, iface: &str, prog: &ProgramFd, hook: Hook) -> Result<()> {
        let what = || format!("attaching {} to {iface} ({})", self.what(), hook.as_str());
        match hook {
            Hook::Tcx => sys::tcx_attach(ifindex, prog.as_fd(), self.attach_type())
                .map_err(|e| Error::io(what(), e)),
            Hook::Clsact => {
                clsact::add_qdisc(ifindex).map_err(|e| Error::io(what(), e))?;
                let fd = prog.as_fd().as_raw_fd();
                clsact::add_filter(ifindex, self.parent(), fd, self.prog_name())
                    .map_err(|e| Error::io(what(), e))
            }
        }
    }

    /// Replace umlbr's program `old` on this hook of `ifindex` (named
    /// `iface`) with `new`, where it sits (`umlbr upgrade`): one step on
    /// tcx (BPF_F_REPLACE, refused if `old` is gone) and on clsact (the
    /// cls_bpf filter holding `old` gets `new`).
    pub fn replace(
        self,
        ifindex: u32,
        iface: &str,
        new: &ProgramFd,
        old: &ProgramInfo,
        hook: Hook,
    ) -> Result<()> {
        let what = || {
            format!(
                "replacing {} program {} on {iface} ({})",
                self.what(),
                old.id(),
                hook.as_str()
            )
        };
        match hook {
            Hook::Tcx => {
                let old_fd = fd_of(old)?;
                sys::tcx_replace(ifindex, new.as_fd(), old_fd.as_fd(), self.attach_type())
                    .map_err(|e| Error::io(what(), e))
            }
            Hook::Clsact => {
                let filters =
                    clsact::filters(ifindex, self.parent()).map_err(|e| Error::io(what(), e))?;
                let f = filters
                    .iter()
                    .find(|f| f.prog_id == Some(old.id()))
                    .ok_or_else(|| {
                        let gone = "no filter holds it any more";
                        Error::io(
                            what(),
                            std::io::Error::new(std::io::ErrorKind::NotFound, gone),
                        )
                    })?;
                let fd = new.as_fd().as_raw_fd();
                clsact::replace_filter(
                    ifindex,
                    self.parent(),
                    (f.prio, f.handle),
                    fd,
                    self.prog_name(),
                )
                .map_err(|e| Error::io(what(), e))
            }
        }
    }

    /// Detach every umlbr program from this hook of `ifindex`, on tcx and
    /// on the clsact qdisc (only umlbr's filters; the qdisc stays).
    pub fn detach_umlbr(self, ifindex: u32, iface: &str) -> Result<()> {
        let umlbr = |p: &ProgramInfo| {
            let name = p.name_as_str();
            name == Some(names::TC_PROG) || name == Some(names::TC_OUT_PROG)
        };
        let what =
            |hook: Hook| format!("detaching {} from {iface} ({})", self.what(), hook.as_str());
        for (hook, p) in self.attached(iface) {
            if !umlbr(&p) {
                continue;
            }
            match hook {
                Hook::Tcx => {
                    let fd = fd_of(&p)?;
                    sys::tcx_detach(ifindex, fd.as_fd(), self.attach_type())
                        .map_err(|e| Error::io(what(hook), e))?;
                }
                Hook::Clsact => {
                    let filters = clsact::filters(ifindex, self.parent())
                        .map_err(|e| Error::io(what(hook), e))?;
                    for f in filters.iter().filter(|f| f.prog_id == Some(p.id())) {
                        clsact::del_filter(ifindex, self.parent(), f.prio, f.handle)
                            .map_err(|e| Error::io(what(hook), e))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether attaching with `hook` to `ifindex` makes a clsact qdisc: the
/// fact to record before, so that `detach` and `down` delete the qdisc
/// (and never one that was there before).
pub fn makes_clsact(hook: Hook, ifindex: u32, iface: &str) -> Result<bool> {
    if hook != Hook::Clsact {
        return Ok(false);
    }
    let has = clsact::has_qdisc(ifindex)
        .map_err(|e| Error::io(format!("reading the qdiscs of {iface}"), e))?;
    Ok(!has)
}

/// Delete the clsact qdisc that umlbr made on `ifindex`, once umlbr's
/// filters are gone, unless filters of others were added to it since
/// (they keep it). Returns whether it was deleted.
pub fn remove_own_clsact(ifindex: u32, iface: &str) -> Result<bool> {
    let what = || format!("removing the clsact qdisc umlbr made on {iface}");
    for parent in [clsact::PARENT_INGRESS, clsact::PARENT_EGRESS] {
        if !clsact::filters(ifindex, parent)
            .map_err(|e| Error::io(what(), e))?
            .is_empty()
        {
            return Ok(false);
        }
    }
    clsact::del_qdisc(ifindex).map_err(|e| Error::io(what(), e))?;
    Ok(true)
}

fn ifindex_of(iface: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(iface).ok()
}

/// Ids of the programs on TC hook `hook` of interface `ifindex` (tcx and
/// clsact).
pub fn tc_prog_ids(ifindex: u32, hook: Tc) -> Vec<u32> {
    nix::net::if_::if_indextoname(ifindex)
        .ok()
        .and_then(|n| n.into_string().ok())
        .map(|n| hook.programs(&n).iter().map(ProgramInfo::id).collect())
        .unwrap_or_default()
}

/// The error of map `map`.
pub(crate) fn map_err(map: &'static str) -> impl Fn(MapError) -> Error {
    move |err| Error::Map { map, err }
}

/// A per-CPU value summed over the CPUs: the first CPU's, with every
/// other one added (fields that `+=` leaves alone, such as a port's kind,
/// are the first CPU's).
pub fn sum<T: Copy + Default + AddAssign + aya::Pod>(values: &PerCpuValues<T>) -> T {
    sum_of(values.iter().copied())
}

fn sum_of<T: Default + AddAssign>(values: impl IntoIterator<Item = T>) -> T {
    values
        .into_iter()
        .reduce(|mut acc, v| {
            acc += v;
            acc
        })
        .unwrap_or_default()
}

/// Handles on a bridge's maps, opened by id from its programs.
pub struct Maps {
    pub fdb: HashMap<MapData, FdbKey, FdbEntry>,
    pub ports: DevMapHash<MapData>,
    pub port_list: Array<MapData, u32>,
    pub stats: PerCpuHashMap<MapData, u32, PortStats>,
    pub config: Array<MapData, Config>,
    pub nat_out: HashMap<MapData, NatKey, NatOut>,
    pub nat_in: HashMap<MapData, NatKey, NatIn>,
    pub nat_config: Array<MapData, NatConfig>,
    pub nat_stats: PerCpuArray<MapData, NatStats>,
    pub nat_mtu: LpmTrie<MapData, u32, u32>,
    /// Each port's live NAT mappings (key 0: the datapath's sweep clock).
    pub nat_quota: HashMap<MapData, u32, NatQuota>,
    /// Each port's learning budget.
    pub learn: HashMap<MapData, u32, PortLearn>,
    /// The masquerade uplink alone (never a flood target).
    pub nat_tx: DevMapHash<MapData>,
    /// The ports of `ports` that are not isolated: where an isolated
    /// port's XDP floods go.
    pub flood_isolated: DevMapHash<MapData>,
    /// Addresses bound to locked ports (`attach --ip`).
    pub port_ip: HashMap<MapData, PortIpKey, u32>,
    /// Port forwards and their targets (`forward add`); None on a bridge
    /// whose programs predate them (`umlbr upgrade` adds it).
    pub nat_fwd: Option<HashMap<MapData, FwdKey, FwdVal>>,
    /// Each VLAN-aware port's VLANs.
    pub vlan: HashMap<MapData, u32, PortVlan>,
    /// The IPv6 masquerade's mappings, settings and counters.
    pub nat6_out: HashMap<MapData, Nat6Key, NatOut>,
    pub nat6_in: HashMap<MapData, Nat6Key, Nat6In>,
    pub nat6_config: Array<MapData, Nat6Config>,
    pub nat6_stats: PerCpuArray<MapData, Nat6Stats>,
}

/// The maps the programs `prog_ids` use, by name.
pub(crate) fn maps_of(prog_ids: &[u32]) -> Result<StdHashMap<String, MapData>> {
    let mut ids = Vec::new();
    for info in aya::programs::loaded_programs().filter_map(|p| p.ok()) {
        if prog_ids.contains(&info.id()) {
            let what = || format!("reading map ids of program {}", info.id());
            let found = info.map_ids().map_err(|e| Error::program(what(), e))?;
            ids.extend(found.unwrap_or_default());
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let mut found = StdHashMap::new();
    for id in ids {
        let data = MapData::from_id(id).map_err(map_err("(by id)"))?;
        let info = data.info().map_err(map_err("(by id)"))?;
        found.insert(info.name_as_str().unwrap_or("").to_string(), data);
    }
    Ok(found)
}

impl Maps {
    /// Open the maps the XDP and TC programs of a bridge use (the XDP
    /// program's id first).
    pub fn open(prog_ids: &[u32]) -> Result<Self> {
        let mut found = maps_of(prog_ids)?;
        let nat_fwd = match found.remove(names::NAT_FWD) {
            Some(data) => {
                let map = Map::from_map_data(data).map_err(map_err(names::NAT_FWD))?;
                Some(typed(map, names::NAT_FWD)?)
            }
            None => None,
        };
        let mut take = |map: &'static str| -> Result<Map> {
            let data = found.remove(map).ok_or_else(|| Error::NoMap {
                owner: format!("program {}", prog_ids[0]),
                map,
            })?;
            Map::from_map_data(data).map_err(map_err(map))
        };
        Ok(Maps {
            fdb: typed(take(names::FDB)?, names::FDB)?,
            ports: typed(take(names::PORTS)?, names::PORTS)?,
            port_list: typed(take(names::PORT_LIST)?, names::PORT_LIST)?,
            stats: typed(take(names::PORT_STATS)?, names::PORT_STATS)?,
            config: typed(take(names::CONFIG)?, names::CONFIG)?,
            nat_out: typed(take(names::NAT_OUT)?, names::NAT_OUT)?,
            nat_in: typed(take(names::NAT_IN)?, names::NAT_IN)?,
            nat_config: typed(take(names::NAT_CONFIG)?, names::NAT_CONFIG)?,
            nat_stats: typed(take(names::NAT_STATS)?, names::NAT_STATS)?,
            nat_mtu: typed(take(names::NAT_MTU)?, names::NAT_MTU)?,
            nat_quota: typed(take(names::NAT_QUOTA)?, names::NAT_QUOTA)?,
            learn: typed(take(names::LEARN)?, names::LEARN)?,
            nat_tx: typed(take(names::NAT_TX)?, names::NAT_TX)?,
            flood_isolated: typed(take(names::FLOOD_ISOLATED)?, names::FLOOD_ISOLATED)?,
            port_ip: typed(take(names::PORT_IP)?, names::PORT_IP)?,
            nat_fwd,
            vlan: typed(take(names::VLAN)?, names::VLAN)?,
            nat6_out: typed(take(names::NAT6_OUT)?, names::NAT6_OUT)?,
            nat6_in: typed(take(names::NAT6_IN)?, names::NAT6_IN)?,
            nat6_config: typed(take(names::NAT6_CONFIG)?, names::NAT6_CONFIG)?,
            nat6_stats: typed(take(names::NAT6_STATS)?, names::NAT6_STATS)?,
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

    pub fn nat6_config(&self) -> Result<Nat6Config> {
        self.nat6_config
            .get(&0, 0)
            .map_err(map_err(names::NAT6_CONFIG))
    }

    pub fn set_nat6_config(&mut self, c: Nat6Config) -> Result<()> {
        self.nat6_config
            .set(0, c, 0)
            .map_err(map_err(names::NAT6_CONFIG))
    }

    /// Ports in the port list, in attach order.
    pub fn port_list(&self) -> Result<Vec<u32>> {
        let nr = self.config()?.nr_ports;
        Ok((0..nr)
            .filter_map(|i| self.port_list.get(&i, 0).ok())
            .filter(|&p| p != 0)
            .collect())
    }

    /// Add `ifindex` to the devmap (named `iface` in errors).
    pub fn add_to_devmap(&mut self, ifindex: u32, iface: &str) -> Result<()> {
        Self::devmap_insert(&mut self.ports, ifindex, iface)
    }

    /// Add `ifindex` to the broadcast set of isolated ports' XDP floods.
    pub fn add_to_flood_isolated(&mut self, ifindex: u32, iface: &str) -> Result<()> {
        Self::devmap_insert(&mut self.flood_isolated, ifindex, iface)
    }

    /// Make `ifindex` the masquerade's XDP redirect target.
    pub fn add_nat_tx(&mut self, ifindex: u32, iface: &str) -> Result<()> {
        Self::devmap_insert(&mut self.nat_tx, ifindex, iface)
    }

    fn devmap_insert(map: &mut DevMapHash<MapData>, ifindex: u32, iface: &str) -> Result<()> {
        map.insert(ifindex, ifindex, None, 0)
            .map_err(|err| Error::DevMap {
                iface: iface.into(),
                err,
            })
    }
}

fn typed<T: TryFrom<Map, Error = MapError>>(map: Map, name: &'static str) -> Result<T> {
    T::try_from(map).map_err(map_err(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_sums_keep_the_ports_kind() {
        let cpu = |n: u64| PortStats {
            kind: 3,
            flags: 1,
            rx_packets: n,
            tc: 2 * n,
            ..Default::default()
        };
        let s = sum_of([cpu(1), cpu(2), cpu(4)]);
        assert_eq!((s.kind, s.flags, s.rx_packets, s.tc), (3, 1, 7, 14));
        let nat = NatStats {
            allocs: 5,
            ..Default::default()
        };
        assert_eq!(sum_of([nat, nat]).allocs, 10);
    }
}
