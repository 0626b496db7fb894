"""The relay link engine (sans-IO), row by row of its transition table, against a real
RelayEngine on plain-float time: UDP first, fallback to the WebSocket, re-auth backoff, UDP
retest and return (only on its proven AUTH_OK), keepalives, pong timeout, silence, quick
WebSocket retries."""

from __future__ import annotations

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
from shoal.relay import frames as f
from shoal.relay.engine import RelayEngine, StreamBinding, UdpBinding
from shoal.relay.link import Changed, CloseWs, Delivered, OpenWs, RelayLink, SendUdp, SendWs
from shoal.wireguard.keys import PrivateKey

RELAY = PrivateKey.from_seed(b"relay-link" * 4)
NODE = PrivateKey.from_seed(b"node-link" * 4)
UDP = ("192.0.2.1", 3480)
URL = "ws://192.0.2.1:8080/relay"
ME = UdpBinding("203.0.113.1", 1000)


class Harness:
    """Carries the link's actions to a RelayEngine: UDP unless `udp_up` is False, the
    WebSocket once opened (`ws_up`). Every action is kept in `seen`."""

    def __init__(self, udp: tuple[str, int] | None = UDP, url: str | None = URL, may_bind=None) -> None:  # noqa: ANN001
        self.relay = RelayEngine(RELAY, lambda s, d: True, may_bind=may_bind)
        self.link = RelayLink(NODE)
        self.udp, self.url = udp, url
        self.udp_up, self.ws_up = True, True
        self.seen: list = []
        self.ws: int | None = None

    def pump(self, now: float) -> list:
        out = []
        while acts := self.link.take_actions():
            out += acts
            for a in acts:
                if isinstance(a, SendUdp) and self.udp_up:
                    self.relay.receive(a.frame, ME, now)
                elif isinstance(a, OpenWs):
                    self.ws = a.ws
                    if self.ws_up:
                        self.link.ws_opened(a.ws, now)
                elif isinstance(a, SendWs) and self.ws_up and a.ws == self.ws:
                    self.relay.receive(a.frame, StreamBinding(a.ws), now)
            for frame, b in self.relay.take_outbox():
                if isinstance(b, UdpBinding):
                    self.link.udp_received(frame, now)
                else:
                    self.link.ws_received(b.session, frame, now)
        self.seen += out
        return out

    def start(self, now: float = 0.0) -> list:
        self.link.set_server(RELAY.public_key(), self.udp, self.url, now)
        return self.pump(now)

    def timer(self, now: float, server_up: bool = True) -> list:
        self.link.handle_timer(now, server_up=server_up)
        return self.pump(now)


def kinds(actions: list) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_idle_set_server_connects_over_udp_first_and_is_accepted() -> None:
    h = Harness()
    out = h.start(0.0)
    assert isinstance(out[0], SendUdp) and out[0].dst == UDP and f.parse(out[0].frame).__class__ is f.Hello
    assert h.link.mode == "udp" and h.link.ready and Changed("udp", True) in out
    assert h.link.rtt == 0.0 and h.link.next_deadline() == RELAY_KEEPALIVE_INTERVAL
    h.link.set_server(RELAY.public_key(), UDP, URL, 1.0)  # nothing changed: nothing happens
    assert h.link.take_actions() == []
    h.link.set_server(RELAY.public_key(), ("192.0.2.2", 3480), URL, 1.0)  # changed: connect again
    acts = h.link.take_actions()
    assert kinds(acts) == ["SendUdp"] and acts[0].dst == ("192.0.2.2", 3480) and not h.link.ready


def test_without_udp_the_websocket_is_opened_at_once() -> None:
    h = Harness(udp=None)
    out = h.start(0.0)
    assert out[0] == OpenWs(1, URL, RELAY_WS_OPEN_TIMEOUT) and isinstance(out[1], SendWs)
    assert h.link.mode == "ws" and h.link.ws_open and h.link.ready and out[-1] == Changed("ws", True)


