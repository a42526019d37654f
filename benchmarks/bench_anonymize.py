"""Benchmark: k-anonymity lattice search and k-anonymity check (ours vs pycanon).

    python -m benchmarks.bench_anonymize          # 1M rows
    python -m benchmarks.bench_anonymize --quick  # 100k rows

The baseline is pycanon's ``k_anonymity`` (pandas) on the same exported rows (the pandas
conversion is not timed).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import polars as pl

from policies.anonymize import (
    age_hierarchy,
    anonymize,
    categorical_hierarchy,
    date_hierarchy,
    k_anonymity,
    zip_hierarchy,
)


def contacts(rows: int, seed: int = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    zips = [f"{z:05d}" for z in rng.integers(1000, 99999, 3000)]
    return pl.DataFrame(
        {
            "age": rng.integers(18, 95, rows),
            "zip": rng.choice(zips, rows),
            "birth_date": pl.Series(rng.integers(0, 365 * 70, rows)).cast(pl.Int32).cast(pl.Date),
            "sex": rng.choice(["F", "M"], rows),
            "insurance": rng.choice(["commercial", "medicare", "medicaid", "self_pay"], rows),
        }
    )


def _timed(function, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main(quick: bool = False) -> None:
    rows = 100_000 if quick else 1_000_000
    data = contacts(rows)
    qis = {
        "age": age_hierarchy(),
        "zip": zip_hierarchy(),
        "birth_date": date_hierarchy(),
        "sex": categorical_hierarchy(),
    }
    result, search_seconds = _timed(anonymize, data, qis, k=10, suppression_limit=0.05)
    out = result.frame
    names = list(qis)
    ours_k, ours_seconds = _timed(k_anonymity, out, names)
    print(f"lattice search, k=10, 4 QIs, {rows:,} rows")
    print(f"  chosen node            {result.levels}")
    print(
        f"  nodes evaluated        {result.nodes_evaluated} of {result.nodes_total}; "
        f"suppressed {result.metrics.suppressed:,}; loss {result.metrics.information_loss:.3f}"
    )
    print(f"  search time            {search_seconds:8.2f} s   (target <= 10 s)")
    print()
    print(f"{'k-anonymity check on the export':34} {'rows':>10} {'seconds':>10} {'k':>5}")
    print(f"{'ours (polars group_by)':34} {out.height:>10,} {ours_seconds:>10.3f} {ours_k:>5}")
    try:
        from pycanon import anonymity
    except ImportError:  # pragma: no cover - pycanon is a test dependency
        print("pycanon not installed: baseline skipped")
        return
    frame = out.to_pandas()
    canon_k, canon_seconds = _timed(anonymity.k_anonymity, frame, names)
    print(
        f"{'pycanon k_anonymity (baseline)':34} {out.height:>10,} {canon_seconds:>10.3f} {canon_k:>5}"
    )
    if canon_k != ours_k:
        raise SystemExit(f"pycanon (k={canon_k}) and ours (k={ours_k}) disagree")
    print(f"speed-up: {canon_seconds / ours_seconds:,.0f}x (target >= 10x)")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
