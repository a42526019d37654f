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

Connectors call :func:`require_release` before touching anything, and send members only
as a :class:`ReleaseBatch`: rows minted here from a verified release, sealed with the same
key and tied to the release's seal (docs/platforms.md, "What a connector accepts").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import weakref
from dataclasses import InitVar, dataclass, fields
from typing import Any

import polars as pl

from audiences.core.errors import InternalError
from audiences.core.records import pick

# Drawn once per process; never stored, logged or shown.
_SEAL_KEY = secrets.token_bytes(32)

# The one account of every file destination of a project: whatever their folders, the
# marketer can read every export, so the difference check compares them all together.
# (Releases recorded before were keyed ``local:<folder>``: compared too, see
# :func:`policies.difference.earlier_releases`.)
FILE_ACCOUNT = "local"


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
        out = pick(self, "release_id build_id segment destination kind account opaque_name")
        out |= {"members": self.members.height, "layouts": list(self.layouts)}
        out |= pick(self, "k_diff hold_against holds")
        out["excluded_keys"] = self.excluded_keys.len()
        return out | pick(self, "purpose segment_digest policy_digest verdict_digest created_at")


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


# ---------------------------------------------------------------------------- batches
BATCH_OPS = ("add", "replace", "remove")
_BATCH_FIELDS = ("release_id", "release_seal", "destination", "kind", "account", "op")


@dataclass(frozen=True, eq=False)
class ReleaseBatch:
    """Rows of one sealed release, cleared to be sent to its destination as one ``op``.

    Minted only by :func:`release_batch` (add / replace: every row is a row of the
    release's ``members``) and :func:`removal_batch` (remove: every row is a row the
    platform was sent before, from the sync's confirmed snapshot). Sealed like a
    release, over its fields, the release's seal and a digest of every row, so an
    edited or hand-made batch fails :meth:`verify`; it can't be subclassed or pickled.
    """

    release_id: str
    release_seal: str
    destination: str
    kind: str
    account: str
    op: str
    rows: pl.DataFrame
    seal: str
    _capability: InitVar[object]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("ReleaseBatch can't be subclassed: only policies.release mints batches")

    def __post_init__(self, _capability: object) -> None:
        if _capability is not _CAPABILITY or type(self) is not ReleaseBatch:
            raise InternalError("a ReleaseBatch can only be minted from a sealed Release")

    def __copy__(self) -> ReleaseBatch:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> ReleaseBatch:
        return self

    def __reduce__(self) -> Any:
        raise TypeError("a ReleaseBatch can't be pickled: it is only valid in this process")

    @property
    def height(self) -> int:
        return self.rows.height

    def verify(self) -> bool:
        """True when this is an unaltered batch minted here."""
        try:
            return type(self) is ReleaseBatch and hmac.compare_digest(_batch_seal(self), self.seal)
        except Exception:  # a hand-made object may lack fields or hold the wrong types
            return False

    def of(self, release: Release) -> bool:
        """True when this batch was minted from ``release``."""
        return hmac.compare_digest(self.release_seal, release.seal)


def _batch_seal(batch: ReleaseBatch) -> str:
    body: dict[str, Any] = {name: getattr(batch, name) for name in _BATCH_FIELDS}
    body["rows"] = frame_digest(batch.rows)
    message = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(_SEAL_KEY, b"batch:" + message, hashlib.sha256).hexdigest()


def _rows_outside(rows: pl.DataFrame, source: pl.DataFrame) -> int | None:
    """How many of ``rows`` are not a row of ``source`` (on rows' columns); None: unlike.

    Exact: the source rows of the batch's member keys (a join on the UInt64 key) are
    compared with the batch on every column, so a 10,000-row batch of a 450,000-member
    release takes milliseconds.
    """
    if "member_key" not in rows.columns or not set(rows.columns) <= set(source.columns):
        return None
    try:
        keys = rows.select("member_key").unique()
        candidates = source.select(rows.columns).join(keys, on="member_key", how="semi")
        return rows.join(candidates, on=rows.columns, how="anti", nulls_equal=True).height
    except pl.exceptions.PolarsError:  # columns of other types: not rows of the source
        return None


