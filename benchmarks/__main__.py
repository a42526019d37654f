"""Run every benchmark in turn: ``python -m benchmarks [--quick] [--only NAME ...]``.

Each ``benchmarks/bench_<name>.py`` module's ``main(quick=...)`` runs and prints its own
table. A failing benchmark is reported and the others still run; the exit code is 1
when any failed.
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback
from pathlib import Path

from benchmarks import byte_compiled


def discover() -> list[str]:
    """Names (``bench_build``, ...) of the benchmark modules, sorted."""
    return sorted(p.stem for p in Path(__file__).resolve().parent.glob("bench_*.py"))


def _wanted(names: list[str], only: list[str] | None) -> list[str]:
    if not only:
        return names
    chosen = []
    for want in only:
        name = want if want.startswith("bench_") else f"bench_{want}"
        if name not in names:
            raise SystemExit(
                f"no benchmark named {want!r} — choose from: "
                + ", ".join(n.removeprefix("bench_") for n in names)
            )
        chosen.append(name)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (minutes, not tens)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this benchmark (e.g. build or bench_build); repeatable",
    )
    args = parser.parse_args(argv)
    names = _wanted(discover(), args.only)
    byte_compiled()  # (as `make` leaves the project)
    failed: list[str] = []
    started = time.perf_counter()
    for name in names:
        print(f"\n=== {name}{' (quick)' if args.quick else ''} ===", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            module.main(quick=args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            print(f"--- {name} FAILED", flush=True)
            continue
        print(f"--- {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    total = time.perf_counter() - started
    print(f"\n{len(names) - len(failed)}/{len(names)} benchmarks ran in {total:.0f} s", flush=True)
    if failed:
        print("failed: " + ", ".join(failed), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
