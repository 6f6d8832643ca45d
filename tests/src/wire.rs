//! Frame builders for tests, in the spirit of smoltcp's `wire` module:
//! Ethernet II with an optional 802.1Q (or 802.1ad) tag, ARP, IPv4 with
//! ICMP echo or UDP, all with correct checksums.
//!
//! ```
//! use umlbr_tests::wire::{Frame, mac, BROADCAST};
//! let a = mac("02:00:00:00:00:0a");
//! let arp = Frame::new(BROADCAST, a)
//!     .arp_request([10, 0, 0, 1], [10, 0, 0, 2])
//!     .build();
//! assert_eq!(arp.len(), 14 + 28);
//! assert_eq!(&arp[12..14], &[0x08, 0x06]);
//! ```
use std::net::Ipv4Addr;

/// A MAC address.
pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];
pub const ZERO_MAC: Mac = [0; 6];

/// EtherType values.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
    /// IEEE 802 local experimental EtherType 1.
    pub const EXPERIMENTAL: u16 = 0x88b5;
}

/// IP protocol numbers.
pub mod ipproto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const GRE: u8 = 47;
}

/// TCP header flags.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// ICMP types used in tests.
pub mod icmp_type {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACH: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// Ethernet header length (no tag).
pub const ETH_HLEN: usize = 14;
/// Smallest Ethernet frame without FCS.
pub const ETH_ZLEN: usize = 60;

/// Parse `aa:bb:cc:dd:ee:ff` (or with `-`). Panics on malformed input:
/// test code writes these literally.
pub fn mac(s: &str) -> Mac {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    assert_eq!(parts.len(), 6, "bad MAC {s:?}");
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(parts) {
        assert!(!p.is_empty() && p.len() <= 2, "bad MAC {s:?}");
        *b = u8::from_str_radix(p, 16).unwrap_or_else(|_| panic!("bad MAC {s:?}"));
    }
    m
}

/// Format as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A locally administered unicast MAC `02:00:00:00:hi:lo` for station `n`.
pub const fn station(n: u16) -> Mac {
    [0x02, 0, 0, 0, (n >> 8) as u8, n as u8]
}

/// Group (multicast or broadcast) bit.
pub const fn is_multicast(m: &Mac) -> bool {
    m[0] & 1 != 0
}

/// The IPv4 multicast MAC for group `ip` (01:00:5e + low 23 bits).
pub fn ipv4_multicast_mac(ip: Ipv4Addr) -> Mac {
    let o = ip.octets();
    [0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]
}

/// RFC 1071 Internet checksum of `data` (one's complement of the one's
/// complement sum), starting from a partial sum `initial`.
pub fn checksum_with(initial: u32, data: &[u8]) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// RFC 1071 Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    checksum_with(0, data)
}

