"""Progress of long commands when stderr is not a terminal (cron, CI): one plain line per
stage on stderr (time of day, command, stage, seconds), nothing on stdout that would break
``--json``, no personal data or exact counts of people; ``--quiet`` (or
``AUDIENCES_QUIET=1``) silences them. conftest.py sets AUDIENCES_QUIET for the other tests;
here it is unset.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from audiences.cli import cli

LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<command>[a-z-]+): (?P<stage>.+) [\d.]+ s$")


@pytest.fixture(autouse=True)
def _progress_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("AUDIENCES_QUIET", raising=False)
    yield


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("progress") / "clinic"
    runner = CliRunner()
    assert runner.invoke(cli, ["init", str(root)]).exit_code == 0
    made = runner.invoke(cli, ["-p", str(root), "sample-data", "--rows", "1500", "--quiet"])
    assert made.exit_code == 0 and made.stderr.splitlines() == [
        f"Wrote 1,500 contacts to {root / 'data'}"
    ]
    return root


def stages(result: Result, command: str) -> list[str]:
    """The progress lines of ``command`` on stderr (each must be one)."""
    out = []
    for line in result.stderr.splitlines():
        match = LINE.match(line)
        if match and match["command"] == command:
            out.append(match["stage"])
    return out


def test_sample_data_in_a_subprocess_prints_stages_with_row_counts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AUDIENCES_QUIET"}
    args = [sys.executable, "-m", "audiences", "-p", str(tmp_path), "sample-data"]
    args += ["--rows", "2000", "--format", "csv", "--json"]
    proc = subprocess.run(args, capture_output=True, text=True, check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"] == 2000  # stdout: the one document
    lines = proc.stderr.splitlines()
    assert all(LINE.match(line) for line in lines), lines
    assert [LINE.match(line)["stage"] for line in lines][:2] == [  # type: ignore[index]
        "generating 2,000 contacts and their events…",
        "writing contacts.csv (2,000 rows)…",
    ]
    quiet = subprocess.run([*args, "--quiet"], capture_output=True, text=True, env=env)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_build_prints_stages_keeps_json_and_logs_one_line_per_segment(
    project: Path, tmp_path: Path
) -> None:
    log = tmp_path / "build.jsonl"
    result = CliRunner().invoke(
        cli, ["-p", str(project), "build", "--all", "--json", "--log-json", str(log)]
    )
    assert result.exit_code in (0, 3), result.output
    doc = json.loads(result.stdout)  # nothing else on stdout
    names = sorted(b["segment"] for b in doc["builds"])
    seen = stages(result, "build")
    assert seen[0] == "loading sources…" and seen[-1].startswith("done in")
    assert {f"{n}: selecting members…" for n in names} <= set(seen)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["segment"] for r in rows) == names
    quiet = CliRunner().invoke(cli, ["-p", str(project), "build", "--all", "--json", "-q"])
    assert stages(quiet, "build") == [] and json.loads(quiet.stdout)["builds"]
    os.environ["AUDIENCES_QUIET"] = "1"  # undone by the autouse fixture's monkeypatch
    by_env = CliRunner().invoke(cli, ["-p", str(project), "plan", "--all", "--json"])
    assert stages(by_env, "plan") == [] and "plans" in json.loads(by_env.stdout)


def test_validate_preview_and_plan_print_stages_and_no_figures(project: Path) -> None:
    checked = CliRunner().invoke(cli, ["-p", str(project), "validate", "--json"])
    assert checked.exit_code == 0 and json.loads(checked.stdout)["ok"]
    assert stages(checked, "validate") == [
        "policy pack and segments…",
        "reading sources and checking their values…",
        "checking 3 segment(s) against the data…",
    ]
    shown = CliRunner().invoke(
        cli, ["-p", str(project), "preview", "flu-shot-reminder", "--json", "--epsilon", "0.1"]
    )
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["segment"] == "flu-shot-reminder"
    assert stages(shown, "preview") == [
        "reading sources…",
        "flu-shot-reminder: checking against the data…",
        "flu-shot-reminder: selecting members…",
        "flu-shot-reminder: noisy counts…",  # the exact count is never printed
    ]
    planned = CliRunner().invoke(cli, ["-p", str(project), "plan", "--all", "--json"])
    assert planned.exit_code in (0, 3) and "plans" in json.loads(planned.stdout)
    assert stages(planned, "plan")[0] == "loading sources…"


def test_a_failing_command_keeps_its_json_document_and_error_line(project: Path) -> None:
    result = CliRunner().invoke(cli, ["-p", str(project), "preview", "nope", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["ok"] is False
    assert result.stderr.splitlines()[-1].startswith("Error: no segment named 'nope'")
