"""Fuzz Device.receive with mixed batches (issue 18 F1/F2): valid, replayed, truncated,
forged and unknown-index transport packets and handshake-typed garbage from several addresses.

Properties: receive never raises; every genuine packet is delivered exactly once, in order of
its first whole arrival; the endpoint ends at the source of the last packet that was
authenticated and fresh (unchanged if there was none), and only such a packet clears the
new-handshake timer."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import constants as C
from tests.wireguard.test_device import A_EP, A_IP, B_IP, connect, ipv4, make_pair, victim

ADDRESSES = [A_EP, ("198.51.100.7", 1234), ("203.0.113.66", 40000)]
GENUINE = 6

op = st.one_of(
    st.tuples(st.just("whole"), st.integers(0, GENUINE - 1), st.integers(0, 2)),
    st.tuples(st.just("cut"), st.integers(0, GENUINE - 1), st.integers(0, 2), st.integers(0, 200)),
    st.tuples(st.just("forged"), st.integers(0, 2), st.binary(min_size=16, max_size=80)),
    st.tuples(st.just("unknown"), st.integers(0, 2)),
    st.tuples(st.just("handshake"), st.integers(0, 2), st.sampled_from([1, 2, 3]), st.integers(0, 160)),
)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op, max_size=24), split=st.integers(0, 24))
def test_mixed_batches(ops, split):
    p = make_pair()
    connect(p)
    peer = victim(p)
    timer = peer.new_handshake_at
    index = peer.keypairs.current.local_index
    p.a.send([ipv4(A_IP, B_IP, b"genuine %d" % i) for i in range(GENUINE)], p.now)
    genuine = [m for m, _ in p.a.take_outbox()]
    assert len(genuine) == GENUINE
    batch, expected, endpoint, seen = [], [], A_EP, set()
    for o in ops:
        kind = o[0]
        addr = ADDRESSES[o[2] if kind in ("whole", "cut") else o[1]]
        if kind == "whole":
            batch.append((genuine[o[1]], addr))
            if o[1] not in seen:  # the first whole copy is genuine; the others are replays
                seen.add(o[1])
                expected.append(ipv4(A_IP, B_IP, b"genuine %d" % o[1]))
                endpoint = addr
        elif kind == "cut":
            data = genuine[o[1]]
            batch.append((data[: o[3] % len(data)], addr))
        elif kind == "forged":
            batch.append((struct.pack("<II", C.MESSAGE_TRANSPORT, index) + o[2], addr))
        elif kind == "unknown":
            batch.append((struct.pack("<II", C.MESSAGE_TRANSPORT, index ^ 0x5A5A) + bytes(24), addr))
        else:
            batch.append((bytes([o[2], 0, 0, 0]) + bytes(o[3]), addr))
    split = min(split, len(batch))
    p.b.receive(batch[:split], p.now)
    p.b.receive(batch[split:], p.now)
    assert p.b.take_to_tun() == expected
    assert peer.endpoint == endpoint
    assert (peer.new_handshake_at is None) == bool(expected)
    if not expected:
        assert peer.new_handshake_at == timer
