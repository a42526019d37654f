"""`audiences status` and `audiences history`: what was built and synced, from the state DB."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

# One indexed lookup per (segment, destination) pair: the latest build, the latest sync
# and the latest successful sync come from correlated subqueries that walk the
# builds_segment / syncs_segment indexes backwards, instead of window functions that sort
# the whole history (0.8 s -> 0.1 s on 500 segments x 3 destinations x 30 runs;
# benchmarks/bench_status.py).
_STATUS_SQL = """
WITH pairs AS (
  SELECT segment, destination FROM releases GROUP BY segment, destination
  UNION SELECT segment, destination FROM syncs GROUP BY segment, destination
)
SELECT p.segment, p.destination,
       b.build_id, b.started_at AS built_at, b.status AS build_status,
       s.sync_id, s.started_at AS synced_at, s.status AS sync_status, s.members, s.adds,
       s.removes, s.holds, s.match_rate, s.error,
       (SELECT max(o.finished_at) FROM syncs o
        WHERE o.segment = p.segment AND o.destination = p.destination AND o.status = 'ok'
       ) AS last_ok_at
FROM pairs p
LEFT JOIN builds b ON b.build_id = (
  SELECT x.build_id FROM builds x WHERE x.segment = p.segment AND x.status != 'running'
  ORDER BY x.started_at DESC LIMIT 1)
LEFT JOIN syncs s ON s.sync_id = (
  SELECT y.sync_id FROM syncs y WHERE y.segment = p.segment AND y.destination = p.destination
  ORDER BY y.started_at DESC LIMIT 1)
ORDER BY p.segment, p.destination
"""


def status(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """One row per segment × destination: last build, last sync and its figures."""
    return [dict(row) for row in conn.execute(_STATUS_SQL)]


def history(conn: sqlite3.Connection, segment: str, *, limit: int = 50) -> dict[str, Any]:
    builds = [
        {**dict(r), "reasons": json.loads(r["reasons"] or "[]")}
        for r in conn.execute(
            "SELECT build_id, started_at, finished_at, status, segment_digest, policy_digest, "
            "reasons, actor FROM builds WHERE segment=? ORDER BY started_at DESC LIMIT ?",
            (segment, limit),
        )
    ]
    syncs = [
        dict(r)
        for r in conn.execute(
            "SELECT sync_id, destination, release_id, started_at, finished_at, status, members, "
            "adds, removes, holds, received, invalid, match_rate, error FROM syncs "
            "WHERE segment=? ORDER BY started_at DESC LIMIT ?",
            (segment, limit),
        )
    ]
    return {"segment": segment, "builds": builds, "syncs": syncs}
