"""State commands: ``state backup``, ``state restore``, ``state adopt``, ``state repair``.

Each takes the project lock (exit 75 while another run holds it). See
docs/compliance-workflow.md, "State and backups".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from audiences.cli.group import Context, cli, emit_json, file_option, pass_ctx


def _locked(config: Any, command: str) -> Any:
    from audiences.core.lock import ProjectLock
    from audiences.core.state import ensure_private_dir

    ensure_private_dir(config.state_dir)
    return ProjectLock(config.state_dir / "lock", command=command)


@cli.group()
def state() -> None:
    """Back up, restore and recover the project's state (.audiences)."""


@state.command("backup")
@file_option("--out", required=True, help="The archive to write (mode 0600).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def state_backup(obj: Context, out: Path, as_json: bool) -> None:
    """Write the state database, snapshots, salt and audience record to one archive."""
    from audiences.pipeline.backup import backup

    config = obj.config()
    with _locked(config, "audiences state backup"):
        doc = backup(config, out)
    if as_json:
        emit_json(doc)
    else:
        head = doc["audit_head"]
        click.echo(f"Wrote {out} (audit head {head['seq']}:{head['hash'][:16]}…)", err=True)


@state.command("restore")
@click.argument("archive", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--by", default=None, help="Who restores (default: OS user).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def state_restore(obj: Context, archive: Path, by: str | None, as_json: bool) -> None:
    """Restore a backup; audiences changed since it was taken are replaced in full."""
    from audiences.core.actor import actor_name
    from audiences.pipeline.backup import restore

    config = obj.config()
    with _locked(config, "audiences state restore"):
        report = restore(config, archive, actor_name(by))
    if as_json:
        emit_json(report.to_dict())
        return
    click.echo(f"Restored {archive}; the replaced files were moved aside.", err=True)
    if report.reason:
        click.echo(f"Note: {report.reason}.", err=True)
    for segment, destination in report.replaces:
        click.echo(f"{segment}->{destination}: replaced in full on its next sync", err=True)
    if report.dropped is not None:
        first, last, where = report.dropped
        click.echo(
            f"Note: audit entries {first}–{last} of the replaced state are not in the restored "
            f"log (they are in .audiences/{where}); a state_restore entry records it.",
            err=True,
        )
    for change in report.trust_again:
        click.echo(
            f"Approvers: {change} (signed after the backup; kept outside the project)", err=True
        )
    for kept in report.revoked_again:
        click.echo(
            f"{kept['segment']}: revoked again (revoked by {kept['revoked_by']} at {kept['at']}, "
            "after the backup; kept outside the project)",
            err=True,
        )


@state.command("adopt")
@click.option("--by", default=None, help="Who adopts (default: OS user).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def state_adopt(obj: Context, by: str | None, as_json: bool) -> None:
    """Re-link the recorded platform audiences to this state; replace each in full next."""
    from audiences.core.actor import actor_name
    from audiences.core.state import connect
    from audiences.pipeline.state_record import adopt

    config = obj.config()
    with _locked(config, "audiences state adopt"):
        conn = connect(config.state_db)
        try:
            adopted = adopt(conn, config.state_dir, actor_name(by))
        finally:
            conn.close()
    rows = [{"segment": s, "destination": d, "audience": r} for s, d, r in adopted]
    if as_json:
        emit_json({"adopted": rows})
        return
    for row in rows:
        click.echo(
            f"{row['segment']}->{row['destination']}: audience {row['audience']} adopted; "
            "replaced in full on its next sync",
            err=True,
        )
    click.echo("Approve the segments again if the approvals were lost, then sync.", err=True)


@state.command("repair")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def state_repair(obj: Context, as_json: bool) -> None:
    """Move unreadable snapshots and journals aside; replace those audiences in full next."""
    from audiences.pipeline.backup import repair

    config = obj.config()
    with _locked(config, "audiences state repair"):
        done = repair(config)
    if as_json:
        emit_json({"repaired": done})
        return
    if not done:
        click.echo("Every snapshot and journal is readable; nothing to repair.", err=True)
    for row in done:
        click.echo(f"{row['segment']}->{row['destination']}: {row['reason']}", err=True)
