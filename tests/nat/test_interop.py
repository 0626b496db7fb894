"""STUN interop with Debian's coturn, on loopback only (127.0.0.1 and 127.0.0.2, free ports):

- coturn's standard client `turnutils_stunclient -f` (RFC 5780: binding, CHANGE-REQUEST with
  RESPONSE-PORT, PADDING) prints the same report against Shoal's STUN listener as against
  coturn's own `turnserver` (addresses and ports normalised);
- Shoal's discovery client classifies loopback correctly against `turnserver`.

`turnserver` runs with its own command line (no config file, STUN only, no TLS/TCP/CLI, its
database and pid file in a temporary directory) and is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.nat.responder import StunResponder
from shoal.server.stunlistener import StunListener
from tests.server.test_stunlistener import A1, A2, free_port_pair

pytestmark = [pytest.mark.lab, pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("turnserver") is None or shutil.which("turnutils_stunclient") is None,
                                 reason="coturn is not installed (scripts/setup-system.sh)")]


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[tuple[int, int]]:
    p1, p2 = free_port_pair()
    log = open(tmp_path / "turnserver.log", "wb")
    proc = subprocess.Popen(
        ["turnserver", "-n", "--stun-only", "-L", A1, "-L", A2, "-p", str(p1), "--alt-listening-port", str(p2),
         "--no-tls", "--no-dtls", "--no-tcp", "--no-cli", "--log-file", "stdout", "--simple-log",
         "--pidfile", str(tmp_path / "turnserver.pid"), "--userdb", str(tmp_path / "turnserver.db")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while b"Total General servers" not in (tmp_path / "turnserver.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("turnserver did not start:\n" + (tmp_path / "turnserver.log").read_text(errors="replace"))
            time.sleep(0.05)
        time.sleep(0.2)
        yield p1, p2
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


async def stunclient(port: int, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec("turnutils_stunclient", *args, "-p", str(port), "-L", A1, A1,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


def normalise(text: str, p1: int, p2: int) -> list[str]:
    text = text.replace(f":{p1}", ":P1").replace(f":{p2}", ":P2")
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:CLIENT", text)
    return [line for line in text.splitlines() if "RFC 5780 response" in line or ": IPv4." in line or "rror" in line]


async def test_standard_client_sees_shoal_as_it_sees_coturn(coturn: tuple[int, int]) -> None:
    reference = normalise(await stunclient(coturn[0], "-f"), *coturn)
    p1, p2 = free_port_pair()
    listener = StunListener(StunResponder([A1, A2], [p1, p2]))
    await listener.start()
    try:
        ours = normalise(await stunclient(p1, "-f"), p1, p2)
        plain = await stunclient(p1)
    finally:
        listener.close()
    assert "RFC 5780 response 3" in "\n".join(reference) and not any("rror" in line for line in reference)
    assert ours == reference
    assert f"Other addr: : {A2}:P2" in "\n".join(ours) and "Response origin: : 127.0.0.2:P2" in "\n".join(ours)
    assert "UDP reflexive addr: 127.0.0.1:" in plain
    assert listener.responder.stats["binding:changed"] == 4  # 2 CHANGE-REQUESTs per client run, both honoured


async def test_shoal_client_against_coturn(coturn: tuple[int, int]) -> None:
    from shoal.daemon.netcheck import run_discovery

    r = await run_discovery((A1, coturn[0]))
    assert r.udp and r.other == (A2, coturn[1]) and r.software is not None and "Coturn" in r.software
    assert (r.mapping.value, r.filtering.value, r.nat_type) == ("none", "endpoint-independent", "open")
    assert r.reflexive is not None and r.reflexive[0] == A1 and r.notes == ()
