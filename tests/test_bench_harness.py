"""The benchmark harness measures what it says: a child's own peak RSS, not its parent's."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
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


def test_the_sample_n_times_over_is_new_people_with_the_same_rows(tmp_path: Path) -> None:
    """``bench_build --times N``: each copy's CRM ids get their own prefix, in contacts and
    events alike; its e-mails, phones and ZIPs are moved so that no linkage key (mailbox,
    phone, name and postal code) of one person is another copy's, while the duplicate
    records of one person in the sample stay one person in every copy; every other column
    is the original's."""
    import datetime as dt

    import polars as pl

    from audiences.core.config import IdentityMapping
    from audiences.crm.identifiers import normalized_exprs
    from audiences.demo import sample as demo_sample
    from benchmarks.bench_build import multiplied_crm

    folder = tmp_path / "crm-3000"
    folder.mkdir()
    contacts, events = demo_sample.generate(3000, seed=4, as_of=dt.date(2025, 6, 1), abroad=60)
    contacts.write_parquet(folder / "contacts.parquet")
    events.write_parquet(folder / "events.parquet")
    with pytest.raises(ValueError, match="2 to 10"):
        multiplied_crm(folder / "contacts.parquet", folder / "events.parquet", 1)
    c3, e3 = multiplied_crm(folder / "contacts.parquet", folder / "events.parquet", 3)
    assert c3.parent.name == "crm-3000-x3-people"
    assert not list(c3.parent.glob("*.partial"))
    got = pl.read_parquet(c3)
    n = contacts.height
    ids = contacts.get_column("contact_id")
    assert got.get_column("contact_id").to_list() == [
        *ids, *("D" + ids), *("E" + ids)
    ]  # fmt: skip
    moved = {"contact_id", "email", "phone", "zip"}
    for k in range(3):
        copy = got.slice(k * n, n)
        assert copy.drop(*moved).equals(contacts.drop(*moved))
        for column in ("email", "phone", "zip"):  # missing stays missing
            assert copy.get_column(column).is_null().equals(contacts.get_column(column).is_null())
    assert pl.read_parquet(e3).equals(
        pl.concat(
            [events]
            + [
                events.with_columns((pl.lit(p) + pl.col("contact_id")).alias("contact_id"))
                for p in "DE"
            ]
        )
    )

    identity = IdentityMapping(
        email="email", phone="phone", first_name="first_name", last_name="last_name",
        zip="zip", country="country",
    )  # fmt: skip
    keys = normalized_exprs(identity, "google_ads", schema=got.schema)
    normal = got.select(
        copy=pl.int_range(pl.len()) // n,
        row=pl.int_range(pl.len()) % n,
        email=keys["hashed_email"],
        phone=keys["hashed_phone_number"],
        name_zip=pl.concat_str(
            keys["hashed_first_name"], keys["hashed_last_name"], keys["postal_code"],
            separator="|",
        ),
    )  # fmt: skip
    for key in ("email", "phone", "name_zip"):
        present = normal.filter(pl.col(key).is_not_null())
        assert present.height > n  # the key is there to compare
        # the same person in another copy: never the same key
        same_row = present.group_by("row").agg(pl.col(key).n_unique(), pl.len())
        if key != "name_zip":
            assert same_row.filter(pl.col(key) != pl.col("len")).is_empty(), key
        else:  # a ZIP that is not five digits (abroad, missing) keeps its value
            assert same_row.filter(pl.col(key) != pl.col("len")).height < n * 0.05
        # the records sharing a key within the sample share it within every copy
        pairs = present.group_by("copy", key).agg(pl.col("row").sort()).sort("copy")
        per_copy = [
            set(map(tuple, pairs.filter(pl.col("copy") == k).get_column("row").to_list()))
            for k in range(3)
        ]
        assert per_copy[0] == per_copy[1] == per_copy[2], key
    emails, phones = normal.get_column("email"), normal.get_column("phone")
    assert (
        emails.drop_nulls().n_unique()
        == 3 * normal.filter(pl.col("copy") == 0)["email"].drop_nulls().n_unique()
    )
    assert (
        phones.drop_nulls().n_unique()
        == 3 * normal.filter(pl.col("copy") == 0)["phone"].drop_nulls().n_unique()
    )


