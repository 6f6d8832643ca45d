//! The hostile group: what one guest's flood costs another guest. A
//! victim flow, 64 B unicast from tap0 to the station on tap1 (both MACs
//! known to the switch), measured on one topology of three ports in one
//! repetition, alone and then while the guest on tap2 writes broadcasts
//! as fast as it can (a broadcast storm), alone again and then while it
//! writes frames from a new random source MAC each to a unicast MAC
//! nobody has (a MAC flood: unknown unicast, which a switch floods, and a
//! new source to learn with every frame). Each attack's ratio is over the
//! window just before it: the machine's load drifts less in a second.
//!
//! Both switches run as a guest's ports get them: the kernel bridge
//! learns every source and floods without limit; umlbr attaches with its
//! defaults (a guest port learns at most 256 MACs and floods at most 1000
//! frames a second plus a burst of 200: `--max-learned`, `--flood-limit`).
//! The redirect floor has no FDB and no flooding decision, and the
//! kernel-tuned and umlbr-tc variants are left out to keep the group
//! short: kernel and umlbr only.
//!
//! The flood's datagrams go to UDP port [`tap::FLOOD_UDP_PORT`]; the
//! victim's reader reads them (a guest has to) but counts them apart, so
//! the victim's rate is its own frames only. The flooder is one more
//! writer thread, pinned as the second flow's writer is everywhere in the
//! bench (CPU 1, where the victim's reader runs; the victim's writer has
//! CPU 0), started with the victim's writer and stopped at the end of the
//! row.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::Result;

use crate::{
    Cfg, Progress, check_interrupted, measured,
    report::{Results, Row, higher, lower},
    tap::{self, BROADCAST, TapMode, gen_mac, sink_mac, udp_frame},
    topo::{Contender, Topo},
    traffic::{self, GenSpec, Job, Outcome, SinkSpec},
};

/// The group's windows are at most this long: four windows of about
/// 1.3 s each (probe and warm-up included) per contender and repetition,
/// so the group adds about a minute to a full run (5 repetitions) and
/// half of that to a quick one.
const WINDOW: Duration = Duration::from_secs(1);
const WARMUP: Duration = Duration::from_millis(200);

/// A unicast MAC no port has: the MAC flood's destination.
const NOBODY: [u8; 6] = [0x02, 0xdd, 0, 0, 0, 1];

const ALONE: &[Row] = &[
    higher(
        "hostile_alone",
        "victim: 64 B tap0→tap1 alone (3 ports, tap2 idle; measured before each attack)",
        "kpps",
    ),
    lower(
        "hostile_alone_cpu",
        "victim alone: CPU per frame it got (its writer and reader threads)",
        "µs",
    ),
];

/// Per attack `{id}`: tap2 `{what}`; `{short}` names it.
const PER_ATTACK: &[Row] = &[
    higher("{id}", "victim: 64 B tap0→tap1 while tap2 {what}", "kpps"),
    higher(
        "{id}_ratio",
        "victim during the {short} / alone in the window just before",
        "×",
    ),
    lower(
        "{id}_cpu",
        "victim during the {short}: CPU per frame of its own it got (its writer and reader \
         threads, reading the flood's frames included)",
        "µs",
    ),
    lower(
        "{id}_leak",
        "{short}: its frames read by the victim's reader on tap1",
        "kpps",
    ),
    higher(
        "{id}_sent",
        "{short}: frames tap2's writer got into its tap (the attacker's rate, for reference)",
        "kpps",
    ),
];

#[derive(Clone, Copy)]
enum Attack {
    Broadcast,
    MacFlood,
}

/// Each attack: row id, what tap2 does, short name. The broadcast storm
/// first: the MAC flood leaves the kernel bridge with a big FDB.
const ATTACKS: [(Attack, &str, &str, &str); 2] = [
    (
        Attack::Broadcast,
        "hostile_bcast",
        "writes 64 B broadcasts (to ff:ff:ff:ff:ff:ff) as fast as it can",
        "broadcast storm",
    ),
    (
        Attack::MacFlood,
        "hostile_macflood",
        "writes 64 B frames, each from a new random source MAC, to a unicast MAC \
         nobody has (flooded as unknown unicast), as fast as it can",
        "MAC flood",
    ),
];

pub fn define_rows(cfg: &Cfg, res: &mut Results) {
    let _ = cfg;
    res.define_all("hostile", ALONE, &[]);
    for (_, id, what, short) in ATTACKS {
        let vars = [("id", id), ("what", what), ("short", short)];
        res.define_all("hostile", PER_ATTACK, &vars);
    }
}

