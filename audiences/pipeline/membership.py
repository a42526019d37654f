"""What each ad platform has confirmed, per (segment, destination), and the batch journal.

The confirmed membership is a Parquet snapshot (``member_key`` plus the hashed rows
that were uploaded, so removals can be sent later) under
``.audiences/memberships/``. A sync writes each batch's rows to a journal file
*before* sending it and records the batch in SQLite only *after* the platform
confirms it. A run killed at any point is folded back on the next run: confirmed
batches are applied to the snapshot, unconfirmed ones are simply planned again.

A batch journaled but never confirmed may still have reached the platform (the process
died after sending it). Its rows are kept as *unsure* (``<destination>.unsure.parquet``,
with the batch's op in ``__op``) until a sync of that audience finishes: that sync settles
them to the release, never holding them back (a person the platform may hold who opted out
since must be removed; a person it may lack must be added). The people of a confirmed
batch whose request the platform took only in part without naming the refused
(``BatchOutcome.unknown_keys``: Data Manager PARTIAL_SUCCESS) are unsure the same way:
left out of the batch's journal (so neither added to nor removed from the snapshot) and
kept until a later sync settles them.

Every snapshot, unsure-rows and journal file is sealed: ``<file>.mac`` beside it holds a
keyed BLAKE3 of the file's bytes under a key derived from the project secret
(``.audiences/record.key``, :func:`audiences.pipeline.state_record.derived_key`), bound to
the segment, the destination and the file's role, so a file edited, swapped in from
another audience or made by hand fails :meth:`MembershipStore.load` with the one-line
error of an unreadable file (``audiences state repair`` moves it aside and the audience is
replaced in full). A write first lists the new and the previous authenticator in the
``.mac``, then replaces the file, then lists the new one only: a crash between the steps
leaves a file that verifies. A snapshot whose contents can't be checked at all — no
``.mac`` (written before snapshots were sealed, or removed) or sealed under another
``record.key`` (the ``.mac`` names the key by a public id) — is never read: its audience
is replaced in full on its next sync (:func:`replace_reason`), from the release alone, and
other commands that need it refuse it like a damaged file. Whoever holds ``record.key``
(the whole state folder) can still seal a file of their own.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import blake3
import polars as pl

from audiences.core.atomic import write_with
from audiences.core.config import ProjectConfig
from audiences.core.errors import StateError
from audiences.core.state import ensure_private_dir, transaction, utcnow

KEY = "member_key"
OP = "__op"  # add | remove: the op of the unconfirmed batch an unsure row was in


MAC_SUFFIX = ".mac"
_MAC_DOMAIN = b"audiences membership"


class UnreadableStateFile(StateError):
    """A snapshot, unsure or journal file that cannot be read (truncated, garbled, gone)
    or cannot be trusted (fails its authentication, or has none)."""

    def __init__(
        self,
        path: Path,
        what: str,
        reason: str,
        segment: str,
        destination: str,
        *,
        verdict: str = "unreadable",
    ) -> None:
        # a full refresh keeps held removals, so it reads the snapshot: not for an
        # untrusted one, which only a repair (and the full replace it schedules) settles
        refresh = (
            "" if verdict != "unreadable" else f" or `audiences sync {segment} --full-refresh`"
        )
        super().__init__(
            f"{what} {path} is {verdict} ({reason}); what the platform holds for "
            f"{segment}->{destination} is unknown",
            "run `audiences state repair` (the audience is then replaced in full on its next "
            f"sync){refresh}",
        )
        self.path = path
        self.verdict = verdict


def mac_path(path: Path) -> Path:
    """The authenticator of a sealed state file (``<file>.mac``)."""
    return path.with_name(path.name + MAC_SUFFIX)


def _role(store: MembershipStore, path: Path) -> str:
    """What the file is for, bound into its MAC: a snapshot can't pass for an unsure-rows
    file, nor one audience's or sync's file for another's."""
    if path == store.snapshot_path:
        return "snapshot"
    if path == store.unsure_path:
        return "unsure"
    return f"journal {path.parent.name}/{path.name}"


