"""Control-plane messages between a node daemon and the coordination server (the contract).

Framing. Every control message travels as ONE WebSocket binary message whose plaintext,
inside the Noise IK session (`shoal.control.noise`), is:

    offset size  field
    0      1     protocol version (PROTOCOL_VERSION = 1)
    1      n     msgpack encoding of exactly one message struct below; structs are tagged:
                 the map's "type" key names the struct (e.g. "login", "view_update")

Limits: a client->server frame is at most MAX_CLIENT_FRAME bytes, a server->client frame at
most MAX_SERVER_FRAME bytes; strings and lists carry the per-field limits below, checked
while decoding. A frame with an unknown version, an unknown "type", a field of the wrong type
or beyond a limit, or a message the receiver does not expect in its current state is a
protocol error: the receiver closes only that session, logging the reason (never a crash).

Conversation:

    client                                       server
    Noise IK handshake (client pins server key; server learns client key)
    Login --------------------------------------->   (new key refused? -> Error + close 4004)
          <--------------------------------------- LoginOk, then FullView (version v)
    requests (CreateNetwork, JoinNetwork, ...) ->
          <--------------------------------------- Result (same req_id), in request order
          <--------------------------------------- ViewUpdate (prev_version v, version v+1) ...
    ResyncRequest (prev_version mismatch) ------->
          <--------------------------------------- FullView
    Ping ---------------------------------------->
          <--------------------------------------- Pong
          <--------------------------------------- CheckPeer (node_id, active)
    PeerReport (node_id, reachable) ------------->
    Candidates ---------------------------------->  (our NAT-traversal candidates changed)
    Logout -------------------------------------->  (offline in every network at once) + close

Peer checks (optional; both sides list "check_peer" in Login.features / LoginOk.features, and
neither sends these messages to a side that did not: an older node or server never sees them).
A node that lists it sends Ping at least every KEEPALIVE_INTERVAL seconds; either side treats
SILENCE_TIMEOUT seconds without a frame as a dead connection (a blackholed path is noticed
in at most 15 s, not after TCP's retransmission timeout).
When a node's control connection drops without Logout, the server sends its peers
CheckPeer(node_id, active=True): "verify this node through your tunnel". A peer then probes
that tunnel and answers PeerReport(node_id, reachable) once it knows, and again every few
seconds while the check is active. Each reachable=True from a node that is a peer of the
dropped node extends that node's presence grace (the server marks it offline only when no
peer has reached it for a whole grace period). When the node logs in again, or goes offline
for good, the server sends CheckPeer(node_id, active=False) (or removes the peer from the
view): the check ends. A node that logs in is told about its peers that are still in grace.

NAT traversal (optional; the server lists "disco" in LoginOk.features, and a node sends
Candidates only to such a server). A node learns its reflexive address on its WireGuard data
socket (STUN to the server), maps a port on its gateway if it can (UPnP IGD, NAT-PMP, PCP),
and sends Candidates whenever that set changes; the server keeps them while the node is
connected (not stored) and hands them to the node's peers in PeerInfo.candidates, next to the
host endpoints of the Login. Endpoints and candidates are strict "ip:port" / "[v6]:port" text
(`shoal.endpoint`); the server drops any other entry, and any whose address is not
usable (loopback, unspecified, multicast, link-local, reserved, overlay).
PeerInfo.observed_ip is the public IP the server saw the peer's control connection come
from (issue 18 F10; "" when none or private, and from an older server). `nat_hard` says the
node's NAT maps per destination (symmetric): a peer then sprays ports (shoal.nat.paths), but
only at an address the node showed it owns: observed_ip, or one a sealed pong came from. LoginOk.relay_port names the UDP port of the
relay inside the server (on the server's host; 0: none); a server listing "relay" also
accepts relay WebSocket sessions at RELAY_WS_PATH on its HTTP port (for UDP-blocked nodes).

LAN (optional; both sides list "lan" in Login.features / LoginOk.features). A server sends
networks of kind "l2" only to nodes that listed "lan": such a node cannot create or join one
(refused with code "unsupported"), so an older node never has to decode the kind. A node sends
CreateNetwork.kind="l2" or SetAccess.broadcast only to a server that listed "lan" (an older
server would ignore the field); the daemon refuses the request itself otherwise.

View semantics. A node's *view* is the networks it is a member of (incl. pending ones), their
members, and its *peers*: the nodes with which it shares at least one network where both are
online members (not pending). The daemon keeps a WireGuard peer exactly for each peer in the
view, with AllowedIPs = the peer's ipv4/32 and ipv6/128. Every change to a node's view bumps
its version by one and is sent as a ViewUpdate with prev_version; a node whose version does
not equal prev_version asks for a resync and gets a FullView. Applying a FullView or a
ViewUpdate twice changes nothing (idempotent reconciliation).

Large views (parts; issue 18 F9). A FullView or ViewUpdate whose frame would be bigger than
VIEW_PART_BYTES (shoal.constants, 1 MiB) is sent as consecutive parts made by `split_view`,
each a valid message of at most VIEW_PART_BYTES (unless it holds one record that alone is
bigger; the field limits keep any record far below MAX_SERVER_FRAME):

    part     message                                                    more
    first    the message itself (same version / prev_version, node)     True
             with a share of its records
    next     ViewUpdate(prev_version = version = the first part's        True; False on
             version) with further records in networks_upsert,           the last part
             peers_upsert (a split ViewUpdate: also networks_removed,
             peers_removed; node None)

Records go out in the order networks_removed, peers_removed, networks, peers, so removals
come before upserts. An ordinary ViewUpdate always has version = prev_version + 1, so a
continuation (version == prev_version) is recognisable. A receiver stages the parts in a
`ViewParts` and applies the whole (the union of the parts' records as one message) only when
the part with more=False arrives: a half-received view changes nothing, and no peer missing
from the first part is torn down. A continuation it does not expect (nothing staged, or another
version) or an ordinary ViewUpdate while parts are staged drops what is staged (`PartsError`;
the receiver asks for a resync once, and ignores the rest of that message's parts); a
FullView while parts are staged starts over. A view under the limit is one message with
more=False, as before. A node that predates parts ignores `more` and applies each part as it
comes: it reaches the same view once the last part is in, passing through partial views
(only for views over 1 MiB, which it could not receive at all before).

Owner: these are plain data; `shoal.server` produces views, `shoal.daemon` consumes them.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import msgspec

from shoal.constants import VIEW_PART_BYTES

PROTOCOL_VERSION = 1
MAX_CLIENT_FRAME = 64 * 1024
MAX_SERVER_FRAME = 4 * 1024 * 1024

# Field limits
NodeId = Annotated[str, msgspec.Meta(min_length=1, max_length=16, pattern=r"^[a-z0-9]+$")]
NetworkId = Annotated[str, msgspec.Meta(min_length=1, max_length=16, pattern=r"^[a-z0-9]+$")]
NetworkName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Nickname = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Password = Annotated[str, msgspec.Meta(max_length=128)]
Key32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Address = Annotated[str, msgspec.Meta(max_length=64)]  # "ip" or "ip:port" / "[ip6]:port"
ReqId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Version = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
ErrorCode = Annotated[str, msgspec.Meta(max_length=64)]
Text = Annotated[str, msgspec.Meta(max_length=512)]
MAX_ENDPOINTS = 16
MAX_FEATURES = 32
FEATURE_CHECK_PEER = "check_peer"
FEATURE_DISCO = "disco"  # server: accepts Candidates and sends PeerInfo.candidates
FEATURE_RELAY = "relay"  # server: relays (LoginOk.relay_port over UDP; WebSocket on its HTTP port)
MAX_CANDIDATES = 16
FEATURE_LAN = "lan"  # understands NetworkKind "l2", NetworkInfo.broadcast, CreateNetwork.kind, SetAccess.broadcast
KEEPALIVE_INTERVAL = 5.0  # a "check_peer" node sends Ping at least this often
SILENCE_TIMEOUT = 15.0  # either side drops a "check_peer" session silent for this long
MAX_MEMBERS = 4096
MAX_NETWORKS = 256
MAX_PEERS = 65536

Features = Annotated[list[Annotated[str, msgspec.Meta(max_length=32)]], msgspec.Meta(max_length=MAX_FEATURES)]
Approval = Literal["auto", "manual"]
Role = Literal["owner", "member"]
NetworkKind = Literal["ip", "l2"]  # "l2": a layer-2 network (docs/lan.md); only for "lan" nodes


class _Msg(msgspec.Struct, tag_field="type", forbid_unknown_fields=False, frozen=True):
    """Base of every message; unknown fields are ignored (forward compatibility)."""


# ---------------------------------------------------------------- shared records


class MemberInfo(msgspec.Struct, frozen=True):
    node_id: NodeId
    nickname: Nickname
    role: Role
    online: bool  # online in this network
    pending: bool = False  # waiting for the owner's approval
    # why a pending request waits besides approval "manual": "" or "banned_prefix" (the node
    # connects from the source prefix a node banned from this network last came from)
    note: Annotated[str, msgspec.Meta(max_length=32)] = ""


class NetworkInfo(msgspec.Struct, frozen=True):
    network_id: NetworkId
    name: NetworkName
    owner_id: NodeId
    kind: NetworkKind
    locked: bool
    approval: Approval
    members: Annotated[list[MemberInfo], msgspec.Meta(max_length=MAX_MEMBERS)]
    broadcast: bool = True  # broadcast/multicast (ip) or flooding (l2) between members is on


CandidateKind = Literal["local", "reflexive", "mapped"]  # host address / as STUN saw us / a port mapping


class Candidate(msgspec.Struct, frozen=True):
    kind: CandidateKind
    addr: Address  # "ip:port" / "[ip6]:port" (strict form: shoal.endpoint)


CandidateList = Annotated[list[Candidate], msgspec.Meta(max_length=MAX_CANDIDATES)]


class PeerInfo(msgspec.Struct, frozen=True):
    node_id: NodeId
    nickname: Nickname
    public_key: Key32
    ipv4: Address
    ipv6: Address
    endpoints: Annotated[list[Address], msgspec.Meta(max_length=MAX_ENDPOINTS)]  # "ip:port"
    candidates: CandidateList = []  # NAT-traversal candidates (a "disco" server; none while away)
    nat_hard: bool = False  # its NAT maps per destination (symmetric)
    # the public IP the server saw this node's control connection come from, set by the
    # server alone ("": none, not public, or an older server); the only address a peer may
    # spray (birthday probing) before a pong proves another one (issue 18 F10)
    observed_ip: Address = ""


class SelfInfo(msgspec.Struct, frozen=True):
    node_id: NodeId
    nickname: Nickname
    ipv4: Address
    ipv6: Address


# ---------------------------------------------------------------- client -> server


class Login(_Msg, tag="login"):
    nickname: Nickname | None = None  # None: keep the stored one (or the server's default)
    listen_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    endpoints: Annotated[list[Address], msgspec.Meta(max_length=MAX_ENDPOINTS)] = []  # host candidates
    have_version: Version | None = None  # the view version the node still holds, if any
    software: Text = ""
    features: Features = []  # optional messages this node understands, e.g. "check_peer"


class Candidates(_Msg, tag="candidates"):
    """Our reflexive / port-mapped addresses (the whole set, replacing the previous one)."""

    candidates: CandidateList = []
    nat_hard: bool = False


class Logout(_Msg, tag="logout"):
    req_id: ReqId


class Ping(_Msg, tag="ping"):
    nonce: Version


class ResyncRequest(_Msg, tag="resync_request"):
    have_version: Version


class PeerReport(_Msg, tag="peer_report"):
    """After CheckPeer: whether an authenticated packet from that peer arrived recently."""

    node_id: NodeId
    reachable: bool


class CreateNetwork(_Msg, tag="create_network"):
    req_id: ReqId
    name: NetworkName
    password: Password
    approval: Approval = "auto"
    kind: NetworkKind = "ip"  # "l2" only to a server that listed "lan" in LoginOk.features


class JoinNetwork(_Msg, tag="join_network"):
    req_id: ReqId
    name: NetworkName
    password: Password


class LeaveNetwork(_Msg, tag="leave_network"):
    req_id: ReqId
    network_id: NetworkId


class DeleteNetwork(_Msg, tag="delete_network"):
    req_id: ReqId
    network_id: NetworkId


class SetOnline(_Msg, tag="set_online"):
    req_id: ReqId
    network_id: NetworkId
    online: bool


class SetNickname(_Msg, tag="set_nickname"):
    req_id: ReqId
    nickname: Nickname


class SetPassword(_Msg, tag="set_password"):
    req_id: ReqId
    network_id: NetworkId
    password: Password


class SetAccess(_Msg, tag="set_access"):
    req_id: ReqId
    network_id: NetworkId
    locked: bool | None = None
    approval: Approval | None = None
    broadcast: bool | None = None  # only to a server that listed "lan" in LoginOk.features


class Approve(_Msg, tag="approve"):
    req_id: ReqId
    network_id: NetworkId
    node_id: NodeId


class Reject(_Msg, tag="reject"):
    req_id: ReqId
    network_id: NetworkId
    node_id: NodeId
    ban: bool = False


class Evict(_Msg, tag="evict"):
    req_id: ReqId
    network_id: NetworkId
    node_id: NodeId
    ban: bool = False


# ---------------------------------------------------------------- server -> client


class LoginOk(_Msg, tag="login_ok"):
    node: SelfInfo
    server_time: float  # unix seconds
    features: Features = []  # optional messages this server understands, e.g. "check_peer"
    relay_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0  # UDP relay on the server's host (0: none)


class FullView(_Msg, tag="full_view"):
    version: Version
    node: SelfInfo
    networks: Annotated[list[NetworkInfo], msgspec.Meta(max_length=MAX_NETWORKS)]
    peers: Annotated[list[PeerInfo], msgspec.Meta(max_length=MAX_PEERS)]
    more: bool = False  # a part: continuations follow ("Large views")


class ViewUpdate(_Msg, tag="view_update"):
    prev_version: Version
    version: Version
    node: SelfInfo | None = None  # when our own nickname/addresses changed
    networks_upsert: list[NetworkInfo] = []  # whole records, members included
    networks_removed: list[NetworkId] = []
    peers_upsert: list[PeerInfo] = []
    peers_removed: list[NodeId] = []
    more: bool = False  # a part: continuations follow ("Large views")


class Result(_Msg, tag="result"):
    req_id: ReqId
    ok: bool
    code: ErrorCode = ""  # machine-readable, e.g. "wrong_password", "locked", "not_owner"
    message: Text = ""  # one line for humans
    network_id: NetworkId | None = None  # for create/join


class Pong(_Msg, tag="pong"):
    nonce: Version


class CheckPeer(_Msg, tag="check_peer"):
    """The server lost (active=True) or got back (active=False) this peer's control connection."""

    node_id: NodeId
    active: bool = True


