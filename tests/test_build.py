"""The build pipeline on a real project: release files, state, digests, privacy of outputs,
and the issue's example segment under the hipaa-marketing pack.

One project per module: the template's config, 150,000 synthetic contacts (enough for the
cardiology example to clear k=100 with HIPAA-authorized members only), a fixed ``as_of``,
and three segments: the issue's example as written (``[meta, google_ads]``), a copy for
``[meta]`` only, and a plain adults-in-NY segment for the ``file`` destination. Expected
memberships are recomputed here with polars, from the docs' rules, not from the code.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner, Result
from conftest import STATE, frozen_clock

from audiences.cli import cli

AS_OF = date(2025, 6, 15)


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


ROWS = 150_000
SEED = 21
EXAMPLE = Path(__file__).parent / "cases" / "segments" / "cardiology-lapsed.yaml"
META_ONLY = "cardiology-lapsed-meta"
FILE_SEGMENT = "ny-adults"
NY_ADULTS = f"""\
name: {FILE_SEGMENT}
description: Adults in New York
destinations: [file]
where:
  all:
    - age: {{gte: 18}}
    - state: {{eq: NY}}
"""
APPROVER = "dana.compliance"
HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Built:
    root: Path
    builds: dict[str, dict[str, Any]]
    outputs: list[str] = field(default_factory=list)  # every stdout/stderr the CLI printed
    exit_code: int = 0

    def cli(self, *args: str) -> Result:
        result = CliRunner().invoke(cli, ["-p", str(self.root), *args])
        self.outputs += [result.stdout, result.stderr]
        return result

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.root / ".audiences" / "state.db")
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def membership(self, path: str) -> Path:
        """A release's membership file (paths in state are relative to the state dir)."""
        return self.root / ".audiences" / path

    def contacts(self) -> pl.DataFrame:
        return pl.read_parquet(self.root / "data" / "contacts.parquet")

    def events(self) -> pl.DataFrame:
        return pl.read_parquet(self.root / "data" / "events.parquet")

    def member_keys(self, contact_ids: pl.Series) -> pl.Series:
        from audiences.core.state import project_salt
        from audiences.crm.identifiers import member_key

        salt = project_salt(self.root / ".audiences")
        frame = pl.DataFrame({"contact_id": contact_ids})
        return frame.select(member_key(pl.col("contact_id"), salt)).to_series()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    from audiences.compliance.keys import generate_keypair
    from audiences.demo.sample import write
    from audiences.pipeline.project import init_project

    base = tmp_path_factory.mktemp("build")
    root = base / "project"
    init_project(root)
    write(root / "data", ROWS, seed=SEED, as_of=AS_OF, formats=("parquet",))
    segments = root / "segments"
    for template in segments.glob("*.yaml"):
        template.unlink()
    shutil.copyfile(EXAMPLE, segments / "cardiology-lapsed.yaml")  # as written
    example = EXAMPLE.read_text(encoding="utf-8")
    assert "destinations: [meta, google_ads]" in example
    meta_only = example.replace("name: cardiology-lapsed", f"name: {META_ONLY}").replace(
        "destinations: [meta, google_ads]", "destinations: [meta]"
    )
    (segments / f"{META_ONLY}.yaml").write_text(meta_only, encoding="utf-8")
    (segments / f"{FILE_SEGMENT}.yaml").write_text(NY_ADULTS, encoding="utf-8")

    pair = generate_keypair(
        base / "keys" / "dana.key", base / "keys" / "dana.pub", project_dir=root
    )
    toml = root / "audiences.toml"
    marker = '# keys = { "dana.compliance" = "base64-public-key" }'
    text = toml.read_text(encoding="utf-8")
    assert marker in text
    toml.write_text(
        text.replace(marker, f'keys = {{ "{APPROVER}" = "{pair.public_base64}" }}'),
        encoding="utf-8",
    )
    state = Built(root, {})
    for name in ("cardiology-lapsed", META_ONLY, FILE_SEGMENT):
        approve = state.cli("approve", name, "--by", APPROVER, "--key", str(pair.private_path))
        assert approve.exit_code == 0, approve.stderr
    validate = state.cli("validate", "--as-of", AS_OF.isoformat(), "--json")
    assert validate.exit_code == 0, validate.stderr
    # --debug: the logs go to stderr, and are scanned for raw PII like everything else
    result = state.cli("--debug", "build", "--all", "--as-of", AS_OF.isoformat(), "--json")
    doc = json.loads(result.stdout)
    state.builds = {b["segment"]: b for b in doc["builds"]}
    state.exit_code = result.exit_code
    return state


