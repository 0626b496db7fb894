"""The control message contract: every struct round-trips; limits, versions and unknown
types are refused; the decoders only ever raise ProtocolError, whatever the bytes."""

from __future__ import annotations

import typing

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.constants import VIEW_PART_BYTES
from shoal.control import messages as m

SELF = m.SelfInfo(node_id="k3x9q2", nickname="alice", ipv4="100.64.0.1", ipv6="fd7a:115c:a1e0::1")
PEER = m.PeerInfo(node_id="b7c8d9", nickname="bob", public_key=bytes(range(32)), ipv4="100.64.0.2",
                  ipv6="fd7a:115c:a1e0::2", endpoints=["198.51.100.7:51820", "[2001:db8::1]:51820"])
NET = m.NetworkInfo(network_id="n1", name="lan party", owner_id="k3x9q2", kind="ip", locked=False,
                    approval="manual", members=[
                        m.MemberInfo(node_id="k3x9q2", nickname="alice", role="owner", online=True),
                        m.MemberInfo(node_id="b7c8d9", nickname="bob", role="member", online=False, pending=True),
                    ])

CLIENT_EXAMPLES: list[m._Msg] = [
    m.Login(nickname="alice", listen_port=51820, endpoints=["192.0.2.10:51820"], have_version=3, software="shoal 0.1"),
    m.Login(),
    m.Logout(req_id=1),
    m.Ping(nonce=2**63 - 1),
    m.ResyncRequest(have_version=0),
    m.PeerReport(node_id="b7c8d9", reachable=True),
    m.Candidates(candidates=[m.Candidate("reflexive", "203.0.113.7:41641"), m.Candidate("mapped", "[2001:db8::1]:9")],
                 nat_hard=True),
    m.Candidates(),
    m.Login(features=[m.FEATURE_CHECK_PEER, "future-thing"]),
    m.CreateNetwork(req_id=2, name="lan party", password="hunter2", approval="manual"),
    m.JoinNetwork(req_id=3, name="lan party", password=""),
    m.LeaveNetwork(req_id=4, network_id="n1"),
    m.DeleteNetwork(req_id=5, network_id="n1"),
    m.SetOnline(req_id=6, network_id="n1", online=False),
    m.SetNickname(req_id=7, nickname="Älice 🎮"),
    m.SetPassword(req_id=8, network_id="n1", password="x" * 128),
    m.SetAccess(req_id=9, network_id="n1", locked=True, approval="auto"),
    m.SetAccess(req_id=10, network_id="n1"),
    m.Approve(req_id=11, network_id="n1", node_id="b7c8d9"),
    m.Reject(req_id=12, network_id="n1", node_id="b7c8d9", ban=True),
    m.Evict(req_id=13, network_id="n1", node_id="b7c8d9"),
]
SERVER_EXAMPLES: list[m._Msg] = [
    m.LoginOk(node=SELF, server_time=1_700_000_000.25),
    m.FullView(version=1, node=SELF, networks=[NET], peers=[PEER]),
    m.FullView(version=0, node=SELF, networks=[], peers=[]),
    m.ViewUpdate(prev_version=1, version=2, node=SELF, networks_upsert=[NET], networks_removed=["n2"],
                 peers_upsert=[PEER], peers_removed=["zz9"]),
    m.ViewUpdate(prev_version=2, version=3),
    m.Result(req_id=2, ok=True, network_id="n1"),
    m.Result(req_id=3, ok=False, code="wrong_password", message="wrong password for network 'lan party'"),
    m.Pong(nonce=0),
    m.CheckPeer(node_id="b7c8d9"),
    m.CheckPeer(node_id="b7c8d9", active=False),
    m.LoginOk(node=SELF, server_time=1.0, features=[m.FEATURE_CHECK_PEER]),
    m.LoginOk(node=SELF, server_time=1.0, features=[m.FEATURE_DISCO, m.FEATURE_RELAY], relay_port=3480),
    m.Error(code="banned", message="this node is banned"),
]