def test_the_hashing_floor_counts_the_digests_a_release_holds(tmp_path: Path) -> None:
    """Issue #22's "hashing within 1.3× of OpenSSL": the floor is OpenSSL's time for the
    SHA-256 digests the release file holds — its 64-hex values, not its plain columns
    (country and postal code), its nulls or anything that merely looks like hex."""
    import hashlib

    import polars as pl

    from benchmarks.bench_build import released_digests

    digest = hashlib.sha256(b"x").hexdigest()
    pl.DataFrame(
        {
            "meta_EMAIL": [digest, digest, None],
            "meta_EXTERN_ID": ["c1", "c2", "c3"],  # sent as it is: no digest
            "google_ads_country_code": ["US", "US", "CA"],
            "google_ads_postal_code": ["10001", None, "K1A"],
            "short_hex": [digest[:63], digest.upper(), digest + "0"],  # none is a digest
            "google_ads_hashed_phone_number": [digest, None, digest],
            "member_key": pl.Series([1, 2, 3], dtype=pl.UInt64),
        }
    ).write_parquet(tmp_path / "release.parquet")
    assert released_digests(tmp_path / "release.parquet") == 4


def test_openssl_speed_is_read_as_digests_per_second() -> None:
    import shutil

    from benchmarks.bench_build import openssl_sha256_rate, parse_openssl_speed

    text = "type             32 bytes\nsha256          544647.58k\n"
    assert parse_openssl_speed(text) == pytest.approx(544_647_580 / 32)
    with pytest.raises(RuntimeError, match="no sha256 result"):
        parse_openssl_speed("type 32 bytes\nsha512   100.00k\n")
    if shutil.which("openssl") is None:
        assert openssl_sha256_rate(1) is None
    else:  # the real tool, measured: a modern core does millions of short digests a second
        rate = openssl_sha256_rate(1, seconds=1)
        assert rate is not None and rate > 100_000


