"""audiences.toml loading: the template loads; every bad input is one clear ConfigError."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import AS_OF

from audiences.core.config import load_config
from audiences.core.errors import ConfigError
from audiences.pipeline.project import init_project


@pytest.fixture
def project(tmp_path: Path) -> Path:
    init_project(tmp_path / "p")
    return tmp_path / "p"


def test_template_loads(project: Path) -> None:
    config = load_config(project)
    assert config.sources.contacts.id == "contact_id"
    assert config.identity.email == "email"
    assert config.root == project.resolve()
    assert config.state_db == project.resolve() / ".audiences" / "state.db"
    assert set(config.destinations) == {"file", "meta", "google", "google_ads"}
    assert config.destination("meta").kind == "meta"


def test_template_maps_consent_per_purpose_and_documents_the_jurisdiction_packs(
    project: Path,
) -> None:
    from policies.pack import load_pack

    config = load_config(project)
    assert config.consent.share_health_data == "share_health_data"
    assert config.consent.explicit_health_marketing == "explicit_health_marketing"
    assert config.consent.limit_sensitive_pi == "limit_sensitive_pi"
    assert config.consent.opt_out_of_sharing == "opt_out_of_sharing"
    assert config.policy.pack_specs == ("hipaa-marketing",)  # mapped, they change nothing
    # both Google signals are mapped by default (gdpr-health reads them); the commented
    # line the template documents turns the packs on
    assert config.consent.ad_user_data == "ad_user_data_consent"
    assert config.consent.ad_personalization == "ad_personalization_consent"
    toml = project / "audiences.toml"
    text = toml.read_text(encoding="utf-8")
    for line in ("# packs = [",):
        assert text.count(line) == 1, line
        text = text.replace(line, line.removeprefix("# "))
    toml.write_text(text, encoding="utf-8")
    pack = load_pack(load_config(project))
    assert pack.name == "hipaa-marketing + wa-mhmda + gdpr-health + ccpa-sensitive"


def test_init_refuses_to_overwrite(project: Path) -> None:
    with pytest.raises(ConfigError, match="already exists"):
        init_project(project)
    assert init_project(project, force=True)


def _edit(project: Path, old: str, new: str) -> None:
    path = project / "audiences.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "pattern"),
    [
        ("[project]", "[project\n", r"malformed TOML"),
        ('id = "contact_id"', 'idd = "contact_id"', r"unknown key 'sources.contacts.idd'"),
        ("[identity]", "[identty]", r"unknown key 'identty'.*did you mean 'identity'"),
        (
            'ad_account_id = "act_1234567890"',
            'ad_account_id = "1000000001"',
            r"\[destinations.meta\] ad_account_id",
        ),
        ('customer_id = "123-456-7890"', 'customer_id = "123-456"', r"10-digit"),
        (
            'kind = "file"',
            'kind = "ftp"',
            r"unknown destination kind 'ftp'.*file, google_ads, google_data_manager, meta",
        ),
        (
            'access_token_env = "META_ACCESS_TOKEN"',
            'access_token = "EAAB123"',
            r"unknown key 'access_token'",
        ),
        ('default_country = "US"', 'default_country = "United States"', r"default_country"),
        (
            'quasi_identifiers = ["birth_date", "zip", "sex"]',
            'quasi_identifiers = ["birth_date", "zip", "sex", "insurance_type"]',
            r"both sensitive and quasi_identifiers",
        ),
        (  # per-purpose words: only for the per-purpose columns ...
            "\n[policy]\n",
            '\n[consent.words.marketing_opt_in]\ngranted = ["Y"]\ndenied = ["N"]\n\n[policy]\n',
            r"only the per-purpose consent columns",
        ),
        (  # ... one meaning per word (compared as cleaned: case, spaces, _ and -)
            "\n[policy]\n",
            '\n[consent.words.opt_out_of_sharing]\ngranted = ["GPC sent"]\n'
            'denied = ["gpc_SENT", "none"]\n\n[policy]\n',
            r"\['gpc sent'\] are both granted and denied",
        ),
        (
            "\n[policy]\n",
            '\n[consent.words.limit_sensitive_pi]\ngranted = ["Y"]\ndenied = []\n\n[policy]\n',
            r"consent.words.limit_sensitive_pi.denied",
        ),
        (  # ... of a column that is mapped
            'opt_out_of_sharing = "opt_out_of_sharing"',
            '[consent.words.opt_out_of_sharing]\ngranted = ["Y"]\ndenied = ["N"]',
            r"\[consent.words.opt_out_of_sharing\] but \[consent\] opt_out_of_sharing is not set",
        ),
    ],
)
def test_bad_config(project: Path, old: str, new: str, pattern: str) -> None:
    _edit(project, old, new)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(project)
    assert "audiences.toml" in info.value.message
    assert "\n" not in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no audiences.toml.*audiences init"):
        load_config(tmp_path)


def test_non_utf8(project: Path) -> None:
    (project / "audiences.toml").write_bytes("name = 'caf\xe9'".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(project)


def test_unknown_destination_name(project: Path) -> None:
    config = load_config(project)
    with pytest.raises(ConfigError, match=r"unknown destination 'tiktok' \(configured: file"):
        config.destination("tiktok")


# ------------------------------------------------- validate: Google's two consent signals
@pytest.fixture
def with_data(project: Path, sample_crm: Any) -> Path:
    (project / "data").mkdir(exist_ok=True)
    for name in ("contacts.parquet", "events.parquet"):
        shutil.copyfile(sample_crm(500) / name, project / "data" / name)
    return project


def consent_findings(project: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from audiences.pipeline.project import check_project

    doc = check_project(load_config(project), as_of=AS_OF)
    signal = ("ad_user_data", "ad_personalization")
    return (
        [e for e in doc["errors"] if any(f"[consent] {k}" in e["message"] for k in signal)],
        [w for w in doc["warnings"] if w["code"] == "consent"],
    )


def unmap(project: Path, key: str) -> None:
    _edit(project, f'{key} = "{key}_consent"\n', "")


def test_validate_is_quiet_when_both_google_signals_are_mapped(with_data: Path) -> None:
    assert consent_findings(with_data) == ([], [])


def test_validate_warns_of_an_unmapped_google_signal_naming_the_key_and_the_fix(
    with_data: Path,
) -> None:
    """The attack: drop the ad_user_data mapping so that the denials the CRM records are
    not read. validate says so (a warning: the release still leaves EEA people out)."""
    unmap(with_data, "ad_user_data")
    errors, warnings = consent_findings(with_data)
    assert errors == [] and len(warnings) == 1
    (w,) = warnings
    assert "[consent] ad_user_data is not mapped" in w["message"]
    assert "'google'" in w["message"] and "'google_ads'" in w["message"]
    assert "[consent] ad_user_data" in w["fix"] and w["file"] == "audiences.toml"
    unmap(with_data, "ad_personalization")
    assert {w["message"].split(" is not")[0] for w in consent_findings(with_data)[1]} == {
        "[consent] ad_user_data",
        "[consent] ad_personalization",
    }


def test_validate_does_not_warn_without_a_google_destination(with_data: Path) -> None:
    unmap(with_data, "ad_user_data")
    text = (with_data / "audiences.toml").read_text(encoding="utf-8")
    head, _, _ = text.partition("# Google: new projects")
    _, _, tail = text.partition("[approvers]")
    (with_data / "audiences.toml").write_text(head + "[approvers]" + tail, encoding="utf-8")
    (with_data / "segments" / "flu-shot-reminder.yaml").unlink()  # it names google
    assert set(load_config(with_data).destinations) == {"file", "meta"}
    assert consent_findings(with_data) == ([], [])
    # a file made for a Google upload sends to Google too
    _edit(with_data, 'kind = "file"\n', 'kind = "file"\nfor = "google_ads"\n')
    (w,) = consent_findings(with_data)[1]
    assert "'file' send(s) to Google" in w["message"]


def test_validate_errors_when_gdpr_health_needs_the_unmapped_signal(with_data: Path) -> None:
    unmap(with_data, "ad_user_data")
    _edit(with_data, "# packs = [", "packs = [")
    errors, warnings = consent_findings(with_data)
    (e,) = errors
    assert "reads [consent] ad_user_data, which is not set" in e["message"]
    assert "[consent] ad_user_data" in e["fix"]
    assert warnings == []  # the error says it already
