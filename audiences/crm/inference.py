"""What a CRM export holds, read from its header and its values, for ``audiences init
--from``: each column's type (dates with their format, e.g. US ``3/14/1962`` →
``%m/%d/%Y``), the identity field, consent fact or event role it most likely carries, and
whether its name or values look clinical or patient-status-like (to be classified).

Everything is counted in one lazy pass per file (no per-row Python). Nothing here returns
a person's value: only column names, counts, formats and — for low-cardinality columns
that are not identifiers — the values that occur at least ``min_count`` times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from audiences.core.config import IdentityMapping
from audiences.core.errors import DataError
from audiences.crm import consent
from audiences.crm.checks import DATE_FORMATS, DATETIME_FORMATS, shape

# A text column with at most this many distinct values is a vocabulary (listable).
VOCABULARY = 50
# Date-times with fractional seconds, as databases export them, besides checks' formats.
DATETIMES = (*DATETIME_FORMATS, "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f")
# Rows read to guess types and contents (then checked on every row).
SAMPLE = 20_000
# Share of filled values that must look like the field for a content match.
CONTENT_SHARE = 0.9

# Header keys (lowercase letters and digits only) of each identity field, as HubSpot,
# Salesforce, Epic and Athena exports name them.
IDENTITY_HEADERS: dict[str, tuple[str, ...]] = {
    "external_id": (
        "recordid", "contactid", "patientid", "personid", "customerid", "id", "mrn",
        "medicalrecordnumber", "enterpriseid", "hubspotid", "crmid", "leadid", "memberid",
    ),
    "email": ("email", "emailaddress", "primaryemail", "personalemail", "patientemail"),
    "phone": (
        "phone", "phonenumber", "mobile", "mobilephone", "mobilephonenumber", "cellphone",
        "homephone", "primaryphone", "telephone", "patientphone",
    ),
    "first_name": ("firstname", "givenname", "fname", "first", "patientfirstname"),
    "last_name": ("lastname", "surname", "familyname", "lname", "last", "patientlastname"),
    "zip": (
        "zip", "zipcode", "postalcode", "postcode", "zippostalcode", "mailingzip",
        "mailingpostalcode", "patientzip",
    ),
    "city": ("city", "mailingcity", "town", "patientcity"),
    "state": (
        "state", "stateregion", "stateprovince", "province", "mailingstate",
        "mailingstateprovince", "patientstate", "stateorregion",
    ),
    "country": ("country", "countryregion", "mailingcountry", "countrycode", "patientcountry"),
    "birth_date": ("dateofbirth", "birthdate", "dob", "birthday", "patientdob", "patientbirthdate"),
    "gender": ("gender", "sex", "birthsex", "sexassignedatbirth", "patientsex", "legalsex"),
}  # fmt: skip
# Fields whose content is checked (the share of values the upload layer accepts).
CONTENT_FIELDS = ("email", "phone", "zip", "state", "country", "gender")

EVENT_ID_HEADERS = IDENTITY_HEADERS["external_id"]
EVENT_TYPE_HEADERS = (
    "eventtype", "type", "activitytype", "encountertype", "visittype", "event", "activity",
    "appointmenttype", "interactiontype",
)  # fmt: skip
EVENT_TIME_HEADERS = (
    "eventtime", "timestamp", "time", "date", "eventdate", "activitydate", "encounterdate",
    "visitdate", "appointmentdate", "occurredat", "createdat", "datetime",
)  # fmt: skip

# Names and values that look clinical or like a patient's status. For a covered entity the
# fact that someone is a patient (a visit, a lifecycle stage "patient") is itself PHI
# (docs/policy-rules.md, "Patient status is PHI").
CLINICAL_HINTS = (
    "department", "diagnos", "icd", "visit", "encounter", "patient", "provider", "physician",
    "doctor", "medication", "prescri", "rx", "lab", "clinic", "specialt", "service line",
    "serviceline", "condition", "procedure", "treatment", "therapy", "admission",
    "discharge", "appointment", "lifecycle", "care", "insurance", "payer", "pregnan",
    "cardio", "oncolog", "pediatr", "orthop", "neuro", "psych", "behavioral", "matern",
    "obstet", "surgery", "emergency", "inpatient", "outpatient", "telehealth", "pharmacy",
)  # fmt: skip


def header_key(name: str) -> str:
    """A header as the tables above spell it: lowercase letters and digits only."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def looks_clinical(text: str) -> bool:
    """Whether a column name or a value reads as clinical or patient status."""
    lowered = re.sub(r"[_\-/]+", " ", text.lower())
    squashed = header_key(text)
    return any(h in lowered or h.replace(" ", "") in squashed for h in CLINICAL_HINTS)


