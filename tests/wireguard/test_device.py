"""The Device engine on a fake clock: handshakes, transport, timers, load, roaming, bad input."""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import constants as C
from shoal.wireguard.device import MAX_TIMER_HANDSHAKES, Device
from shoal.wireguard.keys import PresharedKey, PrivateKey
from shoal.wireguard.peer import PeerConfig

A_EP = ("192.0.2.1", 51820)
B_EP = ("192.0.2.2", 51820)
A_IP = "100.64.0.1"
B_IP = "100.64.0.2"


def ipv4(src: str, dst: str, payload: bytes = b"hello") -> bytes:
    total = 20 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )
    return header + payload


def ipv6(src: str, dst: str, payload: bytes = b"hello6") -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), 17, 64,
                         ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    return header + payload


@dataclasses.dataclass
class Pair:
    a: Device
    b: Device
    a_key: PrivateKey
    b_key: PrivateKey
    now: float = 1000.0
    a_ep: tuple[str, int] = A_EP
    b_ep: tuple[str, int] = B_EP

    def pump(self, rounds: int = 6, drop: bool = False) -> list[tuple[str, bytes]]:
        """Deliver outboxes both ways until quiet; returns the trace (direction, datagram)."""
        trace = []
        for _ in range(rounds):
            out_a, out_b = self.a.take_outbox(), self.b.take_outbox()
            if not out_a and not out_b:
                break
            for data, ep in out_a:
                trace.append(("a->b", data))
                if not drop and ep == self.b_ep:
                    self.b.receive([(data, self.a_ep)], self.now)
            for data, ep in out_b:
                trace.append(("b->a", data))
                if not drop and ep == self.a_ep:
                    self.a.receive([(data, self.b_ep)], self.now)
        return trace

    def advance(self, dt: float) -> None:
        target = self.now + dt
        while True:
            deadlines = [d for d in (self.a.next_deadline(), self.b.next_deadline()) if d is not None and d <= target]
            if not deadlines:
                break
            self.now = max(self.now, min(deadlines))
            self.a.tick(self.now)
            self.b.tick(self.now)
            self.pump()
        self.now = target


def make_pair(timers: C.Timers = C.DEFAULT_TIMERS, psk: PresharedKey | None = None, keepalive: int = 0) -> Pair:
    a_key, b_key = PrivateKey.generate(), PrivateKey.generate()
    a = Device(a_key, timers=timers, seed=1)
    b = Device(b_key, timers=timers, seed=2)
    a.add_peer(PeerConfig(b_key.public_key(), psk, [ipaddress.ip_network(f"{B_IP}/32"), ipaddress.ip_network("fd00::2/128")], B_EP, keepalive))
    b.add_peer(PeerConfig(a_key.public_key(), psk, [ipaddress.ip_network(f"{A_IP}/32"), ipaddress.ip_network("fd00::1/128")], A_EP, keepalive))
    return Pair(a, b, a_key, b_key)


def connect(p: Pair) -> None:
    p.a.send([ipv4(A_IP, B_IP, b"first")], p.now)
    p.pump()
    assert p.b.take_to_tun() == [ipv4(A_IP, B_IP, b"first")]


def test_handshake_and_data_both_ways():
    p = make_pair()
    connect(p)
    p.b.send([ipv4(B_IP, A_IP, b"back")], p.now)
    p.pump()
    assert p.a.take_to_tun() == [ipv4(B_IP, A_IP, b"back")]
    p.a.send([ipv6("fd00::1", "fd00::2")], p.now)
    p.pump()
    assert p.b.take_to_tun() == [ipv6("fd00::1", "fd00::2")]


def test_preshared_key_must_match():
    p = make_pair(psk=PresharedKey.generate())
    connect(p)
    q = make_pair()
    # give B another psk: the response fails at A
    q.b.add_peer(PeerConfig(q.a_key.public_key(), PresharedKey.generate(), [ipaddress.ip_network(f"{A_IP}/32")], A_EP))
    q.a.send([ipv4(A_IP, B_IP)], q.now)
    q.pump()
    assert q.b.take_to_tun() == []
    assert q.a.stats["rx_response_invalid"] == 1