/// An IPv4 header (20 bytes, no options) followed by `payload`.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    assert!(total <= u16::MAX as usize, "IPv4 packet too long");
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0x00]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0x00, 0x01]); // identification
    p.extend_from_slice(&[0x40, 0x00]); // DF, offset 0
    p.push(ttl);
    p.push(proto);
    p.extend_from_slice(&[0, 0]); // checksum, below
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// ICMP echo request (`reply == false`) or reply.
pub fn icmp_echo(reply: bool, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + data.len());
    m.push(if reply { 0 } else { 8 });
    m.push(0);
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A UDP datagram with its checksum over the IPv4 pseudo-header.
pub fn udp_datagram(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, data: &[u8]) -> Vec<u8> {
    let len = 8 + data.len();
    assert!(len <= u16::MAX as usize, "UDP datagram too long");
    let mut d = Vec::with_capacity(len);
    d.extend_from_slice(&sport.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&(len as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(data);
    let c = checksum_with(pseudo_header_sum(src, dst, ipproto::UDP, len as u16), &d);
    // RFC 768: a computed zero is sent as all ones.
    let c = if c == 0 { 0xffff } else { c };
    d[6..8].copy_from_slice(&c.to_be_bytes());
    d
}

/// A UDP datagram as a sender with checksum offload hands it to the device
/// (CHECKSUM_PARTIAL): the checksum field holds the folded pseudo-header
/// sum, not complemented, for the device to finish.
pub fn udp_datagram_partial(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    data: &[u8],
) -> Vec<u8> {
    let mut d = udp_datagram(src, sport, dst, dport, data);
    let mut sum = pseudo_header_sum(src, dst, ipproto::UDP, d.len() as u16);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    d[6..8].copy_from_slice(&(sum as u16).to_be_bytes());
    d
}

/// Partial one's complement sum of the IPv4 pseudo-header.
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u32 {
    let mut ph = Vec::with_capacity(12);
    ph.extend_from_slice(&src.octets());
    ph.extend_from_slice(&dst.octets());
    ph.extend_from_slice(&[0, proto]);
    ph.extend_from_slice(&len.to_be_bytes());
    ph.chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum()
}

pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

/// An ARP packet for Ethernet and IPv4 (28 bytes).
pub fn arp_packet(op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    a.extend_from_slice(&ethertype::IPV4.to_be_bytes());
    a.push(6);
    a.push(4);
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}

/// An Ethernet frame under construction. `build()` returns its bytes
/// (no FCS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub dst: Mac,
    pub src: Mac,
    /// Tags between the source MAC and the EtherType, outermost first:
    /// (TPID, TCI).
    pub tags: Vec<(u16, u16)>,
    pub ethertype: u16,
    pub payload: Vec<u8>,
    /// Pad the frame with zeros up to this length.
    pub min_len: usize,
}

impl Frame {
    /// A frame from `src` to `dst` with the local experimental EtherType
    /// and no payload.
    pub fn new(dst: Mac, src: Mac) -> Self {
        Frame {
            dst,
            src,
            tags: Vec::new(),
            ethertype: ethertype::EXPERIMENTAL,
            payload: Vec::new(),
            min_len: 0,
        }
    }

    /// Add an 802.1Q tag (TPID 0x8100) with VLAN id `vid` and priority `pcp`.
    pub fn vlan(self, vid: u16, pcp: u8) -> Self {
        self.tag(ethertype::VLAN, vid, pcp)
    }

    /// Add a tag with any TPID (0x88a8 for an 802.1ad service tag).
    pub fn tag(mut self, tpid: u16, vid: u16, pcp: u8) -> Self {
        assert!(vid < 4096 && pcp < 8);
        self.tags.push((tpid, (pcp as u16) << 13 | vid));
        self
    }

    pub fn ethertype(mut self, et: u16) -> Self {
        self.ethertype = et;
        self
    }

    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }

    /// Pad to the 60-byte Ethernet minimum, as a NIC would.
    pub fn pad_min(self) -> Self {
        self.pad_to(ETH_ZLEN)
    }

    /// Pad with zeros to `len` bytes in all.
    pub fn pad_to(mut self, len: usize) -> Self {
        self.min_len = len;
        self
    }

    /// A payload of `n` bytes, a recognisable counting pattern.
    pub fn pattern(mut self, n: usize) -> Self {
        self.payload = (0..n).map(|i| i as u8).collect();
        self
    }

    /// An ARP request from this frame's source for `tpa`.
    pub fn arp_request(self, spa: impl Into<Ipv4Addr>, tpa: impl Into<Ipv4Addr>) -> Self {
        let p = arp_packet(ARP_REQUEST, self.src, spa.into(), ZERO_MAC, tpa.into());
        self.ethertype(ethertype::ARP).payload(&p)
    }

    /// An ARP reply from this frame's source (`spa`) to its destination (`tpa`).
    pub fn arp_reply(self, spa: impl Into<Ipv4Addr>, tpa: impl Into<Ipv4Addr>) -> Self {
        let p = arp_packet(ARP_REPLY, self.src, spa.into(), self.dst, tpa.into());
        self.ethertype(ethertype::ARP).payload(&p)
    }

    /// An IPv4 ICMP echo request (`reply == false`) or reply.
    pub fn icmp_echo(
        self,
        src: impl Into<Ipv4Addr>,
        dst: impl Into<Ipv4Addr>,
        reply: bool,
        id: u16,
        seq: u16,
        data: &[u8],
    ) -> Self {
        let icmp = icmp_echo(reply, id, seq, data);
        let ip = ipv4_packet(src.into(), dst.into(), ipproto::ICMP, 64, &icmp);
        self.ethertype(ethertype::IPV4).payload(&ip)
    }

    /// An IPv4 UDP datagram.
    pub fn udp(
        self,
        src: impl Into<Ipv4Addr>,
        sport: u16,
        dst: impl Into<Ipv4Addr>,
        dport: u16,
        data: &[u8],
    ) -> Self {
        let (src, dst) = (src.into(), dst.into());
        let udp = udp_datagram(src, sport, dst, dport, data);
        let ip = ipv4_packet(src, dst, ipproto::UDP, 64, &udp);
        self.ethertype(ethertype::IPV4).payload(&ip)
    }

    /// An IPv4 UDP datagram with a CHECKSUM_PARTIAL checksum field.
    pub fn udp_partial(
        self,
        src: impl Into<Ipv4Addr>,
        sport: u16,
        dst: impl Into<Ipv4Addr>,
        dport: u16,
        data: &[u8],
    ) -> Self {
        let (src, dst) = (src.into(), dst.into());
        let udp = udp_datagram_partial(src, sport, dst, dport, data);
        let ip = ipv4_packet(src, dst, ipproto::UDP, 64, &udp);
        self.ethertype(ethertype::IPV4).payload(&ip)
    }

    /// Length `build()` returns.
    pub fn len(&self) -> usize {
        (ETH_HLEN + 4 * self.tags.len() + self.payload.len()).max(self.min_len)
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(self.len());
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.src);
        for (tpid, tci) in &self.tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&self.ethertype.to_be_bytes());
        f.extend_from_slice(&self.payload);
        if f.len() < self.min_len {
            f.resize(self.min_len, 0);
        }
        f
    }
}

