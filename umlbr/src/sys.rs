//! What neither aya nor rtnetlink offer: tcx attach and detach owned by
//! the device, GRO through ethtool, and the process's capabilities, clock
//! and kernel checks.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::util::KernelVersion;
use nix::time::{ClockId, clock_gettime};

const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
pub const BPF_TCX_INGRESS: u32 = 46;
pub const BPF_TCX_EGRESS: u32 = 47;

/// The prefix of `union bpf_attr` that BPF_PROG_ATTACH and DETACH read.
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

fn prog_attach(cmd: libc::c_long, ifindex: u32, prog: BorrowedFd<'_>, ty: u32) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_ifindex: ifindex,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: ty,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix of the size we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut AttachAttr as *mut libc::c_void,
            std::mem::size_of::<AttachAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Attach a program to the tcx hook of `ifindex`, owned by the device.
///
/// aya 0.14 attaches tcx programs only through a bpf link, which lives as
/// long as the process holds it (or a bpffs pin): umlbr's attachments must
/// outlive the command without either, which BPF_PROG_ATTACH gives.
pub fn tcx_attach(ifindex: u32, prog: BorrowedFd<'_>, attach_type: u32) -> io::Result<()> {
    prog_attach(BPF_PROG_ATTACH, ifindex, prog, attach_type)
}

/// Detach a program that [`tcx_attach`] attached (aya can only detach
/// its own links).
pub fn tcx_detach(ifindex: u32, prog: BorrowedFd<'_>, attach_type: u32) -> io::Result<()> {
    prog_attach(BPF_PROG_DETACH, ifindex, prog, attach_type)
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
    // This clock cannot fail on Linux.
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
        .map(|ts| ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
        .unwrap_or(0)
}

/// `ETHTOOL_SGRO` in include/uapi/linux/ethtool.h (libc lacks it).
const ETHTOOL_SGRO: u32 = 0x2c;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

nix::ioctl_readwrite_bad!(siocethtool, libc::SIOCETHTOOL, libc::ifreq);

/// Turn GRO on or off for `name` (ETHTOOL_SGRO). A veth whose peer
/// receives XDP redirects needs NAPI, which GRO enables.
pub fn set_gro(name: &str, on: bool) -> io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
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
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: a valid socket, and an ifreq pointing at a live ethtool_value.
    unsafe { siocethtool(sock.as_raw_fd(), &mut ifr) }?;
    Ok(())
}

/// Oldest kernel umlbr runs on: tcx (6.6) and a devmap broadcast that
/// excludes the ingress port (5.15).
pub const MIN_KERNEL: KernelVersion = KernelVersion::new(6, 6, 0);

/// Refuse kernels without the features the datapath uses.
pub fn check_kernel_version(v: KernelVersion) -> crate::Result<()> {
    if v >= MIN_KERNEL {
        return Ok(());
    }
    Err(crate::Error::KernelFeature(format!(
        "kernel {v} is older than {MIN_KERNEL} (tcx hooks and devmap broadcast are needed)"
    )))
}

/// Check the running kernel: version and BTF.
pub fn check_kernel() -> crate::Result<()> {
    let v = KernelVersion::current()
        .map_err(|e| crate::Error::io("reading the kernel version", io::Error::other(e)))?;
    check_kernel_version(v)?;
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
    fn kernel_versions() {
        assert!(check_kernel_version(KernelVersion::new(6, 6, 0)).is_ok());
        assert!(check_kernel_version(KernelVersion::new(6, 18, 44)).is_ok());
        assert!(check_kernel_version(KernelVersion::new(7, 0, 1)).is_ok());
        assert!(check_kernel_version(KernelVersion::new(6, 1, 0)).is_err());
        assert!(check_kernel_version(KernelVersion::new(5, 15, 0)).is_err());
        assert!(KernelVersion::current().is_ok());
    }

    #[test]
    fn coarse_clock_runs() {
        let a = monotonic_coarse_ns();
        assert!(a > 0 && monotonic_coarse_ns() >= a);
    }
}
