"""The local API's reply structs: each round-trips, encodes to the JSON the CLI reads, and the
status keys `shoal.cli.node` renders are all there."""

from __future__ import annotations

import ast
import inspect
import io
import json

import msgspec
import pytest
from rich.console import Console

from shoal.cli import node as node_cli
from shoal.control import messages as M
from shoal.daemon import apitypes as T
from shoal.daemon.localapi import success_payload

PEER = T.PeerRow(node_id="b2", nickname="ben", ipv4="100.64.1.2", ipv6="fd00::2", public_key="y", state="online",
                 path="direct", endpoint="203.0.113.2:5000", lan=False, rtt_ms=0.84, rtt_source="ping",
                 last_handshake_s_ago=4.0, rx_bytes=1, tx_bytes=2, in_engine=True, networks=["lan-party"],
                 liveness="up", last_seen_s_ago=1.5, checked=False, server_asked_check=False)
ME = M.SelfInfo(node_id="me1", nickname="ann", ipv4="100.64.1.1", ipv6="fd00::1")
TRAVERSAL = {"host": ["203.0.113.1:41641"], "reflexive": "198.51.100.1:41641", "nat_hard": False, "mapped": None,
             "mapped_via": None, "relay": {"mode": "udp", "ready": True, "rtt_ms": 1.0, "udp": "192.0.2.1:3478",
                                           "ws": None, "client": {}}, "stats": {}, "peers": {}}
STATUS = T.Status(
    node=ME, public_key="k",
    server=T.ServerInfo(url="http://192.0.2.1:8080", public_key="x", fingerprint="AbCdEfGh"),
    connection=T.ConnectionInfo(state="reconnecting", for_s=12.0, since=1_700_000_000.0, next_try_in_s=3.0,
                                last_error="control connection lost", connects=1, checking_tunnels=True),
    lan={"mode": "tap", "mac": None}, interface=T.InterfaceInfo(name="shoal0", mode="tap", listen_port=41641,
                                                               endpoints=["203.0.113.1:41641"]),
    traversal=TRAVERSAL, view_version=3,
    networks=[T.NetworkRow(
        network_id="n1", name="lan-party", owner_id="me1", locked=True, kind="ip", broadcast=False,
        interface="shoal0", approval="manual", role="owner", online=True, pending=False,
        members=[T.MemberRow(node_id="me1", nickname="ann", role="owner", online=True, pending=False, note="",
                             is_self=True, tunnel=None),
                 T.MemberRow(node_id="b2", nickname="ben", role="member", online=True, pending=False,
                             note="banned_prefix", is_self=False, tunnel=PEER.tunnel())])],
    peers=[PEER],
)
SAMPLES: dict[type, msgspec.Struct] = {
    T.PathInfo: T.PathInfo(path="relay", endpoint="relay udp 192.0.2.1:3478", rtt_ms=None, lan=False),
    T.TunnelInfo: PEER.tunnel(),
    T.PeerRow: PEER,
    T.MemberRow: STATUS.networks[0].members[1],
    T.NetworkRow: STATUS.networks[0],
    T.ServerInfo: STATUS.server,
    T.ConnectionInfo: STATUS.connection,
    T.InterfaceInfo: STATUS.interface,
    T.Status: STATUS,
    T.LoginResult: T.LoginResult(server="http://192.0.2.1:8080", public_key="x", fingerprint="AbCd",
                                 trusted_on_first_use=True, node=ME),
    T.LogoutResult: T.LogoutResult(server="http://192.0.2.1:8080"),
    T.NetworkRef: T.NetworkRef(network_id=None, name="lan-party"),
    T.JoinResult: T.JoinResult(network_id="n1", name="lan-party", pending=True, message="waiting"),
    T.OnlineResult: T.OnlineResult(networks=["a", "b"], online=False),
    T.AccessResult: T.AccessResult(network_id="n1", name="lan-party", locked=True, approval=None, broadcast=None),
    T.MemberResult: T.MemberResult(network_id="n1", name="lan-party", node_id="b2", nickname="ben"),
    T.NicknameResult: T.NicknameResult(nickname="ann"),
    T.PingPeer: T.PingPeer(node_id="b2", nickname="ben", ipv4="100.64.1.2"),
    T.PingResult: T.PingResult(peer=T.PingPeer(node_id="b2", nickname="ben", ipv4="100.64.1.2"), path="direct",
                               endpoint="203.0.113.2:5000", sent=3, received=2, rtt_ms=[0.5, None, 0.7]),
}


def test_every_reply_has_a_sample():
    assert set(SAMPLES) == set(T.REPLIES)


@pytest.mark.parametrize("cls", T.REPLIES, ids=lambda c: c.__name__)
def test_round_trip(cls):
    value = SAMPLES[cls]
    assert msgspec.json.decode(msgspec.json.encode(value), type=cls) == value
    # and through the API's own encoder (to_builtins + json), nulls kept
    payload = json.loads(json.dumps(success_payload(value)))
    assert payload.pop("ok") is True
    assert msgspec.convert(payload, cls) == value
    assert list(payload) == [f.encode_name for f in msgspec.structs.fields(cls)]


def test_status_json_has_the_keys_in_the_order_shown():
    payload = success_payload(STATUS)
    assert list(payload) == ["ok", "node", "public_key", "server", "connection", "lan", "interface", "traversal",
                             "view_version", "networks", "peers"]
    assert list(payload["connection"]) == ["state", "for_s", "since", "next_try_in_s", "last_error", "connects",
                                           "checking_tunnels"]
    member = payload["networks"][0]["members"][0]
    assert member["self"] is True and member["tunnel"] is None and "is_self" not in member
    assert list(payload["networks"][0]["members"][1]["tunnel"]) == ["path", "endpoint", "rtt_ms", "ipv4", "lan"]
    assert payload["node"] == {"node_id": "me1", "nickname": "ann", "ipv4": "100.64.1.1", "ipv6": "fd00::1"}


def _keys_read(fn) -> set[str]:  # noqa: ANN001
    """Every string key `fn` reads with x["key"] or x.get("key")."""
    keys = set()
    for n in ast.walk(ast.parse(inspect.getsource(fn))):
        if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant) and isinstance(n.slice.value, str):
            keys.add(n.slice.value)
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get" and n.args
                and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str)):
            keys.add(n.args[0].value)
    return keys


def _all_keys(value: object) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _all_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _all_keys(v)}
    return set()


def test_the_cli_reads_only_keys_the_status_has_and_renders_it():
    status = json.loads(json.dumps(success_payload(STATUS)))
    read = set()
    for fn in (node_cli.render_status, node_cli.render_list, node_cli._path, node_cli.list_):
        read |= _keys_read(fn)
    assert {"node", "server", "connection", "peers", "networks", "members", "tunnel", "self", "for_s",
            "last_seen_s_ago", "rtt_ms"} <= read  # the walk finds what the CLI reads
    assert read - _all_keys(status) == set()
    for fn in (node_cli.render_status, node_cli.render_list):
        buf = io.StringIO()
        fn(status, Console(file=buf, width=250))
        assert "ben" in buf.getvalue()
