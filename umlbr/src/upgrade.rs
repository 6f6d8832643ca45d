//! `umlbr upgrade`: this umlbr's programs replace a running bridge's on
//! every hook, and reuse the bridge's maps, so that its FDB, every NAT
//! mapping, its counters and settings carry over and guests' flows go on.
//!
//! 0. The bridge is found (`Target`) as `Bridge` finds it, but its maps
//!    are not opened as this umlbr's types, which an older umlbr's may
//!    not fit; its interfaces are found from their hooks.
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
//! 3. Every umlbr program on the bridge's maps (one sharing a map with the
//!    switch port's programs), on every interface (ports, uplink,
//!    masquerade uplink, the host's switch port last), is replaced by the
//!    new one of the same name, each in one kernel step that names the
//!    program it replaces: XDP with XDP_FLAGS_REPLACE and
//!    IFLA_XDP_EXPECTED_FD, tcx with BPF_F_REPLACE, a clsact cls_bpf
//!    filter with NLM_F_REPLACE on its own priority and handle. No frame
//!    meets a hook without a program, and a program that another command
//!    put there meanwhile is never replaced unseen.
//! 4. The pins, the mount and its directory go.
//!
//! Layouts the kernel cannot see: a map whose value keeps its size but
//! changes meaning. Every bridge stores the layout version of its maps
//! (`Config::layout`, `umlbr_common::LAYOUT_VERSION`; 0 on bridges made
//! before it was stored, whose maps are version 1's). Equal to this
//! umlbr's: as above. Older: `HISTORY` says, step by step, which maps'
//! entries must be rewritten (`Change::Rewrite`: copied into the new
//! object's map through a function) or cannot be carried (`Refuse`); the
//! others mean the same and are compared by layout as above. Newer, or a
//! step refused: nothing changes and the error names both versions. A
//! rewrite also copies the configuration, whose new copy gets the new
//! version before any hook sees it, so that the version always travels
//! with the maps it describes (the switch port's programs say which);
//! otherwise the version is written last, once every hook is replaced.
//!
//! A replace that fails (another program put on the hook since it was
//! read, so the kernel refuses the expected one) rolls back: every hook
//! already replaced gets its old program back, in the same one-step
//! replace, and the error names the interface and hook. The bridge is
//! then as before the upgrade.
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
    collections::{BTreeMap, BTreeSet},
    fmt,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::DirBuilderExt,
    },
    path::PathBuf,
};

use aya::{
    EbpfLoader,
    maps::MapData,
    programs::{ProgramFd, ProgramInfo},
};
use aya_obj::EbpfSectionKind;
use umlbr_common::{LAYOUT_VERSION, names};

use crate::{
    error::{Error, Result},
    link::{Link, Net, check_ifname},
    lock::{self, BridgeLock},
    object::{self, Hook, Programs, Tc, maps_of, prog_fd},
    sys,
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

/// Per-CPU maps the datapath writes whose value may grow: the port and
/// the NAT counters, whose fields are added at the end (each zero meaning
/// "none counted"). Their copy misses what the old programs count between the
/// copy and their replacement (a few frames); the ports' records (kind,
/// flags) in them are userspace's and do not change meanwhile.
const COUNTERS: [&str; 2] = [names::PORT_STATS, names::NAT_STATS];

/// The layout version of a bridge whose `Config::layout` is 0: made
/// before the version was stored, by a umlbr whose maps are version 1's.
pub const UNVERSIONED: u16 = 1;

/// What one layout version changed in one map's entries.
#[derive(Clone, Copy, Debug)]
pub enum Change {
    /// Each entry, as key and value bytes of the new layout (the old
    /// value zero-extended), is rewritten in place into the new meaning.
    Rewrite(fn(&mut [u8], &mut [u8])),
    /// The entries cannot be carried over (the reason): upgrading a
    /// bridge from before this version is refused.
    Refuse(&'static str),
}

/// One version of the maps' layout: what changed from the version before.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// The version this step makes (from `to - 1`).
    pub to: u16,
    /// What changed, for messages.
    pub what: &'static str,
    /// The maps whose old entries the new programs cannot use as they
    /// are, by name. Every other map keeps its entries (reused, or copied
    /// zero-extended as without a version).
    pub maps: &'static [(&'static str, Change)],
}

/// Every layout version after the first (`LAYOUT_VERSION`), oldest first:
/// add one with each bump (`history_is_complete` checks). A step whose
/// changes every old entry already means (a pad whose zero means what it
/// meant, a map added) is one line with no maps.
pub const HISTORY: &[Step] = &[];

/// The layout versions an upgrade knows: its own, and the steps to it.
#[derive(Clone, Copy, Debug)]
pub struct Versions<'a> {
    pub current: u16,
    pub history: &'a [Step],
}

/// This umlbr's.
pub const VERSIONS: Versions<'static> = Versions {
    current: LAYOUT_VERSION,
    history: HISTORY,
};

/// A version's rewrite of one map's entries.
#[derive(Clone, Copy, Debug)]
pub struct Rewrite {
    pub to: u16,
    pub what: &'static str,
    pub edit: fn(&mut [u8], &mut [u8]),
}

// The function is the step's: its version says which.
impl PartialEq for Rewrite {
    fn eq(&self, o: &Self) -> bool {
        self.to == o.to && self.what == o.what
    }
}
impl Eq for Rewrite {}

