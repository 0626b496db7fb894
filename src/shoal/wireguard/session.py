"""Transport sessions: one `Keypair` per completed handshake, and the transport data message.

Owns the keys, counters and replay window of each session and the sealing of transport
messages. Opening is written out inline in `Device.receive` (it runs once per packet; a call
per packet costs measurable throughput) with the same rules: verify the tag first, then the
counter against the replay window. Sans-IO and clock-free.

Transport data message (whitepaper 5.4.6), all integers little-endian:

    offset size field
    0      1    type = 4
    1      3    reserved, zero
    4      4    receiver index (the index the *receiver* chose for this session)
    8      8    counter (nonce; 64-bit, strictly per keypair, starts at 0)
    16     n+16 ChaCha20-Poly1305(key, nonce = 0x00000000 || counter, plaintext, ad = "")

The plaintext is the IP packet padded with zeros to a multiple of 16 bytes (never beyond the
MTU); an empty plaintext is a keepalive. Receivers trim padding using the IP header's length.

Owner: a `Keypair` is created by the device when a handshake completes and then mutated only by
the device's send path (`send_counter`) and receive path (`replay`). `Keypairs` holds the
rotation (previous/current/next) of one peer and is mutated only by the device.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from shoal.constants import (
    MESSAGE_TRANSPORT,
    PADDING_MULTIPLE,
)
from shoal.wireguard.replay import ReplayFilter

_HEADER = struct.Struct("<II")  # type+reserved, receiver index
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_TRANSPORT_TYPE = MESSAGE_TRANSPORT  # reserved bytes are zero, so the u32 equals the type


def padding_for(length: int, mtu: int) -> int:
    """Zero bytes to append to a packet of `length` bytes (wireguard-go's calculatePaddingSize)."""
    last_unit = length
    if mtu == 0:
        return (-last_unit) % PADDING_MULTIPLE
    if last_unit > mtu:
        last_unit %= mtu
    padded = last_unit + (-last_unit) % PADDING_MULTIPLE
    if padded > mtu:
        padded = mtu
    return padded - last_unit


class Keypair:
    """Keys and counters of one transport session (one completed handshake)."""

    __slots__ = (
        "created",
        "is_initiator",
        "local_index",
        "remote_index",
        "send_counter",
        "replay",
        "_send_aead",
        "_recv_aead",
        "_header_prefix",
        "peer",
    )

    def __init__(
        self,
        *,
        send_key: bytes,
        receive_key: bytes,
        local_index: int,
        remote_index: int,
        is_initiator: bool,
        created: float,
        peer: object = None,
    ) -> None:
        self.created = created
        self.is_initiator = is_initiator
        self.local_index = local_index
        self.remote_index = remote_index
        self.send_counter = 0
        self.replay = ReplayFilter()
        self._send_aead = ChaCha20Poly1305(send_key)
        self._recv_aead = ChaCha20Poly1305(receive_key)
        self._header_prefix = _HEADER.pack(_TRANSPORT_TYPE, remote_index)
        self.peer = peer

    def seal(self, plaintext: bytes) -> bytes:
        """One transport message carrying `plaintext` (already padded). Advances the counter."""
        counter = self.send_counter
        self.send_counter = counter + 1
        nonce_counter = counter.to_bytes(8, "little")
        return b"".join(
            (
                self._header_prefix,
                nonce_counter,
                self._send_aead.encrypt(_NONCE_PREFIX + nonce_counter, plaintext, None),
            )
        )


class Keypairs:
    """The previous/current/next rotation of one peer (whitepaper 6.1, wireguard-go keypairs).

    - the initiator installs a new session as `current` at once (old current -> previous);
    - the responder installs it as `next`, and promotes it when the first transport message
      arrives under it, proving the initiator has it too.
    """

    __slots__ = ("previous", "current", "next")

    def __init__(self) -> None:
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None

    def install(self, keypair: Keypair) -> list[Keypair]:
        """Add a new session; returns keypairs that fell out (their indices must be freed)."""
        dropped: list[Keypair] = []
        if keypair.is_initiator:
            if self.previous is not None:
                dropped.append(self.previous)
            if self.next is not None:
                # an unconfirmed responder session is kept as previous; current goes
                self.previous, self.next = self.next, None
                if self.current is not None:
                    dropped.append(self.current)
            else:
                self.previous = self.current
            self.current = keypair
        else:
            if self.next is not None:
                dropped.append(self.next)
            if self.previous is not None:
                dropped.append(self.previous)
            self.previous = None
            self.next = keypair
        return dropped

    def promote_next(self, keypair: Keypair) -> list[Keypair]:
        """`keypair` (== next) received its first message: it becomes current."""
        dropped: list[Keypair] = []
        if self.next is not keypair:
            return dropped
        if self.previous is not None:
            dropped.append(self.previous)
        self.previous = self.current
        self.current = keypair
        self.next = None
        return dropped

    def clear(self) -> list[Keypair]:
        dropped = [k for k in (self.previous, self.current, self.next) if k is not None]
        self.previous = self.current = self.next = None
        return dropped
