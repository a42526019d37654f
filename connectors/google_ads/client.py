"""Customer Match through the real google-ads SDK: user lists and offline user data jobs.

:class:`GoogleAdsCustomerMatchClient` creates a ``CrmBasedUserList`` (``CONTACT_INFO``)
and uploads people to it: one ``OfflineUserDataJob`` per upload (adds and removes never
share a job; ``remove_all`` first when replacing), operations sent in requests of at most
``batch_size`` people and 100,000 identifiers with ``enable_partial_failure``, per-row
failures parsed into counts by error code and row indices, then the job is run and its
status polled with exponential backoff through ``GoogleAdsService.Search``.

Transport security. The SDK's ``GoogleAdsClient.get_service`` always opens a TLS channel
trusting gRPC's default roots, and offers no way to pass channel credentials. For a
sandbox (``ca_file`` given) this module builds the very same service clients itself —
the transport's ``create_channel`` with ``ssl_credentials`` trusting ``ca_file`` only,
wrapped in the SDK's own metadata, logging and exception interceptors, in the order
``get_service`` uses — so nothing process-wide (``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``,
which gRPC reads once, before the first secure channel) has to be set and tests work in
any order. Without ``ca_file`` the services come from ``get_service`` unchanged.

Logging. At DEBUG the SDK's ``google.ads.googleads.client`` logger prints whole requests
(hashed identifiers included) and at INFO it prints the whole request of every failed
call, so construction sets that logger to WARNING. Tokens are never logged: the access
token travels in call credentials, the SDK masks the developer token.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Unpack

from connectors.base import read_ca_file
from connectors.google_ads.errors import (
    CustomerDataTermsNotAccepted,
    GoogleAdsApiError,
    GoogleAdsRequestInvalid,
    OfflineJobFailed,
    translate,
)
from connectors.google_common import CONSENT_VALUES, IDENTIFIERS, GoogleClient, RetryOptions, values

API_VERSION = "v26"
# a member's columns, as the google_ads layout (audiences.crm.identifiers) names them
EMAIL, PHONE, FIRST_NAME, LAST_NAME, COUNTRY, POSTAL_CODE = IDENTIFIERS
SDK_LOGGER = "google.ads.googleads.client"
MAX_IDENTIFIERS_PER_REQUEST = 100_000
MAX_IDENTIFIERS_PER_PERSON = 20
MAX_MEMBERSHIP_LIFE_SPAN_DAYS = 540

_log = logging.getLogger(__name__)


Consent = tuple[str, str]
Member = Mapping[str, str | Sequence[str] | None]


@dataclass(frozen=True)
class JobResult:
    """What one offline user data job did. Row indices count from 0 in input order."""

    user_list: str
    job: str | None  # None when nobody was sent (no job is created)
    operation: Literal["add", "remove"]
    replaced: bool
    sent: int  # people sent in operations
    accepted: int  # people sent and not refused
    rejected: int  # people refused: by the API (partial failure) or before sending
    skipped: int  # people without one usable identifier (never sent)
    rejected_by_code: Mapping[str, int]
    rejected_rows: Mapping[str, tuple[int, ...]]
    requests: int
    status: str  # SUCCESS | FAILED
    failure_reason: str | None
    match_rate_range: str | None
    polls: int
    retries: int
    seconds: float


@dataclass
class _Batch:
    request: Any  # raw AddOfflineUserDataJobOperationsRequest protobuf
    rows: list[int] = field(default_factory=list)  # input row of each operation (-1: none)
    people: int = 0
    identifiers: int = 0

    def add_person(self, row: int, kind: str, identifiers: list[tuple[str, Any]]) -> None:
        """One ``create`` or ``remove`` operation holding the person's identifiers."""
        user_data = getattr(self.request.operations.add(), kind)
        for which, value in identifiers:
            identifier = user_data.user_identifiers.add()
            if which == "address_info":
                first, last, country, postal = value
                identifier.address_info.hashed_first_name = first
                identifier.address_info.hashed_last_name = last
                identifier.address_info.country_code = country
                identifier.address_info.postal_code = postal
            else:
                setattr(identifier, which, value)
        self.rows.append(row)
        self.people += 1
        self.identifiers += len(identifiers)


