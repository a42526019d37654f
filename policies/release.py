"""The `Release`: the only thing a connector will upload, and only the gate makes one.

A `Release` holds hashed identifiers (never raw PII) — or, for a record-level file export, generalized k-anonymous attributes and no identifier at all — and the digests
that tie it to the segment definition, the policy pack and the verdicts, and an HMAC seal
made with a key drawn at random when this module is imported. Three locks keep
hand-made objects out:

* the constructor requires a module-private capability token (an ``InitVar``, so
  ``dataclasses.replace`` can't carry it over), and the class refuses subclasses;
* the gate seals every release: HMAC-SHA256 over its fields, a digest of every row of
  ``members`` and of ``excluded_keys``; :meth:`Release.verify` recomputes it, so an edited
  copy (``object.__setattr__``, in-place frame edits) no longer verifies;
* a release can't be pickled: its seal key lives in this process only.

Connectors call :func:`require_release` before touching anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import InitVar, dataclass, fields
from typing import Any

import polars as pl

from audiences.core.errors import InternalError

# Drawn once per process; never stored, logged or shown.
_SEAL_KEY = secrets.token_bytes(32)


class _Capability:
    """Proof that the caller is this module's :func:`_mint` (only the gate calls it)."""

    __slots__ = ()


_CAPABILITY = _Capability()

# Fields covered by the seal besides the frames (which are digested row by row).
_SEALED_FIELDS = (
    "build_id",
    "release_id",
    "segment",
    "segment_digest",
    "policy_digest",
    "verdict_digest",
    "destination",
    "kind",
    "account",
    "created_at",
    "opaque_name",
    "layouts",
    "k_diff",
    "hold_against",
    "holds",
    "purpose",
)


@dataclass(frozen=True, eq=False)
class Release:
    """One segment's membership cleared for one destination.

    ``members``: ``member_key`` (UInt64, salted person key, for state and diffs only — a
    connector never uploads it) and the hashed identifier columns of the destination's
    layout: ``meta`` columns for kind meta; ``google_ads`` columns plus the consent columns
    ``ad_user_data`` / ``ad_personalization`` (``GRANTED`` / ``DENIED`` / ``UNSPECIFIED``)
    for kind google_ads; for kind file every layout in ``layouts``, each column prefixed by
    its layout (``meta_EMAIL``, ``google_ads_hashed_email``, ...).

    Sync contract (see docs/policy-rules.md, "difference"):

    * ``k_diff``: incremental adds and removes sent to the platform must each reach this
      many people; smaller change sets are held back and accumulated.
    * ``hold_against``: set when this release differs from the previous version of the
      same audience by fewer than ``k_diff`` people in some direction (the pack chose
      ``on_small_change: hold``); ``holds`` is how many changes that withholds now.
    * ``excluded_keys``: member keys that this build's filter rules excluded (opt-outs,
      suppression lists, deceased, minors, missing or revoked authorization). Any of them
      already pushed must be removed at once, never held.
    * ``purpose``: ``release`` for a build's release; ``removal`` for a removal-only release
      (:func:`policies.gate.forced_removals`): its ``members`` are platform rows that must be
      removed now, whatever blocks the segment's adds. It is never added, never recorded.
    """

    build_id: str
    release_id: str
    segment: str
    segment_digest: str
    policy_digest: str
    verdict_digest: str
    destination: str
    kind: str
    account: str
    created_at: str
    opaque_name: str
    members: pl.DataFrame
    layouts: tuple[str, ...]
    k_diff: int
    hold_against: str | None
    holds: int
    excluded_keys: pl.Series
    purpose: str  # "release" | "removal" (removal-only: remove ``members``, never add)
    seal: str
    _capability: InitVar[object]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("Release can't be subclassed: only the policy gate makes releases")

    def __post_init__(self, _capability: object) -> None:
        if _capability is not _CAPABILITY or type(self) is not Release:
            raise InternalError("a Release can only be created by the policy gate")

    # A release is immutable: copies are the same object; it never leaves the process.
    def __copy__(self) -> Release:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Release:
        return self

    def __reduce__(self) -> Any:
        raise TypeError("a Release can't be pickled: it is only valid in the process that made it")

    @property
    def size(self) -> int:
        return self.members.height

    def verify(self) -> bool:
        """True when this is a genuine, unaltered gate-made release."""
        try:
            if type(self) is not Release:
                return False
            expected = _seal_of(self)
            return hmac.compare_digest(expected, self.seal)
        except Exception:  # a hand-made object may lack fields or hold the wrong types
            return False

    def describe(self) -> dict[str, Any]:
        """Figures and identifiers for reports and logs (no member data)."""
        return {
            "release_id": self.release_id,
            "build_id": self.build_id,
            "segment": self.segment,
            "destination": self.destination,
            "kind": self.kind,
            "account": self.account,
            "opaque_name": self.opaque_name,
            "members": self.members.height,
            "layouts": list(self.layouts),
            "k_diff": self.k_diff,
            "hold_against": self.hold_against,
            "holds": self.holds,
            "excluded_keys": self.excluded_keys.len(),
            "purpose": self.purpose,
            "segment_digest": self.segment_digest,
            "policy_digest": self.policy_digest,
            "verdict_digest": self.verdict_digest,
            "created_at": self.created_at,
        }


def frame_digest(frame: pl.DataFrame | pl.Series) -> str:
    """SHA-256 over column names, types and a hash of every row (process-stable)."""
    df = frame.to_frame() if isinstance(frame, pl.Series) else frame
    h = hashlib.sha256()
    h.update(json.dumps([[c, str(t)] for c, t in df.schema.items()]).encode())
    h.update(df.height.to_bytes(8, "little"))
    if df.height and df.width:
        rows = df.hash_rows(seed=11, seed_1=23, seed_2=37, seed_3=41)
        h.update(rows.to_numpy().tobytes())
    return h.hexdigest()


def _seal_of(release: Release) -> str:
    body = {name: getattr(release, name) for name in _SEALED_FIELDS}
    body["layouts"] = list(body["layouts"])
    body["members"] = frame_digest(release.members)
    body["excluded_keys"] = frame_digest(release.excluded_keys)
    message = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(_SEAL_KEY, message, hashlib.sha256).hexdigest()


def _mint(**values: Any) -> Release:
    """Create and seal a release. Called by :mod:`policies.gate` only."""
    names = {f.name for f in fields(Release)} - {"seal"}
    missing = names - set(values)
    if missing:
        raise InternalError(f"release is missing {sorted(missing)}")
    draft = Release(**values, seal="", _capability=_CAPABILITY)
    object.__setattr__(draft, "seal", _seal_of(draft))
    return draft


def require_release(obj: object) -> Release:
    """Return ``obj`` if it is a genuine gate-made release; raise otherwise.

    Connectors call this before uploading anything.
    """
    if type(obj) is not Release or not obj.verify():
        raise InternalError(
            f"refusing a {type(obj).__name__} that is not a sealed Release from the policy gate"
        )
    return obj


__all__ = ["Release", "frame_digest", "require_release"]
