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


# --- STUN (RFC 5389 session traversal, RFC 5780 NAT behaviour discovery) -----------------
# Not WireGuard, but every wire constant of the project lives in this module. Wire format:
# shoal.nat.stun's docstring.
STUN_PORT = 3478  # RFC 5389 section 18.4, the default port (the server's primary port)
STUN_ALT_PORT = 3479  # Shoal's default alternate port for RFC 5780 CHANGE-REQUEST "change port"
STUN_MAGIC_COOKIE = 0x2112A442
STUN_HEADER_SIZE = 20
STUN_TRANSACTION_ID_SIZE = 12
STUN_FINGERPRINT_XOR = 0x5354554E
STUN_MAX_MESSAGE_SIZE = 4096  # parser limit; RFC 5780 PADDING probes (turnutils_stunclient: 1532 bytes) exceed the MTU

STUN_METHOD_BINDING = 0x001
STUN_CLASS_REQUEST = 0b00
STUN_CLASS_INDICATION = 0b01
STUN_CLASS_SUCCESS = 0b10
STUN_CLASS_ERROR = 0b11

STUN_ATTR_MAPPED_ADDRESS = 0x0001
STUN_ATTR_CHANGE_REQUEST = 0x0003  # RFC 5780
STUN_ATTR_USERNAME = 0x0006
STUN_ATTR_MESSAGE_INTEGRITY = 0x0008
STUN_ATTR_ERROR_CODE = 0x0009
STUN_ATTR_UNKNOWN_ATTRIBUTES = 0x000A
STUN_ATTR_REALM = 0x0014
STUN_ATTR_NONCE = 0x0015
STUN_ATTR_XOR_MAPPED_ADDRESS = 0x0020
STUN_ATTR_PADDING = 0x0026  # RFC 5780
STUN_ATTR_RESPONSE_PORT = 0x0027  # RFC 5780
STUN_ATTR_SOFTWARE = 0x8022
STUN_ATTR_ALTERNATE_SERVER = 0x8023
STUN_ATTR_FINGERPRINT = 0x8028
STUN_ATTR_RESPONSE_ORIGIN = 0x802B  # RFC 5780
STUN_ATTR_OTHER_ADDRESS = 0x802C  # RFC 5780

STUN_CHANGE_IP = 0x04  # CHANGE-REQUEST flag A
STUN_CHANGE_PORT = 0x02  # CHANGE-REQUEST flag B

STUN_ERROR_BAD_REQUEST = 400
STUN_ERROR_UNKNOWN_ATTRIBUTE = 420

# Client retransmission (RFC 5389 section 7.2.1 uses RTO 500 ms, Rc 7, Rm 16: 39.5 s to
# give up; netcheck wants an answer within seconds, so fewer, faster tries).
STUN_RTO = 0.25  # first retransmission after this, doubling each time
STUN_MAX_TRANSMISSIONS = 4  # sends at 0, 0.25, 0.75, 1.75 s
STUN_FINAL_WAIT = 1.0  # after the last send, wait this long before giving up (2.75 s in all)
