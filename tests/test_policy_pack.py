"""Policy packs: built-ins, project packs that extend them, digests, and bad packs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from audiences.core.config import ProjectConfig
from audiences.core.errors import ConfigError
from policies.pack import builtin_names, builtin_pack, load_pack


def config(root: Path, pack: str = "baseline", **policy: Any) -> ProjectConfig:
    return ProjectConfig.model_validate(
        {
            "sources": {"contacts": {"path": "c.csv"}},
            "identity": {"external_id": "contact_id", "email": "email"},
            "consent": {"marketing_opt_in": "opt_in"},
            "policy": {"pack": pack, **policy},
        }
    ).model_copy(update={"root": root})


def project_pack(root: Path, text: str, name: str = "ours.yaml") -> str:
    (root / "policies").mkdir(exist_ok=True)
    (root / "policies" / name).write_text(text)
    return f"policies/{name}"


def test_builtin_packs_load_and_validate():
    assert builtin_names() == [
        "baseline",
        "ccpa-sensitive",
        "gdpr-health",
        "hipaa-marketing",
        "wa-mhmda",
    ]
    base = builtin_pack("baseline")
    kinds = [r.kind for r in base.rules]
    for kind in ("consent", "suppression", "minors", "phi_authorization", "min_size", "difference"):
        assert kind in kinds
    for r in base.rules:
        assert r.rationale.strip() and r.source.strip()


def test_hipaa_pack_extends_baseline_with_overrides():
    hipaa = builtin_pack("hipaa-marketing")
    assert hipaa.extends == ("baseline",)
    assert [r.id for r in hipaa.rules] == [r.id for r in builtin_pack("baseline").rules]
    assert hipaa.rule("phi-authorization").params.mode == "authorized_only"  # type: ignore[attr-defined]
    assert hipaa.rule("minors").params.unknown_age == "exclude"  # type: ignore[attr-defined]
    assert hipaa.rule("difference").params.k_diff == 100  # type: ignore[attr-defined]
    assert "164.508" in hipaa.rule("phi-authorization").source


def test_digest_is_stable_and_changes_with_any_parameter(tmp_path):
    a = load_pack(config(tmp_path, "hipaa-marketing"))
    b = load_pack(config(tmp_path, "hipaa-marketing"))
    assert a.digest == b.digest and a.digest.startswith("sha256:")
    path = project_pack(
        tmp_path,
        "name: ours\nversion: 1\nextends: hipaa-marketing\nrules:\n"
        "  - id: min-size\n    params: {k: 101}\n",
    )
    ours = load_pack(config(tmp_path, path))
    assert ours.digest != a.digest
    assert ours.rule("min-size").params.k == 101  # type: ignore[attr-defined]
    # untouched params are inherited
    assert ours.rule("min-size").params.platform_minimums == {"meta": 100, "google_ads": 100}  # type: ignore[attr-defined]
    assert ours.extends == ("hipaa-marketing", "baseline")


def test_project_pack_can_add_rules_and_relax_severity(tmp_path):
    path = project_pack(
        tmp_path,
        "name: ours\nversion: '2'\nextends: baseline\nrules:\n"
        "  - id: minors\n    severity: warn\n"
        "  - id: min-size-gads\n    rule: min_size\n    params: {k: 2, platform_minimums: {google_ads: 1000}}\n"
        "    rationale: Display surfaces need 1000.\n    source: Google Customer Match policy.\n",
    )
    pack = load_pack(config(tmp_path, path))
    assert pack.rule("minors").severity == "warn"
    assert pack.rules[-1].id == "min-size-gads"
    assert pack.rules[-1].severity == "block"


def test_suppression_lists_from_config_are_checked_and_kept(tmp_path):
    (tmp_path / "optouts.csv").write_text("email\na@b.com\n")
    pack = load_pack(
        config(tmp_path, suppression=[{"path": "optouts.csv", "column": "email", "kind": "email"}])
    )
    assert [s.path.name for s in pack.suppression_lists] == ["optouts.csv"]


BAD_PACKS = [
    (
        "unknown rule kind",
        "name: x\nversion: 1\nextends: baseline\nrules:\n  - id: new\n    rule: vibes\n"
        "    rationale: r\n    source: s\n",
        r"ours\.yaml: rule 'new' has unknown rule kind 'vibes' — use one of: consent",
    ),
    (
        "missing parameter",
        "name: x\nversion: 1\nextends: baseline\nrules:\n  - id: k2\n    rule: min_size\n"
        "    params: {platform_minimums: {}}\n    rationale: r\n    source: s\n",
        r"rule 'k2' \(min_size\) is missing parameter 'k' — add params\.k",
    ),
    (
        "k below 2",
        "name: x\nversion: 1\nextends: baseline\nrules:\n  - id: min-size\n    params: {k: 1}\n",
        r"rule 'min-size' \(min_size\) parameter 'k'.* — set k to 2 or more",
    ),
    (
        "k_diff below 2",
        "name: x\nversion: 1\nextends: baseline\nrules:\n  - id: difference\n    params: {k_diff: 0}\n",
        r"rule 'difference' \(difference\) parameter 'k_diff'.* — set k_diff to 2 or more",
    ),
    (
        "unknown parameter",
        "name: x\nversion: 1\nextends: baseline\nrules:\n  - id: minors\n    params: {max_age: 3}\n",
        r"rule 'minors' \(minors\) has unknown parameter 'max_age'",
    ),
    (
        "bad mode",
        "name: x\nversion: 1\nextends: baseline\nrules:\n  - id: phi-authorization\n"
        "    params: {mode: sometimes}\n",
        r"rule 'phi-authorization' \(phi_authorization\) parameter 'mode'",
    ),
    (
        "kind change",
        "name: x\nversion: 1\nextends: baseline\nrules:\n  - id: minors\n    rule: consent\n",
        r"rule 'minors' is a minors rule in the base pack and can't become consent",
    ),
    (
        "new rule without rationale",
        "name: x\nversion: 1\nextends: baseline\nrules:\n  - id: more\n    rule: min_size\n"
        "    params: {k: 5, platform_minimums: {}}\n",
        r"new rule 'more' is missing rationale, source",
    ),
    (
        "no extends",
        "name: x\nversion: 1\nrules: []\n",
        r"a project policy pack must extend a built-in pack — add `extends: baseline`",
    ),
    (
        "unknown base",
        "name: x\nversion: 1\nextends: strict\n",
        r"extends unknown pack 'strict' — extend a built-in pack: baseline, ccpa-sensitive, gdpr-health, hipaa-marketing, wa-mhmda",
    ),
    (
        "unknown key",
        "name: x\nversion: 1\nextends: baseline\nrulez: []\n",
        r"unknown key 'rulez'",
    ),
    (
        "severity typo",
        "name: x\nversion: 1\nextends: baseline\nrules:\n  - id: minors\n    severity: blocking\n",
        r"rule 'minors' severity",
    ),
    (
        "duplicate id",
        "name: x\nversion: 1\nextends: baseline\nrules:\n  - id: minors\n  - id: minors\n",
        r"rule 'minors' appears twice",
    ),
    ("not yaml", "name: [x\n", r"ours\.yaml:\d+: malformed YAML"),
    (
        "suppression list unknown column",
        "name: x\nversion: 1\nextends: baseline\nrules:\n  - id: suppression\n"
        "    params: {lists: [{path: list.csv, column: mail, kind: email}]}\n",
        r"suppression list .*list\.csv has no column 'mail' \(columns: email\) — set `column`",
    ),
    (
        "suppression list missing file",
        "name: x\nversion: 1\nextends: baseline\nrules:\n  - id: suppression\n"
        "    params: {lists: [{path: nope.csv, column: email, kind: email}]}\n",
        r"rule 'suppression'.*: suppression list .*nope\.csv does not exist",
    ),
]


@pytest.mark.parametrize(("case", "text", "match"), BAD_PACKS, ids=[c[0] for c in BAD_PACKS])
def test_bad_packs(tmp_path, case, text, match):
    (tmp_path / "list.csv").write_text("email\nx@y.com\n")
    path = project_pack(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_pack(config(tmp_path, path))
    assert info.value.exit_code == 1


@pytest.mark.parametrize(
    ("suppression", "match"),
    [
        (
            [{"path": "optouts.csv", "column": "phone", "kind": "phone"}],
            r"\[policy\] suppression: suppression list .*optouts\.csv has no column 'phone'",
        ),
        (
            [{"path": "missing.csv", "column": "email", "kind": "email"}],
            r"missing\.csv does not exist — create the file or fix its path",
        ),
    ],
)
def test_bad_config_suppression_lists(tmp_path, suppression, match):
    (tmp_path / "optouts.csv").write_text("email\na@b.com\n")
    with pytest.raises(ConfigError, match=match):
        load_pack(config(tmp_path, suppression=suppression))


def test_pack_outside_policies_folder_is_refused(tmp_path):
    (tmp_path / "elsewhere.yaml").write_text("name: x\nversion: 1\nextends: baseline\n")
    with pytest.raises(
        ConfigError,
        match=r"neither a built-in pack .* nor a file in the project's policies/ folder",
    ):
        load_pack(config(tmp_path, "elsewhere.yaml"))


def test_missing_pack_file(tmp_path):
    (tmp_path / "policies").mkdir()
    with pytest.raises(ConfigError, match=r"policy pack file .*nope\.yaml does not exist"):
        load_pack(config(tmp_path, "policies/nope.yaml"))


def test_opt_in_rule_needs_the_opt_in_column(tmp_path):
    cfg = ProjectConfig.model_validate(
        {
            "sources": {"contacts": {"path": "c.csv"}},
            "identity": {"external_id": "contact_id"},
        }
    ).model_copy(update={"root": tmp_path})
    with pytest.raises(
        ConfigError, match=r"requires marketing opt-in but \[consent\] marketing_opt_in"
    ):
        load_pack(cfg)


def test_unknown_builtin_name_suggests_builtins(tmp_path):
    with pytest.raises(ConfigError, match="no built-in policy pack 'strict'"):
        builtin_pack("strict")


# --- the privacy budget: a project pack may tighten it, not loosen it -----------------------

HIPAA = "name: ours\nversion: 1\nextends: hipaa-marketing\n"


def test_a_project_pack_inherits_and_may_tighten_the_budget(tmp_path):
    base = builtin_pack("hipaa-marketing").budget
    inherited = load_pack(config(tmp_path, project_pack(tmp_path, HIPAA))).budget
    assert inherited == base
    tighter = "budget:\n  epsilon_per_period: 3\n  period: quarter\n"
    ours = load_pack(config(tmp_path, project_pack(tmp_path, HIPAA + tighter))).budget
    assert (ours.epsilon_per_period, ours.period) == (3.0, "quarter")
    # what the pack does not set is its base's, not the defaults'
    assert ours.max_epsilon_per_query == base.max_epsilon_per_query
    assert ours.build_summary_epsilon == base.build_summary_epsilon
    same = f"budget:\n  epsilon_per_period: {base.epsilon_per_period}\n"
    assert load_pack(config(tmp_path, project_pack(tmp_path, HIPAA + same))).budget == base


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("  epsilon_per_period: 1000\n", "epsilon_per_period"),
        ("  epsilon_per_period: 6\n  max_epsilon_per_query: 6\n", "max_epsilon_per_query"),
        ("  epsilon_per_period: 6\n  delta_per_period: 0.000001\n", "delta_per_period"),
        ("  epsilon_per_period: 6\n  period: day\n", "period"),
        ("  epsilon_per_period: 6\n  refresh_on_unchanged_data: true\n", "refresh_on_unchanged"),
        ("  epsilon_per_period: 6\n  build_summary_epsilon: 0.5\n", "build_summary_epsilon"),
    ],
)
def test_a_project_pack_never_loosens_the_budget(tmp_path, setting, named):
    """The attack: anyone who can edit policies/ and audiences.toml writes a pack with a
    larger budget; previews and overlaps need no approval, so exact counts followed."""
    path = project_pack(tmp_path, HIPAA + "budget:\n" + setting)
    with pytest.raises(ConfigError, match="loosens the privacy budget") as err:
        load_pack(config(tmp_path, path))
    assert named in str(err.value)


def test_a_budget_that_contradicts_itself_once_merged_is_refused(tmp_path):
    # ε 0.5 per month under hipaa-marketing's 1.0 per query: the pack must lower both
    path = project_pack(tmp_path, HIPAA + "budget:\n  epsilon_per_period: 0.5\n")
    with pytest.raises(ConfigError, match="budget"):
        load_pack(config(tmp_path, path))
