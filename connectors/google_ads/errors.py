"""Google Ads failures as :class:`~audiences.core.errors.ConnectorError` subclasses.

:func:`translate` turns what the SDK raises — ``GoogleAdsException`` (a ``GoogleAdsFailure``
parsed from the trailing metadata) or a bare ``grpc.RpcError`` (transport failures, and
``INTERNAL`` / ``RESOURCE_EXHAUSTED``, which the SDK's exception interceptor never wraps,
and which the GAPIC layer re-raises as ``google.api_core.exceptions.GoogleAPICallError``) —
into one error whose ``transient`` flag drives retries. Messages carry error codes,
request ids and the names of environment variables, never identifiers, triggers or
tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from connectors.google_common import GoogleApiError
from connectors.google_common import request_id as request_id_of

DATA_MANAGER_HINT = (
    "since 2026-04-01 Google takes Customer Match uploads through the Google Ads API only "
    "from allowlisted developer tokens: switch the destination to the Data Manager API — in "
    'audiences.toml set kind = "google_data_manager", access_token_env = '
    '"GOOGLE_DATA_MANAGER_ACCESS_TOKEN", accept_customer_match_terms = true, drop '
    "developer_token_env (docs/platforms.md, Migrating from google_ads)"
)

# ErrorCode enum names that mean "try again later".
TRANSIENT_CODES = frozenset(
    {
        "CONCURRENT_MODIFICATION",
        "RESOURCE_EXHAUSTED",
        "RESOURCE_TEMPORARILY_EXHAUSTED",
        "INTERNAL_ERROR",
        "TRANSIENT_ERROR",
        "DEADLINE_EXCEEDED",
    }
)
# gRPC status names that mean "try again later" when no GoogleAdsFailure says otherwise.
TRANSIENT_STATUSES = frozenset(
    {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "INTERNAL", "ABORTED"}
)
AUTH_CATEGORIES = frozenset({"authentication_error", "authorization_error"})


class GoogleAdsApiError(GoogleApiError):
    """A Google Ads API call failed. ``code`` is ``category.CODE`` (or the gRPC status)."""


class GoogleAdsTransientError(GoogleAdsApiError):
    """Retryable: concurrent modification, quota, unavailable, deadline, internal."""


class GoogleAdsAuthError(GoogleAdsApiError):
    """The access token or developer token was refused, or the account is not reachable."""


class CustomerMatchNotAllowlisted(GoogleAdsApiError):
    """The developer token may not upload Customer Match data through the Google Ads API."""


class CustomerDataTermsNotAccepted(GoogleAdsApiError):
    """The customer data terms are not accepted, or consent was DENIED for the job."""


class OfflineJobRejected(GoogleAdsApiError):
    """The job's operations break a job rule (order, add/remove mix, already running)."""


class GoogleAdsRequestInvalid(GoogleAdsApiError):
    """Any other refused request (invalid value, unknown list, too many identifiers...)."""


class OfflineJobFailed(GoogleAdsApiError):
    """An offline user data job ended FAILED, or did not finish in time."""


def error_code_name(error_code: Any) -> tuple[str, str]:
    """``(category, CODE)`` of a proto-plus ``ErrorCode``, e.g. ``("database_error", ...)``."""
    category = type(error_code).pb(error_code).WhichOneof("error_code") or "unknown"
    value = getattr(error_code, category, None) if category != "unknown" else None
    return category, getattr(value, "name", str(value))


def _failure_codes(failure: Any) -> list[tuple[str, str]]:
    return [error_code_name(error.error_code) for error in failure.errors]


def _first_message(failure: Any) -> str:
    errors = list(failure.errors)
    return errors[0].message if errors else ""


