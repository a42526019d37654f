"""The sample CRM loaded into a database: a DuckDB file or a PostgreSQL database.

For trying database sources (docs/warehouse.md), the tests and the warehouse benchmark:
each frame becomes a table of the same name with the matching SQL types (text, bigint,
double precision, boolean, date, timestamp, text[]), replaced if it exists.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl


def load_duckdb(path: Path, frames: dict[str, pl.DataFrame]) -> None:
    """Write each frame as a table of the DuckDB database file ``path`` (created if new)."""
    import duckdb

    with duckdb.connect(str(path)) as connection:
        for name, frame in frames.items():
            connection.register("_frame", frame.to_arrow())
            quoted = '"' + name.replace('"', '""') + '"'
            connection.execute(f"CREATE OR REPLACE TABLE {quoted} AS SELECT * FROM _frame")
            connection.unregister("_frame")


_PG_TYPES: list[tuple[type[pl.DataType], str]] = [
    (pl.String, "text"),
    (pl.Boolean, "boolean"),
    (pl.Date, "date"),
    (pl.Float64, "double precision"),
    (pl.Float32, "real"),
]


def _pg_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return "timestamptz" if dtype.time_zone else "timestamp"
    if isinstance(dtype, pl.List):
        return "text[]"
    if dtype.is_integer():
        return "bigint"
    for kind, name in _PG_TYPES:
        if isinstance(dtype, kind):
            return name
    raise ValueError(f"no PostgreSQL type for a {dtype} column")


def _pg_text(name: str, dtype: pl.DataType) -> pl.Expr:
    """The column as PostgreSQL's CSV input reads it (arrays as ``{"a","b"}`` literals)."""
    column = pl.col(name)
    if isinstance(dtype, pl.List):
        escaped = (
            pl.element()
            .str.replace_all("\\", "\\\\", literal=True)
            .str.replace_all('"', '\\"', literal=True)
        )
        element = pl.when(pl.element().is_null()).then(pl.lit("NULL"))
        quoted = element.otherwise(pl.lit('"') + escaped + pl.lit('"'))
        joined = column.list.eval(quoted).list.join(",")
        return (pl.lit("{") + joined + pl.lit("}")).alias(name)
    if isinstance(dtype, pl.Datetime):
        return column.dt.strftime(
            "%Y-%m-%d %H:%M:%S%.6f%z" if dtype.time_zone else "%Y-%m-%d %H:%M:%S%.6f"
        )
    return column.cast(pl.String)


_COPY_ROWS = 500_000  # rows per slice of CSV text sent to COPY


def load_postgres(
    conninfo: str, frames: dict[str, pl.DataFrame], *, schema: str | None = None
) -> None:
    """Create (replace) each frame as a table in PostgreSQL and ``COPY`` its rows in."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(conninfo, autocommit=True) as connection:
        if schema is not None:
            connection.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            )
        for name, frame in frames.items():
            table = sql.Identifier(schema, name) if schema else sql.Identifier(name)
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_pg_type(t)))
                for c, t in frame.schema.items()
            )
            connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
            connection.execute(sql.SQL("CREATE TABLE {} ({})").format(table, columns))
            copy = sql.SQL("COPY {} FROM STDIN (FORMAT csv)").format(table)
            with connection.cursor() as cursor, cursor.copy(copy) as writer:
                # in slices: the CSV text of a whole 60M-event table is several GB
                for part in frame.iter_slices(_COPY_ROWS):
                    text = part.select(_pg_text(c, t) for c, t in part.schema.items())
                    buffer = io.BytesIO()
                    text.write_csv(
                        buffer, include_header=False, null_value="", quote_style="non_numeric"
                    )
                    writer.write(buffer.getbuffer())
            connection.execute(sql.SQL("ANALYZE {}").format(table))
