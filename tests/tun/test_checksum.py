"""The fast residue checksum agrees with the word-by-word RFC 1071 reference."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.tun.checksum import finish, fold, residue, slow_checksum


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=3000))
def test_finish_of_residue_matches_reference(data: bytes) -> None:
    nonzero = any(data)
    assert finish(residue(data), nonzero) == slow_checksum(data)


def test_edge_cases() -> None:
    assert slow_checksum(b"") == 0xFFFF == finish(residue(b""), nonzero=False)
    assert finish(residue(b"\xff\xff")) == 0  # negative zero sum
    assert finish(residue(b"\x00\x01\xff\xfe")) == 0
    assert finish(residue(b"\x01")) == slow_checksum(b"\x01") == 0xFEFF  # odd length pads
    assert fold(0) == 0xFFFF and fold(0x1234) == 0x1234


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=6))
def test_residues_of_even_pieces_add(pieces: list[bytes]) -> None:
    even = [p if len(p) % 2 == 0 else p + b"\x07" for p in pieces[:-1]] + [pieces[-1]]
    whole = b"".join(even)
    assert sum(residue(p) for p in even) % 0xFFFF == residue(whole)


def test_verifying_a_packet_with_its_checksum_gives_zero_residue() -> None:
    data = bytes(range(256)) * 3 + b"\x05"
    c = slow_checksum(data + b"\x00")  # sum with pad, checksum appended after
    assert residue(data + b"\x00" + c.to_bytes(2, "big")) == 0
