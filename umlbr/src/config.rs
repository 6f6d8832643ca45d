//! The config file: one bridge described completely in TOML (its
//! addresses, aging, uplink or masquerade, ports with their options,
//! taps to create, static FDB entries), read back from a running bridge
//! (`umlbr config NAME`), and applied to one (`umlbr apply FILE`,
//! `umlbr up --config FILE`) by the narrowest changes that get there.
//!
//! Values are parsed by the same functions that parse the command line's
//! (`parse_cidr`, `parse_mac`, `parse_port_range`, `parse_timeout`); a
//! wrong file is an error naming the file, line, column and key.
//!
//! What `apply` changes in place, and what it refuses:
//! - `addresses`: missing ones are added; one the bridge has but the file
//!   lacks is refused (the masquerade's subnet may hang on it).
//! - `aging`: changed in place (the learned entries stay).
//! - `masquerade`: added or removed; changing it is refused (it would
//!   drop every NAT mapping): remove it, apply, add it again.
//! - `[[port]]`: a port the file lacks is detached, and its tap deleted
//!   if and only if a config created it (`[port.tap]`; marked in the
//!   port's record, `PORT_F_OWN_TAP`); a new port is attached (its tap
//!   created first if `[port.tap]` asks and it does not exist);
//!   `max_learned` and `flood_limit` change in place; any other option
//!   re-attaches that port alone (its FDB entries and counters start
//!   again). A tap that exists is never changed (`[port.tap]` is how to
//!   create it). Untouched ports keep their FDB entries and counters.
//! - `[[fdb]]`: static entries added and removed (the host's own MAC, an
//!   uplink's and a locked port's `macs` are not `[[fdb]]` entries).
//! - `[[forward]]`: port forwards added and removed (one whose target
//!   changes is removed and added again: its flows end); they need
//!   `[masquerade]`, and go with it when it is removed.
//! - `[dhcp]`: started or stopped; a changed `range` starts dnsmasq again
//!   with it (the lease file, and so the leases, kept).
//! - `[[lease]]`: static leases added and removed (`lease add`/`del`).
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddrV4},
    ops::RangeInclusive,
    path::Path,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};
use umlbr_common::{
    DEFAULT_NAT_MAX_PER_GUEST, FDB_F_LOCAL, FDB_F_STATIC, NatConfig, PORT_F_ISOLATED,
    PORT_F_LOCKED, PORT_KIND_TAP, PORT_KIND_UPLINK, PORT_KIND_VXLAN,
};

use crate::{
    attach::AttachOptions,
    bridge::Bridge,
    dhcp::{self, DhcpOptions},
    error::Error,
    fdb,
    forward::{self, Forward, Proto},
    lifecycle::{self, UpOptions},
    link::{Link, Net, check_ifname, fmt_mac, parse_cidr, parse_mac},
    nat::{self, NatOptions, NatTimeout, parse_port_range, parse_timeout},
    port::{self, PORT_F_OWN_TAP},
    tap::{self, TapOptions},
    vlan::Vlans,
};

/// The aging times `up --aging` and `aging` take, in seconds.
pub const AGING_SECS: RangeInclusive<u64> = 1..=1_000_000;

/// What can go wrong with a config file or applying it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is no valid config: where, and which key.
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Parse {
        path: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    /// Values that parse but do not go together.
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
    /// `apply` cannot make this change in place.
    #[error("{key}: cannot change in place: {message}")]
    Refused { key: String, message: String },
    #[error("bridge {0} is not up (`umlbr up --config FILE` creates it)")]
    NotUp(String),
    #[error(transparent)]
    Umlbr(#[from] Error),
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// One bridge, completely.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The bridge, and its host interface.
    pub name: String,
    /// The host interface's addresses (`up --address`, repeatable); a
    /// single string is taken too, and `address` for `addresses`.
    #[serde(
        default,
        alias = "address",
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub addresses: Vec<Cidr>,
    /// Seconds after which a learned MAC is forgotten (`up --aging`).
    #[serde(
        default,
        deserialize_with = "aging",
        skip_serializing_if = "Option::is_none"
    )]
    pub aging: Option<u64>,
    /// The host's NIC as the uplink port, with default options
    /// (`up --uplink`); `[[port]]` with `uplink = true` gives options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    /// The host port's VLANs (`umlbr vlan NAME --vlan`, `--trunk`,
    /// `--pvid`), as a port's `vlan`, `trunk` and `pvid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_vlan: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_trunk: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_pvid: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<Masquerade>,
    #[serde(default, rename = "port", skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, rename = "fdb", skip_serializing_if = "Vec::is_empty")]
    pub fdb: Vec<StaticEntry>,
    /// Port forwards (`forward add`).
    #[serde(default, rename = "forward", skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<ForwardEntry>,
    /// DHCP, DNS and router advertisements (`up --dhcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<Dhcp>,
    /// Static DHCP leases (`lease add`).
    #[serde(default, rename = "lease", skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<Lease>,
}

/// `forward add NAME PROTO PORT TO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardEntry {
    pub proto: Proto,
    pub port: u16,
    /// GUEST_ADDR:GUEST_PORT.
    pub to: SocketAddrV4,
}

impl ForwardEntry {
    fn forward(&self) -> Forward {
        Forward {
            proto: self.proto,
            port: self.port,
            to_addr: *self.to.ip(),
            to_port: self.to.port(),
        }
    }
}

/// `up --dhcp [--dhcp-range LO-HI]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dhcp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<DhcpRange>,
}

/// `lease add NAME MAC ADDR [--hostname H]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub mac: Mac,
    pub address: std::net::Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

impl Lease {
    fn to_static(&self) -> dhcp::StaticLease {
        dhcp::StaticLease {
            mac: self.mac.0,
            addr: self.address,
            hostname: self.hostname.clone(),
        }
    }
}

