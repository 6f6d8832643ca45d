//! `umlbr monitor`: the events the datapath writes into its ring buffer
//! (UMLBR_EVENTS; see umlbr-ebpf/src/events.rs), read as they come.
//!
//! The datapath writes events only while a listener's lease
//! (UMLBR_EV_CTL) runs: a [`Monitor`] renews it every
//! `EV_LEASE_RENEW_NS` for `EV_LEASE_NS`, and gives it back when it ends
//! (a monitor killed without a word: the lease runs out within three
//! seconds, and the datapath's rare paths stop at one compare again).
//! Each kind is rate-limited in the datapath; what it suppressed is a
//! per-kind total in UMLBR_EV_RATE, which [`Monitor::suppressed`] reads
//! and the stream reports as it grows. One ring per bridge: two monitors
//! of one bridge at once share its events (each gets some).
use std::{
    collections::HashMap as StdHashMap,
    net::Ipv4Addr,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::maps::{Array, Map, MapData, RingBuf};
use umlbr_common::{
    EV_AGED, EV_IP_LOCKED, EV_ISOLATED, EV_KINDS, EV_LEARNED, EV_LEASE_NS, EV_LOCKED, EV_MOVED,
    EV_NAT_EXPIRED, EV_NAT_FULL, EV_NAT_NEW, EV_NAT_NO_PORT, EV_NAT_QUOTA, EV_SPOOFED, EV_STORM,
    EvBucket, EvCtl, Event, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, names,
};

use crate::{
    bridge::Bridge,
    error::{Error, Result},
    link::fmt_mac,
    object::{Tc, map_err, maps_of},
    sys::monotonic_coarse_ns,
};

/// A bridge's event maps, opened for reading its events.
pub struct Monitor {
    pub bridge: String,
    ring: RingBuf<MapData>,
    ctl: Array<MapData, EvCtl>,
    rate: Array<MapData, EvBucket>,
}

impl Monitor {
    /// The event maps of `br` (`NoEvents` for a bridge made by an umlbr
    /// without them).
    pub fn open(br: &Bridge) -> Result<Monitor> {
        let mut ids = vec![br.xdp_prog_id];
        ids.extend(
            Tc::BOTH
                .into_iter()
                .filter_map(|h| br.tc_prog(h))
                .map(|p| p.id()),
        );
        let mut found = maps_of(&ids)?;
        let mut take = |name: &'static str| -> Result<MapData> {
            found.remove(name).ok_or_else(|| Error::NoEvents {
                bridge: br.name.clone(),
            })
        };
        let (ring, ctl, rate) = (
            take(names::EVENTS)?,
            take(names::EV_CTL)?,
            take(names::EV_RATE)?,
        );
        Ok(Monitor {
            bridge: br.name.clone(),
            ring: RingBuf::try_from(Map::RingBuf(ring)).map_err(map_err(names::EVENTS))?,
            ctl: Array::try_from(Map::Array(ctl)).map_err(map_err(names::EV_CTL))?,
            rate: Array::try_from(Map::Array(rate)).map_err(map_err(names::EV_RATE))?,
        })
    }

    /// Listen for `EV_LEASE_NS` from now: the datapath writes events
    /// until then.
    pub fn renew(&mut self) -> Result<()> {
        self.set_until(monotonic_coarse_ns() + EV_LEASE_NS)
    }

    /// Stop listening: the datapath stops writing events at once.
    pub fn release(&mut self) -> Result<()> {
        self.set_until(0)
    }

    fn set_until(&mut self, until_ns: u64) -> Result<()> {
        self.ctl
            .set(0, EvCtl { until_ns }, 0)
            .map_err(map_err(names::EV_CTL))
    }

    /// Events suppressed so far, by kind (index: `EV_*`): over the rate
    /// limit, or refused by a full ring.
    pub fn suppressed(&self) -> Result<Vec<u64>> {
        (0..EV_KINDS)
            .map(|k| {
                self.rate
                    .get(&k, 0)
                    .map(|b| b.suppressed)
                    .map_err(map_err(names::EV_RATE))
            })
            .collect()
    }

    /// The ring buffer, for waiting on its fd (readable: events wait).
    pub fn ring(&mut self) -> &mut RingBuf<MapData> {
        &mut self.ring
    }
}

