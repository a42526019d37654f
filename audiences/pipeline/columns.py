"""``audiences columns``: the columns of a source as the tool reads them.

Per column: the declared type (``[sources.*].columns``), the type read from the file,
the share of empty cells, the number of distinct values, its role, and — for text columns
with few distinct values — the values that occur at least ``k`` times (``k``: the pack's
minimum release size). Rarer values are counted, never shown; values of sensitive and
identity columns are never shown.

With ``identifiers``, what each platform would receive of the contacts' identifiers: per
layout (Meta's and Google's) and identifier, how many records hold a valid value, an
already-hashed one, none, a defaulted country, or an invalid one and why (``no_at_sign``,
``reserved_domain`` for a placeholder such as ``none@example.com``, ``too_short``, …) —
counts over the whole export, never values, and a count below ``k`` shown as ``< k``.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from audiences.core.config import ProjectConfig, SourceConfig
from audiences.core.errors import UsageError

# Text columns with at most this many distinct values list their common values.
MAX_LISTED = 30


def _identity_columns(config: ProjectConfig) -> list[str]:
    """The contacts columns the identity mapping names."""
    mapped = config.identity.model_dump().items()
    return [column for field, column in mapped if field != "default_country" and column]


def roles(config: ProjectConfig, source: str) -> dict[str, str]:
    """Column → role: identity, consent, sensitive, quasi-identifier (else none)."""
    out: dict[str, str] = {}
    if source == "contacts":
        out[config.sources.contacts.id] = "identity"
        out |= dict.fromkeys(_identity_columns(config), "identity")
        for column in config.consent.model_dump().values():
            if isinstance(column, str):  # (not the per-purpose words)
                out[column] = "consent"
    for column in config.columns.quasi_identifiers:
        out.setdefault(column, "quasi-identifier")
    for column in config.columns.sensitive:
        out[column] = "sensitive"
    events = config.sources.events
    if source == "events" and events is not None:
        out[events.contact_id] = "identity"
        for column in events.sensitive_columns:
            out[column] = "sensitive"
    return out


def columns_report(
    config: ProjectConfig, source: str | None, *, k: int, identifiers: bool = False
) -> dict[str, Any]:
    """The columns of one source (``contacts`` or ``events``) or of both; with
    ``identifiers``, the contacts' identifier outcomes per platform layout."""
    from audiences.crm.sources import read_source

    configured: dict[str, SourceConfig] = {"contacts": config.sources.contacts}
    if config.sources.events is not None:
        configured["events"] = config.sources.events
    if source is not None and source not in configured:
        raise UsageError(
            f"no source named {source!r}", f"use one of: {', '.join(sorted(configured))}"
        )
    names = [source] if source else list(configured)
    out: dict[str, Any] = {"k": k, "sources": {}}
    for name in names:
        spec = configured[name]
        frame = read_source(name, spec, config)
        out["sources"][name] = {
            "path": spec.path if not spec.is_database else spec.label,
            "columns": _columns(frame, spec, roles(config, name), k),
        }
        if identifiers and name == "contacts":
            out["sources"][name]["identifiers"] = _identifiers(frame, config, k)
    return out


LAYOUTS = ("meta", "google_ads")


