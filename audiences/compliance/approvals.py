"""Signed approvals: a compliance officer's Ed25519 signature bound to digests.

An approval says: *this* segment definition (segment digest), under *this* policy pack
(policy digest), may go to *these* destinations — signed with the private key of an
approver whose public key is listed in ``audiences.toml`` (``[approvers] keys``).
Anything else (a self-made key, an edited database row, a changed definition, pack or
destination list) makes :func:`check_approval` refuse with an :class:`ApprovalError`
(exit 3) that says what changed and what to do.

The approvals table is a convenience copy: each approval and revocation is also an
entry in the hash-chained audit log, and :func:`check_approval` checks the two agree, so
un-revoking a segment with an SQL UPDATE or deleting a newer approval row is refused.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey,
)

from audiences.compliance import audit
from audiences.compliance.keys import key_id, load_private_key, trusted_key_index
from audiences.core.errors import ApprovalError
from audiences.core.records import pick

APPROVAL_KIND = "approval"
REVOCATION_KIND = "revocation"
_DIFF_LINES = 40
_DIFF_WIDTH = 160


@dataclasses.dataclass(frozen=True, slots=True)
class Approval:
    id: int
    segment: str
    segment_digest: str
    policy_digest: str
    destinations: tuple[str, ...]
    approver: str
    key_id: str
    signature: str
    payload: str
    note: str | None
    definition: str
    at: str
    revoked_at: str | None = None
    revoked_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = pick(self, "id segment segment_digest policy_digest destinations approver")
        out["destinations"] = list(self.destinations)
        return out | pick(self, "key_id note at revoked_at revoked_by")


# --------------------------------------------------------------------------- payload


def _destinations(destinations: Iterable[str]) -> list[str]:
    if isinstance(destinations, str):
        destinations = [destinations]
    return sorted(set(destinations))


def approval_payload(
    segment_name: str,
    segment_digest: str,
    policy_digest: str,
    destinations: Iterable[str],
    *,
    approver: str,
    key_id: str,
    at: str,
    definition_sha256: str,
) -> bytes:
    """The canonical JSON an approver signs (sorted keys and destinations, UTF-8)."""
    return audit.canonical_json(
        {
            "type": "audiences.approval",
            "v": 1,
            "segment": segment_name,
            "segment_digest": segment_digest,
            "policy_digest": policy_digest,
            "destinations": _destinations(destinations),
            "approver": approver,
            "key_id": key_id,
            "at": at,
            "definition_sha256": definition_sha256,
        }
    ).encode()


def instant(stamp: str) -> datetime:
    """An ISO-8601 UTC stamp of the state DB (``…Z``) as an aware datetime."""
    at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def approve_hint(segment: str) -> str:
    return (
        f"ask a compliance officer to review it and run "
        f"`audiences approve {segment} --by NAME --key PATH`"
    )


# --------------------------------------------------------------------------- approve / revoke


def approve(
    conn: sqlite3.Connection,
    *,
    segment_name: str,
    segment_digest: str,
    policy_digest: str,
    destinations: Iterable[str],
    definition_text: str,
    approver: str,
    private_key_path: Path | str,
    trusted_keys: Mapping[str, str | bytes | Ed25519PublicKey],
    note: str | None = None,
    passphrase: bytes | None = None,
    at: datetime | None = None,
    checkpoint: bool = True,
) -> Approval:
    """Sign and record an approval. Refused unless the signing key is the key listed for
    ``approver`` in ``[approvers] keys`` (a self-made key approves nothing).

    With ``checkpoint`` (default) the approver's key also signs the audit head right
    after the approval entry, so every approval anchors the log (see :func:`audit.checkpoint`).
    """
    private = load_private_key(private_key_path, passphrase=passphrase)
    kid = key_id(private.public_key())
    check_approver_key(kid, private_key_path, approver, trusted_keys)
    dests = _destinations(destinations)
    stamp = audit.format_at(at)
    payload = approval_payload(
        segment_name,
        segment_digest,
        policy_digest,
        dests,
        approver=approver,
        key_id=kid,
        at=stamp,
        definition_sha256=_sha256(definition_text),
    )
    signature = base64.b64encode(private.sign(payload)).decode()
    unsaved = Approval(
        0,  # the row id, known once inserted
        segment_name,
        segment_digest,
        policy_digest,
        tuple(dests),
        approver,
        kid,
        signature,
        payload.decode(),
        note,
        definition_text,
        stamp,
    )
    with audit.write_transaction(conn):
        approval = _record_approval(conn, unsaved, at)
        if checkpoint:
            audit.checkpoint(conn, private, kid, actor=approver, at=at)
    return approval


def check_approver_key(
    kid: str,
    private_key_path: Path | str,
    approver: str,
    trusted_keys: Mapping[str, str | bytes | Ed25519PublicKey],
) -> None:
    """Refuse a key that is not listed in ``[approvers] keys`` or is listed for someone else."""
    index = trusted_key_index(trusted_keys)
    if kid not in index:
        raise ApprovalError(
            f"key {kid} ({private_key_path}) is not a trusted approver key",
            "only trusted approver keys may approve; a trusted approver adds a key with "
            "`audiences approvers add NAME --public BASE64 --by EXISTING --key EXISTING.key`",
        )
    owner = index[kid][0]
    if owner != approver:
        raise ApprovalError(
            f"key {kid} belongs to approver {owner!r}, not {approver!r}",
            f"approve with --by {owner} or with {approver}'s own key",
        )


def _record_approval(conn: sqlite3.Connection, unsaved: Approval, at: datetime | None) -> Approval:
    """Insert the signed approval and append its audit entry; return it with its row id."""
    dests = list(unsaved.destinations)
    cur = conn.execute(
        "INSERT INTO approvals(segment, segment_digest, policy_digest, destinations, "
        "approver, key_id, signature, payload, note, definition, at) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            unsaved.segment,
            unsaved.segment_digest,
            unsaved.policy_digest,
            audit.canonical_json(dests),
            unsaved.approver,
            unsaved.key_id,
            unsaved.signature,
            unsaved.payload,
            unsaved.note,
            unsaved.definition,
            unsaved.at,
        ),
    )
    approval_id = int(cur.lastrowid or 0)
    audit.append(
        conn,
        kind=APPROVAL_KIND,
        subject=unsaved.segment,
        details={
            "approval_id": approval_id,
            "segment_digest": unsaved.segment_digest,
            "policy_digest": unsaved.policy_digest,
            "destinations": dests,
            "key_id": unsaved.key_id,
            "signature": unsaved.signature,
        },
        actor=unsaved.approver,
        at=at,
    )
    return dataclasses.replace(unsaved, id=approval_id)


_COLUMNS = (
    "id, segment, segment_digest, policy_digest, destinations, approver, key_id, "
    "signature, payload, note, definition, at, revoked_at, revoked_by"
)


def _latest(conn: sqlite3.Connection, segment_name: str) -> Approval | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM approvals WHERE segment = ? ORDER BY id DESC LIMIT 1",
        (segment_name,),
    ).fetchone()
    if row is None:
        return None
    values = list(tuple(row))
    try:
        values[4] = tuple(json.loads(values[4]))
    except (ValueError, TypeError):
        values[4] = ("<unreadable>",)
    return Approval(*values)


def latest_approval(conn: sqlite3.Connection, segment_name: str) -> Approval | None:
    """The segment's most recent approval row (revoked or not), unchecked: for ``status``."""
    return _latest(conn, segment_name)


