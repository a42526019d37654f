"""The segment compiler against a plain-Python reference evaluator.

The reference works on the YAML-shaped dicts directly (not on the parsed models) and on
Python rows, with three-valued logic spelled out: ``None`` is *unknown*, only *true*
selects, ``exclude`` removes rows whose exclude condition is true or unknown.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audiences.core.errors import SegmentError
from audiences.segments import SegmentContext, compile_segment, load_segment, parse_segment

EXAMPLE = Path(__file__).parent / "cases" / "segments" / "cardiology-lapsed.yaml"
AS_OF = dt.date(2025, 3, 1)
CTX = SegmentContext(as_of=AS_OF)

CONTACTS_SCHEMA = {
    "contact_id": pl.String,
    "state": pl.String,
    "score": pl.Int64,
    "ratio": pl.Float64,
    "active": pl.Boolean,
    "birth_date": pl.Date,
    "created_at": pl.Datetime("us"),
    "codes": pl.List(pl.String),
}
EVENTS_SCHEMA = {
    "contact_id": pl.String,
    "event_type": pl.String,
    "event_time": pl.Datetime("us"),
    "department": pl.String,
}

# -- reference evaluator --------------------------------------------------------------------

DURATION = {"d": 1, "w": 7, "mo": 30, "y": 365}


def days_of(value: Any) -> Any:
    if isinstance(value, str):
        match = re.fullmatch(r"(\d+)(d|w|mo|y)", value)
        assert match, value
        return int(match.group(1)) * DURATION[match.group(2)]
    return value


def and3(values: list[bool | None]) -> bool | None:
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def or3(values: list[bool | None]) -> bool | None:
    if any(v is True for v in values):
        return True
    return None if any(v is None for v in values) else False


def not3(value: bool | None) -> bool | None:
    return None if value is None else not value


def text_match(text: str, pattern: str) -> bool:
    return text.startswith(pattern[:-1]) if pattern.endswith("*") else text == pattern


def compare(value: Any, op: str, arg: Any, kind: str) -> bool | None:
    if op == "is_null":
        return (value is None) == arg
    if op == "not_null":
        return (value is not None) == arg
    if value is None:
        return None
    if kind == "list":
        elements = [e for e in value if e is not None]
        args = arg if isinstance(arg, list) else [arg]
        if op == "starts_with":
            return any(e.startswith(arg) for e in elements)
        hit = any(text_match(e, a) for e in elements for a in args)
        return not hit if op in ("ne", "not_in") else hit
    if kind == "text":
        if op in ("eq", "in"):
            return any(text_match(value, a) for a in (arg if isinstance(arg, list) else [arg]))
        if op in ("ne", "not_in"):
            return not any(text_match(value, a) for a in (arg if isinstance(arg, list) else [arg]))
        if op == "contains":
            return arg in value
        if op == "starts_with":
            return value.startswith(arg)
    if kind == "date":
        arg = (
            [dt.date.fromisoformat(a) for a in arg]
            if isinstance(arg, list)
            else dt.date.fromisoformat(arg)
        )
    if kind == "datetime":
        if isinstance(value, dt.datetime) and all(
            len(a) == 10 for a in (arg if isinstance(arg, list) else [arg])
        ):
            value = value.date()
            arg = (
                [dt.date.fromisoformat(a) for a in arg]
                if isinstance(arg, list)
                else dt.date.fromisoformat(arg)
            )
        else:
            arg = (
                [dt.datetime.fromisoformat(a) for a in arg]
                if isinstance(arg, list)
                else dt.datetime.fromisoformat(arg)
            )
    return {
        "eq": lambda: value == arg,
        "ne": lambda: value != arg,
        "in": lambda: value in arg,
        "not_in": lambda: value not in arg,
        "gt": lambda: value > arg,
        "gte": lambda: value >= arg,
        "lt": lambda: value < arg,
        "lte": lambda: value <= arg,
        "between": lambda: arg[0] <= value <= arg[1],
    }[op]()


KIND = {
    "contact_id": "text",
    "state": "text",
    "department": "text",
    "score": "number",
    "ratio": "number",
    "active": "bool",
    "birth_date": "date",
    "created_at": "datetime",
    "codes": "list",
}


class Reference:
    def __init__(
        self, contacts: list[dict[str, Any]], events: list[dict[str, Any]], as_of: dt.date
    ):
        self.as_of = as_of
        self.events: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            self.events.setdefault(event["contact_id"], []).append(event)
        self.contacts = contacts

    def select(self, doc: dict[str, Any]) -> set[str]:
        chosen = set()
        for row in self.contacts:
            keep = self.cond(row, doc["where"])
            if "exclude" in doc:
                keep = and3([keep, self.cond(row, doc["exclude"]) is False])
            if keep is True:
                chosen.add(row["contact_id"])
        return chosen

    def cond(self, row: dict[str, Any], cond: dict[str, Any]) -> bool | None:
        results = []
        for key, value in cond.items():
            if key == "all":
                results.append(and3([self.cond(row, c) for c in value]))
            elif key == "any":
                results.append(or3([self.cond(row, c) for c in value]))
            elif key == "not":
                results.append(not3(self.cond(row, value)))
            elif key == "event":
                results.append(self.event(row, value))
            else:
                results.append(self.field(row, key, value))
        return and3(results)

    def field(self, row: dict[str, Any], name: str, ops: dict[str, Any]) -> bool | None:
        if name == "age":
            born = row["birth_date"]
            value = None
            if born is not None:
                value = (
                    self.as_of.year
                    - born.year
                    - ((born.month, born.day) > (self.as_of.month, self.as_of.day))
                )
            kind = "number"
        elif name.startswith("days_since_last_"):
            kind_of_event = name.removeprefix("days_since_last_")
            days = [
                e["event_time"].date()
                for e in self.events.get(row["contact_id"], [])
                if e["event_type"] == kind_of_event and e["event_time"].date() <= self.as_of
            ]
            value = (self.as_of - max(days)).days if days else None
            kind = "number"
            ops = {
                op: ([days_of(a) for a in arg] if isinstance(arg, list) else days_of(arg))
                for op, arg in ops.items()
            }
        elif name.startswith("days_since_"):
            base = row[name.removeprefix("days_since_")]
            value = None if base is None else (self.as_of - base.date()).days
            kind = "number"
            ops = {
                op: ([days_of(a) for a in arg] if isinstance(arg, list) else days_of(arg))
                for op, arg in ops.items()
            }
        else:
            value, kind = row[name], KIND[name]
        return and3([compare(value, op, arg, kind) for op, arg in ops.items()])

    def event(self, row: dict[str, Any], spec: dict[str, Any]) -> bool:
        types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        count = 0
        for event in self.events.get(row["contact_id"], []):
            day = event["event_time"].date()
            if event["event_type"] not in types:
                continue
            if "within" in spec and not (
                self.as_of - dt.timedelta(days=days_of(spec["within"])) <= day <= self.as_of
            ):
                continue
            if "ahead" in spec and not (
                self.as_of < day <= self.as_of + dt.timedelta(days=days_of(spec["ahead"]))
            ):
                continue
            if "between" in spec and not (
                dt.date.fromisoformat(spec["between"][0])
                <= day
                <= dt.date.fromisoformat(spec["between"][1])
            ):
                continue
            if "where" in spec and self.cond(event, spec["where"]) is not True:
                continue
            count += 1
        tests = spec.get("count", {"gte": 1})
        return bool(and3([compare(count, op, arg, "number") for op, arg in tests.items()]))


# -- frames ---------------------------------------------------------------------------------


def frames(
    contacts: list[dict[str, Any]], events: list[dict[str, Any]]
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    return (
        pl.DataFrame(contacts, schema=CONTACTS_SCHEMA, orient="row").lazy(),
        pl.DataFrame(events, schema=EVENTS_SCHEMA, orient="row").lazy(),
    )


def compiled_ids(
    doc: dict[str, Any],
    contacts: list[dict[str, Any]],
    events: list[dict[str, Any]],
    as_of: dt.date = AS_OF,
) -> list[str]:
    segment = parse_segment(yaml.safe_dump(doc, sort_keys=False), source="t.yaml")
    lf_contacts, lf_events = frames(contacts, events)
    result = compile_segment(segment, lf_contacts, lf_events, SegmentContext(as_of=as_of)).collect()
    assert result.columns == list(CONTACTS_SCHEMA)
    assert result.schema == pl.Schema(CONTACTS_SCHEMA)
    return result["contact_id"].to_list()


def check_against_reference(
    doc: dict[str, Any],
    contacts: list[dict[str, Any]],
    events: list[dict[str, Any]],
    as_of: dt.date = AS_OF,
) -> set[str]:
    ids = compiled_ids(doc, contacts, events, as_of)
    assert len(ids) == len(set(ids)), "duplicate rows"
    expected = Reference(contacts, events, as_of).select(doc)
    assert set(ids) == expected, (yaml.safe_dump(doc), sorted(ids), sorted(expected))
    return expected


def contact(cid: str, **values: Any) -> dict[str, Any]:
    row = dict.fromkeys(CONTACTS_SCHEMA)
    row["contact_id"] = cid
    row.update(values)
    return row


def event(cid: str, kind: str, when: dt.datetime, department: str | None = None) -> dict[str, Any]:
    return {"contact_id": cid, "event_type": kind, "event_time": when, "department": department}


def at(days: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime.combine(AS_OF + dt.timedelta(days=days), dt.time(hour, minute, second))


# -- fixed table: every operator -------------------------------------------------------------

CONTACTS = [
    contact(
        "a",
        state="NY",
        score=5,
        ratio=0.5,
        active=True,
        birth_date=dt.date(1960, 3, 1),
        created_at=dt.datetime(2024, 1, 1, 9),
        codes=["E11.9", "I25.10"],
    ),
    contact(
        "b",
        state="NJ",
        score=-1,
        ratio=1.5,
        active=False,
        birth_date=dt.date(1960, 3, 2),
        created_at=dt.datetime(2024, 1, 2, 0),
        codes=[],
    ),
    contact(
        "c",
        state="CA",
        score=0,
        ratio=None,
        active=None,
        birth_date=None,
        created_at=None,
        codes=["Z00", None],
    ),
    contact(
        "d",
        state=None,
        score=None,
        ratio=2.0,
        active=True,
        birth_date=dt.date(2000, 2, 29),
        created_at=dt.datetime(2023, 12, 31, 23, 59),
        codes=None,
    ),
]
EVENTS = [
    event("a", "visit", at(-730), "cardiology"),
    event("a", "visit", at(-10), "oncology"),
    event("b", "visit", at(-731, 23, 59, 59), "cardiology"),
    event("b", "appointment", at(90, 23, 59, 59)),
    event("c", "appointment", at(0, 23, 59, 59)),
    event("c", "visit", at(0, 23, 59, 59), None),
    event("c", "visit", at(1), "cardiology"),
    event("d", "appointment", at(91)),
    event("d", "visit", at(-600), "cardiology"),
    event("d", "visit", at(-500), "cardiology"),
    event("zz", "visit", at(-1), "cardiology"),  # no such contact
]

OPERATOR_CASES = [
    # (where, selected contact ids — worked out by hand from CONTACTS / EVENTS)
    ({"state": {"eq": "NY"}}, "a"),
    ({"state": {"eq": "N*"}}, "ab"),
    ({"state": {"ne": "NY"}}, "bc"),  # d: null state is unknown, never selected
    ({"not": {"state": {"eq": "NY"}}}, "bc"),
    ({"state": {"in": ["NY", "CA"]}}, "ac"),
    ({"state": {"not_in": ["NY", "C*"]}}, "b"),
    ({"state": {"gt": "NJ"}}, "a"),
    ({"state": {"between": ["CA", "NJ"]}}, "bc"),
    ({"state": {"contains": "J"}}, "b"),
    ({"state": {"starts_with": "N"}}, "ab"),
    ({"state": {"is_null": True}}, "d"),
    ({"state": {"is_null": False}}, "abc"),
    ({"state": {"not_null": True}}, "abc"),
    ({"score": {"gt": 0}}, "a"),
    ({"score": {"gte": 0}}, "ac"),
    ({"score": {"lt": 0}}, "b"),
    ({"score": {"lte": 0}}, "bc"),
    ({"score": {"between": [-1, 0]}}, "bc"),
    ({"score": {"in": [5, 0]}}, "ac"),
    ({"score": {"not_in": [5]}}, "bc"),
    ({"score": {"gte": 0, "lt": 5}}, "c"),
    ({"ratio": {"gt": 1}}, "bd"),
    ({"ratio": {"in": [2, 0.5]}}, "ad"),
    ({"active": {"eq": True}}, "ad"),
    ({"active": {"ne": True}}, "b"),
    ({"birth_date": {"lt": "1960-03-02"}}, "a"),
    ({"birth_date": {"between": ["1960-03-01", "1960-03-02"]}}, "ab"),
    ({"birth_date": {"in": ["2000-02-29"]}}, "d"),
    ({"created_at": {"eq": "2024-01-01"}}, "a"),  # a date matches the whole day
    ({"created_at": {"lte": "2024-01-01"}}, "ad"),
    ({"created_at": {"lt": "2024-01-01T09:00"}}, "d"),
    ({"created_at": {"gte": "2024-01-01T09:00:00"}}, "ab"),
    ({"codes": {"in": ["E11*", "Z00"]}}, "ac"),
    ({"codes": {"eq": "I25.10"}}, "a"),
    ({"codes": {"eq": "I25*"}}, "a"),
    ({"codes": {"ne": "I25*"}}, "bc"),
    ({"codes": {"not_in": ["E11*"]}}, "bc"),  # empty list: no element matches
    ({"codes": {"contains": "Z00"}}, "c"),
    ({"codes": {"starts_with": "E1"}}, "a"),
    ({"codes": {"is_null": True}}, "d"),
    ({"age": {"gte": 65}}, "a"),  # a turns 65 on as_of; b one day later
    ({"age": {"between": [64, 64]}}, "b"),
    ({"age": {"eq": 25}}, "d"),  # born Feb 29: 25 on Mar 1 2025
    ({"days_since_created_at": {"gte": 425}}, "ad"),  # a: 2024-01-01 is 425 days back
    ({"days_since_last_visit": {"lte": 10}}, "ac"),  # c: visit late on as_of counts
    ({"days_since_last_visit": {"gt": "1y"}}, "bd"),
    ({"days_since_last_visit": {"is_null": True}}, ""),
    ({"days_since_last_appointment": {"is_null": True}}, "abd"),
    ({"any": [{"state": {"eq": "NY"}}, {"score": {"lt": 0}}]}, "ab"),
    ({"any": [{"state": {"eq": "NY"}}, {"active": {"eq": False}}]}, "ab"),
    ({"not": {"any": [{"state": {"eq": "NY"}}, {"score": {"eq": 0}}]}}, "b"),
    ({"not": {"not": {"state": {"eq": "NY"}}}}, "a"),
]

WINDOW_CASES = [
    ({"event": {"type": "visit", "within": "730d"}}, "acd"),  # exactly 730 days ago counts
    ({"event": {"type": "visit", "within": "1d"}}, "c"),  # late on as_of counts, as_of+1 not
    ({"event": {"type": "visit", "within": "731d"}}, "abcd"),
    (
        {"event": {"type": "visit", "within": "2y", "where": {"department": {"eq": "cardiology"}}}},
        "ad",
    ),
    (
        {
            "event": {
                "type": "visit",
                "within": "729d",
                "where": {"department": {"eq": "cardiology"}},
            }
        },
        "d",
    ),
    ({"event": {"type": "appointment", "ahead": "90d"}}, "b"),  # as_of itself is not ahead
    ({"event": {"type": "appointment", "ahead": "91d"}}, "bd"),
    ({"event": {"type": "visit", "ahead": "1d"}}, "c"),
    ({"event": {"type": "appointment"}}, "bcd"),  # no window: all events, past and future
    ({"event": {"type": ["visit", "appointment"], "between": ["2025-03-01", "2025-03-01"]}}, "c"),
    ({"event": {"type": "visit", "count": {"gte": 2}}}, "acd"),
    ({"event": {"type": "visit", "count": {"eq": 2}, "within": "2y"}}, "ad"),  # c: one is future
    ({"event": {"type": "visit", "count": {"eq": 0}, "within": "30d"}}, "bd"),
    ({"event": {"type": "visit", "count": {"lt": 2}, "within": "30d"}}, "abcd"),
    ({"event": {"type": "visit", "count": {"between": [1, 1]}, "within": "30d"}}, "ac"),
    ({"event": {"type": "visit", "count": {"ne": 0}}}, "abcd"),
    ({"not": {"event": {"type": "appointment", "ahead": "90d"}}}, "acd"),
    (
        {"event": {"type": "visit", "where": {"department": {"ne": "cardiology"}}}},
        "a",
    ),  # null dept: unknown
    ({"event": {"type": "visit", "where": {"department": {"is_null": True}}}}, "c"),
    (
        {
            "event": {
                "type": "visit",
                "where": {
                    "any": [
                        {"department": {"eq": "onc*"}},
                        {"not": {"department": {"not_null": True}}},
                    ]
                },
            }
        },
        "ac",
    ),
    ({"any": [{"event": {"type": "appointment", "ahead": "90d"}}, {"state": {"eq": "CA"}}]}, "bc"),
    ({"not": {"any": [{"event": {"type": "appointment"}}, {"state": {"eq": "NY"}}]}}, ""),
]


@pytest.mark.parametrize(("where", "expected"), OPERATOR_CASES + WINDOW_CASES)
def test_each_operator_and_window_edge(where: dict[str, Any], expected: str) -> None:
    doc = {"name": "t", "where": where}
    assert sorted(compiled_ids(doc, CONTACTS, EVENTS)) == sorted(expected)
    assert check_against_reference(doc, CONTACTS, EVENTS) == set(expected)


@pytest.mark.parametrize(
    ("exclude", "expected"),
    [
        ({"state": {"eq": "NY"}}, "bc"),  # d: null state cannot be decided, so it is removed
        ({"score": {"is_null": True}}, "abc"),
        ({"event": {"type": "appointment", "ahead": "90d"}}, "acd"),
        ({"any": [{"active": {"eq": False}}, {"codes": {"in": ["Z*"]}}]}, "a"),  # d: codes null
    ],
)
def test_exclude_removes_true_and_unknown(exclude: dict[str, Any], expected: str) -> None:
    doc = {"name": "t", "where": {"contact_id": {"not_null": True}}, "exclude": exclude}
    assert sorted(compiled_ids(doc, CONTACTS, EVENTS)) == sorted(expected)
    assert check_against_reference(doc, CONTACTS, EVENTS) == set(expected)


def test_example_compiles_on_sample_shaped_frames() -> None:
    segment = load_segment(EXAMPLE)
    as_of = dt.date(2025, 6, 30)
    contacts = pl.DataFrame(
        {
            "contact_id": ["C1", "C2", "C3", "C4", "C5"],
            "birth_date": [
                dt.date(1960, 1, 1),
                dt.date(1990, 1, 1),
                dt.date(1965, 5, 5),
                dt.date(1970, 1, 1),
                dt.date(1955, 1, 1),
            ],
            "state": ["NY", "NY", "NJ", "NY", "CA"],
            "email": ["x", "y", "z", "w", "v"],
        }
    )
    when = dt.datetime(2024, 3, 1, 10)
    events = pl.DataFrame(
        {
            "event_id": ["e1", "e2", "e3", "e4", "e5", "e6"],
            "contact_id": ["C1", "C2", "C3", "C3", "C4", "C5"],
            "event_type": ["visit", "visit", "visit", "appointment", "visit", "visit"],
            "event_time": [when, when, when, dt.datetime(2025, 8, 1, 9), when, when],
            "department": [
                "cardiology",
                "cardiology",
                "cardiology",
                "cardiology",
                "oncology",
                "cardiology",
            ],
            "visit_type": ["outpatient"] * 6,
        }
    )
    result = compile_segment(
        segment, contacts.lazy(), events.lazy(), SegmentContext(as_of=as_of)
    ).collect()
    assert result.columns == contacts.columns
    assert result["contact_id"].to_list() == ["C1"]


def test_no_duplicates_and_only_contact_columns_with_many_events() -> None:
    contacts = [contact("a", state="NY"), contact("b", state="NY")]
    events = [event("a", "visit", at(-i)) for i in range(5)] + [event("b", "visit", at(-1))]
    doc = {
        "name": "t",
        "where": {
            "all": [
                {"event": {"type": "visit"}},
                {"event": {"type": "visit", "count": {"gte": 2}}},
                {
                    "any": [
                        {"event": {"type": "visit", "within": "3d"}},
                        {"days_since_last_visit": {"lt": 2}},
                    ]
                },
            ]
        },
    }
    assert sorted(compiled_ids(doc, contacts, events)) == ["a"]


def test_time_zones_and_units_of_event_time() -> None:
    tz_events = pl.DataFrame(
        {
            "contact_id": ["a", "b"],
            "event_type": ["visit", "visit"],
            # 23:30 and 00:30 New York time: UTC puts both on March 2.
            "event_time": [dt.datetime(2025, 3, 1, 23, 30), dt.datetime(2025, 3, 2, 0, 30)],
        }
    ).with_columns(
        pl.col("event_time").dt.replace_time_zone("America/New_York").dt.cast_time_unit("ns")
    )
    contacts = pl.DataFrame({"contact_id": ["a", "b"]})
    within = parse_segment("name: t\nwhere: {event: {type: visit, within: 1d}}")
    ahead = parse_segment("name: t\nwhere: {event: {type: visit, ahead: 1d}}")
    # Days are taken in the column's own time zone.
    assert compile_segment(within, contacts.lazy(), tz_events.lazy(), CTX).collect()[
        "contact_id"
    ].to_list() == ["a"]
    assert compile_segment(ahead, contacts.lazy(), tz_events.lazy(), CTX).collect()[
        "contact_id"
    ].to_list() == ["b"]


def test_categorical_columns_compare_as_text() -> None:
    contacts = pl.DataFrame(
        {"contact_id": ["a", "b"], "state": ["NY", "NJ"], "codes": [["E11.9"], ["I10"]]},
        schema={"contact_id": pl.String, "state": pl.Categorical, "codes": pl.List(pl.Categorical)},
    )
    segment = parse_segment("name: t\nwhere: {state: {in: [N*]}, codes: {in: [E11*]}}")
    assert compile_segment(segment, contacts.lazy(), None, CTX).collect()[
        "contact_id"
    ].to_list() == ["a"]


def test_compile_refuses_an_invalid_segment() -> None:
    segment = parse_segment("name: t\nwhere: {stat: {eq: NY}}", source="s.yaml")
    contacts, events = frames(CONTACTS, EVENTS)
    with pytest.raises(
        SegmentError, match=r"s\.yaml:2: unknown column 'stat' — did you mean 'state'\?"
    ):
        compile_segment(segment, contacts, events, CTX)


def test_event_aggregates_are_computed_once_per_distinct_filter() -> None:
    doc = (
        "name: t\nwhere:\n  any:\n"
        + "".join(
            f"    - event: {{type: visit, within: 30d, count: {{gte: {n}}}}}\n" for n in (2, 3, 4)
        )
        + "    - days_since_last_visit: {lt: 5}\n    - days_since_last_visit: {gt: 50}\n"
    )
    contacts, events = frames(CONTACTS, EVENTS)
    plan = compile_segment(parse_segment(doc), contacts, events, CTX).explain()
    assert set(re.findall(r"__segment_count_\d+", plan)) == {"__segment_count_0"}
    assert set(re.findall(r"__segment_last_\d+", plan)) == {"__segment_last_0"}


# -- random segments against the reference ---------------------------------------------------

STATES = ["NY", "NJ", "CA", "N*", "C*"]
CODES = ["E11.9", "E11.65", "I25.10", "Z00"]
CODE_VALUES = [*CODES, "E11*", "I25*", "Z*"]
DATES = ["1950-01-01", "1960-03-01", "1975-06-15", "1990-12-31", "2000-02-29"]
DATETIMES = ["2024-01-01", "2024-06-30", "2024-06-30T12:00", "2025-01-01T00:00:00"]
DAYS = [0, 1, 10, 30, 89, 90, 91, 400, 729, 730, 731, "1y", "18mo", "6w"]
WINDOW_DAYS = ["1d", "30d", "90d", "91d", "729d", "730d", "731d", "1y", "2y", "6w", "3mo"]


def order_key(value: Any) -> Any:
    return days_of(value) if isinstance(value, str) and value[-1] in "dwoy" else value


def pairs(values: list[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.sampled_from(values), min_size=2, max_size=2).map(
        lambda p: sorted(p, key=order_key)
    )


def ops_for(
    values: list[Any], ordered: bool, *, text: bool = False, lists: bool = False
) -> st.SearchStrategy[dict[str, Any]]:
    value = st.sampled_from(values)
    many = st.lists(value, min_size=1, max_size=3)
    choices = [
        st.builds(lambda v: {"eq": v}, value),
        st.builds(lambda v: {"ne": v}, value),
        st.builds(lambda v: {"in": v}, many),
        st.builds(lambda v: {"not_in": v}, many),
        st.builds(lambda b: {"is_null": b}, st.booleans()),
        st.builds(lambda b: {"not_null": b}, st.booleans()),
    ]
    if ordered:
        plain = [v for v in values if not (isinstance(v, str) and v.endswith("*"))]
        choices += [
            st.builds(
                lambda op, v: {op: v},
                st.sampled_from(["gt", "gte", "lt", "lte"]),
                st.sampled_from(plain),
            ),
            st.builds(lambda v: {"between": v}, pairs(plain)),
        ]
    if text or lists:
        choices += [
            st.builds(lambda v: {"starts_with": v}, st.sampled_from(["N", "E1", "I25", ""])),
            st.builds(lambda v: {"contains": v}, st.sampled_from(["Y", "E11.9", "Z00"])),
        ]
    return st.one_of(choices)


def field_condition() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        ops_for(STATES, True, text=True).map(lambda o: {"state": o}),
        ops_for([-2, 0, 1, 3], True).map(lambda o: {"score": o}),
        ops_for([0.5, 1, 2.5], True).map(lambda o: {"ratio": o}),
        ops_for([True, False], False).map(
            lambda o: {
                "active": {k: v for k, v in o.items() if k in ("eq", "ne", "is_null", "not_null")}
                or {"eq": True}
            }
        ),
        ops_for(DATES, True).map(lambda o: {"birth_date": o}),
        ops_for(DATETIMES, True).map(lambda o: {"created_at": o}),
        ops_for(CODE_VALUES, False, lists=True).map(lambda o: {"codes": o}),
        ops_for([18, 25, 50, 64, 65, 75], True).map(lambda o: {"age": o}),
        ops_for(DAYS, True).map(lambda o: {"days_since_last_visit": o}),
        ops_for(DAYS, True).map(lambda o: {"days_since_created_at": o}),
    )


@st.composite
def event_condition(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": draw(st.sampled_from(["visit", "appointment", ["visit", "appointment"]]))
    }
    window = draw(st.sampled_from(["none", "within", "ahead", "between"]))
    if window in ("within", "ahead"):
        spec[window] = draw(st.sampled_from(WINDOW_DAYS))
    elif window == "between":
        days = sorted(draw(st.lists(st.integers(-800, 120), min_size=2, max_size=2)))
        spec["between"] = [(AS_OF + dt.timedelta(days=d)).isoformat() for d in days]
    if draw(st.booleans()):
        spec["where"] = {
            "department": draw(ops_for(["cardiology", "oncology", "card*"], False, text=True))
        }
    count = draw(
        st.sampled_from(
            [None, {"gte": 1}, {"gte": 2}, {"eq": 0}, {"lt": 2}, {"between": [1, 2]}, {"ne": 1}]
        )
    )
    if count is not None:
        spec["count"] = count
    return {"event": spec}


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several conditions as one mapping (AND) when their keys differ, else under all:."""
    keys = [k for p in parts for k in p]
    if len(keys) == len(set(keys)):
        return {k: v for p in parts for k, v in p.items()}
    return {"all": parts}


