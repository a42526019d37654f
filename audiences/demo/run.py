"""`make demo`: the main job on bundled sample data with the embedded defaults.

Runs the real CLI, command by command, in ``./demo`` (recreated each time), against
the project's own sandbox ad platforms on 127.0.0.1 (started by this process):

init → sample-data (with people in the EEA and the UK) → the jurisdiction packs turned on
→ validate → keygen + approve (a compliance officer signs) → build --all (one segment is
too small and is blocked by policy, exit 3) → preview (differentially private figures) →
plan → sync --all (Meta and Google Ads sandboxes) → status → audit verify. Each command
is printed before it runs.

The project runs under ``hipaa-marketing`` plus the jurisdiction packs ``wa-mhmda``,
``gdpr-health`` and ``ccpa-sensitive`` (the template's commented ``packs`` line), and adds
one nationwide health segment (``diabetes-outreach``): the summary shows, per
jurisdiction, the people each jurisdiction rule kept out of its release and why, in
coarse figures (docs/privacy-insights.md, "Coarse figures").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from audiences.demo.sandboxes import SANDBOX_ENV, running

console = Console(width=None if sys.stdout.isatty() else 160)
ROWS = int(os.environ.get("AUDIENCES_DEMO_ROWS", "200000"))
APPROVER = "dana.compliance"
DEMO_LEDGER = Path("demo") / ".ledger"
_LAUNCH = (
    "import os, sys\n"
    "sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]\n"
    "from pathlib import Path\n"
    "from policies.privacy import ledger\n"
    "ledger.LEDGER_HOME = Path(sys.argv.pop(1))\n"
    "from audiences.cli import main\n"
    "main()\n"
)


def run(
    args: list[str], *, project: Path, expect: tuple[int, ...] = (0,), show: bool = True
) -> subprocess.CompletedProcess[str]:
    # The demo's synthetic data spends from a ledger of its own (./demo/.ledger), not the
    # account's: rerunning `make demo` must not use up the budget of real projects.
    cmd = [sys.executable, "-c", _LAUNCH, str(DEMO_LEDGER.resolve()), "-p", str(project), *args]
    console.print(f"\n[bold cyan]$ audiences -p {project} {' '.join(args)}[/]", highlight=False)
    env = {**os.environ, **{k: os.environ.get(k) or v for k, v in SANDBOX_ENV.items()}}
    env["AUDIENCES_QUIET"] = "1"  # output is shown after each step: stage lines add nothing
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if show:
        if proc.stdout.strip():
            console.print(proc.stdout.rstrip(), highlight=False, markup=False)
        if proc.stderr.strip():
            console.print(proc.stderr.rstrip(), highlight=False, markup=False)
    if proc.returncode not in expect:
        if not show:
            console.print(proc.stdout + proc.stderr, markup=False)
        raise SystemExit(f"demo step failed with exit code {proc.returncode}: {' '.join(args)}")
    return proc


def point_at_sandboxes(
    project: Path, meta_url: str, google_endpoint: str, data_manager_endpoint: str
) -> None:
    toml = project / "audiences.toml"
    text = toml.read_text(encoding="utf-8")
    text = re.sub(r'endpoint = "http://127\.0\.0\.1:\d+"', f'endpoint = "{meta_url}"', text)
    text = text.replace('endpoint = "localhost:18767"', f'endpoint = "{data_manager_endpoint}"')
    text = re.sub(r'endpoint = "localhost:\d+"', f'endpoint = "{google_endpoint}"', text)
    toml.write_text(text, encoding="utf-8")


# A health segment for the patients outside New York and New Jersey: Washington,
# California and EEA people among them, so the jurisdiction packs have people to judge.
# (Outside NY and NJ it shares nobody with cardiology-lapsed, the other Meta audience of
# the account: difference protection would refuse a small overlap.)
DIABETES = """\
name: diabetes-outreach
description: Adults with type 2 diabetes outside NY and NJ, for the telehealth program
destinations: [meta]
where:
  all:
    - age: {gte: 18}
    - diagnosis_codes: {contains: "E11*"}
    - any: [{state: {not_in: [NY, NJ]}}, {state: {is_null: true}}]
