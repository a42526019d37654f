"""Issue #15 item 1: the day people are judged on is the day data leaves.

docs/policy-rules.md, "What the gate defends against": consent, authorization expiry
and revocation, minors, do-not-contact, deceased and suppression are evaluated on the
wall clock (``audiences.core.clock``); a release with another ``--as-of`` is refused
(exit 2); ``plan --as-of`` moves only the segment's own conditions.

The attacks run against the real CLI (in-process with CliRunner, and one real
subprocess on the real clock) on sample data dated today.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from conftest import adults, frozen_clock

from audiences.core import clock
from audiences.core.errors import UsageError

TODAY = datetime.now(UTC).date()
FUTURE = date(2040, 1, 1)


def years_before(day: date, years: int) -> date:
    return (
        day.replace(year=day.year - years)
        if (day.month, day.day) != (2, 29)
        else (date(day.year - years, 3, 1))
    )


@pytest.fixture
def project(make_project: Any) -> Any:
    """all-adults (age >= 18, to Meta) approved, on sample data dated today."""
    with frozen_clock(TODAY):
        p = make_project(rows=3000, segments=("all-adults",), as_of=TODAY)
        yield p


def error_line(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ------------------------------------------------------------------------- the attacks


def test_attack_sync_as_of_future_to_release_todays_minors_is_refused(project: Any) -> None:
    """Before: exit 0 and people who are minors today pushed to Meta. After: exit 2."""
    minors_today = project.contacts().filter(~adults(TODAY) & adults(FUTURE))
    assert minors_today.height > 0  # the attack has someone to release
    result = project.cli("sync", "all-adults", "--as-of", FUTURE.isoformat())
    assert result.exit_code == 2, result.stderr
    line = error_line(result)
    assert "--as-of 2040-01-01 refused for sync" in line and "drop --as-of" in line
    assert project.query("SELECT count(*) FROM syncs") == [(0,)]
    assert project.query("SELECT count(*) FROM builds") == [(0,)]


def test_attack_build_as_of_past_to_revive_revoked_authorizations_is_refused(
    project: Any,
) -> None:
    """Before: a build dated before revocations and expiries released them. After: exit 2."""
    past = TODAY - timedelta(days=400)
    result = project.cli("build", "all-adults", "--as-of", past.isoformat())
    assert result.exit_code == 2, result.stderr
    assert f"--as-of {past.isoformat()} refused for a build that releases" in error_line(result)
    assert project.query("SELECT count(*) FROM builds") == [(0,)]
    assert not list((project.root / ".audiences").glob("releases/**/*.csv"))


def test_attack_python_api_takes_no_other_day(project: Any) -> None:
    from audiences.pipeline.build import build
    from audiences.pipeline.sync import sync

    with pytest.raises(UsageError, match="refused for sync"):
        sync(project.config(), ["all-adults"], as_of=FUTURE)
    with pytest.raises(UsageError, match="refused for a build that releases"):
        build(project.config(), ["all-adults"], as_of=TODAY - timedelta(days=1))


def test_attack_gate_called_directly_with_another_day_is_refused() -> None:
    from policies.rules import FilterContext

    with pytest.raises(UsageError, match="refused for the policy gate"):
        FilterContext(None, pl.DataFrame(), FUTURE, None, None)  # type: ignore[arg-type]


def test_attack_real_subprocess_sync_with_future_date(project: Any) -> None:
    """The installed command, on the real clock: no flag, file or variable moves it."""
    proc = subprocess.run(
        [sys.executable, "-m", "audiences", "-p", str(project.root), "sync", "all-adults",
         "--as-of", FUTURE.isoformat()],
        capture_output=True, text=True, check=False, timeout=120,
        env={**__import__("os").environ, **project.tokens, "FAKETIME": "2040-01-01",
             "TZ": "Pacific/Kiritimati"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "refused for sync" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------- pass cases


def test_sync_on_today_without_as_of_releases_adults_only(project: Any) -> None:
    doc = project.cli_json("sync", "all-adults")
    assert doc["results"][0]["status"] == "ok"
    release = project.release("all-adults", "meta", TODAY)
    ids = project.contact_ids(release.members)
    born = project.contacts().filter(pl.col("contact_id").is_in(list(ids)))
    assert born.filter(~adults(TODAY)).height == 0


def test_build_with_as_of_today_is_accepted(project: Any) -> None:
    result = project.cli("build", "all-adults", "--as-of", TODAY.isoformat())
    assert result.exit_code == 0, result.stderr


def test_plan_as_of_future_moves_the_segment_not_the_minors_rule(project: Any) -> None:
    """plan --as-of 2040: the segment's `age >= 18` is read in 2040, the pack's minors
    rule today — nobody who is a minor today is in what a release would hold."""
    later = project.release("all-adults", "meta", FUTURE)
    ids = project.contact_ids(later.members)
    contacts = project.contacts().filter(pl.col("contact_id").is_in(list(ids)))
    assert contacts.height > 0
    assert contacts.filter(~adults(TODAY)).height == 0
    doc = project.cli_json("plan", "all-adults", "--as-of", FUTURE.isoformat())
    assert doc["plans"]


# ------------------------------------------------------------------------- edges on the clock


def test_minor_turning_18_tomorrow_is_released_only_from_tomorrow(project: Any) -> None:
    """A consented adult's birth date moved to 18 years before tomorrow."""
    release = project.release("all-adults", "meta", TODAY)
    (someone,) = sorted(project.contact_ids(release.members))[:1]
    contacts = project.contacts()
    birthday = years_before(TODAY + timedelta(days=1), 18)
    kind = contacts.schema["birth_date"]
    value = pl.lit(birthday).cast(kind) if kind == pl.Date else pl.lit(birthday.isoformat())
    project.write_contacts(
        contacts.with_columns(
            pl.when(pl.col("contact_id") == someone)
            .then(value)
            .otherwise(pl.col("birth_date"))
            .alias("birth_date")
        )
    )
    today_ids = project.contact_ids(project.release("all-adults", "meta", TODAY).members)
    assert someone not in today_ids
    # the segment moved to tomorrow, the minors rule still judges today
    planned = project.contact_ids(
        project.release("all-adults", "meta", TODAY + timedelta(days=1)).members
    )
    assert someone not in planned
    with frozen_clock(TODAY + timedelta(days=1)):
        tomorrow = project.release("all-adults", "meta", TODAY + timedelta(days=1))
    assert someone in project.contact_ids(tomorrow.members)


