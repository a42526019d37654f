"""Marketer-facing numbers through the CLI: `preview`, `overlap` and `budget` on a real
project, against the persistent ledger of the hipaa-marketing pack (ε 6 per month, at most
1 per query, no refresh over unchanged data).

DP figures are checked against exact counts recomputed here with polars, with bounds from
the reported 95% intervals (a failure would need a noise draw beyond ``TAIL`` half-widths).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from datetime import date
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


ROWS = 20_000
SEED = 8
SEGMENTS = {
    "seniors": "name: seniors\ndestinations: [file]\nwhere:\n  age: {gte: 65}\n",
    "ny-adults": (
        "name: ny-adults\ndestinations: [file]\nwhere:\n  all:\n    - age: {gte: 18}\n"
        "    - state: {eq: NY}\n"
    ),
    "women": "name: women\ndestinations: [file]\nwhere:\n  sex: {eq: F}\n",
    **{
        f"{state.lower()}-people": (
            f"name: {state.lower()}-people\ndestinations: [file]\nwhere:\n  state: {{eq: {state}}}\n"
        )
        for state in ("CA", "TX", "FL", "PA")
    },
}


@pytest.fixture(scope="module")
def crm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from audiences.demo.sample import write

    out = tmp_path_factory.mktemp("crm-insights")
    write(out, ROWS, seed=SEED, as_of=AS_OF, formats=("parquet",))
    return out


def make_project(root: Path, crm: Path) -> Path:
    from audiences.pipeline.project import init_project

    init_project(root)
    shutil.copytree(crm, root / "data")
    for template in (root / "segments").glob("*.yaml"):
        template.unlink()
    for name, text in SEGMENTS.items():
        (root / "segments" / f"{name}.yaml").write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, crm: Path) -> Path:
    return make_project(tmp_path_factory.mktemp("insights") / "project", crm)


def run(root: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["-p", str(root), *args])


def run_json(root: Path, *args: str) -> dict[str, Any]:
    result = run(root, *args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def preview(root: Path, segment: str, epsilon: float, by: str = "mia.marketing") -> Result:
    args = ["preview", segment, "--epsilon", str(epsilon), "--as-of", AS_OF.isoformat()]
    return run(root, *args, "--by", by, "--json")


def exact_sizes(crm: Path) -> dict[str, set[str]]:
    contacts = pl.read_parquet(crm / "contacts.parquet")
    bd = pl.col("birth_date")
    had_birthday = (bd.dt.month().cast(pl.Int32) * 100 + bd.dt.day().cast(pl.Int32)) <= (
        AS_OF.month * 100 + AS_OF.day
    )
    aged = contacts.with_columns(
        (AS_OF.year - bd.dt.year().cast(pl.Int32) - 1 + had_birthday.cast(pl.Int32)).alias("age")
    )
    chosen = {
        "seniors": aged.filter(pl.col("age") >= 65),
        "ny-adults": aged.filter((pl.col("age") >= 18) & (STATE == "NY")),
        "women": aged.filter(pl.col("sex") == "F"),
    }
    return {name: set(frame.get_column("contact_id")) for name, frame in chosen.items()}


def exact_people(
    project: Path, crm: Path, names: list[str], records: dict[str, set[str]] | None = None
) -> dict[str, set[str]]:
    """Each segment's people (their smallest CRM id): records sharing a normalized email
    or phone are one person (``person_keys``, tested in test_people.py), linked over the
    records of the segments together, as the figures count them. ``records``: each
    segment's CRM ids (default: :func:`exact_sizes`)."""
    from audiences.core.config import load_config
    from audiences.crm.linkage import person_keys

    records = records or exact_sizes(crm)
    ids = sorted(set().union(*(records[name] for name in names)))
    contacts = pl.read_parquet(crm / "contacts.parquet").filter(pl.col("contact_id").is_in(ids))
    config = load_config(project / "audiences.toml")
    person = dict(
        zip(
            contacts.get_column("contact_id"),
            person_keys(contacts, config, by="contact_id"),
            strict=True,
        )
    )
    return {name: {person[i] for i in records[name]} for name in names}


