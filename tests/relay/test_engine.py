"""Relay engine: authentication, forwarding, every drop reason, rate limits, binding moves
and expiry, membership never bypassed, fuzzed input never raises."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.relay import frames as f
from shoal.relay.client import ClientNotReady, RelayClient
from shoal.relay.engine import Binding, RelayEngine, RelayLimits, StreamBinding, UdpBinding
from shoal.wireguard.keys import PrivateKey

RELAY_KEY = PrivateKey.from_seed(b"relay" * 7)
A_EP = UdpBinding("192.0.2.1", 1000)
B_EP = UdpBinding("198.51.100.2", 2000)
C_EP = StreamBinding(7)


def _key(name: str) -> PrivateKey:
    return PrivateKey.from_seed(name.encode() * 8)


A, B, C = _key("alice"), _key("bob"), _key("carol")


def everyone(_s: bytes, _d: bytes) -> bool:
    return True


def pairs(*allowed: tuple[PrivateKey, PrivateKey]) -> Callable[[bytes, bytes], bool]:
    ok = set()
    for x, y in allowed:
        ok.add((bytes(x.public_key()), bytes(y.public_key())))
        ok.add((bytes(y.public_key()), bytes(x.public_key())))
    return lambda s, d: (bytes(s), bytes(d)) in ok


def deliver(engine: RelayEngine, clients: dict[Binding, RelayClient], now: float) -> None:
    """Pump the outbox to the clients (and their answers back) until quiet."""
    while True:
        out = engine.take_outbox()
        if not out:
            return
        for data, binding in out:
            c = clients.get(binding)
            if c is not None:
                for back in c.receive(data, now):
                    engine.receive(back, binding, now)


def login(engine: RelayEngine, key: PrivateKey, binding: Binding, clients: dict[Binding, RelayClient],
          now: float = 0.0) -> RelayClient:
    c = RelayClient(key, engine.public_key)
    clients[binding] = c
    engine.receive(c.start(now), binding, now)
    deliver(engine, clients, now)
    assert c.ready
    return c


def test_two_nodes_exchange_and_counters() -> None:
    eng = RelayEngine(RELAY_KEY, everyone)
    cl: dict[Binding, RelayClient] = {}
    a = login(eng, A, A_EP, cl)
    b = login(eng, B, B_EP, cl)
    assert eng.binding_of(A.public_key()) == A_EP and eng.node_at(B_EP) == bytes(B.public_key())
    eng.receive(a.wrap(B.public_key(), b"ciphertext-1"), A_EP, 1.0)
    eng.receive(b.wrap(A.public_key(), b"ciphertext-2"), B_EP, 1.0)
    deliver(eng, cl, 1.0)
    assert b.inbox == [(bytes(A.public_key()), b"ciphertext-1")]
    assert a.inbox == [(bytes(B.public_key()), b"ciphertext-2")]
    assert eng.stats["auth_ok"] == 2 and eng.stats["forwarded"] == 2
    assert eng.stats["forwarded_bytes"] == 24
    assert not any(k.startswith("drop_") and v for k, v in eng.stats.items())


def test_udp_client_reaches_stream_client() -> None:
    eng = RelayEngine(RELAY_KEY, everyone)
    cl: dict[Binding, RelayClient] = {}
    a = login(eng, A, A_EP, cl)
    c = login(eng, C, C_EP, cl)
    eng.receive(c.wrap(A.public_key(), b"x"), C_EP, 0.5)
    eng.receive(a.wrap(C.public_key(), b"y"), A_EP, 0.5)
    out = eng.take_outbox()
    assert [b for _, b in out] == [A_EP, C_EP]
    eng.disconnect(C_EP, 1.0)
    assert eng.binding_of(C.public_key()) is None and eng.stats["disconnected"] == 1
    eng.receive(a.wrap(C.public_key(), b"y"), A_EP, 1.5)
    assert eng.stats["drop_unknown_destination"] == 1


def test_drop_malformed() -> None:
    eng = RelayEngine(RELAY_KEY, everyone)
    for junk in (b"", b"hello", b"SR\x02\x63", f.Recv(bytes(32), b"x").encode(), f.Pong(1, bytes(16)).encode(),
                 f.Challenge(bytes(24)).encode(), b"SR\x02\x05" + bytes(10)):
        eng.receive(junk, A_EP, 0.0)
    assert eng.stats["drop_malformed"] == 7
    assert eng.take_outbox() == []


def test_drop_unauthenticated_unknown_binding_and_wrong_token() -> None:
    eng = RelayEngine(RELAY_KEY, everyone)
    cl: dict[Binding, RelayClient] = {}
    a = login(eng, A, A_EP, cl)
    login(eng, B, B_EP, cl)
    frame = a.wrap(B.public_key(), b"p")
    eng.receive(frame, UdpBinding("203.0.113.9", 1000), 1.0)  # spoofed elsewhere
    forged = frame[:4] + b"\x00" * 8 + frame[12:]  # right binding, wrong token
    eng.receive(forged, A_EP, 1.0)
    eng.receive(f.Keepalive(b"\x00" * 8, 1, bytes(16)).encode(), A_EP, 1.0)
    ka = f.parse(a.keepalive())
    eng.receive(f.Keepalive(ka.token, ka.seq, bytes(16)).encode(), A_EP, 1.0)  # type: ignore[union-attr]  # right token, no tag
    out = eng.take_outbox()
    assert eng.stats["drop_unauthenticated"] == 4 and eng.stats["forwarded"] == 0
    # SENDs get (untagged) ERROR unauthenticated, the bad KEEPALIVEs nothing (no amplification)
    assert [f.parse(d) for d, _ in out] == [f.Error(f.ERR_UNAUTHENTICATED, bytes(32))] * 2
    assert all(len(d) <= len(frame) for d, _ in out)


def test_drop_not_member_and_unknown_destination() -> None:
    eng = RelayEngine(RELAY_KEY, pairs((A, B)))
    cl: dict[Binding, RelayClient] = {}
    a = login(eng, A, A_EP, cl)
    login(eng, C, C_EP, cl)
    eng.receive(a.wrap(C.public_key(), b"p"), A_EP, 1.0)  # connected, but no shared network
    eng.receive(a.wrap(B.public_key(), b"p"), A_EP, 1.0)  # member, not connected
    deliver(eng, cl, 1.0)
    assert eng.stats["drop_not_member"] == 1 and eng.stats["drop_unknown_destination"] == 1
    assert a.errors == [(f.ERR_NOT_MEMBER, bytes(C.public_key())), (f.ERR_UNKNOWN_DESTINATION, bytes(B.public_key()))]
    assert cl[C_EP].inbox == []


def test_not_member_does_not_reveal_presence() -> None:
    eng = RelayEngine(RELAY_KEY, pairs())
    cl: dict[Binding, RelayClient] = {}
    a = login(eng, A, A_EP, cl)
    eng.receive(a.wrap(B.public_key(), b"p"), A_EP, 1.0)
    login(eng, B, B_EP, cl)
    eng.receive(a.wrap(B.public_key(), b"p"), A_EP, 1.0)
    deliver(eng, cl, 1.0)
    assert a.errors == [(f.ERR_NOT_MEMBER, bytes(B.public_key()))] * 2


def test_oracle_failure_fails_closed() -> None:
    def broken(_s: bytes, _d: bytes) -> bool:
        raise RuntimeError("db away")

    eng = RelayEngine(RELAY_KEY, broken)
    cl: dict[Binding, RelayClient] = {}
    a = login(eng, A, A_EP, cl)
    login(eng, B, B_EP, cl)
    eng.receive(a.wrap(B.public_key(), b"p"), A_EP, 1.0)
    assert eng.stats["oracle_error"] == 1 and eng.stats["drop_not_member"] == 1 and eng.stats["forwarded"] == 0


def test_rate_limited_packets_and_bytes() -> None:
    lim = RelayLimits(rate_packets=10, burst_packets=5, rate_bytes=1000, burst_bytes=2000)
    eng = RelayEngine(RELAY_KEY, everyone, limits=lim)
    cl: dict[Binding, RelayClient] = {}
    a = login(eng, A, A_EP, cl)
    login(eng, B, B_EP, cl)
    for _ in range(8):
        eng.receive(a.wrap(B.public_key(), b"x"), A_EP, 1.0)
    assert eng.stats["forwarded"] == 5 and eng.stats["drop_rate_limited"] == 3
    eng.receive(a.wrap(B.public_key(), b"x"), A_EP, 1.1)  # 0.1 s -> one packet's worth
    eng.receive(a.wrap(B.public_key(), b"x"), A_EP, 1.1)
    assert eng.stats["forwarded"] == 6
    eng.receive(a.wrap(B.public_key(), bytes(1995)), A_EP, 3.0)  # bytes: burst 2000
    eng.receive(a.wrap(B.public_key(), bytes(100)), A_EP, 3.0)
    assert eng.stats["forwarded"] == 7 and eng.stats["drop_rate_limited"] == 5
    # re-authenticating does not refill the bucket
    eng.receive(cl[A_EP].start(3.0), A_EP, 3.0)
    deliver(eng, cl, 3.0)
    eng.receive(a.wrap(B.public_key(), bytes(100)), A_EP, 3.0)
    assert eng.stats["drop_rate_limited"] == 6


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.5), st.integers(0, 1400)), min_size=1, max_size=300))
def test_rate_limit_bounds(sends: list[tuple[float, int]]) -> None:
    lim = RelayLimits(rate_packets=50, burst_packets=20, rate_bytes=20000, burst_bytes=8000)
    eng = RelayEngine(RELAY_KEY, everyone, limits=lim)
    cl: dict[Binding, RelayClient] = {}
    a = login(eng, A, A_EP, cl)
    login(eng, B, B_EP, cl)
    now = 0.0
    for gap, size in sends:
        now += gap
        eng.receive(a.wrap(B.public_key(), bytes(size)), A_EP, now)
    assert eng.stats["forwarded"] <= lim.burst_packets + lim.rate_packets * now + 1e-9
    assert eng.stats["forwarded_bytes"] <= lim.burst_bytes + lim.rate_bytes * now + 1e-6
    assert eng.stats["forwarded"] + eng.stats["drop_rate_limited"] == len(sends)


@settings(max_examples=50, deadline=None)
@given(st.sets(st.tuples(st.integers(0, 3), st.integers(0, 3))),
       st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=40))
def test_non_members_never_relayed(allowed: set[tuple[int, int]], sends: list[tuple[int, int]]) -> None:
    keys = [_key(n) for n in ("n0", "n1", "n2", "n3")]
    pubs = [bytes(k.public_key()) for k in keys]
    ok = {(pubs[x], pubs[y]) for x, y in allowed}
    eng = RelayEngine(RELAY_KEY, lambda s, d: (s, d) in ok)
    cl: dict[Binding, RelayClient] = {}
    eps = [UdpBinding("192.0.2.10", 100 + i) for i in range(4)]
    clients = [login(eng, k, ep, cl) for k, ep in zip(keys, eps)]
    for x, y in sends:
        eng.receive(clients[x].wrap(pubs[y], b"%d>%d" % (x, y)), eps[x], 1.0)
    deliver(eng, cl, 1.0)
    got = [(src, payload, y) for y, c in enumerate(clients) for src, payload in c.inbox]
    for src, payload, y in got:
        x = pubs.index(src)
        assert (pubs[x], pubs[y]) in ok and payload == b"%d>%d" % (x, y)
    assert len(got) == sum(1 for x, y in sends if (pubs[x], pubs[y]) in ok)
    assert eng.stats["drop_not_member"] == len(sends) - len(got)


def test_binding_moves_when_endpoint_changes() -> None:
    eng = RelayEngine(RELAY_KEY, everyone)
    cl: dict[Binding, RelayClient] = {}
    a = login(eng, A, A_EP, cl)
    b = login(eng, B, B_EP, cl)
    new_ep = UdpBinding("203.0.113.5", 4444)  # A's NAT gave it a new mapping
    old_client = cl.pop(A_EP)
    cl[new_ep] = old_client
    # A sends from the new address with its old token: told to authenticate again, does so
    eng.receive(a.wrap(B.public_key(), b"lost"), new_ep, 2.0)
    deliver(eng, cl, 2.0)
    assert eng.stats["drop_unauthenticated"] == 1 and a.stats["reauth"] == 1 and a.ready
    assert eng.binding_of(A.public_key()) == new_ep and eng.node_at(A_EP) is None
    assert eng.stats["binding_moved"] == 1
    eng.receive(b.wrap(A.public_key(), b"to-new"), B_EP, 2.1)
    out = eng.take_outbox()
    assert [ep for _, ep in out] == [new_ep]
    # the old address no longer speaks for A
    eng.receive(f.encode_send(a.token, bytes(B.public_key()), b"x"), A_EP, 2.2)  # type: ignore[arg-type]
    assert eng.stats["drop_unauthenticated"] == 2
    # A moves to a WebSocket (UDP blocked now)
    cl[C_EP] = cl.pop(new_ep)
    eng.receive(a.start(3.0), C_EP, 3.0)
    deliver(eng, cl, 3.0)
    assert eng.binding_of(A.public_key()) == C_EP and eng.node_at(new_ep) is None


def test_binding_expiry_and_keepalive() -> None:
    lim = RelayLimits(binding_timeout=60.0)
    eng = RelayEngine(RELAY_KEY, everyone, limits=lim)
    cl: dict[Binding, RelayClient] = {}
    a = login(eng, A, A_EP, cl, now=0.0)
    login(eng, B, B_EP, cl, now=0.0)
    assert eng.next_deadline() is not None and eng.next_deadline() <= 60.0
    eng.receive(a.keepalive(), A_EP, 50.0)
    deliver(eng, cl, 50.0)
    assert a.stats["pong"] == 1
    eng.tick(60.0)
    assert eng.binding_of(A.public_key()) == A_EP and eng.binding_of(B.public_key()) is None
    assert eng.stats["expired"] == 1
    assert eng.next_deadline() == pytest.approx(110.0)
    eng.tick(109.9)
    assert len(eng) == 1
    eng.tick(110.0)
    assert len(eng) == 0 and eng.next_deadline() is None


def test_forged_auth_refused() -> None:
    eng = RelayEngine(RELAY_KEY, everyone)
    victim = bytes(A.public_key())
    # Mallory claims A's key but holds another private key
    mallory = RelayClient(_key("mallory"), eng.public_key)
    mallory.node_public = victim
    eng.receive(mallory.start(0.0), A_EP, 0.0)
    (chal, _), = eng.take_outbox()
    auth = mallory.receive(chal, 0.0)[0]
    eng.receive(auth, A_EP, 0.0)
    assert eng.stats["drop_auth_forged"] == 1 and eng.binding_of(victim) is None
    refusal = f.parse(eng.take_outbox()[0][0])
    assert isinstance(refusal, f.Error) and (refusal.code, refusal.key) == (f.ERR_AUTH_REFUSED, victim)
    # a made-up nonce is refused before any X25519
    eng.receive(f.Auth(victim, bytes(24), bytes(16)).encode(), A_EP, 0.0)
    assert eng.stats["drop_auth_forged"] == 2
    eng.take_outbox()
    # a low-order public key
    eng.receive(f.Hello(bytes(32)).encode(), A_EP, 0.0)
    (chal, _), = eng.take_outbox()
    nonce = f.parse(chal).nonce  # type: ignore[union-attr]
    eng.receive(f.Auth(bytes(32), nonce, bytes(16)).encode(), A_EP, 0.0)
    assert eng.stats["drop_auth_forged"] == 3 and len(eng) == 0


def test_replayed_auth_refused() -> None:
    eng = RelayEngine(RELAY_KEY, everyone)
    c = RelayClient(A, eng.public_key)
    eng.receive(c.start(0.0), A_EP, 0.0)
    (chal, _), = eng.take_outbox()
    auth = c.receive(chal, 0.0)[0]
    eng.receive(auth, A_EP, 0.0)
    assert eng.stats["auth_ok"] == 1
    eng.take_outbox()
    eng.receive(auth, A_EP, 1.0)  # same binding: nonce already used
    assert eng.stats["drop_auth_replayed"] == 1
    eng.receive(auth, B_EP, 1.0)  # another binding: the nonce is not its
    assert eng.stats["drop_auth_forged"] == 1
    assert eng.binding_of(A.public_key()) == A_EP and eng.stats["auth_ok"] == 1
    eng.tick(30.0)  # the used nonce expires with its challenge; the stale check still refuses
    eng.receive(auth, A_EP, 30.0)
    assert eng.stats["drop_auth_stale"] == 1


def test_stale_challenge_refused() -> None:
    eng = RelayEngine(RELAY_KEY, everyone, limits=RelayLimits(challenge_ttl=10.0))
    c = RelayClient(A, eng.public_key)
    eng.receive(c.start(0.0), A_EP, 0.0)
    (chal, _), = eng.take_outbox()
    eng.receive(c.receive(chal, 0.0)[0], A_EP, 10.5)
    assert eng.stats["drop_auth_stale"] == 1 and len(eng) == 0


def test_client_rejects_forged_auth_ok() -> None:
    eng = RelayEngine(RELAY_KEY, everyone)
    impostor = RelayEngine(_key("impostor"), everyone)
    c = RelayClient(A, eng.public_key)  # pins the real relay
    impostor.receive(c.start(0.0), A_EP, 0.0)
    (chal, _), = impostor.take_outbox()
    impostor.receive(c.receive(chal, 0.0)[0], A_EP, 0.0)
    # the impostor cannot verify A's proof, so it refuses; a forged AUTH_OK is ignored by A
    assert impostor.stats["drop_auth_forged"] == 1
    assert c.receive(f.AuthOk(b"t" * 8, 60, bytes(16)).encode(), 0.0) == []
    assert c.stats["forged_auth_ok"] == 1 and not c.ready
    with pytest.raises(ClientNotReady):
        c.wrap(B.public_key(), b"x")


def test_auth_rate_limit() -> None:
    eng = RelayEngine(RELAY_KEY, everyone, limits=RelayLimits(auth_rate=1, auth_burst=3))
    for i in range(5):
        c = RelayClient(_key(f"n{i}"), eng.public_key)
        ep = UdpBinding("192.0.2.50", 5000 + i)
        eng.receive(c.start(0.0), ep, 0.0)
        (chal, _), = eng.take_outbox()
        eng.receive(c.receive(chal, 0.0)[0], ep, 0.0)
        eng.take_outbox()
    assert eng.stats["auth_ok"] == 3 and eng.stats["drop_auth_rate_limited"] == 2


def test_full() -> None:
    eng = RelayEngine(RELAY_KEY, everyone, limits=RelayLimits(max_nodes=2))
    cl: dict[Binding, RelayClient] = {}
    login(eng, A, A_EP, cl)
    login(eng, B, B_EP, cl)
    c = RelayClient(C, eng.public_key)
    cl[C_EP] = c
    eng.receive(c.start(0.0), C_EP, 0.0)
    deliver(eng, cl, 0.0)
    assert not c.ready and eng.stats["drop_full"] == 1 and c.errors == [(f.ERR_FULL, bytes(C.public_key()))]


@settings(max_examples=700, deadline=None)
@given(st.lists(st.binary(max_size=90), max_size=5), st.sampled_from([0, 5, 3, 7, 1]))
def test_fuzz_engine_never_raises(datas: list[bytes], kind: int) -> None:
    eng = _FUZZ_ENGINE
    for d in datas:
        eng.receive(b"SR\x01" + bytes((kind,)) + d if kind else d, A_EP, 1.0)
        eng.receive(d, C_EP, 1.0)
    eng.take_outbox()


_FUZZ_ENGINE = RelayEngine(RELAY_KEY, everyone)
_fuzz_cl: dict[Binding, RelayClient] = {}
login(_FUZZ_ENGINE, A, A_EP, _fuzz_cl)


# ---------------------------------------------------------------- issue 18 F11: AUTH floods

def _auth_attempt(eng: RelayEngine, key: PrivateKey, ep: Binding, now: float, *, forge: bool = False) -> RelayClient:
    c = RelayClient(key, eng.public_key)
    eng.receive(c.start(now), ep, now)
    (chal, _), = eng.take_outbox()
    auth = c.receive(chal, now)[0]
    if forge:
        auth = auth[:-16] + bytes(16)
    eng.receive(auth, ep, now)
    for data, _ in eng.take_outbox():
        c.receive(data, now)
    return c


def test_random_key_flood_binds_nothing_and_spends_no_shared_budget() -> None:
    """Before: every fresh key with a valid proof was bound and spent the global X25519 budget,
    so a flood of 200/s filled the table and locked real nodes out (drop_auth_rate_limited)."""
    members = {bytes(A.public_key()), bytes(B.public_key())}
    eng = RelayEngine(RELAY_KEY, everyone, may_bind=lambda k: bytes(k) in members,
                      limits=RelayLimits(auth_rate=200, auth_burst=400))
    for i in range(2000):  # 10 s of a 200/s flood in 1 s, from many addresses of many prefixes
        _auth_attempt(eng, PrivateKey.generate(), UdpBinding(f"203.0.{i % 200}.{i % 250 + 1}", 40000 + i), 0.5 + i / 2000)
    assert len(eng) == 0 and eng.stats["auth_ok"] == 0
    assert eng.stats["drop_auth_not_member"] == 2000 and eng.stats["drop_auth_rate_limited"] == 0
    clients: dict[Binding, RelayClient] = {}
    login(eng, A, A_EP, clients, now=1.6)
    login(eng, B, B_EP, clients, now=1.6)
    assert len(eng) == 2


def test_forged_proofs_for_a_member_cost_one_x25519() -> None:
    members = {bytes(A.public_key())}
    eng = RelayEngine(RELAY_KEY, everyone, may_bind=lambda k: bytes(k) in members,
                      limits=RelayLimits(auth_rate=1, auth_burst=1))
    for i in range(50):
        _auth_attempt(eng, A, UdpBinding(f"198.51.{i}.9", 1000 + i), 0.0, forge=True)
    assert eng.stats["drop_auth_forged"] == 50 and eng.stats["drop_auth_rate_limited"] == 0
    assert _auth_attempt(eng, A, A_EP, 0.0).ready  # the one global token was spent once, k is cached


def test_auth_from_one_source_is_rate_limited_per_address_and_prefix() -> None:
    from shoal.constants import RELAY_AUTH_BURST_PER_ADDRESS, RELAY_AUTH_BURST_PER_PREFIX

    eng = RelayEngine(RELAY_KEY, everyone, may_bind=lambda k: True, limits=RelayLimits(auth_rate=1e9, auth_burst=1e9))
    ok = sum(_auth_attempt(eng, PrivateKey.generate(), UdpBinding("192.0.2.9", 3000 + i), 0.0).ready for i in range(60))
    assert ok == RELAY_AUTH_BURST_PER_ADDRESS and eng.stats["drop_auth_rate_limited_address"] == 60 - ok
    ok = sum(_auth_attempt(eng, PrivateKey.generate(), UdpBinding(f"198.51.100.{i + 1}", 3000), 0.0).ready for i in range(200))
    assert ok == RELAY_AUTH_BURST_PER_PREFIX and eng.stats["drop_auth_rate_limited_prefix"] == 200 - ok
    assert _auth_attempt(eng, A, UdpBinding("203.0.113.5", 1), 0.0).ready  # another prefix is unaffected


def test_binding_oracle_failure_fails_closed() -> None:
    def broken(_k: bytes) -> bool:
        raise RuntimeError("db gone")

    eng = RelayEngine(RELAY_KEY, everyone, may_bind=broken)
    assert not _auth_attempt(eng, A, A_EP, 0.0).ready and eng.stats["oracle_error"] == 1 and len(eng) == 0
