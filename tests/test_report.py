"""Compliance reports: JSON / Markdown / self-contained HTML, escaped, no raw PII."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from conftest import frozen_clock

from audiences.core.config import ProjectConfig
from audiences.core.errors import UsageError
from audiences.core.state import connect, transaction
from audiences.crm.identifiers import member_key
from audiences.segments import parse_segment
from policies.gate import GateInput, evaluate, record
from policies.pack import load_pack
from policies.report import render

AS_OF = dt.date(2025, 6, 1)


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


def config(root: Path) -> ProjectConfig:
    return ProjectConfig.model_validate(
        {
            "sources": {"contacts": {"path": "c.csv"}},
            "identity": {"external_id": "contact_id", "email": "email"},
            "consent": {"marketing_opt_in": "opt_in"},
            "destinations": {"meta": {"kind": "meta", "ad_account_id": "act_9"}},
        }
    ).model_copy(update={"root": root})


def candidates(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "contact_id": [f"C{i:05d}" for i in range(n)],
            "email": [f"secret.person{i}@example.com" for i in range(n)],
            "opt_in": [i % 10 != 0 for i in range(n)],
            "zip": ["10001"] * n,
            "age": pl.Series([40] * n, dtype=pl.Int32),
        }
    ).with_columns(member_key("contact_id", b"r" * 32))


SEGMENT = parse_segment(
    "name: ny-newsletter\n"
    "description: 'Readers <script>alert(1)</script> & friends | pipes'\n"
    "destinations: [meta]\nwhere:\n  zip: {eq: '10001'}\n"
)


@pytest.fixture
def outcomes(tmp_path):
    conn = connect(tmp_path / ".audiences" / "state.db")
    cfg = config(tmp_path)
    pack = load_pack(cfg)
    out = []
    for i, n in enumerate((300, 305)):
        build_id = f"b{i}"
        with transaction(conn):
            conn.execute(
                "INSERT INTO builds(build_id, segment, segment_digest, as_of, started_at, status, "
                "actor) VALUES (?,?,?,?,?,?,?)",
                (build_id, SEGMENT.name, SEGMENT.digest, AS_OF.isoformat(), "t", "running", "me"),
            )
        o = evaluate(
            GateInput(
                build_id,
                SEGMENT,
                cfg,
                pack,
                candidates(n),
                ["meta"],
                AS_OF,
                conn,
                tmp_path / ".audiences",
                "me",
            )
        )
        record(o, conn)
        out.append(o)
    yield out
    conn.close()


def test_json_round_trips_and_holds_exact_figures(outcomes):
    doc = json.loads(render(outcomes[1].report, "json"))
    assert doc["figures"]["candidates"] == 305
    consent = next(v for v in doc["verdicts"] if v["id"] == "consent")
    assert consent["evidence"]["no_opt_in"] == 31  # exact, not noised
    assert doc["releases"][0]["members"] == 274
    assert doc["difference_checks"][0]["release_id"] == outcomes[0].releases["meta"].release_id
    assert doc["pack"]["digest"].startswith("sha256:")
    assert doc["segment"]["definition"]["name"] == "ny-newsletter"


@pytest.mark.parametrize("fmt", ["json", "md", "html"])
def test_no_raw_pii_in_any_format(outcomes, fmt):
    text = render(outcomes[1].report, fmt)
    assert "secret.person" not in text and "example.com" not in text
    assert "C00001" not in text  # CRM ids neither


def test_html_is_self_contained_escaped_and_signable(outcomes):
    page = render(outcomes[1].report, "html")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for external in ("http://", "https://", "src=", "<link", "@import"):
        assert external not in page
    report = outcomes[1].report
    for needle in (
        report["pack"]["digest"],
        report["segment"]["digest"],
        "hipaa" if "hipaa" in report["pack"]["name"] else report["pack"]["name"],
        "exact",
        "CONFIDENTIAL",
        "Sign-off",
        "Reviewer",
        outcomes[0].releases["meta"].release_id,
        outcomes[1].releases["meta"].opaque_name,
        "act_9",
    ):
        assert needle in page
    for v in report["verdicts"]:
        assert v["source"].split()[0] in page


def test_markdown_escapes_table_pipes(outcomes):
    md = render(outcomes[1].report, "md")
    assert md.startswith("# Compliance report")
    assert "friends \\| pipes" in md
    assert "## Difference checks" in md and "## Sign-off" in md


def test_blocked_report_lists_reasons(tmp_path):
    conn = connect(tmp_path / "s.db")
    cfg = config(tmp_path)
    with transaction(conn):
        conn.execute(
            "INSERT INTO builds(build_id, segment, segment_digest, as_of, started_at, status, actor) "
            "VALUES ('b','s','d','2025-06-01','t','running','me')"
        )
    o = evaluate(
        GateInput(
            "b", SEGMENT, cfg, load_pack(cfg), candidates(20), ["meta"], AS_OF, conn, tmp_path, "me"
        )
    )
    page = render(o.report, "html")
    assert "BLOCKED" in page and "Why the build was blocked" in page
    assert "Nothing was released" in page
    assert "min-size [meta]" in render(o.report, "md")
    conn.close()


def test_unknown_format_is_a_usage_error(outcomes):
    with pytest.raises(
        UsageError, match="unknown report format 'pdf' — use one of: json, md, html"
    ):
        render(outcomes[0].report, "pdf")
