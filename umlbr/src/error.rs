//! Errors of the umlbr library: each says what went wrong and with what.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    #[error("interface name {0:?} is longer than 15 bytes")]
    NameTooLong(String),
    #[error("interface name {0:?} is not valid (empty, or contains '/', ':' or white space)")]
    BadName(String),
    #[error("an interface named {0:?} already exists")]
    InterfaceExists(String),
    #[error("bridge {0:?} does not exist (see `umlbr show`)")]
    NoSuchBridge(String),
    #[error("no bridge exists in this network namespace; create one with `umlbr up NAME`")]
    NoBridge,
    #[error("several bridges exist ({0}); name one with --bridge")]
    AmbiguousBridge(String),
    #[error("{iface} is already a port of bridge {bridge}")]
    AlreadyAttached { iface: String, bridge: String },
    #[error(
        "{iface} is attached to a umlbr bridge that no longer exists; run `umlbr detach {iface}`"
    )]
    OrphanPort { iface: String },
    #[error("{iface} already has another XDP program (id {prog_id}); umlbr will not replace it")]
    ForeignXdp { iface: String, prog_id: u32 },
    #[error("bridge {bridge} already has an uplink ({uplink})")]
    UplinkExists { bridge: String, uplink: String },
    #[error("{0} has no IPv4 address")]
    NoAddress(String),
    #[error("invalid {0}")]
    BadValue(String),
    #[error("{0} has no Ethernet address; only Ethernet devices can be ports")]
    NotEthernet(String),
    #[error("{0} is not a port of any umlbr bridge")]
    NotAttached(String),
    #[error("{0} is the bridge's own host port; use `umlbr down` to remove the bridge")]
    HostPort(String),
    #[error("{iface} is not a tap device made by umlbr or tunctl (it is a {kind})")]
    NotATap { iface: String, kind: String },
    #[error("bridge {bridge} has {max} ports already")]
    TooManyPorts { bridge: String, max: u32 },
    #[error("invalid MAC address {0:?} (expected six hex bytes like 02:00:00:00:00:01)")]
    BadMac(String),
    #[error("{0} is not a unicast MAC address; the FDB holds unicast stations only")]
    MulticastMac(String),
    #[error("MAC {mac} is not in the FDB of bridge {bridge}")]
    NoSuchFdbEntry { mac: String, bridge: String },
    #[error("invalid address {0:?} (expected CIDR like 192.168.2.1/24)")]
    BadCidr(String),
    #[error("no such user {0:?}")]
    NoSuchUser(String),
    #[error("no such group {0:?}")]
    NoSuchGroup(String),
    #[error("umlbr needs root (missing {0}); run it with sudo")]
    NotPrivileged(String),
    #[error("this kernel lacks what umlbr needs: {0}")]
    KernelFeature(String),
    // The cause is part of the message and not also a `source`, so that a
    // printed chain names it once.
    #[error("netlink request failed ({what}): {err}")]
    Netlink { what: String, err: rtnetlink::Error },
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    #[error("BPF map {map}: {err}")]
    Map {
        map: &'static str,
        err: aya::maps::MapError,
    },
    #[error("loading umlbr's eBPF programs: {0}")]
    Load(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            err: source,
        }
    }

    pub(crate) fn netlink(what: impl Into<String>, source: rtnetlink::Error) -> Self {
        Error::Netlink {
            what: what.into(),
            err: source,
        }
    }
}
