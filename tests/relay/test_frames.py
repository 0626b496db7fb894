"""Relay frames: round trips, exact sizes, strict limits, and fuzzers (only FrameError;
whatever parses re-encodes to the same bytes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.constants import RELAY_MAGIC, RELAY_MAX_FRAME, RELAY_VERSION
from shoal.relay import frames as f

K = bytes(range(32))
T = b"tokentok"
N = bytes(range(24))
P = bytes(16)
G = b"g" * 16  # a tag


@pytest.mark.parametrize(
    "frame,size",
    [
        (f.Hello(K), 36),
        (f.Challenge(N), 28),
        (f.Auth(K, N, P), 76),
        (f.AuthOk(T, 60, P), 30),
        (f.Send(T, K, b"abc"), 47),
        (f.Recv(K, b"abc"), 39),
        (f.Keepalive(T, 7, G), 36),
        (f.Pong(7, G), 28),
        (f.Pong(2**64 - 1, G), 28),
        (f.Error(f.ERR_NOT_MEMBER, K), 37),
        (f.Error(f.ERR_NOT_MEMBER, K, G), 53),
        (f.Error(f.ERR_UNAUTHENTICATED, bytes(32)), 37),
    ],
)
def test_round_trip_and_sizes(frame: f.Frame, size: int) -> None:
    data = frame.encode()
    assert len(data) == size
    assert data[:3] == RELAY_MAGIC + bytes((RELAY_VERSION,))
    assert f.parse(data) == frame
    assert f.looks_like_relay(data)


def test_answers_never_larger_than_requests() -> None:
    assert len(f.Challenge(N).encode()) < len(f.Hello(K).encode())
    assert len(f.AuthOk(T, 60, P).encode()) < len(f.Auth(K, N, P).encode())
    assert len(f.Error(4, K, G).encode()) < len(f.Auth(K, N, P).encode())
    assert len(f.Error(3, bytes(32)).encode()) <= f.SEND_OVERHEAD  # the untagged answer to a stranger's SEND
    assert len(f.Pong(1, G).encode()) < len(f.Keepalive(T, 1, G).encode())
    assert f.RECV_OVERHEAD < f.SEND_OVERHEAD


def test_version_1_frames_are_refused() -> None:
    """Version 2 (tags) is not wire-compatible: a version-1 peer's frames are FrameErrors."""
    assert RELAY_VERSION == 2
    for old in (b"SR\x01\x08", b"SR\x01\x07" + T, b"SR\x01\x09\x03" + bytes(32)):
        assert not f.looks_like_relay(old)
        with pytest.raises(f.FrameError):
            f.parse(old)


def test_bad_field_values_are_value_errors() -> None:
    with pytest.raises(ValueError):
        f.Pong(-1, G).encode()
    with pytest.raises(ValueError):
        f.Pong(2**64, G).encode()
    with pytest.raises(ValueError):
        f.Keepalive(T, 1, G[:15]).encode()
    with pytest.raises(ValueError):
        f.Error(3, K, b"short").encode()


def test_payload_limits() -> None:
    biggest = f.encode_send(T, K, bytes(f.MAX_PAYLOAD))
    assert len(biggest) == RELAY_MAX_FRAME
    assert f.parse(biggest) == f.Send(T, K, bytes(f.MAX_PAYLOAD))
    with pytest.raises(ValueError):
        f.encode_send(T, K, bytes(f.MAX_PAYLOAD + 1))
    with pytest.raises(f.FrameError):
        f.parse(biggest + b"\x00")
    with pytest.raises(ValueError):
        f.Hello(K[:31]).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"", b"SR", b"SR\x02", b"XX\x02\x05" + bytes(40), b"SR\x03\x01" + K, b"SR\x02\x00",
        b"SR\x02\x0a" + K, b"SR\x02\x01" + K + b"\x00", b"SR\x02\x05" + bytes(39),
        b"SR\x02\x09\x07" + K, b"SR\x02\x08\x00", b"SR\x02\x08", b"SR\x02\x07" + T,
        b"SR\x02\x09\x03" + K + bytes(15), b"SR\x02\x09\x03" + K + bytes(17),
        b"SR\x02\x09\x03" + K[:31], b"SR\x02\x07" + T + bytes(23),
        b"\x01\x00\x00\x00" + bytes(144),  # a WireGuard initiation is not a relay frame
    ],
)
def test_rejects(data: bytes) -> None:
    with pytest.raises(f.FrameError):
        f.parse(data)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_raw(data: bytes) -> None:
    try:
        frame = f.parse(data)
    except f.FrameError:
        return
    assert frame.encode() == data  # whatever parses re-encodes to the same bytes


@settings(max_examples=1500, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=100))
def test_fuzz_valid_header(version: int, kind: int, body: bytes) -> None:
    data = RELAY_MAGIC + bytes((version % 4, kind % 12)) + body
    try:
        frame = f.parse(data)
    except f.FrameError:
        return
    assert frame.encode() == data


_FRAMES = st.one_of(
    st.builds(f.Hello, st.binary(min_size=32, max_size=32)),
    st.builds(f.Challenge, st.binary(min_size=24, max_size=24)),
    st.builds(f.Auth, st.binary(min_size=32, max_size=32), st.binary(min_size=24, max_size=24), st.binary(min_size=16, max_size=16)),
    st.builds(f.AuthOk, st.binary(min_size=8, max_size=8), st.integers(0, 0xFFFF), st.binary(min_size=16, max_size=16)),
    st.builds(f.Send, st.binary(min_size=8, max_size=8), st.binary(min_size=32, max_size=32), st.binary(max_size=64)),
    st.builds(f.Recv, st.binary(min_size=32, max_size=32), st.binary(max_size=64)),
    st.builds(f.Keepalive, st.binary(min_size=8, max_size=8), st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=16)),
    st.builds(f.Pong, st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=16)),
    st.builds(f.Error, st.sampled_from([1, 2, 3, 4, 5]), st.binary(min_size=32, max_size=32),
              st.one_of(st.none(), st.binary(min_size=16, max_size=16))),
)


@settings(max_examples=1500, deadline=None)
@given(_FRAMES, st.integers(0, 80), st.binary(max_size=20), st.integers(0, 79), st.integers(0, 255))
def test_fuzz_mutated_valid_frames(frame: f.Frame, cut: int, extra: bytes, at: int, byte: int) -> None:
    """Valid frames of every kind, truncated, extended or with one byte changed: parse either
    refuses with FrameError or returns a frame that re-encodes to exactly those bytes."""
    data = frame.encode()
    assert f.parse(data) == frame
    for mutated in (data[:cut], data + extra, data[:at] + bytes((byte,)) + data[at + 1:]):
        try:
            got = f.parse(mutated)
        except f.FrameError:
            continue
        assert got.encode() == mutated
