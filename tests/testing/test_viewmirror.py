"""The test mirror of a node's view (the daemon's applier underneath): views in parts are applied whole (issue 18 F9)."""

from __future__ import annotations

from shoal.control import messages as m
from shoal.testing.viewmirror import ViewMirror

SELF = m.SelfInfo(node_id="self01", nickname="me", ipv4="100.64.1.1", ipv6="fd12:3456:789a::1")


def _peer(i: int) -> m.PeerInfo:
    return m.PeerInfo(node_id=f"p{i:05d}", nickname=f"peer-{i}", public_key=i.to_bytes(32, "big"),
                      ipv4=f"100.65.0.{i}", ipv6=f"fd12:3456:789a::{i:x}",
                      endpoints=[f"203.0.113.{i}:{40000 + j}" for j in range(m.MAX_ENDPOINTS)])


def test_a_half_received_view_changes_nothing_and_the_last_part_applies_it_whole() -> None:
    mirror = ViewMirror()
    assert mirror.apply(m.FullView(version=1, node=SELF, networks=[], peers=[_peer(i) for i in range(3)]))
    before = mirror.as_full_view()
    whole = m.FullView(version=2, node=SELF, networks=[], peers=[_peer(i) for i in range(3, 40)])
    parts = m.split_view(whole, limit=2000)
    assert len(parts) > 2
    for p in parts[:-1]:
        assert mirror.apply(p) and mirror.staged
        assert mirror.as_full_view() == before and mirror.version == 1 and mirror.full_views == 1
    assert mirror.apply(parts[-1]) and not mirror.staged
    assert mirror.version == 2 and set(mirror.peers) == {p.node_id for p in whole.peers}
    assert mirror.full_views == 2


def test_a_part_out_of_sequence_asks_for_a_resync_and_changes_nothing() -> None:
    mirror = ViewMirror()
    mirror.apply(m.FullView(version=1, node=SELF, networks=[], peers=[_peer(1)]))
    before = mirror.as_full_view()
    parts = m.split_view(m.ViewUpdate(prev_version=1, version=2, peers_upsert=[_peer(i) for i in range(40)]),
                         limit=2000)
    assert not mirror.apply(parts[1])  # its first part never came
    assert mirror.apply(parts[0]) and mirror.staged
    assert not mirror.apply(m.ViewUpdate(prev_version=1, version=2))  # not a part: what was staged goes
    assert mirror.apply(parts[-1])  # the rest of the dropped message is ignored: one resync per message
    assert mirror.as_full_view() == before and mirror.resyncs_needed == 2
    for p in parts:
        assert mirror.apply(p)
    assert mirror.version == 2 and len(mirror.peers) == 40
