"""k-anonymous record-level exports, ARX-style (docs/privacy-insights.md, section 2).

Model
    Each quasi-identifier (QI) has a *generalization hierarchy*: level 0 is the value
    itself, each further level coarser (age 37 → 35-39 → 30-39 → 20-39 → ``*``). A
    *node* of the lattice picks one level per QI. Rows whose generalized QIs are equal
    form an *equivalence class*. A node **qualifies** when, after suppressing (removing)
    every row in a class that is smaller than ``k`` (or, with ``l``, has fewer than ``l``
    distinct sensitive values), at most ``suppression_limit`` of the rows are suppressed,
    and — with ``t`` — every remaining class is within ``t`` of the released table's overall
    sensitive-value distribution (equal-distance EMD, i.e. total variation distance, as
    ARX and pycanon compute it for categorical values). Classes that break ``t`` are not
    suppressed: the node fails instead, so the export is t-close as published.

Optimum
    Among qualifying nodes we return the one with the least *information loss*::

        loss = precision + (suppressed / n) * (1 - precision),
        precision = mean over QIs of (level / height)          (Sweeney's Prec)

    0 means the data is released unchanged, 1 means nothing is left. Ties go to the lower
    precision, then the lexicographically smaller node.

Search
    Exact and best-first. Nodes are taken in order of ``precision``, a lower bound of
    ``loss``: once it exceeds the best loss found, the search stops. k-anonymity and
    distinct l-diversity with suppression are monotone — if a node meets them within the
    limit, so does every generalization, with no more suppression — so (Flash-style) for
    each node not yet decided we binary-search a chain of ever coarser nodes above it for
    the lowest one that meets k/l: a failure rules out that node and everything below it,
    a success everything above it, without evaluating them. A node that qualifies with
    nothing suppressed dominates all its generalizations. (t-closeness with suppression is
    not monotone: with ``t`` the chains still prune on k/l, and every remaining node is
    checked for t.) Nothing that could beat the optimum is skipped; the tests check the
    result against brute force.

Evaluation
    Each QI is coded once per hierarchy level (a small unsigned int per row); a node's
    class key is one UInt64 built by multiply-add over the QIs' codes at its levels, and
    its class sizes (with ``l``/``t``: per sensitive value) come from one ``np.bincount``,
    or one sort when the key space is large — no strings, no group_by per node.

Risk (ARX's three attacker models, on the released rows)
    * prosecutor — the attacker knows the person is in the export: a record's risk is
      1/|its class|; we report the maximum, the average, and the share of records at the
      maximum.
    * journalist — the attacker doesn't know who is in the export; risk is 1/|matching
      class in the population|. Pass ``population=`` (a frame with the QI columns, e.g. a
      census extract); by default the population is the input dataset itself, which makes
      the journalist figures equal to the prosecutor's (an upper bound).
    * marketer — the expected share of records re-identified in a mass linkage:
      (1/n) Σ |class in export| / |class in population|; with the default population this
      is (number of classes) / n.

Only the QI columns (generalized), the sensitive column and the columns listed in
``keep`` are exported; everything else (names, emails, ids ...) is dropped. Direct
identifiers must never be listed in ``keep``. Rows come out sorted by every exported
column, so the original row order (which can track record ids) is not released. The
generalized QI columns are ``pl.Enum`` whose categories are exactly the labels released
(a suppressed row's label doesn't even survive in the dictionary); cast them to
``pl.String`` for plain text (the file connector does).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from audiences.core.errors import ConfigError, DataError, InternalError, PolicyBlocked, UsageError

__all__ = [
    "HIERARCHIES",
    "AnonymizationMetrics",
    "AnonymizationResult",
    "Hierarchy",
    "ReidentificationRisk",
    "age_hierarchy",
    "anonymize",
    "categorical_hierarchy",
    "date_hierarchy",
    "k_anonymity",
    "zip_hierarchy",
]

SUPPRESSED = "*"
Level = Callable[[pl.Expr], pl.Expr]


# -- hierarchies ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """A generalization hierarchy: named levels, each a polars expression builder that maps
    the raw column to its label at that level (level 0 = the value itself). Each level must
    be a coarsening of the previous one; this is checked on the data."""

    kind: str
    labels: tuple[str, ...]
    levels: tuple[Level, ...]

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.levels) or len(self.levels) < 2:
            raise ConfigError(
                f"hierarchy {self.kind!r} needs at least two levels, each with a label",
                "list the levels from the exact value to '*'",
            )

    @property
    def height(self) -> int:
        return len(self.levels) - 1

    def expr(self, column: str, level: int) -> pl.Expr:
        return self.levels[level](pl.col(column)).cast(pl.String).alias(column)


def _star(_: pl.Expr) -> pl.Expr:
    return pl.lit(SUPPRESSED, dtype=pl.String)


def _band(width: int) -> Level:
    def level(age: pl.Expr) -> pl.Expr:
        low = (age.cast(pl.Int64) // width) * width
        return low.cast(pl.String) + pl.lit("-") + (low + width - 1).cast(pl.String)

    return level


def age_hierarchy() -> Hierarchy:
    """Integer age → 5-year band → 10-year → 20-year → ``*``."""
    return Hierarchy(
        "age",
        ("age", "5-year band", "10-year band", "20-year band", SUPPRESSED),
        (lambda age: age.cast(pl.Int64).cast(pl.String), _band(5), _band(10), _band(20), _star),
    )


def _zip5(value: pl.Expr) -> pl.Expr:
    return value.cast(pl.String).str.replace_all(r"\D", "").str.slice(0, 5)


def zip_hierarchy() -> Hierarchy:
    """ZIP5 (ZIP+4 and stray characters cut) → ZIP3 (``100**``) → ZIP1 (``1****``) → ``*``."""
    return Hierarchy(
        "zip",
        ("ZIP5", "ZIP3", "ZIP1", SUPPRESSED),
        (
            _zip5,
            lambda z: _zip5(z).str.slice(0, 3) + pl.lit("**"),
            lambda z: _zip5(z).str.slice(0, 1) + pl.lit("****"),
            _star,
        ),
    )


def date_hierarchy() -> Hierarchy:
    """Date (or datetime) → day → month → year → ``*``."""
    return Hierarchy(
        "date",
        ("day", "month", "year", SUPPRESSED),
        (
            lambda d: d.dt.strftime("%Y-%m-%d"),
            lambda d: d.dt.strftime("%Y-%m"),
            lambda d: d.dt.strftime("%Y"),
            _star,
        ),
    )


def categorical_hierarchy() -> Hierarchy:
    """Value → ``*``."""
    return Hierarchy("categorical", ("value", SUPPRESSED), (lambda v: v.cast(pl.String), _star))


HIERARCHIES: Mapping[str, Callable[[], Hierarchy]] = {
    "age": age_hierarchy,
    "zip": zip_hierarchy,
    "date": date_hierarchy,
    "categorical": categorical_hierarchy,
}
"""The built-in hierarchies by the names a configuration uses."""


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnonymizationMetrics:
    information_loss: float  # 0 = unchanged, 1 = nothing left (see module docstring)
    precision: float  # generalization part: mean level/height over QIs
    discernibility: int  # Σ |class|² over released classes + n · suppressed
    average_class_size: float  # normalized C_avg: (released rows / classes) / k
    classes: int
    rows_in: int
    rows_out: int
    suppressed: int
    suppressed_fraction: float
    k_achieved: int  # smallest released class
    l_achieved: int | None  # fewest distinct sensitive values in a released class
    t_achieved: float | None  # largest class distance to the released distribution


@dataclass(frozen=True, slots=True)
class ReidentificationRisk:
    prosecutor_max: float
    prosecutor_average: float
    records_at_max_risk: float  # share of released records whose risk is the maximum
    journalist_max: float
    journalist_average: float
    marketer: float
    population: str  # "dataset" or "given"


@dataclass(frozen=True, slots=True)
class AnonymizationResult:
    frame: pl.DataFrame
    levels: dict[str, str]  # QI column → label of the chosen hierarchy level
    node: tuple[int, ...]  # chosen level per QI, in the order given
    metrics: AnonymizationMetrics
    risk: ReidentificationRisk
    nodes_evaluated: int
    nodes_total: int


def k_anonymity(frame: pl.DataFrame | pl.LazyFrame, quasi_identifiers: Sequence[str]) -> int:
    """The k a table achieves: the size of its smallest equivalence class (0 if empty).

    Enum / Categorical / Boolean / integer columns (exports come with Enum QIs) are
    counted on their physical codes with one multiply-add key and one ``np.bincount``;
    other types by a polars group_by."""
    qis = list(quasi_identifiers)
    if isinstance(frame, pl.DataFrame):
        key = _code_key(frame, qis)
        if key is not None:
            counts = _Lattice._counts(key)[1]
            return int(counts.min()) if counts.size else 0
    smallest = frame.lazy().group_by(qis).len().select(pl.col("len").min())
    value = smallest.collect().item()
    return int(value or 0)


def _code_key(frame: pl.DataFrame, columns: list[str]) -> np.ndarray | None:
    """One UInt64 per row, equal exactly when the rows agree on ``columns``; None when a
    column has no small integer physical form."""
    key = np.zeros(frame.height, dtype=np.uint64)
    space = 1
    for column in columns:
        dtype = frame.schema[column]
        coded = isinstance(dtype, pl.Enum | pl.Categorical) or dtype == pl.Boolean
        if not (coded or dtype.is_integer()) or dtype == pl.UInt64:
            return None
        physical = frame.get_column(column).to_physical()
        if physical.dtype == pl.Boolean:
            physical = physical.cast(pl.UInt8)
        low = int(physical.min() or 0) if physical.len() else 0  # type: ignore[arg-type]
        high = int(physical.max() or 0) if physical.len() else 0  # type: ignore[arg-type]
        card = high - low + 1
        if physical.null_count():
            physical = physical.cast(pl.Int64).fill_null(high + 1)
            card += 1  # nulls: one more slot
        if space * card >= _KEY_SPACE:
            return None
        codes = physical.to_numpy()
        if low:
            codes = codes.astype(np.int64) - low
        key *= np.uint64(card)
        key += codes.astype(np.uint64, copy=False)
        space *= card
    return key


# -- the lattice --------------------------------------------------------------------------------

# Class tables whose key space is at most this many slots (times the sensitive values) are
# counted with one ``np.bincount``; larger ones by sorting the keys.
_DENSE_SLOTS = 1 << 22
# Before a combined key would pass this, it is re-coded densely (at most n distinct values).
_KEY_SPACE = 1 << 62


@dataclass(slots=True)
class _Evaluation:
    node: tuple[int, ...]
    meets_k: bool  # k (and l) within the suppression limit: monotone over the lattice
    qualifies: bool  # ... and, with t, every kept class is t-close
    suppressed: int
    loss: float
    precision: float
    worst_distance: float | None = None


@dataclass(frozen=True, slots=True)
class _Classes:
    """One node's equivalence classes: ``sizes`` per class and, with a sensitive column,
    one entry per (class, sensitive value) present: ``pair_class`` (index into ``sizes``,
    ascending), ``pair_value`` and ``pair_count``; ``distinct`` values per class."""

    sizes: np.ndarray
    distinct: np.ndarray | None = None
    pair_class: np.ndarray | None = None
    pair_value: np.ndarray | None = None
    pair_count: np.ndarray | None = None


def _small_dtype(cardinality: int) -> type[np.unsignedinteger]:
    if cardinality <= 1 << 8:
        return np.uint8
    if cardinality <= 1 << 16:
        return np.uint16
    return np.uint32


def _value_ids(series: pl.Series) -> np.ndarray:
    """One integer id per distinct value (null included), by hash join: no string sort."""
    name = series.name
    ids = series.unique().to_frame().with_row_index("_id")
    joined = series.to_frame().join(
        ids, on=name, how="left", nulls_equal=True, maintain_order="left"
    )
    return joined["_id"].to_numpy()


def _runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and how often each occurs."""
    if sorted_keys.size == 0:
        return sorted_keys, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    counts = np.diff(np.append(starts, sorted_keys.size))
    return sorted_keys[starts], counts


