//! Topologies: taps in a network namespace of their own, switched by one
//! contender. The namespace (and with it the taps, the bridge and every
//! BPF program attached to them) is deleted when the topology is dropped,
//! also on error.
use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use umlbr_tests::{
    netns::{self, Netns},
    wire::Mac,
};

/// Who switches the frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Contender {
    /// Linux bridge with the taps as ports; bridge netfilter as the kernel
    /// has it (net.bridge.bridge-nf-call-* = 1 in a new namespace).
    Kernel,
    /// The same with net.bridge.bridge-nf-call-{iptables,ip6tables,arptables} = 0
    /// (per network namespace on this kernel).
    KernelTuned,
    /// `umlbr up br0` and `umlbr attach` of every tap: XDP and TC.
    Umlbr,
    /// umlbr with the XDP program removed from the taps after `attach`
    /// (`ip link set dev TAP xdp off`): only the tcx program switches.
    UmlbrTc,
    /// The floor of any switch on the same hooks: on each tap of a pair
    /// (tap0 and tap1, tap2 and tap3, ...) a three-instruction native XDP
    /// program `return bpf_redirect(peer, 0)`: no learning, no lookup, no
    /// counters. Unicast tap-to-tap rows, and the uplink rows (there as
    /// tcx programs between tap0 and up0, the hooks umlbr uses for a veth
    /// uplink).
    Redirect,
    /// No switch: a native-mode XDP program that drops every frame on each
    /// writer's tap. What the writers alone can do.
    Ceiling,
}

impl Contender {
    pub const ALL: [Contender; 6] = [
        Contender::Kernel,
        Contender::KernelTuned,
        Contender::Umlbr,
        Contender::UmlbrTc,
        Contender::Redirect,
        Contender::Ceiling,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Contender::Kernel => "kernel",
            Contender::KernelTuned => "kernel-tuned",
            Contender::Umlbr => "umlbr",
            Contender::UmlbrTc => "umlbr-tc",
            Contender::Redirect => "redirect",
            Contender::Ceiling => "ceiling",
        }
    }

    pub fn is_umlbr(self) -> bool {
        matches!(self, Contender::Umlbr | Contender::UmlbrTc)
    }
}

pub const BRIDGE: &str = "br0";

/// A topology: taps tap0..tapN-1 in a fresh namespace, switched by one
/// contender.
pub struct Topo {
    // Dropped first: the ceiling's and the redirect floor's XDP links.
    _xdp_links: Vec<OwnedFd>,
    pub ns: Netns,
    pub contender: Contender,
    pub taps: Vec<String>,
    /// Wall time of each port's attach command (`ip link set TAP master
    /// br0` or `umlbr attach TAP`), seconds.
    pub attach_s: Vec<f64>,
    /// Wall time of creating the bridge (`umlbr up br0`, or `ip link add
    /// br0 type bridge ...` and `ip link set br0 up` in one shell), seconds.
    pub up_s: f64,
    umlbr: PathBuf,
    /// NAT topologies: the "LAN" namespace behind the uplink, and the
    /// gateway's (br0's) MAC.
    pub lan: Option<Netns>,
    pub gw_mac: Option<Mac>,
}

/// The NAT topology's addresses: guests on 192.168.2.0/24 behind br0
/// (192.168.2.1), the host's uplink `up0` 10.99.0.1/24 on a veth whose
/// peer `lan0` (10.99.0.2/24) is in the LAN namespace.
pub const NAT_GW: &str = "192.168.2.1";
pub const NAT_GW_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 1);
pub const NAT_GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 10);
pub const NAT_LAN_HOST: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// The LAN host's MAC where up0 is a tap.
pub const NAT_LAN_MAC: Mac = [0x02, 0xb2, 0, 0, 0, 2];

/// What the masquerade's uplink up0 is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uplink {
    Veth,
    Tap,
}

