"""Segment files: loading with line numbers, errors, digest, references, validation, JSON Schema."""

from __future__ import annotations

import datetime as dt
import re
import textwrap
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from audiences.core.errors import SegmentError
from audiences.segments import (
    SegmentContext,
    check_segment,
    load_segment,
    load_segments,
    parse_segment,
    segment_json_schema,
    validate_segment,
)
from audiences.segments.loader import yaml_data

CASES = Path(__file__).parent / "cases" / "segments"
EXAMPLE = CASES / "cardiology-lapsed.yaml"
CTX = SegmentContext(as_of=dt.date(2025, 6, 30))

# The sample CRM of docs/internals.md, typed by hand.
CONTACTS_SCHEMA = pl.Schema(
    {
        "contact_id": pl.String,
        "email": pl.String,
        "phone": pl.String,
        "first_name": pl.String,
        "last_name": pl.String,
        "birth_date": pl.Date,
        "sex": pl.String,
        "street": pl.String,
        "city": pl.String,
        "state": pl.String,
        "zip": pl.String,
        "country": pl.String,
        "preferred_language": pl.String,
        "created_at": pl.Datetime("us"),
        "marketing_opt_in": pl.Boolean,
        "hipaa_auth_date": pl.Date,
        "hipaa_auth_expires": pl.Date,
        "hipaa_auth_revoked_at": pl.Date,
        "ad_personalization_consent": pl.String,
        "do_not_contact": pl.Boolean,
        "deceased": pl.Boolean,
        "diagnosis_codes": pl.List(pl.String),
        "service_lines": pl.List(pl.String),
        "medication_classes": pl.List(pl.String),
        "insurance_type": pl.String,
    }
)
EVENTS_SCHEMA = pl.Schema(
    {
        "event_id": pl.String,
        "contact_id": pl.String,
        "event_type": pl.String,
        "event_time": pl.Datetime("us"),
        "department": pl.String,
        "visit_type": pl.String,
    }
)


def segment_text(where: str, extra: str = "") -> str:
    return f"name: t\ndestinations: [meta]\n{extra}where:\n{textwrap.indent(where, '  ')}\n"


# -- the example from the brief -------------------------------------------------------------


def test_example_loads_validates_and_reports_references() -> None:
    segment = load_segment(EXAMPLE)
    assert segment.name == "cardiology-lapsed"
    assert segment.destinations == ("meta", "google_ads")
    assert segment.source == str(EXAMPLE)
    assert validate_segment(segment, CONTACTS_SCHEMA, EVENTS_SCHEMA, CTX) == []
    check_segment(segment, CONTACTS_SCHEMA, EVENTS_SCHEMA, CTX)
    refs = segment.references()
    assert refs.contact_columns == {"state", "birth_date"}
    assert refs.derived_fields == {"age"}
    assert refs.event_types == {"visit", "appointment"}
    assert refs.event_columns == {"department"}
    assert refs.uses_events


def test_references_follow_derived_fields_to_their_base() -> None:
    segment = parse_segment(
        segment_text(
            "all:\n"
            "  - days_since_last_visit: {gt: 18mo}\n"
            "  - days_since_created_at: {lt: 30}\n"
            "  - age: {gte: 18}\n"
            "  - diagnosis_codes: {in: [E11*]}",
            extra="exclude: {event: {type: portal_login, where: {visit_type: {eq: x}}}}\n",
        )
    )
    refs = segment.references(birth_date="dob")
    assert refs.contact_columns == {"created_at", "dob", "diagnosis_codes"}
    assert refs.derived_fields == {"days_since_last_visit", "days_since_created_at", "age"}
    assert refs.event_types == {"visit", "portal_login"}
    assert refs.event_columns == {"visit_type"}
    assert segment.references(birth_date=None).contact_columns == {"created_at", "diagnosis_codes"}


