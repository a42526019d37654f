"""Insight commands (differentially private, charged to the budget ledger): ``preview``,
``overlap``, ``budget``."""

from __future__ import annotations

import click

from audiences.cli.group import (
    Context,
    cli,
    emit_json,
    parse_as_of,
    pass_ctx,
    progress_bar,
    quiet_option,
)


@cli.command()
@click.argument("segment")
@click.option("--epsilon", type=float, default=None, help="Privacy budget for this preview.")
@click.option("--as-of", "as_of", default=None, help="Reference day (YYYY-MM-DD).")
@click.option("--by", default=None, help="Who asks (default: OS user); recorded in the ledger.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@quiet_option
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

    with progress_bar(not obj.quiet, "preview") as step:
        result = run_preview(
            obj.config(),
            segment,
            epsilon=epsilon,
            as_of=parse_as_of(as_of),
            actor=by,
            progress=step,
        )
    doc = result.to_dict()
    if as_json:
        emit_json(doc)
        return
    from audiences.cli.display import print_preview

    print_preview(doc)


@cli.command()
@click.argument("segments", nargs=-1, required=True)
@click.option("--epsilon", type=float, default=None, help="Privacy budget for this overlap.")
@click.option("--as-of", "as_of", default=None, help="Reference day (YYYY-MM-DD).")
@click.option("--by", default=None, help="Who asks (default: OS user); recorded in the ledger.")
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
