"""Meta connector errors, their mapping from SDK and HTTP failures, and secret redaction.

Every failure talking to Meta becomes a :class:`MetaError` (a ``ConnectorError``) whose
``transient`` flag drives retries: rate limits, Meta's own transient errors, HTTP 5xx and
network failures are transient; token, permission, invalid-request, audience-update and
flagged-audience errors are terminal.

The SDK sends ``access_token`` and ``appsecret_proof`` in the query string of every
request, so ``requests``/``urllib3`` exception texts and DEBUG log lines carry them.
:func:`redact` removes them (and ``payload`` query values, which hold hashed identifiers)
from any text; :func:`install_log_redaction` attaches :class:`RedactSecretsFilter` to the
loggers that emit request URLs. Error messages are built only from codes, counts, ids and
Meta's own (redacted) message, never from request parameters.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import traceback
from typing import Any
from urllib.parse import quote, quote_plus

from audiences.core.errors import ConnectorError

DEFAULT_TOKEN_ENV_VAR = "META_ACCESS_TOKEN"
REDACTED = "[REDACTED]"

RATE_LIMIT_CODES = frozenset({4, 17, 32, 341, 613, *range(80000, 80015)})
TRANSIENT_CODES = frozenset({1, 2})
PERMISSION_CODES = frozenset({10, *range(200, 300)})
AUTH_CODES = frozenset({102, 190})
AUDIENCE_UPDATE_FAILED = 2650
FLAGGED_SUBCODE = 1713230
FLAGGED_STATUS = 471

# Loggers that print request URLs (and so the token) or exception texts.
REDACTED_LOGGERS = (
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
    "requests",
    "facebook_business",
    "connectors.meta",
    "connectors.meta.client",
)

_SECRET_PARAMS = re.compile(
    r"((?:access_token|appsecret_proof|client_secret|fb_exchange_token|payload)"
    r"(?:=|%3D|['\"]?\s*:\s*['\"]?))([^&\s'\"<>,;)}\]]+)",
    re.IGNORECASE,
)
_AUTH_HEADER = re.compile(r"\b(OAuth|Bearer)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# SHA-256 hex: hashed identifiers and appsecret proofs, in whatever wrapping they appear.
_SHA256_HEX = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])")
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret (token, proof) so :func:`redact` removes it wherever it appears."""
    if not value or len(value) < 6:
        return
    with _secrets_lock:
        _secrets.update({value, quote(value, safe=""), quote_plus(value)})


def redact(text: str) -> str:
    """``text`` with tokens, proofs, ``payload`` values and SHA-256 hex replaced by ``[REDACTED]``."""
    if not text:
        return text
    text = _SECRET_PARAMS.sub(lambda m: m.group(1) + REDACTED, text)
    text = _SHA256_HEX.sub(REDACTED, text)
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _AUTH_HEADER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


class RedactSecretsFilter(logging.Filter):
    """Rewrites a record's message, traceback and stack with :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the template, drop the arguments
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact(text)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactSecretsFilter()


def install_log_redaction() -> None:
    """Attach the redaction filter to every logger that can print a request URL (idempotent)."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class MetaError(ConnectorError):
    """A request to Meta failed. Carries Meta's code, subcode, HTTP status and trace id."""

    def __init__(
        self,
        what: str,
        fix: str | None = None,
        *,
        transient: bool = False,
        code: int | None = None,
        subcode: int | None = None,
        http_status: int | None = None,
        fbtrace_id: str | None = None,
    ) -> None:
        self.subcode = subcode
        self.http_status = http_status
        self.fbtrace_id = fbtrace_id
        # Meta's own estimate of when the throttled account may call again (BUC header).
        self.retry_after_s: float | None = None
        super().__init__(redact(what), fix, where="meta", transient=transient, code=code)


class MetaRateLimited(MetaError):
    """Meta throttled the app, the user or the ad account (codes 4, 17, 613, 80000–80014)."""


