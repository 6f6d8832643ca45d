//! Errors of the umlbr library: each says what went wrong and with what,
//! and keeps the error underneath as its `source`. A caller printing the
//! chain (`{:#}` of an anyhow error) gets "what: cause"; some aya errors
//! repeat their own source in their message, so the `umlbr` command skips
//! a cause whose text it has printed already.
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
    #[error("invalid port range {0:?} (expected LO-HI, e.g. 61000-65535)")]
    BadPortRange(String),
    #[error(
        "invalid timeout {0:?} (expected KEY=SECONDS, KEY one of tcp_established, \
         tcp_transitory, tcp_closing, udp, udp_stream, icmp)"
    )]
    BadTimeout(String),
    #[error(
        "invalid NAT ports {lo}-{hi} overlap the host's ip_local_port_range {host_lo}-{host_hi}"
    )]
    NatPortsOverlap {
        lo: u16,
        hi: u16,
        host_lo: u16,
        host_hi: u16,
    },
    #[error(
        "the host's ip_local_port_range {0}-{1} leaves no room for NAT ports; give --nat-ports"
    )]
    NoRoomForNatPorts(u16, u16),
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
    #[error("{iface}: --lock needs at least one --mac (the MACs the guest may send from)")]
    LockWithoutMac { iface: String },
    #[error("{iface}: --mac and --ip bind addresses to a locked port; add --lock")]
    BindWithoutLock { iface: String },
    #[error("{iface}: an uplink cannot be locked (its LAN's stations are not known)")]
    LockedUplink { iface: String },
    #[error("{iface}: cannot bind MAC {mac}: it is a static entry of {owner} on bridge {bridge}")]
    MacTaken {
        iface: String,
        mac: String,
        owner: String,
        bridge: String,
    },
    #[error("{iface}: cannot bind address {addr}: it is bound to {owner} on bridge {bridge}")]
    IpTaken {
        iface: String,
        addr: String,
        owner: String,
        bridge: String,
    },
    #[error("MAC {mac} is not in the FDB of bridge {bridge}")]
    NoSuchFdbEntry { mac: String, bridge: String },
    #[error(
        "{iface} does not carry VLAN {vlan} (see `umlbr show`; `umlbr vlan {iface} ...` changes its VLANs)"
    )]
    NotInVlan { iface: String, vlan: u16 },
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
    #[error("netlink request failed ({what})")]
    Netlink {
        what: String,
        #[source]
        err: rtnetlink::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        err: std::io::Error,
    },
    #[error("BPF map {map}")]
    Map {
        map: &'static str,
        #[source]
        err: aya::maps::MapError,
    },
    #[error("adding {iface} to the devmap")]
    DevMap {
        iface: String,
        #[source]
        err: aya::maps::xdp::XdpMapError,
    },
    /// `owner` is "program ID" or "umlbr's eBPF object".
    #[error("{owner} has no map {map}")]
    NoMap { owner: String, map: &'static str },
    #[error("loading umlbr's eBPF object")]
    Object(#[source] aya::EbpfError),
    #[error("umlbr's eBPF object has no {kind} program {name}")]
    NoProgram {
        name: &'static str,
        kind: &'static str,
    },
    /// The verifier refused a program: `log` is its last line (the whole
    /// log with UMLBR_VERBOSE set).
    #[error(
        "loading umlbr's eBPF program {name}: this kernel's verifier refused it, so the kernel \
         lacks something the program needs or limits it more tightly (verifier: {log})"
    )]
    Verifier {
        name: &'static str,
        log: String,
        #[source]
        err: std::io::Error,
    },
    #[error("{what}")]
    Program {
        what: String,
        #[source]
        err: aya::programs::ProgramError,
    },
    #[error("BPF program id {0} is gone")]
    ProgramGone(u32),
    #[error("{what} did not attach to {iface}")]
    NotHooked { what: &'static str, iface: String },
    #[error("bridge {bridge} has no {what} program")]
    BridgeLacks { bridge: String, what: &'static str },
    #[error("taking the lock {} of bridge {bridge}", path.display())]
    Lock {
        bridge: String,
        path: std::path::PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error(
        "bridge {bridge} is busy: another umlbr command has held its lock {} for over {secs} s \
         (see `fuser {}`)", path.display(), path.display()
    )]
    LockBusy {
        bridge: String,
        path: std::path::PathBuf,
        secs: f64,
    },
    #[error("{what} bridge {bridge}'s record {}", path.display())]
    Record {
        bridge: String,
        path: std::path::PathBuf,
        what: &'static str,
        #[source]
        err: std::io::Error,
    },
    #[error("bridge {bridge}'s record {} is not one umlbr wrote; delete it by hand", path.display())]
    BadRecord {
        bridge: String,
        path: std::path::PathBuf,
    },
    #[error(
        "bridge {bridge} is half-made: an `umlbr up` was interrupted (its record: {}); \
         run `umlbr down {bridge}` first", path.display()
    )]
    HalfMade {
        bridge: String,
        path: std::path::PathBuf,
    },
    #[error(
        "{iface} is not the veth pair that bridge {bridge}'s record {} names (peer {switch_port}); \
         umlbr will not delete it", path.display()
    )]
    NotRecorded {
        bridge: String,
        iface: String,
        switch_port: String,
        path: std::path::PathBuf,
    },
    #[error("reading umlbr's eBPF object")]
    ObjectParse(#[source] aya_obj::ParseError),
    #[error(
        "bridge {bridge}: upgrade refused, nothing changed: its maps are layout version \
         {running}, this umlbr's are version {current}, and {why}. To keep the bridge's \
         entries, keep the umlbr that made it (or upgrade with one that knows both \
         versions); otherwise `umlbr down {bridge}` and `umlbr up` it again with this umlbr \
         (its MAC table and NAT mappings are then lost)"
    )]
    LayoutRefused {
        bridge: String,
        running: u16,
        current: u16,
        why: String,
    },
    #[error(
        "bridge {bridge}: upgrade stopped at {iface} ({hook}); {rolled_back} hooks already \
         replaced were put back on their old programs{}: \
         another program may have been put there meanwhile; look, then run `umlbr upgrade` again",
        if not_rolled_back.is_empty() { String::new() } else {
            format!(", but not these: {not_rolled_back} (run `umlbr upgrade` again)")
        }
    )]
    UpgradeRolledBack {
        bridge: String,
        iface: String,
        hook: &'static str,
        rolled_back: usize,
        not_rolled_back: String,
        #[source]
        err: Box<Error>,
    },
    #[error("pinning map {map} for the upgrade")]
    Pin {
        map: String,
        #[source]
        err: aya::pin::PinError,
    },
    #[error(
        "bridge {bridge}: the new programs use map {map} id {new}, not the running id {running}; \
         nothing was replaced"
    )]
    NotReused {
        bridge: String,
        map: String,
        running: u32,
        new: u32,
    },
    #[error("{what} bridge {bridge}'s expected ports {}", path.display())]
    Expected {
        bridge: String,
        path: std::path::PathBuf,
        what: &'static str,
        #[source]
        err: std::io::Error,
    },
    #[error("bridge {bridge}'s expected ports {}, line {line}: not `IFACE [attach flags]`", path.display())]
    BadExpected {
        bridge: String,
        path: std::path::PathBuf,
        line: usize,
    },
    #[error(
        "bridge {bridge} has no event ring buffer (it was made by an umlbr without `monitor`): `umlbr upgrade {bridge}` adds it"
    )]
    NoEvents { bridge: String },
    #[error(
        "cannot publish MACs on {iface}: {why} (give a port of the kernel bridge that has the VXLAN device, see README \"EVPN\")"
    )]
    PublishTarget { iface: String, why: &'static str },
    #[error("invalid port forward {0}")]
    BadForward(String),
    #[error(
        "bridge {bridge} does not masquerade: a port forward needs `--masquerade UPLINK` \
         (its address is the one forwarded)"
    )]
    ForwardNeedsMasquerade { bridge: String },
    #[error(
        "bridge {bridge}: {addr} is not a guest address of the bridge's subnet {subnet} \
         (nor its network, broadcast or the bridge's own address)"
    )]
    ForwardOutsideSubnet {
        bridge: String,
        addr: std::net::Ipv4Addr,
        subnet: String,
    },
    #[error(
        "bridge {bridge}: port {port} is in the masquerade's port range {lo}-{hi} \
         (`--nat-ports`), whose ports the guests' own flows take; forward another port"
    )]
    ForwardInNatPorts {
        bridge: String,
        port: u16,
        lo: u16,
        hi: u16,
    },
    #[error(
        "bridge {bridge}: {proto} port {port} is already forwarded (to {to}); \
         `umlbr forward del {bridge} {proto} {port}` first"
    )]
    ForwardExists {
        bridge: String,
        proto: String,
        port: u16,
        to: String,
    },
    #[error("bridge {bridge} has no forward of {proto} port {port} (see `umlbr forward show`)")]
    NoSuchForward {
        bridge: String,
        proto: String,
        port: u16,
    },
    #[error(
        "bridge {bridge}'s programs predate port forwards (no map UMLBR_NAT_FWD); \
         run `umlbr upgrade {bridge}` first"
    )]
    NoForwardMap { bridge: String },
    // The DHCP errors keep their bridge; the caller's context names it.
    /// Reading or writing one of the DHCP service's files.
    #[error("DHCP: {what} {}", path.display())]
    DhcpFile {
        bridge: String,
        path: std::path::PathBuf,
        what: &'static str,
        #[source]
        err: std::io::Error,
    },
    #[error("starting dnsmasq (is dnsmasq-base installed?)")]
    DhcpSpawn {
        bridge: String,
        #[source]
        err: std::io::Error,
    },
    #[error("dnsmasq failed to start ({status}): {stderr}")]
    DhcpStart {
        bridge: String,
        status: String,
        stderr: String,
    },
    /// A DHCP setting that does not fit the bridge's addresses.
    #[error("DHCP: {message}")]
    DhcpConfig { bridge: String, message: String },
    #[error(
        "invalid DHCP range {0:?} (expected LO-HI, two IPv4 addresses, e.g. 192.168.2.100-192.168.2.199)"
    )]
    BadDhcpRange(String),
    #[error(
        "invalid host name {0:?} (letters, digits and '-', 1 to 63 of them, not starting or ending with '-')"
    )]
    BadHostname(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, err: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            err,
        }
    }

    pub(crate) fn netlink(what: impl Into<String>, err: rtnetlink::Error) -> Self {
        Error::Netlink {
            what: what.into(),
            err,
        }
    }

    pub(crate) fn program(what: impl Into<String>, err: aya::programs::ProgramError) -> Self {
        Error::Program {
            what: what.into(),
            err,
        }
    }
}
