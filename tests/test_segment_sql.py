"""Segments compiled to SQL select exactly what the polars compiler selects.

One property test draws small CRMs (NULLs everywhere, duplicate and missing contact ids,
month-end and leap-day dates, events on window edges, naive / UTC / New York event times)
and segments over the whole language, and compares the member lists (duplicates included)
of polars with DuckDB in-process and with a real PostgreSQL server this session starts.
Both databases run with a session time zone far from UTC, which must not matter.
Golden files pin the SQL text for all four dialects.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from postgres_server import PostgresServer
from test_segment_compiler import CONTACTS_SCHEMA, conditions

from audiences.core.errors import SegmentError
from audiences.segments import SegmentContext, compile_segment, parse_segment
from audiences.segments.sql import DIALECTS, SqlTables, segment_sql_text

GOLDEN = Path(__file__).parent / "cases" / "segment_sql"
TABLES = SqlTables(contacts="contacts", events="events")
AS_OFS = [
    dt.date(2025, 3, 1),
    dt.date(2024, 2, 29),
    dt.date(2024, 3, 31),
    dt.date(2023, 12, 31),
    dt.date(2025, 1, 31),
]
BIRTH_DATES = [
    dt.date(2000, 2, 29),
    dt.date(1960, 2, 29),
    dt.date(1960, 3, 1),
    dt.date(1960, 2, 28),
    dt.date(1975, 6, 30),
    dt.date(1990, 12, 31),
    dt.date(1950, 1, 31),
    dt.date(2007, 3, 1),
]
EDGE_DAYS = [-731, -730, -729, -548, -366, -365, -91, -90, -30, -1, 0, 1, 30, 90, 91]
EDGE_SECONDS = [0, 1, 43200, 86399]
ZONES = [None, "UTC", "America/New_York"]
PG_DDL = [
    "CREATE TABLE contacts (contact_id text, state text, score bigint, ratio double precision,"
    " active boolean, birth_date date, created_at timestamp, codes text[])",
    "CREATE TABLE events (contact_id text, event_type text, event_time {time}, department text)",
]
PG_INSERT = {
    "contacts": "INSERT INTO contacts VALUES (%s, %s, %s, %s, %s, %s, %s, %s::text[])",
    "events": "INSERT INTO events VALUES (%s, %s, %s, %s)",
}


# -- data ------------------------------------------------------------------------------------


@st.composite
def crm(draw: st.DrawFn) -> tuple[dt.date, str | None, pl.DataFrame, pl.DataFrame]:
    as_of = draw(st.sampled_from(AS_OFS))
    zone = draw(st.sampled_from(ZONES))
    maybe = lambda s: st.one_of(st.none(), s)  # noqa: E731
    ids = st.one_of(st.sampled_from(["c0", "c1", "c2", "c3", "c4"]), st.none())

    def moment() -> dt.datetime:
        day = draw(st.one_of(st.sampled_from(EDGE_DAYS), st.integers(-800, 120)))
        second = draw(st.sampled_from(EDGE_SECONDS))
        start = dt.datetime.combine(as_of + dt.timedelta(days=day), dt.time())
        return start + dt.timedelta(seconds=second, microseconds=draw(st.sampled_from([0, 999999])))

    contacts = [
        {
            "contact_id": draw(ids),
            "state": draw(maybe(st.sampled_from(["NY", "NJ", "CA", "ny", "N"]))),
            "score": draw(maybe(st.integers(-2, 3))),
            "ratio": draw(maybe(st.sampled_from([0.5, 1.0, 2.5]))),
            "active": draw(maybe(st.booleans())),
            "birth_date": draw(maybe(st.sampled_from(BIRTH_DATES))),
            "created_at": None if draw(st.integers(0, 4)) == 0 else moment(),
            "codes": draw(
                maybe(st.lists(maybe(st.sampled_from(["E11.9", "E11.65", "I25.10", "Z00"]))))
            ),
        }
        for _ in range(draw(st.integers(1, 7)))
    ]
    events = [
        {
            "contact_id": draw(st.one_of(ids, st.just("ghost"))),
            "event_type": draw(maybe(st.sampled_from(["visit", "appointment"]))),
            "event_time": None if draw(st.integers(0, 4)) == 0 else moment(),
            "department": draw(maybe(st.sampled_from(["cardiology", "oncology", "card"]))),
        }
        for _ in range(draw(st.integers(0, 14)))
    ]
    return as_of, zone, contacts_frame(contacts), events_frame(events, zone)


def contacts_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=CONTACTS_SCHEMA, orient="row")


def events_frame(rows: list[dict[str, Any]], zone: str | None) -> pl.DataFrame:
    """Event times are wall times in ``zone`` (naive when None)."""
    frame = pl.DataFrame(
        rows,
        schema={
            "contact_id": pl.String,
            "event_type": pl.String,
            "event_time": pl.Datetime("us"),
            "department": pl.String,
        },
        orient="row",
    )
    if zone is None:
        return frame
    return frame.with_columns(pl.col("event_time").dt.replace_time_zone(zone))


def members(ids: list[Any]) -> list[tuple[bool, str]]:
    return sorted((i is None, i or "") for i in ids)


# -- backends --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_connection(postgres: PostgresServer) -> Iterator[Any]:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(postgres.conninfo, autocommit=True) as connection:
        connection.execute("SET TimeZone = 'Asia/Kolkata'")
        yield connection


def run_duckdb(query: str, contacts: pl.DataFrame, events: pl.DataFrame) -> list[Any]:
    with duckdb.connect() as connection:
        connection.execute("SET TimeZone = 'Pacific/Honolulu'")
        connection.register("contacts", contacts.to_arrow())
        connection.register("events", events.to_arrow())
        return [row[0] for row in connection.execute(query).fetchall()]


def run_postgres(
    connection: Any, query: str, contacts: pl.DataFrame, events: pl.DataFrame, zone: str | None
) -> list[Any]:
    connection.execute("DROP TABLE IF EXISTS contacts, events")
    connection.execute(PG_DDL[0])
    connection.execute(PG_DDL[1].format(time="timestamp" if zone is None else "timestamptz"))
    with connection.cursor() as cursor:
        for name, frame in (("contacts", contacts), ("events", events)):
            if frame.height:
                cursor.executemany(PG_INSERT[name], frame.rows())
    return [row[0] for row in connection.execute(query).fetchall()]


# -- the property ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(where=conditions, exclude=st.one_of(st.none(), conditions), data=crm())
def test_sql_selects_what_polars_selects(
    request: pytest.FixtureRequest,
    backend: str,
    where: dict[str, Any],
    exclude: dict[str, Any] | None,
    data: tuple[dt.date, str | None, pl.DataFrame, pl.DataFrame],
) -> None:
    as_of, zone, contacts, events = data
    doc: dict[str, Any] = {"name": "random", "where": where}
    if exclude is not None:
        doc["exclude"] = exclude
    segment = parse_segment(yaml.safe_dump(doc, sort_keys=False), source="t.yaml")
    ctx = SegmentContext(as_of=as_of)
    expected = compile_segment(segment, contacts.lazy(), events.lazy(), ctx).collect()
    query = segment_sql_text(
        segment, contacts.schema, events.schema, ctx, tables=TABLES, dialect=backend
    )
    if backend == "duckdb":
        got = run_duckdb(query, contacts, events)
    else:
        got = run_postgres(request.getfixturevalue("pg_connection"), query, contacts, events, zone)
    assert members(got) == members(expected["contact_id"].to_list()), (yaml.safe_dump(doc), query)


# -- golden SQL text -------------------------------------------------------------------------

GOLDEN_SEGMENT = """\
name: golden
where:
  state: {in: [NY, "N*", "O'Brien"]}
  any:
    - age: {between: [50, 64]}
    - days_since_created_at: {gte: 2y}
    - codes: {in: [E11*, I25.10]}
    - event: {type: visit, within: 90d, where: {department: {eq: cardiology}}, count: {gte: 2}}
    - days_since_last_visit: {lt: 18mo}
  event: {type: appointment, ahead: 30d}
