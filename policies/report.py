"""Compliance reports: the gate's report document as JSON, Markdown or a self-contained HTML page.

The HTML page has inline CSS only (no scripts, no external resources) so it can be
archived, printed and signed off as is. Every value is escaped with ``html.escape``;
Markdown escapes table pipes and backticks. Figures are exact: the page says so and
that it is confidential.
"""

from __future__ import annotations

import html
import json
from typing import Any, Literal

from audiences.core.errors import UsageError

Format = Literal["json", "md", "html"]
FORMATS: tuple[str, ...] = ("json", "md", "html")


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    if fmt == "md":
        return _markdown(report)
    if fmt == "html":
        return _html(report)
    raise UsageError(f"unknown report format {fmt!r}", f"use one of: {', '.join(FORMATS)}")


def _evidence_text(evidence: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in evidence.items())


def _definition(report: dict[str, Any]) -> str:
    return json.dumps(
        report["segment"].get("definition", {}), indent=2, sort_keys=True, ensure_ascii=False
    )


def _first_per_rule(verdicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first verdict of each rule id, in order: one rationale line per rule."""
    seen: set[str] = set()
    first = []
    for v in verdicts:
        if v["id"] not in seen:
            seen.add(v["id"])
            first.append(v)
    return first


# ---------------------------------------------------------------------------------------
# Markdown


def _md(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`").replace("\n", " ")


def _markdown(r: dict[str, Any]) -> str:
    out = _md_header(r)
    if r["block_reasons"]:
        out += ["## Block reasons", ""] + [f"- {_md(x)}" for x in r["block_reasons"]] + [""]
    out += _md_verdicts(r["verdicts"])
    out += _md_difference_checks(r["difference_checks"])
    out += _md_releases(r["releases"])
    if r["suppression_lists"]:
        out += ["", "## Suppression lists applied", ""]
        out += [
            f"- {_md(s['path'])} ({_md(s['kind'])}, column {_md(s['column'])})"
            for s in r["suppression_lists"]
        ]
    out += _md_definition_and_sign_off(r)
    return "\n".join(out)


def _md_header(r: dict[str, Any]) -> list[str]:
    pack, seg = r["pack"], r["segment"]
    return [
        f"# Compliance report — build {_md(r['build_id'])}",
        "",
        f"> **{_md(r['notice'])}**",
        "",
        f"- Status: **{_md(r['status'].upper())}**",
        f"- As of: {_md(r['as_of'])} · generated {_md(r['generated_at'])} by {_md(r['actor'])}",
        f"- Policy pack: {_md(pack['name'])} v{_md(pack['version'])} ({_md(pack['digest'])})"
        + (f", extends {_md(', '.join(pack['extends']))}" if pack["extends"] else ""),
        f"- Segment: {_md(seg['name'])} ({_md(seg['digest'])}); PHI-derived: "
        f"{'yes' if seg['phi_derived'] else 'no'}",
        f"- Description: {_md(seg.get('description', ''))}",
        f"- Candidates: {r['figures']['candidates']} · eligible after filters: "
        f"{r['figures']['eligible_members']} · without member key: {r['figures']['without_member_key']}",
        "",
    ]


def _md_verdicts(verdicts: list[dict[str, Any]]) -> list[str]:
    out = [
        "## Rule verdicts",
        "",
        "| rule | kind | destination | severity | result | evidence | detail |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        out.append(
            f"| {_md(v['id'])} | {_md(v['kind'])} | {_md(v['destination'] or '—')} | "
            f"{_md(v['severity'])} | **{_md(v['status'].upper())}** | "
            f"{_md(_evidence_text(v['evidence']))} | {_md(v['detail'])} |"
        )
    out += ["", "### Rationale and sources", ""]
    for v in _first_per_rule(verdicts):
        out.append(f"- **{_md(v['id'])}** — {_md(v['rationale'])} *Source:* {_md(v['source'])}")
    return out


def _md_difference_checks(checks: list[dict[str, Any]]) -> list[str]:
    head = ["", "## Difference checks", ""]
    if not checks:
        return [*head, "No earlier releases to the same accounts."]
    out = [
        *head,
        "| destination | account | earlier release | segment | date | added | removed | exempt removals | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        out.append(
            f"| {_md(c['destination'])} | {_md(c['account'])} | {_md(c['release_id'])} | "
            f"{_md(c['segment'])} | {_md(c['created_at'][:10])} | {c['only_new']} | "
            f"{c['only_old']} | {c['exempt_removals']} | {_md(c['result'])} |"
        )
    return out


def _md_releases(releases: list[dict[str, Any]]) -> list[str]:
    head = ["", "## Releases", ""]
    if not releases:
        return [*head, "Nothing was released."]
    out = [
        *head,
        "| destination | kind | account | opaque name | members | release | held changes |",
        "|---|---|---|---|---|---|---|",
    ]
    for rel in releases:
        held = f"{rel['holds']} (vs {rel['hold_against']})" if rel["hold_against"] else "0"
        out.append(
            f"| {_md(rel['destination'])} | {_md(rel['kind'])} | {_md(rel['account'])} | "
            f"`{_md(rel['opaque_name'])}` | {rel['members']} | {_md(rel['release_id'])} | {held} |"
        )
    return out


def _md_definition_and_sign_off(r: dict[str, Any]) -> list[str]:
    return [
        "",
        "## Segment definition",
        "",
        "```json",
        _definition(r).replace("```", "'''"),
        "```",
        "",
        "## Sign-off",
        "",
        _md(r["sign_off"]["statement"]),
        "",
        "- Reviewer: ____________________",
        "- Role: ____________________",
        "- Date: ____________________",
        "- Signature: ____________________",
        "",
    ]


# ---------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:72rem;
color:#1b1f24;line-height:1.45;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;border-bottom:1px solid #d0d7de;
padding-bottom:.2rem;margin-top:2rem}
.notice{background:#fff8c5;border:1px solid #d4a72c;padding:.6rem .8rem;border-radius:4px;font-weight:600}
.status{display:inline-block;padding:.15rem .6rem;border-radius:4px;font-weight:700;color:#fff}
.released{background:#1a7f37}.blocked{background:#cf222e}
table{border-collapse:collapse;width:100%;font-size:.9rem;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1a7f37;font-weight:700}.fail{color:#cf222e;font-weight:700}.warn{color:#9a6700;font-weight:700}
.hold{color:#9a6700;font-weight:700}.block,.error{color:#cf222e;font-weight:700}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85rem}
pre{background:#f6f8fa;padding:.8rem;overflow-x:auto;border:1px solid #d0d7de}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dt{font-weight:600}
.sign{border:2px solid #1b1f24;padding:1rem;margin-top:1rem}
.line{display:inline-block;min-width:18rem;border-bottom:1px solid #1b1f24;height:1.2rem}
.small{font-size:.85rem;color:#57606a}
@media print{body{margin:0}.notice{border-width:2px}}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _row(cells: list[str], classes: list[str] | None = None) -> str:
    classes = classes or [""] * len(cells)
    tds = "".join(
        f'<td class="{c}">{v}</td>' if c else f"<td>{v}</td>"
        for v, c in zip(cells, classes, strict=True)
    )
    return f"<tr>{tds}</tr>"


def _table(head: list[str], rows: list[str]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _html(r: dict[str, Any]) -> str:
    parts = _html_head_and_summary(r)
    if r["block_reasons"]:
        parts.append("<h2>Why the build was blocked</h2><ul>")
        parts += [f"<li>{_e(x)}</li>" for x in r["block_reasons"]]
        parts.append("</ul>")
    parts += _html_verdicts(r["verdicts"])
    parts += _html_difference_checks(r["difference_checks"])
    parts += _html_releases(r["releases"])
    if r["suppression_lists"]:
        parts.append("<h2>Suppression lists applied</h2><ul>")
        parts += [
            f"<li><code>{_e(s['path'])}</code> ({_e(s['kind'])}, column {_e(s['column'])})</li>"
            for s in r["suppression_lists"]
        ]
        parts.append("</ul>")
    parts.append("<h2>Segment definition (canonical)</h2>")
    parts.append(f"<pre>{_e(_definition(r))}</pre>")
    parts.append(_html_sign_off(r))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _html_head_and_summary(r: dict[str, Any]) -> list[str]:
    pack, seg, fig = r["pack"], r["segment"], r["figures"]
    status = r["status"]
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Compliance report — {_e(r['build_id'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<p class="notice">{_e(r["notice"])}</p>',
        f"<h1>Compliance report — build <code>{_e(r['build_id'])}</code></h1>",
        f'<p><span class="status {_e(status)}">{_e(status.upper())}</span></p>',
        "<dl>",
        f"<dt>Segment</dt><dd>{_e(seg['name'])} — {_e(seg.get('description', ''))}</dd>",
        f"<dt>Segment digest</dt><dd><code>{_e(seg['digest'])}</code></dd>",
        f"<dt>PHI-derived</dt><dd>{'yes' if seg['phi_derived'] else 'no'}"
        + _phi_names(seg)
        + "</dd>",
        f"<dt>Policy pack</dt><dd>{_e(pack['name'])} version {_e(pack['version'])}"
        + (f" (extends {_e(', '.join(pack['extends']))})" if pack["extends"] else "")
        + "</dd>",
        f"<dt>Pack digest</dt><dd><code>{_e(pack['digest'])}</code></dd>",
        f"<dt>As of</dt><dd>{_e(r['as_of'])}</dd>",
        f"<dt>Generated</dt><dd>{_e(r['generated_at'])} by {_e(r['actor'])}</dd>",
        f"<dt>Candidates</dt><dd>{_e(fig['candidates'])} selected by the segment; "
        f"{_e(fig['eligible_members'])} eligible after filter rules; "
        f"{_e(fig['without_member_key'])} without a member key (excluded)</dd>",
        "</dl>",
    ]


def _html_verdicts(verdicts: list[dict[str, Any]]) -> list[str]:
    rows = [
        _row(
            [
                _e(v["id"]),
                _e(v["kind"]),
                _e(v["destination"] or "all"),
                _e(v["severity"]),
                _e(v["status"].upper()),
                "<br>".join(f"{_e(k)}: {_e(n)}" for k, n in v["evidence"].items()),
                _e(v["detail"]),
            ],
            ["", "", "", "", _e(v["status"]), "num", ""],
        )
        for v in verdicts
    ]
    rationale = [
        _row([_e(v["id"]), _e(v["rationale"]), _e(v["source"])]) for v in _first_per_rule(verdicts)
    ]
    return [
        "<h2>Rule verdicts</h2>",
        _table(["rule", "kind", "destination", "severity", "result", "evidence", "detail"], rows),
        "<h2>Rationale and sources</h2>",
        _table(["rule", "rationale", "source"], rationale),
    ]


def _html_difference_checks(checks: list[dict[str, Any]]) -> list[str]:
    if not checks:
        return [
            "<h2>Difference checks</h2>",
            "<p>No earlier releases to the same accounts: nothing to compare.</p>",
        ]
    rows = [
        _row(
            [
                _e(c["destination"]),
                _e(c["account"]),
                f"<code>{_e(c['release_id'])}</code>",
                _e(c["segment"]),
                _e(str(c["created_at"])[:10]),
                _e(c["members"]),
                _e(c["only_new"]),
                _e(c["only_old"]),
                _e(c["exempt_removals"]),
                _e(c["result"]),
            ],
            ["", "", "", "", "", "num", "num", "num", "num", _e(c["result"])],
        )
        for c in checks
    ]
    head = [
        "destination",
        "account",
        "earlier release",
        "segment",
        "date",
        "its members",
        "added",
        "removed",
        "exempt removals",
        "result",
    ]
    return ["<h2>Difference checks</h2>", _table(head, rows)]


def _html_releases(releases: list[dict[str, Any]]) -> list[str]:
    if not releases:
        return ["<h2>What was released where</h2>", "<p>Nothing was released.</p>"]
    rows = [
        _row(
            [
                _e(rel["destination"]),
                _e(rel["kind"]),
                _e(rel["account"]),
                f"<code>{_e(rel['opaque_name'])}</code>",
                _e(rel["members"]),
                f"<code>{_e(rel['release_id'])}</code>",
                _e(f"{rel['holds']} vs {rel['hold_against']}" if rel["hold_against"] else "0"),
                f"<code>{_e(rel['verdict_digest'])}</code>",
            ],
            ["", "", "", "", "num", "", "", ""],
        )
        for rel in releases
    ]
    head = [
        "destination",
        "kind",
        "account",
        "name sent",
        "members",
        "release",
        "held changes",
        "verdict digest",
    ]
    return ["<h2>What was released where</h2>", _table(head, rows)]


def _html_sign_off(r: dict[str, Any]) -> str:
    return (
        '<h2>Sign-off</h2><div class="sign">'
        f"<p>{_e(r['sign_off']['statement'])}</p>"
        '<p>Reviewer: <span class="line"></span></p>'
        '<p>Role: <span class="line"></span></p>'
        '<p>Date: <span class="line"></span></p>'
        '<p>Signature: <span class="line"></span></p>'
        f'<p class="small">Build {_e(r["build_id"])} · pack digest {_e(r["pack"]["digest"])} · '
        f"segment digest {_e(r['segment']['digest'])}</p></div>"
    )


def _phi_names(seg: dict[str, Any]) -> str:
    names = [
        *seg.get("columns", []),
        *seg.get("derived_fields", []),
        *(f"event type {t}" for t in seg.get("event_types", [])),
        *(f"event column {c}" for c in seg.get("event_columns", [])),
    ]
    return f" (reaches {_e(', '.join(names))})" if names else ""


__all__ = ["FORMATS", "render"]
