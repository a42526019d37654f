"""State DB: migrations, version refusal, corruption, file modes, salt."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from audiences.core import state
from audiences.core.errors import StateError


def test_fresh_db_is_migrated_and_private(tmp_path: Path) -> None:
    path = tmp_path / ".audiences" / "state.db"
    conn = state.connect(path)
    assert state.schema_version(conn) == state.SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"builds", "releases", "dp_ledger", "approvals", "audit", "syncs", "batches"} <= tables
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    conn.close()


def test_older_db_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    raw = sqlite3.connect(path)
    for statement in state._statements(state.MIGRATIONS[1]):
        raw.execute(statement)
    raw.execute("INSERT INTO meta VALUES('schema_version', '1')")
    raw.execute(
        "INSERT INTO builds(build_id, segment, segment_digest, as_of, started_at, status, actor)"
        " VALUES ('b1', 's', 'd', '2026-01-01', 'now', 'released', 'me')"
    )
    raw.commit()
    raw.close()
    conn = state.connect(path)
    assert state.schema_version(conn) == state.SCHEMA_VERSION
    assert conn.execute("SELECT segment FROM builds").fetchone()[0] == "s"  # data kept
    assert conn.execute("SELECT count(*) FROM syncs").fetchone()[0] == 0  # v2 table exists


def test_newer_db_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = state.connect(path)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StateError, match=r"schema version 99, newer.*upgrade audiences"):
        state.connect(path)
    assert path.read_bytes() == before


def test_corrupt_db_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="unreadable"):
        state.connect(path)


def test_transaction_rolls_back(tmp_path: Path) -> None:
    conn = state.connect(tmp_path / "state.db")
    with pytest.raises(RuntimeError), state.transaction(conn):
        conn.execute("INSERT INTO meta VALUES('x', 'y')")
        raise RuntimeError("boom")
    assert conn.execute("SELECT count(*) FROM meta WHERE key='x'").fetchone()[0] == 0


def test_salt_is_stable_and_private(tmp_path: Path) -> None:
    first = state.project_salt(tmp_path / "s")
    assert len(first) == 32
    assert state.project_salt(tmp_path / "s") == first
    assert stat.S_IMODE((tmp_path / "s" / "salt").stat().st_mode) == 0o600
    assert state.project_salt(tmp_path / "other") != first
