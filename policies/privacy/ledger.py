"""The differential-privacy budget ledger: what was spent, on which data, and what is left.

Budget semantics (docs/privacy-insights.md, "The budget": no refresh over unchanged data)
-----------------------------------------------------------------------------------------

Every spend is recorded in the ``dp_ledger`` table against the *source digest* it ran on
(``dataset``) and the budget *period* it fell in (``2026-11``, ``2026-W47``, ...).
A request for ``requested`` ε is allowed only when **both** caps hold:

1. **Period cap** — the spend of the current period, summed over *every* dataset digest in
   this state store, stays within ``epsilon_per_period``. A CRM that is refreshed daily gets
   a new digest each day; without this cap each refresh would hand out a fresh budget for
   nearly the same people. The period cap renews at the start of the next period.
2. **Unchanged-data cap** (when ``refresh_on_unchanged_data`` is false, the default) — the
   spend on *this* digest, summed over *all* periods, stays within ``epsilon_per_period``.
   A new period therefore does **not** renew the budget over the same data: only a changed
   source (a new digest) can be queried again, and then only within the period cap.

**A cap never loosens over what it already bounds.** Each spend records the per-period
cap in force when it was made (``cap_epsilon``, ``cap_delta``), and each cap above is the
smallest of the current policy's and of those recorded on the spends it sums. A project
that switches to a pack with a larger budget (``[policy] pack = "baseline"`` after
``hipaa-marketing``: ε 10 instead of 6 a month) therefore gets nothing more on data, or
in a period, already queried under the smaller one: without it, a marketer could spend
the month's 6, switch packs, and ask again for 4 more about the same people. The larger
budget applies to new data in a new period. (Spends recorded before the caps were, hold
no cap: they bound only by the current policy.)

With ``refresh_on_unchanged_data = true`` the second cap is dropped and the budget is the
plain per-period one (rule 1 alone): it renews every period even over unchanged data. AWS
Clean Rooms warns that periodic refresh over static data leaks; enable it only knowingly.

δ is tracked the same way against ``delta_per_period`` (0 unless the policy allows δ > 0).

Sums are compared with a relative tolerance of 1e-9 so that ten spends of 0.1 fill a budget
of 1.0 exactly instead of failing on floating-point dust.

Where it lives: keyed to the data, not to the project folder
------------------------------------------------------------
The ledger of a project is the **per-user** file ``ledger.sqlite`` under
``~/.local/share/audiences/ledger/`` (the home directory of the OS account, read from the
password database, not from ``$HOME``), shared by every project of that account. Spends are
recorded there with the dataset digest and the project's *scope* (a digest of the resolved
contacts source: the events are left out, see :func:`source_scope`): a copy of the
project, or a new ``state_dir``, over the same data sees the same spends; the period cap
(rule 1) sums the spends of the same scope, so copies of a project reading the same
contacts share it too, whatever events each one reads. Spends recorded by earlier versions in
the project's state database are imported once. Tests point :data:`LEDGER_HOME` elsewhere
in-process; nothing a production run reads (no environment variable, no config key) moves it.

Dataset ids of a later format (``v2-…``, database sources: docs/warehouse.md) are linked
once to the first-format id of the same rows (table ``dp_dataset_links``, both ids read
in one statement), and the unchanged-data cap of a ``v2-`` id counts the spends of its
predecessor: a change of the id's format never resets a budget.

Concurrency: :meth:`Ledger.spend` re-checks and inserts inside ``BEGIN IMMEDIATE``, so two
processes cannot both pass the check and overspend; the second waits for the first (SQLite
busy timeout) and then sees its spend.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from audiences.core.errors import BudgetExhausted, StateError, UsageError

if TYPE_CHECKING:
    from audiences.core.config import ProjectConfig, SourceConfig
    from policies.pack import Pack

__all__ = [
    "BudgetPolicy",
    "Ledger",
    "LedgerEntry",
    "PrivacyBudget",
    "ledger_home",
    "next_period_start",
    "open_ledger",
    "period_label",
    "source_scope",
]

Period = Literal["day", "week", "month", "quarter"]

_RELATIVE_TOLERANCE = 1e-9


def _close_enough_le(a: float, b: float) -> bool:
    """``a <= b`` up to floating-point dust."""
    return a <= b + _RELATIVE_TOLERANCE * abs(b) + 1e-15


@dataclass(frozen=True, slots=True)
class PrivacyBudget:
    """An (ε, δ) privacy budget: an immutable value with arithmetic and a partial order.

    ``a <= b`` means *both* components of ``a`` are within ``b``'s (so two budgets can be
    incomparable). Subtraction never goes below zero silently: it raises.
    """

    epsilon: float
    delta: float = 0.0

    def __post_init__(self) -> None:
        for name, value in (("epsilon", self.epsilon), ("delta", self.delta)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(
                    f"privacy budget {name} must be a number, got {type(value).__name__}",
                    f"give {name} as a finite number >= 0",
                )
            if not math.isfinite(value) or value < 0:
                raise UsageError(
                    f"privacy budget {name} must be finite and >= 0, got {value}",
                    f"give {name} as a finite number >= 0",
                )
        if self.delta >= 1:
            raise UsageError(
                f"privacy budget delta must be < 1, got {self.delta}",
                "delta is a probability of failure; use 0 or something like 1e-9",
            )
        object.__setattr__(self, "epsilon", float(self.epsilon))
        object.__setattr__(self, "delta", float(self.delta))

    @classmethod
    def zero(cls) -> PrivacyBudget:
        return cls(0.0, 0.0)

    def __add__(self, other: PrivacyBudget) -> PrivacyBudget:
        if not isinstance(other, PrivacyBudget):
            return NotImplemented
        return PrivacyBudget(self.epsilon + other.epsilon, min(self.delta + other.delta, 0.999999))

    def __sub__(self, other: PrivacyBudget) -> PrivacyBudget:
        if not isinstance(other, PrivacyBudget):
            return NotImplemented
        if not other <= self:
            raise BudgetExhausted(
                f"cannot subtract {other} from {self}: the result would be negative",
                "request at most the remaining budget",
            )
        return PrivacyBudget(
            max(self.epsilon - other.epsilon, 0.0), max(self.delta - other.delta, 0.0)
        )

    def __mul__(self, factor: float) -> PrivacyBudget:
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            return NotImplemented
        return PrivacyBudget(self.epsilon * factor, self.delta * factor)

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> PrivacyBudget:
        if isinstance(divisor, bool) or not isinstance(divisor, int | float):
            return NotImplemented
        if divisor <= 0:
            raise UsageError(f"cannot split a budget by {divisor}", "divide by a number > 0")
        return PrivacyBudget(self.epsilon / divisor, self.delta / divisor)

    def __le__(self, other: PrivacyBudget) -> bool:
        if not isinstance(other, PrivacyBudget):
            return NotImplemented
        return _close_enough_le(self.epsilon, other.epsilon) and _close_enough_le(
            self.delta, other.delta
        )

    def __ge__(self, other: PrivacyBudget) -> bool:
        if not isinstance(other, PrivacyBudget):
            return NotImplemented
        return other <= self

    def __lt__(self, other: PrivacyBudget) -> bool:
        if not isinstance(other, PrivacyBudget):
            return NotImplemented
        return self <= other and self != other

    def __gt__(self, other: PrivacyBudget) -> bool:
        if not isinstance(other, PrivacyBudget):
            return NotImplemented
        return other < self

    def __str__(self) -> str:
        text = f"ε={self.epsilon:.6g}"
        return f"{text}, δ={self.delta:.3g}" if self.delta else text


class BudgetPolicy(BaseModel):
    """How much privacy budget may be spent, and how it renews (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epsilon_per_period: float = Field(gt=0, allow_inf_nan=False)
    delta_per_period: float = Field(default=0.0, ge=0, lt=1, allow_inf_nan=False)
    period: Period = "month"
    max_epsilon_per_query: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    refresh_on_unchanged_data: bool = False

    @field_validator("max_epsilon_per_query")
    @classmethod
    def _query_cap_within_period(cls, value: float, info: ValidationInfo) -> float:
        per_period = info.data.get("epsilon_per_period")
        if per_period is not None and value > per_period:
            raise ValueError(
                f"max_epsilon_per_query ({value}) exceeds epsilon_per_period ({per_period})"
            )
        return value

    @property
    def per_period(self) -> PrivacyBudget:
        return PrivacyBudget(self.epsilon_per_period, self.delta_per_period)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One recorded spend (no PII: digests, labels, query descriptions)."""

    id: int
    dataset: str
    period: str
    budget: PrivacyBudget
    query: str
    actor: str
    at: str


def _as_datetime(as_of: date | datetime | None) -> datetime:
    if as_of is None:
        return datetime.now(UTC)
    if isinstance(as_of, datetime):
        return as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    return datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC)


def period_label(as_of: date | datetime, period: Period) -> str:
    """The label of the budget period containing ``as_of``: ``2026-11-23``, ``2026-W47``,
    ``2026-11`` or ``2026-Q4``."""
    day = _as_datetime(as_of).astimezone(UTC).date()
    if period == "day":
        return day.isoformat()
    if period == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return f"{day.year}-{day.month:02d}"
    if period == "quarter":
        return f"{day.year}-Q{(day.month - 1) // 3 + 1}"
    raise UsageError(f"unknown budget period {period!r}", "use day, week, month or quarter")


def next_period_start(as_of: date | datetime, period: Period) -> datetime:
    """Midnight UTC at which the period after the one containing ``as_of`` starts."""
    day = _as_datetime(as_of).astimezone(UTC).date()
    if period == "day":
        start = day + timedelta(days=1)
    elif period == "week":
        start = day + timedelta(days=7 - day.weekday())
    elif period == "month":
        start = date(day.year + (day.month == 12), day.month % 12 + 1, 1)
    elif period == "quarter":
        first_month = ((day.month - 1) // 3) * 3 + 1
        month = first_month + 3
        start = date(day.year + (month > 12), (month - 1) % 12 + 1, 1)
    else:
        raise UsageError(f"unknown budget period {period!r}", "use day, week, month or quarter")
    return datetime(start.year, start.month, start.day, tzinfo=UTC)


def _short(digest: str) -> str:
    return digest[:12] + "…" if len(digest) > 16 else digest


class Ledger:
    """The persistent budget ledger in the state database (table ``dp_ledger``)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        policy: BudgetPolicy,
        *,
        scope: str | None = None,
        earlier_scopes: tuple[str, ...] = (),
        formats: Callable[[], tuple[str, str]] | None = None,
    ) -> None:
        self.conn = conn
        self.policy = policy
        # The per-user ledger (open_ledger) tags spends with the project's source scope and
        # applies the period cap per scope; a bare dp_ledger table has no scope column.
        # ``earlier_scopes``: the same project's scope as earlier versions computed it,
        # whose spends count too (a change of the scope's definition resets nothing).
        self.scope = scope
        self._scopes = (scope, *earlier_scopes) if scope is not None else ()
        # (dataset id, first-format id) of the project's database tables, read together:
        # spends recorded under the first format are carried over (``_carry_over``)
        self._formats = formats
        self._carried: set[str] = set()
        # (a bare dp_ledger table, the state database's of earlier versions, has no caps)
        self._capped = _has_cap_columns(conn)
        self._links = (
            conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dp_dataset_links'"
            ).fetchone()
            is not None
        )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def _row(self, select: str, where: str, params: tuple[object, ...]) -> tuple[Any, ...]:
        try:
            return tuple(
                self.conn.execute(
                    f"SELECT {select} FROM dp_ledger WHERE {where}", params
                ).fetchone()
            )
        except sqlite3.Error as exc:
            raise StateError(
                f"cannot read the privacy budget ledger ({exc})",
                "run `audiences status` to check the state database",
            ) from exc

    def _sum(self, where: str, params: tuple[object, ...]) -> PrivacyBudget:
        row = self._row("COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0)", where, params)
        return PrivacyBudget(max(float(row[0]), 0.0), min(max(float(row[1]), 0.0), 0.999999))

    def spent(self, dataset: str, period: str | None = None) -> PrivacyBudget:
        """Budget spent on ``dataset`` in ``period`` (a label such as ``2026-11``; None = ever),
        counting the spends recorded under the id of the same data in an earlier format."""
        self._carry_over(dataset)
        ids = [dataset, *self._predecessors(dataset)]
        same = f"dataset IN ({', '.join('?' * len(ids))})"
        if period is None:
            return self._sum(same, tuple(ids))
        return self._sum(f"{same} AND period = ?", (*ids, period))

    def _predecessors(self, dataset: str) -> list[str]:
        """The ids of the same rows in earlier formats (a bare ledger table has no links)."""
        if not self._links:
            return []
        rows = self.conn.execute(
            "SELECT predecessor FROM dp_dataset_links WHERE dataset = ?", (dataset,)
        ).fetchall()
        return [str(row[0]) for row in rows]

    def _carry_over(self, dataset: str) -> None:
        """Link a second-format dataset id (``v2-…``) to the first-format id of the same
        rows, once, so the spends recorded before the format changed still count: an
        upgrade must never reset a budget (docs/warehouse.md, "The dataset id").

        Run when the ledger holds any first-format spend (of any scope: the same tables
        reached under another host name have another scope but the same id) and the id
        has no link yet; it reads every table again (both formats in one statement). If
        the rows changed since ``dataset`` was computed, the pair read now is of other
        data: refused, to be run again (a link to the wrong id could free a budget)."""
        if self._formats is None or not dataset.startswith("v2-") or dataset in self._carried:
            return
        if not self._links:
            return
        linked = self.conn.execute(
            "SELECT 1 FROM dp_dataset_links WHERE dataset = ?", (dataset,)
        ).fetchone()
        earlier = self.conn.execute(
            "SELECT 1 FROM dp_ledger WHERE dataset NOT LIKE 'v2-%' LIMIT 1"
        ).fetchone()
        if linked is None and earlier is not None:
            from audiences.core.errors import DataError

            current, first = self._formats()
            if current != dataset:
                raise DataError(
                    "the source tables changed while the privacy budget ledger was being "
                    "carried over to the new dataset id",
                    "run the command again",
                )
            at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            self.conn.execute(
                "INSERT INTO dp_dataset_links (dataset, predecessor, at) VALUES (?, ?, ?)",
                (dataset, first, at),
            )
        self._carried.add(dataset)

    def spent_in_period(self, period: str) -> PrivacyBudget:
        """Budget spent in ``period`` over every dataset digest of this scope (the period cap)."""
        if self.scope is None:
            return self._sum("period = ?", (period,))
        return self._sum(f"period = ? AND {self._in_scope()}", (period, *self._scopes))

    def _in_scope(self) -> str:
        return f"scope IN ({', '.join('?' * len(self._scopes))})"

    def _cap(self, where: str, params: tuple[object, ...]) -> PrivacyBudget:
        """The current policy's per-period cap, lowered to the smallest cap recorded on the
        spends ``where`` selects: a cap never loosens over what it already bounds."""
        cap = self.policy.per_period
        if not self._capped:
            return cap
        row = self._row("MIN(cap_epsilon), MIN(cap_delta)", where, params)
        epsilon = cap.epsilon if row[0] is None else min(cap.epsilon, float(row[0]))
        delta = cap.delta if row[1] is None else min(cap.delta, float(row[1]))
        return PrivacyBudget(epsilon, delta)

    def _period_cap(self, label: str) -> PrivacyBudget:
        if self.scope is None:
            return self._cap("period = ?", (label,))
        return self._cap(f"period = ? AND {self._in_scope()}", (label, *self._scopes))

    def _data_cap(self, dataset: str) -> PrivacyBudget:
        ids = [dataset, *self._predecessors(dataset)]
        return self._cap(f"dataset IN ({', '.join('?' * len(ids))})", tuple(ids))

    def cap(self, dataset: str, as_of: date | datetime | None = None) -> PrivacyBudget:
        """The per-period cap in force for ``dataset`` at ``as_of``: the policy's, or less
        where spends made under a smaller one bound it."""
        moment = _as_datetime(as_of)
        cap = self._period_cap(period_label(moment, self.policy.period))
        if not self.policy.refresh_on_unchanged_data:
            data = self._data_cap(dataset)
            cap = PrivacyBudget(min(cap.epsilon, data.epsilon), min(cap.delta, data.delta))
        return cap

    def _caps(self, dataset: str, as_of: datetime) -> tuple[PrivacyBudget, PrivacyBudget]:
        """(remaining under the period cap, remaining under the unchanged-data cap)."""
        label = period_label(as_of, self.policy.period)
        by_period = _floor_sub(self._period_cap(label), self.spent_in_period(label))
        if self.policy.refresh_on_unchanged_data:
            return by_period, self.policy.per_period
        return by_period, _floor_sub(self._data_cap(dataset), self.spent(dataset))

    def remaining(self, dataset: str, as_of: date | datetime | None = None) -> PrivacyBudget:
        """Budget that may still be spent on ``dataset`` at ``as_of`` (both caps applied)."""
        by_period, by_data = self._caps(dataset, _as_datetime(as_of))
        return PrivacyBudget(
            min(by_period.epsilon, by_data.epsilon), min(by_period.delta, by_data.delta)
        )

    def renews(self, dataset: str, as_of: date | datetime | None = None) -> str:
        """When more budget becomes available for ``dataset``, in words."""
        moment = _as_datetime(as_of)
        next_start = next_period_start(moment, self.policy.period).strftime("%Y-%m-%d %H:%M UTC")
        if not self.policy.refresh_on_unchanged_data:
            _, by_data = self._caps(dataset, moment)
            if by_data < self._data_cap(dataset):
                return (
                    "never, unless the data changes (budget is not refreshed over unchanged "
                    f"data; a changed source gets a fresh budget, limited by the period cap "
                    f"until {next_start})"
                )
        return next_start

    def entries(
        self,
        dataset: str | None = None,
        period: str | None = None,
        *,
        limit: int | None = None,
    ) -> list[LedgerEntry]:
        """Recorded spends, oldest first, optionally filtered (for `audiences budget`)."""
        clauses: list[str] = []
        params: list[object] = []
        if self.scope is not None and dataset is None:
            clauses.append(self._in_scope())
            params.extend(self._scopes)
        if dataset is not None:
            clauses.append("dataset = ?")
            params.append(dataset)
        if period is not None:
            clauses.append("period = ?")
            params.append(period)
        sql = "SELECT id, dataset, period, epsilon, delta, query, actor, at FROM dp_ledger"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = self.conn.execute(sql, params).fetchall()
        return [
            LedgerEntry(
                id=row[0],
                dataset=row[1],
                period=row[2],
                budget=PrivacyBudget(max(row[3], 0.0), min(max(row[4], 0.0), 0.999999)),
                query=row[5],
                actor=row[6],
                at=row[7],
            )
            for row in rows
        ]

    # -- checking and spending ----------------------------------------------------------------

    def validate_request(self, requested: PrivacyBudget) -> None:
        """Refuse a request that is not a sensible single query (exit 2)."""
        if not isinstance(requested, PrivacyBudget):
            raise UsageError(
                f"requested budget must be a PrivacyBudget, got {type(requested).__name__}",
                "build it with PrivacyBudget(epsilon, delta)",
            )
        if requested.epsilon <= 0:
            raise UsageError(
                f"epsilon must be > 0, got {requested.epsilon}",
                "ask for a positive epsilon such as 0.1",
            )
        if requested.epsilon > self.policy.max_epsilon_per_query * (1 + _RELATIVE_TOLERANCE):
            raise UsageError(
                f"epsilon {requested.epsilon:g} exceeds the per-query cap "
                f"{self.policy.max_epsilon_per_query:g}",
                "ask for less, or have the policy's max_epsilon_per_query raised",
            )
        if requested.delta > 0 and self.policy.delta_per_period == 0:
            raise UsageError(
                f"delta {requested.delta:g} requested but the policy allows no delta",
                "use pure ε-DP queries (delta = 0)",
            )

    def check(
        self, dataset: str, requested: PrivacyBudget, as_of: date | datetime | None = None
    ) -> PrivacyBudget:
        """Raise :class:`BudgetExhausted` unless ``requested`` fits; return the remaining budget."""
        self.validate_request(requested)
        moment = _as_datetime(as_of)
        remaining = self.remaining(dataset, moment)
        if not requested <= remaining:
            cap = self.cap(dataset, moment)
            spent = _floor_sub(cap, remaining)
            raise BudgetExhausted(
                f"privacy budget exhausted for dataset {_short(dataset)}: requested "
                f"{requested}, spent {spent}, remaining {remaining} of {cap} per "
                f"{self.policy.period}; renews: {self.renews(dataset, moment)}",
                "ask for a smaller epsilon, or wait until the budget renews",
            )
        return remaining

    def spend(
        self,
        dataset: str,
        requested: PrivacyBudget,
        query: str,
        actor: str,
        as_of: date | datetime | None = None,
    ) -> LedgerEntry:
        """Check and record a spend atomically (``BEGIN IMMEDIATE``). Spend *before* querying:
        a query that fails after the spend still counts (the data may have been touched)."""
        self.validate_request(requested)
        if not query or not actor:
            raise UsageError("a ledger spend needs a query description and an actor")
        self._carry_over(dataset)  # before the write lock: it may read the tables again
        moment = _as_datetime(as_of)
        label = period_label(moment, self.policy.period)
        at = moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        if self.conn.in_transaction:
            raise StateError(
                "the privacy ledger cannot spend inside an open transaction",
                "commit or roll back first so the spend is checked and recorded atomically",
            )
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StateError(
                f"the state database is busy; the privacy ledger could not lock it ({exc})",
                "retry when the other audiences run has finished",
            ) from exc
        try:
            self.check(dataset, requested, moment)
            values: dict[str, object] = {
                "dataset": dataset,
                "period": label,
                "epsilon": requested.epsilon,
                "delta": requested.delta,
                "query": query,
                "actor": actor,
                "at": at,
            }
            if self.scope is not None:
                values["scope"] = self.scope
            if self._capped:  # the cap this spend was judged under, for the spends after it
                cap = self.cap(dataset, moment)
                values |= {"cap_epsilon": cap.epsilon, "cap_delta": cap.delta}
            cursor = self.conn.execute(
                f"INSERT INTO dp_ledger ({', '.join(values)}) "
                f"VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()),
            )
            entry_id = int(cursor.lastrowid or 0)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return LedgerEntry(entry_id, dataset, label, requested, query, actor, at)


