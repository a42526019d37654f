"""Difference protection, after Google Ads Data Hub's difference checks.

Every release's membership is kept as a Parquet file of sorted, unique UInt64 salted
member keys (``state_dir/releases/<release_id>.parquet``, 0600), referenced from the
``releases`` table. A new release N to an account is compared with every earlier
release E to the same account on the actual people, not on counts:

* ``only_new = |N \\ E|`` and ``only_old = |E \\ N|``;
* if either is in ``(0, k_diff)`` the pair discloses those few people:
  - E is another audience (another segment, or another destination on the same account):
    **block**, naming E;
  - E is an earlier version of the same audience (same segment, same destination): the
    pack's ``on_small_change`` decides — ``block``, or ``hold``: the release is allowed
    and the sync holds back the small change until the accumulated adds and removes each
    reach ``k_diff`` (``Release.hold_against``, ``Release.holds``).

People this build's filter rules excluded (opt-outs, suppression, deceased, minors,
revoked authorization) must be removed from audiences already pushed at once; those
removals are exempt (``exempt_removals``) — they disclose only that the person left an
audience the platform already saw them in.

The releases compared are this state's and, through the pipeline
(``GateInput.shared_releases``), those other states with the same salt — copies of the
project — released to the account, kept per OS account outside the project
(audiences/compliance/custody.py): a copy's difference check sees the original's.

A **new project over the same CRM** (a new salt) keys the same people differently, so
its member keys never compare with the first project's. For ad accounts the releases of
other projects are compared through what the platform itself matches on (:func:`link_frame`:
64-bit prefixes of the SHA-256 of each person's e-mail, phone, external id, and name with
postal code, birth date or city and state), kept per OS account beside the member keys.
This release's people are translated into the keys of another project's audience — one
who shares a link with a person of it *is* that person, except that a name does not join
two people whose e-mails or phones tell them apart — on the kinds of link both projects
fill from the same data (:func:`translate`), and compared pairwise, always as another
audience (block, never hold), under the larger of the two ``k_diff``. People without a
compared link could be anyone: each difference is then a range, and the release is
blocked when that range reaches into 1 … k_diff − 1 (:func:`_compare_foreign`).

What the platform holds of an audience is its newest release *unless* a small change is
held back: then it still holds the earlier state. So each audience's confirmed snapshot
after its latest sync is kept too (``synced``) and compared like another audience.

Only **live** audiences count: for each audience (segment × destination) on the account
the newest release, since that is what the platform holds; superseded versions of other
audiences can no longer be targeted. The new release is compared with the previous version
of its own audience (the hold above) and with each other live audience (pairwise), and
then **as a whole** (:func:`composition`): a platform can intersect and subtract every
audience an account holds, so the union of the live audiences' members is grouped by
membership pattern (which audiences each person is in), and every pattern the change
touches must hold 0 or at least ``k_diff`` people *as the account would stand after the
sync* — adds and removes the sync holds back do not count as sent. Three audiences
P = NY+TX+one person, Q = NY+FL and R = TX+IL differ pairwise by hundreds, yet
P − Q − R is one person: the pattern "P only" holds 1, and P is blocked. Other projects'
audiences on the account join the patterns (:func:`_across_projects`): every project's
people become one set of labels through their links (:func:`unify`: connected
components over shared links, as the platform matches both uploads to one user), under
the largest ``k_diff``.

Both arrays are sorted, so counting the intersection is one ``np.searchsorted`` (which
follows sorted needles cheaply) and one comparison: ~25 ms for 1M vs 1M; the comparisons
run on a small thread pool (numpy releases the GIL). The patterns are one polars group-by
over a membership bitmask.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from audiences.core.errors import InternalError
from policies.rules import Destination, DifferenceParams, Rule, Verdict


@dataclass(frozen=True)
class EarlierRelease:
    release_id: str
    build_id: str
    segment: str
    destination: str
    account: str
    created_at: str
    members: int
    membership_path: Path
    # its people's link keys in custody (an ad account's release): the pattern check
    # across projects joins them with other projects' people (:func:`unify`)
    links_path: Path | None = None


@dataclass(frozen=True)
class ForeignRelease:
    """A live audience another project (another salt) released to the account: its
    release, and the file of its people's link keys (``member_key``, ``link``)."""

    earlier: EarlierRelease
    links_path: Path
    project: str
    k_diff: int = 0  # its project's difference rule: the larger of the two applies
    # what decides whom its project's CRM rules exclude (policies/gate.py,
    # ``exclusion_digest``): this build's exclusions are forced removals in it only when
    # both are the same ("" when unknown: never)
    exclusions: str = ""

    @property
    def space(self) -> str:
        """Its project's key space (the custody folder of its salt): one person has one
        member key within it."""
        return self.links_path.parent.name


@dataclass(frozen=True)
class PlatformView:
    """What an ad audience's next sync starts from (audiences/pipeline/batches.py,
    ``platform_view``): the people this state knows the platform holds, the people an
    interrupted run sent unconfirmed (settled to the release, never held), and whether
    the sync replaces the audience in full (everyone sent, nothing held)."""

    held: np.ndarray  # sorted member keys
    unsure: np.ndarray  # sorted member keys
    replace: bool = False


@dataclass(frozen=True)
class Comparison:
    earlier: EarlierRelease
    only_new: int
    only_old: int
    exempt_removals: int
    same_audience: bool
    previous_version: bool
    result: str  # pass | block | hold | error
    note: str = ""
    # another project's audience: people without a link of a kind both send (either way)
    unlinked_new: int = 0
    unlinked_old: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "unlinked_new": self.unlinked_new,
            "unlinked_old": self.unlinked_old,
            "release_id": self.earlier.release_id,
            "segment": self.earlier.segment,
            "destination": self.earlier.destination,
            "created_at": self.earlier.created_at,
            "members": self.earlier.members,
            "only_new": self.only_new,
            "only_old": self.only_old,
            "exempt_removals": self.exempt_removals,
            "same_audience": self.same_audience,
            "previous_version": self.previous_version,
            "result": self.result,
            "note": self.note,
        }


@dataclass(frozen=True)
class DifferenceResult:
    verdict: Verdict
    comparisons: tuple[Comparison, ...]
    hold_against: str | None
    holds: int


# ---------------------------------------------------------------------------------------
# Membership sets


def sorted_keys(keys: pl.Series | np.ndarray) -> np.ndarray:
    """Sorted unique UInt64 keys without nulls."""
    if isinstance(keys, pl.Series):
        keys = keys.drop_nulls().cast(pl.UInt64).to_numpy()
    arr = np.asarray(keys, dtype=np.uint64)
    if arr.size > 1 and not bool(np.all(arr[1:] > arr[:-1])):
        arr = np.sort(arr)  # radix-free sort + neighbour compare beats np.unique's hashing
        distinct = np.empty(arr.size, dtype=bool)
        distinct[0] = True
        np.not_equal(arr[1:], arr[:-1], out=distinct[1:])
        arr = arr[distinct]
    return arr


