//! `umlbr upgrade`: this umlbr's programs replace a running bridge's on
//! every hook, and reuse the bridge's maps, so that its FDB, every NAT
//! mapping, its counters and settings carry over and guests' flows go on.
//!
//! 1. Under the bridge's lock, the maps its programs use are opened by id
//!    and each one's layout, as the kernel holds it (type, key and value
//!    size, most entries, flags), is compared with the new object's map
//!    of the same name (`plan`). Equal: the map is reused. Different,
//!    where a migration exists (`migration`: a map only userspace writes
//!    whose value gained trailing fields), the new object gets a map of
//!    the new layout and the entries are copied into it. A map the new
//!    object lacks, or one whose layout differs without a migration,
//!    would lose its entries: the upgrade is refused, naming each such
//!    map and both layouts, before anything changes. A map only the new
//!    object has is made empty.
//! 2. aya 0.14 reuses a map only from a bpffs pin
//!    (`EbpfLoader::map_pin_path`; it has no way to take a map's fd).
//!    umlbr keeps no pins, so the maps are pinned for the load only, on a
//!    bpffs of the upgrade's own mounted at
//!    `/run/umlbr/net<INODE>-<NAME>.upgrade` (a mount of bpffs is an
//!    instance of its own: nothing in `/sys/fs/bpf` sees them). The new
//!    object is loaded with them: its programs are verified against the
//!    very maps the running bridge uses.
//! 3. Every umlbr program on every interface of the bridge (ports, uplink,
//!    masquerade uplink, the host's switch port last) is replaced by the
//!    new one of the same name, each in one kernel step that names the
//!    program it replaces: XDP with XDP_FLAGS_REPLACE and
//!    IFLA_XDP_EXPECTED_FD, tcx with BPF_F_REPLACE, a clsact cls_bpf
//!    filter with NLM_F_REPLACE on its own priority and handle. No frame
//!    meets a hook without a program, and a program that another command
//!    put there meanwhile is never replaced unseen.
//! 4. The pins, the mount and its directory go.
//!
//! Killed half-way: every program, old or new, uses the same maps, so a
//! bridge with some hooks on old programs and some on new ones forwards
//! as either would. The pin directory left behind is the upgrade's
//! record: the next `umlbr upgrade` finds it, removes it, loads the
//! object again and puts it on every hook (`down` removes it too). A
//! migrated map is the exception to "the same maps": until the upgrade
//! completes, old programs read the old copy; since only userspace writes
//! such a map, and the bridge is found from its switch port, replaced
//! last (so later commands keep writing the old copy, which the next
//! upgrade copies again), run `upgrade` again before anything else.
use std::{
    collections::BTreeMap,
    fmt,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::DirBuilderExt,
    },
    path::PathBuf,
};

use aya::{EbpfLoader, programs::ProgramFd};
use aya_obj::EbpfSectionKind;
use umlbr_common::names;

use crate::{
    bridge::Bridge,
    error::{Error, Result},
    link::Net,
    lock,
    object::{self, Programs, Tc, maps_of, prog_fd},
    port,
};

/// A map's layout as the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

const PERF_EVENT_ARRAY: u32 = 4;
const DEVMAP: u32 = 14;
const CPUMAP: u32 = 16;
const DEVMAP_HASH: u32 = 25;
const RINGBUF: u32 = 27;

fn type_name(t: u32) -> String {
    match t {
        1 => "hash".into(),
        2 => "array".into(),
        4 => "perf event array".into(),
        5 => "per-CPU hash".into(),
        6 => "per-CPU array".into(),
        11 => "LPM trie".into(),
        14 => "devmap".into(),
        25 => "devmap hash".into(),
        27 => "ring buffer".into(),
        t => format!("type {t}"),
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, key {} B, value {} B, {} entries, flags {:#x}",
            type_name(self.map_type),
            self.key_size,
            self.value_size,
            self.max_entries,
            self.flags
        )
    }
}