def test_transport_replay_and_forgery_dropped():
    p = make_pair()
    connect(p)
    p.a.send([ipv4(A_IP, B_IP, b"x")], p.now)
    (data, _), = p.a.take_outbox()
    p.b.receive([(data, A_EP)], p.now)
    p.b.receive([(data, A_EP)], p.now)
    assert len(p.b.take_to_tun()) == 1
    assert p.b.stats["rx_invalid_or_replayed"] == 1
    forged = bytearray(data)
    forged[-1] ^= 1
    p.b.receive([(bytes(forged), A_EP)], p.now)
    assert p.b.take_to_tun() == []
    assert p.b.stats["rx_invalid_or_replayed"] == 2


def test_inner_source_must_belong_to_the_sending_peer():
    p = make_pair()
    connect(p)
    p.a.send([ipv4("100.64.0.9", B_IP)], p.now)  # A has no route for the source, but it routes by dst
    p.pump()
    assert p.b.take_to_tun() == []
    assert p.b.stats["rx_source_not_allowed"] == 1


def test_replayed_initiation_creates_no_session():
    p = make_pair()
    p.a.send([ipv4(A_IP, B_IP)], p.now)
    (initiation, _), = p.a.take_outbox()
    p.b.receive([(initiation, A_EP)], p.now)
    assert p.b.stats["responses_sent"] == 1
    peer = p.b.peers[p.a_key.public_key()]
    session = peer.keypairs.next
    p.b.take_outbox()
    p.now += 1
    p.b.receive([(initiation, A_EP)], p.now)
    assert p.b.stats["responses_sent"] == 1
    assert p.b.stats["rx_initiation_replayed"] == 1
    assert peer.keypairs.next is session and p.b.take_outbox() == []


def test_unknown_peer_refused():
    p = make_pair()
    stranger = Device(PrivateKey.generate(), seed=3)
    stranger.add_peer(PeerConfig(p.b_key.public_key(), None, [ipaddress.ip_network(f"{B_IP}/32")], B_EP))
    stranger.send([ipv4("100.64.0.7", B_IP)], p.now)
    (initiation, _), = stranger.take_outbox()
    p.b.receive([(initiation, ("192.0.2.7", 1))], p.now)
    assert p.b.take_outbox() == [] and p.b.stats["rx_unknown_peer"] == 1


def test_roaming_follows_last_authenticated_packet():
    p = make_pair()
    connect(p)
    p.a_ep = ("198.51.100.5", 4000)
    p.a.send([ipv4(A_IP, B_IP)], p.now)
    p.pump()
    assert p.b.peers[p.a_key.public_key()].endpoint == ("198.51.100.5", 4000)
    # an unauthenticated packet from elsewhere does not move it
    p.b.receive([(b"\x04\x00\x00\x00" + bytes(40), ("203.0.113.9", 1))], p.now)
    assert p.b.peers[p.a_key.public_key()].endpoint == ("198.51.100.5", 4000)



# ------------------------------------------------------------------ issue 18 F1/F2: endpoint hijack

ATTACKER = ("203.0.113.66", 40000)


def victim(p: Pair):
    """B's view of A after `connect`, with B waiting for an answer to data it sent (so the
    new-handshake timer is armed): what a forged packet must neither move nor clear."""
    peer = p.b.peers[p.a_key.public_key()]
    p.b.send([ipv4(B_IP, A_IP, b"are you there")], p.now)
    p.b.take_outbox()
    assert peer.new_handshake_at is not None and peer.endpoint == A_EP
    return peer


def transport_header(index: int, counter: int = 0) -> bytes:
    return struct.pack("<II", C.MESSAGE_TRANSPORT, index) + counter.to_bytes(8, "little")


def assert_untouched(p: Pair, peer, timer: float) -> None:
    assert peer.endpoint == A_EP
    assert peer.new_handshake_at == timer
    assert not [e for e in p.b.take_events() if e.kind == "endpoint-changed"]
    # and B's next packet still goes to A, not to the attacker
    p.b.send([ipv4(B_IP, A_IP, b"next")], p.now)
    assert [ep for _, ep in p.b.take_outbox()] == [A_EP]


