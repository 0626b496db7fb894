"""MAC learning for layer-2 networks: which member a unicast frame must go to (sans-IO).

Like a switch's forwarding table, one per network: the source MAC of every frame is learned
against the *port* it came from (a peer's node id, or LOCAL for frames this node's own
interface wrote), and a frame to a unicast MAC goes only to the port that MAC was last seen
on. Unknown, expired, broadcast and multicast destinations are flooded by the caller.

Rules of `learn(network, mac, port, now)` (result in the "verdict" column):

    condition                                         effect                          verdict
    ------------------------------------------------  ------------------------------  ---------
    mac is a group address (I/G bit) or all zero      nothing                         "invalid"
    not in the table                                  add (evicting if full, below)   "new"
    in the table on the same port                     refresh its time                "refresh"
    in the table on another port (live or expired)   move it there, count the move   "moved"

- An entry not refreshed for `aging` seconds is expired: `lookup` ignores it (the frame is
  flooded) and `expire(now)` removes it.
- Bounded: at most `max_per_network` entries per network and `max_total` in all; learning a
  new MAC into a full table first drops expired entries, then the least recently refreshed
  one of that network (or, for the total bound, of the whole table). Flooding is the safe
  fallback, so evicting never misdirects a frame.
- Moves are counted per network (`moves`): a MAC flapping between ports means a loop or a
  member spoofing another's MAC; the daemon logs it (a layer-2 network trusts its members
  like a switch without port security, docs/lan.md).
- `forget_port(port)` drops every entry of a member that left or went offline;
  `forget_network(network)` drops a whole table.

Owner: one table per node, mutated only by the task running the LAN engine.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable

from shoal import constants as C

LOCAL = "<local>"  # the port of frames written by this node's own interface


class MacTable:
    def __init__(self, aging: float = C.LAN_MAC_AGING, max_per_network: int = C.LAN_MAC_MAX_PER_NETWORK,
                 max_total: int = C.LAN_MAC_MAX_TOTAL) -> None:
        if aging <= 0 or max_per_network < 1 or max_total < 1:
            raise ValueError("need aging > 0 and positive bounds")
        self.aging = aging
        self.max_per_network = max_per_network
        self.max_total = max_total
        # network -> mac -> (port, last seen); ordered by last refresh (oldest first)
        self._tables: dict[Hashable, OrderedDict[bytes, tuple[Hashable, float]]] = {}
        self._total = 0
        self.moves: Counter[Hashable] = Counter()
        self.stats: Counter[str] = Counter()

    def __len__(self) -> int:
        return self._total

    def learn(self, network: Hashable, mac: bytes, port: Hashable, now: float) -> str:
        mac = bytes(mac)
        if len(mac) != 6 or mac[0] & 1 or mac == bytes(6):
            self.stats["invalid"] += 1
            return "invalid"
        table = self._tables.get(network)
        if table is None:
            table = self._tables[network] = OrderedDict()
        entry = table.get(mac)
        if entry is not None:
            table.move_to_end(mac)
            table[mac] = (port, now)
            if entry[0] == port:
                return "refresh"
            self.moves[network] += 1
            self.stats["moved"] += 1
            return "moved"
        if len(table) >= self.max_per_network:
            self._expire_table(network, table, now)
            while len(table) >= self.max_per_network:
                table.popitem(last=False)
                self._total -= 1
                self.stats["evicted"] += 1
        if self._total >= self.max_total:
            self.expire(now)
            while self._total >= self.max_total:
                self._evict_oldest()
        table[mac] = (port, now)
        self._tables[network] = table  # expiry above may have dropped it while empty
        self._total += 1
        self.stats["new"] += 1
        return "new"

    def lookup(self, network: Hashable, mac: bytes, now: float) -> Hashable | None:
        """The port `mac` was last seen on in `network`, or None (unknown or expired: flood)."""
        table = self._tables.get(network)
        if table is None:
            return None
        entry = table.get(bytes(mac))
        if entry is None or now - entry[1] >= self.aging:
            return None
        return entry[0]

    def expire(self, now: float) -> int:
        """Remove every expired entry; returns how many."""
        removed = 0
        for network, table in list(self._tables.items()):
            removed += self._expire_table(network, table, now)
        return removed

    def _expire_table(self, network: Hashable, table: OrderedDict[bytes, tuple[Hashable, float]], now: float) -> int:
        removed = 0
        while table:
            mac, (_port, seen) = next(iter(table.items()))
            if now - seen < self.aging:
                break
            del table[mac]
            removed += 1
        self._total -= removed
        self.stats["expired"] += removed
        if not table:
            del self._tables[network]
        return removed

    def _evict_oldest(self) -> None:
        oldest_net, oldest_time = None, float("inf")
        for network, table in self._tables.items():
            if table:
                seen = next(iter(table.values()))[1]
                if seen < oldest_time:
                    oldest_net, oldest_time = network, seen
        table = self._tables[oldest_net]
        table.popitem(last=False)
        self._total -= 1
        self.stats["evicted"] += 1
        if not table:
            del self._tables[oldest_net]

    def forget_port(self, port: Hashable) -> None:
        for network, table in list(self._tables.items()):
            for mac in [m for m, (p, _t) in table.items() if p == port]:
                del table[mac]
                self._total -= 1
            if not table:
                del self._tables[network]

    def forget_network(self, network: Hashable) -> None:
        table = self._tables.pop(network, None)
        if table is not None:
            self._total -= len(table)

    def networks(self) -> list[Hashable]:
        """The networks that have a table."""
        return list(self._tables)

    def entries(self, network: Hashable) -> dict[bytes, tuple[Hashable, float]]:
        """A copy of one network's table: mac -> (port, last seen)."""
        return dict(self._tables.get(network, {}))