/// A list, or one value alone (old files had `address = "CIDR"`).
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<Cidr>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a CIDR or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<Cidr>, E> {
            parse_cidr(v).map(|c| vec![Cidr(c)]).map_err(E::custom)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Vec<Cidr>, A::Error> {
            let mut out = Vec::new();
            while let Some(c) = a.next_element::<Cidr>()? {
                out.push(c);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// `up --masquerade IFACE` and its options.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Masquerade {
    pub uplink: String,
    /// `--nat-ports LO-HI`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// `--nat-timeout KEY=SECONDS`, as a table of KEY = SECONDS.
    #[serde(default, skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
    /// `--nat-max-per-guest N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_guest: Option<u32>,
}

/// A port: `attach IFACE` and its options; with `tap`, a tap created
/// first (`tap add`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub uplink: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub tc_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_learned: Option<u32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub isolated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flood_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub lock: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub macs: Vec<Mac>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// Create the interface as a persistent tap if it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<Tap>,
    /// An access port of this VLAN (`attach --vlan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// A trunk of these VLANs (`--trunk`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trunk: Vec<u16>,
    /// The trunk's untagged VLAN (`--pvid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvid: Option<u16>,
}

/// `tap add`'s options.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tap {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub vnet_hdr: bool,
}

/// `fdb add MAC PORT --static`; PORT may be the bridge's name (the host).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticEntry {
    pub mac: Mac,
    pub port: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn aging<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let secs = u64::deserialize(d)?;
    if !AGING_SECS.contains(&secs) {
        return Err(D::Error::custom(format!(
            "{secs} is not in {}..={} seconds",
            AGING_SECS.start(),
            AGING_SECS.end()
        )));
    }
    Ok(Some(secs))
}

/// A value written as a string and parsed by the command line's parser.
macro_rules! string_value {
    ($(#[$m:meta])* $name:ident($inner:ty), $parse:expr, $fmt:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $inner);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $parse(s.as_str()).map($name).map_err(D::Error::custom)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl fmt::Display for $name {
            #[allow(clippy::redundant_closure_call)]
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&$fmt(&self.0))
            }
        }
    };
}

string_value!(
    /// ADDR/PREFIX, as `--address`.
    Cidr((IpAddr, u8)),
    parse_cidr,
    |(a, p): &(IpAddr, u8)| format!("{a}/{p}")
);
string_value!(
    /// aa:bb:cc:dd:ee:ff, as `--mac`.
    Mac([u8; 6]),
    parse_mac,
    fmt_mac
);
string_value!(
    /// LO-HI, as `--dhcp-range`.
    DhcpRange((std::net::Ipv4Addr, std::net::Ipv4Addr)),
    dhcp::parse_range,
    |(lo, hi): &(std::net::Ipv4Addr, std::net::Ipv4Addr)| format!("{lo}-{hi}")
);
string_value!(
    /// LO-HI, as `--nat-ports`.
    PortRange((u16, u16)),
    parse_port_range,
    |(lo, hi): &(u16, u16)| format!("{lo}-{hi}")
);

/// `--nat-timeout`s as a table KEY = SECONDS, each checked by
/// `parse_timeout`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeouts(pub Vec<(NatTimeout, u64)>);

impl Timeouts {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Timeouts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = BTreeMap::<String, i64>::deserialize(d)?;
        let mut out = Vec::new();
        for (k, v) in table {
            out.push(parse_timeout(&format!("{k}={v}")).map_err(D::Error::custom)?);
        }
        Ok(Timeouts(out))
    }
}

impl Serialize for Timeouts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m: BTreeMap<&str, u64> = self.0.iter().map(|(t, v)| (t.key(), *v)).collect();
        m.serialize(s)
    }
}

impl Masquerade {
    pub fn options(&self) -> NatOptions {
        NatOptions {
            ports: self.ports.map(|p| p.0),
            timeouts: self.timeouts.0.clone(),
            max_per_guest: self.max_per_guest,
        }
    }
}

impl Port {
    /// How `attach` makes this port (`own_tap`: a config created its
    /// tap); also for `umlbr watch` attaching a tap that came back.
    pub fn attach_options(&self, own_tap: bool) -> AttachOptions {
        AttachOptions {
            uplink: self.uplink,
            tc_only: self.tc_only,
            max_learned: self.max_learned,
            isolated: self.isolated,
            flood_limit: self.flood_limit,
            lock: self.lock,
            macs: self.macs.iter().map(|m| m.0).collect(),
            ips: self.ips.clone(),
            own_tap,
            vlans: self.vlans(),
        }
    }

    /// The port's VLANs, as `attach` takes them.
    pub fn vlans(&self) -> Option<Vlans> {
        let v = vlans_of((self.vlan, &self.trunk, self.pvid));
        (!v.is_default()).then_some(v)
    }
}

/// Line and column (from 1) of byte `at` of `src`.
fn line_col(src: &str, at: usize) -> (usize, usize) {
    let before = &src[..at.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The key a parse error at byte `at` is about: the table it is in
/// (the last `[header]` before it) and the `key =` on its line.
fn key_at(src: &str, at: usize, message: &str) -> String {
    let at = at.min(src.len());
    let line_start = src[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = src[at..].find('\n').map_or(src.len(), |i| at + i);
    let line = &src[line_start..line_end];
    let table = src[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    // A missing key is the table's; its span is the table's start.
    let key = match line.split_once('=') {
        _ if message.starts_with("missing field") => None,
        Some((k, _)) if !line.trim_start().starts_with('[') => Some(k.trim().to_string()),
        _ => None,
    };
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k,
        (Some(t), None) => t,
        (None, None) => "(top level)".into(),
    }
}

/// Parse `src`, the text of `path`: syntax, types, values, and what
/// does not go together.
pub fn parse(path: &str, src: &str) -> Result<Config> {
    let cfg: Config = toml::from_str(src).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        let (line, column) = line_col(src, at);
        let message = e.message().trim().replace('\n', "; ");
        ConfigError::Parse {
            path: path.into(),
            line,
            column,
            key: key_at(src, at, &message),
            message,
        }
    })?;
    cfg.check().map_err(|(key, message)| ConfigError::Invalid {
        path: path.into(),
        key,
        message,
    })?;
    Ok(cfg)
}

/// Read and parse the config file `path`.
pub fn load(path: &Path) -> Result<Config> {
    let p = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: p.clone(),
        source,
    })?;
    parse(&p, &src)
}

