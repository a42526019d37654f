"""Each contact's privacy jurisdiction(s), from the normalized state and country.

* a US state or territory (the row's country is the US, or a country that uses US state
  codes) gives ``US-<state>``: ``US-WA``, ``US-CA``, ``US-NV``, ``US-CT`` …
* a country of the European Economic Area gives ``EEA``; the United Kingdom gives ``UK``;
* any other recognised country gives its ISO code (``CA`` is Canada, ``US-CA``
  California).

The row's country is normalized as the identifiers are (``USA``, ``United States`` → US);
an empty country takes ``[identity] default_country``. A US row without a recognisable
state, or a country nobody recognises, has **no** jurisdiction: the policy gate then
applies every jurisdiction pack in force to that person (the strictest treatment) and
counts them.

``[policy] jurisdiction_column`` names a CRM column that overrides the derivation where it
holds a value: one or more codes separated by ``;`` or ``,`` (``US-WA``, ``EEA``, ``UK``,
or a country code such as ``DE`` → ``EEA``, ``GB`` → ``UK``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from audiences.crm.identifiers import US_POSTAL_COUNTRIES, US_STATES, normalized_exprs

if TYPE_CHECKING:
    from audiences.core.config import ProjectConfig

# EU member states plus Iceland, Liechtenstein and Norway (EEA Agreement).
EEA_COUNTRIES = frozenset((
    "at", "be", "bg", "hr", "cy", "cz", "dk", "ee", "fi", "fr", "de", "gr", "hu", "ie", "it",
    "lv", "lt", "lu", "mt", "nl", "pl", "pt", "ro", "sk", "si", "es", "se", "is", "li", "no",
))  # fmt: skip
EEA = "EEA"
UK = "UK"
UNKNOWN = "unknown"
# Jurisdictions a pack may name: every US state/territory, the EEA and the UK.
US_JURISDICTIONS = tuple(sorted({f"US-{code.upper()}" for code in US_STATES.values()}))
KNOWN = (*US_JURISDICTIONS, EEA, UK)


def evidence_suffix(code: str) -> str:
    """The evidence-key form of a jurisdiction: ``US-WA`` → ``us_wa``."""
    return code.lower().replace("-", "_")


def _derived(candidates: pl.DataFrame, config: ProjectConfig) -> pl.Expr:
    """One code per row (null where undetermined), from the normalized state and country."""
    if config.identity.state is None and config.identity.country is None:
        return pl.lit(None, dtype=pl.String)
    exprs = normalized_exprs(config.identity, "meta", schema=candidates.schema)
    country, state = exprs["COUNTRY"], exprs["ST"]
    us_state = state.replace_strict(US_STATES, default=None, return_dtype=pl.String)
    return (
        pl.when(country == "us")
        .then(pl.concat_str(pl.lit("US-"), us_state.str.to_uppercase()))
        .when(country.is_in(US_POSTAL_COUNTRIES))  # Puerto Rico, Guam …: US territories
        .then(pl.concat_str(pl.lit("US-"), country.str.to_uppercase()))
        .when(country.is_in(sorted(EEA_COUNTRIES)))
        .then(pl.lit(EEA))
        .when(country == "gb")
        .then(pl.lit(UK))
        .otherwise(country.str.to_uppercase())
    )


def _override(name: str) -> pl.Expr:
    """The override column as a list of codes (null where empty)."""
    tokens = (
        pl.col(name)
        .cast(pl.String)
        .str.replace_all(",", ";")
        .str.split(";")
        .list.eval(pl.element().str.strip_chars().str.to_uppercase())
        .list.eval(pl.element().filter(pl.element().str.len_bytes() > 0))
    )
    eea = [c.upper() for c in sorted(EEA_COUNTRIES)] + ["EU"]
    mapped = tokens.list.eval(
        pl.when(pl.element().is_in(eea))
        .then(pl.lit(EEA))
        .when(pl.element().is_in(["GB"]))
        .then(pl.lit(UK))
        .otherwise(pl.element())
    ).list.unique(maintain_order=True)
    return pl.when(mapped.list.len() > 0).then(mapped)


def jurisdictions_expr(schema: pl.Schema, config: ProjectConfig) -> pl.Expr:
    """The jurisdictions of each row of a frame with ``schema``, as an expression
    (``List[String]``, an empty list where unknown): lazy scans of the whole CRM use it."""
    probe = pl.DataFrame(schema=schema)
    derived = _derived(probe, config)
    as_list: pl.Expr = pl.when(derived.is_not_null()).then(pl.concat_list(derived))
    column = config.policy.jurisdiction_column
    if column is not None:
        if column not in schema:
            from audiences.core.errors import DataError

            raise DataError(
                f"[policy] jurisdiction_column names column {column!r}, which the contacts "
                "source does not have",
                "fix [policy] jurisdiction_column in audiences.toml",
            )
        as_list = pl.coalesce(_override(column), as_list)
    return pl.coalesce(as_list, pl.lit([], dtype=pl.List(pl.String)))


def in_scope_expr(schema: pl.Schema, config: ProjectConfig, codes: tuple[str, ...]) -> pl.Expr:
    """True for a row in any of ``codes`` or of unknown jurisdiction (a jurisdiction
    rule's scope), as an expression."""
    found = jurisdictions_expr(schema, config)
    inside = found.list.eval(pl.element().is_in(list(codes))).list.any().fill_null(False)
    return inside | (found.list.len().fill_null(0) == 0)


def jurisdictions(candidates: pl.DataFrame, config: ProjectConfig) -> pl.Series:
    """Each candidate's jurisdictions (``List[String]``); an empty list where unknown."""
    expr = jurisdictions_expr(candidates.schema, config)
    if candidates.height == 0:
        return pl.Series("jurisdictions", [], dtype=pl.List(pl.String))
    found = "__jurisdictions"
    roots = list(dict.fromkeys(expr.meta.root_names()))
    if not roots:
        return candidates.select(expr.alias(found)).get_column(found).alias("jurisdictions")
    # derived once per distinct (state, country, override) and joined back: row by row it
    # cost about 1 s per 100k candidates, per rule
    keys = candidates.select(roots)
    table = keys.unique().with_columns(expr.alias(found))
    return (
        keys.join(table, on=roots, how="left", nulls_equal=True, maintain_order="left")
        .get_column(found)
        .alias("jurisdictions")
    )


def in_jurisdictions(found: pl.Series, codes: tuple[str, ...]) -> tuple[pl.Series, pl.Series]:
    """(in any of ``codes``, jurisdiction unknown) for each candidate."""
    wanted = list(codes)
    inside = found.list.eval(pl.element().is_in(wanted)).list.any().fill_null(False)
    unknown = found.list.len().fill_null(0) == 0
    return inside.alias("inside"), unknown.alias("unknown")


__all__ = [
    "EEA",
    "EEA_COUNTRIES",
    "KNOWN",
    "UK",
    "UNKNOWN",
    "evidence_suffix",
    "in_jurisdictions",
    "in_scope_expr",
    "jurisdictions",
    "jurisdictions_expr",
]
