"""Backups of a project's state, their restore, and the repair of unreadable state files.

A backup (:func:`backup`) is one tar archive (mode 0600) holding a copy of the state
database made with SQLite's online backup API (consistent while readers run), the
confirmed membership snapshots (``memberships/``), the release membership keys
(``releases/``, which difference checks read) and compliance reports (``reports/``),
the project salt, the audience
record and its key (``audiences.pipeline.state_record``) and ``backup.json`` (format,
time, the state's identity and audit head). Take it under the project lock (the CLI
does), so no sync is half-way.

:func:`restore` puts a backup back. The files it replaces are moved aside (never
deleted), the newer of the two audience records is kept, and then the checks of
``state_record`` run: a backup older than the record (syncs ran after it was taken)
does not know what the platforms hold now, so each recorded audience is re-linked and
replaced in full on its next sync, as ``audiences state adopt`` does.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiences.compliance.workflow import reapply_revocations, reapply_trust
from audiences.core.atomic import write_with
from audiences.core.config import ProjectConfig
from audiences.core.errors import StateError
from audiences.core.state import connect, new_id, state_id, utcnow
from audiences.pipeline import state_record
from audiences.pipeline.membership import (
    MembershipStore,
    UnreadableStateFile,
    discard_interrupted,
    mac_path,
    schedule_replace,
    unconfirmed_batches,
)

FORMAT = "audiences-state-backup/1"
_FILES = (state_record.SALT_NAME, state_record.KEY_NAME, state_record.RECORD_NAME)
# snapshots, release membership keys (difference checks read the previous release's)
# and compliance reports
_FOLDERS = ("memberships", "releases", "reports")


@dataclass
class RestoreReport:
    archive: str
    moved_aside: list[str] = field(default_factory=list)
    adopted: list[tuple[str, str, str]] = field(default_factory=list)
    reason: str | None = None
    replaces: list[tuple[str, str]] = field(default_factory=list)
    # revocations the backup did not know, kept in custody and applied again
    revoked_again: list[dict[str, str]] = field(default_factory=list)
    # signed approver changes the backup did not know, kept in custody and applied again
    trust_again: list[str] = field(default_factory=list)
    # (first, last, file): audit entries of the replaced chain this one does not hold
    dropped: tuple[int, int, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "archive": self.archive,
            "moved_aside": self.moved_aside,
            "adopted": [
                {"segment": s, "destination": d, "audience": r} for s, d, r in self.adopted
            ],
            "reason": self.reason,
            "replaces": [{"segment": s, "destination": d} for s, d in self.replaces],
            "revoked_again": self.revoked_again,
            "approver_changes_again": self.trust_again,
            "audit_entries_not_restored": None
            if self.dropped is None
            else {"first": self.dropped[0], "last": self.dropped[1], "in": self.dropped[2]},
        }


# ---------------------------------------------------------------------------- backup
def backup(config: ProjectConfig, out: Path) -> dict[str, Any]:
    """Write one archive of the project's state to ``out`` (atomically, 0600)."""
    state_dir = config.state_dir
    if not config.state_db.exists():
        raise StateError(f"no state database at {config.state_db}", "nothing to back up")
    with tempfile.TemporaryDirectory(prefix="audiences-backup-") as tmp:
        copy = Path(tmp) / "state.db"
        source = connect(config.state_db, create=False)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
            from audiences.compliance import audit

            seq, digest = audit.head(source)
            info = {
                "format": FORMAT,
                "created_at": utcnow(),
                "state_id": state_id(source),
                "audit_head": {"seq": seq, "hash": digest},
            }
        finally:
            target.close()
            source.close()
        write_with(out, lambda path: _write_archive(path, copy, state_dir, info))
    return {"out": str(out), **info}


def _write_archive(path: Path, db_copy: Path, state_dir: Path, info: dict[str, Any]) -> None:
    with tarfile.open(path, "w") as tar:
        data = json.dumps(info, indent=1, sort_keys=True).encode()
        entry = tarfile.TarInfo("backup.json")
        entry.size, entry.mode = len(data), 0o600
        tar.addfile(entry, io.BytesIO(data))
        tar.add(db_copy, arcname="state.db")
        for name in _FILES:
            if (state_dir / name).exists():
                tar.add(state_dir / name, arcname=name)
        for folder in _FOLDERS:
            if (state_dir / folder).exists():
                tar.add(state_dir / folder, arcname=folder)


