"""Project scaffolding (`audiences init`) and whole-project validation (`audiences validate`)."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiences.core.config import CONFIG_FILE, ProjectConfig
from audiences.core.errors import ConfigError, DataError, SegmentError

if TYPE_CHECKING:
    from audiences.crm.sources import Sources
    from audiences.segments import Segment
    from policies.pack import Pack


def init_project(directory: Path, *, force: bool = False) -> list[Path]:
    """Copy the project template into ``directory``; never overwrites without ``force``."""
    directory = Path(directory)
    if (directory / CONFIG_FILE).exists() and not force:
        raise ConfigError(
            f"{directory / CONFIG_FILE} already exists",
            "pick an empty folder, or pass --force to overwrite the template files",
        )
    template = resources.files("audiences.pipeline") / "templates" / "project"
    written: list[Path] = []
    with resources.as_file(template) as source:
        for path in sorted(Path(source).rglob("*")):
            if path.is_dir() or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(source)
            name = ".gitignore" if rel.name == "gitignore" else rel.name
            target = directory / rel.parent / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            written.append(target)
    return written


def check_event_types(config: ProjectConfig, segments: list[Segment], sources: Sources) -> None:
    """A segment naming an event type no event has (a typo like `vist`) selects nobody:
    refuse it here, with the closest type that exists. Reads one column of the events."""
    problems = event_type_problems(config, segments, sources)
    if problems:
        raise problems[0]


def event_type_problems(
    config: ProjectConfig, segments: list[Segment], sources: Sources
) -> list[SegmentError]:
    """Every event type a segment names that no event in the data has."""
    import difflib

    import polars as pl

    if sources.events is None or config.sources.events is None:
        return []
    wanted = {t: s for s in segments for t in s.references(config.identity.birth_date).event_types}
    if not wanted:
        return []
    column = config.sources.events.type
    present = set(
        sources.events.select(pl.col(column).cast(pl.String).unique())
        .collect()
        .to_series()
        .drop_nulls()
        .to_list()
    )
    problems = []
    for event_type, segment in sorted(wanted.items()):
        if event_type not in present:
            close = difflib.get_close_matches(event_type, sorted(present), n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else (f"event types in the data: {', '.join(sorted(present)[:12])}")
            )
            problems.append(
                SegmentError(
                    f"segment {segment.name!r} uses event type {event_type!r}, which no event "
                    f"in the data has (it would select nobody)",
                    hint,
                    where=segment.source or segment.name,
                )
            )
    return problems


def check_sensitive_present(config: ProjectConfig, sources: Sources) -> list[str]:
    """Refuse a configured sensitive event type or column that never occurs in the data (a
    misspelling leaves the real one unprotected); return warnings about undeclared contacts
    columns whose names suggest data derived from sensitive ones."""
    import polars as pl

    from policies.rules import DERIVED_HINTS, classified_columns, sensitivity_key

    contacts = list(sources.contacts.collect_schema().names())
    _require_names("[columns] sensitive", config.columns.sensitive, contacts)
    events = config.sources.events
    if events is not None and sources.events is not None:
        _require_names(
            "[sources.events] sensitive_columns",
            events.sensitive_columns,
            list(sources.events.collect_schema().names()),
        )
        present = (
            sources.events.select(pl.col(events.type).cast(pl.String).unique())
            .collect()
            .to_series()
            .drop_nulls()
            .to_list()
        )
        _require_names("[sources.events] sensitive_types", events.sensitive_types, present)
    known = classified_columns(config)
    return [
        f"contacts column {c!r} looks derived from health data but is not classified: add it "
        "to [columns] sensitive (or not_sensitive if it is not)"
        for c in contacts
        if sensitivity_key(c) not in known and any(h in sensitivity_key(c) for h in DERIVED_HINTS)
    ]


def _require_names(setting: str, wanted: list[str], present: list[str]) -> None:
    from policies.rules import sensitivity_key

    keys = {sensitivity_key(p) for p in present}
    missing = [w for w in wanted if sensitivity_key(w) not in keys]
    if missing:
        shown = ", ".join(sorted(present)[:12]) or "none"
        raise ConfigError(
            f"{setting} lists {missing}, which never occur in the data (present: {shown})",
            "fix the spelling, or remove the entry if the data really has none",
        )


def validate_project(
    config: ProjectConfig, *, as_of: date | None = None, only: list[str] | None = None
) -> dict[str, Any]:
    """:func:`check_project`, raising its first error (for commands that validate first)."""
    report = check_project(config, as_of=as_of, only=only)
    errors = report["errors"]
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem(s): run `audiences validate`)"
        where = f"{first['file']}:{first['line']}" if first["line"] else first["file"]
        raise DataError(
            first["message"], first["fix"] + (more if len(errors) > 1 else ""), where=where
        )
    return report


def check_project(
    config: ProjectConfig, *, as_of: date | None = None, only: list[str] | None = None
) -> dict[str, Any]:
    """Load the pack and the segments (all, or ``only``), and check them against the
    data: every problem of every file, as errors and warnings (see docs/segments.md)."""
    from audiences.pipeline.validation import Validation

    run = Validation(config, as_of or datetime.now(UTC).date())
    pack = run.pack()
    segments = run.segments(only)
    sources = run.sources()
    if sources is not None:
        run.against_data(segments, sources, k=min_size_k(pack))
        run.sensitivity(segments, sources, pack)
    run.destinations()
    return {
        "ok": not run.errors,
        "errors": [f.to_dict() for f in run.errors],
        "warnings": [f.to_dict() for f in run.warnings],
        "pack": {"name": pack.name, "version": pack.version, "digest": pack.digest}
        if pack is not None
        else None,
        "segments": [
            {
                "name": s.name,
                "file": s.source or "",
                "digest": s.digest,
                "destinations": list(s.destinations),
            }
            for s in segments
        ],
    }


def min_size_k(pack: Pack | None) -> int:
    """The pack's minimum release size (the ``k`` below which values are never shown)."""
    for rule in pack.rules if pack is not None else ():
        if rule.kind == "min_size":
            return int(getattr(rule.params, "k", 100))
    return 100
