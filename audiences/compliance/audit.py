"""The tamper-evident audit log: an append-only SHA-256 hash chain in the state DB.

Every entry ``seq`` (1, 2, 3, ... without gaps) stores ``hash = sha256(record)`` where
``record`` is the canonical JSON (sorted keys, no spaces, UTF-8, ``ensure_ascii=False``)
of ``{seq, at, actor, kind, subject, details, prev_hash}``; ``details`` is itself stored as
canonical JSON and ``prev_hash`` is the previous entry's hash (``"0" * 64`` for the first).
Editing, deleting, inserting or reordering entries breaks a hash or a link, and
:func:`verify` names the first bad entry.

A hash chain alone cannot tell a chain that was *rewritten from some entry on* (with all
hashes recomputed) or cut short at the end from a genuine one: the hash is not keyed.
Two anchors outside the attacker's reach close that gap:

* signed checkpoints (:func:`checkpoint`): a trusted approver's Ed25519 key signs
  ``(seq, hash)`` of the head; a rewritten chain cannot be re-signed without that key;
* external anchors: the ``(seq, hash)`` head printed in every ``sync --json`` summary
  (kept by cron mail or a SIEM) fed back as ``verify(..., anchors=[(seq, hash)])``.

``details`` hold digests, counts and names of things (segments, destinations, rules) —
never raw PII. :func:`append` rejects what obviously is not that: e-mail-shaped text
(``x@y.z``) in ``details`` or ``subject``, and non-JSON values.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiences.compliance.keys import key_id as fingerprint
from audiences.compliance.keys import trusted_key_index
from audiences.core.errors import InternalError, StateError, UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
    )

GENESIS_HASH = "0" * 64
CHECKPOINT_KIND = "checkpoint"

# The canonical record with its keys in sorted order. ``details`` is inserted verbatim
# (it is stored canonical); strings go through json's own C string encoder, so this is
# byte for byte ``json.dumps(record, sort_keys=True, separators=(",", ":"),
# ensure_ascii=False)`` without building a dict per entry (tests check the equality).
_RECORD = '{"actor":%s,"at":%s,"details":%s,"kind":%s,"prev_hash":%s,"seq":%d,"subject":%s}'
# The same with prev_hash known to be 64 hex digits (verify's hot loop: one call fewer).
_RECORD_HEX_PREV = (
    '{"actor":%s,"at":%s,"details":%s,"kind":%s,"prev_hash":"%s","seq":%d,"subject":%s}'
)
_MAX_DETAILS = 16_384


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: str
    actor: str
    kind: str
    subject: str
    details: str  # canonical JSON text, as stored and hashed
    prev_hash: str
    hash: str

    def details_dict(self) -> dict[str, Any]:
        return dict(json.loads(self.details))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    key_id: str
    signature: str  # base64 Ed25519 signature over checkpoint_payload(seq, hash, at)
    at: str

    @property
    def anchor(self) -> str:
        """``SEQ:HASH`` as ``audiences audit verify --anchor`` takes it."""
        return f"{self.seq}:{self.hash}"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int  # entries verified good (all of them when ok)
    first_bad_seq: int | None
    reason: str | None
    head: tuple[int, str] = (0, GENESIS_HASH)
    checkpoints: int = 0  # signed checkpoints verified
    anchors: int = 0  # external anchors verified
    problems: list[str] = field(default_factory=list)
    newest_checkpoint_at: str | None = None  # when the newest signed checkpoint was made

    def checkpoint_age_seconds(self, now: datetime | None = None) -> float | None:
        if self.newest_checkpoint_at is None:
            return None
        at = datetime.fromisoformat(self.newest_checkpoint_at.replace("Z", "+00:00"))
        return round(((now or datetime.now(UTC)) - at.replace(tzinfo=UTC)).total_seconds(), 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "newest_checkpoint_at": self.newest_checkpoint_at,
            "checkpoint_age_seconds": self.checkpoint_age_seconds(),
            "ok": self.ok,
            "entries": self.entries,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "head": {"seq": self.head[0], "hash": self.head[1]},
            "checkpoints": self.checkpoints,
            "anchors": self.anchors,
            "problems": list(self.problems),
        }


# --------------------------------------------------------------------------- encoding


def format_at(at: datetime | None = None) -> str:
    """ISO-8601 UTC with microseconds and ``Z``, as everywhere in the state DB."""
    at = datetime.now(UTC) if at is None else at
    if at.tzinfo is None:
        raise InternalError("audit timestamps must be timezone-aware (got a naive datetime)")
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 text (not ASCII-escaped), no NaN/Infinity."""
    return _CANONICAL.encode(value)


