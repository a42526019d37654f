"""Membership patterns across projects (policies/difference.py, "as a whole"): the
three-audience attack of tests/test_composition.py with the audiences spread over two
projects on one ad account — P = NY + TX + one person in a new project (a new salt),
Q = NY + FL and R = TX + IL in the first. Every pair differs by hundreds, so the pairwise
check across projects passes; on the platform P − Q − R is that one person. The pattern
check takes every live audience of the account, whichever project released it, its people
joined through the hashed identifiers the platform matches on. Documented commands, the
sandboxes on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl
import pytest
from conftest import AS_OF, Project, frozen_clock
from test_composition import write_segment

DAY = AS_OF.isoformat()
SINGLES_OUT = "combination of audiences would single out"


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


def _one_outside(p: Project) -> str:
    """A CA person (outside NY, TX, FL and IL), released nowhere."""
    write_segment(p.root, "ca", ["CA"])
    p.approve("ca")
    (one,) = sorted(p.contact_ids(p.release("ca", "meta", as_of=AS_OF).members.head(1)))
    return one


def _build(p: Project, name: str, states: list[str], ids: tuple[str, ...] = ()) -> Any:
    write_segment(p.root, name, states, ids)
    p.approve(name)
    return p.cli("build", name, "--as-of", DAY)


def test_attack_three_audiences_over_two_projects(make_project: Any) -> None:
    a = make_project(rows=3000, pack="nightly-pack")  # k_diff 10
    one = _one_outside(a)
    for name, states in (("q", ["NY", "FL"]), ("r", ["TX", "IL"])):
        assert _build(a, name, states).exit_code == 0
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    attack = _build(b, "p", ["NY", "TX"], (one,))
    out = attack.stdout + attack.stderr
    assert attack.exit_code == 3, out
    assert SINGLES_OUT in out and one not in out
    # without the one person the same audience passes: every pattern it touches is large
    assert _build(b, "p2", ["NY", "TX"]).exit_code == 0


def test_attack_one_audience_in_each_project_and_this_one(make_project: Any) -> None:
    """Q in the first project, R and then P in the new one: the patterns join the new
    project's own audiences with the first project's."""
    a = make_project(rows=3000, pack="nightly-pack")
    one = _one_outside(a)
    assert _build(a, "q", ["NY", "FL"]).exit_code == 0
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    assert _build(b, "r", ["TX", "IL"]).exit_code == 0
    attack = _build(b, "p", ["NY", "TX"], (one,))
    assert attack.exit_code == 3, attack.stdout + attack.stderr
    assert SINGLES_OUT in attack.stdout + attack.stderr


def test_attack_the_first_project_builds_the_narrow_audience_last(make_project: Any) -> None:
    """And the other way round: the new project holds Q and R, the first builds P."""
    a = make_project(rows=3000, pack="nightly-pack")
    one = _one_outside(a)
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    for name, states in (("q", ["NY", "FL"]), ("r", ["TX", "IL"])):
        assert _build(b, name, states).exit_code == 0
    attack = _build(a, "p", ["NY", "TX"], (one,))
    assert attack.exit_code == 3, attack.stdout + attack.stderr
    assert SINGLES_OUT in attack.stdout + attack.stderr


# ------------------------------------------------------------------------------ unit
K = 10


def _links(keys: list[int], emails: list[int]) -> pl.DataFrame:
    """A link frame: each person's hashed e-mail's 64-bit prefix is the given number."""
    return pl.DataFrame(
        {
            "member_key": pl.Series(keys, dtype=pl.UInt64),
            "kind": pl.Series([0] * len(keys), dtype=pl.UInt8),
            "link": pl.Series(emails, dtype=pl.UInt64),
        }
    )


def test_unify_joins_people_through_any_audience_of_either_project() -> None:
    """Unit: people are joined through shared links across projects, transitively (an
    e-mail in one project and a phone in the other), and keep apart otherwise."""
    from policies.difference import unify

    ours = pl.concat(
        [
            _links([1, 2, 3], [11, 12, 13]),
            pl.DataFrame(  # person 4 has only a phone that the other project's 103 shares
                {
                    "member_key": pl.Series([4, 5], dtype=pl.UInt64),
                    "kind": pl.Series([1, 0], dtype=pl.UInt8),
                    "link": pl.Series([40, 12], dtype=pl.UInt64),  # 5 shares 2's e-mail
                }
            ),
        ]
    )
    theirs = pl.concat(
        [
            _links([101, 102, 109], [11, 12, 99]),
            pl.DataFrame(
                {
                    "member_key": pl.Series([103, 103], dtype=pl.UInt64),
                    "kind": pl.Series([0, 1], dtype=pl.UInt8),
                    "link": pl.Series([13, 40], dtype=pl.UInt64),  # 103 is both 3 and 4
                }
            ),
        ]
    )
    ours_keys = np.array([1, 2, 3, 4, 5, 6], dtype=np.uint64)  # 6: no link at all
    theirs_keys = np.array([101, 102, 103, 109], dtype=np.uint64)
    labels = unify(ours_keys, ours, [(theirs_keys, theirs)])
    mine, (other,) = labels.ours, labels.spaces
    same = {
        (1, 101): mine[0] == other[0],
        (2, 102): mine[1] == other[1],
        (3, 103): mine[2] == other[2],
        (4, 103): mine[3] == other[2],  # through 103's phone
        (5, 2): mine[4] == mine[1],  # one e-mail: one user on the platform
    }
    assert all(same.values()), same
    assert (
        len({int(x) for x in mine} | {int(x) for x in other}) == 5
    )  # {1}, {2, 5}, {3, 4}, {6}, {109}
    assert mine[5] not in set(other.tolist()) and other[3] not in set(mine.tolist())


def test_attack_three_people_under_a_weaker_rule_in_the_new_project(make_project: Any) -> None:
    """The new project's pack asks only k_diff 2: P − Q − R would be three people, enough
    there but not under the first project's k_diff 10. The largest applies."""
    import re

    a = make_project(rows=3000, pack="nightly-pack")  # k_diff 10
    write_segment(a.root, "ca", ["CA"])
    a.approve("ca")
    three = tuple(sorted(a.contact_ids(a.release("ca", "meta", as_of=AS_OF).members.head(3))))
    for name, states in (("q", ["NY", "FL"]), ("r", ["TX", "IL"])):
        assert _build(a, name, states).exit_code == 0
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    weak = (
        (b.root / "policies" / "nightly-pack.yaml").read_text().replace("k_diff: 10", "k_diff: 2")
    )
    (b.root / "policies" / "weak.yaml").write_text(weak.replace("nightly-test", "weak-test"))
    b.edit_toml(lambda t: re.sub(r'(?m)^pack = ".*?"', 'pack = "policies/weak.yaml"', t))
    attack = _build(b, "p", ["NY", "TX"], three)
    out = attack.stdout + attack.stderr
    assert attack.exit_code == 3, out
    assert SINGLES_OUT in out and "between 1 and 9 people" in out


