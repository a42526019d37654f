"""The build pipeline: sources → segment → candidates → policy gate → releases → files.

One lazy polars plan per segment, collected once; the gate works on the collected
candidates with vectorized masks; only the gate creates releases; the ``file``
destination writes them atomically. Every build is recorded in the state DB and the
audit log, blocked ones included.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from audiences.compliance import audit
from audiences.compliance.workflow import (
    foreign_releases,
    release_lock,
    share_releases,
    shared_releases,
    synced_audiences,
)
from audiences.core import clock
from audiences.core.actor import actor_name
from audiences.core.config import ProjectConfig
from audiences.core.errors import (
    AudiencesError,
    ConnectorError,
    DataError,
)
from audiences.core.records import pick
from audiences.core.state import connect, new_id, project_salt, transaction, utcnow
from audiences.crm.sources import Sources, load_sources
from audiences.pipeline.batches import platform_view
from audiences.pipeline.select import (
    candidate_keys,
    collect_candidates,
    links_opt_outs,
    select_segments,
    validate_against_data,
)
from connectors.file import record_exports

if TYPE_CHECKING:
    from audiences.compliance.approvals import Approval
    from audiences.segments import Segment
    from policies.gate import GateOutcome
    from policies.pack import Pack

Progress = Callable[[str, float], None]


@dataclass
class BuildResult:
    build_id: str
    segment: str
    segment_digest: str
    status: str  # released | blocked
    candidates: int
    released: dict[str, int] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    files: dict[str, dict[str, str]] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)
    policy_digest: str = ""
    seconds: float = 0.0
    outcome: GateOutcome | None = None  # releases for sync; not serialized
    # The marketer-facing size: a differentially private count (exact counts stay in
    # the compliance report and the state DB).
    noisy_members: dict[str, Any] | None = None

    @property
    def blocked(self) -> bool:
        return self.status == "blocked"

    def to_dict(self) -> dict[str, Any]:
        out = pick(self, "build_id segment segment_digest policy_digest status")
        out |= {"released_to": sorted(self.released), "members": self.noisy_members}
        return out | pick(self, "reasons files reports") | {"seconds": round(self.seconds, 3)}


def build(
    config: ProjectConfig,
    names: list[str] | None = None,
    *,
    as_of: date | None = None,
    actor: str | None = None,
    progress: Progress | None = None,
    dry_run: bool = False,
    full_refresh: bool = False,
) -> list[BuildResult]:
    """Build the named segments (all when ``names`` is empty).

    With ``dry_run`` the gate runs exactly as in a build but nothing is written: no
    build row, no release, no files, no report, no audit entry (``audiences plan``).
    ``as_of`` moves only the segment's own conditions, and only in a dry run: the rules
    that protect people always judge them on :func:`clock.today`, and a build that
    releases refuses any other day (docs/policy-rules.md, "What the gate defends against").
    ``full_refresh``: the sync that runs this build replaces its audiences in full (the
    gate's pattern check judges what it will send).
    """
    from policies.pack import load_pack

    today = clock.today() if dry_run else clock.release_day(as_of, what="a build that releases")
    as_of = as_of or today
    who = actor_name(actor)
    step = progress or (lambda _msg, _frac: None)
    segments = select_segments(config, names)
    step("loading sources", 0.02)
    sources = load_sources(config)
    validate_against_data(config, segments, sources, as_of)
    pack = load_pack(config)
    salt = project_salt(config.state_dir)
    conn = connect(config.state_db)
    results = []
    try:
        if not dry_run:
            record_pack_change(conn, pack, who)
        run = _BuildRun(
            config, conn, pack, sources, salt, as_of, today, who, step, dry_run, full_refresh
        )
        for i, segment in enumerate(segments):
            results.append(_build_segment(run, segment, i, len(segments)))
        step("done", 1.0)
    finally:
        conn.close()
    return results


def review(
    config: ProjectConfig,
    name: str,
    *,
    as_of: date | None = None,
    actor: str | None = None,
    key_path: Path | None = None,
) -> BuildResult:
    """The whole gate on current data, whatever the approval says; nothing is released.

    Writes the compliance report the officer reviews before signing (``audiences review``)
    and records a ``review`` build: ``audiences approve`` names it in the approval.
    Status ``reviewed`` (the gate passes) or ``blocked`` (a rule fails). A segment that
    needs an approval is reviewed by one of its approvers only (``key_path``: their
    private key), before anything is read (:func:`workflow.require_reviewer`).
    """
    from audiences.compliance.workflow import require_reviewer
    from policies.pack import load_pack

    today = clock.today()  # a review moves only the segment's conditions, never the rules'
    as_of = as_of or today
    who = actor_name(actor)
    (segment,) = select_segments(config, [name])
    pack = load_pack(config)
    conn = connect(config.state_db)
    try:
        require_reviewer(conn, config, segment, pack, by=who, key_path=key_path)
        sources = load_sources(config)
        validate_against_data(config, [segment], sources, as_of)
        run = _BuildRun(
            config,
            conn,
            pack,
            sources,
            project_salt(config.state_dir),
            as_of,
            today,
            who,
            lambda _msg, _frac: None,
            False,
        )
        started = time.perf_counter()
        build_id = new_id("v")
        _open_build(run, build_id, segment)
        candidates = collect_candidates(
            config,
            segment,
            sources,
            as_of,
            run.salt,
            link_opt_outs=links_opt_outs(pack),
            protect_on=today,
            pack=pack,
        )
        outcome = _gate(run, build_id, segment, candidates)
        result = _result(build_id, segment, candidates, outcome, pack, "reviewed")
        result.released = {d: r.members.height for d, r in outcome.releases.items()}
        result.outcome = None  # a review releases nothing
        report = {**outcome.report, "status": "blocked" if outcome.blocked else "reviewed"}
        report["review"] = {
            "build_id": build_id,
            "note": "a review: the gate ran on current data and nothing was released; "
            "the sizes are what a build would release now",
            "would_release": result.released,
        }
        result.reports = write_reports(config, build_id, report)
        result.seconds = time.perf_counter() - started
        _close_review(conn, who, result, sources.digest)
    finally:
        conn.close()
    return result


def _result(
    build_id: str,
    segment: Segment,
    candidates: pl.DataFrame,
    outcome: GateOutcome,
    pack: Pack,
    status: str,
) -> BuildResult:
    """The result of one segment's gate run: ``status`` unless the gate blocked it."""
    return BuildResult(
        build_id=build_id,
        segment=segment.name,
        segment_digest=segment.digest,
        status="blocked" if outcome.blocked else status,
        candidates=candidates.height,
        reasons=list(outcome.block_reasons),
        policy_digest=pack.digest,
        outcome=outcome,
    )


def _close_review(conn: sqlite3.Connection, actor: str, result: BuildResult, digest: str) -> None:
    """Record a finished review (status ``review`` / ``review_blocked``) and audit it."""
    status = "review_blocked" if result.blocked else "review"
    _close(conn, actor, result, status, "review", digest, {})


def latest_review(
    conn: sqlite3.Connection, segment: str, segment_digest: str, policy_digest: str
) -> dict[str, Any] | None:
    """The newest review of exactly this definition under this pack, or None."""
    row = conn.execute(
        "SELECT build_id, status, reasons, summary, finished_at FROM builds WHERE segment=? "
        "AND segment_digest=? AND policy_digest=? AND status IN ('review', 'review_blocked') "
        "ORDER BY finished_at DESC LIMIT 1",
        (segment, segment_digest, policy_digest),
    ).fetchone()
    if row is None:
        return None
    summary = json.loads(row[3] or "{}")
    return {
        "build_id": row[0],
        "status": "reviewed" if row[1] == "review" else "blocked",
        "reasons": json.loads(row[2] or "[]"),
        "destinations": summary.get("released_to", []),
        "at": row[4],
    }


@dataclass(frozen=True)
class _BuildRun:
    """What every segment of one build shares."""

    config: ProjectConfig
    conn: sqlite3.Connection
    pack: Pack
    sources: Sources
    salt: bytes
    as_of: date  # the segment's conditions (another day only in a dry run)
    today: date  # the protective rules' day: always the wall clock
    actor: str
    step: Progress
    dry_run: bool
    full_refresh: bool = False


def _build_segment(run: _BuildRun, segment: Segment, i: int, total: int) -> BuildResult:
    """One segment through the gate: blocked, released (and recorded), or a dry run."""
    started = time.perf_counter()
    build_id = new_id("b")
    run.step(f"{segment.name}: selecting members", (i + 0.1) / total)
    if not run.dry_run:
        _open_build(run, build_id, segment)
    try:
        approval_block, approval = _approval_block(run.conn, run.config, segment, run.pack)
        approval_block = approval_block or _files_taken_down(
            run.conn, run.config, segment, approval.at if approval is not None else None
        )
        if approval_block is not None:
            return _blocked_by_approval(run, build_id, segment, approval_block, started)
        candidates = collect_candidates(
            run.config,
            segment,
            run.sources,
            run.as_of,
            run.salt,
            link_opt_outs=links_opt_outs(run.pack),
            protect_on=run.today,
            pack=run.pack,
        )
        run.step(f"{segment.name}: policy gate", (i + 0.6) / total)
    except BaseException as exc:
        if not run.dry_run:
            _finish(run.conn, build_id, "failed", reasons=[_one_line(exc)])
        raise
    # from the difference check to the registration of this build's releases, no other
    # state on this OS account releases to the segment's accounts (custody.account_locks)
    with contextlib.nullcontext() if run.dry_run else release_lock(run.config, segment):
        try:
            outcome = _gate(run, build_id, segment, candidates)
            if approval is not None:  # the evidence: which signed approval allowed this build
                outcome.report["approval"] = approval_evidence(approval)
        except BaseException as exc:
            if not run.dry_run:
                _finish(run.conn, build_id, "failed", reasons=[_one_line(exc)])
            raise
        result = _result(build_id, segment, candidates, outcome, run.pack, "released")
        if run.dry_run:
            result.released = {d: r.members.height for d, r in outcome.releases.items()}
            result.seconds = time.perf_counter() - started
            return result
        try:
            _release(run, result, segment, outcome, (i + 0.8) / total)
        except BaseException as exc:
            # e.g. the disk fills while writing release files: the build must not
            # stay 'running' (history, status) — it failed, and says why.
            _finish(run.conn, build_id, "failed", reasons=[_one_line(exc)])
            raise
    result.seconds = time.perf_counter() - started
    _close_build(run.conn, run.actor, result, run.sources.digest)
    return result


def _open_build(run: _BuildRun, build_id: str, segment: Segment) -> None:
    """The build's 'running' row, before anything is selected."""
    with transaction(run.conn):
        run.conn.execute(
            "INSERT INTO builds(build_id, segment, segment_digest, policy_digest, "
            "source_digest, as_of, started_at, status, actor) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (
                build_id,
                segment.name,
                segment.digest,
                run.pack.digest,
                None,  # set when the build closes: it is hashed meanwhile
                run.as_of.isoformat(),
                utcnow(),
                "running",
                run.actor,
            ),
        )


