//! TC programs on kernels without tcx (before 6.6): a clsact qdisc and a
//! cls_bpf filter in direct-action mode, over rtnetlink.
//!
//! Like a tcx attachment made with BPF_PROG_ATTACH, a filter belongs to
//! the device: it stays after the process exits, with no pin. Neither
//! aya nor rtnetlink fits: aya 0.14's netlink attach needs a program that
//! this process loaded (ports are attached later, from a program found by
//! id) and detaches it when its link is dropped; rtnetlink 0.24 has no
//! cls_bpf request and is async, while finding a bridge is not. So these
//! are single synchronous requests, their messages built and read with
//! netlink-packet-route (already umlbr's dependency).
//!
//! umlbr's filter has a fixed priority and handle on the ingress or
//! egress side of the clsact qdisc, protocol all, and the name of its
//! program; it is told from others by its program's name, as on tcx.
use std::{io, os::fd::AsRawFd};

use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use rtnetlink::{
    packet_core::{
        NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
        NetlinkMessage, NetlinkPayload,
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

/// The clsact qdisc's parent (TC_H_CLSACT) and handle (ffff:).
const TC_H_CLSACT: u32 = 0xffff_fff1;
const CLSACT_HANDLE: u32 = 0xffff_0000;
/// Parents of the ingress and egress filters (TC_H_MIN_INGRESS/EGRESS).
pub const PARENT_INGRESS: u32 = 0xffff_fff2;
pub const PARENT_EGRESS: u32 = 0xffff_fff3;
/// umlbr's filter priority: above 49152 (0xc000), where tc's automatic
/// numbering starts and goes down from, so a filter added without a
/// priority never takes it, and filters of others run first.
pub const PRIO: u16 = 0xc0de;
/// umlbr's filter handle in its priority.
pub const HANDLE: u32 = 1;
/// ETH_P_ALL, in network order as tcm_info carries it.
const PROTO_ALL: u16 = (libc::ETH_P_ALL as u16).to_be();

/// One filter on a clsact side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub prio: u16,
    pub handle: u32,
    /// "bpf" for cls_bpf.
    pub kind: String,
    /// A bpf filter's program.
    pub prog_id: Option<u32>,
    /// A bpf filter's name.
    pub name: String,
}

/// Send `msg` and collect the replies (a dump's messages; none for an
/// acknowledged change), None for one that netlink-packet-route cannot
/// read (a filter of a kind or version it does not know: it is someone
/// else's, and must not hide umlbr's). A netlink error is the kernel's
/// errno.
fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<Option<RouteNetlinkMessage>>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let _ = sock.set_ext_ack(true);
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | flags;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0; req.header.length as usize];
    req.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut out = Vec::new();
    loop {
        let (data, _) = sock.recv_from_full()?;
        if data.is_empty() {
            return Err(io::Error::other(format!(
                "netlink socket {} closed",
                sock.as_raw_fd()
            )));
        }
        let mut off = 0;
        while off + 16 <= data.len() {
            // struct nlmsghdr: length, then type.
            let len =
                u32::from_ne_bytes(data[off..off + 4].try_into().unwrap_or_default()) as usize;
            let ty = u16::from_ne_bytes(data[off + 4..off + 6].try_into().unwrap_or_default());
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..]) {
                Ok(msg) => match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    // An ACK ends a change.
                    NetlinkPayload::Error(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => out.push(Some(m)),
                    _ => {}
                },
                // NLMSG_ERROR and NLMSG_DONE are always readable.
                Err(e) if ty == 2 || ty == 3 => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                }
                Err(_) => out.push(None),
            }
            if len < 16 {
                break;
            }
            off += len.next_multiple_of(4);
        }
    }
}

fn tc_message(ifindex: u32, parent: u32, handle: u32, info: u32) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.parent = TcHandle::from(parent);
    m.header.handle = TcHandle::from(handle);
    m.header.info = info;
    m
}