def test_yaml_scalars_resolve_the_way_marketers_expect() -> None:
    segment = parse_segment(
        segment_text(
            "all:\n"
            "  - zip: {eq: 02139}\n"
            "  - country: {in: [NO, yes, on]}\n"
            "  - birth_date: {lt: 1960-01-01}\n"
            "  - marketing_opt_in: {eq: true}\n"
            "  - age: {gte: 50}"
        )
    )
    values = {c.field: c.comparisons[0].value for c in segment.where.conditions}  # type: ignore[union-attr]
    assert values == {
        "zip": "02139",
        "country": ("NO", "on", "yes"),
        "birth_date": "1960-01-01",
        "marketing_opt_in": True,
        "age": 50,
    }
    assert validate_segment(segment, CONTACTS_SCHEMA, EVENTS_SCHEMA, CTX) == []


def test_durations_on_days_since_fields_become_days() -> None:
    segment = parse_segment(segment_text("days_since_last_visit: {gt: 18mo, lte: 2y}"))
    comparisons = segment.where.comparisons  # type: ignore[union-attr]
    assert [(c.op, c.value) for c in comparisons] == [("gt", 540), ("lte", 730)]


# -- digest ---------------------------------------------------------------------------------


def test_digest_ignores_layout_key_order_comments_and_default_count() -> None:
    first = load_segment(EXAMPLE)
    reordered = parse_segment(
        """
        # same segment, written differently
        where:
          all:
            - age:   {between: [50, 75]}
            - state: {in: [NJ, NY]}     # order of values does not matter
            - event:
                within: 2y               # 730 days
                where:
                  department: {eq: cardiology}
                type: [visit]
            - not: {event: {ahead: 90d, count: {gte: 1}, type: appointment}}
        destinations:
          - meta
          - google_ads
        description: >-
          Adults 50-75 in NY or NJ seen in cardiology in the last two years, nothing booked
        name: cardiology-lapsed
        """.replace("\n        ", "\n")
    )
    assert reordered.digest == first.digest
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first.digest)
    dumped = yaml.safe_dump(yaml.safe_load(EXAMPLE.read_text()), sort_keys=True, indent=4)
    assert parse_segment(dumped).digest == first.digest


def test_several_keys_in_one_mapping_hash_like_all() -> None:
    a = parse_segment(segment_text("state: {eq: NY}\nsex: {eq: F}"))
    b = parse_segment(segment_text("sex: {eq: F}\nstate: {eq: NY}"))
    assert a.digest == b.digest


@pytest.mark.parametrize(
    "where",
    [
        "state: {eq: NJ}",
        "state: {ne: NY}",
        "state: {in: [NY]}",
        "not: {state: {eq: NY}}",
        "event: {type: visit}",
        "event: {type: visit, count: {gte: 2}}",
    ],
)
def test_digest_differs_for_different_definitions(where: str) -> None:
    base = parse_segment(segment_text("state: {eq: NY}"))
    assert parse_segment(segment_text(where)).digest != base.digest


def test_digest_covers_name_destinations_and_exclude() -> None:
    base = parse_segment(segment_text("state: {eq: NY}"))
    for text in (
        segment_text("state: {eq: NY}").replace("name: t", "name: u"),
        segment_text("state: {eq: NY}").replace("[meta]", "[google_ads]"),
        segment_text("state: {eq: NY}", extra="exclude: {deceased: {eq: true}}\n"),
    ):
        assert parse_segment(text).digest != base.digest


def test_event_count_default_is_explicit() -> None:
    a = parse_segment(segment_text("event: {type: visit}"))
    b = parse_segment(segment_text("event: {type: visit, count: {gte: 1}}"))
    assert a.digest == b.digest
    assert '"count":[{"op":"gte","value":1}]' in a.canonical()


# -- structural errors (no schema needed) ---------------------------------------------------

