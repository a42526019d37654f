"""Jurisdictions per person and the jurisdiction packs (wa-mhmda, gdpr-health,
ccpa-sensitive): pass, fail and edge cases, and the attacks each rule stops."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from test_gate import (  # noqa: F401  (project: the fixture; _stopped_clock: AS_OF's clock)
    AS_OF,
    NEWSLETTER,
    _stopped_clock,
    make_config,
    people,
    project,
    run,
    segment,
    verdict,
)

from audiences.core.config import ProjectConfig
from audiences.core.errors import ConfigError
from audiences.crm.jurisdiction import jurisdictions
from policies.gate import RemovalInput, forced_removals
from policies.pack import builtin_names, builtin_pack, load_pack
from policies.report.glossary import GLOSSARY

__all__ = ["project"]  # the fixture, shared with test_gate

ALL_PACKS = ["hipaa-marketing", "wa-mhmda", "gdpr-health", "ccpa-sensitive"]
CONSENT = {
    "marketing_opt_in": "opt_in",
    "do_not_contact": "dnc",
    "deceased": "deceased",
    "hipaa_authorization_date": "auth",
    "hipaa_authorization_expires": "auth_expires",
    "hipaa_authorization_revoked": "auth_revoked",
    "ad_personalization": "ad_pers",
    "ad_user_data": "ad_data",
    "share_health_data": "share",
    "explicit_health_marketing": "explicit",
    "limit_sensitive_pi": "limit",
    "opt_out_of_sharing": "gpc",
}
IDENTITY = {
    "external_id": "contact_id",
    "email": "email",
    "phone": "phone",
    "zip": "zip",
    "state": "state",
    "country": "country",
    "birth_date": "birth_date",
    "gender": "sex",
}


def config(root: Path, packs: list[str] | None = None, **policy: Any) -> ProjectConfig:
    return make_config(
        root,
        identity=IDENTITY,
        consent=CONSENT,
        policy={"packs": packs or ALL_PACKS, **policy},
    )


def crowd(n: int, start: int = 0, **columns: Any) -> pl.DataFrame:
    """People in NY who gave every consent; override columns per test."""
    base: dict[str, Any] = {
        "state": "NY",
        "country": "US",
        "ad_data": "granted",
        "share": True,
        "explicit": True,
        "limit": False,
        "gpc": False,
    }
    base.update(columns)
    return people(n, start, **base)


def keys_of(frame: pl.DataFrame, rows: list[int]) -> set[int]:
    return set(frame.get_column("member_key").gather(rows).to_list())


def released(outcome: Any, dest: str = "meta") -> set[int]:
    return set(outcome.releases[dest].members.get_column("member_key").to_list())


# ---------------------------------------------------------------------------------------
# Jurisdiction per person


def test_jurisdiction_from_normalized_state_and_country(tmp_path):
    frame = pl.DataFrame(
        {
            "state": ["WA", "washington", "ca", None, "Bavaria", None, "NY", "ON", None],
            "country": ["US", None, "usa", "DE", "DE", "United Kingdom", "Narnia", "CA", "US"],
        }
    )
    found = jurisdictions(frame, config(tmp_path)).to_list()
    assert found == [
        ["US-WA"],
        ["US-WA"],  # an empty country takes default_country (US)
        ["US-CA"],
        ["EEA"],
        ["EEA"],
        ["UK"],
        [],  # unrecognised country: unknown
        ["CA"],  # Canada, not California
        [],  # a US row without a state: unknown
    ]


def test_jurisdiction_column_overrides_where_it_has_a_value(tmp_path):
    frame = pl.DataFrame(
        {
            "state": ["NY", "NY", "NY", "NY"],
            "country": ["US"] * 4,
            "residence": ["us-wa", "DE", "US-WA; US-CA", " "],
        }
    )
    cfg = config(tmp_path, jurisdiction_column="residence")
    assert jurisdictions(frame, cfg).to_list() == [
        ["US-WA"],
        ["EEA"],
        ["US-WA", "US-CA"],
        ["US-NY"],  # blank override: derived
    ]


def test_jurisdictions_per_distinct_value_match_row_by_row_in_row_order(tmp_path):
    """jurisdictions() derives once per distinct (state, country, override) and joins
    back: every row, repeated values and nulls included, gets what the expression gives
    it row by row, in the candidates' order."""
    from audiences.crm.jurisdiction import jurisdictions_expr

    rng = np.random.default_rng(7)
    n = 2_000
    pick = lambda values: [values[i] for i in rng.integers(0, len(values), n)]  # noqa: E731
    frame = pl.DataFrame(
        {
            "state": pick(["WA", "wa ", "Washington", "CA", None, "", "ON", "Bavaria", "NY"]),
            "country": pick(["US", "usa", None, "DE", "CA", "United Kingdom", "Narnia", ""]),
            "residence": pick([None, "US-WA", "DE; US-CA", " ", "gb"]),
        }
    )
    cfg = config(tmp_path, jurisdiction_column="residence")
    rowwise = frame.select(jurisdictions_expr(frame.schema, cfg)).to_series().to_list()
    assert jurisdictions(frame, cfg).to_list() == rowwise
    assert len({tuple(j) for j in rowwise}) > 5  # the sample mixes jurisdictions


