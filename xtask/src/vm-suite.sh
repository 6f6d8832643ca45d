#!/bin/sh
# umlbr's functional checks, run by `cargo xtask vm-test` inside a guest
# (xtask/src/vm.rs): as root, in the guest's own network namespace, with
# the host's root (and so umlbr and the tools) read-only under a tmpfs.
# Every check prints one line, `vm-check NAME PASS|FAIL|SKIP why`, which
# the harness collects into its table. Two `umlbr up`s in all: loading the
# programs takes 8-22 s under TCG.
#
# /vm-results/env sets UMLBR (the binary) and CHECKS (the checks to run).
# Run by hand on a host, inside a namespace of its own:
#   ip netns add vm-dev; ip netns exec vm-dev env UMLBR=... CHECKS='up xdp' sh vm-suite.sh
[ -f /vm-results/env ] && . /vm-results/env
: "${UMLBR:?UMLBR names the umlbr binary}"
: "${CHECKS:=up xdp tc learn host uplink masq nat down}"
PY=/usr/bin/python3
T=$(mktemp -d /tmp/vm-suite.XXXXXX)
failed=0

want() { case " $CHECKS " in *" $1 "*) return 0 ;; esac; return 1; }
result() {
	echo "vm-check $1 $2 $3"
	[ "$2" = FAIL ] && failed=1
	return 0
}
# The last line of a failed command's output: its error.
why() { tail -n 1 "$1" | tr -s ' \t' ' '; }
ub() { "$UMLBR" "$@"; }

# tapx.py: frames between taps, the switch's counters and the kernel's
# BPF programs, from Python (no scapy: raw tap file descriptors).
cat > "$T/tapx.py" <<'EOF'
import fcntl, json, os, select, struct, subprocess, sys, time, ctypes

UMLBR = os.environ.get("UMLBR", "umlbr")
ETH_TYPE = 0x88B5  # IEEE local experimental: nothing else sends it
# Each check its own MACs (MAC_SET), so that none was learned before it.
SET = os.environ.get("MAC_SET", "aa")
MAC = {k: f"02:00:00:00:{SET}:0{k}" for k in "abc"}
UNKNOWN = f"02:00:00:00:{SET}:ff"

def mac(s):
    return bytes(int(x, 16) for x in s.split(":"))

def open_tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    # TUNSETIFF, IFF_TAP | IFF_NO_PI
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", name.encode(), 0x0002 | 0x1000))
    return fd

def frame(dst, src, size, tag):
    head = mac(dst) + mac(src) + struct.pack("!H", ETH_TYPE) + tag.encode().ljust(16, b".")
    return head + bytes(max(0, size - len(head)))

def drain(fds, secs):
    """Our frames read from each tap within secs: {tap: [frames]}."""
    got = {n: [] for n in fds}
    end = time.time() + secs
    while time.time() < end:
        r, _, _ = select.select(list(fds.values()), [], [], max(0, end - time.time()))
        for n, fd in fds.items():
            if fd in r:
                while True:
                    try:
                        f = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    if len(f) >= 14 and struct.unpack("!H", f[12:14])[0] == ETH_TYPE:
                        got[n].append(f)
    return got

def stats(bridge):
    out = subprocess.run([UMLBR, "stats", bridge, "--json"], capture_output=True, text=True, check=True)
    return {p["name"]: p["stats"] for p in json.loads(out.stdout)["ports"]}

def fdb(bridge):
    out = subprocess.run([UMLBR, "fdb", "show", bridge, "--json"], capture_output=True, text=True, check=True)
    return {e["mac"]: e for e in json.loads(out.stdout)}

def send(fds, who, dst, size, tag, expect, absent, wait=1.5):
    os.write(fds[who], frame(dst, MAC[who], size, tag))
    got = drain(fds, wait)
    errs = []
    for n in expect:
        mine = [f for f in got[n] if tag.encode() in f[14:30]]
        if not mine:
            errs.append(f"{tag}: nothing on tap {n}")
        elif len(mine[0]) != size:
            errs.append(f"{tag}: {len(mine[0])} bytes on tap {n}, sent {size}")
    for n in absent:
        if any(tag.encode() in f[14:30] for f in got[n]):
            errs.append(f"{tag}: also on tap {n} (should not be)")
    return errs