# ------------------------------------------------------------------------------ expected
def adults_ny(contacts: pl.DataFrame) -> pl.DataFrame:
    return with_age(contacts).filter((pl.col("age") >= 18) & (STATE == "NY"))


def with_age(contacts: pl.DataFrame) -> pl.DataFrame:
    bd = pl.col("birth_date")
    had_birthday = (bd.dt.month().cast(pl.Int32) * 100 + bd.dt.day().cast(pl.Int32)) <= (
        AS_OF.month * 100 + AS_OF.day
    )
    age = AS_OF.year - bd.dt.year().cast(pl.Int32) - 1 + had_birthday.cast(pl.Int32)
    return contacts.with_columns(age.alias("age"))


def opted_out(contacts: pl.DataFrame) -> pl.Expr:
    """No marketing opt-in, do-not-contact, deceased, or ad personalization denied."""
    return (
        ~pl.col("marketing_opt_in").fill_null(False)
        | pl.col("do_not_contact").fill_null(False)
        | pl.col("deceased").fill_null(False)
        | (
            pl.col("ad_personalization_consent").str.strip_chars().str.to_lowercase() == "denied"
        ).fill_null(False)
    )


def email_key() -> pl.Expr:
    from conftest import mailbox

    return mailbox(pl.col("email"))


def phone_key() -> pl.Expr:
    digits = pl.col("phone").str.replace_all(r"\D", "")
    return pl.when(digits.str.len_chars() >= 7).then(digits.str.slice(-10))


def one_per_person(frame: pl.DataFrame, candidates: pl.DataFrame) -> set[str]:
    """The contact ids a release holds for these records: one per person, people linked
    over the segment's ``candidates`` (conftest.people, released_as), not the people Meta
    cannot match (conftest.nameless: the file carries Meta's layout)."""
    from conftest import _identity_keys, nameless, people, released_as, without_refusing_people

    linked = people(_identity_keys(candidates))
    keyed = _identity_keys(without_refusing_people(frame, candidates, linked))
    person = released_as(keyed, linked)
    return set(person.values()) - set(keyed.filter(nameless()).get_column("contact_id"))


def consented(frame: pl.DataFrame, contacts: pl.DataFrame) -> pl.DataFrame:
    """The consent rule: the person opted in and did not opt out anywhere — an opt-out on
    any CRM record sharing their mailbox (as Google matches it), phone (last 10 digits) or
    name-and-ZIP counts, and so does one on a record with neither e-mail nor phone that
    shares their name, city and state."""
    from conftest import address, place

    out = contacts.filter(opted_out(contacts))
    kept = frame.filter(~opted_out(frame))
    bare = out.filter(email_key().is_null() & phone_key().is_null())
    for key, among in ((email_key(), out), (phone_key(), out), (address(), out), (place(), bare)):
        taken = among.select(key.alias("k")).drop_nulls().unique()
        kept = kept.with_columns(key.alias("k")).join(taken, on="k", how="anti").drop("k")
    return kept


def cardiology_lapsed(contacts: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """docs/segments.md: within 730d = days [as_of-730, as_of]; ahead 90d = (as_of, as_of+90]."""
    day = pl.col("event_time").dt.date()
    seen = events.filter(
        (pl.col("event_type") == "visit")
        & (pl.col("department") == "cardiology")
        & day.is_between(AS_OF - timedelta(days=730), AS_OF)
    ).select("contact_id")
    booked = events.filter(
        (pl.col("event_type") == "appointment")
        & (day > AS_OF)
        & (day <= AS_OF + timedelta(days=90))
    ).select("contact_id")
    return (
        with_age(contacts)
        .filter(pl.col("age").is_between(50, 75) & STATE.is_in(["NY", "NJ"]))
        .join(seen.unique(), on="contact_id", how="semi")
        .join(booked.unique(), on="contact_id", how="anti")
    )


def authorized(frame: pl.DataFrame) -> pl.DataFrame:
    """A HIPAA marketing authorization in force on as_of: signed on or before it, not
    expired and not revoked by then."""
    day = pl.lit(AS_OF)
    return frame.filter(
        pl.col("hipaa_auth_date").is_not_null()
        & (pl.col("hipaa_auth_date") <= day)
        & (pl.col("hipaa_auth_expires").is_null() | (pl.col("hipaa_auth_expires") > day))
        & (pl.col("hipaa_auth_revoked_at").is_null() | (pl.col("hipaa_auth_revoked_at") > day))
    )


def release_dir(built: Built) -> Path:
    files = built.builds[FILE_SEGMENT]["files"]["file"]
    return Path(files["manifest"]).parent


# ------------------------------------------------------------------------------ release files
def test_the_build_ran_as_expected(built: Built) -> None:
    assert built.exit_code == 3  # the example as written is blocked for google_ads
    assert built.builds[FILE_SEGMENT]["status"] == "released"
    assert built.builds[META_ONLY]["status"] == "released"
    assert built.builds["cardiology-lapsed"]["status"] == "blocked"


def test_release_files_are_private_and_complete(built: Built) -> None:
    out = release_dir(built)
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "members.csv",
        "members.parquet",
    ]
    for path in out.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_no_temp_files_anywhere(built: Built) -> None:
    leftovers = [
        p
        for p in built.root.rglob("*")
        if p.is_file() and (p.name.endswith(".tmp") or re.match(r"\.members|\.manifest", p.name))
    ]
    assert leftovers == []


