"""Typed keys: validation, base64 round trips, clamping, RFC 7748 public-key derivation."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.wireguard.keys import PresharedKey, PrivateKey, PublicKey, clamp

# RFC 7748 section 6.1: Alice's and Bob's key pairs.
ALICE_PRIV = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PUB = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_PRIV = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
BOB_PUB = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"


def test_public_key_derivation_rfc7748() -> None:
    assert PrivateKey.from_hex(ALICE_PRIV).public_key() == bytes.fromhex(ALICE_PUB)
    assert PrivateKey.from_hex(BOB_PRIV).public_key() == bytes.fromhex(BOB_PUB)
    assert isinstance(PrivateKey.from_hex(BOB_PRIV).public_key(), PublicKey)


def test_generate_is_clamped_and_random() -> None:
    a, b = PrivateKey.generate(), PrivateKey.generate()
    assert a != b
    for k in (a, b):
        assert len(k) == 32
        assert k[0] & 7 == 0
        assert k[31] & 0x80 == 0
        assert k[31] & 0x40 == 0x40
        assert clamp(k) == k


def test_clamp_bits() -> None:
    assert clamp(b"\xff" * 32) == b"\xf8" + b"\xff" * 30 + b"\x7f"
    assert clamp(b"\x00" * 32) == b"\x00" * 31 + b"\x40"
    with pytest.raises(ValueError):
        clamp(b"\x00" * 31)


@pytest.mark.parametrize("cls", [PrivateKey, PublicKey, PresharedKey])
def test_base64_round_trip(cls: type) -> None:
    raw = bytes(range(32))
    key = cls(raw)
    text = key.to_base64()
    assert len(text) == 44
    assert text == base64.b64encode(raw).decode()
    back = cls.from_base64(text)
    assert back == raw
    assert type(back) is cls
    assert cls.from_base64(text.encode()) == raw
    assert cls.from_base64(f"  {text}\n") == raw


@pytest.mark.parametrize("cls", [PrivateKey, PublicKey, PresharedKey])
@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not base64 at all!",
        base64.b64encode(bytes(31)).decode(),
        base64.b64encode(bytes(33)).decode(),
        "AAAA",
        "é" * 44,
        base64.b64encode(bytes(32)).decode()[:-1],
    ],
)
def test_bad_base64_raises_value_error(cls: type, bad: str) -> None:
    with pytest.raises(ValueError, match=cls._kind):
        cls.from_base64(bad)


@pytest.mark.parametrize("cls", [PrivateKey, PublicKey, PresharedKey])
def test_bad_length_and_type(cls: type) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        cls(bytes(31))
    with pytest.raises(ValueError, match="32 bytes"):
        cls(bytes(33))
    with pytest.raises(TypeError):
        cls("a" * 32)


def test_types_are_distinct() -> None:
    raw = bytes(32)
    assert type(PresharedKey(raw)) is not type(PublicKey(raw))
    assert not isinstance(PublicKey(raw), PresharedKey)
    assert not isinstance(PrivateKey(bytes(range(32))), PublicKey)


def test_repr_hides_secrets() -> None:
    priv = PrivateKey.generate()
    psk = PresharedKey.generate()
    assert priv.to_base64() not in repr(priv)
    assert priv.to_base64() not in str(priv)
    assert psk.to_base64() not in repr(psk)
    assert psk.to_base64() not in str(psk)
    pub = priv.public_key()
    assert pub.to_base64() in repr(pub)
    assert str(pub) == pub.to_base64()
    assert pub.fingerprint() == pub.to_base64()[:8]


def test_zero_psk() -> None:
    assert PresharedKey.ZERO == bytes(32)
    assert PresharedKey.ZERO.is_zero()
    assert not PresharedKey.generate().is_zero()


def test_from_seed_deterministic() -> None:
    assert PrivateKey.from_seed(b"a") == PrivateKey.from_seed(b"a")
    assert PrivateKey.from_seed(b"a") != PrivateKey.from_seed(b"b")


@given(st.binary(min_size=32, max_size=32))
def test_any_32_bytes_is_a_key_and_round_trips(raw: bytes) -> None:
    for cls in (PrivateKey, PublicKey, PresharedKey):
        assert cls.from_base64(cls(raw).to_base64()) == raw


@given(st.text(max_size=60))
def test_from_base64_only_raises_value_error(text: str) -> None:
    try:
        key = PublicKey.from_base64(text)
    except ValueError:
        return
    assert len(key) == 32


def test_generate_with_rng_is_deterministic() -> None:
    assert PrivateKey.generate(lambda n: b"\xff" * n) == clamp(b"\xff" * 32)
    assert PresharedKey.generate(lambda n: b"\x01" * n) == b"\x01" * 32
