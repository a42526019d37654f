"""Who is acting: the name recorded in builds, approvals and audit entries."""

from __future__ import annotations

import getpass


def actor_name(by: str | None = None) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