def test_jurisdiction_column_missing_is_a_one_line_error(tmp_path):
    frame = pl.DataFrame({"state": ["NY"], "country": ["US"]})
    with pytest.raises(Exception, match="jurisdiction_column names column 'nope'"):
        jurisdictions(frame, config(tmp_path, jurisdiction_column="nope"))


# ---------------------------------------------------------------------------------------
# Packs: sources, loading, several at once


def test_every_rule_of_every_builtin_pack_has_source_and_rationale():
    for name in builtin_names():
        pack = builtin_pack(name)
        assert pack.description.strip(), name
        for rule in pack.rules:
            assert rule.rationale.strip() and rule.source.strip(), (name, rule.id)
            if pack.jurisdictions:  # the date it applies from, in the source
                assert re.search(r"\b20\d\d-\d\d-\d\d\b", rule.source), (name, rule.id)


def test_packs_combine_base_first_and_scope_jurisdiction_rules(tmp_path):
    pack = load_pack(config(tmp_path))
    assert pack.name == "hipaa-marketing + wa-mhmda + gdpr-health + ccpa-sensitive"
    scoped = {r.id: r.jurisdictions for r in pack.rules if r.jurisdictions}
    assert scoped == {
        "mhmda-consent-to-share": ("US-WA",),
        "mhmda-sale-authorization": ("US-WA",),
        "mhmda-no-geofence": ("US-WA",),
        "gdpr-explicit-health-consent": ("EEA", "UK"),
        "gdpr-ad-consent-signals": ("EEA", "UK"),
        "ccpa-opt-outs": ("US-CA",),
    }
    assert pack.require_approval  # from hipaa-marketing
    assert pack.digest != load_pack(config(tmp_path, packs=["hipaa-marketing"])).digest
    single = make_config(tmp_path, pack="hipaa-marketing")  # `pack = "..."` keeps working
    assert load_pack(single).digest == builtin_pack("hipaa-marketing").digest


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"packs": ["wa-mhmda"]}, "is a jurisdiction pack"),
        ({"packs": ["baseline", "hipaa-marketing"]}, "is not a jurisdiction pack"),
        ({"packs": ["baseline", "wa-mhmda", "wa-mhmda"]}, "already used by an earlier pack"),
    ],
)
def test_bad_pack_lists_are_one_line_errors(tmp_path, policy, message):
    cfg = make_config(tmp_path, identity=IDENTITY, consent=CONSENT, policy=policy)
    with pytest.raises(ConfigError, match=message) as err:
        load_pack(cfg)
    assert "\n" not in str(err.value)


def test_pack_and_packs_must_agree(tmp_path):
    with pytest.raises(ValueError, match="disagree on the base pack"):
        make_config(tmp_path, policy={"pack": "baseline", "packs": ["hipaa-marketing"]})


def test_jurisdiction_rule_needs_its_consent_column(tmp_path):
    consent = {k: v for k, v in CONSENT.items() if k != "opt_out_of_sharing"}
    cfg = make_config(tmp_path, identity=IDENTITY, consent=consent, policy={"packs": ALL_PACKS})
    with pytest.raises(ConfigError, match=r"reads \[consent\] opt_out_of_sharing"):
        load_pack(cfg)


def test_jurisdiction_pack_cannot_carry_destination_rules(tmp_path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "wa.yaml").write_text(
        "name: wa-small\nversion: '1'\nextends: wa-mhmda\nrules:\n"
        "  - id: tiny\n    rule: min_size\n    params: {k: 2, platform_minimums: {}}\n"
        "    rationale: r\n    source: s\n"
    )
    cfg = config(tmp_path, packs=["baseline", "policies/wa.yaml"])
    with pytest.raises(ConfigError, match=r"destination rules .* apply to the whole release"):
        load_pack(cfg)


# ---------------------------------------------------------------------------------------
# wa-mhmda


def test_wa_health_segment_needs_consent_to_share_in_washington_only(project):
    # 0-49 NY without consent to share (kept), 50-99 WA with it (kept), 100-119 WA
    # without it (removed), 120-129 unknown jurisdiction without it (removed: strictest)
    state = ["NY"] * 50 + ["WA"] * 70 + [None] * 10
    share = [False] * 50 + [True] * 50 + [False] * 30
    frame = crowd(130, state=state, share=share)
    frame = pl.concat([frame, crowd(100, start=1000)])
    diabetes = segment(
        "name: diabetes\ndestinations: [meta]\nwhere:\n  diagnosis_codes: {contains: E11.9}\n"
    )
    cfg = config(project["root"], packs=["hipaa-marketing", "wa-mhmda"])
    outcome = run(project, diabetes, frame, ["meta"], config=cfg)
    assert not outcome.blocked, outcome.block_reasons
    v = verdict(outcome, "mhmda-consent-to-share")
    assert v.evidence["in_us_wa"] == 70 and v.evidence["excluded_us_wa"] == 20
    assert v.evidence["in_unknown"] == 10 and v.evidence["excluded_unknown"] == 10
    assert v.evidence["excluded"] == 30 and v.evidence["removed"] == 30
    assert v.evidence["out_of_jurisdiction"] == 150
    out = released(outcome)
    assert not keys_of(frame, list(range(100, 130))) & out
    assert keys_of(frame, list(range(0, 100))) <= out
    assert "US-WA" in v.detail and v.rationale and "19.373" in v.source


