//! The forwarding database: every write userspace makes to it (static
//! entries, entries from `fdb add`, forgetting a port's MACs), listing, and
//! the aging sweep.
use std::collections::HashMap as StdHashMap;

use serde::Serialize;
use umlbr_common::{FDB_F_LOCAL, FDB_F_STATIC, FdbEntry, FdbKey, names};

use crate::{
    bridge::Bridge,
    error::{Error, Result},
    link::{Net, fmt_mac},
    object::{Maps, map_err},
    sys,
};

/// One FDB entry as `fdb show` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct FdbRow {
    pub bridge: String,
    pub mac: String,
    /// The VLAN (0: the default VLAN).
    pub vlan: u16,
    pub port: String,
    pub ifindex: u32,
    #[serde(rename = "static")]
    pub is_static: bool,
    /// Seconds since last seen (0 for static entries).
    pub age: f64,
}

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Ages, and moves when the MAC shows up on another port.
    Learned,
    /// Never ages, never moves.
    Static,
    /// Static, and the MAC of the port's own host interface (an uplink's):
    /// frames to it go up that interface's stack, not out of it.
    Local,
}

/// Write the entry for `mac` in the default VLAN: behind port `ifindex`,
/// as `what`.
pub fn put(maps: &mut Maps, mac: [u8; 6], ifindex: u32, what: Entry) -> Result<()> {
    put_in(maps, (mac, 0), ifindex, what)
}

/// Write the entry for `mac` in VLAN `vid`: behind port `ifindex`, as
/// `what`.
pub fn put_in(
    maps: &mut Maps,
    (mac, vid): ([u8; 6], u16),
    ifindex: u32,
    what: Entry,
) -> Result<()> {
    let flags = match what {
        Entry::Learned => 0,
        Entry::Static => FDB_F_STATIC,
        Entry::Local => FDB_F_STATIC | FDB_F_LOCAL,
    };
    let entry = FdbEntry {
        ifindex,
        flags,
        updated_ns: sys::monotonic_coarse_ns(),
    };
    let key = FdbKey::in_vlan(mac, vid);
    let old = maps.fdb.get(&key, 0).ok();
    maps.fdb
        .insert(key, entry, 0)
        .map_err(map_err(names::FDB))?;
    if let Some(old) = old {
        account(maps, &old, -1);
    }
    account(maps, &entry, 1);
    Ok(())
}

/// Keep a port's learning budget in step with a learned entry userspace
/// adds (`delta` 1) or removes (-1); the datapath does the same for its
/// own. Not atomic against the datapath: a racing update can be lost,
/// leaving the count off by one, which only moves the limit by one.
fn account(maps: &mut Maps, entry: &FdbEntry, delta: i32) {
    if entry.flags & FDB_F_STATIC != 0 {
        return;
    }
    if let Ok(mut b) = maps.learn.get(&entry.ifindex, 0) {
        b.count = b.count.saturating_add_signed(delta);
        let _ = maps.learn.insert(entry.ifindex, b, 0);
    }
}

/// Remove the entry under `key` and give back its port's budget.
fn remove(maps: &mut Maps, key: &FdbKey, entry: &FdbEntry) -> Result<()> {
    maps.fdb.remove(key).map_err(map_err(names::FDB))?;
    account(maps, entry, -1);
    Ok(())
}

/// Forget every MAC behind port `ifindex`.
pub fn forget_port(maps: &mut Maps, ifindex: u32) {
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
}

/// Entries of `br`, by port and then MAC; aged-out learned entries are
/// removed on the way (the datapath ignores them already).
pub async fn show(net: &Net, br: &mut Bridge) -> Result<Vec<FdbRow>> {
    let names: StdHashMap<u32, String> = net
        .links()
        .await?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    let aging_ns = br.maps.config()?.aging_ns;
    let now = sys::monotonic_coarse_ns();
    let entries: Vec<(FdbKey, FdbEntry)> = br.maps.fdb.iter().filter_map(|e| e.ok()).collect();
    let mut rows = Vec::new();
    for (k, v) in entries {
        let is_static = v.flags & FDB_F_STATIC != 0;
        let age_ns = now.saturating_sub(v.updated_ns);
        if !is_static && age_ns > aging_ns {
            let _ = remove(&mut br.maps, &k, &v);
            continue;
        }
        let port = match names.get(&v.ifindex) {
            _ if v.ifindex == br.switch_port.index => br.name.clone(),
            Some(n) => n.clone(),
            None => format!("if{}", v.ifindex),
        };
        rows.push(FdbRow {
            bridge: br.name.clone(),
            mac: fmt_mac(&k.mac),
            vlan: k.vlan,
            port,
            ifindex: v.ifindex,
            is_static,
            age: if is_static { 0.0 } else { age_ns as f64 / 1e9 },
        });
    }
    rows.sort_by(|a, b| {
        (a.port.cmp(&b.port))
            .then(a.vlan.cmp(&b.vlan))
            .then(a.mac.cmp(&b.mac))
    });
    Ok(rows)
}

/// Add (or replace) an entry for `mac` in VLAN `vid` behind `iface`,
/// which must carry the VLAN; without a VLAN, in each of the port's
/// VLANs (the default VLAN alone for a port without VLANs). Returns the
/// bridge's name.
pub async fn add(
    net: &Net,
    (mac, vid): ([u8; 6], Option<u16>),
    iface: &str,
    is_static: bool,
) -> Result<String> {
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(Error::MulticastMac(fmt_mac(&mac)));
    }
    let link = net.require(iface).await?;
    // The host interface stands for the switch port behind it.
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
    let mut br = br.lock(net).await?;
    // Read again under the lock: another command may have detached it.
    if !br.is_own(port) && !br.has_port(port) {
        return Err(Error::NotAttached(iface.into()));
    }
    let carried = crate::vlan::of(&br.maps, port).all();
    let vids = match vid {
        Some(v) if !carried.contains(&v) => {
            return Err(Error::NotInVlan {
                iface: iface.into(),
                vlan: v,
            });
        }
        Some(v) => vec![v],
        None => carried,
    };
    let what = if is_static {
        Entry::Static
    } else {
        Entry::Learned
    };
    for v in vids {
        put_in(&mut br.maps, (mac, v), port, what)?;
    }
    Ok(br.name)
}

/// Remove the entry for `mac` in VLAN `vid`; without a VLAN, in every
/// VLAN. Returns the bridge's name.
pub async fn del(
    net: &Net,
    (mac, vid): ([u8; 6], Option<u16>),
    bridge: Option<&str>,
) -> Result<String> {
    let br = Bridge::open_or_only(net, bridge).await?;
    let mut br = br.lock(net).await?;
    let found: Vec<(FdbKey, FdbEntry)> = br
        .maps
        .fdb
        .iter()
        .filter_map(|e| e.ok())
        .filter(|(k, _)| k.mac == mac && vid.is_none_or(|v| k.vlan == v))
        .collect();
    if found.is_empty() {
        return Err(Error::NoSuchFdbEntry {
            mac: fmt_mac(&mac),
            bridge: br.name.clone(),
        });
    }
    for (key, entry) in found {
        remove(&mut br.maps, &key, &entry)?;
    }
    Ok(br.name)
}
