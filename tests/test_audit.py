"""The hash-chained audit log: appends, tamper detection, checkpoints, anchors, export."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audiences.compliance import audit
from audiences.core.errors import InternalError, UsageError

# The v1 DDL of the three tables this module uses (created by audiences/state.py).
DDL = """
CREATE TABLE audit (
  seq INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, kind TEXT NOT NULL,
  subject TEXT NOT NULL, details TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE TABLE audit_checkpoints (
  id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER NOT NULL, hash TEXT NOT NULL,
  key_id TEXT NOT NULL, signature TEXT NOT NULL, at TEXT NOT NULL
);
"""

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(DDL)
    yield db
    db.close()


def fill(conn: sqlite3.Connection, n: int) -> None:
    for i in range(n):
        audit.append(
            conn,
            kind="sync_batch",
            subject=f"seg-{i % 3}",
            details={
                "batch": i,
                "members": 100 + i,
                "digest": hashlib.sha256(b"%d" % i).hexdigest(),
            },
            actor="cron",
            at=T0 + timedelta(minutes=i),
        )


def signer() -> tuple[Ed25519PrivateKey, dict[str, str]]:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, {"carol": base64.b64encode(raw).decode()}


def rewrite_from(conn: sqlite3.Connection, k: int) -> None:
    """What an attacker with write access and the source code can do: replace entries
    k..n with altered ones whose hashes and links are all recomputed correctly."""
    rows = conn.execute(
        "SELECT seq, at, actor, kind, subject, details FROM audit WHERE seq >= ? ORDER BY seq",
        (k,),
    ).fetchall()
    prev = conn.execute("SELECT hash FROM audit WHERE seq = ?", (k - 1,)).fetchone()[0]
    conn.execute("DELETE FROM audit WHERE seq >= ?", (k,))
    for seq, at, actor, kind, subject, details in rows:
        if seq == k:
            details = audit.canonical_json({"batch": -1, "members": 0})
        digest = audit.entry_hash(seq, at, actor, kind, subject, details, prev)
        conn.execute(
            "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?)",
            (seq, at, actor, kind, subject, details, prev, digest),
        )
        prev = digest


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize(
    "text",
    [
        "plain",
        'quote " and \\ backslash',
        "José Smith-Jones",
        "tab\tnl\ncr\r",
        "\x00\x1f\x7f",
        "\u2028\u2029",
        "😀",
    ],
)
def test_record_text_is_canonical_json(text: str) -> None:
    details = audit.canonical_json({"z": 1, "a": [text], "m": {"k": 2.5}})
    fields = {
        "seq": 7,
        "at": "2026-03-01T12:00:00.000000Z",
        "actor": text,
        "kind": text,
        "subject": text,
        "details": json.loads(details),
        "prev_hash": "ab" * 32,
    }
    expected = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    got = audit.record_text(7, fields["at"], text, text, text, details, "ab" * 32)
    assert got == expected
    assert audit.entry_hash(7, fields["at"], text, text, text, details, "ab" * 32) == (
        hashlib.sha256(expected.encode()).hexdigest()
    )


def test_append_chains_entries_and_head_follows(conn: sqlite3.Connection) -> None:
    assert audit.head(conn) == (0, audit.GENESIS_HASH)
    first = audit.append(
        conn, kind="build", subject="seg-a", details={"members": 3}, actor="ana", at=T0
    )
    second = audit.append(conn, kind="build", subject="seg-a", details={"members": 4}, actor="ana")
    assert (first.seq, first.prev_hash) == (1, audit.GENESIS_HASH)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert first.at == "2026-03-01T12:00:00.000000Z"
    assert first.details == '{"members":3}'
    assert audit.head(conn) == (2, second.hash)
    assert [e.hash for e in audit.read_entries(conn)] == [first.hash, second.hash]
    assert not conn.in_transaction


def test_append_joins_an_open_transaction(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    audit.append(conn, kind="build", subject="s", details={}, actor="ana")
    assert conn.in_transaction
    conn.execute("ROLLBACK")
    assert audit.head(conn) == (0, audit.GENESIS_HASH)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"details": {"email": "jane.doe@example.com"}}, r"details\.email contains '@'"),
        ({"details": {"rows": [{"x": "a@b.c"}]}}, r"details\.rows\[0\]\.x contains '@'"),
        ({"details": {"who@example.com": 1}}, r"details key contains '@'"),
        ({"subject": "jane@example.com"}, r"subject contains '@'"),
        ({"details": {"ratio": math.nan}}, r"details\.ratio is not a finite number"),
        ({"details": {"ids": {1, 2}}}, r"details\.ids is a set, not a JSON value"),
        ({"details": {"blob": "x" * 20_000}}, r"details are 20011 characters long"),
        ({"kind": ""}, r"kind must be a non-empty string"),
        ({"at": datetime(2026, 1, 1)}, r"timezone-aware"),
    ],
)
def test_append_rejects_bad_entries(conn: sqlite3.Connection, kwargs: dict, match: str) -> None:
    entry = {"kind": "build", "subject": "seg-a", "details": {"members": 1}, "actor": "ana"}
    entry.update(kwargs)
    with pytest.raises(InternalError, match=match) as info:
        audit.append(conn, **entry)
    assert "example.com" not in str(info.value)  # never echo what looks like PII
    assert audit.head(conn)[0] == 0


def test_append_many_matches_append(conn: sqlite3.Connection, tmp_path: Path) -> None:
    items = [
        {"kind": "build", "subject": f"s{i}", "details": {"n": i}, "actor": "ana", "at": T0}
        for i in range(5)
    ]
    assert audit.append_many(conn, items) == 5
    other = sqlite3.connect(tmp_path / "other.db", isolation_level=None)
    other.executescript(DDL)
    for item in items:
        audit.append(other, **item)
    assert audit.head(conn) == audit.head(other)
    assert audit.verify(conn).ok


# --------------------------------------------------------------------------- tampering


def test_verify_clean_and_empty_logs(conn: sqlite3.Connection) -> None:
    empty = audit.verify(conn)
    assert (empty.ok, empty.entries, empty.head) == (True, 0, (0, audit.GENESIS_HASH))
    fill(conn, 6)
    result = audit.verify(conn)
    assert (result.ok, result.entries, result.first_bad_seq) == (True, 6, None)
    assert result.head == audit.head(conn)


@pytest.mark.parametrize(
    ("tamper", "bad_seq", "match"),
    [
        (
            'UPDATE audit SET details = \'{"batch":3,"members":1}\' WHERE seq = 4',
            4,
            "contents were edited",
        ),
        ("UPDATE audit SET actor = 'mallory' WHERE seq = 2", 2, "contents were edited"),
        (
            "UPDATE audit SET at = '2020-01-01T00:00:00.000000Z' WHERE seq = 8",
            8,
            "contents were edited",
        ),
        (
            "UPDATE audit SET hash = 'ff' || substr(hash, 3) WHERE seq = 5",
            5,
            "contents were edited",
        ),
        ("UPDATE audit SET details = X'00' WHERE seq = 3", 3, "contents were edited"),
        ("DELETE FROM audit WHERE seq = 3", 3, "entry 3 is missing"),
        ("DELETE FROM audit WHERE seq IN (3, 4, 5)", 3, r"entries 3\.\.5 are missing"),
        ("DELETE FROM audit WHERE seq = 1", 1, "entry 1 is missing"),
        (
            "INSERT INTO audit SELECT 0, at, actor, kind, subject, details, prev_hash, hash "
            "FROM audit WHERE seq = 1",
            1,
            "found seq 0",
        ),
    ],
)
def test_verify_names_first_bad_entry(
    conn: sqlite3.Connection, tamper: str, bad_seq: int, match: str
) -> None:
    fill(conn, 9)
    conn.execute(tamper)
    result = audit.verify(conn)
    assert not result.ok
    assert result.first_bad_seq == bad_seq
    assert result.entries == bad_seq - 1
    assert result.reason is not None
    assert re.search(match, result.reason)


def test_edited_and_rehashed_entry_is_named(conn: sqlite3.Connection) -> None:
    fill(conn, 6)
    seq, at, actor, kind, subject, _, prev, _ = conn.execute(
        "SELECT * FROM audit WHERE seq = 3"
    ).fetchone()
    details = audit.canonical_json({"batch": 2, "members": 1})
    digest = audit.entry_hash(seq, at, actor, kind, subject, details, prev)
    conn.execute("UPDATE audit SET details = ?, hash = ? WHERE seq = 3", (details, digest))
    result = audit.verify(conn)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "entry 3 was rewritten" in (result.reason or "")


def test_swapped_rows_are_caught_at_the_first(conn: sqlite3.Connection) -> None:
    fill(conn, 8)
    cols = "at, actor, kind, subject, details, prev_hash, hash"
    row3 = conn.execute(f"SELECT {cols} FROM audit WHERE seq = 3").fetchone()
    row6 = conn.execute(f"SELECT {cols} FROM audit WHERE seq = 6").fetchone()
    update = "UPDATE audit SET at=?, actor=?, kind=?, subject=?, details=?, prev_hash=?, hash=? WHERE seq=?"
    conn.execute(update, (*row6, 3))
    conn.execute(update, (*row3, 6))
    result = audit.verify(conn)
    assert (result.ok, result.first_bad_seq) == (False, 3)


def test_row_inserted_in_the_middle_is_caught(conn: sqlite3.Connection) -> None:
    fill(conn, 6)
    # Make room at seq 4 (shift 4..6 up by one), then insert a forged entry there.
    for seq in (6, 5, 4):
        conn.execute("UPDATE audit SET seq = seq + 1 WHERE seq = ?", (seq,))
    prev = conn.execute("SELECT hash FROM audit WHERE seq = 3").fetchone()[0]
    at, details = "2026-03-01T12:03:30.000000Z", '{"batch":99}'
    digest = audit.entry_hash(4, at, "cron", "sync_batch", "seg-x", details, prev)
    conn.execute(
        "INSERT INTO audit VALUES (4, ?, 'cron', 'sync_batch', 'seg-x', ?, ?, ?)",
        (at, details, prev, digest),
    )
    result = audit.verify(conn)
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert "does not link" in (result.reason or "") or "rewritten" in (result.reason or "")


def test_truncated_tail_needs_an_anchor(conn: sqlite3.Connection) -> None:
    fill(conn, 7)
    anchor = audit.head(conn)
    conn.execute("DELETE FROM audit WHERE seq >= 6")
    assert audit.verify(conn).ok  # a bare chain cannot see a cut tail...
    result = audit.verify(conn, anchors=[anchor])  # ...the mailed-out head can
    assert (result.ok, result.first_bad_seq) == (False, 6)
    assert "entries were deleted from the end" in (result.reason or "")


def test_rewritten_chain_is_caught_only_by_an_anchor(conn: sqlite3.Connection) -> None:
    fill(conn, 10)
    seq, digest = audit.head(conn)
    anchor = audit.parse_anchor(f"{seq}:{digest}")
    earlier = (4, conn.execute("SELECT hash FROM audit WHERE seq = 4").fetchone()[0])
    rewrite_from(conn, 3)
    assert audit.verify(conn).ok  # every hash and link recomputed: the chain alone is fooled
    result = audit.verify(conn, anchors=[anchor])
    assert (result.ok, result.first_bad_seq) == (False, 10)
    assert "external anchor" in (result.reason or "")
    assert audit.verify(conn, anchors=[earlier]).first_bad_seq == 4
    assert audit.verify(conn, anchors=[(2, audit.read_entries(conn)[1].hash)]).ok


def test_rewritten_chain_is_caught_by_a_signed_checkpoint(conn: sqlite3.Connection) -> None:
    key, trusted = signer()
    fill(conn, 5)
    cp = audit.checkpoint(conn, key, actor="carol", at=T0 + timedelta(hours=1))
    assert (cp.seq, cp.anchor) == (5, f"5:{cp.hash}")
    fill(conn, 3)
    clean = audit.verify(conn, public_keys=trusted)
    assert (clean.ok, clean.entries, clean.checkpoints) == (True, 9, 1)
    entry = audit.read_entries(conn, since=5)[0]
    assert (entry.kind, entry.details_dict()["signature"]) == ("checkpoint", cp.signature)

    rewrite_from(conn, 2)
    result = audit.verify(conn, public_keys=trusted)
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert "checkpoint signed by carol" in (result.reason or "")


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        ("UPDATE audit_checkpoints SET hash = 'ab' || substr(hash, 3)", "does not verify"),
        ("UPDATE audit_checkpoints SET key_id = '0123456789abcdef'", "not a trusted approver key"),
        ("DELETE FROM audit_checkpoints", "no matching row in audit_checkpoints"),
    ],
)
def test_tampered_checkpoints_fail(conn: sqlite3.Connection, tamper: str, match: str) -> None:
    key, trusted = signer()
    fill(conn, 3)
    audit.checkpoint(conn, key, actor="carol")
    conn.execute(tamper)
    result = audit.verify(conn, public_keys=trusted)
    assert not result.ok
    assert match in " ".join(result.problems)


def test_checkpoint_by_an_untrusted_key_fails(conn: sqlite3.Connection) -> None:
    fill(conn, 3)
    mallory, _ = signer()
    _, trusted = signer()
    audit.checkpoint(conn, mallory, actor="mallory")
    result = audit.verify(conn, public_keys=trusted)
    assert not result.ok
    assert "not a trusted approver key" in (result.reason or "")


def test_checkpoint_refuses_empty_log_and_wrong_key_id(conn: sqlite3.Connection) -> None:
    key, _ = signer()
    with pytest.raises(UsageError, match="nothing to checkpoint"):
        audit.checkpoint(conn, key, actor="carol")
    fill(conn, 1)
    with pytest.raises(UsageError, match="does not match the private key"):
        audit.checkpoint(conn, key, "0000000000000000", actor="carol")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("12", "is not SEQ:HASH"),
        ("x:" + "a" * 64, "is not SEQ:HASH"),
        ("0:" + "a" * 64, "is not SEQ:HASH"),
        ("5:" + "a" * 63, "is not SEQ:HASH"),
        ("5:" + "g" * 64, "is not SEQ:HASH"),
    ],
)
def test_parse_anchor_rejects_bad_text(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        audit.parse_anchor(text)


def test_parse_anchor_accepts_upper_case() -> None:
    assert audit.parse_anchor(" 42:" + "AB" * 32 + " ") == (42, "ab" * 32)


# --------------------------------------------------------------------------- export


def test_export_lines_parse_and_rehash(conn: sqlite3.Connection, tmp_path: Path) -> None:
    fill(conn, 4)
    audit.append(conn, kind="build", subject="José", details={"note": 'a "q"'}, actor="ana")
    out = tmp_path / "siem" / "audit.jsonl"
    assert audit.export(conn, out) == 5
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in out.parent.iterdir()] == ["audit.jsonl"]  # no temp left behind
    lines = out.read_text(encoding="utf-8").splitlines()
    entries = audit.read_entries(conn)
    assert len(lines) == len(entries)
    for line, entry in zip(lines, entries, strict=True):
        record = json.loads(line)
        assert record["seq"] == entry.seq
        assert record["details"] == entry.details_dict()
        assert record["subject"] == entry.subject
        digest = record.pop("hash")
        assert digest == entry.hash
        canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(canonical.encode()).hexdigest() == digest


def test_export_replaces_atomically(conn: sqlite3.Connection, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    out.write_text("old\n")
    fill(conn, 2)
    audit.export(conn, out)
    assert len(out.read_text().splitlines()) == 2


# --------------------------------------------------------------------------- real state DB

APPENDER = """
import sys
from pathlib import Path
from audiences.compliance import audit
from audiences.core import state
conn = state.connect(Path(sys.argv[1]))
for i in range(int(sys.argv[2])):
    audit.append(conn, kind="sync_batch", subject="seg", details={"batch": i}, actor=sys.argv[3])
"""


def test_concurrent_writers_keep_one_chain(tmp_path: Path) -> None:
    from audiences.core import state

    db = tmp_path / ".audiences" / "state.db"
    state.connect(db).close()
    writers = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(db), "40", name])
        for name in ("cron", "ana")
    ]
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    conn = state.connect(db)  # sqlite3.Row rows, as the CLI uses
    result = audit.verify(conn)
    assert (result.ok, result.entries) == (True, 80)
    actors = [e.actor for e in audit.read_entries(conn)]
    assert sorted(set(actors)) == ["ana", "cron"]
    out = tmp_path / "audit.jsonl"
    assert audit.export(conn, out) == 80
    conn.close()
