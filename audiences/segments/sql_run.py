"""Run a segment inside a DuckDB database: only the matching rows come back (Arrow → polars).

The first step of database sources (issue #21): the table schemas are read from the
database (``LIMIT 0``, fetched as polars through Arrow, so the types are exactly the ones polars would see),
the segment is validated against them and compiled by :mod:`audiences.segments.sql`, and
the result is fetched the same way (:func:`run_segment_in_duckdb`).

:func:`run_segment_in_tables` runs a segment over the ``[sources]`` of audiences.toml that
are database tables (DuckDB or PostgreSQL): the build's selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import sqlglot.expressions as exp

from audiences.core.errors import DataError
from audiences.crm.databases import cast_columns, read_query
from audiences.crm.sources import TableSource
from audiences.segments.compiler import compile_segment, top_level_parts
from audiences.segments.context import SegmentContext
from audiences.segments.model import (
    AllOf,
    AnyOf,
    Condition,
    EventCondition,
    Not,
    Segment,
    classify_field,
)
from audiences.segments.sql import SqlTables, segment_sql
from audiences.segments.validate import category


def duckdb_table_schema(connection: Any, table: str, schema: str | None = None) -> pl.Schema:
    """The polars schema of a DuckDB table (DataError naming the table if it is missing)."""
    import duckdb

    empty = exp.select(exp.Star()).from_(exp.table_(table, db=schema, quoted=True)).limit(0)
    try:
        empty_frame = connection.sql(empty.sql(dialect="duckdb")).pl()
    except duckdb.CatalogException:
        where = f"{schema}.{table}" if schema else table
        raise DataError(
            f"DuckDB table '{where}' does not exist",
            "check the table name (and schema) in audiences.toml",
        ) from None
    return pl.Schema(empty_frame.schema)


def run_segment_in_duckdb(
    segment: Segment,
    database: Path | str,
    ctx: SegmentContext,
    *,
    tables: SqlTables,
    columns: Sequence[str] | None = None,
) -> pl.DataFrame:
    """The contacts rows ``segment`` selects, computed by DuckDB in ``database`` (read-only).

    Returns ``columns`` (default: every contacts column) of the matching rows.
    """
    import duckdb

    path = Path(database)
    if not path.is_file():
        raise DataError(
            f"DuckDB database '{path}' does not exist", "check the database path in audiences.toml"
        )
    with duckdb.connect(str(path), read_only=True) as connection:
        contacts = duckdb_table_schema(connection, tables.contacts, tables.schema)
        events = (
            duckdb_table_schema(connection, tables.events, tables.schema)
            if tables.events is not None
            else None
        )
        query = segment_sql(
            segment,
            contacts,
            events,
            ctx,
            tables=tables,
            dialect="duckdb",
            columns=list(columns) if columns else contacts.names(),
        )
        frame: pl.DataFrame = connection.sql(query.sql(dialect="duckdb")).pl()  # via Arrow
    return frame


# -- a segment over database sources (``kind = "duckdb"`` / ``"postgres"``) ---------------


def run_segment_in_tables(
    segment: Segment,
    contacts: TableSource,
    events: TableSource | None,
    ctx: SegmentContext,
    columns: Sequence[str],
) -> pl.DataFrame | None:
    """``columns`` of the contacts rows ``segment`` selects, the selection made in the database.

    The segment's AND-ed parts that SQL expresses with the polars meaning run in the
    database; parts on identity-mapped or case-insensitive text columns (whose values are
    compared after the upload layer's normalization, in polars) are applied by the polars
    compiler to the rows that come back. Returns None if such a part also reads events:
    the caller then runs the segment in polars over the tables.
    """
    parts = top_level_parts(segment)
    exact = [part for part in parts if _sql_exact(part, ctx, contacts.schema)]
    rest = [part for part in parts if not _sql_exact(part, ctx, contacts.schema)]
    if any(_reads_events(part) for part in rest):
        return None
    wanted = list(dict.fromkeys(columns))
    if rest:
        identity = [c for c in (ctx.identity.model_dump().values() if ctx.identity else ())]
        referenced = Segment(name=segment.name, where=AllOf(conditions=tuple(rest))).references(
            ctx.birth_date
        )
        extra = {*referenced.contact_columns, *(c for c in identity if isinstance(c, str))}
        wanted += [c for c in contacts.schema.names() if c in extra and c not in wanted]
    database = contacts.database
    output = pl.Schema({c: contacts.schema[c] for c in wanted})
    if exact:
        tables = SqlTables(contacts.table, events.table if events else None, database.schema)
        query = segment_sql(
            Segment(name=segment.name, where=AllOf(conditions=tuple(exact))),
            contacts.schema,
            events.schema if events is not None else None,
            ctx,
            tables=tables,
            dialect=database.dialect,  # type: ignore[arg-type]
            columns=wanted,
        )
    else:
        query = exp.select(*(exp.column(c, table="c", quoted=True) for c in wanted)).from_(
            SqlTables(contacts.table, None, database.schema).table(contacts.table, "c")
        )
    frame = read_query("contacts", database, query, output)
    frame = cast_columns(frame, contacts.conversions)
    if rest:
        remaining = Segment(name=segment.name, where=AllOf(conditions=tuple(rest)))
        frame = compile_segment(remaining, frame.lazy(), None, ctx).collect()
    return frame.select(list(dict.fromkeys(columns)))


def _sql_exact(cond: Condition, ctx: SegmentContext, schema: pl.Schema) -> bool:
    """Does SQL compute ``cond`` exactly as polars does (no normalized or folded text)?"""
    if isinstance(cond, AllOf | AnyOf):
        return all(_sql_exact(c, ctx, schema) for c in cond.conditions)
    if isinstance(cond, Not):
        return _sql_exact(cond.condition, ctx, schema)
    if isinstance(cond, EventCondition):
        return cond.where is None or _event_exact(cond.where, ctx)
    kind, _ = classify_field(cond.field)
    if kind != "column" or cond.field not in schema or category(schema[cond.field]) != "string":
        return True
    return ctx.identity_field(cond.field) is None and cond.field not in ctx.case_insensitive


def _event_exact(cond: Condition, ctx: SegmentContext) -> bool:
    if isinstance(cond, AllOf | AnyOf):
        return all(_event_exact(c, ctx) for c in cond.conditions)
    if isinstance(cond, Not):
        return _event_exact(cond.condition, ctx)
    if isinstance(cond, EventCondition):  # pragma: no cover - the loader forbids it
        return False
    return cond.field not in ctx.event_case_insensitive


def _reads_events(cond: Condition) -> bool:
    if isinstance(cond, AllOf | AnyOf):
        return any(_reads_events(c) for c in cond.conditions)
    if isinstance(cond, Not):
        return _reads_events(cond.condition)
    if isinstance(cond, EventCondition):
        return True
    return classify_field(cond.field)[0] == "days_since_last_event"
