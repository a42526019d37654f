"""Record-level file exports through the policy gate (docs/privacy-insights.md, "Record-level exports").

The gate anonymizes the released people's attribute columns, the file connector writes
them; pycanon checks the written file independently.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from conftest import frozen_clock
from pycanon import anonymity

from audiences.core.config import ProjectConfig, load_config
from audiences.core.errors import ConfigError
from audiences.core.state import connect, transaction
from audiences.crm.identifiers import member_key
from audiences.segments import parse_segment
from connectors.file import FileConnector, FileDestinationConfig, record_export, record_exports
from policies.gate import GateInput, GateOutcome, evaluate, record
from policies.pack import load_pack
from policies.report import render

AS_OF = dt.date(2025, 6, 1)


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


SALT = b"test-salt-for-member-keys-000000"
INSURANCE = ["commercial", "medicare", "medicaid", "self_pay"]
AGENCY = parse_segment("name: agency-file\ndestinations: [agency]\nwhere:\n  age: {gte: 18}\n")
ATTRIBUTES = {"age": "age", "zip": "zip", "sex": "categorical"}


def make_config(
    root: Path,
    agency: dict[str, Any],
    *,
    pack: str = "baseline",
    quasi_identifiers: tuple[str, ...] = ("birth_date", "zip", "sex"),
) -> ProjectConfig:
    data: dict[str, Any] = {
        "sources": {"contacts": {"path": "contacts.csv"}},
        "identity": {
            "external_id": "contact_id",
            "email": "email",
            "phone": "phone",
            "zip": "zip",
            "birth_date": "birth_date",
            "gender": "sex",
        },
        "columns": {
            "sensitive": ["diagnosis_codes", "insurance_type"],
            "quasi_identifiers": list(quasi_identifiers),
        },
        "consent": {
            "marketing_opt_in": "opt_in",
            "hipaa_authorization_date": "auth",
            "hipaa_authorization_expires": "auth_expires",
            "hipaa_authorization_revoked": "auth_revoked",
        },
        "destinations": {"agency": {"kind": "file", "path": "exports", **agency}},
        "policy": {"pack": pack},
    }
    return ProjectConfig.model_validate(data).model_copy(update={"root": root})


def people(n: int, seed: int = 3) -> pl.DataFrame:
    """Candidates as the build hands them to the gate (every contacts column + age)."""
    rng = np.random.default_rng(seed)
    ages = rng.integers(18, 90, n)
    return pl.DataFrame(
        {
            "contact_id": [f"C{i:09d}" for i in range(n)],
            "email": [f"person.{i}@clinic.com" for i in range(n)],
            "phone": [f"(212) 555-{i:04d}" for i in range(n)],
            "zip": rng.choice(["10001", "10013", "10027", "11201", "11215", "94110"], n),
            "birth_date": [dt.date(2025 - int(a), 1, 1) for a in ages],
            "sex": rng.choice(["F", "M"], n),
            "opt_in": [True] * n,
            "auth": [dt.date(2024, 1, 1)] * n,
            "auth_expires": pl.Series([None] * n, dtype=pl.Date),
            "auth_revoked": pl.Series([None] * n, dtype=pl.Date),
            "insurance_type": rng.choice(INSURANCE, n, p=[0.5, 0.25, 0.15, 0.1]),
            "diagnosis_codes": [["E11.9"]] * n,
            "age": pl.Series(ages, dtype=pl.Int32),
        }
    ).with_columns(member_key("contact_id", SALT))


@pytest.fixture
def project(tmp_path: Path) -> Any:
    state_dir = tmp_path / ".audiences"
    conn = connect(state_dir / "state.db")
    yield {"root": tmp_path, "state_dir": state_dir, "conn": conn}
    conn.close()


def run(project: dict[str, Any], config: ProjectConfig, frame: pl.DataFrame) -> GateOutcome:
    build_id = f"b-{frame.height}-{id(frame)}"
    with transaction(project["conn"]):
        project["conn"].execute(
            "INSERT INTO builds(build_id, segment, segment_digest, as_of, started_at, "
            "status, actor) VALUES (?,?,?,?,?,?,?)",
            (build_id, AGENCY.name, AGENCY.digest, AS_OF.isoformat(), "t", "running", "tester"),
        )
    return evaluate(
        GateInput(
            build_id=build_id,
            segment=AGENCY,
            config=config,
            pack=load_pack(config),
            candidates=frame,
            destinations=["agency"],
            as_of=AS_OF,
            conn=project["conn"],
            state_dir=project["state_dir"],
            actor="tester",
            record_exports=record_exports(config, ["agency"]),
        )
    )


def export_verdict(outcome: GateOutcome) -> Any:
    return next(v for v in outcome.verdicts if v.id == "record-export")


def write(project: dict[str, Any], config: ProjectConfig, outcome: GateOutcome) -> dict[str, str]:
    record(outcome, project["conn"])
    release = outcome.releases["agency"]
    connector = FileConnector(
        "agency", FileDestinationConfig.model_validate(config.destinations["agency"].model_dump())
    )
    connector.root = project["root"]
    return connector.write(release, {"build_id": release.build_id})


def test_k_anonymous_file_without_identifiers(project: dict[str, Any]) -> None:
    agency = {"attributes": ATTRIBUTES, "anonymity": {"k": 10, "suppression_limit": 0.05}}
    config = make_config(project["root"], agency)
    frame = people(3000)
    outcome = run(project, config, frame)
    assert not outcome.blocked, outcome.block_reasons
    release = outcome.releases["agency"]
    assert release.layouts == ()
    assert release.members.columns == ["member_key", "age", "zip", "sex"]
    files = write(project, config, outcome)

    written = pl.read_csv(files["csv"], infer_schema=False)
    assert written.columns == ["age", "zip", "sex"]  # no identifier, not even the member key
    assert written.height == release.size
    from_parquet = pl.read_parquet(files["parquet"])
    assert from_parquet.schema == written.schema == {c: pl.String for c in written.columns}
    assert from_parquet.equals(written)
    assert anonymity.k_anonymity(written.to_pandas(), ["age", "zip", "sex"]) >= 10
    text = Path(files["csv"]).read_text()
    assert "clinic.com" not in text and "C000000" not in text and "555-" not in text

    v = export_verdict(outcome)
    assert v.passed and v.destination == "agency"
    assert v.evidence["k_achieved"] >= 10
    assert v.evidence["rows_out"] == written.height
    assert v.evidence["rows_in"] - v.evidence["suppressed"] == written.height < frame.height
    # min-size judged the rows really released, not the candidates
    assert next(x for x in outcome.verdicts if x.id == "min-size").evidence["members"] == (
        written.height
    )
    summary = outcome.report["record_exports"][0]
    assert summary["status"] == "released" and summary["identifiers"] == "none"
    assert set(summary["node"]) == {"age", "zip", "sex"}
    assert summary["metrics"]["suppressed"] == v.evidence["suppressed"]
    assert 0 < summary["risk"]["prosecutor_max"] <= 1 / 10
    assert {"journalist_max", "marketer"} <= set(summary["risk"])
    markdown = render(outcome.report, "md")
    assert "record-export" in markdown and "prosecutor max" in markdown
    manifest = json.loads(Path(files["manifest"]).read_text())
    assert manifest["record_level"]["columns"] == ["age", "zip", "sex"]


def test_a_person_with_two_crm_records_counts_once(project: dict[str, Any]) -> None:
    agency = {"attributes": ATTRIBUTES, "anonymity": {"k": 10}}
    frame = people(1000)
    twice = frame.head(300).with_columns(pl.lit("94110").alias("zip"))  # same ids again
    outcome = run(project, make_config(project["root"], agency), pl.concat([frame, twice]))
    assert not outcome.blocked, outcome.block_reasons
    members = outcome.releases["agency"].members
    assert members["member_key"].n_unique() == members.height
    assert export_verdict(outcome).evidence["rows_in"] == 1000
    first = frame.select("member_key", "zip").join(members, on="member_key", suffix="_out")
    generalized = first.filter(pl.col("zip_out").cast(pl.String) != "*")
    assert (  # the kept record is the first one, as in the hashed releases
        generalized["zip"].str.slice(0, 1) == generalized["zip_out"].cast(pl.String).str.slice(0, 1)
    ).all()


def test_sensitive_column_l_diverse_and_t_close_and_needs_authorization(
    project: dict[str, Any],
) -> None:
    agency = {
        "attributes": {"age": "age", "sex": "categorical"},
        "anonymity": {"k": 5, "l": 2, "t": 0.3, "sensitive": "insurance_type"},
    }
    frame = people(600, seed=5)
    # baseline refuses PHI-derived builds: the exported insurance type makes it one
    blocked = run(project, make_config(project["root"], agency), frame)
    assert blocked.blocked
    assert any(r.startswith("phi-authorization") for r in blocked.block_reasons)
    assert blocked.report["segment"]["columns"] == ["insurance_type"]

    config = make_config(project["root"], agency, pack="hipaa-marketing")
    authorized = frame.with_columns(
        pl.when(pl.int_range(pl.len()) % 10 == 0).then(None).otherwise(pl.col("auth")).alias("auth")
    )
    outcome = run(project, config, authorized)
    assert not outcome.blocked, outcome.block_reasons
    written = pl.read_parquet(write(project, config, outcome)["parquet"])
    assert written.columns == ["age", "sex", "insurance_type"]
    assert written.height <= 540  # the unauthorized tenth never reaches the export
    canon = written.to_pandas()
    assert anonymity.k_anonymity(canon, ["age", "sex"]) >= 5
    assert anonymity.l_diversity(canon, ["age", "sex"], ["insurance_type"]) >= 2
    assert anonymity.t_closeness(canon, ["age", "sex"], ["insurance_type"]) <= 0.3 + 1e-9
    summary = outcome.report["record_exports"][0]
    assert summary["metrics"]["t_achieved"] == pytest.approx(
        anonymity.t_closeness(canon, ["age", "sex"], ["insurance_type"])
    )


def test_refused_when_no_node_meets_the_model(project: dict[str, Any]) -> None:
    agency = {"attributes": ATTRIBUTES, "anonymity": {"k": 500, "suppression_limit": 0.0}}
    config = make_config(project["root"], agency)
    outcome = run(project, config, people(300))
    assert outcome.blocked and outcome.releases == {}
    v = export_verdict(outcome)
    assert v.status == "fail"
    assert "no generalization of age, zip, sex reaches k=500" in v.detail
    assert "lattice nodes evaluated" in v.detail and "closest" in v.detail
    reason = next(r for r in outcome.block_reasons if r.startswith("record-export [agency]"))
    assert "reaches k=500" in reason and "suppresses" not in reason  # no exact figures
    assert outcome.report["record_exports"][0]["status"] == "refused"


def test_hashed_file_export_is_unchanged(project: dict[str, Any]) -> None:
    config = make_config(project["root"], {"layouts": ["meta"]})
    outcome = run(project, config, people(200))
    assert not outcome.blocked
    assert outcome.releases["agency"].members.columns[:2] == ["member_key", "meta_EXTERN_ID"]
    assert outcome.report["record_exports"] == []
    assert all(v.id != "record-export" for v in outcome.verdicts)


K10 = {"k": 10}


@pytest.mark.parametrize(
    ("agency", "options", "pattern"),
    [
        ({"attributes": ATTRIBUTES}, {}, "needs an anonymity model"),
        ({"anonymity": K10}, {}, "anonymity is set but no attributes"),
        ({"attributes": ATTRIBUTES, "anonymity": K10, "layouts": ["meta"]}, {}, "carries no identifiers"),
        ({"attributes": ATTRIBUTES, "anonymity": {"k": 10, "l": 2}}, {}, "names no sensitive column"),
        ({"attributes": ATTRIBUTES, "anonymity": {"k": 10, "sensitive": "insurance_type"}}, {}, "k-anonymity alone"),
        ({"attributes": {**ATTRIBUTES, "opt_in": "categorical"}, "anonymity": {"k": 5, "l": 2, "sensitive": "opt_in"}}, {}, "both an attribute and the sensitive column"),
        ({"attributes": {"age": "band"}, "anonymity": K10}, {}, "attributes.age"),
        ({"attributes": ATTRIBUTES, "anonymity": {"k": 1}}, {}, "anonymity.k"),
        ({"attributes": ATTRIBUTES, "anonymity": {"k": 10, "suppression_limit": 1}}, {}, "suppression_limit"),
        ({"attributes": ATTRIBUTES, "anonymity": {"k": 10, "kk": 2}}, {}, "unknown key"),
        ({"attributes": ATTRIBUTES, "anonymity": K10}, {"quasi_identifiers": ()}, "declares no quasi-identifiers"),
        ({"attributes": {"age": "age", "sex": "categorical"}, "anonymity": K10}, {"quasi_identifiers": ("zip", "sex")}, "'age' is not a declared quasi-identifier"),
        ({"attributes": {"insurance_type": "categorical"}, "anonymity": K10}, {}, "'insurance_type' is a sensitive column"),
        ({"attributes": {"age": "age"}, "anonymity": {"k": 5, "l": 2, "sensitive": "zip"}}, {}, "sensitive 'zip' is a quasi-identifier"),
        # a file of hashed identifiers: at least one layout, and its platform's
        ({"layouts": []}, {}, "layouts is empty"),
        ({"for": "google_ads", "layouts": ["meta"]}, {}, "is for google_ads but its layouts"),
        ({"for": "meta", "layouts": ["google_ads"]}, {}, "is for meta but its layouts"),
    ],
)  # fmt: skip
def test_bad_export_settings(
    tmp_path: Path, agency: dict[str, Any], options: dict[str, Any], pattern: str
) -> None:
    config = make_config(tmp_path, agency, **options)
    with pytest.raises(ConfigError, match=pattern) as info:
        record_export(config, "agency")
    assert info.value.message.startswith("[destinations.agency]")


@pytest.mark.parametrize(
    ("attributes", "sensitive", "pattern"),
    [
        ({"age": "age", "postcode": "zip"}, None, "'postcode' is not a contacts column"),
        ({"age": "zip"}, None, r"'age' \(Int32\) does not fit the 'zip' hierarchy"),
        ({"zip": "age"}, None, "needs an integer column"),
        ({"sex": "date"}, None, "needs a date or datetime column"),
        ({"age": "age"}, "diagnosis_codes", "not a single-valued contacts column"),
    ],
)
def test_bad_export_columns_fail_at_the_gate(
    project: dict[str, Any], attributes: dict[str, str], sensitive: str | None, pattern: str
) -> None:
    model: dict[str, Any] = {"k": 5}
    if sensitive:
        model.update(l=2, sensitive=sensitive)
    quasi = ("birth_date", "zip", "sex", "postcode")
    config = make_config(
        project["root"], {"attributes": attributes, "anonymity": model}, quasi_identifiers=quasi
    )
    if sensitive:  # a list column is not among the declared sensitive ones here
        config = config.model_copy(
            update={"columns": config.columns.model_copy(update={"sensitive": []})}
        )
    with pytest.raises(ConfigError, match=pattern):
        run(project, config, people(50))


def test_load_config_rejects_identifiers_next_to_attributes(tmp_path: Path) -> None:
    (tmp_path / "audiences.toml").write_text(
        "[sources.contacts]\npath = 'contacts.csv'\n"
        "[identity]\nexternal_id = 'contact_id'\n"
        "[destinations.agency]\nkind = 'file'\nlayouts = ['meta']\n"
        "attributes = {zip = 'zip'}\nanonymity = {k = 10}\n"
    )
    with pytest.raises(ConfigError, match=r"\[destinations.agency\] a record-level export"):
        load_config(tmp_path)


PROJECT_TOML = """
[sources.contacts]
path = "contacts.parquet"