def _custody_files(pattern: str) -> list[Any]:
    from policies.privacy.ledger import ledger_home

    return sorted((ledger_home() / "releases").rglob(pattern))


def test_another_projects_unreadable_member_keys_block(make_project: Any) -> None:
    """An unknown state is never an empty one: the first project's kept member keys are
    gone, so its audience cannot join the patterns — the release blocks (restore the
    custody folder), the pattern check is not skipped."""
    a = make_project(rows=3000, pack="nightly-pack")
    assert _build(a, "q", ["NY", "FL"]).exit_code == 0
    (kept,) = [f for f in _custody_files("*.parquet") if not f.name.endswith(".links.parquet")]
    kept.write_bytes(b"not parquet")
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    built = _build(b, "p", ["NY", "TX"])
    out = built.stdout + built.stderr
    assert built.exit_code == 3, out
    assert "member or link keys in the custody store is missing or unreadable" in out


def test_this_projects_missing_link_keys_block(make_project: Any) -> None:
    """The new project's own audience R lost its kept link keys: R's people cannot be
    joined with the first project's, so the patterns cannot be judged — block."""
    a = make_project(rows=3000, pack="nightly-pack")
    assert _build(a, "q", ["NY", "FL"]).exit_code == 0
    before = set(_custody_files("*.links.parquet"))
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    assert _build(b, "r", ["TX", "IL"]).exit_code == 0
    (mine,) = set(_custody_files("*.links.parquet")) - before
    mine.unlink()
    built = _build(b, "p", ["NY", "TX"])
    out = built.stdout + built.stderr
    assert built.exit_code == 3, out
    assert "its link keys in the custody store are missing or unreadable" in out


