"""Benchmark the end-to-end build: ``audiences build`` to hashed release files.

The issue's target: on 10M generated contacts with events, a segment of three attribute
conditions plus one event condition, through the policy gate to hashed release files,
in at most 10 s wall on 2 cores and 6 GB peak RSS; at least 10x faster than the
straightforward way; the gate adds at most 20 %.

What runs
    * ours: the real CLI, ``python -m audiences -p PROJECT build SEGMENT --json``, in a
      child process (wall time from the parent, peak RSS of the child alone), on a fresh
      project whose sources are the cached sample Parquet files, pack
      ``hipaa-marketing``, destination ``file`` (Parquet + CSV, Meta and Google Ads
      layouts). The child wraps ``collect_candidates``, ``policies.gate.evaluate`` (and,
      inside it, the identifier hashing ``policies.gate._hashed``), ``policies.gate.record``
      and ``write_file_destinations`` in timers to split the time; nothing else changes.
      Three builds run: the first on the fresh project (the source files' content digest
      is computed), then the same build twice more (digest cached by size and mtime; the
      difference check compares with the previous release) — a daily rebuild. The
      machine is shared: the load average is printed with the table. A release is judged
      on today's date and the sample is generated for ``AS_OF``: the child stops its own
      clock at ``AS_OF`` (``STOP_CLOCK``, first lines of its script), the parent too.
      Setup, untimed: the project's segment is approved by a benchmark key pair (the
      one-time human step ``hipaa-marketing`` requires), after the config is final.
    * baseline: the same job written the straightforward way — pandas reads the Parquet
      files, filters, then normalizes and SHA-256-hashes each selected record's
      identifiers in a per-row Python loop (hashlib) and writes the same two files the
      build writes (a CSV row by row with ``csv.writer``, then the rows as Parquet with
      pandas ``to_parquet``). Measured on every contact (never scaled from a smaller
      sample). People, not records, as the build: records sharing a Google mailbox or
      a phone are merged (union-find, per row) before hashing. The table notes any
      difference in the number of rows released.
    * the same three builds with a project pack that turns the consent rule's
      duplicate-of-opt-out linkage off (the job as issue #2 specified it), against a
      baseline without the linkage.
    * engine pairs (``--engine-pairs N``, default 3): the job as a hand-written DuckDB SQL
      script (``benchmarks/duckdb_job.py``: the same segment, consent rule with the
      linkage, people not records, the release's identifier normalization, the same two
      files), interleaved with the build in one run. Each pair is A B A B on a fresh
      project: the first build (it computes the opt-out index), DuckDB on that segment, a
      second segment over the same data (the index is reused: the table checks that the
      index file was not rewritten), DuckDB on that segment. Every DuckDB output is
      compared with the build's release file: the row count and the set of hashed emails
      must be equal (the benchmark fails otherwise); any other column that differs is
      reported. Ratios per pair, then medians with min-max. Each build's identifier
      hashing (its ``hashing`` timer: normalization and SHA-256 of every layout) is set
      against the OpenSSL floor measured in the same run: the SHA-256 digests its release
      file holds, at the rate ``openssl speed -evp sha256 -bytes 32 -multi <CPUs>``
      reports just after the build (every identifier is one 64-byte block, as a 32-byte
      message is); the ratio to the one-core rate is printed beside it for reference.

    * ``--doubled``: the first build and a second segment on the sample twice over (the
      copy is other people: new ids, e-mails, phones and ZIPs, see ``multiplied_crm``;
      20M contacts at full size), wall and peak RSS; ``--times N``: the same on the sample
      N times over (``--times 10``: 100M contacts, 600M events, against the < 12 GB
      target of issue #21; 13.6 GB of Parquet beside the sample's 1.3 GB).

    python -m benchmarks.bench_build [--quick] [--engine-pairs N] [--engines-only]
                                     [--doubled | --times N]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import (
    AS_OF,
    DATA_DIR,
    ROOT,
    STOP_CLOCK,
    ChildRun,
    byte_compiled,
    check,
    run_child,
    sample_crm,
    stopped_clock,
    trust_and_approve,
)

SEGMENT = "bench-reachable-adults"
SEGMENT_YAML = f"""\
name: {SEGMENT}
description: Adults 25-64 in five large states, English or Spanish speaking, who clicked an
  email in the last year
destinations: [file]
where:
  all:
    - age: {{between: [25, 64]}}
    - state: {{in: [NY, NJ, CA, TX, FL]}}
    - preferred_language: {{in: [en, es]}}
    - event: {{type: email_click, within: 365d}}
