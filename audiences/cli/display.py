"""Human-readable tables for the terminal (rich, on stderr-friendly consoles)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

COARSE_NOTE = (
    "people counts are coarse (below k shown as '< k', others as a range); "
    "exact figures are in the compliance reports"
)


def _figure(value: object) -> str:
    """A people count as the marketer view carries it (already coarse), or '-'."""
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        raise TypeError("display got an exact people count; pass it through coarsen() first")
    return str(value)


def console() -> Console:
    import sys

    # Pipes and cron mail get a wide page rather than rich's 80-column default.
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def print_builds(results: list[Any]) -> None:
    table = Table(title="Builds", title_justify="left")
    table.add_column("segment")
    table.add_column("status")
    table.add_column("released to")
    table.add_column("people (noisy, 95% interval)")
    table.add_column("build id")
    table.add_column("seconds", justify="right")
    for r in results:
        status = "[green]released[/]" if not r.blocked else "[red]blocked[/]"
        dests = ", ".join(sorted(r.released)) or "-"
        size = "-"
        if r.noisy_members and "value" in r.noisy_members:
            low, high = r.noisy_members["ci95"]
            size = f"~{r.noisy_members['value']:,} ({low:,}–{high:,})"
        elif r.noisy_members:
            size = "withheld"
        table.add_row(r.segment, status, dests, size, r.build_id, f"{r.seconds:.2f}")
    out = console()
    out.print(table)
    for r in results:
        for reason in r.reasons:
            out.print(f"[red]blocked[/] {escape(r.segment)}: {escape(reason)}", highlight=False)
        if r.reports:
            out.print(f"report: {r.reports.get('html')}", highlight=False)


def _table(title: str, columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column[:1].isdigit() else "left")
    return table


def print_preview(doc: dict[str, Any]) -> None:
    out = console()
    count = doc["count"]
    out.print(
        f"[bold]{doc['segment']}[/]: about {count['value']:,} people "
        f"(95% interval {count['ci95'][0]:,}–{count['ci95'][1]:,}; ε={doc['epsilon']})",
        highlight=False,
    )
    for name, rows in doc["breakdowns"].items():
        table = _table(f"by {name}", [name, "people (noisy)", "95% interval"])
        for row in rows:
            if row.get("below_threshold"):
                # indistinguishable from noise: a bound, not a number
                table.add_row(str(row["key"]), f"< {row['threshold']:,}", "")
                continue
            table.add_row(
                str(row["key"]), f"{row['count']:,}", f"{row['ci95'][0]:,}–{row['ci95'][1]:,}"
            )
        out.print(table)
    looks = doc.get("looks_remaining")
    more = (
        f" ({looks} more preview(s) at ε={doc['default_epsilon']:g})" if looks is not None else ""
    )
    out.print(
        f"budget left: ε={doc['budget_remaining']['epsilon']:.3g}{more}; "
        f"renews: {doc['budget_renews']}",
        highlight=False,
    )
    if any(r.get("below_threshold") for rows in doc["breakdowns"].values() for r in rows):
        out.print("[dim]< N: fewer than N people (the cell is within the noise)[/]")
    out.print(f"[dim]{doc['note']}[/]")


def print_columns(doc: dict[str, Any]) -> None:
    out = console()
    for name, source in doc["sources"].items():
        table = _table(
            f"{name} ({source['path']})",
            [
                "column",
                "declared",
                "inferred",
                "empty",
                "distinct",
                "role",
                f"values (≥ {doc['k']} rows)",
            ],
        )
        for c in source["columns"]:
            declared = c["declared"] or "-"
            if c.get("format"):
                declared += f" ({c['format']})"
            values = "-"
            if "values" in c:
                values = ", ".join(c["values"]) or "(none that common)"
                if c["rarer_values"]:
                    values += f" + {c['rarer_values']} rarer"
            table.add_row(
                escape(c["name"]), declared, c["inferred"], f"{c['null_share']:.0%}",
                f"{c['distinct']:,}", c["role"], escape(values),
            )  # fmt: skip
        out.print(table)
        for layout, outcomes in source.get("identifiers", {}).items():
            table = _table(
                f"{name}: identifiers as {layout} would receive them",
                ["identifier", "outcome", "why", "records"],
            )
            for o in outcomes:
                rows = o["rows"] if isinstance(o["rows"], str) else f"{o['rows']:,}"
                table.add_row(o["field"], o["status"], o["reason"] or "-", rows)
            out.print(table)


def print_proposal(doc: dict[str, Any]) -> None:
    """What ``init --from`` mapped, declared and left to the user (column names only)."""
    out = console()
    table = _table(f"contacts ({doc['contacts']['rows']:,} rows)", ["column", "proposed as"])
    table.add_row(escape(doc["contact_id"]), "contact id")
    for role, column in doc["identity"].items():
        if role != "external_id":
            table.add_row(escape(column), f"identity {role}")
    for role, column in doc["consent"].items():
        table.add_row(escape(column), f"consent {role}")
    for column, spec in doc["types"].get("contacts", {}).items():
        table.add_row(escape(column), " ".join(spec.values()))
    for column in doc["unclassified"]:
        table.add_row(escape(column), "TODO: sensitive or not_sensitive?")
    out.print(table)
    if doc["events"]:
        roles = ", ".join(f"{k} = {escape(v)}" for k, v in doc["event_roles"].items())
        out.print(f"events ({doc['events']['rows']:,} rows): {roles}")
        if doc["event_types_to_classify"]:
            types = ", ".join(escape(t) for t in doc["event_types_to_classify"])
            out.print(f"  TODO: classify event types {types}")
        for column in doc["event_columns_to_classify"]:
            out.print(f"  TODO: classify event column {escape(column)}")
    for note in doc["not_mapped"]:
        out.print(f"not mapped: {escape(note)}")


def print_overlap(doc: dict[str, Any]) -> None:
    segments = doc["segments"]
    table = _table("Overlap (noisy people counts)", ["segment", *segments])
    for row in doc["matrix"]:
        table.add_row(row["segment"], *[f"{row[s]:,}" for s in segments])
    out = console()
    out.print(table)
    ci = doc["ci95_half_width"]
    out.print(
        f"95% half-width: sizes ±{ci['sizes']:,}, overlaps ±{ci['overlaps']:,}; "
        f"ε={doc['epsilon']}; budget left ε={doc['budget_remaining']['epsilon']:.3g}",
        highlight=False,
    )


def print_budget(doc: dict[str, Any]) -> None:
    policy = doc["policy"]
    out = console()
    out.print(
        f"budget: ε={policy['epsilon_per_period']} per {policy['period']} "
        f"(max ε={policy['max_epsilon_per_query']} per query); remaining for the current data: "
        f"ε={doc['remaining']['epsilon']:.3g}; renews: {doc['renews']}",
        highlight=False,
    )
    if doc["cap"]["epsilon"] < policy["epsilon_per_period"]:
        out.print(
            f"in force for the current data: ε={doc['cap']['epsilon']:g} per {policy['period']} "
            "(spends made under a smaller budget bound this data and this period)",
            highlight=False,
        )
    table = _table("Ledger", ["at", "period", "ε", "query", "actor"])
    for e in doc["entries"]:
        table.add_row(e["at"], e["period"], f"{e['epsilon']:.3g}", e["query"], e["actor"])
    out.print(table)


def print_plans(doc: dict[str, Any]) -> None:
    table = _table(
        "Plan (nothing has been sent)",
        ["segment", "destination", "adds", "removes", "held", "audience"],
    )
    for p in doc["plans"]:
        table.add_row(
            p["segment"],
            p["destination"],
            _figure(p["adds"]),
            _figure(p["removes"]),
            _figure(p["held"]),
            p["audience"] or "(new)",
        )
    out = console()
    out.print(table)
    for p in doc["plans"]:
        if p.get("replace"):
            what = f"{p['segment']} → {p['destination']}: replaced in full ({p['replace']})"
            out.print(what, highlight=False, markup=False)
    out.print(f"[dim]{COARSE_NOTE}[/]")
    for b in doc["blocked"]:
        for reason in b["reasons"]:
            out.print(f"[red]blocked[/] {escape(b['segment'])}: {escape(reason)}", highlight=False)


def print_syncs(doc: dict[str, Any]) -> None:
    table = _table(
        "Sync",
        ["segment", "destination", "status", "adds", "removes", "held", "invalid", "match rate"],
    )
    colours = {"ok": "green", "failed": "red", "blocked": "yellow", "skipped": "dim"}
    for r in doc["results"]:
        rate = "-" if r["match_rate"] is None else f"{r['match_rate']:.1%}"
        table.add_row(
            r["segment"],
            r["destination"],
            f"[{colours.get(r['status'], 'white')}]{r['status']}[/]",
            _figure(r["adds"]),
            _figure(r["removes"]),
            _figure(r["held"]),
            _figure(r["invalid"]),
            rate,
        )
    out = console()
    out.print(table)
    out.print(f"[dim]{COARSE_NOTE}[/]")
    for r in doc["results"]:
        if r["error"]:
            out.print(
                f"{r['segment']} → {r['destination']}: {r['error']}", highlight=False, markup=False
            )
        elif r.get("replaced") and r["status"] == "ok":
            out.print(
                f"{r['segment']} → {r['destination']}: replaced in full ({r['replaced']})",
                highlight=False,
                markup=False,
            )
        if r.get("membership_unknown_any"):
            out.print(
                f"{r['segment']} → {r['destination']}: the platform took "
                f"{_figure(r['membership_unknown'])} people only in part without saying which "
                "it refused; they are sent again on the next sync",
                highlight=False,
                markup=False,
            )
    if doc.get("audit_head"):
        head = doc["audit_head"]
        out.print(f"audit head {head['seq']}:{head['hash']}", highlight=False)


def print_status(rows: list[dict[str, Any]]) -> None:
    table = _table(
        "Status",
        [
            "segment",
            "destination",
            "last build",
            "last sync",
            "members",
            "adds",
            "removes",
            "held",
            "match rate",
            "last error",
        ],
    )
    for r in rows:
        rate = "-" if r["match_rate"] is None else f"{r['match_rate']:.1%}"
        table.add_row(
            r["segment"],
            r["destination"],
            f"{r['build_status'] or '-'} {(r['built_at'] or '')[:16]}",
            f"{r['sync_status'] or '-'} {(r['synced_at'] or '')[:16]}",
            _figure(r["members"]),
            _figure(r["adds"]),
            _figure(r["removes"]),
            _figure(r["holds"]),
            rate,
            (r["error"] or "")[:60],
        )
    out = console()
    out.print(table)
    out.print(f"[dim]{COARSE_NOTE}[/]")


def print_history(doc: dict[str, Any]) -> None:
    out = console()
    builds = _table(f"Builds of {doc['segment']}", ["build id", "started", "status", "why"])
    for b in doc["builds"]:
        builds.add_row(
            b["build_id"], b["started_at"][:19], b["status"], escape("; ".join(b["reasons"]))
        )
    out.print(builds)
    syncs = _table(
        "Syncs", ["sync id", "destination", "started", "status", "adds", "removes", "held", "error"]
    )
    for s in doc["syncs"]:
        syncs.add_row(
            s["sync_id"],
            s["destination"],
            s["started_at"][:19],
            s["status"],
            _figure(s["adds"]),
            _figure(s["removes"]),
            _figure(s["holds"]),
            s["error"] or "",
        )
    out.print(syncs)
    out.print(f"[dim]{COARSE_NOTE}[/]")
