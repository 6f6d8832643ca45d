//! Persistent tap devices owned by a user or group, as `tunctl -u/-g`:
//! creating them, and deleting them (detached from their bridge first).
use std::{fs::OpenOptions, os::fd::AsRawFd};

use nix::unistd::{Group, User};

use crate::{
    error::{Error, Result},
    link::{Net, check_ifname},
    port,
};

nix::ioctl_write_ptr_bad!(tunsetiff, libc::TUNSETIFF, libc::ifreq);
nix::ioctl_write_int_bad!(tunsetpersist, libc::TUNSETPERSIST);
nix::ioctl_write_int_bad!(tunsetowner, libc::TUNSETOWNER);
nix::ioctl_write_int_bad!(tunsetgroup, libc::TUNSETGROUP);

/// Options of `tap add`.
#[derive(Clone, Debug, Default)]
pub struct TapOptions {
    /// Owner allowed to open it without root: a name or a uid.
    pub user: Option<String>,
    /// Group allowed to open it without root: a name or a gid.
    pub group: Option<String>,
    /// Mark it for a guest that uses vnet headers.
    pub vnet_hdr: bool,
}

/// Resolve a user name or numeric uid.
pub fn resolve_user(user: &str) -> Result<u32> {
    user.parse()
        .ok()
        .or_else(|| Some(User::from_name(user).ok()??.uid.as_raw()))
        .ok_or_else(|| Error::NoSuchUser(user.into()))
}

/// Resolve a group name or numeric gid.
pub fn resolve_group(group: &str) -> Result<u32> {
    group
        .parse()
        .ok()
        .or_else(|| Some(Group::from_name(group).ok()??.gid.as_raw()))
        .ok_or_else(|| Error::NoSuchGroup(group.into()))
}

/// Create a persistent tap named `name` (none may exist: TUNSETIFF would
/// attach to it instead of failing).
pub async fn add(net: &Net, name: &str, opts: &TapOptions) -> Result<()> {
    check_ifname(name)?;
    let uid = opts.user.as_deref().map(resolve_user).transpose()?;
    let gid = opts.group.as_deref().map(resolve_group).transpose()?;
    if net.link_by_name(name).await?.is_some() {
        return Err(Error::InterfaceExists(name.into()));
    }
    create(name, uid, gid, opts.vnet_hdr)
}

/// Delete tap `name`, detaching it from its bridge first.
pub async fn del(net: &Net, name: &str) -> Result<()> {
    let link = net.require(name).await?;
    if !link.is_tun() {
        return Err(Error::NotATap {
            kind: link.kind.clone().unwrap_or_else(|| "device".into()),
            iface: name.into(),
        });
    }
    match port::detach(net, name).await {
        Ok(_) | Err(Error::NotAttached(_)) => {}
        Err(e) => return Err(e),
    }
    net.del_link(link.index, name).await
}

/// Create a persistent tap (IFF_TAP | IFF_NO_PI) named `name`. With
/// `vnet_hdr` the tap is marked for a guest that uses vnet headers
/// (IFF_VNET_HDR, which tun keeps): `attach` then gives it TC only.
fn create(name: &str, uid: Option<u32>, gid: Option<u32>, vnet_hdr: bool) -> Result<()> {
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
    let vnet = if vnet_hdr { libc::IFF_VNET_HDR } else { 0 };
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | vnet) as libc::c_short;
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
