"""What a release to an ad account costs for the difference check across projects.

Every release to a Meta or Google account keeps its people's link keys in custody
(``policies.difference.link_frame``, written by ``workflow.share_releases``): 64-bit
prefixes of the hashed identifiers in the release, Meta's plain external id hashed
here. This times that step — links computed and written — on a release frame shaped
like the gate's (the layout's hashed columns, SHA-256 hex), beside the baseline the
build already paid in the same run: writing the release's member keys
(``policies.difference.write_membership``, what custody kept before).

    python -m benchmarks --only links [--quick]

Sizes: 1,244,285 members (the 10M benchmark's release), 200,000 with ``--quick``.
Five runs each, interleaved; medians with min–max and the ratio to the baseline.

The second table is what those links cost at the gate: ``policies.difference.check`` of a
new Meta release (80 % of the same population: 995,429 people, 160,000 with ``--quick``)
against last night's version and two other audiences of its project (the baseline, timed
in the same runs) and M audiences of other projects (another salt: member keys mapped
through splitmix64) of eight of the ten "states" each, so they overlap the release
heavily — one other project holding M audiences, or M projects holding one each. Every
setting's first run is checked: the verdict passes, every pairwise comparison's
``only_new`` / ``only_old`` is the set difference of the populations, every other-project
audience is in the patterns. Per setting also, once: the pairwise comparisons
(``_compare_foreign``, the link files read and matched included) and the pattern check
across projects (``_across_projects``; of it ``unify``), the time in ``match`` and
``_inconsistent`` wherever called, and one check in a fresh process for the growth of the
resident set (``VmHWM`` after the check less ``VmRSS`` before it, the peak reset through
``/proc/self/clear_refs``). The settings with the most projects are timed once only
(``TIMED``, ``ONCE``): their pattern check joins every pair of projects.
"""

from __future__ import annotations

import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

FULL, QUICK = 1_244_285, 200_000
RUNS = 5


def _frames(n: int) -> dict[str, pl.DataFrame]:
    from audiences.crm.identifiers import sha256_hex

    ids = pl.DataFrame({"i": pl.int_range(0, n, eager=True)})
    hexed = ids.select(
        *(sha256_hex(pl.format(f"{tag}{{}}", pl.col("i"))).alias(tag) for tag in "abcdefgh")
    )
    keys = pl.Series("member_key", np.random.default_rng(7).integers(0, 2**63, n, dtype=np.uint64))
    meta = hexed.select(
        pl.col("a").alias("EMAIL"),
        pl.col("b").alias("PHONE"),
        pl.col("c").alias("FN"),
        pl.col("d").alias("LN"),
        pl.col("e").alias("ZIP"),
        pl.col("f").alias("DOBY"),
        pl.col("g").alias("DOBM"),
        pl.col("h").alias("DOBD"),
        pl.format("C{}", ids.get_column("i")).alias("EXTERN_ID"),
    ).with_columns(keys)
    google = hexed.select(
        pl.col("a").alias("hashed_email"),
        pl.col("b").alias("hashed_phone_number"),
        pl.col("c").alias("hashed_first_name"),
        pl.col("d").alias("hashed_last_name"),
    ).with_columns(keys, (10000 + ids.get_column("i") % 40000).cast(pl.String).alias("postal_code"))
    return {"meta": meta, "google_ads": google}


def main(quick: bool = False) -> None:
    _custody(quick)
    _across(quick)


