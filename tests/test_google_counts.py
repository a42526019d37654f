"""The gate counts, for a Google destination, only the people Google will receive.

Customer Match takes a person only with an e-mail, a phone or a full address (first and
last name, a valid ISO country and postal code), and — in the EEA, the UK, Switzerland or
of unknown country — only with both consent signals GRANTED; the connector's last guard
(connectors/google_common.py, ``screen``) drops the others before sending. The attack: a
marketer pads a one-person segment with 120 consenting people who have none of those
identifiers (`is_null` is documented in docs/segments.md). Counted by the gate, the
release is 121 people and passes `min_size`; on Google the list is one person.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import (
    AS_OF,
    approved_segment,
    blank_people,
    build_padded,
    frozen_clock,
    latest_report,
    padding_blocked,
)

DAY = AS_OF.isoformat()


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


BLANKED = ("email", "phone", "zip")


@pytest.mark.parametrize("destination", ["google", "google_ads"])
def test_attack_padding_with_people_google_never_receives(
    make_project: Any, destination: str
) -> None:
    p, one = padding_blocked(make_project, destination, BLANKED)
    # the same padding to Meta is counted: Meta matches them on name, city and state
    assert build_padded(p, "meta", one, BLANKED).exit_code == 0


def test_people_google_never_receives_are_counted_apart_and_not_released(
    make_project: Any,
) -> None:
    """A legitimate audience with a few nameless people: released without them, the
    report says how many Google would not take."""
    p = make_project(rows=3000)
    _, padding = blank_people(p, 3, BLANKED)
    approved_segment(p, "ca", "google", "state: {ne: ZZ}")
    release = p.release("ca", "google")
    released = p.contact_ids(release.members)
    assert released and not released & set(padding)
    built = p.cli("build", "ca", "--as-of", DAY)
    assert built.exit_code == 0, built.stdout + built.stderr
    (verdict,) = [
        v
        for v in latest_report(p)["verdicts"]
        if v["id"] == "min-size" and v["destination"] == "google"
    ]
    assert verdict["evidence"]["google_no_identifier"] == 3, verdict