"""
SEGMENTS = ("cardiology-lapsed", "flu-shot-reminder", "newsletter-nyc", "diabetes-outreach")


def enable_jurisdiction_packs(project: Path) -> None:
    """Uncomment the template's ``packs`` line (the way the template documents; the
    ``ad_user_data`` / ``ad_personalization`` mapping gdpr-health reads is there already),
    and add the health segment."""
    toml = project / "audiences.toml"
    text = toml.read_text(encoding="utf-8")
    for line in ("# packs = [",):
        if text.count(line) != 1:
            raise SystemExit(f"the project template no longer has the line {line!r}")
        text = text.replace(line, line.removeprefix("# "))
    toml.write_text(text, encoding="utf-8")
    (project / "segments" / "diabetes-outreach.yaml").write_text(DIABETES, encoding="utf-8")
    console.print(
        "(turned on [policy] packs = hipaa-marketing + wa-mhmda + gdpr-health + "
        "ccpa-sensitive, added segments/diabetes-outreach.yaml)",
        highlight=False,
        markup=False,
    )


def add_approver_key(project: Path, line: str) -> None:
    toml = project / "audiences.toml"
    text = toml.read_text(encoding="utf-8")
    text = text.replace(
        '# keys = { "dana.compliance" = "base64-public-key" }', f"keys = {{ {line} }}"
    )
    toml.write_text(text, encoding="utf-8")


def main() -> None:
    started = time.perf_counter()
    project = Path("demo")
    if project.exists():
        shutil.rmtree(project)
    as_of = datetime.now(UTC).date().isoformat()
    keys = Path(tempfile.mkdtemp(prefix="audiences-demo-keys-"))  # outside the repo
    try:
        _set_up(project, as_of, keys)
        with running(project) as boxes:
            # the endpoints first: an approval binds the server the members go to
            point_at_sandboxes(
                project, boxes.meta_url, boxes.google_endpoint, boxes.data_manager_endpoint
            )
            _approve(project, keys)
            outcome = _build_and_sync(project, as_of)
            audiences = {
                "meta": {aid: len(boxes.meta.members(aid)) for aid in boxes.meta.audience_ids()},
                "google_ads": {ul: len(boxes.google.members(ul)) for ul in boxes.google.user_lists},
                "google_data_manager": {
                    ul: len(boxes.data_manager.members(ul)) for ul in boxes.data_manager.user_lists
                },
            }
    finally:
        shutil.rmtree(keys, ignore_errors=True)
    _print_summary(outcome, audiences)
    console.print(
        f"[bold]demo finished in {time.perf_counter() - started:.1f} s[/] (project in ./{project})"
    )


def _set_up(project: Path, as_of: str, keys: Path) -> None:
    """init → sample-data → validate → keygen (the public key into the config)."""
    run(["init", str(project)], project=Path("."))
    run(
        [
            "sample-data",
            "--rows",
            str(ROWS),
            "--seed",
            "7",
            "--as-of",
            as_of,
            "--format",
            "parquet",
            "--abroad",
            str(max(ROWS // 100, 1)),
        ],
        project=project,
    )
    enable_jurisdiction_packs(project)
    run(["validate", "--as-of", as_of], project=project)
    proc = run(
        ["keygen", "--private", str(keys / "dana.key"), "--name", APPROVER, "--json"],
        project=project,
        show=False,
    )
    add_approver_key(project, json.loads(proc.stdout)["toml"])
    console.print(
        f"(added {APPROVER}'s public key to [approvers] keys; the private key stays in {keys})",
        highlight=False,
        markup=False,
    )


def _approve(project: Path, keys: Path) -> None:
    """review → approve, each segment (the officer signs what the review showed)."""
    for segment in SEGMENTS:
        officer = ["--by", APPROVER, "--key", str(keys / "dana.key")]
        run(["review", segment, *officer], project=project, expect=(0, 3))  # what is signed
        run(
            [
                "approve",
                segment,
                "--by",
                APPROVER,
                "--key",
                str(keys / "dana.key"),
                "--note",
                "reviewed for the demo",
            ],
            project=project,
        )


@dataclass(frozen=True)
class _Outcome:
    """The ``build --all`` and ``sync --all`` exit codes and JSON summaries."""

    build_exit: int
    builds: list[dict[str, Any]]
    sync_exit: int
    synced: dict[str, Any]


def _build_and_sync(project: Path, as_of: str) -> _Outcome:
    """build → preview → plan → sync → status → audit verify, against the sandboxes."""
    build = run(
        ["build", "--all", "--as-of", as_of, "--json"],
        project=project,
        expect=(0, 3),
        show=False,
    )
    builds = json.loads(build.stdout)["builds"]
    run(
        ["preview", "flu-shot-reminder", "--epsilon", "0.5", "--as-of", as_of],
        project=project,
    )
    run(["plan", "--all", "--as-of", as_of], project=project, expect=(0, 3))  # 3: one is blocked
    sync = run(["sync", "--all", "--as-of", as_of, "--json"], project=project, show=False)
    synced = json.loads(sync.stdout)
    run(["status"], project=project)
    run(["audit", "verify"], project=project)
    return _Outcome(build.returncode, builds, sync.returncode, synced)


def _print_summary(outcome: _Outcome, audiences: dict[str, dict[str, int]]) -> None:
    """One row per segment (build, DP size, why / report, sync), exit codes, audit head."""
    table = Table(title=f"Demo: {ROWS:,} synthetic contacts", title_justify="left")
    for column in ("segment", "build", "people (DP)", "why / report", "sync"):
        table.add_column(column)
    for b in outcome.builds:
        status = "[green]released[/]" if b["status"] == "released" else "[red]blocked (exit 3)[/]"
        why = "; ".join(b["reasons"]) if b["reasons"] else b["reports"].get("html", "")
        syncs = [
            f"{r['destination']}: {r['status']}"
            for r in outcome.synced["results"]
            if r["segment"] == b["segment"]
        ]
        members = b.get("members") or {}
        size = f"~{members['value']:,}" if "value" in members else "-"
        table.add_row(b["segment"], status, size, escape(why), ", ".join(syncs) or "-")
    console.print(table)
    console.print(
        f"build exit code {outcome.build_exit} (3 = a segment was blocked by policy); "
        f"sync exit code {outcome.sync_exit}",
        highlight=False,
    )
    console.print(f"sandbox audiences (people): {audiences}", highlight=False)
    for line in jurisdiction_lines(outcome.builds):
        console.print(line, highlight=False, markup=False)
    head = outcome.synced.get("audit_head") or {}
    console.print(f"audit head {head.get('seq')}:{head.get('hash')}", highlight=False)


def jurisdiction_lines(builds: list[dict[str, Any]]) -> list[str]:
    """Per released build, per jurisdiction: the people each jurisdiction rule kept out and
    why, from the build's compliance report, in coarse figures (the pack's k)."""
    from policies.privacy.coarse import DEFAULT_K, coarse_count
    from policies.report.view import jurisdictions

    lines = []
    for b in builds:
        path = (b.get("reports") or {}).get("json")
        if b["status"] != "released" or not path:
            continue
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        ks = [v["evidence"].get("pack_k") for v in report["verdicts"]]
        k = max((int(x) for x in ks if isinstance(x, int)), default=DEFAULT_K)
        kept_out = [
            f"  {j.label}: {coarse_count(int(x.matched.replace(',', '')), k, k)} people — "
            f"{x.removes.lower()} ({x.pack} rule {x.id})"
            for j in jurisdictions(report)
            for x in j.rules
            if x.matched[:1].isdigit() and int(x.matched.replace(",", ""))
        ]
        if kept_out:
            lines += [f"{b['segment']} (released under {report['pack']['name']}):", *kept_out]
            lines.append(
                f"  why, with each rule's statute and date: {Path(path).with_suffix('.html')}"
            )
    if lines:
        lines.insert(
            0,
            "People each jurisdiction rule keeps out (each rule counted on its own: an earlier "
            "rule may exclude them too; coarse figures, below k shows as '< k'):",
        )
    return lines


if __name__ == "__main__":
    main()