impl Layout {
    /// Whether a running map of this layout can be the new object's map
    /// of layout `new`: equal in everything the object fixes. (The loader
    /// sizes a devmap's values by the kernel's features, a perf event
    /// array by the CPUs, a ring buffer by the page size; the kernel makes
    /// every devmap BPF_F_RDONLY_PROG.)
    pub fn fits(&self, new: &Layout) -> bool {
        const BPF_F_RDONLY_PROG: u32 = 1 << 7;
        let kernel_flags = if matches!(new.map_type, DEVMAP | DEVMAP_HASH) {
            BPF_F_RDONLY_PROG
        } else {
            0
        };
        let loader_value = matches!(new.map_type, DEVMAP | CPUMAP | DEVMAP_HASH | RINGBUF);
        let loader_max =
            (new.map_type == PERF_EVENT_ARRAY && new.max_entries == 0) || new.map_type == RINGBUF;
        self.map_type == new.map_type
            && self.key_size == new.key_size
            && (loader_value || self.value_size == new.value_size)
            && (loader_max || self.max_entries == new.max_entries)
            && self.flags & !kernel_flags == new.flags & !kernel_flags
    }
}

/// The kernel keeps 15 bytes of a map's name.
fn kernel_name(name: &str) -> String {
    name.chars().take(15).collect()
}

/// The maps of `object` that an upgrade reuses, by their name in the
/// kernel, with their name in the object: the map sections' (the data
/// sections, `.rodata` and the like, are the object's own, made anew).
pub fn object_layouts(object: &[u8]) -> Result<BTreeMap<String, (String, Layout)>> {
    let obj = aya_obj::Object::parse(object).map_err(Error::ObjectParse)?;
    Ok(obj
        .maps
        .iter()
        .filter(|(_, m)| {
            matches!(
                m.section_kind(),
                EbpfSectionKind::Maps | EbpfSectionKind::BtfMaps
            )
        })
        .map(|(name, m)| {
            let layout = Layout {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
                flags: m.map_flags(),
            };
            (kernel_name(name), (name.clone(), layout))
        })
        .collect())
}

/// Maps that only userspace writes, under the bridge's lock (the
/// datapath only reads them): their entries can be copied into a map of a
/// new layout without missing a write of the datapath's meanwhile.
const USERSPACE_WRITTEN: [&str; 4] = [
    names::CONFIG,
    names::NAT_CONFIG,
    names::PORT_IP,
    names::PORT_LIST,
];

/// Per-CPU maps the datapath writes whose value may grow: the port
/// counters, whose fields are added at the end (each zero meaning "none
/// counted"). Their copy misses what the old programs count between the
/// copy and their replacement (a few frames); the ports' records (kind,
/// flags) in them are userspace's and do not change meanwhile.
const COUNTERS: [&str; 1] = [names::PORT_STATS];

/// Moving one map's entries into the new object's map of another layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Migration {
    /// The value gained trailing fields: every entry is copied, the new
    /// fields zero (so a field added to a map's value must mean, at zero,
    /// what the layout without it meant). For hash and array maps that
    /// only userspace writes.
    TrailingFields {
        map: String,
        old: Layout,
        new: Layout,
    },
}

impl fmt::Display for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Migration::TrailingFields { map, old, new } => write!(
                f,
                "{map}: values of {} B zero-extended to {} B",
                old.value_size, new.value_size
            ),
        }
    }
}

/// The migration of running map `name` (layout `old`) into the new
/// object's map `full` (layout `new`), if one exists.
fn migration(name: &str, full: &str, old: &Layout, new: &Layout) -> Option<Migration> {
    const HASH: u32 = 1;
    const ARRAY: u32 = 2;
    const PERCPU_HASH: u32 = 5;
    let grown = (USERSPACE_WRITTEN.contains(&name) && matches!(old.map_type, HASH | ARRAY)
        || COUNTERS.contains(&name) && old.map_type == PERCPU_HASH)
        && old.map_type == new.map_type
        && old.key_size == new.key_size
        && old.max_entries == new.max_entries
        && old.flags == new.flags
        && new.value_size > old.value_size;
    grown.then(|| Migration::TrailingFields {
        map: full.into(),
        old: *old,
        new: *new,
    })
}

/// What an upgrade does with the maps.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Running maps the new programs use as they are (object names).
    pub reuse: Vec<String>,
    /// Maps only the new object has, made empty.
    pub fresh: Vec<String>,
    /// Running maps whose entries are copied into the new object's map of
    /// a new layout.
    pub migrate: Vec<Migration>,
}

