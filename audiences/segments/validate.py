"""Check a parsed segment against the data schema: columns exist, operators fit their types.

:func:`validate_segment` returns every problem it finds as a :class:`SegmentIssue`
(``file``, ``line``, ``message``, ``suggestion``); :func:`check_segment` raises the first
as a :class:`SegmentError`. Destination names are checked by the caller (they live in the
project config), and event *types* are values, not schema, so they are not checked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import polars as pl

from audiences.core.errors import SegmentError
from audiences.segments import model
from audiences.segments.context import SegmentContext
from audiences.segments.loader import parse_iso_date, parse_iso_datetime, suggest

Category = Literal[
    "string", "string_list", "list", "number", "boolean", "date", "datetime", "other"
]

_ORDERED = ("gt", "gte", "lt", "lte", "between")
_EQUALITY = ("eq", "ne", "in", "not_in")
_NULLS = ("is_null", "not_null")
OPERATORS_BY_CATEGORY: dict[Category, tuple[str, ...]] = {
    "string": (*_EQUALITY, *_ORDERED, "contains", "starts_with", *_NULLS),
    "string_list": (*_EQUALITY, "contains", "starts_with", *_NULLS),
    "list": _NULLS,
    "number": (*_EQUALITY, *_ORDERED, *_NULLS),
    "boolean": ("eq", "ne", *_NULLS),
    "date": (*_EQUALITY, *_ORDERED, *_NULLS),
    "datetime": (*_EQUALITY, *_ORDERED, *_NULLS),
    "other": _NULLS,
}
_DESCRIPTION: dict[Category, str] = {
    "string": "text",
    "string_list": "a list of text",
    "list": "a list",
    "number": "a number",
    "boolean": "true/false",
    "date": "a date",
    "datetime": "a date-time",
    "other": "an unsupported type",
}


def category(dtype: pl.DataType) -> Category:
    """How the segment language treats a polars dtype."""
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum | pl.Categorical):
        return "string"
    if isinstance(dtype, pl.List):
        inner = dtype.inner
        if inner == pl.String or isinstance(inner, pl.Enum | pl.Categorical):
            return "string_list"
        return "list"
    if dtype.is_numeric():
        return "number"
    if dtype == pl.Boolean:
        return "boolean"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    return "other"


@dataclass(frozen=True)
class SegmentIssue:
    """One problem in a segment: where it is, what is wrong and how to fix it."""

    file: str
    line: int | None
    message: str
    suggestion: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}"
        return f"{text} — {self.suggestion}" if self.suggestion else text

    def to_error(self) -> SegmentError:
        return SegmentError(self.message, self.suggestion, where=self.where)


def validate_segment(
    segment: model.Segment,
    contacts_schema: pl.Schema,
    events_schema: pl.Schema | None,
    ctx: SegmentContext,
) -> list[SegmentIssue]:
    """Every schema problem in ``segment``, in file order (empty list: the segment is valid)."""
    checker = _Checker(segment, contacts_schema, events_schema, ctx)
    checker.contacts_keys()
    checker.condition(segment.where, events=False)
    if segment.exclude is not None:
        checker.condition(segment.exclude, events=False)
    return sorted(checker.issues, key=lambda i: i.line or 0)


def check_segment(
    segment: model.Segment,
    contacts_schema: pl.Schema,
    events_schema: pl.Schema | None,
    ctx: SegmentContext,
) -> None:
    """Raise the first problem :func:`validate_segment` finds as a :class:`SegmentError`."""
    issues = validate_segment(segment, contacts_schema, events_schema, ctx)
    if issues:
        error = issues[0].to_error()
        if len(issues) > 1:
            error.fix = f"{error.fix or 'fix it'} (and {len(issues) - 1} more problem(s))"
            error.args = (error.message,)
        raise error


def comparison_value(value: object, cat: Category) -> object:
    """A comparison value converted for a column category (dates parsed); assumes valid."""
    if cat == "date" and isinstance(value, str):
        return parse_iso_date(value)
    if cat == "datetime" and isinstance(value, str):
        day = parse_iso_date(value)
        return dt.datetime.combine(day, dt.time()) if day else parse_iso_datetime(value)
    return value


class _Checker:
    def __init__(
        self,
        segment: model.Segment,
        contacts_schema: pl.Schema,
        events_schema: pl.Schema | None,
        ctx: SegmentContext,
    ) -> None:
        self.segment = segment
        self.contacts = contacts_schema
        self.events = events_schema
        self.ctx = ctx
        self.issues: list[SegmentIssue] = []
        self.events_checked = False
        self.events_ok = False
        self.file = segment.source or "<segment>"

    def issue(self, line: int | None, message: str, suggestion: str | None) -> None:
        self.issues.append(SegmentIssue(self.file, line, message, suggestion))

    def contacts_keys(self) -> None:
        if self.ctx.contact_id not in self.contacts:
            self.issue(
                self.segment.line,
                f"contacts have no contact id column '{self.ctx.contact_id}'",
                "set the contact id column in audiences.toml",
            )

    # -- tree ----------------------------------------------------------------------------

    def condition(self, cond: model.Condition, *, events: bool) -> None:
        if isinstance(cond, model.AllOf | model.AnyOf):
            for child in cond.conditions:
                self.condition(child, events=events)
        elif isinstance(cond, model.Not):
            self.condition(cond.condition, events=events)
        elif isinstance(cond, model.EventCondition):
            self.event(cond)
        elif events:
            self.event_field(cond)
        else:
            self.contact_field(cond)

    # -- contact fields ------------------------------------------------------------------

    def contact_field(self, cond: model.FieldCondition) -> None:
        kind, base = model.classify_field(cond.field)
        if kind == "column":
            dtype = self.contacts.get(cond.field)
            if dtype is None:
                self.issue(
                    cond.line,
                    f"unknown column '{cond.field}'",
                    _unknown(cond.field, self.contact_names(), "contacts"),
                )
                return
            self.comparisons(cond, dtype)
        elif kind == "age":
            column = self.ctx.birth_date
            if column is None or column not in self.contacts:
                self.issue(
                    cond.line,
                    "'age' needs a birth date column, and none is mapped"
                    if column is None
                    else f"'age' needs the birth date column '{column}', which contacts lack",
                    "map birth_date under [identity] in audiences.toml",
                )
                return
            if category(self.contacts[column]) not in ("date", "datetime"):
                self.issue(
                    cond.line,
                    f"'age' needs '{column}' to be a Date, found {self.contacts[column]}",
                    "convert the birth date column to a date in the source",
                )
                return
            self.comparisons(cond, pl.Int64())
        elif kind == "days_since_last_event":
            if self.need_events(cond.line, cond.field):
                self.comparisons(cond, pl.Int64())
        else:
            dtype = self.contacts.get(base)
            if dtype is None or category(dtype) not in ("date", "datetime"):
                found = "does not exist" if dtype is None else f"is {dtype}, not a date"
                self.issue(
                    cond.line,
                    f"'{cond.field}' needs a date column '{base}', which {found}",
                    _unknown(cond.field, self.contact_names(), "contacts"),
                )
                return
            self.comparisons(cond, pl.Int64())

    def contact_names(self) -> list[str]:
        names = list(self.contacts.names())
        if self.ctx.birth_date and self.ctx.birth_date in self.contacts:
            names.append(model.AGE_FIELD)
        names += [
            f"{model.DAYS_SINCE_PREFIX}{name}"
            for name, dtype in self.contacts.items()
            if category(dtype) in ("date", "datetime")
        ]
        return names

    # -- events --------------------------------------------------------------------------

    def need_events(self, line: int | None, what: str) -> bool:
        if self.events is None:
            self.issue(
                line,
                f"'{what}' needs events, and no events source is configured",
                "add an events source to audiences.toml, or remove the event condition",
            )
            return False
        if not self.events_checked:
            self.events_checked = True
            self.events_ok = False
            ctx, events = self.ctx, self.events
            for role, column in (
                ("contact id", ctx.event_contact_id),
                ("event type", ctx.event_type),
                ("event time", ctx.event_time),
            ):
                if column not in events:
                    self.issue(
                        line,
                        f"events have no {role} column '{column}'",
                        _unknown(column, events.names(), "events"),
                    )
                    return False
            if category(events[ctx.event_time]) not in ("date", "datetime"):
                self.issue(
                    line,
                    f"event time column '{ctx.event_time}' is {events[ctx.event_time]}, "
                    "not a date-time",
                    "convert it to Datetime in the source",
                )
                return False
            if category(events[ctx.event_type]) != "string":
                self.issue(
                    line,
                    f"event type column '{ctx.event_type}' is {events[ctx.event_type]}, not text",
                    "convert it to String in the source",
                )
                return False
            contact_dtype = self.contacts.get(ctx.contact_id)
            if contact_dtype is not None and events[ctx.event_contact_id] != contact_dtype:
                self.issue(
                    line,
                    f"events '{ctx.event_contact_id}' is {events[ctx.event_contact_id]} but contacts "
                    f"'{ctx.contact_id}' is {contact_dtype}",
                    "give both id columns the same type in the source",
                )
                return False
            self.events_ok = True
        return self.events_ok

    def event(self, cond: model.EventCondition) -> None:
        if not self.need_events(cond.line, "event"):
            return
        if cond.where is not None:
            self.condition(cond.where, events=True)

    def event_field(self, cond: model.FieldCondition) -> None:
        assert self.events is not None
        dtype = self.events.get(cond.field)
        if dtype is None:
            self.issue(
                cond.line,
                f"unknown event column '{cond.field}'",
                _unknown(cond.field, self.events.names(), "events"),
            )
            return
        self.comparisons(cond, dtype)

    # -- operators and values ------------------------------------------------------------

    def comparisons(self, cond: model.FieldCondition, dtype: pl.DataType) -> None:
        cat = category(dtype)
        allowed = OPERATORS_BY_CATEGORY[cat]
        for comparison in cond.comparisons:
            line = comparison.line or cond.line
            if comparison.op not in allowed:
                self.issue(
                    line,
                    f"'{comparison.op}' does not apply to '{cond.field}' "
                    f"({_DESCRIPTION[cat]}, {dtype})",
                    "operators for it: " + ", ".join(allowed),
                )
                continue
            self.values(cond.field, comparison, cat, line)

    def values(
        self, field: str, comparison: model.Comparison, cat: Category, line: int | None
    ) -> None:
        op = comparison.op
        if op in _NULLS:
            return
        values = comparison.value if isinstance(comparison.value, tuple) else (comparison.value,)
        for value in values:
            problem = _value_problem(value, cat, op, field)
            if problem is not None:
                self.issue(line, *problem)
                return
        if op == "between":
            low, high = (comparison_value(v, cat) for v in values)
            try:
                reversed_range = low > high  # type: ignore[operator]
            except TypeError:
                self.issue(line, f"'between' on '{field}' mixes types", "write [low, high]")
                return
            if reversed_range:
                self.issue(
                    line,
                    f"'between' on '{field}' has its low end above its high end",
                    f"write between: [{values[1]}, {values[0]}]",
                )


def _value_problem(value: object, cat: Category, op: str, field: str) -> tuple[str, str] | None:
    shown = repr(value) if isinstance(value, str) else str(value).lower()
    if cat in ("string", "string_list"):
        if isinstance(value, str):
            return None
        return (
            f"'{field}' holds text but {op} has {shown} (not text)",
            f"quote it: {op}: '{value if not isinstance(value, bool) else shown}'",
        )
    if cat == "number":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return None
        if field.startswith(model.DAYS_SINCE_PREFIX):
            fix = "write a number of days or a duration such as 30d, 18mo, 2y"
        else:
            fix = "write a number without quotes"
        return (f"'{field}' holds numbers but {op} has {shown}", fix)
    if cat == "boolean":
        if isinstance(value, bool):
            return None
        return (f"'{field}' is true/false but {op} has {shown}", f"write {op}: true or {op}: false")
    if cat == "date":
        if isinstance(value, str) and parse_iso_date(value) is not None:
            return None
        return (
            f"'{field}' holds dates but {op} has {shown}",
            "write an ISO date such as 1960-01-31",
        )
    if cat == "datetime":
        if isinstance(value, str) and (
            parse_iso_date(value) is not None or parse_iso_datetime(value) is not None
        ):
            return None
        return (
            f"'{field}' holds date-times but {op} has {shown}",
            "write an ISO date (2024-01-31) or date-time (2024-01-31T08:00)",
        )
    return (f"'{field}' cannot be compared", "use is_null / not_null")  # pragma: no cover


def _unknown(name: str, candidates: Iterable[str], where: str) -> str:
    match = suggest(name, candidates)
    if match is not None:
        return f"did you mean '{match}'?"
    return f"check the spelling; `audiences columns` lists the {where} columns"


@dataclass(frozen=True)
class ValueTest:
    """An equality test of a segment (``eq`` / ``in`` / ``ne`` / ``not_in``) on a text
    column: its values can be checked against the values the data holds."""

    field: str
    line: int | None
    values: tuple[str, ...]
    events: bool


def value_tests(segment: model.Segment) -> list[ValueTest]:
    """The equality tests of ``segment`` on plain columns, with their exact values
    (prefix patterns such as ``NY*`` are left out)."""
    found: list[ValueTest] = []

    def walk(cond: model.Condition, events: bool) -> None:
        if isinstance(cond, model.AllOf | model.AnyOf):
            for child in cond.conditions:
                walk(child, events)
        elif isinstance(cond, model.Not):
            walk(cond.condition, events)
        elif isinstance(cond, model.EventCondition):
            if cond.where is not None:
                walk(cond.where, True)
        elif events or model.classify_field(cond.field)[0] == "column":
            for comparison in cond.comparisons:
                if comparison.op not in _EQUALITY:
                    continue
                raw = comparison.value
                values = raw if isinstance(raw, tuple) else (raw,)
                exact = tuple(v for v in values if isinstance(v, str) and not v.endswith("*"))
                if exact:
                    found.append(ValueTest(cond.field, comparison.line or cond.line, exact, events))

    walk(segment.where, False)
    if segment.exclude is not None:
        walk(segment.exclude, False)
    return found