def _floor_sub(a: PrivacyBudget, b: PrivacyBudget) -> PrivacyBudget:
    """``a - b`` clamped at zero per component (remaining can't be negative)."""
    return PrivacyBudget(max(a.epsilon - b.epsilon, 0.0), max(a.delta - b.delta, 0.0))


def budget_policy(pack: Pack) -> BudgetPolicy:
    """The budget a policy pack sets (``budget:`` in the pack YAML)."""
    return BudgetPolicy(**pack.budget.model_dump(exclude={"build_summary_epsilon"}))


# -- the per-user ledger ---------------------------------------------------------------------

# Where the per-user ledger lives; None = the OS account's home. Tests set this in-process.
LEDGER_HOME: Path | None = None

_SHARED_SCHEMA = """
CREATE TABLE IF NOT EXISTS dp_ledger (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  scope TEXT NOT NULL,
  dataset TEXT NOT NULL,
  period TEXT NOT NULL,
  epsilon REAL NOT NULL,
  delta REAL NOT NULL DEFAULT 0,
  query TEXT NOT NULL,
  actor TEXT NOT NULL,
  at TEXT NOT NULL,
  cap_epsilon REAL,
  cap_delta REAL
);
CREATE INDEX IF NOT EXISTS dp_ledger_dataset ON dp_ledger(dataset, period);
CREATE INDEX IF NOT EXISTS dp_ledger_scope ON dp_ledger(scope, period);
-- a dataset id of a later format -> the id of the same rows in the first format
CREATE TABLE IF NOT EXISTS dp_dataset_links (
  dataset TEXT NOT NULL,
  predecessor TEXT NOT NULL,
  at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dp_dataset_links_dataset ON dp_dataset_links(dataset);
"""


