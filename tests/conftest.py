"""Shared fixtures.

`lab_mesh`: a context-manager factory for the lab tests that need a few public hosts, a real
`shoal server` and a real `shoal daemon` per host (shoal.lab.mesh):

    with lab_mesh({"a": "alice", "b": "bob"}, login=("a", "b")) as mesh:
        ...

builds the lab, starts the server and the daemons (nickname per host), logs in the hosts in
`login` with the pinned server key (the others are left to the test, e.g. trust on first
use), prints every process's log tail if the body fails, and stops and removes everything.
Use it from a module-scoped fixture that adds the test's networks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest


@contextmanager
def _lab_mesh(hosts: dict[str, str], login: Iterable[str] | None = None, **mesh_kw: Any) -> Iterator[Any]:
    from shoal.lab import HostSpec, Lab, Topology
    from shoal.lab.mesh import Mesh

    with Lab(Topology(clients=[HostSpec(h) for h in hosts])) as lab:
        m = Mesh(lab, **mesh_kw)
        try:
            m.server.start()
            key = m.server.key()
            for host, nick in hosts.items():
                m.add_node(host, nick)
            for host in hosts if login is None else login:
                m.nodes[host].cli("login", m.server.url, "--server-key", key)
            yield m
        except BaseException:
            print(m.logs())
            raise
        finally:
            m.close()


@pytest.fixture(scope="session")
def lab_mesh() -> Callable[..., AbstractContextManager[Any]]:
    return _lab_mesh
