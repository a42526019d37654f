"""Who an ad platform takes at all — one definition for the gate's counts and releases,
the Google connectors' last guard before sending (``connectors/google_common.py``,
``screen``) and the columns the Meta connector uploads (:data:`META_SENT`).

A person is matched on a hashed e-mail, a hashed phone or a full address (hashed first and
last name, an ISO 3166-1 alpha-2 country and a postal code); a person with none of them is
never matched, so the gate does not count them toward ``k`` (a segment padded with such
people would pass ``min_size`` as a list of one). When adding, a person whose consent
signal is DENIED, or who is in the EEA, the UK or Switzerland (or of unknown country)
without both signals GRANTED **in the CRM**, is not sent either (Google's EU user consent
policy).

Meta matches a customer-list row on an e-mail, a phone, or a first and last name with a
ZIP code, a full birth date, or a city and state (:data:`META_KEYS`); a row with none of
them names no one Meta can find. An external id alone does not count: Meta matches it
only to ids its pixel or app has already seen, which the CRM cannot tell — a segment
padded with such people would be a list of one to Meta. The gate neither counts nor
releases such people on Meta — judged on the columns the Meta connector uploads
(:data:`META_SENT`: a birth year, so a name and birth date is no match there) — nor in a
file carrying hashed identifiers: a file ``for`` Meta or Google by that platform's rule
alone (for Google, its consent rules too), any other file when one layout it carries
names them (:func:`unmatched`).
"""

from __future__ import annotations

from collections.abc import Collection

import polars as pl

from audiences.core.countries import ISO_COUNTRIES
from audiences.crm.identifiers import LAYOUTS
from audiences.crm.jurisdiction import EEA_COUNTRIES

IDENTIFIERS = list(LAYOUTS["google_ads"])  # hashed email, phone, names; country, postal code
ADDRESS = ["hashed_first_name", "hashed_last_name", "country_code", "postal_code"]
CONSENT = ["ad_user_data", "ad_personalization"]
# Where Google's EU user consent policy needs both signals GRANTED (uppercase ISO codes).
CONSENT_REGIONS = frozenset({c.upper() for c in EEA_COUNTRIES} | {"GB", "CH"})

NO_IDENTIFIER = "no identifier (email, phone or full address)"
# The columns the Meta connector uploads (its multi-key schema; connectors/meta): no birth
# month or day, so a Meta destination never matches on a full birth date.
META_SENT: tuple[str, ...] = (
    "EXTERN_ID", "EMAIL", "PHONE", "FN", "LN", "ZIP", "CT", "ST", "COUNTRY", "DOBY", "GEN",
)  # fmt: skip
# What Meta matches a row on: any one of these sets of columns, all present (and sent).
META_KEYS: tuple[tuple[str, ...], ...] = (
    ("EMAIL",),
    ("PHONE",),
    ("FN", "LN", "ZIP"),
    ("FN", "LN", "DOBY", "DOBM", "DOBD"),
    ("FN", "LN", "CT", "ST"),
)
DENIED = "consent DENIED"
NOT_GRANTED = (
    "in the EEA, UK or Switzerland (or of unknown country) without ad_user_data and "
    "ad_personalization GRANTED in the CRM"
)


def present(column: str) -> pl.Expr:
    return pl.col(column).is_not_null() & (pl.col(column) != "")


def bad_region() -> pl.Expr:
    """An address whose region code is not ISO 3166-1 alpha-2 (it cannot be sent)."""
    return present("country_code") & ~pl.col("country_code").str.to_lowercase().is_in(
        sorted(ISO_COUNTRIES)
    )


def google_refusals(columns: Collection[str], *, adding: bool) -> dict[str, pl.Expr]:
    """Why Google would not take a row of the ``google_ads`` layout (with the consent
    signals as text): reason → a boolean expression. Removing, only the missing
    identifier (nothing names the person to the platform)."""
    emails_phones = [present(c) for c in IDENTIFIERS[:2] if c in columns]
    address = [present(c) for c in ADDRESS if c in columns]
    has_address = pl.all_horizontal(address) if len(address) == len(ADDRESS) else pl.lit(False)
    if "country_code" in columns:
        has_address = has_address & ~bad_region()
    reasons = {NO_IDENTIFIER: ~pl.any_horizontal([*emails_phones, has_address])}
    if not adding:
        return reasons
    signals = [pl.col(c) if c in columns else pl.lit(None, pl.String) for c in CONSENT]
    country = (
        pl.col("country_code").str.to_uppercase()
        if "country_code" in columns
        else pl.lit(None, pl.String)
    )
    needs_grant = country.is_null() | country.is_in(sorted(CONSENT_REGIONS))
    granted = pl.all_horizontal([(s == "GRANTED").fill_null(False) for s in signals])
    reasons[DENIED] = pl.any_horizontal([s == "DENIED" for s in signals]).fill_null(False)
    reasons[NOT_GRANTED] = needs_grant & ~granted
    return reasons


def unmatched(layout: str, columns: Collection[str]) -> pl.Expr:
    """True for a row of ``layout`` (hashed, as released) that names no one the platform
    can match: Google, no e-mail, phone or full address; Meta, none of :data:`META_KEYS`.
    A layout missing a column cannot match on the sets that need it."""
    if layout == "google_ads":
        return google_refusals(columns, adding=False)[NO_IDENTIFIER]
    if layout != "meta":
        raise ValueError(f"no matching rule for the layout {layout!r}")
    keys = [
        pl.all_horizontal([present(c) for c in cols])
        for cols in META_KEYS
        if set(cols) <= set(columns)
    ]
    return ~pl.any_horizontal(keys) if keys else pl.lit(True)
