"""A Meta Graph API sandbox for Custom Audiences, served over plain HTTP on 127.0.0.1.

It speaks the wire protocol the ``facebook-business`` SDK speaks (``/v26.0/...`` paths,
form-encoded POST bodies, everything in the query string for GET and DELETE, JSON answers
and Graph-shaped errors), so the real SDK can be driven against it by pointing
``FacebookSession.GRAPH`` at :attr:`MetaSandbox.url`. As Graph does, it takes the access
token from the query, the form body or an ``Authorization: OAuth`` header, and honours the
``method`` override (``GET`` / ``POST`` / ``DELETE``, any case) of a POST, so a removal can
be a POST to ``/{audience_id}/users`` with ``method=DELETE`` and the payload in its body.

What it implements:

* ``POST /act_{id}/customaudiences`` · ``GET /{audience_id}`` · ``DELETE /{audience_id}``
* ``POST /{audience_id}/users`` (add) · ``DELETE /{audience_id}/users`` (remove) ·
  ``POST /{audience_id}/usersreplace`` (replace, applied when ``last_batch_flag`` arrives)
* upload sessions: ``batch_seq`` starts at 1 and goes up by one (a repeated batch is
  answered again and changes nothing); a first batch other than 1 or a gap is error 100
* multi-key ``payload = {schema, data}`` checks: known keys, row width, 64-hex lowercase
  hashes (bad rows are counted in ``num_invalid_entries``, the rest is accepted),
  at most 10,000 rows a request (error 100)
* ``access_token`` check (error 190), optional ``appsecret_proof`` check
* request lines longer than 16 KiB answer HTTP 414 with an HTML body (as front-end servers do)
* audiences whose name or description suggests a health condition are flagged
  (operation status 471) and refuse membership updates (error 100, subcode 1713230);
  :meth:`MetaSandbox.flag_audience` and :meth:`MetaSandbox.flag_after_upload` flag one as
  Meta's classifier does after it looked at the members (fault injection)
* optional refusal of removals that leave an audience below a minimum size (error 2650)
* a queue of injected faults (rate limits, 5xx, HTML pages, slow answers, expired token)

Membership is kept as a set of hashed row tuples in the audience's schema order (the
schema of its first upload), so tests can assert the end state exactly. Meta matches
people on any key; the sandbox removes a member only when the removal row is the same
tuple, which is stricter and therefore catches connectors that remove with other rows.

The request log records method (the override, if any; ``http_method`` is the wire's),
path (never the query string, so never the token), sizes, status and duration.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from connectors.meta.config import GRAPH_API_VERSION as DEFAULT_API_VERSION
from connectors.meta.config import MULTI_KEY_FIELDS
from connectors.sandbox.tls import run_until_interrupted

DEMO_ACCESS_TOKEN = "sandbox-demo-token"
DEMO_AD_ACCOUNT_ID = "1234567890"
MAX_ROWS_PER_REQUEST = 10_000
MAX_REQUEST_LINE_BYTES = 16 * 1024

UNHASHED_FIELDS = frozenset({"EXTERN_ID", "MADID"})
CUSTOMER_FILE_SOURCES = frozenset(
    {"USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED"}
)
AUDIENCE_FIELDS = frozenset(
    {
        "id",
        "account_id",
        "name",
        "description",
        "subtype",
        "customer_file_source",
        "approximate_count_lower_bound",
        "approximate_count_upper_bound",
        "operation_status",
        "delivery_status",
        "time_created",
        "time_updated",
    }
)

# Word starts that make Meta's classifier read an audience as health-related (since 2025-09).
HEALTH_TERMS = re.compile(
    r"\b(?:diabet|cancer|oncolog|tumou?r|cardi|heart|hiv\b|aids\b|pregnan|prenatal|matern"
    r"|depress|anxiety|mental|psychiat|bipolar|schizo|obes|weight.?loss|asthma|copd"
    r"|alzheimer|dementia|arthrit|chemo|insulin|opioid|addict|rehab|hepatitis|fertil|ivf\b"
    r"|dialysis|kidney|stroke|epilep|parkinson|autis|herpes|std\b|ssri|statin|diagnos"
    r"|disease|disorder|syndrome|therap|patient|clinic|medicat|prescription|illness)",
    re.IGNORECASE,
)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_VERSION_PREFIX = re.compile(r"^v\d+\.\d+$")
_LOOPBACK_NAMES = frozenset({"localhost"})


@dataclass(frozen=True)
class Fault:
    """One injected failure. Without ``code`` and ``html`` it only delays the answer."""

    http_status: int = 400
    code: int | None = None
    subcode: int | None = None
    message: str = ""
    error_type: str = "OAuthException"
    is_transient: bool | None = None
    html: str | None = None
    delay_s: float = 0.0
    regain_access_minutes: int | None = None  # sent in x-business-use-case-usage

    @property
    def delays_only(self) -> bool:
        return self.code is None and self.html is None


FAULTS: dict[str, Fault] = {
    "app_rate_limit": Fault(
        code=4, message="(#4) Application request limit reached", is_transient=True
    ),
    "user_rate_limit": Fault(
        code=17, subcode=2446079, message="(#17) User request limit reached", is_transient=True
    ),
    "ad_account_rate_limit": Fault(
        code=613,
        subcode=1487742,
        message="(#613) Calls to this api have exceeded the rate limit.",
        is_transient=True,
    ),
    "ads_management_rate_limit": Fault(
        code=80004,
        subcode=2446079,
        message="(#80004) There have been too many calls to this ad-account. "
        "Wait a bit and try again.",
        is_transient=True,
    ),
    "server_error": Fault(
        http_status=500,
        code=2,
        message="An unexpected error has occurred. Please retry your request later.",
        is_transient=True,
    ),
    "service_unavailable_html": Fault(
        http_status=503,
        html="<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head>"
        "<body><h1>Service Unavailable</h1></body></html>",
    ),
    "bad_gateway_html": Fault(
        http_status=502,
        html="<!DOCTYPE html><html><head><title>502</title></head>"
        "<body><h1>Bad Gateway</h1><p>The upstream server did not answer.</p></body></html>",
    ),
    "token_expired": Fault(
        code=190,
        subcode=463,
        message="Error validating access token: Session has expired on Friday, 01-May-26 "
        "10:00:00 PDT.",
    ),
    "permission_denied": Fault(code=200, message="(#200) Permissions error"),
    "audience_update_failed": Fault(
        code=2650, message="(#2650) Failed to update the custom audience"
    ),
    "slow": Fault(delay_s=1.0),
}


@dataclass
class _PendingFault:
    fault: Fault
    method: str | None
    path: re.Pattern[str] | None
    remaining: int

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return self.path is None or self.path.search(path) is not None


@dataclass(frozen=True)
class RequestRecord:
    """One request as the sandbox saw it: no query string, so no token and no rows."""

    method: str
    path: str
    status: int
    request_bytes: int
    response_bytes: int
    duration_s: float
    error_code: int | None
    http_method: str = ""  # the method on the wire (POST for a method=DELETE override)


@dataclass
class _UploadSession:
    kind: str
    responses: dict[int, dict[str, Any]] = field(default_factory=dict)
    staged: set[tuple[str, ...]] = field(default_factory=set)
    finished: bool = False


@dataclass
class _Audience:
    id: str
    account_id: str
    name: str
    description: str
    customer_file_source: str
    flagged: bool
    created: int
    updated: int
    schema: tuple[str, ...] | None = None
    members: set[tuple[str, ...]] = field(default_factory=set)
    sessions: dict[str, _UploadSession] = field(default_factory=dict)


class GraphError(Exception):
    """An error answered in Graph's JSON shape (or as an HTML page when ``html`` is set)."""

    def __init__(
        self,
        code: int | None,
        message: str,
        *,
        subcode: int | None = None,
        http_status: int = 400,
        error_type: str = "OAuthException",
        is_transient: bool | None = None,
        html: str | None = None,
        regain_access_minutes: int | None = None,
    ) -> None:
        super().__init__(message)
        self.regain_access_minutes = regain_access_minutes
        self.code = code
        self.message = message
        self.subcode = subcode
        self.http_status = http_status
        self.error_type = error_type
        self.is_transient = is_transient
        self.html = html

    @classmethod
    def from_fault(cls, fault: Fault) -> GraphError:
        return cls(
            fault.code,
            fault.message,
            subcode=fault.subcode,
            http_status=fault.http_status,
            error_type=fault.error_type,
            is_transient=fault.is_transient,
            html=fault.html,
            regain_access_minutes=fault.regain_access_minutes,
        )

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.error_type}
        if self.code is not None:
            error["code"] = self.code
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        if self.is_transient is not None:
            error["is_transient"] = self.is_transient
        error["fbtrace_id"] = _fbtrace_id()
        return {"error": error}


