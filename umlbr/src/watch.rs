//! `umlbr watch`: follow interfaces as they come and go (rtnetlink's
//! RTNLGRP_LINK events) and do at once what a user would do by hand:
//!
//! - a port whose interface vanished is removed (`port::prune`: its FDB
//!   entries flushed, its slot freed), without waiting for the next
//!   command that changes the bridge;
//! - an interface the bridge expects (`expect.rs`: attached before and
//!   not detached since) that appears again is attached again with the
//!   options it had (`port::attach`);
//! - a bridge's dnsmasq (`up --dhcp`) that died is started again
//!   (`dhcp::ensure`), with its conf and lease file.
//!
//! Forwarding never depends on it: it only runs the library's commands,
//! under the bridge's lock, and takes the lock only when there is
//! something to change. An event only says "look again": each pass
//! compares the bridge with the interfaces as they are now, so a lost or
//! coalesced event costs nothing but the wait for the next pass (a pass
//! also runs every `BACKSTOP`).
use std::{
    collections::{HashMap, HashSet},
    future::Future,
    time::Duration,
};

use futures::{FutureExt, StreamExt};
use rtnetlink::MulticastGroup;

use crate::{
    bridge::Bridge,
    dhcp,
    error::{Error, Result},
    expect,
    link::Net,
    port,
};

/// How often a pass runs without any event: a backstop for events the
/// kernel dropped (a full socket buffer).
pub const BACKSTOP: Duration = Duration::from_secs(2);

/// What a pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Port `iface` of `bridge` vanished and was removed.
    Detached { bridge: String, iface: String },
    /// `iface` came back and was attached to `bridge` again.
    Attached {
        bridge: String,
        iface: String,
        args: Vec<String>,
    },
    /// Attaching `iface` again failed (said once per interface instance).
    Failed {
        bridge: String,
        iface: String,
        error: String,
    },
    /// A pass over `bridge` failed; the next one tries again.
    Error { bridge: String, error: String },
    /// The bridge watched by name is gone (`umlbr down`): watch ends.
    BridgeGone { bridge: String },
    /// The bridge's dnsmasq (`up --dhcp`) had died and was started again.
    DhcpRestarted { bridge: String, pid: i32 },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Detached { bridge, iface } => write!(
                f,
                "{bridge}: {iface} vanished: detached (its MAC entries flushed)"
            ),
            Change::Attached {
                bridge,
                iface,
                args,
            } => {
                write!(f, "{bridge}: {iface} is back: attached again")?;
                if !args.is_empty() {
                    write!(f, " ({})", args.join(" "))?;
                }
                Ok(())
            }
            Change::Failed {
                bridge,
                iface,
                error,
            } => write!(
                f,
                "{bridge}: {iface} is back but attaching it failed: {error}"
            ),
            Change::Error { bridge, error } => write!(f, "{bridge}: {error}"),
            Change::BridgeGone { bridge } => write!(f, "{bridge}: bridge removed; watch ends"),
            Change::DhcpRestarted { bridge, pid } => {
                write!(
                    f,
                    "{bridge}: dnsmasq was not running: started again (pid {pid})"
                )
            }
        }
    }
}

/// What a watch remembers between passes.
#[derive(Default)]
struct State {
    /// Names of the ports seen, by (bridge, ifindex): a vanished port is
    /// named by what it was.
    names: HashMap<(String, u32), String>,
    /// Interfaces whose attach failed, by (bridge, ifindex): tried again
    /// only when the interface is made again (a new ifindex).
    failed: HashSet<(String, u32)>,
}

