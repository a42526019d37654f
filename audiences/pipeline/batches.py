"""Sending journaled batches to one destination, and recording what the platform confirmed.

Shared by the sync (``audiences.pipeline.sync``), the forced removals of a blocked segment
(``audiences.pipeline.removals``) and takedown (``audiences.pipeline.takedown``): each batch
is journaled before it is sent, recorded with its audit entry only after the platform
confirms it, and folded into the confirmed membership when the run closes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

import polars as pl

from audiences.core.config import ProjectConfig
from audiences.core.state import new_id, transaction, utcnow
from audiences.pipeline import state_record
from audiences.pipeline.membership import (
    KEY,
    OP,
    MembershipStore,
    unsure_rows,
)
from connectors.base import AudienceConnector, BatchOutcome

if TYPE_CHECKING:
    from policies.release import Confirmed, Release, ReleaseBatch


ConnectorFactory = Callable[[ProjectConfig, str], AudienceConnector]


@dataclass
class DestinationSync:
    segment: str
    destination: str
    status: str  # ok | failed | blocked | skipped
    sync_id: str | None = None
    audience: str | None = None
    adds: int = 0
    removes: int = 0  # every removal sent, forced ones included
    forced_removes: int = 0  # removals the filter rules force (never held, never blocked)
    held_adds: int = 0
    held_removes: int = 0
    replaced_members: int = 0  # people sent in a replace (a full refresh)
    # people the platform took in part without saying whom it refused (Data Manager
    # PARTIAL_SUCCESS): neither members nor removed in state; sent again next sync
    membership_unknown: int = 0
    sent: int = 0
    received: int = 0
    invalid: int = 0
    batches: int = 0
    match_rate: float | None = None
    recovered: list[str] = field(default_factory=list)
    replaced: str | None = None  # why the audience was replaced in full (None: a diff)
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        # a flag beside the count: the marketer view makes every count coarse, even 0
        return {**asdict(self), "membership_unknown_any": self.membership_unknown > 0}


def make_connector(config: ProjectConfig, name: str) -> AudienceConnector:
    from connectors.registry import connector_class, destination_config

    spec = config.destination(name)
    cls = connector_class(spec.kind)
    connector = cls(name, destination_config(spec))
    connector.root = config.root
    return cast(AudienceConnector, connector)


def _remote_id(conn: sqlite3.Connection, segment: str, destination: str) -> str | None:
    row = conn.execute(
        "SELECT remote_id FROM audiences_remote WHERE segment=? AND destination=?",
        (segment, destination),
    ).fetchone()
    return str(row[0]) if row else None


def _confirmed_view(conn: sqlite3.Connection, store: MembershipStore) -> pl.DataFrame:
    """What the platform has confirmed, including batches of an interrupted run (read only)."""
    snapshot = store.load()
    pending = conn.execute(
        "SELECT b.seq, b.op, b.sync_id FROM batches b JOIN syncs s ON s.sync_id=b.sync_id "
        "WHERE s.segment=? AND s.destination=? AND s.status='running' AND b.status='confirmed' "
        "ORDER BY s.started_at, b.seq",
        (store.segment, store.destination),
    ).fetchall()
    batches = [
        (str(op), pl.DataFrame(schema={KEY: pl.UInt64}))
        if op == "clear"
        else (str(op), store.read_journal(sync_id, int(seq), str(op)))
        for seq, op, sync_id in pending
    ]
    return store.fold(snapshot, batches) if batches else snapshot


TAKEDOWN = "takedown"  # syncs.release_id of a takedown run


def taken_down_elsewhere(
    conn: sqlite3.Connection, config: ProjectConfig, segment: str, destination: str
) -> str | None:
    """Why the audience must be replaced in full: another state of this project (a copy,
    or the state before a restore) took it down after this state last synced it, so this
    state's snapshot lists people the platform no longer holds. None otherwise."""
    from audiences.compliance.approvals import instant as _instant
    from audiences.compliance.workflow import takedown_since

    if destination not in config.destinations:
        return None
    kept = takedown_since(config, segment, destination)
    if kept is None:
        return None
    synced = conn.execute(
        "SELECT 1 FROM syncs WHERE segment=? AND destination=? AND status='ok' LIMIT 1",
        (segment, destination),
    ).fetchone()
    if synced is None:  # no snapshot of this state's own to be stale
        return None
    # when this state last knew the platform's whole audience: its own takedown, or a
    # sync that replaced the audience in full
    row = conn.execute(
        "SELECT max(finished_at) FROM syncs WHERE segment=? AND destination=? AND "
        "((release_id=? AND status IN ('taken_down', 'takedown_partial')) OR "
        "(status='ok' AND json_extract(summary, '$.replaced') IS NOT NULL))",
        (segment, destination, TAKEDOWN),
    ).fetchone()
    known = None if row is None or row[0] is None else str(row[0])
    if known is not None and _instant(known) >= _instant(kept):
        return None
    return f"taken down at {kept} by another state of this project (custody)"


