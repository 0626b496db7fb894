"""The local API's responses: one msgspec Struct per reply, encoded as today's JSON.

Owns: the shape of every success payload the daemon's local API sends (`shoal.daemon.api`);
`ApiServer` (shoal.daemon.localapi) encodes a Struct with `msgspec.to_builtins` and puts
`"ok": true` in front. Fields are declared in the order the JSON has them, every field is
always present (None is sent as null, never omitted), and the CLI (`shoal.cli.node`) and the
lab tests read these keys:

    GET  /v1/status              Status {node, public_key, server, connection, lan, interface,
                                 traversal, view_version, networks: [NetworkRow], peers: [PeerRow]}
    POST /v1/login               LoginResult      /v1/logout      LogoutResult
    POST /v1/networks/create|leave|delete|password             NetworkRef
    POST /v1/networks/join       JoinResult       /v1/networks/online   OnlineResult
    POST /v1/networks/access     AccessResult     /v1/networks/approve|reject|evict  MemberResult
    POST /v1/nickname            NicknameResult   /v1/ping        PingResult
    POST /v1/netcheck            a dict (shoal.daemon.netcheck.netcheck_payload)

`Status.lan` and `Status.traversal` are the data plane's own reports (`LanPlane.status()`,
`Traversal.info()`), passed through as they are.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shoal.control.messages import SelfInfo

__all__ = [
    "AccessResult", "ConnectionInfo", "InterfaceInfo", "JoinResult", "LoginResult", "LogoutResult", "MemberResult",
    "MemberRow", "NetworkRef", "NetworkRow", "NicknameResult", "OnlineResult", "PathInfo", "PeerRow", "PingPeer",
    "PingResult", "ServerInfo", "Status", "TunnelInfo", "REPLIES",
]


class _Reply(msgspec.Struct, kw_only=True):
    """Base: keyword construction, every field encoded (no omit_defaults)."""


class PathInfo(_Reply):
    """How we reach a peer (Traversal.path_of, or the engine's endpoint without traversal)."""
    path: str | None  # "direct" | "relay" | None (no path yet)
    endpoint: str | None
    rtt_ms: float | None
    lan: bool


class TunnelInfo(_Reply):
    """A member's tunnel, as a network's member list shows it."""
    path: str | None
    endpoint: str | None
    rtt_ms: float | None
    ipv4: str
    lan: bool


class PeerRow(_Reply):
    node_id: str
    nickname: str
    ipv4: str
    ipv6: str
    public_key: str  # base64
    state: str  # "online": every peer of the view is online in a shared network
    path: str | None
    endpoint: str | None
    lan: bool
    rtt_ms: float | None
    rtt_source: str | None  # "ping" | "handshake" | "disco"
    last_handshake_s_ago: float | None
    rx_bytes: int
    tx_bytes: int
    in_engine: bool
    networks: list[str]
    liveness: str | None
    last_seen_s_ago: float | None
    checked: bool
    server_asked_check: bool

    def tunnel(self) -> TunnelInfo:
        return TunnelInfo(path=self.path, endpoint=self.endpoint, rtt_ms=self.rtt_ms, ipv4=self.ipv4, lan=self.lan)


class MemberRow(_Reply):
    node_id: str
    nickname: str
    role: str
    online: bool
    pending: bool
    note: str
    is_self: bool = msgspec.field(name="self")
    tunnel: TunnelInfo | None


class NetworkRow(_Reply):
    network_id: str
    name: str
    owner_id: str
    locked: bool
    kind: str
    broadcast: bool
    interface: str | None
    approval: str
    role: str | None
    online: bool
    pending: bool
    members: list[MemberRow]


class ServerInfo(_Reply):
    url: str
    public_key: str
    fingerprint: str


class ConnectionInfo(_Reply):
    state: str  # logged-out | connecting | connected | reconnecting
    for_s: float
    since: float  # wall clock
    next_try_in_s: float | None
    last_error: str
    connects: int
    checking_tunnels: bool


class InterfaceInfo(_Reply):
    name: str
    mode: str  # "tap" | "tun"
    listen_port: int | None
    endpoints: list[str]


class Status(_Reply):
    node: SelfInfo | None
    public_key: str
    server: ServerInfo | None
    connection: ConnectionInfo
    lan: dict[str, Any] | None
    interface: InterfaceInfo
    traversal: dict[str, Any] | None
    view_version: int | None
    networks: list[NetworkRow]
    peers: list[PeerRow]


class LoginResult(_Reply):
    server: str
    public_key: str
    fingerprint: str
    trusted_on_first_use: bool
    node: SelfInfo


class LogoutResult(_Reply):
    server: str


class NetworkRef(_Reply):
    network_id: str | None
    name: str


class JoinResult(_Reply):
    network_id: str | None
    name: str
    pending: bool
    message: str | None


class OnlineResult(_Reply):
    networks: list[str]
    online: bool


class AccessResult(_Reply):
    network_id: str
    name: str
    locked: bool | None
    approval: str | None
    broadcast: bool | None


class MemberResult(_Reply):
    network_id: str
    name: str
    node_id: str
    nickname: str


class NicknameResult(_Reply):
    nickname: str


class PingPeer(_Reply):
    node_id: str
    nickname: str
    ipv4: str


class PingResult(_Reply):
    peer: PingPeer
    path: str | None
    endpoint: str | None
    sent: int
    received: int
    rtt_ms: list[float | None]


REPLIES: tuple[type[_Reply], ...] = (
    PathInfo, TunnelInfo, PeerRow, MemberRow, NetworkRow, ServerInfo, ConnectionInfo, InterfaceInfo, Status,
    LoginResult, LogoutResult, NetworkRef, JoinResult, OnlineResult, AccessResult, MemberResult, NicknameResult,
    PingPeer, PingResult,
)
