"""The ``audiences`` command line. Thin: parse options, call one library function, format.

Exit codes: 0 ok · 1 error · 2 usage · 3 blocked by policy · 75 another run holds the lock.
Every command that reports figures takes ``--json`` (one JSON document on stdout).
Errors are one line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any, NoReturn

import click

from audiences import __version__
from audiences.core.errors import (
    EXIT_BLOCKED,
    EXIT_ERROR,
    EXIT_LOCKED,
    EXIT_OK,
    AudiencesError,
    UsageError,
)


class Context:
    def __init__(self, project: Path, debug: bool) -> None:
        self.project = project
        self.debug = debug

    def config(self) -> Any:
        from audiences.core.config import load_config

        return load_config(self.project)


pass_ctx = click.make_pass_decorator(Context)


class AudiencesGroup(click.Group):
    """Turns every AudiencesError into one line and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = "--debug" in sys.argv[1:] or bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except AudiencesError as exc:
            if debug:
                # the traceback, then the same line and exit code as without --debug
                # (cron and systemd read 2, 3 and 75; --debug must not turn them into 1)
                import traceback

                traceback.print_exc(file=sys.stderr)
            click.echo(f"Error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo(
                "Error: interrupted — nothing was half-written; run the command again", err=True
            )
            ctx.exit(130)
        except sqlite3.OperationalError as exc:
            if debug:
                raise
            if "locked" in str(exc) or "busy" in str(exc):
                click.echo(
                    "Error: the state database is locked by another process — wait for it to "
                    "finish (see `audiences status`) and run again; nothing was changed",
                    err=True,
                )
                ctx.exit(EXIT_LOCKED)
            click.echo(
                f"Error: state database error ({str(exc).splitlines()[0][:120]}) — check "
                "the disk and .audiences/state.db; restore it from a backup if it is damaged",
                err=True,
            )
            ctx.exit(EXIT_ERROR)
        except Exception as exc:
            if debug:
                raise
            click.echo(
                f"Error: internal error ({type(exc).__name__}) — this is a bug in audiences; "
                "run again with --debug and report the traceback",
                err=True,
            )
            ctx.exit(EXIT_ERROR)


def emit_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


def parse_as_of(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--as-of {value!r} is not a date", "use YYYY-MM-DD") from None


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[str, float], None]]:
    """A rich progress bar on stderr for interactive runs; silent otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield lambda _msg, _frac: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        transient=True,
        console=_stderr_console(),
    ) as bar:
        task = bar.add_task("starting", total=1.0)
        yield lambda msg, frac: bar.update(task, description=msg, completed=frac)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@click.group(cls=AudiencesGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--project",
    "-p",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="Project folder (holds audiences.toml).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs (never secrets).")
@click.version_option(__version__, prog_name="audiences")
@click.pass_context
def cli(ctx: click.Context, project: Path, debug: bool) -> None:
    """Privacy-gated healthcare audiences from first-party CRM data.

    Build segments from CRM files, enforce the policy pack before anything leaves
    the system, and sync approved segments to Meta and Google Ads.
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # The Google Ads client logs whole requests (hashed identifiers) at DEBUG.
    logging.getLogger("google.ads.googleads.client").setLevel(logging.INFO)
    ctx.obj = Context(project, debug)


# ---------------------------------------------------------------------------- project
@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Write into a folder that already has audiences.toml.")
def init(directory: Path, force: bool) -> None:
    """Create a project: audiences.toml, segments/, policies/, .gitignore."""
    from audiences.pipeline.project import init_project

    written = init_project(directory, force=force)
    click.echo(f"Created project in {directory} ({len(written)} files).", err=True)
    click.echo(f"Next: audiences -p {directory} sample-data --rows 100000", err=True)