PARSE_ERRORS = [
    # (file text, message pattern)
    (
        "name: Cardiology Lapsed\nwhere: {state: {eq: NY}}",
        r"s\.yaml:1: segment name 'Cardiology Lapsed' is not a slug — .*'cardiology-lapsed'",
    ),
    (
        "name: t\ndestination: [meta]\nwhere: {state: {eq: NY}}",
        r"s\.yaml:2: unknown key 'destination' in segment — did you mean 'destinations'\?",
    ),
    (
        "name: t\nwhere: {state: {equals: NY}}",
        r"s\.yaml:2: unknown operator 'equals' for 'state' — did you mean 'eq'\?",
    ),
    (
        "name: t\nwhere:\n  age:\n    gtee: 5",
        r"s\.yaml:4: unknown operator 'gtee' for 'age' — did you mean 'gte'\?",
    ),
    (
        "name: t\nwhere: {age: {'>=': 5}}",
        r"s\.yaml:2: unknown operator '>=' .* did you mean 'gte'\?",
    ),
    (
        "name: t\nwhere:\n  age: {between: [50, 75, 80]}",
        r"s\.yaml:3: 'between' on 'age' takes exactly 2 values, found 3 — write between: \[low, high\]",
    ),
    (
        "name: t\nwhere:\n  state: {in: NY}",
        r"s\.yaml:3: 'in' on 'state' takes a list — write in: \[NY\]",
    ),
    ("name: t\nwhere:\n  state: {in: []}", r"s\.yaml:3: 'in' on 'state' has an empty list"),
    (
        "name: t\nwhere:\n  event: {type: visit, within: -3d}",
        r"s\.yaml:3: '-3d' is not a valid duration for 'within' — write within: 730d",
    ),
    (
        "name: t\nwhere:\n  event: {type: visit, within: 10x}",
        r"s\.yaml:3: '10x' is not a valid duration",
    ),
    (
        "name: t\nwhere:\n  event: {type: visit, ahead: 0d}",
        r"s\.yaml:3: 'ahead: 0d' is an empty window — use at least 1d",
    ),
    (
        "name: t\nwhere:\n  event: {type: visit, within: 730}",
        r"s\.yaml:3: '730' is not a valid duration for 'within' — write within: 730d",
    ),
    (
        "name: t\nwhere:\n  event: {type: visit, within: 101y}",
        r"s\.yaml:3: 'within: 101y' is longer than 100 years",
    ),
    (
        "name: t\nwhere:\n  event:\n    type: visit\n    within: 30d\n    ahead: 30d",
        r"s\.yaml:6: event has both 'within' and 'ahead' — use one window",
    ),
    (
        "name: t\nwhere:\n  event: {type: visit, between: [2024-06-01, 2024-01-01]}",
        r"s\.yaml:3: event 'between' starts after it ends",
    ),
    (
        "name: t\nwhere:\n  event: {type: visit, between: [2024-02-30, 2024-03-01]}",
        r"s\.yaml:3: '2024-02-30' is not an ISO date",
    ),
    (
        "name: t\nwhere:\n  event: {within: 30d}",
        r"s\.yaml:3: event condition has no 'type' — add type: visit",
    ),
    (
        "name: t\nwhere:\n  event: {type: visit, windw: 30d}",
        r"s\.yaml:3: unknown key 'windw' in event condition — allowed keys",
    ),
    (
        "name: t\nwhere:\n  event: {type: visit, cont: {gte: 2}}",
        r"s\.yaml:3: unknown key 'cont' .* did you mean 'count'\?",
    ),
    (
        "name: t\nwhere:\n  event: {type: visit, count: {gte: -1}}",
        r"s\.yaml:3: count 'gte' takes whole numbers >= 0, found -1",
    ),
    (
        "name: t\nwhere:\n  event: {type: visit, count: {in: [1]}}",
        r"s\.yaml:3: unknown operator 'in' for 'count'",
    ),
    (
        "name: t\nwhere:\n  event:\n    type: visit\n    where: {event: {type: visit}}",
        r"s\.yaml:5: an event condition cannot be nested",
    ),
    (
        "name: t\nwhere:\n  state: NY",
        r"s\.yaml:3: 'state' needs an operator, found text — write state: \{eq: NY\}",
    ),
    (
        "name: t\nwhere:\n  not: [{state: {eq: NY}}]",
        r"s\.yaml:3: 'not' takes one condition, found a list",
    ),
    ("name: t\nwhere:\n  all: []", r"s\.yaml:3: 'all' has no conditions"),
    (
        "name: t\nwhere:\n  diagnosis_codes: {starts_with: E11*}",
        r"s\.yaml:3: 'starts_with' already matches a prefix.* — write starts_with: E11",
    ),
    (
        "name: t\nwhere:\n  state: {is_null: yes}",
        r"s\.yaml:3: 'is_null' takes true or false — write is_null: true",
    ),
    (
        "name: t\nwhere:\n  state: {eq: null}",
        r"s\.yaml:3: 'eq' on 'state' has no value \(null\) — write is_null: true",
    ),
    (
        "name: t\nwhere:\n  days_since_last_visit: {gt: 18 months}",
        r"s\.yaml:3: '18 months' is not a number of days or a duration",
    ),
    (
        "name: t\nwhere:\n  state: {eq: NY}\n  state: {eq: NJ}",
        r"s\.yaml:4: key 'state' appears twice in a condition \(first on line 3\)",
    ),
    ("name: t\nwhere: {state: {eq: [NY", r"s\.yaml:2: malformed YAML: .* — check indentation"),
    ("name: t\n  where: x\n", r"s\.yaml:2: malformed YAML"),
    ("", r"s\.yaml: segment file is empty"),
    ("- name: t", r"s\.yaml:1: a segment file must be a mapping, found a list"),
    ("name: t", r"s\.yaml:1: segment has no 'where'"),
    ("where: {state: {eq: NY}}", r"s\.yaml:1: segment has no 'name'"),
    (
        "name: t\ndestinations: meta\nwhere: {state: {eq: NY}}",
        r"s\.yaml:2: destinations must be a list — write \[meta\]",
    ),
    (
        "name: t\ndestinations: [meta, meta]\nwhere: {state: {eq: NY}}",
        r"s\.yaml:2: destination 'meta' is listed twice",
    ),
    ("name: t\nwhere: {}", r"s\.yaml:2: empty condition"),
    ("name: t\nwhere: [state]", r"s\.yaml:2: a condition must be a mapping, found a list"),
]


