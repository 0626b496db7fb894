"""Real LAN programs from Debian, run unmodified inside lab namespaces, and the LANs they run on.

Owns the acceptance harness of issue #6 (docs/lan.md, "Real programs (lab)"): the members of a
LAN (`Member`), the two fabrics a LAN can be made of, and one driver per program.

Fabrics (same interface: `members`, `Member.iface(network)`, `Member.ipv4`):
- `BridgeFabric`: plain Linux bridges in the lab's internet namespace, one per network; a real
  LAN, used to check that the drivers, configurations and assertions are right.
- `ShoalFabric`: a real `shoal server` and `shoal daemon`s (shoal.lab.mesh); IP networks
  are the node's `shoal0`, layer-2 networks the TAP the daemon names in `shoal status --json`.

Both drop IP broadcast/multicast on the lab's internet bridge (`isolate_underlay`), and both
route 255.255.255.255/32 and 224.0.0.0/4 to the member's IP LAN interface, as the daemon
does on the host (docs/lan.md section 7); lab namespaces have no default route, so a broadcast
can only leave through the LAN under test.

Programs: teeworlds-server 0.7 (LAN browse done by `tw_browse`, which speaks the client's own
discovery exchange, below), avahi-daemon/avahi-publish/avahi-browse on a private system D-Bus
per member (`PrivateSystem`: own mount and UTS namespaces, tmpfs on /run, stock configs),
Samba nmbd/smbd/nmblookup/smbclient with a per-member smb.conf that only moves pid/lock/state/
cache/private dirs to the member's work dir, iperf 2 UDP multicast, dnsmasq + busybox udhcpc,
and raw frames on AF_PACKET sockets (`python -m shoal.lab.lanapps raw-listen|raw-send`).

Teeworlds 0.7 LAN discovery (src/engine/shared/network*.cpp of teeworlds 0.7), big-endian:

    token request (client -> 255.255.255.255:8303..8310), 520 bytes:
        0   1  0x04          flags CONTROL (1) << 2, ack bits 0
        1   1  0x00          ack
        2   1  0x00          number of chunks
        3   4  ff ff ff ff   token NONE (the server's token is not known yet)
        7   1  0x05          control message TOKEN
        8   4  client token  (the server answers to it)
        12  508 zero         pads the data to 1 + 512 bytes (smaller requests get no answer)
    token reply (server -> client, unicast): same layout, token field = client token,
        byte 7 = 0x05, bytes 8..11 = the server's token for this client; 12 bytes
    info request (client -> server, unicast, "connless"):
        0   1  0x21          flags CONNLESS (8) << 2 | packet version 1
        1   4  server token
        5   4  client token
        9   8  ff ff ff ff 'g' 'i' 'e' '3'
        17  1  browse token  (a packed int; values 0..63 are one byte)
    info reply: 0x21, tokens swapped, ff ff ff ff 'i' 'n' 'f' '3', the browse token (packed
        int), then NUL-terminated strings: version, server name, host name, map, game type,
        followed by packed ints (flags, skill, player counts) and player records.

`parse_tw_token_reply` and `parse_tw_info` never raise on bad input (they return None).
Processes are started with `Member.start` and stopped by PID (with their descendants).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

# --- constants of the programs' protocols (not Shoal wire constants) -------------------------
TW_PORTS = range(8303, 8311)  # the 0.7 client's LAN browse ports
TW_TOKEN_NONE = 0xFFFFFFFF
TW_TOKEN_REQUEST = struct.pack(">BBBIB", 0x04, 0, 0, TW_TOKEN_NONE, 0x05)
TW_TOKEN_REQUEST_SIZE = 7 + 1 + 512
TW_GETINFO = b"\xff\xff\xff\xffgie3"
TW_INFO = b"\xff\xff\xff\xffinf3"
TW_CONNLESS = 0x21
ETH_P_ALL = 0x0003
ETH_P_IPX = 0x8137
PACKET_OUTGOING = 4

BCAST_ROUTES = ("255.255.255.255/32", "224.0.0.0/4")


# --- teeworlds 0.7 discovery codec (pure) ------------------------------------------------------
def tw_token_request(client_token: int) -> bytes:
    body = TW_TOKEN_REQUEST + struct.pack(">I", client_token)
    return body + bytes(TW_TOKEN_REQUEST_SIZE - len(body))


def parse_tw_token_reply(data: bytes, client_token: int) -> int | None:
    """The server's token from a token reply addressed to `client_token`, else None."""
    if len(data) < 12 or (data[0] >> 2) & 0x3F != 0x01 or data[7] != 0x05:
        return None
    tok, server = struct.unpack_from(">I", data, 3)[0], struct.unpack_from(">I", data, 8)[0]
    return server if tok == client_token else None


