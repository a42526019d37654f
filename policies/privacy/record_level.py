"""Record-level exports: the privacy model a file of generalized attributes must meet.

A record-level export (``attributes`` + ``anonymity`` on a ``file`` destination) releases
one row per person with *generalized* attributes and no identifier at all. The gate
anonymizes those rows (:func:`policies.privacy.anonymize.anonymize`) before they can be
released; this module holds the settings it judges them by, and the check of those
settings against the project's column roles (quasi-identifiers, sensitive columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from audiences.core.errors import ConfigError

if TYPE_CHECKING:
    from audiences.core.config import ProjectConfig

HierarchyName = Literal["age", "zip", "date", "categorical"]
_FIX_TABLE = "see docs/privacy-insights.md, 'Record-level exports'"


class AnonymityModel(BaseModel):
    """The privacy model a record-level export must meet (see policies.privacy.anonymize)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    k: int = Field(ge=2, description="every released row shares its attributes with k-1 others")
    l: int | None = Field(None, ge=2, description="distinct sensitive values per class")  # noqa: E741
    t: float | None = Field(None, gt=0, le=1, description="max class distance (total variation)")
    sensitive: str | None = Field(None, min_length=1)
    suppression_limit: float = Field(0.05, ge=0, lt=1)

    @model_validator(mode="after")
    def _sensitive_needs_protection(self) -> AnonymityModel:
        if (self.l is not None or self.t is not None) and self.sensitive is None:
            raise ConfigError(
                "anonymity sets l or t but names no sensitive column",
                'add anonymity.sensitive = "<column>" (e.g. insurance_type)',
            )
        if self.sensitive is not None and self.l is None and self.t is None:
            raise ConfigError(
                f"anonymity.sensitive = {self.sensitive!r} would export that column under "
                "k-anonymity alone (a class where everyone shares the value discloses it)",
                "add anonymity.l (e.g. 2) and/or anonymity.t (e.g. 0.3), or drop sensitive",
            )
        return self


@dataclass(frozen=True)
class RecordLevel:
    """What one record-level export releases: attribute → hierarchy, under ``anonymity``."""

    destination: str
    attributes: dict[str, HierarchyName]
    anonymity: AnonymityModel


def check_roles(settings: RecordLevel, config: ProjectConfig) -> RecordLevel:
    """Check an export against the project's column roles: every attribute a declared
    quasi-identifier, none a declared sensitive column, the sensitive column not a
    quasi-identifier. Raises ConfigError naming the destination."""
    where = f"[destinations.{settings.destination}]"
    roles = config.columns
    quasi = set(roles.quasi_identifiers)
    if not quasi:
        raise ConfigError(
            f"{where} exports attributes {sorted(settings.attributes)} but the project "
            "declares no quasi-identifiers",
            "list the columns an outsider could link on in [columns] quasi_identifiers "
            '(e.g. ["birth_date", "zip", "sex"])',
        )
    birth_date = config.identity.birth_date
    for column in settings.attributes:
        if column in roles.sensitive:
            raise ConfigError(
                f"{where} attribute {column!r} is a sensitive column",
                "a sensitive column is exported only as anonymity.sensitive, under "
                "l-diversity or t-closeness; remove it from attributes",
            )
        declared = column in quasi or (column == "age" and birth_date in quasi)
        if not declared:
            raise ConfigError(
                f"{where} attribute {column!r} is not a declared quasi-identifier",
                f"add it to [columns] quasi_identifiers (every exported attribute is "
                f"treated as one) or remove it; {_FIX_TABLE}",
            )
    sensitive = settings.anonymity.sensitive if settings.anonymity else None
    if sensitive is not None and (
        sensitive in quasi or (sensitive == "age" and birth_date in quasi)
    ):
        raise ConfigError(
            f"{where} anonymity.sensitive {sensitive!r} is a quasi-identifier",
            "pick a column that is not in [columns] quasi_identifiers",
        )
    return settings
