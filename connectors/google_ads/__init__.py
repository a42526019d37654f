"""Google Ads Customer Match destination: CRM-based user lists and offline user data jobs.

Names resolve lazily so that importing the package does not import the google-ads SDK.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "GoogleAdsCustomerMatchClient": "connectors.google_ads.client",
    "JobResult": "connectors.google_ads.client",
    "GoogleAdsConnector": "connectors.google_ads.connector",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)