@pytest.mark.parametrize(("text", "pattern"), PARSE_ERRORS)
def test_structural_errors_name_file_line_and_fix(text: str, pattern: str) -> None:
    with pytest.raises(SegmentError, match=pattern) as info:
        parse_segment(text, source="segments/s.yaml")
    assert info.value.where is not None and info.value.where.startswith("segments/s.yaml")


# -- schema errors --------------------------------------------------------------------------

VALIDATION_ERRORS = [
    # (where block, message pattern)
    ("stat: {eq: NY}", r"t\.yaml:4: unknown column 'stat' — did you mean 'state'\?"),
    (
        "diagnosis_code: {in: [E11*]}",
        r"unknown column 'diagnosis_code' — did you mean 'diagnosis_codes'\?",
    ),
    ("xyzzy: {eq: 1}", r"unknown column 'xyzzy' — check the spelling"),
    (
        "marketing_opt_in: {gt: true}",
        r"t\.yaml:4: 'gt' does not apply to 'marketing_opt_in' \(true/false, Boolean\) — operators for it: eq, ne",
    ),
    (
        "birth_date: {starts_with: '19'}",
        r"'starts_with' does not apply to 'birth_date' \(a date, Date\)",
    ),
    ("diagnosis_codes: {gt: E11}", r"'gt' does not apply to 'diagnosis_codes' \(a list of text"),
    ("state: {eq: 5}", r"'state' holds text but eq has 5 \(not text\) — quote it: eq: '5'"),
    ("state: {eq: true}", r"'state' holds text but eq has true"),
    (
        "birth_date: {lt: 1960-13-01}",
        r"'birth_date' holds dates but lt has '1960-13-01' — write an ISO date",
    ),
    (
        "created_at: {gte: '2024-01-01T25:00'}",
        r"'created_at' holds date-times .* write an ISO date \(2024-01-31\) or date-time",
    ),
    ("age: {gt: old}", r"'age' holds numbers but gt has 'old' — write a number without quotes"),
    (
        "marketing_opt_in: {eq: yes}",
        r"'marketing_opt_in' is true/false but eq has 'yes' — write eq: true or eq: false",
    ),
    (
        "age: {between: [75, 50]}",
        r"'between' on 'age' has its low end above its high end — write between: \[50, 75\]",
    ),
    ("birth_date: {between: [1990-01-01, 1950-01-01]}", r"low end above its high end"),
    (
        "days_since_state: {gt: 3}",
        r"'days_since_state' needs a date column 'state', which is String, not a date",
    ),
    (
        "days_since_creatd_at: {gt: 3}",
        r"needs a date column 'creatd_at', which does not exist — did you mean 'days_since_created_at'\?",
    ),
    (
        "event:\n  type: visit\n  where: {departmnt: {eq: cardiology}}",
        r"t\.yaml:6: unknown event column 'departmnt' — did you mean 'department'\?",
    ),
    (
        "event:\n  type: visit\n  where: {department: {gt: 3}}",
        r"'department' holds text but gt has 3",
    ),
]


