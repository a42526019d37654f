"""CRM tables in a database: DuckDB files and PostgreSQL (``kind = "duckdb"`` / ``"postgres"``).

A database source is read three ways, all through this module:

* :func:`scan_table`: a lazy polars view of the table (a polars IO source: only the columns
  a plan projects are read, with one ``SELECT`` in the database) for what reads the whole
  CRM — linkage of duplicates of opt-outs, ``validate``'s checks, ``audiences columns``;
* :func:`fetch` / :func:`read_query`: the rows of a sqlglot ``SELECT`` (the compiled
  segment) as a polars frame: DuckDB hands over Arrow; PostgreSQL's rows come through ADBC
  (``adbc-driver-postgresql``: a binary ``COPY`` decoded straight into Arrow, no text
  rendering or parsing);
* :func:`table_digest`: the DP ledger's dataset id, computed by the database over every row.

The PostgreSQL connection URI is read from the environment variable the config names, at
connect time, and never appears in a message: connection failures are told by their kind
(refused, authentication, bad URI) and the variable's *name*.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import sqlglot
import sqlglot.expressions as exp

from audiences.core.config import ProjectConfig, SourceConfig
from audiences.core.errors import DataError

#: PostgreSQL type OIDs → the polars type the table's column is read as.
_PG_TYPES: dict[int, pl.DataType] = {
    16: pl.Boolean(),
    20: pl.Int64(),
    21: pl.Int16(),
    23: pl.Int32(),
    700: pl.Float32(),
    701: pl.Float64(),
    1700: pl.Float64(),  # numeric
    25: pl.String(),
    1042: pl.String(),  # char(n)
    1043: pl.String(),  # varchar
    19: pl.String(),  # name
    1082: pl.Date(),
    1114: pl.Datetime("us"),
    1184: pl.Datetime("us", "UTC"),
    1009: pl.List(pl.String()),  # text[]
    1015: pl.List(pl.String()),  # varchar[]
}
#: Session settings that make PostgreSQL's text output (and so the digest) independent of
#: the server's and the user's defaults; the connection never writes.
_PG_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres -c extra_float_digits=1 "
    "-c default_transaction_read_only=on -c client_encoding=UTF8"
)


@dataclass(frozen=True)
class Database:
    """Where a database source lives; holds no secret (the URI is read when connecting)."""

    kind: str  # "duckdb" | "postgres"
    path: Path | None = None  # DuckDB file
    uri_env: str | None = None  # PostgreSQL: the environment variable holding the URI
    schema: str | None = None

    @property
    def dialect(self) -> str:
        return self.kind

    def where(self) -> str:
        if self.kind == "duckdb":
            return f"DuckDB file {self.path}"
        return f"the PostgreSQL database of ${self.uri_env}"

    def scope(self) -> str:
        """The database's identity for the DP ledger's scope: file path, or host:port/db."""
        if self.kind == "duckdb":
            return f"duckdb:{Path(str(self.path)).resolve()}"
        import psycopg.conninfo

        try:
            info = psycopg.conninfo.conninfo_to_dict(self._uri())
        except psycopg.ProgrammingError:
            raise self._bad_uri() from None
        parts = (info.get("host"), info.get("port"), info.get("dbname"), info.get("user"))
        return "postgres:" + ":".join(str(p or "") for p in parts)

    def _uri(self) -> str:
        assert self.uri_env is not None
        uri = os.environ.get(self.uri_env, "").strip()
        if not uri:
            raise DataError(
                f"environment variable {self.uri_env} is not set (it holds the PostgreSQL "
                "connection URI of the sources)",
                f"export {self.uri_env}=postgresql://USER@HOST:PORT/DATABASE before running",
            )
        return uri

    def _bad_uri(self) -> DataError:
        return DataError(
            f"${self.uri_env} does not hold a valid PostgreSQL connection URI",
            "set it to postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
        )

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A read-only connection (DuckDB or psycopg), closed on exit."""
        if self.kind == "duckdb":
            import duckdb

            path = Path(str(self.path))
            if not path.is_file():
                raise DataError(
                    f"DuckDB database {path} does not exist",
                    "fix [sources].path in audiences.toml (the .duckdb file)",
                )
            try:
                duck = duckdb.connect(str(path), read_only=True)
                # no progress bar: DuckDB draws it on stdout, where --json documents go
                duck.execute("SET enable_progress_bar = false")
            except duckdb.Error as exc:
                raise DataError(
                    f"cannot open DuckDB database {path.name} ({type(exc).__name__})",
                    "check that it is a DuckDB database file, readable, and not held open for writing "
                    "by another process",
                ) from None
            with duck:
                yield duck
            return
        import psycopg

        arguments = self._arguments()
        try:
            pg = psycopg.connect(**arguments, autocommit=True)
        except psycopg.ProgrammingError:
            raise self._bad_uri() from None
        except psycopg.Error as exc:
            raise self._unreachable(exc) from None
        with pg:
            yield pg

    def _arguments(self) -> dict[str, Any]:
        """libpq connection parameters: the URI's, then ours (read-only, UTC, ISO dates)."""
        import psycopg.conninfo

        uri = self._uri()
        try:
            # the URI's own options (e.g. a statement_timeout) stay; ours come last and win
            given = psycopg.conninfo.conninfo_to_dict(uri).get("options") or ""
        except psycopg.ProgrammingError:
            raise self._bad_uri() from None
        return {
            "conninfo": uri,
            "connect_timeout": 10,
            "application_name": "audiences",
            "options": f"{given} {_PG_OPTIONS}".strip(),
        }

    @contextmanager
    def arrow(self) -> Iterator[Any]:
        """A read-only ADBC connection to PostgreSQL (results as Arrow: binary ``COPY``)."""
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi
        import psycopg.conninfo

        arguments = self._arguments()
        try:
            conninfo = psycopg.conninfo.make_conninfo(arguments.pop("conninfo"), **arguments)
        except psycopg.ProgrammingError:
            raise self._bad_uri() from None
        try:
            connection = adbc_driver_postgresql.dbapi.connect(conninfo, autocommit=True)
        except adbc_driver_manager.Error as exc:
            raise self._unreachable(exc) from None
        with connection:
            yield connection

    def _unreachable(self, exc: BaseException) -> DataError:
        text = str(exc).lower()  # read for its kind only: it may quote host or user
        if "invalid" in text and "value" in text:  # an option of the URI (sslmode=...)
            return self._bad_uri()
        var = f"${self.uri_env}"
        if "password" in text or "authentication" in text or "role" in text:
            reason, fix = (
                "the server refused the credentials",
                f"check the user and password in {var}",
            )
        elif "does not exist" in text:
            reason, fix = "the database does not exist", f"check the database name in {var}"
        else:
            reason = "the server cannot be reached"
            fix = f"check the host and port in {var} and that the server runs"
        return DataError(
            f"cannot connect to the PostgreSQL database of ${self.uri_env}: {reason}", fix
        )


