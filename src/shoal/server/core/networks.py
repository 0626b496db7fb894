"""Network rules (see "Networks" and "Password work" in the package docstring): create, join,
leave, delete, set_online/nickname/password/access, approve, reject, evict and bans; the
password checks (fast path, dummy hash, wrong-password budgets) and the `NeedWork` a request
raises when it needs scrypt first. Each request handler returns a Result or raises `Refused`.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
from collections.abc import Callable

from shoal import constants as C
from shoal.control import messages as m
from shoal.control.limits import TokenBucket, source_prefix
from shoal.server.core.addressing import b32
from shoal.server.core.effects import DeleteNetwork, Effects, PutBan, PutMember, PutNetwork, PutNode
from shoal.server.core.presence import Presence
from shoal.server.core.state import BanRec, MemberRec, NetworkRec

__all__ = ["Networks", "Refused", "NeedWork", "clean_label", "NETWORK_ID_LEN"]

log = logging.getLogger("shoal.server")


NETWORK_ID_LEN = 8


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class NeedWork(Exception):
    """A request needs scrypt first: raised before it changed anything, like Refused."""

    def __init__(self, password: str, *, salt: bytes | None = None, stored: str | None = None) -> None:
        super().__init__("password work")
        self.password, self.salt, self.stored = password, salt, stored


def clean_label(text: str, what: str) -> str:
    """Strip; refuse empty text and control characters (names and nicknames)."""
    t = text.strip()
    if not t:
        raise Refused("invalid", f"{what} must not be empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in t):
        raise Refused("invalid", f"{what} must not contain control characters")
    return t


class Networks(Presence):
    """The network requests and their rules over the shared state."""

    def _network(self, network_id: str) -> NetworkRec:
        net = self.networks.get(network_id)
        if net is None:
            raise Refused("no_such_network", f"no network with id {network_id}")
        return net

    def _owned(self, node_id: str, network_id: str) -> NetworkRec:
        net = self._network(network_id)
        if net.owner_id != node_id:
            raise Refused("not_owner", f"only the owner of {net.name!r} can do that")
        return net

    def _membership(self, node_id: str, network_id: str) -> MemberRec:
        net = self._network(network_id)
        mem = self.members[network_id].get(node_id)
        if mem is None:
            raise Refused("not_member", f"you are not a member of {net.name!r}")
        return mem

    def _check_room(self, node_id: str, network_id: str | None) -> None:
        if len(self._node_nets.get(node_id, ())) >= m.MAX_NETWORKS:
            raise Refused("invalid", f"a node can be in at most {m.MAX_NETWORKS} networks")
        if network_id is not None and len(self.members[network_id]) >= m.MAX_MEMBERS:
            raise Refused("invalid", f"the network is full ({m.MAX_MEMBERS} members)")

    def _fast_tag(self, password: str) -> bytes:
        return hmac.new(self._fast_secret, password.encode("utf-8"), "sha256").digest()

    def _new_password_hash(self, password: str) -> str:
        """The stored form of a new network password: refused if weak, else a hash job first
        (NeedWork); the request's re-run gets the job's result."""
        if len(password) < C.PASSWORD_MIN_LENGTH:
            raise Refused("weak_password", f"a network password needs at least {C.PASSWORD_MIN_LENGTH} characters")
        done = self._done
        if done is not None and done.stored is None and isinstance(done.value, str):
            return done.value
        raise NeedWork(password, salt=self._rng(16))

    def _fail_budgets(self, node_id: str, name_key: str, now: float) -> list[TokenBucket]:
        """The wrong-password budgets a join spends: its node's, its source prefix's, its name's."""
        rt = self._rt_of(node_id)
        if rt.pw_failures is None:
            rt.pw_failures = TokenBucket(*C.PASSWORD_FAIL_NODE, now)
        out = [rt.pw_failures, self._fail_name.get(name_key, now)]
        s = self._req_session
        if s is not None and s.remote_ip is not None:
            prefix = source_prefix(s.remote_ip, v4=C.NODE_SOURCE_PREFIX_V4, v6=C.NODE_SOURCE_PREFIX_V6)
            out.append(self._fail_prefix.get(prefix, now))
        return out

    def _password_matches(self, net: NetworkRec | None, password: str) -> bool:
        """Whether `password` opens `net`; for a network that does not exist, the same work
        against a dummy hash and False. Raises NeedWork unless the fast path or the finished
        job (for this very stored hash) answers."""
        stored = net.password_hash if net is not None else self._dummy_stored
        done = self._done
        if done is not None and done.stored == stored and isinstance(done.value, bool):
            ok = done.value
        else:
            tag = self._fast_tag(password)  # computed for a missing network too: the same path
            known = self._fast_pw.get(net.network_id) if net is not None else None
            if hmac.compare_digest(known or bytes(len(tag)), tag) and known is not None:
                return True
            raise NeedWork(password, stored=stored)
        if net is None:
            return False
        if ok:
            self._fast_pw[net.network_id] = self._fast_tag(password)
        return ok

    def _create(self, me: str, msg: m.CreateNetwork, now: float, fx: Effects) -> m.Result:
        name = clean_label(msg.name, "network name")
        self._check_room(me, None)
        if name.casefold() in self._by_name:
            raise Refused("name_taken", f"a network named {name!r} exists already")
        if msg.kind == "l2" and not self._rt_of(me).lan:
            raise Refused("unsupported", "this node's software does not support layer-2 networks; update it")
        password_hash = self._new_password_hash(msg.password)
        nid = b32(self._rng(5))
        while nid in self.networks:
            nid = b32(self._rng(5))
        net = NetworkRec(
            network_id=nid, name=name, owner_id=me,
            password_hash=password_hash,
            approval=msg.approval, created_at=now + self._wall_offset, kind=msg.kind,
        )
        self._add_network(net)
        self._fast_pw[nid] = self._fast_tag(msg.password)
        mem = MemberRec(nid, me, "owner", pending=False, online=True, joined_at=now + self._wall_offset)
        self._put_member(mem)
        fx.persist += [PutNetwork(net), PutMember(mem)]
        self._touch_member(me, nid)
        log.info("node %s created network %s (%s)", me, nid, name)
        return m.Result(req_id=msg.req_id, ok=True, network_id=nid)

    def _join(self, me: str, msg: m.JoinNetwork, now: float, fx: Effects) -> m.Result:
        typed = msg.name.strip()
        nid = self._by_name.get(typed.casefold())
        net = self.networks[nid] if nid is not None else None
        mem = self.members[nid].get(me) if nid is not None else None
        if net is not None and mem is not None:  # tells a node only about itself
            if mem.pending:
                raise Refused("pending_approval", f"your request to join {net.name!r} waits for the owner")
            return m.Result(req_id=msg.req_id, ok=True, network_id=nid, message="already a member")
        budgets = self._fail_budgets(me, typed.casefold(), now)
        empty = [b for b in budgets if not b.ready(now)]
        if empty:  # before the fast path: no oracle past the limit
            wait = max(b.when_ready(now) for b in empty) - now
            raise Refused("rate_limited", f"too many wrong passwords; try again in {max(wait, 1):.0f} s")
        if not self._password_matches(net, msg.password):  # existing or not, banned or not: the same
            for b in budgets:
                b.take(now)
            raise Refused("wrong_password", f"wrong password for network {typed!r}, or no such network")
        assert net is not None and nid is not None
        if me in self.bans.get(nid, {}):
            raise Refused("banned", f"you are banned from {net.name!r}")
        if net.locked:
            raise Refused("locked", f"{net.name!r} is locked: it accepts no new members")
        if net.kind != "ip" and not self._rt_of(me).lan:
            raise Refused("unsupported", f"{net.name!r} is a layer-2 network; this node's software does not "
                                          "support them: update it")
        self._check_room(me, nid)
        pending = net.approval == "manual"
        # F5 (bans by source prefix): a new key from where a banned node came from waits for the owner
        note = "banned_prefix" if self._from_banned_prefix(me, nid) else ""
        pending = pending or bool(note)
        mem = MemberRec(nid, me, "member", pending=pending, online=True, joined_at=now + self._wall_offset,
                        note=note)
        self._put_member(mem)
        fx.persist.append(PutMember(mem))
        self._touch_member(me, nid)
        if note:
            self.stats["joins_held_banned_prefix"] += 1
            log.info("node %s: join of %s held for the owner: from the source prefix of a banned node", me, nid)
            return m.Result(req_id=msg.req_id, ok=False, code="pending_approval", network_id=nid,
                            message=f"join request for {net.name!r} recorded; you connect from the address "
                                    "range of a node banned from it, so the owner must approve it")
        if pending:
            return m.Result(req_id=msg.req_id, ok=False, code="pending_approval", network_id=nid,
                            message=f"join request for {net.name!r} recorded; the owner must approve it")
        return m.Result(req_id=msg.req_id, ok=True, network_id=nid)

    def _leave(self, me: str, msg: m.LeaveNetwork, now: float, fx: Effects) -> m.Result:
        mem = self._membership(me, msg.network_id)
        if mem.role == "owner":
            raise Refused("owner_cannot_leave", "the owner cannot leave; delete the network instead")
        self._remove_member(me, msg.network_id, fx)
        return m.Result(req_id=msg.req_id, ok=True, network_id=msg.network_id)

    def _delete(self, me: str, msg: m.DeleteNetwork, now: float, fx: Effects) -> m.Result:
        net = self._owned(me, msg.network_id)
        nid = net.network_id
        former = list(self.members[nid])
        for x in former:
            self._touch_member(x, nid, former)
        for x in former:
            self._node_nets[x].discard(nid)
        del self.members[nid], self.networks[nid], self._by_name[net.name.casefold()]
        for banned in self.bans.pop(nid, {}):
            self._banned_count[banned] -= 1
        for x in former:
            self._expiry_push(x)
        self._fast_pw.pop(nid, None)
        fx.persist.append(DeleteNetwork(nid))
        log.info("node %s deleted network %s (%s)", me, nid, net.name)
        return m.Result(req_id=msg.req_id, ok=True, network_id=nid)

    def _set_online(self, me: str, msg: m.SetOnline, now: float, fx: Effects) -> m.Result:
        mem = self._membership(me, msg.network_id)
        if mem.online != msg.online:
            mem = dataclasses.replace(mem, online=msg.online)
            self._put_member(mem)
            fx.persist.append(PutMember(mem))
            self._touch_member(me, msg.network_id)
        return m.Result(req_id=msg.req_id, ok=True, network_id=msg.network_id)

    def _set_nickname(self, me: str, msg: m.SetNickname, now: float, fx: Effects) -> m.Result:
        nick = clean_label(msg.nickname, "nickname")
        rec = self.nodes[me]
        if rec.nickname != nick:
            self.nodes[me] = rec = dataclasses.replace(rec, nickname=nick)
            fx.persist.append(PutNode(rec))
            self._touch_node_info(me)
        return m.Result(req_id=msg.req_id, ok=True)

    def _set_password(self, me: str, msg: m.SetPassword, now: float, fx: Effects) -> m.Result:
        net = self._owned(me, msg.network_id)
        net = dataclasses.replace(net, password_hash=self._new_password_hash(msg.password))
        self.networks[net.network_id] = net
        self._fast_pw[net.network_id] = self._fast_tag(msg.password)
        fx.persist.append(PutNetwork(net))
        return m.Result(req_id=msg.req_id, ok=True, network_id=net.network_id)

    def _set_access(self, me: str, msg: m.SetAccess, now: float, fx: Effects) -> m.Result:
        net = self._owned(me, msg.network_id)
        if msg.locked is None and msg.approval is None and msg.broadcast is None:
            raise Refused("invalid", "nothing to change: give locked, approval and/or broadcast")
        new = dataclasses.replace(
            net,
            locked=net.locked if msg.locked is None else msg.locked,
            approval=net.approval if msg.approval is None else msg.approval,
            broadcast=net.broadcast if msg.broadcast is None else msg.broadcast,
        )
        if new != net:
            self.networks[net.network_id] = new
            fx.persist.append(PutNetwork(new))
            self._touch_net(net.network_id)
        return m.Result(req_id=msg.req_id, ok=True, network_id=net.network_id)

    def _target(self, msg: m.Approve | m.Reject | m.Evict) -> MemberRec | None:
        if msg.node_id not in self.nodes:
            raise Refused("invalid", f"no node with id {msg.node_id}")
        return self.members[msg.network_id].get(msg.node_id)

    def _approve(self, me: str, msg: m.Approve, now: float, fx: Effects) -> m.Result:
        self._owned(me, msg.network_id)
        mem = self._target(msg)
        if mem is None:
            raise Refused("not_member", f"{msg.node_id} has not asked to join")
        if mem.pending:
            mem = dataclasses.replace(mem, pending=False, note="")
            self._put_member(mem)
            fx.persist.append(PutMember(mem))
            self._touch_member(msg.node_id, msg.network_id)
        return m.Result(req_id=msg.req_id, ok=True, network_id=msg.network_id)

    def _ban(self, network_id: str, node_id: str, now: float, fx: Effects) -> None:
        if node_id not in self.bans.setdefault(network_id, {}):
            b = BanRec(network_id, node_id, created_at=now + self._wall_offset,
                       prefix=self.nodes[node_id].last_prefix)
            self.bans[network_id][node_id] = b
            self._banned_count[node_id] += 1
            fx.persist.append(PutBan(b))

    def _from_banned_prefix(self, node_id: str, network_id: str) -> bool:
        """F5: the node's last source prefix is one a node banned from this network came from."""
        prefix = self.nodes[node_id].last_prefix
        return prefix is not None and any(b.prefix == prefix for b in self.bans.get(network_id, {}).values())

    def _reject(self, me: str, msg: m.Reject, now: float, fx: Effects) -> m.Result:
        self._owned(me, msg.network_id)
        mem = self._target(msg)
        if mem is None or not mem.pending:
            if mem is None and msg.ban and msg.node_id in self.bans.get(msg.network_id, {}):
                return m.Result(req_id=msg.req_id, ok=True, network_id=msg.network_id)  # repeated
            raise Refused("not_member", f"{msg.node_id} has no pending request (use evict for members)")
        self._remove_member(msg.node_id, msg.network_id, fx)
        if msg.ban:
            self._ban(msg.network_id, msg.node_id, now, fx)
        return m.Result(req_id=msg.req_id, ok=True, network_id=msg.network_id)

    def _evict(self, me: str, msg: m.Evict, now: float, fx: Effects) -> m.Result:
        net = self._owned(me, msg.network_id)
        if msg.node_id == net.owner_id:
            raise Refused("invalid", "the owner cannot evict itself; delete the network instead")
        mem = self._target(msg)
        if mem is None:
            if not msg.ban:
                raise Refused("not_member", f"{msg.node_id} is not a member")
            self._ban(msg.network_id, msg.node_id, now, fx)  # ban a former member (idempotent)
            return m.Result(req_id=msg.req_id, ok=True, network_id=msg.network_id)
        self._remove_member(msg.node_id, msg.network_id, fx)
        if msg.ban:
            self._ban(msg.network_id, msg.node_id, now, fx)
        return m.Result(req_id=msg.req_id, ok=True, network_id=msg.network_id)

    _handlers: dict[type, Callable[..., m.Result]] = {
        m.CreateNetwork: _create,
        m.JoinNetwork: _join,
        m.LeaveNetwork: _leave,
        m.DeleteNetwork: _delete,
        m.SetOnline: _set_online,
        m.SetNickname: _set_nickname,
        m.SetPassword: _set_password,
        m.SetAccess: _set_access,
        m.Approve: _approve,
        m.Reject: _reject,
        m.Evict: _evict,
    }
