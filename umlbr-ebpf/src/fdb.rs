//! MAC learning and lookup with aging, within each port's learning limit.
//!
//! The FDB is a plain hash map: it never evicts, so a port flooding
//! source MACs cannot push static entries or other ports' MACs out, as it
//! could an LRU map. Instead each port has a budget (`PortLearn`): a
//! source over it is not learned (its frames are still switched), and an
//! aged entry is removed when it is next looked up, or by a sweep of the
//! table that a port at its limit may start once a second.
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    helpers::{bpf_for_each_map_elem, bpf_ktime_get_coarse_ns, bpf_map_delete_elem},
    macros::map,
    maps::HashMap,
};
use umlbr_common::{
    Config, DEFAULT_AGING_SECS, EV_AGED, EV_LEARNED, EV_MOVED, FDB_F_LOCAL, FDB_F_STATIC,
    FDB_REFRESH_NS, FDB_SIZE, FDB_SWEEP_INTERVAL_NS, FLOOD_BURST, FdbEntry, FdbKey, MAX_PORTS,
    PortLearn, PortStats,
};

/// MAC -> port.
#[map(name = "UMLBR_FDB")]
static FDB: HashMap<FdbKey, FdbEntry> = HashMap::with_max_entries(FDB_SIZE, 0);

/// Port ifindex -> its learning budget.
#[map(name = "UMLBR_LEARN")]
static LEARN: HashMap<u32, PortLearn> = HashMap::with_max_entries(MAX_PORTS, 0);

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: plain helper call. Coarse time is enough for aging and
    // cheaper than bpf_ktime_get_ns on every frame.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The bridge's aging time (`up --aging`), or the default.
#[inline(always)]
pub fn aging_ns(cfg: &Config) -> u64 {
    if cfg.aging_ns != 0 {
        cfg.aging_ns
    } else {
        DEFAULT_AGING_SECS * 1_000_000_000
    }
}

/// Learn `src` in VLAN `vid` on `port`. A static entry never moves, and a frame from
/// another port with its MAC is spoofed: false, the caller drops it. A
/// learned entry moves with its MAC if the new port has room for it.
#[inline(always)]
pub fn learn(
    (src, vid): ([u8; 6], u16),
    port: u32,
    now: u64,
    aging_ns: u64,
    stats: &mut PortStats,
) -> bool {
    let key = FdbKey::in_vlan(src, vid);
    if let Some(entry) = FDB.get_ptr_mut(key) {
        // SAFETY: pointer into the map value; a racing writer can at worst
        // store the same fields.
        let entry = unsafe { &mut *entry };
        if entry.flags & FDB_F_STATIC != 0 {
            return entry.ifindex == port;
        }
        if entry.ifindex != port {
            if !charge(port, now, aging_ns) {
                stats.learn_limited += 1;
                return true;
            }
            let from = entry.ifindex;
            credit(from);
            entry.ifindex = port;
            entry.updated_ns = now;
            stats.moved += 1;
            crate::events::port(EV_MOVED, port, &src, from);
        } else if now.wrapping_sub(entry.updated_ns) > FDB_REFRESH_NS {
            entry.updated_ns = now;
        }
        return true;
    }
    learn_new(key, port, now, aging_ns, stats);
    true
}

/// The rare path of `learn`: a MAC the table does not have.
#[inline(never)]
fn learn_new(key: FdbKey, port: u32, now: u64, aging_ns: u64, stats: &mut PortStats) {
    if !charge(port, now, aging_ns) {
        stats.learn_limited += 1;
        return;
    }
    let entry = FdbEntry {
        ifindex: port,
        flags: 0,
        updated_ns: now,
    };
    // BPF_NOEXIST: a racing CPU may have learned it; either is right, and
    // only the one that inserted keeps its charge.
    match FDB.insert(key, entry, 1) {
        Ok(()) => {
            stats.learned += 1;
            crate::events::port(EV_LEARNED, port, &key.mac, 0);
        }
        Err(e) => {
            credit(port);
            // -E2BIG: the table is full.
            if e == -7 {
                stats.learn_limited += 1;
            }
        }
    }
}

/// Take one entry of `port`'s budget; at the limit, sweep aged entries
/// (at most once a second per port) and try again.
#[inline(always)]
fn charge(port: u32, now: u64, aging_ns: u64) -> bool {
    let Some(budget) = LEARN.get_ptr_mut(port) else {
        // A port without a budget (attached by an older umlbr): no limit.
        return true;
    };
    // SAFETY: pointer into a map value that lives as long as the map.
    let budget = unsafe { &mut *budget };
    if budget.max != 0 && budget.count >= budget.max {
        if now.wrapping_sub(budget.swept_ns) < FDB_SWEEP_INTERVAL_NS {
            return false;
        }
        budget.swept_ns = now;
        sweep(now, aging_ns);
        if budget.count >= budget.max {
            return false;
        }
    }
    // Checked, then added: CPUs racing here can overshoot the limit by at
    // most one entry each.
    atomic_add(&mut budget.count, 1);
    true
}

/// Give back one entry of `port`'s budget.
#[inline(always)]
fn credit(port: u32) {
    if let Some(budget) = LEARN.get_ptr_mut(port) {
        // SAFETY: as in `charge`.
        let budget = unsafe { &mut *budget };
        if budget.count > 0 {
            atomic_add(&mut budget.count, u32::MAX);
        }
    }
}

#[inline(always)]
fn atomic_add(v: &mut u32, n: u32) {
    // core has no atomic types for BPF; with its result unused this
    // intrinsic is one BPF_ATOMIC add (BPF_XADD), which every kernel has.
    // SAFETY: `v` is a valid, aligned u32.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(v, n) };
}

