"""Run a segment inside a DuckDB database: only the matching rows come back (Arrow → polars).

The first step of database sources (issue #21): the table schemas are read from the
database (``LIMIT 0``, fetched as polars through Arrow, so the types are exactly the ones polars would see),
the segment is validated against them and compiled by :mod:`audiences.segments.sql`, and
the result is fetched the same way. Not yet wired to ``[sources]`` in audiences.toml.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import sqlglot.expressions as exp

from audiences.core.errors import DataError
from audiences.segments.context import SegmentContext
from audiences.segments.model import Segment
from audiences.segments.sql import SqlTables, segment_sql


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
