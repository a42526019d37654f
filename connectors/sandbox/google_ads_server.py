"""A Google Ads API sandbox for Customer Match: gRPC over TLS on 127.0.0.1.

It speaks the wire protocol of the installed ``google-ads`` SDK (API version
:data:`API_VERSION`) for the calls a Customer Match upload makes, so the real SDK —
its metadata, logging and exception interceptors included — can be driven against it:

* ``UserListService/MutateUserLists`` — create a ``CrmBasedUserList`` (``CONTACT_INFO``).
* ``OfflineUserDataJobService/CreateOfflineUserDataJob``, ``AddOfflineUserDataJobOperations``,
  ``RunOfflineUserDataJob`` (returns a ``google.longrunning.Operation``).
* ``google.longrunning.Operations/GetOperation`` for the SDK's operation future.
* ``GoogleAdsService/Search`` and ``SearchStream`` for ``offline_user_data_job`` and
  ``user_list`` rows (a small GAQL subset: ``SELECT fields FROM resource [WHERE
  resource.field = 'value']``; only the selected fields are filled). User list sizes are
  exact member counts (the real API rounds them and reports small lists late).

Whole-request failures end the call with a gRPC status and, like the real API, a
serialized ``GoogleAdsFailure`` in the trailing metadata key
``google.ads.googleads.<version>.errors.googleadsfailure-bin`` plus ``request-id``; the
SDK's exception interceptor turns that into ``GoogleAdsException``. Per-operation
failures of ``AddOfflineUserDataJobOperations`` with ``enable_partial_failure`` come back
in ``partial_failure_error`` (a ``google.rpc.Status`` whose details hold a
``GoogleAdsFailure``; each error's location starts with ``operations[index]``).

Membership is kept per user list as a set of people, each person a frozenset of
``(kind, value)`` identifiers — ``("hashed_email", hex)``, ``("hashed_phone_number", hex)``,
``("address_info", "fn_hex:ln_hex:CC:postal")`` — so tests can assert the end state
exactly. Operations are applied when a job reaches ``SUCCESS``, which happens after a
configurable number of status polls (real jobs take hours).

Faults can be queued with :meth:`GoogleAdsSandbox.inject`. The server time of every call
is recorded in :attr:`GoogleAdsSandbox.calls`.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
from google.ads.googleads.v26.enums.types import (
    consent_status,
    customer_match_upload_key_type,
    offline_user_data_job_failure_reason,
    offline_user_data_job_match_rate_range,
    offline_user_data_job_status,
    offline_user_data_job_type,
    user_list_membership_status,
    user_list_type,
)
from google.ads.googleads.v26.errors.types import errors as error_types
from google.ads.googleads.v26.resources.types import offline_user_data_job as job_types
from google.ads.googleads.v26.resources.types import user_list as user_list_types
from google.ads.googleads.v26.services.types import (
    google_ads_service,
    offline_user_data_job_service,
    user_list_service,
)
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2
from google.rpc import status_pb2

from connectors.sandbox.tls import LoopbackGrpcSandbox, run_until_interrupted
from policies.sendable import CONSENT_REGIONS

API_VERSION = "v26"
SERVICES_PREFIX = f"google.ads.googleads.{API_VERSION}.services"
FAILURE_METADATA_KEY = f"google.ads.googleads.{API_VERSION}.errors.googleadsfailure-bin"
FAILURE_TYPE_URL = f"type.googleapis.com/google.ads.googleads.{API_VERSION}.errors.GoogleAdsFailure"
JOB_METADATA_TYPE_URL = (
    f"type.googleapis.com/google.ads.googleads.{API_VERSION}.resources.OfflineUserDataJobMetadata"
)

DEFAULT_CUSTOMER_ID = "1234567890"
DEFAULT_DEVELOPER_TOKEN = "sandbox.developer.token"
DEFAULT_ACCESS_TOKEN = "sandbox-access-token"

MAX_IDENTIFIERS_PER_REQUEST = 100_000
MAX_IDENTIFIERS_PER_USER_DATA = 20
MAX_MEMBERSHIP_LIFE_SPAN_DAYS = 540

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_COUNTRY_CODE = re.compile(r"[A-Za-z]{2}")

Status = offline_user_data_job_status.OfflineUserDataJobStatusEnum.OfflineUserDataJobStatus
FailureReason = offline_user_data_job_failure_reason.OfflineUserDataJobFailureReasonEnum.OfflineUserDataJobFailureReason
ConsentStatus = consent_status.ConsentStatusEnum.ConsentStatus
JobType = offline_user_data_job_type.OfflineUserDataJobTypeEnum.OfflineUserDataJobType
UploadKeyType = (
    customer_match_upload_key_type.CustomerMatchUploadKeyTypeEnum.CustomerMatchUploadKeyType
)
MatchRateRange = offline_user_data_job_match_rate_range.OfflineUserDataJobMatchRateRangeEnum.OfflineUserDataJobMatchRateRange

Identifier = tuple[str, str]
Person = frozenset[Identifier]

FaultKind = Literal[
    "concurrent_modification",
    "unavailable",
    "resource_exhausted",
    "internal",
    "deadline_exceeded",
    "auth",
    "slow",
    "job_failed",
]


# ---------------------------------------------------------------- failures


@dataclass(frozen=True)
class ApiError:
    """One ``GoogleAdsError``: its ``ErrorCode`` oneof field and enum name, and where."""

    category: str  # ErrorCode oneof field, e.g. "offline_user_data_job_error"
    code: str  # enum value name, e.g. "CONFLICTING_OPERATION"
    message: str
    path: tuple[tuple[str, int | None], ...] = ()
    trigger: str | None = None

    def to_proto(self) -> error_types.GoogleAdsError:
        error_code = error_types.ErrorCode()
        enum_type = type(getattr(error_code, self.category))
        setattr(error_code, self.category, enum_type[self.code])
        error = error_types.GoogleAdsError(error_code=error_code, message=self.message)
        if self.path:
            error.location = error_types.ErrorLocation(
                field_path_elements=[
                    error_types.ErrorLocation.FieldPathElement(field_name=name, index=index)
                    if index is not None
                    else error_types.ErrorLocation.FieldPathElement(field_name=name)
                    for name, index in self.path
                ]
            )
        if self.trigger is not None:
            error.trigger.string_value = self.trigger
        return error


class RequestFailed(Exception):
    """Raised inside a handler: ends the call with ``status`` and a GoogleAdsFailure."""

    def __init__(self, status: grpc.StatusCode, *errors: ApiError) -> None:
        self.status = status
        self.errors = errors
        super().__init__(", ".join(f"{e.category}.{e.code}" for e in errors))


def _failure(errors: Sequence[ApiError], request_id: str) -> error_types.GoogleAdsFailure:
    return error_types.GoogleAdsFailure(
        errors=[e.to_proto() for e in errors], request_id=request_id
    )


# ---------------------------------------------------------------- state


@dataclass
class SandboxUserList:
    resource_name: str
    id: int
    name: str
    description: str
    membership_life_span: int
    upload_key_type: UploadKeyType
    members: set[Person] = field(default_factory=set)
    index: dict[Identifier, set[Person]] = field(default_factory=lambda: defaultdict(set))

    def add(self, person: Person) -> None:
        if person in self.members:
            return
        self.members.add(person)
        for identifier in person:
            self.index[identifier].add(person)

    def remove_matching(self, person: Person) -> None:
        """Remove every stored person that shares an identifier with ``person``."""
        matched: set[Person] = set()
        for identifier in person:
            matched |= self.index.get(identifier, set())
        for stored in matched:
            self.members.discard(stored)
            for identifier in stored:
                bucket = self.index.get(identifier)
                if bucket is not None:
                    bucket.discard(stored)
                    if not bucket:
                        del self.index[identifier]

    def clear(self) -> None:
        self.members.clear()
        self.index.clear()


@dataclass
class SandboxJob:
    resource_name: str
    id: int
    user_list: str
    ad_user_data: ConsentStatus
    ad_personalization: ConsentStatus
    status: int = Status.PENDING  # an OfflineUserDataJobStatus value
    failure_reason: int = FailureReason.UNSPECIFIED  # an OfflineUserDataJobFailureReason value
    started: bool = False
    polls_after_run: int = 0
    fail_with: int | None = None
    staged: list[tuple[str, Person | None]] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)  # "create" / "remove" (remove_all apart)
    in_flight: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # operations refused, per error code


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    method: str | None = None  # e.g. "AddOfflineUserDataJobOperations"; None = any
    delay: float = 0.0


@dataclass(frozen=True)
class CallRecord:
    """One served call: method name, gRPC status name and server time in seconds."""

    method: str
    status: str
    seconds: float


# ---------------------------------------------------------------- the sandbox


class GoogleAdsSandbox(LoopbackGrpcSandbox):
    """Customer Match part of the Google Ads API, served over TLS on 127.0.0.1.

    Use as a context manager or call :meth:`start` / :meth:`stop`. Clients trust
    :attr:`ca_file` and connect to :attr:`endpoint`.
    """

    def __init__(
        self,
        *,
        customer_id: str = DEFAULT_CUSTOMER_ID,
        developer_token: str = DEFAULT_DEVELOPER_TOKEN,
        access_token: str = DEFAULT_ACCESS_TOKEN,
        allowlisted: bool = True,
        pending_polls: int = 1,
        running_polls: int = 1,
        port: int = 0,
        max_workers: int = 8,
    ) -> None:
        self.customer_id = customer_id
        self._developer_token = developer_token
        self._access_token = access_token
        self.allowlisted = allowlisted
        self.pending_polls = pending_polls
        self.running_polls = running_polls
        self._requested_port = port
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._local = threading.local()  # per handler thread: delay of a "slow" fault
        self._ids = itertools.count(1_000_001)
        self.user_lists: dict[str, SandboxUserList] = {}
        self.jobs: dict[str, SandboxJob] = {}
        self._faults: deque[Fault] = deque()
        self.calls: list[CallRecord] = []

    # -- test controls

    def inject(
        self, kind: FaultKind, *, method: str | None = None, times: int = 1, delay: float = 0.0
    ) -> None:
        """Queue ``times`` faults; each is consumed by the next call of ``method`` (or any).

        ``slow`` delays the answer by ``delay`` seconds after doing the work (an add waits
        inside its in-flight window, before the work, so a parallel add collides); ``job_failed``
        makes the next job that completes end ``FAILED``.
        """
        with self._lock:
            self._faults.extend(Fault(kind, method, delay) for _ in range(times))

    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def members(self, user_list: str) -> frozenset[Person]:
        """The people of a user list (each a frozenset of ``(kind, value)`` identifiers)."""
        with self._lock:
            return frozenset(self.user_lists[user_list].members)

    def server_seconds(self, method: str | None = None) -> float:
        """Total server time spent in calls (of ``method``, or all)."""
        return sum(c.seconds for c in self.calls if method is None or c.method == method)

    def call_count(self, method: str, status: str | None = None) -> int:
        return sum(
            1 for c in self.calls if c.method == method and (status is None or c.status == status)
        )

    # -- plumbing

    def _handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(
            method: str,
            handler: Callable[[Any, grpc.ServicerContext], Any],
            request_type: Any,
            serializer: Callable[[Any], bytes],
        ) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                self._served(method, handler),
                request_deserializer=request_type.deserialize,
                response_serializer=serializer,
            )

        ouds = offline_user_data_job_service
        return [
            grpc.method_handlers_generic_handler(
                f"{SERVICES_PREFIX}.UserListService",
                {
                    "MutateUserLists": unary(
                        "MutateUserLists",
                        self._mutate_user_lists,
                        user_list_service.MutateUserListsRequest,
                        user_list_service.MutateUserListsResponse.serialize,
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                f"{SERVICES_PREFIX}.OfflineUserDataJobService",
                {
                    "CreateOfflineUserDataJob": unary(
                        "CreateOfflineUserDataJob",
                        self._create_job,
                        ouds.CreateOfflineUserDataJobRequest,
                        ouds.CreateOfflineUserDataJobResponse.serialize,
                    ),
                    "AddOfflineUserDataJobOperations": unary(
                        "AddOfflineUserDataJobOperations",
                        self._add_operations,
                        ouds.AddOfflineUserDataJobOperationsRequest,
                        ouds.AddOfflineUserDataJobOperationsResponse.serialize,
                    ),
                    "RunOfflineUserDataJob": unary(
                        "RunOfflineUserDataJob",
                        self._run_job,
                        ouds.RunOfflineUserDataJobRequest,
                        operations_pb2.Operation.SerializeToString,
                    ),
                },
            ),
            grpc.method_handlers_generic_handler(
                "google.longrunning.Operations",
                {
                    "GetOperation": grpc.unary_unary_rpc_method_handler(
                        self._served("GetOperation", self._get_operation),
                        request_deserializer=operations_pb2.GetOperationRequest.FromString,
                        response_serializer=operations_pb2.Operation.SerializeToString,
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                f"{SERVICES_PREFIX}.GoogleAdsService",
                {
                    "Search": unary(
                        "Search",
                        self._search,
                        google_ads_service.SearchGoogleAdsRequest,
                        google_ads_service.SearchGoogleAdsResponse.serialize,
                    ),
                    "SearchStream": grpc.unary_stream_rpc_method_handler(
                        self._served_stream("SearchStream", self._search_stream),
                        request_deserializer=google_ads_service.SearchGoogleAdsStreamRequest.deserialize,
                        response_serializer=google_ads_service.SearchGoogleAdsStreamResponse.serialize,
                    ),
                },
            ),
        ]

    def _served(
        self, method: str, handler: Callable[[Any, grpc.ServicerContext], Any]
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def serve_call(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            request_id = uuid.uuid4().hex
            status = "OK"
            try:
                self._before(method, request, context)
                response = handler(request, context)
                if method != "AddOfflineUserDataJobOperations":
                    self._pause()  # the work is done, the answer is late (adds pause inside)
            except RequestFailed as failed:
                status = failed.status.name
                self._abort(context, failed, request_id)
            except _Unavailable as outage:
                status = outage.status.name
                context.set_trailing_metadata((("request-id", request_id),))
                context.abort(outage.status, outage.details)
            finally:
                self.calls.append(CallRecord(method, status, time.perf_counter() - started))
            context.set_trailing_metadata((("request-id", request_id),))
            return response

        return serve_call

    def _served_stream(
        self, method: str, handler: Callable[[Any, grpc.ServicerContext], Iterator[Any]]
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        def serve_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            request_id = uuid.uuid4().hex
            status = "OK"
            try:
                self._before(method, request, context)
                self._pause()
                responses = list(handler(request, context))
            except RequestFailed as failed:
                status = failed.status.name
                self._abort(context, failed, request_id)
            except _Unavailable as outage:
                status = outage.status.name
                context.abort(outage.status, outage.details)
            finally:
                self.calls.append(CallRecord(method, status, time.perf_counter() - started))
            context.set_trailing_metadata((("request-id", request_id),))
            for response in responses:
                response.request_id = request_id
                yield response

        return serve_stream

    @staticmethod
    def _abort(context: grpc.ServicerContext, failed: RequestFailed, request_id: str) -> None:
        failure = _failure(failed.errors, request_id)
        context.set_trailing_metadata(
            (
                (FAILURE_METADATA_KEY, error_types.GoogleAdsFailure.serialize(failure)),
                ("request-id", request_id),
            )
        )
        context.abort(failed.status, "Request contains an invalid argument.")

    def _take_fault(self, method: str) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.kind != "job_failed" and fault.method in (None, method):
                    del self._faults[i]
                    return fault
        return None

    def _before(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        self._local.delay = 0.0
        fault = self._take_fault(method)
        if fault is not None:
            self._raise_fault(fault)
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != f"Bearer {self._access_token}":
            raise RequestFailed(
                grpc.StatusCode.UNAUTHENTICATED,
                ApiError(
                    "authentication_error",
                    "OAUTH_TOKEN_INVALID",
                    "Oauth token in the header is not valid.",
                ),
            )
        if metadata.get("developer-token") != self._developer_token:
            raise RequestFailed(
                grpc.StatusCode.UNAUTHENTICATED,
                ApiError(
                    "authentication_error",
                    "DEVELOPER_TOKEN_INVALID",
                    "The developer token is not valid.",
                ),
            )
        customer_id = getattr(request, "customer_id", None)
        resource_name = getattr(request, "resource_name", None) or getattr(request, "name", None)
        if customer_id is None and resource_name:
            customer_id = resource_name.split("/")[1] if resource_name.count("/") >= 2 else ""
        if customer_id != self.customer_id:
            raise RequestFailed(
                grpc.StatusCode.PERMISSION_DENIED,
                ApiError(
                    "authorization_error",
                    "USER_PERMISSION_DENIED",
                    "User doesn't have permission to access customer.",
                ),
            )

    def _pause(self) -> None:
        delay = getattr(self._local, "delay", 0.0)
        self._local.delay = 0.0
        if delay:
            time.sleep(delay)

    def _raise_fault(self, fault: Fault) -> None:
        if fault.kind == "slow":
            self._local.delay = fault.delay
            return
        if fault.kind == "concurrent_modification":
            raise RequestFailed(
                grpc.StatusCode.ABORTED,
                ApiError(
                    "database_error",
                    "CONCURRENT_MODIFICATION",
                    "Multiple requests were attempting to modify the same resource at once. "
                    "Retry the request.",
                ),
            )
        if fault.kind == "resource_exhausted":
            raise RequestFailed(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                ApiError("quota_error", "RESOURCE_EXHAUSTED", "Too many requests."),
            )
        if fault.kind == "internal":
            raise RequestFailed(
                grpc.StatusCode.INTERNAL,
                ApiError("internal_error", "INTERNAL_ERROR", "An internal error has occurred."),
            )
        if fault.kind == "auth":
            raise RequestFailed(
                grpc.StatusCode.UNAUTHENTICATED,
                ApiError(
                    "authentication_error",
                    "OAUTH_TOKEN_INVALID",
                    "Oauth token in the header is not valid.",
                ),
            )
        if fault.kind == "unavailable":
            raise _Unavailable(grpc.StatusCode.UNAVAILABLE, "The service is currently unavailable.")
        if fault.kind == "deadline_exceeded":
            raise _Unavailable(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded.")
        raise ValueError(f"unknown fault kind {fault.kind!r}")

    def _new_id(self) -> int:
        return next(self._ids)

    # -- UserListService

    def _mutate_user_lists(
        self, request: user_list_service.MutateUserListsRequest, _context: grpc.ServicerContext
    ) -> user_list_service.MutateUserListsResponse:
        errors: list[ApiError] = []
        created: list[SandboxUserList] = []
        with self._lock:
            names = {ul.name for ul in self.user_lists.values()}
            for index, operation in enumerate(request.operations):
                where = (("operations", index), ("create", None))
                if "create" not in operation:
                    errors.append(
                        ApiError(
                            "mutate_error",
                            "MUTATE_NOT_ALLOWED",
                            "The sandbox only creates user lists.",
                            (("operations", index),),
                        )
                    )
                    continue
                new = operation.create
                life_span = new.membership_life_span
                if "crm_based_user_list" not in new:
                    errors.append(
                        ApiError(
                            "user_list_error",
                            "CONCRETE_TYPE_REQUIRED",
                            "A concrete type of list is required.",
                            where,
                        )
                    )
                elif new.crm_based_user_list.upload_key_type != UploadKeyType.CONTACT_INFO:
                    errors.append(
                        ApiError(
                            "user_list_error",
                            "INVALID_TYPE",
                            "The sandbox supports CONTACT_INFO Customer Match lists only.",
                            (*where, ("crm_based_user_list", None), ("upload_key_type", None)),
                        )
                    )
                elif not new.name or new.name in names:
                    errors.append(
                        ApiError(
                            "user_list_error",
                            "NAME_ALREADY_USED" if new.name else "INVALID_NAME",
                            "Name is already being used for another user list for the account."
                            if new.name
                            else "Invalid name.",
                            (*where, ("name", None)),
                        )
                    )
                elif "membership_life_span" in new and not (
                    0 <= life_span <= MAX_MEMBERSHIP_LIFE_SPAN_DAYS
                ):
                    errors.append(
                        ApiError(
                            "range_error",
                            "TOO_HIGH" if life_span > MAX_MEMBERSHIP_LIFE_SPAN_DAYS else "TOO_LOW",
                            "Too high."
                            if life_span > MAX_MEMBERSHIP_LIFE_SPAN_DAYS
                            else "Too low.",
                            (*where, ("membership_life_span", None)),
                            trigger=str(life_span),
                        )
                    )
                else:
                    list_id = self._new_id()
                    names.add(new.name)
                    created.append(
                        SandboxUserList(
                            resource_name=f"customers/{self.customer_id}/userLists/{list_id}",
                            id=list_id,
                            name=new.name,
                            description=new.description,
                            membership_life_span=(
                                life_span
                                if "membership_life_span" in new
                                else MAX_MEMBERSHIP_LIFE_SPAN_DAYS
                            ),
                            upload_key_type=new.crm_based_user_list.upload_key_type,
                        )
                    )
            if errors and not request.partial_failure:
                raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, *errors)
            for user_list in created:
                self.user_lists[user_list.resource_name] = user_list
        response = user_list_service.MutateUserListsResponse(
            results=[
                user_list_service.MutateUserListResult(resource_name=ul.resource_name)
                for ul in created
            ]
        )
        if errors:
            response.partial_failure_error = _partial_failure_status(errors)
        return response

    # -- OfflineUserDataJobService

    def _create_job(
        self,
        request: offline_user_data_job_service.CreateOfflineUserDataJobRequest,
        _context: grpc.ServicerContext,
    ) -> offline_user_data_job_service.CreateOfflineUserDataJobResponse:
        job = request.job
        if job.type_ != JobType.CUSTOMER_MATCH_USER_LIST:
            raise RequestFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                ApiError(
                    "field_error",
                    "INVALID_VALUE",
                    "The sandbox runs CUSTOMER_MATCH_USER_LIST jobs only.",
                    (("job", None), ("type", None)),
                ),
            )
        if not self.allowlisted:
            raise _not_allowlisted()
        metadata = job.customer_match_user_list_metadata
        with self._lock:
            if metadata.user_list not in self.user_lists:
                raise RequestFailed(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    ApiError(
                        "offline_user_data_job_error",
                        "INVALID_USER_LIST_ID",
                        "Invalid user list ID provided for the job.",
                        (
                            ("job", None),
                            ("customer_match_user_list_metadata", None),
                            ("user_list", None),
                        ),
                    ),
                )
            job_id = self._new_id()
            sandbox_job = SandboxJob(
                resource_name=f"customers/{self.customer_id}/offlineUserDataJobs/{job_id}",
                id=job_id,
                user_list=metadata.user_list,
                ad_user_data=metadata.consent.ad_user_data,
                ad_personalization=metadata.consent.ad_personalization,
            )
            self.jobs[sandbox_job.resource_name] = sandbox_job
        return offline_user_data_job_service.CreateOfflineUserDataJobResponse(
            resource_name=sandbox_job.resource_name
        )

    def _job(self, resource_name: str) -> SandboxJob:
        job = self.jobs.get(resource_name)
        if job is None:
            raise _not_found("resource_name")
        return job

    def _add_operations(
        self,
        request: offline_user_data_job_service.AddOfflineUserDataJobOperationsRequest,
        _context: grpc.ServicerContext,
    ) -> offline_user_data_job_service.AddOfflineUserDataJobOperationsResponse:
        with self._lock:
            job = self._job(request.resource_name)
            if job.in_flight:
                raise RequestFailed(
                    grpc.StatusCode.ABORTED,
                    ApiError(
                        "database_error",
                        "CONCURRENT_MODIFICATION",
                        "Multiple requests were attempting to modify the same resource at once. "
                        "Retry the request.",
                    ),
                )
            job.in_flight += 1
        try:
            self._pause()
            return self._add_operations_to(job, request)
        finally:
            with self._lock:
                job.in_flight -= 1

    def _add_operations_to(
        self,
        job: SandboxJob,
        request: offline_user_data_job_service.AddOfflineUserDataJobOperationsRequest,
    ) -> offline_user_data_job_service.AddOfflineUserDataJobOperationsResponse:
        if not self.allowlisted:
            raise _not_allowlisted()
        if job.started:
            raise _already_started("; operations can no longer be added")
        # raw protobuf: iterating proto-plus wrappers costs ~10x more on 10,000 people
        operations = list(type(request).pb(request).operations)
        if not operations:
            raise RequestFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                ApiError(
                    "field_error",
                    "REQUIRED",
                    "The operations list is required.",
                    (("operations", None),),
                ),
            )
        kinds = [_operation_kind(op) for op in operations]
        identifier_count = sum(
            len(getattr(op, kind).user_identifiers)
            for op, kind in zip(operations, kinds, strict=True)
            if kind in ("create", "remove")
        )
        if identifier_count > MAX_IDENTIFIERS_PER_REQUEST:
            raise RequestFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                ApiError(
                    "offline_user_data_job_error",
                    "TOO_MANY_USER_IDENTIFIERS",
                    "Maximum number of user identifiers allowed per request is 100,000 and "
                    "per operation is 20.",
                ),
            )
        for index, kind in enumerate(kinds):
            if kind == "remove_all" and (index > 0 or job.staged):
                raise RequestFailed(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    ApiError(
                        "offline_user_data_job_error",
                        "INVALID_OPERATION_ORDER",
                        "When a remove-all operation is provided, it has to be the first "
                        "operation of the operation list.",
                        (("operations", index), ("remove_all", None)),
                    ),
                )
            if kind is None:
                raise RequestFailed(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    ApiError(
                        "field_error",
                        "REQUIRED",
                        "The operation is required.",
                        (("operations", index),),
                    ),
                )
        request_kinds = {k for k in kinds if k in ("create", "remove")}
        if len(request_kinds | job.kinds) > 1:
            established = (
                next(iter(job.kinds))
                if job.kinds
                else next(k for k in kinds if k in ("create", "remove"))
            )
            first = next(
                i for i, k in enumerate(kinds) if k in ("create", "remove") and k != established
            )
            raise RequestFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                ApiError(
                    "offline_user_data_job_error",
                    "CONFLICTING_OPERATION",
                    "Add and remove operations cannot be in the same job.",
                    (("operations", first),),
                ),
            )
        if "create" in request_kinds and ConsentStatus.DENIED in (
            job.ad_user_data,
            job.ad_personalization,
        ):
            raise RequestFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                ApiError(
                    "offline_user_data_job_error",
                    "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS",
                    "The customer has not accepted the customer data terms, or consent "
                    "(ad_user_data / ad_personalization) was denied.",
                    (("job", None), ("customer_match_user_list_metadata", None), ("consent", None)),
                ),
            )

        errors: list[ApiError] = []
        staged: list[tuple[str, Person | None]] = []
        for index, (operation, kind) in enumerate(zip(operations, kinds, strict=True)):
            if kind == "remove_all":
                staged.append(("remove_all", None))
                continue
            assert kind is not None  # refused above
            person, problems = _person(getattr(operation, kind), index, kind)
            if kind == "create" and not problems and not _consent_given(job, person):
                problems = [_no_eea_consent(index)]
            if problems:
                errors.extend(problems)
            elif person is not None:
                staged.append((kind, person))
        if errors and not request.enable_partial_failure:
            raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, *errors)
        with self._lock:
            if job.started:  # ran while this request was being checked
                raise _already_started("; operations can no longer be added")
            job.staged.extend(staged)
            job.kinds |= request_kinds
            for error in errors:
                job.refused[error.code] = job.refused.get(error.code, 0) + 1
        response = offline_user_data_job_service.AddOfflineUserDataJobOperationsResponse()
        if errors:
            response.partial_failure_error = _partial_failure_status(errors)
        return response

    def _run_job(
        self,
        request: offline_user_data_job_service.RunOfflineUserDataJobRequest,
        _context: grpc.ServicerContext,
    ) -> operations_pb2.Operation:
        with self._lock:
            job = self._job(request.resource_name)
            if job.started:
                raise _already_started("")
            job.started = True
            for i, fault in enumerate(self._faults):
                if fault.kind == "job_failed":
                    del self._faults[i]
                    job.fail_with = FailureReason.UNKNOWN
                    break
        return _operation(job)

    def _get_operation(
        self, request: operations_pb2.GetOperationRequest, _context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        """``google.longrunning.Operations/GetOperation`` for a run job (counts as a poll)."""
        job_id = request.name.rsplit("/", 1)[-1]
        with self._lock:
            job = self.jobs.get(f"customers/{self.customer_id}/offlineUserDataJobs/{job_id}")
            if job is None or not job.started:
                raise _not_found("name")
            self._advance(job)
            return _operation(job)

    def _advance(self, job: SandboxJob) -> None:
        """One status poll of a started job: PENDING → RUNNING → SUCCESS (or FAILED)."""
        if not job.started or job.status in (Status.SUCCESS, Status.FAILED):
            return
        job.polls_after_run += 1
        if job.polls_after_run <= self.pending_polls:
            job.status = Status.PENDING
        elif job.polls_after_run <= self.pending_polls + self.running_polls:
            job.status = Status.RUNNING
        elif job.fail_with is not None:
            job.status = Status.FAILED
            job.failure_reason = job.fail_with
        else:
            user_list = self.user_lists[job.user_list]
            for kind, person in job.staged:
                if kind == "remove_all":
                    user_list.clear()
                elif kind == "create" and person is not None:
                    user_list.add(person)
                elif person is not None:
                    user_list.remove_matching(person)
            job.status = Status.SUCCESS

    # -- GoogleAdsService

    def _rows(self, request: Any) -> tuple[list[google_ads_service.GoogleAdsRow], list[str]]:
        query = " ".join(request.query.split())
        match = re.fullmatch(
            r"SELECT (?P<fields>.+?) FROM (?P<resource>\w+)"
            r"(?: WHERE (?P<field>[\w.]+) = '(?P<value>[^']*)')?(?: LIMIT \d+)?",
            query,
            flags=re.IGNORECASE,
        )
        if match is None:
            raise RequestFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                ApiError(
                    "query_error", "QUERY_ERROR", "The sandbox does not understand the query."
                ),
            )
        resource = match["resource"]
        if resource not in ("offline_user_data_job", "user_list"):
            raise RequestFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                ApiError(
                    "query_error",
                    "BAD_RESOURCE_TYPE_IN_FROM_CLAUSE",
                    "The sandbox serves offline_user_data_job and user_list only.",
                ),
            )
        fields = [f.strip() for f in match["fields"].split(",")]
        for name in [*fields, match["field"] or f"{resource}.resource_name"]:
            if not name.startswith(f"{resource}.") or not _has_path(resource, name):
                raise RequestFailed(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    ApiError("query_error", "UNRECOGNIZED_FIELD", f"Unrecognized field {name}."),
                )
        with self._lock:
            if resource == "offline_user_data_job":
                full = []
                for job in self.jobs.values():
                    self._advance(job)
                    full.append(_job_resource(job))
            else:
                full = [_user_list_resource(ul) for ul in self.user_lists.values()]
        if match["field"]:
            attribute = match["field"].split(".", 1)[1]
            full = [r for r in full if _text(_get_path(r, attribute)) == match["value"]]
        rows = [_row(resource, r, fields) for r in full]
        return rows, fields

    def _search(
        self, request: google_ads_service.SearchGoogleAdsRequest, _context: grpc.ServicerContext
    ) -> google_ads_service.SearchGoogleAdsResponse:
        rows, fields = self._rows(request)
        response = google_ads_service.SearchGoogleAdsResponse(results=rows)
        response.field_mask.paths.extend(fields)
        return response

    def _search_stream(
        self,
        request: google_ads_service.SearchGoogleAdsStreamRequest,
        _context: grpc.ServicerContext,
    ) -> Iterator[google_ads_service.SearchGoogleAdsStreamResponse]:
        rows, fields = self._rows(request)
        response = google_ads_service.SearchGoogleAdsStreamResponse(results=rows)
        response.field_mask.paths.extend(fields)
        yield response


class _Unavailable(Exception):
    """A transport-level failure: a gRPC status without a GoogleAdsFailure."""

    def __init__(self, status: grpc.StatusCode, details: str) -> None:
        self.status = status
        self.details = details
        super().__init__(details)


# ---------------------------------------------------------------- helpers of the model


def _operation_kind(operation: Any) -> str | None:
    """The ``operation`` oneof of a raw ``OfflineUserDataJobOperation`` protobuf."""
    return operation.WhichOneof("operation")


def _operation(job: SandboxJob) -> operations_pb2.Operation:
    """The long-running operation of a run job, as RunOfflineUserDataJob returns it."""
    metadata = any_pb2.Any(
        type_url=JOB_METADATA_TYPE_URL,
        value=job_types.OfflineUserDataJobMetadata.serialize(
            job_types.OfflineUserDataJobMetadata(
                match_rate_range=(
                    MatchRateRange.MATCH_RANGE_91_TO_100
                    if job.status == Status.SUCCESS
                    else MatchRateRange.UNSPECIFIED
                )
            )
        ),
    )
    operation = operations_pb2.Operation(
        name=f"{job.resource_name.split('/offlineUserDataJobs/')[0]}/operations/{job.id}",
        metadata=metadata,
        done=job.status in (Status.SUCCESS, Status.FAILED),
    )
    if job.status == Status.SUCCESS:
        operation.response.Pack(empty_pb2.Empty())
    elif job.status == Status.FAILED:
        operation.error.code = grpc.StatusCode.FAILED_PRECONDITION.value[0]
        operation.error.message = f"The job failed: {FailureReason(job.failure_reason).name}."
    return operation


def _partial_failure_status(errors: Sequence[ApiError]) -> status_pb2.Status:
    failure = _failure(errors, "")
    detail = any_pb2.Any(
        type_url=FAILURE_TYPE_URL, value=error_types.GoogleAdsFailure.serialize(failure)
    )
    first = errors[0]
    summary = f"{first.message}, at {_path_text(first.path)}"
    if len(errors) > 1:
        summary = f"Multiple errors in 'details'. First error: {summary}"
    return status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=summary, details=[detail]
    )


def _path_text(path: tuple[tuple[str, int | None], ...]) -> str:
    return ".".join(name if index is None else f"{name}[{index}]" for name, index in path)


def _not_allowlisted() -> RequestFailed:
    return RequestFailed(
        grpc.StatusCode.PERMISSION_DENIED,
        ApiError(
            "not_allowlisted_error",
            "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE",
            "Customer is not allowlisted for accessing this feature.",
        ),
    )


def _already_started(more: str) -> RequestFailed:
    return RequestFailed(
        grpc.StatusCode.INVALID_ARGUMENT,
        ApiError(
            "offline_user_data_job_error",
            "JOB_ALREADY_STARTED",
            f"The job has already been started{more}.",
        ),
    )


def _not_found(field_name: str) -> RequestFailed:
    return RequestFailed(
        grpc.StatusCode.NOT_FOUND,
        ApiError(
            "mutate_error",
            "RESOURCE_NOT_FOUND",
            "The requested resource was not found.",
            ((field_name, None),),
        ),
    )


def _consent_given(job: SandboxJob, person: Person | None) -> bool:
    """Whether the job's consent allows adding ``person``: a person whose address is in
    the EEA, the UK or Switzerland needs both signals GRANTED (EU user consent policy)."""
    regions = {value.rsplit(":", 2)[1] for kind, value in person or () if kind == "address_info"}
    if not regions & CONSENT_REGIONS:
        return True
    return job.ad_user_data == job.ad_personalization == ConsentStatus.GRANTED


def _no_eea_consent(index: int) -> ApiError:
    return ApiError(
        "offline_user_data_job_error",
        "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS",
        "Data of users in the EEA, the UK or Switzerland needs consent: ad_user_data and "
        "ad_personalization GRANTED.",
        (("operations", index), ("create", None)),
    )


def _person(user_data: Any, index: int, kind: str) -> tuple[Person | None, list[ApiError]]:
    """Validate one raw ``UserData`` (one person); return its identifiers, or its errors."""
    where: tuple[tuple[str, int | None], ...] = (("operations", index), (kind, None))
    identifiers = list(user_data.user_identifiers)
    if not identifiers:
        return None, [
            ApiError(
                "offline_user_data_job_error",
                "MISSING_USER_IDENTIFIER",
                "The user identifier is missing valid data.",
                (*where, ("user_identifiers", None)),
            )
        ]
    if len(identifiers) > MAX_IDENTIFIERS_PER_USER_DATA:
        return None, [
            ApiError(
                "offline_user_data_job_error",
                "TOO_MANY_USER_IDENTIFIERS",
                "Maximum number of user identifiers allowed per request is 100,000 and per "
                "operation is 20.",
                (*where, ("user_identifiers", None)),
            )
        ]
    errors: list[ApiError] = []
    person: set[Identifier] = set()
    for position, identifier in enumerate(identifiers):
        at = (*where, ("user_identifiers", position))
        which = identifier.WhichOneof("identifier")
        if which in ("hashed_email", "hashed_phone_number"):
            value = getattr(identifier, which)
            if _SHA256_HEX.fullmatch(value) is None:
                errors.append(_bad_hash((*at, (which, None)), value))
            else:
                person.add((which, value))
        elif which == "address_info":
            address = identifier.address_info
            problems = [
                _bad_hash((*at, ("address_info", None), (name, None)), getattr(address, name))
                for name in ("hashed_first_name", "hashed_last_name")
                if _SHA256_HEX.fullmatch(getattr(address, name)) is None
            ]
            if not address.postal_code or not address.country_code:
                problems.append(
                    ApiError(
                        "offline_user_data_job_error",
                        "MISSING_USER_IDENTIFIER",
                        "Address matching needs first name, last name, country code and "
                        "postal code.",
                        (*at, ("address_info", None)),
                    )
                )
            elif _COUNTRY_CODE.fullmatch(address.country_code) is None:
                problems.append(
                    ApiError(
                        "offline_user_data_job_error",
                        "INVALID_COUNTRY_CODE",
                        "The country code is invalid.",
                        (*at, ("address_info", None), ("country_code", None)),
                    )
                )
            errors.extend(problems)
            if not problems:
                person.add(
                    (
                        "address_info",
                        f"{address.hashed_first_name}:{address.hashed_last_name}:"
                        f"{address.country_code.upper()}:{address.postal_code}",
                    )
                )
        elif which in ("mobile_id", "third_party_user_id"):
            errors.append(
                ApiError(
                    "offline_user_data_job_error",
                    "INCOMPATIBLE_UPLOAD_KEY_TYPE",
                    "Upload data is not compatible with the upload key type of the associated "
                    "user list.",
                    (*at, (which, None)),
                )
            )
        else:
            errors.append(
                ApiError(
                    "offline_user_data_job_error",
                    "MISSING_USER_IDENTIFIER",
                    "The user identifier is missing valid data.",
                    at,
                )
            )
    if errors:
        return None, errors
    return frozenset(person), []


def _bad_hash(path: tuple[tuple[str, int | None], ...], value: str) -> ApiError:
    return ApiError(
        "offline_user_data_job_error",
        "INVALID_SHA256_FORMAT",
        "The SHA256 encoded value is malformed.",
        path,
        trigger=value,
    )


def _job_resource(job: SandboxJob) -> job_types.OfflineUserDataJob:
    resource = job_types.OfflineUserDataJob(
        resource_name=job.resource_name,
        id=job.id,
        type_=JobType.CUSTOMER_MATCH_USER_LIST,
        status=job.status,
        failure_reason=job.failure_reason,
        operation_metadata=job_types.OfflineUserDataJobMetadata(
            match_rate_range=(
                MatchRateRange.MATCH_RANGE_91_TO_100
                if job.status == Status.SUCCESS
                else MatchRateRange.UNSPECIFIED
            )
        ),
    )
    resource.customer_match_user_list_metadata.user_list = job.user_list
    resource.customer_match_user_list_metadata.consent.ad_user_data = job.ad_user_data
    resource.customer_match_user_list_metadata.consent.ad_personalization = job.ad_personalization
    return resource


def _user_list_resource(user_list: SandboxUserList) -> user_list_types.UserList:
    size = len(user_list.members)
    resource = user_list_types.UserList(
        resource_name=user_list.resource_name,
        id=user_list.id,
        name=user_list.name,
        description=user_list.description,
        membership_life_span=user_list.membership_life_span,
        membership_status=user_list_membership_status.UserListMembershipStatusEnum.UserListMembershipStatus.OPEN,
        type_=user_list_type.UserListTypeEnum.UserListType.CRM_BASED,
        size_for_display=size,
        size_for_search=size,
    )
    resource.crm_based_user_list.upload_key_type = user_list.upload_key_type
    return resource


def _field_name(name: str) -> str:
    return "type_" if name == "type" else name


def _has_path(resource: str, dotted: str) -> bool:
    message: Any = (
        job_types.OfflineUserDataJob
        if resource == "offline_user_data_job"
        else (user_list_types.UserList)
    )
    for part in dotted.split(".")[1:]:
        fields = message.meta.fields
        name = _field_name(part)
        if name not in fields:
            return False
        message = fields[name].message
        if message is None:
            return True
    return True


def _get_path(message: Any, dotted: str) -> Any:
    value = message
    for part in dotted.split("."):
        value = getattr(value, _field_name(part))
    return value


def _text(value: Any) -> str:
    return value.name if hasattr(value, "name") and not isinstance(value, str) else str(value)


def _row(resource: str, full: Any, fields: Sequence[str]) -> google_ads_service.GoogleAdsRow:
    """A GoogleAdsRow holding only the selected fields of ``full``, as the API does."""
    selected = type(full)()
    for dotted in fields:
        parts = [_field_name(p) for p in dotted.split(".")[1:]]
        source, target = full, selected
        for part in parts[:-1]:
            source, target = getattr(source, part), getattr(target, part)
        setattr(target, parts[-1], getattr(source, parts[-1]))
    return google_ads_service.GoogleAdsRow(**{resource: selected})


# ---------------------------------------------------------------- audiences sandbox


def serve(
    *,
    port: int = 0,
    customer_id: str = DEFAULT_CUSTOMER_ID,
    allowlisted: bool = True,
    pending_polls: int = 1,
    running_polls: int = 1,
) -> GoogleAdsSandbox:
    """Start a sandbox whose tokens come from the environment (or the sandbox defaults)."""
    return GoogleAdsSandbox(
        customer_id=customer_id,
        developer_token=os.environ.get("GOOGLE_ADS_DEVELOPER_TOKEN", DEFAULT_DEVELOPER_TOKEN),
        access_token=os.environ.get("GOOGLE_ADS_ACCESS_TOKEN", DEFAULT_ACCESS_TOKEN),
        allowlisted=allowlisted,
        pending_polls=pending_polls,
        running_polls=running_polls,
        port=port,
    ).start()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sandbox in the foreground until interrupted (``audiences sandbox``)."""
    parser = argparse.ArgumentParser(prog="google-ads-sandbox", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--customer-id", default=DEFAULT_CUSTOMER_ID)
    parser.add_argument("--not-allowlisted", action="store_true")
    parser.add_argument("--job-polls", type=int, default=2, help="status polls until SUCCESS")
    args = parser.parse_args(argv)
    sandbox = serve(
        port=args.port,
        customer_id=args.customer_id,
        allowlisted=not args.not_allowlisted,
        pending_polls=args.job_polls // 2,
        running_polls=args.job_polls - args.job_polls // 2,
    )
    print(f"Google Ads sandbox ({API_VERSION}) listening on {sandbox.endpoint} (TLS)")
    print(f"customer id: {sandbox.customer_id}; trust CA file: {sandbox.ca_file}")
    print(
        "tokens: $GOOGLE_ADS_DEVELOPER_TOKEN / $GOOGLE_ADS_ACCESS_TOKEN if set, "
        "else the sandbox defaults"
    )
    run_until_interrupted(sandbox.stop)


if __name__ == "__main__":
    main()