def test_check_peer_is_default_compatible() -> None:
    """An older peer's Login/LoginOk (no features) decodes with features = []; CheckPeer
    without `active` means active; too many or too long feature names are refused."""
    old_login = b"\x01" + msgspec.msgpack.encode({"type": "login", "listen_port": 1})
    assert m.decode_client(old_login).features == []
    old_ok = b"\x01" + msgspec.msgpack.encode({"type": "login_ok", "node": msgspec.to_builtins(SELF), "server_time": 1.0})
    assert m.decode_server(old_ok).features == []
    assert m.decode_server(b"\x01" + msgspec.msgpack.encode({"type": "check_peer", "node_id": "ab"})).active is True
    for bad in (["x"] * (m.MAX_FEATURES + 1), ["x" * 33]):
        with pytest.raises(m.ProtocolError):
            m.decode_client(b"\x01" + msgspec.msgpack.encode({"type": "login", "features": bad}))


def test_candidates_are_optional_and_bounded() -> None:
    """A PeerInfo from an older server has no candidates; kinds and counts are checked."""
    old_peer = msgspec.msgpack.decode(msgspec.msgpack.encode(PEER))
    old_peer.pop("candidates", None)
    old_peer.pop("nat_hard", None)
    view = b"\x01" + msgspec.msgpack.encode({"type": "full_view", "version": 1, "node": msgspec.to_builtins(SELF),
                                             "networks": [], "peers": [old_peer]})
    peer = m.decode_server(view).peers[0]
    assert peer.candidates == [] and peer.nat_hard is False
    for bad in ([{"kind": "teleport", "addr": "1.2.3.4:5"}],
                [{"kind": "reflexive", "addr": "1.2.3.4:5"}] * (m.MAX_CANDIDATES + 1),
                [{"kind": "mapped", "addr": "x" * 65}]):
        with pytest.raises(m.ProtocolError):
            m.decode_client(b"\x01" + msgspec.msgpack.encode({"type": "candidates", "candidates": bad}))


def test_lan_fields_are_default_compatible() -> None:
    """An older server's NetworkInfo (no broadcast) means broadcast on; an older node's
    CreateNetwork (no kind) means "ip"; "l2" decodes; an unknown kind is a protocol error."""
    old = msgspec.to_builtins(NET)
    del old["broadcast"]
    view = {"type": "full_view", "version": 1, "node": msgspec.to_builtins(SELF), "networks": [old], "peers": []}
    assert m.decode_server(b"\x01" + msgspec.msgpack.encode(view)).networks[0].broadcast is True
    create = {"type": "create_network", "req_id": 1, "name": "x", "password": ""}
    assert m.decode_client(b"\x01" + msgspec.msgpack.encode(create)).kind == "ip"
    assert m.decode_client(b"\x01" + msgspec.msgpack.encode({**create, "kind": "l2"})).kind == "l2"
    with pytest.raises(m.ProtocolError):
        m.decode_client(b"\x01" + msgspec.msgpack.encode({**create, "kind": "l3"}))


def test_examples_cover_every_message_type() -> None:
    assert {type(x) for x in CLIENT_EXAMPLES} == set(typing.get_args(m.ClientMessage))
    assert {type(x) for x in SERVER_EXAMPLES} == set(typing.get_args(m.ServerMessage))


@pytest.mark.parametrize("msg", CLIENT_EXAMPLES, ids=lambda x: type(x).__name__)
def test_client_messages_round_trip(msg: m._Msg) -> None:
    frame = m.encode(msg)
    assert frame[0] == m.PROTOCOL_VERSION
    assert m.decode_client(frame) == msg
    with pytest.raises(m.ProtocolError):  # a server never accepts its own kind of message...
        m.decode_server(frame)


@pytest.mark.parametrize("msg", SERVER_EXAMPLES, ids=lambda x: type(x).__name__)
def test_server_messages_round_trip(msg: m._Msg) -> None:
    frame = m.encode(msg)
    assert m.decode_server(frame) == msg
    with pytest.raises(m.ProtocolError):  # ...nor a node a client message
        m.decode_client(frame)


def _raw(obj: object) -> bytes:
    return bytes([m.PROTOCOL_VERSION]) + msgspec.msgpack.encode(obj)


def test_unknown_fields_are_ignored() -> None:
    assert m.decode_client(_raw({"type": "ping", "nonce": 5, "from_the_future": [1, 2]})) == m.Ping(nonce=5)


