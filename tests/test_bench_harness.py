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
