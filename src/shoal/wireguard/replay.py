"""Sliding-window replay filter for transport-data counters (RFC 6479, whitepaper 5.4.6).

Owns: deciding whether a received transport message's 64-bit counter is new, and
remembering it. One `ReplayFilter` per receiving keypair; it is reset with the keypair.
Not safe for use from several threads (neither is wireguard-go's).

Semantics (exactly wireguard-go's replay.go on a 64-bit machine):

- a counter `>= limit` (default REJECT_AFTER_MESSAGES) is rejected;
- the filter remembers the greatest counter accepted so far, `last` (0 after a reset);
- a counter more than REPLAY_WINDOW_SIZE (8128) below `last` is rejected as too old;
- any other counter is accepted exactly once.

Representation: a ring of REPLAY_RING_BLOCKS (128) blocks of REPLAY_BLOCK_BITS (64) bits,
8192 bits in all. Counter `c` lives in block `(c >> 6) % 128`, bit `c & 63`. When `last`
moves forward into new blocks, those blocks are zeroed first (all of them if the jump is
128 blocks or more). The window is one block short of the ring (8192 - 64 = 8128) so the
block holding the oldest counter still in the window is never the one being recycled.

Python notes: the ring is a list of small ints; the in-order fast path (next counter in
the same block) is a handful of integer operations, ~0.2 us per call on the project
machine (see tests/wireguard/test_replay.py::test_speed for the measured bound).
"""

from __future__ import annotations

from shoal.constants import (
    REJECT_AFTER_MESSAGES,
    REPLAY_BLOCK_BITS,
    REPLAY_RING_BLOCKS,
    REPLAY_WINDOW_SIZE,
)

__all__ = ["ReplayFilter"]

_BLOCK_SHIFT = REPLAY_BLOCK_BITS.bit_length() - 1  # 6
_BIT_MASK = REPLAY_BLOCK_BITS - 1  # 63
_RING_MASK = REPLAY_RING_BLOCKS - 1  # 127
assert 1 << _BLOCK_SHIFT == REPLAY_BLOCK_BITS
assert REPLAY_RING_BLOCKS & _RING_MASK == 0, "ring size must be a power of two"
assert REPLAY_WINDOW_SIZE == (REPLAY_RING_BLOCKS - 1) * REPLAY_BLOCK_BITS


class ReplayFilter:
    """RFC 6479 anti-replay window over 64-bit counters (see the module docstring)."""

    __slots__ = ("_last", "_ring")

    def __init__(self) -> None:
        self._last = 0
        self._ring = [0] * REPLAY_RING_BLOCKS

    def reset(self) -> None:
        """Forget every counter (a new keypair starts from zero)."""
        self._last = 0
        self._ring = [0] * REPLAY_RING_BLOCKS

    @property
    def last(self) -> int:
        """The greatest counter accepted since the last reset (0 if none)."""
        return self._last

    def validate_counter(self, counter: int, limit: int = REJECT_AFTER_MESSAGES) -> bool:
        """Accept and record `counter` (True), or reject it as replayed/too old/too big.

        `counter` comes from the wire as an unsigned 64-bit value; a negative one is
        rejected rather than raising, so a caller's parsing slip cannot crash the engine.
        """
        if counter >= limit or counter < 0:
            return False
        block = counter >> _BLOCK_SHIFT
        last = self._last
        ring = self._ring
        if counter > last:
            current = last >> _BLOCK_SHIFT
            diff = block - current
            if diff:
                if diff >= REPLAY_RING_BLOCKS:
                    ring = self._ring = [0] * REPLAY_RING_BLOCKS
                else:
                    for i in range(current + 1, block + 1):
                        ring[i & _RING_MASK] = 0
            self._last = counter
        elif last - counter > REPLAY_WINDOW_SIZE:
            return False
        block &= _RING_MASK
        bit = 1 << (counter & _BIT_MASK)
        old = ring[block]
        if old & bit:
            return False
        ring[block] = old | bit
        return True
