//! VLANs on the command line and in the config file: clap's checks of
//! the ids, `umlbr vlan` (the host port too), `fdb add/del --vlan`, the
//! VLAN columns of `show` and `fdb show`, `config NAME` and `apply`.
//! Runs the umlbr binary in namespaces of its own (tag `vl`). Needs root.
use anyhow::{Context, Result, ensure};
use serde_json::Value;
use umlbr_tests::netns::Netns;

fn json(ns: &Netns, args: &[&str]) -> Result<Value> {
    let out = ns.umlbr_ok(args)?;
    serde_json::from_str(&out).with_context(|| format!("umlbr {args:?}: not JSON: {out:?}"))
}

/// `umlbr args` fails with exit status `code`, its stderr naming each of
/// `needles`.
fn fails(ns: &Netns, args: &[&str], code: i32, needles: &[&str]) -> Result<()> {
    let out = ns.umlbr(args)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(code) && needles.iter().all(|n| err.contains(n)),
        "umlbr {args:?}: exit {}, stderr {err:?}; wanted {code} naming {needles:?}",
        out.status
    );
    Ok(())
}

fn port(ns: &Netns, name: &str) -> Result<Value> {
    let show = json(ns, &["show", "br0", "--json"])?;
    show["ports"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == name).cloned())
        .with_context(|| format!("no port {name} in {show}"))
}

