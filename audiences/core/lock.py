"""The project lock: one run at a time per project (cron overlapping a manual sync).

``fcntl.flock`` on ``.audiences/lock``: the kernel drops the lock when its holder exits,
however it dies (``kill -9``, OOM, power loss of the process), so a lock file left
behind never blocks the next run. The file only carries who holds the lock (pid, host,
user, start time, command) for the error message; it is emptied on release and never
deleted (deleting a flock'ed file lets two runs lock two different files).

flock works on local filesystems; keep the state directory off NFS.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audiences.core.errors import LockHeld, StateError
from audiences.core.records import pick

_MAX_COMMAND = 200


@dataclass(frozen=True, slots=True)
class LockHolder:
    pid: int | None
    host: str | None
    user: str | None
    started_at: str | None
    command: str | None

    def describe(self) -> str:
        if self.pid is None:
            return "another process (it has not written its details yet)"
        parts = [f"pid {self.pid}"]
        if self.host:
            parts.append(f"on {self.host}")
        if self.user:
            parts.append(f"user {self.user}")
        if self.started_at:
            parts.append(f"since {self.started_at}")
        if self.command:
            parts.append(f"running {self.command!r}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return pick(self, "pid host user started_at command")


def _read_holder(fd: int) -> LockHolder:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw.decode()) if raw.strip() else {}
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}

    def text(key: str) -> str | None:
        value = data.get(key)
        return str(value) if value is not None else None

    pid = data.get("pid")
    return LockHolder(
        pid if isinstance(pid, int) else None,
        text("host"),
        text("user"),
        text("started_at"),
        text("command"),
    )


def _current_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def _default_command() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return " ".join([name, *sys.argv[1:]])


class ProjectLock:
    """``with ProjectLock(state_dir / "lock", command="audiences sync --all"): ...``

    Raises :class:`LockHeld` (exit 75) naming the holder when another process holds it.
    Not re-entrant: a second ``ProjectLock`` on the same path in the same process is
    refused too.
    """

    def __init__(self, path: Path | str, *, command: str | None = None) -> None:
        self.path = Path(path)
        self.command = (command if command is not None else _default_command())[:_MAX_COMMAND]
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> LockHolder:
        if self._fd is not None:
            raise StateError(f"lock {self.path} is already held by this object", None)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot create the state folder {self.path.parent} ({exc.strerror or exc})",
                "set state_dir in audiences.toml ([project]) to a writable local folder",
            ) from None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(
                f"cannot open the project lock {self.path} ({exc.strerror})",
                "check that the state directory exists and is writable by this user",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            # The winner writes its details right after taking the lock: give it a moment.
            deadline = time.monotonic() + 0.5
            while holder.pid is None and time.monotonic() < deadline:
                time.sleep(0.02)
                holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockHeld(
                    f"another run holds the project lock {self.path}: {holder.describe()}",
                    "wait for it to finish (cron: the next run will catch up); a killed "
                    "run releases the lock by itself",
                ) from None
            raise StateError(
                f"cannot lock {self.path} ({exc.strerror})",
                "keep the state directory on a local filesystem (flock does not work on "
                "some network filesystems)",
            ) from None
        me = LockHolder(
            os.getpid(),
            socket.gethostname(),
            _current_user(),
            datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            self.command,
        )
        data = json.dumps(me.to_dict(), sort_keys=True).encode() + b"\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        with contextlib.suppress(OSError):
            os.fsync(fd)
        self._fd = fd
        return me

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> ProjectLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def lock_holder(path: Path | str) -> LockHolder | None:
    """Who holds the lock at ``path`` now (``None`` if nobody): for ``audiences status``."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
