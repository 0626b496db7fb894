"""Parser for wg-quick style configuration files (what `shoal wg up CONFIG` reads).

Format (INI-like, as wg-quick(8) and wg(8)); keys are case-insensitive, `#` starts a comment:

    [Interface]
    PrivateKey = <base64>            required
    ListenPort = 51820               optional, 0/absent = random
    Address = 100.64.0.1/24, fd7a::1/64   optional, repeatable, comma separated
    MTU = 1420                       optional (default 1420)
    Table = auto | off               optional: off = do not add routes for AllowedIPs
    PreUp/PostUp/PreDown/PostDown = <shell command>   optional, repeatable; %i = interface name

    [Peer]                           zero or more
    PublicKey = <base64>             required
    PresharedKey = <base64>          optional
    AllowedIPs = 100.64.0.2/32, ::/0 optional, repeatable, comma separated
    Endpoint = 192.0.2.1:51820 | [2001:db8::1]:51820 | host:port   optional
    PersistentKeepalive = 25 | off   optional

Every error is a `ConfigError` whose message names the file and line; the parser never
touches the system, so a bad file leaves nothing half-configured.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from pathlib import Path

from shoal.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from shoal.wireguard.peer import Endpoint, IPNetwork, PeerConfig

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
MIN_MTU = 576  # wireguard-go refuses less than the IPv4 minimum; we require room for IPv4
MAX_MTU = 65535 - 80


class ConfigError(ValueError):
    """A configuration file is wrong; the message names the place."""


@dataclasses.dataclass(slots=True)
class InterfaceConfig:
    private_key: PrivateKey
    listen_port: int = 0
    addresses: list[IPInterface] = dataclasses.field(default_factory=list)
    mtu: int = 1420
    table: bool = True
    pre_up: list[str] = dataclasses.field(default_factory=list)
    post_up: list[str] = dataclasses.field(default_factory=list)
    pre_down: list[str] = dataclasses.field(default_factory=list)
    post_down: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class WgConfig:
    name: str
    interface: InterfaceConfig
    peers: list[PeerConfig]


def interface_name_for(path: Path) -> str:
    name = path.stem if path.suffix == ".conf" else path.name
    if not (1 <= len(name) <= 15) or not all(c.isalnum() or c in "_=+.-" for c in name):
        raise ConfigError(f"{path}: '{name}' is not a valid interface name (1-15 of [a-zA-Z0-9_=+.-])")
    return name


def parse_endpoint(value: str) -> Endpoint:
    """'1.2.3.4:51820', '[2001:db8::1]:51820' or 'host:port' -> (ip, port)."""
    if value.startswith("["):
        host, sep, port_s = value[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad endpoint '{value}' (expected [IPv6]:port)")
    else:
        host, sep, port_s = value.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"bad endpoint '{value}' (expected host:port)")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"bad endpoint port '{port_s}'") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"endpoint port {port} out of range 1-65535")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as e:
            raise ValueError(f"cannot resolve endpoint host '{host}': {e}") from None
        ip = ipaddress.ip_address(infos[0][4][0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (str(ip), port)


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _parse_network(item: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(item, strict=False)
    except ValueError:
        raise ValueError(f"bad CIDR '{item}'") from None


def _parse_key(kind: type, value: str):  # noqa: ANN202 - returns the key type asked for
    try:
        return kind.from_base64(value)
    except ValueError as e:
        raise ValueError(f"bad key: {e}") from None


def parse(text: str, *, name: str = "wg0", source: str = "<config>") -> WgConfig:
    """Parse a whole config file's text. Raises `ConfigError` naming `source:line`."""
    interface: dict[str, object] = {}
    iface_lists: dict[str, list] = {"address": [], "preup": [], "postup": [], "predown": [], "postdown": []}
    peers: list[tuple[int, dict[str, object]]] = []
    section: str | None = None
    seen_interface = False
    current: dict[str, object] = {}

    for lineno, raw in enumerate(text.splitlines(), 1):
        where = f"{source}:{lineno}"
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"{where}: malformed section header '{line}'")
            title = line[1:-1].strip().lower()
            if title == "interface":
                if seen_interface:
                    raise ConfigError(f"{where}: a second [Interface] section")
                seen_interface = True
                section = "interface"
            elif title == "peer":
                section = "peer"
                current = {"allowedips": [], "_line": lineno}
                peers.append((lineno, current))
            else:
                raise ConfigError(f"{where}: unknown section [{line[1:-1].strip()}]")
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{where}: expected 'Key = Value', got '{line}'")
        shown_key = key.strip()
        key = shown_key.lower()
        value = value.strip()
        if section is None:
            raise ConfigError(f"{where}: '{key}' outside of any section")
        try:
            if section == "interface":
                if key == "privatekey":
                    interface[key] = _parse_key(PrivateKey, value)
                elif key == "listenport":
                    port = int(value)
                    if not 0 <= port <= 65535:
                        raise ValueError(f"ListenPort {port} out of range 0-65535")
                    interface[key] = port
                elif key == "mtu":
                    mtu = int(value)
                    if not MIN_MTU <= mtu <= MAX_MTU:
                        raise ValueError(f"MTU {mtu} out of range {MIN_MTU}-{MAX_MTU}")
                    interface[key] = mtu
                elif key == "address":
                    for item in _split_list(value):
                        try:
                            iface_lists["address"].append(ipaddress.ip_interface(item))
                        except ValueError:
                            raise ValueError(f"bad address '{item}'") from None
                elif key == "table":
                    if value.lower() not in ("auto", "off"):
                        raise ValueError("Table must be 'auto' or 'off' (routing tables are not supported)")
                    interface[key] = value.lower() == "auto"
                elif key in ("preup", "postup", "predown", "postdown"):
                    iface_lists[key].append(value)
                elif key in ("dns", "saveconfig", "fwmark"):
                    raise ValueError(f"'{shown_key}' is not supported by shoal wg")
                else:
                    raise ValueError(f"unknown key '{shown_key}' in [Interface]")
            else:
                if key == "publickey":
                    current[key] = _parse_key(PublicKey, value)
                elif key == "presharedkey":
                    current[key] = _parse_key(PresharedKey, value)
                elif key == "allowedips":
                    current["allowedips"].extend(_parse_network(i) for i in _split_list(value))  # type: ignore[union-attr]
                elif key == "endpoint":
                    current[key] = parse_endpoint(value)
                elif key == "persistentkeepalive":
                    interval = 0 if value.lower() == "off" else int(value)
                    if not 0 <= interval <= 65535:
                        raise ValueError(f"PersistentKeepalive {interval} out of range 0-65535")
                    current[key] = interval
                else:
                    raise ValueError(f"unknown key '{shown_key}' in [Peer]")
        except ValueError as e:
            msg = str(e)
            if msg.startswith("invalid literal for int()"):
                msg = f"{shown_key}: '{value}' is not a number"
            raise ConfigError(f"{where}: {msg}") from None

    if not seen_interface:
        raise ConfigError(f"{source}: no [Interface] section")
    if "privatekey" not in interface:
        raise ConfigError(f"{source}: [Interface] has no PrivateKey")
    private_key = interface["privatekey"]
    assert isinstance(private_key, PrivateKey)
    own_public = private_key.public_key()
    peer_configs: list[PeerConfig] = []
    seen_keys: set[PublicKey] = set()
    for lineno, p in peers:
        where = f"{source}:{lineno}"
        public = p.get("publickey")
        if public is None:
            raise ConfigError(f"{where}: [Peer] has no PublicKey")
        assert isinstance(public, PublicKey)
        if public in seen_keys:
            raise ConfigError(f"{where}: duplicate peer {public.to_base64()}")
        if public == own_public:
            raise ConfigError(f"{where}: peer has this interface's own public key")
        seen_keys.add(public)
        peer_configs.append(
            PeerConfig(
                public_key=public,
                preshared_key=p.get("presharedkey"),  # type: ignore[arg-type]
                allowed_ips=list(p["allowedips"]),  # type: ignore[call-overload]
                endpoint=p.get("endpoint"),  # type: ignore[arg-type]
                persistent_keepalive=int(p.get("persistentkeepalive", 0)),  # type: ignore[call-overload]
            )
        )
    return WgConfig(
        name=name,
        interface=InterfaceConfig(
            private_key=private_key,
            listen_port=int(interface.get("listenport", 0)),  # type: ignore[call-overload]
            addresses=iface_lists["address"],
            mtu=int(interface.get("mtu", 1420)),  # type: ignore[call-overload]
            table=bool(interface.get("table", True)),
            pre_up=iface_lists["preup"],
            post_up=iface_lists["postup"],
            pre_down=iface_lists["predown"],
            post_down=iface_lists["postdown"],
        ),
        peers=peer_configs,
    )


def load(path: str | Path) -> WgConfig:
    """Read a config file; `path` may also be a bare interface name (-> /etc/wireguard/NAME.conf)."""
    p = Path(path)
    if not p.exists() and "/" not in str(path) and not str(path).endswith(".conf"):
        p = Path("/etc/wireguard") / f"{path}.conf"
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file") from None
    return parse(text, name=interface_name_for(p), source=str(p))
