"""Segment files: YAML with line numbers → :class:`~audiences.segments.model.Segment`.

The YAML is *composed* (not constructed) so every node keeps its start mark, and scalars
are resolved here with marketer-friendly rules instead of YAML 1.1's: ``NO``, ``yes``,
``on`` stay strings, ``02139`` stays a string (no octal), ``1960-01-01`` stays the ISO
string it looks like. Only ``true``/``false``, ``null``/``~``, plain decimal integers and
decimals are typed. Duplicate keys are an error (YAML would silently keep the last one).

Structural mistakes (unknown keys and operators, bad durations, wrong arity) are found
here and raised as :class:`SegmentError` with ``file:line``; checks that need the data
schema live in :mod:`audiences.segments.validate`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Iterable
from pathlib import Path

import yaml

from audiences.core.errors import SegmentError
from audiences.segments import model

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]*")
NAME_MAX_LENGTH = 80
DURATION_PATTERN = re.compile(r"(\d+)(d|w|mo|y)")
DURATION_UNITS = {"d": 1, "w": 7, "mo": 30, "y": 365}
#: Longest duration accepted anywhere (100 years).
DURATION_MAX_DAYS = 36500

TOP_KEYS = ("name", "description", "destinations", "where", "exclude")
EVENT_KEYS = ("type", "where", "count", "within", "ahead", "between")
WINDOW_KEYS = ("within", "ahead", "between")
CONDITION_KEYWORDS = ("all", "any", "not", "event")
#: Spellings people try, mapped to the operator they mean (used for suggestions only).
OPERATOR_ALIASES = {
    "=": "eq",
    "==": "eq",
    "equals": "eq",
    "is": "eq",
    "!=": "ne",
    "neq": "ne",
    "not_eq": "ne",
    ">": "gt",
    ">=": "gte",
    "ge": "gte",
    "<": "lt",
    "<=": "lte",
    "le": "lte",
    "nin": "not_in",
    "notin": "not_in",
    "one_of": "in",
    "isnull": "is_null",
    "is_not_null": "not_null",
    "notnull": "not_null",
    "startswith": "starts_with",
    "prefix": "starts_with",
    "like": "contains",
    "range": "between",
}

_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_FLOAT = re.compile(
    r"[-+]?(0|[1-9][0-9]*)?\.[0-9]+([eE][-+]?[0-9]+)?|[-+]?(0|[1-9][0-9]*)[eE][-+]?[0-9]+"
)
_MAX_DEPTH = 64


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader used only to compose nodes; scalars are resolved by :func:`_scalar`."""


def parse_segment(text: str, source: str = "<string>") -> model.Segment:
    """Parse the text of a segment file. ``source`` names it in error messages."""
    return _Parser(source).segment(_compose(text, source))


def _compose(text: str, source: str) -> yaml.Node | None:
    try:
        root = yaml.compose(text, Loader=_ComposeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "malformed YAML"
        raise SegmentError(
            f"malformed YAML: {problem}",
            "check indentation, colons and brackets on that line",
            where=f"{source}{line}",
        ) from None
    except RecursionError:  # pyyaml composes nested flow collections recursively
        raise SegmentError(
            f"the YAML is nested too deeply (segments allow {_MAX_DEPTH} levels of conditions)",
            "flatten the all/any/not nesting (see docs/segments.md)",
            where=source,
        ) from None
    except yaml.YAMLError as exc:  # pragma: no cover - pyyaml raises marked errors in practice
        raise SegmentError(f"malformed YAML: {exc}", "fix the YAML syntax", where=source) from None
    return root


def yaml_data(text: str, source: str = "<string>") -> object:
    """The YAML as plain Python values, with scalars resolved the way segment files are.

    Used to check files against :func:`~audiences.segments.schema.segment_json_schema`.
    """
    return _plain(_compose(text, source))


def _plain(node: yaml.Node | None, depth: int = 0) -> object:
    if node is None:
        return None
    if depth > _MAX_DEPTH:
        raise SegmentError("YAML nested too deeply", "simplify the file")
    if isinstance(node, yaml.MappingNode):
        return {str(k.value): _plain(v, depth + 1) for k, v in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, depth + 1) for item in node.value]
    return _scalar(node)