/// Match the running bridge's maps (`running`, by kernel name) with the
/// new object's (`new`): every running map must have a counterpart of
/// the same layout, or a migration into its layout (`migration`), or its
/// entries would be lost; then nothing is changed and the error names
/// each such map with both layouts.
pub fn plan(
    bridge: &str,
    running: &BTreeMap<String, Layout>,
    new: &BTreeMap<String, (String, Layout)>,
) -> Result<Plan> {
    let mut plan = Plan::default();
    let mut refused = Vec::new();
    for (name, old) in running {
        // A data section (`.rodata`, `.bss`): the object's own constants.
        if name.starts_with('.') {
            continue;
        }
        match new.get(name) {
            Some((full, n)) if old.fits(n) => plan.reuse.push(full.clone()),
            Some((full, n)) => match migration(name, full, old, n) {
                Some(m) => plan.migrate.push(m),
                None => refused.push(format!("{name}: running {old}; new {n}")),
            },
            None => refused.push(format!(
                "{name}: running {old}; the new umlbr has no such map"
            )),
        }
    }
    plan.fresh = new
        .iter()
        .filter(|(k, _)| !running.contains_key(*k))
        .map(|(_, (full, _))| full.clone())
        .collect();
    if refused.is_empty() {
        Ok(plan)
    } else {
        Err(Error::LayoutChanged {
            bridge: bridge.into(),
            maps: refused.join("; "),
        })
    }
}

/// Where an upgrade of `bridge` pins the maps: a directory next to the
/// bridge's lock, with a bpffs of its own mounted on it.
fn pin_dir(bridge: &str) -> Result<PathBuf> {
    Ok(lock::path(bridge)?.with_extension("upgrade"))
}

/// Remove the pins of an upgrade of `bridge` (also of one killed
/// half-way), its bpffs and directory. Returns whether there were any.
pub fn remove_pins(bridge: &str) -> Result<bool> {
    let dir = pin_dir(bridge)?;
    if std::fs::symlink_metadata(&dir).is_err() {
        return Ok(false);
    }
    let what = |w: &str| format!("{w} {} (bridge {bridge}'s upgrade pins)", dir.display());
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(what("reading"), e))?;
    // The kernel's own files of a new bpffs (`maps.debug`, `progs.debug`
    // with CONFIG_BPF_PRELOAD) go with the unmount.
    for e in entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".debug"))
    {
        std::fs::remove_file(e.path()).map_err(|e| Error::io(what("emptying"), e))?;
    }
    match nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH) {
        // Not mounted: killed between making the directory and mounting.
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(Error::io(what("unmounting"), e.into())),
    }
    std::fs::remove_dir(&dir).map_err(|e| Error::io(what("deleting"), e))?;
    Ok(true)
}

/// Make the pin directory of `bridge`'s upgrade, with a bpffs on it that
/// only root may enter.
fn mount_pins(bridge: &str) -> Result<PathBuf> {
    let dir = pin_dir(bridge)?;
    let what = |w: &str| format!("{w} {} (bridge {bridge}'s upgrade pins)", dir.display());
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io(what("making"), e))?;
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some("bpf"),
        &dir,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|e| Error::io(what("mounting bpffs on"), e.into()))?;
    Ok(dir)
}

/// What `upgrade` did to one bridge.
#[derive(Debug, Default, serde::Serialize)]
pub struct Upgraded {
    pub bridge: String,
    /// Each replaced hook: interface, hook, old and new program id.
    pub replaced: Vec<Replaced>,
    /// Hooks already on the new programs (a re-run after a kill).
    pub already: usize,
    /// Maps reused (ids unchanged) and made new.
    pub maps_reused: Vec<String>,
    pub maps_new: Vec<String>,
    /// Maps whose entries were copied into a new layout, with how many.
    pub maps_migrated: Vec<(String, usize)>,
    /// An earlier upgrade of this bridge had been killed half-way.
    pub resumed: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct Replaced {
    pub iface: String,
    pub hook: &'static str,
    pub old: u32,
    pub new: u32,
}

/// The new object's program `name`: its fd and id.
fn new_prog<'a>(ebpf: &'a aya::Ebpf, name: &'static str) -> Result<(&'a ProgramFd, u32)> {
    let p = ebpf.program(name).ok_or(Error::NoProgram {
        name,
        kind: "XDP or TC",
    })?;
    let what = || format!("opening the new program {name}");
    let f = p.fd().map_err(|e| Error::program(what(), e))?;
    let id = p.info().map_err(|e| Error::program(what(), e))?.id();
    Ok((f, id))
}

