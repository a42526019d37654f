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
import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from audiences.compliance import approvals, audit, custody
from audiences.compliance.custody import (
    ADD_KIND,
    CHECKPOINT_ADD_KIND,
    CHECKPOINT_REMOVE_KIND,
    REMOVE_KIND,
    TRUST_KIND,
    TRUST_KINDS,
)
from audiences.compliance.keys import key_id, load_private_key, load_public_key
from audiences.core.config import ProjectConfig
from audiences.core.errors import ApprovalError, ConfigError
from audiences.core.state import project_salt
from policies.difference import EarlierRelease, ForeignRelease, link_frame
from policies.rules import GOOGLE_KINDS


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
    """Must the segment's approval be checked? When required, whenever the segment was
    ever approved (swapping to a pack that requires no approval changes the effective
    policy the officer approved, so it needs a new approval too), whenever the project has
    trusted approvers (a segment of its own to a new file folder, or a review of one, is
    not a way around them), and whenever one of its accounts has approvers on this OS
    account (:func:`pinned_accounts`)."""
    if approval_required(config, pack):
        return True
    if approvals.latest_approval(conn, segment.name) is not None:
        return True
    if _trust_entries(conn):  # the project has approvers: its officers decide, any pack
        return True
    return bool(pinned_accounts(config, segment))


def pinned_accounts(config: ProjectConfig, segment: Any) -> list[str]:
    """The segment's destination accounts that have approvers on this OS account. Once an
    account has, every release to it needs an approval, whatever the pack says: else a
    pack that requires none (``baseline``, or one of the marketer's own) would send an
    unapproved segment — a new name included — to the account an officer governs."""
    with custody.opened() as store:
        return [
            account
            for account in sorted({destination_account(config, d) for d in segment.destinations})
            if custody.trusted_for(store, account) is not None
        ]


def ad_destinations(config: ProjectConfig, segment: Any) -> list[str]:
    """The destinations an approval must cover: every one, files included (a file of hashed
    identifiers is an upload waiting to happen)."""
    return list(segment.destinations)


def _add_hint(name: str, public: str = "BASE64") -> str:
    return (
        f"a trusted approver adds it: `audiences approvers add {name} --public {public} "
        "--by EXISTING --key EXISTING.key` (editing audiences.toml never adds an approver)"
    )


def _trust_entries(conn: sqlite3.Connection) -> list[custody.TrustEntry]:
    rows = conn.execute(
        "SELECT seq, at, actor, kind, subject, details, prev_hash, hash FROM audit "
        f"WHERE kind IN ({', '.join('?' * len(TRUST_KINDS))}) ORDER BY seq",
        TRUST_KINDS,
    ).fetchall()
    entries = [audit.AuditEntry(*tuple(row)) for row in rows]
    return [
        custody.TrustEntry(e.kind, e.subject, e.details_dict(), e.at, f"audit entry {e.seq}")
        for e in entries
    ]


change_payload = custody.change_payload


def trusted_approvers(conn: sqlite3.Connection) -> dict[str, dict[str, str]]:
    """``{name: {"public", "key_id", "since"}}`` from the audit chain: the trust-on-first-use
    keys, plus signed additions, minus signed removals. Empty before the first approval."""
    return custody.replay(
        _trust_entries(conn), broken="the state database was altered; run `audiences audit verify`"
    )


def checkpoint_keys(conn: sqlite3.Connection) -> dict[str, dict[str, str]]:
    """``{name: {"public", "key_id", "since"}}``: the keys trusted to sign audit
    checkpoints only (``approvers add --checkpoints-only``), from the audit chain."""
    return custody.replay_roles(
        _trust_entries(conn), broken="the state database was altered; run `audiences audit verify`"
    )[1]


def checkpoint_signer(conn: sqlite3.Connection, config: ProjectConfig, key_path: Path) -> str:
    """The name ``key_path`` signs checkpoints as: a trusted approver's or a checkpoint-only
    key (before any approver is trusted, a key listed under ``[approvers] keys``). Refused
    otherwise, before anything runs: ``audit verify`` would reject what it signs."""
    kid = key_id(load_private_key(key_path).public_key())
    roles = custody.replay_roles(
        _trust_entries(conn), broken="the state database was altered; run `audiences audit verify`"
    )
    signers = roles[0] | roles[1]
    if not roles[0]:
        signers = {n: {"key_id": _kid(p)} for n, p in config.approvers.keys.items()}
    for name, t in sorted(signers.items()):
        if t["key_id"] == kid:
            return name
    raise ApprovalError(
        f"checkpoint key {key_path} (key {kid}) is not a trusted approver or checkpoint key, "
        "so `audiences audit verify` would reject what it signs",
        "a trusted approver adds it: `audiences approvers add NAME --checkpoints-only "
        "--public BASE64 --by APPROVER --key APPROVER.key`",
    )


