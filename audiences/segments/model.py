"""The parsed form of a segment file: frozen pydantic models, canonical digest, references.

A segment file is YAML written by a marketer (see ``docs/segments.md``); the loader turns it
into these models. The models hold the *meaning* of the file, not its layout: field
conditions are sorted, durations are converted to days and the default event count is made
explicit, so two files that say the same thing have the same :attr:`Segment.digest`.
Line numbers travel along in ``line`` (excluded from dumps and from the digest) so that
validation can point at ``file:line``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

#: Version of the segment language; part of the digest so a change of semantics changes it.
LANGUAGE_VERSION = 1

Scalar = bool | int | float | str
Operator = Literal[
    "eq",
    "ne",
    "in",
    "not_in",
    "gt",
    "gte",
    "lt",
    "lte",
    "between",
    "is_null",
    "not_null",
    "contains",
    "starts_with",
]
OPERATORS: tuple[str, ...] = get_args(Operator)
#: Operators allowed on an event ``count``.
COUNT_OPERATORS: tuple[str, ...] = ("eq", "ne", "gt", "gte", "lt", "lte", "between")

AGE_FIELD = "age"
DAYS_SINCE_LAST_PREFIX = "days_since_last_"
DAYS_SINCE_PREFIX = "days_since_"


class _Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: 1-based line in the segment file (not part of the meaning, so not dumped or hashed).
    line: int | None = Field(default=None, exclude=True, repr=False)


class Comparison(_Node):
    """One operator and its value: ``gte: 50``, ``in: [NY, NJ]``, ``is_null: true``."""

    op: Operator
    value: Scalar | tuple[Scalar, ...]


class FieldCondition(_Node):
    """``<field>: {<op>: value, ...}`` — every comparison must hold."""

    kind: Literal["field"] = "field"
    field: str
    comparisons: tuple[Comparison, ...] = Field(min_length=1)


class Window(_Node):
    """Which events count, relative to ``as_of`` (day granularity).

    * ``within``: ``as_of - days <= day(event) <= as_of``
    * ``ahead``: ``as_of < day(event) <= as_of + days``
    * ``between``: ``start <= day(event) <= end`` (ISO dates)
    """

    kind: Literal["within", "ahead", "between"]
    days: int | None = None
    start: str | None = None
    end: str | None = None

    def day_range(self, as_of: dt.date) -> tuple[dt.date, dt.date]:
        """The first and last day an event may fall on (both included), at ``as_of``."""
        if self.kind == "within":
            assert self.days is not None
            return as_of - dt.timedelta(days=self.days), as_of
        if self.kind == "ahead":
            assert self.days is not None
            return as_of + dt.timedelta(days=1), as_of + dt.timedelta(days=self.days)
        assert self.start is not None and self.end is not None
        return dt.date.fromisoformat(self.start), dt.date.fromisoformat(self.end)


class EventCondition(_Node):
    """``event: {type, where, count, within | ahead | between}``."""

    kind: Literal["event"] = "event"
    types: tuple[str, ...] = Field(min_length=1)
    where: Condition | None = None
    count: tuple[Comparison, ...] = (Comparison(op="gte", value=1),)
    window: Window | None = None

    def filter_key(self) -> str:
        """Canonical text of which events this condition counts (everything but ``count``)."""
        return canonical_json(self.model_dump(mode="json", exclude={"count", "kind"}))


class AllOf(_Node):
    kind: Literal["all"] = "all"
    conditions: tuple[Condition, ...] = Field(min_length=1)


class AnyOf(_Node):
    kind: Literal["any"] = "any"
    conditions: tuple[Condition, ...] = Field(min_length=1)


class Not(_Node):
    kind: Literal["not"] = "not"
    condition: Condition


Condition = Annotated[
    FieldCondition | EventCondition | AllOf | AnyOf | Not, Field(discriminator="kind")
]

for _model in (EventCondition, AllOf, AnyOf, Not):
    _model.model_rebuild()


@dataclass(frozen=True)
class SegmentReferences:
    """What a segment definition reaches — the privacy gate decides PHI-derivation from this.

    Derived fields count as reaching their base data: ``age`` reaches the birth date
    column, ``days_since_last_visit`` reaches events of type ``visit``,
    ``days_since_created_at`` reaches ``created_at``.
    """

    contact_columns: frozenset[str]
    derived_fields: frozenset[str]
    event_types: frozenset[str]
    event_columns: frozenset[str]

    @property
    def uses_events(self) -> bool:
        return bool(self.event_types)


class Segment(_Node):
    """A parsed segment file."""

    name: str
    description: str = ""
    destinations: tuple[str, ...] = ()
    where: Condition
    exclude: Condition | None = None
    #: The file the segment was loaded from (not part of the meaning).
    source: str | None = Field(default=None, exclude=True, repr=False)

    def canonical(self) -> str:
        """Canonical JSON of the definition: sorted keys, no whitespace, defaults explicit."""
        body = self.model_dump(mode="json")
        body["language_version"] = LANGUAGE_VERSION
        return canonical_json(body)

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of :meth:`canonical`; layout, key order and comments don't change it."""
        return "sha256:" + hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()

    def references(self, birth_date: str | None = "birth_date") -> SegmentReferences:
        """Columns, derived fields, event types and event columns the definition reaches.

        ``birth_date`` is the contacts column ``age`` is derived from (the identity mapping's
        ``birth_date``; pass ``SegmentContext.birth_date``).
        """
        refs = _ReferenceCollector(birth_date)
        refs.visit(self.where, in_event=False)
        if self.exclude is not None:
            refs.visit(self.exclude, in_event=False)
        return SegmentReferences(
            contact_columns=frozenset(refs.contact_columns),
            derived_fields=frozenset(refs.derived_fields),
            event_types=frozenset(refs.event_types),
            event_columns=frozenset(refs.event_columns),
        )

    def location(self, line: int | None) -> str:
        """``file:line`` for messages."""
        where = self.source or "<segment>"
        return f"{where}:{line}" if line is not None else where


