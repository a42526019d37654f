"""Customer Match through the real google-ads-datamanager SDK (``google.ads.datamanager_v1``).

:class:`DataManagerClient` finds or creates a Customer Match user list with
``UserListService`` (``ingested_user_list_info`` with ``CONTACT_ID`` upload keys, an
opaque ``display_name`` and a ``membership_duration``), then adds and removes people with
``IngestionService.IngestAudienceMembers`` / ``RemoveAudienceMembers``: requests of at
most :data:`MAX_MEMBERS_PER_REQUEST` people, one ``AudienceMember`` per person holding
all of that person's identifiers (SHA-256 hex email and phone; an address of hashed given
and family names with the region code and postal code in clear), ``encoding = HEX``,
consent per member and the Customer Match terms-of-service status. Each request is
processed asynchronously: the request ids are kept and ``RetrieveRequestStatus`` is
polled with backoff (``connectors.retry``) until every request is SUCCESS,
PARTIAL_SUCCESS or FAILED.

Transport. The GAPIC client's default transport is gRPC over TLS to
``datamanager.googleapis.com:443``. For a sandbox (``ca_file`` given) the channel is the
transport's own ``create_channel`` with ``ssl_credentials`` trusting ``ca_file`` only, so
nothing process-wide is set. The access token travels in call credentials
(``google.oauth2.credentials.Credentials``) and is never logged; the SDK's own logger is
set to WARNING because at DEBUG it can print whole requests.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Unpack

from audiences.core.countries import ISO_COUNTRIES
from audiences.core.errors import ConfigError, ConnectorError
from connectors.base import read_ca_file
from connectors.google_common import CONSENT_VALUES, IDENTIFIERS, GoogleClient, RetryOptions, values
from connectors.google_data_manager.errors import (
    DataManagerRequestFailed,
    DataManagerRequestInvalid,
    DataManagerTransientError,
    translate,
)
from connectors.retry import RetryPolicy

SDK_LOGGER = "google.ads.datamanager_v1"
# a member's columns, as the google_ads layout (audiences.crm.identifiers) names them
EMAIL, PHONE, FIRST_NAME, LAST_NAME, COUNTRY, POSTAL_CODE = IDENTIFIERS
DEFAULT_ENDPOINT = "datamanager.googleapis.com:443"
MAX_MEMBERS_PER_REQUEST = 10_000
MAX_IDENTIFIERS_PER_MEMBER = 10
MAX_MEMBERSHIP_DAYS = 540
TERMINAL = ("SUCCESS", "PARTIAL_SUCCESS", "FAILED")

CONSENT_FIELDS = ("ad_user_data", "ad_personalization")

Member = Mapping[str, str | Sequence[str] | None]
Consent = tuple[str, str]

_log = logging.getLogger(__name__)
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class RequestOutcome:
    """How the platform processed one request."""

    request_id: str
    status: str  # SUCCESS | PARTIAL_SUCCESS | FAILED
    records: int  # records the platform counted
    errors: Mapping[str, int]  # processing error reason -> records
    match_rate_range: str | None

    @property
    def failed_records(self) -> int:
        if self.status == "FAILED":
            return max(self.records, sum(self.errors.values()))
        return sum(self.errors.values())


@dataclass(frozen=True)
class RequestsResult:
    """What one upload (add or remove of many requests) did."""

    operation: Literal["add", "remove", "remove_all"]
    sent: int  # people sent
    requests: tuple[RequestOutcome, ...]
    polls: int
    retries: int
    seconds: float

    @property
    def rejected(self) -> int:
        return sum(r.failed_records for r in self.requests)

    @property
    def accepted(self) -> int:
        return self.sent - self.rejected

    @property
    def errors(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for request in self.requests:
            total.update(request.errors)
        return dict(total)

    @property
    def match_rate_range(self) -> str | None:
        ranges = [r.match_rate_range for r in self.requests if r.match_rate_range]
        return ranges[-1] if ranges else None


@dataclass
class _Polling:
    pending: dict[str, None]  # request ids still PROCESSING, in sending order
    done: dict[str, RequestOutcome] = field(default_factory=dict)
    polls: int = 0


class DataManagerClient(GoogleClient):
    """Customer Match lists of one Google Ads account through the Data Manager API.

    ``access_token`` is a ready OAuth access token (scope ``.../auth/datamanager``).
    ``endpoint`` (``host:port``) and ``ca_file`` point the client at a sandbox. The
    ``access_token_env`` and ``destination`` names only appear in error messages.
    """

    platform = "Data Manager"
    _log = _log

    def __init__(
        self,
        customer_id: str,
        access_token: str,
        *,
        destination: str = "google_data_manager",
        login_customer_id: str | None = None,
        endpoint: str | None = None,
        ca_file: str | None = None,
        access_token_env: str = "GOOGLE_DATA_MANAGER_ACCESS_TOKEN",
        poll_seconds: float = 30.0,
        max_poll_seconds: float = 600.0,
        poll_timeout_seconds: float = 24 * 3600.0,
        **retry: Unpack[RetryOptions],
    ) -> None:
        super().__init__(sdk_logger=SDK_LOGGER, **retry)
        import google.oauth2.credentials
        import grpc
        from google.ads import datamanager_v1
        from google.ads.datamanager_v1.services.ingestion_service.transports.grpc import (
            IngestionServiceGrpcTransport,
        )
        from google.ads.datamanager_v1.services.user_list_service.transports.grpc import (
            UserListServiceGrpcTransport,
        )

        self.customer_id = customer_id.replace("-", "")
        self.login_customer_id = login_customer_id.replace("-", "") if login_customer_id else None
        self._names = {"destination": destination, "access_token_env": access_token_env}
        self.polling = RetryPolicy(
            max_attempts=1_000_000,
            base_delay_s=poll_seconds,
            max_delay_s=max_poll_seconds,
            jitter=0.2,
            max_total_s=poll_timeout_seconds,
        )
        root_certificates = read_ca_file(ca_file, "Data Manager") if ca_file else None
        self._channel = IngestionServiceGrpcTransport.create_channel(
            endpoint or DEFAULT_ENDPOINT,
            credentials=google.oauth2.credentials.Credentials(token=access_token),
            ssl_credentials=grpc.ssl_channel_credentials(root_certificates=root_certificates),
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        )
        self.ingestion = datamanager_v1.IngestionServiceClient(
            transport=IngestionServiceGrpcTransport(channel=self._channel)
        )
        self.user_lists = datamanager_v1.UserListServiceClient(
            transport=UserListServiceGrpcTransport(channel=self._channel)
        )

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    # ------------------------------------------------------------ calls with retries

    def _call(self, method: Callable[..., Any], request: Any, action: str, **kwargs: Any) -> Any:
        """``method(request=...)``, transient failures retried with jittered backoff."""
        from google.api_core.exceptions import GoogleAPICallError

        def attempt(_number: int) -> Any:
            try:
                # retry=None: the SDK's own retries would hide attempts from the one policy
                return method(request=request, timeout=self._rpc_timeout, retry=None, **kwargs)
            except GoogleAPICallError as exception:
                error = translate(exception, action=action, **self._names)
            raise error  # outside the except clause: the SDK's exception is not chained

        return self._retried(attempt, action)

    def _account_headers(self) -> list[tuple[str, str]]:
        if not self.login_customer_id:
            return []
        return [("login-account", f"accountTypes/GOOGLE_ADS/accounts/{self.login_customer_id}")]

    # ------------------------------------------------------------ user lists

    @property
    def parent(self) -> str:
        return f"accountTypes/GOOGLE_ADS/accounts/{self.customer_id}"

    def find_user_list(self, display_name: str) -> str | None:
        """The resource name of the account's list called ``display_name``, if there is one."""
        from google.ads.datamanager_v1 import types

        if '"' in display_name or "\\" in display_name:
            raise DataManagerRequestInvalid(
                "a user list name contains a quote", "use the opaque names audiences makes"
            )
        request = types.ListUserListsRequest(
            parent=self.parent, filter=f'display_name = "{display_name}"', page_size=10
        )
        pager = self._call(
            self.user_lists.list_user_lists,
            request,
            "list user lists",
            metadata=self._account_headers(),
        )
        for user_list in pager:
            if user_list.display_name == display_name:
                return str(user_list.name)
        return None

    def get_user_list(self, name: str) -> Any:
        from google.ads.datamanager_v1 import types

        request = types.GetUserListRequest(name=self.user_list_name(name))
        return self._call(
            self.user_lists.get_user_list,
            request,
            "read user list",
            metadata=self._account_headers(),
        )

    def create_user_list(self, display_name: str, description: str, membership_days: int) -> str:
        """Create a Customer Match (contact info, first party) list; return its resource name."""
        if not 1 <= membership_days <= MAX_MEMBERSHIP_DAYS:
            raise DataManagerRequestInvalid(
                f"membership duration {membership_days} days is out of range",
                f"set membership_duration_days to 1..{MAX_MEMBERSHIP_DAYS}",
                code="membership_duration",
            )
        from google.ads.datamanager_v1 import types
        from google.protobuf import duration_pb2

        info = types.IngestedUserListInfo(
            upload_key_types=[types.IngestedUserListInfo.UploadKeyType.CONTACT_ID],
            contact_id_info=types.ContactIdInfo(
                data_source_type=types.DataSourceType.DATA_SOURCE_TYPE_FIRST_PARTY
            ),
        )
        user_list = types.UserList(
            display_name=display_name,
            description=description,
            membership_duration=duration_pb2.Duration(seconds=membership_days * 86_400),
            ingested_user_list_info=info,
        )
        request = types.CreateUserListRequest(parent=self.parent, user_list=user_list)
        created = self._call(
            self.user_lists.create_user_list,
            request,
            "create user list",
            metadata=self._account_headers(),
        )
        _log.info("Data Manager: created user list %s", created.name)
        return str(created.name)

    def user_list_name(self, user_list: str) -> str:
        """A list's resource name from its id, its Data Manager name or a Google Ads name."""
        return f"{self.parent}/userLists/{user_list_id(user_list)}"

    # ------------------------------------------------------------ ingestion

    def _destination(self, user_list: str) -> Any:
        from google.ads.datamanager_v1 import types

        account = types.ProductAccount
        destination = types.Destination(
            operating_account=account(
                account_type=account.AccountType.GOOGLE_ADS, account_id=self.customer_id
            ),
            product_destination_id=user_list_id(user_list),
        )
        if self.login_customer_id:
            destination.login_account = account(
                account_type=account.AccountType.GOOGLE_ADS, account_id=self.login_customer_id
            )
        return destination

    def send_members(
        self,
        user_list: str,
        members: Iterable[Member],
        *,
        remove: bool,
        default_consent: Consent = ("UNSPECIFIED", "UNSPECIFIED"),
        terms_accepted: bool = False,
        validate_only: bool = False,
    ) -> tuple[list[str], int]:
        """Send ``members`` in requests of at most 10,000; return (request ids, people sent).

        Each member is a dict of the ``google_ads`` layout's columns plus, for adds, its own
        ``ad_user_data`` / ``ad_personalization`` (GRANTED, DENIED or UNSPECIFIED: the
        request's ``default_consent`` applies). An add of a member with DENIED consent, a
        hash that is not SHA-256 hex or a region code that is not ISO 3166-1 alpha-2 is
        refused before anything is sent.
        """
        if not remove and not terms_accepted:
            raise ConfigError(
                "Customer Match uploads through the Data Manager API need the Customer "
                "Match terms of service accepted",
                "accept them for the account in Google Ads, then set "
                f"accept_customer_match_terms = true in [destinations.{self._names['destination']}]",
            )
        default = _checked_consent(default_consent, index=None)
        ids: list[str] = []
        sent = 0
        batch: list[Member] = []
        for member in members:
            batch.append(member)
            if len(batch) == MAX_MEMBERS_PER_REQUEST:
                ids.append(self._send_request(user_list, batch, remove, default, validate_only))
                sent += len(batch)
                batch = []
        if batch:
            ids.append(self._send_request(user_list, batch, remove, default, validate_only))
            sent += len(batch)
        return ids, sent

    def _send_request(
        self,
        user_list: str,
        members: Sequence[Member],
        remove: bool,
        default: Consent,
        validate_only: bool,
    ) -> str:
        from google.ads.datamanager_v1 import types

        name = "RemoveAudienceMembersRequest" if remove else "IngestAudienceMembersRequest"
        raw = getattr(types, name).pb()()
        raw.destinations.append(type(self._destination(user_list)).pb(self._destination(user_list)))
        raw.encoding = types.Encoding.HEX
        raw.validate_only = validate_only
        for index, member in enumerate(members):
            _add_member(raw.audience_members.add(), member, index, adding=not remove)
        if not remove:
            raw.consent.ad_user_data = _CONSENT_ENUM[default[0]]
            raw.consent.ad_personalization = _CONSENT_ENUM[default[1]]
            raw.terms_of_service.customer_match_terms_of_service_status = (
                types.TermsOfServiceStatus.ACCEPTED
            )
        request = getattr(types, name).wrap(raw)
        if remove:
            response = self._call(self.ingestion.remove_audience_members, request, "remove members")
        else:
            response = self._call(self.ingestion.ingest_audience_members, request, "ingest members")
        return str(response.request_id)

    def remove_all(self, user_list: str) -> str:
        """Empty a list (a full refresh's first step); return the request id."""
        from google.ads.datamanager_v1 import types

        request = types.RemoveAllAudienceMembersRequest(destinations=[self._destination(user_list)])
        response = self._call(
            self.ingestion.remove_all_audience_members, request, "remove all members"
        )
        return str(response.request_id)

    # ------------------------------------------------------------ request status

    def request_status(self, request_id: str) -> RequestOutcome | None:
        """The request's outcome, or None while it is still PROCESSING."""
        from google.ads.datamanager_v1 import types

        request = types.RetrieveRequestStatusRequest(request_id=request_id)
        response = self._call(
            self.ingestion.retrieve_request_status, request, "retrieve request status"
        )
        statuses = list(response.request_status_per_destination)
        if not statuses:
            return None
        return _outcome(request_id, statuses[0])

    def wait(self, request_ids: Sequence[str]) -> tuple[list[RequestOutcome], int]:
        """Poll until every request ended; return (outcomes in sending order, polls)."""
        state = _Polling(pending=dict.fromkeys(request_ids))

        def poll(_number: int) -> None:
            for request_id in list(state.pending):
                outcome = self.request_status(request_id)
                state.polls += 1
                if outcome is None:
                    break  # requests finish roughly in order: poll the rest next time
                state.done[request_id] = outcome
                del state.pending[request_id]
            if state.pending:
                raise DataManagerTransientError(
                    f"{len(state.pending)} Data Manager request(s) still PROCESSING",
                    "wait",
                    code="PROCESSING",
                    transient=True,
                )

        def gave_up(error: ConnectorError, attempts: int, why: str) -> ConnectorError:
            first = next(iter(state.pending))
            return DataManagerRequestFailed(
                f"Data Manager request {first} is still PROCESSING after {state.polls} "
                f"status checks ({why})",
                "requests can take hours; sync again later (unconfirmed people are sent again)",
                code="PROCESSING.TIMEOUT",
                transient=True,
                request_id=first,
            )

        if request_ids:
            self.polling.call(poll, sleep=self._sleep, rng=self._random, on_give_up=gave_up)
        return [state.done[r] for r in request_ids], state.polls

    def upload(
        self,
        user_list: str,
        members: Iterable[Member],
        *,
        remove: bool = False,
        default_consent: Consent = ("UNSPECIFIED", "UNSPECIFIED"),
        terms_accepted: bool = False,
    ) -> RequestsResult:
        """Send ``members`` and wait for the platform; a FAILED request raises."""
        started = time.perf_counter()
        retries_before = self.retries
        ids, sent = self.send_members(
            user_list,
            members,
            remove=remove,
            default_consent=default_consent,
            terms_accepted=terms_accepted,
        )
        outcomes, polls = self.wait(ids)
        result = RequestsResult(
            operation="remove" if remove else "add",
            sent=sent,
            requests=tuple(outcomes),
            polls=polls,
            retries=self.retries - retries_before,
            seconds=time.perf_counter() - started,
        )
        _log.info(
            "Data Manager %s: %d requests, %d sent, %d rejected, %d polls, match rate %s",
            result.operation,
            len(ids),
            sent,
            result.rejected,
            polls,
            result.match_rate_range,
        )
        raise_failed(outcomes)
        return result