class Error(_Msg, tag="error"):
    """Fatal for the session: the sender closes right after."""

    code: ErrorCode
    message: Text


ClientMessage = Union[
    Login, Logout, Ping, ResyncRequest, PeerReport, Candidates, CreateNetwork, JoinNetwork, LeaveNetwork, DeleteNetwork,
    SetOnline, SetNickname, SetPassword, SetAccess, Approve, Reject, Evict,
]
ServerMessage = Union[LoginOk, FullView, ViewUpdate, Result, Pong, CheckPeer, Error]

_client_decoder = msgspec.msgpack.Decoder(ClientMessage)
_server_decoder = msgspec.msgpack.Decoder(ServerMessage)
_encoder = msgspec.msgpack.Encoder()
_VERSION_BYTE = bytes([PROTOCOL_VERSION])


class ProtocolError(ValueError):
    """The peer sent something malformed, too big, of another version, or unexpected."""


def encode(message: _Msg) -> bytes:
    """Version byte + msgpack of one message."""
    return _VERSION_BYTE + _encoder.encode(message)


def _decode(frame: bytes, decoder: msgspec.msgpack.Decoder, limit: int | None):  # noqa: ANN202
    if limit is not None and len(frame) > limit:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds the limit of {limit}")
    if not frame:
        raise ProtocolError("empty frame")
    if frame[0] != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {frame[0]} (we speak {PROTOCOL_VERSION})")
    try:
        return decoder.decode(memoryview(frame)[1:])
    except (msgspec.DecodeError, UnicodeDecodeError) as e:  # ValidationError is a DecodeError
        raise ProtocolError(f"malformed message: {e}") from None