/// One pass over bridge `name`; None if there is no such bridge.
async fn pass(net: &Net, name: &str, st: &mut State) -> Result<Option<Vec<Change>>> {
    let br = match Bridge::open(net, name).await {
        Ok(b) => b,
        Err(Error::NoSuchBridge(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let links = net.links().await?;
    let by_index: HashMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
    let mut gone = false;
    for i in br.recorded_ports() {
        match by_index.get(&i) {
            Some(n) => {
                st.names.insert((name.into(), i), n.to_string());
            }
            None => gone |= !br.is_own(i),
        }
    }
    let expected = expect::read(name)?;
    let mut changes = Vec::new();
    if gone {
        // Under the lock, read again: what prune removes is what is gone
        // now, not what this pass saw.
        let mut br = br.lock(net).await?;
        for i in port::prune(net, &mut br).await? {
            let iface = st
                .names
                .remove(&(name.into(), i))
                .unwrap_or_else(|| format!("if{i}"));
            changes.push(Change::Detached {
                bridge: name.into(),
                iface,
            });
        }
    }
    // Bridge read again: prune changed it.
    let br = match Bridge::open(net, name).await {
        Ok(b) => b,
        Err(Error::NoSuchBridge(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    for (iface, opts) in expected {
        let Some(link) = links.iter().find(|l| l.name == iface) else {
            continue;
        };
        let key = (name.to_string(), link.index);
        if br.has_record(link.index) || st.failed.contains(&key) {
            continue;
        }
        let args = expect::to_args(&opts);
        match port::attach(net, &iface, Some(name), opts).await {
            Ok(_) => changes.push(Change::Attached {
                bridge: name.into(),
                iface,
                args,
            }),
            Err(e) => {
                st.failed.insert(key);
                changes.push(Change::Failed {
                    bridge: name.into(),
                    iface,
                    error: e.to_string(),
                });
            }
        }
    }
    // A file and a pid looked at; the lock taken only to restart.
    if let Some(pid) = dhcp::ensure(name)? {
        changes.push(Change::DhcpRestarted {
            bridge: name.into(),
            pid,
        });
    }
    Ok(Some(changes))
}

/// Watch bridge `name` (every bridge of the namespace without one) until
/// `stop` completes, or the bridge named is removed; `report` is told
/// each change. Fails at once if bridge `name` does not exist, or if the
/// events cannot be subscribed to.
pub async fn run(
    net: &Net,
    name: Option<&str>,
    stop: impl Future<Output = ()>,
    mut ready: impl FnMut(&[String]),
    mut report: impl FnMut(&Change),
) -> Result<()> {
    // Subscribed before the first pass: nothing that happens after it
    // is missed.
    let (conn, _handle, mut events) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
        .map_err(|e| Error::io("subscribing to interface events", e))?;
    tokio::spawn(conn);
    if let Some(n) = name {
        Bridge::open(net, n).await?;
    }
    let mut st = State::default();
    let mut first = true;
    let stop = stop.fuse();
    futures::pin_mut!(stop);
    let mut tick = tokio::time::interval(BACKSTOP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let names: Vec<String> = match name {
            Some(n) => vec![n.to_string()],
            None => match Bridge::list(net).await {
                Ok(all) => all.into_iter().map(|b| b.name).collect(),
                Err(e) => {
                    report(&Change::Error {
                        bridge: "(all)".into(),
                        error: e.to_string(),
                    });
                    Vec::new()
                }
            },
        };
        for b in &names {
            match pass(net, b, &mut st).await {
                Ok(Some(changes)) => changes.iter().for_each(&mut report),
                Ok(None) if name.is_some() => {
                    report(&Change::BridgeGone { bridge: b.clone() });
                    return Ok(());
                }
                Ok(None) => {}
                Err(e) => report(&Change::Error {
                    bridge: b.clone(),
                    error: e.to_string(),
                }),
            }
        }
        if first {
            ready(&names);
            first = false;
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            ev = events.next() => {
                if ev.is_none() {
                    return Err(Error::io(
                        "reading interface events",
                        std::io::Error::other("the netlink connection closed"),
                    ));
                }
                // A burst (a guest's tap made, set up, given an address)
                // is looked at once.
                while let Some(Some(_)) = events.next().now_or_never() {}
            }
            _ = tick.tick() => {}
        }
    }
}