def test_wa_non_health_segment_needs_no_consent_to_share(project):
    frame = crowd(150, state="WA", share=False)
    outcome = run(project, NEWSLETTER, frame, ["meta"], config=config(project["root"]))
    v = verdict(outcome, "mhmda-consent-to-share")
    assert v.evidence["health_derived"] == 0 and v.evidence["excluded"] == 0
    assert len(released(outcome)) == 150


def test_wa_health_inferring_event_type_counts_as_health(project):
    # portal_login is a sensitive event type: visiting the portal infers health
    portal = segment(
        "name: portal\ndestinations: [meta]\nwhere:\n  event:\n    type: portal_login\n"
        "    within: 30d\n"
    )
    from policies.rules import FilterContext, HealthDataConsentParams, health_inferring
    from policies.rules import phi_finding as finding

    cfg = config(project["root"])
    ctx = FilterContext(cfg, crowd(1), AS_OF, finding(portal, cfg), None, segment=portal)  # type: ignore[arg-type]
    assert "portal_login" in health_inferring(
        HealthDataConsentParams(consent="share_health_data"), ctx
    )


def test_wa_geofence_segment_is_refused_when_washington_people_are_selected(project):
    geo = segment("name: nearby\ndestinations: [meta]\nwhere:\n  distance_to_clinic_km: {lt: 2}\n")
    frame = crowd(150, state=["WA"] + ["NY"] * 149, distance_to_clinic_km=1)
    outcome = run(project, geo, frame, ["meta"], config=config(project["root"]))
    assert outcome.blocked and not outcome.releases
    v = verdict(outcome, "mhmda-no-geofence")
    assert v.status == "fail" and "distance_to_clinic_km" in v.detail
    assert v.evidence["location_fields"] == 1 and v.evidence["in_us_wa"] == 1


def test_geofence_rule_edges(project):
    # nobody in Washington (nor of unknown jurisdiction): the rule has nothing to refuse;
    # a name that merely contains "near" (linear) is not location-based
    geo = segment("name: nearby\ndestinations: [meta]\nwhere:\n  near_hospital: {eq: true}\n")
    frame = crowd(150, near_hospital=True)
    outcome = run(project, geo, frame, ["meta"], config=config(project["root"]))
    assert verdict(outcome, "mhmda-no-geofence").status == "pass"
    unknown = crowd(150, state=None, near_hospital=True)
    assert run(project, geo, unknown, ["meta"], config=config(project["root"])).blocked
    linear = segment("name: lin\ndestinations: [meta]\nwhere:\n  linear_score: {gt: 1}\n")
    wa = crowd(150, state="WA", linear_score=2)
    outcome = run(project, linear, wa, ["meta"], config=config(project["root"]))
    assert verdict(outcome, "mhmda-no-geofence").status == "pass"


# ---------------------------------------------------------------------------------------
# gdpr-health


def test_eea_member_without_consent_signals_is_never_released_to_google(project):
    # 0-99 NY (signals not needed beyond not DENIED); 100-149 DE both granted;
    # 150-159 DE without ad_user_data; 160-169 FR ad_personalization unspecified;
    # 170-179 UK denied ad_user_data
    country = ["US"] * 100 + ["DE"] * 60 + ["FR"] * 10 + ["GB"] * 10
    state = ["NY"] * 100 + [None] * 80
    ad_data = ["granted"] * 150 + [None] * 10 + ["granted"] * 10 + ["denied"] * 10
    ad_pers = ["granted"] * 160 + [None] * 10 + ["granted"] * 10
    frame = crowd(180, country=country, state=state, ad_data=ad_data, ad_pers=ad_pers)
    outcome = run(project, NEWSLETTER, frame, ["gads", "meta"], config=config(project["root"]))
    assert not outcome.blocked, outcome.block_reasons
    v = verdict(outcome, "gdpr-ad-consent-signals")
    assert v.evidence["in_eea"] == 70 and v.evidence["excluded_eea"] == 20
    assert v.evidence["in_uk"] == 10 and v.evidence["excluded_uk"] == 10
    lacking = keys_of(frame, list(range(150, 180)))
    assert not lacking & released(outcome, "gads")
    assert not lacking & released(outcome, "meta")
    signals = outcome.releases["gads"].members.filter(
        pl.col("member_key").is_in(list(keys_of(frame, list(range(100, 150)))))
    )
    assert signals.height == 50
    assert set(signals.get_column("ad_user_data")) == {"GRANTED"}
    assert set(signals.get_column("ad_personalization")) == {"GRANTED"}


def test_eea_health_segment_needs_explicit_consent(project):
    diabetes = segment(
        "name: diabetes\ndestinations: [meta]\nwhere:\n  diagnosis_codes: {contains: E11.9}\n"
    )
    explicit = [True] * 120 + [False] * 20 + [None] * 10
    frame = crowd(150, country="IE", state=None, explicit=explicit)
    outcome = run(project, diabetes, frame, ["meta"], config=config(project["root"]))
    v = verdict(outcome, "gdpr-explicit-health-consent")
    assert v.evidence["excluded_eea"] == 30 and v.evidence["lacking_consent"] == 30
    assert not keys_of(frame, list(range(120, 150))) & released(outcome)
    assert "Art. 9(2)(a)" in v.source


# ---------------------------------------------------------------------------------------
# ccpa-sensitive


