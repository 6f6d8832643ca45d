//! Serialising the commands that change one bridge: each holds an
//! exclusive `flock(2)` on `/run/umlbr/net<INODE>-<NAME>.lock` for its
//! whole read-modify-write of the bridge's maps. INODE is the network
//! namespace's (`/proc/thread-self/ns/net`): `ip netns exec` gives each
//! namespace its own /sys but not its own /run, and two namespaces may
//! each have a br0.
//!
//! The file is not state: nothing is written to it, nothing depends on it
//! existing, and deleting it (or /run going with a reboot) loses nothing.
//! `down` deletes it; a lock taken on a file that was deleted meanwhile
//! is taken again on the new one.
//! The kernel drops the lock when the command exits, however it exits.
//! Read commands take no lock.
//!
//! Within one process the lock is re-entrant: `up` attaches its uplink
//! with the same functions `attach` uses, under the lock it already holds.
use std::{
    collections::HashMap,
    fs::{DirBuilder, File, OpenOptions},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

/// Where the lock files are.
pub const DIR: &str = "/run/umlbr";

/// How long a command waits for another one on the same bridge, unless
/// `UMLBR_LOCK_WAIT` (seconds) says otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// The exclusive lock of one bridge, held until dropped.
#[derive(Clone)]
pub struct BridgeLock {
    _held: Arc<Flock<File>>,
    pub path: PathBuf,
}

impl std::fmt::Debug for BridgeLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeLock")
            .field("path", &self.path)
            .finish()
    }
}

/// Locks this process holds, by file: a second `take` of the same bridge
/// shares the first one's.
static HELD: Mutex<Option<HashMap<PathBuf, Weak<Flock<File>>>>> = Mutex::new(None);

/// The lock file of bridge `bridge` in the current network namespace.
pub fn path(bridge: &str) -> Result<PathBuf> {
    let ns = "/proc/thread-self/ns/net";
    let ino = std::fs::metadata(ns)
        .map_err(|e| Error::io(format!("reading {ns}"), e))?
        .ino();
    Ok(Path::new(DIR).join(format!("net{ino}-{bridge}.lock")))
}

/// How long `take` waits: `UMLBR_LOCK_WAIT` seconds, else `DEFAULT_WAIT`.
fn wait() -> Duration {
    std::env::var("UMLBR_LOCK_WAIT")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(DEFAULT_WAIT, Duration::from_secs_f64)
}

/// Take bridge `bridge`'s lock, waiting for the command that holds it
/// (at most `UMLBR_LOCK_WAIT` seconds, 10 by default).
pub fn take(bridge: &str) -> Result<BridgeLock> {
    let path = path(bridge)?;
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    let held = held.get_or_insert_with(HashMap::new);
    if let Some(lock) = held.get(&path).and_then(Weak::upgrade) {
        return Ok(BridgeLock { _held: lock, path });
    }
    let lock = Arc::new(acquire(bridge, &path)?);
    held.insert(path.clone(), Arc::downgrade(&lock));
    Ok(BridgeLock { _held: lock, path })
}

fn acquire(bridge: &str, path: &Path) -> Result<Flock<File>> {
    let err = |err| Error::Lock {
        bridge: bridge.into(),
        path: path.into(),
        err,
    };
    match DirBuilder::new().mode(0o700).create(DIR) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(err(e)),
        _ => {}
    }
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    };
    let mut file = open().map_err(err)?;
    let wait = wait();
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            // `down` unlinks the file under the lock: a lock on a file
            // that is no longer at `path` locks nothing; open it again.
            Ok(l) if same_file(&l, path) => return Ok(l),
            Ok(_) => file = open().map_err(err)?,
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => file = f,
            Err((_, e)) => return Err(err(e.into())),
        }
        if start.elapsed() >= wait {
            return Err(Error::LockBusy {
                bridge: bridge.into(),
                path: path.into(),
                secs: wait.as_secs_f64(),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Whether `file` is the file at `path` now.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl BridgeLock {
    /// Delete the lock file, for `down`: the bridge is gone. Commands
    /// waiting on it take the lock of a new file, and find no bridge.
    pub fn unlink(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Write `text` to `path` whole or not at all: to `path`.tmp (mode 0600,
/// never through a symlink), synced, then renamed over `path`, so that a
/// command killed meanwhile leaves the old file or the new one, never
/// half of one. On failure, the file that failed and why.
pub fn write_private(
    path: &Path,
    text: &str,
) -> std::result::Result<(), (PathBuf, std::io::Error)> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| (tmp.clone(), e))?;
    f.write_all(text.as_bytes()).map_err(|e| (tmp.clone(), e))?;
    f.sync_all().map_err(|e| (tmp.clone(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| (path.to_path_buf(), e))
}