def write_membership(path: Path, keys: np.ndarray) -> None:
    pl.DataFrame({"member_key": pl.Series("member_key", keys, dtype=pl.UInt64)}).write_parquet(
        path, statistics=False
    )


def read_membership(path: Path) -> np.ndarray:
    frame = pl.read_parquet(path, columns=["member_key"])
    if frame.schema["member_key"] != pl.UInt64:
        raise InternalError(f"membership file {path.name} does not hold UInt64 member keys")
    return sorted_keys(frame.get_column("member_key").to_numpy())


def count_common(a: np.ndarray, b: np.ndarray) -> int:
    """|a ∩ b| for sorted unique uint64 arrays."""
    if a.size == 0 or b.size == 0:
        return 0
    if a.size > b.size:
        a, b = b, a
    idx = np.searchsorted(b, a)
    np.minimum(idx, b.size - 1, out=idx)
    return int(np.count_nonzero(b[idx] == a))


def compare_sets(
    new: np.ndarray, old: np.ndarray, exempt: np.ndarray | None = None
) -> tuple[int, int, int]:
    """(only_new, only_old, exempt_removals): exempt removals are not counted in only_old."""
    common = count_common(new, old)
    only_new = new.size - common
    only_old = old.size - common
    exempt_removals = count_common(exempt, old) if exempt is not None and exempt.size else 0
    # exempt keys are never in `new` (the filters removed them), so all of them are removals
    return only_new, only_old - exempt_removals, exempt_removals


# The kinds of link: what a platform matches a person on, per layout — one identifier, or
# several that match together (mixed into one key). Meta's external id is sent plain (the
# advertiser's own id, matched to earlier uploads) and Google's postal code too: hashed
# here. A layout sends a kind only when it carries all of its columns.
LINK_KINDS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (0, ("EMAIL",)),
    (0, ("hashed_email",)),
    (1, ("PHONE",)),
    (1, ("hashed_phone_number",)),
    (2, ("FN", "LN", "ZIP")),
    (2, ("hashed_first_name", "hashed_last_name", "postal_code")),
    (3, ("EXTERN_ID",)),
    # (4: name with full birth date — not a link: the Meta connector uploads the birth
    # year only, policies/sendable.py META_SENT, so Meta never matches on it)
    (5, ("FN", "LN", "CT", "ST")),
)
# E-mail and phone tell people apart: a name (with postal code, birth date, or city and
# state) links two people only when they do not both have e-mails or phones that differ
# — a father and son of one name at one address are two people, as the platform sees
# them through their own e-mails.
STRONG_KINDS = frozenset({0, 1})
WEAK_KINDS = frozenset({2, 4, 5})
_PLAIN = frozenset({"EXTERN_ID", "postal_code"})
# odd constants, one per position: (a, b) and (b, a) mix to different keys
_MIX = (
    0x9E3779B97F4A7C15,
    0xC2B2AE3D27D4EB4F,
    0x165667B19E3779F9,
    0xD6E8FEB86659FD93,
    0xFF51AFD7ED558CCD,
)
_LINK_SCHEMA = {"member_key": pl.UInt64, "kind": pl.UInt8, "link": pl.UInt64}


def _prefix(col: str | pl.Expr) -> pl.Expr:
    """The first 64 bits of a SHA-256 hex column (null when null or not hex)."""
    expr = pl.col(col) if isinstance(col, str) else col
    return expr.str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64, strict=False)


def link_frame(members: pl.DataFrame) -> pl.DataFrame:
    """``(member_key, kind, link)``: one row per kind of link (:data:`LINK_KINDS`) each of
    a release's members has — ``link`` the first 64 bits of the SHA-256 the platform
    receives, several columns mixed into one (wrapping products and xor). A kind with a
    null column gives no row; members with no kind have none."""
    kinds = [(kind, cols) for kind, cols in LINK_KINDS if set(cols) <= set(members.columns)]
    if not kinds:
        return pl.DataFrame(schema=_LINK_SCHEMA)
    needed = sorted({c for _, cols in kinds for c in cols})
    # each column parsed once (64-bit prefixes), then the kinds are integer arithmetic
    parsed = members.lazy().select(
        pl.col("member_key").cast(pl.UInt64), *(_parsed(members, c) for c in needed)
    )
    parts = []
    for kind, cols in kinds:
        mixed = pl.col(cols[0]) if len(cols) == 1 else _mix(cols)
        parts.append(
            parsed.select(
                "member_key", pl.lit(kind, dtype=pl.UInt8).alias("kind"), mixed.alias("link")
            )
        )
    return pl.concat(parts).drop_nulls().collect()  # duplicates are harmless: see translate


def _mix(cols: tuple[str, ...]) -> pl.Expr:
    out: pl.Expr | None = None
    for col, m in zip(cols, _MIX, strict=False):
        term = pl.col(col) * pl.lit(m, dtype=pl.UInt64)
        out = term if out is None else out.xor(term)
    assert out is not None
    return out


def _parsed(members: pl.DataFrame, col: str) -> pl.Expr:
    """A column as 64 bits: the prefix of its SHA-256 hex, or for a plain column the
    prefix of the SHA-256 of its text (over its distinct values when they are few)."""
    from audiences.crm.identifiers import sha256_hex

    if col not in _PLAIN:
        return _prefix(col).alias(col)
    text = pl.col(col).cast(pl.String)
    if col == "postal_code":  # few distinct values: hash those, then look them up
        codes = members.get_column(col).cast(pl.String).drop_nulls().unique()
        hashed = pl.DataFrame({col: codes}).select(_prefix(sha256_hex(pl.col(col))))
        return text.replace_strict(
            codes, hashed.to_series(), default=None, return_dtype=pl.UInt64
        ).alias(col)
    return _prefix(sha256_hex(text)).alias(col)


@dataclass(frozen=True)
class Linked:
    """Two releases of different projects, on the kinds of link both carry, in the
    foreign audience's keys (:func:`translate`)."""

    new: np.ndarray  # this release's people with a shared-kind link (mapped)
    old: np.ndarray  # the foreign audience's people with a shared-kind link
    gone: np.ndarray  # of ``old``: people this build's filters excluded (forced removals)
    new_people: int  # this release's people with a shared-kind link (before mapping)
    new_any: int  # this release's people with a link of any kind
    old_any: int  # the foreign audience's people with a link of any kind


