//! VLAN-aware ports (only in a bridge with `CFG_F_VLAN`): which VLAN a
//! frame belongs to on the way in (`classify_*`), whether and how it
//! leaves each port (`egress`), and the tag changes that makes, in XDP
//! (moving the MACs with `bpf_xdp_adjust_head`) and in TC (the skb's
//! out-of-band tag, `bpf_skb_vlan_push`/`pop`). Every function here is
//! called behind the bridge's flag, so a bridge without VLANs pays one
//! test of a flag it has loaded already.
//!
//! A class is packed in a u32: the VLAN id in the low 12 bits and the
//! frame's tag as it came in (`IN_*`) above, or `DROP`.
use aya_ebpf::{
    helpers::{bpf_skb_vlan_pop, bpf_skb_vlan_push, bpf_xdp_adjust_head},
    macros::map,
    maps::HashMap,
    programs::{TcContext, XdpContext},
};
use umlbr_common::{MAX_PORTS, MAX_XDP_FRAME, PortVlan};

use crate::hdr::{ETH_HLEN, ETH_P_8021Q, VLAN_HLEN};

/// Port ifindex -> its VLANs; a port without an entry is an access port
/// of the default VLAN 0.
#[map(name = "UMLBR_VLAN")]
static VLANS: HashMap<u32, PortVlan> = HashMap::with_max_entries(MAX_PORTS, 0);

/// The frame came in untagged: it belongs to the port's pvid.
pub const IN_UNTAGGED: u32 = 0;
/// The frame came in tagged with its VLAN's id.
pub const IN_TAGGED: u32 = 1 << 16;
/// Priority-tagged (VLAN id 0): untagged for the switch, but its tag is
/// there, to be removed or given the VLAN's id on the way out.
pub const IN_PRIORITY: u32 = 2 << 16;
pub const IN_MASK: u32 = 3 << 16;
/// The frame is untagged and in the host port's pvid: the masquerade's
/// gateway may take it (see `switch::for_gateway`).
pub const HOST_VLAN: u32 = 4 << 16;
/// Dropped: a VLAN the port does not carry, or a malformed tag.
pub const DROP: u32 = u32::MAX;

/// 802.1ad, as read from the packet into a little-endian u16.
const ETH_P_8021AD: u16 = 0xa888;

#[inline(always)]
pub fn vid(class: u32) -> u16 {
    (class & 0xfff) as u16
}

/// How a port sends a VLAN's frames.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// The port does not carry the VLAN.
    No,
    Untagged,
    Tagged,
}

/// The pvid of `port` (0 for a port without VLANs).
#[inline(always)]
pub fn pvid(port: u32) -> u16 {
    // SAFETY: read of a map value only userspace writes.
    VLANS.get_ptr(port).map_or(0, |v| unsafe { (*v).pvid })
}

/// How `port` sends frames of VLAN `vid`.
#[inline(always)]
pub fn egress(port: u32, vid: u16) -> Out {
    let Some(v) = VLANS.get_ptr(port) else {
        return if vid == 0 { Out::Untagged } else { Out::No };
    };
    // SAFETY: as in `pvid`.
    let v = unsafe { &*v };
    if v.pvid == vid {
        Out::Untagged
    } else if v.has_tagged(vid) {
        Out::Tagged
    } else {
        Out::No
    }
}

/// The class of a frame from `port` with tag `tci` (if it has one, of
/// TPID 802.1Q; `other_tpid`: a tag of another TPID). `host` is the host
/// port, for `HOST_VLAN`.
#[inline(always)]
fn classify(port: u32, tag: Option<u16>, other_tpid: bool, host: u32) -> u32 {
    // 802.1ad outside: umlbr's ports are 802.1Q ports, and a service tag
    // is no VLAN any of them carries (dropped, not passed as payload,
    // where a LAN switch might read it as its own).
    if other_tpid {
        return DROP;
    }
    let v = VLANS.get_ptr(port);
    // SAFETY: as in `pvid`.
    let (pvid, v) = match v {
        Some(v) => unsafe { ((*v).pvid, Some(&*v)) },
        None => (0, None),
    };
    let class = match tag.map(|t| t & 0xfff) {
        None => pvid as u32,
        Some(0) => pvid as u32 | IN_PRIORITY,
        Some(vid) if v.is_some_and(|v| v.has_tagged(vid) && vid != v.pvid) => {
            vid as u32 | IN_TAGGED
        }
        Some(_) => return DROP,
    };
    if class & IN_MASK == IN_UNTAGGED && self::pvid(host) == pvid {
        class | HOST_VLAN
    } else {
        class
    }
}

/// The class of an XDP frame (its tag in the packet) from `port`.
#[inline(never)]
pub fn classify_xdp(data: usize, end: usize, port: u32, host: u32) -> u32 {
    if data + ETH_HLEN > end {
        return DROP;
    }
    // SAFETY: bounds checked above.
    let et = unsafe { crate::pkt::ld::<u16>(data, 12) };
    if et == ETH_P_8021Q {
        if data + ETH_HLEN + VLAN_HLEN > end {
            // A truncated tag.
            return DROP;
        }
        // SAFETY: bounds checked above.
        let tci = u16::from_be(unsafe { crate::pkt::ld::<u16>(data, 14) });
        return classify(port, Some(tci), false, host);
    }
    classify(port, None, et == ETH_P_8021AD, host)
}

