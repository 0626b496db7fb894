"""One WireGuard peer as the device sees it: configuration, sessions, staged packets, timers.

Sans-IO. A `Peer` holds state only; the `Device` drives it. The timer rules are wireguard-go's
(timers.go), written here as a table. Every timer is an absolute deadline on the caller's
monotonic clock, or None when not armed:

    timer               armed when                                    cleared when                 on expiry
    ------------------  --------------------------------------------  ---------------------------  -------------------------------------------
    retransmit          an initiation is sent (REKEY_TIMEOUT+jitter)  the handshake completes      resend (attempts+1); after MAX attempts give
                                                                                                   up: drop staged packets, arm zeroize
    send_keepalive      data received and it is not armed             any authenticated packet     send a keepalive; re-arm if more data came
                        (KEEPALIVE_TIMEOUT)                           is sent                      in meanwhile (need_another_keepalive)
    new_handshake       data sent and it is not armed                 any authenticated packet     initiate a handshake: the peer went quiet
                        (KEEPALIVE+REKEY_TIMEOUT+jitter)              is received
    zeroize             a session is derived (REJECT_AFTER_TIME*3)    -                            forget every key and pending handshake
    persistent          any authenticated packet sent or received,    -                            send a keepalive
                        when PersistentKeepalive > 0

Owner: all fields are mutated only by `shoal.wireguard.device.Device`.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import math

from shoal.endpoint import Endpoint
from shoal.wireguard.cookie import CookieGenerator
from shoal.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from shoal.wireguard.noise import Handshake
from shoal.wireguard import tai64n
from shoal.wireguard.session import Keypairs

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_STAGED_PACKETS = 128  # wireguard-go QueueStagedSize


@dataclasses.dataclass(slots=True)
class PeerConfig:
    """What a user configures for a peer (the `[Peer]` section of a wg config)."""

    public_key: PublicKey
    preshared_key: PresharedKey | None = None
    allowed_ips: list[IPNetwork] = dataclasses.field(default_factory=list)
    endpoint: Endpoint | None = None
    persistent_keepalive: int = 0  # seconds, 0 = off
    shoal: bool = False  # a Shoal node: may exchange LAN extension messages (never a stock peer)


@dataclasses.dataclass(slots=True)
class PeerStats:
    rx_bytes: int = 0
    tx_bytes: int = 0
    last_handshake_wall: float = 0.0  # wall-clock seconds of the last completed handshake, 0 = never
    handshakes: int = 0


class Peer:
    """State of one peer. See the module docstring for the timer table."""

    __slots__ = (
        "public_key",
        "preshared_key",
        "endpoint",
        "persistent_keepalive",
        "handshake",
        "cookies",
        "keypairs",
        "staged",
        "handshake_index",
        "handshake_attempts",
        "last_initiation_sent",
        "last_initiation_received",
        "greatest_timestamp",
        "sent_last_minute_handshake",
        "need_another_keepalive",
        "retransmit_at",
        "send_keepalive_at",
        "new_handshake_at",
        "path_handshake_at",
        "zeroize_at",
        "persistent_at",
        "scheduled",
        "stats",
        "removed",
        "shoal",
    )

    def __init__(self, config: PeerConfig, local_private: PrivateKey) -> None:
        self.public_key = config.public_key
        self.preshared_key = config.preshared_key or PresharedKey.ZERO
        self.endpoint: Endpoint | None = config.endpoint
        self.persistent_keepalive = config.persistent_keepalive
        self.handshake = Handshake(local_private, self.public_key, self.preshared_key)
        self.cookies = CookieGenerator(self.public_key)
        self.keypairs = Keypairs()
        self.staged: collections.deque[bytes] = collections.deque(maxlen=MAX_STAGED_PACKETS)
        self.handshake_index: int | None = None  # local index of our pending initiation
        self.handshake_attempts = 0
        self.last_initiation_sent = -math.inf
        self.last_initiation_received = -math.inf
        self.greatest_timestamp = tai64n.ZERO
        self.sent_last_minute_handshake = False
        self.need_another_keepalive = False
        self.retransmit_at: float | None = None
        self.send_keepalive_at: float | None = None
        self.new_handshake_at: float | None = None
        self.path_handshake_at: float | None = None  # a handshake on a new path, deferred (Device.set_endpoint)
        self.zeroize_at: float | None = None
        self.persistent_at: float | None = None
        self.scheduled = math.inf  # earliest deadline currently pushed on the device's heap
        self.stats = PeerStats()
        self.removed = False
        self.shoal = config.shoal

    def next_deadline(self) -> float | None:
        deadlines = [
            t
            for t in (
                self.retransmit_at,
                self.send_keepalive_at,
                self.new_handshake_at,
                self.path_handshake_at,
                self.zeroize_at,
                self.persistent_at,
            )
            if t is not None
        ]
        return min(deadlines) if deadlines else None

    def __repr__(self) -> str:
        return f"Peer({self.public_key.to_base64()[:8]}…, endpoint={self.endpoint})"