def test_the_hashing_verdict_is_against_every_core_and_one_core_is_shown(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build's hashing uses both cores: its verdict is against OpenSSL on every core
    (the stricter floor); the one-core ratio is printed beside it, never judged."""
    from benchmarks import ChildRun
    from benchmarks.bench_build import Pair, print_engine_pairs

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    run = ChildRun("", "", 10.0, 1_000_000_000, 0)
    pairs = [
        Pair(
            job, run, run, 100, "rows+emails, all 19", None, 0.8, floor_s=0.4, floor_one_core_s=0.8
        )
        for job in ("first build, fresh project", "second segment, same data")
    ]
    print_engine_pairs(10_000_000, pairs, (1.0, 1.0))
    out = capsys.readouterr().out
    assert (
        "hashing / OpenSSL floor 2.00x (2.00-2.00) on 2 cores, 1.00x (1.00-1.00) on one core" in out
    )
    assert "first build, fresh project hashing <= 1.3x floor MISSED" in out


def test_the_stage_table_gives_each_stage_its_own_work_and_keeps_the_order() -> None:
    """``profile_build``'s table: a stage with timed parts is followed by its own work (its
    time less its parts'), stages keep the order they first opened in, and a stage one
    round never reached counts 0 s there."""
    from benchmarks.profile_build import IN_PROCESS, START, Profile, rows_of, table

    def profile(totals: dict[str, float], in_process: float) -> Profile:
        order = {path: i for i, path in enumerate(totals)}
        return Profile(1.0, 1, totals, order, start=0.25, in_process=in_process)

    a = profile({"c": 3.0, "c / index": 1.0, "c / flag": 0.5, "c / flag / read": 0.25}, 4.0)
    b = profile({"c": 2.0, "c / flag": 0.5, "c / flag / own": 0.5, "gate": 1.0}, 3.5)
    got = rows_of([a, b])
    assert [label for _, label, _ in got] == [
        "wall (the parent's clock)",
        START,
        IN_PROCESS,
        "  c",
        "    index",
        "    flag",
        "      read",
        "      own",
        "      (its own work)",
        "    (its own work)",
        "  gate",
        "  the rest (configuration, state, audit, output)",
    ]
    rows = {key: seconds for key, _, seconds in got}
    assert rows["c / index"] == [1.0, 0.0]  # the second round never reached it
    assert rows["c / flag / read"] == [0.25, 0.0]
    assert rows["c / flag / (own)"] == [0.25, 0.0]  # a stage named "own" is not its own work
    assert rows["c / flag / own"] == [0.0, 0.5]
    assert rows["c / (own)"] == [1.5, 1.5]
    assert rows["gate"] == [0.0, 1.0]
    assert rows["rest"] == [0.75, 0.25]
    # a job's rows follow the shape of every job's stages; a stage it never reached is None
    only_a = {key: seconds for key, _, seconds in rows_of([a], [a, b])}
    assert only_a["gate"] is None and only_a["c / flag / own"] is None
    assert only_a["c / (own)"] == [1.5]
    text = table({"one": [a], "two": [b]})
    gate_line = next(line for line in text.splitlines() if line.startswith("  gate"))
    assert gate_line.split() == ["gate", "-", "1.00"]  # (no CPU recorded: no cores shown)


def test_the_stage_table_gives_the_cores_each_stage_kept_busy() -> None:
    """Cores: CPU seconds over wall seconds, per round, then the median; a stage's own
    work is its CPU less its parts' over its wall less theirs; a stage under 0.02 s shows
    none (two clock reads' noise)."""
    from benchmarks.profile_build import Profile, cores_of, table

    def profile(wall: dict[str, float], cpu: dict[str, float]) -> Profile:
        order = {path: i for i, path in enumerate(wall)}
        return Profile(5.0, 1, wall, order, 0.5, 4.5, cpu, cpu_start=0.5, cpu_in_process=8.5)

    a = profile(
        {"c": 3.0, "c / flag": 1.0, "gate": 0.01}, {"c": 5.0, "c / flag": 1.0, "gate": 0.02}
    )
    b = profile(
        {"c": 3.0, "c / flag": 2.0, "gate": 0.01}, {"c": 6.0, "c / flag": 4.0, "gate": 0.02}
    )
    got = cores_of([a, b])
    assert got["c"] == pytest.approx((5 / 3 + 6 / 3) / 2)
    assert got["c / flag"] == pytest.approx((1.0 + 2.0) / 2)
    assert got["c / (own)"] == pytest.approx(((5 - 1) / 2 + (6 - 4) / 1) / 2)
    assert got["gate"] is None  # 0.01 s: too short to say
    assert got["start"] == pytest.approx(1.0)
    assert got["wall"] == pytest.approx(8.5 / 5.0)
    line = next(row for row in table({"job": [a, b]}).splitlines() if row.startswith("  c "))
    assert line.split()[-1] == "1.83"


def test_the_build_profile_times_the_stages_of_a_real_build(
    sample_crm: Callable[..., Path], tmp_path: Path
) -> None:
    """``python -m benchmarks.profile_build``'s timers are wired to the functions a build
    calls: a renamed or moved function fails here, not in the next session's profile. The
    first build computes and saves the opt-out index, the second segment loads it."""
    from benchmarks.bench_build import SECOND_SEGMENT, SEGMENT, two_segment_project
    from benchmarks.profile_build import STAGES, cores_of, profile_build, rows_of, table

    folder = sample_crm(20_000)  # (at 3000 the second segment is under 100)
    project = two_segment_project(
        tmp_path / "project", folder / "contacts.parquet", folder / "events.parquet"
    )
    first = profile_build(project, SEGMENT)
    second = profile_build(project, SECOND_SEGMENT)
    reached = {path.rsplit(" / ", 1)[-1] for path in first.totals}
    assert reached == {label for _, _, label in STAGES}  # every stage, once wired
    assert "candidates / opt-out index: compute" in first.totals
    assert "candidates / opt-out index: save" in first.totals
    assert "candidates / opt-out index: compute" not in second.totals  # reused
    assert "candidates / opt-out index: load" in second.totals
    assert "candidates / duplicate-of-opt-out flag / records read back" in second.totals
    for p in (first, second):
        assert 0 < p.start < p.in_process <= p.wall
        # a part never takes longer than the stage it runs in: the timers nest
        own = [seconds for key, _, seconds in rows_of([p]) if key.endswith(" / (own)")]
        assert own and min(s for values in own if values for s in values) >= -1e-3
    text = table({"first build": [first], "second segment": [second]})
    assert "records read back" in text and "peak RSS of the child" in text
    for p in (first, second):  # the CPU of every thread: a busy stage shows some
        busy = cores_of([p])
        assert 0 < p.cpu_start < p.cpu_in_process
        assert (
            busy["candidates"] is not None
            and 0.3 < busy["candidates"] <= (os.cpu_count() or 1) + 0.2
        )
