"""shoal.securefile: private dirs/files are checked when they exist, temp files are never
planted-file or symlink followers (F20)."""

from __future__ import annotations

import os
import stat

import pytest

from shoal.securefile import (
    PrivateFileError, check_private_file, create_private_empty, ensure_private_dir, write_private,
)


def test_new_dir_is_0700_and_an_open_one_is_refused(tmp_path):
    d = tmp_path / "a" / "data"
    ensure_private_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    ensure_private_dir(d)  # existing private dir: fine
    for mode in (0o755, 0o750, 0o701):
        os.chmod(d, mode)
        with pytest.raises(PrivateFileError, match="chmod 700"):
            ensure_private_dir(d)


def test_symlinked_dir_or_file_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(PrivateFileError, match="symlink"):
        ensure_private_dir(tmp_path / "link")
    (real / "f").write_bytes(b"x")
    os.chmod(real / "f", 0o600)
    (real / "g").symlink_to(real / "f")
    with pytest.raises(PrivateFileError, match="symlink"):
        check_private_file(real / "g")


def test_check_file(tmp_path):
    p = tmp_path / "k"
    assert check_private_file(p) is False
    p.write_bytes(b"x")
    os.chmod(p, 0o600)
    assert check_private_file(p) is True
    os.chmod(p, 0o640)
    with pytest.raises(PrivateFileError, match="chmod 600"):
        check_private_file(p)


def test_write_private_is_0600_whatever_the_umask_and_ignores_a_planted_temp(tmp_path):
    target = tmp_path / "server.json"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    # the old writer used the predictable .server.json.<pid>.tmp with O_TRUNC and followed it
    (tmp_path / f".server.json.{os.getpid()}.tmp").symlink_to(victim)
    old = os.umask(0)
    try:
        write_private(target, b"secret")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert victim.read_bytes() == b"keep"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]


def test_create_private_empty(tmp_path):
    p = tmp_path / "db"
    old = os.umask(0)
    try:
        assert create_private_empty(p) is True
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert create_private_empty(p) is False
    os.chmod(p, 0o644)
    with pytest.raises(PrivateFileError):
        create_private_empty(p)
    q = tmp_path / "q"
    q.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PrivateFileError, match="symlink"):
        create_private_empty(q)
