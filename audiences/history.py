"""`audiences status` and `audiences history`: what was built and synced, from the state DB."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

_STATUS_SQL = """
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
