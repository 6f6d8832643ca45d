//! Every item of the umlbr library the tests use, in one place (each test
//! file has `mod umlbr_lib;`): when the library renames or moves one, this
//! is the only file to change.
#![allow(dead_code, unused_imports)]

pub use umlbr::{
    clsact,
    nat::state_name,
    object::{Hook, Tc, tc_prog_ids},
    port::port_ip_key,
    sys::monotonic_coarse_ns,
};

/// umlbr's BPF object, loaded as `umlbr up` loads it.
pub fn load_object() -> anyhow::Result<aya::Ebpf> {
    use anyhow::Context;
    umlbr::object::load().context("load_object")
}