# ----------------------------------------------------------- what the platform holds
# (an attack review, 2026-12-07: each of these passed before the patterns judged what the
# next sync sends, both versions of every audience, every pair of projects and the other
# project's k_diff on its synced copy)


def _ca_people(p: Project, n: int) -> tuple[str, ...]:
    write_segment(p.root, "ca", ["CA"])
    p.approve("ca")
    return tuple(sorted(p.contact_ids(p.release("ca", "meta", as_of=AS_OF).members.head(n))))


def _weak(p: Project, k: int) -> None:
    import re

    text = (p.root / "policies" / "nightly-pack.yaml").read_text()
    text = text.replace("k_diff: 10", f"k_diff: {k}").replace("nightly-test", "weak-test")
    (p.root / "policies" / "weak.yaml").write_text(text)
    p.edit_toml(lambda t: re.sub(r'(?m)^pack = ".*?"', 'pack = "policies/weak.yaml"', t))


@pytest.mark.parametrize("where", ["same project", "new project"])
def test_attack_a_held_add_in_another_audience_is_judged_as_the_platform_holds_it(
    make_project: Any, where: str
) -> None:
    """q = NY+FL is synced; q is then rebuilt with `one` added (held back: the platform
    still holds NY+FL). r = TX+IL. The patterns take q's newest release, where `one` is,
    so P = NY+TX+one looks harmless; on the platform P - q - r is `one`."""
    a = make_project(rows=3000, pack="nightly-pack")
    (one,) = _ca_people(a, 1)
    assert _build(a, "r", ["TX", "IL"]).exit_code == 0
    write_segment(a.root, "q", ["NY", "FL"])
    a.approve("q")
    assert a.cli_json("sync", "q", "--as-of", DAY)["exit_code"] == 0
    write_segment(a.root, "q", ["NY", "FL"], (one,))
    a.approve("q")
    assert a.cli_json("sync", "q", "--as-of", DAY)["exit_code"] == 0
    held = a.boxes.meta.member_key_values(a.remote_id("q", "meta"), "EXTERN_ID")
    assert one not in held  # held back: the platform holds NY+FL
    b = a if where == "same project" else make_project(rows=3000, pack="nightly-pack", name="b")
    attack = _build(b, "p", ["NY", "TX"], (one,))
    out = attack.stdout + attack.stderr
    assert attack.exit_code == 3, out


@pytest.mark.parametrize("r_in", ["first project", "third project"])
def test_attack_three_projects_people_of_two_other_projects_are_joined(
    make_project: Any, r_in: str
) -> None:
    """Q = FL+NY+z (project A), R = NY (A, or a third project C), P = FL+TX (project B).
    On the platform Q - R - P = {z}. unify joins each foreign space only to B's own
    people: NY people (in Q and R, in no audience of B) stay two labels when Q and R
    come from two different projects, so the pattern (Q, not R, not P) looks like NY+z."""
    a = make_project(rows=6000, pack="nightly-pack")
    (z,) = _ca_people(a, 1)
    assert _build(a, "q", ["FL", "NY"], (z,)).exit_code == 0
    c = a if r_in == "first project" else make_project(rows=6000, pack="nightly-pack", name="c")
    assert _build(c, "r", ["NY"]).exit_code == 0
    b = make_project(rows=6000, pack="nightly-pack", name="b")
    attack = _build(b, "p", ["FL", "TX"])
    out = attack.stdout + attack.stderr
    assert attack.exit_code == 3, out
    assert SINGLES_OUT in out