@pytest.mark.parametrize(
    "frame,why",
    [
        (b"", "empty"),
        (bytes([2]) + m.encode(m.Ping(nonce=1))[1:], "version"),
        (bytes([0]) + m.encode(m.Ping(nonce=1))[1:], "version"),
        (_raw({"type": "launch_missiles"}), "malformed"),
        (_raw({"nonce": 1}), "malformed"),  # no tag
        (_raw({"type": "ping", "nonce": -1}), "malformed"),
        (_raw({"type": "ping", "nonce": 2**64 - 1}), "malformed"),
        (_raw({"type": "ping", "nonce": "1"}), "malformed"),
        (_raw({"type": "set_nickname", "req_id": 1, "nickname": ""}), "malformed"),
        (_raw({"type": "set_nickname", "req_id": 1, "nickname": "n" * 65}), "malformed"),
        (_raw({"type": "leave_network", "req_id": 1, "network_id": "N1"}), "malformed"),  # pattern
        (_raw({"type": "set_password", "req_id": 1, "network_id": "n1", "password": "p" * 129}), "malformed"),
        (_raw({"type": "login", "endpoints": ["1.2.3.4:5"] * (m.MAX_ENDPOINTS + 1)}), "malformed"),
        (_raw({"type": "login", "listen_port": 65536}), "malformed"),
        (_raw({"type": "create_network", "req_id": 1, "name": "x", "password": "", "approval": "maybe"}), "malformed"),
        (_raw([1, 2, 3]), "malformed"),
        (m.encode(m.Ping(nonce=1)) + b"\x00", "malformed"),  # trailing bytes
        (m.encode(m.Ping(nonce=1))[:-1], "malformed"),  # truncated
        (bytes([1]) + bytes(m.MAX_CLIENT_FRAME), "exceeds"),
    ],
)
def test_client_decoder_refuses(frame: bytes, why: str) -> None:
    with pytest.raises(m.ProtocolError, match=why):
        m.decode_client(frame)


def test_server_decoder_limits() -> None:
    bad_key = _raw({"type": "full_view", "version": 1, "node": msgspec.to_builtins(SELF), "networks": [],
                    "peers": [dict(msgspec.to_builtins(PEER), public_key=bytes(31))]})
    with pytest.raises(m.ProtocolError, match="malformed"):
        m.decode_server(bad_key)
    with pytest.raises(m.ProtocolError, match="exceeds"):
        m.decode_server(bytes([1]) + bytes(m.MAX_SERVER_FRAME))
    # a frame above the client limit is fine from the server
    peers = [PEER] * 1000
    big = m.encode(m.FullView(version=1, node=SELF, networks=[], peers=peers))
    assert len(big) > m.MAX_CLIENT_FRAME
    assert len(m.decode_server(big).peers) == 1000


def _decodes_or_protocol_error(frame: bytes) -> None:
    for decode in (m.decode_client, m.decode_server):
        try:
            decode(frame)
        except m.ProtocolError:
            pass


def test_invalid_utf8_is_a_protocol_error() -> None:
    frame = _raw({"type": "set_nickname", "req_id": 1, "nickname": "ok"}).replace(b"\xa2ok", b"\xa2\xff\xfe")
    with pytest.raises(m.ProtocolError):
        m.decode_client(frame)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _decodes_or_protocol_error(data)
    _decodes_or_protocol_error(bytes([m.PROTOCOL_VERSION]) + data)


_EXAMPLE_FRAMES = [m.encode(x) for x in CLIENT_EXAMPLES + SERVER_EXAMPLES]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_EXAMPLE_FRAMES),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("fid")), max_size=6))
def test_fuzz_mutated_valid_frames(frame: bytes, edits: list[tuple[int, int, str]]) -> None:
    data = bytearray(frame)
    for pos, val, op in edits:
        i = pos % (len(data) + 1)
        if op == "f" and i < len(data):
            data[i] ^= val or 1
        elif op == "i":
            data.insert(i, val)
        elif op == "d" and i < len(data):
            del data[i]
    _decodes_or_protocol_error(bytes(data))


_TAGS = [t.__struct_config__.tag for t in typing.get_args(m.ClientMessage) + typing.get_args(m.ServerMessage)]
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=40),
                  st.binary(max_size=40))
_value = st.recursive(_leaf, lambda kids: st.one_of(st.lists(kids, max_size=5),
                                                    st.dictionaries(st.text(max_size=12), kids, max_size=5)),
                      max_leaves=8)