/// A port's `vlan`, `trunk` and `pvid` keys (`k` names them): ids
/// 1-4094, an access port or a trunk, `pvid` only with `trunk`.
fn check_vlans(
    (vlan, trunk, pvid): (Option<u16>, &[u16], Option<u16>),
    k: impl Fn(&str) -> String,
) -> Result<(), (String, String)> {
    let bad = |k: String, m: &str| Err((k, m.to_string()));
    let bad_id = |v: &u16| !(1..=umlbr_common::VLAN_MAX).contains(v);
    if vlan.iter().any(bad_id) {
        return bad(k("vlan"), "VLAN ids are 1-4094");
    }
    if trunk.iter().any(bad_id) {
        return bad(k("trunk"), "VLAN ids are 1-4094");
    }
    if pvid.iter().any(bad_id) {
        return bad(k("pvid"), "VLAN ids are 1-4094");
    }
    if vlan.is_some() && !trunk.is_empty() {
        return bad(
            k("vlan"),
            "conflicts with `trunk` (an access port or a trunk)",
        );
    }
    if pvid.is_some() && trunk.is_empty() {
        return bad(k("pvid"), "needs `trunk`");
    }
    Ok(())
}

/// The VLANs of `vlan`, `trunk` and `pvid` keys; the default VLAN alone
/// without them.
fn vlans_of((vlan, trunk, pvid): (Option<u16>, &[u16], Option<u16>)) -> Vlans {
    match (vlan, trunk.is_empty()) {
        (Some(v), _) => Vlans::access(v),
        (None, false) => Vlans::trunk(trunk, pvid.unwrap_or(0)),
        (None, true) => Vlans::default(),
    }
}

/// `v` as `vlan`, `trunk` and `pvid` keys.
fn vlan_keys(v: &Vlans) -> (Option<u16>, Vec<u16>, Option<u16>) {
    if v.is_default() {
        (None, Vec::new(), None)
    } else if v.tagged.is_empty() {
        (Some(v.pvid), Vec::new(), None)
    } else {
        (None, v.tagged.clone(), (v.pvid != 0).then_some(v.pvid))
    }
}

impl Config {
    /// The host port's VLANs.
    pub fn host_vlans(&self) -> Vlans {
        vlans_of((self.host_vlan, &self.host_trunk, self.host_pvid))
    }

    /// What the command line's `conflicts_with` and `requires` refuse,
    /// and what only a file can get wrong (a port twice): (key, why).
    fn check(&self) -> Result<(), (String, String)> {
        let bad = |k: String, m: &str| Err((k, m.to_string()));
        if let Err(e) = check_ifname(&self.name) {
            return bad("name".into(), &e.to_string());
        }
        check_vlans((self.host_vlan, &self.host_trunk, self.host_pvid), |f| {
            format!("host_{f}")
        })?;
        if self.uplink.is_some() && self.masquerade.is_some() {
            return bad("uplink".into(), "conflicts with [masquerade]");
        }
        if let Some(m) = &self.masquerade {
            if !self.addresses.iter().any(|c| c.0.0.is_ipv4()) {
                return bad(
                    "masquerade".into(),
                    "needs an IPv4 address in `addresses` (the guests' subnet)",
                );
            }
            if let Err(e) = check_ifname(&m.uplink) {
                return bad("masquerade.uplink".into(), &e.to_string());
            }
        }
        let mut names = BTreeSet::new();
        let mut uplinks = 0;
        for (i, p) in self.all_ports().iter().enumerate() {
            let k = |f: &str| format!("port[{i}].{f}");
            if let Err(e) = check_ifname(&p.name) {
                return bad(k("name"), &e.to_string());
            }
            if p.name == self.name || !names.insert(p.name.clone()) {
                return bad(k("name"), &format!("{} is named twice", p.name));
            }
            if self.masquerade.as_ref().is_some_and(|m| m.uplink == p.name) {
                return bad(k("name"), "is the masquerade's uplink, which is no port");
            }
            if p.uplink {
                uplinks += 1;
                if uplinks > 1 {
                    return bad(k("uplink"), "a bridge has one uplink");
                }
                if self.masquerade.is_some() {
                    return bad(k("uplink"), "conflicts with [masquerade]");
                }
                for (set, f) in [(p.isolated, "isolated"), (p.lock, "lock")] {
                    if set {
                        return bad(k(f), "conflicts with uplink (a LAN is behind it)");
                    }
                }
                if p.tap.is_some() {
                    return bad(k("tap"), "an uplink is the host's NIC, not a tap");
                }
            }
            if p.lock && p.macs.is_empty() {
                return bad(k("lock"), "needs `macs`");
            }
            check_vlans((p.vlan, &p.trunk, p.pvid), k)?;
            if !p.lock && (!p.macs.is_empty() || !p.ips.is_empty()) {
                return bad(k("macs"), "`macs` and `ips` need `lock = true`");
            }
        }
        let addrs: Vec<(IpAddr, u8)> = self.addresses.iter().map(|c| c.0).collect();
        if let Some(d) = &self.dhcp
            && let Err(e) = dhcp::plan(&self.name, &addrs, d.range.map(|r| r.0))
        {
            let key = if d.range.is_some() {
                "dhcp.range"
            } else {
                "dhcp"
            };
            return bad(key.into(), &e.to_string());
        }
        let mut leases: Vec<dhcp::StaticLease> = Vec::new();
        for (i, l) in self.leases.iter().enumerate() {
            if let Some(h) = &l.hostname
                && let Err(e) = dhcp::parse_hostname(h)
            {
                return bad(format!("lease[{i}].hostname"), &e.to_string());
            }
            if leases.iter().any(|o| o.mac == l.mac.0) {
                return bad(format!("lease[{i}].mac"), "has a lease already");
            }
            let s = l.to_static();
            if let Err(e) = dhcp::check_static(&self.name, &addrs, &s, &leases) {
                return bad(format!("lease[{i}]"), &e.to_string());
            }
            leases.push(s);
        }
        for (i, e) in self.fdb.iter().enumerate() {
            if e.port != self.name && !names.contains(&e.port) {
                return bad(
                    format!("fdb[{i}].port"),
                    &format!("{} is neither the bridge nor one of its ports", e.port),
                );
            }
            if e.mac.0[0] & 1 != 0 || e.mac.0 == [0; 6] {
                return bad(format!("fdb[{i}].mac"), "not a unicast MAC");
            }
        }
        let mut forwarded = BTreeSet::new();
        for (i, f) in self.forwards.iter().enumerate() {
            let k = |f: &str| format!("forward[{i}].{f}");
            if self.masquerade.is_none() {
                return bad(k("port"), "a forward needs [masquerade]");
            }
            if f.port == 0 || f.to.port() == 0 {
                return bad(k("port"), "ports are 1-65535");
            }
            if !forwarded.insert((f.proto, f.port)) {
                return bad(
                    k("port"),
                    &format!("{} {} is forwarded twice", f.proto, f.port),
                );
            }
        }
        Ok(())
    }

