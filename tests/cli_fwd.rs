//! `umlbr forward`: what it refuses (each error naming the bridge and the
//! reason), what it lists, the nftables rules it keeps beside the
//! datapath's map, and that forwards go with the masquerade. Root.
use anyhow::{Result, ensure};
use serde_json::Value;
use umlbr_tests::netns::Netns;

/// `umlbr ARGS` fails with exit status `code`, its stderr one line
/// holding every needle.
fn fails(ns: &Netns, args: &[&str], code: i32, needles: &[&str]) -> Result<()> {
    let out = ns.umlbr(args)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(code),
        "umlbr {args:?}: exit {:?}, want {code}: {err}",
        out.status.code()
    );
    for n in needles {
        ensure!(err.contains(n), "umlbr {args:?}: {err:?} lacks {n:?}");
    }
    Ok(())
}

fn show(ns: &Netns) -> Result<Value> {
    Ok(serde_json::from_str(
        &ns.umlbr_ok(&["forward", "show", "--json"])?,
    )?)
}

#[test]
fn forward_commands() -> Result<()> {
    let ns = Netns::without_ipv6("fwcli")?;
    ns.sh("ip tuntap add up0 mode tap && ip addr add 10.99.0.1/24 dev up0 && ip link set up0 up")?;
    ns.umlbr_ok(&["up", "br0", "--address", "192.168.2.1/24"])?;
    fails(
        &ns,
        &["forward", "add", "br0", "tcp", "8080", "192.168.2.10:80"],
        1,
        &["br0", "does not masquerade", "--masquerade"],
    )?;
    ns.umlbr_ok(&["down", "br0"])?;
    ns.umlbr_ok(&[
        "up",
        "br0",
        "--address",
        "192.168.2.1/24",
        "--masquerade",
        "up0",
        "--nat-ports",
        "61000-61999",
    ])?;
    // Usage errors: clap's value parsers, exit 2.
    for (args, needle) in [
        (["sctp", "80", "192.168.2.10:80"], "tcp or udp"),
        (["tcp", "0", "192.168.2.10:80"], "1-65535"),
        (["tcp", "80", "192.168.2.10"], "GUEST_ADDR:GUEST_PORT"),
        (["tcp", "80", "192.168.2.10:0"], "1-65535"),
    ] {
        let mut a = vec!["forward", "add", "br0"];
        a.extend(args);
        fails(&ns, &a, 2, &[needle])?;
    }
    for (to, needle) in [
        (
            "10.0.0.5:80",
            "not a guest address of the bridge's subnet 192.168.2.0/24",
        ),
        ("192.168.2.1:80", "not a guest address"),
        ("192.168.2.255:80", "not a guest address"),
        ("192.168.2.0:80", "not a guest address"),
    ] {
        fails(
            &ns,
            &["forward", "add", "br0", "tcp", "80", to],
            1,
            &["br0", needle],
        )?;
    }
    fails(
        &ns,
        &["forward", "add", "br0", "udp", "61500", "192.168.2.10:53"],
        1,
        &["port 61500", "61000-61999", "--nat-ports"],
    )?;
    ns.umlbr_ok(&["forward", "add", "br0", "tcp", "8080", "192.168.2.10:80"])?;
    ns.umlbr_ok(&["forward", "add", "br0", "udp", "8080", "192.168.2.11:53"])?;
    fails(
        &ns,
        &["forward", "add", "br0", "tcp", "8080", "192.168.2.12:80"],
        1,
        &[
            "tcp port 8080 is already forwarded (to 192.168.2.10:80)",
            "forward del",
        ],
    )?;
    let v = show(&ns)?;
    ensure!(
        v.as_array().map(|a| a.len()) == Some(2)
            && v[0]["protocol"] == "tcp"
            && v[0]["outside"] == "10.99.0.1:8080"
            && v[0]["inside"] == "192.168.2.10:80"
            && v[0]["hits"] == 0
            && v[1]["protocol"] == "udp",
        "forward show: {v}"
    );
    let text = ns.umlbr_ok(&["forward", "show", "br0"])?;
    ensure!(
        text.contains("10.99.0.1:8080") && text.contains("192.168.2.11:53"),
        "{text}"
    );
    // The kernel's path has the same forwards, and the hairpin rule.
    let nft = ns.sh("nft list table ip umlbr_br0")?;
    for rule in [
        "ip daddr 10.99.0.1 tcp dport 8080 dnat to 192.168.2.10:80",
        "ip daddr 10.99.0.1 udp dport 8080 dnat to 192.168.2.11:53",
        "oifname \"br0\" ip saddr 192.168.2.0/24 ct status dnat masquerade",
    ] {
        ensure!(nft.contains(rule), "nft table lacks {rule:?}:\n{nft}");
    }
    // stats shows them under the masquerade.
    let st: Value = serde_json::from_str(&ns.umlbr_ok(&["stats", "br0", "--json"])?)?;
    ensure!(
        st["nat"]["forwards"].as_array().map(|a| a.len()) == Some(2),
        "stats: {}",
        st["nat"]
    );
    ns.umlbr_ok(&["forward", "del", "br0", "tcp", "8080"])?;
    fails(
        &ns,
        &["forward", "del", "br0", "tcp", "8080"],
        1,
        &["br0 has no forward of tcp port 8080"],
    )?;
    let nft = ns.sh("nft list table ip umlbr_br0")?;
    ensure!(
        !nft.contains("tcp dport 8080") && nft.contains("udp dport 8080"),
        "{nft}"
    );
    // Forwards go with the masquerade.
    ns.umlbr_ok(&["detach", "up0"])?;
    ensure!(show(&ns)? == serde_json::json!([]), "after detach");
    ns.umlbr_ok(&["down", "br0"])?;
    Ok(())
}