def _account_home() -> Path:
    """The OS account's home from the password database (``$HOME`` is not consulted: a
    run with another ``HOME`` must not find a fresh ledger)."""
    try:
        import pwd

        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except (ImportError, KeyError):  # pragma: no cover - Windows, or a uid without an entry
        return Path.home()


def ledger_home() -> Path:
    """The folder of the per-user ledger."""
    if LEDGER_HOME is not None:
        return LEDGER_HOME
    return _account_home() / ".local" / "share" / "audiences" / "ledger"


def source_scope(config: ProjectConfig, *, with_events: bool = False) -> str:
    """The project's people: a digest of its contacts source's resolved file path, or of
    its database (file, or host, port, database and user) and contacts table.

    The events source is left out: a budget protects the people of the contacts, and a
    scope that followed the events let each project over the same contacts with an events
    file of its own (a one-row CSV) start a fresh period cap. ``with_events``: the scope as
    versions before this one computed it (contacts and events), whose spends still count.
    """
    sources: list[SourceConfig] = [config.sources.contacts]
    if with_events and config.sources.events is not None:
        sources.append(config.sources.events)
    if config.sources.contacts.is_database:
        from audiences.crm.databases import database_of

        scope = database_of(config.sources.contacts, config).scope()
        tables = [f"{s.db_schema or ''}.{s.table}" for s in sources]
        text = "\n".join([scope, *tables])
    else:
        text = "\n".join(str(config.path(s.file()).resolve()) for s in sources)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _connect_shared(home: Path) -> sqlite3.Connection:
    from audiences.core.state import ensure_private_dir

    path = home / "ledger.sqlite"
    try:
        ensure_private_dir(home)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        with contextlib.suppress(PermissionError):
            path.chmod(0o600)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.executescript(_SHARED_SCHEMA)
        _add_cap_columns(conn)
    except (OSError, sqlite3.DatabaseError) as exc:
        raise StateError(
            f"cannot open the privacy budget ledger {path} ({exc})",
            "check that the folder is writable by this account; never delete the ledger",
        ) from None
    return conn


