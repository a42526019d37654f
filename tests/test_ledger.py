"""The privacy budget ledger: value objects, caps, renewal, persistence, concurrency."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from audiences.core import state
from audiences.core.errors import BudgetExhausted, StateError, UsageError
from policies.privacy.ledger import (
    BudgetPolicy,
    Ledger,
    PrivacyBudget,
    next_period_start,
    period_label,
)

DIGEST_A = "a" * 64
DIGEST_B = "b" * 64
NOV = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
DEC = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)


def _connect(path: Path | str = ":memory:") -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    # the real state database, migrated by audiences.core.state
    return state.connect(tmp_path / "state.db")


@pytest.fixture
def policy() -> BudgetPolicy:
    return BudgetPolicy(epsilon_per_period=1.0, period="month", max_epsilon_per_query=0.5)


# -- PrivacyBudget ---------------------------------------------------------------------------


def test_budget_arithmetic_and_partial_order() -> None:
    a, b = PrivacyBudget(0.3), PrivacyBudget(0.2, 1e-9)
    assert a + b == PrivacyBudget(0.5, 1e-9)
    assert (a - PrivacyBudget(0.1)).epsilon == pytest.approx(0.2)
    assert a * 2 == PrivacyBudget(0.6) == 2 * a
    assert (a / 3).epsilon == pytest.approx(0.1)
    assert PrivacyBudget(0.2) <= a and PrivacyBudget(0.2) < a and a > PrivacyBudget(0.2)
    # incomparable: more epsilon, less delta
    assert not (a <= b) and not (b <= a)
    # ten spends of 0.1 fill 1.0 exactly (no floating-point dust refusal)
    total = PrivacyBudget.zero()
    for _ in range(10):
        total = total + PrivacyBudget(0.1)
    assert total <= PrivacyBudget(1.0)
    with pytest.raises(BudgetExhausted, match="would be negative"):
        _ = a - PrivacyBudget(0.4)


@pytest.mark.parametrize(
    ("epsilon", "delta", "pattern"),
    [
        (-1.0, 0.0, "epsilon must be finite and >= 0"),
        (float("nan"), 0.0, "epsilon must be finite"),
        (float("inf"), 0.0, "epsilon must be finite"),
        (1.0, -0.1, "delta must be finite and >= 0"),
        (1.0, 1.0, "delta must be < 1"),
        ("1", 0.0, "epsilon must be a number"),
        (True, 0.0, "epsilon must be a number"),
    ],
)
def test_bad_budget_values(epsilon: object, delta: object, pattern: str) -> None:
    with pytest.raises(UsageError, match=pattern) as info:
        PrivacyBudget(epsilon, delta)  # type: ignore[arg-type]
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("fields", "pattern"),
    [
        ({"epsilon_per_period": 0}, "greater than 0"),
        ({"epsilon_per_period": float("inf")}, "finite number"),
        ({"epsilon_per_period": 1, "period": "year"}, "'day', 'week', 'month' or 'quarter'"),
        ({"epsilon_per_period": 1, "max_epsilon_per_query": 2}, "exceeds epsilon_per_period"),
        ({"epsilon_per_period": 1, "surprise": True}, "Extra inputs are not permitted"),
    ],
)
def test_bad_policy(fields: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern):
        BudgetPolicy(**fields)  # type: ignore[arg-type]


# -- periods ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "label", "start"),
    [
        ("day", "2026-12-31", datetime(2027, 1, 1, tzinfo=UTC)),
        ("week", "2026-W53", datetime(2027, 1, 4, tzinfo=UTC)),
        ("month", "2026-12", datetime(2027, 1, 1, tzinfo=UTC)),
        ("quarter", "2026-Q4", datetime(2027, 1, 1, tzinfo=UTC)),
    ],
)
def test_period_labels_and_next_start(period: str, label: str, start: datetime) -> None:
    moment = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert period_label(moment, period) == label  # type: ignore[arg-type]
    assert next_period_start(moment, period) == start  # type: ignore[arg-type]
    assert period_label(date(2026, 5, 15), "quarter") == "2026-Q2"
    assert next_period_start(date(2026, 5, 15), "quarter") == datetime(2026, 7, 1, tzinfo=UTC)


# -- spending ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epsilon", "error", "pattern"),
    [
        (0.0, UsageError, r"epsilon must be > 0, got 0\.0"),
        (-1.0, UsageError, "epsilon must be finite and >= 0"),
        (float("nan"), UsageError, "epsilon must be finite"),
        (float("inf"), UsageError, "epsilon must be finite"),
        (0.6, UsageError, "exceeds the per-query cap 0.5"),
    ],
)
def test_bad_requested_epsilon(
    conn: sqlite3.Connection, policy: BudgetPolicy, epsilon: float, error: type, pattern: str
) -> None:
    ledger = Ledger(conn, policy)
    with pytest.raises(error, match=pattern) as info:
        ledger.spend(DIGEST_A, PrivacyBudget(epsilon), "count", "tester", NOV)
    assert info.value.exit_code == 2
    assert ledger.entries() == []


def test_delta_refused_when_policy_has_none(conn: sqlite3.Connection, policy: BudgetPolicy) -> None:
    with pytest.raises(UsageError, match="policy allows no delta"):
        Ledger(conn, policy).check(DIGEST_A, PrivacyBudget(0.1, 1e-9), NOV)


def test_spend_records_and_exhaustion_message(
    conn: sqlite3.Connection, policy: BudgetPolicy
) -> None:
    ledger = Ledger(conn, policy)
    entry = ledger.spend(DIGEST_A, PrivacyBudget(0.5), "segment x: count", "ana", NOV)
    assert (entry.period, entry.at, entry.budget) == (
        "2026-11",
        "2026-11-20T09:30:00Z",
        PrivacyBudget(0.5),
    )
    ledger.spend(DIGEST_A, PrivacyBudget(0.3), "segment x: age_band", "ana", NOV)
    assert ledger.spent(DIGEST_A, "2026-11").epsilon == pytest.approx(0.8)
    assert ledger.remaining(DIGEST_A, NOV).epsilon == pytest.approx(0.2)
    with pytest.raises(BudgetExhausted) as info:
        ledger.spend(DIGEST_A, PrivacyBudget(0.25), "segment x: state", "ana", NOV)
    message = str(info.value)
    assert "requested ε=0.25" in message
    assert "spent ε=0.8" in message
    assert "remaining ε=0.2 " in message
    assert "renews: never, unless the data changes" in message
    assert "aaaaaaaaaaaa…" in message and DIGEST_A not in message
    # refused spends are not recorded; the exact remainder still fits
    assert len(ledger.entries(DIGEST_A)) == 2
    ledger.spend(DIGEST_A, PrivacyBudget(0.2), "segment x: state", "ana", NOV)
    assert ledger.remaining(DIGEST_A, NOV) == PrivacyBudget(0.0)


def test_no_refresh_over_unchanged_data(conn: sqlite3.Connection, policy: BudgetPolicy) -> None:
    ledger = Ledger(conn, policy)
    ledger.spend(DIGEST_A, PrivacyBudget(0.5), "q1", "ana", NOV)
    ledger.spend(DIGEST_A, PrivacyBudget(0.5), "q2", "ana", NOV)
    # next month, same digest: still exhausted, for ever
    assert ledger.remaining(DIGEST_A, DEC) == PrivacyBudget(0.0)
    with pytest.raises(BudgetExhausted, match="renews: never, unless the data changes"):
        ledger.check(DIGEST_A, PrivacyBudget(0.1), DEC)
    # a changed source in the same month is held by the period cap ...
    with pytest.raises(BudgetExhausted, match=r"renews: 2026-12-01 00:00 UTC"):
        ledger.check(DIGEST_B, PrivacyBudget(0.1), NOV)
    # ... and gets a fresh budget in the next period
    assert ledger.remaining(DIGEST_B, DEC) == PrivacyBudget(1.0)
    ledger.spend(DIGEST_B, PrivacyBudget(0.5), "q3", "ana", DEC)
    assert ledger.spent(DIGEST_B).epsilon == 0.5
    assert [e.period for e in ledger.entries()] == ["2026-11", "2026-11", "2026-12"]


def test_refresh_on_unchanged_data_renews_each_period(conn: sqlite3.Connection) -> None:
    policy = BudgetPolicy(
        epsilon_per_period=1.0, max_epsilon_per_query=1.0, refresh_on_unchanged_data=True
    )
    ledger = Ledger(conn, policy)
    ledger.spend(DIGEST_A, PrivacyBudget(1.0), "q1", "ana", NOV)
    with pytest.raises(BudgetExhausted, match=r"renews: 2026-12-01 00:00 UTC"):
        ledger.check(DIGEST_A, PrivacyBudget(0.1), NOV)
    assert ledger.remaining(DIGEST_A, DEC) == PrivacyBudget(1.0)
    ledger.spend(DIGEST_A, PrivacyBudget(1.0), "q2", "ana", DEC)
    assert ledger.spent(DIGEST_A).epsilon == 2.0


def test_ledger_survives_reconnect(tmp_path: Path, policy: BudgetPolicy) -> None:
    path = tmp_path / "state.db"
    first = state.connect(path)
    Ledger(first, policy).spend(DIGEST_A, PrivacyBudget(0.5), "q1", "ana", NOV)
    first.close()
    second = _connect(path)
    ledger = Ledger(second, policy)
    assert ledger.spent(DIGEST_A).epsilon == 0.5
    assert ledger.remaining(DIGEST_A, NOV).epsilon == 0.5
    assert [(e.query, e.actor) for e in ledger.entries()] == [("q1", "ana")]
    second.close()


def test_concurrent_spends_do_not_overspend(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state.connect(path).close()  # the real state database: WAL, migrated
    policy = BudgetPolicy(epsilon_per_period=1.0, max_epsilon_per_query=1.0)
    workers = 6
    barrier = threading.Barrier(workers)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        connection = _connect(path)
        ledger = Ledger(connection, policy)
        barrier.wait()
        try:
            ledger.spend(DIGEST_A, PrivacyBudget(0.4), "q", "ana", NOV)
            result = "spent"
        except BudgetExhausted:
            result = "refused"
        finally:
            connection.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 4 + ["spent"] * 2
    check = _connect(path)
    assert Ledger(check, policy).spent(DIGEST_A).epsilon == pytest.approx(0.8)
    check.close()


def test_spend_refuses_inside_open_transaction(
    conn: sqlite3.Connection, policy: BudgetPolicy
) -> None:
    conn.execute("BEGIN")
    with pytest.raises(StateError, match="inside an open transaction"):
        Ledger(conn, policy).spend(DIGEST_A, PrivacyBudget(0.1), "q", "ana", NOV)
    conn.execute("ROLLBACK")


def test_missing_table_is_a_state_error(policy: BudgetPolicy) -> None:
    with pytest.raises(StateError, match="cannot read the privacy budget ledger"):
        Ledger(_connect(), policy).remaining(DIGEST_A, NOV)


# -- a cap never loosens over what it bounds (the pack switch) ------------------------------
def _shared(tmp_path: Path, policy: BudgetPolicy) -> Ledger:
    from policies.privacy.ledger import _connect_shared

    return Ledger(_connect_shared(tmp_path), policy, scope="project")


SMALL = BudgetPolicy(epsilon_per_period=6.0, period="month", max_epsilon_per_query=1.0)
LARGE = BudgetPolicy(epsilon_per_period=10.0, period="month", max_epsilon_per_query=1.0)


def test_a_larger_budget_does_not_top_up_data_queried_under_a_smaller_one(tmp_path: Path) -> None:
    """The attack: spend the month's 6 under hipaa-marketing, switch `[policy] pack` to
    baseline (10 a month), ask again about the same people. Refused: the spends made under
    6 bound the data and the month at 6, whatever the pack now says."""
    small = _shared(tmp_path, SMALL)
    for _ in range(6):
        small.spend(DIGEST_A, PrivacyBudget(1.0), "preview", "marketer", NOV)
    large = _shared(tmp_path, LARGE)
    assert large.remaining(DIGEST_A, NOV) == PrivacyBudget(0.0)
    assert large.cap(DIGEST_A, NOV) == PrivacyBudget(6.0)
    with pytest.raises(BudgetExhausted, match=r"remaining ε=0 of ε=6 per month"):
        large.spend(DIGEST_A, PrivacyBudget(1.0), "preview", "marketer", NOV)
    # new data in the same month: the month's cap is 6, all spent
    assert large.remaining(DIGEST_B, NOV) == PrivacyBudget(0.0)
    # new data in a new month: the larger budget applies, and is recorded with its spends
    assert large.remaining(DIGEST_B, DEC) == PrivacyBudget(10.0)
    large.spend(DIGEST_B, PrivacyBudget(1.0), "preview", "marketer", DEC)
    assert large.remaining(DIGEST_B, DEC) == PrivacyBudget(9.0)


def test_a_smaller_budget_applies_at_once(tmp_path: Path) -> None:
    large = _shared(tmp_path, LARGE)
    for _ in range(5):
        large.spend(DIGEST_A, PrivacyBudget(1.0), "preview", "marketer", NOV)
    small = _shared(tmp_path, SMALL)
    assert small.remaining(DIGEST_A, NOV) == PrivacyBudget(1.0)
    small.spend(DIGEST_A, PrivacyBudget(1.0), "preview", "marketer", NOV)
    # and, spent under 6, the data stays at 6 if the pack goes back to 10
    assert _shared(tmp_path, LARGE).remaining(DIGEST_A, NOV) == PrivacyBudget(0.0)


def test_a_ledger_of_an_earlier_version_gains_the_caps(tmp_path: Path) -> None:
    """Spends recorded before the caps were hold none: they bound by the current policy."""
    old = _connect(tmp_path / "ledger.sqlite")
    old.executescript(
        "CREATE TABLE dp_ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, scope TEXT NOT NULL, "
        "dataset TEXT NOT NULL, period TEXT NOT NULL, epsilon REAL NOT NULL, delta REAL NOT "
        "NULL DEFAULT 0, query TEXT NOT NULL, actor TEXT NOT NULL, at TEXT NOT NULL);"
        "INSERT INTO dp_ledger (scope, dataset, period, epsilon, query, actor, at) VALUES "
        f"('project', '{DIGEST_A}', '2026-11', 2.0, 'preview', 'marketer', '2026-11-20');"
    )
    old.close()
    large = _shared(tmp_path, LARGE)
    assert large.remaining(DIGEST_A, NOV) == PrivacyBudget(8.0)
    large.spend(DIGEST_A, PrivacyBudget(1.0), "preview", "marketer", NOV)
    assert _shared(tmp_path, SMALL).remaining(DIGEST_A, NOV) == PrivacyBudget(3.0)
