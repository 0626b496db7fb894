"""The liveness loop: the asyncio glue around `shoal.daemon.liveness.Liveness` (sans-IO).

Owns: the daemon's `liveness` task (every LIVENESS_TICK), the overlay probes it sends and the
PeerReports it answers the server with (`_reported`: the last report per peer, and when).

Each tick feeds the tracker the engine's rx counters; handshakes come from the engine's
events (`on_event`, which also records the handshake RTT). While the server is lost (every
peer) or asked for it with CheckPeer (that peer) the tracker asks for an ICMP echo through the
tunnel to quiet peers every PROBE_INTERVAL, marks a tunnel down after DOWN_AFTER s without an
authenticated packet and keeps probing it. Every state change is logged with its reason. A
peer the server asked about is reported at once, again on every change, and every
REPORT_INTERVAL while it answers. On each login the server's requests are forgotten (it
re-sends CheckPeer for peers still away).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from shoal.control import messages as M
from shoal.daemon.env import sleep
from shoal.daemon.liveness import LIVENESS_TICK, PROBE_INTERVAL
from shoal.daemon.session import send_quiet
from shoal.wireguard.device import DeviceEvent
from shoal.wireguard.keys import PublicKey

# `Daemon` below is shoal.daemon.daemon.Daemon (not imported: it imports this module)
Daemon = Any

log = logging.getLogger("shoal.daemon")

REPORT_INTERVAL = 10.0  # while the server asks us to check a peer that answers: PeerReport this often

__all__ = ["LIVENESS_TICK", "REPORT_INTERVAL", "LiveCheck"]


class LiveCheck:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self._reported: dict[PublicKey, tuple[bool, float]] = {}

    def _key_of(self, node_id: str) -> PublicKey | None:
        p = self.d.view.peers.get(node_id)
        try:
            return PublicKey(p.public_key) if p is not None else None
        except ValueError:
            return None

    def _sync(self, now: float) -> None:
        if self.d.plane is not None:
            self.d.liveness.set_peers({k: p.stats.rx_bytes for k, p in self.d.plane.device.peers.items()}, now)

    def on_login(self) -> None:
        now = self.d.sched.time()
        for key in list(self.d.liveness.peers):  # the server re-sends CheckPeer for peers still away
            self.d.liveness.set_requested(key, False, now)
        self._reported.clear()

    def on_check_peer(self, msg: M.CheckPeer) -> None:
        d = self.d
        key = self._key_of(msg.node_id)
        now = d.sched.time()
        self._sync(now)  # the peer may have arrived in the view just before
        if key is None or not d.liveness.set_requested(key, msg.active, now):
            log.info("the server asked to %s checking %s, which is not a peer here", "start" if msg.active else "stop",
                     msg.node_id)
            return
        nick = d.view.peers[msg.node_id].nickname
        if msg.active:
            log.info("the server lost %s (%s): checking its tunnel", nick, msg.node_id)
        else:
            log.info("the server has %s (%s) back: check over", nick, msg.node_id)
            self._reported.pop(key, None)

    def tick(self, now: float) -> list[tuple[PublicKey, str]]:
        """Feed the tracker; log changes; send reports. Returns the probes to send (key, ipv4)."""
        d = self.d
        if d.plane is None:
            return []
        lv = d.liveness
        self._sync(now)
        lv.set_active(d.pin is not None and d.conn is None, now)
        by_key = {}
        for p in d.view.peers.values():
            with contextlib.suppress(ValueError):
                by_key[PublicKey(p.public_key)] = p
        for ch in lv.update(now):
            p = by_key.get(ch.key)
            who = f"{p.nickname} ({p.node_id})" if p is not None else ch.key.fingerprint()
            level = logging.WARNING if ch.new == "down" else logging.INFO
            log.log(level, "tunnel to %s: %s -> %s: %s", who, ch.old, ch.new, ch.reason)
        conn = d.conn
        if conn is not None and d.server_checks:
            for key, pl in lv.checking():
                p = by_key.get(key)
                if not pl.requested or p is None or pl.state not in ("up", "down"):
                    continue
                alive = pl.state == "up"
                last = self._reported.get(key)
                if last is None or last[0] != alive or (alive and now - last[1] >= REPORT_INTERVAL):
                    self._reported[key] = (alive, now)
                    d.spawn(send_quiet(conn, M.PeerReport(node_id=p.node_id, reachable=alive)))
        out = []
        for key in lv.due_probes(now):
            p = by_key.get(key)
            if p is not None:
                out.append((key, p.ipv4))
        return out

    async def _probe(self, key: PublicKey, ipv4: str) -> None:
        rtt = await self.d.pinger.ping(ipv4, PROBE_INTERVAL)
        if rtt is not None:
            self.d.liveness.seen(key, self.d.sched.time(), probe=True)

    async def run(self) -> None:
        while True:
            for key, ipv4 in self.tick(self.d.sched.time()):
                self.d.spawn(self._probe(key, ipv4))
            await sleep(self.d.sched, LIVENESS_TICK)

    def on_event(self, event: DeviceEvent, now: float) -> None:
        """The engine's events: a completed handshake is a sign of life (and, if we sent the
        initiation within rekey_timeout, an RTT sample unless a ping measured one)."""
        d = self.d
        if event.kind == "handshake-complete":
            d.liveness.seen(event.peer, now)
        if event.kind != "handshake-complete" or d.plane is None:
            return
        peer = d.plane.device.peers.get(event.peer)
        if peer is not None and 0 <= now - peer.last_initiation_sent < d.plane.device.timers.rekey_timeout:
            if d.rtt.get(event.peer, (0, ""))[1] != "ping":
                d.rtt[event.peer] = (now - peer.last_initiation_sent, "handshake")