@dataclass
class _Upload:
    """One upload while it runs: its job, what was sent, and who was refused (by row)."""

    user_list: str
    consent: Consent | None
    job: str | None = None  # created with the first request
    sent: int = 0
    skipped: int = 0
    requests: int = 0
    rejected_rows: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    rejected_by_code: Counter[str] = field(default_factory=Counter)
    local_refusals: set[int] = field(default_factory=set)  # refused before sending

    def refuse(self, row: int, code: str) -> None:
        self.local_refusals.add(row)
        self.rejected_rows[code].add(row)
        self.rejected_by_code[code] += 1

    def result(
        self,
        *,
        operation: Literal["add", "remove"],
        replaced: bool,
        status: str,
        failure_reason: str | None,
        match_rate_range: str | None,
        polls: int,
        retries: int,
        seconds: float,
    ) -> JobResult:
        refused_by_api = {r for rows in self.rejected_rows.values() for r in rows}
        refused_by_api -= self.local_refusals
        return JobResult(
            user_list=self.user_list,
            job=self.job,
            operation=operation,
            replaced=replaced,
            sent=self.sent,
            accepted=self.sent - len(refused_by_api),
            rejected=len(refused_by_api) + len(self.local_refusals),
            skipped=self.skipped,
            rejected_by_code=dict(self.rejected_by_code),
            rejected_rows={code: tuple(sorted(rows)) for code, rows in self.rejected_rows.items()},
            requests=self.requests,
            status=status,
            failure_reason=failure_reason,
            match_rate_range=match_rate_range,
            polls=polls,
            retries=retries,
            seconds=seconds,
        )