def connected_victim():
    p = make_pair()
    connect(p)
    peer = victim(p)
    return p, peer, peer.new_handshake_at, peer.keypairs.current.local_index


def test_forged_transport_with_the_live_index_moves_nothing():
    p, peer, timer, index = connected_victim()
    assert index != 0
    p.b.take_events()
    forged = transport_header(index) + bytes(16)  # zero counter, zero "ciphertext" (a bare tag)
    p.b.receive([(forged, ATTACKER)], p.now)
    p.b.receive([(transport_header(index, 7) + bytes(64), ATTACKER)] * 3, p.now)
    assert p.b.stats["rx_invalid_or_replayed"] == 4
    assert p.b.take_to_tun() == []
    assert_untouched(p, peer, timer)


def test_forged_packet_after_a_genuine_one_in_the_same_batch_moves_nothing():
    p, peer, _, index = connected_victim()
    p.a.send([ipv4(A_IP, B_IP, b"real")], p.now)
    (real, _), = p.a.take_outbox()
    forged = transport_header(index, 5) + bytes(32)
    p.b.receive([(real, A_EP), (forged, ATTACKER)], p.now)
    assert p.b.take_to_tun() == [ipv4(A_IP, B_IP, b"real")]
    assert peer.endpoint == A_EP
    assert peer.new_handshake_at is None  # the genuine packet counted
    p.b.send([ipv4(B_IP, A_IP)], p.now)
    assert [ep for _, ep in p.b.take_outbox()] == [A_EP]


def test_replayed_genuine_packet_from_another_address_moves_nothing():
    p = make_pair()
    connect(p)
    p.a.send([ipv4(A_IP, B_IP, b"once")], p.now)
    (real, _), = p.a.take_outbox()
    p.b.receive([(real, A_EP)], p.now)
    assert p.b.take_to_tun() == [ipv4(A_IP, B_IP, b"once")]
    peer = victim(p)
    timer = peer.new_handshake_at
    p.b.take_events()
    p.b.receive([(real, ATTACKER)], p.now)  # an on-path attacker replays what it saw
    assert p.b.take_to_tun() == []
    assert p.b.stats["rx_invalid_or_replayed"] == 1
    assert_untouched(p, peer, timer)


def test_truncated_packets_with_the_live_index_move_nothing():
    p = make_pair()
    connect(p)
    p.a.send([ipv4(A_IP, B_IP, b"cut me")], p.now)
    (real, _), = p.a.take_outbox()
    peer = victim(p)
    timer = peer.new_handshake_at
    p.b.take_events()
    cuts = [real[:k] for k in (1, 4, 8, 15, 16, 17, 31, 32, len(real) - 1)]
    p.b.receive([(cut, ATTACKER) for cut in cuts], p.now)
    assert p.b.take_to_tun() == []
    assert_untouched(p, peer, timer)
    # the genuine packet itself was not spent by its truncated copies
    p.b.receive([(real, A_EP)], p.now)
    assert p.b.take_to_tun() == [ipv4(A_IP, B_IP, b"cut me")]


def test_forged_packet_on_the_unconfirmed_next_session_moves_nothing():
    p = make_pair()
    connect(p)
    peer = p.b.peers[p.a_key.public_key()]
    p.now += C.REKEY_AFTER_TIME + 1
    p.a.send([ipv4(A_IP, B_IP)], p.now)
    initiation, = [m for m, _ in p.a.take_outbox() if m[0] == C.MESSAGE_INITIATION]
    p.b.receive([(initiation, A_EP)], p.now)  # B answers: the new session is B's `next`
    p.b.take_outbox()
    nxt = peer.keypairs.next
    assert nxt is not None
    p.b.take_events()
    p.b.receive([(transport_header(nxt.local_index) + bytes(16), ATTACKER)], p.now)
    assert peer.keypairs.next is nxt and peer.endpoint == A_EP
    assert not p.b.take_events()