def _identifiers(frame: pl.LazyFrame, config: ProjectConfig, k: int) -> dict[str, Any]:
    """Per layout, the identifier outcomes of every record (counts below ``k``: ``< k``),
    counted batch by batch (the normalization of the whole export is never held)."""
    from collections import Counter

    from audiences.core import clock
    from audiences.crm.identifiers import OUTCOME_STATUSES, identifier_outcomes

    today = clock.today()
    identity = config.identity
    schema = frame.collect_schema()
    read = sorted({c for c in _identity_columns(config) if c in schema})
    totals: Counter[tuple[str, str]] = Counter()

    def count(batch: pl.DataFrame) -> None:
        # the normalization of one batch at a time (its plan does not stream: over the
        # whole export at once it held 9.1 GB for 10M contacts and 2.9 GB for 3M; in
        # batches the whole command peaks at 1.1 GB for 3M)
        outcomes = identifier_outcomes(batch.lazy(), identity, LAYOUTS, as_of=today)  # type: ignore[arg-type]
        counted = outcomes.collect()
        for column in counted.columns:
            for outcome, n in counted.get_column(column).value_counts().iter_rows():
                totals[(column, outcome if outcome is not None else "unknown")] += n

    # only the identity columns stream through, in batches
    frame.select(read).sink_batches(count, chunk_size=_BATCH_ROWS, lazy=False)
    found = []
    for (column, outcome), n in totals.items():
        layout, _, field = column.partition(":")
        status = outcome if outcome in OUTCOME_STATUSES else "invalid"
        found.append((layout, field, status, None if status == outcome else outcome, n))
    out: dict[str, Any] = {layout: [] for layout in LAYOUTS}
    # by identifier, then status, then reason (none first), as identifier_quality sorts
    for layout, field, status, reason, n in sorted(found, key=lambda r: (*r[:3], r[3] or "")):
        out[layout].append(
            {"field": field, "status": status, "reason": reason, "rows": n if n >= k else f"< {k}"}
        )
    return out


_BATCH_ROWS = 500_000


def _columns(
    frame: pl.LazyFrame, source: SourceConfig, role_of: dict[str, str], k: int
) -> list[dict[str, Any]]:
    inferred = frame.collect_schema()
    declared = source.column_specs()
    names = list(inferred)

    def counted(columns: list[str]) -> dict[str, Any]:
        return (
            frame.select(
                *[pl.col(c).null_count().alias(f"{c}\x00nulls") for c in columns],
                *[pl.col(c).n_unique().alias(f"{c}\x00distinct") for c in columns],
            )
            .collect(engine="streaming")
            .row(0, named=True)
        )

    stats: dict[str, Any] = {"__rows": frame.select(pl.len()).collect(engine="streaming").item()}
    if not source.is_database and source.resolved_format == "parquet":
        # one column at a time (a Parquet file reads one column alone): counting every
        # column's distinct values in one query held them all — 3M contacts: 1.19 GB for
        # the command, 0.46-0.48 GB column by column, in the same time
        for c in names:
            stats |= counted([c])
    else:  # (a CSV or NDJSON file is parsed whole for any column: once)
        stats |= counted(names)
    rows = max(int(stats["__rows"]), 1)
    out = []
    for column in names:
        role = role_of.get(column, "none")
        distinct = int(stats[f"{column}\x00distinct"])
        spec = declared.get(column)
        entry: dict[str, Any] = {
            "name": column,
            "declared": spec.type if spec else None,
            "format": spec.format if spec else None,
            "inferred": _type_name(inferred[column]),
            "null_share": round(int(stats[f"{column}\x00nulls"]) / rows, 4),
            "distinct": distinct,
            "role": role,
        }
        listable = inferred[column] == pl.String and role not in ("sensitive", "identity")
        if listable and distinct <= MAX_LISTED:
            entry.update(_common_values(frame, column, k))
        out.append(entry)
    return out


def _common_values(frame: pl.LazyFrame, column: str, k: int) -> dict[str, Any]:
    counts = (
        frame.select(pl.col(column).cast(pl.String))
        .drop_nulls()
        .group_by(column)
        .len()
        .collect(engine="streaming")
    )
    common = sorted(str(v) for v, n in counts.iter_rows() if n >= k)
    return {"values": common, "rarer_values": counts.height - len(common)}


def _type_name(dtype: Any) -> str:
    names = {
        pl.String: "str",
        pl.Int64: "int",
        pl.Int32: "int",
        pl.Float64: "float",
        pl.Boolean: "bool",
        pl.Date: "date",
    }
    for known, name in names.items():
        if dtype == known:
            return name
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    if isinstance(dtype, pl.List):
        return f"list[{_type_name(dtype.inner)}]"
    return str(dtype)
