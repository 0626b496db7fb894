"""The core's password rules (issue 18 F3, F4): scrypt only as jobs for the glue, the work
budget per node, the wrong-password budgets per node, source prefix and network name, the
minimum length, and no existence oracle on join."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import constants as C
from shoal.control import messages as m
from shoal.server.core import Core, Effects, PasswordJob, PutNetwork, Send

from .helpers import FAST_HASHER, PW, ULA, Harness, key_of


@pytest.fixture
def h() -> Harness:
    return Harness()


def results(h: Harness) -> list[m.Result]:
    return [o.message for o in h.last.sends() if isinstance(o.message, m.Result)]


def send(h: Harness, who: str, cls: type, **kw: object) -> list[m.Result]:
    h.send(who, cls(req_id=1, **kw))
    return results(h)


def owner_and_net(h: Harness) -> str:
    h.login("alice")
    return h.create("alice", "lan")


# ------------------------------------------------------------------ F3: scrypt is a job, never inline


def test_set_password_hashes_in_a_job_and_answers_when_it_is_done(h: Harness) -> None:
    net = owner_and_net(h)
    before = h.core.networks[net].password_hash
    h.run_jobs = False
    assert send(h, "alice", m.SetPassword, network_id=net, password="a-new-password") == []  # no Result yet
    assert h.last.persist == [] and h.core.networks[net].password_hash == before
    [job] = h.jobs
    assert isinstance(job, PasswordJob) and job.salt is not None and job.stored is None
    assert "a-new-password" not in repr(job)  # the password never reaches a log line
    h.finish(job)
    [r] = results(h)
    assert r.ok and r.network_id == net
    assert [type(p) for p in h.last.persist] == [PutNetwork]
    assert h.core.networks[net].password_hash != before
    h.run_jobs = True
    h.login("bob")
    assert h.join("bob", "lan", password="a-new-password").ok


def test_join_with_an_unknown_password_is_verified_in_a_job(h: Harness) -> None:
    owner_and_net(h)
    h.login("bob")
    h.run_jobs = False
    assert send(h, "bob", m.JoinNetwork, name="lan", password="not-the-password") == []
    [job] = h.jobs
    assert job.stored is not None and job.salt is None and job.run() is False
    h.finish(job)
    [r] = results(h)
    assert r.code == "wrong_password" and h.last.persist == []


def test_a_verified_password_takes_the_fast_path_without_a_job(h: Harness) -> None:
    owner_and_net(h)  # the creator's password is known to the fast path
    h.login("bob")
    h.run_jobs = False
    [r] = send(h, "bob", m.JoinNetwork, name="lan", password=PW)
    assert r.ok and h.jobs == []


def test_the_sixth_set_password_in_a_second_is_refused_even_after_a_reconnect(h: Harness) -> None:
    net = owner_and_net(h)
    h.advance(60)  # the create's token is back
    burst, rate = C.PASSWORD_WORK
    assert (burst, rate) == (5, 0.5)
    codes = [h.req("alice", m.SetPassword, network_id=net, password=f"password-{i}").code for i in range(int(burst))]
    assert codes == [""] * 5
    h.drop("alice")
    h.login("alice")  # a new session does not bring a new budget
    h.advance(0.5)
    r = h.req("alice", m.SetPassword, network_id=net, password="password-6")
    assert r.code == "rate_limited" and "try again" in r.message
    h.advance(1 / rate)
    assert h.req("alice", m.SetPassword, network_id=net, password="password-7").ok


def test_a_busy_pool_answers_busy_and_changes_nothing(h: Harness) -> None:
    h.login("alice")
    h.run_jobs = False
    assert send(h, "alice", m.CreateNetwork, name="lan", password=PW) == []
    [job] = h.jobs
    h.jobs.clear()
    h._apply(h.core.password_failed(job.job_id, "busy", "the server is busy; try again", h.now))
    [r] = results(h)
    assert (r.ok, r.code) == (False, "busy") and h.core.networks == {} and h.last.persist == []
    h._apply(h.core.password_done(job.job_id, job.run(), h.now))  # a late result for it: nothing
    assert h.last.out == [] and h.core.networks == {}


def test_rules_are_checked_again_when_the_job_is_done(h: Harness) -> None:
    h.login("alice")
    h.login("bob")
    h.run_jobs = False
    send(h, "alice", m.CreateNetwork, name="lan", password=PW)
    send(h, "bob", m.CreateNetwork, name="LAN", password=PW)
    first, second = h.jobs
    h.finish(first)
    assert results(h)[0].ok
    h.finish(second)  # the name was taken while bob's hash ran
    assert results(h)[0].code == "name_taken" and len(h.core.networks) == 1


def test_a_result_for_a_closed_session_is_dropped(h: Harness) -> None:
    net = owner_and_net(h)
    h.run_jobs = False
    send(h, "alice", m.SetPassword, network_id=net, password="a-new-password")
    [job] = h.jobs
    before = h.core.networks[net]
    h.drop("alice")
    h.finish(job)
    assert h.last.out == [] and h.last.persist == [] and h.core.networks[net] == before


def test_join_checks_against_the_current_hash_after_a_password_change(h: Harness) -> None:
    net = owner_and_net(h)
    h.login("bob")
    h.run_jobs = False
    send(h, "bob", m.JoinNetwork, name="lan", password="old-one-1")
    [verify] = h.jobs
    h.jobs.clear()
    h.run_jobs = True
    assert h.req("alice", m.SetPassword, network_id=net, password="old-one-1").ok
    h.run_jobs = False
    h.core._fast_pw.clear()  # as after a restart: only scrypt can say
    h._apply(h.core.password_done(verify.job_id, verify.run(), h.now))  # checked the hash before the change
    assert results(h) == [] and len(h.jobs) == 1  # so it is checked again, against the new hash
    h.finish(h.jobs[0])
    assert results(h)[0].ok


# ------------------------------------------------------------------ F4: password rules, budgets, no oracle


@pytest.mark.parametrize("pw", ["", "short", "7-chars"])
def test_weak_passwords_are_refused_on_create_and_set(h: Harness, pw: str) -> None:
    net = owner_and_net(h)
    r = h.req("alice", m.CreateNetwork, name="other", password=pw)
    assert r.code == "weak_password" and str(C.PASSWORD_MIN_LENGTH) in r.message
    r = h.req("alice", m.SetPassword, network_id=net, password=pw)
    assert r.code == "weak_password" and h.last.jobs == []
    assert h.req("alice", m.SetPassword, network_id=net, password="x" * C.PASSWORD_MIN_LENGTH).ok


def test_a_network_stored_with_a_short_password_still_admits_it(h: Harness) -> None:
    """A network from before the minimum length keeps working until its owner re-keys it."""
    net = owner_and_net(h)
    h.core.networks[net] = dataclasses.replace(h.core.networks[net], password_hash=h.core._hasher.hash("pw", bytes(16)))
    h.core._fast_pw.clear()
    h.login("bob")
    assert h.join("bob", "lan", password="pw").ok


def test_missing_banned_and_locked_networks_answer_like_a_wrong_password(h: Harness) -> None:
    net = owner_and_net(h)
    h.create("alice", "shut")
    assert h.req("alice", m.SetAccess, network_id=h.core._by_name["shut"], locked=True).ok
    h.login("bob")
    assert h.join("bob", "lan").ok
    assert h.req("alice", m.Evict, network_id=net, node_id=h.nid("bob"), ban=True).ok
    h.run_jobs = False
    answers = {}
    for name in ("lan", "shut", "ghost"):  # bob is banned from lan; shut is locked; ghost does not exist
        assert send(h, "bob", m.JoinNetwork, name=name, password="a-wrong-guess") == []
        [job] = h.jobs
        assert job.stored is not None and job.stored.split("$")[:4] == h.core.networks[net].password_hash.split("$")[:4]
        h.finish(job)  # the same work, existing or not
        [r] = results(h)
        answers[name] = (r.code, r.message.replace(repr(name), "NAME"))
    assert set(answers.values()) == {("wrong_password", "wrong password for network NAME, or no such network")}
    h.run_jobs = True
    assert h.join("bob", "lan").code == "banned"  # only the right password learns more
    assert h.join("bob", "shut").code == "locked"


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_wrong_passwords_are_limited_per_source_prefix_whatever_the_key(h: Harness, family: str) -> None:
    owner_and_net(h)
    burst, _ = C.PASSWORD_FAIL_PREFIX
    n = int(burst)
    # one /24 (IPv4) or one /48 (IPv6: a different /56 and /64 each time)
    addr = (lambda i: f"198.51.100.{1 + i}") if family == "ipv4" else (lambda i: f"2001:db8:1:{i:02x}00::1")
    codes = []
    for i in range(n + 1):
        who = f"guesser{i}"  # a fresh key each time: the per-node budget never runs out
        h.login(who, remote_ip=addr(i))
        codes.append(h.join(who, "lan", password=f"guess-{i:04d}").code)
    assert codes == ["wrong_password"] * n + ["rate_limited"]
    h.login("neighbour", remote_ip=addr(n + 1))  # the same prefix, the right password: refused too
    assert h.join("neighbour", "lan").code == "rate_limited"
    h.login("elsewhere", remote_ip="203.0.113.5" if family == "ipv4" else "2001:db8:2::1")
    assert h.join("elsewhere", "lan").ok


def test_wrong_passwords_are_limited_per_network_name_existing_or_not(h: Harness) -> None:
    owner_and_net(h)
    burst, _ = C.PASSWORD_FAIL_NETWORK
    for target in ("lan", "ghost"):
        codes = []
        for i in range(int(burst) + 1):
            who = f"{target}-g{i}"
            h.login(who, remote_ip=f"10.{i}.{len(target)}.1")  # a prefix of its own each
            codes.append(h.join(who, target.upper(), password=f"guess-{i:04d}").code)
        assert codes == ["wrong_password"] * int(burst) + ["rate_limited"], target
    h.login("late", remote_ip="203.0.113.9")
    assert h.join("late", "lan").code == "rate_limited"  # the price of the per-network budget
    h.create("alice", "other")
    assert h.join("late", "other").ok  # other names are not affected


# ------------------------------------------------------------------ property: jobs finishing in any order

_ops = st.lists(st.tuples(
    st.integers(0, 2),
    st.sampled_from(["create", "join", "setpw", "delete", "lock", "drop", "finish", "fail", "tick"]),
    st.sampled_from(["lan", "LAN", "club", "ghost"]),
    st.sampled_from(["", "short", PW, "another-password"]),
    st.integers(0, 7),
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(_ops)
def test_jobs_finishing_late_in_any_order_never_break_the_core(ops: list[tuple[int, str, str, str, int]]) -> None:
    """Requests, drops and job results interleaved at random: nothing raises, every request on
    a session that stays up gets exactly one Result, and no job is left behind."""
    core = Core(ULA, now=0.0, rng=random.Random(0).randbytes, hasher=FAST_HASHER)
    keys = [key_of(f"p{i}") for i in range(3)]
    session: dict[int, int] = {}
    asked: dict[int, int] = {}  # req_id -> session
    answers: dict[int, int] = {}  # req_id -> number of Results
    dropped: set[int] = set()
    jobs: list[PasswordJob] = []
    now, sid, rid = 0.0, 0, 0

    def take(fx: Effects) -> None:
        jobs.extend(fx.jobs)
        for o in fx.out:
            if isinstance(o, Send) and isinstance(o.message, m.Result) and o.message.req_id in asked:
                answers[o.message.req_id] = answers.get(o.message.req_id, 0) + 1
                m.decode_server(m.encode(o.message))

    for who, op, name, pw, pick in ops:
        now += 0.5
        if who not in session:
            sid += 1
            session[who] = sid
            take(core.connect(sid, keys[who], now, f"198.51.100.{who + 1}"))
            take(core.receive(sid, m.Login(), now))
        s = session[who]
        nets = sorted(core.networks)
        nid = nets[pick % len(nets)] if nets else "none"
        rid += 1
        msg: m.ClientMessage | None = {
            "create": lambda: m.CreateNetwork(req_id=rid, name=name, password=pw),
            "join": lambda: m.JoinNetwork(req_id=rid, name=name, password=pw),
            "setpw": lambda: m.SetPassword(req_id=rid, network_id=nid, password=pw),
            "delete": lambda: m.DeleteNetwork(req_id=rid, network_id=nid),
            "lock": lambda: m.SetAccess(req_id=rid, network_id=nid, locked=pick % 2 == 0),
        }.get(op, lambda: None)()
        if msg is not None:
            asked[rid] = s
            take(core.receive(s, msg, now))
        elif op == "drop":
            take(core.disconnect(s, now))
            dropped.add(s)
            del session[who]
        elif op in ("finish", "fail") and jobs:
            job = jobs.pop(pick % len(jobs))
            take(core.password_done(job.job_id, job.run(), now) if op == "finish"
                 else core.password_failed(job.job_id, "busy", "busy", now))
        elif op == "tick":
            now += 30.0
            take(core.handle_timer(now))
    while jobs:
        job = jobs.pop(0)
        take(core.password_done(job.job_id, job.run(), now))
    assert all(n == 1 for n in answers.values()), answers
    assert {r for r, s in asked.items() if s not in dropped} <= set(answers)
    assert core._jobs == {}
