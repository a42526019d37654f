"""JSON Schema (draft 2020-12) of segment files, for editors (YAML language servers).

Hand-written to describe the YAML people write (``state: {in: [NY, NJ]}``), which is not
the shape of the parsed pydantic models. Schema-dependent rules (column names, operator
fits the column type) are left to ``audiences validate``.
"""

from __future__ import annotations

import copy
from typing import Any

from audiences.segments.loader import DURATION_MAX_DAYS, NAME_MAX_LENGTH
from audiences.segments.model import COUNT_OPERATORS

_DURATION = r"^[0-9]+(d|w|mo|y)$"
_ISO_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"

_SCALAR: dict[str, Any] = {"type": ["string", "number", "boolean"]}
_SCALARS: dict[str, Any] = {"type": "array", "items": _SCALAR, "minItems": 1}
_PAIR: dict[str, Any] = {"type": "array", "items": _SCALAR, "minItems": 2, "maxItems": 2}
_COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}

_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:audiences:segment:v1",
    "title": "audiences segment",
    "description": "One audience segment: which contacts it selects and where it may go. "
    "See docs/segments.md.",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "where"],
    "properties": {
        "name": {
            "type": "string",
            "pattern": "^[a-z0-9][a-z0-9-]*$",
            "maxLength": NAME_MAX_LENGTH,
            "description": "Slug: lowercase letters, digits and dashes.",
        },
        "description": {"type": "string"},
        "destinations": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "uniqueItems": True,
            "description": "Destination names from audiences.toml (meta, google_ads, file, ...).",
        },
        "where": {"$ref": "#/$defs/condition", "description": "Who is in the segment."},
        "exclude": {
            "$ref": "#/$defs/condition",
            "description": "Who is removed (also when the condition cannot be decided).",
        },
    },
    "$defs": {
        "condition": {
            "description": "A mapping; several keys mean all of them must hold. Keys other "
            "than all/any/not/event are field names (contacts columns, age, "
            "days_since_last_<event type>, days_since_<date column>).",
            "type": "object",
            "minProperties": 1,
            "properties": {
                "all": {"type": "array", "items": {"$ref": "#/$defs/condition"}, "minItems": 1},
                "any": {"type": "array", "items": {"$ref": "#/$defs/condition"}, "minItems": 1},
                "not": {"$ref": "#/$defs/condition"},
                "event": {"$ref": "#/$defs/event"},
            },
            "additionalProperties": {"$ref": "#/$defs/operators"},
        },
        "event_condition": {
            "description": "A condition on event columns (no nested event:).",
            "type": "object",
            "minProperties": 1,
            "properties": {
                "all": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/event_condition"},
                    "minItems": 1,
                },
                "any": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/event_condition"},
                    "minItems": 1,
                },
                "not": {"$ref": "#/$defs/event_condition"},
                "event": False,
            },
            "additionalProperties": {"$ref": "#/$defs/operators"},
        },
        "operators": {
            "description": "Operators on one field; several operators must all hold.",
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "eq": {
                    **_SCALAR,
                    "description": "Equal; on text, a value ending in * is a prefix.",
                },
                "ne": _SCALAR,
                "in": {**_SCALARS, "description": "Any of the values (prefixes with *)."},
                "not_in": _SCALARS,
                "gt": _SCALAR,
                "gte": _SCALAR,
                "lt": _SCALAR,
                "lte": _SCALAR,
                "between": {**_PAIR, "description": "[low, high], both ends included."},
                "is_null": {"type": "boolean"},
                "not_null": {"type": "boolean"},
                "contains": {"type": "string"},
                "starts_with": {"type": "string", "pattern": "[^*]$"},
            },
        },
        "duration": {
            "type": "string",
            "pattern": _DURATION,
            "description": f"<n>d, <n>w, <n>mo (30 days), <n>y (365 days); at most "
            f"{DURATION_MAX_DAYS} days.",
        },
        "event": {
            "type": "object",
            "additionalProperties": False,
            "required": ["type"],
            "properties": {
                "type": {
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    ]
                },
                "where": {"$ref": "#/$defs/event_condition"},
                "count": {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": False,
                    "properties": {
                        op: (
                            {"type": "array", "items": _COUNT, "minItems": 2, "maxItems": 2}
                            if op == "between"
                            else _COUNT
                        )
                        for op in COUNT_OPERATORS
                    },
                },
                "within": {"$ref": "#/$defs/duration", "description": "The past n days."},
                "ahead": {"$ref": "#/$defs/duration", "description": "The next n days."},
                "between": {
                    "type": "array",
                    "items": {"type": "string", "pattern": _ISO_DATE},
                    "minItems": 2,
                    "maxItems": 2,
                },
            },
            "not": {
                "anyOf": [
                    {"required": ["within", "ahead"]},
                    {"required": ["within", "between"]},
                    {"required": ["ahead", "between"]},
                ]
            },
        },
    },
}


def segment_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a segment file (a fresh copy)."""
    return copy.deepcopy(_SCHEMA)