class GoogleAdsCustomerMatchClient(GoogleClient):
    """Customer Match for one Google Ads customer, through google-ads (API v26).

    ``access_token`` is a ready OAuth access token (never a refresh token: credentials
    built from one call Google at once). ``endpoint`` (``host:port``) and ``ca_file``
    point the client at a sandbox. The ``*_env`` names only appear in error messages.
    """

    platform = "Google Ads"
    _log = _log

    def __init__(
        self,
        customer_id: str,
        developer_token: str,
        access_token: str,
        *,
        endpoint: str | None = None,
        login_customer_id: str | None = None,
        ca_file: str | None = None,
        developer_token_env: str = "GOOGLE_ADS_DEVELOPER_TOKEN",
        access_token_env: str = "GOOGLE_ADS_ACCESS_TOKEN",
        poll_seconds: float = 30.0,
        max_poll_seconds: float = 900.0,
        poll_timeout_seconds: float = 12 * 3600.0,
        **retry: Unpack[RetryOptions],
    ) -> None:
        # Before anything can log a request: the SDK logs whole requests at DEBUG, and
        # whole failed requests at INFO.
        super().__init__(sdk_logger=SDK_LOGGER, **retry)
        import google.oauth2.credentials
        from google.ads.googleads.client import GoogleAdsClient

        self.customer_id = customer_id.replace("-", "")
        self._login_customer_id = login_customer_id.replace("-", "") if login_customer_id else None
        self._env = {
            "developer_token_env": developer_token_env,
            "access_token_env": access_token_env,
        }
        self._poll = poll_seconds
        self._max_poll = max_poll_seconds
        self._poll_timeout = poll_timeout_seconds
        self._ads = GoogleAdsClient(
            credentials=google.oauth2.credentials.Credentials(token=access_token),
            developer_token=developer_token,
            endpoint=endpoint,
            login_customer_id=self._login_customer_id,
            version=API_VERSION,
            use_proto_plus=True,
        )
        self._root_certificates = read_ca_file(ca_file, "Google Ads") if ca_file else None
        self._channel: Any = None
        self._services: dict[str, Any] = {}

    # ------------------------------------------------------------ services

    def service(self, name: str) -> Any:
        """The SDK service client ``name`` (e.g. ``"GoogleAdsService"``), cached."""
        service = self._services.get(name)
        if service is None:
            if self._root_certificates is None:
                service = self._ads.get_service(name, version=API_VERSION)
            else:
                service = self._service_trusting_ca(name)
            self._services[name] = service
        return service

    def _service_trusting_ca(self, name: str) -> Any:
        """The service client ``get_service`` builds, on a channel that trusts ``ca_file``."""
        import grpc
        from google.ads.googleads import client as sdk_client
        from google.ads.googleads.interceptors import (
            ExceptionInterceptor,
            LoggingInterceptor,
            MetadataInterceptor,
        )
        from google.ads.googleads.util import convert_upper_case_to_snake_case

        module = importlib.import_module(
            f"google.ads.googleads.{API_VERSION}.services.services."
            f"{convert_upper_case_to_snake_case(name)}"
        )
        client_class = getattr(module, f"{name}Client")
        transport_class = client_class.get_transport_class("grpc")
        if self._channel is None:
            endpoint = self._ads.endpoint or client_class.DEFAULT_ENDPOINT
            channel = transport_class.create_channel(
                host=endpoint,
                credentials=self._ads.credentials,
                options=sdk_client._GRPC_CHANNEL_OPTIONS,
                ssl_credentials=grpc.ssl_channel_credentials(
                    root_certificates=self._root_certificates
                ),
            )
            self._channel = grpc.intercept_channel(
                channel,
                MetadataInterceptor(self._ads.developer_token, self._ads.login_customer_id, None),
                LoggingInterceptor(logging.getLogger(SDK_LOGGER), API_VERSION, endpoint),
                ExceptionInterceptor(API_VERSION, use_proto_plus=True),
            )
        transport = transport_class(channel=self._channel, client_info=sdk_client._CLIENT_INFO)
        return client_class(transport=transport)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        else:
            for service in self._services.values():
                service.transport.close()
        self._services.clear()

    # ------------------------------------------------------------ calls with retries

    def _call(
        self,
        method: Callable[..., Any],
        request: Any,
        action: str,
        *,
        accept: Callable[[GoogleAdsApiError, int], bool] | None = None,
    ) -> Any:
        """Call ``method(request=...)``; retry transient failures with exponential backoff.

        ``accept(error, attempt)`` may declare a failure of a retried attempt a success
        (e.g. JOB_ALREADY_STARTED after a run whose first answer was lost); then None is
        returned.
        """
        import grpc
        from google.ads.googleads.errors import GoogleAdsException
        from google.api_core.exceptions import GoogleAPICallError

        def attempt(number: int) -> Any:
            try:
                return method(request=request, timeout=self._rpc_timeout)
            except (GoogleAdsException, GoogleAPICallError, grpc.RpcError) as exception:
                error = translate(exception, action=action, **self._env)
            if accept is not None and accept(error, number):
                return None
            raise error  # outside the except clause: the SDK's exception is not chained

        return self._retried(attempt, action)

    # ------------------------------------------------------------ user lists

    def create_user_list(self, name: str, description: str, membership_life_span_days: int) -> str:
        """Create a CRM-based (CONTACT_INFO) user list; return its resource name."""
        if not 0 <= membership_life_span_days <= MAX_MEMBERSHIP_LIFE_SPAN_DAYS:
            raise GoogleAdsRequestInvalid(
                f"membership life span {membership_life_span_days} days is out of range",
                f"use 0 to {MAX_MEMBERSHIP_LIFE_SPAN_DAYS} days",
                code="range_error.membership_life_span",
            )
        from google.ads.googleads.v26.common.types.user_lists import CrmBasedUserListInfo
        from google.ads.googleads.v26.resources.types.user_list import UserList
        from google.ads.googleads.v26.services.types import user_list_service

        operation = user_list_service.UserListOperation(
            create=UserList(
                name=name,
                description=description,
                membership_life_span=membership_life_span_days,
                crm_based_user_list=CrmBasedUserListInfo(
                    upload_key_type="CONTACT_INFO", data_source_type="FIRST_PARTY"
                ),
            )
        )
        request = user_list_service.MutateUserListsRequest(
            customer_id=self.customer_id, operations=[operation]
        )
        response = self._call(
            self.service("UserListService").mutate_user_lists, request, "create user list"
        )
        resource_name: str = response.results[0].resource_name
        _log.info("Google Ads: created user list %s", resource_name)
        return resource_name

    def find_user_list(self, name: str) -> str | None:
        """The resource name of the customer's user list called ``name``, if any."""
        quoted = name.replace("\\", "\\\\").replace("'", "\\'")
        rows = self._search(
            f"SELECT user_list.resource_name FROM user_list WHERE user_list.name = '{quoted}'",
            "find user list",
        )
        return str(rows[0].user_list.resource_name) if rows else None

    def user_list_size(self, user_list: str) -> int:
        """``size_for_display`` of a user list as the API reports it."""
        rows = self._search(
            "SELECT user_list.resource_name, user_list.size_for_display FROM user_list "
            f"WHERE user_list.resource_name = '{_quoted(user_list)}'",
            "read user list size",
        )
        if not rows:
            raise GoogleAdsRequestInvalid(
                f"user list {user_list} not found in customer {self.customer_id}",
                "check the destination's user list",
                code="user_list.not_found",
            )
        return int(rows[0].user_list.size_for_display)

    # ------------------------------------------------------------ uploads

    def upload(
        self,
        user_list: str,
        members: Iterable[Member],
        *,
        remove: bool,
        consent: Consent | None,
        replace: bool = False,
        batch_size: int = 10_000,
    ) -> JobResult:
        """Add (or remove) people to a user list in one offline user data job.

        ``members`` are per-person dicts with ``hashed_email`` / ``hashed_phone_number``
        (one value or several), and ``hashed_first_name``, ``hashed_last_name``,
        ``country_code``, ``postal_code`` (the address is sent only when all four are
        present). ``consent`` is ``(ad_user_data, ad_personalization)`` from
        ``GRANTED`` / ``DENIED`` / ``UNSPECIFIED``; adds with either DENIED are refused
        before anything is sent. ``replace`` empties the list first (``remove_all``).
        """
        if remove and replace:
            raise ValueError("replace empties the list and then adds; it cannot remove")
        if not 1 <= batch_size <= MAX_IDENTIFIERS_PER_REQUEST:
            raise ValueError(f"batch_size must be 1..{MAX_IDENTIFIERS_PER_REQUEST}")
        consent = _checked_consent(consent, adding=not remove)
        started = time.perf_counter()
        retries_before = self.retries
        service = self.service("OfflineUserDataJobService")
        upload = _Upload(user_list, consent)
        self._send_members(
            service, upload, members, remove=remove, replace=replace, batch_size=batch_size
        )
        if upload.job is None:  # nobody to send: no job at all
            status, failure_reason, match_rate, polls = "SUCCESS", None, None, 0
        else:
            self._run_job(service, upload.job)
            status, failure_reason, match_rate, polls = self._wait(upload.job)
        result = upload.result(
            operation="remove" if remove else "add",
            replaced=replace,
            status=status,
            failure_reason=failure_reason,
            match_rate_range=match_rate,
            polls=polls,
            retries=self.retries - retries_before,
            seconds=time.perf_counter() - started,
        )
        _log.info(
            "Google Ads job %s: %s, %d sent, %d rejected, %d skipped, %d requests, %d polls",
            upload.job,
            status,
            result.sent,
            result.rejected,
            result.skipped,
            result.requests,
            polls,
        )
        if status != "SUCCESS":
            raise OfflineJobFailed(
                f"Google Ads offline user data job {upload.job} ended {status}"
                + (f" ({failure_reason})" if failure_reason else ""),
                "upload again later; if it fails again, check the list in the Google Ads UI",
                code=f"offline_user_data_job.{failure_reason or status}",
            )
        return result

    def remove_all(self, user_list: str) -> JobResult:
        """Empty a user list: one job whose only operation is ``remove_all``."""
        return self.upload(user_list, [], remove=False, consent=UNSPECIFIED_CONSENT, replace=True)

    def _send_members(
        self,
        service: Any,
        upload: _Upload,
        members: Iterable[Member],
        *,
        remove: bool,
        replace: bool,
        batch_size: int,
    ) -> None:
        """Send ``members`` in requests of at most ``batch_size`` people; the job starts with
        the first request."""
        kind = "remove" if remove else "create"
        batch = self._new_batch()
        if replace:
            batch.request.operations.add().remove_all = True
            batch.rows.append(-1)
        for row, member in enumerate(members):
            identifiers = _identifiers(member)
            if not identifiers:
                upload.skipped += 1
                continue
            if len(identifiers) > MAX_IDENTIFIERS_PER_PERSON:
                upload.refuse(row, "TOO_MANY_USER_IDENTIFIERS")
                continue
            if (
                batch.people >= batch_size
                or batch.identifiers + len(identifiers) > MAX_IDENTIFIERS_PER_REQUEST
            ):
                self._send_batch(service, upload, batch)
                batch = self._new_batch()
            batch.add_person(row, kind, identifiers)
            upload.sent += 1
        if batch.rows:
            self._send_batch(service, upload, batch)

    def _send_batch(self, service: Any, upload: _Upload, batch: _Batch) -> None:
        upload.job = upload.job or self._create_job(service, upload.user_list, upload.consent)
        self._send(service, upload.job, batch, upload.rejected_rows, upload.rejected_by_code)
        upload.requests += 1

    def _create_job(self, service: Any, user_list: str, consent: Consent | None) -> str:
        from google.ads.googleads.v26.common.types.consent import Consent as ConsentMessage
        from google.ads.googleads.v26.common.types.offline_user_data import (
            CustomerMatchUserListMetadata,
        )
        from google.ads.googleads.v26.resources.types.offline_user_data_job import (
            OfflineUserDataJob,
        )
        from google.ads.googleads.v26.services.types import offline_user_data_job_service

        metadata = CustomerMatchUserListMetadata(user_list=user_list)
        if consent is not None:  # enum values by name
            metadata.consent = ConsentMessage(
                ad_user_data=consent[0], ad_personalization=consent[1]
            )
        request = offline_user_data_job_service.CreateOfflineUserDataJobRequest(
            customer_id=self.customer_id,
            job=OfflineUserDataJob(
                type_="CUSTOMER_MATCH_USER_LIST", customer_match_user_list_metadata=metadata
            ),
        )
        response = self._call(
            service.create_offline_user_data_job, request, "create offline user data job"
        )
        job: str = response.resource_name
        return job

    def _new_batch(self) -> _Batch:
        from google.ads.googleads.v26.services.types import offline_user_data_job_service

        raw = offline_user_data_job_service.AddOfflineUserDataJobOperationsRequest.pb()
        return _Batch(raw(enable_partial_failure=True))

    def _send(
        self,
        service: Any,
        job: str,
        batch: _Batch,
        rejected_rows: dict[str, set[int]],
        rejected_by_code: Counter[str],
    ) -> None:
        from google.ads.googleads.v26.services.types import offline_user_data_job_service

        batch.request.resource_name = job
        request = offline_user_data_job_service.AddOfflineUserDataJobOperationsRequest.wrap(
            batch.request
        )
        response = self._call(
            service.add_offline_user_data_job_operations, request, "add job operations"
        )
        for code, index in _partial_failures(response):
            row = batch.rows[index] if index is not None and 0 <= index < len(batch.rows) else -1
            if row < 0:
                raise GoogleAdsRequestInvalid(
                    f"Google Ads refused an operation that is not a person ({code})",
                    "this is a bug in the Google Ads connector; please report it",
                    code=f"offline_user_data_job_error.{code}",
                )
            if row not in rejected_rows[code]:
                rejected_rows[code].add(row)
                rejected_by_code[code] += 1

    def _run_job(self, service: Any, job: str) -> None:
        from google.ads.googleads.v26.services.types import offline_user_data_job_service

        def already_running(error: GoogleAdsApiError, attempt: int) -> bool:
            # A retried run whose first attempt reached the server finds the job started.
            return attempt > 1 and str(error.code).endswith(".JOB_ALREADY_STARTED")

        request = offline_user_data_job_service.RunOfflineUserDataJobRequest(resource_name=job)
        self._call(
            service.run_offline_user_data_job,
            request,
            "run offline user data job",
            accept=already_running,
        )

    def job_status(self, job: str) -> tuple[str, str | None, str | None]:
        """``(status, failure_reason, match_rate_range)`` of an offline user data job."""
        rows = self._search(
            "SELECT offline_user_data_job.resource_name, offline_user_data_job.status, "
            "offline_user_data_job.failure_reason, "
            "offline_user_data_job.operation_metadata.match_rate_range "
            "FROM offline_user_data_job "
            f"WHERE offline_user_data_job.resource_name = '{_quoted(job)}'",
            "read job status",
        )
        if not rows:
            raise GoogleAdsRequestInvalid(
                f"offline user data job {job} not found",
                "check the customer id",
                code="offline_user_data_job.not_found",
            )
        resource = rows[0].offline_user_data_job
        reason = resource.failure_reason.name
        match_rate = resource.operation_metadata.match_rate_range.name
        return (
            resource.status.name,
            None if reason == "UNSPECIFIED" else reason,
            None if match_rate == "UNSPECIFIED" else match_rate,
        )

    def _wait(self, job: str) -> tuple[str, str | None, str | None, int]:
        deadline = time.monotonic() + self._poll_timeout
        delay = self._poll
        polls = 0
        while True:
            status, reason, match_rate = self.job_status(job)
            polls += 1
            if status in ("SUCCESS", "FAILED"):
                return status, reason, match_rate, polls
            if time.monotonic() + delay > deadline:
                raise OfflineJobFailed(
                    f"Google Ads offline user data job {job} is still {status} after "
                    f"{polls} status checks",
                    "jobs can take up to a day; check its status later",
                    code="offline_user_data_job.TIMEOUT",
                    transient=True,
                )
            self._sleep(delay)
            delay = min(self._max_poll, delay * 2)

    def _search(self, query: str, action: str) -> list[Any]:
        from google.ads.googleads.v26.services.types import google_ads_service

        request = google_ads_service.SearchGoogleAdsRequest(
            customer_id=self.customer_id, query=query
        )
        pager = self._call(self.service("GoogleAdsService").search, request, action)
        return list(pager)


