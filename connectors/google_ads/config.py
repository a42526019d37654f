"""Settings of a ``google_ads`` destination (Customer Match, CRM-based user list)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from connectors.google_common import GoogleAccountConfig


class GoogleAdsDestinationConfig(GoogleAccountConfig):
    kind: Literal["google_ads"] = "google_ads"
    developer_token_env: str = Field("GOOGLE_ADS_DEVELOPER_TOKEN", pattern=r"^[A-Z_][A-Z0-9_]*$")
    access_token_env: str = Field("GOOGLE_ADS_ACCESS_TOKEN", pattern=r"^[A-Z_][A-Z0-9_]*$")
    membership_life_span_days: int = Field(540, ge=0, le=540)
    poll_seconds: float = Field(30.0, gt=0, le=3600, description="first job-status poll delay")
