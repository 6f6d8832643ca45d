//! The command line's grammar: clap parses every value (CIDR, MAC, port
//! range, NAT timeouts) and rejects flags that do not go together, so
//! that every usage error exits 2 before umlbr touches anything.
use std::{net::IpAddr, path::PathBuf};

use clap::{Args, CommandFactory, Parser, Subcommand, error::ErrorKind};
use umlbr::{
    config::AGING_SECS,
    dhcp::{parse_hostname, parse_range},
    forward::{self, Proto},
    link::{parse_cidr, parse_mac},
    nat::{NatOptions, NatTimeout, parse_port_range, parse_timeout},
    vlan::{Vlans, parse_vlan_list},
};

pub mod docs;
pub mod print;

const ABOUT: &str = "An eBPF/XDP switch for VM guests on TUN/TAP: replaces a Linux bridge, \
tunctl and iptables MASQUERADE for User Mode Linux, QEMU and Firecracker guests.";

const LONG_ABOUT: &str = "\
An eBPF/XDP switch for VM guests on TUN/TAP.

A bridge NAME is a switch in the kernel: XDP and TC programs on every port
forward frames through BPF maps (MAC learning, aging, flooding). NAME is
also an interface on the host, the host's own station on the switch, like
a Linux bridge's br0.

The seed recipe, and the umlbr commands that replace it:
  brctl addbr br0; ifconfig br0 192.168.2.1 up   umlbr up br0 --address 192.168.2.1/24
  tunctl -u giorgos -t tap0                      umlbr tap add tap0 --user giorgos
  brctl addif br0 tap0                           umlbr attach tap0
  brctl addif br0 eth0  (section C)              umlbr up br0 --uplink eth0
  ip_forward=1; iptables -t nat -A POSTROUTING \\
    -o eth0 -j MASQUERADE  (section D)            umlbr up br0 --address 192.168.2.1/24 --masquerade eth0
  brctl show / brctl showmacs br0                umlbr show / umlbr fdb show br0

Every command acts on the current network namespace (it works under
`ip netns exec`), needs root, and keeps no state outside the kernel.
Read commands take --json and then print only JSON on stdout.

TC programs attach with tcx where the kernel has it (Linux 6.6 and
later) and otherwise as cls_bpf filters on a clsact qdisc (Debian 12's
6.1); `show` says which (its TC column). UMLBR_TC_HOOK=tcx or clsact
forces one for `up` and `attach`.";

/// `--masquerade` and its options, which a port (`--uplink`, `--tc-only`)
/// does not take. Named here as well as by `requires`: clap drops a
/// requirement that conflicts with an argument given.
const MASQUERADE_ARGS: [&str; 4] = [
    "masquerade",
    "nat_ports",
    "nat_timeout",
    "nat_max_per_guest",
];

/// What `attach --isolated` does not go with: an uplink is the LAN's way
/// in, never isolated from the guests, and a masquerade uplink is no port.
const ISOLATED_CONFLICTS: [&str; 5] = [
    "uplink",
    "masquerade",
    "nat_ports",
    "nat_timeout",
    "nat_max_per_guest",
];

const LOCK_HELP: &str = "\
Port security: the port accepts only frames whose source MAC is one of
its --mac (each made a static FDB entry of the port), and learns nothing.
No other port can then learn or send from those MACs, and no guest can
ever send from the host port's or the uplink's MAC. Frames from other
MACs are dropped, counted as locked in `umlbr stats`.