conditions = st.recursive(
    st.one_of(field_condition(), event_condition()),
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda c: {"all": c}),
        st.lists(children, min_size=1, max_size=3).map(lambda c: {"any": c}),
        children.map(lambda c: {"not": c}),
        st.lists(children, min_size=2, max_size=2).map(merge),
    ),
    max_leaves=6,
)

EDGE_DAYS = [-731, -730, -729, -548, -1, 0, 1, 89, 90, 91]


@st.composite
def crm(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    n = draw(st.integers(1, 7))
    maybe = lambda s: st.one_of(st.none(), s)  # noqa: E731
    contacts = []
    for i in range(n):
        contacts.append(
            contact(
                f"c{i}",
                state=draw(maybe(st.sampled_from(["NY", "NJ", "CA"]))),
                score=draw(maybe(st.integers(-2, 3))),
                ratio=draw(maybe(st.sampled_from([0.5, 1.0, 2.5]))),
                active=draw(maybe(st.booleans())),
                birth_date=draw(
                    maybe(
                        st.sampled_from(
                            [
                                dt.date(1960, 3, 1),
                                dt.date(1960, 3, 2),
                                dt.date(2000, 2, 29),
                                dt.date(1975, 6, 15),
                                dt.date(1950, 1, 1),
                            ]
                        )
                    )
                ),
                created_at=draw(
                    maybe(
                        st.datetimes(dt.datetime(2022, 1, 1), dt.datetime(2025, 6, 1)).map(
                            lambda d: d.replace(microsecond=0)
                        )
                    )
                ),
                codes=draw(maybe(st.lists(maybe(st.sampled_from(CODES)), max_size=3))),
            )
        )
    events = []
    for _ in range(draw(st.integers(0, 14))):
        day = draw(st.one_of(st.sampled_from(EDGE_DAYS), st.integers(-800, 120)))
        second = draw(st.sampled_from([0, 1, 43200, 86399]))
        events.append(
            event(
                draw(st.sampled_from([*(c["contact_id"] for c in contacts), "ghost"])),
                draw(st.sampled_from(["visit", "appointment"])),
                at(day) + dt.timedelta(seconds=second),
                draw(maybe(st.sampled_from(["cardiology", "oncology"]))),
            )
        )
    return contacts, events


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=conditions, exclude=st.one_of(st.none(), conditions), data=crm())
def test_compiler_matches_reference(
    where: dict[str, Any],
    exclude: dict[str, Any] | None,
    data: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    doc: dict[str, Any] = {"name": "random", "where": where}
    if exclude is not None:
        doc["exclude"] = exclude
    check_against_reference(doc, *data)


@pytest.mark.parametrize("dtype", [pl.Date, pl.Datetime("ms"), pl.Datetime("ns")])
def test_event_time_as_date_or_other_units(dtype: pl.DataType) -> None:
    days = [-2, -1, 0, 1, 2]
    events = pl.DataFrame(
        {
            "contact_id": [f"c{d}" for d in days],
            "event_type": ["visit"] * len(days),
            "event_time": [AS_OF + dt.timedelta(days=d) for d in days],
        }
    ).with_columns(pl.col("event_time").cast(dtype))
    contacts = pl.DataFrame({"contact_id": [f"c{d}" for d in days]})

    def ids(where: str) -> list[str]:
        segment = parse_segment(f"name: t\nwhere: {where}")
        lf = compile_segment(segment, contacts.lazy(), events.lazy(), CTX)
        return sorted(lf.collect()["contact_id"].to_list())

    assert ids("{event: {type: visit, within: 1d}}") == ["c-1", "c0"]
    assert ids("{event: {type: visit, ahead: 1d}}") == ["c1"]
    assert ids("{event: {type: visit, between: [2025-03-02, 2025-03-03]}}") == ["c1", "c2"]
    assert ids("{days_since_last_visit: {gte: 1}}") == ["c-1", "c-2"]
    assert ids(
        "{any: [{days_since_last_visit: {lt: 1}}, {event: {type: visit, count: {eq: 0}}}]}"
    ) == ["c0"]


# --- age as a birth-date range ------------------------------------------------------------

_AGE_OPS = ["eq", "gt", "gte", "lt", "lte", "between", "ne", "in"]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.dates(dt.date(1904, 1, 1), dt.date(2096, 12, 31)),
        st.sampled_from([dt.date(2024, 2, 29), dt.date(2025, 2, 28), dt.date(2025, 3, 1)]),
    ),
    st.sampled_from(_AGE_OPS),
    st.lists(st.integers(-3, 130), min_size=2, max_size=2),
    st.lists(
        st.one_of(st.none(), st.dates(dt.date(1800, 1, 1), dt.date(2100, 12, 31))),
        min_size=1,
        max_size=30,
    ),
    st.lists(st.tuples(st.integers(-3, 130), st.integers(-2, 2)), max_size=30),
)
def test_an_age_comparison_as_birth_dates_equals_the_age_in_years(
    as_of: dt.date,
    op: str,
    numbers: list[int],
    anywhere: list[dt.date | None],
    near: list[tuple[int, int]],
) -> None:
    from audiences.segments.compiler import _age_as_birth_dates, _compare, age_years, born_by
    from audiences.segments.model import Comparison

    # most of them a day or two around a birthday: where the two could disagree
    born = list(anywhere)
    for years, days in near:
        last = born_by(as_of, years)
        if last is not None and dt.date(1, 1, 3) < last < dt.date(9999, 12, 29):
            born.append(last + dt.timedelta(days=days))

    value: Any = tuple(sorted(numbers)) if op in ("between", "in") else numbers[0]
    comparison = Comparison(op=op, value=value)  # type: ignore[arg-type]
    frame = pl.DataFrame({"born": born}, schema={"born": pl.Date})
    col = pl.col("born")
    direct = _compare(age_years(col, as_of), comparison, "number", pl.Int64())
    ranged = _age_as_birth_dates(col, comparison, as_of)
    if op in ("ne", "in"):
        assert ranged is None  # no single range: compared as years
        return
    assert ranged is not None
    got = frame.select(ranged.alias("x")).to_series().to_list()
    want = frame.select(direct.alias("x")).to_series().to_list()
    assert got == want


