"""Selecting members: segments by name, checked against the data, compiled, collected.

A segment compiles to one lazy polars plan over the CRM sources; :func:`collect_candidates`
collects only the columns the gate and the release need (:func:`gate_columns`) and, when
the pack's consent rule asks for it, flags records that duplicate an opt-out.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import polars as pl

from audiences.core.config import ProjectConfig
from audiences.core.errors import AudiencesError, DataError, SegmentError
from audiences.core.memory import own_strings
from audiences.crm.distinct import duplicated
from audiences.crm.identifiers import member_key
from audiences.crm.sources import Sources, diagnose_values
from audiences.pipeline.export_checks import check_whole_export, whole_export_error

if TYPE_CHECKING:
    from audiences.crm.linkage import CoarseMemo
    from audiences.segments import Segment, SegmentContext
    from policies.pack import Pack


def segment_context(config: ProjectConfig, as_of: date) -> SegmentContext:
    from audiences.segments import SegmentContext

    events = config.sources.events
    return SegmentContext(
        as_of=as_of,
        contact_id=config.sources.contacts.id,
        birth_date=config.identity.birth_date,
        event_contact_id=events.contact_id if events else "contact_id",
        event_type=events.type if events else "event_type",
        event_time=events.time if events else "event_time",
        identity=config.identity,
        case_insensitive=frozenset(config.sources.contacts.case_insensitive),
        event_case_insensitive=frozenset(events.case_insensitive if events else ()),
    )


def age_expr(column: str | None, as_of: date, schema: pl.Schema) -> pl.Expr:
    """Whole years at ``as_of`` (the same figure the segment language's ``age`` uses)."""
    from audiences.segments.compiler import age_years, as_date

    if column is None:
        return pl.lit(None, dtype=pl.Int32).alias("age")
    return age_years(as_date(pl.col(column), schema[column]), as_of).cast(pl.Int32).alias("age")


def select_segments(config: ProjectConfig, names: list[str] | None) -> list[Segment]:
    from audiences.segments import load_segments

    segments = load_segments(config.segments_dir)
    if not names:
        if not segments:
            raise SegmentError(
                f"no segment files in {config.segments_dir}", "add segments/<name>.yaml"
            )
        return segments
    by_name = {s.name: s for s in segments}
    chosen = []
    for name in names:
        if name not in by_name:
            import difflib

            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else "run `audiences validate` to list segments"
            )
            raise SegmentError(f"no segment named {name!r} in {config.segments_dir}", hint)
        chosen.append(by_name[name])
    return chosen


def validate_against_data(
    config: ProjectConfig, segments: list[Segment], sources: Sources, as_of: date
) -> None:
    from audiences.segments import validate_segment
    from policies.pack import load_pack
    from policies.rules import require_classified

    ctx = segment_context(config, as_of)
    contacts_schema = sources.contacts.collect_schema()
    events_schema = sources.events.collect_schema() if sources.events is not None else None
    for segment in segments:
        unknown = [d for d in segment.destinations if d not in config.destinations]
        if unknown:
            known = ", ".join(sorted(config.destinations)) or "none"
            raise SegmentError(
                f"segment {segment.name!r} names unknown destination(s) {unknown} (configured: {known})",
                "fix `destinations:` in the segment or add them to audiences.toml",
                where=str(segment.source or segment.name),
            )
        issues = validate_segment(segment, contacts_schema, events_schema, ctx)
        if issues:
            first = issues[0]
            raise SegmentError(
                str(first.message),
                getattr(first, "suggestion", None) or None,
                where=f"{first.file}:{first.line}",
            )
    # after the schema checks: an unknown column is a typo first, not an unclassified one
    require_classified(segments, config, load_pack(config))