impl Topo {
    /// `ntaps` taps; for the ceiling, `drop_on` are the taps that get the
    /// XDP drop program.
    pub fn new(
        contender: Contender,
        ntaps: usize,
        drop_on: &[usize],
        umlbr: &Path,
    ) -> Result<Topo> {
        let ns = Netns::new("bench")?;
        let taps: Vec<String> = (0..ntaps).map(|i| format!("tap{i}")).collect();
        let mut script = String::from(
            "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1\n",
        );
        for t in &taps {
            script.push_str(&format!(
                "ip tuntap add dev {t} mode tap && ip link set dev {t} up\n"
            ));
        }
        ns.sh(&format!("set -e\n{script}"))
            .context("creating the taps")?;
        let mut topo = Topo {
            _xdp_links: Vec::new(),
            ns,
            contender,
            taps,
            attach_s: Vec::new(),
            up_s: 0.0,
            umlbr: umlbr.to_path_buf(),
            lan: None,
            gw_mac: None,
        };
        topo.setup(drop_on)
            .with_context(|| format!("setting up {}", contender.as_str()))?;
        Ok(topo)
    }

    /// `ntaps` taps where tap0 floods the others: the contender's bridge,
    /// or for the redirect floor a native XDP program on tap0 that
    /// broadcasts every frame to the other taps through a devmap.
    pub fn flood(contender: Contender, ntaps: usize, umlbr: &Path) -> Result<Topo> {
        if contender != Contender::Redirect {
            let topo = Topo::new(contender, ntaps, &[], umlbr)?;
            // What a flood costs, not what storm control drops.
            topo.unlimited(&topo.taps[0])?;
            return Ok(topo);
        }
        // No pairs: Ceiling's setup with nothing to drop, then the flood.
        let mut topo = Topo::new(Contender::Ceiling, ntaps, &[], umlbr)?;
        topo.contender = Contender::Redirect;
        let others = topo.taps[1..].to_vec();
        let fd = xdp_link(&topo.ns.name, &topo.taps[0], XdpAction::Broadcast(others))?;
        topo._xdp_links.push(fd);
        Ok(topo)
    }

    /// The redirect floor on the TC hook: `ntaps` taps, a tcx program on
    /// each of a pair that `bpf_redirect`s every skb out of the other.
    /// For frames that never take native XDP (GSO super-frames), where
    /// umlbr switches in TC too.
    pub fn tc_redirect(ntaps: usize, umlbr: &Path) -> Result<Topo> {
        let mut topo = Topo::new(Contender::Ceiling, ntaps, &[], umlbr)?;
        topo.contender = Contender::Redirect;
        for i in 0..topo.taps.len() & !1 {
            let peer = XdpAction::Redirect(topo.taps[i ^ 1].clone());
            let fd = tcx_link(&topo.ns.name, &topo.taps[i], peer)?;
            topo._xdp_links.push(fd);
        }
        Ok(topo)
    }

    /// The redirect floor for the guest pairs: taps 0 and 1 (legacy
    /// guests, whose frames take tun's native XDP path) redirect to each
    /// other in XDP, taps 2 and 3 (vector guests: GSO super-frames, which
    /// umlbr switches in TC) in tcx. The hooks umlbr uses for each.
    pub fn guest_redirect(umlbr: &Path) -> Result<Topo> {
        let mut topo = Topo::new(Contender::Ceiling, 4, &[], umlbr)?;
        topo.contender = Contender::Redirect;
        for i in 0..4 {
            let peer = XdpAction::Redirect(topo.taps[i ^ 1].clone());
            let fd = if i < 2 {
                xdp_link(&topo.ns.name, &topo.taps[i], peer)?
            } else {
                tcx_link(&topo.ns.name, &topo.taps[i], peer)?
            };
            topo._xdp_links.push(fd);
        }
        Ok(topo)
    }