# ---------------------------------------------------------------------------- restore
def _open_archive(archive: Path, into: Path) -> dict[str, Any]:
    """Unpack a backup into ``into`` after checking every member name; its backup.json."""
    fix = "pass a file written by `audiences state backup --out FILE`"
    try:
        with tarfile.open(archive, "r") as tar:
            for member in tar.getmembers():
                name = Path(member.name)
                top = name.parts[0] if name.parts else ""
                allowed = top in ("backup.json", "state.db", *_FOLDERS, *_FILES)
                if name.is_absolute() or ".." in name.parts or not allowed:
                    raise StateError(
                        f"backup {archive} holds an unexpected file {member.name}", fix
                    )
                if not (member.isfile() or member.isdir()):
                    raise StateError(f"backup {archive} holds a link or device {member.name}", fix)
            tar.extractall(into, filter="data")
        info: dict[str, Any] = json.loads((into / "backup.json").read_text(encoding="utf-8"))
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise StateError(f"backup {archive} is unreadable ({exc})", fix) from None
    if info.get("format") != FORMAT or not (into / "state.db").is_file():
        raise StateError(f"backup {archive} is not an audiences state backup", fix)
    return info


def _check_salt(state_dir: Path, unpacked: Path) -> None:
    mine, theirs = state_dir / state_record.SALT_NAME, unpacked / state_record.SALT_NAME
    if mine.exists() and theirs.exists() and mine.read_bytes() != theirs.read_bytes():
        raise StateError(
            "the backup belongs to another project (its salt differs from this project's)",
            "restore a backup of this project; nothing was changed",
        )


def _move_aside(path: Path, stamp: str, report: RestoreReport) -> None:
    if path.exists():
        aside = path.with_name(f"{path.name}.before-restore-{stamp}")
        path.rename(aside)
        report.moved_aside.append(str(aside))


def _record_newest(state_dir: Path, unpacked: Path) -> None:
    """Keep this project's audience record when it verifies (it is at least as new as the
    backup's); take the backup's otherwise."""
    try:
        mine = state_record.load(state_dir)
    except StateError:
        mine = None
    if mine is not None:
        return
    for name in (state_record.KEY_NAME, state_record.RECORD_NAME):
        if (unpacked / name).exists():
            shutil.copy2(unpacked / name, state_dir / name)
            (state_dir / name).chmod(0o600)


def restore(config: ProjectConfig, archive: Path, actor: str) -> RestoreReport:
    """Put a backup back, then bring the state in line with the audience record."""
    state_dir, db = config.state_dir, config.state_db
    report = RestoreReport(str(archive))
    with tempfile.TemporaryDirectory(prefix="audiences-restore-", dir=state_dir) as tmp:
        unpacked = Path(tmp)
        _open_archive(archive, unpacked)
        _check_salt(state_dir, unpacked)
        stamp = new_id("r")
        replaced = _audit_head(db)
        for suffix in ("", "-wal", "-shm"):  # the WAL holds the newest commits
            _move_aside(Path(f"{db}{suffix}"), stamp, report)
        _move_aside(state_dir / "syncs", stamp, report)  # journals of the replaced state
        shutil.copy2(unpacked / "state.db", db)
        db.chmod(0o600)
        restored = _audit_head(db)
        for folder in _FOLDERS:
            if (unpacked / folder).exists():
                _move_aside(state_dir / folder, stamp, report)
                shutil.copytree(unpacked / folder, state_dir / folder)
        if not (state_dir / state_record.SALT_NAME).exists() and (unpacked / "salt").exists():
            shutil.copy2(unpacked / "salt", state_dir / state_record.SALT_NAME)
        _record_newest(state_dir, unpacked)
    _after_restore(config, actor, report)
    aside = db.with_name(f"{db.name}.before-restore-{stamp}")
    _audit_restore(config, archive, actor, (restored, replaced), aside, report)
    return report


