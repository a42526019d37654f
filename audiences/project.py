"""Project scaffolding (`audiences init`) and whole-project validation (`audiences validate`)."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from audiences.config import CONFIG_FILE, ProjectConfig
from audiences.errors import ConfigError


def init_project(directory: Path, *, force: bool = False) -> list[Path]:
    """Copy the project template into ``directory``; never overwrites without ``force``."""
    directory = Path(directory)
    if (directory / CONFIG_FILE).exists() and not force:
        raise ConfigError(
            f"{directory / CONFIG_FILE} already exists",
            "pick an empty folder, or pass --force to overwrite the template files",
        )
    template = resources.files("audiences") / "templates" / "project"
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


def validate_project(
    config: ProjectConfig, *, as_of: date | None = None, only: list[str] | None = None
) -> dict[str, Any]:
    """Load the pack and the segments (all, or ``only``), and check them against the data."""
    from audiences.build import select_segments, validate_against_data
    from audiences.insights import default_epsilon, dimensions
    from audiences.sources import load_sources
    from policies.pack import load_pack

    as_of = as_of or datetime.now(UTC).date()
    pack = load_pack(config)
    default_epsilon(config, pack)
    segments = select_segments(config, only)
    sources = load_sources(config)
    validate_against_data(config, segments, sources, as_of)
    dimensions(config, sources.contacts.collect_schema())
    return {
        "pack": {"name": pack.name, "version": pack.version, "digest": pack.digest},
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