    /// Guests on `ntaps` taps behind a gateway bridge that masquerades
    /// them through the uplink up0: the seed's recipe (Linux bridge with an
    /// address, ip_forward, `iptables -t nat -A POSTROUTING -s
    /// 192.168.2.0/24 -o up0 -j MASQUERADE`) or `umlbr up br0 --address
    /// 192.168.2.1/24 --masquerade up0`.
    ///
    /// With `Uplink::Veth` the LAN host is a namespace behind a veth pair;
    /// with `Uplink::Tap`, up0 is a tap (a NIC that takes XDP frames, as a
    /// real one does: umlbr keeps a veth uplink on TC) whose reader plays
    /// the wire, with a permanent neighbour entry for the LAN host.
    ///
    /// For the redirect floor: no gateway and no translation, a program on
    /// each guest tap that redirects every frame to up0 (native XDP to a
    /// tap uplink, tcx to a veth one, the hooks umlbr translates on): what
    /// forwarding guest→uplink costs before any NAT work.
    pub fn nat(contender: Contender, ntaps: usize, uplink: Uplink, umlbr: &Path) -> Result<Topo> {
        if contender == Contender::Ceiling {
            bail!("no NAT topology for {}", contender.as_str());
        }
        let ns = Netns::new("bench")?;
        let lan = match uplink {
            Uplink::Veth => Some(Netns::new("bench")?),
            Uplink::Tap => None,
        };
        let taps: Vec<String> = (0..ntaps).map(|i| format!("tap{i}")).collect();
        let mut script = String::from(
            "set -e
             sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
",
        );
        match &lan {
            Some(lan) => script.push_str(&format!(
                "ip link add up0 type veth peer name lan0 netns {}\n",
                lan.name
            )),
            None => script.push_str("ip tuntap add dev up0 mode tap\n"),
        }
        script.push_str("ip addr add 10.99.0.1/24 dev up0\nip link set up0 up\n");
        if lan.is_none() {
            script.push_str(&format!(
                "ip neigh replace {NAT_LAN_HOST} lladdr {} dev up0 nud permanent\n",
                umlbr_tests::wire::fmt_mac(&NAT_LAN_MAC)
            ));
        }
        for t in &taps {
            script.push_str(&format!(
                "ip tuntap add dev {t} mode tap && ip link set dev {t} up\n"
            ));
        }
        ns.sh(&script).context("creating the taps and the uplink")?;
        if let Some(lan) = &lan {
            lan.sh(&format!(
                "set -e
                 sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
                 ip addr add {NAT_LAN_HOST}/24 dev lan0
                 ip link set lan0 up"
            ))
            .context("setting up the LAN namespace")?;
        }
        let mut topo = Topo {
            _xdp_links: Vec::new(),
            ns,
            contender,
            taps,
            attach_s: Vec::new(),
            up_s: 0.0,
            umlbr: umlbr.to_path_buf(),
            lan,
            gw_mac: None,
        };
        let bin = topo.umlbr.to_string_lossy().into_owned();
        match contender {
            Contender::Kernel | Contender::KernelTuned => {
                if contender == Contender::KernelTuned {
                    topo.ns
                        .sh("sysctl -qw net.bridge.bridge-nf-call-iptables=0 \
                         net.bridge.bridge-nf-call-ip6tables=0 \
                         net.bridge.bridge-nf-call-arptables=0")?;
                }
                topo.ns.sh(&format!(
                    "set -e
                     ip link add {BRIDGE} type bridge stp_state 0 forward_delay 0 mcast_snooping 0
                     ip addr add {NAT_GW}/24 dev {BRIDGE}
                     ip link set dev {BRIDGE} up
                     sysctl -qw net.ipv4.ip_forward=1
                     iptables -t nat -A POSTROUTING -s 192.168.2.0/24 -o up0 -j MASQUERADE"
                ))?;
                for t in topo.taps.clone() {
                    let s = topo.timed("ip", &["link", "set", "dev", &t, "master", BRIDGE])?;
                    topo.attach_s.push(s);
                }
            }
            Contender::Umlbr | Contender::UmlbrTc => {
                let gw = format!("{NAT_GW}/24");
                // No per-guest quota: the table row fills 100 000 flows
                // from one guest, as the recipe (no connlimit) takes them.
                // A new mapping is still counted against its port.
                let mut up = vec!["up", BRIDGE, "--address", &gw, "--masquerade", "up0"];
                // A umlbr from before the quota (a base build the bench
                // compares against) has no such flag, and no quota.
                if knows_flag(Path::new(&bin), "--nat-max-per-guest") {
                    up.extend(["--nat-max-per-guest", "0"]);
                }
                topo.timed(&bin, &up)?;
                for t in topo.taps.clone() {
                    let s = topo.timed(&bin, &["attach", &t, "--bridge", BRIDGE])?;
                    topo.attach_s.push(s);
                }
                if contender == Contender::UmlbrTc {
                    let script: String = topo
                        .taps
                        .iter()
                        .map(|t| format!("ip link set dev {t} xdp off\n"))
                        .collect();
                    topo.ns.sh(&format!("set -e\n{script}"))?;
                }
            }
            Contender::Redirect => {
                match &topo.lan {
                    // A veth uplink: tcx redirect, the hook umlbr
                    // translates on there. The guest addresses its frames
                    // to lan0's MAC (the veth peer drops any other) and
                    // the LAN host routes the untranslated source back.
                    Some(lan) => {
                        let mac = lan.sh("cat /sys/class/net/lan0/address")?;
                        let mac = mac.trim();
                        if mac.len() != 17 {
                            bail!("unexpected MAC of lan0: {mac:?}");
                        }
                        lan.sh("ip route add 192.168.2.0/24 dev lan0")?;
                        for t in topo.taps.clone() {
                            let to = XdpAction::Redirect("up0".into());
                            let fd = tcx_link(&topo.ns.name, &t, to)?;
                            topo._xdp_links.push(fd);
                        }
                        topo.gw_mac = Some(umlbr_tests::wire::mac(mac));
                    }
                    None => {
                        for t in topo.taps.clone() {
                            let to = XdpAction::Redirect("up0".into());
                            let fd = xdp_link(&topo.ns.name, &t, to)?;
                            topo._xdp_links.push(fd);
                        }
                        // Nobody answers the guest's ARP: any gateway MAC
                        // will do.
                        topo.gw_mac = Some([0x02, 0xb2, 0, 0, 0, 1]);
                    }
                }
                return Ok(topo);
            }
            Contender::Ceiling => unreachable!(),
        }
        let mac = topo
            .ns
            .sh(&format!("cat /sys/class/net/{BRIDGE}/address"))?;
        let mac = mac.trim();
        if mac.len() != 17 {
            bail!("unexpected MAC of {BRIDGE}: {mac:?}");
        }
        topo.gw_mac = Some(umlbr_tests::wire::mac(mac));
        Ok(topo)
    }

