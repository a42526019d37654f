"""The sealed membership state (audiences/pipeline/membership.py): every snapshot, unsure
and journal file carries a keyed BLAKE3 authenticator (``<file>.mac``) derived from
``record.key`` and bound to its segment, destination and role.

The attack: someone who can write the state folder adds a stranger's hashed email to the
confirmed snapshot, so the next sync "removes" the stranger — telling the ad platform that
hashed email belongs to the advertiser's records. The sync must refuse (one line, nothing
sent) or, when the file's contents can't be checked at all (no ``.mac``: written before
snapshots were sealed), replace the audience in full from the release without reading it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import AS_OF, frozen_clock, meta_rows

from audiences.pipeline.membership import MembershipStore, UnreadableStateFile, mac_path

DAY = AS_OF.isoformat()
STRANGER = hashlib.sha256(b"stranger@example.com").hexdigest()


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    with frozen_clock(AS_OF):
        yield


def snapshot_of(p: Any, segment: str = "all-adults", destination: str = "meta") -> Path:
    return p.root / ".audiences" / "memberships" / segment / f"{destination}.parquet"


def add_stranger(path: Path) -> None:
    """Append a made-up person to a snapshot file, as an editor of the state folder would."""
    frame = pl.read_parquet(path)
    stranger = frame.head(1).with_columns(
        pl.lit(STRANGER).alias("EMAIL"), pl.lit(1, pl.UInt64).alias("member_key")
    )
    pl.concat([frame, stranger]).write_parquet(path)


def deletes(p: Any) -> int:
    """Removal requests the Meta sandbox received (its log holds no rows, only methods)."""
    return sum(1 for r in p.boxes.meta.request_log() if r.method == "DELETE")


def holds_the_release(p: Any, audience: str) -> None:
    members = p.boxes.meta.members(audience)
    assert members == meta_rows(p.release("all-adults", "meta").members)
    assert not any(STRANGER in row for row in members)


@pytest.fixture
def synced(make_project: Any) -> tuple[Any, str]:
    p = make_project(rows=1500, segments=("all-adults",))
    (first,) = p.cli_json("sync", "all-adults", "--as-of", DAY)["results"]
    assert first["status"] == "ok" and mac_path(snapshot_of(p)).exists()
    return p, str(first["audience"])


def test_attack_a_stranger_added_to_the_snapshot_is_refused(synced: tuple[Any, str]) -> None:
    p, audience = synced
    before, members = deletes(p), p.boxes.meta.members(audience)
    add_stranger(snapshot_of(p))
    r = p.cli("sync", "all-adults", "--as-of", DAY)
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("all-adults → meta:")]
    assert "fails its authentication" in line and "state repair" in line
    assert str(snapshot_of(p)) in line
    assert deletes(p) == before and p.boxes.meta.members(audience) == members  # nothing sent
    plan = p.cli("plan", "all-adults", "--as-of", DAY)
    assert plan.exit_code == 1 and plan.stderr.count("\n") == 1 and "not trusted" in plan.stderr

    repaired = p.cli_json("state", "repair")["repaired"]
    assert [(x["segment"], x["destination"]) for x in repaired] == [("all-adults", "meta")]
    assert not snapshot_of(p).exists() and not mac_path(snapshot_of(p)).exists()
    (r2,) = p.cli_json("sync", "all-adults", "--as-of", DAY)["results"]
    assert r2["status"] == "ok" and "unreadable" in r2["replaced"]
    assert deletes(p) == before  # a replace, never a removal of the stranger
    holds_the_release(p, audience)
    assert MembershipStore(p.root / ".audiences", "all-adults", "meta").load().height


def test_attack_snapshot_swapped_in_from_another_audience(make_project: Any) -> None:
    p = make_project(rows=4000, segments=("all-adults", "west-coast"))
    p.cli_json("sync", "--all", "--as-of", DAY)
    mine, theirs = snapshot_of(p), snapshot_of(p, "west-coast", "google_ads")
    for source, target in ((theirs, mine), (mac_path(theirs), mac_path(mine))):
        target.write_bytes(source.read_bytes())
    before = deletes(p)
    r = p.cli("sync", "all-adults", "--as-of", DAY)
    assert r.exit_code == 1 and "fails its authentication" in r.stdout
    assert deletes(p) == before
    assert "--full-refresh" not in r.stdout  # it reads the snapshot: only repair settles it


def test_removed_mac_or_legacy_snapshot_is_replaced_in_full_never_read(
    synced: tuple[Any, str],
) -> None:
    """A snapshot with no ``.mac`` (an upgraded project, or the ``.mac`` deleted) is not
    trusted and not refused: the audience is replaced from the release alone."""
    p, audience = synced
    add_stranger(snapshot_of(p))
    mac_path(snapshot_of(p)).unlink()
    before = deletes(p)
    plan = p.cli_json("plan", "all-adults", "--as-of", DAY)
    assert "no authenticator" in json.dumps(plan)
    (r,) = p.cli_json("sync", "all-adults", "--as-of", DAY)["results"]
    assert r["status"] == "ok" and "no authenticator" in r["replaced"]
    assert deletes(p) == before
    holds_the_release(p, audience)
    # sealed again: the next sync is an ordinary diff, which removes opt-outs
    assert mac_path(snapshot_of(p)).exists()
    opt_out_then_sync_removes(p, audience)


def opt_out(p: Any, n: int) -> None:
    contacts = p.contacts()
    opted = contacts.filter(pl.col("marketing_opt_in")).get_column("contact_id").head(n)
    hit = pl.col("contact_id").is_in(opted.implode())
    p.write_contacts(
        contacts.with_columns(
            pl.when(hit).then(False).otherwise(pl.col("marketing_opt_in")).alias("marketing_opt_in")
        )
    )


def opt_out_then_sync_removes(p: Any, audience: str) -> None:
    before = deletes(p)
    opt_out(p, 40)
    (r,) = p.cli_json("sync", "all-adults", "--as-of", DAY)["results"]
    assert r["status"] == "ok" and r["replaced"] is None and r["removes"] != 0
    assert deletes(p) > before
    holds_the_release(p, audience)


def test_normal_path_opt_out_is_removed(synced: tuple[Any, str]) -> None:
    p, audience = synced
    opt_out_then_sync_removes(p, audience)


# ---------------------------------------------------------------------------- the store
@pytest.fixture
def stores(tmp_path: Path) -> tuple[MembershipStore, MembershipStore]:
    state = tmp_path / ".audiences"
    return MembershipStore(state, "seg", "meta"), MembershipStore(state, "seg", "google_ads")


FRAME = pl.DataFrame({"member_key": [1, 2, 3], "EMAIL": ["a", "b", "c"]}).cast(
    {"member_key": pl.UInt64}
)


def test_store_binds_each_file_to_its_audience_and_role(
    stores: tuple[MembershipStore, MembershipStore],
) -> None:
    meta, google = stores
    meta.save(FRAME)
    assert meta.load().equals(FRAME)
    google.snapshot_path.parent.mkdir(parents=True, exist_ok=True)
    for source, target in (
        (meta.snapshot_path, google.snapshot_path),
        (mac_path(meta.snapshot_path), mac_path(google.snapshot_path)),
    ):
        target.write_bytes(source.read_bytes())
    with pytest.raises(UnreadableStateFile, match="fails its authentication"):
        google.load()  # another destination's snapshot
    for source, target in (
        (meta.snapshot_path, meta.unsure_path),
        (mac_path(meta.snapshot_path), mac_path(meta.unsure_path)),
    ):
        target.write_bytes(source.read_bytes())
    with pytest.raises(UnreadableStateFile, match="fails its authentication"):
        meta.load_unsure()  # the snapshot passed off as unsure rows
    journal = meta.write_intent("s-1", 1, "remove", FRAME)
    assert meta.read_journal("s-1", 1, "remove").equals(FRAME)
    pl.concat([FRAME, FRAME.head(1)]).write_parquet(journal)
    with pytest.raises(UnreadableStateFile, match="fails its authentication"):
        meta.read_journal("s-1", 1, "remove")


def test_store_refuses_missing_or_garbled_mac_and_survives_a_crash_mid_write(
    stores: tuple[MembershipStore, MembershipStore],
) -> None:
    meta, _ = stores
    meta.save(FRAME)
    old_bytes, old_seal = (
        meta.snapshot_path.read_bytes(),
        json.loads(mac_path(meta.snapshot_path).read_text()),
    )
    mac_path(meta.snapshot_path).write_text("{not json")
    with pytest.raises(UnreadableStateFile, match="fails its authentication"):
        meta.load()
    mac_path(meta.snapshot_path).unlink()
    with pytest.raises(UnreadableStateFile, match="no authenticator"):
        meta.load()
    # a crash after the .mac listed the new and old authenticators, before the file moved
    mac_path(meta.snapshot_path).write_text(json.dumps(old_seal))
    meta.save(FRAME.head(2))
    new_seal = json.loads(mac_path(meta.snapshot_path).read_text())
    assert len(new_seal["mac"]) == 1
    crashed = {**new_seal, "mac": new_seal["mac"] + old_seal["mac"]}
    mac_path(meta.snapshot_path).write_text(json.dumps(crashed))
    meta.snapshot_path.write_bytes(old_bytes)
    assert meta.load().equals(FRAME)  # the old file verifies in the crash window
    meta.clear_unsure()
    meta.add_unsure(FRAME.with_columns(pl.lit("add").alias("__op")))
    assert mac_path(meta.unsure_path).exists()
    meta.clear_unsure()
    assert not meta.unsure_path.exists() and not mac_path(meta.unsure_path).exists()
