//! What the read commands print: a table on stdout, or only JSON.
use anyhow::Result;
use serde::Serialize;
use umlbr::{
    dhcp::LeaseRow,
    fdb::FdbRow,
    nat::NatRow,
    rates::Rates,
    stats::{BridgeView, NatView, PortView},
    upgrade::Preview,
};

/// Print `value` as JSON, alone on stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// One named bridge prints as an object, otherwise an array.
pub fn views_json(views: &[BridgeView], one: bool) -> Result<()> {
    match views {
        [v] if one => json(v),
        _ => json(views),
    }
}

/// `show`: bridges and their ports.
pub fn show(views: &[BridgeView]) {
    if views.is_empty() {
        println!("no bridges (create one with `umlbr up NAME`)");
    }
    for v in views {
        // 0: made before the version was stored (version 1's maps).
        let layout = match v.layout_version {
            0 => "v1 (not stored)".to_string(),
            n => format!("v{n}"),
        };
        println!(
            "{}  host {}  switch port {}  aging {} s  {} MACs  layout {layout}",
            v.name, v.host_interface, v.switch_port, v.aging_secs, v.fdb_entries
        );
        println!(
            "  PORT             IFINDEX  KIND   XDP      TC    STATE  MACS/MAX   SECURITY  VLAN"
        );
        for p in &v.ports {
            let max = match p.max_learned {
                0 => "-".to_string(),
                m => m.to_string(),
            };
            let macs = format!("{}/{max}", p.learned_macs);
            println!(
                "  {:<16} {:>7}  {:<6} {:<8} {:<5} {:<6} {macs:<10} {}  {}",
                p.name,
                p.ifindex,
                p.kind,
                p.xdp.as_str(),
                p.tc,
                if p.up { "up" } else { "down" },
                security(p),
                p.vlans,
            );
        }
        if let Some(n) = &v.nat {
            masquerade(n);
        }
        services(v);
    }
}

/// A bridge's addresses and DHCP service, as `show` prints them.
fn services(v: &BridgeView) {
    if !v.addresses.is_empty() {
        println!("  addresses {}", v.addresses.join(", "));
    }
    if let Some(d) = &v.dhcp {
        let what = match (&d.range, d.router) {
            (Some(r), Some(gw)) => format!("range {r}, router and DNS {gw}, IPv6 RA"),
            _ => "IPv6 RA only (no IPv4 address)".into(),
        };
        let pid = match d.pid {
            Some(p) => format!("dnsmasq pid {p}"),
            None => "dnsmasq NOT running (`umlbr watch` restarts it)".into(),
        };
        println!("  dhcp {what} ({pid})");
    }
}