    /// The ports, `uplink = "IFACE"` among them.
    pub fn all_ports(&self) -> Vec<Port> {
        let mut out: Vec<Port> = self
            .uplink
            .iter()
            .map(|u| Port {
                name: u.clone(),
                uplink: true,
                ..Default::default()
            })
            .collect();
        out.extend(self.ports.iter().cloned());
        out
    }
}

/// What decides how a port forwards, compared between the file and the
/// running bridge.
#[derive(Debug, PartialEq)]
struct Effective {
    uplink: bool,
    xdp: bool,
    isolated: bool,
    lock: bool,
    macs: BTreeSet<[u8; 6]>,
    ips: BTreeSet<IpAddr>,
    limits: (u32, u32),
    vlans: Vlans,
}

/// Whether `attach` gives `link` no XDP program although not asked to:
/// a veth uplink, a tap with vnet headers, a VXLAN device.
fn tc_implied(link: &Link, uplink: bool) -> bool {
    if uplink {
        link.kind.as_deref() == Some("veth")
    } else {
        port::is_vxlan(link) || link.has_vnet_hdr()
    }
}

fn kind_of(uplink: bool, link: &Link) -> u32 {
    if uplink {
        PORT_KIND_UPLINK
    } else if port::is_vxlan(link) {
        PORT_KIND_VXLAN
    } else {
        PORT_KIND_TAP
    }
}

fn desired(p: &Port, link: &Link) -> Effective {
    let kind = kind_of(p.uplink, link);
    Effective {
        uplink: p.uplink,
        xdp: !p.tc_only && !tc_implied(link, p.uplink),
        isolated: p.isolated,
        lock: p.lock,
        macs: p.macs.iter().map(|m| m.0).collect(),
        ips: p.ips.iter().copied().collect(),
        limits: (
            p.max_learned.unwrap_or(port::default_max_learned(kind)),
            p.flood_limit.unwrap_or(port::default_flood_limit(kind)),
        ),
        vlans: p.vlans().unwrap_or_default(),
    }
}