@dataclass(frozen=True)
class _Verified:
    """What a release held when its seal was last verified (members cloned)."""

    seal: str
    release_id: str
    destination: str
    kind: str
    account: str
    members: pl.DataFrame


# Verifying a release digests every member (~0.4 s for 450,000): batches of one release
# are checked against the content it had when verified, so later edits to the release
# (which break its seal anyway) can't widen what a batch may hold.
_VERIFIED: weakref.WeakKeyDictionary[Release, _Verified] = weakref.WeakKeyDictionary()


def _verified(release: object) -> _Verified:
    if type(release) is Release:
        hit = _VERIFIED.get(release)
        if hit is not None and hmac.compare_digest(hit.seal, release.seal):
            return hit
    checked = require_release(release)
    hit = _Verified(
        checked.seal,
        checked.release_id,
        checked.destination,
        checked.kind,
        checked.account,
        checked.members.clone(),
    )
    _VERIFIED[checked] = hit
    return hit


def _mint_batch(
    release: object, op: str, rows: object, source: pl.DataFrame | None
) -> ReleaseBatch:
    checked = _verified(release)
    if op not in BATCH_OPS:
        raise InternalError(f"unknown batch op {op!r}; ops are {', '.join(BATCH_OPS)}")
    if not isinstance(rows, pl.DataFrame):
        raise InternalError(f"batch rows must be a polars DataFrame, not {type(rows).__name__}")
    outside = _rows_outside(rows, checked.members if source is None else source)
    if outside != 0:
        whence = "the release's members" if source is None else "the confirmed snapshot"
        count = "rows with other columns" if outside is None else f"{outside} rows"
        raise InternalError(
            f"refusing a {op} batch of release {checked.release_id}: {count} not in {whence}"
        )
    rows = rows.clone()  # the batch's own frame: edits to the caller's are not the batch's
    draft = ReleaseBatch(
        release_id=checked.release_id,
        release_seal=checked.seal,
        destination=checked.destination,
        kind=checked.kind,
        account=checked.account,
        op=op,
        rows=rows,
        seal="",
        _capability=_CAPABILITY,
    )
    object.__setattr__(draft, "seal", _batch_seal(draft))
    return draft


# ---------------------------------------------------------------------------- confirmed
@dataclass(frozen=True, eq=False)
class Confirmed:
    """What the platform was sent before for one audience (segment, destination), as the
    membership store read it after verifying its files' authenticators: the only
    ``confirmed`` that :func:`removal_batch` and :func:`release_batch` accept.

    Minted by :func:`confirmed_snapshot` only. The rows it vouches for are the copy made
    when it was minted (kept in this module), so later edits to :attr:`rows` or a swapped
    frame widen nothing; it can't be subclassed, copied into another object or pickled.
    """

    segment: str
    destination: str
    rows: pl.DataFrame
    _capability: InitVar[object]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("Confirmed can't be subclassed: only the membership store vouches")

    def __post_init__(self, _capability: object) -> None:
        if _capability is not _CAPABILITY or type(self) is not Confirmed:
            raise InternalError("a Confirmed snapshot is minted by confirmed_snapshot only")

    def __copy__(self) -> Confirmed:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Confirmed:
        return self

    def __reduce__(self) -> Any:
        raise TypeError("a Confirmed snapshot can't be pickled: it is only valid in this process")


# The rows each live Confirmed vouches for, as cloned when it was minted.
_VOUCHED: weakref.WeakKeyDictionary[Confirmed, pl.DataFrame] = weakref.WeakKeyDictionary()


