"""System tests of lost or damaged state (issue #17): a deleted state.db, a deleted or
garbled membership snapshot, a garbled sync journal, a lost audience record, and edits of
the sync tables behind the audit log's back. Every recovery is checked against the
sandboxes on 127.0.0.1, person by person: the platform ends up holding exactly the
people the gate releases now.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import (
    AS_OF,
    STATE,
    Project,
    adults,
    frozen_clock,
    google_people,
    meta_rows,
    released_ids,
)

from audiences.pipeline.sync import make_connector, sync

DAY = AS_OF.isoformat()
ALL_ADULTS = adults(AS_OF) & pl.col("preferred_language").is_in(["en", "es"])
# segments compare states case-insensitively (``ca`` is CA): conftest.STATE
WEST_COAST = adults(AS_OF) & STATE.is_in(["CA", "OR", "WA", "NV", "AZ"])


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


def opt_out(p: Project, n: int, seed: int) -> None:
    """``n`` released members of all-adults and west-coast withdraw their opt-in."""
    contacts = p.contacts()
    members = released_ids(contacts, ALL_ADULTS) | released_ids(contacts, WEST_COAST)
    chosen = set(pl.Series(sorted(members)).sample(n, seed=seed, shuffle=True).to_list())
    hit = pl.col("contact_id").is_in(list(chosen))
    p.write_contacts(
        contacts.with_columns(
            pl.when(hit).then(False).otherwise(pl.col("marketing_opt_in")).alias("marketing_opt_in")
        )
    )


def assert_platforms_hold_the_release(p: Project, audiences: dict[str, str]) -> None:
    """Each platform audience equals what the gate releases now, and the release is the
    model's intended set of contacts."""
    meta = p.release("all-adults", "meta")
    assert p.contact_ids(meta.members) == released_ids(p.contacts(), ALL_ADULTS)
    assert p.boxes.meta.members(audiences["all-adults"]) == meta_rows(meta.members)
    google = p.release("west-coast", "google_ads")
    assert p.contact_ids(google.members) == released_ids(p.contacts(), WEST_COAST, google=True)
    assert p.boxes.google.members(audiences["west-coast"]) == google_people(google.members)


def first_sync(p: Project) -> dict[str, str]:
    doc = p.cli_json("sync", "--all", "--as-of", DAY)
    assert {r["status"] for r in doc["results"]} == {"ok"}
    return {r["segment"]: r["audience"] for r in doc["results"]}


def delete_state_db(p: Project) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{p.state_db}{suffix}").unlink(missing_ok=True)


