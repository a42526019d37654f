"""Lazy loading of the CRM sources declared in ``audiences.toml``.

Sources stay :class:`polars.LazyFrame` until the pipeline's single collect. Cheap
checks (file present, not empty, declared columns present) run up front; the
expensive ones (values that don't parse, a CSV that isn't UTF-8) are diagnosed only
when polars fails, so the happy path pays nothing for them.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3
import polars as pl

from audiences.core.config import ColumnSpec, ProjectConfig, SourceConfig
from audiences.core.errors import DataError

if TYPE_CHECKING:
    # the database layer (sqlglot: 0.1 s to import) is loaded by a database source only
    from audiences.crm.databases import Database, TableDigest

_DTYPES: dict[str, pl.DataType] = {
    "str": pl.String(),
    "int": pl.Int64(),
    "float": pl.Float64(),
    "bool": pl.Boolean(),
    "date": pl.Date(),
    "datetime": pl.Datetime("us"),
}


_TRUE_WORDS = ["true", "t", "1", "yes", "y"]
_FALSE_WORDS = ["false", "f", "0", "no", "n"]
BOOL_WORDS = [*_TRUE_WORDS, *_FALSE_WORDS]


@dataclass(frozen=True)
class TableSource:
    """A source that is a database table: where it is and how its columns are read."""

    database: Database
    table: str
    schema: pl.Schema  # the database's column types, as polars reads them
    conversions: dict[str, pl.DataType]  # declared types the columns are cast to


@dataclass(frozen=True)
class Sources:
    contacts: pl.LazyFrame
    events: pl.LazyFrame | None
    pending_digest: Future[str]
    # per-export results shared by the segments of one run (the opt-out index)
    cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # database sources by name ("contacts", "events"); empty for files
    tables: dict[str, TableSource] = field(default_factory=dict, compare=False)
    # per source name, the columns whose declared type is parsed from what the file holds
    # (text to a date, a bool, a number): a value that does not parse fails the read
    parsed: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    @property
    def in_database(self) -> bool:
        """Do the segments run inside a database (the contacts are a database table)?"""
        return "contacts" in self.tables

    @property
    def digest(self) -> str:
        """Content digest of every source file: the DP ledger's dataset id.

        Computed in a background thread from :func:`load_sources` on (hashing a
        10M-contact export takes about two seconds, and hashlib releases the GIL), so it
        overlaps the build's own work; the first read waits for it.
        """
        return self.pending_digest.result()


def file_stamp(path: Path | None) -> list[int]:
    """A file as the file system knows it: size, modification and change times, inode and
    device (``[]`` for no file: a database table). A record made for one version of an
    export (the opt-out index, the id check) holds it beside the source digest: the
    digest cache (``digests.json``) is not authenticated, and a rewrite that restores a
    file's size and modification time still changes its change time and, renamed in,
    its inode."""
    if path is None:
        return []
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _check_file(name: str, source: SourceConfig, config: ProjectConfig) -> Path:
    path = config.path(source.file())
    if not path.exists():
        raise DataError(
            f"source {name!r}: file {path} does not exist",
            f"fix [sources.{name}].path in audiences.toml or run `audiences sample-data`",
        )
    if path.is_dir() or path.stat().st_size == 0:
        raise DataError(f"source {name!r}: {path} is empty", "point the source at a file with data")
    return path


def _convert(column: str, spec: ColumnSpec, list_separator: str, current: pl.DataType) -> pl.Expr:
    col, kind = pl.col(column), spec.type
    if kind == "list[str]":
        if isinstance(current, pl.List):
            return col.cast(pl.List(pl.String))
        return col.cast(pl.String).str.split(list_separator).alias(column)
    target = _DTYPES[kind]
    if current == target:
        return col
    if spec.format is not None and kind in ("date", "datetime") and current != pl.String:
        col, current = col.cast(pl.String), pl.String()  # CSV inference guessed otherwise
    if current == pl.String:
        if kind == "date":
            return col.str.strip_chars().str.to_date(spec.format, strict=True).alias(column)
        if kind == "datetime":
            text = col.str.strip_chars()
            return text.str.to_datetime(spec.format, time_unit="us", strict=True).alias(column)
        if kind == "bool":
            lowered = col.str.strip_chars().str.to_lowercase()
            return (
                pl.when(lowered.is_in(_TRUE_WORDS))
                .then(True)
                .when(lowered.is_in(_FALSE_WORDS))
                .then(False)
                .when(lowered.is_null() | (lowered == ""))
                .then(None)
                .otherwise(lowered.cast(pl.Boolean, strict=True))
                .alias(column)
            )
    return col.cast(target, strict=True)


def open_table(name: str, source: SourceConfig, config: ProjectConfig) -> TableSource:
    """A database source checked to exist and have rows; declared types checked to fit."""
    from audiences.crm.databases import database_of, has_rows, table_schema

    database = database_of(source, config)
    assert source.table is not None
    with database.connect() as connection:
        schema = table_schema(name, connection, database, source.table)
        filled = has_rows(name, connection, database, source.table)
    if not filled:
        raise DataError(
            f"source {name!r}: {source.label} has no rows",
            f"load the table, or fix [sources.{name}].table in audiences.toml",
        )
    conversions: dict[str, pl.DataType] = {}
    for column, spec in source.column_specs().items():
        if column not in schema:
            continue  # named by scan_source's missing-column error
        target = _fitting_type(spec, schema[column])
        if target is None:
            raise DataError(
                f"source {name!r}: column {column!r} of {source.label} is "
                f"{_sql_word(schema[column])} in the database, declared {spec.type}",
                f"declare it as {_declared_word(schema[column])} in [sources.{name}].columns, "
                "or store it with the declared type",
            )
        conversions[column] = target
    return TableSource(database, source.table, schema, conversions)


def _fitting_type(spec: ColumnSpec, stored: pl.DataType) -> pl.DataType | None:
    """The type a declared column is read as, or None if the stored type does not fit."""
    kind = spec.type
    if kind == "list[str]":
        return stored if stored == pl.List(pl.String) else None
    fits = {
        "str": stored == pl.String,
        "int": stored.is_integer(),
        "float": stored.is_float() or stored.is_integer(),
        "bool": stored == pl.Boolean,
        "date": stored == pl.Date,
        "datetime": isinstance(stored, pl.Datetime),
    }[kind]
    if not fits:
        return None
    return stored if kind == "datetime" else _DTYPES[kind]


def _sql_word(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return "a timestamp"
    if isinstance(dtype, pl.List):
        return "an array"
    if dtype.is_integer():
        return "an integer"
    words = {"float": "a floating-point number", "bool": "a boolean", "date": "a date"}
    return words.get(_declared_word(dtype), "text")


def _declared_word(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    if isinstance(dtype, pl.List):
        return "list[str]"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    return {pl.Boolean: "bool", pl.Date: "date"}.get(type(dtype), "str")


def read_source(name: str, source: SourceConfig, config: ProjectConfig) -> pl.LazyFrame:
    """The source with the types polars infers (no declared conversions), checked to
    exist, be readable and have rows."""
    if source.is_database:
        from audiences.crm.databases import scan_table

        opened = open_table(name, source, config)
        order = getattr(source, "id", None)
        return scan_table(name, opened.database, opened.table, opened.schema, {}, order)
    path = _check_file(name, source, config)
    fmt = source.resolved_format
    try:
        if fmt == "parquet":
            # "prefiltered": a filter's columns are decoded first and the others only for
            # the rows it keeps (a segment keeps a few per cent of the contacts and events;
            # 10M contacts, seven builds in turn: first build 15.51 → 14.74 s, a second
            # segment 7.52 → 7.20 s, medians)
            lf = pl.scan_parquet(path, parallel="prefiltered")
        elif fmt == "ndjson":
            lf = pl.scan_ndjson(path, infer_schema_length=10_000)
        else:
            lf = pl.scan_csv(
                path,
                separator=source.separator,
                try_parse_dates=True,
                infer_schema_length=10_000,
                encoding="utf8",
            )
        lf.collect_schema()
        # A header without rows (a failed CRM export) would otherwise build an empty,
        # all-text table and surface later as a confusing type or min-size error.
        has_rows = lf.head(1).collect().height > 0
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _diagnose(name, source, path, exc) from None
    if not has_rows:
        raise DataError(
            f"source {name!r}: {path} has no rows",
            f"re-export the table with its data, or fix [sources.{name}].path in audiences.toml",
        )
    return lf


def scan_source(name: str, source: SourceConfig, config: ProjectConfig) -> pl.LazyFrame:
    return _scan(name, source, config)[0]


def _parses(spec: ColumnSpec, stored: pl.DataType) -> bool:
    """Can the declared conversion of a column stored as ``stored`` fail on a value?"""
    return spec.type not in ("str", "list[str]") and stored != _DTYPES[spec.type]


def _scan(
    name: str, source: SourceConfig, config: ProjectConfig
) -> tuple[pl.LazyFrame, TableSource | None, tuple[str, ...]]:
    opened = open_table(name, source, config) if source.is_database else None
    if opened is not None:
        schema = opened.schema
    else:
        lf = read_source(name, source, config)
        schema = lf.collect_schema()
    missing = [c for c in source.columns if c not in schema]
    if missing:
        fix = "the table" if source.is_database else "the file's header"
        raise DataError(
            f"source {name!r} ({source.label}) has no column(s) {missing}",
            f"fix [sources.{name}].columns or {fix}",
        )
    if opened is not None:
        from audiences.crm.databases import scan_table

        order = getattr(source, "id", None)  # contacts: the unique id
        view = scan_table(name, opened.database, opened.table, schema, opened.conversions, order)
        return view, opened, ()  # (the declared types fit the stored ones: open_table)
    specs = source.column_specs()
    conversions = [
        _convert(col, spec, source.list_separator, schema[col]) for col, spec in specs.items()
    ]
    parsed = tuple(col for col, spec in specs.items() if _parses(spec, schema[col]))
    return (lf.with_columns(conversions) if conversions else lf), None, parsed


def load_sources(config: ProjectConfig) -> Sources:
    tables: dict[str, TableSource] = {}
    contacts, opened, contacts_parsed = _scan("contacts", config.sources.contacts, config)
    parsed = {"contacts": contacts_parsed}
    if opened is not None:
        tables["contacts"] = opened
    schema = contacts.collect_schema()
    cid = config.sources.contacts.id
    if cid not in schema:
        raise DataError(
            f"source 'contacts' has no id column {cid!r}",
            "set [sources.contacts].id to the CRM's person id column",
        )
    for role, column in config.identity.model_dump().items():
        if role != "default_country" and column and column not in schema:
            raise DataError(
                f"identity {role!r} maps to column {column!r}, which source 'contacts' lacks",
                f"fix [identity].{role} in audiences.toml",
            )
    events = None
    if config.sources.events is not None:
        ev = config.sources.events
        events, opened, parsed["events"] = _scan("events", ev, config)
        if opened is not None:
            tables["events"] = opened
        ev_schema = events.collect_schema()
        for role, column in (("contact_id", ev.contact_id), ("type", ev.type), ("time", ev.time)):
            if column not in ev_schema:
                raise DataError(
                    f"source 'events' has no {role} column {column!r}",
                    f"set [sources.events].{role} to the right column",
                )
    return Sources(
        contacts=contacts,
        events=events,
        pending_digest=_digest_in_background(config),
        tables=tables,
        parsed=parsed,
    )


def _digest_in_background(config: ProjectConfig) -> Future[str]:
    future: Future[str] = Future()

    def run() -> None:
        try:
            future.set_result(source_digest(config))
        except BaseException as exc:  # handed to whoever reads the digest
            future.set_exception(exc)

    threading.Thread(target=run, name="audiences-source-digest", daemon=True).start()
    return future


def source_digest(config: ProjectConfig) -> str:
    """Content digest over every source file (cached by size and mtime in the state dir),
    or over every row of every database source (computed by the database)."""
    if config.sources.contacts.is_database:
        return _tables_digest(config)
    # missing or empty files are one-line DataErrors here too (`audiences budget` digests
    # the sources without loading them)
    paths = [_check_file("contacts", config.sources.contacts, config)]
    if config.sources.events is not None:
        paths.append(_check_file("events", config.sources.events, config))
    cache_path = config.state_dir / "digests.json"
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    except (OSError, ValueError):
        cache = {}
    outer = hashlib.sha256()
    changed = False
    for path in paths:
        st = path.stat()
        # size, mtime, ctime and inode: a rewrite that restores size and mtime (touch -r,
        # rsync -t) still changes ctime, and a file swapped in by rename its inode
        key = f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
        digest = cache.get(key)
        if digest is None:
            digest = _file_digest(path, _earlier_digests(cache, path))
            for old in [k for k in cache if k.startswith(f"{path}:")]:
                del cache[old]  # one entry per file: the cache does not grow with each edit
            cache[key] = digest
            changed = True
        outer.update(digest.encode())
    if changed and config.state_dir.exists():
        from audiences.core.atomic import write_text

        write_text(cache_path, json.dumps(cache), durable=False)  # a cache: lost, re-digested
    return outer.hexdigest()


def _earlier_digests(cache: dict[str, str], path: Path) -> set[str]:
    """The digests cached for ``path`` under any earlier key (another stat, or the
    size-and-mtime keys of earlier versions)."""
    prefix = f"{path}:"
    return {digest for key, digest in cache.items() if key.startswith(prefix)}


def _file_digest(path: Path, earlier: set[str]) -> str:
    """The file's content digest: BLAKE3 (one thread: 0.26 CPU-s for an 834 MB export
    here, against 0.6 for SHA-256 and 1.07 for BLAKE2b; on a build's first run it shares
    the cores with the segment's query). When an earlier version cached this file's
    digest with SHA-256 or BLAKE2b and the content is unchanged, that digest is kept, so
    the dataset id (the DP ledger's key) does not change under an upgrade or a touch."""
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, blake3.blake3).hexdigest()  # type: ignore[arg-type]
    if not earlier or digest in earlier:
        return digest
    for legacy in (hashlib.sha256, lambda: hashlib.blake2b(digest_size=32)):
        with path.open("rb") as fh:
            old = hashlib.file_digest(fh, legacy).hexdigest()
        if old in earlier:
            return old
    return digest


