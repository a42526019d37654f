"""Meta's health flag (issue #16, item 7): after every upload the connector reads the
audience's ``operation_status``; code 471 stops adds, is reported with its fix and exits
non-zero. The Meta sandbox flags the audience (fault injection); the SDK is real."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import AS_OF, frozen_clock

from audiences.core.errors import EXIT_ERROR


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


DAY = AS_OF.isoformat()


def adds_sent(boxes: Any) -> int:
    return sum(
        1 for r in boxes.meta.request_log() if r.method == "POST" and r.path.endswith("/users")
    )


def test_a_flagged_audience_takes_no_more_adds_and_the_sync_fails(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    p.boxes.meta.flag_after_upload()  # Meta's classifier flags it once it sees the members
    first = p.cli("sync", "all-adults", "--as-of", DAY, "--json")
    assert first.exit_code == EXIT_ERROR, first.stdout
    audience = p.remote_id("all-adults", "meta")
    assert p.boxes.meta.audience_info(audience)["operation_status"]["code"] == 471
    out = first.stdout
    assert "operation_status 471" in out and "no more people are added" in out
    assert "neutral release codes, so the segment itself" in out
    assert "compliance must review" in out

    # the next run reads the status before sending: no add reaches Meta, and it fails again
    before = adds_sent(p.boxes)
    p.boxes.meta.reset_log()
    second = p.cli("sync", "all-adults", "--as-of", DAY, "--json")
    assert second.exit_code == EXIT_ERROR
    assert "operation_status 471" in second.stdout
    log = p.boxes.meta.request_log()
    assert before >= 1 and adds_sent(p.boxes) == 0
    assert [(r.method, r.status) for r in log] == [("GET", 200)]  # the status read, only


def test_an_unflagged_audience_syncs_with_one_status_read_per_upload(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    p.boxes.meta.reset_log()
    assert p.cli("sync", "all-adults", "--as-of", DAY, "--json").exit_code == 0
    methods = [(r.method, r.path.rsplit("/", 1)[-1]) for r in p.boxes.meta.request_log()]
    uploads = sum(1 for m in methods if m[1] == "users")
    reads = sum(1 for m in methods if m[0] == "GET")
    assert uploads >= 1 and reads == uploads
