"""What a compliance decision leaves outside the project folder: per OS account, beside
the DP budget ledger (docs/compliance-workflow.md, "Custody: what a copy cannot undo").

The project's state (``.audiences/state.db``) is a file the marketer can restore from an
older backup, delete, or copy with the whole project. These records must outlive all of
that, so they are also kept in ``custody.sqlite`` in the per-user folder of the DP ledger
(:func:`policies.privacy.ledger.ledger_home`: the OS account's home from the password
database, never ``$HOME``; nothing a production run reads moves it):

* **the trust root of each destination account** (``act_…``, a Google Ads customer id,
  every file destination of a project: see :func:`workflow.destination_account`): the
  approver keys a project trusted when it first approved a release to the account, then
  every signed ``audiences approvers add/remove``. An approval counts only when its key
  is trusted for every account it releases to, and once an account has approvers every
  release to it needs an approval, so a project whose state was deleted (or a copy of
  it) cannot trust a key of its own by editing ``[approvers] keys``: trust on first use
  happens once per account, not once per state database.
* **revocations**, by the approval's signature and by segment and account with the time:
  an approval revoked once stays revoked in every copy and after every restore, and so
  does every older approval of the segment a backup or a copy may still hold.
* **takedowns**, by segment and account: nothing is added to a taken-down audience again
  until an approval signed after the takedown, whichever state the sync runs from.
* **the newest release of each audience**, by account and project salt (a copy of the
  project has the same salt, so its member keys compare): the salted member keys, as the
  state keeps them, so that the difference check of every copy sees the audiences every
  other copy released to the account; and, for an ad account, the members' link keys
  (hashed e-mail, phone, and name with postal code, 64 bits:
  :func:`policies.difference.link_frame`), through
  which a project with *another* salt compares its releases with these.

Writes go through ``BEGIN IMMEDIATE`` (two processes cannot both pin a first trust root).
A store that cannot be opened stops the command (exit 1): it is never taken for an empty one.
Tests point :data:`policies.privacy.ledger.LEDGER_HOME` elsewhere in-process.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from audiences.compliance import audit
from audiences.compliance.keys import key_id, load_public_key
from audiences.core.errors import ApprovalError, StateError
from policies.difference import EarlierRelease, ForeignRelease

TRUST_KIND = "approver_trust"  # the keys of [approvers] keys at first use (TOFU)
ADD_KIND = "approver_add"
REMOVE_KIND = "approver_remove"
# a key that signs audit checkpoints only (the scheduled job's): never approves, reviews
# or signs an approver change (docs/compliance-workflow.md, "Why checkpoints and anchors")
CHECKPOINT_ADD_KIND = "checkpoint_key_add"
CHECKPOINT_REMOVE_KIND = "checkpoint_key_remove"
TRUST_KINDS = (TRUST_KIND, ADD_KIND, REMOVE_KIND, CHECKPOINT_ADD_KIND, CHECKPOINT_REMOVE_KIND)
FILE_NAME = "custody.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trust (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  account TEXT NOT NULL,
  kind TEXT NOT NULL,
  subject TEXT NOT NULL,
  details TEXT NOT NULL,
  project TEXT NOT NULL,
  at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trust_account ON trust(account, id);
CREATE TABLE IF NOT EXISTS revocations (
  signature_sha256 TEXT PRIMARY KEY,
  segment TEXT NOT NULL,
  by TEXT NOT NULL,
  at TEXT NOT NULL,
  project TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS segment_revocations (
  account TEXT NOT NULL,
  segment TEXT NOT NULL,
  by TEXT NOT NULL,
  at TEXT NOT NULL,
  project TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS segment_revocations_segment ON segment_revocations(segment, account);
CREATE TABLE IF NOT EXISTS takedowns (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  segment TEXT NOT NULL,
  account TEXT NOT NULL,
  destination TEXT NOT NULL,
  by TEXT NOT NULL,
  at TEXT NOT NULL,
  project TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS takedowns_segment ON takedowns(segment, account);
CREATE TABLE IF NOT EXISTS releases (
  release_id TEXT PRIMARY KEY,
  salt_id TEXT NOT NULL,
  account TEXT NOT NULL,
  segment TEXT NOT NULL,
  destination TEXT NOT NULL,
  build_id TEXT NOT NULL,
  created_at TEXT NOT NULL,
  members INTEGER NOT NULL,
  file TEXT NOT NULL,
  project TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS releases_account ON releases(account, salt_id);
CREATE TABLE IF NOT EXISTS synced (
  salt_id TEXT NOT NULL,
  account TEXT NOT NULL,
  segment TEXT NOT NULL,
  destination TEXT NOT NULL,
  at TEXT NOT NULL,
  members INTEGER NOT NULL,
  file TEXT NOT NULL,
  links TEXT NOT NULL,
  project TEXT NOT NULL,
  PRIMARY KEY (salt_id, account, segment, destination)
);
"""