def _tables_digest(config: ProjectConfig) -> str:
    from audiences.crm.databases import TableDigest, database_of, table_digest

    named = _database_sources(config)
    cache_path = config.state_dir / "digests.json"
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    except (OSError, ValueError):
        cache = {}
    changed = False
    digests: list[TableDigest] = []
    for name, source in named:
        assert source.table is not None
        database = database_of(source, config)
        key = _duckdb_cache_key(database, source.table)  # PostgreSQL: digested every time
        key = f"v2:{key}" if key and source.version_column is None else None
        cached = cache.get(key) if key else None
        if cached is not None:
            digests.append(TableDigest(cached, full=True))
            continue
        digest = table_digest(name, database, source.table, source.version_column)
        if key:
            cache[key], changed = digest.digest, True
        digests.append(digest)
    if changed and config.state_dir.exists():
        from audiences.core.atomic import write_text

        write_text(cache_path, json.dumps(cache), durable=False)  # a cache: lost, re-digested
    return _dataset_id(digests)


def _database_sources(config: ProjectConfig) -> list[tuple[str, SourceConfig]]:
    named: list[tuple[str, SourceConfig]] = [("contacts", config.sources.contacts)]
    if config.sources.events is not None:
        named.append(("events", config.sources.events))
    return named


def _dataset_id(digests: list[TableDigest]) -> str:
    """The tables' dataset id. With a table digested over every row, in the second format:
    ``v2-`` and a hex digest (the first format's ids are bare hex: the two never collide);
    tables that all declare a version column keep the id they always had."""
    if not any(d.full for d in digests):
        return _legacy_id(d.digest for d in digests)
    outer = hashlib.sha256(b"tables-v2")
    for digest in digests:
        outer.update(digest.digest.encode())
    return "v2-" + outer.hexdigest()