/// (VLAN, port) of each entry of `mac`, sorted.
fn entries(ns: &Netns, mac: &str) -> Result<Vec<(u64, String)>> {
    let rows = json(ns, &["fdb", "show", "br0", "--json"])?;
    let mut v: Vec<(u64, String)> = rows
        .as_array()
        .context("fdb show --json")?
        .iter()
        .filter(|r| r["mac"] == mac)
        .map(|r| {
            (
                r["vlan"].as_u64().unwrap_or(9999),
                r["port"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort();
    Ok(v)
}

#[test]
fn vlan_ids_are_checked_by_clap() -> Result<()> {
    let ns = Netns::new("vl-clap")?;
    for bad in [
        &["attach", "tap0", "--vlan", "0"][..],
        &["attach", "tap0", "--vlan", "4095"],
        &["attach", "tap0", "--trunk", "10,4095"],
        &["attach", "tap0", "--trunk", "10,x"],
        &["attach", "tap0", "--pvid", "5"],
        &["attach", "tap0", "--vlan", "10", "--trunk", "20"],
        &["vlan", "tap0"],
        &["vlan", "tap0", "--none", "--vlan", "3"],
        &["fdb", "add", "02:00:00:00:00:01", "tap0", "--vlan", "4095"],
        &["publish", "br0", "--to", "lm100", "--vlan", "0"],
        &["publish", "br0", "--to", "lm100", "--vlan", "4095"],
    ] {
        fails(&ns, bad, 2, &[])?;
    }
    Ok(())
}

#[test]
fn vlans_of_ports_host_fdb_and_config() -> Result<()> {
    let ns = Netns::without_ipv6("vl-cli")?;
    for t in ["tap0", "tap1"] {
        ns.umlbr_ok(&["tap", "add", t])?;
    }
    ns.umlbr_ok(&["up", "br0"])?;
    ns.umlbr_ok(&["attach", "tap0", "--vlan", "10"])?;
    ns.umlbr_ok(&["attach", "tap1", "--trunk", "20,10", "--pvid", "30"])?;
    let p0 = port(&ns, "tap0")?;
    let p1 = port(&ns, "tap1")?;
    ensure!(
        p0["vlans"] == serde_json::json!({"pvid": 10, "tagged": []})
            && p1["vlans"] == serde_json::json!({"pvid": 30, "tagged": [10, 20]}),
        "show --json: {p0} {p1}"
    );
    let table = ns.umlbr_ok(&["show", "br0"])?;
    ensure!(
        table.contains("VLAN") && table.contains("10,20 pvid 30"),
        "show:\n{table}"
    );

    // The host port joins VLAN 10: its own MAC's static entry moves there.
    let host_mac = ns.sh("cat /sys/class/net/br0/address")?.trim().to_string();
    ensure!(
        entries(&ns, &host_mac)? == [(0, "br0".to_string())],
        "host entry before: {:?}",
        entries(&ns, &host_mac)?
    );
    ns.umlbr_ok(&["vlan", "br0", "--vlan", "10"])?;
    ensure!(
        entries(&ns, &host_mac)? == [(10, "br0".to_string())],
        "host entry after `vlan br0 --vlan 10`: {:?}",
        entries(&ns, &host_mac)?
    );

    // fdb add: the port must carry the VLAN; without one, every VLAN of
    // the port.
    let m = "02:00:00:00:00:99";
    fails(
        &ns,
        &["fdb", "add", m, "tap0", "--vlan", "20", "--static"],
        1,
        &["tap0", "VLAN 20"],
    )?;
    ns.umlbr_ok(&["fdb", "add", m, "tap1", "--static"])?;
    let want: Vec<(u64, String)> = [10, 20, 30].map(|v| (v, "tap1".to_string())).to_vec();
    ensure!(entries(&ns, m)? == want, "{:?}", entries(&ns, m)?);
    ns.umlbr_ok(&["fdb", "del", m, "--vlan", "20", "--bridge", "br0"])?;
    ensure!(entries(&ns, m)?.len() == 2, "{:?}", entries(&ns, m)?);
    ns.umlbr_ok(&["fdb", "del", m, "--bridge", "br0"])?;
    ensure!(entries(&ns, m)?.is_empty(), "{:?}", entries(&ns, m)?);
    let fdb_table = ns.umlbr_ok(&["fdb", "show", "br0"])?;
    ensure!(fdb_table.contains(" VLAN "), "fdb show:\n{fdb_table}");

    // The config file carries them, and `apply` changes them.
    let printed = ns.umlbr_ok(&["config", "br0"])?;
    ensure!(
        printed.contains("vlan = 10")
            && printed.contains("trunk = [10, 20]")
            && printed.contains("pvid = 30"),
        "config br0:\n{printed}"
    );
    let f = std::env::temp_dir().join(format!("{}-vlan.toml", ns.name));
    std::fs::write(&f, &printed)?;
    let plan = ns.umlbr_ok(&["apply", "--dry-run", f.to_str().unwrap()])?;
    ensure!(plan.is_empty(), "round trip plans:\n{plan}");
    ensure!(
        printed.contains("host_vlan = 10"),
        "config br0 lacks the host port's VLAN:\n{printed}"
    );
    let edited = printed
        .replace("host_vlan = 10", "host_trunk = [20]")
        .replace("\nvlan = 10", "\nvlan = 20");
    std::fs::write(&f, &edited)?;
    let plan = ns.umlbr_ok(&["apply", "--dry-run", f.to_str().unwrap()])?;
    ensure!(
        plan.contains("set the host port's VLANs to 20") && plan.contains("re-attach tap0"),
        "plan:\n{plan}"
    );
    ns.umlbr_ok(&["apply", f.to_str().unwrap()])?;
    let _ = std::fs::remove_file(&f);
    ensure!(
        port(&ns, "tap0")?["vlans"]["pvid"] == 20
            && port(&ns, "br0-sw")?["vlans"] == serde_json::json!({"pvid": 0, "tagged": [20]}),
        "after apply: {} {}",
        port(&ns, "tap0")?,
        port(&ns, "br0-sw")?
    );

    // Back to the default VLAN.
    ns.umlbr_ok(&["vlan", "tap1", "--none"])?;
    ensure!(
        port(&ns, "tap1")?["vlans"] == serde_json::json!({"pvid": 0, "tagged": []}),
        "after --none: {}",
        port(&ns, "tap1")?
    );
    Ok(())
}