def test_forged_packet_does_not_rearm_persistent_keepalive():
    p = make_pair(keepalive=25)
    connect(p)
    p.pump()
    peer = p.b.peers[p.a_key.public_key()]
    due = peer.persistent_at
    p.now += 10
    p.b.receive([(transport_header(peer.keypairs.current.local_index) + bytes(16), ATTACKER)], p.now)
    assert peer.persistent_at == due and peer.endpoint == A_EP


def test_genuine_packet_from_a_new_address_roams():
    p = make_pair()
    connect(p)
    peer = victim(p)
    p.b.take_events()
    moved = ("198.51.100.7", 1234)
    p.a.send([ipv4(A_IP, B_IP, b"roamed")], p.now)
    (real, _), = p.a.take_outbox()
    forged = transport_header(peer.keypairs.current.local_index, 99) + bytes(16)
    p.b.receive([(forged, ATTACKER), (real, moved), (forged, ATTACKER)], p.now)
    assert p.b.take_to_tun() == [ipv4(A_IP, B_IP, b"roamed")]
    assert peer.endpoint == moved and peer.new_handshake_at is None
    assert [e.endpoint for e in p.b.take_events() if e.kind == "endpoint-changed"] == [moved]
    p.b.send([ipv4(B_IP, A_IP)], p.now)
    assert [ep for _, ep in p.b.take_outbox()] == [moved]


def test_replayed_or_bad_handshakes_from_another_address_move_nothing():
    p = make_pair()
    p.a.send([ipv4(A_IP, B_IP)], p.now)
    (initiation, _), = p.a.take_outbox()
    p.b.receive([(initiation, A_EP)], p.now)
    (response, _), = p.b.take_outbox()
    p.a.receive([(response, B_EP)], p.now)
    p.pump()
    peer_b = p.b.peers[p.a_key.public_key()]
    peer_a = p.a.peers[p.b_key.public_key()]
    assert peer_b.endpoint == A_EP and peer_a.endpoint == B_EP
    p.now += 1
    bad = bytearray(initiation)
    bad[40] ^= 1
    p.b.receive([(initiation, ATTACKER), (bytes(bad), ATTACKER)], p.now)  # replay, then tampered
    p.a.receive([(response, ATTACKER)], p.now)  # a replayed response: its index is spent
    assert peer_b.endpoint == A_EP and peer_a.endpoint == B_EP
    assert p.b.stats["rx_initiation_replayed"] == 1 and p.b.take_outbox() == []


def test_handshake_message_mid_batch_never_raises_and_keeps_the_batch():
    """F2: [live-index packet, the 4 bytes 01 00 00 00, unknown index] from one address raised
    AttributeError ('NoneType' has no '_recv_aead') and lost the rest of the batch."""
    p = make_pair()
    connect(p)
    peer = p.b.peers[p.a_key.public_key()]
    p.a.send([ipv4(A_IP, B_IP, b"one"), ipv4(A_IP, B_IP, b"two")], p.now)
    (one, _), (two, _) = p.a.take_outbox()
    unknown = transport_header(peer.keypairs.current.local_index ^ 1) + bytes(16)
    p.b.receive([(one, A_EP), (b"\x01\x00\x00\x00", A_EP), (unknown, A_EP), (two, A_EP)], p.now)
    assert p.b.take_to_tun() == [ipv4(A_IP, B_IP, b"one"), ipv4(A_IP, B_IP, b"two")]
    assert p.b.stats["rx_unknown_index"] == 1 and p.b.stats["rx_malformed"] == 1
    # the same with a cookie-reply-sized and a response-sized garbage message in between
    p.a.send([ipv4(A_IP, B_IP, b"three")], p.now)
    (three, _), = p.a.take_outbox()
    p.b.receive([(bytes([3, 0, 0, 0]) + bytes(C.MESSAGE_COOKIE_REPLY_SIZE - 4), A_EP),
                 (unknown, A_EP), (bytes([2, 0, 0, 0]) + bytes(C.MESSAGE_RESPONSE_SIZE - 4), A_EP),
                 (unknown, A_EP), (three, A_EP)], p.now)
    assert p.b.take_to_tun() == [ipv4(A_IP, B_IP, b"three")]
    assert p.b.stats["rx_unknown_index"] == 3


