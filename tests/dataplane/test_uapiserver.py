"""`shoal.dataplane.uapiserver`: requests framed by an empty line, several per connection, an
oversized one refused with errno=7, the socket file private and removed on close, and a
socket that answers reported as `AlreadyUp` (a stale file is removed)."""

from __future__ import annotations

import asyncio
import socket
import stat

import pytest

from shoal.dataplane import uapi
from shoal.dataplane.uapiserver import AlreadyUp, UapiServer


async def test_requests_are_handled_in_turn_and_the_socket_is_private(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "run" / "wg0.sock"
    seen: list[str] = []
    server = UapiServer(path, lambda text: seen.append(text) or f"n={len(seen)}\nerrno=0\n\n")
    await server.check_free()
    await server.start()
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(b"get=1\n\n")
    assert await reader.readuntil(b"\n\n") == b"n=1\nerrno=0\n\n"
    writer.write(b"set=1\nlisten_port=5\n")
    writer.write(b"\n")
    assert await reader.readuntil(b"\n\n") == b"n=2\nerrno=0\n\n"
    writer.close()
    assert seen == ["get=1\n\n", "set=1\nlisten_port=5\n\n"]
    with pytest.raises(AlreadyUp):
        await UapiServer(path, lambda t: "").check_free()
    server.close()
    assert not path.exists()


async def test_an_oversized_request_is_refused(tmp_path) -> None:  # noqa: ANN001
    server = UapiServer(tmp_path / "wg0.sock", lambda text: "errno=0\n\n")
    await server.start()
    reader, writer = await asyncio.open_unix_connection(str(tmp_path / "wg0.sock"))
    writer.write(b"x" * (uapi.MAX_REQUEST_BYTES + 1))
    assert await reader.read() == b"errno=7\n\n"
    server.close()


async def test_a_stale_socket_file_is_removed(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "wg0.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # bound, never listening: nobody answers
    await UapiServer(path, lambda t: "").check_free()
    assert not path.exists()
