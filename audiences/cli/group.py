"""The click group ``cli``: ``--project``/``--debug``, the shared ``Context``, and the
mapping of errors to one line and an exit code; plus the helpers every command uses
(``emit_json``, ``parse_as_of``, ``progress_bar``).

Exit codes: 0 ok · 1 error · 2 usage · 3 blocked by policy · 75 another run holds the lock.
Errors are one line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import click

from audiences import __version__
from audiences.core.errors import EXIT_ERROR, EXIT_LOCKED, AudiencesError, UsageError


class Context:
    def __init__(self, project: Path, debug: bool) -> None:
        self.project = project
        self.debug = debug
        # `--quiet` (or AUDIENCES_QUIET=1): no progress lines or bar on stderr
        self.quiet = os.environ.get("AUDIENCES_QUIET", "") not in ("", "0")

    def config(self) -> Any:
        from audiences.core.config import load_config

        return load_config(self.project)


pass_ctx = click.make_pass_decorator(Context)


def file_option(
    *decls: str, exists: bool = False, **kwargs: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An option that names a file (not a folder), given to the command as a Path."""
    kind = click.Path(dir_okay=False, exists=exists, path_type=Path)
    return click.option(*decls, type=kind, **kwargs)


class AudiencesGroup(click.Group):
    """Turns every AudiencesError into one line and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = "--debug" in sys.argv[1:] or bool(ctx.params.get("debug"))
        # the subcommand's arguments (click hands them on and clears them)
        as_json = "--json" in [*ctx._protected_args, *ctx.args]
        try:
            return super().invoke(ctx)
        except AudiencesError as exc:
            if debug:
                # the traceback, then the same line and exit code as without --debug
                # (cron and systemd read 2, 3 and 75; --debug must not turn them into 1)
                import traceback

                traceback.print_exc(file=sys.stderr)
            click.echo(f"Error: {exc.message}", err=True)
            if as_json:  # scripts read stdout: one document on failure too
                emit_json({"ok": False, "error": _error_doc(exc)})
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


def _error_doc(exc: AudiencesError) -> dict[str, Any]:
    return {
        "code": type(exc).__name__,
        "message": exc.message,
        "what": exc.what,
        "fix": exc.fix,
        "where": exc.where,
        "exit_code": exc.exit_code,
    }


def emit_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


def parse_as_of(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--as-of {value!r} is not a date", "use YYYY-MM-DD") from None


def _quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    obj = ctx.find_object(Context)
    if value and obj is not None:
        obj.quiet = True


def quiet_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--quiet``: no progress on stderr (errors and results still print)."""
    return click.option(
        "--quiet",
        "-q",
        is_flag=True,
        expose_value=False,
        callback=_quiet,
        help="No progress lines or bar on stderr (also AUDIENCES_QUIET=1).",
    )(command)


@contextmanager
def progress_bar(
    enabled: bool, command: str = "audiences"
) -> Iterator[Callable[[str, float], None]]:
    """Progress of a long command on stderr: a rich bar on a terminal, one plain line per
    stage otherwise (cron, CI: time of day, the stage, seconds since the start — no
    personal data), nothing when ``enabled`` is false (``--quiet``). Never on stdout, so
    ``--json`` stays one document."""
    if not enabled:
        yield lambda _msg, _frac: None
        return
    if not sys.stderr.isatty():
        yield _stage_lines(command)
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


def _stage_lines(command: str) -> Callable[[str, float], None]:
    start, last = time.monotonic(), [""]

    def line(message: str, _fraction: float) -> None:
        if message == last[0]:
            return
        last[0] = message
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        elapsed = time.monotonic() - start
        text = f"done in {elapsed:.1f} s" if message == "done" else f"{message}… {elapsed:.1f} s"
        click.echo(f"{stamp} {command}: {text}", err=True)

    return line


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

    Build segments from CRM files or database tables (DuckDB, PostgreSQL), enforce
    the policy pack before anything leaves the system, and sync approved segments to
    Meta and Google Ads.
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # The Google Ads client logs whole requests (hashed identifiers) at DEBUG, and each
    # failed request ("IsFault: True") at INFO/WARNING: the connector already turns a
    # failure into one line, so the SDK's own log lines show only with --debug.
    logging.getLogger("google.ads.googleads").setLevel(logging.INFO if debug else logging.CRITICAL)
    ctx.obj = Context(project, debug)