def database_of(source: SourceConfig, config: ProjectConfig) -> Database:
    if source.kind == "duckdb":
        return Database("duckdb", path=config.path(source.file()), schema=source.db_schema)
    return Database("postgres", uri_env=source.uri_env, schema=source.db_schema)


def table_ref(database: Database, table: str) -> exp.Table:
    return exp.table_(table, db=database.schema, quoted=True)


def _table_error(name: str, database: Database, table: str, exc: BaseException) -> DataError:
    import adbc_driver_manager
    import duckdb
    import psycopg

    shown = f"{database.schema}.{table}" if database.schema else table
    # psycopg and ADBC errors both carry the SQLSTATE; their text is never shown
    state = getattr(exc, "sqlstate", None)
    if isinstance(exc, duckdb.CatalogException) or state in ("42P01", "3F000"):
        return DataError(
            f"source {name!r}: {database.where()} has no table or view {shown}",
            f"create it, or fix [sources.{name}].table (and schema) in audiences.toml",
        )
    if state == "42501":
        return DataError(
            f"source {name!r}: the database user may not read {shown}",
            f"GRANT SELECT ON {shown} to the user of the connection URI",
        )
    if state == "57014":
        return DataError(
            f"source {name!r}: the database cancelled the query on {shown} (a statement "
            "timeout or an administrator)",
            "raise the user's statement_timeout or run again when the database is quieter",
        )
    if isinstance(exc, (psycopg.OperationalError, adbc_driver_manager.OperationalError)):
        return database._unreachable(exc)
    return DataError(
        f"source {name!r}: the database failed reading {shown} ({type(exc).__name__})",
        "check the table and the database server's log",
    )


def _database_errors() -> tuple[type[BaseException], ...]:
    import adbc_driver_manager
    import duckdb
    import psycopg

    return (duckdb.Error, psycopg.Error, adbc_driver_manager.Error)


