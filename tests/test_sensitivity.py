"""Issue #15 item 6: sensitivity that does not hinge on spelling.

Rules (docs/policy-rules.md, "Sensitivity matching"): sensitive names match case- and
punctuation-insensitively; `validate` refuses a configured sensitive type or column the
data never has and warns about undeclared columns that look derived from health data;
under hipaa-marketing a segment may read only classified contacts columns.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest
from conftest import AS_OF, frozen_clock

from policies.rules import sensitivity_key

DAY = AS_OF.isoformat()


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


@pytest.mark.parametrize(
    "spelling", ["portal_login", "Portal_Login", "PORTAL-LOGIN", " portal.login ", "Portal Login"]
)
def test_spellings_of_one_name_share_a_key(spelling: str) -> None:
    assert sensitivity_key(spelling) == sensitivity_key("portal_login") == "portallogin"


def test_different_names_keep_different_keys() -> None:
    assert sensitivity_key("portal_login") != sensitivity_key("portal_logout")
    assert sensitivity_key("") == ""


def _rename_event_type(p: Any, old: str, new: str) -> None:
    path = p.root / "data" / "events.parquet"
    events = pl.read_parquet(path)
    events.with_columns(
        pl.when(pl.col("event_type") == old).then(pl.lit(new)).otherwise(pl.col("event_type"))
        .alias("event_type")
    ).write_parquet(path)  # fmt: skip


PORTAL = (
    "name: portal-users\ndescription: people who logged in to the portal\n"
    "destinations: [file]\nwhere:\n  all:\n    - age: {gte: 18}\n"
    "    - event: {type: Portal_Login, within: 3650d}\n"
)


def test_attack_portal_login_spelled_differently_is_still_phi(make_project: Any) -> None:
    """The data says `Portal_Login`, the config `portal_login`: the segment is PHI-derived."""
    p = make_project(rows=3000)
    _rename_event_type(p, "portal_login", "Portal_Login")
    (p.root / "segments" / "portal-users.yaml").write_text(PORTAL)
    result = p.cli("build", "portal-users", "--as-of", DAY, "--json")
    assert result.exit_code in (0, 3), result.stderr
    (b,) = json.loads(result.stdout)["builds"]
    report = json.loads(p.cli("report", b["build_id"], "--format", "json").stdout)
    assert report["segment"]["phi_derived"] is True
    assert report["segment"]["event_types"] == ["Portal_Login"]


def test_validate_refuses_a_sensitive_type_that_never_occurs(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    p.edit_toml(
        lambda t: t.replace(
            'sensitive_types = ["portal_login"]', 'sensitive_types = ["portal_logon"]'
        )
    )
    result = p.cli("validate", "--as-of", DAY)
    assert result.exit_code == 1
    assert "sensitive_types lists ['portal_logon'], which never occur in the data" in result.stderr


def test_validate_accepts_a_sensitive_type_spelled_differently_in_the_data(
    make_project: Any,
) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    _rename_event_type(p, "portal_login", "Portal-Login")
    result = p.cli("validate", "--as-of", DAY)
    assert result.exit_code == 0, result.stderr


def test_validate_refuses_a_sensitive_column_the_contacts_lack(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    p.edit_toml(lambda t: t.replace('"insurance_type"]', '"insurance_typ"]'))
    result = p.cli("validate", "--as-of", DAY)
    assert result.exit_code == 1 and "'insurance_typ'" in result.stderr


def _add_care_program(p: Any) -> None:
    contacts = p.contacts()
    p.write_contacts(
        contacts.with_columns(
            pl.when(pl.col("diagnosis_codes").list.len() > 0)
            .then(pl.lit("diabetes"))
            .otherwise(pl.lit("none"))
            .alias("care_program")
        )
    )


CARE = (
    "name: care\ndescription: people in a care program\ndestinations: [file]\n"
    "where:\n  all:\n    - age: {gte: 18}\n    - care_program: {eq: diabetes}\n"
)


def test_attack_an_unclassified_column_blocks_under_hipaa_marketing(make_project: Any) -> None:
    """A care-program flag derived from diagnoses, not declared: validate and build refuse
    and say what to add; declaring it sensitive makes the segment PHI-derived."""
    p = make_project(rows=3000)
    _add_care_program(p)
    (p.root / "segments" / "care.yaml").write_text(CARE)
    for args in (("validate",), ("build", "care")):
        result = p.cli(*args, "--as-of", DAY)
        assert result.exit_code == 1, result.stdout
        assert '"care_program"' in result.stderr and "not_sensitive = [" in result.stderr
        assert "[columns]" in result.stderr
    p.edit_toml(lambda t: t.replace('"insurance_type"]', '"insurance_type", "care_program"]'))
    build = p.cli("build", "care", "--as-of", DAY, "--json")
    assert build.exit_code in (0, 3), build.stderr
    build_id = json.loads(build.stdout)["builds"][0]["build_id"]
    report = json.loads(p.cli("report", build_id, "--format", "json").stdout)
    assert report["segment"]["columns"] == ["care_program"]


def test_validate_warns_about_an_undeclared_derived_column(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    _add_care_program(p)  # no segment reads it: a warning, not an error
    result = p.cli("validate", "--as-of", DAY)
    assert result.exit_code == 0, result.stderr
    assert (
        "Warning: audiences.toml: contacts column 'care_program' looks derived from health data"
        in result.stderr
    )
    assert "add it to [columns] sensitive" in result.stderr
    doc = p.cli_json("validate", "--as-of", DAY)
    assert not doc["errors"]
    assert any(
        "'care_program' looks derived from health data" in w["message"] for w in doc["warnings"]
    )


def test_the_baseline_pack_does_not_require_classification(make_project: Any) -> None:
    p = make_project(rows=3000)
    _add_care_program(p)
    p.edit_toml(lambda t: t.replace('pack = "hipaa-marketing"', 'pack = "baseline"'))
    (p.root / "segments" / "care.yaml").write_text(CARE)
    result = p.cli("validate", "--as-of", DAY)
    assert result.exit_code == 0, result.stderr


def test_a_column_both_sensitive_and_not_is_a_config_error(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    p.edit_toml(
        lambda t: t.replace(
            'not_sensitive = ["preferred_language"', 'not_sensitive = ["insurance_type"'
        )
    )
    result = p.cli("validate", "--as-of", DAY)
    assert result.exit_code == 1
    assert "both sensitive and not_sensitive" in result.stderr
