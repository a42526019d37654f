"""Compile a segment to SQL (a sqlglot expression tree) with the polars compiler's meaning.

The statement reads a contacts table (alias ``c``) and, when the segment needs them, an
events table; it returns the contacts rows the polars compiler selects (duplicates
included), as their id or as the columns asked for. The plan mirrors
:mod:`audiences.segments.compiler`:

* top-level "has such an event" / "has no such event" parts become ``EXISTS`` /
  ``NOT EXISTS`` subqueries;
* every other event use reads one ``LEFT JOIN`` of per-contact aggregates (a conditional
  count per distinct event filter, the last time per ``days_since_last_<type>``);
* everything else is a predicate on the contacts row.

Three-valued logic is SQL's own, which is what polars implements. Everything that depends
on days is compiled to comparisons of the *stored column* with literals computed here in
Python (day starts, birth-date bounds), so no dialect's date arithmetic, time zone setting
or calendar is involved: ``age``, ``days_since_*``, windows and date-only comparisons on
date-time columns are exact, month ends and 29 February included. A time-zone-aware column
is compared with instants: the day starts in the column's zone, converted to UTC here.
String ordering is by code point (``COLLATE "C"`` on PostgreSQL), as in polars.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import polars as pl
import sqlglot.expressions as exp

from audiences.core.errors import InternalError, SegmentError
from audiences.segments import model
from audiences.segments.compiler import born_by, count_meaning, top_level_parts
from audiences.segments.context import SegmentContext
from audiences.segments.validate import Category, category, check_segment, comparison_value

Dialect = Literal["duckdb", "postgres", "snowflake", "bigquery"]
DIALECTS: tuple[str, ...] = get_args(Dialect)

_CONTACTS = "c"
_EVENTS = "e"
_AGGREGATES = "a"
_MAX_ORDINAL = dt.date.max.toordinal()
#: ``k -> ordinal`` of the last day whose derived number (age, days since) is ``k`` or more.
_LastDay = Callable[[int], int]


@dataclass(frozen=True)
class SqlTables:
    """Where the segment's data lives: table names and an optional database schema."""

    contacts: str
    events: str | None = None
    schema: str | None = None

    def table(self, name: str, alias: str) -> exp.Table:
        table = exp.table_(name, db=self.schema, quoted=True)
        table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
        return table


def segment_sql(
    segment: model.Segment,
    contacts_schema: pl.Schema,
    events_schema: pl.Schema | None,
    ctx: SegmentContext,
    *,
    tables: SqlTables,
    dialect: Dialect,
    columns: Sequence[str] | None = None,
) -> exp.Select:
    """A SELECT of the contacts rows ``segment`` selects: their id, or ``columns``.

    The schemas are the polars view of the tables' columns (what the segment is validated
    against). Raises :class:`SegmentError` if the segment does not fit them, or uses a
    construct the dialect cannot express exactly.
    """
    if dialect not in DIALECTS:
        raise SegmentError(f"unknown SQL dialect '{dialect}'", "use one of: " + ", ".join(DIALECTS))
    check_segment(segment, contacts_schema, events_schema, ctx)
    compiler = _SqlCompiler(contacts_schema, events_schema, ctx, dialect, tables)
    return compiler.select(segment, list(columns) if columns else [ctx.contact_id])


def segment_sql_text(
    segment: model.Segment,
    contacts_schema: pl.Schema,
    events_schema: pl.Schema | None,
    ctx: SegmentContext,
    *,
    tables: SqlTables,
    dialect: Dialect,
    columns: Sequence[str] | None = None,
    pretty: bool = False,
) -> str:
    """:func:`segment_sql` rendered for ``dialect``."""
    query = segment_sql(
        segment,
        contacts_schema,
        events_schema,
        ctx,
        tables=tables,
        dialect=dialect,
        columns=columns,
    )
    return query.sql(dialect=dialect, pretty=pretty)


@dataclass
class _Plan:
    counts: dict[str, tuple[str, model.EventCondition]] = field(default_factory=dict)
    last_seen: dict[str, str] = field(default_factory=dict)


