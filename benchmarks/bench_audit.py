"""Audit chain verification: :func:`audiences.compliance.audit.verify` vs a naive verifier.

Builds a log of N realistic entries (sync batches, builds, releases with digests and
counts) through :func:`audiences.compliance.audit.append_many` (the bulk mode of the real append
path), then measures in this run:

* ``verify``: the library — one cursor in seq order, the canonical record rebuilt by
  %-formatting with json's C string encoder (``details`` is stored canonical, so it is
  never parsed or re-serialized), one sha256 per entry. Target: 1M entries ≤ 5 s.
* ``verify + anchor + checkpoint``: the same with a signed checkpoint and an anchor.
* ``naive verify`` (baseline): per entry a separate ``SELECT … WHERE seq = ?``, then
  ``json.loads(details)`` and ``json.dumps`` of the whole record dict, then sha256.
* ``export``: JSON lines for a SIEM.

Run: ``python -m benchmarks.bench_audit [--quick]`` (quick: 100k entries, else 1M).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from audiences.compliance import audit

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
TARGET_SECONDS_PER_MILLION = 5.0


def entries(n: int) -> Iterator[dict[str, Any]]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    segments = ["diabetes-outreach", "cardio-checkup", "flu-shot-reminder", "maternity-classes"]
    for i in range(n):
        digest = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
        kind = ("sync_batch", "sync_batch", "sync_batch", "build", "release")[i % 5]
        details: dict[str, Any] = {"members": 1000 + i % 977, "release_digest": digest}
        if kind == "sync_batch":
            details |= {"destination": "meta_main", "batch": i % 200, "matched": 700 + i % 300}
        elif kind == "build":
            details |= {"segment_digest": digest[::-1], "candidates": 5000 + i % 1000}
        yield {
            "kind": kind,
            "subject": segments[i % len(segments)],
            "details": details,
            "actor": "cron" if i % 7 else "ana.compliance",
            "at": start + timedelta(seconds=i),
        }


def naive_verify(conn: sqlite3.Connection) -> bool:
    """Baseline: one query per entry, parse and re-serialize every record."""
    n = conn.execute("SELECT count(*) FROM audit").fetchone()[0]
    prev = audit.GENESIS_HASH
    for seq in range(1, n + 1):
        row = conn.execute(
            "SELECT seq, at, actor, kind, subject, details, prev_hash, hash FROM audit "
            "WHERE seq = ?",
            (seq,),
        ).fetchone()
        if row is None or row[6] != prev:
            return False
        record = {
            "seq": row[0],
            "at": row[1],
            "actor": row[2],
            "kind": row[3],
            "subject": row[4],
            "details": json.loads(row[5]),
            "prev_hash": row[6],
        }
        text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if hashlib.sha256(text.encode()).hexdigest() != row[7]:
            return False
        prev = row[7]
    return True


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(quick: bool = False) -> None:
    n = 100_000 if quick else 1_000_000
    console = Console()
    with tempfile.TemporaryDirectory(prefix="bench_audit.") as tmp:
        db = Path(tmp) / "state.db"
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(DDL)

        build_s, _ = timed(lambda: audit.append_many(conn, entries(n)))
        key = Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        trusted = {"ana.compliance": base64.b64encode(raw).decode()}
        verify_s, result = timed(lambda: audit.verify(conn), repeats=2)
        assert result.ok and result.entries == n, result
        cp = audit.checkpoint(conn, key, actor="ana.compliance")
        anchor = audit.head(conn)
        total = anchor[0]
        full_s, full = timed(
            lambda: audit.verify(conn, anchors=[anchor], public_keys=trusted), repeats=2
        )
        assert full.ok and full.checkpoints == 1 and full.anchors == 1, full
        naive_s, naive_ok = timed(lambda: naive_verify(conn))
        assert naive_ok
        export_s, lines = timed(lambda: audit.export(conn, Path(tmp) / "audit.jsonl"))
        assert lines == total
        size_mb = db.stat().st_size / 1e6
        conn.close()

    per_million = verify_s * 1_000_000 / n
    table = Table(title=f"audit chain, {total:,} entries (db {size_mb:.0f} MB, cp at {cp.seq:,})")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column("µs / entry", justify="right")
    table.add_column("vs naive", justify="right")
    for name, seconds in [
        ("build (append_many)", build_s),
        ("verify", verify_s),
        ("verify + anchor + checkpoint", full_s),
        ("naive verify (baseline)", naive_s),
        ("export JSON lines", export_s),
    ]:
        speedup = f"{naive_s / seconds:.1f}x" if "verify" in name else ""
        table.add_row(name, f"{seconds:.2f}", f"{seconds * 1e6 / total:.2f}", speedup)
    console.print(table)
    verdict = "meets" if per_million <= TARGET_SECONDS_PER_MILLION else "MISSES"
    console.print(
        f"verify: {per_million:.2f} s per 1M entries — {verdict} the "
        f"{TARGET_SECONDS_PER_MILLION:.0f} s target"
    )


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
