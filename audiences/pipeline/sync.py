"""Incremental, resumable sync of gate-made releases to ad platforms.

``plan`` runs the gate exactly as a build would (dry run) and diffs each release
against what the platform last confirmed: adds, removes and holds per destination,
without calling a platform or changing any state. ``sync`` builds (recorded),
folds any interrupted earlier run back in, then sends removals first and additions
second, batch by batch: each batch is journaled before it is sent and recorded only
after the platform confirms it. A run killed between batches is finished by the
next one with no duplicates and no lost removals.

Holds (difference protection for successive versions of one audience): when the
pack's difference rule says ``hold``, adds and removes smaller than ``k_diff`` wait
until each reaches ``k_diff``. Removals forced by consent, suppression,
do-not-contact or death are never held: the law outranks the difference check. Nor are
the people of a batch an interrupted run sent unconfirmed (the platform may hold them or
not): they are settled to the release on the next run (see ``audiences.pipeline.membership``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from audiences.core import clock
from audiences.core.actor import actor_name
from audiences.core.config import ProjectConfig
from audiences.core.errors import EXIT_BLOCKED, EXIT_ERROR, EXIT_OK, AudiencesError, ConnectorError
from audiences.core.records import pick
from audiences.core.state import connect, new_id, transaction, utcnow
from audiences.pipeline import state_record
from audiences.pipeline.batches import (
    TAKEDOWN,
    ConnectorFactory,
    DestinationSync,
    _audit,
    _confirmed_view,
    _DestinationRun,
    _open_sync,
    _record_blocked,
    _remote_id,
    _send_batches,
    _sent_before,
    make_connector,
    sync_summary,
    taken_down_elsewhere,
)
from audiences.pipeline.build import BuildResult, build
from audiences.pipeline.membership import (
    KEY,
    OP,
    MembershipStore,
    UnreadableStateFile,
    close_sync,
    discard_interrupted,
    recover_interrupted,
    replace_done,
    replace_reason,
    share_synced_snapshot,
    unsure_rows,
)
from connectors.base import AudienceConnector

if TYPE_CHECKING:
    from policies.gate import GateOutcome
    from policies.release import Release

Progress = Callable[[str, float], None]


@dataclass
class DestinationPlan:
    segment: str
    destination: str
    kind: str
    account: str
    release_id: str
    opaque_name: str
    remote_id: str | None
    adds: pl.DataFrame
    removes: pl.DataFrame
    held_adds: int = 0
    held_removes: int = 0
    forced_removes: int = 0
    confirmed: int = 0
    members: int = 0
    replace: str | None = None  # why the audience is replaced in full (None: a diff)

    def summary(self) -> dict[str, Any]:
        out = pick(self, "segment destination kind account")
        out |= {"audience": self.remote_id, "opaque_name": self.opaque_name}
        out |= {"release_members": self.members, "confirmed_members": self.confirmed}
        out |= {"adds": self.adds.height, "removes": self.removes.height}
        return out | pick(self, "held_adds held_removes forced_removes replace")


@dataclass
class SyncReport:
    results: list[DestinationSync]
    audit_head: tuple[int, str] | None = None

    @property
    def exit_code(self) -> int:
        statuses = {r.status for r in self.results}
        if "failed" in statuses:
            return EXIT_ERROR
        if "blocked" in statuses:
            return EXIT_BLOCKED
        return EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        head = None
        if self.audit_head:
            head = {"seq": self.audit_head[0], "hash": self.audit_head[1]}
        return {
            "results": [r.to_dict() for r in self.results],
            "exit_code": self.exit_code,
            "audit_head": head,
        }


# ---------------------------------------------------------------------------- helpers


def diff(
    release_members: pl.DataFrame,
    confirmed: pl.DataFrame,
    *,
    hold_k: int | None,
    forced_keys: pl.Series | None,
    unsure: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, int, int, int]:
    """Adds, removes (vectorized anti-joins on member_key) and holds.

    ``unsure`` rows (an interrupted run's unconfirmed batches, op in ``__op``) are settled
    to the release and never held: added if released, removed if not.
    """
    current_keys = release_members.select(KEY)
    adds = release_members.join(confirmed.select(KEY), on=KEY, how="anti")
    removes = confirmed.join(current_keys, on=KEY, how="anti")
    settle_adds = settle_removes = None
    if unsure is not None and unsure.height:
        confirmed_keys = confirmed.select(KEY)
        # the platform may hold people an unconfirmed add named, may lack people an
        # unconfirmed remove named (who are still in the confirmed snapshot)
        maybe_on = unsure.filter(pl.col(OP) == "add").join(confirmed_keys, on=KEY, how="anti")
        maybe_off = unsure.filter(pl.col(OP) == "remove").join(confirmed_keys, on=KEY, how="semi")
        keys = pl.concat([maybe_on.select(KEY), maybe_off.select(KEY)]).unique()
        settle_adds = release_members.join(keys, on=KEY, how="semi")
        settle_removes = pl.concat(
            [
                removes.join(keys, on=KEY, how="semi"),
                maybe_on.join(current_keys, on=KEY, how="anti")
                .unique(KEY, keep="last")
                .select([c for c in removes.columns if c in maybe_on.columns]),
            ],
            how="diagonal_relaxed",
        )
        adds = adds.join(keys, on=KEY, how="anti")
        removes = removes.join(keys, on=KEY, how="anti")
    forced = removes.height * 0
    if forced_keys is not None and removes.height:
        forced_mask = removes.get_column(KEY).is_in(forced_keys.implode())
        forced = int(forced_mask.sum())
    else:
        forced_mask = None
    held_adds = held_removes = 0
    if hold_k:
        if 0 < adds.height < hold_k:
            held_adds, adds = adds.height, adds.clear()
        optional = removes.height - forced
        if 0 < optional < hold_k:
            held_removes = optional
            removes = removes.filter(forced_mask) if forced_mask is not None else removes.clear()
    if settle_adds is not None and settle_removes is not None:
        adds = pl.concat([adds, settle_adds], how="diagonal_relaxed")
        removes = pl.concat([removes, settle_removes], how="diagonal_relaxed")
        if forced_keys is not None and settle_removes.height:
            forced += int(settle_removes.get_column(KEY).is_in(forced_keys.implode()).sum())
    # A member whose identifiers changed (new email, new phone) stays a member: the old
    # row is removed and the new one added, never held (the audience's size is unchanged,
    # and a later removal must reach the identifiers the platform actually has).
    settled = keys if settle_adds is not None else None
    new_rows, old_rows = changed_identifiers(release_members, confirmed, skip=settled)
    if new_rows.height:
        adds = pl.concat([adds, new_rows], how="diagonal_relaxed")
        removes = pl.concat([removes, old_rows], how="diagonal_relaxed")
    return adds, removes, held_adds, held_removes, forced


def changed_identifiers(
    release_members: pl.DataFrame, confirmed: pl.DataFrame, *, skip: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(new rows, old rows) of members in both whose uploaded identifiers differ."""
    columns = [c for c in release_members.columns if c != KEY and c in confirmed.columns]
    if not columns or not confirmed.height or not release_members.height:
        return release_members.clear(), confirmed.clear()
    both = release_members.join(
        confirmed.select(KEY, *columns), on=KEY, how="inner", suffix="__old"
    )
    if skip is not None and skip.height:
        both = both.join(skip, on=KEY, how="anti")
    differs = pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}__old")) for c in columns])
    changed = both.filter(differs)
    new_rows = changed.select(release_members.columns)
    old_rows = changed.select(KEY, *(pl.col(f"{c}__old").alias(c) for c in columns))
    return new_rows, old_rows


