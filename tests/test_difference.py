"""Difference protection: exact set arithmetic and the k_diff edges, in both directions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from policies.difference import (
    EarlierRelease,
    check,
    compare_sets,
    count_common,
    read_membership,
    sorted_keys,
    write_membership,
)
from policies.rules import Destination, DifferenceParams, Rule

DEST = Destination(name="meta", kind="meta", account="act_1")
K = 50


def rule(on_small_change: str = "block", k_diff: int = K) -> Rule:
    return Rule(
        id="difference",
        kind="difference",
        severity="block",
        params=DifferenceParams(k_diff=k_diff, on_small_change=on_small_change),  # type: ignore[arg-type]
        rationale="r",
        source="s",
    )


def keys(start: int, stop: int) -> np.ndarray:
    # spread over the UInt64 range like salted hashes, kept sorted
    return sorted_keys(np.arange(start, stop, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))


def earlier(
    tmp_path: Path,
    name: str,
    members: np.ndarray,
    segment: str = "other",
    destination: str = "meta",
) -> EarlierRelease:
    path = tmp_path / f"{name}.parquet"
    write_membership(path, members)
    return EarlierRelease(
        name,
        "b",
        segment,
        destination,
        "act_1",
        f"2025-01-0{len(name) % 9 + 1}T00:00:00Z",
        int(members.size),
        path,
    )


def test_count_common_matches_python_sets():
    rng = np.random.default_rng(7)
    for size_a, size_b in ((0, 10), (10, 0), (1000, 3000), (5000, 5000)):
        a = rng.integers(0, 2**64 - 1, size_a, dtype=np.uint64, endpoint=True)
        b = np.concatenate([a[: size_a // 2], rng.integers(0, 2**64 - 1, size_b, dtype=np.uint64)])
        sa, sb = sorted_keys(a), sorted_keys(b)
        assert count_common(sa, sb) == len(set(a.tolist()) & set(b.tolist()))


def test_compare_sets_counts_both_directions_and_exempt_removals():
    new, old = keys(0, 1000), keys(10, 1020)
    assert compare_sets(new, old) == (10, 20, 0)
    exempt = keys(1015, 1020)
    assert compare_sets(new, old, exempt) == (10, 15, 5)


def test_membership_round_trip_is_sorted_uint64(tmp_path):
    path = tmp_path / "m.parquet"
    write_membership(path, keys(0, 100))
    assert np.array_equal(read_membership(path), keys(0, 100))


@pytest.mark.parametrize(
    ("extra", "result"),
    [(0, "pass"), (1, "block"), (K - 1, "block"), (K, "pass"), (K + 1, "pass")],
)
def test_added_people_edges(tmp_path, extra, result):
    old = earlier(tmp_path, "r1", keys(0, 500))
    out = check(rule(), DEST, "mine", keys(0, 500 + extra), [old])
    assert out.comparisons[0].result == result
    assert out.verdict.passed is (result == "pass")
    assert out.comparisons[0].only_new == extra


@pytest.mark.parametrize(
    ("fewer", "result"), [(0, "pass"), (1, "block"), (K - 1, "block"), (K, "pass")]
)
def test_removed_people_edges(tmp_path, fewer, result):
    old = earlier(tmp_path, "r1", keys(0, 500))
    out = check(rule(), DEST, "mine", keys(fewer, 500), [old])
    assert out.comparisons[0].result == result
    assert out.comparisons[0].only_old == fewer


def test_any_earlier_release_collides_and_is_named(tmp_path):
    far = earlier(tmp_path, "r1", keys(10_000, 10_500))
    near = earlier(tmp_path, "r2", keys(0, 497), segment="lookalike")
    out = check(rule(), DEST, "mine", keys(0, 500), [far, near])
    assert not out.verdict.passed
    assert "r2" in out.verdict.detail and "lookalike" in out.verdict.detail
    assert [c.result for c in out.comparisons] == ["pass", "block"]
    assert out.verdict.evidence["collisions"] == 1


def test_small_change_to_same_audience_is_held_when_pack_says_hold(tmp_path):
    v1 = earlier(tmp_path, "r1", keys(0, 500), segment="mine")
    v2 = earlier(tmp_path, "r22", keys(0, 600), segment="mine")
    out = check(rule("hold"), DEST, "mine", keys(3, 605), [v1, v2])
    assert out.verdict.passed
    assert out.hold_against == "r22"
    assert out.holds == 5 + 3  # 5 adds and 3 removes vs the previous version
    assert {c.result for c in out.comparisons} == {"hold"}


def test_small_change_to_same_audience_blocks_when_pack_says_block(tmp_path):
    v1 = earlier(tmp_path, "r1", keys(0, 500), segment="mine")
    out = check(rule("block"), DEST, "mine", keys(0, 505), [v1])
    assert not out.verdict.passed and out.hold_against is None


def test_hold_never_applies_to_another_audience(tmp_path):
    other = earlier(tmp_path, "r1", keys(0, 500), segment="theirs")
    out = check(rule("hold"), DEST, "mine", keys(0, 505), [other])
    assert not out.verdict.passed


def test_same_segment_other_destination_is_another_audience(tmp_path):
    other = earlier(tmp_path, "r1", keys(0, 500), segment="mine", destination="meta_eu")
    out = check(rule("hold"), DEST, "mine", keys(0, 505), [other])
    assert not out.verdict.passed


def test_exempt_removals_do_not_count(tmp_path):
    v1 = earlier(tmp_path, "r1", keys(0, 500), segment="mine")
    out = check(rule("block"), DEST, "mine", keys(0, 497), [v1], exempt=keys(497, 500))
    assert out.verdict.passed
    assert out.comparisons[0].exempt_removals == 3 and out.comparisons[0].only_old == 0


def test_missing_membership_file_blocks(tmp_path):
    gone = earlier(tmp_path, "r1", keys(0, 500))
    gone.membership_path.unlink()
    out = check(rule(), DEST, "mine", keys(0, 500), [gone])
    assert not out.verdict.passed
    assert "membership file" in out.verdict.detail and out.comparisons[0].result == "error"


def test_threaded_and_serial_agree(tmp_path):
    olds = [earlier(tmp_path, f"r{i}", keys(i * 7, 400 + i * 3)) for i in range(6)]
    a = check(rule(), DEST, "mine", keys(0, 420), olds, workers=1)
    b = check(rule(), DEST, "mine", keys(0, 420), olds, workers=4)
    assert a.verdict.to_dict() == b.verdict.to_dict()
