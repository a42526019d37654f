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
DECLARED = "columns = { birth_date = \"date\", " + ", ".join(f'{c} = "list[str]"' for c in LISTS) + " }"


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
        text = re.sub(r'(?m)^path = "data/events\.parquet".*$', events, text)
        return text.replace("# columns = { birth_date", "# was: columns = { birth_date")

    return edit


def make(tmp: Path, name: str, approver: Approver, edit: Callable[[str], str]) -> Path:
    root = tmp / name
    init_project(root)
    for template in (root / "segments").glob("*.yaml"):
        template.unlink()
    (root / "data").mkdir()
    toml = root / "audiences.toml"
    text = trust(edit(toml.read_text()), approver.name, approver.public_base64)
    toml.write_text(text.replace("id = \"contact_id\"\n", f'id = "contact_id"\n{DECLARED}\n', 1))
    shutil.copyfile(CASE, root / "segments" / CASE.name)
    return root


def approve_and_build(root: Path, approver: Approver) -> dict[str, Any]:
    approved = run(root, "approve", "warehouse-adults", "--by", approver.name, "--key",
                   str(approver.private_key))  # fmt: skip
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
    releases = [{k: r[k] for k in ("destination", "members", "excluded_keys", "holds")}
                for r in report["releases"]]  # fmt: skip
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
    csv = make(tmp_path, "csv", approver, sources_toml(
        'path = "data/contacts.csv"', 'path = "data/events.csv"'))  # fmt: skip
    for name, frame in crm.items():
        lists = [pl.col(c).list.join(";") for c in LISTS if c in frame.columns]
        frame.with_columns(lists).write_csv(csv / "data" / f"{name}.csv")

    duck = make(tmp_path, "duck", approver, sources_toml(
        'kind = "duckdb"\npath = "data/crm.duckdb"\ntable = "contacts"',
        'kind = "duckdb"\npath = "data/crm.duckdb"\ntable = "events"'))  # fmt: skip
    load_duckdb(duck / "data" / "crm.duckdb", crm)

    pg = make(tmp_path, "pg", approver, sources_toml(
        'kind = "postgres"\nuri_env = "CRM_TEST_URL"\nschema = "crm"\ntable = "contacts"',
        'kind = "postgres"\nuri_env = "CRM_TEST_URL"\nschema = "crm"\ntable = "events"'))  # fmt: skip
    load_postgres(postgres.conninfo, crm, schema="crm")
    monkeypatch.setenv("CRM_TEST_URL", postgres.url)

    builds = {name: approve_and_build(root, approver) for name, root in
              (("csv", csv), ("duck", duck), ("pg", pg))}  # fmt: skip
    people = {name: released(root, builds[name]) for name, root in
              (("csv", csv), ("duck", duck), ("pg", pg))}  # fmt: skip
    assert builds["csv"]["status"] == "released" and people["csv"].height >= 100
    assert people["duck"].equals(people["csv"])
    assert people["pg"].equals(people["csv"])
    assert verdict(builds["duck"]) == verdict(builds["csv"])
    assert verdict(builds["pg"]) == verdict(builds["csv"])
