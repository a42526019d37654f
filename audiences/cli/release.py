"""Release commands: ``build``, ``report``, ``plan``, ``sync``, ``status``, ``history``.

``build`` exits 3 when the policy blocks a segment; ``sync`` exits with its report's code
(0 ok, 1 failed, 3 blocked, 75 locked).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from audiences.cli.group import (
    Context,
    cli,
    emit_json,
    file_option,
    parse_as_of,
    pass_ctx,
    progress_bar,
    quiet_option,
)
from audiences.core.errors import EXIT_BLOCKED, EXIT_OK, UsageError


def marketer_view(obj: Context, doc: Any) -> Any:
    """``doc`` with every people count coarse (docs/privacy-insights.md, "Coarse figures"):
    plan, sync, status and history are marketer-facing; exact figures stay in the reports."""
    from policies.pack import load_pack
    from policies.privacy.coarse import coarsen, rounding

    return coarsen(doc, rounding(load_pack(obj.config())))


def _append_lines(path: Path, rows: list[Any]) -> None:
    """One JSON line per row, appended (a cron log: `--log-json` on build and sync)."""
    with path.open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True, default=str) + "\n")


def _with_held(row: dict[str, Any]) -> dict[str, Any]:
    """The row plus ``held`` (adds and removes held back), summed before coarsening."""
    return {**row, "held": row["held_adds"] + row["held_removes"]}


@cli.command()
@click.argument("segments", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Build every segment in segments/.")
@click.option(
    "--as-of",
    "as_of",
    default=None,
    help="Only today (YYYY-MM-DD): a build that releases judges people on the day data "
    "leaves; review another day with `plan --as-of`.",
)
@click.option("--by", default=None, help="Who runs the build (default: OS user).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@file_option("--log-json", help="Append one JSON line per segment built to this file.")
@quiet_option
@pass_ctx
def build(
    obj: Context,
    segments: tuple[str, ...],
    all_: bool,
    as_of: str | None,
    by: str | None,
    as_json: bool,
    log_json: Path | None,
) -> None:
    """Build segments through the policy gate and write releases."""
    from audiences.pipeline.build import build as run_build

    if not segments and not all_:
        raise UsageError("name at least one segment or pass --all", "e.g. audiences build --all")
    if segments and all_:
        raise UsageError("pass segment names or --all, not both")
    from audiences.core.lock import ProjectLock

    config = obj.config()
    with ProjectLock(config.state_dir / "lock"), progress_bar(not obj.quiet, "build") as step:
        results = run_build(
            config, list(segments) or None, as_of=parse_as_of(as_of), actor=by, progress=step
        )
    blocked = [r for r in results if r.blocked]
    if log_json:
        _append_lines(log_json, [r.to_dict() for r in results])
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
@click.argument("build_id", metavar="BUILD_ID|SEGMENT")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "md", "json"]),
    default="md",
    show_default=True,
    help="Report format.",
)
@file_option("--out", help="Write to a file instead of stdout.")
@pass_ctx
def report(obj: Context, build_id: str, fmt: str, out: Path | None) -> None:
    """Print (or write) the compliance report of a build, or of a segment's newest build,
    with the syncs that carried its releases."""
    from audiences.pipeline.evidence import report_document
    from policies.report import render

    text = render(report_document(obj.config(), build_id), fmt)
    if out:
        from audiences.core.atomic import write_text

        write_text(out, text)
        click.echo(f"Wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.argument("segments", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every segment with an ad destination.")
@click.option(
    "--as-of",
    "as_of",
    default=None,
    help="Review the segment's conditions on another day (YYYY-MM-DD); consent, "
    "authorizations, minors and suppression are still judged today.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@quiet_option
@pass_ctx
def plan(
    obj: Context, segments: tuple[str, ...], all_: bool, as_of: str | None, as_json: bool
) -> None:
    """Show adds, removes and holds per destination; changes nothing anywhere."""
    from audiences.pipeline.sync import plan as run_plan

    if not segments and not all_:
        raise UsageError("name at least one segment or pass --all")
    with progress_bar(not obj.quiet, "plan") as step:
        results, plans = run_plan(
            obj.config(), list(segments) or None, as_of=parse_as_of(as_of), progress=step
        )
    doc = marketer_view(
        obj,
        {
            "plans": [_with_held(p.summary()) for p in plans],
            "blocked": [{"segment": r.segment, "reasons": r.reasons} for r in results if r.blocked],
        },
    )
    code = EXIT_BLOCKED if doc["blocked"] else EXIT_OK
    if as_json:
        emit_json({**doc, "exit_code": code})
    else:
        from audiences.cli.display import print_plans

        print_plans(doc)
    sys.exit(code)  # 3 when a segment is blocked, like build


@cli.command()
@click.argument("segments", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every approved segment (for cron).")
@click.option("--full-refresh", is_flag=True, help="Replace each audience instead of diffing.")
@click.option(
    "--as-of", "as_of", default=None, help="Only today (YYYY-MM-DD): a sync releases data."
)
@click.option("--by", default=None, help="Actor recorded in the audit log (default: OS user).")
@click.option("--json", "as_json", is_flag=True, help="One JSON summary on stdout.")
@file_option("--log-json", help="Append one JSON line per destination to this file.")
@quiet_option
@file_option(
    "--checkpoint-key",
    exists=True,
    envvar="AUDIENCES_CHECKPOINT_KEY",
    help="Sign the audit head at the end with this key: a checkpoint-only key (`approvers add "
    "--checkpoints-only`) or an approver's (env AUDIENCES_CHECKPOINT_KEY).",
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
    with ProjectLock(config.state_dir / "lock"), progress_bar(not obj.quiet, "sync") as step:
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
    raw = report.to_dict()
    doc = marketer_view(obj, {**raw, "results": [_with_held(r) for r in raw["results"]]})
    if log_json:
        _append_lines(log_json, doc["results"])
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
    rows = marketer_view(obj, rows)
    if as_json:
        emit_json({"status": rows})
        return
    from audiences.cli.display import print_status

    print_status(rows)


@cli.command()
@click.argument("segment")
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=20,
    show_default=True,
    help="Newest entries to show.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def history(obj: Context, segment: str, limit: int, as_json: bool) -> None:
    """Builds and syncs of one segment, newest first."""
    from audiences.core.state import connect
    from audiences.pipeline.history import history as run_history

    conn = connect(obj.config().state_db)
    try:
        doc = marketer_view(obj, run_history(conn, segment, limit=limit))
    finally:
        conn.close()
    if as_json:
        emit_json(doc)
        return
    from audiences.cli.display import print_history

    print_history(doc)
