"""The ``file`` destination: hashed release files (Parquet and CSV) plus a manifest.

Two kinds of file export:

* **hashed identifiers** (the default): one row per member with the hashed identifier
  columns of each layout in ``layouts`` — for uploading by hand to an ad platform;
* **record-level** (``attributes`` + ``anonymity``; docs/privacy-insights.md, section 2):
  one row per member with *generalized* attribute columns (age band, ZIP3, sex ...) and
  optionally one sensitive column, k-anonymous (optionally l-diverse / t-close) as the policy gate made
  them with :func:`policies.privacy.anonymize.anonymize`. Such a file carries **no identifier at
  all** — no hashed email, no member key: a hashed email next to attributes re-identifies
  the row for anyone who holds that email, which would undo the k-anonymity. Asking for
  ``layouts`` together with ``attributes`` is a configuration error.

``[destinations.agency]`` example::

    kind = "file"
    path = "exports/agency"
    formats = ["csv"]
    attributes = {age = "age", zip = "zip", sex = "categorical"}
    anonymity = {k = 10, l = 2, sensitive = "insurance_type", suppression_limit = 0.05}

``attributes`` maps a candidate column to its generalization hierarchy (``age``, ``zip``,
``date``, ``categorical``; see :data:`policies.privacy.anonymize.HIERARCHIES`). Every attribute
must be a declared quasi-identifier (``[columns] quasi_identifiers``; the derived ``age``
counts as one when the birth-date column is declared) and none may be a declared sensitive
column: a sensitive value is exported only as ``anonymity.sensitive``, and only under
l-diversity or t-closeness (checked by :func:`record_export` when the gate runs).

Files are written to a temp name and renamed, 0600, so a crash never leaves a
half-written export and other local users can't read it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import polars as pl
from pydantic import Field, model_validator

from audiences.core.atomic import write_text, write_with
from audiences.core.errors import ConfigError, InternalError
from connectors.base import Capabilities, Connector, DestinationConfig
from policies.privacy.record_level import AnonymityModel, HierarchyName, RecordLevel, check_roles

if TYPE_CHECKING:
    from audiences.core.config import ProjectConfig


class FileDestinationConfig(DestinationConfig):
    kind: Literal["file"] = "file"
    path: str = "exports"
    formats: list[Literal["parquet", "csv"]] = Field(
        default_factory=lambda: list[Literal["parquet", "csv"]](["parquet", "csv"])
    )
    layouts: list[Literal["meta", "google_ads"]] = Field(
        default_factory=lambda: list[Literal["meta", "google_ads"]](["meta", "google_ads"])
    )
    attributes: dict[str, HierarchyName] = Field(
        default_factory=dict,
        description="record-level export: candidate column → generalization hierarchy",
    )
    anonymity: AnonymityModel | None = None
    # which platform the file is for: that platform's destination rules apply to it
    target: Literal["meta", "google_ads", "other"] = Field(default="other", alias="for")

    @model_validator(mode="after")
    def _record_level(self) -> FileDestinationConfig:
        if self.anonymity is not None and not self.attributes:
            raise ConfigError(
                "anonymity is set but no attributes are exported",
                'add attributes = {column = "hierarchy", ...} or remove anonymity',
            )
        if not self.attributes:
            return self._hashed()
        if self.anonymity is None:
            raise ConfigError(
                "a record-level export (attributes) needs an anonymity model",
                "add anonymity = {k = 10, suppression_limit = 0.05} (k >= 2)",
            )
        if "layouts" in self.model_fields_set:
            raise ConfigError(
                "a record-level export (attributes) carries no identifiers, so it takes no "
                "layouts: hashed identifiers next to attributes re-identify every row",
                "remove layouts (or use a second file destination without attributes)",
            )
        if self.anonymity.sensitive in self.attributes:
            raise ConfigError(
                f"{self.anonymity.sensitive!r} is both an attribute and the sensitive column",
                "list it only as anonymity.sensitive",
            )
        return self

    def _hashed(self) -> FileDestinationConfig:
        """A file of hashed identifiers carries at least one layout, and the layout of the
        platform it is for (the gate counts and releases only the people that layout names
        to that platform: with no such layout, no one)."""
        if not self.layouts:
            raise ConfigError(
                "layouts is empty: a file of hashed identifiers needs at least one layout",
                'set layouts = ["meta"], ["google_ads"] or both (the default)',
            )
        if self.target != "other" and self.target not in self.layouts:
            raise ConfigError(
                f"the file is for {self.target} but its layouts ({', '.join(self.layouts)}) "
                "do not carry that platform's identifiers",
                f'add "{self.target}" to layouts, or change for',
            )
        return self

    @property
    def record_level(self) -> bool:
        return bool(self.attributes)


def record_export(config: ProjectConfig, name: str) -> RecordLevel | None:
    """The validated settings of ``name`` if it is a record-level file export, else None.

    Checks the export against the project's column roles: every attribute a declared
    quasi-identifier, none a declared sensitive column, the sensitive column not a
    quasi-identifier. Raises ConfigError naming the destination.
    """
    from connectors.registry import destination_config

    spec = config.destination(name)
    if spec.kind != "file":
        return None
    try:
        settings = destination_config(spec)
    except ConfigError as exc:
        raise ConfigError(f"[destinations.{name}] {exc.what}", exc.fix) from None
    assert isinstance(settings, FileDestinationConfig)
    if not settings.record_level:
        return None
    assert settings.anonymity is not None  # FileDestinationConfig requires it with attributes
    return check_roles(RecordLevel(name, dict(settings.attributes), settings.anonymity), config)


def record_exports(config: ProjectConfig, names: Iterable[str]) -> dict[str, RecordLevel]:
    """The record-level exports among destinations ``names``, checked (for the gate)."""
    found = {name: record_export(config, name) for name in names}
    return {name: settings for name, settings in found.items() if settings is not None}


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
        from policies.release import FILE_ACCOUNT

        return FILE_ACCOUNT

    def write(self, release: Any, manifest: dict[str, Any]) -> dict[str, str]:
        """Write a gate-made release; returns the paths written, by format.

        Everything is written into a hidden temp folder beside the target, then renamed
        into place in one step: a reader (or the next run after a crash) sees either the
        complete export with its manifest or nothing.
        """
        from policies.release import require_release

        require_release(release)
        if release.purpose != "release":
            raise InternalError("a removal-only release is never written to a file")
        # the folder carries the audience's opaque name, never the segment's
        out = self.directory / release.opaque_name / release.build_id
        if out.exists():
            raise InternalError(f"export folder {out} already exists (build ids are unique)")
        out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=f".{release.build_id}.", dir=out.parent))
        try:
            names = self._write_files(release, manifest, staging)
            os.replace(staging, out)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return {kind: str(out / name) for kind, name in names.items()}

    def _write_files(self, release: Any, manifest: dict[str, Any], folder: Path) -> dict[str, str]:
        from policies.release import require_release

        require_release(release)  # checked again here: the private path is no way around
        # member_key is for state (difference checks) only: never written out
        members: pl.DataFrame = release.members.drop("member_key", strict=False)
        # plain text labels in the files (record-level exports hold them as Enum in memory)
        members = members.with_columns(pl.col(pl.Enum, pl.Categorical).cast(pl.String))
        names: dict[str, str] = {}
        writers: list[tuple[str, str, Callable[[Path], object]]] = []
        if "parquet" in self.config.formats:
            # zstd level 1: hex digests barely compress further at level 3 (72 vs 69 MB for
            # 451k members) and it writes in half the time
            writers.append(
                (
                    "parquet",
                    "members.parquet",
                    lambda tmp: members.write_parquet(tmp, compression="zstd", compression_level=1),
                )
            )
        if "csv" in self.config.formats:
            writers.append(("csv", "members.csv", lambda tmp: members.write_csv(tmp)))
        # polars writes without the GIL: the formats are written side by side
        with ThreadPoolExecutor(max_workers=max(1, len(writers))) as pool:
            # not flushed to disk (durable=False, see audiences.core.atomic): 0.5 GB for a 10M
            # CRM's release; after a power loss mid-write, build again
            jobs = [
                pool.submit(write_with, folder / name, write, durable=False)
                for _, name, write in writers
            ]
            for job in jobs:
                job.result()
        names.update({kind: name for kind, name, _ in writers})
        final = self.directory / release.opaque_name / release.build_id
        manifest = {**manifest, "files": {k: str(final / v) for k, v in names.items()}}
        if self.config.record_level:
            assert self.config.anonymity is not None
            manifest["record_level"] = {
                "attributes": dict(self.config.attributes),
                "anonymity": self.config.anonymity.model_dump(),
                "columns": members.columns,
            }
        text = json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
        write_text(folder / "manifest.json", text, durable=False)
        names["manifest"] = "manifest.json"
        return names