/// Moving one map's entries into the new object's map of the same name:
/// every entry copied, its value zero-extended to the new size (so a
/// field added to a map's value must mean, at zero, what the layout
/// without it meant), then given to each version's rewrite in turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The map's name in the object.
    pub map: String,
    pub old: Layout,
    pub new: Layout,
    /// Oldest first; none: a copy.
    pub rewrites: Vec<Rewrite>,
}

impl fmt::Display for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (old, new) = (self.old.value_size, self.new.value_size);
        if old == new {
            write!(f, "{}: entries copied", self.map)?;
        } else {
            write!(
                f,
                "{}: values of {old} B zero-extended to {new} B",
                self.map
            )?;
        }
        for r in &self.rewrites {
            write!(f, ", rewritten for version {} ({})", r.to, r.what)?;
        }
        Ok(())
    }
}

const HASH: u32 = 1;
const ARRAY: u32 = 2;
const PERCPU_HASH: u32 = 5;
const PERCPU_ARRAY: u32 = 6;
const LPM_TRIE: u32 = 11;

/// Whether a map's entries can be copied from layout `old` into `new`
/// one by one (values zero-extended): one value per key, the same keys.
fn copyable(old: &Layout, new: &Layout) -> bool {
    matches!(
        old.map_type,
        HASH | ARRAY | PERCPU_HASH | PERCPU_ARRAY | LPM_TRIE
    ) && old.map_type == new.map_type
        && old.key_size == new.key_size
        && old.max_entries <= new.max_entries
        && old.flags == new.flags
        && new.value_size >= old.value_size
}

/// The migration of running map `name` (layout `old`) into the new
/// object's map `full` (layout `new`) for a layout change alone, if one
/// exists: a map only userspace writes, or the counters (`COUNTERS`),
/// whose value gained trailing fields.
fn migration(name: &str, full: &str, old: &Layout, new: &Layout) -> Option<Migration> {
    let grown = (USERSPACE_WRITTEN.contains(&name) && matches!(old.map_type, HASH | ARRAY)
        || COUNTERS.contains(&name) && matches!(old.map_type, PERCPU_HASH | PERCPU_ARRAY))
        && copyable(old, new)
        && old.max_entries == new.max_entries
        && new.value_size > old.value_size;
    grown.then(|| Migration {
        map: full.into(),
        old: *old,
        new: *new,
        rewrites: Vec::new(),
    })
}

/// What an upgrade does with the maps.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The running bridge's layout version (0 read as `UNVERSIONED`), and
    /// this umlbr's.
    pub from: u16,
    pub to: u16,
    /// Running maps the new programs use as they are (object names).
    pub reuse: Vec<String>,
    /// Maps only the new object has, made empty.
    pub fresh: Vec<String>,
    /// Running maps whose entries are copied into the new object's map.
    pub migrate: Vec<Migration>,
}

impl Plan {
    /// Whether the configuration is copied (then the version goes into
    /// the copy before any hook sees it).
    fn config_migrated(&self) -> bool {
        self.migrate.iter().any(|m| m.map == names::CONFIG)
    }
}

/// The rewrites of each map (kernel names) from version `from` to `to`,
/// oldest first; or why some map cannot be carried over.
fn rewrites_between(
    from: u16,
    to: u16,
    versions: &Versions<'_>,
) -> std::result::Result<BTreeMap<String, Vec<Rewrite>>, String> {
    let mut rewrites: BTreeMap<String, Vec<Rewrite>> = BTreeMap::new();
    let mut refused = Vec::new();
    for v in from + 1..=to {
        let Some(step) = versions.history.iter().find(|s| s.to == v) else {
            return Err(format!("this umlbr does not know what version {v} changed"));
        };
        for (map, change) in step.maps {
            match change {
                Change::Rewrite(edit) => {
                    rewrites.entry(kernel_name(map)).or_default().push(Rewrite {
                        to: v,
                        what: step.what,
                        edit: *edit,
                    })
                }
                Change::Refuse(why) => {
                    refused.push(format!("{map}: version {v} ({}): {why}", step.what))
                }
            }
        }
    }
    if refused.is_empty() {
        Ok(rewrites)
    } else {
        Err(format!(
            "these maps cannot be carried over: {}",
            refused.join("; ")
        ))
    }
}