def _legacy_id(digests: Iterable[str]) -> str:
    outer = hashlib.sha256(b"tables")
    for digest in digests:
        outer.update(digest.encode())
    return outer.hexdigest()


def dataset_id_formats(config: ProjectConfig) -> tuple[str, str]:
    """(the dataset id, the first format's id of the same rows) of a project over database
    sources, each table read once (both digests in one statement): the DP ledger's
    carry-over of spends recorded under the first format (policies/privacy/ledger.py)."""
    from audiences.crm.databases import database_of, table_digest

    digests = []
    for name, source in _database_sources(config):
        assert source.table is not None
        database = database_of(source, config)
        digests.append(
            table_digest(name, database, source.table, source.version_column, legacy=True)
        )
    legacy = _legacy_id(d.legacy or d.digest for d in digests)
    return _dataset_id(digests), legacy


def _duckdb_cache_key(database: Database, table: str) -> str | None:
    """A DuckDB table's digest stays valid while its file and write-ahead log are unchanged."""
    if database.kind != "duckdb" or database.path is None or not database.path.is_file():
        return None
    parts = [f"duckdb:{database.path.resolve()}:{database.schema or ''}.{table}"]
    for path in (database.path, database.path.with_name(database.path.name + ".wal")):
        st = path.stat() if path.exists() else None
        parts.append(f"{st.st_size}:{st.st_mtime_ns}" if st else "-")
    return ":".join(parts)


