"""The `Core` facade: the inputs (connect, receive, disconnect, handle_timer, password_done,
password_failed), `from_state`, request dispatch with its password jobs, Login and
registration (limits, refusals). The rules themselves live in the other modules of
`shoal.server.core`; `Core` is their composition over the one `State`.
"""

from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import logging
from collections.abc import Iterable

from shoal import constants as C
from shoal import endpoint
from shoal.control import messages as m
from shoal.control.limits import TokenBucket
from shoal.control.transport import CLOSE_REFUSED
from shoal.server.core import addressing
from shoal.server.core.effects import Close, Effects, PasswordJob, PutNode, Send
from shoal.server.core.networks import NeedWork, Networks, Refused, clean_label
from shoal.server.core.state import BanRec, Done, MemberRec, NetworkRec, NodeRec, Session, SessionId, Waiting
from shoal.wireguard.keys import PublicKey

__all__ = ["Core"]

log = logging.getLogger("shoal.server")


CLOSE_PROTOCOL_ERROR = 4002
CLOSE_REPLACED = 4000
REFUSAL_LOG_INTERVAL = 10.0  # refused first Logins are logged as a count at most this often
CLOSE_NORMAL = 1000


def clean_endpoint(text: str) -> str | None:
    """A node's endpoint or candidate text in canonical form, or None when it is not a strict
    "ip:port" of a usable address (shoal.endpoint; never raises)."""
    try:
        ip, port = endpoint.parse(text)
    except endpoint.EndpointError:
        return None
    return endpoint.format(ip, port) if endpoint.usable(ip) else None