# ------------------------------------------------------------------ timers on the fake clock

def test_retransmit_after_rekey_timeout_with_jitter_then_give_up():
    p = make_pair()
    p.a.send([ipv4(A_IP, B_IP)], p.now)
    start = p.now
    sent = [start]
    p.a.take_outbox()
    while True:
        d = p.a.next_deadline()
        if d is None or d - start > 200:
            break
        p.now = d
        p.a.tick(d)
        if any(m[0] == C.MESSAGE_INITIATION for m, _ in p.a.take_outbox()):
            sent.append(d)
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert len(sent) == 1 + MAX_TIMER_HANDSHAKES
    assert all(C.REKEY_TIMEOUT <= g <= C.REKEY_TIMEOUT + C.REKEY_TIMEOUT_JITTER_MAX for g in gaps)
    assert 90 <= sent[-1] - start <= 90 + 18 * C.REKEY_TIMEOUT_JITTER_MAX
    assert p.a.stats["handshake_gave_up"] == 1
    assert not p.a.peers[p.b_key.public_key()].staged


def test_keepalive_after_receiving_data_without_reply():
    p = make_pair()
    connect(p)
    t0 = p.now
    p.advance(C.KEEPALIVE_TIMEOUT - 0.01)
    assert p.b.stats["rx_invalid_or_replayed"] == 0
    before = p.b.peers[p.a_key.public_key()].stats.tx_bytes
    p.advance(0.02)
    after = p.b.peers[p.a_key.public_key()].stats.tx_bytes
    assert after - before == 32  # one keepalive: 16 header + 16 tag
    assert p.now - t0 == pytest.approx(C.KEEPALIVE_TIMEOUT + 0.01)


def test_new_handshake_when_peer_stops_answering():
    p = make_pair()
    connect(p)
    p.pump()
    peer = p.a.peers[p.b_key.public_key()]
    p.a.send([ipv4(A_IP, B_IP)], p.now)
    p.a.take_outbox()  # lost: B never answers
    sent_at = p.now
    deadline = peer.new_handshake_at
    assert C.KEEPALIVE_TIMEOUT + C.REKEY_TIMEOUT <= deadline - sent_at <= C.KEEPALIVE_TIMEOUT + C.REKEY_TIMEOUT + C.REKEY_TIMEOUT_JITTER_MAX
    p.now = deadline
    p.a.tick(p.now)
    assert any(m[0] == C.MESSAGE_INITIATION for m, _ in p.a.take_outbox())


def test_rekey_after_time_by_initiator_and_reject_after_time():
    p = make_pair()
    connect(p)
    peer = p.a.peers[p.b_key.public_key()]
    first = peer.keypairs.current
    p.now += C.REKEY_AFTER_TIME - 1
    p.a.send([ipv4(A_IP, B_IP)], p.now)
    assert not any(m[0] == C.MESSAGE_INITIATION for m, _ in p.a.take_outbox())
    p.now += 2  # older than REKEY_AFTER_TIME: sending starts a handshake
    p.a.send([ipv4(A_IP, B_IP)], p.now)
    kinds = [m[0] for m, _ in p.a.take_outbox()]
    assert kinds == [C.MESSAGE_TRANSPORT, C.MESSAGE_INITIATION]
    # the handshake is lost; at REJECT_AFTER_TIME the old session is no longer used to send
    p.now = first.created + C.REJECT_AFTER_TIME
    p.a.send([ipv4(A_IP, B_IP)], p.now)
    kinds = [m[0] for m, _ in p.a.take_outbox()]
    assert C.MESSAGE_TRANSPORT not in kinds
    assert peer.staged


