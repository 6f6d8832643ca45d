//! Every item of the umlbr library the tests use, in one place (each test
//! file has `mod umlbr_lib;`): when the library renames or moves one, this
//! is the only file to change.
#![allow(dead_code, unused_imports)]

use anyhow::Context as _;

pub use umlbr::{
    clsact,
    nat::state_name,
    object::{Hook, Tc, prog_fd, tc_prog_ids},
    port::port_ip_key,
    sys::monotonic_coarse_ns,
    upgrade::{Change, Step, Upgraded, VERSIONS, Versions},
};

/// umlbr's BPF object, loaded as `umlbr up` loads it.
pub fn load_object() -> anyhow::Result<aya::Ebpf> {
    use anyhow::Context;
    umlbr::object::load().context("load_object")
}

/// Run `f` with a netlink connection in this thread's network namespace,
/// on a runtime of its own (the library's functions are async).
pub fn with_net<T>(
    f: impl AsyncFnOnce(&umlbr::link::Net) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let net = umlbr::link::Net::new()?;
        f(&net).await
    })
}

/// `umlbr upgrade NAME` through the library, with layout versions
/// `versions` and `before_replace` called before each hook's replace.
pub fn upgrade_with(
    name: &str,
    versions: &Versions<'_>,
    before_replace: &dyn Fn(&str, &'static str),
) -> anyhow::Result<Upgraded> {
    with_net(async |net| {
        let br = umlbr::upgrade::Target::find(net, Some(name))
            .await?
            .remove(0);
        Ok(umlbr::upgrade::upgrade_with(net, br, versions, before_replace).await?)
    })
}

/// Replace the XDP program on `iface` by `new`, naming the one there now,
/// as another tool would.
pub fn replace_xdp(iface: &str, new: &aya::programs::ProgramFd) -> anyhow::Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    with_net(async |net| {
        let link = net.require(iface).await?;
        let old = prog_fd(link.xdp_prog.context("no XDP program")?)?;
        net.replace_xdp(
            link.index,
            iface,
            new.as_fd().as_raw_fd(),
            old.as_fd().as_raw_fd(),
            link.xdp_mode.flag(),
        )
        .await?;
        Ok(())
    })
}
