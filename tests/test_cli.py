"""The command line end to end: help everywhere, the whole job in order, JSON documents,
exit codes (0 ok · 1 error · 2 usage · 3 blocked) and one-line errors.

One project per module, made by the real commands (`init`, `sample-data`, `keygen`,
`approve`) on 20,000 synthetic contacts and a fixed ``--as-of``; no sandboxes.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from conftest import frozen_clock

from audiences import __version__
from audiences.cli import cli
from audiences.compliance.approvals import APPROVAL_KIND

AS_OF = "2025-06-15"


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on date.fromisoformat(AS_OF): the wall clock stops there (in this process)."""
    with frozen_clock(date.fromisoformat(AS_OF)):
        yield


ROWS = 20_000
SEED = 5
APPROVER = "dana.compliance"
# flu-shot-reminder (file, google: the Data Manager API; not meta, where it would leave a group
# under k_diff beside cardiology-lapsed) is large enough at 20,000 rows to pass k=100;
# newsletter-nyc is too small for it, so `build --all` exits 3.
RELEASED = "flu-shot-reminder"
BLOCKED = "newsletter-nyc"


def invoke(project: Path | None, *args: str) -> Result:
    prefix = ["-p", str(project)] if project is not None else []
    return CliRunner().invoke(cli, [*prefix, *args])


def ok(result: Result, code: int = 0) -> Result:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result


def json_doc(result: Result) -> Any:
    """The one JSON document on stdout (json.loads refuses trailing text)."""
    return json.loads(result.stdout)


def one_error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


class Workflow:
    def __init__(self, root: Path, key: Path) -> None:
        self.root = root
        self.key = key
        self.build_doc: dict[str, Any] = {}

    def cli(self, *args: str) -> Result:
        return invoke(self.root, *args)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.root / ".audiences" / "state.db")
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def released(self) -> dict[str, Any]:
        (doc,) = [b for b in self.build_doc["builds"] if b["segment"] == RELEASED]
        return doc


@pytest.fixture(scope="module", autouse=True)
def module_ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One privacy-budget ledger for the module: `flow` (module-scoped) spends into it."""
    from policies.privacy import ledger

    before = ledger.LEDGER_HOME
    ledger.LEDGER_HOME = tmp_path_factory.mktemp("cli-ledger")
    yield ledger.LEDGER_HOME
    ledger.LEDGER_HOME = before


@pytest.fixture(autouse=True)
def private_ledger(module_ledger: Path) -> Path:
    """Overrides conftest's per-test ledger: the tests read what `flow` spent."""
    return module_ledger


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Workflow:
    """init → sample-data → keygen → approve → build --all, through the CLI."""
    base = tmp_path_factory.mktemp("cli")
    root = base / "project"
    init = ok(invoke(None, "init", str(root)))
    assert "Created project" in init.stderr and init.stdout == ""
    sample = json_doc(
        ok(
            invoke(
                root, "sample-data", "--rows", str(ROWS), "--seed", str(SEED),
                "--as-of", AS_OF, "--format", "parquet", "--json",
            )
        )
    )  # fmt: skip
    assert sample["rows"] == ROWS and sample["as_of"] == AS_OF
    assert all(Path(p).exists() for paths in sample["files"].values() for p in paths)
    key = base / "keys" / "dana.key"
    keygen = json_doc(
        ok(invoke(root, "keygen", "--private", str(key), "--name", APPROVER, "--json"))
    )
    toml = root / "audiences.toml"
    text = toml.read_text(encoding="utf-8")
    marker = '# keys = { "dana.compliance" = "base64-public-key" }'
    assert marker in text
    toml.write_text(text.replace(marker, f"keys = {{ {keygen['toml']} }}"), encoding="utf-8")
    flow = Workflow(root, key)
    for segment in ("cardiology-lapsed", RELEASED, BLOCKED):
        ok(flow.cli("approve", segment, "--by", APPROVER, "--key", str(key)))
    result = flow.cli("build", "--all", "--as-of", AS_OF, "--json")
    flow.build_doc = json_doc(result)
    assert result.exit_code == flow.build_doc["exit_code"] == 3, result.stderr
    return flow


