//! Map keys and values shared by the eBPF programs and userspace.
//!
//! Every type is `#[repr(C)]` with explicit padding so that its layout is
//! the same on both sides and the kernel never sees uninitialised bytes in
//! a hash key.
#![no_std]

/// Most ports one bridge can have (devmap, port list and stats sizes).
pub const MAX_PORTS: u32 = 256;
/// Most MAC addresses one bridge learns.
pub const FDB_SIZE: u32 = 131_072;
/// Largest frame XDP switches itself: bigger frames (GSO, jumbo) are
/// passed to the TC program, since a devmap redirect of an skb larger than
/// the target's MTU fails in generic XDP.
pub const MAX_XDP_FRAME: usize = 1518;
/// A learned entry is only rewritten when it is older than this, so that a
/// busy flow does not dirty the FDB cache line on every packet.
pub const FDB_REFRESH_NS: u64 = 1_000_000_000;
/// Default aging time, as the kernel bridge's.
pub const DEFAULT_AGING_SECS: u64 = 300;

/// Names of the maps and programs in the eBPF object.
pub mod names {
    pub const FDB: &str = "UMLBR_FDB";
    pub const LEARN: &str = "UMLBR_LEARN";
    pub const NAT_TX: &str = "UMLBR_NAT_TX";
    pub const FLOOD_ISOLATED: &str = "UMLBR_FLOOD_ISO";
    pub const PORTS: &str = "UMLBR_PORTS";
    pub const PORT_LIST: &str = "UMLBR_PORT_LIST";
    pub const PORT_STATS: &str = "UMLBR_STATS";
    pub const CONFIG: &str = "UMLBR_CONFIG";
    pub const XDP_PROG: &str = "umlbr_xdp";
    pub const TC_PROG: &str = "umlbr_tc";
    pub const TC_OUT_PROG: &str = "umlbr_tc_out";
    pub const NAT_OUT: &str = "UMLBR_NAT_OUT";
    pub const NAT_IN: &str = "UMLBR_NAT_IN";
    pub const NAT_CONFIG: &str = "UMLBR_NAT_CFG";
    pub const NAT_STATS: &str = "UMLBR_NAT_STAT";
    pub const NAT_MTU: &str = "UMLBR_NAT_MTU";
    pub const PORT_IP: &str = "UMLBR_PORT_IP";
    pub const NAT_QUOTA: &str = "UMLBR_NAT_QUOTA";
    /// `umlbr monitor`: the ring buffer of events, the listener's lease,
    /// the per-kind rate limit.
    pub const EVENTS: &str = "UMLBR_EVENTS";
    pub const EV_CTL: &str = "UMLBR_EV_CTL";
    pub const EV_RATE: &str = "UMLBR_EV_RATE";
    pub const NAT_FWD: &str = "UMLBR_NAT_FWD";
    pub const VLAN: &str = "UMLBR_VLAN";
    pub const NAT6_OUT: &str = "UMLBR_NAT6_OUT";
    pub const NAT6_IN: &str = "UMLBR_NAT6_IN";
    pub const NAT6_CONFIG: &str = "UMLBR_NAT6_CFG";
    pub const NAT6_STATS: &str = "UMLBR_NAT6_STAT";
}

/// FDB key: a MAC address in a VLAN. VLAN 0 is the default VLAN, the
/// only one of a bridge without VLAN-aware ports: the same 8 bytes as the
/// key before VLANs (a MAC and two zero pad bytes), so entries made by an
/// older umlbr stay valid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FdbKey {
    pub mac: [u8; 6],
    /// The VLAN id (1-4094; 0: the default VLAN), host byte order.
    pub vlan: u16,
}

impl FdbKey {
    /// `mac` in the default VLAN.
    pub const fn new(mac: [u8; 6]) -> Self {
        Self { mac, vlan: 0 }
    }
    pub const fn in_vlan(mac: [u8; 6], vlan: u16) -> Self {
        Self { mac, vlan }
    }
}

/// The entry never ages and never moves to another port.
pub const FDB_F_STATIC: u32 = 1;
/// The MAC of the port's own host interface (the uplink's): frames to it
/// go up that interface's stack, not out of it.
pub const FDB_F_LOCAL: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdbEntry {
    /// Port the MAC lives behind.
    pub ifindex: u32,
    /// `FDB_F_*`.
    pub flags: u32,
    /// `bpf_ktime_get_coarse_ns()` when last seen (CLOCK_MONOTONIC_COARSE).
    pub updated_ns: u64,
}

/// Per-bridge settings, index 0 of an array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Learned entries older than this are not used and are removed.
    pub aging_ns: u64,
    /// Number of valid slots in the port list (TC flooding walks it).
    pub nr_ports: u32,
    /// The switch-side end of the host port's veth pair.
    pub host_port: u32,
    /// The uplink port (the host's NIC), 0 if none.
    pub uplink: u32,
    /// `CFG_F_*`.
    pub flags: u32,
    /// The uplink's own MAC: frames from it are the host's own.
    pub uplink_mac: [u8; 6],
    /// [`LAYOUT_VERSION`] of the umlbr whose `up` (or `upgrade`) made the
    /// bridge's maps; 0 on bridges made before it was stored (whose maps
    /// are version 1's). Only userspace reads it (`umlbr upgrade`); it
    /// stays at this offset (bytes 30-31 of key 0's value) in every
    /// version, so that any umlbr can read any bridge's.
    pub layout: u16,
}