def _hold_threshold(release: Release) -> int | None:
    """k_diff when the pack holds small changes (the gate blocks them otherwise)."""
    return int(release.k_diff) if release.k_diff else None


def plan_destination(
    conn: sqlite3.Connection,
    config: ProjectConfig,
    outcome: GateOutcome,
    name: str,
    release: Release,
    *,
    replace: str | None = None,
) -> DestinationPlan:
    """The diff against the confirmed snapshot, or (``replace`` says why) a full replace:
    what the platform holds is unknown, so the snapshot is not read at all."""
    store = MembershipStore(config.state_dir, release.segment, name)
    if replace is not None:
        confirmed = release.members.clear()
        adds, removes, held_adds, held_removes, forced = (
            release.members,
            release.members.clear(),
            0,
            0,
            0,
        )
    else:
        confirmed = _confirmed_view(conn, store)
        adds, removes, held_adds, held_removes, forced = diff(
            release.members,
            confirmed,
            hold_k=_hold_threshold(release),
            forced_keys=release.excluded_keys,
            unsure=unsure_rows(conn, store),
        )
    return DestinationPlan(
        segment=release.segment,
        destination=name,
        kind=release.kind,
        account=release.account,
        release_id=release.release_id,
        opaque_name=release.opaque_name,
        remote_id=_remote_id(conn, release.segment, name),
        adds=adds,
        removes=removes,
        held_adds=held_adds,
        held_removes=held_removes,
        forced_removes=forced,
        confirmed=confirmed.height,
        members=release.members.height,
        replace=replace,
    )


