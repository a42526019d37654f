"""Benchmarks: ``python -m benchmarks [--quick] [--only NAME]`` (``make bench``).

Each ``benchmarks/bench_<area>.py`` exposes ``main(quick: bool = False) -> None`` and
prints a table with a baseline measured in the same run. This package holds the two
things several of them share:

* :func:`sample_crm` — the synthetic CRM of :mod:`audiences.demo.sample` written once as
  Parquet under ``benchmarks/.data/`` (gitignored) and reused, keyed by (rows, seed,
  generator digest): a changed generator makes a new sample;
* :func:`run_child` — run a command in a child process and return its wall time and
  *its own* peak RSS (``os.wait4``), so a figure never includes the parent's memory;
* :func:`stopped_clock` / :data:`STOP_CLOCK` — the wall clock stopped at noon UTC on
  :data:`AS_OF`, in this process / at the top of a child's ``-c`` script. A release is
  judged on ``audiences.core.clock.today()`` and refuses any other day; the samples are
  generated for ``AS_OF``, so benchmarks stop the clock in their own processes (the
  sanctioned way, as the tests do), never through a flag or a variable;
* :func:`approver` / :func:`trust_and_approve` — the one-time human step under
  ``hipaa-marketing``, done untimed in setup: a key pair outside any work tree, its
  public key under ``[approvers] keys``, each benchmark segment approved;
* :data:`LEDGER` — the DP ledger and custody folder of the run (removed at exit).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(__file__).resolve().parent / ".data"
AS_OF = dt.date(2025, 6, 1)  # every benchmark builds "as of" this day: results are repeatable

__all__ = [
    "AS_OF",
    "DATA_DIR",
    "LEDGER",
    "ROOT",
    "STOP_CLOCK",
    "Approver",
    "ChildRun",
    "approver",
    "generator_digest",
    "run_child",
    "sample_crm",
    "stopped_clock",
    "trust_and_approve",
]

# The DP ledger and the custody store of a benchmark run (policies.privacy.ledger): a
# folder of this process, removed when it exits, never the OS account's. Benchmark
# projects are made again at the same paths by a new key each run, and must neither pin
# the trust of their accounts nor spend the budget of real projects (as `make demo`).
LEDGER = Path(tempfile.mkdtemp(prefix="audiences-bench-ledger-"))


def _use_own_ledger() -> None:
    import atexit

    from policies.privacy import ledger

    ledger.LEDGER_HOME = LEDGER
    atexit.register(shutil.rmtree, LEDGER, True)


_use_own_ledger()

# The first lines of a child's ``-c`` script: the same stopped clock as :func:`stopped_clock`,
# and the run's own ledger folder.
STOP_CLOCK = f"""
import datetime as _dt
from pathlib import Path as _Path
from audiences.core import clock as _clock
from policies.privacy import ledger as _ledger
_clock.now = lambda: _dt.datetime({AS_OF.year}, {AS_OF.month}, {AS_OF.day}, 12, tzinfo=_dt.UTC)
_ledger.LEDGER_HOME = _Path({str(LEDGER)!r})
"""


@contextlib.contextmanager
def stopped_clock() -> Iterator[None]:
    """This process's wall clock stopped at noon UTC on :data:`AS_OF` while inside."""
    from unittest import mock

    from audiences.core import clock

    noon = dt.datetime(AS_OF.year, AS_OF.month, AS_OF.day, 12, tzinfo=dt.UTC)
    with mock.patch.object(clock, "now", lambda: noon):
        yield


@dataclass(frozen=True)
class Approver:
    name: str
    private_key: Path
    public_base64: str


_APPROVER: list[Approver] = []


def approver() -> Approver:
    """A compliance officer's key pair for this benchmark process, made once in a
    temporary folder outside any git work tree (removed when the process exits)."""
    if not _APPROVER:
        import atexit

        from audiences.compliance.keys import generate_keypair

        folder = Path(tempfile.mkdtemp(prefix="audiences-bench-keys-"))
        atexit.register(shutil.rmtree, folder, True)
        pair = generate_keypair(folder / "bench.key", folder / "bench.pub")
        _APPROVER.append(Approver("bench.officer", pair.private_path, pair.public_base64))
    return _APPROVER[0]


def trust_and_approve(project: Path, segments: list[str]) -> None:
    """List :func:`approver`'s public key under ``[approvers] keys`` in the project's
    audiences.toml, then approve each segment with the real ``audiences approve``
    (in-process). Call it once the project's configuration is final: an approval binds
    the effective policy."""
    from click.testing import CliRunner

    from audiences.cli import cli

    officer = approver()
    toml = project / "audiences.toml"
    text = toml.read_text(encoding="utf-8")
    if text.count("[approvers]") != 1:
        raise RuntimeError(f"{toml}: expected one [approvers] table")
    line = f'keys = {{ "{officer.name}" = "{officer.public_base64}" }}'
    toml.write_text(text.replace("[approvers]", f"[approvers]\n{line}"), encoding="utf-8")
    for segment in segments:
        args = ["-p", str(project), "approve", segment, "--by", officer.name]
        result = CliRunner().invoke(cli, [*args, "--key", str(officer.private_key)])
        if result.exit_code != 0:
            raise RuntimeError(
                f"approving {segment} failed (exit {result.exit_code}): "
                f"{result.output}{result.exception or ''}"
            )


