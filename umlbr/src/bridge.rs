//! A bridge, found again in the current network namespace.
//!
//! A bridge named NAME is a veth pair: NAME is the host's station on the
//! switch (it gets `--address`), its peer (the switch port, NAME-sw) is the
//! first port. umlbr keeps no state of its own: the XDP and TC programs are
//! attached to the ports (owned by the devices, not by a process or a bpffs
//! pin) and the maps hang off the programs. Every command finds a bridge
//! again from NAME, so `ip netns exec` works and two namespaces may each
//! have a br0.
//!
//! A command that changes a bridge opens it with `Bridge::lock`: under the
//! bridge's lock (`lock.rs`), read afresh, so that what it read before
//! (while finding the bridge) cannot be stale.
use std::collections::HashMap as StdHashMap;

use aya::programs::ProgramInfo;

use crate::{
    error::{Error, Result},
    link::{Link, Net, check_ifname},
    lock::{self, BridgeLock},
    object::{Maps, Programs, Tc},
};

/// One bridge, found in the current network namespace.
pub struct Bridge {
    pub name: String,
    /// The host's interface (NAME).
    pub host: Link,
    /// The switch-side end of the host's veth pair.
    pub switch_port: Link,
    pub xdp_prog_id: u32,
    pub maps: Maps,
    /// Held while a command changes the bridge (`Bridge::lock`).
    lock: Option<BridgeLock>,
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
    /// The bridge whose switch port is `sw` (umlbr's XDP program on it,
    /// and not on its peer `host`), if it is one.
    fn found(host: &Link, sw: &Link, progs: &Programs) -> Result<Option<Bridge>> {
        let Some(id) = sw.xdp_prog.filter(|&id| progs.is_umlbr_xdp(id)) else {
            return Ok(None);
        };
        if sw.peer != Some(host.index) || host.xdp_prog.is_some_and(|i| progs.is_umlbr_xdp(i)) {
            return Ok(None);
        }
        let tc = Tc::BOTH
            .into_iter()
            .filter_map(|hook| hook.umlbr_prog(&sw.name))
            .map(|p| p.id());
        let ids: Vec<u32> = std::iter::once(id).chain(tc).collect();
        // `up` hooks both TC programs before it makes anything else: a
        // switch port without them is an `up` killed half-way, whose maps
        // cannot all be opened. Its record (`record.rs`) leads `down` to
        // it; for every other command it is no bridge.
        if ids.len() < 1 + Tc::BOTH.len() {
            return Ok(None);
        }
        Ok(Some(Bridge {
            name: host.name.clone(),
            host: host.clone(),
            switch_port: sw.clone(),
            xdp_prog_id: id,
            maps: Maps::open(&ids)?,
            lock: None,
        }))
    }

    /// Every bridge in this network namespace.
    pub async fn list(net: &Net) -> Result<Vec<Bridge>> {
        let links = net.links().await?;
        let progs = Programs::read();
        let by_index: StdHashMap<u32, &Link> = links.iter().map(|l| (l.index, l)).collect();
        let mut out = Vec::new();
        for l in links.iter().filter(|l| l.kind.as_deref() == Some("veth")) {
            if let Some(peer) = l.peer.and_then(|p| by_index.get(&p))
                && let Some(b) = Bridge::found(l, peer, &progs)?
            {
                out.push(b);
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

    /// Take the lock of bridge `name` and open it under it: the form of
    /// `open` for commands that change the bridge.
    pub async fn open_locked(net: &Net, name: &str) -> Result<Bridge> {
        check_ifname(name)?;
        let held = lock::take(name)?;
        let mut br = Bridge::open(net, name).await?;
        br.lock = Some(held);
        Ok(br)
    }

    /// This bridge, opened again under its lock (see `open_locked`):
    /// everything read before the lock may have changed meanwhile, and
    /// the bridge may be gone (`NoSuchBridge`).
    pub async fn lock(self, net: &Net) -> Result<Bridge> {
        if self.lock.is_some() {
            return Ok(self);
        }
        Bridge::open_locked(net, &self.name).await
    }

    /// Delete the bridge's lock file if this process holds the lock: for
    /// `down`, once the bridge is gone.
    pub fn unlink_lock(&self) {
        if let Some(l) = &self.lock {
            l.unlink();
        }
    }

    /// Whether this process holds the bridge's lock.
    pub fn is_locked(&self) -> bool {
        self.lock.is_some()
    }

    /// The bridge called `name`, or every bridge when `name` is None.
    pub async fn named_or_all(net: &Net, name: Option<&str>) -> Result<Vec<Bridge>> {
        match name {
            Some(n) => Ok(vec![Bridge::open(net, n).await?]),
            None => Bridge::list(net).await,
        }
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
            .find(|b| b.has_port(ifindex)))
    }

    /// Whether `ifindex` is the bridge's own host interface or switch port.
    pub fn is_own(&self, ifindex: u32) -> bool {
        self.host.index == ifindex || self.switch_port.index == ifindex
    }

    /// Whether `ifindex` is a port of this bridge.
    pub fn has_port(&self, ifindex: u32) -> bool {
        self.port_ifindexes().contains(&ifindex)
    }

    /// Whether `ifindex` has a stats slot in this bridge: a port, or one
    /// that a `detach` killed half-way left (out of the flood list, its
    /// kind and flags kept for the rest of `detach` or `down`).
    pub fn has_record(&self, ifindex: u32) -> bool {
        self.has_port(ifindex) || self.maps.stats.get(&ifindex, 0).is_ok()
    }

    /// The ports and the stats slots of this bridge: everything `down`
    /// must unhook.
    pub fn recorded_ports(&self) -> Vec<u32> {
        let mut v = self.port_ifindexes();
        for k in self.maps.stats.keys().filter_map(|k| k.ok()) {
            if !v.contains(&k) {
                v.push(k);
            }
        }
        v
    }

    /// Ports of this bridge, the host's switch port first.
    pub fn port_ifindexes(&self) -> Vec<u32> {
        let mut v = self.maps.port_list().unwrap_or_default();
        v.sort_by_key(|&i| (i != self.switch_port.index, i));
        v
    }

    pub fn aging_secs(&self) -> Result<u64> {
        Ok(self.maps.config()?.aging_ns / 1_000_000_000)
    }

    /// The bridge's program on tcx hook `hook`, from the host's switch port.
    pub fn tc_prog(&self, hook: Tc) -> Option<ProgramInfo> {
        hook.umlbr_prog(&self.switch_port.name)
    }

    /// The bridge's program on `hook`, or an error naming the bridge.
    pub fn require_tc_prog(&self, hook: Tc) -> Result<ProgramInfo> {
        self.tc_prog(hook).ok_or_else(|| Error::BridgeLacks {
            bridge: self.name.clone(),
            what: hook.what(),
        })
    }
}