fn kind(attrs: &[TcAttribute]) -> Option<&str> {
    attrs.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

/// Whether `ifindex` has a clsact qdisc.
pub fn has_qdisc(ifindex: u32) -> io::Result<bool> {
    let m = TcMessage::with_index(0);
    let all = request(RouteNetlinkMessage::GetQueueDiscipline(m), NLM_F_DUMP)?;
    Ok(all.iter().flatten().any(|m| match m {
        RouteNetlinkMessage::NewQueueDiscipline(q) => {
            q.header.index == ifindex as i32 && kind(&q.attributes) == Some("clsact")
        }
        _ => false,
    }))
}

/// Add a clsact qdisc to `ifindex`. Returns false if the device already
/// had one (or another qdisc in its place, which the filter's attach then
/// reports).
pub fn add_qdisc(ifindex: u32) -> io::Result<bool> {
    let mut m = tc_message(ifindex, TC_H_CLSACT, CLSACT_HANDLE, 0);
    m.attributes.push(TcAttribute::Kind("clsact".into()));
    let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    match request(RouteNetlinkMessage::NewQueueDiscipline(m), flags) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Delete the clsact qdisc of `ifindex` (and every filter on it); none
/// there is no error.
pub fn del_qdisc(ifindex: u32) -> io::Result<()> {
    let mut m = tc_message(ifindex, TC_H_CLSACT, CLSACT_HANDLE, 0);
    m.attributes.push(TcAttribute::Kind("clsact".into()));
    match request(RouteNetlinkMessage::DelQueueDiscipline(m), NLM_F_ACK) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => Ok(()),
        r => r.map(drop),
    }
}

/// The filters on side `parent` of `ifindex`'s clsact qdisc (none if it
/// has no such qdisc).
pub fn filters(ifindex: u32, parent: u32) -> io::Result<Vec<Filter>> {
    let m = tc_message(ifindex, parent, 0, 0);
    let all = match request(RouteNetlinkMessage::GetTrafficFilter(m), NLM_F_DUMP) {
        Ok(all) => all,
        // No such device, or no qdisc there.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::EINVAL)) => {
            return Ok(vec![]);
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for m in all {
        let Some(m) = m else {
            // Unreadable: someone else's, of a kind unknown here.
            out.push(Filter {
                prio: 0,
                handle: 0,
                kind: "(unreadable)".into(),
                prog_id: None,
                name: String::new(),
            });
            continue;
        };
        let RouteNetlinkMessage::NewTrafficFilter(f) = m else {
            continue;
        };
        // The message of a priority itself (handle 0) is no filter.
        if f.header.index != ifindex as i32
            || u32::from(f.header.parent) != parent
            || u32::from(f.header.handle) == 0
        {
            continue;
        }
        let mut filter = Filter {
            prio: (f.header.info >> 16) as u16,
            handle: u32::from(f.header.handle),
            kind: kind(&f.attributes).unwrap_or("").to_string(),
            prog_id: None,
            name: String::new(),
        };
        for a in &f.attributes {
            let TcAttribute::Options(opts) = a else {
                continue;
            };
            for o in opts {
                match o {
                    TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => filter.prog_id = Some(*id),
                    TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => filter.name = n.clone(),
                    _ => {}
                }
            }
        }
        out.push(filter);
    }
    Ok(out)
}

/// Attach program `fd` (named `name`) as umlbr's direct-action filter on
/// side `parent` of `ifindex`'s clsact qdisc, which must exist.
pub fn add_filter(ifindex: u32, parent: u32, fd: i32, name: &str) -> io::Result<()> {
    let m = bpf_filter(ifindex, parent, (PRIO, HANDLE), fd, name);
    let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    request(RouteNetlinkMessage::NewTrafficFilter(m), flags).map(drop)
}

/// Replace the program of the filter at `prio`/`handle` on side `parent`
/// of `ifindex` with `fd` (`umlbr upgrade`): cls_bpf swaps the program of
/// the existing filter in one step, so no frame passes the hook without
/// one; a filter gone meanwhile is an error (ENOENT), not made anew.
pub fn replace_filter(
    ifindex: u32,
    parent: u32,
    (prio, handle): (u16, u32),
    fd: i32,
    name: &str,
) -> io::Result<()> {
    let m = bpf_filter(ifindex, parent, (prio, handle), fd, name);
    request(
        RouteNetlinkMessage::NewTrafficFilter(m),
        NLM_F_ACK | NLM_F_REPLACE,
    )
    .map(drop)
}

/// umlbr's direct-action cls_bpf filter message.
fn bpf_filter(
    ifindex: u32,
    parent: u32,
    (prio, handle): (u16, u32),
    fd: i32,
    name: &str,
) -> TcMessage {
    let info = (u32::from(prio) << 16) | u32::from(PROTO_ALL);
    let mut m = tc_message(ifindex, parent, handle, info);
    m.attributes.push(TcAttribute::Kind("bpf".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(fd as u32)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    m
}

/// Delete the filter at `prio`/`handle` on side `parent` of `ifindex`;
/// none there is no error.
pub fn del_filter(ifindex: u32, parent: u32, prio: u16, handle: u32) -> io::Result<()> {
    let info = (u32::from(prio) << 16) | u32::from(PROTO_ALL);
    let mut m = tc_message(ifindex, parent, handle, info);
    m.attributes.push(TcAttribute::Kind("bpf".into()));
    match request(RouteNetlinkMessage::DelTrafficFilter(m), NLM_F_ACK) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => Ok(()),
        r => r.map(drop),
    }
}
