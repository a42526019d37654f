"""The report of a released build shows the syncs that carried it (issue #16, evidence)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import AS_OF, frozen_clock

from audiences.pipeline.sync import sync


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


def test_the_report_of_a_segment_names_its_syncs(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    (result,) = sync(p.config(), ["all-adults"], as_of=AS_OF).results
    assert result.status == "ok"
    by_segment = p.cli("report", "all-adults", "--format", "json")
    assert by_segment.exit_code == 0, by_segment.stderr
    doc = json.loads(by_segment.stdout)
    (carried,) = doc["syncs"]
    assert carried["destination"] == "meta" and carried["status"] == "ok"
    assert carried["audience_id"] == p.remote_id("all-adults", "meta")
    assert carried["adds"] == result.adds > 0
    by_build = p.cli("report", doc["build_id"], "--format", "json")
    assert json.loads(by_build.stdout)["syncs"] == doc["syncs"]
    markdown = p.cli("report", "all-adults", "--format", "md").stdout
    assert carried["sync_id"] in markdown or carried["audience_id"] in markdown


def test_an_unknown_reference_is_one_line_with_the_fix(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    out = p.cli("report", "no-such-thing")
    assert out.exit_code == 1
    assert "no build and no segment named 'no-such-thing'" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_report_of_a_released_build_names_its_approval(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    (result,) = sync(p.config(), ["all-adults"], as_of=AS_OF).results
    assert result.status == "ok"
    doc = json.loads(p.cli("report", "all-adults", "--format", "json").stdout)
    approval = doc["approval"]
    assert approval["approver"] == p.approver.name and approval["signature_verified"] is True
    assert approval["segment_digest"] == doc["segment"]["digest"]
    assert len(approval["key_id"]) == 16
    markdown = p.cli("report", "all-adults", "--format", "md").stdout
    assert p.approver.name in markdown and approval["key_id"] in markdown


def test_a_sync_row_keeps_its_forced_removals_and_holds(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    (result,) = sync(p.config(), ["all-adults"], as_of=AS_OF).results
    (summary,) = p.query("SELECT summary FROM syncs WHERE sync_id = ?", (result.sync_id,))[0]
    assert json.loads(summary) == {
        "forced_removes": result.forced_removes,
        "held_adds": result.held_adds,
        "held_removes": result.held_removes,
        "membership_unknown": result.membership_unknown,
        "replaced": result.replaced,
    }
    doc = json.loads(p.cli("report", "all-adults", "--format", "json").stdout)
    assert doc["syncs"][0]["forced_removes"] == result.forced_removes