pub fn run(cfg: &Cfg, p: &Progress, res: &mut Results) -> Result<()> {
    let c = p.contender;
    if !matches!(c, Contender::Kernel | Contender::Umlbr) {
        return Ok(());
    }
    let cfg = Cfg {
        window: cfg.window.min(WINDOW),
        warmup: cfg.warmup.min(WARMUP),
        ..cfg.clone()
    };
    let topo = Topo::new(c, 3, &[], &cfg.umlbr)?;
    res.note(
        "hostile_alone",
        format!(
            "windows of {:.2} s after {:.2} s of warm-up (the group's cap)",
            cfg.window.as_secs_f64(),
            cfg.warmup.as_secs_f64()
        ),
    );
    for (attack, id, _, short) in ATTACKS {
        check_interrupted()?;
        // Alone right before each attack, so that the ratio compares
        // windows a second apart (the machine's load drifts).
        let o = measured(
            &topo,
            p,
            res,
            "hostile_alone",
            &format!("victim alone (before the {short})"),
            || victim(&cfg, &topo, None),
        )?;
        let alone = victim_kpps(&o);
        res.add("hostile_alone", c, alone);
        res.add("hostile_alone_cpu", c, victim_cpu_us(&o));
        let a = o;
        check_interrupted()?;
        let before = umlbr_drops(&topo)?;
        let o = measured(&topo, p, res, id, &format!("victim, {short}"), || {
            victim(&cfg, &topo, Some(attack))
        })?;
        let dropped = umlbr_drops(&topo)?.map(|a| a.since(&before));
        let (kpps, leak, sent) = (
            victim_kpps(&o),
            o.received_flood[0] as f64 / o.secs / 1e3,
            o.gen_sent[1] as f64 / o.secs / 1e3,
        );
        res.add(id, c, kpps);
        if alone > 0.0 {
            res.add(&format!("{id}_ratio"), c, kpps / alone);
        }
        res.add(&format!("{id}_cpu"), c, victim_cpu_us(&o));
        res.add(&format!("{id}_leak"), c, leak);
        res.add(&format!("{id}_sent"), c, sent);
        // Who got the CPUs: the victim's writer (CPU 0), its reader and
        // the flooder (CPU 1), as shares of the window.
        let share = |cpu_s: f64, w: &Outcome| 100.0 * cpu_s / w.secs;
        let mut s = format!(
            "{:.2}× alone; the flooder wrote {sent:.0} kpps, {leak:.1} kpps of it read on tap1; \
             CPU: victim writer {:.0}% (alone {:.0}%), reader {:.0}% (alone {:.0}%), flooder {:.0}%",
            kpps / alone,
            share(o.gen_cpu_each[0], &o),
            share(a.gen_cpu_each[0], &a),
            share(o.sink_cpu_s, &o),
            share(a.sink_cpu_s, &a),
            share(o.gen_cpu_each[1], &o),
        );
        if let Some(d) = dropped {
            s.push_str(&format!(
                "; umlbr since the row began: storm {}, learn_limited {}",
                d.storm, d.learn_limited
            ));
        }
        p.say(&format!("{short}: victim"), &s);
    }
    Ok(())
}

/// CPU of the victim's threads (writer and reader) per frame of its own
/// the reader got, µs: what the victim pays, whatever share of the CPUs
/// the scheduler gave it (other work on the machine moves that share).
fn victim_cpu_us(o: &Outcome) -> f64 {
    match o.received[0] {
        0 => f64::NAN,
        n => (o.gen_cpu_each[0] + o.sink_cpu_s) * 1e6 / n as f64,
    }
}

/// The victim's frames the reader got, kpps.
fn victim_kpps(o: &Outcome) -> f64 {
    o.received[0] as f64 / o.secs / 1e3
}

/// One window of the victim flow tap0 → tap1, with tap2's flooder
/// writing beside it for an attack.
fn victim(cfg: &Cfg, topo: &Topo, attack: Option<Attack>) -> Result<Outcome> {
    let ip = |h| Ipv4Addr::new(192, 168, 2, h);
    let cpu = |i: usize| cfg.cpus.map(|n| i % n);
    let mut gens = vec![GenSpec {
        tap: topo.taps[0].clone(),
        frame: udp_frame(sink_mac(1), gen_mac(0), 64, 0),
        mode: TapMode::default(),
        cpu: cpu(0),
        hello: None,
        packet_ns: None,
        random_src: false,
    }];
    if let Some(a) = attack {
        let (dst, dst_ip) = match a {
            Attack::Broadcast => (BROADCAST, ip(255)),
            Attack::MacFlood => (NOBODY, ip(99)),
        };
        gens.push(GenSpec {
            tap: topo.taps[2].clone(),
            frame: tap::udp_frame_ports(
                dst,
                gen_mac(2),
                ip(12),
                dst_ip,
                10_002,
                tap::FLOOD_UDP_PORT,
                64,
            ),
            mode: TapMode::default(),
            // The second flow's writer, as in every row with two.
            cpu: cpu(1),
            hello: None,
            packet_ns: None,
            random_src: matches!(a, Attack::MacFlood),
        });
    }
    let job = Job {
        netns: topo.ns.name.clone(),
        gens,
        sinks: vec![SinkSpec {
            tap: topo.taps[1].clone(),
            mac: sink_mac(1),
            vnet_hdr: false,
            cpu: cpu(1),
            udp: None,
            packet_ns: None,
        }],
        warmup: cfg.warmup,
        window: cfg.window,
        probe: true,
    };
    let o = traffic::run(&job)?;
    if o.delivered() == 0 {
        anyhow::bail!("no frame of the victim's was delivered in the window");
    }
    Ok(o)
}

/// umlbr's drops by storm control and sources it did not learn, summed
/// over the ports (None for the kernel bridge).
#[derive(Clone, Copy, Default)]
struct Drops {
    storm: u64,
    learn_limited: u64,
}

impl Drops {
    fn since(&self, before: &Option<Drops>) -> Drops {
        let b = before.unwrap_or_default();
        Drops {
            storm: self.storm.saturating_sub(b.storm),
            learn_limited: self.learn_limited.saturating_sub(b.learn_limited),
        }
    }
}

fn umlbr_drops(topo: &Topo) -> Result<Option<Drops>> {
    if !topo.contender.is_umlbr() {
        return Ok(None);
    }
    let (out, _) = topo.umlbr_out(&["stats", crate::topo::BRIDGE, "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let mut d = Drops::default();
    for port in v["ports"].as_array().into_iter().flatten() {
        d.storm += port["stats"]["storm"].as_u64().unwrap_or(0);
        d.learn_limited += port["stats"]["learn_limited"].as_u64().unwrap_or(0);
    }
    Ok(Some(d))
}
