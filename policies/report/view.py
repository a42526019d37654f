"""What the report templates show: the report document (policies/gate.py) turned into
plain values — sentences, labelled evidence, the funnel, one card per destination.

Nothing here escapes anything: the templates do (autoescaping for HTML, the ``md``
finalizer for Markdown). Nothing here reads a member's data either: the report document
holds counts, names of things and digests only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audiences.crm.identifiers import LAYOUTS, PLAIN_COLUMNS
from policies.report.funnel import Chart, Funnel, chart, count_minus, count_of, funnel, shown
from policies.report.glossary import (
    GLOSSARY,
    JURISDICTION_TERMS,
    Term,
    jurisdiction_label,
    kind_label,
    ordered,
    term,
)

PLATFORMS = {
    "meta": "Meta Custom Audience",
    "google_ads": "Google Ads Customer Match",
    "file": "File export",
}


@dataclass(frozen=True)
class Evidence:
    key: str
    label: str
    value: str
    explanation: str


@dataclass(frozen=True)
class VerdictView:
    id: str
    rule: str  # the kind's plain name
    kind: str
    destination: str
    severity: str
    status: str
    detail: str
    rationale: str
    source: str
    evidence: tuple[Evidence, ...]


@dataclass(frozen=True)
class ReleaseView:
    destination: str
    platform: str
    account: str
    opaque_name: str
    fields: tuple[str, ...]
    people: int
    rows: int
    release_id: str
    folder: str  # file destinations: where the files were written
    held: str
    verdict_digest: str
    syncs: tuple[dict[str, str], ...]


@dataclass(frozen=True)
class ApprovalView:
    approver: str
    key_id: str
    at: str
    note: str
    verified: str  # "verified" | "NOT verified" | "not recorded"
    digest_matches: bool | None


@dataclass(frozen=True)
class JurisdictionRuleView:
    pack: str
    id: str
    rule: str  # the kind's plain name
    removes: str  # what the rule takes out, in words
    status: str
    matched: str  # people of the jurisdiction the rule excludes
    source: str


@dataclass(frozen=True)
class JurisdictionView:
    code: str
    label: str
    people: str  # people selected whose jurisdiction this is
    rules: tuple[JurisdictionRuleView, ...]


@dataclass(frozen=True)
class View:
    report: dict[str, Any]
    status: str
    stopped_for_approval: bool
    headline: str
    paragraph: str
    funnel: Funnel
    chart: Chart
    reading: str
    yaml: str
    yaml_source: str
    verdicts: tuple[VerdictView, ...]
    jurisdictions: tuple[JurisdictionView, ...]
    jurisdiction_terms: dict[str, Term]  # the section's column labels and what they mean
    base_pack: str
    releases: tuple[ReleaseView, ...]
    approval: ApprovalView | None
    operator: str
    operator_configured: bool
    approve_command: str


def build_view(r: dict[str, Any]) -> View:
    f = funnel(r)
    stopped = f.stopped_early
    seg = r["segment"]
    reading_text = seg.get("reading") or _reading_of(seg.get("definition") or {})
    approval = _approval(r)
    operator = r.get("operator") or ""
    return View(
        report=r,
        status=r["status"],
        stopped_for_approval=stopped,
        headline=_headline(r, stopped),
        paragraph=paragraph(r, f, reading_text, approval),
        funnel=f,
        chart=chart(f),
        reading=reading_text,
        yaml=seg.get("yaml") or _yaml_of(seg.get("definition") or {}),
        yaml_source=seg.get("yaml_source") or "canonical",
        verdicts=tuple(_verdict(v) for v in r["verdicts"]),
        jurisdictions=jurisdictions(r),
        jurisdiction_terms=JURISDICTION_TERMS,
        base_pack=str(r["pack"]["name"]).split(" + ")[0],
        releases=tuple(_release(r, rel) for rel in r["releases"]),
        approval=approval,
        operator=operator or str(r.get("actor") or "unknown"),
        operator_configured=bool(operator),
        approve_command=(
            f"audiences approve {seg['name']} --by NAME --key PATH" if stopped else ""
        ),
    )


def _headline(r: dict[str, Any], stopped: bool) -> str:
    if stopped:
        return "Stopped: the segment is not approved as it stands. Nothing was released."
    if r["status"] == "blocked":
        return "Blocked by the policy gate. Nothing was released."
    return "Released to " + _and([rel["destination"] for rel in r["releases"]]) + "."


def _and(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def paragraph(
    r: dict[str, Any], f: Funnel, reading_text: str, approval: ApprovalView | None
) -> str:
    """The first screen's plain-language paragraph."""
    seg = r["segment"]
    lead = reading_text[:1].lower() + reading_text[1:] if reading_text else "its definition."
    out = [f"The segment “{seg['name']}” selects {lead}"]
    if f.stopped_early:
        out.append(
            f"On {r['as_of']} the build stopped before reading anyone, because "
            f"{_reason([x.removeprefix('approval: ') for x in r['block_reasons']])}. "
            "Nothing was released."
        )
        return " ".join(out)
    out.append(f"On {r['as_of']} it selected {shown(f.selected)} people.")
    removed = [s for s in f.steps if s.removed]
    if removed:
        parts = "; ".join(f"{s.label.lower()}: {shown(s.removed)}" for s in removed)
        out.append(
            f"The privacy gate removed {shown(count_minus(f.selected, f.eligible))} of them "
            f"({parts}), leaving {shown(f.eligible)}."
        )
    else:
        out.append(f"The privacy gate removed nobody: {shown(f.eligible)} remained.")
    if r["status"] == "blocked":
        out.append(f"The build was blocked: {_reason(r['block_reasons'])}. Nothing was released.")
    else:
        sent = [
            f"{shown(o.released)} to {o.destination} ({o.account})" for o in f.outlets if o.released
        ]
        names = sorted({rel["opaque_name"] for rel in r["releases"]})
        out.append(f"It released {_and(sent)}, under the audience name {_and(names)}.")
    if approval is not None:
        out.append(
            f"The release was allowed by {approval.approver}'s approval of {approval.at} "
            f"(signature {approval.verified})."
        )
    return " ".join(out)


