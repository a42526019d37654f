"""Google Data Manager API destination: Customer Match lists through ``IngestionService``.

Names resolve lazily so that importing the package does not import the
google-ads-datamanager SDK.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DataManagerClient": "connectors.google_data_manager.client",
    "RequestsResult": "connectors.google_data_manager.client",
    "GoogleDataManagerConnector": "connectors.google_data_manager.connector",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)