class Core(Networks):
    """The coordination state machine; see the package docstring for every rule."""

    @classmethod
    def from_state(
        cls,
        ula_prefix: ipaddress.IPv6Network,
        nodes: Iterable[NodeRec],
        networks: Iterable[NetworkRec],
        members: Iterable[MemberRec],
        bans: Iterable[BanRec],
        *,
        now: float,
        **kw: object,
    ) -> Core:
        """Rebuild from stored records; nodes stored as present get the grace from `now`."""
        core = cls(ula_prefix, now=now, **kw)  # type: ignore[arg-type]
        for n in nodes:
            core._add_node(n)
            if n.present:
                core._present.add(n.node_id)
                core._rt_of(n.node_id).grace_until = now + core.grace
                heapq.heappush(core._grace_heap, (now + core.grace, n.node_id))
        for net in networks:
            core._add_network(net)
        for mem in members:
            if mem.network_id in core.networks and mem.node_id in core.nodes:
                core._put_member(mem)
        for b in bans:
            if b.network_id in core.networks:
                core.bans.setdefault(b.network_id, {})[b.node_id] = b
                core._banned_count[b.node_id] += 1
        for n in core.nodes.values():
            core._expiry_push(n.node_id)
        return core

    # ---------------------------------------------------------------- events

    def connect(self, session: SessionId, node_key: PublicKey, now: float, remote_ip: str | None = None) -> Effects:
        """An authenticated session exists; nothing happens until its Login."""
        if session in self._sessions:
            raise ValueError(f"session {session} already connected")
        if not isinstance(node_key, PublicKey):
            raise TypeError("node_key must be a PublicKey")
        self._sessions[session] = Session(session, node_key, remote_ip)
        return Effects()

    def disconnect(self, session: SessionId, now: float) -> Effects:
        fx = Effects()
        for job_id in [j for j, w in self._jobs.items() if w.session == session]:
            del self._jobs[job_id]  # its result will find nobody to answer
        s = self._sessions.pop(session, None)
        if s is None or s.dead:
            return fx
        self._detach(s, now, clean=False, fx=fx)
        self._flush(fx)
        return fx

    def password_done(self, job_id: int, value: str | bool, now: float) -> Effects:
        """A PasswordJob finished with `value` (its `run()`): the request it belongs to is
        carried out now, with every rule checked again (state may have changed meanwhile).
        A job whose session is gone, or an unknown id, changes nothing."""
        fx = Effects()
        w = self._jobs.pop(job_id, None)
        s = self._sessions.get(w.session) if w is not None else None
        if w is None or s is None or s.dead or s.node_id is None:
            return fx
        self._request(s, w.msg, now, fx, Done(w.stored, value))
        self._flush(fx)
        return fx

    def password_failed(self, job_id: int, code: str, message: str, now: float) -> Effects:
        """A PasswordJob could not run (the glue's pool is full: code "busy"): the request is
        answered Result(ok=False, code, message) and changes nothing."""
        fx = Effects()
        w = self._jobs.pop(job_id, None)
        s = self._sessions.get(w.session) if w is not None else None
        if w is not None and s is not None and not s.dead:
            fx.out.append(Send(s.session, s.key, m.Result(req_id=w.msg.req_id, ok=False, code=code,  # type: ignore[attr-defined]
                                                          message=message)))
        return fx

    def handle_timer(self, now: float) -> Effects:
        fx = Effects()
        heap = self._grace_heap
        while heap and heap[0][0] <= now:
            t, nid = heapq.heappop(heap)
            rt = self._rt.get(nid)
            if rt is None or rt.grace_until != t or rt.session is not None:
                continue
            rt.grace_until = None
            log.info("node %s: grace over, offline", nid)
            self._set_present(nid, False, now, fx)
        self._expire_due(now, fx)
        self._flush(fx)
        return fx

    def receive(self, session: SessionId, msg: m.ClientMessage, now: float) -> Effects:
        fx = Effects()
        s = self._sessions.get(session)
        if s is None or s.dead:
            return fx  # late input on a session we already closed
        if isinstance(msg, m.Login):
            if s.node_id is not None:
                self._protocol_error(s, "a second Login on one session", now, fx)
            else:
                self._login(s, msg, now, fx)
        elif s.node_id is None:
            self._protocol_error(s, f"{type(msg).__name__} before Login", now, fx)
        elif isinstance(msg, m.Ping):
            fx.out.append(Send(session, s.key, m.Pong(nonce=msg.nonce)))
        elif isinstance(msg, m.ResyncRequest):
            self._send_full_view(s.node_id, fx)
        elif isinstance(msg, m.PeerReport):
            self._peer_report(s, msg, now)
        elif isinstance(msg, m.Candidates):
            self._candidates(s.node_id, msg)
        elif isinstance(msg, m.Logout):
            fx.out.append(Send(session, s.key, m.Result(req_id=msg.req_id, ok=True)))
            self._detach(s, now, clean=True, fx=fx)
            fx.out.append(Close(session, CLOSE_NORMAL, "logged out"))
        else:
            if type(msg) not in self._handlers:  # a ClientMessage type this core does not know: fail loudly
                self._protocol_error(s, f"unexpected {type(msg).__name__}", now, fx)
            else:
                self._request(s, msg, now, fx, None)
        self._flush(fx)
        return fx

    def _request(self, s: Session, msg: m.ClientMessage, now: float, fx: Effects, done: Done | None) -> None:
        """Carry out one request (first time: done=None; after its PasswordJob: its result)."""
        assert s.node_id is not None
        handler = self._handlers[type(msg)]
        self._done, self._req_session = done, s
        try:
            result = handler(self, s.node_id, msg, now, fx)
        except Refused as r:
            result = m.Result(req_id=msg.req_id, ok=False, code=r.code, message=r.message)  # type: ignore[attr-defined]
            assert not fx.persist and not self._dirty, "a refused request must change nothing"
        except NeedWork as w:
            assert not fx.persist and not self._dirty, "a request waiting for scrypt must change nothing yet"
            self._start_job(s, msg, w, now, fx)
            return
        finally:
            self._done, self._req_session = None, None
        fx.out.append(Send(s.session, s.key, result))

    def _start_job(self, s: Session, msg: m.ClientMessage, w: NeedWork, now: float, fx: Effects) -> None:
        """Queue the scrypt a request needs, if the node's work budget allows (PASSWORD_WORK)."""
        assert s.node_id is not None
        rt = self._rt_of(s.node_id)
        if rt.pw_work is None:
            rt.pw_work = TokenBucket(*C.PASSWORD_WORK, now)
        if not rt.pw_work.take(now):
            burst, rate = C.PASSWORD_WORK
            wait = rt.pw_work.when_ready(now) - now
            fx.out.append(Send(s.session, s.key, m.Result(
                req_id=msg.req_id, ok=False, code="rate_limited",  # type: ignore[attr-defined]
                message=f"too many password operations (at most {burst:g} at once and {rate:g} per second); "
                        f"try again in {max(wait, 0.1):.1f} s")))
            return
        job = PasswordJob(next(self._job_ids), self._hasher, w.password, salt=w.salt, stored=w.stored)
        self._jobs[job.job_id] = Waiting(s.session, msg, w.stored)
        fx.jobs.append(job)

    def _features(self) -> list[str]:
        return [m.FEATURE_CHECK_PEER, m.FEATURE_DISCO, m.FEATURE_LAN] + ([m.FEATURE_RELAY] if self.relay else [])

    def _candidates(self, node_id: str, msg: m.Candidates) -> None:
        """A node's NAT-traversal candidates: kept while it is known, sent to its peers (bad
        or unusable addresses dropped)."""
        cands: list[m.Candidate] = []
        for c in msg.candidates:
            addr = clean_endpoint(c.addr)
            if addr is None:
                continue
            c = m.Candidate(c.kind, addr)
            if c not in cands:
                cands.append(c)
        rt = self._rt_of(node_id)
        new = tuple(cands)
        if (new, msg.nat_hard) == (rt.candidates, rt.nat_hard):
            return
        rt.candidates, rt.nat_hard = new, msg.nat_hard
        for p in self.peers_of(node_id):
            self._d(p).peers.add(node_id)

    def _observe(self, node_id: str, remote_ip: str | None) -> None:
        """The node logged in from `remote_ip`: its observed_ip (public only) for its peers."""
        ip = ""
        if remote_ip is not None:
            try:
                addr = endpoint.parse_ip(remote_ip)
            except endpoint.EndpointError:
                addr = None
            if addr is not None and endpoint.sprayable(addr):
                ip = str(addr)
        rt = self._rt_of(node_id)
        if ip != rt.observed_ip:
            rt.observed_ip = ip
            for p in self.peers_of(node_id):
                self._d(p).peers.add(node_id)

    def _protocol_error(self, s: Session, reason: str, now: float, fx: Effects) -> None:
        log.warning("session %s (%s): protocol error: %s", s.session, s.key.fingerprint(), reason)
        fx.out.append(Send(s.session, s.key, m.Error(code="protocol_error", message=reason[:512])))
        fx.out.append(Close(s.session, CLOSE_PROTOCOL_ERROR, reason[:120]))
        self._detach(s, now, clean=False, fx=fx)

    # ---------------------------------------------------------------- login

    def _new_node_id(self, key: PublicKey) -> str | None:
        return addressing.new_node_id(key, self.nodes)

    def _new_ipv4(self, key: PublicKey) -> str | None:
        return addressing.new_ipv4(key, self.ipv4_pool, self._ipv4_used)

    def _refuse_login(self, s: Session, code: str, text: str, now: float, fx: Effects) -> None:
        """A first Login the server will not register: Error, then close CLOSE_REFUSED. Refusals
        come in floods: logged once, then as a count at most every REFUSAL_LOG_INTERVAL."""
        self._refusals += 1
        if now - self._refusal_logged >= REFUSAL_LOG_INTERVAL:
            more = f" ({self._refusals - 1} more since the last report)" if self._refusals > 1 else ""
            log.warning("session %s (%s) from %s: login refused: %s%s", s.session, s.key.fingerprint(),
                        s.remote_ip, text, more)
            self._refusal_logged, self._refusals = now, 0
        s.dead = True
        fx.out.append(Send(s.session, s.key, m.Error(code=code, message=text[:512])))
        fx.out.append(Close(s.session, CLOSE_REFUSED, text[:120]))

    def _register(self, s: Session, prefix: str | None, nickname: str | None, endpoints: list[str],
                  now: float, fx: Effects) -> NodeRec | None:
        """First Login of a key (F6): within the registration limits and with a free address,
        a new node; otherwise the session is refused (None). A refusal by a limit spends no
        budget; an address search does (whether it finds one or not: a full pool costs too)."""
        buckets: list[tuple[TokenBucket, str]] = []
        if prefix is not None:
            buckets = [(self._reg_prefix.get(prefix, now), prefix), (self._reg_all, "all sources")]
        for bucket, who in buckets:
            if not bucket.ready(now):
                self.stats["registrations_refused"] += 1
                self._refuse_login(s, "registration_limited", f"too many new nodes from {who}; retry in "
                                   f"{max(1.0, bucket.when_ready(now) - now):.0f} s", now, fx)
                return None
        for bucket, _ in buckets:  # the address search below is work: it spends budget, found or not
            bucket.take(now)
        node_id = self._new_node_id(s.key)
        ipv4 = self._new_ipv4(s.key)
        if node_id is None or ipv4 is None:
            self.stats["logins_refused_pool_full"] += 1
            self._refuse_login(s, "address_pool_full", "no free overlay address for a new node on this server",
                               now, fx)
            return None
        rec = NodeRec(
            node_id=node_id, public_key=s.key, nickname=nickname or f"node-{node_id}",
            ipv4=ipv4, ipv6=addressing.ipv6_for(self.ula_prefix, ipv4), endpoints=tuple(endpoints), present=False,
            created_at=self._wall(now), last_seen=self._wall(now), last_prefix=prefix,
        )
        self._add_node(rec)
        fx.persist.append(PutNode(rec))
        log.info("registered node %s (%s) %s from %s", node_id, s.key.fingerprint(), ipv4, prefix or "here")
        return rec

    def _login(self, s: Session, msg: m.Login, now: float, fx: Effects) -> None:
        endpoints: list[str] = []
        for e in msg.endpoints:
            clean = clean_endpoint(e)
            if clean is not None and clean not in endpoints:
                endpoints.append(clean)
        if s.remote_ip is not None and msg.listen_port:
            obs = clean_endpoint(endpoint.text((s.remote_ip, msg.listen_port)))
            if obs is not None and obs not in endpoints:
                endpoints.append(obs)
        endpoints = endpoints[: m.MAX_ENDPOINTS]
        nickname = None
        if msg.nickname is not None:
            try:
                nickname = clean_label(msg.nickname, "nickname")
            except Refused:
                nickname = None  # keep the stored one; not worth closing the session
        prefix = addressing.source_prefix_of(s.remote_ip)
        rec = self.node_by_key(s.key)
        if rec is None:
            rec = self._register(s, prefix, nickname, endpoints, now, fx)
            if rec is None:
                return
        else:
            new = dataclasses.replace(rec, nickname=nickname or rec.nickname, endpoints=tuple(endpoints),
                                      last_prefix=rec.last_prefix if prefix is None else prefix)
            if new != rec:
                shown = (new.nickname, new.endpoints) != (rec.nickname, rec.endpoints)
                self.nodes[rec.node_id] = rec = new
                fx.persist.append(PutNode(rec))
                if shown:
                    self._touch_node_info(rec.node_id)
        node_id = rec.node_id
        rt = self._rt_of(node_id)
        if rt.session is not None:  # the node reconnected before we noticed the old one died
            old = self._sessions.get(rt.session)
            if old is not None:
                old.dead = True
                fx.out.append(Close(old.session, CLOSE_REPLACED, "replaced by a newer session of this node"))
        s.node_id = node_id
        s.check_peer = m.FEATURE_CHECK_PEER in msg.features
        rt.lan = m.FEATURE_LAN in msg.features
        was_away = rt.session is None and rt.grace_until is not None and node_id in self._present
        rt.session = s.session
        rt.grace_until = None
        self._observe(node_id, s.remote_ip)
        self._set_present(node_id, True, now, fx)
        fx.out.append(Send(s.session, s.key, m.LoginOk(node=self.self_info(node_id), server_time=now + self._wall_offset,
                                                      features=self._features(), relay_port=self.relay_port)))
        rt.version += 1
        self._send_full_view(node_id, fx)
        if was_away:
            self._tell_peers_check(node_id, False, fx)
        if s.check_peer:
            for p in sorted(self.peers_of(node_id)):
                if self._in_grace(p):
                    fx.out.append(Send(s.session, s.key, m.CheckPeer(node_id=p, active=True)))
