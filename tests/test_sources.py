"""The source digest: the DP ledger's dataset id and the builds' record of their input."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import blake3
import pytest

from audiences.core.config import ProjectConfig, load_config
from audiences.core.errors import DataError
from audiences.crm.sources import load_sources, source_digest


@pytest.fixture
def project(tmp_path: Path) -> ProjectConfig:
    from audiences.demo.sample import write
    from audiences.pipeline.project import init_project

    root = tmp_path / "project"
    init_project(root)
    write(root / "data", 60, seed=3, as_of=dt.date(2025, 6, 1), formats=("parquet",))
    (root / ".audiences").mkdir(exist_ok=True)
    return load_config(root / "audiences.toml")


def digest_of(*files: Path) -> str:
    outer = hashlib.sha256()
    for path in files:
        outer.update(blake3.blake3(path.read_bytes()).hexdigest().encode())
    return outer.hexdigest()


def test_the_digest_is_sha256_over_each_file_s_blake3(project: ProjectConfig) -> None:
    data = project.root / "data"
    want = digest_of(data / "contacts.parquet", data / "events.parquet")
    assert source_digest(project) == want
    assert load_sources(project).digest == want  # the background thread's result
    # the published BLAKE3 vector for b"abc" (the library is not checked against itself)
    assert blake3.blake3(b"abc").hexdigest() == (
        "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    )


def test_changed_content_changes_the_digest_even_at_the_same_size(
    project: ProjectConfig,
) -> None:
    path = project.root / "data" / "contacts.parquet"
    before = source_digest(project)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one byte different
    path.write_bytes(bytes(raw))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000))
    assert source_digest(project) != before


@pytest.mark.parametrize("algorithm", ["blake2b", "sha256"])
def test_a_file_digested_before_keeps_its_dataset_id(
    project: ProjectConfig, algorithm: str
) -> None:
    # A digest cached by an earlier version (BLAKE2b, then SHA-256) stays the file's
    # dataset id while the file is unchanged: an upgrade must not hand out a fresh budget.
    data = project.root / "data"
    contacts, events = data / "contacts.parquet", data / "events.parquet"
    earlier = {
        p: hashlib.new(algorithm, p.read_bytes()).hexdigest()[:64] for p in (contacts, events)
    }
    cache = {f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}": d for p, d in earlier.items()}
    (project.state_dir / "digests.json").write_text(json.dumps(cache))
    outer = hashlib.sha256()
    for path in (contacts, events):
        outer.update(earlier[path].encode())
    assert source_digest(project) == outer.hexdigest()


def test_the_cache_is_used_and_keyed_by_size_and_mtime(
    project: ProjectConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = source_digest(project)
    cache = json.loads((project.state_dir / "digests.json").read_text())
    assert len(cache) == 2
    assert all(len(value) == 64 for value in cache.values())  # digests only, no content

    def unread(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a cached file was read again")

    monkeypatch.setattr(hashlib, "file_digest", unread)
    assert source_digest(project) == first


def test_a_missing_source_is_a_one_line_error(project: ProjectConfig) -> None:
    (project.root / "data" / "events.parquet").unlink()
    with pytest.raises(DataError) as caught:
        source_digest(project)
    assert "events" in caught.value.what