def _blocked_by_approval(
    run: _BuildRun, build_id: str, segment: Segment, reason: str, started: float
) -> BuildResult:
    """The segment needs an approval it lacks: blocked before any member is selected."""
    result = BuildResult(
        build_id=build_id,
        segment=segment.name,
        segment_digest=segment.digest,
        status="blocked",
        candidates=0,
        reasons=[reason],
        policy_digest=run.pack.digest,
    )
    result.seconds = time.perf_counter() - started
    if not run.dry_run:
        from policies.gate import approval_block_report

        report = approval_block_report(
            build_id=build_id,
            segment=segment,
            config=run.config,
            pack=run.pack,
            as_of=run.as_of,
            actor=run.actor,
            reason=reason,
            record_exports=record_exports(run.config, segment.destinations),
        )
        result.reports = write_reports(run.config, build_id, report)
        _close_build(run.conn, run.actor, result, run.sources.digest)
    return result


def _gate(run: _BuildRun, build_id: str, segment: Segment, candidates: pl.DataFrame) -> GateOutcome:
    """The policy gate's verdicts and releases for the segment's candidates."""
    from policies.gate import GateInput, evaluate

    return evaluate(
        GateInput(
            build_id=build_id,
            segment=segment,
            config=run.config,
            pack=run.pack,
            candidates=candidates,
            destinations=list(segment.destinations),
            as_of=run.today,
            conn=run.conn,
            state_dir=run.config.state_dir,
            actor=run.actor,
            record_exports=record_exports(run.config, segment.destinations),
            shared_releases=shared_releases(run.salt),
            foreign_releases=foreign_releases(run.salt),
            synced_releases=synced_audiences(run.salt),
            platform_held=functools.partial(
                platform_view, run.conn, run.config, full_refresh=run.full_refresh
            ),
            coarse_memo=candidate_keys(run.sources),
        )
    )


