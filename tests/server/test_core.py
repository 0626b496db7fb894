"""Unit tests of the coordination core: every rule, every refusal, views, versions, presence."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.constants import VIEW_PART_BYTES
from shoal.control import messages as m
from shoal.server.core import (
    IPV4_POOL, IPV4_RESERVED, PRESENCE_GRACE, Close, Core, DeleteMember, DeleteNetwork,
    PutBan, PutMember, PutNetwork, PutNode, Send, Effects,
)

from .helpers import BIG_NET, FAST_HASHER, PW, ULA, Harness, big_network, give_full_candidates, key_of, run_jobs


@pytest.fixture
def h() -> Harness:
    return Harness()


def refused(h: Harness, who: str, cls: type, code: str, /, **kw: object) -> m.Result:
    """Send a request that must be refused with `code` and change nothing at all."""
    before = h.state()
    versions = {c: h.core.version_of(h.nid(c)) for c in h.clients if h.clients[c].node_id}
    r = h.req(who, cls, **kw)
    assert not r.ok and r.code == code, r
    assert r.message  # a line for humans
    assert h.last.persist == []
    assert [type(o.message) for o in h.last.sends()] == [m.Result]  # no view update to anyone
    assert h.state() == before
    assert versions == {c: h.core.version_of(h.nid(c)) for c in versions}
    return r


def three(h: Harness) -> tuple[str, str, str]:
    """alice owns "lan" (password PW), bob joined; carol logged in, in no network."""
    for n in ("alice", "bob", "carol"):
        h.login(n)
    net = h.create("alice", "lan")
    assert h.join("bob", "lan").ok
    return net, h.nid("alice"), h.nid("bob")


# ------------------------------------------------------------------ identity


def test_first_login_registers_identity(h: Harness) -> None:
    node_id = h.login("alice")
    c = h.clients["alice"]
    assert len(node_id) == 6 and node_id.isalnum() and node_id.islower()
    login_ok, full = c.inbox
    assert isinstance(login_ok, m.LoginOk) and isinstance(full, m.FullView)
    assert login_ok.node.nickname == f"node-{node_id}"
    v4 = ipaddress.IPv4Address(login_ok.node.ipv4)
    assert v4 in IPV4_POOL and v4 not in IPV4_RESERVED and int(v4) & 0xFF not in (0, 255)
    v6 = ipaddress.IPv6Address(login_ok.node.ipv6)
    assert v6 in ULA and int(v6) & 0xFFFFFFFF == int(v4)
    assert full.networks == [] and full.peers == [] and full.node == login_ok.node
    assert [type(p) for p in h.last.persist] == [PutNode, PutNode]  # registered, then present


def test_identity_is_stable_across_logins_and_nickname_kept(h: Harness) -> None:
    first = h.login("alice", nickname="Alice")
    info = h.clients["alice"].inbox[0].node
    h.send("alice", m.Logout(req_id=1))
    assert h.login("alice") == first  # nickname None: keep the stored one
    assert h.clients["alice"].inbox[-2].node == info
    assert info.nickname == "Alice"


def test_addresses_unique_for_many_nodes() -> None:
    core = Core(ULA, now=0.0, rng=random.Random(1).randbytes, hasher=FAST_HASHER)
    seen4, seen6, ids = set(), set(), set()
    for i in range(3000):
        core.connect(i, key_of(f"n{i}"), 0.0)
        core.receive(i, m.Login(), 0.0)
        rec = core.node_by_key(key_of(f"n{i}"))
        assert rec is not None
        seen4.add(rec.ipv4), seen6.add(rec.ipv6), ids.add(rec.node_id)
        a = ipaddress.IPv4Address(rec.ipv4)
        assert a in IPV4_POOL and a not in IPV4_RESERVED and int(a) & 0xFF not in (0, 255)
    assert len(seen4) == len(seen6) == len(ids) == 3000


def test_ipv4_collision_probes_to_a_free_address() -> None:
    core = Core(ULA, now=0.0, hasher=FAST_HASHER)
    k = key_of("x")
    first = core._new_ipv4(k)
    core._ipv4_used.add(first)
    second = core._new_ipv4(k)
    assert second != first and ipaddress.IPv4Address(second) in IPV4_POOL


def test_node_id_collision_takes_a_longer_id() -> None:
    core = Core(ULA, now=0.0, hasher=FAST_HASHER)
    k = key_of("x")
    short = core._new_node_id(k)
    core.nodes[short] = None  # type: ignore[assignment]  # pretend another key owns it
    longer = core._new_node_id(k)
    assert len(longer) == 7 and longer.startswith(short)


def test_bad_ula_prefix_refused() -> None:
    with pytest.raises(ValueError):
        Core(ipaddress.IPv6Network("2001:db8::/48"), now=0.0)
    with pytest.raises(ValueError):
        Core(ipaddress.IPv6Network("fd00::/64"), now=0.0)


def test_endpoints_validated_and_observed_address_added(h: Harness) -> None:
    h.login("alice", remote_ip="192.0.2.10", listen_port=51820,
            endpoints=["198.51.100.7:51820", "garbage", "1.2.3.4:0", "[2001:db8::1]:5"])
    rec = h.core.nodes[h.nid("alice")]
    assert rec.endpoints == ("198.51.100.7:51820", "[2001:db8::1]:5", "192.0.2.10:51820")


# ------------------------------------------------------------------ protocol errors


def test_request_before_login_closes_only_that_session(h: Harness) -> None:
    h.login("bob")
    c = h.connect("alice")
    fx = h.send("alice", m.CreateNetwork(req_id=1, name="x", password=""))
    assert isinstance(fx.out[0], Send) and isinstance(fx.out[0].message, m.Error)
    assert fx.out[0].message.code == "protocol_error"
    assert isinstance(fx.out[1], Close) and fx.out[1].code == 4002 and "before Login" in fx.out[1].reason
    assert fx.persist == [] and h.core.networks == {}
    assert h.core.receive(c.session or 999, m.Login(), h.now).out == []  # dead session: ignored
    assert h.clients["bob"].closed == []


def test_second_login_is_a_protocol_error(h: Harness) -> None:
    h.login("alice")
    fx = h.send("alice", m.Login())
    assert [type(o) for o in fx.out] == [Send, Close]
    assert h.core.is_present(h.nid("alice"))  # a protocol error drops like a lost connection


def test_ping_pong_and_resync(h: Harness) -> None:
    h.login("alice")
    fx = h.send("alice", m.Ping(nonce=42))
    assert fx.sends()[0].message == m.Pong(nonce=42)
    h.create("alice", "lan")
    v = h.core.version_of(h.nid("alice"))
    fx = h.send("alice", m.ResyncRequest(have_version=0))
    (s,) = fx.sends()
    assert isinstance(s.message, m.FullView) and s.message.version == v
    assert s.message == h.core.full_view(h.nid("alice"))


def test_new_session_replaces_the_old_one(h: Harness) -> None:
    net, a, b = three(h)
    old = h.clients["bob"].session
    bob_v = h.core.version_of(b)
    fx_alice_before = len(h.clients["alice"].inbox)
    h.login("bob")
    assert (4000, "replaced by a newer session of this node") in h.clients["bob"].closed
    assert old is not None and h.core.disconnect(old, h.now).out == []  # the old one's end changes nothing
    assert h.core.is_present(b) and h.core.version_of(b) == bob_v + 1
    assert len(h.clients["alice"].inbox) == fx_alice_before  # nothing changed for alice
    h.assert_consistent()


# ------------------------------------------------------------------ create / join


def test_create_and_join_fan_out(h: Harness) -> None:
    net, a, b = three(h)
    assert h.peers("alice") == {b} and h.peers("bob") == {a}
    assert h.peers("carol") == set()
    info = h.clients["alice"].mirror.networks[net]
    assert [(x.node_id, x.role, x.online) for x in info.members] == [(a, "owner", True), (b, "member", True)]
    assert info.owner_id == a and not info.locked and info.approval == "auto"
    peer_b = h.clients["alice"].mirror.peers[b]
    assert peer_b.public_key == bytes(key_of("bob")) and peer_b.ipv4 == h.core.nodes[b].ipv4
    h.assert_consistent()


def test_create_refusals(h: Harness) -> None:
    h.login("alice"), h.login("bob")
    h.create("alice", "LAN Party")
    refused(h, "bob", m.CreateNetwork, "name_taken", name="lan party", password="x")
    refused(h, "bob", m.CreateNetwork, "invalid", name="   ", password="x")
    refused(h, "bob", m.CreateNetwork, "invalid", name="bad\x00name", password="x")


def test_password_is_stored_hashed(h: Harness) -> None:
    h.login("alice")
    net = h.create("alice", "lan", password="s3cret-pass")
    stored = h.core.networks[net].password_hash
    assert stored.startswith("scrypt$") and "s3cret-pass" not in stored


def test_wrong_password_refused(h: Harness) -> None:
    net, a, b = three(h)
    refused(h, "carol", m.JoinNetwork, "wrong_password", name="lan", password="nope")
    refused(h, "carol", m.JoinNetwork, "wrong_password", name="other", password=PW)  # no existence oracle
    assert h.join("carol", "LAN").ok  # names are case-insensitive
    h.assert_consistent()


def test_join_is_idempotent(h: Harness) -> None:
    net, a, b = three(h)
    v = h.core.version_of(b)
    r = h.join("bob", "lan", password="whatever")
    assert r.ok and r.network_id == net
    assert h.last.persist == [] and h.core.version_of(b) == v


def test_fresh_core_checks_password_with_scrypt_not_only_fast_path(h: Harness) -> None:
    net, a, b = three(h)
    h.core._fast_pw.clear()  # as after a restart
    refused(h, "carol", m.JoinNetwork, "wrong_password", name="lan", password="PW")
    assert h.join("carol", "lan", password=PW).ok


def test_wrong_passwords_are_rate_limited(h: Harness) -> None:
    """The node's failure budget (PASSWORD_FAIL_NODE): wrong guesses at an honest pace run
    it out, then even the right password is refused without a check, until it refills."""
    three(h)
    codes = []
    while len(codes) < 40:
        h.advance(2.0)  # slower than the work budget (PASSWORD_WORK) refills
        codes.append(h.join("carol", "lan", password="nope").code)
        if codes[-1] == "rate_limited":
            break
    assert set(codes[:-1]) == {"wrong_password"} and codes[-1] == "rate_limited"
    assert 10 <= len(codes) - 1 <= 20
    refused(h, "carol", m.JoinNetwork, "rate_limited", name="lan", password=PW)
    h.advance(61)
    assert h.join("carol", "lan").ok


def test_locked_network(h: Harness) -> None:
    net, a, b = three(h)
    refused(h, "bob", m.SetAccess, "not_owner", network_id=net, locked=True)
    assert h.req("alice", m.SetAccess, network_id=net, locked=True).ok
    assert h.clients["bob"].mirror.networks[net].locked
    refused(h, "carol", m.JoinNetwork, "locked", name="lan", password=PW)
    refused(h, "alice", m.SetAccess, "invalid", network_id=net)
    assert h.req("alice", m.SetAccess, network_id=net, locked=False).ok
    assert h.join("carol", "lan").ok


def test_set_access_idempotent(h: Harness) -> None:
    net, a, b = three(h)
    assert h.req("alice", m.SetAccess, network_id=net, locked=False, approval="auto").ok
    assert h.last.persist == [] and [type(s.message) for s in h.last.sends()] == [m.Result]


# ------------------------------------------------------------------ approval


def test_manual_approval_flow(h: Harness) -> None:
    for n in ("alice", "bob", "carol"):
        h.login(n)
    net = h.create("alice", "club", approval="manual")
    h.join("carol", "club")  # carol is a member in manual mode? no: pending too
    r = h.join("bob", "club")
    b = h.nid("bob")
    assert not r.ok and r.code == "pending_approval" and r.network_id == net
    assert isinstance(h.last.persist[0], PutMember) and h.last.persist[0].member.pending
    # bob sees the network as pending with only owner and himself; no peers yet
    bob_view = h.clients["bob"].mirror.networks[net]
    assert {x.node_id for x in bob_view.members} == {h.nid("alice"), b}
    assert h.peers("bob") == set() and b not in h.peers("alice")
    owner_view = h.clients["alice"].mirror.networks[net]
    assert [x.pending for x in owner_view.members if x.node_id == b] == [True]
    # asking again: still pending, nothing changes
    refused(h, "bob", m.JoinNetwork, "pending_approval", name="club", password=PW)
    refused(h, "carol", m.Approve, "not_owner", network_id=net, node_id=b)
    assert h.req("alice", m.Approve, network_id=net, node_id=b).ok
    assert h.peers("bob") == {h.nid("alice")}
    assert h.req("alice", m.Approve, network_id=net, node_id=b).ok  # idempotent
    assert h.last.persist == []
    h.assert_consistent()


def test_reject_and_ban(h: Harness) -> None:
    for n in ("alice", "bob", "carol"):
        h.login(n)
    net = h.create("alice", "club", approval="manual")
    h.join("bob", "club"), h.join("carol", "club")
    b, c = h.nid("bob"), h.nid("carol")
    refused(h, "bob", m.Reject, "not_owner", network_id=net, node_id=c)
    assert h.req("alice", m.Reject, network_id=net, node_id=b).ok
    assert net not in h.clients["bob"].mirror.networks
    assert h.join("bob", "club").code == "pending_approval"  # plain reject: may ask again
    assert h.req("alice", m.Reject, network_id=net, node_id=b, ban=True).ok
    assert any(isinstance(p, PutBan) for p in h.last.persist)
    refused(h, "bob", m.JoinNetwork, "banned", name="club", password=PW)
    refused(h, "alice", m.Reject, "not_member", network_id=net, node_id=h.nid("alice"))
    refused(h, "alice", m.Reject, "invalid", network_id=net, node_id="zzzzzz")
    h.assert_consistent()


# ------------------------------------------------------------------ evict / leave / delete


def test_evict_cuts_at_once_and_ban_sticks(h: Harness) -> None:
    net, a, b = three(h)
    assert h.join("carol", "lan").ok
    c = h.nid("carol")
    refused(h, "bob", m.Evict, "not_owner", network_id=net, node_id=c)
    refused(h, "alice", m.Evict, "invalid", network_id=net, node_id=a)
    assert h.req("alice", m.Evict, network_id=net, node_id=c).ok
    assert h.peers("carol") == set() and c not in h.peers("alice") | h.peers("bob")
    assert net not in h.clients["carol"].mirror.networks
    assert h.join("carol", "lan").ok  # evicted without ban may come back
    assert h.req("alice", m.Evict, network_id=net, node_id=c, ban=True).ok
    assert {type(p) for p in h.last.persist} == {DeleteMember, PutBan}
    refused(h, "carol", m.JoinNetwork, "banned", name="lan", password=PW)
    refused(h, "alice", m.Evict, "not_member", network_id=net, node_id=c)  # no ban, not a member
    assert h.req("alice", m.Evict, network_id=net, node_id=c, ban=True).ok  # idempotent
    assert h.last.persist == []
    h.assert_consistent()


def test_leave(h: Harness) -> None:
    net, a, b = three(h)
    refused(h, "alice", m.LeaveNetwork, "owner_cannot_leave", network_id=net)
    refused(h, "carol", m.LeaveNetwork, "not_member", network_id=net)
    refused(h, "carol", m.LeaveNetwork, "no_such_network", network_id="nonet")
    assert h.req("bob", m.LeaveNetwork, network_id=net).ok
    assert h.peers("alice") == set() and h.clients["bob"].mirror.networks == {}
    assert [x.node_id for x in h.clients["alice"].mirror.networks[net].members] == [a]
    h.assert_consistent()


def test_delete(h: Harness) -> None:
    net, a, b = three(h)
    refused(h, "bob", m.DeleteNetwork, "not_owner", network_id=net)
    refused(h, "bob", m.DeleteNetwork, "no_such_network", network_id="nonet")
    assert h.req("alice", m.DeleteNetwork, network_id=net).ok
    assert h.last.persist == [DeleteNetwork(net)]
    for n in ("alice", "bob"):
        assert h.clients[n].mirror.networks == {} and h.peers(n) == set()
    refused(h, "alice", m.DeleteNetwork, "no_such_network", network_id=net)
    assert h.create("bob", "lan")  # the name is free again
    h.assert_consistent()


def test_set_password(h: Harness) -> None:
    net, a, b = three(h)
    refused(h, "bob", m.SetPassword, "not_owner", network_id=net, password="x")
    assert h.req("alice", m.SetPassword, network_id=net, password="new-password").ok
    assert [type(p) for p in h.last.persist] == [PutNetwork]
    refused(h, "carol", m.JoinNetwork, "wrong_password", name="lan", password=PW)
    assert h.join("carol", "lan", password="new-password").ok


# ------------------------------------------------------------------ online / offline, several networks


def test_set_online_per_network_and_overlap(h: Harness) -> None:
    net, a, b = three(h)
    c = h.nid("carol")
    net2 = h.create("alice", "second")
    assert h.join("bob", "second").ok and h.join("carol", "second").ok
    assert h.peers("alice") == {b, c} and h.peers("carol") == {a, b}
    # bob offline in "lan" only: still a peer of alice through "second"
    assert h.req("bob", m.SetOnline, network_id=net, online=False).ok
    assert h.peers("alice") == {b, c}
    assert h.clients["alice"].mirror.member_online(net, b) is False
    assert h.clients["alice"].mirror.member_online(net2, b) is True
    v = h.core.version_of(a)
    assert h.req("bob", m.SetOnline, network_id=net, online=False).ok  # idempotent
    assert h.core.version_of(a) == v and h.last.persist == []
    assert h.req("bob", m.SetOnline, network_id=net2, online=False).ok
    assert b not in h.peers("alice") and b not in h.peers("carol") and h.peers("bob") == set()
    refused(h, "carol", m.SetOnline, "not_member", network_id=net, online=True)
    assert h.req("bob", m.SetOnline, network_id=net, online=True).ok
    assert h.peers("alice") == {b, c} and h.peers("bob") == {a}  # carol is not in "lan"
    h.assert_consistent()


def test_isolation_between_non_shared_members(h: Harness) -> None:
    for n in ("alice", "bob", "carol"):
        h.login(n)
    h.create("alice", "n1"), h.create("carol", "n2")
    h.join("bob", "n1"), h.join("bob", "n2")
    a, b, c = h.nid("alice"), h.nid("bob"), h.nid("carol")
    assert h.peers("bob") == {a, c} and h.peers("alice") == {b} and h.peers("carol") == {b}
    assert not h.core.is_peer(a, c)


def test_set_nickname_reaches_peers(h: Harness) -> None:
    net, a, b = three(h)
    refused(h, "bob", m.SetNickname, "invalid", nickname=" ")
    assert h.req("bob", m.SetNickname, nickname="Bobby").ok
    assert h.clients["alice"].mirror.peers[b].nickname == "Bobby"
    assert [x.nickname for x in h.clients["alice"].mirror.networks[net].members if x.node_id == b] == ["Bobby"]
    assert h.clients["bob"].mirror.node is not None and h.clients["bob"].mirror.node.nickname == "Bobby"
    h.assert_consistent()


def test_pending_member_is_never_a_peer(h: Harness) -> None:
    h.login("alice"), h.login("bob")
    net = h.create("alice", "club", approval="manual")
    h.join("bob", "club")
    assert h.req("bob", m.SetOnline, network_id=net, online=True).ok
    assert h.peers("alice") == set() and not h.core.is_online(h.nid("bob"), net)


# ------------------------------------------------------------------ presence


def test_dropped_connection_keeps_peers_for_the_grace(h: Harness) -> None:
    net, a, b = three(h)
    assert h.drop("bob").out == []  # nothing told yet
    assert h.core.next_deadline() == pytest.approx(h.now + PRESENCE_GRACE)
    h.advance(PRESENCE_GRACE - 1)
    assert h.peers("alice") == {b}
    fx = h.advance(1.0)
    assert b not in h.peers("alice") and h.clients["alice"].mirror.member_online(net, b) is False
    assert [p.node.present for p in fx.persist if isinstance(p, PutNode)] == [False]
    assert h.core.next_deadline() is None
    h.login("bob")
    assert h.peers("alice") == {b}
    h.assert_consistent()


def test_reconnect_inside_the_grace_is_invisible_to_peers(h: Harness) -> None:
    net, a, b = three(h)
    va = h.core.version_of(a)
    h.drop("bob")
    h.advance(10)
    h.login("bob")
    h.advance(PRESENCE_GRACE)
    assert h.core.version_of(a) == va and h.peers("alice") == {b}
    assert h.core.next_deadline() is None


def _checks(fx: Effects, to: str, h: Harness) -> list[m.CheckPeer]:
    sid = h.clients[to].session
    return [o.message for o in fx.sends() if o.session == sid and isinstance(o.message, m.CheckPeer)]


def _checking_pair(h: Harness) -> tuple[str, str, str]:
    """alice (check_peer) owns "lan", bob (check_peer) and carol (old client) joined."""
    for n in ("alice", "bob"):
        h.login(n, features=[m.FEATURE_CHECK_PEER])
    h.login("carol")
    net = h.create("alice", "lan")
    assert h.join("bob", "lan").ok and h.join("carol", "lan").ok
    return net, h.nid("alice"), h.nid("bob")


def test_login_ok_announces_check_peer(h: Harness) -> None:
    h.login("alice", features=[m.FEATURE_CHECK_PEER])
    ok = next(x for x in h.clients["alice"].inbox if isinstance(x, m.LoginOk))
    assert m.FEATURE_CHECK_PEER in ok.features


def test_dropped_node_makes_its_peers_check_it_old_clients_are_not_told(h: Harness) -> None:
    net, a, b = _checking_pair(h)
    fx = h.drop("bob")
    assert _checks(fx, "alice", h) == [m.CheckPeer(node_id=b, active=True)]
    assert _checks(fx, "carol", h) == []  # carol did not list check_peer
    fx = h.drop("carol")
    assert _checks(fx, "alice", h) == [m.CheckPeer(node_id=h.nid("carol"), active=True)]
    # bob comes back: his checking peers are told the check is over; he hears about carol
    h.advance(5)
    h.login("bob", features=[m.FEATURE_CHECK_PEER])
    assert _checks(h.last, "alice", h) == [m.CheckPeer(node_id=b, active=False)]
    assert _checks(h.last, "bob", h) == [m.CheckPeer(node_id=h.nid("carol"), active=True)]
    h.assert_consistent()


def test_clean_logout_asks_nobody_to_check(h: Harness) -> None:
    net, a, b = _checking_pair(h)
    fx = h.send("bob", m.Logout(req_id=3))
    assert _checks(fx, "alice", h) == [] and b not in h.peers("alice")


def test_peer_reports_keep_a_node_online_past_the_grace(h: Harness) -> None:
    net, a, b = _checking_pair(h)
    h.drop("bob")
    for _ in range(10):  # 10 grace periods: alice still reaches bob and says so
        h.advance(PRESENCE_GRACE / 2)
        h.send("alice", m.PeerReport(node_id=b, reachable=True))
    assert b in h.peers("alice") and h.core.is_online(b, net)
    # "unreachable" extends nothing: one grace after the last "reachable", bob is offline
    h.advance(PRESENCE_GRACE / 2 - 1)
    assert h.core.is_online(b, net)
    h.send("alice", m.PeerReport(node_id=b, reachable=False))
    h.advance(PRESENCE_GRACE / 2 + 1.5)
    assert b not in h.peers("alice") and not h.core.is_online(b, net)
    # a report about a node that is offline now does not bring it back
    h.send("alice", m.PeerReport(node_id=b, reachable=True))
    assert not h.core.is_present(b)


def test_a_stranger_cannot_keep_a_node_online(h: Harness) -> None:
    net, a, b = _checking_pair(h)
    h.login("dave", features=[m.FEATURE_CHECK_PEER])  # shares no network with bob
    h.drop("bob")
    h.advance(PRESENCE_GRACE - 1)
    h.send("dave", m.PeerReport(node_id=b, reachable=True))
    h.advance(1.5)
    assert not h.core.is_present(b)


def test_connected_node_is_not_extended_by_reports(h: Harness) -> None:
    net, a, b = _checking_pair(h)
    h.send("alice", m.PeerReport(node_id=b, reachable=True))
    assert h.core.next_deadline() is None


def test_logout_takes_effect_at_once(h: Harness) -> None:
    net, a, b = three(h)
    fx = h.send("bob", m.Logout(req_id=5))
    assert isinstance(fx.out[0], Send) and fx.out[0].message == m.Result(req_id=5, ok=True)
    assert any(isinstance(o, Close) and o.code == 1000 for o in fx.out)
    assert h.peers("alice") == set() and h.core.next_deadline() is None


def test_restart_gives_present_nodes_the_grace(h: Harness) -> None:
    net, a, b = three(h)
    h.drop("carol")
    h.advance(PRESENCE_GRACE + 1)  # carol is offline before the "restart"
    core = h.core
    t0 = h.now + 100
    new = Core.from_state(
        ULA, core.nodes.values(), core.networks.values(),
        [x for mems in core.members.values() for x in mems.values()],
        [x for bs in core.bans.values() for x in bs.values()],
        now=t0, hasher=FAST_HASHER,
    )
    assert new.is_present(a) and new.is_present(b) and not new.is_present(h.nid("carol"))
    assert new.next_deadline() == pytest.approx(t0 + PRESENCE_GRACE)
    h2 = Harness(core=new, now=t0)
    h2.login("alice")
    assert h2.peers("alice") == {b}  # bob not back yet, but inside the start grace
    h2.advance(PRESENCE_GRACE)
    assert h2.peers("alice") == set() and h2.clients["alice"].mirror.member_online(net, b) is False
    h2.login("bob")
    assert h2.peers("alice") == {b}
    h2.assert_consistent()


# ------------------------------------------------------------------ versions


def test_versions_are_consecutive_and_only_for_changes(h: Harness) -> None:
    net, a, b = three(h)
    msgs = [x for x in h.clients["bob"].inbox if isinstance(x, (m.FullView, m.ViewUpdate))]
    assert isinstance(msgs[0], m.FullView)
    v = msgs[0].version
    for u in msgs[1:]:
        assert isinstance(u, m.ViewUpdate) and u.prev_version == v and u.version == v + 1
        v = u.version
    n_alice = len(h.clients["alice"].inbox)
    h.req("carol", m.SetNickname, nickname="Carol")  # carol shares nothing with alice
    assert len(h.clients["alice"].inbox) == n_alice


def test_mirror_resync_after_gap() -> None:
    from shoal.testing.viewmirror import ViewMirror

    h = Harness()
    net, a, b = three(h)
    ups = [x for x in h.clients["alice"].inbox if isinstance(x, m.ViewUpdate)]
    fresh = ViewMirror()
    fresh.apply(h.core.full_view(a))
    assert fresh.apply(ups[-1])  # a duplicate of an already-applied update is a no-op
    stale = ViewMirror()
    stale.view.version = ups[-1].prev_version - 1
    assert not stale.apply(ups[-1]) and stale.resyncs_needed == 1


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_keep_every_view_consistent(seed: int) -> None:
    """Random requests, drops and timers from six nodes: every mirror equals the server's view."""
    rnd = random.Random(seed)
    h = Harness(seed=seed)
    names = [f"n{i}" for i in range(6)]
    for n in names:
        h.login(n)
    nets: list[str] = []
    for step in range(250):
        n = rnd.choice(names)
        if h.clients[n].session is None:
            if rnd.random() < 0.5:
                h.login(n)
            continue
        op = rnd.randrange(12)
        live = sorted(h.core.networks)
        nid = rnd.choice(live) if live and rnd.random() < 0.9 else (rnd.choice(nets) if nets else "none")
        other = h.nid(rnd.choice(names)) if all(h.clients[x].node_id for x in names) else "none"
        if op == 0:
            r = h.req(n, m.CreateNetwork, name=f"net{rnd.randrange(5)}", password=PW,
                      approval=rnd.choice(["auto", "manual"]))
            if r.ok:
                nets.append(r.network_id or "")
        elif op in (1, 2):
            h.join(n, f"net{rnd.randrange(5)}", password=rnd.choice([PW, PW, "bad"]))
        elif op == 3:
            h.req(n, m.LeaveNetwork, network_id=nid)
        elif op == 4:
            h.req(n, m.SetOnline, network_id=nid, online=rnd.random() < 0.5)
        elif op == 5:
            h.req(n, m.Approve, network_id=nid, node_id=other)
        elif op == 6:
            h.req(n, m.Evict, network_id=nid, node_id=other, ban=rnd.random() < 0.3)
        elif op == 7 and rnd.random() < 0.3:
            h.req(n, m.DeleteNetwork, network_id=nid)
        elif op == 8:
            h.drop(n)
        elif op == 9:
            h.send(n, m.Logout(req_id=1))
        elif op == 10:
            h.req(n, m.SetAccess, network_id=nid, locked=rnd.random() < 0.3)
        else:
            h.advance(rnd.choice([1.0, 10.0, PRESENCE_GRACE]))
        h.assert_consistent()
        # every online pair of members in a shared network are peers, and nobody else
        for x in names:
            xi = h.clients[x].node_id
            if xi is None or h.clients[x].session is None:
                continue
            assert h.core.peers_of(xi) == set(h.clients[x].mirror.peers)


