"""The ``file`` destination: hashed release files (Parquet and CSV) plus a manifest.

Files are written to a temp name and renamed, 0600, so a crash never leaves a
half-written export and other local users can't read it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import Field

from audiences.atomic import write_text, write_with
from connectors.base import Capabilities, Connector, DestinationConfig


class FileDestinationConfig(DestinationConfig):
    kind: Literal["file"] = "file"
    path: str = "exports"
    formats: list[Literal["parquet", "csv"]] = Field(default_factory=lambda: ["parquet", "csv"])
    layouts: list[Literal["meta", "google_ads"]] = Field(
        default_factory=lambda: ["meta", "google_ads"]
    )


class FileConnector(Connector):
    kind: ClassVar[str] = "file"
    config_model: ClassVar[type[DestinationConfig]] = FileDestinationConfig
    capabilities: ClassVar[Capabilities] = Capabilities(add=False, remove=False, replace=True)
    layout: ClassVar[str | None] = None

    config: FileDestinationConfig

    def __init__(self, name: str, config: DestinationConfig, *, root: Path | None = None) -> None:
        super().__init__(name, config)
        self.root = root or Path(".")

    @property
    def directory(self) -> Path:
        return Path(self.resolve(self.config.path))

    def account(self) -> str:
        return f"local:{self.config.path}"

    def write(self, release: Any, manifest: dict[str, Any]) -> dict[str, str]:
        """Write a gate-made release; returns the paths written, by format."""
        from policies.release import require_release

        require_release(release)
        out = self.directory / release.segment / release.build_id
        members: pl.DataFrame = release.members.drop("member_key", strict=False)
        written: dict[str, str] = {}
        if "parquet" in self.config.formats:
            target = out / "members.parquet"
            write_with(target, lambda tmp: members.write_parquet(tmp))
            written["parquet"] = str(target)
        if "csv" in self.config.formats:
            target = out / "members.csv"
            write_with(target, lambda tmp: members.write_csv(tmp))
            written["csv"] = str(target)
        manifest = {**manifest, "files": written}
        target = out / "manifest.json"
        write_text(target, json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        written["manifest"] = str(target)
        return written
