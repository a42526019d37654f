"""Removals that nothing blocks: a blocked segment's live audiences are still cleaned.

When a segment's adds are blocked (an unapproved edit, a revoked approval, a failing rule,
min-size), its platform audiences stay live. Every sync then still removes from each live
audience the people the pack's filter rules exclude on current data (consent,
do-not-contact, deceased, suppression, expired or revoked authorization, ad-personalization
denial, duplicates of opt-outs) and the people whose CRM record is gone. The gate judges
them (:func:`policies.gate.forced_removals`, removal-only sealed releases) and the removals
go through the normal journaled batch path, so a killed run is finished by the next one.
"""

from __future__ import annotations

import sqlite3
from datetime import date
from typing import TYPE_CHECKING

import polars as pl

from audiences.core.config import ProjectConfig
from audiences.core.errors import EXIT_BLOCKED, AudiencesError
from audiences.core.state import new_id, project_salt
from audiences.pipeline.batches import (
    ConnectorFactory,
    DestinationSync,
    _audit,
    _DestinationRun,
    _open_sync,
    _record_blocked,
    _remote_id,
    _segment_destinations,
    _send_batches,
    sync_summary,
)
from audiences.pipeline.membership import (
    KEY,
    OP,
    MembershipStore,
    close_sync,
    share_synced_snapshot,
    unsure_rows,
)
from audiences.pipeline.membership import recover_interrupted as _recover

if TYPE_CHECKING:
    from audiences.crm.sources import Sources
    from audiences.pipeline.build import BuildResult
    from policies.pack import Pack
    from policies.release import Release


def live_destinations(conn: sqlite3.Connection, config: ProjectConfig, segment: str) -> list[str]:
    """Ad destinations (still configured) where the segment has a platform audience."""
    return [d for s, d in live_audiences(conn, config) if s == segment]


def live_audiences(conn: sqlite3.Connection, config: ProjectConfig) -> list[tuple[str, str]]:
    """(segment, destination) of every platform audience the project holds on an ad
    destination still configured, whatever the segment files say now."""
    rows = conn.execute(
        "SELECT DISTINCT segment, destination FROM audiences_remote ORDER BY segment, destination"
    ).fetchall()
    return [
        (str(s), str(d))
        for s, d in rows
        if str(d) in config.destinations and config.destination(str(d)).kind != "file"
    ]


def unconfigured_audiences(
    conn: sqlite3.Connection, config: ProjectConfig
) -> list[tuple[str, str]]:
    """(segment, destination) of every platform audience the project holds on a
    destination ``audiences.toml`` no longer configures (nothing can reach it: no token,
    no account, no connector)."""
    rows = conn.execute(
        "SELECT DISTINCT segment, destination FROM audiences_remote ORDER BY segment, destination"
    ).fetchall()
    return [(str(s), str(d)) for s, d in rows if str(d) not in config.destinations]


def on_platform(conn: sqlite3.Connection, store: MembershipStore) -> pl.DataFrame:
    """Rows the platform holds or may hold: the confirmed snapshot plus unconfirmed adds."""
    snapshot = store.load()
    unsure = unsure_rows(conn, store)
    if unsure is None or not unsure.height:
        return snapshot
    maybe = (
        unsure.filter(pl.col(OP) == "add").drop(OP).join(snapshot.select(KEY), on=KEY, how="anti")
    )
    if not maybe.height:
        return snapshot
    maybe = maybe.unique(KEY, keep="last", maintain_order=True)
    return pl.concat([snapshot, maybe], how="diagonal_relaxed")


def current_rows(
    config: ProjectConfig,
    sources: Sources,
    keys: pl.Series,
    as_of: date,
    salt: bytes,
    *,
    link_opt_outs: bool,
    pack: Pack | None = None,
) -> pl.DataFrame:
    """The current CRM rows of the people with ``keys`` (the gate's columns), whatever any
    segment's definition says; flags duplicates of opt-outs, and records linked to a
    request the ``pack``'s jurisdiction rules honour, over the whole CRM."""
    from audiences.crm.identifiers import member_key
    from audiences.pipeline.select import age_expr, gate_columns

    cid = config.sources.contacts.id
    schema = sources.contacts.collect_schema()
    # a semi join, not a filter by ``is_in``: 10M contacts against the 342k (1M) keys of
    # a live audience, four runs each in turn, 2.72 (3.04) s against 3.03 (3.68) s
    # (benchmarks/README.md, "A profile command")
    wanted = keys.rename(KEY).cast(pl.UInt64).to_frame().lazy()
    plan = sources.contacts.with_columns(
        member_key(pl.col(cid), salt).alias(KEY),
        age_expr(config.identity.birth_date, as_of, schema),
    ).join(wanted, on=KEY, how="semi", maintain_order="left")
    plan = plan.select(gate_columns(config, plan.collect_schema()))
    frame = plan.collect(engine="streaming")
    if link_opt_outs:
        from audiences.pipeline.select import flag_opt_out_duplicates

        frame = flag_opt_out_duplicates(config, sources, frame)
    if pack is not None:
        from audiences.pipeline.select import flag_linked_requests

        frame = flag_linked_requests(config, sources, frame, pack)
    return frame