exclude:
  any:
    - score: {lt: 0}
    - event: {type: [optout, complaint], between: [2024-02-29, 2024-12-31]}
"""


@pytest.mark.parametrize("dialect", DIALECTS)
def test_golden_sql(dialect: str) -> None:
    segment = parse_segment(GOLDEN_SEGMENT, source="golden.yaml")
    contacts = contacts_frame([])
    events = events_frame([], "UTC")
    if dialect == "snowflake":
        with pytest.raises(SegmentError, match=r"list column 'codes' .* Snowflake"):
            segment_sql_text(
                segment,
                contacts.schema,
                events.schema,
                SegmentContext(dt.date(2024, 2, 29)),
                tables=TABLES,
                dialect=dialect,
            )
        segment = parse_segment(GOLDEN_SEGMENT.replace("codes", "state"), source="golden.yaml")
    text = segment_sql_text(
        segment,
        contacts.schema,
        events.schema,
        SegmentContext(dt.date(2024, 2, 29)),
        tables=SqlTables(contacts="crm_contacts", events="crm_events", schema="crm"),
        dialect=dialect,  # type: ignore[arg-type]
        columns=["contact_id", "state"],
        pretty=True,
    )
    path = GOLDEN / f"{dialect}.sql"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
    assert text + "\n" == path.read_text(encoding="utf-8")


def test_unknown_dialect_is_named() -> None:
    segment = parse_segment(GOLDEN_SEGMENT, source="golden.yaml")
    with pytest.raises(SegmentError, match="unknown SQL dialect 'oracle'"):
        segment_sql_text(
            segment,
            contacts_frame([]).schema,
            events_frame([], None).schema,
            SegmentContext(dt.date(2024, 2, 29)),
            tables=TABLES,
            dialect="oracle",  # type: ignore[arg-type]
        )


# -- running in a DuckDB database file -------------------------------------------------------


def test_segment_runs_in_a_duckdb_file(tmp_path: Path) -> None:
    from audiences.segments.sql_run import run_segment_in_duckdb

    contacts = contacts_frame(
        [
            {"contact_id": "a", "state": "NY", "birth_date": dt.date(1960, 2, 29)},
            {"contact_id": "b", "state": "NJ", "birth_date": dt.date(1960, 3, 2)},
            {"contact_id": "c", "state": None, "birth_date": None},
        ]
    )
    events = events_frame(
        [{"contact_id": "a", "event_type": "visit", "event_time": dt.datetime(2024, 2, 1)}], "UTC"
    )
    database = tmp_path / "crm.duckdb"
    with duckdb.connect(str(database)) as connection:
        for name, frame in (("contacts", contacts), ("events", events)):
            connection.register("frame", frame.to_arrow())
            connection.execute(f"CREATE TABLE {name} AS SELECT * FROM frame")  # fixed names
            connection.unregister("frame")
    segment = parse_segment(
        "name: t\nwhere:\n  age: {gte: 64}\n  event: {type: visit, within: 30d}\n", source="t.yaml"
    )
    ctx = SegmentContext(as_of=dt.date(2024, 2, 29))
    got = run_segment_in_duckdb(segment, database, ctx, tables=TABLES)
    expected = compile_segment(segment, contacts.lazy(), events.lazy(), ctx).collect()
    assert got.columns == contacts.columns
    assert got.to_dicts() == expected.to_dicts() == [contacts.row(0, named=True)]
    with pytest.raises(Exception, match="DuckDB table 'missing' does not exist"):
        run_segment_in_duckdb(segment, database, ctx, tables=SqlTables(contacts="missing"))
    with pytest.raises(Exception, match="unknown column 'nope'"):
        run_segment_in_duckdb(
            parse_segment("name: t\nwhere:\n  nope: {eq: 1}\n", source="t.yaml"),
            database,
            ctx,
            tables=TABLES,
        )
