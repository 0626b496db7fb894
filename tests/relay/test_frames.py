"""Relay frames: round trips, exact sizes, strict limits, and a fuzzer (only FrameError)."""

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


@pytest.mark.parametrize(
    "frame,size",
    [
        (f.Hello(K), 36),
        (f.Challenge(N), 28),
        (f.Auth(K, N, P), 76),
        (f.AuthOk(T, 60, P), 30),
        (f.Send(T, K, b"abc"), 47),
        (f.Recv(K, b"abc"), 39),
        (f.Keepalive(T), 12),
        (f.Pong(), 4),
        (f.Error(f.ERR_NOT_MEMBER, K), 37),
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
    assert len(f.Error(1, K).encode()) < len(f.Auth(K, N, P).encode())
    assert len(f.Error(1, K).encode()) <= f.SEND_OVERHEAD
    assert len(f.Pong().encode()) < len(f.Keepalive(T).encode())
    assert f.RECV_OVERHEAD < f.SEND_OVERHEAD


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
        b"", b"SR", b"SR\x01", b"XX\x01\x05" + bytes(40), b"SR\x02\x01" + K, b"SR\x01\x00",
        b"SR\x01\x0a" + K, b"SR\x01\x01" + K + b"\x00", b"SR\x01\x05" + bytes(39),
        b"SR\x01\x09\x07" + K, b"SR\x01\x08\x00",
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
    data = RELAY_MAGIC + bytes((version % 3, kind % 12)) + body
    try:
        frame = f.parse(data)
    except f.FrameError:
        return
    assert frame.encode() == data