class _Lattice:
    """Integer-coded quasi-identifiers, encoded once per hierarchy level.

    ``codes[i][level]`` holds every row's code of QI ``i`` at ``level`` (small unsigned
    ints, 0 = null); a node's class of a row is one UInt64 built by multiply-add over the
    QIs (``key = key · card + code``), so evaluating a node is a few vector ops and one
    ``np.bincount`` (or one sort when the key space is large) — no strings, no group_by.
    """

    def __init__(
        self,
        frame: pl.DataFrame,
        qis: list[str],
        hierarchies: list[Hierarchy],
        sensitive: str | None,
    ) -> None:
        self.qis = qis
        self.hierarchies = hierarchies
        self.heights = [h.height for h in hierarchies]
        self.n = frame.height
        self.codes: list[list[np.ndarray]] = []
        self.cards: list[list[int]] = []
        self.label_tables: list[pl.DataFrame] = []  # per QI: raw code → label per level
        for q, hierarchy in zip(qis, hierarchies, strict=True):
            raw = _value_ids(frame[q])
            distinct = pl.DataFrame({"raw": raw, q: frame[q]}).unique("raw")
            labels = distinct.select(
                pl.col("raw"),
                *[hierarchy.expr(q, lvl).alias(f"l{lvl}") for lvl in range(hierarchy.height + 1)],
            )
            coded = labels.with_columns(
                pl.col(f"l{lvl}").rank("dense").fill_null(0).cast(pl.UInt32).alias(f"c{lvl}")
                for lvl in range(hierarchy.height + 1)
            )
            for lvl in range(hierarchy.height):
                pairs = coded.select(f"c{lvl}", f"c{lvl + 1}").unique()
                if pairs.height != coded.select(f"c{lvl}").n_unique():
                    raise ConfigError(
                        f"hierarchy {hierarchy.kind!r} of {q!r} is not nested: level "
                        f"{hierarchy.labels[lvl + 1]!r} splits values that level "
                        f"{hierarchy.labels[lvl]!r} groups together",
                        "make each level a coarsening of the one before",
                    )
            raw_of = coded["raw"].to_numpy()
            per_level, cards = [], []
            for lvl in range(hierarchy.height + 1):
                level_codes = coded[f"c{lvl}"].to_numpy()
                card = int(level_codes.max()) + 1 if level_codes.size else 1
                mapping = np.zeros(int(raw.max()) + 1 if raw.size else 1, dtype=_small_dtype(card))
                mapping[raw_of] = level_codes
                per_level.append(mapping[raw])
                cards.append(card)
            self.codes.append(per_level)
            self.cards.append(cards)
            self.label_tables.append(coded)
        self.sensitive = sensitive
        self.values: np.ndarray | None = None
        self.value_card = 1
        if sensitive is not None:
            self.values = _value_ids(frame[sensitive])
            self.value_card = int(self.values.max()) + 1 if self.n else 1

    def keys(self, node: tuple[int, ...]) -> np.ndarray:
        """Every row's class at ``node`` as one UInt64 (equal keys = same class)."""
        key: np.ndarray | None = None
        space = 1
        for i, level in enumerate(node):
            card = self.cards[i][level]
            if card <= 1:
                continue  # '*' (or a single value): no split
            codes = self.codes[i][level]
            if key is None:
                key, space = codes.astype(np.uint64), card
                continue
            if space * card >= _KEY_SPACE:
                distinct, key = np.unique(key, return_inverse=True)
                key, space = key.astype(np.uint64).ravel(), distinct.size
            key *= np.uint64(card)
            key += codes
            space *= card
        if key is None:
            return np.zeros(self.n, dtype=np.uint64)
        return key

    def classes(self, node: tuple[int, ...]) -> _Classes:
        key = self.keys(node)
        if self.values is None:
            return _Classes(sizes=self._counts(key)[1])
        key *= np.uint64(self.value_card)
        key += self.values
        pairs, pair_count = self._counts(key)
        card = np.uint64(self.value_card)
        pair_key = pairs // card
        boundary = np.concatenate(([True], pair_key[1:] != pair_key[:-1]))
        starts = np.flatnonzero(boundary)
        return _Classes(
            sizes=np.add.reduceat(pair_count, starts) if starts.size else pair_count,
            distinct=np.diff(np.append(starts, pair_key.size)),
            pair_class=np.cumsum(boundary) - 1,
            pair_value=(pairs % card).astype(np.int64),
            pair_count=pair_count,
        )

    @staticmethod
    def _counts(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distinct keys ascending, rows per key)."""
        space = int(key.max()) + 1 if key.size else 0
        if space <= _DENSE_SLOTS:
            counts = np.bincount(key.view(np.int64), minlength=space)
            present = np.flatnonzero(counts)
            return present.astype(np.uint64), counts[present]
        return _runs(np.sort(key))

    def worst_distance(self, classes: _Classes, kept: np.ndarray) -> float:
        """Largest total-variation distance of a kept class to the kept rows' distribution."""
        assert classes.pair_class is not None and classes.pair_count is not None
        assert classes.pair_value is not None
        on = kept[classes.pair_class]
        cls, value = classes.pair_class[on], classes.pair_value[on]
        count = classes.pair_count[on].astype(np.float64)
        total = count.sum()
        if not total:
            return 0.0
        overall = np.bincount(value, weights=count, minlength=self.value_card) / total
        share = count / classes.sizes[cls]
        p_all = overall[value]
        # Σ_v |p_class - p_all| over all v = Σ_present (|p_class - p_all| - p_all) + 1
        term = np.abs(share - p_all) - p_all
        starts = np.flatnonzero(np.concatenate(([True], cls[1:] != cls[:-1])))
        distances = 0.5 * np.add.reduceat(term, starts) + 0.5
        return float(distances.max())

    def labels(self, i: int, level: int, codes: np.ndarray) -> pl.Series:
        """The labels of QI ``i`` at ``level`` for the given row codes, as an Enum whose
        categories are exactly the labels present (in sorted order): no label of a
        suppressed row survives, even in the column's dictionary."""
        table = self.label_tables[i].select(f"c{level}", f"l{level}").unique(f"c{level}")
        card = self.cards[i][level]
        by_code = (
            pl.DataFrame({"code": np.arange(card, dtype=np.uint32)})
            .join(table.rename({f"c{level}": "code"}), on="code", how="left")
            .sort("code")[f"l{level}"]
        )
        present = pl.Series(np.bincount(codes, minlength=card) > 0)
        by_code = by_code.zip_with(present, pl.Series([None], dtype=pl.String))
        categories = pl.Enum(by_code.drop_nulls())  # codes are dense ranks: already sorted
        return by_code.cast(categories).gather(pl.Series(codes).cast(pl.UInt32))