def tw_info_request(server_token: int, client_token: int, browse_token: int) -> bytes:
    if not 0 <= browse_token < 64:
        raise ValueError("browse token must be 0..63 (one packed byte)")
    return struct.pack(">BII", TW_CONNLESS, server_token, client_token) + TW_GETINFO + bytes([browse_token])


def parse_tw_info(data: bytes, client_token: int, browse_token: int) -> dict[str, str] | None:
    """Version, name, host name, map and game type of an info reply for our tokens, else None."""
    if len(data) < 9 + len(TW_INFO) + 1 or data[0] != TW_CONNLESS:
        return None
    if struct.unpack_from(">I", data, 1)[0] != client_token or data[9:17] != TW_INFO:
        return None
    if data[17] != browse_token:
        return None
    parts = data[18:].split(b"\0")
    if len(parts) < 6:
        return None
    keys = ("version", "name", "hostname", "map", "gametype")
    return {k: v.decode("utf-8", "replace") for k, v in zip(keys, parts[:5])}


def tw_browse(timeout: float, ports: Sequence[int] = TW_PORTS, bcast: str = "255.255.255.255",
              settle: float = 1.0) -> list[dict[str, Any]]:
    """Browse the LAN like the teeworlds 0.7 client: broadcast token requests, then ask every
    server that answered for its info. Returns one dict per server (address, port, seconds
    from the first broadcast to the info reply, and the info). Stops at `timeout`, or `settle`
    seconds after the start once every server that answered has sent its info."""
    client_token = secrets.randbits(32) & 0x7FFFFFFF
    browse_token = secrets.randbelow(64)
    found: dict[tuple[str, int], dict[str, Any]] = {}
    t0 = time.monotonic()
    deadline = t0 + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.bind(("0.0.0.0", 0))
        next_bcast = t0
        while True:
            now = time.monotonic()
            complete = bool(found) and all("info" in f for f in found.values())
            if now >= deadline or (complete and now - t0 > settle):
                break
            if now >= next_bcast:  # the client re-broadcasts while the browser is open
                for port in ports:
                    s.sendto(tw_token_request(client_token), (bcast, port))
                next_bcast = now + 1.0
            wake = min(deadline, next_bcast, t0 + settle + 0.001 if complete else deadline)
            r, _, _ = select.select([s], [], [], max(0.0, wake - now))
            if not r:
                continue
            data, addr = s.recvfrom(2048)
            server_token = parse_tw_token_reply(data, client_token)
            if server_token is not None:
                entry = found.setdefault(addr, {"address": addr[0], "port": addr[1]})
                entry.setdefault("token_s", round(time.monotonic() - t0, 3))
                s.sendto(tw_info_request(server_token, client_token, browse_token), addr)
                continue
            info = parse_tw_info(data, client_token, browse_token)
            if info is not None and addr in found:
                found[addr]["info"] = info
                found[addr].setdefault("seconds", round(time.monotonic() - t0, 3))
    return [f for f in found.values() if "info" in f]


# --- IPX frames (pure): the three framings of the acceptance test -----------------------------
def ipx_packet(dst_net: int, dst_node: bytes, dst_sock: int, src_net: int, src_node: bytes,
               src_sock: int, payload: bytes, ptype: int = 4) -> bytes:
    """An IPX packet: checksum 0xFFFF, length, transport control 0, type, dst/src net.node.socket."""
    length = 30 + len(payload)
    return (struct.pack(">HHBB", 0xFFFF, length, 0, ptype)
            + struct.pack(">I", dst_net) + dst_node + struct.pack(">H", dst_sock)
            + struct.pack(">I", src_net) + src_node + struct.pack(">H", src_sock) + payload)