@dataclass
class Column:
    """One column as the file holds it: counts and shares, never a person's value."""

    name: str
    dtype: str  # str, int, float, bool, date, datetime or the file's own type
    filled: int
    distinct: int
    format: str | None = None  # a date/datetime format that reads every filled value
    numeric: bool = False  # every filled value reads as an integer (ids, ZIPs, phones)
    content: dict[str, float] = field(default_factory=dict)  # identity field → share
    consent_words: bool = False  # every filled value is a consent or flag word
    case_variants: bool = False  # values differ only by case (`Cardiology`/`cardiology`)
    vocabulary: list[str] | None = None  # values seen >= min_count times (vocabularies)
    rarer: int = 0  # distinct values seen fewer times (counted, never shown)

    @property
    def key(self) -> str:
        return header_key(self.name)


@dataclass
class Profile:
    """A whole export: its rows and columns."""

    path: Path
    rows: int
    columns: list[Column]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def scan_export(path: Path) -> pl.LazyFrame:
    """The export as its file holds it (CSV cells as text), refused when empty."""
    if not path.is_file():
        raise DataError(f"{path} does not exist", "pass the path of a CRM export (CSV, Parquet)")
    if path.stat().st_size == 0:
        raise DataError(f"{path.name} is empty", "export the table again, with its header and rows")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pl.scan_parquet(path)
        elif suffix in (".ndjson", ".jsonl"):
            frame = pl.scan_ndjson(path, infer_schema_length=10_000)
        else:
            frame = pl.scan_csv(path, infer_schema=False, encoding="utf8-lossy")
        has_rows = frame.head(1).collect().height > 0
    except (pl.exceptions.PolarsError, OSError) as exc:
        summary = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{path.name} cannot be read ({summary})",
            "export it as UTF-8 CSV with a header row, or as Parquet",
        ) from None
    if not has_rows:
        raise DataError(
            f"{path.name} has no rows (a header only)",
            "export the table again with its data, then run init --from again",
        )
    return frame


def profile(path: Path, *, min_count: int) -> Profile:
    """Counts every column of the export needs. Types and contents are read on the first
    SAMPLE rows, then checked on every row (a type that fails later is read again on the
    whole file); empty cells, distinct values and consent words count every row."""
    frame = scan_export(path)
    schema = frame.collect_schema()
    names = schema.names()
    sample = _stats(frame.head(SAMPLE), names, schema)
    columns = [_column(name, schema[name], sample) for name in names]
    full_exprs: list[pl.Expr] = [pl.len().alias("\x00rows")]
    for column in columns:
        full_exprs += _whole_file_exprs(column, schema[column.name] == pl.String)
    full = frame.select(full_exprs).collect(engine="streaming").row(0, named=True)
    for i, column in enumerate(columns):
        tag = f"{column.name}\x00"
        if full.get(tag + "typed", full[tag + "filled"]) != full[tag + "filled"]:
            column = _column(column.name, schema[column.name], _stats(frame, [column.name], schema))
            columns[i] = column
        column.filled, column.distinct = int(full[tag + "filled"]), int(full[tag + "n"])
        if tag + "words" in full:
            column.consent_words = full[tag + "words"] == column.filled
            column.case_variants = int(full[tag + "lower"]) < column.distinct
        if schema[column.name] == pl.String and 0 < column.distinct <= VOCABULARY:
            _vocabulary(frame, column, min_count)
    return Profile(path, int(full["\x00rows"]), columns)


def _stats(frame: pl.LazyFrame, names: list[str], schema: pl.Schema) -> dict[str, Any]:
    exprs: list[pl.Expr] = []
    for name in names:
        exprs += _column_exprs(name, schema[name] == pl.String)
    return frame.select(exprs).collect(engine="streaming").row(0, named=True)


def _whole_file_exprs(column: Column, text: bool) -> list[pl.Expr]:
    """Counts over every row: filled, distinct, consent words, case variants, and whether
    the type read on the sample parses everywhere (``typed``)."""
    name, tag = column.name, f"{column.name}\x00"
    filled = _filled(name)
    value = pl.col(name).cast(pl.String).str.strip_chars()
    exprs = [filled.sum().alias(tag + "filled"), value.filter(filled).n_unique().alias(tag + "n")]
    if not text:
        return exprs
    exprs += [
        (filled & consent.recognised(pl.Schema({name: pl.String}), name))
        .sum()
        .alias(tag + "words"),
        value.filter(filled).str.to_lowercase().n_unique().alias(tag + "lower"),
    ]
    parsed = {
        "date": lambda: value.str.to_date(column.format, strict=False),
        "datetime": lambda: value.str.to_datetime(column.format, time_unit="us", strict=False),
        "int": lambda: value.cast(pl.Int64, strict=False),
        "float": lambda: value.cast(pl.Float64, strict=False),
    }
    if column.dtype in parsed:
        exprs.append(_count(filled, parsed[column.dtype](), tag + "typed"))
    return exprs


def _filled(name: str) -> pl.Expr:
    value = pl.col(name)
    return value.is_not_null() & (value.cast(pl.String).str.strip_chars() != "")


