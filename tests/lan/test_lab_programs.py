"""Acceptance of issue #6 with unmodified real programs from Debian, in the lab (root).

Three members, each behind its own port-restricted NAT, on two IP networks and two layer-2
networks:

    x (ip)  a b          l (l2)  a b c
    y (ip)  a c          m (l2)  a c

Every test runs on two fabrics (shoal.lab.lanapps): `bridge`, plain Linux bridges (a real
LAN: shows that drivers, configurations and assertions are right), and `shoal`, a real
`shoal server` and `shoal daemon`s (shoal0 for IP networks, the daemon's TAP per layer-2
network). Measured times and fractions are printed (pytest -s) and recorded in docs/lan.md.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time

import pytest

from shoal.lab import HostSpec, Lab, Topology
from shoal.lab import lanapps as apps

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(shutil.which("teeworlds-server", path="/usr/games") is None or shutil.which("avahi-daemon") is None
                       or shutil.which("nmbd") is None or shutil.which("iperf") is None or shutil.which("dnsmasq") is None,
                       reason="LAN programs missing: run scripts/setup-system.sh"),
    pytest.mark.timeout(120),
]

LAYOUT = {"a": ["x", "y", "l", "m"], "b": ["x", "l"], "c": ["y", "l", "m"]}
KINDS = {"x": "ip", "y": "ip", "l": "l2", "m": "l2"}
NATTED = Topology(clients=[HostSpec(h, nat="port-restricted", router=f"r{h}") for h in LAYOUT])
PUBLIC = Topology(clients=[HostSpec(h) for h in LAYOUT])
L2_NET = "198.18.254"
RATE = "2M"  # iperf 2 multicast stream rate (a SD video stream)
QUIET = 2.0  # seconds a listener that must get nothing keeps listening (started before the send)  # static and DHCP addresses on layer-2 network l (RFC 2544 range)

# bridge: the control LAN; shoal: daemons on public addresses; shoal-nat: each member behind
# its own port-restricted NAT (the setting: tunnels by hole punching)
FABRICS = {"bridge": (apps.BridgeFabric, NATTED), "shoal": (apps.ShoalFabric, PUBLIC),
           "shoal-nat": (apps.ShoalFabric, NATTED)}


@pytest.fixture(scope="module", params=list(FABRICS))
def fabric(request):
    cls, topo = FABRICS[request.param]
    with Lab(topo) as lab:
        fab = cls(lab, LAYOUT, KINDS)
        fab.name = request.param
        try:
            try:
                fab.ready(timeout=20)
            except TimeoutError:
                print(fab.logs())
                raise
            yield fab
        finally:
            fab.close()


@pytest.fixture(autouse=True)
def stop_programs(fabric):
    yield
    for mem in fabric.members.values():
        mem.stop_all()


def m(fabric, name: str) -> apps.Member:  # noqa: ANN001
    return fabric.members[name]


def test_game_server_found_by_broadcast_only(fabric):
    """teeworlds-server on b; the 0.7 LAN browse from a (shares x) finds it with no address
    given; from c (shares only y with b) finds nothing."""
    a, b, c = m(fabric, "a"), m(fabric, "b"), m(fabric, "c")
    apps.TeeworldsServer(b, "shoal-lan-test").start()
    t0 = time.monotonic()
    found = apps.browse_teeworlds(a, timeout=8)
    print(f"[{fabric.name}] teeworlds LAN browse from a: {found} ({time.monotonic() - t0:.2f} s)")
    assert [(f["address"], f["port"], f["info"]["name"], f["info"]["map"]) for f in found] == \
        [(b.ipv4, 8303, "shoal-lan-test", "dm1")]
    assert found[0]["info"]["version"].startswith("0.7")
    assert apps.browse_teeworlds(c, timeout=3) == []


def test_broadcast_switch_off_hides_the_game(fabric):
    """Shoal only: with network x's broadcast switch off (`shoal set-access lanx --broadcast
    off`, by its owner a) the same browse finds nothing; switched on again, it finds b."""
    if not isinstance(fabric, apps.ShoalFabric):
        pytest.skip("the per-network broadcast switch is Shoal's")
    a, b = m(fabric, "a"), m(fabric, "b")
    owner = fabric.mesh.nodes["a"]
    apps.TeeworldsServer(b, "shoal-switch-test").start()
    assert [f["address"] for f in apps.browse_teeworlds(a, timeout=5)] == [b.ipv4]
    owner.cli("set-access", "lanx", "--broadcast", "off")
    try:
        assert apps.browse_teeworlds(a, timeout=3) == []
    finally:
        owner.cli("set-access", "lanx", "--broadcast", "on")
    found = apps.wait_for(lambda: apps.browse_teeworlds(a, timeout=3), 10, "the game is back after switching on")
    assert [f["address"] for f in found] == [b.ipv4]


def test_mdns_service_browsed_and_resolved(fabric):
    """avahi (stock avahi-daemon.conf) on a and b, each with its own system bus; a service
    published on b is browsed and resolved on a; c never sees it on its IP interface (c shares
    no IP network with b; it does share layer-2 network l, where avahi legitimately finds b
    by IPv6 link-local)."""
    a, b, c = m(fabric, "a"), m(fabric, "b"), m(fabric, "c")
    avahis = {}
    for mem in (a, b, c):
        sysd = apps.PrivateSystem(mem, f"shoal-{mem.name}").start()
        avahis[mem.name] = apps.Avahi(mem, sysd).start()
    t_pub = time.monotonic()
    avahis["b"].publish("shoal-test-b", "_shoaltest._tcp", 4242, "k=v")
    t_browse = time.monotonic()
    found, t = avahis["a"].browse("_shoaltest._tcp", lambda r: r["proto"] == "IPv4" and r["name"] == "shoal-test-b",
                                  timeout=15)
    assert t is not None, found
    print(f"[{fabric.name}] avahi: published on b -> resolved on a in {t_browse - t_pub + t:.2f} s "
          f"(avahi-browse itself {t:.2f} s): {found}")
    rec = next(r for r in found if r["proto"] == "IPv4" and r["name"] == "shoal-test-b")
    assert (rec["host"], rec["address"], rec["port"], rec["txt"]) == ("shoal-b.local", b.ipv4, "4242", '"k=v"')
    assert rec["iface"] == a.ifaces["x"]
    seen, t_c = avahis["c"].browse("_shoaltest._tcp", lambda r: r["iface"] == c.ifaces["y"], timeout=3)
    assert t_c is None, seen


def test_netbios_name_and_shares(fabric):
    """Samba on b (share `shoalshare`): nmblookup on a finds b's NetBIOS name by broadcast,
    smbclient -L lists b's shares by that name; c (no IP network with b) finds nothing."""
    a, b, c = m(fabric, "a"), m(fabric, "b"), m(fabric, "c")
    apps.Samba(b, "SHOALB").start(share="shoalshare")
    sa, sc = apps.Samba(a, "SHOALA"), apps.Samba(c, "SHOALC")
    sa.write_conf(None)
    sc.write_conf(None)
    t0 = time.monotonic()
    addrs = apps.wait_for(lambda: sa.nmblookup("SHOALB"), 15, "nmblookup SHOALB from a", interval=0.2)
    t_lookup = time.monotonic() - t0
    assert addrs == [b.ipv4]
    shares, out = sa.list_shares("SHOALB")
    print(f"[{fabric.name}] nmblookup SHOALB on a: {addrs} after {t_lookup:.2f} s; smbclient -L SHOALB: {shares}")
    assert "shoalshare" in shares, out
    assert sc.nmblookup("SHOALB") == []


def test_multicast_stream_arrives_and_stays_in_its_networks(fabric):
    """iperf 2: a UDP stream from a to 239.1.1.1 reaches every member on a's IP LAN (b on the
    bridge, b and c on shoal0) with >= 95 % of its datagrams; a stream from b reaches a, and
    not one datagram reaches c (c shares no IP network with b)."""
    a, b, c = m(fabric, "a"), m(fabric, "b"), m(fabric, "c")
    peers = fabric.ip_lan_peers("a")
    assert "b" in peers
    res = apps.iperf_multicast(a, [m(fabric, p) for p in peers], group="239.1.1.1", rate=RATE, seconds=3)
    print(f"[{fabric.name}] iperf multicast a -> 239.1.1.1 at {RATE}bit/s: {res}")
    for name, r in res.items():
        assert r["sent"] > 500 and r["fraction"] >= 0.95, (name, r)
    res = apps.iperf_multicast(b, [a, c], group="239.1.1.2", port=5002, rate=RATE, seconds=2)
    print(f"[{fabric.name}] iperf multicast b -> 239.1.1.2: {res}")
    assert res["a"]["fraction"] >= 0.95 and res["c"]["received"] == 0


def _ipx_frames(dst: bytes, src: bytes, tag: bytes) -> list[bytes]:
    payload = tag + bytes(range(48))  # frames stay >= 60 bytes: no padding anywhere
    pkt = apps.ipx_packet(0, dst, 0x4000, 0, src, 0x4001, payload)
    return [apps.ipx_frame(dst, src, pkt, f) for f in ("ethernet2", "raw8023", "llc")]


def test_l2_ipx_frames_byte_for_byte_and_isolated(fabric):
    """Raw IPX frames in all three framings, sent with AF_PACKET: broadcast from a on l
    arrives at b and c byte for byte; unicast from b to a's MAC arrives at a only; a broadcast
    from c on m reaches a's m and nothing on l (b shares only l with c)."""
    a, b, c = m(fabric, "a"), m(fabric, "b"), m(fabric, "c")
    mac = {(x.name, net): apps.mac_bytes(x.mac(x.iface(net))) for x in (a, b, c) for net in LAYOUT[x.name] if KINDS[net] == "l2"}
    bcast = b"\xff" * 6

    tag = secrets.token_bytes(8)
    frames = _ipx_frames(bcast, mac["a", "l"], tag)
    ls = {x.name: apps.raw_listen(x, x.iface("l"), tag, 3, 5) for x in (b, c)}
    am = apps.raw_listen(a, a.iface("m"), tag, 1, QUIET)
    apps.raw_send(a, a.iface("l"), frames)
    got = {k: apps.raw_result(p) for k, p in ls.items()}
    assert got == {"b": frames, "c": frames}
    assert apps.raw_result(am) == []

    tag = secrets.token_bytes(8)
    frames = _ipx_frames(mac["a", "l"], mac["b", "l"], tag)
    ls = {"a": apps.raw_listen(a, a.iface("l"), tag, 3, 5), "c": apps.raw_listen(c, c.iface("l"), tag, 1, QUIET)}
    apps.raw_send(b, b.iface("l"), frames)
    got = {k: apps.raw_result(p) for k, p in ls.items()}
    assert got == {"a": frames, "c": []}

    tag = secrets.token_bytes(8)
    frames = _ipx_frames(bcast, mac["c", "m"], tag)
    ls = {"a-m": apps.raw_listen(a, a.iface("m"), tag, 3, 5), "a-l": apps.raw_listen(a, a.iface("l"), tag, 1, QUIET),
          "b-l": apps.raw_listen(b, b.iface("l"), tag, 1, QUIET)}
    apps.raw_send(c, c.iface("m"), frames)
    got = {k: apps.raw_result(p) for k, p in ls.items()}
    assert got == {"a-m": frames, "a-l": [], "b-l": []}
    print(f"[{fabric.name}] IPX: 3 framings x (broadcast, unicast) byte for byte; no crossing from m to l")


def test_l2_arp_and_dhcp(fabric):
    """On l: static addresses on a and c resolve each other by ARP (the learned MAC is the
    peer's); dnsmasq on a gives b a lease via busybox udhcpc, and b then pings a."""
    a, b, c = m(fabric, "a"), m(fabric, "b"), m(fabric, "c")
    la, lb, lc = a.iface("l"), b.iface("l"), c.iface("l")
    try:
        _arp_and_dhcp(fabric, a, b, c, la, lb, lc)
    finally:
        for x, dev in ((a, la), (b, lb), (c, lc)):
            x.run(["ip", "addr", "flush", "dev", dev])


def _arp_and_dhcp(fabric, a, b, c, la, lb, lc):  # noqa: ANN001
    a.run(["ip", "addr", "replace", f"{L2_NET}.1/24", "dev", la], check=True)
    c.run(["ip", "addr", "replace", f"{L2_NET}.3/24", "dev", lc], check=True)
    c.run(["ip", "neigh", "flush", "dev", lc])
    t0 = time.monotonic()
    apps.wait_for(lambda: c.run(["ping", "-n", "-c1", "-W1", f"{L2_NET}.1"]).returncode == 0, 10, "ping a from c over l")
    t_arp = time.monotonic() - t0
    neigh = c.run(["ip", "neigh", "show", f"{L2_NET}.1", "dev", lc], check=True).stdout
    assert f"lladdr {a.mac(la)}" in neigh, neigh

    apps.Dnsmasq(a, la, f"{L2_NET}.100", f"{L2_NET}.150").start()
    t0 = time.monotonic()
    lease = apps.udhcpc(b, lb, timeout=20)
    t_dhcp = time.monotonic() - t0
    print(f"[{fabric.name}] ARP c -> a {t_arp:.2f} s; DHCP lease {lease} in {t_dhcp:.2f} s")
    assert lease is not None and lease["server"] == f"{L2_NET}.1"
    assert 100 <= int(lease["ip"].rsplit(".", 1)[1]) <= 150 and lease["mask"] == "24"
    assert b.run(["ping", "-n", "-c1", "-W2", f"{L2_NET}.1"]).returncode == 0