/// A port of the running bridge as the file would say it, whether a
/// config created its tap, and how it forwards.
fn current_port(br: &Bridge, link: &Link) -> (Port, bool, Effective) {
    let (kind, flags) = port::kind_and_flags(&br.maps, link.index).unwrap_or_default();
    let budget = br.maps.learn.get(&link.index, 0).unwrap_or_default();
    let uplink = kind == PORT_KIND_UPLINK;
    let lock = flags & PORT_F_LOCKED != 0;
    let (macs, ips) = if lock {
        (
            port::bound_macs(&br.maps, link.index),
            port::bound_ips(&br.maps, link.index),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let xdp = link.xdp_prog.is_some();
    let own_tap = flags & PORT_F_OWN_TAP != 0;
    let tap = own_tap.then(|| tap_of(link));
    let vlans = crate::vlan::of(&br.maps, link.index);
    let (vlan, trunk, pvid) = vlan_keys(&vlans);
    let p = Port {
        name: link.name.clone(),
        uplink,
        tc_only: !xdp && !tc_implied(link, uplink),
        max_learned: Some(budget.max),
        isolated: flags & PORT_F_ISOLATED != 0,
        flood_limit: Some(budget.flood_pps),
        lock,
        macs: macs.iter().copied().map(Mac).collect(),
        ips: ips.clone(),
        tap,
        vlan,
        trunk,
        pvid,
    };
    let eff = Effective {
        uplink,
        xdp,
        isolated: p.isolated,
        lock,
        macs: macs.into_iter().collect(),
        ips: ips.into_iter().collect(),
        limits: (budget.max, budget.flood_pps),
        vlans,
    };
    (p, own_tap, eff)
}

/// A tap's owner, group and vnet headers, from sysfs.
fn tap_of(link: &Link) -> Tap {
    let id = |f: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{}/{f}", link.name))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|&v| v >= 0)
            .map(|v| v.to_string())
    };
    Tap {
        user: id("owner"),
        group: id("group"),
        vnet_hdr: link.has_vnet_hdr(),
    }
}

/// The static FDB entries the file would list: not the host's own MAC,
/// not an uplink's (local), not a locked port's bound MACs. MAC -> port.
async fn current_fdb(net: &Net, br: &Bridge) -> Result<BTreeMap<[u8; 6], String>> {
    let mut out = BTreeMap::new();
    for (k, v) in br.maps.fdb.iter().filter_map(|e| e.ok()) {
        if v.flags & FDB_F_STATIC == 0 || v.flags & FDB_F_LOCAL != 0 {
            continue;
        }
        let port = if br.is_own(v.ifindex) {
            if Some(k.mac) == br.host.mac {
                continue;
            }
            br.name.clone()
        } else {
            let locked = port::kind_and_flags(&br.maps, v.ifindex)
                .is_some_and(|(_, f)| f & PORT_F_LOCKED != 0);
            match net.link_by_index(v.ifindex).await? {
                Some(l) if !locked => l.name,
                _ => continue,
            }
        };
        out.insert(k.mac, port);
    }
    Ok(out)
}

/// The host interface's addresses, but IPv6 link-local ones (the kernel's).
async fn current_addresses(net: &Net, br: &Bridge) -> Result<Vec<Cidr>> {
    let mut out: Vec<Cidr> = net
        .ip_addrs(br.host.index)
        .await?
        .into_iter()
        .filter(|(a, _)| !matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .map(Cidr)
        .collect();
    out.sort();
    Ok(out)
}

/// The masquerade as the file would say it, every value written out.
async fn current_masquerade(net: &Net, br: &Bridge) -> Result<Option<Masquerade>> {
    let c = br.maps.nat_config()?;
    if c.nat_ifindex == 0 {
        return Ok(None);
    }
    let Some(link) = net.link_by_index(c.nat_ifindex).await? else {
        return Ok(None);
    };
    Ok(Some(Masquerade {
        uplink: link.name,
        ports: Some(PortRange((c.port_lo, c.port_hi))),
        timeouts: Timeouts(
            NatTimeout::ALL
                .iter()
                .map(|&t| (t, timeout_ns(&c, t) / 1_000_000_000))
                .collect(),
        ),
        max_per_guest: Some(c.max_per_guest),
    }))
}

fn timeout_ns(c: &NatConfig, t: NatTimeout) -> u64 {
    match t {
        NatTimeout::TcpEstablished => c.tcp_established_ns,
        NatTimeout::TcpTransitory => c.tcp_transitory_ns,
        NatTimeout::TcpClosing => c.tcp_closing_ns,
        NatTimeout::Udp => c.udp_ns,
        NatTimeout::UdpStream => c.udp_stream_ns,
        NatTimeout::Icmp => c.icmp_ns,
    }
}

/// The masquerade a file asks for, with the defaults `attach` would
/// choose: (ports, timeouts in ns, max per guest).
fn resolved(m: &Masquerade) -> Result<((u16, u16), Vec<u64>, u32)> {
    let ports = nat::choose_ports(m.ports.map(|p| p.0), nat::local_port_range())?;
    let mut c = NatConfig::default();
    NatTimeout::apply(&mut c, &m.timeouts.0);
    let t = NatTimeout::ALL.iter().map(|&t| timeout_ns(&c, t)).collect();
    Ok((
        ports,
        t,
        m.max_per_guest.unwrap_or(DEFAULT_NAT_MAX_PER_GUEST),
    ))
}

/// The running bridge `br` as a config file would describe it.
pub async fn current(net: &Net, br: &Bridge) -> Result<Config> {
    let mut ports = Vec::new();
    for ifindex in br.port_ifindexes() {
        if br.is_own(ifindex) {
            continue;
        }
        if let Some(link) = net.link_by_index(ifindex).await? {
            ports.push(current_port(br, &link).0);
        }
    }
    // An uplink with the defaults is `uplink = "IFACE"`, as `up --uplink`.
    let mut uplink = None;
    if let Some(i) = ports.iter().position(|p| p.uplink) {
        let p = &ports[i];
        let plain = Port {
            name: p.name.clone(),
            uplink: true,
            max_learned: Some(port::default_max_learned(PORT_KIND_UPLINK)),
            flood_limit: Some(port::default_flood_limit(PORT_KIND_UPLINK)),
            ..Default::default()
        };
        if *p == plain {
            uplink = Some(ports.remove(i).name);
        }
    }
    let fdb = current_fdb(net, br)
        .await?
        .into_iter()
        .map(|(mac, port)| StaticEntry {
            mac: Mac(mac),
            port,
        })
        .collect();
    let (host_vlan, host_trunk, host_pvid) =
        vlan_keys(&crate::vlan::of(&br.maps, br.switch_port.index));
    Ok(Config {
        name: br.name.clone(),
        addresses: current_addresses(net, br).await?,
        aging: Some(br.aging_secs()?),
        uplink,
        host_vlan,
        host_trunk,
        host_pvid,
        masquerade: current_masquerade(net, br).await?,
        ports,
        fdb,
        forwards: current_forwards(br),
        dhcp: current_dhcp(&br.name)?,
        leases: current_leases(&br.name)?,
    })
}

/// The DHCP service as the file would say it, its range written out.
fn current_dhcp(name: &str) -> Result<Option<Dhcp>> {
    Ok(dhcp::read(name)?.map(|d| Dhcp {
        range: d
            .range
            .and_then(|r| dhcp::parse_range(&r).ok())
            .map(DhcpRange),
    }))
}

fn current_leases(name: &str) -> Result<Vec<Lease>> {
    Ok(dhcp::static_leases(name)?
        .into_iter()
        .map(|l| Lease {
            mac: Mac(l.mac),
            address: l.addr,
            hostname: l.hostname,
        })
        .collect())
}

/// The bridge's forwards as the file says them.
fn current_forwards(br: &Bridge) -> Vec<ForwardEntry> {
    forward::list(br)
        .into_iter()
        .map(|(f, _)| ForwardEntry {
            proto: f.proto,
            port: f.port,
            to: SocketAddrV4::new(f.to_addr, f.to_port),
        })
        .collect()
}

/// `current` as TOML.
pub fn to_toml(cfg: &Config) -> String {
    // Serializing plain data to TOML cannot fail.
    toml::to_string(cfg).unwrap_or_default()
}

/// One change `apply` makes.
#[derive(Clone, Debug)]
pub enum Step {
    AddAddress(Cidr),
    SetAging(u64),
    /// The host port's VLANs, changed in place.
    HostVlans(Vlans),
    Unmasquerade(String),
    /// Detach the port, and delete its tap if a config created it.
    Detach {
        iface: String,
        delete_tap: bool,
    },
    /// Detach and attach again with other options.
    Reattach {
        port: Port,
        own_tap: bool,
    },
    /// Change learning and flood limits in place.
    Limits {
        iface: String,
        max_learned: u32,
        flood_limit: u32,
    },
    Masquerade(Masquerade),
    CreateTap {
        iface: String,
        tap: Tap,
    },
    Attach {
        port: Port,
        own_tap: bool,
    },
    FdbDel([u8; 6]),
    FdbAdd([u8; 6], String),
    ForwardDel(Proto, u16),
    ForwardAdd(Forward),
    StopDhcp,
    /// Start the DHCP service, or start it again with another range
    /// (the lease file kept).
    StartDhcp(Dhcp),
    LeaseDel([u8; 6]),
    LeaseAdd(Lease),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::AddAddress(c) => write!(f, "add address {c}"),
            Step::SetAging(s) => write!(f, "set aging to {s} s"),
            Step::HostVlans(v) => write!(f, "set the host port's VLANs to {v}"),
            Step::Unmasquerade(i) => write!(f, "stop masquerading through {i}"),
            Step::Detach { iface, delete_tap } => {
                let del = if *delete_tap {
                    " and delete the tap"
                } else {
                    ""
                };
                write!(f, "detach {iface}{del}")
            }
            Step::Reattach { port, .. } => write!(f, "re-attach {} with new options", port.name),
            Step::Limits {
                iface,
                max_learned,
                flood_limit,
            } => write!(
                f,
                "set {iface}'s max_learned to {max_learned}, flood_limit to {flood_limit}"
            ),
            Step::Masquerade(m) => write!(f, "masquerade through {}", m.uplink),
            Step::CreateTap { iface, .. } => write!(f, "create tap {iface}"),
            Step::Attach { port, .. } => write!(f, "attach {}", port.name),
            Step::FdbDel(m) => write!(f, "remove static FDB entry {}", fmt_mac(m)),
            Step::FdbAdd(m, p) => write!(f, "add static FDB entry {} -> {p}", fmt_mac(m)),
            Step::ForwardDel(proto, port) => write!(f, "remove forward {proto} {port}"),
            Step::ForwardAdd(fw) => write!(f, "add forward {fw}"),
            Step::StopDhcp => write!(f, "stop DHCP"),
            Step::StartDhcp(d) => match d.range {
                Some(r) => write!(f, "serve DHCP (range {r})"),
                None => write!(f, "serve DHCP"),
            },
            Step::LeaseDel(m) => write!(f, "remove static lease of {}", fmt_mac(m)),
            Step::LeaseAdd(l) => write!(f, "give {} the static lease {}", l.mac, l.address),
        }
    }
}

