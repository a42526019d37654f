"""The Google Ads sandbox, driven by the real google-ads SDK (v26) over TLS on 127.0.0.1.

These tests speak to the sandbox through the SDK's own service clients and check the
wire behaviour the connector relies on: GoogleAdsFailure in trailing metadata,
partial-failure shape, job rules, consent, limits, polling and authentication.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.ads.googleads.errors import GoogleAdsException
from google.ads.googleads.v26.common.types.offline_user_data import UserData, UserIdentifier
from google.ads.googleads.v26.errors.types.errors import GoogleAdsFailure
from google.ads.googleads.v26.services.types import (
    google_ads_service,
    offline_user_data_job_service,
    user_list_service,
)
from google.api_core.exceptions import GoogleAPICallError

from connectors.google_ads.client import GoogleAdsCustomerMatchClient
from connectors.google_ads.errors import error_code_name
from connectors.sandbox.google_ads_server import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_DEVELOPER_TOKEN,
    FAILURE_TYPE_URL,
    GoogleAdsSandbox,
    serve,
)
from connectors.sandbox.tls import make_loopback_certificate

ouds = offline_user_data_job_service


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def sandbox() -> Iterator[GoogleAdsSandbox]:
    with GoogleAdsSandbox(pending_polls=1, running_polls=1) as server:
        yield server


def sdk_client(
    sandbox: GoogleAdsSandbox, *, access_token: str = DEFAULT_ACCESS_TOKEN, **kwargs: object
) -> GoogleAdsCustomerMatchClient:
    return GoogleAdsCustomerMatchClient(
        sandbox.customer_id,
        str(kwargs.pop("developer_token", DEFAULT_DEVELOPER_TOKEN)),
        access_token,
        endpoint=sandbox.endpoint,
        ca_file=sandbox.ca_file,
        max_attempts=1,
        sleep=lambda _seconds: None,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def client(sandbox: GoogleAdsSandbox) -> Iterator[GoogleAdsCustomerMatchClient]:
    with sdk_client(sandbox) as ads:
        yield ads


def codes(exception: GoogleAdsException) -> list[str]:
    return [error_code_name(e.error_code)[1] for e in exception.failure.errors]


def new_list(client: GoogleAdsCustomerMatchClient, name: str = "L1") -> str:
    return client.create_user_list(name, "opaque", 30)


def new_job(client: GoogleAdsCustomerMatchClient, user_list: str, consent: str = "GRANTED") -> str:
    request = ouds.CreateOfflineUserDataJobRequest(customer_id=client.customer_id)
    request.job.type_ = "CUSTOMER_MATCH_USER_LIST"
    request.job.customer_match_user_list_metadata.user_list = user_list
    request.job.customer_match_user_list_metadata.consent.ad_user_data = consent
    request.job.customer_match_user_list_metadata.consent.ad_personalization = "GRANTED"
    service = client.service("OfflineUserDataJobService")
    return str(service.create_offline_user_data_job(request=request).resource_name)


def person_op(kind: str, *identifiers: tuple[str, str]) -> ouds.OfflineUserDataJobOperation:
    user_data = UserData(
        user_identifiers=[UserIdentifier(**{which: value}) for which, value in identifiers]
    )
    return ouds.OfflineUserDataJobOperation(**{kind: user_data})


def add_ops(
    client: GoogleAdsCustomerMatchClient,
    job: str,
    operations: list[ouds.OfflineUserDataJobOperation],
    *,
    partial: bool = True,
) -> ouds.AddOfflineUserDataJobOperationsResponse:
    request = ouds.AddOfflineUserDataJobOperationsRequest(
        resource_name=job, enable_partial_failure=partial, operations=operations
    )
    return client.service("OfflineUserDataJobService").add_offline_user_data_job_operations(
        request=request
    )


def run(client: GoogleAdsCustomerMatchClient, job: str) -> object:
    request = ouds.RunOfflineUserDataJobRequest(resource_name=job)
    return client.service("OfflineUserDataJobService").run_offline_user_data_job(request=request)


# ---------------------------------------------------------------- TLS


def test_certificate_files_are_private_and_name_loopback() -> None:
    from cryptography import x509

    material = make_loopback_certificate()
    try:
        for path in (material.certificate_file, material.private_key_file):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(material.directory).st_mode) == 0o700
        certificate = x509.load_pem_x509_certificate(material.certificate_pem)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["localhost"]
        assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    finally:
        for path in material.directory.iterdir():
            path.unlink()
        material.directory.rmdir()


def test_a_client_trusting_another_ca_is_refused(sandbox: GoogleAdsSandbox) -> None:
    # (Another CA rather than the default roots: loading gRPC's default roots in this
    # process would freeze them for every later test.)
    from connectors.google_ads.errors import GoogleAdsTransientError

    other = make_loopback_certificate()
    try:
        stranger = GoogleAdsCustomerMatchClient(
            sandbox.customer_id,
            DEFAULT_DEVELOPER_TOKEN,
            DEFAULT_ACCESS_TOKEN,
            endpoint=sandbox.endpoint,
            ca_file=str(other.certificate_file),
            max_attempts=1,
            rpc_timeout_seconds=5,
        )
        with pytest.raises(GoogleAdsTransientError, match="UNAVAILABLE"):
            stranger.create_user_list("L1", "opaque", 30)
        stranger.close()
    finally:
        for path in other.directory.iterdir():
            path.unlink()
        other.directory.rmdir()
    assert sandbox.calls == []


def test_serve_takes_tokens_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_ADS_DEVELOPER_TOKEN", "env-dev-token")
    monkeypatch.setenv("GOOGLE_ADS_ACCESS_TOKEN", "env-access-token")
    server = serve(customer_id="1112223333")
    try:
        with GoogleAdsCustomerMatchClient(
            "111-222-3333",
            "env-dev-token",
            "env-access-token",
            endpoint=server.endpoint,
            ca_file=server.ca_file,
            max_attempts=1,
        ) as ads:
            assert ads.create_user_list("L1", "opaque", 0).startswith("customers/1112223333/")
    finally:
        server.stop()


def test_stop_removes_the_key_material() -> None:
    server = GoogleAdsSandbox().start()
    directory = Path(server.ca_file).parent
    assert directory.exists()
    server.stop()
    assert not directory.exists()


# ---------------------------------------------------------------- user lists


def test_user_list_is_crm_based_contact_info(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient
) -> None:
    resource = client.create_user_list("A-1", "opaque", 540)
    request = google_ads_service.SearchGoogleAdsStreamRequest(
        customer_id=sandbox.customer_id,
        query="SELECT user_list.name, user_list.membership_life_span, "
        "user_list.crm_based_user_list.upload_key_type, user_list.size_for_display "
        f"FROM user_list WHERE user_list.resource_name = '{resource}'",
    )
    batches = list(client.service("GoogleAdsService").search_stream(request=request))
    rows = [row for batch in batches for row in batch.results]
    assert len(rows) == 1
    user_list = rows[0].user_list
    assert (user_list.name, user_list.membership_life_span) == ("A-1", 540)
    assert user_list.crm_based_user_list.upload_key_type.name == "CONTACT_INFO"
    assert user_list.size_for_display == 0
    assert user_list.resource_name == ""  # only selected fields come back
    assert batches[0].request_id


@pytest.mark.parametrize(
    ("life_span", "code"),
    [(541, "TOO_HIGH"), (-1, "TOO_LOW")],
)
def test_membership_life_span_range(
    client: GoogleAdsCustomerMatchClient, life_span: int, code: str
) -> None:
    operation = user_list_service.UserListOperation()
    operation.create.name = "L"
    operation.create.membership_life_span = life_span
    operation.create.crm_based_user_list.upload_key_type = "CONTACT_INFO"
    request = user_list_service.MutateUserListsRequest(
        customer_id=client.customer_id, operations=[operation]
    )
    with pytest.raises(GoogleAdsException) as caught:
        client.service("UserListService").mutate_user_lists(request=request)
    assert codes(caught.value) == [code]
    assert caught.value.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.request_id


def test_user_list_names_are_unique(client: GoogleAdsCustomerMatchClient) -> None:
    from connectors.google_ads.errors import GoogleAdsRequestInvalid

    new_list(client, "same")
    with pytest.raises(GoogleAdsRequestInvalid, match="NAME_ALREADY_USED"):
        new_list(client, "same")


# ---------------------------------------------------------------- jobs


def test_whole_request_failure_carries_google_ads_failure(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient
) -> None:
    job = new_job(client, new_list(client))
    operations = [
        person_op("create", ("hashed_email", sha("a@x.com"))),
        person_op("remove", ("hashed_email", sha("b@x.com"))),
    ]
    with pytest.raises(GoogleAdsException) as caught:
        add_ops(client, job, operations)
    assert codes(caught.value) == ["CONFLICTING_OPERATION"]
    assert caught.value.failure.errors[0].location.field_path_elements[0].index == 1
    metadata = dict(caught.value.call.trailing_metadata())
    assert metadata["request-id"] == caught.value.request_id
    assert (
        GoogleAdsFailure.deserialize(
            metadata["google.ads.googleads.v26.errors.googleadsfailure-bin"]
        )
        == caught.value.failure
    )
    assert sandbox.jobs[job].staged == []


def test_adds_and_removes_cannot_share_a_job_across_requests(
    client: GoogleAdsCustomerMatchClient,
) -> None:
    job = new_job(client, new_list(client))
    add_ops(client, job, [person_op("remove", ("hashed_email", sha("a@x.com")))])
    with pytest.raises(GoogleAdsException) as caught:
        add_ops(client, job, [person_op("create", ("hashed_email", sha("b@x.com")))])
    assert codes(caught.value) == ["CONFLICTING_OPERATION"]


def test_remove_all_must_come_first(client: GoogleAdsCustomerMatchClient) -> None:
    job = new_job(client, new_list(client))
    remove_all = ouds.OfflineUserDataJobOperation(remove_all=True)
    with pytest.raises(GoogleAdsException) as caught:
        add_ops(client, job, [person_op("create", ("hashed_email", sha("a@x.com"))), remove_all])
    assert codes(caught.value) == ["INVALID_OPERATION_ORDER"]
    add_ops(client, job, [remove_all, person_op("create", ("hashed_email", sha("a@x.com")))])
    with pytest.raises(GoogleAdsException) as caught:
        add_ops(client, job, [remove_all])
    assert codes(caught.value) == ["INVALID_OPERATION_ORDER"]


def test_nothing_can_be_added_after_run(client: GoogleAdsCustomerMatchClient) -> None:
    job = new_job(client, new_list(client))
    add_ops(client, job, [person_op("create", ("hashed_email", sha("a@x.com")))])
    operation = run(client, job)
    assert operation.operation.name.startswith(f"customers/{client.customer_id}/operations/")
    assert not operation.done()
    with pytest.raises(GoogleAdsException) as caught:
        add_ops(client, job, [person_op("create", ("hashed_email", sha("b@x.com")))])
    assert codes(caught.value) == ["JOB_ALREADY_STARTED"]
    with pytest.raises(GoogleAdsException) as caught:
        run(client, job)
    assert codes(caught.value) == ["JOB_ALREADY_STARTED"]


@pytest.mark.parametrize("denied", ["DENIED"])
def test_denied_consent_refuses_adds_but_not_removes(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient, denied: str
) -> None:
    user_list = new_list(client)
    job = new_job(client, user_list, consent=denied)
    with pytest.raises(GoogleAdsException) as caught:
        add_ops(client, job, [person_op("create", ("hashed_email", sha("a@x.com")))])
    assert codes(caught.value) == ["CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS"]
    response = add_ops(client, job, [person_op("remove", ("hashed_email", sha("a@x.com")))])
    assert response.partial_failure_error.code == 0


def test_partial_failure_shape_the_sdk_parses(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient
) -> None:
    user_list = new_list(client)
    job = new_job(client, user_list)
    good = sha("good@x.com")
    operations = [
        person_op("create", ("hashed_email", good)),
        person_op("create", ("hashed_email", good), ("hashed_phone_number", "ABC")),
        person_op("create", *[("hashed_email", sha(f"{i}@x.com")) for i in range(21)]),
        person_op("create"),
    ]
    response = add_ops(client, job, operations)
    status = response.partial_failure_error
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [d.type_url for d in status.details] == [FAILURE_TYPE_URL]
    failure = GoogleAdsFailure.deserialize(status.details[0].value)
    found = [
        (
            error_code_name(e.error_code)[1],
            [
                (p.field_name, p.index if "index" in p else None)
                for p in e.location.field_path_elements
            ],
        )
        for e in failure.errors
    ]
    assert found == [
        (
            "INVALID_SHA256_FORMAT",
            [
                ("operations", 1),
                ("create", None),
                ("user_identifiers", 1),
                ("hashed_phone_number", None),
            ],
        ),
        (
            "TOO_MANY_USER_IDENTIFIERS",
            [("operations", 2), ("create", None), ("user_identifiers", None)],
        ),
        (
            "MISSING_USER_IDENTIFIER",
            [("operations", 3), ("create", None), ("user_identifiers", None)],
        ),
    ]
    assert [len(p) for p in sandbox.jobs[job].staged] == [2]


def test_without_partial_failure_one_bad_row_fails_the_request(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient
) -> None:
    job = new_job(client, new_list(client))
    operations = [
        person_op("create", ("hashed_email", sha("a@x.com"))),
        person_op("create", ("hashed_email", "not-a-hash")),
    ]
    with pytest.raises(GoogleAdsException) as caught:
        add_ops(client, job, operations, partial=False)
    assert codes(caught.value) == ["INVALID_SHA256_FORMAT"]
    assert sandbox.jobs[job].staged == []


def test_more_than_100000_identifiers_per_request_are_refused(
    client: GoogleAdsCustomerMatchClient,
) -> None:
    job = new_job(client, new_list(client))
    request = ouds.AddOfflineUserDataJobOperationsRequest.pb()(resource_name=job)
    email = sha("a@x.com")
    for _ in range(5_001):
        user_data = request.operations.add().create
        for _ in range(20):
            user_data.user_identifiers.add(hashed_email=email)
    service = client.service("OfflineUserDataJobService")
    with pytest.raises(GoogleAdsException) as caught:
        service.add_offline_user_data_job_operations(
            request=ouds.AddOfflineUserDataJobOperationsRequest.wrap(request)
        )
    assert codes(caught.value) == ["TOO_MANY_USER_IDENTIFIERS"]


def test_job_status_progresses_with_polls_and_applies_at_success(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient
) -> None:
    sandbox.pending_polls, sandbox.running_polls = 2, 1
    user_list = new_list(client)
    job = new_job(client, user_list)
    add_ops(client, job, [person_op("create", ("hashed_email", sha("a@x.com")))])
    assert client.job_status(job)[0] == "PENDING"  # not run yet: polls do not advance it
    operation = run(client, job)
    seen = [client.job_status(job)[0] for _ in range(4)]
    assert seen == ["PENDING", "PENDING", "RUNNING", "SUCCESS"]
    assert operation.done()  # the SDK's long-running operation reads GetOperation
    assert sandbox.members(user_list) == {frozenset({("hashed_email", sha("a@x.com"))})}
    assert client.job_status(job)[2] == "MATCH_RANGE_91_TO_100"


def test_removal_matches_any_identifier(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient
) -> None:
    sandbox.pending_polls = sandbox.running_polls = 0
    user_list = new_list(client)
    a = (("hashed_email", sha("a@x.com")), ("hashed_phone_number", sha("+15550001")))
    b = (("hashed_email", sha("b@x.com")),)
    job = new_job(client, user_list)
    add_ops(client, job, [person_op("create", *a), person_op("create", *b)])
    run(client, job)
    client.job_status(job)
    job = new_job(client, user_list)
    add_ops(client, job, [person_op("remove", ("hashed_phone_number", sha("+15550001")))])
    run(client, job)
    client.job_status(job)
    assert sandbox.members(user_list) == {frozenset(b)}


# ---------------------------------------------------------------- metadata and access


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"access_token": "wrong"}, grpc.StatusCode.UNAUTHENTICATED, "OAUTH_TOKEN_INVALID"),
        ({"developer_token": "wrong"}, grpc.StatusCode.UNAUTHENTICATED, "DEVELOPER_TOKEN_INVALID"),
    ],
)
def test_tokens_are_checked(
    sandbox: GoogleAdsSandbox, change: dict[str, str], status: grpc.StatusCode, code: str
) -> None:
    with sdk_client(sandbox, **change) as ads:  # type: ignore[arg-type]
        request = google_ads_service.SearchGoogleAdsRequest(
            customer_id=sandbox.customer_id, query="SELECT user_list.name FROM user_list"
        )
        with pytest.raises(GoogleAdsException) as caught:
            list(ads.service("GoogleAdsService").search(request=request))
    assert caught.value.error.code() == status
    assert codes(caught.value) == [code]


def test_other_customers_are_refused(client: GoogleAdsCustomerMatchClient) -> None:
    request = google_ads_service.SearchGoogleAdsRequest(
        customer_id="9999999999", query="SELECT user_list.name FROM user_list"
    )
    with pytest.raises(GoogleAdsException) as caught:
        list(client.service("GoogleAdsService").search(request=request))
    assert caught.value.error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert codes(caught.value) == ["USER_PERMISSION_DENIED"]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("SELECT campaign.name FROM campaign", "BAD_RESOURCE_TYPE_IN_FROM_CLAUSE"),
        ("SELECT user_list.nope FROM user_list", "UNRECOGNIZED_FIELD"),
        ("DELETE everything", "QUERY_ERROR"),
    ],
)
def test_unsupported_queries_are_refused(
    client: GoogleAdsCustomerMatchClient, query: str, code: str
) -> None:
    request = google_ads_service.SearchGoogleAdsRequest(customer_id=client.customer_id, query=query)
    with pytest.raises(GoogleAdsException) as caught:
        list(client.service("GoogleAdsService").search(request=request))
    assert codes(caught.value) == [code]


@pytest.mark.parametrize(
    ("kind", "status", "sdk_wraps"),
    [
        ("concurrent_modification", grpc.StatusCode.ABORTED, True),
        ("auth", grpc.StatusCode.UNAUTHENTICATED, True),
        ("unavailable", grpc.StatusCode.UNAVAILABLE, False),
        ("resource_exhausted", grpc.StatusCode.RESOURCE_EXHAUSTED, False),
        ("internal", grpc.StatusCode.INTERNAL, False),
        ("deadline_exceeded", grpc.StatusCode.DEADLINE_EXCEEDED, False),
    ],
)
def test_injected_faults_reach_the_sdk_as_the_real_api_would(
    sandbox: GoogleAdsSandbox,
    client: GoogleAdsCustomerMatchClient,
    kind: str,
    status: grpc.StatusCode,
    sdk_wraps: bool,
) -> None:
    sandbox.inject(kind, method="Search")  # type: ignore[arg-type]
    request = google_ads_service.SearchGoogleAdsRequest(
        customer_id=client.customer_id, query="SELECT user_list.name FROM user_list"
    )
    search = client.service("GoogleAdsService").search
    # The SDK's exception interceptor wraps failures carrying a GoogleAdsFailure, except
    # INTERNAL and RESOURCE_EXHAUSTED; the GAPIC layer re-raises the rest as api_core errors.
    with pytest.raises(GoogleAdsException if sdk_wraps else GoogleAPICallError) as caught:
        list(search(request=request))
    if sdk_wraps:
        assert caught.value.error.code() == status
    else:
        assert caught.value.grpc_status_code == status
    assert list(search(request=request)) == []  # consumed: the next call is served
    assert sandbox.pending_faults() == 0


def test_not_allowlisted_refuses_customer_match_jobs(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient
) -> None:
    user_list = new_list(client)
    sandbox.allowlisted = False
    with pytest.raises(GoogleAdsException) as caught:
        new_job(client, user_list)
    assert codes(caught.value) == ["CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"]


def test_calls_are_timed(sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient) -> None:
    sandbox.inject("slow", method="MutateUserLists", delay=0.05)
    new_list(client)
    assert sandbox.call_count("MutateUserLists", "OK") == 1
    assert sandbox.server_seconds("MutateUserLists") >= 0.05


def test_parallel_adds_to_one_job_collide(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    job = new_job(client, new_list(client))
    sandbox.inject("slow", method="AddOfflineUserDataJobOperations", delay=0.3)

    def add(i: int) -> str:
        try:
            add_ops(client, job, [person_op("create", ("hashed_email", sha(f"{i}@x.com")))])
        except GoogleAdsException as exception:
            return codes(exception)[0]
        return "OK"

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(add, 1)
        while not sandbox.jobs[job].in_flight:  # wait until the slow add is in flight
            time.sleep(0.001)
        second = pool.submit(add, 2)
        outcomes = sorted([first.result(), second.result()])
    assert outcomes == ["CONCURRENT_MODIFICATION", "OK"]
    assert len(sandbox.jobs[job].staged) == 1
