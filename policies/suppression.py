"""Suppression lists: people who must never be targeted, matched on normalized hashes.

A list is a CSV with one column of emails, phones or CRM ids. Each value is normalized
the way :mod:`audiences.crm.identifiers` normalizes it for upload (email: Meta's rule and
Google's, which also folds gmail dots and ``+tags``; phone: digits with the calling code
of ``default_country``; external id: trimmed) and hashed with SHA-256 inside one lazy
polars plan, so only hashes are ever materialized — raw values are never held in a
Python object. Candidates are hashed the same way and matched with a vectorized
``is_in``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from audiences.core.config import IdentityMapping
from audiences.core.errors import ConfigError, DataError
from audiences.crm.identifiers import normalized_layout, sha256_hex

Kind = Literal["email", "phone", "external_id"]

# identity field -> (layout, layout column) pairs whose normalized values are compared
_MATCH_ON: dict[str, tuple[tuple[str, str], ...]] = {
    "email": (("meta", "EMAIL"), ("google_ads", "hashed_email")),
    "phone": (("meta", "PHONE"),),
    "external_id": (("meta", "EXTERN_ID"),),
}


@dataclass(frozen=True)
class SuppressionSource:
    """One list as configured: path (resolved), column, kind, and where it was declared."""

    path: Path
    column: str
    kind: Kind
    declared_in: str

    def check(self) -> None:
        """Raise ConfigError if the file is missing or lacks the column (reads the header only)."""
        if not self.path.is_file():
            raise ConfigError(
                f"suppression list {self.path} does not exist",
                "create the file or fix its path (paths are relative to the project folder)",
                where=self.declared_in,
            )
        try:
            header = pl.read_csv(self.path, n_rows=0, infer_schema=False).columns
        except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"suppression list {self.path} is not a readable CSV ({type(exc).__name__})",
                "export it as UTF-8 CSV with a header row",
                where=self.declared_in,
            ) from None
        if self.column not in header:
            raise ConfigError(
                f"suppression list {self.path} has no column {self.column!r} "
                f"(columns: {', '.join(header) or 'none'})",
                "set `column` to the header of the column holding the "
                f"{self.kind.replace('_', ' ')}s",
                where=self.declared_in,
            )


@dataclass(frozen=True)
class SuppressionSet:
    """Hashes of suppressed identifiers, per identity field (no raw values)."""

    hashes: dict[str, pl.Series]  # identity field -> unique SHA-256 hex
    entries: dict[str, int]  # "path" -> usable entries (counts only)

    @classmethod
    def load(cls, sources: Sequence[SuppressionSource], default_country: str) -> SuppressionSet:
        per_field: dict[str, list[pl.Series]] = {}
        entries: dict[str, int] = {}
        for source in sources:
            source.check()
            hashed = _hash_list(source, default_country)
            entries[str(source.path)] = hashed.height
            for column in hashed.columns:
                per_field.setdefault(source.kind, []).append(hashed.get_column(column))
        hashes = {
            kind: pl.concat(series).drop_nulls().unique().rename("hash")
            for kind, series in per_field.items()
        }
        return cls(hashes=hashes, entries=entries)

    @property
    def empty(self) -> bool:
        return not any(s.len() for s in self.hashes.values())

    def mask(self, candidates: pl.DataFrame, identity: IdentityMapping) -> pl.Series:
        """Boolean Series: True for candidate rows matching any suppressed identifier."""
        if self.empty or candidates.height == 0:
            return pl.Series("suppressed", [False] * candidates.height, dtype=pl.Boolean)
        conditions: list[pl.Expr] = []
        schema = candidates.schema
        staged = candidates.lazy()
        for kind, hashes in self.hashes.items():
            column = getattr(identity, kind)
            if column is None or hashes.len() == 0:
                continue
            if column not in schema:
                raise DataError(
                    f"[identity] maps {kind} to column {column!r}, which the candidates lack",
                    f"map {kind} to a contacts column",
                )
            only = IdentityMapping(
                **{kind: column}, country=identity.country, default_country=identity.default_country
            )
            for layout, layout_column in _MATCH_ON[kind]:
                # normalized_layout stages intermediate values as columns (the inline
                # expressions are many times slower on phones)
                name = f"__suppress_{len(conditions)}"
                keep = staged.collect_schema().names()
                staged = normalized_layout(staged, only, layout, keep=keep).select(  # type: ignore[arg-type]
                    *keep, pl.col(layout_column).alias(name)
                )
                conditions.append(sha256_hex(pl.col(name)).is_in(hashes.implode()).fill_null(False))
        if not conditions:
            return pl.Series("suppressed", [False] * candidates.height, dtype=pl.Boolean)
        return (
            staged.select(pl.any_horizontal(conditions).alias("suppressed")).collect().to_series()
        )


def _hash_list(source: SuppressionSource, default_country: str) -> pl.DataFrame:
    """One lazy plan: read the column, normalize, hash. Only hashes come out."""
    identity = IdentityMapping(**{source.kind: "value"}, default_country=default_country)
    lf = pl.scan_csv(source.path, infer_schema=False).select(pl.col(source.column).alias("value"))
    exprs = []
    for layout, col in _MATCH_ON[source.kind]:
        staged = normalized_layout(lf, identity, layout)  # type: ignore[arg-type]
        exprs.append(staged.select(sha256_hex(pl.col(col)).alias(col)))
    try:
        return pl.concat(exprs, how="horizontal").collect()
    except pl.exceptions.PolarsError as exc:
        raise DataError(
            f"suppression list {source.path} can't be read ({type(exc).__name__})",
            "export it as UTF-8 CSV with a header row",
        ) from None


def sources_from(
    entries: Iterable[tuple[str, str, str]], root: Path, declared_in: str
) -> list[SuppressionSource]:
    """Resolve (path, column, kind) entries relative to the project folder."""
    out = []
    for path, column, kind in entries:
        p = Path(path).expanduser()
        out.append(
            SuppressionSource(
                path=p if p.is_absolute() else root / p,
                column=column,
                kind=kind,  # type: ignore[arg-type]
                declared_in=declared_in,
            )
        )
    return out


__all__ = ["SuppressionSet", "SuppressionSource", "sources_from"]