/// The steps that bring the running bridge `cfg.name` to `cfg`, in the
/// order they are made; or the key that cannot change in place.
pub async fn plan(net: &Net, cfg: &Config) -> Result<Vec<Step>> {
    let br = match Bridge::open(net, &cfg.name).await {
        Ok(b) => b,
        Err(Error::NoSuchBridge(_)) => return Err(ConfigError::NotUp(cfg.name.clone())),
        Err(e) => return Err(e.into()),
    };
    let mut steps = settings_steps(net, &br, cfg).await?;
    steps.extend(dhcp_steps(cfg)?);
    let (unmasquerade, masquerade_add) = masquerade_steps(net, &br, cfg).await?;
    let removed = unmasquerade.is_some();
    steps.extend(unmasquerade);
    let ports = port_steps(net, &br, cfg).await?;
    steps.extend(ports.detach);
    steps.extend(ports.change);
    steps.extend(masquerade_add);
    steps.extend(ports.new);
    steps.extend(fdb_steps(net, &br, cfg, &ports.gone).await?);
    steps.extend(lease_steps(cfg)?);
    steps.extend(forward_steps(&br, cfg, removed));
    Ok(steps)
}

/// Addresses (only added), aging, the host port's VLANs.
async fn settings_steps(net: &Net, br: &Bridge, cfg: &Config) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    let have = current_addresses(net, br).await?;
    if let Some(extra) = have.iter().find(|a| !cfg.addresses.contains(a)) {
        return Err(ConfigError::Refused {
            key: "addresses".into(),
            message: format!(
                "{} has {extra}, which the file lacks (remove it with `ip address del`)",
                cfg.name
            ),
        });
    }
    for a in cfg.addresses.iter().filter(|a| !have.contains(a)) {
        steps.push(Step::AddAddress(*a));
    }
    if let Some(a) = cfg.aging
        && a != br.aging_secs()?
    {
        steps.push(Step::SetAging(a));
    }
    let host = cfg.host_vlans();
    if crate::vlan::of(&br.maps, br.switch_port.index) != host {
        steps.push(Step::HostVlans(host));
    }
    Ok(steps)
}

/// DHCP: started, stopped, or started again with the range the file
/// makes (from the addresses it will have).
fn dhcp_steps(cfg: &Config) -> Result<Option<Step>> {
    Ok(match (dhcp::read(&cfg.name)?, &cfg.dhcp) {
        (None, None) => None,
        (Some(_), None) => Some(Step::StopDhcp),
        (None, Some(d)) => Some(Step::StartDhcp(d.clone())),
        (Some(now), Some(d)) => {
            let addrs: Vec<(IpAddr, u8)> = cfg.addresses.iter().map(|c| c.0).collect();
            let want = dhcp::plan(&cfg.name, &addrs, d.range.map(|r| r.0))?
                .map(|s| format!("{}-{}", s.lo, s.hi));
            (want != now.range).then(|| Step::StartDhcp(d.clone()))
        }
    })
}

/// The masquerade, added or removed, never changed in place: the step
/// that removes it (first) and the one that adds it (after the ports).
async fn masquerade_steps(
    net: &Net,
    br: &Bridge,
    cfg: &Config,
) -> Result<(Option<Step>, Option<Step>)> {
    Ok(
        match (current_masquerade(net, br).await?, &cfg.masquerade) {
            (None, None) => (None, None),
            (Some(now), None) => (Some(Step::Unmasquerade(now.uplink)), None),
            (None, Some(m)) => (None, Some(Step::Masquerade(m.clone()))),
            (Some(now), Some(m)) => {
                let (ports, timeouts, max) = resolved(m)?;
                let (now_ports, now_t, now_max) = resolved(&now)?;
                let differs = [
                    ("uplink", now.uplink != m.uplink),
                    ("ports", now_ports != ports),
                    ("timeouts", now_t != timeouts),
                    ("max_per_guest", now_max != max),
                ];
                if let Some((k, _)) = differs.iter().find(|(_, d)| *d) {
                    return Err(ConfigError::Refused {
                        key: format!("masquerade.{k}"),
                        message: "it would drop every NAT mapping: remove [masquerade], \
                              apply, then add it back (or `umlbr down` and `up --config`)"
                            .into(),
                    });
                }
                (None, None)
            }
        },
    )
}

/// What `apply` does to the ports, in the order it does it.
struct PortSteps {
    /// Ports the file lacks.
    detach: Vec<Step>,
    /// Ports whose limits change in place, or that are re-attached.
    change: Vec<Step>,
    /// Ports only the file has (their taps made first if it says so).
    new: Vec<Step>,
    /// The ports detached or re-attached: their static entries go too.
    gone: BTreeSet<String>,
}

async fn port_steps(net: &Net, br: &Bridge, cfg: &Config) -> Result<PortSteps> {
    let want = cfg.all_ports();
    let mut out = PortSteps {
        detach: Vec::new(),
        change: Vec::new(),
        new: Vec::new(),
        gone: BTreeSet::new(),
    };
    let mut present = BTreeSet::new();
    for ifindex in br.port_ifindexes() {
        if br.is_own(ifindex) {
            continue;
        }
        let Some(link) = net.link_by_index(ifindex).await? else {
            continue;
        };
        let (_, own_tap, now) = current_port(br, &link);
        let Some(p) = want.iter().find(|p| p.name == link.name) else {
            out.gone.insert(link.name.clone());
            out.detach.push(Step::Detach {
                iface: link.name.clone(),
                delete_tap: own_tap,
            });
            continue;
        };
        present.insert(p.name.clone());
        let d = desired(p, &link);
        if d == now {
            continue;
        }
        let (max_learned, flood_limit) = d.limits;
        let only_limits = Effective {
            limits: now.limits,
            ..d
        } == now;
        if only_limits {
            out.change.push(Step::Limits {
                iface: p.name.clone(),
                max_learned,
                flood_limit,
            });
        } else {
            out.gone.insert(p.name.clone());
            out.change.push(Step::Reattach {
                port: p.clone(),
                own_tap,
            });
        }
    }
    for p in want.iter().filter(|p| !present.contains(&p.name)) {
        let exists = net.link_by_name(&p.name).await?.is_some();
        let create = !exists && p.tap.is_some();
        if let (true, Some(tap)) = (create, &p.tap) {
            out.new.push(Step::CreateTap {
                iface: p.name.clone(),
                tap: tap.clone(),
            });
        }
        out.new.push(Step::Attach {
            port: p.clone(),
            own_tap: create,
        });
    }
    Ok(out)
}

