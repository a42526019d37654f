"""Takedown: empty (and optionally delete) a segment's audiences wherever they are live.

``audiences takedown SEGMENT [--destination D] [--delete] --by NAME``

* **meta**: every person the project's confirmed snapshot (plus any unconfirmed add of an
  interrupted run) holds is removed, batch by batch through the sync journal; with
  ``--delete`` the Custom Audience is then deleted. Meta refuses removals that would
  leave an audience below its minimum size (error 2650): that is reported with what
  remains live (``--delete`` takes it down anyway).
* **google_ads**: one ``remove_all`` job empties the user list (the sandbox and the API do
  not delete Customer Match lists here; an empty list targets nobody).
* **file**: the segment's export folders are deleted, and the result lists them.

A takedown is a row of ``syncs`` (``release_id`` = ``takedown``) whose batches are
journaled like a sync's, so a run killed mid-way is folded back and finished by the next
one; rerunning a finished takedown changes nothing. It is audited (``takedown``). Later
syncs refuse to add to a taken-down audience until a compliance officer approves the
segment again (:func:`audiences.pipeline.sync.taken_down_block`).
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from audiences.compliance.workflow import record_takedown, taken_down
from audiences.core.config import ProjectConfig
from audiences.core.errors import EXIT_ERROR, EXIT_OK, ConfigError, ConnectorError, DataError
from audiences.core.state import connect, new_id, transaction, utcnow
from audiences.pipeline import state_record
from audiences.pipeline.batches import (
    TAKEDOWN,
    ConnectorFactory,
    DestinationSync,
    _audit,
    _Batch,
    _DestinationRun,
    _record_batches,
    _send_batches,
    make_connector,
)
from audiences.pipeline.membership import MembershipStore, close_sync, recover_interrupted
from audiences.pipeline.removals import on_platform
from connectors.base import AudienceConnector, BatchOutcome

META_MIN_SIZE = 2650  # Meta's "would leave the audience too small" refusal


@dataclass
class TakedownResult:
    segment: str
    destination: str
    kind: str
    status: str  # taken_down | partial | failed | already
    audience: str | None = None
    removed: int = 0
    remaining: int = 0  # people still on the platform audience (as far as we know)
    deleted: bool = False
    files: list[str] = field(default_factory=list)
    sync_id: str | None = None
    recovered: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def exit_code(results: list[TakedownResult]) -> int:
    return EXIT_ERROR if any(r.status in ("partial", "failed") for r in results) else EXIT_OK


def takedown(
    config: ProjectConfig,
    segment: str,
    *,
    by: str,
    destination: str | None = None,
    delete: bool = False,
    connector_factory: ConnectorFactory = make_connector,
) -> list[TakedownResult]:
    """Take the segment's audiences down. Every input and token is checked first."""
    conn = connect(config.state_db)
    try:
        ads, files = _targets(conn, config, segment, destination)
        if not ads and not files:
            return _already(conn, config, segment, destination)
        connectors = _open_all(config, ads, connector_factory)
        for name in [*ads, *files]:  # first: a run killed mid-way still blocks every copy
            record_takedown(config, segment, name, by)
        results = []
        try:
            for name, remote_id in ads.items():
                run = _Takedown(conn, config, segment, name, remote_id, by, delete)
                results.append(run.go(connectors[name]))
        finally:
            for connector in connectors.values():
                connector.close()
        results += [
            _delete_files(conn, config, segment, name, paths, by) for name, paths in files.items()
        ]
        for r in results:  # confirmed gone: no longer a live audience for difference checks
            if r.status == "taken_down":
                taken_down(config, segment, r.destination)
        return results
    finally:
        conn.close()


def _targets(
    conn: sqlite3.Connection, config: ProjectConfig, segment: str, destination: str | None
) -> tuple[dict[str, str], dict[str, list[Path]]]:
    """(live ad destination → audience id, file destination → export folders)."""
    if destination is not None and destination not in config.destinations:
        known = ", ".join(sorted(config.destinations)) or "none"
        raise ConfigError(
            f"unknown destination {destination!r} (configured: {known})",
            "pass one of the destinations in audiences.toml, or leave --destination out",
        )
    rows = conn.execute(
        "SELECT destination, remote_id FROM audiences_remote WHERE segment=? ORDER BY destination",
        (segment,),
    ).fetchall()
    ads: dict[str, str] = {}
    files: dict[str, list[Path]] = {}
    for dest, remote_id in rows:
        name = str(dest)
        if name not in config.destinations or destination not in (None, name):
            continue
        if config.destination(name).kind == "file":
            files[name] = [config.root / str(remote_id)]
        else:
            ads[name] = str(remote_id)
    return ads, files


