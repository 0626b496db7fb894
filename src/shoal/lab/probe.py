"""Tiny probe programs run inside lab namespaces (`python -m shoal.lab.probe MODE ...`).

Used by shoal.lab.selftest to *measure* NAT behaviour (RFC 4787 / RFC 5780 style). All output
is one JSON object per line on stdout.

Wire format (UDP, one JSON object per datagram, at most 1024 bytes, unknown input ignored):

    client -> responder  {"op": "map", "id": N}
    responder -> client  {"id": N, "seen": "ip:port", "via": "ip:port"}   from the same socket
    client -> responder  {"op": "filter", "id": N, "from": ["ip:port", ...]}
    responder -> client  {"id": N, "via": "ip:port"}   once from each listed responder socket,
                                                       to the source the request came from
    client -> client     {"op": "hairpin", "from": "ip:port"}   (hairpin test payload)

Modes:

    responder --addr A [--addr A2] --port P [--port P2] [--tcp T ...]
        binds UDP on every addr x port, TCP listeners on addr[0]:T; prints {"ready": true};
        exits when its parent goes away or on SIGTERM.
    client --a1 A1 --a2 A2 --p1 P1 --p2 P2
        mapping: one socket asks A1:P1, A1:P2, A2:P1 what source they see;
        filtering: a fresh socket asks A1:P1 for replies from A1:P1, A1:P2 and A2:P1;
        prints {"local": ..., "udp": bool, "mapping": {...}, "filter": [...]}
    hairpin-listen --a1 A1 --p1 P1 [--wait S]
        learns its mapping, prints {"mapped": ...}, then waits for a hairpin payload and prints
        {"got": bool, "from": "ip:port" | null}
    hairpin-send --a1 A1 --p1 P1 --to IP:PORT
        learns its mapping, sends the hairpin payload a few times, prints {"mapped": ...}
    tcp --to IP:PORT [--to ...]
        prints {"IP:PORT": bool, ...}: whether a TCP connection could be opened (1 s timeout)
    map --a1 A1 --p1 P1
        prints {"local": ..., "seen": "ip:port" | null}: the mapping the server observes
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any

MAX_DGRAM = 1024
RETRY = 0.3
FILTER_WAIT = 0.5


def _ep(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def _parse_ep(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host, int(port)


def _decode(data: bytes) -> dict[str, Any] | None:
    if len(data) > MAX_DGRAM:
        return None
    try:
        msg = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return msg if isinstance(msg, dict) else None


def _out(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


# --- responder ---------------------------------------------------------------------------
def responder(addrs: list[str], ports: list[int], tcp_ports: list[int]) -> None:
    socks: dict[str, socket.socket] = {}
    for a in addrs:
        for p in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((a, p))
            socks[_ep((a, p))] = s
    listeners = []
    for p in tcp_ports:
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((addrs[0], p))
        t.listen(16)
        listeners.append(t)
    parent = os.getppid()
    _out({"ready": True})
    by_fd = {s.fileno(): (ep, s) for ep, s in socks.items()}
    while os.getppid() == parent:
        readable, _, _ = select.select([*socks.values(), *listeners], [], [], 0.5)
        for r in readable:
            if r in listeners:
                conn, _ = r.accept()
                conn.close()
                continue
            via, s = by_fd[r.fileno()]
            try:
                data, src = s.recvfrom(4096)
            except OSError:
                continue
            msg = _decode(data)
            if msg is None or not isinstance(msg.get("id"), int):
                continue
            if msg.get("op") == "map":
                s.sendto(json.dumps({"id": msg["id"], "seen": _ep(src), "via": via}).encode(), src)
            elif msg.get("op") == "filter" and isinstance(msg.get("from"), list):
                for ep in msg["from"][:8]:
                    if isinstance(ep, str) and ep in socks:
                        socks[ep].sendto(json.dumps({"id": msg["id"], "via": ep}).encode(), src)


# --- client side -------------------------------------------------------------------------
def _ask_map(s: socket.socket, dst: tuple[str, int], rid: int, tries: int = 3) -> str | None:
    for _ in range(tries):
        s.sendto(json.dumps({"op": "map", "id": rid}).encode(), dst)
        deadline = time.monotonic() + RETRY
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            try:
                data, src = s.recvfrom(4096)
            except OSError:
                break
            msg = _decode(data)
            if msg and msg.get("id") == rid and src == dst and isinstance(msg.get("seen"), str):
                return str(msg["seen"])
    return None


def _udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    return s


def client(a1: str, a2: str, p1: int, p2: int) -> dict[str, Any]:
    s = _udp_socket()
    e11, e12, e21 = (a1, p1), (a1, p2), (a2, p1)
    first = _ask_map(s, e11, 1)
    if first is None:
        return {"local": None, "udp": False, "mapping": {}, "filter": []}
    local = _local_addr(s, e11)
    mapping = {_ep(e11): first, _ep(e12): _ask_map(s, e12, 2), _ep(e21): _ask_map(s, e21, 3)}
    f = _udp_socket()
    want = [_ep(e11), _ep(e12), _ep(e21)]
    got: set[str] = set()
    for _ in range(3):
        f.sendto(json.dumps({"op": "filter", "id": 9, "from": want}).encode(), e11)
        deadline = time.monotonic() + FILTER_WAIT
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([f], [], [], left)[0]:
                break
            data, src = f.recvfrom(4096)
            msg = _decode(data)
            if msg and msg.get("id") == 9 and msg.get("via") == _ep(src):
                got.add(_ep(src))
                if len(got) == len(want):
                    break
        if _ep(e11) in got:   # the request made it; a lost one would look like strict filtering
            break
    return {"local": local, "udp": True, "mapping": mapping, "filter": sorted(got)}


def _local_addr(s: socket.socket, dst: tuple[str, int]) -> str:
    """Our own address towards `dst` and the socket's port (the unbound socket says 0.0.0.0)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(dst)
        ip = probe.getsockname()[0]
    finally:
        probe.close()
    return f"{ip}:{s.getsockname()[1]}"


