"""The node's side of a relay (sans-IO): authenticate with the node key, wrap outgoing
payloads in SEND, unwrap RECV, keep the binding alive and re-authenticate when told.

Owns: one node's state towards one relay: idle -> challenged -> ready, and the binding's
key (kb) that proves the relay's KEEPALIVE answers and ERRORs. Frames and the handshake:
`shoal.relay.frames`, `shoal.relay.engine`. The caller moves bytes:

    client = RelayClient(node_key, relay_public)
    out = client.start(now)              HELLO to send (and forget the binding)
    out = client.receive(frame, now)     frames to send back (AUTH after CHALLENGE, HELLO
                                         after a hint, see below); delivered packets land in
                                         client.inbox as (src_key, payload), proven errors
                                         about destinations in client.errors
    frame = client.wrap(dst_key, payload)   SEND (ClientNotReady before AUTH_OK)
    frame = client.keepalive()              KEEPALIVE, at least every RELAY_KEEPALIVE_INTERVAL

What the client believes (issue 18 F12: the relay's UDP address can be spoofed):
  - AUTH_OK only with the relay's proof for the nonce we answered (else forged_auth_ok);
  - PONG only with kb's tag and a seq we sent, newer than the last one (else forged_pong);
  - ERROR not member / unknown destination only with kb's tag, ERROR auth refused / full only
    with the refusal tag for our pending nonce (else forged_error, and nothing changes);
  - ERROR unauthenticated is never tagged (the relay does not know us): while ready, it is a
    hint: one HELLO at most every RELAY_HINT_INTERVAL seconds (reauth), the token and kb
    stay until a proven AUTH_OK replaces them, so a spoofed one resets nothing;
    hints beyond that are counted (hint_limited);
  - RECV only while bound (else unexpected); its payload is the peer's ciphertext, checked
    end to end by the receiver.
Anything else is counted in `stats` and ignored; nothing raises for network input.
"""

from __future__ import annotations

from collections import Counter

from shoal.constants import RELAY_HINT_INTERVAL
from shoal.relay import frames as f
from shoal.relay.engine import auth_key, binding_key, node_proof, refusal_tag, relay_proof, tag
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
        self._kb: bytes | None = None
        self._nonce: bytes | None = None  # the challenge we answered, until AUTH_OK or a refusal
        self._hello_out = False  # a HELLO went out and its CHALLENGE has not come yet
        self._hint_at: float | None = None
        self._seq = 0  # last KEEPALIVE seq sent
        self._acked = 0  # last PONG seq taken
        self.inbox: list[tuple[bytes, bytes]] = []
        self.errors: list[tuple[int, bytes]] = []
        self.stats: Counter[str] = Counter()

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def start(self, now: float) -> bytes:
        self.state = "challenged"
        self.token = self._kb = None
        return self._hello()

    def _hello(self) -> bytes:
        self._hello_out = True
        return f.Hello(self.node_public).encode()

    def wrap(self, dst_key: bytes, payload: bytes) -> bytes:
        if self.token is None:
            raise ClientNotReady("the relay has not accepted this node yet")
        return f.encode_send(self.token, bytes(dst_key), payload)

    def keepalive(self) -> bytes:
        if self.token is None or self._kb is None:
            raise ClientNotReady("the relay has not accepted this node yet")
        self._seq += 1
        ka = f.Keepalive(self.token, self._seq, b"")
        return f.Keepalive(self.token, self._seq, tag(self._kb, ka.signed())).encode()

    def receive(self, data: bytes, now: float) -> list[bytes]:
        try:
            frame = f.parse(data)
        except f.FrameError:
            self.stats["malformed"] += 1
            return []
        if isinstance(frame, f.Recv):
            if self.token is None:
                self.stats["unexpected"] += 1
                return []
            self.inbox.append((frame.src_key, frame.payload))
            return []
        if isinstance(frame, f.Challenge):
            if not self._hello_out:
                self.stats["unexpected"] += 1
                return []
            self._hello_out = False
            self._nonce = frame.nonce
            proof = node_proof(self._k, frame.nonce, self.node_public, self.relay_public)
            return [f.Auth(self.node_public, frame.nonce, proof).encode()]
        if isinstance(frame, f.AuthOk):
            if self._nonce is None or not constant_time_eq(
                    frame.proof, relay_proof(self._k, self._nonce, frame.token, self.node_public)):
                self.stats["forged_auth_ok"] += 1
                return []
            self._kb = binding_key(self._k, self._nonce, frame.token)
            self.token, self.timeout, self._nonce = frame.token, frame.timeout, None
            self._acked = self._seq  # PONGs to keepalives of the old binding are stale
            self.state = "ready"
            return []
        if isinstance(frame, f.Pong):
            if (self._kb is None or not self._acked < frame.seq <= self._seq
                    or not constant_time_eq(frame.tag, tag(self._kb, frame.signed()))):
                self.stats["forged_pong"] += 1
                return []
            self._acked = frame.seq
            self.stats["pong"] += 1
            return []
        if isinstance(frame, f.Error):
            return self._error(frame, now)
        self.stats["unexpected"] += 1
        return []

    def _error(self, frame: f.Error, now: float) -> list[bytes]:
        if frame.code == f.ERR_UNAUTHENTICATED:
            if self.token is None:  # not bound: our own HELLO/AUTH is under way or will be retried
                self.stats["unexpected"] += 1
                return []
            if self._hint_at is not None and now - self._hint_at < RELAY_HINT_INTERVAL:
                self.stats["hint_limited"] += 1
                return []
            self._hint_at = now
            self.stats["reauth"] += 1
            return [self._hello()]
        if frame.tag is not None:
            signed = frame.signed()
            if frame.code in (f.ERR_AUTH_REFUSED, f.ERR_FULL):
                good = self._nonce is not None and constant_time_eq(frame.tag, refusal_tag(self._k, self._nonce, signed))
            else:
                good = self._kb is not None and constant_time_eq(frame.tag, tag(self._kb, signed))
            if good:
                self.errors.append((frame.code, frame.key))
                if frame.code in (f.ERR_AUTH_REFUSED, f.ERR_FULL):
                    self._nonce = None
                    if self.token is None:
                        self.state = "idle"
                    self.stats["refused"] += 1
                return []
        self.stats["forged_error"] += 1
        return []
