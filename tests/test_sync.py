"""System tests of `audiences sync`: the real SDKs against the Meta and Google Ads sandboxes.

Every test builds a project from the template with sample data, syncs through the CLI
(click's CliRunner, in process) or the library, and asserts the platform's end state
exactly against what the policy gate releases.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import (
    AS_OF,
    STATE,
    Project,
    adults,
    alone_in_opting_out,
    audiences_command,
    coarse,
    external_ids,
    frozen_clock,
    google_people,
    meta_rows,
    meta_sessions,
    released_ids,
    rows_received,
    sync_row,
)

from audiences.pipeline.sync import make_connector, sync
from connectors.base import Outgoing
from connectors.meta.connector import MetaConnector

DAY = AS_OF.isoformat()


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


WEST = ["CA", "OR", "WA", "NV", "AZ"]  # tests/cases/sync/west-coast.yaml
# The segments of tests/cases/sync over the sample CRM's columns (for the model of releases)
ALL_ADULTS = adults(AS_OF) & pl.col("preferred_language").is_in(["en", "es"])
WEST_COAST = adults(AS_OF) & STATE.is_in(WEST)
OLDER_ADULTS = adults(AS_OF, 50)
V2_STATES = ["CA", "NY", "TX", "FL", "IL", "MA", "NJ", "NC"]  # all-adults-v2.yaml
# Rows of sample CRM for more than 25,000 all-adults members (three Meta add batches) and
# more than 10,000 people joining between all-adults v1 and v2 (two add batches)
BIG = 90_000


# ------------------------------------------------------------------------------ helpers
def pick(ids: set[str], n: int, seed: int) -> set[str]:
    chosen = pl.Series(sorted(ids)).sample(n, seed=seed, shuffle=True).to_list()
    return set(chosen)


def eligible_outsiders(project: Project, members: set[str], languages: tuple[str, ...]) -> set[str]:
    """Adults of known age, in the segment's languages, not yet members only for lack of their
    own opt-in: no other opt-out of theirs, none of a record sharing their email or phone."""
    return outsiders(
        project, members, adults(AS_OF) & pl.col("preferred_language").is_in(languages)
    )


def outsiders(project: Project, members: set[str], in_segment: pl.Expr) -> set[str]:
    """People of the segment who join once they opt in to marketing (see eligible_outsiders)."""
    contacts = project.contacts()
    frame = contacts.with_columns(alone_in_opting_out(contacts)).filter(
        in_segment
        & ~pl.col("marketing_opt_in")
        & ~pl.col("do_not_contact")
        & ~pl.col("deceased")
        & (pl.col("ad_personalization_consent") != "denied").fill_null(True)
        & pl.col("alone")
        & ~pl.col("contact_id").is_in(list(members))
    )
    return set(frame.get_column("contact_id").to_list())


def in_segment_ids(project: Project, in_segment: pl.Expr) -> set[str]:
    """Every record the segment's definition takes, before any policy rule."""
    return set(project.contacts().filter(in_segment).get_column("contact_id").to_list())


def update_contacts(project: Project, ids: set[str], **values: Any) -> None:
    frame = project.contacts()
    hit = pl.col("contact_id").is_in(list(ids))
    assert frame.filter(hit).height == len(ids)
    project.write_contacts(
        frame.with_columns(
            [pl.when(hit).then(pl.lit(v)).otherwise(pl.col(c)).alias(c) for c, v in values.items()]
        )
    )


def only_result(doc: dict[str, Any]) -> dict[str, Any]:
    (result,) = doc["results"]
    return result


def requests_to(project: Project, audience: str) -> list[tuple[str, str, int]]:
    return [
        (r.method, r.path.rsplit("/", 1)[-1], r.status)
        for r in project.boxes.meta.request_log()
        if f"/{audience}/" in r.path
    ]