def raise_failed(outcomes: Iterable[RequestOutcome]) -> None:
    """Raise for the first request that ended FAILED (the platform took none of its people)."""
    for outcome in outcomes:
        if outcome.status == "FAILED":
            reasons = ", ".join(sorted(outcome.errors)) or "no reason given"
            raise DataManagerRequestFailed(
                f"Data Manager request {outcome.request_id} ended FAILED ({reasons})",
                "fix what the reason names, then sync again (nothing of it was recorded)",
                code=f"FAILED.{next(iter(sorted(outcome.errors)), 'UNKNOWN')}",
                request_id=outcome.request_id,
            )


def user_list_id(user_list: str) -> str:
    """The numeric id of a list named by id, Data Manager or Google Ads resource name."""
    tail = user_list.rstrip("/").rsplit("/", 1)[-1]
    if not tail.isdigit():
        raise DataManagerRequestInvalid(
            f"{user_list!r} is not a user list id",
            "set user_list_id to the list's numeric id in Google Ads",
            code="user_list_id",
        )
    return tail


_CONSENT_ENUM = {"UNSPECIFIED": 0, "GRANTED": 1, "DENIED": 2}  # datamanager ConsentStatus


def _checked_consent(consent: Sequence[str | None], *, index: int | None) -> Consent:
    values = tuple(str(v or "UNSPECIFIED").upper() for v in consent)
    for value in values:
        if value not in CONSENT_VALUES:
            where = "the request default" if index is None else f"member {index}"
            raise DataManagerRequestInvalid(
                f"consent value {value!r} of {where} is not one of {', '.join(CONSENT_VALUES)}",
                "map [consent] ad_user_data / ad_personalization to granted/denied columns",
                code="consent.invalid",
            )
    return values[0], values[1]