def _authorization(expires: date | None, revoked: date | None, day: date) -> bool:
    from audiences.core.config import ProjectConfig
    from policies.rules import FilterContext, valid_authorization
    from policies.suppression import SuppressionSet

    config = ProjectConfig.model_validate(
        {
            "sources": {"contacts": {"path": "c.csv"}},
            "identity": {"external_id": "id"},
            "consent": {
                "hipaa_authorization_date": "auth",
                "hipaa_authorization_expires": "exp",
                "hipaa_authorization_revoked": "rev",
            },
        }
    )
    frame = pl.DataFrame(
        {"auth": [date(2020, 1, 1)], "exp": [expires], "rev": [revoked]},
        schema={"auth": pl.Date, "exp": pl.Date, "rev": pl.Date},
    )
    with frozen_clock(day):
        ctx = FilterContext(config, frame, clock.today(), None, SuppressionSet({}, {}))  # type: ignore[arg-type]
        expr = valid_authorization(ctx)
    assert expr is not None
    return bool(frame.select(expr).item())


@pytest.mark.parametrize(
    ("expires", "revoked", "on", "valid"),
    [
        (date(2030, 6, 2), None, date(2030, 6, 1), True),  # expires tomorrow: valid today
        (date(2030, 6, 2), None, date(2030, 6, 2), False),  # the day it expires
        (None, date(2030, 6, 2), date(2030, 6, 1), True),  # revoked tomorrow: valid today
        (None, date(2030, 6, 2), date(2030, 6, 2), False),  # the day of the revocation
        (None, date(2030, 5, 1), date(2030, 6, 1), False),  # revoked last month
        (date(2030, 5, 1), None, date(2030, 6, 1), False),  # expired last month
        (None, None, date(2030, 6, 1), True),
    ],
)
def test_authorization_judged_on_the_clock(
    expires: date | None, revoked: date | None, on: date, valid: bool
) -> None:
    assert _authorization(expires, revoked, on) is valid


def test_clock_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKETIME", "2040-01-01")
    monkeypatch.setenv("AUDIENCES_AS_OF", "2040-01-01")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "2208988800")
    assert clock.today() == datetime.now(UTC).date()
