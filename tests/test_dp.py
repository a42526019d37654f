"""DP insights: exact under an (effectively) infinite budget, noise checked statistically apart."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from audiences.core.errors import SegmentError, UsageError
from policies.privacy.dp import (
    NoisyCount,
    age_band_expr,
    age_band_keys,
    dp_breakdown,
    dp_count,
    dp_overlap,
    preview,
    sex_keys,
    us_state_keys,
)

EXACT = 1e9  # noise scale ~1e-9: integer counts come out exact


@pytest.fixture
def people() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "person": ["p1", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9"],
            "age": [20, 20, 25, 30, 41, 55, 70, 90, None, 17],
            "sex": ["F", "F", "M", "F", None, "M", "F", "F", "M", "M"],
            "state": ["NY", "NY", "NY", "CA", "TX", "CA", "NY", "ZZ", None, "NY"],
        }
    )


def test_count_exact(people: pl.DataFrame) -> None:
    assert dp_count(people, epsilon=EXACT) == NoisyCount(10, 10.0, 10.0, EXACT, 1e-9)
    deduped = dp_count(people.lazy(), epsilon=EXACT, person="person")
    assert (deduped.value, deduped.ci95_low, deduped.ci95_high) == (9, 9.0, 9.0)


def test_breakdown_exact_in_key_order(people: pl.DataFrame) -> None:
    keys = pl.DataFrame({"state": ["TX", "NY", "CA", "FL"]})
    result = dp_breakdown(people, ["state"], keys, epsilon=EXACT, person="person")
    expected = (
        people.unique("person")
        .group_by("state")
        .len()
        .join(keys, on="state", how="right")
        .select("state", pl.col("len").fill_null(0).alias("count"))
    )
    assert result.select("state", "count").to_dicts() == expected.to_dicts()
    assert result["count"].to_list() == [1, 4, 2, 0]  # ZZ and null are outside the key set
    assert result.columns == [
        "state", "count", "ci95_low", "ci95_high", "epsilon", "scale", "below_threshold",
    ]  # fmt: skip
    # exact answers: only the empty cell's interval reaches 0
    assert result["below_threshold"].to_list() == [False, False, False, True]


def test_two_dimensional_breakdown_exact(people: pl.DataFrame) -> None:
    keys = pl.DataFrame({"sex": ["F", "M"]}).join(
        pl.DataFrame({"state": ["NY", "CA"]}), how="cross"
    )
    result = dp_breakdown(people, ["sex", "state"], keys, epsilon=EXACT)
    assert result.select("sex", "state", "count").rows() == [
        ("F", "NY", 3),
        ("F", "CA", 1),
        ("M", "NY", 2),
        ("M", "CA", 1),
    ]


def test_preview_exact_and_budget_split(people: pl.DataFrame) -> None:
    result = preview(
        people,
        {"age_band": (age_band_expr("age"), age_band_keys()), "sex": ("sex", sex_keys())},
        epsilon_total=3 * EXACT,
        weights={"count": 1, "age_band": 1, "sex": 1},
    )
    assert result.count.value == 10
    assert result.epsilon_used == pytest.approx({"count": EXACT, "age_band": EXACT, "sex": EXACT})
    assert sum(result.epsilon_used.values()) == pytest.approx(result.epsilon_total)
    bands = dict(result.breakdowns["age_band"].select("age_band", "count").rows())
    assert bands == {
        "18-27": 2 + 1,  # 20, 20, 25 ; 17 and null are not counted
        "28-37": 1,
        "38-47": 1,
        "48-57": 1,
        "58-67": 0,
        "68-77": 1,
        "78-84": 0,
        "85+": 1,
    }
    assert dict(result.breakdowns["sex"].select("sex", "count").rows()) == {"F": 5, "M": 4}


def test_preview_weights_split_epsilon(people: pl.DataFrame) -> None:
    result = preview(
        people, {"sex": ("sex", sex_keys())}, epsilon_total=1.0, weights={"count": 3, "sex": 1}
    )
    assert result.epsilon_used == pytest.approx({"count": 0.75, "sex": 0.25})
    assert result.count.scale == pytest.approx(1 / 0.75)
    assert result.breakdowns["sex"]["scale"][0] == pytest.approx(1 / 0.25)


def test_overlap_exact() -> None:
    members = {
        "a": pl.DataFrame({"member_key": ["x", "y", "z", "z"]}),
        "b": pl.LazyFrame({"member_key": ["y", "z", "w"]}),
        "c": pl.DataFrame({"member_key": ["z", "v"]}),
    }
    result = dp_overlap(members, epsilon=EXACT)
    assert result.matrix.rows() == [("a", 3, 2, 1), ("b", 2, 3, 1), ("c", 1, 1, 2)]
    assert dict(result.cells.select("segments", "count").rows()) == {
        "a": 1, "b": 1, "a+b": 1, "c": 1, "a+c": 0, "b+c": 0, "a+b+c": 1,
    }  # fmt: skip
    assert result.accuracy_pairs == 0.0


def test_age_band_keys_cover_expr() -> None:
    ages = pl.DataFrame({"age": list(range(18, 110))})
    labels = ages.select(age_band_expr("age", 5)).to_series().unique().to_list()
    assert set(labels) == set(age_band_keys(5))
    assert age_band_keys(10)[:2] == ["18-27", "28-37"] and age_band_keys(10)[-1] == "85+"
    assert len(us_state_keys()) == 51


@pytest.mark.parametrize("epsilon", [0, -1, float("nan"), float("inf"), "1", True])
def test_bad_epsilon(people: pl.DataFrame, epsilon: object) -> None:
    with pytest.raises(UsageError, match="epsilon must be") as info:
        dp_count(people, epsilon=epsilon)  # type: ignore[arg-type]
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("dimensions", "error", "pattern"),
    [
        ({"zip": ("zip", ["10001"])}, SegmentError, r"dimension 'zip' uses 'zip', which is not a column"),
        ({"x": (pl.col("nope") + 1, ["1"])}, SegmentError, "'nope', which is not a column"),
        ({"state": ("state", [f"S{i}" for i in range(65)])}, UsageError, "65 categories, more than the limit of 64"),
        ({"state": ("state", [])}, UsageError, "has no public keys"),
        ({"state": ("state", ["NY", "NY"])}, UsageError, "contain duplicates"),
        ({"state": ("state", [1, 2])}, UsageError, "must be strings"),
        ({"state": "state"}, UsageError, r"must be \(column or expression, public keys\)"),
        ({"state": (3, ["NY"])}, UsageError, "must be a column name or a polars expression"),
        ({"count": ("state", ["NY"])}, UsageError, "may not be called 'count'"),
    ],
)  # fmt: skip
def test_bad_dimensions(
    people: pl.DataFrame, dimensions: dict[str, object], error: type, pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        preview(people, dimensions, epsilon_total=1.0)


@pytest.mark.parametrize(
    ("by", "keys", "pattern"),
    [
        (["state"], pl.DataFrame({"sex": ["F"]}), r"keys have columns \['sex'\], expected exactly \['state'\]"),
        (["state"], pl.DataFrame({"state": ["NY", "NY"]}), "duplicate cells"),
        (["state"], pl.DataFrame({"state": ["NY", None]}), "contain nulls"),
        (["state"], {"state": ["NY"]}, "must be a polars DataFrame"),
        (["state"], pl.DataFrame({"state": [f"S{i}" for i in range(70)]}), "70 cells, more than the limit"),
    ],
)  # fmt: skip
def test_bad_breakdown_keys(
    people: pl.DataFrame, by: list[str], keys: object, pattern: str
) -> None:
    with pytest.raises(UsageError, match=pattern):
        dp_breakdown(people, by, keys, epsilon=1.0)  # type: ignore[arg-type]


def test_bad_preview_weights_and_overlap_inputs(people: pl.DataFrame) -> None:
    with pytest.raises(UsageError, match="weights must name exactly"):
        preview(people, {"sex": ("sex", sex_keys())}, epsilon_total=1.0, weights={"count": 1})
    with pytest.raises(UsageError, match="weight of 'sex' must be finite and > 0"):
        preview(
            people, {"sex": ("sex", sex_keys())}, epsilon_total=1.0, weights={"count": 1, "sex": 0}
        )
    with pytest.raises(SegmentError, match="person column 'who' is not a column"):
        dp_count(people, epsilon=1.0, person="who")
    with pytest.raises(UsageError, match="1 to 6 segments, got 7"):
        dp_overlap({str(i): people for i in range(7)}, epsilon=1.0)
    with pytest.raises(SegmentError, match="member set 'a' has no 'member_key' column"):
        dp_overlap({"a": people}, epsilon=1.0)


# -- statistical checks (OpenDP draws from the OS CSPRNG: it can't be seeded, so the
#    tolerances are set for a failure probability well below 1e-6) -----------------------------


def test_noise_matches_reported_scale_and_interval() -> None:
    cells = [f"c{i}" for i in range(2000)]
    data = pl.DataFrame({"cell": cells[:1000] * 3})  # 3 people in the first 1000 cells, 0 after
    epsilon = 0.25
    result = dp_breakdown(
        data, ["cell"], pl.DataFrame({"cell": cells}), epsilon=epsilon, max_categories=2000
    )
    truth = np.array([3] * 1000 + [0] * 1000)
    noise = result["count"].to_numpy() - truth
    scale = result["scale"][0]
    assert scale == pytest.approx(1 / epsilon)
    # integer Laplace: variance 2q/(1-q)^2 with q = exp(-1/scale)
    q = math.exp(-1 / scale)
    expected_std = math.sqrt(2 * q) / (1 - q)
    assert abs(noise.mean()) < 6 * expected_std / math.sqrt(len(noise))
    assert noise.std() == pytest.approx(expected_std, rel=0.15)
    inside = (result["ci95_low"].to_numpy() <= truth) & (truth <= result["ci95_high"].to_numpy())
    assert 0.925 <= inside.mean() <= 0.985
    assert (noise != 0).mean() > 0.5  # noise is really there


def test_overlap_interval_covers_truth() -> None:
    rng = np.random.default_rng(7)  # the data is seeded; the DP noise can't be
    keys = [f"m{i}" for i in range(3000)]
    members = {
        name: pl.DataFrame({"member_key": rng.choice(keys, 1200, replace=False)})
        for name in ("a", "b", "c", "d")
    }
    exact = dp_overlap(members, epsilon=EXACT).matrix
    hits, pairs_hits, draws = 0, 0, 60
    for _ in range(draws):
        noisy = dp_overlap(members, epsilon=0.5)
        error = noisy.matrix.drop("segment").to_numpy() - exact.drop("segment").to_numpy()
        hits += int(abs(error[0, 0]) <= noisy.accuracy_diagonal)
        pairs_hits += int(abs(error[0, 1]) <= noisy.accuracy_pairs)
    assert exact.row(0)[1] == 1200
    assert hits >= draws * 0.82 and pairs_hits >= draws * 0.82
