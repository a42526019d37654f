"""System tests of cron-safe operation: approvals, `sync --all` exit codes, the project
lock between real processes, status/history, the audit log, and a month of nightly syncs
with difference-protection holds — all against the sandboxes on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from conftest import (
    AS_OF,
    STATE,
    adults,
    audiences_command,
    coarse,
    consented,
    external_ids,
    frozen_clock,
    google_people,
    meta_rows,
    released_ids,
    sync_row,
    trust,
)

from connectors.sandbox.meta_server import Fault

DAY = AS_OF.isoformat()


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


def results_by_segment(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["segment"]: r for r in doc["results"]}


# ------------------------------------------------------------------------------ approvals
def test_approvals_gate_every_sync(make_project: Any, tmp_path: Path) -> None:
    p = make_project(rows=3000, approve=False)
    p.edit_toml(lambda t: t.replace("[approvers]", "[approvers]\nrequire_approval = true"))
    p.add_segment("all-adults", approve=False)

    # never approved (and no approver key configured): blocked, nothing leaves
    r = p.cli("sync", "all-adults", "--as-of", DAY, "--json")
    assert r.exit_code == 3
    (blocked,) = json.loads(r.stdout)["results"]
    assert blocked["status"] == "blocked" and "approv" in blocked["error"]
    assert p.query("SELECT count(*) FROM audiences_remote") == [(0,)]

    # a compliance officer makes a key outside the project and lists the public half
    keys = tmp_path / "officer"
    keys.mkdir()
    doc = p.cli_json("keygen", "--private", str(keys / "dana.key"), "--name", "dana")
    assert doc["toml"] == f'"dana" = "{doc["public_base64"]}"'
    assert (keys / "dana.key").stat().st_mode & 0o077 == 0
    p.edit_toml(lambda t: trust(t, "dana", doc["public_base64"]))
    r = p.cli("sync", "all-adults", "--as-of", DAY, "--json")
    assert r.exit_code == 3 and "not approved" in json.loads(r.stdout)["results"][0]["error"]
    # the blocked build still leaves a compliance report saying why (no candidates read)
    build_id = p.query("SELECT build_id FROM builds ORDER BY started_at DESC LIMIT 1")[0][0]
    md = p.cli("report", build_id, "--format", "md")
    assert md.exit_code == 0, md.stderr
    assert "BLOCKED" in md.stdout and "not approved" in md.stdout
    assert "FAIL · Compliance approval (rule approval" in md.stdout
    assert "audiences approve all-adults --by NAME --key PATH" in md.stdout
    report = json.loads(p.cli("report", build_id, "--format", "json").stdout)
    assert report["figures"]["candidates"] == 0 and report["releases"] == []

    # a key that is not listed approves nothing, under any name
    other = p.cli_json("keygen", "--private", str(keys / "mallory.key"), "--name", "mallory")
    assert other["public_base64"] != doc["public_base64"]
    for by in ("mallory", "dana"):
        refused = p.cli("approve", "all-adults", "--by", by, "--key", str(keys / "mallory.key"))
        assert refused.exit_code != 0, by
        assert refused.stderr.startswith("Error: ") and refused.stderr.count("\n") == 1
    assert p.query("SELECT count(*) FROM approvals") == [(0,)]

    # approved with the listed key: the sync runs
    approved = p.cli("approve", "all-adults", "--by", "dana", "--key", str(keys / "dana.key"))
    assert approved.exit_code == 0, approved.stderr
    release = p.release("all-adults", "meta")
    doc = p.cli_json("sync", "all-adults", "--as-of", DAY)
    (ok,) = doc["results"]
    assert (ok["status"], ok["adds"]) == ("ok", coarse(release.members.height))
    assert sync_row(p, ok)["adds"] == release.members.height
    audience = ok["audience"]
    assert p.boxes.meta.members(audience) == meta_rows(release.members)

    # revoked: the named sync is blocked; cron too, since the audience is still live (its
    # forced removals are sent: none here, nobody's consent changed), and says so (exit 3)
    assert p.cli("revoke", "all-adults", "--by", "dana").exit_code == 0
    r = p.cli("sync", "all-adults", "--as-of", DAY, "--json")
    assert r.exit_code == 3 and "revoked" in json.loads(r.stdout)["results"][0]["error"]
    (blocked,) = p.cli_json("sync", "--all", "--as-of", DAY, expect=3)["results"]
    assert blocked["status"] == "blocked" and "revoked" in blocked["error"]
    assert p.boxes.meta.members(audience) == meta_rows(release.members)


def test_edited_segment_is_refused_with_a_diff_and_cron_goes_on(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults", "west-coast"))
    doc = p.cli_json("sync", "--all", "--as-of", DAY)
    audience = results_by_segment(doc)["all-adults"]["audience"]
    release = p.release("all-adults", "meta")

    segment = p.root / "segments" / "all-adults.yaml"
    segment.write_text(segment.read_text().replace("gte: 18", "gte: 21"))
    log_before = len(p.boxes.meta.request_log())
    doc = p.cli_json("sync", "--all", "--as-of", DAY, expect=3)
    by = results_by_segment(doc)
    stale = by["all-adults"]
    assert (stale["status"], by["west-coast"]["status"]) == ("blocked", "ok")
    assert re.search(r"^\s*-.*\b18\b", stale["error"], re.M), stale["error"]
    assert re.search(r"^\s*\+.*\b21\b", stale["error"], re.M), stale["error"]
    assert len(p.boxes.meta.request_log()) == log_before
    assert p.boxes.meta.members(audience) == meta_rows(release.members)
    named = p.cli("sync", "all-adults", "--as-of", DAY)
    assert named.exit_code == 3 and "21" in named.stdout


# ------------------------------------------------------------------------------ sync --all
def test_sync_all_exit_codes(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("older-adults", "young-adults", "west-coast"))
    p.add_segment("all-adults", approve=False)  # never approved: skipped by cron, not synced

    # 1: one destination fails (Meta token expired on the first upload), the others sync
    p.boxes.meta.inject("token_expired", method="POST", path=r"/users$")
    doc = p.cli_json("sync", "--all", "--as-of", DAY, expect=1)
    by = results_by_segment(doc)
    assert sorted(r["status"] for r in doc["results"]) == ["failed", "ok", "ok", "skipped"]
    assert by["all-adults"]["status"] == "skipped" and by["west-coast"]["status"] == "ok"
    assert doc["exit_code"] == 1

    # 3: a segment the policy gate blocks (too small for min-size); the others sync, and
    # the one that failed catches up
    p.add_segment("small-group")
    doc = p.cli_json("sync", "--all", "--as-of", DAY, expect=3)
    assert {s: r["status"] for s, r in results_by_segment(doc).items()} == {
        "older-adults": "ok",
        "young-adults": "ok",
        "west-coast": "ok",
        "all-adults": "skipped",
        "small-group": "blocked",
    }
    assert "min" in results_by_segment(doc)["small-group"]["error"]
    assert p.query("SELECT count(*) FROM audiences_remote WHERE segment = 'small-group'") == [(0,)]

    # 1 outranks 3: a failure (Google rejects the token on the removal job) and a block
    west = p.contact_ids(p.release("west-coast", "google_ads").members)
    opted_out = sorted(west)[:20]  # they leave with the records sharing their email or phone
    p.write_contacts(
        p.contacts().with_columns(
            pl.when(pl.col("contact_id").is_in(opted_out))
            .then(False)
            .otherwise(pl.col("marketing_opt_in"))
            .alias("marketing_opt_in")
        )
    )
    p.boxes.google.inject("auth")
    doc = p.cli_json("sync", "--all", "--as-of", DAY, expect=1)
    by = results_by_segment(doc)
    assert (by["small-group"]["status"], by["west-coast"]["status"]) == ("blocked", "failed")
    assert "GOOGLE_ADS_ACCESS_TOKEN" in by["west-coast"]["error"]

    # 0: everything synced; the unapproved segment is still only listed as skipped
    (p.root / "segments" / "small-group.yaml").unlink()
    doc = p.cli_json("sync", "--all", "--as-of", DAY)
    by = results_by_segment(doc)
    assert [by[s]["status"] for s in ("older-adults", "young-adults", "west-coast")] == ["ok"] * 3
    west_coast = adults(AS_OF) & STATE.is_in(["CA", "OR", "WA", "NV", "AZ"])
    removed = len(west - released_ids(p.contacts(), west_coast, google=True))
    assert sync_row(p, by["west-coast"])["removes"] == removed >= 20
    assert by["west-coast"]["removes"] == coarse(removed)
    for segment in ("older-adults", "young-adults"):
        audience = p.remote_id(segment, "meta")
        assert p.boxes.meta.members(audience) == meta_rows(p.release(segment, "meta").members)
    user_list = p.remote_id("west-coast", "google_ads")
    assert p.boxes.google.members(user_list) == google_people(
        p.release("west-coast", "google_ads").members
    )


def test_two_concurrent_cron_runs_one_exits_75_naming_the_holder(
    make_project: Any, private_ledger: Path
) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    p.boxes.meta.inject(Fault(delay_s=3.0), method="POST", path=r"/users$")
    command = [*audiences_command(private_ledger), "-p", str(p.root), "sync", "--all"]
    procs = [
        subprocess.Popen(
            [*command, "--json"],  # the real clock: a release takes no other day
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for _ in range(2)
    ]
    outs = [proc.communicate(timeout=120) for proc in procs]
    codes = sorted(proc.returncode for proc in procs)
    assert codes == [0, 75], outs
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    stderr = outs[loser][1]
    assert stderr.count("\n") == 1 and "another run holds the project lock" in stderr
    assert f"pid {procs[winner].pid}" in stderr and "sync --all" in stderr
    # --json: the refusal is one document on stdout too (cron mails stdout)
    refusal = json.loads(outs[loser][0])
    assert refusal["ok"] is False and refusal["error"]["exit_code"] == 75
    (result,) = json.loads(outs[winner][0])["results"]
    assert result["status"] == "ok"
    # one run synced; the lock is free again afterwards
    assert p.query("SELECT status, count(*) FROM syncs GROUP BY status") == [("ok", 1)]
    assert p.cli_json("sync", "--all", "--as-of", DAY)["exit_code"] == 0


# ------------------------------------------------------------------------------ records
def test_status_history_and_audit_log(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("older-adults", "west-coast"))
    first = p.cli_json("sync", "--all", "--as-of", DAY)
    opted_out = sorted(external_ids(p.release("older-adults", "meta").members))[:120]
    frame = p.contacts()
    p.write_contacts(
        frame.with_columns(
            pl.when(pl.col("contact_id").is_in(opted_out))
            .then(False)
            .otherwise(pl.col("marketing_opt_in"))
            .alias("marketing_opt_in")
        )
    )
    second = p.cli_json("sync", "--all", "--as-of", DAY)
    assert first["exit_code"] == second["exit_code"] == 0

    status = {(r["segment"], r["destination"]): r for r in p.cli_json("status")["status"]}
    assert set(status) == {("older-adults", "meta"), ("west-coast", "google_ads")}
    meta_row = status[("older-adults", "meta")]
    assert (meta_row["sync_status"], meta_row["build_status"]) == ("ok", "released")
    assert meta_row["members"] == coarse(p.confirmed("older-adults", "meta").height)
    exact = sync_row(p, results_by_segment(second)["older-adults"])
    assert exact["members"] == p.confirmed("older-adults", "meta").height
    assert meta_row["removes"] == coarse(exact["removes"]) and exact["removes"] > 0
    history = p.cli_json("history", "older-adults")
    assert [s["status"] for s in history["syncs"]] == ["ok", "ok"]
    assert [s["sync_id"] for s in history["syncs"]] == [
        results_by_segment(d)["older-adults"]["sync_id"] for d in (second, first)
    ]
    assert [b["status"] for b in history["builds"]] == ["released", "released"]
    text = p.cli("status")
    assert text.exit_code == 0 and "older-adults" in text.stdout

    # the audit log verifies, also against the head a sync summary printed
    head = second["audit_head"]
    assert p.cli("audit", "verify").exit_code == 0
    verified = p.cli_json("audit", "verify", "--anchor", f"{head['seq']}:{head['hash']}")
    assert verified["ok"] and verified["anchors"] == 1
    assert verified["head"] == head
    forged = f"{head['seq']}:{'0' * 64}"
    assert p.cli("audit", "verify", "--anchor", forged).exit_code == 1

    # an edited entry is found, by number
    ((seq,),) = p.query("SELECT min(seq) FROM audit WHERE kind = 'sync_batch'")
    conn = sqlite3.connect(p.state_db)
    with conn:
        conn.execute(
            "UPDATE audit SET details = replace(details, '\"size\"', '\"SIZE\"') WHERE seq = ?",
            (seq,),
        )
    conn.close()
    broken = p.cli("audit", "verify", "--json")
    assert broken.exit_code == 1
    assert json.loads(broken.stdout)["first_bad_seq"] == seq
    text = p.cli("audit", "verify")
    assert text.exit_code == 1 and f"entry {seq}" in text.stderr


# ------------------------------------------------------------------------------ a month
K_DIFF = 10  # tests/cases/sync/nightly-pack.yaml


def test_a_month_of_nightly_syncs_with_holds(make_project: Any) -> None:
    """30 nights, a few people joining and leaving each day; small changes are held until
    they add up to k_diff, opt-outs leave at once; the platform always equals the
    confirmed snapshot, and that equals the model of what should have been sent."""
    p = make_project(rows=2000, segments=("all-adults",), pack="nightly-pack")
    rng = np.random.default_rng(2025)
    keyed = p.keyed_contacts().select("contact_id", "member_key")
    key_of = dict(zip(keyed["contact_id"], keyed["member_key"], strict=True))
    audience: str | None = None
    pushed: set[str] = set()  # contact ids the model says Meta has
    held_nights = released_after_hold = opt_out_nights = 0
    pending_adds = 0

    for night in range(1, 31):
        day = AS_OF + timedelta(days=night)
        segment = adults(day) & pl.col("preferred_language").is_in(["en", "es"])
        contacts = p.contacts()
        members = released_ids(contacts, segment)
        if night > 1:  # the day's drift: a few join, a few leave, sometimes one opts out
            outsiders = sorted(
                set(
                    contacts.filter(
                        segment
                        & ~pl.col("marketing_opt_in")
                        & ~pl.col("do_not_contact")
                        & ~pl.col("deceased")
                        & (pl.col("ad_personalization_consent") != "denied").fill_null(True)
                    )["contact_id"]
                )
            )
            joiners = set(rng.choice(outsiders, int(rng.integers(0, 5)), replace=False))
            stay = sorted(members & pushed)
            leavers = set(rng.choice(stay, int(rng.integers(0, 4)), replace=False))
            opt_outs = set(rng.choice(sorted(set(stay) - leavers), 1)) if night % 5 == 0 else set()
            contacts = contacts.with_columns(
                pl.when(pl.col("contact_id").is_in(list(joiners)))
                .then(True)
                .when(pl.col("contact_id").is_in(list(opt_outs)))
                .then(False)
                .otherwise(pl.col("marketing_opt_in"))
                .alias("marketing_opt_in"),
                pl.when(pl.col("contact_id").is_in(list(leavers)))
                .then(pl.lit("fr"))
                .otherwise(pl.col("preferred_language"))
                .alias("preferred_language"),
            )
            p.write_contacts(contacts)
            # the model: the consent rule over the day's data (an opt-out takes the records
            # sharing its email or phone along; a joiner may free records it held out)
            members = released_ids(contacts, segment)
            assert not (opt_outs | leavers) & members, night
        else:
            opt_outs = set()
        # in the segment but held out by consent: removed at once, never held
        judged = contacts.with_columns(consented(contacts))
        held_out = set(judged.filter(segment & ~pl.col("consented"))["contact_id"])

        with frozen_clock(day):
            doc = p.cli_json("sync", "--all", "--as-of", day.isoformat())
        (r,) = doc["results"]
        assert r["status"] == "ok", (night, r)
        audience = audience or r["audience"]

        # the model: adds and optional removals wait until each reaches k_diff
        adds = members - pushed
        forced = pushed & held_out
        optional = pushed - members - forced
        sent_adds = adds if len(adds) >= K_DIFF else set()
        sent_removes = forced | (optional if len(optional) >= K_DIFF else set())
        pushed = (pushed - sent_removes) | sent_adds
        exact = sync_row(p, r)
        held = (len(adds - sent_adds), len(optional - sent_removes))
        assert (exact["adds"], exact["removes"]) == (len(sent_adds), len(sent_removes)), night
        assert exact["holds"] == sum(held), night
        assert (r["adds"], r["removes"]) == (coarse(len(sent_adds)), coarse(len(sent_removes)))
        assert (r["held_adds"], r["held_removes"]) == (coarse(held[0]), coarse(held[1])), night

        # the platform equals the confirmed snapshot, which equals the model
        confirmed = p.confirmed("all-adults", "meta")
        assert p.boxes.meta.members(audience) == meta_rows(confirmed), night
        assert external_ids(confirmed) == pushed, night
        assert not held_out & external_ids(confirmed), night  # opt-outs never wait
        assert {key_of[c] for c in pushed} == set(confirmed["member_key"]), night

        held_nights += bool(exact["holds"])
        if night > 1 and sent_adds and pending_adds:
            released_after_hold += 1
        pending_adds = len(adds - sent_adds)
        opt_out_nights += bool(forced)

    # the month exercised what it claims to
    assert held_nights >= 10 and released_after_hold >= 2 and opt_out_nights >= 4