def test_california_opt_outs_are_removed_from_every_audience(project):
    # 0-149 CA: 140-144 limit sensitive PI, 145-149 GPC; 150-159 NY with GPC (out of
    # scope); 160-164 unknown jurisdiction with GPC (strictest: removed)
    state = ["CA"] * 150 + ["NY"] * 10 + [None] * 5
    limit = [False] * 140 + [True] * 5 + [False] * 20
    gpc = [False] * 145 + [True] * 20
    frame = crowd(165, state=state, limit=limit, gpc=gpc)
    outcome = run(project, NEWSLETTER, frame, ["meta", "gads"], config=config(project["root"]))
    v = verdict(outcome, "ccpa-opt-outs")
    assert v.evidence["excluded_us_ca"] == 10 and v.evidence["excluded_unknown"] == 5
    assert v.evidence["limit_sensitive_pi"] == 5 and v.evidence["opt_out_of_sharing"] == 20
    gone = keys_of(frame, list(range(140, 150)) + list(range(160, 165)))
    for dest in ("meta", "gads"):
        assert not gone & released(outcome, dest)
        assert keys_of(frame, list(range(150, 160))) <= released(outcome, dest)
    assert "1798.121" in v.source and "7025" in v.source


def test_consent_withdrawn_after_a_release_is_removed_on_the_next_build(project):
    cfg = config(project["root"])
    first = run(project, NEWSLETTER, crowd(200, state="CA"), ["meta"], config=cfg, keep=True)
    assert len(released(first)) == 200
    gpc = [False] * 200
    gpc[7] = True  # person 7 sends Global Privacy Control after the release
    now = crowd(200, state="CA", gpc=gpc)
    second = run(project, NEWSLETTER, now, ["meta"], config=cfg)
    withdrawn = now.get_column("member_key")[7]
    assert withdrawn not in released(second)
    assert second.releases["meta"].excluded_keys.to_list() == [withdrawn]  # forced, not held
    # and when the build's adds are blocked, the sync's forced removals take them off
    removal = forced_removals(
        RemovalInput(
            "b-removal",
            NEWSLETTER,
            cfg,
            load_pack(cfg),
            now,
            {"meta": first.releases["meta"].members},
            AS_OF,
            project["state_dir"],
        )
    )
    assert removal.releases["meta"].members.get_column("member_key").to_list() == [withdrawn]


# ---------------------------------------------------------------------------------------
# Whole-release rules, and the report


def test_min_size_applies_to_the_whole_release_across_jurisdictions(project):
    # 60 WA + 60 EEA people: neither group alone reaches k=100, the release does
    state = ["WA"] * 60 + [None] * 60
    country = ["US"] * 60 + ["NL"] * 60
    frame = crowd(120, state=state, country=country)
    outcome = run(project, NEWSLETTER, frame, ["meta"], config=config(project["root"]))
    assert not outcome.blocked
    assert verdict(outcome, "min-size", "meta").evidence["members"] == 120


def test_report_groups_evidence_by_jurisdiction_with_glossary_entries(project):
    frame = crowd(150, state=["WA", "CA"] * 75)
    outcome = run(project, NEWSLETTER, frame, ["meta"], config=config(project["root"]))
    missing = [
        (v["kind"], key)
        for v in outcome.report["verdicts"]
        for key in v["evidence"]
        if key not in GLOSSARY[v["kind"]].terms
    ]
    assert not missing
    keys = {k for v in outcome.report["verdicts"] for k in v["evidence"]}
    assert {"in_us_wa", "in_us_ca", "in_eea", "in_uk", "in_unknown"} <= keys


def test_jurisdiction_scope_is_vectorized_and_handles_no_candidates(project):
    empty = crowd(150).head(0)
    outcome = run(project, NEWSLETTER, empty, ["meta"], config=config(project["root"]))
    assert outcome.blocked  # min-size, not a crash
    assert verdict(outcome, "ccpa-opt-outs").evidence["in_us_ca"] == 0
    assert np.all([v.evidence.get("excluded", 0) == 0 for v in outcome.verdicts])


def _mixed_crowd() -> pl.DataFrame:
    """NY (no jurisdiction pack), WA, CA, EEA and unknown people; some lack each consent."""
    state = ["NY"] * 150 + ["WA"] * 40 + ["CA"] * 30 + [None] * 20 + [None] * 5
    country = ["US"] * 220 + ["DE"] * 20 + [None] * 5
    share = [True] * 150 + [True] * 10 + [False] * 30 + [True] * 50 + [False] * 5
    gpc = [False] * 190 + [True] * 12 + [False] * 43
    return crowd(245, state=state, country=country, share=share, gpc=gpc)