def load_segment(path: str | Path) -> model.Segment:
    """Load and parse one segment file; raises :class:`SegmentError` on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SegmentError(
            f"segment file {path} does not exist", "check the path", where=str(path)
        ) from None
    except UnicodeDecodeError:
        raise SegmentError(
            f"segment file {path} is not UTF-8 text", "save it as UTF-8", where=str(path)
        ) from None
    except OSError as exc:
        raise SegmentError(
            f"cannot read segment file {path}: {exc.strerror}",
            "check the path and its permissions",
            where=str(path),
        ) from None
    return parse_segment(text, source=str(path))


def load_segments(directory: str | Path) -> list[model.Segment]:
    """Every ``*.yaml`` / ``*.yml`` file in ``directory``, sorted by segment name.

    Two files defining the same segment name are an error naming both files.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise SegmentError(
            f"segment directory {directory} does not exist",
            "create it or point the config at the right folder",
        )
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    by_name: dict[str, model.Segment] = {}
    for path in files:
        segment = load_segment(path)
        other = by_name.get(segment.name)
        if other is not None:
            raise SegmentError(
                f"segment name '{segment.name}' is defined twice: in {other.source} and {path}",
                "rename one of them; segment names must be unique",
                where=str(path),
            )
        by_name[segment.name] = segment
    return [by_name[name] for name in sorted(by_name)]


def parse_duration(value: object) -> int | None:
    """Days in a duration string (``30d``, ``2w``, ``18mo``, ``1y``), or None if it isn't one."""
    if not isinstance(value, str):
        return None
    match = DURATION_PATTERN.fullmatch(value.strip())
    if match is None:
        return None
    return int(match.group(1)) * DURATION_UNITS[match.group(2)]


