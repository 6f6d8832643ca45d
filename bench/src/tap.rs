//! A guest's tap transport, as User Mode Linux's or QEMU's: /dev/net/tun
//! opened with IFF_TAP|IFF_NO_PI (optionally IFF_VNET_HDR), one frame per
//! read() or write(); and the test frames it sends.
use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use umlbr_tests::wire::{Frame, Mac};

/// Size of `struct virtio_net_hdr` (without num_buffers): what a tap with
/// IFF_VNET_HDR and the default TUNSETVNETHDRSZ expects before each frame.
pub const VNET_HDR_LEN: usize = 10;

/// How a tap is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TapMode {
    /// O_NONBLOCK: tun's native XDP path for written frames
    /// (`tun_can_build_skb` needs a non-blocking writer); blocking writes
    /// build an skb and get generic XDP.
    pub nonblocking: bool,
    /// IFF_VNET_HDR: a 10-byte virtio_net_hdr (all zeros: no GSO, no
    /// checksum offload) before every frame, both ways.
    pub vnet_hdr: bool,
}

impl Default for TapMode {
    fn default() -> Self {
        TapMode {
            nonblocking: true,
            vnet_hdr: false,
        }
    }
}

/// An open tap queue. The tap must exist in the calling thread's network
/// namespace (the file is bound to the namespace it was opened in).
pub struct Tap {
    fd: OwnedFd,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    pub fn open(name: &str, mode: TapMode) -> Result<Tap> {
        if name.len() >= libc::IFNAMSIZ {
            bail!("tap name {name} too long");
        }
        let mut oflags = libc::O_RDWR | libc::O_CLOEXEC;
        if mode.nonblocking {
            oflags |= libc::O_NONBLOCK;
        }
        // SAFETY: plain open(2) of a NUL-terminated path.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), oflags) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("opening /dev/net/tun");
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        if mode.vnet_hdr {
            req.flags |= libc::IFF_VNET_HDR as libc::c_short;
        }
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("TUNSETIFF {name}"));
        }
        Ok(Tap { fd })
    }

    /// A packet socket on `iface` (AF_PACKET, SOCK_RAW, ETH_P_IP, non-
    /// blocking) used like a tap: write() sends a whole frame out of the
    /// interface, read() returns one that came in (IPv4 only, and not our
    /// own outgoing ones). For the "LAN" end of a veth.
    pub fn packet(iface: &str) -> Result<Tap> {
        let ifindex = umlbr_tests::netns::ifindex(iface)?;
        let fd = umlbr_tests::netns::packet_socket(ifindex, libc::ETH_P_IP)
            .with_context(|| format!("a packet socket on {iface}"))?;
        Ok(Tap { fd })
    }

    /// Write one frame (with the vnet header in front if the mode has one,
    /// which `frame` must already carry: see [`wire_frame`]).
    #[inline]
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: write(2) from a valid buffer.
        byte_count(unsafe { libc::write(fd, frame.as_ptr() as *const libc::c_void, frame.len()) })
    }

    /// Read one frame; `Ok(None)` if none is queued (non-blocking mode).
    #[inline]
    pub fn read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: read(2) into a valid buffer.
        match byte_count(unsafe {
            libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len())
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            r => r.map(Some),
        }
    }

    /// TUNSETOFFLOAD: the offloads this reader takes (`TUN_F_*`), as a
    /// virtio guest's tap transport announces them. With TUN_F_CSUM and
    /// TUN_F_TSO4 the tap has TSO, so the stack hands it GSO frames whole
    /// (a vnet_hdr reader gets them with their GSO header); without, the
    /// stack segments them before the tap.
    pub fn set_offload(&self, flags: u32) -> Result<()> {
        // SAFETY: TUNSETOFFLOAD takes an unsigned int by value.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
        if rc < 0 {
            return Err(io::Error::last_os_error()).context("TUNSETOFFLOAD");
        }
        Ok(())
    }

    /// Wait until a frame is readable or `timeout` passes.
    pub fn wait_readable(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        rc > 0
    }
}

