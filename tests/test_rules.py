"""Each rule kind: pass, fail and edge cases on small frames (counts only in evidence)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import frozen_clock

from audiences.core.config import ProjectConfig
from audiences.segments import parse_segment
from policies.pack import builtin_pack
from policies.rules import (
    Destination,
    FilterContext,
    MinSizeParams,
    Rule,
    consent,
    min_size,
    minors,
    phi_authorization,
    phi_finding,
    sensitive_destination,
    suppression,
)
from policies.suppression import SuppressionSet, sources_from

AS_OF = dt.date(2025, 6, 1)


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


BASE = builtin_pack("baseline")
HIPAA = builtin_pack("hipaa-marketing")


def cfg(**consent_cols: Any) -> ProjectConfig:
    return ProjectConfig.model_validate(
        {
            "sources": {
                "contacts": {"path": "c.csv"},
                "events": {
                    "path": "e.csv",
                    "sensitive_types": ["portal_login"],
                    "sensitive_columns": ["department"],
                },
            },
            "identity": {
                "external_id": "id",
                "email": "email",
                "phone": "phone",
                "country": "country",
            },
            "columns": {"sensitive": ["diagnosis_codes", "service_lines"]},
            "consent": {
                "marketing_opt_in": "opt",
                "do_not_contact": "dnc",
                "deceased": "dead",
                "hipaa_authorization_date": "auth",
                "hipaa_authorization_expires": "exp",
                "hipaa_authorization_revoked": "rev",
                **consent_cols,
            },
        }
    )


def ctx(
    frame: pl.DataFrame,
    config: ProjectConfig | None = None,
    seg: str | None = None,
    sup: SuppressionSet | None = None,
) -> FilterContext:
    config = config or cfg()
    segment = parse_segment(seg or "name: s\nwhere:\n  diagnosis_codes: {contains: E11.9}\n")
    return FilterContext(
        config, frame, AS_OF, phi_finding(segment, config), sup or SuppressionSet({}, {})
    )


# ---------------------------------------------------------------------------------------
# consent


def test_consent_excludes_no_opt_in_null_dnc_deceased():
    frame = pl.DataFrame(
        {
            "opt": [True, False, None, True, True, True],
            "dnc": [False, False, False, True, None, False],
            "dead": [False, False, False, False, False, True],
        }
    )
    v = consent(BASE.rule("consent"), ctx(frame))
    assert v.passed and v.excluded is not None
    assert v.excluded.to_list() == [False, True, True, True, False, True]
    assert dict(v.evidence) == {
        "candidates": 6,
        "no_opt_in": 2,
        "do_not_contact": 1,
        "deceased": 1,
        "excluded": 4,
    }


def test_consent_reads_text_flags():
    frame = pl.DataFrame(
        {"opt": ["yes", "N", " true ", None], "dnc": ["0", "1", "", "no"], "dead": [0, 0, 0, 1]}
    )
    v = consent(BASE.rule("consent"), ctx(frame))
    assert v.excluded.to_list() == [False, True, False, True]  # type: ignore[union-attr]


def test_consent_without_configured_deceased_column_says_so():
    frame = pl.DataFrame({"opt": [True], "dnc": [False]})
    v = consent(BASE.rule("consent"), ctx(frame, cfg(deceased=None)))
    assert "no column configured for deceased" in v.detail
    assert v.evidence["excluded"] == 0


# ---------------------------------------------------------------------------------------
# suppression


def test_suppression_matches_normalized_emails_phones_and_ids(tmp_path: Path):
    # (bob's is a placeholder address: never uploaded, still matched when suppressing)
    (tmp_path / "emails.csv").write_text("addr\n  JaneDoe@Gmail.com\nbob@example.org\n")
    (tmp_path / "phones.csv").write_text("tel\n+1 (212) 555-0143\n")
    (tmp_path / "ids.csv").write_text("crm\nC7\n")
    sources = sources_from(
        [
            ("emails.csv", "addr", "email"),
            ("phones.csv", "tel", "phone"),
            ("ids.csv", "crm", "external_id"),
        ],
        tmp_path,
        "test",
    )
    sup = SuppressionSet.load(sources, "US")
    assert sup.entries == {
        str(tmp_path / f): n for f, n in (("emails.csv", 2), ("phones.csv", 1), ("ids.csv", 1))
    }
    frame = pl.DataFrame(
        {
            "id": ["C1", "C2", "C3", "C4", "C7 ", "C9"],
            "email": [
                "jane.doe+ads@gmail.com",
                "BOB@example.org ",
                "carol@clinic.org",
                None,
                None,
                "x@y.com",
            ],
            "phone": [None, None, None, "212.555.0143", None, "2125550199"],
            "country": ["US"] * 6,
        }
    )
    v = suppression(BASE.rule("suppression"), ctx(frame, sup=sup))
    assert v.excluded.to_list() == [True, True, False, True, True, False]  # type: ignore[union-attr]
    assert v.evidence["excluded"] == 4 and v.evidence["list_entries"] == 4


def test_empty_suppression_excludes_nobody():
    frame = pl.DataFrame({"id": ["C1"], "email": ["a@b.com"], "phone": [None], "country": ["US"]})
    v = suppression(BASE.rule("suppression"), ctx(frame))
    assert v.excluded.to_list() == [False]  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------
# minors


@pytest.mark.parametrize(
    ("pack", "expected"),
    [(BASE, [True, False, False, False]), (HIPAA, [True, False, False, True])],
)
def test_minors_edges_and_unknown_age(pack, expected):
    frame = pl.DataFrame({"age": pl.Series([17, 18, 80, None], dtype=pl.Int32)})
    v = minors(pack.rule("minors"), ctx(frame))
    assert v.excluded.to_list() == expected  # type: ignore[union-attr]
    assert v.evidence["under_age"] == 1 and v.evidence["unknown_age"] == 1


# ---------------------------------------------------------------------------------------
# PHI authorization


def test_authorization_validity_edges():
    d = AS_OF
    day = dt.timedelta(days=1)
    frame = pl.DataFrame(
        {
            "auth": [d, d + day, d - day, d - day, d - day, d - day, None],
            "exp": [None, None, d, d + day, None, None, None],
            "rev": [None, None, None, None, d, d + day, None],
        }
    )
    v = phi_authorization(HIPAA.rule("phi-authorization"), ctx(frame))
    # signed today ok · signed tomorrow no · expires today no · expires tomorrow ok ·
    # revoked today no · revoked tomorrow ok · never signed no
    assert v.excluded.to_list() == [False, True, True, False, True, False, True]  # type: ignore[union-attr]
    assert v.passed and v.evidence["lacking_authorization"] == 4


def test_authorization_dates_as_text():
    frame = pl.DataFrame(
        {"auth": ["2025-01-01", "garbage"], "exp": [None, None], "rev": ["", None]}
    )
    v = phi_authorization(HIPAA.rule("phi-authorization"), ctx(frame))
    assert v.excluded.to_list() == [False, True]  # type: ignore[union-attr]


def test_block_mode_fails_phi_segment():
    frame = pl.DataFrame({"auth": [AS_OF], "exp": [None], "rev": [None]})
    v = phi_authorization(BASE.rule("phi-authorization"), ctx(frame))
    assert v.status == "fail" and v.blocking
    assert "diagnosis_codes" in v.detail


def test_non_phi_segment_passes_untouched():
    frame = pl.DataFrame({"auth": [None], "exp": [None], "rev": [None], "zip": ["10001"]})
    v = phi_authorization(
        BASE.rule("phi-authorization"), ctx(frame, seg="name: s\nwhere:\n  zip: {eq: '10001'}\n")
    )
    assert v.passed and v.excluded.to_list() == [False]  # type: ignore[union-attr]


def test_no_authorization_column_means_nobody_is_authorized():
    frame = pl.DataFrame({"x": [1, 2]})
    v = phi_authorization(
        HIPAA.rule("phi-authorization"), ctx(frame, cfg(hipaa_authorization_date=None))
    )
    assert v.excluded.to_list() == [True, True]  # type: ignore[union-attr]
    assert "nobody is authorized" in v.detail


@pytest.mark.parametrize(
    ("text", "phi", "field"),
    [
        ("where:\n  service_lines: {contains: oncology}\n", True, "columns"),
        ("where:\n  days_since_last_portal_login: {lte: 30}\n", True, "derived_fields"),
        ("where:\n  event: {type: portal_login, within: 30d}\n", True, "event_types"),
        (
            "where:\n  event: {type: visit, where: {department: {eq: oncology}}}\n",
            True,
            "event_columns",
        ),
        ("where:\n  event: {type: visit, within: 30d}\n", False, None),
        ("where:\n  all: [{age: {gte: 50}}, {zip: {eq: '10001'}}]\n", False, None),
        (
            "where:\n  zip: {eq: '1'}\nexclude:\n  diagnosis_codes: {contains: F32}\n",
            True,
            "columns",
        ),
    ],
)
def test_phi_derivation(text, phi, field):
    config = cfg()
    finding = phi_finding(parse_segment("name: s\n" + text), config)
    assert finding.derived is phi
    if field:
        assert getattr(finding, field)


# ---------------------------------------------------------------------------------------
# destination rules

META = Destination("meta", "meta", "act_1")
GADS = Destination("gads", "google_ads", "1")
FILE = Destination("file", "file", "local:x")


def test_sensitive_destination():
    config = cfg()
    phi = phi_finding(
        parse_segment("name: s\nwhere:\n  diagnosis_codes: {contains: E11}\n"), config
    )
    plain = phi_finding(parse_segment("name: s\nwhere:\n  zip: {eq: '1'}\n"), config)
    rule = BASE.rule("google-health")
    assert sensitive_destination(rule, GADS, phi).status == "fail"
    assert sensitive_destination(rule, GADS, plain).status == "pass"
    assert sensitive_destination(rule, META, phi).status == "pass"


@pytest.mark.parametrize(
    ("dest", "members", "passed"),
    [(META, 100, True), (META, 99, False), (FILE, 100, True), (FILE, 99, False), (GADS, 0, False)],
)
def test_min_size_edges(dest, members, passed):
    v = min_size(BASE.rule("min-size"), dest, members)
    assert v.passed is passed
    assert v.evidence["threshold"] == 100


def test_min_size_platform_and_destination_minimums():
    rule = BASE.rule("min-size")
    custom = Rule(
        rule.id,
        rule.kind,
        rule.severity,
        MinSizeParams(
            k=50, platform_minimums={"google_ads": 1000}, destination_minimums={"meta": 300}
        ),
        rule.rationale,
        rule.source,
    )
    assert min_size(custom, GADS, 999).passed is False
    assert min_size(custom, GADS, 1000).passed is True
    assert min_size(custom, META, 299).evidence["threshold"] == 300
    assert min_size(custom, FILE, 50).passed is True
    assert min_size(custom, FILE, 49).passed is False


def test_warn_severity_reports_without_blocking():
    rule = BASE.rule("min-size")
    warn = Rule(rule.id, rule.kind, "warn", rule.params, rule.rationale, rule.source)
    v = min_size(warn, META, 5)
    assert v.status == "warn" and not v.blocking