With --ip (IPv4 or IPv6, repeatable), only those source addresses pass
too: IPv4 source and ARP sender (whose sender MAC must be the frame's),
IPv6 source and neighbour advertisement target; 0.0.0.0 only for DHCP
discover/request and ARP probes of a bound address, :: only for
duplicate address detection of a bound address, MLD and router
solicitations. Router advertisements and redirects (a guest is no
router) and every other EtherType (VLAN tags included) are dropped.
IPv6 link-local addresses are not derived: bind the guest's fe80::
address with --ip too, or it cannot do neighbour discovery. Drops are
counted as ip_locked.

  umlbr attach tap0 --lock --mac 52:54:00:12:34:56 \\
      --ip 192.168.2.10 --ip fe80::5054:ff:fe12:3456";

/// What `attach --lock` does not go with: an uplink has a LAN of
/// stations behind it, and a masquerade uplink is no port.
const LOCK_CONFLICTS: [&str; 4] = ["uplink", "masquerade", "nat_ports", "nat_timeout"];

#[derive(Parser)]
#[command(name = "umlbr", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Create a bridge: the switch, and the host interface NAME on it.
    Up(UpArgs),
    /// Remove a bridge, its host interface and everything `up` and `attach` made,
    /// also half-made by a command that was killed.
    Down { name: String },
    /// Create or delete persistent tap devices for guests.
    #[command(subcommand)]
    Tap(TapCmd),
    /// Make an interface (a guest's tap, a veth) a port of a bridge.
    Attach(AttachArgs),
    /// Remove an interface from its bridge (the interface stays).
    Detach { iface: String },
    /// Show bridges and their ports, with the XDP mode and TC hook of each.
    Show(ShowArgs),
    /// Show or edit the MAC table (forwarding database).
    #[command(subcommand)]
    Fdb(FdbCmd),
    /// Show the masquerade's NAT table.
    #[command(subcommand)]
    Nat(NatCmd),
    /// Print what the datapath logged (e.g. an exhausted NAT port range),
    /// oldest first; --follow keeps printing new lines.
    Log {
        name: Option<String>,
        #[arg(long, short)]
        follow: bool,
    },
    /// Per-port counters: frames, bytes, forwarded, flooded, dropped, learned,
    /// and which path (XDP native, XDP generic, TC) switched them; NAT
    /// counters when the bridge masquerades. --watch shows live rates.
    Stats(StatsArgs),
    /// Bring a running bridge to the state a config file describes (see
    /// `up --config`): attach and detach ports, create and delete taps,
    /// change port options, add and remove static FDB entries and port
    /// forwards; what did not change is not touched.
    ///
    /// A port the file drops is detached; its tap is deleted only if a
    /// config file created it. `max_learned` and `flood_limit` change in
    /// place; another changed option re-attaches that port alone.
    /// `aging` changes in place, missing `addresses` are added. Refused,
    /// naming the key: removing an address, changing `[masquerade]`
    /// (remove it, apply, add it back).
    Apply(ApplyArgs),
    /// Print a running bridge as a config file (`umlbr config br0 >
    /// br0.toml; umlbr apply br0.toml` changes nothing).
    Config { name: String },
    /// Counters, table sizes and limits in Prometheus' text format.
    #[command(long_about = METRICS_HELP)]
    Metrics(MetricsArgs),
    /// Print a shell completion script (bash, zsh, fish, ...) on stdout.
    #[command(long_about = COMPLETIONS_HELP)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print umlbr's man page (roff) on stdout, or write one page per
    /// command into a directory.
    Man {
        /// Write umlbr.8 and one umlbr-COMMAND.8 per command into DIR.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
    /// Keep a bridge's ports in step with its interfaces, as they come and go.
    ///
    /// A port whose interface vanishes is detached at once (its MAC
    /// entries flushed, its slot freed), and an interface attached before
    /// (and not detached since) that appears again, such as a restarted
    /// guest's non-persistent tap, is attached again with the options it
    /// had. Prints each change; runs until SIGTERM or SIGINT, or until
    /// bridge NAME is removed. Forwarding never depends on it: it does what
    /// a user would do by hand, under the bridge's lock. `umlbr@.service`
    /// runs it.
    ///
    /// The ports to attach again are those `attach` recorded in
    /// /run/umlbr/net<INODE>-<NAME>.ports (`attach` flags, one port a
    /// line); `detach` forgets a port, `down` the file.
    Watch {
        /// The bridge to watch (default: every bridge of the namespace,
        /// also those made later).
        name: Option<String>,
    },
    /// Move running bridges onto this umlbr's programs, keeping their maps
    /// and flows.
    ///
    /// After installing a newer umlbr: its programs replace the ones an older
    /// umlbr put on the bridge's hooks, each in one kernel step, and use the
    /// bridge's maps as they are, so the MAC table, every NAT mapping, the
    /// counters and settings carry over and guests' connections go on.
    ///
    /// Each bridge stores the layout version of its maps (`show` prints it).
    /// A bridge of an older version has its maps' entries migrated where
    /// this umlbr knows how; if a map's layout or meaning changed without a
    /// migration, or the bridge is newer than this umlbr, the bridge is left
    /// unchanged and the error names the versions, the maps and what to do.
    /// A hook another program took meanwhile stops the upgrade and puts
    /// every hook already replaced back on its old program. Safe to run
    /// again, also after it was interrupted. --dry-run shows the plan.
    Upgrade {
        /// The bridge; every bridge in this network namespace without it.
        name: Option<String>,
        /// Print what was replaced (with --dry-run: the plan) as JSON.
        #[arg(long)]
        json: bool,
        /// Change nothing: print, per bridge, the layout versions, the maps
        /// reused, migrated and made new, and the interfaces whose programs
        /// would be replaced; or the refusal `upgrade` would give.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print what the datapath does as it happens: MACs learned, moved and
    /// aged out, frames dropped by port security or storm control, NAT
    /// mappings made, expired and refused.
    ///
    /// One line per event, with its time and the port's name; `--json`
    /// prints one JSON object per line (JSON Lines). Events:
    /// learned, moved (from the port it left), aged (a learned MAC
    /// removed by the datapath after the aging time), spoofed (a source
    /// MAC that is another port's static entry), locked and ip_locked
    /// (`attach --lock --mac/--ip`), isolated (to another isolated port),
    /// storm (over `--flood-limit`), nat_new, nat_expired, nat_quota
    /// (over `--nat-max-per-guest`), nat_full (the NAT table full) and
    /// nat_no_port (no free outside port).
    ///
    /// The datapath writes events only while a monitor runs (it renews a
    /// three-second lease every second), at most 100 a second of each
    /// kind after a burst of 100; the rest are counted, and reported as
    /// "N KIND events suppressed". Runs until SIGINT or SIGTERM, its
    /// output's reader leaving, or the bridge's removal.
    #[command(after_help = "Examples:
  umlbr monitor br0
  umlbr monitor --json | jq 'select(.event == \"storm\")'")]
    Monitor {
        /// The bridge (may be left out when there is only one).
        name: Option<String>,
        /// One JSON object per line (JSON Lines).
        #[arg(long)]
        json: bool,
    },
    /// Publish the MACs of a bridge's local guests for BGP-EVPN (FRR).
    ///
    /// FRR's zebra advertises type-2 routes for the MACs it reads in a
    /// kernel bridge's FDB, not umlbr's. This makes the static FDB entries
    /// of port IFACE of a kernel bridge (the "anchor": the bridge that has
    /// the VNI's VXLAN device as a port too, see README "EVPN") the MACs
    /// NAME learned on its own ports (not those behind a VXLAN port, which
    /// are other hosts'): missing ones added (`master static`, never
    /// permanent, which zebra ignores), others removed. IFACE is umlbr's
    /// to manage: give it a veth end used for nothing else.
    ///
    /// In a bridge with VLANs, one anchor per VNI: --vlan ID publishes
    /// the MACs of VLAN ID alone (the VLAN the VNI's VXLAN device is an
    /// access port of); without it, the default VLAN's.
    ///
    /// Once, or every SECS seconds with --every until SIGTERM or SIGINT.
    /// Forwarding never depends on it: only what zebra advertises does.
    Publish {
        /// The umlbr bridge whose local MACs are published.
        name: String,
        /// The kernel bridge's port that carries them.
        #[arg(long, value_name = "IFACE")]
        to: String,
        /// Publish again every SECS seconds (a MAC learned or aged out is
        /// advertised or withdrawn within that time).
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        every: Option<u64>,
        /// Print what changed as JSON.
        #[arg(long)]
        json: bool,
        /// Only the MACs of VLAN ID (1-4094), the VLAN mapped to the
        /// anchor's VNI (`attach vxVNI --vlan ID`); default: the default
        /// VLAN (every MAC of a bridge without VLANs).
        #[arg(long, value_name = "ID",
              value_parser = clap::value_parser!(u16).range(1..=4094))]
        vlan: Option<u16>,
    },
    /// Port forwards: connections from the LAN to the masquerade uplink's
    /// address on a port reach a guest (as Incus network forwards and
    /// libvirt port forwards).
    #[command(subcommand, long_about = FORWARD_HELP)]
    Forward(ForwardCmd),
    /// Change the VLANs of a port (IFACE; a bridge's name: its host port):
    /// --vlan ID, --trunk IDS [--pvid ID], or --none (the default VLAN
    /// alone). The host port and an uplink `up` attached get their VLANs
    /// this way.
    #[command(long_about = VLAN_HELP)]
    Vlan(VlanCmdArgs),
    /// Add or remove a static DHCP lease (MAC -> address) of a bridge
    /// served with `up --dhcp`.
    #[command(subcommand)]
    Lease(LeaseCmd),
    /// List DHCP leases: those dnsmasq granted (MAC, address, host name,
    /// when they end) and the static ones (`lease add`).
    Leases(ShowArgs),
}

