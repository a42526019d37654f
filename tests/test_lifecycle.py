"""Issue #16: removals are never blocked; the file destination is a destination; review
before approval. Real CLI, real SDKs, the project's sandboxes on 127.0.0.1."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import (
    AS_OF,
    Project,
    adults,
    coarse,
    frozen_clock,
    google_people,
    meta_rows,
    released_ids,
    sync_row,
)


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


DAY = AS_OF.isoformat()
BOTH = """name: grown-ups
description: Grown-ups who read English
destinations: [meta, google_ads]
where:
  all:
    - age: {gte: 18}
    - preferred_language: {in: [en]}
"""
IN_SEGMENT = (pl.col("preferred_language") == "en") & pl.col("birth_date").is_not_null()


def write_segment(p: Project, text: str, name: str = "grown-ups") -> None:
    (p.root / "segments" / f"{name}.yaml").write_text(text, encoding="utf-8")


def update(p: Project, ids: set[str], **values: Any) -> None:
    frame = p.contacts()
    hit = pl.col("contact_id").is_in(list(ids))
    p.write_contacts(
        frame.with_columns(
            [pl.when(hit).then(pl.lit(v)).otherwise(pl.col(c)).alias(c) for c, v in values.items()]
        )
    )


def pick(ids: set[str], n: int, seed: int) -> set[str]:
    return set(pl.Series(sorted(ids)).sample(n, seed=seed, shuffle=True).to_list())


def synced(p: Project, segment: str = "grown-ups") -> dict[str, dict[str, Any]]:
    doc = p.cli_json("sync", segment, "--as-of", DAY)
    return {r["destination"]: r for r in doc["results"]}


def on_platforms(p: Project, segment: str = "grown-ups") -> None:
    """Both sandboxes hold exactly the confirmed snapshots, person by person."""
    meta = p.confirmed(segment, "meta")
    google = p.confirmed(segment, "google_ads")
    assert p.boxes.meta.members(p.remote_id(segment, "meta")) == meta_rows(meta)
    assert p.boxes.google.members(p.remote_id(segment, "google_ads")) == google_people(google)


def forced_removes(p: Project, result: dict[str, Any]) -> int:
    """The exact forced removals of a CLI sync result (the CLI shows them coarse), from the
    audit entry of the blocked sync."""
    (details,) = [
        d
        for (d,) in p.query("SELECT details FROM audit WHERE kind='sync_blocked'")
        if json.loads(d)["sync_id"] == result["sync_id"]
    ]
    return int(json.loads(details).get("forced_removes", 0))


def first_sync(p: Project) -> tuple[set[str], set[str]]:
    """The contact ids on the Meta list and on the Google list after the first sync: the
    same people but those whose ad_user_data consent is denied (Google takes none)."""
    write_segment(p, BOTH)
    p.approve("grown-ups")
    first = synced(p)
    assert {r["status"] for r in first.values()} == {"ok"}
    on_platforms(p)
    members = p.contact_ids(p.confirmed("grown-ups", "meta"))
    google = p.contact_ids(p.confirmed("grown-ups", "google_ads"))
    segment = adults(AS_OF) & (pl.col("preferred_language") == "en")
    assert members == released_ids(p.contacts(), segment)
    assert google == released_ids(p.contacts(), segment, google=True)
    assert google < members
    return members, google


def on_list(members: set[str], google: set[str], dest: str) -> set[str]:
    return members if dest == "meta" else google


# ----------------------------------------------------------------------- 1. removals
def test_opt_outs_reach_both_platforms_while_an_unapproved_edit_blocks_adds(
    make_project: Any,
) -> None:
    p = make_project(rows=4000)
    members, google = first_sync(p)
    leavers = pick(members, 150, seed=5)
    dnc = pick(members - leavers, 20, seed=6)
    update(p, leavers, marketing_opt_in=False)
    update(p, dnc, do_not_contact=True)
    joiners = set(
        p.contacts().filter(IN_SEGMENT & pl.col("marketing_opt_in")).get_column("contact_id")
    )
    # the segment is edited: unapproved, so nothing may be added
    write_segment(p, BOTH.replace("gte: 18", "gte: 21"))
    results = p.cli_json("sync", "grown-ups", "--as-of", DAY, expect=3)["results"]
    by_dest = {r["destination"]: r for r in results}
    must_stay = released_ids(p.contacts(), pl.col("contact_id").is_in(list(members)))
    assert len(members - must_stay) >= 170
    for dest in ("meta", "google_ads"):
        r = by_dest[dest]
        # only removals: a Google member stays if the person stays on the Meta list
        listed = on_list(members, google, dest)
        stay = must_stay & listed
        gone = len(listed - stay)
        # the CLI shows coarse figures; the exact ones are in the state DB and the audit log
        assert r["status"] == "blocked" and r["adds"] == coarse(0)
        assert r["forced_removes"] == r["removes"] == coarse(gone)
        exact = sync_row(p, r)
        assert (exact["adds"], exact["removes"], forced_removes(p, r)) == (0, gone, gone)
        assert "still live" in r["error"] and "approval" in r["error"]
        assert "people the policy now excludes were removed" in r["error"]
        left = p.contact_ids(p.confirmed("grown-ups", dest))
        assert left == stay
        assert not left & (leavers | dnc)
        assert not (left - members) & joiners  # nobody was added
    on_platforms(p)
    # a rerun finds nothing more to remove and still exits 3
    again = p.cli_json("sync", "grown-ups", "--as-of", DAY, expect=3)["results"]
    assert {r["forced_removes"] for r in again} == {coarse(0)}
    assert {forced_removes(p, r) for r in again} == {0}
    on_platforms(p)


def test_revoked_approval_still_removes_consent_withdrawals(make_project: Any) -> None:
    p = make_project(rows=3000)
    members, google = first_sync(p)
    revoked_auth = pick(members, 30, seed=8)
    denied = pick(members - revoked_auth, 30, seed=9)
    dead = pick(members - revoked_auth - denied, 5, seed=10)
    update(p, denied, ad_personalization_consent="denied")
    update(p, dead, deceased=True)
    update(p, revoked_auth, marketing_opt_in=False)
    assert p.cli("revoke", "grown-ups", "--by", "qa.officer").exit_code == 0
    results = p.cli_json("sync", "grown-ups", "--as-of", DAY, expect=3)["results"]
    must_stay = released_ids(p.contacts(), pl.col("contact_id").is_in(list(members)))
    assert len(members - must_stay) >= 65
    for r in results:
        listed = on_list(members, google, r["destination"])
        gone = len(listed - must_stay)
        assert r["status"] == "blocked" and "revoked" in r["error"]
        assert r["forced_removes"] == coarse(gone)
        assert forced_removes(p, r) == sync_row(p, r)["removes"] == gone
        assert p.contact_ids(p.confirmed("grown-ups", r["destination"])) == must_stay & listed
    on_platforms(p)
    # the audit log names the forced removals of the blocked sync
    rows = p.query("SELECT details FROM audit WHERE kind='sync_blocked'")
    forced = len(members - must_stay) + len(google - must_stay)
    assert sum(json.loads(d)["forced_removes"] for (d,) in rows) == forced


def test_cron_removes_what_a_revoked_segment_must_lose(make_project: Any) -> None:
    """The attack: revoke, then count on the nightly `sync --all` — which skipped revoked
    segments — to leave the audience live with people whose consent is gone."""
    p = make_project(rows=3000)
    members, google = first_sync(p)
    leavers = pick(members, 40, seed=11)
    update(p, leavers, marketing_opt_in=False)
    assert p.cli("revoke", "grown-ups", "--by", "qa.officer").exit_code == 0
    doc = p.cli_json("sync", "--all", "--as-of", DAY, expect=3)
    must_stay = released_ids(p.contacts(), pl.col("contact_id").is_in(list(members)))
    assert not must_stay & leavers and len(members - must_stay) >= 40
    assert {r["destination"] for r in doc["results"]} == {"meta", "google_ads"}
    for r in doc["results"]:
        listed = on_list(members, google, r["destination"])
        assert r["status"] == "blocked" and "revoked" in r["error"]
        assert forced_removes(p, r) == len(listed - must_stay)
        assert p.contact_ids(p.confirmed("grown-ups", r["destination"])) == must_stay & listed
    on_platforms(p)
    # taken down (emptied): nothing left to remove, cron lists it as skipped and exits 0
    down = p.cli("takedown", "grown-ups", "--by", "qa.officer", "--json")
    assert down.exit_code == 0, down.stderr
    doc = p.cli_json("sync", "--all", "--as-of", DAY)
    assert {(r["status"], r["error"]) for r in doc["results"]} == {("skipped", "approval revoked")}


def test_cron_cleans_an_audience_its_segment_no_longer_names(make_project: Any) -> None:
    """The attack: take a live destination out of the segment (or delete the segment file)
    so that cron stops looking at its audience."""
    p = make_project(rows=3000)
    members, _google = first_sync(p)
    leavers = pick(members, 25, seed=12)
    update(p, leavers, marketing_opt_in=False)
    write_segment(p, BOTH.replace("[meta, google_ads]", "[file]"))  # no ad destination left
    doc = p.cli_json("sync", "--all", "--as-of", DAY, expect=3)
    by_dest = {r["destination"]: r for r in doc["results"]}
    assert set(by_dest) == {"meta", "google_ads"}
    assert {r["status"] for r in by_dest.values()} == {"blocked"}
    assert not p.contact_ids(p.confirmed("grown-ups", "google_ads")) & leavers
    assert not p.contact_ids(p.confirmed("grown-ups", "meta")) & leavers
    on_platforms(p)
    # the segment file deleted: its live audiences are reported, never skipped in silence
    (p.root / "segments" / "grown-ups.yaml").unlink()
    doc = p.cli_json("sync", "--all", "--as-of", DAY, expect=3)
    assert {r["destination"] for r in doc["results"]} == {"meta", "google_ads"}
    for r in doc["results"]:
        assert r["status"] == "blocked" and "audiences takedown grown-ups" in r["error"]


def test_cron_reports_an_audience_whose_destination_left_the_config(make_project: Any) -> None:
    """The attack: delete a live destination from audiences.toml (and from the segment),
    so that no sync can reach its audience any more."""
    p = make_project(rows=3000)
    first_sync(p)
    write_segment(p, BOTH.replace("[meta, google_ads]", "[meta]"))
    p.edit_toml(lambda t: re.sub(r"(?ms)^\[destinations\.google_ads\]\n.*?(?=^\[)", "", t))
    assert "google_ads" not in p.config().destinations
    p.approve("grown-ups")
    doc = p.cli_json("sync", "--all", "--as-of", DAY, expect=3)
    by_dest = {r["destination"]: r for r in doc["results"]}
    assert by_dest["meta"]["status"] == "ok"
    gone = by_dest["google_ads"]
    assert gone["status"] == "blocked"
    assert "no longer configures" in gone["error"]
    assert "audiences takedown grown-ups --destination google_ads" in gone["error"]


# ----------------------------------------------------------------------- 3. files
CARDIO = """name: heart-file
description: People seen in cardiology
destinations: [{dest}]
where:
  all:
    - age: {{gte: 18}}
    - service_lines: {{contains: cardiology}}