# ---------------------------------------------------------------------------- plan
def plan(
    config: ProjectConfig,
    names: list[str] | None = None,
    *,
    as_of: date | None = None,
    actor: str | None = None,
    progress: Progress | None = None,
) -> tuple[list[BuildResult], list[DestinationPlan]]:
    """What a sync would do, per ad destination. Calls no platform; writes nothing."""
    results = build(config, names, as_of=as_of, actor=actor, dry_run=True, progress=progress)
    conn = connect(config.state_db)
    plans = []
    try:
        state_record.check(conn, config.state_dir, config.state_db, bootstrap=False)
        for result in results:
            outcome = result.outcome
            if result.blocked or outcome is None:  # only a blocked build lacks an outcome
                continue
            for name, release in outcome.releases.items():
                if release.kind == "file":
                    continue
                store = MembershipStore(config.state_dir, release.segment, name)
                why = replace_reason(conn, store) or taken_down_elsewhere(
                    conn, config, release.segment, name
                )
                plans.append(plan_destination(conn, config, outcome, name, release, replace=why))
    finally:
        conn.close()
    return results, plans


# ---------------------------------------------------------------------------- sync
def sync(
    config: ProjectConfig,
    names: list[str] | None = None,
    *,
    as_of: date | None = None,
    actor: str | None = None,
    full_refresh: bool = False,
    connector_factory: ConnectorFactory = make_connector,
    progress: Progress | None = None,
    approved_only: bool = False,
    checkpoint_key: Path | None = None,
) -> SyncReport:
    """Build, then push each release to its ad destinations. Failures don't stop others.

    ``approved_only`` (``sync --all``, for cron) takes every segment with an ad
    destination that a compliance officer approved at some point; segments never
    approved, or whose approval was revoked, are listed as ``skipped`` — unless they hold
    a live platform audience: those are taken, refused by the build (``blocked``, exit 3)
    and their forced removals sent, as ``sync SEGMENT`` does. A segment changed since its
    approval is still taken, and refused by the build (``blocked``). A live audience
    whose segment file is gone is listed as ``blocked`` (it needs ``audiences takedown``).

    ``checkpoint_key`` (for the scheduled job, a checkpoint-only key: ``approvers add
    --checkpoints-only``; or an approver's): the audit head is signed at the end
    (``audit.checkpoint``), so a later cut of the log's tail shows. A key that is neither
    is refused before anything is built or sent.
    """
    clock.release_day(as_of, what="sync")  # docs/policy-rules.md: no other day
    who = actor_name(actor)
    step = progress or (lambda _msg, _frac: None)
    report = SyncReport(results=[])
    _check_state(config)
    if checkpoint_key is not None:
        _check_checkpoint_key(config, checkpoint_key)
    if approved_only:
        names, skipped = _approved_segments(config)
        report.results.extend(skipped)
        if not names:
            conn = connect(config.state_db)
            try:
                report.audit_head = _audit_head(conn)
            finally:
                conn.close()
            return report
    day = as_of or clock.today()  # the clock the protective rules read
    results = build(config, names, as_of=day, actor=who, progress=step, full_refresh=full_refresh)
    conn = connect(config.state_db)
    try:
        for result in results:
            report.results.extend(
                _sync_segment(conn, config, result, who, full_refresh, connector_factory, day)
            )
        if checkpoint_key is not None:
            _checkpoint(conn, checkpoint_key, who)
        report.audit_head = _audit_head(conn)
        state_record.write(conn, config.state_dir)
    finally:
        conn.close()
    return report


