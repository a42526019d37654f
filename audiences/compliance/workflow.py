"""Project-level approval workflow: binds `audiences approve/revoke` and the build/sync
checks to the project's segments, effective policy and trusted approver keys.

An approval covers one exact segment digest, the *effective policy* (the resolved pack
and every part of ``audiences.toml`` that decides who is released or where: see
:func:`effective_policy`) and the destination list, signed with a trusted approver key.
The trusted keys come from the audit chain, not from the file: the keys listed in
``[approvers] keys`` at the first approval are trusted on first use; later keys are
added or removed only by an entry signed with an already trusted key (``audiences
approvers add/remove``). See docs/compliance-workflow.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import yaml

from audiences.compliance import approvals, audit
from audiences.compliance.keys import key_id, load_private_key, load_public_key
from audiences.core.config import ProjectConfig
from audiences.core.errors import ApprovalError, ConfigError

TRUST_KIND = "approver_trust"  # the keys of [approvers] keys at first use (TOFU)
ADD_KIND = "approver_add"
REMOVE_KIND = "approver_remove"


def effective_policy(config: ProjectConfig, segment: Any, pack: Any) -> dict[str, Any]:
    """Everything outside the segment file that decides who is released or where."""
    events = config.sources.events
    return {
        "pack": {
            "name": pack.name,
            "digest": pack.digest,
            "require_approval": _pack_requires(pack),
        },
        # what the gate counts as sensitive: names `init --from` left unclassified count
        # (declaring one not sensitive later changes this, and needs a new approval)
        "sensitivity": {
            "columns.sensitive": sorted([*config.columns.sensitive, *config.columns.unclassified]),
            "columns.quasi_identifiers": sorted(config.columns.quasi_identifiers),
            "events.sensitive_types": sorted([*events.sensitive_types, *events.unclassified_types])
            if events
            else [],
            "events.sensitive_columns": sorted(
                [*events.sensitive_columns, *events.unclassified_columns]
            )
            if events
            else [],
        },
        "consent": config.consent.model_dump(mode="json"),
        "identity": config.identity.model_dump(mode="json"),
        "suppression": [s.model_dump(mode="json") for s in config.policy.suppression],
        # which jurisdiction packs apply to whom (an override column could move everyone)
        "jurisdiction_column": config.policy.jurisdiction_column,
        "destinations": {name: _destination(config, name) for name in sorted(segment.destinations)},
        "approvers": {"require_approval": config.approvers.require_approval},
        # where the people come from and how their values are read: another file (one the
        # marketer wrote, say, with every consent granted), a column declared another
        # type, a text column compared case-insensitively, another event-type column
        "sources": {
            name: _source(source)
            for name, source in (("contacts", config.sources.contacts), ("events", events))
            if source is not None
        },
    }


# bound already under "sensitivity" (what the gate counts as sensitive)
_SENSITIVITY = frozenset(
    {
        "sensitive_types",
        "sensitive_columns",
        "not_sensitive_types",
        "not_sensitive_columns",
        "unclassified_types",
        "unclassified_columns",
    }
)


def _source(source: Any) -> dict[str, Any]:
    """A source's settings as written (its location, format, declared types, compared
    case-insensitively, id and event columns): the data it holds is not bound — the
    export at that location changes every night."""
    return dict(source.model_dump(mode="json", exclude=_SENSITIVITY))


# Timing only. The endpoint and the CA file are bound: they decide which server receives
# the hashed members, so pointing an approved upload at another server (or trusting another
# CA for it) needs a new approval (docs/compliance-workflow.md).
_TRANSPORT = frozenset({"poll_seconds", "timeout_seconds"})


def _destination(config: ProjectConfig, name: str) -> dict[str, Any]:
    """A destination's platform, account, endpoint, layout and release settings (no timing,
    no credential variable names), and the basis its transfers are judged on: ``sale``
    when it or another destination of its account says so (so declaring ``share``, or
    removing the sale destination that shares its account, needs a new approval); a
    share basis is left out, as before ``basis`` existed."""
    from policies.gate import sale_basis

    spec = config.destination(name).model_dump(mode="json")
    spec.pop("basis", None)
    kept = {k: v for k, v in spec.items() if k not in _TRANSPORT and not k.endswith("_env")}
    return kept | ({"basis": "sale"} if sale_basis(config, name) else {})


def definition_text(segment: Any, config: ProjectConfig | None = None, pack: Any = None) -> str:
    """The segment's canonical definition, with the effective policy when given, as YAML
    lines (shown to the officer as a diff when anything in it changes)."""
    doc: Any = json.loads(segment.canonical())
    if config is not None and pack is not None:
        doc = {"segment": doc, "effective_policy": effective_policy(config, segment, pack)}
    return str(yaml.safe_dump(doc, sort_keys=True))


def policy_digest(config: ProjectConfig, segment: Any, pack: Any, trusted: dict[str, str]) -> str:
    """The digest an approval binds: the effective policy and the trusted approver set."""
    doc = {"policy": effective_policy(config, segment, pack), "approvers": sorted(trusted.items())}
    return "sha256:" + hashlib.sha256(audit.canonical_json(doc).encode()).hexdigest()


def _pack_requires(pack: Any) -> bool:
    return bool(getattr(pack, "require_approval", False))


def approval_required(config: ProjectConfig, pack: Any) -> bool:
    """The pack's requirement, which ``[approvers] require_approval`` may raise, never lower
    (``false`` under a pack that requires approval is an error: docs/compliance-workflow.md)."""
    if config.approvers.require_approval is False and _pack_requires(pack):
        raise ConfigError(
            f"[approvers] require_approval = false cannot lower the requirement of policy "
            f"pack {pack.name!r}",
            "remove require_approval from audiences.toml (it can only raise the requirement)",
            where="audiences.toml",
        )
    return bool(config.approvers.require_approval) or _pack_requires(pack)


def approval_binds(
    conn: sqlite3.Connection, config: ProjectConfig, segment: Any, pack: Any
) -> bool:
    """Must the segment's approval be checked? When required, and also whenever the segment
    was ever approved: swapping to a pack that requires no approval changes the effective
    policy the officer approved, so it needs a new approval too."""
    if approval_required(config, pack):
        return True
    return approvals.latest_approval(conn, segment.name) is not None


def ad_destinations(config: ProjectConfig, segment: Any) -> list[str]:
    """The destinations an approval must cover: every one, files included (a file of hashed
    identifiers is an upload waiting to happen)."""
    return list(segment.destinations)


def _add_hint(name: str, public: str = "BASE64") -> str:
    return (
        f"a trusted approver adds it: `audiences approvers add {name} --public {public} "
        "--by EXISTING --key EXISTING.key` (editing audiences.toml never adds an approver)"
    )


def _trust_entries(conn: sqlite3.Connection) -> list[audit.AuditEntry]:
    rows = conn.execute(
        "SELECT seq, at, actor, kind, subject, details, prev_hash, hash FROM audit "
        "WHERE kind IN (?, ?, ?) ORDER BY seq",
        (TRUST_KIND, ADD_KIND, REMOVE_KIND),
    ).fetchall()
    return [audit.AuditEntry(*tuple(row)) for row in rows]


def change_payload(kind: str, name: str, public: str, by: str, by_key: str) -> bytes:
    """The canonical JSON a trusted approver signs to add or remove an approver key."""
    return audit.canonical_json(
        {"type": f"audiences.{kind}", "name": name, "public": public, "by": by, "by_key": by_key}
    ).encode()


def trusted_approvers(conn: sqlite3.Connection) -> dict[str, dict[str, str]]:
    """``{name: {"public", "key_id", "since"}}`` from the audit chain: the trust-on-first-use
    keys, plus signed additions, minus signed removals. Empty before the first approval."""
    trusted: dict[str, dict[str, str]] = {}
    for entry in _trust_entries(conn):
        details = entry.details_dict()
        if entry.kind == TRUST_KIND:
            for name, public in details["keys"].items():
                trusted[name] = {"public": public, "key_id": _kid(public), "since": entry.at}
            continue
        signer = trusted.get(details.get("by", ""))
        payload = change_payload(
            entry.kind, entry.subject, details["public"], details["by"], details["by_key"]
        )
        if signer is None or signer["key_id"] != details["by_key"]:
            raise _untrusted_chain(entry, "its signer is not a trusted approver")
        try:
            load_public_key(signer["public"]).verify(
                base64.b64decode(details["signature"]), payload
            )
        except Exception:
            raise _untrusted_chain(entry, "its signature does not verify") from None
        if entry.kind == ADD_KIND:
            trusted[entry.subject] = {
                "public": details["public"],
                "key_id": _kid(details["public"]),
                "since": entry.at,
            }
        else:
            trusted.pop(entry.subject, None)
    return trusted


def _kid(public: str) -> str:
    return key_id(load_public_key(public))


def _untrusted_chain(entry: audit.AuditEntry, why: str) -> ApprovalError:
    return ApprovalError(
        f"approver change in audit entry {entry.seq} ({entry.kind} {entry.subject}): {why}",
        "the state database was altered; run `audiences audit verify`",
    )


def _trusted(conn: sqlite3.Connection, config: ProjectConfig, *, record: bool) -> dict[str, str]:
    """``{name: public key}`` an approval may be signed with. Every key in ``[approvers]
    keys`` must be trusted by the audit chain; before the first approval the file's keys
    are the trust-on-first-use set (recorded when ``record``)."""
    listed = dict(config.approvers.keys)
    trusted = trusted_approvers(conn)
    if not trusted:
        if not listed:
            raise ConfigError(
                "no approver keys in audiences.toml",
                "a compliance officer runs `audiences keygen` and adds the public key under "
                "[approvers] keys",
            )
        if record:
            audit.append(
                conn, kind=TRUST_KIND, subject="approvers", details={"keys": listed},
                actor="trust-on-first-use",
            )  # fmt: skip
        return listed
    for name, public in sorted(listed.items()):
        known = trusted.get(name)
        if known is None or known["key_id"] != _kid(public):
            raise ApprovalError(
                f"approver key {name!r} in audiences.toml is not a trusted approver key",
                _add_hint(name),
                where="audiences.toml [approvers] keys",
            )
    return {name: t["public"] for name, t in trusted.items()}


def check(conn: sqlite3.Connection, config: ProjectConfig, segment: Any, pack: Any) -> Any:
    """The segment's valid approval, or ApprovalError (exit 3) saying what changed."""
    if not config.approvers.keys and not trusted_approvers(conn):
        raise ApprovalError(
            f"segment {segment.name!r} needs an approval and no approver keys are configured",
            "a compliance officer runs `audiences keygen`, adds the public key under "
            "[approvers] keys, then `audiences approve`",
        )
    trusted = _trusted(conn, config, record=False)
    return approvals.check_approval(conn, **_binding(config, segment, pack, trusted))