def test_report_section_by_jurisdiction_names_pack_rule_and_people_matched(project):
    from html import unescape

    from policies.report import render

    frame = _mixed_crowd()
    packs = ["hipaa-marketing", "wa-mhmda", "ccpa-sensitive"]
    diabetes = segment(
        "name: diabetes\ndestinations: [meta]\nwhere:\n  diagnosis_codes: {contains: E11.9}\n"
    )
    outcome = run(project, diabetes, frame, ["meta"], config=config(project["root"], packs=packs))
    assert not outcome.blocked, outcome.block_reasons
    by_id = {v["id"]: v for v in outcome.report["verdicts"]}
    assert by_id["mhmda-consent-to-share"]["pack"] == "wa-mhmda"
    assert by_id["mhmda-consent-to-share"]["jurisdictions"] == ["US-WA"]
    assert "pack" not in by_id["consent"]  # the base pack's rules apply to everyone
    text = render(outcome.report, "md")
    section = text.split("<!-- section: jurisdictions -->")[1].split("<!-- section:")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    # Washington: 40 selected there, 30 without consent to share; 5 unknown (state and
    # country empty) without it: the strictest treatment applies the WA rule to them too
    assert rows[0].startswith("| Washington (US-WA) | 40 | wa-mhmda |")
    assert "mhmda-consent-to-share" in rows[0] and rows[0].endswith("| 30 | PASS |")
    assert "sale-authorization" in rows[1] and rows[1].endswith("| 0 | PASS |")  # no sale
    assert "no-geofence" in rows[2] and rows[2].endswith("| 0 | PASS |")
    ca = next(r for r in rows if r.startswith("| California (US-CA) | 30 |"))
    assert "ccpa-opt-outs" in ca and ca.endswith("| 12 | PASS |")
    unknown = [r for r in rows if r.startswith("| Jurisdiction unknown |")]
    assert unknown and unknown[0].startswith("| Jurisdiction unknown | 5 |")
    assert unknown[0].endswith("| 5 | PASS |")  # all five lack consent to share
    assert "Germany" not in section and "EEA" not in section  # gdpr-health is not in force
    page = unescape(render(outcome.report, "html"))
    assert 'data-section="jurisdictions"' in page and "Washington (US-WA)" in page
    assert "The base pack hipaa-marketing applies to everyone" in page
    # every term of the section is explained, from the glossary, in both formats
    from policies.report.glossary import JURISDICTION_TERMS

    html_section = page.split('data-section="jurisdictions"')[1].split("</section>")[0]
    for t in JURISDICTION_TERMS.values():
        assert t.label in html_section and t.explanation in html_section, t
        assert t.label in section and t.explanation in section.replace("\\", ""), t


def test_blocked_report_by_jurisdiction_shows_no_count_below_k(project):
    from policies.report import render

    frame = _mixed_crowd().head(230)  # 150 NY + 40 WA + 30 CA + 10 EEA
    diabetes = segment(
        "name: diabetes\ndestinations: [meta]\nwhere:\n  diagnosis_codes: {contains: E11.9}\n"
    )
    cfg = config(project["root"], packs=["hipaa-marketing", "wa-mhmda"])
    frame = frame.with_columns(pl.Series("opt_in", [False] * 150 + [True] * 80))  # < k left
    outcome = run(project, diabetes, frame, ["meta"], config=cfg)
    assert outcome.blocked
    text = render(outcome.report, "md")
    section = text.split("<!-- section: jurisdictions -->")[1].split("<!-- section:")[0]
    assert "| Washington (US-WA) | \\< 100 |" in section
    assert not re.search(r"\| (40|30|10) \|", section)  # the exact counts below k are gone
    page = render(outcome.report, "html")
    jurisdiction_part = page.split('data-section="jurisdictions"')[1].split("</section>")[0]
    assert "&lt; 100" in jurisdiction_part and ">40<" not in jurisdiction_part


def test_every_builtin_rule_appears_with_its_rationale_and_source_in_the_report(project):
    from html import unescape

    from policies.report import render
    from policies.report.glossary import JURISDICTION_NAMES

    frame = _mixed_crowd()
    for base in ("baseline", "hipaa-marketing"):
        packs = [base, "wa-mhmda", "gdpr-health", "ccpa-sensitive"]
        cfg = config(project["root"], packs=packs)
        outcome = run(
            project,
            segment(
                f"name: d-{base}\ndestinations: [meta]\nwhere:\n  diagnosis_codes: {{contains: E11.9}}\n"
            ),
            frame,
            ["meta"],
            config=cfg,
        )
        page = unescape(render(outcome.report, "html"))
        for name in packs:
            pack = builtin_pack(name)
            assert set(pack.jurisdictions) <= set(JURISDICTION_NAMES), name
            for rule in pack.rules:
                card = page.split(f'id="rule-{rule.id}-')[1].split("</article>")[0]
                assert rule.rationale in card and rule.source in card, (name, rule.id)


def test_demo_summary_shows_who_the_packs_kept_out_in_coarse_figures(project, tmp_path):
    import json

    from audiences.demo.run import jurisdiction_lines

    state = ["NY"] * 300 + ["WA"] * 150 + [None] * 10
    share = [True] * 300 + [False] * 130 + [True] * 20 + [False] * 10
    frame = crowd(460, state=state, share=share)
    diabetes = segment(
        "name: diabetes\ndestinations: [meta]\nwhere:\n  diagnosis_codes: {contains: E11.9}\n"
    )
    cfg = config(project["root"], packs=["hipaa-marketing", "wa-mhmda"])
    outcome = run(project, diabetes, frame, ["meta"], config=cfg)
    assert not outcome.blocked, outcome.block_reasons
    path = tmp_path / "b-1.json"
    path.write_text(json.dumps(outcome.report, default=str), encoding="utf-8")
    build = {"segment": "diabetes", "status": "released", "reports": {"json": str(path)}}
    lines = jurisdiction_lines([build, {**build, "status": "blocked"}])
    assert lines[1] == "diabetes (released under hipaa-marketing + wa-mhmda):"
    assert lines[2] == (
        "  Washington (US-WA): 100-199 people — no consent for health data "
        "(wa-mhmda rule mhmda-consent-to-share)"
    )
    assert lines[3].startswith("  Jurisdiction unknown: < 100 people — no consent")
    assert lines[4].endswith("b-1.html") and len(lines) == 5  # blocked builds: nothing
    # no exact figure (the report's path is left out: pytest numbers its temporary
    # folders, and a folder named pytest-130 or pytest-10 is no figure)
    shown = "\n".join(lines).replace(str(tmp_path), "<tmp>")
    assert not re.search(r"\b(130|10|150)\b", shown)