/// Upgrade bridge `br` to this umlbr's programs (see the module's text).
pub async fn upgrade(net: &Net, br: Bridge) -> Result<Upgraded> {
    let br = port::lock(net, br).await?;
    let resumed = remove_pins(&br.name)?;
    let mut ids = vec![br.xdp_prog_id];
    for hook in Tc::BOTH {
        ids.push(br.require_tc_prog(hook)?.id());
    }
    let running_maps = maps_of(&ids)?;
    let mut running = BTreeMap::new();
    let mut running_ids = BTreeMap::new();
    for (name, data) in &running_maps {
        let info = data.info().map_err(object::map_err("(by id)"))?;
        let map_type = info.map_type().map_err(object::map_err("(by id)"))? as u32;
        running.insert(
            name.clone(),
            Layout {
                map_type,
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
                flags: info.map_flags(),
            },
        );
        running_ids.insert(name.clone(), info.id());
    }
    let new = object_layouts(object::BPF_OBJECT)?;
    let plan = plan(&br.name, &running, &new)?;

    // The record of this upgrade, until its end: the pins.
    let dir = mount_pins(&br.name)?;
    let res = replace_all(net, &br, &plan, &dir, &running_maps, &running_ids).await;
    // The new programs hold the maps now; the pins may go.
    let cleaned = remove_pins(&br.name);
    let mut done = res?;
    cleaned?;
    done.resumed = resumed;
    done.maps_reused = plan.reuse;
    done.maps_new = plan.fresh;
    Ok(done)
}

