//! `umlbr`: the command line. Each invocation is a short process; the
//! switch lives in the kernel and keeps forwarding when no umlbr runs.
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use umlbr::{
    bridge::{Bridge, UpOptions},
    fdb,
    link::{Net, check_ifname, fmt_mac, parse_cidr},
    port, stats, sys, tap,
};

const ABOUT: &str = "An eBPF/XDP switch for VM guests on TUN/TAP: replaces a Linux bridge, \
tunctl and iptables MASQUERADE for User Mode Linux, QEMU and Firecracker guests.";

const LONG_ABOUT: &str = "\
An eBPF/XDP switch for VM guests on TUN/TAP.

A bridge NAME is a switch in the kernel: XDP and TC programs on every port
forward frames through BPF maps (MAC learning, aging, flooding). NAME is
also an interface on the host, the host's own station on the switch, like
a Linux bridge's br0.

The seed recipe, and the umlbr commands that replace it:
  brctl addbr br0; ifconfig br0 192.168.2.1 up   umlbr up br0 --address 192.168.2.1/24
  tunctl -u giorgos -t tap0                      umlbr tap add tap0 --user giorgos
  brctl addif br0 tap0                           umlbr attach tap0
  brctl addif br0 eth0  (section C)              umlbr up br0 --uplink eth0
  ip_forward=1; iptables -t nat -A POSTROUTING \
    -o eth0 -j MASQUERADE  (section D)            umlbr up br0 --address 192.168.2.1/24 --masquerade eth0
  brctl show / brctl showmacs br0                umlbr show / umlbr fdb show br0

Every command acts on the current network namespace (it works under
`ip netns exec`), needs root, and keeps no state outside the kernel.
Read commands take --json and then print only JSON on stdout.";

#[derive(Parser)]
#[command(name = "umlbr", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a bridge: the switch, and the host interface NAME on it.
    Up {
        /// Bridge name; also the host's interface on the switch (max 15 bytes).
        name: String,
        /// Address for the host interface, e.g. 192.168.2.1/24 (the guests' gateway).
        #[arg(long, value_name = "CIDR")]
        address: Option<String>,
        /// Seconds after which a learned MAC is forgotten (default 300).
        #[arg(long, value_name = "SECONDS",
              value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        aging: Option<u64>,
        /// Make the host's NIC IFACE a port (guests bridged onto the LAN).
        /// IFACE keeps its addresses and routes; it is made promiscuous while
        /// it is a port.
        #[arg(long, value_name = "IFACE", conflicts_with = "masquerade")]
        uplink: Option<String>,
        /// Masquerade the guests' subnet (from --address) behind IFACE's
        /// address, in BPF (replaces ip_forward + iptables MASQUERADE).
        #[arg(long, value_name = "IFACE", requires = "address")]
        masquerade: Option<String>,
        #[command(flatten)]
        nat: NatArgs,
    },
    /// Remove a bridge, its host interface and everything `up` and `attach` made.
    Down { name: String },
    /// Create or delete persistent tap devices for guests.
    #[command(subcommand)]
    Tap(TapCmd),
    /// Make an interface (a guest's tap, a veth) a port of a bridge.
    Attach {
        iface: String,
        /// The bridge; may be left out when exactly one exists.
        #[arg(long, value_name = "NAME")]
        bridge: Option<String>,
        /// IFACE is the host's NIC onto the LAN (see `up --uplink`).
        #[arg(long, conflicts_with = "masquerade")]
        uplink: bool,
        /// Masquerade the bridge's guests behind IFACE (see `up --masquerade`).
        #[arg(long)]
        masquerade: bool,
        /// Switch this port's frames with the TC program alone, no XDP. For
        /// guests with vnet headers and offloads (UML vector transport,
        /// virtio-net): a tap with XDP sends their GSO super-frames through
        /// generic XDP, which copies each before XDP hands it to TC. A tap
        /// already set up with vnet headers when attached gets TC only
        /// without this flag.
        #[arg(long, conflicts_with = "masquerade")]
        tc_only: bool,
        #[command(flatten)]
        nat: NatArgs,
    },
    /// Remove an interface from its bridge (the interface stays).
    Detach { iface: String },
    /// Show bridges and their ports, with the XDP mode and TC hook of each.
    Show {
        name: Option<String>,
        #[command(flatten)]
        out: Out,
    },
    /// Show or edit the MAC table (forwarding database).
    #[command(subcommand)]
    Fdb(FdbCmd),
    /// Show the masquerade's NAT table.
    #[command(subcommand)]
    Nat(NatCmd),
    /// Print what the datapath logged (e.g. an exhausted NAT port range),
    /// oldest first; --follow keeps printing new lines.
    Log {
        name: Option<String>,
        #[arg(long, short)]
        follow: bool,
    },
    /// Per-port counters: frames, bytes, forwarded, flooded, dropped, learned,
    /// and which path (XDP native, XDP generic, TC) switched them; NAT
    /// counters when the bridge masquerades.
    Stats {
        name: Option<String>,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Subcommand)]
