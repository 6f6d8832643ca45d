//! `umlbr`: the command line. Each invocation is a short process; the
//! switch lives in the kernel and keeps forwarding when no umlbr runs.
//!
//! Exit status: 0 done, 1 the command failed, 2 the command line was
//! wrong (nothing was touched).
use std::{path::Path, process::ExitCode};

use anyhow::{Context, Result};
use umlbr::{
    attach::AttachOptions,
    bridge::Bridge,
    config, fdb, forward,
    lifecycle::{self, UpOptions},
    link::{Net, fmt_mac},
    metrics, nat, port, rates, stats, sys,
    tap::{self, TapOptions},
};

mod cli;

use cli::{
    ApplyArgs, AttachArgs, Cli, Cmd, FdbCmd, ForwardCmd, LeaseCmd, MetricsArgs, NatCmd, ShowArgs,
    StatsArgs, TapCmd, UpArgs, docs, print,
};

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
    // From the grammar alone: no root, no kernel.
    match &cli.cmd {
        Cmd::Completions { shell } => return docs::completions(*shell),
        Cmd::Man { dir } => return docs::man(dir.as_deref()),
        _ => {}
    }
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
        Cmd::Stats(a) if a.watch => watch(&net, a).await,
        Cmd::Stats(a) => show(&net, a.show, print::stats).await,
        Cmd::Fdb(FdbCmd::Show(a)) => fdb_show(&net, a).await,
        Cmd::Fdb(FdbCmd::Add {
            mac,
            iface,
            is_static,
            vlan,
        }) => fdb_add(&net, (mac, vlan), &iface, is_static).await,
        Cmd::Fdb(FdbCmd::Del { mac, bridge, vlan }) => {
            fdb_del(&net, (mac, vlan), bridge.as_deref()).await
        }
        Cmd::Nat(NatCmd::Show(a)) => nat_show(&net, a).await,
        Cmd::Log { name, follow } => log(&net, name.as_deref(), follow).await,
        Cmd::Apply(a) => apply(&net, a).await,
        Cmd::Config { name } => print_config(&net, &name).await,
        Cmd::Metrics(a) => metrics_cmd(&net, a).await,
        Cmd::Completions { .. } | Cmd::Man { .. } => unreachable!("answered above"),
        Cmd::Watch { name } => watch_ports(&net, name.as_deref()).await,
        Cmd::Upgrade {
            name,
            json,
            dry_run,
        } => upgrade(&net, name.as_deref(), json, dry_run).await,
        Cmd::Monitor { name, json } => monitor(&net, name.as_deref(), json).await,
        Cmd::Publish {
            name,
            to,
            every,
            json,
            vlan,
        } => publish(&net, (&name, vlan.unwrap_or(0)), &to, every, json).await,
        Cmd::Forward(c) => forward_cmd(&net, c).await,
        Cmd::Vlan(a) => vlan_set(&net, a).await,
        Cmd::Lease(LeaseCmd::Add {
            name,
            mac,
            addr,
            hostname,
        }) => lease_add(&net, &name, mac, addr, hostname).await,
        Cmd::Lease(LeaseCmd::Del { name, mac }) => lease_del(&net, &name, mac).await,
        Cmd::Leases(a) => leases(&net, a).await,
    }
}

async fn forward_cmd(net: &Net, c: ForwardCmd) -> Result<()> {
    match c {
        ForwardCmd::Add {
            name,
            proto,
            port,
            target: (to_addr, to_port),
        } => {
            let f = forward::Forward {
                proto,
                port,
                to_addr,
                to_port,
            };
            forward::add(net, Some(&name), f)
                .await
                .with_context(|| format!("adding forward {f} to bridge {name}"))?;
            eprintln!("{name}: forwarding {f}");
        }
        ForwardCmd::Del { name, proto, port } => {
            forward::del(net, Some(&name), proto, port)
                .await
                .with_context(|| format!("removing forward {proto} {port} from bridge {name}"))?;
            eprintln!("{name}: {proto} {port} no longer forwarded");
        }
        ForwardCmd::Show(a) => {
            let mut rows = Vec::new();
            for br in &Bridge::named_or_all(net, a.name.as_deref()).await? {
                rows.extend(forward::show(br)?);
            }
            if a.json {
                return print::json(&rows);
            }
            print::forwards(&rows);
        }
    }
    Ok(())
}