@dataclass(frozen=True, slots=True)
class TrustEntry:
    """One change of a trusted key set: the first-use keys, or a signed add or remove."""

    kind: str
    subject: str
    details: dict[str, Any]
    at: str
    where: str  # for errors: "audit entry 12", "custody entry 3 of act_123"


def custody_path() -> Path:
    from policies.privacy.ledger import ledger_home

    return ledger_home() / FILE_NAME


@contextlib.contextmanager
def opened() -> Iterator[sqlite3.Connection]:
    """The account's custody store (created on first use, mode 0600)."""
    from audiences.core.state import ensure_private_dir

    path = custody_path()
    try:
        ensure_private_dir(path.parent)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        with contextlib.suppress(PermissionError):
            path.chmod(0o600)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.executescript(_SCHEMA)
        # a store made before other projects were compared
        _add_column(conn, "releases", "links")
        _add_column(conn, "releases", "k_diff")
        _add_column(conn, "releases", "exclusions")
    except (OSError, sqlite3.DatabaseError) as exc:
        raise StateError(
            f"cannot open the custody store {path} ({exc})",
            "check that the folder is writable by this account; never delete it",
        ) from None
    try:
        yield conn
    finally:
        conn.close()


def _add_column(conn: sqlite3.Connection, table: str, column: str) -> None:
    """``ALTER TABLE … ADD COLUMN`` (TEXT, null in the rows already there) unless present."""
    if column in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
        return
    try:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
    except sqlite3.OperationalError as exc:  # another process added it first
        if "duplicate column" not in str(exc):
            raise


# --------------------------------------------------------------------------- trust sets


def change_payload(kind: str, name: str, public: str, by: str, by_key: str) -> bytes:
    """The canonical JSON a trusted approver signs to add or remove an approver key."""
    return audit.canonical_json(
        {"type": f"audiences.{kind}", "name": name, "public": public, "by": by, "by_key": by_key}
    ).encode()


def _kid(public: str) -> str:
    return key_id(load_public_key(public))


def replay(entries: Iterable[TrustEntry], *, broken: str) -> dict[str, dict[str, str]]:
    """``{name: {"public", "key_id", "since"}}``: the first-use keys, plus signed additions,
    minus signed removals — each change verified against the keys trusted before it."""
    return replay_roles(entries, broken=broken)[0]


