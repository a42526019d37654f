"""The wall clock every protective rule reads (docs/policy-rules.md, "What the gate
defends against").

Consent, HIPAA authorization validity and revocation, minors, do-not-contact, deceased
and suppression are judged at the moment data leaves: :func:`today` in UTC. No flag,
file or environment variable moves this clock; tests that need a fixed day replace
:func:`today` / :func:`now` in their own process (``monkeypatch.setattr``).
"""

from __future__ import annotations

import datetime as dt


def now() -> dt.datetime:
    """The current time, UTC."""
    return dt.datetime.now(dt.UTC)


def today() -> dt.date:
    """The current day, UTC: the day a release is judged on."""
    return now().date()


def release_day(as_of: dt.date | None, *, what: str = "a release") -> dt.date:
    """Today, the only day ``what`` may be judged on; a different ``as_of`` is refused
    (exit 2): a date moved into the future would turn today's minors into adults, one
    moved into the past would revive revoked and expired HIPAA authorizations."""
    from audiences.core.errors import UsageError

    day = today()
    if as_of is not None and as_of != day:
        raise UsageError(
            f"--as-of {as_of.isoformat()} refused for {what}: people are protected on the day "
            f"data leaves ({day.isoformat()} UTC)",
            "drop --as-of; use it with `audiences plan`, `preview` or `validate` to review "
            "a segment at another date",
        )
    return day