/// A read(2) or write(2) result: the byte count, or errno.
fn byte_count(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `_IOW('T', 208, unsigned int)` (include/uapi/linux/if_tun.h), and its
/// flags.
const TUNSETOFFLOAD: libc::Ioctl = 0x4004_54d0;
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

/// A generator's MAC: 02:b0:00:00:HI:LO.
pub fn gen_mac(i: usize) -> Mac {
    [0x02, 0xb0, 0, 0, (i >> 8) as u8, i as u8]
}

/// A sink's MAC: 02:b1:00:00:HI:LO.
pub fn sink_mac(i: usize) -> Mac {
    [0x02, 0xb1, 0, 0, (i >> 8) as u8, i as u8]
}

/// Source MACs of the FDB fill: 02:c0:00:HI:MID:LO.
pub fn fill_mac(i: u32) -> Mac {
    [0x02, 0xc0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

pub const BROADCAST: Mac = [0xff; 6];

/// Whether a received frame (without vnet header) is one of ours: an
/// IPv4 UDP datagram (or, from the GSO rows, a TCP segment) to the sink
/// port, as every generator sends (also after a masquerade rewrote its
/// source).
#[inline]
pub fn is_bench_frame(f: &[u8]) -> bool {
    if f.len() >= 38 && f[12] == 0x08 && f[13] == 0x00 {
        return f[14] == 0x45
            && (f[23] == 17 || f[23] == 6)
            && u16::from_be_bytes([f[36], f[37]]) == UDP_SINK_PORT;
    }
    // IPv6 (the IPv6 NAT row): UDP right after the fixed header.
    f.len() >= 58
        && f[12] == 0x86
        && f[13] == 0xdd
        && f[20] == 17
        && u16::from_be_bytes([f[56], f[57]]) == UDP_SINK_PORT
}

/// Destination port of a flood's datagrams (the hostile group's
/// flooder): readers count them apart from the test traffic.
pub const FLOOD_UDP_PORT: u16 = 19;

/// Whether a received frame (without vnet header) is a flood's: an IPv4
/// UDP datagram to [`FLOOD_UDP_PORT`].
#[inline]
pub fn is_flood_frame(f: &[u8]) -> bool {
    f.len() >= 38
        && f[12] == 0x08
        && f[13] == 0x00
        && f[14] == 0x45
        && f[23] == 17
        && u16::from_be_bytes([f[36], f[37]]) == FLOOD_UDP_PORT
}

/// The L4 payload bytes of a bench frame (see [`is_bench_frame`]): the
/// TCP or UDP payload as the IPv4 header's total length gives it, so a
/// GSO super-frame counts all of its segments' data.
#[inline]
pub fn bench_payload(f: &[u8]) -> u64 {
    if f[12] == 0x86 {
        // IPv6 UDP: the payload length less the UDP header.
        return u64::from(u16::from_be_bytes([f[18], f[19]])).saturating_sub(8);
    }
    let tot = (u16::from_be_bytes([f[16], f[17]]) as usize).min(f.len() - 14);
    let l4 = if f[23] == 6 {
        match f.get(14 + 20 + 12) {
            Some(d) => ((d >> 4) as usize) * 4,
            None => return 0,
        }
    } else {
        8
    };
    tot.saturating_sub(20 + l4) as u64
}

/// `struct virtio_net_hdr` flags and GSO types (include/uapi/linux/virtio_net.h).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;

/// A TCP "super-frame" as a virtio guest with TSO hands it to its tap
/// (IFF_VNET_HDR), the vnet header included: a 10-byte virtio_net_hdr
/// (NEEDS_CSUM with csum_start/csum_offset at the TCP checksum, gso_type
/// TCPV4, gso_size `mss`, hdr_len of the Ethernet/IPv4/TCP headers) and
/// one Ethernet/IPv4/TCP frame carrying `segs` × `mss` bytes of payload,
/// whose TCP checksum field holds the pseudo-header sum (not
/// complemented), for the "device" to finish per segment. The headers are
/// little-endian, as tun expects by default on this host. Sent to port 9
/// (so [`is_bench_frame`] knows it), with ACK|PSH.
pub fn gso_tcp_frame(
    dst: Mac,
    src: Mac,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    mss: u16,
    segs: usize,
) -> Vec<u8> {
    use umlbr_tests::wire::{TcpHeader, ipproto, pseudo_header_sum, tcp_flags};
    let payload: Vec<u8> = (0..mss as usize * segs).map(|i| i as u8).collect();
    let h = TcpHeader::new(20_000, UDP_SINK_PORT, tcp_flags::ACK | tcp_flags::PSH);
    let mut f = Frame::new(dst, src)
        .tcp(src_ip, dst_ip, &h, &payload)
        .build();
    const L4: usize = 14 + 20;
    let tcp_len = (f.len() - L4) as u16;
    let mut sum = pseudo_header_sum(src_ip, dst_ip, ipproto::TCP, tcp_len);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[L4 + 16..L4 + 18].copy_from_slice(&(sum as u16).to_be_bytes());
    let mut hdr = [0u8; VNET_HDR_LEN];
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4;
    hdr[2..4].copy_from_slice(&((L4 + 20) as u16).to_le_bytes()); // hdr_len
    hdr[4..6].copy_from_slice(&mss.to_le_bytes()); // gso_size
    hdr[6..8].copy_from_slice(&(L4 as u16).to_le_bytes()); // csum_start
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    let mut v = Vec::with_capacity(VNET_HDR_LEN + f.len());
    v.extend_from_slice(&hdr);
    v.extend_from_slice(&f);
    v
}

/// An Ethernet/IPv4/UDP frame of exactly `len` bytes (Ethernet header
/// included, no FCS) with valid IPv4 and UDP checksums, between addresses
/// of 192.168.2.0/24 derived from the MACs.
pub fn udp_frame(dst: Mac, src: Mac, len: usize, flow: u16) -> Vec<u8> {
    let ip = |host: u8| Ipv4Addr::new(192, 168, 2, host);
    udp_frame_ip(
        dst,
        src,
        ip(10 + (src[5] % 200)),
        ip(10 + (dst[5] % 200)),
        10_000 + flow,
        len,
    )
}

/// The same from `src_ip`:`sport` to `dst_ip`:9 (discard).
pub fn udp_frame_ip(
    dst: Mac,
    src: Mac,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    sport: u16,
    len: usize,
) -> Vec<u8> {
    udp_frame_ports(dst, src, src_ip, dst_ip, sport, UDP_SINK_PORT, len)
}

/// The same from `src_ip`:`sport` to `dst_ip`:`dport`.
pub fn udp_frame_ports(
    dst: Mac,
    src: Mac,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    sport: u16,
    dport: u16,
    len: usize,
) -> Vec<u8> {
    const HDRS: usize = 14 + 20 + 8;
    let data_len = len.max(60).saturating_sub(HDRS);
    let data: Vec<u8> = (0..data_len).map(|i| i as u8).collect();
    Frame::new(dst, src)
        .udp(src_ip, sport, dst_ip, dport, &data)
        .pad_to(len)
        .build()
}

/// A 64 B-style test frame whose UDP payload starts with `seq` (bytes
/// 42..46 of the frame), for round trips.
pub fn udp_frame_seq(dst: Mac, src: Mac, len: usize, seq: u32) -> Vec<u8> {
    const HDRS: usize = 14 + 20 + 8;
    let mut data: Vec<u8> = (0..len.max(60).saturating_sub(HDRS).max(4))
        .map(|i| i as u8)
        .collect();
    data[..4].copy_from_slice(&seq.to_be_bytes());
    let ip = |host: u8| Ipv4Addr::new(192, 168, 2, host);
    Frame::new(dst, src)
        .udp(
            ip(10 + (src[5] % 200)),
            10_000,
            ip(10 + (dst[5] % 200)),
            UDP_SINK_PORT,
            &data,
        )
        .pad_to(len)
        .build()
}

/// Destination port of the test datagrams.
pub const UDP_SINK_PORT: u16 = 9;

/// `frame` as written to a tap of `mode`: with a zero vnet header in front
/// where the mode has one.
pub fn wire_frame(frame: &[u8], mode: TapMode) -> Vec<u8> {
    let mut v = Vec::with_capacity(frame.len() + VNET_HDR_LEN);
    if mode.vnet_hdr {
        v.extend_from_slice(&[0; VNET_HDR_LEN]);
    }
    v.extend_from_slice(frame);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use umlbr_tests::wire::checksum;

    #[test]
    fn frames_have_the_asked_length_and_valid_checksums() {
        for len in [64, 512, 1500] {
            let f = udp_frame(sink_mac(0), gen_mac(1), len, 3);
            assert_eq!(f.len(), len);
            assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum");
            assert!(is_bench_frame(&f));
        }
        let g = gso_tcp_frame(
            sink_mac(1),
            gen_mac(0),
            Ipv4Addr::new(192, 168, 2, 10),
            Ipv4Addr::new(192, 168, 2, 11),
            1448,
            44,
        );
        let f = &g[VNET_HDR_LEN..];
        assert!(is_bench_frame(f));
        assert_eq!(bench_payload(f), 1448 * 44);
        assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum");
        assert_eq!(u16::from_le_bytes([g[6], g[7]]), 34, "csum_start");
        // Finishing the checksum as a device would gives a valid segment.
        let mut t = f[34..].to_vec();
        let c = checksum(&t);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        let ph = umlbr_tests::wire::pseudo_header_sum(
            Ipv4Addr::new(192, 168, 2, 10),
            Ipv4Addr::new(192, 168, 2, 11),
            6,
            t.len() as u16,
        );
        assert_eq!(umlbr_tests::wire::checksum_with(ph, &t), 0);
        let hello = Frame::new(BROADCAST, sink_mac(0)).pad_min().build();
        assert!(!is_bench_frame(&hello));
        assert!(!is_flood_frame(&hello));
        // A flood's frames and the test traffic are told apart.
        let ip = |h| Ipv4Addr::new(192, 168, 2, h);
        let flood = udp_frame_ports(
            BROADCAST,
            gen_mac(2),
            ip(12),
            ip(255),
            1,
            FLOOD_UDP_PORT,
            64,
        );
        assert_eq!(flood.len(), 64);
        assert!(is_flood_frame(&flood) && !is_bench_frame(&flood));
    }

    #[test]
    fn ipv6_udp_to_the_sink_port_is_a_bench_frame() {
        let ip = umlbr_tests::wire::v6::udp(
            "fd00:2::10".parse().unwrap(),
            10_000,
            "2001:db8:99::2".parse().unwrap(),
            UDP_SINK_PORT,
            &[0, 1],
        );
        let f = umlbr_tests::wire::Frame::new([2; 6], [4; 6])
            .ethertype(umlbr_tests::wire::ethertype::IPV6)
            .payload(&ip)
            .build();
        assert!(is_bench_frame(&f));
        assert_eq!(bench_payload(&f), 2);
        let other = umlbr_tests::wire::v6::udp(
            "fd00:2::10".parse().unwrap(),
            10_000,
            "2001:db8:99::2".parse().unwrap(),
            UDP_SINK_PORT + 1,
            &[0, 1],
        );
        let f = umlbr_tests::wire::Frame::new([2; 6], [4; 6])
            .ethertype(umlbr_tests::wire::ethertype::IPV6)
            .payload(&other)
            .build();
        assert!(!is_bench_frame(&f));
        let ours = udp_frame(sink_mac(1), gen_mac(0), 64, 0);
        assert!(!is_flood_frame(&ours));
        assert_eq!(
            wire_frame(
                &[1, 2],
                TapMode {
                    nonblocking: true,
                    vnet_hdr: true
                }
            )
            .len(),
            12
        );
    }
}