def frames(bridge, taps, size, path):
    """a -> b (b unknown: flooded to b and c), b -> a (a learned: to a only),
    the frames counted on the expected path."""
    fds = {k: open_tap(t) for k, t in zip("abc", taps)}
    time.sleep(0.5)
    drain(fds, 0.3)
    before = stats(bridge)
    errs = send(fds, "a", MAC["b"], size, f"ab{size}", ["b", "c"], [])
    errs += send(fds, "b", MAC["a"], size, f"ba{size}", ["a"], ["c"])
    after = stats(bridge)
    for k in "ab":
        t = taps["ab".index(k)]
        if path == "xdp":
            d = sum(after[t][c] - before[t][c] for c in ("xdp_native", "xdp_generic"))
        else:
            d = after[t]["tc"] - before[t]["tc"]
        if d < 1:
            errs.append(f"tap {t}: its frame was not counted under {path} ({after[t]})")
    return errs

def learn(bridge, taps):
    """Learned MACs on their ports; unknown unicast reaches every other port."""
    fds = {k: open_tap(t) for k, t in zip("abc", taps)}
    time.sleep(0.3)
    errs = send(fds, "a", MAC["b"], 60, "la", ["b", "c"], [])
    errs += send(fds, "b", MAC["a"], 60, "lb", ["a"], ["c"])
    errs += send(fds, "c", UNKNOWN, 60, "lu", ["a", "b"], [])
    table = fdb(bridge)
    for k in "abc":
        e = table.get(MAC[k])
        t = taps["abc".index(k)]
        if e is None:
            errs.append(f"{MAC[k]} not learned")
        elif e["port"] != t:
            errs.append(f"{MAC[k]} learned on {e['port']}, sent from {t}")
    if UNKNOWN in table:
        errs.append("an unknown destination was learned")
    return errs

def bpf_ids(cmd):
    """The ids of every BPF program (cmd 11) or map (12) in the kernel."""
    libc = ctypes.CDLL(None, use_errno=True)
    ids, cur = [], 0
    while True:
        attr = ctypes.create_string_buffer(struct.pack("III", cur, 0, 0), 128)
        if libc.syscall(321, cmd, attr, 128) != 0:
            return ids
        cur = struct.unpack("III", attr.raw[:12])[1]
        ids.append(cur)

def serve(addr, port):
    """Accept one connection, read to EOF, print the peer and byte count."""
    import socket
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1)
    s.settimeout(30)
    print("listening", flush=True)
    c, peer = s.accept()
    c.settimeout(30)
    n = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        n += len(b)
    c.sendall(b"%d" % n)
    c.close()
    print(peer[0], n, flush=True)

def client(addr, port, size):
    import socket
    c = socket.create_connection((addr, port), timeout=20)
    c.sendall(bytes(size))
    c.shutdown(socket.SHUT_WR)
    print(c.recv(100).decode(), flush=True)

cmd = sys.argv[1]
if cmd == "frames":
    errs = frames(sys.argv[2], sys.argv[3:6], int(sys.argv[6]), sys.argv[7])
    ok = f"{sys.argv[6]}-byte frames: a->b flooded to b and c, b->a to a only, counted under {sys.argv[7].upper()}"
elif cmd == "learn":
    errs = learn(sys.argv[2], sys.argv[3:6])
    ok = "3 MACs learned on their taps; unknown unicast flooded to the 2 other taps"
elif cmd == "progs":
    print(len(bpf_ids(11)), len(bpf_ids(12)))
    sys.exit(0)
elif cmd == "serve":
    serve(sys.argv[2], int(sys.argv[3]))
    sys.exit(0)
elif cmd == "client":
    client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    sys.exit(0)
else:
    sys.exit(f"tapx: no command {cmd}")
if errs:
    print("; ".join(errs))
    sys.exit(1)
print(ok)
EOF
tapx() { UMLBR="$UMLBR" MAC_SET="${MAC_SET:-aa}" "$PY" "$T/tapx.py" "$@"; }
ns() { ip netns exec "$@"; }

