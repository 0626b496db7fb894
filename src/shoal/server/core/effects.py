"""What the core returns (`Effects`): the write intents for the store (PutNode, DeleteNode,
PutNetwork, DeleteNetwork, PutMember, DeleteMember, PutBan; `Persist` is any of them), the
messages and closes for the glue (Send, Close) and the scrypt work to run off the loop
(PasswordJob). Plain data, no rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from shoal.control import messages as m
from shoal.server.core.state import BanRec, MemberRec, NetworkRec, NodeRec, SessionId
from shoal.server.passwords import PasswordHasher
from shoal.wireguard.keys import PublicKey

__all__ = [
    "Effects", "Send", "Close", "PasswordJob", "Persist", "PutNode", "DeleteNode", "PutNetwork",
    "DeleteNetwork", "PutMember", "DeleteMember", "PutBan",
]


# ------------------------------------------------------------------ write intents

@dataclass(frozen=True, slots=True)
class PutNode:
    node: NodeRec


@dataclass(frozen=True, slots=True)
class DeleteNode:
    node_id: str  # an expired node; its (pending) memberships are deleted before it


@dataclass(frozen=True, slots=True)
class PutNetwork:
    network: NetworkRec


@dataclass(frozen=True, slots=True)
class DeleteNetwork:
    network_id: str  # its memberships and bans go with it


@dataclass(frozen=True, slots=True)
class PutMember:
    member: MemberRec


@dataclass(frozen=True, slots=True)
class DeleteMember:
    network_id: str
    node_id: str


@dataclass(frozen=True, slots=True)
class PutBan:
    ban: BanRec

Persist = Union[PutNode, DeleteNode, PutNetwork, DeleteNetwork, PutMember, DeleteMember, PutBan]


# ------------------------------------------------------------------ outputs

@dataclass(frozen=True, slots=True)
class Send:
    session: SessionId
    node_key: PublicKey
    message: m.ServerMessage


@dataclass(frozen=True, slots=True)
class Close:
    session: SessionId
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class PasswordJob:
    """scrypt work for the glue to run off the event loop, then hand back with
    `Core.password_done(job_id, run(), now)` (or `Core.password_failed`). Exactly one of
    `salt` (hash: `run()` returns the stored form) and `stored` (verify: returns a bool)."""

    job_id: int
    hasher: PasswordHasher = field(repr=False)
    password: str = field(repr=False)
    salt: bytes | None = field(default=None, repr=False)
    stored: str | None = field(default=None, repr=False)

    def run(self) -> str | bool:
        """The work itself (pure; about 50 ms of CPU with the default parameters)."""
        if self.salt is not None:
            return self.hasher.hash(self.password, self.salt)
        assert self.stored is not None
        return self.hasher.verify(self.password, self.stored)


@dataclass(slots=True)
class Effects:
    out: list[Send | Close] = field(default_factory=list)
    persist: list[Persist] = field(default_factory=list)
    jobs: list[PasswordJob] = field(default_factory=list)  # scrypt to run off the loop (see PasswordJob)

    def sends(self) -> list[Send]:
        return [o for o in self.out if isinstance(o, Send)]
