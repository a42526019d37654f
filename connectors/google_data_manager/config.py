"""Settings of a ``google_data_manager`` destination (Customer Match via the Data Manager API)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from connectors.google_common import GoogleAccountConfig


class GoogleDataManagerDestinationConfig(GoogleAccountConfig):
    kind: Literal["google_data_manager"] = "google_data_manager"
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
    # own GRANTED / DENIED always wins; DENIED members are never sent, nor members in the
    # EEA, the UK or Switzerland without their own GRANTED (connectors.google_common).
    default_ad_user_data: Literal["GRANTED", "UNSPECIFIED"] = "UNSPECIFIED"
    default_ad_personalization: Literal["GRANTED", "UNSPECIFIED"] = "UNSPECIFIED"
    membership_duration_days: int = Field(540, ge=1, le=540)
    poll_seconds: float = Field(30.0, gt=0, le=3600, description="first request-status poll")
    max_poll_seconds: float = Field(600.0, gt=0, le=3600)
    poll_timeout_seconds: float = Field(24 * 3600.0, gt=0)
