"""Issue #16: removals are never blocked; the file destination is a destination; review
before approval. Real CLI, real SDKs, the project's sandboxes on 127.0.0.1."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
from conftest import AS_OF, Project, google_people, meta_rows, released_ids

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


def first_sync(p: Project) -> set[str]:
    write_segment(p, BOTH)
    p.approve("grown-ups")
    first = synced(p)
    assert {r["status"] for r in first.values()} == {"ok"}
    on_platforms(p)
    members = p.contact_ids(p.confirmed("grown-ups", "meta"))
    assert members == p.contact_ids(p.confirmed("grown-ups", "google_ads"))
    return members


# ----------------------------------------------------------------------- 1. removals
def test_opt_outs_reach_both_platforms_while_an_unapproved_edit_blocks_adds(
    make_project: Any,
) -> None:
    p = make_project(rows=4000)
    members = first_sync(p)
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
    for dest in ("meta", "google_ads"):
        r = by_dest[dest]
        assert r["status"] == "blocked" and r["adds"] == 0
        assert r["forced_removes"] == r["removes"] == len(members - must_stay) >= 170
        assert "still live" in r["error"] and "approval" in r["error"]
        assert f"{r['forced_removes']:,} people" in r["error"]
        left = p.contact_ids(p.confirmed("grown-ups", dest))
        assert left == must_stay
        assert not left & (leavers | dnc)
        assert not (left - members) & joiners  # nobody was added
    on_platforms(p)
    # a rerun finds nothing more to remove and still exits 3
    again = p.cli_json("sync", "grown-ups", "--as-of", DAY, expect=3)["results"]
    assert {r["forced_removes"] for r in again} == {0}
    on_platforms(p)


def test_revoked_approval_still_removes_consent_withdrawals(make_project: Any) -> None:
    p = make_project(rows=3000)
    members = first_sync(p)
    revoked_auth = pick(members, 30, seed=8)
    denied = pick(members - revoked_auth, 30, seed=9)
    dead = pick(members - revoked_auth - denied, 5, seed=10)
    update(p, denied, ad_personalization_consent="denied")
    update(p, dead, deceased=True)
    update(p, revoked_auth, marketing_opt_in=False)
    assert p.cli("revoke", "grown-ups", "--by", "qa.officer").exit_code == 0
    results = p.cli_json("sync", "grown-ups", "--as-of", DAY, expect=3)["results"]
    must_stay = released_ids(p.contacts(), pl.col("contact_id").is_in(list(members)))
    for r in results:
        assert r["status"] == "blocked" and "revoked" in r["error"]
        assert r["forced_removes"] == len(members - must_stay) >= 65
        assert p.contact_ids(p.confirmed("grown-ups", r["destination"])) == must_stay
    on_platforms(p)
    # the audit log names the forced removals of the blocked sync
    rows = p.query("SELECT details FROM audit WHERE kind='sync_blocked'")
    assert sum(json.loads(d)["forced_removes"] for (d,) in rows) == 2 * len(members - must_stay)