def _custody(quick: bool) -> None:
    """The first table: link keys computed and written, beside the member keys written."""
    from policies.difference import link_frame, sorted_keys, write_membership

    n = QUICK if quick else FULL
    frames = _frames(n)
    keys = sorted_keys(frames["meta"].get_column("member_key"))
    times: dict[str, list[float]] = {"baseline": [], "meta": [], "google_ads": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for _ in range(RUNS):
            t = time.perf_counter()
            write_membership(out / "members.parquet", keys)
            times["baseline"].append(time.perf_counter() - t)
            for layout, frame in frames.items():
                t = time.perf_counter()
                link_frame(frame).write_parquet(out / f"{layout}.parquet", statistics=False)
                times[layout].append(time.perf_counter() - t)
    base = statistics.median(times["baseline"])
    print(f"{n:,} members, {RUNS} interleaved runs")
    print(f"{'step':<34} {'median s':>9} {'min–max s':>14} {'× baseline':>11}")
    for name, label in (
        ("baseline", "member keys written (baseline)"),
        ("meta", "Meta release: links + write"),
        ("google_ads", "Google release: links + write"),
    ):
        runs = times[name]
        med = statistics.median(runs)
        print(f"{label:<34} {med:9.3f} {min(runs):6.3f}–{max(runs):<6.3f} {med / base:10.1f}×")


# ---------------------------------------------------------------------------------------
# The second table: the difference check with other projects' audiences on the account

SEGMENTS = 10  # people spread over ten "states"; every audience is a set of states
# per size (quick?): the settings timed RUNS times, interleaved with the baseline, and
# those whose pieces are timed once only (one check of them takes minutes)
TIMED = {
    False: ("baseline", "1 project × 1", "1 project × 4", "2 projects × 1"),
    True: ("baseline", "1 project × 1", "1 project × 4", "1 project × 8", "2 projects × 1"),
}
ONCE = {False: ("4 projects × 1",), True: ("4 projects × 1", "8 projects × 1")}
K_DIFF = 50
_LINKS = {"member_key": pl.UInt64, "kind": pl.UInt8, "link": pl.UInt64}


def _respace(keys: np.ndarray, salt: int) -> np.ndarray:
    """Member keys in another project's 64-bit key space (another salt): splitmix64."""
    with np.errstate(over="ignore"):
        z = np.asarray(keys, dtype=np.uint64) ^ np.uint64(salt)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return np.asarray(z ^ (z >> np.uint64(31)), dtype=np.uint64)


@dataclass
class _Account:
    """One ad account's files: this project's new release (keys, links), its earlier
    releases, and the other projects' audiences (``one``: one other project holding
    eight; ``each``: eight other projects holding one each; the first M are used)."""

    new: np.ndarray
    links: pl.DataFrame
    earlier: list[Any]
    one: list[Any]
    each: list[Any]
    expected: dict[str, tuple[int, int]]  # foreign release id -> (only_new, only_old)
    people: int


def _account(n: int, out: Path, n_one: int, n_each: int) -> _Account:
    from policies.difference import (
        EarlierRelease,
        ForeignRelease,
        link_frame,
        sorted_keys,
        write_membership,
    )

    meta = _frames(n)["meta"]
    i = pl.int_range(0, n, eager=True)
    meta = meta.with_columns(  # not everyone has every identifier
        pl.when(i % 7 != 0).then(pl.col("EMAIL")).alias("EMAIL"),
        pl.when(i % 3 != 0).then(pl.col("PHONE")).alias("PHONE"),
    )
    keys = meta.get_column("member_key").to_numpy()
    state = np.arange(n) % SEGMENTS
    person = pl.DataFrame({"member_key": keys, "person": np.arange(n)})
    population = link_frame(meta).join(person, on="member_key")  # this project's keys

    def people(states: set[int], drop: int = 0) -> np.ndarray:
        mask = np.isin(state, sorted(states))
        if drop:
            mask &= np.arange(n) % drop != 0
        return np.flatnonzero(mask)

    def links_of(who: np.ndarray, salt: int | None) -> pl.DataFrame:
        links = population.filter(pl.col("person").is_in(pl.Series(who).implode()))
        links = links.select("member_key", "kind", "link")
        if salt is None:
            return links
        mapped = _respace(links.get_column("member_key").to_numpy(), salt)
        return links.with_columns(pl.Series("member_key", mapped, dtype=pl.UInt64))

    def release(folder: str, rid: str, segment: str, who: np.ndarray, salt: int | None) -> Any:
        (out / folder).mkdir(parents=True, exist_ok=True)
        member = keys[who] if salt is None else _respace(keys[who], salt)
        path, links_path = out / folder / f"{rid}.parquet", out / folder / f"{rid}.links.parquet"
        write_membership(path, sorted_keys(member))
        links_of(who, salt).write_parquet(links_path, statistics=False)
        return EarlierRelease(
            rid, "b", segment, "meta", "act_1", "2025-05-31T00:00:00Z", int(who.size), path,
            links_path,
        )  # fmt: skip

    ours = set(range(8))  # states 0-7: 80 % of the population
    new_people = people(ours)
    # this project: last night's version of the audience (a thousandth fewer people, so
    # the change passes) and two other audiences
    earlier = [
        release("ours", "previous", "new", people(ours, drop=997), None),
        release("ours", "west", "west", people({0, 1, 2, 3, 4}), None),
        release("ours", "east", "east", people({3, 4, 5, 6, 7, 8, 9}), None),
    ]
    one: list[Any] = []
    each: list[Any] = []
    expected: dict[str, tuple[int, int]] = {}
    for j in range(max(n_one, n_each)):
        # eight of the ten states, a different two left out for each audience
        who = people(set(range(SEGMENTS)) - {j % SEGMENTS, (j + 3) % SEGMENTS})
        inside = int(np.isin(who, new_people).sum())
        for how, project, salt in (("one", "other", 0x5A17), ("each", f"other{j}", 0x5A18 + j)):
            if j >= (n_one if how == "one" else n_each):
                continue
            rid = f"{how}-{j}"
            e = release(project, rid, f"seg{j}", who, salt)
            (one if how == "one" else each).append(ForeignRelease(e, e.links_path, project, K_DIFF))
            expected[rid] = (new_people.size - inside, who.size - inside)
    return _Account(
        sorted_keys(keys[new_people]), links_of(new_people, None), earlier, one, each, expected, n
    )


def _settings(acc: _Account, names: Sequence[str]) -> dict[str, list[Any]]:
    """Setting name -> the other projects' audiences ("baseline": none; "1 project × M":
    one other project holding M audiences; "M projects × 1": M projects, one each)."""
    out: dict[str, list[Any]] = {}
    for name in names:
        if name == "baseline":
            out[name] = []
        elif "projects" in name:
            out[name] = acc.each[: int(name.split()[0])]
        else:
            out[name] = acc.one[: int(name.split()[-1])]
    return out


_NO_LINKS = pl.DataFrame(schema=_LINKS)
_NOTHING = np.zeros(0, dtype=np.uint64)


def _rule() -> tuple[Any, Any]:
    from policies.rules import Destination, DifferenceParams, Rule

    params = DifferenceParams(k_diff=K_DIFF, on_small_change="hold")
    rule = Rule(id="difference", kind="difference", severity="block", params=params,
                rationale="benchmark", source="benchmark")  # fmt: skip
    return rule, Destination(name="meta", kind="meta", account="act_1")


def _check(new: np.ndarray, links: pl.DataFrame, earlier: list[Any], foreign: list[Any]) -> Any:
    from policies import difference

    rule, dest = _rule()
    return difference.check(
        rule, dest, "new", new, earlier, _NOTHING,
        foreign=foreign, new_links=lambda: (links, _NO_LINKS),
    )  # fmt: skip


def _sane(acc: _Account, name: str, foreign: list[Any], result: Any) -> None:
    """The verdict passes and every figure is what the populations say."""
    v = result.verdict
    if not v.passed:
        raise AssertionError(f"{name}: the verdict failed: {v.detail}")
    theirs = [c for c in result.comparisons if c.note.startswith("another project")]
    if len(theirs) != len(foreign):
        raise AssertionError(f"{name}: {len(theirs)} comparisons for {len(foreign)} audiences")
    for c in theirs:
        got = (c.only_new, c.only_old, c.unlinked_new, c.unlinked_old, c.result)
        if got != (*acc.expected[c.earlier.release_id], 0, 0, "pass"):
            raise AssertionError(f"{name}: {c.earlier.release_id} gave {got}")
    ev = v.evidence
    if ev["other_projects_audiences_in_patterns"] != len(foreign):
        raise AssertionError(f"{name}: patterns missed other projects' audiences: {ev}")
    if not 1 <= ev["membership_patterns"] <= 2 * SEGMENTS or ev["small_patterns"]:
        raise AssertionError(f"{name}: implausible patterns: {ev}")


@contextmanager
def _timers(names: Sequence[str]) -> Iterator[dict[str, float]]:
    """Total seconds spent in each named function of policies.difference (patched)."""
    from policies import difference

    spent = dict.fromkeys(names, 0.0)
    originals = {name: getattr(difference, name) for name in names}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t

        return run

    for name, fn in originals.items():
        setattr(difference, name, timed(name, fn))
    try:
        yield spent
    finally:
        for name, fn in originals.items():
            setattr(difference, name, fn)


def _pieces(acc: _Account, foreign: list[Any]) -> dict[str, float]:
    """One check's pieces: the pairwise comparisons and the patterns across projects."""
    from policies import difference

    p = _rule()[0].params
    previous, others = difference.live_audiences(acc.earlier, "new", "meta")
    assert previous is not None
    read = difference.read_membership
    before = read(previous.membership_path)
    named = [(f"{e.segment} → meta", read(e.membership_path)) for e in others]
    parts: dict[str, float] = {}
    inner = ("read_links", "read_membership", "match", "unify", "_inconsistent", "_components")
    with _timers((*inner, "composition")) as spent:
        t = time.perf_counter()
        ctx = difference._Links(lambda: (acc.links, _NO_LINKS), [*others, previous], foreign)
        for f in foreign:
            difference._compare_foreign(p, f, ctx, int(acc.new.size), False)
        parts["pairwise"] = time.perf_counter() - t
        t = time.perf_counter()
        difference._across_projects(p, before, acc.new, named, _NOTHING, ctx, foreign)
        parts["across"] = time.perf_counter() - t
    return {**parts, **spent}


def _peak(args_file: str) -> None:
    """In a child: one check of a setting; prints its seconds and the growth of the
    resident set over what the inputs took (``VmHWM`` after less ``VmRSS`` before)."""
    from policies.difference import read_membership

    setting = pickle.loads(Path(args_file).read_bytes())
    new = read_membership(setting["new"])
    links = pl.read_parquet(setting["links"])

    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
        return 0

    before = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:  # the peak starts again from here
        f.write("5")
    t = time.perf_counter()
    _check(new, links, setting["earlier"], setting["foreign"])
    took = time.perf_counter() - t
    print(json.dumps({"growth": status("VmHWM:") - before, "seconds": took}))


def _child_peak(out: Path, acc: _Account, name: str, foreign: list[Any]) -> tuple[float, float]:
    """(peak RSS growth in GB, seconds) of one check of the setting, in a fresh process."""
    args = out / "child.pickle"
    args.write_bytes(
        pickle.dumps(
            {
                "new": out / "new.parquet",
                "links": out / "new.links.parquet",
                "earlier": acc.earlier,
                "foreign": foreign,
            }
        )
    )
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from benchmarks.bench_links import _peak; _peak(sys.argv[1])"
    run = subprocess.run(
        [sys.executable, "-c", code, str(args)], env=env, capture_output=True, text=True
    )
    if run.returncode:
        raise RuntimeError(f"{name}: the child failed: {run.stderr[-2000:]}")
    got = json.loads(run.stdout.strip().splitlines()[-1])
    return got["growth"] / 1e9, got["seconds"]


def _across(quick: bool) -> None:
    from policies.difference import write_membership

    n = QUICK if quick else FULL
    timed, once = TIMED[quick], ONCE[quick]
    wanted = [*timed, *once]
    most = {
        how: max([int(w.split()[0] if how == "each" else w.split()[-1]) for w in wanted
                  if ("projects" in w) == (how == "each") and w != "baseline"] or [0])
        for how in ("one", "each")
    }  # fmt: skip
    print(f"\nload average before the setup: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t = time.perf_counter()
        acc = _account(n, out, most["one"], most["each"])
        write_membership(out / "new.parquet", acc.new)
        acc.links.write_parquet(out / "new.links.parquet", statistics=False)
        settings = _settings(acc, wanted)
        size = (acc.one or acc.each)[0].earlier.members
        print(
            f"setup {time.perf_counter() - t:.1f} s: population {n:,}, new release "
            f"{acc.new.size:,} people, {acc.links.height:,} links; other projects' audiences "
            f"{size:,} people each",
            flush=True,
        )
        times: dict[str, list[float]] = {name: [] for name in timed}
        print(f"load average before the timed runs: {os.getloadavg()[0]:.2f}", flush=True)
        for run in range(RUNS):
            for name in timed:
                t = time.perf_counter()
                result = _check(acc.new, acc.links, acc.earlier, settings[name])
                times[name].append(time.perf_counter() - t)
                if run == 0:
                    _sane(acc, name, settings[name], result)
            print(f"  run {run + 1}: " + ", ".join(
                f"{name} {runs[-1]:.2f} s" for name, runs in times.items()
            ), flush=True)  # fmt: skip
        print(f"load average after the timed runs: {os.getloadavg()[0]:.2f}", flush=True)
        pieces = {}
        for name in wanted:
            if settings[name]:
                pieces[name] = _pieces(acc, settings[name])
                print(f"  pieces of {name}: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in pieces[name].items()
                ), flush=True)  # fmt: skip
        peaks = {name: _child_peak(out, acc, name, settings[name]) for name in timed}
        print(f"load average after pieces and children: {os.getloadavg()[0]:.2f}", flush=True)
    base = statistics.median(times["baseline"])
    print(
        f"difference.check of a {acc.new.size:,}-person Meta release: last night's version and "
        f"2 other audiences of this project, plus M audiences of other projects "
        f"({size:,} people each); {RUNS} interleaved runs, verdicts checked"
    )
    print(
        f"{'setting':<16} {'median s':>9} {'min–max s':>15} {'× baseline':>11} "
        f"{'pairwise s':>11} {'match s':>8} {'across s':>9} {'unify s':>8} {'incons. s':>9} "
        f"{'RSS +GB':>8}"
    )
    for name in wanted:
        runs = times.get(name, [])
        piece = pieces.get(name)
        cells = (
            f"{piece['pairwise']:11.2f} {piece['match']:8.2f} {piece['across']:9.2f} "
            f"{piece['unify']:8.2f} "
            f"{piece['_inconsistent']:9.2f}"
            if piece
            else f"{'—':>11} {'—':>8} {'—':>9} {'—':>8} {'—':>9}"
        )
        timing = (
            f"{statistics.median(runs):9.2f} {min(runs):7.2f}–{max(runs):<7.2f} "
            f"{statistics.median(runs) / base:10.1f}×"
            if runs
            else f"{'(once)':>9} {'—':>15} {'—':>11}"
        )
        peak = f"{peaks[name][0]:8.2f}" if name in peaks else f"{'—':>8}"
        print(f"{name:<16} {timing} {cells} {peak}")
    print("one check in a fresh process (s): " + ", ".join(
        f"{name} {peak[1]:.2f}" for name, peak in peaks.items()
    ))  # fmt: skip


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