def _reason(reasons: list[str]) -> str:
    return "; ".join(reasons) if reasons else "a rule failed"


def _verdict(v: dict[str, Any]) -> VerdictView:
    kind = v["kind"]
    evidence = tuple(
        Evidence(k, term(kind, k).label, shown(count_of(n)), term(kind, k).explanation)
        for k, n in ordered(kind, v["evidence"])
    )
    return VerdictView(
        id=v["id"],
        rule=kind_label(kind),
        kind=kind,
        destination=v["destination"] or "all destinations",
        severity=v["severity"],
        status=v["status"],
        detail=v["detail"],
        rationale=v["rationale"],
        source=v["source"],
        evidence=evidence,
    )


def jurisdictions(r: dict[str, Any]) -> tuple[JurisdictionView, ...]:
    """The jurisdiction packs' verdicts grouped by jurisdiction: per jurisdiction, the
    people selected there and, per rule that applied, the people it matched. People of
    unknown jurisdiction come last: every jurisdiction rule applies to them. Counts come
    from the verdicts' evidence, so a blocked report's "< k" stays "< k"."""
    from audiences.crm.jurisdiction import UNKNOWN, evidence_suffix

    scoped = [v for v in r["verdicts"] if v.get("jurisdictions")]
    codes = [*dict.fromkeys(c for v in scoped for c in v["jurisdictions"])]
    out = []
    for code in [*codes, UNKNOWN] if scoped else []:
        key = "unknown" if code == UNKNOWN else evidence_suffix(code)
        applied = [v for v in scoped if code == UNKNOWN or code in v["jurisdictions"]]
        rules = tuple(
            JurisdictionRuleView(
                pack=str(v.get("pack") or ""),
                id=v["id"],
                rule=kind_label(v["kind"]),
                removes=GLOSSARY[v["kind"]].removes if v["kind"] in GLOSSARY else "",
                status=v["status"],
                matched=shown(count_of(v["evidence"].get(f"excluded_{key}", 0))),
                source=v["source"],
            )
            for v in applied
        )
        people = shown(count_of(applied[0]["evidence"].get(f"in_{key}", 0)))
        out.append(JurisdictionView(code, jurisdiction_label(code), people, rules))
    return tuple(out)