def _precision(node: tuple[int, ...], heights: Sequence[int]) -> float:
    return sum(level / height for level, height in zip(node, heights, strict=True)) / len(node)


# -- the search ----------------------------------------------------------------------------------


def _check_inputs(
    schema: pl.Schema,
    quasi_identifiers: Mapping[str, Hierarchy],
    k: int,
    l: int | None,  # noqa: E741
    t: float | None,
    sensitive: str | None,
    suppression_limit: float,
    keep: Sequence[str],
) -> None:
    if not quasi_identifiers:
        raise UsageError("no quasi-identifiers given", "name the columns an attacker could link on")
    for column, hierarchy in quasi_identifiers.items():
        if column not in schema:
            raise DataError(
                f"quasi-identifier {column!r} is not a column (columns: {', '.join(schema.names())})",
                "use one of the listed columns",
            )
        if not isinstance(hierarchy, Hierarchy):
            raise UsageError(
                f"quasi-identifier {column!r} needs a Hierarchy, got {type(hierarchy).__name__}",
                "e.g. age_hierarchy(), zip_hierarchy(), date_hierarchy(), categorical_hierarchy()",
            )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UsageError(f"k must be an integer >= 1, got {k!r}", "use k such as 10")
    if isinstance(suppression_limit, bool) or not (
        isinstance(suppression_limit, int | float) and 0 <= suppression_limit < 1
    ):
        raise UsageError(
            f"suppression_limit must be a fraction in [0, 1), got {suppression_limit!r}",
            "use e.g. 0.05 to allow suppressing up to 5% of the rows",
        )
    if l is not None and (isinstance(l, bool) or not isinstance(l, int) or l < 1):
        raise UsageError(f"l must be an integer >= 1, got {l!r}", "use l such as 2")
    if t is not None and (
        isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= 1 or math.isnan(t)
    ):
        raise UsageError(f"t must be in (0, 1], got {t!r}", "use t such as 0.2")
    if (l is not None or t is not None) and sensitive is None:
        raise UsageError(
            "l-diversity and t-closeness need a sensitive column", "pass sensitive=..."
        )
    if sensitive is not None:
        if sensitive not in schema:
            raise DataError(
                f"sensitive column {sensitive!r} is not a column", "use one of the frame's columns"
            )
        if sensitive in quasi_identifiers:
            raise UsageError(
                f"{sensitive!r} is both a quasi-identifier and the sensitive column",
                "pick one role for it",
            )
        if isinstance(schema[sensitive], pl.List | pl.Array | pl.Struct):
            raise UsageError(
                f"sensitive column {sensitive!r} holds lists or structs",
                "use a single-valued column (e.g. one derived flag or category)",
            )
    for column in keep:
        if column not in schema:
            raise DataError(f"column {column!r} to keep is not a column", "check the names")
        if column in quasi_identifiers or column == sensitive:
            raise UsageError(
                f"{column!r} is already exported as a quasi-identifier or the sensitive column",
                "list only the extra columns in keep",
            )


