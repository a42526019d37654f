"""The ``google_ads`` destination: Customer Match user lists via google-ads."""

from __future__ import annotations

from typing import ClassVar

from connectors.base import Capabilities, Connector, DestinationConfig
from connectors.google_ads.config import GoogleAdsDestinationConfig


class GoogleAdsConnector(Connector):
    kind: ClassVar[str] = "google_ads"
    config_model: ClassVar[type[DestinationConfig]] = GoogleAdsDestinationConfig
    capabilities: ClassVar[Capabilities] = Capabilities(add=True, remove=True, replace=True)
    layout: ClassVar[str | None] = "google_ads"
    add_batch_size: ClassVar[int] = 10_000

    config: GoogleAdsDestinationConfig

    def account(self) -> str:
        return self.config.customer_id