# ------------------------------------------------------------------------------ help
def all_commands(
    command: click.Command = cli, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command and subcommand (the root group first), walked from the click group."""
    found: list[tuple[tuple[str, ...], click.Command]] = [(path, command)]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            found.extend(all_commands(sub, (*path, name)))
    return found


COMMANDS = all_commands()


def test_the_group_has_the_documented_commands() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    documented = {
        "init", "sample-data", "validate", "schema", "preview", "overlap", "build", "report",
        "keygen", "approve", "revoke", "plan", "sync", "status", "history", "budget",
        "audit", "audit verify", "audit export", "sandbox",
    }  # fmt: skip
    assert documented <= names, documented - names


@pytest.mark.parametrize(
    "path", [path for path, _ in COMMANDS], ids=[" ".join(p) or "audiences" for p, _ in COMMANDS]
)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = ok(invoke(None, *path, "--help"))
    assert result.stdout.startswith("Usage: ")
    command = COMMANDS[[p for p, _ in COMMANDS].index(path)][1]
    summary = (command.help or "").strip().splitlines()
    assert summary and len(summary[0]) > 10, f"{path} has no help text"
    assert summary[0][:40] in " ".join(result.stdout.split())


def test_version() -> None:
    result = ok(invoke(None, "--version"))
    assert result.stdout.strip() == f"audiences, version {__version__}"


# ------------------------------------------------------------------------------ the job
def test_validate(flow: Workflow) -> None:
    human = ok(flow.cli("validate", "--as-of", AS_OF))
    segments = sorted(p.stem for p in (flow.root / "segments").glob("*.yaml"))
    assert [line.split()[1] for line in human.stdout.splitlines()] == segments
    assert f"{len(segments)} segment(s) valid; pack hipaa-marketing" in human.stderr
    doc = json_doc(ok(flow.cli("validate", "--as-of", AS_OF, "--json")))
    assert sorted(s["name"] for s in doc["segments"]) == segments
    for seg in doc["segments"]:  # the short digest shows 12 hex digits, like `approve`
        assert f"ok  {seg['name']}  ({seg['file']}, digest {seg['digest'][:19]})" in human.stdout
    assert doc["pack"]["name"] == "hipaa-marketing"
    assert all(s["digest"].startswith("sha256:") for s in doc["segments"])


def test_build_all_json(flow: Workflow) -> None:
    builds = {b["segment"]: b for b in flow.build_doc["builds"]}
    assert sorted(builds) == sorted(p.stem for p in (flow.root / "segments").glob("*.yaml"))
    released = builds[RELEASED]
    assert released["status"] == "released"
    assert released["released_to"] == ["file", "google"]
    assert released["reasons"] == []
    assert set(released["files"]["file"]) == {"parquet", "csv", "manifest"}
    assert set(released["reports"]) == {"html", "md", "json"}
    # marketers see a differentially private size, never the exact one
    members = released["members"]
    assert set(members) == {"value", "ci95", "epsilon"}
    low, high = members["ci95"]
    assert low <= members["value"] <= high
    blocked = builds[BLOCKED]
    assert blocked["status"] == "blocked" and blocked["released_to"] == []
    assert blocked["members"] is None and blocked["files"] == {}
    assert blocked["reasons"]
    assert all(re.match(r"[a-z0-9-]+ \[file\]: ", reason) for reason in blocked["reasons"])
    # a blocked build still writes its compliance report
    assert all(Path(p).exists() for p in blocked["reports"].values())


def test_build_blocked_prints_one_line_per_blocking_rule(flow: Workflow) -> None:
    result = ok(flow.cli("build", BLOCKED, "--as-of", AS_OF), 3)
    (row,) = flow.query(
        f"SELECT reasons FROM builds WHERE segment='{BLOCKED}' ORDER BY started_at DESC LIMIT 1"
    )
    reasons = json.loads(row[0])
    assert reasons
    lines = [line for line in result.stdout.splitlines() if line.startswith("blocked ")]
    assert lines == [f"blocked {BLOCKED}: {reason}" for reason in reasons]
    from policies.pack import builtin_pack

    rule_ids = {r.id for r in builtin_pack("hipaa-marketing").rules}
    for reason in reasons:
        assert reason.split(" ", 1)[0] in rule_ids, reason
    assert "report: " in result.stdout


@pytest.mark.parametrize("fmt", ["html", "md", "json"])
def test_report(flow: Workflow, fmt: str) -> None:
    build_id = flow.released()["build_id"]
    result = ok(flow.cli("report", build_id, "--format", fmt))
    assert build_id in result.stdout
    if fmt == "json":
        report = json.loads(result.stdout)
        assert report["segment"]["name"] == RELEASED
    elif fmt == "html":
        assert result.stdout.lstrip().lower().startswith("<!doctype html")
    else:
        assert RELEASED in result.stdout


def test_report_to_file_and_unknown_build(flow: Workflow, tmp_path: Path) -> None:
    build_id = flow.released()["build_id"]
    out = tmp_path / "report.md"
    ok(flow.cli("report", build_id, "--out", str(out)))
    assert build_id in out.read_text(encoding="utf-8")
    assert out.stat().st_mode & 0o777 == 0o600
    line = one_error_line(ok(flow.cli("report", "b-nope"), 1))
    assert "no build and no segment named 'b-nope'" in line and "audiences history" in line


def test_history(flow: Workflow) -> None:
    doc = json_doc(ok(flow.cli("history", RELEASED, "--json")))
    assert doc["segment"] == RELEASED
    ids = [b["build_id"] for b in doc["builds"]]
    assert flow.released()["build_id"] in ids
    assert {b["status"] for b in doc["builds"]} == {"released"}
    human = ok(flow.cli("history", RELEASED))
    assert flow.released()["build_id"] in human.stdout


def test_status(flow: Workflow) -> None:
    doc = json_doc(ok(flow.cli("status", "--json")))
    pairs = {(r["segment"], r["destination"]) for r in doc["status"]}
    assert {(RELEASED, d) for d in ("file", "google")} <= pairs
    assert (RELEASED, "meta") not in pairs
    assert all(r["build_status"] == "released" for r in doc["status"] if r["segment"] == RELEASED)
    assert RELEASED in ok(flow.cli("status")).stdout


def test_budget_lists_the_build_summaries(flow: Workflow) -> None:
    doc = json_doc(ok(flow.cli("budget", "--json")))
    queries = [e["query"] for e in doc["entries"]]
    assert "build summary count" in queries
    assert doc["policy"]["max_epsilon_per_query"] == 1.0
    spent = sum(e["epsilon"] for e in doc["entries"])
    assert doc["remaining"]["epsilon"] == pytest.approx(doc["policy"]["epsilon_per_period"] - spent)
    assert "budget:" in ok(flow.cli("budget")).stdout


def test_preview(flow: Workflow) -> None:
    doc = json_doc(
        ok(flow.cli("preview", RELEASED, "--epsilon", "0.5", "--as-of", AS_OF, "--json"))
    )
    assert doc["segment"] == RELEASED and doc["epsilon"] == 0.5
    assert set(doc["breakdowns"]) == {"age_band", "state", "sex"}
    human = ok(flow.cli("preview", RELEASED, "--epsilon", "0.25", "--as-of", AS_OF))
    assert f"{RELEASED}: about " in human.stdout and "budget left" in human.stdout


def test_overlap(flow: Workflow) -> None:
    names = [RELEASED, BLOCKED]
    doc = json_doc(ok(flow.cli("overlap", *names, "--epsilon", "0.5", "--as-of", AS_OF, "--json")))
    assert doc["segments"] == names
    assert [row["segment"] for row in doc["matrix"]] == names
    usage = ok(flow.cli("overlap", RELEASED, "--as-of", AS_OF), 2)
    assert "at least two segments" in one_error_line(usage)


def test_plan_changes_nothing(flow: Workflow) -> None:
    before = flow.query("SELECT count(*) FROM builds")
    exports = sorted((flow.root / "exports").rglob("*"))
    doc = json_doc(ok(flow.cli("plan", RELEASED, "--as-of", AS_OF, "--json")))
    plans = {p["destination"]: p for p in doc["plans"]}
    assert sorted(plans) == ["google"]  # the file destination is not synced
    # coarse figures (docs/privacy-insights.md): the whole eligible audience is to be added
    assert all(p["adds"] not in ("< 100",) and p["removes"] == "< 100" for p in plans.values())
    assert all(p["adds"] == p["release_members"] for p in plans.values())
    assert flow.query("SELECT count(*) FROM builds") == before
    assert sorted((flow.root / "exports").rglob("*")) == exports


def test_audit_verify_and_export(flow: Workflow, tmp_path: Path) -> None:
    doc = json_doc(ok(flow.cli("audit", "verify", "--json")))
    assert doc["ok"] is True
    out = tmp_path / "audit.jsonl"
    ok(flow.cli("audit", "export", "--out", str(out)))
    entries = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(entries) == doc["entries"]
    kinds = {entry["kind"] for entry in entries}
    assert {"build", "budget_spend", APPROVAL_KIND} <= kinds, kinds


def test_schema_is_json() -> None:
    doc = json_doc(ok(invoke(None, "schema")))
    assert doc["type"] == "object"


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "--json", "--as-of", AS_OF],
        ["build", RELEASED, "--json", "--as-of", AS_OF],
        ["preview", RELEASED, "--json", "--epsilon", "0.1", "--as-of", AS_OF],
        ["overlap", RELEASED, BLOCKED, "--json", "--epsilon", "0.1", "--as-of", AS_OF],
        ["plan", "--all", "--json", "--as-of", AS_OF],
        ["budget", "--json"],
        ["status", "--json"],
        ["history", RELEASED, "--json"],
        ["audit", "verify", "--json"],
    ],
    ids=lambda a: a[0] if a[0] != "audit" else "audit verify",
)
def test_json_is_one_document_on_stdout(flow: Workflow, args: list[str]) -> None:
    # plan exits 3 like build when a segment is blocked (newsletter-nyc is)
    result = ok(flow.cli(*args), 3 if args[0] == "plan" else 0)
    doc = json_doc(result)
    assert isinstance(doc, dict) and doc
    # nothing for humans on stdout: the document is the whole of it
    assert result.stdout.strip() == json.dumps(doc, indent=2, sort_keys=True, default=str)


def test_revoke_blocks_the_next_build(flow: Workflow) -> None:
    ok(flow.cli("revoke", RELEASED, "--by", APPROVER))
    try:
        doc = json_doc(ok(flow.cli("build", RELEASED, "--as-of", AS_OF, "--json"), 3))
        (build,) = doc["builds"]
        assert build["status"] == "blocked"
        assert build["reasons"][0].startswith("approval: ")
    finally:
        ok(flow.cli("approve", RELEASED, "--by", APPROVER, "--key", str(flow.key)))
    assert json_doc(ok(flow.cli("build", RELEASED, "--as-of", AS_OF, "--json")))["exit_code"] == 0


# ------------------------------------------------------------------------------ usage
@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["build"], r"name at least one segment or pass --all"),
        (["build", RELEASED, "--all"], r"pass segment names or --all, not both"),
        (["build", "--all", "--as-of", "2025-13-01"], r"--as-of '2025-13-01' is not a date"),
        (["build", "--all", "--as-of", "yesterday"], r"use YYYY-MM-DD"),
        (["preview", RELEASED, "--as-of", "15/06/2025"], r"is not a date"),
        (["plan"], r"name at least one segment or pass --all"),
        (["preview", RELEASED, "--epsilon", "0"], r"must be a positive finite number"),
    ],
)
def test_usage_errors_exit_2(flow: Workflow, args: list[str], pattern: str) -> None:
    result = ok(flow.cli(*args), 2)
    assert re.search(pattern, one_error_line(result))


@pytest.mark.parametrize(
    "args",
    [["build", "--nope"], ["no-such-command"], ["history"], ["report", "x", "--format", "pdf"]],
)
def test_click_usage_errors_exit_2(flow: Workflow, args: list[str]) -> None:
    result = ok(flow.cli(*args), 2)
    assert "Usage:" in result.stderr and "Traceback" not in result.output


def test_unknown_segment_suggests_a_name(flow: Workflow) -> None:
    line = one_error_line(ok(flow.cli("build", "flu-shot-reminde", "--as-of", AS_OF), 1))
    assert (
        "no segment named 'flu-shot-reminde'" in line and "did you mean 'flu-shot-reminder'" in line
    )


def test_no_project(tmp_path: Path) -> None:
    line = one_error_line(ok(invoke(tmp_path, "validate"), 1))
    assert "no audiences.toml" in line and "audiences init" in line


def test_init_refuses_an_existing_project(flow: Workflow) -> None:
    line = one_error_line(ok(invoke(None, "init", str(flow.root)), 1))
    assert "already exists" in line and "--force" in line


# ------------------------------------------------------------------------------ --debug
INTERNAL_ERROR = (
    "import sys, audiences.pipeline.insights as insights\n"
    "def broken(*args, **kwargs):\n"
    "    raise ZeroDivisionError('boom')\n"
    "insights.budget = broken\n"
    "from audiences.cli import main\n"
    "main()\n"
)


@pytest.mark.parametrize("debug", [False, True])
def test_internal_error_is_one_line_unless_debug(flow: Workflow, debug: bool) -> None:
    args = [sys.executable, "-c", INTERNAL_ERROR, *(["--debug"] if debug else [])]
    args += ["-p", str(flow.root), "budget"]
    proc = subprocess.run(
        args, capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "100"}
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    if debug:
        assert "Traceback (most recent call last)" in proc.stderr
        assert "ZeroDivisionError: boom" in proc.stderr
    else:
        assert proc.stderr.splitlines() == [
            "Error: internal error (ZeroDivisionError) — this is a bug in audiences; "
            "run again with --debug and report the traceback"
        ]


@pytest.mark.parametrize("where", ["front", "end"])
def test_debug_is_accepted_after_the_subcommand_too(flow: Workflow, where: str) -> None:
    args = [sys.executable, "-c", INTERNAL_ERROR, "-p", str(flow.root), "budget"]
    args = [*args, "--debug"] if where == "end" else [*args[:3], "--debug", *args[3:]]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "ZeroDivisionError: boom" in proc.stderr
    assert "No such option" not in proc.stderr


EXIT_NOW = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('exit handler ran', file=sys.stderr))\n"
    "from audiences.cli import _exit_now\n"
    "sys.stdout.write('x' * 200_000)\n"  # buffered, not yet flushed
    "_exit_now(sys.argv[1] if sys.argv[1] != 'none' else None)\n"
)


@pytest.mark.parametrize(
    ("code", "returncode", "message"),
    [("none", 0, ""), ("3", 1, "3"), ("message", 1, "message")],
)
def test_the_fast_exit_flushes_output_and_runs_exit_handlers(
    code: str, returncode: int, message: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_NOW, code], capture_output=True, text=True, check=False
    )
    assert proc.returncode == returncode
    assert proc.stdout == "x" * 200_000
    lines = proc.stderr.splitlines()
    assert lines == ([message] if message else []) + ["exit handler ran"]


def test_the_command_line_keeps_its_exit_codes_and_whole_output(flow: Workflow) -> None:
    run = [sys.executable, "-m", "audiences", "-p", str(flow.root)]
    ok = subprocess.run([*run, "schema"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0
    assert json.loads(ok.stdout)["title"]
    usage = subprocess.run([*run, "build"], capture_output=True, text=True, check=False)
    assert usage.returncode == 2
    assert usage.stderr.startswith("Error: name at least one segment or pass --all")


def test_debug_after_a_double_dash_is_left_alone() -> None:
    from audiences.cli import _debug_first

    assert _debug_first(["build", "x", "--debug"]) == ["--debug", "build", "x"]
    assert _debug_first(["build", "--", "--debug"]) == ["build", "--", "--debug"]
    assert _debug_first(["status"]) == ["status"]


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (["build"], 2, "Error: name at least one segment or pass --all"),
        (["report", "b-nope"], 1, "Error: no build and no segment named 'b-nope'"),
        (["build", "--all", "--as-of", "06/15/2025"], 2, "Error: --as-of '06/15/2025' is not"),
    ],
)
def test_debug_adds_the_traceback_and_keeps_the_exit_code(
    flow: Workflow, args: list[str], code: int, line: str
) -> None:
    result = CliRunner().invoke(cli, ["--debug", "-p", str(flow.root), *args])
    assert result.exit_code == code, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(line)
    assert result.stdout == ""