# ------------------------------------------------------------------ fuzz: any decoded message, any order

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ids = st.sampled_from(["aaaaaa", "zzzz", "0", "bbbbbbbb"])
_names = st.sampled_from(["lan", "LAN", " lan ", "x" * 64, "\x01", "club"])
_pw = st.sampled_from(["", "pw", PW, "x" * 128])
_req = st.integers(0, 2**63 - 1)
_addr = st.one_of(st.sampled_from(["1.2.3.4:5", "x", "[::1]:7", "1.2.3.4:99999", "1.2.3.4:²", "[2001:db8::1]:5"]),
                  st.text(max_size=64))
_any_msg = st.one_of(
    st.builds(m.Login, nickname=st.one_of(st.none(), _names), listen_port=st.integers(0, 65535),
              features=st.lists(st.sampled_from([m.FEATURE_CHECK_PEER, "x"]), max_size=2),
              endpoints=st.lists(_addr, max_size=4)),
    st.builds(m.Candidates, candidates=st.lists(st.builds(m.Candidate, kind=st.sampled_from(["local", "reflexive", "mapped"]),
                                                          addr=_addr), max_size=4), nat_hard=st.booleans()),
    st.builds(m.Logout, req_id=_req),
    st.builds(m.Ping, nonce=_req),
    st.builds(m.ResyncRequest, have_version=_req),
    st.builds(m.PeerReport, node_id=_ids, reachable=st.booleans()),
    st.builds(m.CreateNetwork, req_id=_req, name=_names, password=_pw, approval=st.sampled_from(["auto", "manual"])),
    st.builds(m.JoinNetwork, req_id=_req, name=_names, password=_pw),
    st.builds(m.LeaveNetwork, req_id=_req, network_id=_ids),
    st.builds(m.DeleteNetwork, req_id=_req, network_id=_ids),
    st.builds(m.SetOnline, req_id=_req, network_id=_ids, online=st.booleans()),
    st.builds(m.SetNickname, req_id=_req, nickname=_names),
    st.builds(m.SetPassword, req_id=_req, network_id=_ids, password=_pw),
    st.builds(m.SetAccess, req_id=_req, network_id=_ids, locked=st.one_of(st.none(), st.booleans()),
              approval=st.one_of(st.none(), st.sampled_from(["auto", "manual"]))),
    st.builds(m.Approve, req_id=_req, network_id=_ids, node_id=_ids),
    st.builds(m.Reject, req_id=_req, network_id=_ids, node_id=_ids, ban=st.booleans()),
    st.builds(m.Evict, req_id=_req, network_id=_ids, node_id=_ids, ban=st.booleans()),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), _any_msg, st.sampled_from(["send", "drop", "tick"])), max_size=30))
