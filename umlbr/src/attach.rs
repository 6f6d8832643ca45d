//! The options of `umlbr attach`: how an interface becomes a port. A
//! module of its own so that `port` (which attaches with them) and
//! `expect` (which records them for `watch`, in `attach`'s own words)
//! both use it without naming each other: `port` calls `expect::record`,
//! and `expect` names nothing of `port`.
use std::net::IpAddr;

/// How `attach` makes an interface a port.
#[derive(Clone, Debug, Default)]
pub struct AttachOptions {
    /// The host's NIC onto the LAN.
    pub uplink: bool,
    /// Switched by the TC program alone.
    pub tc_only: bool,
    /// Most MACs the port may learn (0: no limit); by default
    /// `default_max_learned` of its kind.
    pub max_learned: Option<u32>,
    /// Never reaches another isolated port (PORT_F_ISOLATED); not for an
    /// uplink.
    pub isolated: bool,
    /// Most floods a second the port may send (0: no limit); by default
    /// `default_flood_limit` of its kind.
    pub flood_limit: Option<u32>,
    /// Port security (PORT_F_LOCKED): the port sends only from `macs`
    /// (made its static FDB entries) and learns nothing; not for an
    /// uplink, and only with at least one MAC.
    pub lock: bool,
    pub macs: Vec<[u8; 6]>,
    /// With `lock`: the only IPv4 and IPv6 addresses the port may send
    /// from (PORT_F_IP_LOCKED; none: no address check).
    pub ips: Vec<IpAddr>,
    /// A config file created the interface (a tap): `PORT_F_OWN_TAP`.
    pub own_tap: bool,
    /// The port's VLANs (`--vlan`, `--trunk`, `--pvid`); None: the
    /// default VLAN alone.
    pub vlans: Option<crate::vlan::Vlans>,
}
