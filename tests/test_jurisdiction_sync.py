"""The jurisdiction packs end to end (issue #23): a project made by ``init`` with the packs
turned on the way its template documents, the sample CRM with people in the EEA and the
UK (``--abroad``), and real syncs to the Meta and Google Ads sandboxes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest
from conftest import AS_OF, SEED, Project, coarse, frozen_clock, google_people, sync_row
from test_lifecycle import BOTH, forced_removes, on_platforms, pick, synced, update, write_segment

ROWS, ABROAD = 3000, 600
GRANTED = pl.col("ad_user_data_consent").eq("granted") & pl.col("ad_personalization_consent").eq(
    "granted"
)
ABROAD_ROWS = pl.int_range(pl.len()) >= ROWS  # the --abroad block follows the --rows one


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


def with_packs(make_project: Any) -> Project:
    from audiences.demo.sample import write

    p = make_project(rows=ROWS)
    write(p.root / "data", ROWS, seed=SEED, as_of=AS_OF, formats=("parquet",), abroad=ABROAD)

    def turn_on(text: str) -> str:
        for line in ("# packs = [",):
            assert text.count(line) == 1, line
            text = text.replace(line, line.removeprefix("# "))
        return text

    p.edit_toml(turn_on)
    return p


def ids(p: Project, where: pl.Expr) -> set[str]:
    frame = p.contacts().with_columns(ABROAD_ROWS.alias("abroad"))
    return set(frame.filter(where).get_column("contact_id").to_list())


def test_eea_people_without_both_signals_are_never_sent_and_the_others_go_with_them(
    make_project: Any,
) -> None:
    p = with_packs(make_project)
    write_segment(p, BOTH)
    p.approve("grown-ups")
    assert {r["status"] for r in synced(p).values()} == {"ok"}
    on_platforms(p)
    lacking = ids(p, pl.col("abroad") & ~GRANTED.fill_null(False))
    with_signals = ids(p, pl.col("abroad") & GRANTED.fill_null(False))
    assert len(lacking) > 200 and len(with_signals) > 20
    for dest in ("meta", "google_ads"):
        sent = p.contact_ids(p.confirmed("grown-ups", dest))
        assert not sent & lacking, dest  # on no platform, not only Google
        assert sent & with_signals, dest  # people abroad with both signals do go
    # ... and go to Google with both signals GRANTED (the sandbox keeps each job's consent)
    google = p.confirmed("grown-ups", "google_ads")
    abroad = google.filter(
        pl.col("member_key").is_in(
            p.keyed_contacts().filter(ABROAD_ROWS).get_column("member_key").implode()
        )
    )
    people_abroad = google_people(abroad)
    from connectors.sandbox.google_ads_server import ConsentStatus

    user_list = p.remote_id("grown-ups", "google_ads")
    granted: set[Any] = set()
    both = (ConsentStatus.GRANTED, ConsentStatus.GRANTED)
    for job in p.boxes.google.jobs.values():
        if job.user_list == user_list and (job.ad_user_data, job.ad_personalization) == both:
            granted |= {person for kind, person in job.staged if kind == "create"}
    assert people_abroad and people_abroad <= granted


def test_a_california_opt_out_after_the_release_is_a_forced_removal_on_the_next_sync(
    make_project: Any,
) -> None:
    p = with_packs(make_project)
    write_segment(p, BOTH)
    p.approve("grown-ups")
    assert {r["status"] for r in synced(p).values()} == {"ok"}
    live = {d: p.contact_ids(p.confirmed("grown-ups", d)) for d in ("meta", "google_ads")}
    california = live["meta"] & ids(p, pl.col("state").str.strip_chars().str.to_uppercase() == "CA")
    gpc = pick(california, 6, seed=3)
    limit = pick(california - gpc, 4, seed=4)
    update(p, gpc, opt_out_of_sharing=True)
    update(p, limit, limit_sensitive_pi=True)
    write_segment(p, BOTH.replace("gte: 18", "gte: 19"))  # edited: adds are blocked
    results = p.cli_json("sync", "grown-ups", "--as-of", AS_OF.isoformat(), expect=3)["results"]
    assert {r["destination"] for r in results} == set(live)
    for r in results:
        members = live[r["destination"]]  # Google never had the people it may not get
        gone = members & (gpc | limit)
        assert len(gone) >= 8
        assert r["status"] == "blocked" and r["forced_removes"] == coarse(len(gone))
        assert forced_removes(p, r) == sync_row(p, r)["removes"] == len(gone)
        assert p.contact_ids(p.confirmed("grown-ups", r["destination"])) == members - gone
    on_platforms(p)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # an override column that puts everyone in New York: Washington's rules fall away
        ("\n[policy]\n", '\n[policy]\njurisdiction_column = "preferred_language"\n'),
        # own words that read every GPC signal as "no request"
        (
            "\n[policy]\n",
            '\n[consent.words.opt_out_of_sharing]\ngranted = ["never"]\n'
            'denied = ["true", "false"]\n\n[policy]\n',
        ),
    ],
    ids=["jurisdiction-column", "own-words"],
)
def test_attack_moving_people_out_of_a_pack_after_approval_blocks(
    make_project: Any, old: str, new: str
) -> None:
    p = with_packs(make_project)
    write_segment(p, BOTH)
    p.approve("grown-ups")
    p.edit_toml(lambda text: text.replace(old, new, 1))
    result = p.cli("sync", "grown-ups", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert "effective policy" in result.stdout + result.stderr
    assert "changed since approval" in result.stdout + result.stderr


HEALTH = """name: primary-care
description: Primary care patients
destinations: [meta]
where:
  all:
    - age: {gte: 18}
    - service_lines: {contains: primary_care}