def test_core_never_raises_on_any_message_sequence(ops: list[tuple[int, m.ClientMessage, str]]) -> None:
    """Whatever decoded messages arrive, in whatever order: no exception, answers well-formed."""
    core = Core(ULA, now=0.0, rng=random.Random(0).randbytes, hasher=FAST_HASHER)
    keys = [key_of(f"f{i}") for i in range(3)]
    sessions: dict[int, int] = {}
    sid, now = 0, 0.0
    for who, msg, action in ops:
        now += 1.0
        if who not in sessions:
            sid += 1
            sessions[who] = sid
            core.connect(sid, keys[who], now, "192.0.2.1")
        if action == "drop":
            core.disconnect(sessions.pop(who), now)
            continue
        if action == "tick":
            now += PRESENCE_GRACE
            core.handle_timer(now)
        fx = run_jobs(core, core.receive(sessions[who], msg, now), now)
        for o in fx.out:
            if isinstance(o, Send):
                m.decode_server(m.encode(o.message))  # every answer fits the contract's limits
        if hasattr(msg, "req_id") and core.session_node(sessions[who]) is not None and not isinstance(msg, m.Logout):
            results = [o.message for o in fx.sends() if isinstance(o.message, m.Result)]
            assert [r.req_id for r in results] == [msg.req_id]  # exactly one answer per request


