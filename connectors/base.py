"""The connector interface every destination implements.

Connectors accept nothing but a gate-made :class:`policies.release.Release`
(checked with ``require_release``) and, for each batch of members, a sealed
:class:`policies.release.ReleaseBatch` minted from that release: an audience connector is
opened for one release by :meth:`AudienceConnector.ensure_audience`, which names the
audience after the release (its opaque name), and :meth:`AudienceConnector.send` refuses
anything but a batch of that release (docs/platforms.md, "What a connector accepts").
Credentials come from environment variables named in the destination's config, never
from the config itself.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict

from audiences.core.errors import ConfigError, InternalError

if TYPE_CHECKING:
    import polars as pl

    from policies.release import Release, ReleaseBatch

Progress = Callable[[int], None]


class DestinationConfig(BaseModel):
    """Base of every destination's settings model."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str
    # the transfer's legal basis (audiences.core.config.DestinationSpec.basis)
    basis: Literal["share", "sale"] = "share"


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
    # member_keys of people refused before sending (counted in ``invalid``): the sync
    # engine records them as rejected, not as members
    rejected_keys: list[int] = field(default_factory=list)
    # member_keys of people sent in a request the platform took only in part without
    # saying which of its people it refused (Data Manager PARTIAL_SUCCESS): what the
    # platform holds for them is unknown. The sync engine records them neither as members
    # nor as removed, keeps them as unsure and sends them again on the next sync.
    unknown_keys: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Outgoing:
    """One checked batch on its way to the platform (what :meth:`AudienceConnector._send`
    gets): the audience, the op, the rows (the layout's columns and ``member_key``), the
    batch's number and whether it is the op's last, and the op's ``session`` (state kept
    across its batches, e.g. Meta's upload session or ``cleared`` for a replace)."""

    remote_id: str
    op: str
    rows: pl.DataFrame
    seq: int
    last: bool
    session: dict[str, Any]


class Closing:
    """``with`` support for a platform client whose :meth:`close` releases its connections."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A package's module ``__getattr__`` that imports each name from its module
    (``exports``: name → module path) on first use, so that importing the package does not
    import the platform's SDK."""
    from importlib import import_module

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(module), name)

    return __getattr__


def read_ca_file(ca_file: str, platform: str) -> bytes:
    """The PEM certificate a gRPC connector trusts instead of the system roots (the
    project's sandboxes); a one-line ConfigError names the file and the fix."""
    try:
        pem = Path(ca_file).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"the {platform} CA file {ca_file} cannot be read ({exc.strerror})",
            "point ca_file at the PEM certificate the sandbox wrote, or remove ca_file "
            "to use the system's trusted roots",
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ConfigError(
            f"the {platform} CA file {ca_file} holds no PEM certificate",
            "point ca_file at the PEM certificate the sandbox wrote",
        )
    return pem


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
    release: Release | None = None  # the release ensure_audience opened this connector for
    remote_id: str | None = None  # ... and its audience on the platform

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

    # Takedown (``audiences takedown``): what the platform offers besides removing people.
    can_remove_all: ClassVar[bool] = False  # empty the audience in one call
    can_delete: ClassVar[bool] = False  # delete the audience itself

    def remove_all(self, remote_id: str) -> BatchOutcome:
        """Empty the platform audience (every member, whoever added them)."""
        raise NotImplementedError(f"{type(self).__name__} cannot empty an audience in one call")

    def delete_audience(self, remote_id: str) -> None:
        """Delete the platform audience."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete an audience")

    def ensure_audience(self, release: Release, remote_id: str | None = None) -> str:
        """Open this connector for ``release``: the platform's audience id, creating the
        audience (named after the release's opaque name) when ``remote_id`` is None.

        Refuses anything but a sealed release made for this destination and account.
        """
        from policies.release import require_release

        checked = require_release(release)
        mine = (self.name, self.kind, self.account())
        theirs = (checked.destination, checked.kind, checked.account)
        if theirs != mine:
            raise InternalError(
                f"refusing release {checked.release_id}: it was made for destination "
                f"{checked.destination!r} ({checked.kind}, {checked.account}), not {self.name!r}"
            )
        if remote_id is None:
            name = checked.opaque_name
            remote_id = self._create_audience(name, f"audiences release {name}")
        else:
            self._check_audience(remote_id)
        self.release, self.remote_id = checked, remote_id
        return remote_id

    def send(
        self,
        remote_id: str,
        op: str,
        rows: ReleaseBatch,
        *,
        seq: int,
        last: bool,
        session: dict[str, Any],
    ) -> BatchOutcome:
        """Send one sealed batch of the release this connector was opened for, and confirm it."""
        from policies.release import require_batch

        if self.release is None or self.remote_id is None:
            raise InternalError("send before ensure_audience: open the audience for a release")
        batch = require_batch(rows, self.release)
        if (remote_id, op) != (self.remote_id, batch.op):
            raise InternalError(
                f"refusing a {batch.op} batch sent as {op!r} to audience {remote_id}: this "
                f"connector was opened for audience {self.remote_id}"
            )
        return self._send(Outgoing(remote_id, op, batch.rows, seq, last, session))

    def find_audience(self, name: str) -> str | None:
        """The id of this account's audience named ``name`` (``None``: not found, or the
        platform cannot be searched by name). Used when creating it failed as a duplicate."""
        return None

    @abstractmethod
    def _create_audience(self, name: str, description: str) -> str:
        """Create the audience (the name is the release's opaque name) and return its id."""

    def _check_audience(self, remote_id: str) -> None:
        """Check an existing audience before anything is sent to it (default: nothing)."""

    @abstractmethod
    def _send(self, batch: Outgoing) -> BatchOutcome:
        """Send the rows of a checked batch (the layout's columns) and confirm them."""
