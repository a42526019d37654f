"""Human-readable tables for the terminal (rich, on stderr-friendly consoles)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def console() -> Console:
    return Console(soft_wrap=True)


def print_builds(results: list[Any]) -> None:
    table = Table(title="Builds", title_justify="left")
    table.add_column("segment")
    table.add_column("status")
    table.add_column("released to")
    table.add_column("build id")
    table.add_column("seconds", justify="right")
    for r in results:
        status = "[green]released[/]" if not r.blocked else "[red]blocked[/]"
        dests = ", ".join(sorted(r.released)) or "-"
        table.add_row(r.segment, status, dests, r.build_id, f"{r.seconds:.2f}")
    out = console()
    out.print(table)
    for r in results:
        for reason in r.reasons:
            out.print(f"[red]blocked[/] {r.segment}: {reason}", highlight=False)
        if r.reports:
            out.print(f"report: {r.reports.get('html')}", highlight=False)
