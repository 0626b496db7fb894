"""View reconciler: idempotence, ordering, resync; the peer set it gives the engine."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.control.messages import FullView, MemberInfo, NetworkInfo, PeerInfo, SelfInfo, ViewUpdate, split_view
from shoal.daemon.view import Outcome, PeerPlanner, View, first_endpoint
from shoal.wireguard.keys import PrivateKey

KEYS = [PrivateKey.from_seed(bytes([i])).public_key() for i in range(8)]
OWN = PrivateKey.from_seed(b"own")
SELF = SelfInfo(node_id="self", nickname="me", ipv4="100.64.0.1", ipv6="fd00::1")


def peer_info(i: int, endpoint_port: int = 51820, nick: str | None = None) -> PeerInfo:
    return PeerInfo(
        node_id=f"n{i}", nickname=nick or f"nick{i}", public_key=bytes(KEYS[i]),
        ipv4=f"100.64.0.{10 + i}", ipv6=f"fd00::{10 + i:x}", endpoints=[f"203.0.113.{10 + i}:{endpoint_port}"],
    )


peers_st = st.dictionaries(
    st.integers(0, 7),
    st.tuples(st.sampled_from([51820, 40000]), st.sampled_from(["x", "y"])),
    max_size=8,
).map(lambda d: {f"n{i}": peer_info(i, port, f"{nick}{i}") for i, (port, nick) in d.items()})

networks_st = st.dictionaries(
    st.sampled_from(["aa", "bb", "cc"]),
    st.tuples(st.booleans(), st.lists(st.sampled_from(["n0", "n1", "n2", "self"]), unique=True, max_size=4)),
    max_size=3,
).map(lambda d: {
    nid: NetworkInfo(network_id=nid, name=f"net-{nid}", owner_id="self", kind="ip", locked=locked,
                     approval="auto", members=[MemberInfo(node_id=m, nickname=m, role="member", online=True) for m in ms])
    for nid, (locked, ms) in d.items()
})

state_st = st.tuples(networks_st, peers_st, st.sampled_from(["me", "moi"]))


def full(version: int, state) -> FullView:  # noqa: ANN001
    nets, peers, nick = state
    return FullView(version=version, node=SelfInfo("self", nick, "100.64.0.1", "fd00::1"),
                    networks=sorted(nets.values(), key=lambda n: n.network_id),
                    peers=sorted(peers.values(), key=lambda p: p.node_id))


def diff(version: int, old, new) -> ViewUpdate:  # noqa: ANN001
    """The update from state `old` (version-1) to `new` (version), as a server would send it."""
    (on, op, onick), (nn, np_, nnick) = old, new
    return ViewUpdate(
        prev_version=version - 1, version=version,
        node=SelfInfo("self", nnick, "100.64.0.1", "fd00::1") if nnick != onick else None,
        networks_upsert=[n for k, n in nn.items() if on.get(k) != n],
        networks_removed=[k for k in on if k not in nn],
        peers_upsert=[p for k, p in np_.items() if op.get(k) != p],
        peers_removed=[k for k in op if k not in np_],
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(state_st, min_size=1, max_size=6), st.data())
def test_updates_equal_the_final_full_view_even_with_replays(states, data):
    updates = [diff(i, states[i - 1], states[i]) for i in range(1, len(states))]
    view = View()
    assert view.apply(full(0, states[0])) is Outcome.APPLIED
    for i, up in enumerate(updates):
        assert view.apply(up) is Outcome.APPLIED
        # a replay of anything already applied (this one included) changes nothing
        replay = data.draw(st.sampled_from(updates[: i + 1]))
        assert view.apply(replay) is Outcome.STALE
    expected = View()
    expected.apply(full(len(states) - 1, states[-1]))
    assert view.as_full_view() == expected.as_full_view()
    # applying the final full view again (idempotence) changes nothing
    assert view.apply(full(len(states) - 1, states[-1])) is Outcome.APPLIED
    assert view.as_full_view() == expected.as_full_view()


@settings(max_examples=80, deadline=None)
@given(st.lists(state_st, min_size=3, max_size=6), st.data())
def test_a_gap_asks_for_resync_and_changes_nothing(states, data):
    updates = [diff(i, states[i - 1], states[i]) for i in range(1, len(states))]
    skip = data.draw(st.integers(0, len(updates) - 2))
    view = View()
    view.apply(full(0, states[0]))
    for up in updates[:skip]:
        view.apply(up)
    before = view.as_full_view()
    assert view.apply(updates[skip + 1]) is Outcome.RESYNC
    assert view.as_full_view() == before
    view.apply(full(len(states) - 1, states[-1]))  # the resync
    assert view.version == len(states) - 1


def test_update_before_any_full_view_asks_for_resync():
    view = View()
    assert view.apply(ViewUpdate(prev_version=0, version=1)) is Outcome.RESYNC
    assert view.version is None and view.as_full_view() is None


def test_full_view_with_older_version_is_authoritative():
    view = View()
    view.apply(FullView(version=9, node=SELF, networks=[], peers=[peer_info(1)]))
    view.apply(FullView(version=2, node=SELF, networks=[], peers=[]))  # e.g. a server that restarted
    assert view.version == 2 and view.peers == {}


def test_lookups():
    view = View()
    net = NetworkInfo(network_id="aa", name="lan party", owner_id="self", kind="ip", locked=False, approval="auto", members=[])
    view.apply(FullView(version=1, node=SELF, networks=[net], peers=[peer_info(1), peer_info(2)]))
    assert view.network_by_name("lan party") is net and view.network_by_name("aa") is net
    assert view.network_by_name("nope") is None
    assert view.peer_by("n1").node_id == "n1"
    assert view.peer_by("nick2").node_id == "n2"
    assert view.peer_by("100.64.0.11").node_id == "n1"
    assert view.peer_by("fd00::c").node_id == "n2"
    assert view.peer_by("zz") is None


def test_planner_gives_one_config_per_peer_with_its_addresses():
    view = View()
    view.apply(FullView(version=1, node=SELF, networks=[], peers=[peer_info(1), peer_info(2)]))
    configs = {c.public_key: c for c in PeerPlanner(OWN.public_key()).configs(view)}
    assert set(configs) == {KEYS[1], KEYS[2]}
    c = configs[KEYS[1]]
    assert c.allowed_ips == [ipaddress.ip_network("100.64.0.11/32"), ipaddress.ip_network("fd00::b/128"),
                             ipaddress.ip_network("fe80::53:64ff:fe40:b/128")]  # EUI-64 of 02:53:64:40:00:0b
    assert c.shoal
    assert c.endpoint == ("203.0.113.11", 51820)


def test_planner_gives_endpoints_only_when_new_or_changed():
    planner = PeerPlanner(OWN.public_key())
    view = View()
    view.apply(FullView(version=1, node=SELF, networks=[], peers=[peer_info(1)]))
    assert planner.configs(view)[0].endpoint == ("203.0.113.11", 51820)
    assert planner.configs(view)[0].endpoint is None  # unchanged: keep what the engine learned (roaming)
    view.apply(ViewUpdate(prev_version=1, version=2, peers_upsert=[peer_info(1, 40000)]))
    assert planner.configs(view)[0].endpoint == ("203.0.113.11", 40000)
    view.apply(ViewUpdate(prev_version=2, version=3, peers_removed=["n1"]))
    assert planner.configs(view) == []
    view.apply(ViewUpdate(prev_version=3, version=4, peers_upsert=[peer_info(1, 40000)]))
    assert planner.configs(view)[0].endpoint == ("203.0.113.11", 40000)  # back again: a new peer


def test_planner_skips_bad_peers_and_our_own_key():
    bad_addr = PeerInfo(node_id="b1", nickname="b", public_key=bytes(KEYS[3]), ipv4="fd00::1", ipv6="fd00::2", endpoints=[])
    own = PeerInfo(node_id="b2", nickname="me", public_key=bytes(OWN.public_key()), ipv4="100.64.0.9", ipv6="fd00::9", endpoints=[])
    garbage = PeerInfo(node_id="b3", nickname="g", public_key=bytes(KEYS[4]), ipv4="not-an-ip", ipv6="x", endpoints=[])
    view = View()
    view.apply(FullView(version=1, node=SELF, networks=[], peers=[bad_addr, own, garbage, peer_info(1)]))
    planner = PeerPlanner(OWN.public_key())
    assert [c.public_key for c in planner.configs(view)] == [KEYS[1]]
    assert planner.skipped == 3


def test_first_endpoint_skips_unusable_entries():
    assert first_endpoint(["nonsense", "example.com:1", "[fd00::1]:5", "203.0.113.1:7"]) == ("fd00::1", 5)
    assert first_endpoint([]) is None
    assert first_endpoint(["203.0.113.1:99999"]) is None


# ---------------------------------------------------------------- views in parts (issue 18 F9)


@settings(max_examples=120, deadline=None)
@given(st.lists(state_st, min_size=2, max_size=5), st.integers(250, 1500), st.data())
def test_views_in_parts_apply_whole_and_a_half_received_view_changes_nothing(states, limit, data):
    view = View()
    msgs = [full(0, states[0])] + [diff(i, states[i - 1], states[i]) for i in range(1, len(states))]
    for msg in msgs:
        parts = split_view(msg, limit)
        before = view.as_full_view()
        for p in parts[:-1]:
            assert view.apply(p) is Outcome.STAGED
            assert view.as_full_view() == before  # nothing of a half-received view shows
        assert view.apply(parts[-1]) is Outcome.APPLIED
    expected = View()
    expected.apply(full(len(states) - 1, states[-1]))
    assert view.as_full_view() == expected.as_full_view()


def test_peers_missing_from_the_first_part_are_not_torn_down():
    peers = [peer_info(i) for i in range(8)]
    view, planner = View(), PeerPlanner(OWN.public_key())
    view.apply(FullView(version=1, node=SELF, networks=[], peers=peers))
    held = {c.public_key for c in planner.configs(view)}
    parts = split_view(FullView(version=2, node=SELF, networks=[], peers=peers), limit=600)
    assert len(parts) >= 3 and len(parts[0].peers) < len(peers)
    assert view.apply(parts[0]) is Outcome.STAGED
    assert view.apply(parts[1]) is Outcome.STAGED
    assert {c.public_key for c in planner.configs(view)} == held and view.version == 1
    # the session ends here; the next one starts with a whole FullView
    assert view.apply(FullView(version=2, node=SELF, networks=[], peers=peers[:3])) is Outcome.APPLIED
    assert set(view.peers) == {"n0", "n1", "n2"}


def test_a_part_out_of_sequence_asks_for_resync_and_changes_nothing():
    peers = [peer_info(i) for i in range(8)]
    view = View()
    view.apply(FullView(version=1, node=SELF, networks=[], peers=peers[:2]))
    before = view.as_full_view()
    parts = split_view(FullView(version=2, node=SELF, networks=[], peers=peers), limit=600)
    assert view.apply(parts[1]) is Outcome.RESYNC  # a continuation without its first part
    assert view.apply(parts[0]) is Outcome.STAGED
    assert view.apply(ViewUpdate(prev_version=1, version=2)) is Outcome.RESYNC  # not a part: staging dropped
    assert view.apply(parts[-1]) is Outcome.STAGED  # the rest of the dropped message: ignored, no 2nd resync
    assert view.as_full_view() == before and not view.parts.staged


def test_first_endpoint_never_resolves_names_and_skips_unusable_addresses(monkeypatch):
    import socket

    def no_lookup(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("a name from the server was resolved")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    assert first_endpoint(["localhost:1", "1.2.3.4:²", "127.0.0.1:5", "[ff02::1]:5", "203.0.113.1:7"]) == ("203.0.113.1", 7)
