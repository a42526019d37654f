"""Differentially private insights with OpenDP 0.16 (polars integration).

Numbers shown to marketers — sizes, breakdowns, overlaps — go through here
(docs/privacy-insights.md §1). Every figure comes with the noise scale OpenDP used and a 95 %
interval derived from that noise distribution (OpenDP's accuracy helpers), never from
the exact value.

Privacy unit
    One row per person, each person contributing at most one row
    (``dp.unit_of(contributions=1)``). Callers pass a frame already deduplicated per
    person, or name the person column with ``person=`` and we keep one row per person
    before the data reaches OpenDP.

Public keys
    Breakdowns count people per cell of a *public* key set (``with_keys``): keys come
    from configuration or public knowledge (age bands, US states, the segment list),
    **never from the data** — a key that exists only because someone has that value
    would disclose that person. Values outside the key set are not counted. A dimension
    with more than ``max_categories`` (default 64) keys is refused.

Budget
    These functions spend exactly the ε they are given, in one OpenDP compositor per call
    (``preview`` splits its ε over the count and each breakdown by weights). They do not
    touch the ledger: the caller spends from :class:`policies.privacy.ledger.Ledger` *first*, then
    queries; a query that fails after the spend still counts.

Speed
    OpenDP's ``LazyFrameQuery.resolve()`` binary-searches the noise scale (hundreds of
    measurement constructions, ~0.6-0.8 s per query) and ``Context.compositor`` does the
    same for the split. We build the same measurements with ``make_private_lazyframe`` and
    an explicit ``global_scale``: the scale is read off OpenDP's own privacy map at scale 1
    (ε is inversely proportional to the scale for Laplace counts) and the final
    measurement is accepted only if OpenDP's privacy map says it spends at most its share
    (nudged upward otherwise). The compositor is ``make_adaptive_composition`` with the
    exact per-query ε (pure-DP composition is additive, so there is nothing to search).
    Dimension columns are handed to OpenDP as ``Enum`` columns whose categories are the
    public keys, which makes the data hand-over (OpenDP serializes the LazyFrame) ~15x
    smaller than strings. See ``benchmarks/bench_dp.py``.

Exact mode for tests
    OpenDP has no infinite budget for these measurements; ``epsilon=1e9`` gives a noise
    scale of ~1e-9 and integer counts that are exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from types import SimpleNamespace
from typing import Any

import numpy as np

# The parts of OpenDP this module uses, imported one by one: ``opendp.prelude`` also
# imports scikit-learn when it is installed, which costs ~1.5 s at every CLI start.
import opendp.combinators as _opendp_c
import opendp.extras.polars as _opendp_polars
import opendp.measurements as _opendp_m
import polars as pl
from opendp.accuracy import (
    discrete_laplacian_scale_to_accuracy,
    summarize_polars_measurement,
)
from opendp.context import Context, domain_of, unit_of
from opendp.measures import max_divergence
from opendp.metrics import symmetric_distance
from opendp.mod import enable_features

from audiences.core.errors import InternalError, SegmentError, UsageError

dp = SimpleNamespace(
    Context=Context,
    c=_opendp_c,
    m=_opendp_m,
    discrete_laplacian_scale_to_accuracy=discrete_laplacian_scale_to_accuracy,
    summarize_polars_measurement=summarize_polars_measurement,
    domain_of=domain_of,
    unit_of=unit_of,
    max_divergence=max_divergence,
    symmetric_distance=symmetric_distance,
    enable_features=enable_features,
    len=_opendp_polars.dp_len,
    polars=_opendp_polars,
)

# OpenDP keeps its non-vetted ("contrib") measurements off until explicitly enabled. We
# enable them here, and only here: this module is the one place that releases DP figures.
dp.enable_features("contrib")

__all__ = [
    "DEFAULT_MAX_CATEGORIES",
    "Dimension",
    "NoisyCount",
    "OverlapResult",
    "PreviewResult",
    "age_band_expr",
    "age_band_keys",
    "dp_breakdown",
    "dp_count",
    "dp_overlap",
    "preview",
    "sex_keys",
    "us_state_keys",
]

DEFAULT_MAX_CATEGORIES = 64
MAX_OVERLAP_SEGMENTS = 6
ALPHA = 0.05  # 95 % intervals

_PERSON = "_person"
_COUNT = "count"


# -- public key sets ----------------------------------------------------------------------------


US_STATES: tuple[str, ...] = (
    "AK", "AL", "AR", "AZ", "CA", "CO", "CT", "DC", "DE", "FL", "GA", "HI", "IA", "ID",
    "IL", "IN", "KS", "KY", "LA", "MA", "MD", "ME", "MI", "MN", "MO", "MS", "MT", "NC",
    "ND", "NE", "NH", "NJ", "NM", "NV", "NY", "OH", "OK", "OR", "PA", "RI", "SC", "SD",
    "TN", "TX", "UT", "VA", "VT", "WA", "WI", "WV", "WY",
)  # fmt: skip


def age_band_keys(width: int = 10, *, start: int = 18, top: int = 85) -> list[str]:
    """Public age-band labels: ``18-27, 28-37, ..., 85+`` (``width`` years per band)."""
    if width < 1 or start < 0 or top <= start:
        raise UsageError(
            f"bad age bands (width={width}, start={start}, top={top})",
            "use width >= 1 and 0 <= start < top",
        )
    keys = [f"{low}-{min(low + width, top) - 1}" for low in range(start, top, width)]
    return [*keys, f"{top}+"]


def age_band_expr(
    age: str | pl.Expr, width: int = 10, *, start: int = 18, top: int = 85
) -> pl.Expr:
    """The age-band label (matching :func:`age_band_keys`) of an integer age expression;
    ages below ``start`` or null map to null (not counted)."""
    age_expr = pl.col(age) if isinstance(age, str) else age
    age_expr = age_expr.cast(pl.Int64)
    low = start + ((age_expr - start) // width) * width
    high = pl.min_horizontal(low + width, pl.lit(top)) - 1
    band = low.cast(pl.String) + pl.lit("-") + high.cast(pl.String)
    return (
        pl.when(age_expr >= top)
        .then(pl.lit(f"{top}+"))
        .when(age_expr >= start)
        .then(band)
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def us_state_keys() -> list[str]:
    """The 50 US states and DC (two-letter codes) — 51 public keys."""
    return list(US_STATES)


def sex_keys() -> list[str]:
    """``F``, ``M`` (unknown sex is not a cell: nulls are not counted)."""
    return ["F", "M"]


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoisyCount:
    """A differentially private count.

    ``value`` is the raw noisy count (unbiased; may be slightly negative for tiny groups).
    ``ci95_low``/``ci95_high`` bound the true count with 95 % probability, from the noise
    distribution (the low end is clamped at 0, since a true count can't be negative).
    ``scale`` is the noise scale OpenDP used; ``epsilon`` the budget this figure spent.
    """

    value: int
    ci95_low: float
    ci95_high: float
    epsilon: float
    scale: float

    @property
    def shown(self) -> int:
        """The figure to show a person: the noisy value, floored at 0."""
        return max(self.value, 0)


@dataclass(frozen=True, slots=True)
class PreviewResult:
    """A segment preview: one count plus one breakdown per dimension, one compositor."""

    count: NoisyCount
    breakdowns: dict[str, pl.DataFrame]
    epsilon_used: dict[str, float]
    epsilon_total: float


@dataclass(frozen=True, slots=True)
class OverlapResult:
    """Noisy pairwise overlaps between segments.

    ``matrix`` has a ``segment`` column and one column per segment: the diagonal holds the
    noisy segment sizes, off-diagonal cells the noisy intersection sizes.
    ``accuracy_diagonal`` / ``accuracy_pairs`` are the 95 % half-widths of those figures.
    ``cells`` holds the released noisy Venn cells they were summed from.
    """

    segments: list[str]
    matrix: pl.DataFrame
    cells: pl.DataFrame
    accuracy_diagonal: float
    accuracy_pairs: float
    epsilon: float
    scale: float


@dataclass(frozen=True, slots=True)
class Dimension:
    """A breakdown dimension: a column or expression, and its public key set."""

    name: str
    expr: pl.Expr
    keys: tuple[str, ...] = field(default=())


# -- validation -------------------------------------------------------------------------------


def _check_epsilon(epsilon: float, what: str = "epsilon") -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        raise UsageError(f"{what} must be a number, got {type(epsilon).__name__}")
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise UsageError(
            f"{what} must be finite and > 0, got {epsilon}",
            "ask for a positive epsilon such as 0.5",
        )
    return float(epsilon)


def _check_keys(name: str, keys: Sequence[str] | pl.Series, max_categories: int) -> tuple[str, ...]:
    if isinstance(keys, pl.LazyFrame | pl.DataFrame):
        raise UsageError(
            f"keys of dimension {name!r} must be a list of labels",
            "pass the public labels, e.g. age_band_keys()",
        )
    values = keys.to_list() if isinstance(keys, pl.Series) else list(keys)
    if not values:
        raise UsageError(
            f"dimension {name!r} has no public keys",
            "list its categories from configuration, e.g. age_band_keys()",
        )
    if any(not isinstance(value, str) for value in values):
        raise UsageError(
            f"keys of dimension {name!r} must be strings",
            "give labels as text, e.g. ['F', 'M']",
        )
    if len(set(values)) != len(values):
        raise UsageError(f"keys of dimension {name!r} contain duplicates", "list each key once")
    if len(values) > max_categories:
        raise UsageError(
            f"dimension {name!r} has {len(values)} categories, more than the limit of "
            f"{max_categories}",
            "coarsen it (e.g. wider bands, regions instead of ZIP codes) — each extra cell "
            "costs accuracy",
        )
    return tuple(values)


def _dimension(name: str, spec: Any, schema: pl.Schema, max_categories: int) -> Dimension:
    if isinstance(spec, Dimension):
        expr, keys = spec.expr, spec.keys
    else:
        try:
            expr, keys = spec
        except (TypeError, ValueError):
            raise UsageError(
                f"dimension {name!r} must be (column or expression, public keys)",
                "e.g. {'age_band': (age_band_expr('age'), age_band_keys())}",
            ) from None
    if isinstance(expr, str):
        expr = pl.col(expr)
    if not isinstance(expr, pl.Expr):
        raise UsageError(
            f"dimension {name!r} must be a column name or a polars expression",
            "e.g. 'state' or age_band_expr('age')",
        )
    missing = [root for root in expr.meta.root_names() if root not in schema]
    if missing:
        raise SegmentError(
            f"dimension {name!r} uses {', '.join(map(repr, missing))}, which is not a column "
            f"(columns: {', '.join(schema.names())})",
            "use one of the listed columns",
        )
    return Dimension(name, expr, _check_keys(name, keys, max_categories))


def _prepare(
    lf: pl.LazyFrame | pl.DataFrame, dimensions: Sequence[Dimension], person: str | None
) -> pl.LazyFrame:
    """The narrow frame OpenDP sees: one row per person, one Enum column per dimension."""
    frame = lf.lazy() if isinstance(lf, pl.DataFrame) else lf
    schema = frame.collect_schema()
    if person is not None:
        if person not in schema:
            raise SegmentError(
                f"person column {person!r} is not a column (columns: {', '.join(schema.names())})",
                "name the column that identifies a person",
            )
        frame = frame.unique(subset=[person], keep="any")
    columns = [pl.repeat(True, pl.len()).alias(_PERSON)]
    columns += [
        dim.expr.cast(pl.String).cast(pl.Enum(dim.keys), strict=False).alias(dim.name)
        for dim in dimensions
    ]
    return frame.select(columns).collect().lazy()


# -- OpenDP plumbing ------------------------------------------------------------------------------


class _Compositor:
    """One OpenDP adaptive compositor over ``data`` with fixed per-query ε."""

    def __init__(self, data: pl.LazyFrame, epsilons: Sequence[float]) -> None:
        self.schema = data.collect_schema()
        self.domain = dp.domain_of(data, infer=True)  # reads the schema only
        self.metric = dp.symmetric_distance()
        self.measure = dp.max_divergence()
        accountant = dp.c.make_adaptive_composition(
            self.domain, self.metric, self.measure, d_in=1, d_mids=list(epsilons)
        )
        self.context = dp.Context(
            accountant=accountant,
            queryable=accountant(data),
            d_in=1,
            d_mids=list(epsilons),
            d_out=float(sum(epsilons)),
        )

    def plan(self) -> pl.LazyFrame:
        """An empty LazyFrame with the data's schema, to write the query plan on."""
        return pl.LazyFrame(schema=self.schema)

    def _measurement(self, plan: pl.LazyFrame, scale: float) -> Any:
        return dp.m.make_private_lazyframe(
            self.domain, self.metric, self.measure, plan, global_scale=scale
        )

    def release(self, plan: pl.LazyFrame, epsilon: float) -> tuple[pl.DataFrame, float, float]:
        """Run ``plan`` spending ``epsilon``; returns (released frame, scale, 95 % accuracy)."""
        at_unit_scale = float(self._measurement(plan, 1.0).map(1))
        scale = at_unit_scale / epsilon
        for _ in range(8):
            measurement = self._measurement(plan, scale)
            if measurement.map(1) <= epsilon:
                break
            scale = math.nextafter(scale, math.inf) * (1 + 1e-12)
        else:  # pragma: no cover - OpenDP's map is monotone in the scale
            raise InternalError(f"could not calibrate the noise scale for epsilon={epsilon}")
        summary = dp.summarize_polars_measurement(measurement, ALPHA)
        scales = summary["scale"].to_list()
        if any(abs(s - scale) > 1e-9 * max(scale, 1.0) for s in scales):
            raise InternalError(f"OpenDP reports scales {scales}, expected {scale}")
        accuracy = _accuracy(float(summary["accuracy"][0]), scale)
        released = self.context(measurement).collect()
        return released, scale, accuracy


def _accuracy(reported: float, scale: float) -> float:
    """OpenDP's 95 % accuracy, sanitized: at near-zero scales it reports -inf (read: 0)."""
    if math.isnan(reported):
        raise InternalError(f"OpenDP reported no accuracy for noise scale {scale}")
    return max(reported, 0.0) if reported != math.inf else math.inf


def _sum_accuracy(scale: float, terms: int, alpha: float = ALPHA) -> float:
    """95 % half-width of a sum of ``terms`` independent integer-Laplace(scale) noises.

    Integer Laplace noise is the difference of two geometric variables with
    ``q = exp(-1/scale)``; a sum of ``terms`` of them is the difference of two negative
    binomials NB(terms, q). We compute that distribution exactly (numpy) and return the
    smallest ``a`` with ``P(|noise| > a) <= alpha``.
    """
    if terms == 1:
        return _accuracy(float(dp.discrete_laplacian_scale_to_accuracy(scale, alpha)), scale)
    q = math.exp(-1.0 / scale) if scale > 0 else 0.0
    if q < 1e-300:
        return 0.0
    mean = terms * q / (1 - q)
    length = int(mean * 12 + 60 * math.sqrt(terms) * (1 + scale) + 64)
    j = np.arange(length, dtype=np.float64)
    # NB pmf by its ratio recurrence: pmf(j+1)/pmf(j) = q (j + terms) / (j + 1)
    log_pmf = terms * math.log1p(-q) + np.concatenate(
        ([0.0], np.cumsum(np.log(q * (j[:-1] + terms) / (j[:-1] + 1))))
    )
    pmf = np.exp(log_pmf)
    size = 1 << (2 * length - 1).bit_length()
    spectrum = np.fft.rfft(pmf, size)
    cross = np.fft.irfft(spectrum * np.conj(spectrum), size)[:length]  # P(S = s), s >= 0
    cross = np.clip(cross, 0.0, None)
    two_sided = cross.copy()
    two_sided[1:] *= 2  # P(|S| = s)
    two_sided /= two_sided.sum()
    inside = np.cumsum(two_sided)
    return float(np.searchsorted(inside, 1 - alpha - 1e-12))


def _noisy(value: int, accuracy: float, epsilon: float, scale: float) -> NoisyCount:
    return NoisyCount(
        value=int(value),
        ci95_low=max(float(value) - accuracy, 0.0),
        ci95_high=float(value) + accuracy,
        epsilon=epsilon,
        scale=scale,
    )


def _count_plan(compositor: _Compositor) -> pl.LazyFrame:
    return compositor.plan().select(dp.len(signed=True).alias(_COUNT))


def _breakdown_plan(compositor: _Compositor, by: list[str], keys: pl.DataFrame) -> pl.LazyFrame:
    # the same as LazyFrameQuery.with_keys: a left join from the public key set
    grouped = compositor.plan().group_by(by).agg(dp.len(signed=True).alias(_COUNT))
    return keys.lazy().join(grouped, on=by, how="left", nulls_equal=True)


def _breakdown_frame(
    released: pl.DataFrame,
    keys: pl.DataFrame,
    by: list[str],
    accuracy: float,
    epsilon: float,
    scale: float,
) -> pl.DataFrame:
    """Released cells in key order, labels as text, with the 95 % interval."""
    as_text = [pl.col(column).cast(pl.String) for column in by]
    ordered = (
        keys.with_columns(as_text)
        .with_row_index("_order")
        .join(released.with_columns(as_text), on=by, how="left", nulls_equal=True)
    )
    if ordered[_COUNT].null_count():
        raise InternalError("OpenDP released a breakdown without some public key")
    return ordered.sort("_order").select(
        *[pl.col(column).cast(pl.String) for column in by],
        pl.col(_COUNT).cast(pl.Int64),
        (pl.col(_COUNT) - accuracy).clip(lower_bound=0).cast(pl.Float64).alias("ci95_low"),
        (pl.col(_COUNT) + accuracy).cast(pl.Float64).alias("ci95_high"),
        pl.lit(epsilon).alias("epsilon"),
        pl.lit(scale).alias("scale"),
        # The 95 % interval reaches 0: the cell is indistinguishable from noise and is
        # shown as "below its upper bound", not as a number (post-processing: no budget).
        (pl.col(_COUNT) - accuracy <= 0).alias("below_threshold"),
    )


def _enum_keys(keys: pl.DataFrame, by: Sequence[str]) -> pl.DataFrame:
    return keys.select(
        pl.col(column).cast(pl.Enum(keys[column].unique(maintain_order=True).to_list()))
        for column in by
    )


# -- queries ------------------------------------------------------------------------------------


def dp_count(
    lf: pl.LazyFrame | pl.DataFrame, *, epsilon: float, person: str | None = None
) -> NoisyCount:
    """Differentially private number of people in ``lf`` (one row per person, or give
    ``person=`` to deduplicate on that column first)."""
    epsilon = _check_epsilon(epsilon)
    compositor = _Compositor(_prepare(lf, [], person), [epsilon])
    released, scale, accuracy = compositor.release(_count_plan(compositor), epsilon)
    return _noisy(released[_COUNT][0], accuracy, epsilon, scale)


def dp_breakdown(
    lf: pl.LazyFrame | pl.DataFrame,
    by: list[str],
    keys: pl.DataFrame,
    *,
    epsilon: float,
    person: str | None = None,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
) -> pl.DataFrame:
    """Noisy counts of people per cell of the public key set ``keys`` (columns ``by``).

    Returns one row per key, in key order: ``*by, count, ci95_low, ci95_high, epsilon,
    scale, below_threshold`` (the interval includes 0). Cells absent from the data are still released (with noise) — the key set is
    public, so its shape says nothing about the data.
    """
    epsilon = _check_epsilon(epsilon)
    if not isinstance(keys, pl.DataFrame):
        raise UsageError(
            "breakdown keys must be a polars DataFrame of public labels",
            "build it from configuration, e.g. pl.DataFrame({'state': us_state_keys()})",
        )
    if not by or list(keys.columns) != list(by):
        raise UsageError(
            f"breakdown keys have columns {keys.columns}, expected exactly {by}",
            "give one key column per grouping column, in the same order",
        )
    frame = lf.lazy() if isinstance(lf, pl.DataFrame) else lf
    schema = frame.collect_schema()
    keys = keys.select(pl.col(column).cast(pl.String) for column in by)
    if keys.null_count().sum_horizontal()[0]:
        raise UsageError("breakdown keys contain nulls", "list only real labels")
    if keys.is_duplicated().any():
        raise UsageError("breakdown keys contain duplicate cells", "list each cell once")
    if keys.height > max_categories:
        raise UsageError(
            f"breakdown over {by} has {keys.height} cells, more than the limit of {max_categories}",
            "coarsen the dimensions or break down by fewer of them",
        )
    dimensions = [
        _dimension(
            column, (column, keys[column].unique(maintain_order=True)), schema, max_categories
        )
        for column in by
    ]
    compositor = _Compositor(_prepare(frame, dimensions, person), [epsilon])
    enum_keys = _enum_keys(keys, by)
    released, scale, accuracy = compositor.release(
        _breakdown_plan(compositor, list(by), enum_keys), epsilon
    )
    return _breakdown_frame(released, enum_keys, list(by), accuracy, epsilon, scale)


def preview(
    lf: pl.LazyFrame | pl.DataFrame,
    dimensions: Mapping[str, Any],
    *,
    epsilon_total: float,
    weights: Mapping[str, float] | None = None,
    person: str | None = None,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
) -> PreviewResult:
    """A noisy count plus one noisy breakdown per dimension, spending ``epsilon_total`` in
    one OpenDP compositor split by ``weights`` (default: equal shares; keys ``"count"`` and
    the dimension names).

    ``dimensions`` maps a name to ``(column name or polars expression, public keys)``,
    e.g. ``{"age_band": (age_band_expr("age"), age_band_keys())}``.
    """
    epsilon_total = _check_epsilon(epsilon_total, "epsilon_total")
    frame = lf.lazy() if isinstance(lf, pl.DataFrame) else lf
    schema = frame.collect_schema()
    if _COUNT in dimensions:
        raise UsageError(f"a dimension may not be called {_COUNT!r}", "rename it")
    dims = [_dimension(name, spec, schema, max_categories) for name, spec in dimensions.items()]
    names = [_COUNT, *(dim.name for dim in dims)]
    raw = {name: 1.0 for name in names} if weights is None else dict(weights)
    unknown = sorted(set(raw) - set(names))
    if unknown or set(raw) != set(names):
        raise UsageError(
            f"preview weights must name exactly {names}, got {sorted(raw)}",
            "give one weight per query: 'count' and each dimension",
        )
    for name, weight in raw.items():
        _check_epsilon(weight, f"weight of {name!r}")
    total_weight = sum(raw.values())
    shares = {name: epsilon_total * raw[name] / total_weight for name in names}

    compositor = _Compositor(_prepare(frame, dims, person), [shares[name] for name in names])
    released, scale, accuracy = compositor.release(_count_plan(compositor), shares[_COUNT])
    count = _noisy(released[_COUNT][0], accuracy, shares[_COUNT], scale)
    breakdowns = {}
    for dim in dims:
        keys = pl.DataFrame({dim.name: pl.Series(dim.keys, dtype=pl.Enum(dim.keys))})
        released, scale, accuracy = compositor.release(
            _breakdown_plan(compositor, [dim.name], keys), shares[dim.name]
        )
        breakdowns[dim.name] = _breakdown_frame(
            released, keys, [dim.name], accuracy, shares[dim.name], scale
        )
    return PreviewResult(
        count=count, breakdowns=breakdowns, epsilon_used=shares, epsilon_total=epsilon_total
    )


def dp_overlap(
    member_sets: Mapping[str, pl.LazyFrame | pl.DataFrame],
    *,
    epsilon: float,
    member_key: str = "member_key",
) -> OverlapResult:
    """Noisy sizes and pairwise intersections of up to 6 segments, in ONE query.

    Each person (``member_key``) gets a membership pattern — which of the segments they are
    in — and we release the noisy number of people per pattern (the Venn cells; the public
    key set is every non-empty pattern, 2^m - 1 of them). Every person is in exactly one
    cell, so one query spends ``epsilon`` once for all pairs. Sizes and intersections are
    sums of cells (post-processing, no extra budget); their 95 % half-widths come from the
    exact distribution of a sum of independent integer-Laplace noises. Pairwise queries
    would instead split ε over m(m-1)/2 + m queries, which is noisier for m >= 3.
    """
    epsilon = _check_epsilon(epsilon)
    names = list(member_sets)
    m = len(names)
    if m < 1 or m > MAX_OVERLAP_SEGMENTS:
        raise UsageError(
            f"overlap needs 1 to {MAX_OVERLAP_SEGMENTS} segments, got {m}",
            "compare fewer segments at a time",
        )
    parts = []
    for index, name in enumerate(names):
        frame = member_sets[name]
        frame = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
        if member_key not in frame.collect_schema():
            raise SegmentError(
                f"member set {name!r} has no {member_key!r} column",
                "pass each segment's members as a frame of member keys",
            )
        parts.append(
            frame.select(pl.col(member_key))
            .unique()
            .with_columns(pl.lit(1 << index, pl.UInt16).alias("_bit"))
        )
    patterns = [str(mask) for mask in range(1, 1 << m)]
    people = (
        pl.concat(parts)
        .group_by(member_key)
        .agg(pl.col("_bit").sum())
        .select(pl.col("_bit").cast(pl.String).cast(pl.Enum(patterns)).alias("pattern"))
        .collect()
        .lazy()
    )
    compositor = _Compositor(people, [epsilon])
    keys = pl.DataFrame({"pattern": pl.Series(patterns, dtype=pl.Enum(patterns))})
    released, scale, accuracy = compositor.release(
        _breakdown_plan(compositor, ["pattern"], keys), epsilon
    )
    cells = _breakdown_frame(released, keys, ["pattern"], accuracy, epsilon, scale)
    noisy = dict(zip((int(p) for p in cells["pattern"]), cells[_COUNT].to_list(), strict=True))

    def total(bits: int) -> int:
        return sum(value for mask, value in noisy.items() if mask & bits == bits)

    matrix = {name: [0] * m for name in names}
    for i in range(m):
        matrix[names[i]][i] = total(1 << i)
    for i, j in combinations(range(m), 2):
        matrix[names[j]][i] = matrix[names[i]][j] = total((1 << i) | (1 << j))
    frame = pl.DataFrame({"segment": names, **matrix})
    labels = {
        str(mask): "+".join(names[i] for i in range(m) if mask >> i & 1)
        for mask in range(1, 1 << m)
    }
    cells = cells.with_columns(pl.col("pattern").replace_strict(labels).alias("segments"))
    return OverlapResult(
        segments=names,
        matrix=frame,
        cells=cells,
        accuracy_diagonal=_sum_accuracy(scale, 1 << (m - 1)) if m > 1 else accuracy,
        accuracy_pairs=_sum_accuracy(scale, 1 << (m - 2)) if m > 1 else 0.0,
        epsilon=epsilon,
        scale=scale,
    )