"""
SECOND_SEGMENT = "bench-reachable-adults-midwest-south"
FIRST_STATES, SECOND_STATES = ("NY", "NJ", "CA", "TX", "FL"), ("IL", "PA", "OH", "GA", "NC")
SECOND_SEGMENT_YAML = (
    SEGMENT_YAML.replace(f"name: {SEGMENT}", f"name: {SECOND_SEGMENT}")
    .replace("in: [NY, NJ, CA, TX, FL]", "in: [IL, PA, OH, GA, NC]")
    .replace("in five large states", "in five other states")
)
TARGET_S, TARGET_RSS_GB, TARGET_SPEEDUP, TARGET_GATE_SHARE = 10.0, 6.0, 10.0, 0.20
# issue #22, at 10M: the build vs the DuckDB script of the same job, medians of the pairs
TARGET_VS_DUCKDB_FIRST, TARGET_VS_DUCKDB_SECOND = 1.5, 2.5
TARGET_FIRST_S, TARGET_SECOND_S = 8.0, 5.0  # issue #22, medians at 10M
TARGET_RSS_10M_GB = 2.0  # issue #22, and no more than DuckDB's in the same run
TARGET_HASHING_FLOOR = 1.3  # issue #22: the build's hashing timer / OpenSSL's floor
TARGET_RSS_DOUBLED_GB = 4.0  # issue #22, the 10M sample doubled
TARGET_RSS_X10_GB = 12.0  # issue #21, a file build at 100M contacts (the 10M sample 10 times)


def make_project(
    folder: Path,
    contacts: Path,
    events: Path,
    segments: dict[str, str],
    *,
    destinations: str,
    pack: str = "hipaa-marketing",
    files: dict[str, str] | None = None,
    approve: bool = True,
) -> Path:
    """A fresh project (the ``audiences init`` template) over the given source files.

    ``destinations`` replaces the template's ``[destinations.*]`` tables (TOML text);
    ``segments`` maps file stems to segment YAML and replaces the template segments;
    ``files`` (path relative to the project -> text, e.g. a project pack) are written
    before the approval. With ``approve`` (the default) the benchmark approver's key is
    listed under ``[approvers] keys`` and every segment approved: the one-time human step
    ``hipaa-marketing`` requires, done here, untimed, once the configuration is final.
    """
    from audiences.pipeline.project import init_project

    if folder.exists():
        shutil.rmtree(folder)
    init_project(folder)
    toml = (folder / "audiences.toml").read_text()
    toml = toml.replace('path = "data/contacts.parquet"', f"path = {json.dumps(str(contacts))}")
    toml = toml.replace('path = "data/events.parquet"', f"path = {json.dumps(str(events))}")
    toml = toml.replace('pack = "hipaa-marketing"', f"pack = {json.dumps(pack)}")
    head, _, tail = toml.partition("[destinations.file]")
    _, _, approvers = tail.partition("[approvers]")
    (folder / "audiences.toml").write_text(f"{head}{destinations}\n[approvers]{approvers}")
    for old in (folder / "segments").glob("*.yaml"):
        old.unlink()
    for stem, text in segments.items():
        (folder / "segments" / f"{stem}.yaml").write_text(text)
    for relative, text in (files or {}).items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    if approve:
        trust_and_approve(folder, list(segments))
    return folder


FILE_DESTINATION = """[destinations.file]
kind = "file"
path = "exports"
formats = ["parquet", "csv"]
"""

# The child: the real CLI, with timers around the build's stages, on the wall clock
# stopped at AS_OF (the day the sample is generated for; a release is judged on today).
_BUILD_CHILD = (
    """
import json, sys, time
started = time.perf_counter()
"""
    + STOP_CLOCK
    + """
import audiences.cli  # first, as the command: it sets polars' allocator (audiences.core.memory)
import audiences.pipeline.build as build
import audiences.pipeline.select as select
import policies.gate as gate
phases = {}
def timed(name, fn):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
    return wrapper
select.collect_candidates = timed("collect", select.collect_candidates)
build.collect_candidates = select.collect_candidates
build.write_file_destinations = timed("files", build.write_file_destinations)
gate.evaluate = timed("gate", gate.evaluate)
gate.record = timed("record", gate.record)
gate._hashed = timed("hashing", gate._hashed)  # identifier normalization + SHA-256, in the gate
from audiences.cli import _exit_now, cli
code = 0
try:
    cli.main(args=sys.argv[1:], prog_name="audiences")
except SystemExit as exc:
    code = exc.code or 0
phases["in_process"] = time.perf_counter() - started
sys.stderr.write("\\nPHASES " + json.dumps(phases) + "\\n")
_exit_now(code)  # as the `audiences` command leaves
"""
)

# The baseline: pandas + hashlib, one Python iteration per selected person.
_BASELINE_CHILD = r"""
import csv, datetime as dt, hashlib, json, re, sys, time, unicodedata
import pandas as pd
contacts_path, events_path, out_path, as_of_text = sys.argv[1:5]
started = time.perf_counter()
as_of = dt.date.fromisoformat(as_of_text)
link_opt_outs = len(sys.argv) > 5 and sys.argv[5] == "link"
columns = ["contact_id", "email", "phone", "first_name", "last_name", "zip", "city", "state",
           "country", "birth_date", "sex", "preferred_language", "marketing_opt_in",
           "do_not_contact", "deceased", "ad_personalization_consent"]
c = pd.read_parquet(contacts_path, columns=columns)
e = pd.read_parquet(events_path, columns=["contact_id", "event_type", "event_time"])
since = pd.Timestamp(as_of - dt.timedelta(days=365))
until = pd.Timestamp(as_of + dt.timedelta(days=1))
clicked = e.loc[(e["event_type"] == "email_click") & (e["event_time"] >= since)
                & (e["event_time"] < until), "contact_id"].unique()
bd = pd.to_datetime(c["birth_date"])
age = as_of.year - bd.dt.year - ((bd.dt.month * 100 + bd.dt.day) > as_of.month * 100 + as_of.day)
ad_denied = c["ad_personalization_consent"].fillna("").str.strip().str.lower().isin(
    ["denied", "deny", "false", "no", "n", "0", "f"])