def test_a_request_on_one_record_holds_for_every_record_of_the_person(project):
    # The attack: a person's second CRM record (same email, or same phone) lacks the GPC
    # flag her first one carries; records sharing an identifier are one person, and the
    # opt-out is hers, so neither record may be released.
    frame = crowd(200, state="CA")
    by_email = crowd(1, start=5000, state="CA", gpc=True).with_columns(
        pl.lit(frame["email"][0]).alias("email")
    )
    by_phone = crowd(1, start=5001, state="CA", limit=True).with_columns(
        pl.lit(frame["phone"][1]).alias("phone")
    )
    records = pl.concat([frame, by_email, by_phone])
    cfg = config(project["root"], packs=["baseline", "ccpa-sensitive"])
    outcome = run(project, NEWSLETTER, records, ["meta"], config=cfg)
    out = released(outcome)
    assert not keys_of(records, [0, 1, 200, 201]) & out
    assert keys_of(records, list(range(2, 200))) <= out and len(out) == 198
    v = verdict(outcome, "ccpa-opt-outs")
    assert v.evidence["excluded"] == 4 and v.evidence["linked_records"] == 2
    assert v.evidence["excluded_us_ca"] == 4 and v.evidence["removed"] == 4
    # withdrawn consent to share on the second record of a Washington person: the same
    diabetes = segment(
        "name: diabetes\ndestinations: [meta]\nwhere:\n  diagnosis_codes: {contains: E11.9}\n"
    )
    wa = crowd(150, state="WA")
    twin = crowd(1, start=6000, state="WA", share="withdrawn").with_columns(
        pl.lit(wa["email"][3]).alias("email")
    )
    wa_records = pl.concat([wa, twin], how="diagonal_relaxed")
    cfg = config(project["root"], packs=["hipaa-marketing", "wa-mhmda"])
    outcome = run(project, diabetes, wa_records, ["meta"], config=cfg)
    assert not keys_of(wa_records, [3, 150]) & released(outcome)
    assert verdict(outcome, "mhmda-consent-to-share").evidence["linked_records"] == 1


def test_per_purpose_consent_columns_read_their_own_words(project):
    # An Epic-style export writes its own words: "Y - shared" / "N" / "Revoked by patient"
    # for the consent to share, "GPC received" / "none" for the opt-out flag.
    share = ["Y - shared"] * 80 + ["N"] * 10 + ["Revoked by patient"] * 10 + ["Y - shared"] * 50
    gpc = ["none"] * 140 + ["GPC received"] * 10
    frame = crowd(150, state=["WA"] * 100 + ["CA"] * 50, share=share, gpc=gpc)
    diabetes = segment(
        "name: diabetes\ndestinations: [meta]\nwhere:\n  diagnosis_codes: {contains: E11.9}\n"
    )
    words = {
        "share_health_data": {"granted": ["y - shared"], "denied": ["N", "revoked by patient"]},
        "opt_out_of_sharing": {"granted": ["GPC received"], "denied": ["none"]},
    }

    def outcome(consent: dict[str, Any]) -> Any:
        cfg = make_config(
            project["root"],
            identity=IDENTITY,
            consent=consent,
            policy={"packs": ["hipaa-marketing", "wa-mhmda", "ccpa-sensitive"]},
        )
        return run(project, diabetes, frame, ["meta"], config=cfg)

    own = outcome({**CONSENT, "words": words})
    out = released(own)
    assert keys_of(frame, [*range(80), *range(100, 140)]) == out
    assert verdict(own, "mhmda-consent-to-share").evidence["excluded_us_wa"] == 20
    assert verdict(own, "ccpa-opt-outs").evidence["opt_out_of_sharing"] == 10
    # without its words, the export's words are no words: nobody has consented to share
    # (fail closed) and — worse — "GPC received" is no opt-out: validate refuses such a
    # column (tests/test_messy_crm.py) and the words above fix it
    shared = outcome(CONSENT)
    assert verdict(shared, "mhmda-consent-to-share").evidence["excluded_us_wa"] == 100
    assert verdict(shared, "ccpa-opt-outs").evidence["opt_out_of_sharing"] == 0
    # and a word of the shared vocabulary means nothing in a column with its own words
    yes = frame.with_columns(pl.lit("yes").alias("share"))
    cfg = make_config(
        project["root"],
        identity=IDENTITY,
        consent={**CONSENT, "words": words},
        policy={"packs": ["hipaa-marketing", "wa-mhmda"]},
    )
    v = verdict(run(project, diabetes, yes, ["meta"], config=cfg), "mhmda-consent-to-share")
    assert v.evidence["excluded_us_wa"] == 100


# ---------------------------------------------------------------------------------------
# wa-mhmda: a sale needs a signed authorization (RCW 19.373.070)