def approve(
    conn: sqlite3.Connection,
    config: ProjectConfig,
    segment: Any,
    pack: Any,
    *,
    by: str,
    key_path: Path,
    note: str | None = None,
) -> Any:
    approval_required(config, pack)  # refuses a lowered requirement before signing
    with audit.write_transaction(conn):
        trusted = _trusted(conn, config, record=True)
    binding = _binding(config, segment, pack, trusted)
    return approvals.approve(conn, **binding, approver=by, private_key_path=key_path, note=note)


def _binding(
    config: ProjectConfig, segment: Any, pack: Any, trusted: dict[str, str]
) -> dict[str, Any]:
    """What an approval is bound to: the segment, the effective policy, its destinations
    and the approver keys trusted now (the same for signing and for checking)."""
    return {
        "segment_name": segment.name,
        "segment_digest": segment.digest,
        "policy_digest": policy_digest(config, segment, pack, trusted),
        "destinations": list(segment.destinations),
        "definition_text": definition_text(segment, config, pack),
        "trusted_keys": trusted,
    }


def change_approver(
    conn: sqlite3.Connection,
    config: ProjectConfig,
    kind: str,
    name: str,
    *,
    public: str | None,
    by: str,
    key_path: Path,
) -> dict[str, Any]:
    """``audiences approvers add/remove``: an audit entry signed by a trusted approver."""
    with audit.write_transaction(conn):
        trusted = trusted_approvers(conn)
        if not trusted:
            _trusted(conn, config, record=True)
            trusted = trusted_approvers(conn)
        signer = trusted.get(by)
        private = load_private_key(key_path)
        if signer is None or signer["key_id"] != key_id(private.public_key()):
            raise ApprovalError(
                f"{by!r} with key {key_path} is not a trusted approver",
                "sign with the key of an approver listed by `audiences approvers list`",
            )
        if kind == REMOVE_KIND:
            if name not in trusted:
                raise ApprovalError(
                    f"{name!r} is not a trusted approver", "see `audiences approvers list`"
                )
            public = trusted[name]["public"]
        assert public is not None
        public = base64.b64encode(load_public_key(public, name=name).public_bytes_raw()).decode()
        payload = change_payload(kind, name, public, by, signer["key_id"])
        signature = base64.b64encode(private.sign(payload)).decode()
        details = {"public": public, "by": by, "by_key": signer["key_id"], "signature": signature}
        audit.append(conn, kind=kind, subject=name, details=details, actor=by)
    return {"approver": name, "key_id": _kid(public), "change": kind, "by": by}