class MetaTransientError(MetaError):
    """Meta or the network failed in a way that a later retry may not meet."""


class MetaAuthError(MetaError):
    """The access token is invalid or expired (code 190)."""


class MetaPermissionError(MetaError):
    """The token's user lacks a permission on the ad account or audience (codes 10, 200–299)."""


class MetaInvalidRequest(MetaError):
    """Meta rejected the request's parameters (code 100 and others)."""


class MetaAudienceUpdateFailed(MetaError):
    """Meta refused to update the audience (code 2650), e.g. a removal below ~100 people."""


class MetaAudienceFlagged(MetaError):
    """Meta flagged the audience as suggesting a health condition (status 471, subcode 1713230)."""


class MetaRequestTooLong(MetaError):
    """A front-end server refused the request line as too long (HTTP 414)."""


class MetaUnexpectedResponse(MetaError):
    """Meta (or something in between) answered with a page that is not Graph API JSON."""


def _code_text(code: int | None, subcode: int | None) -> str:
    if code is None:
        return "no error code"
    return f"error {code}/{subcode}" if subcode is not None else f"error {code}"


def _meta_message(message: Any) -> str:
    text = redact(str(message or "")).strip()
    return text if len(text) <= 300 else text[:297] + "..."


def error_from_graph(
    *,
    code: int | None,
    subcode: int | None,
    message: Any,
    http_status: int | None,
    is_transient: bool,
    fbtrace_id: str | None,
    operation: str,
    token_env_var: str = DEFAULT_TOKEN_ENV_VAR,
) -> MetaError:
    """Map one Graph API error (code, subcode, status) to the right :class:`MetaError`."""
    said = _meta_message(message)
    detail = f"{_code_text(code, subcode)}: {said}" if said else _code_text(code, subcode)
    trace = f"; fbtrace_id {fbtrace_id}" if fbtrace_id else ""
    fields: dict[str, Any] = {
        "code": code,
        "subcode": subcode,
        "http_status": http_status,
        "fbtrace_id": fbtrace_id,
    }
    if subcode == FLAGGED_SUBCODE or code == FLAGGED_STATUS:
        return MetaAudienceFlagged(
            f"Meta refused {operation}: the audience was flagged as suggesting a health "
            f"condition (operation status 471, {detail}{trace})",
            "compliance must review this audience and its segment before anything more is "
            "sent; names and descriptions sent to Meta must be opaque codes, and a flagged "
            "audience cannot be used — create a new one only after review",
            **fields,
        )
    if code in AUTH_CODES:
        return MetaAuthError(
            f"Meta rejected the access token while {operation} ({detail}{trace})",
            f"create a new token and put it in the environment variable {token_env_var}",
            **fields,
        )
    if code in PERMISSION_CODES:
        return MetaPermissionError(
            f"Meta refused {operation}: missing permission ({detail}{trace})",
            "give the token's user or system user the ads_management permission and access "
            "to the ad account, and accept the Custom Audiences terms for the account",
            **fields,
        )
    if code == AUDIENCE_UPDATE_FAILED:
        return MetaAudienceUpdateFailed(
            f"Meta failed to update the audience while {operation} ({detail}{trace})",
            "Meta refuses removals that would leave an audience below about 100 people; "
            "check the audience in Ads Manager, then run the sync again",
            **fields,
        )
    if code in RATE_LIMIT_CODES:
        return MetaRateLimited(
            f"Meta rate-limited {operation} ({detail}{trace})",
            "wait a few minutes and run the sync again; it resumes where it stopped",
            transient=True,
            **fields,
        )
    if is_transient or code in TRANSIENT_CODES or (http_status or 0) >= 500:
        return MetaTransientError(
            f"Meta failed temporarily while {operation} ({detail}, HTTP {http_status}{trace})",
            "run the sync again later; it resumes where it stopped",
            transient=True,
            **fields,
        )
    return MetaInvalidRequest(
        f"Meta rejected {operation} ({detail}{trace})",
        "check the destination settings (ad account id, API version); if they are right, "
        "report this with --debug output",
        **fields,
    )


