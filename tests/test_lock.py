"""The project lock: one run at a time, holder named, released when the holder dies."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from audiences.core.errors import EXIT_LOCKED, LockHeld
from audiences.core.lock import ProjectLock, lock_holder

HOLDER = """
import sys, time
from audiences.core.lock import ProjectLock
lock = ProjectLock(sys.argv[1], command="audiences sync --all --json")
lock.acquire()
print("locked", flush=True)
sys.stdin.read()  # hold until the parent closes stdin (or kills us)
lock.release()
print("released", flush=True)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A real second process holding the lock at tmp_path/.audiences/lock."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / ".audiences" / "lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ) as proc:
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "locked"
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def test_second_process_gets_lock_held_naming_the_holder(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    lock = ProjectLock(tmp_path / ".audiences" / "lock", command="audiences sync --all")
    with pytest.raises(LockHeld, match=rf"holds the project lock .*: pid {holder.pid} on ") as info:
        lock.acquire()
    assert info.value.exit_code == EXIT_LOCKED
    assert "running 'audiences sync --all --json'" in str(info.value)
    assert not lock.held
    found = lock_holder(tmp_path / ".audiences" / "lock")
    assert found is not None
    assert (found.pid, found.command) == (holder.pid, "audiences sync --all --json")


def test_lock_is_free_after_the_holder_releases(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    path = tmp_path / ".audiences" / "lock"
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.close()
    assert holder.stdout.readline().strip() == "released"
    assert lock_holder(path) is None
    with ProjectLock(path, command="audiences build x") as lock:
        assert lock.held
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_sigkilled_holder_leaves_no_stale_lock(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    path = tmp_path / ".audiences" / "lock"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert json.loads(path.read_text())["pid"] == holder.pid  # the file is still there...
    with ProjectLock(path) as lock:  # ...but it does not block
        assert lock.held
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_lock_file_is_private_and_emptied_on_release(tmp_path: Path) -> None:
    path = tmp_path / "state" / "lock"
    with ProjectLock(path, command="audiences sync --all") as lock:
        info = json.loads(path.read_text())
        assert set(info) == {"pid", "host", "user", "started_at", "command"}
        assert info["command"] == "audiences sync --all"
        found = lock_holder(path)
        assert found is not None and found.pid == os.getpid()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == ""
    assert not lock.held
    assert lock_holder(path) is None


def test_not_reentrant_within_one_process(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with ProjectLock(path), pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
        ProjectLock(path).acquire()
    with ProjectLock(path):  # and free again afterwards
        pass


def test_lock_is_released_when_the_body_raises(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with pytest.raises(RuntimeError), ProjectLock(path):
        raise RuntimeError("boom")
    with ProjectLock(path) as lock:
        assert lock.held


def test_holder_without_details_is_still_reported(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    path.write_text("not json")
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a holder that has not written its details yet
        with pytest.raises(LockHeld, match=r"another process .it has not written its details"):
            ProjectLock(path).acquire()
    finally:
        os.close(fd)
    with ProjectLock(path):
        pass
    assert lock_holder(tmp_path / "missing") is None
