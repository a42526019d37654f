"""Numbers for marketers: DP previews and overlaps against the persistent budget ledger.

Every figure here went through OpenDP; the exact ones stay in compliance reports.
The spend is recorded *before* the query runs (a query that fails after touching the
data still counts), and the ledger is checked before an OpenDP context is built (a
rejected query kills an OpenDP context, and contexts can't be saved).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from audiences.core import clock
from audiences.core.actor import actor_name
from audiences.core.config import ProjectConfig
from audiences.core.errors import ConfigError, UsageError
from audiences.core.state import connect, project_salt
from audiences.crm.sources import load_sources
from audiences.pipeline.select import collect_candidates, select_segments, validate_against_data
from policies.privacy.ledger import PrivacyBudget, budget_policy

if TYPE_CHECKING:
    from audiences.segments import Segment
    from policies.pack import Pack
    from policies.privacy.dp import PreviewResult
    from policies.privacy.ledger import Ledger

# A breakdown dimension: its column (or expression) and its public keys.
DimensionSpec = tuple[str | pl.Expr, list[str]]


def dimensions(config: ProjectConfig, schema: pl.Schema) -> dict[str, DimensionSpec]:
    """Breakdown dimensions with *public* key sets (never taken from the data)."""
    from policies.privacy import dp

    known: dict[str, DimensionSpec] = {
        "age_band": (dp.age_band_expr("age"), dp.age_band_keys()),
        "sex": (_canonical(config, "gender", schema, "sex"), dp.sex_keys()),
        "state": (_canonical(config, "state", schema, "state"), dp.us_state_keys()),
    }
    language_keys = ["en", "es", "zh", "ru", "ko", "vi", "ht", "fr"]
    out: dict[str, DimensionSpec] = {}
    for name in config.insights.dimensions:
        if name in known:
            out[name] = known[name]
        elif name == "preferred_language":
            out[name] = (name, language_keys)
        else:
            raise ConfigError(
                f"[insights] dimension {name!r} has no public key set",
                "use age_band, sex, state or preferred_language (keys must be public, "
                "never derived from the data)",
            )
        column = out[name][0]
        if isinstance(column, str) and column not in schema:
            raise ConfigError(
                f"[insights] dimension {name!r} needs column {column!r}, which contacts lack",
                "fix [insights] dimensions or [identity]",
            )
    return out


def _canonical(config: ProjectConfig, field: str, schema: pl.Schema, default: str) -> pl.Expr | str:
    """The identity field's values as the upload layer and the segment language read
    them (``Female`` → ``F``, ``New York`` → ``NY``): one meaning per value."""
    from audiences.crm.identifiers import canonical_expr

    column = getattr(config.identity, field)
    if column is None or column not in schema:
        return column or default
    return canonical_expr(config.identity, field, schema=schema)


def segment_keys(config: ProjectConfig, segment: Segment, dims: dict[str, DimensionSpec]) -> None:
    """Narrow the state keys to the states a segment requires (``state: {in: [NY, NJ]}``
    at its top level): the keys stay public — they come from the segment file, not the
    data — and no noise-only cell of a state the segment excludes is shown."""
    from audiences.crm.identifiers import canonical_values
    from audiences.segments.compiler import top_level_parts
    from audiences.segments.model import FieldCondition

    column = config.identity.state
    if "state" not in dims or column is None:
        return
    expr, keys = dims["state"]
    for part in top_level_parts(segment):
        if not isinstance(part, FieldCondition) or part.field != column:
            continue
        for comparison in part.comparisons:
            if comparison.op not in ("eq", "in"):
                continue
            raw = comparison.value if isinstance(comparison.value, tuple) else (comparison.value,)
            if any(not isinstance(v, str) or v.endswith("*") for v in raw):
                continue
            wanted = set(canonical_values(config.identity, "state", [str(v) for v in raw]))
            keys = [k for k in keys if k in wanted] or keys
    dims["state"] = (expr, keys)


def interval(value: float, low: float, high: float) -> list[int]:
    """A 95% interval for a count, as whole people within [0, ∞). A negative noisy count
    keeps the interval's width above zero ([0, half-width]) rather than collapsing to
    "0–0", which would claim certainty the noise does not give."""
    upper = high - min(value, 0.0)
    return [max(round(low), 0), max(round(upper), 0)]


def _cell(name: str, row: dict[str, Any]) -> dict[str, Any]:
    """One breakdown cell. A cell whose 95 % interval includes 0 is indistinguishable
    from noise: it is shown as ``< upper bound`` (``below_threshold``), not as a number."""
    ci95 = interval(row["count"], row["ci95_low"], row["ci95_high"])
    below = bool(row.get("below_threshold", row["ci95_low"] <= 0))
    cell: dict[str, Any] = {"key": row[name], "below_threshold": below, "ci95": ci95}
    if below:
        cell.update(count=None, threshold=ci95[1])
    else:
        cell["count"] = max(int(row["count"]), 0)
    return cell


def looks(remaining: float, epsilon: float) -> int:
    """Previews at ``epsilon`` the remaining budget still allows."""
    return int(remaining / epsilon + 1e-9) if epsilon > 0 else 0


@dataclass
class Preview:
    segment: str
    epsilon: float
    result: PreviewResult
    remaining: PrivacyBudget
    renews: str
    default_epsilon: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        count = self.result.count
        return {
            "segment": self.segment,
            "epsilon": self.epsilon,
            "count": {
                "value": count.shown,
                "ci95": interval(count.value, count.ci95_low, count.ci95_high),
            },
            "breakdowns": {
                name: [_cell(name, row) for row in frame.iter_rows(named=True)]
                for name, frame in self.result.breakdowns.items()
            },
            "epsilon_used": self.result.epsilon_used,
            "budget_remaining": {"epsilon": self.remaining.epsilon},
            "looks_remaining": looks(self.remaining.epsilon, self.default_epsilon),
            "default_epsilon": self.default_epsilon,
            "budget_renews": self.renews,
            "note": "differentially private figures (OpenDP); exact counts are for "
            "compliance reports only",
        }


def default_epsilon(config: ProjectConfig, pack: Pack) -> float:
    """``[insights] epsilon``, which must fit the pack's per-query cap (a config error)."""
    value = float(config.insights.epsilon)
    cap = pack.budget.max_epsilon_per_query
    if value > cap:
        raise ConfigError(
            f"[insights] epsilon {value:g} exceeds the policy pack's per-query cap {cap:g}",
            f"lower [insights] epsilon in audiences.toml to {cap:g} or less",
        )
    return value


