"""Legitimate churn still syncs (issue #15): a night in which 20% of the contacts are gone
at random and 5% are new. Difference and composition protection hold back the changes
that would single out fewer than k_diff people and report them; they never block the
whole segment, so the removals the night needs go out."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from conftest import AS_OF, frozen_clock

from audiences.pipeline.sync import sync

TEMPLATE = Path(__file__).resolve().parent.parent / "audiences/pipeline/templates/project/segments"


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    with frozen_clock(AS_OF):
        yield


def churn(contacts: pl.DataFrame, gone: float, new: float, seed: int) -> pl.DataFrame:
    """Drop ``gone`` of the contacts at random; add ``new`` as many fresh people (copies of
    random contacts with their own id, email and phone, so no record links them)."""
    rng = np.random.default_rng(seed)
    kept = contacts.filter(pl.Series(rng.random(contacts.height) >= gone))
    n = int(contacts.height * new)
    fresh = contacts.sample(n, seed=seed).with_columns(
        pl.Series("contact_id", [f"N{i:09d}" for i in range(n)]),
        pl.Series("email", [f"new.person.{i}@clinic.org" for i in range(n)]),
        pl.Series("phone", [f"+1 (646) 555-{i % 10000:04d}" for i in range(n)]),
    )
    return pl.concat([kept, fresh.select(kept.columns)], how="vertical_relaxed")


def test_a_night_of_20_percent_gone_and_5_percent_new_syncs(make_project: Any) -> None:
    # two overlapping audiences on one Meta account (a broad one and adults over 50) and
    # the template's flu-shot reminder (file + Google); 24,000 contacts keep its Google list
    # (without the people whose ad_user_data consent is denied) above min-size after churn
    p = make_project(rows=24_000, segments=("all-adults", "older-adults"))
    shutil.copyfile(TEMPLATE / "flu-shot-reminder.yaml", p.root / "segments" / "flu.yaml")
    (p.root / "segments" / "flu.yaml").write_text(
        (p.root / "segments" / "flu.yaml").read_text().replace("flu-shot-reminder", "flu")
    )
    p.approve("flu")
    names = ["all-adults", "older-adults", "flu"]
    first = sync(p.config(), names, as_of=AS_OF)
    assert {r.status for r in first.results} == {"ok"}, [
        (r.segment, r.destination, r.status, r.error) for r in first.results
    ]
    p.write_contacts(churn(p.contacts(), gone=0.20, new=0.05, seed=15))
    night = sync(p.config(), names, as_of=AS_OF)
    by = {(r.segment, r.destination): r for r in night.results}
    assert {r.status for r in night.results} == {"ok"}, [
        (r.segment, r.destination, r.status, r.error) for r in night.results
    ]
    broad = by[("all-adults", "meta")]
    assert broad.removes > 0  # the people who left are taken off the platform
    for r in night.results:  # on each platform, what went out or was held is accounted for
        if r.destination != "file":  # a file export is rewritten whole
            assert r.removes + r.held_removes > 0, (r.segment, r.destination)