def replay_roles(
    entries: Iterable[TrustEntry], *, broken: str
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """The approvers (as :func:`replay`) and the checkpoint-only keys: each change, of
    either role, signed by a key trusted as an approver before it. The kind is part of
    what is signed, so an added checkpoint key's signature never reads as an approver's."""
    trusted: dict[str, dict[str, str]] = {}
    checkpointers: dict[str, dict[str, str]] = {}
    for entry in entries:
        details = entry.details
        if entry.kind == TRUST_KIND:
            for name, public in details["keys"].items():
                trusted[name] = {"public": public, "key_id": _kid(public), "since": entry.at}
            continue
        if entry.kind not in TRUST_KINDS:
            raise ApprovalError(f"unknown approver change {entry.kind!r} in {entry.where}", broken)
        signer = trusted.get(details.get("by", ""))
        payload = change_payload(
            entry.kind, entry.subject, details["public"], details["by"], details["by_key"]
        )
        why = ""
        if signer is None or signer["key_id"] != details["by_key"]:
            why = "its signer is not a trusted approver"
        else:
            try:
                load_public_key(signer["public"]).verify(
                    base64.b64decode(details["signature"]), payload
                )
            except Exception:
                why = "its signature does not verify"
        if why:
            raise ApprovalError(
                f"approver change in {entry.where} ({entry.kind} {entry.subject}): {why}", broken
            )
        role = checkpointers if entry.kind.startswith("checkpoint_") else trusted
        if entry.kind in (ADD_KIND, CHECKPOINT_ADD_KIND):
            role[entry.subject] = {
                "public": details["public"],
                "key_id": _kid(details["public"]),
                "since": entry.at,
            }
        else:
            role.pop(entry.subject, None)
    return trusted, checkpointers


def _entries(conn: sqlite3.Connection, account: str) -> list[TrustEntry]:
    rows = conn.execute(
        "SELECT id, kind, subject, details, at FROM trust WHERE account = ? ORDER BY id",
        (account,),
    ).fetchall()
    return [
        TrustEntry(kind, subject, json.loads(details), at, f"custody entry {id_} of {account}")
        for id_, kind, subject, details, at in rows
    ]


def entries(conn: sqlite3.Connection, account: str) -> list[TrustEntry]:
    """The account's trust history, oldest first (first use, then signed changes)."""
    return _entries(conn, account)


def trusted_for(conn: sqlite3.Connection, account: str) -> dict[str, dict[str, str]] | None:
    """The keys trusted for ``account`` on this OS account, or None before its first use."""
    entries = _entries(conn, account)
    if not entries:
        return None
    return replay(entries, broken=f"the custody store {custody_path()} was altered")


def pin(
    conn: sqlite3.Connection, account: str, entries: list[TrustEntry], project: str
) -> dict[str, dict[str, str]]:
    """The account's trust root: the one already pinned, or ``entries`` (a project's
    verified trust history) pinned now as its first."""
    with audit.write_transaction(conn):
        if conn.execute("SELECT 1 FROM trust WHERE account = ? LIMIT 1", (account,)).fetchone():
            pinned = trusted_for(conn, account)
            assert pinned is not None
            return pinned
        for entry in entries:
            _insert_trust(conn, account, entry, project)
    return replay(entries, broken="the project's trust history does not verify")


def accounts_pinned_by(conn: sqlite3.Connection, project: str) -> set[str]:
    """Every account whose trust the project's entries shaped."""
    rows = conn.execute("SELECT DISTINCT account FROM trust WHERE project = ?", (project,))
    return {str(row[0]) for row in rows.fetchall()}


def check_change(conn: sqlite3.Connection, account: str, entry: TrustEntry) -> None:
    """ApprovalError unless ``entry`` is a change the account's approvers signed."""
    replay([*_entries(conn, account), entry], broken="the change does not verify")


def record_change(conn: sqlite3.Connection, account: str, entry: TrustEntry, project: str) -> None:
    """Append a signed add or remove to an account whose trust root is pinned."""
    with audit.write_transaction(conn):
        check_change(conn, account, entry)
        _insert_trust(conn, account, entry, project)


def _insert_trust(conn: sqlite3.Connection, account: str, entry: TrustEntry, project: str) -> None:
    conn.execute(
        "INSERT INTO trust(account, kind, subject, details, project, at) VALUES (?,?,?,?,?,?)",
        (
            account,
            entry.kind,
            entry.subject,
            audit.canonical_json(entry.details),
            project,
            entry.at,
        ),
    )


# --------------------------------------------------------------------------- revocations


def _signature_digest(signature: str) -> str:
    return hashlib.sha256(signature.encode()).hexdigest()


def record_revocation(
    conn: sqlite3.Connection, signature: str, segment: str, by: str, at: str, project: str
) -> None:
    with audit.write_transaction(conn):
        conn.execute(
            "INSERT OR IGNORE INTO revocations(signature_sha256, segment, by, at, project) "
            "VALUES (?,?,?,?,?)",
            (_signature_digest(signature), segment, by, at, project),
        )


def record_segment_revocation(
    conn: sqlite3.Connection, accounts: list[str], segment: str, by: str, at: str, project: str
) -> None:
    """Every approval of ``segment`` signed up to ``at`` is revoked for these accounts, in
    every state: also an older approval a restored backup or a copy still holds."""
    with audit.write_transaction(conn):
        conn.executemany(
            "INSERT INTO segment_revocations(account, segment, by, at, project) VALUES (?,?,?,?,?)",
            [(account, segment, by, at, project) for account in accounts],
        )


def segment_revocations(
    conn: sqlite3.Connection, accounts: list[str], segment: str
) -> list[tuple[str, str]]:
    """``(by, at)`` of every revocation of the segment for any of these accounts."""
    marks = ",".join("?" * len(accounts))
    rows = conn.execute(
        f"SELECT by, at FROM segment_revocations WHERE segment=? AND account IN ({marks}) "
        "ORDER BY at",
        (segment, *accounts),
    ).fetchall()
    return [(str(by), str(at)) for by, at in rows]


def revocation(conn: sqlite3.Connection, signature: str) -> tuple[str, str] | None:
    """``(by, at)`` when the approval with this signature was revoked anywhere."""
    row = conn.execute(
        "SELECT by, at FROM revocations WHERE signature_sha256 = ?",
        (_signature_digest(signature),),
    ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


# --------------------------------------------------------------------------- takedowns


def record_takedown(
    conn: sqlite3.Connection,
    segment: str,
    account: str,
    destination: str,
    by: str,
    at: str,
    project: str,
) -> None:
    """A takedown by segment and account: it blocks that segment's adds in every state
    until an approval signed after it. (The audience's releases stop counting as live only
    once the platform confirmed it: :func:`forget_audience`.)"""
    with audit.write_transaction(conn):
        conn.execute(
            "INSERT INTO takedowns(segment, account, destination, by, at, project) "
            "VALUES (?,?,?,?,?,?)",
            (segment, account, destination, by, at, project),
        )


def latest_takedown(conn: sqlite3.Connection, segment: str, account: str) -> str | None:
    """When the segment's audience on ``account`` was last taken down, from any state."""
    row = conn.execute(
        "SELECT max(at) FROM takedowns WHERE segment = ? AND account = ?", (segment, account)
    ).fetchone()
    return None if row is None or row[0] is None else str(row[0])


# --------------------------------------------------------------------------- releases


@contextlib.contextmanager
def account_locks(accounts: Iterable[str]) -> Iterator[None]:
    """Hold each account's release lock (an exclusive ``flock`` on a file beside the store,
    taken in sorted order; the kernel drops it when the process ends, however it ends)
    from the gate's reading of the releases other states made to the account to the
    registration of this build's: two projects, or two copies of one, building at once
    would each check against the account without the other's release."""
    import fcntl

    from audiences.core.state import ensure_private_dir

    folder = ensure_private_dir(custody_path().parent / "locks")
    with contextlib.ExitStack() as stack:
        for account in sorted(set(accounts)):
            name = hashlib.sha256(account.encode()).hexdigest()[:32]
            fh = stack.enter_context(open(folder / f"{name}.lock", "a+b"))
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield


def salt_id(salt: bytes) -> str:
    """Which member keys compare: the same salt (a project and its copies). Not the salt."""
    return hashlib.sha256(b"audiences custody salt id\0" + salt).hexdigest()[:32]


def _write_private(target: Path, write: Callable[[Path], object]) -> None:
    """``write`` a file beside ``target``, 0600, then move it into place (atomic)."""
    partial = target.with_suffix(".partial")
    write(partial)
    partial.chmod(0o600)
    partial.replace(target)


def register_releases(
    conn: sqlite3.Connection,
    salt: bytes,
    releases: list[EarlierRelease],
    project: str,
    links: dict[str, pl.DataFrame] | None = None,
    k_diffs: dict[str, int] | None = None,
    exclusions: str | None = None,
) -> None:
    """Keep a copy of each release's member keys and, for an ad account, its people's link
    keys (``links`` by release id: :func:`policies.difference.link_frame`) and the
    difference rule's ``k_diff`` it was released under (``k_diffs``) and the digest of
    what its project's CRM rules exclude (``exclusions``); an audience's
    older copies are dropped (only the newest release of an audience is what a platform
    holds)."""
    import shutil

    from audiences.core.state import ensure_private_dir

    sid = salt_id(salt)
    folder = ensure_private_dir(custody_path().parent / "releases" / sid)
    stale: list[Path] = []
    for r in releases:
        target = folder / f"{r.release_id}.parquet"
        _write_private(target, functools.partial(shutil.copyfile, r.membership_path))
        linked = (links or {}).get(r.release_id)
        link_file = None
        if linked is not None:
            link_file = folder / f"{r.release_id}.links.parquet"
            _write_private(link_file, functools.partial(linked.write_parquet, statistics=False))
        with audit.write_transaction(conn):
            older = conn.execute(
                "SELECT release_id, file, links FROM releases WHERE salt_id=? AND account=? "
                "AND segment=? AND destination=? AND created_at < ?",
                (sid, r.account, r.segment, r.destination, r.created_at),
            ).fetchall()
            conn.execute(
                "INSERT OR REPLACE INTO releases(release_id, salt_id, account, segment, "
                "destination, build_id, created_at, members, file, project, links, k_diff, "
                "exclusions) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    r.release_id,
                    sid,
                    r.account,
                    r.segment,
                    r.destination,
                    r.build_id,
                    r.created_at,
                    r.members,
                    target.name,
                    project,
                    None if link_file is None else link_file.name,
                    (k_diffs or {}).get(r.release_id),
                    exclusions,
                ),
            )
            conn.executemany(
                "DELETE FROM releases WHERE release_id = ?", [(row[0],) for row in older]
            )
        stale += [folder / str(name) for row in older for name in row[1:] if name]
    for path in stale:
        path.unlink(missing_ok=True)


def register_synced(
    conn: sqlite3.Connection,
    salt: bytes,
    audience: EarlierRelease,
    keys: pl.DataFrame,
    links: pl.DataFrame,
    project: str,
) -> None:
    """Keep what the platform holds of an audience after a sync (its confirmed snapshot:
    member keys and link keys), which differs from its newest release while small changes
    are held back: every difference check compares with both."""
    from audiences.core.state import ensure_private_dir

    sid = salt_id(salt)
    folder = ensure_private_dir(custody_path().parent / "releases" / sid)
    stem = (
        "synced-"
        + hashlib.sha256(
            f"{audience.account}\0{audience.segment}\0{audience.destination}".encode()
        ).hexdigest()[:24]
    )
    for frame, suffix in ((keys, ".parquet"), (links, ".links.parquet")):
        _write_private(
            folder / f"{stem}{suffix}", functools.partial(frame.write_parquet, statistics=False)
        )
    with audit.write_transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO synced(salt_id, account, segment, destination, at, members, "
            "file, links, project) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                sid,
                audience.account,
                audience.segment,
                audience.destination,
                audience.created_at,
                audience.members,
                f"{stem}.parquet",
                f"{stem}.links.parquet",
                project,
            ),
        )