def table_schema(name: str, connection: Any, database: Database, table: str) -> pl.Schema:
    """The polars view of a table's column types (a DataError if it does not exist)."""
    empty = exp.select(exp.Star()).from_(table_ref(database, table)).limit(0)
    sql = empty.sql(dialect=database.dialect)
    try:
        if database.kind == "duckdb":
            return pl.Schema(connection.sql(sql).pl().schema)
        with connection.cursor() as cursor:
            cursor.execute(sql)
            description = cursor.description or []
    except _database_errors() as exc:
        raise _table_error(name, database, table, exc) from None
    return pl.Schema({col.name: _PG_TYPES.get(col.type_code, pl.String()) for col in description})


def has_rows(name: str, connection: Any, database: Database, table: str) -> bool:
    one = exp.alias_(exp.Literal.number(1), "one", quoted=True)
    query = exp.select(one).from_(table_ref(database, table)).limit(1)
    return _first_row(name, connection, database, query, table) is not None


def id_counts(name: str, database: Database, table: str, column: str) -> tuple[int, int]:
    """(rows without an id, rows whose id another row has too) in ``table``, counted by
    the database (reading every id out of it costs far more than the counts)."""
    col = exp.column(column, quoted=True)
    counts = exp.select(
        exp.Count(this=exp.Star()),
        exp.Count(this=col),
        exp.Count(this=exp.Distinct(expressions=[col])),
    ).from_(table_ref(database, table))
    with database.connect() as connection:
        row = _first_row(name, connection, database, counts, table)
        assert row is not None  # an aggregate has one row
        rows, present, distinct = (int(v) for v in row)
        if present == distinct:
            return rows - present, 0
        groups = (
            exp.select(exp.alias_(exp.Count(this=exp.Star()), "k", quoted=True))
            .from_(table_ref(database, table))
            .where(exp.Not(this=exp.Is(this=col, expression=exp.Null())))
            .group_by(col)
            .having(exp.GT(this=exp.Count(this=exp.Star()), expression=exp.Literal.number(1)))
        )
        total = exp.select(exp.Sum(this=exp.column("k", quoted=True))).from_(
            groups.subquery("shared")
        )
        shared = _first_row(name, connection, database, total, table)
    return rows - present, int(shared[0] or 0) if shared else 0


def _first_row(
    name: str, connection: Any, database: Database, query: exp.Select, table: str
) -> tuple[Any, ...] | None:
    """The first row of a small query, on the open connection (DuckDB or psycopg)."""
    sql = query.sql(dialect=database.dialect)
    try:
        if database.kind == "duckdb":
            row: tuple[Any, ...] | None = connection.execute(sql).fetchone()
            return row
        with connection.cursor() as cursor:
            row = cursor.execute(sql).fetchone()
            return row
    except _database_errors() as exc:
        raise _table_error(name, database, table, exc) from None


def fetch(
    name: str, connection: Any, database: Database, query: exp.Select, schema: pl.Schema
) -> pl.DataFrame:
    """The rows of ``query``, whose output columns have the polars types ``schema``.

    ``connection`` is the DuckDB connection; PostgreSQL rows are read over a connection of
    their own (``connection`` may be None): ADBC's binary ``COPY``, straight into Arrow."""
    try:
        if database.kind == "duckdb":
            frame: pl.DataFrame = connection.sql(query.sql(dialect="duckdb")).pl()
            return frame
        return _fetch_postgres(database, query, schema)
    except _database_errors() as exc:
        table = query.find(exp.Table)
        raise _table_error(name, database, table.name if table else "?", exc) from None


def _fetch_postgres(database: Database, query: exp.Select, schema: pl.Schema) -> pl.DataFrame:
    """``query`` read through ADBC (binary ``COPY`` to Arrow), cast to ``schema``'s types."""
    inner = query.subquery("q")
    outer = exp.select(*(_pg_column(n, d) for n, d in schema.items())).from_(inner)
    with database.arrow() as connection, connection.cursor() as cursor:
        cursor.execute(outer.sql(dialect="postgres"))
        table = cursor.fetch_arrow_table()
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.select(pl.col(n).cast(d) for n, d in schema.items())


def _pg_column(name: str, dtype: pl.DataType) -> exp.Expr:
    """The column as ADBC reads it into the polars type ``dtype``: ``numeric`` (which ADBC
    hands over as text) as double precision, text-like types (varchar, char, name, and
    what ``table_schema`` reads as text) as text, text arrays as ``text[]``; dates,
    timestamps (with time zone: UTC), booleans and integers as they are."""
    column: exp.Expr = exp.column(name, table="q", quoted=True)
    if dtype.is_float():
        column = exp.cast(column, exp.DataType.Type.DOUBLE)
    elif dtype == pl.String:
        column = exp.cast(column, "TEXT")
    elif isinstance(dtype, pl.List):
        column = exp.cast(column, "TEXT[]")
    return exp.alias_(column, name, quoted=True)


