"""TSO/USO superpacket splitting and GRO-like coalescing, byte for byte.

Superpackets are built here the way the kernel hands them over (virtio_net_hdr, partial L4
checksum); every segment is checked against the independent word-by-word checksum.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.tun.checksum import fold, slow_checksum, slow_l4_checksum
from shoal.tun.offload import (
    TCP_ACK,
    TCP_CWR,
    TCP_FIN,
    TCP_PSH,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VNET_HDR,
    VNET_NONE,
    coalesce,
    coalesce_frames,
    split,
    strip_frame,
)

SRC4, DST4 = bytes([100, 64, 0, 1]), bytes([100, 64, 0, 2])
SRC6 = bytes.fromhex("fd00000000000000000000000000000a")
DST6 = bytes.fromhex("fd00000000000000000000000000000b")
TS_OPTION = bytes([1, 1, 8, 10]) + (123456).to_bytes(4, "big") + (654321).to_bytes(4, "big")


def ip_header(v6: bool, proto: int, l4len: int, ipid: int = 0x1234) -> bytes:
    if v6:
        return struct.pack("!IHBB", 0x60012345, l4len, proto, 64) + SRC6 + DST6
    h = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + l4len, ipid, 0x4000, 64, proto, 0))
    h += SRC4 + DST4
    h[10:12] = slow_checksum(bytes(h)).to_bytes(2, "big")
    return bytes(h)


def tcp_header(seq: int, flags: int, options: bytes = b"", csum: int = 0) -> bytes:
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", 40000, 5201, seq, 777, doff << 4, flags, 500, csum, 0) + options


def pseudo_fold(v6: bool, proto: int, length: int) -> int:
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    total = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length
    return fold(total % 0xFFFF)


def full_tcp_packet(v6: bool, seq: int, flags: int, payload: bytes, options: bytes = b"", ipid: int = 7) -> bytes:
    tcp = tcp_header(seq, flags, options)
    c = slow_l4_checksum(SRC6 if v6 else SRC4, DST6 if v6 else DST4, 6, tcp + payload)
    tcp = tcp_header(seq, flags, options, c)
    return ip_header(v6, 6, len(tcp) + len(payload), ipid) + tcp + payload


def tso_superpacket(v6: bool, seq: int, flags: int, payload: bytes, mss: int, options: bytes = b"") -> bytes:
    thl = 20 + len(options)
    tcplen = thl + len(payload)
    tcp = tcp_header(seq, flags, options, pseudo_fold(v6, 6, tcplen))
    ihl = 40 if v6 else 20
    gso = VIRTIO_NET_HDR_GSO_TCPV6 if v6 else VIRTIO_NET_HDR_GSO_TCPV4
    hdr = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso, ihl + thl, mss, ihl, 16)
    return hdr + ip_header(v6, 6, tcplen) + tcp + payload


def check_segment(seg: bytes, v6: bool) -> tuple[int, int, bytes]:
    """Validate headers and checksums independently; return (seq, flags, payload)."""
    ihl = 40 if v6 else 20
    if v6:
        assert seg[0] >> 4 == 6 and struct.unpack_from("!H", seg, 4)[0] == len(seg) - 40
    else:
        assert seg[0] == 0x45 and struct.unpack_from("!H", seg, 2)[0] == len(seg)
        assert slow_checksum(seg[:20]) == 0
    proto = seg[6] if v6 else seg[9]
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    l4 = seg[ihl:]
    off = 16 if proto == 6 else 6
    field = struct.unpack_from("!H", l4, off)[0]
    zeroed = l4[:off] + b"\0\0" + l4[off + 2 :]
    expect = slow_l4_checksum(src, dst, proto, zeroed)
    if proto == 17 and expect == 0:
        expect = 0xFFFF
    assert field == expect
    if proto == 6:
        thl = (l4[12] >> 4) * 4
        return struct.unpack_from("!I", l4, 4)[0], l4[13], l4[thl:]
    assert struct.unpack_from("!H", l4, 4)[0] == len(l4)
    return 0, 0, l4[8:]


@settings(max_examples=60, deadline=None)
@given(
    v6=st.booleans(),
    size=st.integers(min_value=1, max_value=20000),
    mss=st.integers(min_value=500, max_value=1400),
    seq=st.integers(min_value=0, max_value=2**32 - 1),
    psh=st.booleans(),
    ts=st.booleans(),
)
def test_tso_split_then_coalesce_round_trips(v6: bool, size: int, mss: int, seq: int, psh: bool, ts: bool) -> None:
    payload = bytes((i * 7 + 3) & 0xFF for i in range(size))
    opts = TS_OPTION if ts else b""
    flags = TCP_ACK | (TCP_PSH if psh else 0)
    sp = tso_superpacket(v6, seq, flags, payload, mss, opts)
    out: list[bytes] = []
    n = split(sp, out)
    assert n == len(out) == -(-size // mss)
    got = b""
    for i, seg in enumerate(out):
        s, f, data = check_segment(seg, v6)
        assert s == (seq + i * mss) & 0xFFFFFFFF
        last = i == n - 1
        assert f == (flags if last else TCP_ACK)
        assert len(data) == (mss if not last else size - mss * (n - 1))
        if not v6:
            assert struct.unpack_from("!H", seg, 4)[0] == (0x1234 + i) & 0xFFFF
        got += data
    assert got == payload
    back = coalesce(out)
    if n == 1:
        assert back == [VNET_NONE + out[0]]
    else:
        assert len(back) == 1
        flags_, gso, hdr_len, gso_size, _, _ = VNET_HDR.unpack_from(back[0])
        assert (flags_, gso, hdr_len, gso_size) == (0, sp[1], VNET_HDR.unpack_from(sp)[2], mss)
        # Same packet as the kernel's superpacket except the TCP checksum, which is now full
        # (verified independently) instead of partial.
        ihl = 40 if v6 else 20
        assert back[0][10 : 10 + ihl + 16] == sp[10 : 10 + ihl + 16]
        assert back[0][10 + ihl + 18 :] == sp[10 + ihl + 18 :]
        s0, f0, data = check_segment(back[0][10:], v6)
        assert (s0, f0, data) == (seq, flags, payload)


def test_fin_and_cwr_placement() -> None:
    sp = tso_superpacket(False, 1000, TCP_ACK | TCP_FIN | TCP_CWR | TCP_PSH, b"x" * 3000, 1000)
    out: list[bytes] = []
    split(sp, out)
    flags = [check_segment(s, False)[1] for s in out]
    assert flags == [TCP_ACK | TCP_CWR, TCP_ACK, TCP_ACK | TCP_FIN | TCP_PSH]


@settings(max_examples=40, deadline=None)
@given(v6=st.booleans(), size=st.integers(min_value=1, max_value=9000), seg=st.integers(min_value=1, max_value=1400))
def test_uso_split(v6: bool, size: int, seg: int) -> None:
    payload = bytes((i * 13) & 0xFF for i in range(size))
    udplen = 8 + size
    udp = struct.pack("!HHHH", 5000, 6000, udplen & 0xFFFF, pseudo_fold(v6, 17, udplen))
    ihl = 40 if v6 else 20
    hdr = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP_L4, ihl + 8, seg, ihl, 6)
    out: list[bytes] = []
    n = split(hdr + ip_header(v6, 17, udplen) + udp + payload, out)
    assert n == -(-size // seg)
    assert b"".join(check_segment(s, v6)[2] for s in out) == payload


@settings(max_examples=60, deadline=None)
@given(v6=st.booleans(), udp=st.booleans(), size=st.integers(min_value=0, max_value=1400))
def test_partial_checksum_completed(v6: bool, udp: bool, size: int) -> None:
    payload = bytes((i * 31 + 1) & 0xFF for i in range(size))
    ihl = 40 if v6 else 20
    if udp:
        l4 = struct.pack("!HHHH", 53, 5353, 8 + size, pseudo_fold(v6, 17, 8 + size)) + payload
        proto, off = 17, 6
    else:
        l4 = tcp_header(5, TCP_ACK | TCP_PSH, b"", pseudo_fold(v6, 6, 20 + size)) + payload
        proto, off = 6, 16
    hdr = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0, ihl, off)
    out: list[bytes] = []
    assert split(hdr + ip_header(v6, proto, len(l4)) + l4, out) == 1
    check_segment(out[0], v6)


def test_plain_packets_pass_through() -> None:
    pkt = full_tcp_packet(False, 1, TCP_ACK, b"hello")
    out: list[bytes] = []
    assert split(VNET_NONE + pkt, out) == 1 and out == [pkt]


def test_malformed_reads_are_dropped_not_raised() -> None:
    out: list[bytes] = []
    assert split(b"", out) == 0
    assert split(VNET_NONE, out) == 0
    bad = VNET_HDR.pack(1, VIRTIO_NET_HDR_GSO_TCPV4, 0, 100, 20, 16) + b"\x45" + bytes(30)
    assert split(bad, out) == 0
    bad2 = VNET_HDR.pack(1, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 200, 16) + bytes(40)
    assert split(bad2, out) == 0
    assert split(VNET_HDR.pack(0, 99, 0, 0, 0, 0) + bytes(40), out) == 0
    assert out == []


def test_coalesce_only_consecutive_same_flow() -> None:
    mss = 1000
    a = [full_tcp_packet(False, 1 + i * mss, TCP_ACK, bytes([i]) * mss) for i in range(4)]
    gap = full_tcp_packet(False, 1 + 5 * mss, TCP_ACK, b"g" * mss)
    v6 = [full_tcp_packet(True, 9 + i * 500, TCP_ACK, b"6" * 500) for i in range(3)]
    syn = full_tcp_packet(False, 0, 0x02, b"")
    udp_payload = b"u" * 10
    udp = ip_header(False, 17, 18) + struct.pack("!HHHH", 1, 2, 18, 0) + udp_payload
    pkts = [a[0], v6[0], a[1], syn, a[2], v6[1], v6[2], a[3], gap, udp]
    bufs = coalesce(pkts)
    kinds = [(b[1], VNET_HDR.unpack_from(b)[3]) for b in bufs]
    assert kinds[0] == (VIRTIO_NET_HDR_GSO_TCPV4, mss)
    assert kinds[1] == (VIRTIO_NET_HDR_GSO_TCPV6, 500)
    check_segment(bufs[1][10:], True)
    plain = [b[10:] for b in bufs if b[1] == VIRTIO_NET_HDR_GSO_NONE]
    assert plain == [syn, gap, udp]
    # the v4 superpacket splits back into exactly a[0..3]
    out: list[bytes] = []
    split(bufs[0], out)
    assert len(out) == 4
    for seg, orig in zip(out, a):
        assert seg[20:] == orig[20:] and seg[:4] == orig[:4]  # only the IPv4 ID/checksum differ


def test_coalesce_respects_limits_and_mismatches() -> None:
    mss = 1400
    many = [full_tcp_packet(False, i * mss, TCP_ACK, b"m" * mss) for i in range(100)]
    bufs = coalesce(many)
    total = 0
    for b in bufs:
        assert len(b) - 10 <= 65535
        out: list[bytes] = []
        total += split(b, out)
    assert total == 100
    # different window or ack or options: never merged
    p0 = full_tcp_packet(False, 0, TCP_ACK, b"a" * 100)
    p1 = full_tcp_packet(False, 100, TCP_ACK, b"b" * 100, options=TS_OPTION)
    assert len(coalesce([p0, p1])) == 2
    # a shorter segment ends the group; the next one starts a new group
    s = [full_tcp_packet(False, 0, TCP_ACK, b"a" * 100), full_tcp_packet(False, 100, TCP_ACK, b"b" * 50),
         full_tcp_packet(False, 150, TCP_ACK, b"c" * 100), full_tcp_packet(False, 250, TCP_ACK, b"d" * 100)]
    assert [b[1] for b in coalesce(s)] == [VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV4]


def test_coalesce_survives_garbage() -> None:
    junk = [b"", b"\x45", b"\x60" + bytes(50), bytes(100), b"\x45" + bytes(60)]
    assert coalesce(junk) == [VNET_NONE + j for j in junk]


def test_corrupt_segment_makes_the_superpacket_checksum_fail() -> None:
    mss = 999  # odd: later payloads start at odd offsets
    segs = [full_tcp_packet(False, i * mss, TCP_ACK, bytes([i + 1]) * mss) for i in range(3)]
    good = coalesce(segs)
    assert len(good) == 1
    check_segment(good[0][10:], False)
    bad = bytearray(segs[1])
    bad[-5] ^= 0x40  # corrupted after its checksum was computed
    merged = coalesce([segs[0], bytes(bad), segs[2]])
    assert len(merged) == 1
    pkt = merged[0][10:]
    assert slow_l4_checksum(SRC4, DST4, 6, pkt[20:36] + b"\0\0" + pkt[38:]) != int.from_bytes(pkt[36:38], "big")


ETH = bytes.fromhex("025364400002" "025364400001" "0800")


def test_tap_partial_checksum_counts_from_the_frame() -> None:
    payload = b"tap payload"
    l4 = struct.pack("!HHHH", 53, 5353, 8 + len(payload), pseudo_fold(False, 17, 8 + len(payload))) + payload
    hdr = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 14 + 20, 6)
    frame = strip_frame(hdr + ETH + ip_header(False, 17, len(l4)) + l4)
    assert frame is not None and frame[:14] == ETH
    check_segment(frame[14:], False)
    assert strip_frame(VNET_NONE + ETH) == ETH
    assert strip_frame(VNET_NONE) is None
    assert strip_frame(VNET_HDR.pack(0, VIRTIO_NET_HDR_GSO_TCPV4, 0, 0, 0, 0) + ETH + bytes(40)) is None
    assert strip_frame(VNET_HDR.pack(1, 0, 0, 0, 60, 6) + ETH) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_strip_frame_never_raises(data: bytes) -> None:
    out = strip_frame(data)
    assert out is None or isinstance(out, bytes)


def test_coalesce_frames_shifts_offsets_by_the_ethernet_header() -> None:
    pkts = [full_tcp_packet(False, 1000 + 100 * i, TCP_ACK, bytes([i]) * 100) for i in range(3)]
    plain = coalesce(pkts)
    framed = coalesce_frames(pkts, lambda p: ETH)
    assert len(plain) == len(framed) == 1
    f, b, hl, gs, cs, co = VNET_HDR.unpack_from(plain[0])
    assert VNET_HDR.unpack_from(framed[0]) == (f, b, hl + 14, gs, cs + 14, co)
    assert framed[0][10:24] == ETH and framed[0][24:] == plain[0][10:]
    odd = [b"\x45" + bytes(19)]  # not coalescable: passes with a zero header
    assert coalesce_frames(odd, lambda p: ETH) == [VNET_NONE + ETH + odd[0]]
