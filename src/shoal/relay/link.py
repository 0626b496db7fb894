"""The node's link to its relay (sans-IO): which way (UDP or WebSocket), when to (re)connect,
authenticate again, keep alive, re-test UDP and give up; frames in, actions out.

Owns: one `RelayClient` (`shoal.relay.client`: the frames and the proofs) at a time, the
transport it runs over, and every timer of the relay connection. The caller (the daemon's NAT
traversal, `shoal.daemon.traversal`) moves bytes and runs the WebSocket; it feeds inputs with
`now` and carries out what `take_actions()` returns, in order:

    inputs                                  actions (dataclasses below)
    set_server(key, udp, ws_url, now)       SendUdp(frame, dst)   a datagram to the relay's UDP
    udp_received(frame, now)                SendWs(ws, frame)     a message on WebSocket `ws`
    ws_opened(ws, now)                      OpenWs(ws, url, open_timeout)   dial it
    ws_received(ws, frame, now)             CloseWs(ws)           hang it up
    ws_closed(ws, now)  (failed or dropped) Changed(mode, ready)  readiness may have changed:
    send(dst_key, payload, now)                                   tell the path engines
    handle_timer(now, server_up=...)        Delivered(items)      (src_key, payload) from peers
    active = True/False (a peer's path is the relay: fast keepalives)
    next_deadline()

`ws` is a number per WebSocket attempt; inputs about an older one are ignored. Frames queued
for a WebSocket before it opens are sent once it does. Counters go to `stats` (the caller's
Counter when given): relay_auth_retry, relay_not_ready, relay_unexpected, relay_error_<code>.

States (`mode`, `client.ready`; t = `_started`, the last HELLO):

    state      meaning
    idle       no client: no relay yet, or waiting until `_retry_at`
    udp-wait   HELLO sent over UDP, no proven answer yet (UDP may be blocked)
    udp-ref    over UDP, a proven refusal came (not a member yet, full): the relay answers
    ws-auth    over the WebSocket (opening or open), not accepted yet
    udp-up     accepted over UDP        } keepalive every K (RELAY_ACTIVE_KEEPALIVE while
    ws-up      accepted over WebSocket  } `active`, else RELAY_KEEPALIVE_INTERVAL)

Transition table (state x event -> actions; next state). "connect" = close any WebSocket;
if there is a UDP address and UDP has not failed here (or there is no WebSocket URL): a new
client, SendUdp(HELLO), udp-wait; else with a URL: "open ws"; else idle. "open ws" = a new
client, OpenWs (open timeout RELAY_WS_QUICK_OPEN_TIMEOUT while quick retries are left, else
RELAY_WS_OPEN_TIMEOUT), SendWs(HELLO), retest due at +RELAY_UDP_RETEST (with a UDP address);
ws-auth. Without a URL or key, "open ws" is: retry at +RELAY_RETRY, idle.

    state     event                                       actions; next state
    any       set_server, something changed or no client  connect (no Changed)
    idle      timer, `_retry_at` passed                   connect
    udp-wait  frame over UDP                              client's replies; Changed if
                                                          accepted; udp-up (or udp-ref)
    udp-wait  timer, t + RELAY_UDP_WAIT, server down      idle, retry at +RELAY_RETRY
    udp-wait  timer, t + RELAY_UDP_WAIT, server up        UDP failed; open ws (no URL: idle,
                                                          retry at +RELAY_RETRY)
    udp-ref,  timer, t + wait (RELAY_AUTH_RETRY, doubling SendUdp/SendWs(HELLO), t = now,
    ws-auth     up to RELAY_AUTH_RETRY_MAX)               wait doubles; same state
    ws-auth   frame over the WebSocket                    replies; if accepted: wait back to
                                                          RELAY_AUTH_RETRY, quick retries
                                                          reset, Changed; ws-up
    ws-*      ws_opened                                   none (ws-auth stays ws-auth)
    ws-*      ws_closed                                   Changed; idle, retry at: +0 (it was
                                                          accepted: RELAY_WS_QUICK_RETRIES quick
                                                          retries granted), +RELAY_WS_QUICK_RETRY
                                                          (one quick retry used), else
                                                          +RELAY_RETRY and UDP is tried first again
    *-up      timer, last keepalive + K                   SendX(KEEPALIVE); ping out (if none)
    *-up      frame: a proven PONG                        rtt = now - ping; no ping out
    *-up      timer, ping out RELAY_REAUTH_AFTER          SendX(HELLO) (the client is not
                                                          accepted until its AUTH_OK), t = now,
                                                          Changed; udp-wait/ws-auth
    *-up      timer, no frame for RELAY_SILENCE, or ping  connect, Changed
                out RELAY_PONG_TIMEOUT (a late timer)
    *-up      frame: untagged ERROR unauthenticated       the client's hint HELLO (at most one
                                                          per RELAY_HINT_INTERVAL); *-up
    ws-*      timer, retest due                           a retest client, SendUdp(HELLO),
                                                          retest due at +RELAY_UDP_RETEST
    ws-*      frame over UDP, retest under way            retest's replies; on its proven
                                                          AUTH_OK: CloseWs, Changed; udp-up
    other     frame over UDP                              relay_unexpected += 1
    any       send, not accepted                          relay_not_ready += 1
    *-up      send                                        SendX(SEND)

Only the retest's own proven AUTH_OK brings a WebSocket node back to UDP (issue 18 F12: the
relay's UDP address can be spoofed). The retest timer is checked on every timer but is armed
as a deadline only while accepted (as the glue always did).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from shoal import endpoint
from shoal.constants import (
    RELAY_ACTIVE_KEEPALIVE,
    RELAY_AUTH_RETRY,
    RELAY_AUTH_RETRY_MAX,
    RELAY_KEEPALIVE_INTERVAL,
    RELAY_PONG_TIMEOUT,
    RELAY_REAUTH_AFTER,
    RELAY_RETRY,
    RELAY_SILENCE,
    RELAY_UDP_RETEST,
    RELAY_UDP_WAIT,
    RELAY_WS_OPEN_TIMEOUT,
    RELAY_WS_QUICK_OPEN_TIMEOUT,
    RELAY_WS_QUICK_RETRIES,
    RELAY_WS_QUICK_RETRY,
)
from shoal.endpoint import Endpoint
from shoal.relay.client import RelayClient
from shoal.wireguard.keys import PrivateKey, PublicKey

__all__ = ["Action", "Changed", "CloseWs", "Delivered", "OpenWs", "RelayLink", "SendUdp", "SendWs"]

log = logging.getLogger("shoal.traversal")  # the relay link's lines are the traversal's


@dataclass(frozen=True, slots=True)
class SendUdp:
    frame: bytes
    dst: Endpoint


@dataclass(frozen=True, slots=True)
class SendWs:
    ws: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class OpenWs:
    ws: int
    url: str
    open_timeout: float


@dataclass(frozen=True, slots=True)
class CloseWs:
    ws: int


@dataclass(frozen=True, slots=True)
class Changed:
    mode: str | None
    ready: bool


@dataclass(frozen=True, slots=True)
class Delivered:
    items: list[tuple[bytes, bytes]]  # (src_key, payload)


Action = SendUdp | SendWs | OpenWs | CloseWs | Changed | Delivered


class RelayLink:
    """See the module docstring."""

    def __init__(self, node_key: PrivateKey, *, stats: Counter[str] | None = None) -> None:
        self.key = node_key
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.relay_key: PublicKey | None = None
        self.udp: Endpoint | None = None
        self.ws_url: str | None = None
        self.client: RelayClient | None = None
        self.mode: str | None = None  # "udp" | "ws" | None
        self.rtt: float | None = None  # seconds: authentication (2 round trips) / 2, then keepalive -> pong
        self.active = False  # a peer is reached through the relay: keepalives every RELAY_ACTIVE_KEEPALIVE
        self.ws_open = False  # the current WebSocket is open (it may still be unaccepted)
        self._started = 0.0  # the last HELLO of the current client
        self._last_rx = 0.0
        self._last_ka = 0.0  # last keepalive (sent whatever the traffic: it checks the path)
        self._retry_at: float | None = None
        self._ping_at: float | None = None  # when the unanswered keepalive went out
        self._udp_failed = False  # the UDP relay never answered here: go straight to WebSocket
        self._reauth_sent = False  # re-authentication after an unanswered keepalive is under way
        self._auth_wait = RELAY_AUTH_RETRY  # not accepted this long by a relay that answers: HELLO again
        self._ws_quick = 0  # quick WebSocket retries left after a working one dropped
        self._ws = 0  # the current WebSocket attempt (0: none)
        self._ws_next = 1
        self._retest_at: float | None = None  # while on the WebSocket: next HELLO over UDP
        self._retest: RelayClient | None = None  # its handshake over UDP, while on the WebSocket
        self._actions: list[Action] = []

    @property
    def ready(self) -> bool:
        return self.client is not None and self.client.ready

    def take_actions(self) -> list[Action]:
        out, self._actions = self._actions, []
        return out

    # ------------------------------------------------------------------ inputs

    def set_server(self, relay_key: PublicKey, udp: Endpoint | None, ws_url: str | None, now: float) -> None:
        """After each login: the relay's key, UDP address and WebSocket URL (either may be None).
        Connects again when any of them changed or there is no client."""
        if (relay_key, udp, ws_url) != (self.relay_key, self.udp, self.ws_url) or self.client is None:
            self.relay_key, self.udp, self.ws_url = relay_key, udp, ws_url
            self._connect(now)

    def udp_received(self, frame: bytes, now: float) -> None:
        """A relay frame from the relay's UDP address (the caller checks the source)."""
        if self.mode == "udp":
            self._rx(frame, now)
        elif self.mode == "ws" and self._retest is not None:
            self._retest_rx(frame, now)
        else:
            self.stats["relay_unexpected"] += 1

    def ws_opened(self, ws: int, now: float) -> None:  # noqa: ARG002 - now: symmetry with the other inputs
        if ws == self._ws:
            self.ws_open = True

    def ws_received(self, ws: int, frame: bytes, now: float) -> None:
        if ws == self._ws:
            self._rx(frame, now)

    def ws_closed(self, ws: int, now: float) -> None:
        """WebSocket `ws` failed to open or dropped (not when we closed it)."""
        if ws != self._ws:
            return
        client = self.client
        assert client is not None
        self.client, self.mode, self._ws, self.ws_open = None, None, 0, False
        # a connection that worked and dropped is redone at once, and quickly again a few
        # times (a roamed host's first SYN may be lost); one that keeps failing, later
        if client.ready:
            self._ws_quick = RELAY_WS_QUICK_RETRIES
            delay = 0.0
        elif self._ws_quick > 0:
            self._ws_quick -= 1
            delay = RELAY_WS_QUICK_RETRY
        else:
            delay = RELAY_RETRY
            self._udp_failed = False  # the relay is not reachable at all: next time, UDP first again
        self._retry_at = now + delay
        self._changed()

    def send(self, dst: bytes, payload: bytes, now: float) -> None:
        """A payload for the peer with node key `dst`, through the relay."""
        client = self.client
        if client is None or not client.ready:
            self.stats["relay_not_ready"] += 1
            return
        self._tx(client.wrap(dst, payload), now)

    def handle_timer(self, now: float, *, server_up: bool = True) -> None:
        """`server_up`: the control connection is up (a silent UDP relay then means UDP is
        blocked, not that the server is away)."""
        if self.mode == "ws" and self._retest_at is not None and now >= self._retest_at:
            # UDP may work now (the server was only down when we gave up on it, or we moved):
            # a whole handshake over UDP; only its proven AUTH_OK switches back
            assert self.relay_key is not None and self.udp is not None
            self._retest = RelayClient(self.key, self.relay_key)
            self._actions.append(SendUdp(self._retest.start(now), self.udp))
            self._retest_at = now + RELAY_UDP_RETEST
        client = self.client
        if client is None:
            if self._retry_at is not None and now >= self._retry_at:
                self._connect(now)
            return
        if not client.ready:
            self._timer_unaccepted(client, now, server_up)
            return
        silent = now - self._last_rx >= RELAY_SILENCE
        unanswered = self._ping_at is not None and now - self._ping_at >= RELAY_PONG_TIMEOUT
        if silent or unanswered:
            log.info("relay: %s, reconnecting", f"silent for {RELAY_SILENCE:.0f} s" if silent else
                     f"keepalive unanswered for {RELAY_PONG_TIMEOUT:.0f} s")
            self._connect(now)
            self._changed()
            return
        if self._ping_at is not None and now - self._ping_at >= RELAY_REAUTH_AFTER and not self._reauth_sent:
            log.info("relay: keepalive unanswered for %.1f s (our address changed?), authenticating again", RELAY_REAUTH_AFTER)
            self._reauth_sent = True
            self._tx(client.start(now), now)
            self._started = now
            self._changed()
            return
        if now - self._last_ka >= self._keepalive_interval():
            self._tx(client.keepalive(), now)
            self._last_ka = now
            if self._ping_at is None:
                self._ping_at = now

    def next_deadline(self) -> float | None:
        client = self.client
        if client is None:
            return self._retry_at
        if not client.ready:
            if self._answers(client):
                return self._started + self._auth_wait
            return self._started + RELAY_UDP_WAIT if self.mode == "udp" else None
        ds = [self._last_rx + RELAY_SILENCE, self._last_ka + self._keepalive_interval()]
        if self._ping_at is not None:
            ds.append(self._ping_at + (RELAY_PONG_TIMEOUT if self._reauth_sent else RELAY_REAUTH_AFTER))
        if self.mode == "ws" and self._retest_at is not None:
            ds.append(self._retest_at)
        return min(ds)

    # ------------------------------------------------------------------ internals

    def _changed(self) -> None:
        self._actions.append(Changed(self.mode, self.ready))

    def _keepalive_interval(self) -> float:
        return RELAY_ACTIVE_KEEPALIVE if self.active else RELAY_KEEPALIVE_INTERVAL

    def _answers(self, client: RelayClient) -> bool:
        """While not accepted: is this way to the relay known to work (a WebSocket is a
        connection; over UDP only a proven refusal says so, else UDP may be blocked)?"""
        return self.mode == "ws" or client.stats["refused"] > 0

    def _timer_unaccepted(self, client: RelayClient, now: float, server_up: bool) -> None:
        if self._answers(client):
            # the relay is reachable this way but has not accepted us (it refused: not a
            # member yet, full; or frames were lost): ask again, less and less often
            if now - self._started >= self._auth_wait:
                log.info("relay: not accepted via %s after %.0f s, authenticating again", self.mode, self._auth_wait)
                self.stats["relay_auth_retry"] += 1
                self._tx(client.start(now), now)
                self._started = now
                self._auth_wait = min(self._auth_wait * 2, RELAY_AUTH_RETRY_MAX)
        elif self.mode == "udp" and now - self._started >= RELAY_UDP_WAIT:
            if not server_up:
                # the server itself is away (restarting?): that says nothing about UDP
                self.client, self.mode, self._retry_at = None, None, now + RELAY_RETRY
                return
            self._udp_failed = True
            if self.ws_url is not None:
                log.info("relay: no answer over UDP from %s in %.0f s, trying WebSocket", endpoint.text(self.udp), RELAY_UDP_WAIT)  # type: ignore[arg-type]
                self._open_ws(now)
            else:
                self.client, self.mode, self._retry_at = None, None, now + RELAY_RETRY

    def _connect(self, now: float) -> None:
        """(Re)start: UDP first (unless it never answered on this network), WebSocket if UDP
        stays silent."""
        self._stop_ws()
        self.client = None
        self.mode = None
        self._retry_at = None
        self._ping_at = None
        self._reauth_sent = False
        if self.relay_key is None:
            return
        if self.udp is not None and not (self._udp_failed and self.ws_url is not None):
            self.client = RelayClient(self.key, self.relay_key)
            self.mode = "udp"
            self._started = self._last_rx = now
            self._actions.append(SendUdp(self.client.start(now), self.udp))
        elif self.ws_url is not None:
            self._open_ws(now)

    def _open_ws(self, now: float) -> None:
        if self.ws_url is None or self.relay_key is None:
            self._retry_at = now + RELAY_RETRY
            return
        self._retest_at = now + RELAY_UDP_RETEST if self.udp is not None else None
        self._retest = None
        self.client = RelayClient(self.key, self.relay_key)
        self.mode = "ws"
        self._started = self._last_rx = now
        self._ws, self._ws_next, self.ws_open = self._ws_next, self._ws_next + 1, False
        timeout = RELAY_WS_QUICK_OPEN_TIMEOUT if self._ws_quick > 0 else RELAY_WS_OPEN_TIMEOUT
        self._actions.append(OpenWs(self._ws, self.ws_url, timeout))
        self._actions.append(SendWs(self._ws, self.client.start(now)))

    def _stop_ws(self) -> None:
        if self._ws:
            self._actions.append(CloseWs(self._ws))
            self._ws, self.ws_open = 0, False

    def _tx(self, frame: bytes, now: float) -> None:  # noqa: ARG002 - now: symmetry with the inputs
        if self.mode == "udp" and self.udp is not None:
            self._actions.append(SendUdp(frame, self.udp))
        elif self.mode == "ws" and self._ws:
            self._actions.append(SendWs(self._ws, frame))

    def _retest_rx(self, frame: bytes, now: float) -> None:
        """A frame from the UDP relay while on the WebSocket: the re-test handshake."""
        retest = self._retest
        assert retest is not None and self.udp is not None
        for out in retest.receive(frame, now):
            self._actions.append(SendUdp(out, self.udp))
        if not retest.ready:
            return
        log.info("relay: UDP works again (the relay accepted us over it), leaving the WebSocket")
        self._stop_ws()
        self._udp_failed = False
        self._retest = self._retest_at = None
        self.client, self.mode = retest, "udp"
        self._started = self._last_rx = self._last_ka = now
        self._retry_at = self._ping_at = None
        self._reauth_sent = False
        self._auth_wait = RELAY_AUTH_RETRY
        self._changed()

    def _rx(self, frame: bytes, now: float) -> None:
        client = self.client
        if client is None:
            return
        was_ready = client.ready
        pongs = client.stats["pong"]
        self._last_rx = now
        for reply in client.receive(frame, now):
            self._tx(reply, now)
        if client.inbox:
            inbox, client.inbox = client.inbox, []
            self._actions.append(Delivered(inbox))
        for code, _key in client.errors:
            self.stats[f"relay_error_{code}"] += 1
        client.errors.clear()
        if client.stats["pong"] != pongs and self._ping_at is not None:
            self.rtt, self._ping_at = now - self._ping_at, None
            self._reauth_sent = False
        if client.ready and not was_ready:
            self._auth_wait = RELAY_AUTH_RETRY
            self.rtt = (now - self._started) / 2
            self._last_ka = now
            self._ping_at, self._reauth_sent = None, False
            if self.mode == "udp":
                self._udp_failed = False
            else:
                self._ws_quick = 0  # open again: the next drop starts a fresh round of quick retries
        if was_ready and not client.ready:  # the relay forgot us (our address changed): re-authenticating
            self._started = now
        if client.ready != was_ready:
            log.info("relay: %s via %s", "accepted us" if client.ready else "lost us", self.mode)
            self._changed()