def platform_view(
    conn: sqlite3.Connection,
    config: ProjectConfig,
    segment: str,
    destination: str,
    *,
    full_refresh: bool = False,
) -> Any:
    """What the audience's next sync starts from, for the gate's pattern check
    (:class:`policies.difference.PlatformView`): the people this state knows the platform
    holds (the confirmed snapshot and an interrupted run's confirmed batches), the people
    an interrupted run sent unconfirmed (settled to the release, never held), and whether
    the sync replaces the audience in full (``state adopt``/``repair``, a lost or untrusted
    snapshot, a takedown by another state, ``--full-refresh``): then everyone is sent and
    nothing held, and the platform's contents are taken from the snapshot when it can be
    read, else as unknown (empty: every member counts as sent)."""
    from audiences.pipeline.membership import UnreadableStateFile, replace_reason, unsure_rows
    from policies.difference import PlatformView, sorted_keys

    store = MembershipStore(config.state_dir, segment, destination)
    why = replace_reason(conn, store) or taken_down_elsewhere(conn, config, segment, destination)
    if why is not None or full_refresh:
        try:
            held = sorted_keys(store.load().get_column(KEY))
        except UnreadableStateFile:
            held = sorted_keys(pl.Series(KEY, [], dtype=pl.UInt64))
        return PlatformView(held, held[:0], replace=True)
    confirmed = _confirmed_view(conn, store)
    unsure = unsure_rows(conn, store)
    maybe = unsure.get_column(KEY) if unsure is not None else pl.Series(KEY, [], dtype=pl.UInt64)
    return PlatformView(sorted_keys(confirmed.get_column(KEY)), sorted_keys(maybe), replace=False)


def _segment_destinations(config: ProjectConfig, segment: str) -> list[str]:
    from audiences.segments import load_segments

    for s in load_segments(config.segments_dir):
        if s.name == segment:
            return [d for d in s.destinations if config.destination(d).kind != "file"]
    return []


def _record_blocked(
    conn: sqlite3.Connection, segment: str, destination: str, reason: str, actor: str
) -> DestinationSync:
    sync_id = new_id("s")
    with transaction(conn):
        conn.execute(
            "INSERT INTO syncs(sync_id, segment, destination, started_at, finished_at, status, "
            "error) VALUES (?,?,?,?,?,?,?)",
            (sync_id, segment, destination, utcnow(), utcnow(), "blocked", reason),
        )
    _audit(
        conn,
        actor,
        "sync_blocked",
        f"{segment}->{destination}",
        {"sync_id": sync_id, "reason": reason},
    )
    return DestinationSync(segment, destination, "blocked", sync_id=sync_id, error=reason)


@dataclass(frozen=True)
class _DestinationRun:
    """One sync of one release to one destination, once its audience exists."""

    conn: sqlite3.Connection
    store: MembershipStore
    connector: AudienceConnector
    remote_id: str
    sync_id: str
    actor: str
    out: DestinationSync
    release_id: str
    # rows of this run's batches whose fate the platform did not tell (``unknown_keys``),
    # op in ``__op``: still unsure when the run closes
    unknown: list[pl.DataFrame] = field(default_factory=list)

    @property
    def subject(self) -> str:
        return f"{self.out.segment}->{self.out.destination}"