"""


def test_a_sale_destination_gets_only_authorized_washington_people_and_a_flip_needs_approval(
    make_project: Any,
) -> None:
    import datetime as dt

    p = with_packs(make_project)
    # meta's account buys the list (a data partner's, say): a sale
    p.edit_toml(lambda t: t.replace('kind = "meta"\n', 'kind = "meta"\nbasis = "sale"\n', 1))
    write_segment(p, HEALTH, "primary-care")
    p.approve("primary-care")
    doc = p.cli_json("sync", "primary-care", "--as-of", AS_OF.isoformat())
    assert {r["status"] for r in doc["results"]} == {"ok"}, doc
    signed = pl.col("mhmda_sale_authorization_date")
    in_force = (
        (signed <= AS_OF)
        & (signed > pl.lit(AS_OF - dt.timedelta(days=365)))  # within a year (no leap day)
        & pl.col("mhmda_sale_authorization_expires").fill_null(dt.date.max).gt(AS_OF)
        & pl.col("mhmda_sale_authorization_revoked").fill_null(dt.date.max).gt(AS_OF)
    ).fill_null(False)
    wa = pl.col("state").str.strip_chars().str.to_uppercase().is_in(["WA", "WASHINGTON"])
    sold = p.contact_ids(p.confirmed("primary-care", "meta"))
    washington = ids(p, wa.fill_null(False))
    assert sold and sold & washington <= ids(p, in_force)  # sold: authorized only
    # the compliance report shows whom the rule kept off the sale (the sample's few
    # authorizations in force rarely meet a HIPAA authorization and a consent to share)
    import json

    (report,) = (p.root / ".audiences" / "reports").glob("*.json")
    doc = json.loads(report.read_text())
    v = next(v for v in doc["verdicts"] if v["id"] == "mhmda-sale-authorization")
    assert v["evidence"]["sale_destinations"] == 1 and v["evidence"]["removed"] > 0
    assert v["evidence"]["excluded_us_wa"] > 0 and "19.373.070" in v["source"]
    # the marketer declares the buyer's destination a share: blocked until re-approved
    sold_toml, shared_toml = 'kind = "meta"\nbasis = "sale"\n', 'kind = "meta"\nbasis = "share"\n'
    p.edit_toml(lambda t: t.replace(sold_toml, shared_toml, 1))
    result = p.cli("sync", "primary-care", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert "changed since approval" in result.stdout + result.stderr
    assert "basis" in result.stdout + result.stderr
