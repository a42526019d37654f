"""Consent columns as the CRM writes them, read as granted / denied / unknown.

A consent or flag column may be Boolean, numeric (0/1) or text (``yes``/``no``,
``granted``/``denied``, ...). Every rule that reads one (marketing opt-in, ad
personalization, do-not-contact, ...) and the duplicate-of-opt-out linkage read it here,
so one value has one meaning everywhere.
"""

from __future__ import annotations

import polars as pl

from audiences.core.errors import DataError


def column(candidates: pl.DataFrame, name: str, role: str) -> pl.Expr:
    if name not in candidates.schema:
        raise DataError(
            f"[consent] {role} names column {name!r}, which the contacts source does not have",
            f"fix [consent] {role} in audiences.toml",
        )
    return pl.col(name)


# Compared after trimming, lowercasing and turning runs of spaces, ``_`` and ``-`` into
# one space (``Opted-In`` → ``opted in``). HubSpot, Salesforce and Epic exports write the
# longer forms.
_GRANTED_WORDS = (
    "granted", "grant", "true", "yes", "y", "1", "t",
    "opted in", "opt in", "optedin", "optin", "subscribed", "consented", "consent given",
    "accepted", "agreed", "allowed", "on",
)  # fmt: skip
_DENIED_WORDS = (
    "denied", "deny", "false", "no", "n", "0", "f",
    "opted out", "opt out", "optedout", "optout", "unsubscribed", "not subscribed",
    "declined", "refused", "withdrawn", "revoked", "rejected", "off",
)  # fmt: skip
GRANTED_WORDS = _GRANTED_WORDS
DENIED_WORDS = _DENIED_WORDS
# A column's own (granted, denied) words, cleaned ([consent.words], ConsentColumns.vocabulary):
# they replace the shared vocabulary for that column.
Words = tuple[tuple[str, ...], tuple[str, ...]]


def cleaned_word(text: pl.Expr) -> pl.Expr:
    """A consent or flag value as the vocabulary spells it: trimmed, lowercase, one space
    for each run of spaces, ``_`` and ``-``."""
    return text.str.strip_chars().str.to_lowercase().str.replace_all(r"[\s_\-]+", " ")


def recognised(frame_schema: pl.Schema, column: str, words: Words | None = None) -> pl.Expr:
    """True where the column's value is empty or a word of the vocabulary (Boolean and
    0/1 columns always are; with its own ``words``, only those words are)."""
    dtype = frame_schema[column]
    if dtype == pl.Boolean:
        return pl.lit(True)
    if dtype.is_numeric() and words is None:
        return pl.col(column).is_null() | pl.col(column).is_in([0, 1])
    granted, denied = words or (_GRANTED_WORDS, _DENIED_WORDS)
    text = pl.col(column).cast(pl.String)
    word = cleaned_word(text)
    return text.is_null() | (word == "") | word.is_in(granted + denied)


def _consent_words(
    frame: pl.DataFrame, column: str, words: Words | None = None
) -> tuple[pl.Expr, pl.Expr]:
    """(granted, denied) of a consent column; a value is at most one of them."""
    expr = pl.col(column)
    if frame.schema[column] == pl.Boolean:
        return expr.eq(True), expr.eq(False)
    granted, denied = words or (_GRANTED_WORDS, _DENIED_WORDS)
    text = expr.cast(pl.String)
    # Values already written as one of the words skip the strip and lowercase (a
    # CRM-wide scan asks this of every record; the rest are cleaned first).
    known = text.is_in(granted + denied)
    cleaned = cleaned_word(pl.when(~known).then(text))

    def among(words: tuple[str, ...]) -> pl.Expr:
        return pl.when(known).then(text.is_in(words)).otherwise(cleaned.is_in(words))

    return among(granted), among(denied)


def consent_denied(frame: pl.DataFrame, column: str | None) -> pl.Expr:
    """``consent_signal(...) == "DENIED"`` without building the labels (a CRM-wide scan
    asks this of every record)."""
    if column is None or column not in frame.schema:
        return pl.lit(False)
    return _consent_words(frame, column)[1].fill_null(False)


def consent_signal(
    frame: pl.DataFrame, column: str | None, name: str, words: Words | None = None
) -> pl.Expr:
    """A CRM consent column as Google's GRANTED / DENIED / UNSPECIFIED (``words``: the
    column's own words, if it has them)."""
    if column is None or column not in frame.schema:
        return pl.lit("UNSPECIFIED").alias(name)
    granted, denied = _consent_words(frame, column, words)
    return (
        pl.when(granted.fill_null(False))
        .then(pl.lit("GRANTED"))
        .when(denied.fill_null(False))
        .then(pl.lit("DENIED"))
        .otherwise(pl.lit("UNSPECIFIED"))
        .alias(name)
    )


def truthy(candidates: pl.DataFrame, name: str, role: str, words: Words | None = None) -> pl.Expr:
    """Boolean view of a flag column (Boolean, 0/1 or yes/no text, or the column's own
    ``words``); null stays null, and so does a value that is no word."""
    expr = column(candidates, name, role)
    dtype = candidates.schema[name]
    if dtype == pl.Boolean:
        return expr
    if dtype.is_numeric() and words is None:
        return expr != 0
    granted, denied = words or (_GRANTED_WORDS, _DENIED_WORDS)
    text = cleaned_word(expr.cast(pl.String))
    return pl.when(text.is_in(granted)).then(True).when(text.is_in(denied)).then(False)