def _checkpoint(conn: sqlite3.Connection, key: Path, actor: str) -> None:
    from audiences.compliance import audit
    from audiences.compliance.keys import load_private_key

    audit.checkpoint(conn, load_private_key(key), actor=actor)


def _check_checkpoint_key(config: ProjectConfig, key: Path) -> None:
    from audiences.compliance.workflow import checkpoint_signer

    conn = connect(config.state_db)
    try:
        checkpoint_signer(conn, config, key)
    finally:
        conn.close()


def _check_state(config: ProjectConfig) -> None:
    """Refuse to sync with a state that does not account for the platform audiences the
    project has (``audiences.pipeline.state_record``): deleted, or older than the record."""
    conn = connect(config.state_db)
    try:
        state_record.check(conn, config.state_dir, config.state_db)
    finally:
        conn.close()


def _sync_segment(
    conn: sqlite3.Connection,
    config: ProjectConfig,
    result: BuildResult,
    actor: str,
    full_refresh: bool,
    connector_factory: ConnectorFactory,
    as_of: date,
) -> list[DestinationSync]:
    """One build's ad destinations: all blocked, or each release pushed (files are done)."""
    segment = result.segment
    outcome = result.outcome
    if result.blocked or outcome is None:  # only a blocked build lacks an outcome
        from audiences.pipeline.removals import sync_blocked

        return sync_blocked(conn, config, result, actor, as_of, connector_factory)
    synced = []
    approved_at = (outcome.report.get("approval") or {}).get("at")  # verified by the build
    for name, release in outcome.releases.items():
        if release.kind == "file":
            synced.append(DestinationSync(segment, name, "ok", adds=release.members.height))
            continue
        down = taken_down_block(conn, segment, name, config, approved_at)
        if down is not None:
            synced.append(_record_blocked(conn, segment, name, down, actor))
            continue
        synced.append(
            sync_destination(
                conn,
                config,
                outcome,
                name,
                release,
                actor,
                full_refresh=full_refresh,
                connector_factory=connector_factory,
            )
        )
    return synced


def _approved_segments(config: ProjectConfig) -> tuple[list[str], list[DestinationSync]]:
    from audiences.compliance import workflow as compliance
    from audiences.compliance.approvals import latest_approval
    from audiences.pipeline.removals import (
        live_audiences,
        live_destinations,
        unconfigured_audiences,
    )
    from audiences.segments import load_segments
    from policies.pack import load_pack

    pack = load_pack(config)
    compliance.approval_required(config, pack)  # a lowered requirement is an error first
    conn = connect(config.state_db)
    names: list[str] = []
    skipped: list[DestinationSync] = []
    try:
        segments = load_segments(config.segments_dir)
        for segment in segments:
            # a live audience counts whatever the segment lists now: an audience the
            # segment no longer names still gets its forced removals
            live = live_destinations(conn, config, segment.name)
            ads = [
                d
                for d in compliance.ad_destinations(config, segment)
                if config.destination(d).kind != "file" and d not in live
            ]
            if not ads and not live:
                continue
            # (the pack's requirement, or the project's approvers, or a governed account)
            required = compliance.approval_binds(conn, config, segment, pack)
            approval = latest_approval(conn, segment.name) if required else None
            unapproved = required and (approval is None or approval.revoked_at is not None)
            if unapproved and not _holding(conn, config, segment.name, live):
                why = "not approved" if approval is None else "approval revoked"
                skipped.extend(
                    DestinationSync(segment.name, d, "skipped", error=why)
                    for d in sorted([*ads, *live])
                )
                continue
            # (unapproved or revoked with a live audience: the build refuses the adds and
            # the removals the filter rules force are sent — never skipped in silence)
            names.append(segment.name)
        known = {segment.name for segment in segments}
        orphans = [
            (name, destination, f"a live {destination} audience but no segment file",
             f"audiences takedown {name}", "")
            for name, destination in live_audiences(conn, config)
            if name not in known
        ] + [
            (name, destination,
             f"a live audience on destination {destination!r}, which audiences.toml no longer "
             "configures", f"audiences takedown {name} --destination {destination}",
             f" after putting [destinations.{destination}] back")
            for name, destination in unconfigured_audiences(conn, config)
        ]  # fmt: skip
        for name, destination, what, command, after in orphans:
            if _holding(conn, config, name, [destination]):
                why = f"segment {name!r} has {what}: nothing is removed from it; run "
                why += f"`{command}`{after}"
                skipped.append(DestinationSync(name, destination, "blocked", error=why))
    finally:
        conn.close()
    return names, skipped