/// The version of the meaning of the datapath's maps: their names, keys
/// and values (the types of this crate, the flags and constants stored in
/// them, what a zero means), stored in `Config::layout` by `umlbr up`.
/// `umlbr upgrade` reuses a running bridge's maps only when its version is
/// this one, or when `umlbr/src/upgrade.rs`'s `HISTORY` says how to bring
/// each map from its version to this one; otherwise it refuses.
///
/// BUMP IT whenever an existing map's key or value changes meaning, also
/// when its size stays (a pad turned into a field, a flag bit given a new
/// sense, a unit changed), and add the step to `HISTORY`: one line when
/// every old entry means the same to the new programs (a pad whose zero
/// means what it meant), a `Rewrite` of the map's entries otherwise, or a
/// `Refuse`. A map only added needs no bump (an upgrade makes it empty);
/// a change the kernel can see (a size, a type) is refused by `upgrade`
/// unless `upgrade.rs` has a migration for it, version or not.
pub const LAYOUT_VERSION: u16 = 1;

/// Flooding is done by the TC program: some port cannot take XDP frames
/// (a veth uplink whose peer may lack NAPI), or the uplink's host stack
/// must see broadcasts too.
pub const CFG_F_TC_FLOOD: u32 = 1;
/// Some port is a VXLAN device (`PORT_KIND_VXLAN`): set with
/// `CFG_F_TC_FLOOD` (XDP cannot send to it, so floods that must reach it
/// go through TC), and it tells XDP's masquerade to leave replies for a
/// guest behind a port outside the devmap untranslated, to TC.
pub const CFG_F_VXLAN: u32 = 2;

/// Some port of the bridge has VLANs (an entry in UMLBR_VLAN): every
/// frame is classified into a VLAN (a port without an entry is an access
/// port of the default VLAN 0), and floods go through TC, which tags and
/// untags each port's copy. Without it the bridge is VLAN-unaware, as
/// before VLANs: tags are payload.
pub const CFG_F_VLAN: u32 = 4;

/// The default VLAN: untagged frames of ports without VLANs.
pub const VLAN_DEFAULT: u16 = 0;
/// Highest VLAN id (4095 is reserved).
pub const VLAN_MAX: u16 = 4094;

/// A port's VLANs, keyed by ifindex in UMLBR_VLAN (written by userspace,
/// read by the datapath). An access port (`attach --vlan ID`): `pvid` ID,
/// nothing tagged. A trunk (`--trunk ID,...`): the bits of `tagged`, and
/// `pvid` (`--pvid`; default 0, the default VLAN) for its untagged
/// frames. A VLAN in both is untagged.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortVlan {
    /// The VLAN of the port's untagged (and priority-tagged) frames, which
    /// leave it untagged.
    pub pvid: u16,
    pub _pad: u16,
    /// Number of VLANs in `tagged` (for `show`; the datapath tests bits).
    pub nr_tagged: u32,
    /// Bit `vid` set: VLAN `vid` passes tagged.
    pub tagged: [u64; 64],
}

impl Default for PortVlan {
    fn default() -> Self {
        Self {
            pvid: 0,
            _pad: 0,
            nr_tagged: 0,
            tagged: [0; 64],
        }
    }
}

impl PortVlan {
    #[inline(always)]
    pub fn has_tagged(&self, vid: u16) -> bool {
        let vid = vid as usize & 0xfff;
        self.tagged[vid >> 6] & (1 << (vid & 63)) != 0
    }
}

/// Port kind, stored in every CPU's stats slot by userspace.
pub const PORT_KIND_OTHER: u32 = 0;
pub const PORT_KIND_TAP: u32 = 1;
pub const PORT_KIND_HOST: u32 = 2;
pub const PORT_KIND_UPLINK: u32 = 3;
/// A kernel VXLAN device (guests on other hosts): XDP cannot redirect into
/// it (no ndo_xdp_xmit), so it is outside the devmap (`PORT_F_NO_XDP_TX`)
/// and has no XDP program; TC sends to it and switches what it receives.
pub const PORT_KIND_VXLAN: u32 = 4;

/// The port was promiscuous before umlbr made it a port.
pub const PORT_F_WAS_PROMISC: u32 = 1;
/// Not in the devmap: frames for it go through the TC program.
pub const PORT_F_NO_XDP_TX: u32 = 2;
/// An isolated port (`attach --isolated`, the kernel bridge's `isolated
/// on`): its frames never reach another isolated port, unicast or flood;
/// they reach every other port (the host port, the uplink, guests that are
/// not isolated). It is not in UMLBR_FLOOD_ISO, the broadcast set of
/// isolated ports' XDP floods.
pub const PORT_F_ISOLATED: u32 = 4;
/// A locked port (`attach --lock --mac MAC...`): it accepts only frames
/// whose source MAC is one of its static FDB entries (its bound MACs),
/// and never learns or moves an entry. Others are dropped, counted as
/// `locked`.
pub const PORT_F_LOCKED: u32 = 8;
/// A locked port with bound addresses (`--ip ADDR...`): after the MAC
/// check, its IPv4 source / ARP sender and IPv6 source / neighbour
/// advertisement target must be bound to it in UMLBR_PORT_IP (see
/// `PortIpKey`); router advertisements and redirects, and every other
/// EtherType, are dropped. Drops are counted as `ip_locked`.
pub const PORT_F_IP_LOCKED: u32 = 16;

/// Most addresses bound to ports (`attach --ip`), all ports of a bridge
/// together.
pub const PORT_IP_SIZE: u32 = 4096;
/// `PortIpKey::family` of an IPv4 address (its 4 bytes first in `addr`,
/// the rest zero) and of an IPv6 address.
pub const PORT_IP_V4: u8 = 4;
pub const PORT_IP_V6: u8 = 6;

/// Key of UMLBR_PORT_IP: an address bound to a locked port. The value
/// (a u32) is unused: being in the map is the binding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortIpKey {
    pub ifindex: u32,
    /// `PORT_IP_V4` or `PORT_IP_V6`.
    pub family: u8,
    pub _pad: u8,
    pub _pad2: u16,
    /// Network byte order; an IPv4 address in the first 4 bytes.
    pub addr: [u8; 16],
}

