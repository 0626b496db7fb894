"""The node's identity on disk: its key and the server it pinned.

Files in the state directory (default /var/lib/shoal, mode 0700):

    node.key     the node's X25519 private key, base64 + newline, mode 0600, made on first
                 start. A key file readable by group/others is refused (a leaked node key is
                 a stolen identity), as is a malformed one: we never silently make a new key
                 over an existing file.
    server.json  {"url": "http://192.0.2.1:8080", "public_key": "<base64>"}: the server this
                 node logged in to and the static key it pinned (given with --server-key, or
                 trust-on-first-use). The control connection refuses any other key.
    view.bin     the last view (a FullView frame, shoal.control.messages encoding) so that a
                 restarted daemon brings its tunnels back before the server answers.

Writes are atomic (temp file + rename) so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from shoal.wireguard.keys import PrivateKey, PublicKey

NODE_KEY = "node.key"
SERVER_PIN = "server.json"
VIEW_FILE = "view.bin"


class IdentityError(RuntimeError):
    """The state directory holds something we must not use; the message says what and how to fix."""


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_state_dir(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


def load_or_create_node_key(state_dir: Path) -> tuple[PrivateKey, bool]:
    """The node key, made on first start. Returns (key, created)."""
    ensure_state_dir(state_dir)
    path = state_dir / NODE_KEY
    try:
        st = path.stat()
    except FileNotFoundError:
        key = PrivateKey.generate()
        _write_atomic(path, key.to_base64().encode() + b"\n", 0o600)
        return key, True
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path} is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {path}"
        )
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
    """http://h:p -> ws://h:p/control (https -> wss)."""
    base = normalize_server_url(server_url)
    scheme, rest = base.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/control"


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
        data = json.loads(path.read_text())
        return ServerPin(normalize_server_url(data["url"]), PublicKey.from_base64(data["public_key"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise IdentityError(f"{path} is damaged ({e}); run `shoal logout` and log in again") from None


def save_pin(state_dir: Path, pin: ServerPin) -> None:
    ensure_state_dir(state_dir)
    _write_atomic(state_dir / SERVER_PIN, (json.dumps(pin.to_json(), indent=1) + "\n").encode(), 0o600)


def clear_pin(state_dir: Path) -> None:
    (state_dir / SERVER_PIN).unlink(missing_ok=True)
    (state_dir / VIEW_FILE).unlink(missing_ok=True)


def save_view(state_dir: Path, frame: bytes) -> None:
    _write_atomic(state_dir / VIEW_FILE, frame, 0o600)


def load_view(state_dir: Path) -> bytes | None:
    try:
        return (state_dir / VIEW_FILE).read_bytes()
    except FileNotFoundError:
        return None
