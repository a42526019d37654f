"""The ``meta`` destination: Meta Custom Audiences (customer file) via facebook-business."""

from __future__ import annotations

from typing import ClassVar

from connectors.base import Capabilities, Connector, DestinationConfig
from connectors.meta.config import MetaDestinationConfig


class MetaConnector(Connector):
    kind: ClassVar[str] = "meta"
    config_model: ClassVar[type[DestinationConfig]] = MetaDestinationConfig
    capabilities: ClassVar[Capabilities] = Capabilities(add=True, remove=True, replace=True)
    layout: ClassVar[str | None] = "meta"

    config: MetaDestinationConfig

    def account(self) -> str:
        return self.config.ad_account_id
