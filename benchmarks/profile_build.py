"""Where a build's time goes: the stage timers behind benchmarks/README's breakdowns.

Each round makes a fresh project over the sample (as ``bench_build``'s engine pairs do)
and runs, each in a child process, the first build (it computes the opt-out index) and
then a second segment over the same data (the index is read back from the state
folder). The child is the real ``audiences build`` command with the functions of
:data:`STAGES` wrapped in timers; nothing else changes. A timer's time is inclusive and
is kept under the stages open around it (``candidates / duplicate-of-opt-out flag /
records read back``), so a stage's "own work" row is its time less its timed parts — for the
candidates, mostly the segment's query. The table gives each stage's median and
min–max over the rounds, with the wall time (from the parent) and the child's peak RSS,
and beside each stage its *cores*: the process's CPU seconds (every thread) over the
stage's wall seconds, the median over the rounds — 2.00 on a 2-core machine is a stage
that kept both cores busy, 1.00 one that left one idle or waited half the time.

    python -m benchmarks.profile_build [--rows N] [--rounds R]

``--rows`` defaults to 10M (the sample is generated once, as for ``bench_build``); the
stage names are this module's :data:`STAGES`. A timer adds four clock reads and two dict
updates per call, and each stage is called once or twice per build.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from benchmarks import (
    DATA_DIR,
    ROOT,
    STOP_CLOCK,
    byte_compiled,
    check,
    run_child,
    sample_crm,
    stopped_clock,
)
from benchmarks.bench_build import SECOND_SEGMENT, SEGMENT, spread, two_segment_project

# (module, function or Class.method, label): the stages a build is split into
STAGES: tuple[tuple[str, str, str], ...] = (
    ("audiences.pipeline.select", "collect_candidates", "candidates"),
    ("audiences.pipeline.export_checks", "check_whole_export", "export check"),
    ("audiences.crm.linkage", "compute_opt_out_index", "opt-out index: compute"),
    ("audiences.pipeline.optout_index", "StateIndexStore.save", "opt-out index: save"),
    ("audiences.pipeline.optout_index", "StateIndexStore.load", "opt-out index: load"),
    ("audiences.crm.linkage", "flag_duplicates_of_opt_outs", "duplicate-of-opt-out flag"),
    ("audiences.crm.linkage", "coarse_keys", "coarse keys"),
    ("audiences.crm.linkage", "_meeting_rows", "index rows meeting a candidate"),
    ("audiences.crm.linkage", "_records_at", "records read back"),
    ("audiences.crm.linkage", "exact_keys", "exact keys"),
    ("audiences.pipeline.select", "flag_linked_requests", "request flags"),
    ("policies.gate", "evaluate", "gate"),
    ("policies.gate", "_filter_verdicts", "rules"),
    ("audiences.crm.linkage", "person_keys", "people (person_keys)"),
    ("policies.gate", "_eligible_members", "eligible members"),
    ("policies.gate", "_check_destinations", "destination checks"),
    ("policies.gate", "_hashed", "hashing"),
    ("policies.gate", "_mint_releases", "releases sealed"),
    ("policies.gate", "record", "gate record"),
    ("audiences.pipeline.build", "noisy_size", "DP count"),
    ("audiences.pipeline.build", "write_file_destinations", "files"),
    ("audiences.pipeline.build", "write_reports", "reports"),
)

START = "process start and imports"
IN_PROCESS = "in the process"

_CHILD = (
    """
import json, sys, time
started = time.perf_counter()
"""
    + STOP_CLOCK
    + """
import importlib
import audiences.cli  # first, as the command: it sets polars' allocator
import audiences.pipeline.build, audiences.pipeline.select, policies.gate
STAGES = json.loads(sys.argv[1])
totals, cpu, order, stack = {}, {}, {}, []

def timed(label, fn):
    def wrapper(*args, **kwargs):
        stack.append(label)
        path = " / ".join(stack)
        order.setdefault(path, len(order))
        t, c = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[path] = totals.get(path, 0.0) + time.perf_counter() - t
            cpu[path] = cpu.get(path, 0.0) + time.process_time() - c
            stack.pop()
    wrapper.__wrapped__ = fn
    return wrapper

