"""Issue #15 item 5: marketers see private figures only.

Rules (docs/privacy-insights.md, "Coarse figures" and "Where the ledger lives"), each with
pass, fail and edge cases, and the attack a marketer with the CLI and the config would try,
run against the real CLI.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AS_OF, frozen_clock

from policies.privacy.coarse import (
    PEOPLE_COUNT_KEYS,
    Rounding,
    blocked_report,
    coarse_count,
    coarsen,
)

DAY = AS_OF.isoformat()


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


def exact_counts(value: Any, path: str = "") -> list[str]:
    """Paths of every int under a people-count key (what a marketer must never see)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, v in value.items():
            if key in PEOPLE_COUNT_KEYS and isinstance(v, int) and not isinstance(v, bool):
                found.append(f"{path}.{key}={v}")
            found += exact_counts(v, f"{path}.{key}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += exact_counts(v, f"{path}[{i}]")
    return found


# ------------------------------------------------------------------------------ the rule
@pytest.mark.parametrize(
    ("n", "shown"),
    [(0, "< 100"), (1, "< 100"), (99, "< 100"), (100, "100-199"), (167, "100-199"),
     (199, "100-199"), (200, "200-299"), (123_456, "123400-123499")],
)  # fmt: skip
def test_coarse_count_hides_below_k_and_rounds_to_the_step(n: int, shown: str) -> None:
    assert coarse_count(n, 100, 100) == shown


def test_coarse_count_with_a_step_finer_than_k_never_goes_below_k() -> None:
    assert coarse_count(60, 50, 100) == "50-99"
    assert coarse_count(49, 50, 100) == "< 50"


@pytest.mark.parametrize("bad", [True, 1.0, "3", None])
def test_coarse_count_refuses_what_is_not_a_count(bad: Any) -> None:
    with pytest.raises(TypeError):
        coarse_count(bad, 100, 100)


def test_coarse_count_refuses_a_rounding_of_zero() -> None:
    with pytest.raises(ValueError):
        coarse_count(5, 0, 100)
    with pytest.raises(ValueError):
        Rounding(k=100, step=0)


def test_coarsen_walks_nested_documents_and_hides_small_match_rates() -> None:
    how = Rounding(100, 100)
    doc = {"results": [{"adds": 1, "sent": 1, "match_rate": 1.0, "segment": "x", "seq": 3}]}
    out = coarsen(doc, how)
    assert out == {
        "results": [
            {"adds": "< 100", "sent": "< 100", "match_rate": None, "segment": "x", "seq": 3}
        ]
    }
    big = coarsen({"adds": 500, "sent": 500, "match_rate": 0.8}, how)
    assert big == {"adds": "500-599", "sent": "500-599", "match_rate": 0.8}
    assert doc["results"][0]["adds"] == 1  # the input is not modified


def test_a_blocked_report_hides_counts_below_k_but_keeps_thresholds() -> None:
    report = {
        "figures": {"candidates": 1, "eligible_members": 0, "without_member_key": 0},
        "verdicts": [
            {
                "evidence": {"members": 1, "threshold": 100, "pack_k": 100, "phi_derived": 1},
                "detail": "1 members is below the minimum of 100 for meta — widen the segment",
                "checks": [],
            },
            {"evidence": {"candidates": 250}, "detail": "3 of 250 candidates excluded"},
        ],
        "difference_checks": [],
        "block_reasons": ["min-size [meta]: fewer members than the minimum of 100"],
    }
    out = blocked_report(report, 100)
    assert out["figures"] == {
        "candidates": "< 100", "eligible_members": "< 100", "without_member_key": "< 100",
    }  # fmt: skip
    first, second = out["verdicts"]
    assert first["evidence"] == {
        "members": "< 100", "threshold": 100, "pack_k": 100, "phi_derived": 1,
    }  # fmt: skip
    assert first["detail"].startswith("< 100 members is below the minimum of 100")
    assert second["evidence"] == {"candidates": 250}  # k and above stay exact (officer)
    assert second["detail"] == "< 100 of 250 candidates excluded"


# ------------------------------------------------------------------------------ attacks
def test_attack_plan_sync_status_history_show_no_exact_people_count(make_project: Any) -> None:
    """A marketer reads adds/removes/members off plan, sync, status and history: every
    people count is coarse, in JSON and in the tables; the exact ones are in the state DB."""
    p = make_project(rows=3000, segments=("all-adults",))
    plan = p.cli_json("plan", "all-adults", "--as-of", DAY)
    synced = p.cli_json("sync", "all-adults", "--as-of", DAY)
    status = p.cli_json("status")
    history = p.cli_json("history", "all-adults")
    for doc in (plan, synced, status, history):
        assert exact_counts(doc) == [], doc
    (row,) = [r for r in synced["results"] if r["destination"] == "meta"]
    exact_adds = p.query("SELECT adds FROM syncs WHERE destination='meta'")[0][0]
    assert exact_adds > 0 and row["adds"] == coarse_count(exact_adds, 100, 100)
    table = p.cli("status")
    assert table.exit_code == 0 and f" {exact_adds} " not in table.stdout
    assert "exact figures are in the compliance reports" in table.stdout


def test_attack_sync_log_json_is_coarse_too(make_project: Any, tmp_path: Path) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    log = tmp_path / "sync.jsonl"
    result = p.cli("sync", "all-adults", "--as-of", DAY, "--log-json", str(log))
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows and all(exact_counts(r) == [] for r in rows)


def _one_person_segment(contact_id: str) -> str:
    return (
        "name: probe\n"
        "description: one named person with a cardiology visit\n"
        "destinations: [file]\n"
        "where:\n"
        "  all:\n"
        f"    - contact_id: {{eq: {json.dumps(contact_id)}}}\n"
        "    - event:\n"
        "        type: visit\n"
        "        where: {department: {eq: cardiology}}\n"
        "        within: 3650d\n"
    )


def test_attack_a_one_person_file_segment_report_does_not_answer_yes_or_no(
    make_project: Any,
) -> None:
    """`contact_id = X and a cardiology visit`: blocked (too small), and its report shows
    the same `< k` whether X had the visit (1 candidate) or not (0)."""
    import polars as pl

    p = make_project(rows=3000)
    events = pl.read_parquet(p.root / "data" / "events.parquet")
    cardio = events.filter(
        (pl.col("event_type") == "visit") & (pl.col("department") == "cardiology")
    )
    yes = cardio.get_column("contact_id")[0]
    no = (
        p.contacts()
        .filter(~pl.col("contact_id").is_in(cardio.get_column("contact_id").implode()))
        .get_column("contact_id")[0]
    )
    shown = []
    for who in (yes, no):
        (p.root / "segments" / "probe.yaml").write_text(_one_person_segment(who))
        p.approve("probe")  # approved, so the gate reads the candidates (not stopped early)
        build = p.cli_json("build", "probe", "--as-of", DAY, expect=3)
        (b,) = build["builds"]
        assert b["status"] == "blocked" and b["members"] is None
        report = json.loads(p.cli("report", b["build_id"], "--format", "json").stdout)
        text = p.cli("report", b["build_id"], "--format", "md").stdout
        # the funnel as the officer reads it: the coarse figure, the same for 1 and 0
        table = text.split("<!-- section: funnel -->")[1].split("<!-- section: definition -->")[0]
        assert "| Selected by the segment | — | — | \\< 100 |" in table
        shown.append(
            (
                report["figures"],
                [(v["id"], v["evidence"], v["detail"]) for v in report["verdicts"]],
                table,
            )
        )
    assert shown[0] == shown[1]  # nothing tells the two apart
    assert shown[0][0]["candidates"] == "< 100"
    # the officer still has the exact truth in the state DB's release-free build record
    assert p.query("SELECT count(*) FROM builds WHERE status='blocked'")[0][0] == 2


def _spend_all(p: Any) -> None:
    """Preview at the per-query cap until the pack's budget on this data is gone."""
    for _ in range(6):  # hipaa-marketing: ε 6 per month, at most 1 per query
        result = p.cli("preview", "all-adults", "--epsilon", "1", "--as-of", DAY)
        assert result.exit_code == 0, result.stderr
    refused = p.cli("preview", "all-adults", "--epsilon", "1", "--as-of", DAY)
    assert refused.exit_code == 1 and "privacy budget exhausted" in refused.stderr


def test_attack_a_copy_of_the_project_does_not_reset_the_budget(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    _spend_all(p)
    copy = p.root.parent / "copy"
    shutil.copytree(p.root, copy)
    shutil.rmtree(copy / ".audiences")  # and a fresh state folder, too
    from click.testing import CliRunner

    from audiences.cli import cli

    again = CliRunner().invoke(
        cli, ["-p", str(copy), "preview", "all-adults", "--epsilon", "0.1", "--as-of", DAY]
    )
    assert again.exit_code == 1
    assert "privacy budget exhausted" in again.stderr
    assert "never, unless the data changes" in again.stderr


def test_attack_an_events_file_of_ones_own_does_not_reset_the_budget(make_project: Any) -> None:
    """The budget protects the people of the contacts: pointing ``[sources.events]`` at a
    file of one's own (here: one event) changed the scope of the period cap and the
    dataset id, and gave a fresh ε 6 a month over the same people, project after project."""
    import polars as pl

    p = make_project(rows=3000, segments=("all-adults",))
    _spend_all(p)
    events = p.root / "data" / "events.parquet"
    mine = p.root / "my-events.parquet"
    pl.read_parquet(events).head(1).write_parquet(mine)
    p.edit_toml(lambda t: t.replace('"data/events.parquet"', '"my-events.parquet"'))
    assert '"my-events.parquet"' in (p.root / "audiences.toml").read_text()
    again = p.cli("preview", "all-adults", "--epsilon", "0.1", "--as-of", DAY)
    assert again.exit_code == 1 and "privacy budget exhausted" in again.stderr
    assert "ε=0 of ε=6 per month" in again.stderr.replace("ε=0.0", "ε=0")


def test_spends_recorded_under_the_earlier_scope_still_count(make_project: Any) -> None:
    """The scope leaves the events out now: the spends an earlier version tagged
    with the scope of contacts and events count toward the period cap after the upgrade."""
    import sqlite3

    from audiences.core.config import load_config
    from policies.privacy import ledger

    p = make_project(rows=3000, segments=("all-adults",))
    _spend_all(p)
    config = load_config(p.root / "audiences.toml")
    earlier = ledger.source_scope(config, with_events=True)
    assert earlier != ledger.source_scope(config)
    db = sqlite3.connect(ledger.ledger_home() / "ledger.sqlite")
    with db:
        db.execute("UPDATE dp_ledger SET scope = ?", (earlier,))
        # and a new dataset id, as if the events had changed since: only the period cap holds
        db.execute("UPDATE dp_ledger SET dataset = 'an-earlier-export'")
    db.close()
    again = p.cli("preview", "all-adults", "--epsilon", "0.1", "--as-of", DAY)
    assert again.exit_code == 1 and "privacy budget exhausted" in again.stderr


def test_attack_a_new_state_dir_does_not_reset_the_budget(make_project: Any) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    _spend_all(p)
    p.edit_toml(lambda t: t.replace('state_dir = ".audiences"', 'state_dir = ".fresh"'))
    again = p.cli("preview", "all-adults", "--epsilon", "0.1", "--as-of", DAY)
    assert again.exit_code == 1 and "privacy budget exhausted" in again.stderr
    budget = p.cli_json("budget")  # today: a new period, the same data
    assert budget["remaining"]["epsilon"] == pytest.approx(0.0)


def test_the_ledger_lives_in_the_accounts_home_not_where_home_points(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`HOME=/tmp/x audiences preview` must not find an empty ledger."""
    import pwd

    from policies.privacy import ledger

    monkeypatch.setattr(ledger, "LEDGER_HOME", None)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    import os

    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    assert ledger.ledger_home() == home / ".local" / "share" / "audiences" / "ledger"


def test_spends_recorded_in_the_state_db_by_earlier_versions_are_imported_once(
    make_project: Any,
) -> None:
    import sqlite3

    from policies.pack import load_pack
    from policies.privacy.ledger import budget_policy, open_ledger

    p = make_project(rows=3000, segments=("all-adults",))
    p.cli("status")  # creates the state DB
    config = p.config()
    from audiences.crm.sources import source_digest

    digest = source_digest(config)
    conn = sqlite3.connect(p.state_db)
    conn.execute(
        "INSERT INTO dp_ledger (dataset, period, epsilon, delta, query, actor, at) "
        "VALUES (?, '2025-06', 5.5, 0, 'old preview', 'ana', '2025-06-01T00:00:00Z')",
        (digest,),
    )
    conn.commit()
    conn.close()
    policy = budget_policy(load_pack(config))
    for _ in range(2):  # opened twice: imported once
        with open_ledger(config, policy) as led:
            assert led.spent(digest).epsilon == pytest.approx(5.5)


def test_every_count_a_sync_result_carries_is_coarsened() -> None:
    """A count added to a sync's result without its key in PEOPLE_COUNT_KEYS is printed
    exactly (``replaced_members`` was: a full refresh's count, one person apart between
    two segments, told that person's membership)."""
    import dataclasses

    from audiences.pipeline.batches import DestinationSync

    counts = {
        f.name
        for f in dataclasses.fields(DestinationSync)
        if f.type in ("int", int) and f.name != "seconds"
    }
    assert counts and counts <= PEOPLE_COUNT_KEYS, counts - PEOPLE_COUNT_KEYS
    shown = coarsen(
        DestinationSync("s", "meta", "ok", replaced_members=1797).to_dict(), Rounding(100, 100)
    )
    assert shown["replaced_members"] == "1700-1799"


def test_attack_validate_against_a_base_of_k_minus_one_tells_nothing(make_project: Any) -> None:
    """The attack: a base of exactly k - 1 records, or-ed with one named person's diagnosis;
    `validate` warned "selects fewer than k" exactly when the person did not have it."""
    import polars as pl

    p = make_project(rows=3000, segments=("all-adults",))
    contacts = p.contacts().sort("contact_id")
    bound = contacts.get_column("contact_id")[99]  # ids below it: exactly 99 = k - 1
    person = (
        contacts.slice(100)
        .filter(pl.col("email").is_not_null() & (pl.col("diagnosis_codes").list.len() > 0))
        .row(0, named=True)
    )
    theirs = person["diagnosis_codes"][0]
    every = set(contacts.get_column("diagnosis_codes").explode().drop_nulls())
    other = sorted(every - set(person["diagnosis_codes"]))[0]

    def findings(code: str) -> list[Any]:
        (p.root / "segments" / "probe.yaml").write_text(
            "name: probe\ndestinations: [file]\nwhere:\n  any:\n"
            f"    - contact_id: {{lt: {bound}}}\n"
            f"    - all: [{{email: {{eq: {person['email']}}}}}, "
            f"{{diagnosis_codes: {{contains: {code}}}}}]\n"
        )
        result = p.cli("validate", "--json", "--as-of", DAY)
        assert result.exit_code == 0, result.stderr
        doc = json.loads(result.stdout)
        return [f for f in doc["warnings"] if f["file"].endswith("probe.yaml")]

    assert findings(theirs) == findings(other)
