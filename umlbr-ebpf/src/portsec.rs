//! Port security: what a locked port (`attach --lock --mac --ip`) may
//! send. Only frames from a locked port get here (the caller tests the
//! port's flags, already loaded), so other ports pay nothing.
//!
//! The MAC check is one FDB lookup: a locked port's MACs are its static
//! entries. The address check (`--ip`) parses parse → decide, bounded:
//! - IPv4: the source is bound, or 0.0.0.0 for a DHCP client's
//!   discover/request (UDP 68 → 67, header without options);
//! - ARP (Ethernet/IPv4 only): the sender MAC is the frame's source, and
//!   the sender address is bound, or 0.0.0.0 for a probe (RFC 5227) of a
//!   bound target address;
//! - IPv6: the source is bound, or :: for ICMPv6 duplicate address
//!   detection (a neighbour solicitation of a bound target), MLD reports
//!   and router solicitations; a neighbour advertisement's target must be bound, and an
//!   NS's or NA's link-layer address option must be the frame's source
//!   MAC (as ARP's sender MAC); router
//!   advertisements and redirects are dropped (a guest is not a router).
//!   Up to `EXT_MAX` extension headers (hop-by-hop, routing, destination
//!   options, fragment) are walked to find the ICMPv6 header; a non-first
//!   fragment carries none and is judged by its source alone;
//! - anything else (other EtherTypes, VLAN tags, truncated headers): no.
use aya_ebpf::{macros::map, maps::HashMap};
use umlbr_common::{PORT_IP_SIZE, PORT_IP_V4, PORT_IP_V6, PortIpKey};

use crate::{
    hdr::{
        ETH_HLEN, ETH_TYPE, IP_HLEN, IPPROTO_UDP, IPV6_HLEN, IPV6_NEXT, IPV6_PLEN, IPV6_SADDR,
        UDP_HLEN,
    },
    mem,
};

/// Addresses bound to locked ports (`attach --ip`); the value is unused.
#[map(name = "UMLBR_PORT_IP")]
static PORT_IP: HashMap<PortIpKey, u32> = HashMap::with_max_entries(PORT_IP_SIZE, 0);

/// Bytes a TC program makes linear before the check: the headers it reads
/// lie within them, or the frame is dropped as malformed.
pub const PULL: u32 = 256;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ARP_LEN: usize = 28;
/// htype Ethernet, ptype IPv4, hlen 6, plen 4.
const ARP_ETH_IP4: [u8; 6] = [0, 1, 8, 0, 6, 4];
const ARP_SHA: usize = 8;
const ARP_SPA: usize = 14;
const ARP_TPA: usize = 24;
const IPPROTO_ICMPV6: u8 = 58;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked before the ICMPv6 header; more: dropped.
const EXT_MAX: usize = 3;
const ICMPV6_MLD_QUERY: u8 = 130;
const ICMPV6_MLD_REPORT: u8 = 131;
const ICMPV6_MLD_DONE: u8 = 132;
const ICMPV6_ROUTER_SOLICIT: u8 = 133;
const ICMPV6_ROUTER_ADVERT: u8 = 134;
const ICMPV6_NEIGH_SOLICIT: u8 = 135;
const ICMPV6_NEIGH_ADVERT: u8 = 136;
const ICMPV6_REDIRECT: u8 = 137;
const ICMPV6_MLD2_REPORT: u8 = 143;
/// An NS/NA's target address, after type, code, checksum and 4 bytes;
/// its options after the target.
const ND_TARGET: usize = 8;
const ND_OPTS: usize = ND_TARGET + 16;
/// Source and target link-layer address options.
const ND_OPT_SLLA: u8 = 1;
const ND_OPT_TLLA: u8 = 2;
/// Options of an NS/NA looked at; more: dropped.
const ND_OPT_MAX: usize = 2;

/// Whether `src` is bound to locked `port`: one of its static entries.
#[inline(always)]
pub fn mac_bound(src: [u8; 6], vid: u16, port: u32) -> bool {
    crate::fdb::static_of(src, vid, port)
}

/// Whether the frame at `data..end` from IP-locked `port` with source MAC
/// `src` is allowed (see the module's rules).
#[inline(never)]
pub fn ip_allowed(data: usize, end: usize, port: u32, src: &[u8; 6]) -> bool {
    if data + ETH_HLEN > end {
        return false;
    }
    // SAFETY: bounds checked above.
    let ethertype = u16::from_be_bytes(unsafe { *((data + ETH_TYPE) as *const [u8; 2]) });
    match ethertype {
        ETH_P_IP => ipv4_allowed(data, end, port),
        ETH_P_ARP => arp_allowed(data, end, port, src),
        ETH_P_IPV6 => ipv6_allowed(data, end, port, src),
        _ => false,
    }
}

