"""The node daemon (`shoal daemon`): control connection, view reconciliation, data plane, local API.

Modules, from the pure core outwards:

    identity   node key file (0600, made on first start), the pinned server (server.json)
    view       sans-IO view reconciler: FullView/ViewUpdate -> state + version, resync needs,
               and the WireGuard peer set the view asks for
    backoff    reconnect delays (exponential with jitter), pure
    localapi   the local API's HTTP/1.1 framing over a unix socket (sans-IO parser), peer
               credential rule, and the client the CLI uses
    icmp       overlay ping: ICMP echo build/parse (pure) + a small raw-socket pinger
    daemon     the asyncio glue: one Daemon owns the interface (shoal.dataplane.runtime.WgInterface),
               the control connection (shoal.control.transport) and the API server
"""