def _release(r: dict[str, Any], rel: dict[str, Any]) -> ReleaseView:
    name, kind = rel["destination"], rel["kind"]
    export = next((e for e in r.get("record_exports", []) if e.get("destination") == name), None)
    account = str(rel["account"])
    folder = ""
    if kind == "file":  # where its files went (the account is every file destination's)
        written = [f for f in r.get("files_written") or [] if f.get("destination") == name]
        if written:
            folder = f"{Path(str(written[0]['path'])).parent}/"
    held = (
        f"{rel['holds']:,} change(s) held against {rel['hold_against']}"
        if rel.get("hold_against")
        else "none"
    )
    syncs = tuple(
        {k: str(val) for k, val in s.items()}
        for s in r.get("syncs") or []
        if s.get("destination") == name
    )
    return ReleaseView(
        destination=name,
        platform=PLATFORMS.get(kind, kind),
        account=account,
        opaque_name=rel["opaque_name"],
        fields=_fields(kind, rel.get("layouts") or [], export),
        people=int(rel["members"]),
        rows=int(rel["members"]),
        release_id=rel["release_id"],
        folder=folder,
        held=held,
        verdict_digest=rel["verdict_digest"],
        syncs=syncs,
    )


def _fields(kind: str, layouts: list[str], export: dict[str, Any] | None) -> tuple[str, ...]:
    """The identifier fields the release carries (hashed unless marked plain)."""
    if export is not None:
        columns = export.get("columns") or list(export.get("attributes") or {})
        return (*(f"{c} (generalized)" for c in columns), "no identifiers")
    prefix = kind not in ("meta", "google_ads")
    fields = [
        (f"{layout}_{c}" if prefix else c) + (" (plain)" if c in PLAIN_COLUMNS else " (SHA-256)")
        for layout in layouts
        for c in LAYOUTS.get(layout, ())
    ]
    if kind == "google_ads":
        fields += ["ad_user_data (consent signal)", "ad_personalization (consent signal)"]
    return tuple(fields)


def _approval(r: dict[str, Any]) -> ApprovalView | None:
    a = r.get("approval")
    if not isinstance(a, dict):
        return None
    verified = a.get("signature_verified")
    digest = a.get("segment_digest")
    return ApprovalView(
        approver=str(a.get("approver") or "unknown"),
        key_id=str(a.get("key_id") or "unknown"),
        at=str(a.get("at") or "unknown"),
        note=str(a.get("note") or ""),
        verified="not recorded" if verified is None else "verified" if verified else "NOT verified",
        digest_matches=None if digest is None else digest == r["segment"]["digest"],
    )


def _plain_definition(definition: dict[str, Any]) -> Any:
    from audiences.segments.model import Segment

    body = {k: v for k, v in definition.items() if k != "language_version"}
    return Segment.model_validate(body)


def _reading_of(definition: dict[str, Any]) -> str:
    """The reading of a report written before reports carried one."""
    from audiences.segments.reading import reading

    try:
        return reading(_plain_definition(definition))
    except ValueError:
        return ""


def _yaml_of(definition: dict[str, Any]) -> str:
    from audiences.segments.reading import canonical_yaml

    try:
        return canonical_yaml(_plain_definition(definition))
    except ValueError:
        return json.dumps(definition, indent=2, sort_keys=True, ensure_ascii=False)


__all__ = [
    "ApprovalView",
    "Evidence",
    "JurisdictionRuleView",
    "JurisdictionView",
    "ReleaseView",
    "VerdictView",
    "View",
    "build_view",
    "jurisdictions",
]
