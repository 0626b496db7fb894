"""The WireGuard cross-platform userspace API (UAPI), so stock `wg show|set|setconf` drive Shoal.

Transport: a unix stream socket at /var/run/wireguard/IFACE.sock (the adapter owns it). This
module is the pure protocol over one request. Wire format (text, one `key=value` per line, a
request and a response each end with an empty line):

    request  "get=1\\n\\n"
    response private_key=<hex>  listen_port=<n>  [fwmark=<n>]
             then per peer: public_key=<hex> preshared_key=<hex> protocol_version=1
             [endpoint=<ip:port|[ip6]:port>] last_handshake_time_sec=<n>
             last_handshake_time_nsec=<n> tx_bytes=<n> rx_bytes=<n>
             persistent_keepalive_interval=<n> allowed_ip=<cidr>...
             errno=0

    request  "get=stats\\n\\n" (Shoal's extension; stock tools never send it)
    response stat_<counter>=<n> per engine counter (drops by reason, handshakes, cookies), errno=0

    request  "set=1\\n" then lines of: private_key, listen_port, fwmark, replace_peers=true,
             public_key (starts a peer), remove=true, update_only=true, preshared_key,
             endpoint, persistent_keepalive_interval, replace_allowed_ips=true, allowed_ip,
             protocol_version=1
    response errno=0 (or an errno such as 22 EINVAL for a bad request; nothing is half-applied)

Keys are lowercase hex on this API (base64 is for humans). A set request is parsed and checked
whole before anything is applied.
"""

from __future__ import annotations

import dataclasses
import errno as errnos
import ipaddress
import socket
from pathlib import Path

from shoal.endpoint import text as endpoint_text
from shoal.wireguard.device import Device
from shoal.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from shoal.wireguard.peer import Endpoint, IPNetwork, PeerConfig

MAX_REQUEST_BYTES = 1 << 20


class UapiError(ValueError):
    def __init__(self, message: str, code: int = errnos.EINVAL) -> None:
        super().__init__(message)
        self.code = code