opted_out = (~c["marketing_opt_in"].fillna(False).astype(bool) | c["do_not_contact"].fillna(False)
             | c["deceased"].fillna(False) | ad_denied)
# segments compare states trimmed and upper-cased (`ny` and `NY` are one state)
state = c["state"].fillna("").str.strip().str.upper()
mask = (age.between(25, 64) & state.isin(["NY", "NJ", "CA", "TX", "FL"])
        & c["preferred_language"].isin(["en", "es"]) & c["contact_id"].isin(clicked)
        & ~opted_out)
selected = c[mask]
def google_email(text):
    if not isinstance(text, str) or "@" not in text:
        return ""
    email = text.strip().lower()
    local, _, domain = email.rpartition("@")
    if domain in ("gmail.com", "googlemail.com"):
        local = local.split("+", 1)[0].replace(".", "")
    return f"{local}@{domain}"
def name_key(text):
    if not isinstance(text, str):
        return ""
    return " ".join(unicodedata.normalize("NFC", text.strip().lower()).split())
def sha(text):
    return hashlib.sha256(text.encode()).hexdigest() if text else ""
def letters(text):
    return re.sub(r"[^a-z]", "", text.strip().lower()) if isinstance(text, str) else ""
def phone(text):
    if not isinstance(text, str):
        return ""
    digits = re.sub(r"\D", "", text)
    if digits.startswith("001"):
        digits = digits[3:]
    if len(digits) == 10:
        digits = "1" + digits
    return digits if len(digits) == 11 else ""
header = ["EXTERN_ID", "EMAIL", "PHONE", "FN", "LN", "ZIP", "CT", "ST", "COUNTRY", "DOBY",
          "DOBM", "DOBD", "GEN", "hashed_email", "hashed_phone_number", "hashed_first_name",
          "hashed_last_name", "country_code", "postal_code"]
# The duplicate-of-opt-out rule (the default pack's consent rule): a selected person
# sharing a Google mailbox, a phone number or name + ZIP with any opted-out record is out.
if link_opt_outs:
    emails, phones, names = set(), set(), set()
    for r in c[opted_out].itertuples(index=False):
        emails.add(google_email(r.email))
        phones.add(phone(r.phone))
        zip5 = re.sub(r"\D", "", r.zip)[:5] if isinstance(r.zip, str) else ""
        names.add((name_key(r.first_name), name_key(r.last_name), zip5))
    emails.discard(""); phones.discard("")
    keep = []
    for r in selected.itertuples(index=False):
        zip5 = re.sub(r"\D", "", r.zip)[:5] if isinstance(r.zip, str) else ""
        fn, ln = name_key(r.first_name), name_key(r.last_name)
        linked = (google_email(r.email) in emails or phone(r.phone) in phones
                  or (fn and ln and zip5 and (fn, ln, zip5) in names))
        keep.append(not linked)
    selected = selected[keep]