class _SqlCompiler:
    def __init__(
        self,
        contacts_schema: pl.Schema,
        events_schema: pl.Schema | None,
        ctx: SegmentContext,
        dialect: Dialect,
        tables: SqlTables,
    ) -> None:
        self.contacts_schema = contacts_schema
        self.events_schema = events_schema
        self.ctx = ctx
        self.dialect = dialect
        self.tables = tables
        self.plan = _Plan()
        self.unnest_depth = 0

    # -- statement -----------------------------------------------------------------------

    def select(self, segment: model.Segment, columns: list[str]) -> exp.Select:
        for name in columns:
            if name not in self.contacts_schema:
                raise SegmentError(
                    f"contacts table '{self.tables.contacts}' has no column '{name}'",
                    "select only columns the contacts table has",
                )
        filters: list[exp.Expr] = []
        for part in top_level_parts(segment):
            event, negated = part, False
            if isinstance(part, model.Not) and isinstance(part.condition, model.EventCondition):
                event, negated = part.condition, True
            if isinstance(event, model.EventCondition) and count_meaning(event.count) is not None:
                wanted = (count_meaning(event.count) == "some") != negated
                exists = exp.Exists(this=self.matching_events(event))
                filters.append(exists if wanted else exp.Not(this=exists))
            else:
                filters.append(self.condition(part))
        query = exp.select(*(_col(name, _CONTACTS) for name in columns)).from_(
            self.tables.table(self.tables.contacts, _CONTACTS)
        )
        if self.plan.counts or self.plan.last_seen:
            query = query.join(
                self.aggregates(),
                on=exp.EQ(
                    this=_col(self.ctx.contact_id, _CONTACTS),
                    expression=_col(self.ctx.event_contact_id, _AGGREGATES),
                ),
                join_type="left",
            )
        return query.where(exp.and_(*filters)) if filters else query

    def events_table(self) -> exp.Table:
        if self.tables.events is None or self.events_schema is None:  # pragma: no cover
            raise InternalError("event condition compiled without an events table")
        return self.tables.table(self.tables.events, _EVENTS)

    def matching_events(self, event: model.EventCondition) -> exp.Select:
        same_contact = exp.EQ(
            this=_col(self.ctx.event_contact_id, _EVENTS),
            expression=_col(self.ctx.contact_id, _CONTACTS),
        )
        return (
            exp.select(exp.Literal.number(1))
            .from_(self.events_table())
            .where(exp.and_(same_contact, self.event_filter(event)))
        )

    def aggregates(self) -> exp.Subquery:
        """One row per contact with events: a count per distinct filter, last times."""
        time = _col(self.ctx.event_time, _EVENTS)
        matches: list[exp.Expr] = []
        outputs: list[exp.Expr] = []
        for name, event in self.plan.counts.values():
            match = self.event_filter(event)
            matches.append(match.copy())
            counted = exp.Case(ifs=[exp.If(this=match, true=exp.Literal.number(1))])
            counted.set("default", exp.Literal.number(0))
            outputs.append(exp.alias_(exp.Sum(this=counted), name, quoted=True))
        for event_type, name in self.plan.last_seen.items():
            match = exp.and_(
                self.event_type_is([event_type]),
                exp.LT(this=time.copy(), expression=self.day_start_event(self.ctx.as_of, 1)),
            )
            matches.append(match.copy())
            last = exp.Case(ifs=[exp.If(this=match, true=time.copy())])
            outputs.append(exp.alias_(exp.Max(this=last), name, quoted=True))
        key = _col(self.ctx.event_contact_id, _EVENTS)
        query = (
            exp.select(key, *outputs)
            .from_(self.events_table())
            .where(exp.or_(*matches))
            .group_by(key.copy())
        )
        return query.subquery(_AGGREGATES)

    # -- contact level -------------------------------------------------------------------

    def condition(self, cond: model.Condition) -> exp.Expr:
        if isinstance(cond, model.AllOf):
            return exp.and_(*(self.condition(c) for c in cond.conditions))
        if isinstance(cond, model.AnyOf):
            return exp.or_(*(self.condition(c) for c in cond.conditions))
        if isinstance(cond, model.Not):
            return exp.Not(this=exp.paren(self.condition(cond.condition)))
        if isinstance(cond, model.EventCondition):
            count = exp.Coalesce(
                this=_col(self.count_column(cond), _AGGREGATES),
                expressions=[exp.Literal.number(0)],
            )
            return exp.and_(*(_ordered(count, c.op, _values(c)) for c in cond.count))
        return self.contact_field(cond)

    def count_column(self, event: model.EventCondition) -> str:
        key = event.filter_key()
        if key not in self.plan.counts:
            self.plan.counts[key] = (f"count_{len(self.plan.counts)}", event)
        return self.plan.counts[key][0]

    def contact_field(self, cond: model.FieldCondition) -> exp.Expr:
        kind, base = model.classify_field(cond.field)
        if kind == "column":
            column = _col(cond.field, _CONTACTS)
            return self.comparisons(column, cond, self.contacts_schema[cond.field])
        if kind == "age":
            assert self.ctx.birth_date is not None
            born = _col(self.ctx.birth_date, _CONTACTS)
            dtype = self.contacts_schema[self.ctx.birth_date]
            return self.derived_days(born, dtype, cond, self.age_last_birth_day)
        if kind == "days_since_column":
            value = _col(base, _CONTACTS)
            return self.derived_days(value, self.contacts_schema[base], cond, self.days_last_day)
        name = self.plan.last_seen.setdefault(base, f"last_{len(self.plan.last_seen)}")
        assert self.events_schema is not None
        dtype = self.events_schema[self.ctx.event_time]
        return self.derived_days(_col(name, _AGGREGATES), dtype, cond, self.days_last_day)

    # -- derived integer days (age, days since) ------------------------------------------

    def age_last_birth_day(self, years: int) -> int:
        """Ordinal of the last birth day of someone ``years`` old or older on ``as_of``."""
        year = self.ctx.as_of.year - years
        if year < dt.MINYEAR:
            return 0
        if year > dt.MAXYEAR:
            return _MAX_ORDINAL + 1
        last = born_by(self.ctx.as_of, years)
        assert last is not None
        return last.toordinal()

    def days_last_day(self, days: int) -> int:
        """Ordinal of the last day at least ``days`` days before ``as_of``."""
        return self.ctx.as_of.toordinal() - days

    def derived_days(
        self,
        value: exp.Expr,
        dtype: pl.DataType,
        cond: model.FieldCondition,
        last_day: _LastDay,
    ) -> exp.Expr:
        """Comparisons of a whole number that falls as the day of ``value`` rises.

        ``N >= k`` exactly when ``day(value) <= last_day(k)``; every operator is written
        with that, so the column is compared with literals only.
        """

        def at_least(k: int) -> exp.Expr:  # N >= k
            return self.day_before(value.copy(), dtype, last_day(k) + 1)

        def below(k: int) -> exp.Expr:  # N < k
            return self.day_from(value.copy(), dtype, last_day(k) + 1)

        def equals(v: object) -> exp.Expr:
            assert isinstance(v, int | float)
            if v != math.floor(v):
                return _known_false(value.copy())
            return exp.and_(at_least(int(v)), below(int(v) + 1))

        parts: list[exp.Expr] = []
        for comparison in cond.comparisons:
            op, values = comparison.op, _values(comparison)
            if op in ("is_null", "not_null"):
                parts.append(_null_test(value.copy(), comparison))
            elif op in ("eq", "ne", "in", "not_in"):
                matched = exp.or_(*(equals(v) for v in values))
                parts.append(matched if op in ("eq", "in") else _not(matched))
            elif op in ("gte", "gt", "between"):
                low = values[0]
                assert isinstance(low, int | float)
                parts.append(at_least(math.ceil(low) if op != "gt" else math.floor(low) + 1))
                if op == "between":
                    high = values[1]
                    assert isinstance(high, int | float)
                    parts.append(below(math.floor(high) + 1))
            else:  # lt, lte
                high = values[0]
                assert isinstance(high, int | float)
                parts.append(below(math.ceil(high) if op == "lt" else math.floor(high) + 1))
        return exp.and_(*parts)

    # -- days and instants ---------------------------------------------------------------

    def day_from(self, value: exp.Expr, dtype: pl.DataType, ordinal: int) -> exp.Expr:
        """``day(value) >= day ordinal``: unknown for null, like any comparison."""
        if ordinal <= 1:
            return _known_true(value)
        if ordinal > _MAX_ORDINAL:
            return _known_false(value)
        return exp.GTE(this=value, expression=self.day_start(dt.date.fromordinal(ordinal), dtype))

    def day_before(self, value: exp.Expr, dtype: pl.DataType, ordinal: int) -> exp.Expr:
        """``day(value) < day ordinal``."""
        if ordinal <= 1:
            return _known_false(value)
        if ordinal > _MAX_ORDINAL:
            return _known_true(value)
        return exp.LT(this=value, expression=self.day_start(dt.date.fromordinal(ordinal), dtype))

    def day_start(self, day: dt.date, dtype: pl.DataType) -> exp.Expr:
        if isinstance(dtype, pl.Datetime):
            return self.instant(dt.datetime.combine(day, dt.time()), dtype)
        return exp.cast(exp.Literal.string(day.isoformat()), exp.DataType.Type.DATE)

    def day_start_event(self, day: dt.date, plus_days: int = 0) -> exp.Expr:
        assert self.events_schema is not None
        dtype = self.events_schema[self.ctx.event_time]
        return self.day_start(day + dt.timedelta(days=plus_days), dtype)

    def instant(self, value: dt.datetime, dtype: pl.Datetime) -> exp.Expr:
        """A literal of a date-time column's type; a wall time in the column's zone."""
        if dtype.time_zone is None:
            text = value.isoformat(sep=" ")
            return exp.cast(exp.Literal.string(text), exp.DataType.Type.TIMESTAMP)
        try:
            zone = zoneinfo.ZoneInfo(dtype.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
            raise SegmentError(
                f"unknown time zone '{dtype.time_zone}' on a date-time column",
                "store event and contact times in UTC",
            ) from error
        utc = value.replace(tzinfo=zone).astimezone(dt.UTC)
        return exp.cast(exp.Literal.string(utc.isoformat(sep=" ")), exp.DataType.Type.TIMESTAMPTZ)

    # -- comparisons ---------------------------------------------------------------------

    def comparisons(
        self, value: exp.Expr, cond: model.FieldCondition, dtype: pl.DataType
    ) -> exp.Expr:
        cat = category(dtype)
        return exp.and_(*(self.compare(value, c, cat, dtype, cond.field) for c in cond.comparisons))

    def compare(
        self,
        value: exp.Expr,
        comparison: model.Comparison,
        cat: Category,
        dtype: pl.DataType,
        name: str,
    ) -> exp.Expr:
        op, values = comparison.op, _values(comparison)
        if op in ("is_null", "not_null"):
            return _null_test(value.copy(), comparison)
        if cat == "string_list":
            return self.compare_list(value.copy(), op, values, name)
        if cat == "string":
            return self.compare_string(value.copy(), op, values)
        if cat == "datetime" and all(isinstance(v, str) and len(v) == 10 for v in values):
            assert isinstance(dtype, pl.Datetime)
            return self.compare_days(value, op, values, dtype)
        literals = [self.literal(comparison_value(v, cat), cat, dtype) for v in values]
        return _ordered(value.copy(), op, literals)

    def literal(self, value: object, cat: Category, dtype: pl.DataType) -> exp.Expr:
        if cat == "date":
            assert isinstance(value, dt.date)
            return self.day_start(value, pl.Date())
        if cat == "datetime":
            assert isinstance(value, dt.datetime) and isinstance(dtype, pl.Datetime)
            return self.instant(value, dtype)
        if isinstance(value, bool):
            return exp.Boolean(this=value)
        if isinstance(value, int | float):
            return exp.Literal.number(value)
        return exp.Literal.string(str(value))

    def compare_days(
        self, value: exp.Expr, op: str, values: tuple[object, ...], dtype: pl.Datetime
    ) -> exp.Expr:
        """Date-only values against a date-time column: the day of the value, exactly."""
        days = [dt.date.fromisoformat(str(v)).toordinal() for v in values]

        def on(day: int) -> exp.Expr:
            return exp.and_(
                self.day_from(value.copy(), dtype, day),
                self.day_before(value.copy(), dtype, day + 1),
            )

        if op in ("eq", "in"):
            return exp.or_(*(on(d) for d in days))
        if op in ("ne", "not_in"):
            return _not(exp.or_(*(on(d) for d in days)))
        bounds = {
            "gt": lambda: self.day_from(value.copy(), dtype, days[0] + 1),
            "gte": lambda: self.day_from(value.copy(), dtype, days[0]),
            "lt": lambda: self.day_before(value.copy(), dtype, days[0]),
            "lte": lambda: self.day_before(value.copy(), dtype, days[0] + 1),
            "between": lambda: exp.and_(
                self.day_from(value.copy(), dtype, days[0]),
                self.day_before(value.copy(), dtype, days[1] + 1),
            ),
        }
        return bounds[op]()

    def string_matches(self, value: exp.Expr, values: tuple[object, ...]) -> exp.Expr:
        exact = [str(v) for v in values if not str(v).endswith("*")]
        prefixes = [str(v)[:-1] for v in values if str(v).endswith("*")]
        parts: list[exp.Expr] = []
        if len(exact) == 1:
            parts.append(exp.EQ(this=value.copy(), expression=exp.Literal.string(exact[0])))
        elif exact:
            parts.append(
                exp.In(this=value.copy(), expressions=[exp.Literal.string(v) for v in exact])
            )
        parts += [_starts_with(value.copy(), p) for p in prefixes]
        return exp.or_(*parts)

    def compare_string(self, value: exp.Expr, op: str, values: tuple[object, ...]) -> exp.Expr:
        if op in ("eq", "in"):
            return self.string_matches(value, values)
        if op in ("ne", "not_in"):
            return _not(self.string_matches(value, values))
        text = str(values[0])
        if op == "contains":
            if not text:
                return _known_true(value)
            found = exp.StrPosition(this=value, substr=exp.Literal.string(text))
            return exp.GT(this=found, expression=exp.Literal.number(0))
        if op == "starts_with":
            return _starts_with(value, text)
        if self.dialect == "postgres":  # code-point order whatever the database's locale
            value = exp.Collate(this=value, expression=exp.Identifier(this="C", quoted=True))
        return _ordered(value, op, [exp.Literal.string(str(v)) for v in values])

    def compare_list(
        self, value: exp.Expr, op: str, values: tuple[object, ...], name: str
    ) -> exp.Expr:
        """True if any element matches; a null list is unknown, null elements never match.

        ``contains`` on a list means an element equal to the value, as in polars.
        """
        if self.dialect == "snowflake":
            raise SegmentError(
                f"list column '{name}' cannot be tested on Snowflake yet (its array elements "
                "are VARIANT values)",
                "run this segment on DuckDB or PostgreSQL, or store the list as rows",
            )
        self.unnest_depth += 1
        alias, element_name = f"_u{self.unnest_depth}", f"_x{self.unnest_depth}"
        element = _col(element_name, alias)
        if op == "starts_with":
            match = _starts_with(element, str(values[0]))
        else:  # eq, in, contains (an element equal to it), ne, not_in
            match = self.string_matches(element, values)
        elements = exp.Unnest(
            expressions=[value.copy()],
            alias=exp.TableAlias(
                this=exp.to_identifier(alias), columns=[exp.to_identifier(element_name)]
            ),
        )
        any_match = exp.Exists(this=exp.select(exp.Literal.number(1)).from_(elements).where(match))
        known = exp.Case(
            ifs=[exp.If(this=exp.Is(this=value.copy(), expression=exp.Null()), true=exp.Null())]
        )
        known.set("default", any_match)
        return _not(known) if op in ("ne", "not_in") else known

    # -- event level ---------------------------------------------------------------------

    def event_type_is(self, types: list[str]) -> exp.Expr:
        column = _col(self.ctx.event_type, _EVENTS)
        if len(types) == 1:
            return exp.EQ(this=column, expression=exp.Literal.string(types[0]))
        return exp.In(this=column, expressions=[exp.Literal.string(t) for t in types])

    def event_filter(self, event: model.EventCondition) -> exp.Expr:
        parts = [self.event_type_is(list(event.types))]
        if event.window is not None:
            parts.append(self.window(event.window))
        if event.where is not None:
            parts.append(exp.paren(self.event_condition(event.where)))
        return exp.and_(*parts)

    def event_condition(self, cond: model.Condition) -> exp.Expr:
        assert self.events_schema is not None
        if isinstance(cond, model.AllOf):
            return exp.and_(*(self.event_condition(c) for c in cond.conditions))
        if isinstance(cond, model.AnyOf):
            return exp.or_(*(self.event_condition(c) for c in cond.conditions))
        if isinstance(cond, model.Not):
            return _not(self.event_condition(cond.condition))
        if isinstance(cond, model.EventCondition):  # pragma: no cover - the loader forbids it
            raise InternalError("event condition nested in an event filter")
        column = _col(cond.field, _EVENTS)
        return self.comparisons(column, cond, self.events_schema[cond.field])

    def window(self, window: model.Window) -> exp.Expr:
        first, last = window.day_range(self.ctx.as_of)
        time = _col(self.ctx.event_time, _EVENTS)
        return exp.and_(
            exp.GTE(this=time, expression=self.day_start_event(first)),
            exp.LT(this=time.copy(), expression=self.day_start_event(last, 1)),
        )


# -- helpers -------------------------------------------------------------------------------


def _col(name: str, table: str) -> exp.Column:
    return exp.column(name, table=table, quoted=True)


def _values(comparison: model.Comparison) -> tuple[object, ...]:
    raw = comparison.value
    return raw if isinstance(raw, tuple) else (raw,)


def _not(condition: exp.Expr) -> exp.Expr:
    return exp.Not(this=exp.paren(condition))


def _null_test(value: exp.Expr, comparison: model.Comparison) -> exp.Expr:
    wants_null = (comparison.op == "is_null") == bool(comparison.value)
    test = exp.Is(this=value, expression=exp.Null())
    return test if wants_null else exp.Not(this=test)


def _unknown() -> exp.Expr:
    return exp.cast(exp.Null(), exp.DataType.Type.BOOLEAN)


def _known_true(value: exp.Expr) -> exp.Expr:
    """True where ``value`` is not null, unknown where it is."""
    return exp.paren(exp.or_(exp.Not(this=exp.Is(this=value, expression=exp.Null())), _unknown()))


def _known_false(value: exp.Expr) -> exp.Expr:
    """False where ``value`` is not null, unknown where it is."""
    return exp.paren(exp.and_(exp.Is(this=value, expression=exp.Null()), _unknown()))


def _starts_with(value: exp.Expr, prefix: str) -> exp.Expr:
    if not prefix:
        return _known_true(value)
    return exp.StartsWith(this=value, expression=exp.Literal.string(prefix))


def _ordered(value: exp.Expr, op: str, values: Sequence[object]) -> exp.Expr:
    literals = [v if isinstance(v, exp.Expr) else exp.convert(v) for v in values]
    first = literals[0]
    if op == "eq":
        return exp.EQ(this=value, expression=first)
    if op == "ne":
        return exp.NEQ(this=value, expression=first)
    if op in ("in", "not_in"):
        matched = exp.or_(*(exp.EQ(this=value.copy(), expression=v) for v in literals))
        return exp.paren(matched) if op == "in" else _not(matched)
    if op == "between":
        return exp.and_(
            exp.GTE(this=value, expression=first),
            exp.LTE(this=value.copy(), expression=literals[1].copy()),
        )
    comparisons: dict[str, type[exp.Binary]] = {
        "gt": exp.GT,
        "gte": exp.GTE,
        "lt": exp.LT,
        "lte": exp.LTE,
    }
    if op not in comparisons:  # pragma: no cover - validation keeps other operators out
        raise InternalError(f"operator {op} reached the ordered SQL comparison")
    return comparisons[op](this=value, expression=first)
