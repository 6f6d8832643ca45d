//! umlbr: an eBPF/XDP switch for VM guests on TUN/TAP.
//!
//! The library behind the `umlbr` command. Every function works on the
//! current network namespace and keeps no state outside the kernel but
//! the record of a bridge that an `up` began (`record`).
//!
//! Modules, each using only those listed before it:
//! `error`; `sys` (syscalls the libraries lack) and `link` (interfaces,
//! MACs, CIDRs); `object` (the eBPF object: loading it, its programs on
//! their hooks, its maps by id); `lock` (one command at a time changes
//! a bridge); `record` (the record of a bridge `up` has begun); `bridge`
//! (finding a bridge again, and opening it under its lock);
//! `fdb`; `port` (with `expect`, the ports `attach` recorded for
//! `watch`); `nat` (masquerade; `nat::v6`: its IPv6); `stats`; `metrics` (the stats views in
//! Prometheus' text format); `rates` (per-second rates between two stats
//! views, for `stats --watch`); `tap`; `upgrade` (a running bridge's
//! programs replaced, its maps kept); `lifecycle` (`up` and `down`);
//! `config` (the config file: `up --config`, `apply`, `config NAME`);
//! `watch` (following interfaces as they come and go).
pub mod bridge;
pub mod clsact;
pub mod config;
pub mod error;
pub mod expect;
pub mod fdb;
pub mod lifecycle;
pub mod link;
pub mod lock;
pub mod metrics;
pub mod nat;
pub mod object;
pub mod port;
pub mod rates;
pub mod record;
pub mod stats;
pub mod sys;
pub mod tap;
pub mod upgrade;
pub mod watch;

pub use error::{Error, Result};