# How many 95 % half-widths a figure may stray from the exact count. The noise is integer
# Laplace (an overlap's figure sums 2 or 4 of them): at ε = 1 a draw lands beyond 3
# half-widths 1 in 15,000 (one) to 1 in 50,000 (a sum) per figure — with about a dozen
# figures checked, once in a thousand suite runs or so (an overlap cell did: 13 against a
# bound of 12); beyond 4, 1 in 300,000 to 1 in 4 million. A wrong set counted is off by
# far more than either.
TAIL = 4


def half_width(ci95: list[int], value: int) -> float:
    return max(value - ci95[0], ci95[1] - value, 1)


# ------------------------------------------------------------------------------ preview
def test_preview_shape(project: Path) -> None:
    from policies.privacy import dp

    result = preview(project, "seniors", 0.5)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {
        "segment", "epsilon", "count", "breakdowns", "epsilon_used", "budget_remaining",
        "budget_renews", "note", "looks_remaining", "default_epsilon",
    }  # fmt: skip
    assert doc["segment"] == "seniors" and doc["epsilon"] == 0.5
    assert set(doc["count"]) == {"value", "ci95"}
    low, high = doc["count"]["ci95"]
    assert low <= doc["count"]["value"] <= high
    # breakdown keys are the public key sets, whatever the data holds
    public = {"age_band": dp.age_band_keys(), "state": dp.us_state_keys(), "sex": dp.sex_keys()}
    assert {name: [row["key"] for row in rows] for name, rows in doc["breakdowns"].items()} == (
        public
    )
    for rows in doc["breakdowns"].values():
        for row in rows:
            assert row["ci95"][0] <= row["ci95"][1]
            # a cell within the noise is a bound, not a number
            if row["below_threshold"]:
                assert row["count"] is None and row["threshold"] == row["ci95"][1]
            else:
                assert row["count"] >= 0
    assert sum(doc["epsilon_used"].values()) == pytest.approx(0.5)
    assert set(doc["epsilon_used"]) == {"count", *public}
    assert "differentially private" in doc["note"]


def test_preview_count_is_close_at_the_pack_cap(project: Path, crm: Path) -> None:
    from policies.pack import builtin_pack

    cap = builtin_pack("hipaa-marketing").budget.max_epsilon_per_query
    doc = json.loads(preview(project, "seniors", cap).stdout)
    people = exact_people(project, crm, ["seniors"])["seniors"]
    exact = len(people)
    assert exact < len(exact_sizes(crm)["seniors"])  # some people have several records
    value = doc["count"]["value"]
    width = half_width(doc["count"]["ci95"], value)
    assert width < 0.02 * exact  # at ε=1 the interval is narrow for ~4,000 people
    assert abs(value - exact) <= TAIL * width, (value, exact, width)
    # the breakdown by sex adds up to the people of known sex, within its noise
    by_sex = {row["key"]: row for row in doc["breakdowns"]["sex"]}
    contacts = pl.read_parquet(crm / "contacts.parquet")
    # each person counted with the values of their record with the smallest id
    women = contacts.filter(pl.col("contact_id").is_in(sorted(people)))
    women_exact = women.filter(pl.col("sex") == "F").height
    assert abs(by_sex["F"]["count"] - women_exact) <= TAIL * half_width(
        by_sex["F"]["ci95"], by_sex["F"]["count"]
    )


def test_preview_is_recorded_in_the_ledger(project: Path) -> None:
    before = run_json(project, "budget")
    result = preview(project, "ny-adults", 0.25, by="sam.analyst")
    assert result.exit_code == 0, result.stderr
    # a new CliRunner invocation opens the state DB afresh: the spend is persistent
    after = run_json(project, "budget")
    assert len(after["entries"]) == len(before["entries"]) + 1
    entry = after["entries"][-1]
    assert entry["epsilon"] == 0.25 and entry["actor"] == "sam.analyst"
    assert entry["query"].startswith("preview ny-adults")
    assert entry["period"] == AS_OF.strftime("%Y-%m")
    assert after["remaining"]["epsilon"] == pytest.approx(before["remaining"]["epsilon"] - 0.25)
    assert json.loads(result.stdout)["budget_remaining"]["epsilon"] == pytest.approx(
        after["remaining"]["epsilon"]
    )


@pytest.mark.parametrize("epsilon", ["0", "-1", "nan", "1.01"])
def test_refused_requests_spend_nothing(project: Path, epsilon: str) -> None:
    before = run_json(project, "budget")["entries"]
    result = run(project, "preview", "seniors", "--epsilon", epsilon, "--as-of", AS_OF.isoformat())
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and len(result.stderr.splitlines()) == 1
    assert run_json(project, "budget")["entries"] == before