def revoke(
    conn: sqlite3.Connection, segment_name: str, by: str, *, at: datetime | None = None
) -> Approval:
    """Revoke the segment's current approval. Anyone may revoke (it only ever blocks)."""
    stamp = audit.format_at(at)
    with audit.write_transaction(conn):
        current = _latest(conn, segment_name)
        if current is None or current.revoked_at is not None:
            raise ApprovalError(
                f"segment {segment_name!r} has no approval to revoke"
                + ("" if current is None else f" (already revoked by {current.revoked_by})"),
                "check the segment name with `audiences status`",
            )
        conn.execute(
            "UPDATE approvals SET revoked_at = ?, revoked_by = ? WHERE id = ?",
            (stamp, by, current.id),
        )
        audit.append(
            conn,
            kind=REVOCATION_KIND,
            subject=segment_name,
            details={"approval_id": current.id, "segment_digest": current.segment_digest},
            actor=by,
            at=at,
        )
    return dataclasses.replace(current, revoked_at=stamp, revoked_by=by)


# --------------------------------------------------------------------------- check


def _last_audit_decision(conn: sqlite3.Connection, segment_name: str) -> audit.AuditEntry | None:
    row = conn.execute(
        "SELECT seq, at, actor, kind, subject, details, prev_hash, hash FROM audit "
        "WHERE kind IN (?, ?) AND subject = ? ORDER BY seq DESC LIMIT 1",
        (APPROVAL_KIND, REVOCATION_KIND, segment_name),
    ).fetchone()
    return None if row is None else audit.AuditEntry(*tuple(row))


def _tampered(segment: str, what: str) -> ApprovalError:
    return ApprovalError(
        f"approval of segment {segment!r} does not verify: {what}",
        "the state database was altered; run `audiences audit verify`, then "
        + approve_hint(segment),
    )


def _definition_diff(old: str, new: str) -> str:
    lines = list(
        difflib.unified_diff(
            old.splitlines(), new.splitlines(), "approved", "current", lineterm="", n=1
        )
    )
    shown = [
        line if len(line) <= _DIFF_WIDTH else line[: _DIFF_WIDTH - 1] + "…"
        for line in lines[:_DIFF_LINES]
    ]
    if len(lines) > _DIFF_LINES:
        shown.append(f"… ({len(lines) - _DIFF_LINES} more diff lines)")
    return "\n".join(shown)