def _open_sync(conn: sqlite3.Connection, sync_id: str, release: Release, name: str) -> None:
    """The sync's 'running' row, before the platform is called."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO syncs(sync_id, segment, destination, release_id, started_at, status) "
            "VALUES (?,?,?,?,?,?)",
            (sync_id, release.segment, name, release.release_id, utcnow(), "running"),
        )


def _send_batches(
    run: _DestinationRun, changes: list[tuple[str, pl.DataFrame]], *, known: bool = True
) -> None:
    """Send every change, numbering the journaled batches across ops. ``known=False``:
    what the platform holds is unknown, the state's rows are not read (a replace then
    sends release members only)."""
    seq = 0
    for op, frame in changes:
        if frame.height == 0 and op != "replace":
            continue
        seq = _send_op(run, op, frame, seq, known=known)


def _send_op(
    run: _DestinationRun, op: str, frame: pl.DataFrame, seq: int, *, known: bool = True
) -> int:
    """Journal, send and record one op's batches; returns the last batch's seq."""
    size = run.connector.batch_size("add" if op == "replace" else op)
    n = max(1, -(-frame.height // size))
    session: dict[str, Any] = {"total": frame.height}
    unrecorded: list[_Batch] = []  # confirmed batches not yet in the DB
    sent_before = _sent_before(run) if known and op in ("remove", "replace") else None
    for i in range(n):
        rows = frame.slice(i * size, size)
        seq += 1
        journal_op = op
        if op == "replace":
            if i == 0:
                run.store.write_intent(run.sync_id, seq, "clear", rows.clear())
                seq += 1
            journal_op = "add"
        run.store.write_intent(run.sync_id, seq, journal_op, rows)
        result = run.connector.send(
            run.remote_id,
            op,
            _sealed(run.connector, op, rows, sent_before),
            seq=seq,
            last=i == n - 1,
            session=session,
        )
        _journal_outcome(run, seq, journal_op, rows, result)
        if op == "replace" and i == 0:
            unrecorded.append(_Batch(seq - 1, "clear", rows.clear(), BatchOutcome("clear", 0, 0)))
        unrecorded.append(_Batch(seq, journal_op, rows, result))
        # A replace takes effect when its last batch is in (Meta swaps the audience
        # at last_batch_flag): its batches are confirmed together, or not at all.
        if op != "replace" or i == n - 1:
            _record_batches(run, unrecorded)
            unrecorded = []
    return seq


def _journal_outcome(
    run: _DestinationRun, seq: int, op: str, rows: pl.DataFrame, result: BatchOutcome
) -> None:
    """Rewrite a sent batch's journal to what the platform confirmed.

    Refused rows (``rejected_keys``) are not members. Rows whose fate is unknown
    (``unknown_keys``) are kept as unsure first — so a crash before the batch is recorded
    loses nothing — then left out of the journal: folding it neither adds nor removes them.
    """
    if not result.rejected_keys and not result.unknown_keys:
        return
    if result.unknown_keys:
        unknown = rows.filter(pl.col(KEY).is_in(result.unknown_keys)).with_columns(
            pl.lit(op).alias(OP)
        )
        run.store.add_unsure(unknown)
        run.unknown.append(unknown)
        run.out.membership_unknown += unknown.height
    out = result.rejected_keys + result.unknown_keys
    run.store.write_intent(run.sync_id, seq, op, rows.filter(~pl.col(KEY).is_in(out)))


def _sent_before(run: _DestinationRun) -> Confirmed:
    """Rows the platform was sent before: the confirmed view plus unconfirmed batches,
    read from state files whose authenticators verified (the store refuses any other),
    vouched for as this audience's so the release seals removal and replace batches
    from them (``policies.release.confirmed_snapshot``: its only caller)."""
    from policies.release import confirmed_snapshot

    parts = [_confirmed_view(run.conn, run.store), unsure_rows(run.conn, run.store)]
    rows = pl.concat([p for p in parts if p is not None], how="diagonal_relaxed")
    return confirmed_snapshot(rows, segment=run.store.segment, destination=run.store.destination)


def _sealed(
    connector: AudienceConnector, op: str, rows: pl.DataFrame, sent_before: Confirmed | None
) -> ReleaseBatch:
    """``rows`` as a batch sealed from the release the connector was opened for."""
    from policies.release import release_batch, removal_batch

    assert connector.release is not None  # ensure_audience opened it
    if op == "remove" and sent_before is not None:
        return removal_batch(connector.release, rows, confirmed=sent_before)
    return release_batch(connector.release, op, rows, confirmed=sent_before)


@dataclass(frozen=True)
class _Batch:
    """A batch the platform confirmed: its seq, journaled op, rows and the answer."""

    seq: int
    op: str  # add | remove | clear
    rows: pl.DataFrame
    result: BatchOutcome

    def digest(self) -> str:
        """SHA-256 of the batch's sorted member keys (what left, without who)."""
        import hashlib

        keys = self.rows.get_column(KEY).sort() if KEY in self.rows.columns else pl.Series([])
        return hashlib.sha256(keys.cast(pl.UInt64).to_numpy().tobytes()).hexdigest()


