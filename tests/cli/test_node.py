"""The node CLI without a daemon: one-line errors, and the tables `list`/`status` render."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from typer.testing import CliRunner

from shoal.cli import node as node_cli
from shoal.cli.main import app
from shoal.cli.node import render_list, render_status
from shoal.daemon.localapi import ApiClient

STATUS = {
    "node": {"node_id": "me1", "nickname": "ann", "ipv4": "100.64.1.1", "ipv6": "fd00::1"},
    "public_key": "k", "view_version": 3,
    "server": {"url": "http://192.0.2.1:8080", "public_key": "x", "fingerprint": "AbCdEfGh"},
    "connection": {"state": "connected", "for_s": 12.0, "last_error": "", "connects": 1},
    "interface": {"name": "shoal0", "listen_port": 41641, "endpoints": ["203.0.113.1:41641"]},
    "networks": [{
        "network_id": "n1", "name": "lan-party", "owner_id": "me1", "locked": True, "approval": "manual",
        "role": "owner", "online": True, "pending": False,
        "members": [
            {"node_id": "me1", "nickname": "ann", "role": "owner", "online": True, "pending": False, "self": True, "tunnel": None},
            {"node_id": "b2", "nickname": "ben", "role": "member", "online": True, "pending": False, "self": False,
             "tunnel": {"path": "direct", "endpoint": "203.0.113.2:5000", "rtt_ms": 0.84, "ipv4": "100.64.1.2"}},
            {"node_id": "c3", "nickname": "cat", "role": "member", "online": False, "pending": False, "self": False, "tunnel": None},
            {"node_id": "d4", "nickname": "dan", "role": "member", "online": False, "pending": True, "self": False, "tunnel": None},
        ],
    }],
    "peers": [{"node_id": "b2", "nickname": "ben", "ipv4": "100.64.1.2", "ipv6": "fd00::2", "public_key": "y",
               "state": "online", "path": "direct", "endpoint": "203.0.113.2:5000", "rtt_ms": 0.84, "rtt_source": "ping",
               "last_handshake_s_ago": 4.0, "rx_bytes": 1, "tx_bytes": 2, "in_engine": True, "networks": ["lan-party"]}],
}


def render(fn, status) -> str:  # noqa: ANN001
    buf = io.StringIO()
    fn(status, Console(file=buf, width=200))
    return buf.getvalue()


def test_list_shows_each_member_state_path_endpoint_rtt():
    text = render(render_list, STATUS)
    assert "lan-party (n1) - locked, approval manual; you are online" in text
    ben = next(ln for ln in text.splitlines() if "ben" in ln)
    for cell in ("b2", "100.64.1.2", "member", "online", "direct", "203.0.113.2:5000", "0.84 ms"):
        assert cell in ben
    assert "offline" in next(ln for ln in text.splitlines() if "cat" in ln)
    assert "pending" in next(ln for ln in text.splitlines() if "dan" in ln)


def test_status_shows_connection_and_peers():
    text = render(render_status, STATUS)
    assert "http://192.0.2.1:8080 (key fingerprint AbCdEfGh)" in text and "connected (12 s)" in text
    assert "shoal0, UDP port 41641" in text
    assert "4 s ago" in next(ln for ln in text.splitlines() if "ben" in ln)
    away = {**STATUS, "connection": {"state": "reconnecting", "for_s": 42.0, "since": 1_700_000_000.0,
                                     "next_try_in_s": 7.2, "checking_tunnels": True, "last_error": "refused", "connects": 1},
            "peers": [{**STATUS["peers"][0], "liveness": "down", "last_seen_s_ago": 17.0}]}
    text = render(render_status, away)
    line = next(ln for ln in text.splitlines() if ln.startswith("connection"))
    assert "reconnecting since" in line and "next try in 7 s" in line and "checking every tunnel" in line
    assert "refused" in line
    ben = next(ln for ln in text.splitlines() if "ben" in ln)
    assert "down" in ben and "17 s ago" in ben
    logged_out = {**STATUS, "node": None, "server": None, "networks": [], "peers": []}
    assert "Not logged in" in render(render_status, logged_out) and "Not logged in" in render(render_list, logged_out)


def test_commands_without_a_daemon_fail_in_one_line(tmp_path):
    runner = CliRunner()
    sock = str(tmp_path / "none.sock")
    for args in (["status"], ["list", "--json"], ["join", "x", "-p", "y"], ["ping", "ben"], ["login", "http://192.0.2.1:8080"]):
        r = runner.invoke(app, [*args, "--socket", sock])
        assert r.exit_code == 1, (args, r.output)
        assert r.output.strip().count("\n") == 0 and r.output.startswith("shoal: the shoal daemon is not running")
    r = runner.invoke(app, ["create", "x", "--approval", "sometimes", "--socket", sock])
    assert r.exit_code == 2 and "auto or manual" in r.output


def test_list_and_status_show_the_lan_bits():
    l2 = {**STATUS["networks"][0], "network_id": "n2", "name": "ipx", "kind": "l2", "interface": "shoal-n2",
          "broadcast": False}
    status = {**STATUS, "networks": [l2], "interface": {**STATUS["interface"], "mode": "tap"}}
    assert "ipx (n2) - layer 2 on shoal-n2, locked, approval manual, broadcast off" in render(render_list, status)
    assert "shoal0 (Ethernet-like TAP), UDP port" in render(render_status, status)


def _login_answer(url: str) -> dict:
    return {"ok": True, "trusted_on_first_use": True, "fingerprint": "FpFpFpFp", "public_key": "KEYKEY",
            "server": url, "node": {"nickname": "ann", "node_id": "me1", "ipv4": "100.64.1.1", "ipv6": "fd00::1"}}


def test_login_over_plain_http_warns_loudly_with_the_fingerprint(tmp_path, monkeypatch):
    """F18: trust on first use over plain http says so loudly and shows the fingerprint to compare."""
    from shoal.daemon.localapi import ApiClient

    monkeypatch.setattr(ApiClient, "call", lambda self, m, e, b=None: _login_answer(b["server"]))
    r = CliRunner().invoke(app, ["login", "http://192.0.2.1:8080", "--socket", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert "WARNING" in r.output and "plain http" in r.output and "FpFpFpFp" in r.output
    assert "--server-key" in r.output
    r = CliRunner().invoke(app, ["login", "https://192.0.2.1:8443", "--socket", str(tmp_path / "s")])
    assert r.exit_code == 0 and "WARNING" not in r.output and "FpFpFpFp" in r.output


def test_login_https_against_a_plain_server_gets_a_clear_error(tmp_path, monkeypatch):
    """F18: the raw `SSL: WRONG_VERSION_NUMBER` becomes a line that says what to do."""
    from shoal.daemon.localapi import ApiClient, ApiError

    def call(self, m, e, b=None):  # noqa: ANN001, ANN202
        raise ApiError("cannot reach https://192.0.2.1:8080/v1/server-key: [SSL: WRONG_VERSION_NUMBER] "
                       "wrong version number (_ssl.c:1006)", "unreachable")

    monkeypatch.setattr(ApiClient, "call", call)
    r = CliRunner().invoke(app, ["login", "https://192.0.2.1:8080", "--socket", str(tmp_path / "s")])
    assert r.exit_code == 1
    assert "does not answer TLS" in r.output and "http://192.0.2.1:8080" in r.output
    assert "WRONG_VERSION_NUMBER" not in r.output


# ------------------------------------------------------------------ passwords (issue 18 F4)

_PW_COMMANDS = [["create", "lan"], ["join", "lan"], ["set-pass", "lan"]]


def _record_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    sent: list[dict] = []

    def call(self, method, endpoint, body=None):  # noqa: ANN001
        sent.append(body)
        return {"name": "lan", "network_id": "n1"}

    monkeypatch.setattr(ApiClient, "call", call)
    return sent


@pytest.mark.parametrize("argv", _PW_COMMANDS)
def test_without_a_password_and_without_a_terminal_nothing_is_sent(tmp_path, monkeypatch, argv):
    sent = _record_calls(monkeypatch)
    monkeypatch.setattr(node_cli, "_interactive", lambda: False)
    r = CliRunner().invoke(app, [*argv, "--socket", str(tmp_path / "s")])
    assert r.exit_code == 2 and sent == []
    assert "--password" in r.output and r.output.count("\n") == 1


@pytest.mark.parametrize("argv", _PW_COMMANDS)
def test_on_a_terminal_the_password_is_asked_hidden(tmp_path, monkeypatch, argv):
    sent = _record_calls(monkeypatch)
    monkeypatch.setattr(node_cli, "_interactive", lambda: True)
    prompts: list[str] = []
    monkeypatch.setattr(node_cli.getpass, "getpass", lambda prompt: prompts.append(prompt) or "typed-secret-1")
    r = CliRunner().invoke(app, [*argv, "--socket", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert sent[0]["password"] == "typed-secret-1" and "typed-secret-1" not in r.output
    assert len(prompts) == (1 if argv[0] == "join" else 2)  # a new password is asked twice


def test_an_empty_or_mistyped_password_is_refused_before_sending(tmp_path, monkeypatch):
    sent = _record_calls(monkeypatch)
    monkeypatch.setattr(node_cli, "_interactive", lambda: True)
    answers = iter(["", "first-one-1", "other-one-2"])
    monkeypatch.setattr(node_cli.getpass, "getpass", lambda prompt: next(answers))
    sock = ["--socket", str(tmp_path / "s")]
    r = CliRunner().invoke(app, ["join", "lan", *sock])
    assert r.exit_code == 1 and "empty" in r.output
    r = CliRunner().invoke(app, ["create", "lan", *sock])
    assert r.exit_code == 1 and "differ" in r.output
    r = CliRunner().invoke(app, ["join", "lan", "--password", "", *sock])
    assert r.exit_code == 1 and "empty" in r.output
    assert sent == []