def trust_history(conn: sqlite3.Connection) -> tuple[dict[str, str], Any]:
    """Every key the chain ever trusted (``{name@key_id: public}``) and ``trusted_at(seq,
    key_id)``: was the key trusted at that audit entry (for ``audit verify``: a checkpoint
    a rotated-out key signed while trusted still verifies; one signed after does not)."""
    rows = conn.execute(
        f"SELECT seq FROM audit WHERE kind IN ({', '.join('?' * len(TRUST_KINDS))}) ORDER BY seq",
        TRUST_KINDS,
    ).fetchall()
    entries = _trust_entries(conn)
    keys: dict[str, str] = {}
    spans: list[tuple[int, frozenset[str]]] = []  # (from seq, key ids trusted from there)
    for (seq,), upto in zip(rows, range(1, len(entries) + 1), strict=True):
        roles = custody.replay_roles(entries[:upto], broken="the state database was altered")
        signers = roles[0] | roles[1]  # approvers and checkpoint-only keys both sign heads
        spans.append((int(seq), frozenset(t["key_id"] for t in signers.values())))
        keys |= {f"{name}@{t['key_id']}": t["public"] for name, t in signers.items()}

    def trusted_at(seq: int, kid: str) -> bool:
        current: frozenset[str] = frozenset()
        for start, kids in spans:
            if start > seq:
                break
            current = kids
        return kid in current

    return keys, trusted_at


def _kid(public: str) -> str:
    return key_id(load_public_key(public))


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
            _first_use_in_custody(config, listed)
            audit.append(
                conn, kind=TRUST_KIND, subject="approvers", details={"keys": listed},
                actor="trust-on-first-use",
            )  # fmt: skip
        return listed
    for name, public in sorted(listed.items()):
        known = trusted.get(name)
        if known is None and name in checkpoint_keys(conn):
            raise ApprovalError(
                f"{name!r} in audiences.toml [approvers] keys is a checkpoint-only key: it "
                "never approves",
                f"take {name}'s key out of [approvers] keys in audiences.toml",
                where="audiences.toml [approvers] keys",
            )
        if known is None or known["key_id"] != _kid(public):
            removed = _removed_by(conn, name) if known is None else None
            raise ApprovalError(
                f"approver key {name!r} in audiences.toml is not a trusted approver key"
                + (f" ({name} was removed by {removed})" if removed else ""),
                f"take {name}'s key out of [approvers] keys in audiences.toml"
                if removed
                else _add_hint(name),
                where="audiences.toml [approvers] keys",
            )
    return {name: t["public"] for name, t in trusted.items()}


def _removed_by(conn: sqlite3.Connection, name: str) -> str | None:
    """Who removed ``name`` from the trusted approvers (the newest removal), or None."""
    for entry in reversed(_trust_entries(conn)):
        if entry.subject == name:
            return str(entry.details.get("by")) if entry.kind == REMOVE_KIND else None
    return None


def _first_use_in_custody(config: ProjectConfig, listed: dict[str, str]) -> None:
    """A state's first trust comes from ``[approvers] keys`` only where the accounts it
    releases to have no approvers yet on this OS account: a key the file lists must be
    trusted for every account of the project's destinations that has (else a deleted or
    new state database would trust whatever key the file was edited to list)."""
    kids = {name: _kid(public) for name, public in listed.items()}
    with custody.opened() as store:
        for name in sorted(config.destinations):
            account = destination_account(config, name)
            trusted = custody.trusted_for(store, account)
            if trusted is None:
                continue
            known = {t["key_id"] for t in trusted.values()}
            for approver, kid in sorted(kids.items()):
                if kid not in known:
                    raise ApprovalError(
                        f"approver key {approver!r} in audiences.toml is not trusted for "
                        f"{account} (destination {name!r}) on this OS account: its approvers "
                        f"are {', '.join(sorted(trusted))}",
                        "list the keys of that account's approvers under [approvers] keys (trust "
                        "for an account starts once, not once per state database); one of them "
                        "adds a new approver with `audiences approvers add`",
                        where="audiences.toml [approvers] keys",
                    )


