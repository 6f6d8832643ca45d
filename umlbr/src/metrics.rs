//! `umlbr metrics`: the views `stats` gathers (`stats::view`), rendered in
//! the Prometheus text exposition format (0.0.4), for node_exporter's
//! textfile collector or a scrape of `umlbr metrics --listen`.
//!
//! Every counter of `PortStats` and `NatStats` is rendered; which metric
//! each field becomes is listed below, and a unit test fails when a field
//! is added to either without being listed here.
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;
use umlbr_common::{FDB_SIZE, NAT_SIZE};

use crate::stats::{BridgeView, NatView, PortView};

/// The content type of what `render` returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `PortStats` counters that are a metric of their own:
/// (field, metric name without `umlbr_port_` and `_total`, help).
const PORT_COUNTERS: [(&str, &str, &str); 7] = [
    ("rx_packets", "rx_packets", "Frames received on the port."),
    ("rx_bytes", "rx_bytes", "Bytes received on the port."),
    (
        "forwarded",
        "forwarded",
        "Known unicast frames from the port sent to their port.",
    ),
    (
        "flooded",
        "flooded",
        "Broadcast, multicast and unknown unicast frames from the port sent to all other ports.",
    ),
    (
        "learned",
        "learned",
        "New MAC addresses learned on the port.",
    ),
    (
        "moved",
        "moved",
        "MAC addresses that moved to the port from another.",
    ),
    (
        "learn_limited",
        "learn_limited",
        "Source MACs not learned: the port is at its learning limit or the table is full.",
    ),
];

/// `PortStats` counters of the path that switched a frame: the `path`
/// label of `umlbr_port_switched_total`.
const PORT_PATHS: [&str; 3] = ["xdp_native", "xdp_generic", "tc"];

/// `PortStats` drop reasons, each a `reason` label of
/// `umlbr_port_dropped_total` (see `PortStats` for what each means).
/// `dropped` is their sum; whatever it holds beyond them is `other`.
const DROP_REASONS: [&str; 9] = [
    "invalid",
    "hairpin",
    "spoofed",
    "locked",
    "ip_locked",
    "isolated",
    "storm",
    "nat_quota",
    "vlan",
];

/// `PortStats` fields rendered otherwise: `dropped`, as the sum of the
/// reasons and `other` (`kind` and `flags`, no counters, serde skips).
#[cfg(test)]
const PORT_OTHER: [&str; 1] = ["dropped"];

/// `NatStats` counters of translated packets: (field, direction, path).
const NAT_TRANSLATED: [(&str, &str, &str); 4] = [
    ("out_xdp", "out", "xdp"),
    ("out_tc", "out", "tc"),
    ("in_xdp", "in", "xdp"),
    ("in_tc", "in", "tc"),
];

/// The other `NatStats` counters: (field, metric name without `umlbr_nat_`
/// and `_total`, help).
const NAT_COUNTERS: [(&str, &str, &str); 12] = [
    (
        "icmp_errors",
        "icmp_errors",
        "ICMP errors for a mapping translated, inner header included.",
    ),
    (
        "in_miss",
        "in_miss",
        "Packets to the uplink address with no mapping (the host's own).",
    ),
    ("allocs", "allocs", "Mappings made."),
    (
        "alloc_fail",
        "alloc_failures",
        "New flows for which no free port of the range was found.",
    ),
    (
        "slow_path",
        "slow_path",
        "Guest packets left to the kernel (fragments, other protocols, TTL expiring, no route via the uplink).",
    ),
    (
        "expired",
        "expired",
        "Expired mappings found and replaced by the datapath.",
    ),
    (
        "bad_source",
        "bad_source",
        "Guest packets from a source outside the bridge's subnet, never masqueraded.",
    ),
    (
        "out_of_window",
        "out_of_window",
        "TCP RST or FIN from outside the guest's receive window, passed on without changing the mapping.",
    ),
    (
        "foreign",
        "foreign",
        "Guest packets of a mapping another port made, not translated.",
    ),
    (
        "quota",
        "quota",
        "New flows dropped: their port's guests hold --nat-max-per-guest mappings already.",
    ),
    (
        "frag_needed",
        "frag_needed",
        "Replies with DF bigger than their guest port's MTU, answered with ICMP fragmentation needed.",
    ),
    (
        "too_big",
        "too_big",
        "Replies without DF bigger than their guest port's MTU, dropped (not fragmented).",
    ),
];