# A guest: a namespace with the peer of a veth port as eth0. Its GRO on
# gives the veth NAPI, so that frames XDP redirects into the port reach
# the guest (veth drops them otherwise).
guest() { # guest NS PORT ADDR [GATEWAY]
	ip netns add "$1" &&
		ip link add "$2" type veth peer name eth0 netns "$1" &&
		ip link set "$2" up &&
		ns "$1" ip link set lo up &&
		ns "$1" ip addr add "$3" dev eth0 &&
		ns "$1" ip link set eth0 up &&
		{ ns "$1" ethtool -K eth0 gro on >/dev/null 2>&1 || true; } &&
		if [ -n "${4:-}" ]; then ns "$1" ip route add default via "$4"; fi
}

# Nothing autoloads tun (no /dev/net/tun node before it) in a bare guest.
modprobe -q -a tun veth 2>/dev/null
fwd_before=$(cat /proc/sys/net/ipv4/ip_forward)
progs_before=$(tapx progs)

# --- br0: taps, a veth guest, an uplink ---------------------------------
br0=""
if want up || want xdp || want tc || want learn || want host || want uplink; then
	start=$(date +%s)
	if ub up br0 --address 10.9.0.1/24 >"$T/up" 2>&1; then
		br0=ok
		result up PASS "br0 up in $(($(date +%s) - start)) s; its port: $(ub show br0 | sed -n 3p | tr -s ' ')"
	else
		result up FAIL "umlbr up failed: $(why "$T/up")"
		br0="needs up: umlbr up failed: $(why "$T/up")"
	fi
fi
if [ "$br0" = ok ]; then
	for t in vmt1 vmt2 vmt3; do
		{ ub tap add $t && ub attach $t; } >"$T/o" 2>&1 || br0="tap add/attach $t failed: $(why "$T/o")"
	done
fi
for c in xdp tc learn host uplink; do
	want $c || continue
	if [ "$br0" != ok ]; then
		result $c SKIP "$br0"
		continue
	fi
	case $c in
	xdp) MAC_SET=aa tapx frames br0 vmt1 vmt2 vmt3 60 xdp >"$T/o" 2>&1 ;;
	tc) MAC_SET=bb tapx frames br0 vmt1 vmt2 vmt3 3000 tc >"$T/o" 2>&1 ;;
	learn) MAC_SET=cc tapx learn br0 vmt1 vmt2 vmt3 >"$T/o" 2>&1 ;;
	host)
		{ guest vm-g1 vmv1 10.9.0.11/24 && ub attach vmv1 &&
			ns vm-g1 ping -c 3 -i 0.3 -W 3 10.9.0.1; } >"$T/o" 2>&1
		;;
	uplink)
		{ [ -e /run/netns/vm-g1 ] || { guest vm-g1 vmv1 10.9.0.11/24 && ub attach vmv1; }; } >"$T/o" 2>&1 &&
			{ guest vm-lan vmup 10.9.0.50/24 && ub attach vmup --uplink &&
				ns vm-g1 ping -c 3 -i 0.3 -W 3 10.9.0.50 &&
				ns vm-lan ping -c 2 -i 0.3 -W 3 10.9.0.1; } >>"$T/o" 2>&1
		;;
	esac
	if [ $? -eq 0 ]; then
		result $c PASS "$(case $c in host | uplink) grep -E 'packets transmitted' "$T/o" | tail -n 1 ;; *) tail -n 1 "$T/o" ;; esac)"
	else
		result $c FAIL "$(why "$T/o")"
	fi
done

# --- br1: the masquerade ------------------------------------------------
br1=""
if want masq || want nat; then
	{ ip link add vmwan type veth peer name eth0 netns vm-wan 2>/dev/null ||
		{ ip netns add vm-wan && ip link add vmwan type veth peer name eth0 netns vm-wan; }; } &&
		ip addr add 10.8.0.1/24 dev vmwan && ip link set vmwan up &&
		ns vm-wan ip link set lo up && ns vm-wan ip addr add 10.8.0.9/24 dev eth0 &&
		ns vm-wan ip link set eth0 up && ns vm-wan ip route add default via 10.8.0.1
	start=$(date +%s)
	if ub up br1 --address 10.7.0.1/24 --masquerade vmwan >"$T/up1" 2>&1; then
		br1=ok
	else
		br1="umlbr up --masquerade failed: $(why "$T/up1")"
	fi
	took=$(($(date +%s) - start))