def _hashed(value: str, index: int, name: str) -> str:
    if len(value) != 64 or not _HEX.issuperset(value):
        raise DataManagerRequestInvalid(
            f"member {index}: {name} is not a lowercase SHA-256 hex digest",
            "send the hashed columns of the google_ads layout (audiences.crm.identifiers)",
            code="INVALID_ARGUMENT.hash",
        )
    return value


def _add_member(raw: Any, member: Member, index: int, *, adding: bool) -> None:
    """Fill one raw ``AudienceMember``: all of the person's identifiers, and consent."""
    identifiers = raw.user_data.user_identifiers
    for email in values(member.get(EMAIL)):
        identifiers.add().email_address = _hashed(email, index, EMAIL)
    for phone in values(member.get(PHONE)):
        identifiers.add().phone_number = _hashed(phone, index, PHONE)
    first, last = member.get(FIRST_NAME), member.get(LAST_NAME)
    country, postal = member.get(COUNTRY), member.get(POSTAL_CODE)
    if all(isinstance(p, str) and p for p in (first, last, country, postal)):
        region = str(country).upper()
        if region.lower() not in ISO_COUNTRIES:
            raise DataManagerRequestInvalid(
                f"member {index}: region code {country!r} is not ISO 3166-1 alpha-2",
                "use two-letter codes (US, GB...): fix the CRM's [identity] country column "
                "or [identity] default_country",
                code="INVALID_ARGUMENT.region_code",
            )
        address = identifiers.add().address
        address.given_name = _hashed(str(first), index, FIRST_NAME)
        address.family_name = _hashed(str(last), index, LAST_NAME)
        address.region_code = region
        address.postal_code = str(postal)
    if not identifiers:
        raise DataManagerRequestInvalid(
            f"member {index} has no identifier (email, phone or full address)",
            "drop people without identifiers before sending",
            code="INVALID_ARGUMENT.no_identifier",
        )
    if len(identifiers) > MAX_IDENTIFIERS_PER_MEMBER:
        raise DataManagerRequestInvalid(
            f"member {index} has {len(identifiers)} identifiers, over the "
            f"{MAX_IDENTIFIERS_PER_MEMBER} a member may hold",
            "send at most 10 emails, phones and addresses per person",
            code="INVALID_ARGUMENT.too_many_identifiers",
        )
    if adding:
        consent = _checked_consent([member.get(c) for c in CONSENT_FIELDS], index=index)  # type: ignore[misc]
        if "DENIED" in consent:
            raise DataManagerRequestInvalid(
                f"member {index} has consent DENIED (ad_user_data={consent[0]}, "
                f"ad_personalization={consent[1]}); nothing was sent",
                "the gate releases no DENIED member to Google; this is a bug — please report it",
                code="consent.denied",
            )
        if consent != ("UNSPECIFIED", "UNSPECIFIED"):
            raw.consent.ad_user_data = _CONSENT_ENUM[consent[0]]
            raw.consent.ad_personalization = _CONSENT_ENUM[consent[1]]


def _outcome(request_id: str, status: Any) -> RequestOutcome | None:
    """A ``RequestStatusPerDestination`` as a :class:`RequestOutcome` (None: PROCESSING)."""
    name = status.request_status.name
    if name not in TERMINAL:
        return None  # PROCESSING, or not yet known right after the request
    errors: Counter[str] = Counter()
    for count in status.error_info.error_counts:
        errors[count.reason.name.removeprefix("PROCESSING_ERROR_REASON_")] += count.record_count
    which = status._pb.WhichOneof("status")
    records, match_rate = 0, None
    if which == "audience_members_ingestion_status":
        user_data = status.audience_members_ingestion_status.user_data_ingestion_status
        records = int(user_data.record_count)
        rate = user_data.upload_match_rate_range.name
        match_rate = None if rate == "MATCH_RATE_RANGE_UNKNOWN" else rate
    elif which == "audience_members_removal_status":
        records = int(status.audience_members_removal_status.user_data_removal_status.record_count)
    return RequestOutcome(request_id, name, records, dict(errors), match_rate)