def translate(
    new_links: pl.DataFrame,
    foreign_links: pl.DataFrame,
    exempt_links: pl.DataFrame | None = None,
    matched: Match | None = None,
) -> Linked:
    """Compare on the kinds of link both carry (a release without e-mails is not compared
    on them): one of this release's people who shares a link with a person of the foreign
    audience *is* that person (several who share one are one, as the platform matches
    them to one user); the others keep their own key (another project's salted key: a
    different 64-bit space, so they stay apart). ``exempt_links``: the people this
    build's filters excluded — those of the foreign audience are forced removals there.
    ``matched``: the two projects' people matched already (:func:`match`, over frames
    holding these), so that several audiences of one project cost one join."""
    exempt = exempt_links if exempt_links is not None else new_links.clear()
    if matched is None:
        matched = match(pl.concat([new_links, exempt]), foreign_links)
    kinds = set(new_links.get_column("kind").unique()) & set(
        foreign_links.get_column("kind").unique()
    )
    kinds -= matched.bad
    common = pl.col("kind").is_in(sorted(kinds))
    ours, theirs = new_links.filter(common), foreign_links.filter(common)
    ours_keys = ours.get_column("member_key").unique()
    theirs_keys = theirs.get_column("member_key").unique()
    pairs = matched.pairs.filter(
        (pl.col("mask") & _bits(kinds) != 0) & pl.col("theirs").is_in(theirs_keys.implode())
    )
    mapped = (
        pairs.filter(pl.col("member_key").is_in(ours_keys.implode()))
        .group_by("member_key")
        .agg(pl.col("theirs").min())
    )
    new = sorted_keys(
        ours_keys.to_frame()
        .join(mapped, on="member_key", how="left")
        .select(pl.coalesce("theirs", "member_key"))
        .to_series()
    )
    gone = _EMPTY
    if exempt.height:
        gone_keys = exempt.filter(common).get_column("member_key").unique()
        gone = sorted_keys(
            pairs.filter(pl.col("member_key").is_in(gone_keys.implode())).get_column("theirs")
        )
    return Linked(
        new=new,
        old=sorted_keys(theirs_keys),
        gone=np.setdiff1d(gone, new, assume_unique=True),  # a person still in is not gone
        new_people=ours_keys.len(),
        new_any=new_links.get_column("member_key").n_unique(),
        old_any=foreign_links.get_column("member_key").n_unique(),
    )


# a kind is mapped differently in the two projects when, among the people the other kinds
# link, at least this many have it on both sides and fewer than half of them agree on it
_EVIDENCE, _AGREEMENT = 10, 0.5


@dataclass(frozen=True)
class Match:
    """Two projects' people matched through their links (:func:`match`)."""

    pairs: pl.DataFrame  # (member_key, theirs, mask): each pair once, the kinds linking it
    bad: frozenset[int]  # kinds the two projects fill differently (:func:`_inconsistent`)


def _bits(kinds: set[int] | frozenset[int]) -> pl.Expr:
    return pl.lit(sum(1 << k for k in kinds), dtype=pl.UInt32)


def _bit(kind: pl.Expr) -> pl.Expr:
    """A kind of link as its bit (kinds are small: :data:`LINK_KINDS`)."""
    return kind.replace_strict({k: 1 << k for k in range(32)}, return_dtype=pl.UInt32)


def match(ours: pl.DataFrame, theirs: pl.DataFrame) -> Match:
    """Who is whom between two projects: every pair of people who share a link of any kind
    — one join on (kind, link) — except a name kind between two people who both have
    e-mails or phones (:data:`STRONG_KINDS`) and share none of them; each pair once, with
    the kinds that link it as a bitmask. Computed once per pair of projects, whatever the
    number of their audiences (filter ``pairs`` by the people and kinds compared)."""
    strong, weak = _bits(STRONG_KINDS), _bits(WEAK_KINDS)
    mask, mine, their = pl.col("mask"), pl.col("member_key_has"), pl.col("theirs_has")
    # a name link between two people whose e-mails or phones tell them apart: vetoed
    vetoed = ((mask & strong) == 0) & ((mine & strong) != 0) & ((their & strong) != 0)
    pairs = (
        ours.lazy()
        .join(theirs.lazy().rename({"member_key": "theirs"}), on=["kind", "link"], how="inner")
        .group_by("member_key", "theirs")
        .agg(_bit(pl.col("kind")).bitwise_or().alias("mask"))
        .join(_kinds_of(ours, "member_key"), on="member_key", how="left")
        .join(_kinds_of(theirs, "theirs"), on="theirs", how="left")
        .with_columns(pl.when(vetoed).then(mask & ~weak).otherwise(mask).alias("mask"))
        .filter(mask != 0)
        .collect()
    )
    both = set(ours.get_column("kind").unique()) & set(theirs.get_column("kind").unique())
    bad = frozenset(_inconsistent(pairs, both))
    return Match(pairs.select("member_key", "theirs", "mask"), bad)


def _kinds_of(frame: pl.DataFrame, key: str) -> pl.LazyFrame:
    """Each person's kinds of link, as a bitmask (``<key>_has``)."""
    return (
        frame.lazy()
        .select(pl.col("member_key").alias(key), "kind")
        .group_by(key)
        .agg(_bit(pl.col("kind")).bitwise_or().alias(key + "_has"))
    )


def _inconsistent(pairs: pl.DataFrame, kinds: set[int]) -> set[int]:
    """The kinds the two projects do not fill from the same data: an external id mapped to
    another column, say — a decoy that links nobody, so that everyone looks different.
    Such a kind is left out, and the people only it linked cannot be compared (their
    difference widens into a range: :func:`_compare_foreign`). Judged for every kind at
    once over the matched pairs (with each side's kinds: :func:`match`): among the pairs
    the other kinds link, those where both people have the kind, and those it links too."""
    if not kinds or pairs.height < _EVIDENCE:
        return set()
    mask, mine, their = pl.col("mask"), pl.col("member_key_has"), pl.col("theirs_has")
    counts = []
    for kind in sorted(kinds):
        bit = pl.lit(1 << kind, dtype=pl.UInt32)
        linked = (mask & _bits(set(kinds) - {kind})) != 0
        have = linked & ((mine & bit) != 0) & ((their & bit) != 0)
        counts += [
            linked.sum().alias(f"l{kind}"),
            have.sum().alias(f"h{kind}"),
            (have & ((mask & bit) != 0)).sum().alias(f"a{kind}"),
        ]
    row = pairs.select(counts).row(0, named=True)
    return {
        kind
        for kind in kinds
        if row[f"l{kind}"] >= _EVIDENCE
        and row[f"h{kind}"] >= _EVIDENCE
        and row[f"a{kind}"] < _AGREEMENT * row[f"h{kind}"]
    }


def read_links(path: Path) -> pl.DataFrame:
    frame = pl.read_parquet(path, columns=list(_LINK_SCHEMA))
    if frame.schema != pl.Schema(_LINK_SCHEMA):
        raise InternalError(f"link file {path.name} does not hold member keys, kinds and links")
    return frame


# ---------------------------------------------------------------------------------------
# Earlier releases