def small_batches(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setattr(MetaConnector, "add_batch_size", size)
    monkeypatch.setattr(MetaConnector, "remove_batch_size", size)


# ------------------------------------------------------------------------------ 1. Meta
def test_meta_first_sync_then_incremental_and_plan(make_project: Any) -> None:
    p = make_project(rows=BIG, segments=("all-adults",))
    first = p.release("all-adults", "meta")
    assert external_ids(first.members) == released_ids(p.contacts(), ALL_ADULTS)
    assert first.members.height > 25_000

    doc = p.cli_json("sync", "all-adults", "--as-of", DAY)
    r = only_result(doc)
    n = first.members.height
    assert (r["status"], r["adds"], r["removes"], r["sent"], r["received"], r["invalid"]) == (
        "ok",
        coarse(n),
        coarse(0),
        coarse(n),
        coarse(n),
        coarse(0),
    )
    exact = sync_row(p, r)
    assert (exact["adds"], exact["removes"], exact["received"], exact["invalid"]) == (n, 0, n, 0)
    batches = math.ceil(n / MetaConnector.add_batch_size)
    assert r["batches"] == coarse(batches) and batches >= 3
    audience = r["audience"]
    assert audience == p.remote_id("all-adults", "meta")

    # opaque name: no word of the segment's name or description reaches Meta
    info = p.boxes.meta.audience_info(audience)
    assert info["name"] == first.opaque_name
    sent_text = f"{info['name']} {info['description']}".lower()
    segment_text = "all-adults Grown-ups who read English or Spanish"
    for word in re.findall(r"[a-z]{3,}", segment_text.lower()):
        assert word not in sent_text, word

    # everyone in the release, nobody else; one upload session of several batches
    assert p.boxes.meta.members(audience) == meta_rows(first.members)
    sessions = meta_sessions(p.boxes, audience)
    assert list(sessions) == [next(k for k in sessions if k.startswith("add:"))]
    (batches,) = sessions.values()
    assert sorted(batches) == list(range(1, math.ceil(n / MetaConnector.add_batch_size) + 1))
    assert sum(b["num_received"] for b in batches.values()) == n
    assert p.boxes.meta._audiences[audience].sessions[next(iter(sessions))].finished

    # some members leave (opt-outs: forced, with the records sharing their email or phone;
    # language change: optional), some join (and may free records their no-opt-in held out)
    ids = external_ids(first.members)
    opted_out = pick(ids, 150, seed=1)
    moved = pick(ids - opted_out, 130, seed=2)
    joiners = pick(eligible_outsiders(p, ids, ("en", "es")), 200, seed=3)
    update_contacts(p, opted_out, marketing_opt_in=False)
    update_contacts(p, moved, preferred_language="fr")
    update_contacts(p, joiners, marketing_opt_in=True)
    second = p.release("all-adults", "meta")
    expected = released_ids(p.contacts(), ALL_ADULTS)
    assert external_ids(second.members) == expected
    leave, join = ids - expected, expected - ids
    forced = leave & in_segment_ids(p, ALL_ADULTS)  # still in the segment: consent holds out
    assert opted_out <= forced and moved == leave - forced  # duplicates of opt-outs leave too
    assert len(joiners & join) >= 190 and len(leave - forced) >= 100  # none held (k_diff 100)

    # plan: the same adds and removes, and nothing changes anywhere
    before = p.fingerprint()
    log_before = len(p.boxes.meta.request_log())
    plan = p.cli_json("plan", "all-adults", "--as-of", DAY)
    (summary,) = plan["plans"]
    assert (summary["adds"], summary["removes"], summary["forced_removes"]) == (
        coarse(len(join)),
        coarse(len(leave)),
        coarse(len(forced)),
    )
    assert (summary["held_adds"], summary["held_removes"]) == (coarse(0), coarse(0))
    assert (summary["confirmed_members"], summary["release_members"]) == (
        coarse(n),
        coarse(len(expected)),
    )
    assert p.fingerprint() == before
    assert len(p.boxes.meta.request_log()) == log_before
    assert p.boxes.meta.members(audience) == meta_rows(first.members)

    audiences_before = p.boxes.meta.audience_ids()
    r2 = only_result(p.cli_json("sync", "all-adults", "--as-of", DAY))
    assert (r2["status"], r2["adds"], r2["removes"], r2["batches"]) == (
        "ok",
        coarse(len(join)),
        coarse(len(leave)),
        coarse(2),
    )
    assert (sync_row(p, r2)["adds"], sync_row(p, r2)["removes"]) == (len(join), len(leave))
    assert r2["audience"] == audience
    assert p.boxes.meta.audience_ids() == audiences_before
    assert p.boxes.meta.members(audience) == meta_rows(second.members)
    assert rows_received(p.boxes, audience, "add") == n + len(join)
    assert rows_received(p.boxes, audience, "remove") == len(leave)
    assert p.boxes.meta.audience_ids().count(audience) == 1


# ------------------------------------------------------------------------------ 2. Google
def test_google_ads_user_list_jobs_polled_and_removals_in_their_own_job(
    make_project: Any,
) -> None:
    p = make_project(rows=6000, segments=("west-coast",))
    first = p.release("west-coast", "google_ads")
    n = first.members.height
    assert p.contact_ids(first.members) == released_ids(p.contacts(), WEST_COAST, google=True)
    assert n > 300

    r = only_result(p.cli_json("sync", "west-coast", "--as-of", DAY))
    assert (r["status"], r["adds"], r["removes"], r["invalid"]) == (
        "ok", coarse(n), coarse(0), coarse(0),
    )  # fmt: skip
    assert [sync_row(p, r)[f] for f in ("adds", "removes", "invalid")] == [n, 0, 0]
    user_list = r["audience"]
    assert user_list.startswith("customers/1234567890/userLists/")
    google = p.boxes.google
    assert google.user_lists[user_list].name == first.opaque_name
    assert google.members(user_list) == google_people(first.members)
    jobs = [j for j in google.jobs.values() if j.user_list == user_list]
    # one job per consent group (GRANTED, UNSPECIFIED: DENIED is never released), each run
    # and polled to SUCCESS
    groups = first.members.select("ad_user_data", "ad_personalization").unique()
    assert set(groups.get_column("ad_personalization")) == {"GRANTED", "UNSPECIFIED"}
    assert len(jobs) == groups.height
    for job in jobs:
        assert job.status.name == "SUCCESS" and job.kinds == {"create"}
        assert job.polls_after_run == google.pending_polls + google.running_polls + 1

    # opt-outs (and the records sharing their email or phone) leave, in a removal job
    ids = p.contact_ids(first.members)
    opted_out = pick(ids, 120, seed=4)
    update_contacts(p, opted_out, marketing_opt_in=False)
    second = p.release("west-coast", "google_ads")
    expected = released_ids(p.contacts(), WEST_COAST, google=True)
    assert p.contact_ids(second.members) == expected
    assert expected <= ids - opted_out

    r2 = only_result(p.cli_json("sync", "west-coast", "--as-of", DAY))
    assert (r2["status"], r2["adds"], r2["removes"]) == (
        "ok", coarse(0), coarse(len(ids - expected)),
    )  # fmt: skip
    assert (sync_row(p, r2)["adds"], sync_row(p, r2)["removes"]) == (0, len(ids - expected))
    new_jobs = [j for j in google.jobs.values() if j.user_list == user_list and j not in jobs]
    assert [j.kinds for j in new_jobs] == [{"remove"}]
    assert google.members(user_list) == google_people(second.members)


def test_google_ads_denied_consent_is_never_released_nor_confirmed(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("west-coast",))
    contacts = p.keyed_contacts()
    denied = contacts.filter(pl.col("ad_personalization_consent") == "denied")
    # people the segment would take but for their denied ad personalization
    held_out = denied.filter(
        WEST_COAST & pl.col("marketing_opt_in") & ~pl.col("do_not_contact") & ~pl.col("deceased")
    )
    assert held_out.height >= 10
    release = p.release("west-coast", "google_ads")
    assert p.contact_ids(release.members) == released_ids(contacts, WEST_COAST, google=True)
    r = only_result(p.cli_json("sync", "west-coast", "--as-of", DAY))
    confirmed = p.confirmed("west-coast", "google_ads")
    assert r["status"] == "ok"
    # nobody who denied ad personalization is released, sent, or recorded as on the list
    assert not release.members.get_column("member_key").is_in(denied["member_key"]).any()
    assert "DENIED" not in set(release.members.get_column("ad_personalization"))
    assert not confirmed.get_column("member_key").is_in(denied["member_key"]).any()
    assert p.boxes.google.members(r["audience"]) == google_people(confirmed)

    # consent denied after the push: removed at the next sync (with the records sharing the
    # person's email or phone), never held back though fewer than k_diff (100) leave
    on_list = p.contact_ids(confirmed)
    withdrawn = pick(on_list, 3, seed=15)
    update_contacts(p, withdrawn, ad_personalization_consent="denied")
    expected = released_ids(p.contacts(), WEST_COAST, google=True)
    assert expected <= on_list - withdrawn
    r2 = only_result(p.cli_json("sync", "west-coast", "--as-of", DAY))
    assert (r2["status"], r2["adds"], r2["removes"], r2["held_removes"]) == (
        "ok",
        coarse(0),
        coarse(len(on_list - expected)),
        coarse(0),
    )
    assert [sync_row(p, r2)[f] for f in ("adds", "removes", "holds")] == [
        0, len(on_list - expected), 0,
    ]  # fmt: skip
    confirmed = p.confirmed("west-coast", "google_ads")
    assert p.contact_ids(confirmed) == expected
    assert p.boxes.google.members(r["audience"]) == google_people(confirmed)


def test_opt_out_on_one_record_removes_the_duplicates_too(make_project: Any) -> None:
    """A person recorded twice (two CRM records the gate links: an e-mail, a phone, or a
    name with a ZIP or a city and state) is released once, as one of the records; an
    opt-out on the *other* record takes the released one out too."""
    from conftest import _identity_keys, people

    p = make_project(rows=6000, segments=("west-coast",))
    first = p.release("west-coast", "google_ads")
    r = only_result(p.cli_json("sync", "west-coast", "--as-of", DAY))
    linked = people(_identity_keys(p.contacts().filter(WEST_COAST)))
    records: dict[str, list[str]] = {}
    for cid, person in sorted(linked.items()):
        records.setdefault(person, []).append(cid)
    released = p.contact_ids(first.members)
    twice = sorted(ids for ids in records.values() if len(ids) > 1 and set(ids) & released)
    assert len(twice) >= 2  # the sample CRM has people recorded twice
    (member,) = set(twice[0]) & released
    opted_out = set(twice[0]) - {member}
    update_contacts(p, opted_out, marketing_opt_in=False)
    expected = released_ids(p.contacts(), WEST_COAST, google=True)
    assert p.contact_ids(p.release("west-coast", "google_ads").members) == expected
    gone = p.contact_ids(first.members) - expected
    assert member in gone  # the released record leaves with the opted-out one

    r2 = only_result(p.cli_json("sync", "west-coast", "--as-of", DAY))
    # forced removals: not held though fewer than k_diff (100)
    assert (r2["status"], r2["adds"], r2["removes"], r2["held_removes"]) == (
        "ok",
        coarse(0),
        coarse(len(gone)),
        coarse(0),
    )
    assert [sync_row(p, r2)[f] for f in ("adds", "removes", "holds")] == [0, len(gone), 0]
    confirmed = p.confirmed("west-coast", "google_ads")
    assert p.contact_ids(confirmed) == expected
    # what state believes is on the list is what is on the list
    assert p.boxes.google.members(r["audience"]) == google_people(confirmed)


def test_opt_out_on_one_record_removes_a_gmail_spelling_duplicate(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("west-coast",))
    a, b = sorted(released_ids(p.contacts(), WEST_COAST))[:2]
    # one person, two records: one gmail mailbox written with and without a dot, no phone
    frame = p.contacts()
    p.write_contacts(
        frame.with_columns(
            pl.when(pl.col("contact_id") == a)
            .then(pl.lit("pat.lee.zz@gmail.com"))
            .when(pl.col("contact_id") == b)
            .then(pl.lit("patlee.zz@gmail.com"))
            .otherwise(pl.col("email"))
            .alias("email"),
            pl.when(pl.col("contact_id").is_in([a, b]))
            .then(None)
            .otherwise(pl.col("phone"))
            .alias("phone"),
        )
    )
    r = only_result(p.cli_json("sync", "west-coast", "--as-of", DAY))
    update_contacts(p, {a}, marketing_opt_in=False)
    p.cli_json("sync", "west-coast", "--as-of", DAY)
    confirmed = p.confirmed("west-coast", "google_ads")
    assert not {a, b} & p.contact_ids(confirmed)
    assert p.boxes.google.members(r["audience"]) == google_people(confirmed)


# ------------------------------------------------------------------------------ 3. crashes
class ProcessDied(BaseException):
    """Stands for the process dying (kill, OOM, power loss) in the middle of a sync."""


def dying_after(batches: int, *, sent: bool) -> Any:
    """A connector factory: the real connector, but the process dies at batch ``batches + 1``,
    before sending it (``sent=False``) or after the platform took it unconfirmed (``sent=True``).
    """
    calls = {"n": 0}

    def factory(config: Any, name: str) -> Any:
        connector = make_connector(config, name)
        real_send = connector.send

        def send(remote_id: str, op: str, rows: pl.DataFrame, **kw: Any) -> Any:
            calls["n"] += 1
            if calls["n"] > batches and not sent:
                raise ProcessDied
            outcome = real_send(remote_id, op, rows, **kw)
            if calls["n"] > batches:
                raise ProcessDied
            return outcome

        connector.send = send
        return connector

    return factory


@pytest.mark.parametrize(
    ("confirmed_batches", "sent"),
    [(1, False), (3, True)],
    ids=["dies-between-removal-batches", "dies-after-sending-an-add-batch"],
)
def test_crash_between_batches_then_rerun(
    make_project: Any, monkeypatch: pytest.MonkeyPatch, confirmed_batches: int, sent: bool
) -> None:
    small_batches(monkeypatch, 250)
    p = make_project(rows=3000, segments=("all-adults",))
    first = p.release("all-adults", "meta")
    (r1,) = sync(p.config(), ["all-adults"], as_of=AS_OF).results
    assert r1.status == "ok"
    audience, n = r1.audience, first.members.height

    ids = external_ids(first.members)
    opted_out = pick(ids, 300, seed=5)  # removals: 250 + the rest (one row per person)
    joiners = pick(eligible_outsiders(p, ids, ("en", "es")), 400, seed=6)  # adds: 250 + rest
    update_contacts(p, opted_out, marketing_opt_in=False)
    update_contacts(p, joiners, marketing_opt_in=True)
    second = p.release("all-adults", "meta")
    expected = released_ids(p.contacts(), ALL_ADULTS)
    assert external_ids(second.members) == expected
    removes, adds = len(ids - expected), len(expected - ids)
    # two batches each way; the last add batch is not below k_diff (100), so never held
    assert 300 <= removes <= 500 and 350 <= adds <= 500

    with pytest.raises(ProcessDied):
        sync(
            p.config(),
            ["all-adults"],
            as_of=AS_OF,
            connector_factory=dying_after(confirmed_batches, sent=sent),
        )
    ((crashed, status, confirmed),) = p.query(
        "SELECT s.sync_id, s.status, count(b.seq) FROM syncs s LEFT JOIN batches b "
        "ON b.sync_id = s.sync_id AND b.status = 'confirmed' "
        "WHERE s.started_at = (SELECT max(started_at) FROM syncs) GROUP BY s.sync_id"
    )
    assert (status, confirmed) == ("running", confirmed_batches)

    (r2,) = sync(p.config(), ["all-adults"], as_of=AS_OF).results
    assert r2.status == "ok" and r2.recovered == [crashed]
    # the rerun sends only what was not confirmed: a batch sent but unconfirmed goes again
    confirmed_rows = [250, removes - 250, 250][:confirmed_batches]
    removes_left = removes - sum(confirmed_rows[:2])
    adds_left = adds - sum(confirmed_rows[2:])
    assert (r2.removes, r2.adds, r2.held_adds, r2.held_removes) == (
        removes_left,
        adds_left,
        0,
        0,
    )

    assert p.boxes.meta.members(audience) == meta_rows(second.members)
    assert meta_rows(p.confirmed("all-adults", "meta")) == meta_rows(second.members)
    # no confirmed batch went twice; removals were not lost
    resent = adds - 250 if sent else 0  # the add batch that died after sending
    assert rows_received(p.boxes, audience, "remove") == removes
    assert rows_received(p.boxes, audience, "add") == n + adds + resent


def test_crash_after_sending_a_small_last_batch_then_opt_out(
    make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An add batch sent but unconfirmed when the process dies may be on the platform: the
    rerun settles it though it is smaller than k_diff (100), so a later opt-out of one of
    its people is removed (a hold would leave them on the platform, unknown to state)."""
    small_batches(monkeypatch, 250)
    p = make_project(rows=3000, segments=("all-adults",))
    (r1,) = sync(p.config(), ["all-adults"], as_of=AS_OF).results
    ids = external_ids(p.confirmed("all-adults", "meta"))
    joiners = pick(eligible_outsiders(p, ids, ("en", "es")), 300, seed=16)
    update_contacts(p, joiners, marketing_opt_in=True)
    second = released_ids(p.contacts(), ALL_ADULTS)
    adds = len(second - ids)
    assert 250 + 1 <= adds < 250 + 100  # the last add batch is below k_diff

    with pytest.raises(ProcessDied):  # dies after the platform took the second add batch
        sync(p.config(), ["all-adults"], as_of=AS_OF, connector_factory=dying_after(1, sent=True))
    assert len(p.boxes.meta.members(r1.audience)) == len(second)
    ((crashed,),) = p.query("SELECT sync_id FROM syncs WHERE status = 'running'")
    journal = p.root / ".audiences" / "syncs" / crashed / "000002-add.parquet"
    last_batch = external_ids(pl.read_parquet(journal))  # sent, never confirmed
    assert len(last_batch) == adds - 250
    (r2,) = sync(p.config(), ["all-adults"], as_of=AS_OF).results
    assert (r2.status, r2.adds, r2.held_adds, r2.removes) == ("ok", adds - 250, 0, 0)
    confirmed = p.confirmed("all-adults", "meta")
    assert external_ids(confirmed) == second
    assert p.boxes.meta.members(r1.audience) == meta_rows(confirmed)

    # one of the last batch's people opts out: removed at once
    who = pick(last_batch, 1, seed=17)
    update_contacts(p, who, marketing_opt_in=False)
    (r3,) = sync(p.config(), ["all-adults"], as_of=AS_OF).results
    assert r3.status == "ok" and r3.removes >= 1
    confirmed = p.confirmed("all-adults", "meta")
    assert not who & external_ids(confirmed)
    assert p.boxes.meta.members(r1.audience) == meta_rows(confirmed)


def test_kill_9_between_batches_then_rerun(make_project: Any, private_ledger: Path) -> None:
    """A real `audiences sync` process killed with SIGKILL after two confirmed batches.

    The child process judges people on the real clock, so the data is dated today and
    this process's clock is set to today too."""
    today = datetime.now(UTC).date()
    with frozen_clock(today):
        p = make_project(rows=BIG, as_of=today)
        _kill_9_between_batches_then_rerun(p, today, private_ledger)


def _kill_9_between_batches_then_rerun(p: Any, today: date, private_ledger: Path) -> None:
    from connectors.sandbox.meta_server import Fault

    day = today.isoformat()
    all_adults = adults(today) & pl.col("preferred_language").is_in(["en", "es"])
    p.add_segment("all-adults-v1", name="all-adults")
    r1 = only_result(p.cli_json("sync", "all-adults", "--as-of", day))
    v1 = p.release("all-adults", "meta", today)
    audience = r1["audience"]
    assert external_ids(v1.members) == released_ids(p.contacts(), all_adults & (STATE == "CA"))

    # v2: 150 members opt out, with the records sharing their email or phone (one removal
    # batch) and 10,000+ people join (two add batches)
    opted_out = pick(external_ids(v1.members), 150, seed=7)
    update_contacts(p, opted_out, marketing_opt_in=False)
    p.add_segment("all-adults-v2", name="all-adults")
    v2 = p.release("all-adults", "meta", today)
    expected = released_ids(p.contacts(), all_adults & STATE.is_in(V2_STATES))
    assert external_ids(v2.members) == expected
    removes = len(external_ids(v1.members) - expected)
    adds = len(expected - external_ids(v1.members))
    assert 150 <= removes < MetaConnector.remove_batch_size
    assert MetaConnector.add_batch_size < adds < 2 * MetaConnector.add_batch_size
    last_batch = adds - MetaConnector.add_batch_size

    # the first add batch passes, the second hangs long enough to be killed mid-way
    p.boxes.meta.inject(Fault(delay_s=0.001), method="POST", path=r"/users$")
    p.boxes.meta.inject(Fault(delay_s=2.0), method="POST", path=r"/users$")
    proc = subprocess.Popen(
        [
            *audiences_command(private_ledger),
            "-p",
            str(p.root),
            "sync",
            "all-adults",
            "--as-of",
            day,
        ],
        env={**os.environ, **p.tokens},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    confirmed_sql = (
        "SELECT count(*) FROM batches b JOIN syncs s ON s.sync_id = b.sync_id "
        "WHERE s.status = 'running' AND b.status = 'confirmed'"
    )
    deadline = time.monotonic() + 60
    try:
        while p.query(confirmed_sql)[0][0] < 2:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the sync never confirmed two batches"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    ((crashed, confirmed),) = p.query(
        "SELECT s.sync_id, count(*) FROM syncs s JOIN batches b ON b.sync_id = s.sync_id "
        "WHERE s.status = 'running' AND b.status = 'confirmed' GROUP BY s.sync_id"
    )
    assert confirmed == 2

    r2 = only_result(p.cli_json("sync", "all-adults", "--as-of", day))
    assert (r2["status"], r2["recovered"], r2["removes"], r2["adds"]) == (
        "ok",
        [crashed],
        coarse(0),
        coarse(last_batch),
    )
    assert (sync_row(p, r2)["removes"], sync_row(p, r2)["adds"]) == (0, last_batch)
    assert p.boxes.meta.members(audience) == meta_rows(v2.members)
    # removals went once; the rerun's one session carried exactly the unconfirmed batch
    assert rows_received(p.boxes, audience, "remove") == removes
    add_sessions = [b for k, b in meta_sessions(p.boxes, audience).items() if k.startswith("add:")]
    assert len(add_sessions) == 3  # first sync, killed run, rerun
    assert [b["num_received"] for b in add_sessions[-1].values()] == [last_batch]
    assert add_sessions[1][1]["num_received"] == MetaConnector.add_batch_size


@pytest.mark.parametrize("dies", [False, True], ids=["completes", "dies-mid-replace"])
def test_full_refresh_replaces_the_audience_even_when_interrupted(
    make_project: Any, monkeypatch: pytest.MonkeyPatch, dies: bool
) -> None:
    """A Meta replace swaps the audience only at its last batch: a run that dies before
    must leave state saying the old members are still there, so opt-outs still go."""
    small_batches(monkeypatch, 250)
    p = make_project(rows=3000, segments=("all-adults",))
    first = p.release("all-adults", "meta")
    (r1,) = sync(p.config(), ["all-adults"], as_of=AS_OF).results
    opted_out = pick(external_ids(first.members), 120, seed=14)
    update_contacts(p, opted_out, marketing_opt_in=False)
    second = p.release("all-adults", "meta")
    expected = released_ids(p.contacts(), ALL_ADULTS)
    assert external_ids(second.members) == expected
    removes = len(external_ids(first.members) - expected)  # opt-outs and their duplicates
    assert removes >= 120
    batches = math.ceil(second.members.height / 250)
    assert batches >= 3

    if dies:
        with pytest.raises(ProcessDied):
            sync(
                p.config(),
                ["all-adults"],
                as_of=AS_OF,
                full_refresh=True,
                connector_factory=dying_after(2, sent=False),
            )
        # nothing of the unfinished replace reached the audience, and state knows it
        assert p.boxes.meta.members(r1.audience) == meta_rows(first.members)
        (r2,) = sync(p.config(), ["all-adults"], as_of=AS_OF).results
        assert (r2.status, r2.adds, r2.removes) == ("ok", 0, removes)
    else:
        (r2,) = sync(p.config(), ["all-adults"], as_of=AS_OF, full_refresh=True).results
        assert (r2.status, r2.replaced_members, r2.batches) == (
            "ok",
            second.members.height,
            batches,
        )
        assert (r2.adds, r2.removes) == (0, removes)  # what the replace changed
    assert p.boxes.meta.members(r1.audience) == meta_rows(second.members)
    assert meta_rows(p.confirmed("all-adults", "meta")) == meta_rows(second.members)


# ------------------------------------------------------------------------------ 4. retries
def test_transient_faults_are_retried_and_the_sync_succeeds(make_project: Any) -> None:
    p = make_project(rows=6000, segments=("all-adults", "west-coast"))
    p.cli_json("sync", "all-adults", "west-coast", "--as-of", DAY)
    meta_first = p.release("all-adults", "meta")
    ids = external_ids(meta_first.members)
    # joiners of both lists: in the west, and not refused by Google (ad_user_data denied)
    google_may = STATE.is_in(WEST) & (pl.col("ad_user_data_consent") != "denied").fill_null(True)
    west = set(p.contacts().filter(google_may).get_column("contact_id"))
    joiners = pick(eligible_outsiders(p, ids, ("en", "es")) & west, 110, seed=8)
    opted_out = pick(ids, 120, seed=9)  # and the records sharing their email or phone
    update_contacts(p, joiners, marketing_opt_in=True)
    update_contacts(p, opted_out, marketing_opt_in=False)
    meta_release = p.release("all-adults", "meta")
    google_release = p.release("west-coast", "google_ads")
    google_before = p.contact_ids(p.confirmed("west-coast", "google_ads"))
    assert external_ids(meta_release.members) == released_ids(p.contacts(), ALL_ADULTS)
    assert p.contact_ids(google_release.members) == released_ids(
        p.contacts(), WEST_COAST, google=True
    )
    # every change is sent, nothing held (k_diff 100); opt-outs reach both lists
    assert len(external_ids(meta_release.members) - ids) >= 100
    assert len(p.contact_ids(google_release.members) - google_before) >= 100
    assert opted_out & google_before
    audience = p.remote_id("all-adults", "meta")
    added_before = rows_received(p.boxes, audience, "add")

    meta, google = p.boxes.meta, p.boxes.google
    meta.inject("ad_account_rate_limit", method="DELETE")  # 613
    meta.inject("user_rate_limit", method="POST", path=r"/users$")  # 17 / 2446079
    meta.inject("server_error", method="POST", path=r"/users$")  # HTTP 500, transient
    google.inject("concurrent_modification", method="AddOfflineUserDataJobOperations")
    google.inject("unavailable", method="RunOfflineUserDataJob")
    log_start = len(meta.request_log())

    doc = p.cli_json("sync", "all-adults", "west-coast", "--as-of", DAY)
    assert [(r["segment"], r["status"]) for r in doc["results"]] == [
        ("all-adults", "ok"),
        ("west-coast", "ok"),
    ]
    assert meta.pending_faults() == 0 and google.pending_faults() == 0
    failed = [
        (r.method, r.error_code, r.status)
        for r in meta.request_log()[log_start:]
        if r.status >= 400
    ]
    assert sorted(failed, key=str) == sorted(
        [("DELETE", 613, 400), ("POST", 17, 400), ("POST", 2, 500)], key=str
    )
    assert meta.members(audience) == meta_rows(meta_release.members)
    assert (
        rows_received(p.boxes, audience, "add")
        == added_before + sync_row(p, doc["results"][0])["adds"]
    )
    user_list = p.remote_id("west-coast", "google_ads")
    assert google.members(user_list) == google_people(google_release.members)
    assert google.call_count("AddOfflineUserDataJobOperations", "ABORTED") == 1
    assert google.call_count("RunOfflineUserDataJob", "UNAVAILABLE") == 1


@pytest.mark.parametrize("failing", ["meta", "google_ads"])
def test_terminal_fault_fails_one_destination_and_the_others_sync(
    make_project: Any, failing: str
) -> None:
    # 8,000 rows: 120 people fifty or over on the West coast can join both lists
    p = make_project(rows=8000, segments=("older-adults", "west-coast"))
    assert p.cli_json("sync", "--all", "--as-of", DAY)["exit_code"] == 0
    meta_v1 = p.release("older-adults", "meta")
    google_v1 = p.release("west-coast", "google_ads")
    # changes on both sides: removals (sent first) and additions
    meta_ids = external_ids(meta_v1.members)
    google_ids = p.contact_ids(google_v1.members)
    opted_out = pick(meta_ids - google_ids, 110, seed=10) | pick(
        google_ids - meta_ids, 100, seed=11
    )
    google_may = (pl.col("ad_user_data_consent") != "denied").fill_null(True)  # Google takes
    both = OLDER_ADULTS & WEST_COAST & google_may
    joiners = pick(outsiders(p, meta_ids | google_ids, both), 120, seed=12)
    update_contacts(p, opted_out, marketing_opt_in=False)
    update_contacts(p, joiners, marketing_opt_in=True)
    meta_v2 = p.release("older-adults", "meta")
    google_v2 = p.release("west-coast", "google_ads")
    # the model: opt-outs leave with the records sharing their email or phone; joiners join
    # both (and may free records their missing opt-in held out)
    meta_new = released_ids(p.contacts(), OLDER_ADULTS)
    google_new = released_ids(p.contacts(), WEST_COAST, google=True)
    assert (external_ids(meta_v2.members), p.contact_ids(google_v2.members)) == (
        meta_new,
        google_new,
    )
    meta_out, google_out = meta_ids - meta_new, google_ids - google_new
    meta_in, google_in = meta_new - meta_ids, google_new - google_ids
    assert len(meta_out) >= 110 and len(google_out) >= 100
    assert len(meta_in) >= 100 and len(google_in) >= 100  # not held (k_diff 100)
    audience = p.remote_id("older-adults", "meta")
    user_list = p.remote_id("west-coast", "google_ads")

    if failing == "meta":
        p.boxes.meta.inject("token_expired", method="POST", path=r"/users$")  # 190
        variable, segment, other = "META_ACCESS_TOKEN", "older-adults", "west-coast"
    else:
        p.boxes.google.inject("auth", method="CreateOfflineUserDataJob")
        variable, segment, other = "GOOGLE_ADS_ACCESS_TOKEN", "west-coast", "older-adults"

    doc = p.cli_json("sync", "--all", "--as-of", DAY, expect=1)
    by_segment = {r["segment"]: r for r in doc["results"]}
    bad, good = by_segment[segment], by_segment[other]
    assert (bad["status"], good["status"]) == ("failed", "ok")
    assert variable in bad["error"] and "\n" not in bad["error"]
    assert not any(token in bad["error"] for token in p.tokens.values())
    # the removals confirmed before the failure are kept; nothing of the failed part is
    confirmed_meta = p.confirmed("older-adults", "meta")
    confirmed_google = p.confirmed("west-coast", "google_ads")
    assert p.boxes.meta.members(audience) == meta_rows(confirmed_meta)
    assert p.boxes.google.members(user_list) == google_people(confirmed_google)
    if failing == "meta":
        # a failed sync records no figures; the confirmed snapshot below is exact
        assert (bad["removes"], bad["adds"]) == (coarse(len(meta_out)), coarse(0))
        assert external_ids(confirmed_meta) == meta_ids - meta_out
        assert google_people(confirmed_google) == google_people(google_v2.members)
    else:  # the removal job is the first to fail: nothing changed on the list
        assert (bad["removes"], bad["adds"]) == (coarse(0), coarse(0))
        assert p.contact_ids(confirmed_google) == google_ids
        assert meta_rows(confirmed_meta) == meta_rows(meta_v2.members)

    # the next run (credentials fixed) finishes the failed part only
    doc = p.cli_json("sync", "--all", "--as-of", DAY)
    by_segment = {r["segment"]: r for r in doc["results"]}
    exact = {name: sync_row(p, r) for name, r in by_segment.items()}
    assert (exact[other]["adds"], exact[other]["removes"]) == (0, 0)
    assert exact[segment]["removes"] == (0 if failing == "meta" else len(google_out))
    assert exact[segment]["adds"] == len(meta_in if failing == "meta" else google_in)
    assert by_segment[segment]["adds"] == coarse(exact[segment]["adds"])
    assert p.boxes.meta.members(audience) == meta_rows(meta_v2.members)
    assert p.boxes.google.members(user_list) == google_people(google_v2.members)


# ------------------------------------------------------------------------------ 5. bad row
def corrupting_one_row(column: str, corrupted: list[int]) -> Any:
    """A connector factory whose first add batch carries one malformed hash: in the first
    row with a value in ``column``; that row's member_key is appended to ``corrupted``.

    The row is corrupted below the release guard (``_send``, after the sealed batch was
    checked), as a platform would see a bad hash; an edited batch is refused
    (tests/test_connector_guards.py)."""

    def factory(config: Any, name: str) -> Any:
        connector = make_connector(config, name)
        real_send = connector._send

        def send(batch: Outgoing) -> Any:
            rows = batch.rows
            if batch.op == "add" and not corrupted:
                target = rows.get_column(column).is_not_null().arg_max()
                assert target is not None and rows.get_column(column)[target] is not None
                corrupted.append(rows.get_column("member_key")[target])
                hit = pl.int_range(pl.len()) == target
                rows = rows.with_columns(
                    pl.when(hit)
                    .then(pl.lit("not-a-sha256"))
                    .otherwise(pl.col(column))
                    .alias(column)
                )
            return real_send(dataclasses.replace(batch, rows=rows))

        connector._send = send
        return connector

    return factory


@pytest.mark.parametrize(
    ("segment", "destination", "column"),
    [("all-adults", "meta", "EMAIL"), ("west-coast", "google_ads", "hashed_email")],
)
def test_one_bad_row_is_rejected_without_failing_its_batch(
    make_project: Any, segment: str, destination: str, column: str
) -> None:
    p = make_project(rows=3000, segments=(segment,))
    release = p.release(segment, destination)
    n = release.members.height
    corrupted: list[int] = []
    factory = corrupting_one_row(column, corrupted)
    report = sync(p.config(), [segment], as_of=AS_OF, connector_factory=factory)
    doc = json.loads(json.dumps(report.to_dict()))
    r = only_result(doc)
    assert (r["status"], r["sent"], r["invalid"], r["batches"]) == ("ok", n, 1, 1)
    assert r["match_rate"] == round((n - 1) / n, 4) < 1
    assert len(corrupted) == 1
    rest = release.members.filter(pl.col("member_key") != corrupted[0])
    assert rest.height == n - 1
    if destination == "meta":
        assert p.boxes.meta.members(r["audience"]) == meta_rows(rest)
    else:
        assert p.boxes.google.members(r["audience"]) == google_people(rest)


# ------------------------------------------------------------------------------ 6. secrets
def test_no_token_in_logs_output_state_or_audit_export(
    make_project: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "facebook_business", "connectors", "audiences", "grpc", "google"):
        caplog.set_level(logging.DEBUG, logger=name)
    p = make_project(rows=3000, segments=("all-adults", "west-coast"))
    log_json = tmp_path / "sync-log.jsonl"
    outputs = []
    # a clean sync, one with retried faults, one with terminal auth failures on both
    p.boxes.meta.inject("server_error", method="POST", path=r"/users$")
    p.boxes.google.inject("unavailable", method="AddOfflineUserDataJobOperations")
    args = ("--debug", "sync", "--all", "--as-of", DAY, "--log-json", str(log_json))
    outputs.append(p.cli(*args, "--json"))
    opted_out = pick(external_ids(p.release("all-adults", "meta").members), 120, seed=13)
    update_contacts(p, opted_out, marketing_opt_in=False)
    p.boxes.meta.inject("token_expired", method="DELETE")
    p.boxes.google.inject("auth")
    outputs.append(p.cli(*args))
    assert [o.exit_code for o in outputs] == [0, 1]
    export = tmp_path / "audit.jsonl"
    assert p.cli("audit", "export", "--out", str(export)).exit_code == 0

    texts = {"log records": caplog.text}
    texts["log args"] = " ".join(repr(r.args) for r in caplog.records)
    for i, out in enumerate(outputs):
        texts[f"stdout {i}"], texts[f"stderr {i}"] = out.stdout, out.stderr
    files = [log_json, export, *(f for f in p.root.rglob("*") if f.is_file())]
    assert any("retrying" in r.getMessage() for r in caplog.records)  # the faults happened
    assert "META_ACCESS_TOKEN" in outputs[1].stdout
    for token in p.tokens.values():
        for where, text in texts.items():
            assert token not in text, where
        for f in files:
            assert token.encode() not in f.read_bytes(), f


def test_changed_identifiers_are_replaced_not_held() -> None:
    # A member who changed email stays a member: the old row is removed and the new one
    # added (a later removal must reach what the platform has), even under holds.
    from audiences.pipeline.sync import diff

    confirmed = pl.DataFrame(
        {"member_key": [1, 2, 3], "EMAIL": ["a", "b", "c"], "PHONE": ["p", None, "r"]},
        schema_overrides={"member_key": pl.UInt64},
    )
    release = pl.DataFrame(
        {"member_key": [1, 2, 3, 4], "EMAIL": ["a", "b2", "c", "d"], "PHONE": ["p", "q", "r", "s"]},
        schema_overrides={"member_key": pl.UInt64},
    )
    adds, removes, held_adds, held_removes, forced = diff(
        release, confirmed, hold_k=100, forced_keys=None
    )
    # the pure add (key 4) is held below k_diff; the identifier change (key 2) is not
    assert (held_adds, held_removes, forced) == (1, 0, 0)
    assert adds.rows() == [(2, "b2", "q")]
    assert removes.rows() == [(2, "b", None)]


def test_full_refresh_holds_small_changes_like_an_incremental_sync(make_project: Any) -> None:
    """A full refresh is no way around difference protection: a change a normal sync holds
    (3 people leave the segment, 3 join; k_diff 10) stays held, and the result says so."""
    p = make_project(rows=2000, segments=("all-adults",), pack="nightly-pack")
    first = p.release("all-adults", "meta")
    (r1,) = sync(p.config(), ["all-adults"], as_of=AS_OF).results
    ids = external_ids(first.members)
    movers = pick(ids, 3, seed=21)
    joiners = pick(eligible_outsiders(p, ids, ("en", "es")), 3, seed=22)
    update_contacts(p, movers, preferred_language="fr")
    update_contacts(p, joiners, marketing_opt_in=True)
    before = p.boxes.meta.members(r1.audience)
    (r2,) = sync(p.config(), ["all-adults"], as_of=AS_OF, full_refresh=True).results
    assert r2.status == "ok", r2.error
    assert (r2.adds, r2.removes) == (0, 0)
    assert r2.held_adds >= 3 and r2.held_removes == 3
    assert p.boxes.meta.members(r1.audience) == before  # nothing of the small change went out