/// The class of a TC frame from `port`: the kernel has taken its outer
/// tag out of the packet into the skb before TC ingress.
#[inline(never)]
pub fn classify_tc(ctx: &TcContext, port: u32, host: u32) -> u32 {
    // SAFETY: reading fields of the context.
    let (present, tci, proto) = unsafe {
        let s = ctx.skb.skb;
        ((*s).vlan_present, (*s).vlan_tci, (*s).vlan_proto)
    };
    if present == 0 {
        // A tag still in the packet (a test run's skb, which nothing
        // untagged) counts as well.
        return classify_xdp(ctx.data(), ctx.data_end(), port, host);
    }
    classify(port, Some(tci as u16), proto as u16 != ETH_P_8021Q, host)
}

/// The skb's outer 802.1Q tag, out of band or (where nothing took it out)
/// still in the packet.
#[inline(always)]
fn tc_tag(ctx: &TcContext) -> Option<u16> {
    let s = ctx.skb.skb;
    // SAFETY: reading fields of the context.
    unsafe {
        if (*s).vlan_present != 0 {
            return Some((*s).vlan_tci as u16);
        }
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN + VLAN_HLEN > end {
        return None;
    }
    // SAFETY: bounds checked above.
    unsafe {
        if crate::pkt::ld::<u16>(data, 12) != ETH_P_8021Q {
            return None;
        }
        Some(u16::from_be(crate::pkt::ld::<u16>(data, 14)))
    }
}

/// Give an XDP frame of `class` the form `out` asks for: push a tag,
/// remove it, or write the VLAN's id into a priority tag. False if the
/// frame cannot take it in XDP (too long with a tag: the devmap would
/// refuse it), with the frame unchanged: TC then does it. Out of line:
/// only frames that change pay for it.
#[inline(never)]
pub fn xdp_retag(ctx: &XdpContext, class: u32, out: Out) -> bool {
    let vid = vid(class);
    let tagged_in = class & IN_MASK != IN_UNTAGGED;
    if out == Out::Tagged {
        if class & IN_MASK == IN_TAGGED {
            return true;
        }
        if tagged_in {
            // A priority tag: give it the VLAN's id, keep its priority.
            let (data, end) = (ctx.data(), ctx.data_end());
            if data + ETH_HLEN + VLAN_HLEN > end {
                return false;
            }
            let p = (data + 14) as *mut [u8; 2];
            // SAFETY: bounds checked above.
            unsafe {
                let tci = u16::from_be_bytes(*p) & 0xf000 | vid;
                *p = tci.to_be_bytes();
            }
            return true;
        }
        if ctx.data_end() - ctx.data() + VLAN_HLEN > MAX_XDP_FRAME {
            return false;
        }
        // SAFETY: moves the data pointer; bounds are checked again below.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(VLAN_HLEN as i32)) } != 0 {
            return false;
        }
        let (data, end) = (ctx.data(), ctx.data_end());
        if data + ETH_HLEN + VLAN_HLEN > end {
            return false;
        }
        // SAFETY: bounds checked above; the MACs move 4 bytes forward
        // (to lower addresses), read before they are overwritten.
        unsafe {
            let a = *((data + 4) as *const [u32; 3]);
            *(data as *mut [u32; 3]) = a;
            *((data + 12) as *mut [u8; 4]) = [0x81, 0, (vid >> 8) as u8, vid as u8];
        }
        return true;
    }
    if !tagged_in {
        return true;
    }
    // Untagged out: the MACs move 4 bytes back over the tag.
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN + VLAN_HLEN > end {
        return false;
    }
    // SAFETY: bounds checked above; all 12 bytes are read first.
    unsafe {
        let a = *(data as *const [u32; 3]);
        *((data + 4) as *mut [u32; 3]) = a;
        bpf_xdp_adjust_head(ctx.ctx, VLAN_HLEN as i32) == 0
    }
}

/// Give the skb the form `out` asks for VLAN `vid` (a tag the kernel
/// took out of the packet is in the skb: no data moves; the helpers pop
/// one still in the packet as well).
#[inline(always)]
pub fn tc_retag(ctx: &TcContext, vid: u16, out: Out) {
    let s = ctx.skb.skb;
    let tag = tc_tag(ctx);
    let (present, tci) = (tag.is_some(), tag.unwrap_or(0));
    // SAFETY: plain helper calls on our own skb.
    unsafe {
        match out {
            Out::Tagged if present && tci & 0xfff == vid => {}
            Out::Tagged => {
                if present {
                    bpf_skb_vlan_pop(s);
                }
                let tci = if present { tci & 0xf000 | vid } else { vid };
                // The TPID in network byte order, as ETH_P_8021Q already is.
                bpf_skb_vlan_push(s, ETH_P_8021Q, tci);
            }
            _ if present => {
                bpf_skb_vlan_pop(s);
            }
            _ => {}
        }
    }
}