enum TapCmd {
    /// Create a persistent tap (like `tunctl -t TAP -u USER`).
    Add {
        tap: String,
        /// Owner allowed to open it without root (name or uid).
        #[arg(long, short)]
        user: Option<String>,
        /// Group allowed to open it without root (name or gid).
        #[arg(long, short)]
        group: Option<String>,
        /// The guest will use vnet headers (UML's vector transport, QEMU
        /// virtio-net, Firecracker): `attach` then switches the tap with TC
        /// alone, since a tap with XDP copies every GSO super-frame through
        /// generic XDP.
        #[arg(long)]
        vnet_hdr: bool,
    },
    /// Delete a tap (detaching it from its bridge first).
    Del { tap: String },
}

#[derive(Subcommand)]
enum FdbCmd {
    /// List MAC entries: port, static or learned, age in seconds.
    Show {
        name: Option<String>,
        #[command(flatten)]
        out: Out,
    },
    /// Add an entry for MAC behind port IFACE.
    Add {
        mac: String,
        iface: String,
        /// Never ages and never moves to another port.
        #[arg(long = "static")]
        is_static: bool,
    },
    /// Remove the entry for MAC.
    Del {
        mac: String,
        #[arg(long, value_name = "NAME")]
        bridge: Option<String>,
    },
}

#[derive(Subcommand)]
enum NatCmd {
    /// Live mappings: protocol, inside, outside, remote, state, age.
    Show {
        name: Option<String>,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Args, Clone, Default)]
struct NatArgs {
    /// Source ports for masqueraded flows (default: just above the host's
    /// ip_local_port_range, so they never meet the host's own sockets).
    #[arg(long, value_name = "LO-HI")]
    nat_ports: Option<String>,
    /// Idle timeout of mappings, repeatable: tcp_established (432000),
    /// tcp_transitory (120), tcp_closing (10), udp (30), udp_stream (120),
    /// icmp (30).
    #[arg(long, value_name = "KEY=SECONDS")]
    nat_timeout: Vec<String>,
}

impl NatArgs {
    fn options(&self) -> Result<umlbr::nat::NatOptions> {
        Ok(umlbr::nat::NatOptions {
            ports: self
                .nat_ports
                .as_deref()
                .map(umlbr::nat::parse_port_range)
                .transpose()?,
            timeouts: self
                .nat_timeout
                .iter()
                .map(|t| umlbr::nat::parse_timeout(t))
                .collect::<Result<_, _>>()?,
        })
    }
}