def _quoted(resource_name: str) -> str:
    if "'" in resource_name or "\\" in resource_name:
        raise GoogleAdsRequestInvalid(
            "a resource name contains a quote",
            "pass the resource name the API returned",
            code="resource_name.invalid",
        )
    return resource_name


UNSPECIFIED_CONSENT: Consent = ("UNSPECIFIED", "UNSPECIFIED")


def _checked_consent(consent: Consent | None, *, adding: bool) -> Consent | None:
    if consent is None:
        if adding:
            raise CustomerDataTermsNotAccepted(
                "Customer Match adds need consent (ad_user_data, ad_personalization)",
                "pass the consent the people gave: GRANTED (both, for EEA users)",
                code="consent.missing",
            )
        return None
    normalized = (str(consent[0]).upper(), str(consent[1]).upper())
    for value in normalized:
        if value not in CONSENT_VALUES:
            raise GoogleAdsRequestInvalid(
                f"consent value {value!r} is not one of {', '.join(CONSENT_VALUES)}",
                "pass (ad_user_data, ad_personalization) as GRANTED, DENIED or UNSPECIFIED",
                code="consent.invalid",
            )
    if adding and "DENIED" in normalized:
        raise CustomerDataTermsNotAccepted(
            "Customer Match refuses adds whose consent is DENIED "
            f"(ad_user_data={normalized[0]}, ad_personalization={normalized[1]}); nothing was sent",
            "upload only people whose ad_user_data and ad_personalization consent is GRANTED",
            code="offline_user_data_job_error.CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS",
        )
    return normalized