def decode_client(frame: bytes) -> ClientMessage:
    """Decode a frame a client sent (server side)."""
    return _decode(frame, _client_decoder, MAX_CLIENT_FRAME)


def decode_server(frame: bytes) -> ServerMessage:
    """Decode a frame the server sent (client side)."""
    return _decode(frame, _server_decoder, MAX_SERVER_FRAME)


def decode_stored_view(frame: bytes) -> ServerMessage:
    """Decode a view the node stored itself (`encode` of a whole FullView it applied): the
    field limits hold, the frame limit does not (a view joined from parts may exceed it; the
    daemon authenticates the file before decoding it)."""
    return _decode(frame, _server_decoder, None)


# ---------------------------------------------------------------- large views (parts)

ViewMessage = Union[FullView, ViewUpdate]
_LIST_HEADER = 5  # bytes a msgpack array header may take beyond the one of an empty list
_RECORD_LISTS = ("networks_removed", "peers_removed", "networks_upsert", "peers_upsert")


def is_continuation(msg: ViewMessage) -> bool:
    """A later part of a split view message (only parts have version == prev_version)."""
    return isinstance(msg, ViewUpdate) and msg.version == msg.prev_version


def split_view(view: ViewMessage, limit: int = VIEW_PART_BYTES) -> list[ViewMessage]:
    """`view` as parts whose frames are at most `limit` bytes ("Large views"); [view] if it fits.

    Each part gets whole records, as many as fit; a record bigger than `limit` alone gets a part
    of its own (over the limit). Joining the parts (`ViewParts`) gives back `view`."""
    if is_continuation(view) or view.more:
        raise ValueError("split_view takes a whole view message, not a part")
    if len(encode(view)) <= limit:
        return [view]
    if isinstance(view, FullView):
        first: ViewMessage = msgspec.structs.replace(view, networks=[], peers=[], more=True)
        records = [("networks_upsert", n) for n in view.networks] + [("peers_upsert", p) for p in view.peers]
    else:
        first = msgspec.structs.replace(view, networks_upsert=[], networks_removed=[], peers_upsert=[],
                                        peers_removed=[], more=True)
        records = [(f, r) for f in _RECORD_LISTS for r in getattr(view, f)]
    target = view.version  # what every continuation names as prev_version and version
    parts: list[ViewMessage] = []
    shell: ViewMessage = first
    lists: dict[str, list[object]] = {f: [] for f in _RECORD_LISTS}
    used = len(encode(shell)) + _LIST_HEADER * len(_RECORD_LISTS)
    for field_name, record in records:
        size = len(_encoder.encode(record))
        if used + size > limit and any(lists.values()):
            parts.append(_fill(shell, lists))
            shell = ViewUpdate(prev_version=target, version=target, more=True)
            lists = {f: [] for f in _RECORD_LISTS}
            used = len(encode(shell)) + _LIST_HEADER * len(_RECORD_LISTS)
        lists[field_name].append(record)
        used += size
    parts.append(_fill(shell, lists))
    parts[-1] = msgspec.structs.replace(parts[-1], more=False)
    return parts