def earlier_releases(
    conn: sqlite3.Connection, account: str, state_dir: Path
) -> list[EarlierRelease]:
    """Every recorded release to ``account`` (any destination name), oldest first. For the
    file account (``local``) also the releases recorded per folder (``local:<folder>``)
    before every file destination of a project was one account."""
    legacy = "local:%" if account == "local" else ""
    rows = conn.execute(
        "SELECT release_id, build_id, segment, destination, account, created_at, members, "
        "membership_path FROM releases WHERE account = ? OR account LIKE ? "
        "ORDER BY created_at, release_id",
        (account, legacy),
    ).fetchall()
    out = []
    for row in rows:
        path = Path(row[7])
        out.append(
            EarlierRelease(
                release_id=row[0],
                build_id=row[1],
                segment=row[2],
                destination=row[3],
                account=row[4],
                created_at=row[5],
                members=int(row[6]),
                membership_path=path if path.is_absolute() else state_dir / path,
            )
        )
    return out


def merged(own: Sequence[EarlierRelease], shared: Sequence[EarlierRelease]) -> list[EarlierRelease]:
    """This state's releases and those other states with the same salt (copies of the
    project) released to the account, each once, oldest first."""
    links = {e.release_id: e.links_path for e in shared if e.links_path is not None}
    known = {e.release_id for e in own}
    both = [
        *(replace(e, links_path=e.links_path or links.get(e.release_id)) for e in own),
        *(e for e in shared if e.release_id not in known),
    ]
    return sorted(both, key=lambda e: (e.created_at, e.release_id))


def live_audiences(
    earlier: Sequence[EarlierRelease], segment: str, destination: str
) -> tuple[EarlierRelease | None, list[EarlierRelease]]:
    """(the previous version of this audience, the newest release of every other audience
    of the account): what the platform holds before this release."""
    newest: dict[tuple[str, str], EarlierRelease] = {}
    for e in earlier:  # oldest first: later ones replace earlier versions
        newest[(e.segment, e.destination)] = e
    previous = newest.pop((segment, destination), None)
    return previous, list(newest.values())


def check(
    rule: Rule,
    dest: Destination,
    segment: str,
    new: np.ndarray,
    earlier: Sequence[EarlierRelease],
    exempt: np.ndarray | None = None,
    *,
    workers: int | None = None,
    foreign: Sequence[ForeignRelease] = (),
    new_links: Callable[[], tuple[pl.DataFrame, pl.DataFrame]] | None = None,
    synced: Sequence[EarlierRelease] = (),
    held_now: Callable[[], PlatformView] | None = None,
    exclusions: str = "",
) -> DifferenceResult:
    """Compare ``new`` (sorted unique keys) with the live audiences of the account: the
    previous version of this audience (hold), each other audience (pairwise), and all of
    them together (:func:`composition`); then, pairwise through their people's links
    (``new_links()``: this release's :func:`link_frame`, and that of the people its
    filters excluded), the live audiences of other projects on the account (``foreign``).

    ``held_now()``: for an ad audience, where its next sync starts from
    (:class:`PlatformView`) — the patterns judge what that sync sends (adds held back over
    several nights, an interrupted run's unsure rows, a full replace), onto what the
    platform holds (the latest synced copy of any state of this project, else the view)."""
    p: DifferenceParams = rule.params  # type: ignore[assignment]
    previous, others = live_audiences(earlier, segment, dest.name)
    live = [*others, *([previous] if previous is not None else [])]
    memberships = _read_memberships(live, workers)
    comparisons = tuple(
        _compare(p, e, segment, dest, new, memberships[e.release_id], exempt, previous)
        for e in live
    )
    # what the platform holds of the other audiences after their latest sync: while small
    # changes are held back it is not their newest release (``synced``)
    held = [e for e in synced if (e.segment, e.destination) != (segment, dest.name)]
    on_platform = _read_memberships(held, workers)
    comparisons += tuple(
        _compare(p, e, segment, dest, new, on_platform[e.release_id], exempt, None)
        for e in held
        if on_platform[e.release_id] is None
        or not _same(on_platform[e.release_id], memberships, live, e)
    )
    mine = next((e for e in synced if (e.segment, e.destination) == (segment, dest.name)), None)
    ctx = None
    if foreign:
        if new_links is None:
            raise InternalError("other projects' audiences to compare, but no link keys")
        # this project's audiences whose people the patterns join (their link files): only
        # when the patterns can run at all
        own = [*live, *held, *([mine] if mine is not None else [])]
        ctx = _Links(new_links, own if new.size >= p.k_diff else [], foreign)
        matchable_only = dest.kind != "meta"  # Google matches on nothing but these links
        platform = _platform_copies(foreign)
        comparisons += tuple(
            _compare_foreign(
                p, f, ctx, int(new.size), matchable_only, _forced_there(f, exclusions, platform)
            )
            for f in foreign
        )
    prev = next((c for c in comparisons if c.previous_version), None)
    hold_against = prev.earlier.release_id if prev is not None and prev.result == "hold" else None
    holds = 0
    if hold_against is not None and prev is not None:
        holds = sum(x for x in (prev.only_new, prev.only_old) if 0 < x < p.k_diff)
    mix = None
    readable = {rid: keys for rid, keys in memberships.items() if keys is not None}
    theirs = [f for f in foreign if not f.earlier.release_id.startswith("synced:")]
    # Patterns need other audiences, and an audience too small to be released at all is
    # judged by min-size alone: a pattern check on it would answer "is this one person in
    # the segment?" through pass / fail even in the blocked build's report.
    if (others or theirs) and new.size >= p.k_diff and len(readable) == len(memberships):
        now = _read_memberships([mine], workers)[mine.release_id] if mine is not None else None
        if mine is not None and now is None:
            comparisons += (Comparison(mine, 0, 0, 0, True, False, "error", _UNREAD_SYNCED),)
        else:
            view = held_now() if held_now is not None else None
            if view is None and now is not None:
                view = PlatformView(now, _EMPTY)
            if view is not None:  # an ad audience: what its next sync sends, onto the platform
                before = now if now is not None else view.held
                after = _after_sync(before, view, new, exempt, p.k_diff)
            else:  # files: written whole at the build
                before = readable[previous.release_id] if previous is not None else _EMPTY
                after = _as_synced(before, new, exempt, p.k_diff if hold_against else 0)
            # each other audience as its newest release and, while its small changes are
            # held back, as the platform holds it now (every mix of the two is covered:
            # patterns over both versions refine the patterns over any one of them)
            named = [(f"{e.segment} → {e.destination}", readable[e.release_id]) for e in others]
            named += [
                (f"{e.segment} → {e.destination} (as the platform holds it)", keys)
                for e in held
                if (keys := on_platform[e.release_id]) is not None
                and not _same(keys, memberships, live, e)
            ]
            if theirs and ctx is not None:
                mix, unread = _across_projects(
                    p, before, after, named, exempt, ctx, list(foreign), exclusions
                )
                comparisons += unread
            else:
                mix = composition(before, after, named, p.k_diff, exempt)
    blocks = [c for c in comparisons if c.result in ("block", "error")]
    evidence = {
        "members": int(new.size),
        "k_diff": p.k_diff,
        "earlier_releases_compared": len(comparisons),
        "live_audiences": len(others) + 1 + len(theirs),
        "collisions": len(blocks),
        "held_comparisons": int(hold_against is not None),
        "holds": holds,
        "exempt_removals": prev.exempt_removals if prev is not None else 0,
        "other_projects_audiences_compared": len(foreign),
        "membership_patterns": mix.patterns if mix is not None else 0,
        "small_patterns": len(mix.small) if mix is not None else 0,
        "other_projects_audiences_in_patterns": mix.other_projects if mix is not None else 0,
        "audiences_in_patterns_without_links": mix.without_links if mix is not None else 0,
    }
    detail, public = _detail(blocks, mix, p, dest, hold_against, holds, len(comparisons))
    verdict = Verdict(
        id=rule.id,
        kind=rule.kind,
        severity=rule.severity,
        passed=not blocks and (mix is None or mix.passed),
        evidence=evidence,
        rationale=rule.rationale,
        source=rule.source,
        destination=dest.name,
        detail=detail,
        public_detail=public,
        checks=tuple(c.to_dict() for c in comparisons),
    )
    return DifferenceResult(verdict, comparisons, hold_against, holds)