SALE_CONSENT = {
    **CONSENT,
    "mhmda_sale_authorization_date": "sold_on",
    "mhmda_sale_authorization_expires": "sale_expires",
    "mhmda_sale_authorization_revoked": "sale_revoked",
}
DESTINATIONS = {
    "meta": {"kind": "meta", "ad_account_id": "act_42"},
    "gads": {"kind": "google_ads", "customer_id": "123-456-7890"},
    # a data partner that pays for the list: a sale
    "broker": {"kind": "meta", "ad_account_id": "act_77", "basis": "sale"},
}
DIABETES = segment(
    "name: diabetes\ndestinations: [meta]\nwhere:\n  diagnosis_codes: {contains: E11.9}\n"
)


def sale_config(root: Path, consent: dict[str, Any] | None = None, **destinations: Any) -> Any:
    return make_config(
        root,
        identity=IDENTITY,
        consent=consent or SALE_CONSENT,
        destinations={**DESTINATIONS, **destinations},
        policy={"packs": ["hipaa-marketing", "wa-mhmda"]},
    )


def _day(text: str | None) -> Any:
    import datetime as dt

    return None if text is None else dt.date.fromisoformat(text)


def sale_crowd() -> pl.DataFrame:
    """Washington people who consented to share, with authorizations to sell of every
    kind (the release day is AS_OF, 2025-06-01); New York people without any."""
    blocks: list[tuple[int, str | None, str | None, str | None, str | None]] = [
        # (people, state, signed on, expires on, revoked on)
        (100, "WA", "2025-01-01", None, None),  # 0-99 in force
        (10, "WA", None, None, None),  # 100-109 none recorded
        (10, "WA", "2025-01-01", "2025-05-31", None),  # 110-119 expired (its date)
        (10, "WA", "2024-05-31", None, None),  # 120-129 expired: over a year old
        (10, "WA", "2024-06-01", "2026-01-01", None),  # 130-139 a year old today: expired
        (10, "WA", "2025-01-01", None, "2025-05-01"),  # 140-149 revoked before today
        (10, "WA", "2025-01-01", None, "2025-06-02"),  # 150-159 revoked after today: valid
        (10, "WA", "2025-06-02", None, None),  # 160-169 signed after today
        (10, None, None, None, None),  # 170-179 unknown jurisdiction, none: strictest
        (100, "NY", None, None, None),  # 180-279 out of jurisdiction
        (10, "WA", "2024-06-02", None, None),  # 280-289 a year less a day: in force
    ]
    frames, start = [], 0
    for n, state, signed, expires, revoked in blocks:
        frames.append(
            crowd(
                n,
                start,
                state=state,
                sold_on=_day(signed),
                sale_expires=_day(expires),
                sale_revoked=_day(revoked),
            )
        )
        start += n
    return pl.concat(frames, how="diagonal_relaxed")


SOLD_OK = [*range(100), *range(150, 160), *range(180, 290)]
NOT_SOLD = [*range(100, 150), *range(160, 180)]


def test_sale_destination_needs_a_signed_authorization_in_force(project):
    frame = sale_crowd()
    cfg = sale_config(project["root"])
    outcome = run(project, DIABETES, frame, ["meta", "broker"], config=cfg)
    assert not outcome.blocked, outcome.block_reasons
    # the sale destination gets only people with an authorization in force today …
    assert released(outcome, "broker") == keys_of(frame, SOLD_OK)
    # … the share destination of the same release is judged by the consent to share alone
    assert released(outcome, "meta") == keys_of(frame, list(range(frame.height)))
    v = verdict(outcome, "mhmda-sale-authorization")
    assert v.passed and v.evidence["sale_destinations"] == 1
    assert v.evidence["lacking_authorization"] == 170  # the 100 NY people lack one too
    assert v.evidence["excluded"] == len(NOT_SOLD) == v.evidence["removed"]
    assert v.evidence["excluded_us_wa"] == 60 and v.evidence["excluded_unknown"] == 10
    assert v.evidence["out_of_jurisdiction"] == 100
    assert "19.373.070" in v.source and "one year" in v.source and "broker" in v.detail
    # the removals are forced, never held by difference protection
    assert set(outcome.releases["broker"].excluded_keys.to_list()) >= keys_of(frame, NOT_SOLD)
    assert not set(outcome.releases["meta"].excluded_keys.to_list())


def test_sale_rule_edges_share_only_non_health_and_no_sale_destination(project):
    frame = sale_crowd()
    cfg = sale_config(project["root"])
    # the same segment to share destinations only: the rule judges nothing
    only_share = run(project, DIABETES, frame, ["meta"], config=cfg)
    v = verdict(only_share, "mhmda-sale-authorization")
    assert v.evidence["sale_destinations"] == 0 and v.evidence["excluded"] == 0
    assert len(released(only_share)) == frame.height
    # a segment that reaches no health data: a sale of it is not a sale of health data
    newsletter = run(project, NEWSLETTER, frame, ["broker"], config=cfg)
    v = verdict(newsletter, "mhmda-sale-authorization")
    assert v.evidence["health_derived"] == 0 and v.evidence["excluded"] == 0
    assert len(released(newsletter, "broker")) == frame.height