def _evaluate(
    lattice: _Lattice,
    node: tuple[int, ...],
    k: int,
    l: int | None,  # noqa: E741
    t: float | None,
    limit_rows: float,
) -> _Evaluation:
    classes = lattice.classes(node)
    small = classes.sizes < k
    if l is not None:
        assert classes.distinct is not None
        small |= classes.distinct < l
    suppressed = int(classes.sizes[small].sum())
    precision = _precision(node, lattice.heights)
    meets_k = suppressed <= limit_rows
    qualifies = meets_k
    worst = None
    if meets_k and t is not None:
        kept = ~small
        worst = lattice.worst_distance(classes, kept) if kept.any() else None
        qualifies = worst is not None and worst <= t + 1e-12
    loss = precision + (suppressed / lattice.n) * (1 - precision) if lattice.n else precision
    return _Evaluation(node, meets_k, qualifies, suppressed, loss, precision, worst)


def _at_most(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True))


def _path_up(node: tuple[int, ...], heights: Sequence[int]) -> list[tuple[int, ...]]:
    """``node`` and a chain of ever coarser nodes up to the top, raising the least
    generalized QI (relative to its height) first."""
    path, current = [node], list(node)
    while any(level < height for level, height in zip(current, heights, strict=True)):
        i = min(
            (i for i, h in enumerate(heights) if current[i] < h),
            key=lambda i: (current[i] / heights[i], i),
        )
        current[i] += 1
        path.append(tuple(current))
    return path


