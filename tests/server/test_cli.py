"""`shoal server` start checks: the data dir and its key/db files must be private (F20); TLS options."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from shoal.cli.main import app


def _run(data_dir) -> object:  # noqa: ANN001
    return CliRunner().invoke(app, ["server", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
                                    "--stun-port", "0", "--no-relay"])


@pytest.mark.parametrize("what,mode", [("dir", 0o755), ("server.key", 0o644), ("shoal.db", 0o640)])
def test_server_refuses_an_open_data_dir_or_key_or_db(tmp_path, what, mode) -> None:  # noqa: ANN001
    d = tmp_path / "data"
    d.mkdir(mode=0o700)
    if what == "dir":
        os.chmod(d, mode)
    else:
        (d / what).write_text("x")
        os.chmod(d / what, mode)
    r = _run(d)
    assert r.exit_code == 1, r.output
    assert "accessible by group/others" in r.output and "chmod" in r.output
    assert not (d / "server.key").exists() or what == "server.key"


def test_server_tls_options_are_checked_before_anything_listens(tmp_path) -> None:  # noqa: ANN001
    from shoal.testing.tls import self_signed

    cert, _ = self_signed(tmp_path / "a", "127.0.0.1")
    _, other = self_signed(tmp_path / "b", "127.0.0.1")
    base = ["server", "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0", "--stun-port", "0", "--no-relay"]
    r = CliRunner().invoke(app, [*base, "--tls-cert", str(cert)])
    assert r.exit_code == 2 and "--tls-cert and --tls-key go together" in r.output
    r = CliRunner().invoke(app, [*base, "--tls-cert", str(cert), "--tls-key", str(other)])
    assert r.exit_code == 1 and "not a usable certificate and key" in r.output
    r = CliRunner().invoke(app, [*base, "--tls-cert", str(tmp_path / "nope.crt"), "--tls-key", str(other)])
    assert r.exit_code == 1 and "no such file" in r.output
    assert not (tmp_path / "data").exists()
