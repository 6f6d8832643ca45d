//! Persistent tap devices owned by a user or group, as `tunctl -u/-g`.
use std::{fs::OpenOptions, os::fd::AsRawFd};

use crate::error::{Error, Result};

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

nix::ioctl_write_ptr_bad!(
    tunsetiff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
    libc::ifreq
);
nix::ioctl_write_int!(tunsetpersist, b'T', 203);
nix::ioctl_write_int!(tunsetowner, b'T', 204);
nix::ioctl_write_int!(tunsetgroup, b'T', 206);

/// Resolve a user name or numeric uid.
pub fn resolve_user(user: &str) -> Result<u32> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(Error::NoSuchUser(user.into())),
    }
}

/// Resolve a group name or numeric gid.
pub fn resolve_group(group: &str) -> Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(Error::NoSuchGroup(group.into())),
    }
}

/// Create a persistent tap (IFF_TAP | IFF_NO_PI) named `name`. The caller
/// has checked that no interface of that name exists: TUNSETIFF would
/// otherwise attach to it instead of failing. With `vnet_hdr` the tap is
/// marked for a guest that uses vnet headers (IFF_VNET_HDR, which tun
/// keeps): `attach` then gives it TC only.
pub fn create(name: &str, uid: Option<u32>, gid: Option<u32>, vnet_hdr: bool) -> Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| Error::io("opening /dev/net/tun", e))?;
    // SAFETY: all-zero ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | if vnet_hdr { IFF_VNET_HDR } else { 0 };
    let fd = file.as_raw_fd();
    let what = |op: &str| format!("{op} on tap {name}");
    // SAFETY: valid fd and ifreq; the int ioctls take values, not pointers.
    unsafe {
        tunsetiff(fd, &ifr).map_err(|e| Error::io(what("TUNSETIFF"), e.into()))?;
        if let Some(uid) = uid {
            tunsetowner(fd, uid as _).map_err(|e| Error::io(what("TUNSETOWNER"), e.into()))?;
        }
        if let Some(gid) = gid {
            tunsetgroup(fd, gid as _).map_err(|e| Error::io(what("TUNSETGROUP"), e.into()))?;
        }
        tunsetpersist(fd, 1).map_err(|e| Error::io(what("TUNSETPERSIST"), e.into()))?;
    }
    Ok(())
}