def _already(
    conn: sqlite3.Connection, config: ProjectConfig, segment: str, destination: str | None
) -> list[TakedownResult]:
    """Nothing live: fine if it was taken down before, an error if it never went out."""
    sql = "SELECT destination, sync_id FROM syncs WHERE segment=? AND release_id=?"
    done = {str(d): str(s) for d, s in conn.execute(sql, (segment, TAKEDOWN)).fetchall()}
    if destination is not None:
        done = {k: v for k, v in done.items() if k == destination}
    if not done:
        where = f" to {destination}" if destination else ""
        raise DataError(
            f"segment {segment!r} was never synced{where}: nothing is live to take down",
            "check the segment and destination names with `audiences status`",
        )
    return [
        TakedownResult(segment, name, config.destination(name).kind, "already", sync_id=sync_id)
        for name, sync_id in sorted(done.items())
        if name in config.destinations
    ]


def _open_all(
    config: ProjectConfig, ads: dict[str, str], factory: ConnectorFactory
) -> dict[str, AudienceConnector]:
    """Every connector opened (its token read) before anything is changed anywhere."""
    opened: dict[str, AudienceConnector] = {}
    try:
        for name in ads:
            connector = factory(config, name)
            connector.open()
            opened[name] = connector
    except BaseException:
        for connector in opened.values():
            connector.close()
        raise
    return opened


