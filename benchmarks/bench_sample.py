"""Benchmark the synthetic CRM generator: rows/s and peak memory per size.

Each size runs in its own Python process so its peak RSS is its own. The baseline,
measured in the same run, is a plain per-row Python generator of the identifier columns
(what a naive Faker-style script does), timed on a small size.

    python -m benchmarks.bench_sample [--quick]
"""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import sys
import time

AS_OF = dt.date(2025, 6, 1)
_CHILD = """
import datetime as dt, json, resource, sys, time
from audiences.demo import sample
rows = int(sys.argv[1])
start = time.perf_counter()
contacts, events = sample.generate(rows, seed=0, as_of=dt.date(2025, 6, 1))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "contacts": contacts.height, "events": events.height,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "frame_bytes": contacts.estimated_size() + events.estimated_size()}))
"""


def _measure(rows: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(rows)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _per_row_baseline(rows: int) -> float:
    """Seconds for a per-row Python loop that makes only the identifier columns."""
    rng = random.Random(0)
    firsts, lasts = ["José", "Mary", "Wei", "Zoë"], ["O'Brien", "Nguyễn", "Smith-Jones", "Müller"]
    domains = ["gmail.com", "yahoo.com", "outlook.com"]
    start = time.perf_counter()
    out = []
    for i in range(rows):
        first, last = rng.choice(firsts), rng.choice(lasts)
        out.append(
            {
                "contact_id": f"C{i:09d}",
                "email": f" {first.lower()}.{rng.randint(1, 99)}@{rng.choice(domains)} ",
                "phone": f"({rng.randint(200, 999)}) 555-{rng.randint(0, 9999):04d}",
                "first_name": first,
                "last_name": last,
                "zip": f"{rng.randint(10000, 99999)}",
                "birth_date": AS_OF - dt.timedelta(days=rng.randint(0, 95 * 365)),
            }
        )
    return time.perf_counter() - start


def main(quick: bool = False) -> None:
    sizes = [100_000, 1_000_000] if quick else [100_000, 1_000_000, 10_000_000]
    baseline_rows = 100_000
    baseline = _per_row_baseline(baseline_rows)
    print(f"{'what':<34}{'contacts':>12}{'events':>12}{'seconds':>9}{'rows/s':>13}{'peak RSS':>11}")
    print(
        f"{'baseline: per-row Python (ids only)':<34}{baseline_rows:>12,}{'-':>12}"
        f"{baseline:>9.2f}{baseline_rows / baseline:>13,.0f}{'-':>11}"
    )
    for rows in sizes:
        result = _measure(rows)
        print(
            f"{'sample.generate':<34}{result['contacts']:>12,}{result['events']:>12,}"
            f"{result['seconds']:>9.2f}{rows / result['seconds']:>13,.0f}"
            f"{result['peak_rss_kib'] / 2**20:>9.2f}GB"
        )
        print(
            f"{'  (frames in memory)':<34}{'':>33}{'':>13}{result['frame_bytes'] / 2**30:>9.2f}GB"
        )


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