/// A port's learning budget, keyed by ifindex (one value for all CPUs, so
/// that every CPU charges the same count). The FDB is a plain hash that
/// never evicts: a port may hold at most `max` learned MACs (0: no limit
/// but the table's size), so that no port can push another's entries out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortLearn {
    /// Learned entries that point at this port. CPUs add and subtract
    /// atomically; userspace corrects it when it removes entries itself,
    /// so a racing update can leave it off by a few, never by more.
    pub count: u32,
    /// Most learned entries, written by userspace (`attach --max-learned`).
    pub max: u32,
    /// When the datapath last swept aged entries for a port at its limit.
    pub swept_ns: u64,
    /// Storm control (`attach --flood-limit`): most floods a second,
    /// written by userspace for `show` (0: no limit).
    pub flood_pps: u32,
    /// 1e9 / `flood_pps`: what one flood costs, in ns (0: no limit). The
    /// datapath reads only this.
    pub flood_gap_ns: u32,
    /// The bucket, as a theoretical arrival time (GCRA): a flood passes
    /// if `max(flood_tat_ns, now)` is at most `FLOOD_BURST - 1` gaps ahead
    /// of now, and moves it one gap on. CLOCK_MONOTONIC_COARSE ns.
    pub flood_tat_ns: u64,
}

/// Default flood limit of a guest's port, in floods (broadcast, multicast,
/// unknown unicast) a second. A normal guest sends a few a second (ARP,
/// DHCP, neighbour discovery, MLD, mDNS), a few dozen at boot; 1000 is
/// far above that, and yet a storm at it costs the other guests' CPUs
/// little (each flood is one copy per port). The host port and an uplink
/// have no limit by default: the host is trusted, and a LAN's broadcasts
/// are the LAN's.
pub const DEFAULT_FLOOD_LIMIT: u32 = 1000;
/// Floods a port may send at once above its rate, after a quiet while:
/// enough for a guest's boot (DHCP, ARP probes and announcements, router
/// solicitation, MLD reports, mDNS probes), whatever the rate.
pub const FLOOD_BURST: u64 = 200;

/// Default learning limit of a guest's port (and the host port): far more
/// MACs than a guest has, and 256 such ports fit the table with room for
/// the uplink's LAN.
pub const DEFAULT_MAX_LEARNED: u32 = 256;
/// Default learning limit of an uplink: a LAN's stations.
pub const DEFAULT_MAX_LEARNED_UPLINK: u32 = 32_768;
/// How often a port at its learning limit may sweep the FDB for aged
/// entries (a walk of the whole table).
pub const FDB_SWEEP_INTERVAL_NS: u64 = 1_000_000_000;

/// Per-port, per-CPU counters, keyed by ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct PortStats {
    /// `PORT_KIND_*`, written by userspace at attach time.
    #[cfg_attr(feature = "user", serde(skip))]
    pub kind: u32,
    /// `PORT_F_*`, written by userspace at attach time.
    #[cfg_attr(feature = "user", serde(skip))]
    pub flags: u32,
    /// Frames and bytes received on this port.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Known unicast sent to its port.
    pub forwarded: u64,
    /// Broadcast, multicast and unknown unicast sent to all other ports.
    pub flooded: u64,
    /// Dropped, for any reason: the sum of the counters marked "Of
    /// `dropped`" below.
    pub dropped: u64,
    /// New MAC addresses learned on this port.
    pub learned: u64,
    /// MAC addresses that moved to this port from another.
    pub moved: u64,
    /// Frames switched by XDP in the driver (native) path.
    pub xdp_native: u64,
    /// Frames switched by XDP on an skb (generic path, e.g. tun's
    /// blocking writes).
    pub xdp_generic: u64,
    /// Frames switched by the TC program (GSO and jumbo frames).
    pub tc: u64,
    /// Source MACs not learned: the port is at its learning limit (or
    /// the table is full). Their frames are still switched.
    pub learn_limited: u64,
    /// Of `dropped`: the source MAC is a static entry of another port
    /// (the host's, an uplink's, `fdb add --static`).
    pub spoofed: u64,
    /// Of `dropped`: unicast from this isolated port to another isolated
    /// port (`attach --isolated`).
    pub isolated: u64,
    /// Of `dropped`: floods over the port's flood limit (storm control,
    /// `attach --flood-limit`).
    pub storm: u64,
    /// Of `dropped`: from a locked port (`attach --lock`), a source MAC
    /// not bound to it (`--mac`).
    pub locked: u64,
    /// Of `dropped`: from a port locked to addresses (`attach --ip`), a
    /// frame the binding does not allow: an IPv4 or IPv6 source, ARP
    /// sender or neighbour advertisement target not bound to the port, an
    /// ARP sender MAC that is not the frame's, a router advertisement or
    /// redirect, another EtherType, or a truncated header.
    pub ip_locked: u64,
    /// Of `dropped`: not a frame any bridge forwards: shorter than an
    /// Ethernet header, a multicast or all-zero source MAC, or an
    /// 802.1D link-local destination (01:80:c2:00:00:0X: STP, pause,
    /// LACP, 802.1X, LLDP), as the kernel bridge drops them.
    pub invalid: u64,
    /// Of `dropped`: unicast for a MAC behind the port it came from (the
    /// kernel bridge drops it too, uncounted).
    pub hairpin: u64,
    /// Of `dropped`: a new masqueraded flow over the port's NAT mapping
    /// quota (`--nat-max-per-guest`; also counted as the NAT's `quota`).
    pub nat_quota: u64,
    /// Of `dropped`: in a bridge with VLANs, a frame of a VLAN the port
    /// does not carry (a tagged frame on an access port), a malformed tag
    /// (truncated, or an 802.1ad service tag), or unicast for a port that
    /// does not carry the frame's VLAN.
    pub vlan: u64,
}