_fields = ["nonce", "req_id", "name", "password", "network_id", "node_id", "nickname", "node", "networks", "peers",
           "version", "prev_version", "ok", "code", "message", "endpoints", "members", "public_key", "approval"]


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(_TAGS + ["", "nope"]), st.dictionaries(st.sampled_from(_fields), _value, max_size=8))
def test_fuzz_structured_msgpack(tag: str, fields: dict[str, object]) -> None:
    """Well-formed msgpack with real tags and field names but arbitrary values."""
    _decodes_or_protocol_error(_raw(dict(fields, type=tag)))


@given(st.integers(0, 255).filter(lambda v: v != m.PROTOCOL_VERSION), st.sampled_from(_EXAMPLE_FRAMES))
def test_any_other_version_is_refused(version: int, frame: bytes) -> None:
    for decode in (m.decode_client, m.decode_server):
        with pytest.raises(m.ProtocolError, match="version"):
            decode(bytes([version]) + frame[1:])


# ---------------------------------------------------------------- large views in parts (issue 18 F9)


def _big_peer(i: int) -> m.PeerInfo:
    """A peer with every list full: about 1.9 kB encoded."""
    return m.PeerInfo(
        node_id=f"p{i:05d}", nickname=f"member-{i:05d}-with-a-long-nickname", public_key=i.to_bytes(32, "big"),
        ipv4=f"100.65.{i // 256}.{i % 256}", ipv6=f"fd12:3456:789a::{i:x}",
        endpoints=[f"[2001:db8:{i:x}:ffff:ffff:ffff:ffff:{j:x}]:65535" for j in range(m.MAX_ENDPOINTS)],
        candidates=[m.Candidate("mapped", f"[2001:db8:ffff:{k:x}:ffff:ffff:ffff:ffff]:65535")
                    for k in range(m.MAX_CANDIDATES)],
        nat_hard=True)


def _big_view(n: int) -> m.FullView:
    members = [m.MemberInfo(node_id=SELF.node_id, nickname=SELF.nickname, role="owner", online=True)]
    members += [m.MemberInfo(node_id=f"p{i:05d}", nickname=f"member-{i:05d}-with-a-long-nickname", role="member",
                             online=True) for i in range(n)]
    net = m.NetworkInfo(network_id="big", name="big", owner_id=SELF.node_id, kind="ip", locked=False,
                        approval="auto", members=members)
    return m.FullView(version=7, node=SELF, networks=[net], peers=[_big_peer(i) for i in range(n)])


def _join(parts: list[m.FullView | m.ViewUpdate]) -> m.FullView | m.ViewUpdate:
    joiner = m.ViewParts()
    for p in parts[:-1]:
        assert joiner.feed(p) is None and joiner.staged
    whole = joiner.feed(parts[-1])
    assert whole is not None and not joiner.staged
    return whole


def test_a_3000_peer_view_goes_in_parts_under_the_limit_and_joins_back_intact() -> None:
    view = _big_view(3000)
    assert len(m.encode(view)) > m.MAX_SERVER_FRAME  # one message could not be sent at all
    parts = m.split_view(view)
    assert len(parts) > 1 and isinstance(parts[0], m.FullView) and parts[0].more
    assert all(isinstance(p, m.ViewUpdate) and p.prev_version == p.version == 7 for p in parts[1:])
    assert [p.more for p in parts] == [True] * (len(parts) - 1) + [False]
    frames = [m.encode(p) for p in parts]
    assert max(map(len, frames)) <= VIEW_PART_BYTES
    assert _join([m.decode_server(f) for f in frames]) == view  # each part is a valid message
    with pytest.raises(m.ProtocolError):
        m.decode_server(m.encode(view))
    assert m.decode_stored_view(m.encode(view)) == view  # what a node stores of a joined view comes back


def test_a_large_view_update_goes_in_parts_removals_first() -> None:
    big = _big_view(3000)
    upd = m.ViewUpdate(prev_version=3, version=4, node=SELF, networks_upsert=big.networks,
                       networks_removed=["gone"], peers_upsert=big.peers,
                       peers_removed=[f"r{i:05d}" for i in range(40000)])
    parts = m.split_view(upd)
    assert len(parts) > 1 and max(len(m.encode(p)) for p in parts) <= VIEW_PART_BYTES
    assert (parts[0].prev_version, parts[0].version, parts[0].node) == (3, 4, SELF)
    assert all(p.prev_version == p.version == 4 and p.node is None for p in parts[1:])
    order = [f for p in parts for f in ("networks_removed", "peers_removed", "networks_upsert", "peers_upsert")
             if getattr(p, f)]
    assert order == sorted(order, key=["networks_removed", "peers_removed", "networks_upsert",
                                       "peers_upsert"].index)
    assert _join(parts) == upd