def copied(crm: Path, out: Path, ids: set[str], copies: int, **changes: Any) -> Path:
    """The sample CRM in ``out`` with ``copies`` more records of each record in ``ids``:
    new CRM ids, the same email and phone (the same person), ``changes`` applied."""
    shutil.copytree(crm, out)
    contacts = pl.read_parquet(crm / "contacts.parquet")
    chosen = contacts.filter(pl.col("contact_id").is_in(sorted(ids)))
    more = [
        chosen.with_columns(
            (pl.col("contact_id") + f"-{k}").alias("contact_id"),
            *(pl.lit(value, contacts.schema[name]).alias(name) for name, value in changes.items()),
        )
        for k in range(copies)
    ]
    pl.concat([contacts, *more]).write_parquet(out / "contacts.parquet")
    return out


def test_a_person_with_ten_records_counts_once(tmp_path: Path, crm: Path) -> None:
    """The attack on the guarantee: ε protects one row. Counted per record, a person with
    ten CRM records was ten rows: protected at ten times the ε the figure reports."""
    seniors = exact_sizes(crm)["seniors"]
    data = copied(crm, tmp_path / "crm", seniors, 9)
    root = make_project(tmp_path / "project", data)
    ids = pl.read_parquet(data / "contacts.parquet").get_column("contact_id")
    records = set(ids.filter(ids.str.replace(r"-\d$", "").is_in(sorted(seniors))).to_list())
    assert len(records) == 10 * len(seniors)
    # (a record with neither email nor phone links to nothing: its copies are other people)
    people = len(exact_people(root, data, ["seniors"], {"seniors": records})["seniors"])
    doc = json.loads(preview(root, "seniors", 1.0).stdout)
    value = doc["count"]["value"]
    assert abs(value - people) <= TAIL * half_width(doc["count"]["ci95"], value), (value, people)
    assert value < 2 * people  # (the records: ten times as many)


def test_a_person_in_two_segments_by_two_records_is_in_their_overlap(
    tmp_path: Path, crm: Path
) -> None:
    """Each woman aged 65+ gets a second record, marked male: the same person (email and
    phone) in `women` and in `men`. Linked per segment, those people fell into two cells
    (women only, men only) and the overlap missed them."""
    seniors = exact_sizes(crm)["seniors"]
    contacts = pl.read_parquet(crm / "contacts.parquet")
    women = set(
        contacts.filter(pl.col("contact_id").is_in(sorted(seniors)) & (pl.col("sex") == "F"))
        .get_column("contact_id")
        .to_list()
    )
    data = copied(crm, tmp_path / "crm", women, 1, sex="M")
    root = make_project(tmp_path / "project", data)
    (root / "segments" / "men.yaml").write_text(
        "name: men\ndestinations: [file]\nwhere:\n  sex: {eq: M}\n", encoding="utf-8"
    )
    everyone = pl.read_parquet(data / "contacts.parquet")
    records = {
        sex: set(everyone.filter(pl.col("sex") == code).get_column("contact_id").to_list())
        for sex, code in (("women", "F"), ("men", "M"))
    }
    exact = exact_people(root, data, ["women", "men"], records)
    both = len(exact["women"] & exact["men"])
    assert both >= len(women) * 0.9  # (a few of them were linked to others already)
    doc = run_json(root, "overlap", "women", "men", "--epsilon", "1", "--as-of", AS_OF.isoformat())
    cell = {(row["segment"], n): row[n] for row in doc["matrix"] for n in ("women", "men")}
    bound = TAIL * max(doc["ci95_half_width"]["overlaps"], 1)
    assert abs(cell["women", "men"] - both) <= bound, (cell["women", "men"], both)


