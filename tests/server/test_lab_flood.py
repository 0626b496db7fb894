"""Issue 18 acceptance (lab, real processes): one member floods the control server with
SetPassword at 50/s and Candidates at 1000/s for FLOOD_SECONDS; the other members' control
round trips stay under 1 s and none of them is disconnected.

A real `shoal server` (default scrypt parameters: about 50 ms of CPU per hash) and three real
`shoal daemon`s (a, b, c) share network "net". The flooder ("m", a fourth host) is a member
too, with a node key of its own, speaking the real protocol (`shoal.testing.controlclient`): it
joins "net" (so its Candidates fan out to a, b and c), creates a network of its own (so its
SetPasswords are an owner's, each one a scrypt hash), then floods, and logs in again whenever
the server closes it for flooding (4029), for as long as the flood lasts.

The probe: every PROBE_INTERVAL each of a, b, c is asked through its local API to SetOnline
(true) in "net": the daemon sends the request on its control session and answers when the
server's Result is back, so the time is one control round trip through the server's event
loop. The issue's bound is 1 s; the test also holds the server to LOOP_BOUND, what it gives
with scrypt off the loop. Measured (25 s flood): with the per-session limits of F8 but scrypt
still on the loop (every SetPassword the session limiter let through, 4 per session, hashed
on the loop; the flooder logs in again at once after each 4029, 66 sessions): 258
SetPasswords carried out, worst member round trip 0.58-0.62 s. With F3 (pool + per-node
work budget PASSWORD_WORK, kept across the flooder's 132 sessions): 6 carried out, 246
refused by the work budget, worst round trip 0.056 s (baseline 0.01 s); no member reconnected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from shoal.lab.mesh import Mesh
from shoal.lab import HostSpec, Lab, Topology

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.timeout(120),
]

FLOOD_SECONDS = 25.0
SETPASSWORD_RATE = 50.0
CANDIDATES_RATE = 1000.0
PROBE_INTERVAL = 0.5
PASSWORD = "pw-flood-test"
LOOP_BOUND = 0.3  # seconds: no scrypt on the server's loop (before F3: 0.6 s measured)

_FLOOD = r"""
import asyncio, itertools, json, sys, time
from shoal.control import messages as m
from shoal.control.transport import ConnectionClosed, ProtocolFailure
from shoal.testing.controlclient import ControlClient
from shoal.wireguard.keys import PrivateKey, PublicKey