def ipx_frame(dst: bytes, src: bytes, ipx: bytes, framing: str) -> bytes:
    """Ethernet II (EtherType 0x8137), Novell raw 802.3 (length, then 0xFFFF) or 802.2 LLC
    (length, DSAP 0xE0, SSAP 0xE0, UI 0x03)."""
    if framing == "ethernet2":
        return dst + src + struct.pack(">H", ETH_P_IPX) + ipx
    if framing == "raw8023":
        return dst + src + struct.pack(">H", len(ipx)) + ipx
    if framing == "llc":
        return dst + src + struct.pack(">H", len(ipx) + 3) + b"\xe0\xe0\x03" + ipx
    raise ValueError(f"unknown framing {framing!r}")


def mac_bytes(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


# --- members and processes ---------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def stop_tree(proc: subprocess.Popen[Any] | None, timeout: float = 3.0) -> None:
    """SIGTERM a process and every descendant (by PID), SIGKILL what is left after `timeout`."""
    if proc is None:
        return
    pids = _tree(proc.pid) if proc.poll() is None else []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    end = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < end and os.path.exists(f"/proc/{pid}") and _state(pid) not in ("Z", None):
            time.sleep(0.02)
        if _state(pid) not in ("Z", None):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


@dataclass
class Member:
    """One LAN member: a lab namespace, a work dir, and its interface per network."""
    name: str
    ns: str
    workdir: Path
    ifaces: dict[str, str] = field(default_factory=dict)
    ipv4: str | None = None  # address on the IP LAN interface (the one broadcasts route to)
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def iface(self, network: str) -> str:
        return self.ifaces[network]

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    def run(self, cmd: Sequence[str], timeout: float = 30, check: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(self.argv(cmd), capture_output=True, text=True, timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise RuntimeError(f"{self.name}: {shlex.join(cmd)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()}")
        return p

    def start(self, cmd: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
              stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[Any]:
        with open(log, "ab") as f:
            # own session: some daemons signal their whole process group when they stop
            p = subprocess.Popen(self.argv(cmd), stdin=stdin, stdout=f, stderr=subprocess.STDOUT,
                                 env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            stop_tree(p)
        self.procs.clear()

    def mac(self, ifname: str) -> str:
        p = self.run(["cat", f"/sys/class/net/{ifname}/address"], check=True)
        return p.stdout.strip()

    def python(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "shoal.lab.lanapps", *args]


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} within {timeout:g} s")
        time.sleep(interval)


def log_has(log: Path, text: str) -> bool:
    try:
        return text in log.read_text(errors="replace")
    except OSError:
        return False


# --- fabrics -----------------------------------------------------------------------------------
def _ip(ns: str, *args: str) -> None:
    p = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"ip -n {ns} {' '.join(args)}: {p.stderr.strip()}")


UNDERLAY_NO_BROADCAST = """table bridge shoal_lanapps {
  chain forward {
    type filter hook forward priority 0; policy accept;
    iifname "p*" meta pkttype { broadcast, multicast } ether type { ip, ip6 } drop
    iifname "q*" meta pkttype { broadcast, multicast } ether type { ip, ip6 } drop
  }
}
"""


def isolate_underlay(lab: Any) -> None:
    """Drop IP broadcast and multicast frames on the lab's internet bridge (ARP still passes;
    its ports are p<k>/q<k>, the bridge fabric's are lb<j>p<k>).
    Public lab hosts share that bridge, which the real internet is not: without this, nmbd or
    avahi could find each other over `eth0` and a test would pass without the LAN under test."""
    p = subprocess.run(["ip", "netns", "exec", lab.ns["inet"], "nft", "-f", "-"], input=UNDERLAY_NO_BROADCAST,
                       text=True, capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(f"nft in {lab.ns['inet']}: {p.stderr.strip()}")


class BridgeFabric:
    """Linux bridges (one per network) in the lab's internet namespace; member ends `lan<net>`.

    `layout` maps member (lab host) -> networks; `kinds` maps network -> "ip" or "l2". IP
    networks get 100.64.<j>.<k>/24 per member (j: network index from 1, k: member index
    from 1); the member's first IP network carries the broadcast/multicast routes. L2
    networks get no address. Everything lives in the lab's namespaces and goes with them."""

    name = "bridge"

    def __init__(self, lab: Any, layout: dict[str, list[str]], kinds: dict[str, str]) -> None:
        self.lab, self.layout, self.kinds = lab, layout, kinds
        isolate_underlay(lab)
        self.dir = Path(tempfile.mkdtemp(prefix=f"shoal-lanapps-{os.getpid()}-"))
        inet = lab.ns["inet"]
        nets = list(kinds)
        self.members: dict[str, Member] = {}
        for j, net in enumerate(nets, start=1):
            _ip(inet, "link", "add", f"lb{j}", "type", "bridge", "mcast_snooping", "0")
            _ip(inet, "link", "set", f"lb{j}", "up")
        for k, (host, member_nets) in enumerate(layout.items(), start=1):
            h = lab.host(host)
            m = Member(host, h.ns, self.dir / host)
            m.workdir.mkdir(parents=True)
            for net in member_nets:
                j = nets.index(net) + 1
                dev, port = f"lan{net}"[:15], f"lb{j}p{k}"
                _ip(inet, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", h.ns)
                _ip(inet, "link", "set", port, "master", f"lb{j}")
                _ip(inet, "link", "set", port, "up")
                _ip(h.ns, "link", "set", dev, "up")
                m.ifaces[net] = dev
                if kinds[net] == "ip":
                    addr = f"100.64.{j}.{k}"
                    _ip(h.ns, "addr", "add", f"{addr}/24", "brd", f"100.64.{j}.255", "dev", dev)
                    if m.ipv4 is None:
                        m.ipv4 = addr
                        for r in BCAST_ROUTES:
                            _ip(h.ns, "route", "add", r, "dev", dev)
            self.members[host] = m

    def ip_lan_peers(self, name: str) -> list[str]:
        """Members on the sender's IP LAN: those sharing its first IP network (its routed one)."""
        first = next(n for n in self.layout[name] if self.kinds[n] == "ip")
        return [h for h, nets in self.layout.items() if h != name and first in nets]

    def ready(self, timeout: float = 10.0) -> None:
        for m in self.members.values():
            for dev in m.ifaces.values():
                wait_for(lambda: "LOWER_UP" in m.run(["ip", "link", "show", dev]).stdout, timeout, f"{m.name} {dev} up")

    def close(self) -> None:
        for m in self.members.values():
            m.stop_all()
        shutil.rmtree(self.dir, ignore_errors=True)


class ShoalFabric:
    """A real shoal server and daemons in the lab; networks created by the first member that
    lists them (`shoal create NAME --password P [--kind l2]`) and joined by the others."""

    name = "shoal"

    def __init__(self, lab: Any, layout: dict[str, list[str]], kinds: dict[str, str]) -> None:
        from shoal.lab.mesh import Mesh
        self.lab, self.layout, self.kinds = lab, layout, kinds
        isolate_underlay(lab)
        self.mesh = Mesh(lab)
        self.dir = self.mesh.dir
        self.members: dict[str, Member] = {}
        try:
            self.mesh.server.start()
            key = self.mesh.server.key()
            created: set[str] = set()
            for host, nets in layout.items():
                node = self.mesh.add_node(host, f"m{host}")
                node.cli("login", self.mesh.server.url, "--server-key", key)
                for net in nets:
                    if net not in created:
                        extra = ["--kind", "l2"] if kinds[net] == "l2" else []
                        node.cli("create", f"lan{net}", "--password", f"password-{net}", *extra)
                        created.add(net)
                    else:
                        node.cli("join", f"lan{net}", "--password", f"password-{net}")
                m = Member(host, lab.host(host).ns, self.dir / host / "apps")
                m.workdir.mkdir(parents=True)
                self.members[host] = m
            for host, m in self.members.items():
                node = self.mesh.nodes[host]
                for net in layout[host]:
                    if kinds[net] == "ip":
                        m.ifaces[net] = "shoal0"
                        m.ipv4 = node.status()["node"]["ipv4"]
                    else:  # the daemon opens the TAP once the view lists the network
                        m.ifaces[net] = wait_for(lambda: self.l2_iface(node.status(), f"lan{net}"), 10,
                                                 f"{host}: interface of layer-2 network lan{net}")
        except BaseException:
            print(self.mesh.logs())
            self.mesh.close()
            raise

    @staticmethod
    def l2_iface(status: dict[str, Any], name: str) -> str | None:
        """The TAP of layer-2 network `name` as `shoal status --json` reports it."""
        for net in status.get("networks", []):
            if net.get("name") == name:
                for key in ("interface", "tap", "ifname", "device"):
                    v = net.get(key)
                    if isinstance(v, str) and v:
                        return v
                    if isinstance(v, dict) and isinstance(v.get("name"), str):
                        return v["name"]
        return None

    def ip_lan_peers(self, name: str) -> list[str]:
        """Members that get the sender's broadcasts on shoal0: those sharing any IP network."""
        mine = {n for n in self.layout[name] if self.kinds[n] == "ip"}
        return [h for h, nets in self.layout.items() if h != name and mine & set(nets)]

    def ready(self, timeout: float = 20.0) -> None:
        """Every pair sharing an IP network pings over the overlay; every interface is up."""
        for m in self.members.values():
            for dev in set(m.ifaces.values()):
                wait_for(lambda: m.run(["ip", "link", "show", dev]).returncode == 0, timeout, f"{m.name}: {dev} exists")
        hosts = list(self.members)
        for i, a in enumerate(hosts):
            for b in hosts[i + 1:]:
                shared = set(self.layout[a]) & set(self.layout[b])
                if any(self.kinds[n] == "ip" for n in shared):
                    node, addr = self.mesh.nodes[a], self.members[b].ipv4
                    if node.ping_until(addr, True, timeout=timeout) is None:
                        raise TimeoutError(f"no overlay ping {a} -> {b} ({addr}) within {timeout:g} s")

    def close(self) -> None:
        for m in self.members.values():
            m.stop_all()
        self.mesh.close()

    def logs(self) -> str:
        return self.mesh.logs()


# --- programs ----------------------------------------------------------------------------------
class TeeworldsServer:
    """teeworlds-server 0.7 with its stock data, headless; HOME is the member's work dir."""

    def __init__(self, member: Member, name: str, port: int = 8303) -> None:
        self.member, self.name, self.port = member, name, port
        self.dir = member.workdir / "teeworlds"
        self.log = self.dir / "server.log"

    def start(self, timeout: float = 15.0) -> "TeeworldsServer":
        self.dir.mkdir(parents=True, exist_ok=True)
        cmds = f"sv_register 0;sv_name {self.name};sv_port {self.port};sv_map dm1"
        self.proc = self.member.start(["/usr/games/teeworlds-server", cmds], self.log,
                                      env={"HOME": str(self.dir)}, cwd=self.dir)
        wait_for(lambda: self.proc.poll() is not None or f":{self.port} " in
                 self.member.run(["ss", "-Hlun", "sport", f"= :{self.port}"]).stdout, timeout, "teeworlds-server bound")
        if self.proc.poll() is not None:
            raise RuntimeError(f"teeworlds-server exited: {self.log.read_text(errors='replace')[-800:]}")
        return self


def browse_teeworlds(member: Member, timeout: float) -> list[dict[str, Any]]:
    """Run the LAN browse inside `member` (no address given: broadcast only)."""
    p = member.run(member.python("tw-browse", "--timeout", f"{timeout:g}"), timeout=timeout + 15, check=True)
    return json.loads(p.stdout)


class PrivateSystem:
    """A member's own /run (tmpfs), system D-Bus and host name: a mount + UTS namespace held
    by the member's `dbus-daemon --system` (stock /usr/share/dbus-1/system.conf)."""

    def __init__(self, member: Member, hostname: str) -> None:
        self.member, self.hostname = member, hostname
        self.log = member.workdir / "dbus.log"

    def start(self, timeout: float = 10.0) -> "PrivateSystem":
        script = ("mount -t tmpfs -o mode=0755 shoal-run /run && mkdir -p /run/dbus && "
                  f"hostname {shlex.quote(self.hostname)} && exec dbus-daemon --system --nofork --nopidfile")
        self.proc = self.member.start(["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script], self.log)
        sock = Path(f"/proc/{self.proc.pid}/root/run/dbus/system_bus_socket")
        wait_for(lambda: self.proc.poll() is not None or sock.exists(), timeout, "private system bus")
        if self.proc.poll() is not None:
            raise RuntimeError(f"dbus-daemon exited: {self.log.read_text(errors='replace')[-500:]}")
        return self

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        pid = self.proc.pid
        return ["nsenter", f"--mount=/proc/{pid}/ns/mnt", f"--uts=/proc/{pid}/ns/uts", "--", *cmd]


class Avahi:
    """avahi-daemon with the stock /etc/avahi/avahi-daemon.conf on a member's private system."""

    def __init__(self, member: Member, system: PrivateSystem) -> None:
        self.member, self.sys = member, system
        self.log = member.workdir / "avahi-daemon.log"

    def start(self, timeout: float = 15.0) -> "Avahi":
        # --no-rlimits: setrlimit is refused in this container (the limits are not LAN settings)
        self.proc = self.member.start(self.sys.wrap(["avahi-daemon", "--no-rlimits"]), self.log)
        wait_for(lambda: self.proc.poll() is not None or log_has(self.log, "Server startup complete"), timeout,
                 "avahi-daemon startup")
        if self.proc.poll() is not None:
            raise RuntimeError(f"avahi-daemon exited: {self.log.read_text(errors='replace')[-800:]}")
        return self

    def publish(self, name: str, stype: str, port: int, txt: str, timeout: float = 10.0) -> subprocess.Popen[Any]:
        log = self.member.workdir / f"avahi-publish-{port}.log"
        p = self.member.start(self.sys.wrap(["avahi-publish", "-s", name, stype, str(port), txt]), log)
        wait_for(lambda: p.poll() is not None or log_has(log, "Established under name"), timeout, "avahi-publish")
        if p.poll() is not None:
            raise RuntimeError(f"avahi-publish exited: {log.read_text(errors='replace')}")
        return p

    def browse(self, stype: str, want: Callable[[dict[str, str]], bool], timeout: float) -> tuple[list[dict[str, str]], float | None]:
        """Resolved services of `stype` (avahi-browse -r -p) until one satisfies `want` or
        `timeout`; returns them and the seconds until the first wanted one (None: not seen)."""
        cmd = self.member.argv(self.sys.wrap(["avahi-browse", "-r", "-p", stype]))
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        out: list[dict[str, str]] = []
        hit = None
        try:
            assert p.stdout is not None
            os.set_blocking(p.stdout.fileno(), False)
            buf = ""
            while hit is None and time.monotonic() - t0 < timeout:
                r, _, _ = select.select([p.stdout], [], [], 0.1)
                if not r:
                    continue
                chunk = p.stdout.read()
                if not chunk:
                    if p.poll() is not None:
                        break
                    continue
                buf += chunk
                *lines, buf = buf.split("\n")
                for line in lines:
                    rec = parse_avahi_resolved(line)
                    if rec is not None:
                        out.append(rec)
                        if hit is None and want(rec):
                            hit = time.monotonic() - t0
        finally:
            stop_tree(p)
        return out, hit


def parse_avahi_resolved(line: str) -> dict[str, str] | None:
    """One `=` line of `avahi-browse -p -r` (fields separated by ';'), else None."""
    f = line.split(";")
    if len(f) < 10 or f[0] != "=":
        return None
    keys = ("iface", "proto", "name", "type", "domain", "host", "address", "port", "txt")
    return dict(zip(keys, f[1:9] + [";".join(f[9:])]))


class Samba:
    """nmbd + smbd with a per-member smb.conf: stock settings except where state lives."""

    def __init__(self, member: Member, netbios: str, workgroup: str = "SHOALWG") -> None:
        self.member, self.netbios, self.workgroup = member, netbios, workgroup
        self.dir = member.workdir / "samba"
        self.conf = self.dir / "smb.conf"

    def write_conf(self, share: str | None) -> None:
        d = self.dir
        for sub in ("run", "lock", "state", "cache", "private", "ncalrpc", "log", "share"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        text = (f"[global]\n  netbios name = {self.netbios}\n  workgroup = {self.workgroup}\n"
                f"  pid directory = {d}/run\n  lock directory = {d}/lock\n  state directory = {d}/state\n"
                f"  cache directory = {d}/cache\n  private dir = {d}/private\n  ncalrpc dir = {d}/ncalrpc\n"
                f"  log file = {d}/log/log.%m\n  map to guest = Bad User\n")
        if share:
            (d / "share" / "hello.txt").write_text("shoal\n")
            text += f"[{share}]\n  path = {d}/share\n  read only = yes\n  guest ok = yes\n  comment = shoal lab share\n"
        self.conf.write_text(text)

    def start(self, share: str | None, timeout: float = 15.0) -> "Samba":
        self.write_conf(share)
        common = ["--foreground", "--no-process-group", "--debug-stdout", "-s", str(self.conf)]
        self.nmbd = self.member.start(["nmbd", *common], self.dir / "nmbd.out")
        self.smbd = self.member.start(["smbd", *common], self.dir / "smbd.out")
        # ready when nmbd answers for its own name (unicast to itself) and smbd listens on 445
        wait_for(lambda: self.netbios in self.member.run(["nmblookup", "-s", str(self.conf), "-U", "127.0.0.1",
                                                          self.netbios]).stdout, timeout, "nmbd registered its name",
                 interval=0.2)
        wait_for(lambda: ":445 " in self.member.run(["ss", "-Hltn", "sport", "= :445"]).stdout, timeout, "smbd on 445")
        return self

    def nmblookup(self, name: str) -> list[str]:
        """Addresses `nmblookup NAME` finds by broadcast (no server address given)."""
        p = self.member.run(["nmblookup", "-s", str(self.conf), name], timeout=20)
        return re.findall(rf"^(\d+\.\d+\.\d+\.\d+) {re.escape(name)}<00>", p.stdout, re.M)

    def list_shares(self, target: str) -> tuple[list[str], str]:
        """Disk shares `smbclient -L TARGET -N` lists; TARGET may be a NetBIOS name."""
        p = self.member.run(["smbclient", "-s", str(self.conf), "-N", "-L", target], timeout=30)
        return re.findall(r"^\s+(\S+)\s+Disk\s", p.stdout, re.M), p.stdout + p.stderr


def iperf_multicast(sender: Member, receivers: list[Member], group: str = "239.1.1.1", port: int = 5001,
                    rate: str = "2M", seconds: float = 3.0, length: int = 1200) -> dict[str, dict[str, float]]:
    """iperf 2: a UDP stream to `group`, one `iperf -s -B group` per receiver. Returns per
    receiver sent (by the client), received and the fraction received."""
    servers = []
    for r in receivers:
        log = r.workdir / f"iperf-{port}.log"
        log.unlink(missing_ok=True)
        p = r.start(["iperf", "-s", "-u", "-B", group, "-p", str(port), "-l", str(length)], log)
        servers.append((r, p, log))
    for r, p, _ in servers:  # joined: the group shows on the member's IP LAN interface
        wait_for(lambda: group in r.run(["ip", "maddr", "show"]).stdout, 10, f"{r.name} joined {group}")
    c = sender.run(["iperf", "-c", group, "-u", "-p", str(port), "-b", rate, "-t", f"{seconds:g}", "-T", "4",
                    "-l", str(length)], timeout=seconds + 20, check=True)
    m = re.search(r"Sent (\d+) datagrams", c.stdout)
    if not m:
        raise RuntimeError(f"iperf client output: {c.stdout}")
    sent = int(m.group(1)) - 1  # the last datagram is iperf's end-of-test marker
    time.sleep(1.0)
    out = {}
    for r, p, log in servers:
        stop_tree(p)
        r.procs.remove(p)
        text = log.read_text(errors="replace")
        # the whole-test line: 0.0000-N sec ... lost/total (pct); take the longest interval
        best = None
        for a, b, lost, total in re.findall(r"\]\s+([\d.]+)-\s*([\d.]+) sec.*?(\d+)/\s*(\d+) \(", text):
            span = float(b) - float(a)
            if best is None or span > best[0]:
                best = (span, int(lost), int(total))
        got = (best[2] - best[1]) if best else 0
        out[r.name] = {"sent": sent, "received": got, "fraction": got / sent if sent else 0.0}
    return out


def raw_listen(member: Member, ifname: str, tag: bytes, count: int, seconds: float) -> subprocess.Popen[str]:
    """Start an AF_PACKET listener on `ifname` that keeps incoming frames containing `tag`.
    Read its result with `raw_result`."""
    cmd = member.argv(member.python("raw-listen", ifname, "--tag", tag.hex(), "--count", str(count),
                                    "--seconds", f"{seconds:g}"))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"raw-listen on {member.name}/{ifname}: {line}{p.stderr.read() if p.stderr else ''}")
    return p


def raw_result(p: subprocess.Popen[str], timeout: float = 30) -> list[bytes]:
    out, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"raw-listen failed: {err}")
    return [bytes.fromhex(h) for h in json.loads(out)]


def raw_send(member: Member, ifname: str, frames: list[bytes], gap: float = 0.01) -> None:
    member.run(member.python("raw-send", ifname, "--gap", f"{gap:g}"), input="\n".join(f.hex() for f in frames),
               check=True, timeout=30)


class Dnsmasq:
    """dnsmasq as the DHCP server of one interface (DNS off, no config file, lease file in work dir)."""

    def __init__(self, member: Member, ifname: str, first: str, last: str) -> None:
        self.member, self.ifname, self.first, self.last = member, ifname, first, last
        self.log = member.workdir / "dnsmasq.log"

    def start(self, timeout: float = 10.0) -> "Dnsmasq":
        d = self.member.workdir
        self.proc = self.member.start(
            ["dnsmasq", "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null", "--port=0",
             f"--interface={self.ifname}", "--bind-interfaces", f"--dhcp-range={self.first},{self.last},255.255.255.0,10m",
             f"--dhcp-leasefile={d}/dnsmasq.leases", f"--pid-file={d}/dnsmasq.pid", "--dhcp-authoritative", "--log-dhcp"],
            self.log)
        wait_for(lambda: self.proc.poll() is not None or log_has(self.log, "DHCP, sockets bound"), timeout, "dnsmasq up")
        if self.proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {self.log.read_text(errors='replace')}")
        return self


def udhcpc(member: Member, ifname: str, timeout: float = 20.0) -> dict[str, str] | None:
    """busybox udhcpc on `ifname` until a lease (then the address is configured), else None."""
    script = member.workdir / "udhcpc.sh"
    script.write_text("#!/bin/sh\n"
                      "echo \"udhcpc-event $1 ip=$ip mask=$mask serverid=$serverid\"\n"
                      "[ \"$1\" = bound ] && ip addr add \"$ip/$mask\" dev \"$interface\"\n"
                      "exit 0\n")
    script.chmod(0o755)
    tries = max(1, int(timeout / 2))
    p = member.run(["busybox", "udhcpc", "-i", ifname, "-f", "-q", "-n", "-t", str(tries), "-T", "2", "-s", str(script)],
                   timeout=timeout + 10)
    m = re.search(r"udhcpc-event bound ip=(\S+) mask=(\S+) serverid=(\S+)", p.stdout)
    return {"ip": m.group(1), "mask": m.group(2), "server": m.group(3)} if m else None


# --- CLI run inside namespaces -----------------------------------------------------------------
def _raw_listen(ifname: str, tag: bytes, count: int, seconds: float) -> list[str]:
    got: list[str] = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
        s.bind((ifname, 0))
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while len(got) < count and time.monotonic() < deadline:
            r, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                continue
            data, addr = s.recvfrom(65535)
            if addr[2] != PACKET_OUTGOING and tag in data:
                got.append(data.hex())
    return got


def _raw_send(ifname: str, frames: list[bytes], gap: float) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
        s.bind((ifname, 0))
        for f in frames:
            s.send(f)
            time.sleep(gap)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shoal.lab.lanapps")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("tw-browse", help="teeworlds 0.7 LAN browse by broadcast; JSON list of servers")
    b.add_argument("--timeout", type=float, default=5.0)
    li = sub.add_parser("raw-listen", help="print 'ready', then a JSON list of hex frames containing TAG")
    li.add_argument("ifname")
    li.add_argument("--tag", required=True)
    li.add_argument("--count", type=int, required=True)
    li.add_argument("--seconds", type=float, default=5.0)
    se = sub.add_parser("raw-send", help="send the hex frames read from stdin (one per line)")
    se.add_argument("ifname")
    se.add_argument("--gap", type=float, default=0.01)
    a = ap.parse_args(argv)
    if a.cmd == "tw-browse":
        print(json.dumps(tw_browse(a.timeout)))
    elif a.cmd == "raw-listen":
        print(json.dumps(_raw_listen(a.ifname, bytes.fromhex(a.tag), a.count, a.seconds)))
    else:
        _raw_send(a.ifname, [bytes.fromhex(x) for x in sys.stdin.read().split()], a.gap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
