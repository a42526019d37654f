"""The ``audiences`` command line. Thin: parse options, call one library function, format.

Exit codes: 0 ok · 1 error · 2 usage · 3 blocked by policy · 75 another run holds the lock.
Every command that reports figures takes ``--json`` (one JSON document on stdout).
Errors are one line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import click

from audiences import __version__
from audiences.errors import EXIT_BLOCKED, EXIT_ERROR, EXIT_OK, AudiencesError, UsageError


class Context:
    def __init__(self, project: Path, debug: bool) -> None:
        self.project = project
        self.debug = debug

    def config(self) -> Any:
        from audiences.config import load_config

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
                raise
            click.echo(f"Error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo(
                "Error: interrupted — nothing was half-written; run the command again", err=True
            )
            ctx.exit(130)
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
    from audiences.project import init_project

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

    from audiences.sample import write

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
    from audiences.project import validate_project

    report = validate_project(obj.config(), as_of=parse_as_of(as_of))
    if as_json:
        emit_json(report)
    else:
        for seg in report["segments"]:
            click.echo(f"ok  {seg['name']}  ({seg['file']}, digest {seg['digest'][:12]})")
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
    from audiences.build import build as run_build

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
        from audiences.display import print_builds

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
    from audiences.build import report_path

    text = report_path(obj.config(), build_id, fmt).read_text(encoding="utf-8")
    if out:
        from audiences.atomic import write_text

        write_text(out, text)
        click.echo(f"Wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


def main() -> None:
    cli(prog_name="audiences")


if __name__ == "__main__":
    main()
