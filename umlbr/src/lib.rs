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
//! (finding a bridge again, and opening it under its lock); `dhcp`
//! (the bridge's dnsmasq: DHCP, DNS, router advertisements);
//! `fdb`; `vlan`; `attach` (`attach`'s options); `expect` (the ports
//! `attach` recorded for `watch`, by those options); `port` (which
//! records them with `expect`); `nat` (masquerade; `nat::v6`: its IPv6); `forward` (port forwards, through the
//! masquerade's table and nftables table); `stats`; `metrics` (the stats views in
//! Prometheus' text format); `rates` (per-second rates between two stats
//! views, for `stats --watch`); `tap`; `upgrade` (a running bridge's
//! programs replaced, its maps kept); `lifecycle` (`up` and `down`);
//! `config` (the config file: `up --config`, `apply`, `config NAME`);
//! `watch` (following interfaces as they come and go); `monitor` (the
//! datapath's events, for `umlbr monitor`); `evpn` (the local MACs
//! published in a kernel bridge's FDB for FRR's zebra).
pub mod attach;
pub mod bridge;
pub mod clsact;
pub mod config;
pub mod dhcp;
pub mod error;
pub mod evpn;
pub mod expect;
pub mod fdb;
pub mod forward;
pub mod lifecycle;
pub mod link;
pub mod lock;
pub mod metrics;
pub mod monitor;
pub mod nat;
pub mod object;
pub mod port;
pub mod rates;
pub mod record;
pub mod stats;
pub mod sys;
pub mod tap;
pub mod upgrade;
pub mod vlan;
pub mod watch;

pub use error::{Error, Result};