def _diagnose(name: str, source: SourceConfig, path: Path, exc: BaseException) -> DataError:
    """Turn a polars failure into a one-line error naming the file, the place and the fix."""
    if source.resolved_format == "csv" and not _is_utf8(path):
        return DataError(
            f"source {name!r}: {path.name} is not UTF-8 text",
            "re-save the CSV as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
        )
    ragged = _ragged_row(source, path) if source.resolved_format == "csv" else None
    if ragged is not None:
        return ragged_error(name, path, *ragged)
    return DataError(
        f"source {name!r}: cannot read {path.name} ({_polars_summary(exc)})",
        "check the file format and [sources] settings",
    )


def _ragged_row(source: SourceConfig, path: Path) -> tuple[int, int, int] | None:
    """(line, fields, header fields) of the first CSV row whose field count differs from
    the header's, or None. Quoted fields may span lines: the line is where the row ends."""
    import csv

    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter=source.separator)
            header = next(reader, None)
            if header is None:
                return None
            for row in reader:
                if row and len(row) != len(header):
                    return reader.line_num, len(row), len(header)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


def ragged_error(name: str, path: Path, line: int, fields: int, expected: int) -> DataError:
    return DataError(
        f"source {name!r}: line {line} of {path.name} has {fields} fields, the header has "
        f"{expected}",
        "fix that row (an unquoted separator or a missing field) and export again",
    )