def test_no_relay_at_all() -> None:
    link = RelayLink(NODE)
    link.set_server(RELAY.public_key(), None, None, 0.0)
    assert link.take_actions() == [] and link.client is None and link.next_deadline() is None


def test_udp_silent_server_up_falls_back_to_the_websocket_and_stays_there() -> None:
    h = Harness()
    h.udp_up = False
    h.start(0.0)
    assert h.link.mode == "udp" and not h.link.ready and h.link.next_deadline() == RELAY_UDP_WAIT
    assert h.timer(RELAY_UDP_WAIT - 0.01) == []
    out = h.timer(RELAY_UDP_WAIT)
    assert isinstance(out[0], OpenWs) and h.link.mode == "ws" and h.link.ready
    # connecting again (a silent relay, say) goes straight to the WebSocket: UDP failed here
    h.link.set_server(PrivateKey.generate().public_key(), UDP, URL, 5.0)
    assert kinds(h.link.take_actions())[:2] == ["CloseWs", "OpenWs"]


def test_udp_silent_while_the_server_is_down_says_nothing_about_udp() -> None:
    h = Harness()
    h.udp_up = False
    h.start(0.0)
    assert h.timer(RELAY_UDP_WAIT, server_up=False) == [] and h.link.client is None
    assert h.link.next_deadline() == RELAY_UDP_WAIT + RELAY_RETRY
    h.udp_up = True
    out = h.timer(RELAY_UDP_WAIT + RELAY_RETRY)
    assert isinstance(out[0], SendUdp) and h.link.mode == "udp" and h.link.ready


def test_udp_silent_without_a_websocket_url_retries_later() -> None:
    h = Harness(url=None)
    h.udp_up = False
    h.start(0.0)
    assert h.timer(RELAY_UDP_WAIT) == [] and h.link.client is None
    assert h.link.next_deadline() == RELAY_UDP_WAIT + RELAY_RETRY


def test_a_refused_node_says_hello_again_with_doubling_waits_up_to_the_max() -> None:
    allow = [False]
    h = Harness(udp=None, may_bind=lambda key: allow[0])
    h.start(0.0)
    assert not h.link.ready
    now, wait, waits = 0.0, RELAY_AUTH_RETRY, []
    for _ in range(7):
        assert h.link.next_deadline() == now + wait
        assert h.timer(now + wait - 0.01) == []
        now += wait
        out = h.timer(now)
        assert isinstance(out[0], SendWs) and h.link.mode == "ws"
        waits.append(wait)
        wait = h.link._auth_wait
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 32.0, 32.0] and RELAY_AUTH_RETRY_MAX == 32.0
    assert h.link.stats["relay_auth_retry"] == 7
    allow[0] = True
    h.timer(now + wait)
    assert h.link.ready and h.link._auth_wait == RELAY_AUTH_RETRY


def test_refusal_over_the_websocket_is_retried_and_acceptance_resets_the_wait() -> None:
    allow = [False]
    h = Harness(udp=None, may_bind=lambda key: allow[0])
    h.start(0.0)
    assert h.link.mode == "ws" and not h.link.ready and h.link.next_deadline() == RELAY_AUTH_RETRY
    out = h.timer(RELAY_AUTH_RETRY)
    assert kinds(out) == ["SendWs", "SendWs"] and h.link._auth_wait == 2 * RELAY_AUTH_RETRY  # HELLO, AUTH
    allow[0] = True
    out = h.timer(3 * RELAY_AUTH_RETRY)
    assert h.link.ready and out[-1] == Changed("ws", True) and h.link._auth_wait == RELAY_AUTH_RETRY