def test_a_view_under_the_limit_is_one_message_and_a_huge_record_gets_a_part_alone() -> None:
    small = _big_view(3)
    assert m.split_view(small) == [small]
    one = _big_view(1)
    parts = m.split_view(one, limit=500)  # the peer record alone is bigger than 500 bytes
    assert len(parts) == 2 and parts[1].peers_upsert == one.peers and len(m.encode(parts[1])) > 500
    assert _join(parts) == one
    with pytest.raises(ValueError):
        m.split_view(parts[0])


_records = st.builds(lambda i: _big_peer(i), st.integers(0, 65535))
_nets = st.builds(lambda n: msgspec.structs.replace(NET, network_id=f"n{n}"), st.integers(0, 255))


@settings(max_examples=150, deadline=None)
@given(st.lists(_nets, max_size=6, unique_by=lambda x: x.network_id),
       st.lists(_records, max_size=30, unique_by=lambda x: x.node_id),
       st.lists(st.sampled_from(["n1", "n2", "n9"]), max_size=4),
       st.lists(st.sampled_from(["p00001", "p00077", "zz"]), max_size=5),
       st.booleans(), st.integers(300, 12000))
def test_split_then_join_gives_back_any_view(nets, peers, nets_rm, peers_rm, full, limit) -> None:
    if full:
        view: m.FullView | m.ViewUpdate = m.FullView(version=5, node=SELF, networks=nets, peers=peers)
    else:
        view = m.ViewUpdate(prev_version=5, version=6, node=None, networks_upsert=nets, networks_removed=nets_rm,
                            peers_upsert=peers, peers_removed=peers_rm)
    parts = m.split_view(view, limit)
    for p in parts:
        n_records = sum(len(getattr(p, f, ())) for f in ("networks", "peers", "networks_upsert", "peers_upsert",
                                                          "networks_removed", "peers_removed"))
        assert len(m.encode(p)) <= limit or n_records == 1
        assert m.decode_server(m.encode(p)) == p
    assert _join(parts) == view


def test_parts_out_of_sequence_drop_what_is_staged() -> None:
    parts = m.split_view(_big_view(40), limit=20000)
    assert len(parts) >= 3
    joiner = m.ViewParts()
    with pytest.raises(m.PartsError):  # a continuation with nothing staged
        joiner.feed(parts[1])
    for p in parts[2:]:  # the rest of that message: ignored (one resync per broken message)
        assert joiner.feed(p) is None and not joiner.staged
    with pytest.raises(m.PartsError):  # its last part went by: the next orphan is an error again
        joiner.feed(parts[1])
    assert joiner.feed(parts[0]) is None
    with pytest.raises(m.PartsError):  # another version
        joiner.feed(msgspec.structs.replace(parts[1], prev_version=8, version=8))
    assert not joiner.staged
    joiner.feed(parts[0])
    with pytest.raises(m.PartsError):  # an ordinary update in the middle
        joiner.feed(m.ViewUpdate(prev_version=7, version=8))
    assert not joiner.staged
    joiner.feed(parts[0])
    with pytest.raises(m.PartsError):  # a FullView's part never removes
        joiner.feed(msgspec.structs.replace(parts[1], peers_removed=["p00001"]))
    joiner.feed(parts[0])
    assert joiner.feed(parts[0]) is None  # a FullView starts over
    assert _join(parts) == _big_view(40)
    whole = m.FullView(version=1, node=SELF, networks=[], peers=[])
    assert joiner.feed(whole) is whole


def test_more_is_default_compatible() -> None:
    old = _raw({"type": "full_view", "version": 1, "node": msgspec.to_builtins(SELF), "networks": [], "peers": []})
    assert m.decode_server(old) == m.FullView(version=1, node=SELF, networks=[], peers=[], more=False)
    assert m.decode_server(_raw({"type": "view_update", "prev_version": 1, "version": 2})).more is False