_EMPTY = np.zeros(0, dtype=np.uint64)


def _same(
    keys: np.ndarray | None,
    memberships: dict[str, np.ndarray | None],
    live: Sequence[EarlierRelease],
    synced: EarlierRelease,
) -> bool:
    """Whether the platform holds exactly the audience's newest release (nothing held):
    then the synced copy adds no comparison."""
    for e in live:
        if (e.segment, e.destination) == (synced.segment, synced.destination):
            newest = memberships.get(e.release_id)
            return keys is not None and newest is not None and np.array_equal(keys, newest)
    return False


def _as_synced(
    before: np.ndarray, new: np.ndarray, exempt: np.ndarray | None, k: int
) -> np.ndarray:
    """The audience as the platform will hold it after the sync: with ``k`` > 0 (a hold),
    an add set or a removal set smaller than ``k`` stays back; exempt removals always go."""
    if k == 0:
        return new
    adds = np.setdiff1d(new, before, assume_unique=True)
    gone = np.setdiff1d(before, new, assume_unique=True)
    if exempt is not None and exempt.size:
        gone = np.setdiff1d(gone, exempt, assume_unique=True)
    kept = np.intersect1d(before, new, assume_unique=True)
    parts = [kept]
    if adds.size >= k:
        parts.append(adds)
    if 0 < gone.size < k:
        parts.append(gone)
    return sorted_keys(np.concatenate(parts))


def _after_sync(
    platform: np.ndarray, view: PlatformView, new: np.ndarray, exempt: np.ndarray | None, k: int
) -> np.ndarray:
    """The audience on the platform after its next sync (audiences/pipeline/sync.py,
    ``diff``): from ``view`` the sync sends the adds if there are at least ``k`` of them,
    the removals not in ``exempt`` if at least ``k`` (``exempt`` ones always), and the
    unsure rows settled to the release; a replace sends the release whole. ``platform``:
    what the platform holds now (a later sync by a copy of the project may have changed it
    since ``view.held``)."""
    if view.replace:
        return new
    unsure = view.unsure
    adds = np.setdiff1d(
        np.setdiff1d(new, view.held, assume_unique=True), unsure, assume_unique=True
    )
    if 0 < adds.size < k:
        adds = _EMPTY
    gone = np.setdiff1d(
        np.setdiff1d(view.held, new, assume_unique=True), unsure, assume_unique=True
    )
    forced = np.intersect1d(gone, exempt, assume_unique=True) if exempt is not None else _EMPTY
    if 0 < gone.size - forced.size < k:
        gone = forced
    adds = np.union1d(adds, np.intersect1d(unsure, new, assume_unique=True))
    gone = np.union1d(gone, np.setdiff1d(unsure, new, assume_unique=True))
    return np.setdiff1d(np.union1d(platform, adds), gone, assume_unique=True)


def _read_memberships(
    live: Sequence[EarlierRelease], workers: int | None
) -> dict[str, np.ndarray | None]:
    """Each live release's members (None when the file is missing or unreadable)."""

    def one(e: EarlierRelease) -> np.ndarray | None:
        try:
            return read_membership(e.membership_path)
        except (OSError, pl.exceptions.PolarsError, InternalError):
            return None

    n_workers = workers or min(4, os.cpu_count() or 1)
    if len(live) > 1 and n_workers > 1:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            found = list(pool.map(one, live))
    else:
        found = [one(e) for e in live]
    return {e.release_id: keys for e, keys in zip(live, found, strict=True)}


def _compare(
    p: DifferenceParams,
    e: EarlierRelease,
    segment: str,
    dest: Destination,
    new: np.ndarray,
    old: np.ndarray | None,
    exempt: np.ndarray | None,
    previous: EarlierRelease | None,
) -> Comparison:
    """One live audience against the new release."""
    same_audience = e.segment == segment and e.destination == dest.name
    is_previous = previous is not None and e.release_id == previous.release_id
    if old is None:
        return Comparison(
            e, 0, 0, 0, same_audience, is_previous, "error", "membership file unreadable"
        )
    only_new, only_old, exempt_n = compare_sets(new, old, exempt)
    small = 0 < only_new < p.k_diff or 0 < only_old < p.k_diff
    if not small:
        result = "pass"
    elif same_audience and p.on_small_change == "hold":
        result = "hold"
    else:
        result = "block"
    return Comparison(e, only_new, only_old, exempt_n, same_audience, is_previous, result)


def _compare_foreign(
    p: DifferenceParams,
    f: ForeignRelease,
    ctx: _Links,
    people: int,
    matchable_only: bool,
    forced: Callable[[np.ndarray], np.ndarray] = lambda gone: gone,
) -> Comparison:
    """Another project's live audience against the new release, through the links: always
    another audience, under the larger of the two projects' ``k_diff``. People without a
    link of a compared kind can be anyone: each difference is known only to lie in
    ``[linked, linked + unlinked]``, and the release is blocked when that range reaches
    into 1 … k_diff − 1 (padding an audience with people who cannot be compared never
    makes it pass). On Google, whose matching uses nothing but these identifiers, people
    with no link at all cannot be matched and do not count."""
    theirs = ctx.theirs(f)
    if theirs is None:
        return Comparison(f.earlier, 0, 0, 0, False, False, "error", "link file unreadable")
    linked = translate(ctx.links, theirs, ctx.exempt, ctx.match(f.space))
    k_diff = max(p.k_diff, f.k_diff)  # the stricter project's rule protects both
    gone = forced(linked.gone)  # (:func:`_forced_there`)
    only_new, only_old, _ = compare_sets(linked.new, linked.old, gone)
    exempt_n = count_common(gone, linked.old)
    if matchable_only:
        unlinked_new = linked.new_any - linked.new_people
        unlinked_old = linked.old_any - linked.old.size
    else:
        unlinked_new = people - linked.new_people
        unlinked_old = f.earlier.members - linked.old.size
    unlinked_new, unlinked_old = max(unlinked_new, 0), max(unlinked_old, 0)
    small = any(
        d <= k_diff - 1 and d + u >= 1
        for d, u in ((only_new, unlinked_new), (only_old, unlinked_old))
    )
    note = (
        f"another project ({f.project}): compared through the hashed identifiers both send "
        "(people without one, unlinked_new and unlinked_old, could be either way); "
        f"k_diff {k_diff}, the larger of the two"
    )
    result = "block" if small else "pass"
    return Comparison(
        f.earlier, only_new, only_old, exempt_n, False, False, result, note,
        unlinked_new, unlinked_old,
    )  # fmt: skip


