"""Database sources (docs/warehouse.md): the same CRM as CSV files, as a DuckDB file and
in PostgreSQL builds the same release through the same gate.

The PostgreSQL server is the session's throwaway server (tests/postgres_server.py).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner, Result
from conftest import Approver, frozen_clock, trust

from audiences.cli import cli
from audiences.demo.warehouse import load_duckdb, load_postgres
from audiences.pipeline.project import init_project

AS_OF = date(2025, 6, 2)
CASE = Path(__file__).parent / "cases" / "warehouse" / "warehouse-adults.yaml"
LISTS = ("diagnosis_codes", "service_lines", "medication_classes")
DECLARED = (
    'columns = { birth_date = "date", ' + ", ".join(f'{c} = "list[str]"' for c in LISTS) + " }"
)


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    with frozen_clock(AS_OF):
        yield


@pytest.fixture(scope="module")
def crm(sample_crm: Callable[..., Path]) -> dict[str, pl.DataFrame]:
    folder = sample_crm(3000)
    return {
        "contacts": pl.read_parquet(folder / "contacts.parquet"),
        "events": pl.read_parquet(folder / "events.parquet"),
    }


def run(root: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["-p", str(root), *args], catch_exceptions=False)


def sources_toml(contacts: str, events: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        text = re.sub(r'(?m)^path = "data/contacts\.parquet".*$', contacts, text)
        return re.sub(r'(?m)^path = "data/events\.parquet".*$', events, text)

    return edit


def make(
    tmp: Path, name: str, approver: Approver, edit: Callable[[str], str], *, declare: bool = True
) -> Path:
    root = tmp / name
    init_project(root)
    for template in (root / "segments").glob("*.yaml"):
        template.unlink()
    (root / "data").mkdir()
    toml = root / "audiences.toml"
    text = trust(edit(toml.read_text()), approver.name, approver.public_base64)
    if declare:
        text = text.replace('id = "contact_id"\n', f'id = "contact_id"\n{DECLARED}\n', 1)
    toml.write_text(text)
    shutil.copyfile(CASE, root / "segments" / CASE.name)
    return root


def approve_and_build(root: Path, approver: Approver) -> dict[str, Any]:
    approved = run(
        root,
        "approve",
        "warehouse-adults",
        "--by",
        approver.name,
        "--key",
        str(approver.private_key),
    )
    assert approved.exit_code == 0, approved.output
    built = run(root, "build", "warehouse-adults", "--json")
    assert built.exit_code == 0, built.output
    doc: dict[str, Any] = json.loads(built.stdout)
    return doc["builds"][0]


def released(root: Path, build: dict[str, Any]) -> pl.DataFrame:
    """The exported people by their hashed identifiers (salt-free: comparable across projects)."""
    parquet = Path(build["files"]["file"]["parquet"])
    frame = pl.read_parquet(parquet)
    hashed = [c for c in frame.columns if c != "member_key"]
    return frame.select(sorted(hashed)).sort(pl.all())


def verdict(build: dict[str, Any]) -> dict[str, Any]:
    """The gate's verdict: status, reasons, exact figures, every rule's outcome and evidence."""
    # the audience's opaque name is per project (salted); everything else must agree
    text = re.sub(r"aud-[0-9a-f]{8}", "aud-*", Path(build["reports"]["json"]).read_text())
    report = json.loads(text)
    releases = [
        {k: r[k] for k in ("destination", "members", "excluded_keys", "holds")}
        for r in report["releases"]
    ]
    return {
        "status": (build["status"], report["status"], report["block_reasons"]),
        "figures": report["figures"],
        "verdicts": report["verdicts"],
        "releases": releases,
    }


def test_csv_duckdb_and_postgres_release_the_same_people(
    tmp_path: Path,
    crm: dict[str, pl.DataFrame],
    approver: Approver,
    postgres: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    csv = make(
        tmp_path,
        "csv",
        approver,
        sources_toml('path = "data/contacts.csv"', 'path = "data/events.csv"'),
    )
    for name, frame in crm.items():
        lists = [pl.col(c).list.join(";") for c in LISTS if c in frame.columns]
        frame.with_columns(lists).write_csv(csv / "data" / f"{name}.csv")

    duck = make(
        tmp_path,
        "duck",
        approver,
        sources_toml(
            'kind = "duckdb"\npath = "data/crm.duckdb"\ntable = "contacts"',
            'kind = "duckdb"\npath = "data/crm.duckdb"\ntable = "events"',
        ),
    )
    load_duckdb(duck / "data" / "crm.duckdb", crm)

    pg = make(
        tmp_path,
        "pg",
        approver,
        sources_toml(
            'kind = "postgres"\nuri_env = "CRM_TEST_URL"\nschema = "crm"\ntable = "contacts"',
            'kind = "postgres"\nuri_env = "CRM_TEST_URL"\nschema = "crm"\ntable = "events"',
        ),
    )
    load_postgres(postgres.conninfo, crm, schema="crm")
    monkeypatch.setenv("CRM_TEST_URL", postgres.url)

    builds = {
        name: approve_and_build(root, approver)
        for name, root in (("csv", csv), ("duck", duck), ("pg", pg))
    }
    people = {
        name: released(root, builds[name])
        for name, root in (("csv", csv), ("duck", duck), ("pg", pg))
    }
    assert builds["csv"]["status"] == "released" and people["csv"].height >= 100
    assert people["duck"].equals(people["csv"])
    assert people["pg"].equals(people["csv"])
    assert verdict(builds["duck"]) == verdict(builds["csv"])
    assert verdict(builds["pg"]) == verdict(builds["csv"])
    # what each platform would receive of the identifiers, counted the same in each source
    counted = {}
    for name, root in (("csv", csv), ("duck", duck), ("pg", pg)):
        result = run(root, "columns", "contacts", "--identifiers", "--json")
        assert result.exit_code == 0, result.output
        counted[name] = json.loads(result.stdout)["sources"]["contacts"]["identifiers"]
    assert counted["csv"]["meta"] and counted["duck"] == counted["csv"] == counted["pg"]


# -- the DP ledger's dataset id ----------------------------------------------------------------


def small_crm() -> dict[str, pl.DataFrame]:
    contacts = pl.DataFrame(
        {
            "contact_id": ["C1", "C2", "C3"],
            "email": ["a@example.com", None, ""],
            "birth_date": [date(1960, 2, 29), date(1990, 1, 31), None],
            "diagnosis_codes": [["E11.9"], [], None],
        }
    )
    return {"contacts": contacts}


def config_for(root: Path, contacts: str) -> Any:
    from audiences.core.config import ProjectConfig

    data = {"sources": {"contacts": json.loads(contacts)}, "identity": {"email": "email"}}
    return ProjectConfig.model_validate(data).model_copy(update={"root": root})


def digests(root: Path, source: str, load: Callable[[dict[str, pl.DataFrame]], None]) -> list[str]:
    """The dataset id of: the CRM, the same rows in another order, one value changed, one
    row duplicated, and the CRM again."""
    from audiences.crm.sources import source_digest

    config = config_for(root, source)
    config.state_dir.mkdir()  # DuckDB digests are cached there, keyed to the file's state
    base = small_crm()["contacts"]
    variants = [
        base,
        base.reverse(),
        base.with_columns(
            pl.when(pl.col("contact_id") == "C2")
            .then(pl.lit("b@example.com"))
            .otherwise(pl.col("email"))
            .alias("email")
        ),
        pl.concat([base, base.head(1)]),
        base,
    ]
    out = []
    for frame in variants:
        load({"contacts": frame})
        out.append(source_digest(config))
    return out


def test_duckdb_dataset_id_is_the_table_contents(tmp_path: Path) -> None:
    path = tmp_path / "crm.duckdb"
    ids = digests(
        tmp_path,
        '{"kind": "duckdb", "path": "crm.duckdb", "table": "contacts"}',
        lambda frames: load_duckdb(path, frames),
    )
    same, reordered, changed, duplicated, again = ids
    assert same == reordered == again
    assert len({same, changed, duplicated}) == 3
    assert len(json.loads((tmp_path / ".audiences" / "digests.json").read_text())) == 5


def test_postgres_dataset_id_is_the_table_contents(
    tmp_path: Path, postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_TEST_URL", postgres.url)
    ids = digests(
        tmp_path,
        '{"kind": "postgres", "uri_env": "CRM_TEST_URL", "schema": "d", "table": "contacts"}',
        lambda frames: load_postgres(postgres.conninfo, frames, schema="d"),
    )
    same, reordered, changed, duplicated, again = ids
    assert same == reordered == again
    assert len({same, changed, duplicated}) == 3


#: The dataset ids the first format (the code before "v2-" ids, at e80085d) gave the rows of
#: small_crm(): the ledger keys of the spends an earlier version recorded.
FIRST_FORMAT_IDS = {
    "duckdb": "85c08ca97a9415bb45d9da579b940c80fadb4e3aee8d5834940cbf44d6ade974",
    "postgres": "7af27152c109882e47c06f09f78336fd20b8a7ebdc733b33b824354cefef226d",
}


def loaded_small_crm(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Callable[[pl.DataFrame], None]]:
    """A config over small_crm() in DuckDB or PostgreSQL, and the loader of its contacts."""
    if backend == "duckdb":
        source = '{"kind": "duckdb", "path": "crm.duckdb", "table": "contacts"}'

        def load(frame: pl.DataFrame) -> None:
            load_duckdb(tmp_path / "crm.duckdb", {"contacts": frame})
    else:
        postgres = request.getfixturevalue("postgres")
        monkeypatch.setenv("CRM_TEST_URL", postgres.url)
        source = (
            '{"kind": "postgres", "uri_env": "CRM_TEST_URL", "schema": "up", "table": "contacts"}'
        )

        def load(frame: pl.DataFrame) -> None:
            load_postgres(postgres.conninfo, {"contacts": frame}, schema="up")

    load(small_crm()["contacts"])
    config = config_for(tmp_path, source)
    config.state_dir.mkdir()
    return config, load


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
def test_the_dataset_id_format_is_prefixed_and_read_with_the_first(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """The id is ``v2-`` + 64 hex digits (a first-format id is bare hex: they never collide);
    the first format's id of the same rows, read in the same statement, is exactly the one
    the earlier version computed."""
    from audiences.crm.sources import dataset_id_formats, source_digest

    config, _ = loaded_small_crm(tmp_path, backend, request, monkeypatch)
    current, first = dataset_id_formats(config)
    assert re.fullmatch(r"v2-[0-9a-f]{64}", current)
    assert current == source_digest(config) == source_digest(config)  # the second: cached
    assert first == FIRST_FORMAT_IDS[backend]


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
def test_an_upgrade_of_the_dataset_id_never_resets_the_budget(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """ATTACK: spend most of the budget under the first-format id (what an earlier version
    recorded, here under another scope: the same tables reached through another host
    name), upgrade, wait for the next period (the period cap renews; the unchanged-data
    cap must not) and ask again, through the Python API, over the unchanged rows: the
    spends still count. After a real change of the rows the budget is fresh again."""
    import sqlite3

    from audiences.core.errors import BudgetExhausted
    from audiences.crm.sources import source_digest
    from policies.privacy.ledger import (
        BudgetPolicy,
        Ledger,
        PrivacyBudget,
        _connect_shared,
        ledger_home,
        open_ledger,
    )

    config, load = loaded_small_crm(tmp_path, backend, request, monkeypatch)
    policy = BudgetPolicy(epsilon_per_period=1.0)
    old = FIRST_FORMAT_IDS[backend]
    before = Ledger(_connect_shared(ledger_home()), policy, scope="another-host-alias")
    with before:
        before.spend(old, PrivacyBudget(0.8, 0.0), "preview x", "marketer", date(2025, 5, 10))
    upgraded = source_digest(config)
    assert upgraded != old
    with open_ledger(config, policy) as ledger:
        assert ledger.remaining(upgraded, date(2025, 6, 2)).epsilon == pytest.approx(0.2)
        with pytest.raises(BudgetExhausted):
            ledger.spend(upgraded, PrivacyBudget(0.5, 0.0), "preview y", "marketer", AS_OF)
        ledger.spend(upgraded, PrivacyBudget(0.2, 0.0), "preview z", "marketer", AS_OF)
        assert ledger.remaining(upgraded, date(2025, 9, 1)).epsilon == pytest.approx(0.0)
    with open_ledger(config, policy) as ledger:  # a later run: the link is kept
        assert ledger.remaining(upgraded, date(2025, 9, 1)).epsilon == pytest.approx(0.0)
    links = sqlite3.connect(ledger_home() / "ledger.sqlite")
    assert links.execute("SELECT dataset, predecessor FROM dp_dataset_links").fetchall() == [
        (upgraded, old)
    ]
    links.close()
    changed = small_crm()["contacts"].with_columns(pl.lit("c@example.com").alias("email"))
    load(changed)
    fresh = source_digest(config)
    with open_ledger(config, policy) as ledger:
        assert ledger.remaining(fresh, date(2025, 9, 1)).epsilon == pytest.approx(1.0)


def test_no_first_format_spend_no_second_scan(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger without first-format spends (a new installation) never reads the tables a
    second time: no link is made."""
    import sqlite3

    from audiences.crm.sources import source_digest
    from policies.privacy.ledger import BudgetPolicy, PrivacyBudget, ledger_home, open_ledger

    config, _ = loaded_small_crm(tmp_path, "duckdb", request, monkeypatch)
    policy = BudgetPolicy(epsilon_per_period=1.0)
    dataset = source_digest(config)
    with open_ledger(config, policy) as ledger:
        ledger.spend(dataset, PrivacyBudget(0.3, 0.0), "preview x", "marketer", AS_OF)
        assert ledger.remaining(dataset, AS_OF).epsilon == pytest.approx(0.7)
    links = sqlite3.connect(ledger_home() / "ledger.sqlite")
    assert links.execute("SELECT COUNT(*) FROM dp_dataset_links").fetchone() == (0,)
    links.close()


