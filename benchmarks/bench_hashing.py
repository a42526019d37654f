"""Identifier hashing throughput: our normalization + SHA-256 vs the floor and hashlib.

Rows are messy synthetic emails (case noise, surrounding whitespace, gmail dots and
+tags, some invalid, some null). Measured in this run:

* ``meta EMAIL``: the full Meta layout email path (trim, lowercase, NFC, validation,
  already-hashed pass-through, SHA-256) via :func:`audiences.crm.identifiers.hashed_layout`.
* ``google hashed_email``: the same with Google's gmail rules.
* ``polars-hash sha256 (raw)``: SHA-256 of the raw column, no normalization: the floor.
* ``hashlib per row``: Python ``strip().lower()`` + ``hashlib.sha256`` on a sample,
  the baseline (it validates nothing).

A second table runs whole layouts (every identifier mapped) on the synthetic CRM from
:mod:`audiences.demo.sample`.

Run: ``python -m benchmarks.bench_hashing [--quick]`` (quick: 1M rows, else 10M).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sys
import time
from collections.abc import Callable

import numpy as np
import polars as pl
import polars_hash as plh
from rich.console import Console
from rich.table import Table

from audiences.crm.identifiers import LAYOUTS, IdentityMapping, hashed_layout

AS_OF = dt.date(2025, 6, 1)
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


def _table(title: str, rows: int, results: list[tuple[str, int, float]], baseline: float) -> Table:
    table = Table(title=title)
    table.add_column("method")
    table.add_column("rows", justify="right")
    table.add_column("s", justify="right")
    table.add_column("rows/s", justify="right")
    table.add_column(f"s per {rows:,}", justify="right")
    table.add_column("× base", justify="right")
    for name, measured_rows, seconds in results:
        rate = measured_rows / seconds
        table.add_row(
            name,
            f"{measured_rows:,}",
            f"{seconds:.2f}",
            f"{rate:,.0f}",
            f"{rows / rate:.2f}" + ("*" if measured_rows != rows else ""),
            f"{rate / baseline:.1f}",
        )
    return table


def _email_results(rows: int) -> tuple[list[tuple[str, int, float]], float]:
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
        ("meta EMAIL", rows, _best(ours("meta", "EMAIL"))),
        ("google hashed_email", rows, _best(ours("google_ads", "hashed_email"))),
        (
            "floor: sha256 raw",
            rows,
            _best(lambda: lf.select(plh.col("email").chash.sha2_256()).collect()),
        ),
        ("base: hashlib/row", SAMPLE_ROWS, _best(hashlib_rows)),
    ]
    return results, SAMPLE_ROWS / results[-1][2]


def _layout_results(rows: int) -> tuple[list[tuple[str, int, float]], float]:
    """Whole layouts on the synthetic CRM (every identifier mapped)."""
    from audiences.demo import sample

    contacts, _ = sample.generate(rows, seed=0, as_of=AS_OF)
    lf = contacts.lazy()
    identity = IdentityMapping(
        external_id="contact_id",
        email="email",
        phone="phone",
        first_name="first_name",
        last_name="last_name",
        zip="zip",
        city="city",
        state="state",
        country="country",
        birth_date="birth_date",
        gender="sex",
    )
    text_columns = ["email", "phone", "first_name", "last_name", "zip", "city", "state"]
    rows_sample = contacts.head(SAMPLE_ROWS // 4).select(text_columns).rows()

    def hashlib_rows() -> object:
        return [
            [
                None if v is None else hashlib.sha256(v.strip().lower().encode()).hexdigest()
                for v in r
            ]
            for r in rows_sample
        ]

    results = [
        (
            f"meta, {len(LAYOUTS['meta'])} columns",
            rows,
            _best(lambda: hashed_layout(lf, identity, "meta", as_of=AS_OF).collect()),
        ),
        (
            f"google_ads, {len(LAYOUTS['google_ads'])} columns",
            rows,
            _best(lambda: hashed_layout(lf, identity, "google_ads", as_of=AS_OF).collect()),
        ),
        (
            f"floor: sha256 raw × {len(text_columns)}",
            rows,
            _best(lambda: lf.select(plh.col(*text_columns).chash.sha2_256()).collect()),
        ),
        (f"base: hashlib/row × {len(text_columns)}", len(rows_sample), _best(hashlib_rows)),
    ]
    return results, len(rows_sample) / results[-1][2]


def main(quick: bool = False) -> None:
    rows = 1_000_000 if quick else 10_000_000
    crm_rows = 200_000 if quick else 1_000_000
    console = Console()
    results, baseline = _email_results(rows)
    console.print(
        _table(f"Messy emails, {rows:,} rows (* scaled from a sample)", rows, results, baseline)
    )
    results, baseline = _layout_results(crm_rows)
    console.print(
        _table(f"Whole layouts, synthetic CRM, {crm_rows:,} contacts", crm_rows, results, baseline)
    )
    console.print(
        "floor: polars-hash SHA-256 of the raw column(s), no normalization; base: Python "
        "strip().lower() + hashlib per value (validates nothing); × base: speed-up over base."
    )


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
