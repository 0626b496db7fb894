"""Known-answer tests for WireGuard's primitives (RFC 7748, RFC 8439, RFC 7693) and
HMAC/KDF checked against an independent RFC 2104 transcription written here."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal import constants as C
from shoal.wireguard.crypto import (
    DH,
    HASH,
    HMAC,
    KDF1,
    KDF2,
    KDF3,
    MAC,
    AEAD_decrypt,
    AEAD_encrypt,
    Aead,
    WeakKeyError,
    XAEAD_decrypt,
    XAEAD_encrypt,
)
from shoal.wireguard.keys import PrivateKey, PublicKey

H = bytes.fromhex

# --- X25519, RFC 7748 ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scalar", "u", "out"),
    [  # section 5.2 (unclamped scalars, u with the top bit set: both must be masked)
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ],
)
def test_x25519_rfc7748_5_2(scalar: str, u: str, out: str) -> None:
    assert DH(PrivateKey(H(scalar)), PublicKey(H(u))) == H(out)
    assert DH(H(scalar), H(u)) == H(out)  # the raw-bytes path too


def test_x25519_rfc7748_5_2_iterated() -> None:
    k = u = (9).to_bytes(32, "little")
    for i in range(1, 1001):
        k, u = DH(k, u), k
        if i == 1:
            assert k == H("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
    assert k == H("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")


def test_x25519_rfc7748_6_1() -> None:
    a = PrivateKey.from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    b = PrivateKey.from_hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    shared = H("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert DH(a, b.public_key()) == shared
    assert DH(b, a.public_key()) == shared


@pytest.mark.parametrize(
    "low_order",
    [
        bytes(32),  # 0
        (1).to_bytes(32, "little"),  # 1
        # order-8 points
        H("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        H("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
        H("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # p - 1
    ],
)
def test_dh_rejects_low_order_points(low_order: bytes) -> None:
    with pytest.raises(WeakKeyError):
        DH(PrivateKey.generate(), PublicKey(low_order))
    assert issubclass(WeakKeyError, ValueError)


def test_dh_rejects_bad_length() -> None:
    with pytest.raises(ValueError):
        DH(PrivateKey.generate(), bytes(31))


# --- ChaCha20-Poly1305, RFC 8439 -------------------------------------------------------------

RFC8439_282_KEY = H("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
RFC8439_282_NONCE = H("070000004041424344454647")
RFC8439_282_AD = H("50515253c0c1c2c3c4c5c6c7")
RFC8439_282_PT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
RFC8439_282_CT = H(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
)
RFC8439_282_TAG = H("1ae10b594f09e26a7e902ecbd0600691")


def test_aead_rfc8439_2_8_2() -> None:
    aead = Aead(RFC8439_282_KEY)
    sealed = aead.seal_with_nonce(RFC8439_282_NONCE, RFC8439_282_PT, RFC8439_282_AD)
    assert sealed == RFC8439_282_CT + RFC8439_282_TAG
    assert aead.open_with_nonce(RFC8439_282_NONCE, sealed, RFC8439_282_AD) == RFC8439_282_PT


# Appendix A.5: its nonce is 4 zero bytes || 01..08, i.e. exactly WireGuard's counter nonce
# with counter 0x0807060504030201 - so this vector goes through the counter API itself.
RFC8439_A5_KEY = H("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0")
RFC8439_A5_COUNTER = 0x0807060504030201
RFC8439_A5_AD = H("f33388860000000000004e91")
RFC8439_A5_CT = H(
    "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2"
    "4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf"
    "332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855"
    "9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4"
    "b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e"
    "af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a"
    "0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10"
    "49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29"
    "a6ad5cb4022b02709b"
)
RFC8439_A5_TAG = H("eead9d67890cbb22392336fea1851f38")
RFC8439_A5_PT = (
    "Internet-Drafts are draft documents valid for a maximum of six months and may be "
    "updated, replaced, or obsoleted by other documents at any time. It is inappropriate to "
    "use Internet-Drafts as reference material or to cite them other than as "
    "/\u201cwork in progress./\u201d"
).encode()


def test_aead_rfc8439_a5_through_counter_api() -> None:
    aead = Aead(RFC8439_A5_KEY)
    sealed = RFC8439_A5_CT + RFC8439_A5_TAG
    assert aead.decrypt(RFC8439_A5_COUNTER, sealed, RFC8439_A5_AD) == RFC8439_A5_PT
    assert aead.encrypt(RFC8439_A5_COUNTER, RFC8439_A5_PT, RFC8439_A5_AD) == sealed
    assert AEAD_decrypt(RFC8439_A5_KEY, RFC8439_A5_COUNTER, sealed, RFC8439_A5_AD) == RFC8439_A5_PT
    assert AEAD_encrypt(RFC8439_A5_KEY, RFC8439_A5_COUNTER, RFC8439_A5_PT, RFC8439_A5_AD) == sealed


def test_aead_nonce_layout() -> None:
    key = os.urandom(32)
    aead = Aead(key)
    for counter in (0, 1, 255, 2**32, 2**64 - 1):
        nonce = bytes(4) + counter.to_bytes(8, "little")
        assert aead.encrypt(counter, b"hi", b"ad") == aead.seal_with_nonce(nonce, b"hi", b"ad")
    with pytest.raises(Exception):
        aead.encrypt(2**64, b"")
    with pytest.raises(Exception):
        aead.encrypt(-1, b"")


def test_aead_rejects_tampering() -> None:
    aead = Aead(os.urandom(32))
    ct = aead.encrypt(7, b"payload", b"ad")
    assert aead.decrypt(7, ct, b"ad") == b"payload"
    assert aead.decrypt(8, ct, b"ad") is None
    assert aead.decrypt(7, ct, b"xx") is None
    assert aead.decrypt(7, ct[:-1] + bytes([ct[-1] ^ 1]), b"ad") is None
    assert aead.decrypt(7, b"", b"ad") is None
    assert aead.decrypt(7, ct[:15]) is None
    assert Aead(os.urandom(32)).decrypt(7, ct, b"ad") is None
    assert aead.encrypt(0, b"") == aead.encrypt(0, b"", b"")
    assert len(aead.encrypt(0, b"")) == C.TAG_LEN


def test_aead_bad_key() -> None:
    with pytest.raises(ValueError):
        Aead(bytes(31))


@given(st.binary(max_size=200), st.binary(max_size=40), st.integers(0, 2**64 - 1))
def test_aead_round_trip(pt: bytes, ad: bytes, counter: int) -> None:
    aead = Aead(b"k" * 32)
    assert aead.decrypt(counter, aead.encrypt(counter, pt, ad), ad) == pt


# --- XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha section A.3.1) ------------------------------


def test_xaead_draft_vector() -> None:
    key = H("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
    nonce = H("404142434445464748494a4b4c4d4e4f5051525354555657")
    ad = H("50515253c0c1c2c3c4c5c6c7")
    ct = H(
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
        "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
        "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
        "21f9664c97637da9768812f615c68b13b52e"
    )
    tag = H("c0875924c1c7987947deafd8780acf49")
    assert XAEAD_encrypt(key, nonce, RFC8439_282_PT, ad) == ct + tag
    assert XAEAD_decrypt(key, nonce, ct + tag, ad) == RFC8439_282_PT
    assert XAEAD_decrypt(key, nonce, ct + tag, b"") is None
    assert XAEAD_decrypt(key, nonce, tag[:10], ad) is None
    with pytest.raises(ValueError):
        XAEAD_encrypt(key, nonce[:12], b"", b"")


# --- BLAKE2s, RFC 7693 appendix B ------------------------------------------------------------


def test_blake2s_rfc7693_abc() -> None:
    assert HASH(b"abc") == H("508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982")


def test_mac_is_keyed_blake2s_128() -> None:
    # RFC 7693 keyed mode, 16-byte output: different from a truncated 32-byte output (the
    # digest length is a parameter of the hash) - a classic way to get mac1 wrong.
    key, data = os.urandom(32), b"message"
    mac = MAC(key, data)
    assert len(mac) == 16
    assert mac == hashlib.blake2s(data, key=key, digest_size=16).digest()
    assert mac != hashlib.blake2s(data, key=key).digest()[:16]


# The WireGuard handshake's initial chaining key and hash (whitepaper 5.4.2; wireguard-go and
# the Linux driver precompute the same two values).
def test_initial_chaining_key_and_hash() -> None:
    ck = HASH(C.CONSTRUCTION)
    assert ck == H("60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36")
    assert HASH(ck + C.IDENTIFIER) == H(
        "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"
    )


# --- HMAC / KDF against an independent RFC 2104 transcription --------------------------------


def _ref_hmac(key: bytes, data: bytes) -> bytes:
    block = 64  # BLAKE2s block size
    if len(key) > block:
        key = hashlib.blake2s(key).digest()
    key = key.ljust(block, b"\x00")
    inner = hashlib.blake2s(bytes(b ^ 0x36 for b in key) + data).digest()
    return hashlib.blake2s(bytes(b ^ 0x5C for b in key) + inner).digest()


def _ref_kdf(n: int, key: bytes, data: bytes) -> list[bytes]:
    t0 = _ref_hmac(key, data)
    out: list[bytes] = []
    prev = b""
    for i in range(1, n + 1):
        prev = _ref_hmac(t0, prev + bytes([i]))
        out.append(prev)
    return out


@given(st.binary(max_size=100), st.binary(max_size=200))
def test_hmac_matches_reference(key: bytes, data: bytes) -> None:
    assert HMAC(key, data) == _ref_hmac(key, data)


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=100))
def test_kdf_matches_reference(key: bytes, data: bytes) -> None:
    assert [KDF1(key, data)] == _ref_kdf(1, key, data)
    assert list(KDF2(key, data)) == _ref_kdf(2, key, data)
    assert list(KDF3(key, data)) == _ref_kdf(3, key, data)


def test_kdf_outputs_chain() -> None:
    t1, t2, t3 = KDF3(b"k" * 32, b"input")
    assert KDF1(b"k" * 32, b"input") == t1
    assert KDF2(b"k" * 32, b"input") == (t1, t2)
    assert len({t1, t2, t3}) == 3
