"""Google Data Manager API destination: Customer Match lists through ``IngestionService``.

Names resolve lazily so that importing the package does not import the
google-ads-datamanager SDK.
"""

from __future__ import annotations

from connectors.base import lazy_exports

_EXPORTS = {
    "DataManagerClient": "connectors.google_data_manager.client",
    "RequestsResult": "connectors.google_data_manager.client",
    "GoogleDataManagerConnector": "connectors.google_data_manager.connector",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