def confirmed_snapshot(rows: pl.DataFrame, *, segment: str, destination: str) -> Confirmed:
    """Vouch for ``rows`` as what the platform holds or may hold for ``segment`` on
    ``destination``. Called by the membership pipeline only, with rows it read from
    verified state files (``audiences.pipeline.batches._sent_before``).

    This is no cryptographic barrier against code in this process: a Python caller can
    call it too. It keeps hand-made frames out of removal and replace batches; edited or
    swapped state files are refused before this, when the store verifies them.
    """
    if not isinstance(rows, pl.DataFrame):
        raise InternalError(f"a confirmed snapshot is a DataFrame, not {type(rows).__name__}")
    vouched = Confirmed(segment, destination, rows, _capability=_CAPABILITY)
    _VOUCHED[vouched] = rows.clone()
    return vouched


def _vouched(release: Release, op: str, confirmed: object) -> pl.DataFrame:
    """The rows ``confirmed`` vouches for, if it was minted here for ``release``'s audience."""
    checked = _verified(release)
    rows = _VOUCHED.get(confirmed) if type(confirmed) is Confirmed else None
    if rows is None or not isinstance(confirmed, Confirmed):
        raise InternalError(
            f"refusing a {op} batch of release {checked.release_id}: rows not in the confirmed "
            f"snapshot (a {type(confirmed).__name__} is not a snapshot the membership store "
            "verified and vouched for)"
        )
    theirs = (confirmed.segment, confirmed.destination)
    if theirs != (release.segment, checked.destination):
        raise InternalError(
            f"refusing a {op} batch of release {checked.release_id}: the confirmed snapshot is "
            f"{theirs[0]}->{theirs[1]}'s, not {release.segment}->{checked.destination}'s"
        )
    return rows


def release_batch(
    release: Release, op: str, rows: pl.DataFrame, *, confirmed: Confirmed | None = None
) -> ReleaseBatch:
    """A sealed add / replace batch: ``rows`` must be rows of ``release.members`` — or, for
    a replace that keeps people whose removal is held, rows of ``confirmed`` (what the
    platform was sent before, vouched for by the membership store)."""
    if op == "remove":
        raise InternalError("a removal batch is minted by removal_batch (from the snapshot)")
    if release.purpose == "removal":
        raise InternalError(
            f"release {release.release_id} only removes people: it mints no {op} batch"
        )
    if op == "replace" and confirmed is not None and isinstance(rows, pl.DataFrame):
        sent = _vouched(release, op, confirmed)
        members = _verified(release).members
        if set(rows.columns) <= set(members.columns) & set(sent.columns):
            either = pl.concat(
                [members.select(rows.columns), sent.select(rows.columns)],
                how="vertical_relaxed",
            )
            return _mint_batch(release, op, rows, either)
    return _mint_batch(release, op, rows, None)


def removal_batch(release: Release, rows: pl.DataFrame, *, confirmed: Confirmed) -> ReleaseBatch:
    """A sealed remove batch for ``release``'s audience: ``rows`` must be rows of
    ``confirmed`` (what the platform was sent before: the sync's verified snapshot plus
    rows of unconfirmed batches, vouched for by the membership store with
    :func:`confirmed_snapshot` for this audience), so people who left the release can
    still be removed — and nobody the platform was never sent.
    """
    return _mint_batch(release, "remove", rows, _vouched(release, "remove", confirmed))


def require_batch(obj: object, release: Release) -> ReleaseBatch:
    """Return ``obj`` if it is an unaltered batch minted from ``release``; raise otherwise."""
    if type(obj) is not ReleaseBatch or not obj.verify():
        raise InternalError(
            f"refusing a {type(obj).__name__}: connectors send only sealed ReleaseBatch rows"
        )
    if not obj.of(release):
        raise InternalError(
            f"refusing a batch of release {obj.release_id}: this audience was opened for "
            f"release {release.release_id}"
        )
    return obj


__all__ = [
    "BATCH_OPS",
    "Confirmed",
    "Release",
    "ReleaseBatch",
    "confirmed_snapshot",
    "frame_digest",
    "release_batch",
    "removal_batch",
    "require_batch",
    "require_release",
]
