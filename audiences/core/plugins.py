"""Destination kinds: plugins named by the ``audiences.connectors`` entry points.

A third party adds a destination by shipping a package that declares::

    [project.entry-points."audiences.connectors"]
    my_kind = "my_package.connector:MyConnector"

Entry points are resolved lazily; SDKs are imported only when a connector runs.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ValidationError

from audiences.core.errors import ConfigError

GROUP = "audiences.connectors"

# Built-in kinds resolve without package metadata (e.g. running from a source tree).
BUILTIN = {
    "file": "connectors.file:FileConnector",
    "meta": "connectors.meta.connector:MetaConnector",
    "google_ads": "connectors.google_ads.connector:GoogleAdsConnector",
    "google_data_manager": "connectors.google_data_manager.connector:GoogleDataManagerConnector",
}


@cache
def _targets() -> dict[str, str]:
    targets = dict(BUILTIN)
    for ep in entry_points(group=GROUP):
        targets.setdefault(ep.name, ep.value)
    return targets


def kinds() -> list[str]:
    return sorted(_targets())


def plugin(kind: str) -> Any:
    """The class registered for destination kind ``kind`` (imported on first use)."""
    target = _targets().get(kind)
    if target is None:
        raise ConfigError(
            f"unknown destination kind {kind!r}",
            f"use one of: {', '.join(kinds())} (or install the package that provides it)",
        )
    module_name, _, attr = target.partition(":")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"destination kind {kind!r} cannot be loaded ({exc.name} is missing)",
            f"pip install the package that provides {exc.name}",
        ) from None
    return getattr(module, attr)


def destination_config(spec: Any) -> BaseModel:
    """Validate a ``[destinations.NAME]`` table with its connector's config model."""
    cls = plugin(spec.kind)
    data = spec.model_dump()
    if "basis" not in cls.config_model.model_fields:
        # the transfer's legal basis is the policy's business (audiences.core.config
        # DestinationSpec.basis): a connector whose model predates it need not know it
        data.pop("basis", None)
    try:
        settings: BaseModel = cls.config_model.model_validate(data)
        return settings
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(table)"
        if err["type"] == "extra_forbidden":
            return_fix = f"remove {loc!r}; {spec.kind} destinations take: " + ", ".join(
                sorted(cls.config_model.model_fields)
            )
            raise ConfigError(f"unknown key {loc!r}", return_fix) from None
        if err["type"] == "missing":
            raise ConfigError(f"missing key {loc!r}", f"add {loc} = ...") from None
        raise ConfigError(f"{loc}: {err['msg']}", "fix the value") from None