def record_text(
    seq: int, at: str, actor: str, kind: str, subject: str, details: str, prev_hash: str
) -> str:
    """The canonical JSON record an entry's hash covers (``details`` already canonical)."""
    return _RECORD % (
        encode_basestring(actor),
        encode_basestring(at),
        details,
        encode_basestring(kind),
        encode_basestring(prev_hash),
        seq,
        encode_basestring(subject),
    )


def entry_hash(
    seq: int, at: str, actor: str, kind: str, subject: str, details: str, prev_hash: str
) -> str:
    text = record_text(seq, at, actor, kind, subject, details, prev_hash)
    return hashlib.sha256(text.encode()).hexdigest()


# Something shaped like an e-mail address (a diff's "@@ -1,3 +1,3 @@" is not).
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")


def _check_text(value: str, where: str, kind: str) -> None:
    if "@" in value and _EMAIL.search(value):
        # Never echo the value: it may be an e-mail address.
        raise InternalError(
            f"audit {kind} entry: {where} contains '@' and looks like an e-mail address; "
            "audit details hold digests, counts and names only"
        )


def _check_details(value: Any, where: str, kind: str) -> None:
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InternalError(f"audit {kind} entry: {where} is not a finite number")
        return
    if isinstance(value, str):
        _check_text(value, where, kind)
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_details(item, f"{where}[{i}]", kind)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InternalError(f"audit {kind} entry: {where} has a non-string key")
            _check_text(key, f"{where} key", kind)
            _check_details(item, f"{where}.{key}", kind)
        return
    raise InternalError(
        f"audit {kind} entry: {where} is a {type(value).__name__}, not a JSON value"
    )


def _prepare(
    kind: str, subject: str, details: Mapping[str, Any], actor: str
) -> tuple[str, str, str, str]:
    for name, value in (("kind", kind), ("subject", subject), ("actor", actor)):
        if not isinstance(value, str) or not value:
            raise InternalError(f"audit entry {name} must be a non-empty string")
    if not isinstance(details, Mapping):
        raise InternalError(f"audit {kind} entry: details must be a mapping")
    _check_text(subject, "subject", kind)
    # Fast path: serialize once and look at the text ('@' can only come from a string or
    # a key). The recursive walk runs only to name the offending place.
    try:
        text = canonical_json(dict(details))
    except (TypeError, ValueError):
        text = None
    if text is None or "@" in text:
        _check_details(dict(details), "details", kind)  # raises on e-mail-shaped text
        if text is None:
            raise InternalError(f"audit {kind} entry: details are not canonical JSON")
    if len(text) > _MAX_DETAILS:
        raise InternalError(
            f"audit {kind} entry: details are {len(text)} characters long (limit "
            f"{_MAX_DETAILS}); audit details hold digests, counts and names only"
        )
    return kind, subject, text, actor


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT, or join the caller's transaction if one is open."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def head(conn: sqlite3.Connection) -> tuple[int, str]:
    """``(seq, hash)`` of the last entry; ``(0, "0" * 64)`` for an empty log."""
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))


def _insert(
    conn: sqlite3.Connection, rows: Iterable[tuple[str, str, str, str, str]]
) -> AuditEntry | None:
    """Chain and insert ``(at, actor, kind, subject, details)`` rows after the head;
    return the last entry written."""
    seq, prev = head(conn)
    chained = []
    for at, actor, kind, subject, details in rows:
        seq += 1
        digest = entry_hash(seq, at, actor, kind, subject, details, prev)
        chained.append((seq, at, actor, kind, subject, details, prev, digest))
        prev = digest
    conn.executemany(
        "INSERT INTO audit(seq, at, actor, kind, subject, details, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        chained,
    )
    return AuditEntry(*chained[-1]) if chained else None


def append(
    conn: sqlite3.Connection,
    *,
    kind: str,
    subject: str,
    details: Mapping[str, Any],
    actor: str,
    at: datetime | None = None,
) -> AuditEntry:
    """Append one entry. Runs in its own BEGIN IMMEDIATE transaction, or joins the
    caller's open one (so an approval and its audit entry commit together)."""
    kind, subject, text, actor = _prepare(kind, subject, details, actor)
    stamp = format_at(at)
    with write_transaction(conn):
        entry = _insert(conn, [(stamp, actor, kind, subject, text)])
    if entry is None:
        raise InternalError("audit append wrote no entry")
    return entry