class _Search:
    """Best-first, exact search of the lattice (see the module docstring, "Search")."""

    def __init__(
        self,
        lattice: _Lattice,
        k: int,
        l: int | None,  # noqa: E741
        t: float | None,
        suppression_limit: float,
    ) -> None:
        self.lattice, self.k, self.l, self.t = lattice, k, l, t
        self.limit_rows = suppression_limit * lattice.n
        self.evaluations: dict[tuple[int, ...], _Evaluation] = {}
        self.failing: list[tuple[int, ...]] = []  # maximal nodes known to miss k/l
        self.meeting: list[tuple[int, ...]] = []  # minimal nodes known to meet k/l
        self.lossless: list[tuple[int, ...]] = []  # qualifying with nothing suppressed
        self.best: _Evaluation | None = None
        self.closest: _Evaluation | None = None

    def run(self) -> tuple[_Evaluation | None, int, _Evaluation | None]:
        """(best qualifying node, nodes evaluated, least-suppressing node seen)."""
        heights = self.lattice.heights
        nodes = sorted(
            itertools.product(*(range(h + 1) for h in heights)),
            key=lambda node: (_precision(node, heights), node),
        )
        for node in nodes:
            if self.best is not None and _precision(node, heights) > self.best.loss + 1e-12:
                break  # nodes come by precision, a lower bound of their loss
            if node in self.evaluations or self.meets_k(node) is False:
                continue
            if self.t is None and any(_at_most(low, node) for low in self.lossless):
                continue  # qualifies with loss = precision >= that node's: dominated
            # Probe a chain above the node: the lowest node on it that meets k/l, by
            # binary search; a failure there rules out the node and everything below.
            path = _path_up(node, heights)
            low, high = 0, len(path)
            while low < high:
                middle = (low + high) // 2
                if self.meets_k(path[middle], evaluate=True):
                    high = middle
                else:
                    low = middle + 1
            if low == 0 and node not in self.evaluations:
                self.evaluate(node)
        return self.best, len(self.evaluations), self.closest

    def meets_k(self, node: tuple[int, ...], *, evaluate: bool = False) -> bool | None:
        """Whether ``node`` meets k/l within the suppression limit, from what is known
        (monotonicity) or, with ``evaluate``, by evaluating it; None if unknown."""
        known = self.evaluations.get(node)
        if known is not None:
            return known.meets_k
        if any(_at_most(node, high) for high in self.failing):
            return False
        if any(_at_most(low, node) for low in self.meeting):
            return True
        return self.evaluate(node).meets_k if evaluate else None

    def evaluate(self, node: tuple[int, ...]) -> _Evaluation:
        evaluation = _evaluate(self.lattice, node, self.k, self.l, self.t, self.limit_rows)
        self.evaluations[node] = evaluation
        closest = self.closest
        if closest is None or (evaluation.suppressed, -evaluation.precision, node) < (
            closest.suppressed,
            -closest.precision,
            closest.node,
        ):
            self.closest = evaluation  # least suppression; ties: the coarsest
        if not evaluation.meets_k:
            self.failing = [f for f in self.failing if not _at_most(f, node)] + [node]
            return evaluation
        self.meeting = [m for m in self.meeting if not _at_most(node, m)] + [node]
        if not evaluation.qualifies:
            return evaluation
        if evaluation.suppressed == 0:
            self.lossless.append(node)
        best = self.best
        if best is None or (evaluation.loss, evaluation.precision, node) < (
            best.loss,
            best.precision,
            best.node,
        ):
            self.best = evaluation
        return evaluation