/// The events waiting in `ring`, in order.
pub fn drain(ring: &mut RingBuf<MapData>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<Event>() {
            // SAFETY: the datapath writes whole `Event`s; read unaligned.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
        }
    }
    out
}

/// The name of event kind `kind` (`EV_*`), as the stream prints it.
pub fn kind_name(kind: u16) -> &'static str {
    match kind {
        EV_LEARNED => "learned",
        EV_MOVED => "moved",
        EV_AGED => "aged",
        EV_SPOOFED => "spoofed",
        EV_LOCKED => "locked",
        EV_IP_LOCKED => "ip_locked",
        EV_ISOLATED => "isolated",
        EV_STORM => "storm",
        EV_NAT_NEW => "nat_new",
        EV_NAT_EXPIRED => "nat_expired",
        EV_NAT_QUOTA => "nat_quota",
        EV_NAT_FULL => "nat_full",
        EV_NAT_NO_PORT => "nat_no_port",
        _ => "unknown",
    }
}

fn is_nat(kind: u16) -> bool {
    matches!(
        kind,
        EV_NAT_NEW | EV_NAT_EXPIRED | EV_NAT_QUOTA | EV_NAT_FULL | EV_NAT_NO_PORT
    )
}

/// Interface names by ifindex, looked up once each (an interface gone
/// since keeps its ifindex as its name).
#[derive(Default)]
pub struct Names(StdHashMap<u32, String>);

impl Names {
    pub fn of(&mut self, ifindex: u32) -> Option<String> {
        if ifindex == 0 {
            return None;
        }
        let n = self
            .0
            .entry(ifindex)
            .or_insert_with(|| if_name(ifindex).unwrap_or_else(|| format!("if{ifindex}")));
        Some(n.clone())
    }
}

/// The name of interface `ifindex` in this namespace, if it exists.
pub fn if_name(ifindex: u32) -> Option<String> {
    // nix's if_indextoname misses the failure (libc returns NULL, nix
    // checks for -1) and returns an empty name: an empty name is none.
    nix::net::if_::if_indextoname(ifindex)
        .ok()
        .and_then(|n| n.into_string().ok())
        .filter(|n| !n.is_empty())
}

/// One line of the stream: an event, or a count of suppressed ones.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EventView {
    /// Wall-clock time, RFC 3339 UTC with milliseconds.
    pub time: String,
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// `moved`: the port it left; `isolated`: the port the frame was for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<&'static str>,
    /// NAT: the guest's end, the remote end, the outside end (addr:port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside: Option<String>,
    /// `suppressed`: the kind and how many since the last report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// Wall-clock time of a CLOCK_MONOTONIC_COARSE stamp, by the clocks'