fi
if want masq; then
	if [ "$br1" != ok ]; then
		result masq FAIL "$br1"
	else
		{ guest vm-g2 vmv2 10.7.0.2/24 10.7.0.1 && ub attach vmv2 --bridge br1 &&
			ns vm-g2 ping -c 3 -i 0.3 -W 3 10.8.0.9; } >"$T/o" 2>&1
		if [ $? -ne 0 ]; then
			result masq FAIL "ping 10.8.0.9: $(why "$T/o")"
		else
			ns vm-wan "$PY" "$T/tapx.py" serve 10.8.0.9 5001 >"$T/srv" 2>&1 &
			srv=$!
			i=0
			while ! grep -qs listening "$T/srv" && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
			ns vm-g2 env UMLBR="$UMLBR" "$PY" "$T/tapx.py" client 10.8.0.9 5001 1000000 >"$T/cli" 2>&1
			wait $srv
			peer=$(tail -n 1 "$T/srv")
			case "$peer" in
			"10.8.0.1 1000000") result masq PASS "up in $took s; ping ok; 1 MB over TCP, the LAN saw $peer" ;;
			*) result masq FAIL "TCP through the masquerade: server saw '$peer', client: $(why "$T/cli")" ;;
			esac
		fi
	fi
fi
if want nat; then
	if [ "$br1" != ok ]; then
		result nat SKIP "needs masq: $br1"
	elif ub nat show br1 --json >"$T/nat" 2>&1 && grep -q '10.7.0.2' "$T/nat"; then
		result nat PASS "$(grep -c '10.7.0.2' "$T/nat") line(s) name the guest 10.7.0.2"
	else
		result nat FAIL "no mapping of 10.7.0.2 in \`nat show\`: $(why "$T/nat")"
	fi
fi

# --- down: nothing left -------------------------------------------------
if want down; then
	errs=""
	for b in br0 br1; do
		if ip link show $b >/dev/null 2>&1; then
			ub down $b >"$T/down" 2>&1 || errs="$errs; down $b: $(why "$T/down")"
		fi
	done
	for l in br0 br0-sw br1 br1-sw; do
		ip link show $l >/dev/null 2>&1 && errs="$errs; $l still exists"
	done
	left=$(ip -d link show | grep -E 'prog/xdp|xdpgeneric|xdpdrv' | head -n 1)
	[ -n "$left" ] && errs="$errs; an XDP program is left: $left"
	progs_after=$(tapx progs)
	[ "$progs_after" != "$progs_before" ] &&
		errs="$errs; BPF programs/maps before up: $progs_before, after down: $progs_after"
	# No qdisc was there before: a clsact left is one umlbr made (kernels
	# without tcx).
	left=$(tc qdisc show | grep clsact | head -n 1)
	[ -n "$left" ] && errs="$errs; a clsact qdisc is left: $left"
	nft list tables 2>/dev/null | grep -q umlbr && errs="$errs; an nftables table is left: $(nft list tables | grep umlbr)"
	[ "$(cat /proc/sys/net/ipv4/ip_forward)" != "$fwd_before" ] && errs="$errs; ip_forward is $(cat /proc/sys/net/ipv4/ip_forward), was $fwd_before"
	ub show 2>&1 | grep -qv '^no bridges' && errs="$errs; umlbr show lists: $(ub show 2>&1 | head -n 1)"
	if [ -z "$errs" ]; then
		result down PASS "no bridge, no program or map (${progs_after% *} programs before and after), no clsact qdisc, no nftables table, ip_forward $fwd_before"
	else
		result down FAIL "${errs#; }"
	fi
fi

for n in vm-g1 vm-g2 vm-lan vm-wan; do ip netns del $n 2>/dev/null; done
for t in vmt1 vmt2 vmt3; do ip link del $t 2>/dev/null; done
ip link del vmwan 2>/dev/null
rm -rf "$T"
exit $failed
