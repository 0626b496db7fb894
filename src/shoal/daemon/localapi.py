"""The daemon's local API: JSON over HTTP/1.1 on a unix socket, who may use it, and the client.

Wire format (a strict subset of HTTP/1.1; one request per connection, the server closes after
answering):

    request   METHOD SP PATH SP "HTTP/1.1" CRLF        METHOD: GET | POST
              headers CRLF ... CRLF                    at most MAX_HEADER_BYTES in all;
                                                       Content-Length (decimal, at most
                                                       MAX_BODY_BYTES); no Transfer-Encoding
              body                                     a JSON object, or empty
    response  "HTTP/1.1" SP STATUS SP REASON CRLF
              Content-Type: application/json, Content-Length, Connection: close
              body: {"ok": true, ...} or {"ok": false, "code": "...", "message": "one line"}

`RequestParser` is sans-IO (bytes in, a `Request` or "need more" out); anything malformed
raises `HttpError(status, message)`, which the server answers as a JSON error.

Access (checked per connection from the kernel's credentials of the peer, taken at connect
time, never from /proc by pid): uid 0 (SO_PEERCRED) always; and only when the daemon was started
with `--socket-group G`, a process whose primary gid (SO_PEERCRED) or supplementary groups
(SO_PEERGROUPS) include G. Without `--socket-group` the API is root only: gid 0 alone admits
nobody. Everyone else gets 403. The socket is made with mode 0660 (owner root, group G or
root's), so the kernel's own permission check on connect() agrees with this rule.

Endpoints are listed in `shoal.daemon.api.ApiHandlers.routes`, their replies in
`shoal.daemon.apitypes`; the CLI uses `ApiClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

log = logging.getLogger("shoal.daemon.api")

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
READ_TIMEOUT = 10.0
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 411: "Length Required", 413: "Payload Too Large", 500: "Internal Server Error",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: dict[str, Any]


class RequestParser:
    """Feed bytes; `request` is set once a whole request arrived."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._head: tuple[str, str, int] | None = None
        self.request: Request | None = None

    def feed(self, data: bytes) -> Request | None:
        if self.request is not None:
            return self.request
        self._buf += data
        if self._head is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEADER_BYTES:
                    raise HttpError(413, "request headers too large")
                return None
            if end > MAX_HEADER_BYTES:
                raise HttpError(413, "request headers too large")
            self._head = self._parse_head(bytes(self._buf[:end]))
            del self._buf[: end + 4]
        method, path, length = self._head
        if len(self._buf) < length:
            return None
        raw = bytes(self._buf[:length])
        body: Any = {}
        if raw.strip():
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise HttpError(400, f"body is not valid JSON: {e}") from None
            if not isinstance(body, dict):
                raise HttpError(400, "body must be a JSON object")
        self.request = Request(method, path, body)
        return self.request

    @staticmethod
    def _parse_head(head: bytes) -> tuple[str, str, int]:
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            raise HttpError(400, "request head is not ASCII") from None
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, "malformed request line")
        method, path, _ = parts
        if method not in ("GET", "POST"):
            raise HttpError(405, f"method {method[:16]} not allowed", "method_not_allowed")
        if not path.startswith("/"):
            raise HttpError(400, "malformed path")
        length = 0
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(400, "malformed header line")
            name = name.strip().lower()
            if name == "transfer-encoding":
                raise HttpError(501, "Transfer-Encoding is not supported; send Content-Length", "not_implemented")
            if name == "content-length":
                value = value.strip()
                if not value.isdigit():
                    raise HttpError(400, "bad Content-Length")
                length = int(value)
                if length > MAX_BODY_BYTES:
                    raise HttpError(413, f"body larger than {MAX_BODY_BYTES} bytes")
        return method, path.split("?", 1)[0], length


def response_bytes(status: int, payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload).encode()
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def error_payload(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message}


# ------------------------------------------------------------------------ access rule


def authorized(uid: int, gids: set[int], group: int | None) -> bool:
    """uid 0 always; a member of `group` (the configured --socket-group) only if one was set."""
    return uid == 0 or (group is not None and group in gids)


SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
_MAX_PEER_GROUPS = 256  # Python caps getsockopt buffers at 1024 bytes; more groups: primary gid only


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix stream socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def peer_groups(sock: socket.socket, gid: int) -> set[int]:
    """The peer's primary gid plus its supplementary groups as the kernel recorded them at
    connect time (SO_PEERGROUPS); just the primary gid where the kernel lacks the option."""
    groups = {gid}
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * _MAX_PEER_GROUPS)
    except OSError:
        return groups
    n = len(raw) // 4
    groups.update(struct.unpack(f"{n}I", raw[:4 * n]))
    return groups


