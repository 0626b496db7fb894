"""Tests of shoal.server.stunlistener on loopback: real UDP sockets on 127.0.0.1/127.0.0.2,
replies leave from the endpoint CHANGE-REQUEST asks for, garbage is counted, a taken port
turns STUN off without stopping the server, and the default STUN addresses."""

from __future__ import annotations

import asyncio
import socket

import pytest

from shoal.nat import stun
from shoal.nat.responder import StunResponder
from shoal.server.stunlistener import StunListener, default_stun_addresses, run_with_stun

A1, A2 = "127.0.0.1", "127.0.0.2"


def free_port_pair() -> tuple[int, int]:
    """Two consecutive UDP ports free on both loopback addresses (probed, then released)."""
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((A1, 0))
        p = s.getsockname()[1]
        s.close()
        if p >= 65535:
            continue
        socks = []
        try:
            for a in (A1, A2):
                for q in (p, p + 1):
                    t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    socks.append(t)
                    t.bind((a, q))
            return p, p + 1
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no free port pair")


def test_default_stun_addresses() -> None:
    assert default_stun_addresses("192.0.2.1", ["192.0.2.1", "192.0.2.2", "198.51.100.1"]) == ["192.0.2.1", "192.0.2.2"]
    assert default_stun_addresses("0.0.0.0", ["192.0.2.1", "192.0.2.2"]) == ["192.0.2.1", "192.0.2.2"]
    assert default_stun_addresses("0.0.0.0", []) == ["127.0.0.1"]
    assert default_stun_addresses("127.0.0.1", ["192.0.2.1"]) == ["127.0.0.1"]  # a test server stays on loopback
    assert default_stun_addresses("192.0.2.1", ["2001:db8::1"]) == ["192.0.2.1"]
    assert default_stun_addresses("::", ["2001:db8::1", "2001:db8::2"]) == ["2001:db8::1", "2001:db8::2"]


async def _ask(sock: socket.socket, data: bytes, dst: tuple[str, int]) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    sock.sendto(data, dst)
    return await asyncio.wait_for(loop.sock_recvfrom(sock, 4096), 2.0)  # type: ignore[return-value]


async def test_listener_answers_from_the_asked_endpoint() -> None:
    p1, p2 = free_port_pair()
    listener = StunListener(StunResponder([A1, A2], [p1, p2]))
    await listener.start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind((A1, 0))
    client.setblocking(False)
    me = client.getsockname()
    try:
        data, src = await _ask(client, stun.binding_request(b"a" * 12), (A1, p1))
        m = stun.decode(data)
        assert src == (A1, p1) and m.xor_mapped_address() == me and m.other_address() == (A2, p2)
        data, src = await _ask(client, stun.binding_request(b"b" * 12, change_ip=True, change_port=True), (A1, p1))
        assert src == (A2, p2) and stun.decode(data).response_origin() == (A2, p2)
        data, src = await _ask(client, stun.binding_request(b"c" * 12, change_port=True), (A2, p1))
        assert src == (A2, p2)
        client.sendto(b"\x00garbage", (A1, p1))
        data, src = await _ask(client, stun.binding_request(b"d" * 12), (A2, p2))  # still alive
        assert src == (A2, p2) and stun.decode(data).transaction_id == b"d" * 12
        assert listener.stats["received"] == 5 and listener.stats["sent"] == 4
        assert listener.responder.stats["dropped:not-stun"] == 1
    finally:
        client.close()
        listener.close()
    assert listener.transports == {}


async def test_taken_port_turns_stun_off_but_the_server_runs() -> None:
    p1, p2 = free_port_pair()
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind((A2, p2))
    reports: list[str] = []
    ran = asyncio.Event()

    async def main() -> None:
        ran.set()

    try:
        await run_with_stun(main(), StunResponder([A1, A2], [p1, p2]), reports.append)
    finally:
        squatter.close()
    assert ran.is_set() and len(reports) == 1 and reports[0].startswith("STUN is off")
    assert f"{A2}:{p2}" in reports[0]
    # nothing stayed bound: the same endpoints can be bound again
    listener = StunListener(StunResponder([A1, A2], [p1, p2]))
    await listener.start()
    listener.close()
    await asyncio.sleep(0)


async def test_run_with_stun_reports_and_releases() -> None:
    p1, p2 = free_port_pair()
    reports: list[str] = []
    seen: list[int] = []

    async def main() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        try:
            data, _ = await _ask(s, stun.binding_request(b"e" * 12), (A1, p1))
            seen.append(len(data))
        finally:
            s.close()

    await run_with_stun(main(), StunResponder([A1], [p1]), reports.append)
    assert seen and reports == [f"STUN on UDP {A1}:{p1} (one address or port: no RFC 5780 behaviour discovery)"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((A1, p1))  # released


@pytest.mark.parametrize("argv", [["--stun-addr", "127.0.0.1", "--stun-addr", "127.0.0.1"], ["--stun-addr", "nonsense"]])
def test_server_cli_refuses_bad_stun_options(argv: list[str], tmp_path) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from shoal.cli.main import app

    r = CliRunner().invoke(app, ["server", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0", *argv])
    assert r.exit_code == 2 and "STUN" in r.output
