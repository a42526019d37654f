"""`audiences sync` to the google_data_manager destination: the real client, the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest
from conftest import AS_OF, coarse, frozen_clock, released_ids, sync_row
from test_sync import WEST_COAST, ProcessDied, dying_after, only_result

from audiences.pipeline.sync import sync
from connectors.google_data_manager.connector import GoogleDataManagerConnector


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


DAY = AS_OF.isoformat()
SEGMENT = """name: west-coast
description: Grown-ups living on the Pacific side
destinations: [google]
where:
  all:
    - age: {gte: 18}
    - state: {in: [CA, OR, WA, NV, AZ]}
"""
PHI_SEGMENT = """name: heart-patients
description: Cardiology patients
destinations: [google]
where:
  all:
    - age: {gte: 18}
    - event:
        type: visit
        where: {department: {eq: cardiology}}
        count: {gte: 1}
        within: 730d
"""


def dm_people(members: pl.DataFrame) -> set[frozenset[tuple[str, str]]]:
    """Release rows as the Data Manager sandbox stores people."""
    people = set()
    for row in members.to_dicts():
        person = {
            (kind, row[k])
            for kind, k in (("email", "hashed_email"), ("phone", "hashed_phone_number"))
            if row.get(k)
        }
        address = [row.get(k) for k in ("hashed_first_name", "hashed_last_name")]
        country, postal = row.get("country_code"), row.get("postal_code")
        if all(address) and country and postal:
            person.add(("address", f"{address[0]}:{address[1]}:{str(country).upper()}:{postal}"))
        if person:
            people.add(frozenset(person))
    return people


def project(make_project: Any, text: str = SEGMENT, rows: int = 3000) -> Any:
    p = make_project(rows=rows)
    name = text.split("\n", 1)[0].removeprefix("name: ")
    (p.root / "segments" / f"{name}.yaml").write_text(text, encoding="utf-8")
    p.approve(name)
    return p


def test_sync_adds_then_removes_through_the_data_manager(make_project: Any) -> None:
    p = project(make_project, rows=6000)
    first = p.release("west-coast", "google")
    assert p.contact_ids(first.members) == released_ids(p.contacts(), WEST_COAST, google=True)
    r = only_result(p.cli_json("sync", "west-coast", "--as-of", DAY))
    # the CLI shows coarse figures; the exact ones are in the state DB
    assert (r["status"], r["adds"], r["invalid"]) == ("ok", coarse(first.members.height), coarse(0))
    assert (sync_row(p, r)["adds"], sync_row(p, r)["invalid"]) == (first.members.height, 0)
    box = p.boxes.data_manager
    assert r["audience"].startswith("accountTypes/GOOGLE_ADS/accounts/1234567890/userLists/")
    assert box.members(r["audience"]) == dm_people(first.members)
    assert [ul.display_name for ul in box.user_lists.values() if ul.name == r["audience"]] == [
        first.opaque_name
    ]
    ids = p.contact_ids(first.members)
    leaving = set(sorted(ids)[:30])
    frame = p.contacts()
    p.write_contacts(
        frame.with_columns(
            pl.when(pl.col("contact_id").is_in(list(leaving)))
            .then(False)
            .otherwise(pl.col("marketing_opt_in"))
            .alias("marketing_opt_in")
        )
    )
    second = p.release("west-coast", "google")
    r2 = only_result(p.cli_json("sync", "west-coast", "--as-of", DAY))
    exact = sync_row(p, r2)
    assert r2["status"] == "ok" and exact["removes"] >= 30 and exact["adds"] == 0
    assert (r2["removes"], r2["adds"]) == (coarse(exact["removes"]), coarse(0))
    assert box.members(r["audience"]) == dm_people(second.members)
    assert dm_people(p.confirmed("west-coast", "google")) == dm_people(second.members)


def test_denied_ad_user_data_is_never_released_nor_sent(make_project: Any) -> None:
    p = project(make_project)
    frame = p.contacts()
    denied_ids = set(frame.filter(WEST_COAST).get_column("contact_id").head(200).to_list())
    p.write_contacts(
        frame.with_columns(
            pl.when(pl.col("contact_id").is_in(list(denied_ids)))
            .then(pl.lit("denied"))
            .otherwise(pl.lit("granted"))
            .alias("ad_user_data_consent")
        )
    )
    assert p.config().consent.ad_user_data == "ad_user_data_consent"  # the template maps it
    release = p.release("west-coast", "google")
    assert not p.contact_ids(release.members) & denied_ids
    assert set(release.members.get_column("ad_user_data")) == {"GRANTED"}
    r = only_result(p.cli_json("sync", "west-coast", "--as-of", DAY))
    assert r["status"] == "ok"
    assert p.boxes.data_manager.members(r["audience"]) == dm_people(release.members)


def test_partial_success_people_stay_unknown_until_sent_again(
    make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PARTIAL_SUCCESS counts the refused but never names them: the request's people are
    neither members nor non-members in state; the next sync sends them again."""
    import connectors.google_data_manager.client as dm_client

    monkeypatch.setattr(dm_client, "MAX_MEMBERS_PER_REQUEST", 100)
    p = project(make_project)
    release = p.release("west-coast", "google")
    assert release.members.height > 100  # the partial request is one of several
    box = p.boxes.data_manager
    box.inject("partial", method="IngestAudienceMembers", count=7)
    (r,) = sync(p.config(), ["west-coast"], as_of=AS_OF).results
    assert (r.status, r.invalid, r.received) == ("ok", 7, r.sent - 7)
    assert r.membership_unknown == 100  # the whole first request
    audience = r.audience
    confirmed = p.confirmed("west-coast", "google")
    first = release.members.head(100)
    # none of the partial request's people is recorded as a member...
    assert not set(confirmed.get_column("member_key")) & set(first.get_column("member_key"))
    assert confirmed.height == release.members.height - 100
    # ...while 393 of them are on the list: state never claims to know which
    assert len(box.members(audience) & dm_people(first)) == 93
    (summary,) = p.query("SELECT summary FROM syncs WHERE sync_id = ?", (r.sync_id,))[0]
    assert '"membership_unknown": 100' in summary
    report = p.cli("report", "west-coast")
    assert report.exit_code == 0 and "membership unknown: 100" in report.output
    text = p.cli("sync", "west-coast", "--as-of", DAY)  # nothing changed: only the unknown
    assert text.exit_code == 0 and "only in part" not in text.output
    exact = p.query(
        "SELECT adds, removes FROM syncs WHERE destination = 'google' ORDER BY started_at"
    )[-1]
    assert exact == (100, 0)  # sent again, though the snapshot's diff had nothing to add
    assert p.confirmed("west-coast", "google").height == release.members.height
    assert box.members(audience) == dm_people(release.members)
    unsure = p.root / ".audiences" / "memberships" / "west-coast" / "google.unsure.parquet"
    assert not unsure.exists()