def _release(
    run: _BuildRun, result: BuildResult, segment: Segment, outcome: GateOutcome, frac: float
) -> None:
    """Record a passing gate's releases, write its file destinations and the reports."""
    from policies.gate import record

    if not outcome.blocked:
        record(outcome, run.conn)
        share_releases(run.config, run.salt, outcome)
        result.released = {d: r.members.height for d, r in outcome.releases.items()}
        run.step(f"{segment.name}: writing release files", frac)
        result.files = write_file_destinations(
            run.config, outcome, result.build_id, segment, actor=run.actor
        )
        outcome.report["files_written"] = files_written(outcome, result.files, run.config.root)
        result.noisy_members = noisy_size(
            run.conn, outcome, run.pack, run.sources.digest, run.today, run.actor, run.config
        )
    result.reports = write_reports(run.config, result.build_id, outcome.report)


def record_pack_change(conn: sqlite3.Connection, pack: Pack, actor: str) -> None:
    """Audit the policy pack in force whenever its digest differs from the last one seen."""
    row = conn.execute(
        "SELECT details FROM audit WHERE kind='pack_change' ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    previous = json.loads(row[0]).get("digest") if row else None
    if previous == pack.digest:
        return
    _audit(
        conn,
        actor,
        "pack_change",
        pack.name,
        {
            "digest": pack.digest,
            "previous_digest": previous,
            "version": pack.version,
            "origin": pack.origin,
            "require_approval": pack.require_approval,
        },
    )


def noisy_size(
    conn: sqlite3.Connection,
    outcome: GateOutcome,
    pack: Pack,
    dataset: str,
    as_of: date,
    actor: str,
    config: ProjectConfig,
) -> dict[str, Any]:
    """The released people (over every destination) as a DP count, paid from the ledger."""
    from audiences.core.errors import BudgetExhausted
    from policies.privacy import dp
    from policies.privacy.ledger import PrivacyBudget, budget_policy, open_ledger

    epsilon = pack.budget.build_summary_epsilon
    if not epsilon:
        return {"withheld": "the policy pack spends no privacy budget on build summaries"}
    keys = pl.concat([r.members.select("member_key") for r in outcome.releases.values()])
    requested = PrivacyBudget(epsilon, 0.0)
    try:
        with open_ledger(config, budget_policy(pack)) as ledger:
            ledger.spend(dataset, requested, "build summary count", actor, as_of)
    except BudgetExhausted as exc:
        return {"withheld": f"privacy budget exhausted ({exc.what})"}
    _audit(
        conn,
        actor,
        "budget_spend",
        "build summary",
        {"query": "build summary count", "epsilon": epsilon, "dataset": dataset},
    )
    noisy = dp.dp_count(keys.lazy(), epsilon=epsilon, person="member_key")
    return {
        "value": noisy.shown,
        "ci95": [round(noisy.ci95_low), round(noisy.ci95_high)],
        "epsilon": epsilon,
    }


def _files_taken_down(
    conn: sqlite3.Connection, config: ProjectConfig, segment: Segment, approved_at: str | None
) -> str | None:
    """A file destination of the segment was taken down (its export folders deleted) and
    no approval was signed since: the build writes nothing again, as a sync adds nothing
    to a taken-down platform audience."""
    from audiences.pipeline.sync import taken_down_block

    for name in sorted(segment.destinations):
        if name in config.destinations and config.destination(name).kind == "file":
            down = taken_down_block(conn, segment.name, name, config, approved_at)
            if down is not None:
                return f"takedown: {down}"
    return None


def _approval_block(
    conn: sqlite3.Connection, config: ProjectConfig, segment: Segment, pack: Pack
) -> tuple[str | None, Approval | None]:
    """Why an approval-requiring build (to any destination, files included) may not run,
    or the approval that allows it (None when the pack requires none)."""
    from audiences.compliance import workflow as compliance
    from audiences.core.errors import ApprovalError

    if not segment.destinations:  # the gate would run for its report's exact figures only
        return (
            f"segment {segment.name!r} lists no destinations: a build releases nothing, and its "
            "report's exact figures would tell whether a named person is in it; `audiences "
            "preview` gives its size with noise",
            None,
        )
    if not compliance.approval_binds(conn, config, segment, pack):
        return None, None
    try:
        approval: Approval = compliance.check(conn, config, segment, pack)
    except ApprovalError as exc:
        return f"approval: {exc.message}", None
    return None, approval


def approval_evidence(approval: Approval) -> dict[str, Any]:
    """What a report says of the approval that allowed its build. ``check`` verified the
    signature against a trusted key, the digests and the audit chain before the build ran."""
    note = approval.note or ""
    review = next((w for w in note.split() if w.startswith("v-")), None)
    return {
        "approver": approval.approver,
        "key_id": approval.key_id,
        "at": approval.at,
        "note": note,
        "signature_verified": True,
        "segment_digest": approval.segment_digest,
        "policy_digest": approval.policy_digest,
        "destinations": list(approval.destinations),
        "review_build_id": review,
    }


def write_file_destinations(
    config: ProjectConfig,
    outcome: GateOutcome,
    build_id: str,
    segment: Segment,
    *,
    actor: str = "audiences",
) -> dict[str, dict[str, str]]:
    from connectors.file import FileConnector
    from connectors.registry import destination_config

    files: dict[str, dict[str, str]] = {}
    for name, release in outcome.releases.items():
        spec = config.destination(name)
        if spec.kind != "file":
            continue
        connector = FileConnector(name, destination_config(spec), root=config.root)
        manifest = {
            "build_id": build_id,
            "audience": release.opaque_name,
            "segment_digest": segment.digest,
            "policy_digest": release.policy_digest,
            "verdict_digest": release.verdict_digest,
            "members": release.members.height,
            "coverage": identifier_coverage(release.members),
            "created_at": utcnow(),
        }
        try:
            files[name] = connector.write(release, manifest)
            folder = connector.directory / release.opaque_name
            _remember_export(config, segment.name, name, folder, actor)
        except OSError as exc:
            # the manifest is written last: a folder without one is an unfinished release
            raise ConnectorError(
                f"destination {name!r}: cannot write the release files under "
                f"{connector.directory} ({exc.strerror or exc or type(exc).__name__})",
                "free disk space or fix the folder's permissions, then build again",
            ) from None
    return files


def _remember_export(
    config: ProjectConfig, segment: str, name: str, folder: Path, actor: str
) -> None:
    """The export folder is the file destination's live 'audience' (for takedown), recorded
    with its audit entry (``audit verify`` cross-checks audiences_remote with the log)."""
    try:
        where = str(folder.relative_to(config.root))
    except ValueError:
        where = str(folder)
    conn = connect(config.state_db)
    try:
        with transaction(conn):
            conn.execute(
                "INSERT OR REPLACE INTO audiences_remote(segment, destination, remote_id, "
                "created_at) VALUES (?,?,?,?)",
                (segment, name, where, utcnow()),
            )
            details = {"remote_id": where, "how": "exported"}
            _audit(conn, actor, "audience", f"{segment}->{name}", details)
    finally:
        conn.close()


def files_written(
    outcome: GateOutcome, files: dict[str, dict[str, str]], root: Path
) -> list[dict[str, Any]]:
    """Each file written: path, rows, identifier fields (for the report)."""
    out = []
    for name, paths in files.items():
        release = outcome.releases[name]
        fields = [c for c in release.members.columns if c != "member_key"]
        for fmt, path in paths.items():
            if fmt == "manifest":
                continue
            shown = Path(path)
            with contextlib.suppress(ValueError):
                shown = shown.relative_to(root)
            out.append(
                {
                    "destination": name,
                    "path": str(shown),
                    "format": fmt,
                    "rows": release.members.height,
                    "fields": fields,
                }
            )
    return out


def identifier_coverage(members: pl.DataFrame) -> dict[str, int]:
    """People with a usable value per identifier column (counts only)."""
    cols = [c for c in members.columns if c not in ("member_key",)]
    if not cols or members.height == 0:
        return {c: 0 for c in cols}
    row = members.select([pl.col(c).is_not_null().sum().alias(c) for c in cols]).row(0, named=True)
    return {k: int(v) for k, v in row.items()}


def write_reports(config: ProjectConfig, build_id: str, report: dict[str, Any]) -> dict[str, str]:
    from audiences.core.atomic import write_text
    from policies.report import render

    out = config.state_dir / "reports"
    paths = {}
    for fmt, suffix in (("json", "json"), ("md", "md"), ("html", "html")):
        target = out / f"{build_id}.{suffix}"
        write_text(target, render(report, fmt))
        paths[fmt] = str(target)
    return paths


def _close_build(
    conn: sqlite3.Connection, actor: str, result: BuildResult, source_digest: str
) -> None:
    """Record a finished build (released or blocked) in state and in the audit log."""
    extra = {"released": result.released}
    _close(conn, actor, result, result.status, "build", source_digest, extra)


def _close(
    conn: sqlite3.Connection,
    actor: str,
    result: BuildResult,
    status: str,
    kind: str,
    source_digest: str,
    extra: dict[str, Any],
) -> None:
    """The build row's final status and summary, then one audit entry of ``kind``."""
    _finish(
        conn,
        result.build_id,
        status,
        candidates=result.candidates,
        members=max(result.released.values(), default=0),
        reasons=result.reasons,
        summary=result.to_dict(),
        source_digest=source_digest,
    )
    details = pick(result, "build_id status segment_digest policy_digest")
    details |= {"source_digest": source_digest, **extra, "reasons": result.reasons}
    audit.append(conn, kind=kind, subject=result.segment, details=details, actor=actor)


def _audit(
    conn: sqlite3.Connection, actor: str, kind: str, subject: str, details: dict[str, Any]
) -> None:
    audit.append(conn, kind=kind, subject=subject, details=details, actor=actor)


def _finish(
    conn: sqlite3.Connection,
    build_id: str,
    status: str,
    *,
    candidates: int | None = None,
    members: int | None = None,
    reasons: list[str] | None = None,
    summary: dict[str, Any] | None = None,
    source_digest: str | None = None,
) -> None:
    with transaction(conn):
        conn.execute(
            "UPDATE builds SET status=?, finished_at=?, candidates=?, members=?, reasons=?, "
            "summary=?, source_digest=COALESCE(?, source_digest) WHERE build_id=?",
            (
                status,
                utcnow(),
                candidates,
                members,
                json.dumps(reasons or []),
                json.dumps(summary or {}, default=str),
                source_digest,
                build_id,
            ),
        )


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, AudiencesError):
        return exc.message
    return f"{type(exc).__name__}"


def report_path(config: ProjectConfig, build_id: str, fmt: str) -> Path:
    path = config.state_dir / "reports" / f"{build_id}.{fmt}"
    if not path.exists():
        raise DataError(
            f"no {fmt} report for build {build_id!r} in {path.parent}",
            "list builds with `audiences history SEGMENT` and pass a build id shown there",
        )
    return path


__all__ = ["BuildResult", "build", "collect_candidates", "report_path"]