def check(conn: sqlite3.Connection, config: ProjectConfig, segment: Any, pack: Any) -> Any:
    """The segment's valid approval, or ApprovalError (exit 3) saying what changed."""
    if not config.approvers.keys and not trusted_approvers(conn):
        raise ApprovalError(
            f"segment {segment.name!r} needs an approval and no approver keys are configured",
            "a compliance officer runs `audiences keygen`, adds the public key under "
            "[approvers] keys, then `audiences approve`",
        )
    trusted = _trusted(conn, config, record=False)
    current = approvals.check_approval(conn, **_binding(config, segment, pack, trusted))
    with custody.opened() as store:
        revoked = _revoked(store, config, current)
        if revoked is not None:
            raise ApprovalError(
                f"the approval of segment {segment.name!r} was revoked by {revoked[0]} at "
                f"{revoked[1]} (a revocation is kept outside the project: a restored backup "
                "or a copy of the project does not bring the approval back)",
                approvals.approve_hint(segment.name),
            )
        _account_trust(store, conn, config, segment, current.key_id)
    return current


def _revoked(store: Any, config: ProjectConfig, approval: Any) -> tuple[str, str] | None:
    """``(by, at)`` when custody holds ``approval`` revoked: by its signature, or by a
    revocation of its segment for one of its accounts made after it was signed."""
    from audiences.compliance.approvals import instant

    found = custody.revocation(store, approval.signature)
    if found is not None:
        return found
    signed = instant(approval.at)
    accounts = _accounts(config, approval.destinations)
    for by, at in custody.segment_revocations(store, accounts, approval.segment):
        if signed <= instant(at):
            return by, at
    return None


def _accounts(config: ProjectConfig, destinations: Any) -> list[str]:
    """The accounts of the configured ones among ``destinations``."""
    names = [d for d in destinations if d in config.destinations]
    return sorted({destination_account(config, d) for d in names})


def destination_account(config: ProjectConfig, name: str) -> str:
    """The account a destination releases to, as custody keys it: the ad account
    (``act_…``, canonical: ``act_0123`` is ``act_123``), the Google Ads customer id, or for
    a file destination the project's salt alone (a copy of the project has the same; a
    folder spelled another way, ``./exports`` or a new one, is no new account). Not the
    ``endpoint``: the real platform's address written out as an endpoint would otherwise
    be a new account, and start trust on first use again."""
    from policies.gate import destination_of
    from policies.rules import GOOGLE_KINDS

    spec = config.destination(name)
    if spec.kind == "file":
        from audiences.core.state import project_salt

        return f"local:{custody.salt_id(project_salt(config.state_dir))}"
    account = destination_of(config, name)[0].account
    return f"google:{account}" if spec.kind in GOOGLE_KINDS else account


def account_approvers(config: ProjectConfig) -> list[dict[str, Any]]:
    """For ``approvers list``: each account of the project's destinations and the approvers
    custody trusts for it on this OS account (None before its first approval)."""
    accounts: dict[str, list[str]] = {}
    for name in sorted(config.destinations):
        accounts.setdefault(destination_account(config, name), []).append(name)
    with custody.opened() as store:
        rows = []
        for account, names in sorted(accounts.items()):
            trusted = custody.trusted_for(store, account)
            rows.append(
                {
                    "account": account,
                    "destinations": names,
                    "approvers": None
                    if trusted is None
                    else [
                        {"approver": n, "key_id": t["key_id"]} for n, t in sorted(trusted.items())
                    ],
                }
            )
    return rows


def _project(config: ProjectConfig) -> str:
    return str(config.root.resolve())