def test_a_partial_removal_is_sent_again(make_project: Any) -> None:
    p = project(make_project)
    release = p.release("west-coast", "google")
    (r,) = sync(p.config(), ["west-coast"], as_of=AS_OF).results
    leaving = set(sorted(p.contact_ids(release.members))[:30])
    frame = p.contacts()
    p.write_contacts(
        frame.with_columns(
            pl.when(pl.col("contact_id").is_in(list(leaving)))
            .then(False)
            .otherwise(pl.col("marketing_opt_in"))
            .alias("marketing_opt_in")
        )
    )
    after = p.release("west-coast", "google")
    p.boxes.data_manager.inject("partial", method="RemoveAudienceMembers", count=5)
    (r2,) = sync(p.config(), ["west-coast"], as_of=AS_OF).results
    assert r2.status == "ok" and r2.membership_unknown == r2.removes >= 30
    # the removal is not recorded: state still lists them (maybe on the platform)
    assert p.confirmed("west-coast", "google").height == release.members.height
    doc = p.cli_json("sync", "west-coast", "--as-of", DAY)
    assert only_result(doc)["membership_unknown_any"] is False
    assert p.boxes.data_manager.members(r.audience) == dm_people(after.members)
    assert dm_people(p.confirmed("west-coast", "google")) == dm_people(after.members)