# -- bad input: one line, the exit code, never the URI -----------------------------------------

SECRET = "s3cret-Pa55word"


@pytest.fixture(scope="module")
def pg_crm(postgres: Any, crm: dict[str, pl.DataFrame]) -> Any:
    load_postgres(postgres.conninfo, crm, schema="bad")
    return postgres


def pg_project(
    tmp_path: Path, approver: Approver, *, table: str = "contacts", declared: str = DECLARED
) -> Path:
    root = make(
        tmp_path,
        "p",
        approver,
        sources_toml(
            f'kind = "postgres"\nuri_env = "CRM_TEST_URL"\nschema = "bad"\ntable = "{table}"',
            'kind = "postgres"\nuri_env = "CRM_TEST_URL"\nschema = "bad"\ntable = "events"',
        ),
    )
    toml = root / "audiences.toml"
    toml.write_text(toml.read_text().replace(DECLARED, declared))
    return root


def secret_url(postgres: Any, *, port: int | None = None, db: str = "postgres") -> str:
    return f"postgresql://{postgres.user}:{SECRET}@127.0.0.1:{port or postgres.port}/{db}"


def assert_one_line(result: Result, pattern: str, *, url: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert SECRET not in result.output and url not in result.output
    assert "Traceback" not in result.output


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("no variable", r"environment variable CRM_TEST_URL is not set"),
        ("unreachable", r"CRM_TEST_URL: the server cannot be reached"),
        ("no database", r"CRM_TEST_URL: the database does not exist"),
        ("unknown user", r"CRM_TEST_URL: the server refused the credentials"),
        ("bad uri", r"\$CRM_TEST_URL does not hold a valid PostgreSQL connection URI"),
        ("no table", r"source 'contacts': .* has no table or view bad\.patients"),
        ("no column", r"source 'contacts' \(table bad\.contacts .*\) has no column\(s\) \['mrn'\]"),
        (
            "wrong type",
            r"column 'email' of table bad\.contacts .* is text in the database, "
            r"declared date — declare it as str",
        ),
    ],
)
def test_postgres_bad_input_is_one_line_without_the_uri(
    tmp_path: Path,
    approver: Approver,
    pg_crm: Any,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    pattern: str,
) -> None:
    url = secret_url(pg_crm)
    table, declared = "contacts", DECLARED
    if case == "unreachable":
        url = secret_url(pg_crm, port=closed_port())
    elif case == "no database":
        url = secret_url(pg_crm, db="nosuchdb")
    elif case == "unknown user":
        url = secret_url(pg_crm).replace(f"//{pg_crm.user}:", "//nosuchuser:")
    elif case == "bad uri":
        url = f"postgresql://{pg_crm.user}:{SECRET}@127.0.0.1:{pg_crm.port}/postgres?sslmode=maybe"
    elif case == "no table":
        table = "patients"
    elif case == "no column":
        declared = DECLARED.replace("birth_date = ", 'mrn = "str", birth_date = ')
    elif case == "wrong type":
        declared = DECLARED.replace("birth_date = ", 'email = "date", birth_date = ')
    if case != "no variable":
        monkeypatch.setenv("CRM_TEST_URL", url)
    else:
        monkeypatch.delenv("CRM_TEST_URL", raising=False)
    root = pg_project(tmp_path, approver, table=table, declared=declared)
    commands = [("validate",), ("build", "warehouse-adults")]
    if case not in ("no column", "wrong type"):  # `columns` shows the table as it is
        commands.append(("columns",))
    for command in commands:
        result = run(root, *command)
        if command == ("validate",):  # validate lists every problem: one line each
            assert result.exit_code == 1, result.output
            assert re.search(pattern, result.output), result.output
            assert SECRET not in result.output and url not in result.output
            continue
        assert_one_line(result, pattern, url=url)
    leaked = [p for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []


def test_the_uri_is_nowhere_after_a_build(
    tmp_path: Path, approver: Approver, pg_crm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build, report and status from PostgreSQL with a password in the URI: the password
    and the URI appear in no output, no file of the project (state, reports, exports)."""
    url = secret_url(pg_crm)
    monkeypatch.setenv("CRM_TEST_URL", url)
    root = pg_project(tmp_path, approver)
    build = approve_and_build(root, approver)
    assert build["status"] == "released"
    outputs = [
        run(root, *c).output
        for c in (
            ("report", "warehouse-adults"),
            ("status",),
            ("history", "warehouse-adults"),
            ("budget",),
        )
    ]
    for text in outputs:
        assert SECRET not in text and url not in text
    leaked = [p for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []


# -- the selection inside the database ---------------------------------------------------------

SEGMENTS = {
    # all in SQL: age, a list prefix, an event count in a window, days since the last visit
    "sql": "age: {between: [30, 60]}\n    - diagnosis_codes: {starts_with: E11}\n"
    "    - event: {type: visit, within: 365d, count: {gte: 2}}\n"
    "    - days_since_last_visit: {lte: 400}",
    # identity-mapped text (state, sex) is compared normalized: applied in polars afterwards
    "identity": "state: {in: [new york, CA, tx]}\n    - sex: {eq: female}\n"
    "    - event: {type: email_click, within: 180d}",
    # a case-insensitive column
    "folded": "preferred_language: {in: [EN, Es]}\n    - age: {gte: 65}",
    # a normalized comparison inside an OR with events: the whole segment runs in polars
    "fallback": "any:\n        - state: {eq: new york}\n"
    "        - event: {type: appointment, ahead: 30d}",
}


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
def test_the_database_selects_what_polars_selects(
    tmp_path: Path,
    crm: dict[str, pl.DataFrame],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
) -> None:
    from audiences.core.config import ProjectConfig
    from audiences.crm.sources import load_sources
    from audiences.pipeline.select import gate_columns, segment_context
    from audiences.segments import compile_segment, parse_segment
    from audiences.segments.sql_run import run_segment_in_tables

    if backend == "duckdb":
        load_duckdb(tmp_path / "crm.duckdb", crm)
        where: dict[str, Any] = {"kind": "duckdb", "path": "crm.duckdb"}
    else:
        postgres = request.getfixturevalue("postgres")
        load_postgres(postgres.conninfo, crm, schema="sel")
        monkeypatch.setenv("CRM_TEST_URL", postgres.url)
        where = {"kind": "postgres", "uri_env": "CRM_TEST_URL", "schema": "sel"}
    config = ProjectConfig.model_validate(
        {
            "sources": {
                "contacts": {
                    **where,
                    "table": "contacts",
                    "case_insensitive": ["preferred_language"],
                },
                "events": {**where, "table": "events"},
            },
            "identity": {
                "email": "email",
                "state": "state",
                "gender": "sex",
                "country": "country",
                "birth_date": "birth_date",
                "zip": "zip",
            },
            "consent": {"marketing_opt_in": "marketing_opt_in"},
        }
    ).model_copy(update={"root": tmp_path})
    sources = load_sources(config)
    ctx = segment_context(config, AS_OF)
    wanted = gate_columns(config, sources.contacts.collect_schema())
    for name, conditions in SEGMENTS.items():
        segment = parse_segment(f"name: {name}\nwhere:\n  all:\n    - {conditions}\n")
        expected = compile_segment(segment, crm["contacts"].lazy(), crm["events"].lazy(), ctx)
        expected_ids = set(expected.collect().get_column("contact_id"))
        got = run_segment_in_tables(
            segment, sources.tables["contacts"], sources.tables["events"], ctx, wanted
        )
        if name == "fallback":
            assert got is None
            continue
        assert got is not None and got.columns == wanted, name
        assert set(got.get_column("contact_id")) == expected_ids, name
        assert len(expected_ids) > 0, name


def test_debug_logs_never_hold_the_uri(
    tmp_path: Path,
    approver: Approver,
    pg_crm: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """--debug (tracebacks and every library's debug log) on a working and a failing
    connection: the password is in no record and no output."""
    import logging

    caplog.set_level(logging.DEBUG)
    root = pg_project(tmp_path, approver)
    outputs = []
    for url in (secret_url(pg_crm), secret_url(pg_crm, port=closed_port())):
        monkeypatch.setenv("CRM_TEST_URL", url)
        outputs += [run(root, "--debug", *c).output for c in (("validate",), ("columns",))]
    assert any("cannot be reached" in text for text in outputs)
    assert all(SECRET not in text for text in outputs)
    assert not [r for r in caplog.records if SECRET in r.getMessage()]


# -- the documented example ------------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "warehouse.md"


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), re.DOTALL | re.MULTILINE)


def test_the_documented_duckdb_example_validates_and_builds(
    tmp_path: Path,
    crm: dict[str, pl.DataFrame],
    approver: Approver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/warehouse.md's DuckDB configuration and loading snippet, as written."""
    duckdb_toml, postgres_toml = doc_blocks("toml")
    [loading] = doc_blocks("python")

    def documented(text: str) -> str:
        start, end = text.index("[sources.contacts]"), text.index("[identity]")
        return text[:start] + duckdb_toml + "\n" + text[end:]

    root = make(tmp_path, "doc", approver, documented, declare=False)
    for name, frame in crm.items():
        frame.write_parquet(root / "data" / f"{name}.parquet")
    monkeypatch.chdir(root)
    exec(compile(loading, str(DOC), "exec"), {})
    validated = run(root, "validate")
    assert validated.exit_code == 0, validated.output
    assert approve_and_build(root, approver)["status"] == "released"
    from audiences.core.config import load_config

    (root / "audiences.toml").write_text(
        documented((root / "audiences.toml").read_text()).replace(duckdb_toml, postgres_toml)
    )
    assert load_config(root).sources.contacts.uri_env == "CRM_DATABASE_URL"


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("contacts", "events", "message"),
    [
        ('kind = "postgres"\ntable = "contacts"', None, r'kind = "postgres" source needs uri_env'),
        ('kind = "duckdb"\npath = "crm.duckdb"', None, r'kind = "duckdb" source needs table'),
        (
            'kind = "postgres"\nuri_env = "X"\ntable = "c"\npath = "crm.db"',
            None,
            r'path does not apply to a kind = "postgres" source',
        ),
        ('path = "c.csv"\ntable = "contacts"', None, r'table does not apply to a kind = "file"'),
        (
            'kind = "postgres"\nuri_env = "postgresql://u:pw@h/db"\ntable = "c"',
            None,
            r"uri_env: String should match pattern",
        ),
        (
            'kind = "postgres"\nuri = "postgresql://u:pw@h/db"\ntable = "c"',
            None,
            r"unknown key 'sources.contacts.uri'",
        ),
        (
            'kind = "duckdb"\npath = "crm.duckdb"\ntable = "contacts"',
            'path = "events.csv"',
            r"must be tables of the same database",
        ),
        (
            'kind = "duckdb"\npath = "crm.duckdb"\ntable = "contacts"',
            'kind = "duckdb"\npath = "other.duckdb"\ntable = "events"',
            r"must be tables of the same database",
        ),
    ],
)
def test_database_source_settings_are_checked(
    tmp_path: Path, contacts: str, events: str | None, message: str
) -> None:
    from audiences.core.config import load_config
    from audiences.core.errors import ConfigError

    text = f"[sources.contacts]\n{contacts}\n"
    if events is not None:
        text += f"[sources.events]\n{events}\n"
    (tmp_path / "audiences.toml").write_text(text + '[identity]\nemail = "email"\n')
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(tmp_path)
    assert "pw@" not in caught.value.message  # a URI written by mistake is not echoed


def test_a_query_the_database_cancels_is_one_line(
    tmp_path: Path, approver: Approver, pg_crm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table is locked by another session and the URI sets a statement timeout: the
    database cancels the build's query; the error names the table and the fix."""
    import psycopg

    url = secret_url(pg_crm) + "?options=-c%20statement_timeout%3D300"
    monkeypatch.setenv("CRM_TEST_URL", url)
    root = pg_project(tmp_path, approver)
    with psycopg.connect(pg_crm.conninfo) as holder:
        holder.execute("LOCK TABLE bad.contacts IN ACCESS EXCLUSIVE MODE")
        result = run(root, "build", "warehouse-adults")
        holder.rollback()
    assert_one_line(result, r"the database cancelled the query on bad\.contacts", url=url)


@pytest.mark.parametrize("backend", ["duckdb", "postgres"])
def test_a_declared_version_column_gives_the_dataset_id(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """With ``version_column`` the id is the row count and the column's greatest value:
    bumping it or removing a row changes the id; an update that does not bump it keeps the
    id (the budget stays shared: the safe direction)."""
    from audiences.crm.sources import source_digest

    base = small_crm()["contacts"].with_columns(pl.Series("version", [1, 2, 3]))
    if backend == "duckdb":
        where = {"kind": "duckdb", "path": "crm.duckdb"}

        def load(frame: pl.DataFrame) -> None:
            load_duckdb(tmp_path / "crm.duckdb", {"contacts": frame})
    else:
        postgres = request.getfixturevalue("postgres")
        monkeypatch.setenv("CRM_TEST_URL", postgres.url)
        where = {"kind": "postgres", "uri_env": "CRM_TEST_URL", "schema": "v"}

        def load(frame: pl.DataFrame) -> None:
            load_postgres(postgres.conninfo, {"contacts": frame}, schema="v")

    source = {**where, "table": "contacts", "version_column": "version"}
    config = config_for(tmp_path, json.dumps(source))
    config.state_dir.mkdir()
    email = pl.when(pl.col("contact_id") == "C2").then(pl.lit("b@example.com"))
    changed = base.with_columns(email.otherwise(pl.col("email")).alias("email"))
    ids = []
    for frame in (
        base,
        base.reverse(),
        changed.with_columns(pl.col("version").replace(2, 4)),  # updated, version bumped
        changed,  # updated, version not bumped
        base.head(2).with_columns(pl.col("version").replace(2, 3)),  # a row removed
    ):
        load(frame)
        ids.append(source_digest(config))
    same, reordered, bumped, unbumped, removed = ids
    assert same == reordered == unbumped
    assert len({same, bumped, removed}) == 3
    missing = config_for(tmp_path, json.dumps({**source, "version_column": "nope"}))
    with pytest.raises(Exception, match=r"the version column 'nope' is not in table contacts"):
        source_digest(missing)


def test_a_duckdb_file_another_process_writes_is_one_line(
    tmp_path: Path, crm: dict[str, pl.DataFrame], approver: Approver
) -> None:
    """DuckDB lets one process write a file and no other open it: the build says so."""
    import subprocess
    import sys

    root = make(
        tmp_path,
        "locked",
        approver,
        sources_toml(
            'kind = "duckdb"\npath = "data/crm.duckdb"\ntable = "contacts"',
            'kind = "duckdb"\npath = "data/crm.duckdb"\ntable = "events"',
        ),
    )
    load_duckdb(root / "data" / "crm.duckdb", crm)
    hold = "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(60)"
    writer = subprocess.Popen(
        [sys.executable, "-c", hold, str(root / "data" / "crm.duckdb")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "held"
        result = run(root, "build", "warehouse-adults")
    finally:
        writer.kill()
        writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert re.fullmatch(
        r"Error: cannot open DuckDB database crm\.duckdb \(\w+\) — .*not held open for "
        r"writing by another process",
        line,
    ), line


def test_the_lazy_view_counts_filters_and_limits(tmp_path: Path) -> None:
    """The polars view of a table (what validate, columns and the linkage read): a bare
    row count, a filtered count and a limit behind a filter read the right rows."""
    from audiences.crm.sources import load_sources

    load_duckdb(tmp_path / "crm.duckdb", small_crm())
    config = config_for(tmp_path, '{"kind": "duckdb", "path": "crm.duckdb", "table": "contacts"}')
    view = load_sources(config).contacts
    assert view.select(pl.len()).collect().item() == 3
    assert view.filter(pl.col("email").is_null()).select(pl.len()).collect().item() == 1
    later = view.filter(pl.col("contact_id") > "C1").head(1).collect()
    assert later.get_column("contact_id").to_list() == ["C2"]
    assert view.collect_schema()["diagnosis_codes"] == pl.List(pl.String)


def test_a_reordered_table_keeps_the_opt_out_linkage(
    tmp_path: Path,
    crm: dict[str, pl.DataFrame],
    approver: Approver,
    postgres: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The opt-out index (kept in the state folder, keyed by the table's digest) finds
    records again by row position. A table rewritten in another physical order has the
    same contents and so the same digest: every read must still see the rows in one order
    (the view orders by the contacts' id), or the kept positions point at other people."""
    import psycopg

    root = make(
        tmp_path,
        "reorder",
        approver,
        sources_toml(
            'kind = "postgres"\nuri_env = "CRM_TEST_URL"\nschema = "ro"\ntable = "contacts"',
            'kind = "postgres"\nuri_env = "CRM_TEST_URL"\nschema = "ro"\ntable = "events"',
        ),
    )
    # the rows in a shuffled physical order from the start
    load_postgres(postgres.conninfo, {**crm, "contacts": crm["contacts"].sample(fraction=1.0, shuffle=True, seed=7)}, schema="ro")  # fmt: skip
    monkeypatch.setenv("CRM_TEST_URL", postgres.url)
    first = approve_and_build(root, approver)
    index = root / ".audiences" / "optout-index.bin"
    assert index.exists()
    with psycopg.connect(postgres.conninfo, autocommit=True) as connection:
        connection.execute("CREATE TABLE ro.copy AS SELECT * FROM ro.contacts ORDER BY random()")
        connection.execute("TRUNCATE ro.contacts")
        connection.execute("INSERT INTO ro.contacts SELECT * FROM ro.copy")
        connection.execute("DROP TABLE ro.copy")
    stamp = index.stat().st_mtime_ns
    second = run(root, "build", "warehouse-adults", "--json")
    assert second.exit_code == 0, second.output
    build = json.loads(second.stdout)["builds"][0]
    assert index.stat().st_mtime_ns == stamp  # the kept index was used, not recomputed
    assert released(root, build).equals(released(root, first))
    # the same people excluded by every filter rule (the second build is also compared
    # with the first one's live release: difference protection differs, rightly)
    same = [
        (v["id"], v["evidence"]) for v in verdict(build)["verdicts"] if v["kind"] != "difference"
    ]
    assert same == [
        (v["id"], v["evidence"]) for v in verdict(first)["verdicts"] if v["kind"] != "difference"
    ]


# -- PostgreSQL rows through ADBC --------------------------------------------------------------


def test_postgres_types_arrive_as_polars_types(
    tmp_path: Path, postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every column type a PostgreSQL source may have, read through ADBC (binary COPY into
    Arrow): the values and polars types a file of the same data gives, NULLs kept, time
    zones converted to UTC, numeric as float, padded char and arrays as text."""
    import datetime as dt

    import psycopg

    from audiences.crm.sources import load_sources

    with psycopg.connect(postgres.conninfo, autocommit=True) as connection:
        connection.execute("DROP SCHEMA IF EXISTS ty CASCADE; CREATE SCHEMA ty")
        connection.execute(
            "CREATE TABLE ty.contacts (contact_id text, email text, d date, tz timestamptz, ts timestamp, "
            "n numeric(10, 3), r real, f double precision, s smallint, i integer, b bigint, "
            "ok boolean, v varchar(8), c char(4), j json, a text[], va varchar[])"
        )
        connection.execute(
            "INSERT INTO ty.contacts VALUES "
            "('C1', NULL, '2024-02-29', '2024-02-29 23:30:00.123456+05:30', '1969-12-31 23:59:59.5', "
            "1234.5, 0.25, -1e300, -32768, 2147483647, 9007199254740993, true, 'né', 'ab', "
            "'{\"k\": 1}', ARRAY['E11.9', NULL, ''], ARRAY['x']::varchar[]), "
            "('C2', NULL, '1900-01-31', '1970-01-01 00:00:00+00', '2100-12-31 00:00:00', 0.001, "
            "-0.5, 3.5, 0, -1, -1, false, '', '', 'null', '{}', '{}'), "
            "('C3', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
            "NULL, NULL, NULL)"
        )
    monkeypatch.setenv("CRM_TEST_URL", postgres.url)
    source = '{"kind": "postgres", "uri_env": "CRM_TEST_URL", "schema": "ty", "table": "contacts"}'
    got = load_sources(config_for(tmp_path, source)).contacts.collect().sort("contact_id")
    utc = dt.UTC
    expected = pl.DataFrame(
        {
            "contact_id": ["C1", "C2", "C3"],
            "email": [None, None, None],
            "d": [date(2024, 2, 29), date(1900, 1, 31), None],
            "tz": [
                dt.datetime(2024, 2, 29, 18, 0, 0, 123456, tzinfo=utc),
                dt.datetime(1970, 1, 1, tzinfo=utc),
                None,
            ],
            "ts": [dt.datetime(1969, 12, 31, 23, 59, 59, 500000), dt.datetime(2100, 12, 31), None],
            "n": [1234.5, 0.001, None],
            "r": [0.25, -0.5, None],
            "f": [-1e300, 3.5, None],
            "s": [-32768, 0, None],
            "i": [2147483647, -1, None],
            "b": [9007199254740993, -1, None],
            "ok": [True, False, None],
            "v": ["né", "", None],
            "c": ["ab", "", None],
            "j": ['{"k": 1}', "null", None],
            "a": [["E11.9", None, ""], [], None],
            "va": [["x"], [], None],
        },
        schema_overrides={
            "email": pl.String,
            "tz": pl.Datetime("us", "UTC"),
            "ts": pl.Datetime("us"),
            "r": pl.Float32,
            "s": pl.Int16,
            "i": pl.Int32,
            "b": pl.Int64,
            "a": pl.List(pl.String),
            "va": pl.List(pl.String),
        },
    )
    assert got.schema == expected.schema
    assert got.equals(expected), got


def test_a_failing_arrow_read_names_no_password(
    tmp_path: Path, postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ADBC connection (the rows' reader) fails on its own: closed port, unknown user,
    a bad URI option, a missing table. One line each; neither the password nor the URI
    in the message, its cause or its context."""
    import sqlglot.expressions as exp

    from audiences.core.errors import DataError
    from audiences.crm.databases import Database, read_query

    database = Database("postgres", uri_env="CRM_TEST_URL", schema="nosuch")
    query = exp.select(exp.column("contact_id", quoted=True)).from_(
        exp.table_("contacts", db="nosuch", quoted=True)
    )
    schema = pl.Schema({"contact_id": pl.String()})
    good = secret_url(postgres)
    cases = {
        secret_url(postgres, port=closed_port()): r"the server cannot be reached",
        good.replace(f"//{postgres.user}:", "//nosuchuser:"): r"refused the credentials",
        good + "?sslmode=maybe": r"does not hold a valid PostgreSQL connection URI",
        good: r"has no table or view nosuch\.contacts",
    }
    for url, pattern in cases.items():
        monkeypatch.setenv("CRM_TEST_URL", url)
        with pytest.raises(DataError, match=pattern) as caught:
            read_query("contacts", database, query, schema)
        error = caught.value
        shown = f"{error.message} {error.fix} {error.__cause__!r} {error.__context__!r}"
        assert SECRET not in shown and url not in shown and "\n" not in error.message
        assert error.__suppress_context__


def test_load_postgres_sends_a_large_table_in_slices(
    postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sample loader COPYs a table slice by slice (the CSV text of 60M events is
    several GB): every row arrives once, values and NULLs intact, across slice edges."""
    import psycopg

    from audiences.demo import warehouse

    monkeypatch.setattr(warehouse, "_COPY_ROWS", 7)
    converted: list[str] = []  # a column's CSV text is made once per slice
    to_text = warehouse._pg_text
    monkeypatch.setattr(
        warehouse, "_pg_text", lambda name, dtype: converted.append(name) or to_text(name, dtype)
    )
    frame = pl.DataFrame(
        {
            "id": list(range(50)),
            "name": [None if i % 9 == 0 else f'n"{i},x' for i in range(50)],
            "codes": [["A1", None] if i % 2 else [] for i in range(50)],
        }
    )
    load_postgres(postgres.conninfo, {"sliced": frame}, schema="slices")
    with psycopg.connect(postgres.conninfo) as connection:
        rows = connection.execute(
            "SELECT id, name, codes FROM slices.sliced ORDER BY id"
        ).fetchall()
    assert [r[0] for r in rows] == list(range(50))
    assert [r[1] for r in rows] == frame.get_column("name").to_list()
    assert [r[2] for r in rows] == frame.get_column("codes").to_list()
    assert converted.count("id") == 8  # 50 rows in slices of 7


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_a_database_sources_ids_are_counted_in_the_database(
    tmp_path: Path,
    crm: dict[str, pl.DataFrame],
    approver: Approver,
    postgres: Any,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """The whole export's id check (docs/segments.md) runs as two counts in the database,
    not by reading every id out of it; validate (and so approve) reports it."""
    from audiences.core.config import load_config
    from audiences.crm.databases import database_of, id_counts

    ids = crm["contacts"].get_column("contact_id").to_list()
    ids[5], ids[9], ids[7] = ids[0], ids[0], None  # three rows share an id, one has none
    broken = {**crm, "contacts": crm["contacts"].with_columns(pl.Series("contact_id", ids))}
    if kind == "duckdb":
        where = 'kind = "duckdb"\npath = "data/crm.duckdb"\ntable = "{}"'
        root = make(
            tmp_path, kind, approver, sources_toml(where.format("contacts"), where.format("events"))
        )
        load_duckdb(root / "data" / "crm.duckdb", broken)
    else:
        where = 'kind = "postgres"\nuri_env = "CRM_TEST_URL"\nschema = "ids"\ntable = "{}"'
        root = make(
            tmp_path, kind, approver, sources_toml(where.format("contacts"), where.format("events"))
        )
        load_postgres(postgres.conninfo, broken, schema="ids")
        monkeypatch.setenv("CRM_TEST_URL", postgres.url)
    config = load_config(root / "audiences.toml")
    database = database_of(config.sources.contacts, config)
    assert id_counts("contacts", database, "contacts", "contact_id") == (1, 3)
    result = run(root, "validate", "--json")
    assert result.exit_code == 1
    errors = [e["message"] for e in json.loads(result.stdout)["errors"]]
    assert any("has 1 row(s) without an id in column 'contact_id'" in m for m in errors), errors