def require_reviewer(
    conn: sqlite3.Connection,
    config: ProjectConfig,
    segment: Any,
    pack: Any,
    *,
    by: str,
    key_path: Path | None,
) -> None:
    """``audiences review`` of a segment that needs an approval is for its approvers: the
    review runs the whole gate on an unapproved definition and writes exact figures, so
    anyone else could ask it whether a named person is in a segment (a base of k − 1
    people or'ed with them: blocked or not, one more in the count). ApprovalError (exit
    3) unless ``key_path`` is ``by``'s key and trusted for the segment's accounts."""
    if not approval_binds(conn, config, segment, pack):
        return
    if key_path is None:
        raise ApprovalError(
            f"reviewing segment {segment.name!r} is for its approvers: its review runs the "
            "gate on a definition nobody approved and writes exact figures",
            f"a compliance officer runs `audiences review {segment.name} --by NAME --key PATH`; "
            "`audiences preview` gives sizes with noise (charged to the budget)",
        )
    trusted = _trusted(conn, config, record=False)
    kid = key_id(load_private_key(key_path).public_key())
    approvals.check_approver_key(kid, key_path, by, trusted)
    with custody.opened() as store:
        _account_trust(store, conn, config, segment, kid, pin=False)


def _account_trust(
    store: Any,
    conn: sqlite3.Connection,
    config: ProjectConfig,
    segment: Any,
    kid: str,
    *,
    pin: bool = True,
) -> None:
    """Refuse ``kid`` unless it is trusted for every account the segment releases to, on
    this OS account. An account released to for the first time pins the project's trust
    history as its root (docs/compliance-workflow.md, "Custody")."""
    history: list[custody.TrustEntry] | None = None
    for name in sorted(segment.destinations):
        account = destination_account(config, name)
        trusted = custody.trusted_for(store, account)
        if trusted is None and not pin:
            continue  # no approvers pinned for it yet: the project's trusted keys decide
        if trusted is None:
            history = _trust_entries(conn) if history is None else history
            trusted = custody.pin(store, account, history, _project(config))
        if not any(t["key_id"] == kid for t in trusted.values()):
            names = ", ".join(sorted(trusted)) or "nobody"
            what = (
                f"the approval of segment {segment.name!r} is signed by key {kid},"
                if pin
                else f"the key reviewing segment {segment.name!r} ({kid}),"
            )
            raise ApprovalError(
                f"{what} which is not trusted for {account} (destination {name!r}) on this OS "
                f"account: its approvers are {names}",
                "trust for an account starts with the first approval released to it, in any "
                "project (a new state database or an edited [approvers] keys does not start "
                "it again); one of its approvers signs `audiences approvers add`",
            )


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
    signer = key_id(load_private_key(key_path).public_key())
    if signer in {_kid(public) for public in trusted.values()}:  # else approve() says why
        with custody.opened() as store:
            _account_trust(store, conn, config, segment, signer)
    return approvals.approve(conn, **binding, approver=by, private_key_path=key_path, note=note)


def revoke(conn: sqlite3.Connection, config: ProjectConfig, segment: str, by: str) -> Any:
    """Revoke the segment's approval, in the project and in custody (outside the project,
    so that no restored backup or copy of the project brings it back)."""
    revoked = approvals.revoke(conn, segment, by)
    held = [
        str(sig) for (sig,) in conn.execute(
            "SELECT signature FROM approvals WHERE segment = ?", (segment,)
        ).fetchall()
    ]  # fmt: skip
    accounts = _accounts(config, [*revoked.destinations, *config.destinations])
    with custody.opened() as store:
        at = str(revoked.revoked_at)
        for signature in held:  # every approval of the segment this state holds
            custody.record_revocation(store, signature, segment, by, at, _project(config))
        custody.record_segment_revocation(store, accounts, segment, by, at, _project(config))
    return revoked


def reapply_trust(conn: sqlite3.Connection, config: ProjectConfig, actor: str) -> list[str]:
    """After ``state restore``: the signed approver changes custody holds for the project's
    accounts that the restored chain lacks (made after the backup: a deputy added, an
    officer removed) are appended to it, each verified against the keys the chain trusts
    at that point — else a restore across a key rotation leaves no key both trust."""
    chain = _trust_entries(conn)
    if not chain:
        return []
    seen = {str(e.details.get("signature")) for e in chain if e.kind != TRUST_KIND}
    applied = []
    with custody.opened() as store:
        accounts = {destination_account(config, d) for d in config.destinations}
        accounts |= custody.accounts_pinned_by(store, _project(config))
        for account in sorted(accounts):
            for entry in custody.entries(store, account):
                signature = str(entry.details.get("signature"))
                if entry.kind == TRUST_KIND or signature in seen:
                    continue
                try:
                    custody.replay([*chain, entry], broken="")
                except ApprovalError:
                    continue  # not signed by a key this chain trusts: not this project's
                audit.append(
                    conn, kind=entry.kind, subject=entry.subject, details=entry.details,
                    actor=f"{entry.details['by']} (custody, restored by {actor})",
                )  # fmt: skip
                chain.append(entry)
                seen.add(signature)
                applied.append(f"{entry.kind.removeprefix('approver_')} {entry.subject}")
    return applied


