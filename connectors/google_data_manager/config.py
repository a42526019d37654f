"""Settings of a ``google_data_manager`` destination (Customer Match via the Data Manager API)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from connectors.base import DestinationConfig


def _customer_id(value: str | None) -> str | None:
    if value is None:
        return None
    digits = value.replace("-", "")
    if len(digits) != 10 or not digits.isdigit():
        raise ValueError("must be a 10-digit Google Ads customer id, e.g. 123-456-7890")
    return digits


class GoogleDataManagerDestinationConfig(DestinationConfig):
    kind: Literal["google_data_manager"] = "google_data_manager"
    customer_id: str = Field(description="the Google Ads account that owns the list: 123-456-7890")
    login_customer_id: str | None = Field(None, description="manager account, if one links it")
    access_token_env: str = Field("GOOGLE_DATA_MANAGER_ACCESS_TOKEN", pattern=r"^[A-Z_][A-Z0-9_]*$")
    user_list_id: str | None = Field(
        None,
        pattern=r"^[0-9]+$",
        description="an existing Customer Match list to fill (e.g. one made by google_ads)",
    )
    accept_customer_match_terms: bool = Field(
        False, description="you accepted the Customer Match terms for this account"
    )
    # Request-level consent for people whose CRM has no decision (UNSPECIFIED). A member's
    # own GRANTED / DENIED always wins; DENIED members are never sent.
    default_ad_user_data: Literal["GRANTED", "UNSPECIFIED"] = "UNSPECIFIED"
    default_ad_personalization: Literal["GRANTED", "UNSPECIFIED"] = "UNSPECIFIED"
    membership_duration_days: int = Field(540, ge=1, le=540)
    endpoint: str | None = Field(None, description="host:port override (sandbox)")
    ca_file: str | None = Field(None, description="CA bundle for a TLS endpoint override")
    poll_seconds: float = Field(30.0, gt=0, le=3600, description="first request-status poll")
    max_poll_seconds: float = Field(600.0, gt=0, le=3600)
    poll_timeout_seconds: float = Field(24 * 3600.0, gt=0)
    min_size: int = Field(100, ge=1)

    @field_validator("customer_id", "login_customer_id")
    @classmethod
    def _ten_digits(cls, value: str | None) -> str | None:
        return _customer_id(value)