def synced_for(
    conn: sqlite3.Connection, salt: bytes, account: str
) -> tuple[list[EarlierRelease], list[ForeignRelease]]:
    """What the platform holds of each audience on ``account`` after its latest sync:
    (this salt's — member keys that compare as they are —, other salts' — with links)."""
    # the k_diff its project released the audience under: that of its newest release
    rows = conn.execute(
        "SELECT s.salt_id, s.segment, s.destination, s.at, s.members, s.file, s.links, "
        "s.project, r.k_diff, r.exclusions FROM synced s LEFT JOIN releases r ON "
        "r.release_id = (SELECT n.release_id FROM releases n WHERE n.salt_id = s.salt_id AND "
        "n.account = s.account AND n.segment = s.segment AND n.destination = s.destination "
        "ORDER BY n.created_at DESC LIMIT 1) WHERE s.account = ? ORDER BY s.at",
        (account,),
    ).fetchall()
    root = custody_path().parent / "releases"
    mine, others = [], []
    for sid, segment, destination, at, members, file, links, project, k_diff, excl in rows:
        e = EarlierRelease(
            f"synced:{segment}/{destination}", "", segment, destination, account, at,
            int(members), root / sid / file,
        )  # fmt: skip
        if sid == salt_id(salt):
            mine.append(replace(e, links_path=root / sid / links if links else None))
        else:
            others.append(
                ForeignRelease(e, root / sid / links, str(project), int(k_diff or 0), excl or "")
            )
    return mine, others


