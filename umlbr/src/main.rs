//! `umlbr`: the command line. Each invocation is a short process; the
//! switch lives in the kernel and keeps forwarding when no umlbr runs.
//!
//! Exit status: 0 done, 1 the command failed, 2 the command line was
//! wrong (nothing was touched).
use std::process::ExitCode;

use anyhow::{Context, Result};
use umlbr::{
    bridge::Bridge,
    fdb,
    lifecycle::{self, UpOptions},
    link::{Net, fmt_mac},
    nat, port, stats, sys,
    tap::{self, TapOptions},
};

mod cli;

use cli::{AttachArgs, Cli, Cmd, FdbCmd, NatCmd, ShowArgs, TapCmd, UpArgs, print};

fn main() -> ExitCode {
    let cli = match Cli::parse_checked() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    if cli.cmd.read_only() {
        // Rust ignores SIGPIPE, so printing to a closed pipe panics; a
        // reader that has seen enough ends a read command quietly instead.
        // SAFETY: no other thread exists yet; SIG_DFL is a valid action.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("umlbr: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("umlbr: error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// `--help` and `--version` print and succeed; usage errors keep the
/// one-line `umlbr: error:` form and exit 2.
fn usage_error(e: clap::Error) -> ExitCode {
    if !e.use_stderr() {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    // The first paragraph: the error, and the arguments it lists.
    let msg = e.to_string();
    let first: Vec<&str> = msg
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let first = first.join(" ");
    let first = first.trim_start_matches("error: ");
    eprintln!("umlbr: error: {first} (see `umlbr --help`)");
    ExitCode::from(2)
}

/// The error and its causes, each once: some errors (aya's) repeat their
/// source in their own message.
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if out.contains(&cause) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&cause);
    }
    out
}

