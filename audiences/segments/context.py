"""What a segment is evaluated against: the reference day and the column names that matter."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from audiences.core.config import IdentityMapping


@dataclass(frozen=True)
class SegmentContext:
    """The build's reference day and the source columns the segment language relies on.

    ``birth_date`` is the contacts column ``age`` is derived from (None: no ``age``).
    Defaults match the sample CRM (docs/internals.md).
    """

    as_of: dt.date
    contact_id: str = "contact_id"
    birth_date: str | None = "birth_date"
    event_contact_id: str = "contact_id"
    event_type: str = "event_type"
    event_time: str = "event_time"
    # One meaning per value: conditions on identity-mapped text columns compare the
    # values the upload layer normalizes to (``identity``); ``case_insensitive`` columns
    # (contacts and events) compare without regard to case.
    identity: IdentityMapping | None = None
    case_insensitive: frozenset[str] = field(default_factory=frozenset)
    event_case_insensitive: frozenset[str] = field(default_factory=frozenset)

    def identity_field(self, column: str) -> str | None:
        """The identity field (``state``, ``gender``, ...) whose canonical value a
        condition on contacts ``column`` compares, if any."""
        from audiences.crm.identifiers import CANONICAL_FIELDS

        if self.identity is None:
            return None
        for name in CANONICAL_FIELDS:
            if getattr(self.identity, name) == column:
                return name
        return None

    def __post_init__(self) -> None:
        if isinstance(self.as_of, dt.datetime) or not isinstance(self.as_of, dt.date):
            raise TypeError("SegmentContext.as_of must be a datetime.date (a day, not a time)")
