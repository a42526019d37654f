"""Compliance reports: JSON / Markdown / self-contained HTML, escaped, no raw PII."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import markupsafe
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
            "email": [f"secret.person{i}@clinic.com" for i in range(n)],
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
    assert "secret.person" not in text and "clinic.com" not in text
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
        "Filing review",
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
    assert "min-size \\[meta\\]" in render(o.report, "md")
    conn.close()


def test_unknown_format_is_a_usage_error(outcomes):
    with pytest.raises(
        UsageError, match="unknown report format 'pdf' — use one of: json, md, html"
    ):
        render(outcomes[0].report, "pdf")


# ---------------------------------------------------------------------------------------
# The report a privacy officer reads (issue #20): first screen, definition, evidence,
# releases, sign-off, templates.

APPROVAL = {
    "id": 7,
    "approver": "dana.compliance",
    "key_id": "9f86d081884c7d65",
    "at": "2025-05-30T09:12:00Z",
    "note": "reviewed with legal, ticket COMP-142",
    "signature_verified": True,
}


def approval_blocked_report(tmp_path: Path, segment=SEGMENT) -> dict:
    from policies.gate import approval_block_report

    cfg = config(tmp_path)
    return approval_block_report(
        build_id="b-approval",
        segment=segment,
        config=cfg,
        pack=load_pack(cfg),
        as_of=AS_OF,
        actor="root",
        reason=f"segment '{segment.name}' is not approved",
        record_exports={},
    )


def blocked_report(tmp_path: Path) -> dict:
    conn = connect(tmp_path / "s.db")
    cfg = config(tmp_path)
    o = evaluate(
        GateInput(
            "b", SEGMENT, cfg, load_pack(cfg), candidates(20), ["meta"], AS_OF, conn, tmp_path, "me"
        )
    )
    conn.close()
    return o.report


def jurisdiction_report(root: Path) -> dict:
    """A build under every jurisdiction pack (their rule kinds and per-jurisdiction evidence)."""
    consent = ("share_health_data", "explicit_health_marketing", "limit_sensitive_pi")
    cfg = config(root).model_copy(
        update={
            "identity": config(root).identity.model_copy(update={"state": "state"}),
            "consent": config(root).consent.model_copy(
                update={
                    **dict.fromkeys(consent, "opt_in"),
                    "opt_out_of_sharing": "dnc",
                    "ad_user_data": "opt_in",
                    "ad_personalization": "opt_in",
                }
            ),
            "policy": config(root).policy.model_copy(
                update={"packs": ["baseline", "wa-mhmda", "gdpr-health", "ccpa-sensitive"]}
            ),
        }
    )
    frame = candidates(150).with_columns(
        pl.Series("state", ["WA", "CA", None] * 50), pl.lit(False).alias("dnc")
    )
    conn = connect(root / "s.db")
    o = evaluate(
        GateInput("bj", SEGMENT, cfg, load_pack(cfg), frame, ["meta"], AS_OF, conn, root, "me")
    )
    conn.close()
    return o.report


@pytest.fixture
def three(outcomes, tmp_path) -> dict[str, dict]:
    released = {**outcomes[1].report, "approval": {**APPROVAL, "segment_digest": SEGMENT.digest}}
    return {
        "released": released,
        "blocked": blocked_report(tmp_path / "blocked"),
        "approval": approval_blocked_report(tmp_path),
    }


@pytest.mark.parametrize("which", ["released", "blocked", "approval"])
@pytest.mark.parametrize("fmt", ["html", "md"])
def test_three_reports_carry_every_section(three, which, fmt):
    from policies.report.funnel import funnel, shown
    from policies.report.view import build_view

    report = three[which]
    text = render(report, fmt)
    view = build_view(report)
    f = funnel(report)
    if f.exact:
        assert f.adds_up
        assert f.selected - sum(s.removed for s in f.steps) == f.eligible
    else:  # a blocked build's report shows no exact count below k: its figures are coarse
        assert which == "blocked" and set(report["figures"].values()) == {"< 100"}
        assert not any(b.kept or b.removed for b in view.chart.bars)  # no bar lengths
    # the paragraph, the reading and the YAML as written
    first = view.paragraph.split(" On ")[0]
    assert (str(markupsafe.escape(first)) if fmt == "html" else md_plain(first)) in text
    assert "Readers" in view.reading or "living in" in view.reading
    yaml_line = "  zip: {eq: '10001'}"
    assert (str(markupsafe.escape(yaml_line)) if fmt == "html" else yaml_line) in text
    assert report["segment"]["yaml"].splitlines()[0] in text
    # the funnel with its exact counts (a blocked build's: its coarse figures, as text)
    for figure in (shown(f.selected), shown(f.eligible)):
        assert (str(markupsafe.escape(figure)) if fmt == "html" else md_plain(figure)) in text
    if fmt == "html":
        assert "<svg" in text and 'data-section="funnel"' in text
    # the release table, or the statement that nothing left
    if which == "released":
        assert "act_9" in text or "act\\_9" in text
        assert "EMAIL (SHA-256)" in text and "aud-" in text
        assert "dana.compliance" in text and "9f86d081884c7d65" in text
        assert "signature verified" in text and "ticket COMP-142" in text
        assert "approves exactly this definition" in text
    else:
        assert "Nothing was released" in text
    if which == "approval":
        assert "audiences approve ny-newsletter --by NAME --key PATH" in text


def md_plain(text: str) -> str:
    from policies.report import md_escape

    return str(md_escape(text))


def test_released_paragraph_says_what_who_where_and_whose_approval(three):
    from policies.report.view import build_view

    p = build_view(three["released"]).paragraph
    assert p.startswith("The segment “ny-newsletter” selects people living in 10001.")
    assert "it selected 305 people" in p
    assert "The privacy gate removed 31 of them (no marketing consent or opted out: 31)" in p
    assert "leaving 274" in p and "274 to meta (act_9)" in p
    assert "dana.compliance's approval of 2025-05-30T09:12:00Z (signature verified)" in p


def test_funnel_reasons_and_steps_follow_the_rules(three):
    from policies.report.funnel import funnel

    f = funnel(three["released"])
    consent = f.steps[0]
    assert (consent.rule, consent.removed, consent.remaining) == ("consent", 31, 274)
    assert ("No marketing opt-in", 31) in consent.reasons
    assert [o.released for o in f.outlets] == [274]
    blocked = funnel(three["blocked"])
    assert [(o.released, o.withheld) for o in blocked.outlets] == [(0, blocked.eligible)]
    stopped = funnel(three["approval"])
    assert stopped.stopped_early and stopped.selected == stopped.eligible == 0


def test_hostile_description_is_escaped_in_html_and_literal_in_markdown(tmp_path):
    segment = parse_segment(
        "name: hostile\n"
        "description: '<script>alert(1)</script> {{ 7*7 }} {% if x %}'\n"
        "destinations: [meta]\nwhere:\n  zip: {eq: '10001'}\n"
    )
    report = approval_blocked_report(tmp_path, segment)
    page = render(report, "html")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; {{ 7*7 }} {% if x %}" in page
    md = render(report, "md")
    assert "\\<script\\>alert(1)\\</script\\> {{ 7\\*7 }} {% if x %}" in md
    # outside code blocks (where the YAML shows it verbatim) no raw tag reaches a renderer
    assert "<script>" not in re.sub(r"(?ms)^```.*?^```", "", md)


def test_every_rule_kind_and_evidence_key_has_a_glossary_entry(outcomes, tmp_path):
    from policies.report.glossary import GATE_KINDS, GLOSSARY
    from policies.rules import RULE_KINDS

    assert set(RULE_KINDS) | GATE_KINDS <= set(GLOSSARY), "add the rule kind to the glossary"
    reports = [o.report for o in outcomes] + [blocked_report(tmp_path)]
    reports.append(jurisdiction_report(tmp_path / "jurisdictions"))
    seen = {(v["kind"], k) for r in reports for v in r["verdicts"] for k in v["evidence"]}
    assert {kind for kind, _ in seen} >= set(RULE_KINDS)  # the run covered every kind
    missing = sorted((kind, key) for kind, key in seen if key not in GLOSSARY[kind].terms)
    assert not missing, f"evidence keys without a label and explanation: {missing}"
    for entry in GLOSSARY.values():
        for t in entry.terms.values():
            assert t.label and t.explanation and "\n" not in t.explanation


def test_evidence_is_labelled_and_explained(outcomes):
    page = render(outcomes[1].report, "html")
    assert "Removals that need no protection" in page and "exempt_removals" not in page
    assert "Pack minimum" in page and "pack_k" not in page
    assert "Small changes held back" in page and "held_comparisons" not in page
    assert "Matched by this rule" in page and "Removed at this step" in page
    assert "Segment definition (canonical)" not in page


def test_operator_names_the_builder_and_the_os_user_is_the_fallback(tmp_path, outcomes):
    report = outcomes[1].report
    assert report["operator"] is None
    assert "set <code>[project] operator</code>" in render(report, "html")
    named = {**report, "operator": "Marketing ops <J. Doe>"}
    page = render(named, "html")
    assert "Marketing ops &lt;J. Doe&gt;" in page and "[project] operator" not in page
    cfg = ProjectConfig.model_validate(
        {
            "project": {"operator": "J. Doe"},
            "sources": {"contacts": {"path": "c.csv"}},
            "identity": {"email": "email"},
        }
    )
    assert cfg.project.operator == "J. Doe"


def test_yaml_is_the_file_as_written_while_it_still_matches(tmp_path):
    from audiences.segments import load_segment
    from audiences.segments.reading import definition_yaml

    text = (
        "# approved 2025-05 by dana\nname: cardiology-lapsed\ndestinations: [meta]\nwhere:\n"
        "  all:\n    - age: {between: [50, 75]}\n    - state: {in: [NY, NJ]}\n"
        "    - event:\n        type: visit\n        where: {department: {eq: cardiology}}\n"
        "        count: {gte: 1}\n        within: 730d\n"
        "    - not:\n        event: {type: appointment, ahead: 90d}\n"
    )
    path = tmp_path / "cardiology-lapsed.yaml"
    path.write_text(text, encoding="utf-8")
    segment = load_segment(path)
    assert definition_yaml(segment) == (text, "file")
    path.write_text(text.replace("75", "80"), encoding="utf-8")  # edited since it was loaded
    canonical, origin = definition_yaml(segment)
    assert origin == "canonical" and "# approved" not in canonical
    assert parse_segment(canonical).digest == segment.digest


def test_reading_of_the_docs_example():
    from audiences.segments.reading import reading

    segment = parse_segment(
        "name: cardiology-lapsed\nwhere:\n  all:\n    - age: {between: [50, 75]}\n"
        "    - state: {in: [NY, NJ]}\n    - event:\n        type: visit\n"
        "        where: {department: {eq: cardiology}}\n        within: 730d\n"
        "    - not:\n        event: {type: appointment, ahead: 90d}\n"
    )
    assert reading(segment) == (
        "Adults 50–75 living in NJ or NY, with at least one cardiology visit in the last "
        "730 days, and with no appointment in the next 90 days."
    )
    other = parse_segment(
        "name: x\nwhere:\n  any:\n    - days_since_last_visit: {gt: 18mo}\n"
        "    - diagnosis_codes: {in: [E11*, I25*]}\nexclude:\n  do_not_mail: {eq: true}\n"
    )
    assert reading(other) == (
        "People either whose last visit was more than 540 days ago or whose diagnosis codes "
        "is codes starting E11 or codes starting I25, excluding anyone whose do not mail is yes."
    )


def custom_templates(tmp_path: Path, body: str) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir(parents=True)
    (folder / "report.html.j2").write_text(body, encoding="utf-8")
    return folder


def test_an_organisations_template_is_used_and_must_keep_every_section(outcomes, tmp_path):
    from audiences.core.errors import ConfigError
    from policies.report import REQUIRED_SECTIONS

    report = outcomes[1].report
    sections = "".join(f'<div data-section="{s}"></div>' for s in REQUIRED_SECTIONS)
    ok = custom_templates(
        tmp_path / "ok",
        "<p>St. Example Hospital {{ v.report.segment.name }}</p>"
        + sections
        + '{% include "funnel.html.j2" %}',
    )
    page = render(report, "html", templates=ok)
    assert "St. Example Hospital ny-newsletter" in page and "<svg" in page
    # the setting travels in the report document from [report] templates
    assert "St. Example Hospital" in render({**report, "report_templates": str(ok)}, "html")
    short = custom_templates(tmp_path / "short", sections.replace("sign-off", "signature"))
    with pytest.raises(ConfigError, match="lacks required section\\(s\\): sign-off"):
        render(report, "html", templates=short)
    broken = custom_templates(tmp_path / "broken", "{% if %}")
    with pytest.raises(ConfigError, match=r"report template .*report\.html\.j2 failed"):
        render(report, "html", templates=broken)
    with pytest.raises(ConfigError, match="does not exist"):
        render(report, "html", templates=tmp_path / "nowhere")


def test_compiled_templates_are_kept_but_an_edited_or_removed_one_is_read_again(outcomes, tmp_path):
    """The environments are kept per process (``build --all`` compiles the templates
    once): an organisation's template edited between two renders, or its folder
    removed, is what the second render goes by."""
    import os
    import shutil

    from audiences.core.errors import ConfigError
    from policies.report import REQUIRED_SECTIONS

    report = outcomes[1].report
    sections = "".join(f'<div data-section="{s}"></div>' for s in REQUIRED_SECTIONS)
    folder = custom_templates(tmp_path, "<p>first</p>" + sections)
    assert "<p>first</p>" in render(report, "html", templates=folder)
    template = folder / "report.html.j2"
    mtime = template.stat().st_mtime_ns
    template.write_text("<p>second</p>" + sections, encoding="utf-8")
    os.utime(template, ns=(mtime + 1_000_000_000, mtime + 1_000_000_000))
    assert "<p>second</p>" in render(report, "html", templates=folder)
    template.write_text("{% if %}", encoding="utf-8")
    os.utime(template, ns=(mtime + 2_000_000_000, mtime + 2_000_000_000))
    with pytest.raises(ConfigError, match=r"report template .*report\.html\.j2 failed"):
        render(report, "html", templates=folder)
    shutil.rmtree(folder)
    with pytest.raises(ConfigError, match="does not exist"):
        render(report, "html", templates=folder)


def test_report_templates_setting_reaches_the_report(tmp_path):
    cfg = ProjectConfig.model_validate(
        {
            "sources": {"contacts": {"path": "c.csv"}},
            "identity": {"email": "email"},
            "consent": {"marketing_opt_in": "opt_in"},
            "report": {"templates": "branding"},
        }
    ).model_copy(update={"root": tmp_path})
    from policies.gate import approval_block_report

    report = approval_block_report(
        build_id="b",
        segment=SEGMENT,
        config=cfg,
        pack=load_pack(cfg),
        as_of=AS_OF,
        actor="me",
        reason="not approved",
        record_exports={},
    )
    assert report["report_templates"] == str(tmp_path / "branding")


def test_print_stylesheet_has_page_headers_and_numbers(outcomes):
    page = render(outcomes[1].report, "html")
    assert "@page" in page and "counter(page)" in page and "counter(pages)" in page
    assert "@top-left" in page and "ny\\2d newsletter" not in page
    assert '"Compliance report · ny-newsletter · build b1"' in page
    assert "break-inside:avoid" in page and "thead{display:table-header-group}" in page


def test_css_string_cannot_break_out_of_the_style():
    from policies.report import css_string

    assert str(css_string('a"</style><script>')) == '"a\\22 \\3c \\2f style\\3e \\3c script\\3e "'


# ---------------------------------------------------------------------------------------
# The funnel adds up for any gate outcome

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PERSON = st.tuples(
    st.booleans(),  # opted in
    st.booleans(),  # do not contact
    st.one_of(st.none(), st.integers(10, 90)),  # age
    st.one_of(st.none(), st.integers(0, 40)),  # external id (None: no member key; shared: dupes)
)


def random_candidates(people: list[tuple[bool, bool, int | None, int | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "contact_id": [None if e is None else f"C{e:05d}" for *_, e in people],
            "email": [f"p{i}@clinic.com" for i in range(len(people))],
            "opt_in": [p[0] for p in people],
            "dnc": [p[1] for p in people],
            "zip": ["10001"] * len(people),
            "age": pl.Series([p[2] for p in people], dtype=pl.Int32),
        },
        schema_overrides={"contact_id": pl.String},
    ).with_columns(member_key("contact_id", b"r" * 32))


def small_minimums(pack, k: int):
    import dataclasses

    def small(rule):
        if rule.kind == "min_size":
            params = rule.params.model_copy(
                update={"k": k, "platform_minimums": {}, "destination_minimums": {}}
            )
            return dataclasses.replace(rule, params=params)
        if rule.kind == "difference":
            return dataclasses.replace(rule, params=rule.params.model_copy(update={"k_diff": k}))
        return rule

    return dataclasses.replace(pack, rules=tuple(small(r) for r in pack.rules))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(people=st.lists(PERSON, max_size=60), k=st.integers(2, 30))
def test_funnel_counts_add_up_for_random_gate_outcomes(tmp_path_factory, people, k):
    import tempfile

    from policies.report.funnel import chart, funnel

    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as folder:
        root = Path(folder)
        cfg = ProjectConfig.model_validate(
            {
                "sources": {"contacts": {"path": "c.csv"}},
                "identity": {"external_id": "contact_id", "email": "email"},
                "consent": {"marketing_opt_in": "opt_in", "do_not_contact": "dnc"},
                "destinations": {
                    "meta": {"kind": "meta", "ad_account_id": "act_9"},
                    "file": {"kind": "file", "path": "exports"},
                },
            }
        ).model_copy(update={"root": root})
        pack = small_minimums(load_pack(cfg), k)  # so that some outcomes release
        conn = connect(root / "s.db")
        with transaction(conn):
            conn.execute(
                "INSERT INTO builds(build_id, segment, segment_digest, as_of, started_at, "
                "status, actor) VALUES ('b','s','d','2025-06-01','t','running','me')"
            )
        o = evaluate(
            GateInput(
                "b",
                SEGMENT,
                cfg,
                pack,
                random_candidates(people),
                ["meta", "file"],
                AS_OF,
                conn,
                root,
                "me",
            )
        )
        conn.close()
    f = funnel(o.report)
    if not f.exact:  # a blocked build's report shows no exact count below k
        assert o.blocked and "< " in str(o.report["figures"])
        return
    assert f.selected == len(people)
    assert all(s.removed >= 0 and s.remaining >= 0 for s in f.steps)
    assert f.selected - sum(s.removed for s in f.steps) == f.eligible
    assert f.steps[-1].remaining == f.eligible if f.steps else f.selected == f.eligible
    for outlet in f.outlets:
        assert outlet.released + outlet.withheld == f.eligible
        assert outlet.released == (
            0 if o.blocked else o.releases[outlet.destination].members.height
        )
    assert f.adds_up
    bars = chart(f).bars
    assert all(0 <= b.kept + b.removed <= 520.5 for b in bars)
    text = render(o.report, "md")
    assert f"| **{f.eligible:,}** |" in text or o.blocked


@pytest.fixture
def template_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """jinja2's cross-process cache under a temp folder of this test's own; every
    environment made anew, as in a new process."""
    import tempfile

    from policies import report as module

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    module._cached_environment.cache_clear()
    yield tmp_path / "tmp" / f"_jinja2-cache-{os.getuid()}"
    module._cached_environment.cache_clear()


def _new_process() -> None:
    from policies import report as module

    module._cached_environment.cache_clear()


def _no_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    import jinja2

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a template was compiled again")

    monkeypatch.setattr(jinja2.Environment, "compile", refuse)


def test_compiled_templates_outlive_the_process(outcomes, template_cache, monkeypatch):
    """The second process renders the same reports from the bytecode cache, compiling
    nothing; the cache folder is this user's alone (0700)."""
    report = outcomes[1].report
    first = {fmt: render(report, fmt) for fmt in ("md", "html")}
    assert template_cache.is_dir() and (template_cache.stat().st_mode & 0o777) == 0o700
    assert len(list(template_cache.iterdir())) >= 2
    _new_process()
    _no_compiling(monkeypatch)
    assert {fmt: render(report, fmt) for fmt in ("md", "html")} == first