async fn lease_add(
    net: &Net,
    name: &str,
    mac: [u8; 6],
    addr: std::net::Ipv4Addr,
    hostname: Option<String>,
) -> Result<()> {
    let lease = umlbr::dhcp::StaticLease {
        mac,
        addr,
        hostname,
    };
    named(name, umlbr::dhcp::lease_add(net, name, lease).await)?;
    eprintln!("{}: {} always gets {addr}", name, fmt_mac(&mac));
    Ok(())
}

async fn lease_del(net: &Net, name: &str, mac: [u8; 6]) -> Result<()> {
    named(name, umlbr::dhcp::lease_del(net, name, mac).await)?;
    eprintln!("{}: static lease of {} removed", name, fmt_mac(&mac));
    Ok(())
}

/// An error of bridge `name`'s, with its name unless it says it.
fn named<T>(name: &str, r: umlbr::Result<T>) -> Result<T> {
    match r {
        Err(e @ umlbr::Error::NoSuchBridge(_)) => Err(e.into()),
        r => r.with_context(|| format!("bridge {name}")),
    }
}

async fn leases(net: &Net, a: ShowArgs) -> Result<()> {
    let mut rows = Vec::new();
    for br in Bridge::named_or_all(net, a.name.as_deref()).await? {
        let r = umlbr::dhcp::leases(&br.name).with_context(|| format!("bridge {}", br.name))?;
        rows.extend(r);
    }
    if a.json {
        return print::json(&rows);
    }
    print::leases(&rows);
    Ok(())
}

async fn up(net: &Net, a: UpArgs) -> Result<()> {
    sys::check_kernel()?;
    if let Some(file) = &a.config {
        return up_config(net, file, a.name.as_deref()).await;
    }
    let nat = a.nat.options();
    let opts = UpOptions {
        addresses: a.address,
        aging_secs: a.aging,
        uplink: a.uplink,
        masquerade: a.masquerade.map(|m| (m, nat)),
        dhcp: a.dhcp.then_some(umlbr::dhcp::DhcpOptions {
            range: a.dhcp_range,
        }),
    };
    // clap requires NAME without --config.
    let name = a.name.context("no bridge name")?;
    lifecycle::up(net, &name, &opts)
        .await
        .with_context(|| format!("bridge {name}"))?;
    eprintln!("bridge {name} is up{}", hook_note()?);
    Ok(())
}

/// Where TC went, if not on tcx: tcx is optional.
fn hook_note() -> Result<String> {
    Ok(match umlbr::object::Hook::chosen()? {
        umlbr::object::Hook::Tcx => String::new(),
        h if std::env::var_os(umlbr::object::TC_HOOK_ENV).is_some() => {
            format!(
                " (TC on {}, as {} asks)",
                h.as_str(),
                umlbr::object::TC_HOOK_ENV
            )
        }
        h => format!(" (TC on {}: this kernel has no tcx)", h.as_str()),
    })
}

async fn up_config(net: &Net, file: &Path, want: Option<&str>) -> Result<()> {
    let cfg = config::load(file)?;
    let name = cfg.name.clone();
    if let Some(want) = want
        && want != name
    {
        anyhow::bail!(
            "{}: name: the file describes bridge {name}, not {want}",
            file.display()
        );
    }
    let steps = config::up(net, &cfg)
        .await
        .with_context(|| format!("bridge {name} (from {})", file.display()))?;
    for s in &steps {
        eprintln!("{s}");
    }
    eprintln!("bridge {name} is up{}", hook_note()?);
    Ok(())
}

async fn apply(net: &Net, a: ApplyArgs) -> Result<()> {
    let cfg = config::load(&a.file)?;
    let name = cfg.name.clone();
    let steps = config::apply(net, &cfg, a.dry_run)
        .await
        .with_context(|| format!("bridge {name} (from {})", a.file.display()))?;
    if a.dry_run {
        // The plan is the output.
        for s in &steps {
            println!("{s}");
        }
        return Ok(());
    }
    for s in &steps {
        eprintln!("{s}");
    }
    let n = steps.len();
    eprintln!("bridge {name}: {n} change(s) applied");
    Ok(())
}