def test_sale_destination_needs_its_columns_mapped_and_a_known_basis(tmp_path):
    bare = {k: v for k, v in SALE_CONSENT.items() if not k.startswith("mhmda_sale")}
    with pytest.raises(ConfigError, match=r"reads \[consent\] mhmda_sale_authorization_date") as e:
        load_pack(sale_config(tmp_path, consent=bare))
    assert "\n" not in str(e.value)
    revoked = {k: v for k, v in SALE_CONSENT.items() if k != "mhmda_sale_authorization_revoked"}
    with pytest.raises(ConfigError, match=r"mhmda_sale_authorization_revoked"):
        load_pack(sale_config(tmp_path, consent=revoked))
    # a project that sells nothing needs no authorization columns
    shared = make_config(
        tmp_path,
        identity=IDENTITY,
        consent=bare,
        policy={"packs": ["hipaa-marketing", "wa-mhmda"]},
    )
    assert load_pack(shared).of_kind("sale_authorization")
    # a basis that is neither: a one-line error naming the key (exit 1 from the CLI)
    from audiences.core.config import load_config

    (tmp_path / "audiences.toml").write_text(
        '[sources.contacts]\npath = "c.csv"\n[identity]\nemail = "email"\n'
        '[destinations.broker]\nkind = "meta"\nad_account_id = "act_1"\nbasis = "rent"\n'
    )
    with pytest.raises(ConfigError, match=r"destinations\.broker\.basis") as e:
        load_config(tmp_path)
    assert "\n" not in str(e.value) and "'share' or 'sale'" in str(e.value)


def test_attack_a_share_destination_on_the_account_of_a_sale_one_is_a_sale(project):
    # The attack: "partner" uploads to the broker's account but says basis = "share", so
    # people without an authorization to sell would reach the buyer through it.
    frame = sale_crowd()
    partner = {"kind": "meta", "ad_account_id": "act_77", "basis": "share"}
    cfg = sale_config(project["root"], partner=partner)
    outcome = run(project, DIABETES, frame, ["meta", "partner"], config=cfg)
    assert released(outcome, "partner") == keys_of(frame, SOLD_OK)
    assert len(released(outcome, "meta")) == frame.height  # another account: a share
    from policies.gate import sale_basis

    assert sale_basis(cfg, "partner") and not sale_basis(cfg, "meta")
    # Google's two destination kinds upload to one account: a sale on one is on both
    google = {"gdm": {"kind": "google_data_manager", "customer_id": "1234567890", "basis": "sale"}}
    assert sale_basis(sale_config(project["root"], **google), "gads")


def test_attack_flipping_the_basis_needs_a_new_approval(project):
    # An approval binds the basis each destination is judged on: declaring a sale
    # destination "share", or dropping the sale destination whose account a segment's
    # destination shares, changes the approved digest (the CLI then exits 3).
    from audiences.compliance.workflow import policy_digest

    seg = segment(
        "name: diabetes\ndestinations: [broker, partner]\nwhere:\n"
        "  diagnosis_codes: {contains: E11.9}\n"
    )
    partner = {"kind": "meta", "ad_account_id": "act_77"}
    sold = sale_config(project["root"], partner=partner)
    pack = load_pack(sold)
    approved = policy_digest(sold, seg, pack, {})
    flipped = sale_config(
        project["root"], partner=partner, broker={**DESTINATIONS["broker"], "basis": "share"}
    )
    assert policy_digest(flipped, seg, load_pack(flipped), {}) != approved
    only_partner = segment(
        "name: diabetes\ndestinations: [partner]\nwhere:\n  diagnosis_codes: {contains: E11.9}\n"
    )
    before = policy_digest(sold, only_partner, pack, {})
    renamed = sale_config(
        project["root"],
        partner=partner,
        broker={"kind": "meta", "ad_account_id": "act_78", "basis": "sale"},
    )
    assert policy_digest(renamed, only_partner, load_pack(renamed), {}) != before
    # an explicit basis = "share" is the default: approvals made before `basis` still hold
    explicit = sale_config(project["root"], partner={**partner, "basis": "share"})
    assert policy_digest(explicit, seg, load_pack(explicit), {}) == approved


def test_attack_moving_as_of_back_to_when_the_authorization_held_is_refused(project):
    from audiences.core.errors import UsageError

    frame = sale_crowd()
    cfg = sale_config(project["root"])
    # on 2025-05-15 the authorizations that expired on 2025-05-31 or turned a year old
    # since were in force: a build "as of" that day would sell those people again
    with pytest.raises(UsageError, match="refused for the policy gate"):
        run(project, DIABETES, frame, ["broker"], config=cfg, as_of=_day("2025-05-15"))


def test_an_authorization_lapsing_after_a_sale_is_a_forced_removal_there_only(project):
    from conftest import frozen_clock

    frame = crowd(150, state="WA", sold_on=_day("2024-06-20"), sale_expires=None, sale_revoked=None)
    cfg = sale_config(project["root"])
    first = run(project, DIABETES, frame, ["meta", "broker"], config=cfg, keep=True)
    assert len(released(first, "broker")) == 150
    lapsed = _day("2025-06-20")  # a year after signing: the authorization has expired
    with frozen_clock(lapsed):
        removal = forced_removals(
            RemovalInput(
                "b-lapsed",
                DIABETES,
                cfg,
                load_pack(cfg),
                frame,
                {d: first.releases[d].members for d in ("meta", "broker")},
                lapsed,
                project["state_dir"],
            )
        )
    assert removal.releases["broker"].members.height == 150
    assert removal.releases["meta"].members.height == 0  # shared, not sold: stays
