//! What neither aya nor rtnetlink offer: tcx attach and detach owned by
//! the device, GRO through ethtool, and the process's capabilities, clock
//! and the kernel's features, probed.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

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

/// BPF_F_REPLACE: BPF_PROG_ATTACH replaces `replace_bpf_fd`.
const BPF_F_REPLACE: u32 = 1 << 2;

/// Replace program `old` on the tcx hook of `ifindex` with `new`, in one
/// step (`umlbr upgrade`): the kernel swaps them in the hook's program
/// list, and refuses (ENOENT) if `old` is no longer there, so a program
/// another command put there meanwhile is never replaced unseen.
pub fn tcx_replace(
    ifindex: u32,
    new: BorrowedFd<'_>,
    old: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_ifindex: ifindex,
        attach_bpf_fd: new.as_raw_fd() as u32,
        attach_type,
        attach_flags: BPF_F_REPLACE,
        replace_bpf_fd: old.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// The prefix of `union bpf_attr` that the map element commands read.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// The value, or GET_NEXT_KEY's next key.
    value: u64,
    flags: u64,
}

/// BPF_NOEXIST: an update that adds a key, never overwrites one.
const BPF_NOEXIST: u64 = 1;

/// The key after `key` of map `map` (the first key without one), written
/// into `next`; false past the last.
fn next_key(map: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.map_or(0, |k| k.as_ptr() as u64),
        value: next.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The value of `key` of map `map` written into `value`; false if there
/// is no such key (also one deleted since GET_NEXT_KEY found it).
fn lookup_into(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Set `key` of map `map` to `value` with update `flags` (`BPF_NOEXIST`).
fn update(map: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Every entry of map `from` (keys of `key_size` bytes, values of
/// `value_size` bytes, all CPUs' for a per-CPU map), in turn, given to
/// `each` with its key and value; entries deleted meanwhile skipped.
fn for_each_entry(
    from: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    mut each: impl FnMut(&[u8], &mut [u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut value = vec![0u8; value_size];
    let mut first = true;
    while next_key(from, (!first).then_some(&key[..]), &mut next)? {
        first = false;
        key.copy_from_slice(&next);
        value.fill(0);
        if lookup_into(from, &key, &mut value)? {
            each(&key, &mut value)?;
        }
    }
    Ok(())
}

/// Copy every entry of map `from` (keys of `key_size` bytes, values of
/// `old_value` bytes) into map `to`, whose values are `new_value` bytes:
/// each value zero-extended (a layout that gained trailing fields), then
/// given to `edit` with its key (a layout version's rewrite; the key's
/// size stays). With `only_missing`, keys `to` has already keep their
/// entries there (a second pass, for what the old programs added since
/// the first). Returns how many entries were written. For maps of one
/// value per key (hash, array, LPM trie), not per-CPU ones.
pub fn copy_entries(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    key_size: usize,
    (old_value, new_value): (usize, usize),
    edit: &dyn Fn(&mut [u8], &mut [u8]),
    only_missing: bool,
) -> io::Result<usize> {
    if new_value < old_value {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut out_key = vec![0u8; key_size];
    let mut n = 0;
    // LOOKUP writes old_value bytes of the new_value buffer; the rest
    // stays zero.
    for_each_entry(from, key_size, new_value, |key, value| {
        out_key.copy_from_slice(key);
        edit(&mut out_key, value);
        let flags = if only_missing { BPF_NOEXIST } else { 0 };
        match update(to, &out_key, value, flags) {
            Ok(()) => n += 1,
            Err(e) if only_missing && e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    })?;
    Ok(n)
}

/// The value of `key` in map `map` (values of `value_size` bytes), as
/// bytes; None if there is no such key.
pub fn lookup_raw(
    map: BorrowedFd<'_>,
    key: &[u8],
    value_size: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut value = vec![0u8; value_size];
    Ok(lookup_into(map, key, &mut value)?.then_some(value))
}

/// Set `key` of map `map` to `value` (bytes of the map's sizes).
pub fn update_raw(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    update(map, key, value, 0)
}

/// `copy_entries` for a per-CPU hash (the port counters): each CPU's
/// value (`old_value` bytes, 8-aligned in the syscall's buffer of
/// `nr_cpus` values) zero-extended to `new_value`. Returns how many
/// entries were copied.
pub fn copy_percpu_entries_extended(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    key_size: usize,
    (old_value, new_value): (usize, usize),
    nr_cpus: usize,
) -> io::Result<usize> {
    if new_value < old_value {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let (old_slot, new_slot) = (old_value.div_ceil(8) * 8, new_value.div_ceil(8) * 8);
    let mut new = vec![0u8; new_slot * nr_cpus];
    let mut n = 0;
    for_each_entry(from, key_size, old_slot * nr_cpus, |key, old| {
        new.fill(0);
        for cpu in 0..nr_cpus {
            new[cpu * new_slot..][..old_value].copy_from_slice(&old[cpu * old_slot..][..old_value]);
        }
        update(to, key, &new, 0)?;
        n += 1;
        Ok(())
    })?;
    Ok(n)
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

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_QUERY: libc::c_long = 16;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: attr is a valid bpf_attr prefix of the size we pass; the
    // kernel zero-extends it.
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
        Ok(ret)
    }
}

/// The prefix of `union bpf_attr` that BPF_PROG_QUERY reads.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
}

/// Whether the kernel has tcx hooks (6.6): BPF_PROG_QUERY of tcx ingress
/// on `lo` (ifindex 1 in every namespace). It reads a count under RTNL
/// and changes nothing; a kernel without tcx refuses the attach type
/// with EINVAL before looking at the device. (Attaching and detaching a
/// program would prove more, but would need a program loaded and would
/// touch an interface.)
pub fn has_tcx() -> io::Result<bool> {
    let mut attr = QueryAttr {
        target_ifindex: 1,
        attach_type: BPF_TCX_INGRESS,
        ..Default::default()
    };
    match bpf(BPF_PROG_QUERY, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The prefix of `union bpf_attr` that BPF_PROG_LOAD reads.
#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// A BPF instruction (struct bpf_insn): code, dst | src << 4, off, imm.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn(u8, u8, i16, i32);

const CALL: u8 = 0x85;
const MOV64_IMM: u8 = 0xb7;
const EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;
/// src_reg of an ld_imm64 whose immediate is a map's fd.
const PSEUDO_MAP_FD: u8 = 1;

/// Load `insns` as a program of `prog_type`; the verifier's log on
/// failure.
fn load_probe(
    prog_type: u32,
    insns: &[Insn],
) -> std::result::Result<std::os::fd::OwnedFd, (io::Error, String)> {
    use std::os::fd::FromRawFd;
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = LoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: BPF_PROG_LOAD returns a new fd that we own.
        Ok(fd) => Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err((e, String::from_utf8_lossy(&log[..end]).into_owned()))
        }
    }
}

/// Whether the verifier knows helper `id` in programs of `prog_type`, as
/// libbpf's probe tells: a call with no arguments set is refused either
/// way, for an unknown helper with "invalid func" or "unknown func".
fn has_helper(prog_type: u32, id: i32) -> io::Result<bool> {
    let insns = [
        Insn(CALL, 0, 0, id),
        Insn(MOV64_IMM, 0, 0, 0),
        Insn(EXIT, 0, 0, 0),
    ];
    match load_probe(prog_type, &insns) {
        Ok(_) => Ok(true),
        Err((_, log)) if log.contains("invalid func ") || log.contains("unknown func ") => {
            Ok(false)
        }
        Err((e, log)) if log.is_empty() => Err(e),
        Err(_) => Ok(true),
    }
}

/// The prefix of `union bpf_attr` that BPF_MAP_CREATE reads.
#[repr(C)]
#[derive(Default)]
struct MapAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

/// The prefix of `union bpf_attr` that BPF_PROG_TEST_RUN reads.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

const BPF_MAP_TYPE_DEVMAP_HASH: u32 = 25;
const BPF_F_BROADCAST: i32 = 1 << 3;
const BPF_F_EXCLUDE_INGRESS: i32 = 1 << 4;
const XDP_REDIRECT: u32 = 4;

/// Whether `bpf_redirect_map` takes BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS
/// (5.15), which the verifier does not check: a kernel without them
/// aborts the frame at run time. So an XDP program returning
/// `bpf_redirect_map(devmap_hash, 0, those flags)` is run once
/// (BPF_PROG_TEST_RUN, which does not redirect): XDP_REDIRECT where they
/// are known, XDP_ABORTED where not.
fn has_devmap_broadcast() -> io::Result<bool> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut m = MapAttr {
        map_type: BPF_MAP_TYPE_DEVMAP_HASH,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
    };
    // A kernel without DEVMAP_HASH (5.4) has no broadcast either.
    let map = match bpf(BPF_MAP_CREATE, &mut m) {
        // SAFETY: BPF_MAP_CREATE returns a new fd that we own.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as i32) },
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
        Err(e) => return Err(e),
    };
    let insns = [
        Insn(LD_IMM64, 1 | PSEUDO_MAP_FD << 4, 0, map.as_raw_fd()),
        Insn(0, 0, 0, 0),
        Insn(MOV64_IMM, 2, 0, 0),
        Insn(MOV64_IMM, 3, 0, BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS),
        Insn(CALL, 0, 0, 51), // bpf_redirect_map
        Insn(EXIT, 0, 0, 0),
    ];
    let prog = load_probe(BPF_PROG_TYPE_XDP, &insns)
        .map_err(|(e, log)| io::Error::new(e.kind(), format!("{e}: {}", log.trim())))?;
    let mut frame = [0u8; 64];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6] = 2;
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval == XDP_REDIRECT)
}

/// What umlbr's datapath needs of the kernel beyond BPF, XDP and TC
/// themselves, each with the release that brought it and what needs it.
const HELPERS: [(i32, u32, &str, &str); 5] = [
    (
        152,
        BPF_PROG_TYPE_SCHED_CLS,
        "bpf_redirect_neigh (Linux 5.10)",
        "the masquerade's TC path",
    ),
    (
        160,
        BPF_PROG_TYPE_SCHED_CLS,
        "bpf_ktime_get_coarse_ns (Linux 5.11)",
        "FDB aging and storm control",
    ),
    (
        164,
        BPF_PROG_TYPE_XDP,
        "bpf_for_each_map_elem (Linux 5.13)",
        "the NAT quota's sweep",
    ),
    (
        181,
        BPF_PROG_TYPE_SCHED_CLS,
        "bpf_loop (Linux 5.17)",
        "floods of a bridge with VLANs",
    ),
    (
        163,
        BPF_PROG_TYPE_XDP,
        "bpf_check_mtu (Linux 5.12)",
        "the masquerade's path MTU (fragmentation needed)",
    ),
];

/// Check the running kernel, by probing rather than by its version: BTF,
/// the helpers the programs call, the devmap broadcast that floods in
/// XDP. Each missing one is named (all are essential: the programs are
/// one object, which the verifier takes whole or not at all). tcx is
/// optional (`object::Hook`: clsact stands in).
pub fn check_kernel() -> crate::Result<()> {
    let mut missing = Vec::new();
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push("BTF (/sys/kernel/btf/vmlinux; CONFIG_DEBUG_INFO_BTF)".to_string());
    }
    let probe =
        |what: &str, e: io::Error| crate::Error::io(format!("probing the kernel for {what}"), e);
    for (id, ty, what, why) in HELPERS {
        if !has_helper(ty, id).map_err(|e| probe(what, e))? {
            missing.push(format!("{what}, for {why}"));
        }
    }
    let what = "devmap broadcast with BPF_F_EXCLUDE_INGRESS (Linux 5.15)";
    if !has_devmap_broadcast().map_err(|e| probe(what, e))? {
        missing.push(format!("{what}, for flooding in XDP"));
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(crate::Error::KernelFeature(missing.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probes on this machine's kernel (6.6 or later, as root): every
    /// feature there, and an unknown helper told apart.
    #[test]
    fn probes() {
        if effective_caps().unwrap_or(0) & (1 << CAP_SYS_ADMIN) == 0 {
            eprintln!("not root: probes not run");
            return;
        }
        assert!(has_tcx().unwrap());
        for (id, ty, what, _) in HELPERS {
            assert!(has_helper(ty, id).unwrap(), "{what}");
        }
        assert!(!has_helper(BPF_PROG_TYPE_XDP, 100_000).unwrap());
        assert!(has_devmap_broadcast().unwrap());
        check_kernel().unwrap();
    }

    /// A map's entries copied into one of longer values (`upgrade`'s
    /// migration): every entry, each value zero-extended.
    #[test]
    fn entries_copy_zero_extended() {
        use std::os::fd::{AsFd, FromRawFd, OwnedFd};
        if effective_caps().unwrap_or(0) & (1 << CAP_SYS_ADMIN) == 0 {
            eprintln!("not root: not run");
            return;
        }
        let create = |value_size| {
            let mut m = MapAttr {
                map_type: 1,
                key_size: 4,
                value_size,
                max_entries: 8,
            };
            let fd = bpf(BPF_MAP_CREATE, &mut m).unwrap();
            // SAFETY: BPF_MAP_CREATE returns a new fd that we own.
            unsafe { OwnedFd::from_raw_fd(fd as i32) }
        };
        let (a, b) = (create(4), create(8));
        for k in 1u32..=3 {
            let v = k * 100;
            let mut attr = ElemAttr {
                map_fd: a.as_raw_fd() as u32,
                key: &k as *const u32 as u64,
                value: &v as *const u32 as u64,
                ..Default::default()
            };
            bpf(BPF_MAP_UPDATE_ELEM, &mut attr).unwrap();
        }
        let n = copy_entries(a.as_fd(), b.as_fd(), 4, (4, 8), &|_, _| {}, false).unwrap();
        assert_eq!(n, 3);
        for k in 1u32..=3 {
            let mut v = [0xffff_ffffu32; 2];
            let mut attr = ElemAttr {
                map_fd: b.as_raw_fd() as u32,
                key: &k as *const u32 as u64,
                value: v.as_mut_ptr() as u64,
                ..Default::default()
            };
            bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).unwrap();
            assert_eq!(v, [k * 100, 0]);
        }
        // A second pass, rewriting: only the key added since is written.
        update_raw(a.as_fd(), &4u32.to_ne_bytes(), &400u32.to_ne_bytes()).unwrap();
        let mark = |_: &mut [u8], v: &mut [u8]| v[4] = 7;
        let n = copy_entries(a.as_fd(), b.as_fd(), 4, (4, 8), &mark, true).unwrap();
        assert_eq!(n, 1);
        let get = |k: u32| lookup_raw(b.as_fd(), &k.to_ne_bytes(), 8).unwrap().unwrap();
        assert_eq!(get(1)[..5], [100, 0, 0, 0, 0]);
        assert_eq!(get(4)[..5], [144, 1, 0, 0, 7]);
    }

    /// The same for a per-CPU hash: each CPU's value zero-extended.
    #[test]
    fn percpu_entries_copy_zero_extended() {
        use std::os::fd::{AsFd, FromRawFd, OwnedFd};
        if effective_caps().unwrap_or(0) & (1 << CAP_SYS_ADMIN) == 0 {
            eprintln!("not root: not run");
            return;
        }
        let cpus = aya::util::nr_cpus().unwrap();
        let create = |value_size| {
            let mut m = MapAttr {
                map_type: 5,
                key_size: 4,
                value_size,
                max_entries: 8,
            };
            let fd = bpf(BPF_MAP_CREATE, &mut m).unwrap();
            // SAFETY: BPF_MAP_CREATE returns a new fd that we own.
            unsafe { OwnedFd::from_raw_fd(fd as i32) }
        };
        let (a, b) = (create(8), create(16));
        for k in 1u64..=3 {
            let v: Vec<u64> = (0..cpus as u64).map(|c| k * 100 + c).collect();
            let k = k as u32;
            let mut attr = ElemAttr {
                map_fd: a.as_raw_fd() as u32,
                key: &k as *const u32 as u64,
                value: v.as_ptr() as u64,
                ..Default::default()
            };
            bpf(BPF_MAP_UPDATE_ELEM, &mut attr).unwrap();
        }
        let n = copy_percpu_entries_extended(a.as_fd(), b.as_fd(), 4, (8, 16), cpus).unwrap();
        assert_eq!(n, 3);
        for k in 1u32..=3 {
            let mut v = vec![u64::MAX; 2 * cpus];
            let mut attr = ElemAttr {
                map_fd: b.as_raw_fd() as u32,
                key: &k as *const u32 as u64,
                value: v.as_mut_ptr() as u64,
                ..Default::default()
            };
            bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).unwrap();
            for c in 0..cpus {
                assert_eq!(v[2 * c..2 * c + 2], [k as u64 * 100 + c as u64, 0]);
            }
        }
    }

    #[test]
    fn coarse_clock_runs() {
        let a = monotonic_coarse_ns();
        assert!(a > 0 && monotonic_coarse_ns() >= a);
    }
}
