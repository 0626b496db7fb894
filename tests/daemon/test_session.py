"""Request correlation (`Requests`): each caller gets the Result with its req_id, and clear
errors for a silent server, a failing send, a dropped connection or a bad request."""

from __future__ import annotations

import asyncio

import pytest

from shoal.control import messages as M
from shoal.daemon import session
from shoal.daemon.localapi import HttpError
from shoal.daemon.session import Requests


class Conn:
    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[M._Msg] = []
        self.fail = fail

    async def send(self, msg: M._Msg) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append(msg)


async def test_answers_go_to_the_caller_with_that_req_id():
    reqs, conn = Requests(), Conn()
    a = asyncio.create_task(reqs.call(conn, lambda r: M.SetNickname(req_id=r, nickname="a")))
    b = asyncio.create_task(reqs.call(conn, lambda r: M.SetNickname(req_id=r, nickname="b")))
    while len(conn.sent) < 2:
        await asyncio.sleep(0)
    ids = {m.nickname: m.req_id for m in conn.sent}
    assert ids["a"] != ids["b"] and set(reqs.pending) == set(ids.values())
    reqs.answer(M.Result(req_id=999, ok=True))  # nobody asked: ignored
    reqs.answer(M.Result(req_id=ids["b"], ok=False, code="no"))
    reqs.answer(M.Result(req_id=ids["a"], ok=True))
    assert (await a).ok and (await b).code == "no"
    assert reqs.pending == {}
    reqs.answer(M.Result(req_id=ids["a"], ok=True))  # a late duplicate: ignored


async def test_a_silent_server_is_a_504_and_the_slot_is_freed():
    reqs = Requests()
    with pytest.raises(HttpError) as e:
        await reqs.call(Conn(), lambda r: M.Logout(req_id=r), timeout=0.01)
    assert (e.value.status, e.value.code) == (504, "timeout") and reqs.pending == {}


async def test_a_dropped_connection_fails_every_waiting_caller():
    reqs, conn = Requests(), Conn()
    calls = [asyncio.create_task(reqs.call(conn, lambda r: M.Logout(req_id=r))) for _ in range(3)]
    while len(conn.sent) < 3:
        await asyncio.sleep(0)
    reqs.fail_all()
    for c in calls:
        with pytest.raises(HttpError) as e:
            await c
        assert (e.value.status, e.value.code) == (503, "not_connected")
    assert reqs.pending == {}


async def test_a_failing_send_and_a_bad_request():
    reqs = Requests()
    with pytest.raises(HttpError) as e:
        await reqs.call(Conn(OSError("broken pipe")), lambda r: M.Logout(req_id=r))
    assert (e.value.status, e.value.code) == (503, "not_connected") and "broken pipe" in e.value.message
    conn = Conn()

    def bad(req_id: int) -> M._Msg:  # a handler's input the message cannot hold
        raise ValueError("nickname too long")

    with pytest.raises(HttpError) as e:
        await reqs.call(conn, bad)
    assert (e.value.status, e.value.code) == (400, "invalid") and "nickname too long" in e.value.message
    assert reqs.pending == {} and conn.sent == []


def test_login_failed_carries_its_code():
    e = session.LoginFailed("the server refused the login: banned", "banned")
    assert (str(e), e.code) == ("the server refused the login: banned", "banned")
