"""Compliance commands: ``keygen``, ``approve``, ``revoke`` and the ``audit`` group
(``verify``, ``export``, ``checkpoint``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from audiences.cli.group import Context, cli, emit_json, file_option, pass_ctx
from audiences.core.errors import EXIT_ERROR


@cli.command()
@file_option(
    "--private",
    "private_path",
    required=True,
    help="Where to write the private key (outside the repo).",
)
@file_option(
    "--public", "public_path", help="Where to write the public key [default: PRIVATE.pub]."
)
@click.option(
    "--name",
    default=None,
    help="Approver name for the audiences.toml line [default: the private key file's stem].",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def keygen(
    obj: Context, private_path: Path, public_path: Path | None, name: str | None, as_json: bool
) -> None:
    """Make an Ed25519 key pair for a compliance officer who approves segments."""
    from audiences.compliance.keys import generate_keypair

    public_path = public_path or private_path.with_name(private_path.name + ".pub")
    # a folder is a project when it holds audiences.toml (`keygen` run from / is not in one)
    project = obj.project if (obj.project / "audiences.toml").is_file() else None
    pair = generate_keypair(private_path, public_path, project_dir=project)
    who = name or private_path.stem  # ~/.audiences/alice.key → "alice"
    doc = {
        "key_id": pair.key_id,
        "private": str(pair.private_path),
        "public": str(pair.public_path),
        "public_base64": pair.public_base64,
        "toml": f'"{who}" = "{pair.public_base64}"',
    }
    if as_json:
        emit_json(doc)
        return
    click.echo(f"Private key: {pair.private_path} (0600 — keep it outside the repo)", err=True)
    click.echo(
        "Paste this line into audiences.toml: under [approvers.keys], or inside "
        f"[approvers] keys = {{ ... }} (a first key: keys = {{ {doc['toml']} }}):",
        err=True,
    )
    click.echo(doc["toml"])


def _segment_and_pack(config: Any, name: str) -> tuple[Any, Any]:
    from audiences.pipeline.select import select_segments
    from policies.pack import load_pack

    (segment,) = select_segments(config, [name])
    return segment, load_pack(config)


@cli.command()
@click.argument("segment")
@click.option("--by", required=True, help="Approver name, as listed in [approvers] keys.")
@file_option("--key", "key_path", exists=True, required=True, help="The approver's private key.")
@click.option("--note", default=None, help="Why (a ticket, a review), kept with the approval.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def approve(
    obj: Context, segment: str, by: str, key_path: Path, note: str | None, as_json: bool
) -> None:
    """Sign the approval of a segment's exact definition, pack and destinations."""
    from audiences.compliance import workflow as compliance
    from audiences.core.state import connect
    from audiences.pipeline.build import latest_review
    from audiences.pipeline.project import validate_project

    config = obj.config()
    validate_project(config, only=[segment])
    seg, pack = _segment_and_pack(config, segment)
    from audiences.core.lock import ProjectLock

    with ProjectLock(config.state_dir / "lock"):
        conn = connect(config.state_db)
        try:
            seen = latest_review(conn, seg.name, seg.digest, pack.digest)
            if seen is not None:  # the approval names the review it was based on
                note = (
                    f"{note} · review {seen['build_id']}" if note else f"review {seen['build_id']}"
                )
            approval = compliance.approve(
                conn, config, seg, pack, by=by, key_path=key_path, note=note
            )
            _record_review(conn, seg.name, approval.id, seen, by)
        finally:
            conn.close()
    doc = {
        "segment": seg.name,
        "segment_digest": seg.digest,
        "policy_digest": pack.digest,
        "effective_policy_digest": approval.policy_digest,
        "destinations": list(seg.destinations),
        "approver": by,
        "key_id": approval.key_id,
        "review": seen,
    }
    if as_json:
        emit_json(doc)
        return
    click.echo(
        f"Approved {seg.name} ({seg.digest[:19]}) for {', '.join(seg.destinations)} by {by}.",
        err=True,
    )
    if seen is None:
        click.echo(
            f"No review of this definition on record: run `audiences review {seg.name} --by {by} "
            f"--key {key_path}` to see "
            "what it would release before signing.",
            err=True,
        )
    else:
        verdict = "passes" if seen["status"] == "reviewed" else "; ".join(seen["reasons"])
        click.echo(f"Based on review {seen['build_id']} ({seen['at']}): {verdict}", err=True)


def _record_review(conn: Any, segment: str, approval_id: int, seen: Any, by: str) -> None:
    from audiences.compliance import audit

    audit.append(
        conn,
        kind="approval_review",
        subject=segment,
        details={
            "approval_id": approval_id,
            "review_build_id": seen["build_id"] if seen else None,
            "review_status": seen["status"] if seen else None,
        },
        actor=by,
    )