/// difference now.
pub fn wall_time(mono_ns: u64) -> SystemTime {
    let now_mono = monotonic_coarse_ns();
    let now = SystemTime::now();
    if mono_ns <= now_mono {
        now - std::time::Duration::from_nanos(now_mono - mono_ns)
    } else {
        now + std::time::Duration::from_nanos(mono_ns - now_mono)
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn proto_name(p: u8) -> &'static str {
    match p {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}

fn end(addr: u32, port: u16) -> String {
    format!(
        "{}:{}",
        Ipv4Addr::from(u32::from_be(addr)),
        u16::from_be(port)
    )
}

/// The view of event `e`, its ports named.
pub fn view(e: &Event, names: &mut Names) -> EventView {
    let nat = is_nat(e.kind);
    let mac = (e.mac != [0; 6]).then(|| fmt_mac(&e.mac));
    let other = matches!(e.kind, EV_MOVED | EV_ISOLATED)
        .then(|| names.of(e.other))
        .flatten();
    let outside = (nat && e.nat_port != 0).then(|| end(e.nat_addr, e.nat_port));
    EventView {
        time: rfc3339(wall_time(e.ts_ns)),
        event: kind_name(e.kind),
        port: names.of(e.ifindex),
        ifindex: (e.ifindex != 0).then_some(e.ifindex),
        mac,
        other_port: other,
        proto: nat.then(|| proto_name(e.proto)),
        guest: nat.then(|| end(e.saddr, e.sport)),
        remote: nat.then(|| end(e.daddr, e.dport)),
        outside,
        kind: None,
        count: None,
    }
}

/// The line reporting `count` suppressed events of `kind`.
pub fn suppressed_view(kind: u16, count: u64) -> EventView {
    EventView {
        time: rfc3339(SystemTime::now()),
        event: "suppressed",
        port: None,
        ifindex: None,
        mac: None,
        other_port: None,
        proto: None,
        guest: None,
        remote: None,
        outside: None,
        kind: Some(kind_name(kind)),
        count: Some(count),
    }
}

impl std::fmt::Display for EventView {
    /// One line: time, event, port, then what the event has.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let (Some(kind), Some(n)) = (self.kind, self.count) {
            return write!(f, "{} {n} {kind} events suppressed", self.time);
        }
        write!(f, "{} {:<11}", self.time, self.event)?;
        if let Some(p) = &self.port {
            write!(f, " {p}")?;
        }
        if let Some(m) = &self.mac {
            write!(f, " {m}")?;
        }
        match (self.event, &self.other_port) {
            ("moved", Some(o)) => write!(f, " from {o}")?,
            ("isolated", Some(o)) => write!(f, " to {o}")?,
            _ => {}
        }
        if let (Some(p), Some(g), Some(r)) = (self.proto, &self.guest, &self.remote) {
            write!(f, " {p} {g} -> {r}")?;
            if let Some(o) = &self.outside {
                write!(f, " as {o}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let t = |s: u64| rfc3339(UNIX_EPOCH + std::time::Duration::from_millis(s));
        assert_eq!(t(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(t(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(t(1_796_679_999_000), "2026-12-07T21:46:39.000Z");
    }

    #[test]
    fn lines_name_ports_and_flows() {
        let mut names = Names::default();
        names.0.insert(7, "tap0".into());
        names.0.insert(8, "tap1".into());
        let e = Event {
            kind: EV_MOVED,
            ifindex: 7,
            other: 8,
            mac: [2, 0, 0, 0, 0, 1],
            ..Default::default()
        };
        let v = view(&e, &mut names);
        let line = v.to_string();
        assert!(
            line.ends_with("moved       tap0 02:00:00:00:00:01 from tap1"),
            "{line}"
        );
        let e = Event {
            kind: EV_NAT_NEW,
            ifindex: 7,
            proto: IPPROTO_UDP,
            saddr: u32::from(Ipv4Addr::new(10, 0, 0, 2)).to_be(),
            sport: 1234u16.to_be(),
            daddr: u32::from(Ipv4Addr::new(192, 0, 2, 1)).to_be(),
            dport: 53u16.to_be(),
            nat_addr: u32::from(Ipv4Addr::new(198, 51, 100, 1)).to_be(),
            nat_port: 40000u16.to_be(),
            ..Default::default()
        };
        let line = view(&e, &mut names).to_string();
        assert!(
            line.ends_with(
                "nat_new     tap0 udp 10.0.0.2:1234 -> 192.0.2.1:53 as 198.51.100.1:40000"
            ),
            "{line}"
        );
        let s = suppressed_view(EV_SPOOFED, 9900).to_string();
        assert!(s.ends_with(" 9900 spoofed events suppressed"), "{s}");
        let j = serde_json::to_value(suppressed_view(EV_SPOOFED, 3)).unwrap();
        assert_eq!(j["event"], "suppressed");
        assert_eq!(j["kind"], "spoofed");
        assert_eq!(j["count"], 3);
    }
}