def reapply_revocations(
    conn: sqlite3.Connection, config: ProjectConfig, actor: str
) -> list[dict[str, str]]:
    """After ``state restore``: each approval the restored state holds unrevoked but custody
    holds revoked is revoked again in the state, with an audit entry (its chain then says
    what the backup did not know)."""
    rows = conn.execute("SELECT DISTINCT segment FROM approvals ORDER BY segment").fetchall()
    kept = []
    with custody.opened() as store:
        for (segment,) in rows:
            current = approvals.latest_approval(conn, str(segment))
            if current is None or current.revoked_at is not None:
                continue
            revoked = _revoked(store, config, current)
            if revoked is None:
                continue
            approvals.revoke(conn, current.segment, f"{revoked[0]} (custody, restored by {actor})")
            kept.append({"segment": current.segment, "revoked_by": revoked[0], "at": revoked[1]})
    return kept


def share_releases(config: ProjectConfig, salt: bytes, outcome: Any) -> None:
    """Keep the recorded releases' member keys in custody, for the difference check of
    every copy of the project (same salt) on this OS account."""
    from policies.gate import RELEASES_DIR

    shared = [
        EarlierRelease(
            r.release_id,
            r.build_id,
            r.segment,
            r.destination,
            r.account,
            r.created_at,
            int(r.members.height),
            config.state_dir / RELEASES_DIR / f"{r.release_id}.parquet",
        )
        for r in outcome.releases.values()
    ]
    # for an ad account, the people's link keys: a project with another salt compares
    # its audiences with these (policies/difference.py)
    links = {
        r.release_id: link_frame(r.members)
        for r in outcome.releases.values()
        if r.kind in ("meta", *GOOGLE_KINDS)
    }
    with custody.opened() as store:
        k_diffs = {r.release_id: int(r.k_diff) for r in outcome.releases.values()}
        custody.register_releases(
            store, salt, shared, _project(config), links, k_diffs, outcome.exclusions
        )


def release_lock(config: ProjectConfig, segment: Any) -> contextlib.AbstractContextManager[None]:
    """For a build that releases: the locks of the segment's accounts, held from the gate's
    difference check to the registration of its releases (custody.account_locks)."""
    return custody.account_locks(_accounts(config, segment.destinations))


def foreign_releases(salt: bytes) -> Callable[[str], list[ForeignRelease]]:
    """For the gate: ``account -> [ForeignRelease]``: the live audiences projects with
    another salt released to the account — each newest release, and what the platform
    holds of it after its latest sync — with their people's link keys."""

    def provide(account: str) -> list[ForeignRelease]:
        with custody.opened() as store:
            synced = custody.synced_for(store, salt, account)[1]
            return [*custody.foreign_releases_for(store, salt, account), *synced]

    return provide


def synced_audiences(salt: bytes) -> Callable[[str], list[EarlierRelease]]:
    """For the gate: ``account -> [EarlierRelease]``: what the platform holds of each
    audience of this salt on the account after its latest sync (its newest release while
    small changes are held back is not what the platform holds)."""

    def provide(account: str) -> list[EarlierRelease]:
        with custody.opened() as store:
            return custody.synced_for(store, salt, account)[0]

    return provide


def share_synced(config: ProjectConfig, segment: str, destination: str, snapshot: Any) -> None:
    """After a sync to an ad account: keep what the platform now holds of the audience
    (its confirmed snapshot's member keys and link keys) for every difference check."""
    from audiences.core.state import utcnow

    keys = snapshot.select(pl.col("member_key").cast(pl.UInt64))
    audience = EarlierRelease(
        "", "", segment, destination, destination_account(config, destination), utcnow(),
        keys.height, Path(),
    )  # fmt: skip
    with custody.opened() as store:
        custody.register_synced(
            store, project_salt(config.state_dir), audience, keys, link_frame(snapshot),
            _project(config),
        )  # fmt: skip


def shared_releases(salt: bytes) -> Callable[[str], list[EarlierRelease]]:
    """For the gate: ``account -> [EarlierRelease]`` released by any state with this salt."""

    def provide(account: str) -> list[EarlierRelease]:
        with custody.opened() as store:
            return custody.releases_for(store, salt, account)

    return provide