@dataclass(frozen=True)
class ChildRun:
    stdout: str
    stderr: str
    seconds: float
    peak_rss_bytes: int
    returncode: int


def run_child(
    args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> ChildRun:
    """Run ``args``; wall time (perf_counter) and the child's own peak RSS.

    The peak is the child's ``VmHWM`` (``/proc/<pid>/status``), read every 20 ms while it
    runs: the high-water mark of its own address space, which starts afresh at ``exec``.
    ``ru_maxrss`` from ``wait4`` is not that: Linux carries the forked copy's high-water
    mark across ``exec``, so a child of a 3 GB benchmark process reported at least 3 GB
    (measured 2026-12-05: ``python -c pass`` 0.02 GB from a small parent, 3.02 GB from one
    holding 3 GB). Growth in a child's last 20 ms can be missed; where ``/proc`` is
    missing (macOS) ``ru_maxrss`` is used.

    Raises ``RuntimeError`` with the child's stderr tail when it fails.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        status_file = Path(f"/proc/{proc.pid}/status")
        hwm = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            hwm = max(hwm, _vm_hwm(status_file))
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    peak = hwm if hwm else int(usage.ru_maxrss) * scale
    return ChildRun(stdout, stderr, seconds, peak, proc.returncode)


def _vm_hwm(status_file: Path) -> int:
    """The process's peak resident set in bytes (``VmHWM``), 0 if it cannot be read."""
    try:
        for line in status_file.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def check(run: ChildRun, what: str, ok: tuple[int, ...] = (0,)) -> ChildRun:
    if run.returncode not in ok:
        tail = "\n".join(run.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{what} failed with exit code {run.returncode}:\n{tail}")
    return run


def generator_digest() -> str:
    """12 hex digits that change whenever the sample generator or the chunking changes.

    SHA-256 of the generator module's file (``audiences/demo/sample.py``, found through the
    module, not a hard-coded path) and of :func:`_generate`'s source: a cached sample
    made by an older generator is never reused (it silently skewed release sizes once).
    """
    from audiences.demo import sample

    digest = hashlib.sha256(Path(inspect.getfile(sample)).read_bytes())
    digest.update(inspect.getsource(_generate).encode())
    return digest.hexdigest()[:12]


def byte_compiled() -> None:
    """Compile the project's modules to bytecode, untimed, as ``make`` does (and as a pip
    install leaves a package). Where PYTHONDONTWRITEBYTECODE is set, as on the machines
    these benchmarks run on, every measured child of an uncompiled checkout (a worktree,
    say) compiled them again: 0.15 s of each process's start."""
    import compileall
    import py_compile

    for package in ("audiences", "policies", "connectors"):
        done = compileall.compile_dir(
            ROOT / package,
            quiet=1,
            workers=0,
            invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
        )
        if not done:
            raise RuntimeError(f"{package} does not compile")


def sample_crm(rows: int, seed: int = 0) -> tuple[Path, Path]:
    """Paths of ``contacts.parquet`` and ``events.parquet`` for (rows, seed), made once.

    The folder is ``crm-{rows}-{seed}-{generator_digest()}``; samples of the same
    (rows, seed) by another generator are deleted when a new one is made.

    Generated by one ``audiences.demo.sample.write`` call in a child process (its memory is
    returned when it exits).
    """
    folder = DATA_DIR / f"crm-{rows}-{seed}-{generator_digest()}"
    contacts, events = folder / "contacts.parquet", folder / "events.parquet"
    if contacts.exists() and events.exists():
        return contacts, events
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for stale in [DATA_DIR / f"crm-{rows}-{seed}", *DATA_DIR.glob(f"crm-{rows}-{seed}-*")]:
        if stale.is_dir() and stale != folder:
            shutil.rmtree(stale)  # made by an older generator
    print(f"  generating {rows:,} sample contacts into {folder} (once) ...", flush=True)
    work = Path(tempfile.mkdtemp(prefix=f".crm-{rows}-{seed}-", dir=DATA_DIR))
    try:
        code = (
            "import sys; from pathlib import Path; from benchmarks import _generate; "
            "_generate(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))"
        )
        run = run_child([sys.executable, "-c", code, str(work), str(rows), str(seed)], cwd=ROOT)
        check(run, "sample data generation")
        print(
            f"  generated in {run.seconds:.0f} s (peak RSS {run.peak_rss_bytes / 2**30:.1f} GB)",
            flush=True,
        )
        if folder.exists():
            shutil.rmtree(folder)
        work.rename(folder)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return contacts, events


def _generate(out: Path, rows: int, seed: int) -> None:
    # One generator call for every size: a person's mailbox and phone are unique only
    # within one call (person numbers restart in each call), so samples stitched from
    # independently seeded chunks shared identifiers between unrelated people and the
    # duplicate-of-opt-out rule excluded half of a 10M segment. 10M takes ~1 minute and
    # ~11 GB peak in the child.
    from audiences.demo import sample

    sample.write(out, rows, seed=seed, as_of=AS_OF, formats=["parquet"])
