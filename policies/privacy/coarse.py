"""Coarse figures: how marketer-facing outputs show counts that cannot go through DP.

The operational counts of a plan or a sync (adds, removes, holds, what a platform
received) are exact by nature: the connector must send exactly those people. Shown to a
marketer they would be a free, exact query on the CRM — a segment ``contact_id = X and a
cardiology visit`` would answer "did X have a cardiology visit" with ``adds: 1`` or ``0``.
So every marketer-facing surface shows them through :func:`coarse_count` and only there;
the exact numbers stay in the state database and the compliance reports (for the officer).

The rule (docs/privacy-insights.md, "Coarse figures"):

* a count below ``k`` (including 0) is shown as ``"< k"`` — 0, 1 and k-1 look the same;
* any other count is shown as the range of ``step`` it falls in: ``"100-199"``.

``k`` and ``step`` are the pack's ``min-size`` ``k`` (the smallest audience the pack lets
anyone release): a figure is never finer than the smallest group the pack already treats
as safe to reveal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policies.pack import Pack

__all__ = [
    "DEFAULT_K",
    "PEOPLE_COUNT_KEYS",
    "Rounding",
    "blocked_report",
    "coarse_count",
    "coarsen",
    "coarsen_below_k",
    "rounding",
]

# The k used when a pack has no min-size rule (the baseline pack's own k).
DEFAULT_K = 100

# Keys of the marketer-facing dicts (plan, sync, status, history) that count people.
PEOPLE_COUNT_KEYS = frozenset(
    {
        "adds",
        "removes",
        "held_adds",
        "held_removes",
        "forced_removes",
        "replaced_members",
        "membership_unknown",
        "holds",
        "members",
        "release_members",
        "confirmed_members",
        "sent",
        "received",
        "invalid",
        "held",
        "batches",
    }
)


@dataclass(frozen=True, slots=True)
class Rounding:
    """Below ``k``: ``"< k"``; otherwise the ``step``-wide range holding the count."""

    k: int
    step: int

    def __post_init__(self) -> None:
        if self.k < 1 or self.step < 1:
            raise ValueError(f"coarse rounding needs k >= 1 and step >= 1, got {self}")

    def count(self, n: int) -> str:
        return coarse_count(n, self.k, self.step)


def coarse_count(n: int, k: int, step: int) -> str:
    """``n`` as a marketer may see it: ``"< k"`` below k, else ``"low-high"`` of width step."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"coarse_count needs an int, got {type(n).__name__}")
    if k < 1 or step < 1:
        raise ValueError(f"coarse_count needs k >= 1 and step >= 1, got k={k}, step={step}")
    if n < k:
        return f"< {k}"
    low = max(n // step * step, k)
    high = (n // step + 1) * step - 1
    return f"{low}-{high}"


def rounding(pack: Pack) -> Rounding:
    """The pack's rounding: its ``min-size`` k (the largest, if several), else DEFAULT_K."""
    ks = [int(getattr(r.params, "k", 0)) for r in pack.rules if r.kind == "min_size"]
    k = max(ks, default=0) or DEFAULT_K
    return Rounding(k=k, step=k)


def coarsen(value: Any, how: Rounding, keys: Iterable[str] = PEOPLE_COUNT_KEYS) -> Any:
    """A copy of ``value`` (dicts and lists, any depth) with every int under one of
    ``keys`` replaced by its coarse form. Other values are copied unchanged."""
    wanted = frozenset(keys)
    if isinstance(value, Mapping):
        out = {
            k: how.count(v) if _is_count(v) and k in wanted else coarsen(v, how, wanted)
            for k, v in value.items()
        }
        if out.get("match_rate") is not None and _small_basis(value, how.k):
            out["match_rate"] = None  # 0 % vs 100 % of one person tells whether she was sent
        return out
    if isinstance(value, list | tuple):
        return [coarsen(v, how, wanted) for v in value]
    return value


def _small_basis(row: Mapping[str, Any], k: int) -> bool:
    """Whether a row's match rate is computed over fewer than k people."""
    basis = row.get("sent", row.get("adds"))
    return not _is_count(basis) or basis < k


def coarsen_below_k(value: Any, k: int, keys: Iterable[str]) -> Any:
    """A copy of ``value`` where an int under one of ``keys`` below ``k`` becomes ``"< k"``
    (exact figures of k and above are kept: this is the officer's blocked-build report)."""
    wanted = frozenset(keys)
    if isinstance(value, Mapping):
        return {
            name: f"< {k}"
            if _is_count(v) and name in wanted and v < k
            else coarsen_below_k(v, k, wanted)
            for name, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [coarsen_below_k(v, k, wanted) for v in value]
    return value


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Integers in a blocked report that are not counts of people (flags, thresholds, sizes
# of word lists): left exact.
_NOT_PEOPLE = frozenset(
    {
        "phi_derived",
        "applies",
        "words_checked",
        "words_found",
        "pack_k",
        "platform_minimum",
        "destination_minimum",
        "threshold",
        "k_diff",
        "earlier_releases_compared",
        "other_projects_audiences_compared",
        "other_projects_audiences_in_patterns",
        "audiences_in_patterns_without_links",
        "collisions",
        "held_comparisons",
        "same_audience",
        "previous_version",
    }
)

# "3 of 5 candidates excluded", "1 members is below", "2 excluded: under 18"
_COUNT_IN_TEXT = re.compile(
    r"\b(\d[\d,]*)(?= (?:of|members?|candidates?|excluded|people|records?|lacking|without)\b)"
    r"|(?<=\bof )(\d[\d,]*)(?= candidates?\b)"
)


def _mask_text(text: str, k: int) -> str:
    def mask(match: re.Match[str]) -> str:
        n = int(match.group(0).replace(",", ""))
        return f"< {k}" if n < k else match.group(0)

    return _COUNT_IN_TEXT.sub(mask, text)


def blocked_report(report: dict[str, Any], k: int) -> dict[str, Any]:
    """The compliance report of a *blocked* build with no exact count below ``k``: the
    figures, the rules' evidence and details, and the difference checks. A blocked build
    released nobody, so its report is the cheapest probe there is (a segment of one
    named person answers "does she have a cardiology visit" with candidates 1 or 0)."""
    out = dict(report)
    out["figures"] = _below_k_except(report.get("figures", {}), k)
    out["verdicts"] = [
        {
            **v,
            "evidence": _below_k_except(v.get("evidence", {}), k),
            "detail": _mask_text(str(v.get("detail", "")), k),
            "checks": _below_k_except(v.get("checks", []), k),
        }
        for v in report.get("verdicts", [])
    ]
    out["difference_checks"] = _below_k_except(report.get("difference_checks", []), k)
    out["block_reasons"] = [_mask_text(r, k) for r in report.get("block_reasons", [])]
    out["coarse_below"] = k
    return out


def _below_k_except(value: Any, k: int) -> Any:
    if isinstance(value, Mapping):
        return {
            name: f"< {k}"
            if _is_count(v) and name not in _NOT_PEOPLE and v < k
            else _below_k_except(v, k)
            for name, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_below_k_except(v, k) for v in value]
    return value