def _is_utf8(path: Path) -> bool:
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def diagnose_values(
    name: str, source: SourceConfig, config: ProjectConfig, exc: BaseException
) -> DataError:
    """After a failed collect: find the column and first row whose value doesn't parse."""
    if source.is_database:
        return DataError(
            f"source {name!r}: cannot read {source.label} ({_polars_summary(exc)})",
            f"check the table and the types declared in [sources.{name}].columns",
        )
    path = config.path(source.file())
    if source.resolved_format == "csv" and not _is_utf8(path):
        return _diagnose(name, source, path, exc)
    ragged = _ragged_row(source, path) if source.resolved_format == "csv" else None
    if ragged is not None:
        return ragged_error(name, path, *ragged)
    try:
        if source.resolved_format == "csv":
            raw = pl.scan_csv(path, separator=source.separator, infer_schema=False)
        elif source.resolved_format == "parquet":
            raw = pl.scan_parquet(path)
        else:
            raw = pl.scan_ndjson(path, infer_schema_length=10_000)
        schema = raw.collect_schema()
        for column, spec in source.column_specs().items():
            kind = spec.type
            if kind == "list[str]" or schema.get(column) != pl.String:
                continue
            # strict conversion raises; a non-strict one locates the first bad row
            text = pl.col(column).str.strip_chars()
            if kind == "date":
                parsed = text.str.to_date(spec.format, strict=False).is_not_null()
            elif kind == "datetime":
                parsed = text.str.to_datetime(spec.format, strict=False).is_not_null()
            elif kind == "bool":
                parsed = text.str.to_lowercase().is_in([*_TRUE_WORDS, *_FALSE_WORDS])
            elif kind in ("int", "float"):
                parsed = pl.col(column).cast(_DTYPES[kind], strict=False).is_not_null()
            else:
                continue
            found = (
                raw.with_row_index("_row")
                .filter(pl.col(column).is_not_null() & (text != "") & ~parsed)
                .select("_row")
                .head(1)
                .collect()
            )
            if found.height:
                line = int(found["_row"][0]) + (2 if source.resolved_format == "csv" else 1)
                return DataError(
                    f"source {name!r}: column {column!r} holds a value that is not a {kind} "
                    f"(first at {'line' if source.resolved_format == 'csv' else 'row'} {line} "
                    f"of {path.name})",
                    f"fix the data or the declared type in [sources.{name}].columns",
                )
    except pl.exceptions.PolarsError:
        pass
    return DataError(
        f"source {name!r}: cannot read {path.name} ({_polars_summary(exc)})",
        "check the file and the types declared in [sources] in audiences.toml",
    )


def _polars_summary(exc: BaseException) -> str:
    """The first line of a polars error without the cell values it quotes (they may be
    raw PII: polars lists failed values, e.g. ``... for 1 out of 9 values: ["a@b.com"]``)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    first = re.sub(r"\s*for \d+ out of \d+ values:.*", "", first)
    first = re.sub(r'"[^"]*"', '"…"', first)  # polars quotes values in double quotes
    return first[:200]
