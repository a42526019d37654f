"""k-anonymous exports: checked against pycanon and against brute force over the lattice."""

from __future__ import annotations

import itertools
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from pycanon import anonymity

from audiences.core.errors import ConfigError, DataError, PolicyBlocked, UsageError
from policies.privacy import anonymize as anonymize_module
from policies.privacy.anonymize import (
    HIERARCHIES,
    Hierarchy,
    age_hierarchy,
    anonymize,
    categorical_hierarchy,
    date_hierarchy,
    k_anonymity,
    zip_hierarchy,
)

INSURANCE = ["commercial", "medicare", "medicaid", "self_pay"]


def _people(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "contact_id": [f"C{i:09d}" for i in range(n)],
            "age": rng.integers(18, 95, n),
            "zip": rng.choice(
                ["10001", "10002-1234", "10013", "11201", "94110", "94103", "02139"], n
            ),
            "visit": [date(2024, 1, 1) + timedelta(days=int(d)) for d in rng.integers(0, 700, n)],
            "sex": rng.choice(["F", "M"], n),
            "insurance": rng.choice(INSURANCE, n, p=[0.55, 0.25, 0.15, 0.05]),
        }
    )


def _qis() -> dict[str, Hierarchy]:
    return {
        "age": age_hierarchy(),
        "zip": zip_hierarchy(),
        "visit": date_hierarchy(),
        "sex": categorical_hierarchy(),
    }


def test_hierarchy_levels() -> None:
    frame = pl.DataFrame({"age": [37], "zip": ["10013-4567"], "visit": [date(2024, 3, 15)]})
    ages = [frame.select(age_hierarchy().expr("age", lvl)).item() for lvl in range(5)]
    assert ages == ["37", "35-39", "30-39", "20-39", "*"]
    zips = [frame.select(zip_hierarchy().expr("zip", lvl)).item() for lvl in range(4)]
    assert zips == ["10013", "100**", "1****", "*"]
    dates = [frame.select(date_hierarchy().expr("visit", lvl)).item() for lvl in range(4)]
    assert dates == ["2024-03-15", "2024-03", "2024", "*"]


@pytest.mark.parametrize(
    ("k", "l", "t", "limit"),
    [(5, None, None, 0.05), (10, 2, None, 0.02), (4, None, 0.2, 0.1), (3, 3, 0.25, 0.0)],
)
def test_export_verified_by_pycanon(k: int, l: int | None, t: float | None, limit: float) -> None:  # noqa: E741
    data = _people(1500, seed=k)
    sensitive = "insurance" if (l or t) else None
    result = anonymize(data, _qis(), k=k, l=l, t=t, sensitive=sensitive, suppression_limit=limit)
    out = result.frame
    qis = list(_qis())
    assert "contact_id" not in out.columns
    assert out.columns == qis + ([sensitive] if sensitive else [])
    frame = out.to_pandas()
    assert anonymity.k_anonymity(frame, qis) >= k
    assert anonymity.k_anonymity(frame, qis) == result.metrics.k_achieved == k_anonymity(out, qis)
    if l:
        assert anonymity.l_diversity(frame, qis, [sensitive]) >= l
        assert anonymity.l_diversity(frame, qis, [sensitive]) == result.metrics.l_achieved
    if t:
        assert anonymity.t_closeness(frame, qis, [sensitive]) <= t + 1e-9
        assert anonymity.t_closeness(frame, qis, [sensitive]) == pytest.approx(
            result.metrics.t_achieved
        )
    metrics = result.metrics
    assert metrics.suppressed == data.height - out.height <= limit * data.height
    assert metrics.rows_out == out.height
    assert metrics.classes == out.select(qis).n_unique()


def _brute_force(
    data: pl.DataFrame,
    qis: dict[str, Hierarchy],
    k: int,
    l: int | None,  # noqa: E741
    t: float | None,
    sensitive: str | None,
    limit: float,
) -> tuple[float, tuple[int, ...]] | None:
    """Evaluate every lattice node directly on the generalized rows."""
    names = list(qis)
    n = data.height
    best = None
    for node in itertools.product(*(range(h.height + 1) for h in qis.values())):
        frame = data.select(
            *[qis[q].expr(q, lvl) for q, lvl in zip(names, node, strict=True)],
            *([pl.col(sensitive)] if sensitive else []),
        )
        small = pl.len().over(names) < k
        if l:
            small = small | (pl.col(sensitive).n_unique().over(names) < l)
        kept = frame.filter(~small)
        suppressed = n - kept.height
        if suppressed > limit * n:
            continue
        if t:
            if kept.height == 0:
                continue
            overall = kept[sensitive].value_counts(normalize=True).rename({"proportion": "p"})
            worst = 0.0
            for _, group in kept.group_by(names):
                dist = group[sensitive].value_counts(normalize=True).rename({"proportion": "q"})
                both = overall.join(dist, on=sensitive, how="left").fill_null(0)
                worst = max(worst, 0.5 * float((both["p"] - both["q"]).abs().sum()))
            if worst > t:
                continue
        precision = sum(lvl / h.height for lvl, h in zip(node, qis.values(), strict=True)) / len(
            node
        )
        loss = precision + suppressed / n * (1 - precision)
        key = (loss, precision, node)
        if best is None or key < best:
            best = key
    return None if best is None else (best[0], best[2])