def _describe(node: tuple[int, ...], qis: list[str], hierarchies: list[Hierarchy]) -> str:
    return ", ".join(
        f"{q}={h.labels[level]}" for q, h, level in zip(qis, hierarchies, node, strict=True)
    )


def _risk(
    released: pl.DataFrame,
    qis: list[str],
    population: pl.DataFrame | None,
) -> ReidentificationRisk:
    classes = released.group_by(qis).len().rename({"len": "f"})
    n = released.height
    if n == 0:
        return ReidentificationRisk(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, "dataset")
    prosecutor_max = float(1.0 / classes["f"].min())  # type: ignore[operator]
    prosecutor_average = float(classes.height / n)
    at_max = float(classes.filter(pl.col("f") == classes["f"].min())["f"].sum() / n)
    if population is None:
        return ReidentificationRisk(
            prosecutor_max,
            prosecutor_average,
            at_max,
            prosecutor_max,
            prosecutor_average,
            prosecutor_average,
            "dataset",
        )
    sizes = population.group_by(qis).len().rename({"len": "F"})
    classes = classes.with_columns(pl.col(qis).cast(pl.String))  # Enum labels → text
    joined = classes.join(sizes, on=qis, how="left", nulls_equal=True).with_columns(
        pl.max_horizontal(pl.col("F").fill_null(0), pl.col("f")).alias("F")
    )
    journalist_max = float((1.0 / joined["F"]).max())  # type: ignore[arg-type]
    journalist_average = float((joined["f"] / joined["F"]).sum() / n)
    return ReidentificationRisk(
        prosecutor_max,
        prosecutor_average,
        at_max,
        journalist_max,
        journalist_average,
        journalist_average,
        "given",
    )