async fn print_config(net: &Net, name: &str) -> Result<()> {
    let br = Bridge::open(net, name).await?;
    let cfg = config::current(net, &br)
        .await
        .with_context(|| format!("bridge {name}"))?;
    print!(
        "# bridge {name}, as `umlbr config {name}` printed it\n{}",
        config::to_toml(&cfg)
    );
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
    let opts = AttachOptions {
        uplink: a.uplink,
        tc_only: a.tc_only,
        max_learned: a.max_learned,
        isolated: a.isolated,
        flood_limit: a.flood_limit,
        lock: a.lock,
        macs: a.mac,
        ips: a.ip,
        own_tap: false,
        vlans: a.vlans.vlans(),
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

async fn fdb_add(
    net: &Net,
    mac: ([u8; 6], Option<u16>),
    iface: &str,
    is_static: bool,
) -> Result<()> {
    let b = fdb::add(net, mac, iface, is_static).await?;
    eprintln!("{} -> {iface} added to {b}", fmt_mac(&mac.0));
    Ok(())
}

async fn fdb_del(
    net: &Net,
    (mac, vid): ([u8; 6], Option<u16>),
    bridge: Option<&str>,
) -> Result<()> {
    let b = fdb::del(net, (mac, vid), bridge).await?;
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

async fn upgrade(net: &Net, name: Option<&str>, json: bool, dry_run: bool) -> Result<()> {
    // Not `Bridge`: an older umlbr's maps may not fit this one's types.
    let all = umlbr::upgrade::Target::find(net, name).await?;
    if all.is_empty() {
        return Err(umlbr::Error::NoBridge.into());
    }
    if dry_run {
        let mut plans = Vec::new();
        for br in &all {
            let p = umlbr::upgrade::preview(net, br, &umlbr::upgrade::VERSIONS)
                .await
                .with_context(|| format!("planning the upgrade of bridge {}", br.name))?;
            if !json {
                print::upgrade_plan(&p);
            }
            plans.push(p);
        }
        if json {
            print::json(&plans)?;
        }
        return Ok(());
    }
    let mut done = Vec::new();
    for br in all {
        let n = br.name.clone();
        let u = umlbr::upgrade::upgrade(net, br)
            .await
            .with_context(|| format!("upgrading bridge {n}"))?;
        if !json {
            if u.resumed {
                eprintln!("bridge {n}: completing an upgrade that was interrupted");
            }
            let ifaces: std::collections::BTreeSet<&str> =
                u.replaced.iter().map(|r| r.iface.as_str()).collect();
            eprintln!(
                "bridge {n} upgraded: {} programs replaced on {} interfaces{}; {} maps kept{}",
                u.replaced.len(),
                ifaces.len(),
                if u.already > 0 {
                    format!(" ({} already new)", u.already)
                } else {
                    String::new()
                },
                u.maps_reused.len(),
                if u.maps_new.is_empty() {
                    String::new()
                } else {
                    format!(", new (empty): {}", u.maps_new.join(", "))
                }
            );
            for (map, count) in &u.maps_migrated {
                eprintln!("bridge {n}: map {map}: {count} entries migrated to its new layout");
            }
            if u.layout_from != u.layout_to {
                eprintln!(
                    "bridge {n}: map layout version {} -> {}",
                    u.layout_from, u.layout_to
                );
            }
        }
        done.push(u);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM; both are caught from the call on.
fn on_stop() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("catching SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("catching SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// `stats --watch`: rates between two views `--interval` apart, until
/// SIGINT or SIGTERM.
async fn watch(net: &Net, a: StatsArgs) -> Result<()> {
    use std::io::IsTerminal;
    let name = a.show.name.as_deref();
    let every = std::time::Duration::from_secs(a.interval);
    let stop = on_stop()?;
    tokio::pin!(stop);
    // Redraw in place on a terminal; a pipe gets one block per interval.
    let redraw = !a.show.json && std::io::stdout().is_terminal();
    let mut before = views(net, name).await?;
    let mut t0 = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep_until(t0 + every) => {}
        }
        let now = views(net, name).await?;
        let t1 = tokio::time::Instant::now();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let r = rates::rates(&before, &now, (t1 - t0).as_secs_f64(), unix);
        if a.show.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            print::rates(&r, redraw);
        }
        (before, t0) = (now, t1);
    }
}

/// `metrics`: the views in Prometheus' text format, printed once or
/// served over HTTP.
async fn metrics_cmd(net: &Net, a: MetricsArgs) -> Result<()> {
    let name = a.name.as_deref();
    // Fails here, not at the first scrape, for a bridge that is not there.
    let v = views(net, name).await?;
    let Some(addr) = a.listen else {
        print!("{}", metrics::render(&v));
        return Ok(());
    };
    serve_metrics(net, name, addr).await
}

/// Serve GET /metrics on `addr` until SIGINT or SIGTERM. Connections are
/// served concurrently on this one thread; each scrape reads the maps.
async fn serve_metrics(net: &Net, name: Option<&str>, addr: std::net::SocketAddr) -> Result<()> {
    use futures::StreamExt;
    use hyper::{server::conn::http1, service::service_fn};
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr().context("the listening address")?;
    note(&format!(
        "serving http://{local}/metrics (SIGINT or SIGTERM ends)"
    ));
    let stop = on_stop()?;
    tokio::pin!(stop);
    let mut conns = futures::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            r = listener.accept() => {
                let stream = match r {
                    Ok((s, _)) => s,
                    // E.g. out of file descriptors: keep serving the others.
                    Err(e) => {
                        note(&format!("accepting a connection on {local}: {e}"));
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let svc = service_fn(move |req| scrape(net, name, req));
                let conn = http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                // Every connection ends after 60 s: a client that never
                // finishes its request holds it no longer (a scraper
                // keeping it alive simply connects again).
                conns.push(tokio::time::timeout(std::time::Duration::from_secs(60), conn));
            }
            Some(_) = conns.next(), if !conns.is_empty() => {}
        }
    }
}

/// A line on stderr that may be lost: a server outlives whoever read its
/// stderr, and eprintln! would panic on a closed pipe.
fn note(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "umlbr: {msg}");
}

type Body = http_body_util::Full<bytes::Bytes>;

fn reply(status: u16, content_type: &str, body: String) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(Body::from(body));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// One request: the metrics read now for GET /metrics, 404 for any other
/// path, 405 for another method, 500 (and the error) if reading failed.
async fn scrape(
    net: &Net,
    name: Option<&str>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return Ok(reply(
            404,
            TEXT,
            "not found: umlbr serves /metrics\n".into(),
        ));
    }
    if !matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD) {
        return Ok(reply(405, TEXT, "only GET /metrics\n".into()));
    }
    Ok(match views(net, name).await {
        Ok(v) => reply(200, metrics::CONTENT_TYPE, metrics::render(&v)),
        Err(e) => {
            let msg = message(&e);
            note(&format!("error: {msg}"));
            reply(500, TEXT, format!("{msg}\n"))
        }
    })
}