def _add_cap_columns(conn: sqlite3.Connection) -> None:
    """Give a ledger made before caps were recorded its two cap columns (its spends keep
    none: they bound only by the current policy)."""
    if not _has_cap_columns(conn):
        conn.execute("ALTER TABLE dp_ledger ADD COLUMN cap_epsilon REAL")
        conn.execute("ALTER TABLE dp_ledger ADD COLUMN cap_delta REAL")


def _has_cap_columns(conn: sqlite3.Connection) -> bool:
    names = {row[1] for row in conn.execute("PRAGMA table_info(dp_ledger)").fetchall()}
    return {"cap_epsilon", "cap_delta"} <= names


def _import_legacy(conn: sqlite3.Connection, state_db: Path, scope: str) -> None:
    """Copy the spends an earlier version recorded in the project's state DB, once (a row
    already present, field for field, is not copied again: copies of a project don't
    count their history twice)."""
    if not state_db.exists():
        return
    try:
        legacy = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=30)
        try:
            rows = legacy.execute(
                "SELECT dataset, period, epsilon, delta, query, actor, at FROM dp_ledger"
            ).fetchall()
        finally:
            legacy.close()
    except sqlite3.Error:
        return  # no dp_ledger table (a fresh state DB): nothing to import
    for row in rows:
        conn.execute(
            "INSERT INTO dp_ledger (scope, dataset, period, epsilon, delta, query, actor, at) "
            "SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM dp_ledger WHERE "
            "dataset=? AND period=? AND epsilon=? AND delta=? AND query=? AND actor=? AND at=?)",
            (scope, *row, *row),
        )


def open_ledger(config: ProjectConfig, policy: BudgetPolicy) -> Ledger:
    """The project's ledger in the per-user store (close it, or use it as a context)."""
    scope = source_scope(config)
    earlier = source_scope(config, with_events=True)
    conn = _connect_shared(ledger_home())
    _import_legacy(conn, config.state_db, scope)
    formats = None
    if config.sources.contacts.is_database:
        from audiences.crm.sources import dataset_id_formats

        def formats() -> tuple[str, str]:
            return dataset_id_formats(config)

    return Ledger(
        conn,
        policy,
        scope=scope,
        earlier_scopes=(earlier,) if earlier != scope else (),
        formats=formats,
    )