/// Match the running bridge's maps (`running`, by kernel name; its
/// layout version `stored`, as `Config::layout` holds it) with the new
/// object's (`new`): every running map must mean the same to the new
/// programs, through the version steps between (`versions`), and have a
/// counterpart of the same layout or a migration into its layout, or its
/// entries would be lost; then nothing is changed and the error names the
/// versions and each such map with both layouts.
pub fn plan(
    bridge: &str,
    running: &BTreeMap<String, Layout>,
    new: &BTreeMap<String, (String, Layout)>,
    stored: u16,
    versions: &Versions<'_>,
) -> Result<Plan> {
    let from = if stored == 0 { UNVERSIONED } else { stored };
    let to = versions.current;
    let refuse = |why: String| Error::LayoutRefused {
        bridge: bridge.into(),
        running: from,
        current: to,
        why,
    };
    if from > to {
        return Err(refuse(format!(
            "version {from} is newer than this umlbr knows"
        )));
    }
    let rewrites = rewrites_between(from, to, versions).map_err(refuse)?;
    let mut refused = Vec::new();
    let mut plan = Plan {
        from,
        to,
        ..Default::default()
    };
    for (name, old) in running {
        // A data section (`.rodata`, `.bss`): the object's own constants.
        if name.starts_with('.') {
            continue;
        }
        let Some((full, n)) = new.get(name) else {
            refused.push(format!(
                "{name}: running {old}; the new umlbr has no such map"
            ));
            continue;
        };
        if let Some(rw) = rewrites.get(name) {
            if copyable(old, n) {
                plan.migrate.push(Migration {
                    map: full.clone(),
                    old: *old,
                    new: *n,
                    rewrites: rw.clone(),
                });
            } else {
                refused.push(format!(
                    "{name}: running {old}; new {n}: its entries cannot be copied to be rewritten"
                ));
            }
        } else if old.fits(n) {
            plan.reuse.push(full.clone());
        } else if let Some(m) = migration(name, full, old, n) {
            plan.migrate.push(m);
        } else {
            refused.push(format!("{name}: running {old}; new {n}"));
        }
    }
    if !refused.is_empty() {
        return Err(refuse(format!(
            "these maps differ and no migration exists, so their entries would be lost: {}",
            refused.join("; ")
        )));
    }
    // Rewritten maps are new maps: the configuration, holding their
    // version, goes with them.
    if plan.migrate.iter().any(|m| !m.rewrites.is_empty()) && !plan.config_migrated() {
        if let (Some(i), Some(old), Some((_, n))) = (
            plan.reuse.iter().position(|m| m == names::CONFIG),
            running.get(names::CONFIG),
            new.get(names::CONFIG),
        ) {
            plan.reuse.remove(i);
            plan.migrate.push(Migration {
                map: names::CONFIG.into(),
                old: *old,
                new: *n,
                rewrites: Vec::new(),
            });
        }
    }
    plan.fresh = new
        .iter()
        .filter(|(k, _)| !running.contains_key(*k))
        .map(|(_, (full, _))| full.clone())
        .collect();
    Ok(plan)
}

/// Where `Config::layout` sits in the configuration's value (key 0), in
/// every version.
const LAYOUT_OFFSET: usize = 30;

/// The layout version a bridge's configuration map `config` (values of
/// `value_size` bytes) holds: 0 if it predates the field.
fn read_version(config: &MapData, value_size: u32) -> Result<u16> {
    let what = || format!("reading map {} (the layout version)", names::CONFIG);
    let v = sys::lookup_raw(
        config.fd().as_fd(),
        &0u32.to_ne_bytes(),
        value_size as usize,
    )
    .map_err(|e| Error::io(what(), e))?
    .unwrap_or_default();
    Ok(v.get(LAYOUT_OFFSET..LAYOUT_OFFSET + 2)
        .map_or(0, |b| u16::from_ne_bytes([b[0], b[1]])))
}

/// Store layout version `version` in configuration map `config`.
fn write_version(config: &MapData, value_size: u32, version: u16) -> Result<()> {
    let what = || format!("writing map {} (the layout version)", names::CONFIG);
    let key = 0u32.to_ne_bytes();
    let fd = config.fd().as_fd();
    let mut v = sys::lookup_raw(fd, &key, value_size as usize)
        .map_err(|e| Error::io(what(), e))?
        .unwrap_or_else(|| vec![0; value_size as usize]);
    let Some(b) = v.get_mut(LAYOUT_OFFSET..LAYOUT_OFFSET + 2) else {
        return Err(Error::io(
            what(),
            std::io::Error::new(std::io::ErrorKind::InvalidData, "value too short"),
        ));
    };
    b.copy_from_slice(&version.to_ne_bytes());
    sys::update_raw(fd, &key, &v).map_err(|e| Error::io(what(), e))
}

/// A bridge as `upgrade` finds it: a veth pair whose switch side carries
/// umlbr's three programs, as `Bridge` finds one, but without opening its
/// maps as this umlbr's types: an older umlbr's may not fit them (a value
/// that grew), which is what an upgrade is for.
pub struct Target {
    pub name: String,
    switch_port: Link,
    /// The switch port's XDP, TC and TC egress programs.
    prog_ids: Vec<u32>,
    /// Held while it is upgraded.
    lock: Option<BridgeLock>,
}