def query(socket_path: str | Path, request: str, timeout: float = 5.0) -> str:
    """Send one request to a UAPI socket (Shoal's or wireguard-go's); the response text.

    Raises OSError when nothing answers there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(socket_path))
        s.sendall(request.encode())
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode()


def get(device: Device, listen_port: int) -> str:
    lines = [f"private_key={device.private_key.hex()}", f"listen_port={listen_port}"]
    for peer in device.peers.values():
        lines.append(f"public_key={peer.public_key.hex()}")
        lines.append(f"preshared_key={peer.preshared_key.hex()}")
        lines.append("protocol_version=1")
        if peer.endpoint is not None:
            lines.append(f"endpoint={endpoint_text(peer.endpoint)}")
        wall = peer.stats.last_handshake_wall
        sec = int(wall)
        lines.append(f"last_handshake_time_sec={sec}")
        lines.append(f"last_handshake_time_nsec={int((wall - sec) * 1e9) if sec else 0}")
        lines.append(f"tx_bytes={peer.stats.tx_bytes}")
        lines.append(f"rx_bytes={peer.stats.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        lines.extend(f"allowed_ip={net}" for net in device.allowed_ips(peer))
    lines.append("errno=0")
    return "\n".join(lines) + "\n\n"


@dataclasses.dataclass(slots=True)
class _PeerOp:
    public_key: PublicKey
    remove: bool = False
    update_only: bool = False
    preshared_key: PresharedKey | None = None
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: list[IPNetwork] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class SetRequest:
    private_key: PrivateKey | None = None
    listen_port: int | None = None
    replace_peers: bool = False
    peers: list[_PeerOp] = dataclasses.field(default_factory=list)


def _parse_endpoint(value: str) -> Endpoint:
    from shoal.dataplane.config import parse_endpoint

    return parse_endpoint(value)


def parse_set(lines: list[str]) -> SetRequest:
    """Parse the lines after `set=1` (without the terminating empty line)."""
    req = SetRequest()
    peer: _PeerOp | None = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(f"malformed line '{line}'")
        try:
            if peer is None and key == "private_key":
                req.private_key = PrivateKey.from_hex(value)
            elif peer is None and key == "listen_port":
                port = int(value)
                if not 0 <= port <= 65535:
                    raise ValueError("port out of range")
                req.listen_port = port
            elif peer is None and key == "fwmark":
                if int(value or "0") != 0:
                    raise UapiError("fwmark is not supported", errnos.EOPNOTSUPP)
            elif peer is None and key == "replace_peers":
                req.replace_peers = value == "true"
            elif key == "public_key":
                peer = _PeerOp(PublicKey.from_hex(value))
                req.peers.append(peer)
            elif peer is None:
                raise UapiError(f"unknown or misplaced key '{key}'")
            elif key == "remove":
                peer.remove = value == "true"
            elif key == "update_only":
                peer.update_only = value == "true"
            elif key == "preshared_key":
                peer.preshared_key = PresharedKey.from_hex(value)
            elif key == "endpoint":
                peer.endpoint = _parse_endpoint(value)
            elif key == "persistent_keepalive_interval":
                interval = int(value)
                if not 0 <= interval <= 65535:
                    raise ValueError("interval out of range")
                peer.persistent_keepalive = interval
            elif key == "replace_allowed_ips":
                peer.replace_allowed_ips = value == "true"
            elif key == "allowed_ip":
                peer.allowed_ips.append(ipaddress.ip_network(value, strict=False))
            elif key == "protocol_version":
                if value != "1":
                    raise UapiError(f"protocol_version {value} not supported")
            else:
                raise UapiError(f"unknown key '{key}'")
        except UapiError:
            raise
        except ValueError as e:
            raise UapiError(f"bad value for '{key}': {e}") from None
    return req


def apply_set(device: Device, req: SetRequest, now: float) -> None:
    """Apply a parsed set request to the device (listen_port is the adapter's business)."""
    if req.private_key is not None:
        device.set_private_key(req.private_key)
    if req.replace_peers:
        for key in list(device.peers):
            device.remove_peer(key)
    for op in req.peers:
        existing = device.peers.get(op.public_key)
        if op.remove:
            device.remove_peer(op.public_key)
            continue
        if existing is None and op.update_only:
            continue
        if op.public_key == device.public_key:
            continue  # wg ignores a peer with our own key
        if existing is None:
            config = PeerConfig(public_key=op.public_key)
        else:
            config = device.peer_config(existing)
        if op.preshared_key is not None:
            config.preshared_key = op.preshared_key
        if op.endpoint is not None:
            config.endpoint = op.endpoint
        if op.persistent_keepalive is not None:
            config.persistent_keepalive = op.persistent_keepalive
        if op.replace_allowed_ips:
            config.allowed_ips = list(op.allowed_ips)
        else:
            config.allowed_ips = list(config.allowed_ips) + op.allowed_ips
        device.add_peer(config, now)


def handle(device: Device, request: str, listen_port: int, now: float) -> tuple[str, SetRequest | None]:
    """Answer one request. Returns (response text, the applied set request or None)."""
    lines = request.split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        return "errno=22\n\n", None
    if lines[0] == "get=1" and len(lines) == 1:
        return get(device, listen_port), None
    if lines[0] == "get=stats" and len(lines) == 1:
        stats = "".join(f"stat_{k}={v}\n" for k, v in sorted(device.stats.items()))
        return stats + "errno=0\n\n", None
    if lines[0] == "set=1":
        try:
            req = parse_set(lines[1:])
            apply_set(device, req, now)
        except UapiError as e:
            return f"errno={e.code}\n\n", None
        except ValueError:
            return "errno=22\n\n", None
        return "errno=0\n\n", req
    return "errno=22\n\n", None
