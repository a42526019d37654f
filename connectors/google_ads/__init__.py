"""Google Ads Customer Match destination: CRM-based user lists and offline user data jobs.

Names resolve lazily so that importing the package does not import the google-ads SDK.
"""

from __future__ import annotations

from connectors.base import lazy_exports

_EXPORTS = {
    "GoogleAdsCustomerMatchClient": "connectors.google_ads.client",
    "JobResult": "connectors.google_ads.client",
    "GoogleAdsConnector": "connectors.google_ads.connector",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