def test_an_edited_template_is_compiled_again_whatever_the_cache(
    outcomes, tmp_path, template_cache
):
    from policies.report import REQUIRED_SECTIONS

    report = outcomes[1].report
    sections = "".join(f'<div data-section="{s}"></div>' for s in REQUIRED_SECTIONS)
    folder = custom_templates(tmp_path / "org", "<p>first</p>" + sections)
    assert "<p>first</p>" in render(report, "html", templates=folder)
    (folder / "report.html.j2").write_text("<p>second</p>" + sections, encoding="utf-8")
    _new_process()
    page = render(report, "html", templates=folder)
    assert "<p>second</p>" in page and "<p>first</p>" not in page


def test_a_damaged_or_unwritable_cache_is_no_cache(outcomes, template_cache, monkeypatch):
    import tempfile

    report = outcomes[1].report
    expected = render(report, "html")
    for entry in template_cache.iterdir():
        entry.write_bytes(b"j2\x00garbage")  # not the bytecode jinja2 wrote
    _new_process()
    assert render(report, "html") == expected

    def full_disk(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    for entry in template_cache.iterdir():
        entry.unlink()
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", full_disk)
    _new_process()
    assert render(report, "html") == expected
    assert not list(template_cache.iterdir())


def test_attack_a_cache_folder_another_user_made_is_never_read(outcomes, template_cache):
    """Compiled templates are code. Bytecode planted under the built-in report's key and
    checksum renders whatever its planter compiled: from a folder of this user's own
    (which only this user can write) it is taken — the mechanism is real — but from a
    ``_jinja2-cache-UID`` folder another user made it is refused (jinja2 checks the
    folder's owner and mode) and the report comes from the template."""
    import jinja2.bccache

    from policies import report as module
    from policies.report import REQUIRED_SECTIONS

    if os.getuid() != 0:
        pytest.skip("making a folder of another user needs root (CI runs as root)")
    report = outcomes[1].report
    expected = render(report, "html")
    env = module._cached_environment("html", None)
    cache = env.bytecode_cache
    assert cache is not None
    name = "report.html.j2"
    filename = str(module.TEMPLATES / name)
    source = (module.TEMPLATES / name).read_text(encoding="utf-8")
    sections = "".join(f'<div data-section="{s}"></div>' for s in REQUIRED_SECTIONS)
    bucket = jinja2.bccache.Bucket(
        env, cache.get_cache_key(name, filename), cache.get_source_checksum(source)
    )
    bucket.code = env.compile("<p>PLANTED</p>" + sections, name, filename)
    with open(template_cache / (cache.pattern % bucket.key), "wb") as f:  # type: ignore[attr-defined]
        bucket.write_bytecode(f)
    _new_process()
    assert "<p>PLANTED</p>" in render(report, "html")  # this user's own folder: taken
    os.chown(template_cache, 4242, 4242)
    _new_process()
    assert render(report, "html") == expected