# ------------------------------------------------------------------------ server glue

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | msgspec.Struct]]


def success_payload(reply: dict[str, Any] | msgspec.Struct) -> dict[str, Any]:
    """{"ok": true, ...the reply's fields}; a Struct is encoded field by field, in order."""
    fields = reply if isinstance(reply, dict) else msgspec.to_builtins(reply)
    return {"ok": True, **fields}


class ApiServer:
    """Serves `routes` {(method, path): handler} on a unix socket. A handler returns the JSON
    payload of a success (a dict or a msgspec Struct) or raises HttpError; anything else becomes
    a 500 with one line."""

    def __init__(self, path: Path, routes: dict[tuple[str, str], Handler], *, group: int | None = None) -> None:
        self.path = path
        self.routes = routes
        self.group = group
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self.path.exists():
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_unix_connection(str(self.path))
                w.close()
                raise RuntimeError(f"another daemon answers on {self.path}")
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)
        if self.group is not None:
            os.chown(self.path, -1, self.group)
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        status, payload = 500, error_payload("internal", "internal error")
        allowed = False
        try:
            sock = writer.get_extra_info("socket")
            pid, uid, gid = peer_credentials(sock)
            allowed = authorized(uid, peer_groups(sock, gid) if self.group is not None else {gid}, self.group)
            parser = RequestParser()
            request = None
            while request is None:  # read the request first, so that a refusal is read as an answer
                data = await asyncio.wait_for(reader.read(65536), READ_TIMEOUT)
                if not data:
                    return
                request = parser.feed(data)
            if not allowed:  # decided by the credentials taken at connect time, never by the request
                log.warning("local API: refused uid %d (pid %d)", uid, pid)
                raise HttpError(403, "permission denied: only root or members of the socket's group may use shoald", "forbidden")
            handler = self.routes.get((request.method, request.path))
            if handler is None:
                if any(p == request.path for _, p in self.routes):
                    raise HttpError(405, f"{request.method} not allowed on {request.path}", "method_not_allowed")
                raise HttpError(404, f"no such endpoint {request.path[:100]}", "not_found")
            status, payload = 200, success_payload(await handler(request.body))
        except HttpError as e:
            if not allowed and e.status != 403:  # a stranger learns nothing about the API
                e = HttpError(403, "permission denied: only root or members of the socket's group may use shoald", "forbidden")
            status, payload = e.status, error_payload(e.code, e.message)
        except (asyncio.TimeoutError, ConnectionError):
            return
        except Exception as e:  # noqa: BLE001 - the API answers, the daemon keeps running
            log.exception("local API handler failed")
            status, payload = 500, error_payload("internal", f"internal error: {type(e).__name__}: {e}")
        try:
            writer.write(response_bytes(status, payload))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


# ------------------------------------------------------------------------ client (the CLI)


class ApiError(Exception):
    """A failed call; `message` is one line for the user, `code` machine-readable."""

    def __init__(self, message: str, code: str = "error", status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


class ApiClient:
    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, method: str, endpoint: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        conn = _UnixConnection(str(self.path), self.timeout)
        try:
            data = json.dumps(body or {}).encode()
            try:
                conn.request(method, endpoint, body=data if method == "POST" else None,
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                raw = response.read()
            except (FileNotFoundError, ConnectionRefusedError):
                raise ApiError(f"the shoal daemon is not running (no daemon on {self.path}); start it with `shoal daemon`",
                               "not_running") from None
            except PermissionError:
                raise ApiError(f"permission denied on {self.path}: run as root or as a member of its group",
                               "forbidden") from None
            except TimeoutError:
                raise ApiError(f"the shoal daemon did not answer within {self.timeout:.0f} s", "timeout") from None
            except (OSError, http.client.HTTPException) as e:
                raise ApiError(f"cannot talk to the shoal daemon on {self.path}: {e}", "io") from None
        finally:
            conn.close()
        try:
            payload = json.loads(raw)
        except ValueError:
            raise ApiError(f"the shoal daemon answered something that is not JSON (HTTP {response.status})", "io") from None
        if not isinstance(payload, dict) or not payload.get("ok"):
            p = payload if isinstance(payload, dict) else {}
            raise ApiError(str(p.get("message") or f"HTTP {response.status}"), str(p.get("code", "error")), response.status)
        return payload