@pytest.mark.parametrize("sent", [False, True], ids=["dies-before-sending", "dies-after-sending"])
def test_crash_at_every_batch_boundary_loses_and_duplicates_nothing(
    make_project: Any, monkeypatch: pytest.MonkeyPatch, sent: bool
) -> None:
    monkeypatch.setattr(GoogleDataManagerConnector, "add_batch_size", 100)
    monkeypatch.setattr(GoogleDataManagerConnector, "remove_batch_size", 100)
    p = project(make_project, rows=6000)
    release = p.release("west-coast", "google")
    batches = -(-release.members.height // 100)
    assert batches >= 3
    crashes = 0
    while True:  # each run confirms one batch and dies at the next boundary
        try:
            (r,) = sync(
                p.config(), ["west-coast"], as_of=AS_OF, connector_factory=dying_after(1, sent=sent)
            ).results
            break
        except ProcessDied:
            crashes += 1
    assert crashes >= 2 and r.status == "ok"
    audience = p.remote_id("west-coast", "google")
    assert len(p.boxes.data_manager.user_lists) >= 1
    lists = [ul for ul in p.boxes.data_manager.user_lists.values() if ul.name == audience]
    assert len(lists) == 1  # found by its opaque name, never made twice
    confirmed = p.confirmed("west-coast", "google")
    # what state says is exactly what the platform holds: nothing lost, nothing twice
    assert p.boxes.data_manager.members(audience) == dm_people(confirmed)
    assert confirmed.get_column("member_key").is_unique().all()
    # everyone released is on the list, but a last remainder under k_diff (100) held back
    assert confirmed.height + r.held_adds == release.members.height
    assert r.held_adds < 100
    assert set(confirmed.get_column("member_key")) <= set(release.members.get_column("member_key"))


def test_a_phi_derived_segment_never_reaches_it(make_project: Any) -> None:
    p = project(make_project, PHI_SEGMENT)
    before = len(p.boxes.data_manager.requests)
    doc = p.cli_json("sync", "heart-patients", "--as-of", DAY, expect=3)
    assert {r["status"] for r in doc["results"]} == {"blocked"}
    assert "forbids health-based customer lists" in doc["results"][0]["error"]
    assert len(p.boxes.data_manager.requests) == before


@pytest.mark.parametrize("destination", ["google", "google_ads"])
def test_eea_people_are_sent_only_with_both_signals_granted_in_the_crm(
    make_project: Any, destination: str
) -> None:
    """The attack: a config that maps no Google consent column releases everyone with
    UNSPECIFIED consent; the EEA / UK / CH people among them are neither counted nor
    released (policies/sendable.py), and neither Google connector sends them."""
    from conftest import google_people

    from policies.sendable import CONSENT_REGIONS

    p = project(make_project, SEGMENT.replace("[google]", f"[{destination}]"))
    unmapped = (
        'ad_user_data = "ad_user_data_consent"\n',
        'ad_personalization = "ad_personalization_consent"\n',
    )
    p.edit_toml(lambda t: t.replace(unmapped[0], "").replace(unmapped[1], ""))
    assert p.config().consent.ad_user_data is None is p.config().consent.ad_personalization
    p.approve("west-coast")
    frame = p.contacts()
    moved = sorted(released_ids(frame, WEST_COAST))[:120]  # back later: adds over k_diff
    countries = pl.Series(["Germany", "FR", "ie", "United Kingdom"] * 30)
    p.write_contacts(
        frame.join(pl.DataFrame({"contact_id": moved, "moved_to": countries}), "contact_id", "left")
        .with_columns(pl.coalesce("moved_to", "country").alias("country"))
        .drop("moved_to")
    )
    release = p.release("west-coast", destination)
    in_eea = pl.col("country_code").is_in(sorted(CONSENT_REGIONS))
    assert release.members.filter(in_eea).height == 0  # the gate left them out
    (r,) = sync(p.config(), ["west-coast"], as_of=AS_OF).results
    assert r.status == "ok" and r.invalid == 0
    confirmed = p.confirmed("west-coast", destination)
    assert confirmed.height == release.members.height
    assert confirmed.filter(in_eea).height == 0
    people = dm_people if destination == "google" else google_people
    box = p.boxes.data_manager if destination == "google" else p.boxes.google
    assert box.members(r.audience) == people(confirmed)  # nobody from the EEA on the list
    # ... because the connector never sent them, not because the platform refused them
    if destination == "google":
        assert r.membership_unknown == 0
        assert not any(request.errors for request in box.requests_for(r.audience))
    else:
        assert not any(j.refused for j in box.jobs.values() if j.user_list == r.audience)

    # with both columns mapped and both granted in the CRM, they go
    p.edit_toml(lambda t: t.replace("[consent]\n", "[consent]\n" + "".join(unmapped)))
    p.approve("west-coast")
    eea_ids = set(moved)
    p.write_contacts(
        p.contacts().with_columns(
            [
                pl.when(pl.col("contact_id").is_in(list(eea_ids)))
                .then(pl.lit("granted"))
                .otherwise(pl.col(c))
                .alias(c)
                for c in ("ad_user_data_consent", "ad_personalization_consent")
            ]
        )
    )
    again = p.release("west-coast", destination)
    granted = again.members.filter(in_eea)
    assert granted.height >= 100 and set(granted.get_column("ad_user_data")) == {"GRANTED"}
    (r2,) = sync(p.config(), ["west-coast"], as_of=AS_OF).results
    assert r2.status == "ok" and r2.held_adds == 0
    confirmed = p.confirmed("west-coast", destination)
    assert confirmed.filter(in_eea).height == granted.height
    assert box.members(r.audience) == people(confirmed)


def test_a_takedown_the_platform_took_in_part_says_so_and_finishes_on_rerun(
    make_project: Any,
) -> None:
    p = project(make_project)
    (r,) = sync(p.config(), ["west-coast"], as_of=AS_OF).results
    box, on_list = p.boxes.data_manager, p.confirmed("west-coast", "google").height
    box.inject("partial", method="RemoveAudienceMembers", count=3)
    out = p.cli("takedown", "west-coast", "--destination", "google", "--by", "qa.officer")
    assert out.exit_code == 1 and "Traceback" not in out.stderr
    assert "PARTIAL_SUCCESS" in out.stderr and "run the takedown again" in out.stderr
    assert len(box.members(r.audience)) == 3  # on the list still: never reported as gone
    assert p.confirmed("west-coast", "google").height == on_list
    doc = p.cli_json("takedown", "west-coast", "--destination", "google", "--by", "qa.officer")
    ((status, remaining),) = [(t["status"], t["remaining"]) for t in doc["takedown"]]
    assert (status, remaining) == ("taken_down", 0)
    assert box.members(r.audience) == frozenset()