/// `watch`: keep the ports in step with their interfaces until SIGINT
/// or SIGTERM (or the bridge goes).
async fn watch_ports(net: &Net, name: Option<&str>) -> Result<()> {
    use std::io::Write;
    let stop = on_stop()?;
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

/// `monitor`: the bridge's events, one line (or JSON object) each, until
/// SIGINT or SIGTERM, the reader leaving (EPIPE: SIGPIPE is ignored
/// here, so that the lease is given back), or the bridge going.
async fn monitor(net: &Net, name: Option<&str>, json: bool) -> Result<()> {
    use std::{io::Write, os::fd::AsFd};
    use tokio::io::unix::AsyncFd;
    use umlbr::monitor::{self as mon, Monitor, Names};

    let br = Bridge::open_or_only(net, name).await?;
    let bridge = br.name.clone();
    let switch_port = br.switch_port.index;
    let mut m = Monitor::open(&br).with_context(|| format!("monitoring bridge {bridge}"))?;
    drop(br);
    // Waited on through a duplicate of the ring's fd (the same ring).
    let fd = m
        .ring()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating the event ring's fd")?;
    // SAFETY: `fd` is an OwnedFd the AsyncFd owns, closed only when it
    // is dropped (after deregistering).
    let ready = unsafe { AsyncFd::register(fd) }.context("waiting on the event ring")?;
    let stop = on_stop()?;
    tokio::pin!(stop);
    let renew = || format!("renewing the monitor's lease on bridge {bridge}");
    m.renew().with_context(renew)?;
    let mut seen = m.suppressed().with_context(renew)?;
    eprintln!("monitoring bridge {bridge}");
    let mut names = Names::default();
    let mut out = std::io::stdout().lock();
    let mut print = |v: mon::EventView| -> std::io::Result<()> {
        if json {
            let line = serde_json::to_string(&v).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{v}")?;
        }
        out.flush()
    };
    let every = std::time::Duration::from_nanos(umlbr_common::EV_LEASE_RENEW_NS);
    let mut tick = tokio::time::interval(every);
    let ended: Result<()> = 'run: loop {
        let tick_due = tokio::select! {
            _ = &mut stop => break 'run Ok(()),
            _ = tick.tick() => true,
            r = ready.readable() => {
                match r {
                    Ok(mut g) => g.clear_ready(),
                    Err(e) => break 'run Err(e).context("waiting on the event ring"),
                }
                false
            }
        };
        // Drained on each tick too: a wakeup between the drain and
        // clear_ready is not lost for longer than a second.
        for e in mon::drain(m.ring()) {
            if let Err(e) = print(mon::view(&e, &mut names)) {
                break 'run quiet_pipe(e);
            }
        }
        if !tick_due {
            continue;
        }
        if mon::if_name(switch_port).is_none() {
            eprintln!("bridge {bridge} is gone");
            break Ok(());
        }
        if let Err(e) = m.renew().with_context(renew) {
            break Err(e);
        }
        let now = match m.suppressed().with_context(renew) {
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        for (kind, (n, s)) in now.iter().zip(&seen).enumerate() {
            if n > s
                && let Err(e) = print(mon::suppressed_view(kind as u16, n - s))
            {
                break 'run quiet_pipe(e);
            }
        }
        seen = now;
    };
    // Nobody listens any more: the datapath stops writing at once.
    let _ = m.release();
    ended
}

/// A write error of a stream: the reader leaving (EPIPE) ends it
/// quietly; anything else is an error.
fn quiet_pipe(e: std::io::Error) -> Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e).context("writing to standard output")
    }
}