@pytest.mark.parametrize(("where", "pattern"), VALIDATION_ERRORS)
def test_schema_errors_name_file_line_and_fix(where: str, pattern: str) -> None:
    segment = parse_segment(segment_text(where), source="segments/t.yaml")
    issues = validate_segment(segment, CONTACTS_SCHEMA, EVENTS_SCHEMA, CTX)
    assert len(issues) == 1
    assert re.search(pattern, str(issues[0])), str(issues[0])
    assert issues[0].file == "segments/t.yaml" and issues[0].line is not None
    with pytest.raises(SegmentError, match=pattern):
        check_segment(segment, CONTACTS_SCHEMA, EVENTS_SCHEMA, CTX)


CONTEXT_ERRORS = [
    # (where, events schema, context, pattern)
    (
        "days_since_last_visit: {gt: 3}",
        None,
        CTX,
        r"'days_since_last_visit' needs events, and no events source is configured",
    ),
    ("event: {type: visit}", None, CTX, r"t\.yaml:4: 'event' needs events"),
    (
        "age: {gt: 3}",
        EVENTS_SCHEMA,
        SegmentContext(as_of=CTX.as_of, birth_date=None),
        r"'age' needs a birth date column, and none is mapped — map birth_date under \[identity\]",
    ),
    (
        "age: {gt: 3}",
        EVENTS_SCHEMA,
        SegmentContext(as_of=CTX.as_of, birth_date="dob"),
        r"'age' needs the birth date column 'dob', which contacts lack",
    ),
    (
        "age: {gt: 3}",
        EVENTS_SCHEMA,
        SegmentContext(as_of=CTX.as_of, birth_date="state"),
        r"'age' needs 'state' to be a Date",
    ),
    (
        "event: {type: visit}",
        EVENTS_SCHEMA,
        SegmentContext(as_of=CTX.as_of, event_time="when"),
        r"events have no event time column 'when'",
    ),
    (
        "event: {type: visit}",
        pl.Schema({"contact_id": pl.Int64, "event_type": pl.String, "event_time": pl.Date}),
        CTX,
        r"events 'contact_id' is Int64 but contacts 'contact_id' is String",
    ),
    (
        "event: {type: visit}",
        pl.Schema({"contact_id": pl.String, "event_type": pl.String, "event_time": pl.String}),
        CTX,
        r"event time column 'event_time' is String, not a date-time",
    ),
    (
        "state: {eq: NY}",
        EVENTS_SCHEMA,
        SegmentContext(as_of=CTX.as_of, contact_id="id"),
        r"contacts have no contact id column 'id'",
    ),
]


