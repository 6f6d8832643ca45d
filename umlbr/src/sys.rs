//! The few bpf(2) commands aya does not offer for objects it did not load:
//! tcx attach/detach/query without a link, so that attachments outlive the
//! process that made them and need no bpffs pin.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_QUERY: libc::c_long = 16;
pub const BPF_TCX_INGRESS: u32 = 46;
pub const BPF_TCX_EGRESS: u32 = 47;

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_ifindex: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    relative_fd: u32,
    expected_revision: u64,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    count: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: attr is a valid bpf_attr prefix of the size we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Attach a program to the tcx hook of `ifindex`, owned by the device.
pub fn tcx_attach(ifindex: u32, prog: BorrowedFd<'_>, attach_type: u32) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_ifindex: ifindex,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr)
}

pub fn tcx_detach(ifindex: u32, prog: BorrowedFd<'_>, attach_type: u32) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_ifindex: ifindex,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    bpf(BPF_PROG_DETACH, &mut attr)
}

/// Ids of the programs on the tcx hook of `ifindex`.
pub fn tcx_query(ifindex: u32, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_ifindex: ifindex,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        count: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok(ids[..attr.count.min(64) as usize].to_vec())
}

/// Effective capabilities of this process (from /proc/self/status).
pub fn effective_caps() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| io::Error::other("no CapEff in /proc/self/status"))
}

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_BPF: u32 = 39;

/// CLOCK_MONOTONIC_COARSE now, the clock of `bpf_ktime_get_coarse_ns`.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Turn GRO on for `name` (ETHTOOL_SGRO). A veth whose peer receives XDP
/// redirects needs NAPI, which GRO enables.
pub fn set_gro(name: &str, on: bool) -> io::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const ETHTOOL_SGRO: u32 = 0x2c;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: on as u32,
    };
    // SAFETY: zeroed ifreq is valid; the name fits (checked by callers).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = &mut value as *mut EthtoolValue as *mut libc::c_char;
    // SAFETY: a datagram socket for the ioctl, closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: valid socket and ifreq.
    let ret = unsafe { libc::ioctl(sock, SIOCETHTOOL, &mut ifr) };
    let err = io::Error::last_os_error();
    // SAFETY: we own sock.
    unsafe { libc::close(sock) };
    if ret < 0 { Err(err) } else { Ok(()) }
}

/// Oldest kernel umlbr runs on: tcx (6.6) and a devmap broadcast that
/// excludes the ingress port (5.15).
pub const MIN_KERNEL: (u32, u32) = (6, 6);

/// Parse "6.18.44-foo" into (6, 18).
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Refuse kernels without the features the datapath uses.
pub fn check_kernel_release(release: &str) -> crate::Result<()> {
    match parse_kernel_release(release) {
        Some(v) if v >= MIN_KERNEL => Ok(()),
        _ => Err(crate::Error::KernelFeature(format!(
            "kernel {release} is older than {}.{} (tcx hooks and devmap broadcast are needed)",
            MIN_KERNEL.0, MIN_KERNEL.1
        ))),
    }
}

/// Check the running kernel: release, BTF and the bpf(2) syscall.
pub fn check_kernel() -> crate::Result<()> {
    let uts = nix::sys::utsname::uname().map_err(|e| crate::Error::io("uname", e.into()))?;
    check_kernel_release(&uts.release().to_string_lossy())?;
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(crate::Error::KernelFeature(
            "no BTF (/sys/kernel/btf/vmlinux); build the kernel with CONFIG_DEBUG_INFO_BTF".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v657"), Some((6, 18)));
        assert!(check_kernel_release("6.6.0").is_ok());
        assert!(check_kernel_release("7.0.1").is_ok());
        assert!(check_kernel_release("6.1.0-28-amd64").is_err());
        assert!(check_kernel_release("5.15.0").is_err());
        assert!(check_kernel_release("garbage").is_err());
    }
}
