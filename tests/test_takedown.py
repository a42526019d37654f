"""`audiences takedown` (issue #16 item 2): real CLI and SDKs against the sandboxes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import AS_OF, Project, frozen_clock, google_people, meta_rows

from connectors.meta.connector import MetaConnector


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


DAY = AS_OF.isoformat()
BOTH = """name: grown-ups
description: Grown-ups who read English
destinations: [meta, google_ads, file]
where:
  all:
    - age: {gte: 18}
    - preferred_language: {in: [en]}
"""


def live(p: Project) -> dict[str, str]:
    (p.root / "segments" / "grown-ups.yaml").write_text(BOTH, encoding="utf-8")
    p.approve("grown-ups")
    doc = p.cli_json("sync", "grown-ups", "--as-of", DAY)
    assert {r["status"] for r in doc["results"]} == {"ok"}
    ids = {d: p.remote_id("grown-ups", d) for d in ("meta", "google_ads")}
    assert p.boxes.meta.members(ids["meta"]) and p.boxes.google.members(ids["google_ads"])
    return ids


def test_takedown_empties_every_platform_and_deletes_the_exports(make_project: Any) -> None:
    p = make_project(rows=3000)
    ids = live(p)
    exports = sorted((p.root / "exports").rglob("members.csv"))
    assert exports
    on_meta = p.confirmed("grown-ups", "meta").height
    doc = p.cli_json("takedown", "grown-ups", "--by", "qa.officer")
    by = {r["destination"]: r for r in doc["takedown"]}
    assert doc["exit_code"] == 0
    assert by["meta"]["status"] == by["google_ads"]["status"] == "taken_down"
    assert by["meta"]["removed"] == on_meta > 0
    assert p.boxes.meta.members(ids["meta"]) == set()
    assert p.boxes.google.members(ids["google_ads"]) == frozenset()
    assert p.confirmed("grown-ups", "meta").height == 0
    assert p.confirmed("grown-ups", "google_ads").height == 0
    assert by["file"]["files"] and not any(path.exists() for path in exports)
    kinds = [k for (k,) in p.query("SELECT kind FROM audit WHERE kind='takedown'")]
    assert len(kinds) == 3
    # idempotent: a rerun changes nothing on the platforms and still exits 0
    again = p.cli_json("takedown", "grown-ups", "--by", "qa.officer")
    assert {r["status"] for r in again["takedown"]} == {"taken_down"}
    assert p.boxes.meta.members(ids["meta"]) == set()
    # a later sync refuses to add to the taken-down audiences until a new approval
    blocked = p.cli_json("sync", "grown-ups", "--as-of", DAY, expect=3)["results"]
    ad = [r for r in blocked if r["destination"] != "file"]
    assert {r["status"] for r in ad} == {"blocked"}
    assert all("taken down" in r["error"] for r in ad)
    assert p.boxes.meta.members(ids["meta"]) == set()
    # nor are the deleted exports written again (a build is refused in the same way)
    assert not list((p.root / "exports").rglob("members.csv"))
    build = p.cli_json("build", "grown-ups", "--as-of", DAY, expect=3)["builds"][0]
    assert build["status"] == "blocked" and "taken down" in build["reasons"][0]
    assert not list((p.root / "exports").rglob("members.csv"))
    p.approve("grown-ups")
    after = p.cli_json("sync", "grown-ups", "--as-of", DAY)["results"]
    assert {r["status"] for r in after} == {"ok"}
    assert list((p.root / "exports").rglob("members.csv"))
    assert p.boxes.meta.members(ids["meta"]) == meta_rows(p.confirmed("grown-ups", "meta"))
    assert p.boxes.google.members(ids["google_ads"]) == google_people(
        p.confirmed("grown-ups", "google_ads")
    )


def test_takedown_killed_mid_way_finishes_on_rerun(
    make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectors.sandbox.meta_server import Fault

    p = make_project(rows=3000)
    ids = live(p)
    before = meta_rows(p.confirmed("grown-ups", "meta"))
    assert len(before) > 300
    # three removal batches in the killed process (small batches: the environment knob
    # is the class attribute, patched in the child through sitecustomize-free -c code)
    p.boxes.meta.inject(Fault(delay_s=0.001), method="DELETE", path=r"/users$")
    p.boxes.meta.inject(Fault(delay_s=3.0), method="DELETE", path=r"/users$")
    code = (
        "import sys; from connectors.meta.connector import MetaConnector as M;"
        "M.remove_batch_size = 100; from audiences.cli import main;"
        f"sys.argv = ['audiences', '-p', {str(p.root)!r}, 'takedown', 'grown-ups',"
        "'--destination', 'meta', '--by', 'qa.officer']; main()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, **p.tokens},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    sql = (
        "SELECT count(*) FROM batches b JOIN syncs s ON s.sync_id = b.sync_id "
        "WHERE s.status = 'running' AND s.release_id = 'takedown' AND b.status = 'confirmed'"
    )
    deadline = time.monotonic() + 60
    try:
        while p.query(sql)[0][0] < 1:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the takedown never confirmed a batch"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    left = p.boxes.meta.members(ids["meta"])
    assert left and left < before  # half-way: some removed, some still there
    monkeypatch.setattr(MetaConnector, "remove_batch_size", 100)
    doc = p.cli_json("takedown", "grown-ups", "--destination", "meta", "--by", "qa.officer")
    (r,) = doc["takedown"]
    assert r["status"] == "taken_down" and r["recovered"]
    assert p.boxes.meta.members(ids["meta"]) == set()  # person by person: nobody left
    assert p.confirmed("grown-ups", "meta").height == 0
    # google was not asked: still live
    assert p.boxes.google.members(ids["google_ads"]) == google_people(
        p.confirmed("grown-ups", "google_ads")
    )


def test_meta_refusal_below_minimum_is_reported_then_delete_takes_it_down(
    make_project: Any,
) -> None:
    p = make_project(rows=3000)
    ids = live(p)
    p.boxes.meta.min_size_after_removal = 100
    try:
        result = p.cli("takedown", "grown-ups", "--destination", "meta", "--by", "qa.officer")
        assert result.exit_code == 1
        assert "remain" in result.stderr and "--delete" in result.stderr
        assert p.boxes.meta.members(ids["meta"])  # still live, and said so
        doc = p.cli_json(
            "takedown", "grown-ups", "--destination", "meta", "--delete", "--by", "qa.officer"
        )
        (r,) = doc["takedown"]
        assert (r["status"], r["deleted"], r["remaining"]) == ("taken_down", True, 0)
        assert ids["meta"] not in p.boxes.meta.audience_ids()
    finally:
        p.boxes.meta.min_size_after_removal = None
    # deleted: nothing live; a rerun says so and exits 0
    again = p.cli_json("takedown", "grown-ups", "--destination", "meta", "--by", "qa.officer")
    assert [r["status"] for r in again["takedown"]] == ["already"]
    # approved again, the next sync makes a new audience (the deleted one is forgotten by
    # the state and by the audience record alike: no "state.db does not know" refusal)
    p.approve("grown-ups")
    after = p.cli_json("sync", "grown-ups", "--as-of", DAY)["results"]
    assert {r["status"] for r in after} == {"ok"}
    new = p.remote_id("grown-ups", "meta")
    assert new != ids["meta"] and p.boxes.meta.members(new)


def test_revoke_takedown_does_both(make_project: Any) -> None:
    p = make_project(rows=3000)
    ids = live(p)
    result = p.cli("revoke", "grown-ups", "--by", "qa.officer", "--takedown")
    assert result.exit_code == 0, result.stderr
    assert "Revoked" in result.stderr
    assert p.boxes.meta.members(ids["meta"]) == set()
    assert p.boxes.google.members(ids["google_ads"]) == frozenset()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("never-synced",), "never synced"),
        (("grown-ups", "--destination", "tiktok"), "unknown destination 'tiktok'"),
    ],
)
def test_takedown_bad_input_is_one_line_and_changes_nothing(
    make_project: Any, args: tuple[str, ...], message: str
) -> None:
    p = make_project(rows=3000)
    live(p)
    before = p.fingerprint()
    result = p.cli("takedown", *args, "--by", "qa.officer")
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert message in line
    assert p.fingerprint() == before


def test_takedown_without_a_token_names_it_and_changes_nothing(
    make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = make_project(rows=3000)
    ids = live(p)
    before = p.fingerprint()
    members = p.boxes.meta.members(ids["meta"])
    monkeypatch.delenv("GOOGLE_ADS_ACCESS_TOKEN")
    result = p.cli("takedown", "grown-ups", "--by", "qa.officer")
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert "GOOGLE_ADS_ACCESS_TOKEN" in line and "export" in line
    assert p.fingerprint() == before
    assert p.boxes.meta.members(ids["meta"]) == members
