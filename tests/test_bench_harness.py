"""The benchmark harness measures what it says: a child's own peak RSS, not its parent's."""

from __future__ import annotations

import sys

import pytest

from benchmarks import run_child

GROW = (
    "b = bytearray({n}); [b.__setitem__(i, 1) for i in range(0, len(b), 4096)]; "
    "import time; time.sleep(0.1)"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_childs_peak_rss_is_its_own_not_the_parents_at_fork():
    # Linux carries the forked copy's high-water mark across exec: with ru_maxrss a tiny
    # child of a parent holding 400 MB reported at least 400 MB
    held = bytearray(400_000_000)
    for i in range(0, len(held), 4096):
        held[i] = 1
    small = run_child([sys.executable, "-c", "pass"])
    assert small.peak_rss_bytes < 150_000_000
    grown = run_child([sys.executable, "-c", GROW.format(n=300_000_000)])
    assert 300_000_000 < grown.peak_rss_bytes < 450_000_000
    del held