/// Most NAT mappings (each has one entry in each direction's map).
pub const NAT_SIZE: u32 = 262_144;
/// Ports tried when allocating a mapping before giving up.
pub const NAT_TRIES: u32 = 16;
/// Default most live mappings one port's guests may hold
/// (`--nat-max-per-guest`). An honest guest rarely holds more than a few
/// thousand flows at once (a busy desktop: hundreds; a crawler or a
/// torrent client: some thousands), and a guest at this quota holds 1/32 of
/// the table: one guest, or a few, cannot fill it.
pub const DEFAULT_NAT_MAX_PER_GUEST: u32 = 8192;
/// How often the datapath may sweep the NAT table for expired mappings
/// when a guest is at its quota or the table is full. A sweep walks the
/// whole table, in the softirq of the packet that starts it: 25-60 ms
/// for a full table (tests/prog_nat.rs measures it), so at most once in
/// 5 s (1% of a CPU at worst). Expired mappings are also replaced when
/// their keys are next used, and `nat show` removes them.
pub const NAT_SWEEP_INTERVAL_NS: u64 = 5_000_000_000;
/// Entries of UMLBR_NAT_QUOTA: one per port, and key 0 for the table's
/// sweep clock.
pub const NAT_QUOTA_ENTRIES: u32 = MAX_PORTS + 1;

/// A port's share of the NAT table, keyed by its ifindex (the port a
/// mapping's guest sent from: what a guest cannot forge, as it can its
/// source address). One value for all CPUs. Key 0 is no port: its
/// `swept_ns` is when the datapath last swept the table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatQuota {
    /// Mappings the port's guests made that are still in the table:
    /// charged when one is made, credited when its outbound entry is
    /// removed (expired and replaced, swept, or by userspace). CPUs add and
    /// subtract atomically; racing CPUs can leave it off by a few.
    pub count: u32,
    pub _pad: u32,
    /// Key 0 only: CLOCK_MONOTONIC_COARSE ns of the last sweep.
    pub swept_ns: u64,
}

/// IP protocol numbers (the IPv4 header's `protocol`) that the NAT maps:
/// a [`NatKey`]'s `proto`.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// One direction of a NAT mapping. Addresses and ports are in network
/// byte order, as in the packet. `local` is this side's end: the guest's
/// address/port in the outbound map, the masquerade address/port in the
/// inbound map. ICMP echo uses the identifier as `local_port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub proto: u8,
    // Two fields, not [u8; 3]: the BPF backend zeroes an odd-sized array
    // with a call to a byte-wise memset, on every key built.
    pub _pad: u8,
    pub _pad2: u16,
    pub local_addr: u32,
    pub remote_addr: u32,
    pub local_port: u16,
    pub remote_port: u16,
}

impl NatKey {
    /// The key of `proto` between `local_addr:local_port` and
    /// `remote_addr:remote_port`, pad bytes zeroed (the kernel hashes every
    /// byte of a key).
    #[inline(always)]
    pub const fn new(
        proto: u8,
        local_addr: u32,
        local_port: u16,
        remote_addr: u32,
        remote_port: u16,
    ) -> Self {
        Self {
            proto,
            _pad: 0,
            _pad2: 0,
            local_addr,
            remote_addr,
            local_port,
            remote_port,
        }
    }
}

/// Outbound map value: the outside address and port of the mapping, and
/// the flow's next hop as the last route lookup found it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatOut {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
    /// Destination and source MAC for the uplink (bpf_fib_lookup's dmac
    /// and smac), valid while `hop_ns` is younger than [`NAT_HOP_NS`].
    pub hop: [u8; 12],
    pub _pad2: u32,
    /// CLOCK_MONOTONIC_COARSE ns of that lookup; 0: none yet.
    pub hop_ns: u64,
    /// TCP, as the guest last sent it (host byte order): its next
    /// sequence number (`seq` + payload + SYN + FIN), its acknowledgment
    /// (the next byte it expects from the remote) and its window field;
    /// what an RST or FIN from the LAN is judged by. `NAT_T_*` says which
    /// are known.
    pub seq_next: u32,
    pub ack: u32,
    pub win: u16,
    pub track: u16,
    /// The ifindex of the port whose guest made the mapping: only packets
    /// from it use the mapping.
    pub owner: u32,
}

/// `NatOut.seq_next` holds the guest's next sequence number.
pub const NAT_T_SEQ: u16 = 1;
/// `NatOut.ack` and `win` hold the guest's last acknowledgment and window.
pub const NAT_T_ACK: u16 = 2;
/// The largest window scale (RFC 7323): umlbr does not read the guest's
/// window-scale option, so it bounds the guest's receive window by its
/// window field shifted by this.
pub const NAT_WSCALE_MAX: u32 = 14;

/// How long a flow's cached next hop is used before the route is looked
/// up again: a route or neighbour change reaches established flows within
/// this time (new flows at once).
pub const NAT_HOP_NS: u64 = 1_000_000_000;

/// Inbound map value: where replies go, and the flow's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatIn {
    /// The guest's address and port (network byte order).
    pub addr: u32,
    pub port: u16,
    /// `NAT_S_*`.
    pub state: u16,
    /// The guest's MAC, to send replies to.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// CLOCK_MONOTONIC_COARSE ns of the last packet either way.
    pub last_seen_ns: u64,
    pub created_ns: u64,
}

