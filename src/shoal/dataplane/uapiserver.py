"""The UAPI listener of a running interface: the unix socket `IFACE.sock` stock `wg` talks to.

Owns the socket file and the request framing; what a request does is the caller's `handle`
(the runtime's: `shoal.dataplane.uapi.handle` on its engine). Framing (shoal.dataplane.uapi has
the protocol): a request ends with an empty line; one connection may carry several requests
in turn; a request longer than uapi.MAX_REQUEST_BYTES is answered `errno=7` (E2BIG) and the
connection closed.

Lifecycle: `check_free()` before anything else (a socket that answers means the interface is
up already: SetupError-worthy, raised as `AlreadyUp`; a stale file is removed), `await start()`
creates the directory (0755) and the socket (0600, via umask), `close()` stops listening and
removes the file. The runtime makes one only when it has a UAPI directory (a simulated node
has none).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from shoal.dataplane import uapi

__all__ = ["AlreadyUp", "UapiServer"]


class AlreadyUp(RuntimeError):
    """Another process answers on the socket: the interface is up already."""


class UapiServer:
    """See the module docstring. `handle(request_text) -> response_text`."""

    def __init__(self, path: Path, handle: Callable[[str], str]) -> None:
        self.path = path
        self.handle = handle
        self._server: asyncio.AbstractServer | None = None

    async def check_free(self) -> None:
        if not self.path.exists():
            return
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_unix_connection(str(self.path))
            w.close()
            raise AlreadyUp(f"UAPI socket {self.path} answers")
        self.path.unlink(missing_ok=True)

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        old_umask = os.umask(0o077)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old_umask)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = bytearray()
                while not request.endswith(b"\n\n"):
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    request += chunk
                    if len(request) > uapi.MAX_REQUEST_BYTES:
                        writer.write(b"errno=7\n\n")
                        return
                response = self.handle(request.decode("utf-8", "replace"))
                writer.write(response.encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