#[derive(Args, Clone, Copy)]
struct Out {
    /// Print only JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // Usage errors keep the one-line `umlbr: error:` form too.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            eprintln!("umlbr: error: {first} (see `umlbr --help`)");
            return ExitCode::from(2);
        }
    };
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
            eprintln!("umlbr: error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
        Cmd::Up {
            name,
            address,
            aging,
            uplink,
            masquerade,
            nat,
        } => {
            umlbr::sys::check_kernel()?;
            let address = address.as_deref().map(parse_cidr).transpose()?;
            if matches!(address, Some((std::net::IpAddr::V6(_), _))) && masquerade.is_some() {
                anyhow::bail!("--masquerade needs an IPv4 --address");
            }
            let nat_opts = nat.options()?;
            let opts = UpOptions {
                address,
                aging_secs: aging,
                uplink,
                masquerade: masquerade.map(|m| (m, nat_opts)),
            };
            Bridge::up(&net, &name, &opts)
                .await
                .with_context(|| format!("bridge {name}"))?;
            eprintln!("bridge {name} is up");
        }
        Cmd::Down { name } => {
            let br = Bridge::open(&net, &name).await?;
            let ports = br
                .down(&net)
                .await
                .with_context(|| format!("bridge {name}"))?;
            eprintln!("bridge {name} removed (detached: {})", list_or_none(&ports));
        }
        Cmd::Tap(TapCmd::Add {
            tap,
            user,
            group,
            vnet_hdr,
        }) => {
            check_ifname(&tap)?;
            let uid = user.as_deref().map(tap::resolve_user).transpose()?;
            let gid = group.as_deref().map(tap::resolve_group).transpose()?;
            if net.link_by_name(&tap).await?.is_some() {
                return Err(umlbr::Error::InterfaceExists(tap).into());
            }
            tap::create(&tap, uid, gid, vnet_hdr)?;
            eprintln!(
                "tap {tap} created{}",
                if vnet_hdr { " (vnet headers)" } else { "" }
            );
        }
        Cmd::Tap(TapCmd::Del { tap }) => {
            let link = net.require(&tap).await?;
            if !link.is_tun() {
                return Err(umlbr::Error::NotATap {
                    kind: link.kind.clone().unwrap_or_else(|| "device".into()),
                    iface: tap,
                }
                .into());
            }
            if link.xdp_prog.is_some() {
                match port::detach(&net, &tap).await {
                    Ok(_) | Err(umlbr::Error::NotAttached(_)) => {}
                    Err(e) => return Err(e).context(format!("detaching {tap}")),
                }
            }
            net.del_link(link.index, &tap).await?;
            eprintln!("tap {tap} deleted");
        }
        Cmd::Attach {
            iface,
            bridge,
            masquerade: true,
            nat,
            ..
        } => {
            let b = umlbr::nat::attach(&net, &iface, bridge.as_deref(), &nat.options()?).await?;
            eprintln!("{b} masquerades through {iface}");
        }
        Cmd::Attach {
            iface,
            bridge,
            uplink,
            tc_only,
            ..
        } => {
            let a = port::attach(&net, &iface, bridge.as_deref(), uplink, tc_only).await?;
            eprintln!(
                "{} attached to {}{} (xdp {}, tc tcx){}",
                a.iface,
                a.bridge,
                if a.uplink { " as its uplink" } else { "" },
                a.xdp.as_str(),
                a.no_xdp_reason
                    .map(|r| format!("; no XDP: {r}"))
                    .unwrap_or_default()
            );
        }
        Cmd::Detach { iface } => {
            let link = net.require(&iface).await?;
            if let Some(mut br) = umlbr::nat::bridge_of_uplink(&net, link.index).await? {
                umlbr::nat::detach_from(&net, &mut br).await?;
                eprintln!("{} no longer masquerades through {iface}", br.name);
                return Ok(());
            }
            let b = port::detach(&net, &iface).await?;
            eprintln!("{iface} detached from {b}");
        }
        Cmd::Show { name, out } => {
            let views = views(&net, name.as_deref()).await?;
            if out.json {
                print_json(&views, name.is_some())?;
            } else if views.is_empty() {
                println!("no bridges (create one with `umlbr up NAME`)");
            } else {
                for v in &views {
                    println!(
                        "{}  host {}  switch port {}  aging {} s  {} MACs",
                        v.name, v.host_interface, v.switch_port, v.aging_secs, v.fdb_entries
                    );
                    println!("  PORT             IFINDEX  KIND   XDP      TC    STATE");
                    for p in &v.ports {
                        println!(
                            "  {:<16} {:>7}  {:<6} {:<8} {:<5} {}",
                            p.name,
                            p.ifindex,
                            p.kind,
                            p.xdp.as_str(),
                            p.tc,
                            if p.up { "up" } else { "down" }
                        );
                    }
                }
            }
        }
        Cmd::Stats { name, out } => {
            let views = views(&net, name.as_deref()).await?;
            if out.json {
                print_json(&views, name.is_some())?;
            } else {
                for v in &views {
                    println!("{}", v.name);
                    println!(
                        "  PORT                RX_PKTS     RX_BYTES  FORWARDED   FLOODED  DROPPED LEARNED XDP_NATIVE XDP_GENERIC       TC    TX_PKTS"
                    );
                    for p in &v.ports {
                        let s = &p.stats;
                        println!(
                            "  {:<16} {:>10} {:>12} {:>10} {:>9} {:>8} {:>7} {:>10} {:>11} {:>8} {:>10}",
                            p.name,
                            s.rx_packets,
                            s.rx_bytes,
                            s.forwarded,
                            s.flooded,
                            s.dropped,
                            s.learned,
                            s.xdp_native,
                            s.xdp_generic,
                            s.tc,
                            s.tx_packets
                        );
                    }
                    if let Some(n) = &v.nat {
                        let c = &n.counters;
                        println!(
                            "  masquerade via {} as {} (ports {}): {} mappings",
                            n.uplink, n.address, n.ports, n.mappings
                        );
                        println!(
                            "    out: xdp {} tc {}   in: xdp {} tc {}   icmp errors {}   in_miss {}",
                            c.out_xdp, c.out_tc, c.in_xdp, c.in_tc, c.icmp_errors, c.in_miss
                        );
                        println!(
                            "    allocs {}   alloc_fail {}   expired {}   slow_path {}",
                            c.allocs, c.alloc_fail, c.expired, c.slow_path
                        );
                    }
                }
            }
        }
        Cmd::Fdb(FdbCmd::Show { name, out }) => {
            let mut bridges = match name.as_deref() {
                Some(n) => vec![Bridge::open(&net, n).await?],
                None => Bridge::list(&net).await?,
            };
            let mut rows = Vec::new();
            for br in &mut bridges {
                rows.extend(fdb::show(&net, br).await?);
            }
            if out.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("BRIDGE   MAC               PORT             FLAGS     AGE(s)");
                for r in &rows {
                    println!(
                        "{:<8} {:<17} {:<16} {:<7} {:>8.1}",
                        r.bridge,
                        r.mac,
                        r.port,
                        if r.is_static { "static" } else { "learned" },
                        r.age
                    );
                }
            }
        }
        Cmd::Log { name, follow } => {
            let br = Bridge::open_or_only(&net, name.as_deref()).await?;
            let logger = LinePrinter {
                bridge: br.name.clone(),
            };
            let mut reader = aya_log::EbpfLogger::init_from_id_with_logger(br.xdp_prog_id, logger)
                .with_context(|| format!("opening the log ring of bridge {}", br.name))?;
            loop {
                reader.flush();
                if !follow {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        Cmd::Nat(NatCmd::Show { name, out }) => {
            let mut bridges = match name.as_deref() {
                Some(n) => vec![Bridge::open(&net, n).await?],
                None => Bridge::list(&net).await?,
            };
            let mut rows = Vec::new();
            for br in &mut bridges {
                rows.extend(umlbr::nat::show(br)?);
            }
            if out.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<8} {:<5} {:<21} {:<21} {:<21} {:<12} {:>7} {:>10}",
                    "BRIDGE",
                    "PROTO",
                    "INSIDE",
                    "OUTSIDE",
                    "REMOTE",
                    "STATE",
                    "AGE(s)",
                    "EXPIRES(s)"
                );
                for r in &rows {
                    println!(
                        "{:<8} {:<5} {:<21} {:<21} {:<21} {:<12} {:>7.1} {:>10.0}",
                        r.bridge,
                        r.protocol,
                        r.inside,
                        r.outside,
                        r.remote,
                        r.state,
                        r.age,
                        r.expires_in
                    );
                }
            }
        }
        Cmd::Fdb(FdbCmd::Add {
            mac,
            iface,
            is_static,
        }) => {
            let b = fdb::add(&net, &mac, &iface, is_static).await?;
            let m = umlbr::link::parse_mac(&mac)?;
            eprintln!("{} -> {iface} added to {b}", fmt_mac(&m));
        }
        Cmd::Fdb(FdbCmd::Del { mac, bridge }) => {
            let b = fdb::del(&net, &mac, bridge.as_deref()).await?;
            eprintln!("{mac} removed from {b}");
        }
    }
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

async fn views(net: &Net, name: Option<&str>) -> Result<Vec<stats::BridgeView>> {
    let bridges = match name {
        Some(n) => vec![Bridge::open(net, n).await?],
        None => Bridge::list(net).await?,
    };
    let mut out = Vec::new();
    for br in &bridges {
        out.push(
            stats::view(net, br)
                .await
                .with_context(|| format!("bridge {}", br.name))?,
        );
    }
    Ok(out)
}

/// One named bridge prints as an object, otherwise an array.
fn print_json(views: &[stats::BridgeView], one: bool) -> Result<()> {
    let s = if one {
        serde_json::to_string_pretty(&views[0])?
    } else {
        serde_json::to_string_pretty(views)?
    };
    println!("{s}");
    Ok(())
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
