"""Deterministic simulation tier, shipped as part of the product (DESIGN.md, "trio").

`clock`: a fake clock and a scheduler that drives sans-IO engines by their deadlines.
`fakenet`: an in-memory UDP internet with hosts, sockets, RFC 4787 NAT routers and seeded
lossy links. Whole meshes run in one process, deterministically, with no root and no I/O.
`plane`: `MemoryPlane`, a `shoal.dataplane.api.DataPlane` over a real engine with no I/O.
`controlclient`: `ControlClient`, a control-plane-only node (real WebSocket + Noise session)
for the server's tests and the control benchmark; `viewmirror`: its view, kept with the
daemon's own applier (`shoal.daemon.view.View`).
`tls`: throwaway self-signed certificates made by openssl(1) for HTTPS tests.
"""

from shoal.testing.clock import FakeClock, Scheduler
from shoal.testing.fakenet import (
    Datagram,
    Dependence,
    FakeNetwork,
    FakeSocket,
    Host,
    LinkProfile,
    NatBehavior,
    NatRouter,
    Segment,
)

__all__ = [
    "FakeClock",
    "Scheduler",
    "Datagram",
    "Dependence",
    "FakeNetwork",
    "FakeSocket",
    "Host",
    "LinkProfile",
    "NatBehavior",
    "NatRouter",
    "Segment",
]