const VLAN_HELP: &str = "\
Change the VLANs of a port (IFACE) of a running bridge, as `attach --vlan`,
`--trunk` and `--pvid` set them: an interface that is a bridge's name means
its host port (the host's own station joins the VLAN). With --none the port
carries the default VLAN alone (untagged), as a port attached without VLANs.

While any port of a bridge has VLANs, the bridge is VLAN-aware (as a Linux
bridge with vlan_filtering 1): the FDB is keyed by VLAN and MAC, floods stay
in their VLAN, every port without VLANs is an access port of the default
VLAN (its tagged frames dropped), and frames of a VLAN a port does not carry
are dropped, counted as `vlan` in `umlbr stats`.

Examples:
  umlbr vlan br0 --vlan 10             the host's station in VLAN 10
  umlbr vlan eth0 --trunk 10,20        the uplink carries 10 and 20 tagged
  umlbr vlan tap0 --none               back to the default VLAN";

/// The VLANs of a port (`attach`, `vlan`).
#[derive(Args, Clone, Default)]
pub struct VlanArgs {
    /// An access port of VLAN ID (1-4094): the guest sends and receives
    /// untagged frames, which belong to VLAN ID on the switch; its tagged
    /// frames are dropped (counted as vlan). Priority-tagged frames (VLAN
    /// id 0) count as untagged.
    #[arg(long, value_name = "ID", conflicts_with = "trunk",
          value_parser = clap::value_parser!(u16).range(1..=4094))]
    pub vlan: Option<u16>,
    /// A trunk: frames tagged with these VLANs (1-4094, comma-separated)
    /// pass tagged; for an uplink, or a guest that tags itself. Its
    /// untagged frames are in the default VLAN unless --pvid.
    #[arg(long, value_name = "ID,...", value_parser = parse_trunk)]
    pub trunk: Option<VlanList>,
    /// With --trunk: the VLAN (1-4094) of the trunk's untagged frames,
    /// which leave it untagged.
    #[arg(long, value_name = "ID", requires = "trunk",
          value_parser = clap::value_parser!(u16).range(1..=4094))]
    pub pvid: Option<u16>,
}

/// `--trunk`'s list, one value for clap (a `Vec` would be many).
#[derive(Clone, Debug)]
pub struct VlanList(pub Vec<u16>);

fn parse_trunk(s: &str) -> Result<VlanList, String> {
    parse_vlan_list(s).map(VlanList)
}

impl VlanArgs {
    /// The VLANs asked for; None if no flag was given.
    pub fn vlans(&self) -> Option<Vlans> {
        match (self.vlan, &self.trunk) {
            (Some(v), _) => Some(Vlans::access(v)),
            (None, Some(t)) => Some(Vlans::trunk(&t.0, self.pvid.unwrap_or(0))),
            (None, None) => None,
        }
    }
}

