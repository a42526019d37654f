"""The state store: SQLite at ``.audiences/state.db`` (WAL mode, versioned migrations).

Holds builds, releases (membership files are Parquet beside the DB, holding salted
member keys only), the DP ledger, syncs and their batches, approvals and the
hash-chained audit log. Nothing here ever holds raw PII or secrets.

A database written by a newer version of audiences is refused rather than
half-understood; an older one is upgraded in place, one migration at a time, each
in its own transaction.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from audiences.core.errors import StateError

SCHEMA_VERSION = 3

_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE builds (
  build_id TEXT PRIMARY KEY,
  segment TEXT NOT NULL,
  segment_digest TEXT NOT NULL,
  policy_digest TEXT,
  source_digest TEXT,
  as_of TEXT NOT NULL,
  started_at TEXT NOT NULL,
  finished_at TEXT,
  status TEXT NOT NULL,          -- running | released | blocked | failed
  candidates INTEGER,            -- exact, for compliance reports only
  members INTEGER,               -- exact released members
  reasons TEXT,                  -- JSON list of one-line block reasons
  summary TEXT,                  -- JSON summary (figures, digests, paths)
  actor TEXT NOT NULL
);
CREATE INDEX builds_segment ON builds(segment, started_at);
CREATE TABLE releases (
  release_id TEXT PRIMARY KEY,
  build_id TEXT NOT NULL REFERENCES builds(build_id),
  segment TEXT NOT NULL,
  destination TEXT NOT NULL,
  account TEXT NOT NULL,         -- destination account the membership went to
  members INTEGER NOT NULL,
  membership_path TEXT NOT NULL, -- Parquet of salted member keys (UInt64)
  verdict_digest TEXT NOT NULL,
  segment_digest TEXT NOT NULL,
  policy_digest TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE INDEX releases_account ON releases(destination, account, created_at);
CREATE INDEX releases_segment ON releases(segment, destination, created_at);
CREATE TABLE dp_ledger (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  dataset TEXT NOT NULL,
  period TEXT NOT NULL,
  epsilon REAL NOT NULL,
  delta REAL NOT NULL DEFAULT 0,
  query TEXT NOT NULL,
  actor TEXT NOT NULL,
  at TEXT NOT NULL
);
CREATE INDEX dp_ledger_dataset_period ON dp_ledger(dataset, period);
CREATE TABLE approvals (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  segment TEXT NOT NULL,
  segment_digest TEXT NOT NULL,
  policy_digest TEXT NOT NULL,
  destinations TEXT NOT NULL,
  approver TEXT NOT NULL,
  key_id TEXT NOT NULL,
  signature TEXT NOT NULL,
  payload TEXT NOT NULL,
  note TEXT,
  definition TEXT NOT NULL,
  at TEXT NOT NULL,
  revoked_at TEXT,
  revoked_by TEXT
);
CREATE INDEX approvals_segment ON approvals(segment);
CREATE TABLE audit (
  seq INTEGER PRIMARY KEY,
  at TEXT NOT NULL,
  actor TEXT NOT NULL,
  kind TEXT NOT NULL,
  subject TEXT NOT NULL,
  details TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL
);
CREATE TABLE audit_checkpoints (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  seq INTEGER NOT NULL,
  hash TEXT NOT NULL,
  key_id TEXT NOT NULL,
  signature TEXT NOT NULL,
  at TEXT NOT NULL
);
"""

_V2 = """
CREATE TABLE syncs (
  sync_id TEXT PRIMARY KEY,
  segment TEXT NOT NULL,
  destination TEXT NOT NULL,
  release_id TEXT,
  started_at TEXT NOT NULL,
  finished_at TEXT,
  status TEXT NOT NULL,          -- running | ok | failed | blocked
  adds INTEGER NOT NULL DEFAULT 0,
  removes INTEGER NOT NULL DEFAULT 0,
  holds INTEGER NOT NULL DEFAULT 0,
  received INTEGER NOT NULL DEFAULT 0,
  invalid INTEGER NOT NULL DEFAULT 0,
  match_rate REAL,
  members INTEGER,               -- confirmed audience size after the sync
  error TEXT,
  summary TEXT
);
CREATE INDEX syncs_segment ON syncs(segment, destination, started_at);
CREATE TABLE audiences_remote (
  segment TEXT NOT NULL,
  destination TEXT NOT NULL,
  remote_id TEXT NOT NULL,       -- the platform's audience / user list id
  created_at TEXT NOT NULL,
  PRIMARY KEY (segment, destination)
);
CREATE TABLE batches (
  sync_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  op TEXT NOT NULL,              -- add | remove | replace
  size INTEGER NOT NULL,
  status TEXT NOT NULL,          -- confirmed
  received INTEGER,
  invalid INTEGER,
  at TEXT NOT NULL,
  PRIMARY KEY (sync_id, seq)
);
"""