pub const NAT_S_SYN_OUT: u16 = 1;
pub const NAT_S_REPLIED: u16 = 2;
pub const NAT_S_FIN_OUT: u16 = 4;
pub const NAT_S_FIN_IN: u16 = 8;
pub const NAT_S_RST: u16 = 16;

/// Whether a TCP mapping in `state` is closed: reset, or finished both
/// ways. It then times out as closing, and a new SYN starts it afresh.
#[inline(always)]
pub const fn nat_tcp_closed(state: u16) -> bool {
    const FIN_BOTH: u16 = NAT_S_FIN_OUT | NAT_S_FIN_IN;
    state & NAT_S_RST != 0 || state & FIN_BOTH == FIN_BOTH
}

/// Masquerade settings of a bridge, index 0 of an array map. Zero
/// `nat_ifindex` means no masquerade.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatConfig {
    /// The uplink guest traffic leaves through.
    pub nat_ifindex: u32,
    /// Its address, the one the LAN sees (network byte order).
    pub nat_addr: u32,
    /// The host interface of the bridge (the guests' gateway), input
    /// device for route lookups.
    pub host_ifindex: u32,
    /// The guests' subnet (network byte order): not translated.
    pub subnet: u32,
    pub mask: u32,
    /// Source ports to allocate from (host byte order, inclusive).
    pub port_lo: u16,
    pub port_hi: u16,
    /// The gateway's MAC (the bridge's host interface).
    pub gw_mac: [u8; 6],
    /// `NAT_F_*`.
    pub flags: u16,
    pub tcp_established_ns: u64,
    pub tcp_transitory_ns: u64,
    pub tcp_closing_ns: u64,
    pub udp_ns: u64,
    pub udp_stream_ns: u64,
    pub icmp_ns: u64,
    /// Largest packet (IPv4 total length) the fast path sends out of the
    /// uplink: its MTU, or the MTU of the route to the destination when
    /// UMLBR_NAT_MTU has one (bpf_fib_lookup honours a route's MTU only
    /// when it is locked; the kernel's forwarding always does). Bigger
    /// packets take the kernel's path, which answers "fragmentation
    /// needed".
    pub mtu: u32,
    /// Most live mappings one port's guests may hold (0: no limit but the
    /// table's size): new flows beyond it are dropped and counted as
    /// `quota` (`--nat-max-per-guest`).
    pub max_per_guest: u32,
}

/// The uplink takes XDP frames (it is in the devmap).
pub const NAT_F_XDP_TX: u16 = 1;
/// Routes out of the uplink carry MTUs: look them up in UMLBR_NAT_MTU.
pub const NAT_F_ROUTE_MTU: u16 = 2;
/// Entries of UMLBR_NAT_MTU (routes with an MTU out of the uplink).
pub const NAT_MTU_ROUTES: u32 = 1024;
/// UMLBR_NAT_FWD has entries (`umlbr forward add`): a packet to the
/// uplink's address that misses the inbound table looks there. Without
/// it the miss costs nothing more than before.
pub const NAT_F_FWD: u16 = 0x20;
/// Most port forwards of a bridge.
pub const NAT_FWD_SIZE: u32 = 1024;

/// A key of UMLBR_NAT_FWD. A forward (`kind` FWD_K_PORT): the protocol
/// (TCP or UDP) and the uplink's port (network byte order), `addr` 0. Its
/// target (`kind` FWD_K_TARGET): the protocol, the guest's address and
/// port; a new flow the guest starts from there is left to the kernel,
/// whose conntrack may hold the forward's flows that BPF did not map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FwdKey {
    pub proto: u8,
    pub kind: u8,
    pub port: u16,
    pub addr: u32,
}

pub const FWD_K_PORT: u8 = 0;
pub const FWD_K_TARGET: u8 = 1;

/// Where a port forward leads: a guest's address and port (network byte
/// order), and how many flows it has opened (the datapath adds to
/// `hits` atomically; userspace writes the value only at `forward add`).
/// A target's value: `port` is the forward's outside port, `addr` 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwdVal {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
    pub hits: u64,
}

/// The bridge masquerades IPv6 too (UMLBR_NAT6_CFG): the datapath looks
/// at guests' IPv6 only with this flag, so an IPv4-only bridge pays
/// nothing for it.
pub const NAT_F_V6: u16 = 4;

/// Conntrack-like default timeouts (seconds).
pub const NAT_TCP_ESTABLISHED_SECS: u64 = 432_000;
pub const NAT_TCP_TRANSITORY_SECS: u64 = 120;
pub const NAT_TCP_CLOSING_SECS: u64 = 10;
pub const NAT_UDP_SECS: u64 = 30;
pub const NAT_UDP_STREAM_SECS: u64 = 120;
pub const NAT_ICMP_SECS: u64 = 30;

/// Masquerade counters, per CPU, index 0 of an array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct NatStats {
    /// Guest packets translated on the way out, by XDP and by TC.
    pub out_xdp: u64,
    pub out_tc: u64,
    /// Replies translated on the way in.
    pub in_xdp: u64,
    pub in_tc: u64,
    /// ICMP errors for a mapping translated (inner header included).
    pub icmp_errors: u64,
    /// Packets to the uplink address with no mapping (the host's own).
    pub in_miss: u64,
    /// New mappings, and allocations that found no free port.
    pub allocs: u64,
    pub alloc_fail: u64,
    /// Guest packets left to the kernel (fragments, other protocols, TTL
    /// expiring, no route via the uplink, lengths that do not hold
    /// together).
    pub slow_path: u64,
    /// Expired mappings found and replaced by the datapath.
    pub expired: u64,
    /// Guest packets from a source outside the bridge's subnet: never
    /// masqueraded (the kernel's path drops them too).
    pub bad_source: u64,
    /// TCP RST or FIN from the LAN outside the guest's receive window (or,
    /// before the guest acknowledged anything, an RST not acknowledging
    /// its SYN): passed to the guest, the mapping's state left alone.
    pub out_of_window: u64,
    /// Guest packets of a live mapping that another port made (a guest
    /// sending with another's address and ports): not translated, the
    /// mapping left alone (the kernel's path).
    pub foreign: u64,
    /// Guest packets of new flows dropped: their port's guests hold
    /// `max_per_guest` live mappings already (`--nat-max-per-guest`).
    pub quota: u64,
    /// Replies with DF set bigger than their guest port's MTU, answered
    /// with ICMP "fragmentation needed" to their sender (path MTU).
    pub frag_needed: u64,
    /// Replies without DF bigger than their guest port's MTU: dropped
    /// (XDP and TC cannot fragment; the kernel's forwarding would).
    pub too_big: u64,
}