fn check_privileges() -> Result<()> {
    let caps = sys::effective_caps().context("reading capabilities")?;
    let missing: Vec<&str> = [
        (sys::CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        // Opening maps and programs by id needs CAP_SYS_ADMIN, not only CAP_BPF.
        (sys::CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (sys::CAP_BPF, "CAP_BPF"),
    ]
    .iter()
    .filter(|(bit, _)| caps & (1u64 << bit) == 0)
    .map(|&(_, n)| n)
    .collect();
    if !missing.is_empty() {
        return Err(umlbr::Error::NotPrivileged(missing.join(", ")).into());
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    check_privileges()?;
    let net = Net::new()?;
    match cli.cmd {
        Cmd::Up(a) => up(&net, a).await,
        Cmd::Down { name } => down(&net, &name).await,
        Cmd::Tap(TapCmd::Add {
            tap,
            user,
            group,
            vnet_hdr,
        }) => {
            tap_add(
                &net,
                &tap,
                TapOptions {
                    user,
                    group,
                    vnet_hdr,
                },
            )
            .await
        }
        Cmd::Tap(TapCmd::Del { tap }) => tap_del(&net, &tap).await,
        Cmd::Attach(a) if a.masquerade => masquerade(&net, a).await,
        Cmd::Attach(a) => attach(&net, a).await,
        Cmd::Detach { iface } => detach(&net, &iface).await,
        Cmd::Show(a) => show(&net, a, print::show).await,
        Cmd::Stats(a) => show(&net, a, print::stats).await,
        Cmd::Fdb(FdbCmd::Show(a)) => fdb_show(&net, a).await,
        Cmd::Fdb(FdbCmd::Add {
            mac,
            iface,
            is_static,
        }) => fdb_add(&net, mac, &iface, is_static).await,
        Cmd::Fdb(FdbCmd::Del { mac, bridge }) => fdb_del(&net, mac, bridge.as_deref()).await,
        Cmd::Nat(NatCmd::Show(a)) => nat_show(&net, a).await,
        Cmd::Log { name, follow } => log(&net, name.as_deref(), follow).await,
        Cmd::Watch { name } => watch(&net, name.as_deref()).await,
    }
}

async fn up(net: &Net, a: UpArgs) -> Result<()> {
    sys::check_kernel()?;
    let nat = a.nat.options();
    let opts = UpOptions {
        address: a.address,
        aging_secs: a.aging,
        uplink: a.uplink,
        masquerade: a.masquerade.map(|m| (m, nat)),
    };
    let name = a.name;
    lifecycle::up(net, &name, &opts)
        .await
        .with_context(|| format!("bridge {name}"))?;
    // tcx is optional: say where TC went without it.
    let hook = match umlbr::object::Hook::chosen()? {
        umlbr::object::Hook::Tcx => String::new(),
        h if std::env::var_os(umlbr::object::TC_HOOK_ENV).is_some() => {
            format!(
                " (TC on {}, as {} asks)",
                h.as_str(),
                umlbr::object::TC_HOOK_ENV
            )
        }
        h => format!(" (TC on {}: this kernel has no tcx)", h.as_str()),
    };
    eprintln!("bridge {name} is up{hook}");
    Ok(())
}

async fn down(net: &Net, name: &str) -> Result<()> {
    let ports = match lifecycle::down_named(net, name).await {
        Err(e @ umlbr::Error::NoSuchBridge(_)) => return Err(e.into()),
        r => r.with_context(|| format!("bridge {name}"))?,
    };
    let ports = if ports.is_empty() {
        "none".into()
    } else {
        ports.join(", ")
    };
    eprintln!("bridge {name} removed (detached: {ports})");
    Ok(())
}

async fn tap_add(net: &Net, name: &str, opts: TapOptions) -> Result<()> {
    tap::add(net, name, &opts).await?;
    let vnet = if opts.vnet_hdr { " (vnet headers)" } else { "" };
    eprintln!("tap {name} created{vnet}");
    Ok(())
}

async fn tap_del(net: &Net, name: &str) -> Result<()> {
    tap::del(net, name).await?;
    eprintln!("tap {name} deleted");
    Ok(())
}

async fn masquerade(net: &Net, a: AttachArgs) -> Result<()> {
    let b = nat::attach(net, &a.iface, a.bridge.as_deref(), &a.nat.options()).await?;
    eprintln!("{b} masquerades through {}", a.iface);
    Ok(())
}

async fn attach(net: &Net, a: AttachArgs) -> Result<()> {
    let opts = port::AttachOptions {
        uplink: a.uplink,
        tc_only: a.tc_only,
        max_learned: a.max_learned,
        isolated: a.isolated,
        flood_limit: a.flood_limit,
        lock: a.lock,
        macs: a.mac,
        ips: a.ip,
    };
    let p = port::attach(net, &a.iface, a.bridge.as_deref(), opts).await?;
    let role = match (p.uplink, p.isolated) {
        (true, _) => " as its uplink",
        (false, true) => ", isolated",
        (false, false) => "",
    };
    let lock = p
        .locked
        .map(|(macs, ips)| format!(", locked to {macs} MAC(s) and {ips} address(es)"))
        .unwrap_or_default();
    let why = p
        .no_xdp_reason
        .map(|r| format!("; no XDP: {r}"))
        .unwrap_or_default();
    let (xdp, tc) = (p.xdp.as_str(), p.tc.as_str());
    eprintln!(
        "{} attached to {}{role}{lock} (xdp {xdp}, tc {tc}){why}",
        p.iface, p.bridge
    );
    Ok(())
}

async fn detach(net: &Net, iface: &str) -> Result<()> {
    let link = net.require(iface).await?;
    if let Some(b) = nat::detach(net, &link).await? {
        eprintln!("{b} no longer masquerades through {iface}");
        return Ok(());
    }
    let b = port::detach(net, iface).await?;
    eprintln!("{iface} detached from {b}");
    Ok(())
}

async fn views(net: &Net, name: Option<&str>) -> Result<Vec<stats::BridgeView>> {
    let mut out = Vec::new();
    for br in &Bridge::named_or_all(net, name).await? {
        let v = stats::view(net, br).await;
        out.push(v.with_context(|| format!("bridge {}", br.name))?);
    }
    Ok(out)
}

/// `show` and `stats`: the same views, as JSON or as `table` prints them.
async fn show(net: &Net, a: ShowArgs, table: fn(&[stats::BridgeView])) -> Result<()> {
    let views = views(net, a.name.as_deref()).await?;
    if a.json {
        return print::views_json(&views, a.name.is_some());
    }
    table(&views);
    Ok(())
}

async fn fdb_show(net: &Net, a: ShowArgs) -> Result<()> {
    let mut rows = Vec::new();
    for br in &mut Bridge::named_or_all(net, a.name.as_deref()).await? {
        rows.extend(fdb::show(net, br).await?);
    }
    if a.json {
        return print::json(&rows);
    }
    print::fdb(&rows);
    Ok(())
}

async fn fdb_add(net: &Net, mac: [u8; 6], iface: &str, is_static: bool) -> Result<()> {
    let b = fdb::add(net, mac, iface, is_static).await?;
    eprintln!("{} -> {iface} added to {b}", fmt_mac(&mac));
    Ok(())
}

async fn fdb_del(net: &Net, mac: [u8; 6], bridge: Option<&str>) -> Result<()> {
    let b = fdb::del(net, mac, bridge).await?;
    eprintln!("{} removed from {b}", fmt_mac(&mac));
    Ok(())
}

async fn nat_show(net: &Net, a: ShowArgs) -> Result<()> {
    let mut rows = Vec::new();
    for br in &mut Bridge::named_or_all(net, a.name.as_deref()).await? {
        rows.extend(nat::show(br)?);
    }
    if a.json {
        return print::json(&rows);
    }
    print::nat(&rows);
    Ok(())
}

/// Prints the datapath's log records as lines on stdout.
struct LinePrinter {
    bridge: String,
}

impl log::Log for LinePrinter {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        println!("{} {}: {}", self.bridge, record.level(), record.args());
    }

    fn flush(&self) {}
}

async fn log(net: &Net, name: Option<&str>, follow: bool) -> Result<()> {
    let br = Bridge::open_or_only(net, name).await?;
    let logger = LinePrinter {
        bridge: br.name.clone(),
    };
    let mut reader = aya_log::EbpfLogger::init_from_id_with_logger(br.xdp_prog_id, logger)
        .with_context(|| format!("opening the log ring of bridge {}", br.name))?;
    loop {
        reader.flush();
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// SIGTERM (systemd's stop) or SIGINT (^C).
async fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

async fn watch(net: &Net, name: Option<&str>) -> Result<()> {
    use std::io::Write;
    let stop = stop_signal().await?;
    let ready = |names: &[String]| {
        let what = match name {
            Some(n) => format!("bridge {n}"),
            None if names.is_empty() => "every bridge (none yet)".into(),
            None => format!("every bridge ({})", names.join(", ")),
        };
        eprintln!("watching {what}");
    };
    let report = |c: &umlbr::watch::Change| {
        println!("{c}");
        let _ = std::io::stdout().flush();
    };
    umlbr::watch::run(net, name, stop, ready, report)
        .await
        .with_context(|| match name {
            Some(n) => format!("watching bridge {n}"),
            None => "watching".into(),
        })?;
    eprintln!("watch ended");
    Ok(())
}