def _record_batches(run: _DestinationRun, batches: list[_Batch]) -> None:
    """Record confirmed batches and their audit entries in one transaction, then the
    audience record (its audit head moved: a restore older than this is noticed)."""
    from audiences.compliance import audit

    at = utcnow()
    rows = [
        (
            run.sync_id,
            b.seq,
            b.op,
            b.rows.height,
            "confirmed",
            b.result.received,
            b.result.invalid,
            at,
        )
        for b in batches
    ]
    with transaction(run.conn):
        run.conn.executemany(
            "INSERT INTO batches(sync_id, seq, op, size, status, received, "
            "invalid, at) VALUES (?,?,?,?,?,?,?,?)",
            rows,
        )
        audit.append_many(run.conn, [_batch_entry(run, b) for b in batches])
    state_record.write(run.conn, run.store.state_dir)
    for b in batches:
        _count_batch(run.out, b)


def _batch_entry(run: _DestinationRun, batch: _Batch) -> dict[str, Any]:
    """The audit entry of one confirmed batch (``audit verify`` cross-checks ``batches``)."""
    return {
        "kind": "sync_batch",
        "subject": run.subject,
        "actor": run.actor,
        "details": {
            "sync_id": run.sync_id,
            "seq": batch.seq,
            "op": batch.op,
            "size": batch.rows.height,
            "received": batch.result.received,
            "invalid": batch.result.invalid,
            "segment": run.out.segment,
            "destination": run.out.destination,
            "audience": run.remote_id,
            "release_id": run.release_id,
            "digest": batch.digest(),
        },
    }


def _count_batch(out: DestinationSync, batch: _Batch) -> None:
    """Add one confirmed batch to the sync's figures."""
    if batch.op == "clear":
        return
    size = batch.rows.height
    out.batches += 1
    out.sent += size
    out.received += batch.result.received
    out.invalid += batch.result.invalid
    if batch.op == "remove":
        out.removes += size
    else:
        out.adds += size


def sync_summary(out: DestinationSync) -> str:
    """The sync row's summary: what the columns do not hold (the report shows it)."""
    return json.dumps(
        {
            "forced_removes": out.forced_removes,
            "held_adds": out.held_adds,
            "held_removes": out.held_removes,
            "membership_unknown": out.membership_unknown,
            "replaced": out.replaced,
        },
        sort_keys=True,
    )


def _audit(
    conn: sqlite3.Connection, actor: str, kind: str, subject: str, details: dict[str, Any]
) -> None:
    from audiences.compliance import audit

    audit.append(conn, kind=kind, subject=subject, details=details, actor=actor)