    /// Guests on `ntaps` taps bridged onto a LAN through the uplink up0, a
    /// veth whose peer lan0 is in the LAN namespace: a Linux bridge with
    /// tap0.. and up0 as ports, or `umlbr up br0 --uplink up0` and `umlbr
    /// attach` of the taps (umlbr switches a veth uplink with TC only).
    ///
    /// For the redirect floor, no bridge: tcx ingress programs on tap0 and
    /// up0 that `bpf_redirect` every skb to the other (the path umlbr takes
    /// with a veth uplink, minus all switching).
    pub fn uplink(contender: Contender, ntaps: usize, umlbr: &Path) -> Result<Topo> {
        if contender == Contender::Ceiling {
            bail!("no uplink topology for {}", contender.as_str());
        }
        let ns = Netns::new("bench")?;
        let lan = Netns::new("bench")?;
        let taps: Vec<String> = (0..ntaps).map(|i| format!("tap{i}")).collect();
        let v6off =
            "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1";
        let mut script = format!(
            "set -e\n{v6off}\nip link add up0 type veth peer name lan0 netns {}\nip link set up0 up\n",
            lan.name
        );
        for t in &taps {
            script.push_str(&format!(
                "ip tuntap add dev {t} mode tap && ip link set dev {t} up\n"
            ));
        }
        ns.sh(&script).context("creating the taps and the uplink")?;
        lan.sh(&format!("set -e\n{v6off}\nip link set lan0 up"))
            .context("setting up the LAN namespace")?;
        let mut topo = Topo {
            _xdp_links: Vec::new(),
            ns,
            contender,
            taps,
            attach_s: Vec::new(),
            up_s: 0.0,
            umlbr: umlbr.to_path_buf(),
            lan: Some(lan),
            gw_mac: None,
        };
        let bin = topo.umlbr.to_string_lossy().into_owned();
        match contender {
            Contender::Kernel | Contender::KernelTuned => {
                topo.setup(&[])?;
                topo.timed("ip", &["link", "set", "dev", "up0", "master", BRIDGE])?;
            }
            Contender::Umlbr | Contender::UmlbrTc => {
                topo.timed(&bin, &["up", BRIDGE, "--uplink", "up0"])?;
                for t in topo.taps.clone() {
                    let s = topo.timed(&bin, &["attach", &t, "--bridge", BRIDGE])?;
                    topo.attach_s.push(s);
                }
                if contender == Contender::UmlbrTc {
                    // The uplink too: its XDP program runs natively on a veth.
                    let script: String = topo
                        .taps
                        .iter()
                        .chain(std::iter::once(&"up0".to_string()))
                        .map(|t| format!("ip link set dev {t} xdp off\n"))
                        .collect();
                    topo.ns.sh(&format!("set -e\n{script}"))?;
                }
            }
            Contender::Redirect => {
                for (from, to) in [("tap0", "up0"), ("up0", "tap0")] {
                    let fd = tcx_link(&topo.ns.name, from, XdpAction::Redirect(to.into()))?;
                    topo._xdp_links.push(fd);
                }
            }
            Contender::Ceiling => unreachable!(),
        }
        Ok(topo)
    }

