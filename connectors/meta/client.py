"""Low-level Meta Custom Audiences client on the real ``facebook-business`` SDK.

It builds ``FacebookSession`` + ``FacebookAdsApi`` itself instead of calling
``FacebookAdsApi.init()``, whose default ``crash_log=True`` installs an excepthook that
posts tracebacks to Meta. Requests go out on the SDK's session and come back as the SDK's
``FacebookResponse`` (and its ``FacebookRequestError``), with finished, hashed rows: the
SDK's own normaliser (``CustomAudienceMixin.format_params``) is bypassed on purpose, and so
is ``FacebookAdsApi.call``, which puts the access token in every URL.

The SDK takes any answer that is not Graph JSON with an ``error`` key as a success (an HTML
414 or 502 page included), and its object parsers crash on such pages; every answer is
therefore checked here for status and shape.

Removals are ``POST`` requests with Graph's ``method=DELETE`` override, so their payload
travels in the body (a real ``DELETE`` carries it in a URL capped near 8,000 bytes: about
10 people a request). The access token travels in the form body of every POST and in the
``Authorization`` header of every GET and DELETE, never in a URL.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from audiences.core.errors import ConfigError, ConnectorError, InternalError
from connectors.base import Closing
from connectors.meta.config import GRAPH_API_VERSION, MULTI_KEY_FIELDS
from connectors.meta.errors import (
    DEFAULT_TOKEN_ENV_VAR,
    MetaError,
    error_from_request_error,
    error_from_response,
    error_from_transport,
    install_log_redaction,
    register_secret,
)
from connectors.retry import RetryPolicy

log = logging.getLogger(__name__)

DEFAULT_API_VERSION = GRAPH_API_VERSION
GRAPH_URL = "https://graph.facebook.com"
MAX_ROWS_PER_REQUEST = 10_000
CUSTOMER_FILE_SOURCES = frozenset(
    {"USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED"}
)
AUDIENCE_FIELDS = (
    "id",
    "name",
    "description",
    "approximate_count_lower_bound",
    "approximate_count_upper_bound",
    "operation_status",
    "delivery_status",
)


@dataclass(frozen=True)
class BatchResult:
    """What Meta counted for one upload call (summed over requests for removals).

    ``invalid_entry_samples`` may echo what was sent: never log it.
    """

    num_received: int
    num_invalid_entries: int
    invalid_entry_samples: Mapping[str, str] = field(default_factory=dict, repr=False)
    requests: int = 1
    session_id: int | None = None

    def __add__(self, other: BatchResult) -> BatchResult:
        samples = {**self.invalid_entry_samples, **other.invalid_entry_samples}
        return BatchResult(
            num_received=self.num_received + other.num_received,
            num_invalid_entries=self.num_invalid_entries + other.num_invalid_entries,
            invalid_entry_samples=dict(list(samples.items())[:10]),
            requests=self.requests + other.requests,
            session_id=self.session_id if self.session_id is not None else other.session_id,
        )


def new_session_id() -> int:
    """A random positive 63-bit id for an upload session."""
    return secrets.randbits(63) or 1


def upload_session(
    session_id: int, batch_seq: int, *, last: bool, estimated_total: int
) -> dict[str, Any]:
    """The ``session`` parameter of one batch of a multi-request upload."""
    return {
        "session_id": session_id,
        "batch_seq": batch_seq,
        "last_batch_flag": last,
        "estimated_num_total": estimated_total,
    }


def _graph_json(value: Any) -> str:
    # The encoding FacebookAdsApi.call applies to mappings and sequences; done here so the
    # URL length of a removal can be measured on exactly what is sent.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# application/x-www-form-urlencoded, as urllib.parse.quote_plus does it. Upload payloads
# are JSON of hex digests: only these punctuation bytes need escaping, so a few C-speed
# str.replace passes do it (checked by a C-speed bytes.translate; anything else takes
# the standard library's path).
_PLAIN = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
_JSON_PUNCTUATION = {'"': "%22", ",": "%2C", "[": "%5B", "]": "%5D", "{": "%7B", "}": "%7D",
                     ":": "%3A", " ": "+"}  # fmt: skip
_FAST_BYTES = _PLAIN + "".join(_JSON_PUNCTUATION).encode()


def form_encode(params: Mapping[str, str]) -> str:
    """Form-encode string params exactly like ``urllib.parse.urlencode``, fast for payloads."""
    from urllib.parse import quote_plus

    parts = []
    for key, value in params.items():
        text = str(value)
        if text.isascii() and not text.encode().translate(None, _FAST_BYTES):
            for char, escaped in _JSON_PUNCTUATION.items():
                text = text.replace(char, escaped)
        else:
            text = quote_plus(text)
        parts.append(f"{quote_plus(key)}={text}")
    return "&".join(parts)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetaClient(Closing):
    """Creates Custom Audiences and uploads hashed members through the facebook-business SDK.

    ``endpoint`` replaces ``https://graph.facebook.com`` (plain ``http://`` only on a
    loopback address, e.g. the sandbox). ``token_env_var`` names the environment variable
    the token came from, for error messages; the token itself never appears in them.
    """

    def __init__(
        self,
        access_token: str,
        ad_account_id: str,
        *,
        endpoint: str | None = None,
        api_version: str = DEFAULT_API_VERSION,
        app_secret: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        token_env_var: str = DEFAULT_TOKEN_ENV_VAR,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not access_token:
            raise ConfigError(
                "no Meta access token",
                f"put the token in the environment variable {token_env_var}",
            )
        register_secret(access_token)
        register_secret(app_secret)
        install_log_redaction()
        account = ad_account_id.removeprefix("act_")
        if not account.isdigit():
            raise ConfigError(
                f"Meta ad account id {ad_account_id!r} is not a number",
                "use the numeric id shown in Ads Manager, with or without the act_ prefix",
            )
        self._graph = self._check_endpoint(endpoint or GRAPH_URL)
        try:
            from facebook_business.api import FacebookAdsApi
            from facebook_business.session import FacebookSession
        except ImportError:  # pragma: no cover - the SDK is a declared dependency
            raise ConfigError(
                "the facebook-business SDK is not installed",
                "pip install 'facebook-business==26.0.3'",
            ) from None
        self._session = FacebookSession(
            access_token=access_token, app_secret=app_secret, timeout=timeout
        )
        register_secret(getattr(self._session, "appsecret_proof", None))
        self._session.GRAPH = self._graph
        self._api = FacebookAdsApi(self._session, api_version=api_version)
        self.ad_account_id = account
        self.api_version = api_version
        self.retry = retry or RetryPolicy()
        self.token_env_var = token_env_var
        self._sleep = sleep
        self._rng = rng or random.Random()

    @staticmethod
    def _check_endpoint(endpoint: str) -> str:
        parts = urlsplit(endpoint)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(
                f"Meta endpoint {endpoint!r} is not an http(s) URL",
                "use https://graph.facebook.com or the sandbox URL it printed",
            )
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ConfigError(
                f"Meta endpoint {endpoint!r} is plain http on a non-loopback host",
                "use https; plain http is allowed only for a sandbox on 127.0.0.1",
            )
        if parts.path.strip("/") or parts.query:
            raise ConfigError(
                f"Meta endpoint {endpoint!r} has a path or query",
                "give only scheme, host and port; the API version is added by the client",
            )
        return endpoint.rstrip("/")

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._session.requests.close()

    # -- audiences -------------------------------------------------------------------------

    def create_audience(
        self,
        name: str,
        description: str = "",
        *,
        customer_file_source: str = "USER_PROVIDED_ONLY",
    ) -> str:
        """Create an empty customer-list audience and return its id.

        ``name`` and ``description`` are sent to Meta: they must be opaque codes.
        """
        if customer_file_source not in CUSTOMER_FILE_SOURCES:
            raise ConfigError(
                f"customer_file_source {customer_file_source!r} is not one Meta knows",
                f"use one of {', '.join(sorted(CUSTOMER_FILE_SOURCES))}",
            )
        answer = self._call(
            "POST",
            (f"act_{self.ad_account_id}", "customaudiences"),
            {
                "name": name,
                "subtype": "CUSTOM",
                "description": description,
                "customer_file_source": customer_file_source,
            },
            operation=f"creating an audience in ad account act_{self.ad_account_id}",
        )
        audience_id = answer.get("id")
        if not isinstance(audience_id, str) or not audience_id:
            raise error_from_response(
                200, None, operation="creating an audience (no id in the answer)"
            )
        return audience_id

    def get_audience(
        self, audience_id: str, fields: Sequence[str] = AUDIENCE_FIELDS
    ) -> dict[str, Any]:
        """The audience's fields as Meta returns them (counts, operation/delivery status)."""
        return self._call(
            "GET",
            (audience_id,),
            {"fields": ",".join(fields)},
            operation=f"reading audience {audience_id}",
        )

    def delete_audience(self, audience_id: str) -> None:
        self._call("DELETE", (audience_id,), {}, operation=f"deleting audience {audience_id}")

    # -- membership ------------------------------------------------------------------------

    def add(
        self,
        audience_id: str,
        schema: Sequence[str],
        rows: Sequence[Sequence[str]],
        session: Mapping[str, Any] | None = None,
    ) -> BatchResult:
        """Add one batch (≤ 10,000 finished rows in ``schema`` order) to the audience."""
        return self._upload("POST", "users", audience_id, schema, rows, session, "adding")

    def replace(
        self,
        audience_id: str,
        schema: Sequence[str],
        rows: Sequence[Sequence[str]],
        session: Mapping[str, Any],
    ) -> BatchResult:
        """One batch of a replace session; Meta swaps the membership at ``last_batch_flag``."""
        if not session:
            raise InternalError("a Meta replace needs a session (session_id, batch_seq, ...)")
        return self._upload("POST", "usersreplace", audience_id, schema, rows, session, "replacing")

    def remove(
        self,
        audience_id: str,
        schema: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        session_id: int | None = None,
    ) -> BatchResult:
        """Remove ``rows`` in one session of ≤ 10,000-row requests; returns the sums.

        Each request is a ``POST`` to ``/{audience_id}/users`` with ``method=DELETE`` in the
        form body: Graph's method override, which every endpoint accepts, so the payload
        travels in the body like an add instead of in a length-capped DELETE URL
        (docs/platforms.md, "Removals").
        """
        self._check_rows(schema, rows, limit=None)
        if not rows:
            return BatchResult(0, 0, requests=0)
        session_id = session_id or new_session_id()
        total: BatchResult | None = None
        requests = -(-len(rows) // MAX_ROWS_PER_REQUEST)
        for batch_seq in range(1, requests + 1):
            start = (batch_seq - 1) * MAX_ROWS_PER_REQUEST
            stop = min(len(rows), start + MAX_ROWS_PER_REQUEST)
            session = upload_session(
                session_id, batch_seq, last=batch_seq == requests, estimated_total=len(rows)
            )
            params = {"method": "DELETE", **self._upload_params(schema, rows[start:stop], session)}
            answer = self._call(
                "POST",
                (audience_id, "users"),
                params,
                operation=f"removing members from audience {audience_id} "
                f"(batch {batch_seq}, rows {start + 1}-{stop})",
            )
            result = self._batch_result(answer, stop - start, session_id)
            total = result if total is None else total + result
        assert total is not None
        return total

    def _upload(
        self,
        method: str,
        edge: str,
        audience_id: str,
        schema: Sequence[str],
        rows: Sequence[Sequence[str]],
        session: Mapping[str, Any] | None,
        verb: str,
    ) -> BatchResult:
        self._check_rows(schema, rows, limit=MAX_ROWS_PER_REQUEST)
        where = ""
        if session:
            where = f" (session batch {session.get('batch_seq')})"
        answer = self._call(
            method,
            (audience_id, edge),
            self._upload_params(schema, rows, session),
            operation=f"{verb} members of audience {audience_id}{where}",
        )
        session_id = int(session["session_id"]) if session else None
        return self._batch_result(answer, len(rows), session_id)

    @staticmethod
    def _check_rows(
        schema: Sequence[str], rows: Sequence[Sequence[str]], *, limit: int | None
    ) -> None:
        unknown = [key for key in schema if key not in MULTI_KEY_FIELDS]
        if not schema or unknown or len(set(schema)) != len(schema):
            raise InternalError(f"bad Meta schema {list(schema)} (unknown keys: {unknown})")
        if limit is not None and not 0 < len(rows) <= limit:
            raise InternalError(f"a Meta upload holds 1 to {limit} rows, got {len(rows)}")

    @staticmethod
    def _upload_params(
        schema: Sequence[str],
        rows: Sequence[Sequence[str]],
        session: Mapping[str, Any] | None,
    ) -> dict[str, str]:
        params = {"payload": _graph_json({"schema": list(schema), "data": list(rows)})}
        if session:
            params["session"] = _graph_json(dict(session))
        return params

    @staticmethod
    def _batch_result(answer: Mapping[str, Any], sent: int, session_id: int | None) -> BatchResult:
        received = int(answer.get("num_received", 0))
        if received != sent:
            log.warning("Meta counted %d rows received of %d sent", received, sent)
        samples = answer.get("invalid_entry_samples") or {}
        return BatchResult(
            num_received=received,
            num_invalid_entries=int(answer.get("num_invalid_entries", 0)),
            invalid_entry_samples=dict(samples) if isinstance(samples, Mapping) else {},
            session_id=session_id,
        )

    # -- transport ---------------------------------------------------------------------------

    def _http(self, method: str, path: tuple[str, ...], params: Mapping[str, str]) -> Any:
        """One Graph request on the SDK's session, answered as the SDK's ``FacebookResponse``.

        The SDK's ``FacebookAdsApi.call`` puts the token in every URL (its session's query
        parameters). Here a POST carries it in the form body, a GET or DELETE in the
        ``Authorization: OAuth`` header; Graph accepts both (docs/platforms.md, "Tokens").
        The body is form-encoded by :func:`form_encode` (C-speed for the hashed payload;
        the same bytes as ``urlencode``). Headers, response object and the error it raises
        are the SDK's own.
        """
        from facebook_business.api import FacebookAdsApi, FacebookResponse

        url = "/".join((self._graph, self.api_version, "/".join(path)))
        credentials = {k: str(v) for k, v in self._session.requests.params.items()}
        no_query: dict[str, str | None] = dict.fromkeys(credentials)  # None: not in the URL
        headers = dict(FacebookAdsApi.HTTP_DEFAULT_HEADERS)
        request = self._session.requests.request
        if method == "POST":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = form_encode({**params, **credentials})
            response = request(
                method, url, params=no_query, data=body, headers=headers,
                timeout=self._session.timeout,
            )  # fmt: skip
        else:
            headers["Authorization"] = f"OAuth {credentials.pop('access_token', '')}"
            query: dict[str, str | None] = {**no_query, **params, **credentials}
            response = request(
                method, url, params=query, headers=headers, timeout=self._session.timeout
            )
        fb_response = FacebookResponse(
            body=response.text,
            headers=response.headers,
            http_status=response.status_code,
            call={"method": method, "path": url, "params": {}, "headers": {}, "files": {}},
        )
        if fb_response.is_failure():
            raise fb_response.error()
        return fb_response

    def _call(
        self,
        method: str,
        path: tuple[str, ...],
        params: Mapping[str, str],
        *,
        operation: str,
    ) -> dict[str, Any]:
        """One Graph request with retries; returns the JSON object or raises a MetaError."""
        return self.retry.call(
            lambda _attempt: self._request(method, path, params, operation=operation),
            sleep=self._sleep,
            rng=self._rng,
            on_retry=self._log_retry,
            on_give_up=self._log_give_up,
        )

    def _request(
        self,
        method: str,
        path: tuple[str, ...],
        params: Mapping[str, str],
        *,
        operation: str,
    ) -> dict[str, Any]:
        """One Graph request; returns the JSON object or raises a MetaError."""
        import requests
        from facebook_business.exceptions import FacebookRequestError

        started = time.perf_counter()
        error: MetaError
        try:
            response = self._http(method, path, params)
        except FacebookRequestError as exc:
            error = error_from_request_error(
                exc, operation=operation, token_env_var=self.token_env_var
            )
        except requests.RequestException as exc:
            error = error_from_transport(exc, operation=operation, endpoint=self._graph)
        else:
            status = response.status()
            body = response.json()
            log.debug(
                "meta %s /%s: HTTP %s in %.3fs",
                method,
                "/".join(path),
                status,
                time.perf_counter() - started,
            )
            if 200 <= status < 300 and isinstance(body, dict) and "error" not in body:
                return body
            error = error_from_response(status, response.body(), operation=operation)
        raise error  # outside the except clauses: the SDK's exception (and URL) is not chained

    def _log_retry(self, error: ConnectorError, attempt: int, delay: float) -> None:
        log.warning(
            "attempt %d of %d failed, retrying in %.2fs: %s",
            attempt,
            self.retry.max_attempts,
            delay,
            error.message,
        )

    @staticmethod
    def _log_give_up(error: ConnectorError, attempts: int, why: str) -> ConnectorError:
        log.warning("giving up on Meta (%s): %s", why, error.message)
        return error