/// `leases`: dynamic and static DHCP leases.
pub fn leases(rows: &[LeaseRow]) {
    if rows.is_empty() {
        println!("no leases");
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    println!(
        "BRIDGE           MAC                ADDRESS          HOSTNAME         EXPIRES   STATIC"
    );
    for r in rows {
        let expires = match r.expires {
            None => "-".to_string(),
            Some(0) => "never".to_string(),
            Some(t) => format!("{}s", t.saturating_sub(now)),
        };
        println!(
            "{:<16} {:<18} {:<16} {:<16} {:<9} {}",
            r.bridge,
            r.mac,
            r.address,
            r.hostname.as_deref().unwrap_or("-"),
            expires,
            if r.is_static { "yes" } else { "no" }
        );
    }
}

/// A port's security settings, as `attach` took them, beside its
/// learning limit (MACS/MAX): `isolated`, `floods<=N/s` (storm control),
/// `locked mac=M,... ip=A,...` (port security), `-` for none.
fn security(p: &PortView) -> String {
    let mut out = Vec::new();
    if p.isolated {
        out.push("isolated".to_string());
    }
    if p.flood_limit != 0 {
        out.push(format!("floods<={}/s", p.flood_limit));
    }
    let mut s = if out.is_empty() && !p.locked {
        "-".to_string()
    } else {
        out.join(",")
    };
    if p.locked {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(&format!("locked mac={}", p.macs.join(",")));
        if !p.ips.is_empty() {
            s.push_str(&format!(" ip={}", p.ips.join(",")));
        }
    }
    s
}

/// `stats`: per-port counters, and the masquerade's.
pub fn stats(views: &[BridgeView]) {
    for v in views {
        println!("{}", v.name);
        println!(
            "  PORT                RX_PKTS     RX_BYTES  FORWARDED   FLOODED  DROPPED INVALID HAIRPIN SPOOFED  LOCKED IP_LOCKED ISOLATED   STORM NAT_QUOTA    VLAN LEARNED LIMITED XDP_NATIVE XDP_GENERIC       TC    TX_PKTS"
        );
        for p in &v.ports {
            let s = &p.stats.datapath;
            println!(
                "  {:<16} {:>10} {:>12} {:>10} {:>9} {:>8} {:>7} {:>7} {:>7} {:>7} {:>9} {:>8} {:>7} {:>9} {:>7} {:>7} {:>7} {:>10} {:>11} {:>8} {:>10}",
                p.name,
                s.rx_packets,
                s.rx_bytes,
                s.forwarded,
                s.flooded,
                s.dropped,
                s.invalid,
                s.hairpin,
                s.spoofed,
                s.locked,
                s.ip_locked,
                s.isolated,
                s.storm,
                s.nat_quota,
                s.vlan,
                s.learned,
                s.learn_limited,
                s.xdp_native,
                s.xdp_generic,
                s.tc,
                p.stats.tx_packets
            );
        }
        if let Some(n) = &v.nat {
            nat_counters(n);
        }
    }
}

/// The masquerade's settings, as `show` and `stats` print them.
fn masquerade(n: &NatView) {
    let quota = match n.max_per_guest {
        0 => "no limit".to_string(),
        m => format!("at most {m}"),
    };
    println!(
        "  masquerade via {} as {} (ports {}): {} mappings, {} per guest",
        n.uplink, n.address, n.ports, n.mappings, quota
    );
}

fn nat_counters(n: &NatView) {
    let c = &n.counters;
    masquerade(n);
    println!(
        "    out: xdp {} tc {}   in: xdp {} tc {}   icmp errors {}   in_miss {}",
        c.out_xdp, c.out_tc, c.in_xdp, c.in_tc, c.icmp_errors, c.in_miss
    );
    println!(
        "    allocs {}   alloc_fail {}   quota {}   expired {}   slow_path {}   bad_source {}   out_of_window {}   foreign {}",
        c.allocs,
        c.alloc_fail,
        c.quota,
        c.expired,
        c.slow_path,
        c.bad_source,
        c.out_of_window,
        c.foreign
    );
    println!(
        "    path mtu: frag_needed {}   too_big {}",
        c.frag_needed, c.too_big
    );
    for f in &n.forwards {
        println!(
            "    forward {} {} -> {}: {} flows mapped, {} live",
            f.protocol, f.outside, f.inside, f.hits, f.flows
        );
    }
    let c = &n.counters6;
    println!(
        "    ipv6 as {}: {} mappings   out: xdp {} tc {}   in: xdp {} tc {}   icmp errors {}   in_miss {}   allocs {}   slow_path {}   bad_source {}   no_addr {}",
        n.address6.as_deref().unwrap_or("(no address: dropped)"),
        n.mappings6,
        c.out_xdp,
        c.out_tc,
        c.in_xdp,
        c.in_tc,
        c.icmp_errors,
        c.in_miss,
        c.allocs,
        c.slow_path,
        c.bad_source,
        c.no_addr
    );
}

/// `fdb show`.
pub fn fdb(rows: &[FdbRow]) {
    println!("BRIDGE   MAC               VLAN PORT             FLAGS     AGE(s)");
    for r in rows {
        let vlan = match r.vlan {
            0 => "-".to_string(),
            v => v.to_string(),
        };
        println!(
            "{:<8} {:<17} {:>4} {:<16} {:<7} {:>8.1}",
            r.bridge,
            r.mac,
            vlan,
            r.port,
            if r.is_static { "static" } else { "learned" },
            r.age
        );
    }
}

/// `nat show`.
pub fn nat(rows: &[NatRow]) {
    println!(
        "{:<8} {:<5} {:<21} {:<21} {:<21} {:<12} {:>7} {:>10}",
        "BRIDGE", "PROTO", "INSIDE", "OUTSIDE", "REMOTE", "STATE", "AGE(s)", "EXPIRES(s)"
    );
    for r in rows {
        println!(
            "{:<8} {:<5} {:<21} {:<21} {:<21} {:<12} {:>7.1} {:>10.0}",
            r.bridge, r.protocol, r.inside, r.outside, r.remote, r.state, r.age, r.expires_in
        );
    }
}

/// `stats --watch`: one interval's per-port rates; `redraw` clears the
/// terminal first, so that the table stays in place.
pub fn rates(r: &Rates, redraw: bool) {
    let mut out = String::new();
    if redraw {
        // Cursor home, clear the screen.
        out.push_str("\x1b[H\x1b[2J");
    }
    out.push_str(&format!("every {:.1} s (Ctrl-C ends)\n", r.interval));
    if r.bridges.is_empty() {
        out.push_str("no bridges\n");
    }
    for b in &r.bridges {
        out.push_str(&format!(
            "{}\n  PORT                RX_PPS     RX_BYTES/s     TX_PPS     TX_BYTES/s  FORWARDED/s  FLOODED/s  DROPS/s\n",
            b.name
        ));
        for p in &b.ports {
            out.push_str(&format!(
                "  {:<16} {:>9.0} {:>14.0} {:>10.0} {:>14.0} {:>12.0} {:>10.0} {:>8.0}\n",
                p.name,
                p.rx_pps,
                p.rx_bytes_per_sec,
                p.tx_pps,
                p.tx_bytes_per_sec,
                p.forwarded_per_sec,
                p.flooded_per_sec,
                p.dropped_per_sec
            ));
        }
    }
    print!("{out}");
}

/// `upgrade --dry-run`: what an upgrade of one bridge would do.
pub fn upgrade_plan(p: &Preview) {
    let stored = if p.layout_stored == 0 {
        format!("{} (not stored: made before versions)", p.layout_from)
    } else {
        p.layout_from.to_string()
    };
    println!(
        "bridge {}: map layout version {stored} -> {}",
        p.bridge, p.layout_to
    );
    if p.resumes {
        println!("  completes an upgrade that was interrupted");
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    println!("  maps reused:   {}", list(&p.maps_reused));
    println!("  maps migrated: {}", list(&p.maps_migrated));
    println!("  maps new:      {}", list(&p.maps_new));
    println!("  programs replaced on: {}", list(&p.interfaces));
}

/// `forward show`.
pub fn forwards(rows: &[umlbr::forward::ForwardRow]) {
    println!(
        "{:<8} {:<5} {:<21} {:<21} {:>8} {:>6}",
        "BRIDGE", "PROTO", "OUTSIDE", "INSIDE", "HITS", "FLOWS"
    );
    for r in rows {
        println!(
            "{:<8} {:<5} {:<21} {:<21} {:>8} {:>6}",
            r.bridge, r.protocol, r.outside, r.inside, r.hits, r.flows
        );
    }
}