# -- the lazy view -----------------------------------------------------------------------


def scan_table(
    name: str,
    database: Database,
    table: str,
    schema: pl.Schema,
    conversions: dict[str, pl.DataType],
    order_by: str | None = None,
) -> pl.LazyFrame:
    """A lazy view of ``table``: each collect reads only the projected columns.

    ``schema`` is the database's view of the columns, ``conversions`` the declared types
    they are cast to (an ``int`` column stored as INTEGER is read as Int64, as from a file).
    ``order_by`` (the contacts' unique id) gives every read the same row order: a database
    returns rows in any order (PostgreSQL's synchronized scans start mid-table), and the
    opt-out linkage finds records again by their row position.
    """
    from polars.io.plugins import register_io_source

    converted = pl.Schema(
        {column: conversions.get(column, dtype) for column, dtype in schema.items()}
    )

    def read(
        with_columns: list[str] | None,
        predicate: pl.Expr | None,
        n_rows: int | None,
        batch_size: int | None,
    ) -> Iterator[pl.DataFrame]:
        columns = with_columns if with_columns is not None else schema.names()
        # No projected column (a row count): still read the rows, as their first column.
        read_columns = columns or schema.names()[:1]
        query = exp.select(*(exp.column(c, quoted=True) for c in read_columns)).from_(
            table_ref(database, table)
        )
        if order_by is not None:
            query = query.order_by(exp.column(order_by, quoted=True))
        if n_rows is not None and predicate is None:  # a filter first needs every row
            query = query.limit(n_rows)
        frame = read_query(name, database, query, _subset(schema, read_columns))
        frame = cast_columns(frame, conversions)
        if predicate is not None:
            frame = frame.filter(predicate)
            frame = frame.head(n_rows) if n_rows is not None else frame
        yield frame.select(columns)

    return register_io_source(read, schema=converted)


def read_query(name: str, database: Database, query: exp.Select, schema: pl.Schema) -> pl.DataFrame:
    """``fetch`` over a connection of its own."""
    if database.kind == "postgres":
        return fetch(name, None, database, query, schema)
    with database.connect() as connection:
        return fetch(name, connection, database, query, schema)


def _subset(schema: pl.Schema, columns: list[str]) -> pl.Schema:
    return pl.Schema({column: schema[column] for column in columns})


def cast_columns(frame: pl.DataFrame, conversions: dict[str, pl.DataType]) -> pl.DataFrame:
    casts = [
        pl.col(column).cast(dtype)
        for column, dtype in conversions.items()
        if column in frame.columns and frame.schema[column] != dtype
    ]
    return frame.with_columns(casts) if casts else frame


# -- the DP ledger's dataset id ------------------------------------------------------------

#: Per row, one 64-bit hash of the row's text, summed over the table (a sum: the order rows
#: come in does not matter; duplicates count). With the row count and the column names and
#: types, a change to any value of any row changes the id (unless two hashes collide, at
#: odds of 2**-64 per change: the id then stays, the budget stays shared: the safe
#: direction; docs/warehouse.md). The row's text: PostgreSQL's ``row::text`` (in the
#: session's fixed UTC / ISO settings) hashed by ``hashtextextended`` (bytes, collation
#: "C"); on DuckDB each column cast to text on its own (``N`` for null, ``V`` + text
#: otherwise, joined by the unit separator; not the row's struct, whose text form has
#: changed between versions) hashed by MD5 (DuckDB's own ``hash()`` changed between 1.2
#: and 1.3: an id must not change under an upgrade).
_ROW_HASH = {
    "duckdb": "md5_number_lower(x)",
    "postgres": 'hashtextextended(CAST(r AS TEXT) COLLATE "C", 0)',
}
#: The first format's per-row sums (MD5 of the row's text, both 64-bit halves), computed
#: only to carry a budget over to the format above (``table_digest(legacy=True)``).
_LEGACY_SUMS = {
    "duckdb": ["md5_number_upper(x)", "md5_number_lower(x)"],
    "postgres": [
        "CAST(CAST('x' || SUBSTR(MD5(CAST(r AS TEXT)), 1, 16) AS BIT(64)) AS BIGINT)",
        "CAST(CAST('x' || SUBSTR(MD5(CAST(r AS TEXT)), 17, 16) AS BIT(64)) AS BIGINT)",
    ],
}