def test_attack_another_projects_synced_copy_keeps_its_k_diff(make_project: Any) -> None:
    """A (k_diff 10) syncs q = NY+FL, then q + three CA people (held: the platform keeps
    NY+FL). B (k_diff 2) releases q2 = NY+FL+three: equal to A's newest release, and 3
    apart from what the platform holds — compared under B's 2, since a synced copy in
    custody carries no k_diff. On the platform q2 - q is three people."""
    a = make_project(rows=3000, pack="nightly-pack")
    three = _ca_people(a, 3)
    write_segment(a.root, "q", ["NY", "FL"])
    a.approve("q")
    assert a.cli_json("sync", "q", "--as-of", DAY)["exit_code"] == 0
    write_segment(a.root, "q", ["NY", "FL"], three)
    a.approve("q")
    assert a.cli_json("sync", "q", "--as-of", DAY)["exit_code"] == 0
    held = a.boxes.meta.member_key_values(a.remote_id("q", "meta"), "EXTERN_ID")
    assert not set(three) & set(held)
    b = make_project(rows=3000, pack="nightly-pack", name="b")
    _weak(b, 2)
    write_segment(b.root, "q2", ["NY", "FL"], three)
    b.approve("q2")
    attack = b.cli("sync", "q2", "--as-of", DAY)
    out = attack.stdout + attack.stderr
    assert attack.exit_code == 3, out


@pytest.mark.parametrize("where", ["same project", "new project"])
def test_attack_adds_held_over_several_nights_are_judged_when_sent(
    make_project: Any, where: str
) -> None:
    """q = NY+FL and r = TX+IL (project A) are live. p = NY+TX is synced. Night 1: p
    gains `one` (CA) and 4 FL people: 5 adds, held (< k_diff), so the gate takes p as
    unchanged and touches no pattern. Night 2: 6 more FL people: against the previous
    release it is again a small change (6), held, no pattern touched — but the sync's
    accumulated adds are now 11 >= k_diff and all are sent. On the platform p - q - r is
    `one`; no pattern check ever saw her arrive."""
    import polars as pl

    a = make_project(rows=3000, pack="nightly-pack")
    (one,) = _ca_people(a, 1)
    for name, states in (("q", ["NY", "FL"]), ("r", ["TX", "IL"])):
        write_segment(a.root, name, states)
        a.approve(name)
        assert a.cli_json("sync", name, "--as-of", DAY)["exit_code"] == 0
    fl = sorted(a.contact_ids(a.release("q", "meta").members))
    fl = [c for c in fl if a.contacts().filter(pl.col("contact_id") == c)["state"].item() == "FL"]
    b = a if where == "same project" else make_project(rows=3000, pack="nightly-pack", name="b")
    write_segment(b.root, "p", ["NY", "TX"])
    b.approve("p")
    assert b.cli_json("sync", "p", "--as-of", DAY)["exit_code"] == 0
    codes = []
    for extra in (fl[:4], fl[:10]):
        write_segment(b.root, "p", ["NY", "TX"], (one, *extra))
        b.approve("p")
        codes.append(b.cli("sync", "p", "--as-of", DAY).exit_code)
    on = a.boxes.meta
    got = {
        s: set(on.member_key_values(x.remote_id(s, "meta"), "EXTERN_ID"))
        for s, x in (("q", a), ("r", a), ("p", b))
    }
    alone = got["p"] - got["q"] - got["r"]
    assert not 0 < len(alone) < 10, (codes, alone, one)


def test_the_same_adds_in_one_night_are_blocked(make_project: Any) -> None:
    """Control for 6: the same 11 adds in one night are pattern-checked and blocked."""
    import polars as pl

    a = make_project(rows=3000, pack="nightly-pack")
    (one,) = _ca_people(a, 1)
    for name, states in (("q", ["NY", "FL"]), ("r", ["TX", "IL"])):
        write_segment(a.root, name, states)
        a.approve(name)
        assert a.cli_json("sync", name, "--as-of", DAY)["exit_code"] == 0
    fl = sorted(a.contact_ids(a.release("q", "meta").members))
    fl = [c for c in fl if a.contacts().filter(pl.col("contact_id") == c)["state"].item() == "FL"]
    b = make_project(rows=3000, pack="nightly-pack", name="b")
    write_segment(b.root, "p", ["NY", "TX"])
    b.approve("p")
    assert b.cli_json("sync", "p", "--as-of", DAY)["exit_code"] == 0
    write_segment(b.root, "p", ["NY", "TX"], (one, *fl[:10]))
    b.approve("p")
    done = b.cli("sync", "p", "--as-of", DAY)
    assert done.exit_code == 3 and SINGLES_OUT in done.stdout + done.stderr