def _detail(
    blocks: list[Comparison],
    mix: Composition | None,
    p: DifferenceParams,
    dest: Destination,
    hold_against: str | None,
    holds: int,
    compared: int,
) -> tuple[str, str | None]:
    """The verdict's detail (exact figures, for the report) and public detail."""
    if blocks:
        return _collision_detail(blocks, p)
    if mix is not None and not mix.passed:
        (audiences, people), *more = mix.small
        also = f" (and {len(more)} more such group(s))" if more else ""
        detail = (
            f"together with the account's other live audiences this release leaves {people} "
            f"people who are in exactly: {', '.join(audiences)}{also}; "
            f"intersecting and subtracting audiences would single them out (fewer than "
            f"{mix.k_diff})"
        )
        public = (
            "together with the account's other live audiences this release leaves a group "
            f"of between 1 and {mix.k_diff - 1} people that a combination of audiences would "
            "single out — change the segment so it overlaps the others less narrowly "
            "(exact figures are in the compliance report)"
        )
        return detail, public
    if hold_against is not None:
        return (
            f"small change against the previous version {hold_against}: the sync holds back "
            f"{holds} change(s) until adds and removes each reach {p.k_diff}"
        ), None
    return f"checked against {compared} live audience(s) of account {dest.account}", None


def _collision_detail(blocks: list[Comparison], p: DifferenceParams) -> tuple[str, str | None]:
    """The verdict's detail (exact figures) and public detail (none for an unreadable
    release) for the first colliding release."""
    first = blocks[0]
    e = first.earlier
    public: str | None = None
    if first.result == "error":
        detail = (
            f"cannot check against release {e.release_id} ({e.segment}, {e.created_at[:10]}): "
            "its membership file is missing or unreadable — restore .audiences/releases from a backup"
        )
        if first.note in ("link file unreadable", _UNREAD):
            what = "link file" if first.note == "link file unreadable" else "member or link keys"
            detail = (
                f"cannot check against release {e.release_id} ({e.segment}, "
                f"{e.created_at[:10]}) of another project on the account: its {what} in the "
                "custody store is missing or unreadable — restore the custody folder from a backup"
            )
        elif first.note == _UNREAD_SYNCED:
            detail = (
                "cannot tell what the platform holds of this audience: its synced copy in the "
                "custody store is missing or unreadable — restore the custody folder from a "
                "backup"
            )
        elif first.note == _UNREAD_OWN:
            detail = (
                f"cannot join release {e.release_id} ({e.segment}, {e.created_at[:10]}) with "
                "the other projects' audiences on the account: its link keys in the custody "
                "store are missing or unreadable — restore the custody folder from a backup"
            )
    else:
        detail = (
            f"differs from release {e.release_id} (segment {e.segment!r} to {e.destination}, "
            f"{e.created_at[:10]}{_of_another(first)}) by {first.only_new} added and "
            f"{first.only_old} removed people; 1 to {p.k_diff - 1} in either direction would "
            "disclose them"
        )
    if len(blocks) > 1:
        detail += f" (and {len(blocks) - 1} more colliding release(s))"
    if first.result != "error":
        public = (
            f"differs from release {e.release_id} (segment {e.segment!r} to {e.destination}, "
            f"{e.created_at[:10]}{_of_another(first)}) by between 1 and {p.k_diff - 1} people "
            "in some direction, "
            "which would disclose them — change the segment so the two differ by more "
            "(exact figures are in the compliance report)"
        )
    return detail, public


def _of_another(c: Comparison) -> str:
    return f", {c.note.split(':')[0]}" if c.note.startswith("another project") else ""


# ---------------------------------------------------------------------------------------
# Composition: membership patterns over every live audience of the account


@dataclass(frozen=True)
class Composition:
    """The patterns a change touches that would hold between 1 and ``k_diff - 1`` people."""

    audiences: int  # live audiences of the account, this one included
    patterns: int  # non-empty membership patterns after the change
    small: tuple[tuple[tuple[str, ...], int], ...]  # (audiences in the pattern, people)
    k_diff: int = 0  # the smallest group allowed
    other_projects: int = 0  # of ``audiences``: released by other projects (:func:`unify`)
    without_links: int = 0  # this project's audiences whose people have no link keys kept

    @property
    def passed(self) -> bool:
        return not self.small


_WORD = 60  # audiences per bitmask column; as many columns as the account needs


def composition(
    before: np.ndarray,
    after: np.ndarray,
    others: Sequence[tuple[str, np.ndarray]],
    k_diff: int,
    exempt: np.ndarray | None = None,
) -> Composition:
    """Membership patterns over ``others`` (name, sorted keys) plus this audience, which
    goes from ``before`` to ``after``. A pattern is *touched* when someone who is not in
    ``exempt`` enters or leaves this audience with that combination of other audiences;
    every touched pattern, with or without this audience, must hold 0 or >= ``k_diff``."""
    keys, masks = _patterns(before, after, others)
    if keys.size == 0:
        return Composition(len(others) + 1, 0, (), k_diff)
    own = masks[:, -1]
    b, a = (own & 1) > 0, (own & 2) > 0
    changed = a != b
    if exempt is not None and exempt.size:
        changed &= ~np.isin(keys, exempt, assume_unique=True)
    words = [f"w{i}" for i in range(masks.shape[1] - 1)]
    people = pl.DataFrame({**{w: masks[:, i] for i, w in enumerate(words)}, "a": a})
    in_some_other = pl.any_horizontal(pl.col(w) > 0 for w in words)
    counts = people.filter(pl.col("a") | in_some_other).group_by(*words, "a").len()
    touched = people.filter(pl.Series(changed)).select(words).unique()
    small_rows = counts.join(touched, on=words, how="semi").filter(pl.col("len") < k_diff)
    names = [name for name, _ in others]
    small = tuple(
        sorted(
            (_pattern_names(row[: len(words)], bool(row[-2]), names), int(row[-1]))
            for row in small_rows.select(*words, "a", "len").iter_rows()
        )
    )
    return Composition(len(others) + 1, counts.height, small, k_diff)


