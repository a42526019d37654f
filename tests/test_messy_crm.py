"""A CRM export the project did not generate (issue #19): HubSpot/Epic-style column names
with spaces and slashes, ``Female``/``Male``, ``ny``/``New York``, ``Opted In``/``Opted
Out``, US dates. ``validate`` must catch each bad case with its file and line or column
and a fix; segment conditions and DP breakdowns read one meaning per value.

The project is tests/cases/messy_crm/ (audiences.toml, segments/); the contacts CSV is
written here, by hand-rolled rules with a fixed seed (not the sample generator).
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner, Result
from conftest import frozen_clock

from audiences.cli import cli

CASE = Path(__file__).parent / "cases" / "messy_crm"
AS_OF = "2025-06-02"


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(date.fromisoformat(AS_OF)):
        yield


ROWS = 800
HEADER = [
    "Record ID", "First Name", "Last Name", "Email", "Phone Number", "Date of Birth", "Sex",
    "State/Region", "Postal Code", "Country/Region", "Marketing Opt-In", "Lifecycle Stage",
    "Department",
]  # fmt: skip
STATES = [  # (spelling, state): the same state written the ways CRMs write it
    ("NY", "NY"), ("ny", "NY"), ("New York", "NY"), ("NJ", "NJ"), ("New Jersey", "NJ"),
    ("nj", "NJ"), ("CA", "CA"), ("Texas", "TX"),
]  # fmt: skip


def messy_rows(rows: int = ROWS, seed: int = 19) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        spelling, _ = STATES[i % len(STATES)]
        born = date(1940 + rng.randrange(60), 1 + rng.randrange(12), 1 + rng.randrange(28))
        out.append(
            {
                "Record ID": str(1000 + i),
                "First Name": rng.choice(["Ana", "José", "Mary", "Li"]),
                "Last Name": rng.choice(["Smith", "García", "O'Neil"]),
                "Email": f"person{i}@clinic.com",
                "Phone Number": f"(212) 555-{i % 10000:04d}",
                "Date of Birth": f"{born.month}/{born.day}/{born.year}",
                "Sex": "Female" if i % 2 else "Male",
                "State/Region": spelling,
                "Postal Code": f"{10001 + i % 50:05d}",
                "Country/Region": rng.choice(["United States", "USA", "US"]),
                "Marketing Opt-In": "Opted In" if i % 5 else "Opted Out",
                "Lifecycle Stage": ["customer", "lead", "subscriber"][i % 3] if i else "evangelist",
                "Department": rng.choice(["Cardiology", "Oncology", "Primary Care"]),
            }
        )
    return out


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "messy"
    shutil.copytree(CASE, root)
    write_csv(root / "data" / "contacts.csv", messy_rows())
    return root


def run(root: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--project", str(root), *args], catch_exceptions=False)


def validate_doc(root: Path) -> tuple[int, dict[str, Any]]:
    result = run(root, "validate", "--json", "--as-of", AS_OF)
    return result.exit_code, json.loads(result.stdout)


def edit(root: Path, old: str, new: str, file: str = "audiences.toml") -> None:
    path = root / file
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def edit_rows(root: Path, change: Callable[[list[dict[str, str]]], None]) -> None:
    rows = messy_rows()
    change(rows)
    write_csv(root / "data" / "contacts.csv", rows)


def codes(doc: dict[str, Any], severity: str = "errors") -> list[str]:
    return [f["code"] for f in doc[severity]]


# ------------------------------------------------------------------------------ validate
def test_the_messy_export_validates(project: Path) -> None:
    status, doc = validate_doc(project)
    assert status == 0 and doc["ok"], doc
    assert doc["errors"] == [] and doc["warnings"] == []
    assert sorted(s["name"] for s in doc["segments"]) == ["cardiology-women", "customers", "ny-nj"]


def test_us_dates_without_a_format_are_caught_with_line_and_fix(project: Path) -> None:
    edit(project, '{ type = "date", format = "%m/%d/%Y" }', '"date"')
    status, doc = validate_doc(project)
    assert status == 1 and not doc["ok"]
    (finding,) = [f for f in doc["errors"] if f["code"] == "bad-value"]
    assert finding["file"] == "contacts.csv" and finding["line"] == 2
    assert finding["column"] == "Date of Birth"
    assert "N/NN/NNNN" in finding["message"] or "N/N/NNNN" in finding["message"]
    assert 'format = "%m/%d/%Y"' in finding["fix"]
    assert "/19" not in json.dumps(doc)  # no raw date of birth anywhere


def test_missing_consent_column_and_did_you_mean(project: Path) -> None:
    edit(project, 'marketing_opt_in = "Marketing Opt-In"', 'marketing_opt_in = "marketing_opt_in"')
    status, doc = validate_doc(project)
    assert status == 1
    (finding,) = doc["errors"]
    assert finding["code"] == "missing-consent-column"
    assert "did you mean 'Marketing Opt-In'" in finding["fix"]


def test_opted_in_and_opted_out_are_consent_words(project: Path) -> None:
    from audiences.crm.consent import truthy

    frame = pl.DataFrame({"c": ["Opted In", "Opted Out", "opted-in", "UNSUBSCRIBED", None, "x"]})
    assert frame.select(truthy(frame, "c", "marketing_opt_in")).to_series().to_list() == [
        True, False, True, False, None, None,
    ]  # fmt: skip


def test_unrecognised_consent_values_are_an_error_without_the_values(project: Path) -> None:
    def forty_values(rows: list[dict[str, str]]) -> None:
        for i, row in enumerate(rows):
            row["Marketing Opt-In"] = f"Status {i % 40} xq"

    edit_rows(project, forty_values)
    status, doc = validate_doc(project)
    assert status == 1
    (finding,) = doc["errors"]
    assert finding["code"] == "unrecognised-consent" and finding["column"] == "Marketing Opt-In"
    assert f"{ROWS} row(s) hold 40 value(s)" in finding["message"]
    assert "opted in" in finding["fix"] and "unsubscribed" in finding["fix"]
    assert "xq" not in json.dumps(doc) and "AAAAAA N" in finding["message"]


def test_per_purpose_consent_and_opt_out_columns_are_checked_too(project: Path) -> None:
    # An opt-out flag whose values are no flag words would silently not be honoured (a
    # California GPC opt-out read as "no request"): validate refuses it, naming the role.
    edit(
        project,
        'marketing_opt_in = "Marketing Opt-In"',
        'marketing_opt_in = "Marketing Opt-In"\nshare_health_data = "Marketing Opt-In"\n'
        'opt_out_of_sharing = "Lifecycle Stage"',
    )
    status, doc = validate_doc(project)
    assert status == 1
    (finding,) = doc["errors"]
    assert finding["code"] == "unrecognised-consent" and finding["column"] == "Lifecycle Stage"
    assert finding["message"].startswith("[consent] opt_out_of_sharing column")
    assert "subscriber" not in json.dumps(doc)  # no value shown, only shapes
    assert "[consent.words.opt_out_of_sharing]" in finding["fix"]
    # the column's own words make it readable (and only they: "lead" is declared denied)
    words = (
        '\n[consent.words.opt_out_of_sharing]\ngranted = ["customer"]\n'
        'denied = ["lead", "subscriber", "evangelist"]\n\n[policy]\n'
    )
    edit(project, "\n[policy]\n", words)
    status, doc = validate_doc(project)
    assert status == 0 and doc["errors"] == [], doc["errors"]


def test_segment_values_missing_from_the_data_are_warnings(project: Path) -> None:
    edit(project, "in: [customer]", "in: [custmer]", "segments/customers.yaml")
    edit(project, 'case_insensitive = ["Department"]', "case_insensitive = []")
    status, doc = validate_doc(project)
    assert status == 0, doc  # warnings do not fail validate
    by_code: dict[str, list[dict[str, Any]]] = {}
    for f in doc["warnings"]:
        by_code.setdefault(f["code"], []).append(f)
    case, typo = sorted(by_code["value-not-in-data"], key=lambda f: f["column"])
    assert typo["column"] == "Lifecycle Stage" and typo["line"] == 5
    assert typo["fix"].startswith("did you mean 'customer'?")
    assert case["column"] == "Department" and "did you mean 'Cardiology'?" in case["fix"]
    assert "case_insensitive" in case["fix"]
    # no segment-size threshold: a base of k - 1 records made it an exact oracle
    assert "selects-fewer-than-k" not in by_code
    # a value rarer than k (the pack's min size) is never suggested
    assert "evangelist" not in json.dumps(doc)


def probe_findings(root: Path, segment: str) -> list[tuple[str, str]]:
    (root / "segments" / "probe.yaml").write_text(segment, encoding="utf-8")
    status, doc = validate_doc(root)
    assert status == 0, doc
    return sorted(
        (f["code"], f["message"]) for f in doc["warnings"] if f["file"].endswith("probe.yaml")
    )


def test_validate_tells_nobody_whether_one_person_has_a_value(project: Path) -> None:
    """The attack: a segment naming one person's email and a department (a diagnosis, in
    a real CRM), then `audiences validate`. "Selects nobody" or not was the answer, with
    no budget and no k; now the two cases read alike."""
    person = messy_rows()[7]
    theirs = person["Department"]
    other = next(d for d in ("Cardiology", "Oncology", "Primary Care") if d != theirs)
    probe = (
        "name: probe\ndestinations: [file]\nwhere:\n  all:\n"
        f"    - Email: {{eq: {person['Email']}}}\n    - Department: {{eq: {{d}}}}\n"
    )
    has = probe_findings(project, probe.replace("{d}", theirs))
    has_not = probe_findings(project, probe.replace("{d}", other))
    assert has == has_not == []


def test_validate_tells_nobody_whether_a_rare_value_is_held(project: Path) -> None:
    """One record is an "evangelist": a value held by fewer than k rows gets the warning
    a value nobody holds gets (and is never suggested)."""
    probe = "name: probe\ndestinations: [file]\nwhere:\n  Lifecycle Stage: {{in: [{v}]}}\n"
    rare = probe_findings(project, probe.format(v="evangelist"))
    absent = probe_findings(project, probe.format(v="promoter"))
    assert [code for code, _ in rare] == [code for code, _ in absent]
    assert [code for code, _ in rare] == ["value-not-in-data"]
    assert [m.replace("evangelist", "promoter") for _, m in rare] == [m for _, m in absent]


def test_every_problem_of_every_file_in_one_run(project: Path) -> None:
    edit(project, '{ type = "date", format = "%m/%d/%Y" }', '"date"')
    edit(project, 'gender = "Sex"', 'gender = "Gender"')
    edit(project, "Sex: {eq: F}", "Sx: {eq: F}", "segments/cardiology-women.yaml")
    result = run(project, "validate", "--as-of", AS_OF)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 2, result.stderr  # the segment is checked once the sources load
    assert any("contacts.csv:2: column 'Date of Birth'" in line for line in errors)
    assert any("identity 'gender' maps to column 'Gender'" in line for line in errors)
    edit(project, 'gender = "Gender"', 'gender = "Sex"')
    edit(project, '"date"', '{ type = "date", format = "%m/%d/%Y" }')
    status, doc = validate_doc(project)
    assert status == 1 and codes(doc) == ["segment"]
    assert doc["errors"][0]["file"].endswith("cardiology-women.yaml")
    assert doc["errors"][0]["line"] == 6 and "did you mean 'Sex'" in doc["errors"][0]["fix"]


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("empty", "contacts.csv is empty"),
        ("header-only", "contacts.csv has no rows"),
        ("mixed-dates", "mixes date formats"),
    ],
)
def test_bad_files_exit_1_and_write_nothing(project: Path, case: str, pattern: str) -> None:
    path = project / "data" / "contacts.csv"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "header-only":
        path.write_text(",".join(f'"{h}"' for h in HEADER) + "\n")
    else:

        def mixed(rows: list[dict[str, str]]) -> None:
            for row in rows[::3]:
                m, d, y = row["Date of Birth"].split("/")
                row["Date of Birth"] = f"{y}-{int(m):02d}-{int(d):02d}"

        edit_rows(project, mixed)
    status, doc = validate_doc(project)
    assert status == 1 and not doc["ok"]
    assert any(pattern in f["message"] or pattern in f["fix"] for f in doc["errors"]), doc
    built = run(project, "build", "--all", "--as-of", AS_OF)
    assert built.exit_code == 1 and built.stderr.startswith("Error: ")
    assert not (project / "exports").exists() or not any((project / "exports").iterdir())


def test_json_errors_of_any_command_are_one_document_on_stdout(project: Path) -> None:
    result = run(project, "preview", "no-such-segment", "--json", "--as-of", AS_OF)
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and "no segment named" in doc["error"]["message"]
    assert doc["error"]["exit_code"] == 1 and result.stderr.startswith("Error: ")


# ------------------------------------------------------------------------------ one meaning
def compile_rows(root: Path, segment: str) -> pl.DataFrame:
    from audiences.core.config import load_config
    from audiences.crm.sources import load_sources
    from audiences.pipeline.select import segment_context, select_segments
    from audiences.segments import compile_segment

    config = load_config(root)
    (seg,) = select_segments(config, [segment])
    sources = load_sources(config)
    ctx = segment_context(config, date.fromisoformat(AS_OF))
    return compile_segment(seg, sources.contacts, sources.events, ctx).collect()


def test_state_in_ny_matches_every_spelling(project: Path) -> None:
    selected = compile_rows(project, "ny-nj")
    spellings = set(selected["State/Region"].to_list())
    assert spellings == {"NY", "ny", "New York", "NJ", "New Jersey", "nj"}
    adults = [r for r in messy_rows() if r["State/Region"] not in ("CA", "Texas")]
    assert selected.height == len(adults)  # everyone here is 25 or older


def test_sex_f_matches_female_and_case_insensitive_department(project: Path) -> None:
    selected = compile_rows(project, "cardiology-women")
    expected = [r for r in messy_rows() if r["Sex"] == "Female" and r["Department"] == "Cardiology"]
    assert selected.height == len(expected) > 0
    assert set(selected["Sex"].to_list()) == {"Female"}


# ------------------------------------------------------------------------------ breakdowns
def test_preview_counts_women_and_men_and_shows_no_noise_only_state(project: Path) -> None:
    result = run(project, "preview", "ny-nj", "--json", "--as-of", AS_OF, "--epsilon", "1")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    by_sex = {row["key"]: row for row in doc["breakdowns"]["sex"]}
    truth = len([r for r in messy_rows() if r["State/Region"] not in ("CA", "Texas")]) // 2
    for key in ("F", "M"):
        assert not by_sex[key]["below_threshold"]
        assert abs(by_sex[key]["count"] - truth) <= 40, by_sex
    # the segment asks for NY and NJ: only those public keys are released
    assert [row["key"] for row in doc["breakdowns"]["state"]] == ["NJ", "NY"] or [
        row["key"] for row in doc["breakdowns"]["state"]
    ] == ["NY", "NJ"]
    for rows in doc["breakdowns"].values():
        for row in rows:
            if row["below_threshold"]:
                assert row["count"] is None and row["threshold"] == row["ci95"][1]
    assert doc["looks_remaining"] == 9 and doc["default_epsilon"] == 1.0
    human = run(project, "preview", "ny-nj", "--as-of", AS_OF, "--epsilon", "1")
    assert "8 more preview(s) at ε=1" in human.stdout


def test_budget_exhausted_advice_can_work(project: Path) -> None:
    for _ in range(9):
        assert run(project, "preview", "ny-nj", "--as-of", AS_OF, "--epsilon", "1").exit_code == 0
    half = run(project, "preview", "ny-nj", "--as-of", AS_OF, "--epsilon", "0.5")
    assert half.exit_code == 0, half.stderr
    refused = run(project, "preview", "ny-nj", "--as-of", AS_OF)
    assert refused.exit_code == 1
    assert "--epsilon 0.5" in refused.stderr
    assert run(project, "preview", "ny-nj", "--as-of", AS_OF, "--epsilon", "0.5").exit_code == 0
    spent = run(project, "preview", "ny-nj", "--as-of", AS_OF, "--epsilon", "0.1")
    assert spent.exit_code == 1 and "a smaller ε cannot help; it renews" in spent.stderr


# ------------------------------------------------------------------------------ columns
def test_columns_lists_types_roles_and_common_values(project: Path) -> None:
    result = run(project, "columns", "contacts", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["k"] == 100
    columns = {c["name"]: c for c in doc["sources"]["contacts"]["columns"]}
    assert list(columns) == HEADER
    dob = columns["Date of Birth"]
    assert (dob["declared"], dob["format"], dob["inferred"]) == ("date", "%m/%d/%Y", "str")
    assert dob["role"] == "identity" and "values" not in dob
    assert columns["Marketing Opt-In"]["role"] == "consent"
    assert columns["Marketing Opt-In"]["values"] == ["Opted In", "Opted Out"]
    stage = columns["Lifecycle Stage"]
    assert stage["role"] == "none" and stage["values"] == ["customer", "lead", "subscriber"]
    assert stage["rarer_values"] == 1 and "evangelist" not in result.stdout  # one row
    assert columns["Sex"]["role"] == "identity" and "values" not in columns["Sex"]
    assert columns["Email"]["null_share"] == 0 and columns["Email"]["distinct"] == ROWS
    human = run(project, "columns")
    assert human.exit_code == 0 and "Lifecycle Stage" in human.stdout
    assert "1 rarer" in human.stdout
