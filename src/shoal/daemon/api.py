"""The local API's handlers: each endpoint of the daemon's unix socket, as a method.

Owns: `ApiHandlers.routes` (the endpoint table `shoal.daemon.localapi.ApiServer` serves),
checking each request body, turning names into ids (`network`, `member`), the requests to the
server (through the control session, `Daemon.request`), and waiting up to VIEW_WAIT for the
view to show a mutation's effect before answering. Replies are the Structs of
`shoal.daemon.apitypes`; refusals raise `HttpError(status, message, code)`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from shoal.control import messages as M
from shoal.daemon import identity
from shoal.daemon import apitypes as T
from shoal.daemon.env import sleep
from shoal.daemon.identity import ServerPin
from shoal.daemon.localapi import Handler, HttpError
from shoal.daemon.session import LOGIN_TIMEOUT, LoginFailed
from shoal.daemon.status import build_status, path_of
from shoal.wireguard.keys import PublicKey

# `Daemon` below is shoal.daemon.daemon.Daemon (not imported: it imports this module)
Daemon = Any

VIEW_WAIT = 3.0  # how long a mutating command waits for the view to show its effect
PING_GAP = 0.2  # between the echo requests of one `shoal ping`


def need(body: dict[str, Any], name: str, kind: type = str) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or (kind is str and not value):
        raise HttpError(400, f"missing or invalid '{name}'", "invalid")
    return value


def _refused(result: M.Result) -> HttpError:
    return HttpError(409, result.message or result.code or "refused by the server", result.code or "refused")


class ApiHandlers:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("GET", "/v1/status"): self.status,
            ("POST", "/v1/login"): self.login,
            ("POST", "/v1/logout"): self.logout,
            ("POST", "/v1/networks/create"): self.create,
            ("POST", "/v1/networks/delete"): self.delete,
            ("POST", "/v1/networks/join"): self.join,
            ("POST", "/v1/networks/leave"): self.leave,
            ("POST", "/v1/networks/online"): self.online,
            ("POST", "/v1/networks/password"): self.set_password,
            ("POST", "/v1/networks/access"): self.set_access,
            ("POST", "/v1/networks/approve"): self.approve,
            ("POST", "/v1/networks/reject"): self.reject,
            ("POST", "/v1/networks/evict"): self.evict,
            ("POST", "/v1/nickname"): self.set_nick,
            ("POST", "/v1/ping"): self.ping,
            ("POST", "/v1/netcheck"): self.netcheck,  # shoal.daemon.netcheck
        }

    # ------------------------------------------------------------------ helpers

    async def _ok(self, build: Callable[[int], M._Msg]) -> M.Result:
        result = await self.d.request(build)
        if not result.ok:
            raise _refused(result)
        return result

    async def _wait_view(self, predicate: Callable[[], bool], timeout: float = VIEW_WAIT) -> bool:
        return await self.d.reconciler.wait(predicate, timeout)

    def _network(self, name: str) -> M.NetworkInfo:
        net = self.d.view.network_by_name(name)
        if net is None:
            raise HttpError(404, f"you are not a member of a network named '{name}' (see `shoal list`)", "no_such_network")
        return net

    def _member(self, net: M.NetworkInfo, who: str) -> M.MemberInfo:
        for m in net.members:
            if who in (m.node_id, m.nickname):
                return m
        raise HttpError(404, f"'{who}' is not a member of {net.name}", "not_member")

    def _me(self) -> str | None:
        return self.d.view.node.node_id if self.d.view.node else None

    def _need_lan_server(self, what: str) -> None:
        if self.d.conn is not None and not self.d.server_lan:
            raise HttpError(409, f"the server does not support {what} (it is older than this node): upgrade it",
                            "unsupported")

    # ------------------------------------------------------------------ session

    async def status(self, body: dict[str, Any]) -> T.Status:
        return build_status(self.d)

    async def _server_key(self, url: str, key_text: Any) -> PublicKey:
        if key_text:
            try:
                return PublicKey.from_base64(str(key_text))
            except ValueError as e:
                raise HttpError(400, f"--server-key: {e}", "invalid") from None
        try:
            return await asyncio.wait_for(self.d.env.fetch_server_key(url), LOGIN_TIMEOUT)
        except asyncio.TimeoutError:
            raise HttpError(502, f"{url} did not send its key within {LOGIN_TIMEOUT:.0f} s", "unreachable") from None
        except Exception as e:  # noqa: BLE001 - one line for the user
            raise HttpError(502, f"cannot fetch the server key from {url}: {e}", "unreachable") from None

    async def login(self, body: dict[str, Any]) -> T.LoginResult:
        d = self.d
        try:
            url = identity.normalize_server_url(need(body, "server"))
        except ValueError as e:
            raise HttpError(400, str(e), "invalid") from None
        key_text = body.get("server_key")
        key = await self._server_key(url, key_text)
        old = d.pin
        if old is not None and old.url != url:
            raise HttpError(409, f"already logged in to {old.url}; run `shoal logout` first", "logged_in")
        if old is not None and old.public_key != key:
            raise HttpError(
                409,
                f"REFUSED: {url} now presents key {key.fingerprint()} but this node pinned {old.fingerprint}; "
                "possible man-in-the-middle. If the server key changed on purpose: `shoal logout`, then "
                "`shoal login URL --server-key NEWKEY`",
                "server_key_mismatch",
            )
        d.pin = ServerPin(url, key)
        waiter: asyncio.Future[M.SelfInfo] = asyncio.get_running_loop().create_future()
        d.session.login_waiter = waiter
        await d.session.restart()
        try:
            node = await asyncio.wait_for(waiter, LOGIN_TIMEOUT)
        except (LoginFailed, asyncio.TimeoutError) as e:
            d.session.login_waiter = None
            if old is None:  # a failed first login pins nothing
                d.pin = None
                await d.session.restart()
            code = e.code if isinstance(e, LoginFailed) else "timeout"
            msg = str(e) if isinstance(e, LoginFailed) else f"no answer from {url} within {LOGIN_TIMEOUT:.0f} s"
            raise HttpError(409 if code == "server_key_mismatch" else 502, msg, code) from None
        identity.save_pin(d.opts.state_dir, d.pin)
        await self._wait_view(lambda: d.view.version is not None, 2.0)
        return T.LoginResult(server=url, public_key=key.to_base64(), fingerprint=key.fingerprint(),
                             trusted_on_first_use=not key_text, node=node)

    async def logout(self, body: dict[str, Any]) -> T.LogoutResult:
        d = self.d
        if d.pin is None:
            raise HttpError(409, "not logged in", "not_logged_in")
        url = d.pin.url
        if d.conn is not None:
            with contextlib.suppress(HttpError):
                await d.request(lambda r: M.Logout(req_id=r))
        d.pin = None
        await d.session.stop()
        identity.clear_pin(d.opts.state_dir)
        await d.reconciler.forget()
        d.session.start()
        return T.LogoutResult(server=url)

    # ------------------------------------------------------------------ networks

    async def create(self, body: dict[str, Any]) -> T.NetworkRef:
        name = need(body, "name")
        approval = body.get("approval") or "auto"
        kind = body.get("kind") or "ip"
        if kind not in ("ip", "l2"):
            raise HttpError(400, "kind must be ip or l2", "invalid")
        if kind != "ip":
            self._need_lan_server("layer-2 networks")
        password = need(body, "password")  # never "" (issue 18 F4); the server judges its strength
        result = await self._ok(lambda r: M.CreateNetwork(req_id=r, name=name, password=password,
                                                          approval=approval, kind=kind))
        await self._wait_view(lambda: result.network_id in self.d.view.networks)
        return T.NetworkRef(network_id=result.network_id, name=name)

    async def join(self, body: dict[str, Any]) -> T.JoinResult:
        view = self.d.view
        name = need(body, "name")
        password = need(body, "password")
        result = await self.d.request(lambda r: M.JoinNetwork(req_id=r, name=name, password=password))
        if not result.ok and result.code != "pending_approval":  # a pending join is recorded, not refused
            raise _refused(result)
        if result.network_id is not None:
            await self._wait_view(lambda: result.network_id in view.networks)
        pending = result.code == "pending_approval" or any(
            m.pending for n in view.networks.values() if n.network_id == result.network_id
            for m in n.members if m.node_id == self._me())
        return T.JoinResult(network_id=result.network_id, name=name, pending=pending, message=result.message)

    async def _drop(self, body: dict[str, Any], make: Callable[[int, str], M._Msg]) -> T.NetworkRef:
        net = self._network(need(body, "network"))
        await self._ok(lambda r: make(r, net.network_id))
        await self._wait_view(lambda: net.network_id not in self.d.view.networks)
        return T.NetworkRef(network_id=net.network_id, name=net.name)

    async def leave(self, body: dict[str, Any]) -> T.NetworkRef:
        return await self._drop(body, lambda r, n: M.LeaveNetwork(req_id=r, network_id=n))

    async def delete(self, body: dict[str, Any]) -> T.NetworkRef:
        return await self._drop(body, lambda r, n: M.DeleteNetwork(req_id=r, network_id=n))

    async def online(self, body: dict[str, Any]) -> T.OnlineResult:
        view = self.d.view
        online = need(body, "online", bool)
        name = body.get("network")
        nets = [self._network(name)] if name else list(view.networks.values())
        if not nets:
            raise HttpError(409, "you are not a member of any network", "no_such_network")
        me = self._me()
        done = []
        for net in nets:
            await self._ok(lambda r, n=net: M.SetOnline(req_id=r, network_id=n.network_id, online=online))
            done.append(net.name)

        def applied() -> bool:
            return all(m.online == online for n in nets if n.network_id in view.networks
                       for m in view.networks[n.network_id].members if m.node_id == me)

        await self._wait_view(applied)
        return T.OnlineResult(networks=done, online=online)

    async def set_password(self, body: dict[str, Any]) -> T.NetworkRef:
        net = self._network(need(body, "network"))
        password = need(body, "password")
        await self._ok(lambda r: M.SetPassword(req_id=r, network_id=net.network_id, password=password))
        return T.NetworkRef(network_id=net.network_id, name=net.name)

    async def set_access(self, body: dict[str, Any]) -> T.AccessResult:
        net = self._network(need(body, "network"))
        locked, approval, broadcast = body.get("locked"), body.get("approval"), body.get("broadcast")
        if locked is None and approval is None and broadcast is None:
            raise HttpError(400, "nothing to change: give --lock/--unlock, --approval and/or --broadcast", "invalid")
        if broadcast is not None:
            if not isinstance(broadcast, bool):
                raise HttpError(400, "broadcast must be true or false", "invalid")
            self._need_lan_server("the broadcast switch")
        await self._ok(lambda r: M.SetAccess(req_id=r, network_id=net.network_id, locked=locked, approval=approval,
                                             broadcast=broadcast))
        await self._wait_view(lambda: (n := self.d.view.networks.get(net.network_id)) is not None
                              and (locked is None or n.locked == locked) and (approval is None or n.approval == approval)
                              and (broadcast is None or n.broadcast == broadcast))
        return T.AccessResult(network_id=net.network_id, name=net.name, locked=locked, approval=approval,
                              broadcast=broadcast)

    async def _member_op(self, body: dict[str, Any], make: Callable[[int, str, str], M._Msg]) -> T.MemberResult:
        net = self._network(need(body, "network"))
        member = self._member(net, need(body, "member"))
        await self._ok(lambda r: make(r, net.network_id, member.node_id))
        return T.MemberResult(network_id=net.network_id, name=net.name, node_id=member.node_id,
                              nickname=member.nickname)

    async def approve(self, body: dict[str, Any]) -> T.MemberResult:
        return await self._member_op(body, lambda r, n, m: M.Approve(req_id=r, network_id=n, node_id=m))

    async def reject(self, body: dict[str, Any]) -> T.MemberResult:
        ban = bool(body.get("ban", False))
        return await self._member_op(body, lambda r, n, m: M.Reject(req_id=r, network_id=n, node_id=m, ban=ban))

    async def evict(self, body: dict[str, Any]) -> T.MemberResult:
        ban = bool(body.get("ban", False))
        out = await self._member_op(body, lambda r, n, m: M.Evict(req_id=r, network_id=n, node_id=m, ban=ban))

        def gone() -> bool:
            net = self.d.view.networks.get(out.network_id)
            return net is None or all(m.node_id != out.node_id for m in net.members)

        await self._wait_view(gone)
        return out

    async def set_nick(self, body: dict[str, Any]) -> T.NicknameResult:
        nick = need(body, "nickname")
        await self._ok(lambda r: M.SetNickname(req_id=r, nickname=nick))
        await self._wait_view(lambda: self.d.view.node is not None and self.d.view.node.nickname == nick)
        return T.NicknameResult(nickname=nick)

    # ------------------------------------------------------------------ looking

    async def ping(self, body: dict[str, Any]) -> T.PingResult:
        d = self.d
        who = need(body, "peer")
        count = body.get("count", 3)
        if not isinstance(count, int) or not 1 <= count <= 100:
            raise HttpError(400, "count must be 1..100", "invalid")
        timeout = body.get("timeout", 1.0)
        if not isinstance(timeout, (int, float)) or not 0.05 <= timeout <= 10:
            raise HttpError(400, "timeout must be 0.05..10 s", "invalid")
        peer = d.view.peer_by(who)
        if peer is None:
            for net in d.view.networks.values():
                for m in net.members:
                    if who in (m.node_id, m.nickname) and m.node_id != self._me():
                        raise HttpError(409, f"{m.nickname} ({m.node_id}) shares no network with you where you are both online",
                                        "not_peer")
            raise HttpError(404, f"no peer '{who}' (give a nickname, node id or overlay address; see `shoal list`)", "no_such_peer")
        key = PublicKey(peer.public_key)
        rtts: list[float | None] = []
        for i in range(count):
            if i:
                await sleep(d.sched, PING_GAP)
            rtts.append(await d.pinger.ping(peer.ipv4, float(timeout)))
        got = [r for r in rtts if r is not None]
        if got:
            d.rtt[key] = (got[-1], "ping")
        path = path_of(d, key)
        return T.PingResult(peer=T.PingPeer(node_id=peer.node_id, nickname=peer.nickname, ipv4=peer.ipv4),
                            path=path.path, endpoint=path.endpoint, sent=count, received=len(got),
                            rtt_ms=[round(r * 1000, 3) if r is not None else None for r in rtts])

    async def netcheck(self, body: dict[str, Any]) -> dict[str, Any]:
        from shoal.daemon.netcheck import api_netcheck

        return await api_netcheck(self.d, body)