[identity]
external_id = "contact_id"
email = "email"
phone = "phone"
zip = "zip"
birth_date = "birth_date"
gender = "sex"

[columns]
sensitive = ["diagnosis_codes", "insurance_type"]
quasi_identifiers = ["birth_date", "zip", "sex"]

[consent]
marketing_opt_in = "opt_in"

[policy]
pack = "baseline"

[destinations.agency]
kind = "file"
path = "exports"
formats = ["csv"]
attributes = {age = "age", zip = "zip", sex = "categorical"}
anonymity = {k = K, suppression_limit = 0.05}
"""


def test_cli_build_writes_the_export_or_exits_3(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from audiences.cli import cli

    people(2000, seed=8).drop("member_key", "age").write_parquet(tmp_path / "contacts.parquet")
    (tmp_path / "segments").mkdir()
    (tmp_path / "segments" / "agency-file.yaml").write_text(
        "name: agency-file\ndestinations: [agency]\nwhere:\n  age: {gte: 18}\n"
    )
    toml = tmp_path / "audiences.toml"
    toml.write_text(PROJECT_TOML.replace("K", "10"))
    build = ["-p", str(tmp_path), "build", "agency-file", "--as-of", "2025-06-01", "--json"]
    result = CliRunner().invoke(cli, build)
    assert result.exit_code == 0, result.output
    # the export folder carries the audience's opaque name, never the segment's
    assert not (tmp_path / "exports" / "agency-file").exists()
    (csv,) = (tmp_path / "exports").rglob("members.csv")
    assert csv.parent.parent.name.startswith("aud-")
    written = pl.read_csv(csv, infer_schema=False)
    assert written.columns == ["age", "zip", "sex"]
    assert anonymity.k_anonymity(written.to_pandas(), written.columns) >= 10

    toml.write_text(PROJECT_TOML.replace("K", "5000"))
    result = CliRunner().invoke(cli, build)
    assert result.exit_code == 3, result.output
    doc = json.loads(result.stdout)
    (reasons,) = [b["reasons"] for b in doc["builds"]]
    assert any("record-export [agency]" in r and "k=5000" in r for r in reasons)
    assert len(list((tmp_path / "exports").rglob("members.csv"))) == 1
