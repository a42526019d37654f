"""The audience record: what the project has on the platforms, kept outside ``state.db``.

``.audiences/audiences.manifest.json`` lists the platform audience of each (segment,
destination), the identity of the state database that made them (``meta.state_id``),
the audit head when the record was last written, and a fingerprint of the project salt
(the salt makes member keys and opaque audience names; it lives beside the record in
``.audiences/salt``). The file is written atomically (0600) each time an audience is
created and each time a batch is confirmed, and signed with HMAC-SHA256 under a project
secret kept beside it (``.audiences/record.key``, 0600).

Before a sync (and a plan) :func:`check` compares it with the state database. A state
that is not the one that made the audiences (``state.db`` deleted and made anew), or
that lacks the record's audit head (restored from an older backup), is refused with
exit 1: the platforms hold people that state does not know about. ``audiences state
restore`` brings the newest backup back; ``audiences state adopt`` (:func:`adopt`)
re-links the recorded audiences and schedules a full replace of each.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audiences.core.atomic import write_text
from audiences.core.errors import StateError
from audiences.core.state import ensure_private_dir, state_id, utcnow
from audiences.pipeline.membership import MembershipStore, discard_interrupted, schedule_replace

RECORD_NAME = "audiences.manifest.json"
KEY_NAME = "record.key"
SALT_NAME = "salt"
_FIX_LOST = (
    "restore the newest backup (`audiences state restore FILE`), or run `audiences state "
    "adopt` to re-link the recorded audiences (each is then replaced in full on its next sync)"
)


@dataclass(frozen=True)
class AudienceRecord:
    state_id: str
    audit_seq: int
    audit_hash: str
    salt_id: str
    audiences: dict[tuple[str, str], str]  # (segment, destination) -> platform id
    written_at: str

    def body(self) -> dict[str, Any]:
        return {
            "v": 1,
            "state_id": self.state_id,
            "audit_head": {"seq": self.audit_seq, "hash": self.audit_hash},
            "salt_id": self.salt_id,
            "audiences": [
                {"segment": s, "destination": d, "remote_id": r}
                for (s, d), r in sorted(self.audiences.items())
            ],
            "written_at": self.written_at,
        }


def record_path(state_dir: Path) -> Path:
    return state_dir / RECORD_NAME


def salt_id(state_dir: Path) -> str | None:
    """A fingerprint of the project salt (never the salt), ``None`` when there is none."""
    path = state_dir / SALT_NAME
    if not path.exists():
        return None
    return hashlib.sha256(b"audiences salt id\0" + path.read_bytes()).hexdigest()[:32]


def _secret(state_dir: Path, *, create: bool) -> bytes | None:
    path = state_dir / KEY_NAME
    if not path.exists():
        if not create:
            return None
        ensure_private_dir(state_dir)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
            fh.flush()
            os.fsync(fh.fileno())
    data = path.read_bytes()
    if len(data) != 32:
        raise StateError(
            f"audience record key {path} is damaged", "restore it from a backup (state restore)"
        )
    return data


def project_secret(state_dir: Path) -> bytes:
    """The project secret (``record.key``, created if missing): other state-folder files
    derive their own keys from it with :func:`derived_key` (the opt-out index, the
    membership snapshots)."""
    secret = _secret(state_dir, create=True)
    assert secret is not None  # created above
    return secret


def derived_key(secret: bytes, domain: bytes, purpose: bytes) -> bytes:
    """A 32-byte key for one use of the project secret: HMAC-SHA256 over the user's
    ``domain`` and the ``purpose``, so keys of different files never coincide."""
    return hmac.new(secret, domain + b"\0" + purpose, hashlib.sha256).digest()


def _sign(secret: bytes, body: dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


def load(state_dir: Path) -> AudienceRecord | None:
    """The verified record, ``None`` if the project has none yet."""
    path = record_path(state_dir)
    if not path.exists():
        return None
    fix = "restore it from a backup (`audiences state restore FILE`)"
    secret = _secret(state_dir, create=False)
    if secret is None:
        raise StateError(f"the key of the audience record {path} ({KEY_NAME}) is missing", fix)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        signature = doc.pop("hmac")
        body = doc
        audiences = {
            (a["segment"], a["destination"]): str(a["remote_id"]) for a in body["audiences"]
        }
        head = body["audit_head"]
        record = AudienceRecord(
            str(body["state_id"]),
            int(head["seq"]),
            str(head["hash"]),
            str(body["salt_id"]),
            audiences,
            str(body["written_at"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise StateError(f"audience record {path} is unreadable", fix) from None
    if not hmac.compare_digest(str(signature), _sign(secret, record.body())):
        raise StateError(f"audience record {path} does not match its signature (edited)", fix)
    return record


def current(conn: sqlite3.Connection, state_dir: Path) -> AudienceRecord:
    """The record as the state database describes it now."""
    from audiences.compliance import audit

    seq, digest = audit.head(conn)
    rows = conn.execute("SELECT segment, destination, remote_id FROM audiences_remote")
    return AudienceRecord(
        state_id(conn),
        seq,
        digest,
        salt_id(state_dir) or "",
        {(str(s), str(d)): str(r) for s, d, r in rows},
        utcnow(),
    )


def write(conn: sqlite3.Connection, state_dir: Path) -> AudienceRecord:
    """Write the record of the state as it is now (atomically, signed, 0600)."""
    record = current(conn, state_dir)
    secret = _secret(state_dir, create=True)
    assert secret is not None
    body = record.body()
    doc = {**body, "hmac": _sign(secret, body)}
    write_text(record_path(state_dir), json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return record


def problems(conn: sqlite3.Connection, state_dir: Path) -> tuple[AudienceRecord | None, str | None]:
    """(the record, why the state cannot be trusted against it, or None)."""
    record = load(state_dir)
    if record is None:
        return None, None
    salt = salt_id(state_dir)
    if salt != record.salt_id:
        what = "is missing" if salt is None else "differs from the one the audiences were made with"
        raise StateError(
            f"the project salt {state_dir / SALT_NAME} {what}",
            "restore it from a backup (`audiences state restore FILE`); member keys and "
            "audience names derive from it",
        )
    if state_id(conn) != record.state_id:
        return record, "is not the one that made them (it was deleted or replaced)"
    row = conn.execute("SELECT hash FROM audit WHERE seq=?", (record.audit_seq,)).fetchone()
    if record.audit_seq and (row is None or str(row[0]) != record.audit_hash):
        return record, "is older than the record (restored from an older backup?)"
    known = {
        (str(s), str(d)): str(r)
        for s, d, r in conn.execute("SELECT segment, destination, remote_id FROM audiences_remote")
    }
    unknown = [k for k, r in record.audiences.items() if known.get(k) != r]
    if unknown:
        return record, f"does not know {len(unknown)} of them"
    return record, None


def check(
    conn: sqlite3.Connection, state_dir: Path, db_path: Path, *, bootstrap: bool = True
) -> None:
    """Refuse (exit 1) a state database that does not account for the recorded audiences;
    write the record first when the project has none yet (``bootstrap``; plan does not)."""
    record, why = problems(conn, state_dir)
    if record is None:
        known = conn.execute("SELECT 1 FROM audiences_remote LIMIT 1").fetchone() is not None
        if bootstrap and known:
            write(conn, state_dir)
        return
    if why is not None:
        raise StateError(
            f"{len(record.audiences)} platform audience(s) are recorded in "
            f"{record_path(state_dir)} but the state database {db_path} {why}",
            _FIX_LOST,
        )


def adopt(conn: sqlite3.Connection, state_dir: Path, actor: str) -> list[tuple[str, str, str]]:
    """Re-link the recorded audiences to this state and schedule a full replace of each.

    Returns the (segment, destination, platform id) adopted. Never creates an audience.
    """
    from audiences.compliance import audit

    record = load(state_dir)
    if record is None:
        raise StateError(
            f"there is no audience record at {record_path(state_dir)}",
            "nothing to adopt; run `audiences sync` (or restore a backup that has one)",
        )
    adopted = []
    for (segment, destination), remote_id in sorted(record.audiences.items()):
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO audiences_remote(segment, destination, remote_id, created_at) "
                "VALUES (?,?,?,?) ON CONFLICT(segment, destination) "
                "DO UPDATE SET remote_id=excluded.remote_id",
                (segment, destination, remote_id, utcnow()),
            )
            audit.append(
                conn,
                kind="audience",
                subject=f"{segment}->{destination}",
                details={"remote_id": remote_id, "how": "adopted"},
                actor=actor,
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        discard_interrupted(conn, MembershipStore(state_dir, segment, destination))
        schedule_replace(conn, segment, destination, "adopted by `audiences state adopt`")
        adopted.append((segment, destination, remote_id))
    write(conn, state_dir)
    return adopted