@pytest.mark.parametrize(("where", "events_schema", "ctx", "pattern"), CONTEXT_ERRORS)
def test_context_errors(
    where: str, events_schema: pl.Schema | None, ctx: SegmentContext, pattern: str
) -> None:
    segment = parse_segment(segment_text(where), source="t.yaml")
    issues = validate_segment(segment, CONTACTS_SCHEMA, events_schema, ctx)
    assert len(issues) == 1
    assert re.search(pattern, str(issues[0])), str(issues[0])


def test_validation_reports_every_issue_in_file_order() -> None:
    segment = parse_segment(
        segment_text("all:\n  - stat: {eq: NY}\n  - age: {gt: old}\n  - sex: {eq: 1}"), "t.yaml"
    )
    issues = validate_segment(segment, CONTACTS_SCHEMA, EVENTS_SCHEMA, CTX)
    assert [i.line for i in issues] == [5, 6, 7]
    with pytest.raises(SegmentError, match=r"t\.yaml:5: unknown column 'stat'.*\(and 2 more"):
        check_segment(segment, CONTACTS_SCHEMA, EVENTS_SCHEMA, CTX)


def test_segment_context_wants_a_day() -> None:
    with pytest.raises(TypeError, match=r"datetime\.date"):
        SegmentContext(as_of=dt.datetime(2025, 1, 1))  # type: ignore[arg-type]


# -- files ----------------------------------------------------------------------------------


def test_load_segments_sorted_by_name(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(segment_text("state: {eq: NY}").replace("name: t", "name: zz"))
    (tmp_path / "a.yml").write_text(segment_text("state: {eq: NJ}").replace("name: t", "name: aa"))
    (tmp_path / "notes.txt").write_text("not a segment")
    assert [s.name for s in load_segments(tmp_path)] == ["aa", "zz"]


def test_load_segments_rejects_duplicate_names_naming_both_files(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text(segment_text("state: {eq: NY}"))
    (tmp_path / "two.yaml").write_text(segment_text("state: {eq: NJ}"))
    with pytest.raises(SegmentError, match=r"'t' is defined twice: in .*one\.yaml and .*two\.yaml"):
        load_segments(tmp_path)


@pytest.mark.parametrize(
    ("setup", "pattern"),
    [
        (lambda p: p, r"does not exist — check the path"),
        (lambda p: (p.write_bytes(b"name: \xff\n"), p)[1], r"is not UTF-8 text — save it as UTF-8"),
    ],
)
def test_load_segment_file_errors(tmp_path: Path, setup: Any, pattern: str) -> None:
    path = setup(tmp_path / "x.yaml")
    with pytest.raises(SegmentError, match=pattern):
        load_segment(path)


def test_load_segments_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SegmentError, match=r"segment directory .* does not exist"):
        load_segments(tmp_path / "nope")


def test_models_are_frozen() -> None:
    segment = load_segment(EXAMPLE)
    with pytest.raises(ValueError, match="frozen"):
        segment.name = "other"  # type: ignore[misc]


# -- JSON Schema ----------------------------------------------------------------------------


def _check(instance: object, schema: object, root: dict[str, Any]) -> list[str]:
    """A small draft 2020-12 checker for the keywords segment_json_schema uses."""
    if schema is True:
        return []
    if schema is False:
        return ["false schema"]
    assert isinstance(schema, dict)
    errors: list[str] = []
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        errors += _check(instance, target, root)
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        python = {
            "object": dict,
            "array": list,
            "string": str,
            "boolean": bool,
            "integer": int,
            "number": (int, float),
        }
        ok = any(
            isinstance(instance, python[t])
            and not (t in ("integer", "number") and isinstance(instance, bool))
            for t in names
        )
        if not ok:
            return [f"{instance!r} is not {types}"]
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in instance:
                errors.append(f"missing {key}")
        if len(instance) < schema.get("minProperties", 0):
            errors.append("too few properties")
        for key, value in instance.items():
            if key in props:
                errors += _check(value, props[key], root)
            elif "additionalProperties" in schema:
                errors += _check(value, schema["additionalProperties"], root)
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0) or len(instance) > schema.get(
            "maxItems", 10**9
        ):
            errors.append("wrong number of items")
        if schema.get("uniqueItems") and len(set(map(repr, instance))) != len(instance):
            errors.append("duplicate items")
        for item in instance:
            errors += _check(item, schema.get("items", True), root)
    if isinstance(instance, str):
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            errors.append(f"{instance!r} does not match {schema['pattern']}")
        if len(instance) > schema.get("maxLength", 10**9):
            errors.append("too long")
    if isinstance(instance, int) and instance < schema.get("minimum", -(10**18)):
        errors.append("below minimum")
    if "oneOf" in schema and sum(not _check(instance, s, root) for s in schema["oneOf"]) != 1:
        errors.append("not exactly one of oneOf")
    if "anyOf" in schema and all(_check(instance, s, root) for s in schema["anyOf"]):
        errors.append("none of anyOf")
    if "not" in schema and not _check(instance, schema["not"], root):
        errors.append("matches not")
    return errors


