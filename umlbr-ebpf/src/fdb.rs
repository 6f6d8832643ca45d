//! MAC learning and lookup with aging.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, macros::map, maps::LruHashMap};
use umlbr_common::{
    FDB_F_LOCAL, FDB_F_STATIC, FDB_REFRESH_NS, FDB_SIZE, FdbEntry, FdbKey, PortStats,
};

/// MAC -> port. LRU so that a full table (MAC churn, a flooding guest)
/// evicts the least recently used, usually aged, entries instead of
/// refusing to learn.
#[map(name = "UMLBR_FDB")]
static FDB: LruHashMap<FdbKey, FdbEntry> = LruHashMap::with_max_entries(FDB_SIZE, 0);

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: plain helper call. Coarse time is enough for aging and
    // cheaper than bpf_ktime_get_ns on every frame.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Learn `src` on `port`. A static entry never moves; a learned one moves
/// with its MAC.
#[inline(always)]
pub fn learn(src: [u8; 6], port: u32, now: u64, stats: &mut PortStats) {
    let key = FdbKey::new(src);
    if let Some(entry) = FDB.get_ptr_mut(key) {
        // SAFETY: pointer into the map value; a racing writer can at worst
        // store the same fields.
        let entry = unsafe { &mut *entry };
        if entry.flags & FDB_F_STATIC != 0 {
            return;
        }
        if entry.ifindex != port {
            entry.ifindex = port;
            entry.updated_ns = now;
            stats.moved += 1;
        } else if now.wrapping_sub(entry.updated_ns) > FDB_REFRESH_NS {
            entry.updated_ns = now;
        }
        return;
    }
    let entry = FdbEntry {
        ifindex: port,
        flags: 0,
        updated_ns: now,
    };
    // BPF_NOEXIST: a racing CPU may have learned it; either is right.
    if FDB.insert(key, entry, 1).is_ok() {
        stats.learned += 1;
    }
}

/// Port behind `dst` and whether it is the port's own host MAC, if known
/// and not aged out. An aged entry is removed.
#[inline(always)]
pub fn lookup(dst: [u8; 6], now: u64, aging_ns: u64) -> Option<(u32, bool)> {
    let key = FdbKey::new(dst);
    let entry = FDB.get_ptr(key)?;
    // SAFETY: pointer into the map value, read once.
    let entry = unsafe { *entry };
    if entry.flags & FDB_F_STATIC == 0 && now.wrapping_sub(entry.updated_ns) > aging_ns {
        let _ = FDB.remove(key);
        return None;
    }
    Some((entry.ifindex, entry.flags & FDB_F_LOCAL != 0))
}