def forget_audience(
    conn: sqlite3.Connection, salt: bytes, account: str, segment: str, destination: str
) -> int:
    """A takedown the platform confirmed (the audience emptied or deleted): the audience's
    kept releases no longer count as live for any difference check. Returns how many."""
    sid = salt_id(salt)
    folder = custody_path().parent / "releases" / sid
    with audit.write_transaction(conn):
        rows = conn.execute(
            "SELECT release_id, file, links FROM releases WHERE salt_id=? AND account=? AND "
            "segment=? AND destination=?",
            (sid, account, segment, destination),
        ).fetchall()
        conn.executemany("DELETE FROM releases WHERE release_id = ?", [(r[0],) for r in rows])
        synced = conn.execute(
            "SELECT file, links FROM synced WHERE salt_id=? AND account=? AND segment=? AND "
            "destination=?",
            (sid, account, segment, destination),
        ).fetchall()
        conn.execute(
            "DELETE FROM synced WHERE salt_id=? AND account=? AND segment=? AND destination=?",
            (sid, account, segment, destination),
        )
        rows += [(None, *row) for row in synced]
    for row in rows:
        for name in row[1:]:
            if name:
                (folder / str(name)).unlink(missing_ok=True)
    return len(rows)


def foreign_releases_for(
    conn: sqlite3.Connection, salt: bytes, account: str
) -> list[ForeignRelease]:
    """The newest release of each audience on ``account`` from every project with another
    salt, with its people's link keys (releases kept before links were, have none: they
    cannot be compared and are left out). An audience stops counting only when its own
    project's takedown of it was confirmed (:func:`forget_audience`); a takedown recorded
    by name, of another destination or in another project, leaves it live."""
    sid = salt_id(salt)
    rows = conn.execute(
        "SELECT release_id, build_id, segment, destination, account, created_at, members, "
        "file, salt_id, links, project, k_diff, exclusions FROM releases r WHERE salt_id != ? "
        "AND account = ? "
        "AND links IS NOT NULL "
        "ORDER BY created_at, release_id",
        (sid, account),
    ).fetchall()
    root = custody_path().parent / "releases"
    return [
        ForeignRelease(
            EarlierRelease(r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), root / r[8] / str(r[7])),
            root / r[8] / str(r[9]),
            str(r[10]),
            int(r[11] or 0),
            str(r[12] or ""),
        )
        for r in rows
    ]


def releases_for(conn: sqlite3.Connection, salt: bytes, account: str) -> list[EarlierRelease]:
    """The newest release of each audience on ``account`` from every state with this salt
    (their member keys, and for an ad account their people's link keys: copies kept here)."""
    sid = salt_id(salt)
    folder = custody_path().parent / "releases" / sid
    rows = conn.execute(
        "SELECT release_id, build_id, segment, destination, account, created_at, members, "
        "file, links FROM releases WHERE salt_id=? AND account=? ORDER BY created_at, release_id",
        (sid, account),
    ).fetchall()
    kept = [(r, folder / str(r[8]) if r[8] else None) for r in rows]
    return [
        EarlierRelease(r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), folder / str(r[7]), links)
        for r, links in kept
    ]