def test_rekey_and_reject_after_messages():
    timers = C.Timers(rekey_after_messages=5, reject_after_messages=8)
    p = make_pair(timers=timers)
    connect(p)
    peer = p.a.peers[p.b_key.public_key()]
    p.now += C.REKEY_TIMEOUT  # initiations are at most one per REKEY_TIMEOUT
    for i in range(5):
        p.a.send([ipv4(A_IP, B_IP)], p.now)
    kinds = [m[0] for m, _ in p.a.take_outbox()]
    assert kinds.count(C.MESSAGE_INITIATION) == 1  # counter passed 5
    p.a.send([ipv4(A_IP, B_IP)] * 5, p.now)
    assert peer.keypairs.current.send_counter <= 8


def test_responder_session_rotation_completes_on_first_data():
    p = make_pair()
    connect(p)
    peer_b = p.b.peers[p.a_key.public_key()]
    assert peer_b.keypairs.current is not None and peer_b.keypairs.next is None
    old = peer_b.keypairs.current
    p.now += C.REKEY_AFTER_TIME + 1
    p.a.send([ipv4(A_IP, B_IP)], p.now)
    p.pump()
    assert peer_b.keypairs.current is not old
    assert peer_b.keypairs.previous is old


def test_zeroize_after_three_reject_times():
    p = make_pair()
    connect(p)
    peer = p.a.peers[p.b_key.public_key()]
    assert peer.zeroize_at == pytest.approx(p.now + C.ZEROIZE_AFTER)
    p.now = peer.zeroize_at
    p.a.tick(p.now)
    assert peer.keypairs.current is None


def test_persistent_keepalive():
    p = make_pair(keepalive=25)
    connect(p)
    p.pump()
    peer = p.a.peers[p.b_key.public_key()]
    assert peer.persistent_at == pytest.approx(p.now + 25)


# ------------------------------------------------------------------ load and cookies

def test_under_load_no_dh_without_cookie_and_legit_peer_gets_through():
    p = make_pair()
    flood = []
    for _ in range(C.UNDER_LOAD_HANDSHAKES_PER_SECOND + 10):
        attacker = Device(PrivateKey.generate(), seed=7)
        attacker.add_peer(PeerConfig(p.b_key.public_key(), None, [], B_EP))
        attacker.initiate_handshake(p.b_key.public_key(), p.now)
        flood.append(attacker.take_outbox()[0][0])
    p.b.receive([(m, ("203.0.113.66", 9999)) for m in flood], p.now)
    dh_before = p.b.stats["dh_initiations"]
    cookies_before = p.b.stats["cookies_sent"]
    assert cookies_before > 0
    p.b.take_outbox()
    # the legitimate peer starts while B is under load: it gets a cookie reply, no DH
    p.a.send([ipv4(A_IP, B_IP)], p.now)
    p.pump(rounds=1)
    p.pump(rounds=1)
    assert p.b.stats["dh_initiations"] == dh_before
    assert p.b.stats["cookies_sent"] == cookies_before + 1
    assert p.a.stats["cookies_received"] == 1
    # still under load at the retry; the retry carries mac2 and completes
    p.b.receive([(m, ("203.0.113.66", 9999)) for m in flood[:10]], p.now + 0.5)
    p.b.take_outbox()
    deadline = p.a.next_deadline()
    assert deadline - p.now <= C.REKEY_TIMEOUT + C.REKEY_TIMEOUT_JITTER_MAX
    p.now = deadline
    p.a.tick(p.now)
    p.pump()
    assert p.b.take_to_tun() == [ipv4(A_IP, B_IP)]


# ------------------------------------------------------------------ bad input never raises

@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from([1, 2, 3, 4, 0, 255]), body=st.binary(max_size=300))
def test_garbage_never_raises(kind, body):
    p = make_pair()
    p.b.receive([(bytes([kind, 0, 0, 0]) + body, A_EP), (body, A_EP)], p.now)
    p.b.send([body, bytes([0x45]) + body, bytes([0x60]) + body], p.now)


