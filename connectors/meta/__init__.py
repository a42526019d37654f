"""Meta Custom Audiences destination: the low-level client, its errors, and the connector.

The facebook-business SDK is imported only when a :class:`MetaClient` is built, so importing
this package stays cheap.
"""

from __future__ import annotations

from typing import Any

from connectors.meta.client import (
    BatchResult,
    MetaClient,
    RetryPolicy,
    new_session_id,
    upload_session,
)
from connectors.meta.errors import (
    MetaAudienceFlagged,
    MetaAudienceUpdateFailed,
    MetaAuthError,
    MetaError,
    MetaInvalidRequest,
    MetaPermissionError,
    MetaRateLimited,
    MetaRequestTooLong,
    MetaTransientError,
    MetaUnexpectedResponse,
    RedactSecretsFilter,
    install_log_redaction,
    redact,
)

__all__ = [
    "BatchResult",
    "MetaAudienceFlagged",
    "MetaAudienceUpdateFailed",
    "MetaAuthError",
    "MetaClient",
    "MetaError",
    "MetaInvalidRequest",
    "MetaPermissionError",
    "MetaRateLimited",
    "MetaRequestTooLong",
    "MetaTransientError",
    "MetaUnexpectedResponse",
    "RedactSecretsFilter",
    "RetryPolicy",
    "install_log_redaction",
    "new_session_id",
    "redact",
    "upload_session",
]


def __getattr__(name: str) -> Any:
    # The connector (registered as the "meta" entry point) lives in its own module.
    if name == "MetaConnector":
        from connectors.meta.connector import MetaConnector

        return MetaConnector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