def hairpin_listen(a1: str, p1: int, wait: float) -> None:
    s = _udp_socket()
    mapped = _ask_map(s, (a1, p1), 1)
    _out({"mapped": mapped})
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([s], [], [], left)[0]:
            break
        data, src = s.recvfrom(4096)
        msg = _decode(data)
        if msg and msg.get("op") == "hairpin":
            _out({"got": True, "from": _ep(src)})
            return
    _out({"got": False, "from": None})


def hairpin_send(a1: str, p1: int, to: str) -> None:
    s = _udp_socket()
    mapped = _ask_map(s, (a1, p1), 1)
    payload = json.dumps({"op": "hairpin", "from": mapped}).encode()
    for _ in range(5):
        s.sendto(payload, _parse_ep(to))
        time.sleep(0.05)
    _out({"mapped": mapped})


def tcp(targets: list[str]) -> None:
    res = {}
    for t in targets:
        try:
            with socket.create_connection(_parse_ep(t), timeout=1.0):
                res[t] = True
        except OSError:
            res[t] = False
    _out(res)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m shoal.lab.probe")
    ap.add_argument("mode", choices=["responder", "client", "hairpin-listen", "hairpin-send", "tcp", "map"])
    ap.add_argument("--addr", action="append", default=[])
    ap.add_argument("--port", action="append", type=int, default=[])
    ap.add_argument("--tcp", action="append", type=int, default=[])
    ap.add_argument("--a1")
    ap.add_argument("--a2")
    ap.add_argument("--p1", type=int)
    ap.add_argument("--p2", type=int)
    ap.add_argument("--to", action="append", default=[])
    ap.add_argument("--wait", type=float, default=2.0)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if a.mode == "responder":
        responder(a.addr, a.port, a.tcp)
    elif a.mode == "client":
        _out(client(a.a1, a.a2, a.p1, a.p2))
    elif a.mode == "hairpin-listen":
        hairpin_listen(a.a1, a.p1, a.wait)
    elif a.mode == "hairpin-send":
        hairpin_send(a.a1, a.p1, a.to[0])
    elif a.mode == "tcp":
        tcp(a.to)
    elif a.mode == "map":
        s = _udp_socket()
        seen = _ask_map(s, (a.a1, a.p1), 1)
        _out({"local": _local_addr(s, (a.a1, a.p1)), "seen": seen})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
