"""The compliance report as the officer reads it later: the build's report document plus
what happened after the build — the syncs that carried its releases to each platform.

``audiences report REF`` takes a build id or a segment name (its newest build).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from audiences.core.config import ProjectConfig
from audiences.core.errors import DataError
from audiences.core.state import connect
from audiences.pipeline.build import report_path


def resolve_build(conn: sqlite3.Connection, ref: str) -> str:
    """``ref`` as a build id: a build id as given, a segment name as its newest build."""
    if conn.execute("SELECT 1 FROM builds WHERE build_id = ?", (ref,)).fetchone():
        return ref
    row = conn.execute(
        "SELECT build_id FROM builds WHERE segment = ? ORDER BY started_at DESC, rowid DESC "
        "LIMIT 1",
        (ref,),
    ).fetchone()
    if row is None:
        raise DataError(
            f"no build and no segment named {ref!r}",
            "pass a build id or a segment name shown by `audiences status` or "
            "`audiences history SEGMENT`",
        )
    return str(row[0])


def syncs_of(conn: sqlite3.Connection, build_id: str) -> list[dict[str, Any]]:
    """Every sync that carried a release of ``build_id``, oldest first (exact figures: the
    report is the compliance officer's)."""
    rows = conn.execute(
        "SELECT s.destination, s.sync_id, s.started_at, s.finished_at, s.status, s.adds, "
        "s.removes, s.received, s.invalid, s.match_rate, r.remote_id, s.summary "
        "FROM syncs s JOIN releases rel ON rel.release_id = s.release_id "
        "LEFT JOIN audiences_remote r ON r.segment = s.segment AND r.destination = s.destination "
        "WHERE rel.build_id = ? ORDER BY s.started_at, s.sync_id",
        (build_id,),
    ).fetchall()
    out = []
    for row in rows:
        summary = _summary(row[11])
        out.append(
            {
                "destination": row[0],
                "sync_id": row[1],
                "started_at": row[2],
                "finished_at": row[3] or "",
                "status": row[4],
                "audience_id": row[10] or "",
                "adds": row[5],
                "removes": row[6],
                "forced_removes": summary.get("forced_removes", 0),
                "held": summary.get("held_adds", 0) + summary.get("held_removes", 0),
                # sent, but the platform did not say whether it took them: sent again
                "membership_unknown": summary.get("membership_unknown", 0),
                "received": row[7],
                "invalid": row[8],
                "match_rate": "" if row[9] is None else row[9],
            }
        )
    return out


def report_document(config: ProjectConfig, ref: str) -> dict[str, Any]:
    """The JSON report of build (or newest build of segment) ``ref`` with its syncs."""
    conn = connect(config.state_db)
    try:
        build_id = resolve_build(conn, ref)
        doc: dict[str, Any] = json.loads(
            report_path(config, build_id, "json").read_text(encoding="utf-8")
        )
        doc["syncs"] = syncs_of(conn, build_id)
    finally:
        conn.close()
    return doc


def _summary(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


__all__ = ["report_document", "resolve_build", "syncs_of"]