def _holding(
    conn: sqlite3.Connection, config: ProjectConfig, segment: str, live: list[str]
) -> bool:
    """Does any of the segment's ``live`` platform audiences (may) hold people? Only one
    emptied by a takedown and known to be empty does not (an unreadable membership
    snapshot raises: an unknown audience is never taken for an empty one)."""
    from audiences.pipeline.membership import MembershipStore
    from audiences.pipeline.removals import on_platform

    for destination in live:
        if taken_down_block(conn, segment, destination, config, None) is None:
            return True
        if on_platform(conn, MembershipStore(config.state_dir, segment, destination)).height:
            return True
    return False


def taken_down_block(
    conn: sqlite3.Connection,
    segment: str,
    destination: str,
    config: ProjectConfig,
    approved_at: str | None,
) -> str | None:
    """Why adds to a taken-down audience are refused, or None. The takedown is this
    state's, or one kept in custody on this OS account (from a copy of the project, or
    from a state since restored from an older backup); ``approved_at`` is when the
    approval this run verified was signed (None: none was) — a takedown is lifted only by
    an approval signed after it, never by a row of the approvals table read unverified."""
    from audiences.compliance.approvals import instant as _instant
    from audiences.compliance.workflow import takedown_since

    row = conn.execute(
        "SELECT max(finished_at) FROM syncs WHERE segment=? AND destination=? AND release_id=? "
        "AND status IN ('taken_down', 'takedown_partial')",
        (segment, destination, TAKEDOWN),
    ).fetchone()
    here = None if row is None or row[0] is None else str(row[0])
    # (a destination no longer configured has no account to look custody up by)
    known = destination in config.destinations
    kept = takedown_since(config, segment, destination) if known else None
    stamps = [s for s in (here, kept) if s is not None]
    if not stamps:
        return None
    when = max(stamps, key=_instant)
    if approved_at is not None and _instant(approved_at) > _instant(when):
        return None
    return (
        f"the {destination} audience of {segment!r} was taken down at {when}; nothing is "
        f"added to it until a compliance officer approves the segment again "
        f"(audiences review {segment} --by NAME --key PATH, then audiences approve {segment} "
        "--by NAME --key PATH)"
    )


