"""System tests of `audiences state backup` / `state restore` and of the project lock on
every command that writes state, against the sandboxes on 127.0.0.1."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AS_OF, Project, frozen_clock, google_people, meta_rows, sync_row
from test_state_loss import (
    ALL_ADULTS,
    WEST_COAST,
    assert_platforms_hold_the_release,
    first_sync,
    opt_out,
)

from audiences.core.lock import ProjectLock

DAY = AS_OF.isoformat()


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


def test_backup_more_syncs_restore_then_sync_holds_the_release(
    make_project: Any, tmp_path: Path
) -> None:
    p = make_project(rows=3000, segments=("all-adults", "west-coast"))
    audiences = first_sync(p)
    archive = tmp_path / "backups" / "state.tar"
    doc = p.cli_json("state", "backup", "--out", str(archive))
    assert archive.stat().st_mode & 0o777 == 0o600
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"backup.json", "state.db", "salt", "record.key", "audiences.manifest.json"} <= names
    assert "memberships/all-adults/meta.parquet" in names
    assert doc["audit_head"]["seq"] > 0

    # more syncs after the backup: the platforms move on
    for seed in (11, 12):
        opt_out(p, 40, seed=seed)
        p.cli_json("sync", "--all", "--as-of", DAY)
    assert_platforms_hold_the_release(p, audiences)

    restored = p.cli_json("state", "restore", str(archive))
    assert "older" in restored["reason"]
    assert {(r["segment"], r["destination"]) for r in restored["replaces"]} == {
        ("all-adults", "meta"),
        ("west-coast", "google_ads"),
    }
    assert any(".before-restore-" in path for path in restored["moved_aside"])

    opt_out(p, 30, seed=13)
    doc = p.cli_json("sync", "--all", "--as-of", DAY)
    for result in doc["results"]:
        assert result["status"] == "ok" and result["replaced"]
        assert result["audience"] == audiences[result["segment"]]
    assert_platforms_hold_the_release(p, audiences)
    assert p.cli("audit", "verify").exit_code == 0


def test_restore_into_a_lost_state_folder(make_project: Any, tmp_path: Path) -> None:
    """The whole .audiences folder lost: the backup brings salt, record and state back and
    the next sync is an ordinary diff (the backup is as new as the record)."""
    import shutil

    p = make_project(rows=3000, segments=("all-adults",))
    (first,) = p.cli_json("sync", "all-adults", "--as-of", DAY)["results"]
    archive = tmp_path / "state.tar"
    p.cli_json("state", "backup", "--out", str(archive))
    ca = (p.root / ".audiences" / "sandbox" / "ca.pem").read_bytes()
    shutil.rmtree(p.root / ".audiences")
    (p.root / ".audiences" / "sandbox").mkdir(parents=True)
    (p.root / ".audiences" / "sandbox" / "ca.pem").write_bytes(ca)
    restored = p.cli_json("state", "restore", str(archive))
    assert restored["reason"] is None and restored["replaces"] == []
    opt_out(p, 30, seed=21)
    (r,) = p.cli_json("sync", "all-adults", "--as-of", DAY)["results"]
    assert (r["status"], r["replaced"], r["audience"]) == ("ok", None, first["audience"])
    assert sync_row(p, r)["removes"] > 0  # the CLI shows it coarse: the exact figure
    release = p.release("all-adults", "meta")
    assert p.boxes.meta.members(first["audience"]) == meta_rows(release.members)


def test_restore_refuses_another_projects_backup(make_project: Any, tmp_path: Path) -> None:
    p = make_project(rows=3000, segments=("all-adults",), name="one")
    p.cli_json("sync", "all-adults", "--as-of", DAY)
    archive = tmp_path / "one.tar"
    p.cli_json("state", "backup", "--out", str(archive))
    q = make_project(rows=3000, segments=("all-adults",), name="two")
    q.cli_json("build", "all-adults", "--as-of", DAY)
    before = q.fingerprint()
    r = q.cli("state", "restore", str(archive))
    assert r.exit_code == 1 and "another project" in r.stderr
    assert q.fingerprint() == before
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar")
    r = q.cli("state", "restore", str(garbage))
    assert r.exit_code == 1 and str(garbage) in r.stderr and "internal error" not in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("build", "all-adults", "--as-of", DAY),
        ("approve", "all-adults", "--by", "qa.officer", "--key", "KEY"),
        ("revoke", "all-adults"),
        ("sync", "all-adults", "--as-of", DAY),
        ("state", "restore", "ARCHIVE"),
        ("state", "adopt"),
        ("state", "repair"),
        ("state", "backup", "--out", "ARCHIVE2"),
    ],
)
def test_every_command_that_writes_state_takes_the_lock(
    make_project: Any, tmp_path: Path, args: tuple[str, ...]
) -> None:
    p: Project = make_project(rows=3000, segments=("all-adults",))
    archive = tmp_path / "a.tar"
    p.cli_json("state", "backup", "--out", str(archive))
    swap = {"KEY": str(p.approver.private_key), "ARCHIVE": str(archive)}
    swap["ARCHIVE2"] = str(tmp_path / "b.tar")
    before = p.fingerprint()
    with ProjectLock(p.root / ".audiences" / "lock", command="audiences sync --all"):
        r = p.cli(*(swap.get(a, a) for a in args))
    assert r.exit_code == 75, (r.stdout, r.stderr)
    assert "another run holds the project lock" in r.stderr
    assert p.fingerprint() == before


def test_google_and_meta_release_model(make_project: Any) -> None:
    """The helpers the state tests share compare with the release model (a sanity check)."""
    from conftest import released_ids

    p = make_project(rows=3000, segments=("all-adults", "west-coast"))
    audiences = first_sync(p)
    assert p.contact_ids(p.release("all-adults", "meta").members) == released_ids(
        p.contacts(), ALL_ADULTS
    )
    google = p.release("west-coast", "google_ads")
    assert p.contact_ids(google.members) == released_ids(p.contacts(), WEST_COAST, google=True)
    assert p.boxes.google.members(audiences["west-coast"]) == google_people(google.members)