# People, not records: records sharing a Google mailbox or a phone are one person
# (union-find, per row), released once as the smallest CRM id, each field from the
# person's first record (by CRM id) that has it.
selected = selected.sort_values("contact_id")
parent = list(range(len(selected)))
def find(i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i
first_with = {}
for i, r in enumerate(selected.itertuples(index=False)):
    for key in (("e", google_email(r.email)), ("p", phone(r.phone))):
        if key[1]:
            j = first_with.setdefault(key, i)
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
person = [find(i) for i in range(len(selected))]
selected = selected.assign(_person=person).groupby("_person", sort=True).first()
rows = []
csv_file = open(out_path, "w", newline="")
out = csv.writer(csv_file)
out.writerow(header)
for r in selected.itertuples(index=False):
    email = r.email.strip().lower() if isinstance(r.email, str) else ""
    zip5 = re.sub(r"\D", "", r.zip)[:5] if isinstance(r.zip, str) else ""
    country = "us"
    born = r.birth_date
    h_email, h_phone = sha(email), sha(phone(r.phone))
    h_gemail = sha(google_email(r.email))
    h_fn, h_ln = sha(letters(r.first_name)), sha(letters(r.last_name))
    h_gfn, h_gln = sha(name_key(r.first_name)), sha(name_key(r.last_name))
    sex = (r.sex or "").lower() if isinstance(r.sex, str) else ""
    row = [r.contact_id, h_email, h_phone, h_fn, h_ln, sha(zip5), sha(letters(r.city)),
           sha(letters(r.state)), sha(country), sha(f"{born.year:04d}"),
           sha(f"{born.month:02d}"), sha(f"{born.day:02d}"), sha(sex), h_gemail, h_phone,
           h_gfn, h_gln, "US", zip5]
    out.writerow(row)
    rows.append(row)
csv_file.close()
# the build writes the same rows as Parquet too
pd.DataFrame(rows, columns=header).to_parquet(out_path + ".parquet", index=False)
print(json.dumps({"rows": len(rows), "seconds": time.perf_counter() - started}))
"""


def measured_build(project: Path) -> tuple[ChildRun, dict[str, float], int]:
    """A build that must release; (run, phases, exact members from the file manifest)."""
    run, phases, result = run_build(project)
    if result["status"] != "released":
        raise RuntimeError(f"the benchmark segment was blocked: {result['reasons']}")
    # the CLI shows a DP-noised member count; the exact one is in the file's manifest
    manifest = json.loads(Path(result["files"]["file"]["manifest"]).read_text())
    return run, phases, int(manifest["members"])


def run_build(project: Path, segment: str = SEGMENT) -> tuple[ChildRun, dict[str, float], dict]:
    """One measured ``audiences build`` in a child; (run, phase seconds, build JSON)."""
    args = [sys.executable, "-c", _BUILD_CHILD, "-p", str(project), "build", segment]
    args += ["--json"]  # released on the child's (stopped) clock: AS_OF
    # cwd is the repository, not the project: `python -m` puts cwd on sys.path first.
    run = check(run_child(args, cwd=ROOT), "audiences build")
    phases = {}
    for line in run.stderr.splitlines():
        if line.startswith("PHASES "):
            phases = json.loads(line.removeprefix("PHASES "))
    result = json.loads(run.stdout)["builds"][0]
    return run, phases, result


def run_baseline(contacts: Path, events: Path, out: Path, *, link: bool) -> tuple[ChildRun, int]:
    args = [sys.executable, "-c", _BASELINE_CHILD, str(contacts), str(events), str(out)]
    args += [AS_OF.isoformat(), "link" if link else "no-link"]
    run = check(run_child(args, cwd=ROOT), "pandas baseline")
    return run, int(json.loads(run.stdout.strip().splitlines()[-1])["rows"])


# A project pack that switches the duplicate-of-opt-out linkage off (the job issue #2
# specified, before the consent rule learned to link records).
NOLINK_PACK = """name: nolink
version: "1"
extends: hipaa-marketing
rules:
  - id: consent
    params: {exclude_duplicates_of_opt_outs: false}
"""


DUCKDB_JOB = Path(__file__).resolve().parent / "duckdb_job.py"


def run_duckdb(
    contacts: Path, events: Path, out: Path, states: tuple[str, ...], *, link: bool = True
) -> tuple[ChildRun, int]:
    """The DuckDB script of the same job in a child; (run, rows it released)."""
    args = [sys.executable, str(DUCKDB_JOB), str(contacts), str(events), str(out)]
    args += [AS_OF.isoformat(), "link" if link else "no-link", ",".join(states)]
    run = check(run_child(args, cwd=ROOT), "DuckDB script")
    return run, int(json.loads(run.stdout.strip().splitlines()[-1])["rows"])


def disagreements(
    build_file: Path, job_file: Path, engine: str = "DuckDB"
) -> tuple[list[str], list[str]]:
    """(failures, notes) comparing the build's release file with a hand-written job's
    output (``engine``'s): the row count and the set of hashed emails must be equal;
    other columns that differ, person by person, are noted."""
    import polars as pl

    ours, theirs = pl.read_parquet(build_file), pl.read_parquet(job_file)
    failures: list[str] = []
    notes: list[str] = []
    if ours.height != theirs.height:
        failures.append(f"rows: build {ours.height:,}, {engine} {theirs.height:,}")
    email = "google_ads_hashed_email"
    mine, other = set(ours.get_column(email)), set(theirs.get_column(email))
    if mine != other:
        failures.append(
            f"hashed emails: {len(mine - other):,} only in the build, {len(other - mine):,} "
            f"only in {engine}"
        )
    if failures:
        return failures, notes
    # the same people: each other column compared row by row (person by CRM id)
    key = "meta_EXTERN_ID"
    ours, theirs = ours.sort(key), theirs.sort(key)
    for column in ours.columns:
        if column != email and (
            column not in theirs.columns
            or not ours.get_column(column).equals(theirs.get_column(column))
        ):
            notes.append(column)
    return failures, notes


@dataclass
class Pair:
    """One job of an engine pair: the build (A) and the DuckDB script (B) of a segment."""

    job: str
    build: ChildRun
    duckdb: ChildRun
    rows: int
    agrees: str
    index_reused: bool | None = None
    hashing_s: float = 0.0  # the build's identifier normalization + SHA-256 (its timer)
    floor_s: float | None = None  # OpenSSL's time for the digests released (None: no openssl)
    # the same on one core, for reference: the verdict is against ``floor_s`` (every core,
    # as the build's hashing uses them), the stricter one
    floor_one_core_s: float | None = None

    @property
    def ratio(self) -> float:
        return self.duckdb.seconds / self.build.seconds

    @property
    def hashing_ratio(self) -> float | None:
        return self.hashing_s / self.floor_s if self.floor_s else None

    @property
    def hashing_ratio_one_core(self) -> float | None:
        return self.hashing_s / self.floor_one_core_s if self.floor_one_core_s else None


# A SHA-256 hex digest, as the release's hashed columns hold them
_DIGEST = r"^[0-9a-f]{64}$"


def released_digests(parquet: Path) -> int:
    """How many SHA-256 digests the release file holds: its non-null 64-hex values (the
    plain columns, country code and postal code, and the unhashed external id hold none)."""
    import polars as pl

    lf = pl.scan_parquet(parquet)
    text = [c for c, t in lf.collect_schema().items() if t == pl.String]
    if not text:
        return 0
    counts = lf.select(pl.col(c).str.contains(_DIGEST).sum() for c in text).collect()
    return int(counts.sum_horizontal().item())


def openssl_sha256_rate(processes: int, seconds: int = 1) -> float | None:
    """SHA-256 digests per second of a 32-byte message over ``processes`` processes, as
    ``openssl speed -evp`` measures it now (None where openssl is not installed). Every
    identifier a release hashes is shorter than 56 bytes, one compression block like a
    32-byte message, so this rate times the digests released is what computing them costs
    at the least — the floor the issue's "hashing within 1.3× of OpenSSL" is against."""
    import subprocess

    exe = shutil.which("openssl")
    if exe is None:
        return None
    args = [exe, "speed", "-evp", "sha256", "-bytes", "32", "-seconds", str(seconds)]
    if processes > 1:
        args += ["-multi", str(processes)]
    done = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120)
    return parse_openssl_speed(done.stdout)


def parse_openssl_speed(text: str) -> float:
    """Digests per second from ``openssl speed -evp sha256 -bytes 32``'s result line
    (``sha256  544647.58k``: thousands of bytes per second, over every process)."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "sha256" and fields[1].endswith("k"):
            return float(fields[1][:-1]) * 1000 / 32
    raise RuntimeError(f"no sha256 result in openssl speed's output: {text[-200:]!r}")


def two_segment_project(folder: Path, contacts: Path, events: Path) -> Path:
    """A fresh project over the given sources with the benchmark's two segments (the first
    and the second over the same data) and the file destination, both approved."""
    return make_project(
        folder,
        contacts,
        events,
        {SEGMENT: SEGMENT_YAML, SECOND_SEGMENT: SECOND_SEGMENT_YAML},
        destinations=FILE_DESTINATION,
    )


def engine_pairs(rows: int, contacts: Path, events: Path, pairs: int) -> list[Pair]:
    """``pairs`` rounds of A B A B (see the module docstring); raises on a disagreement."""
    done: list[Pair] = []
    out = DATA_DIR / f"duckdb-{rows}.csv"
    for _ in range(pairs):
        project = two_segment_project(DATA_DIR / f"engine-project-{rows}", contacts, events)
        index = project / ".audiences" / "optout-index.bin"
        stamp = None
        jobs = (
            ("first build, fresh project", SEGMENT, FIRST_STATES),
            ("second segment, same data", SECOND_SEGMENT, SECOND_STATES),
        )
        for job, segment, states in jobs:
            build, phases, result = run_build(project, segment)  # A
            if result["status"] != "released":
                raise RuntimeError(f"{segment} was blocked: {result['reasons']}")
            release = Path(result["files"]["file"]["parquet"])
            rate = openssl_sha256_rate(os.cpu_count() or 1)  # the floor, in this run
            digests = released_digests(release)
            floor = digests / rate if rate else None
            one_core = openssl_sha256_rate(1)
            floor_one_core = digests / one_core if one_core else None
            reused: bool | None = None if stamp is None else index.stat().st_mtime_ns == stamp
            stamp = index.stat().st_mtime_ns
            duck, released = run_duckdb(contacts, events, out, states)  # B
            failures, notes = disagreements(release, Path(f"{out}.parquet"))
            if failures:
                raise RuntimeError(f"{job}: the DuckDB script disagrees: " + "; ".join(failures))
            agrees = "rows+emails" + (f" (differ: {', '.join(notes)})" if notes else ", all 19")
            done.append(
                Pair(
                    job,
                    build,
                    duck,
                    released,
                    agrees,
                    reused,
                    phases.get("hashing", 0.0),
                    floor,
                    floor_one_core,
                )
            )
    out.unlink(missing_ok=True)
    Path(f"{out}.parquet").unlink(missing_ok=True)
    return done


def spread(values: list[float], unit: str = "") -> str:
    """Median (min-max) of ``values``, two decimals, as the benchmark tables print them."""
    return f"{statistics.median(values):.2f}{unit} ({min(values):.2f}-{max(values):.2f})"


def print_engine_pairs(rows: int, pairs: list[Pair], load: tuple[float, float]) -> None:
    print(
        f"\nengine pairs, {rows:,} contacts: A = audiences build (default pack, file "
        "destination), B = the DuckDB script of the same job; run A B A B; load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after ({os.cpu_count()} CPUs, shared)"
    )
    print(
        f"{'job':<30}{'rows':>9}{'build s':>9}{'DuckDB s':>10}{'B/A':>7}{'build RSS':>11}"
        f"{'DuckDB RSS':>12}{'hashing s':>11}{'floor s':>9}  index reused  agreement"
    )
    for p in pairs:
        reused = "-" if p.index_reused is None else ("yes" if p.index_reused else "NO")
        floor = f"{p.floor_s:>9.2f}" if p.floor_s is not None else f"{'-':>9}"
        print(
            f"{p.job:<30}{p.rows:>9,}{p.build.seconds:>9.2f}{p.duckdb.seconds:>10.2f}"
            f"{p.ratio:>6.2f}x{p.build.peak_rss_bytes / 1e9:>9.2f}GB"
            f"{p.duckdb.peak_rss_bytes / 1e9:>10.2f}GB{p.hashing_s:>11.2f}{floor}"
            f"  {reused:<12}  {p.agrees}"
        )
    verdicts = []
    targets = (
        ("first build, fresh project", TARGET_VS_DUCKDB_FIRST, TARGET_FIRST_S),
        ("second segment, same data", TARGET_VS_DUCKDB_SECOND, TARGET_SECOND_S),
    )
    for job, target, seconds in targets:
        mine = [p for p in pairs if p.job == job]
        ratios = [p.ratio for p in mine]
        build_rss = [p.build.peak_rss_bytes / 1e9 for p in mine]
        duck_rss = [p.duckdb.peak_rss_bytes / 1e9 for p in mine]
        hashing = [r for r in (p.hashing_ratio for p in mine) if r is not None]
        one_core = [r for r in (p.hashing_ratio_one_core for p in mine) if r is not None]
        print(
            f"  {job}: median (min-max) over {len(mine)} pairs: build "
            f"{spread([p.build.seconds for p in mine], ' s')}, DuckDB "
            f"{spread([p.duckdb.seconds for p in mine], ' s')}, DuckDB/build "
            f"{spread(ratios, 'x')}; peak RSS build {spread(build_rss, ' GB')}, DuckDB "
            f"{spread(duck_rss, ' GB')}; hashing / OpenSSL floor "
            + (
                f"{spread(hashing, 'x')} on {os.cpu_count()} cores"
                + (f", {spread(one_core, 'x')} on one core" if one_core else "")
                if hashing
                else "not measured (no openssl)"
            )
        )
        wall = statistics.median(p.build.seconds for p in mine)
        rss = statistics.median(build_rss)
        checks = [
            (f"<= {seconds:g} s", wall <= seconds),
            (f">= {target:g}x DuckDB", statistics.median(ratios) >= target),
            (f"RSS <= {TARGET_RSS_10M_GB:g} GB", rss <= TARGET_RSS_10M_GB),
            ("RSS <= DuckDB's", rss <= statistics.median(duck_rss)),
        ]
        if hashing:
            checks.append(
                (
                    f"hashing <= {TARGET_HASHING_FLOOR:g}x floor",
                    statistics.median(hashing) <= TARGET_HASHING_FLOOR,
                )
            )
        verdicts += [f"{job} {what} {'ok' if ok else 'MISSED'}" for what, ok in checks]
    stated = (
        "targets"
        if rows == 10_000_000
        else f"targets (stated for 10M; at {rows:,} for reference only)"
    )
    print(f"{stated}: " + "; ".join(verdicts))


def multiplied_crm(contacts: Path, events: Path, times: int) -> tuple[Path, Path]:
    """The sample ``times`` over as ``times`` times as many people — the issue's 20M (and
    30M, 100M) sample, as the generator would need about 22 GB for a real 20M. Written
    once beside the sample, streamed (bounded memory).

    Copy ``k`` (1 to 9) of every contact is another person: its CRM ids are prefixed with a
    letter (``D``, ``E``, … in contacts and events) and its identifiers are moved so that
    no two copies share an e-mail, phone or name-and-postal-code key (the linkage keys):

    * e-mail: the digit ``k`` before the local part (the sample's local parts start with a
      letter, so no copy's mailbox is another's);
    * phone: the exchange's first digit, ``5`` in the sample, becomes one of
      ``0 1 2 3 4 6 7 8 9`` (an exchange is not validated; the area code is kept);
    * postal code: the two digits after the ZIP's first three move by ``37 k`` modulo 100
      (same area; a name meets a namesake there only as often as in a real population).

    A duplicate record keeps its person's (moved) identifiers, so the sample's duplicates
    stay one person in every copy. Every other column is unchanged: the same shares of
    consent, conditions and visits, ``times`` as many people and records."""
    import polars as pl

    if not 2 <= times <= 10:
        raise ValueError(f"times must be 2 to 10, not {times}")
    folder = contacts.parent.with_name(f"{contacts.parent.name}-x{times}-people")
    out = folder / "contacts.parquet", folder / "events.parquet"
    if all(p.exists() for p in out):
        return out
    folder.mkdir(parents=True, exist_ok=True)
    for source, target in zip((contacts, events), out, strict=True):
        frame = pl.scan_parquet(source)
        copies = [
            frame.with_columns(
                (pl.lit(chr(ord("D") + k)) + pl.col("contact_id")).alias("contact_id"),
                *(_other_people(k + 1) if source == contacts else ()),
            )
            for k in range(times - 1)
        ]
        partial = target.with_suffix(".partial")
        pl.concat([frame, *copies]).sink_parquet(partial)
        partial.rename(target)
    return out


def _other_people(k: int) -> list[Any]:
    """The e-mail, phone and ZIP of copy ``k`` (1 to 9): see ``multiplied_crm``."""
    import polars as pl

    zip_ = pl.col("zip")
    five = r"^(\s*[0-9]{3})([0-9]{2})(.*)$"
    moved = (zip_.str.extract(five, 2).cast(pl.Int32) + 37 * k) % 100
    return [
        pl.col("email").str.replace(r"^(\s*)", f"${{1}}{k}").alias("email"),
        pl.col("phone").str.replace(r"5([0-9]{2}[-. ]?[0-9]{4})$", f"{'012346789'[k - 1]}${{1}}"),
        pl.when(zip_.str.contains(five))
        .then(
            pl.concat_str(
                zip_.str.extract(five, 1),
                moved.cast(pl.String).str.zfill(2),
                zip_.str.extract(five, 3),
            )
        )
        .otherwise(zip_)
        .alias("zip"),
    ]


def multiplied_builds(rows: int, contacts: Path, events: Path, times: int = 2) -> None:
    """The first build and a second segment on the sample ``times`` over: wall and peak RSS."""
    # written by a child: the sink's memory is returned to the machine when it exits
    code = (
        "import sys; from pathlib import Path; from benchmarks.bench_build import multiplied_crm; "
        "multiplied_crm(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))"
    )
    args = [sys.executable, "-c", code, str(contacts), str(events), str(times)]
    check(run_child(args, cwd=ROOT), "multiplying")
    contacts, events = multiplied_crm(contacts, events, times)  # (made: only the paths)
    load_before = os.getloadavg()[0]
    project = make_project(
        DATA_DIR / f"engine-project-x{times}-people",
        contacts,
        events,
        {SEGMENT: SEGMENT_YAML, SECOND_SEGMENT: SECOND_SEGMENT_YAML},
        destinations=FILE_DESTINATION,
    )
    done = []
    for job, segment in (("first build", SEGMENT), ("second segment", SECOND_SEGMENT)):
        run, _, result = run_build(project, segment)
        if result["status"] != "released":
            raise RuntimeError(f"{segment} was blocked: {result['reasons']}")
        done.append((job, run))
    print(
        f"\nthe {rows:,} sample {times} times over (new people: {times * rows:,} records); load "
        f"average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    for job, run in done:
        print(f"  {job}: {run.seconds:.2f} s, peak RSS {run.peak_rss_bytes / 1e9:.2f} GB")
    target = {2: TARGET_RSS_DOUBLED_GB, 10: TARGET_RSS_X10_GB}.get(times)
    if target is None:
        return
    worst = max(run.peak_rss_bytes for _, run in done) / 1e9
    verdict = "ok" if worst <= target else "MISSED"
    stated = (
        "target"
        if rows == 10_000_000
        else f"target (stated for {times * 10}M; {times * rows:,} here)"
    )
    print(f"{stated}: peak RSS <= {target:g} GB {verdict}")


def main(
    quick: bool = False,
    engine_pairs_n: int = 3,
    engines_only: bool = False,
    doubled: bool = False,
    times: int = 0,
) -> None:
    byte_compiled()  # (as `make` leaves the project: the children import, not compile)
    with stopped_clock():  # the approvals are signed on the day the builds release: AS_OF
        rows = 1_000_000 if quick else 10_000_000
        contacts, events = sample_crm(rows)
        if doubled or times:
            multiplied_builds(rows, contacts, events, times or 2)
            return
        if engine_pairs_n:
            load_before = os.getloadavg()[0]
            pairs = engine_pairs(rows, contacts, events, engine_pairs_n)
            print_engine_pairs(rows, pairs, (load_before, os.getloadavg()[0]))
        if not engines_only:
            _main(rows, contacts, events)


def _main(rows: int, contacts: Path, events: Path) -> None:
    project = make_project(
        DATA_DIR / f"build-project-{rows}",
        contacts,
        events,
        {SEGMENT: SEGMENT_YAML},
        destinations=FILE_DESTINATION,
    )
    labels = ("first on the project", "repeated", "repeated again")
    load_before = os.getloadavg()[0]
    runs = []
    for _ in labels:
        runs.append(measured_build(project))
    nolink_project = make_project(
        DATA_DIR / f"build-project-{rows}-nolink",
        contacts,
        events,
        {SEGMENT: SEGMENT_YAML},
        destinations=FILE_DESTINATION,
        pack="policies/nolink.yaml",
        files={"policies/nolink.yaml": NOLINK_PACK},
    )
    nolinks = [measured_build(nolink_project) for _ in labels]

    out = DATA_DIR / f"baseline-{rows}.csv"
    base_run, base_released = run_baseline(contacts, events, out, link=True)
    plain_run, plain_released = run_baseline(contacts, events, out, link=False)
    out.unlink(missing_ok=True)
    Path(f"{out}.parquet").unlink(missing_ok=True)
    base = (base_run, base_released, plain_run, plain_released)
    _print_builds(rows, (load_before, os.getloadavg()[0]), labels, runs, nolinks, base)


def _print_builds(
    rows: int,
    load: tuple[float, float],
    labels: tuple[str, ...],
    runs: list[tuple[ChildRun, dict[str, float], int]],
    nolinks: list[tuple[ChildRun, dict[str, float], int]],
    base: tuple[ChildRun, int, ChildRun, int],
) -> None:
    base_run, base_released, plain_run, plain_released = base
    base_seconds, plain_seconds = base_run.seconds, plain_run.seconds
    print(
        f"{rows:,} contacts; segment: 3 attribute conditions + 1 event condition; "
        "pack hipaa-marketing; file destination (Parquet + CSV, Meta + Google Ads layouts); "
        f"load average {load[0]:.1f} before, {load[1]:.1f} after "
        f"({os.cpu_count()} CPUs, shared)"
    )
    print(
        f"{'what':<48}{'released':>11}{'wall s':>9}{'peak RSS':>10}{'vs baseline':>13}"
        f"{'gate adds':>11}"
    )
    for label, (run, phases, released) in zip(
        [f"ours: audiences build, {label}" for label in labels], runs, strict=True
    ):
        checks = phases.get("gate", 0.0) - phases.get("hashing", 0.0)
        print(
            f"{label:<48}{released:>11,}{run.seconds:>9.2f}{run.peak_rss_bytes / 1e9:>8.2f}GB"
            f"{base_seconds / run.seconds:>12.1f}x{checks / (run.seconds - checks):>11.0%}"
        )
    label = "baseline: pandas + hashlib per row"
    print(
        f"{label:<48}{base_released:>11,}{base_seconds:>9.2f}"
        f"{base_run.peak_rss_bytes / 1e9:>8.2f}GB{'1.0x':>13}{'':>11}"
    )
    for label, (run, _, released) in zip(labels, nolinks, strict=True):
        label = f"ours without the linkage, {label}"
        print(
            f"{label:<48}{released:>11,}{run.seconds:>9.2f}"
            f"{run.peak_rss_bytes / 1e9:>8.2f}GB{plain_seconds / run.seconds:>12.1f}x{'':>11}"
        )
    label = "baseline without the opt-out linkage"
    print(
        f"{label:<48}{plain_released:>11,}{plain_seconds:>9.2f}"
        f"{plain_run.peak_rss_bytes / 1e9:>8.2f}GB{'1.0x':>13}{'':>11}"
    )
    print(
        "  each pandas baseline: the consent exclusions of the build above it (incl. ad"
        " personalization denied), Google's mailbox canonicalization, and with the linkage:"
        " mailbox, phone and name + ZIP sets of every opted-out record; people, not records"
    )
    for what, ours_n, base_n in (
        ("default pack", runs[0][2], base_released),
        ("without the linkage", nolinks[0][2], plain_released),
    ):
        if ours_n != base_n:
            print(
                f"  NOTE ({what}): ours released {ours_n:,}, its pandas baseline {base_n:,} "
                f"({ours_n - base_n:+,}): the baseline no longer does exactly the same job"
            )
    _print_stages(rows, labels, runs, nolinks, base_seconds, plain_seconds)


def _print_stages(
    rows: int,
    labels: tuple[str, ...],
    runs: list[tuple[ChildRun, dict[str, float], int]],
    nolinks: list[tuple[ChildRun, dict[str, float], int]],
    base_seconds: float,
    plain_seconds: float,
) -> None:
    named = [*zip(labels, runs, strict=True)]
    named += [
        (f"without the linkage, {label}", r) for label, r in zip(labels, nolinks, strict=True)
    ]
    for label, (run, phases, _) in named:
        stages = sum(phases.get(k, 0.0) for k in ("collect", "gate", "record", "files"))
        print(
            f"  {label}: stages (s): select members {phases.get('collect', 0):.2f}; "
            f"gate {phases.get('gate', 0):.2f} (of which identifier hashing "
            f"{phases.get('hashing', 0):.2f}); record {phases.get('record', 0):.2f}; "
            f"files {phases.get('files', 0):.2f}; startup, sources, digest, reports "
            f"{max(0.0, run.seconds - stages):.2f}"
        )
    run, phases, _ = runs[0]
    checks = phases.get("gate", 0.0) - phases.get("hashing", 0.0)
    gate = phases.get("gate", 0.0)
    print(
        "  'gate adds' = gate checks without the identifier hashing (which the release files "
        f"need anyway) over the rest; the whole gate incl. hashing is {gate / run.seconds:.0%} "
        "of the first build's wall"
    )
    best, worst = min(r.seconds for r, _, _ in runs), max(r.seconds for r, _, _ in runs)
    plain_best = min(r.seconds for r, _, _ in nolinks)
    plain_worst = max(r.seconds for r, _, _ in nolinks)
    targets = [
        (f"wall <= {TARGET_S:g} s (best {best:.1f}, worst {worst:.1f})", worst <= TARGET_S),
        (
            f"peak RSS <= {TARGET_RSS_GB:g} GB",
            max(r.peak_rss_bytes for r, _, _ in runs) <= TARGET_RSS_GB * 1e9,
        ),
        (
            f">= {TARGET_SPEEDUP:g}x baseline ({base_seconds / worst:.1f}x-{base_seconds / best:.1f}x)",
            base_seconds / worst >= TARGET_SPEEDUP,
        ),
        (
            f"without the linkage: wall {plain_best:.1f}-{plain_worst:.1f} s, "
            f"{plain_seconds / plain_worst:.1f}x-{plain_seconds / plain_best:.1f}x its baseline",
            plain_worst <= TARGET_S and plain_seconds / plain_worst >= TARGET_SPEEDUP,
        ),
        (
            f"gate adds <= {TARGET_GATE_SHARE:.0%}",
            checks <= TARGET_GATE_SHARE * (run.seconds - checks),
        ),
    ]
    verdicts = "; ".join(f"{name} {'ok' if ok else 'MISSED'}" for name, ok in targets)
    if rows == 10_000_000:
        print("targets: " + verdicts)
    else:  # the issue states its targets for 10M contacts; start-up weighs more below
        print(f"targets (stated for 10M contacts; at {rows:,} for reference only): " + verdicts)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1M contacts instead of 10M")
    parser.add_argument(
        "--engine-pairs",
        type=int,
        default=3,
        metavar="N",
        help="rounds of build / DuckDB script, interleaved (default 3; 0 skips them)",
    )
    parser.add_argument(
        "--engines-only", action="store_true", help="only the engine pairs, not the build table"
    )
    parser.add_argument(
        "--doubled",
        action="store_true",
        help="only the first build and a second segment on the sample doubled (20M records)",
    )
    parser.add_argument(
        "--times",
        type=int,
        default=0,
        metavar="N",
        help="as --doubled, on the sample N times over (2 to 10; --times 3: 30M records)",
    )
    args = parser.parse_args()
    main(
        quick=args.quick,
        engine_pairs_n=args.engine_pairs,
        engines_only=args.engines_only,
        doubled=args.doubled,
        times=args.times,
    )
