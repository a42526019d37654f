"""connectors.google_common.screen: the last guard of both Google kinds before sending."""

from __future__ import annotations

import hashlib

import polars as pl
import pytest

from connectors.base import BatchOutcome
from connectors.google_common import screen


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def rows(*people: tuple[str | None, str | None, str | None, bool]) -> pl.DataFrame:
    """(country_code, ad_user_data, ad_personalization, has an email) per person."""
    return pl.DataFrame(
        {
            "member_key": list(range(1, len(people) + 1)),
            "hashed_email": [h(f"p{i}") if p[3] else None for i, p in enumerate(people)],
            "hashed_phone_number": [None] * len(people),
            "hashed_first_name": [h("ann")] * len(people),
            "hashed_last_name": [h("lee")] * len(people),
            "country_code": [p[0] for p in people],
            "postal_code": ["10115"] * len(people),
            "ad_user_data": [p[1] for p in people],
            "ad_personalization": [p[2] for p in people],
        },
        schema_overrides={"member_key": pl.UInt64},
    )


G, U, D = "GRANTED", "UNSPECIFIED", "DENIED"


@pytest.mark.parametrize(
    ("person", "sent"),
    [
        (("US", U, U, True), True),  # outside the EEA: no decision is allowed
        (("US", G, None, True), True),
        (("DE", G, G, True), True),  # EEA with both GRANTED
        (("DE", U, U, True), False),  # the attack: no consent columns mapped
        (("de", None, None, True), False),  # lowercase code, no decision
        (("FR", G, U, True), False),  # one signal is not enough
        (("GB", U, G, True), False),  # the UK under the same policy
        (("CH", G, None, True), False),  # and Switzerland
        ((None, U, U, True), False),  # unknown country: could be anyone
        ((None, G, G, True), True),
        (("US", D, G, True), False),  # DENIED anywhere
        (("US", G, G, False), True),  # the address alone names the person
    ],
)
def test_who_may_be_added(
    person: tuple[str | None, str | None, str | None, bool], sent: bool
) -> None:
    outcome = BatchOutcome(op="add", size=1, received=0)
    kept = screen(rows(person), outcome, adding=True)
    assert kept.height == int(sent)
    assert outcome.rejected_keys == ([] if sent else [1])
    assert outcome.invalid == int(not sent)
    assert all("@" not in s and h("p0") not in s for s in outcome.samples)  # counts, no values


def test_a_person_without_any_identifier_is_refused_when_adding() -> None:
    frame = rows(("US", G, G, False)).with_columns(pl.lit(None, pl.String).alias("postal_code"))
    outcome = BatchOutcome(op="add", size=1, received=0)
    assert screen(frame, outcome, adding=True).height == 0
    assert outcome.rejected_keys == [1]
    assert outcome.samples == ["1 not sent: no identifier (email, phone or full address)"]


def test_removals_need_no_consent_and_nameless_rows_are_not_refused() -> None:
    frame = pl.concat(
        [
            rows(("DE", U, U, True), ("US", D, D, True)),
            rows(("US", U, U, False)).with_columns(
                pl.lit(3, pl.UInt64).alias("member_key"),
                pl.lit(None, pl.String).alias("postal_code"),
            ),
        ]
    )
    outcome = BatchOutcome(op="remove", size=3, received=0)
    kept = screen(frame, outcome, adding=False)
    assert kept.get_column("member_key").to_list() == [1, 2]
    # nothing names the third to the platform: not sent, and not a refused removal that
    # would keep them in state forever
    assert (outcome.rejected_keys, outcome.invalid) == ([], 0)


def test_a_region_code_that_is_not_iso_drops_only_the_address() -> None:
    outcome = BatchOutcome(op="add", size=2, received=0)
    kept = screen(rows(("XX", G, G, True), ("XX", G, G, False)), outcome, adding=True)
    assert kept.get_column("member_key").to_list() == [1]  # still has an email
    assert kept.get_column("postal_code").to_list() == [None]
    assert outcome.rejected_keys == [2]