@pytest.mark.parametrize(
    ("as_of", "years", "last"),
    [
        (dt.date(2024, 2, 29), 1, dt.date(2023, 2, 28)),  # born 1 March 2023: not yet 1
        (dt.date(2024, 2, 29), 4, dt.date(2020, 2, 29)),
        (dt.date(2025, 3, 1), 25, dt.date(2000, 3, 1)),
        (dt.date(2025, 3, 1), 2026, None),  # before year 1: no range, compared as years
    ],
)
def test_the_last_birth_date_of_an_age(as_of: dt.date, years: int, last: dt.date | None) -> None:
    from audiences.segments.compiler import born_by

    assert born_by(as_of, years) == last


def test_age_conditions_reach_the_parquet_reader(tmp_path: Path) -> None:
    born = [dt.date(1960, 3, 1), dt.date(1960, 3, 2), None, dt.date(2000, 2, 29)]
    path = tmp_path / "contacts.parquet"
    pl.DataFrame(
        {"contact_id": ["a", "b", "c", "d"], "birth_date": born},
        schema_overrides={"birth_date": pl.Date},
    ).write_parquet(path)
    segment = parse_segment("name: s\nwhere: {age: {between: [25, 64]}}")
    ctx = SegmentContext(as_of=AS_OF, contact_id="contact_id", birth_date="birth_date")
    plan = compile_segment(segment, pl.scan_parquet(path), None, ctx)
    scan = plan.explain().split("SELECTION:")[1]
    assert "birth_date" in scan and "dt.year" not in scan  # a plain date range, pushed down
    # a turned 65 on as_of, b is 64 until tomorrow, d (born 29 February) turned 25
    assert plan.collect().get_column("contact_id").to_list() == ["b", "d"]