def removal_releases(
    conn: sqlite3.Connection,
    config: ProjectConfig,
    segment_name: str,
    destinations: list[str],
    as_of: date,
    build_id: str,
) -> dict[str, Release]:
    """The gate's removal-only release for each of ``destinations`` (audiences it holds)."""
    from audiences.crm.sources import load_sources
    from audiences.pipeline.select import links_opt_outs, select_segments
    from policies.gate import RemovalInput, forced_removals
    from policies.pack import load_pack

    platform: dict[str, pl.DataFrame] = {}
    for name in destinations:
        store = MembershipStore(config.state_dir, segment_name, name)
        _recover(conn, store)
        platform[name] = on_platform(conn, store)
    if not any(f.height for f in platform.values()):
        return {}
    (segment,) = select_segments(config, [segment_name])
    pack = load_pack(config)
    keys = pl.concat([f.get_column(KEY) for f in platform.values()]).unique()
    sources = load_sources(config)
    salt = project_salt(config.state_dir)
    current = current_rows(
        config, sources, keys, as_of, salt, link_opt_outs=links_opt_outs(pack), pack=pack
    )
    outcome = forced_removals(
        RemovalInput(build_id, segment, config, pack, current, platform, as_of, config.state_dir)
    )
    return outcome.releases


def sync_blocked(
    conn: sqlite3.Connection,
    config: ProjectConfig,
    result: BuildResult,
    actor: str,
    as_of: date,
    connector_factory: ConnectorFactory,
) -> list[DestinationSync]:
    """A blocked build's destinations: adds refused, forced removals sent where live."""
    segment = result.segment
    reason = "; ".join(result.reasons)
    live = live_destinations(conn, config, segment)
    ads = [d for d in _segment_destinations(config, segment) if d not in live]
    out = [_record_blocked(conn, segment, dest, reason, actor) for dest in ads]
    if not live:
        return out
    releases = removal_releases(conn, config, segment, live, as_of, result.build_id)
    for name in live:
        release = releases.get(name)
        if release is None:  # nothing on the platform to judge
            out.append(_record_blocked(conn, segment, name, reason, actor))
            continue
        out.append(send_removals(conn, config, release, actor, reason, connector_factory))
    return out


def send_removals(
    conn: sqlite3.Connection,
    config: ProjectConfig,
    release: Release,
    actor: str,
    reason: str,
    connector_factory: ConnectorFactory,
) -> DestinationSync:
    """Send a removal-only release through the journaled batch path; status ``blocked``."""
    from policies.pack import load_pack
    from policies.privacy.coarse import coarse_count, rounding
    from policies.release import require_release

    require_release(release)
    if release.purpose != "removal":
        raise AudiencesError("send_removals takes a removal-only release")
    name, segment = release.destination, release.segment
    store = MembershipStore(config.state_dir, segment, name)
    sync_id = new_id("s")
    remote_id = _remote_id(conn, segment, name) or ""
    out = DestinationSync(segment, name, "blocked", sync_id=sync_id, audience=remote_id)
    _open_sync(conn, sync_id, release, name)
    connector = None
    try:
        if release.members.height:
            connector = connector_factory(config, name)
            connector.open()
            connector.ensure_audience(release, remote_id)
            run = _DestinationRun(
                conn, store, connector, remote_id, sync_id, actor, out, release.release_id
            )
            _send_batches(run, [("remove", release.members)])
        out.forced_removes = out.removes
        left = store.load().height - out.removes
        # the message reaches marketers: people counts as coarse as every other figure
        r = rounding(load_pack(config))
        live, gone = (coarse_count(max(n, 0), r.k, r.step) for n in (left, out.forced_removes))
        out.error = (
            f"{reason} — adds are blocked, but the {name} audience {remote_id} is still live "
            f"({live} people): {gone} people the policy now excludes were removed from it; "
            f"to empty it run `audiences takedown {segment}`"
        )
        status = "blocked"
    except AudiencesError as exc:
        out.error = f"{reason} — forced removals failed: {exc.message}"
        out.status = status = "failed" if exc.exit_code != EXIT_BLOCKED else "blocked"
    finally:
        if connector is not None:
            connector.close()
    close_sync(
        conn,
        store,
        sync_id,
        status=status,
        error=out.error,
        figures={
            "removes": out.removes,
            "received": out.received,
            "invalid": out.invalid,
            "summary": sync_summary(out),
        },
    )
    share_synced_snapshot(config, store, release.kind)
    _audit(
        conn,
        actor,
        "sync_blocked",
        f"{segment}->{name}",
        {
            "sync_id": sync_id,
            "reason": reason,
            "forced_removes": out.forced_removes,
            "status": out.status,
            "release_id": release.release_id,
        },
    )
    return out
