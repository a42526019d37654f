"""Identifier hashing throughput: our normalization + SHA-256 vs the floor and hashlib.

Rows are messy synthetic emails (case noise, surrounding whitespace, gmail dots and
+tags, some invalid, some null). Measured in this run:

* ``meta EMAIL``: the full Meta layout email path (trim, lowercase, NFC, validation,
  already-hashed pass-through, SHA-256) via :func:`audiences.identifiers.hashed_layout`.
* ``google hashed_email``: the same with Google's gmail rules.
* ``polars-hash sha256 (raw)``: SHA-256 of the raw column, no normalization: the floor.
* ``hashlib per row``: Python ``strip().lower()`` + ``hashlib.sha256`` on a sample,
  the baseline (it validates nothing).

Run: ``python -m benchmarks.bench_hashing [--quick]`` (quick: 1M rows, else 10M).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable

import numpy as np
import polars as pl
import polars_hash as plh
from rich.console import Console
from rich.table import Table

from audiences.identifiers import IdentityMapping, hashed_layout

SAMPLE_ROWS = 200_000
REPEATS = 2

_FIRST = ["john", "mary", "josé", "li", "anna", "mohammed", "sofia", "nguyen", "ava", "o'neil"]
_LAST = ["doe", "smith", "garcia", "chen", "smith-jones", "kim", "müller", "brown", "patel"]
_DOMAINS = ["gmail.com", "GMail.com", "googlemail.com", "yahoo.com", "outlook.com"]
_DOMAINS += ["hospital.org", "example.co.uk", "icloud.com"]


def messy_emails(rows: int, seed: int = 7) -> pl.DataFrame:
    """``rows`` messy emails, built with numpy/polars (no per-row Python)."""
    rng = np.random.default_rng(seed)
    first = pl.Series(_FIRST).gather(rng.integers(0, len(_FIRST), rows))
    last = pl.Series(_LAST).gather(rng.integers(0, len(_LAST), rows))
    domain = pl.Series(_DOMAINS).gather(rng.integers(0, len(_DOMAINS), rows))
    number = pl.Series(rng.integers(0, 10_000, rows)).cast(pl.String)
    roll = pl.Series(rng.random(rows))
    frame = pl.DataFrame({"f": first, "l": last, "d": domain, "n": number, "r": roll})
    sep = pl.when(pl.col("r") < 0.5).then(pl.lit(".")).otherwise(pl.lit(""))
    tag = pl.when(pl.col("r") > 0.85).then(pl.lit("+promo")).otherwise(pl.lit(""))
    email = pl.concat_str(pl.col("f"), sep, pl.col("l"), pl.col("n"), tag, pl.lit("@"), "d")
    email = (
        pl.when(pl.col("r") < 0.02)
        .then(pl.lit(None, pl.String))
        .when(pl.col("r") < 0.04)
        .then(email.str.replace("@", " at ", literal=True))  # invalid: no @
        .when(pl.col("r") < 0.30)
        .then(email.str.to_uppercase())
        .when(pl.col("r") < 0.45)
        .then(pl.concat_str(pl.lit("  "), email, pl.lit(" ")))
        .otherwise(email)
    )
    return frame.select(email.alias("email"))


def _best(run: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main(quick: bool = False) -> None:
    rows = 1_000_000 if quick else 10_000_000
    console = Console()
    console.print(f"generating {rows:,} messy emails …")
    emails = messy_emails(rows)
    identity = IdentityMapping(email="email")
    lf = emails.lazy()

    def ours(layout: str, column: str) -> Callable[[], object]:
        return lambda: hashed_layout(lf, identity, layout).select(column).collect()  # type: ignore[arg-type]

    sample = emails.head(SAMPLE_ROWS)["email"].to_list()

    def hashlib_rows() -> object:
        return [
            None if e is None else hashlib.sha256(e.strip().lower().encode()).hexdigest()
            for e in sample
        ]

    results = [
        ("meta EMAIL (normalize + validate + sha256)", rows, _best(ours("meta", "EMAIL"))),
        (
            "google hashed_email (+ gmail rules)",
            rows,
            _best(ours("google_ads", "hashed_email")),
        ),
        (
            "polars-hash sha256 on raw column (floor)",
            rows,
            _best(lambda: lf.select(plh.col("email").chash.sha2_256()).collect()),
        ),
        ("hashlib per row, strip+lower (baseline)", SAMPLE_ROWS, _best(hashlib_rows)),
    ]

    table = Table(title=f"Email hashing, {rows:,} rows (hashlib on a {SAMPLE_ROWS:,} sample)")
    table.add_column("method")
    table.add_column("rows", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("rows/s", justify="right")
    table.add_column(f"time for {rows:,} rows", justify="right")
    table.add_column("vs hashlib", justify="right")
    baseline = SAMPLE_ROWS / results[-1][2]
    for name, measured_rows, seconds in results:
        rate = measured_rows / seconds
        scaled = " (scaled)" if measured_rows != rows else ""
        table.add_row(
            name,
            f"{measured_rows:,}",
            f"{seconds:.3f}",
            f"{rate:,.0f}",
            f"{rows / rate:.2f} s{scaled}",
            f"{rate / baseline:.1f}×",
        )
    console.print(table)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