def append_many(
    conn: sqlite3.Connection,
    entries: Iterable[Mapping[str, Any]],
) -> int:
    """Bulk mode: append many entries (dicts with the :func:`append` keywords) in one
    transaction, the chain computed in memory. Returns how many were appended."""
    prepared = []
    for item in entries:
        kind, subject, text, actor = _prepare(
            item["kind"], item["subject"], item["details"], item["actor"]
        )
        prepared.append((format_at(item.get("at")), actor, kind, subject, text))
    with write_transaction(conn):
        _insert(conn, prepared)
    return len(prepared)


# --------------------------------------------------------------------------- checkpoints


def checkpoint_payload(seq: int, hash_: str, at: str) -> bytes:
    """What a checkpoint signs: canonical JSON naming the log, the head and the time."""
    return canonical_json(
        {
            "type": "audiences.compliance.audit.checkpoint",
            "v": 1,
            "seq": seq,
            "hash": hash_,
            "at": at,
        }
    ).encode()


def checkpoint(
    conn: sqlite3.Connection,
    private_key: Ed25519PrivateKey,
    key_id: str | None = None,
    *,
    actor: str,
    at: datetime | None = None,
) -> Checkpoint:
    """Sign the current head with an approver's Ed25519 key, store the signature in
    ``audit_checkpoints`` and append a ``checkpoint`` entry that carries it too."""

    own_id = fingerprint(private_key.public_key())
    if key_id is not None and key_id != own_id:
        raise UsageError(
            f"key id {key_id} does not match the private key (its id is {own_id})",
            "pass the key id of the key you sign with, or omit it",
        )
    stamp = format_at(at)
    with write_transaction(conn):
        seq, digest = head(conn)
        if seq == 0:
            raise UsageError(
                "the audit log is empty; there is nothing to checkpoint",
                "run a build or an approval first",
            )
        signature = base64.b64encode(
            private_key.sign(checkpoint_payload(seq, digest, stamp))
        ).decode()
        conn.execute(
            "INSERT INTO audit_checkpoints(seq, hash, key_id, signature, at) VALUES (?,?,?,?,?)",
            (seq, digest, own_id, signature, stamp),
        )
        details = {"seq": seq, "hash": digest, "key_id": own_id, "signature": signature}
        _insert(conn, [(stamp, actor, CHECKPOINT_KIND, "audit", canonical_json(details))])
    return Checkpoint(seq, digest, own_id, signature, stamp)