def anonymize(
    data: pl.DataFrame | pl.LazyFrame,
    quasi_identifiers: Mapping[str, Hierarchy],
    *,
    k: int,
    l: int | None = None,  # noqa: E741
    t: float | None = None,
    sensitive: str | None = None,
    suppression_limit: float = 0.05,
    keep: Sequence[str] = (),
    population: pl.DataFrame | pl.LazyFrame | None = None,
) -> AnonymizationResult:
    """The least-lossy k-anonymous (optionally distinct-l-diverse, t-close) version of
    ``data`` within ``suppression_limit``; raises :class:`PolicyBlocked` if there is none."""
    frame = data.collect() if isinstance(data, pl.LazyFrame) else data
    if not isinstance(frame, pl.DataFrame):
        raise UsageError("anonymize needs a polars DataFrame or LazyFrame")
    keep = list(keep)
    _check_inputs(frame.schema, quasi_identifiers, k, l, t, sensitive, suppression_limit, keep)
    qis = list(quasi_identifiers)
    hierarchies = [quasi_identifiers[q] for q in qis]
    population_table = _population_table(population, qis)

    lattice = _Lattice(frame, qis, hierarchies, sensitive)
    best, evaluated, closest = _Search(lattice, k, l, t, suppression_limit).run()
    nodes_total = math.prod(h + 1 for h in lattice.heights)
    if best is None:
        raise _no_qualifying_node(
            lattice, frame.height, k, l, t, suppression_limit, closest, evaluated, nodes_total
        )

    node = best.node
    keep_row = _kept_rows(lattice, node, k, l, sensitive)
    suppressed = frame.height - int(keep_row.sum())
    if suppressed != best.suppressed:
        raise InternalError(
            f"lattice search counted {best.suppressed} suppressed rows, the export {suppressed}"
        )
    released = _released_frame(frame, lattice, node, keep_row, sensitive, keep)
    population_frame = None
    if population_table is not None:
        population_frame = population_table.select(
            h.expr(q, level) for q, h, level in zip(qis, hierarchies, node, strict=True)
        )
    return AnonymizationResult(
        frame=released,
        levels={q: h.labels[level] for q, h, level in zip(qis, hierarchies, node, strict=True)},
        node=node,
        metrics=_metrics(lattice, best, released, k, l, t, suppressed),
        risk=_risk(released, qis, population_frame),
        nodes_evaluated=evaluated,
        nodes_total=nodes_total,
    )


def _population_table(
    population: pl.DataFrame | pl.LazyFrame | None, qis: list[str]
) -> pl.DataFrame | None:
    """The journalist/marketer population, collected; it must have every QI column."""
    if population is None:
        return None
    table = population.collect() if isinstance(population, pl.LazyFrame) else population
    missing = [q for q in qis if q not in table.columns]
    if missing:
        raise DataError(
            f"population table lacks quasi-identifier columns {missing}",
            "give the population the same quasi-identifier columns as the data",
        )
    return table


