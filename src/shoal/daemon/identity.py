"""The node's identity on disk: its key and the server it pinned.

Files in the state directory (default /var/lib/shoal, mode 0700):

    node.key     the node's X25519 private key, base64 + newline, mode 0600, made on first
                 start. A key file readable by group/others is refused (a leaked node key is
                 a stolen identity), as is a malformed one: we never silently make a new key
                 over an existing file.
    server.json  {"url": "http://192.0.2.1:8080", "public_key": "<base64>"}: the server this
                 node logged in to and the static key it pinned (given with --server-key, or
                 trust-on-first-use). The control connection refuses any other key.
    view.bin     the last view, so that a restarted daemon brings its tunnels back before the
                 server answers (also while the server is down). Authenticated, so that a
                 local file edit (or a copied file) cannot add peers:

                     offset size field
                     0      4    magic b"SHV1"
                     4      32   MAC = BLAKE2s-256(key=K, data=frame),
                                 K = BLAKE2s-256(key=node private key, data=b"shoal view.bin v1")
                     36     n    a FullView frame (shoal.control.messages encoding)

                 Only the holder of node.key can make a file this node accepts; the file of
                 another node, an edited or a truncated one is refused (the daemon starts
                 with an empty view and waits for the server, saying why in its log).

Writes are atomic (a fresh 0600 temp file made with O_EXCL, fsync, rename:
`shoal.securefile.write_private`) so a crash never leaves half a file and a planted temp
file or symlink is never followed. An existing state dir or file that group/others can reach,
that is not ours or is a symlink is refused with the chmod/chown that fixes it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from shoal.control import transport
from shoal.securefile import PrivateFileError, check_private_file, ensure_private_dir, write_private
from shoal.wireguard.keys import PrivateKey, PublicKey

NODE_KEY = "node.key"
SERVER_PIN = "server.json"
VIEW_FILE = "view.bin"
VIEW_MAGIC = b"SHV1"
_VIEW_KEY_LABEL = b"shoal view.bin v1"
_MAC_LEN = 32


class IdentityError(RuntimeError):
    """The state directory holds something we must not use; the message says what and how to fix."""


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        write_private(path, data)
    except PrivateFileError as e:
        raise IdentityError(str(e)) from None


def ensure_state_dir(state_dir: Path) -> None:
    """Make the state dir 0700, or refuse an existing one group/others can reach (or a symlink)."""
    try:
        ensure_private_dir(state_dir)
    except PrivateFileError as e:
        raise IdentityError(str(e)) from None


def load_or_create_node_key(state_dir: Path) -> tuple[PrivateKey, bool]:
    """The node key, made on first start. Returns (key, created)."""
    ensure_state_dir(state_dir)
    path = state_dir / NODE_KEY
    try:
        exists = check_private_file(path)
    except PrivateFileError as e:
        raise IdentityError(str(e)) from None
    if not exists:
        key = PrivateKey.generate()
        _write_atomic(path, key.to_base64().encode() + b"\n")
        return key, True
    try:
        return PrivateKey.from_base64(path.read_text()), False
    except (ValueError, UnicodeDecodeError) as e:
        raise IdentityError(f"{path} is not a node key ({e}); move it away to make a new identity") from None


def normalize_server_url(url: str) -> str:
    """'192.0.2.1:8080', 'http://192.0.2.1:8080/' -> 'http://192.0.2.1:8080' (scheme http/https)."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"'{url}' is not a server URL (expected http://HOST:PORT)")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"'{url}' has a bad port") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"'{url}' should be just http://HOST:PORT (no path)")
    return f"{parts.scheme}://{parts.netloc}"


def control_url(server_url: str) -> str:
    """http://h:p -> ws://h:p/control (https -> wss): the pinned URL checked, then the one
    conversion of `shoal.control.transport.control_url`."""
    return transport.control_url(normalize_server_url(server_url))


@dataclass(frozen=True)
class ServerPin:
    url: str  # normalized http(s)://host:port
    public_key: PublicKey

    @property
    def fingerprint(self) -> str:
        return self.public_key.fingerprint()

    def to_json(self) -> dict[str, str]:
        return {"url": self.url, "public_key": self.public_key.to_base64()}


def load_pin(state_dir: Path) -> ServerPin | None:
    path = state_dir / SERVER_PIN
    try:
        check_private_file(path)
        data = json.loads(path.read_text())
        return ServerPin(normalize_server_url(data["url"]), PublicKey.from_base64(data["public_key"]))
    except FileNotFoundError:
        return None
    except PrivateFileError as e:
        raise IdentityError(str(e)) from None
    except (ValueError, KeyError, TypeError) as e:
        raise IdentityError(f"{path} is damaged ({e}); run `shoal logout` and log in again") from None


def save_pin(state_dir: Path, pin: ServerPin) -> None:
    ensure_state_dir(state_dir)
    _write_atomic(state_dir / SERVER_PIN, (json.dumps(pin.to_json(), indent=1) + "\n").encode())


def clear_pin(state_dir: Path) -> None:
    (state_dir / SERVER_PIN).unlink(missing_ok=True)
    (state_dir / VIEW_FILE).unlink(missing_ok=True)


class ViewRefused(IdentityError):
    """view.bin exists but is not one this node wrote (edited, truncated, another node's)."""


def _view_mac(node_key: PrivateKey, frame: bytes) -> bytes:
    k = hashlib.blake2s(_VIEW_KEY_LABEL, key=bytes(node_key)).digest()
    return hashlib.blake2s(frame, key=k).digest()


def seal_view(node_key: PrivateKey, frame: bytes) -> bytes:
    return VIEW_MAGIC + _view_mac(node_key, frame) + frame


def open_view(node_key: PrivateKey, data: bytes) -> bytes:
    """The frame inside a sealed view; ViewRefused if it does not verify under this node key."""
    head = len(VIEW_MAGIC) + _MAC_LEN
    if len(data) < head or data[: len(VIEW_MAGIC)] != VIEW_MAGIC:
        raise ViewRefused("view.bin is not a sealed view (unknown format)")
    frame = data[head:]
    if not hmac.compare_digest(data[len(VIEW_MAGIC):head], _view_mac(node_key, frame)):
        raise ViewRefused("view.bin does not verify under this node's key (edited, damaged or another node's)")
    return frame


def save_view(state_dir: Path, node_key: PrivateKey, frame: bytes) -> None:
    _write_atomic(state_dir / VIEW_FILE, seal_view(node_key, frame))


def load_view(state_dir: Path, node_key: PrivateKey) -> bytes | None:
    """The stored view's frame, None without a file; ViewRefused for a file that does not verify."""
    try:
        data = (state_dir / VIEW_FILE).read_bytes()
    except FileNotFoundError:
        return None
    return open_view(node_key, data)
