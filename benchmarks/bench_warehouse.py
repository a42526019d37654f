"""Benchmark database sources (docs/warehouse.md): the same build from Parquet files, from a
DuckDB file and from PostgreSQL.

What runs
    * the ``bench_build`` segment (age, state, language, an email click in the last year),
      pack ``hipaa-marketing``, destination ``file``, through the real CLI in a child
      process (``benchmarks.bench_build.run_build``: wall time from the parent, peak RSS of
      the child alone), three builds per source, the median reported;
    * sources: the cached sample Parquet files; the same frames loaded (untimed) into a
      DuckDB file and, when PostgreSQL's ``initdb`` / ``pg_ctl`` are installed, into a
      throwaway local PostgreSQL server (``tests/postgres_server.py``, unix user of the
      benchmark or ``postgres`` under root);
    * the floor: the segment's compiled SQL run once in the database alone (DuckDB
      in-process, PostgreSQL through psycopg), counting the rows it selects — what no
      build can beat; the ratio build / floor is reported. The build does more than the
      query: the gate, the duplicate-of-opt-out linkage (it reads the identity and consent
      columns of every contact), hashing, files and the dataset id digest.

Sizes: 1M contacts (``--quick``: 100k). 100M contacts (the issue's streaming target) is not
measured here.

    python -m benchmarks.bench_warehouse [--quick]
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks import AS_OF, DATA_DIR, ROOT, ChildRun, sample_crm, stopped_clock
from benchmarks.bench_build import (
    FILE_DESTINATION,
    SEGMENT,
    SEGMENT_YAML,
    make_project,
    measured_build,
)

BUILDS = 3
URI_ENV = "BENCH_WAREHOUSE_URL"


def database_sources(kind: str, where: str) -> Any:
    """An audiences.toml edit pointing both sources at tables of one database."""

    def edit(text: str) -> str:
        for table in ("contacts", "events"):
            start = text.index(f"[sources.{table}]\n")
            line_start = text.index("\npath = ", start) + 1
            line_end = text.index("\n", line_start)
            text = (
                text[:line_start] + f'kind = "{kind}"\n{where}\ntable = "{table}"' + text[line_end:]
            )
        return text

    return edit


def project_for(name: str, contacts: Path, events: Path, edit: Any | None) -> Path:
    """A fresh bench project; ``edit`` changes its sources before the approval."""
    from benchmarks import trust_and_approve

    folder = DATA_DIR / f"warehouse-{name}"
    make_project(
        folder,
        contacts,
        events,
        {SEGMENT: SEGMENT_YAML},
        destinations=FILE_DESTINATION,
        approve=False,
    )
    if edit is not None:
        toml = folder / "audiences.toml"
        toml.write_text(edit(toml.read_text()))
    trust_and_approve(folder, [SEGMENT])
    return folder


def measure(project: Path) -> dict[str, Any]:
    """Three builds (median, spread, peak RSS, the selection's median), then the dataset id
    computed once in this process without its cache."""
    from audiences.core.config import load_config
    from audiences.crm.sources import source_digest

    runs: list[ChildRun] = []
    collect: list[float] = []
    members = set()
    for _ in range(BUILDS):
        run, phases, exact = measured_build(project)
        runs.append(run)
        collect.append(phases.get("collect", float("nan")))
        members.add(exact)
    if len(members) != 1:
        raise RuntimeError(f"{project.name}: builds released different sizes {members}")
    (project / ".audiences" / "digests.json").unlink(missing_ok=True)
    started = time.perf_counter()
    source_digest(load_config(project))
    return {
        "seconds": statistics.median(r.seconds for r in runs),
        "spread": (min(r.seconds for r in runs), max(r.seconds for r in runs)),
        "rss_gb": max(r.peak_rss_bytes for r in runs) / 2**30,
        "members": members.pop(),
        "collect": statistics.median(collect),
        "dataset_id": time.perf_counter() - started,
    }


def floor_query(project: Path) -> tuple[float, int]:
    """The segment's compiled SQL run alone in the database: (seconds, rows selected)."""
    from audiences.core.config import load_config
    from audiences.crm.sources import load_sources
    from audiences.pipeline.select import segment_context, select_segments
    from audiences.segments.sql import SqlTables, segment_sql_text

    config = load_config(project)
    sources = load_sources(config)
    contacts, events = sources.tables["contacts"], sources.tables["events"]
    database = contacts.database
    text = segment_sql_text(
        select_segments(config, [SEGMENT])[0],
        contacts.schema,
        events.schema,
        segment_context(config, AS_OF),
        tables=SqlTables(contacts.table, events.table, database.schema),
        dialect=database.dialect,  # type: ignore[arg-type]
        columns=[config.sources.contacts.id],
    )
    with database.connect() as connection:
        started = time.perf_counter()
        if database.kind == "duckdb":
            rows = len(connection.execute(text).fetchall())
        else:
            with connection.cursor() as cursor:
                rows = len(cursor.execute(text).fetchall())
        return time.perf_counter() - started, rows


@contextmanager
def local_postgres() -> Iterator[Any]:
    """The tests' throwaway PostgreSQL server, or None when it is not installed."""
    path = ROOT / "tests" / "postgres_server.py"
    spec = importlib.util.spec_from_file_location("_bench_postgres_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    bin_dir = module.postgres_bin()
    if bin_dir is None:
        yield None
        return
    with module.running_postgres(bin_dir) as server:
        yield server


def main(quick: bool = False) -> None:
    with stopped_clock():  # the approvals are signed on the day the builds release: AS_OF
        _main(quick)


def _main(quick: bool) -> None:
    from audiences.demo.warehouse import load_duckdb, load_postgres

    rows = 100_000 if quick else 1_000_000
    contacts, events = sample_crm(rows)
    frames = {"contacts": pl.read_parquet(contacts), "events": pl.read_parquet(events)}
    print(f"  {rows:,} contacts, {frames['events'].height:,} events", flush=True)
    results: dict[str, dict[str, Any]] = {}
    floors: dict[str, tuple[float, int]] = {}
    load_before = os.getloadavg()[0]

    parquet = project_for(f"parquet-{rows}", contacts, events, None)
    results["Parquet files"] = measure(parquet)

    duck_file = DATA_DIR / f"warehouse-crm-{rows}.duckdb"
    started = time.perf_counter()
    if duck_file.exists():
        duck_file.unlink()
    load_duckdb(duck_file, frames)
    print(f"  loaded the DuckDB file in {time.perf_counter() - started:.1f} s (untimed)")
    duck = project_for(
        f"duckdb-{rows}", contacts, events, database_sources("duckdb", f'path = "{duck_file}"')
    )
    results["DuckDB file"] = measure(duck)
    floors["DuckDB file"] = floor_query(duck)

    with local_postgres() as server:
        if server is None:
            print("  PostgreSQL is not installed: its rows are skipped")
        else:
            started = time.perf_counter()
            load_postgres(server.conninfo, frames, schema="crm")
            print(f"  loaded PostgreSQL in {time.perf_counter() - started:.1f} s (untimed)")
            os.environ[URI_ENV] = server.url  # the builds' children inherit it
            where = f'uri_env = "{URI_ENV}"\nschema = "crm"'
            pg = project_for(
                f"postgres-{rows}", contacts, events, database_sources("postgres", where)
            )
            results["PostgreSQL"] = measure(pg)
            floors["PostgreSQL"] = floor_query(pg)
            # the same tables with a version column: the dataset id without the full scan
            versioned = {n: f.with_row_index("row_version") for n, f in frames.items()}
            load_postgres(server.conninfo, versioned, schema="crmv")
            where = f'uri_env = "{URI_ENV}"\nschema = "crmv"\nversion_column = "row_version"'
            pgv = project_for(
                f"postgres-version-{rows}", contacts, events, database_sources("postgres", where)
            )
            results["PG, version col"] = measure(pgv)
            floors["PG, version col"] = floor_query(pgv)
            del os.environ[URI_ENV]
    load_after = os.getloadavg()[0]
    _table(rows, results, floors, (load_before, load_after))
    for name in ("parquet", "duckdb", "postgres", "postgres-version"):
        shutil.rmtree(DATA_DIR / f"warehouse-{name}-{rows}", ignore_errors=True)


def _table(
    rows: int,
    results: dict[str, dict[str, Any]],
    floors: dict[str, tuple[float, int]],
    load: tuple[float, float],
) -> None:
    print(
        f"\nbuild of {SEGMENT} on {rows:,} contacts, median of {BUILDS} builds "
        f"(1-min load average {load[0]:.2f} before, {load[1]:.2f} after)"
    )
    print(
        f"{'source':<16} {'median s':>8} {'min-max s':>12} {'RSS GB':>7} {'members':>8} "
        f"{'select s':>9} {'id s':>6} {'floor s':>8} {'selected':>9} {'build/floor':>11}"
    )
    for name, r in results.items():
        floor = floors.get(name)
        floor_cols = (
            f"{floor[0]:>8.3f} {floor[1]:>9,} {r['seconds'] / floor[0]:>10.1f}x"
            if floor
            else f"{'-':>8} {'-':>9} {'-':>11}"
        )
        spread = f"{r['spread'][0]:.2f}-{r['spread'][1]:.2f}"
        print(
            f"{name:<16} {r['seconds']:>8.2f} {spread:>12} {r['rss_gb']:>7.2f} "
            f"{r['members']:>8,} {r['collect']:>9.2f} {r['dataset_id']:>6.2f} {floor_cols}"
        )
    print(
        "select s: the build's selection (collect_candidates: the segment and the linkage "
        "of duplicates of opt-outs), median; id s: the dataset id computed once without its "
        "cache (the first build waits for it; DuckDB and Parquet builds after it read the "
        "cache); floor: the whole segment as one SQL query, alone"
    )
    if len({r["members"] for r in results.values()}) != 1:
        raise RuntimeError("the sources released different member counts")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