def _epsilon(config: ProjectConfig, requested: float | None, pack: Pack) -> float:
    if requested is None:
        return default_epsilon(config, pack)
    value = requested
    if not value > 0 or value != value or value == float("inf"):
        raise UsageError(
            f"--epsilon {value} must be a positive finite number", "e.g. --epsilon 0.5"
        )
    return float(value)


def preview(
    config: ProjectConfig,
    segment_name: str,
    *,
    epsilon: float | None = None,
    as_of: date | None = None,
    actor: str | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> Preview:
    from policies.pack import load_pack
    from policies.privacy import dp
    from policies.privacy.ledger import open_ledger

    step = progress or (lambda _msg, _frac: None)
    as_of = as_of or clock.today()
    spent_on = clock.now()  # the ledger's day: never --as-of (see check_budget)
    pack = load_pack(config)
    eps = _epsilon(config, epsilon, pack)
    (segment,) = select_segments(config, [segment_name])
    step("reading sources", 0.05)
    sources = load_sources(config)
    step(f"{segment.name}: checking against the data", 0.2)
    validate_against_data(config, [segment], sources, as_of)
    dims = dimensions(config, sources.contacts.collect_schema())
    segment_keys(config, segment, dims)
    conn = connect(config.state_db)
    ledger = open_ledger(config, budget_policy(pack))
    try:
        requested = PrivacyBudget(eps, 0.0)
        check_budget(ledger, sources.digest, requested, spent_on)
        step(f"{segment.name}: selecting members", 0.4)
        members = collect_candidates(
            config, segment, sources, as_of, project_salt(config.state_dir), link_opt_outs=False
        )
        step(f"{segment.name}: noisy counts", 0.8)  # never the exact count: a marketer sees it
        ledger.spend(
            sources.digest,
            requested,
            f"preview {segment.name} count+{','.join(dims)}",
            actor_name(actor),
            spent_on,
        )
        people = one_record_per_person(config, members)
        result = dp.preview(people.lazy(), dims, epsilon_total=eps, person=_PERSON)
        remaining = ledger.remaining(sources.digest, spent_on)
        renews = ledger.renews(sources.digest, spent_on)
        _audit(conn, actor_name(actor), segment.name, eps, "preview", sources.digest)
    finally:
        ledger.close()
        conn.close()
    return Preview(segment.name, eps, result, remaining, renews, default_epsilon(config, pack))


_PERSON = "__person"


def one_record_per_person(config: ProjectConfig, records: pl.DataFrame) -> pl.DataFrame:
    """``records`` one row per person, as ``__person``: records sharing a normalized email
    or phone, transitively, are one person (the gate's definition, docs/policy-rules.md),
    counted once with the values of their record with the smallest CRM id. Deduplicating
    on the record's member key counted a person with two CRM records twice: a noisy
    figure then protected them at twice the ε it reported."""
    from audiences.crm.linkage import person_keys

    cid = config.sources.contacts.id
    persons = person_keys(records, config, by=cid).alias(_PERSON)
    # a person is named by their smallest id, so that record is the one kept
    return records.with_columns(persons).filter(pl.col(cid) == pl.col(_PERSON))


def _person_records(config: ProjectConfig, records: pl.DataFrame) -> pl.DataFrame:
    """The CRM id and the columns that link ``records`` into people."""
    from audiences.crm.linkage import person_columns

    cid = config.sources.contacts.id
    return records.select(cid, *person_columns(config, records.collect_schema()))


def people_of_segments(
    config: ProjectConfig, segments: dict[str, pl.DataFrame]
) -> dict[str, pl.LazyFrame]:
    """Per segment, its people (``__person``), linked over the records of every segment
    together (``segments``: each one's records, the CRM id and the link columns at least):
    a person whose records fall into two segments is the same person in both. Linked per
    segment, their two records were two people in two overlap cells."""
    from audiences.crm.linkage import person_keys

    cid = config.sources.contacts.id
    records = pl.concat(
        [_person_records(config, frame) for frame in segments.values()], how="vertical_relaxed"
    ).unique(cid, keep="first", maintain_order=True)
    persons = records.select(cid, person_keys(records, config, by=cid).alias(_PERSON))
    return {
        name: frame.select(cid).join(persons, on=cid, how="left").select(_PERSON).lazy()
        for name, frame in segments.items()
    }


# The ledger is charged on the wall clock's day (``audiences.core.clock``), whatever
# ``--as-of`` reviews the segment at: the budget period is the ledger's, not the caller's.
# Charged on --as-of, a spend could be filed under any month: the period cap (every
# digest's spends of a period, so that a CRM refreshed daily does not get a fresh budget
# each day) renewed for whoever moved the date, a month per --as-of.


def check_budget(
    ledger: Ledger, dataset: str, requested: PrivacyBudget, as_of: date | datetime
) -> None:
    """The ledger's check, with advice that can work: the largest ε that still fits, or
    the day the budget renews when nothing useful is left."""
    from audiences.core.errors import BudgetExhausted

    try:
        ledger.check(dataset, requested, as_of)
    except BudgetExhausted as exc:
        left = ledger.remaining(dataset, as_of).epsilon
        usable = int(left * 1000) / 1000  # rounded down: it must fit
        renews = ledger.renews(dataset, as_of)
        if usable >= 0.01:
            fix = (
                f"ask for at most the remaining budget: --epsilon {usable:g} (wider "
                f"intervals), or wait until it renews ({renews})"
            )
        else:
            fix = f"the budget is spent: a smaller ε cannot help; it renews: {renews}"
        raise BudgetExhausted(exc.what, fix, where=exc.where) from None


def overlap(
    config: ProjectConfig,
    names: list[str],
    *,
    epsilon: float | None = None,
    as_of: date | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    from policies.pack import load_pack
    from policies.privacy import dp
    from policies.privacy.ledger import open_ledger

    if len(names) < 2:
        raise UsageError("overlap needs at least two segments", "e.g. audiences overlap A B")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"segment(s) {repeated} named more than once", "name each segment once")
    if len(names) > dp.MAX_OVERLAP_SEGMENTS:
        # refused before anything is spent or collected
        raise UsageError(
            f"overlap compares at most {dp.MAX_OVERLAP_SEGMENTS} segments at a time, "
            f"got {len(names)}",
            "compare fewer segments at a time",
        )
    as_of = as_of or clock.today()
    spent_on = clock.now()  # the ledger's day: never --as-of (see check_budget)
    pack = load_pack(config)
    eps = _epsilon(config, epsilon, pack)
    segments = select_segments(config, names)
    sources = load_sources(config)
    validate_against_data(config, segments, sources, as_of)
    salt = project_salt(config.state_dir)
    conn = connect(config.state_db)
    ledger = open_ledger(config, budget_policy(pack))
    try:
        requested = PrivacyBudget(eps, 0.0)
        check_budget(ledger, sources.digest, requested, spent_on)
        sets = people_of_segments(
            config,
            {
                s.name: _person_records(
                    config,
                    collect_candidates(config, s, sources, as_of, salt, link_opt_outs=False),
                )
                for s in segments
            },
        )
        ledger.spend(
            sources.digest, requested, f"overlap {','.join(names)}", actor_name(actor), spent_on
        )
        result = dp.dp_overlap(sets, epsilon=eps, member_key=_PERSON)
        remaining = ledger.remaining(sources.digest, spent_on)
        _audit(conn, actor_name(actor), ",".join(names), eps, "overlap", sources.digest)
    finally:
        ledger.close()
        conn.close()
    matrix = result.matrix.with_columns(
        [pl.col(c).clip(lower_bound=0).round(0).cast(pl.Int64) for c in result.segments]
    )
    return {
        "segments": result.segments,
        "matrix": matrix.to_dicts(),
        "ci95_half_width": {
            "sizes": round(result.accuracy_diagonal),
            "overlaps": round(result.accuracy_pairs),
        },
        "epsilon": eps,
        "budget_remaining": {"epsilon": remaining.epsilon},
        "note": "differentially private figures (OpenDP)",
    }


def budget(config: ProjectConfig, *, as_of: date | datetime | None = None) -> dict[str, Any]:
    from audiences.crm.sources import source_digest
    from policies.pack import load_pack
    from policies.privacy.ledger import open_ledger

    as_of = as_of or clock.now()  # (the CLI passes none: the ledger's own day)
    pack = load_pack(config)
    policy = budget_policy(pack)
    dataset = source_digest(config)
    with open_ledger(config, policy) as ledger:
        entries = ledger.entries()
        remaining = ledger.remaining(dataset, as_of)
        renews = ledger.renews(dataset, as_of)
        cap = ledger.cap(dataset, as_of)
    return {
        "policy": policy.model_dump(),
        # the per-period cap in force for the current data: the policy's, or less where
        # spends made under a smaller budget bound it (a pack switched to a larger one)
        "cap": {"epsilon": cap.epsilon, "delta": cap.delta},
        "dataset": dataset,
        "remaining": {"epsilon": remaining.epsilon, "delta": remaining.delta},
        "renews": renews,
        "entries": [
            {
                "at": e.at,
                "dataset": e.dataset[:12],
                "period": e.period,
                "epsilon": e.budget.epsilon,
                "delta": e.budget.delta,
                "query": e.query,
                "actor": e.actor,
            }
            for e in entries
        ],
    }


def _audit(
    conn: sqlite3.Connection, actor: str, subject: str, epsilon: float, kind: str, dataset: str
) -> None:
    from audiences.compliance import audit

    audit.append(
        conn,
        kind="budget_spend",
        subject=subject,
        details={"query": kind, "epsilon": epsilon, "dataset": dataset},
        actor=actor,
    )