def check_approval(
    conn: sqlite3.Connection,
    *,
    segment_name: str,
    segment_digest: str,
    policy_digest: str,
    destinations: Iterable[str],
    definition_text: str,
    trusted_keys: Mapping[str, str | bytes | Ed25519PublicKey],
) -> Approval:
    """The segment's valid approval for exactly these digests and destinations, or an
    :class:`ApprovalError` (exit 3) saying why not and what to do."""
    current = _latest(conn, segment_name)
    decision = _last_audit_decision(conn, segment_name)
    if current is None and decision is None:
        raise ApprovalError(f"segment {segment_name!r} is not approved", approve_hint(segment_name))
    if decision is not None and decision.kind == REVOCATION_KIND:
        raise ApprovalError(
            f"the approval of segment {segment_name!r} was revoked by {decision.actor} "
            f"at {decision.at}",
            approve_hint(segment_name),
        )
    if current is None:
        raise _tampered(
            segment_name,
            f"audit entry {decision.seq} records an approval "  # type: ignore[union-attr]
            "that is missing from the approvals table",
        )
    if current.revoked_at is not None:
        raise ApprovalError(
            f"the approval of segment {segment_name!r} was revoked by {current.revoked_by} "
            f"at {current.revoked_at}",
            approve_hint(segment_name),
        )
    _check_signature(current, trusted_keys)
    _check_record(current, decision)
    _check_inputs(current, segment_digest, policy_digest, destinations, definition_text)
    return current


def _check_record(current: Approval, decision: audit.AuditEntry | None) -> None:
    segment = current.segment
    if decision is None:
        raise _tampered(segment, f"approval {current.id} has no audit entry")
    recomputed = audit.entry_hash(
        decision.seq,
        decision.at,
        decision.actor,
        decision.kind,
        decision.subject,
        decision.details,
        decision.prev_hash,
    )
    if recomputed != decision.hash:
        raise _tampered(segment, f"audit entry {decision.seq} does not match its hash")
    try:
        details = decision.details_dict()
    except ValueError:
        details = {}
    if details.get("approval_id") != current.id or details.get("signature") != current.signature:
        raise _tampered(
            segment,
            f"the latest approval in the audit log (entry {decision.seq}) is not "
            f"approval {current.id} in the approvals table",
        )


def _check_signature(
    current: Approval, trusted_keys: Mapping[str, str | bytes | Ed25519PublicKey]
) -> None:
    segment = current.segment
    index = trusted_key_index(trusted_keys)
    trusted = index.get(current.key_id)
    if trusted is None:
        raise ApprovalError(
            f"the approval of segment {segment!r} is signed by key {current.key_id}, which is "
            "not a trusted approver key",
            "if the approver's key was rotated, " + approve_hint(segment),
        )
    try:
        trusted[1].verify(base64.b64decode(current.signature), current.payload.encode())
    except (InvalidSignature, ValueError):
        raise _tampered(segment, "its signature does not match its payload") from None
    try:
        signed = json.loads(current.payload)
    except ValueError:
        raise _tampered(segment, "its payload is not JSON") from None
    columns = {
        "segment": current.segment,
        "segment_digest": current.segment_digest,
        "policy_digest": current.policy_digest,
        "destinations": list(current.destinations),
        "approver": current.approver,
        "key_id": current.key_id,
        "at": current.at,
        "definition_sha256": _sha256(current.definition),
    }
    edited = sorted(name for name, value in columns.items() if signed.get(name) != value)
    if signed.get("type") != "audiences.approval":
        edited.insert(0, "type")
    if edited:
        raise _tampered(
            segment, f"column(s) {', '.join(edited)} differ from what the approver signed"
        )


def _check_inputs(
    current: Approval,
    segment_digest: str,
    policy_digest: str,
    destinations: Iterable[str],
    definition_text: str,
) -> None:
    segment = current.segment
    reasons: list[str] = []
    diff = ""
    if current.segment_digest != segment_digest:
        reasons.append(
            f"the segment definition changed since {current.approver} approved it at "
            f"{current.at} (digest {current.segment_digest[:12]} → {segment_digest[:12]})"
        )
        diff = _definition_diff(current.definition, definition_text)
    if current.policy_digest != policy_digest:
        # the effective policy: the pack and what audiences.toml decides (who, where, by
        # whom approved); its readable part is in the definition text (docs/policy-rules.md)
        reasons.append(
            "the effective policy (policy pack, audiences.toml or trusted approvers) changed "
            f"since approval (digest {current.policy_digest[:19]} → {policy_digest[:19]})"
        )
        if not diff and current.definition != definition_text:
            diff = _definition_diff(current.definition, definition_text)
    wanted = _destinations(destinations)
    if list(current.destinations) != wanted:
        added = sorted(set(wanted) - set(current.destinations))
        removed = sorted(set(current.destinations) - set(wanted))
        parts = [
            f"added {', '.join(added)}" if added else "",
            f"removed {', '.join(removed)}" if removed else "",
        ]
        reasons.append(
            "the destinations changed since approval (" + "; ".join(p for p in parts if p) + ")"
        )
    if reasons:
        what = f"segment {segment!r} is not approved as it stands: " + "; ".join(reasons)
        if diff:
            what += "\n" + diff + "\n"
        error = ApprovalError(what, approve_hint(segment))
        error.diff = diff  # type: ignore[attr-defined]
        raise error