/// One direction of an IPv6 NAT mapping ([`NatKey`]'s, with 16-byte
/// addresses as four words in network byte order). Own maps rather than a
/// wider [`NatKey`]: the IPv4 maps keep their layout (no migration for
/// `umlbr upgrade`) and their 16-byte keys (hashing and stack).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Nat6Key {
    pub proto: u8,
    pub _pad: u8,
    pub _pad2: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub local_addr: [u32; 4],
    pub remote_addr: [u32; 4],
}

impl Nat6Key {
    #[inline(always)]
    pub const fn new(
        proto: u8,
        local_addr: [u32; 4],
        local_port: u16,
        remote_addr: [u32; 4],
        remote_port: u16,
    ) -> Self {
        Self {
            proto,
            _pad: 0,
            _pad2: 0,
            local_port,
            remote_port,
            local_addr,
            remote_addr,
        }
    }
}

/// Inbound IPv6 map value: the guest's address, and the same state as an
/// IPv4 mapping's ([`NatIn`], whose `addr` is unused here), so that
/// timeouts and TCP states are one code for both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nat6In {
    pub addr: [u32; 4],
    pub st: NatIn,
}

/// Most IPv6 NAT mappings (each has one entry in each of UMLBR_NAT6_OUT
/// and UMLBR_NAT6_IN). Smaller than IPv4's [`NAT_SIZE`]: its entries are
/// twice as big, preallocated, and IPv6 guests are fewer so far.
pub const NAT6_SIZE: u32 = 65_536;

/// Most IPv6 prefixes of the guest subnet (the bridge's addresses).
pub const NAT6_PREFIXES: usize = 4;

/// IPv6 masquerade settings, index 0 of an array map; the rest (uplink,
/// ports, timeouts, quota, gateway MAC) is the bridge's [`NatConfig`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nat6Config {
    /// The uplink's global IPv6 address (network byte order); all zero:
    /// none, and guests' IPv6 to the uplink is dropped (counted).
    pub addr: [u32; 4],
    /// The guests' prefixes (network, mask), `nr_prefixes` of them: their
    /// packets between each other are switched, and only their sources
    /// are masqueraded.
    pub prefix: [[u32; 4]; NAT6_PREFIXES],
    pub mask: [[u32; 4]; NAT6_PREFIXES],
    pub nr_prefixes: u32,
    pub _pad: u32,
}

/// IPv6 masquerade counters, per CPU (as [`NatStats`]'s for IPv4; the
/// quota, allocation and expiry counters are shared with IPv4's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct Nat6Stats {
    pub out_xdp: u64,
    pub out_tc: u64,
    pub in_xdp: u64,
    pub in_tc: u64,
    /// ICMPv6 errors for a mapping translated (inner headers included).
    pub icmp_errors: u64,
    /// Packets to the uplink's IPv6 address with no mapping.
    pub in_miss: u64,
    /// Guest IPv6 left to the kernel's path (extension headers, other
    /// protocols, hop limit expiring, no route via the uplink, bad
    /// lengths, mappings BPF would not make): its ip6 table masquerades
    /// or drops it.
    pub slow_path: u64,
    /// Guest IPv6 from outside the guest prefixes (never masqueraded).
    pub bad_source: u64,
    /// Guest IPv6 routed out of the uplink while it has no global IPv6
    /// address: dropped.
    pub no_addr: u64,
    /// Mappings made.
    pub allocs: u64,
}

impl NatConfig {
    /// Idle timeout of a mapping in `state` for `proto`.
    pub fn timeout_ns(&self, proto: u8, state: u16) -> u64 {
        match proto {
            IPPROTO_TCP => {
                if nat_tcp_closed(state) {
                    self.tcp_closing_ns
                } else if state & NAT_S_REPLIED != 0 && state & (NAT_S_FIN_OUT | NAT_S_FIN_IN) == 0
                {
                    self.tcp_established_ns
                } else {
                    self.tcp_transitory_ns
                }
            }
            IPPROTO_UDP => {
                if state & NAT_S_REPLIED != 0 {
                    self.udp_stream_ns
                } else {
                    self.udp_ns
                }
            }
            _ => self.icmp_ns,
        }
    }
}

// ---------------------------------------------------------------------------
// Events (`umlbr monitor`).