#[derive(Args)]
pub struct VlanCmdArgs {
    pub iface: String,
    #[command(flatten)]
    pub vlans: VlanArgs,
    /// The default VLAN alone (untagged), as without VLANs.
    #[arg(long, conflicts_with_all = ["vlan", "trunk"], required_unless_present_any = ["vlan", "trunk"])]
    pub none: bool,
}

const FORWARD_HELP: &str = "\
Port forwards: connections from the LAN to the masquerade uplink's
address on PORT reach GUEST_ADDR:GUEST_PORT, and the guest's replies go
back translated; the guest sees the LAN client's own address. Other
guests reach the forward through the uplink's address too (hairpin: the
host translates those, and the target sees the bridge's address).

  umlbr up br0 --address 192.168.2.1/24 --masquerade eth0
  umlbr forward add br0 tcp 8080 192.168.2.10:80
  umlbr forward show br0
  umlbr forward del br0 tcp 8080

The bridge must masquerade, the guest address must be in its subnet, and
PORT must lie outside the masquerade's port range (--nat-ports: those
ports are the guests' own flows'). A port is forwarded to one target;
`del` also ends the flows the forward mapped. `umlbr detach UPLINK`
(or `down`) removes the forwards with the masquerade.";

#[derive(Subcommand)]
pub enum LeaseCmd {
    /// Always give MAC the address ADDR (and host name H, which the
    /// bridge's DNS then answers); kept in /var/lib/umlbr, across `down`
    /// and `up`, and read by a running dnsmasq at once.
    Add {
        /// The bridge.
        name: String,
        #[arg(value_parser = parse_mac)]
        mac: [u8; 6],
        /// An IPv4 address in the bridge's subnet (inside the DHCP range
        /// or not), not the bridge's own.
        addr: std::net::Ipv4Addr,
        /// The guest's host name.
        #[arg(long, value_name = "H", value_parser = parse_hostname)]
        hostname: Option<String>,
    },
    /// Remove MAC's static lease (a lease it holds runs out as usual).
    Del {
        name: String,
        #[arg(value_parser = parse_mac)]
        mac: [u8; 6],
    },
}

const DHCP_HELP: &str = "\
Serve the guests' subnet with dnsmasq (Debian's dnsmasq-base), as
libvirt and Incus do: DHCPv4 on the subnet of the (first) IPv4
--address, handing out the bridge's address as router and DNS server,
with DNS forwarded to the host's resolvers (/etc/resolv.conf; under
`ip netns exec NS`, /etc/netns/NS/resolv.conf); and router
advertisements for every IPv6 --address (SLAAC, with the DNS server),
so that a guest running only a DHCP client (busybox udhcpc, dhclient)
or IPv6 autoconfiguration gets an address, a default route and a
resolver. dnsmasq listens on the bridge's interface alone.

Static leases: `umlbr lease add NAME MAC ADDR [--hostname H]`; leases:
`umlbr leases [NAME]`. Files: /run/umlbr/net<INODE>-NAME.dnsmasq.{conf,pid}
(gone with `down`), /var/lib/umlbr/net<INODE>-NAME.{leases,hosts} (kept:
leases survive a restart of dnsmasq and of the bridge). `umlbr watch`
restarts a dnsmasq that died.

  umlbr up br0 --address 192.168.2.1/24 --address fd00:2::1/64 \\
      --masquerade eth0 --dhcp --dhcp-range 192.168.2.100-192.168.2.199";

const METRICS_HELP: &str = "\
Counters, table sizes and limits of one bridge (NAME) or all, in the
Prometheus text exposition format: per port, frames and bytes received
and sent, forwarded, flooded, dropped by reason, learned, moved,
learn-limited and the path that switched them (xdp_native, xdp_generic,
tc); learned MACs against --max-learned; the MAC table's size and
capacity; the masquerade's counters, mappings, table capacity, port range
and the ports in use, and each port's mappings against
--nat-max-per-guest. Every metric is named umlbr_*; counters end in
_total; labels: bridge, port (and reason, path, proto, direction).

For node_exporter's textfile collector (the rename makes it atomic):
  umlbr metrics > /var/lib/prometheus/node-exporter/umlbr.prom.$$ &&
    mv /var/lib/prometheus/node-exporter/umlbr.prom.$$ \\
       /var/lib/prometheus/node-exporter/umlbr.prom

Or serve it: `umlbr metrics --listen 127.0.0.1:9469` answers GET /metrics
with the counters read at that moment (404 for any other path) until
SIGINT or SIGTERM.";

const COMPLETIONS_HELP: &str = "\
Print a completion script for SHELL on stdout. `cargo xtask install`
installs bash's, zsh's and fish's; by hand:
  umlbr completions bash > /usr/share/bash-completion/completions/umlbr
  umlbr completions zsh > /usr/share/zsh/vendor-completions/_umlbr
  umlbr completions fish > /usr/share/fish/vendor_completions.d/umlbr.fish";

#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub show: ShowArgs,
    /// Redraw per-port rates (frames/s, bytes/s, drops/s) every interval
    /// until Ctrl-C; with --json, print one JSON object per interval, one
    /// per line.
    #[arg(long, short)]
    pub watch: bool,
    /// Seconds between two samples of --watch.
    #[arg(long, value_name = "SECS", default_value_t = 1, requires = "watch",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
}