def test_keepalives_pongs_and_rtt() -> None:
    h = Harness()
    h.start(0.0)
    out = h.timer(RELAY_KEEPALIVE_INTERVAL)
    assert kinds(out) == ["SendUdp"] and isinstance(f.parse(out[0].frame), f.Keepalive)
    assert h.link._ping_at is None and h.link.rtt == 0.0  # answered at once: rtt 0
    h.link.active = True  # a peer is relayed: keepalives come faster
    assert h.link.next_deadline() == RELAY_KEEPALIVE_INTERVAL + RELAY_ACTIVE_KEEPALIVE


def test_unanswered_keepalive_reauthenticates_then_the_pong_timeout_reconnects() -> None:
    h = Harness()
    h.start(0.0)
    h.udp_up = False
    h.timer(25.0)  # keepalive lost
    assert h.link._ping_at == 25.0 and h.link.next_deadline() == 25.0 + RELAY_REAUTH_AFTER
    out = h.timer(25.0 + RELAY_REAUTH_AFTER)
    assert kinds(out) == ["SendUdp", "Changed"] and out[-1] == Changed("udp", False)
    assert isinstance(f.parse(out[0].frame), f.Hello) and h.link._reauth_sent
    h.udp_up = True
    h.timer(26.0 + RELAY_UDP_WAIT)  # the relay answers again over UDP? it was not asked: fallback
    assert h.link.mode == "ws"


def test_a_late_timer_reconnects_after_the_pong_timeout_or_silence() -> None:
    for late in (25.0 + RELAY_PONG_TIMEOUT, RELAY_SILENCE):
        h = Harness()
        h.start(0.0)
        h.udp_up = False
        h.timer(25.0)
        h.udp_up = True
        out = h.timer(late)
        assert kinds(out)[:1] == ["SendUdp"] and Changed("udp", True) in out and h.link.ready
        assert Changed(None, False) not in out


def test_an_untagged_unauthenticated_error_is_a_hint_to_hello_again() -> None:
    h = Harness()
    h.start(0.0)
    h.link.udp_received(f.Error(f.ERR_UNAUTHENTICATED, bytes(32)).encode(), 1.0)
    out = h.link.take_actions()
    assert kinds(out) == ["SendUdp"] and isinstance(f.parse(out[0].frame), f.Hello) and h.link.ready


def test_websocket_drops_quick_retries_then_udp_first_again() -> None:
    h = Harness()
    h.udp_up = False
    h.start(0.0)
    h.timer(RELAY_UDP_WAIT)
    ws = h.ws
    assert h.link.ready and h.link.mode == "ws"
    h.link.ws_closed(ws + 5, 3.0)  # an older attempt: ignored
    assert h.link.take_actions() == []
    h.link.ws_closed(ws, 3.0)  # a working one dropped: redone at once
    assert h.link.take_actions() == [Changed(None, False)] and h.link.next_deadline() == 3.0
    h.ws_up = False
    now = 3.0
    out = h.timer(now)
    assert out[0] == OpenWs(ws + 1, URL, RELAY_WS_QUICK_OPEN_TIMEOUT)  # UDP failed here: WebSocket
    for i in range(RELAY_WS_QUICK_RETRIES):
        h.link.ws_closed(h.ws, now)
        h.pump(now)
        now += RELAY_WS_QUICK_RETRY
        assert h.link.next_deadline() == now
        h.timer(now)
    h.link.ws_closed(h.ws, now)  # out of quick retries: later, and UDP first again
    h.pump(now)
    assert h.link.next_deadline() == now + RELAY_RETRY
    out = h.timer(now + RELAY_RETRY)
    assert isinstance(out[0], SendUdp) and h.link.mode == "udp"


def test_stale_websocket_frames_are_ignored() -> None:
    h = Harness(udp=None)
    h.start(0.0)
    h.link.ws_received(99, f.Error(f.ERR_UNAUTHENTICATED, bytes(32)).encode(), 1.0)
    h.link.ws_opened(99, 1.0)
    assert h.link.take_actions() == [] and h.link.client.stats["reauth"] == 0