/// A source MAC learned on a port (`Event.ifindex`).
pub const EV_LEARNED: u16 = 1;
/// A learned MAC moved to `ifindex` from `other`.
pub const EV_MOVED: u16 = 2;
/// A learned MAC of port `ifindex` aged out, removed by the datapath (when
/// looked up, or by a sweep).
pub const EV_AGED: u16 = 3;
/// Dropped: the source MAC is a static entry of another port (`spoofed`).
pub const EV_SPOOFED: u16 = 4;
/// Dropped by a locked port: source MAC not bound to it (`locked`).
pub const EV_LOCKED: u16 = 5;
/// Dropped by a port locked to addresses (`ip_locked`).
pub const EV_IP_LOCKED: u16 = 6;
/// Dropped: unicast from an isolated port to isolated port `other`.
pub const EV_ISOLATED: u16 = 7;
/// Dropped: a flood over the port's flood limit (`storm`).
pub const EV_STORM: u16 = 8;
/// A NAT mapping made for a flow of port `ifindex`'s guest.
pub const EV_NAT_NEW: u16 = 9;
/// A NAT mapping expired and removed by the datapath.
pub const EV_NAT_EXPIRED: u16 = 10;
/// A new flow refused: its port's guests hold their NAT quota.
pub const EV_NAT_QUOTA: u16 = 11;
/// A new flow left to the kernel's path: the NAT table is full.
pub const EV_NAT_FULL: u16 = 12;
/// A new flow left to the kernel's path: no free outside port.
pub const EV_NAT_NO_PORT: u16 = 13;
/// Entries of UMLBR_EV_RATE: one bucket per kind (index 0 unused).
pub const EV_KINDS: u32 = 14;

/// Events of one kind the datapath writes at most a second, after a burst
/// of `EV_BURST`: a storm of spoofed frames costs the ring (and the
/// monitor) this much, and the rest is counted as suppressed.
pub const EV_RATE_PER_SEC: u64 = 100;
pub const EV_GAP_NS: u64 = 1_000_000_000 / EV_RATE_PER_SEC;
pub const EV_BURST: u64 = 100;
/// Size of the ring buffer (a power of two of pages): 256 KiB, about
/// 4000 events (48 bytes and an 8-byte header each), more than every
/// kind's burst together.
pub const EV_RING_BYTES: u32 = 256 * 1024;
/// The monitor renews its lease (`EvCtl.until_ns`) every
/// `EV_LEASE_RENEW_NS` for `EV_LEASE_NS`: a monitor killed without a word
/// leaves the datapath writing events for at most that long.
pub const EV_LEASE_NS: u64 = 3_000_000_000;
pub const EV_LEASE_RENEW_NS: u64 = 1_000_000_000;

/// One event, as the datapath writes it into UMLBR_EVENTS. Which fields
/// mean something depends on `kind` (`EV_*`); the rest are zero.
/// Addresses and ports are in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC_COARSE ns (`bpf_ktime_get_coarse_ns`).
    pub ts_ns: u64,
    /// `EV_*`.
    pub kind: u16,
    /// NAT events: the IP protocol.
    pub proto: u8,
    pub _pad: u8,
    /// The port: where the MAC is or was, the frame came from, or whose
    /// guest's flow it is (0: unknown).
    pub ifindex: u32,
    /// The MAC: learned, moved, aged, or the dropped frame's source, or
    /// the NAT flow's guest (zero when unknown).
    pub mac: [u8; 6],
    pub _pad2: u16,
    /// EV_MOVED: the port it moved from; EV_ISOLATED: the isolated port
    /// the frame was for.
    pub other: u32,
    /// NAT: the masquerade address (with `nat_port`, the mapping's
    /// outside end; `nat_port` is 0 for a refusal).
    pub nat_addr: u32,
    /// NAT: the guest's address, the remote address, their ports.
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub nat_port: u16,
    pub _pad3: u16,
}

/// UMLBR_EV_CTL, index 0: whether anyone listens.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvCtl {
    /// CLOCK_MONOTONIC_COARSE ns until which a monitor listens (its lease):
    /// before it, the rare paths write events; after it (0: never), they
    /// stop at this compare.
    pub until_ns: u64,
}

/// UMLBR_EV_RATE, one per kind: a GCRA bucket (as storm control's) and
/// what it suppressed. One value for all CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvBucket {
    /// Theoretical arrival time: an event passes while this is at most
    /// `EV_BURST - 1` gaps ahead of now, and moves it one gap on.
    pub tat_ns: u64,
    /// Events of this kind not written since the map was made: over the
    /// rate, or the ring full. Only grows; the monitor reports increases.
    pub suppressed: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, with explicit padding and no pointers.
    unsafe impl aya::Pod for super::FdbKey {}
    unsafe impl aya::Pod for super::FdbEntry {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::PortStats {}
    unsafe impl aya::Pod for super::PortLearn {}
    unsafe impl aya::Pod for super::PortIpKey {}
    unsafe impl aya::Pod for super::NatKey {}
    unsafe impl aya::Pod for super::NatOut {}
    unsafe impl aya::Pod for super::NatIn {}
    unsafe impl aya::Pod for super::NatConfig {}
    unsafe impl aya::Pod for super::NatStats {}
    unsafe impl aya::Pod for super::NatQuota {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::EvCtl {}
    unsafe impl aya::Pod for super::EvBucket {}
    unsafe impl aya::Pod for super::FwdKey {}
    unsafe impl aya::Pod for super::FwdVal {}
    unsafe impl aya::Pod for super::PortVlan {}
    unsafe impl aya::Pod for super::Nat6Key {}
    unsafe impl aya::Pod for super::Nat6In {}
    unsafe impl aya::Pod for super::Nat6Config {}
    unsafe impl aya::Pod for super::Nat6Stats {}
}

// Userspace additions: per-CPU sums.

/// Adds the counters; `kind` and `flags` are the port's (the same on
/// every CPU) and stay as they are.
#[cfg(feature = "user")]
impl core::ops::AddAssign for PortStats {
    fn add_assign(&mut self, o: Self) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.forwarded += o.forwarded;
        self.flooded += o.flooded;
        self.dropped += o.dropped;
        self.learned += o.learned;
        self.moved += o.moved;
        self.xdp_native += o.xdp_native;
        self.xdp_generic += o.xdp_generic;
        self.tc += o.tc;
        self.learn_limited += o.learn_limited;
        self.spoofed += o.spoofed;
        self.isolated += o.isolated;
        self.storm += o.storm;
        self.locked += o.locked;
        self.ip_locked += o.ip_locked;
        self.invalid += o.invalid;
        self.hairpin += o.hairpin;
        self.nat_quota += o.nat_quota;
        self.vlan += o.vlan;
    }
}