def test_release_is_the_consented_adults_in_ny_one_row_each(built: Built) -> None:
    members = pl.read_parquet(release_dir(built) / "members.parquet")
    ids = members.get_column("meta_EXTERN_ID")
    assert ids.null_count() == 0 and ids.n_unique() == members.height
    candidates = adults_ny(built.contacts())
    expected = one_per_person(consented(candidates, built.contacts()), candidates)
    assert set(ids.to_list()) == expected
    assert members.height >= 100


def test_csv_and_parquet_hold_the_same_rows(built: Built) -> None:
    out = release_dir(built)
    parquet = pl.read_parquet(out / "members.parquet")
    csv = pl.read_csv(out / "members.csv", infer_schema=False)
    assert csv.columns == parquet.columns
    assert csv.sort("meta_EXTERN_ID").equals(parquet.cast(pl.String).sort("meta_EXTERN_ID"))


def test_identifiers_are_hashed(built: Built) -> None:
    members = pl.read_parquet(release_dir(built) / "members.parquet")
    hashed = [c for c in members.columns if c not in PLAIN]
    assert {"meta_EMAIL", "meta_PHONE", "meta_FN", "meta_LN"} <= set(hashed)
    for column in hashed:
        values = members.get_column(column).drop_nulls()
        assert values.len() > 0, column
        assert values.str.contains(r"^[0-9a-f]{64}$").all(), column


# the only plain columns: the CRM id (Meta's EXTERN_ID), ISO country, 5-digit ZIP
PLAIN = {"meta_EXTERN_ID", "google_ads_country_code", "google_ads_postal_code"}
CELL = re.compile(rb"[0-9a-f]{64}|C[0-9]{9}|[A-Z]{2}|[0-9]{5}|")


def test_release_csv_bytes_hold_only_hashes_and_codes(built: Built) -> None:
    """Byte-level: every cell of members.csv is a hash, a CRM id, a country or a ZIP."""
    header, *rows = (release_dir(built) / "members.csv").read_bytes().splitlines()
    assert set(header.decode().split(",")) == set(
        pl.read_parquet_schema(release_dir(built) / "members.parquet")
    )
    cells = {cell for row in rows for cell in row.split(b",")}
    assert [c for c in cells if not CELL.fullmatch(c)] == []


def test_manifest_matches_the_files(built: Built) -> None:
    out = release_dir(built)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    members = pl.read_parquet(out / "members.parquet")
    build = built.builds[FILE_SEGMENT]
    assert manifest["members"] == members.height
    assert manifest["coverage"] == {
        c: members.height - members[c].null_count() for c in members.columns
    }
    assert manifest["build_id"] == build["build_id"]
    assert manifest["segment_digest"] == build["segment_digest"]
    assert manifest["policy_digest"] == build["policy_digest"]
    assert manifest["files"] == {k: v for k, v in build["files"]["file"].items() if k != "manifest"}


