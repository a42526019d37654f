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


EARLIER = {  # what earlier versions cached per file
    "blake2b": lambda data: hashlib.blake2b(data, digest_size=32).hexdigest(),
    "sha256": lambda data: hashlib.sha256(data).hexdigest(),
}


@pytest.mark.parametrize("algorithm", sorted(EARLIER))
@pytest.mark.parametrize("touched", [False, True])
def test_a_file_digested_before_keeps_its_dataset_id(
    project: ProjectConfig, algorithm: str, touched: bool
) -> None:
    # A digest cached by an earlier version (BLAKE2b, then SHA-256, under a size-and-mtime
    # key) stays the file's dataset id while the file is unchanged, touched or not: an
    # upgrade must not hand out a fresh budget.
    data = project.root / "data"
    contacts, events = data / "contacts.parquet", data / "events.parquet"
    earlier = {p: EARLIER[algorithm](p.read_bytes()) for p in (contacts, events)}
    cache = {f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}": d for p, d in earlier.items()}
    (project.state_dir / "digests.json").write_text(json.dumps(cache))
    if touched:
        os.chmod(contacts, 0o600)  # a new ctime, the same content
    outer = hashlib.sha256()
    for path in (contacts, events):
        outer.update(earlier[path].encode())
    assert source_digest(project) == outer.hexdigest()
    assert source_digest(project) == outer.hexdigest()  # and under the new key
    assert len(json.loads((project.state_dir / "digests.json").read_text())) == 2


def test_a_rewrite_that_restores_size_and_mtime_is_digested_again(
    project: ProjectConfig,
) -> None:
    # rsync -t or touch -r after an edit: the same size and mtime, new content. The old
    # size-and-mtime key kept the old digest (the DP ledger's dataset id, and the evidence
    # of what a release was built from); ctime and inode now tell the files apart.
    path = project.root / "data" / "contacts.parquet"
    before = source_digest(project)
    stat = path.stat()
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    swapped = path.with_name("contacts.new")
    swapped.write_bytes(bytes(raw))
    os.utime(swapped, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    swapped.replace(path)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert source_digest(project) != before


def test_an_earlier_digest_of_changed_content_is_not_kept(project: ProjectConfig) -> None:
    data = project.root / "data"
    contacts = data / "contacts.parquet"
    stale = hashlib.sha256(b"what the file held before").hexdigest()
    st = contacts.stat()
    cache = {f"{contacts}:{st.st_size}:{st.st_mtime_ns}": stale}
    (project.state_dir / "digests.json").write_text(json.dumps(cache))
    want = digest_of(contacts, data / "events.parquet")
    assert source_digest(project) == want


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