# ------------------------------------------------------------------------------ overlap
def test_overlap_matrix(project: Path, crm: Path) -> None:
    names = ["seniors", "ny-adults", "women"]
    doc = run_json(project, "overlap", *names, "--epsilon", "1", "--as-of", AS_OF.isoformat())
    assert doc["segments"] == names
    assert [row["segment"] for row in doc["matrix"]] == names
    for row in doc["matrix"]:
        assert set(row) == {"segment", *names}
        assert all(isinstance(row[n], int) and row[n] >= 0 for n in names)
    cell = {(row["segment"], n): row[n] for row in doc["matrix"] for n in names}
    assert all(cell[a, b] == cell[b, a] for a in names for b in names)
    exact = exact_people(project, crm, names)
    sizes, pairs = doc["ci95_half_width"]["sizes"], doc["ci95_half_width"]["overlaps"]
    for a in names:
        for b in names:
            truth = len(exact[a] & exact[b])
            bound = TAIL * max(sizes if a == b else pairs, 1)
            assert abs(cell[a, b] - truth) <= bound, (a, b, cell[a, b], truth)
    assert doc["epsilon"] == 1.0


@pytest.mark.parametrize(
    ("names", "pattern"),
    [
        (["seniors"], "overlap needs at least two segments"),
        (["seniors", "seniors"], "more than once"),
        (list(SEGMENTS), "at most 6 segments at a time, got 7"),
    ],
    ids=["one", "repeated", "seven-or-more"],
)
def test_overlap_usage_errors_spend_nothing(project: Path, names: list[str], pattern: str) -> None:
    before = run_json(project, "budget")["entries"]
    result = run(project, "overlap", *names, "--epsilon", "0.1", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 2, result.stderr
    assert pattern in result.stderr and len(result.stderr.splitlines()) == 1
    assert run_json(project, "budget")["entries"] == before


# ------------------------------------------------------------------------------ exhaustion
def test_budget_exhaustion(tmp_path: Path, crm: Path) -> None:
    root = make_project(tmp_path / "project", crm)
    start = run_json(root, "budget")
    assert start["entries"] == [] and start["remaining"]["epsilon"] == 6.0
    cap = start["policy"]["max_epsilon_per_query"]
    for _ in range(math.floor(start["remaining"]["epsilon"] / cap)):
        assert preview(root, "seniors", cap).exit_code == 0
    spent = run_json(root, "budget")
    assert spent["remaining"]["epsilon"] == pytest.approx(0.0)
    refused = run(root, "preview", "seniors", "--epsilon", "0.5", "--as-of", AS_OF.isoformat())
    assert refused.exit_code == 1
    (line,) = refused.stderr.splitlines()
    assert line.startswith("Error: privacy budget exhausted for dataset ")
    assert ": requested ε=0.5, spent ε=6, remaining ε=0 of ε=6 per month; " in line
    assert "renews: never, unless the data changes" in line
    assert "until 2025-07-01 00:00 UTC" in line  # the next period, from today (the clock)
    # nothing is left: a smaller epsilon cannot help, so the advice does not suggest one
    assert "— the budget is spent: a smaller ε cannot help; it renews: never" in line
    assert refused.stdout == ""
    # refused: nothing recorded; the ledger still holds exactly the allowed spends
    after = run_json(root, "budget")
    assert after["entries"] == spent["entries"]
    assert sum(e["epsilon"] for e in after["entries"]) == pytest.approx(6.0)
    # overlap draws on the same budget
    blocked = run(root, "overlap", "seniors", "women", "--as-of", AS_OF.isoformat())
    assert blocked.exit_code == 1 and "privacy budget exhausted" in blocked.stderr


def test_a_moved_as_of_does_not_renew_the_period(tmp_path: Path, crm: Path) -> None:
    """The attack: spend the month's budget, let the CRM refresh (a new digest: its own
    budget, but the same month's cap over every digest), then ask again with `--as-of`
    in another month. The spend was filed under the month --as-of named, whose cap was
    untouched: a fresh budget over nearly the same people for each month named."""
    root = make_project(tmp_path / "project", crm)
    cap = run_json(root, "budget")["policy"]["max_epsilon_per_query"]
    for _ in range(6):
        assert preview(root, "seniors", cap).exit_code == 0
    contacts = pl.read_parquet(root / "data" / "contacts.parquet")
    contacts.slice(1).write_parquet(root / "data" / "contacts.parquet")  # the next export
    for day in ("2025-07-15", "2026-01-15", "2024-12-15"):
        asked = ["preview", "seniors", "--epsilon", "0.5", "--as-of", day, "--json"]
        refused = run(root, *asked)
        assert refused.exit_code == 1, (day, refused.stdout)
        assert "privacy budget exhausted" in refused.stderr
        assert "renews: 2025-07-01 00:00 UTC" in refused.stderr  # today's month, not --as-of's
        overlap = ["overlap", "seniors", "women", "--epsilon", "0.5", "--as-of", day]
        assert run(root, *overlap).exit_code == 1
    entries = run_json(root, "budget")["entries"]
    assert len(entries) == 6 and {e["period"] for e in entries} == {"2025-06"}


def test_a_project_pack_with_a_larger_budget_is_refused(tmp_path: Path, crm: Path) -> None:
    """The attack through the configuration: a pack of one's own extending
    hipaa-marketing with ε 100,000 per month, then `preview --epsilon 5000`: exact counts,
    no officer involved. Refused at load, one line, nothing spent."""
    root = make_project(tmp_path / "project", crm)
    (root / "policies").mkdir(exist_ok=True)
    (root / "policies" / "mine.yaml").write_text(
        "name: mine\nversion: '1'\nextends: hipaa-marketing\nbudget:\n"
        "  epsilon_per_period: 100000\n  max_epsilon_per_query: 10000\n",
        encoding="utf-8",
    )
    toml = (root / "audiences.toml").read_text()
    (root / "audiences.toml").write_text(
        toml.replace('pack = "hipaa-marketing"', 'pack = "policies/mine.yaml"', 1)
    )
    result = run(root, "preview", "seniors", "--epsilon", "5000", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "loosens the privacy budget of 'hipaa-marketing'" in line
    assert "epsilon_per_period, max_epsilon_per_query" in line


def test_switching_to_a_pack_with_a_larger_budget_gives_nothing_more(
    tmp_path: Path, crm: Path
) -> None:
    """The attack through the configuration, with a built-in: spend the month's ε 6 under
    hipaa-marketing, set `[policy] pack = "baseline"` (ε 10 a month), ask again about the
    same people. Refused, nothing spent: the spends made under 6 bound the data at 6."""
    root = make_project(tmp_path / "project", crm)
    cap = run_json(root, "budget")["policy"]["max_epsilon_per_query"]
    for _ in range(6):
        assert preview(root, "seniors", cap).exit_code == 0
    toml = (root / "audiences.toml").read_text()
    (root / "audiences.toml").write_text(
        toml.replace('pack = "hipaa-marketing"', 'pack = "baseline"', 1)
    )
    shown = run_json(root, "budget")
    assert shown["policy"]["epsilon_per_period"] == 10.0  # what the pack says
    assert shown["cap"]["epsilon"] == 6.0  # what is in force for this data
    assert shown["remaining"]["epsilon"] == pytest.approx(0.0)
    assert "in force for the current data: ε=6 per month" in run(root, "budget").stdout
    refused = run(root, "preview", "seniors", "--epsilon", "1", "--as-of", AS_OF.isoformat())
    assert refused.exit_code == 1 and refused.stdout == ""
    assert "remaining ε=0 of ε=6 per month" in refused.stderr
    assert run(root, "overlap", "seniors", "women", "--as-of", AS_OF.isoformat()).exit_code == 1
    assert len(run_json(root, "budget")["entries"]) == 6


def test_intervals_never_go_below_zero() -> None:
    """A cell with no people can draw a very negative noisy count: shown as 0, its interval
    must still contain 0 (was [0, -10] before the fix) and keep the noise's half-width
    ([0, 0] would claim a certainty the noise does not give)."""
    from types import SimpleNamespace

    from audiences.pipeline.insights import Preview

    count = SimpleNamespace(value=-25, shown=0, ci95_low=0.0, ci95_high=-10.4)
    frame = pl.DataFrame({"sex": ["F", "M"], "count": [-25, 40], "ci95_low": [0.0, 25.0]})
    frame = frame.with_columns(ci95_high=pl.Series([-10.0, 55.0]))
    result = SimpleNamespace(count=count, breakdowns={"sex": frame}, epsilon_used={})
    doc = Preview("s", 1.0, result, SimpleNamespace(epsilon=1.0), "never").to_dict()
    assert doc["count"] == {"value": 0, "ci95": [0, 15]}  # half-width 14.6
    assert doc["breakdowns"]["sex"] == [
        {"key": "F", "count": None, "below_threshold": True, "threshold": 15, "ci95": [0, 15]},
        {"key": "M", "count": 40, "below_threshold": False, "ci95": [25, 55]},
    ]