def translate(
    exception: BaseException,
    *,
    action: str,
    developer_token_env: str = "GOOGLE_ADS_DEVELOPER_TOKEN",
    access_token_env: str = "GOOGLE_ADS_ACCESS_TOKEN",
) -> GoogleAdsApiError:
    """Map an SDK or gRPC exception raised while doing ``action`` to a connector error."""
    import grpc
    from google.ads.googleads.errors import GoogleAdsException
    from google.api_core import exceptions as core_exceptions

    if isinstance(exception, GoogleAdsException):
        codes = _failure_codes(exception.failure)
        return _from_codes(
            codes,
            status=exception.error.code().name if exception.error is not None else "UNKNOWN",
            action=action,
            request_id=exception.request_id,
            api_message=_first_message(exception.failure),
            developer_token_env=developer_token_env,
            access_token_env=access_token_env,
        )
    status: str | None = None
    request_id: str | None = None
    if isinstance(exception, core_exceptions.GoogleAPICallError):
        # The GAPIC layer turns a bare grpc.RpcError into one of these.
        grpc_status = exception.grpc_status_code
        status = grpc_status.name if grpc_status is not None else "UNKNOWN"
        request_id = request_id_of(exception.response)
    elif isinstance(exception, grpc.RpcError) and hasattr(exception, "code"):
        status = exception.code().name
        request_id = request_id_of(exception)
    if status is not None:
        if status == "UNAUTHENTICATED":
            return _auth_error(
                "UNAUTHENTICATED", action, request_id, developer_token_env, access_token_env
            )
        if status in TRANSIENT_STATUSES:
            return GoogleAdsTransientError(
                f"Google Ads API {action} failed: {status} (transient)",
                "retry later; if it persists check https://ads.google.com/status",
                code=status,
                transient=True,
                request_id=request_id,
            )
        return GoogleAdsRequestInvalid(
            f"Google Ads API {action} failed: gRPC status {status}",
            "check the endpoint and network; rerun with --debug for details",
            code=status,
            request_id=request_id,
        )
    return GoogleAdsRequestInvalid(
        f"Google Ads API {action} failed: {type(exception).__name__}",
        "rerun with --debug for details",
        code=type(exception).__name__,
    )


def _auth_error(
    code: str,
    action: str,
    request_id: str | None,
    developer_token_env: str,
    access_token_env: str,
) -> GoogleAdsAuthError:
    if "DEVELOPER_TOKEN" in code:
        fix = f"set {developer_token_env} to an approved developer token for this account"
    elif code.startswith("authorization_error."):
        fix = (
            "give the OAuth user access to the customer account, or set login_customer_id "
            "to the manager account that links it"
        )
    else:
        fix = (
            f"refresh the OAuth access token in {access_token_env} (access tokens expire "
            "after about an hour) and run again"
        )
    return GoogleAdsAuthError(
        f"Google Ads API refused the credentials for {action} ({code})",
        fix,
        code=code,
        request_id=request_id,
    )


def _from_codes(
    codes: Iterable[tuple[str, str]],
    *,
    status: str,
    action: str,
    request_id: str | None,
    api_message: str,
    developer_token_env: str,
    access_token_env: str,
) -> GoogleAdsApiError:
    codes = list(codes) or [("unknown", status)]
    category, name = codes[0]
    code = f"{category}.{name}"
    reference = f" (request id {request_id})" if request_id else ""
    if all(n in TRANSIENT_CODES for _, n in codes):
        return GoogleAdsTransientError(
            f"Google Ads API {action} failed: {code}, transient{reference}",
            "retry later",
            code=code,
            transient=True,
            request_id=request_id,
        )
    if category in AUTH_CATEGORIES:
        return _auth_error(code, action, request_id, developer_token_env, access_token_env)
    if name == "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE":
        return CustomerMatchNotAllowlisted(
            f"Google Ads API refused {action}: {code}{reference}",
            DATA_MANAGER_HINT,
            code=code,
            request_id=request_id,
        )
    if name == "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS":
        return CustomerDataTermsNotAccepted(
            f"Google Ads API refused {action}: {code}{reference}",
            "accept the Customer Match terms in the Google Ads UI and upload only people "
            "whose ad_user_data and ad_personalization consent is GRANTED",
            code=code,
            request_id=request_id,
        )
    if name in ("CONFLICTING_OPERATION", "JOB_ALREADY_STARTED", "INVALID_OPERATION_ORDER"):
        return OfflineJobRejected(
            f"Google Ads API refused {action}: {code}{reference}",
            "this is a bug in the Google Ads connector (adds and removes go in separate "
            "jobs, remove_all first, nothing added after run); please report it",
            code=code,
            request_id=request_id,
        )
    detail = f" (API: {api_message})" if api_message else ""
    return GoogleAdsRequestInvalid(
        f"Google Ads API refused {action}: {code}{reference}{detail}",
        "check the destination settings (customer id, user list) and the uploaded layout",
        code=code,
        request_id=request_id,
    )
