"""``audiences.crm.distinct.predicate_by_distinct``: a costly row-wise predicate evaluated
once per distinct combination of its columns gives every row the answer it gives row by row
— true, false and null alike — and falls back to row by row when it cannot help."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiences.crm import distinct
from audiences.crm.distinct import predicate_by_distinct
from audiences.crm.identifiers import IdentityMapping, canonical_expr

STATES = ["NY", "ny", " New York ", "new york", "NJ", "Calif.", "CA", "", "n/a", None, "Wash"]
COUNTRIES = ["US", "usa", "United States", "CA", "Canada", "", None, "DE"]


def _both(frame: pl.DataFrame, predicate: pl.Expr) -> tuple[list, list]:
    rowwise = frame.select(predicate.alias("x")).get_column("x").to_list()
    lookup = predicate_by_distinct(frame.lazy(), predicate)
    return rowwise, frame.select(lookup.alias("x")).get_column("x").to_list()


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(STATES), st.sampled_from(COUNTRIES)), min_size=0, max_size=40
    ),
    wanted=st.lists(st.sampled_from(["NY", "NJ", "CA", "WA"]), min_size=1, max_size=3),
    negate=st.booleans(),
)
def test_the_canonical_state_is_the_same_row_by_row_and_by_distinct_value(rows, wanted, negate):
    """The segment's use: the canonical state (reads state and country) compared with a
    list; nulls, placeholders and full names included, negated or not."""
    frame = pl.DataFrame(
        {"state": [s for s, _ in rows], "country": [c for _, c in rows]},
        schema={"state": pl.String, "country": pl.String},
    )
    identity = IdentityMapping.model_validate({"state": "state", "country": "country"})
    state = canonical_expr(identity, "state", schema=frame.schema)
    predicate = state.is_in(wanted)
    if negate:
        predicate = ~predicate
    rowwise, lookup = _both(frame, predicate)
    assert lookup == rowwise


def test_null_answers_stay_null_and_nulls_match_nulls():
    frame = pl.DataFrame({"a": ["x", None, "y", None], "b": [None, None, "z", "z"]})
    # null where a is null; a == "x" otherwise
    rowwise, lookup = _both(frame, pl.col("a") == "x")
    assert rowwise == lookup == [True, None, False, None]
    rowwise, lookup = _both(frame, pl.col("a").is_null() | (pl.col("a") == "y"))
    assert rowwise == lookup == [False, True, True, True]
    rowwise, lookup = _both(frame, pl.col("a").is_null() & pl.col("b").is_null())
    assert rowwise == lookup == [False, True, False, False]


def test_a_combination_the_first_read_did_not_see_is_null_not_false():
    """The data changed between the lookup's read and the query: a new value matches
    neither side, so neither a condition nor its negation selects the row."""
    seen = pl.DataFrame({"state": ["NY", "NJ"]})
    lookup = predicate_by_distinct(seen.lazy(), pl.col("state") == "NY")
    later = pl.DataFrame({"state": ["NY", "NJ", "TX"]})
    assert later.select(lookup.alias("x")).get_column("x").to_list() == [True, False, None]
    negated = predicate_by_distinct(seen.lazy(), ~(pl.col("state") == "NY"))
    assert later.select(negated.alias("x")).get_column("x").to_list() == [False, True, None]


def test_a_column_that_alone_decides_is_looked_up_alone_and_exactly():
    """The canonical state decides a state condition whatever the (seen) country: the
    lookup reads the state alone, checks that the country is one seen, and answers every
    row as the predicate does — a combination of seen values the read did not see
    included; a value never seen is null, negated or not."""
    identity = IdentityMapping.model_validate({"state": "state", "country": "country"})
    seen = pl.DataFrame(
        {"state": ["NY", "New York", "NJ", None], "country": ["US", "usa", "US", "US"]}
    )
    state = canonical_expr(identity, "state", schema=seen.schema)
    predicate = state.is_in(["NY"])
    assert distinct._decided_by_one_column(seen, predicate) is not None
    later = pl.DataFrame(
        {
            "state": ["NY", "New York", "NJ", None, "NJ", "TX", "NY"],
            "country": ["US", "usa", "US", "US", "usa", "US", "FR"],
        }
    )
    for condition in (predicate, ~predicate):
        lookup = predicate_by_distinct(seen.lazy(), condition)
        got = later.select(lookup.alias("x")).get_column("x").to_list()
        rowwise = later.select(condition.alias("x")).get_column("x").to_list()
        assert got[:5] == rowwise[:5]  # (NJ, usa) was not read, its values were
        assert got[5:] == [None, None]  # TX, FR: never seen


def test_no_column_decides_when_the_answer_needs_both():
    """``a == b`` needs both columns: the lookup stays the table's, row for row."""
    frame = pl.DataFrame({"a": ["x", "y", "x", "y"], "b": ["x", "x", "y", "y"]})
    predicate = pl.col("a") == pl.col("b")
    assert distinct._decided_by_one_column(frame, predicate) is None
    rowwise, lookup = _both(frame, predicate)
    assert lookup == rowwise == [True, False, False, True]


