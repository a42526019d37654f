"""``audiences init DIR --from CONTACTS --events EVENTS`` on a HubSpot/Epic-style export the
project did not generate (issue #19): columns mapped by header and content, US dates
declared with their format, consent words recognised, clinical columns and event types
left ``unclassified`` (validate fails until the user classifies them), no person's value
copied into the config, and the generated project validates and plans on the same data.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from test_messy_crm import HEADER, messy_rows, write_csv

from audiences.cli import cli

EVENT_HEADER = ["Record ID", "Activity Type", "Activity Date", "Department", "Channel"]


def messy_events(rows: int = 1200, seed: int = 7) -> list[dict[str, str]]:
    rng = random.Random(seed)
    kinds = ["Office Visit", "Email Click", "Telehealth Visit"]
    out = []
    for i in range(rows):
        kind = kinds[i % 3]
        hour = 1 + rng.randrange(12)
        out.append(
            {
                "Record ID": str(1000 + rng.randrange(800)),
                "Activity Type": kind,
                "Activity Date": f"{1 + rng.randrange(12)}/{1 + rng.randrange(28)}/2024 "
                f"{hour}:{rng.randrange(60):02d} {'AM' if i % 2 else 'PM'}",
                "Department": ""
                if kind == "Email Click"
                else rng.choice(["Cardiology", "Oncology"]),
                "Channel": rng.choice(["web", "phone"]),
            }
        )
    return out


def write_events(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=EVENT_HEADER)
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CRM export, outside any project (as a user's download folder is)."""
    root = tmp_path_factory.mktemp("export")
    write_csv(root / "contacts.csv", messy_rows())
    write_events(root / "events.csv", messy_events())
    return root


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def init_from(target: Path, export: Path, *more: str) -> dict[str, Any]:
    result = run(
        "init", str(target), "--from", str(export / "contacts.csv"),
        "--events", str(export / "events.csv"), "--json", *more,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_init_from_maps_the_messy_export(tmp_path: Path, export: Path) -> None:
    doc = init_from(tmp_path / "p", export)
    assert doc["contact_id"] == "Record ID"
    assert doc["identity"] == {
        "external_id": "Record ID", "email": "Email", "phone": "Phone Number",
        "first_name": "First Name", "last_name": "Last Name", "zip": "Postal Code",
        "state": "State/Region", "country": "Country/Region", "birth_date": "Date of Birth",
        "gender": "Sex",
    }  # fmt: skip
    assert doc["consent"] == {"marketing_opt_in": "Marketing Opt-In"}
    contacts = doc["types"]["contacts"]
    assert contacts["Date of Birth"] == {"type": "date", "format": "%m/%d/%Y"}
    assert contacts["Postal Code"] == {"type": "str"}  # ZIPs keep their leading zeros
    assert doc["unclassified"] == ["Lifecycle Stage", "Department"]
    assert doc["event_roles"] == {
        "contact_id": "Record ID", "type": "Activity Type", "time": "Activity Date",
    }  # fmt: skip
    assert doc["types"]["events"]["Activity Date"] == {
        "type": "datetime", "format": "%m/%d/%Y %I:%M %p",
    }  # fmt: skip
    assert doc["event_types_to_classify"] == ["Email Click", "Office Visit", "Telehealth Visit"]
    assert doc["event_columns_to_classify"] == ["Department"]  # Channel is not clinical
    (note,) = doc["not_mapped"]  # the export has no city column
    assert note.startswith("no column found for identity city: map them under [identity]")


def test_no_value_of_a_person_is_copied_into_the_config(tmp_path: Path, export: Path) -> None:
    init_from(tmp_path / "p", export)
    text = (tmp_path / "p" / "audiences.toml").read_text()
    for row in messy_rows():
        for column in ("Email", "Phone Number", "Date of Birth", "Postal Code", "Last Name"):
            assert f'"{row[column]}"' not in text and row[column] not in text.split(), column
    assert "Cardiology" not in text and "customer" not in text  # values of unclassified columns
    assert "Office Visit" in text  # the event-type vocabulary, to classify


def classify(root: Path) -> None:
    """The documented edits: each unclassified name moved to one side."""
    path = root / "audiences.toml"
    text = path.read_text()
    for old, new in (
        ("sensitive = []\nquasi", 'sensitive = ["Department"]\nquasi'),
        ("not_sensitive = []\n", 'not_sensitive = ["Lifecycle Stage"]\n'),
        ('unclassified = ["Lifecycle Stage", "Department"]', "unclassified = []"),
        ("sensitive_types = []", 'sensitive_types = ["Office Visit", "Telehealth Visit"]'),
        ("not_sensitive_types = []", 'not_sensitive_types = ["Email Click"]'),
        ('unclassified_types = ["Email Click", "Office Visit", "Telehealth Visit"]', ""),
        ("sensitive_columns = []", 'sensitive_columns = ["Department"]'),
        ('unclassified_columns = ["Department"]', ""),
    ):
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_text(text)


def test_validate_fails_until_classified_then_validates_and_plans(
    tmp_path: Path, export: Path
) -> None:
    root = tmp_path / "p"
    init_from(root, export, "--pack", "baseline")
    result = run("-p", str(root), "validate", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert [f["code"] for f in doc["errors"]] == ["unclassified"] * 6, doc["errors"]
    assert {f["column"] for f in doc["errors"]} == {
        "Lifecycle Stage", "Department", "Email Click", "Office Visit", "Telehealth Visit",
    }  # fmt: skip
    assert all("sensitive" in f["fix"] and f["file"] == "audiences.toml" for f in doc["errors"])
    classify(root)
    result = run("-p", str(root), "validate", "--json")
    assert result.exit_code == 0, result.stdout
    assert json.loads(result.stdout)["warnings"] == []
    planned = run("-p", str(root), "plan", "everyone-adult", "--json")
    assert planned.exit_code == 0, planned.output
    (row,) = json.loads(planned.stdout)["plans"]
    assert row["segment"] == "everyone-adult" and row["destination"] == "meta"
    assert row["adds"] != 0  # coarse: a range of people


def test_unclassified_names_count_as_sensitive_meanwhile(tmp_path: Path, export: Path) -> None:
    from audiences.core.config import load_config
    from audiences.segments import load_segment
    from policies.rules import phi_finding

    root = tmp_path / "p"
    init_from(root, export)
    (root / "segments" / "visits.yaml").write_text(
        "name: visits\ndestinations: [file]\nwhere:\n  event: {type: Office Visit, within: 365d}\n"
    )
    (root / "segments" / "stage.yaml").write_text(
        "name: stage\ndestinations: [file]\nwhere:\n  Lifecycle Stage: {eq: customer}\n"
    )
    config = load_config(root)
    visits = phi_finding(load_segment(root / "segments" / "visits.yaml"), config)
    stage = phi_finding(load_segment(root / "segments" / "stage.yaml"), config)
    assert visits.event_types == ("Office Visit",) and stage.columns == ("Lifecycle Stage",)


def test_content_decides_when_the_header_does_not(tmp_path: Path) -> None:
    rows = messy_rows(300)
    header = [h if h != "Email" else "Contact Info" for h in HEADER]
    header += ["Email Opt Out", "Newsletter"]
    path = tmp_path / "contacts.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for i, row in enumerate(rows):
            flags = ["true" if i % 7 == 0 else "false", "Unsubscribed" if i % 3 else "Subscribed"]
            writer.writerow([row[h] for h in HEADER] + flags)
    result = run("init", str(tmp_path / "p"), "--from", str(path), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["identity"]["email"] == "Contact Info"
    # an opt-OUT flag is never read as an opt-in: it suppresses
    assert doc["consent"] == {
        "do_not_contact": "Email Opt Out",
        "marketing_opt_in": "Marketing Opt-In",
    }
    # a column of consent words under another name is pointed out, never guessed
    assert any(n.startswith("'Newsletter' holds only consent words") for n in doc["not_mapped"])


def _forty_consent_values(rows: list[dict[str, str]]) -> None:
    for i, row in enumerate(rows):
        row["Marketing Opt-In"] = f"Status {i % 40} xq"


def _mixed_dates(rows: list[dict[str, str]]) -> None:
    for row in rows[::3]:
        m, d, y = row["Date of Birth"].split("/")
        row["Date of Birth"] = f"{y}-{int(m):02d}-{int(d):02d}"


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("empty", "contacts.csv is empty"),
        ("header-only", "contacts.csv has no rows"),
        ("mixed-dates", "column 'Date of Birth' mixes date formats"),
        (
            "consent-40",
            "named like the consent fact marketing_opt_in but 800 filled row(s) hold 40",
        ),
    ],
)
def test_bad_exports_exit_1_and_write_nothing(tmp_path: Path, case: str, pattern: str) -> None:
    path = tmp_path / "contacts.csv"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "header-only":
        path.write_text(",".join(f'"{h}"' for h in HEADER) + "\n")
    else:
        rows = messy_rows()
        (_mixed_dates if case == "mixed-dates" else _forty_consent_values)(rows)
        write_csv(path, rows)
    target = tmp_path / "p"
    result = CliRunner().invoke(cli, ["init", str(target), "--from", str(path)])
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and pattern in line and "Traceback" not in result.output
    assert "xq" not in line and "/19" not in line  # shapes, never values
    assert not target.exists()


def test_usage_errors(tmp_path: Path, export: Path) -> None:
    result = run("init", str(tmp_path / "p"), "--events", str(export / "events.csv"))
    assert result.exit_code == 2 and "--events needs --from" in result.stderr
    result = run("init", str(tmp_path / "p"), "--from", str(export / "contacts.csv"), "--pack", "x")
    assert result.exit_code == 2 and "not a built-in pack" in result.stderr
    assert not (tmp_path / "p").exists()
    init_from(tmp_path / "p", export)
    again = run("init", str(tmp_path / "p"), "--from", str(export / "contacts.csv"))
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_validate_warns_about_clinical_names_left_unclassified(
    tmp_path: Path, export: Path
) -> None:
    """Issue #19, item 6: a project written by hand (no `unclassified` list) still hears
    about its visit events, its Department columns and its lifecycle stage."""
    root = tmp_path / "p"
    init_from(root, export, "--pack", "baseline")
    classify(root)
    path = root / "audiences.toml"
    text = path.read_text()
    text = text.replace(
        'sensitive_types = ["Office Visit", "Telehealth Visit"]', "sensitive_types = []"
    )
    text = text.replace('sensitive_columns = ["Department"]', "sensitive_columns = []")
    text = text.replace('not_sensitive = ["Lifecycle Stage"]', "not_sensitive = []")
    text = text.replace('sensitive = ["Department"]\nquasi', "sensitive = []\nquasi")
    path.write_text(text)
    result = run("-p", str(root), "validate", "--json")
    assert result.exit_code == 0, result.stdout  # warnings, not errors
    messages = sorted(w["message"] for w in json.loads(result.stdout)["warnings"])
    assert [m.split(" looks")[0] for m in messages] == [
        "contacts column 'Department'",
        "contacts column 'Lifecycle Stage'",
        "event column 'Department'",
        "event type 'Office Visit'",
        "event type 'Telehealth Visit'",
    ]
    assert "Email Click" not in json.dumps(messages) and "Channel" not in json.dumps(messages)


def test_a_typed_parquet_export(tmp_path: Path) -> None:
    """Parquet keeps its own types: a Date column needs no format, a Boolean opt-in is a
    consent column, an integer id is declared text (ids keep their leading zeros)."""
    import polars as pl

    rows = messy_rows(400)
    frame = pl.DataFrame(rows).with_columns(
        pl.col("Date of Birth").str.to_date("%m/%d/%Y"),
        (pl.col("Marketing Opt-In") == "Opted In").alias("Marketing Opt-In"),
        pl.col("Record ID").cast(pl.Int64),
    )
    path = tmp_path / "contacts.parquet"
    frame.write_parquet(path)
    result = run("init", str(tmp_path / "p"), "--from", str(path), "--json", "--pack", "baseline")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["consent"] == {"marketing_opt_in": "Marketing Opt-In"}
    assert doc["types"]["contacts"]["Date of Birth"] == {"type": "date"}
    assert doc["types"]["contacts"]["Record ID"] == {"type": "str"}
    toml = tmp_path / "p" / "audiences.toml"
    toml.write_text(
        toml.read_text()
        .replace('unclassified = ["Lifecycle Stage", "Department"]', "")
        .replace("sensitive = []\nquasi", 'sensitive = ["Department"]\nquasi')
        .replace("not_sensitive = []", 'not_sensitive = ["Lifecycle Stage"]')
    )
    checked = run("-p", str(tmp_path / "p"), "validate", "--json")
    assert checked.exit_code == 0, checked.stdout


def test_types_read_on_the_sample_are_checked_on_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Types are guessed on the first rows; a later row that breaks them is still found."""
    from audiences.crm import inference

    monkeypatch.setattr(inference, "SAMPLE", 50)
    rows = messy_rows()
    _mixed_dates(rows[600:])  # only after the sample
    rows[700]["Marketing Opt-In"] = "Status 7 xq"  # one unknown consent word, late
    path = tmp_path / "contacts.csv"
    write_csv(path, rows)
    result = CliRunner().invoke(cli, ["init", str(tmp_path / "p"), "--from", str(path)])
    assert result.exit_code == 1
    assert "column 'Date of Birth' mixes date formats" in result.stderr, result.stderr
    clean = messy_rows()
    clean[700]["Marketing Opt-In"] = "Status 7 xq"
    write_csv(path, clean)
    result = CliRunner().invoke(cli, ["init", str(tmp_path / "p"), "--from", str(path)])
    assert result.exit_code == 1
    assert "named like the consent fact marketing_opt_in" in result.stderr
    assert "xq" not in result.stderr and not (tmp_path / "p").exists()


def test_nothing_is_approved_while_a_name_is_unclassified(tmp_path: Path, export: Path) -> None:
    """The attack: approve first, classify "not sensitive" later. `approve` validates the
    project first, and the approval binds what the gate counts as sensitive."""
    root = tmp_path / "p"
    init_from(root, export)
    key = tmp_path / "keys" / "alice.key"
    made = run("-p", str(root), "keygen", "--private", str(key))
    assert made.exit_code == 0, made.output
    toml = root / "audiences.toml"
    toml.write_text(
        toml.read_text().replace("[approvers]", f"[approvers]\nkeys = {{ {made.stdout.strip()} }}")
    )
    refused = run("-p", str(root), "approve", "everyone-adult", "--by", "alice", "--key", str(key))
    assert refused.exit_code == 1
    assert "unclassified still lists" in refused.stderr and "5 more problem(s)" in refused.stderr

    from audiences.compliance.workflow import effective_policy
    from audiences.core.config import load_config
    from audiences.segments import load_segment
    from policies.pack import load_pack

    config = load_config(root)
    segment = load_segment(root / "segments" / "everyone-adult.yaml")
    before = effective_policy(config, segment, load_pack(config))["sensitivity"]
    assert before["events.sensitive_types"] == ["Email Click", "Office Visit", "Telehealth Visit"]
    classify(root)
    config = load_config(root)
    after = effective_policy(config, segment, load_pack(config))["sensitivity"]
    assert after["events.sensitive_types"] == ["Office Visit", "Telehealth Visit"]  # changed
    assert before["columns.sensitive"] == ["Department", "Lifecycle Stage"]
    assert after["columns.sensitive"] == ["Department"]  # Lifecycle Stage: not sensitive