impl Target {
    /// Bridge `name`, or every bridge of the namespace.
    pub async fn find(net: &Net, name: Option<&str>) -> Result<Vec<Target>> {
        if let Some(n) = name {
            check_ifname(n)?;
        }
        let links = net.links().await?;
        let progs = Programs::read();
        let mut out = Vec::new();
        for host in links.iter().filter(|l| l.kind.as_deref() == Some("veth")) {
            if name.is_some_and(|n| n != host.name) {
                continue;
            }
            let Some(sw) = links.iter().find(|l| Some(l.index) == host.peer) else {
                continue;
            };
            let Some(xdp) = sw.xdp_prog.filter(|&id| progs.is_umlbr_xdp(id)) else {
                continue;
            };
            if sw.peer != Some(host.index) || host.xdp_prog.is_some_and(|i| progs.is_umlbr_xdp(i)) {
                continue;
            }
            let mut prog_ids = vec![xdp];
            prog_ids.extend(
                Tc::BOTH
                    .into_iter()
                    .filter_map(|hook| hook.umlbr_prog(&sw.name))
                    .map(|p| p.id()),
            );
            // Without both TC programs: an `up` killed half-way, no bridge
            // (as for `Bridge`).
            if prog_ids.len() < 1 + Tc::BOTH.len() {
                continue;
            }
            out.push(Target {
                name: host.name.clone(),
                switch_port: sw.clone(),
                prog_ids,
                lock: None,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        match name {
            Some(n) if out.is_empty() => Err(Error::NoSuchBridge(n.into())),
            _ => Ok(out),
        }
    }

    /// This bridge under its lock, found again under it.
    async fn lock(self, net: &Net) -> Result<Target> {
        if self.lock.is_some() {
            return Ok(self);
        }
        let held = lock::take(&self.name)?;
        let mut t = Target::find(net, Some(&self.name)).await?.remove(0);
        t.lock = Some(held);
        Ok(t)
    }

    /// Every interface with umlbr's programs on this bridge's maps (a
    /// program sharing a map with the switch port's): ports, half-detached
    /// ones, uplinks; the host's switch port last (the bridge is found
    /// from it). With the ids of those programs: a umlbr program on other
    /// maps (another bridge's, another load's) is not this bridge's, and
    /// an upgrade leaves it alone. Found from the hooks, not from the
    /// bridge's port list, which an older layout may keep otherwise.
    async fn interfaces(&self, net: &Net) -> Result<(Vec<Link>, BTreeSet<u32>)> {
        let mut prog_maps: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for p in aya::programs::loaded_programs().filter_map(|p| p.ok()) {
            let name = p.name_as_str().unwrap_or("");
            if [names::XDP_PROG, names::TC_PROG, names::TC_OUT_PROG].contains(&name) {
                let what = || format!("reading map ids of program {}", p.id());
                let ids = p.map_ids().map_err(|e| Error::program(what(), e))?;
                prog_maps.insert(p.id(), ids.unwrap_or_default());
            }
        }
        let ours: BTreeSet<u32> = self
            .prog_ids
            .iter()
            .flat_map(|id| prog_maps.get(id).cloned().unwrap_or_default())
            .collect();
        let shares = |id: &u32| {
            prog_maps
                .get(id)
                .is_some_and(|m| m.iter().any(|i| ours.contains(i)))
        };
        let progs: BTreeSet<u32> = prog_maps.keys().copied().filter(shares).collect();
        let mut out = Vec::new();
        for l in net.links().await? {
            if l.index == self.switch_port.index {
                continue;
            }
            let tc = Tc::BOTH
                .into_iter()
                .filter_map(|hook| hook.umlbr_prog(&l.name))
                .any(|p| progs.contains(&p.id()));
            if tc || l.xdp_prog.is_some_and(|id| progs.contains(&id)) {
                out.push(l);
            }
        }
        out.push(self.switch_port.clone());
        Ok((out, progs))
    }
}

/// The running bridge's maps as the kernel holds them.
struct Running {
    maps: std::collections::HashMap<String, MapData>,
    layouts: BTreeMap<String, Layout>,
    ids: BTreeMap<String, u32>,
    /// `Config::layout` as stored (0: before versions).
    stored: u16,
}

impl Running {
    fn read(br: &Target) -> Result<Running> {
        let maps = maps_of(&br.prog_ids)?;
        let mut layouts = BTreeMap::new();
        let mut map_ids = BTreeMap::new();
        for (name, data) in &maps {
            let info = data.info().map_err(object::map_err("(by id)"))?;
            let map_type = info.map_type().map_err(object::map_err("(by id)"))? as u32;
            layouts.insert(
                name.clone(),
                Layout {
                    map_type,
                    key_size: info.key_size(),
                    value_size: info.value_size(),
                    max_entries: info.max_entries(),
                    flags: info.map_flags(),
                },
            );
            map_ids.insert(name.clone(), info.id());
        }
        let config = maps.get(names::CONFIG).ok_or_else(|| Error::NoMap {
            owner: format!("bridge {}", br.name),
            map: names::CONFIG,
        })?;
        let stored = read_version(config, layouts[names::CONFIG].value_size)?;
        Ok(Running {
            maps,
            layouts,
            ids: map_ids,
            stored,
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
    /// The maps' layout version before (0: not stored) and after.
    pub layout_from: u16,
    pub layout_to: u16,
}

#[derive(Debug, serde::Serialize)]
pub struct Replaced {
    pub iface: String,
    pub hook: &'static str,
    pub old: u32,
    pub new: u32,
}

/// The new object's program `name`: its fd and what the kernel says of it.
fn new_prog<'a>(ebpf: &'a aya::Ebpf, name: &'static str) -> Result<(&'a ProgramFd, ProgramInfo)> {
    let p = ebpf.program(name).ok_or(Error::NoProgram {
        name,
        kind: "XDP or TC",
    })?;
    let what = || format!("opening the new program {name}");
    let f = p.fd().map_err(|e| Error::program(what(), e))?;
    let info = p.info().map_err(|e| Error::program(what(), e))?;
    Ok((f, info))
}

/// `upgrade` without hooks into it: what the binary runs.
pub type BeforeReplace<'a> = &'a dyn Fn(&str, &'static str);

/// Upgrade bridge `br` to this umlbr's programs (see the module's text).
pub async fn upgrade(net: &Net, br: Target) -> Result<Upgraded> {
    upgrade_with(net, br, &VERSIONS, &|_, _| {}).await
}

/// `upgrade` with the layout versions `versions` (this umlbr's:
/// `VERSIONS`) and `before_replace`, called with each interface and hook
/// ("XDP", "TC", "TC egress") after its program is read and just before
/// it is replaced (tests put another program there: the race the
/// expected-program replace guards against).
pub async fn upgrade_with(
    net: &Net,
    br: Target,
    versions: &Versions<'_>,
    before_replace: BeforeReplace<'_>,
) -> Result<Upgraded> {
    let br = br.lock(net).await?;
    let resumed = remove_pins(&br.name)?;
    let running = Running::read(&br)?;
    let new = object_layouts(object::BPF_OBJECT)?;
    let plan = plan(&br.name, &running.layouts, &new, running.stored, versions)?;

    // The record of this upgrade, until its end: the pins.
    let dir = mount_pins(&br.name)?;
    let res = replace_all(net, &br, &plan, &dir, &running, before_replace).await;
    // The new programs hold the maps now; the pins may go.
    let cleaned = remove_pins(&br.name);
    let mut done = res?;
    cleaned?;
    done.resumed = resumed;
    done.maps_reused = plan.reuse;
    done.maps_new = plan.fresh;
    done.layout_from = running.stored;
    done.layout_to = plan.to;
    Ok(done)
}

/// What `upgrade --dry-run` shows: what `upgrade` would do with the maps.
#[derive(Debug, serde::Serialize)]
pub struct Preview {
    pub bridge: String,
    /// `Config::layout` as stored (0: before versions), and this umlbr's.
    pub layout_stored: u16,
    pub layout_from: u16,
    pub layout_to: u16,
    pub maps_reused: Vec<String>,
    pub maps_new: Vec<String>,
    pub maps_migrated: Vec<String>,
    /// The interfaces whose programs would be replaced, the host's switch
    /// port last.
    pub interfaces: Vec<String>,
    /// An earlier upgrade of this bridge was killed half-way: this one
    /// completes it.
    pub resumes: bool,
}

/// What `upgrade` of `br` would do, changing nothing; a refusal is the
/// error `upgrade` would give.
pub async fn preview(net: &Net, br: &Target, versions: &Versions<'_>) -> Result<Preview> {
    let running = Running::read(br)?;
    let new = object_layouts(object::BPF_OBJECT)?;
    let plan = plan(&br.name, &running.layouts, &new, running.stored, versions)?;
    let (links, _) = br.interfaces(net).await?;
    let interfaces = links.into_iter().map(|l| l.name).collect();
    Ok(Preview {
        bridge: br.name.clone(),
        layout_stored: running.stored,
        layout_from: plan.from,
        layout_to: plan.to,
        maps_migrated: plan.migrate.iter().map(|m| m.to_string()).collect(),
        maps_reused: plan.reuse,
        maps_new: plan.fresh,
        interfaces,
        resumes: std::fs::symlink_metadata(pin_dir(&br.name)?).is_ok(),
    })
}

/// A hook replaced, and how to put its old program back.
enum Undo {
    Xdp {
        index: u32,
        iface: String,
        old: ProgramFd,
        mode: u32,
    },
    Tc {
        index: u32,
        iface: String,
        hook: Tc,
        at: Hook,
        old: ProgramFd,
    },
}

/// Copy migration `m`'s entries from the running map into the new
/// object's (`only_missing`: the second pass, keys added since).
fn migrate(
    running: &Running,
    ebpf: &aya::Ebpf,
    m: &Migration,
    bridge: &str,
    only_missing: bool,
) -> Result<usize> {
    let kname = kernel_name(&m.map);
    let what = || format!("migrating map {kname} of bridge {bridge} ({m})");
    let missing = || Error::io(what(), std::io::ErrorKind::NotFound.into());
    // Both there: `plan` found them by these names and types.
    let from = running.maps.get(&kname).ok_or_else(missing)?;
    let to = match ebpf.map(&m.map) {
        Some(
            aya::maps::Map::HashMap(d)
            | aya::maps::Map::Array(d)
            | aya::maps::Map::LpmTrie(d)
            | aya::maps::Map::PerCpuHashMap(d)
            | aya::maps::Map::PerCpuArray(d),
        ) => d,
        _ => return Err(missing()),
    };
    if matches!(m.old.map_type, PERCPU_HASH | PERCPU_ARRAY) {
        // The counters: copied once, before the replaces (a second
        // pass would put back counts the new programs have added to).
        if !m.rewrites.is_empty() {
            return Err(Error::io(what(), std::io::ErrorKind::Unsupported.into()));
        }
        if only_missing {
            return Ok(0);
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::io(what(), e))?;
        return sys::copy_percpu_entries_extended(
            from.fd().as_fd(),
            to.fd().as_fd(),
            m.old.key_size as usize,
            (m.old.value_size as usize, m.new.value_size as usize),
            cpus,
        )
        .map_err(|e| Error::io(what(), e));
    }
    let edit = |k: &mut [u8], v: &mut [u8]| {
        for r in &m.rewrites {
            (r.edit)(k, v);
        }
    };
    sys::copy_entries(
        from.fd().as_fd(),
        to.fd().as_fd(),
        m.old.key_size as usize,
        (m.old.value_size as usize, m.new.value_size as usize),
        &edit,
        only_missing,
    )
    .map_err(|e| Error::io(what(), e))
}

/// The new object's three programs.
struct NewProgs<'a> {
    xdp: (&'a ProgramFd, ProgramInfo),
    tc: (&'a ProgramFd, ProgramInfo),
    out: (&'a ProgramFd, ProgramInfo),
}

impl<'a> NewProgs<'a> {
    fn of(ebpf: &'a aya::Ebpf) -> Result<Self> {
        Ok(Self {
            xdp: new_prog(ebpf, names::XDP_PROG)?,
            tc: new_prog(ebpf, names::TC_PROG)?,
            out: new_prog(ebpf, names::TC_OUT_PROG)?,
        })
    }

    fn ids(&self) -> [u32; 3] {
        [self.xdp.1.id(), self.tc.1.id(), self.out.1.id()]
    }

    /// The program for TC `hook`.
    fn tc(&self, hook: Tc) -> &(&'a ProgramFd, ProgramInfo) {
        match hook {
            Tc::Ingress => &self.tc,
            Tc::Egress => &self.out,
        }
    }
}

/// Where the replace stands: the hooks replaced so far (with what puts
/// each back), and the one being replaced, for the error.
#[derive(Default)]
struct Progress {
    undo: Vec<Undo>,
    at_hook: Option<(String, &'static str)>,
}

async fn replace_all(
    net: &Net,
    br: &Target,
    plan: &Plan,
    dir: &std::path::Path,
    running: &Running,
    before_replace: BeforeReplace<'_>,
) -> Result<Upgraded> {
    let (ebpf, migrated) = load_over(br, plan, dir, running)?;
    let progs = NewProgs::of(&ebpf)?;
    check_reused(br, plan, running, &progs)?;
    let mut done = Upgraded {
        bridge: br.name.clone(),
        maps_migrated: migrated,
        ..Default::default()
    };
    let mut progress = Progress::default();
    let res = replace_hooks(net, br, &progs, &mut done, &mut progress, before_replace).await;
    if let Err(err) = res {
        let Some((iface, hook)) = progress.at_hook else {
            // Before any replace: nothing to roll back.
            return Err(err);
        };
        let n = progress.undo.len();
        let failed = roll_back(net, &progs, progress.undo).await;
        return Err(Error::UpgradeRolledBack {
            bridge: br.name.clone(),
            iface,
            hook,
            rolled_back: n - failed.len(),
            not_rolled_back: failed.join("; "),
            err: Box::new(err),
        });
    }
    finish(br, plan, running, &ebpf)?;
    Ok(done)
}

/// Load the new object over the running maps it reuses (pinned in
/// `dir`), copy the migrated ones' entries, and, if the configuration
/// was migrated, give it the new version before any hook sees it.
fn load_over(
    br: &Target,
    plan: &Plan,
    dir: &std::path::Path,
    running: &Running,
) -> Result<(aya::Ebpf, Vec<(String, usize)>)> {
    let mut loader = EbpfLoader::new();
    for name in &plan.reuse {
        let kname = kernel_name(name);
        // Always there (`plan` took the name from them).
        let Some(data) = running.maps.get(&kname) else {
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
        let n = migrate(running, &ebpf, m, &br.name, false)?;
        migrated.push((kernel_name(&m.map), n));
    }
    if plan.config_migrated() {
        let Some(aya::maps::Map::Array(c)) = ebpf.map(names::CONFIG) else {
            return Err(Error::NoMap {
                owner: "umlbr's eBPF object".into(),
                map: names::CONFIG,
            });
        };
        let size = plan
            .migrate
            .iter()
            .find(|m| m.map == names::CONFIG)
            .map_or(0, |m| m.new.value_size);
        write_version(c, size, plan.to)?;
    }
    Ok((ebpf, migrated))
}

/// The new programs must use the running maps themselves: same ids.
fn check_reused(br: &Target, plan: &Plan, running: &Running, progs: &NewProgs) -> Result<()> {
    let now = maps_of(&progs.ids())?;
    for name in &plan.reuse {
        let kname = kernel_name(name);
        let got = now.get(&kname).and_then(|d| d.info().ok()).map(|i| i.id());
        let want = running.ids.get(&kname).copied();
        if got != want {
            return Err(Error::NotReused {
                bridge: br.name.clone(),
                map: kname,
                running: want.unwrap_or(0),
                new: got.unwrap_or(0),
            });
        }
    }
    Ok(())
}

/// Replace every hook of the bridge that runs one of its programs with
/// the new one, each in one step naming the old program.
async fn replace_hooks(
    net: &Net,
    br: &Target,
    progs: &NewProgs<'_>,
    done: &mut Upgraded,
    progress: &mut Progress,
    before_replace: BeforeReplace<'_>,
) -> Result<()> {
    let (xdp_fd, xdp_id) = (progs.xdp.0, progs.xdp.1.id());
    let (links, ours) = br.interfaces(net).await?;
    for link in links {
        if let Some(old) = link.xdp_prog.filter(|id| ours.contains(id)) {
            if old == xdp_id {
                done.already += 1;
            } else {
                progress.at_hook = Some((link.name.clone(), "XDP"));
                let old_fd = prog_fd(old)?;
                before_replace(&link.name, "XDP");
                net.replace_xdp(
                    link.index,
                    &link.name,
                    xdp_fd.as_fd().as_raw_fd(),
                    old_fd.as_fd().as_raw_fd(),
                    link.xdp_mode.flag(),
                )
                .await?;
                progress.undo.push(Undo::Xdp {
                    index: link.index,
                    iface: link.name.clone(),
                    old: old_fd,
                    mode: link.xdp_mode.flag(),
                });
                done.replaced.push(Replaced {
                    iface: link.name.clone(),
                    hook: "XDP",
                    old,
                    new: xdp_id,
                });
            }
        }
        for hook in Tc::BOTH {
            let Some((at, old)) = hook
                .umlbr_hooked(&link.name)
                .filter(|(_, p)| ours.contains(&p.id()))
            else {
                continue;
            };
            let (fd, info) = progs.tc(hook);
            let id = info.id();
            if old.id() == id {
                done.already += 1;
                continue;
            }
            progress.at_hook = Some((link.name.clone(), hook.what()));
            // Held for the rollback: the old program stays loaded.
            let old_fd = object::fd_of(&old)?;
            before_replace(&link.name, hook.what());
            hook.replace(link.index, &link.name, fd, &old, at)?;
            progress.undo.push(Undo::Tc {
                index: link.index,
                iface: link.name.clone(),
                hook,
                at,
                old: old_fd,
            });
            done.replaced.push(Replaced {
                iface: link.name.clone(),
                hook: hook.what(),
                old: old.id(),
                new: id,
            });
        }
    }
    Ok(())
}

/// Put the old programs back on the hooks in `undo`, the last replaced
/// first (the switch port's, if any, at the end); what could not be put
/// back, as text.
async fn roll_back(net: &Net, progs: &NewProgs<'_>, undo: Vec<Undo>) -> Vec<String> {
    let mut failed = Vec::new();
    for u in undo.into_iter().rev() {
        let r = match &u {
            Undo::Xdp {
                index,
                iface,
                old,
                mode,
            } => net
                .replace_xdp(
                    *index,
                    iface,
                    old.as_fd().as_raw_fd(),
                    progs.xdp.0.as_fd().as_raw_fd(),
                    *mode,
                )
                .await
                .map_err(|e| format!("{iface} XDP: {e}")),
            Undo::Tc {
                index,
                iface,
                hook,
                at,
                old,
            } => hook
                .replace(*index, iface, old, &progs.tc(*hook).1, *at)
                .map_err(|e| format!("{iface} {}: {e}", hook.what())),
        };
        if let Err(e) = r {
            failed.push(e);
        }
    }
    failed
}

/// After every hook runs the new programs: copy the entries the old ones
/// added to migrated maps meanwhile (datapath-written maps only), then
/// store the new version if the configuration was reused.
fn finish(br: &Target, plan: &Plan, running: &Running, ebpf: &aya::Ebpf) -> Result<()> {
    for m in &plan.migrate {
        if !USERSPACE_WRITTEN.contains(&kernel_name(&m.map).as_str()) {
            migrate(running, ebpf, m, &br.name, true)?;
        }
    }
    if !plan.config_migrated() && running.stored != plan.to {
        // Last: a kill before this leaves the old number, and a re-run
        // does the same again.
        let size = running.layouts.get(names::CONFIG).map(|l| l.value_size);
        if let (Some(c), Some(size)) = (running.maps.get(names::CONFIG), size) {
            write_version(c, size, plan.to)?;
        }
    }
    Ok(())
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
        let p = plan("br0", &running, &new, 1, &VERSIONS).unwrap();
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
        let e = plan("br0", &running, &new, 1, &VERSIONS)
            .unwrap_err()
            .to_string();
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
        let p = plan("br0", &running, &new, 1, &VERSIONS).unwrap();
        assert_eq!(p.reuse, [names::FDB]);
        assert_eq!(
            p.migrate,
            [Migration {
                map: names::CONFIG.into(),
                old: array(32),
                new: array(40),
                rewrites: Vec::new(),
            }]
        );
        let new = new_of(&[(names::CONFIG, array(40)), (names::FDB, hash(24))]);
        let e = plan("br0", &running, &new, 1, &VERSIONS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("UMLBR_FDB: running"), "{e}");
        // Shrunk: no migration (the copy would cut fields off).
        let new = new_of(&[(names::CONFIG, array(24)), (names::FDB, hash(16))]);
        assert!(plan("br0", &running, &new, 1, &VERSIONS).is_err());
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
        let p = plan("br0", &running, &new, 1, &VERSIONS).unwrap();
        assert_eq!(
            p.migrate,
            [Migration {
                map: names::PORT_STATS.into(),
                old: percpu(168),
                new: percpu(176),
                rewrites: Vec::new(),
            }]
        );
        // The NAT's counters (a per-CPU array) grew `frag_needed` and
        // `too_big`: copied per CPU too.
        let percpu_array = |v| Layout {
            map_type: 6,
            key_size: 4,
            value_size: v,
            max_entries: 1,
            flags: 0,
        };
        let running = BTreeMap::from([(names::NAT_STATS.to_string(), percpu_array(112))]);
        let new = new_of(&[(names::NAT_STATS, percpu_array(128))]);
        let p = plan("br0", &running, &new, 1, &VERSIONS).unwrap();
        assert_eq!(p.migrate.len(), 1);
        // Another per-CPU map (the IPv6 NAT's counters) has none.
        let running = BTreeMap::from([(names::NAT6_STATS.to_string(), percpu_array(80))]);
        let new = new_of(&[(names::NAT6_STATS, percpu_array(88))]);
        assert!(plan("br0", &running, &new, 1, &VERSIONS).is_err());
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

    fn mark(_: &mut [u8], v: &mut [u8]) {
        v[0] |= 0x80;
    }

    fn bridge_maps() -> (BTreeMap<String, Layout>, BTreeMap<String, (String, Layout)>) {
        let array = Layout {
            map_type: 2,
            key_size: 4,
            value_size: 32,
            max_entries: 1,
            flags: 0,
        };
        let running = BTreeMap::from([
            (names::CONFIG.to_string(), array),
            (names::FDB.to_string(), hash(16)),
            (names::NAT_OUT.to_string(), hash(48)),
        ]);
        let new = new_of(&[
            (names::CONFIG, array),
            (names::FDB, hash(16)),
            (names::NAT_OUT, hash(48)),
        ]);
        (running, new)
    }

    /// Equal versions, and a bridge from before versions (0: version 1),
    /// plan as layouts alone did.
    #[test]
    fn unversioned_is_version_one() {
        let (running, new) = bridge_maps();
        let one = Versions {
            current: 1,
            history: &[],
        };
        for stored in [0, 1] {
            let p = plan("br0", &running, &new, stored, &one).unwrap();
            assert_eq!((p.from, p.to), (1, 1));
            assert_eq!(p.reuse.len(), 3);
            assert!(p.migrate.is_empty());
        }
    }

    /// A bridge newer than this umlbr, or a version whose step this umlbr
    /// lacks: refused, naming both versions and what to do.
    #[test]
    fn newer_or_unknown_versions_are_refused() {
        let (running, new) = bridge_maps();
        let e = plan("br0", &running, &new, 3, &VERSIONS)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layout version 3, this umlbr's are version 1"),
            "{e}"
        );
        assert!(e.contains("newer"), "{e}");
        assert!(e.contains("`umlbr down br0`"), "{e}");
        let gap = Versions {
            current: 3,
            history: &[Step {
                to: 3,
                what: "x",
                maps: &[],
            }],
        };
        let e = plan("br0", &running, &new, 1, &gap)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not know what version 2 changed"), "{e}");
    }

    /// Layouts the kernel sees as equal, meanings that differ: the step's
    /// map is copied through its rewrite, the configuration with it (the
    /// version goes into the copy), the rest reused; a step that cannot
    /// carry a map refuses, naming it, the step and both versions.
    #[test]
    fn a_step_rewrites_its_maps_or_refuses() {
        let (running, new) = bridge_maps();
        let two = Versions {
            current: 2,
            history: &[Step {
                to: 2,
                what: "FDB flags moved",
                maps: &[(names::FDB, Change::Rewrite(mark))],
            }],
        };
        let p = plan("br0", &running, &new, 1, &two).unwrap();
        assert_eq!((p.from, p.to), (1, 2));
        assert_eq!(p.reuse, [names::NAT_OUT]);
        let maps: Vec<&str> = p.migrate.iter().map(|m| m.map.as_str()).collect();
        assert_eq!(maps, [names::FDB, names::CONFIG]);
        assert_eq!(p.migrate[0].rewrites.len(), 1);
        assert!(p.config_migrated());
        assert!(p.migrate[0].to_string().contains("rewritten for version 2"));
        // Already at version 2: nothing to rewrite.
        let p = plan("br0", &running, &new, 2, &two).unwrap();
        assert!(p.migrate.is_empty());
        let refused = Versions {
            current: 2,
            history: &[Step {
                to: 2,
                what: "NAT keys per VLAN",
                maps: &[(
                    names::NAT_OUT,
                    Change::Refuse("no VLAN known for old mappings"),
                )],
            }],
        };
        let e = plan("br0", &running, &new, 0, &refused)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layout version 1, this umlbr's are version 2"),
            "{e}"
        );
        assert!(
            e.contains("UMLBR_NAT_OUT: version 2 (NAT keys per VLAN): no VLAN known"),
            "{e}"
        );
    }

    /// Every version after the first has its step, in order, naming only
    /// maps the object has: a bump without its step fails here, not in an
    /// upgrade.
    #[test]
    fn history_is_complete() {
        let maps = object_layouts(object::BPF_OBJECT).unwrap();
        let tos: Vec<u16> = HISTORY.iter().map(|s| s.to).collect();
        // (A range from 2, empty while the version is 1.)
        let want: Vec<u16> = (1..LAYOUT_VERSION).map(|v| v + 1).collect();
        assert_eq!(
            tos, want,
            "HISTORY's steps, for LAYOUT_VERSION {LAYOUT_VERSION}"
        );
        for s in HISTORY {
            for (m, _) in s.maps {
                assert!(maps.contains_key(&kernel_name(m)), "version {}: {m}", s.to);
            }
        }
    }
}