@pytest.mark.parametrize(
    ("seed", "k", "l", "t", "limit"),
    [
        (1, 3, None, None, 0.05),
        (2, 5, None, None, 0.0),
        (3, 4, 2, None, 0.1),
        (4, 3, None, 0.3, 0.05),
        (5, 8, 3, 0.35, 0.2),
    ],
)
def test_search_finds_the_brute_force_optimum(
    seed: int,
    k: int,
    l: int | None,  # noqa: E741
    t: float | None,
    limit: float,
) -> None:
    data = _people(300, seed)
    qis = {"age": age_hierarchy(), "zip": zip_hierarchy(), "sex": categorical_hierarchy()}
    sensitive = "insurance" if (l or t) else None
    expected = _brute_force(data, qis, k, l, t, sensitive, limit)
    assert expected is not None
    result = anonymize(data, qis, k=k, l=l, t=t, sensitive=sensitive, suppression_limit=limit)
    assert result.node == expected[1]
    assert result.metrics.information_loss == pytest.approx(expected[0])
    assert result.nodes_evaluated <= result.nodes_total == 5 * 4 * 2


def _with_nulls(data: pl.DataFrame, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return data.with_columns(
        pl.when(pl.Series(rng.random(data.height) < 0.05)).then(None).otherwise(pl.col(c)).alias(c)
        for c in ("age", "zip")
    )


@pytest.mark.parametrize(
    ("seed", "k", "l", "limit"),
    [(11, 4, None, 0.05), (12, 3, 2, 0.1), (13, 6, None, 0.0), (14, 2, 3, 0.02)],
)
def test_search_finds_the_brute_force_optimum_on_four_qis_with_nulls(
    seed: int,
    k: int,
    l: int | None,  # noqa: E741
    limit: float,
) -> None:
    data = _with_nulls(_people(250, seed), seed)
    sensitive = "insurance" if l else None
    expected = _brute_force(data, _qis(), k, l, None, sensitive, limit)
    if expected is None:
        with pytest.raises(PolicyBlocked):
            anonymize(data, _qis(), k=k, l=l, sensitive=sensitive, suppression_limit=limit)
        return
    result = anonymize(data, _qis(), k=k, l=l, sensitive=sensitive, suppression_limit=limit)
    assert result.node == expected[1]
    assert result.metrics.information_loss == pytest.approx(expected[0])
    assert result.nodes_total == 5 * 4 * 4 * 2


def test_sorted_and_recoded_class_keys_agree_with_bincount(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _with_nulls(_people(3000, seed=21), seed=21)
    arguments = {"k": 5, "l": 2, "t": 0.4, "sensitive": "insurance", "suppression_limit": 0.05}
    dense = anonymize(data, _qis(), **arguments)  # type: ignore[arg-type]
    monkeypatch.setattr(anonymize_module, "_DENSE_SLOTS", 0)  # count by sorting keys
    monkeypatch.setattr(anonymize_module, "_KEY_SPACE", 1 << 8)  # re-code keys densely
    sparse = anonymize(data, _qis(), **arguments)  # type: ignore[arg-type]
    assert sparse.node == dense.node
    assert sparse.metrics == dense.metrics
    assert sparse.frame.equals(dense.frame)


def test_k_anonymity_on_codes_matches_group_by() -> None:
    rng = np.random.default_rng(5)
    n = 5000
    frame = pl.DataFrame(
        {
            "band": pl.Series(rng.choice(["20-29", "30-39", "40-49"], n)).cast(
                pl.Enum(["20-29", "30-39", "40-49"])
            ),
            "zip3": pl.Series(rng.choice(["100**", "112**", None], n)).cast(pl.Categorical),
            "offset": rng.integers(-3, 3, n),
            "flag": rng.random(n) < 0.5,
        }
    ).with_columns(pl.when(pl.col("offset") == 0).then(None).otherwise("offset").alias("offset"))
    columns = frame.columns
    as_text = frame.with_columns(pl.all().cast(pl.String))  # takes the group_by path
    expected = as_text.group_by(columns).len()["len"].min()
    assert k_anonymity(frame, columns) == k_anonymity(as_text, columns) == expected
    assert k_anonymity(frame.head(0), columns) == 0
    assert k_anonymity(frame.lazy(), ["band"]) == frame["band"].value_counts()["count"].min()


def test_named_hierarchies() -> None:
    assert set(HIERARCHIES) == {"age", "zip", "date", "categorical"}
    assert [HIERARCHIES[name]().kind for name in HIERARCHIES] == list(HIERARCHIES)


def test_refuses_when_no_node_qualifies() -> None:
    data = _people(8, seed=1)
    with pytest.raises(PolicyBlocked, match=r"no generalization of age, zip reaches k=10") as info:
        anonymize(data, {"age": age_hierarchy(), "zip": zip_hierarchy()}, k=10)
    assert info.value.exit_code == 3
    assert "closest (age=*, zip=*) suppresses 8 of 8 rows" in str(info.value)
    assert "C0000" not in str(info.value)  # no record values in the message
    one_value = _people(200, seed=2).with_columns(pl.lit("medicare").alias("insurance"))
    with pytest.raises(PolicyBlocked, match=r"reaches k=2, l=2"):
        anonymize(one_value, {"sex": categorical_hierarchy()}, k=2, l=2, sensitive="insurance")


def test_risk_figures() -> None:
    data = pl.DataFrame({"sex": ["F"] * 6 + ["M"] * 4, "zip": ["10001"] * 10})
    qis = {"sex": categorical_hierarchy(), "zip": zip_hierarchy()}
    result = anonymize(data, qis, k=3, suppression_limit=0.0)
    assert result.node == (0, 0)
    risk = result.risk
    assert risk.prosecutor_max == pytest.approx(1 / 4)
    assert risk.prosecutor_average == pytest.approx(2 / 10)
    assert risk.records_at_max_risk == pytest.approx(4 / 10)
    assert (risk.journalist_max, risk.marketer, risk.population) == (1 / 4, 2 / 10, "dataset")
    doubled = anonymize(data, qis, k=3, suppression_limit=0.0, population=pl.concat([data, data]))
    assert doubled.risk.journalist_max == pytest.approx(1 / 8)
    # marketer: (1/n) Σ |class| / |population class| = (6/12 + 4/8) / 10
    assert doubled.risk.marketer == doubled.risk.journalist_average == pytest.approx(0.1)
    assert doubled.risk.population == "given"
    metrics = result.metrics
    assert metrics.discernibility == 6**2 + 4**2
    assert metrics.average_class_size == pytest.approx((10 / 2) / 3)
    assert (metrics.information_loss, metrics.suppressed) == (0.0, 0)


def test_keep_columns_and_sorted_output() -> None:
    data = _people(400, seed=9).with_columns(pl.lit("campaign-a").alias("campaign"))
    result = anonymize(data, {"sex": categorical_hierarchy()}, k=5, keep=["campaign"])
    assert result.frame.columns == ["sex", "campaign"]
    assert result.frame["sex"].is_sorted()


def test_hierarchy_must_be_nested() -> None:
    broken = Hierarchy(
        "broken", ("value", "tens", "sevens"), (lambda x: x, lambda x: x // 10, lambda x: x // 7)
    )
    data = pl.DataFrame({"n": list(range(30))})
    with pytest.raises(ConfigError, match="is not nested"):
        anonymize(data, {"n": broken}, k=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"quasi_identifiers": {"dob": date_hierarchy()}}, DataError, "quasi-identifier 'dob' is not a column"),
        ({"quasi_identifiers": {"age": "age"}}, UsageError, "needs a Hierarchy"),
        ({"quasi_identifiers": {}}, UsageError, "no quasi-identifiers"),
        ({"k": 0}, UsageError, "k must be an integer >= 1, got 0"),
        ({"k": 2.5}, UsageError, "k must be an integer"),
        ({"suppression_limit": 1.0}, UsageError, r"suppression_limit must be a fraction in \[0, 1\)"),
        ({"suppression_limit": -0.1}, UsageError, "suppression_limit must be a fraction"),
        ({"l": 2}, UsageError, "need a sensitive column"),
        ({"t": 0.0, "sensitive": "insurance"}, UsageError, r"t must be in \(0, 1\]"),
        ({"t": 1.5, "sensitive": "insurance"}, UsageError, r"t must be in \(0, 1\]"),
        ({"l": 0, "sensitive": "insurance"}, UsageError, "l must be an integer >= 1"),
        ({"sensitive": "age"}, UsageError, "both a quasi-identifier and the sensitive column"),
        ({"sensitive": "nope"}, DataError, "sensitive column 'nope' is not a column"),
        ({"sensitive": "codes"}, UsageError, "holds lists or structs"),
        ({"keep": ["age"]}, UsageError, "already exported"),
        ({"keep": ["nope"]}, DataError, "column 'nope' to keep is not a column"),
    ],
)  # fmt: skip
def test_bad_inputs(kwargs: dict[str, object], error: type, pattern: str) -> None:
    data = _people(50, seed=1).with_columns(pl.lit(["E11.9"]).alias("codes"))
    arguments: dict[str, object] = {"quasi_identifiers": {"age": age_hierarchy()}, "k": 2}
    arguments.update(kwargs)
    with pytest.raises(error, match=pattern):
        anonymize(data, **arguments)  # type: ignore[arg-type]