def test_deleted_state_db_stops_the_sync_then_adopt_replaces_in_full(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults", "west-coast"))
    audiences = first_sync(p)
    meta_before = set(p.boxes.meta.audience_ids())
    lists_before = set(p.boxes.google.user_lists)
    opt_out(p, 60, seed=3)
    delete_state_db(p)

    # cron: exit 1 with what to do, not "skipped: not approved"; nothing created or sent
    r = p.cli("sync", "--all", "--as-of", DAY)
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "internal error" not in r.stderr
    assert "audiences.manifest.json" in r.stderr and "state adopt" in r.stderr
    assert "state restore" in r.stderr
    assert p.cli("plan", "--all", "--as-of", DAY).exit_code == 1
    assert set(p.boxes.meta.audience_ids()) == meta_before
    assert set(p.boxes.google.user_lists) == lists_before

    adopted = p.cli_json("state", "adopt")["adopted"]
    assert {(a["segment"], a["audience"]) for a in adopted} == set(audiences.items())
    for segment in audiences:  # the approvals were in the lost database
        p.approve(segment)
    doc = p.cli_json("sync", "--all", "--as-of", DAY)
    for result in doc["results"]:
        assert result["status"] == "ok" and "adopt" in result["replaced"]
        assert result["audience"] == audiences[result["segment"]]
    assert set(p.boxes.meta.audience_ids()) == meta_before
    assert set(p.boxes.google.user_lists) == lists_before
    assert_platforms_hold_the_release(p, audiences)

    # the replace is done: the next run is an ordinary diff again
    opt_out(p, 20, seed=4)
    doc = p.cli_json("sync", "--all", "--as-of", DAY)
    assert [r["replaced"] for r in doc["results"]] == [None, None]
    assert_platforms_hold_the_release(p, audiences)
    assert p.cli("audit", "verify").exit_code == 0


def test_google_list_of_the_same_name_is_found_not_created_again(make_project: Any) -> None:
    """State and audience record both gone: Google's NAME_ALREADY_USED leads to the
    existing list, which is replaced in full (its members are unknown)."""
    p = make_project(rows=3000, segments=("west-coast",))
    (first,) = p.cli_json("sync", "west-coast", "--as-of", DAY)["results"]
    lists_before = set(p.boxes.google.user_lists)
    opt_out(p, 40, seed=5)
    delete_state_db(p)
    for name in ("audiences.manifest.json", "record.key"):
        (p.root / ".audiences" / name).unlink()
    p.approve("west-coast")
    (r,) = p.cli_json("sync", "west-coast", "--as-of", DAY)["results"]
    assert (r["status"], r["audience"]) == ("ok", first["audience"])
    assert "already had audience" in r["replaced"]
    assert set(p.boxes.google.user_lists) == lists_before
    google = p.release("west-coast", "google_ads")
    assert p.boxes.google.members(r["audience"]) == google_people(google.members)


def test_deleted_snapshot_is_a_full_replace(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults", "west-coast"))
    audiences = first_sync(p)
    opt_out(p, 60, seed=6)
    for segment, destination in (("all-adults", "meta"), ("west-coast", "google_ads")):
        (p.root / ".audiences" / "memberships" / segment / f"{destination}.parquet").unlink()

    plans = p.cli_json("plan", "--all", "--as-of", DAY)["plans"]
    assert all("is missing" in plan["replace"] for plan in plans)
    doc = p.cli_json("sync", "--all", "--as-of", DAY)
    for result in doc["results"]:
        assert result["status"] == "ok" and "is missing" in result["replaced"]
    assert_platforms_hold_the_release(p, audiences)
    assert [r["replaced"] for r in p.cli_json("sync", "--all", "--as-of", DAY)["results"]] == [
        None,
        None,
    ]


def test_truncated_snapshot_clear_error_then_repair(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults", "west-coast"))
    audiences = first_sync(p)
    opt_out(p, 60, seed=7)
    snapshot = p.root / ".audiences" / "memberships" / "all-adults" / "meta.parquet"
    snapshot.write_bytes(snapshot.read_bytes()[:100])

    r = p.cli("sync", "--all", "--as-of", DAY, "--json")
    assert r.exit_code == 1, r.stderr
    assert r.stdout, r.stderr
    by = {x["segment"]: x for x in json.loads(r.stdout)["results"]}
    assert by["west-coast"]["status"] == "ok"  # the other audience goes on
    error = by["all-adults"]["error"]
    assert str(snapshot) in error and "state repair" in error and "--full-refresh" in error
    assert "internal error" not in error
    plan = p.cli("plan", "all-adults", "--as-of", DAY)
    assert plan.exit_code == 1 and str(snapshot) in plan.stderr
    assert "internal error" not in plan.stderr and plan.stderr.count("\n") == 1

    repaired = p.cli_json("state", "repair")["repaired"]
    assert [(x["segment"], x["destination"]) for x in repaired] == [("all-adults", "meta")]
    assert not snapshot.exists()
    doc = p.cli_json("sync", "--all", "--as-of", DAY)
    by = {x["segment"]: x for x in doc["results"]}
    assert "unreadable" in by["all-adults"]["replaced"] and by["west-coast"]["replaced"] is None
    assert_platforms_hold_the_release(p, audiences)


def test_truncated_snapshot_then_the_full_refresh_the_error_suggests(make_project: Any) -> None:
    # The error offers two ways out: `state repair`, or `sync SEGMENT --full-refresh`.
    # The second must work as written: replace the audience without reading the broken
    # snapshot, and leave the platform holding exactly the release.
    p = make_project(rows=3000, segments=("all-adults", "west-coast"))
    audiences = first_sync(p)
    opt_out(p, 60, seed=11)
    snapshot = p.root / ".audiences" / "memberships" / "all-adults" / "meta.parquet"
    snapshot.write_bytes(snapshot.read_bytes()[:100])
    r = p.cli("sync", "all-adults", "--as-of", DAY, "--json")
    assert r.exit_code == 1 and "--full-refresh" in r.stdout + r.stderr
    assert "audiences sync all-adults --full-refresh" in r.stdout + r.stderr

    r = p.cli("sync", "all-adults", "--full-refresh", "--as-of", DAY, "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    results = json.loads(r.stdout)["results"]
    assert all(x["status"] == "ok" for x in results), results
    assert snapshot.exists()
    p.cli_json("sync", "--all", "--as-of", DAY)  # the other audience catches up too
    assert_platforms_hold_the_release(p, audiences)


def _interrupted_sync_with_garbled_journal(p: Project, segment: str, destination: str) -> Path:
    """What a run killed after its first confirmed batch leaves, with that batch's journal
    file then truncated (a disk fault)."""
    from audiences.core.state import connect, transaction, utcnow

    conn = connect(p.state_db)
    try:
        with transaction(conn):
            conn.execute(
                "INSERT INTO syncs(sync_id, segment, destination, started_at, status) "
                "VALUES ('s-dead', ?, ?, ?, 'running')",
                (segment, destination, utcnow()),
            )
            conn.execute(
                "INSERT INTO batches VALUES ('s-dead', 1, 'add', 5, 'confirmed', 5, 0, ?)",
                (utcnow(),),
            )
    finally:
        conn.close()
    journal = p.root / ".audiences" / "syncs" / "s-dead" / "000001-add.parquet"
    journal.parent.mkdir(parents=True)
    journal.write_bytes(b"PAR1 garbage")
    return journal


@pytest.mark.parametrize("recover", ["repair", "full-refresh"])
def test_garbled_journal_clear_error_then_recovery(make_project: Any, recover: str) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    (first,) = p.cli_json("sync", "all-adults", "--as-of", DAY)["results"]
    opt_out(p, 50, seed=8)
    journal = _interrupted_sync_with_garbled_journal(p, "all-adults", "meta")

    for _ in range(2):  # every run says the same, naming the file and the fix
        r = p.cli("sync", "all-adults", "--as-of", DAY, "--json")
        assert r.exit_code == 1
        (failed,) = json.loads(r.stdout)["results"]
        assert str(journal) in failed["error"] and "state repair" in failed["error"]
    if recover == "repair":
        assert p.cli_json("state", "repair")["repaired"]
        args: tuple[str, ...] = ()
    else:
        args = ("--full-refresh",)
    (r,) = p.cli_json("sync", "all-adults", "--as-of", DAY, *args)["results"]
    assert r["status"] == "ok" and r["replaced"]
    release = p.release("all-adults", "meta")
    assert p.contact_ids(release.members) == released_ids(p.contacts(), ALL_ADULTS)
    assert p.boxes.meta.members(first["audience"]) == meta_rows(release.members)
    assert p.query("SELECT status FROM syncs WHERE sync_id='s-dead'") == [("interrupted",)]


def test_edited_audience_record_is_refused(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    p.cli_json("sync", "all-adults", "--as-of", DAY)
    record = p.root / ".audiences" / "audiences.manifest.json"
    assert record.stat().st_mode & 0o077 == 0
    doc = json.loads(record.read_text())
    doc["audiences"][0]["remote_id"] = "999"
    record.write_text(json.dumps(doc))
    r = p.cli("sync", "all-adults", "--as-of", DAY)
    assert r.exit_code == 1 and str(record) in r.stderr and "signature" in r.stderr


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (
            "UPDATE batches SET size = size + 1 WHERE rowid = (SELECT max(rowid) FROM batches)",
            "edited",
        ),
        ("DELETE FROM batches WHERE rowid = (SELECT max(rowid) FROM batches)", "deleted"),
        (
            "INSERT INTO batches SELECT sync_id, seq + 100, op, size, status, received, invalid, at FROM batches LIMIT 1",
            "added",
        ),
        ("UPDATE audiences_remote SET remote_id = '123'", "audiences_remote"),
    ],
)
def test_audit_verify_detects_edits_of_the_sync_tables(
    make_project: Any, edit: str, says: str
) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    p.cli_json("sync", "all-adults", "--as-of", DAY)
    assert p.cli("audit", "verify").exit_code == 0
    entries = p.query("SELECT details FROM audit WHERE kind='sync_batch'")
    details = json.loads(entries[-1][0])
    assert {"segment", "destination", "audience", "op", "size", "release_id", "digest"} <= set(
        details
    )
    conn = sqlite3.connect(p.state_db)  # a raw edit, as someone with the file would make it
    with conn:
        assert conn.execute(edit).rowcount == 1
    conn.close()
    r = p.cli("audit", "verify", "--json")
    assert r.exit_code == 1
    problems = json.loads(r.stdout)["problems"]
    assert any(says in problem for problem in problems), problems


def test_sync_signs_a_checkpoint_and_verify_reports_its_age(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    p.cli_json("sync", "all-adults", "--as-of", DAY)
    before = p.cli_json("audit", "verify")
    key = str(p.approver.private_key)
    p.cli_json("sync", "all-adults", "--as-of", DAY, "--checkpoint-key", key)
    doc = p.cli_json("audit", "verify")
    assert doc["ok"] and doc["checkpoints"] == before["checkpoints"] + 1
    assert doc["newest_checkpoint_at"] > (before["newest_checkpoint_at"] or "")
    assert 0 <= doc["checkpoint_age_seconds"] < 600
    ((kind,),) = p.query("SELECT kind FROM audit ORDER BY seq DESC LIMIT 1 OFFSET 0")
    assert kind == "checkpoint"
    text = p.cli("audit", "verify")
    assert "newest signed checkpoint" in text.stderr


def test_library_sync_uses_the_same_connectors(make_project: Any) -> None:
    """The library entry point refuses a lost state too (not only the CLI)."""
    from audiences.core.errors import StateError

    p = make_project(rows=3000, segments=("all-adults",))
    sync(p.config(), ["all-adults"], as_of=AS_OF, connector_factory=make_connector)
    delete_state_db(p)
    with pytest.raises(StateError, match="state adopt"):
        sync(p.config(), ["all-adults"], as_of=AS_OF)


# ------------------------------------------------------------------------------ small ones
def test_keygen_outside_a_project_takes_a_key_in_that_folder(tmp_path: Path) -> None:
    """A folder is a project when it holds audiences.toml: `keygen` run from / (or any
    folder without one) does not call the folder a project."""
    from click.testing import CliRunner

    from audiences.cli import cli

    folder = tmp_path / "officer"
    folder.mkdir()
    key = folder / "dana.key"
    r = CliRunner().invoke(cli, ["-p", str(folder), "keygen", "--private", str(key)])
    assert r.exit_code == 0, r.stderr
    assert key.exists()
    (folder / "audiences.toml").write_text("")  # now it is one: keys stay out of it
    r = CliRunner().invoke(cli, ["-p", str(folder), "keygen", "--private", str(folder / "b.key")])
    assert r.exit_code == 1 and "inside the project" in r.stderr


def test_sdk_log_lines_only_with_debug(tmp_path: Path) -> None:
    import logging

    from click.testing import CliRunner

    from audiences.cli import cli

    sdk = logging.getLogger("google.ads.googleads")
    try:
        assert CliRunner().invoke(cli, ["-p", str(tmp_path), "schema"]).exit_code == 0
        assert sdk.getEffectiveLevel() > logging.WARNING
        assert CliRunner().invoke(cli, ["--debug", "-p", str(tmp_path), "schema"]).exit_code == 0
        assert sdk.getEffectiveLevel() == logging.INFO
    finally:
        sdk.setLevel(logging.NOTSET)


def test_a_project_without_a_record_gets_one_from_its_state(make_project: Any) -> None:
    """Projects synced before the record existed: the first sync writes it from state."""
    p = make_project(rows=3000, segments=("all-adults",))
    (first,) = p.cli_json("sync", "all-adults", "--as-of", DAY)["results"]
    record = p.root / ".audiences" / "audiences.manifest.json"
    record.unlink()
    assert p.cli("plan", "all-adults", "--as-of", DAY).exit_code == 0
    assert not record.exists()  # plan writes nothing
    (r,) = p.cli_json("sync", "all-adults", "--as-of", DAY)["results"]
    assert (r["status"], r["replaced"]) == ("ok", None)
    doc = json.loads(record.read_text())
    assert doc["audiences"] == [
        {"segment": "all-adults", "destination": "meta", "remote_id": first["audience"]}
    ]