async fn replace_all(
    net: &Net,
    br: &Bridge,
    plan: &Plan,
    dir: &std::path::Path,
    running_maps: &std::collections::HashMap<String, aya::maps::MapData>,
    running_ids: &BTreeMap<String, u32>,
) -> Result<Upgraded> {
    let mut loader = EbpfLoader::new();
    for name in &plan.reuse {
        let kname = kernel_name(name);
        // Always there (`plan` took the name from them).
        let Some(data) = running_maps.get(&kname) else {
            continue;
        };
        let path = dir.join(&kname);
        data.pin(&path).map_err(|err| Error::Pin {
            map: kname.clone(),
            err,
        })?;
        loader.map_pin_path(name.as_str(), path);
    }
    let ebpf = object::load_with(&mut loader)?;
    let mut migrated = Vec::new();
    for m in &plan.migrate {
        let Migration::TrailingFields { map, old, new } = m;
        let kname = kernel_name(map);
        let what = || format!("migrating map {kname} of bridge {} ({m})", br.name);
        let missing = || Error::io(what(), std::io::ErrorKind::NotFound.into());
        // Both there: `plan` found them by these names and types.
        let from = running_maps.get(&kname).ok_or_else(missing)?;
        let to = match ebpf.map(map) {
            Some(
                aya::maps::Map::HashMap(d)
                | aya::maps::Map::Array(d)
                | aya::maps::Map::PerCpuHashMap(d),
            ) => d,
            _ => return Err(missing()),
        };
        let sizes = (old.value_size as usize, new.value_size as usize);
        let (from, to, key) = (from.fd().as_fd(), to.fd().as_fd(), old.key_size as usize);
        let n = if COUNTERS.contains(&kname.as_str()) {
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::io(what(), e))?;
            crate::sys::copy_percpu_entries_extended(from, to, key, sizes, cpus)
        } else {
            crate::sys::copy_entries_extended(from, to, key, sizes)
        }
        .map_err(|e| Error::io(what(), e))?;
        migrated.push((kname, n));
    }
    let (xdp_fd, xdp_id) = new_prog(&ebpf, names::XDP_PROG)?;
    let (tc_fd, tc_id) = new_prog(&ebpf, names::TC_PROG)?;
    let (out_fd, out_id) = new_prog(&ebpf, names::TC_OUT_PROG)?;
    // The new programs must use the running maps themselves: same ids.
    let now = maps_of(&[xdp_id, tc_id, out_id])?;
    for name in &plan.reuse {
        let kname = kernel_name(name);
        let got = now.get(&kname).and_then(|d| d.info().ok()).map(|i| i.id());
        let want = running_ids.get(&kname).copied();
        if got != want {
            return Err(Error::NotReused {
                bridge: br.name.clone(),
                map: kname,
                running: want.unwrap_or(0),
                new: got.unwrap_or(0),
            });
        }
    }

    // Every interface with umlbr's programs: ports (also half-detached
    // ones), the masquerade's uplink, the host's switch port last (the
    // bridge is found from it).
    let sw = br.switch_port.index;
    let mut ifs: Vec<u32> = br
        .recorded_ports()
        .into_iter()
        .filter(|&i| i != sw)
        .collect();
    let nat_if = br.maps.nat_config()?.nat_ifindex;
    if nat_if != 0 && !ifs.contains(&nat_if) {
        ifs.push(nat_if);
    }
    ifs.push(sw);

    let progs = Programs::read();
    let mut done = Upgraded {
        bridge: br.name.clone(),
        maps_migrated: migrated,
        ..Default::default()
    };
    for ifindex in ifs {
        // Gone since (a tap deleted): nothing to replace there.
        let Some(link) = net.link_by_index(ifindex).await? else {
            continue;
        };
        if let Some(old) = link.xdp_prog.filter(|&id| progs.is_umlbr_xdp(id)) {
            if old == xdp_id {
                done.already += 1;
            } else {
                let old_fd = prog_fd(old)?;
                net.replace_xdp(
                    link.index,
                    &link.name,
                    xdp_fd.as_fd().as_raw_fd(),
                    old_fd.as_fd().as_raw_fd(),
                    link.xdp_mode.flag(),
                )
                .await?;
                done.replaced.push(Replaced {
                    iface: link.name.clone(),
                    hook: "XDP",
                    old,
                    new: xdp_id,
                });
            }
        }
        for hook in Tc::BOTH {
            let Some((at, old)) = hook.umlbr_hooked(&link.name) else {
                continue;
            };
            let (fd, id) = match hook {
                Tc::Ingress => (tc_fd, tc_id),
                Tc::Egress => (out_fd, out_id),
            };
            if old.id() == id {
                done.already += 1;
                continue;
            }
            hook.replace(link.index, &link.name, fd, &old, at)?;
            done.replaced.push(Replaced {
                iface: link.name.clone(),
                hook: hook.what(),
                old: old.id(),
                new: id,
            });
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(value: u32) -> Layout {
        Layout {
            map_type: 1,
            key_size: 8,
            value_size: value,
            max_entries: 4096,
            flags: 0,
        }
    }

    fn new_of(maps: &[(&str, Layout)]) -> BTreeMap<String, (String, Layout)> {
        maps.iter()
            .map(|(n, l)| (n.to_string(), (n.to_string(), *l)))
            .collect()
    }

    #[test]
    fn same_layouts_are_reused_and_new_maps_made() {
        let running = BTreeMap::from([
            ("UMLBR_FDB".to_string(), hash(16)),
            (".rodata".to_string(), hash(1)),
        ]);
        let new = new_of(&[("UMLBR_FDB", hash(16)), ("UMLBR_NEW", hash(4))]);
        let p = plan("br0", &running, &new).unwrap();
        assert_eq!(p.reuse, ["UMLBR_FDB"]);
        assert_eq!(p.fresh, ["UMLBR_NEW"]);
    }

    /// A fabricated mismatch: the FDB's value grew, a map vanished. Both
    /// named, with both layouts; nothing reused.
    #[test]
    fn a_changed_or_dropped_map_is_refused_by_name() {
        let running = BTreeMap::from([
            ("UMLBR_FDB".to_string(), hash(16)),
            ("UMLBR_OLD".to_string(), hash(4)),
        ]);
        let new = new_of(&[("UMLBR_FDB", hash(24))]);
        let e = plan("br0", &running, &new).unwrap_err().to_string();
        assert!(e.contains("bridge br0"), "{e}");
        assert!(
            e.contains("UMLBR_FDB: running hash, key 8 B, value 16 B, 4096 entries, flags 0x0; new hash, key 8 B, value 24 B"),
            "{e}"
        );
        assert!(e.contains("UMLBR_OLD: running"), "{e}");
        assert!(e.contains("no such map"), "{e}");
    }

    /// A fabricated layout change with a migration: the configuration's
    /// value gained a trailing field. Copied, not refused; the same change
    /// to the FDB (which the datapath writes: a copy could miss its
    /// writes) is refused.
    #[test]
    fn a_grown_userspace_map_is_migrated() {
        let array = |v| Layout {
            map_type: 2,
            key_size: 4,
            value_size: v,
            max_entries: 1,
            flags: 0,
        };
        let running = BTreeMap::from([
            (names::CONFIG.to_string(), array(32)),
            (names::FDB.to_string(), hash(16)),
        ]);
        let new = new_of(&[(names::CONFIG, array(40)), (names::FDB, hash(16))]);
        let p = plan("br0", &running, &new).unwrap();
        assert_eq!(p.reuse, [names::FDB]);
        assert_eq!(
            p.migrate,
            [Migration::TrailingFields {
                map: names::CONFIG.into(),
                old: array(32),
                new: array(40)
            }]
        );
        let new = new_of(&[(names::CONFIG, array(40)), (names::FDB, hash(24))]);
        let e = plan("br0", &running, &new).unwrap_err().to_string();
        assert!(e.contains("UMLBR_FDB: running"), "{e}");
        // Shrunk: no migration (the copy would cut fields off).
        let new = new_of(&[(names::CONFIG, array(24)), (names::FDB, hash(16))]);
        assert!(plan("br0", &running, &new).is_err());
    }

    /// The port counters grew a field (`vlan`): copied per CPU.
    #[test]
    fn grown_port_counters_are_migrated() {
        let percpu = |v| Layout {
            map_type: 5,
            key_size: 4,
            value_size: v,
            max_entries: 256,
            flags: 0,
        };
        let running = BTreeMap::from([(names::PORT_STATS.to_string(), percpu(168))]);
        let new = new_of(&[(names::PORT_STATS, percpu(176))]);
        let p = plan("br0", &running, &new).unwrap();
        assert_eq!(
            p.migrate,
            [Migration::TrailingFields {
                map: names::PORT_STATS.into(),
                old: percpu(168),
                new: percpu(176)
            }]
        );
        // Another per-CPU map (the NAT's counters) has none.
        let running = BTreeMap::from([(names::NAT_STATS.to_string(), percpu(112))]);
        let new = new_of(&[(names::NAT_STATS, percpu(120))]);
        assert!(plan("br0", &running, &new).is_err());
    }

    #[test]
    fn loader_sized_fields_do_not_count() {
        let devmap = |v| Layout {
            map_type: DEVMAP_HASH,
            key_size: 4,
            value_size: v,
            max_entries: 64,
            flags: 0,
        };
        assert!(devmap(8).fits(&devmap(4)));
        let mut running = devmap(8);
        running.flags = 0x80;
        assert!(running.fits(&devmap(4)), "the kernel's BPF_F_RDONLY_PROG");
        let mut perf = devmap(4);
        perf.map_type = PERF_EVENT_ARRAY;
        let mut running = perf;
        running.max_entries = 2;
        perf.max_entries = 0;
        assert!(running.fits(&perf));
        assert!(!hash(16).fits(&Layout {
            max_entries: 1,
            ..hash(16)
        }));
    }

    /// The object this umlbr embeds: every map a layout, the data
    /// sections left out.
    #[test]
    fn the_embedded_object_has_the_bridge_maps() {
        let maps = object_layouts(object::BPF_OBJECT).unwrap();
        for n in [names::FDB, names::NAT_OUT, names::NAT_IN, names::CONFIG] {
            assert!(maps.contains_key(n), "{n}: {maps:?}");
        }
        assert!(maps.keys().all(|k| !k.starts_with('.')), "{maps:?}");
    }
}
