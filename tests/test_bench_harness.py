"""The benchmark harness measures what it says: a child's own peak RSS, not its parent's."""

from __future__ import annotations

import sys
from pathlib import Path

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


def test_the_sample_n_times_over_has_new_ids_and_the_same_rows(tmp_path: Path) -> None:
    """``bench_build --times N``: each copy's CRM ids get their own prefix, in contacts and
    events alike; every other column is the original's."""
    import polars as pl

    from benchmarks.bench_build import multiplied_crm

    sample = tmp_path / "crm-3"
    sample.mkdir()
    contacts = pl.DataFrame({"contact_id": ["C1", "C2", "C3"], "email": ["a@x", "b@x", None]})
    events = pl.DataFrame({"contact_id": ["C1", "C1", "C3"], "event_type": ["x", "y", "z"]})
    contacts.write_parquet(sample / "contacts.parquet")
    events.write_parquet(sample / "events.parquet")
    with pytest.raises(ValueError, match="2 to 10"):
        multiplied_crm(sample / "contacts.parquet", sample / "events.parquet", 1)
    c3, e3 = multiplied_crm(sample / "contacts.parquet", sample / "events.parquet", 3)
    assert c3.parent.name == "crm-3-x3"
    got = pl.read_parquet(c3)
    assert got.get_column("contact_id").to_list() == [
        *["C1", "C2", "C3"],
        *["DC1", "DC2", "DC3"],
        *["EC1", "EC2", "EC3"],
    ]
    assert got.get_column("email").to_list() == ["a@x", "b@x", None] * 3
    assert pl.read_parquet(e3).get_column("contact_id").to_list() == [
        *["C1", "C1", "C3"],
        *["DC1", "DC1", "DC3"],
        *["EC1", "EC1", "EC3"],
    ]
    assert not list(c3.parent.glob("*.partial"))