# ------------------------------------------------------------------------------ state
def test_state_records_builds_and_releases(built: Built) -> None:
    from audiences.segments import load_segments

    digests = {s.name: s.digest for s in load_segments(built.root / "segments")}
    for name, build in built.builds.items():
        ((status, segment_digest, as_of, members),) = built.query(
            "SELECT status, segment_digest, as_of, members FROM builds WHERE build_id=?",
            (build["build_id"],),
        )
        assert status == build["status"]
        assert segment_digest == build["segment_digest"] == digests[name]
        assert as_of == AS_OF.isoformat()
    releases = built.query(
        "SELECT b.segment, r.destination, r.members, r.membership_path, r.segment_digest, "
        "r.policy_digest FROM releases r JOIN builds b USING (build_id)"
    )
    by_segment: dict[str, set[str]] = {}
    for segment, destination, members, path, segment_digest, policy_digest in releases:
        by_segment.setdefault(segment, set()).add(destination)
        assert segment_digest == digests[segment]
        assert policy_digest == built.builds[segment]["policy_digest"]
        keys = pl.read_parquet(built.membership(path))
        assert keys.height == members
        assert built.membership(path).stat().st_mode & 0o777 == 0o600
    assert by_segment == {FILE_SEGMENT: {"file"}, META_ONLY: {"meta"}}


def test_exact_counts_stay_in_the_compliance_report(built: Built) -> None:
    """Marketer-facing JSON carries only the DP size; the exact one is in the report."""
    numeric_keys: set[str] = set()

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            numeric_keys.add(key)

    for build in built.builds.values():
        walk(build)
    assert numeric_keys <= {"value", "ci95", "epsilon", "seconds"}, numeric_keys
    released = built.builds[FILE_SEGMENT]
    assert set(released["members"]) == {"value", "ci95", "epsilon"}
    exact = pl.read_parquet(release_dir(built) / "members.parquet").height
    report = json.loads(Path(released["reports"]["json"]).read_text(encoding="utf-8"))
    (size,) = [v["evidence"] for v in report["verdicts"] if v["id"] == "min-size"]
    assert size["members"] == exact  # the eligible people the file's layouts name
    assert report["figures"]["eligible_members"] == exact + size["no_identifier"]
    assert [r["members"] for r in report["releases"]] == [exact]
    assert "exact" in report["notice"]


# ------------------------------------------------------------------------------ raw PII
def raw_values(contacts: pl.DataFrame, sample_ids: set[str]) -> list[bytes]:
    """Raw and lightly normalized emails, phones and names of some contacts."""
    picked = contacts.filter(pl.col("contact_id").is_in(sorted(sample_ids)))
    values: set[str] = set()
    for column in ("email", "phone"):
        for raw in picked.get_column(column).drop_nulls().to_list():
            values.update({raw, raw.strip(), raw.strip().lower()})
            digits = re.sub(r"\D", "", raw)
            if column == "phone" and len(digits) >= 10:
                values.add(digits[-10:])
    for column in ("first_name", "last_name", "street"):
        for raw in picked.get_column(column).drop_nulls().to_list():
            if len(raw.strip()) >= 7:  # short names occur in ordinary words
                values.update({raw.strip(), raw.strip().lower()})
    return sorted(v.encode("utf-8") for v in values if v)


def test_no_raw_pii_in_any_output(built: Built) -> None:
    contacts = built.contacts()
    released = set(
        pl.read_parquet(release_dir(built) / "members.parquet").get_column("meta_EXTERN_ID")
    )
    authorized_ids = set(
        consented(authorized(cardiology_lapsed(contacts, built.events())), contacts).get_column(
            "contact_id"
        )
    )
    others = set(contacts.sample(200, seed=1).get_column("contact_id"))
    needles = raw_values(contacts, set(sorted(released)[:150]) | authorized_ids | others)
    assert len(needles) > 500
    # members.* hold only hashes and codes (checked cell by cell above); everything else
    # the project wrote is scanned byte for byte
    haystacks = {
        str(p.relative_to(built.root)): p.read_bytes()
        for p in built.root.rglob("*")
        if p.is_file()
        and "data" not in p.relative_to(built.root).parts
        and not p.name.startswith("members.")
    }
    assert any(name.endswith("state.db") for name in haystacks)
    assert any("reports" in name for name in haystacks)
    assert any(name.endswith("optout-index.bin") for name in haystacks)  # the linkage's cache
    haystacks["cli output"] = "\n".join(built.outputs).encode("utf-8")
    leaks = [(name, n) for name, data in haystacks.items() for n in needles if n in data]
    assert leaks == []


# ------------------------------------------------------------------------------ the example
def test_the_example_validates_as_written(built: Built) -> None:
    doc = json.loads(built.cli("validate", "--as-of", AS_OF.isoformat(), "--json").stdout)
    (example,) = [s for s in doc["segments"] if s["name"] == "cardiology-lapsed"]
    assert example["destinations"] == ["meta", "google_ads"]