# ---------------------------------------------------------------- NAT traversal (issue #5)


def test_candidates_reach_peers_and_relay_needs_a_shared_network() -> None:
    h = Harness()
    for name in ("a", "b", "c"):
        h.login(name)
    nid = h.create("a", "lan")
    assert h.join("b", "lan").ok
    h.create("c", "other")
    for c in h.clients.values():
        c.inbox.clear()
    h.send("a", m.Candidates(candidates=[m.Candidate("reflexive", "203.0.113.9:4000"),
                                         m.Candidate("mapped", "not an address"),
                                         m.Candidate("reflexive", "203.0.113.9:4000")], nat_hard=True))
    pa = h.clients["b"].mirror.peers[h.nid("a")]
    assert pa.candidates == [m.Candidate("reflexive", "203.0.113.9:4000")] and pa.nat_hard
    assert not h.clients["c"].inbox  # c shares nothing with a
    assert not h.clients["a"].inbox  # nothing about itself
    h.clients["b"].inbox.clear()
    h.send("a", m.Candidates(candidates=[m.Candidate("reflexive", "203.0.113.9:4000")], nat_hard=True))
    assert not h.clients["b"].inbox  # the same set again changes nothing
    ka, kb, kc = (bytes(key_of(x)) for x in ("a", "b", "c"))
    assert h.core.may_relay(ka, kb) and h.core.may_relay(kb, ka)
    assert not h.core.may_relay(ka, kc) and not h.core.may_relay(ka, b"\x00" * 31)
    assert not h.core.may_relay(ka, bytes(32))
    h.req("b", m.SetOnline, network_id=nid, online=False)
    assert not h.core.may_relay(ka, kb)


