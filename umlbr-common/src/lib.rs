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
    pub const PORTS: &str = "UMLBR_PORTS";
    pub const PORT_LIST: &str = "UMLBR_PORT_LIST";
    pub const PORT_STATS: &str = "UMLBR_STATS";
    pub const CONFIG: &str = "UMLBR_CONFIG";
    pub const XDP_PROG: &str = "umlbr_xdp";
    pub const TC_PROG: &str = "umlbr_tc";
    pub const TC_OUT_PROG: &str = "umlbr_tc_out";
}

/// FDB key: one MAC address (the bridge is VLAN-unaware, like the kernel
/// bridge with `vlan_filtering 0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FdbKey {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

impl FdbKey {
    pub const fn new(mac: [u8; 6]) -> Self {
        Self { mac, _pad: [0; 2] }
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
    pub _pad: [u8; 2],
}

/// Flooding is done by the TC program: some port cannot take XDP frames
/// (a veth uplink whose peer may lack NAPI), or the uplink's host stack
/// must see broadcasts too.
pub const CFG_F_TC_FLOOD: u32 = 1;

/// Port kind, stored in every CPU's stats slot by userspace.
pub const PORT_KIND_OTHER: u32 = 0;
pub const PORT_KIND_TAP: u32 = 1;
pub const PORT_KIND_HOST: u32 = 2;
pub const PORT_KIND_UPLINK: u32 = 3;

/// The port was promiscuous before umlbr made it a port.
pub const PORT_F_WAS_PROMISC: u32 = 1;
/// Not in the devmap: frames for it go through the TC program.
pub const PORT_F_NO_XDP_TX: u32 = 2;

/// Per-port, per-CPU counters, keyed by ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// `PORT_KIND_*`, written by userspace at attach time.
    pub kind: u32,
    /// `PORT_F_*`, written by userspace at attach time.
    pub flags: u32,
    /// Frames and bytes received on this port.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Known unicast sent to its port.
    pub forwarded: u64,
    /// Broadcast, multicast and unknown unicast sent to all other ports.
    pub flooded: u64,
    /// Dropped: runt, invalid source, link-local group, or destined to the
    /// port it came from.
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
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, with explicit padding and no pointers.
    unsafe impl aya::Pod for super::FdbKey {}
    unsafe impl aya::Pod for super::FdbEntry {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::PortStats {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FdbKey>(), 8);
        assert_eq!(size_of::<FdbEntry>(), 16);
        assert_eq!(size_of::<Config>(), 32);
        assert_eq!(size_of::<PortStats>(), 8 + 10 * 8);
    }
}