/// Static entries; those of ports detached or re-attached (`gone`) go
/// with them.
async fn fdb_steps(
    net: &Net,
    br: &Bridge,
    cfg: &Config,
    gone: &BTreeSet<String>,
) -> Result<Vec<Step>> {
    let have: BTreeMap<[u8; 6], String> = current_fdb(net, br)
        .await?
        .into_iter()
        .filter(|(_, p)| !gone.contains(p))
        .collect();
    let want: BTreeMap<[u8; 6], String> =
        cfg.fdb.iter().map(|e| (e.mac.0, e.port.clone())).collect();
    let mut steps: Vec<Step> = have
        .keys()
        .filter(|m| !want.contains_key(*m))
        .map(|m| Step::FdbDel(*m))
        .collect();
    for (mac, p) in &want {
        if have.get(mac) != Some(p) {
            steps.push(Step::FdbAdd(*mac, p.clone()));
        }
    }
    Ok(steps)
}

/// Static leases removed and added.
fn lease_steps(cfg: &Config) -> Result<Vec<Step>> {
    let have = current_leases(&cfg.name)?;
    let mut steps: Vec<Step> = have
        .iter()
        .filter(|l| !cfg.leases.iter().any(|w| w.mac == l.mac))
        .map(|l| Step::LeaseDel(l.mac.0))
        .collect();
    for l in cfg.leases.iter().filter(|l| !have.contains(l)) {
        steps.push(Step::LeaseAdd(l.clone()));
    }
    Ok(steps)
}

/// Forwards, last: after the masquerade they need. Those of a masquerade
/// removed (`unmasquerade`) go with it.
fn forward_steps(br: &Bridge, cfg: &Config, unmasquerade: bool) -> Vec<Step> {
    let have: BTreeSet<ForwardEntry> = if unmasquerade {
        BTreeSet::new()
    } else {
        current_forwards(br).into_iter().collect()
    };
    let want: BTreeSet<ForwardEntry> = cfg.forwards.iter().copied().collect();
    let mut steps: Vec<Step> = have
        .difference(&want)
        .map(|f| Step::ForwardDel(f.proto, f.port))
        .collect();
    steps.extend(
        want.difference(&have)
            .map(|f| Step::ForwardAdd(f.forward())),
    );
    steps
}

/// Make `steps` on bridge `name`; the taps it created are pushed to
/// `created` (for `up` to delete if it fails).
pub async fn execute(
    net: &Net,
    name: &str,
    steps: &[Step],
    created: &mut Vec<String>,
) -> Result<()> {
    for s in steps {
        match s {
            Step::AddAddress(c) => {
                let br = Bridge::open(net, name).await?;
                let (a, p) = c.0;
                net.add_address(br.host.index, name, a, p).await?;
            }
            Step::HostVlans(v) => {
                port::set_vlans(net, name, v).await?;
            }
            Step::SetAging(secs) => {
                let mut br = port::lock(net, Bridge::open(net, name).await?).await?;
                let mut c = br.maps.config()?;
                c.aging_ns = secs.saturating_mul(1_000_000_000);
                br.maps.set_config(c)?;
            }
            Step::Unmasquerade(iface) => {
                let link = net.require(iface).await?;
                nat::detach(net, &link).await?;
            }
            Step::Detach { iface, delete_tap } => {
                port::detach(net, iface).await?;
                if *delete_tap {
                    tap::del(net, iface).await?;
                }
            }
            Step::Reattach { port, own_tap } => {
                port::detach(net, &port.name).await?;
                let opts = port.attach_options(*own_tap);
                port::attach(net, &port.name, Some(name), opts).await?;
            }
            Step::Limits {
                iface,
                max_learned,
                flood_limit,
            } => {
                let link = net.require(iface).await?;
                let mut br = port::lock(net, Bridge::open(net, name).await?).await?;
                port::set_limits(&mut br.maps, link.index, *max_learned, *flood_limit)?;
            }
            Step::Masquerade(m) => {
                nat::attach(net, &m.uplink, Some(name), &m.options()).await?;
            }
            Step::CreateTap { iface, tap: t } => {
                let opts = TapOptions {
                    user: t.user.clone(),
                    group: t.group.clone(),
                    vnet_hdr: t.vnet_hdr,
                };
                tap::add(net, iface, &opts).await?;
                created.push(iface.clone());
            }
            Step::Attach { port, own_tap } => {
                let opts = port.attach_options(*own_tap);
                port::attach(net, &port.name, Some(name), opts).await?;
            }
            Step::FdbDel(mac) => {
                fdb::del(net, (*mac, None), Some(name)).await?;
            }
            Step::FdbAdd(mac, p) => {
                fdb::add(net, (*mac, None), p, true).await?;
            }
            Step::ForwardDel(proto, port) => {
                forward::del(net, Some(name), *proto, *port).await?;
            }
            Step::ForwardAdd(f) => {
                forward::add(net, Some(name), *f).await?;
            }
            Step::StopDhcp => {
                let _lock = crate::lock::take(name)?;
                dhcp::stop(name)?;
            }
            Step::StartDhcp(d) => {
                let _lock = crate::lock::take(name)?;
                let br = Bridge::open(net, name).await?;
                let addrs = net.ip_addrs(br.host.index).await?;
                let opts = DhcpOptions {
                    range: d.range.map(|r| r.0),
                };
                dhcp::start(name, &addrs, &opts)?;
            }
            Step::LeaseDel(mac) => {
                dhcp::lease_del(net, name, *mac).await?;
            }
            Step::LeaseAdd(l) => {
                dhcp::lease_add(net, name, l.to_static()).await?;
            }
        }
    }
    Ok(())
}

