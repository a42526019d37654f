"""Release commands: ``build``, ``report``, ``plan``, ``sync``, ``status``, ``history``.

``build`` exits 3 when the policy blocks a segment; ``sync`` exits with its report's code
(0 ok, 1 failed, 3 blocked, 75 locked).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from audiences.cli.group import (
    Context,
    cli,
    emit_json,
    file_option,
    parse_as_of,
    pass_ctx,
    progress_bar,
)
from audiences.core.errors import EXIT_BLOCKED, EXIT_OK, UsageError


@cli.command()
@click.argument("segments", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Build every segment in segments/.")
@click.option("--as-of", "as_of", default=None, help="Reference day (YYYY-MM-DD) [default: today].")
@click.option("--by", default=None, help="Who runs the build (default: OS user).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def build(
    obj: Context,
    segments: tuple[str, ...],
    all_: bool,
    as_of: str | None,
    by: str | None,
    as_json: bool,
) -> None:
    """Build segments through the policy gate and write releases."""
    from audiences.pipeline.build import build as run_build

    if not segments and not all_:
        raise UsageError("name at least one segment or pass --all", "e.g. audiences build --all")
    if segments and all_:
        raise UsageError("pass segment names or --all, not both")
    from audiences.core.lock import ProjectLock

    config = obj.config()
    with ProjectLock(config.state_dir / "lock"), progress_bar(not as_json) as step:
        results = run_build(
            config, list(segments) or None, as_of=parse_as_of(as_of), actor=by, progress=step
        )
    blocked = [r for r in results if r.blocked]
    if as_json:
        emit_json(
            {
                "builds": [r.to_dict() for r in results],
                "exit_code": EXIT_BLOCKED if blocked else EXIT_OK,
            }
        )
    else:
        from audiences.cli.display import print_builds

        print_builds(results)
    if blocked:
        sys.exit(EXIT_BLOCKED)


@cli.command()
@click.argument("build_id")
@click.option(
    "--format", "fmt", type=click.Choice(["html", "md", "json"]), default="md", show_default=True
)
@file_option("--out", help="Write to a file instead of stdout.")
@pass_ctx
def report(obj: Context, build_id: str, fmt: str, out: Path | None) -> None:
    """Print (or write) the compliance report of a build."""
    from audiences.pipeline.build import report_path

    text = report_path(obj.config(), build_id, fmt).read_text(encoding="utf-8")
    if out:
        from audiences.core.atomic import write_text

        write_text(out, text)
        click.echo(f"Wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.argument("segments", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every segment with an ad destination.")
@click.option("--as-of", "as_of", default=None)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def plan(
    obj: Context, segments: tuple[str, ...], all_: bool, as_of: str | None, as_json: bool
) -> None:
    """Show adds, removes and holds per destination; changes nothing anywhere."""
    from audiences.pipeline.sync import plan as run_plan

    if not segments and not all_:
        raise UsageError("name at least one segment or pass --all")
    results, plans = run_plan(obj.config(), list(segments) or None, as_of=parse_as_of(as_of))
    doc = {
        "plans": [p.summary() for p in plans],
        "blocked": [{"segment": r.segment, "reasons": r.reasons} for r in results if r.blocked],
    }
    if as_json:
        emit_json(doc)
        return
    from audiences.cli.display import print_plans

    print_plans(doc)


@cli.command()
@click.argument("segments", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every approved segment (for cron).")
@click.option("--full-refresh", is_flag=True, help="Replace each audience instead of diffing.")
@click.option("--as-of", "as_of", default=None)
@click.option("--by", default=None, help="Actor recorded in the audit log (default: OS user).")
@click.option("--json", "as_json", is_flag=True, help="One JSON summary on stdout.")
@file_option("--log-json", help="Append one JSON line per destination to this file.")
@file_option(
    "--checkpoint-key",
    exists=True,
    envvar="AUDIENCES_CHECKPOINT_KEY",
    help="Sign the audit head at the end with this approver key (env AUDIENCES_CHECKPOINT_KEY).",
)
@pass_ctx
def sync(
    obj: Context,
    segments: tuple[str, ...],
    all_: bool,
    full_refresh: bool,
    as_of: str | None,
    by: str | None,
    as_json: bool,
    log_json: Path | None,
    checkpoint_key: Path | None,
) -> None:
    """Build and push segments to their ad destinations (0 ok, 1 failed, 3 blocked, 75 locked)."""
    from audiences.core.lock import ProjectLock
    from audiences.pipeline.sync import sync as run_sync

    if not segments and not all_:
        raise UsageError("name at least one segment or pass --all")
    config = obj.config()
    with ProjectLock(config.state_dir / "lock"), progress_bar(not as_json) as step:
        report = run_sync(
            config,
            list(segments) or None,
            as_of=parse_as_of(as_of),
            actor=by,
            full_refresh=full_refresh,
            approved_only=all_,
            progress=step,
            checkpoint_key=checkpoint_key,
        )
    doc = report.to_dict()
    if log_json:
        with log_json.open("a", encoding="utf-8") as fh:
            for row in doc["results"]:
                fh.write(json.dumps(row, sort_keys=True, default=str) + "\n")
    if as_json:
        emit_json(doc)
    else:
        from audiences.cli.display import print_syncs

        print_syncs(doc)
    sys.exit(report.exit_code)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def status(obj: Context, as_json: bool) -> None:
    """Per segment and destination: last build and sync, members, adds, removes, errors."""
    from audiences.core.state import connect
    from audiences.pipeline.history import status as run_status

    conn = connect(obj.config().state_db)
    try:
        rows = run_status(conn)
    finally:
        conn.close()
    if as_json:
        emit_json({"status": rows})
        return
    from audiences.cli.display import print_status

    print_status(rows)


@cli.command()
@click.argument("segment")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def history(obj: Context, segment: str, limit: int, as_json: bool) -> None:
    """Builds and syncs of one segment, newest first."""
    from audiences.core.state import connect
    from audiences.pipeline.history import history as run_history

    conn = connect(obj.config().state_db)
    try:
        doc = run_history(conn, segment, limit=limit)
    finally:
        conn.close()
    if as_json:
        emit_json(doc)
        return
    from audiences.cli.display import print_history

    print_history(doc)