def _keys(store: MembershipStore) -> tuple[bytes, str]:
    """The MAC key of the store's files and its public id (tells "sealed under another
    record.key" from "edited"; the id reveals nothing about the key)."""
    from audiences.pipeline import state_record  # state_record imports this module

    secret = state_record.project_secret(store.state_dir)
    key = state_record.derived_key(secret, _MAC_DOMAIN, b"file mac")
    return key, state_record.derived_key(secret, _MAC_DOMAIN, b"key id").hex()[:16]


def _mac(store: MembershipStore, path: Path, data: bytes, key: bytes) -> str:
    bound = json.dumps(
        [1, store.segment, store.destination, _role(store, path)], separators=(",", ":")
    ).encode()
    mac = blake3.blake3(key=key)
    mac.update(len(bound).to_bytes(4, "big") + bound)
    mac.update(data)
    return mac.hexdigest()


def _seal_of(path: Path) -> dict[str, object] | None:
    """The ``.mac`` beside ``path`` (``{}`` when unreadable), ``None`` when there is none."""
    try:
        seal = json.loads(mac_path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return seal if isinstance(seal, dict) else {}


def _macs(seal: dict[str, object] | None) -> list[str]:
    listed = (seal or {}).get("mac")
    return [m for m in listed if isinstance(m, str)] if isinstance(listed, list) else []


def _write_sealed(store: MembershipStore, path: Path, frame: pl.DataFrame) -> None:
    """Write ``frame`` to ``path`` and seal it (see the module docstring: crash-safe)."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    data = buffer.getvalue()
    key, key_id = _keys(store)
    new = _mac(store, path, data, key)
    ensure_private_dir(path.parent)

    def seal(macs: list[str]) -> None:
        text = json.dumps({"v": 1, "key": key_id, "mac": macs})
        write_with(mac_path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))

    seal([new, *_macs(_seal_of(path))[:2]])
    write_with(path, lambda tmp: tmp.write_bytes(data))
    seal([new])


def unknown_seal(store: MembershipStore, path: Path) -> str | None:
    """Why the file at ``path`` can't be verified at all (no ``.mac``, or sealed under
    another ``record.key``), ``None`` when it can (or does not exist): its contents are
    then unknown, which a full replace settles without reading them."""
    if not path.exists():
        return None
    seal = _seal_of(path)
    if seal is None:
        return (
            f"it has no authenticator {mac_path(path).name}: written before snapshots "
            "were sealed, or the authenticator was removed"
        )
    key_id = seal.get("key")  # a garbled .mac names none: it then fails its authentication
    if isinstance(key_id, str) and key_id != _keys(store)[1]:
        return "it was sealed under another record.key (the project secret was replaced)"
    return None


def _unlink_sealed(path: Path) -> None:
    path.unlink(missing_ok=True)
    mac_path(path).unlink(missing_ok=True)


def _read(path: Path, what: str, store: MembershipStore) -> pl.DataFrame:
    def refuse(reason: str, verdict: str = "unreadable") -> UnreadableStateFile:
        return UnreadableStateFile(
            path, what, reason, store.segment, store.destination, verdict=verdict
        )

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise refuse("missing") from None
    except OSError as exc:
        raise refuse(exc.strerror or type(exc).__name__) from None
    try:  # parsed first (never used unless it verifies): a damaged file says so
        frame = pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # polars raises ComputeError, OSError, ... for a damaged file
        reason = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
        raise refuse(reason) from None
    unknown = unknown_seal(store, path)
    if unknown is not None:
        raise refuse(unknown, "not trusted")
    mac = _mac(store, path, data, _keys(store)[0])
    if not any(hmac.compare_digest(mac, m) for m in _macs(_seal_of(path))):
        raise refuse(
            "it fails its authentication: edited, replaced or taken from another audience",
            "not trusted",
        )
    return frame


@dataclass(frozen=True)
class MembershipStore:
    state_dir: Path
    segment: str
    destination: str

    @property
    def snapshot_path(self) -> Path:
        return self.state_dir / "memberships" / self.segment / f"{self.destination}.parquet"

    @property
    def unsure_path(self) -> Path:
        return self.snapshot_path.with_name(f"{self.destination}.unsure.parquet")

    def journal_dir(self, sync_id: str) -> Path:
        return self.state_dir / "syncs" / sync_id

    def load_unsure(self) -> pl.DataFrame | None:
        """Rows of batches an interrupted sync sent unconfirmed (``None``: there are none)."""
        if not self.unsure_path.exists():
            return None
        return _read(self.unsure_path, "unsure-rows file", self)

    def clear_unsure(self) -> None:
        _unlink_sealed(self.unsure_path)

    def add_unsure(self, rows: pl.DataFrame) -> None:
        """Keep ``rows`` (op in ``__op``) as unsure, beside the rows kept already."""
        kept = self.load_unsure()
        frame = pl.concat([*([kept] if kept is not None else []), rows], how="diagonal_relaxed")
        frame = frame.unique(keep="last", maintain_order=True)
        _write_sealed(self, self.unsure_path, frame)

    def settle_unsure(self, left: list[pl.DataFrame]) -> None:
        """A finished sync settled the unsure rows; keep only ``left`` (rows it sent whose
        fate the platform did not tell: a PARTIAL_SUCCESS request's people)."""
        self.clear_unsure()
        if left:
            self.add_unsure(pl.concat(left, how="diagonal_relaxed"))

    def load(self, columns: list[str] | None = None) -> pl.DataFrame:
        """The confirmed snapshot, verified against its ``.mac`` (empty when there is no
        snapshot); a file that fails, or has no ``.mac``, is an UnreadableStateFile."""
        if not self.snapshot_path.exists():
            schema = {KEY: pl.UInt64, **{c: pl.String for c in (columns or [])}}
            return pl.DataFrame(schema=schema)
        return _read(self.snapshot_path, "membership snapshot", self)

    def read_journal(self, sync_id: str, seq: int, op: str) -> pl.DataFrame:
        """A journaled batch's rows; a missing or damaged file is an UnreadableStateFile."""
        path = self.journal_dir(sync_id) / f"{int(seq):06d}-{op}.parquet"
        return _read(path, "sync journal file", self)

    def save(self, frame: pl.DataFrame) -> None:
        _write_sealed(self, self.snapshot_path, frame)

    # ---- journal -----------------------------------------------------------------
    def write_intent(self, sync_id: str, seq: int, op: str, rows: pl.DataFrame) -> Path:
        target = ensure_private_dir(self.journal_dir(sync_id)) / f"{seq:06d}-{op}.parquet"
        _write_sealed(self, target, rows)
        return target

    def fold(self, base: pl.DataFrame, batches: list[tuple[str, pl.DataFrame]]) -> pl.DataFrame:
        """Apply confirmed batches, in order, to a snapshot (vectorized per batch).

        ``clear`` empties the audience (a full refresh's first step), ``remove`` drops
        members, ``add`` inserts or updates them.
        """
        out = base
        # Consecutive batches of one op are applied together: one join per run of adds or
        # removes rather than per batch (a million members is a hundred batches).
        for op, group in itertools.groupby(batches, key=lambda batch: batch[0]):
            frames = [rows for _, rows in group]
            if op == "clear":
                out = out.clear()
                continue
            rows = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
            if op == "remove":
                out = out.join(rows.select(KEY), on=KEY, how="anti")
            else:
                rows = rows.unique(subset=KEY, keep="last", maintain_order=True)
                out = pl.concat(
                    [out.join(rows.select(KEY), on=KEY, how="anti"), rows], how="diagonal_relaxed"
                )
        return out


def close_sync(
    conn,
    store: MembershipStore,
    sync_id: str,
    *,
    status: str,  # type: ignore[no-untyped-def]
    error: str | None = None,
    figures: dict[str, object] | None = None,
) -> int:
    """Fold the sync's confirmed batches into the snapshot, then mark the sync closed
    (unless it ended ``ok``, its unconfirmed batches' rows are kept as unsure).

    Returns how many confirmed batches were folded. Safe to call again after a crash
    at any point: the snapshot is replaced atomically before the status changes, and
    folding the same confirmed batches twice gives the same snapshot.
    """
    confirmed = conn.execute(
        "SELECT seq, op FROM batches WHERE sync_id=? AND status='confirmed' ORDER BY seq",
        (sync_id,),
    ).fetchall()
    directory = store.journal_dir(sync_id)
    batches = []
    for seq, op in confirmed:
        if op == "clear":  # a replace's first step: no rows, nothing journaled to read
            batches.append(("clear", pl.DataFrame(schema={KEY: pl.UInt64})))
            continue
        batches.append((str(op), store.read_journal(sync_id, int(seq), str(op))))
    # a replace does not start from the old snapshot (which may be the unreadable one)
    cleared = bool(batches) and batches[0][0] == "clear"
    members: int | None = None
    if batches:
        snapshot = pl.DataFrame(schema={KEY: pl.UInt64}) if cleared else store.load()
        snapshot = store.fold(snapshot, batches)
        store.save(snapshot)
        members = snapshot.height
    elif store.snapshot_path.exists():
        with contextlib.suppress(UnreadableStateFile):  # the failure being recorded
            members = store.load().height
    else:
        members = 0
    unsure = _unconfirmed(conn, store, sync_id) if status != "ok" else []
    if unsure:  # kept before the journal goes; the next sync settles them
        store.add_unsure(pl.concat(unsure, how="diagonal_relaxed"))
    sets = ["status=?", "finished_at=?", "error=coalesce(?, error)", "members=?"]
    values: list[object] = [status, utcnow(), error, members]
    for column, value in (figures or {}).items():
        sets.append(f"{column}=?")
        values.append(value)
    with transaction(conn):
        conn.execute(f"UPDATE syncs SET {', '.join(sets)} WHERE sync_id=?", (*values, sync_id))
    shutil.rmtree(directory, ignore_errors=True)
    return len(batches)


def _unconfirmed(conn, store: MembershipStore, sync_id: str) -> list[pl.DataFrame]:  # type: ignore[no-untyped-def]
    """Rows of the sync's add / remove batches journaled (so maybe sent) but not confirmed."""
    confirmed = {
        int(seq)
        for (seq,) in conn.execute(
            "SELECT seq FROM batches WHERE sync_id=? AND status='confirmed'", (sync_id,)
        )
    }
    directory = store.journal_dir(sync_id)
    parts = []
    for path in sorted(directory.glob("*.parquet")) if directory.exists() else []:  # not .mac
        seq, _, op = path.stem.partition("-")
        if op in ("add", "remove") and int(seq) not in confirmed:
            parts.append(_read(path, "sync journal file", store).with_columns(pl.lit(op).alias(OP)))
    return parts


def unconfirmed_batches(conn, store: MembershipStore) -> pl.DataFrame | None:  # type: ignore[no-untyped-def]
    """Unconfirmed batch rows of syncs still marked running (op in ``__op``), or ``None``."""
    rows = conn.execute(
        "SELECT sync_id FROM syncs WHERE segment=? AND destination=? AND status='running' "
        "ORDER BY started_at",
        (store.segment, store.destination),
    ).fetchall()
    parts = [part for (sync_id,) in rows for part in _unconfirmed(conn, store, sync_id)]
    return pl.concat(parts, how="diagonal_relaxed") if parts else None


def unsure_rows(conn, store: MembershipStore) -> pl.DataFrame | None:  # type: ignore[no-untyped-def]
    """Kept unsure rows plus those of syncs not yet recovered (``None`` if none)."""
    parts = [f for f in (store.load_unsure(), unconfirmed_batches(conn, store)) if f is not None]
    return pl.concat(parts, how="diagonal_relaxed") if parts else None


def recover_interrupted(conn, store: MembershipStore) -> list[str]:  # type: ignore[no-untyped-def]
    """Fold the confirmed batches of syncs that died mid-way (kill -9) into the snapshot;
    the rows of their unconfirmed batches are kept as unsure (see the module docstring)."""
    rows = conn.execute(
        "SELECT sync_id FROM syncs WHERE segment=? AND destination=? AND status='running' "
        "ORDER BY started_at",
        (store.segment, store.destination),
    ).fetchall()
    for (sync_id,) in rows:
        close_sync(
            conn,
            store,
            sync_id,
            status="interrupted",
            error="the run ended before finishing; its confirmed batches were kept",
        )
    return [r[0] for r in rows]


# ---- unknown platform contents: full replaces --------------------------------------
def replace_reason(conn, store: MembershipStore) -> str | None:  # type: ignore[no-untyped-def]
    """Why the audience's next sync must replace it in full (``None``: a diff is safe).

    Scheduled replaces (``state adopt``, ``state repair``, a restore older than the
    audience record) and a snapshot gone missing although batches were confirmed for this
    audience before: without the snapshot nobody knows who is on the platform.
    """
    row = conn.execute(
        "SELECT reason FROM replace_due WHERE segment=? AND destination=?",
        (store.segment, store.destination),
    ).fetchone()
    if row is not None:
        return str(row[0])
    unknown = unknown_seal(store, store.snapshot_path)
    if unknown is not None:  # never read: it may list people the platform was never sent
        return f"membership snapshot {store.snapshot_path} is not trusted ({unknown})"
    if store.snapshot_path.exists():
        return None
    earlier = conn.execute(
        "SELECT 1 FROM batches b JOIN syncs s ON s.sync_id=b.sync_id WHERE s.segment=? "
        "AND s.destination=? AND s.status!='running' AND b.status='confirmed' LIMIT 1",
        (store.segment, store.destination),
    ).fetchone()
    if earlier is None:
        return None
    return f"membership snapshot {store.snapshot_path} is missing"


def schedule_replace(conn, segment: str, destination: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    with transaction(conn):
        conn.execute(
            "INSERT INTO replace_due(segment, destination, reason, at) VALUES (?,?,?,?) "
            "ON CONFLICT(segment, destination) DO UPDATE SET reason=excluded.reason, at=excluded.at",
            (segment, destination, reason, utcnow()),
        )


def replace_done(conn, segment: str, destination: str) -> None:  # type: ignore[no-untyped-def]
    with transaction(conn):
        conn.execute(
            "DELETE FROM replace_due WHERE segment=? AND destination=?", (segment, destination)
        )


def discard_interrupted(conn, store: MembershipStore) -> list[str]:  # type: ignore[no-untyped-def]
    """Close interrupted syncs without reading their journals, and forget unsure rows:
    for an audience about to be replaced in full (what it holds no longer matters)."""
    rows = conn.execute(
        "SELECT sync_id FROM syncs WHERE segment=? AND destination=? AND status='running'",
        (store.segment, store.destination),
    ).fetchall()
    with transaction(conn):
        for (sync_id,) in rows:
            conn.execute(
                "UPDATE syncs SET status='interrupted', finished_at=?, error=coalesce(error, ?) "
                "WHERE sync_id=?",
                (utcnow(), "the run ended before finishing; the audience is replaced", sync_id),
            )
    for (sync_id,) in rows:
        shutil.rmtree(store.journal_dir(sync_id), ignore_errors=True)
    store.clear_unsure()
    return [str(r[0]) for r in rows]


def share_synced_snapshot(config: ProjectConfig, store: MembershipStore, kind: str) -> None:
    """What the platform holds of an ad audience after a sync, kept in custody for every
    difference check (it differs from the newest release while changes are held back)."""
    from audiences.compliance.workflow import share_synced
    from policies.rules import GOOGLE_KINDS

    if kind not in ("meta", *GOOGLE_KINDS) or not store.snapshot_path.exists():
        return
    try:
        snapshot = store.load()
    except UnreadableStateFile:  # the failure is the sync's to report; the next one mends
        return
    share_synced(config, store.segment, store.destination, snapshot)