def test_the_example_is_blocked_for_google_ads_as_phi_derived(built: Built) -> None:
    build = built.builds["cardiology-lapsed"]
    assert build["released_to"] == [] and build["files"] == {}
    google = [r for r in build["reasons"] if "google_ads" in r]
    assert google == [
        "google-health [google_ads]: google_ads forbids health-based customer lists and this "
        "segment is PHI-derived (sensitive event columns department)"
    ]
    assert not [r for r in build["reasons"] if "[meta]" in r]  # meta alone would pass
    assert Path(build["reports"]["html"]).exists()


def test_the_meta_copy_releases_only_authorized_members(built: Built) -> None:
    build = built.builds[META_ONLY]
    assert build["released_to"] == ["meta"]
    ((path,),) = built.query(
        "SELECT membership_path FROM releases WHERE build_id=?", (build["build_id"],)
    )
    released = set(pl.read_parquet(built.membership(path)).to_series().to_list())
    contacts = built.contacts()
    candidates = cardiology_lapsed(contacts, built.events())
    expected = consented(authorized(candidates), contacts)
    not_authorized = consented(candidates, contacts).join(expected, on="contact_id", how="anti")
    assert expected.height >= 100 and not_authorized.height > 0  # the rule has work to do
    assert released == set(
        built.member_keys(pl.Series(sorted(one_per_person(expected, candidates)))).to_list()
    )
    assert released.isdisjoint(built.member_keys(not_authorized.get_column("contact_id")))


# ------------------------------------------------------------------------------ atomicity
def test_atomic_write_keeps_the_previous_file_on_failure(tmp_path: Path) -> None:
    from audiences.core.atomic import write_text, write_with

    target = tmp_path / "members.csv"
    write_text(target, "previous\n")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text("half a fi", encoding="utf-8")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_with(target, half_then_crash)
    assert target.read_text(encoding="utf-8") == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["members.csv"]
    assert target.stat().st_mode & 0o777 == 0o600


def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths os.fsync is called on, from now on (the real fsync still runs)."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
def test_durable_writes_reach_the_disk_before_and_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiences.core.atomic import write_text, write_with

    seen = _fsyncs(monkeypatch)
    target = tmp_path / "state" / "r-1.parquet"
    write_with(target, lambda tmp: pl.DataFrame({"k": [1, 2]}).write_parquet(tmp))
    # the temp file's data first (before it takes the name), then the folder's entry
    assert len(seen) == 2
    assert Path(seen[0]).parent == target.parent and Path(seen[0]).name.endswith(".tmp")
    assert Path(seen[1]) == target.parent
    seen.clear()
    write_text(tmp_path / "export.csv", "a\n", durable=False)
    assert seen == []


def test_state_files_are_durable_and_export_files_are_not(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _fsyncs(monkeypatch)
    result = built.cli("build", FILE_SEGMENT, "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output
    synced = [Path(p) for p in seen]
    # the release's membership keys (read by every later difference check) and the
    # compliance reports are flushed; the export files and their manifest are not
    assert any(p.parent.name == "releases" and p.name.endswith(".tmp") for p in synced)
    assert any(p.parent.name == "reports" and ".html." in p.name for p in synced)
    exports = [p for p in synced if "members." in p.name or "manifest" in p.name]
    assert exports == []


def test_a_build_that_fails_mid_write_leaves_no_release_files(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous = release_dir(built)
    before = {p: p.read_bytes() for p in previous.iterdir()}
    existing = set(previous.parent.iterdir())  # other tests' builds share the project

    def crash(self: pl.DataFrame, file: Any, *args: Any, **kwargs: Any) -> None:
        Path(file).write_text("meta_EXTERN_ID\nC0", encoding="utf-8")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pl.DataFrame, "write_csv", crash)
    result = built.cli("build", FILE_SEGMENT, "--as-of", AS_OF.isoformat())
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: destination 'file': cannot write the release files under {built.root}/exports "
        "(No space left on device) — free disk space or fix the folder's permissions, then "
        "build again"
    ]
    assert {p: p.read_bytes() for p in previous.iterdir()} == before
    failed = [d for d in previous.parent.iterdir() if d not in existing]
    for folder in failed:
        names = sorted(p.name for p in folder.iterdir())
        assert "manifest.json" not in names and "members.csv" not in names, names
        assert not [n for n in names if n.endswith(".tmp")], names
    ((status,),) = built.query(
        "SELECT status FROM builds WHERE segment=? ORDER BY started_at DESC, rowid DESC LIMIT 1",
        (FILE_SEGMENT,),
    )
    assert status == "failed"
