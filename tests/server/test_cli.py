"""`shoal server` start checks: the data dir and its key/db files must be private (F20)."""

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
