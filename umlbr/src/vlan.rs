//! VLAN-aware ports: a port's VLANs (`attach --vlan/--trunk/--pvid`,
//! `umlbr vlan IFACE ...`) in UMLBR_VLAN, the bridge's `CFG_F_VLAN`, and
//! the port's static FDB entries copied into each of its VLANs (the FDB
//! is keyed by VLAN and MAC).
use std::fmt;

use serde::Serialize;
use umlbr_common::{CFG_F_VLAN, FDB_F_STATIC, FdbKey, PortVlan, VLAN_MAX, names};

use crate::{
    error::Result,
    object::{Maps, map_err},
};

/// A port's VLANs as the user gives them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Vlans {
    /// The VLAN of the port's untagged frames (0: the default VLAN).
    pub pvid: u16,
    /// VLANs that pass tagged, sorted, without `pvid`.
    pub tagged: Vec<u16>,
}

impl Vlans {
    /// An access port of `vid`.
    pub fn access(vid: u16) -> Self {
        Vlans {
            pvid: vid,
            tagged: Vec::new(),
        }
    }

    /// A trunk of `tagged`, its untagged frames in `pvid`.
    pub fn trunk(tagged: &[u16], pvid: u16) -> Self {
        let mut tagged: Vec<u16> = tagged.iter().copied().filter(|&v| v != pvid).collect();
        tagged.sort_unstable();
        tagged.dedup();
        Vlans { pvid, tagged }
    }

    /// A port without VLANs: an access port of the default VLAN.
    pub fn is_default(&self) -> bool {
        self.pvid == 0 && self.tagged.is_empty()
    }

    /// Every VLAN the port is in: its pvid, then the tagged ones.
    pub fn all(&self) -> Vec<u16> {
        let mut v = vec![self.pvid];
        v.extend(&self.tagged);
        v
    }

    fn to_map(&self) -> PortVlan {
        let mut v = PortVlan {
            pvid: self.pvid,
            nr_tagged: self.tagged.len() as u32,
            ..Default::default()
        };
        for &t in &self.tagged {
            v.tagged[t as usize >> 6] |= 1 << (t & 63);
        }
        v
    }

    fn from_map(v: &PortVlan) -> Self {
        let tagged = (1..=VLAN_MAX)
            .filter(|&t| v.has_tagged(t) && t != v.pvid)
            .collect();
        Vlans {
            pvid: v.pvid,
            tagged,
        }
    }
}

/// As `show` prints it: `-` (default VLAN), `10` (access), `10,20`
/// (trunk, untagged in the default VLAN), `10,20 pvid 5`.
impl fmt::Display for Vlans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tagged.is_empty() {
            return match self.pvid {
                0 => write!(f, "-"),
                p => write!(f, "{p}"),
            };
        }
        let t: Vec<String> = self.tagged.iter().map(|v| v.to_string()).collect();
        write!(f, "{}", t.join(","))?;
        if self.pvid != 0 {
            write!(f, " pvid {}", self.pvid)?;
        }
        Ok(())
    }
}

/// A list of VLAN ids, `10,20,30`, each 1-4094 (clap's value parser of
/// `--trunk`).
pub fn parse_vlan_list(s: &str) -> std::result::Result<Vec<u16>, String> {
    s.split(',')
        .map(|v| match v.trim().parse::<u16>() {
            Ok(id @ 1..=VLAN_MAX) => Ok(id),
            _ => Err(format!("{v:?} is not a VLAN id (1-{VLAN_MAX})")),
        })
        .collect()
}

/// `v` as `umlbr attach` flags: `--vlan ID`, or `--trunk IDS [--pvid ID]`.
pub fn to_args(v: &Vlans) -> Vec<String> {
    if v.tagged.is_empty() {
        return vec!["--vlan".into(), v.pvid.to_string()];
    }
    let t: Vec<String> = v.tagged.iter().map(|t| t.to_string()).collect();
    let mut a = vec!["--trunk".into(), t.join(",")];
    if v.pvid != 0 {
        a.extend(["--pvid".into(), v.pvid.to_string()]);
    }
    a
}

/// The VLANs of port `ifindex` (the default VLAN alone if it has none).
pub fn of(maps: &Maps, ifindex: u32) -> Vlans {
    maps.vlan
        .get(&ifindex, 0)
        .map(|v| Vlans::from_map(&v))
        .unwrap_or_default()
}

/// Give port `ifindex` the VLANs `v` (the default VLAN alone: no entry),
/// copy its static FDB entries into each of them (and out of the VLANs it
/// leaves), and set or clear the bridge's `CFG_F_VLAN`.
pub fn set(maps: &mut Maps, ifindex: u32, v: &Vlans) -> Result<()> {
    if v.is_default() {
        let _ = maps.vlan.remove(&ifindex);
    } else {
        maps.vlan
            .insert(ifindex, v.to_map(), 0)
            .map_err(map_err(names::VLAN))?;
    }
    restatic(maps, ifindex, v)?;
    update_flag(maps)
}

/// Forget port `ifindex`'s VLANs (it is leaving the bridge).
pub fn forget(maps: &mut Maps, ifindex: u32) -> Result<()> {
    if maps.vlan.remove(&ifindex).is_ok() {
        update_flag(maps)?;
    }
    Ok(())
}

/// `CFG_F_VLAN` while some port has VLANs: a bridge without any stays
/// VLAN-unaware, as before VLANs.
fn update_flag(maps: &mut Maps) -> Result<()> {
    let any = maps.vlan.keys().any(|k| k.is_ok());
    let mut c = maps.config()?;
    let flags = if any {
        c.flags | CFG_F_VLAN
    } else {
        c.flags & !CFG_F_VLAN
    };
    if flags != c.flags {
        c.flags = flags;
        maps.set_config(c)?;
    }
    Ok(())
}

/// A port's static entries (its bound MACs, the host's and the uplink's
/// own MAC) exist in each of its VLANs, as the kernel bridge adds a port's
/// local entries per VLAN: moved to the VLANs `v`.
fn restatic(maps: &mut Maps, ifindex: u32, v: &Vlans) -> Result<()> {
    let mine: Vec<(FdbKey, umlbr_common::FdbEntry)> = maps
        .fdb
        .iter()
        .filter_map(|e| e.ok())
        .filter(|(_, e)| e.ifindex == ifindex && e.flags & FDB_F_STATIC != 0)
        .collect();
    let vlans = v.all();
    for (k, _) in &mine {
        if !vlans.contains(&k.vlan) {
            let _ = maps.fdb.remove(k);
        }
    }
    let mut macs: Vec<_> = mine.iter().map(|(k, e)| (k.mac, *e)).collect();
    macs.sort_by_key(|(m, _)| *m);
    macs.dedup_by_key(|(m, _)| *m);
    for (mac, e) in macs {
        for &vid in &vlans {
            maps.fdb
                .insert(FdbKey::in_vlan(mac, vid), e, 0)
                .map_err(map_err(names::FDB))?;
        }
    }
    Ok(())
}