def test_login_ok_names_disco_and_relay() -> None:
    h = Harness(Core(ULA, now=1000.0, hasher=FAST_HASHER, relay=True, relay_port=3480))
    h.login("a")
    ok = [x for x in h.clients["a"].inbox if isinstance(x, m.LoginOk)][0]
    assert {m.FEATURE_DISCO, m.FEATURE_RELAY} <= set(ok.features) and ok.relay_port == 3480
    h2 = Harness()
    h2.login("a")
    ok = [x for x in h2.clients["a"].inbox if isinstance(x, m.LoginOk)][0]
    assert m.FEATURE_RELAY not in ok.features and ok.relay_port == 0


# ------------------------------------------------------------------ LAN: layer-2 networks, broadcast switch


def test_login_ok_announces_lan(h: Harness) -> None:
    h.login("alice")
    ok = [s.message for s in h.last.sends() if isinstance(s.message, m.LoginOk)]
    assert ok and m.FEATURE_LAN in ok[0].features


def test_layer2_networks_only_for_nodes_that_know_them(h: Harness) -> None:
    h.login("alice", features=[m.FEATURE_LAN])
    h.login("bob", features=[m.FEATURE_LAN])
    h.login("carol")  # an older node: never sees an l2 network
    refused(h, "carol", m.CreateNetwork, "unsupported", name="old", password=PW, kind="l2")
    r = h.req("alice", m.CreateNetwork, name="ipx", password=PW, kind="l2")
    assert r.ok
    assert h.clients["alice"].mirror.networks[r.network_id].kind == "l2"
    assert h.core.networks[r.network_id].kind == "l2" and any(
        isinstance(p, PutNetwork) and p.network.kind == "l2" for p in h.last.persist)
    refused(h, "carol", m.JoinNetwork, "unsupported", name="ipx", password=PW)
    assert h.join("bob", "ipx").ok
    assert h.peers("alice") == {h.nid("bob")}
    h.assert_consistent()


