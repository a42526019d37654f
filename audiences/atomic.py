"""Write files so that a crash never leaves a half-written one: temp file + rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: Path, *, mode: int = 0o600) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it over ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        tmp.chmod(mode)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(target: Path, text: str, *, mode: int = 0o600) -> Path:
    with atomic_path(target, mode=mode) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def write_with(target: Path, writer: Callable[[Path], object], *, mode: int = 0o600) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``target``."""
    with atomic_path(target, mode=mode) as tmp:
        writer(tmp)
    return target