def parse_anchor(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` (as printed in ``sync --json`` summaries) → ``(seq, hash)``."""
    seq_text, sep, digest = text.strip().partition(":")
    digest = digest.lower()
    if (
        not sep
        or not seq_text.isdigit()
        or int(seq_text) < 1
        or len(digest) != 64
        or any(c not in "0123456789abcdef" for c in digest)
    ):
        raise UsageError(
            f"anchor {text[:80]!r} is not SEQ:HASH",
            "pass the audit head from a sync --json summary, e.g. --anchor 1042:9f86d0…(64 hex)",
        )
    return int(seq_text), digest


# --------------------------------------------------------------------------- verifying


@dataclass(slots=True)
class _Expectation:
    """A (seq → hash) claim from outside the chain: a signed checkpoint or an anchor."""

    seq: int
    hash: str
    source: str


def _load_checkpoints(
    conn: sqlite3.Connection,
    public_keys: Mapping[str, Any] | None,
    trusted_at: Callable[[int, str], bool] | None = None,
) -> tuple[list[_Expectation], list[str], set[tuple[int, str, str, str, str]]]:
    """Check every stored checkpoint's signature (and, with ``trusted_at``, that its key
    was trusted at its entry); return hash claims and problems."""
    from cryptography.exceptions import InvalidSignature

    index = trusted_key_index(public_keys or {})
    claims: list[_Expectation] = []
    problems: list[str] = []
    rows = set()
    for seq, digest, kid, signature, at in conn.execute(
        "SELECT seq, hash, key_id, signature, at FROM audit_checkpoints ORDER BY id"
    ):
        rows.add((int(seq), str(digest), str(kid), str(signature), str(at)))
        trusted = index.get(kid)
        if trusted is None:
            problems.append(
                f"checkpoint at seq {seq} is signed by key {kid}, which is not a trusted "
                "approver key"
            )
            continue
        try:
            trusted[1].verify(base64.b64decode(signature), checkpoint_payload(seq, digest, at))
        except (InvalidSignature, ValueError):
            problems.append(f"checkpoint at seq {seq} has a signature that does not verify")
            continue
        if trusted_at is not None and not trusted_at(int(seq), str(kid)):
            problems.append(
                f"checkpoint at seq {seq} is signed by key {kid}, which was not a trusted "
                "approver key at that entry"
            )
            continue
        claims.append(_Expectation(int(seq), str(digest), f"checkpoint signed by {trusted[0]}"))
    return claims, problems, rows


def _check_checkpoint_entry(
    details: str, seq: int, prev_hash: str, stored: set[tuple[int, str, str, str, str]], at: str
) -> str | None:
    """A ``checkpoint`` entry must sign the entry before it and match a stored checkpoint."""
    try:
        data = json.loads(details)
        claim = (int(data["seq"]), str(data["hash"]), str(data["key_id"]), str(data["signature"]))
    except (ValueError, KeyError, TypeError):
        return f"checkpoint entry {seq} has malformed details"
    if claim[0] != seq - 1 or claim[1] != prev_hash:
        return f"checkpoint entry {seq} does not sign the entry before it"
    if (*claim, at) not in stored:
        return (
            f"checkpoint entry {seq} has no matching row in audit_checkpoints "
            "(the signed checkpoint was deleted or altered)"
        )
    return None


def verify(
    conn: sqlite3.Connection,
    *,
    anchors: Sequence[tuple[int, str]] = (),
    public_keys: Mapping[str, Any] | None = None,
    trusted_at: Callable[[int, str], bool] | None = None,
) -> VerifyResult:
    """Recompute every hash and link, check seq runs 1..n, check every signed checkpoint
    (``public_keys``: trusted approvers as in ``[approvers] keys``, name → PEM/base64) and
    every external anchor ``(seq, hash)``. Stops at the first bad entry and names it.

    A checkpoint signed by a key not in ``public_keys`` (or with no keys given) makes the
    result not ok: pass the project's approver keys whenever the log has checkpoints.
    ``trusted_at(seq, key_id)``: was the key trusted at that entry (keys rotated since
    still verify the checkpoints they signed while trusted)."""
    own_transaction = not conn.in_transaction
    if own_transaction:
        conn.execute("BEGIN")  # one consistent snapshot (WAL readers do not block writers)
    try:
        return _verify(conn, anchors, public_keys, trusted_at)
    finally:
        if own_transaction:
            conn.execute("COMMIT")


def _verify(
    conn: sqlite3.Connection,
    anchors: Sequence[tuple[int, str]],
    public_keys: Mapping[str, Any] | None,
    trusted_at: Callable[[int, str], bool] | None = None,
) -> VerifyResult:
    claims, problems, stored = _load_checkpoints(conn, public_keys, trusted_at)
    for seq, digest in anchors:
        claims.append(_Expectation(int(seq), str(digest).lower(), "external anchor"))
    expected: dict[int, list[_Expectation]] = {}
    for claim in claims:
        expected.setdefault(claim.seq, []).append(claim)
    walk = _walk_chain(conn, expected, stored)
    n = walk.entries
    head = (n, walk.prev)
    failure = walk.failure or _cut_short(n, expected)
    if failure is not None:
        seq, reason = failure
        return VerifyResult(False, n, seq, reason, head, problems=[*problems, reason])
    if walk.checkpoints != len(stored):
        problems.append(
            f"audit_checkpoints holds {len(stored)} checkpoints but the chain records "
            f"{walk.checkpoints}"
        )
    verified = len([c for c in claims if c.source != "external anchor"])
    problems.extend(cross_check(conn))
    newest = max((row[4] for row in stored), default=None)
    if problems:
        return VerifyResult(
            False, n, None, problems[0], head, verified, len(anchors), problems, newest
        )
    return VerifyResult(True, n, None, None, head, verified, len(anchors), [], newest)


@dataclass(frozen=True, slots=True)
class _Walk:
    """How far the chain verified: ``entries`` good entries, the last one hashing to
    ``prev``, ``checkpoints`` of them checkpoint entries; ``failure`` is the first bad
    entry's ``(seq, reason)``, None if every entry was good."""

    entries: int
    prev: str
    checkpoints: int
    failure: tuple[int, str] | None = None


def _walk_chain(
    conn: sqlite3.Connection,
    expected: dict[int, list[_Expectation]],
    stored: set[tuple[int, str, str, str, str]],
) -> _Walk:
    """Check each entry's seq, link, hash, the claims on it (popped from ``expected``) and,
    for a checkpoint entry, its stored checkpoint, in seq order; stop at the first bad one."""
    sha256 = hashlib.sha256
    enc = encode_basestring
    record = _RECORD_HEX_PREV
    cursor = conn.cursor()
    cursor.row_factory = None
    cursor.arraysize = 4096
    cursor.execute(
        "SELECT seq, at, actor, kind, subject, details, prev_hash, hash FROM audit ORDER BY seq"
    )
    n = 0
    prev = GENESIS_HASH
    checkpoints = 0
    row: tuple[Any, ...] = ()
    try:
        for row in cursor:
            seq, at, actor, kind, subject, details, prev_hash, digest = row
            if seq != n + 1:
                return _Walk(n, prev, checkpoints, (n + 1, _gap_reason(n + 1, seq)))
            if prev_hash != prev:
                return _Walk(n, prev, checkpoints, _link_failure(row, n, prev))
            text = record % (enc(actor), enc(at), details, enc(kind), prev, seq, enc(subject))
            if sha256(text.encode()).hexdigest() != digest:
                reason = f"entry {seq} does not match its hash (its contents were edited)"
                return _Walk(n, prev, checkpoints, (seq, reason))
            if seq in expected:
                for claim in expected.pop(seq):
                    if claim.hash != digest:
                        reason = (
                            f"entry {seq} differs from the {claim.source} "
                            f"(the chain was rewritten at or before entry {seq})"
                        )
                        return _Walk(n, prev, checkpoints, (seq, reason))
            if kind == CHECKPOINT_KIND:
                checkpoints += 1
                problem = _check_checkpoint_entry(details, seq, prev_hash, stored, at)
                if problem:
                    return _Walk(n, prev, checkpoints, (seq, problem))
            prev = digest
            n += 1
    except (TypeError, ValueError):
        reason = f"entry {n + 1} is malformed ({_describe(row)})"
        return _Walk(n, prev, checkpoints, (n + 1, reason))
    finally:
        cursor.close()
    return _Walk(n, prev, checkpoints)


def _cut_short(n: int, expected: dict[int, list[_Expectation]]) -> tuple[int, str] | None:
    """A claim on an entry past the log's last entry ``n``: entries were cut off the end."""
    if not expected:
        return None
    missing = min(expected)
    reason = (
        f"the log ends at entry {n} but the {expected[missing][0].source} covers entry "
        f"{missing} (entries were deleted from the end)"
    )
    return n + 1, reason


def _describe(row: tuple[Any, ...]) -> str:
    return "unexpected column types" if row else "unreadable row"


def _gap_reason(expected: int, seq: Any) -> str:
    if isinstance(seq, int) and seq > expected:
        if seq == expected + 1:
            return f"entry {expected} is missing (the log jumps to {seq})"
        return f"entries {expected}..{seq - 1} are missing (the log jumps to {seq})"
    return f"entry {expected} expected but found seq {seq!r} (an entry was inserted)"


def _link_failure(row: tuple[Any, ...], n: int, prev: str) -> tuple[int, str]:
    """Entry seq does not link to seq-1. If seq is intact under its own prev_hash, then
    entry seq-1 is the one that was rewritten (and re-hashed); otherwise seq itself."""
    seq, at, actor, kind, subject, details, prev_hash, digest = row
    try:
        intact = entry_hash(seq, at, actor, kind, subject, details, prev_hash) == digest
    except (TypeError, ValueError):
        intact = False
    if intact and n >= 1:
        return (
            n,
            f"entry {n} was rewritten: entry {seq} links to a different hash "
            "(contents edited and re-hashed, or entries reordered)",
        )
    return seq, f"entry {seq} does not link to entry {n} (edited, inserted or reordered)"


# --------------------------------------------------------------------------- export


def export(conn: sqlite3.Connection, out_path: Path | str) -> int:
    """Write the log as JSON lines for a SIEM, atomically (temp + rename, mode 0600).

    Each line is the entry's hashed canonical record plus its ``hash``, so a SIEM can
    re-verify: drop ``hash``, re-serialize canonically, sha256. Returns the entry count.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            own_transaction = not conn.in_transaction
            if own_transaction:
                conn.execute("BEGIN")
            try:
                cursor = conn.cursor()
                cursor.row_factory = None
                cursor.execute(
                    "SELECT seq, at, actor, kind, subject, details, prev_hash, hash "
                    "FROM audit ORDER BY seq"
                )
                lines = []
                for seq, at, actor, kind, subject, details, prev_hash, digest in cursor:
                    text = record_text(seq, at, actor, kind, subject, details, prev_hash)
                    lines.append(f'{text[:-1]},"hash":{encode_basestring(digest)}}}\n')
                    if len(lines) >= 8192:
                        fh.writelines(lines)
                        count += len(lines)
                        lines.clear()
                fh.writelines(lines)
                count += len(lines)
                cursor.close()
            finally:
                if own_transaction:
                    conn.execute("COMMIT")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o600)
        os.replace(tmp_name, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return count


def read_entries(conn: sqlite3.Connection, *, since: int = 0) -> list[AuditEntry]:
    """Entries with ``seq > since`` in order (for ``audiences history`` and tests)."""
    try:
        rows = conn.execute(
            "SELECT seq, at, actor, kind, subject, details, prev_hash, hash FROM audit "
            "WHERE seq > ? ORDER BY seq",
            (since,),
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise StateError(f"cannot read the audit log ({exc})", "check the state DB") from None
    return [AuditEntry(*tuple(r)) for r in rows]


# --------------------------------------------------------------------------- cross-check


def _covered_after(conn: sqlite3.Connection, key: str) -> int | None:
    """Rowid after which a table's rows must all have audit entries (None: not tracked)."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    except sqlite3.OperationalError:  # a log without the state tables (tests, exports)
        return None
    return None if row is None else int(row[0])


def _batch_entries(conn: sqlite3.Connection) -> dict[tuple[str, int], tuple[Any, ...]]:
    entries: dict[tuple[str, int], tuple[Any, ...]] = {}
    for (details,) in conn.execute("SELECT details FROM audit WHERE kind='sync_batch'"):
        d = json.loads(details)
        if isinstance(d, dict) and "digest" in d and "sync_id" in d and "seq" in d:
            key = (str(d["sync_id"]), int(d["seq"]))
            entries[key] = tuple(d.get(k) for k in ("op", "size", "received", "invalid"))
    return entries


def cross_check(conn: sqlite3.Connection) -> list[str]:
    """Compare the sync tables with the chain: every confirmed batch (and every audience
    link) recorded since the audit covered them must match its entry, and every entry
    its row. An edit, insertion or deletion in ``batches`` or ``audiences_remote`` that
    the chain does not record is named."""
    after = _covered_after(conn, "audit_covers_batches_after")
    if after is None:
        return []
    entries = _batch_entries(conn)
    problems = []
    seen = set()
    for rowid, sync_id, seq, op, size, received, invalid in conn.execute(
        "SELECT rowid, sync_id, seq, op, size, received, invalid FROM batches ORDER BY rowid"
    ):
        key = (str(sync_id), int(seq))
        seen.add(key)
        entry = entries.get(key)
        if entry is None:
            if rowid > after:
                problems.append(
                    f"batches row {sync_id}#{seq} has no audit entry (added outside audiences)"
                )
        elif entry != (op, size, received, invalid):
            problems.append(f"batches row {sync_id}#{seq} differs from its audit entry (edited)")
    for sync_id, seq in sorted(set(entries) - seen):
        problems.append(f"batch {sync_id}#{seq} is in the audit log but not in batches (deleted)")
    return problems + _cross_check_audiences(conn)


def _cross_check_audiences(conn: sqlite3.Connection) -> list[str]:
    after = _covered_after(conn, "audit_covers_audiences_after")
    if after is None:
        return []
    linked: dict[str, str] = {}
    for subject, details in conn.execute(
        "SELECT subject, details FROM audit WHERE kind='audience' ORDER BY seq"
    ):
        linked[str(subject)] = str(json.loads(details).get("remote_id"))
    problems = []
    for rowid, segment, destination, remote_id in conn.execute(
        "SELECT rowid, segment, destination, remote_id FROM audiences_remote"
    ):
        subject = f"{segment}->{destination}"
        expected = linked.get(subject)
        if (expected is None and rowid > after) or (expected not in (None, str(remote_id))):
            problems.append(
                f"audiences_remote row {subject} (audience {remote_id}) does not match the "
                "audit log (edited outside audiences)"
            )
    return problems
