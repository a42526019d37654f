"""Bad inputs, as a table: (what is wrong, command, exit code, message pattern).

Every row must end in exactly one line on stderr starting with ``Error: `` that names
the place and the fix, no traceback, nothing on stdout, and nothing half-written: no
new file under ``exports/`` or ``.audiences/reports/`` and no build left ``running``.
Each row starts from a project that builds cleanly (the control rows prove it).
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner, Result
from conftest import frozen_clock

from audiences.cli import cli
from audiences.pipeline.project import init_project

AS_OF = date(2025, 6, 15)


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


CASES = Path(__file__).parent / "cases" / "bad"
ADULTS = "name: adults\ndestinations: [file]\nwhere:\n  age: {gte: 18}\n"
CSV_COLUMNS = (
    'columns = { birth_date = "date", marketing_opt_in = "bool", hipaa_auth_date = "date", hipaa_auth_expires = "date", '
    'hipaa_auth_revoked_at = "date", diagnosis_codes = "list[str]", '
    'service_lines = "list[str]", medication_classes = "list[str]" }'
)

Setup = Callable[[Path], None]


@pytest.fixture(scope="module")
def crm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from audiences.demo.sample import write

    out = tmp_path_factory.mktemp("crm-bad")
    write(out, 2_000, seed=3, as_of=AS_OF, formats=("parquet", "csv"))
    return out


def make_project(root: Path, crm: Path, *, csv: bool = False) -> Path:
    """The template project with one file-destination segment under the baseline pack
    (these tests are about bad input, not approvals: hipaa-marketing requires one, and
    audiences.toml may not switch that off)."""
    init_project(root)
    edit_toml(root, 'pack = "hipaa-marketing"', 'pack = "baseline"')
    shutil.copytree(crm, root / "data")
    for template in (root / "segments").glob("*.yaml"):
        template.unlink()
    (root / "segments" / "adults.yaml").write_text(ADULTS, encoding="utf-8")
    if csv:
        use_csv_contacts(root)
    return root


def edit_toml(root: Path, old: str, new: str) -> None:
    toml = root / "audiences.toml"
    text = toml.read_text(encoding="utf-8")
    assert old in text, old
    toml.write_text(text.replace(old, new, 1), encoding="utf-8")


def use_csv_contacts(root: Path) -> None:
    edit_toml(root, 'path = "data/contacts.parquet"', 'path = "data/contacts.csv"')
    edit_toml(root, "# columns = { birth_date", f"{CSV_COLUMNS}\n# columns = {{ birth_date")


def run(root: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["-p", str(root), *args])


def written(root: Path) -> set[Path]:
    return {
        p
        for folder in (root / "exports", root / ".audiences" / "reports")
        if folder.exists()
        for p in folder.rglob("*")
    }


# ------------------------------------------------------------------------------ setups
def segment_case(name: str) -> Setup:
    return lambda root: shutil.copyfile(CASES / f"{name}.yaml", root / "segments" / f"{name}.yaml")


def pack_case(name: str) -> Setup:
    def setup(root: Path) -> None:
        shutil.copyfile(CASES / f"{name}.yaml", root / "policies" / "house.yaml")
        # make_project has already switched the pack line to the baseline pack
        edit_toml(root, 'pack = "baseline"', 'pack = "policies/house.yaml"')

    return setup


def toml_edit(old: str, new: str) -> Setup:
    return lambda root: edit_toml(root, old, new)


def contacts_csv(change: Callable[[pl.DataFrame], pl.DataFrame] | None = None) -> Setup:
    """Point contacts at the CSV (types declared) and rewrite it through ``change``."""

    def setup(root: Path) -> None:
        use_csv_contacts(root)
        if change is not None:
            path = root / "data" / "contacts.csv"
            change(pl.read_csv(path, infer_schema=False)).write_csv(path)

    return setup


def date_cell(row: int, value: str) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """Put ``value`` in birth_date at data row ``row`` of an adult (row 0 is CSV line 2)."""

    def change(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(
            pl.when(pl.int_range(pl.len()) == row)
            .then(pl.lit(value))
            .otherwise(pl.col("birth_date"))
            .alias("birth_date")
        )

    return change


def bool_cell(row: int, value: str) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """Declare marketing_opt_in a bool and put ``value`` in it at data row ``row``."""

    def change(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(
            pl.when(pl.int_range(pl.len()) == row)
            .then(pl.lit(value))
            .otherwise(pl.col("marketing_opt_in"))
            .alias("marketing_opt_in")
        )

    return change


def duplicate_an_adult(frame: pl.DataFrame) -> pl.DataFrame:
    adult = frame.filter(pl.col("birth_date").str.starts_with("196")).head(1)
    return pl.concat([frame, adult])


def latin1(root: Path) -> None:
    use_csv_contacts(root)
    path = root / "data" / "contacts.csv"
    text = path.read_text(encoding="utf-8")
    assert any(ch in text for ch in "éñüö"), "the sample should have accented names"
    path.write_bytes(text.encode("latin-1", errors="replace"))


def empty_file(name: str) -> Setup:
    def setup(root: Path) -> None:
        (root / "data" / name).write_bytes(b"")

    return setup


def null_an_adults_id(frame: pl.DataFrame) -> pl.DataFrame:
    first = frame.with_row_index("_i").filter(pl.col("birth_date").str.starts_with("196"))
    row = int(first["_i"][0])
    ids = frame.get_column("contact_id").to_list()
    ids[row] = None
    return frame.with_columns(pl.Series("contact_id", ids, dtype=pl.String))


def ragged_csv(root: Path) -> None:
    use_csv_contacts(root)
    path = root / "data" / "contacts.csv"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[499] = lines[499].rstrip("\n") + ",extra\n"  # line 500 of the file
    path.write_text("".join(lines), encoding="utf-8")


def deep_segment(levels: int) -> Setup:
    def setup(root: Path) -> None:
        inner = "{age: {gte: 18}}"
        for _ in range(levels):
            inner = "{all: [" + inner + "]}"
        text = f"name: adults\ndestinations: [file]\nwhere: {inner}\n"
        (root / "segments" / "adults.yaml").write_text(text, encoding="utf-8")

    return setup


def header_only_csv(root: Path) -> None:
    use_csv_contacts(root)
    path = root / "data" / "contacts.csv"
    header = path.read_text(encoding="utf-8").splitlines()[0]
    path.write_text(header + "\n", encoding="utf-8")


BUILD = ("build", "--all", "--as-of", AS_OF.isoformat())
VALIDATE = ("validate", "--as-of", AS_OF.isoformat())
PREVIEW = ("preview", "adults", "--as-of", AS_OF.isoformat())

# (setup, command, exit code, message pattern)
CASES_TABLE = [
    pytest.param(
        segment_case("segment-event-typo"), VALIDATE, 1,
        r"segment-event-typo\.yaml: segment 'event-typo' uses event type 'vist', which no "
        r"event in the data has .* did you mean 'visit'\?",
        id="event-type-typo",
    ),
    pytest.param(
        segment_case("segment-malformed"), BUILD, 1,
        r"segments/segment-malformed\.yaml:6: malformed YAML: .* — check indentation",
        id="malformed-yaml-segment",
    ),
    pytest.param(
        segment_case("segment-unknown-column"), VALIDATE, 1,
        r"segment-unknown-column\.yaml:6: unknown column 'stat' — did you mean 'state'\?",
        id="unknown-column",
    ),
    pytest.param(
        segment_case("segment-wrong-operator"), BUILD, 1,
        r"segment-wrong-operator\.yaml:6: 'starts_with' does not apply to 'age' .* operators "
        r"for it: eq",
        id="wrong-operator-for-type",
    ),
    pytest.param(
        segment_case("segment-bad-window"), VALIDATE, 1,
        r"segment-bad-window\.yaml:6: '2 years' is not a valid duration for 'within' — write",
        id="bad-window",
    ),
    pytest.param(
        segment_case("segment-unknown-destination"), BUILD, 1,
        r"segment 'unknown-destination' names unknown destination\(s\) \['tiktok'\]",
        id="segment-unknown-destination",
    ),
    pytest.param(
        toml_edit('name = "demo-health-system"', 'name = "demo-health-system'), BUILD, 1,
        r"audiences\.toml: malformed TOML: .*line 5.* — fix the syntax",
        id="malformed-toml",
    ),
    pytest.param(
        toml_edit("[identity]", "[identiy]"), VALIDATE, 1,
        r"audiences\.toml: unknown key 'identiy' — did you mean 'identity'\?",
        id="misspelt-toml-section",
    ),
    pytest.param(
        toml_edit('kind = "meta"', 'kind = "tiktok"'), VALIDATE, 1,
        r"\[destinations\.meta\] unknown destination kind 'tiktok' — use one of: file, "
        r"google_ads, google_data_manager, meta",
        id="unknown-destination-kind",
    ),
    pytest.param(
        contacts_csv(date_cell(1233, "abc")), BUILD, 1,
        r"source 'contacts': column 'birth_date' holds a value that is not a date \(first at "
        r"line 1235 of contacts\.csv\) — fix the data or the declared type",
        id="abc-in-a-date-column",
    ),
    pytest.param(
        toml_edit('path = "data/contacts.parquet"', 'path = "data/crm.parquet"'), BUILD, 1,
        r"source 'contacts': file .*crm\.parquet does not exist — fix \[sources\.contacts\]\.path",
        id="missing-source-file",
    ),
    pytest.param(
        toml_edit('path = "data/contacts.parquet"', 'path = "data/crm.parquet"'), ("budget",), 1,
        r"source 'contacts': file .*crm\.parquet does not exist — fix \[sources\.contacts\]\.path",
        id="missing-source-file-budget",
    ),
    pytest.param(
        empty_file("contacts.parquet"), BUILD, 1,
        r"source 'contacts': .*contacts\.parquet is empty",
        id="empty-source-file",
    ),
    pytest.param(
        empty_file("events.parquet"), VALIDATE, 1,
        r"source 'events': .*events\.parquet is empty",
        id="empty-events-file",
    ),
    pytest.param(
        header_only_csv, BUILD, 1,
        r"source 'contacts': .*contacts\.csv has no rows",
        id="header-only-csv",
    ),
    pytest.param(
        latin1, BUILD, 1,
        r"source 'contacts': contacts\.csv is not UTF-8 text — re-save the CSV as UTF-8",
        id="latin-1-csv",
    ),
    pytest.param(
        contacts_csv(bool_cell(700, "maybe")), BUILD, 1,
        r"source 'contacts': column 'marketing_opt_in' holds a value that is not a bool \(first "
        r"at line 702 of contacts\.csv\)",
        id="maybe-in-a-bool-column",
    ),
    pytest.param(
        contacts_csv(null_an_adults_id), BUILD, 1,
        r"has 1 row\(s\) without an id in column 'contact_id' — every CRM record needs an id",
        id="missing-contact-id",
    ),
    pytest.param(
        ragged_csv, BUILD, 1,
        r"line 500 of contacts\.csv has \d+ fields, the header has \d+ — fix that row",
        id="ragged-csv-row",
    ),
    pytest.param(
        toml_edit('state_dir = ".audiences"', 'state_dir = "/proc/nope"'), BUILD, 1,
        r"cannot create the state folder /proc/nope .* — set state_dir in audiences\.toml",
        id="unusable-state-dir",
    ),
    pytest.param(
        deep_segment(2000), BUILD, 1,
        r"nested too deeply \(segments allow 64 levels of conditions\)",
        id="segment-nested-2000-deep",
    ),
    pytest.param(
        deep_segment(70), BUILD, 1,
        r"conditions nested too deeply \(the limit is 64 levels\)",
        id="segment-nested-70-deep",
    ),
    pytest.param(
        contacts_csv(duplicate_an_adult), BUILD, 1,
        r"duplicate ids in column 'contact_id' \(2 rows share an id with another row\) — "
        r"each CRM record needs a unique id",
        id="duplicate-contact-ids",
    ),
    pytest.param(
        toml_edit('email = "email"', 'email = "e_mail"'), VALIDATE, 1,
        r"identity 'email' maps to column 'e_mail', which source 'contacts' lacks — fix "
        r"\[identity\]\.email",
        id="identity-column-missing",
    ),
    pytest.param(
        pack_case("pack-unknown-rule"), BUILD, 1,
        r"house\.yaml: rule 'geofence' has unknown rule kind 'geofence' — use one of: consent",
        id="pack-unknown-rule",
    ),
    pytest.param(
        pack_case("pack-missing-param"), VALIDATE, 1,
        r"house\.yaml: rule 'teens' \(minors\) is missing parameter 'min_age' — add "
        r"params\.min_age",
        id="pack-missing-param",
    ),
    pytest.param(
        pack_case("pack-k1"), BUILD, 1,
        r"house\.yaml: rule 'min-size' \(min_size\) parameter 'k': .* — set k to 2 or more",
        id="pack-k-1",
    ),
    pytest.param(
        lambda root: None, (*PREVIEW, "--epsilon", "0"), 2,
        r"--epsilon 0\.0 must be a positive finite number",
        id="epsilon-zero",
    ),
    pytest.param(
        lambda root: None, (*PREVIEW, "--epsilon", "-0.5"), 2,
        r"--epsilon -0\.5 must be a positive finite number",
        id="epsilon-negative",
    ),
    pytest.param(
        lambda root: None, (*PREVIEW, "--epsilon", "inf"), 2,
        r"must be a positive finite number",
        id="epsilon-infinite",
    ),
    pytest.param(
        lambda root: None, (*PREVIEW, "--epsilon", "1.5"), 2,
        r"epsilon 1\.5 exceeds the per-query cap 1 — ask for less",
        id="epsilon-above-pack-cap",
    ),
    pytest.param(
        toml_edit("epsilon = 1.0", "epsilon = 0"), VALIDATE, 1,
        r"audiences\.toml: insights\.epsilon: .*greater than 0",
        id="config-epsilon-zero",
    ),
    pytest.param(
        toml_edit("epsilon = 1.0", "epsilon = 2.0"), PREVIEW, 1,
        r"\[insights\] epsilon 2 exceeds the policy pack's per-query cap 1 — lower "
        r"\[insights\] epsilon",
        id="config-epsilon-above-pack-cap",
    ),
    pytest.param(
        toml_edit("epsilon = 1.0", "epsilon = 2.0"), VALIDATE, 1,
        r"\[insights\] epsilon 2 exceeds the policy pack's per-query cap 1",
        id="config-epsilon-above-pack-cap-validate",
    ),
    pytest.param(
        toml_edit('dimensions = ["age_band", "state", "sex"]', 'dimensions = ["income"]'),
        PREVIEW, 1,
        r"\[insights\] dimension 'income' has no public key set — use age_band, sex, state",
        id="unknown-dimension",
    ),
    pytest.param(
        toml_edit('dimensions = ["age_band", "state", "sex"]', 'dimensions = ["age_band", "zip"]'),
        VALIDATE, 1,
        r"\[insights\] dimension 'zip' has no public key set",
        id="unknown-dimension-validate",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("setup", "args", "code", "pattern"), CASES_TABLE)
def test_bad_input(
    tmp_path: Path, crm: Path, setup: Setup, args: tuple[str, ...], code: int, pattern: str
) -> None:
    root = make_project(tmp_path / "project", crm)
    setup(root)
    before = written(root)
    result = run(root, *args)
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert written(root) == before
    db = root / ".audiences" / "state.db"
    if db.exists():
        conn = sqlite3.connect(db)
        try:
            running = conn.execute("SELECT count(*) FROM builds WHERE status='running'").fetchone()
        finally:
            conn.close()
        assert running == (0,)


@pytest.mark.parametrize("csv", [False, True], ids=["parquet", "csv"])
def test_control_project_builds(tmp_path: Path, crm: Path, csv: bool) -> None:
    """The untouched project (Parquet, or CSV with declared types) builds and releases."""
    root = make_project(tmp_path / "project", crm, csv=csv)
    result = run(root, *BUILD)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert any(p.name == "manifest.json" for p in written(root))


def test_control_preview(tmp_path: Path, crm: Path) -> None:
    root = make_project(tmp_path / "project", crm)
    result = run(root, *PREVIEW, "--epsilon", "1", "--json")
    assert result.exit_code == 0, result.stderr


def test_a_failed_build_is_recorded_as_failed(tmp_path: Path, crm: Path) -> None:
    root = make_project(tmp_path / "project", crm)
    contacts_csv(date_cell(10, "abc"))(root)
    assert run(root, *BUILD).exit_code == 1
    conn = sqlite3.connect(root / ".audiences" / "state.db")
    try:
        rows = conn.execute("SELECT status, reasons FROM builds").fetchall()
    finally:
        conn.close()
    assert [status for status, _ in rows] == ["failed"]
    assert "not a date" in rows[0][1]


def test_a_toml_saved_with_a_bom_loads(tmp_path: Path, crm: Path) -> None:
    """Windows editors save UTF-8 with a byte-order mark; that is still valid TOML."""
    root = make_project(tmp_path / "project", crm)
    toml = root / "audiences.toml"
    toml.write_bytes(b"\xef\xbb\xbf" + toml.read_bytes())
    result = run(root, *VALIDATE)
    assert result.exit_code == 0, result.stderr


def test_polars_errors_lose_the_values_they_quote() -> None:
    """Fallback messages quote polars, which lists failing cells (raw PII, possibly)."""
    from audiences.crm.sources import _polars_summary

    with pytest.raises(pl.exceptions.InvalidOperationError) as caught:
        pl.Series("email", ["jane.doe@example.com"]).cast(pl.Date, strict=True)
    assert "jane.doe@example.com" in str(caught.value)
    summary = _polars_summary(caught.value)
    assert "jane" not in summary and "\n" not in summary
    assert "failed in column 'email'" in summary