/// One metric family: every sample of a name comes together, after its
/// HELP and TYPE.
struct Family {
    name: String,
    help: String,
    kind: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

impl Family {
    fn new(name: impl Into<String>, kind: &'static str, help: impl Into<String>) -> Self {
        Family {
            name: name.into(),
            help: help.into(),
            kind,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, value: u64) {
        self.samples.push((labels, value));
    }

    fn render(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(&self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            out.push_str(&self.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {value}");
        }
    }
}

/// A label value as the text format takes it: backslash, double quote
/// and line feed escaped (interface names may hold the first two).
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// HELP text as the text format takes it: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The fields of a counters struct, by name.
fn fields<T: Serialize>(t: &T) -> serde_json::Map<String, Value> {
    match serde_json::to_value(t) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

fn field(m: &serde_json::Map<String, Value>, name: &str) -> u64 {
    m.get(name).and_then(Value::as_u64).unwrap_or(0)
}

fn port_labels(b: &BridgeView, p: &PortView) -> Vec<(&'static str, String)> {
    vec![("bridge", b.name.clone()), ("port", p.name.clone())]
}

/// The Prometheus text exposition of `views`.
pub fn render(views: &[BridgeView]) -> String {
    let mut fams = bridge_families(views);
    fams.extend(port_families(views));
    fams.extend(port_counter_families(views));
    fams.extend(nat_families(views));
    let mut out = String::new();
    for f in &fams {
        f.render(&mut out);
    }
    out
}

/// Each bridge's identity, size and settings.
fn bridge_families(views: &[BridgeView]) -> Vec<Family> {
    let mut info = Family::new(
        "umlbr_bridge_info",
        "gauge",
        "A umlbr bridge: its host interface and switch port (always 1).",
    );
    let mut ports = Family::new("umlbr_bridge_ports", "gauge", "Ports of the bridge.");
    let mut fdb = Family::new(
        "umlbr_bridge_fdb_entries",
        "gauge",
        "Entries of the MAC table (forwarding database), static and learned.",
    );
    let mut fdb_cap = Family::new(
        "umlbr_bridge_fdb_capacity_entries",
        "gauge",
        "Most entries the MAC table holds.",
    );
    let mut aging = Family::new(
        "umlbr_bridge_aging_seconds",
        "gauge",
        "Seconds after which a learned MAC is forgotten.",
    );
    for b in views {
        let l = || vec![("bridge", b.name.clone())];
        info.add(
            vec![
                ("bridge", b.name.clone()),
                ("host_interface", b.host_interface.clone()),
                ("switch_port", b.switch_port.clone()),
            ],
            1,
        );
        ports.add(l(), b.ports.len() as u64);
        fdb.add(l(), b.fdb_entries as u64);
        fdb_cap.add(l(), u64::from(FDB_SIZE));
        aging.add(l(), b.aging_secs);
    }
    vec![info, ports, fdb, fdb_cap, aging]
}

/// Each port: what it is and its limits.
fn port_families(views: &[BridgeView]) -> Vec<Family> {
    let mut pinfo = Family::new(
        "umlbr_port_info",
        "gauge",
        "A port of a bridge: its kind, XDP mode and TC hook (always 1).",
    );
    let mut up = Family::new("umlbr_port_up", "gauge", "1 if the port's interface is up.");
    let mut macs = Family::new(
        "umlbr_port_learned_macs",
        "gauge",
        "Learned MACs behind the port now.",
    );
    let mut max = Family::new(
        "umlbr_port_max_learned_macs",
        "gauge",
        "Most MACs the port may learn (attach --max-learned; 0: no limit).",
    );
    let mut flood = Family::new(
        "umlbr_port_flood_limit_packets_per_second",
        "gauge",
        "Most floods a second the port may send (attach --flood-limit; 0: no limit).",
    );
    let mut quota = Family::new(
        "umlbr_port_nat_mappings",
        "gauge",
        "Live masquerade mappings the port's guests hold (counted against --nat-max-per-guest).",
    );
    for b in views {
        for p in &b.ports {
            let l = || port_labels(b, p);
            let mut il = l();
            il.extend([
                ("ifindex", p.ifindex.to_string()),
                ("kind", p.kind.to_string()),
                ("xdp", p.xdp.as_str().to_string()),
                ("tc", p.tc.to_string()),
            ]);
            pinfo.add(il, 1);
            up.add(l(), u64::from(p.up));
            macs.add(l(), u64::from(p.learned_macs));
            max.add(l(), u64::from(p.max_learned));
            flood.add(l(), u64::from(p.flood_limit));
            quota.add(l(), u64::from(p.nat_mappings));
        }
    }
    vec![pinfo, up, macs, max, flood, quota]
}

/// Each port's counters: the datapath's, the interface's, drops by reason.
fn port_counter_families(views: &[BridgeView]) -> Vec<Family> {
    let mut counters: Vec<Family> = PORT_COUNTERS
        .iter()
        .map(|(_, n, h)| Family::new(format!("umlbr_port_{n}_total"), "counter", *h))
        .collect();
    let mut tx_packets = Family::new(
        "umlbr_port_tx_packets_total",
        "counter",
        "Frames the port's interface sent (the kernel's counter).",
    );
    let mut tx_bytes = Family::new(
        "umlbr_port_tx_bytes_total",
        "counter",
        "Bytes the port's interface sent (the kernel's counter).",
    );
    let mut switched = Family::new(
        "umlbr_port_switched_total",
        "counter",
        "Frames from the port switched, by path: XDP in the driver (xdp_native), XDP on an skb (xdp_generic), or the TC program (tc).",
    );
    let mut dropped = Family::new(
        "umlbr_port_dropped_total",
        "counter",
        "Frames from the port dropped, by reason (see `umlbr stats`; other: none of the reasons counted).",
    );
    for b in views {
        for p in &b.ports {
            let l = || port_labels(b, p);
            let f = fields(&p.stats.datapath);
            for (fam, (name, _, _)) in counters.iter_mut().zip(PORT_COUNTERS) {
                fam.add(l(), field(&f, name));
            }
            tx_packets.add(l(), p.stats.tx_packets);
            tx_bytes.add(l(), p.stats.tx_bytes);
            for path in PORT_PATHS {
                let mut pl = l();
                pl.push(("path", path.to_string()));
                switched.add(pl, field(&f, path));
            }
            let mut counted = 0u64;
            for reason in DROP_REASONS {
                let n = field(&f, reason);
                counted = counted.saturating_add(n);
                let mut rl = l();
                rl.push(("reason", reason.to_string()));
                dropped.add(rl, n);
            }
            let mut rl = l();
            rl.push(("reason", "other".to_string()));
            dropped.add(rl, field(&f, "dropped").saturating_sub(counted));
        }
    }
    let mut fams = counters;
    fams.extend([tx_packets, tx_bytes, switched, dropped]);
    fams
}

fn nat_families(views: &[BridgeView]) -> Vec<Family> {
    let mut info = Family::new(
        "umlbr_nat_info",
        "gauge",
        "The bridge's masquerade: its uplink, address and port range (always 1).",
    );
    let mut mappings = Family::new(
        "umlbr_nat_mappings",
        "gauge",
        "Live mappings of the masquerade.",
    );
    let mut cap = Family::new(
        "umlbr_nat_table_capacity_entries",
        "gauge",
        "Most mappings the masquerade's table holds.",
    );
    let mut per_guest = Family::new(
        "umlbr_nat_max_per_guest_mappings",
        "gauge",
        "Most live mappings one port's guests may hold (--nat-max-per-guest; 0: no limit).",
    );
    let mut range = Family::new(
        "umlbr_nat_port_range_size",
        "gauge",
        "Ports in the masquerade's port range (--nat-ports), for each protocol.",
    );
    let mut in_use = Family::new(
        "umlbr_nat_ports_in_use",
        "gauge",
        "Ports of the range that live mappings use, by protocol (a port serves one mapping per remote end).",
    );
    let mut translated = Family::new(
        "umlbr_nat_translated_total",
        "counter",
        "Packets translated, by direction (out: from a guest; in: a reply) and path (xdp, tc).",
    );
    let mut counters: Vec<Family> = NAT_COUNTERS
        .iter()
        .map(|(_, n, h)| Family::new(format!("umlbr_nat_{n}_total"), "counter", *h))
        .collect();
    for b in views {
        let Some(n) = &b.nat else { continue };
        let l = || vec![("bridge", b.name.clone())];
        info.add(
            vec![
                ("bridge", b.name.clone()),
                ("uplink", n.uplink.clone()),
                ("address", n.address.clone()),
                ("ports", n.ports.clone()),
            ],
            1,
        );
        mappings.add(l(), n.mappings as u64);
        cap.add(l(), u64::from(NAT_SIZE));
        per_guest.add(l(), u64::from(n.max_per_guest));
        range.add(l(), u64::from(n.port_range_size));
        for (proto, used) in &n.ports_in_use {
            let mut pl = l();
            pl.push(("proto", proto.to_string()));
            in_use.add(pl, *used as u64);
        }
        nat_counters(n, &mut translated, &mut counters, l);
    }
    let mut out = vec![info, mappings, cap, per_guest, range, in_use, translated];
    out.extend(counters);
    out
}

fn nat_counters(
    n: &NatView,
    translated: &mut Family,
    counters: &mut [Family],
    l: impl Fn() -> Vec<(&'static str, String)>,
) {
    let f = fields(&n.counters);
    for (name, dir, path) in NAT_TRANSLATED {
        let mut tl = l();
        tl.extend([("direction", dir.to_string()), ("path", path.to_string())]);
        translated.add(tl, field(&f, name));
    }
    for (fam, (name, _, _)) in counters.iter_mut().zip(NAT_COUNTERS) {
        fam.add(l(), field(&f, name));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use umlbr_common::{NatStats, PortStats};

    use super::*;

    /// A field added to PortStats or NatStats must be given its metric
    /// here; none may be left out or rendered twice.
    #[test]
    fn every_counter_has_its_metric() {
        let port: BTreeSet<String> = fields(&PortStats::default()).keys().cloned().collect();
        let mut listed: Vec<&str> = PORT_COUNTERS.iter().map(|c| c.0).collect();
        listed.extend(PORT_PATHS);
        listed.extend(DROP_REASONS);
        listed.extend(PORT_OTHER);
        let set: BTreeSet<String> = listed.iter().map(|s| s.to_string()).collect();
        assert_eq!(set.len(), listed.len(), "a PortStats field listed twice");
        assert_eq!(port, set, "PortStats fields vs their metrics");

        let nat: BTreeSet<String> = fields(&NatStats::default()).keys().cloned().collect();
        let mut listed: Vec<&str> = NAT_TRANSLATED.iter().map(|c| c.0).collect();
        listed.extend(NAT_COUNTERS.iter().map(|c| c.0));
        let set: BTreeSet<String> = listed.iter().map(|s| s.to_string()).collect();
        assert_eq!(set.len(), listed.len(), "a NatStats field listed twice");
        assert_eq!(nat, set, "NatStats fields vs their metrics");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("a\nb"), "a\\nb");
        assert_eq!(escape_label("tap0"), "tap0");
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
        let mut f = Family::new("umlbr_x_total", "counter", "X.");
        f.add(vec![("port", "t\"a\\p".into())], 3);
        let mut s = String::new();
        f.render(&mut s);
        assert_eq!(
            s,
            "# HELP umlbr_x_total X.\n# TYPE umlbr_x_total counter\numlbr_x_total{port=\"t\\\"a\\\\p\"} 3\n"
        );
    }
}
