"""shoal.lab: a virtual internet of network namespaces with real NAT routers (root only).

Public API (see docs/lab.md):

    from shoal.lab import Lab, Topology, HostSpec
    with Lab(Topology(clients=[HostSpec("a"), HostSpec("b", nat="symmetric")])) as lab:
        lab.host("a").exec(["ping", "-c1", lab.server.addrs[0]])

Modules: topology (requests, validation, address plan), lab (build/teardown, Host, faults),
nat (nftables rulesets), runs (names, leftovers, sweeping), delay (userspace delay element),
probe (UDP probe programs run inside namespaces), selftest (measured NAT behaviour table),
demo, cli (`python -m shoal.lab`); the product inside the lab: mesh (a real `shoal server`
and `shoal daemon`s in lab hosts), matrix (the connectivity matrix plan and measurements),
productdemo (`make demo`'s steps).
"""

from .lab import Host, Lab, LabError
from .topology import NAT_TYPES, HostSpec, LabConfigError, Topology

__all__ = ["Host", "HostSpec", "Lab", "LabConfigError", "LabError", "NAT_TYPES", "Topology"]
