//! The forwarding database: listing, static entries, aging sweep.
use std::collections::HashMap as StdHashMap;

use serde::Serialize;
use umlbr_common::{FDB_F_STATIC, FdbEntry, FdbKey, names};

use crate::{
    bridge::Bridge,
    error::{Error, Result},
    link::{Net, fmt_mac, parse_mac},
    sys,
};

/// One FDB entry as `fdb show` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct FdbRow {
    pub bridge: String,
    pub mac: String,
    pub port: String,
    pub ifindex: u32,
    #[serde(rename = "static")]
    pub is_static: bool,
    /// Seconds since last seen (0 for static entries).
    pub age: f64,
}

fn map_err(source: aya::maps::MapError) -> Error {
    Error::Map {
        map: names::FDB,
        err: source,
    }
}

/// Entries of `br`, oldest last; aged-out learned entries are removed on
/// the way (the datapath ignores them already).
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
            let _ = br.maps.fdb.remove(&k);
            continue;
        }
        let port = if v.ifindex == br.switch_port.index {
            br.name.clone()
        } else {
            names
                .get(&v.ifindex)
                .cloned()
                .unwrap_or_else(|| format!("if{}", v.ifindex))
        };
        rows.push(FdbRow {
            bridge: br.name.clone(),
            mac: fmt_mac(&k.mac),
            port,
            ifindex: v.ifindex,
            is_static,
            age: if is_static { 0.0 } else { age_ns as f64 / 1e9 },
        });
    }
    rows.sort_by(|a, b| a.port.cmp(&b.port).then(a.mac.cmp(&b.mac)));
    Ok(rows)
}

/// Add (or replace) an entry for `mac` behind `iface`.
pub async fn add(net: &Net, mac: &str, iface: &str, is_static: bool) -> Result<String> {
    let mac_b = parse_mac(mac)?;
    if mac_b[0] & 1 != 0 || mac_b == [0; 6] {
        return Err(Error::MulticastMac(mac.into()));
    }
    let link = net.require(iface).await?;
    // The host interface stands for the switch port behind it.
    let all = Bridge::list(net).await?;
    let (mut br, port) = match all.into_iter().find_map(|b| {
        if b.host.index == link.index {
            let p = b.switch_port.index;
            Some((b, p))
        } else if b.port_ifindexes().contains(&link.index) {
            Some((b, link.index))
        } else {
            None
        }
    }) {
        Some(x) => x,
        None => return Err(Error::NotAttached(iface.into())),
    };
    let entry = FdbEntry {
        ifindex: port,
        flags: if is_static { FDB_F_STATIC } else { 0 },
        updated_ns: sys::monotonic_coarse_ns(),
    };
    br.maps
        .fdb
        .insert(FdbKey::new(mac_b), entry, 0)
        .map_err(map_err)?;
    Ok(br.name)
}

/// Remove the entry for `mac`.
pub async fn del(net: &Net, mac: &str, bridge: Option<&str>) -> Result<String> {
    let mac_b = parse_mac(mac)?;
    let mut br = Bridge::open_or_only(net, bridge).await?;
    let key = FdbKey::new(mac_b);
    if br.maps.fdb.get(&key, 0).is_err() {
        return Err(Error::NoSuchFdbEntry {
            mac: fmt_mac(&mac_b),
            bridge: br.name.clone(),
        });
    }
    br.maps.fdb.remove(&key).map_err(map_err)?;
    Ok(br.name)
}
