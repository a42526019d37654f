"""Write files so that a crash never leaves a half-written one: temp file + rename.

``durable`` (the default) also flushes the file to disk before the rename and the folder
after it, so a power loss cannot leave the new name pointing at a file whose data never
reached the disk: state that other records refer to (release memberships, sync
journals and snapshots, compliance reports) is written this way. Large or re-creatable
outputs (export files, the digest cache) pass ``durable=False``: a process crash still
leaves them whole or absent.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: Path, *, mode: int = 0o600, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it over ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        tmp.chmod(mode)
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, target)
        if durable:
            _fsync(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(target: Path, text: str, *, mode: int = 0o600, durable: bool = True) -> Path:
    with atomic_path(target, mode=mode, durable=durable) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def write_with(
    target: Path, writer: Callable[[Path], object], *, mode: int = 0o600, durable: bool = True
) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``target``."""
    with atomic_path(target, mode=mode, durable=durable) as tmp:
        writer(tmp)
    return target
