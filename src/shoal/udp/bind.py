"""The UDP seam: what the glue may do with a UDP socket (`Bind`), and the real one (`UdpBind`).

Owns: `Bind`, the protocol the interface runtime (`shoal.dataplane.runtime`) and NAT
traversal's birthday sockets (`shoal.daemon.traversal`) use instead of a socket and
`loop.add_reader`; `BindFactory`, how they open one; `UdpBind`/`open_udp`, the production
implementation over `shoal.udp.socket.UdpSocket` (GRO/GSO batches) on an asyncio loop.
The simulation tier ships an in-memory one on its fake network (`shoal.testing`).

Contract (pull style, so the hot path is the same batched loop for real and fake sockets):
    port                      the bound local port
    set_reader(callback)      `callback()` runs on the loop whenever datagrams may be
                              waiting (level-triggered: it runs again while some are left);
                              None stops it. At most one reader.
    recv_batch(n)             up to n waiting datagrams `(bytes, (host, port))`, [] when none
    send_batch(datagrams)     send them in order; network errors are counted, never raised
    close()                   stops the reader and releases the port; idempotent
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from shoal.endpoint import Endpoint
from shoal.udp.socket import UdpSocket

__all__ = ["Bind", "BindFactory", "UdpBind", "open_udp"]


class Bind(Protocol):
    """A bound UDP socket as the glue uses it (module docstring)."""

    port: int

    def set_reader(self, callback: Callable[[], None] | None) -> None: ...
    def recv_batch(self, max_datagrams: int = 128) -> list[tuple[bytes, Endpoint]]: ...
    def send_batch(self, datagrams: list[tuple[bytes, Endpoint]]) -> None: ...
    def close(self) -> None: ...


class BindFactory(Protocol):
    """Opens a Bind on `port` (0: any) of `host` (an IPv6 address; "::" is dual-stack and
    takes IPv4 too); raises OSError as socket.bind does (e.g. the port is taken)."""

    def __call__(self, port: int = 0, *, host: str = "::") -> Bind: ...


class UdpBind:
    """A `UdpSocket` read through the loop's readiness callbacks."""

    def __init__(self, sock: UdpSocket, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.sock = sock
        self.port = sock.port
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._reading = False
        self._closed = False

    @property
    def stats(self) -> dict[str, int]:
        return self.sock.stats

    def set_reader(self, callback: Callable[[], None] | None) -> None:
        if self._closed:
            return
        if self._reading:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False
        if callback is not None:
            self._loop.add_reader(self.sock.fileno(), callback)
            self._reading = True

    def recv_batch(self, max_datagrams: int = 128) -> list[tuple[bytes, Endpoint]]:
        return self.sock.recv_batch(max_datagrams)

    def send_batch(self, datagrams: list[tuple[bytes, Endpoint]]) -> None:
        self.sock.send_batch(datagrams)

    def close(self) -> None:
        if self._closed:
            return
        self.set_reader(None)
        self._closed = True
        self.sock.close()


def open_udp(port: int = 0, *, host: str = "::") -> UdpBind:
    """The production `BindFactory` (call on the loop's thread)."""
    return UdpBind(UdpSocket(port, host=host))
