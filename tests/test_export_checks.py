"""The contacts' ids are checked over the whole export, once per export
(audiences/pipeline/export_checks.py).

The attack these tests replay: a segment narrowed to one record ("this email and this
diagnosis") on an export where that record's id is missing or shared. When the check ran
on the segment's candidates, the build failed with "1 row(s) without an id … (in this
segment)" if the record had the diagnosis and went on to "fewer than k" if not: an exact
answer about one person, with no budget, no k and no audit.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import NamedTuple

import polars as pl
import pytest
from click.testing import CliRunner, Result
from conftest import frozen_clock

from audiences.cli import cli
from audiences.pipeline import export_checks
from audiences.pipeline.project import init_project
from audiences.pipeline.state_record import derived_key, project_secret

AS_OF = date(2025, 6, 15)


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    with frozen_clock(AS_OF):
        yield


@pytest.fixture(scope="module")
def crm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from audiences.demo.sample import write

    out = tmp_path_factory.mktemp("crm-ids")
    write(out, 2_000, seed=5, as_of=AS_OF, formats=("parquet", "csv"))
    return out


def project(root: Path, crm: Path) -> Path:
    init_project(root)
    toml = root / "audiences.toml"
    toml.write_text(
        toml.read_text(encoding="utf-8").replace(
            'pack = "hipaa-marketing"', 'pack = "baseline"', 1
        ),
        encoding="utf-8",
    )
    shutil.copytree(crm, root / "data")
    for template in (root / "segments").glob("*.yaml"):
        template.unlink()
    return root


def contacts(root: Path) -> Path:
    return root / "data" / "contacts.parquet"


def rewrite(root: Path, change: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
    path = contacts(root)
    frame = change(pl.read_parquet(path))
    frame.write_parquet(path)


def probe(root: Path, email: str, condition: str) -> None:
    """A segment that selects one record if it meets ``condition``, nobody if not."""
    (root / "segments" / "probe.yaml").write_text(
        "name: probe\ndestinations: [file]\nwhere:\n  all:\n"
        f"    - email: {{eq: {json.dumps(email)}}}\n    - {condition}\n",
        encoding="utf-8",
    )


def run(root: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["-p", str(root), *args])


class Target(NamedTuple):
    row: int
    email: str
    diagnosis: tuple[str, str]  # conditions: the record meets the first, not the second
    insurance: tuple[str, str]  # the same on a text column polars filters while reading


def target(crm: Path) -> Target:
    """A record with an email, a diagnosis and an insurance type, past the first rows."""
    frame = pl.read_parquet(crm / "contacts.parquet").with_row_index("_row")
    row = frame.filter(
        pl.col("email").is_not_null()
        & (pl.col("diagnosis_codes").list.len() > 0)
        & pl.col("insurance_type").is_not_null()
        & (pl.col("_row") > 1000)  # not in the first rows, which some reads look at
    ).row(0, named=True)
    codes = frame.get_column("diagnosis_codes").explode().drop_nulls().unique().sort()
    code_not = next(c for c in codes if c not in row["diagnosis_codes"])
    kinds = frame.get_column("insurance_type").drop_nulls().unique().sort()
    kind_not = next(k for k in kinds if k != row["insurance_type"])
    contains = "diagnosis_codes: {{contains: {}}}"
    return Target(
        row["_row"],
        row["email"],
        (
            contains.format(json.dumps(row["diagnosis_codes"][0])),
            contains.format(json.dumps(code_not)),
        ),
        (
            f"insurance_type: {{eq: {json.dumps(row['insurance_type'])}}}",
            f"insurance_type: {{eq: {json.dumps(kind_not)}}}",
        ),
    )


def null_id_at(row: int) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def change(frame: pl.DataFrame) -> pl.DataFrame:
        ids = frame.get_column("contact_id").to_list()
        ids[row] = None
        return frame.with_columns(pl.Series("contact_id", ids, dtype=pl.String))

    return change


def id_of_row_zero_at(row: int) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def change(frame: pl.DataFrame) -> pl.DataFrame:
        ids = frame.get_column("contact_id").to_list()
        ids[row] = ids[0] if row else ids[1]
        return frame.with_columns(pl.Series("contact_id", ids, dtype=pl.String))

    return change


def answers(
    root: Path, email: str, conditions: tuple[str, str], *command: str
) -> list[tuple[int, str]]:
    out = []
    for condition in conditions:
        probe(root, email, condition)
        result = run(root, *command)
        out.append((result.exit_code, result.output))
    return out


# ---------------------------------------------------------------------------- the attack
@pytest.mark.parametrize("breaks", [null_id_at, id_of_row_zero_at], ids=["no-id", "shared-id"])
@pytest.mark.parametrize(
    "command",
    [("build", "probe"), ("preview", "probe", "--epsilon", "0.5")],
    ids=["build", "preview"],
)
def test_one_persons_broken_id_reads_alike_whatever_the_segment(
    tmp_path: Path, crm: Path, breaks: Callable[[int], Callable], command: tuple[str, ...]
) -> None:
    root = project(tmp_path / "p", crm)
    person = target(crm)
    rewrite(root, breaks(person.row))
    with_it, without_it = answers(root, person.email, person.diagnosis, *command)
    assert with_it == without_it  # the same exit code and the same words
    assert with_it[0] == 1
    assert "in this segment" not in with_it[1]
    assert ("without an id" in with_it[1]) or ("duplicate ids" in with_it[1])
    assert person.email not in with_it[1]


def test_the_counts_are_the_whole_exports(tmp_path: Path, crm: Path) -> None:
    root = project(tmp_path / "p", crm)
    rewrite(
        root,
        lambda f: f.with_columns(
            pl.when(pl.int_range(pl.len()).is_in([3, 500, 1999]))
            .then(None)
            .otherwise(pl.col("contact_id"))
            .alias("contact_id")
        ),
    )
    (root / "segments" / "few.yaml").write_text(
        "name: few\ndestinations: [file]\nwhere:\n  age: {gte: 200}\n", encoding="utf-8"
    )
    result = run(root, "build", "few")
    assert result.exit_code == 1
    assert "has 3 row(s) without an id in column 'contact_id'" in result.output


def test_shared_ids_are_counted_exactly() -> None:
    frame = pl.LazyFrame({"id": ["a", "b", "a", None, "c", "a", "b"]})
    assert export_checks.id_problems(frame, "id") == (1, 5)
    ints = pl.LazyFrame({"id": [1, 2, 3, None, None]})
    assert export_checks.id_problems(ints, "id") == (2, 0)
    assert export_checks.id_problems(pl.LazyFrame({"id": [7, 8, 9]}), "id") == (0, 0)


# ----------------------------------------------------------------------- once per export
@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = export_checks.id_problems

    def counting(frame: pl.LazyFrame, column: str) -> tuple[int, int]:
        calls.append(1)
        return real(frame, column)

    monkeypatch.setattr(export_checks, "id_problems", counting)
    return calls


def adults(root: Path) -> None:
    (root / "segments" / "adults.yaml").write_text(
        "name: adults\ndestinations: [file]\nwhere:\n  age: {gte: 18}\n", encoding="utf-8"
    )


def test_an_export_is_checked_once_and_again_when_it_changes(
    tmp_path: Path, crm: Path, counted: list[int]
) -> None:
    root = project(tmp_path / "p", crm)
    adults(root)
    assert run(root, "build", "adults").exit_code == 0
    assert run(root, "build", "adults").exit_code == 0
    assert len(counted) == 1  # the second run trusted the record
    record = (root / ".audiences" / export_checks.CHECKS_NAME).read_text(encoding="utf-8")
    first_id = pl.read_parquet(contacts(root)).get_column("contact_id")[0]
    assert first_id not in record  # stamps and a MAC, no data
    rewrite(root, null_id_at(10))  # the export changes: checked again, and refused
    result = run(root, "build", "adults")
    assert result.exit_code == 1 and "1 row(s) without an id" in result.output
    assert len(counted) == 2


def test_a_forged_record_is_not_trusted(tmp_path: Path, crm: Path, counted: list[int]) -> None:
    root = project(tmp_path / "p", crm)
    adults(root)
    assert run(root, "build", "adults").exit_code == 0
    rewrite(root, null_id_at(10))
    path = root / ".audiences" / export_checks.CHECKS_NAME
    body = json.loads(path.read_text(encoding="utf-8"))
    stamp = dict(body["checked"][-1])
    stat = contacts(root).stat()
    stamp["file"] = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]
    body["checked"].append(stamp)  # the broken export claimed as checked, without the key
    path.write_text(json.dumps(body), encoding="utf-8")
    result = run(root, "build", "adults")
    assert result.exit_code == 1 and "1 row(s) without an id" in result.output
    assert len(counted) == 2


def test_a_record_forged_with_the_key_still_gives_the_whole_exports_error(
    tmp_path: Path, crm: Path
) -> None:
    """Whoever holds ``record.key`` can make the record claim a broken export passed. The
    candidates' own check then catches it, and the error is still the whole export's."""
    import hashlib
    import hmac

    root = project(tmp_path / "p", crm)
    adults(root)
    assert run(root, "build", "adults").exit_code == 0
    row = (
        pl.read_parquet(contacts(root))
        .with_row_index("_r")
        .filter(pl.col("birth_date") < date(1990, 1, 1))
        .get_column("_r")[0]
    )
    rewrite(root, null_id_at(int(row)))
    state = root / ".audiences"
    stat = contacts(root).stat()
    stamp = {
        "file": [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev],
        "id": "contact_id",
    }
    key = derived_key(project_secret(state), b"audiences export checks", b"file mac")
    text = json.dumps([stamp], sort_keys=True, separators=(",", ":"))
    mac = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    (state / export_checks.CHECKS_NAME).write_text(
        json.dumps({"v": 1, "checked": [stamp], "mac": mac}), encoding="utf-8"
    )
    result = run(root, "build", "adults")
    assert result.exit_code == 1
    assert "has 1 row(s) without an id in column 'contact_id' —" in result.output
    assert "in this segment" not in result.output


# ------------------------------------------------------- values that do not parse (CSV)
CSV_TYPES = (
    'columns = { birth_date = "date", marketing_opt_in = "bool", hipaa_auth_date = "date", '
    'hipaa_auth_expires = "date", hipaa_auth_revoked_at = "date", diagnosis_codes = '
    '"list[str]", service_lines = "list[str]", medication_classes = "list[str]" }'
)


def csv_contacts(root: Path, row: int, column: str, value: str) -> None:
    """Contacts from the CSV, types declared, ``value`` in ``column`` at data row ``row``."""
    toml = root / "audiences.toml"
    text = toml.read_text(encoding="utf-8")
    text = text.replace('path = "data/contacts.parquet"', 'path = "data/contacts.csv"', 1)
    text = text.replace("# columns = { birth_date", f"{CSV_TYPES}\n# columns = {{ birth_date", 1)
    toml.write_text(text, encoding="utf-8")
    path = root / "data" / "contacts.csv"
    frame = pl.read_csv(path, infer_schema=False)
    cells = frame.get_column(column).to_list()
    cells[row] = value
    frame.with_columns(pl.Series(column, cells, dtype=pl.String)).write_csv(path)


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [("birth_date", "31/02/1970", "not a date"), ("marketing_opt_in", "maybe", "not a bool")],
)
@pytest.mark.parametrize(
    "command", [("build", "probe"), ("preview", "probe")], ids=["build", "preview"]
)
def test_one_persons_unparsable_value_reads_alike_whatever_the_segment(
    tmp_path: Path, crm: Path, column: str, value: str, words: str, command: tuple[str, ...]
) -> None:
    """A declared type was parsed after the segment's filters: a bad cell in one record
    failed only the segments that held it (a preview of a segment without it answered)."""
    root = project(tmp_path / "p", crm)
    person = target(crm)
    csv_contacts(root, person.row, column, value)
    with_it, without_it = answers(root, person.email, person.insurance, *command)
    assert with_it == without_it
    assert with_it[0] == 1 and words in with_it[1]
    assert (
        f"line {person.row + 2} of contacts.csv" in with_it[1]
    )  # where to fix it, the whole file's


@pytest.mark.parametrize("breaks", [null_id_at, id_of_row_zero_at], ids=["no-id", "shared-id"])
def test_validate_reports_the_whole_exports_ids(
    tmp_path: Path, crm: Path, breaks: Callable[[int], Callable]
) -> None:
    """`validate` (and so `approve`) says what every build would: before any build."""
    root = project(tmp_path / "p", crm)
    adults(root)
    rewrite(root, breaks(1500))
    result = run(root, "validate", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    (error,) = [e for e in doc["errors"] if e["code"] == "source"]
    assert ("without an id" in error["message"]) or ("duplicate ids" in error["message"])


@pytest.mark.parametrize(
    "command", [("build", "probe"), ("preview", "probe")], ids=["build", "preview"]
)
def test_an_unparsable_event_time_reads_alike_whatever_the_segment(
    tmp_path: Path, crm: Path, command: tuple[str, ...]
) -> None:
    """A bad timestamp on one person's event fails every segment alike, one without an
    event condition too: the events are checked whole, as the contacts are. (Before,
    such a segment never read the events and answered.)"""
    root = project(tmp_path / "p", crm)
    person = target(crm)
    events = pl.read_csv(root / "data" / "events.csv", infer_schema=False)
    theirs = pl.read_parquet(crm / "contacts.parquet").get_column("contact_id")[person.row]
    at = events.with_row_index("_i").filter(pl.col("contact_id") == theirs).get_column("_i")
    assert at.len() > 0
    times = events.get_column("event_time").to_list()
    times[int(at[0])] = "yesterday"
    events.with_columns(pl.Series("event_time", times)).write_csv(root / "data" / "events.csv")
    toml = root / "audiences.toml"
    text = toml.read_text(encoding="utf-8").replace(
        'path = "data/events.parquet"',
        'path = "data/events.csv"\ncolumns = { event_time = "datetime" }',
        1,
    )
    toml.write_text(text, encoding="utf-8")
    with_it, without_it = answers(root, person.email, person.insurance, *command)
    assert with_it == without_it
    assert with_it[0] == 1 and "source 'events'" in with_it[1]


def test_validate_of_an_id_column_that_does_not_parse_is_an_error_not_a_traceback(
    tmp_path: Path, crm: Path
) -> None:
    root = project(tmp_path / "p", crm)
    adults(root)
    toml = root / "audiences.toml"
    text = toml.read_text(encoding="utf-8")
    text = text.replace('path = "data/contacts.parquet"', 'path = "data/contacts.csv"', 1)
    text = text.replace(
        "# columns = { birth_date",
        f'{CSV_TYPES[:-2]}, contact_id = "int" }}\n# columns = {{ birth_date',
        1,
    )
    toml.write_text(text, encoding="utf-8")
    result = run(root, "validate", "--json")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    messages = [e["message"] for e in json.loads(result.stdout)["errors"]]
    assert any("contact_id" in m and "declared int" in m for m in messages), messages
