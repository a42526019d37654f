"""Plain-data views of objects, for JSON output, state rows and reports.

One helper instead of a hand-written ``{"a": self.a, "b": self.b, …}`` literal in every
result class: the names are listed once, in output order.
"""

from __future__ import annotations

from typing import Any


def pick(obj: object, names: str) -> dict[str, Any]:
    """``{name: obj.name}`` for each whitespace-separated attribute name, in that order.

    >>> from types import SimpleNamespace
    >>> pick(SimpleNamespace(a=1, b="x"), "b a")
    {'b': 'x', 'a': 1}
    """
    return {name: getattr(obj, name) for name in names.split()}
