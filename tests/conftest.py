"""Shared fixtures for the system tests: real projects, sample CRM data, real sandboxes.

* ``sample_crm(rows)`` (session): a synthetic CRM written once per size with a fixed seed
  and ``AS_OF``, copied into each project.
* ``sandboxes`` (module): the Meta Graph API sandbox and the Google Ads gRPC/TLS sandbox on
  127.0.0.1, started with random per-session tokens (so a leaked token is recognisable).
* ``make_project(...)`` (function): a project made by ``audiences init`` with the sample
  data, the destinations' endpoints pointed at the sandboxes, the sandbox CA in place, the
  sandbox tokens in the environment, and only the segments the test asks for (from
  ``tests/cases/sync``). Google Ads job polls and Meta retry pauses are shortened.

Autouse: only ``private_ledger``, which points the per-user privacy-budget ledger at the
test's own folder (in-process: production reads no variable that could move it).

``AUDIENCES_QUIET=1`` is set for the whole session: commands run here are not on a
terminal, so they would print a progress line per stage on stderr, and many tests read
stderr as the one error line. tests/test_progress.py unsets it and checks the lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner, Result

os.environ["AUDIENCES_QUIET"] = "1"  # see the module docstring

AS_OF = date(2025, 6, 2)
# The sample CRM's state as segments compare it (``ny`` and ``NY`` are one state).
STATE = pl.col("state").str.strip_chars().str.to_uppercase()
CASES = Path(__file__).parent / "cases" / "sync"
SEED = 11


# ------------------------------------------------------------------------------ clock
@contextlib.contextmanager
def frozen_clock(day: date) -> Iterator[None]:
    """The wall clock of this test process stopped at noon UTC on ``day``.

    The protective rules judge people on ``audiences.core.clock.today()`` and a release
    refuses any other ``--as-of`` (docs/policy-rules.md); tests on fixed sample data stop
    the clock in-process, never through anything a production run would read.
    """
    from audiences.core import clock

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clock, "now", lambda: datetime.combine(day, time(12), UTC))
        yield


# ------------------------------------------------------------------------------ ledger
@pytest.fixture(scope="session", autouse=True)
def _session_ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Module- and session-scoped fixtures (set up before ``private_ledger``) spend into a
    session folder: no test ever writes the real account's ledger."""
    from policies.privacy import ledger

    before = ledger.LEDGER_HOME
    ledger.LEDGER_HOME = tmp_path_factory.mktemp("ledger-session")
    yield
    ledger.LEDGER_HOME = before


