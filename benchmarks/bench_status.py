"""Benchmark ``audiences status`` on a state DB with a long history.

The issue's target: status over 500 segments x 3 destinations with a realistic history
(30 builds per segment, each released to 3 destinations, and 30 syncs per segment x
destination) in at most 1 s. Measured: open the state DB with
``audiences.core.state.connect`` and run ``audiences.pipeline.history.status`` (what the command
does), on a fresh connection each time. Baseline in the same run: the straightforward
N+1 way (list the pairs, then three small queries per pair).

``audit verify`` over 1M entries is in bench_audit.py.

    python -m benchmarks.bench_status [--quick]
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DESTINATIONS = ("file", "meta", "google_ads")
AD_DESTINATIONS = ("meta", "google_ads")
TARGET_S = 1.0

# audiences.pipeline.history's status query before this benchmark (window functions over the whole
# history), kept to show what the change bought.
WINDOW_STATUS_SQL = """
WITH last_sync AS (
  SELECT s.*, row_number() OVER (PARTITION BY segment, destination ORDER BY started_at DESC) AS rn
  FROM syncs s
),
last_ok AS (
  SELECT segment, destination, max(finished_at) AS last_ok_at
  FROM syncs WHERE status = 'ok' GROUP BY segment, destination
),
last_build AS (
  SELECT b.*, row_number() OVER (PARTITION BY segment ORDER BY started_at DESC) AS rn
  FROM builds b WHERE status != 'running'
),
pairs AS (
  SELECT DISTINCT segment, destination FROM releases
  UNION SELECT DISTINCT segment, destination FROM syncs
)
SELECT p.segment, p.destination,
       b.build_id, b.started_at AS built_at, b.status AS build_status,
       s.sync_id, s.started_at AS synced_at, s.status AS sync_status, s.members, s.adds,
       s.removes, s.holds, s.match_rate, s.error, o.last_ok_at