    /// umlbr's NAT counters (`umlbr stats br0 --json`, `nat.counters`).
    pub fn nat_counters(&self) -> Result<serde_json::Value> {
        if !self.contender.is_umlbr() {
            return Ok(serde_json::Value::Null);
        }
        let (out, _) = self.umlbr_out(&["stats", BRIDGE, "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("parsing umlbr stats")?;
        Ok(v["nat"]["counters"].clone())
    }

    fn setup(&mut self, drop_on: &[usize]) -> Result<()> {
        match self.contender {
            Contender::Kernel | Contender::KernelTuned => {
                if self.contender == Contender::KernelTuned {
                    self.ns
                        .sh("sysctl -qw net.bridge.bridge-nf-call-iptables=0 \
                         net.bridge.bridge-nf-call-ip6tables=0 \
                         net.bridge.bridge-nf-call-arptables=0")?;
                }
                let t0 = Instant::now();
                self.ns.sh(&format!(
                    "ip link add {BRIDGE} type bridge stp_state 0 forward_delay 0 && \
                     ip link set dev {BRIDGE} up"
                ))?;
                self.up_s = t0.elapsed().as_secs_f64();
                for t in self.taps.clone() {
                    let s = self.timed("ip", &["link", "set", "dev", &t, "master", BRIDGE])?;
                    self.attach_s.push(s);
                }
            }
            Contender::Umlbr | Contender::UmlbrTc => {
                let bin = self.umlbr.to_string_lossy().into_owned();
                self.up_s = self.timed(&bin, &["up", BRIDGE])?;
                for t in self.taps.clone() {
                    let s = self.timed(&bin, &["attach", &t, "--bridge", BRIDGE])?;
                    self.attach_s.push(s);
                }
                if self.contender == Contender::UmlbrTc {
                    let script: String = self
                        .taps
                        .iter()
                        .map(|t| format!("ip link set dev {t} xdp off\n"))
                        .collect();
                    self.ns.sh(&format!("set -e\n{script}"))?;
                }
            }
            Contender::Ceiling => {
                for &i in drop_on {
                    let fd = xdp_link(&self.ns.name, &self.taps[i], XdpAction::Drop)?;
                    self._xdp_links.push(fd);
                }
            }
            Contender::Redirect => {
                for i in 0..self.taps.len() & !1 {
                    let peer = XdpAction::Redirect(self.taps[i ^ 1].clone());
                    let fd = xdp_link(&self.ns.name, &self.taps[i], peer)?;
                    self._xdp_links.push(fd);
                }
            }
        }
        Ok(())
    }

    /// Run `program args` in the namespace; its wall time in seconds.
    fn timed(&self, program: &str, args: &[&str]) -> Result<f64> {
        let t0 = Instant::now();
        let out = self
            .ns
            .cmd(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program} {args:?}"))?;
        let s = t0.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "{program} {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(s)
    }

    /// `umlbr ARGS` in the namespace: stdout, and wall time in seconds.
    /// A tap for a guest with vnet headers (UML vector, virtio): umlbr
    /// attaches it TC only, as the README advises (generic XDP would copy
    /// each GSO super-frame first). Other contenders: nothing to do.
    /// The redirect floor's way back for a guest behind the veth uplink
    /// (`Topo::nat(Redirect, 1, Uplink::Veth)`): lan0 also holds the
    /// gateway's address, so the guest resolves its gateway to lan0, and
    /// up0's tcx ingress redirects every frame to tap0. Guest and LAN host
    /// then talk through bare `bpf_redirect` both ways, untranslated: what
    /// a guest→LAN connection costs before any NAT work.
    pub fn nat_floor_way_back(&mut self) -> Result<()> {
        if self.contender != Contender::Redirect {
            bail!("only the redirect floor routes guests without a gateway");
        }
        let lan = self
            .lan
            .as_ref()
            .context("the guest NAT floor needs the LAN namespace")?;
        lan.sh(&format!("ip addr add {NAT_GW}/32 dev lan0"))
            .context("giving lan0 the gateway's address")?;
        let tap = self.taps.first().context("no tap")?.clone();
        let fd = tcx_link(&self.ns.name, "up0", XdpAction::Redirect(tap))?;
        self._xdp_links.push(fd);
        Ok(())
    }

    pub fn for_vnet_guest(&self, tap: &str) -> Result<()> {
        if self.contender == Contender::Umlbr {
            self.umlbr_out(&["detach", tap])?;
            self.umlbr_out(&["attach", tap, "--bridge", BRIDGE, "--tc-only"])?;
        }
        Ok(())
    }

    /// Let `tap` learn and flood without limit (a guest port learns 256
    /// MACs and floods 1000 frames a second by default): for rows whose
    /// port stands for a whole LAN, and the flooding rows.
    pub fn unlimited(&self, tap: &str) -> Result<()> {
        let mut args = vec![
            "attach",
            tap,
            "--bridge",
            BRIDGE,
            "--max-learned",
            "0",
            "--flood-limit",
            "0",
        ];
        match self.contender {
            Contender::Umlbr => {}
            Contender::UmlbrTc => args.push("--tc-only"),
            _ => return Ok(()),
        }
        self.umlbr_out(&["detach", tap])?;
        self.umlbr_out(&args)?;
        Ok(())
    }

    pub fn umlbr_out(&self, args: &[&str]) -> Result<(String, f64)> {
        let t0 = Instant::now();
        let out = self
            .ns
            .cmd(&self.umlbr.to_string_lossy())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running umlbr {args:?}"))?;
        let s = t0.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "umlbr {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok((String::from_utf8_lossy(&out.stdout).into_owned(), s))
    }

    /// Which path switched the frames so far, summed over all ports
    /// (umlbr only): (xdp_native, xdp_generic, tc).
    pub fn paths(&self) -> Result<Paths> {
        if !self.contender.is_umlbr() {
            return Ok(Paths::default());
        }
        let (out, _) = self.umlbr_out(&["stats", BRIDGE, "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("parsing umlbr stats")?;
        let mut p = Paths::default();
        for port in v["ports"].as_array().into_iter().flatten() {
            let s = &port["stats"];
            p.native += s["xdp_native"].as_u64().unwrap_or(0);
            p.generic += s["xdp_generic"].as_u64().unwrap_or(0);
            p.tc += s["tc"].as_u64().unwrap_or(0);
            p.dropped += s["dropped"].as_u64().unwrap_or(0);
        }
        Ok(p)
    }

    /// Entries in the forwarding table, and how long listing them took
    /// (`umlbr fdb show br0 --json`, or `bridge fdb show br br0`), seconds.
    pub fn fdb_show(&self) -> Result<(usize, f64)> {
        match self.contender {
            Contender::Umlbr | Contender::UmlbrTc => {
                let (out, s) = self.umlbr_out(&["fdb", "show", BRIDGE, "--json"])?;
                let v: serde_json::Value =
                    serde_json::from_str(&out).context("parsing umlbr fdb show")?;
                Ok((v.as_array().map(|a| a.len()).unwrap_or(0), s))
            }
            Contender::Kernel | Contender::KernelTuned => {
                let t0 = Instant::now();
                let out = self
                    .ns
                    .cmd("bridge")
                    .args(["fdb", "show", "br", BRIDGE])
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output()
                    .context("running bridge fdb show")?;
                let s = t0.elapsed().as_secs_f64();
                // Learned entries only, like umlbr's (not the bridge's own
                // and multicast entries).
                let n = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.contains("permanent"))
                    .count();
                Ok((n, s))
            }
            Contender::Ceiling | Contender::Redirect => Ok((0, 0.0)),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Paths {
    pub native: u64,
    pub generic: u64,
    pub tc: u64,
    pub dropped: u64,
}

impl Paths {
    pub fn since(&self, before: &Paths) -> Paths {
        Paths {
            native: self.native.saturating_sub(before.native),
            generic: self.generic.saturating_sub(before.generic),
            tc: self.tc.saturating_sub(before.tc),
            dropped: self.dropped.saturating_sub(before.dropped),
        }
    }

    /// "xdp_native 99.9% / xdp_generic 0.0% / tc 0.1%".
    pub fn describe(&self) -> String {
        let total = (self.native + self.generic + self.tc).max(1) as f64;
        format!(
            "xdp_native {:.1}% / xdp_generic {:.1}% / tc {:.1}%",
            100.0 * self.native as f64 / total,
            100.0 * self.generic as f64 / total,
            100.0 * self.tc as f64 / total
        )
    }
}

// bpf(2) commands, types and flags (include/uapi/linux/bpf.h, if_link.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 4;
const XDP_DROP: i32 = 1;
const BPF_FUNC_REDIRECT: u32 = 23;
const BPF_FUNC_REDIRECT_MAP: u32 = 51;

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<OwnedFd> {
    // SAFETY: bpf(2) with a zero-padded attribute buffer of 128 bytes.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn put_u32(a: &mut [u8; 128], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(a: &mut [u8; 128], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// What the bench's own XDP programs do.
#[derive(Clone, Debug)]
pub enum XdpAction {
    /// `r0 = XDP_DROP; exit`
    Drop,
    /// `r1 = ifindex of the named interface; r2 = 0; call bpf_redirect; exit`
    Redirect(String),
    /// `r1 = devmap of the named interfaces; r2 = 0;
    /// r3 = BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS; call bpf_redirect_map;
    /// exit`: a flood with no switching work.
    Broadcast(Vec<String>),
}

/// Attach a bench program in driver mode to `iface` in `netns` through a
/// BPF link: it stays attached while the returned descriptor is open.
/// (A few instructions by hand: there is no C compiler for BPF here, and
/// umlbr's object has no such programs.)
pub fn xdp_link(netns: &str, iface: &str, action: XdpAction) -> Result<OwnedFd> {
    bench_link(netns, iface, action, false)
}

/// The same program as a tcx ingress classifier on `iface`
/// (`bpf_redirect` sends the skb out of the target).
pub fn tcx_link(netns: &str, iface: &str, action: XdpAction) -> Result<OwnedFd> {
    bench_link(netns, iface, action, true)
}

fn bench_link(netns: &str, iface: &str, action: XdpAction, tcx: bool) -> Result<OwnedFd> {
    let (netns, iface) = (netns.to_string(), iface.to_string());
    // Namespaced lookups (the ifindex) happen in a thread inside the namespace.
    std::thread::spawn(move || -> Result<OwnedFd> {
        netns::enter(&netns)?;
        let ifindex = netns::ifindex(&iface)?;
        // mov64 dst, imm: opcode 0xb7, dst register in the low nibble of byte 1.
        let mov = |dst: u8, imm: u32| {
            u64::from_le_bytes([0xb7, dst, 0, 0, 0, 0, 0, 0]) | ((imm as u64) << 32)
        };
        let exit = u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]);
        // The flood's devmap: the program holds it once loaded.
        let mut _map: Option<OwnedFd> = None;
        let insns: Vec<u64> = match &action {
            XdpAction::Drop => vec![mov(0, XDP_DROP as u32), exit],
            XdpAction::Redirect(peer) => vec![
                mov(1, netns::ifindex(peer)?),
                mov(2, 0),
                // call imm: opcode 0x85
                u64::from_le_bytes([0x85, 0, 0, 0, 0, 0, 0, 0])
                    | ((BPF_FUNC_REDIRECT as u64) << 32),
                exit,
            ],
            XdpAction::Broadcast(ports) => {
                let map = devmap_of(ports)?;
                let fd = map.as_raw_fd() as u32;
                _map = Some(map);
                vec![
                    // ld_imm64 r1, map fd (src_reg BPF_PSEUDO_MAP_FD = 1)
                    u64::from_le_bytes([0x18, 0x11, 0, 0, 0, 0, 0, 0]) | ((fd as u64) << 32),
                    0,
                    mov(2, 0),
                    mov(3, 8 | 16),
                    u64::from_le_bytes([0x85, 0, 0, 0, 0, 0, 0, 0])
                        | ((BPF_FUNC_REDIRECT_MAP as u64) << 32),
                    exit,
                ]
            }
        };
        let license = c"GPL";
        let mut attr = [0u8; 128];
        let (prog_type, attach_type) = if tcx {
            (BPF_PROG_TYPE_SCHED_CLS, BPF_TCX_INGRESS)
        } else {
            (BPF_PROG_TYPE_XDP, BPF_XDP)
        };
        put_u32(&mut attr, 0, prog_type);
        put_u32(&mut attr, 4, insns.len() as u32);
        put_u64(&mut attr, 8, insns.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        let name: &[u8] = match &action {
            XdpAction::Drop => b"bench_drop",
            XdpAction::Redirect(_) => b"bench_redirect",
            XdpAction::Broadcast(_) => b"bench_flood",
        };
        attr[48..48 + name.len()].copy_from_slice(name);
        put_u32(&mut attr, 68, attach_type);
        let prog = bpf(BPF_PROG_LOAD, &mut attr)
            .with_context(|| format!("loading the bench's XDP program ({action:?})"))?;
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
        put_u32(&mut attr, 4, ifindex);
        put_u32(&mut attr, 8, attach_type);
        put_u32(&mut attr, 12, if tcx { 0 } else { XDP_FLAGS_DRV_MODE });
        bpf(BPF_LINK_CREATE, &mut attr).with_context(|| {
            format!(
                "attaching the bench's {} program to {iface}",
                if tcx {
                    "tcx ingress"
                } else {
                    "XDP (driver mode)"
                }
            )
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the XDP loader thread panicked"))?
}

/// The XDP program on `iface`: its id (from `ip -j -d link show`).
pub fn xdp_prog_id(ns: &Netns, iface: &str) -> Result<Option<u32>> {
    let out = ns.sh(&format!("ip -j -d link show dev {iface}"))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j link")?;
    Ok(v[0]["xdp"]["prog"]["id"].as_u64().map(|i| i as u32))
}

/// Run time and run count of a BPF program, as its fdinfo shows them
/// (counted only while kernel.bpf_stats_enabled is 1).
pub fn prog_run_stats(id: u32) -> Result<(u64, u64)> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, id);
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)
        .with_context(|| format!("opening BPF program {id}"))?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim_start_matches(':').trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("run_time_ns"), field("run_cnt")))
}

/// Whether `umlbr up --help` of `bin` names `flag`.
fn knows_flag(bin: &Path, flag: &str) -> bool {
    std::process::Command::new(bin)
        .args(["up", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

/// Turns kernel.bpf_stats_enabled on while alive (it is global, and it
/// costs every program two clock reads per run: never on during a rate
/// measurement).
pub struct BpfStats {
    was: String,
}

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";
        let was = std::fs::read_to_string(PATH)
            .context("reading kernel.bpf_stats_enabled")?
            .trim()
            .to_string();
        std::fs::write(PATH, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats { was })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.was);
    }
}

/// A BPF_MAP_TYPE_DEVMAP_HASH holding `ports` (in the calling thread's
/// namespace), keyed and valued by ifindex.
fn devmap_of(ports: &[String]) -> Result<OwnedFd> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_TYPE_DEVMAP_HASH: u32 = 25;
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_MAP_TYPE_DEVMAP_HASH);
    put_u32(&mut attr, 4, 4);
    put_u32(&mut attr, 8, 4);
    put_u32(&mut attr, 12, ports.len().max(1) as u32);
    let map = bpf(BPF_MAP_CREATE, &mut attr).context("creating the flood floor's devmap")?;
    for p in ports {
        let i = netns::ifindex(p)?;
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, map.as_raw_fd() as u32);
        put_u64(&mut attr, 8, &i as *const u32 as u64);
        put_u64(&mut attr, 16, &i as *const u32 as u64);
        // SAFETY: bpf(2) with a zero-padded attribute buffer; no fd comes back.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_ELEM,
                attr.as_mut_ptr(),
                attr.len(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("adding {p} to the devmap"));
        }
    }
    Ok(map)
}

/// Delete bench namespaces left by a bench run that died (their pid is
/// gone): `umlbrt-bench-<pid>-<n>`.
pub fn clean_stale() {
    for name in netns::stale() {
        if name.starts_with("umlbrt-bench-") {
            netns::delete(&name);
            eprintln!("bench: deleted stale namespace {name}");
        }
    }
}