def _audit_head(db: Path) -> tuple[int, str] | None:
    """The audit head of a state database file (None: no file, or unreadable)."""
    from audiences.compliance import audit

    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return audit.head(conn)
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def _audit_restore(
    config: ProjectConfig,
    archive: Path,
    actor: str,
    heads: tuple[tuple[int, str] | None, tuple[int, str] | None],
    aside: Path,
    report: RestoreReport,
) -> None:
    """A ``state_restore`` audit entry in the restored chain: which backup, and how far
    the replaced chain had gone — entries it had beyond the backup are not in this chain,
    and the entry says where they are (the database moved aside)."""
    from audiences.compliance import audit

    restored, replaced = heads
    seq, digest = restored or (0, audit.GENESIS_HASH)
    conn = connect(config.state_db)
    try:
        details: dict[str, Any] = {
            "archive": archive.name,
            "restored_head": {"seq": seq, "hash": digest},
            "replaced_head": None,
        }
        if replaced is not None:
            details["replaced_head"] = {"seq": replaced[0], "hash": replaced[1]}
            details["replaced_database"] = aside.name
            if replaced[0] > seq:
                report.dropped = (seq + 1, replaced[0], aside.name)
        audit.append(conn, kind="state_restore", subject="state", details=details, actor=actor)
    finally:
        conn.close()


def _after_restore(config: ProjectConfig, actor: str, report: RestoreReport) -> None:
    """The checks of ``state_record``; runs interrupted in the backup are replaced."""
    conn = connect(config.state_db)
    try:
        record, why = state_record.problems(conn, config.state_dir)
        if why is not None and record is not None:
            report.reason = f"the restored state database {why}"
            report.adopted = state_record.adopt(conn, config.state_dir, actor)
            report.replaces = [(s, d) for s, d, _ in report.adopted]
        running = conn.execute(
            "SELECT DISTINCT segment, destination FROM syncs WHERE status='running'"
        ).fetchall()
        for segment, destination in running:
            discard_interrupted(conn, MembershipStore(config.state_dir, segment, destination))
            schedule_replace(conn, segment, destination, "interrupted in the restored backup")
            report.replaces.append((str(segment), str(destination)))
        if record is None or why is None:
            state_record.write(conn, config.state_dir)
        report.trust_again = reapply_trust(conn, config, actor)
        report.revoked_again = reapply_revocations(conn, config, actor)
    finally:
        conn.close()


# ---------------------------------------------------------------------------- repair
def repair(config: ProjectConfig) -> list[dict[str, str]]:
    """Move unreadable snapshots and journals aside; schedule a full replace of each
    audience they concern. Returns what was done, per audience."""
    state_dir = config.state_dir
    conn = connect(config.state_db)
    done: list[dict[str, str]] = []
    try:
        pairs = _audience_pairs(conn, state_dir)
        for segment, destination in sorted(pairs):
            store = MembershipStore(state_dir, segment, destination)
            damaged = _first_damage(conn, store)
            if damaged is None:
                continue
            aside = state_dir / "damaged" / new_id("x")
            aside.mkdir(parents=True, mode=0o700)
            for path in (damaged, mac_path(damaged)):  # the file and its authenticator
                if path.exists():
                    shutil.move(str(path), aside / path.name)
            discard_interrupted(conn, store)
            reason = f"{damaged} was unreadable (moved to {aside})"
            schedule_replace(conn, segment, destination, reason)
            done.append({"segment": segment, "destination": destination, "reason": reason})
    finally:
        conn.close()
    return done


def _audience_pairs(conn: sqlite3.Connection, state_dir: Path) -> set[tuple[str, str]]:
    pairs = {
        (str(s), str(d))
        for s, d in conn.execute("SELECT segment, destination FROM audiences_remote")
    }
    pairs |= {
        (str(s), str(d)) for s, d in conn.execute("SELECT DISTINCT segment, destination FROM syncs")
    }
    for path in (state_dir / "memberships").glob("*/*.parquet"):
        pairs.add((path.parent.name, path.name.split(".", 1)[0]))
    return pairs


def _first_damage(conn: sqlite3.Connection, store: MembershipStore) -> Path | None:
    """The first unreadable file of the audience's snapshot, unsure rows or journals."""
    from audiences.pipeline.sync import _confirmed_view

    try:
        store.load()
        store.load_unsure()
        _confirmed_view(conn, store)
        unconfirmed_batches(conn, store)
    except UnreadableStateFile as exc:
        return exc.path
    return None