@pytest.fixture(autouse=True)
def private_ledger(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test gets its own per-user ledger folder (never the real account's)."""
    from policies.privacy import ledger

    home = tmp_path_factory.mktemp("ledger-home")
    monkeypatch.setattr(ledger, "LEDGER_HOME", home)
    return home


# `python -m audiences` for a child process, with the ledger home of the test (a child
# does not see the monkeypatch; production has no way to move the ledger).
_LAUNCH = (
    "import os, sys\n"
    "sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]\n"
    "from pathlib import Path\n"
    "from policies.privacy import ledger\n"
    "ledger.LEDGER_HOME = Path(sys.argv.pop(1))\n"
    "from audiences.cli import main\n"
    "main()\n"
)


def audiences_command(ledger_home: Path) -> list[str]:
    """The argv prefix that runs the CLI in a child process against ``ledger_home``."""
    import sys

    return [sys.executable, "-c", _LAUNCH, str(ledger_home)]


# ------------------------------------------------------------------------------ figures
def coarse(n: int, k: int = 100) -> str:
    """A people count as plan/sync/status/history show it (the template pack's k = 100)."""
    from policies.privacy.coarse import coarse_count

    return coarse_count(n, k, k)


SYNC_FIGURES = ("adds", "removes", "holds", "received", "invalid", "members")


def sync_row(p: Any, result: dict[str, Any]) -> dict[str, Any]:
    """The exact figures of a CLI sync result, from the state DB (the officer's record)."""
    (row,) = p.query(
        f"SELECT {', '.join(SYNC_FIGURES)} FROM syncs WHERE sync_id = ?", (result["sync_id"],)
    )
    return dict(zip(SYNC_FIGURES, row, strict=True))


# ------------------------------------------------------------------------------ PostgreSQL
@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """One throwaway PostgreSQL server for the session (tests/postgres_server.py)."""
    import os

    from postgres_server import postgres_bin, running_postgres

    bin_dir = postgres_bin()
    if bin_dir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) are missing; .ci/run installs them")
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed; CI runs this test")
    with running_postgres(bin_dir) as server:
        yield server


# ------------------------------------------------------------------------------ data
@pytest.fixture(scope="session")
def sample_crm(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``sample_crm(rows, as_of=AS_OF)`` → folder with contacts.parquet and events.parquet
    (cached); a test whose subprocess releases on the real clock passes today's date."""
    from audiences.demo.sample import write

    cache: dict[tuple[int, date], Path] = {}

    def make(rows: int, as_of: date = AS_OF) -> Path:
        if (rows, as_of) not in cache:
            out = tmp_path_factory.mktemp(f"crm-{rows}")
            write(out, rows, seed=SEED, as_of=as_of, formats=("parquet",))
            cache[rows, as_of] = out
        return cache[rows, as_of]

    return make


# ------------------------------------------------------------------------------ the rules
# The consent rule restated from its documentation (docs/policy-rules.md, policies/packs/baseline.yaml)
# over the sample CRM's columns, to compute what a release must hold independently of the
# gate: a record is released only with a marketing opt-in, without do-not-contact, not
# deceased, without denied ad personalization, and sharing no mailbox (as Google matches
# it: see `mailbox`) or phone (last ten digits: the sample's phones are all US) with any
# record that opted out in one of those ways.
def opted_out() -> pl.Expr:
    denied = pl.col("ad_personalization_consent").str.strip_chars().str.to_lowercase() == "denied"
    return (
        ~pl.col("marketing_opt_in") | pl.col("do_not_contact") | pl.col("deceased") | denied
    ).fill_null(False)


def mailbox(email: pl.Expr) -> pl.Expr:
    """A mailbox as Google matches it: trimmed, lower case; for gmail.com and
    googlemail.com, dots and any +tag removed from the local part."""
    key = email.str.strip_chars().str.to_lowercase()
    local = key.str.extract(r"^([^@]*)@", 1)
    domain = key.str.extract(r"@(.*)$", 1)
    gmail = domain.is_in(["gmail.com", "googlemail.com"])
    folded = local.str.replace(r"\+.*$", "").str.replace_all(".", "", literal=True)
    return pl.when(key.str.contains("@")).then(
        pl.when(gmail).then(folded + "@" + domain).otherwise(key)
    )


def address(frame_names: tuple[str, str, str] = ("first_name", "last_name", "zip")) -> pl.Expr:
    """The tuple Customer Match matches on: first and last name (trimmed, lower case,
    inner spaces collapsed), country (every sample contact is in the US) and ZIP5."""
    first, last, zip_code = frame_names

    def name(column: str) -> pl.Expr:
        text = pl.col(column).str.strip_chars().str.to_lowercase().str.replace_all(r"\s+", " ")
        return pl.when(text != "").then(text)

    zip5 = pl.col(zip_code).str.replace_all(r"\s", "").str.extract(r"^(\d{5})", 1)
    return pl.concat_str([name(first), name(last), pl.lit("us"), zip5], separator="|")


def _bare() -> pl.Expr:
    """Over :func:`_identity_keys`: a record with neither an e-mail nor a phone."""
    return pl.col("_email").is_null() & pl.col("_phone").is_null()


def place() -> pl.Expr:
    """First and last name with city and state, as Meta matches them (letters only, lower
    case; every sample contact with a state is in the US, whose states the sample spells
    as their two-letter codes)."""

    def letters(column: str) -> pl.Expr:
        text = pl.col(column).str.to_lowercase().str.replace_all(r"[^\p{L}]", "")
        return pl.when(text != "").then(text)

    return pl.concat_str(
        [letters(c) for c in ("first_name", "last_name", "city", "state")], separator="|"
    )


def _identity_keys(contacts: pl.DataFrame) -> pl.DataFrame:
    digits = pl.col("phone").str.replace_all(r"\D", "")
    return contacts.with_columns(
        opted_out().alias("_opted_out"),
        mailbox(pl.col("email")).alias("_email"),
        pl.when(digits.str.len_chars() >= 7).then(digits.str.slice(-10)).alias("_phone"),
        address().alias("_address"),
        place().alias("_place"),
    )


def nameless() -> pl.Expr:
    """Over :func:`_identity_keys`: a record Meta cannot match — no e-mail or phone, and no
    first and last name with a ZIP, a birth date, or a city and state (policies/sendable.py).
    Such a record is a person of its own unless a name and ZIP, or a name with city and
    state, link it (:func:`people`)."""

    def has(column: str) -> pl.Expr:
        return pl.col(column).cast(pl.String).str.replace_all(r"[^\p{L}\d]", "") != ""

    names = has("first_name") & has("last_name")
    zip5 = pl.col("zip").str.replace_all(r"\s", "").str.contains(r"^\d{5}")
    where = zip5 | pl.col("birth_date").is_not_null() | (has("city") & has("state"))
    matched = pl.col("_email").is_not_null() | pl.col("_phone").is_not_null() | (names & where)
    return ~matched.fill_null(False)


def approved_segment(p: Project, name: str, destinations: str, where: str) -> None:
    """Write segment ``name`` (``destinations``: comma-separated; ``where``: the condition
    as one YAML flow line, e.g. ``"state: {ne: ZZ}"``) and have it approved."""
    (p.root / "segments" / f"{name}.yaml").write_text(
        f"name: {name}\ndescription: {name}\ndestinations: [{destinations}]\nwhere:\n  {where}\n",
        encoding="utf-8",
    )
    p.approve(name)


def listed(ids: list[str]) -> str:
    """The condition of a segment of exactly the CRM records ``ids``."""
    return f"contact_id: {{in: [{', '.join(ids)}]}}"


def blank_people(p: Project, how_many: int, columns: tuple[str, ...]) -> tuple[str, list[str]]:
    """Make ``how_many`` consenting people of ``p``'s CRM lose ``columns`` (they stay in the
    CRM, for mail say); return another consenting person and their contact ids."""
    approved_segment(p, "pool", "meta", "state: {ne: ZZ}")
    ids = sorted(p.contact_ids(p.release("pool", "meta").members))
    one, chosen = ids[0], ids[1 : 1 + how_many]
    hit = pl.col("contact_id").is_in(chosen)
    blank = [pl.when(hit).then(None).otherwise(pl.col(k)).alias(k) for k in columns]
    p.write_contacts(p.contacts().with_columns(*blank))
    return one, chosen


def build_padded(p: Project, destination: str, one: str, nulls: tuple[str, ...]) -> Any:
    """Write, approve and build ``padded``: the person ``one`` plus everyone whose ``nulls``
    columns are all empty (``is_null``, docs/segments.md) — the padding of a min-size
    attack. Returns the build's CLI result."""
    empty = "".join(f"        - {column}: {{is_null: true}}\n" for column in nulls)
    (p.root / "segments" / "padded.yaml").write_text(
        f"name: padded\ndescription: padding test\ndestinations: [{destination}]\nwhere:\n"
        f"  any:\n    - contact_id: {{in: [{one}]}}\n    - all:\n{empty}",
        encoding="utf-8",
    )
    p.approve("padded")
    return p.cli("build", "padded", "--as-of", AS_OF.isoformat())


def padding_blocked(
    make_project: Callable[..., Project], destination: str, nulls: tuple[str, ...]
) -> tuple[Project, str]:
    """The min-size padding attack (``build_padded`` over 120 people who lost ``nulls``)
    to ``destination``, asserted blocked by ``min-size`` without naming the one person;
    returns the project and that person."""
    p = make_project(rows=3000)
    one, _ = blank_people(p, 120, nulls)
    attack = build_padded(p, destination, one, nulls)
    out = attack.stdout + attack.stderr
    assert attack.exit_code == 3, out
    assert "min-size" in out and one not in out
    return p, one


def latest_report(p: Project) -> dict[str, Any]:
    """The JSON compliance report of ``p``'s newest build."""
    ((build_id,),) = p.query("SELECT build_id FROM builds ORDER BY started_at DESC LIMIT 1")
    path = p.root / ".audiences" / "reports" / f"{build_id}.json"
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def consented(contacts: pl.DataFrame) -> pl.Series:
    """Per contact row: does the consent rule keep it (Boolean Series)?"""
    keyed = _identity_keys(contacts)
    out = keyed.filter(pl.col("_opted_out"))
    # a name with city and state links only an opted-out record with no e-mail or phone
    bare = out.filter(_bare())
    shares = pl.any_horizontal(
        *(
            pl.col(k).is_in(out.get_column(k).drop_nulls().implode())
            for k in ("_email", "_phone", "_address")
        ),
        pl.col("_place").is_in(bare.get_column("_place").drop_nulls().implode()),
    )
    return keyed.select((~pl.col("_opted_out") & ~shares.fill_null(False)).alias("consented"))[
        "consented"
    ]


def alone_in_opting_out(contacts: pl.DataFrame) -> pl.Series:
    """Per row: does no *other* opted-out record share its mailbox, phone or name-and-ZIP
    (or its name, city and state, for an opted-out record with no e-mail or phone)?

    Such a record joins once its own opt-out is lifted (nobody else holds it out).
    """
    keyed = _identity_keys(contacts)
    others = [
        pl.when(pl.col(k).is_not_null())
        .then(
            pl.col("_opted_out").cast(pl.Int32).sum().over(k) - pl.col("_opted_out").cast(pl.Int32)
        )
        .otherwise(0)
        for k in ("_email", "_phone", "_address")
    ]
    bare_out = (pl.col("_opted_out") & _bare()).cast(pl.Int32)
    others.append(
        pl.when(pl.col("_place").is_not_null())
        .then(bare_out.sum().over("_place") - bare_out)
        .otherwise(0)
    )
    return keyed.select((pl.sum_horizontal(others) == 0).alias("alone"))["alone"]


def adults(as_of: date, min_age: int = 18) -> pl.Expr:
    """Known birth date and at least ``min_age`` whole years old at ``as_of``."""
    return pl.col("birth_date").is_not_null() & (
        pl.col("birth_date") <= as_of.replace(year=as_of.year - min_age)
    )


def released_ids(contacts: pl.DataFrame, in_segment: pl.Expr, *, google: bool = False) -> set[str]:
    """Contact ids a release of the segment (``in_segment`` over contacts) must hold: one
    per person — records sharing a mailbox, phone or name-and-ZIP are one person
    (transitively), released
    as the record with the smallest contact id.

    ``google``: a release to a Google destination, which also leaves out the people with a
    denied Google consent signal (the template maps ``ad_user_data_consent`` and
    ``ad_personalization_consent``) on any of their candidate records — the records in the
    segment, linked into people the same way, the ones the consent rule dropped included
    (docs/policy-rules.md, "People, not records")."""
    candidates = contacts.filter(in_segment)
    linked = people(_identity_keys(candidates))
    kept = contacts.with_columns(consented(contacts)).filter(in_segment & pl.col("consented"))
    keyed = _identity_keys(without_refusing_people(kept, candidates, linked))
    person = released_as(keyed, linked)
    if not google:  # Meta: not the people it cannot match
        return set(person.values()) - set(keyed.filter(nameless()).get_column("contact_id"))
    word = [
        pl.col(c).str.strip_chars().str.to_lowercase() == "denied"
        for c in ("ad_user_data_consent", "ad_personalization_consent")
    ]
    refusing = candidates.filter(pl.any_horizontal(word).fill_null(False))
    denied_people = {linked[c] for c in refusing.get_column("contact_id").to_list()}
    refused = {p for c, p in person.items() if linked[c] in denied_people}
    return set(person.values()) - refused


def without_refusing_people(
    kept: pl.DataFrame, candidates: pl.DataFrame, linked: dict[str, str]
) -> pl.DataFrame:
    """``kept`` less the records of people (``linked`` over the ``candidates``) one of whose
    candidate records opted out: an opt-out is the person's (docs/policy-rules.md)."""
    refused = set(_identity_keys(candidates).filter(pl.col("_opted_out")).get_column("contact_id"))
    refusing = {linked[c] for c in refused}
    out = [c for c, person in linked.items() if person in refusing]
    return kept.filter(~pl.col("contact_id").is_in(out))


def released_as(kept: pl.DataFrame, linked: dict[str, str]) -> dict[str, str]:
    """Kept contact id -> the id its person is released as: the smallest kept id of the
    person, people linked over all the segment's candidates (``linked``, :func:`people`)
    as the gate links them."""
    first: dict[str, str] = {}
    ids = sorted(kept.get_column("contact_id").to_list())
    for cid in ids:
        first.setdefault(linked[cid], cid)
    return {cid: first[linked[cid]] for cid in ids}


def people(keyed: pl.DataFrame) -> dict[str, str]:
    """contact id -> the smallest contact id of its person (a plain union-find): records
    sharing a mailbox or phone are one person; among records sharing a name and ZIP, each
    record whose mailbox and phone no other of them contradicts (a different one) joins
    the first contradicted one by contact id (else the first); a record with no mailbox,
    phone or ZIP joins the first record of its name, city and state that has one (else
    the first of them)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        a, b = find(a), find(b)
        parent[max(a, b)] = min(a, b)

    rows = keyed.select("contact_id", "_email", "_phone", "_address", "_place").rows()
    for cid, *_ in rows:
        find(cid)
    for position in (1, 2):
        first: dict[str, str] = {}
        for row in rows:
            if row[position] is not None:
                union(row[0], first.setdefault(row[position], row[0]))

    def grouped(position: int) -> list[list[tuple[str, ...]]]:
        groups: dict[str, list[tuple[str, ...]]] = {}
        for row in rows:
            if row[position] is not None:
                groups.setdefault(row[position], []).append(row)
        return list(groups.values())

    for group in grouped(3):
        told = {
            row[0]: any(
                row[k] is not None and {r[k] for r in group if r[k] is not None} != {row[k]}
                for k in (1, 2)
            )
            for row in group
        }
        # each record no other contradicts joins the first contradicted one, else the first
        lead = min((r[0] for r in group if told[r[0]]), default=min(r[0] for r in group))
        for row in group:
            if not told[row[0]]:
                union(row[0], lead)
    # a record with no mailbox (a placeholder is none), phone or ZIP joins the first record
    # of its name, city and state that has one (else the first of them)
    from audiences.crm.identifiers import RESERVED_EMAIL_DOMAINS

    placeholder = tuple(f"{c}{d}" for d in RESERVED_EMAIL_DOMAINS for c in "@.")
    for group in grouped(4):
        bare = {
            r[0]
            for r in group
            if (r[1] is None or r[1].endswith(placeholder)) and r[2] is None and r[3] is None
        }
        if bare:
            lead = min((r[0] for r in group if r[0] not in bare), default=min(r[0] for r in group))
            for cid in bare:
                union(cid, lead)
    return {cid: find(cid) for cid in keyed.get_column("contact_id").to_list()}


# ------------------------------------------------------------------------------ sandboxes
@pytest.fixture(scope="session")
def sandbox_tokens() -> dict[str, str]:
    from audiences.demo.sandboxes import SANDBOX_ENV

    return {key: f"{value}-{secrets.token_hex(16)}" for key, value in SANDBOX_ENV.items()}


@pytest.fixture(scope="module")
def sandboxes(
    tmp_path_factory: pytest.TempPathFactory, sandbox_tokens: dict[str, str]
) -> Iterator[Any]:
    from audiences.demo.sandboxes import running

    with pytest.MonkeyPatch.context() as mp:
        for key, value in sandbox_tokens.items():
            mp.setenv(key, value)
        with running(tmp_path_factory.mktemp("sandboxes"), google_polls=1) as boxes:
            yield boxes


# ------------------------------------------------------------------------------ projects
@dataclass
class Project:
    root: Path
    boxes: Any
    tokens: dict[str, str]
    approver: Approver

    # -- files
    @property
    def toml(self) -> Path:
        return self.root / "audiences.toml"

    @property
    def state_db(self) -> Path:
        return self.root / ".audiences" / "state.db"

    def config(self) -> Any:
        from audiences.core.config import load_config

        return load_config(self.root)

    def add_segment(self, case: str, *, approve: bool = True, name: str | None = None) -> Path:
        """Copy ``tests/cases/sync/CASE.yaml`` in as segment ``name`` (default: CASE)."""
        target = self.root / "segments" / f"{name or case}.yaml"
        shutil.copyfile(CASES / f"{case}.yaml", target)
        if approve:
            self.approve(name or case)
        return target

    def approve(self, segment: str) -> None:
        result = self.cli(
            "approve", segment, "--by", self.approver.name, "--key", str(self.approver.private_key)
        )
        assert result.exit_code == 0, result.stderr

    def contacts(self) -> pl.DataFrame:
        return pl.read_parquet(self.root / "data" / "contacts.parquet")

    def write_contacts(self, frame: pl.DataFrame) -> None:
        frame.write_parquet(self.root / "data" / "contacts.parquet")

    def keyed_contacts(self) -> pl.DataFrame:
        """Contacts with the project's salted ``member_key`` (to name release members)."""
        from audiences.core.state import project_salt
        from audiences.crm.identifiers import member_key

        salt = project_salt(self.root / ".audiences")
        return self.contacts().with_columns(member_key("contact_id", salt).alias("member_key"))

    def contact_ids(self, members: pl.DataFrame) -> set[str]:
        """Contact ids of release / snapshot rows (by member key)."""
        keyed = self.keyed_contacts().select("member_key", "contact_id")
        found = members.select("member_key").join(keyed, on="member_key", how="left")
        assert found.get_column("contact_id").null_count() == 0
        return set(found.get_column("contact_id").to_list())

    def edit_toml(self, edit: Callable[[str], str]) -> None:
        self.toml.write_text(edit(self.toml.read_text(encoding="utf-8")), encoding="utf-8")

    # -- commands
    def cli(self, *args: str) -> Result:
        from audiences.cli import cli

        return CliRunner().invoke(cli, ["-p", str(self.root), *args], catch_exceptions=False)

    def cli_json(self, *args: str, expect: int = 0) -> dict[str, Any]:
        result = self.cli(*args, "--json")
        assert result.exit_code == expect, (result.exit_code, result.stdout, result.stderr)
        doc: dict[str, Any] = json.loads(result.stdout)
        return doc

    # -- state
    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.state_db)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def remote_id(self, segment: str, destination: str) -> str:
        rows = self.query(
            "SELECT remote_id FROM audiences_remote WHERE segment=? AND destination=?",
            (segment, destination),
        )
        assert len(rows) == 1, rows
        return str(rows[0][0])

    def confirmed(self, segment: str, destination: str) -> pl.DataFrame:
        """The confirmed membership snapshot the sync keeps for (segment, destination)."""
        from audiences.pipeline.membership import MembershipStore

        return MembershipStore(self.root / ".audiences", segment, destination).load()

    def release(self, segment: str, destination: str, as_of: date = AS_OF) -> Any:
        """What the gate releases now (a dry run: writes nothing)."""
        from audiences.pipeline.sync import plan

        results, _ = plan(self.config(), [segment], as_of=as_of)
        (result,) = results
        assert not result.blocked, result.reasons
        return result.outcome.releases[destination]

    def fingerprint(self) -> dict[str, Any]:
        """Every file under .audiences (bytes) and every table's rows (for 'changed nothing')."""
        state = self.root / ".audiences"
        files = {
            str(p.relative_to(state)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(state.rglob("*"))
            if p.is_file() and p.name != "lock"
        }
        tables = [r[0] for r in self.query("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {t: sorted(map(repr, self.query(f'SELECT * FROM "{t}"'))) for t in tables}
        return {"files": files, "rows": rows}


def meta_rows(members: pl.DataFrame) -> set[tuple[str, ...]]:
    """Release rows as the Meta sandbox stores them (the connector's schema, '' for null)."""
    from connectors.meta.connector import SCHEMA

    return set(members.select([pl.col(c).fill_null("") for c in SCHEMA]).rows())


def google_people(members: pl.DataFrame) -> set[frozenset[tuple[str, str]]]:
    """Release rows as the Google Ads sandbox stores people (identifier sets)."""
    people = set()
    for row in members.to_dicts():
        person = {(k, row[k]) for k in ("hashed_email", "hashed_phone_number") if row.get(k)}
        address = [
            row.get(k)
            for k in ("hashed_first_name", "hashed_last_name", "country_code", "postal_code")
        ]
        if all(address):
            first, last, country, postal = address
            person.add(("address_info", f"{first}:{last}:{str(country).upper()}:{postal}"))
        if person:
            people.add(frozenset(person))
    return people


def external_ids(members: pl.DataFrame) -> set[str]:
    return set(members.get_column("EXTERN_ID").to_list())


def meta_sessions(boxes: Any, audience: str) -> dict[str, dict[int, dict[str, Any]]]:
    """Upload sessions the Meta sandbox saw for an audience: key → batch_seq → answer.

    The sandbox has no public accessor for sessions; it records them per audience.
    """
    boxes.meta.request_log()  # waits until no request is in flight
    audience_state = boxes.meta._audiences[audience]
    return {key: dict(s.responses) for key, s in audience_state.sessions.items()}


def rows_received(boxes: Any, audience: str, kind: str) -> int:
    """Rows the Meta sandbox answered for all ``kind`` (add | remove) session batches."""
    return sum(
        int(answer["num_received"])
        for key, batches in meta_sessions(boxes, audience).items()
        if key.startswith(f"{kind}:")
        for answer in batches.values()
    )


def fast_connectors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short Meta retry pauses (the SDK and the sandbox stay real)."""
    from connectors.meta.client import RetryPolicy
    from connectors.meta.connector import MetaConnector

    real_open = MetaConnector.open

    def open_with_fast_retries(self: MetaConnector) -> None:
        real_open(self)
        self.client.retry = RetryPolicy(max_attempts=6, base_delay_s=0.005, max_delay_s=0.05)

    monkeypatch.setattr(MetaConnector, "open", open_with_fast_retries)


def _point_at_sandboxes(text: str, boxes: Any) -> str:
    text, n_dm = re.subn(r'endpoint = "localhost:18767"', "endpoint = DATA_MANAGER", text)
    assert n_dm == 1, "the template's Data Manager sandbox endpoint changed"
    text, n_meta = re.subn(
        r'endpoint = "http://127\.0\.0\.1:\d+"', f'endpoint = "{boxes.meta_url}"', text
    )
    text, n_google = re.subn(
        r'endpoint = "(?:localhost|127\.0\.0\.1):\d+"',
        f'endpoint = "{boxes.google_endpoint}"',
        text,
    )
    assert n_meta == 1 and n_google == 1, "the template's sandbox endpoints changed"
    text = text.replace("endpoint = DATA_MANAGER", f'endpoint = "{boxes.data_manager_endpoint}"')
    # the sandbox finishes a job after two status polls: poll fast
    text, n_poll = re.subn(r"(?m)^poll_seconds = .*$", "poll_seconds = 0.01", text)
    if not n_poll:
        text = re.sub(r'(?m)^(ca_file = ".*)$', r"\1\npoll_seconds = 0.01", text)
    return text


@dataclass(frozen=True)
class Approver:
    name: str
    private_key: Path
    public_base64: str


@pytest.fixture(scope="session")
def approver(tmp_path_factory: pytest.TempPathFactory) -> Approver:
    """A compliance officer's key pair, outside every project."""
    from audiences.compliance.keys import generate_keypair

    folder = tmp_path_factory.mktemp("officer-keys")
    pair = generate_keypair(folder / "qa.key", folder / "qa.pub")
    return Approver("qa.officer", pair.private_path, pair.public_base64)


def trust(text: str, name: str, public_base64: str) -> str:
    """audiences.toml text with ``name``'s key listed under [approvers]."""
    assert text.count("[approvers]") == 1
    return text.replace("[approvers]", f'[approvers]\nkeys = {{ "{name}" = "{public_base64}" }}')


@pytest.fixture
def make_project(
    tmp_path: Path,
    sample_crm: Callable[..., Path],
    sandboxes: Any,
    sandbox_tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    approver: Approver,
) -> Iterator[Callable[..., Project]]:
    """``make_project(rows=3000, segments=("name", ...), pack=None)`` → :class:`Project`.

    The approver's key is listed in audiences.toml and the given segments are approved
    (``approve=False`` leaves them unapproved and the key unlisted).
    """
    from audiences.pipeline.project import init_project

    for key, value in sandbox_tokens.items():
        monkeypatch.setenv(key, value)
    fast_connectors(monkeypatch)

    def make(
        *,
        rows: int = 3000,
        segments: tuple[str, ...] = (),
        name: str = "proj",
        approve: bool = True,
        pack: str | None = None,
        as_of: date = AS_OF,
    ) -> Project:
        root = tmp_path / name
        init_project(root)
        for template_segment in (root / "segments").glob("*.yaml"):
            template_segment.unlink()
        data = root / "data"
        data.mkdir()
        for f in ("contacts.parquet", "events.parquet"):
            shutil.copyfile(sample_crm(rows, as_of) / f, data / f)
        project = Project(root, sandboxes, dict(sandbox_tokens), approver)
        project.edit_toml(lambda text: _point_at_sandboxes(text, sandboxes))
        if pack is not None:  # a project pack from tests/cases/sync, before any approval
            shutil.copyfile(CASES / f"{pack}.yaml", root / "policies" / f"{pack}.yaml")
            project.edit_toml(
                lambda t: re.sub(r'(?m)^pack = ".*?"', f'pack = "policies/{pack}.yaml"', t)
            )
        if approve:
            project.edit_toml(lambda t: trust(t, approver.name, approver.public_base64))
        ca = root / ".audiences" / "sandbox" / "ca.pem"
        ca.parent.mkdir(parents=True, mode=0o700)
        shutil.copyfile(sandboxes.ca_file, ca)
        shutil.copyfile(sandboxes.data_manager_ca_file, ca.parent / "data-manager-ca.pem")
        for segment in segments:
            project.add_segment(segment, approve=approve)
        return project

    yield make
    # A fault left over would fire in the next test: drop it, then fail this one.
    left = {"meta": sandboxes.meta.pending_faults(), "google": sandboxes.google.pending_faults()}
    with sandboxes.meta._lock:
        sandboxes.meta._faults.clear()
    with sandboxes.google._lock:
        sandboxes.google._faults.clear()
    left["data_manager"] = sandboxes.data_manager.pending_faults()
    sandboxes.data_manager.clear_faults()
    assert left == {"meta": 0, "google": 0, "data_manager": 0}, (
        f"faults injected but never consumed: {left}"
    )