def collect_candidates(
    config: ProjectConfig,
    segment: Segment,
    sources: Sources,
    as_of: date,
    salt: bytes,
    *,
    link_opt_outs: bool = True,
    protect_on: date | None = None,
    pack: Pack | None = None,
) -> pl.DataFrame:
    """The segment's rows at ``as_of`` plus what the gate needs; ``link_opt_outs`` flags
    duplicates of opt-outs (the consent rule's ``exclude_duplicates_of_opt_outs``; off for
    DP previews, which count the segment before consent); ``pack`` flags the candidates
    linked to a CRM record carrying a request its jurisdiction rules honour. The ``age``
    the minors rule reads is taken on ``protect_on`` (default: today, the wall clock),
    never ``as_of``."""
    from audiences.core import clock
    from audiences.segments import compile_segment

    protect_on = protect_on or clock.today()

    ctx = segment_context(config, as_of)
    cid = config.sources.contacts.id
    contacts_schema = sources.contacts.collect_schema()
    selected = _selected_in_database(config, segment, sources, ctx, contacts_schema)
    if selected is None:
        selected = compile_segment(segment, sources.contacts, sources.events, ctx)
    plan = selected.with_columns(
        member_key(pl.col(cid), salt).alias("member_key"),
        age_expr(config.identity.birth_date, protect_on, contacts_schema),
    )
    plan = plan.select(gate_columns(config, plan.collect_schema()))
    plan = plan.with_columns(own_strings(plan.collect_schema()))  # not the scan's buffers
    try:
        # the values and ids of the whole export, never only this segment's: see
        # export_checks
        check_whole_export(config, sources)
        if link_opt_outs:  # before the candidates are held (the same index, less memory)
            prepare_opt_out_index(config, sources)
        # one chunk per column, in memory of its own: the streaming scan leaves the
        # candidates in a chunk per morsel (86 at 10M contacts), which every later step
        # (the flags, the gate's rules, person keys, hashing, the files) walks chunk by
        # chunk; one copy (0.15 s for 933k candidates) took the gate from 3.2–3.4 to
        # 2.4–2.7 s. (Before the flags: the coarse keys they keep for the gate are of these
        # very columns, not of a copy the gate never sees.)
        frame = plan.collect(engine="streaming").rechunk()
        if link_opt_outs:
            frame = flag_opt_out_duplicates(config, sources, frame, keep_keys=True)
        if pack is not None:
            frame = flag_linked_requests(config, sources, frame, pack)
        frame = frame.rechunk()  # (the flags' columns; the rest is one chunk already)
    except pl.exceptions.PolarsError as exc:
        raise _explain_collect_failure(config, exc) from None
    if frame.height and (
        frame.get_column(cid).null_count() or duplicated(frame.get_column(cid)).any()
    ):
        # the export passed its check, or its record said so: the record was forged, or the
        # export changed while it was read; the error is the whole export's either way
        try:
            error = whole_export_error(config, sources)
        except pl.exceptions.PolarsError as exc:
            raise _explain_collect_failure(config, exc) from None
        raise error or DataError(
            "source 'contacts' changed while it was read (its ids no longer match the check)",
            "run the command again once the export is written",
        )
    return frame


def prepare_opt_out_index(config: ProjectConfig, sources: Sources) -> None:
    """Load or compute this export's opt-out index into ``sources.cache`` (see
    :func:`audiences.crm.linkage.prepare_opt_out_index`)."""
    from audiences.crm import linkage
    from audiences.pipeline.optout_index import store_for

    linkage.prepare_opt_out_index(
        sources.contacts, config, cache=sources.cache, store=store_for(config, sources)
    )


def flag_opt_out_duplicates(
    config: ProjectConfig, sources: Sources, frame: pl.DataFrame, *, keep_keys: bool = False
) -> pl.DataFrame:
    """``frame`` with the consent rule's duplicate-of-opt-out flag, the opt-out index read
    from the state folder when this export's is there (computed and kept there if not).
    With ``keep_keys`` (a build, whose gate follows), the candidates' coarse keys are left
    in ``sources.cache`` under :data:`CANDIDATE_KEYS` for the gate's people
    (:func:`candidate_keys`)."""
    from audiences.crm.linkage import flag_duplicates_of_opt_outs
    from audiences.pipeline.optout_index import store_for
    from policies.rules import DUPLICATE_OF_OPT_OUT

    memo: CoarseMemo | None = {} if keep_keys else None
    if memo is not None:  # this segment's alone: the last one's keys are let go
        sources.cache[CANDIDATE_KEYS] = memo
    return flag_duplicates_of_opt_outs(
        frame,
        sources.contacts,
        config,
        DUPLICATE_OF_OPT_OUT,
        cache=sources.cache,
        store=store_for(config, sources),
        memo=memo,
    )


