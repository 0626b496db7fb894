"""Who may use the relay: the one relay-authorisation rule (issue 12 point 4).

Owns `may_relay`, the rule both membership oracles apply: the server core in process
(`shoal.server.core.Core.may_relay`, and `Core.is_peer` for views) and the standalone relay
(`shoal.relay.service.StoreMembership`, over the server's SQLite store). Pure: no I/O, no
clock, no import of the server, so both sides import it without a cycle.

The rule: (a, b) may relay when they are two different nodes, both *present*, and some
network has both as approved (not pending), online members. Inputs, per node:

    present          whether the node is present (logged in, or inside its presence grace)
    online_networks  the ids of the networks where it is an approved member that set itself
                     online (presence is not folded in here; the rule checks it)

What each caller can know about presence: the core knows it exactly (its in-memory present
set, grace included). The standalone relay only sees the store: `nodes.present`, which the
server writes through whenever a node becomes or stops being present (a node in its grace
is still stored as present, so the two agree), read at most RELAY_MEMBERSHIP_REFRESH seconds
late. After a server crash the stored flags are the last ones written; the restarted server
gives those nodes the grace, so the relay's answer is the server's again until it expires.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Set
from typing import TypeVar

__all__ = ["may_relay"]

K = TypeVar("K", bound=Hashable)


def may_relay(a: K, b: K, present: Callable[[K], bool], online_networks: Callable[[K], Set[str]]) -> bool:
    """True when a and b are two present nodes sharing a network where both are approved and online."""
    if a == b or not present(a) or not present(b):
        return False
    return not online_networks(a).isdisjoint(online_networks(b))