def _no_qualifying_node(
    lattice: _Lattice,
    rows: int,
    k: int,
    l: int | None,  # noqa: E741
    t: float | None,
    suppression_limit: float,
    closest: _Evaluation | None,
    evaluated: int,
    nodes_total: int,
) -> PolicyBlocked:
    """The refusal when no node qualifies, naming the closest node the search saw."""
    qis, hierarchies = lattice.qis, lattice.hierarchies
    model = f"k={k}" + (f", l={l}" if l else "") + (f", t={t:g}" if t else "")
    detail = ""
    if closest is not None:
        detail = (
            f"; the closest ({_describe(closest.node, qis, hierarchies)}) suppresses "
            f"{closest.suppressed} of {rows} rows"
        )
    return PolicyBlocked(
        f"no generalization of {', '.join(qis)} reaches {model} with at most "
        f"{suppression_limit:.1%} of rows suppressed ({evaluated} of {nodes_total} "
        f"lattice nodes evaluated{detail})",
        "raise the suppression limit, lower k/l or raise t, add coarser hierarchy "
        "levels, or export fewer quasi-identifiers",
        reasons=[f"no qualifying node for {model}"],
    )


def _kept_rows(
    lattice: _Lattice,
    node: tuple[int, ...],
    k: int,
    l: int | None,  # noqa: E741
    sensitive: str | None,
) -> pl.Series:
    """Which rows survive suppression at ``node``: a window over the node's integer class
    key (independent of the search's class tables: the counts must agree)."""
    keyed = pl.DataFrame(
        {"_key": lattice.keys(node), **({"_s": lattice.values} if sensitive else {})}
    )
    small = pl.len().over("_key") < k
    if l is not None:
        small = small | (pl.col("_s").n_unique().over("_key") < l)
    return keyed.select(~small).to_series()


def _released_frame(
    frame: pl.DataFrame,
    lattice: _Lattice,
    node: tuple[int, ...],
    keep_row: pl.Series,
    sensitive: str | None,
    keep: list[str],
) -> pl.DataFrame:
    """The exported rows: generalized QIs (as Enums), the sensitive and ``keep`` columns."""
    qis = lattice.qis
    codes = [f"_c{i}" for i in range(len(qis))]
    rows = keep_row.to_numpy()
    kept_codes = [lattice.codes[i][level][rows] for i, level in enumerate(node)]
    return (
        frame.filter(keep_row)
        .select(
            *[pl.Series(code, c) for code, c in zip(codes, kept_codes, strict=True)],
            *[
                lattice.labels(i, level, c).alias(q)
                for i, (q, level, c) in enumerate(zip(qis, node, kept_codes, strict=True))
            ],
            *([pl.col(sensitive)] if sensitive else []),
            *[pl.col(column) for column in keep],
        )
        # Sorted by everything exported (codes order like the labels): rows that tie are
        # identical in the file, so the original order (which can track ids) is gone.
        .sort([*codes, *([sensitive] if sensitive else []), *keep], nulls_last=True)
        .drop(codes)
    )


def _metrics(
    lattice: _Lattice,
    best: _Evaluation,
    released: pl.DataFrame,
    k: int,
    l: int | None,  # noqa: E741
    t: float | None,
    suppressed: int,
) -> AnonymizationMetrics:
    """The chosen node's loss and class figures, over the released classes."""
    n = lattice.n
    classes = lattice.classes(best.node)
    kept = classes.sizes >= k
    if l is not None and classes.distinct is not None:
        kept &= classes.distinct >= l
    sizes = classes.sizes[kept]
    l_achieved = None
    if classes.distinct is not None:
        l_achieved = int(classes.distinct[kept].min()) if sizes.size else 0
    return AnonymizationMetrics(
        information_loss=best.loss,
        precision=best.precision,
        discernibility=int((sizes.astype(np.int64) ** 2).sum()) + n * suppressed,
        average_class_size=(released.height / sizes.size / k) if sizes.size else 0.0,
        classes=int(sizes.size),
        rows_in=n,
        rows_out=released.height,
        suppressed=suppressed,
        suppressed_fraction=suppressed / n if n else 0.0,
        k_achieved=int(sizes.min()) if sizes.size else 0,
        l_achieved=l_achieved,
        t_achieved=best.worst_distance if t is not None else None,
    )
