"""One error base for the whole project.

Every error a user can cause is an :class:`AudiencesError` whose message reads
``what was wrong — how to fix it``. The CLI prints that one line (no traceback
unless ``--debug``) and exits with the error's ``exit_code``:

    0 ok · 1 error (bad input, platform failure) · 2 usage · 3 blocked by policy ·
    75 another run holds the lock

A broken invariant raises :class:`InternalError`, which says it is a bug.
Errors never carry raw PII or secrets: build messages from column names, counts,
digests and file positions only.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_BLOCKED = 3
EXIT_LOCKED = 75


class AudiencesError(Exception):
    """Base of every error the CLI turns into one line and an exit code."""

    exit_code: int = EXIT_ERROR

    def __init__(self, what: str, fix: str | None = None, *, where: str | None = None) -> None:
        self.what = what
        self.fix = fix
        self.where = where
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        return f"{text} — {self.fix}" if self.fix else text

    def to_dict(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "where": self.where,
            "exit_code": self.exit_code,
        }


class UsageError(AudiencesError):
    """Wrong command-line usage (bad option value, missing argument)."""

    exit_code = EXIT_USAGE


class ConfigError(AudiencesError):
    """audiences.toml, a policy pack or a destination is malformed."""


class SegmentError(AudiencesError):
    """A segment file does not parse or does not fit the config and data schema."""


class DataError(AudiencesError):
    """A source file is missing, unreadable, or its contents do not fit the declared schema."""


class StateError(AudiencesError):
    """The state database is missing, corrupt, locked, or from a newer version."""


class PolicyBlocked(AudiencesError):
    """The policy gate refused to create a release."""

    exit_code = EXIT_BLOCKED

    def __init__(
        self,
        what: str,
        fix: str | None = None,
        *,
        where: str | None = None,
        reasons: list[str] | None = None,
    ) -> None:
        self.reasons = list(reasons or [])
        super().__init__(what, fix, where=where)


class BudgetExhausted(AudiencesError):
    """A differentially private query would exceed the privacy budget."""


class ApprovalError(AudiencesError):
    """A segment is not approved, or its approval does not verify."""

    exit_code = EXIT_BLOCKED


class LockHeld(AudiencesError):
    """Another run holds the project lock."""

    exit_code = EXIT_LOCKED


class ConnectorError(AudiencesError):
    """A destination failed. ``transient`` errors may be retried; terminal ones may not."""

    def __init__(
        self,
        what: str,
        fix: str | None = None,
        *,
        where: str | None = None,
        transient: bool = False,
        code: str | int | None = None,
    ) -> None:
        self.transient = transient
        self.code = code
        super().__init__(what, fix, where=where)


class InternalError(AudiencesError):
    """A broken invariant: this is a bug in audiences, not in the user's input."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"internal error: {what}",
            "this is a bug in audiences; please report it with the output of --debug",
        )