/// A parsed view of an Ethernet frame, for checking what came out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EthernetView<'a> {
    pub dst: Mac,
    pub src: Mac,
    pub tags: Vec<(u16, u16)>,
    pub ethertype: u16,
    pub payload: &'a [u8],
}

/// Parse an Ethernet header and any 802.1Q/802.1ad tags.
pub fn parse_ethernet(f: &[u8]) -> Option<EthernetView<'_>> {
    if f.len() < ETH_HLEN {
        return None;
    }
    let mut dst = [0; 6];
    let mut src = [0; 6];
    dst.copy_from_slice(&f[0..6]);
    src.copy_from_slice(&f[6..12]);
    let mut off = 12;
    let mut tags = Vec::new();
    loop {
        let et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
        if et == ethertype::VLAN || et == ethertype::QINQ {
            let tci = u16::from_be_bytes([*f.get(off + 2)?, *f.get(off + 3)?]);
            tags.push((et, tci));
            off += 4;
            continue;
        }
        return Some(EthernetView {
            dst,
            src,
            tags,
            ethertype: et,
            payload: &f[off + 2..],
        });
    }
}

/// The fields of a TCP header a test chooses; the data offset and the
/// checksum are computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpHeader {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    /// `tcp_flags::*`.
    pub flags: u8,
    pub window: u16,
    /// Options, a multiple of 4 bytes.
    pub options: Vec<u8>,
}

impl TcpHeader {
    /// A header from `sport` to `dport` with `flags`, sequence number 1000,
    /// acknowledgment 0 (or 2000 when ACK is set), window 64240.
    pub fn new(sport: u16, dport: u16, flags: u8) -> Self {
        TcpHeader {
            sport,
            dport,
            seq: 1000,
            ack: if flags & tcp_flags::ACK != 0 { 2000 } else { 0 },
            flags,
            window: 64240,
            options: Vec::new(),
        }
    }

    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }

    pub fn ack(mut self, ack: u32) -> Self {
        self.ack = ack;
        self
    }

    pub fn options(mut self, options: &[u8]) -> Self {
        assert!(options.len().is_multiple_of(4) && options.len() <= 40);
        self.options = options.to_vec();
        self
    }
}