url, server_key, me, password = sys.argv[1], PublicKey.from_base64(sys.argv[2]), sys.argv[3], sys.argv[4]
secs, pw_rate, cand_rate = float(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
key = PrivateKey.generate()
st = {"setpassword_sent": 0, "candidates_sent": 0, "results": {}, "sessions": 0, "closed": 0, "login_refused": 0,
      "errors": []}
req = itertools.count(1000)


def count(fut):
    if fut.cancelled() or fut.exception() is not None:
        key_ = "unanswered"
    else:
        r = fut.result()
        key_ = "ok" if r.ok else f"{r.code}: {r.message[:40]}"
    st["results"][key_] = st["results"].get(key_, 0) + 1


async def session():
    while True:
        try:
            c = await ControlClient.login(url, key, server_key, timeout=5, nickname="mallory")
            st["sessions"] += 1
            return c
        except Exception as e:  # refused before the handshake (1013) while reconnecting too fast
            st["login_refused"] += 1
            await asyncio.sleep(0.1)


async def main():
    c = await session()
    r = await c.request(m.JoinNetwork, name="net", password=password)
    assert r.ok, r
    r = await c.request(m.CreateNetwork, name="mallory-net", password=password)
    assert r.ok, r
    own = r.network_id
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    tick = 0.01
    n_pw = n_c = 0
    while time.monotonic() - t0 < secs:
        el = time.monotonic() - t0
        try:
            while n_c < el * cand_rate:
                await c.conn.send(m.Candidates(candidates=[m.Candidate(kind="reflexive", addr=f"{me}:{1024 + n_c % 60000}")]))
                n_c += 1
                st["candidates_sent"] += 1
            while n_pw < el * pw_rate:
                rid = next(req)
                fut = loop.create_future()
                c._waiting[rid] = fut
                fut.add_done_callback(count)
                await c.conn.send(m.SetPassword(req_id=rid, network_id=own, password=f"{password}-{n_pw}"))
                n_pw += 1
                st["setpassword_sent"] += 1
        except (ConnectionClosed, ProtocolFailure, OSError) as e:
            pass
        if c.closed is not None or (c._reader is not None and c._reader.done()):
            st["closed"] += 1
            st["errors"] = sorted(set(st["errors"]) | {e.code for e in c.errors})
            c = await session()
            continue
        await asyncio.sleep(tick)
    await asyncio.sleep(2.0)  # the last answers
    st["seconds"] = time.monotonic() - t0
    st["errors"] = sorted(set(st["errors"]) | {e.code for e in c.errors})
    await c.close()
    print(json.dumps(st))


asyncio.run(main())
"""


def _probe(node, stop: threading.Event, out: list[float], failures: list[str]) -> None:  # noqa: ANN001
    """SetOnline(true) in "net" through the node's local API, timed, until `stop`."""
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            node.call("POST", "/v1/networks/online", {"network": "net", "online": True})
            out.append(time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001 - recorded, the test fails on it
            failures.append(f"{type(e).__name__}: {e}")
        stop.wait(max(0.0, PROBE_INTERVAL - (time.monotonic() - t0)))


def test_setpassword_and_candidates_flood_leaves_other_members_alone() -> None:
    topo = Topology(clients=[HostSpec("a"), HostSpec("b"), HostSpec("c"), HostSpec("m")])
    with Lab(topo) as lab:
        mesh = Mesh(lab)
        flood = None
        try:
            a, b, c = mesh.joined("a", "b", "c", password=PASSWORD)
            members = {"a": a, "b": b, "c": c}
            connects = {n: x.status()["connection"]["connects"] for n, x in members.items()}
            url = f"ws://{lab.server.addrs[0]}:{mesh.server.port}/control"
            rtts: dict[str, list[float]] = {n: [] for n in members}
            failures: list[str] = []
            stop = threading.Event()
            probes = [threading.Thread(target=_probe, args=(x, stop, rtts[n], failures), daemon=True)
                      for n, x in members.items()]
            for t in probes:
                t.start()
            time.sleep(2.0)  # a baseline before the flood
            base = {n: max(v) for n, v in rtts.items() if v}
            flood = lab.host("m").popen(
                [sys.executable, "-c", _FLOOD, url, mesh.server.key(), lab.host("m").addr, PASSWORD,
                 str(FLOOD_SECONDS), str(SETPASSWORD_RATE), str(CANDIDATES_RATE)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = flood.communicate(timeout=FLOOD_SECONDS + 40)
            stop.set()
            for t in probes:
                t.join(10)
            assert flood.returncode == 0, err[-2000:]
            stats = json.loads(out.strip().splitlines()[-1])
            states = {n: x.status()["connection"] for n, x in members.items()}
            worst = {n: max(v) for n, v in rtts.items()}
            print(f"\nflood: {json.dumps(stats)}")
            print(f"control round trips (SetOnline via the local API): before the flood max {base}; "
                  f"during: max {({n: round(v, 3) for n, v in worst.items()})}, "
                  f"samples {({n: len(v) for n, v in rtts.items()})}")
            print(f"member connections: {({n: (s['state'], s['connects']) for n, s in states.items()})}")
            assert not failures, failures[:5]
            assert stats["setpassword_sent"] >= 0.9 * SETPASSWORD_RATE * FLOOD_SECONDS
            assert stats["candidates_sent"] >= 0.9 * CANDIDATES_RATE * FLOOD_SECONDS
            assert all(len(v) >= FLOOD_SECONDS / PROBE_INTERVAL * 0.8 for v in rtts.values()), rtts
            assert max(max(v) for v in rtts.values()) < 1.0, worst  # the acceptance bound
            assert max(max(v) for v in rtts.values()) < LOOP_BOUND, worst
            for n, s in states.items():
                assert s["state"] == "connected" and s["connects"] == connects[n], (n, s)
        except BaseException:
            print(mesh.logs())
            raise
        finally:
            if flood is not None and flood.poll() is None:
                flood.kill()
                flood.wait(5)
            mesh.close()
