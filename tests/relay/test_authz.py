"""The one relay-authorisation rule (`shoal.relay.authz`), and its two callers agreeing: the
server core (in-process relay) and the standalone relay's store oracle, built from the same
records, answer every pair alike."""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path

from shoal.relay.authz import may_relay
from shoal.relay.service import StoreMembership
from shoal.server.core import Core, MemberRec, NetworkRec, NodeRec, PutMember, PutNetwork, PutNode
from shoal.server.store import DB_NAME, Store
from shoal.wireguard.keys import PrivateKey

ULA = ipaddress.IPv6Network("fd00:1:2::/48")


def test_rule() -> None:
    present = {"a", "b", "c", "d"}.__contains__
    nets = {"a": {"n1"}, "b": {"n1", "n2"}, "c": {"n2"}, "d": set(), "e": {"n1"}}
    rule = lambda x, y: may_relay(x, y, present, nets.__getitem__)  # noqa: E731
    assert rule("a", "b") and rule("b", "a") and rule("b", "c")
    assert not rule("a", "c")  # no common network
    assert not rule("a", "a")  # never itself
    assert not rule("a", "d")  # d is online nowhere
    assert not rule("a", "e") and not rule("e", "a")  # e is not present


def _records() -> tuple[list[NodeRec], list[NetworkRec], list[MemberRec]]:
    """Every case of the rule: absent nodes, pending and offline members, two networks."""
    nodes = []
    for i, present in enumerate([True, True, True, True, False, True, True]):
        key = PrivateKey.from_seed(bytes([i + 1]) * 32).public_key()
        nodes.append(NodeRec(f"node{i}", key, f"n{i}", f"100.64.1.{i + 1}", f"fd00:1:2::{i + 1}", present=present))
    networks = [NetworkRec("net1", "one", "node0", "x"), NetworkRec("net2", "two", "node2", "x")]
    members = [
        MemberRec("net1", "node0", "owner"), MemberRec("net1", "node1", "member"),
        MemberRec("net1", "node2", "member", pending=True), MemberRec("net1", "node4", "member"),
        MemberRec("net2", "node2", "owner"), MemberRec("net2", "node3", "member", online=False),
        MemberRec("net2", "node5", "member"), MemberRec("net1", "node5", "member", online=False),
    ]
    return nodes, networks, members


async def test_core_and_store_oracle_agree_on_every_pair(tmp_path: Path) -> None:
    nodes, networks, members = _records()
    store = await Store.open(tmp_path)
    await store.apply([*map(PutNode, nodes), *map(PutNetwork, networks), *map(PutMember, members)])
    await store.close()
    core = Core.from_state(ULA, nodes, networks, members, [], now=0.0)
    oracle = StoreMembership(tmp_path / DB_NAME)
    oracle.refresh()
    keys = [bytes(n.public_key) for n in nodes] + [bytes(PrivateKey.from_seed(b"s" * 32).public_key())]
    answers = {(a, b): core.may_relay(a, b) for a, b in itertools.product(keys, repeat=2)}
    assert answers == {(a, b): oracle(a, b) for a, b in itertools.product(keys, repeat=2)}
    allowed = {(keys.index(a), keys.index(b)) for (a, b), ok in answers.items() if ok}
    assert allowed == {(0, 1), (1, 0), (2, 5), (5, 2)}  # the cases are not all "no"
    oracle.close()
