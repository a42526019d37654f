"""Project commands: ``init``, ``sample-data``, ``validate``, ``columns``, ``schema``,
``sandbox``."""

from __future__ import annotations

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
from audiences.core.errors import UsageError


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Write into a folder that already has audiences.toml.")
@file_option(
    "--from",
    "from_",
    exists=True,
    help="Propose audiences.toml from your own contacts export (CSV, Parquet, NDJSON).",
)
@file_option("--events", exists=True, help="With --from: your events export (visits, clicks...).")
@click.option(
    "--pack",
    default="hipaa-marketing",
    show_default=True,
    help="With --from: the built-in policy pack to start from.",
)
@click.option("--json", "as_json", is_flag=True, help="With --from: print the proposal as JSON.")
def init(
    directory: Path,
    force: bool,
    from_: Path | None,
    events: Path | None,
    pack: str,
    as_json: bool,
) -> None:
    """Create a project: audiences.toml, segments/, policies/, .gitignore.

    With --from, audiences.toml is proposed from your CRM export: identity, consent and
    event columns mapped by name and content, types and date formats declared, and the
    columns and event types that look clinical listed as `unclassified` (validate fails
    until you classify them). No value of a person is copied into it.
    """
    if from_ is None:
        if events is not None:
            raise UsageError(
                "--events needs --from",
                "e.g. audiences init DIR --from contacts.csv --events events.csv",
            )
        from audiences.pipeline.project import init_project

        written = init_project(directory, force=force)
        click.echo(f"Created project in {directory} ({len(written)} files).", err=True)
        click.echo(f"Next: audiences -p {directory} sample-data --rows 100000", err=True)
        return
    from audiences.pipeline.scaffold import scaffold_with_pack

    written, proposal = scaffold_with_pack(directory, from_, events, pack=pack, force=force)
    if as_json:
        emit_json({"ok": True, "files": [str(p) for p in written], **proposal.to_dict()})
        return
    from audiences.cli.display import print_proposal

    print_proposal(proposal.to_dict())
    click.echo(f"Created project in {directory} ({len(written)} files).", err=True)
    click.echo(
        f"Next: check {directory}/audiences.toml (every TODO), then audiences -p {directory} "
        "validate",
        err=True,
    )


@cli.command("sample-data")
@click.option(
    "--rows",
    type=click.IntRange(1, 200_000_000),
    default=100_000,
    show_default=True,
    help="Contacts to generate.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same data)."
)
@click.option(
    "--abroad",
    type=click.IntRange(0, 100_000_000),
    default=0,
    show_default=True,
    help="Also write this many contacts living in the EEA and the UK, after the --rows "
    "ones (which stay the same).",
)
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
    help="File format(s) to write (repeat the option for both).",
    type=click.Choice(["parquet", "csv"]),
    multiple=True,
    default=("parquet", "csv"),
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document.")
@quiet_option
@pass_ctx
def sample_data(
    obj: Context,
    rows: int,
    seed: int,
    abroad: int,
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
    with progress_bar(not obj.quiet, "sample-data") as step:
        written = write(
            target, rows, seed=seed, as_of=day, formats=formats, progress=step, abroad=abroad
        )
    doc = {
        "rows": rows,
        "abroad": abroad,
        "seed": seed,
        "as_of": day.isoformat(),
        "files": {k: [str(p) for p in v] for k, v in written.items()},
    }
    if as_json:
        emit_json(doc)
    else:
        more = f" (and {abroad:,} in the EEA and the UK)" if abroad else ""
        click.echo(f"Wrote {rows:,} contacts{more} to {target}", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document, also on failure.")
@click.option("--as-of", "as_of", default=None, help="Reference day (YYYY-MM-DD).")
@quiet_option
@pass_ctx
@click.pass_context
def validate(ctx: click.Context, obj: Context, as_json: bool, as_of: str | None) -> None:
    """Check audiences.toml, the policy pack, every segment and the data itself.

    Reports every problem of every file (errors, then warnings); exits 1 on any error.
    """
    from audiences.pipeline.project import check_project

    with progress_bar(not obj.quiet, "validate") as step:
        report = check_project(obj.config(), as_of=parse_as_of(as_of), progress=step)
    if as_json:
        emit_json(report)
    else:
        _print_findings(report)
    if report["errors"]:
        ctx.exit(1)


def _print_findings(report: dict[str, Any]) -> None:
    for kind, findings in (("Error", report["errors"]), ("Warning", report["warnings"])):
        for f in findings:
            where = f"{f['file']}:{f['line']}" if f["line"] else (f["file"] or "")
            text = f"{where}: {f['message']}" if where else f["message"]
            click.echo(f"{kind}: {text} — {f['fix']}", err=True)
    if report["errors"]:
        return
    for seg in report["segments"]:
        click.echo(f"ok  {seg['name']}  ({seg['file']}, digest {seg['digest'][:19]})")
    click.echo(
        f"{len(report['segments'])} segment(s) valid; pack {report['pack']['name']} "
        f"{report['pack']['version']}",
        err=True,
    )


@cli.command()
@click.argument("source", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document.")
@click.option(
    "--identifiers",
    is_flag=True,
    help="Also count, per platform, the contacts' valid, empty and invalid identifiers "
    "(and why: a placeholder e-mail, a short phone…).",
)
@pass_ctx
def columns(obj: Context, source: str | None, as_json: bool, identifiers: bool) -> None:
    """The columns of the CRM sources: declared and inferred type, empty share, distinct
    values, role, and the values that occur at least k times (k: the pack's min size).

    With --identifiers, what Meta and Google would receive of each identifier: counts of
    records per outcome over the whole export, never values (a count below k: "< k")."""
    from audiences.pipeline.columns import columns_report
    from audiences.pipeline.project import min_size_k
    from policies.pack import load_pack

    config = obj.config()
    k = min_size_k(load_pack(config))
    doc = columns_report(config, source, k=k, identifiers=identifiers)
    if as_json:
        emit_json(doc)
        return
    from audiences.cli.display import print_columns

    print_columns(doc)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of segment files (for editors)."""
    from audiences.segments import segment_json_schema

    emit_json(segment_json_schema())


@cli.command()
@click.option("--meta-port", type=int, default=18765, show_default=True, help="Meta sandbox port.")
@click.option(
    "--google-port", type=int, default=18766, show_default=True, help="Google Ads sandbox port."
)
@pass_ctx
def sandbox(obj: Context, meta_port: int, google_port: int) -> None:
    """Serve the Meta and Google Ads sandboxes on 127.0.0.1 until Ctrl-C."""
    from audiences.demo.sandboxes import serve_forever

    serve_forever(obj.project, meta_port=meta_port, google_port=google_port)
