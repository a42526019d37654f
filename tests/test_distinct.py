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
