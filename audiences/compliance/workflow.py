"""Project-level approval workflow: binds `audiences approve/revoke` and the build/sync
checks to the project's segments, pack and trusted approver keys.

An approval covers one exact segment digest, policy-pack digest and destination
list, signed with a compliance officer's Ed25519 key listed in ``[approvers] keys``.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import yaml

from audiences.compliance import approvals
from audiences.core.config import ProjectConfig
from audiences.core.errors import ApprovalError, ConfigError


def definition_text(segment: Any) -> str:
    """The segment's canonical definition as YAML lines (shown as a diff when it changes)."""
    return str(yaml.safe_dump(json.loads(segment.canonical()), sort_keys=True))


def approval_required(config: ProjectConfig, pack: Any) -> bool:
    if config.approvers.require_approval is not None:
        return bool(config.approvers.require_approval)
    return bool(getattr(pack, "require_approval", False))


def ad_destinations(config: ProjectConfig, segment: Any) -> list[str]:
    """The destinations an approval must cover: every one, files included (a file of hashed
    identifiers is an upload waiting to happen)."""
    return list(segment.destinations)


def _trusted(config: ProjectConfig) -> dict[str, str]:
    if not config.approvers.keys:
        raise ConfigError(
            "no approver keys in audiences.toml",
            "a compliance officer runs `audiences keygen` and adds the public key under "
            "[approvers] keys",
        )
    return dict(config.approvers.keys)


def check(conn: sqlite3.Connection, config: ProjectConfig, segment: Any, pack: Any) -> Any:
    """The segment's valid approval, or ApprovalError (exit 3) saying what changed."""
    if not config.approvers.keys:
        raise ApprovalError(
            f"segment {segment.name!r} needs an approval and no approver keys are configured",
            "a compliance officer runs `audiences keygen`, adds the public key under "
            "[approvers] keys, then `audiences approve`",
        )
    return approvals.check_approval(
        conn,
        segment_name=segment.name,
        segment_digest=segment.digest,
        policy_digest=pack.digest,
        destinations=list(segment.destinations),
        definition_text=definition_text(segment),
        trusted_keys=_trusted(config),
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
    return approvals.approve(
        conn,
        segment_name=segment.name,
        segment_digest=segment.digest,
        policy_digest=pack.digest,
        destinations=list(segment.destinations),
        definition_text=definition_text(segment),
        approver=by,
        private_key_path=key_path,
        trusted_keys=_trusted(config),
        note=note,
    )
