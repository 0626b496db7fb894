"""The node's relay client: state machine, refusal of unverifiable relay answers, re-auth."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.relay import frames as f
from shoal.relay.client import ClientNotReady, RelayClient
from shoal.relay.engine import RelayEngine, UdpBinding
from shoal.wireguard.keys import PrivateKey

RELAY = PrivateKey.from_seed(b"relay-client" * 3)
NODE = PrivateKey.from_seed(b"node" * 8)
EP = UdpBinding("192.0.2.3", 3333)


def _ready() -> tuple[RelayClient, RelayEngine]:
    eng = RelayEngine(RELAY, lambda s, d: True)
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
    assert c.timeout == 60 and c.token is not None and len(c.keepalive()) == 12


def test_unexpected_challenge_and_auth_ok_without_nonce_ignored() -> None:
    c, _ = _ready()
    assert c.receive(f.Challenge(bytes(24)).encode(), 1.0) == []
    assert c.stats["unexpected"] == 1
    fresh = RelayClient(NODE, RELAY.public_key())
    assert fresh.receive(f.AuthOk(bytes(8), 60, bytes(16)).encode(), 0.0) == []
    assert fresh.stats["forged_auth_ok"] == 1 and not fresh.ready


def test_unauthenticated_error_restarts_auth() -> None:
    c, _ = _ready()
    out = c.receive(f.Error(f.ERR_UNAUTHENTICATED, bytes(32)).encode(), 5.0)
    assert [f.parse(o) for o in out] == [f.Hello(c.node_public)]
    assert not c.ready and c.state == "challenged"


def test_refused_goes_idle_and_records_errors() -> None:
    c, _ = _ready()
    c.receive(f.Error(f.ERR_UNKNOWN_DESTINATION, b"d" * 32).encode(), 1.0)
    assert c.ready and c.errors == [(f.ERR_UNKNOWN_DESTINATION, b"d" * 32)]
    c.receive(f.Error(f.ERR_AUTH_REFUSED, c.node_public).encode(), 1.0)
    assert c.state == "idle"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80), st.sampled_from([0, 2, 4, 6, 8, 9]))
def test_fuzz_client_never_raises(body: bytes, kind: int) -> None:
    c = RelayClient(NODE, RELAY.public_key())
    c.start(0.0)
    data = b"SR\x01" + bytes((kind,)) + body if kind else body
    c.receive(data, 0.0)
    assert not c.ready  # nothing unverified makes it ready