for module_name, name, label in STAGES:
    module = importlib.import_module(module_name)
    owner, _, attr = name.rpartition(".")
    holder = getattr(module, owner) if owner else module
    original = getattr(holder, attr)
    wrapped = timed(label, original)
    setattr(holder, attr, wrapped)
    if not owner:  # every module that imported the function by name calls it too
        for other in list(sys.modules.values()):
            if getattr(other, "__name__", "").split(".")[0] in ("audiences", "policies"):
                for key, value in list(vars(other).items()):
                    if value is original:
                        setattr(other, key, wrapped)
from audiences.cli import _exit_now, cli
main_at, cpu_at = time.perf_counter() - started, time.process_time()
code = 0
try:
    cli.main(args=sys.argv[2:], prog_name="audiences")
except SystemExit as exc:
    code = exc.code or 0
profile = {"totals": totals, "order": order, "cpu": cpu, "cpu_start": cpu_at,
           "start": main_at, "in_process": time.perf_counter() - started,
           "cpu_in_process": time.process_time()}
sys.stderr.write("\\nPROFILE " + json.dumps(profile) + "\\n")
_exit_now(code)
"""
)


@dataclass
class Profile:
    """One build's stage times (seconds, inclusive, keyed by the path of open stages),
    and the CPU seconds of the whole process (every thread) over the same spans."""

    wall: float
    peak_rss_bytes: int
    totals: dict[str, float]
    order: dict[str, int]
    start: float
    in_process: float
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_start: float = 0.0
    cpu_in_process: float = 0.0  # (from the process's start: imports included)

    def as_cpu(self) -> Profile:
        """The same profile in CPU seconds (the parent's wall row: the child's CPU)."""
        return replace(
            self,
            wall=self.cpu_in_process,
            totals=self.cpu,
            start=self.cpu_start,
            in_process=self.cpu_in_process,
        )


def profile_build(project: Path, segment: str) -> Profile:
    """One ``audiences build SEGMENT --json`` in a child with the stage timers."""
    args = [sys.executable, "-c", _CHILD, json.dumps(STAGES), "-p", str(project)]
    args += ["build", segment, "--json"]
    run = check(run_child(args, cwd=ROOT), "audiences build")
    found = [line for line in run.stderr.splitlines() if line.startswith("PROFILE ")]
    if not found:
        raise RuntimeError("the build printed no PROFILE line: " + run.stderr[-400:])
    data = json.loads(found[-1].removeprefix("PROFILE "))
    result = json.loads(run.stdout)["builds"][0]
    if result["status"] != "released":
        raise RuntimeError(f"{segment} was blocked: {result['reasons']}")
    return Profile(
        wall=run.seconds,
        peak_rss_bytes=run.peak_rss_bytes,
        totals=data["totals"],
        order=data["order"],
        start=data["start"],
        in_process=data["in_process"],
        cpu=data["cpu"],
        cpu_start=data["cpu_start"],
        cpu_in_process=data["cpu_in_process"],
    )


def rows_of(
    profiles: list[Profile], shape: list[Profile] | None = None
) -> list[tuple[str, str, list[float] | None]]:
    """The table's rows for one job: (key, indented label, seconds per round, or None where
    no round reached the stage). The stages are ``shape``'s (default: ``profiles``'), in
    the order they first opened (the first round's order, then what later rounds added);
    each stage with timed parts is followed by its own work (its time less its parts'); a
    stage one round did not reach counts 0 s in that round."""
    ordered: list[str] = []
    for p in shape or profiles:
        ordered += [
            path for path in sorted(p.order, key=p.order.__getitem__) if path not in ordered
        ]
    rows: list[tuple[str, str, list[float] | None]] = [
        ("wall", "wall (the parent's clock)", [p.wall for p in profiles]),
        ("start", START, [p.start for p in profiles]),
        ("in_process", IN_PROCESS, [p.in_process for p in profiles]),
    ]

    def seconds(path: str) -> list[float]:
        return [p.totals.get(path, 0.0) for p in profiles]

    def reached(path: str) -> bool:
        return any(path in p.totals for p in profiles)

    def children(path: str) -> list[str]:
        depth = path.count(" / ") + 1
        return [c for c in ordered if c.startswith(path + " / ") and c.count(" / ") == depth]

    def add(path: str) -> None:
        depth = path.count(" / ")
        label = "  " * (depth + 1) + path.rsplit(" / ", 1)[-1]
        rows.append((path, label, seconds(path) if reached(path) else None))
        kids = children(path)
        for kid in kids:
            add(kid)
        if kids:
            own = [
                total - sum(seconds(kid)[i] for kid in kids)
                for i, total in enumerate(seconds(path))
            ]
            label = "  " * (depth + 2) + "(its own work)"
            rows.append((f"{path} / (own)", label, own if reached(path) else None))

    top = [path for path in ordered if " / " not in path]
    for path in top:
        add(path)
    rest = [p.in_process - p.start - sum(p.totals.get(path, 0.0) for path in top) for p in profiles]
    rows.append(("rest", "  the rest (configuration, state, audit, output)", rest))
    return rows


# below this many seconds a stage's cores are not shown (two clock reads' noise)
_SHORTEST_FOR_CORES = 0.02


def cores_of(
    profiles: list[Profile], shape: list[Profile] | None = None
) -> dict[str, float | None]:
    """Per row of :func:`rows_of`, the median over the rounds of CPU seconds / wall
    seconds: how many of the machine's cores the stage kept busy (None where no round
    reached the stage, it took under 0.02 s, or no CPU time was recorded)."""
    walls = rows_of(profiles, shape)
    cpus = rows_of([p.as_cpu() for p in profiles], shape)
    out: dict[str, float | None] = {}
    for (key, _, wall), (_, _, cpu) in zip(walls, cpus, strict=True):
        if wall is None or cpu is None:
            out[key] = None
            continue
        ratios = [
            c / w
            for w, c, p in zip(wall, cpu, profiles, strict=True)
            if w >= _SHORTEST_FOR_CORES and p.cpu_in_process > 0
        ]
        out[key] = statistics.median(ratios) if ratios else None
    return out


def _cell(values: list[float]) -> str:
    """A table cell: one round's value alone (its range says nothing), else the spread."""
    return f"{values[0]:.2f}" if len(values) == 1 else spread(values)


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(jobs: dict[str, list[Profile]]) -> str:
    """The stage table: per job, median (min–max) seconds over the rounds and the cores
    the stage kept busy (:func:`cores_of`)."""
    shape = [p for profiles in jobs.values() for p in profiles]
    columns = [rows_of(profiles, shape) for profiles in jobs.values()]
    cores = [cores_of(profiles, shape) for profiles in jobs.values()]
    width = max(len(label) for _, label, _ in columns[0]) + 2
    head = f"{'stage (s)':<{width}}" + "".join(f"{job:>24}{'cores':>7}" for job in jobs)
    lines = [head, "-" * len(head)]
    for i, (key, label, _) in enumerate(columns[0]):
        line = f"{label:<{width}}"
        for rows, busy in zip(columns, cores, strict=True):
            values, ratio = rows[i][2], busy[key]
            line += f"{'-' if values is None else _cell(values):>24}"
            line += f"{'' if ratio is None else f'{ratio:.2f}':>7}"
        lines.append(line.rstrip())
    rss = "".join(
        f"{_cell([p.peak_rss_bytes / 1e9 for p in profiles]) + ' GB':>24}{'':>7}"
        for profiles in jobs.values()
    )
    lines.append(f"{'peak RSS of the child':<{width}}{rss}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_build", description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000, help="sample contacts")
    parser.add_argument("--rounds", type=int, default=3, help="fresh projects, one after another")
    args = parser.parse_args(argv)
    if args.rows < 1000 or args.rounds < 1:
        parser.error("--rows must be at least 1000 and --rounds at least 1")
    byte_compiled()  # (as `make` leaves the project: the children import, not compile)
    with stopped_clock():  # the approvals are signed on the day the builds release
        contacts, events = sample_crm(args.rows)
        load_before = os.getloadavg()[0]
        started = dt.datetime.now(dt.UTC)
        jobs: dict[str, list[Profile]] = {"first build": [], "second segment": []}
        for _ in range(args.rounds):
            folder = DATA_DIR / f"profile-project-{args.rows}"
            project = two_segment_project(folder, contacts, events)
            jobs["first build"].append(profile_build(project, SEGMENT))
            jobs["second segment"].append(profile_build(project, SECOND_SEGMENT))
    print(
        f"{args.rows:,} contacts, {args.rounds} round(s), commit {_commit()}, "
        f"{started:%Y-%m-%d %H:%M} UTC, load {load_before:.1f} → {os.getloadavg()[0]:.1f}"
    )
    print(table(jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