def _column_exprs(name: str, text: bool) -> list[pl.Expr]:
    filled = _filled(name)
    value = pl.col(name).cast(pl.String).str.strip_chars()
    tag = f"{name}\x00"
    exprs = [filled.sum().alias(tag + "filled"), value.filter(filled).n_unique().alias(tag + "n")]
    if not text:
        return exprs
    for fmt in DATE_FORMATS:
        exprs.append(_count(filled, value.str.to_date(fmt, strict=False), tag + f"date:{fmt}"))
    for fmt in DATETIMES:
        parsed = value.str.to_datetime(fmt, time_unit="us", strict=False)
        exprs.append(_count(filled, parsed, tag + f"datetime:{fmt}"))
    any_date = pl.any_horizontal(
        *[value.str.to_date(f, strict=False).is_not_null() for f in DATE_FORMATS]
    )
    exprs += [
        (filled & any_date).sum().alias(tag + "anydate"),
        _count(filled, value.cast(pl.Int64, strict=False), tag + "int"),
        _count(filled, value.cast(pl.Float64, strict=False), tag + "float"),
        (filled & consent.recognised(pl.Schema({name: pl.String}), name))
        .sum()
        .alias(tag + "words"),
        value.filter(filled).str.to_lowercase().n_unique().alias(tag + "lower"),
        (filled & value.str.contains(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")).sum().alias(tag + "email"),
        (filled & value.str.contains(r"^[+()0-9 .\-x]{7,25}$")).sum().alias(tag + "phone"),
    ]
    for field_name in ("zip", "state", "country", "gender"):
        mapping = IdentityMapping.model_validate({field_name: name})
        from audiences.crm.identifiers import canonical_expr

        canonical = canonical_expr(mapping, field_name, schema={name: pl.String()})
        exprs.append(_count(filled, canonical, tag + field_name))
    return exprs


def _count(filled: pl.Expr, parsed: pl.Expr, alias: str) -> pl.Expr:
    return (filled & parsed.is_not_null()).sum().alias(alias)


def _column(name: str, dtype: pl.DataType, stats: dict[str, Any]) -> Column:
    tag = f"{name}\x00"
    filled, distinct = int(stats[tag + "filled"]), int(stats[tag + "n"])
    if dtype != pl.String:
        return Column(name, _type_name(dtype), filled, distinct)
    column = Column(name, "str", filled, distinct)
    if filled == 0:
        return column
    column.numeric = stats[tag + "int"] == filled
    column.consent_words = stats[tag + "words"] == filled
    column.case_variants = int(stats[tag + "lower"]) < distinct
    column.content = {f: stats[tag + f] / filled for f in CONTENT_FIELDS}
    dated = _date_type(name, stats, filled)
    if dated is not None:
        column.dtype, column.format = dated
    elif stats[tag + "anydate"] == filled and stats[tag + "anydate"] > 0:
        used = [f"{f} ({stats[tag + f'date:{f}']} rows)" for f in DATE_FORMATS]
        used = [u for u, f in zip(used, DATE_FORMATS, strict=True) if stats[tag + f"date:{f}"]]
        raise DataError(
            f"column {name!r} mixes date formats ({', '.join(used)})",
            "re-export it with one date format, then run init --from again",
        )
    elif column.numeric:
        column.dtype = "int"
    elif stats[tag + "float"] == filled:
        column.dtype = "float"
    return column


def _date_type(name: str, stats: dict[str, Any], filled: int) -> tuple[str, str] | None:
    """(``date`` | ``datetime``, format) when one format reads every filled value. Formats of
    digits only (``%Y%m%d``) count only for a column whose name says it is a date."""
    tag = f"{name}\x00"
    named_date = any(w in header_key(name) for w in ("date", "dob", "birth", "time", "day"))
    for kind, formats in (("date", DATE_FORMATS), ("datetime", DATETIMES)):
        for fmt in formats:
            if not re.search(r"[^%a-zA-Z]", fmt) and not named_date:
                continue
            if stats[tag + f"{kind}:{fmt}"] == filled:
                return kind, fmt
    return None


def _vocabulary(frame: pl.LazyFrame, column: Column, min_count: int) -> None:
    counts = (
        frame.select(pl.col(column.name).str.strip_chars().alias("v"))
        .filter(pl.col("v").is_not_null() & (pl.col("v") != ""))
        .group_by("v")
        .len()
        .collect()
    )
    common = sorted(str(v) for v, n in counts.iter_rows() if n >= min_count)
    column.vocabulary = common
    column.rarer = counts.height - len(common)


def unrecognised_shapes(path: Path, name: str) -> str:
    """The shapes (never the values) of a column's values that are not consent words."""
    frame = scan_export(path)
    bad = _filled(name) & ~consent.recognised(pl.Schema({name: pl.String}), name)
    examples = frame.select(pl.col(name).filter(bad).unique().head(3)).collect().to_series()
    return ", ".join(sorted({shape(str(v)) for v in examples}))


def _type_name(dtype: pl.DataType) -> str:
    if dtype == pl.Boolean:
        return "bool"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if isinstance(dtype, pl.List):
        return "list[str]"
    return str(dtype)
