"""A Data Manager API sandbox for Customer Match: gRPC over TLS on 127.0.0.1.

The installed ``google-ads-datamanager`` client's default transport is gRPC over TLS, so
this sandbox serves the ``google.ads.datamanager.v1`` services that a Customer Match
upload calls, with the client's own request and response messages:

* ``UserListService/CreateUserList``, ``GetUserList``, ``ListUserLists`` (filter
  ``display_name = "..."`` only).
* ``IngestionService/IngestAudienceMembers``, ``RemoveAudienceMembers``,
  ``RemoveAllAudienceMembers`` (each answers a ``request_id`` at once) and
  ``RetrieveRequestStatus``: a request stays PROCESSING for ``processing_polls`` status
  checks, then is applied and ends SUCCESS, PARTIAL_SUCCESS or FAILED with error counts
  per reason, as the real API reports them (counts, never which members).

Validation the real API does synchronously ends the call with ``INVALID_ARGUMENT`` and a
``google.rpc.BadRequest`` naming the field (hashes that are not SHA-256 hex, a region
code that is not ISO 3166-1 alpha-2, more than 10,000 members, encoding unset, Customer
Match terms not ACCEPTED); an unknown list is ``NOT_FOUND``, another account
``PERMISSION_DENIED``, a wrong token ``UNAUTHENTICATED``. A member whose consent (its own,
else the request's) is DENIED for ``ad_user_data`` or ``ad_personalization`` is refused
in processing (``DENIED_CONSENT``): never added; so is a member whose address is in the
EEA, the UK or Switzerland without both signals GRANTED (``UNKNOWN_CONSENT``: Google's EU
user consent policy).

Faults are queued with :meth:`DataManagerSandbox.inject`: ``resource_exhausted`` (with a
``RetryInfo``), ``unavailable``, ``permission_denied``, ``unauthenticated`` end the next
call; ``partial`` makes the next ingest end PARTIAL_SUCCESS with its last ``count``
members refused (``INVALID_FORMAT``); ``processing`` keeps the next request PROCESSING
for ``polls`` more checks; ``failed`` makes the next request end FAILED.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
from google.ads.datamanager_v1 import types
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from audiences.core.countries import ISO_COUNTRIES
from connectors.sandbox.tls import LoopbackGrpcSandbox, run_until_interrupted
from policies.sendable import CONSENT_REGIONS

PREFIX = "google.ads.datamanager.v1"
DEFAULT_CUSTOMER_ID = "1234567890"
DEFAULT_ACCESS_TOKEN = "sandbox-data-manager-token"
MAX_MEMBERS = 10_000
MAX_MEMBERSHIP_DAYS = 540
DOMAIN = "datamanager.googleapis.com"

Identifier = tuple[str, str]
Person = frozenset[Identifier]
FaultKind = Literal[
    "resource_exhausted",
    "unavailable",
    "permission_denied",
    "unauthenticated",
    "partial",
    "processing",
    "failed",
]
Status = types.RequestStatusPerDestination.RequestStatus
Reason = types.ProcessingErrorReason
GRANTED, DENIED = 1, 2
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    method: str | None = None  # e.g. "IngestAudienceMembers"; None = any
    count: int = 0  # partial: members refused
    polls: int = 0  # processing: extra PROCESSING answers


@dataclass
class SandboxUserList:
    id: int
    name: str
    display_name: str
    description: str
    membership_days: int
    members: set[Person] = field(default_factory=set)


@dataclass
class SandboxRequest:
    request_id: str
    kind: Literal["ingest", "remove", "remove_all"]
    user_list: int
    people: list[tuple[Person, int]]  # (person, ProcessingErrorReason its consent gets, or 0)
    polls_left: int
    refused_tail: int = 0  # partial fault: the last N are refused
    fail: bool = False
    status: int = Status.PROCESSING
    errors: dict[int, int] = field(default_factory=dict)  # ProcessingErrorReason -> records
    polls: int = 0


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, *details: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


def _bad(field_path: str, description: str) -> _Refused:
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=field_path, description=description
    )
    return _Refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        "Request contains an invalid argument.",
        error_details_pb2.BadRequest(field_violations=[violation]),
        error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain=DOMAIN),
    )


class DataManagerSandbox(LoopbackGrpcSandbox):
    """Customer Match part of the Data Manager API, over TLS on 127.0.0.1."""

    def __init__(
        self,
        *,
        customer_id: str = DEFAULT_CUSTOMER_ID,
        access_token: str = DEFAULT_ACCESS_TOKEN,
        processing_polls: int = 1,
        port: int = 0,
        max_workers: int = 8,
    ) -> None:
        self.customer_id = customer_id
        self._access_token = access_token
        self.processing_polls = processing_polls
        self._requested_port = port
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._ids = itertools.count(7_000_001)
        self.user_lists: dict[int, SandboxUserList] = {}
        self.requests: dict[str, SandboxRequest] = {}
        self._faults: deque[Fault] = deque()
        self.calls: list[tuple[str, str]] = []  # (method, status name)
        self.handling_s = 0.0  # time spent in handlers (client-minus-server overhead figures)

    # -- test controls

    def inject(
        self,
        kind: FaultKind,
        *,
        method: str | None = None,
        times: int = 1,
        count: int = 0,
        polls: int = 0,
    ) -> None:
        """Queue ``times`` faults, each consumed by the next call of ``method`` (or any)."""
        with self._lock:
            self._faults.extend(Fault(kind, method, count, polls) for _ in range(times))

    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def members(self, user_list: str | int) -> frozenset[Person]:
        """The people of a list (each a frozenset of ``(kind, value)`` identifiers)."""
        with self._lock:
            return frozenset(self.user_lists[_list_id(user_list)].members)

    def call_count(self, method: str, status: str | None = None) -> int:
        return sum(1 for m, s in self.calls if m == method and (status is None or s == status))

    def requests_for(self, user_list: str | int, kind: str | None = None) -> list[SandboxRequest]:
        wanted = _list_id(user_list)
        return [
            r
            for r in self.requests.values()
            if r.user_list == wanted and (kind is None or r.kind == kind)
        ]

    # -- plumbing

    def _handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(name: str, handler: Callable[[Any], Any], request: Any, response: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                self._served(name, handler),
                request_deserializer=request.deserialize,
                response_serializer=response.serialize,
            )

        t = types
        return [
            grpc.method_handlers_generic_handler(
                f"{PREFIX}.IngestionService",
                {
                    "IngestAudienceMembers": unary(
                        "IngestAudienceMembers",
                        self._ingest,
                        t.IngestAudienceMembersRequest,
                        t.IngestAudienceMembersResponse,
                    ),
                    "RemoveAudienceMembers": unary(
                        "RemoveAudienceMembers",
                        self._remove,
                        t.RemoveAudienceMembersRequest,
                        t.RemoveAudienceMembersResponse,
                    ),
                    "RemoveAllAudienceMembers": unary(
                        "RemoveAllAudienceMembers",
                        self._remove_all,
                        t.RemoveAllAudienceMembersRequest,
                        t.RemoveAllAudienceMembersResponse,
                    ),
                    "RetrieveRequestStatus": unary(
                        "RetrieveRequestStatus",
                        self._status,
                        t.RetrieveRequestStatusRequest,
                        t.RetrieveRequestStatusResponse,
                    ),
                },
            ),
            grpc.method_handlers_generic_handler(
                f"{PREFIX}.UserListService",
                {
                    "CreateUserList": unary(
                        "CreateUserList", self._create_list, t.CreateUserListRequest, t.UserList
                    ),
                    "GetUserList": unary(
                        "GetUserList", self._get_list, t.GetUserListRequest, t.UserList
                    ),
                    "ListUserLists": unary(
                        "ListUserLists",
                        self._list_lists,
                        t.ListUserListsRequest,
                        t.ListUserListsResponse,
                    ),
                },
            ),
        ]

    def _served(self, method: str, handler: Callable[[Any], Any]) -> Any:
        def serve_call(request: Any, context: grpc.ServicerContext) -> Any:
            request_id = uuid.uuid4().hex
            started = time.perf_counter()
            try:
                self._before(method, context)
                response = handler(request)
            except _Refused as refused:
                self._handled(started)
                self.calls.append((method, refused.code.name))
                context.set_trailing_metadata((("request-id", request_id),))
                status = status_pb2.Status(code=refused.code.value[0], message=refused.message)
                for detail in refused.details:
                    packed = any_pb2.Any()
                    packed.Pack(detail)
                    status.details.append(packed)
                context.abort_with_status(rpc_status.to_status(status))
            self._handled(started)
            self.calls.append((method, "OK"))
            context.set_trailing_metadata((("request-id", request_id),))
            return response

        return serve_call

    def _handled(self, started: float) -> None:
        with self._lock:
            self.handling_s += time.perf_counter() - started

    def _take_fault(self, method: str, kinds: Sequence[str]) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.kind in kinds and fault.method in (None, method):
                    del self._faults[i]
                    return fault
        return None

    def _before(self, method: str, context: grpc.ServicerContext) -> None:
        fault = self._take_fault(
            method, ("resource_exhausted", "unavailable", "permission_denied", "unauthenticated")
        )
        if fault is not None:
            raise _fault_error(fault.kind)
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != f"Bearer {self._access_token}":
            raise _Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "Request had invalid authentication credentials.",
                error_details_pb2.ErrorInfo(reason="ACCESS_TOKEN_EXPIRED", domain=DOMAIN),
            )

    def _account(self, account_id: str) -> None:
        if account_id != self.customer_id:
            raise _Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                "The caller does not have permission.",
                error_details_pb2.ErrorInfo(reason="PERMISSION_DENIED", domain=DOMAIN),
            )

    def _parent(self, parent: str) -> None:
        parts = parent.split("/")
        if len(parts) < 4 or parts[:3] != ["accountTypes", "GOOGLE_ADS", "accounts"]:
            raise _bad("parent", "must be accountTypes/GOOGLE_ADS/accounts/{account}")
        self._account(parts[3])

    # -- UserListService

    def _create_list(self, request: Any) -> Any:
        self._parent(request.parent)
        user_list = request.user_list
        if not user_list.display_name:
            raise _bad("user_list.display_name", "is required")
        seconds = int(user_list.membership_duration.total_seconds())
        if seconds % 86_400 or not 0 < seconds <= MAX_MEMBERSHIP_DAYS * 86_400:
            raise _bad("user_list.membership_duration", "must be whole days, at most 540")
        keys = list(user_list.ingested_user_list_info.upload_key_types)
        if keys != [types.IngestedUserListInfo.UploadKeyType.CONTACT_ID]:
            raise _bad("user_list.ingested_user_list_info.upload_key_types", "must be CONTACT_ID")
        with self._lock:
            if any(ul.display_name == user_list.display_name for ul in self.user_lists.values()):
                raise _Refused(grpc.StatusCode.ALREADY_EXISTS, "A user list has this name.")
            list_id = next(self._ids)
            stored = SandboxUserList(
                list_id,
                f"{request.parent}/userLists/{list_id}",
                user_list.display_name,
                user_list.description,
                seconds // 86_400,
            )
            self.user_lists[list_id] = stored
        return _user_list(stored)

    def _get_list(self, request: Any) -> Any:
        parent, _, list_id = request.name.rpartition("/userLists/")
        self._parent(parent)
        with self._lock:
            stored = self.user_lists.get(int(list_id)) if list_id.isdigit() else None
        if stored is None:
            raise _Refused(grpc.StatusCode.NOT_FOUND, "Requested entity was not found.")
        return _user_list(stored)

    def _list_lists(self, request: Any) -> Any:
        self._parent(request.parent)
        wanted: str | None = None
        if request.filter:
            field_name, _, value = request.filter.partition("=")
            if field_name.strip() not in ("display_name", "displayName"):
                raise _bad("filter", "the sandbox filters on display_name only")
            wanted = value.strip().strip('"')
        with self._lock:
            found = [
                _user_list(ul)
                for ul in self.user_lists.values()
                if wanted is None or ul.display_name == wanted
            ]
        return types.ListUserListsResponse(user_lists=found)

    # -- IngestionService

    def _destination(self, request: Any) -> SandboxUserList:
        if len(request.destinations) != 1:
            raise _bad("destinations", "the sandbox takes exactly one destination")
        destination = request.destinations[0]
        account = destination.operating_account
        if account.account_type != types.ProductAccount.AccountType.GOOGLE_ADS:
            raise _bad("destinations[0].operating_account.account_type", "must be GOOGLE_ADS")
        self._account(account.account_id)
        list_id = destination.product_destination_id
        with self._lock:
            stored = self.user_lists.get(int(list_id)) if list_id.isdigit() else None
        if stored is None:
            raise _Refused(
                grpc.StatusCode.NOT_FOUND,
                "The user list was not found.",
                error_details_pb2.ErrorInfo(reason="DESTINATION_NOT_FOUND", domain=DOMAIN),
            )
        return stored

    def _members(self, request: Any, *, adding: bool) -> list[tuple[Person, int]]:
        if request.encoding != types.Encoding.HEX:
            raise _bad("encoding", "must be HEX for hashed identifiers")
        if not 0 < len(request.audience_members) <= MAX_MEMBERS:
            raise _bad("audience_members", f"must hold 1 to {MAX_MEMBERS} members")
        default = request.consent if adding else None
        people = []
        for i, member in enumerate(request.audience_members):
            person = _person(member, f"audience_members[{i}]")
            refusal = 0
            if default is not None:
                own = member.consent if "consent" in member else None
                values = [
                    (getattr(own, signal) if own is not None else 0) or getattr(default, signal)
                    for signal in ("ad_user_data", "ad_personalization")
                ]
                regions = {v.split(":")[2] for k, v in person if k == "address"}
                if DENIED in values:
                    refusal = Reason.PROCESSING_ERROR_REASON_DENIED_CONSENT
                elif regions & CONSENT_REGIONS and values != [GRANTED, GRANTED]:
                    # EU user consent policy: EEA / UK / CH data needs both GRANTED
                    refusal = Reason.PROCESSING_ERROR_REASON_UNKNOWN_CONSENT
            people.append((person, refusal))
        return people

    def _new_request(self, kind: Any, list_id: int, people: list[tuple[Person, int]]) -> str:
        request_id = uuid.uuid4().hex
        fault = self._take_fault(_method(kind), ("processing", "partial", "failed"))
        pending = SandboxRequest(request_id, kind, list_id, people, self.processing_polls)
        if fault is not None and fault.kind == "processing":
            pending.polls_left += fault.polls
        elif fault is not None and fault.kind == "partial":
            pending.refused_tail = fault.count
        elif fault is not None:
            pending.fail = True
        with self._lock:
            self.requests[request_id] = pending
        return request_id

    def _ingest(self, request: Any) -> Any:
        stored = self._destination(request)
        terms = request.terms_of_service.customer_match_terms_of_service_status
        if terms != types.TermsOfServiceStatus.ACCEPTED:
            raise _bad(
                "terms_of_service.customer_match_terms_of_service_status",
                "Customer Match terms of service must be ACCEPTED",
            )
        people = self._members(request, adding=True)
        if request.validate_only:
            return types.IngestAudienceMembersResponse(request_id="")
        return types.IngestAudienceMembersResponse(
            request_id=self._new_request("ingest", stored.id, people)
        )

    def _remove(self, request: Any) -> Any:
        stored = self._destination(request)
        people = self._members(request, adding=False)
        if request.validate_only:
            return types.RemoveAudienceMembersResponse(request_id="")
        return types.RemoveAudienceMembersResponse(
            request_id=self._new_request("remove", stored.id, people)
        )

    def _remove_all(self, request: Any) -> Any:
        stored = self._destination(request)
        return types.RemoveAllAudienceMembersResponse(
            request_id=self._new_request("remove_all", stored.id, [])
        )

    def _status(self, request: Any) -> Any:
        with self._lock:
            pending = self.requests.get(request.request_id)
            if pending is None:
                raise _bad("request_id", "unknown request id")
            pending.polls += 1
            if pending.status == Status.PROCESSING:
                if pending.polls_left > 0:
                    pending.polls_left -= 1
                else:
                    self._apply(pending)
        return types.RetrieveRequestStatusResponse(
            request_status_per_destination=[_status_of(pending, self.customer_id)]
        )

    def _apply(self, pending: SandboxRequest) -> None:
        """Process a request (under the lock): change the list and set its outcome."""
        stored = self.user_lists[pending.user_list]
        errors: dict[int, int] = {}
        if pending.fail:
            errors[Reason.PROCESSING_ERROR_REASON_INTERNAL_ERROR] = max(1, len(pending.people))
            pending.errors, pending.status = errors, Status.FAILED
            return
        if pending.kind == "remove_all":
            stored.members.clear()
        cut = len(pending.people) - pending.refused_tail
        for i, (person, refusal) in enumerate(pending.people):
            if i >= cut:
                reason = Reason.PROCESSING_ERROR_REASON_INVALID_FORMAT
            elif refusal:
                reason = refusal
            else:
                if pending.kind == "ingest":
                    stored.members.add(person)
                else:
                    stored.members -= {p for p in stored.members if p & person}
                continue
            errors[reason] = errors.get(reason, 0) + 1
        failed = sum(errors.values())
        pending.errors = errors
        if failed and failed == len(pending.people):
            pending.status = Status.FAILED
        else:
            pending.status = Status.PARTIAL_SUCCESS if failed else Status.SUCCESS


def _method(kind: str) -> str:
    return {
        "ingest": "IngestAudienceMembers",
        "remove": "RemoveAudienceMembers",
        "remove_all": "RemoveAllAudienceMembers",
    }[kind]


def _list_id(user_list: str | int) -> int:
    return user_list if isinstance(user_list, int) else int(str(user_list).rsplit("/", 1)[-1])


def _fault_error(kind: str) -> _Refused:
    if kind == "resource_exhausted":
        return _Refused(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "Quota exceeded.",
            error_details_pb2.ErrorInfo(reason="RATE_LIMIT_EXCEEDED", domain=DOMAIN),
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=10_000_000)),
        )
    if kind == "unavailable":
        return _Refused(grpc.StatusCode.UNAVAILABLE, "The service is currently unavailable.")
    if kind == "permission_denied":
        return _Refused(
            grpc.StatusCode.PERMISSION_DENIED,
            "The caller does not have permission.",
            error_details_pb2.ErrorInfo(reason="PERMISSION_DENIED", domain=DOMAIN),
        )
    return _Refused(
        grpc.StatusCode.UNAUTHENTICATED,
        "Request had invalid authentication credentials.",
        error_details_pb2.ErrorInfo(reason="ACCESS_TOKEN_EXPIRED", domain=DOMAIN),
    )


def _hex(value: str, where: str) -> str:
    if len(value) != 64 or not _HEX.issuperset(value):
        raise _bad(where, "must be a SHA-256 digest in lowercase hex (encoding HEX)")
    return value


def _person(member: Any, where: str) -> Person:
    identifiers: set[Identifier] = set()
    ids = member.user_data.user_identifiers
    if not ids:
        raise _bad(f"{where}.user_data", "needs at least one user identifier")
    if len(ids) > 10:
        raise _bad(f"{where}.user_data.user_identifiers", "at most 10 identifiers")
    for j, identifier in enumerate(ids):
        path = f"{where}.user_data.user_identifiers[{j}]"
        which = type(identifier).pb(identifier).WhichOneof("identifier")
        if which == "email_address":
            identifiers.add(("email", _hex(identifier.email_address, f"{path}.email_address")))
        elif which == "phone_number":
            identifiers.add(("phone", _hex(identifier.phone_number, f"{path}.phone_number")))
        elif which == "address":
            a = identifier.address
            if a.region_code.lower() not in ISO_COUNTRIES or a.region_code != a.region_code.upper():
                raise _bad(f"{path}.address.region_code", "must be ISO 3166-1 alpha-2, uppercase")
            given = _hex(a.given_name, f"{path}.address.given_name")
            family = _hex(a.family_name, f"{path}.address.family_name")
            if not a.postal_code:
                raise _bad(f"{path}.address.postal_code", "is required")
            identifiers.add(("address", f"{given}:{family}:{a.region_code}:{a.postal_code}"))
        else:
            raise _bad(path, "needs email_address, phone_number or address")
    return frozenset(identifiers)


def _user_list(stored: SandboxUserList) -> Any:
    return types.UserList(
        name=stored.name,
        id=stored.id,
        display_name=stored.display_name,
        description=stored.description,
        membership_duration=dt.timedelta(days=stored.membership_days),
        ingested_user_list_info=types.IngestedUserListInfo(
            upload_key_types=[types.IngestedUserListInfo.UploadKeyType.CONTACT_ID]
        ),
        size_info=types.SizeInfo(display_network_members_count=len(stored.members)),
    )


def _status_of(pending: SandboxRequest, customer_id: str) -> Any:
    per = types.RequestStatusPerDestination
    status = per(
        destination=types.Destination(
            operating_account=types.ProductAccount(
                account_type=types.ProductAccount.AccountType.GOOGLE_ADS, account_id=customer_id
            ),
            product_destination_id=str(pending.user_list),
        ),
        request_status=pending.status,
    )
    if pending.status == Status.PROCESSING:
        return status
    if pending.errors:
        status.error_info = types.ErrorInfo(
            error_counts=[
                types.ErrorCount(reason=reason, record_count=n)
                for reason, n in sorted(pending.errors.items())
            ]
        )
    records = len(pending.people)
    if pending.kind == "ingest":
        accepted = records - sum(pending.errors.values())
        rate = (
            types.MatchRateRange.MATCH_RATE_RANGE_61_TO_70
            if accepted >= 1000
            else types.MatchRateRange.MATCH_RATE_RANGE_NOT_ELIGIBLE
        )
        status.audience_members_ingestion_status = per.IngestAudienceMembersStatus(
            user_data_ingestion_status=per.IngestUserDataStatus(
                record_count=records,
                user_identifier_count=sum(len(p) for p, _ in pending.people),
                upload_match_rate_range=rate,
            )
        )
    elif pending.kind == "remove":
        status.audience_members_removal_status = per.RemoveAudienceMembersStatus(
            user_data_removal_status=per.RemoveUserDataStatus(
                record_count=records,
                user_identifier_count=sum(len(p) for p, _ in pending.people),
            )
        )
    else:
        status.remove_all_audience_members_status = per.RemoveAllAudienceMembersStatus()
    return status


# ---------------------------------------------------------------- audiences sandbox


def serve(*, port: int = 0, customer_id: str = DEFAULT_CUSTOMER_ID, polls: int = 1) -> Any:
    """Start a sandbox whose token comes from the environment (or the sandbox default)."""
    return DataManagerSandbox(
        customer_id=customer_id,
        access_token=os.environ.get("GOOGLE_DATA_MANAGER_ACCESS_TOKEN", DEFAULT_ACCESS_TOKEN),
        processing_polls=polls,
        port=port,
    ).start()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sandbox in the foreground until interrupted."""
    parser = argparse.ArgumentParser(
        prog="data-manager-sandbox", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--customer-id", default=DEFAULT_CUSTOMER_ID)
    parser.add_argument("--polls", type=int, default=1, help="status checks until processed")
    args = parser.parse_args(argv)
    sandbox = serve(port=args.port, customer_id=args.customer_id, polls=args.polls)
    print(f"Data Manager sandbox listening on {sandbox.endpoint} (TLS, CA {sandbox.ca_file})")
    run_until_interrupted(sandbox.stop)


if __name__ == "__main__":
    main()
