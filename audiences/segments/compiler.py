"""Compile a segment to a polars lazy query over ``contacts`` (and ``events``).

Plan (no per-row Python anywhere):

1. The top level is split into AND-ed parts (``where``'s ``all`` flattened, plus
   ``NOT exclude``).
2. Parts that only read contact columns (and ``age`` / ``days_since_<column>``) become one
   ``filter`` on contacts, applied first so polars can push it into the scan.
3. Parts that say "has at least one such event" / "has no such event" become semi / anti
   joins against the matching event rows.
4. Everything else that needs events (counts other than ">= 1", events under ``any`` or
   ``not``, ``days_since_last_<type>``) is answered by one ``group_by`` over the events
   (pre-filtered to rows any condition can count) with one conditional aggregate per
   *distinct* event filter, left-joined on the contact id and filtered.

Null semantics are SQL's three-valued logic, which polars implements: a comparison with a
null value is *unknown*, ``not unknown`` is unknown, and only rows whose condition is
*true* are selected. ``exclude`` removes rows whose exclude condition is true **or
unknown**. See docs/segments.md.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import operator
from dataclasses import dataclass, field

import polars as pl

from audiences.core.errors import InternalError
from audiences.segments.context import SegmentContext
from audiences.segments.model import (
    AllOf,
    AnyOf,
    Comparison,
    Condition,
    EventCondition,
    FieldCondition,
    Not,
    Segment,
    Window,
    classify_field,
)
from audiences.segments.validate import Category, category, check_segment, comparison_value

_COLUMN_PREFIX = "__segment_"


def compile_segment(
    segment: Segment,
    contacts: pl.LazyFrame,
    events: pl.LazyFrame | None,
    ctx: SegmentContext,
) -> pl.LazyFrame:
    """The contacts rows ``segment`` selects: every contacts column, nothing else, no duplicates.

    Validates first and raises :class:`~audiences.core.errors.SegmentError` if the segment does
    not fit the schemas.
    """
    contacts_schema = contacts.collect_schema()
    events_schema = events.collect_schema() if events is not None else None
    check_segment(segment, contacts_schema, events_schema, ctx)
    return _Compiler(contacts_schema, events_schema, ctx).compile(segment, contacts, events)


def top_level_parts(segment: Segment) -> list[Condition]:
    """``where AND NOT exclude`` as a list of AND-ed conditions (nested ``all`` flattened)."""
    parts: list[Condition] = []

    def add(cond: Condition) -> None:
        if isinstance(cond, AllOf):
            for child in cond.conditions:
                add(child)
        elif isinstance(cond, Not) and isinstance(cond.condition, Not):
            add(cond.condition.condition)  # not not x == x, also for unknown
        elif isinstance(cond, Not) and isinstance(cond.condition, AnyOf):
            for child in cond.condition.conditions:  # not (a or b) == not a and not b
                add(Not(condition=child, line=cond.line))
        else:
            parts.append(cond)

    add(segment.where)
    if segment.exclude is not None:
        add(Not(condition=segment.exclude, line=segment.exclude.line))
    return parts


def count_meaning(comparisons: tuple[Comparison, ...]) -> str | None:
    """``"some"`` if the count test means ``count >= 1``, ``"none"`` if ``count == 0``."""
    ops = {(c.op, c.value) for c in comparisons}
    if len(ops) == 1:
        (op, value) = next(iter(ops))
        if (op, value) in (("gte", 1), ("gt", 0), ("ne", 0)):
            return "some"
        if (op, value) in (("eq", 0), ("lt", 1), ("lte", 0)):
            return "none"
    return None


@dataclass
class _EventPlan:
    """Event aggregates the group_by must produce, each computed once."""

    counts: dict[str, tuple[str, EventCondition]] = field(default_factory=dict)
    last_seen: dict[str, str] = field(default_factory=dict)


class _Compiler:
    def __init__(
        self, contacts_schema: pl.Schema, events_schema: pl.Schema | None, ctx: SegmentContext
    ) -> None:
        self.contacts_schema = contacts_schema
        self.events_schema = events_schema
        self.ctx = ctx
        self.plan = _EventPlan()
        self.contacts: pl.LazyFrame | None = None  # set by compile(): the canonical lookups
        prefix = _COLUMN_PREFIX
        while any(name.startswith(prefix) for name in contacts_schema.names()):
            prefix = "_" + prefix
        self.prefix = prefix

    # -- plan ----------------------------------------------------------------------------

    def compile(
        self, segment: Segment, contacts: pl.LazyFrame, events: pl.LazyFrame | None
    ) -> pl.LazyFrame:
        ctx = self.ctx
        self.contacts = contacts
        contact_filters: list[pl.Expr] = []
        joins: list[tuple[str, EventCondition]] = []
        event_filters: list[pl.Expr] = []
        for part in top_level_parts(segment):
            event, negated = part, False
            if isinstance(part, Not) and isinstance(part.condition, EventCondition):
                event, negated = part.condition, True
            if isinstance(event, EventCondition) and count_meaning(event.count) is not None:
                wanted = count_meaning(event.count) == "some"
                joins.append(("semi" if wanted != negated else "anti", event))
            elif _uses_events(part):
                event_filters.append(self.condition(part))
            else:
                contact_filters.append(self.condition(part))

        selected = contacts
        if contact_filters:
            selected = selected.filter(_and(contact_filters))
        for how, event in joins:
            if events is None:  # pragma: no cover - validation requires events
                raise InternalError("event condition compiled without an events source")
            matching = events.filter(self.event_filter(event)).select(ctx.event_contact_id)
            selected = selected.join(
                matching,
                left_on=ctx.contact_id,
                right_on=ctx.event_contact_id,
                how=how,  # type: ignore[arg-type]
            )
        if event_filters:
            if events is None:  # pragma: no cover - validation requires events
                raise InternalError("event condition compiled without an events source")
            selected = selected.join(
                self.aggregates(events),
                left_on=ctx.contact_id,
                right_on=ctx.event_contact_id,
                how="left",
            ).filter(_and(event_filters))
        return selected.select(self.contacts_schema.names())

    def aggregates(self, events: pl.LazyFrame) -> pl.LazyFrame:
        """One row per contact with matching events: a count per distinct filter, last dates."""
        ctx = self.ctx
        time = pl.col(ctx.event_time)
        matches: list[tuple[pl.Expr, str, str]] = []
        for name, event in self.plan.counts.values():
            matches.append((self.event_filter(event), name, "count"))
        for event_type, name in self.plan.last_seen.items():
            before_tomorrow = self.time_before(self.ctx.as_of + dt.timedelta(days=1))
            matches.append(((self.event_type_expr() == event_type) & before_tomorrow, name, "last"))
        wanted = functools.reduce(operator.or_, [match for match, _, _ in matches])
        matching = events.filter(wanted)
        if len(matches) == 1:
            # The pre-filter keeps exactly the rows of the one aggregate.
            _, name, kind = matches[0]
            agg = pl.len() if kind == "count" else time.max()
            return matching.group_by(ctx.event_contact_id).agg(agg.alias(name))
        # Several aggregates: evaluate each filter once as a column before grouping, so the
        # group_by only runs plain sums and maxima (its fast path).
        columns = [
            match.fill_null(False).alias(name)
            if kind == "count"
            else pl.when(match).then(time).alias(name)
            for match, name, kind in matches
        ]
        aggs = [
            pl.col(name).sum().cast(pl.Int64) if kind == "count" else pl.col(name).max()
            for _, name, kind in matches
        ]
        return (
            matching.select(ctx.event_contact_id, *columns).group_by(ctx.event_contact_id).agg(aggs)
        )

    # -- contact-level expressions -------------------------------------------------------

    def condition(self, cond: Condition) -> pl.Expr:
        if isinstance(cond, AllOf):
            return _and([self.condition(c) for c in cond.conditions])
        if isinstance(cond, AnyOf):
            return functools.reduce(operator.or_, [self.condition(c) for c in cond.conditions])
        if isinstance(cond, Not):
            return ~self.condition(cond.condition)
        if isinstance(cond, EventCondition):
            column = pl.col(self.count_column(cond)).fill_null(0)
            return _and([_compare(column, c, "number", pl.Int64()) for c in cond.count])
        return self.contact_field(cond)

    def count_column(self, event: EventCondition) -> str:
        key = event.filter_key()
        if key not in self.plan.counts:
            name = f"{self.prefix}count_{len(self.plan.counts)}"
            self.plan.counts[key] = (name, event)
        return self.plan.counts[key][0]

    def contact_field(self, cond: FieldCondition) -> pl.Expr:
        kind, base = classify_field(cond.field)
        as_of = pl.lit(self.ctx.as_of, dtype=pl.Date)
        if kind == "column":
            dtype = self.contacts_schema[cond.field]
            if category(dtype) == "string":
                identity_field = self.ctx.identity_field(cond.field)
                if identity_field is not None:
                    return self.canonical(cond, identity_field)
                if cond.field in self.ctx.case_insensitive:
                    return self.folded(pl.col(cond.field), cond, dtype)
            return self.comparisons(pl.col(cond.field), cond, dtype)
        if kind == "age":
            assert self.ctx.birth_date is not None
            born = _as_date(pl.col(self.ctx.birth_date), self.contacts_schema[self.ctx.birth_date])
            if self.contacts_schema[self.ctx.birth_date] == pl.Date:
                ranges = [_age_as_birth_dates(born, c, self.ctx.as_of) for c in cond.comparisons]
                if all(r is not None for r in ranges):
                    return _and(ranges)  # type: ignore[arg-type]
            return self.comparisons(age_years(born, self.ctx.as_of), cond, pl.Int64())
        if kind == "days_since_column":
            value = _as_date(pl.col(base), self.contacts_schema[base])
            days = (as_of - value).dt.total_days().cast(pl.Int64)
            return self.comparisons(days, cond, pl.Int64())
        # days_since_last_<event type>
        name = self.plan.last_seen.setdefault(base, f"{self.prefix}last_{len(self.plan.last_seen)}")
        assert self.events_schema is not None
        last = _as_date(pl.col(name), self.events_schema[self.ctx.event_time])
        days = (as_of - last).dt.total_days().cast(pl.Int64)
        return self.comparisons(days, cond, pl.Int64())

    def canonical(self, cond: FieldCondition, identity_field: str) -> pl.Expr:
        """A condition on an identity-mapped column: equality tests compare the values
        the upload layer normalizes to (``ny``, ``New York`` → ``NY``) on both sides;
        the other text tests ignore case; null tests read the column as it is."""
        from audiences.crm.distinct import predicate_by_distinct
        from audiences.crm.identifiers import canonical_expr, canonical_values

        assert self.ctx.identity is not None
        column = canonical_expr(self.ctx.identity, identity_field, schema=self.contacts_schema)
        raw = pl.col(cond.field).cast(pl.String)
        parts = []
        for comparison in cond.comparisons:
            values = _values(comparison)
            exact = not _split_patterns(values)[1]
            if comparison.op in ("eq", "ne", "in", "not_in") and exact:
                given = [str(v) for v in values]
                meant = canonical_values(self.ctx.identity, identity_field, given)
                normal = tuple(m if m is not None else g for m, g in zip(meant, given, strict=True))
                parts.append(_compare_string(column, comparison.op, normal))
            elif comparison.op in ("is_null", "not_null"):
                parts.append(_compare(raw, comparison, "string", pl.String()))
            else:
                parts.append(_folded_compare(raw, comparison))
        if self.contacts is None:  # pragma: no cover - compile() sets it
            return _and(parts)
        # the canonical form costs about 1 s per million rows; a CRM has few distinct values
        return predicate_by_distinct(self.contacts, _and(parts))

    def folded(self, value: pl.Expr, cond: FieldCondition, dtype: pl.DataType) -> pl.Expr:
        """A case-insensitive text column: both sides lowercase."""
        text = value if dtype == pl.String else value.cast(pl.String)
        return _and([_folded_compare(text, c) for c in cond.comparisons])

    def comparisons(self, value: pl.Expr, cond: FieldCondition, dtype: pl.DataType) -> pl.Expr:
        cat = category(dtype)
        if cat == "string" and dtype != pl.String:
            value = value.cast(pl.String)
        elif cat == "string_list" and dtype != pl.List(pl.String):
            value = value.cast(pl.List(pl.String))
        return _and([_compare(value, c, cat, dtype) for c in cond.comparisons])

    # -- event-level expressions ---------------------------------------------------------

    def event_type_expr(self) -> pl.Expr:
        assert self.events_schema is not None
        column = pl.col(self.ctx.event_type)
        return (
            column
            if self.events_schema[self.ctx.event_type] == pl.String
            else column.cast(pl.String)
        )

    def event_filter(self, event: EventCondition) -> pl.Expr:
        """True for the event rows ``event`` counts (null where its ``where`` is unknown)."""
        types = list(event.types)
        parts = [
            self.event_type_expr() == types[0]
            if len(types) == 1
            else self.event_type_expr().is_in(types)
        ]
        if event.window is not None:
            parts.append(self.window(event.window))
        if event.where is not None:
            parts.append(self.event_condition(event.where))
        return _and(parts)

    def event_condition(self, cond: Condition) -> pl.Expr:
        assert self.events_schema is not None
        if isinstance(cond, AllOf):
            return _and([self.event_condition(c) for c in cond.conditions])
        if isinstance(cond, AnyOf):
            return functools.reduce(
                operator.or_, [self.event_condition(c) for c in cond.conditions]
            )
        if isinstance(cond, Not):
            return ~self.event_condition(cond.condition)
        if isinstance(cond, EventCondition):  # pragma: no cover - the loader forbids it
            raise InternalError("event condition nested in an event filter")
        dtype = self.events_schema[cond.field]
        if cond.field in self.ctx.event_case_insensitive and category(dtype) == "string":
            return self.folded(pl.col(cond.field), cond, dtype)
        return self.comparisons(pl.col(cond.field), cond, dtype)

    def window(self, window: Window) -> pl.Expr:
        first, last = window.day_range(self.ctx.as_of)
        return self.time_from(first) & self.time_before(last + dt.timedelta(days=1))

    def time_from(self, day: dt.date) -> pl.Expr:
        """Event happened on ``day`` or later."""
        return pl.col(self.ctx.event_time) >= self.day_start(day)

    def time_before(self, day: dt.date) -> pl.Expr:
        """Event happened before ``day`` started."""
        return pl.col(self.ctx.event_time) < self.day_start(day)

    def day_start(self, day: dt.date) -> pl.Expr:
        assert self.events_schema is not None
        return _day_start(day, self.events_schema[self.ctx.event_time])


# -- comparisons (shared by contacts and events) -----------------------------------------


def _compare(value: pl.Expr, comparison: Comparison, cat: Category, dtype: pl.DataType) -> pl.Expr:
    op, raw = comparison.op, comparison.value
    if op in ("is_null", "not_null"):
        wants_null = (op == "is_null") == bool(raw)
        return value.is_null() if wants_null else value.is_not_null()
    values = raw if isinstance(raw, tuple) else (raw,)
    if cat == "string_list":
        return _compare_list(value, op, values)
    if cat == "string":
        return _compare_string(value, op, values)
    if cat == "datetime" and all(isinstance(v, str) and len(v) == 10 for v in values):
        # Date-only values compare with the day of a date-time column.
        value, cat = value.dt.date(), "date"
    converted = [_literal(comparison_value(v, cat), cat, dtype) for v in values]
    return _ordered(value, op, converted)


def _values(comparison: Comparison) -> tuple[object, ...]:
    raw = comparison.value
    return raw if isinstance(raw, tuple) else (raw,)


def _folded_compare(text: pl.Expr, comparison: Comparison) -> pl.Expr:
    """A text comparison with both sides lowercase (null tests unchanged)."""
    if comparison.op in ("is_null", "not_null"):
        return _compare(text, comparison, "string", pl.String())
    lowered = tuple(str(v).lower() for v in _values(comparison))
    return _compare_string(text.str.to_lowercase(), comparison.op, lowered)


def _ordered(value: pl.Expr, op: str, values: list[pl.Expr]) -> pl.Expr:
    if op == "eq":
        return value == values[0]
    if op == "ne":
        return value != values[0]
    if op in ("in", "not_in"):
        # Null in, null out: OR of equalities keeps the column's null as unknown.
        matched = functools.reduce(operator.or_, [value == v for v in values])
        return matched if op == "in" else ~matched
    if op == "gt":
        return value > values[0]
    if op == "gte":
        return value >= values[0]
    if op == "lt":
        return value < values[0]
    if op == "lte":
        return value <= values[0]
    if op == "between":
        return (value >= values[0]) & (value <= values[1])
    raise InternalError(f"operator {op} reached the ordered comparison")  # pragma: no cover


def _split_patterns(values: tuple[object, ...]) -> tuple[list[str], list[str]]:
    exact = [str(v) for v in values if not str(v).endswith("*")]
    prefixes = [str(v)[:-1] for v in values if str(v).endswith("*")]
    return exact, prefixes


def _string_matches(value: pl.Expr, values: tuple[object, ...]) -> pl.Expr:
    exact, prefixes = _split_patterns(values)
    parts: list[pl.Expr] = []
    if len(exact) == 1:
        parts.append(value == exact[0])
    elif exact:
        parts.append(value.is_in(exact))
    parts += [value.str.starts_with(p) for p in prefixes]
    return functools.reduce(operator.or_, parts)


def _compare_string(value: pl.Expr, op: str, values: tuple[object, ...]) -> pl.Expr:
    if op in ("eq", "in"):
        return _string_matches(value, values)
    if op in ("ne", "not_in"):
        return ~_string_matches(value, values)
    if op == "contains":
        return value.str.contains(str(values[0]), literal=True)
    if op == "starts_with":
        return value.str.starts_with(str(values[0]))
    return _ordered(value, op, [pl.lit(str(v), dtype=pl.String) for v in values])


def _compare_list(value: pl.Expr, op: str, values: tuple[object, ...]) -> pl.Expr:
    """Element tests on List(String): true if any element matches (null list: unknown)."""
    if op == "starts_with":
        element = pl.element().str.starts_with(str(values[0]))
    else:
        element = _string_matches(pl.element(), values)
    exact, prefixes = _split_patterns(values)
    if op != "starts_with" and len(exact) == 1 and not prefixes:
        matched = value.list.contains(exact[0])
    else:
        matched = value.list.eval(element).list.any()
        # list.any() is false for a null list; keep it unknown like every other comparison.
        matched = pl.when(value.is_null()).then(None).otherwise(matched)
    return ~matched if op in ("ne", "not_in") else matched


def _literal(value: object, cat: Category, dtype: pl.DataType) -> pl.Expr:
    if cat == "date":
        return pl.lit(value, dtype=pl.Date)
    if cat == "datetime":
        assert isinstance(dtype, pl.Datetime)
        return _datetime_literal(value, dtype)  # type: ignore[arg-type]
    return pl.lit(value)


def _datetime_literal(value: dt.datetime | dt.date, dtype: pl.Datetime) -> pl.Expr:
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time())
    literal = pl.lit(value, dtype=pl.Datetime("us"))
    if dtype.time_zone is not None:
        literal = literal.dt.replace_time_zone(dtype.time_zone)
    unit = dtype.time_unit or "us"
    return literal if unit == "us" else literal.dt.cast_time_unit(unit)


def _day_start(day: dt.date, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.Datetime):
        return _datetime_literal(day, dtype)
    return pl.lit(day, dtype=pl.Date)


def age_years(born: pl.Expr, as_of: dt.date) -> pl.Expr:
    """Whole years between a Date expression and ``as_of`` (null when unknown)."""
    not_yet = (born.dt.month().cast(pl.Int32) * 100 + born.dt.day().cast(pl.Int32)) > (
        as_of.month * 100 + as_of.day
    )
    return (pl.lit(as_of.year) - born.dt.year().cast(pl.Int64) - not_yet.cast(pl.Int64)).cast(
        pl.Int64
    )


def born_by(as_of: dt.date, years: int) -> dt.date | None:
    """The last birth date of someone ``years`` old or older on ``as_of`` (None if out of
    the calendar's range): ``age_years(born) >= years`` exactly when ``born <= born_by``."""
    year = as_of.year - years
    if not dt.MINYEAR <= year <= dt.MAXYEAR:
        return None
    day = as_of.day
    if as_of.month == 2 and day == 29 and not calendar.isleap(year):
        day = 28  # born on 29 February counts from 1 March; nobody was born on the 29th
    return dt.date(year, as_of.month, day)


def _age_as_birth_dates(born: pl.Expr, comparison: Comparison, as_of: dt.date) -> pl.Expr | None:
    """An ``age`` comparison as a birth-date range (None if it has no exact one).

    Exactly as ``age_years`` compares, nulls included, but a plain date comparison: the
    Parquet reader applies it while decoding, and skips row groups by their statistics.
    """
    op, raw = comparison.op, comparison.value
    given = raw if isinstance(raw, tuple) else (raw,)
    values = [v for v in given if isinstance(v, int) and not isinstance(v, bool)]
    if len(values) != len(given):
        return None

    def at_least(years: int) -> pl.Expr | None:  # age >= years
        last = born_by(as_of, years)
        return None if last is None else born <= pl.lit(last, dtype=pl.Date)

    def below(years: int) -> pl.Expr | None:  # age < years
        last = born_by(as_of, years)
        return None if last is None else born > pl.lit(last, dtype=pl.Date)

    first = values[0]
    bounds: list[pl.Expr | None]
    if op == "gte":
        bounds = [at_least(first)]
    elif op == "gt":
        bounds = [at_least(first + 1)]
    elif op == "lt":
        bounds = [below(first)]
    elif op == "lte":
        bounds = [below(first + 1)]
    elif op == "eq":
        bounds = [at_least(first), below(first + 1)]
    elif op == "between":
        bounds = [at_least(first), below(values[1] + 1)]
    else:
        return None
    if any(b is None for b in bounds):
        return None
    return _and(bounds)  # type: ignore[arg-type]


def as_date(value: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A Date view of a Date or Datetime column."""
    return _as_date(value, dtype)


def _as_date(value: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    return value.dt.date() if isinstance(dtype, pl.Datetime) else value


def _and(parts: list[pl.Expr]) -> pl.Expr:
    return functools.reduce(operator.and_, parts)


def _uses_events(cond: Condition) -> bool:
    if isinstance(cond, AllOf | AnyOf):
        return any(_uses_events(c) for c in cond.conditions)
    if isinstance(cond, Not):
        return _uses_events(cond.condition)
    if isinstance(cond, EventCondition):
        return True
    return classify_field(cond.field)[0] == "days_since_last_event"
