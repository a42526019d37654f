"""Settings of a ``meta`` destination (Meta Custom Audiences, customer file)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from connectors.base import DestinationConfig

# The Graph / Marketing API version, in this one place: the installed facebook-business
# (26.0.3) is built for it (tests/test_meta_client.py checks the SDK's API_VERSION).
GRAPH_API_VERSION = "v26.0"
# The customer-file multi-key schema fields of that version (the SDK's
# CustomAudience.Schema.MultiKeySchema, checked by tests/test_meta_client.py): what the
# client may send and what the sandbox accepts.
MULTI_KEY_FIELDS = (
    "EXTERN_ID",
    "EMAIL",
    "PHONE",
    "GEN",
    "DOBY",
    "DOBM",
    "DOBD",
    "LN",
    "FN",
    "FI",
    "CT",
    "ST",
    "ZIP",
    "MADID",
    "COUNTRY",
)


class MetaDestinationConfig(DestinationConfig):
    kind: Literal["meta"] = "meta"
    ad_account_id: str = Field(pattern=r"^act_\d{1,20}$", description="e.g. act_1234567890")
    access_token_env: str = Field("META_ACCESS_TOKEN", pattern=r"^[A-Z_][A-Z0-9_]*$")
    app_secret_env: str | None = Field(None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    endpoint: str | None = Field(None, description="Graph API base URL override (sandbox)")
    api_version: str = Field(GRAPH_API_VERSION, pattern=r"^v\d+\.\d+$")
    customer_file_source: Literal[
        "USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED"
    ] = "USER_PROVIDED_ONLY"
    min_size: int = Field(100, ge=1)
