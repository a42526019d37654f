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
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

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


if __name__ == "__main__":
    main()