def _fill(shell: ViewMessage, lists: dict[str, list[object]]) -> ViewMessage:
    if isinstance(shell, FullView):
        return msgspec.structs.replace(shell, networks=lists["networks_upsert"], peers=lists["peers_upsert"])
    return msgspec.structs.replace(shell, **lists)


class PartsError(ProtocolError):
    """A view part out of sequence: what was staged is dropped (the receiver resyncs)."""


class ViewParts:
    """A receiver's staging of split view messages ("Large views"); holds at most one.

    `feed(msg)` gives the whole message once complete (a message that is not a part: itself),
    None while parts are still missing, and raises PartsError on a part out of sequence: then
    nothing is staged any more, and the remaining parts of that message are ignored (None), so
    one broken message costs one resync. The whole is bounded like one message: at most
    MAX_NETWORKS networks and MAX_PEERS peers in each list."""

    def __init__(self) -> None:
        self._first: ViewMessage | None = None
        self._lists: dict[str, list[object]] = {}
        self._ignoring: int | None = None  # the version of a dropped split message

    @property
    def staged(self) -> bool:
        return self._first is not None

    def clear(self) -> None:
        self._first, self._lists, self._ignoring = None, {}, None

    def _drop(self, ignoring: int | None, why: str) -> PartsError:
        self.clear()
        self._ignoring = ignoring
        return PartsError(why)

    def feed(self, msg: ViewMessage) -> ViewMessage | None:
        first = self._first
        if is_continuation(msg):
            assert isinstance(msg, ViewUpdate)
            if first is None or msg.version != first.version:
                if first is None and msg.version == self._ignoring:
                    if not msg.more:
                        self._ignoring = None
                    return None
                why = "nothing staged" if first is None else f"version {msg.version}, staged {first.version}"
                raise self._drop(msg.version if msg.more else None, f"unexpected view part ({why})")
            if isinstance(first, FullView) and (msg.networks_removed or msg.peers_removed):
                raise self._drop(first.version if msg.more else None, "a part of a FullView removes records")
            for f in _RECORD_LISTS:
                self._lists[f].extend(getattr(msg, f))
                if len(self._lists[f]) > (MAX_NETWORKS if f.startswith("networks") else MAX_PEERS):
                    raise self._drop(first.version if msg.more else None,
                                     f"split view with more {f} than one message may carry")
            if msg.more:
                return None
            whole = _fill(msgspec.structs.replace(first, more=False), self._lists)
            self.clear()
            return whole
        if first is not None and isinstance(msg, ViewUpdate):
            raise self._drop(first.version,
                             f"view update {msg.prev_version}->{msg.version} while a split view was staged")
        self.clear()
        if not msg.more:
            return msg
        self._first = msg
        if isinstance(msg, FullView):
            self._lists = {"networks_upsert": list(msg.networks), "peers_upsert": list(msg.peers),
                           "networks_removed": [], "peers_removed": []}
        else:
            self._lists = {f: list(getattr(msg, f)) for f in _RECORD_LISTS}
        return None
