"""Benchmark: policy gate overhead, and difference checks of 1M against 50 x 1M releases.

Run ``python -m benchmarks.bench_gate`` (10M candidates) or ``main(quick=True)`` (1M).

1. **Gate overhead** on synthetic candidates (one row per person, a CRM-like contacts
   frame). Measured in the same run:
   * *build-side work* (the baseline): what a build does before the gate on the same
     rows — a segment filter plus the salted ``member_key`` (SHA-256) and ``age`` columns;
   * *gate rules*: ``evaluate`` with a destination whose release needs no layout hashing
     beyond one layout (meta), split into rules + difference vs release materialization.
     The gate judges people on today's date (``audiences.core.clock``); the benchmark
     stops its own process's clock at ``AS_OF`` around it.
2. **Difference check**: a 1M-member release against 50 earlier releases of 1M members
   each on disk (Parquet of sorted UInt64), with the gate's searchsorted method and with a
   naive Python-set baseline.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from audiences.core.config import ProjectConfig
from audiences.core.state import connect, transaction
from audiences.crm.identifiers import member_key
from benchmarks import AS_OF, stopped_clock
from policies import difference
from policies.gate import GateInput, evaluate
from policies.pack import builtin_pack
from policies.rules import Destination, DifferenceParams, Rule

SALT = b"benchmark-salt-0123456789abcdef!"


def synthetic_contacts(n: int, seed: int = 1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    idx = pl.int_range(0, n, eager=True)
    frame = pl.DataFrame(
        {
            "contact_id": ("C" + idx.cast(pl.String).str.zfill(9)),
            "zip": pl.Series(rng.integers(10001, 10300, n)).cast(pl.String),
            "birth_date": pl.Series(
                np.datetime64("1940-01-01") + rng.integers(0, 365 * 65, n).astype("timedelta64[D]")
            ).cast(pl.Date),
            "sex": pl.Series(rng.choice(np.array(["F", "M"]), n)),
            "opt_in": pl.Series(rng.random(n) < 0.9),
            "dnc": pl.Series(rng.random(n) < 0.02),
            "deceased": pl.Series(rng.random(n) < 0.01),
        }
    )
    return frame.with_columns(
        (pl.lit("person.") + idx.cast(pl.String) + pl.lit("@example.com")).alias("email"),
        (pl.lit("212") + (idx % 10_000_000).cast(pl.String).str.zfill(7)).alias("phone"),
        pl.lit("Ana").alias("first_name"),
        pl.lit("Smith-Jones").alias("last_name"),
        pl.lit("US").alias("country"),
    )


def config(root: Path) -> ProjectConfig:
    return ProjectConfig.model_validate(
        {
            "sources": {"contacts": {"path": "c.csv"}},
            "identity": {
                "external_id": "contact_id",
                "email": "email",
                "phone": "phone",
                "first_name": "first_name",
                "last_name": "last_name",
                "zip": "zip",
                "country": "country",
                "birth_date": "birth_date",
                "gender": "sex",
            },
            "consent": {
                "marketing_opt_in": "opt_in",
                "do_not_contact": "dnc",
                "deceased": "deceased",
            },
            "destinations": {"meta": {"kind": "meta", "ad_account_id": "act_1"}},
        }
    ).model_copy(update={"root": root})


def build_side(contacts: pl.DataFrame) -> pl.DataFrame:
    """What the build does before the gate: filter, member key, age."""
    bd = pl.col("birth_date")
    age = (AS_OF.year - bd.dt.year().cast(pl.Int32)) - (
        (bd.dt.month().cast(pl.Int32) * 100 + bd.dt.day().cast(pl.Int32))
        > AS_OF.month * 100 + AS_OF.day
    ).cast(pl.Int32)
    return (
        contacts.lazy()
        .filter(pl.col("zip") < "10250")
        .with_columns(member_key("contact_id", SALT), age.alias("age"))
        .collect()
    )


class _Segment:
    name = "bench-segment"
    description = "benchmark"
    digest = "sha256:" + "0" * 64
    destinations = ("meta",)

    def references(self, birth_date: str | None = None):  # type: ignore[no-untyped-def]
        from audiences.segments.model import SegmentReferences

        return SegmentReferences(frozenset({"zip"}), frozenset(), frozenset(), frozenset())

    def canonical(self) -> str:
        return '{"name":"bench-segment"}'

    def model_dump(self, mode: str = "json") -> dict[str, str]:
        return {"name": self.name}


def gate_overhead(n: int, tmp: Path) -> dict[str, float]:
    contacts = synthetic_contacts(n)
    t = time.perf_counter()
    candidates = build_side(contacts)
    build_s = time.perf_counter() - t
    cfg = config(tmp)
    conn = connect(tmp / "state.db")
    with transaction(conn):
        conn.execute(
            "INSERT INTO builds(build_id, segment, segment_digest, as_of, started_at, status, "
            "actor) VALUES ('b','s','d','2025-06-01','t','running','bench')"
        )
    pack = builtin_pack("baseline")
    inp = GateInput("b", _Segment(), cfg, pack, candidates, ["meta"], AS_OF, conn, tmp, "bench")
    t = time.perf_counter()
    outcome = evaluate(inp)
    gate_s = time.perf_counter() - t
    assert not outcome.blocked, outcome.block_reasons
    release = outcome.releases["meta"]
    t = time.perf_counter()
    release.verify()
    verify_s = time.perf_counter() - t
    # the same gate with the release hashing left out: rules + difference + decision
    from policies import gate as gate_module

    original = gate_module._hashed
    gate_module._hashed = lambda base, config, layouts, as_of: {  # type: ignore[assignment]
        layout: base.select(pl.col("contact_id").alias("EXTERN_ID")) for layout in layouts
    }
    try:
        t = time.perf_counter()
        evaluate(inp)
        rules_s = time.perf_counter() - t
    finally:
        gate_module._hashed = original
    conn.close()
    return {
        "candidates": candidates.height,
        "build": build_s,
        "gate": gate_s,
        "rules": rules_s,
        "materialize": gate_s - rules_s,
        "verify": verify_s,
        "members": release.members.height,
    }


def difference_check(
    members: int, releases: int, baseline_releases: int, tmp: Path
) -> dict[str, float]:
    rng = np.random.default_rng(3)
    new = difference.sorted_keys(
        rng.integers(0, 2**64 - 1, members, dtype=np.uint64, endpoint=True)
    )
    earlier = []
    for i in range(releases):
        keep = new[rng.random(new.size) < 0.9]
        fresh = rng.integers(0, 2**64 - 1, members - keep.size, dtype=np.uint64, endpoint=True)
        keys = difference.sorted_keys(np.concatenate([keep, fresh]))
        path = tmp / f"r{i}.parquet"
        difference.write_membership(path, keys)
        earlier.append(
            difference.EarlierRelease(
                f"r{i}", "b", f"s{i}", "meta", "act_1", "2025-01-01", int(keys.size), path
            )
        )
    rule = Rule(
        "difference",
        "difference",
        "block",
        DifferenceParams(k_diff=100, on_small_change="hold"),
        "",
        "",
    )
    dest = Destination("meta", "meta", "act_1")
    t = time.perf_counter()
    result = difference.check(rule, dest, "mine", new, earlier)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    new_set = set(new.tolist())
    naive = []
    for e in earlier[:baseline_releases]:
        old = set(pl.read_parquet(e.membership_path).get_column("member_key").to_list())
        naive.append((len(new_set - old), len(old - new_set)))
    naive_s = time.perf_counter() - t
    ours_pairs = [(c.only_new, c.only_old) for c in result.comparisons[:baseline_releases]]
    assert ours_pairs == naive, "searchsorted and Python sets disagree"
    return {
        "ours": ours,
        "naive": naive_s,
        "naive_per_release": naive_s / baseline_releases,
        "ours_per_release": ours / releases,
    }


def composition_check(audiences: int, members: int, runs: int = 5) -> dict[str, float]:
    """Patterns over ``audiences`` live audiences of ``members`` each plus a new release of
    ``members`` (issue #15: 10 x 1M, target <= 2 s), against the pairwise comparisons of the
    same sets in the same run (the check it extends)."""
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2**63, members * 3, dtype=np.uint64)
    others = [
        (f"a{i}", difference.sorted_keys(rng.choice(base, members, replace=False)))
        for i in range(audiences)
    ]
    new = difference.sorted_keys(rng.choice(base, members, replace=False))
    empty = np.zeros(0, dtype=np.uint64)
    ours, pairwise = [], []
    for _ in range(runs):
        t = time.perf_counter()
        result = difference.composition(empty, new, others, 100)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        for _, keys in others:
            difference.compare_sets(new, keys)
        pairwise.append(time.perf_counter() - t)
    return {
        "median": statistics.median(ours),
        "min": min(ours),
        "max": max(ours),
        "pairwise_median": statistics.median(pairwise),
        "patterns": float(result.patterns),
    }


def main(quick: bool = False) -> None:
    n = 1_000_000 if quick else 10_000_000
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with stopped_clock():  # the gate judges people on today: the sample's AS_OF
            g = gate_overhead(n, tmp / "gate")
        diff_dir = tmp / "diff"
        diff_dir.mkdir()
        dc = difference_check(1_000_000, 50, 10 if quick else 50, diff_dir)
        cc = composition_check(10, 1_000_000)
    m = g["candidates"] / 1e6
    rows = [
        ("candidates (after segment filter)", f"{g['candidates']:,}", ""),
        (
            "build-side work (baseline): filter + member_key + age",
            f"{g['build']:.2f} s",
            f"{g['build'] / m:.2f} s/M",
        ),
        (
            "gate total (rules + difference + meta release)",
            f"{g['gate']:.2f} s",
            f"{g['gate'] / m:.2f} s/M",
        ),
        (
            "  of which rules + difference + decision",
            f"{g['rules']:.2f} s",
            f"{g['rules'] / m:.2f} s/M",
        ),
        (
            "  of which release hashing (meta layout)",
            f"{g['materialize']:.2f} s",
            f"{g['materialize'] / m:.2f} s/M",
        ),
        (
            "Release.verify() (seal over every row)",
            f"{g['verify']:.2f} s",
            f"{g['verify'] / m:.2f} s/M",
        ),
        (
            "gate rules / (build-side + gate)",
            f"{100 * g['rules'] / (g['build'] + g['gate']):.1f} %",
            "target <= 20 %",
        ),
        (
            "difference: 1M vs 50 live x 1M (pairwise + patterns)",
            f"{dc['ours']:.2f} s",
            f"{dc['ours_per_release'] * 1000:.0f} ms/release; target <= 2 s",
        ),
        (
            "composition: new 1M vs 10 live x 1M (patterns), median of 5",
            f"{cc['median']:.2f} s",
            f"min {cc['min']:.2f} max {cc['max']:.2f}; {cc['patterns']:.0f} patterns; target <= 2 s",
        ),
        (
            "  baseline: pairwise comparisons of the same sets, median",
            f"{cc['pairwise_median']:.2f} s",
            f"ratio {cc['median'] / cc['pairwise_median']:.1f}x",
        ),
        (
            "difference baseline: Python sets",
            f"{dc['naive']:.2f} s",
            f"{dc['naive_per_release'] * 1000:.0f} ms/release",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"bench_gate ({'quick' if quick else 'full'})")
    for label, value, note in rows:
        print(f"  {label:<{width}}  {value:>12}  {note}")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
