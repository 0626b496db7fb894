"""Private files on disk: the one helper every key/state writer uses (issue 18, F20).

Owns the rules for files that hold secrets or trusted state (server.key, shoal.db, node.key,
server.json, view.bin) and the directories that hold them:

- a private directory is made with mode 0700; one that already exists must be a real
  directory (not a symlink) owned by us and not accessible by group/others, else
  `PrivateFileError` says which and the `chmod` that fixes it. Nothing is changed silently.
- an existing private file must be a regular file (not a symlink) owned by us with no
  group/other bits, else `PrivateFileError`.
- `write_private` writes atomically: a fresh temp file in the same directory made by
  `tempfile.mkstemp` (O_CREAT|O_EXCL, so a planted file or symlink is never followed or
  reused) with mode 0600 before any byte is written, fsync, then rename over the target.
- `create_private_empty` makes a new empty file 0600 with O_EXCL|O_NOFOLLOW (for files another
  library then opens, like SQLite's database, which would otherwise get the umask's 0644).

`PrivateFileError` is a `PermissionError`, so callers that report OSErrors report it as is.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


class PrivateFileError(PermissionError):
    """A key/state file or directory others could read or swap; the message says how to fix it."""


def _check(path: Path, st: os.stat_result, kind: str, fix_mode: int) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise PrivateFileError(f"{path} is a symlink; a {kind} must be a real one (move it away)")
    if st.st_uid != os.geteuid():
        raise PrivateFileError(f"{path} is owned by uid {st.st_uid}, not by us (uid {os.geteuid()}); "
                               f"run: chown {os.geteuid()} {path}")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PrivateFileError(f"{path} is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
                               f"run: chmod {fix_mode:o} {path}")


def ensure_private_dir(path: Path) -> None:
    """Make `path` (mode 0700, parents as needed) or check the existing one."""
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
        return
    except FileExistsError:
        pass
    st = path.lstat()
    if not stat.S_ISLNK(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        raise PrivateFileError(f"{path} is not a directory")
    _check(path, st, "data directory", PRIVATE_DIR_MODE)


def check_private_file(path: Path) -> bool:
    """True if `path` exists and is private; False if it does not exist; else PrivateFileError."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISLNK(st.st_mode) and not stat.S_ISREG(st.st_mode):
        raise PrivateFileError(f"{path} is not a regular file")
    _check(path, st, "key/state file", PRIVATE_FILE_MODE)
    return True


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, mode 0600 (see the module docstring)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # mkstemp already makes 0600; say it, whatever the platform
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def create_private_empty(path: Path) -> bool:
    """Create `path` empty with mode 0600 unless it exists (then check it). True if created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    except FileExistsError:
        check_private_file(path)
        return False
    os.close(fd)
    return True
