"""Connectors take releases only (issue #15, item 4): every raw path to a platform is refused.

Each test plays the marketer who has the Python API and a token in the environment and
tries to send members the gate did not release: a hand-made DataFrame, a forged or edited
batch, a batch of another release, an audience named by hand. The real connectors run
against the project's sandboxes on 127.0.0.1 (the real facebook-business and google-ads
SDKs); the file connector writes to a temp folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from audiences.core.errors import InternalError
from audiences.pipeline.sync import make_connector
from connectors.base import AudienceConnector
from connectors.file import FileConnector
from policies.release import (
    Confirmed,
    ReleaseBatch,
    confirmed_snapshot,
    release_batch,
    removal_batch,
)

SEGMENT = """\
name: guards
description: Grown-ups who read English or Spanish
destinations: [file, meta, google_ads]
where:
  all:
    - age: {gte: 18}
    - preferred_language: {in: [en, es]}
"""
COLUMN = {"meta": "EMAIL", "google_ads": "hashed_email"}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def project(make_project: Any) -> Any:
    p = make_project(rows=1500)
    (p.root / "segments" / "guards.yaml").write_text(SEGMENT)
    p.approve("guards")
    return p


def releases(p: Any) -> dict[str, Any]:
    from audiences.pipeline.sync import plan

    (result,), _ = plan(p.config(), ["guards"])
    assert not result.blocked, result.reasons
    return dict(result.outcome.releases)


def opened(p: Any, destination: str) -> AudienceConnector:
    connector = make_connector(p.config(), destination)
    connector.open()
    return connector


def platform_members(p: Any, destination: str, remote_id: str) -> int:
    box = p.boxes.meta if destination == "meta" else p.boxes.google
    return len(box.members(remote_id))


def refused(call: Any, match: str) -> None:
    with pytest.raises(InternalError, match=match):
        call()


@pytest.mark.parametrize("destination", ["meta", "google_ads"])
def test_audience_connector_refuses_every_raw_path(project: Any, destination: str) -> None:
    every = releases(project)
    release, other = every[destination], every["google_ads" if destination == "meta" else "meta"]
    connector = opened(project, destination)
    kw: dict[str, Any] = {"seq": 1, "last": True, "session": {}}
    five = release.members.head(5)
    try:
        # before an audience is opened for a release, nothing is sent
        refused(lambda: connector.send("1", "add", release_batch(release, "add", five), **kw),
                "send before ensure_audience")  # fmt: skip
        # an audience named by hand: there is no name parameter, and a name is no release
        with pytest.raises(TypeError):
            connector.ensure_audience(None, name="oncology-patients-NY")  # type: ignore[call-arg]
        refused(lambda: connector.ensure_audience("oncology-patients-NY"), "not a sealed Release")  # type: ignore[arg-type]
        refused(lambda: connector.ensure_audience(release.members), "not a sealed Release")  # type: ignore[arg-type]
        refused(lambda: connector.ensure_audience(other), "made for destination")
        remote_id = connector.ensure_audience(release)

        # a plain DataFrame, the release itself, a hand-made batch
        refused(lambda: connector.send(remote_id, "add", five, **kw), "sealed ReleaseBatch")  # type: ignore[arg-type]
        refused(lambda: connector.send(remote_id, "add", release, **kw), "sealed ReleaseBatch")  # type: ignore[arg-type]
        with pytest.raises(InternalError, match="only be minted"):
            ReleaseBatch(release.release_id, release.seal, destination, release.kind,
                         release.account, "add", five, "0" * 64, None)  # fmt: skip

        # rows that are not the release's members can't be minted into a batch
        stranger = five.head(1).with_columns(
            pl.lit(sha("stranger@example.com")).alias(COLUMN[destination])
        )
        refused(lambda: release_batch(release, "add", stranger), "1 rows not in the release")
        refused(lambda: release_batch(release, "add", five.drop("member_key")), "other columns")

        # a genuine batch, edited afterwards three ways
        batch = release_batch(release, "add", five)
        swapped = release_batch(release, "add", five)
        object.__setattr__(swapped, "rows", stranger)
        refused(lambda: connector.send(remote_id, "add", swapped, **kw), "sealed ReleaseBatch")
        edited = release_batch(release, "add", five.clone())
        edited.rows[0, COLUMN[destination]] = sha("stranger@example.com")  # in place
        refused(lambda: connector.send(remote_id, "add", edited, **kw), "sealed ReleaseBatch")
        relabelled = release_batch(release, "add", five)
        object.__setattr__(relabelled, "op", "replace")
        refused(
            lambda: connector.send(remote_id, "replace", relabelled, **kw), "sealed ReleaseBatch"
        )

        # a genuine batch sent as another op, to another audience, or of another release
        refused(lambda: connector.send(remote_id, "remove", batch, **kw), "sent as 'remove'")
        refused(lambda: connector.send("999", "add", batch, **kw), "to audience 999")
        foreign = release_batch(other, "add", other.members.head(5))
        refused(lambda: connector.send(remote_id, "add", foreign, **kw), "opened for release")

        assert platform_members(project, destination, remote_id) == 0  # nothing got through
        outcome = connector.send(remote_id, "add", batch, **kw)
        assert outcome.size == 5
        assert platform_members(project, destination, remote_id) == 5
    finally:
        connector.close()


def test_the_audience_is_named_after_the_release(project: Any) -> None:
    release = releases(project)["meta"]
    connector = opened(project, "meta")
    try:
        remote_id = connector.ensure_audience(release)
    finally:
        connector.close()
    info = project.boxes.meta.audience_info(remote_id)
    assert info["name"] == release.opaque_name
    assert info["description"] == f"audiences release {release.opaque_name}"
    assert info["operation_status"]["code"] == 200  # a neutral name is not flagged


def vouched(release: Any, rows: pl.DataFrame, **where: str) -> Confirmed:
    """What the membership store mints after verifying its files (done by hand here)."""
    where = {"segment": release.segment, "destination": release.destination, **where}
    return confirmed_snapshot(rows, **where)


def test_removal_batches_come_only_from_the_confirmed_snapshot(project: Any) -> None:
    release = releases(project)["meta"]
    confirmed = release.members.head(20)  # what the platform confirmed earlier
    left = confirmed.head(3).with_columns((pl.col("member_key") + 10**12).alias("member_key"))
    snapshot = vouched(release, pl.concat([confirmed, left]))  # three people who have left
    batch = removal_batch(release, left, confirmed=snapshot)
    assert (batch.op, batch.height) == ("remove", 3) and batch.verify()
    stranger = left.head(1).with_columns(pl.lit(sha("stranger@example.com")).alias("EMAIL"))
    refused(lambda: removal_batch(release, stranger, confirmed=snapshot), "not in the confirmed")
    refused(lambda: release_batch(release, "remove", left), "minted by removal_batch")
    refused(lambda: removal_batch(release.members, left, confirmed=snapshot), "sealed Release")  # type: ignore[arg-type]


def test_attack_removal_with_a_made_up_snapshot_is_refused(project: Any) -> None:
    release = releases(project)["meta"]
    made_up = release.members.head(1).with_columns(
        pl.lit(sha("stranger@example.com")).alias("EMAIL"), pl.lit(1, pl.UInt64).alias("member_key")
    )
    refused(lambda: removal_batch(release, made_up, confirmed=made_up), "not in the confirmed")  # type: ignore[arg-type]
    # nor in a replace that keeps "held" rows of the snapshot
    refused(lambda: release_batch(release, "replace", made_up, confirmed=made_up),  # type: ignore[arg-type]
            "not in the confirmed")  # fmt: skip
    refused(lambda: Confirmed("s", "meta", made_up, _capability=None), "minted by")


def test_attack_editing_a_vouched_snapshot_widens_nothing(project: Any) -> None:
    release = releases(project)["meta"]
    snapshot = vouched(release, release.members.head(5))
    stranger = release.members.head(1).with_columns(
        pl.lit(sha("stranger@example.com")).alias("EMAIL")
    )
    snapshot.rows[0, "EMAIL"] = sha("stranger@example.com")  # edited after it was vouched
    refused(lambda: removal_batch(release, stranger, confirmed=snapshot), "not in the confirmed")
    object.__setattr__(snapshot, "rows", stranger)  # or swapped
    refused(lambda: removal_batch(release, stranger, confirmed=snapshot), "not in the confirmed")
    # another audience's snapshot (other segment, other destination) is not this one's
    theirs = vouched(release, stranger, segment="oncology-patients-NY")
    refused(lambda: removal_batch(release, stranger, confirmed=theirs), "not .*->meta's")
    theirs = vouched(release, stranger, destination="google_ads")
    refused(lambda: removal_batch(release, stranger, confirmed=theirs), "not .*->meta's")
    assert removal_batch(release, release.members.head(2), confirmed=snapshot).height == 2


def test_file_connector_refuses_every_raw_path(project: Any, tmp_path: Path) -> None:
    from connectors.file import FileDestinationConfig

    release = releases(project)["file"]
    connector = FileConnector("file", FileDestinationConfig(path=str(tmp_path / "out")))
    refused(lambda: connector.write(release.members, {}), "not a sealed Release")
    refused(lambda: connector.write(release_batch(release, "add", release.members), {}),
            "not a sealed Release")  # fmt: skip
    refused(lambda: connector._write_files(release.members, {}, tmp_path), "not a sealed Release")
    # the folder name comes from the release: relabelling it breaks the seal
    relabelled = releases(project)["file"]
    object.__setattr__(relabelled, "segment", "oncology-patients-NY")
    refused(lambda: connector.write(relabelled, {}), "not a sealed Release")
    edited = releases(project)["file"]
    edited.members[0, "meta_EMAIL"] = sha("stranger@example.com")
    refused(lambda: connector.write(edited, {}), "not a sealed Release")
    assert not (tmp_path / "out").exists()
    written = connector.write(release, {})
    assert Path(written["manifest"]).parent.parent.name == release.opaque_name  # opaque folder


def test_attack_editing_the_release_after_a_first_batch_widens_nothing(project: Any) -> None:
    release = releases(project)["meta"]
    release_batch(release, "add", release.members.head(5))  # verified (and remembered) here
    release.members[0, "EMAIL"] = sha("stranger@example.com")  # then edited in place
    stranger = release.members.head(1)
    refused(lambda: release_batch(release, "add", stranger), "1 rows not in the release")
    assert not release.verify()
    fresh = releases(project)["meta"]
    object.__setattr__(fresh, "members", stranger)  # a swapped frame fails the seal at once
    refused(lambda: release_batch(fresh, "add", stranger), "not a sealed Release")
