//! umlbr: an eBPF/XDP switch for VM guests on TUN/TAP.
//!
//! The library behind the `umlbr` command. Every function works on the
//! current network namespace and keeps no state outside the kernel.
pub mod bridge;
pub mod error;
pub mod fdb;
pub mod link;
pub mod nat;
pub mod port;
pub mod stats;
pub mod sys;
pub mod tap;

pub use error::{Error, Result};