/// `apply`: the plan, made unless `dry_run`. Returns the plan.
pub async fn apply(net: &Net, cfg: &Config, dry_run: bool) -> Result<Vec<Step>> {
    let steps = plan(net, cfg).await?;
    if !dry_run {
        execute(net, &cfg.name, &steps, &mut Vec::new()).await?;
    }
    Ok(steps)
}

/// `up --config`: `up` with the file's first address, aging and
/// masquerade, then `apply` for the rest. If that fails, the bridge is
/// removed again and the taps it created deleted.
pub async fn up(net: &Net, cfg: &Config) -> Result<Vec<Step>> {
    let opts = UpOptions {
        addresses: cfg.addresses.iter().map(|c| c.0).collect(),
        aging_secs: cfg.aging,
        uplink: None,
        masquerade: cfg
            .masquerade
            .as_ref()
            .map(|m| (m.uplink.clone(), m.options())),
        dhcp: cfg.dhcp.as_ref().map(|d| DhcpOptions {
            range: d.range.map(|r| r.0),
        }),
    };
    lifecycle::up(net, &cfg.name, &opts).await?;
    let mut created = Vec::new();
    let made = match plan(net, cfg).await {
        Ok(steps) => execute(net, &cfg.name, &steps, &mut created)
            .await
            .map(|()| steps),
        Err(e) => Err(e),
    };
    if made.is_err() {
        let _ = lifecycle::down_named(net, &cfg.name).await;
        for t in &created {
            let _ = tap::del(net, t).await;
        }
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> String {
        parse("f.toml", src).unwrap_err().to_string()
    }

    #[test]
    fn a_full_file_parses() {
        let c = parse(
            "f.toml",
            r#"
name = "br0"
addresses = ["192.168.2.1/24"]
aging = 60
[masquerade]
uplink = "eth0"
ports = "61000-61999"
timeouts = { udp = 5, tcp_closing = 1 }
max_per_guest = 100
[[port]]
name = "tap0"
lock = true
macs = ["52:54:00:12:34:56"]
ips = ["192.168.2.10"]
[port.tap]
user = "1000"
vnet_hdr = true
[[fdb]]
mac = "02:00:00:00:00:01"
port = "tap0"
[[forward]]
proto = "tcp"
port = 8080
to = "192.168.2.10:80"
"#,
        )
        .unwrap();
        assert_eq!(
            c.masquerade.as_ref().unwrap().options().ports,
            Some((61000, 61999))
        );
        assert_eq!(
            c.masquerade.as_ref().unwrap().timeouts.0,
            vec![(NatTimeout::TcpClosing, 1), (NatTimeout::Udp, 5)]
        );
        assert_eq!(c.ports[0].macs[0].0, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(c.forwards[0].to.to_string(), "192.168.2.10:80");
        assert_eq!(c.forwards[0].proto, Proto::Tcp);
        // It prints as it parses.
        assert_eq!(parse("g", &to_toml(&c)).unwrap(), c);
        let c = parse(
            "f.toml",
            r#"
name = "br0"
address = "192.168.2.1/24"
[dhcp]
range = "192.168.2.100-192.168.2.199"
[[lease]]
mac = "02:00:00:00:00:02"
address = "192.168.2.50"
hostname = "g1"
"#,
        )
        .unwrap();
        assert_eq!(c.addresses.len(), 1);
        assert_eq!(c.leases[0].hostname.as_deref(), Some("g1"));
        let c = parse("dhcp.toml", include_str!("../../examples/dhcp.toml")).unwrap();
        assert_eq!(c.addresses.len(), 2);
        assert!(c.dhcp.is_some() && c.leases.len() == 1);
        assert_eq!(parse("g", &to_toml(&c)).unwrap(), c);
    }

    #[test]
    fn errors_name_line_column_and_key() {
        let e = err("name = \"br0\"\naddresses = [\"192.168.2.1/33\"]\n");
        assert!(e.starts_with("f.toml:2:"), "{e}");
        assert!(
            e.contains("addresses") && e.contains("192.168.2.1/33"),
            "{e}"
        );
        let e = err("name = \"br0\"\naddress = \"192.168.2.1/33\"\n");
        assert!(
            e.starts_with("f.toml:2:") && e.contains("192.168.2.1/33"),
            "{e}"
        );
        let e = err(
            "name = \"br0\"\naddresses = [\"10.0.0.1/24\"]\n[dhcp]\nrange = \"10.0.1.2-10.0.1.9\"\n",
        );
        assert!(e.contains("dhcp.range") && e.contains("not within"), "{e}");
        let e = err(
            "name = \"br0\"\naddresses = [\"10.0.0.1/24\"]\n[[lease]]\nmac = \"02:00:00:00:00:01\"\naddress = \"10.0.0.1\"\n",
        );
        assert!(e.contains("lease[0]") && e.contains("own"), "{e}");
        let e = err("name = \"br0\"\n[[port]]\nname = \"tap0\"\nmax_learnd = 3\n");
        assert!(e.starts_with("f.toml:4:1: port.max_learnd"), "{e}");
        let e = err("name = \"br0\"\naging = 0\n");
        assert!(e.starts_with("f.toml:2:9: aging"), "{e}");
        let e = err("name = \"br0\"\n[masquerade]\nuplink = \"eth0\"\ntimeouts = { udp = 0 }\n");
        assert!(
            e.contains("masquerade.timeouts") && e.contains("udp=0"),
            "{e}"
        );
        let e = err("name = \"br0\"\n[[port]]\nname = \"tap0\"\nlock = true\n");
        assert!(e.contains("port[0].lock") && e.contains("macs"), "{e}");
        let e = err(
            "name = \"br0\"\naddresses = [\"10.0.0.1/24\"]\nuplink = \"eth0\"\n[masquerade]\nuplink = \"eth1\"\n",
        );
        assert!(e.contains("uplink: conflicts"), "{e}");
        let e = err(
            "name = \"br0\"\n[[forward]]\nproto = \"tcp\"\nport = 80\nto = \"192.168.2.10:80\"\n",
        );
        assert!(
            e.contains("forward[0].port") && e.contains("[masquerade]"),
            "{e}"
        );
        let e = err(
            "name = \"br0\"\n[[forward]]\nproto = \"sctp\"\nport = 80\nto = \"192.168.2.10:80\"\n",
        );
        assert!(e.contains("forward.proto"), "{e}");
        let e =
            err("name = \"br0\"\n[[forward]]\nproto = \"tcp\"\nport = 80\nto = \"192.168.2.10\"\n");
        assert!(e.contains("forward.to"), "{e}");
    }
}
