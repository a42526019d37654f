"""The benchmarks' hand-written jobs (benchmarks/pg_job.py, benchmarks/duckdb_job.py) are
the same job: on the same sample they release the same people with the same 19 columns.

``bench_warehouse`` compares each with the build at 1M contacts; this keeps the PostgreSQL
port from drifting from the DuckDB script between benchmark runs (a floor that releases
other people is no floor).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from audiences.demo.warehouse import load_postgres

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
AS_OF = date(2025, 6, 2)
STATES = ["NY", "NJ", "CA", "TX", "FL"]


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("link", [True, False], ids=["link", "no-link"])
def test_the_postgres_job_releases_what_the_duckdb_job_releases(
    postgres: Any, sample_crm: Callable[..., Path], tmp_path: Path, link: bool
) -> None:
    folder = sample_crm(3000)
    contacts, events = folder / "contacts.parquet", folder / "events.parquet"
    frames = {"contacts": pl.read_parquet(contacts), "events": pl.read_parquet(events)}
    load_postgres(postgres.conninfo, frames, schema="benchjob")
    mode = "link" if link else "no-link"
    duck_out = tmp_path / "duckdb.csv"
    args = [str(contacts), str(events), str(duck_out), AS_OF.isoformat(), mode, ",".join(STATES)]
    subprocess.run([sys.executable, str(BENCHMARKS / "duckdb_job.py"), *args], check=True)
    pg_out = tmp_path / "pg.csv"
    result = _module("pg_job").run(postgres.url, "benchjob", str(pg_out), AS_OF, STATES, link)

    theirs = pl.read_parquet(f"{duck_out}.parquet").sort("meta_EXTERN_ID")
    ours = pl.read_parquet(f"{pg_out}.parquet").sort("meta_EXTERN_ID")
    assert result["rows"] == ours.height > 50  # a release, not an empty agreement
    assert result["transferred"] == ours.height  # only the release leaves the server
    assert ours.columns == theirs.columns
    assert_frame_equal(ours, theirs.cast(ours.schema))  # every column, person by person
    # the linkage removes people: the two modes differ (the job honours its argument)
    other = _module("pg_job").run(
        postgres.url, "benchjob", str(tmp_path / "other.csv"), AS_OF, STATES, not link
    )
    assert (other["rows"] > result["rows"]) == link