def _fbtrace_id() -> str:
    return secrets.token_urlsafe(8)[:11]


def _unknown_object(method: str, object_id: str) -> GraphError:
    return GraphError(
        100,
        f"Unsupported {method.lower()} request. Object with ID '{object_id}' does not exist, "
        "cannot be loaded due to missing permissions, or does not support this operation.",
        subcode=33,
        error_type="GraphMethodException",
    )


def _invalid_parameter(message: str, subcode: int | None = None) -> GraphError:
    return GraphError(100, f"(#100) {message}", subcode=subcode)


def is_health_suggestive(text: str) -> bool:
    """True when ``text`` holds a word Meta's classifier reads as a health condition."""
    return HEALTH_TERMS.search(text) is not None


class MetaSandbox:
    """A threaded Graph API sandbox on 127.0.0.1; ``port=0`` picks a free port.

    Use as a context manager or call :meth:`start` / :meth:`stop`. Thread-safe.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_token: str = DEMO_ACCESS_TOKEN,
        ad_account_ids: tuple[str, ...] = (DEMO_AD_ACCOUNT_ID,),
        app_secret: str | None = None,
        require_appsecret_proof: bool = False,
        min_size_after_removal: int | None = None,
        max_request_line_bytes: int = MAX_REQUEST_LINE_BYTES,
    ) -> None:
        _check_loopback(host)
        self._host = host
        self._port = port
        self._access_token = access_token
        self._token_expired = False
        self._ad_account_ids = {a.removeprefix("act_") for a in ad_account_ids}
        self._app_secret = app_secret
        self.require_appsecret_proof = require_appsecret_proof
        self.min_size_after_removal = min_size_after_removal
        self.max_request_line_bytes = max_request_line_bytes
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._audiences: dict[str, _Audience] = {}
        self._faults: list[_PendingFault] = []
        self._flag_after_upload = False
        self._log: list[RequestRecord] = []
        self._ids = itertools.count(23_850_000_000_000_001)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> MetaSandbox:
        if self._server is not None:
            return self
        handler = type("_BoundMetaHandler", (_MetaHandler,), {"sandbox": self})
        server = ThreadingHTTPServer((self._host, self._port), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MetaSandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL to put in ``FacebookSession.GRAPH`` (no trailing slash, no version)."""
        if self._server is None:
            raise RuntimeError("the Meta sandbox is not started; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def access_token(self) -> str:
        return self._access_token

    # -- test controls ----------------------------------------------------------------------

    def inject(
        self,
        fault: Fault | str,
        *,
        method: str | None = None,
        path: str | None = None,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` requests matching ``method`` and the ``path`` regex fail."""
        if isinstance(fault, str):
            if fault not in FAULTS:
                raise KeyError(f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS))}")
            fault = FAULTS[fault]
        if times < 1:
            raise ValueError("times must be at least 1")
        pending = _PendingFault(
            fault,
            method.upper() if method else None,
            re.compile(path) if path else None,
            times,
        )
        with self._lock:
            self._faults.append(pending)

    def pending_faults(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def expire_token(self) -> None:
        """From now on the configured token answers error 190/463 (session expired)."""
        with self._lock:
            self._token_expired = True

    def flag_audience(self, audience_id: str) -> None:
        """Flag an audience now: operation status 471, membership updates refused."""
        with self._lock:
            self._audience(audience_id).flagged = True

    def flag_after_upload(self) -> None:
        """The next membership update is accepted, then its audience is flagged (471)."""
        with self._lock:
            self._flag_after_upload = True

    def members(self, audience_id: str) -> set[tuple[str, ...]]:
        with self._settled():
            return set(self._audience(audience_id).members)

    def member_schema(self, audience_id: str) -> tuple[str, ...] | None:
        with self._settled():
            return self._audience(audience_id).schema

    def member_key_values(self, audience_id: str, key: str) -> set[str]:
        """Non-empty values of one schema key over the audience's members."""
        with self._settled():
            audience = self._audience(audience_id)
            if audience.schema is None:
                return set()
            if key not in audience.schema:
                raise KeyError(f"{key} is not in the audience schema {audience.schema}")
            position = audience.schema.index(key)
            return {row[position] for row in audience.members if row[position]}

    def audience_ids(self) -> list[str]:
        with self._settled():
            return list(self._audiences)

    def audience_info(self, audience_id: str) -> dict[str, Any]:
        with self._settled():
            return self._describe(self._audience(audience_id), AUDIENCE_FIELDS)

    def request_log(self) -> list[RequestRecord]:
        with self._settled():
            return list(self._log)

    def server_time_s(self) -> float:
        """Total time spent handling requests (for client-minus-server overhead figures)."""
        with self._settled():
            return sum(r.duration_s for r in self._log)

    def reset_log(self) -> None:
        with self._settled():
            self._log.clear()

    @contextmanager
    def _settled(self, timeout_s: float = 10.0) -> Iterator[None]:
        # A client sees the answer a moment before the handler thread records it: state
        # queries wait until no request is in flight, so tests read a settled sandbox.
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)
            yield

    def _audience(self, audience_id: str) -> _Audience:
        try:
            return self._audiences[audience_id]
        except KeyError:
            raise KeyError(f"no audience {audience_id} in the sandbox") from None

    # -- request handling (called from handler threads) ---------------------------------------

    def _begin(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _record(self, record: RequestRecord) -> None:
        with self._idle:
            self._log.append(record)
            self._in_flight -= 1
            self._idle.notify_all()

    def _usage_header(self, regain_access_minutes: int) -> str:
        usage = {
            "type": "ads_management",
            "call_count": 100,
            "total_cputime": 40,
            "total_time": 60,
            "estimated_time_to_regain_access": regain_access_minutes,
        }
        return json.dumps({account: [usage] for account in sorted(self._ad_account_ids)})

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for pending in self._faults:
                if pending.matches(method, path):
                    pending.remaining -= 1
                    if pending.remaining == 0:
                        self._faults.remove(pending)
                    return pending.fault
        return None

    def _check_token(self, params: dict[str, str], authorization: str | None) -> None:
        token = params.get("access_token")
        if token is None and authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() in {"oauth", "bearer"}:
                token = value.strip()
        if not token:
            raise GraphError(
                2500,
                "An active access token must be used to query information about the current user.",
            )
        if not hmac.compare_digest(token.encode(), self._access_token.encode()):
            raise GraphError(190, "Invalid OAuth access token - Cannot parse access token")
        with self._lock:
            expired = self._token_expired
        if expired:
            raise GraphError.from_fault(FAULTS["token_expired"])
        proof = params.get("appsecret_proof")
        if self._app_secret is not None and (proof is not None or self.require_appsecret_proof):
            if proof is None:
                raise GraphError(
                    100,
                    "API calls from the server require an appsecret_proof argument",
                    error_type="GraphMethodException",
                )
            expected = hmac.new(
                self._app_secret.encode(), token.encode(), hashlib.sha256
            ).hexdigest()
            if not hmac.compare_digest(proof, expected):
                raise GraphError(
                    100,
                    "Invalid appsecret_proof provided in the API argument",
                    error_type="GraphMethodException",
                )

    def handle(self, method: str, segments: list[str], params: dict[str, str]) -> dict[str, Any]:
        if (
            len(segments) == 2
            and segments[0].startswith("act_")
            and segments[1] == ("customaudiences")
        ):
            if method != "POST":
                raise _unknown_object(method, segments[0])
            return self._create_audience(segments[0].removeprefix("act_"), params)
        if len(segments) == 1:
            if method == "GET":
                return self._get_audience(segments[0], params)
            if method == "DELETE":
                return self._delete_audience(segments[0])
        if len(segments) == 2 and (method, segments[1]) in {
            ("POST", "users"),
            ("DELETE", "users"),
            ("POST", "usersreplace"),
        }:
            kind = {"POST": "add", "DELETE": "remove"}[method]
            if segments[1] == "usersreplace":
                kind = "replace"
            return self._update_members(segments[0], kind, params)
        raise _unknown_object(method, "/".join(segments) or "/")

    def _create_audience(self, account_id: str, params: dict[str, str]) -> dict[str, Any]:
        if account_id not in self._ad_account_ids:
            raise _unknown_object("POST", f"act_{account_id}")
        name = params.get("name", "")
        if not name:
            raise _invalid_parameter("The parameter name is required")
        subtype = params.get("subtype", "")
        if subtype != "CUSTOM":
            raise _invalid_parameter(
                f"Param subtype must be CUSTOM for a customer list audience (got {subtype!r})"
            )
        source = params.get("customer_file_source", "")
        if source not in CUSTOMER_FILE_SOURCES:
            raise _invalid_parameter(
                "Param customer_file_source must be one of "
                f"{{{', '.join(sorted(CUSTOMER_FILE_SOURCES))}}}",
                subcode=1870101,
            )
        description = params.get("description", "")
        now = int(time.time())
        with self._lock:
            audience_id = str(next(self._ids))
            self._audiences[audience_id] = _Audience(
                id=audience_id,
                account_id=account_id,
                name=name,
                description=description,
                customer_file_source=source,
                flagged=is_health_suggestive(f"{name} {description}"),
                created=now,
                updated=now,
            )
        return {"id": audience_id}

    def _get_audience(self, audience_id: str, params: dict[str, str]) -> dict[str, Any]:
        requested = [f for f in params.get("fields", "").split(",") if f] or ["id", "name"]
        unknown = [f for f in requested if f not in AUDIENCE_FIELDS]
        if unknown:
            raise _invalid_parameter(
                f"Tried accessing nonexisting field ({unknown[0]}) on node type (CustomAudience)"
            )
        with self._lock:
            audience = self._audiences.get(audience_id)
            if audience is None:
                raise _unknown_object("GET", audience_id)
            return self._describe(audience, frozenset(requested) | {"id"})

    def _describe(self, audience: _Audience, fields: frozenset[str]) -> dict[str, Any]:
        size = len(audience.members)
        if audience.flagged:
            operation = {
                "code": 471,
                "description": "This audience may suggest a health condition and cannot be "
                "used for ads delivery.",
            }
            delivery = {"code": 471, "description": "This audience is restricted."}
        else:
            operation = {"code": 200, "description": "Normal"}
            if size >= 100:
                delivery = {"code": 200, "description": "This audience is ready for use."}
            else:
                delivery = {"code": 300, "description": "This audience is too small to use."}
        everything: dict[str, Any] = {
            "id": audience.id,
            "account_id": audience.account_id,
            "name": audience.name,
            "description": audience.description,
            "subtype": "CUSTOM",
            "customer_file_source": audience.customer_file_source,
            "approximate_count_lower_bound": size,
            "approximate_count_upper_bound": size,
            "operation_status": operation,
            "delivery_status": delivery,
            "time_created": audience.created,
            "time_updated": audience.updated,
        }
        return {k: v for k, v in everything.items() if k in fields}

    def _delete_audience(self, audience_id: str) -> dict[str, Any]:
        with self._lock:
            if self._audiences.pop(audience_id, None) is None:
                raise _unknown_object("DELETE", audience_id)
        return {"success": True}

    def _update_members(self, audience_id: str, kind: str, params: dict[str, str]) -> dict:
        with self._lock:
            audience = self._audiences.get(audience_id)
            flagged = audience.flagged if audience else False
        if audience is None:
            raise _unknown_object("POST" if kind != "remove" else "DELETE", audience_id)
        if flagged:
            raise GraphError(
                100,
                "(#100) This custom audience can't be updated: it may suggest a health "
                "condition, which is not allowed (operation status 471).",
                subcode=1713230,
            )
        schema, rows = _parse_payload(params.get("payload"))
        session = _parse_session(params.get("session"), required=kind == "replace")
        invalid = _invalid_rows(schema, rows)
        valid = [tuple(row) for i, row in enumerate(rows) if i not in invalid]
        samples = _invalid_samples(schema, rows, invalid)
        with self._lock:
            target_schema = audience.schema or schema
            if kind == "replace" or audience.schema is None:
                target_schema = schema
            projected = _project(schema, target_schema, valid)
            response: dict[str, Any] = {
                "audience_id": audience_id,
                "num_received": len(rows),
                "num_invalid_entries": len(invalid),
                "invalid_entry_samples": samples,
            }
            if session is not None:
                response["session_id"] = str(session["session_id"])
                key = f"{kind}:{session['session_id']}"
                upload = audience.sessions.setdefault(key, _UploadSession(kind))
                seq = int(session["batch_seq"])
                if seq in upload.responses:  # a retried batch: answer it again, change nothing
                    return upload.responses[seq]
                expected = len(upload.responses) + 1
                if seq != expected:
                    if not upload.responses:
                        audience.sessions.pop(key)
                    raise _invalid_parameter(
                        f"Param session[batch_seq] is {seq}; session "
                        f"{session['session_id']} expects batch {expected} next (batches are "
                        "numbered from 1 without gaps)"
                    )
                if upload.finished:
                    raise _invalid_parameter(
                        f"The session {session['session_id']} has already ended "
                        "(last_batch_flag was sent)",
                        subcode=1870104,
                    )
            else:
                upload = None
            if kind == "add":
                if audience.schema is None:
                    audience.schema = target_schema
                audience.members.update(projected)
            elif kind == "remove":
                remaining = audience.members.difference(projected)
                floor = self.min_size_after_removal
                if floor is not None and len(remaining) < floor:
                    raise GraphError(
                        2650,
                        "(#2650) Failed to update the custom audience: this removal would "
                        f"leave fewer than {floor} people in the audience",
                        error_type="OAuthException",
                    )
                audience.members = remaining
            else:
                assert upload is not None
                upload.staged.update(projected)
            if upload is not None:
                upload.responses[int(session["batch_seq"])] = response  # type: ignore[index]
                if session["last_batch_flag"]:  # type: ignore[index]
                    upload.finished = True
                    if kind == "replace":
                        audience.schema = target_schema
                        audience.members = upload.staged
                        upload.staged = set()
            audience.updated = int(time.time())
            if self._flag_after_upload:
                self._flag_after_upload = False
                audience.flagged = True
            return response


def _parse_payload(raw: str | None) -> tuple[tuple[str, ...], list[list[str]]]:
    if raw is None:
        raise _invalid_parameter("The parameter payload is required")
    try:
        payload = json.loads(raw)
    except ValueError:
        raise _invalid_parameter("Param payload must be a JSON object") from None
    if not isinstance(payload, dict):
        raise _invalid_parameter("Param payload must be a JSON object")
    schema = payload.get("schema")
    data = payload.get("data")
    if isinstance(schema, str):
        schema = [schema]
    if not isinstance(schema, list) or not schema or not all(isinstance(k, str) for k in schema):
        raise _invalid_parameter("Param payload[schema] must be a non-empty list of keys")
    unknown = [k for k in schema if k not in MULTI_KEY_FIELDS]
    if unknown:
        raise _invalid_parameter(
            f"Param payload[schema] has an invalid key {unknown[0]!r}; allowed: "
            f"{', '.join(MULTI_KEY_FIELDS)}"
        )
    if len(set(schema)) != len(schema):
        raise _invalid_parameter("Param payload[schema] repeats a key")
    if not isinstance(data, list) or not data:
        raise _invalid_parameter("Param payload[data] must be a non-empty array")
    if len(data) > MAX_ROWS_PER_REQUEST:
        raise _invalid_parameter(
            f"Param payload[data] has {len(data)} entries; the maximum is "
            f"{MAX_ROWS_PER_REQUEST} per request",
            subcode=1870054,
        )
    width = len(schema)
    for position, row in enumerate(data):
        if not isinstance(row, list) or len(row) != width:
            raise _invalid_parameter(
                f"Data and schema do not match: entry {position} does not have {width} values",
                subcode=1870053,
            )
        if not all(isinstance(value, str) for value in row):
            raise _invalid_parameter(f"Entry {position} of payload[data] holds a non-string")
    return tuple(schema), data


def _parse_session(raw: str | None, *, required: bool) -> dict[str, Any] | None:
    if raw is None:
        if required:
            raise _invalid_parameter("The parameter session is required for usersreplace")
        return None
    try:
        session = json.loads(raw)
    except ValueError:
        raise _invalid_parameter("Param session must be a JSON object") from None
    if not isinstance(session, dict):
        raise _invalid_parameter("Param session must be a JSON object")
    session_id = session.get("session_id")
    batch_seq = session.get("batch_seq")
    if not isinstance(session_id, int) or isinstance(session_id, bool) or session_id <= 0:
        raise _invalid_parameter("Param session[session_id] must be a positive integer")
    if not isinstance(batch_seq, int) or isinstance(batch_seq, bool) or batch_seq < 1:
        raise _invalid_parameter("Param session[batch_seq] must be an integer >= 1")
    flag = session.get("last_batch_flag")
    if not isinstance(flag, bool):
        raise _invalid_parameter("Param session[last_batch_flag] must be a boolean")
    return session


def _invalid_rows(schema: tuple[str, ...], rows: list[list[str]]) -> set[int]:
    hashed = [i for i, key in enumerate(schema) if key not in UNHASHED_FIELDS]
    invalid: set[int] = set()
    match = _SHA256_HEX.fullmatch
    for position, row in enumerate(rows):
        if not any(row):
            invalid.add(position)
            continue
        for i in hashed:
            value = row[i]
            if value and match(value) is None:
                invalid.add(position)
                break
    return invalid


def _invalid_samples(
    schema: tuple[str, ...], rows: list[list[str]], invalid: set[int]
) -> dict[str, str]:
    samples: dict[str, str] = {}
    for position in sorted(invalid)[:10]:
        row = rows[position]
        bad = [
            key
            for key, value in zip(schema, row, strict=True)
            if value and key not in UNHASHED_FIELDS and _SHA256_HEX.fullmatch(value) is None
        ]
        reason = f"Invalid {bad[0]} hash" if bad else "No identifiers in the row"
        samples[f"row {position}"] = reason
    return samples


def _project(
    source: tuple[str, ...], target: tuple[str, ...], rows: list[tuple[str, ...]]
) -> set[tuple[str, ...]]:
    if source == target:
        return set(rows)
    positions = [source.index(k) if k in source else None for k in target]
    return {tuple(row[p] if p is not None else "" for p in positions) for row in rows}


class _MetaHandler(BaseHTTPRequestHandler):
    sandbox: MetaSandbox
    raw_requestline: bytes
    effective_method: str = ""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server_version = "MetaGraphSandbox/1.0"
    sys_version = ""
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:  # the request line holds the token
        return

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        started = time.perf_counter()
        self.sandbox._begin()
        request_line_bytes = len(self.raw_requestline)
        path = urlsplit(self.path).path
        body = b""
        status, code, sent = 0, None, 0  # 0: the connection broke before an answer went out
        self.effective_method = method
        try:
            body = self._read_body()
            status, code, sent = self._answer(method, body, request_line_bytes)
        finally:
            self.sandbox._record(
                RequestRecord(
                    method=self.effective_method,
                    path=path,
                    status=status,
                    request_bytes=request_line_bytes + len(body),
                    response_bytes=sent,
                    duration_s=time.perf_counter() - started,
                    error_code=code,
                    http_method=method,
                )
            )

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _answer(
        self, method: str, body: bytes, request_line_bytes: int
    ) -> tuple[int, int | None, int]:
        if request_line_bytes > self.sandbox.max_request_line_bytes:
            self.close_connection = True
            page = (
                "<html><head><title>414 Request-URI Too Large</title></head><body>"
                "<h1>Request-URI Too Large</h1></body></html>"
            )
            return 414, None, self._send(414, page.encode(), "text/html; charset=utf-8")
        split = urlsplit(self.path)
        segments = [s for s in split.path.split("/") if s]
        if segments and _VERSION_PREFIX.match(segments[0]):
            segments = segments[1:]
        try:
            params = dict(parse_qsl(split.query, keep_blank_values=True))
            content_type = self.headers.get("Content-Type", "")
            if body and content_type.startswith("application/x-www-form-urlencoded"):
                params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
            method = self._override(method, params)
            fault = self.sandbox._take_fault(method, split.path)
            if fault is not None:
                if fault.delay_s:
                    time.sleep(fault.delay_s)
                if not fault.delays_only:
                    raise GraphError.from_fault(fault)
            self.sandbox._check_token(params, self.headers.get("Authorization"))
            result = self.sandbox.handle(method, segments, params)
        except GraphError as error:
            if error.html is not None:
                sent = self._send(error.http_status, error.html.encode(), "text/html")
                return error.http_status, None, sent
            payload = json.dumps(error.body()).encode()
            headers = {}
            if error.regain_access_minutes is not None:
                headers["x-business-use-case-usage"] = self.sandbox._usage_header(
                    error.regain_access_minutes
                )
            sent = self._send(error.http_status, payload, headers=headers)
            return error.http_status, error.code, sent
        return 200, None, self._send(200, json.dumps(result).encode())

    def _override(self, method: str, params: dict[str, str]) -> str:
        """Graph's ``method`` parameter: a POST may ask to be run as GET or DELETE."""
        asked = params.pop("method", None)
        if asked is None or method != "POST":
            return method
        if asked.upper() not in {"GET", "POST", "DELETE"}:
            raise _invalid_parameter(f"Unsupported method override {asked!r}")
        self.effective_method = asked.upper()
        return self.effective_method

    def _send(
        self,
        status: int,
        payload: bytes,
        content_type: str = "",
        headers: dict[str, str] | None = None,
    ) -> int:
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", content_type or "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-fb-trace-id", _fbtrace_id())
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        return len(payload)


def _check_loopback(host: str) -> None:
    if host in _LOOPBACK_NAMES:
        return
    try:
        loopback = ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"the Meta sandbox only listens on an IPv4 loopback address, not {host!r} — "
            "use 127.0.0.1 or localhost"
        )


def serve(host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve in the foreground until Ctrl-C, printing the URL and the demo token."""
    with MetaSandbox(host=host, port=port) as sandbox:
        print(f"Meta sandbox (Graph API {DEFAULT_API_VERSION}) at {sandbox.url}", flush=True)
        print(f"  access token (demo only): {sandbox.access_token}", flush=True)
        print(f"  ad account: act_{DEMO_AD_ACCOUNT_ID}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        run_until_interrupted()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the Meta Custom Audiences sandbox.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