def sync_destination(
    conn: sqlite3.Connection,
    config: ProjectConfig,
    outcome: GateOutcome,
    name: str,
    release: Release,
    actor: str,
    *,
    full_refresh: bool = False,
    connector_factory: ConnectorFactory = make_connector,
) -> DestinationSync:
    """Push one release to one ad destination: removals, then additions, batch by batch."""
    from policies.release import require_release

    require_release(release)
    started = time.perf_counter()
    store = MembershipStore(config.state_dir, release.segment, name)
    try:
        elsewhere = taken_down_elsewhere(conn, config, release.segment, name)
        recovered, replace = _settle_store(conn, store, full_refresh, elsewhere)
    except UnreadableStateFile as exc:
        return DestinationSync(release.segment, name, "failed", error=exc.message)
    sync_id = new_id("s")
    out = DestinationSync(release.segment, name, "failed", sync_id=sync_id, recovered=recovered)
    _open_sync(conn, sync_id, release, name)
    connector = None
    try:
        connector = connector_factory(config, name)
        connector.open()
        # "--full-refresh" is the caller's choice, not unknown state: holds still apply
        unknown = None if replace == "--full-refresh" else replace
        the_plan = plan_destination(conn, config, outcome, name, release, replace=unknown)
        remote_id, found = _ensure_destination_audience(
            conn, connector, the_plan, release, store.state_dir, actor
        )
        if found:  # a list of ours the state did not know: its members are unknown
            the_plan = plan_destination(conn, config, outcome, name, release, replace=found)
        out.audience, out.replaced = remote_id, the_plan.replace or replace
        out.held_adds, out.held_removes = the_plan.held_adds, the_plan.held_removes
        out.forced_removes = the_plan.forced_removes
        run = _DestinationRun(
            conn, store, connector, remote_id, sync_id, actor, out, release.release_id
        )
        _send_changes(run, the_plan, release, full_refresh)
        _close_ok(run)
    except AudiencesError as exc:
        out.error = exc.message
        if isinstance(exc, ConnectorError) and exc.code is not None:
            out.error = f"{exc.message} [code {exc.code}]"
        out.status = "blocked" if exc.exit_code == EXIT_BLOCKED else "failed"
        close_sync(conn, store, sync_id, status=out.status, error=out.error)
    except Exception as exc:  # a bug or an SDK surprise: keep the other segments going
        out.error = f"internal error ({type(exc).__name__}) — run with --debug and report it"
        close_sync(conn, store, sync_id, status="failed", error=out.error)
    finally:
        if connector is not None:
            connector.close()
        out.seconds = round(time.perf_counter() - started, 3)
    share_synced_snapshot(config, store, release.kind)
    _audit(
        conn,
        actor,
        "sync",
        f"{release.segment}->{name}",
        {
            "sync_id": sync_id,
            "status": out.status,
            "adds": out.adds,
            "removes": out.removes,
            "forced_removes": out.forced_removes,
            "held_adds": out.held_adds,
            "held_removes": out.held_removes,
            "release_id": release.release_id,
            "replaced": out.replaced,
            "membership_unknown": out.membership_unknown,
        },
    )
    return out


def _send_changes(
    run: _DestinationRun, the_plan: DestinationPlan, release: Release, full_refresh: bool
) -> None:
    """Removals then additions; a replace of everything when what the platform holds is
    unknown; on ``--full-refresh`` a replace that keeps the holds."""
    if the_plan.replace is not None:  # what the platform holds is unknown: all of it
        _send_batches(run, [("replace", release.members)], known=False)  # state not read
    elif full_refresh:
        rows = _refreshed(the_plan, release, _sent_before(run).rows)
        _send_batches(run, [("replace", rows)])
        run.out.replaced_members = rows.height  # the batches' rows; what changed:
        run.out.adds, run.out.removes = the_plan.adds.height, the_plan.removes.height
    else:
        _send_batches(run, [("remove", the_plan.removes), ("add", the_plan.adds)])


def _settle_store(
    conn: sqlite3.Connection,
    store: MembershipStore,
    full_refresh: bool,
    elsewhere: str | None = None,
) -> tuple[list[str], str | None]:
    """(interrupted syncs closed, why this sync replaces the audience in full or None).

    When what the platform holds is unknown (``membership.replace_reason``, or a takedown
    from another state: ``elsewhere``) or a full refresh was asked for, interrupted runs
    are closed without reading their journals (the replace makes them moot); otherwise
    their confirmed batches are folded in."""
    why = replace_reason(conn, store) or elsewhere
    if why is None and full_refresh:
        why = _refresh_reason(store)
    if why is not None:
        return discard_interrupted(conn, store), why
    return recover_interrupted(conn, store), None


def _refresh_reason(store: MembershipStore) -> str:
    """``--full-refresh``, which keeps the holds and so reads the membership; when that
    membership is unreadable (a truncated or garbled file: the error names this flag as a
    way out), what the platform holds is unknown and the replace treats it so, as after
    ``state repair``. A file that fails its authentication is not read here either: only
    a repair settles it."""
    try:
        store.load()
        store.load_unsure()
    except UnreadableStateFile as exc:
        if exc.verdict != "unreadable":
            raise
        return f"{exc.path.name} of {store.segment}->{store.destination} is unreadable (--full-refresh)"
    return "--full-refresh"