def test_json_schema_accepts_the_example_and_the_docs() -> None:
    schema = segment_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert _check(yaml_data(EXAMPLE.read_text()), schema, schema) == []
    for path in sorted(CASES.glob("*.yaml")):
        assert _check(yaml_data(path.read_text()), schema, schema) == [], path


@pytest.mark.parametrize(
    "text",
    [
        "name: t\nwhere: {state: {equals: NY}}",
        "name: t\ndestination: [meta]\nwhere: {state: {eq: NY}}",
        "name: Bad Name\nwhere: {state: {eq: NY}}",
        "name: t\nwhere: {event: {type: visit, within: 10x}}",
        "name: t\nwhere: {event: {type: visit, within: 3d, ahead: 3d}}",
        "name: t\nwhere: {event: {within: 3d}}",
        "name: t\nwhere: {event: {type: visit, count: {gte: -1}}}",
        "name: t\nwhere: {age: {between: [1, 2, 3]}}",
        "name: t\nwhere: {event: {type: visit, where: {event: {type: visit}}}}",
        "name: t\nwhere: {diagnosis_codes: {starts_with: E11*}}",
        "name: t",
    ],
)
def test_json_schema_rejects_what_the_loader_rejects(text: str) -> None:
    schema = segment_json_schema()
    assert _check(yaml_data(text), schema, schema) != []
    with pytest.raises(SegmentError):
        parse_segment(text)


# -- docs -----------------------------------------------------------------------------------

DOCS = Path(__file__).parent.parent / "docs" / "segments.md"


def doc_segments() -> list[str]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    return [b for b in blocks if b.startswith("name:")]


def test_docs_show_the_brief_examples() -> None:
    names = [parse_segment(text).name for text in doc_segments()]
    assert "cardiology-lapsed" in names and len(names) >= 5


@pytest.mark.parametrize("text", doc_segments())
def test_docs_examples_parse_validate_and_fit_the_json_schema(text: str) -> None:
    segment = parse_segment(text, source="docs/segments.md")
    assert validate_segment(segment, CONTACTS_SCHEMA, EVENTS_SCHEMA, CTX) == []
    schema = segment_json_schema()
    assert _check(yaml_data(text), schema, schema) == []
