"""MAC learning for layer-2 networks: which member a unicast frame must go to (sans-IO).

Like a switch's forwarding table, one per network: the source MAC of every frame is learned
against the *port* it came from (a peer's node id, or LOCAL for frames this node's own
interface wrote), and a frame to a unicast MAC goes only to the port that MAC was last seen
on. Unknown, expired, broadcast and multicast destinations are flooded by the caller.

Rules of `learn(network, mac, port, now)` (result in the "verdict" column):

    condition                                         effect                          verdict
    ------------------------------------------------  ------------------------------  ---------
    mac is a group address (I/G bit) or all zero      nothing                         "invalid"
    port is a peer and mac is pinned as ours          nothing, counted                "claimed"
    not in the table                                  add (evicting if full, below)   "new"
    in the table on the same port                     refresh its time                "refresh"
    on another port, expired, or port is LOCAL        move it there, count the move   "moved"
    on another port, live, and port is a peer         nothing, counted                "claimed"

Port binding (issue 18 F16): a MAC belongs to the port it was first learned on while that
entry is live, so a member cannot claim another member's MAC (or one of ours) to steal its
unicast frames; the caller drops a frame whose source MAC is "claimed". Legitimate moves
still work: after the old entry has aged out (`aging`, C.LAN_MAC_AGING: a VM that moved
stops refreshing it on its old port), when the old member left or went offline
(`forget_port`, `retain`), and always towards LOCAL (our own interface is authoritative).
MACs pinned with `pin_local` (this node's own interface MACs) are never learned from a peer.

- An entry not refreshed for `aging` seconds is expired: `lookup` ignores it (the frame is
  flooded) and `expire(now)` removes it.
- Bounded: at most `max_per_network` entries per network and `max_total` in all; learning a
  new MAC into a full table first drops expired entries, then the least recently refreshed
  one of that network (or, for the total bound, of the whole table). Flooding is the safe
  fallback, so evicting never misdirects a frame.
- Moves are counted per network (`moves`), refused claims in `stats["claimed"]`: either
  means a loop, a VM that moved, or a member spoofing another's MAC; the daemon logs them
  (docs/lan.md, trust model).
- `forget_port(port)` drops every entry of a member that left or went offline;
  `retain(network, ports)` drops the entries of one network whose peer port is not in
  `ports` (members that left it or went offline); `forget_network(network)` drops a table.

Owner: one table per node, mutated only by the task running the LAN engine.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Collection, Hashable

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
        self._pinned: set[bytes] = set()  # this node's own MACs: never learned from a peer

    def pin_local(self, mac: bytes) -> None:
        """`mac` is one of this node's own interface MACs (in every network)."""
        self._pinned.add(bytes(mac))

    def __len__(self) -> int:
        return self._total

    def learn(self, network: Hashable, mac: bytes, port: Hashable, now: float) -> str:
        mac = bytes(mac)
        if len(mac) != 6 or mac[0] & 1 or mac == bytes(6):
            self.stats["invalid"] += 1
            return "invalid"
        if port != LOCAL and mac in self._pinned:
            self.stats["claimed"] += 1
            return "claimed"
        table = self._tables.get(network)
        if table is None:
            table = self._tables[network] = OrderedDict()
        entry = table.get(mac)
        if entry is not None:
            if entry[0] != port and port != LOCAL and now - entry[1] < self.aging:
                self.stats["claimed"] += 1  # bound to another live port: refused
                return "claimed"
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

    def retain(self, network: Hashable, ports: Collection[Hashable]) -> None:
        """Drop `network`'s entries learned on a peer port that is not in `ports`."""
        table = self._tables.get(network)
        if table is None:
            return
        for mac in [m for m, (p, _t) in table.items() if p != LOCAL and p not in ports]:
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
