//! `umlbr stats --watch`: per-second rates of each port's counters between
//! two views that `stats::view` took `secs` apart.
use serde::Serialize;

use crate::stats::{BridgeView, PortView};

/// A port's rates over one interval, per second.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PortRates {
    pub name: String,
    pub ifindex: u32,
    pub rx_pps: f64,
    pub rx_bytes_per_sec: f64,
    pub tx_pps: f64,
    pub tx_bytes_per_sec: f64,
    pub forwarded_per_sec: f64,
    pub flooded_per_sec: f64,
    pub dropped_per_sec: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BridgeRates {
    pub name: String,
    pub ports: Vec<PortRates>,
}

/// What `stats --watch --json` prints for each interval: one line.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Rates {
    /// Seconds since the Unix epoch at the end of the interval.
    pub time: f64,
    /// Seconds the interval lasted, as measured.
    pub interval: f64,
    pub bridges: Vec<BridgeRates>,
}

fn per_sec(now: u64, before: u64, secs: f64) -> f64 {
    // A port attached again starts from zero: no negative rate.
    now.saturating_sub(before) as f64 / secs
}

fn port_rates(now: &PortView, before: &PortView, secs: f64) -> PortRates {
    let (n, b) = (&now.stats, &before.stats);
    let (nd, bd) = (&n.datapath, &b.datapath);
    PortRates {
        name: now.name.clone(),
        ifindex: now.ifindex,
        rx_pps: per_sec(nd.rx_packets, bd.rx_packets, secs),
        rx_bytes_per_sec: per_sec(nd.rx_bytes, bd.rx_bytes, secs),
        tx_pps: per_sec(n.tx_packets, b.tx_packets, secs),
        tx_bytes_per_sec: per_sec(n.tx_bytes, b.tx_bytes, secs),
        forwarded_per_sec: per_sec(nd.forwarded, bd.forwarded, secs),
        flooded_per_sec: per_sec(nd.flooded, bd.flooded, secs),
        dropped_per_sec: per_sec(nd.dropped, bd.dropped, secs),
    }
}

/// The rates from `before` to `now`, `secs` apart: the bridges and ports
/// of `now`; a port new since `before` counts from zero.
pub fn rates(before: &[BridgeView], now: &[BridgeView], secs: f64, time: f64) -> Rates {
    let secs = if secs > 0.0 { secs } else { f64::MIN_POSITIVE };
    let bridges = now
        .iter()
        .map(|b| {
            let old = before.iter().find(|o| o.name == b.name);
            let ports = b
                .ports
                .iter()
                .map(|p| {
                    let zero;
                    let prev =
                        match old.and_then(|o| o.ports.iter().find(|q| q.ifindex == p.ifindex)) {
                            Some(q) => q,
                            None => {
                                zero = PortView {
                                    stats: Default::default(),
                                    ..p.clone()
                                };
                                &zero
                            }
                        };
                    port_rates(p, prev, secs)
                })
                .collect();
            BridgeRates {
                name: b.name.clone(),
                ports,
            }
        })
        .collect();
    Rates {
        time,
        interval: secs,
        bridges,
    }
}