# where flag_opt_out_duplicates leaves the candidates' coarse keys for the gate
CANDIDATE_KEYS = "candidate-coarse-keys"


def candidate_keys(sources: Sources) -> CoarseMemo | None:
    """The coarse keys the last :func:`collect_candidates` computed, taken out of
    ``sources.cache`` (held no longer than until its gate; ``person_keys`` uses them only
    for rows equal to the ones they were computed from)."""
    memo: CoarseMemo | None = sources.cache.pop(CANDIDATE_KEYS, None)
    return memo


def flag_linked_requests(
    config: ProjectConfig, sources: Sources, frame: pl.DataFrame, pack: Pack
) -> pl.DataFrame:
    """``frame`` with the jurisdiction rules' CRM-wide request flags
    (:func:`policies.rules.crm_requests`): the index of the CRM records carrying a request
    is kept in the state folder per export and per the flags of the packs in force."""
    from audiences.crm.linkage import flag_linked_records
    from audiences.pipeline.optout_index import REQUESTS_INDEX_NAME, store_for
    from policies.rules import crm_request_filter, crm_requests

    flags = crm_requests(pack.rules, config, sources.contacts.collect_schema())
    if not flags:
        return frame
    return flag_linked_records(
        frame,
        sources.contacts,
        config,
        flags,
        where=crm_request_filter(flags),
        cache=sources.cache,
        store=store_for(config, sources, REQUESTS_INDEX_NAME),
    )


def _selected_in_database(
    config: ProjectConfig,
    segment: Segment,
    sources: Sources,
    ctx: SegmentContext,
    contacts_schema: pl.Schema,
) -> pl.LazyFrame | None:
    """The segment's rows selected inside the database (database sources), or None.

    Only the source columns the gate and the release read come back."""
    if not sources.in_database:
        return None
    from audiences.segments import check_segment
    from audiences.segments.sql_run import run_segment_in_tables

    events_schema = sources.events.collect_schema() if sources.events is not None else None
    check_segment(segment, contacts_schema, events_schema, ctx)  # the polars view's types
    wanted = gate_columns(config, contacts_schema)
    frame = run_segment_in_tables(
        segment, sources.tables["contacts"], sources.tables.get("events"), ctx, wanted
    )
    return frame.lazy() if frame is not None else None


def links_opt_outs(pack: Pack) -> bool:
    """Does the pack's consent rule exclude duplicates of opt-outs (the default)?"""
    return any(
        rule.kind == "consent" and getattr(rule.params, "exclude_duplicates_of_opt_outs", False)
        for rule in pack.rules
    )


def gate_columns(config: ProjectConfig, schema: pl.Schema) -> list[str]:
    """The candidate columns the gate and the release need — nothing else is read.

    Projection pushdown then keeps polars from reading the clinical list columns (the
    heaviest part of a CRM export) when the segment's own filters don't touch them.
    """
    from connectors.file import FileDestinationConfig
    from connectors.registry import destination_config

    wanted = {config.sources.contacts.id, "member_key", "age"}
    wanted |= {c for c in config.identity.model_dump().values() if isinstance(c, str)}
    wanted |= {c for c in config.consent.model_dump().values() if isinstance(c, str)}
    wanted |= set(config.columns.quasi_identifiers)
    if config.policy.jurisdiction_column:  # jurisdiction packs read it
        wanted.add(config.policy.jurisdiction_column)
    for spec in config.destinations.values():
        if spec.kind != "file":
            continue
        settings = destination_config(spec)
        if isinstance(settings, FileDestinationConfig) and settings.record_level:
            wanted |= set(settings.attributes)
            if settings.anonymity is not None and settings.anonymity.sensitive:
                wanted.add(settings.anonymity.sensitive)
    return [c for c in schema.names() if c in wanted]


def _explain_collect_failure(config: ProjectConfig, exc: BaseException) -> AudiencesError:
    err = diagnose_values("contacts", config.sources.contacts, config, exc)
    if config.sources.events is not None and "cannot read" in err.what:
        ev_err = diagnose_values("events", config.sources.events, config, exc)
        if "cannot read" not in ev_err.what:
            return ev_err
    return err