def _identifiers(member: Member) -> list[tuple[str, Any]]:
    """One person's identifiers: emails, phones, then the address when complete."""
    identifiers: list[tuple[str, Any]] = [(EMAIL, v) for v in values(member.get(EMAIL))]
    identifiers += [(PHONE, v) for v in values(member.get(PHONE))]
    address = tuple(member.get(k) for k in (FIRST_NAME, LAST_NAME, COUNTRY, POSTAL_CODE))
    if all(isinstance(part, str) and part for part in address):
        identifiers.append(("address_info", address))
    return identifiers


def _partial_failures(response: Any) -> list[tuple[str, int | None]]:
    """``(error code, operation index)`` for every error in ``partial_failure_error``."""
    from google.ads.googleads.v26.errors.types.errors import GoogleAdsFailure

    from connectors.google_ads.errors import error_code_name

    status = response.partial_failure_error
    if not status.code and not status.details:
        return []
    found: list[tuple[str, int | None]] = []
    for detail in status.details:
        failure = GoogleAdsFailure.deserialize(detail.value)
        for error in failure.errors:
            _, code = error_code_name(error.error_code)
            index = None
            for element in error.location.field_path_elements:
                if element.field_name == "operations" and "index" in element:
                    index = element.index
                    break
            found.append((code, index))
    return found