@cli.command("sample-data")
@click.option(
    "--rows",
    type=click.IntRange(1, 200_000_000),
    default=100_000,
    show_default=True,
    help="Contacts to generate.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder [default: PROJECT/data].",
)
@click.option("--as-of", "as_of", default=None, help="Reference day (YYYY-MM-DD) [default: today].")
@click.option(
    "--format",
    "formats",
    type=click.Choice(["parquet", "csv"]),
    multiple=True,
    default=("parquet", "csv"),
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document.")
@pass_ctx
def sample_data(
    obj: Context,
    rows: int,
    seed: int,
    out: Path | None,
    as_of: str | None,
    formats: tuple[str, ...],
    as_json: bool,
) -> None:
    """Write a synthetic healthcare CRM (contacts and events)."""
    from datetime import UTC, datetime

    from audiences.demo.sample import write

    day = parse_as_of(as_of) or datetime.now(UTC).date()
    target = out or (obj.project / "data")
    written = write(target, rows, seed=seed, as_of=day, formats=formats)
    doc = {
        "rows": rows,
        "seed": seed,
        "as_of": day.isoformat(),
        "files": {k: [str(p) for p in v] for k, v in written.items()},
    }
    if as_json:
        emit_json(doc)
    else:
        click.echo(f"Wrote {rows:,} contacts to {target}", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--as-of", "as_of", default=None, help="Reference day (YYYY-MM-DD).")
@pass_ctx
def validate(obj: Context, as_json: bool, as_of: str | None) -> None:
    """Check audiences.toml, the policy pack and every segment against the data schema."""
    from audiences.pipeline.project import validate_project

    report = validate_project(obj.config(), as_of=parse_as_of(as_of))
    if as_json:
        emit_json(report)
    else:
        for seg in report["segments"]:
            click.echo(f"ok  {seg['name']}  ({seg['file']}, digest {seg['digest'][:19]})")
        click.echo(
            f"{len(report['segments'])} segment(s) valid; pack {report['pack']['name']} "
            f"{report['pack']['version']}",
            err=True,
        )


@cli.command()
def schema() -> None:
    """Print the JSON Schema of segment files (for editors)."""
    from audiences.segments import segment_json_schema

    emit_json(segment_json_schema())


# ---------------------------------------------------------------------------- build
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
    config = obj.config()
    with progress_bar(not as_json) as step:
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
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to a file instead of stdout.",
)
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


# ---------------------------------------------------------------------------- insights
@cli.command()
@click.argument("segment")
@click.option("--epsilon", type=float, default=None, help="Privacy budget for this preview.")
@click.option("--as-of", "as_of", default=None, help="Reference day (YYYY-MM-DD).")
@click.option("--by", default=None, help="Who asks (default: OS user); recorded in the ledger.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def preview(
    obj: Context,
    segment: str,
    epsilon: float | None,
    as_of: str | None,
    by: str | None,
    as_json: bool,
) -> None:
    """Differentially private size and breakdowns of a segment."""
    from audiences.pipeline.insights import preview as run_preview

    result = run_preview(obj.config(), segment, epsilon=epsilon, as_of=parse_as_of(as_of), actor=by)
    doc = result.to_dict()
    if as_json:
        emit_json(doc)
        return
    from audiences.cli.display import print_preview

    print_preview(doc)


@cli.command()
@click.argument("segments", nargs=-1, required=True)
@click.option("--epsilon", type=float, default=None)
@click.option("--as-of", "as_of", default=None)
@click.option("--by", default=None)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def overlap(
    obj: Context,
    segments: tuple[str, ...],
    epsilon: float | None,
    as_of: str | None,
    by: str | None,
    as_json: bool,
) -> None:
    """Differentially private overlap matrix of two or more segments."""
    from audiences.pipeline.insights import overlap as run_overlap

    doc = run_overlap(
        obj.config(), list(segments), epsilon=epsilon, as_of=parse_as_of(as_of), actor=by
    )
    if as_json:
        emit_json(doc)
        return
    from audiences.cli.display import print_overlap

    print_overlap(doc)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def budget(obj: Context, as_json: bool) -> None:
    """Show the privacy budget ledger and what remains."""
    from audiences.pipeline.insights import budget as run_budget

    doc = run_budget(obj.config())
    if as_json:
        emit_json(doc)
        return
    from audiences.cli.display import print_budget

    print_budget(doc)


# ---------------------------------------------------------------------------- sync
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
@click.option(
    "--log-json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Append one JSON line per destination to this file.",
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


@cli.command()
@click.option("--meta-port", type=int, default=18765, show_default=True)
@click.option("--google-port", type=int, default=18766, show_default=True)
@pass_ctx
def sandbox(obj: Context, meta_port: int, google_port: int) -> None:
    """Serve the Meta and Google Ads sandboxes on 127.0.0.1 until Ctrl-C."""
    from audiences.demo.sandboxes import serve_forever

    serve_forever(obj.project, meta_port=meta_port, google_port=google_port)


# ---------------------------------------------------------------------------- compliance
@cli.command()
@click.option(
    "--private",
    "private_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the private key (outside the repo).",
)
@click.option(
    "--public",
    "public_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the public key [default: PRIVATE.pub].",
)
@click.option("--name", default=None, help="Approver name for the audiences.toml line.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def keygen(
    obj: Context, private_path: Path, public_path: Path | None, name: str | None, as_json: bool
) -> None:
    """Make an Ed25519 key pair for a compliance officer who approves segments."""
    from audiences.compliance.keys import generate_keypair

    public_path = public_path or private_path.with_name(private_path.name + ".pub")
    pair = generate_keypair(private_path, public_path, project_dir=obj.project)
    who = name or "your.name"
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
    click.echo("Add this line under [approvers] keys in audiences.toml:", err=True)
    click.echo(doc["toml"])


def _segment_and_pack(config: Any, name: str) -> tuple[Any, Any]:
    from audiences.pipeline.select import select_segments
    from policies.pack import load_pack

    (segment,) = select_segments(config, [name])
    return segment, load_pack(config)


@cli.command()
@click.argument("segment")
@click.option("--by", required=True, help="Approver name, as listed in [approvers] keys.")
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="The approver's private key.",
)
@click.option("--note", default=None)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def approve(
    obj: Context, segment: str, by: str, key_path: Path, note: str | None, as_json: bool
) -> None:
    """Sign the approval of a segment's exact definition, pack and destinations."""
    from audiences.compliance import workflow as compliance
    from audiences.core.state import connect
    from audiences.pipeline.project import validate_project

    config = obj.config()
    validate_project(config, only=[segment])
    seg, pack = _segment_and_pack(config, segment)
    conn = connect(config.state_db)
    try:
        approval = compliance.approve(conn, config, seg, pack, by=by, key_path=key_path, note=note)
    finally:
        conn.close()
    doc = {
        "segment": seg.name,
        "segment_digest": seg.digest,
        "policy_digest": pack.digest,
        "destinations": list(seg.destinations),
        "approver": by,
        "key_id": approval.key_id,
    }
    if as_json:
        emit_json(doc)
    else:
        click.echo(
            f"Approved {seg.name} ({seg.digest[:19]}) for {', '.join(seg.destinations)} by {by}.",
            err=True,
        )


@cli.command()
@click.argument("segment")
@click.option("--by", default=None, help="Who revokes (default: OS user).")
@pass_ctx
def revoke(obj: Context, segment: str, by: str | None) -> None:
    """Revoke a segment's approval (syncs refuse it until approved again)."""
    from audiences.compliance.approvals import revoke as run_revoke
    from audiences.core.actor import actor_name
    from audiences.core.state import connect

    conn = connect(obj.config().state_db)
    try:
        run_revoke(conn, segment, actor_name(by))
    finally:
        conn.close()
    click.echo(f"Revoked the approval of {segment}.", err=True)


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
    from audiences.core.state import connect

    config = obj.config()
    conn = connect(config.state_db)
    try:
        result = audit_log.verify(
            conn,
            anchors=[audit_log.parse_anchor(a) for a in anchors],
            public_keys=dict(config.approvers.keys),
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
    else:
        click.echo(
            f"Error: audit log broken at entry {result.first_bad_seq}: {result.reason}", err=True
        )
    if not result.ok:
        sys.exit(EXIT_ERROR)


@audit.command("export")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
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
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="An approver's private key.",
)
@click.option("--by", default=None, help="Who signs (default: OS user).")
@pass_ctx
def audit_checkpoint(obj: Context, key_path: Path, by: str | None) -> None:
    """Sign the current head of the audit log with an approver's key."""
    from audiences.compliance import audit as audit_log
    from audiences.compliance.keys import load_private_key
    from audiences.core.actor import actor_name
    from audiences.core.state import connect

    conn = connect(obj.config().state_db)
    try:
        cp = audit_log.checkpoint(conn, load_private_key(key_path), actor=actor_name(by))
    finally:
        conn.close()
    click.echo(f"Signed checkpoint at entry {cp.seq}", err=True)


def main() -> None:
    try:
        cli(args=_debug_first(sys.argv[1:]), prog_name="audiences")
    except SystemExit as exc:
        _exit_now(exc.code)
    _exit_now(0)


def _exit_now(code: int | str | None) -> NoReturn:
    """Leave the process the way ``sys.exit`` would, minus tearing the heap down.

    The exit handlers run and the output streams are flushed, but the interpreter does
    not free object by object what a 10M-row build leaves in memory (half a second of
    ``madvise`` calls, for nothing: the process ends). Everything a command writes is
    closed or committed by the command itself before it returns.
    """
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`audiences history | head`)
            code = code or 1
    os._exit(code or 0)


def _debug_first(args: list[str]) -> list[str]:
    """Accept ``--debug`` anywhere (``audiences build x --debug`` as well as
    ``audiences --debug build x``): it is a group option, so move it to the front."""
    end = args.index("--") if "--" in args else len(args)
    if "--debug" not in args[:end]:
        return args
    rest = [a for a in args[:end] if a != "--debug"]
    return ["--debug", *rest, *args[end:]]


if __name__ == "__main__":
    main()
