"""Checks of the CRM *data* (not only its schema), for ``audiences validate``.

Each check returns :class:`Finding`s instead of raising, so one run reports every problem
of every file. Messages name the file, the line or column and the fix; a value from a
row is never shown — only its *shape* (``3/14/1962`` → ``N/NN/NNNN``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from audiences.core.config import OWN_WORDS_ROLES, ColumnSpec, ProjectConfig, SourceConfig
from audiences.core.errors import AudiencesError
from audiences.crm import consent

Severity = Literal["error", "warning"]

# Date formats tried on a date column that fails to parse, to suggest a `format`.
DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y", "%m/%d/%y", "%d/%m/%Y", "%Y/%m/%d", "%d.%m.%Y", "%Y%m%d")
DATETIME_FORMATS = (
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %I:%M %p",
)
_FLAG_ROLES = ("do_not_contact", "deceased", "limit_sensitive_pi", "opt_out_of_sharing")
_CONSENT_ROLES = (
    "marketing_opt_in",
    "ad_personalization",
    "ad_user_data",
    "share_health_data",
    "explicit_health_marketing",
)
_DATE_ROLES = (
    "hipaa_authorization_date",
    "hipaa_authorization_expires",
    "hipaa_authorization_revoked",
)


@dataclass(frozen=True)
class Finding:
    """One problem ``validate`` found: what, where (file, line, column) and the fix."""

    severity: Severity
    code: str
    message: str
    fix: str
    file: str | None = None
    line: int | None = None
    column: str | None = None

    @property
    def where(self) -> str:
        if self.file is None:
            return ""
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def __str__(self) -> str:
        where = f"{self.where}: " if self.where else ""
        return f"{where}{self.severity}[{self.code}]: {self.message} — {self.fix}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_error(cls, code: str, exc: AudiencesError, file: str | None = None) -> Finding:
        where = exc.where or file
        line = None
        if where and re.fullmatch(r".+:\d+", where):
            where, _, number = where.rpartition(":")
            line = int(number)
        return cls("error", code, exc.what, exc.fix or "fix it", where, line)


def shape(value: str, limit: int = 24) -> str:
    """The shape of a value without the value: digits → N, letters → A, the rest kept."""
    text = re.sub(r"[^\W\d_]", "A", value)
    text = re.sub(r"[0-9]", "N", text)
    return text if len(text) <= limit else text[:limit] + "…"


def raw_frame(source: SourceConfig, path: Path) -> pl.LazyFrame:
    """The source as the file holds it (CSV cells as text), for value checks."""
    fmt = source.resolved_format
    if fmt == "csv":
        return pl.scan_csv(path, separator=source.separator, infer_schema=False)
    if fmt == "parquet":
        return pl.scan_parquet(path)
    return pl.scan_ndjson(path, infer_schema_length=10_000)


def _line(source: SourceConfig, row: int) -> int:
    return row + (2 if source.resolved_format == "csv" else 1)


def _parses(column: str, spec: ColumnSpec, fmt: str | None = None) -> pl.Expr:
    text = pl.col(column).str.strip_chars()
    fmt = fmt or spec.format
    if spec.type == "date":
        return text.str.to_date(fmt, strict=False).is_not_null()
    if spec.type == "datetime":
        return text.str.to_datetime(fmt, time_unit="us", strict=False).is_not_null()
    if spec.type == "bool":
        from audiences.crm.sources import BOOL_WORDS

        return text.str.to_lowercase().is_in(BOOL_WORDS)
    if spec.type in ("int", "float"):
        dtype = pl.Int64 if spec.type == "int" else pl.Float64
        return text.cast(dtype, strict=False).is_not_null()
    return pl.lit(True)


def check_types(name: str, source: SourceConfig, config: ProjectConfig) -> list[Finding]:
    """Every declared column parses on every row as its declared type (and format).

    A database table's columns have the database's types: loading it checks they fit."""
    if source.is_database:
        return []
    path = config.path(source.file())
    raw = raw_frame(source, path)
    schema = raw.collect_schema()
    findings: list[Finding] = []
    for column, spec in source.column_specs().items():
        if column not in schema or spec.type in ("str", "list[str]"):
            continue
        if schema[column] != pl.String:
            continue  # a typed Parquet / NDJSON column: its type is the file's
        filled = pl.col(column).is_not_null() & (pl.col(column).str.strip_chars() != "")
        bad = raw.with_row_index("_row").filter(filled & ~_parses(column, spec))
        stats = bad.select(
            pl.len().alias("rows"), pl.col("_row").first(), pl.col(column).first()
        ).collect()
        rows = int(stats["rows"][0])
        if rows == 0:
            continue
        line, example = _line(source, int(stats["_row"][0])), str(stats[column][0])
        findings.append(
            Finding(
                "error",
                "bad-value",
                f"column {column!r} is declared {spec.type}"
                + (f" ({spec.format})" if spec.format else "")
                + f" but {rows} row(s) hold something else, first at line {line}: "
                f"shape {shape(example)}",
                _type_fix(raw, name, column, spec),
                str(path.name),
                line,
                column,
            )
        )
    return findings


def _type_fix(raw: pl.LazyFrame, name: str, column: str, spec: ColumnSpec) -> str:
    """The fix of an unparseable column: a format that reads every row, or how to find
    the mixed ones."""
    declare = f"[sources.{name}].columns"
    if spec.type not in ("date", "datetime"):
        return f"fix the data, or declare the right type in {declare}"
    formats = DATE_FORMATS if spec.type == "date" else DATETIME_FORMATS
    filled = pl.col(column).is_not_null() & (pl.col(column).str.strip_chars() != "")
    counts = (
        raw.filter(filled)
        .select(*[_parses(column, spec, f).sum().alias(f) for f in formats], pl.len().alias("n"))
        .collect()
        .row(0, named=True)
    )
    total = counts.pop("n")
    whole = [f for f, n in counts.items() if n == total]
    if whole:
        return (
            f'declare the format: {declare} = {{"{column}" = {{type = "{spec.type}", '
            f'format = "{whole[0]}"}}}}'
        )
    used = [f"{f} ({n} rows)" for f, n in counts.items() if n]
    if len(used) > 1:
        return (
            f"the column mixes date formats ({', '.join(used)}): re-export it with one "
            f"format, then declare it in {declare}"
        )
    return f"fix the data, or declare its format (strftime, e.g. %m/%d/%Y) in {declare}"


def suggest_column(column: str, names: Iterable[str]) -> str:
    names = list(names)
    lowered = {n.lower(): n for n in names}
    close = difflib.get_close_matches(column.lower(), list(lowered), n=1, cutoff=0.6)
    if close:
        return f"did you mean {lowered[close[0]]!r}?"
    return "run `audiences columns` to list the columns"


def check_mapped_columns(config: ProjectConfig, schema: pl.Schema, file: str) -> list[Finding]:
    """Identity and consent columns exist in the contacts source."""
    findings = []
    mapped = [("identity", role, col) for role, col in config.identity.model_dump().items()]
    mapped += [("consent", role, col) for role, col in config.consent.model_dump().items()]
    for section, role, column in mapped:
        if role == "default_country" or not isinstance(column, str) or column in schema:
            continue
        findings.append(
            Finding(
                "error",
                f"missing-{section}-column",
                f"{section} {role!r} maps to column {column!r}, which source 'contacts' lacks",
                f"fix [{section}].{role} in audiences.toml "
                f"({suggest_column(column, schema.names())})",
                file,
                column=column,
            )
        )
    return findings


_ROWS = "__audiences_rows"


def check_consent_values(config: ProjectConfig, contacts: pl.LazyFrame, file: str) -> list[Finding]:
    """Consent and flag columns hold only words of the vocabulary (or nothing)."""
    schema = contacts.collect_schema()
    roles = {role: getattr(config.consent, role) for role in (*_CONSENT_ROLES, *_FLAG_ROLES)}
    checked = {role: col for role, col in roles.items() if col and col in schema}
    if not checked:
        return []
    # Each column's values are judged once per distinct value (a consent column holds a
    # handful): cleaning every row's word took 13.8 s at 10M contacts, counting the
    # distinct values 0.1-0.2 s a column. A Boolean column is always recognised.
    counted = [c for c in sorted(set(checked.values())) if schema[c] != pl.Boolean]
    plans = [contacts.group_by(c).agg(pl.len().alias(_ROWS)) for c in counted]
    distinct = dict(zip(counted, pl.collect_all(plans, engine="streaming"), strict=True))
    findings = []
    shared = ", ".join(sorted({*consent.GRANTED_WORDS, *consent.DENIED_WORDS}))
    for role, column in checked.items():
        if column not in distinct:
            continue
        bad = distinct[column].filter(
            ~consent.recognised(schema, column, config.consent.vocabulary(role))
        )
        rows = int(bad.get_column(_ROWS).sum())
        if not rows:
            continue
        own = config.consent.vocabulary(role)
        words = ", ".join(sorted({*own[0], *own[1]})) if own else shared
        examples = bad.get_column(column).cast(pl.String).head(3)
        shapes = sorted({shape(str(v)) for v in examples})
        findings.append(
            Finding(
                "error",
                "unrecognised-consent",
                f"[consent] {role} column {column!r}: {rows} row(s) hold "
                f"{bad.height} value(s) that are not consent words "
                f"(shapes {', '.join(shapes)}); they would count as no consent",
                f"map them to the accepted words in the export ({words}; case, spaces, _ "
                "and - do not matter)"
                + (
                    f", or declare the column's own words under [consent.words.{role}]"
                    if role in OWN_WORDS_ROLES
                    else ""
                ),
                file,
                column=column,
            )
        )
    return findings