def parse_iso_date(value: object) -> dt.date | None:
    """The date in an ISO ``YYYY-MM-DD`` string, or None."""
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def parse_iso_datetime(value: object) -> dt.datetime | None:
    """The date-time in an ISO ``YYYY-MM-DD[T ]HH:MM[:SS[.ffffff]]`` string (naive), or None."""
    if not isinstance(value, str) or not re.fullmatch(
        r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?", value
    ):
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to ``word``, if any is close enough."""
    pool = list(dict.fromkeys(candidates))
    matches = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in pool}
        if word.lower() in lowered:
            return lowered[word.lower()]
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str], otherwise: str) -> str:
    match = suggest(word, candidates)
    return f"did you mean '{match}'?" if match else otherwise


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _scalar(node: yaml.Node) -> model.Scalar | None:
    text = node.value
    if getattr(node, "style", None) is not None:  # quoted or block scalar: always a string
        return text
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = _scalar(node)
    if value is None:
        return "empty"
    return {bool: "a boolean", int: "a number", float: "a number"}.get(type(value), "text")


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, node: yaml.Node | None, what: str, fix: str) -> SegmentError:
        where = f"{self.source}:{_line(node)}" if node is not None else self.source
        return SegmentError(what, fix, where=where)

    # -- generic node access -------------------------------------------------------------

    def mapping(
        self, node: yaml.Node, what: str, fix: str
    ) -> list[tuple[str, yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping, found {_kind(node)}", fix)
        items: list[tuple[str, yaml.Node, yaml.Node]] = []
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if (
                not isinstance(key_node, yaml.ScalarNode)
                or key_node.tag == "tag:yaml.org,2002:merge"
            ):
                raise self.error(key_node, f"unsupported key in {what}", "keys must be plain names")
            key = key_node.value
            if key in seen:
                raise self.error(
                    key_node,
                    f"key '{key}' appears twice in {what} (first on line {seen[key]})",
                    "keep one of them; YAML would silently use only the last",
                )
            seen[key] = _line(key_node)
            items.append((key, key_node, value_node))
        return items

    def scalar(self, node: yaml.Node, what: str, fix: str) -> model.Scalar | None:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"{what} must be a single value, found {_kind(node)}", fix)
        return _scalar(node)

    def text(self, node: yaml.Node, what: str, fix: str) -> str:
        value = self.scalar(node, what, fix)
        if not isinstance(value, str):
            raise self.error(node, f"{what} must be text, found {_kind(node)}", fix)
        return value

    def sequence(self, node: yaml.Node, what: str, fix: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"{what} must be a list, found {_kind(node)}", fix)
        return list(node.value)

    # -- segment -------------------------------------------------------------------------

    def segment(self, root: yaml.Node | None) -> model.Segment:
        if root is None:
            raise SegmentError(
                "segment file is empty", "write at least 'name:' and 'where:'", where=self.source
            )
        items = self.mapping(root, "a segment file", "start with 'name: my-segment'")
        fields: dict[str, object] = {}
        lines: dict[str, yaml.Node] = {}
        for key, key_node, value in items:
            lines[key] = key_node
            if key == "name":
                fields["name"] = self.name(value)
            elif key == "description":
                description = self.scalar(value, "description", "write one line of text")
                fields["description"] = "" if description is None else str(description)
            elif key == "destinations":
                fields["destinations"] = self.destinations(value)
            elif key == "where":
                fields["where"] = self.condition(value, scope="contacts", depth=0)
            elif key == "exclude":
                fields["exclude"] = self.condition(value, scope="contacts", depth=0)
            else:
                raise self.error(
                    key_node,
                    f"unknown key '{key}' in segment",
                    did_you_mean(key, TOP_KEYS, "allowed keys: " + ", ".join(TOP_KEYS)),
                )
        for required in ("name", "where"):
            if required not in fields:
                raise self.error(
                    root,
                    f"segment has no '{required}'",
                    "add 'name: my-segment'"
                    if required == "name"
                    else "add 'where:' with the conditions contacts must meet",
                )
        return model.Segment(source=self.source, line=_line(root), **fields)  # type: ignore[arg-type]

    def name(self, node: yaml.Node) -> str:
        value = self.scalar(node, "name", "write a slug such as 'cardiology-lapsed'")
        text = "" if value is None else str(value)
        if not NAME_PATTERN.fullmatch(text) or len(text) > NAME_MAX_LENGTH:
            slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "my-segment"
            raise self.error(
                node,
                f"segment name '{text}' is not a slug",
                f"use lowercase letters, digits and dashes (at most {NAME_MAX_LENGTH}), "
                f"e.g. '{slug[:NAME_MAX_LENGTH]}'",
            )
        return text

    def destinations(self, node: yaml.Node) -> tuple[str, ...]:
        fix = "write a list such as [meta, google_ads]"
        if isinstance(node, yaml.ScalarNode) and _scalar(node) is not None:
            raise self.error(node, "destinations must be a list", f"write [{node.value}]")
        if isinstance(node, yaml.ScalarNode):
            return ()
        names: list[str] = []
        for item in self.sequence(node, "destinations", fix):
            name = self.text(item, "a destination name", fix)
            if name in names:
                raise self.error(item, f"destination '{name}' is listed twice", "list it once")
            names.append(name)
        return tuple(names)

    # -- conditions ----------------------------------------------------------------------

    def condition(self, node: yaml.Node, *, scope: str, depth: int) -> model.Condition:
        if depth > _MAX_DEPTH:
            raise self.error(
                node,
                f"conditions nested too deeply (the limit is {_MAX_DEPTH} levels)",
                "flatten the all/any/not nesting (see docs/segments.md)",
            )
        fix = (
            "write a condition such as {state: {in: [NY, NJ]}}, or all:/any:/not:"
            if scope == "contacts"
            else "write an event field condition such as {department: {eq: cardiology}}"
        )
        items = self.mapping(node, "a condition", fix)
        if not items:
            raise self.error(node, "empty condition", fix)
        parts: list[model.Condition] = []
        for key, key_node, value in items:
            parts.append(self.keyed_condition(key, key_node, value, scope=scope, depth=depth))
        if len(parts) == 1:
            return parts[0]
        # Several keys in one mapping mean AND; their order in the file carries no meaning.
        parts.sort(key=lambda c: model.canonical_json(c.model_dump(mode="json")))
        return model.AllOf(conditions=tuple(parts), line=_line(node))

    def keyed_condition(
        self, key: str, key_node: yaml.Node, value: yaml.Node, *, scope: str, depth: int
    ) -> model.Condition:
        line = _line(key_node)
        if key in ("all", "any"):
            children = self.sequence(
                value, f"'{key}'", f"write '{key}:' followed by a list of conditions (- ...)"
            )
            if not children:
                raise self.error(key_node, f"'{key}' has no conditions", "list at least one")
            conditions = tuple(self.condition(c, scope=scope, depth=depth + 1) for c in children)
            if key == "all":
                return model.AllOf(conditions=conditions, line=line)
            return model.AnyOf(conditions=conditions, line=line)
        if key == "not":
            if isinstance(value, yaml.SequenceNode):
                raise self.error(
                    key_node,
                    "'not' takes one condition, found a list",
                    "wrap several in 'not: {any: [...]}' (none of them) or 'not: {all: [...]}'",
                )
            return model.Not(
                condition=self.condition(value, scope=scope, depth=depth + 1), line=line
            )
        if key == "event":
            if scope == "event":
                raise self.error(
                    key_node,
                    "an event condition cannot be nested inside an event's 'where'",
                    "put it next to the other event condition, inside all:",
                )
            return self.event(value, line)
        return self.field(key, key_node, value, scope=scope)

    def field(
        self, name: str, key_node: yaml.Node, node: yaml.Node, *, scope: str
    ) -> model.Condition:
        line = _line(key_node)
        if not isinstance(node, yaml.MappingNode):
            shown = node.value if isinstance(node, yaml.ScalarNode) else "..."
            raise self.error(
                key_node,
                f"'{name}' needs an operator, found {_kind(node)}",
                f"write {name}: {{eq: {shown}}} (or in/gt/lt/... — see docs/segments.md)",
            )
        days_field = scope == "contacts" and name.startswith(model.DAYS_SINCE_PREFIX)
        items = self.mapping(node, f"the operators of '{name}'", f"write {name}: {{eq: ...}}")
        if not items:
            raise self.error(key_node, f"'{name}' has no operator", f"write {name}: {{eq: ...}}")
        comparisons = [
            self.comparison(op, op_node, value, field=name, days_field=days_field)
            for op, op_node, value in items
        ]
        comparisons.sort(key=lambda c: c.op)
        return model.FieldCondition(field=name, comparisons=tuple(comparisons), line=line)

    def comparison(
        self,
        op: str,
        op_node: yaml.Node,
        node: yaml.Node,
        *,
        field: str,
        days_field: bool,
        operators: tuple[str, ...] = model.OPERATORS,
    ) -> model.Comparison:
        line = _line(op_node)
        if op not in operators:
            alias = OPERATOR_ALIASES.get(op.lower())
            hint = (
                f"did you mean '{alias}'?"
                if alias in operators
                else did_you_mean(op, operators, "operators: " + ", ".join(operators))
            )
            raise self.error(op_node, f"unknown operator '{op}' for '{field}'", hint)
        if op in ("is_null", "not_null"):
            flag = self.scalar(node, f"'{op}'", f"write {op}: true")
            if not isinstance(flag, bool):
                raise self.error(node, f"'{op}' takes true or false", f"write {op}: true")
            return model.Comparison(op=op, value=flag, line=line)  # type: ignore[arg-type]
        if op in ("in", "not_in", "between"):
            if not isinstance(node, yaml.SequenceNode):
                shown = node.value if isinstance(node, yaml.ScalarNode) else "..."
                example = f"[{shown}]" if op != "between" else "[low, high]"
                raise self.error(
                    node, f"'{op}' on '{field}' takes a list", f"write {op}: {example}"
                )
            values = tuple(self.value(item, op, field, days_field) for item in node.value)
            if op == "between":
                if len(values) != 2:
                    raise self.error(
                        node,
                        f"'between' on '{field}' takes exactly 2 values, found {len(values)}",
                        "write between: [low, high] (both ends included)",
                    )
            else:
                if not values:
                    raise self.error(node, f"'{op}' on '{field}' has an empty list", "list values")
                values = tuple(sorted(set(values), key=lambda v: (type(v).__name__, str(v))))
            return model.Comparison(op=op, value=values, line=line)  # type: ignore[arg-type]
        value = self.value(node, op, field, days_field)
        if op == "starts_with" and isinstance(value, str) and value.endswith("*"):
            raise self.error(
                node,
                f"'starts_with' already matches a prefix; '{value}' would look for a literal '*'",
                f"write starts_with: {value.rstrip('*')}",
            )
        return model.Comparison(op=op, value=value, line=line)  # type: ignore[arg-type]

    def value(self, node: yaml.Node, op: str, field: str, days_field: bool) -> model.Scalar:
        value = self.scalar(
            node,
            f"the value of '{op}' on '{field}'",
            "write one value (a list only for in/between)",
        )
        if value is None:
            fix = "write is_null: true" if op in ("eq", "in") else "write a value"
            raise self.error(node, f"'{op}' on '{field}' has no value (null)", fix)
        if isinstance(value, float) and value != value:  # pragma: no cover - NaN isn't parsed
            raise self.error(node, "NaN is not a value", "write a number")
        if days_field and isinstance(value, str):
            days = parse_duration(value)
            if days is None:
                raise self.error(
                    node,
                    f"'{value}' is not a number of days or a duration",
                    "write a number of days (548) or a duration such as 30d, 6w, 18mo, 2y",
                )
            return days
        return value

    # -- events --------------------------------------------------------------------------

    def event(self, node: yaml.Node, line: int) -> model.EventCondition:
        fix = "write event: {type: visit, within: 365d}"
        items = self.mapping(node, "an event condition", fix)
        fields: dict[str, object] = {}
        window_key: tuple[str, yaml.Node] | None = None
        for key, key_node, value in items:
            if key == "type":
                fields["types"] = self.event_types(value)
            elif key == "where":
                fields["where"] = self.condition(value, scope="event", depth=1)
            elif key == "count":
                fields["count"] = self.count(value)
            elif key in WINDOW_KEYS:
                if window_key is not None:
                    raise self.error(
                        key_node,
                        f"event has both '{window_key[0]}' and '{key}'",
                        "use one window: within (past), ahead (future) or between (dates)",
                    )
                window_key = (key, key_node)
                fields["window"] = self.window(key, key_node, value)
            else:
                raise self.error(
                    key_node,
                    f"unknown key '{key}' in event condition",
                    did_you_mean(key, EVENT_KEYS, "allowed keys: " + ", ".join(EVENT_KEYS)),
                )
        if "types" not in fields:
            raise self.error(node, "event condition has no 'type'", "add type: visit (or a list)")
        return model.EventCondition(line=line, **fields)  # type: ignore[arg-type]

    def event_types(self, node: yaml.Node) -> tuple[str, ...]:
        fix = "write type: visit or type: [visit, appointment]"
        nodes = [node] if isinstance(node, yaml.ScalarNode) else self.sequence(node, "type", fix)
        if not nodes:
            raise self.error(node, "event 'type' has an empty list", fix)
        types = [self.text(item, "an event type", fix) for item in nodes]
        return tuple(sorted(set(types)))

    def count(self, node: yaml.Node) -> tuple[model.Comparison, ...]:
        fix = "write count: {gte: 2}"
        items = self.mapping(node, "count", fix)
        if not items:
            raise self.error(node, "count has no operator", fix)
        comparisons = []
        for op, op_node, value in items:
            comparison = self.comparison(
                op, op_node, value, field="count", days_field=False, operators=model.COUNT_OPERATORS
            )
            values = (
                comparison.value if isinstance(comparison.value, tuple) else (comparison.value,)
            )
            for item in values:
                if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                    raise self.error(
                        value, f"count '{op}' takes whole numbers >= 0, found {item!r}", fix
                    )
            if op == "between" and values[0] > values[1]:  # type: ignore[operator]
                raise self.error(value, "count between: low is above high", "write [low, high]")
            comparisons.append(comparison)
        comparisons.sort(key=lambda c: c.op)
        return tuple(comparisons)

    def window(self, key: str, key_node: yaml.Node, node: yaml.Node) -> model.Window:
        line = _line(key_node)
        if key == "between":
            fix = "write between: [2024-01-01, 2024-06-30] (ISO dates, both days included)"
            items = self.sequence(node, "event 'between'", fix)
            if len(items) != 2:
                raise self.error(node, f"event 'between' takes 2 dates, found {len(items)}", fix)
            dates = []
            for item in items:
                value = self.scalar(item, "an event 'between' date", fix)
                parsed = parse_iso_date(value)
                if parsed is None:
                    raise self.error(item, f"'{value}' is not an ISO date", fix)
                dates.append(parsed)
            if dates[0] > dates[1]:
                raise self.error(node, "event 'between' starts after it ends", fix)
            return model.Window(
                kind="between", start=dates[0].isoformat(), end=dates[1].isoformat(), line=line
            )
        fix = f"write {key}: 730d (units: d, w, mo = 30 days, y = 365 days)"
        value = self.scalar(node, f"'{key}'", fix)
        days = parse_duration(value)
        if days is None:
            shown = "" if value is None else str(value)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                fix = f"write {key}: {value}d"
            raise self.error(node, f"'{shown}' is not a valid duration for '{key}'", fix)
        if days == 0:
            raise self.error(node, f"'{key}: {value}' is an empty window", "use at least 1d")
        if days > DURATION_MAX_DAYS:
            raise self.error(
                node,
                f"'{key}: {value}' is longer than 100 years",
                "leave out the window for all time",
            )
        return model.Window(kind=key, days=days, line=line)  # type: ignore[arg-type]
