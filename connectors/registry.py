"""The connector of each destination kind, as the sync engine uses it.

Kinds are plugins (:mod:`audiences.core.plugins`): the built-in ``file``, ``meta`` and
``google_ads``, and whatever a third-party package registers under the
``audiences.connectors`` entry point group.
"""

from __future__ import annotations

from typing import Any, cast

from audiences.core import plugins
from connectors.base import Connector, DestinationConfig


def connector_class(kind: str) -> type[Connector]:
    """The connector class of ``kind``; ConfigError names the kinds there are."""
    return cast("type[Connector]", plugins.plugin(kind))


def destination_config(spec: Any) -> DestinationConfig:
    """A ``[destinations.NAME]`` table validated by its connector's settings model."""
    return cast(DestinationConfig, plugins.destination_config(spec))
