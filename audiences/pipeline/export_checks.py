"""Checks of the whole export, once per export: every value of a column with a declared
type parses as that type (a CSV's dates, flags, numbers), every contact has an id, and no
two contacts share one.

They used to happen on a segment's rows only. The id check counted the rows *of this
segment* without an id or sharing one, and a strict parse of a declared type ran on the
rows left after the segment's filters (polars pushes a filter below the parse). A segment
narrowed to one person ("this email and this diagnosis") then failed, or went on to
"fewer than k", depending on that person's record: an exact answer about a record the
caller may not see, with no budget, no k and no audit (the same kind of oracle as
``validate``'s "selects nobody", ``docs/segments.md``). Run over the whole export, the
checks fail every build, preview and overlap of a broken export alike, with the same
words, whatever the segment.

An export that passed is remembered in ``.audiences/export-checks.json``: each source
file's size, modification and change times, inode and device (database tables: their
digest) and the sources' settings, authenticated with HMAC-SHA256 under a key derived
from the project secret (``record.key``). A night of builds over one export checks it
once (10M Parquet contacts, whose types are stored: about 0.5 s, the ids' 64-bit hashes
counted; the exact count only when those collide). A record that is missing, damaged,
forged or of another export is not trusted: the export is checked again. The candidates'
ids are still checked after they are collected; should they show a problem the record
said was not there, the whole export is checked again, so the error is the whole
export's in any case.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import polars as pl

from audiences.core.atomic import write_text
from audiences.core.config import ProjectConfig, SourceConfig
from audiences.core.errors import DataError
from audiences.crm.sources import Sources, diagnose_values, file_stamp
from audiences.pipeline import state_record

__all__ = ["CHECKS_NAME", "check_whole_export", "id_error", "id_problems", "whole_export_error"]

CHECKS_NAME = "export-checks.json"
_KEEP = 8  # exports remembered (a project reading a few exports in turn)
_CACHE_KEY = "export-checked"


def id_problems(contacts: pl.LazyFrame, column: str) -> tuple[int, int]:
    """(rows without an id, rows whose id another row has too) over all of ``contacts``.

    Distinct ids are counted on their 64-bit hashes (10M string ids: 0.45 s against 1.7 s
    for the strings); equal ids hash alike, so as many hashes as ids proves the ids
    distinct, and only fewer (duplicates, or a collision) asks for the exact count."""
    ids = pl.col(column).drop_nulls()
    row = (
        contacts.select(
            pl.len().alias("rows"),
            pl.col(column).null_count().alias("missing"),
            ids.hash(7, 11, 13, 17).n_unique().alias("distinct"),
        )
        .collect()  # (the in-memory engine: 0.45 s at 10M contacts, streaming 0.7-0.9 s)
        .row(0, named=True)
    )
    present = row["rows"] - row["missing"]
    if row["distinct"] == present:
        return row["missing"], 0
    shared = contacts.select(ids.is_duplicated().sum()).collect().item()
    return row["missing"], int(shared)


def whole_export_error(config: ProjectConfig, sources: Sources) -> DataError | None:
    """The whole export's first problem (a value that does not parse as its declared
    type, then a missing or shared contact id), or ``None`` when it has none."""
    named: list[tuple[str, pl.LazyFrame, SourceConfig]] = [
        ("contacts", sources.contacts, config.sources.contacts)
    ]
    if sources.events is not None and config.sources.events is not None:
        named.append(("events", sources.events, config.sources.events))
    for name, frame, source in named:
        parsed = sources.parsed.get(name, ())
        if not parsed:
            continue
        try:  # every value of every parsed column, not only a segment's rows
            frame.select(pl.col(parsed).null_count()).collect()
        except pl.exceptions.PolarsError as exc:
            return diagnose_values(name, source, config, exc)
    return id_error(config, sources)


def id_error(config: ProjectConfig, sources: Sources) -> DataError | None:
    """The error of the whole contacts export's ids (missing, shared), or ``None``."""
    cid = config.sources.contacts.id
    table = sources.tables.get("contacts")
    if table is not None:  # counted in the database
        from audiences.crm.databases import id_counts

        missing, shared = id_counts("contacts", table.database, table.table, cid)
    else:
        missing, shared = id_problems(sources.contacts, cid)
    if missing:
        return DataError(
            f"source 'contacts' has {missing} row(s) without an id in column {cid!r}",
            "every CRM record needs an id; fix the export or point [sources.contacts].id at "
            "a column that is always filled",
        )
    if shared:
        return DataError(
            f"source 'contacts' has duplicate ids in column {cid!r} ({shared} rows share "
            "an id with another row)",
            "each CRM record needs a unique id; deduplicate the export or point "
            "[sources.contacts].id at the unique key",
        )
    return None


def check_whole_export(config: ProjectConfig, sources: Sources) -> None:
    """Raise the whole export's error, if it has one: once per export (see the module
    docstring), whatever the segment about to be collected."""
    if sources.cache.get(_CACHE_KEY):
        return
    stamp = _stamp(config, sources)
    if stamp in _checked(config.state_dir):
        sources.cache[_CACHE_KEY] = True
        return
    error = whole_export_error(config, sources)
    if error is not None:
        raise error
    _remember(config.state_dir, stamp)
    sources.cache[_CACHE_KEY] = True


def _stamp(config: ProjectConfig, sources: Sources) -> dict[str, Any]:
    """Which export was checked, and how it is read: each source file's stamp (a rewrite
    changes its change time), the database tables' digest, and the sources' settings (the
    id column, the declared types). Not the files' digest: on the first build of an export
    it is still being computed in the background, and waiting for it here would stop the
    build for as long (about 2 s at 10M contacts)."""
    named: list[SourceConfig] = [config.sources.contacts]
    if config.sources.events is not None:
        named.append(config.sources.events)
    stamp: dict[str, Any] = {
        "sources": [s.model_dump(mode="json") for s in named],
        "files": [file_stamp(config.path(s.path)) if s.path is not None else [] for s in named],
    }
    if any(s.path is None for s in named):
        stamp["digest"] = sources.digest
    return stamp


def _key(state_dir: Path) -> bytes:
    return state_record.derived_key(
        state_record.project_secret(state_dir), b"audiences export checks", b"file mac"
    )


def _mac(state_dir: Path, checked: list[dict[str, Any]]) -> str:
    text = json.dumps(checked, sort_keys=True, separators=(",", ":"))
    return hmac.new(_key(state_dir), text.encode(), hashlib.sha256).hexdigest()


def _checked(state_dir: Path) -> list[dict[str, Any]]:
    """The exports recorded as checked, or none when the record is missing or not
    authentic (then every export is checked again)."""
    path = state_dir / CHECKS_NAME
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        checked, mac = body["checked"], body["mac"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(checked, list) or not isinstance(mac, str):
        return []
    if not hmac.compare_digest(mac, _mac(state_dir, checked)):
        return []
    return checked


def _remember(state_dir: Path, stamp: dict[str, Any]) -> None:
    others = [s for s in _checked(state_dir) if s != stamp]
    checked = [*others[-(_KEEP - 1) :], stamp]
    body = {"v": 1, "checked": checked, "mac": _mac(state_dir, checked)}
    # a cache: lost or damaged, the export is checked again
    write_text(state_dir / CHECKS_NAME, json.dumps(body, sort_keys=True), durable=False)