#[derive(Args)]
pub struct MetricsArgs {
    /// One bridge; all bridges without it.
    pub name: Option<String>,
    /// Serve GET /metrics over HTTP on ADDR:PORT (e.g. 127.0.0.1:9469,
    /// [::]:9469) until SIGINT or SIGTERM, each scrape read afresh.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Args)]
pub struct ApplyArgs {
    /// The config file (TOML; see `umlbr up --help`).
    pub file: PathBuf,
    /// Print the changes, one a line, without making them.
    #[arg(long)]
    pub dry_run: bool,
}

/// What `up --config` does not go with: the file says all of it (a NAME
/// may come too, which must be the file's: `umlbr@.service` passes its
/// instance).
const CONFIG_CONFLICTS: [&str; 9] = [
    "address",
    "dhcp",
    "dhcp_range",
    "aging",
    "uplink",
    "masquerade",
    "nat_ports",
    "nat_timeout",
    "nat_max_per_guest",
];

const CONFIG_HELP: &str = "\
Create the bridge a config file (TOML) describes, with its taps, ports
and static FDB entries; the bridge's name comes from the file (a NAME
given too must be the same). `umlbr
apply FILE` later brings the running bridge to an edited file, and
`umlbr config NAME` prints a running bridge as such a file.

  name = \"br0\"
  addresses = [\"192.168.2.1/24\"]
  aging = 300                    # seconds
  host_vlan = 10                 # the host port's VLANs (umlbr vlan NAME):
                                 # also host_trunk = [..], host_pvid
  [masquerade]                   # or: uplink = \"eth0\"
  uplink = \"eth0\"
  ports = \"61000-65535\"          # --nat-ports
  timeouts = { udp = 30 }        # --nat-timeout KEY=SECONDS
  max_per_guest = 8192
  [[port]]                       # attach; options as `attach`'s flags
  name = \"tap0\"
  isolated = true                # also tc_only, max_learned, flood_limit,
  lock = true                    # uplink
  macs = [\"52:54:00:12:34:56\"]
  ips = [\"192.168.2.10\"]
  vlan = 10                      # --vlan; or trunk = [10, 20], pvid = 30
  [port.tap]                     # create it (tap add) if it does not exist
  user = \"giorgos\"               # also group, vnet_hdr = true
  [[fdb]]                        # a static entry (fdb add --static)
  mac = \"02:00:00:00:00:01\"
  port = \"tap0\"

Examples: examples/lan.toml (section C), examples/masquerade.toml
(section D).";

#[derive(Args)]
pub struct UpArgs {
    /// Bridge name; also the host's interface on the switch (max 15 bytes).
    #[arg(required_unless_present = "config")]
    pub name: Option<String>,
    /// Create the bridge a config file describes (no other flag goes
    /// with it).
    #[arg(long, value_name = "FILE", conflicts_with_all = CONFIG_CONFLICTS,
          long_help = CONFIG_HELP)]
    pub config: Option<PathBuf>,
    /// Address for the host interface, e.g. 192.168.2.1/24 (the guests'
    /// gateway); repeatable, IPv4 and IPv6 (--address fd00:2::1/64).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub address: Vec<(IpAddr, u8)>,
    /// Seconds after which a learned MAC is forgotten (default 300).
    #[arg(long, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(AGING_SECS))]
    pub aging: Option<u64>,
    /// Make the host's NIC IFACE a port (guests bridged onto the LAN).
    /// IFACE keeps its addresses and routes; it is made promiscuous while
    /// it is a port.
    #[arg(long, value_name = "IFACE", conflicts_with_all = MASQUERADE_ARGS)]
    pub uplink: Option<String>,
    /// Masquerade the guests' subnet (from --address, IPv4) behind IFACE's
    /// address, in BPF (replaces ip_forward + iptables MASQUERADE).
    #[arg(long, value_name = "IFACE", requires = "address")]
    pub masquerade: Option<String>,
    #[command(flatten)]
    pub nat: NatArgs,
    /// Serve DHCP, DNS and IPv6 router advertisements on the guests'
    /// subnet (dnsmasq, supervised by umlbr).
    #[arg(long, requires = "address", long_help = DHCP_HELP)]
    pub dhcp: bool,
    /// With --dhcp: the IPv4 addresses to hand out, LO-HI, in the subnet
    /// of an --address and without it (default: every free address of
    /// the first IPv4 --address's subnet).
    #[arg(long, value_name = "LO-HI", requires = "dhcp", value_parser = parse_range)]
    pub dhcp_range: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
}

#[derive(Args)]
pub struct AttachArgs {
    /// A guest's tap, a veth, or a kernel VXLAN device (`ip link add vx0
    /// type vxlan id VNI ...`: the guests of other hosts; it gets no XDP
    /// program, the TC program sends to it and switches what it receives,
    /// with an uplink's learning limit and no flood limit by default).
    pub iface: String,
    /// The bridge; may be left out when exactly one exists.
    #[arg(long, value_name = "NAME")]
    pub bridge: Option<String>,
    /// IFACE is the host's NIC onto the LAN (see `up --uplink`).
    #[arg(long, conflicts_with_all = MASQUERADE_ARGS)]
    pub uplink: bool,
    /// Masquerade the bridge's guests behind IFACE (see `up --masquerade`).
    #[arg(long)]
    pub masquerade: bool,
    /// Switch this port's frames with the TC program alone, no XDP. For
    /// guests with vnet headers and offloads (UML vector transport,
    /// virtio-net): a tap with XDP sends their GSO super-frames through
    /// generic XDP, which copies each before XDP hands it to TC. A tap
    /// already set up with vnet headers when attached gets TC only
    /// without this flag.
    #[arg(long, conflicts_with_all = MASQUERADE_ARGS)]
    pub tc_only: bool,
    /// Most MACs the port may learn (0: no limit but the table's size);
    /// sources beyond it are not learned, their frames still switched, and
    /// counted as learn_limited in `umlbr stats`. This keeps a guest that
    /// floods source MACs from filling the table. Default 256, 32768 for
    /// an uplink.
    #[arg(long, value_name = "N", conflicts_with_all = MASQUERADE_ARGS)]
    pub max_learned: Option<u32>,
    /// Isolate the port, as the kernel bridge's `isolated on`: its frames
    /// never reach another isolated port, neither unicast (dropped, counted
    /// as isolated in `umlbr stats`) nor floods, but they still reach the
    /// host, the uplink and the guests that are not isolated (and those
    /// reach it). Attach every guest with --isolated to keep guests from
    /// talking to each other while each still reaches the host and the
    /// world.
    #[arg(long, conflicts_with_all = ISOLATED_CONFLICTS)]
    pub isolated: bool,
    /// Storm control: most floods (broadcast, multicast, unknown unicast)
    /// a second the port may send, with a burst of 200 after a quiet
    /// while (0: no limit). Floods over it are dropped and counted as
    /// storm in `umlbr stats`; known unicast is never limited. This keeps
    /// a guest's broadcast storm from starving the others. Default 1000
    /// for a guest's port, far above what a normal guest sends (ARP, DHCP,
    /// neighbour discovery: a few a second); none for an uplink.
    #[arg(long, value_name = "PPS", value_parser = clap::value_parser!(u32), conflicts_with_all = MASQUERADE_ARGS)]
    pub flood_limit: Option<u32>,
    /// Lock the port to the guest's MACs (--mac) and, with --ip, its
    /// addresses: nothing else it sends passes, and it learns nothing.
    #[arg(long, requires = "mac", conflicts_with_all = LOCK_CONFLICTS, long_help = LOCK_HELP)]
    pub lock: bool,
    /// With --lock: a MAC the guest sends from (repeatable).
    #[arg(long, value_name = "MAC", requires = "lock", value_parser = parse_mac)]
    pub mac: Vec<[u8; 6]>,
    /// With --lock: an IPv4 or IPv6 address the guest sends from
    /// (repeatable; bind its fe80:: link-local address too).
    #[arg(long, value_name = "ADDR", requires = "lock", value_parser = clap::value_parser!(IpAddr))]
    pub ip: Vec<IpAddr>,
    #[command(flatten)]
    pub nat: NatArgs,
    #[command(flatten)]
    pub vlans: VlanArgs,
}

/// The masquerade's options; only with --masquerade.
#[derive(Args, Clone, Default)]
pub struct NatArgs {
    /// With --masquerade: source ports for masqueraded flows (default: just
    /// above the host's ip_local_port_range, so they never meet the host's
    /// own sockets).
    #[arg(long, value_name = "LO-HI", requires = "masquerade", value_parser = parse_port_range)]
    pub nat_ports: Option<(u16, u16)>,
    /// With --masquerade: idle timeout of mappings, repeatable: tcp_established (432000),
    /// tcp_transitory (120), tcp_closing (10), udp (30), udp_stream (120),
    /// icmp (30).
    #[arg(long, value_name = "KEY=SECONDS", requires = "masquerade", value_parser = parse_timeout)]
    pub nat_timeout: Vec<(NatTimeout, u64)>,
    /// With --masquerade: most live mappings (flows) the guests behind one
    /// port may hold (0: no limit but the table's 262144). A new flow
    /// beyond it is dropped and counted as quota in `umlbr stats`; the
    /// guest's existing flows go on. Together with a table that never
    /// evicts a live mapping, this keeps one guest from taking the others'
    /// flows away or filling the table. Default 8192: far more flows than
    /// an honest guest holds at once, 1/32 of the table.
    #[arg(long, value_name = "N", requires = "masquerade", value_parser = clap::value_parser!(u32))]
    pub nat_max_per_guest: Option<u32>,
}

impl NatArgs {
    pub fn options(&self) -> NatOptions {
        NatOptions {
            ports: self.nat_ports,
            timeouts: self.nat_timeout.clone(),
            max_per_guest: self.nat_max_per_guest,
        }
    }
}

#[derive(Subcommand)]
pub enum TapCmd {
    /// Create a persistent tap (like `tunctl -t TAP -u USER`).
    Add {
        tap: String,
        /// Owner allowed to open it without root (name or uid).
        #[arg(long, short)]
        user: Option<String>,
        /// Group allowed to open it without root (name or gid).
        #[arg(long, short)]
        group: Option<String>,
        /// The guest will use vnet headers (UML's vector transport, QEMU
        /// virtio-net, Firecracker): `attach` then switches the tap with TC
        /// alone, since a tap with XDP copies every GSO super-frame through
        /// generic XDP.
        #[arg(long)]
        vnet_hdr: bool,
    },
    /// Delete a tap (detaching it from its bridge first).
    Del { tap: String },
}

#[derive(Subcommand)]
pub enum FdbCmd {
    /// List MAC entries: port, static or learned, age in seconds.
    Show(ShowArgs),
    /// Add an entry for MAC behind port IFACE.
    Add {
        #[arg(value_parser = parse_mac)]
        mac: [u8; 6],
        iface: String,
        /// Never ages and never moves to another port.
        #[arg(long = "static")]
        is_static: bool,
        /// The entry's VLAN (1-4094), which IFACE must carry; without it,
        /// in each VLAN IFACE carries (the default VLAN for a port without
        /// VLANs).
        #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u16).range(1..=4094))]
        vlan: Option<u16>,
    },
    /// Remove the entry for MAC.
    Del {
        #[arg(value_parser = parse_mac)]
        mac: [u8; 6],
        #[arg(long, value_name = "NAME")]
        bridge: Option<String>,
        /// The entry's VLAN (1-4094); without it, the MAC's entries in
        /// every VLAN.
        #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u16).range(1..=4094))]
        vlan: Option<u16>,
    },
}

#[derive(Subcommand)]
pub enum ForwardCmd {
    /// Forward PROTO PORT of the uplink's address to GUEST_ADDR:GUEST_PORT.
    Add {
        /// The bridge.
        name: String,
        /// tcp or udp.
        #[arg(value_parser = parse_proto)]
        proto: Proto,
        /// The uplink's port (outside the masquerade's --nat-ports).
        #[arg(value_parser = parse_fwd_port)]
        port: u16,
        /// The guest's address (in the bridge's subnet) and port.
        #[arg(value_name = "GUEST_ADDR:GUEST_PORT", value_parser = parse_fwd_target)]
        target: (std::net::Ipv4Addr, u16),
    },
    /// Remove the forward of PROTO PORT, and end the flows it mapped.
    Del {
        name: String,
        #[arg(value_parser = parse_proto)]
        proto: Proto,
        #[arg(value_parser = parse_fwd_port)]
        port: u16,
    },
    /// List forwards: protocol, outside, inside, flows mapped since added
    /// (hits) and live now.
    Show(ShowArgs),
}

fn parse_proto(s: &str) -> Result<Proto, String> {
    s.parse().map_err(|e: umlbr::Error| e.to_string())
}

fn parse_fwd_port(s: &str) -> Result<u16, String> {
    forward::parse_port(s).map_err(|e| e.to_string())
}

fn parse_fwd_target(s: &str) -> Result<(std::net::Ipv4Addr, u16), String> {
    forward::parse_target(s).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
pub enum NatCmd {
    /// Live mappings: protocol, inside, outside, remote, state, age.
    Show(ShowArgs),
}

/// A read command: one bridge or all, as a table or JSON.
#[derive(Args)]
pub struct ShowArgs {
    pub name: Option<String>,
    /// Print only JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl Cmd {
    /// The command only reads: it may die of SIGPIPE when its reader goes
    /// away (`umlbr show --json | head`), which a command that changes
    /// something must never do half-way.
    pub fn read_only(&self) -> bool {
        matches!(
            self,
            Cmd::Show(_)
                | Cmd::Stats(_)
                | Cmd::Completions { .. }
                | Cmd::Man { .. }
                | Cmd::Log { .. }
                | Cmd::Fdb(FdbCmd::Show(_))
                | Cmd::Nat(NatCmd::Show(_))
                | Cmd::Config { .. }
                | Cmd::Forward(ForwardCmd::Show(_))
                | Cmd::Leases(_)
        ) || matches!(self, Cmd::Metrics(m) if m.listen.is_none())
        // Not `metrics --listen`: a server must not die of a scraper that
        // hung up.
    }
}

impl Cli {
    /// Parse the command line; what clap cannot express is checked here,
    /// as a usage error too.
    pub fn parse_checked() -> Result<Cli, clap::Error> {
        let cli = Cli::try_parse()?;
        if let Cmd::Up(a) = &cli.cmd
            && a.masquerade.is_some()
            && !a.address.iter().any(|(ip, _)| ip.is_ipv4())
        {
            let msg = "--masquerade needs an IPv4 --address";
            return Err(Cli::command().error(ErrorKind::ArgumentConflict, msg));
        }
        Ok(cli)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Cli, clap::Error> {
        let argv = std::iter::once("umlbr").chain(args.split_whitespace());
        let cli = Cli::try_parse_from(argv)?;
        if let Cmd::Up(a) = &cli.cmd
            && a.masquerade.is_some()
            && !a.address.iter().any(|(ip, _)| ip.is_ipv4())
        {
            return Err(Cli::command().error(ErrorKind::ArgumentConflict, "v6"));
        }
        Ok(cli)
    }

    fn usage_error(args: &str) -> ErrorKind {
        match parse(args) {
            Ok(_) => panic!("{args}: accepted"),
            Err(e) => e.kind(),
        }
    }

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn values_are_parsed_by_clap() {
        let Cmd::Up(a) = parse(
            "up br0 --address 192.168.2.1/24 --masquerade eth0 --nat-ports 61000-61999 \
             --nat-timeout udp=5 --nat-timeout tcp_closing=1",
        )
        .unwrap()
        .cmd
        else {
            panic!("not up");
        };
        assert_eq!(a.address, vec![("192.168.2.1".parse().unwrap(), 24)]);
        let o = a.nat.options();
        assert_eq!(o.ports, Some((61000, 61999)));
        assert_eq!(
            o.timeouts,
            vec![(NatTimeout::Udp, 5), (NatTimeout::TcpClosing, 1)]
        );
        let Cmd::Fdb(FdbCmd::Add { mac, .. }) =
            parse("fdb add 02-00-00-00-00-0A tap0").unwrap().cmd
        else {
            panic!("not fdb add");
        };
        assert_eq!(mac, [2, 0, 0, 0, 0, 10]);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            "up br0 --address 192.168.2.1",
            "up br0 --address 192.168.2.1/33",
            "up br0 --address garbage",
            "up br0 --aging 0",
            "up br0 --aging abc",
            "fdb add zz:00:00:00:00:01 tap0",
            "fdb del 02:00:00:00:00",
            "up br0 --address 10.0.0.1/24 --masquerade eth0 --nat-ports 10-5",
            "up br0 --address 10.0.0.1/24 --masquerade eth0 --nat-timeout bogus=5",
            "attach eth0 --masquerade --nat-timeout udp=0",
            "attach tap0 --lock --mac 02:00:00:00:00",
            "attach tap0 --lock --mac 02:00:00:00:00:01 --ip 10.0.0.300",
            "attach tap0 --lock --mac 02:00:00:00:00:01 --ip 10.0.0.1/24",
            "up br0 --address 10.0.0.1/24 --dhcp --dhcp-range 10.0.0.9-10.0.0.2",
            "up br0 --address 10.0.0.1/24 --dhcp --dhcp-range 10.0.0.9",
            "lease add br0 02:00:00:00:00:01 10.0.0.300",
            "lease add br0 02:00:00:00:00:01 10.0.0.3 --hostname a.b",
        ] {
            assert_eq!(usage_error(args), ErrorKind::ValueValidation, "{args}");
        }
    }

    #[test]
    fn flags_that_do_not_go_together_are_usage_errors() {
        for args in [
            "up br0 --uplink eth0 --masquerade eth1 --address 10.0.0.1/24",
            "attach eth0 --uplink --masquerade",
            "attach eth0 --tc-only --masquerade",
            "attach eth0 --uplink --nat-timeout udp=5",
            "attach eth0 --tc-only --nat-ports 61000-61999",
            "up br0 --uplink eth0 --nat-ports 61000-61999",
            "up br0 --address fd00::1/64 --masquerade eth0",
            "attach tap0 --isolated --uplink",
            "attach tap0 --isolated --masquerade",
            "attach tap0 --lock --mac 02:00:00:00:00:01 --uplink",
            "attach tap0 --lock --mac 02:00:00:00:00:01 --masquerade",
        ] {
            assert_eq!(usage_error(args), ErrorKind::ArgumentConflict, "{args}");
        }
        for args in [
            "up br0 --masquerade eth0",
            "up br0 --nat-ports 61000-61999",
            "up br0 --address 10.0.0.1/24 --nat-timeout udp=5",
            "attach eth0 --nat-ports 61000-61999",
            "attach tap0 --lock",
            "attach tap0 --mac 02:00:00:00:00:01",
            "attach tap0 --ip 10.0.0.1",
            "up br0 --dhcp",
            "up br0 --address 10.0.0.1/24 --dhcp-range 10.0.0.2-10.0.0.9",
        ] {
            assert_eq!(
                usage_error(args),
                ErrorKind::MissingRequiredArgument,
                "{args}"
            );
        }
        let Cmd::Up(a) = parse(
            "up br0 --address 192.168.2.1/24 --address fd00:2::1/64 --masquerade eth0 \
             --dhcp --dhcp-range 192.168.2.100-192.168.2.199",
        )
        .unwrap()
        .cmd
        else {
            panic!("not up");
        };
        assert_eq!(a.address.len(), 2);
        assert!(a.dhcp && a.dhcp_range.is_some());
        assert!(parse("up br0 --address fd00:2::1/64 --dhcp").is_ok());
        assert!(parse("lease add br0 02:00:00:00:00:01 10.0.0.3 --hostname g1").is_ok());
        assert!(parse("leases br0 --json").is_ok());
        // An uplink may be switched by TC alone.
        assert!(parse("attach eth0 --uplink --tc-only").is_ok());
        assert!(parse("attach tap0 --isolated --tc-only --max-learned 4").is_ok());
        assert!(parse("attach tap0 --flood-limit 0").is_ok());
        assert!(parse("attach tap0 --flood-limit 50").is_ok());
        assert!(parse("attach tap0 --flood-limit -1").is_err());
        assert!(parse("attach eth0 --masquerade --nat-ports 61000-61999").is_ok());
        assert!(parse("stats br0 --watch --interval 2 --json").is_ok());
        assert!(parse("stats --interval 2").is_err());
        assert!(parse("stats --watch --interval 0").is_err());
        assert!(parse("metrics br0 --listen 127.0.0.1:9469").is_ok());
        assert!(parse("metrics --listen 127.0.0.1").is_err());
        assert!(parse("completions fish").is_ok());
        assert!(parse("completions tcsh").is_err());
        let Cmd::Attach(a) = parse(
            "attach tap0 --lock --mac 52:54:00:12:34:56 --mac 52:54:00:12:34:57 \
             --ip 192.168.2.10 --ip fe80::5054:ff:fe12:3456 --isolated",
        )
        .unwrap()
        .cmd
        else {
            panic!("not attach");
        };
        assert!(a.lock && a.isolated);
        assert_eq!(a.mac.len(), 2);
        assert_eq!(
            a.ip,
            vec![
                "192.168.2.10".parse::<IpAddr>().unwrap(),
                "fe80::5054:ff:fe12:3456".parse().unwrap()
            ]
        );
    }
}