def record_takedown(config: ProjectConfig, segment: str, destination: str, by: str) -> None:
    """Keep a takedown outside the project: no state adds to the audience again until an
    approval signed after it."""
    with custody.opened() as store:
        custody.record_takedown(
            store,
            segment,
            destination_account(config, destination),
            destination,
            by,
            audit.format_at(),
            _project(config),
        )


def taken_down(config: ProjectConfig, segment: str, destination: str) -> None:
    """The platform confirmed the audience taken down: custody's copies of its releases
    stop counting as live for the difference checks of this project, its copies and every
    other project on the account."""
    salt_file = config.state_dir / "salt"
    if not salt_file.exists():
        return
    with custody.opened() as store:
        custody.forget_audience(
            store,
            project_salt(config.state_dir),
            destination_account(config, destination),
            segment,
            destination,
        )


def takedown_since(config: ProjectConfig, segment: str, destination: str) -> str | None:
    """When the segment's audience on the destination's account was last taken down, from
    any state on this OS account."""
    with custody.opened() as store:
        return custody.latest_takedown(store, segment, destination_account(config, destination))


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
        checkpointers = checkpoint_keys(conn)
        if kind == REMOVE_KIND:  # `approvers remove NAME`: whichever role NAME has
            role = trusted if name in trusted else checkpointers
            if name not in role:
                raise ApprovalError(
                    f"{name!r} is not a trusted approver or checkpoint key",
                    "see `audiences approvers list`",
                )
            kind = REMOVE_KIND if role is trusted else CHECKPOINT_REMOVE_KIND
            public = role[name]["public"]
        assert public is not None
        public = base64.b64encode(load_public_key(public, name=name).public_bytes_raw()).decode()
        if kind in (ADD_KIND, CHECKPOINT_ADD_KIND):
            _one_role(kind, name, _kid(public), trusted, checkpointers)
        payload = change_payload(kind, name, public, by, signer["key_id"])
        signature = base64.b64encode(private.sign(payload)).decode()
        details = {"public": public, "by": by, "by_key": signer["key_id"], "signature": signature}
        entry = audit.append(conn, kind=kind, subject=name, details=details, actor=by)
        accounts = _record_change(
            config, custody.TrustEntry(kind, name, details, entry.at, f"audit entry {entry.seq}")
        )
    return {"approver": name, "key_id": _kid(public), "change": kind, "by": by} | {
        "accounts": accounts
    }


def _one_role(
    kind: str,
    name: str,
    kid: str,
    approvers_: dict[str, dict[str, str]],
    checkpointers: dict[str, dict[str, str]],
) -> None:
    """A name, and a key, has one role: an approver or a checkpoint-only key (a cron key
    that is also an approver's can approve)."""
    other, role = (
        (checkpointers, "a checkpoint-only key")
        if kind == ADD_KIND
        else (approvers_, "an approver")
    )
    for held, t in sorted(other.items()):
        if held == name or t["key_id"] == kid:
            raise ApprovalError(
                f"{name!r} (key {kid}) cannot be added: {held!r} (key {t['key_id']}) is "
                f"already {role}",
                f"remove {held!r} first (`audiences approvers remove {held}`), or use "
                "another name and key",
            )


def _record_change(config: ProjectConfig, entry: custody.TrustEntry) -> list[str]:
    """Carry a signed approver change to every account of the project's destinations whose
    trust root is pinned (the others pin the project's history, change included, when
    first released to). Refused, and nothing recorded, when the signer is not trusted for
    one of them."""
    accounts = {destination_account(config, name) for name in config.destinations}
    with custody.opened() as store:
        # and every account this project pinned through a destination since removed
        accounts |= custody.accounts_pinned_by(store, _project(config))
        pinned = [a for a in sorted(accounts) if custody.trusted_for(store, a) is not None]
        for account in pinned:  # every account first, so that a refusal records nothing
            try:
                custody.check_change(store, account, entry)
            except ApprovalError as exc:
                raise ApprovalError(
                    f"{entry.details['by']!r} is not a trusted approver for {account} on this "
                    f"OS account ({exc.message})",
                    "sign with the key of one of that account's approvers",
                ) from None
        for account in pinned:
            custody.record_change(store, account, entry, _project(config))
    return pinned
