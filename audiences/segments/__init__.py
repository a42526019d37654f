"""The segment language: YAML files marketers write, compiled to polars.

See docs/segments.md for the language and docs/internals.md for how the build uses it.
"""

from audiences.segments.compiler import compile_segment
from audiences.segments.context import SegmentContext
from audiences.segments.loader import load_segment, load_segments, parse_segment
from audiences.segments.model import (
    Condition,
    EventCondition,
    FieldCondition,
    Segment,
    SegmentReferences,
)
from audiences.segments.schema import segment_json_schema
from audiences.segments.validate import SegmentIssue, check_segment, validate_segment

__all__ = [
    "Condition",
    "EventCondition",
    "FieldCondition",
    "Segment",
    "SegmentContext",
    "SegmentIssue",
    "SegmentReferences",
    "check_segment",
    "compile_segment",
    "load_segment",
    "load_segments",
    "parse_segment",
    "segment_json_schema",
    "validate_segment",
]