"""


def file_destination(p: Project, name: str, target: str, layouts: str) -> None:
    p.edit_toml(
        lambda t: (
            t
            + f'\n[destinations.{name}]\nkind = "file"\npath = "exports"\n'
            + f'for = "{target}"\nlayouts = {layouts}\n'
        )
    )


def test_file_only_segment_without_approval_is_blocked(make_project: Any) -> None:
    p = make_project(rows=3000)
    write_segment(p, BOTH.replace("[meta, google_ads]", "[file]"), name="grown-ups")
    doc = p.cli_json("build", "grown-ups", "--as-of", DAY, expect=3)
    (b,) = doc["builds"]
    assert b["status"] == "blocked" and b["reasons"][0].startswith("approval: ")
    assert not (p.root / "exports").exists() or not list((p.root / "exports").rglob("*.csv"))
    p.approve("grown-ups")
    (b,) = p.cli_json("build", "grown-ups", "--as-of", DAY)["builds"]
    folders = {path.parent.parent.name for path in (p.root / "exports").rglob("members.csv")}
    assert len(folders) == 1 and "grown" not in next(iter(folders))
    report = json.loads((p.root / ".audiences" / "reports" / f"{b['build_id']}.json").read_text())
    written = {w["format"]: w for w in report["files_written"]}
    assert set(written) == {"csv", "parquet"}
    assert written["csv"]["rows"] > 0 and "google_ads_hashed_email" in written["csv"]["fields"]


def test_phi_derived_file_for_google_ads_is_blocked(make_project: Any) -> None:
    p = make_project(rows=3000)
    file_destination(p, "cm-upload", "google_ads", '["google_ads"]')
    file_destination(p, "meta-upload", "meta", '["meta"]')
    write_segment(p, CARDIO.format(dest="cm-upload"), name="heart-file")
    p.approve("heart-file")
    (b,) = p.cli_json("build", "heart-file", "--as-of", DAY, expect=3)["builds"]
    assert any(r.startswith("google-health [cm-upload]") for r in b["reasons"]), b["reasons"]
    # a file "for meta" that still carries the Customer Match layout is refused too
    p.edit_toml(
        lambda t: t.replace(
            'for = "meta"\nlayouts = ["meta"]', 'for = "meta"\nlayouts = ["meta", "google_ads"]'
        )
    )
    write_segment(p, CARDIO.format(dest="meta-upload"), name="heart-file")
    p.approve("heart-file")
    (b,) = p.cli_json("build", "heart-file", "--as-of", DAY, expect=3)["builds"]
    assert any(r.startswith("google-health [meta-upload]") for r in b["reasons"]), b["reasons"]
    assert not list((p.root / "exports").rglob("*.csv")) if (p.root / "exports").exists() else True


# ----------------------------------------------------------------------- 5. review
def test_review_shows_what_would_be_released_before_approval(make_project: Any) -> None:
    p = make_project(rows=3000)
    write_segment(p, BOTH)
    # unapproved: build stops before the gate, plan exits 3 like build
    p.cli_json("plan", "grown-ups", "--as-of", DAY, expect=3)
    officer = ("--by", "qa.officer", "--key", str(p.approver.private_key))
    doc = p.cli_json("review", "grown-ups", "--as-of", DAY, *officer)
    assert doc["status"] == "reviewed" and doc["released_to"] == ["google_ads", "meta"]
    report = json.loads(Path(doc["reports"]["json"]).read_text())
    assert report["review"]["build_id"] == doc["build_id"]
    assert report["figures"]["candidates"] > report["figures"]["eligible_members"] > 0
    assert {v["id"] for v in report["verdicts"]} >= {"consent", "minors"}
    assert p.query("SELECT count(*) FROM releases")[0][0] == 0  # nothing released
    assert not list((p.root / "exports").rglob("*")) if (p.root / "exports").exists() else True
    result = p.cli(
        "approve", "grown-ups", "--by", "qa.officer", "--key", str(p.approver.private_key)
    )
    assert result.exit_code == 0 and doc["build_id"] in result.stderr
    approved = p.cli_json(
        "approve", "grown-ups", "--by", "qa.officer", "--key", str(p.approver.private_key)
    )
    assert approved["review"]["build_id"] == doc["build_id"]
    notes = [n for (n,) in p.query("SELECT note FROM approvals WHERE segment='grown-ups'")]
    assert all(doc["build_id"] in n for n in notes)
    details = [
        json.loads(d) for (d,) in p.query("SELECT details FROM audit WHERE kind='approval_review'")
    ]
    assert {d["review_build_id"] for d in details} == {doc["build_id"]}


def test_suppressed_members_are_removed_while_the_config_edit_is_unapproved(
    make_project: Any,
) -> None:
    """The finding of issue #16: 150 current members go onto the suppression list (an
    audiences.toml edit, so the segment is no longer approved as it stands); the sync is
    blocked for adds but takes all 150 off both platforms."""
    p = make_project(rows=4000)
    _, google = first_sync(p)
    with_email = p.contacts().filter(pl.col("email").is_not_null())["contact_id"]
    suppressed = pick(google & set(with_email.to_list()), 150, seed=11)
    emails = p.contacts().filter(pl.col("contact_id").is_in(list(suppressed)))["email"]
    (p.root / "data" / "suppressed.csv").write_text(
        "email\n" + "\n".join(emails.to_list()), encoding="utf-8"
    )
    p.edit_toml(
        lambda t: t.replace(
            "[policy]\n",
            '[policy]\nsuppression = [{ path = "data/suppressed.csv", column = "email", '
            'kind = "email" }]\n',
            1,
        )
    )
    results = p.cli_json("sync", "grown-ups", "--as-of", DAY, expect=3)["results"]
    for r in results:
        assert r["status"] == "blocked" and "approval" in r["error"]
        assert sync_row(p, r)["adds"] == 0 and forced_removes(p, r) >= 140
        left = p.contact_ids(p.confirmed("grown-ups", r["destination"]))
        assert not left & suppressed
    on_platforms(p)