#[inline(always)]
fn ipv4_allowed(data: usize, end: usize, port: u32) -> bool {
    let ip = data + ETH_HLEN;
    if ip + IP_HLEN > end {
        return false;
    }
    // SAFETY: bounds checked above.
    let (vihl, proto, saddr) = unsafe {
        (
            *(ip as *const u8),
            *((ip + 9) as *const u8),
            *((ip + 12) as *const [u8; 4]),
        )
    };
    if saddr != [0; 4] {
        return v4_bound(port, saddr);
    }
    // 0.0.0.0: only a DHCP client's discover or request.
    let udp = ip + IP_HLEN;
    if vihl != 0x45 || proto != IPPROTO_UDP || udp + UDP_HLEN > end {
        return false;
    }
    // SAFETY: bounds checked above.
    let ports = unsafe { *(udp as *const [u8; 4]) };
    ports == [0, 68, 0, 67]
}

#[inline(always)]
fn arp_allowed(data: usize, end: usize, port: u32, src: &[u8; 6]) -> bool {
    let arp = data + ETH_HLEN;
    if arp + ARP_LEN > end {
        return false;
    }
    // SAFETY: bounds checked above.
    let (form, sha, spa, tpa) = unsafe {
        (
            *(arp as *const [u8; 6]),
            *((arp + ARP_SHA) as *const [u8; 6]),
            *((arp + ARP_SPA) as *const [u8; 4]),
            *((arp + ARP_TPA) as *const [u8; 4]),
        )
    };
    if form != ARP_ETH_IP4 || sha != *src {
        return false;
    }
    // A probe (sender 0.0.0.0) asks about the address it wants: its own.
    if spa == [0; 4] {
        return v4_bound(port, tpa);
    }
    v4_bound(port, spa)
}

#[inline(always)]
fn ipv6_allowed(data: usize, end: usize, port: u32, src: &[u8; 6]) -> bool {
    let ip = data + ETH_HLEN;
    if ip + IPV6_HLEN > end {
        return false;
    }
    // SAFETY: bounds checked above.
    let (mut next, plen) = unsafe {
        (
            *((ip + IPV6_NEXT) as *const u8),
            *((ip + IPV6_PLEN) as *const [u8; 2]),
        )
    };
    let saddr = (ip + IPV6_SADDR) as *const [u32; 4];
    // SAFETY: as above; a 16-byte field at any alignment.
    let unspecified = unsafe { saddr.read_unaligned() } == [0; 4];
    if !unspecified && !v6_bound(port, saddr) {
        return false;
    }
    // Find the ICMPv6 header behind any extension headers. Offsets are
    // from `ip`, bounded: each header adds at most 2048.
    let mut rel = IPV6_HLEN;
    let mut i = 0;
    while i < EXT_MAX {
        let p = ip + rel;
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                if p + 2 > end {
                    return false;
                }
                // SAFETY: bounds checked above.
                let (n, len) = unsafe { (*(p as *const u8), *((p + 1) as *const u8)) };
                next = n;
                rel += (len as usize + 1) * 8;
            }
            NEXTHDR_FRAGMENT => {
                if p + 8 > end {
                    return false;
                }
                // SAFETY: bounds checked above.
                let (n, frag) = unsafe { (*(p as *const u8), *((p + 2) as *const [u8; 2])) };
                // A later fragment carries no ICMPv6 header: its source
                // was checked, :: has no business fragmenting.
                if u16::from_be_bytes(frag) & 0xfff8 != 0 {
                    return !unspecified;
                }
                next = n;
                rel += 8;
            }
            _ => break,
        }
        i += 1;
    }
    if next != IPPROTO_ICMPV6 {
        // Still an extension header, or another protocol: :: may not
        // send it; a bound source may, but not hide ICMPv6 behind more
        // than EXT_MAX headers.
        return !unspecified && !is_ext(next);
    }
    let icmp = ip + rel;
    if icmp + ND_OPTS > end {
        // Too short for an NS/NA: only another ICMPv6 message.
        if icmp + 1 > end {
            return false;
        }
        // SAFETY: bounds checked above.
        let ty = unsafe { *(icmp as *const u8) };
        return icmpv6_short_allowed(ty, unspecified);
    }
    // SAFETY: bounds checked above.
    let ty = unsafe { *(icmp as *const u8) };
    let target = (icmp + ND_TARGET) as *const [u32; 4];
    let msg_end = IPV6_HLEN + u16::from_be_bytes(plen) as usize;
    match ty {
        ICMPV6_ROUTER_ADVERT | ICMPV6_REDIRECT => false,
        // Address resolution asks about another's address; duplicate
        // address detection (from ::) about the one it wants.
        ICMPV6_NEIGH_SOLICIT => {
            (!unspecified || v6_bound(port, target))
                && nd_options_ok(ip, end, (rel + ND_OPTS, msg_end), src)
        }
        ICMPV6_NEIGH_ADVERT => {
            v6_bound(port, target) && nd_options_ok(ip, end, (rel + ND_OPTS, msg_end), src)
        }
        _ => icmpv6_short_allowed(ty, unspecified),
    }
}

