"""Data Manager API failures as :class:`~audiences.core.errors.ConnectorError` subclasses.

The GAPIC client raises ``google.api_core.exceptions.GoogleAPICallError`` subclasses for
a call that fails as a whole; their ``details`` hold the ``google.rpc`` details of the
status (``BadRequest`` field violations, ``ErrorInfo``, ``RetryInfo``). :func:`translate`
turns one into a one-line error whose ``transient`` flag drives retries. Messages carry
status names, error reasons, field paths and the names of environment variables and
settings, never identifiers or tokens.
"""

from __future__ import annotations

from typing import Any

from connectors.google_common import GoogleApiError
from connectors.google_common import request_id as request_id_of

# gRPC statuses that mean "try again later".
TRANSIENT_STATUSES = frozenset(
    {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "INTERNAL", "ABORTED"}
)


class DataManagerApiError(GoogleApiError):
    """A Data Manager API call failed. ``code`` is the gRPC status or ``STATUS.reason``."""


class DataManagerTransientError(DataManagerApiError):
    """Retryable: quota, unavailable, deadline, internal, aborted."""


class DataManagerAuthError(DataManagerApiError):
    """The access token was refused, or the OAuth user cannot reach the account."""


class DataManagerRequestInvalid(DataManagerApiError):
    """The request was refused as a whole (bad field, unknown list, terms not accepted...)."""


class DataManagerRequestFailed(DataManagerApiError):
    """An accepted request ended FAILED, or was still PROCESSING when polling gave up."""


def _details(exception: Any) -> tuple[list[tuple[str, str]], str | None, float | None]:
    """(field violations as (field, description), ErrorInfo reason, RetryInfo seconds)."""
    from google.rpc import error_details_pb2

    violations: list[tuple[str, str]] = []
    reason: str | None = None
    retry_after: float | None = None
    for detail in getattr(exception, "details", None) or ():
        if isinstance(detail, error_details_pb2.BadRequest):
            violations += [(v.field, v.description) for v in detail.field_violations]
        elif isinstance(detail, error_details_pb2.ErrorInfo):
            reason = reason or detail.reason
        elif isinstance(detail, error_details_pb2.RetryInfo):
            delay = detail.retry_delay
            retry_after = delay.seconds + delay.nanos / 1e9
    return violations, reason, retry_after


def translate(
    exception: BaseException,
    *,
    action: str,
    destination: str,
    access_token_env: str,
) -> DataManagerApiError:
    """Map a GAPIC / gRPC exception raised while doing ``action`` to a connector error."""
    from google.api_core import exceptions as core_exceptions

    if not isinstance(exception, core_exceptions.GoogleAPICallError):
        return DataManagerRequestInvalid(
            f"Data Manager API {action} failed: {type(exception).__name__}",
            "check the endpoint and network; rerun with --debug for details",
            code=type(exception).__name__,
        )
    grpc_status = exception.grpc_status_code
    status = grpc_status.name if grpc_status is not None else "UNKNOWN"
    violations, reason, retry_after = _details(exception)
    request_id = request_id_of(getattr(exception, "response", None))
    code = f"{status}.{reason}" if reason else status
    ref = f" (request id {request_id})" if request_id else ""
    where = f"[destinations.{destination}]"
    if status == "UNAUTHENTICATED":
        return DataManagerAuthError(
            f"Data Manager API refused the access token in {access_token_env} for {action}{ref}",
            f"refresh the OAuth access token in {access_token_env} (scope "
            "https://www.googleapis.com/auth/datamanager; tokens expire after about an hour)",
            code=code,
            request_id=request_id,
        )
    if status == "PERMISSION_DENIED":
        return DataManagerAuthError(
            f"Data Manager API denied {action}: the OAuth user cannot reach the account{ref}",
            f"give the OAuth user access to customer_id in {where}, or set login_customer_id "
            "to the manager account that links it",
            code=code,
            request_id=request_id,
        )
    if status in TRANSIENT_STATUSES:
        return DataManagerTransientError(
            f"Data Manager API {action} failed: {status} (transient){ref}",
            "retry later; if it persists check https://status.cloud.google.com",
            code=code,
            transient=True,
            request_id=request_id,
            retry_after_s=retry_after,
        )
    if status == "NOT_FOUND":
        return DataManagerRequestInvalid(
            f"Data Manager API {action}: the user list does not exist in the account{ref}",
            f"fix user_list_id in {where} (the list's id in Google Ads), or remove it "
            "so that a new list is made",
            code=code,
            request_id=request_id,
        )
    if violations:
        field, description = violations[0]
        more = f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
        return DataManagerRequestInvalid(
            f"Data Manager API refused {action}: {field}: {description}{more}{ref}",
            _fix_for(field, where),
            code=code,
            request_id=request_id,
        )
    message = getattr(exception, "message", "") or ""
    return DataManagerRequestInvalid(
        f"Data Manager API refused {action}: {status}" + (f" ({message})" if message else "") + ref,
        f"check the settings in {where} and the uploaded layout; rerun with --debug",
        code=code,
        request_id=request_id,
    )


def _fix_for(field: str, where: str) -> str:
    """What to change for a refused field, named as audiences.toml names it."""
    if "region_code" in field:
        return (
            "use ISO 3166-1 alpha-2 codes (US, GB...): fix the CRM's [identity] country "
            "column or [identity] default_country"
        )
    if "terms_of_service" in field:
        return (
            "accept the Customer Match terms for the account in Google Ads, then set "
            f"accept_customer_match_terms = true in {where}"
        )
    if "consent" in field:
        return (
            "send only people whose ad_user_data and ad_personalization consent is not "
            "DENIED ([consent] ad_user_data / ad_personalization columns)"
        )
    if "membership_duration" in field:
        return f"set membership_duration_days in {where} to 1..540"
    if "product_destination_id" in field or "user_list" in field:
        return f"fix user_list_id in {where}"
    return f"check the settings in {where} and the uploaded layout"
