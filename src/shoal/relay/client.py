"""The node's side of a relay (sans-IO): authenticate with the node key, wrap outgoing
payloads in SEND, unwrap RECV, keep the binding alive and re-authenticate when told.

Owns: one node's state towards one relay: idle -> challenged -> ready. Frames and the
handshake: `shoal.relay.frames`, `shoal.relay.engine`. The caller moves bytes:

    client = RelayClient(node_key, relay_public)
    out = client.start(now)              HELLO to send
    out = client.receive(frame, now)     frames to send back (AUTH after CHALLENGE, HELLO
                                         after ERROR unauthenticated); delivered packets
                                         land in client.inbox as (src_key, payload), errors
                                         about destinations in client.errors
    frame = client.wrap(dst_key, payload)   SEND (ClientNotReady before AUTH_OK)
    frame = client.keepalive()              KEEPALIVE, at least every RELAY_KEEPALIVE_INTERVAL

Anything a relay sends that does not verify (AUTH_OK with a wrong proof: not our relay) is
counted in `stats` and ignored; nothing raises for network input.
"""

from __future__ import annotations

from collections import Counter

from shoal.relay import frames as f
from shoal.relay.engine import auth_key, node_proof, relay_proof
from shoal.wireguard.crypto import DH, constant_time_eq
from shoal.wireguard.keys import PrivateKey, PublicKey

__all__ = ["RelayClient", "ClientNotReady"]


class ClientNotReady(RuntimeError):
    """wrap()/keepalive() before the relay accepted us (caller misuse)."""


class RelayClient:
    def __init__(self, node_key: PrivateKey, relay_public: PublicKey) -> None:
        self.node_public: bytes = bytes(node_key.public_key())
        self.relay_public: bytes = bytes(relay_public)
        self._k = auth_key(DH(node_key, relay_public))
        self.state = "idle"
        self.token: bytes | None = None
        self.timeout: int | None = None
        self._nonce: bytes | None = None
        self.inbox: list[tuple[bytes, bytes]] = []
        self.errors: list[tuple[int, bytes]] = []
        self.stats: Counter[str] = Counter()

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def start(self, now: float) -> bytes:
        self.state = "challenged"
        self.token = None
        return f.Hello(self.node_public).encode()

    def wrap(self, dst_key: bytes, payload: bytes) -> bytes:
        if self.token is None:
            raise ClientNotReady("the relay has not accepted this node yet")
        return f.encode_send(self.token, bytes(dst_key), payload)

    def keepalive(self) -> bytes:
        if self.token is None:
            raise ClientNotReady("the relay has not accepted this node yet")
        return f.Keepalive(self.token).encode()

    def receive(self, data: bytes, now: float) -> list[bytes]:
        try:
            frame = f.parse(data)
        except f.FrameError:
            self.stats["malformed"] += 1
            return []
        if isinstance(frame, f.Recv):
            self.inbox.append((frame.src_key, frame.payload))
            return []
        if isinstance(frame, f.Challenge):
            if self.state != "challenged":
                self.stats["unexpected"] += 1
                return []
            self._nonce = frame.nonce
            proof = node_proof(self._k, frame.nonce, self.node_public, self.relay_public)
            return [f.Auth(self.node_public, frame.nonce, proof).encode()]
        if isinstance(frame, f.AuthOk):
            if self._nonce is None or not constant_time_eq(
                    frame.proof, relay_proof(self._k, self._nonce, frame.token, self.node_public)):
                self.stats["forged_auth_ok"] += 1
                return []
            self.token, self.timeout, self._nonce = frame.token, frame.timeout, None
            self.state = "ready"
            return []
        if isinstance(frame, f.Pong):
            self.stats["pong"] += 1
            return []
        if isinstance(frame, f.Error):
            if frame.code == f.ERR_UNAUTHENTICATED:
                self.stats["reauth"] += 1
                return [self.start(now)]
            self.errors.append((frame.code, frame.key))
            if frame.code in (f.ERR_AUTH_REFUSED, f.ERR_FULL):
                self.state = "idle"
            return []
        self.stats["unexpected"] += 1
        return []