/// The options of an NS/NA, from `opt` to `msg_end` (offsets from `ip`):
/// a source or target link-layer address must be the frame's source MAC,
/// as an ARP sender's must (else a guest could point its neighbours at
/// another's MAC). At most ND_OPT_MAX options (an NS/NA has at most a
/// link-layer address and a nonce); more, or a malformed one: no.
#[inline(always)]
fn nd_options_ok(ip: usize, end: usize, (mut opt, msg_end): (usize, usize), src: &[u8; 6]) -> bool {
    let mut i = 0;
    while i < ND_OPT_MAX {
        if opt >= msg_end {
            return true;
        }
        let p = ip + opt;
        if p + 8 > end {
            return false;
        }
        // SAFETY: bounds checked above.
        let (ty, len, mac) = unsafe {
            (
                *(p as *const u8),
                *((p + 1) as *const u8),
                *((p + 2) as *const [u8; 6]),
            )
        };
        if len == 0 || (ty == ND_OPT_SLLA || ty == ND_OPT_TLLA) && (len != 1 || mac != *src) {
            return false;
        }
        opt += len as usize * 8;
        i += 1;
    }
    opt >= msg_end
}

/// An ICMPv6 message other than NS/NA (or an NS/NA too short for its
/// target): routers' are dropped; MLD and router solicitations (which a
/// host without an address yet sends from ::, RFC 4861 6.3.7) may come
/// from ::; the rest only from a bound source.
#[inline(always)]
fn icmpv6_short_allowed(ty: u8, unspecified: bool) -> bool {
    match ty {
        ICMPV6_ROUTER_ADVERT | ICMPV6_REDIRECT | ICMPV6_NEIGH_SOLICIT | ICMPV6_NEIGH_ADVERT => {
            false
        }
        ICMPV6_MLD_QUERY
        | ICMPV6_MLD_REPORT
        | ICMPV6_MLD_DONE
        | ICMPV6_MLD2_REPORT
        | ICMPV6_ROUTER_SOLICIT => true,
        _ => !unspecified,
    }
}

#[inline(always)]
fn is_ext(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT
    )
}

#[inline(always)]
fn v4_bound(port: u32, addr: [u8; 4]) -> bool {
    let mut key = core::mem::MaybeUninit::<PortIpKey>::uninit();
    // SAFETY: PortIpKey is 24 bytes of integers, 4-aligned.
    let key = unsafe {
        mem::zero_words(key.as_mut_ptr());
        key.assume_init_mut()
    };
    key.ifindex = port;
    key.family = PORT_IP_V4;
    // SAFETY: `addr` is 4-aligned within the key.
    unsafe { (key.addr.as_mut_ptr() as *mut [u8; 4]).write(addr) };
    // SAFETY: read-only lookup; the value is not used.
    unsafe { PORT_IP.get(key).is_some() }
}

/// `addr` points at 16 checked packet bytes.
#[inline(always)]
fn v6_bound(port: u32, addr: *const [u32; 4]) -> bool {
    let mut key = core::mem::MaybeUninit::<PortIpKey>::uninit();
    // SAFETY: as in `v4_bound`; `addr` per the contract above, read as
    // four words (no memcpy).
    let key = unsafe {
        mem::zero_words(key.as_mut_ptr());
        let key = key.assume_init_mut();
        let w = key.addr.as_mut_ptr() as *mut u32;
        let a = addr as *const u32;
        w.write(a.read_unaligned());
        w.add(1).write(a.add(1).read_unaligned());
        w.add(2).write(a.add(2).read_unaligned());
        w.add(3).write(a.add(3).read_unaligned());
        key
    };
    key.ifindex = port;
    key.family = PORT_IP_V6;
    // SAFETY: read-only lookup; the value is not used.
    unsafe { PORT_IP.get(key).is_some() }
}
