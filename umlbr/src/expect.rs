//! The ports a bridge expects: what `umlbr watch` attaches again when
//! their interface comes back (a guest restarted with a non-persistent
//! tap, a USB NIC plugged in again).
//!
//! `attach` records each port, with its options, in
//! `/run/umlbr/net<INODE>-<NAME>.ports` (next to the lock and the record
//! of `up`), one line per port in `umlbr attach`'s own words:
//!
//! ```text
//! tap0 --isolated --flood-limit 50
//! tap1 --lock --mac 52:54:00:12:34:56 --ip 192.168.2.10
//! ```
//!
//! `detach` (and `tap del`, which detaches) forgets the port: the user
//! asked for it to go. A port removed because its interface vanished
//! (`port::prune`) stays expected. `down` deletes the file. Written under
//! the bridge's lock, to a temporary name renamed over, so it is whole or
//! absent. Like the lock it lives in /run: a reboot forgets it, and the
//! config file (`umlbr up --config`) is what says what a bridge has at
//! boot.
use std::path::{Path, PathBuf};

use crate::{
    attach::AttachOptions,
    error::{Error, Result},
    link::{fmt_mac, parse_mac},
    lock,
};

/// The expected-ports file of bridge `bridge` in the current namespace.
pub fn path(bridge: &str) -> Result<PathBuf> {
    Ok(lock::path(bridge)?.with_extension("ports"))
}

/// `opts` as `umlbr attach` flags (without IFACE).
pub fn to_args(opts: &AttachOptions) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    if opts.uplink {
        a.push("--uplink".into());
    }
    if opts.tc_only {
        a.push("--tc-only".into());
    }
    if let Some(n) = opts.max_learned {
        a.extend(["--max-learned".into(), n.to_string()]);
    }
    if opts.isolated {
        a.push("--isolated".into());
    }
    if let Some(n) = opts.flood_limit {
        a.extend(["--flood-limit".into(), n.to_string()]);
    }
    if opts.lock {
        a.push("--lock".into());
    }
    for m in &opts.macs {
        a.extend(["--mac".into(), fmt_mac(m)]);
    }
    for ip in &opts.ips {
        a.extend(["--ip".into(), ip.to_string()]);
    }
    if let Some(v) = &opts.vlans {
        a.extend(crate::vlan::to_args(v));
    }
    a
}

/// The options `to_args` wrote; None if a word is not one of them.
pub fn from_args<'a>(mut words: impl Iterator<Item = &'a str>) -> Option<AttachOptions> {
    let mut o = AttachOptions::default();
    while let Some(w) = words.next() {
        match w {
            "--uplink" => o.uplink = true,
            "--tc-only" => o.tc_only = true,
            "--max-learned" => o.max_learned = Some(words.next()?.parse().ok()?),
            "--isolated" => o.isolated = true,
            "--flood-limit" => o.flood_limit = Some(words.next()?.parse().ok()?),
            "--lock" => o.lock = true,
            "--mac" => o.macs.push(parse_mac(words.next()?).ok()?),
            "--ip" => o.ips.push(words.next()?.parse().ok()?),
            "--vlan" => o.vlans = Some(crate::vlan::Vlans::access(words.next()?.parse().ok()?)),
            "--trunk" => {
                let t: Vec<u16> = (words.next()?.split(','))
                    .map(|v| v.parse().ok())
                    .collect::<Option<_>>()?;
                let pvid = o.vlans.as_ref().map_or(0, |v| v.pvid);
                o.vlans = Some(crate::vlan::Vlans::trunk(&t, pvid));
            }
            "--pvid" => {
                let pvid = words.next()?.parse().ok()?;
                let t = o.vlans.take().map(|v| v.tagged).unwrap_or_default();
                o.vlans = Some(crate::vlan::Vlans::trunk(&t, pvid));
            }
            _ => return None,
        }
    }
    Some(o)
}

fn io_err(bridge: &str, path: &Path, what: &'static str) -> impl Fn(std::io::Error) -> Error {
    let (bridge, path) = (bridge.to_string(), path.to_path_buf());
    move |err| Error::Expected {
        bridge: bridge.clone(),
        path: path.clone(),
        what,
        err,
    }
}

/// The ports bridge `bridge` expects, in the order they were attached
/// (none if it has no file).
pub fn read(bridge: &str) -> Result<Vec<(String, AttachOptions)>> {
    let path = path(bridge)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(bridge, &path, "reading")(e)),
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let parsed = words
            .next()
            .and_then(|iface| Some((iface.to_string(), from_args(words)?)));
        let Some(p) = parsed else {
            return Err(Error::BadExpected {
                bridge: bridge.into(),
                path,
                line: n + 1,
            });
        };
        out.push(p);
    }
    Ok(out)
}

/// Write the file whole: to a temporary name, renamed over.
fn write(bridge: &str, ports: &[(String, AttachOptions)]) -> Result<()> {
    let path = path(bridge)?;
    if ports.is_empty() {
        return remove(bridge);
    }
    let mut text = format!(
        "# umlbr: the ports of bridge {bridge}, as `umlbr attach` made them;\n\
         # `umlbr watch` attaches each again when its interface comes back.\n"
    );
    for (iface, opts) in ports {
        let args = to_args(opts);
        text.push_str(iface);
        for a in args {
            text.push(' ');
            text.push_str(&a);
        }
        text.push('\n');
    }
    crate::lock::write_private(&path, &text).map_err(|(p, e)| io_err(bridge, &p, "writing")(e))
}

/// Record that `iface` is a port of `bridge` with `opts` (replacing what
/// was recorded for it). Under the bridge's lock.
pub fn record(bridge: &str, iface: &str, opts: &AttachOptions) -> Result<()> {
    let mut ports = read(bridge)?;
    ports.retain(|(i, _)| i != iface);
    ports.push((iface.into(), opts.clone()));
    write(bridge, &ports)
}

/// Forget port `iface` of `bridge` (`detach`). Under the bridge's lock.
pub fn forget(bridge: &str, iface: &str) -> Result<()> {
    let mut ports = read(bridge)?;
    let before = ports.len();
    ports.retain(|(i, _)| i != iface);
    if ports.len() == before {
        return Ok(());
    }
    write(bridge, &ports)
}

/// Delete bridge `bridge`'s file (`down`).
pub fn remove(bridge: &str) -> Result<()> {
    let path = path(bridge)?;
    for p in [path.with_extension("ports.tmp"), path.clone()] {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(bridge, &p, "deleting")(e));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_as_attach_flags() {
        let o = AttachOptions {
            isolated: true,
            flood_limit: Some(50),
            max_learned: Some(4),
            tc_only: true,
            lock: true,
            macs: vec![[0x52, 0x54, 0, 0x12, 0x34, 0x56]],
            ips: vec!["192.168.2.10".parse().unwrap(), "fe80::1".parse().unwrap()],
            vlans: Some(crate::vlan::Vlans::trunk(&[20, 10], 5)),
            ..Default::default()
        };
        let args = to_args(&o);
        let back = from_args(args.iter().map(String::as_str)).unwrap();
        assert_eq!(to_args(&back), args);
        assert!(from_args(["--bogus"].into_iter()).is_none());
        assert!(from_args(["--flood-limit"].into_iter()).is_none());
    }
}