@dataclass
class _Takedown:
    conn: sqlite3.Connection
    config: ProjectConfig
    segment: str
    name: str
    remote_id: str
    actor: str
    delete: bool

    def go(self, connector: AudienceConnector) -> TakedownResult:
        store = MembershipStore(self.config.state_dir, self.segment, self.name)
        recovered = recover_interrupted(self.conn, store)
        sync_id = new_id("s")
        out = TakedownResult(
            self.segment,
            self.name,
            connector.kind,
            "failed",
            audience=self.remote_id,
            sync_id=sync_id,
            recovered=recovered,
        )
        self._open(sync_id)
        counter = DestinationSync(self.segment, self.name, "failed", sync_id=sync_id)
        run = _DestinationRun(
            self.conn, store, connector, self.remote_id, sync_id, self.actor, counter, TAKEDOWN
        )
        try:
            self._empty(run, store)
            out.status = "taken_down"
            if counter.membership_unknown:  # the platform did not say who it still holds
                out.status, out.error = (
                    "partial",
                    (
                        f"the platform took {counter.membership_unknown:,} removals only in part "
                        "without saying which (PARTIAL_SUCCESS)"
                    ),
                )
        except ConnectorError as exc:
            out.error = f"{exc.message} [code {exc.code}]" if exc.code is not None else exc.message
            out.status = "partial" if exc.code in (META_MIN_SIZE, str(META_MIN_SIZE)) else "failed"
        if self.delete and connector.can_delete and out.status != "failed":
            self._delete(run, connector, out)
        out.removed = counter.removes
        status = {"taken_down": "taken_down", "partial": "takedown_partial"}.get(
            out.status, "failed"
        )
        close_sync(
            self.conn,
            store,
            sync_id,
            status=status,
            error=out.error,
            figures={"removes": out.removed},
        )
        out.remaining = 0 if out.deleted else store.load().height
        if out.status == "partial":
            fix = (
                "rerun with --delete to delete the audience itself"
                if connector.can_delete
                else "run the takedown again (their removals are sent again)"
            )
            out.error = (
                f"{out.error} — {out.remaining:,} people may remain in the {self.name} "
                f"audience {self.remote_id}; {fix}"
            )
            with transaction(self.conn):
                self.conn.execute("UPDATE syncs SET error=? WHERE sync_id=?", (out.error, sync_id))
        self._audit(out)
        return out

    def _open(self, sync_id: str) -> None:
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO syncs(sync_id, segment, destination, release_id, started_at, status) "
                "VALUES (?,?,?,?,?,?)",
                (sync_id, self.segment, self.name, TAKEDOWN, utcnow(), "running"),
            )

    def _empty(self, run: _DestinationRun, store: MembershipStore) -> None:
        """Remove everyone: one remove-all job, or every row the project ever sent."""
        if run.connector.can_remove_all:
            store.write_intent(run.sync_id, 1, "clear", store.load().clear())
            result = run.connector.remove_all(run.remote_id)
            run.out.removes += store.load().height
            _record_batches(run, [_Batch(1, "clear", store.load().clear(), result)])
            return
        from policies.gate import takedown_release
        from policies.pack import load_pack

        rows = on_platform(run.conn, store)
        release = takedown_release(
            run.sync_id, self.segment, self.config, load_pack(self.config), self.name, rows
        )
        run.connector.ensure_audience(release, run.remote_id)
        _send_batches(run, [("remove", release.members)])

    def _delete(
        self, run: _DestinationRun, connector: AudienceConnector, out: TakedownResult
    ) -> None:
        """Delete the platform audience; the snapshot is emptied and the id forgotten."""
        seq = (
            1
            + (
                run.conn.execute(
                    "SELECT coalesce(max(seq), 0) FROM batches WHERE sync_id=?", (run.sync_id,)
                ).fetchone()[0]
            )
        )
        run.store.write_intent(run.sync_id, seq, "clear", run.store.load().clear())
        try:
            connector.delete_audience(self.remote_id)
        except ConnectorError as exc:
            if "does not exist" not in exc.message and exc.code not in (100, "100"):
                out.error = f"deleting the audience failed: {exc.message}"
                out.status = "failed"
                return
        cleared = BatchOutcome("clear", 0, 0)
        _record_batches(run, [_Batch(seq, "clear", run.store.load().clear(), cleared)])
        with transaction(run.conn):
            run.conn.execute(
                "DELETE FROM audiences_remote WHERE segment=? AND destination=?",
                (self.segment, self.name),
            )
        # the audience record must forget it too, or the next sync refuses the state
        state_record.write(run.conn, run.store.state_dir)
        out.deleted, out.status, out.error = True, "taken_down", None

    def _audit(self, out: TakedownResult) -> None:
        _audit(
            self.conn,
            self.actor,
            "takedown",
            f"{self.segment}->{self.name}",
            {
                "sync_id": out.sync_id,
                "status": out.status,
                "audience": out.audience,
                "removed": out.removed,
                "remaining": out.remaining,
                "deleted": out.deleted,
            },
        )


def _delete_files(
    conn: sqlite3.Connection,
    config: ProjectConfig,
    segment: str,
    name: str,
    paths: list[Path],
    actor: str,
) -> TakedownResult:
    """Delete the segment's export folders under one file destination, and say so."""
    sync_id = new_id("s")
    out = TakedownResult(segment, name, "file", "taken_down", sync_id=sync_id)
    for path in paths:
        if path.is_dir():
            out.files += sorted(
                str(p.relative_to(path.parent)) for p in path.rglob("*") if p.is_file()
            )
            shutil.rmtree(path)
    with transaction(conn):
        conn.execute(
            "DELETE FROM audiences_remote WHERE segment=? AND destination=?", (segment, name)
        )
        conn.execute(
            "INSERT INTO syncs(sync_id, segment, destination, release_id, started_at, "
            "finished_at, status) VALUES (?,?,?,?,?,?,?)",
            (sync_id, segment, name, TAKEDOWN, utcnow(), utcnow(), "taken_down"),
        )
    # the audience record must forget the exports too, or every later sync and plan
    # refuses the state (a recorded audience this state does not know)
    state_record.write(conn, config.state_dir)
    _audit(
        conn,
        actor,
        "takedown",
        f"{segment}->{name}",
        {"sync_id": sync_id, "status": out.status, "files_deleted": len(out.files)},
    )
    return out


__all__ = ["TakedownResult", "exit_code", "takedown"]