def test_too_many_combinations_for_the_product_keep_the_table(monkeypatch):
    monkeypatch.setattr(distinct, "MAX_DISTINCT", 5)
    frame = pl.DataFrame({"a": ["x", "y", "z"], "b": ["p", "q", "r"]})  # 3 seen, 9 in product
    assert distinct._decided_by_one_column(frame, pl.col("a") == "x") is None
    rowwise, lookup = _both(frame, pl.col("a") == "x")
    assert lookup == rowwise


def test_too_many_distinct_values_evaluates_row_by_row(monkeypatch):
    monkeypatch.setattr(distinct, "MAX_DISTINCT", 3)
    frame = pl.DataFrame({"a": ["p", "q", "r", "s"]})
    predicate = pl.col("a") == "p"
    assert predicate_by_distinct(frame.lazy(), predicate).meta.eq(predicate)
    monkeypatch.setattr(distinct, "MAX_DISTINCT", 4)
    assert not predicate_by_distinct(frame.lazy(), predicate).meta.eq(predicate)


def test_a_failing_first_read_leaves_the_error_to_the_query(tmp_path):
    """An unreadable source is not an empty one: the predicate comes back unchanged and
    the query that reads the source raises (where the build explains read errors)."""
    broken = tmp_path / "contacts.parquet"
    broken.write_bytes(b"not parquet")
    frame = pl.scan_parquet(broken, schema={"state": pl.String})
    predicate = pl.col("state") == "NY"
    assert predicate_by_distinct(frame, predicate).meta.eq(predicate)
    with pytest.raises(pl.exceptions.PolarsError):
        frame.filter(predicate).collect()


def test_a_predicate_without_columns_is_left_alone():
    predicate = pl.lit(True)
    assert predicate_by_distinct(pl.LazyFrame({"a": [1]}), predicate).meta.eq(predicate)


# -- duplicated: polars' is_duplicated, exactly, through a bucket filter ----------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.text(alphabet="ab", max_size=3)), max_size=60),
    st.integers(min_value=1, max_value=8),
)
def test_duplicated_is_is_duplicated_on_any_strings(values: list[str | None], bits: int) -> None:
    """Through the bucket filter whatever the length (``_FEW_ROWS`` 0) and with few
    buckets (``bits``: distinct values share them), nulls included."""
    saved = distinct._FEW_ROWS, distinct._MAX_BUCKET_BITS
    distinct._FEW_ROWS, distinct._MAX_BUCKET_BITS = 0, bits
    try:
        series = pl.Series("p", values, dtype=pl.String)
        assert distinct.duplicated(series).equals(series.is_duplicated())
    finally:
        distinct._FEW_ROWS, distinct._MAX_BUCKET_BITS = saved


@pytest.mark.parametrize("bits", [22, 12, 6, 1])
def test_duplicated_is_is_duplicated_on_a_long_series(bits: int) -> None:
    """200k labels, a few hundred repeated (some three times), nulls, and 64-bit keys: the
    same answer with many buckets (the filter leaves few rows), with few (distinct values
    collide: the exact test must tell them apart) and with one (the whole series)."""
    n = 200_000
    labels = pl.Series("p", [f"C{i:07d}" for i in range(n)])
    repeated = labels.gather(list(range(0, n, 700)) + list(range(0, n, 1400)))
    series = pl.concat([labels, repeated, pl.Series("p", [None, None], dtype=pl.String)])
    series = series.sample(fraction=1.0, shuffle=True, seed=1)
    before = distinct._MAX_BUCKET_BITS
    try:
        distinct._MAX_BUCKET_BITS = bits
        got = distinct.duplicated(series)
        keys = series.hash()
        got_keys = distinct.duplicated(keys)
    finally:
        distinct._MAX_BUCKET_BITS = before
    want = series.is_duplicated()
    assert int(want.sum()) == 2 * 286 + 143 + 2  # (the planted repeats and the nulls)
    assert got.equals(want) and got.name == "p"
    assert got_keys.equals(keys.is_duplicated())


def test_duplicated_of_distinct_values_is_all_false_and_of_one_value_all_true() -> None:
    n = 120_000
    assert not distinct.duplicated(pl.Series(range(n), dtype=pl.UInt64)).any()
    assert distinct.duplicated(pl.Series(["x"] * n)).all()
    assert distinct.duplicated(pl.Series([], dtype=pl.String)).len() == 0