#[cfg(feature = "user")]
impl core::ops::AddAssign for NatStats {
    fn add_assign(&mut self, o: Self) {
        self.out_xdp += o.out_xdp;
        self.out_tc += o.out_tc;
        self.in_xdp += o.in_xdp;
        self.in_tc += o.in_tc;
        self.icmp_errors += o.icmp_errors;
        self.in_miss += o.in_miss;
        self.allocs += o.allocs;
        self.alloc_fail += o.alloc_fail;
        self.slow_path += o.slow_path;
        self.expired += o.expired;
        self.bad_source += o.bad_source;
        self.out_of_window += o.out_of_window;
        self.foreign += o.foreign;
        self.quota += o.quota;
        self.frag_needed += o.frag_needed;
        self.too_big += o.too_big;
    }
}

#[cfg(feature = "user")]
impl core::ops::AddAssign for Nat6Stats {
    fn add_assign(&mut self, o: Self) {
        self.out_xdp += o.out_xdp;
        self.out_tc += o.out_tc;
        self.in_xdp += o.in_xdp;
        self.in_tc += o.in_tc;
        self.icmp_errors += o.icmp_errors;
        self.in_miss += o.in_miss;
        self.slow_path += o.slow_path;
        self.bad_source += o.bad_source;
        self.no_addr += o.no_addr;
        self.allocs += o.allocs;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nat_timeouts_follow_tcp_state() {
        let c = NatConfig {
            tcp_established_ns: 1,
            tcp_transitory_ns: 2,
            tcp_closing_ns: 3,
            udp_ns: 4,
            udp_stream_ns: 5,
            icmp_ns: 6,
            ..Default::default()
        };
        assert_eq!(c.timeout_ns(6, NAT_S_SYN_OUT), 2);
        assert_eq!(c.timeout_ns(6, NAT_S_SYN_OUT | NAT_S_REPLIED), 1);
        assert_eq!(c.timeout_ns(6, NAT_S_REPLIED | NAT_S_FIN_OUT), 2);
        assert_eq!(
            c.timeout_ns(6, NAT_S_REPLIED | NAT_S_FIN_OUT | NAT_S_FIN_IN),
            3
        );
        assert_eq!(c.timeout_ns(6, NAT_S_REPLIED | NAT_S_RST), 3);
        assert_eq!(c.timeout_ns(17, 0), 4);
        assert_eq!(c.timeout_ns(17, NAT_S_REPLIED), 5);
        assert_eq!(c.timeout_ns(1, 0), 6);
    }

    #[test]
    fn tcp_closed_is_reset_or_finished_both_ways() {
        assert!(nat_tcp_closed(NAT_S_REPLIED | NAT_S_RST));
        assert!(nat_tcp_closed(NAT_S_FIN_OUT | NAT_S_FIN_IN));
        assert!(!nat_tcp_closed(NAT_S_REPLIED | NAT_S_FIN_OUT));
        assert!(!nat_tcp_closed(NAT_S_SYN_OUT | NAT_S_REPLIED));
    }

    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FdbKey>(), 8);
        assert_eq!(size_of::<FdbEntry>(), 16);
        assert_eq!(size_of::<Config>(), 32);
        assert_eq!(size_of::<PortStats>(), 8 + 20 * 8);
        assert_eq!(size_of::<PortVlan>(), 8 + 64 * 8);
        assert_eq!(size_of::<PortIpKey>(), 24);
        assert_eq!(size_of::<PortLearn>(), 32);
        assert_eq!(size_of::<NatKey>(), 16);
        assert_eq!(size_of::<NatOut>(), 48);
        assert_eq!(size_of::<NatIn>(), 32);
        assert_eq!(size_of::<NatConfig>(), 32 + 6 * 8 + 8);
        assert_eq!(size_of::<NatStats>(), 16 * 8);
        assert_eq!(size_of::<NatQuota>(), 16);
        assert_eq!(size_of::<Nat6Key>(), 40);
        assert_eq!(size_of::<Nat6In>(), 48);
        assert_eq!(size_of::<Nat6Config>(), 16 + 2 * 4 * 16 + 8);
        assert_eq!(size_of::<Nat6Stats>(), 10 * 8);
    }

    #[test]
    fn event_layouts() {
        assert_eq!(size_of::<Event>(), 48);
        assert_eq!(size_of::<EvCtl>(), 8);
        assert_eq!(size_of::<EvBucket>(), 16);
    }

    #[test]
    fn event_fields_sit_where_the_datapath_writes_them() {
        use core::mem::offset_of;
        assert_eq!(offset_of!(Event, kind), 8);
        assert_eq!(offset_of!(Event, ifindex), 12);
        assert_eq!(offset_of!(Event, mac), 16);
        assert_eq!(offset_of!(Event, other), 24);
        assert_eq!(offset_of!(Event, saddr), 32);
        assert_eq!(offset_of!(Event, nat_port), 44);
        assert_eq!(EV_GAP_NS * EV_RATE_PER_SEC, 1_000_000_000);
        assert!(EV_RING_BYTES.is_power_of_two());
    }

    #[test]
    fn forward_layouts() {
        assert_eq!(size_of::<FwdKey>(), 8);
        assert_eq!(size_of::<FwdVal>(), 16);
    }
}
