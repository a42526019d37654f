"""What the sync sends is what the gate's pattern check judged (policies/difference.py,
``PlatformView``): a full replace (a lost, untrusted or unreadable snapshot, ``state
adopt``, ``--full-refresh``) sends the release whole, and an interrupted run's unsure rows
are settled without a hold — the gate judges both as such. An attack review (2026-12-07)
found both sent what the check had judged held back; each test failed then.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import AS_OF, Project, frozen_clock
from test_composition import write_segment

DAY = AS_OF.isoformat()


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    with frozen_clock(AS_OF):
        yield


def _ca_people(p: Project, n: int) -> tuple[str, ...]:
    write_segment(p.root, "ca", ["CA"])
    p.approve("ca")
    return tuple(sorted(p.contact_ids(p.release("ca", "meta", as_of=AS_OF).members.head(n))))


def _sync(p: Project, name: str, states: list[str], ids: tuple[str, ...] = (), *extra: str) -> Any:
    write_segment(p.root, name, states, ids)
    p.approve(name)
    return p.cli("sync", name, "--as-of", DAY, *extra)


def _on(p: Project, seg: str) -> set[str]:
    return set(p.boxes.meta.member_key_values(p.remote_id(seg, "meta"), "EXTERN_ID"))


def _setup(a: Project) -> str:
    (one,) = _ca_people(a, 1)
    for name, states in (("q", ["NY", "FL"]), ("r", ["TX", "IL"]), ("p", ["NY", "TX"])):
        assert _sync(a, name, states).exit_code == 0
    return one


@pytest.mark.parametrize("how", ["snapshot deleted", "full refresh of a garbled snapshot"])
def test_attack_replace_sends_held_add_never_pattern_checked(make_project: Any, how: str) -> None:
    """q = NY+FL, r = TX+IL, p = NY+TX live. p's segment gains `one` (CA): one add, below
    k_diff, so the gate judges the patterns with the add held back (after = before) and
    passes. But the sync replaces the audience in full (snapshot missing / unreadable +
    --full-refresh, both documented ways out) and sends the release, `one` included:
    no hold, no pattern check. On the platform p - q - r = {one}."""
    from audiences.pipeline.membership import MembershipStore

    a = make_project(rows=3000, pack="nightly-pack")
    one = _setup(a)
    snap = MembershipStore(a.root / ".audiences", "p", "meta").snapshot_path
    extra: tuple[str, ...] = ()
    if how == "snapshot deleted":
        snap.unlink()
    else:
        snap.write_bytes(b"garbage")
        extra = ("--full-refresh",)
    done = _sync(a, "p", ["NY", "TX"], (one,), *extra)
    alone = _on(a, "p") - _on(a, "q") - _on(a, "r")
    assert not 0 < len(alone) < 10, (done.exit_code, done.stdout[-2000:], alone, one)


def test_control_without_replace_the_add_is_held(make_project: Any) -> None:
    a = make_project(rows=3000, pack="nightly-pack")
    one = _setup(a)
    assert _sync(a, "p", ["NY", "TX"], (one,)).exit_code == 0
    assert one not in _on(a, "p")


def test_attack_interrupted_sync_settles_a_held_add_unjudged(make_project: Any) -> None:
    """p = NY+TX live (q = NY+FL, r = TX+IL). Night 2: p gains 20 CA people (a large
    add, judged, passes); the process dies after the platform took that add batch,
    unconfirmed. Night 3: p keeps only `one` of them. The gate judges from the custody
    synced copy (NY+TX): one add, held, patterns pass. The sync settles the unsure rows
    to the release, never held: `one` is sent, the 19 others removed. p - q - r = {one}."""
    from test_sync import ProcessDied, dying_after

    from audiences.pipeline.sync import sync

    a = make_project(rows=3000, pack="nightly-pack")
    one = _setup(a)
    twenty = _ca_people(a, 20)
    assert one in twenty
    write_segment(a.root, "p", ["NY", "TX"], twenty)
    a.approve("p")
    with pytest.raises(ProcessDied):
        sync(a.config(), ["p"], as_of=AS_OF, connector_factory=dying_after(0, sent=True))
    done = _sync(a, "p", ["NY", "TX"], (one,))
    alone = _on(a, "p") - _on(a, "q") - _on(a, "r")
    assert not 0 < len(alone) < 10, (done.exit_code, done.stdout[-1500:], alone, one)


def _forget_synced_copies() -> None:
    """Custody as a store written before synced copies were kept (an upgrade)."""
    from audiences.compliance import custody

    with custody.opened() as conn:
        conn.execute("DELETE FROM synced")


@pytest.mark.parametrize("damage", ["mac deleted", "snapshot garbled"])
def test_untrusted_snapshot_without_synced_copy_is_replaced_not_crashed(
    make_project: Any, damage: str
) -> None:
    """Documented: a snapshot with no .mac is never read, the audience is replaced in
    full; a garbled one is mended by `sync --full-refresh`. With no synced copy in custody
    (a store from before synced copies were kept), the gate now reads the snapshot itself
    (GateInput.platform_held) for the patterns: does the build survive?"""
    from audiences.pipeline.membership import MAC_SUFFIX, MembershipStore

    a = make_project(rows=3000, pack="nightly-pack")
    for name, states in (("q", ["NY", "FL"]), ("p", ["NY", "TX"])):
        assert _sync(a, name, states).exit_code == 0
    _forget_synced_copies()
    snap = MembershipStore(a.root / ".audiences", "p", "meta").snapshot_path
    if damage == "mac deleted":
        mac = snap.with_name(snap.name + MAC_SUFFIX)
        if not mac.exists():
            mac = snap.with_suffix(MAC_SUFFIX)
        mac.unlink()
        done = a.cli("sync", "p", "--as-of", DAY)
    else:
        snap.write_bytes(b"garbage")
        done = a.cli("sync", "p", "--as-of", DAY, "--full-refresh")
    assert done.exit_code == 0, (done.stdout[-1500:], done.stderr[-1500:])


def test_first_sync_after_upgrade_without_synced_copy(make_project: Any) -> None:
    """An audience with a confirmed snapshot but no custody synced copy: a plain nightly
    sync with nothing changed passes."""
    a = make_project(rows=3000, pack="nightly-pack")
    for name, states in (("q", ["NY", "FL"]), ("p", ["NY", "TX"])):
        assert _sync(a, name, states).exit_code == 0
    _forget_synced_copies()
    for name in ("q", "p"):
        done = a.cli("sync", name, "--as-of", DAY)
        assert done.exit_code == 0, (name, done.stdout[-1500:], done.stderr[-1500:])