FROM pairs p
LEFT JOIN last_build b ON b.segment = p.segment AND b.rn = 1
LEFT JOIN last_sync s ON s.segment = p.segment AND s.destination = p.destination AND s.rn = 1
LEFT JOIN last_ok o ON o.segment = p.segment AND o.destination = p.destination
ORDER BY p.segment, p.destination
"""


def populate(db: Path, segments: int, history: int) -> dict[str, int]:
    """A state DB with ``history`` builds per segment and ``history`` syncs per pair."""
    from audiences.core.state import connect, transaction

    conn = connect(db)
    start = dt.datetime(2024, 1, 1, 6, 0, tzinfo=dt.UTC)
    builds: list[tuple[Any, ...]] = []
    releases: list[tuple[Any, ...]] = []
    syncs: list[tuple[Any, ...]] = []
    for s in range(segments):
        segment = f"segment-{s:04d}"
        for h in range(history):
            at = start + dt.timedelta(days=h, seconds=s * 7)
            stamp = at.isoformat().replace("+00:00", "Z")
            done = (at + dt.timedelta(seconds=40)).isoformat().replace("+00:00", "Z")
            build_id = f"b-{s:04d}-{h:03d}"
            blocked = (s + h) % 11 == 0
            status = "blocked" if blocked else "released"
            if h == history - 1 and s % 50 == 0:
                status = "running"  # a build in progress right now
            builds.append(
                (build_id, segment, f"sha256:{s:064x}", "sha256:pack", "sha256:src",
                 at.date().isoformat(), stamp, done, status, 50_000 + s, 40_000 + s,
                 "[]" if not blocked else '["min-size [meta]: too small"]', "{}", "cron")
            )  # fmt: skip
            if status == "released":
                for d in DESTINATIONS:
                    releases.append(
                        (f"r-{s:04d}-{h:03d}-{d}", build_id, segment, d, f"acct-{d}", 40_000 + s,
                         f"/state/releases/{build_id}-{d}.parquet", "sha256:verdict",
                         f"sha256:{s:064x}", "sha256:pack", done)
                    )  # fmt: skip
            for d in AD_DESTINATIONS:  # the file destination is written by the build
                sync_at = (at + dt.timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
                sync_done = (at + dt.timedelta(minutes=9)).isoformat().replace("+00:00", "Z")
                failed = (s * 3 + h) % 17 == 0
                syncs.append(
                    (f"s-{s:04d}-{h:03d}-{d}", segment, d, f"r-{s:04d}-{h:03d}-{d}", sync_at,
                     sync_done, "failed" if failed else "ok", 400 + h, 350 + s % 7, 0,
                     398 + h, 12, 0.61, 40_000 + s,
                     "Meta API error — retry later" if failed else None, "{}")
                )  # fmt: skip
    with transaction(conn):
        conn.executemany("INSERT INTO builds VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", builds)
        conn.executemany(
            "INSERT INTO releases(release_id, build_id, segment, destination, account, members, "
            "membership_path, verdict_digest, segment_digest, policy_digest, created_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            releases,
        )
        conn.executemany(
            "INSERT INTO syncs(sync_id, segment, destination, release_id, started_at, "
            "finished_at, status, adds, removes, holds, received, invalid, match_rate, members, "
            "error, summary) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            syncs,
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {"builds": len(builds), "releases": len(releases), "syncs": len(syncs)}


def naive_status(conn: Any) -> list[dict[str, Any]]:
    """The straightforward way: the pairs, then three small queries per pair."""
    pairs = conn.execute(
        "SELECT DISTINCT segment, destination FROM releases "
        "UNION SELECT DISTINCT segment, destination FROM syncs ORDER BY 1, 2"
    ).fetchall()
    rows = []
    for segment, destination in pairs:
        build = conn.execute(
            "SELECT build_id, started_at, status FROM builds WHERE segment=? AND status!='running' "
            "ORDER BY started_at DESC LIMIT 1",
            (segment,),
        ).fetchone()
        sync = conn.execute(
            "SELECT sync_id, started_at, status, members, adds, removes, holds, match_rate, error "
            "FROM syncs WHERE segment=? AND destination=? ORDER BY started_at DESC LIMIT 1",
            (segment, destination),
        ).fetchone()
        ok = conn.execute(
            "SELECT max(finished_at) FROM syncs WHERE segment=? AND destination=? AND status='ok'",
            (segment, destination),
        ).fetchone()
        rows.append(
            {
                "segment": segment,
                "destination": destination,
                "build_id": build[0] if build else None,
                "sync_id": sync[0] if sync else None,
                "last_ok_at": ok[0],
            }
        )
    return rows


def window_status(conn: Any) -> list[dict[str, Any]]:
    return [dict(row) for row in conn.execute(WINDOW_STATUS_SQL)]


def _timed(fn: Any, db: Path, repeats: int) -> tuple[list[float], list[dict[str, Any]]]:
    from audiences.core.state import connect

    times, rows = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        conn = connect(db, create=False)
        try:
            rows = fn(conn)
        finally:
            conn.close()
        times.append(time.perf_counter() - started)
    return times, rows


def main(quick: bool = False) -> None:
    from audiences.pipeline.history import status

    segments, history = (100, 30) if quick else (500, 30)
    repeats = 5
    with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp:
        db = Path(tmp) / "state.db"
        started = time.perf_counter()
        counts = populate(db, segments, history)
        fill = time.perf_counter() - started
        ours, rows = _timed(status, db, repeats)
        naive, naive_rows = _timed(naive_status, db, repeats)
        before, before_rows = _timed(window_status, db, repeats)
    pairs = len(rows)
    agree = rows == before_rows and [
        (r["segment"], r["destination"], r["build_id"], r["sync_id"]) for r in rows
    ] == [(r["segment"], r["destination"], r["build_id"], r["sync_id"]) for r in naive_rows]
    print(
        f"state DB: {segments} segments x {len(DESTINATIONS)} destinations, "
        f"{counts['builds']:,} builds, {counts['releases']:,} releases, {counts['syncs']:,} syncs "
        f"(filled in {fill:.1f} s); {repeats} runs each, fresh connection per run"
    )
    print(f"{'what':<44}{'rows':>7}{'median s':>10}{'max s':>9}{'target':>9}")
    print(
        f"{'audiences status (history.status)':<44}{pairs:>7}"
        f"{statistics.median(ours):>10.3f}{max(ours):>9.3f}{'<= 1 s':>9}"
    )
    print(
        f"{'baseline: N+1 queries per pair':<44}{len(naive_rows):>7}"
        f"{statistics.median(naive):>10.3f}{max(naive):>9.3f}{'':>9}"
    )
    print(
        f"{'before: window-function query (same rows)':<44}{len(before_rows):>7}"
        f"{statistics.median(before):>10.3f}{max(before):>9.3f}{'':>9}"
    )
    verdict = "meets" if max(ours) <= TARGET_S else "MISSES"
    print(f"status {verdict} the 1 s target; same rows as both baselines: {agree}")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
