"""The report's funnel: from the people a segment selected, through each filter rule, to
the people released per destination — exact counts that add up, and the bars of the
inline SVG chart (drawn by the template, so every label is escaped there).

Invariant (tested with hypothesis): ``selected - sum(step.removed) == eligible`` and, per
destination, ``released + withheld == eligible``.

The report of a *blocked* build shows no exact count below k (policies/privacy/coarse.py):
such a figure arrives as text (``"< 100"``), is shown as it is, and the steps that depend
on it are shown as text too (``Funnel.exact`` is then false and the chart draws no bars).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from policies.report.glossary import GLOSSARY, kind_label, ordered, term

Count = int | str  # a count, or a coarse figure ("< 100") of a blocked build's report


@dataclass(frozen=True)
class Step:
    """One filter step: the people it removed and those left after it."""

    label: str
    rule: str | None
    removed: Count
    remaining: Count
    reasons: tuple[tuple[str, Count], ...] = ()  # overlapping: one person can have several
    note: str = ""


@dataclass(frozen=True)
class Outlet:
    """One destination: the people released to it, and those the destination withheld."""

    destination: str
    kind: str
    account: str
    released: Count
    withheld: Count
    note: str


@dataclass(frozen=True)
class Funnel:
    selected: Count
    steps: tuple[Step, ...]
    eligible: Count
    outlets: tuple[Outlet, ...]
    stopped_early: bool  # the build stopped before any candidate was read (approval)

    @property
    def exact(self) -> bool:
        counts = [self.selected, self.eligible]
        counts += [c for s in self.steps for c in (s.removed, s.remaining)]
        counts += [c for o in self.outlets for c in (o.released, o.withheld)]
        return all(isinstance(c, int) for c in counts)

    @property
    def adds_up(self) -> bool:
        if not self.exact:
            return False
        total = _i(self.selected) - sum(_i(s.removed) for s in self.steps)
        return total == self.eligible and all(
            _i(o.released) + _i(o.withheld) == self.eligible for o in self.outlets
        )


def _i(count: Count) -> int:
    return count if isinstance(count, int) else 0


def count_minus(a: Count, b: Count) -> Count:
    """``a - b`` when both are exact, else the coarse figure shown as unknown."""
    return a - b if isinstance(a, int) and isinstance(b, int) else "—"


_FILTER_KINDS = frozenset(k for k, e in GLOSSARY.items() if e.removes)


def funnel(report: dict[str, Any]) -> Funnel:
    """The funnel of a report document (policies/gate.py)."""
    fig = report["figures"]
    selected, eligible = count_of(fig["candidates"]), count_of(fig["eligible_members"])
    remaining = selected
    steps: list[Step] = []
    for v in report["verdicts"]:
        if v["destination"] is not None or "removed" not in v["evidence"]:
            continue
        removed = count_of(v["evidence"]["removed"])
        remaining = count_minus(remaining, removed)
        steps.append(_filter_step(v, removed, remaining))
    other = count_minus(remaining, eligible)
    if other != 0 and not (isinstance(other, str) and isinstance(eligible, str)):
        steps.append(
            Step(
                "No member key, or a duplicate record",
                None,
                other,
                eligible,
                note=f"{shown(count_of(fig['without_member_key']))} CRM records had no member key (external "
                "id); several records of one person are released once",
            )
        )
    outlets = tuple(_outlet(report, name, eligible) for name in _destinations(report))
    stopped = any(v["kind"] == "approval" for v in report["verdicts"])
    return Funnel(selected, tuple(steps), eligible, outlets, stopped)


def count_of(value: Any) -> Count:
    return (
        int(value) if isinstance(value, int | float) and not isinstance(value, bool) else str(value)
    )


def _filter_step(v: dict[str, Any], removed: Count, remaining: Count) -> Step:
    kind = v["kind"]
    entry = GLOSSARY.get(kind)
    label = entry.removes if entry and entry.removes else kind_label(kind)
    skip = {"candidates", "excluded", "removed", "phi_derived", "lists", "list_entries"}
    reasons = tuple(
        (term(kind, k).label, count_of(n))
        for k, n in ordered(kind, v["evidence"])
        if k not in skip and kind in _FILTER_KINDS
    )
    note = "warn only: reported, nobody removed" if v["severity"] == "warn" else ""
    return Step(label, v["id"], removed, remaining, reasons, note)


def _destinations(report: dict[str, Any]) -> list[str]:
    names = list(report.get("destinations") or [])
    names += [r["destination"] for r in report["releases"] if r["destination"] not in names]
    return names


def _outlet(report: dict[str, Any], name: str, eligible: Count) -> Outlet:
    release = next((r for r in report["releases"] if r["destination"] == name), None)
    if release is None:
        why = "build blocked: nothing released" if report["status"] == "blocked" else "not released"
        return Outlet(name, "", "", 0, eligible, why)
    released = count_of(release["members"])
    export = next(
        (e for e in report.get("record_exports", []) if e.get("destination") == name), None
    )
    note = "released"
    if export is not None:
        note = "record-level export: rows withheld to reach k-anonymity"
    return Outlet(
        name, release["kind"], release["account"], released, count_minus(eligible, released), note
    )


# ---------------------------------------------------------------------------------------
# Chart geometry (viewBox units; the template draws it)

WIDTH = 520
BAR_X = 0
BAR_W = 520
ROW = 52  # label line + bar
BAR_H = 18


@dataclass(frozen=True)
class Bar:
    y: int  # top of the row (label baseline is y + 15)
    label: str
    figure: str  # "329" or "−176 → 153"
    kept: float  # width of the solid part (people continuing)
    removed: float  # width of the hatched part right after it (people removed here)
    final: bool  # a "released" row


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: tuple[Bar, ...]


def chart(f: Funnel) -> Chart:
    """Bars to scale for an exact funnel; for a coarse one (a blocked build's report) the
    figures only, no bar lengths that would give the counts away."""
    scale = BAR_W / f.selected if f.exact and isinstance(f.selected, int) and f.selected else 0.0
    rows: list[tuple[str, str, int, int, bool]] = [
        ("Selected by the segment", shown(f.selected), _i(f.selected), 0, False)
    ]
    before = f.selected
    for s in f.steps:
        figure = f"−{shown(s.removed)} → {shown(s.remaining)}" if s.removed else shown(s.remaining)
        rows.append((s.label, figure, _i(s.remaining), _i(count_minus(before, s.remaining)), False))
        before = s.remaining
    for o in f.outlets:
        shown_kind = o.kind and o.kind != o.destination
        label = f"Released to {o.destination}" + (f" ({o.kind})" if shown_kind else "")
        figure = shown(o.released) + (
            f" (−{shown(o.withheld)})" if o.withheld and o.released else ""
        )
        rows.append((label, figure, _i(o.released), _i(o.withheld), True))
    bars = tuple(
        Bar(i * ROW, label, figure, round(kept * scale, 1), round(gone * scale, 1), final)
        for i, (label, figure, kept, gone, final) in enumerate(rows)
    )
    return Chart(WIDTH, len(bars) * ROW, bars)


def shown(count: Count) -> str:
    return f"{count:,}" if isinstance(count, int) else count


__all__ = ["Bar", "Chart", "Count", "Funnel", "Outlet", "Step", "chart", "funnel"]
