//! The record of a bridge that `up` is making: the one window in which
//! umlbr has changed something the kernel cannot lead `down` back to.
//!
//! Once the switch port carries umlbr's programs, the bridge is found
//! from its interfaces and everything it changed is recorded in its maps
//! before it is changed (ports and their promiscuity in `UMLBR_STATS`,
//! the masquerade's nftables table and `ip_forward` in `UMLBR_NAT_CFG`).
//! Before that, a veth pair with nothing on it says nothing: so `up`
//! writes `/run/umlbr/net<NETNS-INODE>-<NAME>.state` (next to the lock)
//! before it creates the pair, and deletes it when the bridge is whole.
//! A file left there means an `up` was killed: `down NAME` deletes what
//! it names, then the file.
//!
//! The file is written to a temporary name and renamed over, so it is
//! whole or absent. It carries the network namespace's cookie (unique
//! while the machine runs, where inodes are reused): a file from a
//! namespace that is gone is stale, and ignored.
use std::path::{Path, PathBuf};

use crate::{
    error::{Error, Result},
    lock,
};

/// What `up` is about to make: the veth pair NAME / switch port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub bridge: String,
    pub switch_port: String,
    /// The network namespace's cookie (0 if the kernel has none).
    pub netns: u64,
    pub path: PathBuf,
}

/// The record file of bridge `bridge` in the current network namespace.
pub fn path(bridge: &str) -> Result<PathBuf> {
    let lock = lock::path(bridge)?;
    Ok(lock.with_extension("state"))
}

/// The current network namespace's cookie (SO_NETNS_COOKIE), 0 if the
/// kernel has none.
fn netns_cookie() -> u64 {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket(2) and getsockopt(2) into a u64 we own.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return 0;
        }
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let r = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        libc::close(fd);
        if r == 0 { cookie } else { 0 }
    }
}

fn err(bridge: &str, path: &Path, what: &'static str) -> impl Fn(std::io::Error) -> Error {
    let (bridge, path) = (bridge.to_string(), path.to_path_buf());
    move |err| Error::Record {
        bridge: bridge.clone(),
        path: path.clone(),
        what,
        err,
    }
}

/// Record that bridge `bridge` (switch port `switch_port`) is being made:
/// before the first change, under the bridge's lock.
pub fn write(bridge: &str, switch_port: &str) -> Result<Record> {
    let path = path(bridge)?;
    let rec = Record {
        bridge: bridge.into(),
        switch_port: switch_port.into(),
        netns: netns_cookie(),
        path: path.clone(),
    };
    let text = format!(
        "# umlbr: `umlbr up {bridge}` began making this bridge and has not finished;\n\
         # `umlbr down {bridge}` removes what it made.\n\
         bridge={bridge}\nswitch_port={switch_port}\nnetns_cookie={}\n",
        rec.netns
    );
    lock::write_private(&path, &text).map_err(|(p, e)| err(bridge, &p, "writing")(e))?;
    Ok(rec)
}

/// Bridge `bridge`'s record, if an `up` left one in this namespace. A
/// record of another (gone) namespace whose inode this one reuses is
/// deleted and None.
pub fn read(bridge: &str) -> Result<Option<Record>> {
    let path = path(bridge)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(bridge, &path, "reading")(e)),
    };
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(str::trim)
    };
    let bad = || Error::BadRecord {
        bridge: bridge.into(),
        path: path.clone(),
    };
    let rec = Record {
        bridge: field("bridge").ok_or_else(bad)?.into(),
        switch_port: field("switch_port").ok_or_else(bad)?.into(),
        netns: field("netns_cookie")
            .and_then(|c| c.parse().ok())
            .ok_or_else(bad)?,
        path: path.clone(),
    };
    if rec.bridge != bridge {
        return Err(bad());
    }
    let here = netns_cookie();
    if rec.netns != 0 && here != 0 && rec.netns != here {
        remove(&rec)?;
        return Ok(None);
    }
    Ok(Some(rec))
}

/// Delete the record: the last step of `up` and of `down`.
pub fn remove(rec: &Record) -> Result<()> {
    remove_path(&rec.bridge, &rec.path)
}

/// Delete bridge `bridge`'s record if there is one.
pub fn remove_any(bridge: &str) -> Result<()> {
    remove_path(bridge, &path(bridge)?)
}

/// Delete the record and the temporary file it is written to (left by a
/// kill while writing it, before anything was made).
fn remove_path(bridge: &str, path: &Path) -> Result<()> {
    for p in [path.with_extension("state.tmp"), path.to_path_buf()] {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(err(bridge, &p, "deleting")(e));
            }
            _ => {}
        }
    }
    Ok(())
}
