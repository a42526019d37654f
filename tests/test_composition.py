"""Difference protection across every live audience of an account (membership patterns).

The attack: three audiences to one Meta account, every pair differing by hundreds —
P = NY + TX + one person, Q = NY + FL, R = TX + IL. On the platform, P − Q − R is that one
person. Pairwise checks pass it; the pattern check must not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import AS_OF, frozen_clock

from policies.difference import (
    EarlierRelease,
    check,
    composition,
    live_audiences,
    sorted_keys,
    write_membership,
)
from policies.rules import Destination, DifferenceParams, Rule


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


K = 100
EMPTY = np.zeros(0, dtype=np.uint64)
DEST = Destination(name="meta", kind="meta", account="act_1")


def keys(start: int, stop: int) -> np.ndarray:
    return sorted_keys(np.arange(start, stop, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))


def union(*parts: np.ndarray) -> np.ndarray:
    return sorted_keys(np.concatenate(parts))


NY, TX, FL, IL = keys(0, 1000), keys(1000, 2000), keys(2000, 3000), keys(3000, 4000)
Q, R = union(NY, FL), union(TX, IL)


def rule(k_diff: int = K, on_small_change: str = "hold") -> Rule:
    return Rule(
        id="difference",
        kind="difference",
        severity="block",
        params=DifferenceParams(k_diff=k_diff, on_small_change=on_small_change),  # type: ignore[arg-type]
        rationale="r",
        source="s",
    )


def release(tmp_path: Path, rid: str, members: np.ndarray, segment: str, at: int) -> EarlierRelease:
    path = tmp_path / f"{rid}.parquet"
    write_membership(path, members)
    return EarlierRelease(
        rid, "b", segment, "meta", "act_1", f"2025-01-{at:02d}T00:00:00Z", members.size, path
    )


# ------------------------------------------------------------------------------ patterns
def test_three_audiences_isolating_one_person_are_caught() -> None:
    p = union(NY, TX, keys(9000, 9001))
    out = composition(EMPTY, p, [("Q", Q), ("R", R)], K)
    assert not out.passed
    assert out.small == ((("(this audience)",), 1),)


def test_the_same_shape_with_a_big_enough_group_passes() -> None:
    p = union(NY, TX, keys(9000, 9000 + K))
    assert composition(EMPTY, p, [("Q", Q), ("R", R)], K).passed


@pytest.mark.parametrize(("extra", "passed"), [(0, True), (1, False), (K - 1, False), (K, True)])
def test_pattern_edges(extra: int, passed: bool) -> None:
    p = union(NY, TX, keys(9000, 9000 + extra)) if extra else union(NY, TX)
    assert composition(EMPTY, p, [("Q", Q), ("R", R)], K).passed is passed


def test_a_pattern_without_this_audience_counts_too() -> None:
    # P takes all of Q but 5 people: "Q and not P" holds 5 — subtracting P from Q names them
    p = union(NY, keys(2000, 2995))
    out = composition(EMPTY, p, [("Q", Q)], K)
    assert (("Q",), 5) in out.small


def test_untouched_small_patterns_among_other_audiences_do_not_block_a_change() -> None:
    # Q and R already share 3 people; a release that does not touch them is not blamed
    q, r = union(NY, keys(5000, 5003)), union(TX, keys(5000, 5003))
    out = composition(EMPTY, keys(20_000, 21_000), [("Q", q), ("R", r)], K)
    assert out.passed


def test_exempt_removals_are_never_blamed() -> None:
    # three people of Q leave this audience (it held all of Q): "Q and not this" holds 3 —
    # blamed when they were dropped by the segment, not when a filter rule removed them
    gone = keys(2000, 2003)
    after = np.setdiff1d(Q, gone)
    assert not composition(Q, after, [("Q", Q)], K).passed
    assert composition(Q, after, [("Q", Q)], K, exempt=gone).passed


def test_more_audiences_than_one_bitmask_word() -> None:
    others = [(f"a{i}", keys(i * 1000, i * 1000 + 500)) for i in range(130)]
    mine = union(*(keys(i * 1000, i * 1000 + 500) for i in range(129)), keys(129_000, 129_499))
    out = composition(EMPTY, mine, others, 10)
    assert not out.passed  # the one person of a129 left out of "mine" is alone in {a129}
    assert out.small == ((("a129",), 1),)


# --------------------------------------------------------------------------- the verdict
def test_check_blocks_the_attack_and_names_no_one_publicly(tmp_path: Path) -> None:
    live = [release(tmp_path, "rq", Q, "q", 1), release(tmp_path, "rr", R, "r", 2)]
    out = check(rule(), DEST, "p", union(NY, TX, keys(9000, 9001)), live)
    assert not out.verdict.passed
    assert [c.result for c in out.comparisons] == ["pass", "pass"]  # pairwise: fine
    assert out.verdict.evidence["small_patterns"] == 1
    assert "1 people" in out.verdict.detail
    assert out.verdict.public_detail and "1 people" not in out.verdict.public_detail


def test_only_live_audiences_count(tmp_path: Path) -> None:
    # an older version of Q that P would collide with is no longer on the platform
    old_q = release(tmp_path, "rq1", union(NY, TX, keys(9000, 9001)), "q", 1)
    new_q = release(tmp_path, "rq2", keys(50_000, 52_000), "q", 2)
    previous, others = live_audiences([old_q, new_q], "p", "meta")
    assert previous is None and [e.release_id for e in others] == ["rq2"]
    out = check(rule(), DEST, "p", union(NY, TX), [old_q, new_q])
    assert out.verdict.passed and len(out.comparisons) == 1


def test_a_held_small_change_is_judged_as_the_platform_will_hold_it(tmp_path: Path) -> None:
    # the audience had NY; 3 new people join (held: fewer than k_diff), so the pattern
    # "this audience only" is not formed on the platform yet — the release may go
    v1 = release(tmp_path, "v1", NY, "p", 1)
    out = check(rule(), DEST, "p", union(NY, keys(9000, 9003)), [v1])
    assert out.verdict.passed and out.hold_against == "v1" and out.holds == 3


def test_a_large_change_that_isolates_a_few_is_blocked(tmp_path: Path) -> None:
    q = release(tmp_path, "rq", union(NY, keys(9000, 9003)), "q", 1)
    v1 = release(tmp_path, "v1", keys(20_000, 20_500), "p", 2)
    # P now takes NY (1,000 adds) but not Q's 3 others: "Q only" = 3 people
    out = check(rule(), DEST, "p", union(NY, keys(20_000, 20_500)), [q, v1])
    assert not out.verdict.passed
    assert out.verdict.evidence["small_patterns"] == 1


# ------------------------------------------------------------------- against the real CLI
SEGMENT = """name: {name}
description: composition test {name}
destinations: [meta]
where:
  any:
{conditions}
"""


def write_segment(root: Path, name: str, states: list[str], ids: tuple[str, ...] = ()) -> None:
    conditions = [f"    - state: {{in: [{', '.join(states)}]}}"]
    if ids:
        conditions.append(f"    - contact_id: {{in: [{', '.join(ids)}]}}")
    text = SEGMENT.format(name=name, conditions="\n".join(conditions))
    (root / "segments" / f"{name}.yaml").write_text(text, encoding="utf-8")


def test_the_attack_through_the_cli_is_blocked(make_project: Any) -> None:
    p = make_project(rows=3000, pack="nightly-pack")  # k_diff 10
    root = p.root
    write_segment(root, "q", ["NY", "FL"])
    write_segment(root, "r", ["TX", "IL"])
    write_segment(root, "ca", ["CA"])
    for name in ("q", "r", "ca"):
        p.approve(name)
    ca = p.release("ca", "meta", as_of=AS_OF)
    (one,) = sorted(p.contact_ids(ca.members.head(1)))
    for name in ("q", "r"):
        built = p.cli("build", name, "--as-of", AS_OF.isoformat())
        assert built.exit_code == 0, built.stderr
    write_segment(root, "p", ["NY", "TX"], (one,))
    p.approve("p")
    attack = p.cli("build", "p", "--as-of", AS_OF.isoformat())
    assert attack.exit_code == 3, attack.stderr
    assert "combination of audiences would single out" in attack.stderr + attack.stdout
    assert one not in attack.stderr + attack.stdout