class _ReferenceCollector:
    def __init__(self, birth_date: str | None) -> None:
        self.birth_date = birth_date
        self.contact_columns: set[str] = set()
        self.derived_fields: set[str] = set()
        self.event_types: set[str] = set()
        self.event_columns: set[str] = set()

    def visit(self, cond: Condition, *, in_event: bool) -> None:
        if isinstance(cond, AllOf | AnyOf):
            for child in cond.conditions:
                self.visit(child, in_event=in_event)
        elif isinstance(cond, Not):
            self.visit(cond.condition, in_event=in_event)
        elif isinstance(cond, EventCondition):
            self.event_types.update(cond.types)
            if cond.where is not None:
                self.visit(cond.where, in_event=True)
        elif in_event:
            self.event_columns.add(cond.field)
        else:
            self.field(cond.field)

    def field(self, name: str) -> None:
        kind, base = classify_field(name)
        if kind == "column":
            self.contact_columns.add(name)
            return
        self.derived_fields.add(name)
        if kind == "age":
            if self.birth_date:
                self.contact_columns.add(self.birth_date)
        elif kind == "days_since_last_event":
            self.event_types.add(base)
        else:
            self.contact_columns.add(base)


FieldKind = Literal["column", "age", "days_since_last_event", "days_since_column"]


def classify_field(name: str) -> tuple[FieldKind, str]:
    """Which kind of field a contact-level name is, and its base (event type or column).

    The derived names are reserved, so this needs no schema: ``age``,
    ``days_since_last_<event type>``, ``days_since_<date column>``; anything else is a
    contacts column.
    """
    if name == AGE_FIELD:
        return "age", name
    if name.startswith(DAYS_SINCE_LAST_PREFIX) and len(name) > len(DAYS_SINCE_LAST_PREFIX):
        return "days_since_last_event", name[len(DAYS_SINCE_LAST_PREFIX) :]
    if name.startswith(DAYS_SINCE_PREFIX) and len(name) > len(DAYS_SINCE_PREFIX):
        return "days_since_column", name[len(DAYS_SINCE_PREFIX) :]
    return "column", name


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