#[inline(always)]
fn atomic_add64(v: &mut u64, n: u64) {
    // As `atomic_add`: one 64-bit BPF_XADD.
    // SAFETY: `v` is a valid, aligned u64.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(v, n) };
}

/// Storm control: whether `port` may flood one more frame now. Only
/// floods ask (one lookup of the port's shared budget; known unicast
/// never gets here). The bucket is a GCRA: `flood_tat_ns` is when the
/// port's floods would have been paid for at `flood_gap_ns` each; a flood
/// passes while that is at most FLOOD_BURST - 1 gaps ahead of now, and
/// moves it one gap on. One value for all CPUs, so the limit is the
/// port's, whichever CPUs its frames arrive on: the gap is added
/// atomically; checked, then added, CPUs racing here pass at most one
/// flood each beyond the limit, and when an idle bucket restarts at now
/// (a plain store), the floods of other CPUs in the same instant may be
/// forgotten: a few frames, never a rate.
#[inline(always)]
pub fn flood_allowed(port: u32) -> bool {
    let Some(b) = LEARN.get_ptr_mut(port) else {
        // A port without a budget (attached by an older umlbr): no limit.
        return true;
    };
    // SAFETY: pointer into a map value that lives as long as the map.
    let b = unsafe { &mut *b };
    let gap = b.flood_gap_ns as u64;
    if gap == 0 {
        return true;
    }
    let now = now();
    let mut tat = b.flood_tat_ns;
    if tat < now {
        // Quiet for a while: the burst is whole again.
        b.flood_tat_ns = now;
        tat = now;
    }
    // The burst's last flood may be paid FLOOD_BURST - 1 gaps ahead.
    if tat - now > (FLOOD_BURST - 1) * gap {
        return false;
    }
    atomic_add64(&mut b.flood_tat_ns, gap);
    true
}

#[repr(C)]
struct Sweep {
    now: u64,
    aging_ns: u64,
}

/// Remove every aged learned entry, crediting its port.
#[inline(never)]
fn sweep(now: u64, aging_ns: u64) {
    let mut ctx = Sweep { now, aging_ns };
    // SAFETY: the helper walks FDB and calls `sweep_one` for each element
    // with the map, the key, the value and `ctx`.
    unsafe {
        bpf_for_each_map_elem(
            &FDB as *const _ as *mut c_void,
            sweep_one as *mut c_void,
            &mut ctx as *mut Sweep as *mut c_void,
            0,
        );
    }
}

extern "C" fn sweep_one(
    map: *mut c_void,
    key: *const FdbKey,
    entry: *const FdbEntry,
    ctx: *const Sweep,
) -> i64 {
    // SAFETY: the helper passes valid pointers to the element and `ctx`.
    let (entry, ctx, k) = unsafe { (*entry, &*ctx, *key) };
    if entry.flags & FDB_F_STATIC == 0 && ctx.now.wrapping_sub(entry.updated_ns) > ctx.aging_ns {
        // SAFETY: deleting the element being visited is allowed.
        if unsafe { bpf_map_delete_elem(map, key as *const c_void) } == 0 {
            credit(entry.ifindex);
            crate::events::port(EV_AGED, entry.ifindex, &k.mac, 0);
        }
    }
    0
}

/// Whether `mac` (in VLAN `vid`) is a static entry of `port` (a MAC bound to a locked
/// port, `attach --lock --mac`). A read, never a write: a locked port
/// learns nothing.
#[inline(always)]
pub fn static_of(mac: [u8; 6], vid: u16, port: u32) -> bool {
    // SAFETY: pointer into the map value, read once.
    FDB.get_ptr(FdbKey::in_vlan(mac, vid))
        .is_some_and(|e| unsafe { (*e).flags & FDB_F_STATIC != 0 && (*e).ifindex == port })
}

/// Port behind `dst` in VLAN `vid` and whether it is the port's own host MAC, if known
/// and not aged out. An aged entry is removed.
#[inline(always)]
pub fn lookup(dst: [u8; 6], vid: u16, now: u64, aging_ns: u64) -> Option<(u32, bool)> {
    let key = FdbKey::in_vlan(dst, vid);
    let entry = FDB.get_ptr(key)?;
    // SAFETY: pointer into the map value, read once.
    let entry = unsafe { *entry };
    if entry.flags & FDB_F_STATIC == 0 && now.wrapping_sub(entry.updated_ns) > aging_ns {
        aged(&key, entry.ifindex);
        return None;
    }
    Some((entry.ifindex, entry.flags & FDB_F_LOCAL != 0))
}

/// Remove the aged entry `key` of `port`. Out of line: `lookup` is
/// inlined into every program, umlbr_tc among them.
#[inline(never)]
fn aged(key: &FdbKey, port: u32) {
    // Only the CPU whose removal succeeds gives the entry back.
    if FDB.remove(key).is_ok() {
        credit(port);
        crate::events::port(EV_AGED, port, &key.mac, 0);
    }
}

/// The port that learned `mac` (not a port's own host MAC), if its entry
/// is not aged out; 0 otherwise. `lookup` without the Option: a port read
/// out of `Some((port, false))` compiled to a read of an uninitialised
/// register on the None path, which the verifier refuses.
#[inline(always)]
pub fn learned_port(mac: [u8; 6], now: u64, aging_ns: u64) -> u32 {
    let Some(e) = FDB.get_ptr(FdbKey::new(mac)) else {
        return 0;
    };
    // SAFETY: pointer into the map value, read once.
    let e = unsafe { *e };
    let aged = e.flags & FDB_F_STATIC == 0 && now.wrapping_sub(e.updated_ns) > aging_ns;
    if aged || e.flags & FDB_F_LOCAL != 0 {
        return 0;
    }
    e.ifindex
}