@dataclass(frozen=True)
class TableDigest:
    """A table's digest (``full``: over every row; else from its version column) and, when
    asked for, the first format's digest of the same rows, read in the same statement."""

    digest: str
    full: bool
    legacy: str | None = None


def _duckdb_row_text(schema: pl.Schema) -> exp.Expr:
    parts: list[exp.Expr] = []
    for name in schema.names():
        column = exp.column(name, table="r", quoted=True)
        text = exp.DPipe(this=exp.Literal.string("V"), expression=exp.cast(column, "VARCHAR"))
        value = exp.Case(
            ifs=[
                exp.If(
                    this=exp.Is(this=column.copy(), expression=exp.Null()),
                    true=exp.Literal.string("N"),
                )
            ],
            default=text,
        )
        parts.append(value)
    row: exp.Expr = parts[0]
    for part in parts[1:]:
        row = exp.DPipe(
            this=exp.DPipe(this=row, expression=exp.Literal.string("\x1f")), expression=part
        )
    return row


def table_digest(
    name: str,
    database: Database,
    table: str,
    version_column: str | None = None,
    *,
    legacy: bool = False,
) -> TableDigest:
    """A digest of every row of ``table``, computed by the database (the DP dataset id);
    with ``version_column``, of the row count and that column's greatest value (a format
    that never changed). ``legacy``: also the first format's digest, in the same scan."""
    if version_column is not None:
        return TableDigest(_version_digest(name, database, table, version_column), full=False)
    sums = [_ROW_HASH[database.kind], *(_LEGACY_SUMS[database.kind] if legacy else [])]
    text = f"SELECT COUNT(*), {', '.join(f'SUM({s})' for s in sums)} FROM t AS r"
    query = sqlglot.parse_one(text, dialect=database.dialect)
    found = query.find(exp.Table)
    assert found is not None
    reference = table_ref(database, table)
    reference.set("alias", exp.TableAlias(this=exp.to_identifier("r")))
    found.replace(reference)
    with database.connect() as connection:
        schema = table_schema(name, connection, database, table)
        if database.kind == "duckdb":
            row_text = _duckdb_row_text(schema)
            for placeholder in list(query.find_all(exp.Column)):
                if placeholder.name == "x":
                    placeholder.replace(row_text.copy())
        if not isinstance(query, exp.Select):  # pragma: no cover - the template is a SELECT
            raise TypeError(text)
        row = _first_row(name, connection, database, query, table)
    assert row is not None
    columns = [[column, str(dtype)] for column, dtype in schema.items()]
    document = {
        "format": 2,
        "kind": database.kind,
        "table": table,
        "columns": columns,
        "rows": int(row[0]),
        "sum": str(row[1] if row[1] is not None else 0),
    }
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
    if not legacy:
        return TableDigest(digest, full=True)
    first = {
        "kind": database.kind,
        "table": table,
        "columns": columns,
        "rows": int(row[0]),
        "sums": [str(row[2]), str(row[3])],
    }
    old = hashlib.sha256(json.dumps(first, sort_keys=True).encode()).hexdigest()
    return TableDigest(digest, full=True, legacy=old)


def _version_digest(name: str, database: Database, table: str, column: str) -> str:
    """The dataset id from a declared version column: ``COUNT(*)`` and ``MAX(column)``.

    A change that leaves both alone (an update that does not bump the column) keeps the
    id, so further spends are charged to the same budget: the safe direction."""
    version = exp.column(column, quoted=True)
    text = "TEXT" if database.kind == "postgres" else "VARCHAR"
    aliased = exp.select(
        exp.alias_(exp.Count(this=exp.Star()), "rows", quoted=True),
        exp.alias_(exp.cast(exp.Max(this=version), text), "version", quoted=True),
    ).from_(table_ref(database, table))
    with database.connect() as connection:
        schema = table_schema(name, connection, database, table)
        if column not in schema:
            raise DataError(
                f"source {name!r}: the version column {column!r} is not in table {table}",
                f"fix [sources.{name}].version_column in audiences.toml",
            )
        row = _first_row(name, connection, database, aliased, table)
    assert row is not None
    document = {
        "kind": database.kind,
        "table": table,
        "columns": [[c, str(dtype)] for c, dtype in schema.items()],
        "rows": int(row[0]),
        "version": [column, row[1]],
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
