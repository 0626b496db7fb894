"""Local API framing: the request parser (incremental, limits, fuzz) and the access rule."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.daemon.localapi import (
    MAX_BODY_BYTES, MAX_HEADER_BYTES, ApiServer, HttpError, RequestParser, authorized, response_bytes,
)


def test_request_in_pieces():
    raw = b'POST /v1/login?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{"server": "a:1"}   '
    p = RequestParser()
    for i in range(len(raw) - 1):
        assert p.feed(raw[i:i + 1]) is None
    req = p.feed(raw[-1:])
    assert (req.method, req.path, req.body) == ("POST", "/v1/login", {"server": "a:1"})


def test_get_without_body():
    req = RequestParser().feed(b"GET /v1/status HTTP/1.1\r\n\r\n")
    assert req is not None and req.body == {}


@pytest.mark.parametrize("raw,status", [
    (b"GET /v1/status\r\n\r\n", 400),
    (b"DELETE /v1/x HTTP/1.1\r\n\r\n", 405),
    (b"GET v1 HTTP/1.1\r\n\r\n", 400),
    (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1), 413),
    (b"POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]", 400),
    (b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\n{x}", 400),
    (b"POST /x HTTP/1.1\r\nbroken header\r\n\r\n", 400),
    (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
])
def test_bad_requests(raw, status):
    with pytest.raises(HttpError) as e:
        RequestParser().feed(raw)
    assert e.value.status == status


def test_header_flood_is_cut():
    with pytest.raises(HttpError) as e:
        RequestParser().feed(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEADER_BYTES // 6 + 10))
    assert e.value.status == 413


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 50))
def test_fuzz_only_http_errors(data, chunk):
    p = RequestParser()
    try:
        for i in range(0, len(data), chunk):
            p.feed(data[i:i + chunk])
    except HttpError:
        pass


def test_response_is_json_with_length():
    raw = response_bytes(403, {"ok": False, "code": "forbidden", "message": "no"})
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 403 Forbidden")
    assert b"Content-Length: %d" % len(body) in head
    assert json.loads(body)["code"] == "forbidden"


def test_access_rule():
    assert authorized(0, {0}, None)  # root only by default
    assert authorized(0, {1000}, 5)  # root always
    assert authorized(1000, {1000, 5}, 5)  # member of the configured --socket-group
    assert not authorized(1000, {1000}, 5)
    assert not authorized(65534, {65534}, None)


def test_gid_0_alone_is_not_root():
    """F19: without --socket-group the API is root (uid 0) only; a process whose primary or
    supplementary group is 0 is not root."""
    assert not authorized(65534, {0}, None)
    assert not authorized(65534, {65534, 0}, None)
    assert not authorized(65534, {0}, 5)


def _serve_and_connect(user: int, group: int, extra_groups: list[int], socket_group: int | None) -> str:
    """Start a real ApiServer, connect from a child process with the given credentials, return
    the status line it got."""
    async def main() -> str:
        d = Path(tempfile.mkdtemp(prefix="shoal-api-test-"))
        os.chmod(d, 0o755)
        server = ApiServer(d / "shoald.sock", {("GET", "/v1/status"): _status}, group=socket_group)
        try:
            await server.start()
            os.chmod(server.path, 0o666)  # let any process connect: the credential rule must decide
            code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
                    "s.sendall(b'GET /v1/status HTTP/1.1\\r\\n\\r\\n'); print(s.recv(4096).decode())")
            p = await asyncio.to_thread(subprocess.run, ["/usr/bin/python3", "-I", "-c", code, str(server.path)],
                                        capture_output=True, text=True, user=user, group=group,
                                        extra_groups=extra_groups, timeout=20)
            return p.stdout.split("\r\n", 1)[0] or p.stderr
        finally:
            await server.close()
            shutil.rmtree(d, ignore_errors=True)
    return asyncio.run(main())


async def _status(body: dict) -> dict:
    return {"state": "x"}


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                                reason="needs root and a system python to run a child as another user")


@needs_root
def test_real_socket_refuses_gid_0_without_socket_group():
    assert _serve_and_connect(65534, 0, [], None).startswith("HTTP/1.1 403")
    assert _serve_and_connect(65534, 65534, [0], None).startswith("HTTP/1.1 403")
    assert _serve_and_connect(0, 0, [], None).startswith("HTTP/1.1 200")


@needs_root
def test_real_socket_admits_the_socket_group_by_supplementary_groups():
    """The configured group admits by the kernel's record of the peer's groups (SO_PEERGROUPS)."""
    assert _serve_and_connect(65534, 65534, [4242], 4242).startswith("HTTP/1.1 200")
    assert _serve_and_connect(65534, 4242, [], 4242).startswith("HTTP/1.1 200")
    assert _serve_and_connect(65534, 65534, [0], 4242).startswith("HTTP/1.1 403")
