"""Modes of the files the gateway and the city platform create (issue 15).

The database, its WAL and shared-memory files, the log and the sink's database
hold a city's telemetry: they are created mode 0600 (owner only), or 0640 and
owned by the configured group (`[gateway] file_group`: e.g. a backup or log
reader), whatever the umask. A file an older version left 0644 is tightened
when it is opened again. Only regular files are touched: a symlink, a device
or a pipe at the path (`[log] file = "/dev/stderr"`, /dev/null) is left as it
is, never chmod-ed.

SQLite creates `-wal` and `-shm` with the mode of the database file, so
creating the database file first with the right mode is enough for the mode;
`secure_sqlite` also fixes their group and mode after opening (they may survive
a crash from an older version).

Securing a file never opens it for reading or writing once it exists: closing
any descriptor of a file drops every POSIX lock the process holds on it, and
SQLite's locks are POSIX locks. A gateway that lost them let the next outside
reader (a backup, `sqlite3`) believe it was the last connection, checkpoint and
delete the WAL the gateway was still writing into. Existing files are changed
through an `O_PATH` descriptor (Linux), which takes and drops no lock.

`set_group` is called once at startup (gateway/service.py) before any file is
opened; the default is no group (0600).
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("lumeau.gateway.files")

PRIVATE = 0o600
GROUP_READ = 0o640
SQLITE_SUFFIXES = ("-wal", "-shm", "-journal")

_group: int | None = None
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
_PATH_ONLY = getattr(os, "O_PATH", 0)


def group_id(group: str | int) -> int:
    """A group name or number -> its gid; ValueError naming it when it does not exist."""
    if isinstance(group, int) or (isinstance(group, str) and group.isdigit()):
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no group named {group!r}") from None


def set_group(group: str | int | None) -> None:
    """Files created from now on are 0640 and owned by `group`; None: 0600."""
    global _group
    _group = None if group is None or group == "" else group_id(group)


def mode(group: int | None = None) -> int:
    return GROUP_READ if (group if group is not None else _group) is not None else PRIVATE


def _apply(fd: int, group: int | None, path: str | Path, via: str | None = None) -> None:
    """Give the file open as `fd` its group and mode; `via`: change it through that path instead
    (an O_PATH descriptor's /proc entry: fchmod does not take O_PATH descriptors)."""
    g = group if group is not None else _group
    try:
        if via is None:
            if g is not None:
                os.fchown(fd, -1, g)
            os.fchmod(fd, mode(g))  # after the chown: a chown may clear bits, and the umask never applies
        else:
            if g is not None:
                os.chown(via, -1, g)
            os.chmod(via, mode(g))
    except PermissionError as e:  # a file of another user: usable as before, said loudly
        log.warning("cannot give %s mode %04o: %s", path, mode(g), e.strerror, extra={"path": str(path)})


def _ours(path: Path) -> bool | None:
    """True: a regular file (ours to tighten); None: missing; False: anything else -- a symlink, a
    device or a pipe (`file = "/dev/stderr"`, /dev/null): left exactly as it is, never chmod-ed."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return stat.S_ISREG(st.st_mode)


def create(path: str | Path, group: int | None = None) -> None:
    """Create `path` if missing and give a regular file the private mode and group (see _ours)."""
    path = Path(path)
    if _ours(path) is False:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, _NEW, PRIVATE)  # O_NOFOLLOW: a symlink planted meanwhile fails, is not followed
    except FileExistsError:
        secure(path, group)  # never opened read/write: SQLite may hold locks on it (module docstring)
        return
    try:
        _apply(fd, group, path)
    finally:
        os.close(fd)


def secure(path: str | Path, group: int | None = None) -> None:
    """Give an existing regular file the private mode and group; anything else is left alone."""
    if not _ours(Path(path)):
        return
    if not _PATH_ONLY or not os.path.isdir("/proc/self/fd"):
        _apply_by_path(Path(path), group)
        return
    try:
        fd = os.open(path, _PATH_ONLY | _NOFOLLOW)  # no read, no write: closing it drops no lock
    except (FileNotFoundError, IsADirectoryError):
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # not a symlink planted since _ours: O_NOFOLLOW opened the link
            _apply(fd, group, path, via=f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _apply_by_path(path: Path, group: int | None) -> None:
    """Without O_PATH (not Linux): by name, after _ours checked it is a regular file. A symlink
    planted between the check and the change would be followed: a named limit of other systems."""
    g = group if group is not None else _group
    try:
        if g is not None:
            os.chown(path, -1, g, follow_symlinks=False)
        os.chmod(path, mode(g))
    except FileNotFoundError:
        return
    except PermissionError as e:
        log.warning("cannot give %s mode %04o: %s", path, mode(g), e.strerror, extra={"path": str(path)})


def secure_sqlite(path: str | Path, group: int | None = None) -> None:
    """The database file (created if missing) and its -wal, -shm and -journal files."""
    create(path, group)
    for suffix in SQLITE_SUFFIXES:
        with contextlib.suppress(OSError):  # a sidecar SQLite removes meanwhile
            secure(f"{path}{suffix}", group)
