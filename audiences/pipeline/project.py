"""Project scaffolding (`audiences init`) and whole-project validation (`audiences validate`)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiences.core.config import CONFIG_FILE, ProjectConfig
from audiences.core.errors import ConfigError, DataError

if TYPE_CHECKING:
    from policies.pack import Pack


def init_project(directory: Path, *, force: bool = False) -> list[Path]:
    """Copy the project template into ``directory``; never overwrites without ``force``."""
    directory = Path(directory)
    if (directory / CONFIG_FILE).exists() and not force:
        raise ConfigError(
            f"{directory / CONFIG_FILE} already exists",
            "pick an empty folder, or pass --force to overwrite the template files",
        )
    return copy_template(directory)


def copy_template(directory: Path, *, skip: tuple[str, ...] = ()) -> list[Path]:
    """Copy the project template's files into ``directory`` (``skip``: top-level names)."""
    template = resources.files("audiences.pipeline") / "templates" / "project"
    written: list[Path] = []
    with resources.as_file(template) as source:
        for path in sorted(Path(source).rglob("*")):
            if path.is_dir() or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(source)
            if rel.parts[0] in skip:
                continue
            name = ".gitignore" if rel.name == "gitignore" else rel.name
            target = directory / rel.parent / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            written.append(target)
    return written


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
    config: ProjectConfig,
    *,
    as_of: date | None = None,
    only: list[str] | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """Load the pack and the segments (all, or ``only``), and check them against the
    data: every problem of every file, as errors and warnings (see docs/segments.md)."""
    from audiences.pipeline.validation import Validation

    step = progress or (lambda _msg, _frac: None)
    run = Validation(config, as_of or datetime.now(UTC).date())
    step("policy pack and segments", 0.05)
    pack = run.pack()
    segments = run.segments(only)
    step("reading sources and checking their values", 0.2)
    sources = run.sources()
    if sources is not None:
        step(f"checking {len(segments)} segment(s) against the data", 0.6)
        run.against_data(segments, sources, k=min_size_k(pack))
        run.sensitivity(segments, sources, pack)
    run.unclassified()
    run.destinations()
    run.google_consent()
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