@settings(max_examples=200, deadline=None)
@given(flip=st.integers(min_value=0, max_value=132 * 8 - 1))
def test_bitflipped_handshakes_never_raise_or_succeed(flip):
    p = make_pair()
    p.a.send([ipv4(A_IP, B_IP)], p.now)
    (initiation, _), = p.a.take_outbox()
    bad = bytearray(initiation)
    bad[flip // 8] ^= 1 << (flip % 8)
    p.b.receive([(bytes(bad), A_EP)], p.now)
    assert p.b.stats["responses_sent"] == 0


def test_whitepaper_constants():
    t = C.DEFAULT_TIMERS
    assert (t.rekey_after_time, t.reject_after_time, t.rekey_attempt_time) == (120, 180, 90)
    assert (t.rekey_timeout, t.keepalive_timeout, t.zeroize_after) == (5, 10, 540)
    assert t.rekey_after_messages == 2**60
    assert t.reject_after_messages == 2**64 - 2**13 - 1
    assert MAX_TIMER_HANDSHAKES == 18


def test_initiator_rekeys_when_receiving_on_an_old_session():
    """keepKeyFreshReceiving: REJECT - KEEPALIVE - REKEY_TIMEOUT = 165 s after the handshake."""
    p = make_pair()
    connect(p)
    created = p.a.peers[p.b_key.public_key()].keypairs.current.created
    p.now = created + 164
    p.b.send([ipv4(B_IP, A_IP)], p.now)
    p.pump(rounds=1)
    assert not any(m[0] == C.MESSAGE_INITIATION for m, _ in p.a.take_outbox())
    p.now = created + 165.5
    p.b.send([ipv4(B_IP, A_IP)], p.now)
    out = p.b.take_outbox()
    for data, _ in out:
        p.a.receive([(data, B_EP)], p.now)
    assert [m[0] for m, _ in p.a.take_outbox()].count(C.MESSAGE_INITIATION) == 1


def test_initiation_flood_from_a_known_peer_is_limited():
    """At most one initiation per HANDSHAKE_INITIATION_RATE (20 ms) per peer is answered."""
    p = make_pair()
    msgs = []
    for i in range(3):
        p.a.peers[p.b_key.public_key()].last_initiation_sent = -1e9
        p.a.initiate_handshake(p.b_key.public_key(), p.now + i * 0.05)
        msgs.append(p.a.take_outbox()[0][0])
    p.b.receive([(msgs[0], A_EP)], p.now)
    p.b.receive([(msgs[1], A_EP)], p.now + 0.01)  # newer timestamp, but within 20 ms
    assert p.b.stats["responses_sent"] == 1 and p.b.stats["rx_initiation_flood"] == 1
    p.b.receive([(msgs[2], A_EP)], p.now + 0.05)
    assert p.b.stats["responses_sent"] == 2


def test_set_endpoint_starts_a_handshake_on_the_new_path_with_a_newer_timestamp():
    """NAT traversal moves a peer from a path that ate the initiation (say the relay, before
    the far side knew us) to a direct one 10 ms later: the new initiation must not carry the
    same whitened TAI64N step, or the responder refuses it as a replay."""
    p = make_pair()
    lost = ("100::1", 1)
    p.a.set_endpoint(p.b_key.public_key(), lost, p.now)
    (init1, ep1), = p.a.take_outbox()
    assert ep1 == lost
    p.b.receive([(init1, p.a_ep)], p.now)  # the far side did see the first one...
    p.b.take_outbox()  # ...but its answer is lost on the old path
    p.now += 0.010
    p.a.set_endpoint(p.b_key.public_key(), p.b_ep, p.now)
    assert p.a.take_outbox() == []  # deferred: same timestamp step
    due = p.a.next_deadline()
    assert due is not None and due - p.now <= C.NEW_PATH_HANDSHAKE_GAP
    p.advance(C.NEW_PATH_HANDSHAKE_GAP)
    p.a.send([ipv4(A_IP, B_IP, b"direct")], p.now)
    p.pump()
    assert ipv4(A_IP, B_IP, b"direct") in p.b.take_to_tun()
    # with a session, a new path changes only where packets go
    p.a.set_endpoint(p.b_key.public_key(), ("192.0.2.99", 9), p.now)
    out = p.a.take_outbox()
    assert out == [] and p.a.peers[p.b_key.public_key()].endpoint == ("192.0.2.99", 9)


# ----------------------------------------------------------------- LAN extension messages

EXT = bytes([0x51, 1, 0, 4]) + b"netx" + (20).to_bytes(2, "big") + bytes(20)


def make_shoal_pair(a_flags_b: bool = True, b_flags_a: bool = True) -> Pair:
    p = make_pair()
    p.a.add_peer(dataclasses.replace(p.a.peer_config(p.a.peers[p.b_key.public_key()]), shoal=a_flags_b))
    p.b.add_peer(dataclasses.replace(p.b.peer_config(p.b.peers[p.a_key.public_key()]), shoal=b_flags_a))
    return p


def test_extension_staged_before_the_session_then_delivered_in_order():
    p = make_shoal_pair()
    p.a.send_extension(p.b_key.public_key(), [EXT, EXT + b"\x01"], p.now)
    assert p.a.stats["initiations_sent"] == 1
    p.pump()
    got = p.b.take_extensions()
    assert [k for k, _ in got] == [p.a_key.public_key()] * 2
    # padding to 16 stays on: the extension format ignores it
    assert got[0][1][: len(EXT)] == EXT and got[1][1][: len(EXT) + 1] == EXT + b"\x01"
    assert all(len(x) % 16 == 0 for _, x in got)
    assert p.b.take_to_tun() == []
    assert p.b.stats["rx_inner_malformed"] == 0


def test_extension_shares_the_session_counter_with_unicast():
    p = make_shoal_pair()
    connect(p)
    keypair = p.a.peers[p.b_key.public_key()].keypairs.current
    before = keypair.send_counter
    p.a.send([ipv4(A_IP, B_IP)], p.now)
    p.a.send_extension(p.b_key.public_key(), [EXT], p.now)
    p.a.send([ipv4(A_IP, B_IP)], p.now)
    assert keypair.send_counter == before + 3
    out = p.a.take_outbox()
    for data, _ in out:
        p.b.receive([(data, A_EP)], p.now)
    assert len(p.b.take_to_tun()) == 2 and len(p.b.take_extensions()) == 1
    # replaying the extension is refused by the same window
    p.b.receive([out[1]], p.now)
    assert p.b.take_extensions() == [] and p.b.stats["rx_invalid_or_replayed"] == 1


def test_extension_never_sent_to_a_stock_or_unknown_peer():
    p = make_shoal_pair(a_flags_b=False)
    connect(p)
    p.a.send_extension(p.b_key.public_key(), [EXT], p.now)
    p.a.send_extension(PrivateKey.generate().public_key(), [EXT], p.now)
    assert p.a.take_outbox() == []
    assert p.a.stats["ext_not_shoal"] == 1 and p.a.stats["ext_no_peer"] == 1


def test_extension_from_a_peer_not_flagged_shoal_is_malformed():
    p = make_shoal_pair(b_flags_a=False)
    connect(p)
    p.a.send_extension(p.b_key.public_key(), [EXT], p.now)
    p.pump()
    assert p.b.take_extensions() == []
    assert p.b.stats["rx_inner_malformed"] == 1


def test_received_extension_counts_as_data_for_the_keepalive_timer():
    p = make_shoal_pair()
    connect(p)
    p.advance(C.KEEPALIVE_TIMEOUT + 1)  # quiet
    p.a.send_extension(p.b_key.public_key(), [EXT], p.now)
    (data, _), = p.a.take_outbox()
    p.b.receive([(data, A_EP)], p.now)
    assert p.b.peers[p.a_key.public_key()].send_keepalive_at == p.now + C.KEEPALIVE_TIMEOUT


def test_shoal_flag_survives_peer_update():
    p = make_shoal_pair()
    peer = p.a.peers[p.b_key.public_key()]
    assert p.a.peer_config(peer).shoal
    p.a.add_peer(dataclasses.replace(p.a.peer_config(peer), shoal=False))
    assert not peer.shoal