/// A TCP segment with its checksum over the IPv4 pseudo-header.
pub fn tcp_segment(src: Ipv4Addr, dst: Ipv4Addr, h: &TcpHeader, data: &[u8]) -> Vec<u8> {
    let hlen = 20 + h.options.len();
    let len = hlen + data.len();
    assert!(len <= u16::MAX as usize, "TCP segment too long");
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(&h.sport.to_be_bytes());
    t.extend_from_slice(&h.dport.to_be_bytes());
    t.extend_from_slice(&h.seq.to_be_bytes());
    t.extend_from_slice(&h.ack.to_be_bytes());
    t.push(((hlen / 4) as u8) << 4);
    t.push(h.flags);
    t.extend_from_slice(&h.window.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    t.extend_from_slice(&h.options);
    t.extend_from_slice(data);
    let c = checksum_with(pseudo_header_sum(src, dst, ipproto::TCP, len as u16), &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// An ICMP error message: type, code, the four bytes after the checksum
/// (unused, pointer, or next-hop MTU), and the quoted offending packet.
pub fn icmp_error(ty: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + quoted.len());
    m.extend_from_slice(&[ty, code, 0, 0]);
    m.extend_from_slice(&rest);
    m.extend_from_slice(quoted);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

impl Frame {
    /// An IPv4 packet (20-byte header, DF) carrying `payload` as protocol
    /// `proto`; the payload is taken as is.
    pub fn ipv4(
        self,
        src: impl Into<Ipv4Addr>,
        dst: impl Into<Ipv4Addr>,
        proto: u8,
        ttl: u8,
        payload: &[u8],
    ) -> Self {
        let ip = ipv4_packet(src.into(), dst.into(), proto, ttl, payload);
        self.ethertype(ethertype::IPV4).payload(&ip)
    }

    /// An IPv4 TCP segment.
    pub fn tcp(
        self,
        src: impl Into<Ipv4Addr>,
        dst: impl Into<Ipv4Addr>,
        h: &TcpHeader,
        data: &[u8],
    ) -> Self {
        let (src, dst) = (src.into(), dst.into());
        let t = tcp_segment(src, dst, h, data);
        self.ipv4(src, dst, ipproto::TCP, 64, &t)
    }

    /// An IPv4 TCP segment with a CHECKSUM_PARTIAL checksum field (the
    /// folded pseudo-header sum, as a sender with offload hands it over).
    pub fn tcp_partial(
        self,
        src: impl Into<Ipv4Addr>,
        dst: impl Into<Ipv4Addr>,
        h: &TcpHeader,
        data: &[u8],
    ) -> Self {
        let (src, dst) = (src.into(), dst.into());
        let mut t = tcp_segment(src, dst, h, data);
        let mut sum = pseudo_header_sum(src, dst, ipproto::TCP, t.len() as u16);
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        t[16..18].copy_from_slice(&(sum as u16).to_be_bytes());
        self.ipv4(src, dst, ipproto::TCP, 64, &t)
    }

    /// An IPv4 UDP datagram sent without a checksum (field 0).
    pub fn udp_no_checksum(
        self,
        src: impl Into<Ipv4Addr>,
        sport: u16,
        dst: impl Into<Ipv4Addr>,
        dport: u16,
        data: &[u8],
    ) -> Self {
        let (src, dst) = (src.into(), dst.into());
        let mut udp = udp_datagram(src, sport, dst, dport, data);
        udp[6..8].copy_from_slice(&[0, 0]);
        self.ipv4(src, dst, ipproto::UDP, 64, &udp)
    }

    /// An IPv4 ICMP error quoting `quoted` (an IPv4 header and what
    /// follows it).
    pub fn icmp_error(
        self,
        src: impl Into<Ipv4Addr>,
        dst: impl Into<Ipv4Addr>,
        ty: u8,
        code: u8,
        rest: [u8; 4],
        quoted: &[u8],
    ) -> Self {
        let m = icmp_error(ty, code, rest, quoted);
        self.ipv4(src, dst, ipproto::ICMP, 64, &m)
    }
}

/// Offset of the IPv4 header in an Ethernet frame (after any tags), if the
/// frame carries IPv4.
pub fn ipv4_offset(f: &[u8]) -> Option<usize> {
    let e = parse_ethernet(f)?;
    (e.ethertype == ethertype::IPV4).then(|| f.len() - e.payload.len())
}

/// Whether an ICMP type carries a quoted IPv4 header (RFC 792 errors).
pub fn icmp_is_error(ty: u8) -> bool {
    matches!(ty, 3 | 4 | 5 | 11 | 12)
}

/// Recompute, from scratch, the header checksum of the IPv4 header at the
/// start of `ip` (its IHL honoured). Does nothing to a short header.
pub fn fix_ipv4_header_checksum(ip: &mut [u8]) {
    let Some(&vihl) = ip.first() else { return };
    let ihl = (vihl & 0x0f) as usize * 4;
    if ihl < 20 || ip.len() < ihl {
        return;
    }
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = checksum(&ip[..ihl]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

/// An IPv4 packet's header length, total length (bounded by what is
/// there), addresses, protocol, and whether it is a fragment.
struct Ipv4Parts {
    ihl: usize,
    total: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    fragment: bool,
}

fn ipv4_parts(ip: &[u8]) -> Option<Ipv4Parts> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if ihl < 20 || ip.len() < ihl {
        return None;
    }
    let total = (u16::from_be_bytes([ip[2], ip[3]]) as usize).clamp(ihl, ip.len());
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    Some(Ipv4Parts {
        ihl,
        total,
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        proto: ip[9],
        fragment: frag & 0x3fff != 0,
    })
}

/// Recompute every checksum of an Ethernet + IPv4 frame from scratch
/// (RFC 1071): the IP header; the TCP or UDP checksum over the
/// pseudo-header (a UDP checksum of 0, "none", stays 0; a computed 0 is
/// sent as 0xffff); the ICMP checksum, after the quoted IPv4 header's own
/// checksum for ICMP errors. The quoted transport header is left alone
/// (an ICMP error usually quotes only 8 bytes of it). Fragments get only
/// their IP header checksum. Frames that are not IPv4 are left as they are.
pub fn fix_checksums(frame: &mut [u8]) {
    let Some(off) = ipv4_offset(frame) else {
        return;
    };
    let ip = &mut frame[off..];
    let Some(p) = ipv4_parts(ip) else { return };
    if !p.fragment {
        let l4 = &mut ip[p.ihl..p.total];
        let len = l4.len() as u16;
        match p.proto {
            ipproto::TCP if l4.len() >= 20 => {
                l4[16..18].copy_from_slice(&[0, 0]);
                let c = checksum_with(pseudo_header_sum(p.src, p.dst, ipproto::TCP, len), l4);
                l4[16..18].copy_from_slice(&c.to_be_bytes());
            }
            ipproto::UDP if l4.len() >= 8 && l4[6..8] != [0, 0] => {
                l4[6..8].copy_from_slice(&[0, 0]);
                let c = checksum_with(pseudo_header_sum(p.src, p.dst, ipproto::UDP, len), l4);
                let c = if c == 0 { 0xffff } else { c };
                l4[6..8].copy_from_slice(&c.to_be_bytes());
            }
            ipproto::ICMP if l4.len() >= 4 => {
                if icmp_is_error(l4[0]) && l4.len() >= 8 + 20 {
                    fix_ipv4_header_checksum(&mut l4[8..]);
                }
                l4[2..4].copy_from_slice(&[0, 0]);
                let c = checksum(l4);
                l4[2..4].copy_from_slice(&c.to_be_bytes());
            }
            _ => {}
        }
    }
    fix_ipv4_header_checksum(ip);
}

/// Verify, from scratch, every checksum of an Ethernet + IPv4 frame that
/// `fix_checksums` would set: the IP header, the TCP/UDP checksum with its
/// pseudo-header (UDP 0 means none), the ICMP checksum, and the quoted
/// IPv4 header of an ICMP error. `Err` names each one that is wrong.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let off = ipv4_offset(frame).ok_or("not an IPv4 frame")?;
    let ip = &frame[off..];
    let p = ipv4_parts(ip).ok_or("truncated IPv4 header")?;
    let mut bad = Vec::new();
    if checksum(&ip[..p.ihl]) != 0 {
        bad.push(format!(
            "IPv4 header checksum {:#06x}",
            u16::from_be_bytes([ip[10], ip[11]])
        ));
    }
    let l4 = &ip[p.ihl..p.total];
    let len = l4.len() as u16;
    if !p.fragment {
        match p.proto {
            ipproto::TCP
                if l4.len() >= 20
                    && checksum_with(pseudo_header_sum(p.src, p.dst, ipproto::TCP, len), l4)
                        != 0 =>
            {
                bad.push(format!(
                    "TCP checksum {:#06x}",
                    u16::from_be_bytes([l4[16], l4[17]])
                ));
            }
            ipproto::UDP
                if l4.len() >= 8
                    && l4[6..8] != [0, 0]
                    && checksum_with(pseudo_header_sum(p.src, p.dst, ipproto::UDP, len), l4)
                        != 0 =>
            {
                bad.push(format!(
                    "UDP checksum {:#06x}",
                    u16::from_be_bytes([l4[6], l4[7]])
                ));
            }
            ipproto::ICMP if l4.len() >= 4 => {
                if checksum(l4) != 0 {
                    bad.push(format!(
                        "ICMP checksum {:#06x}",
                        u16::from_be_bytes([l4[2], l4[3]])
                    ));
                }
                if icmp_is_error(l4[0]) && l4.len() >= 8 + 20 {
                    let inner = &l4[8..];
                    let ihl = (inner[0] & 0x0f) as usize * 4;
                    if ihl >= 20 && inner.len() >= ihl && checksum(&inner[..ihl]) != 0 {
                        bad.push(format!(
                            "quoted IPv4 header checksum {:#06x}",
                            u16::from_be_bytes([inner[10], inner[11]])
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // Odd length: the last byte is the high half of a word.
        assert_eq!(checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn ipv4_header_checksum_matches_a_known_header() {
        // The classic example header: 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7.
        let mut h = vec![
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn icmp_and_udp_verify() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let f = Frame::new(station(2), station(1))
            .icmp_echo(a, b, false, 0x1234, 7, b"hello")
            .build();
        let e = parse_ethernet(&f).unwrap();
        assert_eq!(e.ethertype, ethertype::IPV4);
        let ip = e.payload;
        assert_eq!(checksum(&ip[..20]), 0);
        assert_eq!(ip[9], ipproto::ICMP);
        assert_eq!(checksum(&ip[20..]), 0);
        assert_eq!(ip[20], 8);

        let f = Frame::new(station(2), station(1))
            .udp(a, 5000, b, 53, b"odd")
            .build();
        let ip = parse_ethernet(&f).unwrap().payload.to_vec();
        assert_eq!(checksum(&ip[..20]), 0);
        let udp = &ip[20..];
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, udp.len());
        assert_eq!(
            checksum_with(pseudo_header_sum(a, b, ipproto::UDP, udp.len() as u16), udp),
            0
        );
    }

    #[test]
    fn partial_udp_checksum_is_the_folded_pseudo_header_sum() {
        let (a, b) = (
            Ipv4Addr::new(192, 168, 2, 10),
            Ipv4Addr::new(192, 168, 2, 1),
        );
        let f = Frame::new(station(2), station(1))
            .udp_partial(a, 1234, b, 80, b"abc")
            .build();
        let ip = parse_ethernet(&f).unwrap().payload.to_vec();
        let udp = &ip[20..];
        // 192.168.2.10 + 192.168.2.1 + 17 + 11, folded.
        let s: u32 = 0xc0a8 + 0x020a + 0xc0a8 + 0x0201 + 17 + 11;
        let s = (s & 0xffff) + (s >> 16);
        assert_eq!(u16::from_be_bytes([udp[6], udp[7]]), s as u16);
        // Finishing it (complementing the sum over the datagram) verifies.
        let mut fin = udp.to_vec();
        fin[6..8].copy_from_slice(&[0, 0]);
        let c = checksum_with(pseudo_header_sum(a, b, ipproto::UDP, 11), &fin);
        let full = udp_datagram(a, 1234, b, 80, b"abc");
        assert_eq!(u16::from_be_bytes([full[6], full[7]]), c);
    }

    #[test]
    fn arp_and_tags() {
        let a = station(1);
        let f = Frame::new(BROADCAST, a)
            .vlan(100, 3)
            .arp_request([10, 0, 0, 1], [10, 0, 0, 2])
            .pad_min()
            .build();
        assert_eq!(f.len(), ETH_ZLEN);
        assert_eq!(&f[12..16], &[0x81, 0x00, 0x60, 0x64]);
        let e = parse_ethernet(&f).unwrap();
        assert_eq!(e.tags, vec![(ethertype::VLAN, 0x6064)]);
        assert_eq!(e.ethertype, ethertype::ARP);
        assert_eq!(&e.payload[6..8], &[0, 1]);
        assert_eq!(&e.payload[8..14], &a);
        assert_eq!(&e.payload[14..18], &[10, 0, 0, 1]);
        assert_eq!(&e.payload[24..28], &[10, 0, 0, 2]);

        let r = Frame::new(a, station(2))
            .arp_reply([10, 0, 0, 2], [10, 0, 0, 1])
            .build();
        let e = parse_ethernet(&r).unwrap();
        assert_eq!(&e.payload[6..8], &[0, 2]);
        assert_eq!(&e.payload[18..24], &a);
    }

    #[test]
    fn macs() {
        assert_eq!(mac("02:00:0a:0B:ff:01"), [2, 0, 10, 11, 255, 1]);
        assert_eq!(fmt_mac(&mac("02-00-0a-0b-ff-01")), "02:00:0a:0b:ff:01");
        assert_eq!(station(0x0102), [2, 0, 0, 0, 1, 2]);
        assert!(is_multicast(&BROADCAST));
        assert!(!is_multicast(&station(1)));
        assert_eq!(
            ipv4_multicast_mac(Ipv4Addr::new(224, 128, 0, 251)),
            [1, 0, 0x5e, 0, 0, 251]
        );
    }

    #[test]
    fn tcp_and_icmp_errors_verify_and_fix() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let h = TcpHeader::new(40000, 80, tcp_flags::SYN).options(&[2, 4, 5, 0xb4]);
        let f = Frame::new(station(2), station(1))
            .tcp(a, b, &h, b"odd")
            .build();
        verify_checksums(&f).unwrap();
        let ip = parse_ethernet(&f).unwrap().payload;
        assert_eq!(ip[9], ipproto::TCP);
        assert_eq!(ip[20 + 12], 6 << 4);
        assert_eq!(ip[20 + 13], tcp_flags::SYN);

        let quoted = &ip[..28];
        let e = Frame::new(station(1), station(2))
            .icmp_error(b, a, icmp_type::DEST_UNREACH, 4, [0, 0, 5, 0xdc], quoted)
            .build();
        verify_checksums(&e).unwrap();
        // Break each checksum in turn: verify names it, fix repairs it.
        for (at, what) in [
            (14 + 10, "IPv4 header"),
            (14 + 22, "ICMP"),
            (14 + 28 + 10, "quoted"),
        ] {
            let mut x = e.clone();
            x[at] ^= 0x55;
            let err = verify_checksums(&x).unwrap_err();
            assert!(err.contains(what), "{what}: {err}");
            fix_checksums(&mut x);
            verify_checksums(&x).unwrap();
            assert_eq!(x, e);
        }
        // UDP without a checksum verifies and stays without one.
        let mut u = Frame::new(station(2), station(1))
            .udp_no_checksum(a, 1, b, 2, b"x")
            .build();
        verify_checksums(&u).unwrap();
        fix_checksums(&mut u);
        assert_eq!(&u[14 + 26..14 + 28], &[0, 0]);
    }
}

/// ICMPv6 types of neighbour discovery.
pub mod icmp6_type {
    pub const ROUTER_ADVERT: u8 = 134;
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    pub const NEIGHBOR_ADVERT: u8 = 136;
    pub const REDIRECT: u8 = 137;
    pub const ECHO_REQUEST: u8 = 128;
}

/// An IPv6 header (hop limit 255, as neighbour discovery requires)
/// followed by the ICMPv6 message `icmp`, its checksum filled in.
pub fn icmpv6_packet(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, icmp: &[u8]) -> Vec<u8> {
    let mut icmp = icmp.to_vec();
    icmp[2..4].copy_from_slice(&[0, 0]);
    let mut pseudo = Vec::with_capacity(40 + icmp.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    let sum = checksum(&pseudo);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[58, 255]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(&icmp);
    ip
}

/// A neighbour solicitation or advertisement (`ty`, with `flags` in the
/// first byte after the checksum: 0x20 override, 0x40 solicited) for
/// `target`, with a source (NS) or target (NA) link-layer address option
/// carrying `lladdr` if given.
pub fn ndp_message(ty: u8, flags: u8, target: std::net::Ipv6Addr, lladdr: Option<Mac>) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0, flags, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    if let Some(l) = lladdr {
        let opt = if ty == icmp6_type::NEIGHBOR_SOLICIT {
            1
        } else {
            2
        };
        m.extend_from_slice(&[opt, 1]);
        m.extend_from_slice(&l);
    }
    m
}

/// The Ethernet multicast MAC of IPv6 group `group` (33:33 + last 4 bytes).
pub fn ipv6_multicast_mac(group: std::net::Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// IPv6 (issue 18's masquerade): packets and their transport checksums.
pub mod v6 {
    use std::net::Ipv6Addr;

    use super::checksum_with;

    pub const IPPROTO_ICMPV6: u8 = 58;
    /// ICMPv6 types the masquerade translates.
    pub const DST_UNREACH: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;

    /// The pseudo-header sum (RFC 8200 8.1) of `len` bytes of `next`.
    pub fn pseudo_sum(src: Ipv6Addr, dst: Ipv6Addr, next: u8, len: u32) -> u32 {
        let mut s = 0u32;
        for a in [src, dst] {
            for w in a.segments() {
                s += w as u32;
            }
        }
        s + (len >> 16) + (len & 0xffff) + next as u32
    }

    /// The transport checksum of `l4` (its checksum field zeroed by the
    /// caller) under the pseudo header.
    pub fn l4_checksum(src: Ipv6Addr, dst: Ipv6Addr, next: u8, l4: &[u8]) -> u16 {
        checksum_with(pseudo_sum(src, dst, next, l4.len() as u32), l4)
    }

    /// The checksum field's offset in a transport header of `next`.
    pub fn check_off(next: u8) -> usize {
        match next {
            6 => 16,
            17 => 6,
            _ => 2,
        }
    }

    /// An IPv6 header (no extension headers) followed by `l4`, whose
    /// checksum (TCP, UDP, ICMPv6) is filled in.
    pub fn packet(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop: u8, l4: &[u8]) -> Vec<u8> {
        let mut l4 = l4.to_vec();
        let c = check_off(next);
        l4[c..c + 2].copy_from_slice(&[0, 0]);
        let mut sum = l4_checksum(src, dst, next, &l4);
        if next == 17 && sum == 0 {
            sum = 0xffff;
        }
        l4[c..c + 2].copy_from_slice(&sum.to_be_bytes());
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        ip.extend_from_slice(&[next, hop]);
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        ip.extend_from_slice(&l4);
        ip
    }

    pub fn udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, data: &[u8]) -> Vec<u8> {
        let mut u = Vec::with_capacity(8 + data.len());
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(data);
        packet(src, dst, 17, 64, &u)
    }

    /// A TCP segment with `flags`, sequence and acknowledgment numbers.
    #[allow(clippy::too_many_arguments)]
    pub fn tcp(
        src: Ipv6Addr,
        sport: u16,
        dst: Ipv6Addr,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        data: &[u8],
    ) -> Vec<u8> {
        let mut t = Vec::with_capacity(20 + data.len());
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&seq.to_be_bytes());
        t.extend_from_slice(&ack.to_be_bytes());
        t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        t.extend_from_slice(data);
        packet(src, dst, 6, 64, &t)
    }

    pub fn echo(src: Ipv6Addr, dst: Ipv6Addr, reply: bool, id: u16, seq: u16) -> Vec<u8> {
        let ty = if reply { ECHO_REPLY } else { ECHO_REQUEST };
        let mut m = vec![ty, 0, 0, 0];
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(b"echo6");
        packet(src, dst, IPPROTO_ICMPV6, 64, &m)
    }

    /// An ICMPv6 error of type `ty` (`rest`: the 4 bytes after the
    /// checksum, e.g. a packet-too-big MTU) quoting `quoted`.
    pub fn icmp_error(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, rest: u32, quoted: &[u8]) -> Vec<u8> {
        let mut m = vec![ty, 0, 0, 0];
        m.extend_from_slice(&rest.to_be_bytes());
        m.extend_from_slice(quoted);
        packet(src, dst, IPPROTO_ICMPV6, 64, &m)
    }

    /// Source and destination of the IPv6 packet `ip`.
    pub fn addrs(ip: &[u8]) -> (Ipv6Addr, Ipv6Addr) {
        let a: [u8; 16] = ip[8..24].try_into().unwrap();
        let b: [u8; 16] = ip[24..40].try_into().unwrap();
        (a.into(), b.into())
    }

    /// Whether the transport checksum of the IPv6 packet `ip` (no
    /// extension headers) holds.
    pub fn checksum_ok(ip: &[u8]) -> bool {
        if ip.len() < 40 {
            return false;
        }
        let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
        if ip.len() < 40 + len {
            return false;
        }
        let (s, d) = addrs(ip);
        checksum_with(pseudo_sum(s, d, ip[6], len as u32), &ip[40..40 + len]) == 0
    }
}