# v3: audiences whose platform contents are unknown (state lost, snapshot or journal
# unreadable): their next sync is a full replace, never a diff against "empty". The
# state's identity (``meta.state_id``) is compared with the audience record kept outside
# the database (``audiences.pipeline.state_record``); batches confirmed from v3 on each
# have an audit entry, as has each audience link: ``audit verify`` cross-checks the rows
# after ``meta.audit_covers_batches_after`` / ``audit_covers_audiences_after`` (rowids).
_V3 = """
CREATE TABLE replace_due (
  segment TEXT NOT NULL,
  destination TEXT NOT NULL,
  reason TEXT NOT NULL,
  at TEXT NOT NULL,
  PRIMARY KEY (segment, destination)
);
INSERT OR IGNORE INTO meta(key, value)
  SELECT 'audit_covers_batches_after', CAST(coalesce(max(rowid), 0) AS TEXT) FROM batches;
INSERT OR IGNORE INTO meta(key, value)
  SELECT 'audit_covers_audiences_after', CAST(coalesce(max(rowid), 0) AS TEXT)
  FROM audiences_remote;
"""

MIGRATIONS: dict[int, str] = {1: _V1, 2: _V2, 3: _V3}


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id(prefix: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{prefix}-{stamp}-{secrets.token_hex(3)}"


def ensure_private_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StateError(
            f"cannot create the state folder {path} ({exc.strerror or exc})",
            "set state_dir in audiences.toml ([project]) to a writable local folder",
        ) from None
    with contextlib.suppress(PermissionError):
        path.chmod(0o700)
    return path


def _create_private_file(path: Path) -> None:
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    path.chmod(0o600)


def connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """Open (and migrate) the state DB. Autocommit mode: use :func:`transaction`."""
    if not path.exists():
        if not create:
            raise StateError(f"no state database at {path}", "run `audiences build` first")
        ensure_private_dir(path.parent)
        _create_private_file(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        _migrate(conn, path)
        _ensure_state_id(conn)
    except sqlite3.DatabaseError as exc:
        raise StateError(
            f"state database {path} is unreadable ({exc})",
            "restore it from a backup or move it aside; audiences never guesses at a corrupt state",
        ) from None
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        if side.exists():
            with contextlib.suppress(PermissionError):
                side.chmod(0o600)
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
    ).fetchone()
    if not has_meta:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else 0


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state database {path} has schema version {version}, newer than this audiences "
            f"understands ({SCHEMA_VERSION})",
            "upgrade audiences (pip install -U audiences); nothing was changed",
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        with transaction(conn):
            for statement in _statements(MIGRATIONS[target]):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO meta(key, value) VALUES('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(target),),
            )


def _ensure_state_id(conn: sqlite3.Connection) -> None:
    """Give the database its identity once (the audience record names it)."""
    if conn.execute("SELECT 1 FROM meta WHERE key='state_id'").fetchone() is None:
        with transaction(conn):
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES('state_id', ?)",
                (secrets.token_hex(16),),
            )


def state_id(conn: sqlite3.Connection) -> str:
    """This state database's identity (random, made when the database was created)."""
    row = conn.execute("SELECT value FROM meta WHERE key='state_id'").fetchone()
    if row is None:
        raise StateError("the state database has no identity", "run any command to upgrade it")
    return str(row[0])


def meta_value(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _statements(script: str) -> Iterator[str]:
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    for statement in "\n".join(lines).split(";"):
        if statement.strip():
            yield statement.strip()


@contextlib.contextmanager
def transaction(
    conn: sqlite3.Connection, *, immediate: bool = True
) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def project_salt(state_dir: Path) -> bytes:
    """The project's secret salt for member keys (created once, 0600, never leaves the host)."""
    ensure_private_dir(state_dir)
    path = state_dir / "salt"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
        os.replace(tmp, path)
    data = path.read_bytes()
    if len(data) != 32:
        raise StateError(f"salt file {path} is damaged", "restore it from a backup")
    return data