@cli.command()
@click.argument("segment")
@click.option("--by", default=None, help="Who revokes (default: OS user).")
@click.option("--takedown", "take_down", is_flag=True, help="Also empty its live audiences.")
@click.option("--delete", is_flag=True, help="With --takedown: delete the audiences (Meta).")
@pass_ctx
def revoke(obj: Context, segment: str, by: str | None, take_down: bool, delete: bool) -> None:
    """Revoke a segment's approval (syncs refuse it until approved again).

    Revoking stops adds; the platform audience stays live (forced removals still go).
    ``--takedown`` also empties it everywhere (``audiences takedown``)."""
    from audiences.compliance.workflow import revoke as run_revoke
    from audiences.core.actor import actor_name
    from audiences.core.errors import UsageError
    from audiences.core.lock import ProjectLock
    from audiences.core.state import connect

    if delete and not take_down:
        raise UsageError(
            "--delete goes with --takedown", "e.g. audiences revoke X --takedown --delete"
        )
    config = obj.config()
    with ProjectLock(config.state_dir / "lock"):
        conn = connect(config.state_db)
        try:
            run_revoke(conn, config, segment, actor_name(by))
        finally:
            conn.close()
    click.echo(f"Revoked the approval of {segment}.", err=True)
    if take_down:
        from audiences.cli.lifecycle import print_takedown, run_takedown
        from audiences.core.errors import DataError

        try:
            rows, code = run_takedown(config, segment, by=by, destination=None, delete=delete)
        except DataError as exc:  # never synced: the revocation alone is complete
            click.echo(f"Nothing to take down: {exc.message}", err=True)
            return
        print_takedown(rows)
        sys.exit(code)


@cli.group()
def audit() -> None:
    """Verify or export the tamper-evident audit log."""


@audit.command("verify")
@click.option(
    "--anchor",
    "anchors",
    multiple=True,
    help="SEQ:HASH from an earlier `sync --json` summary (audit_head); repeatable.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def audit_verify(obj: Context, anchors: tuple[str, ...], as_json: bool) -> None:
    """Recompute the hash chain; name the first bad entry (exit 1 if any)."""
    from audiences.compliance import audit as audit_log
    from audiences.compliance.workflow import trust_history
    from audiences.core.state import connect

    config = obj.config()
    conn = connect(config.state_db)
    try:
        # the keys the chain trusted, each when it did (rotated keys' checkpoints verify);
        # before any trust entry, the file's keys
        history, trusted_at = trust_history(conn)
        result = audit_log.verify(
            conn,
            anchors=[audit_log.parse_anchor(a) for a in anchors],
            public_keys=history or dict(config.approvers.keys),
            trusted_at=trusted_at if history else None,
        )
    finally:
        conn.close()
    doc = result.to_dict()
    if as_json:
        emit_json(doc)
    elif result.ok:
        click.echo(
            f"audit log ok: {result.entries} entries, {result.checkpoints} signed "
            f"checkpoint(s), {result.anchors} anchor(s); head {result.head[0]}:"
            f"{result.head[1]}",
            err=True,
        )
        click.echo(_checkpoint_age(result.checkpoint_age_seconds()), err=True)
    else:
        click.echo(
            f"Error: audit log broken at entry {result.first_bad_seq}: {result.reason}", err=True
        )
    if not result.ok:
        sys.exit(EXIT_ERROR)


def _checkpoint_age(age: float | None) -> str:
    if age is None:
        return (
            "no signed checkpoint: entries cut off the end of the log go unnoticed unless "
            "you pass an --anchor (see docs/compliance-workflow.md)"
        )
    return (
        f"newest signed checkpoint: {age / 3600:.1f} h old (entries after it are covered "
        "by the chain only)"
    )


@audit.command("export")
@file_option("--out", required=True, help="The JSON-lines file to write.")
@pass_ctx
def audit_export(obj: Context, out: Path) -> None:
    """Write the audit log as JSON lines (for a SIEM)."""
    from audiences.compliance import audit as audit_log
    from audiences.core.state import connect

    conn = connect(obj.config().state_db)
    try:
        n = audit_log.export(conn, out)
    finally:
        conn.close()
    click.echo(f"Wrote {n} entries to {out}", err=True)


@audit.command("checkpoint")
@file_option(
    "--key",
    "key_path",
    exists=True,
    required=True,
    help="An approver's private key, or a checkpoint-only key (`approvers add --checkpoints-only`).",
)
@click.option("--by", default=None, help="Who signs (default: OS user).")
@pass_ctx
def audit_checkpoint(obj: Context, key_path: Path, by: str | None) -> None:
    """Sign the current head of the audit log with a trusted approver's or checkpoint key."""
    from audiences.compliance import audit as audit_log
    from audiences.compliance.keys import load_private_key
    from audiences.compliance.workflow import checkpoint_signer
    from audiences.core.actor import actor_name
    from audiences.core.state import connect

    config = obj.config()
    conn = connect(config.state_db)
    try:
        checkpoint_signer(conn, config, key_path)
        cp = audit_log.checkpoint(conn, load_private_key(key_path), actor=actor_name(by))
    finally:
        conn.close()
    click.echo(f"Signed checkpoint at entry {cp.seq}", err=True)