def test_broadcast_switch(h: Harness) -> None:
    net, a, b = three(h)
    assert h.clients["bob"].mirror.networks[net].broadcast  # on by default
    refused(h, "bob", m.SetAccess, "not_owner", network_id=net, broadcast=False)
    assert h.req("alice", m.SetAccess, network_id=net, broadcast=False).ok
    assert not h.core.networks[net].broadcast
    assert not h.clients["bob"].mirror.networks[net].broadcast  # members see it in their view
    assert h.clients["alice"].mirror.networks[net].locked is False  # nothing else changed
    assert h.req("alice", m.SetAccess, network_id=net, broadcast=False).ok
    assert h.last.persist == []  # idempotent
    refused(h, "alice", m.SetAccess, "invalid", network_id=net)


# ------------------------------------------------------------------ issue 18 F5: bans by source prefix


def _banned_bob(h: Harness) -> str:
    """alice (203.0.113.5) owns "lan"; bob joined from 198.51.100.7 and was evicted with a ban."""
    h.login("alice", remote_ip="203.0.113.5")
    h.login("bob", remote_ip="198.51.100.7")
    net = h.create("alice", "lan")
    assert h.join("bob", "lan").ok
    assert h.req("alice", m.Evict, network_id=net, node_id=h.nid("bob"), ban=True).ok
    return net


def test_ban_records_the_prefix_the_banned_node_came_from(h: Harness) -> None:
    net = _banned_bob(h)
    ban = h.core.bans[net][h.nid("bob")]
    assert ban.prefix == "198.51.100.0/24"
    assert [p.ban.prefix for p in h.persisted if isinstance(p, PutBan)] == ["198.51.100.0/24"]


def test_new_key_from_a_banned_prefix_waits_for_the_owner(h: Harness) -> None:
    """F5: a banned member who makes a new key and rejoins from the same /24 gets no direct way in."""
    net = _banned_bob(h)
    b2 = h.login("bob2", remote_ip="198.51.100.200")  # same /24, another key
    r = h.join("bob2", "lan")
    assert not r.ok and r.code == "pending_approval" and "banned" in r.message
    mem = h.core.members[net][b2]
    assert mem.pending and mem.note == "banned_prefix"
    assert not h.core.is_online(b2, net) and h.peers("alice") == set()
    # the owner sees the request and why it waits
    info = {x.node_id: x for x in h.clients["alice"].mirror.networks[net].members}
    assert info[b2].pending and info[b2].note == "banned_prefix"
    # someone from elsewhere still joins directly
    c = h.login("carol", remote_ip="192.0.2.33")
    assert h.join("carol", "lan").ok and h.core.is_online(c, net)
    # the owner may let bob2 in (the existing approval flow); the note goes with the approval
    assert h.req("alice", m.Approve, network_id=net, node_id=b2).ok
    assert h.core.members[net][b2].note == "" and h.core.is_online(b2, net)
    h.assert_consistent()


def test_banned_prefix_ipv6_is_a_48(h: Harness) -> None:
    h.login("alice", remote_ip="2001:db8:ffff::1")
    h.login("bob", remote_ip="2001:db8:1:2::7")
    net = h.create("alice", "lan")
    assert h.join("bob", "lan").ok
    assert h.req("alice", m.Evict, network_id=net, node_id=h.nid("bob"), ban=True).ok
    assert h.core.bans[net][h.nid("bob")].prefix == "2001:db8:1::/48"
    h.login("bob2", remote_ip="2001:db8:1:ffff::9")
    assert h.join("bob2", "lan").code == "pending_approval"
    h.login("carol", remote_ip="2001:db8:2::9")
    assert h.join("carol", "lan").ok


def test_loopback_and_unknown_sources_are_not_banned_prefixes(h: Harness) -> None:
    """Loopback (one host's own processes, e.g. tests) and an unknown source record no prefix."""
    h.login("alice", remote_ip="127.0.0.1")
    h.login("bob", remote_ip="127.0.0.1")
    net = h.create("alice", "lan")
    assert h.join("bob", "lan").ok
    assert h.req("alice", m.Evict, network_id=net, node_id=h.nid("bob"), ban=True).ok
    assert h.core.bans[net][h.nid("bob")].prefix is None
    h.login("bob2", remote_ip="127.0.0.1")
    assert h.join("bob2", "lan").ok


def test_banned_prefix_only_affects_that_network(h: Harness) -> None:
    _banned_bob(h)
    h.create("alice", "other")
    h.login("bob2", remote_ip="198.51.100.200")
    assert h.join("bob2", "other").ok


# ------------------------------------------------------------------ issue 18 F6: registration, addresses, expiry


def test_registration_flood_from_one_prefix_is_refused_after_the_limit(h: Harness) -> None:
    from shoal.constants import REGISTRATION_BURST_PER_PREFIX, REGISTRATION_RATE_PER_PREFIX
    from shoal.control.transport import CLOSE_REFUSED

    for i in range(REGISTRATION_BURST_PER_PREFIX):
        h.login(f"flood{i}", remote_ip=f"198.51.100.{i + 1}")
    n = len(h.core.nodes)
    c = h.connect("one-too-many", remote_ip="198.51.100.250")
    fx = h.send("one-too-many", m.Login())  # must not raise
    assert len(h.core.nodes) == n and fx.persist == []
    errors = [o.message for o in fx.sends() if isinstance(o.message, m.Error)]
    assert [e.code for e in errors] == ["registration_limited"] and "retry" in errors[0].message
    assert c.closed and c.closed[0][0] == CLOSE_REFUSED
    # another prefix still registers; a known node from the flooded prefix still logs in
    h.login("elsewhere", remote_ip="203.0.113.9")
    h.drop("flood0")
    h.login("flood0", remote_ip="198.51.100.1")
    # the bucket refills
    h.now += 1.0 / REGISTRATION_RATE_PER_PREFIX
    h.login("later", remote_ip="198.51.100.251")


