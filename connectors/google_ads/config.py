"""Settings of a ``google_ads`` destination (Customer Match, CRM-based user list)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from connectors.base import DestinationConfig


class GoogleAdsDestinationConfig(DestinationConfig):
    kind: Literal["google_ads"] = "google_ads"
    customer_id: str = Field(description="10 digits, dashes allowed: 123-456-7890")
    login_customer_id: str | None = None
    developer_token_env: str = Field("GOOGLE_ADS_DEVELOPER_TOKEN", pattern=r"^[A-Z_][A-Z0-9_]*$")
    access_token_env: str = Field("GOOGLE_ADS_ACCESS_TOKEN", pattern=r"^[A-Z_][A-Z0-9_]*$")
    endpoint: str | None = Field(None, description="host:port override (sandbox)")
    ca_file: str | None = Field(None, description="CA bundle for a TLS endpoint override")
    membership_life_span_days: int = Field(540, ge=0, le=540)
    poll_seconds: float = Field(30.0, gt=0, le=3600, description="first job-status poll delay")
    min_size: int = Field(100, ge=1)

    @field_validator("customer_id", "login_customer_id")
    @classmethod
    def _ten_digits(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digits = value.replace("-", "")
        if len(digits) != 10 or not digits.isdigit():
            raise ValueError("must be a 10-digit Google Ads customer id, e.g. 123-456-7890")
        return digits
