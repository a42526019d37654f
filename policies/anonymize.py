"""k-anonymous record-level exports, ARX-style (PRIVACY.md rule 10).

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
    ``precision`` is a lower bound of ``loss`` and grows with every generalization step, so
    nodes whose precision already exceeds the best loss found are never evaluated (nor,
    therefore, any of their generalizations). k-anonymity and distinct l-diversity with
    suppression are monotone — if a node qualifies, so does every generalization, with no
    more suppression — so once a node qualifies with nothing suppressed, all of its
    generalizations are dominated and skipped. (t-closeness with suppression is not
    monotone; with ``t`` only the precision bound prunes.) Nodes are visited bottom-up
    and each node's class table is *rolled up* from an already evaluated, more specific
    node (integer codes, one polars group_by), never recomputed from the raw rows; the
    exhaustive bound-and-prune search is exact, which the tests check against brute force.

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
identifiers must never be listed in ``keep``. Rows come out sorted by the generalized
QIs, so the original row order (which can track record ids) is not released.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from audiences.errors import ConfigError, DataError, InternalError, PolicyBlocked, UsageError

__all__ = [
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
    """The k a table achieves: the size of its smallest equivalence class (0 if empty)."""
    smallest = frame.lazy().group_by(list(quasi_identifiers)).len().select(pl.col("len").min())
    value = smallest.collect().item()
    return int(value or 0)


# -- the lattice --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Evaluation:
    node: tuple[int, ...]
    qualifies: bool
    suppressed: int
    loss: float
    precision: float


class _Lattice:
    """Integer-coded QIs with per-level lookup tables, and memoized node class tables.

    A node's table has one row per (class, sensitive value): ``key`` — the class, as one
    UInt64 mixing the QI codes at the node's levels (``Σ code_i · stride_i``) — ``s`` (the
    sensitive value's code, when there is one) and ``n`` (rows). One-column UInt64 group-bys
    are ~3x faster than grouping on the separate code columns.
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
        self.sensitive = sensitive
        self.group = ["key", "s"] if sensitive else ["key"]
        raw_codes = frame.select(
            *[pl.col(q).rank("dense").fill_null(0).cast(pl.UInt32) for q in qis],
            *([pl.col(sensitive).rank("dense").fill_null(0).cast(pl.UInt32).alias("s")]
              if sensitive else []),
        )  # fmt: skip
        # raw_lookups[i][b]: raw-value code of QI i → its level-b code;
        # lookups[i][(a, b)]: level-a code → level-b code (a < b); cards[i][b]: codes at b
        self.raw_lookups: list[list[np.ndarray]] = []
        self.lookups: list[dict[tuple[int, int], np.ndarray]] = []
        self.cards: list[list[int]] = []
        for i, (q, hierarchy) in enumerate(zip(qis, hierarchies, strict=True)):
            distinct = pl.DataFrame({"raw": raw_codes[q], q: frame[q]}).unique("raw")
            labels = distinct.select(
                pl.col("raw"),
                *[hierarchy.expr(q, lvl).alias(f"l{lvl}") for lvl in range(hierarchy.height + 1)],
            )
            codes = labels.select(
                pl.col("raw"),
                *[
                    pl.col(f"l{lvl}").rank("dense").fill_null(0).cast(pl.UInt32).alias(f"c{lvl}")
                    for lvl in range(hierarchy.height + 1)
                ],
            )
            level_codes = [codes[f"c{lvl}"].to_numpy() for lvl in range(hierarchy.height + 1)]
            for lvl in range(hierarchy.height):
                pairs = codes.select(f"c{lvl}", f"c{lvl + 1}").unique()
                if pairs.height != codes.select(f"c{lvl}").n_unique():
                    raise ConfigError(
                        f"hierarchy {hierarchy.kind!r} of {q!r} is not nested: level "
                        f"{hierarchy.labels[lvl + 1]!r} splits values that level "
                        f"{hierarchy.labels[lvl]!r} groups together",
                        "make each level a coarsening of the one before",
                    )
            raw = codes["raw"].to_numpy()
            raw_lookup = []
            for lvl in range(hierarchy.height + 1):
                mapping = np.zeros(int(raw.max()) + 1, dtype=np.uint64)
                mapping[raw] = level_codes[lvl]
                raw_lookup.append(mapping)
            self.raw_lookups.append(raw_lookup)
            self.cards.append([int(c.max()) + 1 for c in level_codes])
            step: dict[tuple[int, int], np.ndarray] = {}
            for a in range(hierarchy.height + 1):
                for b in range(a + 1, hierarchy.height + 1):
                    mapping = np.zeros(self.cards[i][a], dtype=np.uint64)
                    mapping[level_codes[a]] = level_codes[b]
                    step[(a, b)] = mapping
            self.lookups.append(step)
        self.base_node = tuple(0 for _ in qis)
        if math.prod(self.cards[i][0] for i in range(len(qis))) >= 2**63:
            raise UsageError(
                f"too many distinct combinations of {', '.join(qis)} to search",
                "pre-coarsen a quasi-identifier (e.g. dates to months) or use fewer of them",
            )
        key = np.zeros(self.n, dtype=np.uint64)
        for i, q in enumerate(qis):
            level0 = self.raw_lookups[i][0][raw_codes[q].to_numpy()]
            key += level0 * np.uint64(self._strides(self.base_node)[i])
        base = pl.DataFrame(
            {"key": key, **({"s": raw_codes["s"]} if sensitive else {})}
        ).with_columns(pl.lit(1, dtype=pl.Int64).alias("n"))
        self.tables: dict[tuple[int, ...], pl.DataFrame] = {
            self.base_node: base.group_by(self.group).agg(pl.col("n").sum())
        }

    def _strides(self, node: tuple[int, ...]) -> list[int]:
        strides, stride = [], 1
        for i, level in enumerate(node):
            strides.append(stride)
            stride *= self.cards[i][level]
        return strides

    def _roll(
        self, table: pl.DataFrame, source: tuple[int, ...], target: tuple[int, ...]
    ) -> pl.DataFrame:
        old_key = table["key"].to_numpy()
        old_strides, new_strides = self._strides(source), self._strides(target)
        key = np.zeros(len(old_key), dtype=np.uint64)
        for i, (a, b) in enumerate(zip(source, target, strict=True)):
            code = (old_key // np.uint64(old_strides[i])) % np.uint64(self.cards[i][a])
            if a != b:
                code = self.lookups[i][(a, b)][code]
            key += code * np.uint64(new_strides[i])
        rolled = table.with_columns(pl.Series("key", key))
        return rolled.group_by(self.group).agg(pl.col("n").sum())

    def table(self, node: tuple[int, ...]) -> pl.DataFrame:
        """The class table of ``node``, rolled up from the smallest memoized ancestor."""
        cached = self.tables.get(node)
        if cached is not None:
            return cached
        best: tuple[int, ...] | None = None
        for known, table in self.tables.items():
            if all(a <= b for a, b in zip(known, node, strict=True)) and (
                best is None or table.height < self.tables[best].height
            ):
                best = known
        assert best is not None  # the bottom node is an ancestor of everything
        table = self._roll(self.tables[best], best, node)
        self.tables[node] = table
        return table

    def forget_below(self, height: int) -> None:
        """Drop memoized tables of nodes lower than ``height`` (keeps memory bounded)."""
        for node in [n for n in self.tables if sum(n) < height and n != self.base_node]:
            del self.tables[node]

    def classes(self, node: tuple[int, ...]) -> pl.DataFrame:
        """One row per class: ``key``, ``size``, ``distinct`` sensitive values (if any)."""
        table = self.table(node)
        if not self.sensitive:
            return table.rename({"n": "size"})
        return table.group_by("key").agg(
            pl.col("n").sum().alias("size"), pl.len().cast(pl.Int64).alias("distinct")
        )

    def worst_distance(self, node: tuple[int, ...], kept: pl.DataFrame) -> float:
        """Largest total-variation distance of a kept class to the kept rows' distribution."""
        rows = self.table(node).join(kept.select("key"), on="key", how="semi")
        total = rows["n"].sum()
        if not total:
            return 0.0
        overall = rows.group_by("s").agg((pl.col("n").sum() / total).alias("p_all"))
        per_class = rows.join(overall, on="s").with_columns(
            (pl.col("n") / pl.col("n").sum().over("key")).alias("p_class")
        )
        distances = per_class.group_by("key").agg(
            (
                0.5 * ((pl.col("p_class") - pl.col("p_all")).abs() - pl.col("p_all")).sum() + 0.5
            ).alias("tv")
        )
        return float(distances["tv"].max() or 0.0)


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
    small = pl.col("size") < k
    if l is not None:
        small = small | (pl.col("distinct") < l)
    suppressed = int(classes.filter(small).select(pl.col("size").sum()).item() or 0)
    precision = _precision(node, lattice.heights)
    qualifies = suppressed <= limit_rows
    if qualifies and t is not None:
        kept = classes.filter(~small)
        qualifies = kept.height > 0 and lattice.worst_distance(node, kept) <= t + 1e-12
    loss = precision + (suppressed / lattice.n) * (1 - precision) if lattice.n else precision
    return _Evaluation(node, qualifies, suppressed, loss, precision)


def _search(
    lattice: _Lattice,
    k: int,
    l: int | None,  # noqa: E741
    t: float | None,
    suppression_limit: float,
) -> tuple[_Evaluation | None, int, _Evaluation | None]:
    """(best qualifying node, nodes evaluated, least-suppressing node seen)."""
    heights = lattice.heights
    nodes = sorted(
        itertools.product(*(range(h + 1) for h in heights)),
        key=lambda node: (sum(node), node),
    )
    limit_rows = suppression_limit * lattice.n
    best: _Evaluation | None = None
    closest: _Evaluation | None = None
    zero_suppression: list[tuple[int, ...]] = []  # qualifying nodes with nothing suppressed
    evaluated = 0
    current_height = 0
    for node in nodes:
        if sum(node) > current_height + 1:
            lattice.forget_below(sum(node) - 1)
        current_height = sum(node)
        precision = _precision(node, heights)
        if best is not None and precision > best.loss + 1e-12:
            continue
        if t is None and any(
            all(a <= b for a, b in zip(low, node, strict=True)) for low in zero_suppression
        ):
            continue  # dominated: qualifies with loss = precision >= the ancestor's
        evaluation = _evaluate(lattice, node, k, l, t, limit_rows)
        evaluated += 1
        if closest is None or evaluation.suppressed <= closest.suppressed:
            closest = evaluation
        if not evaluation.qualifies:
            continue
        if evaluation.suppressed == 0:
            zero_suppression.append(node)
        if best is None or (evaluation.loss, evaluation.precision, evaluation.node) < (
            best.loss,
            best.precision,
            best.node,
        ):
            best = evaluation
    return best, evaluated, closest


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
    prosecutor_max = 1.0 / classes["f"].min()  # type: ignore[operator]
    prosecutor_average = classes.height / n
    at_max = classes.filter(pl.col("f") == classes["f"].min())["f"].sum() / n
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
    if population is not None:
        population = population.collect() if isinstance(population, pl.LazyFrame) else population
        missing = [q for q in qis if q not in population.columns]
        if missing:
            raise DataError(
                f"population table lacks quasi-identifier columns {missing}",
                "give the population the same quasi-identifier columns as the data",
            )

    lattice = _Lattice(frame, qis, hierarchies, sensitive)
    best, evaluated, closest = _search(lattice, k, l, t, suppression_limit)
    nodes_total = math.prod(h + 1 for h in lattice.heights)
    model = f"k={k}" + (f", l={l}" if l else "") + (f", t={t:g}" if t else "")
    if best is None:
        detail = ""
        if closest is not None:
            detail = (
                f"; the closest ({_describe(closest.node, qis, hierarchies)}) suppresses "
                f"{closest.suppressed} of {frame.height} rows"
            )
        raise PolicyBlocked(
            f"no generalization of {', '.join(qis)} reaches {model} with at most "
            f"{suppression_limit:.1%} of rows suppressed ({evaluated} of {nodes_total} "
            f"lattice nodes evaluated{detail})",
            "raise the suppression limit, lower k/l or raise t, add coarser hierarchy "
            "levels, or export fewer quasi-identifiers",
            reasons=[f"no qualifying node for {model}"],
        )

    node = best.node
    generalized = frame.select(
        *[h.expr(q, level) for q, h, level in zip(qis, hierarchies, node, strict=True)],
        *([pl.col(sensitive)] if sensitive else []),
        *[pl.col(column) for column in keep],
    )
    small = pl.len().over(qis) < k
    if l is not None:
        small = small | (pl.col(sensitive).n_unique().over(qis) < l)
    released = generalized.filter(~small).sort(qis, nulls_last=True, maintain_order=True)
    suppressed = frame.height - released.height
    if suppressed != best.suppressed:
        raise InternalError(
            f"lattice search counted {best.suppressed} suppressed rows, the export {suppressed}"
        )

    classes = released.group_by(qis).len()
    sizes = classes["len"]
    l_achieved = None
    t_achieved = None
    if sensitive is not None:
        l_achieved = int(
            released.group_by(qis).agg(pl.col(sensitive).n_unique())[sensitive].min() or 0
        )
        if t is not None:
            kept = lattice.classes(node)
            kept = kept.filter((pl.col("size") >= k) & (pl.col("distinct") >= (l or 1)))
            t_achieved = lattice.worst_distance(node, kept)
    n = frame.height
    metrics = AnonymizationMetrics(
        information_loss=best.loss,
        precision=best.precision,
        discernibility=int((sizes.cast(pl.Int64) ** 2).sum()) + n * suppressed,
        average_class_size=(released.height / classes.height / k) if classes.height else 0.0,
        classes=classes.height,
        rows_in=n,
        rows_out=released.height,
        suppressed=suppressed,
        suppressed_fraction=suppressed / n if n else 0.0,
        k_achieved=int(sizes.min() or 0),  # type: ignore[arg-type]
        l_achieved=l_achieved,
        t_achieved=t_achieved,
    )
    population_frame = None
    if population is not None:
        population_frame = population.select(
            h.expr(q, level) for q, h, level in zip(qis, hierarchies, node, strict=True)
        )
    risk = _risk(released, qis, population_frame)
    return AnonymizationResult(
        frame=released,
        levels={q: h.labels[level] for q, h, level in zip(qis, hierarchies, node, strict=True)},
        node=node,
        metrics=metrics,
        risk=risk,
        nodes_evaluated=evaluated,
        nodes_total=nodes_total,
    )
