"""Lifecycle commands: ``review`` (the gate on current data, nothing released) and
``takedown`` (empty, or delete, a segment's live audiences)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from audiences.cli.group import Context, cli, emit_json, file_option, parse_as_of, pass_ctx


def run_takedown(
    config: Any, segment: str, *, by: str | None, destination: str | None, delete: bool
) -> tuple[list[dict[str, Any]], int]:
    """Take the segment's audiences down under the project lock; (results, exit code)."""
    from audiences.core.actor import actor_name
    from audiences.core.lock import ProjectLock
    from audiences.pipeline.takedown import exit_code, takedown

    with ProjectLock(config.state_dir / "lock"):
        results = takedown(
            config, segment, by=actor_name(by), destination=destination, delete=delete
        )
    return [r.to_dict() for r in results], exit_code(results)


def print_takedown(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        where = f"{r['segment']} → {r['destination']}"
        if r["kind"] == "file":
            click.echo(f"{where}: deleted {len(r['files'])} file(s)", err=True)
            for path in r["files"]:
                click.echo(f"  {path}", err=True)
        elif r["status"] == "already":
            click.echo(f"{where}: already taken down, nothing live", err=True)
        else:
            done = "deleted" if r["deleted"] else f"{r['remaining']:,} left"
            click.echo(
                f"{where} ({r['audience']}): {r['status']}, {r['removed']:,} removed, {done}",
                err=True,
            )
        if r["error"]:
            click.echo(f"  {r['error']}", err=True)


@cli.command()
@click.argument("segment")
@click.option("--destination", default=None, help="Only this destination [default: all live].")
@click.option("--delete", is_flag=True, help="Also delete the platform audience (Meta).")
@click.option("--by", required=True, help="Who takes it down (recorded in the audit log).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def takedown(
    obj: Context, segment: str, destination: str | None, delete: bool, by: str, as_json: bool
) -> None:
    """Empty (with --delete: delete) a segment's audiences wherever they are live."""
    rows, code = run_takedown(obj.config(), segment, by=by, destination=destination, delete=delete)
    if as_json:
        emit_json({"takedown": rows, "exit_code": code})
    else:
        print_takedown(rows)
    sys.exit(code)


@cli.command()
@click.argument("segment")
@click.option("--as-of", "as_of", default=None, help="Reference day (YYYY-MM-DD) [default: today].")
@click.option("--by", default=None, help="The approver who reviews (default: OS user).")
@file_option("--key", "key_path", exists=True, default=None,
             help="--by's private key: required when the segment needs an approval.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def review(
    obj: Context,
    segment: str,
    as_of: str | None,
    by: str | None,
    key_path: Path | None,
    as_json: bool,
) -> None:
    """Run the whole gate on current data, release nothing, write the report to sign off.

    A segment that needs an approval is reviewed by one of its approvers (--by, --key):
    exit 3 for anyone else, before anything is read. Exit 3 when the gate would block the
    segment (approval aside)."""
    from audiences.core.errors import EXIT_BLOCKED, EXIT_OK
    from audiences.pipeline.build import review as run_review

    result = run_review(
        obj.config(), segment, as_of=parse_as_of(as_of), actor=by, key_path=key_path
    )
    doc = result.to_dict()
    code = EXIT_BLOCKED if result.blocked else EXIT_OK
    if as_json:
        emit_json({**doc, "exit_code": code})
    else:
        verdicts = "blocked: " + "; ".join(result.reasons) if result.blocked else "passes"
        click.echo(f"Review {result.build_id} of {segment}: {verdicts}", err=True)
        click.echo(f"Report: {result.reports.get('md', '')}", err=True)
        click.echo(f"Approve it with: audiences approve {segment} --by NAME --key PATH", err=True)
    sys.exit(code)
