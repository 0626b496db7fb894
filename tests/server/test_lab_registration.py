"""Registration flood and banned-range rejoin against a real server (issue 18 F6, F5; lab,
real processes).

F6: a host on the internet ("atk", 203.0.113.0/24) logs in fresh random keys at 3 a second
(under the handshake admission rate, so only the registration limit can refuse them) while a
host on another prefix ("other", moved to 198.51.100.0/24) registers a few keys, then a
real daemon on the attacker's prefix tries `shoal login` with a new key. Before the fix every
flood key became a node (an address each, kept forever); now the first
REGISTRATION_BURST_PER_PREFIX get in, the rest get Error("registration_limited") and close
4004, the other prefix is not affected, and the daemon's user gets the reason in one line.

F5: a member banned from a network makes a new key (a new daemon state dir on the same
host) and joins again: the join is held as pending and the owner's `shoal list` says why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shoal.constants import REGISTRATION_BURST_PER_PREFIX
from shoal.lab.mesh import Mesh
from shoal.lab import HostSpec, Lab, Topology

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.timeout(180),
]

FLOOD_RATE, FLOOD_COUNT = 3.0, 60

_REGISTER = r"""
import asyncio, json, sys, time
from shoal.control import messages as m
from shoal.control.transport import ConnectionClosed, TransportError, connect
from shoal.wireguard.keys import PrivateKey, PublicKey
url, server_b64, rate, count = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
server = PublicKey.from_base64(server_b64)
st = {"registered": 0, "refused": 0, "closes": {}, "codes": {}, "other": 0, "reason": ""}

async def one() -> None:
    try:
        conn = await connect(url, PrivateKey.generate(), server, timeout=5)
    except TransportError as e:
        st["other"] += 1
        st["reason"] = str(e)
        return
    try:
        await conn.send(m.Login())
        first = await asyncio.wait_for(conn.recv(), 5)
        if isinstance(first, m.LoginOk):
            st["registered"] += 1
            return
        st["refused"] += 1
        st["codes"][first.code] = st["codes"].get(first.code, 0) + 1
        st["reason"] = first.message
        try:
            await asyncio.wait_for(conn.recv(), 5)
        except ConnectionClosed as e:
            st["closes"][str(e.code)] = st["closes"].get(str(e.code), 0) + 1
    finally:
        await conn.close()

async def main() -> None:
    t0 = time.monotonic()
    for i in range(count):
        await one()
        delay = t0 + (i + 1) / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    st["seconds"] = round(time.monotonic() - t0, 1)

asyncio.run(main())
print(json.dumps(st))
"""


def _register(mesh: Mesh, host: str, key: str, rate: float, count: int) -> dict:
    url = mesh.server.url.replace("http://", "ws://") + "/control"
    p = mesh.lab.host(host).exec([sys.executable, "-c", _REGISTER, url, key, str(rate), str(count)],
                                 capture_output=True, text=True, timeout=count / rate + 60)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_registration_flood_from_one_prefix_is_refused_and_others_register() -> None:
    with Lab(Topology(clients=[HostSpec("atk"), HostSpec("other")])) as lab:
        mesh = Mesh(lab)
        try:
            other_addr = lab.roam("other", "198.51.100.10")
            mesh.server.start()
            key = mesh.server.key()
            flood = _register(mesh, "atk", key, FLOOD_RATE, FLOOD_COUNT)
            print(f"\nflood from {lab.host('atk').addr}: {flood}")
            other = _register(mesh, "other", key, 5.0, 5)
            print(f"other prefix ({other_addr}): {other}")
            node = mesh.add_node("atk", "late")
            p = node.cli("login", mesh.server.url, "--server-key", key, check=False)
            print(f"shoal login from the flooded prefix: rc {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}")
            # only the registration limit refused (no handshake refusals), from the burst on
            assert flood["other"] == 0, flood
            assert REGISTRATION_BURST_PER_PREFIX <= flood["registered"] <= REGISTRATION_BURST_PER_PREFIX + 3, flood
            assert flood["refused"] == FLOOD_COUNT - flood["registered"], flood
            assert flood["codes"] == {"registration_limited": flood["refused"]}, flood
            assert flood["closes"] == {"4004": flood["refused"]}, flood
            assert other["registered"] == 5, other
            assert p.returncode != 0 and "too many new nodes" in (p.stderr + p.stdout), p
        except BaseException:
            print(mesh.logs())
            raise
        finally:
            mesh.close()


def test_banned_member_with_a_new_key_waits_for_the_owner() -> None:
    """F5 with real daemons: "bad" (198.51.100.20) is evicted with a ban, makes a new key (a new
    daemon state dir on the same host) and joins again: held as pending, and the owner's
    `shoal list --json` shows why; "good" (the owner's /24) still joins directly."""
    from shoal.lab.mesh import NodeProc

    topo = Topology(clients=[HostSpec("own"), HostSpec("bad"), HostSpec("good")])
    with Lab(topo) as lab:
        mesh = Mesh(lab)
        try:
            lab.roam("bad", "198.51.100.20")
            own, bad = mesh.joined("own", "bad", network="club", password="pw-club-1")
            bad_id = bad.node_id
            own.cli("evict", "club", bad_id, "--ban")
            bad.stop()
            again = NodeProc(lab.host("bad"), mesh.dir / "bad-new-key", "bad2")
            mesh.nodes["bad2"] = again.start()
            key = mesh.server.key()
            again.cli("login", mesh.server.url, "--server-key", key)
            assert again.node_id != bad_id
            p = again.cli("join", "club", "--password", "pw-club-1")
            print(f"\nrejoin with a new key: {p.stdout.strip()}")
            assert "waiting for the owner" in p.stdout and "banned" in p.stdout
            nets = json.loads(own.cli("list", "--json").stdout)["networks"]
            row = next(x for x in nets[0]["members"] if x["node_id"] == again.node_id)
            assert row["pending"] and row["note"] == "banned_prefix", row
            assert not again.ping(own.ipv4, wait=1.0)
            good = mesh.add_node("good", "good")
            good.cli("login", mesh.server.url, "--server-key", key)
            assert "Joined network" in good.cli("join", "club", "--password", "pw-club-1").stdout
            own.cli("approve", "club", again.node_id)  # the owner decides: let it in after all
            assert again.ping_until(own.ipv4, True, timeout=15) is not None
        except BaseException:
            print(mesh.logs())
            raise
        finally:
            mesh.close()
