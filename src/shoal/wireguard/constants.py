"""Every WireGuard wire and timer constant, named as in the whitepaper (section 6) and wireguard-go.

The one place these numbers live; engines import them from here. Tests may shorten timers
only by building a `Timers` value with other numbers, never by editing these.
"""

from __future__ import annotations

import dataclasses

# --- Noise protocol identity (whitepaper 5.4) -------------------------------------------
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

# --- Message types and sizes (whitepaper 5.4.2-5.4.7) -----------------------------------
MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

MESSAGE_INITIATION_SIZE = 148
MESSAGE_RESPONSE_SIZE = 92
MESSAGE_COOKIE_REPLY_SIZE = 64
MESSAGE_TRANSPORT_HEADER_SIZE = 16
MESSAGE_TRANSPORT_MIN_SIZE = MESSAGE_TRANSPORT_HEADER_SIZE + 16  # header + empty payload tag

KEY_LEN = 32
TAG_LEN = 16
TIMESTAMP_LEN = 12
COOKIE_LEN = 16
MAC_LEN = 16
COOKIE_NONCE_LEN = 24
PADDING_MULTIPLE = 16

# --- Limits (whitepaper 6.1) -------------------------------------------------------------
REKEY_AFTER_MESSAGES = 2**60
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER_MAX = 0.333  # wireguard-go: up to 333 ms of jitter per retry
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0
COOKIE_SECRET_LATENCY = 5.0  # initiator stops using a cookie 5 s before the secret rotates (Linux)
HANDSHAKE_INITIATION_RATE = 1.0 / 50  # at most one initiation per 20 ms per peer
ZEROIZE_AFTER = REJECT_AFTER_TIME * 3  # 540 s: forget all key material

# --- TAI64N timestamps (whitepaper 5.4.2; wireguard-go tai64n/tai64n.go) -----------------
TAI64N_BASE = 0x400000000000000A  # 2**62 + 10: the TAI64 label of 1970-01-01 00:00:10 TAI
TAI64N_WHITENER_MASK = 0x1000000 - 1  # low 24 bits of the nanoseconds cleared (~16.8 ms)

# --- Replay window (RFC 6479, wireguard-go's sizes) -----------------------------------------
REPLAY_BLOCK_BITS = 64
REPLAY_RING_BLOCKS = 128  # 8192 bits of ring; window = (blocks - 1) * 64 = 8128
REPLAY_WINDOW_SIZE = (REPLAY_RING_BLOCKS - 1) * REPLAY_BLOCK_BITS

# --- Handshake load (wireguard-go device/constants.go, ratelimiter) -----------------------
UNDER_LOAD_AFTER_TIME = 1.0  # stay under load for 1 s after the load was last seen
# Shoal's measure of load (wireguard-go counts its handshake queue instead; a Python engine
# handles each handshake inline, so we count handshake messages with a valid mac1 per second).
UNDER_LOAD_HANDSHAKES_PER_SECOND = 64
RATELIMIT_PACKETS_PER_SECOND = 20
RATELIMIT_BURST = 5
RATELIMIT_GC_INTERVAL = 1.0
RATELIMIT_MAX_ENTRIES = 65536  # Linux wireguard ratelimiter.c: max_entries = 8 * 8192 buckets

# --- Interface -----------------------------------------------------------------------------
DEFAULT_MTU = 1420
MAX_PEERS = 1 << 16


@dataclasses.dataclass(frozen=True, slots=True)
class Timers:
    """The timer constants an engine runs with; tests build shortened ones on the fake clock."""

    rekey_after_time: float = REKEY_AFTER_TIME
    reject_after_time: float = REJECT_AFTER_TIME
    rekey_attempt_time: float = REKEY_ATTEMPT_TIME
    rekey_timeout: float = REKEY_TIMEOUT
    rekey_timeout_jitter_max: float = REKEY_TIMEOUT_JITTER_MAX
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    cookie_refresh_time: float = COOKIE_REFRESH_TIME
    zeroize_after: float = ZEROIZE_AFTER
    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES


DEFAULT_TIMERS = Timers()
