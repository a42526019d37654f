"""Benchmark: DP preview (count + 20-cell breakdown) on 1M contacts, cold and warm.

    python -m benchmarks.bench_dp          # 1M contacts
    python -m benchmarks.bench_dp --quick  # 100k contacts

Baseline: the stock OpenDP Context API on the same data and budget —
``Context.compositor(split_by_weights=...)`` then ``context.query()...release()``, which
binary-searches the noise scale for every query (``LazyFrameQuery.resolve``) and hands the
raw string columns to OpenDP. Ours: ``policies.privacy.dp.preview`` (explicit scale checked
against OpenDP's privacy map, Enum-coded columns, one adaptive compositor).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import opendp.prelude as dp
import polars as pl

from policies.privacy.dp import age_band_expr, age_band_keys, preview

EPSILON = 1.0


def contacts(rows: int, seed: int = 11) -> pl.LazyFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "contact_id": [f"C{i:09d}" for i in range(rows)],
            "age": rng.integers(0, 100, rows),
            "state": rng.choice(["NY", "NJ", "CT", "PA", "MA"], rows),
            "sex": rng.choice(["F", "M"], rows),
        }
    ).lazy()


def ours(lf: pl.LazyFrame) -> float:
    start = time.perf_counter()
    result = preview(
        lf,
        {"age_band": (age_band_expr("age", 5, start=0, top=95), age_band_keys(5, start=0, top=95))},
        epsilon_total=EPSILON,
    )
    elapsed = time.perf_counter() - start
    assert result.breakdowns["age_band"].height == 20
    return elapsed


def stock_opendp(lf: pl.LazyFrame) -> float:
    start = time.perf_counter()
    keys = age_band_keys(5, start=0, top=95)
    data = lf.with_columns(age_band_expr("age", 5, start=0, top=95).alias("age_band"))
    context = dp.Context.compositor(
        data=data,
        privacy_unit=dp.unit_of(contributions=1),
        privacy_loss=dp.loss_of(epsilon=EPSILON),
        split_by_weights=[1, 1],
    )
    context.query().select(dp.len(signed=True)).release().collect()
    released = (
        context.query()
        .group_by("age_band")
        .agg(dp.len(signed=True))
        .with_keys(pl.DataFrame({"age_band": keys}))
        .release()
        .collect()
    )
    elapsed = time.perf_counter() - start
    assert released.height == 20
    return elapsed


def main(quick: bool = False) -> None:
    rows = 100_000 if quick else 1_000_000
    lf = contacts(rows).collect().lazy()
    print(f"DP preview: count + 20-cell age breakdown, ε={EPSILON}, {rows:,} contacts")
    print(f"{'implementation':42} {'cold s':>8} {'warm s (best of 3)':>20}")
    for name, run in (
        ("stock OpenDP Context API (baseline)", stock_opendp),
        ("policies.privacy.dp.preview", ours),
    ):
        cold = run(lf)
        warm = min(run(lf) for _ in range(3))
        print(f"{name:42} {cold:>8.3f} {warm:>20.3f}")
    print("target: warm <= 1.5 s for policies.privacy.dp.preview on 1M contacts")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
