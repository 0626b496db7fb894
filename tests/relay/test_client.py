"""The node's relay client: state machine, refusal of unverifiable relay answers, re-auth,
and (issue 18 F12) frames spoofed from the relay's address changing nothing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.constants import RELAY_HINT_INTERVAL, RELAY_VERSION
from shoal.relay import frames as f
from shoal.relay.client import ClientNotReady, RelayClient
from shoal.relay.engine import RelayEngine, UdpBinding
from shoal.wireguard.keys import PrivateKey

RELAY = PrivateKey.from_seed(b"relay-client" * 3)
NODE = PrivateKey.from_seed(b"node" * 8)
EP = UdpBinding("192.0.2.3", 3333)


def _ready(eng: RelayEngine | None = None) -> tuple[RelayClient, RelayEngine]:
    eng = RelayEngine(RELAY, lambda s, d: True) if eng is None else eng
    c = RelayClient(NODE, RELAY.public_key())
    eng.receive(c.start(0.0), EP, 0.0)
    (chal, _), = eng.take_outbox()
    (auth,) = c.receive(chal, 0.0)
    eng.receive(auth, EP, 0.0)
    (ok, _), = eng.take_outbox()
    assert c.receive(ok, 0.0) == [] and c.ready
    return c, eng


def test_states_and_timeout() -> None:
    c = RelayClient(NODE, RELAY.public_key())
    assert c.state == "idle" and not c.ready
    with pytest.raises(ClientNotReady):
        c.keepalive()
    c, _ = _ready()
    assert c.timeout == 60 and c.token is not None and len(c.keepalive()) == 36


def test_unexpected_challenge_and_auth_ok_without_nonce_ignored() -> None:
    c, _ = _ready()
    assert c.receive(f.Challenge(bytes(24)).encode(), 1.0) == []
    assert c.stats["unexpected"] == 1
    fresh = RelayClient(NODE, RELAY.public_key())
    assert fresh.receive(f.AuthOk(bytes(8), 60, bytes(16)).encode(), 0.0) == []
    assert fresh.stats["forged_auth_ok"] == 1 and not fresh.ready


def _pump(eng: RelayEngine, c: RelayClient, now: float) -> None:
    while out := eng.take_outbox():
        for data, _ in out:
            for back in c.receive(data, now):
                eng.receive(back, EP, now)


def test_relay_restart_recovers_through_the_untagged_hint() -> None:
    """A relay that forgot us (restarted) can only send an untagged ERROR unauthenticated:
    the client answers with a HELLO and is bound again at once."""
    c, _ = _ready()
    eng2 = RelayEngine(RELAY, lambda s, d: True)  # restarted: new secret, no bindings
    eng2.receive(c.wrap(b"d" * 32, b"x"), EP, 5.0)
    (err, _), = eng2.take_outbox()
    assert f.parse(err) == f.Error(f.ERR_UNAUTHENTICATED, bytes(32))
    out = c.receive(err, 5.0)
    assert [f.parse(o) for o in out] == [f.Hello(c.node_public)] and c.stats["reauth"] == 1
    eng2.receive(out[0], EP, 5.0)
    _pump(eng2, c, 5.0)
    assert c.ready and eng2.binding_of(c.node_public) == EP and c.token == eng2._nodes[c.node_public].token


def test_spoofed_errors_from_the_relay_address_do_not_reset_the_binding() -> None:
    """Issue 18 F12: ERRORs anyone can send from the relay's address (untagged, or with a
    made-up tag) leave the binding as it is; the SENDs keep flowing, nothing is lost."""
    eng = RelayEngine(RELAY, lambda s, d: True)
    peer = RelayClient(PrivateKey.from_seed(b"peer" * 8), RELAY.public_key())
    peer_ep = UdpBinding("198.51.100.7", 7777)
    eng.receive(peer.start(0.0), peer_ep, 0.0)
    while out := eng.take_outbox():
        for data, _ in out:
            for back in peer.receive(data, 0.0):
                eng.receive(back, peer_ep, 0.0)
    assert peer.ready
    c, _ = _ready(eng)
    token = c.token
    spoofed = [f.Error(code, key, tag) for code in (f.ERR_AUTH_REFUSED, f.ERR_FULL, f.ERR_NOT_MEMBER, f.ERR_UNKNOWN_DESTINATION)
               for key in (c.node_public, peer.node_public) for tag in (None, bytes(16), b"t" * 16)]
    hellos = []
    for i, err in enumerate(spoofed * 5):
        hellos += c.receive(err.encode(), 1.0 + i / 1000)
    assert hellos == [] and c.ready and c.token == token and c.errors == []
    assert c.stats["forged_error"] == len(spoofed) * 5
    # a flood of the one untagged kind (ERROR unauthenticated): one HELLO per RELAY_HINT_INTERVAL
    for i in range(100):
        hellos += c.receive(f.Error(f.ERR_UNAUTHENTICATED, bytes(32)).encode(), 2.0 + i * RELAY_HINT_INTERVAL / 200)
    assert len(hellos) == 1 and c.stats["hint_limited"] == 99 and c.ready and c.token == token
    # while that re-AUTH runs, and after it, the node's SENDs are forwarded (same binding, same token)
    eng.receive(hellos[0], EP, 2.0)
    (chal, _), = eng.take_outbox()
    eng.receive(c.wrap(peer.node_public, b"during"), EP, 2.0)
    (auth,) = c.receive(chal, 2.0)
    eng.receive(auth, EP, 2.0)
    eng.receive(c.wrap(peer.node_public, b"racing"), EP, 2.0)  # sent before AUTH_OK arrived
    for data, b in eng.take_outbox():
        (peer if b == peer_ep else c).receive(data, 2.0)
    assert c.ready and c.token == token and c.stats["reauth"] == 1
    eng.receive(c.wrap(peer.node_public, b"after"), EP, 2.1)
    for data, b in eng.take_outbox():
        assert b == peer_ep
        peer.receive(data, 2.1)
    assert [p for _, p in peer.inbox] == [b"during", b"racing", b"after"]
    assert eng.stats["drop_unauthenticated"] == 0
    # the new binding key is in use: a keepalive is answered and believed
    eng.receive(c.keepalive(), EP, 3.0)
    _pump(eng, c, 3.0)
    assert c.stats["pong"] == 1


def test_spoofed_and_replayed_pongs_are_not_believed() -> None:
    c, eng = _ready()
    eng.receive(c.keepalive(), EP, 1.0)
    (pong, _), = eng.take_outbox()
    assert c.receive(f.Pong(1, bytes(16)).encode(), 1.0) == [] and c.stats["forged_pong"] == 1
    c.receive(pong, 1.0)
    assert c.stats["pong"] == 1
    c.receive(pong, 1.5)  # replayed
    ka = c.keepalive()
    p = f.parse(pong)
    c.receive(f.Pong(p.seq + 1, p.tag).encode(), 2.0)  # type: ignore[union-attr]  # a seq we sent, old tag
    assert c.stats["pong"] == 1 and c.stats["forged_pong"] == 3
    eng.receive(ka, EP, 2.0)
    _pump(eng, c, 2.0)
    assert c.stats["pong"] == 2


def test_proven_errors_are_recorded_and_a_proven_refusal_goes_idle() -> None:
    eng = RelayEngine(RELAY, lambda s, d: False)
    c, _ = _ready(eng)
    eng.receive(c.wrap(b"d" * 32, b"x"), EP, 1.0)
    _pump(eng, c, 1.0)
    assert c.ready and c.errors == [(f.ERR_NOT_MEMBER, b"d" * 32)]
    # a refusal for the AUTH we sent (a relay that knows our key: tagged) -> idle
    refusing = RelayEngine(RELAY, lambda s, d: True, may_bind=lambda k: False)
    refusing._keys[c.node_public] = c._k  # it computed k for our key before (cached)
    fresh = RelayClient(NODE, RELAY.public_key())
    refusing.receive(fresh.start(2.0), EP, 2.0)
    _pump(refusing, fresh, 2.0)
    assert refusing.stats["drop_auth_not_member"] == 1
    assert fresh.state == "idle" and fresh.errors == [(f.ERR_AUTH_REFUSED, fresh.node_public)]
    assert fresh.stats["refused"] == 1


def test_untagged_refusal_during_auth_is_ignored() -> None:
    """A spoofed refusal between HELLO and AUTH_OK does not stop the handshake."""
    eng = RelayEngine(RELAY, lambda s, d: True)
    c = RelayClient(NODE, RELAY.public_key())
    eng.receive(c.start(0.0), EP, 0.0)
    (chal, _), = eng.take_outbox()
    (auth,) = c.receive(chal, 0.0)
    c.receive(f.Error(f.ERR_AUTH_REFUSED, c.node_public).encode(), 0.0)
    c.receive(f.Error(f.ERR_FULL, c.node_public, bytes(16)).encode(), 0.0)
    assert c.state == "challenged" and c.stats["forged_error"] == 2
    eng.receive(auth, EP, 0.0)
    _pump(eng, c, 0.0)
    assert c.ready


def test_recv_before_bound_is_dropped() -> None:
    c = RelayClient(NODE, RELAY.public_key())
    c.start(0.0)
    c.receive(f.Recv(b"s" * 32, b"x").encode(), 0.0)
    assert c.inbox == [] and c.stats["unexpected"] == 1


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80), st.sampled_from([0, 2, 4, 6, 8, 9]))
def test_fuzz_client_never_raises(body: bytes, kind: int) -> None:
    c = RelayClient(NODE, RELAY.public_key())
    c.start(0.0)
    data = b"SR" + bytes((RELAY_VERSION, kind)) + body if kind else body
    c.receive(data, 0.0)
    assert not c.ready  # nothing unverified makes it ready


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([4, 8, 9]), st.binary(max_size=60)), max_size=8))
def test_fuzz_bound_client_keeps_its_binding(frames: list[tuple[int, bytes]]) -> None:
    """Whatever a stranger sends from the relay's address (AUTH_OK, PONG, ERROR kinds with
    random bodies), a bound client keeps its token and records no error."""
    c, _ = _ready()
    token = c.token
    for kind, body in frames:
        c.receive(b"SR" + bytes((RELAY_VERSION, kind)) + body, 1.0)
    assert c.ready and c.token == token and c.errors == [] and c.stats["pong"] == 0
