"""The benchmarks' hand-written jobs (benchmarks/pg_job.py, benchmarks/duckdb_job.py) are
the same job: on the same sample they release the same people with the same 19 columns.

``bench_warehouse`` compares each with the build at 1M contacts; this keeps the PostgreSQL
port from drifting from the DuckDB script between benchmark runs (a floor that releases
other people is no floor).
"""

from __future__ import annotations

import datetime as dt
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


def test_the_jobs_release_what_the_build_releases_with_records_named_by_place(
    postgres: Any, sample_crm: Callable[..., Path], tmp_path: Path
) -> None:
    """``bench_build`` checks the DuckDB script against the build on the benchmark's
    segments, whose people all clicked an e-mail, so hold one: the rules for records with
    no e-mail or phone the platforms receive (joined to a namesake of their name, city and
    state; an opt-out on one that holds CRM-wide) are never exercised there. Here the
    segment holds such people — without an e-mail, or with an ``@`` that makes no address
    — each entered a second time without the ZIP, some of those copies opted out: the two
    implementations (and the PostgreSQL port) must release the same people with the same
    19 columns."""
    from benchmarks import AS_OF as BENCH_AS_OF
    from benchmarks.bench_build import (
        FILE_DESTINATION,
        FIRST_STATES,
        SEGMENT,
        SEGMENT_YAML,
        disagreements,
        make_project,
        run_build,
        run_duckdb,
    )

    folder = sample_crm(3000)
    contacts = pl.read_parquet(folder / "contacts.parquet")
    events = pl.read_parquet(folder / "events.parquet")
    bd = pl.col("birth_date")
    born = bd.dt.year() * 10_000 + bd.dt.month().cast(pl.Int32) * 100 + bd.dt.day()
    day = BENCH_AS_OF.year * 10_000 + BENCH_AS_OF.month * 100 + BENCH_AS_OF.day
    age = (day - born) // 10_000
    denied = pl.col("ad_personalization_consent").str.strip_chars().str.to_lowercase()
    # people whose name no other record shares (the sample's own duplicates and
    # namesakes would link them to records this test does not control)
    name = pl.concat_str(
        [pl.col(c).str.strip_chars().str.to_lowercase() for c in ("first_name", "last_name")]
    )
    eligible = contacts.filter(
        name.is_unique()
        & age.is_between(25, 64)
        & pl.col("state").str.strip_chars().str.to_uppercase().is_in(FIRST_STATES)
        & pl.col("preferred_language").is_in(["en", "es"])
        & pl.col("marketing_opt_in").fill_null(False)
        & ~pl.col("do_not_contact").fill_null(False)
        & ~pl.col("deceased").fill_null(False)
        & ~denied.is_in(["denied", "deny", "false", "no", "n", "0", "f"]).fill_null(False)
        & pl.all_horizontal(pl.col(c).is_not_null() for c in ("first_name", "last_name"))
        & pl.all_horizontal(pl.col(c).is_not_null() for c in ("zip", "city", "state"))
    ).sort("contact_id")
    assert eligible.height >= 120
    ids = eligible.get_column("contact_id").to_list()[:120]
    bare, no_address = ids[:40], ids[40:70]  # the rest: the segment's other people
    cid, email = pl.col("contact_id"), pl.col("email")
    changed = contacts.with_columns(
        pl.when(cid.is_in(bare))
        .then(None)
        .when(cid.is_in(no_address))
        .then(cid + "@")
        .otherwise(email)
        .alias("email"),
        pl.when(cid.is_in(bare + no_address)).then(None).otherwise(pl.col("phone")).alias("phone"),
    )
    # each entered again without the ZIP; the copies of the first ten of each group opted out
    opted = bare[:10] + no_address[:10]
    copies = changed.filter(cid.is_in(bare + no_address)).with_columns(
        pl.lit(None, pl.String).alias("zip"),
        pl.when(cid.is_in(opted)).then(False).otherwise(True).alias("marketing_opt_in"),
        (cid + "B").alias("contact_id"),
    )
    changed = pl.concat([changed, copies])
    # everyone chosen clicked an e-mail a month before the benchmark's day (the copies too)
    clicks = pl.DataFrame(
        {
            "contact_id": ids + copies.get_column("contact_id").to_list(),
            "event_type": "email_click",
            "event_time": dt.datetime.combine(BENCH_AS_OF, dt.time(12)) - dt.timedelta(days=30),
        }
    )
    events = pl.concat(
        [events, clicks.cast({"event_time": events.schema["event_time"]})], how="diagonal"
    )
    contacts_path, events_path = tmp_path / "contacts.parquet", tmp_path / "events.parquet"
    changed.write_parquet(contacts_path)
    events.write_parquet(events_path)

    project = make_project(
        tmp_path / "project",
        contacts_path,
        events_path,
        {SEGMENT: SEGMENT_YAML},
        destinations=FILE_DESTINATION,
    )
    _, _, result = run_build(project, SEGMENT)
    assert result["status"] == "released", result
    release = Path(result["files"]["file"]["parquet"])
    out = tmp_path / "duckdb.csv"
    run_duckdb(contacts_path, events_path, out, FIRST_STATES)
    failures, notes = disagreements(release, Path(f"{out}.parquet"))
    assert failures == [] and notes == [], (failures, notes)
    load_postgres(postgres.conninfo, {"contacts": changed, "events": events}, schema="placed")
    pg_out = tmp_path / "pg.csv"
    _module("pg_job").run(postgres.url, "placed", str(pg_out), BENCH_AS_OF, FIRST_STATES, True)
    theirs = pl.read_parquet(f"{out}.parquet").sort("meta_EXTERN_ID")
    ours = pl.read_parquet(f"{pg_out}.parquet").sort("meta_EXTERN_ID")
    assert_frame_equal(ours, theirs.cast(ours.schema))
    # the rules were exercised: the opted-out copies' people are out, the others released
    # once (their copy without the ZIP is the same person)
    released = set(pl.read_parquet(release).get_column("meta_EXTERN_ID").to_list())
    assert not released & set(opted)
    kept = [i for i in bare + no_address if i not in opted]
    assert set(kept) <= released
    assert not released & {f"{i}B" for i in bare + no_address}
