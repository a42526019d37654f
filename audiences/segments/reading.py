"""A segment for people: a plain-English reading of its definition, and its YAML text.

:func:`reading` turns the parsed model into one sentence a compliance officer can check
against what the marketer meant ("Adults 50–75 living in NY or NJ, with at least one
cardiology visit in the last 730 days, and no appointment in the next 90 days").
:func:`definition_yaml` gives the YAML the officer approved: the segment file's own
text when it still parses to the same digest, else the definition written back in the
segment language (docs/segments.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml

from audiences.segments import model

#: Contacts fields read as where someone lives ("living in NY or NJ").
PLACE_FIELDS = frozenset({"state", "city", "country", "zip", "postal_code", "county"})
#: Derived fields whose value is counted in days.
_DAY_KINDS = ("days_since_last_event", "days_since_column")

YamlSource = Literal["file", "canonical"]


# ---------------------------------------------------------------------------------------
# Reading


def reading(segment: model.Segment) -> str:
    """One sentence: who the segment selects, in plain English, ending with a full stop."""
    parts = _top_level(segment.where)
    subject, rest = _subject(parts)
    text = subject + (" " + _join(rest, "and") if rest else "")
    if segment.exclude is not None:
        text += ", excluding anyone " + _clause(segment.exclude)
    return text + "."


def _top_level(cond: model.Condition) -> list[model.Condition]:
    return list(cond.conditions) if isinstance(cond, model.AllOf) else [cond]


def _subject(parts: list[model.Condition]) -> tuple[str, list[str]]:
    """``Adults 50–75`` from a top-level age condition; the other parts as clauses."""
    age = next(
        (c for c in parts if isinstance(c, model.FieldCondition) and c.field == model.AGE_FIELD),
        None,
    )
    rest = [_clause(c) for c in parts if c is not age]
    if age is None:
        return "People", rest
    lows = [_num(c.value) for c in age.comparisons if c.op in ("gte", "gt", "between")]
    adult = any(low is not None and low >= 18 for low in lows)
    return ("Adults " if adult else "People ") + _age_range(age.comparisons), rest


def _num(value: model.Scalar | tuple[model.Scalar, ...]) -> float | None:
    first = value[0] if isinstance(value, tuple) and value else value
    return float(first) if isinstance(first, int | float) and not isinstance(first, bool) else None


def _age_range(comparisons: tuple[model.Comparison, ...]) -> str:
    words = {
        "between": lambda v: f"{v[0]}–{v[1]}",
        "gte": lambda v: f"{v} and over",
        "gt": lambda v: f"over {v}",
        "lte": lambda v: f"{v} and under",
        "lt": lambda v: f"under {v}",
        "eq": lambda v: f"aged {v}",
    }
    out = [words[c.op](c.value) if c.op in words else _comparison(c) for c in comparisons]
    return " and ".join(out)


def _join(items: list[str], word: str) -> str:
    if len(items) <= 1:
        return "".join(items)
    if len(items) == 2:
        return f"{items[0]} {word} {items[1]}"
    return ", ".join(items[:-1]) + f", {word} " + items[-1]


def _clause(cond: model.Condition) -> str:
    """A clause that follows a noun: ``living in NY``, ``with no appointment …``."""
    if isinstance(cond, model.AllOf):
        return _join([_clause(c) for c in cond.conditions], "and")
    if isinstance(cond, model.AnyOf):
        return "either " + _join([_clause(c) for c in cond.conditions], "or")
    if isinstance(cond, model.Not):
        inner = cond.condition
        if isinstance(inner, model.EventCondition) and _is_at_least_one(inner):
            return "with no " + _event_noun(inner) + _window(inner.window)
        return "not " + _clause(inner)
    if isinstance(cond, model.EventCondition):
        return "with " + _event(cond)
    return _field_clause(cond)


def _field_clause(cond: model.FieldCondition) -> str:
    kind, base = model.classify_field(cond.field)
    if kind == "age":
        return "aged " + _age_range(cond.comparisons)
    if kind in _DAY_KINDS:
        what = f"last {base}" if kind == "days_since_last_event" else base.replace("_", " ")
        return f"whose {what} was " + " and ".join(_days_ago(c) for c in cond.comparisons)
    if cond.field in PLACE_FIELDS and all(c.op in ("eq", "in") for c in cond.comparisons):
        return "living in " + " and ".join(_values(c.value, "or") for c in cond.comparisons)
    if cond.field in PLACE_FIELDS and all(c.op == "starts_with" for c in cond.comparisons):
        prefixes = " and ".join(_quoted(c.value) for c in cond.comparisons)
        noun = "ZIP codes" if cond.field in ("zip", "postal_code") else cond.field + " values"
        return f"living in {noun} starting {prefixes}"
    name = cond.field.replace("_", " ")
    return f"whose {name} " + " and ".join(_comparison(c) for c in cond.comparisons)


def _days_ago(c: model.Comparison) -> str:
    v = c.value
    words = {
        "gt": f"more than {v} days ago",
        "gte": f"{v} or more days ago",
        "lt": f"less than {v} days ago",
        "lte": f"{v} days ago or less",
        "eq": f"{v} days ago",
        "is_null": "never recorded" if v else "recorded",
        "not_null": "recorded" if v else "never recorded",
    }
    if c.op == "between" and isinstance(v, tuple):
        return f"{v[0]} to {v[1]} days ago"
    return words.get(c.op, _comparison(c))


def _values(value: model.Scalar | tuple[model.Scalar, ...], word: str) -> str:
    items = list(value) if isinstance(value, tuple) else [value]
    return _join([_scalar(x) for x in items], word)


def _scalar(value: model.Scalar) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and value.endswith("*"):
        return f"codes starting {value[:-1]}"
    return str(value)


def _quoted(value: model.Scalar | tuple[model.Scalar, ...]) -> str:
    return f"“{_values(value, 'or')}”"


def _comparison(c: model.Comparison) -> str:
    v = c.value
    if c.op == "between" and isinstance(v, tuple):
        return f"is between {_scalar(v[0])} and {_scalar(v[1])}"
    if c.op in ("is_null", "not_null"):
        empty = (c.op == "is_null") == bool(v)
        return "is unknown" if empty else "is known"
    words = {
        "eq": "is ",
        "ne": "is not ",
        "in": "is ",
        "not_in": "is none of ",
        "gt": "is above ",
        "gte": "is at least ",
        "lt": "is below ",
        "lte": "is at most ",
        "contains": "contains ",
        "starts_with": "starts with ",
    }
    word = "or" if c.op in ("in", "eq") else "nor" if c.op == "not_in" else "or"
    shown = _quoted(v) if c.op in ("contains", "starts_with") else _values(v, word)
    return words[c.op] + shown


# -- events ---------------------------------------------------------------------------


def _is_at_least_one(cond: model.EventCondition) -> bool:
    return len(cond.count) == 1 and cond.count[0].op == "gte" and cond.count[0].value == 1


def _event(cond: model.EventCondition) -> str:
    return _count(cond.count) + " " + _event_noun(cond, plural=True) + _window(cond.window)


def _count(count: tuple[model.Comparison, ...]) -> str:
    c = count[0] if len(count) == 1 else None
    if c is None:
        return " and ".join(_comparison(x) for x in count) + " count of"
    v = c.value
    words = {
        "gte": "at least one" if v == 1 else f"at least {v}",
        "gt": f"more than {v}",
        "lte": f"at most {v}",
        "lt": f"fewer than {v}",
        "eq": "no" if v == 0 else f"exactly {v}",
        "ne": "any number but" + f" {v} of",
    }
    if c.op == "between" and isinstance(v, tuple):
        return f"{v[0]} to {v[1]}"
    return words.get(c.op, "some")


def _event_noun(cond: model.EventCondition, *, plural: bool = False) -> str:
    """``cardiology visit``: a single ``eq`` on an event column becomes an adjective."""
    types = _join(list(cond.types), "or").replace("_", " ")
    where = cond.where
    if isinstance(where, model.FieldCondition) and [c.op for c in where.comparisons] == ["eq"]:
        value = where.comparisons[0].value
        if isinstance(value, str):
            return f"{value.replace('_', ' ')} {types}"
    if where is None:
        return types
    return f"{types} {_clause(where)}"


def _window(window: model.Window | None) -> str:
    if window is None:
        return ""
    if window.kind == "within":
        return f" in the last {window.days} days"
    if window.kind == "ahead":
        return f" in the next {window.days} days"
    return f" between {window.start} and {window.end}"


# ---------------------------------------------------------------------------------------
# YAML


def definition_yaml(segment: model.Segment) -> tuple[str, YamlSource]:
    """The segment's YAML as approved: its file's text if it still has the segment's
    digest (comments and layout kept), else the definition written in the segment
    language. Returns the text and where it came from."""
    from audiences.segments.loader import parse_segment

    path = Path(segment.source) if segment.source else None
    if path is not None and path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
            if parse_segment(text, source=str(path)).digest == segment.digest:
                return text, "file"
        except (OSError, UnicodeDecodeError, ValueError):
            pass
    return canonical_yaml(segment), "canonical"


def canonical_yaml(segment: model.Segment) -> str:
    """The definition in the segment language (docs/segments.md), keys in file order."""
    body: dict[str, object] = {"name": segment.name}
    if segment.description:
        body["description"] = segment.description
    if segment.destinations:
        body["destinations"] = list(segment.destinations)
    body["where"] = _yaml_condition(segment.where)
    if segment.exclude is not None:
        body["exclude"] = _yaml_condition(segment.exclude)
    return yaml.safe_dump(
        body, sort_keys=False, allow_unicode=True, default_flow_style=None, width=1_000
    )


def _yaml_condition(cond: model.Condition) -> object:
    if isinstance(cond, model.AllOf):
        return {"all": [_yaml_condition(c) for c in cond.conditions]}
    if isinstance(cond, model.AnyOf):
        return {"any": [_yaml_condition(c) for c in cond.conditions]}
    if isinstance(cond, model.Not):
        return {"not": _yaml_condition(cond.condition)}
    if isinstance(cond, model.EventCondition):
        event: dict[str, object] = {
            "type": cond.types[0] if len(cond.types) == 1 else list(cond.types)
        }
        if cond.where is not None:
            event["where"] = _yaml_condition(cond.where)
        event["count"] = _yaml_comparisons(cond.count)
        if cond.window is not None:
            w = cond.window
            event[w.kind] = [w.start, w.end] if w.kind == "between" else f"{w.days}d"
        return {"event": event}
    return {cond.field: _yaml_comparisons(cond.comparisons)}


def _yaml_comparisons(comparisons: tuple[model.Comparison, ...]) -> dict[str, object]:
    return {c.op: list(c.value) if isinstance(c.value, tuple) else c.value for c in comparisons}


__all__ = ["canonical_yaml", "definition_yaml", "reading"]