def test_full_pool_refuses_login_cleanly() -> None:
    from shoal.control.transport import CLOSE_REFUSED

    core = Core(ULA, now=1000.0, hasher=FAST_HASHER, ipv4_pool=ipaddress.IPv4Network("100.64.7.0/30"))
    h = Harness(core=core)
    got = {h.core.nodes[h.login(n)].ipv4 for n in ("a", "b", "c")}
    assert got == {"100.64.7.1", "100.64.7.2", "100.64.7.3"}  # .0 is never handed out
    c = h.connect("d")
    fx = h.send("d", m.Login())  # must not raise
    assert [o.message.code for o in fx.sends() if isinstance(o.message, m.Error)] == ["address_pool_full"]
    assert c.closed[0][0] == CLOSE_REFUSED and h.core.node_by_key(key_of("d")) is None
    assert fx.persist == []


def test_address_probe_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A crowded pool costs at most IPV4_PROBE_MAX hashes, then a bounded scan (not 65,536 hashes)."""
    import hashlib as _hashlib

    from shoal.constants import IPV4_PROBE_MAX
    from shoal.server.core import addressing as core_mod

    pool = ipaddress.IPv4Network("100.64.8.0/24")
    core = Core(ULA, now=1000.0, hasher=FAST_HASHER, ipv4_pool=pool)
    core._ipv4_used.update(str(a) for a in pool if str(a) != "100.64.8.77")  # only .77 is free
    calls = 0
    real = _hashlib.blake2s

    def counting(*a: object, **kw: object):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(core_mod.hashlib, "blake2s", counting)
    h = Harness(core=core)
    nid = h.login("x")
    assert h.core.nodes[nid].ipv4 == "100.64.8.77"
    assert calls <= IPV4_PROBE_MAX + 2  # the probes, the node id, nothing more


def test_expired_node_is_swept_and_its_address_reused() -> None:
    from shoal.constants import NODE_EXPIRY
    from shoal.server.core import DeleteNode

    core = Core(ULA, now=1000.0, hasher=FAST_HASHER, ipv4_pool=ipaddress.IPv4Network("100.64.7.0/30"))
    h = Harness(core=core)
    a, b, c = (h.login(n) for n in ("a", "b", "c"))
    h.create("a", "lan")  # a owns a network: never expires
    assert h.join("b", "lan").ok  # b is a member: kept
    c_ip = h.core.nodes[c].ipv4
    for n in ("a", "b"):
        h.send(n, m.Logout(req_id=1))
    h.send("c", m.Logout(req_id=1))
    assert h.core.next_deadline() == pytest.approx(h.now + NODE_EXPIRY)
    fx = h.advance(NODE_EXPIRY - 1)
    assert c in h.core.nodes
    fx = h.advance(1.0)
    assert c not in h.core.nodes and h.core.node_by_key(key_of("c")) is None
    assert DeleteNode(c) in fx.persist
    assert a in h.core.nodes and b in h.core.nodes
    d = h.login("d")
    assert h.core.nodes[d].ipv4 == c_ip  # the address went back to the pool
    assert h.core.next_deadline() is None


def test_node_seen_again_does_not_expire() -> None:
    from shoal.constants import NODE_EXPIRY

    h = Harness()
    c = h.login("c")
    h.send("c", m.Logout(req_id=1))
    h.advance(NODE_EXPIRY / 2)
    h.login("c")
    h.send("c", m.Logout(req_id=2))
    h.advance(NODE_EXPIRY / 2 + 1)
    assert c in h.core.nodes
    h.advance(NODE_EXPIRY / 2)
    assert c not in h.core.nodes


def test_expiry_drops_pending_requests_and_keeps_banned_nodes(h: Harness) -> None:
    from shoal.constants import NODE_EXPIRY

    net = _banned_bob(h)
    assert h.req("alice", m.SetAccess, network_id=net, approval="manual").ok
    p = h.login("pat", remote_ip="192.0.2.1")
    assert h.join("pat", "lan").code == "pending_approval"
    h.send("pat", m.Logout(req_id=1))
    h.send("bob", m.Logout(req_id=1))
    h.advance(NODE_EXPIRY + 1)
    assert p not in h.core.nodes and p not in h.core.members[net]
    assert p not in {x.node_id for x in h.clients["alice"].mirror.networks[net].members}
    assert h.nid("bob") in h.core.nodes  # a banned node is kept, so its ban keeps meaning something
    h.assert_consistent()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["login", "logout", "join", "leave", "advance"]), st.integers(0, 4)),
                max_size=40))
def test_addresses_stay_unique_reclaimed_and_members_never_expire(ops: list[tuple[str, int]]) -> None:
    """Property (F6): whatever nodes do, addresses are unique and exactly the stored nodes' ones,
    a full pool only refuses, members are never deleted, and an away node in no network is."""
    from shoal.constants import NODE_EXPIRY

    h = Harness(core=Core(ULA, now=1000.0, hasher=FAST_HASHER, ipv4_pool=ipaddress.IPv4Network("100.64.7.0/30")))
    names = [f"n{i}" for i in range(5)]

    def logged_in(name: str) -> str | None:
        c = h.clients.get(name)
        return None if c is None or c.session is None else h.core.session_node(c.session)

    for op, i in ops:
        name = names[i]
        me = logged_in(name)
        if op == "login" and me is None:
            h.connect(name)
            h.send(name, m.Login())  # may be refused (pool full): never raises
            if logged_in(name) is None:
                assert len([n for n in h.core.nodes.values() if n.ipv4.startswith("100.64.7.")]) == 3
        elif op == "logout" and me is not None:
            h.send(name, m.Logout(req_id=1))
        elif op == "join" and me is not None:
            if "lan" not in {n.name for n in h.core.networks.values()}:
                h.create(name, "lan")
            else:
                h.join(name, "lan")
        elif op == "leave" and me is not None:
            for nid in list(h.core._node_nets.get(me, ())):
                h.req(name, m.LeaveNetwork, network_id=nid)
        elif op == "advance":
            members = {x for mems in h.core.members.values() for x, mem in mems.items() if not mem.pending}
            h.advance(NODE_EXPIRY * (i + 1) / 3)
            assert members <= set(h.core.nodes)  # members (and owners) never expire
        used = [n.ipv4 for n in h.core.nodes.values()]
        assert len(set(used)) == len(used) and h.core._ipv4_used == set(used)
        assert set(h.core._by_key.values()) == set(h.core.nodes)
    # in the end every away node in no network goes
    h.advance(NODE_EXPIRY * 2)
    for nid in h.core.nodes:
        assert h.core.is_present(nid) or any(nid in mems for mems in h.core.members.values())


def test_full_pool_searches_spend_the_registration_budget() -> None:
    """A full pool is no free CPU sink: each (bounded) address search spends registration budget,
    so one prefix gets at most REGISTRATION_BURST_PER_PREFIX searches, then cheap refusals."""
    from shoal.constants import REGISTRATION_BURST_PER_PREFIX

    core = Core(ULA, now=1000.0, hasher=FAST_HASHER, ipv4_pool=ipaddress.IPv4Network("100.64.7.0/30"))
    h = Harness(core=core)
    for n in ("a", "b", "c"):
        h.login(n)  # loopback/unknown: not limited
    codes = []
    for i in range(REGISTRATION_BURST_PER_PREFIX + 3):
        h.connect(f"x{i}", remote_ip="198.51.100.9")
        fx = h.send(f"x{i}", m.Login())
        codes += [o.message.code for o in fx.sends() if isinstance(o.message, m.Error)]
    assert codes == ["address_pool_full"] * REGISTRATION_BURST_PER_PREFIX + ["registration_limited"] * 3


# ------------------------------------------------------------------ large views (issue 18 F9)


def _view_sends(fx: Effects) -> list[m.FullView | m.ViewUpdate]:
    return [s.message for s in fx.sends() if isinstance(s.message, (m.FullView, m.ViewUpdate))]


def test_a_3000_peer_view_and_a_3000_peer_update_reach_the_node_in_parts_under_the_limit() -> None:
    nodes, net, members = big_network(3000)
    core = Core.from_state(ULA, nodes, [net], members, [], now=1000.0, hasher=FAST_HASHER)
    give_full_candidates(core, [n.node_id for n in nodes[1:]])
    h = Harness(core)
    h.login("alice")
    parts = _view_sends(h.last)
    sizes = [len(m.encode(p)) for p in parts]
    assert len(parts) > 1 and max(sizes) <= VIEW_PART_BYTES and sum(sizes) > m.MAX_SERVER_FRAME
    assert isinstance(parts[0], m.FullView) and [p.more for p in parts][-1] is False
    h.assert_consistent()  # the mirror holds the whole view, every candidate included
    assert len(h.peers("alice")) == 3000
    assert all(len(p.candidates) == m.MAX_CANDIDATES for p in h.clients["alice"].mirror.peers.values())
    version = core.version_of(h.nid("alice"))
    assert h.req("alice", m.SetOnline, network_id=BIG_NET, online=False).ok
    assert h.peers("alice") == set()
    assert h.req("alice", m.SetOnline, network_id=BIG_NET, online=True).ok
    parts = _view_sends(h.last)
    assert [p for p in parts if isinstance(p, m.ViewUpdate) and p.version == version + 2] == parts
    assert len(parts) > 1 and max(len(m.encode(p)) for p in parts) <= VIEW_PART_BYTES
    h.assert_consistent()
    assert len(h.peers("alice")) == 3000 and core.version_of(h.nid("alice")) == version + 2


def test_a_view_over_what_a_node_accepts_is_logged_not_silent(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    nodes, net, members = big_network(30)
    core = Core.from_state(ULA, nodes, [net], members, [], now=1000.0, hasher=FAST_HASHER)
    h = Harness(core)
    monkeypatch.setattr(m, "MAX_PEERS", 20)  # a node refuses a view with more peers (ViewParts)
    with caplog.at_level("ERROR", logger="shoal.server"):
        h.connect("alice")
        fx = core.receive(h.clients["alice"].session, m.Login(), h.now)  # type: ignore[arg-type]
    assert "its view has 1 networks and 30 peers, over what a node accepts" in caplog.text
    view = [s.message for s in fx.sends() if isinstance(s.message, m.FullView)]
    assert len(view) == 1 and len(view[0].peers) == 30  # sent all the same; the node asks again
# ---------------------------------------------------------------- endpoint checks (issue 18 F15, F10)


def test_non_ascii_port_in_login_endpoints_is_dropped_not_raised(h: Harness) -> None:
    h.login("alice", remote_ip="192.0.2.10", listen_port=51820,
            endpoints=["1.2.3.4:²", "1.2.3.4:٣", "127.0.0.1:5", "[100::1]:5", "224.0.0.1:5", "198.51.100.7:51820"])
    rec = h.core.nodes[h.nid("alice")]
    assert rec.endpoints == ("198.51.100.7:51820", "192.0.2.10:51820")
    assert not h.clients["alice"].closed


def test_non_ascii_port_candidate_is_refused_without_an_exception() -> None:
    h = Harness()
    for name in ("a", "b"):
        h.login(name)
    h.create("a", "lan")
    assert h.join("b", "lan").ok
    h.send("a", m.Candidates(candidates=[m.Candidate("reflexive", "1.2.3.4:²"),
                                         m.Candidate("reflexive", "127.0.0.1:4000"),
                                         m.Candidate("local", "[fe80::1]:4000"),
                                         m.Candidate("local", "192.168.1.5:4000"),
                                         m.Candidate("reflexive", "203.0.113.9:4000")]))
    pa = h.clients["b"].mirror.peers[h.nid("a")]
    assert [c.addr for c in pa.candidates] == ["192.168.1.5:4000", "203.0.113.9:4000"]
    assert not h.clients["a"].closed  # the session survives; the bad entries are dropped
    r = h.req("a", m.SetNickname, nickname="still-here")  # and the core still answers it
    assert r.ok


def test_peers_get_the_public_address_the_server_saw_as_observed_ip() -> None:
    h = Harness()
    h.login("a", remote_ip="::ffff:203.0.113.9")
    h.login("b", remote_ip="198.51.100.4")
    h.create("a", "lan")
    assert h.join("b", "lan").ok
    assert h.clients["b"].mirror.peers[h.nid("a")].observed_ip == "203.0.113.9"
    assert h.clients["a"].mirror.peers[h.nid("b")].observed_ip == "198.51.100.4"
    h.send("a", m.Candidates(candidates=[m.Candidate("reflexive", "198.51.100.66:4000")], nat_hard=True))
    assert h.clients["b"].mirror.peers[h.nid("a")].observed_ip == "203.0.113.9"  # a claim changes nothing
    h.drop("a")
    assert h.clients["b"].mirror.peers[h.nid("a")].observed_ip == "203.0.113.9"  # kept through the grace
    h.login("a", remote_ip="203.0.113.50")  # back from elsewhere: the peer is told
    assert h.clients["b"].mirror.peers[h.nid("a")].observed_ip == "203.0.113.50"


def test_private_or_unknown_session_address_is_never_observed() -> None:
    h = Harness()
    h.login("a", remote_ip="192.168.1.5")
    h.login("b", remote_ip=None)
    h.login("c", remote_ip="127.0.0.1")
    h.create("a", "lan")
    assert h.join("b", "lan").ok and h.join("c", "lan").ok
    peers = h.clients["b"].mirror.peers
    assert peers[h.nid("a")].observed_ip == "" and peers[h.nid("c")].observed_ip == ""
    assert h.clients["a"].mirror.peers[h.nid("b")].observed_ip == ""