def test_on_the_websocket_udp_is_retested_and_only_its_proven_auth_ok_moves_back() -> None:
    h = Harness()
    h.udp_up = False
    h.start(0.0)
    h.timer(RELAY_UDP_WAIT)
    ws = h.ws
    retest = RELAY_UDP_WAIT + RELAY_UDP_RETEST
    assert h.link.mode == "ws" and h.link._retest_at == retest
    h.timer(RELAY_UDP_WAIT + RELAY_KEEPALIVE_INTERVAL)  # a keepalive first
    assert h.link.next_deadline() == retest
    out = h.timer(retest)  # lost: UDP still blocked
    assert isinstance(out[0], SendUdp) and isinstance(f.parse(out[0].frame), f.Hello)
    for spoofed in (f.Challenge(bytes(24)), f.Pong(1, bytes(16)), f.AuthOk(bytes(8), 60, bytes(16)),
                    f.Error(f.ERR_UNAUTHENTICATED, bytes(32))):
        h.link.udp_received(spoofed.encode(), retest + 1)
    assert h.link.mode == "ws" and h.link.ready
    h.udp_up = True
    out = h.timer(retest + RELAY_UDP_RETEST)
    assert CloseWs(ws) in out and out[-1] == Changed("udp", True) and h.link.mode == "udp" and h.link.ready
    assert h.relay.binding_of(bytes(NODE.public_key())) == ME


def test_udp_frames_nobody_expects_are_counted() -> None:
    h = Harness(udp=None)
    h.start(0.0)
    h.link.udp_received(b"SR\x02\x01", 1.0)  # on the WebSocket, no retest under way
    idle = RelayLink(NODE)
    idle.udp_received(b"SR\x02\x01", 1.0)
    assert h.link.stats["relay_unexpected"] == 1 and idle.stats["relay_unexpected"] == 1


def test_payloads_cross_the_relay_and_errors_are_counted() -> None:
    a, b = Harness(), Harness()
    b.relay = a.relay
    b.link = RelayLink(PrivateKey.generate())
    a.start(0.0)
    a.link.send(bytes(b.link.key.public_key()), b"early", 0.0)
    assert b.start(0.0) and a.link.stats["relay_not_ready"] == 0
    a.link.send(bytes(b.link.key.public_key()), b"hello", 1.0)
    a.pump(1.0)
    assert a.link.stats["relay_error_1"] == 0
    fresh = RelayLink(NODE)
    fresh.send(bytes(32), b"x", 0.0)
    assert fresh.stats["relay_not_ready"] == 1


def test_delivered_payloads_come_out_of_the_link() -> None:
    shared = RelayEngine(RELAY, lambda s, d: True)
    ka, kb = PrivateKey.generate(), PrivateKey.generate()
    la, lb = RelayLink(ka), RelayLink(kb)
    ba, bb = UdpBinding("203.0.113.1", 1), UdpBinding("203.0.113.2", 2)

    def run(now: float) -> list:
        got = []
        while True:
            moved = False
            for link, bind in ((la, ba), (lb, bb)):
                for act in link.take_actions():
                    got.append((link, act))
                    if isinstance(act, SendUdp):
                        shared.receive(act.frame, bind, now)
                        moved = True
            for frame, to in shared.take_outbox():
                (la if to == ba else lb).udp_received(frame, now)
                moved = True
            if not moved:
                return got

    la.set_server(RELAY.public_key(), UDP, None, 0.0)
    lb.set_server(RELAY.public_key(), UDP, None, 0.0)
    run(0.0)
    assert la.ready and lb.ready
    la.send(bytes(kb.public_key()), b"ciphertext", 1.0)
    got = run(1.0)
    assert (lb, Delivered([(bytes(ka.public_key()), b"ciphertext")])) in got
    la.send(bytes(PrivateKey.generate().public_key()), b"nobody", 2.0)
    run(2.0)
    assert la.stats[f"relay_error_{f.ERR_UNKNOWN_DESTINATION}"] == 1