def error_from_request_error(
    exc: Any, *, operation: str, token_env_var: str = DEFAULT_TOKEN_ENV_VAR
) -> MetaError:
    """Map the SDK's ``FacebookRequestError`` (duck-typed) to a :class:`MetaError`."""
    code = exc.api_error_code()
    status = exc.http_status()
    if code is None and not isinstance(exc.body(), dict):
        return error_from_response(status, exc.body(), operation=operation)
    error = exc.body().get("error", {}) if isinstance(exc.body(), dict) else {}
    mapped = error_from_graph(
        code=code,
        subcode=exc.api_error_subcode(),
        message=exc.api_error_message(),
        http_status=status,
        is_transient=bool(exc.api_transient_error()),
        fbtrace_id=error.get("fbtrace_id") if isinstance(error, dict) else None,
        operation=operation,
        token_env_var=token_env_var,
    )
    if mapped.transient:
        mapped.retry_after_s = regain_access_s(exc.http_headers())
    return mapped


def regain_access_s(headers: Any) -> float | None:
    """Longest ``estimated_time_to_regain_access`` (minutes → seconds) in the usage headers.

    Meta reports throttling per business use case in ``x-business-use-case-usage``:
    ``{"<account id>": [{"type": "ads_management", ..., "estimated_time_to_regain_access": 5}]}``.
    """
    raw = headers.get("x-business-use-case-usage") if hasattr(headers, "get") else None
    if not raw:
        return None
    try:
        usage = json.loads(raw)
    except ValueError:
        return None
    minutes = [
        entry.get("estimated_time_to_regain_access")
        for entries in (usage.values() if isinstance(usage, dict) else [])
        if isinstance(entries, list)
        for entry in entries
        if isinstance(entry, dict)
    ]
    waits = [float(m) for m in minutes if isinstance(m, int | float) and m > 0]
    return max(waits) * 60 if waits else None


def error_from_response(status: int | None, body: Any, *, operation: str) -> MetaError:
    """An answer the SDK may have taken as success: not 2xx, or not a Graph JSON object."""
    kind = "an empty answer" if not body else "a non-JSON page"
    if status == 414:
        return MetaRequestTooLong(
            f"Meta refused {operation}: request too long (HTTP 414)",
            "a server between this machine and Meta refused a long request line; "
            "check the endpoint and any proxy, and report this with --debug output",
            http_status=status,
        )
    if status == 429 or (status is not None and status >= 500):
        return MetaTransientError(
            f"Meta answered HTTP {status} with {kind} while {operation}",
            "Meta or a proxy in between is failing; run the sync again later",
            transient=True,
            http_status=status,
        )
    return MetaUnexpectedResponse(
        f"Meta answered HTTP {status} with {kind} while {operation}",
        "check the endpoint URL and any proxy between this machine and Meta",
        http_status=status,
    )


def error_from_transport(exc: BaseException, *, operation: str, endpoint: str) -> MetaError:
    """A ``requests`` failure before any answer: the text holds the URL, so redact it."""
    import requests

    name = type(exc).__name__
    detail = redact(str(exc))
    if len(detail) > 300:
        detail = detail[:297] + "..."
    if isinstance(exc, requests.exceptions.SSLError):
        return MetaUnexpectedResponse(
            f"TLS with {endpoint} failed while {operation} ({name}: {detail})",
            "check the endpoint URL and the CA bundle; plain-HTTP sandboxes use http://",
        )
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return MetaUnexpectedResponse(
            f"the Meta endpoint {endpoint} is not a valid URL ({name})",
            "set the endpoint to https://graph.facebook.com or the sandbox URL",
        )
    return MetaTransientError(
        f"could not reach Meta at {endpoint} while {operation} ({name}: {detail})",
        "check the network connection and the endpoint; run the sync again later",
        transient=True,
    )