def _patterns(
    before: np.ndarray, after: np.ndarray, others: Sequence[tuple[str, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Every person of the account once (sorted keys) and their membership bitmask: one
    column per ``_WORD`` other audiences, the last column this audience (1 before, 2 after).

    The arrays are sorted already, so a stable sort of their concatenation only merges
    runs (timsort); each person's bits are then summed over their run of rows."""
    n_words = max(1, -(-len(others) // _WORD))
    sets = [(keys, i // _WORD, 1 << (i % _WORD)) for i, (_, keys) in enumerate(others)]
    sets += [(before, n_words, 1), (after, n_words, 2)]
    sets = [(keys, column, bit) for keys, column, bit in sets if keys.size]
    if not sets:
        return np.zeros(0, dtype=np.uint64), np.zeros((0, n_words + 1), dtype=np.uint64)
    all_keys = np.concatenate([keys for keys, _, _ in sets])
    bits = np.zeros((all_keys.size, n_words + 1), dtype=np.uint64)
    start = 0
    for keys, column, bit in sets:
        bits[start : start + keys.size, column] = bit
        start += keys.size
    order = np.argsort(all_keys, kind="stable")
    all_keys = all_keys[order]
    first = np.empty(all_keys.size, dtype=bool)
    first[0] = True
    np.not_equal(all_keys[1:], all_keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return all_keys[starts], np.add.reduceat(bits[order], starts, axis=0)


def _across_projects(
    p: DifferenceParams,
    before: np.ndarray,
    after: np.ndarray,
    named: list[tuple[str, np.ndarray]],
    exempt: np.ndarray | None,
    ctx: _Links,
    foreign: Sequence[ForeignRelease],
    exclusions: str = "",
) -> tuple[Composition | None, tuple[Comparison, ...]]:
    """The pattern check over every live audience of the account, whichever project
    released it (each as its newest release and as the platform holds it): every
    project's people joined into one through the links (:func:`unify`), under the largest
    ``k_diff`` of the projects. People this build's CRM excluded are forced removals in the
    other projects' audiences (as in :func:`translate`). ``ctx``: this build's links and
    those of this project's audiences in ``before`` or ``named``, each pair of projects
    matched once. Returns the composition (None when a kept file cannot be read) and an
    error comparison for each file that cannot be read (it blocks)."""
    exempt_links, errors = ctx.exempt, list(ctx.errors)
    spaces: dict[str, list[tuple[ForeignRelease, np.ndarray, pl.DataFrame]]] = {}
    for f in foreign:
        theirs = ctx.theirs(f)
        try:
            members = read_membership(f.earlier.membership_path)
        except (OSError, pl.exceptions.PolarsError, InternalError):
            theirs = None
        if theirs is None:
            errors.append(Comparison(f.earlier, 0, 0, 0, False, False, "error", _UNREAD))
            continue
        spaces.setdefault(f.space, []).append((f, members, theirs))
    if errors:
        return None, tuple(errors)
    excluded = sorted_keys(exempt_links.get_column("member_key"))
    ours = sorted_keys(np.concatenate([before, after, excluded, *(keys for _, keys in named)]))
    groups = [_distinct_versions(group) for group in spaces.values()]
    space_keys = [sorted_keys(np.concatenate([keys for _, keys, _ in group])) for group in groups]
    labels = unify(
        ours,
        ctx.ours,
        [(keys, ctx.space_links(space)) for keys, space in zip(space_keys, spaces, strict=True)],
        [ctx.match(space) for space in spaces],
    )

    def mine(keys: np.ndarray) -> np.ndarray:
        return sorted_keys(labels.ours[np.searchsorted(ours, keys)])

    after_l = mine(after)
    gone = np.setdiff1d(mine(excluded), after_l, assume_unique=True)  # still in: not gone
    everyone = [(name, mine(keys)) for name, keys in named]
    copies = {  # each audience's synced copy (what the platform holds), in labels
        (f.space, f.earlier.segment, f.earlier.destination): sorted_keys(
            space[np.searchsorted(keys, members)]
        )
        for keys, group, space in zip(space_keys, groups, labels.spaces, strict=True)
        for f, members, _ in group
        if f.earlier.release_id.startswith("synced:")
    }
    for keys, group, space in zip(space_keys, groups, labels.spaces, strict=True):
        for f, members, _ in group:
            there = sorted_keys(space[np.searchsorted(keys, members)])
            e = f.earlier
            held = " as the platform holds it" if e.release_id.startswith("synced:") else ""
            name = f"{e.segment} → {e.destination} (another project, {f.project}{held})"
            if f.exclusions and f.exclusions == exclusions:
                there = np.setdiff1d(there, gone, assume_unique=True)
            else:  # only those its project's platform copy already dropped
                copy = copies.get((f.space, e.segment, e.destination))
                dropped = (
                    np.setdiff1d(gone, copy, assume_unique=True) if copy is not None else _EMPTY
                )
                there = np.setdiff1d(there, dropped, assume_unique=True)
            everyone.append((name, there))
    held_keys = exempt[np.isin(exempt, ours)] if exempt is not None and exempt.size else _EMPTY
    k_diff = max(p.k_diff, *(f.k_diff for f in foreign))  # the strictest project's rule
    mix = composition(mine(before), after_l, everyone, k_diff, mine(held_keys))
    audiences = len({(f.space, f.earlier.segment, f.earlier.destination) for f in foreign})
    return replace(mix, other_projects=audiences, without_links=ctx.without), ()


class _Links:
    """The links one difference check compares: this build's (``new_links()``, called
    once), those of this project's audiences the patterns join (``own``), and the other
    projects' (``foreign``) — each file read once, each other project matched with this
    one once (:func:`match`), whatever the number of its audiences."""

    def __init__(
        self,
        new_links: Callable[[], tuple[pl.DataFrame, pl.DataFrame]],
        own: Sequence[EarlierRelease],
        foreign: Sequence[ForeignRelease],
    ) -> None:
        self.links, self.exempt = new_links()
        self.errors: list[Comparison] = []
        self.without = 0  # own audiences released before link keys were kept
        frames = [self.links, self.exempt]
        for e in own:
            if e.links_path is None:  # joined by no one
                self.without += 1
                continue
            try:
                frames.append(read_links(e.links_path))
            except (OSError, pl.exceptions.PolarsError, InternalError):
                self.errors.append(Comparison(e, 0, 0, 0, False, False, "error", _UNREAD_OWN))
        self.ours = pl.concat(frames).unique()
        self.foreign = list(foreign)
        self._read: dict[Path, pl.DataFrame | None] = {}
        self._spaces: dict[str, pl.DataFrame] = {}
        self._matched: dict[str, Match] = {}

    def theirs(self, f: ForeignRelease) -> pl.DataFrame | None:
        """``f``'s link frame (None when it cannot be read)."""
        if f.links_path not in self._read:
            try:
                self._read[f.links_path] = read_links(f.links_path)
            except (OSError, pl.exceptions.PolarsError, InternalError):
                self._read[f.links_path] = None
        return self._read[f.links_path]

    def space_links(self, space: str) -> pl.DataFrame:
        """The readable link frames of one other project's audiences, as one."""
        if space not in self._spaces:
            frames = [self.theirs(f) for f in self.foreign if f.space == space]
            self._spaces[space] = pl.concat([x for x in frames if x is not None]).unique()
        return self._spaces[space]

    def match(self, space: str) -> Match:
        if space not in self._matched:
            self._matched[space] = match(self.ours, self.space_links(space))
        return self._matched[space]


def _platform_copies(foreign: Sequence[ForeignRelease]) -> dict[tuple[str, str, str], Any]:
    """Each other-project audience's synced copy (what the platform holds of it), by
    (key space, segment, destination): its member keys, None when unreadable."""
    out: dict[tuple[str, str, str], Any] = {}
    for f in foreign:
        if f.earlier.release_id.startswith("synced:"):
            try:
                keys: np.ndarray | None = read_membership(f.earlier.membership_path)
            except (OSError, pl.exceptions.PolarsError, InternalError):
                keys = None
            out[(f.space, f.earlier.segment, f.earlier.destination)] = keys
    return out


def _forced_there(
    f: ForeignRelease, exclusions: str, platform: dict[tuple[str, str, str], Any]
) -> Callable[[np.ndarray], np.ndarray]:
    """Of the people this build's CRM rules excluded (``gone``, in ``f``'s keys), those
    that are forced removals in ``f``: all when both projects exclude people by the same
    settings over the same data (``exclusions``: its rules remove them too at its next
    sync); otherwise only those its project's platform copy already dropped (a stricter
    rule or a doctored export of one project's own could else pass a difference of a few
    people as removals, and two projects with different settings would block each other
    for good after an opt-out)."""
    if exclusions and f.exclusions == exclusions:
        return lambda gone: gone
    copy = platform.get((f.space, f.earlier.segment, f.earlier.destination))
    if copy is None:
        return lambda gone: gone[:0]
    return lambda gone: np.setdiff1d(gone, copy, assume_unique=True)


def _distinct_versions(
    group: list[tuple[ForeignRelease, np.ndarray, pl.DataFrame]],
) -> list[tuple[ForeignRelease, np.ndarray, pl.DataFrame]]:
    """One project's audiences, each newest release once, and its synced copy only when it
    differs from it (small changes held back)."""
    newest = {
        (f.earlier.segment, f.earlier.destination): keys
        for f, keys, _ in group
        if not f.earlier.release_id.startswith("synced:")
    }
    out = []
    for f, keys, links in group:
        e = f.earlier
        if e.release_id.startswith("synced:"):
            release = newest.get((e.segment, e.destination))
            if release is not None and np.array_equal(keys, release):
                continue
        out.append((f, keys, links))
    return out


_UNREAD = "custody file unreadable"  # another project's member keys or link keys
_UNREAD_OWN = "own link file unreadable"
_UNREAD_SYNCED = "own synced copy unreadable"


@dataclass(frozen=True)
class Labels:
    """One label per person across projects (:func:`unify`), aligned with the keys given."""

    ours: np.ndarray
    spaces: list[np.ndarray]


def unify(
    ours: np.ndarray,
    ours_links: pl.DataFrame,
    spaces: Sequence[tuple[np.ndarray, pl.DataFrame]],
    matched: Sequence[Match | None] = (),
) -> Labels:
    """People of this project (``ours``: sorted keys, and their link frame) and of other
    projects (each: sorted keys of one key space, and their link frame) as one set of
    labels: two people of different projects who share a link of a kind both projects fill
    alike (:func:`match`) are one, transitively — the platform matches both uploads to
    one user. Every pair of projects is joined, so two other projects' people are one even
    when this project holds neither. Within a project a key is a person; people with no
    shared link keep a label of their own. ``matched[i]``: this project's people matched
    with space ``i`` already (the pairwise check's), else None."""
    every = [(ours, ours_links), *spaces]
    offsets = np.cumsum([0, *(keys.size for keys, _ in every)])
    left, right = [], []
    for i, j in itertools.combinations(range(len(every)), 2):
        (keys_i, links_i), (keys_j, links_j) = every[i], every[j]
        known = matched[j - 1] if i == 0 and j - 1 < len(matched) else None
        m = known if known is not None else match(links_i, links_j)
        kinds = set(links_i.get_column("kind").unique()) & set(links_j.get_column("kind").unique())
        pairs = m.pairs.filter(pl.col("mask") & _bits(kinds - m.bad) != 0)
        a = _positions(keys_i, pairs.get_column("member_key").to_numpy())
        b = _positions(keys_j, pairs.get_column("theirs").to_numpy())
        ok = (a >= 0) & (b >= 0)
        left.append(a[ok] + offsets[i])
        right.append(b[ok] + offsets[j])
    label = _components(
        int(offsets[-1]),
        np.concatenate([np.zeros(0, dtype=np.int64), *left]),
        np.concatenate([np.zeros(0, dtype=np.int64), *right]),
    ).astype(np.uint64)
    return Labels(
        label[: ours.size],
        [label[offsets[i] : offsets[i + 1]] for i in range(1, len(every))],
    )


def _positions(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each value's index in the sorted ``keys``, or -1 when it is not there."""
    if keys.size == 0:
        return np.full(values.size, -1, dtype=np.int64)
    at = np.searchsorted(keys, values.astype(np.uint64))
    np.minimum(at, keys.size - 1, out=at)
    return np.where(keys[at] == values, at, -1).astype(np.int64)


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` nodes joined by the edges ``a[i] – b[i]``: each node's
    smallest connected node. Labels only fall, each round hooks both ends of every edge
    (and their labels' nodes) to the smaller label, then shortcuts chains of labels."""
    label = np.arange(n, dtype=np.int64)
    while a.size:
        low = np.minimum(label[a], label[b])
        for ends in (a, b, label[a], label[b]):
            np.minimum.at(label, ends, low)
        while True:  # pointer jumping: every label to its label's label
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped
        if np.array_equal(label[a], label[b]):
            break
    return label


def _pattern_names(masks: Sequence[int], mine: bool, names: Sequence[str]) -> tuple[str, ...]:
    inside = [name for i, name in enumerate(names) if int(masks[i // _WORD]) >> (i % _WORD) & 1]
    return (*inside, "(this audience)") if mine else tuple(inside)


__all__ = [
    "Comparison",
    "Composition",
    "DifferenceResult",
    "EarlierRelease",
    "PlatformView",
    "check",
    "compare_sets",
    "composition",
    "count_common",
    "earlier_releases",
    "read_membership",
    "sorted_keys",
    "unify",
    "write_membership",
]
