"""The connector interface every destination implements.

Connectors accept nothing but a gate-made :class:`policies.release.Release`
(checked with ``require_release``). Credentials come from environment variables
named in the destination's config, never from the config itself.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from audiences.core.errors import ConfigError

Progress = Callable[[int], None]


class DestinationConfig(BaseModel):
    """Base of every destination's settings model."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str


@dataclass(frozen=True)
class Capabilities:
    add: bool
    remove: bool
    replace: bool


@dataclass
class BatchOutcome:
    op: str  # add | remove | replace
    size: int  # people sent
    received: int  # people the platform took
    invalid: int = 0  # rows the platform rejected
    samples: list[str] = field(default_factory=list)  # platform's reasons, never values


def secret_from_env(variable: str, *, destination: str, what: str) -> str:
    """Read a secret from the environment; a missing one names the variable, never a value."""
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(
            f"destination {destination!r} needs {what} in environment variable {variable}, "
            "which is not set",
            f"export {variable}=... (from your secrets manager) and run again",
        )
    return value


class Connector(ABC):
    """One destination. ``layout`` names the identifiers layout it uploads."""

    kind: ClassVar[str]
    config_model: ClassVar[type[DestinationConfig]]
    capabilities: ClassVar[Capabilities]
    layout: ClassVar[str | None] = None
    add_batch_size: ClassVar[int] = 10_000
    remove_batch_size: ClassVar[int] = 10_000

    def __init__(self, name: str, config: DestinationConfig) -> None:
        self.name = name
        self.config = config
        self.root = Path(".")  # the project folder: relative paths in the config resolve here

    def resolve(self, path: str) -> str:
        p = Path(path).expanduser()
        return str(p if p.is_absolute() else self.root / p)

    @abstractmethod
    def account(self) -> str:
        """The account the audience lives in (difference checks compare within one account)."""

    def describe(self) -> dict[str, Any]:
        return {"destination": self.name, "kind": self.kind, "account": self.account()}


class AudienceConnector(Connector):
    """A destination that keeps an audience on a platform, changed by batches.

    The sync engine (``audiences.pipeline.sync``) diffs a release against what the platform
    confirmed, journals every batch before sending it, and records it only after
    :meth:`send` returns; ``send`` retries transient errors itself and raises a
    terminal :class:`ConnectorError` otherwise.
    """

    client: Any = None

    def open(self) -> None:
        """Read the :meth:`credentials` from the environment and :meth:`connect` with them.

        A connector that names no credentials builds no client.
        """
        secrets = {
            name: secret_from_env(variable, destination=self.name, what=what) if variable else None
            for name, (variable, what) in self.credentials().items()
        }
        if secrets:
            self.client = self.connect(secrets)

    def credentials(self) -> dict[str, tuple[str | None, str]]:
        """Secret name → (its environment variable, or None when not configured; what it is)."""
        return {}

    def connect(self, secrets: dict[str, str | None]) -> Any:
        """The SDK client, built from the secrets that :meth:`credentials` names."""
        raise NotImplementedError(f"{type(self).__name__} names credentials but cannot connect")

    def close(self) -> None:
        """Release network resources."""
        if self.client is not None:
            self.client.close()
            self.client = None

    def batch_size(self, op: str) -> int:
        """People per journaled batch for ``op`` (add | remove)."""
        return self.add_batch_size if op == "add" else self.remove_batch_size

    @abstractmethod
    def ensure_audience(self, remote_id: str | None, *, name: str, description: str) -> str:
        """Return the platform's audience id, creating the audience when ``remote_id`` is None."""

    def find_audience(self, name: str) -> str | None:
        """The id of this account's audience named ``name`` (``None``: not found, or the
        platform cannot be searched by name). Used when creating it failed as a duplicate."""
        return None

    @abstractmethod
    def send(
        self, remote_id: str, op: str, rows: Any, *, seq: int, last: bool, session: dict[str, Any]
    ) -> BatchOutcome:
        """Send one batch (a polars DataFrame of the layout's columns) and confirm it."""
