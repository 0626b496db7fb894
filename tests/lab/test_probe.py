"""Unit tests of shoal.lab.probe over loopback (no namespaces): responder + client agree."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from shoal.lab.probe import _decode, client
from shoal.lab.selftest import classify


def _free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.timeout(20)
def test_probe_on_loopback_sees_no_nat() -> None:
    p1, p2 = _free_port(), _free_port()
    resp = subprocess.Popen([sys.executable, "-m", "shoal.lab.probe", "responder",
                             "--addr", "127.0.0.1", "--addr", "127.0.0.2",
                             "--port", str(p1), "--port", str(p2)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert resp.stdout is not None and json.loads(resp.stdout.readline()) == {"ready": True}
        res = client("127.0.0.1", "127.0.0.2", p1, p2)
        assert res["udp"] and len(res["filter"]) == 3
        assert classify(res, "127.0.0.1", "127.0.0.2", p1, p2) == {
            "udp": "ok", "mapping": "none", "filtering": "open"}
        # garbage to the responder is ignored; it still answers afterwards
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"\xff" * 2000, ("127.0.0.1", p1))
        s.sendto(b'{"op": "map"}', ("127.0.0.1", p1))
        assert client("127.0.0.1", "127.0.0.2", p1, p2)["udp"]
    finally:
        resp.terminate()
        resp.wait(timeout=5)


def test_decode_is_tolerant() -> None:
    assert _decode(b"not json") is None
    assert _decode(b"[1, 2]") is None
    assert _decode(b"x" * 5000) is None
    assert _decode(b'{"id": 1}') == {"id": 1}