def _ensure_destination_audience(
    conn: sqlite3.Connection,
    connector: AudienceConnector,
    the_plan: DestinationPlan,
    release: Release,
    state_dir: Path,
    actor: str,
) -> tuple[str, str | None]:
    """The platform's audience id, created (and remembered, in the state and in the
    audience record) on the first sync; and, when the platform already had a list of that
    name the state did not know (Google's NAME_ALREADY_USED), why it must be replaced."""
    if the_plan.remote_id is not None:
        return connector.ensure_audience(release, the_plan.remote_id), None
    found = None
    try:
        remote_id = connector.ensure_audience(release, None)
    except ConnectorError as exc:
        existing = _existing_audience(connector, release.opaque_name, exc)
        if existing is None:
            raise
        remote_id = connector.ensure_audience(release, existing)
        found = (
            f"the platform already had audience {existing} of this name; its members are unknown"
        )
    subject = f"{release.segment}->{the_plan.destination}"
    with transaction(conn):
        conn.execute(
            "INSERT INTO audiences_remote(segment, destination, remote_id, created_at) "
            "VALUES (?,?,?,?)",
            (release.segment, the_plan.destination, remote_id, utcnow()),
        )
        how = "found" if found else "created"
        details = {"remote_id": remote_id, "how": how}
        _audit(conn, actor, "audience", subject, details)
    state_record.write(conn, state_dir)
    return remote_id, found


def _existing_audience(connector: AudienceConnector, name: str, exc: ConnectorError) -> str | None:
    """The platform's audience named ``name``, when creating it failed because it exists."""
    if "NAME_ALREADY_USED" not in str(exc.code or ""):
        return None
    return connector.find_audience(name)


def _refreshed(the_plan: DestinationPlan, release: Release, sent: pl.DataFrame) -> pl.DataFrame:
    """A full refresh's rows: the audience exactly as an incremental sync would leave it —
    what the platform holds, minus the plan's removes, plus its adds. Held changes stay
    held: held adds are not sent, and people whose removal is held stay (their rows as sent
    before)."""
    on_platform = sent.get_column(KEY).unique()
    target = pl.concat(
        [
            on_platform.filter(~on_platform.is_in(the_plan.removes.get_column(KEY).implode())),
            the_plan.adds.get_column(KEY),
        ]
    ).unique()
    from_release = release.members.filter(pl.col(KEY).is_in(target.implode()))
    kept = sent.filter(
        pl.col(KEY).is_in(target.implode())
        & ~pl.col(KEY).is_in(release.members.get_column(KEY).implode())
    ).unique(KEY, keep="last")
    return pl.concat([from_release, kept.select(from_release.columns)], how="vertical_relaxed")


def _close_ok(run: _DestinationRun) -> None:
    """Close a sync the platform confirmed in full; audit any hold it kept back."""
    out = run.out
    out.match_rate = round(out.received / out.sent, 4) if out.sent else None
    out.status = "ok"
    close_sync(
        run.conn,
        run.store,
        run.sync_id,
        status="ok",
        figures={
            "adds": out.adds,
            "removes": out.removes,
            "holds": out.held_adds + out.held_removes,
            "received": out.received,
            "invalid": out.invalid,
            "match_rate": out.match_rate,
            "summary": sync_summary(out),
        },
    )
    run.store.settle_unsure(run.unknown)  # this run settled them, but for what it left unknown
    if out.replaced is not None:
        replace_done(run.conn, out.segment, out.destination)
    if out.held_adds or out.held_removes:
        _audit(
            run.conn,
            run.actor,
            "hold",
            run.subject,
            {
                "sync_id": run.sync_id,
                "held_adds": out.held_adds,
                "held_removes": out.held_removes,
            },
        )


def _audit_head(conn: sqlite3.Connection) -> tuple[int, str] | None:
    from audiences.compliance import audit

    seq, digest = audit.head(conn)
    return (seq, digest) if seq else None