/// `publish`: the bridge's local MACs as static entries of a kernel
/// bridge's port, once or every `every` seconds until SIGINT or SIGTERM.
async fn publish(
    net: &Net,
    (name, vlan): (&str, u16),
    to: &str,
    every: Option<u64>,
    json: bool,
) -> Result<()> {
    let once = || async {
        let br = Bridge::open(net, name).await?;
        umlbr::evpn::publish(net, &br, to, vlan)
            .await
            .with_context(|| format!("publishing bridge {name}'s MACs of VLAN {vlan} on {to}"))
    };
    let report = |p: &umlbr::evpn::Published| -> Result<()> {
        if json {
            return print::json(p);
        }
        let vlan = match p.vlan {
            0 => String::new(),
            v => format!(" VLAN {v}"),
        };
        println!(
            "{}{vlan}: {} added, {} removed, {} kept on {}",
            p.bridge,
            p.added.len(),
            p.removed.len(),
            p.kept,
            p.port
        );
        for m in &p.added {
            println!("  + {m}");
        }
        for m in &p.removed {
            println!("  - {m}");
        }
        Ok(())
    };
    report(&once().await?)?;
    let Some(secs) = every else {
        return Ok(());
    };
    let stop = on_stop()?;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(std::time::Duration::from_secs(secs)) => {}
        }
        let p = once().await?;
        if !p.added.is_empty() || !p.removed.is_empty() {
            report(&p)?;
        }
    }
}

/// `vlan IFACE ...`: change a port's VLANs.
async fn vlan_set(net: &Net, a: cli::VlanCmdArgs) -> Result<()> {
    let v = a.vlans.vlans().unwrap_or_default();
    let b = port::set_vlans(net, &a.iface, &v)
        .await
        .with_context(|| format!("setting the VLANs of {}", a.iface))?;
    eprintln!("{} on {b}: VLANs {v}", a.iface);
    Ok(())
}
